//! A Registry API v2 client for pulls: endpoints (mirrors, then the host),
//! the anonymous bearer-token flow, basic auth and the CRI credentials,
//! retries of transient failures, resumed blob streams, and a stall timeout.
//!
//! Written on reqwest rather than oci-client because a pull here needs what
//! that crate does not offer: per-host mirror lists tried in order, the CRI
//! `identity_token` (OAuth2 refresh-token grant), resuming a blob stream at the
//! byte where a connection broke (the bytes are already being unpacked), and
//! a no-progress timeout rather than a whole-request one.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, RANGE, WWW_AUTHENTICATE,
};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::reference::{DOCKER_HUB, Reference};

/// Attempts per endpoint for one request before moving on.
const ATTEMPTS: u32 = 3;
/// Reconnects allowed while streaming one blob without progress in between.
const STREAM_RETRIES: u32 = 5;
const BACKOFF_START: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Per registry host: mirror endpoints tried in order before the host.
    pub mirrors: HashMap<String, Vec<String>>,
    /// Hosts reached over plain HTTP (loopback always is).
    pub insecure: HashSet<String>,
    /// A request or stream that makes no progress for this long fails.
    pub stall_timeout: Duration,
    /// TLS of particular hosts (`host[:port]` as in image references and
    /// mirror URLs), from berth.toml; merged over what `certs_dirs` hold.
    pub tls: HashMap<String, HostTls>,
    /// Directories in the `certs.d/<host>/` layout that Docker, containerd
    /// and CRI-O read: `*.crt` CA certificates, `*.cert` with its `*.key`
    /// a client certificate. A missing directory is none.
    pub certs_dirs: Vec<PathBuf>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            mirrors: HashMap::new(),
            insecure: HashSet::new(),
            stall_timeout: Duration::from_secs(300),
            tls: HashMap::new(),
            certs_dirs: Vec::new(),
        }
    }
}

/// One registry host's TLS: CA certificates trusted besides the system's,
/// a client certificate for mutual TLS, or (an explicit choice) no
/// verification at all. A host with any of it is reached over HTTPS, even
/// on loopback.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostTls {
    /// PEM files of CA certificates.
    pub ca_files: Vec<PathBuf>,
    /// PEM files of the client certificate (chain) and its private key:
    /// both or neither.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Accept any certificate (and host name): for a registry an operator
    /// chose not to verify; never the default.
    pub skip_verify: bool,
}

impl HostTls {
    /// `over` on top of `self`: its CAs added, its client pair and
    /// skip_verify winning where given.
    fn merged(mut self, over: &HostTls) -> HostTls {
        self.ca_files.extend(over.ca_files.iter().cloned());
        if over.client_cert.is_some() || over.client_key.is_some() {
            self.client_cert = over.client_cert.clone();
            self.client_key = over.client_key.clone();
        }
        self.skip_verify |= over.skip_verify;
        self
    }
}

/// The hosts of `certs.d` directories (`<dir>/<host>/`): `*.crt` are CA
/// certificates, `<name>.cert` with `<name>.key` a client pair (the
/// first by name), as Docker reads them.
pub fn read_certs_dirs(dirs: &[PathBuf]) -> Result<HashMap<String, HostTls>> {
    let mut out: HashMap<String, HostTls> = HashMap::new();
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        for host in rd.flatten() {
            let path = host.path();
            if !path.is_dir() {
                continue;
            }
            let name = host.file_name().to_string_lossy().into_owned();
            let mut files: Vec<PathBuf> = match std::fs::read_dir(&path) {
                Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
                Err(e) => {
                    tracing::warn!(dir = %path.display(), error = %e, "a certs.d directory that cannot be read is left out");
                    continue;
                }
            };
            files.sort();
            let ext = |p: &Path, e: &str| p.extension().is_some_and(|x| x == e);
            let mut tls = HostTls {
                ca_files: files.iter().filter(|p| ext(p, "crt")).cloned().collect(),
                ..Default::default()
            };
            if let Some(cert) = files.iter().find(|p| ext(p, "cert")) {
                let key = cert.with_extension("key");
                // certs.d may be another runtime's: a broken pair there is
                // logged and left out, never a reason not to start.
                if key.exists() {
                    tls.client_cert = Some(cert.clone());
                    tls.client_key = Some(key);
                } else {
                    tracing::warn!(cert = %cert.display(), key = %key.display(), "a client certificate without its key in certs.d is left out");
                }
            }
            // A directory with neither (containerd's hosts.toml alone)
            // says nothing about TLS: the host keeps its scheme.
            if tls == HostTls::default() {
                continue;
            }
            // The first directory's client pair wins (berth's own comes
            // first); CAs add up.
            let merged = match out.remove(&name) {
                Some(earlier) if earlier.client_cert.is_some() => HostTls {
                    client_cert: earlier.client_cert.clone(),
                    client_key: earlier.client_key.clone(),
                    ..earlier.merged(&tls)
                },
                Some(earlier) => earlier.merged(&tls),
                None => tls,
            };
            out.insert(name, merged);
        }
    }
    Ok(out)
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::Registry(format!("reading the {what} {}: {e}", path.display())))
}

