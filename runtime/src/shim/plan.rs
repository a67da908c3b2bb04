//! What the shim decides from the OCI spec, as plain data: which namespaces
//! to join and which to create, which mounts in which order with which
//! flags, where a program is on PATH, which cgroup directories a container
//! goes into, what exit code a wait status is. No syscalls here, so all of
//! it is unit-tested without root; `rootfs`, `spawn` and `cgroup` act on it.

#![deny(unsafe_code)]

use std::path::{Component, Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("the spec has no {0}")]
    Missing(&'static str),
    #[error(
        "namespace {0}: joining an existing mount namespace is not supported (the shim always creates one)"
    )]
    JoinMountNs(String),
    #[error(
        "a new user namespace per container is not supported: berth joins the pod's (give its path)"
    )]
    UserNs,
    #[error("mount {dest}: idmapped, but {reason}")]
    Idmap { dest: String, reason: String },
    #[error("namespace {kind} is listed twice")]
    DuplicateNs { kind: String },
    #[error("mount {dest}: {reason}")]
    Mount { dest: String, reason: String },
    #[error("cgroupsPath {path}: {reason}")]
    Cgroup { path: String, reason: String },
    #[error("sysctl {key}: not a valid name")]
    Sysctl { key: String },
}

/// A namespace kind the shim can join or create (user and time are not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsKind {
    Ipc,
    Uts,
    Net,
    Pid,
    Mount,
    Cgroup,
}

impl NsKind {
    pub fn clone_flag(self) -> CloneFlags {
        match self {
            NsKind::Ipc => CloneFlags::CLONE_NEWIPC,
            NsKind::Uts => CloneFlags::CLONE_NEWUTS,
            NsKind::Net => CloneFlags::CLONE_NEWNET,
            NsKind::Pid => CloneFlags::CLONE_NEWPID,
            NsKind::Mount => CloneFlags::CLONE_NEWNS,
            NsKind::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        }
    }

    /// The name under /proc/<pid>/ns/.
    pub fn proc_name(self) -> &'static str {
        match self {
            NsKind::Ipc => "ipc",
            NsKind::Uts => "uts",
            NsKind::Net => "net",
            NsKind::Pid => "pid",
            NsKind::Mount => "mnt",
            NsKind::Cgroup => "cgroup",
        }
    }
}

/// The PID namespace of the container process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PidNs {
    /// A new one: the process is its PID 1.
    New,
    /// An existing one (a pod's pause process): setns, then fork.
    Join(PathBuf),
    /// The shim's own (hostPID).
    Host,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespacePlan {
    /// Namespaces to setns into, before anything is created.
    pub join: Vec<(NsKind, PathBuf)>,
    /// Namespaces to unshare after joining; always has CLONE_NEWNS; never
    /// CLONE_NEWPID (see `pid`).
    pub create: CloneFlags,
    pub pid: PidNs,
    /// The pod's user namespace (KEP-127), joined last, just before exec:
    /// the shim mounts and sets up as the node's root, the program runs as
    /// the pod's.
    pub user: Option<PathBuf>,
}

impl NamespacePlan {
    pub fn from_spec(spec: &Spec) -> Result<Self, PlanError> {
        let mut join = Vec::new();
        let mut create = CloneFlags::CLONE_NEWNS;
        let mut pid = PidNs::Host;
        let mut user = None;
        let mut seen: Vec<LinuxNamespaceType> = Vec::new();
        let namespaces = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .map(|v| v.as_slice())
            .unwrap_or(&[]);
        for ns in namespaces {
            let typ = ns.typ();
            if seen.contains(&typ) {
                return Err(PlanError::DuplicateNs {
                    kind: typ.to_string(),
                });
            }
            seen.push(typ);
            let kind = match typ {
                LinuxNamespaceType::Ipc => NsKind::Ipc,
                LinuxNamespaceType::Uts => NsKind::Uts,
                LinuxNamespaceType::Network => NsKind::Net,
                LinuxNamespaceType::Pid => NsKind::Pid,
                LinuxNamespaceType::Cgroup => NsKind::Cgroup,
                LinuxNamespaceType::Mount => {
                    if let Some(p) = ns.path() {
                        return Err(PlanError::JoinMountNs(p.display().to_string()));
                    }
                    continue;
                }
                LinuxNamespaceType::User => match ns.path() {
                    Some(p) => {
                        user = Some(p.clone());
                        continue;
                    }
                    None => return Err(PlanError::UserNs),
                },
                // A time namespace would need clock offsets; none is asked
                // for by kubelet. Ignore rather than fail.
                LinuxNamespaceType::Time => continue,
            };
            match (kind, ns.path()) {
                (NsKind::Pid, Some(p)) => pid = PidNs::Join(p.clone()),
                (NsKind::Pid, None) => pid = PidNs::New,
                (k, Some(p)) => join.push((k, p.clone())),
                (k, None) => create |= k.clone_flag(),
            }
        }
        Ok(NamespacePlan {
            join,
            create,
            pid,
            user,
        })
    }

