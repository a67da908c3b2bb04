//! Creating the container process (and exec processes): the fork/exec
//! split that runc calls create and start.
//!
//! Where the init's PID namespace is new (the default) or the node's,
//! one clone3 makes it in its new namespaces (v2: and in its cgroup), and
//! it enters its cgroup (v1), joins the pod's namespaces and unshares its
//! cgroup namespace itself; the shim is its parent. Joining a PID
//! namespace (a pod's shared one, a target's) takes two forks:
//!
//! ```text
//! shim ──fork──▶ intermediate: enter cgroup (v2: born there, clone3),
//!                setns (joined namespaces),
//!                unshare (new ones, PID included), setns(pid) if joining
//!                  └──fork──▶ init: PID 1 of a new PID namespace (or a
//!                             member of the joined one); mounts,
//!                             pivot_root, sysctls; "ready"; waits for Start;
//!                             user, capabilities, execve
//!                intermediate reports init's pid and exits; the shim, a
//!                child subreaper, becomes init's parent.
//! ```
//!
//! Two forks there because a process never changes its own PID namespace:
//! setns(CLONE_NEWPID) only decides where the *next* child goes (see
//! youki's process/fork.rs); clone3 with CLONE_NEWPID puts the child it
//! makes in a new one, which is what the one-fork path uses (as crun
//! does).
//!
//! The intermediate and init report over one CLOEXEC pipe, a line each:
//! `pid <n>` (the intermediate's; with one fork the shim has it from the
//! clone), then `ready` or `error <message>`; after Start, either EOF
//! (execve succeeded and closed the pipe) or `error exec failed: …`.
//!
//! The shim is single-threaded, so the children may allocate and use
//! ordinary code between fork and exec.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use caps::{CapSet, CapsHashSet};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl, open};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::stat::{Mode, umask};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Gid, Pid, Uid, fork, pipe2, setsid};
use oci_spec::runtime::{PosixRlimitType, Spec};

use super::cgroup::{Cgroup, CgroupError};
use super::plan::{
    self, DeviceNode, MountStep, NamespacePlan, NsKind, PidNs, PlanError, lookup_path,
};
use super::rootfs::{self, RootfsError, RootfsSetup};
use super::seccomp;
use crate::seccomp::Program;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error("{op} {what}: {source}")]
    Sys {
        op: &'static str,
        what: String,
        source: Errno,
    },
    #[error("{0}")]
    Child(String),
    #[error("the spec's process has no args")]
    NoArgs,
}

fn sys(op: &'static str, what: impl std::fmt::Display) -> impl FnOnce(Errno) -> SpawnError {
    let what = what.to_string();
    move |source| SpawnError::Sys { op, what, source }
}

type Result<T> = std::result::Result<T, SpawnError>;

/// Capability sets for a process, already in the `caps` crate's terms.
#[derive(Clone, Debug, Default)]
pub struct CapSets {
    pub bounding: CapsHashSet,
    pub effective: CapsHashSet,
    pub inheritable: CapsHashSet,
    pub permitted: CapsHashSet,
    pub ambient: CapsHashSet,
}

/// How a process in the container runs: kept by the shim after the spec
/// is gone, for exec.
#[derive(Clone, Debug, Default)]
pub struct ProcessConfig {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
    /// None: leave capabilities as they are (the spec had none).
    pub caps: Option<CapSets>,
    pub no_new_privs: bool,
    pub rlimits: Vec<(Resource, u64, u64)>,
    pub oom_score_adj: Option<i32>,
    pub restrict_oom_score_adj: bool,
    /// The compiled seccomp filter to load before exec
    /// ([`SECCOMP_FILE`](super::protocol::SECCOMP_FILE) in the state dir,
    /// when shim.json says so); a file that is missing then is an error.
    pub seccomp: Option<PathBuf>,
    /// The pod's user namespace (its pin), which execs join last: the
    /// spec's, never whatever the container's processes moved into.
    pub userns: Option<PathBuf>,
}

fn to_caps(set: &Option<oci_spec::runtime::Capabilities>) -> CapsHashSet {
    set.iter()
        .flatten()
        .filter_map(|c| format!("CAP_{c}").parse::<caps::Capability>().ok())
        .collect()
}

fn rlimit_resource(t: PosixRlimitType) -> Option<Resource> {
    use PosixRlimitType::*;
    Some(match t {
        RlimitCpu => Resource::RLIMIT_CPU,
        RlimitFsize => Resource::RLIMIT_FSIZE,
        RlimitData => Resource::RLIMIT_DATA,
        RlimitStack => Resource::RLIMIT_STACK,
        RlimitCore => Resource::RLIMIT_CORE,
        RlimitRss => Resource::RLIMIT_RSS,
        RlimitNproc => Resource::RLIMIT_NPROC,
        RlimitNofile => Resource::RLIMIT_NOFILE,
        RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        RlimitAs => Resource::RLIMIT_AS,
        RlimitLocks => Resource::RLIMIT_LOCKS,
        RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        RlimitNice => Resource::RLIMIT_NICE,
        RlimitRtprio => Resource::RLIMIT_RTPRIO,
        RlimitRttime => Resource::RLIMIT_RTTIME,
    })
}

impl ProcessConfig {
    pub fn from_spec(spec: &Spec, restrict_oom_score_adj: bool) -> Self {
        let Some(p) = spec.process() else {
            return ProcessConfig::default();
        };
        let user = p.user();
        ProcessConfig {
            args: p.args().clone().unwrap_or_default(),
            env: p.env().clone().unwrap_or_default(),
            cwd: p.cwd().clone(),
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
            umask: user.umask(),
            caps: p.capabilities().as_ref().map(|c| CapSets {
                bounding: to_caps(c.bounding()),
                effective: to_caps(c.effective()),
                inheritable: to_caps(c.inheritable()),
                permitted: to_caps(c.permitted()),
                ambient: to_caps(c.ambient()),
            }),
            no_new_privs: p.no_new_privileges().unwrap_or(false),
            rlimits: p
                .rlimits()
                .iter()
                .flatten()
                .filter_map(|r| Some((rlimit_resource(r.typ())?, r.soft(), r.hard())))
                .collect(),
            oom_score_adj: p.oom_score_adj(),
            restrict_oom_score_adj,
            seccomp: None,
            userns: spec
                .linux()
                .as_ref()
                .and_then(|l| l.namespaces().as_ref())
                .into_iter()
                .flatten()
                .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::User)
                .and_then(|n| n.path().clone()),
        }
    }
}