/// An HTTP client for one host's TLS settings.
fn http_client(config: &RegistryConfig, tls: Option<(&str, &HostTls)>) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30).min(config.stall_timeout))
        .redirect(reqwest::redirect::Policy::limited(8))
        .pool_max_idle_per_host(16);
    if let Some((host, t)) = tls {
        let bad = |what: &str, p: &Path, e: reqwest::Error| {
            Error::Registry(format!(
                "registry {host}: the {what} {} is not usable: {e}",
                p.display()
            ))
        };
        for f in &t.ca_files {
            let pem = read_pem(f, "CA certificate")?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| bad("CA certificate", f, e))?
            {
                b = b.add_root_certificate(cert);
            }
        }
        match (&t.client_cert, &t.client_key) {
            (Some(c), Some(k)) => {
                let mut pem = read_pem(c, "client certificate")?;
                pem.push(b'\n');
                pem.extend(read_pem(k, "client key")?);
                let id = reqwest::Identity::from_pem(&pem)
                    .map_err(|e| bad("client certificate", c, e))?;
                b = b.identity(id);
            }
            (None, None) => {}
            _ => {
                return Err(Error::Registry(format!(
                    "registry {host}: a client certificate needs both its cert and its key"
                )));
            }
        }
        if t.skip_verify {
            tracing::warn!(%host, "TLS certificates of this registry are not verified (skip_verify)");
            b = b.danger_accept_invalid_certs(true);
        }
    }
    b.build()
        .map_err(|e| Error::Registry(format!("cannot build the HTTP client: {e}")))
}

/// Credentials for one pull, from the CRI `AuthConfig`.
#[derive(Clone, Default)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token exchanged at the token endpoint.
    IdentityToken {
        username: String,
        token: String,
    },
    /// A bearer token sent as it is.
    RegistryToken(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.write_str(match self {
            Credentials::Anonymous => "Anonymous",
            Credentials::Basic { .. } => "Basic(..)",
            Credentials::IdentityToken { .. } => "IdentityToken(..)",
            Credentials::RegistryToken(_) => "RegistryToken(..)",
        })
    }
}

impl Credentials {
    /// From the CRI AuthConfig fields, in the order containerd reads them:
    /// registry_token, identity_token, username/password, then `auth`
    /// (base64 `user:password`).
    pub fn from_cri(
        username: &str,
        password: &str,
        auth: &str,
        identity_token: &str,
        registry_token: &str,
    ) -> Result<Self> {
        if !registry_token.is_empty() {
            return Ok(Credentials::RegistryToken(registry_token.to_string()));
        }
        if !identity_token.is_empty() {
            return Ok(Credentials::IdentityToken {
                username: username.to_string(),
                token: identity_token.to_string(),
            });
        }
        if !username.is_empty() {
            return Ok(Credentials::Basic {
                username: username.to_string(),
                password: password.to_string(),
            });
        }
        if !auth.is_empty() {
            let bad =
                || Error::InvalidArgument("auth.auth is not base64 of \"user:password\"".into());
            let raw = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| bad())?;
            let s = String::from_utf8(raw).map_err(|_| bad())?;
            let (u, p) = s.split_once(':').ok_or_else(bad)?;
            return Ok(Credentials::Basic {
                username: u.to_string(),
                password: p.to_string(),
            });
        }
        Ok(Credentials::Anonymous)
    }
}

#[derive(Clone, Debug)]
struct Endpoint {
    /// `scheme://host[:port][/prefix]`, no trailing slash.
    base: String,
    host: String,
    mirror: bool,
}

/// Loopback hosts are always reachable over plain HTTP.
fn is_loopback(host: &str) -> bool {
    let h = host
        .strip_prefix('[')
        .and_then(|h| h.split(']').next())
        .unwrap_or_else(|| host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host));
    h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub struct RegistryClient {
    http: reqwest::Client,
    /// Clients of hosts with TLS settings of their own.
    per_host: HashMap<String, reqwest::Client>,
    config: RegistryConfig,
    /// Bearer tokens by (endpoint base URL, scope, whose credentials): a
    /// token got with one pull's credentials never serves another's.
    tokens: Mutex<HashMap<(String, String, u64), String>>,
}