    pub fn new_uts(&self) -> bool {
        self.create.contains(CloneFlags::CLONE_NEWUTS)
    }

    pub fn new_cgroup(&self) -> bool {
        self.create.contains(CloneFlags::CLONE_NEWCGROUP)
    }
}

/// A path inside the container, made relative to its root: `.` and `..`
/// are resolved lexically and can never climb above the root. (Symlinks are
/// resolved later, by the kernel, inside the root: see `rootfs`.)
pub fn container_relative(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// What a mount entry is, once its type and options are read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountKind {
    /// A bind mount of a host path (`rbind`: with its submounts).
    Bind { source: PathBuf, recursive: bool },
    /// The container's cgroup, read-only (containerd's default `cgroup`
    /// mount on /sys/fs/cgroup).
    Cgroup,
    /// A filesystem mount: proc, sysfs, tmpfs, devpts, mqueue, …
    Fs { fstype: String, source: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountStep {
    /// Relative to the container root.
    pub dest: PathBuf,
    pub kind: MountKind,
    /// mount(2) flags: for a bind, applied by a remount after the bind.
    pub flags: MsFlags,
    /// Filesystem-specific options, comma separated.
    pub data: String,
    /// Propagation to set once mounted (MS_PRIVATE, MS_SLAVE… maybe MS_REC).
    pub propagation: Vec<MsFlags>,
    /// `rro` (runc's): a bind and every mount below it read-only
    /// (mount_setattr AT_RECURSIVE MOUNT_ATTR_RDONLY, Linux 5.12).
    pub recursive_readonly: bool,
    /// A bind seen through the pod's user namespace (an idmapped mount,
    /// MOUNT_ATTR_IDMAP): the mount's uid/gid mappings are the pod's.
    pub idmap: bool,
}

impl MountStep {
    /// A bind needs a second mount(2) to apply flags (ro, nosuid, …).
    pub fn needs_remount(&self) -> bool {
        matches!(self.kind, MountKind::Bind { .. })
            && !(self.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC)).is_empty()
    }

    /// /dev as a fresh filesystem: the shim fills it with device nodes.
    pub fn is_dev_fs(&self) -> bool {
        self.dest == Path::new("dev") && matches!(self.kind, MountKind::Fs { .. })
    }
}

/// One fstab option: a flag to set, a flag to clear, a propagation change,
/// or filesystem data.
enum MountOpt {
    Set(MsFlags),
    Clear(MsFlags),
    Propagation(MsFlags),
    Ignore,
    Data,
    RecursiveReadonly,
}

fn mount_opt(o: &str) -> MountOpt {
    use MountOpt::*;
    match o {
        "async" => Clear(MsFlags::MS_SYNCHRONOUS),
        "atime" => Clear(MsFlags::MS_NOATIME),
        "bind" => Set(MsFlags::MS_BIND),
        "defaults" => Ignore,
        "dev" => Clear(MsFlags::MS_NODEV),
        "diratime" => Clear(MsFlags::MS_NODIRATIME),
        "dirsync" => Set(MsFlags::MS_DIRSYNC),
        "exec" => Clear(MsFlags::MS_NOEXEC),
        "mand" => Set(MsFlags::MS_MANDLOCK),
        "noatime" => Set(MsFlags::MS_NOATIME),
        "nodev" => Set(MsFlags::MS_NODEV),
        "nodiratime" => Set(MsFlags::MS_NODIRATIME),
        "noexec" => Set(MsFlags::MS_NOEXEC),
        "nomand" => Clear(MsFlags::MS_MANDLOCK),
        "norelatime" => Clear(MsFlags::MS_RELATIME),
        "nostrictatime" => Clear(MsFlags::MS_STRICTATIME),
        "nosuid" => Set(MsFlags::MS_NOSUID),
        "rbind" => Set(MsFlags::MS_BIND | MsFlags::MS_REC),
        "relatime" => Set(MsFlags::MS_RELATIME),
        "ro" => Set(MsFlags::MS_RDONLY),
        "rw" => Clear(MsFlags::MS_RDONLY),
        "strictatime" => Set(MsFlags::MS_STRICTATIME),
        "suid" => Clear(MsFlags::MS_NOSUID),
        "sync" => Set(MsFlags::MS_SYNCHRONOUS),
        "private" => Propagation(MsFlags::MS_PRIVATE),
        "rprivate" => Propagation(MsFlags::MS_PRIVATE | MsFlags::MS_REC),
        "shared" => Propagation(MsFlags::MS_SHARED),
        "rshared" => Propagation(MsFlags::MS_SHARED | MsFlags::MS_REC),
        "slave" => Propagation(MsFlags::MS_SLAVE),
        "rslave" => Propagation(MsFlags::MS_SLAVE | MsFlags::MS_REC),
        "unbindable" => Propagation(MsFlags::MS_UNBINDABLE),
        "runbindable" => Propagation(MsFlags::MS_UNBINDABLE | MsFlags::MS_REC),
        // Options runc knows that change nothing here.
        "tmpcopyup" | "remount" => Ignore,
        "rro" => RecursiveReadonly,
        _ => Data,
    }
}

/// The spec's mounts, in order, as steps.
pub fn mount_plan(mounts: &[Mount]) -> Result<Vec<MountStep>, PlanError> {
    mounts.iter().map(mount_step).collect()
}

fn mount_step(m: &Mount) -> Result<MountStep, PlanError> {
    let dest_str = m.destination().display().to_string();
    let err = |reason: &str| PlanError::Mount {
        dest: dest_str.clone(),
        reason: reason.to_string(),
    };
    if !m.destination().is_absolute() {
        return Err(err("the destination must be an absolute path"));
    }
    let dest = container_relative(m.destination());
    if dest.as_os_str().is_empty() {
        return Err(err("cannot mount over the container root"));
    }
    let mut flags = MsFlags::empty();
    let mut propagation = Vec::new();
    let mut data: Vec<&str> = Vec::new();
    let mut recursive_readonly = false;
    for o in m.options().as_deref().unwrap_or(&[]) {
        match mount_opt(o) {
            MountOpt::RecursiveReadonly => recursive_readonly = true,
            MountOpt::Set(f) => flags |= f,
            MountOpt::Clear(f) => flags &= !f,
            MountOpt::Propagation(f) => propagation.push(f),
            MountOpt::Ignore => {}
            MountOpt::Data => data.push(o),
        }
    }
    let typ = m.typ().as_deref().unwrap_or("");
    let source = m
        .source()
        .as_ref()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let kind = if typ == "bind" || flags.contains(MsFlags::MS_BIND) {
        if source.is_empty() {
            return Err(err("a bind mount needs a source"));
        }
        if !Path::new(&source).is_absolute() {
            return Err(err("a bind mount source must be an absolute host path"));
        }
        let recursive = flags.contains(MsFlags::MS_REC);
        flags |= MsFlags::MS_BIND;
        MountKind::Bind {
            source: PathBuf::from(source),
            recursive,
        }
    } else if typ == "cgroup" || typ == "cgroup2" {
        MountKind::Cgroup
    } else if typ.is_empty() {
        return Err(err("no type and no bind option"));
    } else {
        MountKind::Fs {
            fstype: typ.to_string(),
            source: if source.is_empty() {
                typ.to_string()
            } else {
                source
            },
        }
    };
    if recursive_readonly && !matches!(kind, MountKind::Bind { .. }) {
        return Err(err("rro is for bind mounts"));
    }
    let some = |v: &Option<Vec<_>>| v.as_ref().is_some_and(|v| !v.is_empty());
    let idmap = match (some(m.uid_mappings()), some(m.gid_mappings())) {
        (false, false) => false,
        (true, true) if matches!(kind, MountKind::Bind { .. }) => true,
        (true, true) => return Err(err("idmapped mounts are for bind mounts")),
        _ => {
            return Err(err(
                "an idmapped mount needs both uidMappings and gidMappings",
            ));
        }
    };
    Ok(MountStep {
        dest,
        kind,
        flags,
        data: data.join(","),
        propagation,
        recursive_readonly,
        idmap,
    })
}

/// Idmapped mounts are seen through the one user namespace the shim has:
/// the pod's, which the spec joins, so their mappings must be its.
pub fn check_idmaps(spec: &Spec, ns: &NamespacePlan) -> Result<(), PlanError> {
    let linux = spec.linux().as_ref();
    let uid = linux.and_then(|l| l.uid_mappings().as_ref());
    let gid = linux.and_then(|l| l.gid_mappings().as_ref());
    for m in spec.mounts().as_deref().unwrap_or(&[]) {
        let (Some(mu), Some(mg)) = (m.uid_mappings(), m.gid_mappings()) else {
            continue;
        };
        if mu.is_empty() && mg.is_empty() {
            continue;
        }
        let err = |reason: &str| PlanError::Idmap {
            dest: m.destination().display().to_string(),
            reason: reason.to_string(),
        };
        if ns.user.is_none() {
            return Err(err("the container joins no user namespace"));
        }
        if Some(mu) != uid || Some(mg) != gid {
            return Err(err(
                "its mappings are not the container's user namespace's (linux.uidMappings/gidMappings)",
            ));
        }
    }
    Ok(())
}

/// `id` of the container's user namespace as the node's id, by `map`
/// (the spec's linux.uidMappings or gidMappings); `id` itself without
/// mappings, and the overflow id (65534) where none maps it.
pub fn host_id(map: Option<&[oci_spec::runtime::LinuxIdMapping]>, id: u32) -> u32 {
    let Some(map) = map.filter(|m| !m.is_empty()) else {
        return id;
    };
    map.iter()
        .find(|m| id >= m.container_id() && id - m.container_id() < m.size())
        .map_or(65534, |m| m.host_id() + (id - m.container_id()))
}

/// Propagation of the whole mount tree before the rootfs is set up:
/// spec.linux.rootfsPropagation, private by default.
pub fn rootfs_propagation(spec: &Spec) -> MsFlags {
    let p = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref())
        .unwrap_or("");
    match mount_opt(p) {
        MountOpt::Propagation(f) => f | MsFlags::MS_REC,
        _ => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
    }
}