/// What the container process is made from; lives only while creating it.
pub struct ContainerPlan {
    pub pause: bool,
    pub ns: NamespacePlan,
    pub rootfs: PathBuf,
    pub root_readonly: bool,
    pub propagation: nix::mount::MsFlags,
    pub mounts: Vec<MountStep>,
    pub devices: Vec<DeviceNode>,
    pub masked: Vec<String>,
    pub readonly: Vec<String>,
    pub hostname: Option<String>,
    pub sysctls: Vec<(PathBuf, String)>,
    pub cgroup: Option<Cgroup>,
    pub process: ProcessConfig,
    /// The filter of `process.seccomp`, read by the shim.
    pub seccomp: Option<Program>,
    pub tty: bool,
    pub stdin: bool,
}

impl ContainerPlan {
    pub fn from_spec(
        spec: &Spec,
        pause: bool,
        tty: bool,
        stdin: bool,
        restrict_oom: bool,
    ) -> Result<Self> {
        let ns = NamespacePlan::from_spec(spec)?;
        plan::check_idmaps(spec, &ns)?;
        let joins_userns = ns.user.is_some();
        let linux = spec.linux().as_ref();
        let cgroup = match linux.and_then(|l| l.cgroups_path().as_ref()) {
            Some(p) if !p.as_os_str().is_empty() => Some(Cgroup::resolve(p)?),
            _ => None,
        };
        let mut sysctls = Vec::new();
        for (k, v) in linux
            .and_then(|l| l.sysctl().as_ref())
            .into_iter()
            .flatten()
        {
            sysctls.push((plan::sysctl_path(k)?, v.clone()));
        }
        // Same order every time: a HashMap has none.
        sysctls.sort();
        let process = ProcessConfig::from_spec(spec, restrict_oom);
        if !pause && process.args.is_empty() {
            return Err(SpawnError::NoArgs);
        }
        let rootfs = match spec.root() {
            Some(r) => r.path().clone(),
            None if pause => PathBuf::new(),
            None => return Err(PlanError::Missing("root").into()),
        };
        Ok(ContainerPlan {
            pause,
            ns,
            rootfs,
            root_readonly: spec
                .root()
                .as_ref()
                .and_then(|r| r.readonly())
                .unwrap_or(false),
            propagation: plan::rootfs_propagation(spec),
            mounts: plan::mount_plan(spec.mounts().as_deref().unwrap_or(&[]))?,
            devices: {
                // A user namespace's devices belong to its ids as the
                // node sees them.
                let (u, g) = (
                    linux.and_then(|l| l.uid_mappings().as_deref()),
                    linux.and_then(|l| l.gid_mappings().as_deref()),
                );
                let mut d = plan::device_plan(spec);
                if joins_userns {
                    for n in &mut d {
                        n.uid = plan::host_id(u, n.uid);
                        n.gid = plan::host_id(g, n.gid);
                    }
                }
                d
            },
            masked: linux
                .and_then(|l| l.masked_paths().clone())
                .unwrap_or_default(),
            readonly: linux
                .and_then(|l| l.readonly_paths().clone())
                .unwrap_or_default(),
            hostname: spec.hostname().clone().filter(|h| !h.is_empty()),
            sysctls,
            cgroup,
            process,
            seccomp: None,
            tty: tty && !pause,
            stdin: stdin && !pause,
        })
    }
}

/// The shim's ends of a created container.
pub struct Created {
    pub pid: Pid,
    /// Writing a byte lets the process exec.
    pub start: Option<OwnedFd>,
    /// EOF after Start: execve succeeded; a line: it failed. None: Start
    /// is another runtime's call ([`super::oci`]), answered by its exit.
    pub sync: Option<OwnedFd>,
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    pub pty: Option<OwnedFd>,
    /// The init's own step timings (`name=micros ...`) from its "ready"
    /// line, for berthd's per-step breakdown; empty if it sent none.
    pub steps: String,
}

impl Created {
    /// Nothing yet: the pid and the descriptors are filled in as made.
    pub fn empty() -> Self {
        Created {
            pid: Pid::from_raw(0),
            start: None,
            sync: None,
            stdin: None,
            stdout: None,
            stderr: None,
            pty: None,
            steps: String::new(),
        }
    }
}

/// The child's ends of its stdio.
#[derive(Default)]
struct ChildIo {
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    pty_slave: Option<OwnedFd>,
}

pub(super) fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd)> {
    pipe2(OFlag::O_CLOEXEC).map_err(sys("create", "pipe"))
}

pub(super) fn set_nonblocking(fd: &OwnedFd) -> Result<()> {
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(sys("fcntl", "F_GETFL"))?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(sys("fcntl", "F_SETFL"))?;
    Ok(())
}

pub(super) fn set_cloexec(fd: &OwnedFd) -> Result<()> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(sys("fcntl", "F_SETFD"))?;
    Ok(())
}

/// A pipe whose read end the shim keeps, non-blocking.
pub(super) fn output_pipe() -> Result<(OwnedFd, OwnedFd)> {
    let (r, w) = cloexec_pipe()?;
    set_nonblocking(&r)?;
    Ok((r, w))
}

/// Writes one report line (bounded so it stays one atomic pipe write).
fn report(fd: BorrowedFd<'_>, line: &str) {
    let mut msg: Vec<u8> = line.bytes().filter(|&b| b != b'\n').take(4000).collect();
    msg.push(b'\n');
    let _ = nix::unistd::write(fd, &msg);
}

/// Reads report lines until `want` returns Some or the pipe closes.
fn read_report<T>(
    fd: &OwnedFd,
    buf: &mut Vec<u8>,
    mut want: impl FnMut(&str) -> Option<Result<T>>,
) -> Result<T> {
    let mut chunk = [0u8; 512];
    loop {
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line[..i]).into_owned();
            if let Some(msg) = line.strip_prefix("error ") {
                return Err(SpawnError::Child(msg.to_string()));
            }
            if let Some(r) = want(&line) {
                return r;
            }
        }
        match nix::unistd::read(fd, &mut chunk) {
            Ok(0) => {
                return Err(SpawnError::Child(
                    "the container process exited during set-up".into(),
                ));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(sys("read", "set-up report")(e)),
        }
    }
}

fn parse_pid(line: &str) -> Option<Result<Pid>> {
    let n = line.strip_prefix("pid ")?;
    Some(
        n.parse::<i32>()
            .map(Pid::from_raw)
            .map_err(|_| SpawnError::Child(format!("bad report: {line}"))),
    )
}

/// Creates the container process, stopped before exec (a pause process
/// runs at once).
impl Created {
    /// The parent's side once the init said ready: its pid, its steps, the
    /// sync pipe (EOF at its exec) and, but for the pause, Start's pipe.
    fn started(
        mut self,
        plan: &ContainerPlan,
        pid: Pid,
        steps: String,
        sync_r: OwnedFd,
        start_w: OwnedFd,
    ) -> Self {
        self.pid = pid;
        self.steps = steps;
        self.sync = Some(sync_r);
        if !plan.pause {
            self.start = Some(start_w);
        }
        self
    }
}

