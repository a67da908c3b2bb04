//! A real registry for the tests: Debian's `docker-registry` (CNCF distribution
//! v2) on 127.0.0.1 at a free port, with its own storage in a temporary
//! directory and optional htpasswd (bcrypt) basic auth.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use berth_conformance::registry::Registry;
//! let mut reg = Registry::start().await?;          // anonymous
//! let authed = Registry::start_with_auth("alice", "s3cret").await?;
//! let client = reg.client();                        // push / fetch over the API
//! reg.kill();                                       // SIGKILL, storage kept
//! reg.restart().await?;                             // same port, same storage
//! # Ok(()) }
//! ```
//!
//! Dropping a [`Registry`] kills and reaps the process; its storage goes with
//! the temporary directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tempfile::TempDir;

use crate::images::{Blob, Image, Index};
use crate::util;

/// Where Debian installs the distribution registry.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// Username and password for basic auth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    pub fn new(username: &str, password: &str) -> Self {
        Credentials {
            username: username.to_string(),
            password: password.to_string(),
        }
    }

    /// `base64(user:pass)`, the `auth` field of a CRI AuthConfig.
    pub fn auth_field(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.username, self.password))
    }
}

/// A running `docker-registry serve` owned by one test.
pub struct Registry {
    dir: TempDir,
    port: u16,
    credentials: Option<Credentials>,
    child: Option<Child>,
}

/// What a TLS registry serves with: its certificate and key (PEM files),
/// and the CA whose client certificates it demands (mutual TLS), if any.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl Registry {
    /// An anonymous registry (pull and push without credentials).
    pub async fn start() -> Result<Registry> {
        Self::start_inner(None).await
    }

    /// A registry that requires basic auth with these credentials (htpasswd
    /// file with a bcrypt entry). It speaks plain HTTP: distribution 2.8
    /// accepts basic auth without TLS.
    pub async fn start_with_auth(username: &str, password: &str) -> Result<Registry> {
        Self::start_inner(Some(Credentials::new(username, password))).await
    }

    /// A registry over HTTPS only, serving the storage of `storage` (which
    /// pushes go to over plain HTTP: the push client speaks no TLS).
    pub async fn start_tls_over(storage: &Registry, tls: &TlsFiles) -> Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("berth-registry-tls-")
            .tempdir()?;
        let mut last_err = None;
        for _ in 0..5 {
            let port = util::free_port()?;
            let opts = Spawn {
                data: storage.storage_dir(),
                with_auth: false,
                tls: Some(tls.clone()),
            };
            match spawn_registry(dir.path(), port, &opts).await {
                Ok(child) => {
                    return Ok(Registry {
                        dir,
                        port,
                        credentials: None,
                        child: Some(child),
                    });
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("registry did not start")))
    }

    async fn start_inner(credentials: Option<Credentials>) -> Result<Registry> {
        if !Path::new(REGISTRY_BIN).exists() {
            bail!(
                "{REGISTRY_BIN} not found: install Debian's docker-registry package (.ci/run does)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("berth-registry-")
            .tempdir()?;
        fs::create_dir_all(dir.path().join("data"))?;
        if let Some(c) = &credentials {
            fs::write(dir.path().join("htpasswd"), htpasswd_line(c)?)?;
        }
        let mut last_err = None;
        // The port can be taken between free_port() and the registry's bind:
        // try a few ports.
        for _ in 0..5 {
            let port = util::free_port()?;
            let opts = Spawn {
                data: dir.path().join("data"),
                with_auth: credentials.is_some(),
                tls: None,
            };
            match spawn_registry(dir.path(), port, &opts).await {
                Ok(child) => {
                    return Ok(Registry {
                        dir,
                        port,
                        credentials,
                        child: Some(child),
                    });
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("registry did not start")))
    }

    /// The registry's own log (stdout and stderr), appended across restarts.
    pub fn log_path(&self) -> PathBuf {
        log_path(self.dir.path())
    }

    /// The storage root (`rootdirectory` of the filesystem driver).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The temporary directory holding config, storage and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `127.0.0.1:PORT`, the host part of image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`, for mirror endpoints.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT/<repo_and_tag>`: a reference berthd can pull.
    pub fn reference(&self, repo_and_tag: &str) -> String {
        format!("{}/{}", self.host(), repo_and_tag)
    }

    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILL the registry and reap it. Storage stays for [`Registry::restart`].
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            util::kill_and_reap(&mut c);
        }
    }

    /// Start the registry again on the same port and storage.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        // The port was ours a moment ago; Go listeners use SO_REUSEADDR, but a
        // straggling connection can still hold it briefly: retry a little.
        let mut last = None;
        for _ in 0..20 {
            let opts = Spawn {
                data: self.storage_dir(),
                with_auth: self.credentials.is_some(),
                tls: None,
            };
            match spawn_registry(self.dir.path(), self.port, &opts).await {
                Ok(child) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("registry did not restart")))
    }

    /// A client for this registry's HTTP API (with its credentials).
    pub fn client(&self) -> RegistryClient {
        RegistryClient::new(&self.url(), self.credentials.clone())
    }

    /// Push an image's blobs and its manifest under `tag` in `repo`; returns the
    /// manifest digest.
    pub async fn push(&self, repo: &str, tag: &str, image: &Image) -> Result<String> {
        self.client().push_image(repo, tag, image).await
    }

    /// Push every image of an index, then the index under `tag`; returns the
    /// index digest.
    pub async fn push_index(&self, repo: &str, tag: &str, index: &Index) -> Result<String> {
        self.client().push_index(repo, tag, index).await
    }
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("registry.log")
}

