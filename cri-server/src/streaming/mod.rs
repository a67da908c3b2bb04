//! berthd's streaming server: the HTTP server that the URLs Exec, Attach
//! and PortForward return point at, as the reference cri-streaming server
//! (k8s.io/kubelet/pkg/cri/streaming) does it.
//!
//! * A CRI call checks its request (the container runs, the streams make
//!   sense), parks it under a random single-use token (one minute to live,
//!   [`MAX_IN_FLIGHT`] at once) and answers `http://ADDR:PORT/exec/TOKEN`
//!   (`/attach/`, `/portforward/`).
//! * The client (kubelet proxying the API server's stream, or crictl)
//!   upgrades that URL to SPDY/3.1 or to a WebSocket; the session
//!   ([`session`], [`portforward`]) then moves the bytes between the
//!   client's streams and the descriptors berth-shim hands over.

pub mod fdio;
pub mod portforward;
pub mod session;
pub mod spdy;
pub mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_runtime::service::{Runtime, StreamAsk};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::config::StreamingSection;

/// Requests waiting for their client, at most (cri-streaming's cache size).
pub const MAX_IN_FLIGHT: usize = 1000;
/// A token's life.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);

/// What a token stands for.
#[derive(Clone, Debug)]
pub enum Pending {
    Exec {
        container: String,
        cmd: Vec<String>,
        ask: StreamAsk,
    },
    Attach {
        container: String,
        ask: StreamAsk,
    },
    PortForward {
        pod: String,
        /// The pod's network namespace; None: the node's.
        netns: Option<std::path::PathBuf>,
    },
}

/// Requests waiting for their clients, by token.
#[derive(Default)]
struct Tokens(HashMap<String, (Pending, Instant)>);

impl Tokens {
    fn park(&mut self, token: String, p: Pending, now: Instant) -> Result<(), StreamingError> {
        self.0
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < TOKEN_TTL);
        if self.0.len() >= MAX_IN_FLIGHT {
            return Err(StreamingError::Full);
        }
        self.0.insert(token, (p, now));
        Ok(())
    }

    /// The request, if the token is known, of this kind and not expired;
    /// it is used up either way.
    fn take(&mut self, kind: &str, token: &str, now: Instant) -> Option<Pending> {
        let (p, at) = self.0.remove(token)?;
        (p.kind() == kind && now.saturating_duration_since(at) < TOKEN_TTL).then_some(p)
    }
}

impl Pending {
    /// The URL path's first part.
    fn kind(&self) -> &'static str {
        match self {
            Pending::Exec { .. } => "exec",
            Pending::Attach { .. } => "attach",
            Pending::PortForward { .. } => "portforward",
        }
    }
}

pub struct Server {
    base: String,
    tokens: Mutex<Tokens>,
    runtime: Arc<Runtime>,
    cfg: StreamingSection,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    #[error("{MAX_IN_FLIGHT} streaming requests are already waiting for their clients")]
    Full,
    #[error("{0}")]
    Internal(String),
}

