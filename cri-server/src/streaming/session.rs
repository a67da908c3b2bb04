//! Exec and Attach sessions, whatever the transport (SPDY or WebSocket):
//! the transport opens the client's streams ([`Streams`]), this moves the
//! bytes between them and the descriptors the shim handed over, and
//! reports how it ended on the error stream.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use berth_runtime::service::{Runtime, StreamAsk};
use berth_runtime::shim::protocol::{ATTACH_STDERR, ATTACH_STDOUT, Response};
use berth_runtime::shim_client::ShimStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::fdio::{self, FdIo};

pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// How long output is still read after the process exited: a process it
/// left in the background may hold the pipe open for ever.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// The client's side of a session, as its transport opened it.
pub struct Streams {
    pub stdin: Option<BoxRead>,
    pub stdout: Option<BoxWrite>,
    pub stderr: Option<BoxWrite>,
    /// Terminal sizes (columns, rows) the client sends.
    pub resize: Option<mpsc::Receiver<(u16, u16)>>,
    pub error: Option<BoxWrite>,
    /// Protocol v4 and later: the outcome as a metav1.Status JSON on the
    /// error stream; before: the error's text, nothing on success.
    pub status_json: bool,
    /// Resolves once the client is gone (the transport closed).
    pub gone: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// How a session ended, as the error stream reports it.
pub enum Outcome {
    Exited(i32),
    Failed(String),
}

impl Outcome {
    /// The bytes for the error stream (None: nothing to write).
    fn report(&self, json: bool) -> Option<Vec<u8>> {
        match (self, json) {
            (Outcome::Exited(0), true) => Some(br#"{"metadata":{},"status":"Success"}"#.to_vec()),
            (Outcome::Exited(0), false) => None,
            (Outcome::Exited(code), true) => Some(
                serde_json::json!({
                    "metadata": {},
                    "status": "Failure",
                    "message": format!("command terminated with non-zero exit code: error executing command, exit status {code}"),
                    "reason": "NonZeroExitCode",
                    "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
                })
                .to_string()
                .into_bytes(),
            ),
            (Outcome::Exited(code), false) => {
                Some(format!("command terminated with exit status {code}").into_bytes())
            }
            (Outcome::Failed(msg), true) => Some(
                serde_json::json!({
                    "metadata": {},
                    "status": "Failure",
                    "message": msg,
                    "reason": "InternalError",
                })
                .to_string()
                .into_bytes(),
            ),
            (Outcome::Failed(msg), false) => Some(msg.clone().into_bytes()),
        }
    }
}

async fn report(streams: &mut Streams, outcome: &Outcome) {
    if let (Some(err), Some(bytes)) = (streams.error.as_mut(), outcome.report(streams.status_json))
    {
        let _ = err.write_all(&bytes).await;
        let _ = err.flush().await;
    }
    for w in [
        streams.stdout.as_mut(),
        streams.stderr.as_mut(),
        streams.error.as_mut(),
    ]
    .into_iter()
    .flatten()
    {
        let _ = w.shutdown().await;
    }
}

/// Copies `from` into `to` until either ends; then closes `to`'s write side.
async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                // Interactive output must not sit in a buffer.
                if to.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

/// Reads the exit line the shim writes after a streaming exec's answer.
async fn exit_code(st: &mut ShimStream) -> Result<i32, String> {
    let mut line = std::mem::take(&mut st.rest);
    while !line.contains(&b'\n') {
        let mut b = [0u8; 1024];
        match st.conn.read(&mut b).await {
            Ok(0) => return Err("the container's shim went away during the exec".into()),
            Ok(n) => line.extend_from_slice(&b[..n]),
            Err(e) => return Err(format!("reading the exec's exit: {e}")),
        }
        if line.len() > 1 << 20 {
            return Err("the shim's exit line is too long".into());
        }
    }
    let end = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
    match serde_json::from_slice::<Response>(&line[..end]) {
        Ok(Response::Exec(r)) => Ok(r.exit_code),
        Ok(other) => Err(format!("the shim answered the exec with {other:?}")),
        Err(e) => Err(format!("the shim's exit line: {e}")),
    }
}

/// A streaming Exec: runs `cmd` and relays its stdio until it exits or
/// the client goes away (then the shim kills it).
pub async fn exec(
    rt: Arc<Runtime>,
    container: String,
    cmd: Vec<String>,
    ask: StreamAsk,
    mut streams: Streams,
) {
    // A terminal's first size often comes right after the streams open.
    let mut size = None;
    if let Some(rx) = streams.resize.as_mut()
        && ask.tty
        && let Ok(Some(s)) = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await
    {
        size = Some(s);
    }
    let mut st = match rt.exec_stream(&container, cmd, &ask, size).await {
        Ok(st) => st,
        Err(e) => {
            report(&mut streams, &Outcome::Failed(e.to_string())).await;
            return;
        }
    };
    let mut fds = std::mem::take(&mut st.fds).into_iter();
    let mut tasks = Vec::new();
    let mut outputs = Vec::new();
    let wrap = |fd| FdIo::new(fd).map_err(|e| format!("exec stdio: {e}"));
    let setup: Result<(), String> = (|| {
        if ask.tty {
            let pty = wrap(fds.next().ok_or("no pty from the shim")?)?;
            let pty2 = wrap(pty_dup(&pty).map_err(|e| format!("dup of the exec's pty: {e}"))?)?;
            let resize_fd = pty_dup(&pty).map_err(|e| format!("dup of the exec's pty: {e}"))?;
            if let Some(out) = streams.stdout.take() {
                outputs.push(tokio::spawn(pump(pty, out)));
            }
            if let Some(inp) = streams.stdin.take() {
                tasks.push(tokio::spawn(pump(inp, pty2)));
            }
            if let Some(mut rx) = streams.resize.take() {
                tasks.push(tokio::spawn(async move {
                    while let Some((w, h)) = rx.recv().await {
                        let _ = fdio::set_winsize(std::os::fd::AsFd::as_fd(&resize_fd), w, h);
                    }
                }));
            }
        } else {
            if ask.stdin {
                let w = wrap(fds.next().ok_or("no stdin from the shim")?)?;
                if let Some(inp) = streams.stdin.take() {
                    tasks.push(tokio::spawn(pump(inp, w)));
                }
            }
            if ask.stdout {
                let r = wrap(fds.next().ok_or("no stdout from the shim")?)?;
                if let Some(out) = streams.stdout.take() {
                    outputs.push(tokio::spawn(pump(r, out)));
                }
            }
            if ask.stderr {
                let r = wrap(fds.next().ok_or("no stderr from the shim")?)?;
                if let Some(out) = streams.stderr.take() {
                    outputs.push(tokio::spawn(pump(r, out)));
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = setup {
        drop(st);
        report(&mut streams, &Outcome::Failed(e)).await;
        return;
    }
    let outcome = tokio::select! {
        code = exit_code(&mut st) => match code {
            Ok(code) => Outcome::Exited(code),
            Err(e) => Outcome::Failed(e),
        },
        _ = &mut streams.gone => {
            // The client is gone: closing the connection makes the shim
            // kill the process.
            drop(st);
            for t in tasks.iter().chain(outputs.iter()) {
                t.abort();
            }
            return;
        }
    };
    drop(st);
    // What the process wrote before it exited, then the report.
    for o in outputs {
        let abort = o.abort_handle();
        if tokio::time::timeout(DRAIN_AFTER_EXIT, o).await.is_err() {
            abort.abort();
        }
    }
    for t in tasks {
        t.abort();
    }
    report(&mut streams, &outcome).await;
}

fn pty_dup(pty: &FdIo) -> std::io::Result<std::os::fd::OwnedFd> {
    pty.raw().try_clone_to_owned()
}

/// Attach: the container's output (frames from its shim) to the client,
/// the client's input to the container's stdin, until the container exits
/// or the client goes away.
pub async fn attach(rt: Arc<Runtime>, container: String, ask: StreamAsk, mut streams: Streams) {
    let ShimStream {
        mut fds,
        conn,
        rest,
        ..
    } = match rt.attach(&container, &ask).await {
        Ok(st) => st,
        Err(e) => {
            report(&mut streams, &Outcome::Failed(e.to_string())).await;
            return;
        }
    };
    let mut tasks = Vec::new();
    let (mut conn_rd, mut conn_wr) = conn.into_split();
    if let (Some(fd), Some(inp)) = (fds.pop(), streams.stdin.take()) {
        match FdIo::new(fd) {
            Ok(w) => tasks.push(tokio::spawn(async move {
                pump(inp, w).await;
                // The client's stdin ended: the shim closes the
                // container's with stdin_once (the attach goes on).
                let _ = conn_wr.shutdown().await;
                // Kept: dropping it would end the attach (the task is
                // aborted when the session ends).
                std::future::pending::<()>().await;
                drop(conn_wr);
            })),
            Err(e) => tracing::warn!(error = %e, "attach: the container's stdin"),
        }
    }
    if let Some(mut rx) = streams.resize.take() {
        let (rt, id) = (rt.clone(), container.clone());
        tasks.push(tokio::spawn(async move {
            while let Some((w, h)) = rx.recv().await {
                let _ = rt.resize(&id, w, h).await;
            }
        }));
    }
    let mut out = streams.stdout.take();
    let mut err = streams.stderr.take();
    let relay = async {
        let mut buf = rest;
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            while buf.len() >= 5 {
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                if buf.len() < 5 + len {
                    break;
                }
                let w = match buf[0] {
                    ATTACH_STDOUT => out.as_mut(),
                    ATTACH_STDERR => err.as_mut(),
                    _ => None,
                };
                if let Some(w) = w
                    && (w.write_all(&buf[5..5 + len]).await.is_err() || w.flush().await.is_err())
                {
                    return;
                }
                buf.drain(..5 + len);
            }
            match conn_rd.read(&mut chunk).await {
                // The container exited (its shim ends the attach).
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::select! {
        _ = relay => {}
        _ = &mut streams.gone => {}
    }
    for t in tasks {
        t.abort();
    }
    streams.stdout = out;
    streams.stderr = err;
    report(&mut streams, &Outcome::Exited(0)).await;
}
