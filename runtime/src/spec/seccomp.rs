//! The seccomp profile of a container (or of a pod's pause process), from
//! the CRI's `SecurityProfile`, as containerd's CRI plugin chooses it:
//!
//! * `RuntimeDefault`: the default profile below (containerd's).
//! * `Unconfined`, or no profile at all (kubelet sends `Unconfined` when a
//!   pod asks for nothing; containerd's default for an unset one is
//!   unconfined too): no filter.
//! * `Localhost`: the JSON profile at that path on the node, in Docker's
//!   format (`defaultAction`, `architectures` or `archMap`, `syscalls[]`
//!   with `names`, `action`, `errnoRet`, `args`, and `includes`/`excludes`
//!   by capability, architecture or kernel version), which is also the OCI
//!   format plus those extras. A file that is missing, larger than
//!   [`MAX_PROFILE_SIZE`] or malformed fails the container.
//! * A privileged container gets no filter, whatever it asks.
//!
//! The result is an OCI `LinuxSeccomp` for the spec; berthd compiles it to
//! BPF ([`crate::seccomp`]) for the shim.

use std::collections::BTreeSet;
use std::path::Path;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
    LinuxSyscallBuilder,
};
use serde::Deserialize;

use super::{Host, SpecError};
use crate::model::{ProfileType, SecurityProfile};
use crate::seccomp::Native;

/// The largest Localhost profile read (Docker's default is about 20 KiB).
pub const MAX_PROFILE_SIZE: u64 = 1 << 20;

/// What a profile's conditional parts are checked against.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// The process's bounding capabilities, without `CAP_` (`SYS_ADMIN`).
    pub bounding: &'a BTreeSet<String>,
    pub arch: Native,
    /// The running kernel's (major, minor).
    pub kernel: (u32, u32),
}

/// The OCI seccomp section for `profile` (None: no filter), for a process
/// with the `bounding` capabilities (names without `CAP_`) on this node.
pub fn resolve(
    profile: Option<&SecurityProfile>,
    privileged: bool,
    bounding: &BTreeSet<String>,
    kernel: (u32, u32),
    host: &dyn Host,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    let Some(p) = profile.filter(|p| !privileged && p.profile_type != ProfileType::Unconfined)
    else {
        return Ok(None);
    };
    let arch = Native::host().ok_or_else(|| SpecError::Seccomp {
        profile: describe(p),
        reason: "berth cannot filter syscalls on this node's architecture".into(),
    })?;
    let ctx = Context {
        bounding,
        arch,
        kernel,
    };
    resolve_for(p, &ctx, host).map(Some)
}

fn describe(p: &SecurityProfile) -> String {
    match p.profile_type {
        ProfileType::Localhost => p.localhost_ref.clone(),
        t => format!("{t:?}"),
    }
}

/// [`resolve`] for a profile that asks for a filter, on `ctx`'s node.
pub fn resolve_for(
    p: &SecurityProfile,
    ctx: &Context<'_>,
    host: &dyn Host,
) -> Result<LinuxSeccomp, SpecError> {
    let err = |reason: String| SpecError::Seccomp {
        profile: describe(p),
        reason,
    };
    match p.profile_type {
        ProfileType::Localhost => {
            let bytes = host
                .read_small_file(Path::new(&p.localhost_ref), MAX_PROFILE_SIZE)
                .map_err(|e| err(format!("cannot read it: {e}")))?;
            let parsed: DockerProfile =
                serde_json::from_slice(&bytes).map_err(|e| err(format!("not a profile: {e}")))?;
            parsed.resolve(ctx).map_err(err)
        }
        _ => default_profile(ctx),
    }
}

