//! The shim's event loop: one poll(2) over the control socket and its
//! connections, the container's output, a signalfd for SIGCHLD, the start
//! report and exec processes. Nothing in it blocks for long: output is
//! read as it comes, connections are non-blocking, exec runs concurrently.

#![deny(unsafe_code)]

use std::io::{ErrorKind, Read as _, Write as _};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::cgroup::Cgroup;
use super::crilog::{LogFile, ReadOutcome, Relay, Stream};
use super::plan;
use super::protocol::{
    ATTACH_FRAME_MAX, ATTACH_STDERR, ATTACH_STDOUT, AttachFrame, EXEC_OUTPUT_LIMIT, ExecResult,
    ExitStatus, Request, Response, ShimKind, State, Status,
};
use super::spawn::{self, ProcessConfig};

/// A request line longer than this is refused.
const MAX_REQUEST: usize = 1 << 20;
/// How long the shim is idle before it gives back what the set-up or a
/// request used (see the loop in [`Monitor::run`]).
pub const RELEASE_AFTER: Duration = Duration::from_millis(200);

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNS: usize = 64;
/// Output an attach client has not taken yet, at most: while one is this
/// far behind, the container's output is not read (its writes wait, as
/// with a pipe nobody reads fast enough), so that an attacher loses
/// nothing of what it watches.
const ATTACH_BACKLOG: usize = 1 << 20;
/// An attach client that takes nothing for this long while it holds the
/// container up is dropped: a hung client must not stop the container (nor
/// its log) for good.
const ATTACH_STALL: Duration = Duration::from_secs(10);

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

struct Output {
    fd: OwnedFd,
    stream: Stream,
    /// A line waiting for its end.
    carry: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ConnState {
    Reading,
    AwaitExit,
    AwaitExec,
    Writing,
    /// An attach client: output frames are queued in `out` as they come.
    Attached,
}

/// What an attach client asked for.
#[derive(Clone, Copy, Default)]
struct AttachSub {
    stdout: bool,
    stderr: bool,
    /// It holds the container's stdin (for stdin_once).
    stdin: bool,
    /// berthd shut its side's writing down: the client's stdin ended.
    read_closed: bool,
}

struct Conn {
    id: u64,
    sock: UnixStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    written: usize,
    state: ConnState,
    /// The state once `out` is written (None: close the connection).
    then: Option<ConnState>,
    attach: AttachSub,
    /// Since when this attach client is ATTACH_BACKLOG behind.
    stalled_since: Option<Instant>,
}

impl Conn {
    /// An attach client too far behind: the container's output waits.
    fn holds_output(&self) -> bool {
        self.state == ConnState::Attached && self.out.len() - self.written > ATTACH_BACKLOG
    }

    /// Waiting for the container (to start or to exit), nothing to do.
    fn parked(&self) -> bool {
        self.state == ConnState::AwaitExit
            || (self.state == ConnState::Attached && self.written == self.out.len())
    }
}

struct ExecRun {
    conn: u64,
    pid: Pid,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    out: Vec<u8>,
    err: Vec<u8>,
    deadline: Option<Instant>,
    timed_out: bool,
}

/// How a write of queued bytes went.
#[derive(PartialEq, Eq)]
enum Flush {
    Done,
    Pending,
    Broken,
}

/// Everything the loop watches and answers for.
pub struct Monitor {
    pub kind: ShimKind,
    pub pid: Pid,
    pub status: Status,
    pub started_at_ns: i64,
    pub exit: Option<ExitStatus>,
    pending_exit: Option<ExitStatus>,
    /// The container is PID 1 of its own namespace: SIGKILL to it kills all.
    pub own_pid_ns: bool,
    pub cgroup: Option<Cgroup>,
    pub exec_cfg: ProcessConfig,
    pub start: Option<OwnedFd>,
    pub sync: Option<OwnedFd>,
    sync_buf: Vec<u8>,
    outputs: [Option<Output>; 2],
    pub stdin: Option<OwnedFd>,
    /// Close stdin when the first attach that holds it ends.
    stdin_once: bool,
    pty: Option<OwnedFd>,
    pub log: LogFile,
    /// Why the log could not be opened after `ok`: Start fails with it.
    log_error: Option<String>,
    relay: Relay,
    listener: UnixListener,
    conns: Vec<Conn>,
    next_conn: u64,
    execs: Vec<ExecRun>,
    sigfd: SignalFd,
    oom_base: u64,
    pub state_dir: PathBuf,
    /// A client was served (or the set-up ran) since memory was last
    /// given back.
    served: bool,
    /// When memory is given back, if the shim is still idle then.
    release_at: Option<Instant>,
    /// The handler's OCI runtime, which made the container and makes its
    /// execs; None: the built-in executor.
    oci: Option<super::oci::OciRuntime>,
}

#[derive(Clone, Copy)]
enum Token {
    Sig,
    Listener,
    Sync,
    Output(usize),
    Conn(u64),
    ExecOut(Pid, bool),
}

/// The parts the monitor is built from.
pub struct MonitorParts {
    pub kind: ShimKind,
    pub created: spawn::Created,
    pub own_pid_ns: bool,
    pub cgroup: Option<Cgroup>,
    pub exec_cfg: ProcessConfig,
    pub log: LogFile,
    pub listener: UnixListener,
    pub sigfd: SignalFd,
    pub state_dir: PathBuf,
    pub stdin_once: bool,
    pub oci: Option<super::oci::OciRuntime>,
}

fn nonblocking(fd: &OwnedFd) {
    if let Ok(flags) = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL) {
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags));
    }
}