pub fn create(plan: &ContainerPlan) -> Result<Created> {
    let (sync_r, sync_w) = cloexec_pipe()?;
    let (start_r, start_w) = cloexec_pipe()?;
    let mut parent = Created::empty();
    let mut child = ChildIo::default();
    if plan.tty {
        let pty = nix::pty::openpty(None, None).map_err(sys("open", "pty"))?;
        set_cloexec(&pty.master)?;
        set_cloexec(&pty.slave)?;
        set_nonblocking(&pty.master)?;
        parent.pty = Some(pty.master);
        child.pty_slave = Some(pty.slave);
    } else if !plan.pause {
        let (r, w) = output_pipe()?;
        parent.stdout = Some(r);
        child.stdout = Some(w);
        let (r, w) = output_pipe()?;
        parent.stderr = Some(r);
        child.stderr = Some(w);
    }
    if plan.stdin && !plan.tty {
        let (r, w) = cloexec_pipe()?;
        parent.stdin = Some(w);
        child.stdin = Some(r);
    }
    // One fork where the init's PID namespace is new or the shim's: a
    // clone3 makes it in its new namespaces (and on v2 in its cgroup) at
    // once. Joining a PID namespace takes the intermediate below (setns of
    // one applies to the children only), as does a kernel without clone3.
    if !matches!(plan.ns.pid, PidNs::Join(_))
        && let Some((r, placed)) = clone_init(plan)
    {
        return match r {
            ForkResult::Child => {
                drop(parent);
                drop(start_w);
                drop(sync_r);
                exit_now(direct_init(plan, placed, &sync_w, start_r, child))
            }
            ForkResult::Parent { child: pid } => {
                drop(child);
                drop(start_r);
                drop(sync_w);
                let (pid, steps) = await_ready(&sync_r, Some(pid), None)?;
                Ok(parent.started(plan, pid, steps, sync_r, start_w))
            }
        };
    }
    match fork_into(plan.cgroup.as_ref(), "intermediate process")? {
        (ForkResult::Child, placed) => {
            drop(parent);
            drop(start_w);
            let code = match intermediate(plan, placed, &sync_w, start_r, child) {
                Ok(()) => 0,
                Err(e) => {
                    report(sync_w.as_fd(), &format!("error {e}"));
                    1
                }
            };
            exit_now(code)
        }
        (ForkResult::Parent { child: mid }, _) => {
            drop(child);
            drop(start_r);
            drop(sync_w);
            let (pid, steps) = await_ready(&sync_r, None, Some(mid))?;
            Ok(parent.started(plan, pid, steps, sync_r, start_w))
        }
    }
}

/// The init's reports on `sync_r` until it is ready: its pid (`known`, or
/// the intermediate `mid`'s "pid" line, which may come before or after
/// init's "ready") and its step timings. `mid` is reaped (it exits right
/// after its report); on an error a known init is killed and reaped.
fn await_ready(sync_r: &OwnedFd, known: Option<Pid>, mid: Option<Pid>) -> Result<(Pid, String)> {
    let mut buf = Vec::new();
    let mut pid = known;
    let mut ready = false;
    let mut steps = String::new();
    let r = read_report(sync_r, &mut buf, |line| {
        match parse_pid(line) {
            Some(Ok(p)) if mid.is_some() => pid = Some(p),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Some(Err(e)),
            None => {
                if line == "ready" {
                    ready = true;
                } else if let Some(rest) = line.strip_prefix("ready ") {
                    ready = true;
                    steps = rest.to_string();
                }
            }
        }
        (pid.is_some() && ready).then_some(Ok(()))
    });
    if let Some(mid) = mid {
        let _ = waitpid(mid, None);
    }
    if let Err(e) = r {
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
        return Err(e);
    }
    let Some(pid) = pid else {
        return Err(SpawnError::Child("no pid reported".into()));
    };
    Ok((pid, steps))
}

/// The container's init made by one clone3: in the namespaces the plan
/// creates (a new PID namespace included, where it asks for one; the
/// cgroup namespace comes later, from inside the cgroup) and, on v2, in
/// its cgroup (CLONE_INTO_CGROUP, see [`fork_into_cgroup`]). None where
/// the kernel refuses that clone3 (before 5.3, a seccomp filter, a
/// cgroup it will not place the process in): the caller takes the two
/// forks. Whether the child is in the cgroup already comes with it. glibc
/// only, as [`fork_into_cgroup`].
fn clone_init(plan: &ContainerPlan) -> Option<(ForkResult, bool)> {
    if !cfg!(target_env = "gnu") {
        return None;
    }
    let mut flags = (plan.ns.create & !CloneFlags::CLONE_NEWCGROUP).bits() as u64;
    if plan.ns.pid == PidNs::New {
        flags |= CloneFlags::CLONE_NEWPID.bits() as u64;
    }
    let cgroup_fd = v2_cgroup_fd(plan.cgroup.as_ref());
    let mut args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Some(fd) = &cgroup_fd {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd.as_raw_fd() as u64;
    }
    // `create` holds only namespace flags: no CLONE_VM, CLONE_THREAD,
    // CLONE_SIGHAND or CLONE_FILES (see raw_clone3).
    let r = raw_clone3(&mut args)?;
    if let ForkResult::Child = r {
        // As fork_into: non-dumpable until its execve.
        let _ = nix::sys::prctl::set_dumpable(false);
    }
    Some((r, cgroup_fd.is_some()))
}

/// The container's v2 cgroup directory, opened for CLONE_INTO_CGROUP
/// (glibc only: see [`fork_into_cgroup`]); None on v1 or if it cannot be
/// opened (the child then enters it itself, which reports the error).
fn v2_cgroup_fd(cgroup: Option<&Cgroup>) -> Option<OwnedFd> {
    let dir = cgroup
        .filter(|c| c.v2 && cfg!(target_env = "gnu"))
        .and_then(|c| c.dirs.first())?;
    open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

/// clone3 with `args`, which must not share memory, files or signal
/// handlers (no CLONE_VM, CLONE_THREAD, CLONE_SIGHAND, CLONE_FILES):
/// None where the kernel refuses it.
fn raw_clone3(args: &mut CloneArgs) -> Option<ForkResult> {
    // SAFETY: clone3 without CLONE_VM is fork with more arguments: the
    // child gets a copy of this single-threaded process and returns here
    // with 0. glibc's fork handlers do not run: the shim registers none
    // and holds no lock in another thread. glibc (>= 2.25) caches no pid;
    // the thread's cached tid stays the shim's, which the child's calls do
    // not use (raise and abort ask the kernel; fork() gives a grandchild
    // its own). The child must not call pthread functions on itself that
    // act on that tid.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match r {
        0 => Some(ForkResult::Child),
        pid if pid > 0 => Some(ForkResult::Parent {
            child: Pid::from_raw(pid as i32),
        }),
        _ => None,
    }
}

