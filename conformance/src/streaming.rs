//! Clients of berthd's streaming server, speaking as client-go does: the
//! WebSocket executor (`v5.channel.k8s.io`, what `crictl -r websocket` and
//! kubectl 1.30+ offer; `v4.channel.k8s.io` and the base64 forms for older
//! clients) and port-forward over a WebSocket, and (with the berth-stream
//! crate) the SPDY/3.1 executor kubelet and crictl use by default.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// What a remote command's session brought back.
#[derive(Debug, Default, Clone)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The error channel's bytes (v4/v5: a metav1.Status JSON).
    pub error: Vec<u8>,
    /// The WebSocket protocol the server chose.
    pub protocol: Option<String>,
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The exit code the error channel reports (v4/v5 Status): 0 for
    /// Success, the ExitCode cause for NonZeroExitCode.
    pub fn exit_code(&self) -> Result<i32> {
        let v: serde_json::Value = serde_json::from_slice(&self.error)
            .with_context(|| format!("error channel {:?}", String::from_utf8_lossy(&self.error)))?;
        match v["status"].as_str() {
            Some("Success") => Ok(0),
            Some("Failure") if v["reason"] == "NonZeroExitCode" => v["details"]["causes"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["reason"] == "ExitCode"))
                .and_then(|c| c["message"].as_str())
                .and_then(|m| m.parse().ok())
                .ok_or_else(|| anyhow!("no ExitCode cause in {v}")),
            _ => bail!("failure on the error channel: {v}"),
        }
    }
}

/// A WebSocket to `url` (http://…) offering `protocols`.
pub async fn ws_connect(
    url: &str,
    protocols: &[&str],
) -> Result<(WebSocketStream<TcpStream>, Option<String>)> {
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut req = ws_url.as_str().into_client_request()?;
    if !protocols.is_empty() {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.join(", ").parse()?);
    }
    let host = url::host_port(url)?;
    let tcp = TcpStream::connect(&host)
        .await
        .with_context(|| format!("connecting to {host}"))?;
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .with_context(|| format!("WebSocket upgrade of {url}"))?;
    let chosen = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((ws, chosen))
}

mod url {
    use anyhow::{Result, anyhow};
    /// `host:port` of an http:// URL.
    pub fn host_port(url: &str) -> Result<String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("not an http:// URL: {url}"))?;
        Ok(rest.split('/').next().unwrap_or_default().to_string())
    }
}

/// How a WebSocket remote command is driven.
#[derive(Clone, Debug, Default)]
pub struct WsExec {
    /// Offered protocols, best first (client-go offers only v5).
    pub protocols: Vec<String>,
    /// Written to stdin, then stdin closed (v5's close signal; older
    /// protocols cannot close it).
    pub stdin: Option<Vec<u8>>,
    /// Terminal sizes sent at the start.
    pub resize: Option<(u16, u16)>,
    /// Give up after this long.
    pub timeout: Option<Duration>,
}

fn frame(ch: u8, data: &[u8], base64: bool) -> Message {
    if base64 {
        let mut s = String::new();
        s.push((b'0' + ch) as char);
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
        Message::Text(s.into())
    } else {
        let mut v = vec![ch];
        v.extend_from_slice(data);
        Message::Binary(v.into())
    }
}

