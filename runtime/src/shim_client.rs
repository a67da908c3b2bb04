//! berthd's side of [`crate::shim::protocol`]: start a shim, and send it one
//! request per connection.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::shim::protocol::{self, Request, Response};

/// How long a shim gets to create its container process and answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("starting berth-shim {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
    #[error("shim of {dir} did not answer within {secs}s")]
    Timeout { dir: String, secs: u64 },
    /// The shim is gone (its container exited and it ended, or it died).
    #[error("shim of {dir} is not running: {source}")]
    Gone {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("shim of {dir}: {what}: {source}")]
    Io {
        dir: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("shim of {dir} sent a malformed answer: {detail}")]
    Protocol { dir: String, detail: String },
}

/// The command that builds berth-shim next to berthd, for messages.
pub const BUILD_SHIM_HINT: &str = "build it with `cargo build --release --bin berthd --bin berth-shim` (it goes next to berthd in target/release) or install it next to berthd";

/// Why `shim` cannot be run, if it cannot: missing, not a regular file, or
/// not executable. berthd refuses to start then, and Status reports
/// RuntimeReady false with this message while it stays so.
pub fn shim_problem(shim: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let md = match std::fs::metadata(shim) {
        Ok(md) => md,
        Err(e) => {
            return Some(format!(
                "berth-shim not found at {} ({e}): berthd runs every container under it; {BUILD_SHIM_HINT}",
                shim.display()
            ));
        }
    };
    if !md.is_file() {
        return Some(format!(
            "berth-shim at {} is not a regular file; {BUILD_SHIM_HINT}",
            shim.display()
        ));
    }
    if md.permissions().mode() & 0o111 == 0
        || nix::unistd::access(shim, nix::unistd::AccessFlags::X_OK).is_err()
    {
        return Some(format!(
            "berth-shim at {} is not executable (mode {:o}): `chmod 755` it or reinstall it",
            shim.display(),
            md.permissions().mode() & 0o7777
        ));
    }
    None
}

/// Whether a shim serves in `dir`: its socket accepts a connection (one
/// that exited removed it; one that was killed left it, unanswered).
pub fn is_listening(dir: &Path) -> bool {
    // Through the directory's fd: the full path may be longer than a
    // socket address holds.
    socket_path(dir)
        .and_then(|(_dir_fd, path)| std::os::unix::net::UnixStream::connect(path))
        .is_ok()
}

/// The file berthd runs berth-shim from: a read-only bind mount of the
/// installed binary at `<state>/berth-shim`. A shim's children run its code
/// inside a container's namespaces until their execve (CVE-2019-5736):
/// /proc/PID/exe of such a process, or of a shim, then names a file on a
/// read-only mount, which no process opens for writing (EROFS), whatever
/// the kernel's ETXTBSY rules. The bind also pins the binary berthd started
/// with: an upgrade that replaces the file on disk takes effect at berthd's
/// restart, for the shims it starts from then on.
pub fn pin_readonly(shim: &Path, state: &Path) -> std::io::Result<PathBuf> {
    use nix::mount::{MsFlags, mount};
    let target = state.join("berth-shim");
    unpin_readonly(state);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&target)?;
    mount(
        Some(shim),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    let ro = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV;
    if let Err(e) = mount(None::<&str>, &target, None::<&str>, ro, None::<&str>) {
        unpin_readonly(state);
        return Err(e.into());
    }
    Ok(target)
}

/// Undo [`pin_readonly`] (at shutdown, and before pinning anew after a
/// crash). Running shims keep the binary they run.
pub fn unpin_readonly(state: &Path) {
    let target = state.join("berth-shim");
    while crate::rootfs::is_mountpoint(&target) {
        if nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).is_err() {
            break;
        }
    }
    let _ = std::fs::remove_file(&target);
}

/// The shim that is already exec'd and waits for a state dir on its
/// stdin (`berth-shim --warm`): the next [`spawn`] hands it its dir, so
/// that the exec and the dynamic loading of the shim (about 1.4 ms here)
/// are not on the CreateContainer path. One at a time: a second spawn
/// meanwhile starts its shim cold. A warm shim whose berthd is gone reads
/// EOF and exits.
struct Warm {
    shim: PathBuf,
    child: tokio::process::Child,
}

static WARM: std::sync::Mutex<Option<Warm>> = std::sync::Mutex::new(None);

