//! A container run by another OCI runtime (runc, crun, …) through its
//! command line, for a RuntimeClass handler: the shim stays the
//! container's monitor (its stdio, the CRI log, attach, exec, the exit),
//! and the runtime does what the built-in executor does otherwise.
//!
//! The calls are those containerd's runc shim makes, from the same bundle
//! berthd writes for the built-in executor (the state dir):
//!
//! * `create --bundle B --pid-file F [--console-socket S] ID`, with the
//!   container's stdio as runc's own (runc's "pass-through" mode: the
//!   container inherits the pipes), or a pty runc makes and sends over S;
//! * `start ID` for StartContainer;
//! * `exec --detach --process P --pid-file F [--tty --console-socket S] ID`
//!   for every exec;
//! * `delete --force ID` once the container has exited.
//!
//! The shim is a child subreaper, so the container's init (and each exec
//! process) becomes its child once the runtime's own process has gone, and
//! is reaped by the shim's loop as the built-in executor's are. Signals go
//! straight to the pids; the runtime keeps its state under its own `--root`
//! and logs to `runtime.log` in the bundle (JSON), where its errors are
//! read from. Every call is bounded: a runtime that hangs is killed.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use nix::unistd::Pid;

use super::protocol::OciRuntimeConfig;
use super::spawn::{self, Created, ExecSpawned, ExecStdio, ProcessConfig, SpawnError};

type Result<T> = std::result::Result<T, SpawnError>;

/// The runtime's log in the bundle (runc's `--log`, JSON lines).
pub const LOG_FILE: &str = "runtime.log";
const CONSOLE_SOCKET: &str = "console.sock";
const PID_FILE: &str = "runtime.pid";
const EXEC_PID_FILE: &str = "exec.pid";
const EXEC_PROCESS_FILE: &str = "exec-process.json";

/// How long a runtime call may take before it is killed. create mounts and
/// starts a process; the others are quick unless the runtime is stuck.
const CREATE_LIMIT: Duration = Duration::from_secs(60);
const CALL_LIMIT: Duration = Duration::from_secs(30);

/// One container's runtime: the binary, its root and the bundle.
pub struct OciRuntime {
    cfg: OciRuntimeConfig,
    id: String,
    bundle: PathBuf,
    /// [`CALL_LIMIT`] (shorter in tests).
    call_limit: Duration,
}

fn fail(msg: impl Into<String>) -> SpawnError {
    SpawnError::Child(msg.into())
}

impl OciRuntime {
    pub fn new(cfg: OciRuntimeConfig, id: &str, bundle: &Path) -> OciRuntime {
        OciRuntime {
            cfg,
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
            call_limit: CALL_LIMIT,
        }
    }

    /// `runtime [global flags] <sub>`, run in the bundle (relative socket
    /// and pid-file names: a socket path is limited to 108 bytes).
    fn command(&self, sub: &str) -> Command {
        let mut c = Command::new(&self.cfg.path);
        c.current_dir(&self.bundle)
            .arg("--root")
            .arg(&self.cfg.root)
            .arg("--log")
            .arg(self.bundle.join(LOG_FILE))
            .arg("--log-format")
            .arg("json")
            .args(&self.cfg.args)
            .arg(sub);
        c
    }

    /// Runs `cmd` to its end (bounded by `limit`); Err with what the
    /// runtime said if it failed.
    fn run(&self, what: &str, cmd: Command, limit: Duration) -> Result<()> {
        self.run_with_console(what, cmd, None, limit).map(drop)
    }

    /// The runtime's last error line in its log, or a note that it left
    /// none.
    fn last_error(&self) -> String {
        let text = std::fs::read_to_string(self.bundle.join(LOG_FILE)).unwrap_or_default();
        last_error_in(&text)
    }

