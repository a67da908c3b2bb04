//! berthd ↔ berth-shim: files in the container's state directory and a
//! control socket that speaks one JSON request line, answered by one JSON
//! response line, per connection.
//!
//! The state directory (`<state>/containers/<id>/`, the OCI bundle):
//!
//! | file | written by | holds |
//! | --- | --- | --- |
//! | `config.json` | berthd | the OCI runtime spec |
//! | `shim.json` | berthd | [`ShimConfig`] |
//! | `seccomp.json` | berthd | the container's seccomp profile (the OCI `linux.seccomp`, kept out of `config.json`); only with one |
//! | `seccomp.bpf` | berthd | that profile compiled ([`crate::seccomp::Program`]), loaded by every process of the container |
//! | `shim.sock` | shim | the control socket |
//! | `shim.pid` | shim | the shim's pid, once it is detached |
//! | `init.pid` | shim | the container process's pid (host pid namespace) |
//! | `exit.json` | shim | [`ExitStatus`], written atomically once the process is reaped |
//! | `shim.log` | shim | problems met after start-up, when nobody reads its stderr (small) |
//!
//! Start-up: berthd runs `berth-shim <state dir>` with a pipe as stdout. The
//! shim detaches (new session, reparented away from berthd, child subreaper),
//! creates the container process stopped before exec, binds `shim.sock`, then
//! writes one line to the pipe: `ok <init pid>` or `error <message>`, and
//! closes it. A shim that fails before that line leaves nothing behind (it
//! has cleaned up by the time the line is written).
//!
//! Exit: once the container process is reaped the shim logs its last
//! output, writes `exit.json`, answers pending `Wait`s (and clients already
//! queued on the socket), removes `shim.sock` and exits. A client that finds
//! no socket, or whose connection is refused or reset, reads `exit.json`.
//!
//! A [`ShimKind::Pause`] process runs from creation on: its state is
//! `Running` at once and `Start` is a no-op.

use serde::{Deserialize, Serialize};

pub const CONFIG_FILE: &str = "config.json";
pub const SHIM_CONFIG_FILE: &str = "shim.json";
pub const SECCOMP_FILE: &str = "seccomp.bpf";
pub const SECCOMP_PROFILE_FILE: &str = "seccomp.json";
pub const SOCKET_FILE: &str = "shim.sock";
pub const SHIM_PID_FILE: &str = "shim.pid";
pub const INIT_PID_FILE: &str = "init.pid";
pub const EXIT_FILE: &str = "exit.json";

/// What berthd tells the shim beyond the OCI spec.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ShimConfig {
    pub id: String,
    /// What the shim runs.
    pub kind: ShimKind,
    /// CRI log file (absolute); empty: output is discarded.
    pub log_path: String,
    /// Keep a pipe (or the pty) for stdin, for attach.
    pub stdin: bool,
    /// Close stdin after the first attach ends.
    pub stdin_once: bool,
    /// Allocate a pty; its output is logged as stdout.
    pub tty: bool,
    /// oom_score_adj is clamped to this floor when the kernel refuses a lower
    /// value (a node without CAP_SYS_RESOURCE), as containerd's
    /// restrict_oom_score_adj does, instead of failing the container.
    pub restrict_oom_score_adj: bool,
    /// The container's processes load [`SECCOMP_FILE`] before exec (an
    /// error if it is missing).
    #[serde(default)]
    pub seccomp: bool,
    /// Run the container through this OCI runtime's command line (a
    /// RuntimeClass handler) instead of the built-in executor. None: the
    /// built-in one (the default handler "").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<OciRuntimeConfig>,
}