impl RegistryClient {
    pub fn new(mut config: RegistryConfig) -> Result<Self> {
        let http = http_client(&config, None)?;
        // certs.d first, berth.toml's own settings over it.
        let mut tls = read_certs_dirs(&config.certs_dirs)?;
        for (host, t) in &config.tls {
            let merged = tls.remove(host).unwrap_or_default().merged(t);
            tls.insert(host.clone(), merged);
        }
        let mut per_host = HashMap::new();
        for (host, t) in &tls {
            per_host.insert(host.clone(), http_client(&config, Some((host, t)))?);
        }
        config.tls = tls;
        Ok(Self {
            http,
            per_host,
            config,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The client for requests to `url` (its host's TLS settings).
    fn http_for(&self, url: &str) -> &reqwest::Client {
        let host = url
            .split_once("://")
            .map_or(url, |(_, rest)| rest)
            .split('/')
            .next()
            .unwrap_or_default();
        // Docker Hub's settings are given as docker.io; its API host is
        // another name.
        let host = if host == "registry-1.docker.io" && !self.per_host.contains_key(host) {
            DOCKER_HUB
        } else {
            host
        };
        self.per_host.get(host).unwrap_or(&self.http)
    }

    pub fn stall_timeout(&self) -> Duration {
        self.config.stall_timeout
    }

    fn scheme_for(&self, host: &str) -> &'static str {
        if self.config.tls.contains_key(host) {
            "https"
        } else if is_loopback(host) || self.config.insecure.contains(host) {
            "http"
        } else {
            "https"
        }
    }

    fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let mut out = Vec::new();
        for m in self.config.mirrors.get(registry).into_iter().flatten() {
            let m = m.trim_end_matches('/');
            let (base, host) = match m.split_once("://") {
                Some((_, rest)) => (
                    m.to_string(),
                    rest.split('/').next().unwrap_or(rest).to_string(),
                ),
                None => {
                    let host = m.split('/').next().unwrap_or(m).to_string();
                    (format!("{}://{m}", self.scheme_for(&host)), host)
                }
            };
            // A mirror given as ".../v2" means the same as without it.
            let base = base.strip_suffix("/v2").map(str::to_string).unwrap_or(base);
            out.push(Endpoint {
                base,
                host,
                mirror: true,
            });
        }
        let api_host = if registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            registry
        };
        out.push(Endpoint {
            base: format!("{}://{api_host}", self.scheme_for(registry)),
            host: registry.to_string(),
            mirror: false,
        });
        out
    }
}

/// A pull from one repository: its endpoints, credentials and the endpoint
/// that answered last.
pub struct Session {
    client: Arc<RegistryClient>,
    registry: String,
    repository: String,
    endpoints: Vec<Endpoint>,
    credentials: Credentials,
    /// Index of the endpoint that last answered; tried first next time.
    preferred: AtomicUsize,
    /// A push session: the registry itself (no mirrors), pull and push
    /// scope.
    push: bool,
}

/// One attempt's failure, classified.
#[derive(Debug)]
enum Failure {
    /// Worth another attempt (connection refused or reset, 5xx, 429).
    Transient(String),
    /// Final for this endpoint.
    Final(Error),
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Default, PartialEq)]
struct Challenge {
    scheme: String,
    params: HashMap<String, String>,
}

fn parse_challenge(h: &str) -> Challenge {
    let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    let mut params = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let Some((k, v)) = s.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let v = v.trim_start();
        let (val, next) = if let Some(q) = v.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match v.find(',') {
                Some(end) => (&v[..end], &v[end..]),
                None => (v, ""),
            }
        };
        params.insert(k, val.to_string());
        s = next.trim_start().trim_start_matches(',').trim_start();
    }
    Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    }
}

fn classify_status(
    status: StatusCode,
    what: &str,
    ep: &Endpoint,
    repo: &str,
    body: &str,
) -> Failure {
    let detail = registry_message(body);
    match status.as_u16() {
        404 => Failure::Final(Error::NotFound(format!(
            "{what} not found at {}{detail}",
            ep.base
        ))),
        401 => Failure::Final(Error::Unauthenticated {
            registry: ep.host.clone(),
            message: format!("401 Unauthorized for {what}{detail}"),
        }),
        403 => Failure::Final(Error::Denied {
            registry: ep.host.clone(),
            repository: repo.to_string(),
            message: format!("403 Forbidden{detail}"),
        }),
        408 | 429 | 500..=599 => {
            Failure::Transient(format!("{} answered {status} for {what}{detail}", ep.base))
        }
        _ => Failure::Final(Error::Registry(format!(
            "{} answered {status} for {what}{detail}",
            ep.base
        ))),
    }
}