impl Server {
    /// Binds the configured address and serves in the background.
    pub async fn start(
        cfg: StreamingSection,
        runtime: Arc<Runtime>,
    ) -> anyhow::Result<Arc<Server>> {
        use anyhow::Context;
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(cfg.address, cfg.port))
            .await
            .with_context(|| {
                format!(
                    "binding the streaming server to {}",
                    SocketAddr::new(cfg.address, cfg.port)
                )
            })?;
        let local = listener.local_addr()?;
        let scheme = if cfg.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(c), Some(k)) => Some(tls_acceptor(c, k)?),
            _ => None,
        };
        let server = Arc::new(Server {
            base: format!("{scheme}://{local}"),
            tokens: Mutex::new(Tokens::default()),
            runtime,
            cfg,
        });
        tracing::info!(url = %server.base, "streaming server listening");
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, peer)) = listener.accept().await else {
                    continue;
                };
                let _ = sock.set_nodelay(true);
                let s = s.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, std::convert::Infallible>(s.handle(req).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    let r = match tls {
                        Some(acceptor) => match acceptor.accept(sock).await {
                            Ok(tls) => http
                                .serve_connection(TokioIo::new(tls), svc)
                                .with_upgrades()
                                .await
                                .map_err(|e| e.to_string()),
                            Err(e) => Err(format!("TLS handshake: {e}")),
                        },
                        None => http
                            .serve_connection(TokioIo::new(sock), svc)
                            .with_upgrades()
                            .await
                            .map_err(|e| e.to_string()),
                    };
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "streaming connection");
                    }
                });
            }
        });
        Ok(server)
    }

    /// Parks `p` and returns its URL.
    pub fn url(&self, p: Pending) -> Result<String, StreamingError> {
        let kind = p.kind();
        let token = berth_runtime::service::new_id()
            .map_err(|e| StreamingError::Internal(e.to_string()))?;
        self.tokens
            .lock()
            .map_err(|_| StreamingError::Internal("token cache poisoned".into()))?
            .park(token.clone(), p, Instant::now())?;
        Ok(format!("{}/{kind}/{token}", self.base))
    }

    /// The request a token stands for, once: it is used up.
    fn take(&self, kind: &str, token: &str) -> Option<Pending> {
        self.tokens.lock().ok()?.take(kind, token, Instant::now())
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (kind, token) = (
            parts.next().unwrap_or_default().to_string(),
            parts.next().unwrap_or_default().to_string(),
        );
        if !matches!(*req.method(), hyper::Method::GET | hyper::Method::POST) {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "GET or POST only");
        }
        if !matches!(kind.as_str(), "exec" | "attach" | "portforward") {
            return plain(StatusCode::NOT_FOUND, "unknown streaming path");
        }
        let Some(pending) = self.take(&kind, &token) else {
            return plain(
                StatusCode::NOT_FOUND,
                "unknown, used or expired streaming token: ask the CRI call again",
            );
        };
        if ws::is_websocket(&req) {
            self.websocket(req, pending).await
        } else if berth_stream::upgrade::is_spdy_upgrade(req.headers()) {
            self.spdy(req, pending).await
        } else {
            plain(
                StatusCode::BAD_REQUEST,
                "upgrade to SPDY/3.1 or to a WebSocket to stream",
            )
        }
    }

    async fn spdy(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        p: Pending,
    ) -> Response<Full<Bytes>> {
        use berth_stream::k8s::protocol;
        let supported = match p {
            Pending::PortForward { .. } => protocol::PORT_FORWARD,
            _ => protocol::REMOTECOMMAND_SPDY,
        };
        let accepted = match berth_stream::upgrade::accept(req.headers(), supported) {
            Ok(a) => a,
            Err(e) => {
                let mut r = plain(e.status(), &e.to_string());
                r.headers_mut().extend(e.response_headers());
                return r;
            }
        };
        let protocol = accepted.protocol.to_string();
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *resp.headers_mut() = accepted.headers;
        let upgrade = hyper::upgrade::on(&mut req);
        let rt = self.runtime.clone();
        let (idle, creation) = (self.cfg.idle_timeout, self.cfg.stream_creation_timeout);
        tokio::spawn(async move {
            let Ok(up) = upgrade.await else { return };
            let _open = crate::metrics::get().stream_opened(p.kind());
            let session = spdy::session(TokioIo::new(up), idle);
            match p {
                Pending::Exec {
                    container,
                    cmd,
                    ask,
                } => {
                    if let Some(st) =
                        spdy::remotecommand(session.clone(), &protocol, &ask, creation).await
                    {
                        session::exec(rt, container, cmd, ask, st).await;
                    }
                }
                Pending::Attach { container, ask } => {
                    if let Some(st) =
                        spdy::remotecommand(session.clone(), &protocol, &ask, creation).await
                    {
                        session::attach(rt, container, ask, st).await;
                    }
                }
                Pending::PortForward { pod, netns } => {
                    tracing::debug!(%pod, "port-forward over SPDY");
                    spdy::portforward(session.clone(), portforward::connector(netns)).await;
                }
            }
            session.close().await;
        });
        resp
    }

    async fn websocket(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        p: Pending,
    ) -> Response<Full<Bytes>> {
        let supported = match p {
            Pending::PortForward { .. } => ws::PORTFORWARD,
            _ => ws::REMOTECOMMAND,
        };
        let protocol = match ws::choose(&req, supported) {
            Ok(p) => p,
            Err(e) => return plain(StatusCode::FORBIDDEN, &e),
        };
        let tunnel = protocol.as_deref() == Some(ws::SPDY_TUNNEL);
        let ports = match &p {
            Pending::PortForward { .. } if !tunnel => match query_ports(req.uri().query()) {
                Ok(p) => p,
                Err(e) => return plain(StatusCode::BAD_REQUEST, &e),
            },
            _ => Vec::new(),
        };
        let resp = match ws::accept(&req, protocol.as_deref()) {
            Ok(r) => r,
            Err(e) => return plain(StatusCode::BAD_REQUEST, &e),
        };
        let upgrade = hyper::upgrade::on(&mut req);
        let rt = self.runtime.clone();
        let idle = self.cfg.idle_timeout;
        tokio::spawn(async move {
            let Ok(up) = upgrade.await else { return };
            let _open = crate::metrics::get().stream_opened(p.kind());
            let sock = ws::websocket(up).await;
            match p {
                Pending::Exec {
                    container,
                    cmd,
                    ask,
                } => {
                    let st = ws::remotecommand(sock, protocol.as_deref(), &ask, idle);
                    session::exec(rt, container, cmd, ask, st).await;
                }
                Pending::Attach { container, ask } => {
                    let st = ws::remotecommand(sock, protocol.as_deref(), &ask, idle);
                    session::attach(rt, container, ask, st).await;
                }
                Pending::PortForward { pod, netns } if tunnel => {
                    tracing::debug!(%pod, "port-forward over SPDY in a WebSocket");
                    let session = spdy::session(ws::byte_stream(sock), idle);
                    spdy::portforward(session.clone(), portforward::connector(netns)).await;
                    session.close().await;
                }
                Pending::PortForward { pod, netns } => {
                    tracing::debug!(%pod, ?ports, "port-forward over a WebSocket");
                    ws::portforward(
                        sock,
                        protocol.as_deref(),
                        ports,
                        portforward::connector(netns),
                        idle,
                    )
                    .await;
                }
            }
        });
        resp
    }
}