/// A device node: the minimal set every container gets, plus the spec's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceNode {
    /// Relative to the container root (e.g. `dev/null`).
    pub path: PathBuf,
    /// `c`, `b` or `p`.
    pub kind: char,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The device nodes runc always creates.
const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("dev/null", 1, 3),
    ("dev/zero", 1, 5),
    ("dev/full", 1, 7),
    ("dev/random", 1, 8),
    ("dev/urandom", 1, 9),
    ("dev/tty", 5, 0),
];

pub fn device_plan(spec: &Spec) -> Vec<DeviceNode> {
    let mut out: Vec<DeviceNode> = DEFAULT_DEVICES
        .iter()
        .map(|&(p, major, minor)| DeviceNode {
            path: PathBuf::from(p),
            kind: 'c',
            major,
            minor,
            mode: 0o666,
            uid: 0,
            gid: 0,
        })
        .collect();
    let devices = spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref())
        .map(|v| v.as_slice())
        .unwrap_or(&[]);
    for d in devices {
        let path = container_relative(d.path());
        if !path.starts_with("dev") || path == Path::new("dev") {
            // Devices live in /dev; anything else is ignored as runc does
            // with paths it cannot place.
            continue;
        }
        let kind = match d.typ().as_str() {
            "b" => 'b',
            "p" => 'p',
            _ => 'c',
        };
        let node = DeviceNode {
            path,
            kind,
            major: u64::try_from(d.major()).unwrap_or(0),
            minor: u64::try_from(d.minor()).unwrap_or(0),
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        };
        match out.iter_mut().find(|n| n.path == node.path) {
            Some(existing) => *existing = node,
            None => out.push(node),
        }
    }
    out
}