/// An OCI runtime binary as a handler's config names it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct OciRuntimeConfig {
    /// The handler's name (for messages).
    pub name: String,
    /// The runtime binary (runc, crun, …), absolute.
    pub path: std::path::PathBuf,
    /// Its `--root`: where it keeps its state of each container.
    pub root: std::path::PathBuf,
    /// Global flags put before every subcommand.
    #[serde(default)]
    pub args: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ShimKind {
    /// Run the spec's process.
    #[default]
    Container,
    /// Hold a pod's PID namespace: a built-in pause process that reaps
    /// zombies (no image, no exec). Only the spec's namespaces are used.
    Pause,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Let the created process exec (StartContainer). Answered once the
    /// init is told, before its execve, as runc's start; an execve that
    /// fails then is the container's exit (126 or 127, the message in its
    /// log). A handler's runtime answers when its `start` returns.
    Start,
    /// Signal the container's process; `all` signals every process in its
    /// cgroup (or PID namespace), as at the end of StopContainer.
    Kill { signal: i32, all: bool },
    /// The current state.
    State,
    /// Close and reopen the log file (kubelet rotated it).
    ReopenLog,
    /// Run a process in the container and wait for it (ExecSync). Output is
    /// capped at [`EXEC_OUTPUT_LIMIT`] per stream.
    Exec {
        args: Vec<String>,
        /// None: the container's environment.
        env: Option<Vec<String>>,
        /// None: the container's working directory.
        cwd: Option<String>,
        /// 0: no timeout. On timeout the process is killed.
        timeout_ms: u64,
    },
    /// Answer once the container process has exited (at once if it has).
    Wait,
    /// Set the pty's size.
    Resize { width: u16, height: u16 },
    /// Start a process in the container for a streaming Exec. The answer
    /// is [`Response::Streaming`], sent with the shim's ends of the
    /// process's stdio as SCM_RIGHTS in the same message (see
    /// [`stream_fds`]); berthd moves the bytes itself. The connection then
    /// stays open: the shim writes [`Response::Exec`] (code only, no output)
    /// once the process is reaped, and kills the process if berthd closes
    /// the connection first (the client went away).
    ExecStream {
        args: Vec<String>,
        env: Option<Vec<String>>,
        cwd: Option<String>,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        /// The pty's size at start (columns, rows).
        #[serde(default)]
        size: Option<(u16, u16)>,
    },
    /// Attach to the container's own stdio. The answer is
    /// [`Response::Attached`], with a dup of the container's stdin pipe (or
    /// pty) as SCM_RIGHTS when `stdin` is asked for and the container has
    /// one. After it the shim writes the container's output on the
    /// connection as [`AttachFrame`]s, as it comes, until the container
    /// exits (then it closes the connection). Closing the connection ends
    /// the attach. Shutting down its writing side says the client's stdin
    /// ended: with `stdin_once`, the first attach holding stdin to end it
    /// (or to go) closes the container's stdin, so that it reads EOF once
    /// berthd's copy is closed too.
    Attach {
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
}

/// Which descriptors come with [`Response::Streaming`], in order: the pty
/// alone with `tty`, else stdin's write end, stdout's read end and
/// stderr's read end, each only if asked for.
pub fn stream_fds(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> usize {
    if tty {
        1
    } else {
        usize::from(stdin) + usize::from(stdout) + usize::from(stderr)
    }
}

/// Container output on an attach connection: one byte naming the stream
/// ([`ATTACH_STDOUT`] or [`ATTACH_STDERR`]; a pty's output is stdout), a
/// big-endian u32 length, then that many bytes.
pub struct AttachFrame;

pub const ATTACH_STDOUT: u8 = 1;
pub const ATTACH_STDERR: u8 = 2;
/// A frame carries at most this much.
pub const ATTACH_FRAME_MAX: usize = 64 << 10;

impl AttachFrame {
    /// The frame header for `len` bytes of `stream`.
    pub fn header(stream: u8, len: usize) -> [u8; 5] {
        let l = (len as u32).to_be_bytes();
        [stream, l[0], l[1], l[2], l[3]]
    }
}

pub const EXEC_OUTPUT_LIMIT: usize = 16 << 20;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Ok,
    State(State),
    Exec(ExecResult),
    Exit(ExitStatus),
    Error {
        message: String,
    },
    /// The exec process runs (its pid in the host PID namespace); its
    /// stdio comes with this line (see [`Request::ExecStream`]).
    Streaming {
        pid: i32,
    },
    /// Attached; `tty`: the container has a pty (output is all stdout);
    /// `stdin`: a descriptor for its stdin comes with this line.
    Attached {
        tty: bool,
        stdin: bool,
    },
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The process exists, stopped before exec.
    Created,
    Running,
    Exited,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub status: Status,
    /// Container init pid in the host PID namespace.
    pub pid: i32,
    /// Nanoseconds since the epoch when Start let it exec; 0 before.
    pub started_at_ns: i64,
    pub exit: Option<ExitStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code, or 128 + signal if a signal killed it (as runc reports).
    pub code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    pub started_at_ns: i64,
    pub finished_at_ns: i64,
    /// The kernel's OOM killer killed a process of the container's cgroup.
    pub oom_killed: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecResult {
    pub exit_code: i32,
    #[serde(with = "b64")]
    pub stdout: Vec<u8>,
    #[serde(with = "b64")]
    pub stderr: Vec<u8>,
    /// The timeout killed it; exit_code is then that of the kill.
    pub timed_out: bool,
}

/// Bytes as base64 strings: JSON arrays of numbers would quadruple output.
mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shim_config_without_a_runtime_is_the_built_in_executor() {
        // As an older berthd wrote it (a shim started before an upgrade).
        let old = r#"{"id":"c","kind":"container","log_path":"","stdin":false,"stdin_once":false,"tty":false,"restrict_oom_score_adj":true}"#;
        let c: ShimConfig = serde_json::from_str(old).unwrap();
        assert_eq!(c.runtime, None);
        assert!(!serde_json::to_string(&c).unwrap().contains("runtime\""));
        let with = ShimConfig {
            runtime: Some(OciRuntimeConfig {
                name: "runc".into(),
                path: "/usr/sbin/runc".into(),
                root: "/run/berth/runtimes/runc".into(),
                args: vec![],
            }),
            ..c
        };
        let line = serde_json::to_string(&with).unwrap();
        assert_eq!(serde_json::from_str::<ShimConfig>(&line).unwrap(), with);
    }

    #[test]
    fn requests_and_responses_are_one_json_line_each() {
        let r = Request::Kill {
            signal: 15,
            all: false,
        };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(line, r#"{"op":"kill","signal":15,"all":false}"#);
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), r);
        let e = Response::Exec(ExecResult {
            exit_code: 1,
            stdout: b"out\n".to_vec(),
            stderr: vec![0, 255],
            timed_out: false,
        });
        let line = serde_json::to_string(&e).unwrap();
        assert!(!line.contains('\n'));
        assert!(line.contains(r#""stdout":"b3V0Cg==""#), "{line}");
        assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), e);
    }
}