// ---------------------------------------------------------------------------
// Docker's profile format

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerProfile {
    default_action: LinuxSeccompAction,
    default_errno_ret: Option<u32>,
    architectures: Option<Vec<Arch>>,
    arch_map: Option<Vec<ArchMap>>,
    flags: Option<Vec<LinuxSeccompFilterFlag>>,
    listener_path: Option<String>,
    syscalls: Option<Vec<DockerSyscall>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: Arch,
    sub_architectures: Option<Vec<Arch>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerSyscall {
    /// The old single-name form.
    name: Option<String>,
    names: Option<Vec<String>>,
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    args: Option<Vec<LinuxSeccompArg>>,
    includes: Option<Filter>,
    excludes: Option<Filter>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    caps: Option<Vec<String>>,
    arches: Option<Vec<String>>,
    min_kernel: Option<String>,
}

/// Moby's rule: a rule with `includes` applies only if the container has
/// every capability listed, runs on one of the architectures (Go names:
/// `amd64`, `arm64`, …) and on at least that kernel; one with `excludes`
/// does not apply if it has any capability or runs on any architecture
/// listed.
fn applies<S: AsRef<str>>(
    includes: (&[S], &[S], Option<(u32, u32)>),
    excludes: (&[S], &[S]),
    ctx: &Context<'_>,
) -> bool {
    let has = |cap: &S| {
        let c = cap.as_ref();
        let c = c.strip_prefix("CAP_").unwrap_or(c);
        ctx.bounding.contains(&c.to_ascii_uppercase())
    };
    let on = |arches: &[S]| arches.iter().any(|a| a.as_ref() == ctx.arch.go_name());
    let (inc_caps, inc_arches, min_kernel) = includes;
    let (exc_caps, exc_arches) = excludes;
    inc_caps.iter().all(has)
        && (inc_arches.is_empty() || on(inc_arches))
        && min_kernel.is_none_or(|k| ctx.kernel >= k)
        && !exc_caps.iter().any(has)
        && !on(exc_arches)
}

fn parse_kernel(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = match parts.next() {
        Some(m) => m.parse().ok()?,
        None => 0,
    };
    Some((major, minor))
}

/// A running kernel's release (`6.1.0-18-amd64`) as (major, minor).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn syscall(
    names: Vec<String>,
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    args: Vec<LinuxSeccompArg>,
) -> Result<LinuxSyscall, String> {
    let mut b = LinuxSyscallBuilder::default().names(names).action(action);
    if let Some(e) = errno_ret {
        b = b.errno_ret(e);
    }
    if !args.is_empty() {
        b = b.args(args);
    }
    b.build().map_err(|e| e.to_string())
}

fn check_action(a: LinuxSeccompAction) -> Result<(), String> {
    if a == LinuxSeccompAction::ScmpActNotify {
        return Err("SCMP_ACT_NOTIFY needs a seccomp agent, which berth does not run".into());
    }
    Ok(())
}

impl DockerProfile {
    fn resolve(self, ctx: &Context<'_>) -> Result<LinuxSeccomp, String> {
        check_action(self.default_action)?;
        if self.listener_path.as_deref().is_some_and(|p| !p.is_empty()) {
            return Err("listenerPath: a seccomp agent is not supported".into());
        }
        let listed = self.architectures.unwrap_or_default();
        let map = self.arch_map.unwrap_or_default();
        if !listed.is_empty() && !map.is_empty() {
            return Err("architectures and archMap are both set; use one".into());
        }
        let mut arches = listed;
        for m in map {
            if m.architecture == ctx.arch.scmp_arch() {
                arches.push(m.architecture);
                arches.extend(m.sub_architectures.unwrap_or_default());
            }
        }
        let mut syscalls = Vec::new();
        for (i, s) in self.syscalls.unwrap_or_default().into_iter().enumerate() {
            let names = match (s.name, s.names) {
                (Some(_), Some(n)) if !n.is_empty() => {
                    return Err(format!("syscalls[{i}]: both name and names are set"));
                }
                (Some(n), _) => vec![n],
                (None, n) => n.unwrap_or_default(),
            };
            if names.is_empty() {
                continue;
            }
            check_action(s.action)?;
            let args = s.args.unwrap_or_default();
            if let Some(a) = args.iter().find(|a| a.index() > 5) {
                return Err(format!(
                    "syscalls[{i}] ({}): argument index {} is out of range (0-5)",
                    names.join(","),
                    a.index()
                ));
            }
            let inc = s.includes.unwrap_or_default();
            let exc = s.excludes.unwrap_or_default();
            let min_kernel =
                match &inc.min_kernel {
                    Some(v) => Some(parse_kernel(v).ok_or_else(|| {
                        format!("syscalls[{i}]: minKernel {v:?} is not a version")
                    })?),
                    None => None,
                };
            let none: Vec<String> = Vec::new();
            let applies = applies(
                (
                    inc.caps.as_ref().unwrap_or(&none),
                    inc.arches.as_ref().unwrap_or(&none),
                    min_kernel,
                ),
                (
                    exc.caps.as_ref().unwrap_or(&none),
                    exc.arches.as_ref().unwrap_or(&none),
                ),
                ctx,
            );
            if applies {
                syscalls.push(syscall(names, s.action, s.errno_ret, args)?);
            }
        }
        let mut b = LinuxSeccompBuilder::default()
            .default_action(self.default_action)
            .architectures(arches)
            .syscalls(syscalls);
        if let Some(e) = self.default_errno_ret {
            b = b.default_errno_ret(e);
        }
        if let Some(f) = self.flags.filter(|f| !f.is_empty()) {
            b = b.flags(f);
        }
        b.build().map_err(|e| e.to_string())
    }
}