/// The /dev symlinks every container gets: (link, target).
pub const DEV_SYMLINKS: [(&str, &str); 5] = [
    ("dev/fd", "/proc/self/fd"),
    ("dev/stdin", "/proc/self/fd/0"),
    ("dev/stdout", "/proc/self/fd/1"),
    ("dev/stderr", "/proc/self/fd/2"),
    ("dev/ptmx", "pts/ptmx"),
];

/// The file under /proc/sys for a sysctl key (`net.ipv4.ip_forward` →
/// `net/ipv4/ip_forward`), refusing names that would leave /proc/sys.
pub fn sysctl_path(key: &str) -> Result<PathBuf, PlanError> {
    let bad = || PlanError::Sysctl {
        key: key.to_string(),
    };
    if key.is_empty() || key.contains('/') || key.contains('\0') {
        return Err(bad());
    }
    let mut p = PathBuf::from("/proc/sys");
    for part in key.split('.') {
        if part.is_empty() {
            return Err(bad());
        }
        p.push(part);
    }
    Ok(p)
}

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where `program` is: itself if it has a '/', else the first directory of
/// the environment's PATH (or the default PATH) where `is_executable` says
/// there is one. Empty PATH entries mean the working directory, as in sh.
pub fn lookup_path(
    program: &str,
    env: &[String],
    is_executable: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .map(|dir| {
            if dir.is_empty() {
                PathBuf::from(".").join(program)
            } else {
                Path::new(dir).join(program)
            }
        })
        .find(|candidate| is_executable(candidate))
}

/// The exit code the way runc and kubelet report it: the code, or
/// 128 + the signal that killed the process.
pub fn exit_code(status: nix::sys::wait::WaitStatus) -> Option<(i32, Option<i32>)> {
    use nix::sys::wait::WaitStatus;
    match status {
        WaitStatus::Exited(_, code) => Some((code, None)),
        WaitStatus::Signaled(_, sig, _) => Some((128 + sig as i32, Some(sig as i32))),
        _ => None,
    }
}

/// A cgroup v1 hierarchy from /proc/self/mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    pub mountpoint: PathBuf,
    /// Controllers (and `name=` of named hierarchies) from the super options.
    pub controllers: Vec<String>,
}