struct Spawn {
    /// The storage root.
    data: PathBuf,
    with_auth: bool,
    tls: Option<TlsFiles>,
}

/// Write the config into `dir`, start `docker-registry serve` on `port` and
/// wait until `/v2/` answers (200, or 401 with auth; with TLS: until it
/// accepts connections).
async fn spawn_registry(dir: &Path, port: u16, opts: &Spawn) -> Result<Child> {
    let tls = match &opts.tls {
        None => String::new(),
        Some(t) => {
            let mut s = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                t.cert.display(),
                t.key.display()
            );
            if let Some(ca) = &t.client_ca {
                s += &format!("    clientcas:\n      - {}\n", ca.display());
            }
            s
        }
    };
    let auth = if opts.with_auth {
        format!(
            "auth:\n  htpasswd:\n    realm: berth-conformance\n    path: {}\n",
            dir.join("htpasswd").display()
        )
    } else {
        String::new()
    };
    let config = format!(
        "version: 0.1\n\
         log:\n  level: info\n\
         storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n  \
         maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: berth-conformance-secret\n\
         {tls}{auth}",
        data = opts.data.display(),
    );
    let config_path = dir.join("config.yml");
    fs::write(&config_path, config)?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(dir))?;
    let mut cmd = Command::new(REGISTRY_BIN);
    cmd.arg("serve")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // The registry reads REGISTRY_* from the environment: keep ours out.
    for (k, _) in std::env::vars() {
        if k.starts_with("REGISTRY_") {
            cmd.env_remove(k);
        }
    }
    util::die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning {REGISTRY_BIN}"))?;
    let url = format!("http://127.0.0.1:{port}/v2/");
    let tls_only = opts.tls.is_some();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let result = util::poll_until(
        "docker-registry to answer /v2/",
        Duration::from_secs(20),
        || {
            let http = http.clone();
            let url = url.clone();
            let exited = !matches!(child.try_wait(), Ok(None));
            async move {
                if exited {
                    return Some(Err(anyhow!("docker-registry exited during start-up")));
                }
                if tls_only {
                    return tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .ok()
                        .map(|_| Ok(()));
                }
                match http.get(&url).send().await {
                    Ok(r) if r.status().as_u16() == 200 || r.status().as_u16() == 401 => {
                        Some(Ok(()))
                    }
                    _ => None,
                }
            }
        },
    )
    .await
    .and_then(|r| r);
    if let Err(e) = result {
        util::kill_and_reap(&mut child);
        bail!("{e}; registry log:\n{}", util::tail(&log_path(dir), 8192));
    }
    Ok(child)
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- docker-registry log ({}) ----\n{}\n---- end of registry log ----",
                self.log_path().display(),
                util::tail(&self.log_path(), 16 * 1024)
            );
        }
    }
}