/// The init made by [`clone_init`]: into its cgroup (v1), the joined
/// namespaces and a new cgroup namespace (rooted there), then as
/// [`init`]. Returns only with an exit code.
fn direct_init(
    plan: &ContainerPlan,
    in_cgroup: bool,
    sync_w: &OwnedFd,
    start_r: OwnedFd,
    io: ChildIo,
) -> i32 {
    let entered = enter_joined(plan, in_cgroup).and_then(|userns| {
        if plan.ns.new_cgroup() {
            unshare(CloneFlags::CLONE_NEWCGROUP).map_err(sys("unshare", "CLONE_NEWCGROUP"))?;
        }
        Ok(userns)
    });
    let userns = match entered {
        Ok(u) => u,
        Err(e) => {
            report(sync_w.as_fd(), &format!("error {e}"));
            return 1;
        }
    };
    init(
        plan,
        sync_w,
        start_r,
        io,
        userns.as_ref().map(|f| f.as_fd()),
    )
}

/// Into the cgroup first (a new cgroup namespace is rooted where the
/// process is when it is made), then the joined namespaces; the pod's user
/// namespace only opened, for init to join last. Returns that fd.
fn enter_joined(plan: &ContainerPlan, in_cgroup: bool) -> Result<Option<OwnedFd>> {
    if let Some(cg) = plan.cgroup.as_ref().filter(|_| !in_cgroup) {
        cg.enter_self()?;
    }
    let mut joins = Vec::with_capacity(plan.ns.join.len());
    for (kind, path) in &plan.ns.join {
        joins.push((*kind, open_ns(path)?, path));
    }
    // Joined by init last, just before its exec.
    let userns = plan.ns.user.as_deref().map(open_ns).transpose()?;
    for (kind, fd, path) in &joins {
        setns(fd, kind.clone_flag()).map_err(sys("join namespace", path.display()))?;
    }
    Ok(userns)
}

/// `clone3` arguments (linux/sched.h, CLONE_ARGS_SIZE_VER2): the libc
/// crate has no `clone_args` for x86_64 glibc.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

// CLONE_ARGS_SIZE_VER2: the kernel reads exactly this much.
const _: () = assert!(std::mem::size_of::<CloneArgs>() == 88);

/// fork(); on cgroup v2 a clone3 with CLONE_INTO_CGROUP instead, so that
/// the child is born in the container's cgroup. Moving a process later (a
/// cgroup.procs write) takes the kernel's cgroup threadgroup rwsem for
/// writing, which waits for an RCU grace period (15 ms on this VM's
/// kernel); being forked into the cgroup takes it only for reading
/// (0.2 ms). v1 has no such clone; there the child moves itself through
/// `tasks` (see [`Cgroup::enter_self`]). Where clone3 fails for any reason
/// (a kernel before 5.7, a seccomp filter that refuses it, a cgroup the
/// kernel will not place a process in) the child is forked and moves
/// itself, and that write reports any real error. glibc only: musl's
/// raise() signals the cached tid, which a raw clone3 leaves stale.
///
/// Returns the fork result and whether the child is in `cgroup` already.
/// The shim is single-threaded, so the child inherits no lock held by
/// another thread; it runs ordinary code and ends in _exit.
///
/// The child is made non-dumpable at once (runc's defence against
/// CVE-2019-5736): until its execve it runs the shim's code inside the
/// container's namespaces, and a process of the container must not reach
/// the shim binary or its memory through /proc/PID/exe, mem or fd. The
/// kernel resets the flag at execve.
fn fork_into(cgroup: Option<&Cgroup>, what: &str) -> Result<(ForkResult, bool)> {
    let (r, placed) = fork_into_cgroup(cgroup, what)?;
    if let ForkResult::Child = r {
        // A plain prctl; it cannot fail with a valid argument.
        let _ = nix::sys::prctl::set_dumpable(false);
    }
    Ok((r, placed))
}

fn fork_into_cgroup(cgroup: Option<&Cgroup>, what: &str) -> Result<(ForkResult, bool)> {
    if let Some(fd) = v2_cgroup_fd(cgroup) {
        let mut args = CloneArgs {
            flags: CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: fd.as_raw_fd() as u64,
            ..Default::default()
        };
        if let Some(r) = raw_clone3(&mut args) {
            return Ok((r, true));
        }
    }
    // SAFETY: single-threaded (see raw_clone3), the child ends in _exit.
    let r = unsafe { fork() }.map_err(sys("fork", what))?;
    Ok((r, false))
}

/// Leaves the process without running Rust's exit path (atexit handlers
/// and buffers belong to the shim).
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit only ends the process.
    unsafe { libc::_exit(code) }
}

fn open_ns(path: &Path) -> Result<OwnedFd> {
    open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(sys("open namespace", path.display()))
}

fn intermediate(
    plan: &ContainerPlan,
    in_cgroup: bool,
    sync_w: &OwnedFd,
    start_r: OwnedFd,
    io: ChildIo,
) -> Result<()> {
    // Opened while the node's paths are in view (before any unshare).
    let pid_ns = match &plan.ns.pid {
        PidNs::Join(p) => Some(open_ns(p)?),
        _ => None,
    };
    let userns = enter_joined(plan, in_cgroup)?;
    let mut create = plan.ns.create;
    if plan.ns.pid == PidNs::New {
        create |= CloneFlags::CLONE_NEWPID;
    }
    unshare(create).map_err(sys("unshare", format!("{create:?}")))?;
    if let Some(fd) = pid_ns {
        setns(&fd, CloneFlags::CLONE_NEWPID).map_err(sys("join namespace", "pid"))?;
    }
    // SAFETY: single-threaded (see create).
    match unsafe { fork() }.map_err(sys("fork", "container process"))? {
        ForkResult::Child => {
            let code = init(
                plan,
                sync_w,
                start_r,
                io,
                userns.as_ref().map(|f| f.as_fd()),
            );
            exit_now(code)
        }
        ForkResult::Parent { child } => {
            report(sync_w.as_fd(), &format!("pid {child}"));
            Ok(())
        }
    }
}