/// Runs a remote command (exec or attach) over a WebSocket until the
/// server closes it.
pub async fn ws_remotecommand(url: &str, how: &WsExec) -> Result<Output> {
    let protos: Vec<&str> = how.protocols.iter().map(String::as_str).collect();
    let (ws, chosen) = ws_connect(url, &protos).await?;
    let base64 = chosen.as_deref().is_some_and(|p| p.contains("base64"));
    let v5 = chosen.as_deref() == Some("v5.channel.k8s.io");
    let (mut sink, mut source) = ws.split();
    if let Some((w, h)) = how.resize {
        let json = format!(r#"{{"Width":{w},"Height":{h}}}"#);
        sink.send(frame(4, json.as_bytes(), base64)).await?;
    }
    if let Some(data) = &how.stdin {
        sink.send(frame(0, data, base64)).await?;
        if v5 {
            sink.send(Message::Binary(vec![255, 0].into())).await?;
        }
    }
    let mut out = Output {
        protocol: chosen,
        ..Default::default()
    };
    let read = async {
        while let Some(msg) = source.next().await {
            let msg = msg?;
            let (ch, data) = match msg {
                Message::Binary(b) if !b.is_empty() => (b[0], b[1..].to_vec()),
                Message::Text(t) if base64 && !t.is_empty() => {
                    let t = t.as_str();
                    (
                        t.as_bytes()[0] - b'0',
                        base64::engine::general_purpose::STANDARD.decode(&t[1..])?,
                    )
                }
                // client-go's executor takes only a normal closure (1000)
                // as the end; anything else is its error.
                Message::Close(frame) => {
                    let code = frame.as_ref().map(|f| u16::from(f.code));
                    if code != Some(1000) {
                        bail!("the server closed the WebSocket with {frame:?}, not 1000 (normal)");
                    }
                    break;
                }
                _ => continue,
            };
            match ch {
                1 => out.stdout.extend_from_slice(&data),
                2 => out.stderr.extend_from_slice(&data),
                3 => out.error.extend_from_slice(&data),
                _ => {}
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    match how.timeout {
        Some(t) => tokio::time::timeout(t, read)
            .await
            .map_err(|_| anyhow!("the session did not end within {t:?}"))??,
        None => read.await?,
    }
    drop(sink);
    Ok(out)
}

/// One request through port-forward over a WebSocket (`v4.channel.k8s.io`,
/// `?ports=PORT`): sends `request` on the port's data channel and returns
/// what comes back on it until the server closes, and the error channel's
/// text.
pub async fn ws_portforward(
    url: &str,
    port: u16,
    request: &[u8],
    timeout: Duration,
) -> Result<(Vec<u8>, String)> {
    let url = format!("{url}?ports={port}");
    let (ws, chosen) = ws_connect(&url, &["v4.channel.k8s.io"]).await?;
    if chosen.as_deref() != Some("v4.channel.k8s.io") {
        bail!("server chose {chosen:?}");
    }
    let (mut sink, mut source) = ws.split();
    let mut data = Vec::new();
    let mut error = Vec::new();
    let mut headers = 0;
    let run = async {
        while let Some(msg) = source.next().await {
            let Message::Binary(b) = msg? else { continue };
            let Some((&ch, rest)) = b.split_first() else {
                continue;
            };
            // Each channel opens with the port, little-endian.
            if headers < 2 {
                if rest != port.to_le_bytes() {
                    bail!("channel {ch} opened with {rest:?}, not port {port}");
                }
                headers += 1;
                if headers == 2 {
                    sink.send(frame(0, request, false)).await?;
                }
                continue;
            }
            match ch {
                0 => data.extend_from_slice(rest),
                1 => error.extend_from_slice(rest),
                _ => {}
            }
            // HTTP/1.0 answers end with the connection: the server closes
            // the data stream, not the socket. Enough once a whole answer
            // with a body is here.
            if data.windows(4).any(|w| w == b"\r\n\r\n") && !error.is_empty() {
                break;
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    // A keep-alive server leaves the data channel open: what came by the
    // timeout is the answer.
    if let Ok(r) = tokio::time::timeout(timeout, run).await {
        r?;
    }
    Ok((data, String::from_utf8_lossy(&error).into_owned()))
}

// ------------------------------------------------------------------ SPDY

use berth_stream::k8s::{header, stream_type};
use berth_stream::spdy::frame::Headers;
use berth_stream::spdy::{Config as SpdyConfig, FlowControl, Session, Stream};
use berth_stream::upgrade::{UpgradeRequest, client_handshake};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A SPDY session to `url` (http://…/kind/token) after the upgrade,
/// offering `protocols` as client-go's SPDY executor does; the protocol the
/// server chose.
/// A SPDY session speaking as client-go does (moby/spdystream: no flow
/// control, neither SETTINGS nor WINDOW_UPDATE), as kubelet and crictl do.
pub async fn spdy_connect(url: &str, protocols: &[&str]) -> Result<(Session, Option<String>)> {
    spdy_connect_with(url, protocols, false).await
}

/// A SPDY session; `flow_control`: as a SPDY/3.1 peer that opens with
/// SETTINGS and grants windows, which berth then enforces both ways.
pub async fn spdy_connect_with(
    url: &str,
    protocols: &[&str],
    flow_control: bool,
) -> Result<(Session, Option<String>)> {
    let host = url::host_port(url)?;
    let path = url
        .strip_prefix("http://")
        .and_then(|r| r.find('/').map(|i| &r[i..]))
        .ok_or_else(|| anyhow!("no path in {url}"))?;
    let tcp = TcpStream::connect(&host)
        .await
        .with_context(|| format!("connecting to {host}"))?;
    let req = UpgradeRequest {
        method: "POST",
        path,
        host: &host,
        protocols,
        headers: &[],
    };
    let up = client_handshake(tcp, &req)
        .await
        .with_context(|| format!("SPDY upgrade of {url}"))?;
    Ok((
        Session::client(up.io, spdy_config(flow_control)),
        up.protocol,
    ))
}

fn spdy_config(flow_control: bool) -> SpdyConfig {
    SpdyConfig {
        flow_control: match flow_control {
            true => FlowControl::Auto,
            false => FlowControl::Never,
        },
        ..SpdyConfig::default()
    }
}

/// How a SPDY remote command is driven.
#[derive(Clone, Debug, Default)]
pub struct SpdyExec {
    /// Offered protocols, best first (client-go: v4, v3, v2, v1).
    pub protocols: Vec<String>,
    pub tty: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// Written to stdin, then stdin closed; None: no stdin stream.
    pub stdin: Option<Vec<u8>>,
    /// Sizes sent on the resize stream (tty only).
    pub resize: Vec<(u16, u16)>,
    pub timeout: Option<Duration>,
    /// Speak as a flow-controlled SPDY/3.1 peer rather than as client-go.
    pub flow_control: bool,
}

impl SpdyExec {
    /// As client-go's executor offers: v4 first.
    pub fn client_go() -> Vec<String> {
        berth_stream::k8s::protocol::REMOTECOMMAND_SPDY
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

async fn open(session: &Session, kind: &str) -> Result<Stream> {
    session
        .open(Headers::new().with(header::STREAM_TYPE, kind))
        .await
        .with_context(|| format!("opening the {kind} stream"))
}

async fn read_all(mut s: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    out
}

/// Runs a remote command over SPDY as client-go's executor does (error
/// stream first, then stdin, stdout, stderr, resize) until the server
/// ends it.
pub async fn spdy_remotecommand(url: &str, how: &SpdyExec) -> Result<Output> {
    let protos: Vec<&str> = how.protocols.iter().map(String::as_str).collect();
    let (session, chosen) = spdy_connect_with(url, &protos, how.flow_control).await?;
    let run = async {
        let error = open(&session, stream_type::ERROR).await?;
        let mut stdin = match &how.stdin {
            Some(_) => Some(open(&session, stream_type::STDIN).await?),
            None => None,
        };
        let stdout = match how.stdout {
            true => Some(open(&session, stream_type::STDOUT).await?),
            false => None,
        };
        let stderr = match how.stderr && !how.tty {
            true => Some(open(&session, stream_type::STDERR).await?),
            false => None,
        };
        let mut resize = match how.tty {
            true => Some(open(&session, stream_type::RESIZE).await?),
            false => None,
        };
        if let Some(r) = resize.as_mut() {
            for &(w, h) in &how.resize {
                r.write_all(format!(r#"{{"Width":{w},"Height":{h}}}"#).as_bytes())
                    .await?;
            }
        }
        // Stdin is copied while the output is read, as client-go does: a
        // command that echoes its input waits for its output to be taken.
        let feed = async {
            if let (Some(s), Some(data)) = (stdin.as_mut(), &how.stdin) {
                s.write_all(data).await?;
                s.shutdown().await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let out = async {
            match stdout {
                Some(s) => read_all(s).await,
                None => Vec::new(),
            }
        };
        let err = async {
            match stderr {
                Some(s) => read_all(s).await,
                None => Vec::new(),
            }
        };
        let (fed, stdout, stderr, error) = tokio::join!(feed, out, err, read_all(error));
        fed?;
        drop((stdin, resize));
        Ok::<_, anyhow::Error>(Output {
            stdout,
            stderr,
            error,
            protocol: chosen.clone(),
        })
    };
    let out = match how.timeout {
        Some(t) => tokio::time::timeout(t, run)
            .await
            .map_err(|_| anyhow!("the session did not end within {t:?}"))??,
        None => run.await?,
    };
    session.close().await;
    Ok(out)
}

/// One request through port-forward over SPDY (`portforward.k8s.io`):
/// an error stream and a data stream for `port`, `request` written, the
/// answer read until the server ends the data stream; the error stream's
/// text.
pub async fn spdy_portforward(
    session: &Session,
    port: u16,
    request_id: u32,
    request: &[u8],
) -> Result<(Vec<u8>, String)> {
    let headers = |kind: &str| {
        Headers::new()
            .with(header::STREAM_TYPE, kind)
            .with(header::PORT, port.to_string())
            .with(header::REQUEST_ID, request_id.to_string())
    };
    let mut error = session.open(headers(stream_type::ERROR)).await?;
    let mut data = session.open(headers(stream_type::DATA)).await?;
    // client-go closes its side of the error stream at once.
    error.shutdown().await?;
    data.write_all(request).await?;
    let (answer, err) = tokio::join!(read_all(&mut data), read_all(&mut error));
    Ok((answer, String::from_utf8_lossy(&err).into_owned()))
}

/// Port-forward's SPDY session inside a WebSocket, as client-go's
/// tunneling dialer makes it (`SPDY/3.1+portforward.k8s.io`: the SPDY
/// bytes in binary messages, no upgrade inside).
pub async fn ws_spdy_tunnel(url: &str) -> Result<Session> {
    let (ws, chosen) = ws_connect(url, &["SPDY/3.1+portforward.k8s.io"]).await?;
    if chosen.as_deref() != Some("SPDY/3.1+portforward.k8s.io") {
        bail!("server chose {chosen:?}");
    }
    let (ours, theirs) = tokio::io::duplex(256 << 10);
    let (mut rd, mut wr) = tokio::io::split(theirs);
    let (mut sink, mut source) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = source.next().await {
            if let Message::Binary(b) = msg {
                if wr.write_all(&b).await.is_err() {
                    break;
                }
            } else if msg.is_close() {
                break;
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
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = sink.close().await;
    });
    // client-go's tunnel carries spdystream, which has no flow control.
    Ok(Session::client(ours, spdy_config(false)))
}