/// One htpasswd line with a bcrypt hash, made by `htpasswd -Bbn` (apache2-utils).
pub fn htpasswd_line(c: &Credentials) -> Result<String> {
    let out = Command::new("htpasswd")
        .args(["-Bbn", &c.username, &c.password])
        .stdin(Stdio::null())
        .output()
        .context("running htpasswd: install apache2-utils (.ci/run does)")?;
    if !out.status.success() {
        bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let line = String::from_utf8(out.stdout)?;
    Ok(format!("{}\n", line.trim()))
}

/// A minimal client of the registry HTTP API v2: blob upload (POST + PUT),
/// manifest PUT with its media type, manifest and blob GET.
#[derive(Clone)]
pub struct RegistryClient {
    base: String,
    credentials: Option<Credentials>,
    http: reqwest::Client,
}

impl RegistryClient {
    /// `base` is `http://host:port`.
    pub fn new(base: &str, credentials: Option<Credentials>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("reqwest client");
        RegistryClient {
            base: base.trim_end_matches('/').to_string(),
            credentials,
            http,
        }
    }

    fn req(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, url);
        match &self.credentials {
            Some(c) => rb.basic_auth(&c.username, Some(&c.password)),
            None => rb,
        }
    }

    /// Upload a blob unless the registry already has it in `repo`.
    pub async fn push_blob(&self, repo: &str, blob: &Blob) -> Result<()> {
        let head = self
            .req(
                reqwest::Method::HEAD,
                &format!("{}/v2/{repo}/blobs/{}", self.base, blob.digest),
            )
            .send()
            .await?;
        if head.status().is_success() {
            return Ok(());
        }
        let start = self
            .req(
                reqwest::Method::POST,
                &format!("{}/v2/{repo}/blobs/uploads/", self.base),
            )
            .header("content-length", "0")
            .send()
            .await?;
        if start.status().as_u16() != 202 {
            bail!(
                "starting blob upload to {repo}: {} {}",
                start.status(),
                start.text().await.unwrap_or_default()
            );
        }
        let location = start
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow!("blob upload answer without Location"))?
            .to_string();
        let mut url = if location.starts_with("http://") || location.starts_with("https://") {
            location
        } else {
            format!("{}{}", self.base, location)
        };
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("digest=");
        url.push_str(&blob.digest);
        let put = self
            .req(reqwest::Method::PUT, &url)
            .header("content-type", "application/octet-stream")
            .body(blob.data.clone())
            .send()
            .await?;
        if put.status().as_u16() != 201 {
            bail!(
                "uploading blob {} to {repo}: {} {}",
                blob.digest,
                put.status(),
                put.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// PUT a manifest (or index) under `reference` (a tag or its digest);
    /// returns the digest the registry computed.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        manifest: &Blob,
    ) -> Result<String> {
        let resp = self
            .req(
                reqwest::Method::PUT,
                &format!("{}/v2/{repo}/manifests/{reference}", self.base),
            )
            .header("content-type", &manifest.media_type)
            .body(manifest.data.clone())
            .send()
            .await?;
        if resp.status().as_u16() != 201 {
            bail!(
                "pushing manifest {repo}:{reference} ({}): {} {}",
                manifest.media_type,
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        let digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .unwrap_or(&manifest.digest)
            .to_string();
        if digest != manifest.digest {
            bail!(
                "registry computed {digest} for manifest {}",
                manifest.digest
            );
        }
        Ok(digest)
    }

    /// Config, layers, then the manifest under `tag`. Returns the manifest digest.
    pub async fn push_image(&self, repo: &str, tag: &str, image: &Image) -> Result<String> {
        self.push_image_blobs(repo, image).await?;
        self.push_manifest(repo, tag, &image.manifest).await
    }

    /// Config and layers only.
    pub async fn push_image_blobs(&self, repo: &str, image: &Image) -> Result<()> {
        self.push_blob(repo, &image.config).await?;
        for layer in &image.layers {
            self.push_blob(repo, &layer.blob).await?;
        }
        Ok(())
    }

    /// Every platform image (by digest), then the index under `tag`.
    pub async fn push_index(&self, repo: &str, tag: &str, index: &Index) -> Result<String> {
        for (image, _) in &index.images {
            self.push_image_blobs(repo, image).await?;
            self.push_manifest(repo, &image.manifest.digest, &image.manifest)
                .await?;
        }
        self.push_manifest(repo, tag, &index.manifest).await
    }

    /// GET a manifest; returns (Content-Type, Docker-Content-Digest, body).
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<(String, String, Vec<u8>)> {
        let accept = [
            crate::images::media::DOCKER_MANIFEST,
            crate::images::media::DOCKER_MANIFEST_LIST,
            crate::images::media::OCI_MANIFEST,
            crate::images::media::OCI_INDEX,
        ]
        .join(", ");
        let resp = self
            .req(
                reqwest::Method::GET,
                &format!("{}/v2/{repo}/manifests/{reference}", self.base),
            )
            .header("accept", accept)
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("GET manifest {repo}:{reference}: {}", resp.status());
        }
        let ct = header(&resp, "content-type");
        let digest = header(&resp, "docker-content-digest");
        Ok((ct, digest, resp.bytes().await?.to_vec()))
    }

    /// GET a blob's bytes.
    pub async fn get_blob(&self, repo: &str, digest: &str) -> Result<Vec<u8>> {
        let resp = self
            .req(
                reqwest::Method::GET,
                &format!("{}/v2/{repo}/blobs/{digest}", self.base),
            )
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("GET blob {repo}@{digest}: {}", resp.status());
        }
        Ok(resp.bytes().await?.to_vec())
    }

    /// Status code of an anonymous-or-authenticated GET /v2/.
    pub async fn ping(&self) -> Result<u16> {
        Ok(self
            .req(reqwest::Method::GET, &format!("{}/v2/", self.base))
            .send()
            .await?
            .status()
            .as_u16())
    }
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}