    /// The pid the runtime wrote to `name` in the bundle.
    fn read_pid(&self, name: &str) -> Result<Pid> {
        let path = self.bundle.join(name);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| fail(format!("reading {}: {e}", path.display())))?;
        let _ = std::fs::remove_file(&path);
        text.trim()
            .parse::<i32>()
            .ok()
            .filter(|p| *p > 0)
            .map(Pid::from_raw)
            .ok_or_else(|| {
                fail(format!(
                    "{} wrote no pid to {name}: {text:?}",
                    self.cfg.name
                ))
            })
    }

    /// `create`: the container's init exists, stopped before exec, our
    /// child once the runtime has gone.
    pub fn create(&self, tty: bool, stdin: bool) -> Result<Created> {
        let mut cmd = self.command("create");
        cmd.arg("--bundle")
            .arg(&self.bundle)
            .arg("--pid-file")
            .arg(PID_FILE);
        let mut created = Created::empty();
        let stdio = ExecStdio {
            tty,
            stdin,
            stdout: true,
            stderr: true,
            size: None,
        };
        let (console, ends) = self.wire_stdio(&mut cmd, &stdio)?;
        [created.stdin, created.stdout, created.stderr] = ends;
        cmd.arg(&self.id);
        let r = self.run_with_console("create", cmd, console, CREATE_LIMIT);
        let _ = std::fs::remove_file(self.bundle.join(CONSOLE_SOCKET));
        created.pty = r?;
        match self.read_pid(PID_FILE) {
            Ok(pid) => created.pid = pid,
            Err(e) => {
                // The runtime made a container we cannot supervise: it
                // goes, process and record.
                let _ = self.delete();
                return Err(e);
            }
        }
        Ok(created)
    }

    /// The process's stdio as the runtime's own (it passes them through):
    /// with a tty a console socket (its listener returned) and /dev/null,
    /// else a pipe per stream asked for and /dev/null for the rest. The
    /// shim's ends: stdin's write end, stdout's and stderr's read ends.
    fn wire_stdio(
        &self,
        cmd: &mut Command,
        stdio: &ExecStdio,
    ) -> Result<(Option<UnixListener>, [Option<OwnedFd>; 3])> {
        let mut ends = [None, None, None];
        if stdio.tty {
            let l = self.console_listener()?;
            cmd.arg("--console-socket").arg(CONSOLE_SOCKET);
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            return Ok((Some(l), ends));
        }
        let mut child_ends: [Stdio; 3] = [Stdio::null(), Stdio::null(), Stdio::null()];
        if stdio.stdin {
            let (r, w) = spawn::cloexec_pipe()?;
            ends[0] = Some(w);
            child_ends[0] = Stdio::from(r);
        }
        for (i, wanted) in [(1, stdio.stdout), (2, stdio.stderr)] {
            if wanted {
                let (r, w) = spawn::output_pipe()?;
                ends[i] = Some(r);
                child_ends[i] = Stdio::from(w);
            }
        }
        let [i, o, e] = child_ends;
        cmd.stdin(i).stdout(o).stderr(e);
        Ok((None, ends))
    }

    fn console_listener(&self) -> Result<UnixListener> {
        let path = self.bundle.join(CONSOLE_SOCKET);
        let _ = std::fs::remove_file(&path);
        // Bound by its relative name from the bundle (the shim's working
        // directory is not yet the bundle at create).
        let prev = std::env::current_dir().ok();
        std::env::set_current_dir(&self.bundle)
            .map_err(|e| fail(format!("entering {}: {e}", self.bundle.display())))?;
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let l = UnixListener::bind(CONSOLE_SOCKET);
        nix::sys::stat::umask(old);
        if let Some(p) = prev {
            let _ = std::env::set_current_dir(p);
        }
        let l = l.map_err(|e| fail(format!("binding the console socket: {e}")))?;
        l.set_nonblocking(true)
            .map_err(|e| fail(format!("console socket: {e}")))?;
        Ok(l)
    }

    /// Runs `cmd` to its end (bounded by `limit`); with a console socket,
    /// takes the pty master the runtime sends on it while it runs.
    fn run_with_console(
        &self,
        what: &str,
        mut cmd: Command,
        console: Option<UnixListener>,
        limit: Duration,
    ) -> Result<Option<OwnedFd>> {
        let _ = std::fs::remove_file(self.bundle.join(LOG_FILE));
        let mut child = cmd
            .spawn()
            .map_err(|e| fail(format!("{what}: running {}: {e}", self.cfg.path.display())))?;
        let deadline = Instant::now() + limit;
        let pty = console
            .as_ref()
            .and_then(|l| receive_pty(l, &mut child, deadline));
        let left = deadline.saturating_duration_since(Instant::now());
        let status = wait_bounded(&mut child, left.max(Duration::from_millis(1))).map_err(|e| {
            fail(format!(
                "{what}: waiting for {}: {e}",
                self.cfg.path.display()
            ))
        })?;
        match status {
            Some(s) if s.success() => {}
            Some(s) => {
                return Err(fail(format!(
                    "{} {what} failed ({s}): {}",
                    self.cfg.name,
                    self.last_error()
                )));
            }
            None => {
                return Err(fail(format!(
                    "{} {what} took longer than {:?}: killed",
                    self.cfg.name, limit
                )));
            }
        }
        if console.is_none() {
            return Ok(None);
        }
        let pty = pty.ok_or_else(|| {
            fail(format!(
                "{} {what} sent no terminal on its console socket",
                self.cfg.name
            ))
        })?;
        spawn::set_cloexec(&pty)?;
        spawn::set_nonblocking(&pty)?;
        Ok(Some(pty))
    }

    /// `start`: the created process execs.
    pub fn start(&self) -> Result<()> {
        let mut cmd = self.command("start");
        cmd.arg(&self.id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.run("start", cmd, self.call_limit)
    }

    /// `exec --detach`: `process` (the spec's process with the exec's args,
    /// env, cwd and terminal) runs in the container; our child once the
    /// runtime has gone.
    pub fn exec(&self, cfg: &ProcessConfig, stdio: &ExecStdio) -> Result<ExecSpawned> {
        let process = self.exec_process(cfg, stdio)?;
        let json = serde_json::to_vec(&process)
            .map_err(|e| fail(format!("encoding the exec process: {e}")))?;
        super::write_atomic(&self.bundle, EXEC_PROCESS_FILE, &json)
            .map_err(|e| fail(e.to_string()))?;
        let mut cmd = self.command("exec");
        cmd.arg("--detach")
            .arg("--process")
            .arg(EXEC_PROCESS_FILE)
            .arg("--pid-file")
            .arg(EXEC_PID_FILE);
        let mut out = ExecSpawned {
            pid: Pid::from_raw(0),
            stdin: None,
            stdout: None,
            stderr: None,
            pty: None,
        };
        if stdio.tty {
            cmd.arg("--tty");
        }
        let (console, ends) = self.wire_stdio(&mut cmd, stdio)?;
        [out.stdin, out.stdout, out.stderr] = ends;
        cmd.arg(&self.id);
        let r = self.run_with_console("exec", cmd, console, self.call_limit);
        let _ = std::fs::remove_file(self.bundle.join(CONSOLE_SOCKET));
        let _ = std::fs::remove_file(self.bundle.join(EXEC_PROCESS_FILE));
        out.pty = r?;
        if let (Some(pty), Some((w, h))) = (&out.pty, stdio.size) {
            let _ = spawn::set_winsize(pty, w, h);
        }
        out.pid = self.read_pid(EXEC_PID_FILE)?;
        Ok(out)
    }

    /// The spec's process (user, capabilities, rlimits, …: what runc would
    /// give an exec) with the exec's args, env, working directory and
    /// terminal.
    fn exec_process(
        &self,
        cfg: &ProcessConfig,
        stdio: &ExecStdio,
    ) -> Result<oci_spec::runtime::Process> {
        let path = self.bundle.join(super::protocol::CONFIG_FILE);
        let bytes =
            std::fs::read(&path).map_err(|e| fail(format!("reading {}: {e}", path.display())))?;
        let spec: oci_spec::runtime::Spec = serde_json::from_slice(&bytes)
            .map_err(|e| fail(format!("parsing {}: {e}", path.display())))?;
        let mut p = spec
            .process()
            .clone()
            .ok_or_else(|| fail("the spec has no process"))?;
        p.set_args(Some(cfg.args.clone()));
        p.set_env(Some(cfg.env.clone()));
        p.set_cwd(cfg.cwd.clone());
        p.set_terminal(Some(stdio.tty));
        p.set_console_size(stdio.size.and_then(|(w, h)| {
            oci_spec::runtime::BoxBuilder::default()
                .width(u64::from(w))
                .height(u64::from(h))
                .build()
                .ok()
        }));
        Ok(p)
    }

    /// `delete --force`: the runtime's state (and the cgroup it made) go.
    /// A container the runtime no longer knows is not an error.
    pub fn delete(&self) -> Result<()> {
        let mut cmd = self.command("delete");
        cmd.arg("--force")
            .arg(&self.id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match self.run("delete", cmd, self.call_limit) {
            Err(_) if !self.cfg.root.join(&self.id).exists() => Ok(()),
            r => r,
        }
    }
}

/// The message of the last error (or fatal) line of a runtime's JSON log
/// (runc's and crun's `--log-format json`: `{"level":…,"msg":…}`),
/// bounded; a note if it has none.
fn last_error_in(log: &str) -> String {
    let last = log
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| matches!(v["level"].as_str(), Some("error" | "fatal")))
        .find_map(|v| v["msg"].as_str().map(str::to_string));
    let mut msg = last.unwrap_or_else(|| "it logged no error".into());
    if msg.len() > 2000 {
        let mut end = 2000;
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        msg.truncate(end);
    }
    msg
}