/// The cgroup v1 hierarchies in a mountinfo text.
pub fn parse_cgroup_v1_mounts(mountinfo: &str) -> Vec<Hierarchy> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        // 36 35 0:30 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split(' ');
        if r.next() != Some("cgroup") {
            continue;
        }
        let _source = r.next();
        let Some(opts) = r.next() else { continue };
        let Some(mountpoint) = left.split(' ').nth(4) else {
            continue;
        };
        let controllers = opts
            .split(',')
            .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains("relatime"))
            .filter(|o| !o.starts_with("release_agent=") && *o != "clone_children")
            .map(str::to_string)
            .collect();
        out.push(Hierarchy {
            mountpoint: PathBuf::from(unescape_mountinfo(mountpoint)),
            controllers,
        });
    }
    out
}

/// The mount point of the mount that holds `path` (the longest mount point
/// that is a prefix of it), when that mount is shared: it must be made
/// private before the rootfs is bound and pivoted (runc's
/// rootfsParentMountPrivate), or pivot_root fails with EINVAL and the
/// container's mounts would propagate to the host.
pub fn shared_parent_mount(mountinfo: &str, path: &Path) -> Option<PathBuf> {
    mount_holding(mountinfo, path)
        .filter(|(_, tags)| tags.iter().any(|t| t.starts_with("shared:")))
        .map(|(mp, _)| mp)
}