/// The container process: set up, report ready, wait for Start, exec.
/// Returns only with an exit code.
fn init(
    plan: &ContainerPlan,
    sync_w: &OwnedFd,
    start_r: OwnedFd,
    io: ChildIo,
    userns: Option<BorrowedFd<'_>>,
) -> i32 {
    let steps = match setup_init(plan, &io, userns) {
        Ok(s) => s,
        Err(e) => {
            report(sync_w.as_fd(), &format!("error {e}"));
            return 1;
        }
    };
    drop(io);
    if plan.pause {
        // Never execs: what exec would drop (every capability of the
        // shim's, as its spec says), and the filter, go now.
        if let Err(e) = apply_rlimits(&plan.process).and_then(|()| drop_privileges(&plan.process)) {
            report(sync_w.as_fd(), &format!("error {e}"));
            return 1;
        }
        if let Some(f) = &plan.seccomp
            && let Err(e) = nix::sys::prctl::set_no_new_privs().and_then(|()| seccomp::load(f))
        {
            report(
                sync_w.as_fd(),
                &format!("error loading the seccomp filter: {}", e.desc()),
            );
            return 1;
        }
        report(sync_w.as_fd(), "ready");
        drop(start_r);
        close_inherited();
        super::pause::run();
    }
    let t = std::time::Instant::now();
    let prepared = match prepare_exec(&plan.process, plan.seccomp.as_ref(), userns) {
        Ok(p) => p,
        // What runc's create refuses (its set-up and LookPath before the
        // exec fifo): the shim's start fails with it, and StartContainer
        // returns it, as containerd's does.
        // Not on stderr: the log's pipe is not read until the shim's
        // loop runs, and a long message would block this write for ever.
        Err((code, msg)) => {
            report(
                sync_w.as_fd(),
                &format!("error exec failed: {}", bounded(&msg)),
            );
            return code;
        }
    };
    let prep = t.elapsed().as_micros();
    report(
        sync_w.as_fd(),
        &format!("ready {steps} init.exec_prepare={prep}"),
    );
    let mut b = [0u8; 1];
    loop {
        match nix::unistd::read(&start_r, &mut b) {
            Ok(1) => break,
            Err(Errno::EINTR) => continue,
            // The shim is gone: never start.
            _ => return 1,
        }
    }
    drop(start_r);
    exec_prepared(Ok(prepared), plan.seccomp.as_ref(), Some(sync_w.as_fd()))
}

fn dup_onto(fd: BorrowedFd<'_>, target: i32) -> Result<()> {
    // SAFETY: dup2 onto 0, 1 or 2; those descriptors are this process's
    // stdio, which nothing else in it owns.
    let r = unsafe { libc::dup2(fd.as_raw_fd(), target) };
    Errno::result(r).map(drop).map_err(sys("dup2", target))
}

fn dev_null() -> Result<OwnedFd> {
    open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(sys("open", "/dev/null"))
}

fn setup_stdio(io: &ChildIo) -> Result<()> {
    if let Some(slave) = &io.pty_slave {
        // SAFETY: TIOCSCTTY takes an int argument; the fd is a pty slave
        // and this process has just become a session leader.
        let r = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) };
        Errno::result(r).map_err(sys("ioctl TIOCSCTTY", "pty"))?;
        for t in 0..3 {
            dup_onto(slave.as_fd(), t)?;
        }
        return Ok(());
    }
    let null = dev_null()?;
    dup_onto(
        io.stdin.as_ref().map(|f| f.as_fd()).unwrap_or(null.as_fd()),
        0,
    )?;
    dup_onto(
        io.stdout
            .as_ref()
            .map(|f| f.as_fd())
            .unwrap_or(null.as_fd()),
        1,
    )?;
    dup_onto(
        io.stderr
            .as_ref()
            .map(|f| f.as_fd())
            .unwrap_or(null.as_fd()),
        2,
    )?;
    Ok(())
}

/// The init's setup; its steps' timings as `name=micros ...` (empty for
/// the pause).
fn setup_init(
    plan: &ContainerPlan,
    io: &ChildIo,
    userns: Option<BorrowedFd<'_>>,
) -> Result<String> {
    setsid().map_err(sys("setsid", "container process"))?;
    umask(Mode::empty());
    setup_stdio(io)?;
    // Sysctls and oom_score_adj through the host's /proc, which still
    // shows this process and its (new or joined) namespaces.
    for (path, value) in &plan.sysctls {
        std::fs::write(path, value.as_bytes())
            .map_err(|e| sys("write sysctl", path.display())(io_errno(&e)))?;
    }
    if let Some(adj) = plan.process.oom_score_adj {
        set_oom_score_adj(adj, plan.process.restrict_oom_score_adj);
    }
    if plan.pause {
        return pause_root().map(|()| String::new());
    }
    if let (Some(h), true) = (&plan.hostname, plan.ns.new_uts()) {
        nix::unistd::sethostname(h).map_err(sys("sethostname", h))?;
    }
    let setup = RootfsSetup {
        rootfs: &plan.rootfs,
        propagation: plan.propagation,
        mounts: &plan.mounts,
        devices: &plan.devices,
        cgroup: plan.cgroup.as_ref(),
        new_cgroup_ns: plan.ns.new_cgroup(),
        console: io.pty_slave.as_ref().map(|f| f.as_fd()),
        userns,
    };
    let t = std::time::Instant::now();
    let root = rootfs::prepare(&setup)?;
    let mounts = t.elapsed().as_micros();
    rootfs::pivot(&root, &plan.rootfs)?;
    drop(root);
    let pivot = t.elapsed().as_micros() - mounts;
    rootfs::finish(
        &plan.masked,
        &plan.readonly,
        plan.root_readonly,
        &plan.process.cwd,
    )?;
    let finish = t.elapsed().as_micros() - mounts - pivot;
    Ok(format!(
        "init.mounts={mounts} init.pivot_root={pivot} init.masks={finish}"
    ))
}

/// The pause's root filesystem: an empty read-only tmpfs holding only its
/// PID namespace's /proc (for its memory release), pivoted into inside its
/// own mount namespace. It is PID 1 of the pod's shared PID namespace, so
/// a container allowed to ptrace it reads /proc/1/root: that must not be
/// the node's root filesystem (as a pause image's rootfs is not).
fn pause_root() -> Result<()> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(sys("make / private", "pause"))?;
    // The shim's working directory, the pause's bundle: a place to mount
    // on that exists in this (copied) mount namespace.
    let dir = std::env::current_dir().map_err(|e| sys("getcwd", "pause")(io_errno(&e)))?;
    let safe = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        &dir,
        Some("tmpfs"),
        safe,
        Some("size=16k,mode=0555"),
    )
    .map_err(sys("mount tmpfs", "the pause's root"))?;
    nix::unistd::chdir(&dir).map_err(sys("chdir", "the pause's root"))?;
    nix::unistd::mkdir("proc", Mode::from_bits_truncate(0o555))
        .map_err(sys("mkdir", "the pause's /proc"))?;
    mount(Some("proc"), "proc", Some("proc"), safe, none)
        .map_err(sys("mount proc", "the pause's /proc"))?;
    nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root", "the pause's root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detach", "the old root"))?;
    nix::unistd::chdir("/").map_err(sys("chdir", "/"))?;
    mount(
        none,
        "/",
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | safe,
        none,
    )
    .map_err(sys("remount read-only", "the pause's root"))?;
    Ok(())
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Writes oom_score_adj; never fails the container. A node that refuses a
/// lower value (no CAP_SYS_RESOURCE) keeps the current one when
/// restrict_oom_score_adj is set, as containerd does; otherwise the
/// refusal is ignored the same way.
pub fn set_oom_score_adj(adj: i32, restrict: bool) {
    const PATH: &str = "/proc/self/oom_score_adj";
    if std::fs::write(PATH, adj.to_string()).is_ok() {
        return;
    }
    if restrict {
        let current = std::fs::read_to_string(PATH)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if let Some(current) = current {
            let _ = std::fs::write(PATH, adj.max(current).to_string());
        }
    }
}