// ---------------------------------------------------------------------------
// The default profile

/// A rule of the default profile, in the shape of Docker's profile JSON.
struct Rule {
    names: &'static [&'static str],
    /// None: allow; Some(errno): fail with it.
    errno: Option<u32>,
    /// (index, value, operator).
    args: &'static [(usize, u64, LinuxSeccompOperator)],
    /// Only with all these capabilities / on one of these architectures /
    /// from this kernel on.
    caps: &'static [&'static str],
    arches: &'static [&'static str],
    min_kernel: Option<(u32, u32)>,
    /// Not with any of these capabilities / on these architectures.
    not_caps: &'static [&'static str],
    not_arches: &'static [&'static str],
}

const RULE: Rule = Rule {
    names: &[],
    errno: None,
    args: &[],
    caps: &[],
    arches: &[],
    min_kernel: None,
    not_caps: &[],
    not_arches: &[],
};

const fn allow(names: &'static [&'static str]) -> Rule {
    Rule { names, ..RULE }
}

const fn with_cap(cap: &'static [&'static str], names: &'static [&'static str]) -> Rule {
    Rule {
        names,
        caps: cap,
        ..RULE
    }
}

const fn on_arch(arches: &'static [&'static str], names: &'static [&'static str]) -> Rule {
    Rule {
        names,
        arches,
        ..RULE
    }
}

const EQ: LinuxSeccompOperator = LinuxSeccompOperator::ScmpCmpEq;

/// CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC |
/// CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7e02_0000;
const AF_VSOCK: u64 = 40;
const ENOSYS: u32 = 38;

