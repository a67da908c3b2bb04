//! The HTTP/1.1 handshake that turns a request into a SPDY/3.1 connection,
//! as Kubernetes does it (apimachinery's `httpstream.Handshake` and
//! `spdy.responseUpgrader` on the server side, `SpdyRoundTripper` on the
//! client side).
//!
//! Client: `POST` (kubectl, crictl) or `GET` with `Connection: Upgrade`,
//! `Upgrade: SPDY/3.1` and one `X-Stream-Protocol-Version` header per protocol
//! it speaks, most preferred first. Server: the first of the client's
//! protocols that it supports wins and comes back in the `101 Switching
//! Protocols` response with `Connection: Upgrade` and `Upgrade: SPDY/3.1`; no
//! common protocol is `403 Forbidden` with `X-Accepted-Stream-Protocol-Versions`
//! listing what the server accepts; a request without the version header, or
//! without the upgrade headers, is `400 Bad Request`. After the 101 both
//! sides speak SPDY on the same connection.
//!
//! Server side here is plain functions over `http::HeaderMap`, for any HTTP
//! server (with hyper 1: answer the request with [`accept`]'s headers and
//! status 101, then run [`crate::spdy::Session::server`] on
//! `TokioIo::new(hyper::upgrade::on(req).await?)`). Client side,
//! [`client_handshake`] writes the request on a raw stream (TCP, Unix, TLS)
//! and parses the response with `httparse`; bytes the server sent after the
//! response are kept ([`PrefixedIo`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::k8s::header::{ACCEPTED_PROTOCOL_VERSIONS, PROTOCOL_VERSION};

/// The `Upgrade` token.
pub const SPDY_31: &str = "SPDY/3.1";

/// Why the server side refuses an upgrade.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// No `X-Stream-Protocol-Version` in the request (400).
    #[error("unable to upgrade: X-Stream-Protocol-Version is required")]
    MissingProtocolVersion,
    /// None of the client's protocols is supported (403).
    #[error(
        "unable to upgrade: unable to negotiate protocol: client supports {client:?}, server accepts {server:?}"
    )]
    NoCommonProtocol {
        /// What the client offered.
        client: Vec<String>,
        /// What the server accepts.
        server: Vec<String>,
    },
    /// `Connection: Upgrade` / `Upgrade: SPDY/3.1` missing (400).
    #[error("unable to upgrade: missing upgrade headers in request")]
    NotSpdyUpgrade,
}

impl HandshakeError {
    /// The HTTP status to answer with (kubelet's).
    pub fn status(&self) -> StatusCode {
        match self {
            HandshakeError::NoCommonProtocol { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// Headers of the error response: for 403, one
    /// `X-Accepted-Stream-Protocol-Versions` per accepted protocol.
    pub fn response_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let HandshakeError::NoCommonProtocol { server, .. } = self {
            for p in server {
                if let Ok(v) = HeaderValue::from_str(p) {
                    h.append(ACCEPTED_PROTOCOL_VERSIONS, v);
                }
            }
        }
        h
    }
}

/// The protocols a request offers, in order: every `X-Stream-Protocol-Version`
/// header, each split at commas and trimmed.
pub fn client_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(PROTOCOL_VERSION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim_matches(' ').to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Picks the protocol: the first the client offers that `supported` has.
pub fn negotiate<'a>(
    headers: &HeaderMap,
    supported: &[&'a str],
) -> Result<&'a str, HandshakeError> {
    let client = client_protocols(headers);
    if client.is_empty() {
        return Err(HandshakeError::MissingProtocolVersion);
    }
    for c in &client {
        if let Some(s) = supported.iter().find(|s| **s == c) {
            return Ok(s);
        }
    }
    Err(HandshakeError::NoCommonProtocol {
        client,
        server: supported.iter().map(|s| s.to_string()).collect(),
    })
}

fn header_contains(headers: &HeaderMap, name: &str, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains(&token.to_ascii_lowercase()))
}

/// Whether a request (or response) asks for the SPDY/3.1 upgrade.
pub fn is_spdy_upgrade(headers: &HeaderMap) -> bool {
    header_contains(headers, "connection", "upgrade")
        && header_contains(headers, "upgrade", SPDY_31)
}

/// An accepted upgrade: the protocol and the headers of the 101 response.
#[derive(Clone, Debug)]
pub struct Accepted<'a> {
    /// The negotiated protocol.
    pub protocol: &'a str,
    /// `Connection: Upgrade`, `Upgrade: SPDY/3.1`, `X-Stream-Protocol-Version`.
    pub headers: HeaderMap,
}