/// `program` (a path) is a file with an execute bit: else the exit code
/// and message of runc's `exec: "x": stat x: ...`.
fn executable_at(program: &str) -> std::result::Result<(), (i32, String)> {
    match std::fs::metadata(program) {
        Err(e) => Err((127, format!("{program:?}: stat {program}: {e}"))),
        Ok(m) if m.is_dir() => Err((126, format!("{program:?}: is a directory"))),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => {
            Err((126, format!("{program:?}: permission denied")))
        }
        Ok(_) => Ok(()),
    }
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The process's rlimits: while it is still the node's root, whose
/// CAP_SYS_RESOURCE raising a hard limit needs.
fn apply_rlimits(cfg: &ProcessConfig) -> Result<()> {
    for &(res, soft, hard) in &cfg.rlimits {
        setrlimit(res, soft, hard).map_err(sys("setrlimit", format!("{res:?}")))?;
    }
    Ok(())
}

/// Into the pod's user namespace (KEP-127): the process keeps its
/// namespaces, and its ids and capabilities are from here on the user
/// namespace's (what drop_privileges sets is then mapped).
fn join_userns(userns: BorrowedFd<'_>) -> Result<()> {
    setns(userns, CloneFlags::CLONE_NEWUSER).map_err(sys("join namespace", "user"))
}

fn drop_privileges(cfg: &ProcessConfig) -> Result<()> {
    let caps_err = |op: &'static str| {
        move |e: caps::errors::CapsError| SpawnError::Sys {
            op,
            what: e.to_string(),
            source: Errno::EPERM,
        }
    };
    if let Some(c) = &cfg.caps {
        // cap_last_cap: one read, not a PR_CAPBSET_READ per capability;
        // the probe where the container has no /proc.
        let supported = caps::runtime::procfs_all_supported(None)
            .unwrap_or_else(|_| caps::runtime::thread_all_supported());
        for cap in supported.difference(&c.bounding) {
            caps::drop(None, CapSet::Bounding, *cap)
                .map_err(caps_err("drop bounding capability"))?;
        }
        // Keep the permitted set across the uid change; set below.
        nix::sys::prctl::set_keepcaps(true).map_err(sys("prctl", "PR_SET_KEEPCAPS"))?;
    }
    let gids: Vec<Gid> = cfg
        .additional_gids
        .iter()
        .map(|&g| Gid::from_raw(g))
        .collect();
    nix::unistd::setgroups(&gids)
        .map_err(sys("setgroups", format!("{:?}", cfg.additional_gids)))?;
    let gid = Gid::from_raw(cfg.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(sys("setresgid", cfg.gid))?;
    let uid = Uid::from_raw(cfg.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(sys("setresuid", cfg.uid))?;
    if let Some(c) = &cfg.caps {
        nix::sys::prctl::set_keepcaps(false).map_err(sys("prctl", "PR_SET_KEEPCAPS"))?;
        // Inheritable while CAP_SETPCAP may still be effective, then
        // effective down to the new permitted, then permitted.
        caps::set(None, CapSet::Inheritable, &c.inheritable)
            .map_err(caps_err("set inheritable capabilities"))?;
        let effective: CapsHashSet = c.effective.intersection(&c.permitted).copied().collect();
        caps::set(None, CapSet::Effective, &effective)
            .map_err(caps_err("set effective capabilities"))?;
        caps::set(None, CapSet::Permitted, &c.permitted)
            .map_err(caps_err("set permitted capabilities"))?;
        caps::set(None, CapSet::Effective, &effective)
            .map_err(caps_err("set effective capabilities"))?;
        let ambient: CapsHashSet = c
            .ambient
            .iter()
            .filter(|a| c.permitted.contains(a) && c.inheritable.contains(a))
            .copied()
            .collect();
        caps::set(None, CapSet::Ambient, &ambient).map_err(caps_err("set ambient capabilities"))?;
    }
    if cfg.no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(sys("prctl", "PR_SET_NO_NEW_PRIVS"))?;
    }
    Ok(())
}

/// Leaves nothing of the shim's state to the program: signal mask and
/// SIGPIPE disposition (ignored by Rust's runtime) back to defaults, every
/// descriptor above stderr closed at exec.
fn clean_process_state() {
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    // SAFETY: SIG_DFL installs no handler.
    let _ = unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only marks descriptors.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r != 0 {
        // Before Linux 5.11 (no CLOSE_RANGE_CLOEXEC): one by one.
        mark_cloexec_by_listing();
    }
}

/// Every descriptor above stderr close-on-exec, from /proc/self/fd.
fn mark_cloexec_by_listing() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on a descriptor number only changes its flag; one
        // that is not open (the listing's own) fails with EBADF.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// Becomes `cfg`'s program: user, capabilities, seccomp filter, execve.
/// Returns only on failure, with the exit code (127 not found, 126 not
/// executable or refused) after telling stderr and `sync` why.
pub fn exec_process(
    cfg: &ProcessConfig,
    filter: Option<&Program>,
    sync: Option<BorrowedFd<'_>>,
    userns: Option<BorrowedFd<'_>>,
) -> i32 {
    let prepared = prepare_exec(cfg, filter, userns);
    exec_prepared(prepared, filter, sync)
}

/// Exec what [`prepare_exec`] made ready, or report why it could not be:
/// `exec failed: ...` on stderr and on `sync`. Returns only with an exit
/// code.
fn exec_prepared(
    prepared: std::result::Result<Prepared, (i32, String)>,
    filter: Option<&Program>,
    sync: Option<BorrowedFd<'_>>,
) -> i32 {
    let (code, msg) = match prepared.and_then(|p| p.exec(filter)) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let line = format!("exec failed: {}", bounded(&msg));
    // SAFETY: fd 2 is this process's stderr for its whole life.
    let stderr = unsafe { BorrowedFd::borrow_raw(2) };
    let _ = nix::unistd::write(stderr, format!("berth-shim: {line}\n").as_bytes());
    if let Some(fd) = sync {
        report(fd, &format!("error {line}"));
    }
    code
}

/// At most 4 KiB of `msg` (it may quote a request's program name).
fn bounded(msg: &str) -> &str {
    let mut end = msg.len().min(4096);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    &msg[..end]
}

/// The home directory of `uid` in the container's /etc/passwd (a regular
/// file of at most 1 MiB), or "/".
fn home_dir(uid: u32) -> String {
    const MAX: u64 = 1 << 20;
    let passwd = match std::fs::metadata("/etc/passwd") {
        Ok(m) if m.is_file() && m.len() <= MAX => {
            std::fs::read_to_string("/etc/passwd").unwrap_or_default()
        }
        _ => String::new(),
    };
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 6 && f[2].parse::<u32>() == Ok(uid))
        .map(|f| f[5].to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".to_string())
}

/// A process ready to exec: its user, capabilities, limits and (without
/// no_new_privs) seccomp filter in place, its program found.
struct Prepared {
    no_new_privs: bool,
    path: PathBuf,
    path_c: CString,
    args: Vec<CString>,
    env: Vec<CString>,
}

/// Everything of an exec but the execve (and a no_new_privs filter, which
/// goes last), in runc's order. A container's init does this before it
/// waits for Start, as runc's init does before its exec fifo, so that
/// Start is the execve alone; a failure here fails the init's set-up.
fn prepare_exec(
    cfg: &ProcessConfig,
    filter: Option<&Program>,
    userns: Option<BorrowedFd<'_>>,
) -> std::result::Result<Prepared, (i32, String)> {
    let program = cfg.args.first().cloned().unwrap_or_default();
    // As runc does: HOME from the user's /etc/passwd entry in the container
    // (read while still root), "/" without one, unless the env sets it.
    let home = (!cfg.env.iter().any(|e| e.starts_with("HOME=")))
        .then(|| format!("HOME={}", home_dir(cfg.uid)));
    // Before any filter, which might refuse close_range (an old profile).
    clean_process_state();
    // runc's order: without no_new_privs the filter goes on while the
    // process still has CAP_SYS_ADMIN, so that the kernel takes it without
    // no_new_privs (which would stop the container's setuid programs), and
    // the user and capability changes below run under it; with
    // no_new_privs, as late as possible, just before execve.
    apply_rlimits(cfg).map_err(|e| (126, e.to_string()))?;
    // Before the filter, which may refuse setns.
    if let Some(u) = userns {
        join_userns(u).map_err(|e| (126, e.to_string()))?;
    }
    if let Some(f) = filter.filter(|_| !cfg.no_new_privs) {
        load_filter(f)?;
    }
    drop_privileges(cfg).map_err(|e| (126, e.to_string()))?;
    umask(Mode::from_bits_truncate(cfg.umask.unwrap_or(0o022)));
    if program.contains('/') {
        // A path is not looked up, but checked as Go's LookPath (runc's)
        // does: what is not there or cannot run fails here, not in the
        // execve after Start has been answered.
        executable_at(&program)?;
    }
    let Some(path) = lookup_path(&program, &cfg.env, is_executable) else {
        return Err((
            127,
            format!("{program:?}: executable file not found in $PATH"),
        ));
    };
    let cstr = |s: &str| CString::new(s).map_err(|_| (126, format!("{s:?} contains a NUL byte")));
    let path_c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| (126, "NUL in path".to_string()))?;
    let args = cfg
        .args
        .iter()
        .map(|a| cstr(a))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let env = cfg
        .env
        .iter()
        .chain(home.iter())
        .map(|a| cstr(a))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Prepared {
        no_new_privs: cfg.no_new_privs,
        path,
        path_c,
        args,
        env,
    })
}