/// The `errors[0].message` of a registry error body, if any.
fn registry_message(body: &str) -> String {
    #[derive(serde::Deserialize)]
    struct E {
        message: Option<String>,
        code: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct B {
        errors: Vec<E>,
    }
    match serde_json::from_str::<B>(body) {
        Ok(b) => b
            .errors
            .first()
            .map(|e| {
                format!(
                    ": {} {}",
                    e.code.as_deref().unwrap_or(""),
                    e.message.as_deref().unwrap_or("")
                )
                .trim_end()
                .to_string()
            })
            .unwrap_or_default(),
        Err(_) => String::new(),
    }
}

fn transport_failure(ep: &Endpoint, e: &reqwest::Error) -> Failure {
    let mut msg = format!("{}: {e}", ep.base);
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    Failure::Transient(msg)
}

impl Session {
    pub fn new(
        client: Arc<RegistryClient>,
        reference: &Reference,
        credentials: Credentials,
    ) -> Self {
        let endpoints = client.endpoints(&reference.registry);
        Session {
            client,
            repository: reference.repository.clone(),
            registry: reference.registry.clone(),
            endpoints,
            credentials,
            preferred: AtomicUsize::new(0),
            push: false,
        }
    }

    /// A session that pushes to `reference`'s repository: only the
    /// registry itself is written to (mirrors serve pulls, as containerd's
    /// hosts have pull and resolve but not push), with the credentials
    /// given, for a `pull,push` token.
    pub fn for_push(
        client: Arc<RegistryClient>,
        reference: &Reference,
        credentials: Credentials,
    ) -> Self {
        let mut s = Self::new(client, reference, credentials);
        s.endpoints.retain(|e| !e.mirror);
        s.push = true;
        s
    }

    /// `registry/repository`, for messages.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    fn scope(&self) -> String {
        if self.push {
            format!("repository:{}:pull,push", self.repository)
        } else {
            format!("repository:{}:pull", self.repository)
        }
    }

    /// Endpoint indexes in the order to try them: the one that answered last
    /// first, then the configured order.
    fn order(&self) -> Vec<usize> {
        let p = self.preferred.load(Ordering::Relaxed);
        std::iter::once(p)
            .chain((0..self.endpoints.len()).filter(move |i| *i != p))
            .collect()
    }

    fn credentials_for(&self, ep: &Endpoint) -> &Credentials {
        // The CRI credentials are for the image's registry, not for mirrors.
        if ep.mirror {
            &Credentials::Anonymous
        } else {
            &self.credentials
        }
    }

    /// Fetch a bearer token for `challenge` and remember it.
    async fn fetch_token(&self, ep: &Endpoint, challenge: &Challenge) -> Result<String, Failure> {
        let realm = challenge.params.get("realm").cloned().unwrap_or_default();
        if !(realm.starts_with("https://") || realm.starts_with("http://")) {
            return Err(Failure::Final(Error::Registry(format!(
                "{} sent a bearer challenge with an unusable realm {realm:?}",
                ep.base
            ))));
        }
        let service = challenge.params.get("service").cloned().unwrap_or_default();
        let scope = challenge
            .params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| self.scope());
        let creds = self.credentials_for(ep);
        let req = match creds {
            Credentials::IdentityToken { token, .. } => {
                self.client.http_for(&realm).post(&realm).form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", token.as_str()),
                    ("service", service.as_str()),
                    ("scope", scope.as_str()),
                    ("client_id", "berth"),
                ])
            }
            _ => {
                let mut q = vec![("scope", scope.as_str())];
                if !service.is_empty() {
                    q.push(("service", service.as_str()));
                }
                let r = self.client.http_for(&realm).get(&realm).query(&q);
                match creds {
                    Credentials::Basic { username, password } => {
                        r.basic_auth(username, Some(password))
                    }
                    _ => r,
                }
            }
        };
        let stall = self.client.config.stall_timeout;
        let resp = tokio::time::timeout(stall, req.send())
            .await
            .map_err(|_| Failure::Transient(format!("token endpoint {realm} did not answer")))?
            .map_err(|e| transport_failure(ep, &e))?;
        let status = resp.status();
        let body = tokio::time::timeout(stall, resp.text())
            .await
            .map_err(|_| Failure::Transient(format!("token endpoint {realm} stalled")))?
            .map_err(|e| transport_failure(ep, &e))?;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(Failure::Final(Error::Unauthenticated {
                registry: ep.host.clone(),
                message: format!("token endpoint {realm} refused the credentials ({status})"),
            }));
        }
        if !status.is_success() {
            return Err(classify_status(
                status,
                "a token",
                ep,
                &self.repository,
                &body,
            ));
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token = serde_json::from_str(&body).map_err(|e| {
            Failure::Final(Error::Registry(format!(
                "token endpoint {realm} sent malformed JSON: {e}"
            )))
        })?;
        let token = t
            .token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Failure::Final(Error::Registry(format!(
                    "token endpoint {realm} sent no token"
                )))
            })?;
        if let Ok(mut m) = self.client.tokens.lock() {
            m.insert(self.token_key(ep), token.clone());
        }
        Ok(token)
    }

    fn token_key(&self, ep: &Endpoint) -> (String, String, u64) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        match self.credentials_for(ep) {
            Credentials::Anonymous => 0u8.hash(&mut h),
            Credentials::Basic { username, password } => (1u8, username, password).hash(&mut h),
            Credentials::IdentityToken { username, token } => (2u8, username, token).hash(&mut h),
            Credentials::RegistryToken(t) => (3u8, t).hash(&mut h),
        }
        (ep.base.clone(), self.scope(), h.finish())
    }

    fn cached_token(&self, ep: &Endpoint) -> Option<String> {
        let m = self.client.tokens.lock().ok()?;
        m.get(&self.token_key(ep)).cloned()
    }

    /// One GET with the auth dance (see [`Session::send`]).
    async fn get(
        &self,
        ep: &Endpoint,
        path: &str,
        accept: Option<&str>,
        offset: u64,
        what: &str,
    ) -> Result<reqwest::Response, Failure> {
        let url = format!("{}/v2/{}/{path}", ep.base, self.repository);
        self.send(ep, what, |http| {
            let mut req = http.get(&url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if offset > 0 {
                req = req.header(RANGE, format!("bytes={offset}-"));
            }
            Ok(req)
        })
        .await
    }

    /// One request with the auth dance: send what `build` makes, and on a
    /// 401 answer the challenge once (bearer token or basic credentials)
    /// and send a freshly built one again. Any 2xx answer is the caller's.
    async fn send<B>(
        &self,
        ep: &Endpoint,
        what: &str,
        build: B,
    ) -> Result<reqwest::Response, Failure>
    where
        B: Fn(&reqwest::Client) -> Result<reqwest::RequestBuilder, Failure>,
    {
        self.send_within(ep, what, self.client.config.stall_timeout, build)
            .await
    }

    /// [`Session::send`] with its own bound on the wait for an answer (an
    /// upload's answer comes after its whole body).
    async fn send_within<B>(
        &self,
        ep: &Endpoint,
        what: &str,
        stall: Duration,
        build: B,
    ) -> Result<reqwest::Response, Failure>
    where
        B: Fn(&reqwest::Client) -> Result<reqwest::RequestBuilder, Failure>,
    {
        let http = self.client.http_for(&ep.base);
        let creds = self.credentials_for(ep);
        let mut auth: Option<String> = match creds {
            Credentials::RegistryToken(t) => Some(format!("Bearer {t}")),
            _ => self.cached_token(ep).map(|t| format!("Bearer {t}")),
        };
        for round in 0..2 {
            let mut req = build(http)?;
            if let Some(a) = &auth {
                req = req.header(AUTHORIZATION, a);
            }
            let resp = tokio::time::timeout(stall, req.send())
                .await
                .map_err(|_| Failure::Transient(format!("{} did not answer for {what}", ep.base)))?
                .map_err(|e| transport_failure(ep, &e))?;
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            if status == StatusCode::UNAUTHORIZED && round == 0 {
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .map(parse_challenge)
                    .unwrap_or_default();
                auth = match challenge.scheme.as_str() {
                    "bearer" => Some(format!(
                        "Bearer {}",
                        self.fetch_token(ep, &challenge).await?
                    )),
                    "basic" => match creds {
                        Credentials::Basic { username, password } => {
                            let raw = format!("{username}:{password}");
                            Some(format!(
                                "Basic {}",
                                base64::engine::general_purpose::STANDARD.encode(raw)
                            ))
                        }
                        _ => {
                            return Err(Failure::Final(Error::Unauthenticated {
                                registry: ep.host.clone(),
                                message: format!(
                                    "the registry asks for a user name and password and the {} carried none",
                                    if self.push { "push" } else { "pull" }
                                ),
                            }));
                        }
                    },
                    _ => {
                        return Err(Failure::Final(Error::Unauthenticated {
                            registry: ep.host.clone(),
                            message: format!("401 with an unsupported challenge for {what}"),
                        }));
                    }
                };
                continue;
            }
            let body = tokio::time::timeout(Duration::from_secs(5), resp.text())
                .await
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or_default();
            return Err(classify_status(status, what, ep, &self.repository, &body));
        }
        Err(Failure::Final(Error::Unauthenticated {
            registry: ep.host.clone(),
            message: format!("credentials were refused for {what}"),
        }))
    }

    /// Run `attempt` on each endpoint in order with retries of transient
    /// failures; the first success wins. Mirrors fall through on any error;
    /// the error reported is the upstream's (or the last one seen).
    async fn with_endpoints<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut(usize) -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let mut last: Option<Error> = None;
        for i in self.order() {
            let ep = &self.endpoints[i];
            let mut backoff = BACKOFF_START;
            for n in 1..=ATTEMPTS {
                match attempt(i).await {
                    Ok(v) => {
                        self.preferred.store(i, Ordering::Relaxed);
                        return Ok(v);
                    }
                    Err(Failure::Final(e)) => {
                        tracing::debug!(endpoint = %ep.base, error = %e, "{what} failed");
                        last = Some(e);
                        break;
                    }
                    Err(Failure::Transient(msg)) => {
                        tracing::debug!(endpoint = %ep.base, attempt = n, "{msg}");
                        last = Some(Error::Unavailable(format!("cannot fetch {what}: {msg}")));
                        if n < ATTEMPTS {
                            tokio::time::sleep(backoff).await;
                            backoff *= 2;
                        }
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Unavailable(format!("no endpoint for {what}"))))
    }

    /// Fetch a manifest or index by tag or digest: its bytes, content type
    /// and digest. A digest reference is verified against the bytes.
    pub async fn manifest(&self, reference: &str) -> Result<(Bytes, String, Digest)> {
        let what = format!("manifest {}/{}:{reference}", self.registry, self.repository);
        let expected: Option<Digest> = reference.parse().ok();
        let (body, ct) = self
            .with_endpoints(&what, |i| {
                let ep = &self.endpoints[i];
                let (what, expected) = (&what, &expected);
                async move {
                    let resp = self
                        .get(
                            ep,
                            &format!("manifests/{reference}"),
                            Some(crate::manifest::MANIFEST_ACCEPT),
                            0,
                            what,
                        )
                        .await?;
                    let ct = resp
                        .headers()
                        .get(CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let body = self
                        .read_bounded(ep, resp, crate::manifest::MAX_MANIFEST_SIZE, what)
                        .await?;
                    // A mirror that serves something else for a digest is
                    // lying: try the next endpoint.
                    if let Some(d) = expected {
                        let mut h = d.hasher();
                        h.update(&body);
                        let actual = h.finish();
                        if &actual != d {
                            return Err(Failure::Final(Error::DigestMismatch {
                                what: what.to_string(),
                                expected: d.to_string(),
                                actual: actual.to_string(),
                            }));
                        }
                    }
                    Ok((body, ct))
                }
            })
            .await?;
        let digest = match expected {
            Some(d) => d,
            None => Digest::sha256_of(&body),
        };
        Ok((body, ct, digest))
    }

    /// A small blob (config) read whole, verified against its digest.
    pub async fn blob_bytes(&self, digest: &Digest, max: usize) -> Result<Bytes> {
        let what = format!("blob {digest} of {}/{}", self.registry, self.repository);
        self.with_endpoints(&what, |i| {
            let ep = &self.endpoints[i];
            let what = &what;
            async move {
                let resp = self
                    .get(ep, &format!("blobs/{digest}"), None, 0, what)
                    .await?;
                let body = self.read_bounded(ep, resp, max, what).await?;
                let mut h = digest.hasher();
                h.update(&body);
                let actual = h.finish();
                if &actual != digest {
                    return Err(Failure::Final(Error::DigestMismatch {
                        what: what.clone(),
                        expected: digest.to_string(),
                        actual: actual.to_string(),
                    }));
                }
                Ok(body)
            }
        })
        .await
    }

    async fn read_bounded(
        &self,
        ep: &Endpoint,
        mut resp: reqwest::Response,
        max: usize,
        what: &str,
    ) -> Result<Bytes, Failure> {
        if resp.content_length().is_some_and(|l| l > max as u64) {
            return Err(Failure::Final(Error::Registry(format!(
                "{what} is larger than the {max} bytes berth accepts"
            ))));
        }
        let stall = self.client.config.stall_timeout;
        let mut buf = Vec::new();
        loop {
            let chunk = tokio::time::timeout(stall, resp.chunk())
                .await
                .map_err(|_| Failure::Transient(format!("{} stalled sending {what}", ep.base)))?
                .map_err(|e| transport_failure(ep, &e))?;
            match chunk {
                Some(c) => {
                    if buf.len() + c.len() > max {
                        return Err(Failure::Final(Error::Registry(format!(
                            "{what} is larger than the {max} bytes berth accepts"
                        ))));
                    }
                    buf.extend_from_slice(&c);
                }
                None => return Ok(Bytes::from(buf)),
            }
        }
    }

    /// Open a layer blob as a stream of chunks. The stream resumes by
    /// itself after a broken connection; the caller verifies the digest.
    pub fn blob_stream(&self, digest: &Digest, size: u64) -> BlobStream<'_> {
        BlobStream {
            session: self,
            digest: digest.clone(),
            size,
            offset: 0,
            skip: 0,
            resp: None,
            retries: 0,
        }
    }
}

/// A layer blob being streamed. See [`Session::blob_stream`].
pub struct BlobStream<'a> {
    session: &'a Session,
    digest: Digest,
    size: u64,
    /// Bytes handed out so far.
    offset: u64,
    /// Bytes to drop from the current response (a server that ignored Range).
    skip: u64,
    resp: Option<reqwest::Response>,
    retries: u32,
}