/// The server side of the handshake: negotiates the protocol (first, as
/// kubelet does), checks the upgrade headers, and returns the 101 headers.
/// On error answer with [`HandshakeError::status`], its
/// [`HandshakeError::response_headers`] and its text as the body.
pub fn accept<'a>(
    request: &HeaderMap,
    supported: &[&'a str],
) -> Result<Accepted<'a>, HandshakeError> {
    let protocol = negotiate(request, supported)?;
    if !is_spdy_upgrade(request) {
        return Err(HandshakeError::NotSpdyUpgrade);
    }
    Ok(Accepted {
        protocol,
        headers: switching_protocols_headers(protocol),
    })
}

/// The headers of a 101 response for `protocol`.
pub fn switching_protocols_headers(protocol: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    h.insert(http::header::UPGRADE, HeaderValue::from_static(SPDY_31));
    if let Ok(v) = HeaderValue::from_str(protocol) {
        h.insert(PROTOCOL_VERSION, v);
    }
    h
}

/// What the client side sends.
#[derive(Clone, Debug)]
pub struct UpgradeRequest<'a> {
    /// `POST` (what kubectl and crictl use) or `GET`.
    pub method: &'a str,
    /// Path and query, e.g. `/exec/<token>`.
    pub path: &'a str,
    /// The `Host` header (`host:port`).
    pub host: &'a str,
    /// Protocols offered, most preferred first.
    pub protocols: &'a [&'a str],
    /// More headers (e.g. `Authorization`).
    pub headers: &'a [(&'a str, &'a str)],
}

impl UpgradeRequest<'_> {
    /// The request bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ClientHandshakeError> {
        let bad = |what: &str| ClientHandshakeError::InvalidRequest(what.to_string());
        let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
        let clean = |s: &str| s.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
        if !token(self.method) {
            return Err(bad("method"));
        }
        if !self.path.starts_with('/') || !token(self.path) {
            return Err(bad("path"));
        }
        if !clean(self.host) || self.host.is_empty() {
            return Err(bad("host"));
        }
        let mut out = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: {SPDY_31}\r\n",
            self.method, self.path, self.host
        );
        for p in self.protocols {
            if !token(p) {
                return Err(bad("protocol"));
            }
            out.push_str(&format!("{PROTOCOL_VERSION}: {p}\r\n"));
        }
        for (n, v) in self.headers {
            if !token(n) || n.contains(':') || !clean(v) {
                return Err(bad("header"));
            }
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        if self.method.eq_ignore_ascii_case("POST") || self.method.eq_ignore_ascii_case("PUT") {
            out.push_str("Content-Length: 0\r\n");
        }
        out.push_str("\r\n");
        Ok(out.into_bytes())
    }
}

/// Why the client side of the handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientHandshakeError {
    /// The request could not be written, or the response read.
    #[error("upgrade handshake: {0}")]
    Io(#[from] io::Error),
    /// Something in the request is not valid HTTP.
    #[error("invalid upgrade request: bad {0}")]
    InvalidRequest(String),
    /// The response is not valid HTTP/1.1, or too large.
    #[error("malformed upgrade response: {0}")]
    Malformed(String),
    /// The server answered, but did not switch protocols.
    #[error("unable to upgrade connection: {status}: {body}")]
    Refused {
        /// Its status.
        status: u16,
        /// Its headers.
        headers: HeaderMap,
        /// Its body (as much as came, at most 64 KiB).
        body: String,
    },
}

/// A successful client handshake.
#[derive(Debug)]
pub struct ClientUpgraded<S> {
    /// The connection, to hand to [`crate::spdy::Session::client`].
    pub io: PrefixedIo<S>,
    /// The protocol the server chose (`None` if it named none, which
    /// client-go takes as v1).
    pub protocol: Option<String>,
    /// The 101 response's headers.
    pub headers: HeaderMap,
}

