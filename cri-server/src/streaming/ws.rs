//! The WebSocket transport of exec, attach and port-forward, as kubelet's
//! streaming server speaks it (k8s.io/kubelet/pkg/cri/streaming,
//! apimachinery's wsstream):
//!
//! * exec/attach: `v5.channel.k8s.io` (what client-go's WebSocket
//!   executor offers, so `crictl -r websocket` and kubectl 1.30+ use it),
//!   `v4.channel.k8s.io`, `channel.k8s.io` (binary: one channel byte, then
//!   the data) and their `base64.` forms (text: the channel as a digit,
//!   then base64). Channels: 0 stdin, 1 stdout, 2 stderr, 3 error (the
//!   outcome), 4 resize (`{"Width":..,"Height":..}`). v5 adds channel 255:
//!   `[255, n]` from the client closes its channel n (stdin's end of file).
//! * port-forward: `v4.channel.k8s.io` (and `base64.`) with `?ports=`:
//!   two channels per port, data 2i and error 2i+1, each starting with the
//!   port as two little-endian bytes from the server.

use std::sync::Arc;

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::session::Streams;

pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";
pub const V4_BASE64: &str = "v4.base64.channel.k8s.io";
pub const V1: &str = "channel.k8s.io";
pub const V1_BASE64: &str = "base64.channel.k8s.io";

/// What exec and attach accept, best first.
pub const REMOTECOMMAND: &[&str] = &[V5, V4, V4_BASE64, V1, V1_BASE64];
/// SPDY/3.1 carried in a WebSocket's binary messages: the port-forward
/// tunnel of client-go (`crictl -r websocket port-forward`, kubectl 1.31+).
pub const SPDY_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
/// What port-forward accepts.
pub const PORTFORWARD: &[&str] = &[SPDY_TUNNEL, V4, V4_BASE64, V1, V1_BASE64];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// A channel's pipe: what a session writes, the transport reads.
const PIPE: usize = 64 << 10;