/// `?ports=80,443` (also repeated `ports=`).
fn query_ports(query: Option<&str>) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for pair in query.unwrap_or_default().split('&') {
        let Some(v) = pair.strip_prefix("ports=") else {
            continue;
        };
        for p in v.split("%2C").flat_map(|s| s.split(',')) {
            let port: u16 = p
                .parse()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| format!("{p:?} is not a port"))?;
            out.push(port);
        }
    }
    if out.is_empty() {
        return Err("port-forward over a WebSocket needs ?ports=".into());
    }
    Ok(out)
}

fn plain(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = status;
    r
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use anyhow::Context;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the streaming TLS certificate and key")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf() -> Pending {
        Pending::PortForward {
            pod: "p".into(),
            netns: None,
        }
    }

    #[test]
    fn tokens_are_single_use_of_their_kind_and_expire_after_a_minute() {
        let mut t = Tokens::default();
        let now = Instant::now();
        t.park("a".into(), pf(), now).unwrap();
        assert!(
            t.take("exec", "a", now).is_none(),
            "a port-forward token is no exec's"
        );
        assert!(
            t.take("portforward", "a", now).is_none(),
            "and it is used up"
        );
        t.park("b".into(), pf(), now).unwrap();
        assert!(
            t.take("portforward", "b", now + Duration::from_secs(30))
                .is_some()
        );
        t.park("c".into(), pf(), now).unwrap();
        assert!(
            t.take("portforward", "c", now + TOKEN_TTL + Duration::from_secs(1))
                .is_none(),
            "expired"
        );
        assert!(t.take("portforward", "never", now).is_none());
    }

    #[test]
    fn at_most_a_thousand_wait_and_expired_ones_make_room() {
        let mut t = Tokens::default();
        let now = Instant::now();
        for i in 0..MAX_IN_FLIGHT {
            t.park(i.to_string(), pf(), now).unwrap();
        }
        assert!(matches!(
            t.park("x".into(), pf(), now),
            Err(StreamingError::Full)
        ));
        t.park("y".into(), pf(), now + TOKEN_TTL).unwrap();
    }
}