/// Waits for `child` at most `limit`; None (after killing and reaping it)
/// if it ran longer. A pidfd where the kernel has one (5.3), else short
/// sleeps.
pub(crate) fn wait_bounded(
    child: &mut std::process::Child,
    limit: Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + limit;
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_child(child),
        rustix::process::PidfdFlags::empty(),
    )
    .ok();
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        match &pidfd {
            Some(fd) => {
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                let ms = PollTimeout::try_from(left.as_millis().min(60_000) as u64 + 1)
                    .unwrap_or(PollTimeout::MAX);
                match poll(&mut fds, ms) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            None => std::thread::sleep(Duration::from_millis(1).min(left)),
        }
    }
}

/// The pty master a runtime sends over its console socket (SCM_RIGHTS),
/// while `child` runs and until `deadline`.
fn receive_pty(
    listener: &UnixListener,
    child: &mut std::process::Child,
    deadline: Instant,
) -> Option<OwnedFd> {
    loop {
        match listener.accept() {
            Ok((conn, _)) => return receive_fd(&conn, deadline),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return None,
        }
        if !matches!(child.try_wait(), Ok(None)) || Instant::now() >= deadline {
            // Gone without connecting (it failed): the caller reads why.
            return None;
        }
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(10u8));
    }
}

fn receive_fd(conn: &std::os::unix::net::UnixStream, deadline: Instant) -> Option<OwnedFd> {
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1)),
    ))
    .ok()?;
    // runc sends the terminal's name as the data and the fd alongside.
    let mut buf = [0u8; 4096];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            fds.extend(raw);
        }
    }
    let mut owned = fds.into_iter().map(|raw| {
        // SAFETY: SCM_RIGHTS installed this descriptor in this process for
        // us; nothing else owns it.
        unsafe { OwnedFd::from_raw_fd(raw) }
    });
    let first = owned.next();
    drop(owned.collect::<Vec<_>>());
    first
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn the_last_error_of_a_json_log_is_the_message() {
        let log = r#"{"level":"info","msg":"starting","time":"t"}
not json at all
{"level":"error","msg":"first","time":"t"}
{"level":"warning","msg":"later warning","time":"t"}
{"level":"error","msg":"container_linux.go: exec: \"nope\": executable file not found","time":"t"}
"#;
        assert_eq!(
            last_error_in(log),
            "container_linux.go: exec: \"nope\": executable file not found"
        );
        assert_eq!(last_error_in(""), "it logged no error");
        let long = format!(r#"{{"level":"fatal","msg":"{}"}}"#, "é".repeat(2000));
        let m = last_error_in(&long);
        assert!(m.len() <= 2000 && m.starts_with('é'), "{}", m.len());
    }

    /// A stand-in runtime: a script that records its arguments, and logs an
    /// error and fails, or hangs, when asked to.
    fn fake_runtime(dir: &Path, body: &str) -> OciRuntime {
        let path = dir.join("fake-runtime");
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho \"$@\" >> {}/args\n{body}\n", dir.display()),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut rt = OciRuntime::new(
            OciRuntimeConfig {
                name: "fake".into(),
                path,
                root: dir.join("root"),
                args: vec!["--debug".into()],
            },
            "c1",
            dir,
        );
        rt.call_limit = Duration::from_millis(300);
        rt
    }

    #[test]
    fn calls_carry_root_log_and_flags_and_failures_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let rt = fake_runtime(dir.path(), "exit 0");
        rt.start().unwrap();
        let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
        let want = format!(
            "--root {0}/root --log {0}/runtime.log --log-format json --debug start c1\n",
            dir.path().display()
        );
        assert_eq!(args, want);

        let rt = fake_runtime(
            dir.path(),
            r#"[ "$1" = --root ] && echo '{"level":"error","msg":"no such container"}' > "$4"; exit 1"#,
        );
        let e = rt.start().unwrap_err().to_string();
        assert!(
            e.contains("fake start failed") && e.contains("no such container"),
            "{e}"
        );
        // delete of a container the runtime does not know: not an error.
        rt.delete().unwrap();
        std::fs::create_dir_all(dir.path().join("root/c1")).unwrap();
        let e = rt.delete().unwrap_err().to_string();
        assert!(e.contains("no such container"), "{e}");
    }

    #[test]
    fn a_runtime_that_hangs_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let rt = fake_runtime(dir.path(), "exec sleep 30");
        let t = Instant::now();
        let e = rt.start().unwrap_err().to_string();
        assert!(e.contains("took longer than"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }

    #[test]
    fn create_without_a_pid_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let rt = fake_runtime(dir.path(), "exit 0");
        let e = match rt.create(false, false) {
            Ok(_) => panic!("a create that wrote no pid succeeded"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("runtime.pid"), "{e}");
    }
}