fn load_filter(f: &Program) -> std::result::Result<(), (i32, String)> {
    seccomp::load(f).map_err(|e| (126, format!("loading the seccomp filter: {}", e.desc())))
}

impl Prepared {
    fn exec(
        self,
        filter: Option<&Program>,
    ) -> std::result::Result<std::convert::Infallible, (i32, String)> {
        if let Some(f) = filter.filter(|_| self.no_new_privs) {
            load_filter(f)?;
        }
        let e = match nix::unistd::execve(&self.path_c, &self.args, &self.env) {
            Ok(never) => match never {},
            Err(e) => e,
        };
        let code = if e == Errno::ENOENT { 127 } else { 126 };
        Err((code, format!("{}: {}", self.path.display(), e.desc())))
    }
}

/// How an exec process's stdio is wired: a pty (its output on stdout),
/// or a pipe per stream asked for; what is not asked for is /dev/null.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecStdio {
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// The pty's size at start (columns, rows).
    pub size: Option<(u16, u16)>,
}

impl ExecStdio {
    /// ExecSync: output captured, no input.
    pub const CAPTURE: ExecStdio = ExecStdio {
        tty: false,
        stdin: false,
        stdout: true,
        stderr: true,
        size: None,
    };
}

/// A process started by Exec: the shim's ends of its stdio (output ends
/// non-blocking).
pub struct ExecSpawned {
    pub pid: Pid,
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// The pty's master (input and output) with `tty`.
    pub pty: Option<OwnedFd>,
}

/// Starts `cfg` inside the namespaces of `init` (same cgroup, user and
/// capabilities as the container), as runc exec does.
pub fn spawn_exec(
    init: Pid,
    cgroup: Option<&Cgroup>,
    cfg: &ProcessConfig,
    stdio: &ExecStdio,
) -> Result<ExecSpawned> {
    let (report_r, report_w) = cloexec_pipe()?;
    let mut parent = ExecSpawned {
        pid: Pid::from_raw(0),
        stdin: None,
        stdout: None,
        stderr: None,
        pty: None,
    };
    let mut child = ChildIo::default();
    if stdio.tty {
        let pty = nix::pty::openpty(None, None).map_err(sys("open", "pty"))?;
        set_cloexec(&pty.master)?;
        set_cloexec(&pty.slave)?;
        if let Some((w, h)) = stdio.size {
            set_winsize(&pty.master, w, h).map_err(sys("ioctl TIOCSWINSZ", "pty"))?;
        }
        parent.pty = Some(pty.master);
        child.pty_slave = Some(pty.slave);
    } else {
        if stdio.stdin {
            let (r, w) = cloexec_pipe()?;
            parent.stdin = Some(w);
            child.stdin = Some(r);
        }
        if stdio.stdout {
            let (r, w) = output_pipe()?;
            parent.stdout = Some(r);
            child.stdout = Some(w);
        }
        if stdio.stderr {
            let (r, w) = output_pipe()?;
            parent.stderr = Some(r);
            child.stderr = Some(w);
        }
    }
    match fork_into(cgroup, "exec process")? {
        (ForkResult::Child, placed) => {
            drop((report_r, parent));
            let cgroup = cgroup.filter(|_| !placed);
            let code = match exec_intermediate(init, cgroup, cfg, &report_w, child) {
                Ok(()) => 0,
                Err(e) => {
                    report(report_w.as_fd(), &format!("error {e}"));
                    1
                }
            };
            exit_now(code)
        }
        (ForkResult::Parent { child: mid }, _) => {
            drop((report_w, child));
            let pid = read_report(&report_r, &mut Vec::new(), parse_pid);
            let _ = waitpid(mid, None);
            parent.pid = pid?;
            Ok(parent)
        }
    }
}