const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Writes the upgrade request on `io` and reads the response. On 101 with the
/// SPDY/3.1 upgrade headers, returns the connection ready for SPDY (with any
/// bytes already read past the response kept in front).
pub async fn client_handshake<S>(
    mut io: S,
    req: &UpgradeRequest<'_>,
) -> Result<ClientUpgraded<S>, ClientHandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    io.write_all(&req.to_bytes()?).await?;
    io.flush().await?;
    let mut buf = BytesMut::with_capacity(4096);
    let (status, headers, head_len) = loop {
        if io.read_buf(&mut buf).await? == 0 {
            return Err(ClientHandshakeError::Malformed(
                "connection closed before the response ended".into(),
            ));
        }
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut slots);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let mut headers = HeaderMap::new();
                for h in resp.headers.iter() {
                    let name = http::HeaderName::from_bytes(h.name.as_bytes())
                        .map_err(|e| ClientHandshakeError::Malformed(e.to_string()))?;
                    let value = HeaderValue::from_bytes(h.value)
                        .map_err(|e| ClientHandshakeError::Malformed(e.to_string()))?;
                    headers.append(name, value);
                }
                break (resp.code.unwrap_or(0), headers, n);
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_RESPONSE_HEAD {
                    return Err(ClientHandshakeError::Malformed(
                        "response head over 64 KiB".into(),
                    ));
                }
            }
            Err(e) => return Err(ClientHandshakeError::Malformed(e.to_string())),
        }
    };
    buf.advance(head_len);
    if status != 101 || !is_spdy_upgrade(&headers) {
        let want = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0)
            .min(MAX_ERROR_BODY);
        while buf.len() < want {
            if io.read_buf(&mut buf).await? == 0 {
                break;
            }
        }
        let body_len = if want > 0 {
            want.min(buf.len())
        } else {
            buf.len().min(MAX_ERROR_BODY)
        };
        let body = String::from_utf8_lossy(&buf[..body_len]).trim().to_string();
        return Err(ClientHandshakeError::Refused {
            status,
            headers,
            body,
        });
    }
    let protocol = headers
        .get(PROTOCOL_VERSION)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string());
    if let Some(p) = &protocol
        && !req.protocols.contains(&p.as_str())
    {
        return Err(ClientHandshakeError::Malformed(format!(
            "server chose protocol {p:?}, which was not offered"
        )));
    }
    Ok(ClientUpgraded {
        io: PrefixedIo::new(buf.freeze(), io),
        protocol,
        headers,
    })
}

