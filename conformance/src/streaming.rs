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
                Message::Close(_) => break,
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
