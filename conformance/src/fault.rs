//! A fault-injecting HTTP/1.1 proxy in front of a registry.
//!
//! berthd pulls `<proxy.host()>/repo:tag` (loopback, so plain HTTP) or uses
//! the proxy as a mirror; the proxy forwards every request to the registry
//! and applies the first matching [`Rule`] to it:
//!
//! * [`Fault::Corrupt`]: the body with one byte flipped (same length), so that
//!   only a digest check can notice;
//! * [`Fault::DropAfter`]: `n` body bytes, then the connection is cut;
//! * [`Fault::StallAfter`]: `n` body bytes, then nothing until the test calls
//!   [`FaultProxy::release_stalled`] or [`FaultProxy::break_stalled`];
//! * [`Fault::Status`]: an error status without asking the registry.
//!
//! A rule applies `times` times (or always), to requests whose path contains
//! a string (a blob digest, `/manifests/`, …). When the registry cannot be
//! reached, the proxy cuts the client connection, as a dead registry would.
//!
//! ```no_run
//! # async fn f(reg: &berth_conformance::registry::Registry, layer_digest: &str) -> anyhow::Result<()> {
//! use berth_conformance::fault::{Fault, FaultProxy, Rule};
//! let proxy = FaultProxy::start(&reg.host()).await?;
//! proxy.add(Rule::new(layer_digest, Fault::Status(503)).times(2));
//! proxy.add(Rule::new(layer_digest, Fault::StallAfter(64 * 1024)));
//! proxy.wait_stalled(1, std::time::Duration::from_secs(30)).await?;
//! assert!(proxy.count(layer_digest) >= 3);
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, anyhow};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// What to do to a matching response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Flip the byte in the middle of the body (same length, same headers).
    Corrupt,
    /// Send `n` body bytes, then cut the connection.
    DropAfter(u64),
    /// Send `n` body bytes, then send nothing more until released or broken
    /// (or the proxy is dropped).
    StallAfter(u64),
    /// Answer this status with an empty body, without asking the registry.
    Status(u16),
}

/// Which requests a fault applies to, and how many times.
#[derive(Clone, Debug)]
pub struct Rule {
    pub path_contains: String,
    pub fault: Fault,
    /// `None`: every matching request.
    pub remaining: Option<usize>,
    /// Body faults apply to GET only; `Status` to any method unless set.
    pub get_only: bool,
}

impl Rule {
    pub fn new(path_contains: &str, fault: Fault) -> Rule {
        let get_only = !matches!(fault, Fault::Status(_));
        Rule {
            path_contains: path_contains.to_string(),
            fault,
            remaining: None,
            get_only,
        }
    }

    /// Apply to the first `n` matching requests only.
    pub fn times(mut self, n: usize) -> Rule {
        self.remaining = Some(n);
        self
    }

    /// Apply to GET requests only (not HEAD).
    pub fn get_only(mut self) -> Rule {
        self.get_only = true;
        self
    }
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Status sent to the client (0 when the connection was cut before a response).
    pub status: u16,
    pub fault: Option<Fault>,
}

#[derive(Default)]
struct Control {
    release_gen: u64,
    break_gen: u64,
    shutdown: bool,
}

struct Shared {
    upstream: String,
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<Seen>>,
    stalled: watch::Sender<usize>,
    control: watch::Sender<Control>,
}

/// The running proxy. Dropping it closes every connection it holds.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listen on 127.0.0.1 at a free port and forward to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            rules: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            stalled: watch::channel(0).0,
            control: watch::channel(Control::default()).0,
        });
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(serve_connection(stream, s));
            }
        });
        Ok(FaultProxy {
            addr,
            shared,
            accept,
        })
    }

    /// `127.0.0.1:PORT`, the registry host to put in references or mirrors.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `<proxy host>/<repo_and_tag>`.
    pub fn reference(&self, repo_and_tag: &str) -> String {
        format!("{}/{}", self.host(), repo_and_tag)
    }

    /// Add a rule (rules are tried in the order they were added).
    pub fn add(&self, rule: Rule) {
        lock(&self.shared.rules).push(rule);
    }

    /// Remove every rule (stalled streams stay stalled: release or break them).
    pub fn clear(&self) {
        lock(&self.shared.rules).clear();
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.shared.seen).clone()
    }

    /// How many requests had `path_contains` in their path.
    pub fn count(&self, path_contains: &str) -> usize {
        lock(&self.shared.seen)
            .iter()
            .filter(|s| s.path.contains(path_contains))
            .count()
    }

    /// How many GET requests had `path_contains` in their path.
    pub fn count_get(&self, path_contains: &str) -> usize {
        lock(&self.shared.seen)
            .iter()
            .filter(|s| s.method == "GET" && s.path.contains(path_contains))
            .count()
    }

    /// How many streams have stalled so far (ever).
    pub fn stalled(&self) -> usize {
        *self.shared.stalled.borrow()
    }

    /// Wait until at least `n` streams have stalled.
    pub async fn wait_stalled(&self, n: usize, timeout: Duration) -> Result<()> {
        let mut rx = self.shared.stalled.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|v| *v >= n))
            .await
            .map_err(|_| {
                anyhow!(
                    "no stalled stream after {timeout:?} (requests seen: {:?})",
                    self.seen()
                )
            })?
            .map_err(|e| anyhow!("{e}"))?;
        Ok(())
    }

    /// Let every stalled stream go on (they send the rest of their body).
    pub fn release_stalled(&self) {
        self.shared.control.send_modify(|c| c.release_gen += 1);
    }

    /// Cut every stalled stream's connection.
    pub fn break_stalled(&self) {
        self.shared.control.send_modify(|c| c.break_gen += 1);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.control.send_modify(|c| c.shutdown = true);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let mut shutdown = shared.control.subscribe();
    let svc = hyper::service::service_fn(move |req| handle(req, shared.clone()));
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        _ = conn => {}
        _ = shutdown.wait_for(|c| c.shutdown) => {}
    }
}