/// A stream with some bytes already read from it put back in front.
#[derive(Debug)]
pub struct PrefixedIo<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> PrefixedIo<S> {
    /// `prefix` is read before `inner`.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        PrefixedIo { prefix, inner }
    }

    /// The inner stream and the unread prefix.
    pub fn into_parts(self) -> (Bytes, S) {
        (self.prefix, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PrefixedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::protocol;

    fn req_headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn negotiation_follows_the_clients_order() {
        let h = req_headers(&[
            ("X-Stream-Protocol-Version", "v5.channel.k8s.io"),
            (
                "X-Stream-Protocol-Version",
                "v4.channel.k8s.io, v3.channel.k8s.io",
            ),
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
        ]);
        assert_eq!(
            client_protocols(&h),
            [
                "v5.channel.k8s.io",
                "v4.channel.k8s.io",
                "v3.channel.k8s.io"
            ]
        );
        let a = accept(&h, protocol::REMOTECOMMAND_SPDY).unwrap();
        assert_eq!(a.protocol, "v4.channel.k8s.io");
        assert_eq!(a.headers.get("connection").unwrap(), "Upgrade");
        assert_eq!(a.headers.get("upgrade").unwrap(), "SPDY/3.1");
        assert_eq!(
            a.headers.get("x-stream-protocol-version").unwrap(),
            "v4.channel.k8s.io"
        );
        // Older clients: v2 first, so v2 wins although the server prefers v4.
        let h = req_headers(&[
            ("X-Stream-Protocol-Version", "v2.channel.k8s.io"),
            ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
        ]);
        assert_eq!(
            negotiate(&h, protocol::REMOTECOMMAND_SPDY).unwrap(),
            "v2.channel.k8s.io"
        );
    }

    #[test]
    fn refusals_carry_kubelets_status_codes() {
        let e = negotiate(&HeaderMap::new(), protocol::PORT_FORWARD).unwrap_err();
        assert_eq!(e, HandshakeError::MissingProtocolVersion);
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);

        let h = req_headers(&[("X-Stream-Protocol-Version", "v9.channel.k8s.io")]);
        let e = negotiate(&h, protocol::REMOTECOMMAND_SPDY).unwrap_err();
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        let accepted: Vec<_> = e
            .response_headers()
            .get_all("x-accepted-stream-protocol-versions")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(accepted, protocol::REMOTECOMMAND_SPDY);
        assert!(
            e.to_string()
                .contains("client supports [\"v9.channel.k8s.io\"]")
        );

        let h = req_headers(&[
            ("X-Stream-Protocol-Version", "portforward.k8s.io"),
            ("Upgrade", "websocket"),
        ]);
        let e = accept(&h, protocol::PORT_FORWARD).unwrap_err();
        assert_eq!(e, HandshakeError::NotSpdyUpgrade);
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn request_bytes() {
        let r = UpgradeRequest {
            method: "POST",
            path: "/exec/abc?cmd=sh",
            host: "127.0.0.1:10010",
            protocols: &["v4.channel.k8s.io", "v3.channel.k8s.io"],
            headers: &[("X-Extra", "1")],
        };
        assert_eq!(
            String::from_utf8(r.to_bytes().unwrap()).unwrap(),
            "POST /exec/abc?cmd=sh HTTP/1.1\r\nHost: 127.0.0.1:10010\r\nConnection: Upgrade\r\n\
             Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\
             X-Stream-Protocol-Version: v3.channel.k8s.io\r\nX-Extra: 1\r\nContent-Length: 0\r\n\r\n"
        );
        let bad = UpgradeRequest {
            path: "/a b",
            ..r.clone()
        };
        assert!(bad.to_bytes().is_err());
        let bad = UpgradeRequest {
            headers: &[("X", "a\r\nInjected: 1")],
            ..r
        };
        assert!(bad.to_bytes().is_err());
    }

    #[tokio::test]
    async fn client_handshake_keeps_bytes_after_the_response() {
        let (client, mut server) = tokio::io::duplex(4096);
        let srv = tokio::spawn(async move {
            let mut req = vec![0u8; 1024];
            let n = server.read(&mut req).await.unwrap();
            let text = String::from_utf8_lossy(&req[..n]).to_string();
            server
                .write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
                      X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\nEARLY",
                )
                .await
                .unwrap();
            text
        });
        let r = UpgradeRequest {
            method: "POST",
            path: "/exec/x",
            host: "h",
            protocols: &["v4.channel.k8s.io"],
            headers: &[],
        };
        let mut up = client_handshake(client, &r).await.unwrap();
        assert_eq!(up.protocol.as_deref(), Some("v4.channel.k8s.io"));
        let mut early = [0u8; 5];
        up.io.read_exact(&mut early).await.unwrap();
        assert_eq!(&early, b"EARLY");
        assert!(srv.await.unwrap().starts_with("POST /exec/x HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn client_handshake_reports_a_refusal() {
        let (client, mut server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let mut req = vec![0u8; 1024];
            let _ = server.read(&mut req).await.unwrap();
            server
                .write_all(
                    b"HTTP/1.1 403 Forbidden\r\nX-Accepted-Stream-Protocol-Versions: v4.channel.k8s.io\r\n\
                      Content-Length: 25\r\n\r\nunable to upgrade: nope\r\n",
                )
                .await
                .unwrap();
        });
        let r = UpgradeRequest {
            method: "GET",
            path: "/x",
            host: "h",
            protocols: &["v9"],
            headers: &[],
        };
        match client_handshake(client, &r).await {
            Err(ClientHandshakeError::Refused {
                status,
                headers,
                body,
            }) => {
                assert_eq!(status, 403);
                assert_eq!(body, "unable to upgrade: nope");
                assert!(headers.contains_key("x-accepted-stream-protocol-versions"));
            }
            other => panic!("{other:?}"),
        }
    }
}