impl BlobStream<'_> {
    fn what(&self) -> String {
        format!(
            "blob {} of {}/{}",
            self.digest, self.session.registry, self.session.repository
        )
    }

    async fn open(&mut self) -> Result<()> {
        let what = self.what();
        let offset = self.offset;
        let s = self.session;
        let path = format!("blobs/{}", self.digest);
        let resp = s
            .with_endpoints(&what, |i| {
                let ep = &s.endpoints[i];
                let (what, path) = (&what, &path);
                async move { s.get(ep, path, None, offset, what).await }
            })
            .await?;
        self.skip = 0;
        if offset > 0 {
            let resumed_at = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            match (resp.status(), resumed_at) {
                (StatusCode::PARTIAL_CONTENT, Some(start)) if start == offset => {}
                (StatusCode::OK, _) => self.skip = offset,
                (status, _) => {
                    return Err(Error::Registry(format!(
                        "{what}: the registry answered {status} with a wrong range when resuming at byte {offset}"
                    )));
                }
            }
        }
        self.resp = Some(resp);
        Ok(())
    }

    /// The next chunk, or None at the end of the blob.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        let stall = self.session.client.config.stall_timeout;
        loop {
            if self.resp.is_none() {
                if self.offset >= self.size && self.size > 0 {
                    return Ok(None);
                }
                self.open().await?;
            }
            let Some(resp) = self.resp.as_mut() else {
                continue;
            };
            let chunk = match tokio::time::timeout(stall, resp.chunk()).await {
                Err(_) => {
                    return Err(Error::Stalled {
                        what: self.what(),
                        secs: stall.as_secs(),
                    });
                }
                Ok(r) => r,
            };
            match chunk {
                Ok(Some(mut c)) => {
                    if self.skip > 0 {
                        let n = (self.skip as usize).min(c.len());
                        self.skip -= n as u64;
                        c = c.slice(n..);
                        if c.is_empty() {
                            continue;
                        }
                    }
                    self.offset += c.len() as u64;
                    if self.offset > self.size {
                        return Err(Error::DigestMismatch {
                            what: self.what(),
                            expected: format!("{} ({} bytes)", self.digest, self.size),
                            actual: format!("more than {} bytes", self.size),
                        });
                    }
                    self.retries = 0;
                    return Ok(Some(c));
                }
                Ok(None) if self.offset >= self.size => return Ok(None),
                Ok(None) | Err(_) => {
                    // Connection closed early or broke: resume where we are.
                    self.resp = None;
                    self.retries += 1;
                    if self.retries > STREAM_RETRIES {
                        return Err(Error::Unavailable(format!(
                            "{}: the connection broke {} times at byte {} of {}",
                            self.what(),
                            self.retries,
                            self.offset,
                            self.size
                        )));
                    }
                    tracing::debug!(what = %self.what(), offset = self.offset, "blob stream broke, resuming");
                    tokio::time::sleep(BACKOFF_START * self.retries).await;
                }
            }
        }
    }
}