impl Monitor {
    pub fn new(p: MonitorParts) -> Monitor {
        let c = p.created;
        if let Some(fd) = &c.sync {
            nonblocking(fd);
        }
        let mut outputs = [None, None];
        if let Some(fd) = c.stdout {
            outputs[0] = Some(Output {
                fd,
                stream: Stream::Stdout,
                carry: Vec::new(),
            });
        }
        if let Some(fd) = c.stderr {
            outputs[1] = Some(Output {
                fd,
                stream: Stream::Stderr,
                carry: Vec::new(),
            });
        }
        let mut pty = None;
        if let Some(fd) = c.pty {
            // The pty's output is logged as stdout; a dup is kept for
            // resize and stdin.
            pty = fd.try_clone().ok();
            outputs[0] = Some(Output {
                fd,
                stream: Stream::Stdout,
                carry: Vec::new(),
            });
        }
        let pause = p.kind == ShimKind::Pause;
        let oom_base = p.cgroup.as_ref().map(Cgroup::oom_kills).unwrap_or(0);
        Monitor {
            kind: p.kind,
            pid: c.pid,
            status: if pause {
                Status::Running
            } else {
                Status::Created
            },
            started_at_ns: if pause { now_ns() } else { 0 },
            exit: None,
            pending_exit: None,
            own_pid_ns: p.own_pid_ns,
            cgroup: p.cgroup,
            exec_cfg: p.exec_cfg,
            start: c.start,
            sync: if pause { None } else { c.sync },
            sync_buf: Vec::new(),
            outputs,
            stdin: c.stdin,
            stdin_once: p.stdin_once,
            pty,
            log: p.log,
            log_error: None,
            relay: Relay::new(),
            listener: p.listener,
            conns: Vec::new(),
            next_conn: 0,
            execs: Vec::new(),
            sigfd: p.sigfd,
            oom_base,
            state_dir: p.state_dir,
            // The set-up's memory is given back like a request's.
            served: true,
            release_at: None,
            oci: p.oci,
        }
    }

