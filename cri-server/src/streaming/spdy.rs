//! The SPDY/3.1 transport of exec, attach and port-forward, the default of
//! kubelet (which proxies the API server's streams to us) and of crictl,
//! as kubelet's streaming server speaks it:
//!
//! * exec/attach (`v4.channel.k8s.io` … `channel.k8s.io`): the client
//!   opens one stream per `streamType` it wants (error, stdin, stdout,
//!   stderr, resize) within `stream_creation_timeout`; v4 reports the
//!   outcome as a metav1.Status JSON on the error stream, older versions
//!   as its text.
//! * port-forward (`portforward.k8s.io`): per connection the client opens
//!   an error stream and a data stream with the same `requestID` and a
//!   `port`; each pair is one TCP connection to the pod's loopback.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_runtime::service::StreamAsk;
use berth_stream::k8s::{self, header, stream_type};
use berth_stream::spdy::frame::Headers;
use berth_stream::spdy::{Config, IncomingStream, Session, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::session::Streams;

/// The session over an upgraded connection, server side.
pub fn session<T>(io: T, idle: Duration) -> Session
where
    T: AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    Session::server(
        io,
        Config {
            idle_timeout: Some(idle),
            ..Config::default()
        },
    )
}

fn stream_kind(s: &IncomingStream) -> String {
    s.headers()
        .get(header::STREAM_TYPE)
        .unwrap_or_default()
        .to_string()
}

/// Exec's or attach's streams: those the request asks for, as the client
/// opens them. None if they do not all come within `timeout` (the session
/// is then closed).
pub async fn remotecommand(
    session: Session,
    protocol: &str,
    ask: &StreamAsk,
    timeout: Duration,
) -> Option<Streams> {
    let mut want: Vec<&str> = vec![stream_type::ERROR];
    if ask.stdin {
        want.push(stream_type::STDIN);
    }
    if ask.stdout {
        want.push(stream_type::STDOUT);
    }
    if ask.stderr && !ask.tty {
        want.push(stream_type::STDERR);
    }
    // v1 and v2 have no resize stream.
    let resize_ok = ask.tty
        && !matches!(
            protocol,
            k8s::protocol::REMOTECOMMAND_V1 | k8s::protocol::REMOTECOMMAND_V2
        );
    if resize_ok {
        want.push(stream_type::RESIZE);
    }
    let mut got: HashMap<String, Stream> = HashMap::new();
    let collect = async {
        while got.len() < want.len() {
            let incoming = session.accept().await?;
            let kind = stream_kind(&incoming);
            if !want.contains(&kind.as_str()) || got.contains_key(&kind) {
                tracing::debug!(stream = %kind, "refusing a stream the session does not have");
                incoming.refuse();
                continue;
            }
            let s = incoming.reply(Headers::new()).ok()?;
            got.insert(kind, s);
        }
        Some(())
    };
    if !matches!(tokio::time::timeout(timeout, collect).await, Ok(Some(()))) {
        tracing::info!(
            want = ?want,
            got = ?got.keys().collect::<Vec<_>>(),
            "the client did not open its streams in time"
        );
        session.close().await;
        return None;
    }
    let mut take = |k: &str| got.remove(k);
    let error = take(stream_type::ERROR).map(|s| Box::new(s) as super::session::BoxWrite);
    let stdin = take(stream_type::STDIN).map(|s| Box::new(s) as super::session::BoxRead);
    let stdout = take(stream_type::STDOUT).map(|s| Box::new(s) as super::session::BoxWrite);
    let stderr = take(stream_type::STDERR).map(|s| Box::new(s) as super::session::BoxWrite);
    let resize = take(stream_type::RESIZE).map(|s| {
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(resize_reader(s, tx));
        rx
    });
    let closed = session.clone();
    Some(Streams {
        stdin,
        stdout,
        stderr,
        resize,
        error,
        status_json: protocol == k8s::protocol::REMOTECOMMAND_V4,
        gone: Box::pin(async move {
            closed.closed().await;
        }),
    })
}

/// Terminal sizes as the client writes them (JSON objects back to back).
async fn resize_reader(mut s: Stream, tx: mpsc::Sender<(u16, u16)>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        match k8s::parse_resizes(&buf) {
            Ok((sizes, used)) => {
                buf.drain(..used);
                for sz in sizes {
                    if tx.send((sz.width, sz.height)).await.is_err() {
                        return;
                    }
                }
            }
            Err(_) => return,
        }
        if buf.len() > 4096 {
            return;
        }
    }
}

/// Port-forward: serves the client's (error, data) stream pairs until the
/// session ends; each pair is one connection to its `port`.
pub async fn portforward(
    session: Session,
    connect: Arc<dyn Fn(u16) -> super::portforward::Connecting + Send + Sync>,
) {
    // Half pairs by request id, with their port.
    let mut halves: HashMap<String, (Option<Stream>, Option<Stream>, u16)> = HashMap::new();
    while let Some(incoming) = session.accept().await {
        let kind = stream_kind(&incoming);
        let request = incoming
            .headers()
            .get(header::REQUEST_ID)
            .unwrap_or_default()
            .to_string();
        let port = incoming
            .headers()
            .get(header::PORT)
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|&p| p > 0);
        let (Some(port), false) = (port, request.is_empty()) else {
            tracing::debug!(?port, %request, "refusing a port-forward stream without a port or request id");
            incoming.refuse();
            continue;
        };
        if kind != stream_type::ERROR && kind != stream_type::DATA {
            incoming.refuse();
            continue;
        }
        let Ok(s) = incoming.reply(Headers::new()) else {
            continue;
        };
        let e = halves.entry(request.clone()).or_insert((None, None, port));
        if kind == stream_type::ERROR {
            e.0 = Some(s);
        } else {
            e.1 = Some(s);
        }
        // A half whose other half never comes stays until the session ends
        // (its idle timeout bounds it), as the client's to finish.
        if let (Some(_), Some(_)) = (&e.0, &e.1)
            && let Some((Some(err), Some(data), port)) = halves.remove(&request)
        {
            tokio::spawn(forward(err, data, port, connect.clone()));
        }
    }
}

/// One forwarded connection: the data stream to and from the pod's port;
/// a failure to connect goes on the error stream, whose end closes the
/// pair.
async fn forward(
    mut err: Stream,
    data: Stream,
    port: u16,
    connect: Arc<dyn Fn(u16) -> super::portforward::Connecting + Send + Sync>,
) {
    let sock = match connect(port).await {
        Ok(s) => s,
        Err(e) => {
            let _ = err.write_all(e.as_bytes()).await;
            let _ = err.shutdown().await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut { data }).await;
            return;
        }
    };
    let (mut from_client, mut to_client) = data.split();
    let (mut pod_rd, mut pod_wr) = sock.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut from_client, &mut pod_wr).await;
        // The client finished sending: the pod reads end of file.
        let _ = pod_wr.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut pod_rd, &mut to_client).await;
        let _ = to_client.shutdown().await;
        // The pod closed its side: the pair is done but for what the
        // client still sends.
        let _ = err.shutdown().await;
    };
    tokio::join!(up, down);
}