mod push;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_is_parsed() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        assert_eq!(c.params["scope"], "repository:library/busybox:pull");
        let b = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(b.scheme, "basic");
        assert_eq!(b.params["realm"], "Registry Realm");
    }

    #[test]
    fn certs_d_gives_cas_and_a_client_pair_and_berth_toml_wins() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("registry.example:5000");
        std::fs::create_dir_all(&host).unwrap();
        for f in ["ca.crt", "extra.crt", "client.cert", "client.key", "README"] {
            std::fs::write(host.join(f), "").unwrap();
        }
        let got = read_certs_dirs(&[d.path().to_path_buf(), d.path().join("missing")]).unwrap();
        let t = &got["registry.example:5000"];
        assert_eq!(
            t.ca_files,
            vec![host.join("ca.crt"), host.join("extra.crt")]
        );
        assert_eq!(t.client_cert, Some(host.join("client.cert")));
        assert_eq!(t.client_key, Some(host.join("client.key")));
        assert!(!t.skip_verify);
        let over = HostTls {
            client_cert: Some("/etc/berth/c.pem".into()),
            client_key: Some("/etc/berth/k.pem".into()),
            skip_verify: true,
            ..Default::default()
        };
        let m = t.clone().merged(&over);
        assert_eq!(m.ca_files.len(), 2, "the CAs stay");
        assert_eq!(m.client_cert, over.client_cert);
        assert!(m.skip_verify);

        // A client certificate without its key is left out (certs.d may be
        // another runtime's); the CAs stay. A directory with neither, as
        // containerd's hosts.toml alone, is no TLS setting at all.
        std::fs::remove_file(host.join("client.key")).unwrap();
        let only_toml = d.path().join("localhost:5001");
        std::fs::create_dir_all(&only_toml).unwrap();
        std::fs::write(only_toml.join("hosts.toml"), "").unwrap();
        let got = read_certs_dirs(&[d.path().to_path_buf()]).unwrap();
        let t = &got["registry.example:5000"];
        assert_eq!(t.client_cert, None);
        assert_eq!(t.ca_files.len(), 2);
        assert!(!got.contains_key("localhost:5001"));
    }

    #[test]
    fn a_host_with_tls_settings_is_https_even_on_loopback() {
        let mut cfg = RegistryConfig::default();
        cfg.tls.insert(
            "127.0.0.1:5443".into(),
            HostTls {
                skip_verify: true,
                ..Default::default()
            },
        );
        let c = RegistryClient::new(cfg).unwrap();
        assert_eq!(
            c.endpoints("127.0.0.1:5443")[0].base,
            "https://127.0.0.1:5443"
        );
        assert_eq!(
            c.endpoints("127.0.0.1:5000")[0].base,
            "http://127.0.0.1:5000"
        );
        assert!(std::ptr::eq(
            c.http_for("https://127.0.0.1:5443/v2/x"),
            &c.per_host["127.0.0.1:5443"]
        ));
        assert!(std::ptr::eq(
            c.http_for("https://other.example/token"),
            &c.http
        ));
        let mut cfg = RegistryConfig::default();
        cfg.tls.insert(DOCKER_HUB.into(), HostTls::default());
        let c = RegistryClient::new(cfg).unwrap();
        assert!(std::ptr::eq(
            c.http_for("https://registry-1.docker.io/v2/library/busybox/manifests/1"),
            &c.per_host[DOCKER_HUB]
        ));
    }

    #[test]
    fn loopback_and_insecure_hosts_use_http_and_mirrors_come_first() {
        let mut cfg = RegistryConfig::default();
        cfg.insecure.insert("my-registry.local:5000".into());
        cfg.mirrors.insert(
            "registry.k8s.io".into(),
            vec!["http://127.0.0.1:5000".into(), "mirror.example/v2".into()],
        );
        let c = RegistryClient::new(cfg).unwrap();
        let eps = c.endpoints("registry.k8s.io");
        let bases: Vec<_> = eps.iter().map(|e| (e.base.as_str(), e.mirror)).collect();
        assert_eq!(
            bases,
            vec![
                ("http://127.0.0.1:5000", true),
                ("https://mirror.example", true),
                ("https://registry.k8s.io", false)
            ]
        );
        assert_eq!(
            c.endpoints("127.0.0.1:5000")[0].base,
            "http://127.0.0.1:5000"
        );
        assert_eq!(
            c.endpoints("localhost:5000")[0].base,
            "http://localhost:5000"
        );
        assert_eq!(c.endpoints("[::1]:5000")[0].base, "http://[::1]:5000");
        assert_eq!(
            c.endpoints("my-registry.local:5000")[0].base,
            "http://my-registry.local:5000"
        );
        assert_eq!(
            c.endpoints("docker.io")[0].base,
            "https://registry-1.docker.io"
        );
        assert_eq!(
            c.endpoints("127.example.com")[0].base,
            "https://127.example.com"
        );
    }

    #[test]
    fn cri_credentials_precedence_and_auth_decoding() {
        let basic = Credentials::from_cri("", "", "dXNlcjpwYXNz", "", "").unwrap();
        assert!(
            matches!(basic, Credentials::Basic { ref username, ref password } if username == "user" && password == "pass")
        );
        assert!(matches!(
            Credentials::from_cri("u", "p", "", "", "tok").unwrap(),
            Credentials::RegistryToken(t) if t == "tok"
        ));
        assert!(matches!(
            Credentials::from_cri("u", "", "", "refresh", "").unwrap(),
            Credentials::IdentityToken { .. }
        ));
        assert!(Credentials::from_cri("", "", "not base64!!", "", "").is_err());
        assert!(
            Credentials::from_cri("", "", "bm9jb2xvbg==", "", "").is_err(),
            "no colon"
        );
        assert!(matches!(
            Credentials::from_cri("", "", "", "", "").unwrap(),
            Credentials::Anonymous
        ));
    }

    #[test]
    fn registry_error_bodies_are_summarised() {
        let b =
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(registry_message(b), ": MANIFEST_UNKNOWN manifest unknown");
        assert_eq!(registry_message("<html>"), "");
    }
}