pub type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Whether `req` asks for a WebSocket.
pub fn is_websocket<B>(req: &hyper::Request<B>) -> bool {
    let h = req.headers();
    h.get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The first protocol the client offers (Sec-WebSocket-Protocol, in its
/// order) that we support. None when it offers none: kubelet's server
/// then takes the legacy binary channel protocol.
pub fn choose(
    req: &hyper::Request<Incoming>,
    supported: &[&str],
) -> Result<Option<String>, String> {
    let offered: Vec<String> = req
        .headers()
        .get_all(hyper::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok(None);
    }
    offered
        .iter()
        .find(|p| supported.contains(&p.as_str()))
        .cloned()
        .map(Some)
        .ok_or_else(|| {
            format!(
                "none of the offered WebSocket protocols {offered:?} is supported; supported: {supported:?}"
            )
        })
}

/// The 101 answer to a WebSocket upgrade.
pub fn accept(
    req: &hyper::Request<Incoming>,
    protocol: Option<&str>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, String> {
    let key = req
        .headers()
        .get(hyper::header::SEC_WEBSOCKET_KEY)
        .ok_or("no Sec-WebSocket-Key")?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut b = hyper::Response::builder()
        .status(hyper::StatusCode::SWITCHING_PROTOCOLS)
        .header(hyper::header::CONNECTION, "Upgrade")
        .header(hyper::header::UPGRADE, "websocket")
        .header(hyper::header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(p) = protocol {
        b = b.header(hyper::header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    b.body(http_body_util::Full::new(bytes::Bytes::new()))
        .map_err(|e| e.to_string())
}

/// The WebSocket over the upgraded connection.
pub async fn websocket(up: hyper::upgrade::Upgraded) -> Ws {
    WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await
}

fn frame(ch: u8, data: &[u8], base64: bool) -> Message {
    if base64 {
        let mut s = String::with_capacity(1 + data.len() * 4 / 3 + 4);
        s.push((b'0' + ch) as char);
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
        Message::Text(s.into())
    } else {
        let mut v = Vec::with_capacity(1 + data.len());
        v.push(ch);
        v.extend_from_slice(data);
        Message::Binary(v.into())
    }
}

/// A channel's (number, payload) from a client message.
fn unframe(msg: Message, base64: bool) -> Option<(u8, Vec<u8>)> {
    let (ch, rest) = match msg {
        Message::Binary(b) if !base64 => {
            let (&ch, rest) = b.split_first()?;
            (ch, rest.to_vec())
        }
        Message::Text(t) if base64 => {
            let t = t.as_str();
            let ch = t.as_bytes().first()?.checked_sub(b'0')?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(&t[1..])
                .ok()?;
            (ch, data)
        }
        // v5's close signal is binary in both codecs.
        Message::Binary(b) if base64 && b.first() == Some(&CLOSE) => (CLOSE, b[1..].to_vec()),
        _ => return None,
    };
    Some((ch, rest))
}

/// Forwards what a session writes into `pipe` as messages on `ch`.
async fn out_channel(mut pipe: DuplexStream, ch: u8, base64: bool, tx: mpsc::Sender<Message>) {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(frame(ch, &buf[..n], base64)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Exec's or attach's streams over `ws`, for a request of these streams.
pub fn remotecommand(
    ws: Ws,
    protocol: Option<&str>,
    ask: &berth_runtime::service::StreamAsk,
    idle: std::time::Duration,
) -> Streams {
    let (stdin, stdout, stderr, tty) = (ask.stdin, ask.stdout, ask.stderr, ask.tty);
    let base64 = protocol.is_some_and(|p| p.contains("base64"));
    let json = protocol.is_some_and(|p| p.starts_with("v4.") || p.starts_with("v5."));
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(16);
    // The writer: every channel's messages, then a normal close once all
    // are done.
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        close_normally(&mut sink).await;
    });
    let mut streams = Streams {
        stdin: None,
        stdout: None,
        stderr: None,
        resize: None,
        error: None,
        status_json: json,
        gone: Box::pin(async {}),
    };
    let output = |ch: u8| {
        let (ours, theirs) = tokio::io::duplex(PIPE);
        tokio::spawn(out_channel(theirs, ch, base64, tx.clone()));
        Box::new(ours)
    };
    if stdout {
        streams.stdout = Some(output(STDOUT));
    }
    if stderr && !tty {
        streams.stderr = Some(output(STDERR));
    }
    streams.error = Some(output(ERROR));
    // kubelet's server writes an empty message on the lowest writable
    // channel to say the session is open; clients wait for it.
    let first = if stdout {
        STDOUT
    } else if stderr && !tty {
        STDERR
    } else {
        ERROR
    };
    let _ = tx.try_send(frame(first, &[], base64));
    drop(tx);
    let (mut stdin_w, stdin_r) = tokio::io::duplex(PIPE);
    if stdin {
        streams.stdin = Some(Box::new(stdin_r));
    }
    let (resize_tx, resize_rx) = mpsc::channel(8);
    if tty {
        streams.resize = Some(resize_rx);
    }
    let (gone_tx, gone_rx) = oneshot::channel::<()>();
    streams.gone = Box::pin(async move {
        let _ = gone_rx.await;
    });
    // The reader: stdin, resize and v5's close signals, until the client
    // closes the socket.
    tokio::spawn(async move {
        let _gone = gone_tx;
        let mut stdin_open = stdin;
        // A session with no message from the client for `idle` ends.
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(idle, source.next()).await {
            if msg.is_close() {
                break;
            }
            let Some((ch, data)) = unframe(msg, base64) else {
                continue;
            };
            match ch {
                // A session that stopped reading its stdin: what comes is
                // dropped from then on.
                STDIN if stdin_open && stdin_w.write_all(&data).await.is_err() => {
                    stdin_open = false;
                }
                RESIZE => {
                    for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                        if let Ok(sz) = serde_json::from_slice::<Size>(line) {
                            let _ = resize_tx.try_send((sz.width, sz.height));
                        }
                    }
                }
                CLOSE if data.first() == Some(&STDIN) && stdin_open => {
                    stdin_open = false;
                    let _ = stdin_w.shutdown().await;
                }
                _ => {}
            }
        }
    });
    streams
}

/// A terminal size as client-go sends it.
#[derive(serde::Deserialize)]
pub struct Size {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// Port-forward over a WebSocket: for each port of `?ports=`, its data
/// channel and its error channel; one connection per port.
pub async fn portforward(
    ws: Ws,
    protocol: Option<&str>,
    ports: Vec<u16>,
    connect: Arc<dyn Fn(u16) -> super::portforward::Connecting + Send + Sync>,
    idle: std::time::Duration,
) {
    let base64 = protocol.is_some_and(|p| p.contains("base64"));
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        close_normally(&mut sink).await;
    });
    let mut to_port: Vec<Option<tokio::io::WriteHalf<tokio::net::TcpStream>>> = Vec::new();
    let mut readers = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        let (data, error) = ((2 * i) as u8, (2 * i + 1) as u8);
        // Each channel opens with its port.
        let _ = tx.send(frame(data, &port.to_le_bytes(), base64)).await;
        let _ = tx.send(frame(error, &port.to_le_bytes(), base64)).await;
        match connect(port).await {
            Ok(sock) => {
                let (mut r, w) = tokio::io::split(sock);
                to_port.push(Some(w));
                let tx = tx.clone();
                readers.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 << 10];
                    loop {
                        match r.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if tx.send(frame(data, &buf[..n], base64)).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }));
            }
            Err(e) => {
                to_port.push(None);
                let _ = tx.send(frame(error, e.as_bytes(), base64)).await;
            }
        }
    }
    drop(tx);
    // A session with no message from the client for `idle` ends.
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(idle, source.next()).await {
        if msg.is_close() {
            break;
        }
        let Some((ch, data)) = unframe(msg, base64) else {
            continue;
        };
        if ch % 2 == 0
            && let Some(Some(w)) = to_port.get_mut(usize::from(ch / 2))
            && w.write_all(&data).await.is_err()
        {
            to_port[usize::from(ch / 2)] = None;
        }
    }
    for r in readers {
        r.abort();
    }
    writer.abort();
}

/// The WebSocket as a byte stream (binary messages in, binary messages
/// out), for the SPDY tunnel: a pipe whose other end two tasks feed from
/// and to the socket.
pub fn byte_stream(ws: Ws) -> DuplexStream {
    let (ours, theirs) = tokio::io::duplex(256 << 10);
    let (mut rd, mut wr) = tokio::io::split(theirs);
    let (mut sink, mut source) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = source.next().await {
            match msg {
                Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(bytes::Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        close_normally(&mut sink).await;
    });
    ours
}

/// A Close frame with 1000 (normal closure): client-go's executor takes
/// only that as the end of the session (a bare close, 1005, is an error
/// for it).
async fn close_normally<S>(sink: &mut S)
where
    S: futures::Sink<Message> + Unpin,
{
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
    let _ = sink.close().await;
}