    /// Serves until the container process has exited and everything about
    /// it is recorded. Returns the exit status.
    pub fn run(&mut self) -> ExitStatus {
        loop {
            if let Some(exit) = self.exit.clone() {
                self.linger();
                return exit;
            }
            let ready = match self.poll_once(None) {
                Ok(r) => r,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    super::diag(&self.state_dir, &format!("poll: {e}"));
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            // The start report before the reaper: an exec that succeeded
            // and exited at once is still a successful Start.
            for &(t, _) in &ready {
                if let Token::Sync = t {
                    self.read_sync();
                }
            }
            for &(t, ev) in &ready {
                match t {
                    Token::Output(i) => self.read_output(i),
                    Token::Sig => self.reap(),
                    Token::Listener => self.accept(),
                    Token::Conn(id) => self.service_conn(id, ev),
                    Token::ExecOut(pid, is_err) => self.read_exec(pid, is_err),
                    Token::Sync => {}
                }
            }
            self.check_deadlines();
            if let Some(exit) = self.pending_exit.take() {
                self.finish(exit);
            }
            // Idle again after the set-up or a request (Start, an exec, a
            // status): the code, heap and stack it used are given back, so
            // that a shim between requests holds only what its loop and
            // logging touch. berthd keeps a Wait parked for the
            // container's whole life: parked connections count as idle.
            // Not at once: requests come in bursts (kubelet's Start right
            // after the create, berthd's Wait and status after Start), and
            // each release makes the next request fault its code back in.
            // As an allocator's decay does, the release waits until the
            // shim has been idle for RELEASE_AFTER.
            let idle = self.execs.is_empty() && self.conns.iter().all(Conn::parked);
            if !idle {
                self.release_at = None;
            } else if self.served {
                self.served = false;
                self.release_at = Some(Instant::now() + RELEASE_AFTER);
            } else if self.release_at.is_some_and(|t| t <= Instant::now()) {
                self.release_at = None;
                super::release_memory();
            }
        }
    }

    /// After the exit is recorded: the socket file goes (new clients read
    /// exit.json), and clients already queued on the socket get answers.
    fn linger(&mut self) {
        let _ = std::fs::remove_file(self.state_dir.join(super::protocol::SOCKET_FILE));
        let deadline = Instant::now() + Duration::from_millis(200);
        loop {
            self.accept();
            let left = deadline.saturating_duration_since(Instant::now());
            if self.conns.is_empty() || left.is_zero() {
                return;
            }
            let Ok(ready) = self.poll_once(Some(left)) else {
                return;
            };
            for (t, ev) in ready {
                if let Token::Conn(id) = t {
                    self.service_conn(id, ev);
                }
            }
        }
    }

    fn poll_once(&self, cap: Option<Duration>) -> Result<Vec<(Token, PollFlags)>, Errno> {
        let mut tokens = Vec::with_capacity(8 + self.conns.len());
        let mut fds = Vec::with_capacity(8 + self.conns.len());
        let inp = PollFlags::POLLIN;
        tokens.push(Token::Sig);
        fds.push(PollFd::new(self.sigfd.as_fd(), inp));
        if self.conns.len() < MAX_CONNS {
            tokens.push(Token::Listener);
            fds.push(PollFd::new(self.listener.as_fd(), inp));
        }
        // After Start was sent, whether or not its client still waits: the
        // report moves the state to Running.
        if let (Some(fd), None) = (&self.sync, &self.start) {
            tokens.push(Token::Sync);
            fds.push(PollFd::new(fd.as_fd(), inp));
        }
        let held = self.conns.iter().any(Conn::holds_output);
        for (i, o) in self.outputs.iter().enumerate() {
            if let (Some(o), false) = (o, held) {
                tokens.push(Token::Output(i));
                fds.push(PollFd::new(o.fd.as_fd(), inp));
            }
        }
        for c in &self.conns {
            let ev = match c.state {
                ConnState::Writing => PollFlags::POLLOUT,
                ConnState::Attached => {
                    let mut ev = PollFlags::empty();
                    if !c.attach.read_closed {
                        ev |= inp;
                    }
                    if c.written < c.out.len() {
                        ev |= PollFlags::POLLOUT;
                    }
                    // POLLHUP (berthd closed it all) comes whatever is asked.
                    ev
                }
                _ => inp,
            };
            tokens.push(Token::Conn(c.id));
            fds.push(PollFd::new(c.sock.as_fd(), ev));
        }
        for e in &self.execs {
            if let Some(fd) = &e.stdout {
                tokens.push(Token::ExecOut(e.pid, false));
                fds.push(PollFd::new(fd.as_fd(), inp));
            }
            if let Some(fd) = &e.stderr {
                tokens.push(Token::ExecOut(e.pid, true));
                fds.push(PollFd::new(fd.as_fd(), inp));
            }
        }
        let now = Instant::now();
        let wait = self
            .execs
            .iter()
            .filter_map(|e| e.deadline)
            .chain(
                self.conns
                    .iter()
                    .filter_map(|c| c.stalled_since.map(|t| t + ATTACH_STALL)),
            )
            .chain(self.release_at)
            .map(|d| d.saturating_duration_since(now) + Duration::from_millis(1))
            .chain(cap)
            .min();
        let timeout = wait
            .map(|d| PollTimeout::try_from(d.as_millis().min(60_000)).unwrap_or(PollTimeout::MAX))
            .unwrap_or(PollTimeout::NONE);
        poll(&mut fds, timeout)?;
        Ok(fds
            .iter()
            .zip(tokens)
            .filter_map(|(f, t)| f.revents().filter(|r| !r.is_empty()).map(|r| (t, r)))
            .collect())
    }

    fn read_output(&mut self, i: usize) {
        // A few reads per wake-up: enough for a flood, fair to the rest.
        for _ in 0..16 {
            if self.conns.iter().any(Conn::holds_output) {
                return;
            }
            let Some(o) = self.outputs[i].as_mut() else {
                return;
            };
            let stream = o.stream;
            match self
                .relay
                .read_once(&o.fd, o.stream, &mut o.carry, &mut self.log)
            {
                ReadOutcome::Data => self.fan_out(stream),
                ReadOutcome::WouldBlock => return,
                ReadOutcome::Eof => {
                    self.outputs[i] = None;
                    return;
                }
            }
        }
    }

    /// What the last read of the container's output brought, to every
    /// attach client that wants that stream.
    fn fan_out(&mut self, stream: Stream) {
        let chunk = self.relay.last_chunk();
        if chunk.is_empty() {
            return;
        }
        let (tag, wanted): (u8, fn(&AttachSub) -> bool) = match stream {
            Stream::Stdout => (ATTACH_STDOUT, |a| a.stdout),
            Stream::Stderr => (ATTACH_STDERR, |a| a.stderr),
        };
        let mut slow = Vec::new();
        for c in self
            .conns
            .iter_mut()
            .filter(|c| c.state == ConnState::Attached && wanted(&c.attach))
        {
            if c.written == c.out.len() {
                c.out.clear();
                c.written = 0;
            } else if c.written > ATTACH_BACKLOG {
                c.out.drain(..c.written);
                c.written = 0;
            }
            for part in chunk.chunks(ATTACH_FRAME_MAX) {
                c.out
                    .extend_from_slice(&AttachFrame::header(tag, part.len()));
                c.out.extend_from_slice(part);
            }
            match write_out(c) {
                Flush::Broken => slow.push(c.id),
                _ if c.holds_output() => {
                    c.stalled_since.get_or_insert_with(Instant::now);
                }
                _ => {}
            }
        }
        for id in slow {
            self.end_attach(id);
        }
    }

    /// What the container wrote before it exited. Bounded: a process it
    /// left behind (in a shared PID namespace) may hold the pipe and write
    /// forever.
    fn drain_outputs(&mut self) {
        for i in 0..self.outputs.len() {
            let mut reads = 0;
            while let Some(o) = self.outputs[i].as_mut() {
                reads += 1;
                let stream = o.stream;
                match self
                    .relay
                    .read_once(&o.fd, o.stream, &mut o.carry, &mut self.log)
                {
                    ReadOutcome::Data if reads < 1024 => {
                        self.fan_out(stream);
                        continue;
                    }
                    ReadOutcome::Data | ReadOutcome::WouldBlock => {
                        Relay::flush(o.stream, &mut o.carry, &mut self.log);
                        self.outputs[i] = None;
                    }
                    ReadOutcome::Eof => self.outputs[i] = None,
                }
            }
        }
    }

    /// The start report: EOF once execve succeeded, a line if it failed.
    fn read_sync(&mut self) {
        let Some(fd) = &self.sync else { return };
        let mut chunk = [0u8; 512];
        loop {
            match nix::unistd::read(fd, &mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    if self.sync_buf.len() < 8192 {
                        self.sync_buf.extend_from_slice(&chunk[..n]);
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return,
                Err(_) => break,
            }
        }
        self.sync = None;
        // The end of the start, after Start's answer: what it touched is
        // given back with the rest (see the loop).
        self.served = true;
        let text = String::from_utf8_lossy(&self.sync_buf).into_owned();
        self.sync_buf = Vec::new();
        // Start has been answered (as runc's start returns once the init
        // has its byte): an execve that failed ends the init, whose exit
        // is the container's, and its message is in the container's log
        // (the init wrote it on its stderr, as runc's does).
        if let Some(msg) = text.lines().find_map(|l| l.strip_prefix("error ")) {
            super::diag(&self.state_dir, msg);
        }
    }

    fn reap(&mut self) {
        while let Ok(Some(_)) = self.sigfd.read_signal() {}
        loop {
            let st = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(st) => st,
            };
            let Some(pid) = st.pid() else { continue };
            let Some((code, signal)) = plan::exit_code(st) else {
                continue;
            };
            if pid == self.pid {
                self.on_init_exit(code, signal);
            } else if let Some(i) = self.execs.iter().position(|e| e.pid == pid) {
                let mut e = self.execs.swap_remove(i);
                drain_exec(&mut e);
                let resp = Response::Exec(ExecResult {
                    exit_code: code,
                    stdout: std::mem::take(&mut e.out),
                    stderr: std::mem::take(&mut e.err),
                    timed_out: e.timed_out,
                });
                self.respond(e.conn, &resp);
            }
            // Anything else is an orphan of the container, handed to us as
            // subreaper: reaped, nothing to record.
        }
    }

    fn on_init_exit(&mut self, code: i32, signal: Option<i32>) {
        // A start report still in the pipe decides the Start answer first.
        if self.sync.is_some() && self.start.is_none() {
            self.read_sync();
        }
        self.status = Status::Exited;
        let oom_killed = self
            .cgroup
            .as_ref()
            .is_some_and(|c| c.oom_kills() > self.oom_base);
        // Without a PID namespace of its own, the container's other
        // processes do not die with its init (the kernel only does that for
        // a namespace's PID 1): they are killed here, all of the cgroup, as
        // containerd's shim does for a shared or host PID namespace.
        if !self.own_pid_ns {
            self.kill_leftovers();
        }
        self.pending_exit = Some(ExitStatus {
            code,
            signal,
            started_at_ns: self.started_at_ns,
            finished_at_ns: now_ns(),
            oom_killed,
        });
    }

    fn accept(&mut self) {
        while self.conns.len() < MAX_CONNS {
            match self.listener.accept() {
                Ok((sock, _)) => {
                    if sock.set_nonblocking(true).is_err() {
                        continue;
                    }
                    self.next_conn += 1;
                    self.served = true;
                    self.conns.push(Conn {
                        id: self.next_conn,
                        sock,
                        inbuf: Vec::new(),
                        out: Vec::new(),
                        written: 0,
                        state: ConnState::Reading,
                        then: None,
                        attach: AttachSub::default(),
                        stalled_since: None,
                    });
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    fn conn_index(&self, id: u64) -> Option<usize> {
        self.conns.iter().position(|c| c.id == id)
    }

    fn drop_conn(&mut self, id: u64) {
        if let Some(i) = self.conn_index(id) {
            let c = self.conns.swap_remove(i);
            // A connection that ends may have run code since the last
            // release (an attach relays output while parked): give it back
            // once the loop is idle again.
            self.served = true;
            if c.attach.stdin && self.stdin_once {
                // The first attach with stdin ended: the container reads
                // EOF once berthd's copy is closed too.
                self.stdin = None;
            }
            // An exec whose client went away is killed (as containerd
            // does): nobody reads or writes its stdio any more.
            if c.state == ConnState::AwaitExec
                && let Some(e) = self.execs.iter().find(|e| e.conn == id)
            {
                let _ = kill(e.pid, Signal::SIGKILL);
            }
        }
    }

    fn service_conn(&mut self, id: u64, ev: PollFlags) {
        let Some(i) = self.conn_index(id) else { return };
        let c = &mut self.conns[i];
        match c.state {
            ConnState::Writing => {
                let gone = ev.intersects(PollFlags::POLLERR | PollFlags::POLLHUP)
                    && !ev.contains(PollFlags::POLLOUT);
                match if gone { Flush::Broken } else { write_out(c) } {
                    Flush::Pending => {}
                    Flush::Done if c.then.is_some() => {
                        c.state = c.then.take().unwrap_or(ConnState::Reading);
                        c.out = Vec::new();
                        c.written = 0;
                    }
                    _ => self.drop_conn(id),
                }
            }
            ConnState::Attached => {
                let before = c.written;
                if ev.contains(PollFlags::POLLOUT) && write_out(c) == Flush::Broken {
                    return self.end_attach(id);
                }
                // A stall is taking nothing: a client that takes some,
                // however slowly, starts its clock again.
                if !c.holds_output() {
                    c.stalled_since = None;
                } else if c.written != before {
                    c.stalled_since = Some(Instant::now());
                }
                if ev.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
                    return self.end_attach(id);
                }
                if ev.contains(PollFlags::POLLIN) {
                    // berthd sends nothing after the request: end of file
                    // is its shutdown of writing, the client's stdin ended.
                    let mut b = [0u8; 64];
                    match c.sock.read(&mut b) {
                        Ok(0) => {
                            c.attach.read_closed = true;
                            if c.attach.stdin && self.stdin_once {
                                c.attach.stdin = false;
                                self.stdin = None;
                            }
                        }
                        Err(e)
                            if e.kind() != ErrorKind::WouldBlock
                                && e.kind() != ErrorKind::Interrupted =>
                        {
                            self.end_attach(id)
                        }
                        _ => {}
                    }
                }
            }
            ConnState::Reading => {
                let mut chunk = [0u8; 1024];
                let eof = loop {
                    match c.sock.read(&mut chunk) {
                        Ok(0) => break true,
                        Ok(n) => {
                            c.inbuf.extend_from_slice(&chunk[..n]);
                            if c.inbuf.len() > MAX_REQUEST || c.inbuf.contains(&b'\n') {
                                break false;
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                        Err(_) => break true,
                    }
                };
                let line_end = c.inbuf.iter().position(|&b| b == b'\n');
                if c.inbuf.len() > MAX_REQUEST {
                    self.respond(
                        id,
                        &Response::Error {
                            message: "request too long".into(),
                        },
                    );
                    return;
                }
                let line = match line_end {
                    Some(n) => c.inbuf[..n].to_vec(),
                    None if eof && !c.inbuf.is_empty() => std::mem::take(&mut c.inbuf),
                    None if eof => {
                        self.drop_conn(id);
                        return;
                    }
                    None => return,
                };
                c.inbuf = Vec::new();
                match serde_json::from_slice::<Request>(&line) {
                    Ok(req) => self.handle(id, req),
                    Err(e) => self.respond(
                        id,
                        &Response::Error {
                            message: format!("bad request: {e}"),
                        },
                    ),
                }
            }
            // Waiting for an answer: the peer may only hang up.
            ConnState::AwaitExit | ConnState::AwaitExec => {
                let mut b = [0u8; 64];
                match c.sock.read(&mut b) {
                    Ok(0) => self.drop_conn(id),
                    Err(e)
                        if e.kind() != ErrorKind::WouldBlock
                            && e.kind() != ErrorKind::Interrupted =>
                    {
                        self.drop_conn(id)
                    }
                    _ => {}
                }
            }
        }
    }

    fn set_state(&mut self, id: u64, state: ConnState) {
        if let Some(i) = self.conn_index(id) {
            self.conns[i].state = state;
        }
    }

    /// Sends `resp` with `fds` as SCM_RIGHTS on its first bytes, then
    /// moves the connection to `then` once the line is written.
    fn respond_with_fds(&mut self, id: u64, resp: &Response, fds: &[OwnedFd], then: ConnState) {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        use std::os::fd::AsRawFd;
        let Some(i) = self.conn_index(id) else { return };
        let c = &mut self.conns[i];
        let mut line = serde_json::to_vec(resp).unwrap_or_default();
        line.push(b'\n');
        let raw: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
        let sent = loop {
            match sendmsg::<()>(
                c.sock.as_raw_fd(),
                &[std::io::IoSlice::new(&line)],
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Err(Errno::EINTR) => continue,
                // A fresh connection's buffer takes a line: anything else
                // means the client is gone.
                Err(_) | Ok(0) => {
                    self.drop_conn(id);
                    return;
                }
                Ok(n) => break n,
            }
        };
        c.out = line;
        c.written = sent;
        c.then = Some(then);
        c.state = ConnState::Writing;
        if c.written == c.out.len() {
            c.state = then;
            c.then = None;
            c.out = Vec::new();
            c.written = 0;
        }
    }

    /// Queues the answer and sends what the socket takes now.
    fn respond(&mut self, id: u64, resp: &Response) {
        let Some(i) = self.conn_index(id) else { return };
        let c = &mut self.conns[i];
        let mut line = serde_json::to_vec(resp).unwrap_or_else(|e| {
            format!(r#"{{"result":"error","message":"encode response: {e}"}}"#).into_bytes()
        });
        line.push(b'\n');
        c.out = line;
        c.written = 0;
        c.state = ConnState::Writing;
        c.then = None;
        if flush_conn(c) {
            self.drop_conn(id);
        }
    }

    fn handle(&mut self, id: u64, req: Request) {
        let resp = match req {
            Request::State => Response::State(State {
                status: self.status,
                pid: self.pid.as_raw(),
                started_at_ns: self.started_at_ns,
                exit: self.exit.clone(),
            }),
            Request::Start => return self.start(id),
            Request::Kill { signal, all } => self.kill(signal, all),
            Request::ReopenLog => match self.log.reopen() {
                Ok(()) => Response::Ok,
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
            },
            Request::Exec {
                args,
                env,
                cwd,
                timeout_ms,
            } => return self.exec(id, args, env, cwd, timeout_ms),
            Request::Wait => match &self.exit {
                Some(e) => Response::Exit(e.clone()),
                None => {
                    self.set_state(id, ConnState::AwaitExit);
                    return;
                }
            },
            Request::ExecStream {
                args,
                env,
                cwd,
                tty,
                stdin,
                stdout,
                stderr,
                size,
            } => {
                let stdio = spawn::ExecStdio {
                    tty,
                    stdin,
                    stdout,
                    stderr,
                    size,
                };
                return self.exec_stream(id, args, env, cwd, stdio);
            }
            Request::Attach {
                stdin,
                stdout,
                stderr,
            } => return self.attach(id, stdin, stdout, stderr),
            Request::Resize { width, height } => match &self.pty {
                Some(fd) => match spawn::set_winsize(fd, width, height) {
                    Ok(()) => Response::Ok,
                    Err(e) => Response::Error {
                        message: format!("resize: {e}"),
                    },
                },
                None => Response::Error {
                    message: "the container has no terminal".into(),
                },
            },
        };
        self.respond(id, &resp);
    }

    fn start(&mut self, id: u64) {
        let err = |m: &str| Response::Error {
            message: m.to_string(),
        };
        let resp = if self.kind == ShimKind::Pause {
            Response::Ok
        } else if let Some(e) = &self.log_error {
            err(&format!("opening the container's log: {e}"))
        } else if self.status == Status::Exited {
            err("the container process has exited")
        } else if let Some(rt) = self.oci.as_ref().filter(|_| self.status == Status::Created) {
            // The runtime's start returns once the process execs (or
            // failed to): its answer is the Start's.
            let at = now_ns();
            match rt.start() {
                Ok(()) => {
                    self.started_at_ns = at;
                    self.status = Status::Running;
                    Response::Ok
                }
                Err(e) => err(&format!("start: {e}")),
            }
        } else if let Some(fd) = self.start.take() {
            // runc's start: the init has everything of its exec ready but
            // the execve (a set-up or lookup failure failed the create), so
            // Start answers once the init is told, without waiting for the
            // execve. The answer goes first: the woken init would
            // otherwise run its execve ahead of it on this CPU.
            self.started_at_ns = now_ns();
            self.status = Status::Running;
            self.respond(id, &Response::Ok);
            if let Err(e) = nix::unistd::write(&fd, b"s") {
                // The init is gone: its exit, reaped next, is the
                // container's.
                super::diag(&self.state_dir, &format!("start: {e}"));
            }
            return;
        } else {
            err("the container was already started")
        };
        self.respond(id, &resp);
    }

    /// Open the container's log, right after the shim's `ok`.
    pub fn open_log(&mut self) {
        if let Err(e) = self.log.reopen() {
            self.log_error = Some(e.to_string());
        }
    }

    /// Every process left in the container's cgroup, SIGKILLed.
    fn kill_leftovers(&self) -> Option<String> {
        let left = self.cgroup.as_ref()?.kill_all();
        (!left.is_empty())
            .then(|| format!("processes {left:?} of the container's cgroup survived SIGKILL"))
    }

    fn kill(&mut self, signal: i32, all: bool) -> Response {
        let sig = match Signal::try_from(signal) {
            Ok(s) => s,
            Err(_) => {
                return Response::Error {
                    message: format!("invalid signal {signal}"),
                };
            }
        };
        if self.status == Status::Exited {
            // Its init is gone; what it left in its cgroup is not (a fork
            // that raced the kill on exit): Stop and Remove end it.
            if all
                && sig == Signal::SIGKILL
                && !self.own_pid_ns
                && let Some(message) = self.kill_leftovers()
            {
                return Response::Error { message };
            }
            return Response::Ok;
        }
        let mut failure = None;
        let mut targets = vec![self.pid];
        // PID 1 of its own namespace takes everything with it on SIGKILL;
        // otherwise (shared or host PID namespace, or a catchable signal)
        // every process of the cgroup is signalled.
        let whole_ns = self.own_pid_ns && sig == Signal::SIGKILL;
        if all && sig == Signal::SIGKILL && !whole_ns && self.cgroup.is_some() {
            // The whole cgroup at once (forks included), init among them.
            let _ = kill(self.pid, sig);
            return match self.kill_leftovers() {
                Some(message) => Response::Error { message },
                None => Response::Ok,
            };
        }
        if let (true, false, Some(cg)) = (all, whole_ns, &self.cgroup) {
            targets.extend(
                cg.procs()
                    .into_iter()
                    .map(Pid::from_raw)
                    .filter(|p| *p != self.pid),
            );
        }
        for pid in targets {
            match kill(pid, sig) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => failure = Some(format!("kill {pid} with {sig}: {e}")),
            }
        }
        match failure {
            Some(message) => Response::Error { message },
            None => Response::Ok,
        }
    }

    fn exec(
        &mut self,
        id: u64,
        args: Vec<String>,
        env: Option<Vec<String>>,
        cwd: Option<String>,
        timeout_ms: u64,
    ) {
        if self.status != Status::Running {
            let message = "exec needs a running container".to_string();
            return self.respond(id, &Response::Error { message });
        }
        if args.is_empty() {
            return self.respond(
                id,
                &Response::Error {
                    message: "exec needs args".into(),
                },
            );
        }
        let mut cfg = self.exec_cfg.clone();
        cfg.args = args;
        if let Some(env) = env {
            cfg.env = env;
        }
        if let Some(cwd) = cwd {
            cfg.cwd = PathBuf::from(cwd);
        }
        match self.spawn_exec(&cfg, &spawn::ExecStdio::CAPTURE) {
            Ok(s) => {
                self.execs.push(ExecRun {
                    conn: id,
                    pid: s.pid,
                    stdout: s.stdout,
                    stderr: s.stderr,
                    out: Vec::new(),
                    err: Vec::new(),
                    // A deadline past what Instant holds is no deadline
                    // (Instant + Duration would panic the shim).
                    deadline: (timeout_ms > 0)
                        .then(|| Instant::now().checked_add(Duration::from_millis(timeout_ms)))
                        .flatten(),
                    timed_out: false,
                });
                self.set_state(id, ConnState::AwaitExec);
            }
            Err(e) => self.respond(
                id,
                &Response::Error {
                    message: format!("exec: {e}"),
                },
            ),
        }
    }

    /// An exec process: the handler's runtime makes it, or the built-in
    /// executor.
    fn spawn_exec(
        &self,
        cfg: &ProcessConfig,
        stdio: &spawn::ExecStdio,
    ) -> Result<spawn::ExecSpawned, spawn::SpawnError> {
        match &self.oci {
            Some(rt) => rt.exec(cfg, stdio),
            None => spawn::spawn_exec(self.pid, self.cgroup.as_ref(), cfg, stdio),
        }
    }

    /// A streaming exec: the process's stdio goes to berthd with the
    /// answer; the connection waits for its exit.
    fn exec_stream(
        &mut self,
        id: u64,
        args: Vec<String>,
        env: Option<Vec<String>>,
        cwd: Option<String>,
        stdio: spawn::ExecStdio,
    ) {
        if self.status != Status::Running || args.is_empty() {
            let message = if args.is_empty() {
                "exec needs args"
            } else {
                "exec needs a running container"
            };
            return self.respond(
                id,
                &Response::Error {
                    message: message.into(),
                },
            );
        }
        let mut cfg = self.exec_cfg.clone();
        cfg.args = args;
        if let Some(env) = env {
            cfg.env = env;
        }
        if let Some(cwd) = cwd {
            cfg.cwd = PathBuf::from(cwd);
        }
        let s = match self.spawn_exec(&cfg, &stdio) {
            Ok(s) => s,
            Err(e) => {
                return self.respond(
                    id,
                    &Response::Error {
                        message: format!("exec: {e}"),
                    },
                );
            }
        };
        let fds: Vec<OwnedFd> = [s.pty, s.stdin, s.stdout, s.stderr]
            .into_iter()
            .flatten()
            .collect();
        self.execs.push(ExecRun {
            conn: id,
            pid: s.pid,
            stdout: None,
            stderr: None,
            out: Vec::new(),
            err: Vec::new(),
            deadline: None,
            timed_out: false,
        });
        self.respond_with_fds(
            id,
            &Response::Streaming {
                pid: s.pid.as_raw(),
            },
            &fds,
            ConnState::AwaitExec,
        );
    }

    /// An attach: a dup of stdin (pipe or pty) if asked for and there is
    /// one, then the container's output as frames.
    fn attach(&mut self, id: u64, stdin: bool, stdout: bool, stderr: bool) {
        if self.kind == ShimKind::Pause || self.status == Status::Exited {
            let message = if self.kind == ShimKind::Pause {
                "a pause process has nothing to attach to"
            } else {
                "the container has exited"
            };
            return self.respond(
                id,
                &Response::Error {
                    message: message.into(),
                },
            );
        }
        let tty = self.pty.is_some();
        let source = if tty { &self.pty } else { &self.stdin };
        let fd = match source.as_ref().filter(|_| stdin).map(OwnedFd::try_clone) {
            Some(Ok(fd)) => Some(fd),
            Some(Err(e)) => {
                return self.respond(
                    id,
                    &Response::Error {
                        message: format!("attach: dup of stdin: {e}"),
                    },
                );
            }
            None => None,
        };
        if let Some(i) = self.conn_index(id) {
            self.conns[i].attach = AttachSub {
                // A pty's output is one stream, logged as stdout.
                stdout: stdout || (tty && stderr),
                stderr: stderr && !tty,
                stdin: fd.is_some() && !tty,
                read_closed: false,
            };
        }
        let fds: Vec<OwnedFd> = fd.into_iter().collect();
        let stdin = !fds.is_empty();
        self.respond_with_fds(
            id,
            &Response::Attached { tty, stdin },
            &fds,
            ConnState::Attached,
        );
    }

    /// An attach client is done (it hung up, fell behind, or the
    /// container exited).
    fn end_attach(&mut self, id: u64) {
        self.drop_conn(id);
    }

    fn read_exec(&mut self, pid: Pid, is_err: bool) {
        if let Some(e) = self.execs.iter_mut().find(|e| e.pid == pid) {
            let (fd, buf) = if is_err {
                (&mut e.stderr, &mut e.err)
            } else {
                (&mut e.stdout, &mut e.out)
            };
            if read_capped(fd, buf) {
                *fd = None;
            }
        }
    }

    fn check_deadlines(&mut self) {
        let now = Instant::now();
        let stuck: Vec<u64> = self
            .conns
            .iter()
            .filter(|c| {
                c.stalled_since
                    .is_some_and(|t| now.duration_since(t) >= ATTACH_STALL)
            })
            .map(|c| c.id)
            .collect();
        for id in stuck {
            super::diag(
                &self.state_dir,
                "an attach client took nothing for 10 s while holding the container's output: dropped",
            );
            self.end_attach(id);
        }
        for e in &mut self.execs {
            if e.deadline.is_some_and(|d| d <= now) {
                e.deadline = None;
                e.timed_out = true;
                let _ = kill(e.pid, Signal::SIGKILL);
            }
        }
    }

    /// The container process is gone: its last output to the log, the exit
    /// recorded, everyone who asked answered.
    fn finish(&mut self, exit: ExitStatus) {
        self.drain_outputs();
        // The runtime's record of the container (and the cgroup it made
        // its own) go before the exit is told: what berthd then sees is
        // all there is.
        if let Some(rt) = &self.oci
            && let Err(e) = rt.delete()
        {
            super::diag(&self.state_dir, &format!("runtime delete: {e}"));
        }
        if self.log.dropped > 0 {
            super::diag(
                &self.state_dir,
                &format!("{} log records dropped (write errors)", self.log.dropped),
            );
        }
        if let Err(e) = super::write_exit(&self.state_dir, &exit) {
            super::diag(&self.state_dir, &format!("write exit status: {e}"));
        }
        self.exit = Some(exit.clone());
        let waiting: Vec<u64> = self
            .conns
            .iter()
            .filter(|c| c.state == ConnState::AwaitExit)
            .map(|c| c.id)
            .collect();
        for id in waiting {
            self.respond(id, &Response::Exit(exit.clone()));
        }
        // Attach clients get what is queued, then the end of the stream.
        for c in &mut self.conns {
            if c.state == ConnState::Attached {
                c.state = ConnState::Writing;
                c.then = None;
            }
        }
        // Exec processes die with the container's namespace, or now.
        for mut e in std::mem::take(&mut self.execs) {
            let _ = kill(e.pid, Signal::SIGKILL);
            let code = waitpid(e.pid, None)
                .ok()
                .and_then(plan::exit_code)
                .map(|(c, _)| c)
                .unwrap_or(137);
            drain_exec(&mut e);
            let resp = Response::Exec(ExecResult {
                exit_code: code,
                stdout: e.out,
                stderr: e.err,
                timed_out: e.timed_out,
            });
            self.respond(e.conn, &resp);
        }
        // Send what is queued, bounded: nobody may hold the shim up.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.conns.is_empty() && Instant::now() < deadline {
            self.conns
                .retain_mut(|c| c.state == ConnState::Writing && !flush_conn(c));
            if !self.conns.is_empty() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Writes what the socket takes; true when the answer is all out (or the
/// peer is gone).
/// Writes what the socket takes of `c.out` now.
fn write_out(c: &mut Conn) -> Flush {
    while c.written < c.out.len() {
        match c.sock.write(&c.out[c.written..]) {
            Ok(0) => return Flush::Broken,
            Ok(n) => c.written += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Flush::Pending,
            Err(_) => return Flush::Broken,
        }
    }
    Flush::Done
}

fn flush_conn(c: &mut Conn) -> bool {
    while c.written < c.out.len() {
        match c.sock.write(&c.out[c.written..]) {
            Ok(0) => return true,
            Ok(n) => c.written += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
    true
}

/// Reads what is there into `buf`, keeping at most EXEC_OUTPUT_LIMIT bytes;
/// true at EOF.
fn read_capped(fd: &Option<OwnedFd>, buf: &mut Vec<u8>) -> bool {
    let Some(fd) = fd else { return true };
    let mut chunk = [0u8; 4096];
    loop {
        match nix::unistd::read(fd, &mut chunk) {
            Ok(0) => return true,
            Ok(n) => {
                let room = EXEC_OUTPUT_LIMIT.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..n.min(room)]);
            }
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return false,
            Err(_) => return true,
        }
    }
}

/// What an exec process wrote before it was reaped.
fn drain_exec(e: &mut ExecRun) {
    read_capped(&e.stdout, &mut e.out);
    read_capped(&e.stderr, &mut e.err);
    e.stdout = None;
    e.stderr = None;
}