fn exec_intermediate(
    init: Pid,
    cgroup: Option<&Cgroup>,
    cfg: &ProcessConfig,
    report_w: &OwnedFd,
    io: ChildIo,
) -> Result<()> {
    if let Some(cg) = cgroup {
        cg.enter_self()?;
    }
    // The container's filter, from the bundle while the host's mounts are
    // in view.
    let filter = match &cfg.seccomp {
        Some(path) => Some(seccomp::read(path).map_err(SpawnError::Child)?),
        None => None,
    };
    // Mount last: after it, /proc is the container's.
    let kinds = [
        NsKind::Ipc,
        NsKind::Uts,
        NsKind::Net,
        NsKind::Cgroup,
        NsKind::Pid,
        NsKind::Mount,
    ];
    // The pod's user namespace (its pin, from the spec), joined by the
    // process last, just before it execs. Not /proc/<init>/ns/user: a
    // container process may have moved into a user namespace of its own.
    let userns = cfg.userns.as_deref().map(open_ns).transpose()?;
    let mut fds = Vec::with_capacity(kinds.len());
    for k in kinds {
        let path = PathBuf::from(format!("/proc/{init}/ns/{}", k.proc_name()));
        match open_ns(&path) {
            Ok(fd) => fds.push((k, fd)),
            // A kernel without cgroup namespaces.
            Err(_) if k == NsKind::Cgroup => {}
            Err(e) => return Err(e),
        }
    }
    for (k, fd) in &fds {
        setns(fd, k.clone_flag()).map_err(sys("join namespace", k.proc_name()))?;
    }
    drop(fds);
    // SAFETY: single-threaded (see create).
    match unsafe { fork() }.map_err(sys("fork", "exec process"))? {
        ForkResult::Child => {
            // A terminal needs a session of its own to be its controlling
            // one (setup_stdio makes it so).
            if io.pty_slave.is_some()
                && let Err(e) = setsid()
            {
                report(report_w.as_fd(), &format!("error setsid: {e}"));
                exit_now(126);
            }
            if let Err(e) = setup_stdio(&io) {
                report(report_w.as_fd(), &format!("error {e}"));
                exit_now(126);
            }
            drop(io);
            let cwd = if cfg.cwd.as_os_str().is_empty() {
                Path::new("/")
            } else {
                &cfg.cwd
            };
            if let Err(e) = nix::unistd::chdir(cwd) {
                // SAFETY: fd 2 is this process's stderr.
                let stderr = unsafe { BorrowedFd::borrow_raw(2) };
                let _ = nix::unistd::write(
                    stderr,
                    format!("berth-shim: chdir {}: {}\n", cwd.display(), e.desc()).as_bytes(),
                );
                exit_now(126);
            }
            if let Some(adj) = cfg.oom_score_adj {
                set_oom_score_adj(adj, cfg.restrict_oom_score_adj);
            }
            let code = exec_process(
                cfg,
                filter.as_ref(),
                None,
                userns.as_ref().map(|f| f.as_fd()),
            );
            exit_now(code)
        }
        ForkResult::Parent { child } => {
            report(report_w.as_fd(), &format!("pid {child}"));
            Ok(())
        }
    }
}

/// Sets the pty's window size (TIOCSWINSZ on the master).
pub fn set_winsize(pty: &OwnedFd, width: u16, height: u16) -> std::result::Result<(), Errno> {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is valid
    // for the call.
    let r = unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    Errno::result(r).map(drop)
}

/// Closes every descriptor above stderr: at shim start (what berthd let it
/// inherit), and in the pause process, which never execs.
pub fn close_inherited() {
    // SAFETY: closes descriptors; the callers own nothing above 2 that they
    // use afterwards (the pause process never returns to its owners).
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
    }
}

/// Detaches from the caller: forks; the parent gets the child's pid (and
/// should exit, to be reaped by whoever started it), the child `None`, in
/// a new session and a child subreaper.
pub fn detach() -> Result<Option<Pid>> {
    // SAFETY: the shim is single-threaded at this point (nothing has
    // started a thread), so the child inherits no held lock.
    match unsafe { fork() }.map_err(sys("fork", "shim"))? {
        ForkResult::Parent { child } => Ok(Some(child)),
        ForkResult::Child => {
            setsid().map_err(sys("setsid", "shim"))?;
            nix::sys::prctl::set_child_subreaper(true)
                .map_err(sys("prctl", "PR_SET_CHILD_SUBREAPER"))?;
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where this host mounts the cgroup2 hierarchy, if anywhere.
    fn cgroup2_mount() -> Option<PathBuf> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        text.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            (right.split(' ').next() == Some("cgroup2")).then(|| PathBuf::from(point))
        })
    }

    #[test]
    fn a_child_is_born_in_its_v2_cgroup() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root to make a cgroup; run the suite as root"
        );
        let root = cgroup2_mount()
            .expect("this test needs a cgroup2 hierarchy mounted (hybrid or pure v2 host)");
        let name = format!("berth-clone3-test-{}", std::process::id());
        let dir = root.join(&name);
        std::fs::create_dir(&dir).expect("mkdir cgroup");
        let cg = Cgroup {
            v2: true,
            dirs: vec![dir.clone()],
            memory: None,
            hierarchies: Vec::new(),
        };
        let (r, placed) = match fork_into(Some(&cg), "test child") {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                panic!("fork_into: {e}");
            }
        };
        let child = match r {
            ForkResult::Child => {
                // SAFETY: async-signal-safe calls only, in the child of a
                // multi-threaded test process.
                unsafe {
                    libc::pause();
                    libc::_exit(0)
                }
            }
            ForkResult::Parent { child } => child,
        };
        let text = std::fs::read_to_string(format!("/proc/{child}/cgroup")).unwrap_or_default();
        let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        // A reaped task leaves its cgroup a moment later.
        let mut removed = false;
        for _ in 0..100 {
            if std::fs::remove_dir(&dir).is_ok() {
                removed = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(placed, "clone3 placed the child (no fallback)");
        assert!(
            text.lines().any(|l| l == format!("0::/{name}")),
            "the child's cgroups: {text}"
        );
        assert!(removed, "could not remove {}", dir.display());
    }
}