/// `shim` with berthd's settings for every shim: its memlock limit, piped
/// stdout and stderr, never killed when dropped.
fn shim_command(shim: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(shim);
    if let Some((soft, hard)) = crate::kernel::memlock_for_children() {
        // SAFETY: setrlimit is async-signal-safe and touches only the
        // child; the values are copied in before the fork.
        unsafe {
            cmd.pre_exec(move || {
                rustix::process::setrlimit(
                    rustix::process::Resource::Memlock,
                    rustix::process::Rlimit {
                        current: soft,
                        maximum: hard,
                    },
                )
                .map_err(std::io::Error::from)
            });
        }
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    cmd
}

/// Start the next warm shim of `shim`, unless one waits already. Needs
/// the tokio runtime (its child reaping).
///
/// The slot's lock is held across the spawn, on purpose: a
/// CreateContainer arriving meanwhile waits for this shim (its fork and
/// exec are done by then; its loading goes on in it) rather than starting
/// one cold with all of that on its path. Spawning unlocked was tried:
/// more CreateContainers went cold at concurrency 10 (shim.detach 0.73-0.76
/// ms mean against 0.39-0.60) for no gain in their p50.
pub fn prepare_warm(shim: &Path) {
    let Ok(mut slot) = WARM.lock() else {
        return;
    };
    if slot.is_some() {
        return;
    }
    let mut cmd = shim_command(shim);
    cmd.arg(crate::shim::WARM_ARG)
        .arg(" ".repeat(crate::shim::WARM_PAD))
        .stdin(Stdio::piped());
    match cmd.spawn() {
        Ok(child) => {
            *slot = Some(Warm {
                shim: shim.to_path_buf(),
                child,
            })
        }
        Err(e) => tracing::debug!(error = %e, "cannot start a warm shim; the next one starts cold"),
    }
}

/// End the waiting warm shim, if any (berthd stops): its stdin closed, it
/// reads EOF and exits, which its stdout's EOF tells (it holds that pipe
/// until then); killed by the pid it reported if it does not within 1 s.
pub async fn discard_warm() {
    let warm = WARM.lock().ok().and_then(|mut w| w.take());
    let Some(mut w) = warm else { return };
    drop(w.child.stdin.take());
    let mut pid = None;
    if let Some(out) = w.child.stdout.take() {
        let mut lines = BufReader::new(out).lines();
        let gone = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(Some(l)) = lines.next_line().await {
                if let Some(p) = l.strip_prefix("warm ") {
                    pid = p.trim().parse::<i32>().ok();
                }
            }
        })
        .await
        .is_ok();
        if !gone && let Some(p) = pid.and_then(rustix::process::Pid::from_raw) {
            // It still holds the pipe, so the pid is still its own.
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
    // The process berthd started exited after its fork.
    if tokio::time::timeout(Duration::from_secs(1), w.child.wait())
        .await
        .is_err()
    {
        let _ = w.child.kill().await;
    }
}

/// Hand `dir` to the warm shim of `shim`, if one waits: the shim, now
/// starting the container of `dir`.
async fn take_warm(shim: &Path, dir: &Path) -> Option<tokio::process::Child> {
    let warm = WARM.lock().ok()?.take();
    let mut w = warm.filter(|w| w.shim == shim)?;
    let mut stdin = w.child.stdin.take()?;
    let mut line = dir.as_os_str().as_encoded_bytes().to_vec();
    line.push(b'\n');
    match stdin.write_all(&line).await {
        Ok(()) => Some(w.child),
        Err(e) => {
            // It died meanwhile: reaped by tokio, and a cold start instead.
            tracing::debug!(error = %e, "the warm shim is gone; starting one cold");
            let _ = w.child.start_kill();
            None
        }
    }
}

/// A shim started on a container's dir, not yet known to have started it:
/// what berthd does meanwhile (its durable writes) overlaps the shim's
/// work. [`Starting::finish`] must follow, on every path: it reaps the
/// process and readies the next warm shim.
pub struct Starting {
    child: tokio::process::Child,
    shim: PathBuf,
    dir: PathBuf,
}

/// Hand `dir` to the warm shim, or start `shim <dir>` cold.
pub async fn begin(shim: &Path, dir: &Path) -> Result<Starting, ShimError> {
    let child = match take_warm(shim, dir).await {
        Some(c) => c,
        None => match shim_command(shim).arg(dir).stdin(Stdio::null()).spawn() {
            Ok(c) => c,
            Err(source) => {
                ready_next(shim);
                return Err(ShimError::Spawn {
                    path: shim.to_path_buf(),
                    source,
                });
            }
        },
    };
    Ok(Starting {
        child,
        shim: shim.to_path_buf(),
        dir: dir.to_path_buf(),
    })
}

/// The next warm shim, off the caller's path (and off the async workers:
/// a spawn is a fork and an exec).
fn ready_next(shim: &Path) {
    let shim = shim.to_path_buf();
    tokio::task::spawn_blocking(move || prepare_warm(&shim));
}

impl Starting {
    /// Wait for the shim's start line: the container init's pid. From a
    /// blocking thread (CreateContainer's, RunPodSandbox's): the line is
    /// read with plain blocking reads, so that the shim's `ok` wakes this
    /// thread directly, not the runtime's I/O driver first and this thread
    /// after it. Needs the runtime's context (the child's reaping and the
    /// next warm shim).
    pub fn finish(self) -> Result<i32, ShimError> {
        let shim = self.shim.clone();
        let r = self.read_start_line();
        ready_next(&shim);
        r
    }

    fn read_start_line(self) -> Result<i32, ShimError> {
        let Starting { mut child, dir, .. } = self;
        let dir_s = dir.display().to_string();
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        let io = |what: &'static str| {
            let dir = dir_s.clone();
            move |source| ShimError::Io { dir, what, source }
        };
        let timeout = || ShimError::Timeout {
            dir: dir_s.clone(),
            secs: START_TIMEOUT.as_secs(),
        };
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let fd = out.into_owned_fd().map_err(io("reading the start line"))?;
            // A warm shim's first line names its detached process.
            line = read_lines_until(&fd, deadline, |l| !l.starts_with("warm "))
                .map_err(io("reading the start line"))?
                .ok_or_else(timeout)?;
        }
        let mut err_text = String::new();
        if line.trim().is_empty()
            && let Some(e) = child.stderr.take()
            && let Ok(fd) = e.into_owned_fd()
        {
            // Everything it said before it went (EOF ends the last line).
            let mut all = String::new();
            let _ = read_lines_until(&fd, deadline, |l| {
                all.push_str(l);
                false
            });
            err_text = all;
        }
        // The process berthd started exits right after its line.
        if !matches!(child.try_wait(), Ok(Some(_))) {
            let _ = tokio::runtime::Handle::current()
                .block_on(tokio::time::timeout(Duration::from_secs(5), child.wait()));
        }
        parse_start_line(&line, &err_text, dir_s)
    }
}