/// containerd's default profile (`contrib/seccomp/seccomp_default.go`), as
/// moby's `profiles/seccomp/default.json` has it today: default action
/// EPERM; socket(AF_VSOCK) refused; clone only without namespace flags and
/// clone3 failing with ENOSYS (so that libcs fall back to clone) unless the
/// container has CAP_SYS_ADMIN; a few syscalls more per capability.
const DEFAULT_PROFILE: &[Rule] = &[
    allow(&[
        "accept",
        "accept4",
        "access",
        "adjtimex",
        "alarm",
        "bind",
        "brk",
        "capget",
        "capset",
        "chdir",
        "chmod",
        "chown",
        "chown32",
        "clock_adjtime",
        "clock_adjtime64",
        "clock_getres",
        "clock_getres_time64",
        "clock_gettime",
        "clock_gettime64",
        "clock_nanosleep",
        "clock_nanosleep_time64",
        "close",
        "close_range",
        "connect",
        "copy_file_range",
        "creat",
        "dup",
        "dup2",
        "dup3",
        "epoll_create",
        "epoll_create1",
        "epoll_ctl",
        "epoll_ctl_old",
        "epoll_pwait",
        "epoll_pwait2",
        "epoll_wait",
        "epoll_wait_old",
        "eventfd",
        "eventfd2",
        "execve",
        "execveat",
        "exit",
        "exit_group",
        "faccessat",
        "faccessat2",
        "fadvise64",
        "fadvise64_64",
        "fallocate",
        "fanotify_mark",
        "fchdir",
        "fchmod",
        "fchmodat",
        "fchown",
        "fchown32",
        "fchownat",
        "fcntl",
        "fcntl64",
        "fdatasync",
        "fgetxattr",
        "flistxattr",
        "flock",
        "fork",
        "fremovexattr",
        "fsetxattr",
        "fstat",
        "fstat64",
        "fstatat64",
        "fstatfs",
        "fstatfs64",
        "fsync",
        "ftruncate",
        "ftruncate64",
        "futex",
        "futex_time64",
        "futex_waitv",
        "futimesat",
        "getcpu",
        "getcwd",
        "getdents",
        "getdents64",
        "getegid",
        "getegid32",
        "geteuid",
        "geteuid32",
        "getgid",
        "getgid32",
        "getgroups",
        "getgroups32",
        "getitimer",
        "getpeername",
        "getpgid",
        "getpgrp",
        "getpid",
        "getppid",
        "getpriority",
        "getrandom",
        "getresgid",
        "getresgid32",
        "getresuid",
        "getresuid32",
        "getrlimit",
        "get_robust_list",
        "getrusage",
        "getsid",
        "getsockname",
        "getsockopt",
        "get_thread_area",
        "gettid",
        "gettimeofday",
        "getuid",
        "getuid32",
        "getxattr",
        "inotify_add_watch",
        "inotify_init",
        "inotify_init1",
        "inotify_rm_watch",
        "io_cancel",
        "ioctl",
        "io_destroy",
        "io_getevents",
        "io_pgetevents",
        "io_pgetevents_time64",
        "ioprio_get",
        "ioprio_set",
        "io_setup",
        "io_submit",
        "io_uring_enter",
        "io_uring_register",
        "io_uring_setup",
        "ipc",
        "kill",
        "landlock_add_rule",
        "landlock_create_ruleset",
        "landlock_restrict_self",
        "lchown",
        "lchown32",
        "lgetxattr",
        "link",
        "linkat",
        "listen",
        "listxattr",
        "llistxattr",
        "_llseek",
        "lremovexattr",
        "lseek",
        "lsetxattr",
        "lstat",
        "lstat64",
        "madvise",
        "membarrier",
        "memfd_create",
        "memfd_secret",
        "mincore",
        "mkdir",
        "mkdirat",
        "mknod",
        "mknodat",
        "mlock",
        "mlock2",
        "mlockall",
        "mmap",
        "mmap2",
        "mprotect",
        "mq_getsetattr",
        "mq_notify",
        "mq_open",
        "mq_timedreceive",
        "mq_timedreceive_time64",
        "mq_timedsend",
        "mq_timedsend_time64",
        "mq_unlink",
        "mremap",
        "msgctl",
        "msgget",
        "msgrcv",
        "msgsnd",
        "msync",
        "munlock",
        "munlockall",
        "munmap",
        "name_to_handle_at",
        "nanosleep",
        "newfstatat",
        "_newselect",
        "open",
        "openat",
        "openat2",
        "pause",
        "pidfd_open",
        "pidfd_send_signal",
        "pipe",
        "pipe2",
        "pkey_alloc",
        "pkey_free",
        "pkey_mprotect",
        "poll",
        "ppoll",
        "ppoll_time64",
        "prctl",
        "pread64",
        "preadv",
        "preadv2",
        "prlimit64",
        "process_mrelease",
        "pselect6",
        "pselect6_time64",
        "pwrite64",
        "pwritev",
        "pwritev2",
        "read",
        "readahead",
        "readlink",
        "readlinkat",
        "readv",
        "recv",
        "recvfrom",
        "recvmmsg",
        "recvmmsg_time64",
        "recvmsg",
        "remap_file_pages",
        "removexattr",
        "rename",
        "renameat",
        "renameat2",
        "restart_syscall",
        "rmdir",
        "rseq",
        "rt_sigaction",
        "rt_sigpending",
        "rt_sigprocmask",
        "rt_sigqueueinfo",
        "rt_sigreturn",
        "rt_sigsuspend",
        "rt_sigtimedwait",
        "rt_sigtimedwait_time64",
        "rt_tgsigqueueinfo",
        "sched_getaffinity",
        "sched_getattr",
        "sched_getparam",
        "sched_get_priority_max",
        "sched_get_priority_min",
        "sched_getscheduler",
        "sched_rr_get_interval",
        "sched_rr_get_interval_time64",
        "sched_setaffinity",
        "sched_setattr",
        "sched_setparam",
        "sched_setscheduler",
        "sched_yield",
        "seccomp",
        "select",
        "semctl",
        "semget",
        "semop",
        "semtimedop",
        "semtimedop_time64",
        "send",
        "sendfile",
        "sendfile64",
        "sendmmsg",
        "sendmsg",
        "sendto",
        "setfsgid",
        "setfsgid32",
        "setfsuid",
        "setfsuid32",
        "setgid",
        "setgid32",
        "setgroups",
        "setgroups32",
        "setitimer",
        "setpgid",
        "setpriority",
        "setregid",
        "setregid32",
        "setresgid",
        "setresgid32",
        "setresuid",
        "setresuid32",
        "setreuid",
        "setreuid32",
        "setrlimit",
        "set_robust_list",
        "setsid",
        "setsockopt",
        "set_thread_area",
        "set_tid_address",
        "setuid",
        "setuid32",
        "setxattr",
        "shmat",
        "shmctl",
        "shmdt",
        "shmget",
        "shutdown",
        "sigaltstack",
        "signalfd",
        "signalfd4",
        "sigprocmask",
        "sigreturn",
        "socketcall",
        "socketpair",
        "splice",
        "stat",
        "stat64",
        "statfs",
        "statfs64",
        "statx",
        "symlink",
        "symlinkat",
        "sync",
        "sync_file_range",
        "syncfs",
        "sysinfo",
        "tee",
        "tgkill",
        "time",
        "timer_create",
        "timer_delete",
        "timer_getoverrun",
        "timer_gettime",
        "timer_gettime64",
        "timer_settime",
        "timer_settime64",
        "timerfd_create",
        "timerfd_gettime",
        "timerfd_gettime64",
        "timerfd_settime",
        "timerfd_settime64",
        "times",
        "tkill",
        "truncate",
        "truncate64",
        "ugetrlimit",
        "umask",
        "uname",
        "unlink",
        "unlinkat",
        "utime",
        "utimensat",
        "utimensat_time64",
        "utimes",
        "vfork",
        "vmsplice",
        "wait4",
        "waitid",
        "waitpid",
        "write",
        "writev",
    ]),
    Rule {
        names: &["process_vm_readv", "process_vm_writev", "ptrace"],
        min_kernel: Some((4, 8)),
        ..RULE
    },
    Rule {
        names: &["socket"],
        args: &[(0, AF_VSOCK, LinuxSeccompOperator::ScmpCmpNe)],
        ..RULE
    },
    // PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and the query.
    Rule {
        names: &["personality"],
        args: &[(0, 0x0, EQ)],
        ..RULE
    },
    Rule {
        names: &["personality"],
        args: &[(0, 0x0008, EQ)],
        ..RULE
    },
    Rule {
        names: &["personality"],
        args: &[(0, 0x20000, EQ)],
        ..RULE
    },
    Rule {
        names: &["personality"],
        args: &[(0, 0x20008, EQ)],
        ..RULE
    },
    Rule {
        names: &["personality"],
        args: &[(0, 0xffff_ffff, EQ)],
        ..RULE
    },
    on_arch(&["ppc64le"], &["sync_file_range2", "swapcontext"]),
    on_arch(
        &["arm", "arm64"],
        &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ],
    ),
    on_arch(&["amd64", "x32"], &["arch_prctl"]),
    on_arch(&["amd64", "x32", "x86"], &["modify_ldt"]),
    on_arch(
        &["s390", "s390x"],
        &[
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
            "s390_runtime_instr",
        ],
    ),
    on_arch(&["riscv64"], &["riscv_flush_icache"]),
    with_cap(&["CAP_DAC_READ_SEARCH"], &["open_by_handle_at"]),
    with_cap(
        &["CAP_SYS_ADMIN"],
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    Rule {
        names: &["clone"],
        args: &[(
            0,
            CLONE_NAMESPACE_FLAGS,
            LinuxSeccompOperator::ScmpCmpMaskedEq,
        )],
        not_caps: &["CAP_SYS_ADMIN"],
        not_arches: &["s390", "s390x"],
        ..RULE
    },
    Rule {
        // s390's clone takes the flags second.
        names: &["clone"],
        args: &[(
            1,
            CLONE_NAMESPACE_FLAGS,
            LinuxSeccompOperator::ScmpCmpMaskedEq,
        )],
        arches: &["s390", "s390x"],
        not_caps: &["CAP_SYS_ADMIN"],
        ..RULE
    },
    Rule {
        names: &["clone3"],
        errno: Some(ENOSYS),
        not_caps: &["CAP_SYS_ADMIN"],
        ..RULE
    },
    with_cap(&["CAP_SYS_BOOT"], &["reboot"]),
    with_cap(&["CAP_SYS_CHROOT"], &["chroot"]),
    with_cap(
        &["CAP_SYS_MODULE"],
        &["delete_module", "init_module", "finit_module"],
    ),
    with_cap(&["CAP_SYS_PACCT"], &["acct"]),
    with_cap(
        &["CAP_SYS_PTRACE"],
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    with_cap(&["CAP_SYS_RAWIO"], &["iopl", "ioperm"]),
    with_cap(
        &["CAP_SYS_TIME"],
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    with_cap(&["CAP_SYS_TTY_CONFIG"], &["vhangup"]),
    with_cap(
        &["CAP_SYS_NICE"],
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    with_cap(&["CAP_SYSLOG"], &["syslog"]),
    with_cap(&["CAP_BPF"], &["bpf"]),
    with_cap(&["CAP_PERFMON"], &["perf_event_open"]),
];

/// The architectures the default profile covers on this node (containerd's
/// `arches()`): x86_64 with its x86 and x32 ABIs; aarch64 with arm.
fn default_arches(native: Native) -> Vec<Arch> {
    match native {
        Native::X86_64 => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        Native::Aarch64 => vec![Arch::ScmpArchArm, Arch::ScmpArchAarch64],
    }
}

/// The default profile for a process with `ctx`'s capabilities.
pub fn default_profile(ctx: &Context<'_>) -> Result<LinuxSeccomp, SpecError> {
    let oci = |e: oci_spec::OciSpecError| SpecError::Oci(e);
    let mut syscalls = Vec::new();
    for r in DEFAULT_PROFILE {
        if !applies(
            (r.caps, r.arches, r.min_kernel),
            (r.not_caps, r.not_arches),
            ctx,
        ) {
            continue;
        }
        let args = r
            .args
            .iter()
            .map(|&(index, value, op)| {
                LinuxSeccompArgBuilder::default()
                    .index(index)
                    .value(value)
                    .op(op)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(oci)?;
        let (action, errno) = match r.errno {
            None => (LinuxSeccompAction::ScmpActAllow, None),
            Some(e) => (LinuxSeccompAction::ScmpActErrno, Some(e)),
        };
        let names = r.names.iter().map(|s| s.to_string()).collect();
        syscalls.push(syscall(names, action, errno, args).map_err(|reason| {
            SpecError::Seccomp {
                profile: "RuntimeDefault".into(),
                reason,
            }
        })?);
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .architectures(default_arches(ctx.arch))
        .syscalls(syscalls)
        .build()
        .map_err(oci)
}

#[cfg(test)]
mod tests;