fn take_rule(shared: &Shared, method: &hyper::Method, path: &str) -> Option<Fault> {
    let mut rules = lock(&shared.rules);
    for rule in rules.iter_mut() {
        if !path.contains(&rule.path_contains) {
            continue;
        }
        if rule.get_only && method != hyper::Method::GET {
            continue;
        }
        match &mut rule.remaining {
            Some(0) => continue,
            Some(n) => *n -= 1,
            None => {}
        }
        return Some(rule.fault.clone());
    }
    None
}

fn record(shared: &Shared, method: &hyper::Method, path: &str, status: u16, fault: Option<Fault>) {
    lock(&shared.seen).push(Seen {
        method: method.to_string(),
        path: path.to_string(),
        status,
        fault,
    });
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<ProxyBody>, BoxError> {
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".into());
    let fault = take_rule(&shared, &method, &path);

    if let Some(Fault::Status(code)) = fault {
        record(&shared, &method, &path, code, fault.clone());
        let resp = Response::builder()
            .status(StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE))
            .header("content-length", "0")
            .header("docker-distribution-api-version", "registry/2.0")
            .body(
                Full::new(Bytes::new())
                    .map_err(|e: Infallible| match e {})
                    .boxed(),
            )?;
        return Ok(resp);
    }

    // One upstream connection per request: simple, and a dead registry is
    // seen at once.
    let upstream = match TcpStream::connect(&shared.upstream).await {
        Ok(s) => s,
        Err(e) => {
            record(&shared, &method, &path, 0, fault);
            // Cut the client's connection, as a dead registry would.
            return Err(Box::new(e));
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let (mut parts, body) = req.into_parts();
    parts.headers.remove("connection");
    let resp = match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(e) => {
            record(&shared, &method, &path, 0, fault);
            return Err(Box::new(e));
        }
    };
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove("connection");
    record(
        &shared,
        &method,
        &path,
        parts.status.as_u16(),
        fault.clone(),
    );
    let content_length = parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = match fault {
        None => body.map_err(|e| Box::new(e) as BoxError).boxed(),
        Some(f) if !parts.status.is_success() => {
            let _ = f;
            body.map_err(|e| Box::new(e) as BoxError).boxed()
        }
        Some(f) => faulty_body(body, f, content_length, shared.clone()),
    };
    Ok(Response::from_parts(parts, body))
}

struct BodyState {
    inner: Incoming,
    fault: Option<Fault>,
    sent: u64,
    corrupt_at: u64,
    pending: Option<Bytes>,
    done: bool,
    shared: Arc<Shared>,
}

fn faulty_body(
    inner: Incoming,
    fault: Fault,
    content_length: Option<u64>,
    shared: Arc<Shared>,
) -> ProxyBody {
    let st = BodyState {
        inner,
        fault: Some(fault),
        sent: 0,
        corrupt_at: content_length.map(|l| l / 2).unwrap_or(0),
        pending: None,
        done: false,
        shared,
    };
    let stream = futures::stream::unfold(st, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            let chunk = match st.pending.take() {
                Some(b) => b,
                None => match st.inner.frame().await {
                    None => return None,
                    Some(Err(e)) => {
                        st.done = true;
                        return Some((Err(Box::new(e) as BoxError), st));
                    }
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(d) => d,
                        Err(other) => return Some((Ok(other), st)),
                    },
                },
            };
            let len = chunk.len() as u64;
            match st.fault.clone() {
                Some(Fault::DropAfter(n)) | Some(Fault::StallAfter(n)) if st.sent + len > n => {
                    if st.sent < n {
                        // send up to the threshold first
                        let k = (n - st.sent) as usize;
                        let mut head = chunk;
                        let rest = head.split_off(k);
                        st.pending = Some(rest);
                        st.sent += k as u64;
                        return Some((Ok(Frame::data(head)), st));
                    }
                    if let Some(Fault::DropAfter(_)) = st.fault {
                        // Let hyper flush what was sent before cutting, so the
                        // client gets exactly n bytes.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        st.done = true;
                        return Some((
                            Err(BoxError::from("fault proxy: connection dropped mid body")),
                            st,
                        ));
                    }
                    // Stall here until released, broken or shut down.
                    st.pending = Some(chunk);
                    let mut ctl = st.shared.control.subscribe();
                    let (release0, break0) = {
                        let c = ctl.borrow();
                        (c.release_gen, c.break_gen)
                    };
                    st.shared.stalled.send_modify(|n| *n += 1);
                    let outcome = ctl
                        .wait_for(|c| {
                            c.shutdown || c.break_gen != break0 || c.release_gen != release0
                        })
                        .await
                        .map(|c| c.release_gen != release0 && !c.shutdown && c.break_gen == break0)
                        .unwrap_or(false);
                    if outcome {
                        st.fault = None;
                        continue;
                    }
                    st.done = true;
                    return Some((
                        Err(BoxError::from("fault proxy: stalled stream broken")),
                        st,
                    ));
                }
                Some(Fault::Corrupt)
                    if st.corrupt_at >= st.sent && st.corrupt_at < st.sent + len =>
                {
                    let mut v = chunk.to_vec();
                    let i = (st.corrupt_at - st.sent) as usize;
                    v[i] ^= 0xff;
                    st.sent += len;
                    st.fault = None;
                    return Some((Ok(Frame::data(Bytes::from(v))), st));
                }
                _ => {
                    st.sent += len;
                    return Some((Ok(Frame::data(chunk)), st));
                }
            }
        }
    });
    StreamBody::new(stream).boxed()
}