/// Blocking reads of `fd` (non-blocking itself: poll waits) until a line
/// that `wanted` takes, or EOF (what is left, maybe empty), or `deadline`
/// (None).
fn read_lines_until(
    fd: &std::os::fd::OwnedFd,
    deadline: std::time::Instant,
    mut wanted: impl FnMut(&str) -> bool,
) -> std::io::Result<Option<String>> {
    use std::os::fd::AsFd;
    let mut buf: Vec<u8> = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let l: Vec<u8> = buf.drain(..=nl).collect();
            let l = String::from_utf8_lossy(&l).into_owned();
            if wanted(&l) {
                return Ok(Some(l));
            }
        }
        match nix::unistd::read(fd.as_fd(), &mut chunk) {
            Ok(0) => return Ok(Some(String::from_utf8_lossy(&buf).into_owned())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Ok(None);
                }
                let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
                let mut fds = [nix::poll::PollFd::new(
                    fd.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The shim's start line (and its stderr, if it said nothing): the init's
/// pid on `ok`, with its step timings recorded.
fn parse_start_line(line: &str, err_text: &str, dir_s: String) -> Result<i32, ShimError> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("ok ") {
        // `ok <pid>`, then the shim's step timings (`name=micros`).
        let (pid, steps) = rest.trim().split_once(' ').unwrap_or((rest.trim(), ""));
        for (step, micros) in crate::steps::parse_shim_steps(steps) {
            crate::steps::sample(&step, micros);
        }
        return pid.parse().map_err(|_| ShimError::Protocol {
            dir: dir_s,
            detail: format!("start line {line:?}"),
        });
    }
    if let Some(msg) = line.strip_prefix("error ") {
        return Err(ShimError::Failed(msg.to_string()));
    }
    let detail = if err_text.trim().is_empty() {
        line.to_string()
    } else {
        err_text.trim().to_string()
    };
    Err(ShimError::Failed(format!(
        "berth-shim failed to start the container: {detail}"
    )))
}

/// A short path to the socket in `dir`, through an open fd of the
/// directory: a socket path is limited to 108 bytes, and state dirs with
/// 64-digit ids under a long state root go past that. The returned file
/// must stay open while connecting.
fn socket_path(dir: &Path) -> std::io::Result<(std::fs::File, PathBuf)> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(dir)?;
    let p = PathBuf::from(format!(
        "/proc/self/fd/{}/{}",
        f.as_raw_fd(),
        protocol::SOCKET_FILE
    ));
    Ok((f, p))
}

/// Send one request to the shim of `dir` and read its answer.
pub async fn call(
    dir: &Path,
    req: &Request,
    timeout: Option<Duration>,
) -> Result<Response, ShimError> {
    let dir_s = dir.display().to_string();
    let fut = async {
        let gone = |source| ShimError::Gone {
            dir: dir_s.clone(),
            source,
        };
        let (_dir_fd, path) = socket_path(dir).map_err(gone)?;
        let mut s = UnixStream::connect(&path).await.map_err(gone)?;
        let mut line = serde_json::to_vec(req).map_err(|e| ShimError::Protocol {
            dir: dir_s.clone(),
            detail: e.to_string(),
        })?;
        line.push(b'\n');
        s.write_all(&line).await.map_err(|source| ShimError::Io {
            dir: dir_s.clone(),
            what: "sending a request",
            source,
        })?;
        let mut answer = String::new();
        BufReader::new(s)
            .read_line(&mut answer)
            .await
            .map_err(|source| ShimError::Io {
                dir: dir_s.clone(),
                what: "reading the answer",
                source,
            })?;
        if answer.is_empty() {
            return Err(ShimError::Gone {
                dir: dir_s.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed without an answer",
                ),
            });
        }
        serde_json::from_str::<Response>(&answer).map_err(|e| ShimError::Protocol {
            dir: dir_s.clone(),
            detail: format!("{e}: {answer:?}"),
        })
    };
    match timeout {
        None => fut.await,
        Some(t) => tokio::time::timeout(t, fut)
            .await
            .map_err(|_| ShimError::Timeout {
                dir: dir_s.clone(),
                secs: t.as_secs(),
            })?,
    }
}

