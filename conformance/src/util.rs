//! Small helpers shared by the harness modules: free ports, child processes that
//! die with the test, polling, log tails.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// There is a window between this answer and the server binding it; callers
/// that start a server on it retry with a new port when the bind fails.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Makes `cmd` a child that the kernel kills with SIGKILL when the thread that
/// spawned it goes away, so that a test process killed from outside (or a test
/// thread that panics past its guards) leaves no registry or berthd behind.
///
/// Spawn on the test's own thread (not in `spawn_blocking`, whose threads come
/// and go) so that the parent-death signal fires only when the test is over.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// SIGKILL `child` (if it still runs) and reap it. Never fails: used from Drop.
pub fn kill_and_reap(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    }
    let _ = child.wait();
}

/// Polls `check` every few milliseconds until it returns `Some`, or fails with
/// `what` after `timeout`.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(5);
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

/// The last `max_bytes` of a file, lossily decoded (for logs printed on failure).
pub fn tail(path: &Path, max_bytes: u64) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max_bytes);
    let _ = f.seek(SeekFrom::Start(start));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    if start > 0 {
        format!("[... {start} bytes cut ...]\n{text}")
    } else {
        text
    }
}

/// Random-enough lowercase hex for unique names (no extra dependency).
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = sha2_hex(format!("{}-{}-{}", std::process::id(), n, nanos).as_bytes());
    h.truncate(12);
    h
}

pub(crate) fn sha2_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(data))
}
