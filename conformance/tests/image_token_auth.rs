//! The registry bearer-token flow (Docker's token authentication, what
//! Docker Hub, ghcr.io and registry.k8s.io's backends use), and the CRI
//! AuthConfig forms that ride on it: anonymous tokens, username/password at
//! the token endpoint, `identity_token` (an OAuth2 refresh token) and
//! `registry_token` (a bearer token sent as it is).
//!
//! docker-registry only checks tokens signed by a token server with
//! certificates; a small gate in front of it plays both parts instead: it
//! answers 401 with a `Bearer realm=...` challenge, issues tokens at its
//! realm, and forwards requests that carry a valid token to the registry.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use berth_conformance::Env;
use berth_conformance::cri::auth_basic;
use berth_conformance::images::{Format, ImageBuilder};
use berth_cri_api::v1::AuthConfig;
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tonic::Code;

const REFRESH_TOKEN: &str = "refresh-token-of-alice";
const REGISTRY_TOKEN: &str = "static-registry-token";

struct Gate {
    addr: SocketAddr,
    token_requests: Arc<AtomicUsize>,
    unauthorized: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct GateState {
    upstream: String,
    realm: String,
    token_requests: Arc<AtomicUsize>,
    unauthorized: Arc<AtomicUsize>,
    http: reqwest::Client,
}

impl Gate {
    async fn start(upstream: String) -> Gate {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gate");
        let addr = listener.local_addr().expect("gate address");
        let token_requests = Arc::new(AtomicUsize::new(0));
        let unauthorized = Arc::new(AtomicUsize::new(0));
        let state = Arc::new(GateState {
            upstream,
            realm: format!("http://{addr}/token"),
            token_requests: token_requests.clone(),
            unauthorized: unauthorized.clone(),
            http: reqwest::Client::new(),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Gate {
            addr,
            token_requests,
            unauthorized,
            task,
        }
    }

    fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr)
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

fn basic_user(req: &Request<Incoming>) -> Option<(String, String)> {
    let h = req.headers().get("authorization")?.to_str().ok()?;
    let b = base64::engine::general_purpose::STANDARD
        .decode(h.strip_prefix("Basic ")?)
        .ok()?;
    let s = String::from_utf8(b).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%3A", ":").replace("%2F", "/")))
        .collect()
}

impl GateState {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        if path == "/token" {
            return self.token(req).await;
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return reply(StatusCode::NOT_FOUND, "");
        };
        let repo = ["/manifests/", "/blobs/"]
            .iter()
            .find_map(|m| rest.split_once(m).map(|(r, _)| r.to_string()))
            .unwrap_or_default();
        let token = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_string();
        let valid = match token.as_str() {
            "token-of-alice" | REGISTRY_TOKEN => true,
            t => t.strip_prefix("anonymous-token-for-").is_some_and(|scope| {
                scope == format!("repository:{repo}:pull") && repo.starts_with("public/")
            }),
        };
        if !valid {
            self.unauthorized.fetch_add(1, Ordering::SeqCst);
            let mut r = reply(
                StatusCode::UNAUTHORIZED,
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            );
            let challenge = format!(
                r#"Bearer realm="{}",service="berth-test",scope="repository:{repo}:pull""#,
                self.realm
            );
            r.headers_mut()
                .insert("www-authenticate", challenge.parse().expect("header"));
            return r;
        }
        // Forward to the registry with the same method, path and Accept.
        let url = format!("{}{}", self.upstream, req.uri());
        let mut fwd = self.http.request(req.method().clone(), url);
        if let Some(a) = req.headers().get("accept") {
            fwd = fwd.header("accept", a.clone());
        }
        if let Some(rg) = req.headers().get("range") {
            fwd = fwd.header("range", rg.clone());
        }
        let Ok(up) = fwd.send().await else {
            return reply(StatusCode::BAD_GATEWAY, "");
        };
        let status = up.status();
        let headers = up.headers().clone();
        let body = up.bytes().await.unwrap_or_default();
        let mut r = reply(status, body);
        for h in ["content-type", "docker-content-digest", "content-range"] {
            if let Some(v) = headers.get(h) {
                r.headers_mut().insert(h, v.clone());
            }
        }
        r
    }

    async fn token(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        self.token_requests.fetch_add(1, Ordering::SeqCst);
        if req.method() == hyper::Method::POST {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let form: HashMap<String, String> = String::from_utf8_lossy(&body)
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            if form.get("grant_type").map(String::as_str) == Some("refresh_token")
                && form.get("refresh_token").map(String::as_str) == Some(REFRESH_TOKEN)
            {
                return reply(StatusCode::OK, r#"{"access_token":"token-of-alice"}"#);
            }
            return reply(StatusCode::UNAUTHORIZED, r#"{"error":"invalid_grant"}"#);
        }
        let q = query(&req);
        match basic_user(&req) {
            Some((u, p)) if u == "alice" && p == "s3cret" => {
                reply(StatusCode::OK, r#"{"token":"token-of-alice"}"#)
            }
            Some(_) => reply(
                StatusCode::UNAUTHORIZED,
                r#"{"details":"wrong credentials"}"#,
            ),
            None => {
                let scope = q.get("scope").cloned().unwrap_or_default();
                reply(
                    StatusCode::OK,
                    format!(r#"{{"token":"anonymous-token-for-{scope}"}}"#),
                )
            }
        }
    }
}

async fn setup(repo_tag: &str) -> (Env, Gate, String, String) {
    let env = Env::start().await;
    let img = ImageBuilder::busybox(Format::Oci).build();
    env.push(repo_tag, &img).await;
    let gate = Gate::start(env.registry.url()).await;
    let r = gate.reference(repo_tag);
    (env, gate, r, img.id().to_string())
}

#[tokio::test]
async fn anonymous_bearer_token_flow_pulls_a_public_image() {
    let (env, gate, r, id) = setup("public/app:1").await;
    assert_eq!(
        env.cri
            .pull(&r)
            .await
            .expect("anonymous pull through the token flow"),
        id
    );
    assert!(
        gate.unauthorized.load(Ordering::SeqCst) >= 1,
        "the gate must have challenged"
    );
    let tokens = gate.token_requests.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&tokens),
        "one token per pull is enough (manifest, config and layers reuse it), got {tokens}"
    );
    env.finish().await;
}

#[tokio::test]
async fn anonymous_pull_of_a_private_repository_is_refused() {
    let (env, _gate, r, _) = setup("private/app:1").await;
    let before = env.snapshot();
    expect_code(
        env.cri.pull(&r).await,
        &[Code::Unauthenticated, Code::PermissionDenied],
        "anonymous pull of a private repository",
    );
    env.assert_no_leaks_since(&before).await;
    env.finish().await;
}

#[tokio::test]
async fn username_and_password_are_exchanged_for_a_token() {
    let (env, _gate, r, id) = setup("private/app:2").await;
    let got = env
        .cri
        .pull_with_auth(&r, auth_basic("alice", "s3cret"))
        .await
        .expect("pull with username/password at the token endpoint");
    assert_eq!(got, id);
    env.finish().await;
}

#[tokio::test]
async fn wrong_password_at_the_token_endpoint_is_unauthenticated() {
    let (env, _gate, r, _) = setup("private/app:3").await;
    expect_code(
        env.cri
            .pull_with_auth(&r, auth_basic("alice", "wrong"))
            .await,
        &[Code::Unauthenticated],
        "wrong password at the token endpoint",
    );
    env.finish().await;
}

#[tokio::test]
async fn identity_token_is_exchanged_as_an_oauth2_refresh_token() {
    let (env, _gate, r, id) = setup("private/app:4").await;
    let auth = AuthConfig {
        username: "alice".into(),
        identity_token: REFRESH_TOKEN.into(),
        ..Default::default()
    };
    assert_eq!(
        env.cri
            .pull_with_auth(&r, auth)
            .await
            .expect("pull with identity_token"),
        id
    );
    let bad = AuthConfig {
        identity_token: "not-a-refresh-token".into(),
        ..Default::default()
    };
    expect_code(
        env.cri.pull_with_auth(&r, bad).await,
        &[Code::Unauthenticated],
        "a refused identity token",
    );
    env.finish().await;
}

#[tokio::test]
async fn registry_token_is_sent_as_a_bearer_token() {
    let (env, gate, r, id) = setup("private/app:5").await;
    let auth = AuthConfig {
        registry_token: REGISTRY_TOKEN.into(),
        ..Default::default()
    };
    assert_eq!(
        env.cri
            .pull_with_auth(&r, auth)
            .await
            .expect("pull with registry_token"),
        id
    );
    assert_eq!(
        gate.token_requests.load(Ordering::SeqCst),
        0,
        "a registry token needs no token endpoint"
    );
    env.finish().await;
}