/// Read the exit file a shim left, if any.
pub fn read_exit(dir: &Path) -> Option<protocol::ExitStatus> {
    let b = std::fs::read(dir.join(protocol::EXIT_FILE)).ok()?;
    serde_json::from_slice(&b).ok()
}

/// [`call`] from a blocking context (cleanup paths on blocking threads).
pub fn call_blocking(dir: &Path, req: &Request, timeout: Duration) -> Result<Response, ShimError> {
    use std::io::{BufRead, Write};
    let dir_s = dir.display().to_string();
    let io = |what: &'static str| {
        let dir = dir_s.clone();
        move |source| ShimError::Io { dir, what, source }
    };
    let gone = |source| ShimError::Gone {
        dir: dir_s.clone(),
        source,
    };
    let (_dir_fd, path) = socket_path(dir).map_err(gone)?;
    let mut s = std::os::unix::net::UnixStream::connect(&path).map_err(gone)?;
    s.set_read_timeout(Some(timeout))
        .map_err(io("setting a timeout"))?;
    s.set_write_timeout(Some(timeout))
        .map_err(io("setting a timeout"))?;
    let mut line = serde_json::to_vec(req).map_err(|e| ShimError::Protocol {
        dir: dir_s.clone(),
        detail: e.to_string(),
    })?;
    line.push(b'\n');
    s.write_all(&line).map_err(io("sending a request"))?;
    let mut answer = String::new();
    std::io::BufReader::new(s)
        .read_line(&mut answer)
        .map_err(io("reading the answer"))?;
    serde_json::from_str(&answer).map_err(|e| ShimError::Protocol {
        dir: dir_s,
        detail: format!("{e}: {answer:?}"),
    })
}

/// An open streaming request to a shim ([`Request::ExecStream`] or
/// [`Request::Attach`]): its first answer, the descriptors that came with
/// it, and the connection, on which the rest follows (the exec's exit, or
/// the container's output frames). `rest` holds what was read past the
/// answer line.
pub struct ShimStream {
    pub answer: Response,
    pub fds: Vec<std::os::fd::OwnedFd>,
    pub conn: UnixStream,
    pub rest: Vec<u8>,
}

/// Descriptors a streaming answer may carry, at most.
const STREAM_FDS_MAX: usize = 3;