/// The mount that holds `path` in a mountinfo text (the longest mount point
/// that is a prefix of it; the last one of stacked mounts): its mount point
/// and its propagation tags (`shared:N`, `master:N`…).
pub fn mount_holding(mountinfo: &str, path: &Path) -> Option<(PathBuf, Vec<String>)> {
    let mut best: Option<(PathBuf, Vec<String>)> = None;
    for line in mountinfo.lines() {
        let Some((left, _)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let Some(mp) = fields.get(4) else { continue };
        let mp = PathBuf::from(unescape_mountinfo(mp));
        if !path.starts_with(&mp) {
            continue;
        }
        if best
            .as_ref()
            .is_none_or(|(b, _)| mp.as_os_str().len() >= b.as_os_str().len())
        {
            let tags = fields.iter().skip(6).map(|t| t.to_string()).collect();
            best = Some((mp, tags));
        }
    }
    best
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|o| b[i] == b'\\' && o.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let Some(byte) = oct.and_then(|o| {
            let v = o.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            u8::try_from(v).ok()
        }) {
            out.push(byte);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The directories a container with `cgroups_path` goes into: on v2 one
/// directory (absolute under /sys/fs/cgroup, or relative to it); on v1
/// either one absolute directory inside a hierarchy or, for a path
/// relative to the hierarchies, that path in each of them (the caller keeps
/// those that exist).
pub fn cgroup_candidates(
    v2: bool,
    cgroups_path: &Path,
    hierarchies: &[Hierarchy],
) -> Result<Vec<PathBuf>, PlanError> {
    let err = |reason: &str| PlanError::Cgroup {
        path: cgroups_path.display().to_string(),
        reason: reason.to_string(),
    };
    if cgroups_path
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(err("must not contain '..'"));
    }
    let rel_to = |root: &Path| -> Option<PathBuf> {
        let rest = cgroups_path.strip_prefix(root).ok()?;
        (!rest.as_os_str().is_empty()).then(|| root.join(rest))
    };
    if v2 {
        if let Some(p) = rel_to(Path::new(CGROUP_ROOT)) {
            return Ok(vec![p]);
        }
        let rel = container_relative(cgroups_path);
        if rel.as_os_str().is_empty() {
            return Err(err("is the root cgroup"));
        }
        return Ok(vec![Path::new(CGROUP_ROOT).join(rel)]);
    }
    for h in hierarchies {
        if let Some(p) = rel_to(&h.mountpoint) {
            return Ok(vec![p]);
        }
    }
    let rel = container_relative(cgroups_path);
    if rel.as_os_str().is_empty() {
        return Err(err("is the root cgroup"));
    }
    Ok(hierarchies
        .iter()
        .map(|h| h.mountpoint.join(&rel))
        .collect())
}

/// The `oom_kill` counter from memory.events (v2) or memory.oom_control (v1).
pub fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, MountBuilder, SpecBuilder};

    fn ns(typ: LinuxNamespaceType, path: Option<&str>) -> oci_spec::runtime::LinuxNamespace {
        let b = LinuxNamespaceBuilder::default().typ(typ);
        match path {
            Some(p) => b.path(p).build().unwrap(),
            None => b.build().unwrap(),
        }
    }

    fn spec_with_ns(list: Vec<oci_spec::runtime::LinuxNamespace>) -> Spec {
        SpecBuilder::default()
            .linux(LinuxBuilder::default().namespaces(list).build().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn pod_namespaces_are_joined_and_the_rest_created() {
        let spec = spec_with_ns(vec![
            ns(LinuxNamespaceType::Pid, None),
            ns(LinuxNamespaceType::Network, Some("/run/berth/ns/net-x")),
            ns(LinuxNamespaceType::Ipc, Some("/run/berth/ns/ipc-x")),
            ns(LinuxNamespaceType::Uts, None),
            ns(LinuxNamespaceType::Mount, None),
        ]);
        let plan = NamespacePlan::from_spec(&spec).unwrap();
        assert_eq!(plan.pid, PidNs::New);
        assert_eq!(
            plan.join,
            vec![
                (NsKind::Net, PathBuf::from("/run/berth/ns/net-x")),
                (NsKind::Ipc, PathBuf::from("/run/berth/ns/ipc-x")),
            ]
        );
        assert_eq!(
            plan.create,
            CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS
        );
        assert!(plan.new_uts());
    }

    #[test]
    fn a_shared_pid_namespace_is_joined_and_host_pid_is_neither() {
        let spec = spec_with_ns(vec![ns(LinuxNamespaceType::Pid, Some("/proc/42/ns/pid"))]);
        let plan = NamespacePlan::from_spec(&spec).unwrap();
        assert_eq!(plan.pid, PidNs::Join("/proc/42/ns/pid".into()));
        assert_eq!(
            plan.create,
            CloneFlags::CLONE_NEWNS,
            "mount ns is always new"
        );
        let plan = NamespacePlan::from_spec(&spec_with_ns(vec![])).unwrap();
        assert_eq!(plan.pid, PidNs::Host);
    }

    #[test]
    fn unsupported_namespaces_are_refused_clearly() {
        let e = NamespacePlan::from_spec(&spec_with_ns(vec![ns(LinuxNamespaceType::User, None)]));
        assert_eq!(e.unwrap_err(), PlanError::UserNs);
        // The pod's, by its path: joined (last, by the process itself).
        let plan = NamespacePlan::from_spec(&spec_with_ns(vec![ns(
            LinuxNamespaceType::User,
            Some("/run/berth/pods/p/user"),
        )]))
        .unwrap();
        assert_eq!(plan.user, Some(PathBuf::from("/run/berth/pods/p/user")));
        assert!(plan.join.is_empty());
        assert_eq!(plan.create, CloneFlags::CLONE_NEWNS);
        let e = NamespacePlan::from_spec(&spec_with_ns(vec![ns(
            LinuxNamespaceType::Mount,
            Some("/proc/1/ns/mnt"),
        )]));
        assert!(matches!(e, Err(PlanError::JoinMountNs(_))));
        let e = NamespacePlan::from_spec(&spec_with_ns(vec![
            ns(LinuxNamespaceType::Ipc, None),
            ns(LinuxNamespaceType::Ipc, None),
        ]));
        assert!(matches!(e, Err(PlanError::DuplicateNs { .. })));
    }

    #[test]
    fn container_paths_never_climb_above_the_root() {
        assert_eq!(
            container_relative(Path::new("/etc/hosts")),
            PathBuf::from("etc/hosts")
        );
        assert_eq!(
            container_relative(Path::new("/../../etc")),
            PathBuf::from("etc")
        );
        assert_eq!(
            container_relative(Path::new("/a/./b/../c")),
            PathBuf::from("a/c")
        );
        assert_eq!(container_relative(Path::new("/")), PathBuf::new());
    }

    fn mount(dest: &str, typ: &str, src: &str, opts: &[&str]) -> Mount {
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(src)
            .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap()
    }

    #[test]
    fn rro_marks_a_bind_recursive_read_only_and_is_refused_elsewhere() {
        let plan = mount_plan(&[
            mount("/data", "bind", "/srv", &["rbind", "rprivate", "ro", "rro"]),
            mount("/plain", "bind", "/srv", &["rbind", "ro"]),
        ])
        .unwrap();
        assert!(plan[0].recursive_readonly);
        assert!(
            plan[0].flags.contains(MsFlags::MS_RDONLY),
            "ro stays for the top"
        );
        assert!(plan[0].data.is_empty(), "rro is no filesystem option");
        assert!(!plan[1].recursive_readonly);
        let e = mount_plan(&[mount("/t", "tmpfs", "tmpfs", &["rro"])]).unwrap_err();
        assert!(e.to_string().contains("rro is for bind mounts"), "{e}");
    }

    #[test]
    fn the_shared_mount_holding_the_rootfs_is_found() {
        let mi = "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                  40 27 0:50 / /run rw shared:5 - tmpfs tmpfs rw\n\
                  41 40 0:51 / /run/b rw - tmpfs tmpfs rw\n";
        assert_eq!(
            shared_parent_mount(mi, Path::new("/run/berth/c/rootfs")),
            Some(PathBuf::from("/run"))
        );
        assert_eq!(shared_parent_mount(mi, Path::new("/run/b/rootfs")), None);
        assert_eq!(
            shared_parent_mount(mi, Path::new("/var/x")),
            Some(PathBuf::from("/"))
        );
    }

    #[test]
    fn mount_options_become_flags_data_and_propagation() {
        let plan = mount_plan(&[
            mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount(
                "/dev",
                "tmpfs",
                "tmpfs",
                &["nosuid", "strictatime", "mode=755", "size=65536k"],
            ),
            mount(
                "/dev/pts",
                "devpts",
                "devpts",
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5",
                ],
            ),
            mount(
                "/sys",
                "sysfs",
                "sysfs",
                &["nosuid", "noexec", "nodev", "ro"],
            ),
            mount(
                "/etc/hosts",
                "bind",
                "/run/berth/p/hosts",
                &["rbind", "rprivate", "ro"],
            ),
            mount("/data", "", "/srv/data", &["bind", "rslave"]),
        ])
        .unwrap();
        assert_eq!(plan[0].dest, PathBuf::from("proc"));
        assert_eq!(
            plan[0].flags,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV
        );
        assert!(plan[1].is_dev_fs());
        assert_eq!(plan[1].data, "mode=755,size=65536k");
        assert_eq!(plan[2].data, "newinstance,ptmxmode=0666,mode=0620,gid=5");
        assert!(plan[3].flags.contains(MsFlags::MS_RDONLY));
        assert_eq!(
            plan[4].kind,
            MountKind::Bind {
                source: "/run/berth/p/hosts".into(),
                recursive: true
            }
        );
        assert!(plan[4].needs_remount(), "ro on a bind needs a remount");
        assert_eq!(
            plan[4].propagation,
            vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]
        );
        assert!(!plan[5].needs_remount());
        assert_eq!(
            plan[5].propagation,
            vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]
        );
        assert_eq!(
            plan[5].kind,
            MountKind::Bind {
                source: "/srv/data".into(),
                recursive: false
            }
        );
    }

    #[test]
    fn bad_mounts_are_refused_with_their_destination() {
        let e = mount_plan(&[mount("relative", "tmpfs", "tmpfs", &[])]).unwrap_err();
        assert!(e.to_string().contains("relative"), "{e}");
        let e = mount_plan(&[mount("/", "tmpfs", "tmpfs", &[])]).unwrap_err();
        assert!(e.to_string().contains("root"), "{e}");
        let e = mount_plan(&[mount("/x", "bind", "rel/src", &["rbind"])]).unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
    }

    #[test]
    fn devices_are_the_default_set_plus_the_spec_ones() {
        let spec = SpecBuilder::default()
            .linux(
                LinuxBuilder::default()
                    .devices(vec![
                        oci_spec::runtime::LinuxDeviceBuilder::default()
                            .path("/dev/fuse")
                            .typ(oci_spec::runtime::LinuxDeviceType::C)
                            .major(10)
                            .minor(229)
                            .file_mode(0o600u32)
                            .build()
                            .unwrap(),
                    ])
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let devs = device_plan(&spec);
        assert_eq!(devs.len(), 7);
        assert_eq!(devs[0].path, PathBuf::from("dev/null"));
        let fuse = devs
            .iter()
            .find(|d| d.path == Path::new("dev/fuse"))
            .unwrap();
        assert_eq!(
            (fuse.kind, fuse.major, fuse.minor, fuse.mode),
            ('c', 10, 229, 0o600)
        );
    }

    #[test]
    fn sysctl_keys_map_into_proc_sys_only() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert!(sysctl_path("net/../../etc").is_err());
        assert!(sysctl_path("net..x").is_err());
        assert!(sysctl_path("").is_err());
    }

    #[test]
    fn path_lookup_follows_the_process_path() {
        let env = vec!["HOME=/".to_string(), "PATH=/usr/bin:/bin".to_string()];
        let exists = |p: &Path| p == Path::new("/bin/sh") || p == Path::new("/usr/local/bin/x");
        assert_eq!(
            lookup_path("sh", &env, exists),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(lookup_path("x", &env, exists), None, "not on this PATH");
        assert_eq!(
            lookup_path("x", &[], exists),
            Some(PathBuf::from("/usr/local/bin/x"))
        );
        assert_eq!(
            lookup_path("./run.sh", &env, exists),
            Some(PathBuf::from("./run.sh")),
            "a name with a slash is used as it is"
        );
        assert_eq!(lookup_path("", &env, exists), None);
    }

    #[test]
    fn exit_codes_are_the_code_or_128_plus_the_signal() {
        use nix::sys::signal::Signal;
        use nix::sys::wait::WaitStatus;
        use nix::unistd::Pid;
        let p = Pid::from_raw(7);
        assert_eq!(exit_code(WaitStatus::Exited(p, 3)), Some((3, None)));
        assert_eq!(
            exit_code(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            Some((137, Some(9)))
        );
        assert_eq!(
            exit_code(WaitStatus::Signaled(p, Signal::SIGTERM, true)),
            Some((143, Some(15)))
        );
        assert_eq!(exit_code(WaitStatus::StillAlive), None);
    }

    const MOUNTINFO: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
36 25 0:31 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
37 36 0:32 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
40 36 0:35 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
41 36 0:36 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
42 36 0:37 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,xattr,name=systemd
";

    #[test]
    fn cgroup_v1_hierarchies_come_from_mountinfo() {
        let h = parse_cgroup_v1_mounts(MOUNTINFO);
        assert_eq!(h.len(), 3);
        assert_eq!(h[0].mountpoint, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(h[0].controllers, vec!["memory"]);
        assert_eq!(h[1].controllers, vec!["cpu", "cpuacct"]);
        assert!(h[2].controllers.contains(&"name=systemd".to_string()));
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
    }

    #[test]
    fn cgroup_paths_resolve_per_version() {
        let h = parse_cgroup_v1_mounts(MOUNTINFO);
        assert_eq!(
            cgroup_candidates(true, Path::new("/sys/fs/cgroup/kubepods/pod1/c1"), &[]).unwrap(),
            vec![PathBuf::from("/sys/fs/cgroup/kubepods/pod1/c1")]
        );
        assert_eq!(
            cgroup_candidates(true, Path::new("/kubepods/c1"), &[]).unwrap(),
            vec![PathBuf::from("/sys/fs/cgroup/kubepods/c1")]
        );
        assert_eq!(
            cgroup_candidates(false, Path::new("/kubepods/c1"), &h).unwrap(),
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/kubepods/c1"),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/kubepods/c1"),
                PathBuf::from("/sys/fs/cgroup/systemd/kubepods/c1"),
            ]
        );
        assert_eq!(
            cgroup_candidates(false, Path::new("/sys/fs/cgroup/memory/k/c1"), &h).unwrap(),
            vec![PathBuf::from("/sys/fs/cgroup/memory/k/c1")]
        );
        assert!(cgroup_candidates(false, Path::new("/k/../../etc"), &h).is_err());
        assert!(cgroup_candidates(true, Path::new("/"), &h).is_err());
    }

    #[test]
    fn oom_kill_counters_parse_from_both_versions() {
        assert_eq!(
            parse_oom_kill("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n"),
            Some(2)
        );
        assert_eq!(
            parse_oom_kill("oom_kill_disable 0\nunder_oom 0\noom_kill 5\n"),
            Some(5)
        );
        assert_eq!(parse_oom_kill("oom_kill_disable 0\nunder_oom 0\n"), None);
    }

    #[test]
    fn idmapped_binds_must_use_the_containers_user_namespace() {
        use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder};
        let map = |h: u32| -> LinuxIdMapping {
            LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(h)
                .size(65536u32)
                .build()
                .unwrap()
        };
        let spec_of = |userns: bool, mount_host: u32, gid: bool| {
            let mut m = MountBuilder::default()
                .destination("/data")
                .typ("bind")
                .source("/srv/data")
                .options(vec!["rbind".to_string()])
                .build()
                .unwrap();
            // (oci-spec's builder refuses one without the other; a
            // bundle's JSON may still have it.)
            m.set_uid_mappings(Some(vec![map(mount_host)]));
            if gid {
                m.set_gid_mappings(Some(vec![map(mount_host)]));
            }
            let mut linux = LinuxBuilder::default()
                .uid_mappings(vec![map(100000)])
                .gid_mappings(vec![map(100000)])
                .build()
                .unwrap();
            if userns {
                linux.set_namespaces(Some(vec![ns(
                    LinuxNamespaceType::User,
                    Some("/run/berth/pods/p/user"),
                )]));
            }
            SpecBuilder::default()
                .linux(linux)
                .mounts(vec![m])
                .build()
                .unwrap()
        };
        let check = |s: &Spec| {
            let plan = NamespacePlan::from_spec(s)?;
            check_idmaps(s, &plan)?;
            mount_plan(s.mounts().as_deref().unwrap())
        };
        let steps = check(&spec_of(true, 100000, true)).unwrap();
        assert!(steps[0].idmap);
        assert!(matches!(
            check(&spec_of(true, 200000, true)),
            Err(PlanError::Idmap { .. })
        ));
        assert!(matches!(
            check(&spec_of(false, 100000, true)),
            Err(PlanError::Idmap { .. })
        ));
        assert!(matches!(
            check(&spec_of(true, 100000, false)),
            Err(PlanError::Mount { .. })
        ));
    }

    #[test]
    fn ids_map_to_the_node_through_the_spec_mappings() {
        use oci_spec::runtime::LinuxIdMappingBuilder;
        let m = vec![
            LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(100000u32)
                .size(10u32)
                .build()
                .unwrap(),
        ];
        assert_eq!(host_id(Some(&m), 0), 100000);
        assert_eq!(host_id(Some(&m), 5), 100005);
        assert_eq!(host_id(Some(&m), 10), 65534, "unmapped: the overflow id");
        assert_eq!(host_id(None, 5), 5);
        assert_eq!(host_id(Some(&[]), 5), 5);
    }
}