/// Send a streaming request and take its answer with its descriptors.
pub async fn open_stream(dir: &Path, req: &Request) -> Result<ShimStream, ShimError> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let dir_s = dir.display().to_string();
    let gone = |source| ShimError::Gone {
        dir: dir_s.clone(),
        source,
    };
    let io = |what: &'static str| {
        let dir = dir_s.clone();
        move |source| ShimError::Io { dir, what, source }
    };
    let (_dir_fd, path) = socket_path(dir).map_err(gone)?;
    let mut s = UnixStream::connect(&path).await.map_err(gone)?;
    let mut line = serde_json::to_vec(req).map_err(|e| ShimError::Protocol {
        dir: dir_s.clone(),
        detail: e.to_string(),
    })?;
    line.push(b'\n');
    s.write_all(&line).await.map_err(io("sending a request"))?;
    let mut buf = Vec::new();
    let mut fds = Vec::new();
    let read = async {
        loop {
            s.readable().await.map_err(io("reading the answer"))?;
            let mut chunk = [0u8; 4096];
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; STREAM_FDS_MAX]);
            let r = s.try_io(tokio::io::Interest::READABLE, || {
                let mut iov = [std::io::IoSliceMut::new(&mut chunk)];
                let msg = recvmsg::<()>(
                    s.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(std::io::Error::from)?;
                let mut got = Vec::new();
                for c in msg.cmsgs().map_err(std::io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        got.extend(raw);
                    }
                }
                Ok((msg.bytes, got))
            });
            match r {
                Ok((n, got)) => {
                    for raw in got {
                        // SAFETY: SCM_RIGHTS installed this descriptor in
                        // this process for us; nothing else owns it.
                        fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                    }
                    if n == 0 {
                        return Err(ShimError::Gone {
                            dir: dir_s.clone(),
                            source: std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "connection closed without an answer",
                            ),
                        });
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.contains(&b'\n') {
                        return Ok(());
                    }
                    if buf.len() > 1 << 20 {
                        return Err(ShimError::Protocol {
                            dir: dir_s.clone(),
                            detail: "answer line too long".into(),
                        });
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(io("reading the answer")(e)),
            }
        }
    };
    tokio::time::timeout(START_TIMEOUT, read)
        .await
        .map_err(|_| ShimError::Timeout {
            dir: dir_s.clone(),
            secs: START_TIMEOUT.as_secs(),
        })??;
    let end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let answer: Response =
        serde_json::from_slice(&buf[..end]).map_err(|e| ShimError::Protocol {
            dir: dir_s.clone(),
            detail: format!("{e}: {:?}", String::from_utf8_lossy(&buf[..end])),
        })?;
    let rest = buf.get(end + 1..).unwrap_or_default().to_vec();
    Ok(ShimStream {
        answer,
        fds,
        conn: s,
        rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A non-blocking pipe, as tokio leaves a child's stdout.
    fn pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC).unwrap()
    }

    #[test]
    fn the_start_line_is_read_past_the_warm_line_and_split_writes() {
        let (r, w) = pipe();
        nix::unistd::write(&w, b"warm 42\nok 7 shim.con").unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            nix::unistd::write(&w, b"fig=3\nmore\n").unwrap();
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let line = read_lines_until(&r, deadline, |l| !l.starts_with("warm ")).unwrap();
        writer.join().unwrap();
        assert_eq!(line.as_deref(), Some("ok 7 shim.config=3\n"));
        assert_eq!(
            parse_start_line(line.as_deref().unwrap(), "", "d".into()).unwrap(),
            7
        );
    }

    #[test]
    fn eof_gives_what_was_said_and_silence_runs_into_the_deadline() {
        let (r, w) = pipe();
        nix::unistd::write(&w, b"error no such").unwrap();
        drop(w);
        let far = std::time::Instant::now() + Duration::from_secs(5);
        assert_eq!(
            read_lines_until(&r, far, |_| true).unwrap().as_deref(),
            Some("error no such")
        );
        assert!(matches!(
            parse_start_line("error no such", "", "d".into()),
            Err(ShimError::Failed(m)) if m == "no such"
        ));
        // Open and silent: None once the deadline passes.
        let (r, _w) = pipe();
        let t = std::time::Instant::now();
        let soon = t + Duration::from_millis(50);
        assert_eq!(read_lines_until(&r, soon, |_| true).unwrap(), None);
        assert!(t.elapsed() >= Duration::from_millis(50));
        // Nothing at all before EOF: the shim's stderr is the message.
        let e = parse_start_line("", "berth-shim: bad dir\n", "d".into()).unwrap_err();
        assert!(e.to_string().contains("bad dir"), "{e}");
    }

    #[test]
    fn a_missing_directory_or_unexecutable_shim_is_named() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("berth-shim");
        let e = shim_problem(&missing).expect("missing shim");
        assert!(e.contains("not found") && e.contains("cargo build"), "{e}");
        assert!(
            shim_problem(d.path())
                .unwrap()
                .contains("not a regular file")
        );
        std::fs::write(&missing, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&missing, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(shim_problem(&missing).unwrap().contains("not executable"));
        std::fs::set_permissions(&missing, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(shim_problem(&missing), None);
    }
}
