//! cgroup v1 and v2 behind one interface, chosen once at start (youki's
//! `libcgroups/src/common.rs` is the model).
//!
//! berth uses the cgroupfs driver. A pod's cgroup is the `cgroup_parent`
//! kubelet sends (`/kubepods/burstable/pod<uid>`, which kubelet usually made
//! already), or `berth/<sandbox id>` when there is none (crictl, tests); each
//! container gets a cgroup named by its id under the pod's, and so does the
//! pod's pause process. A parent in systemd form
//! (`kubepods-burstable-pod<uid>.slice`) is taken as a plain relative path
//! too: it lands at the top of the hierarchy, not where systemd would nest
//! it, which is right only for a kubelet also on cgroupfs.
//!
//! berthd creates a container's cgroup and applies its resources before the
//! shim starts; the shim finds it from `linux.cgroupsPath`
//! ([`CgroupManager::spec_path`]) and enters it. Everything here is blocking
//! file I/O on cgroupfs: call it from a blocking thread.
//!
//! All paths hang off a root (`/sys/fs/cgroup`, or a temporary directory that
//! mimics it in tests), so the logic is tested without root.

mod bpf;
pub use bpf::device_programs;
pub use usage::CgroupUsage;
mod devices;
pub mod usage;
mod v1;
mod v2;

use std::fs;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::statfs::{CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, TMPFS_MAGIC, statfs};
use oci_spec::runtime::LinuxResources;

pub use v1::V1;
pub use v2::V2;

/// Where the cgroup filesystems are mounted on a Linux node.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("invalid cgroup path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("{} is neither cgroup v2 nor a tmpfs of cgroup v1 hierarchies (filesystem type {magic})", root.display())]
    UnknownFilesystem { root: PathBuf, magic: String },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup {} still busy after {tries} attempts to remove it (processes left?)", path.display())]
    Busy { path: PathBuf, tries: u32 },
    #[error("cgroup v1 has no {0} controller mounted")]
    NoController(&'static str),
    #[error("{0}")]
    Unsupported(String),
    #[error("invalid resources: {0}")]
    InvalidResources(String),
}

fn io_err(op: impl Into<String>, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let op = op.into();
    let path = path.to_path_buf();
    move |source| CgroupError::Io { op, path, source }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// A cgroup's place in the hierarchy: relative, normalised, never climbing
/// (`kubepods/burstable/pod123/ctr456`). Empty is the root cgroup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct CgroupPath(String);

impl CgroupPath {
    /// From a cgroupfs-style path, absolute or not (`/kubepods/pod1`).
    pub fn new(path: &str) -> Result<Self, CgroupError> {
        let bad = |reason: &str| CgroupError::InvalidPath {
            path: path.to_string(),
            reason: reason.to_string(),
        };
        if path.contains('\0') {
            return Err(bad("contains a NUL byte"));
        }
        let mut parts: Vec<&str> = Vec::new();
        for c in Path::new(path).components() {
            match c {
                Component::RootDir => {}
                Component::Normal(s) => parts.push(s.to_str().ok_or_else(|| bad("not UTF-8"))?),
                Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                    return Err(bad("must not contain '.' or '..'"));
                }
            }
        }
        Ok(Self(parts.join("/")))
    }

    /// A child cgroup (`name` is one path component).
    pub fn join(&self, name: &str) -> Result<Self, CgroupError> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(CgroupError::InvalidPath {
                path: format!("{}/{name}", self.0),
                reason: format!("{name:?} is not one path component"),
            });
        }
        Self::new(&format!("{}/{name}", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The ancestors from the top down, then this path itself.
    fn levels(&self) -> Vec<CgroupPath> {
        let mut out = Vec::new();
        let mut cur = String::new();
        for part in self.0.split('/').filter(|p| !p.is_empty()) {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(part);
            out.push(CgroupPath(cur.clone()));
        }
        out
    }

    /// This path under a hierarchy's mount point.
    fn under(&self, root: &Path) -> PathBuf {
        if self.0.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&self.0)
        }
    }
}

impl std::fmt::Display for CgroupPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{}", self.0)
    }
}

/// A pod's cgroup: the `cgroup_parent` kubelet gave, or `berth/<sandbox id>`
/// without one.
pub fn pod_cgroup_path(cgroup_parent: &str, sandbox_id: &str) -> Result<CgroupPath, CgroupError> {
    let parent = CgroupPath::new(cgroup_parent)?;
    if parent.is_root() {
        CgroupPath::new("berth")?.join(sandbox_id)
    } else {
        Ok(parent)
    }
}

/// What berth does with a cgroup, for v1 and v2 alike.
pub trait CgroupManager {
    fn version(&self) -> CgroupVersion;

    /// Make the cgroup and its missing ancestors, ready for processes (on v2
    /// the ancestors delegate their controllers; on v1 a new cpuset gets its
    /// parent's cpus and mems). Whether the cgroup itself was made now:
    /// false if it existed, and then whoever made it removes it.
    fn create(&self, path: &CgroupPath) -> Result<bool, CgroupError>;

    /// Write the limits of an OCI `linux.resources`; v1 refuses `unified`.
    /// `devices` are written to `devices.allow`/`devices.deny` on v1; v2 has
    /// no device controller, so there they become an eBPF program attached
    /// to the cgroup (`BPF_CGROUP_DEVICE`, Linux 4.15; replacing an earlier
    /// one atomically needs 5.6), with the same meaning: see
    /// `devices.rs` and `bpf.rs`. Either way they hold before the shim puts
    /// a process into the cgroup. Absent or empty `devices` leave the
    /// cgroup's device rules as they are.
    fn apply(&self, path: &CgroupPath, resources: &LinuxResources) -> Result<(), CgroupError>;

    /// Move a process into the cgroup.
    fn add_process(&self, path: &CgroupPath, pid: i32) -> Result<(), CgroupError>;

    /// The processes in it (none if it does not exist).
    fn pids(&self, path: &CgroupPath) -> Result<Vec<i32>, CgroupError>;

    /// How many times the kernel's OOM killer killed in it (0 if unknown).
    fn oom_kill_count(&self, path: &CgroupPath) -> Result<u64, CgroupError>;

    /// What it has used (stats); a counter the node lacks is None.
    fn usage(&self, path: &CgroupPath) -> CgroupUsage;

    /// Signal every process in it (v2 with SIGKILL: `cgroup.kill`, which
    /// also catches processes forking meanwhile).
    fn kill_all(&self, path: &CgroupPath, signal: Signal) -> Result<(), CgroupError> {
        signal_pids(&self.pids(path)?, signal)
    }

    /// Remove it and any cgroups below it, once their processes are gone:
    /// retried a few times while the kernel says busy. A missing cgroup is
    /// fine.
    fn remove(&self, path: &CgroupPath) -> Result<(), CgroupError>;

    fn exists(&self, path: &CgroupPath) -> bool;

    /// `linux.cgroupsPath` as agreed with the shim: on v2 the cgroup's
    /// absolute directory, on v1 the path relative to every hierarchy.
    fn spec_path(&self, path: &CgroupPath) -> String;
}

/// The node's cgroups, v1 or v2, detected once.
#[derive(Clone, Debug)]
pub enum Cgroups {
    V1(V1),
    V2(V2),
}

impl Cgroups {
    /// Detect at /sys/fs/cgroup.
    pub fn detect() -> Result<Self, CgroupError> {
        Self::detect_at(Path::new(DEFAULT_ROOT))
    }

    /// Detect from the filesystem mounted at `root`: cgroup2 is v2; a tmpfs
    /// holds v1 hierarchies (possibly with a v2 `unified` one beside them,
    /// "hybrid", which berth leaves alone).
    pub fn detect_at(root: &Path) -> Result<Self, CgroupError> {
        let fs_type = statfs(root)
            .map_err(|e| io_err("statfs", root)(e.into()))?
            .filesystem_type();
        if fs_type == CGROUP2_SUPER_MAGIC {
            Ok(Cgroups::V2(V2::at(root)?))
        } else if fs_type == TMPFS_MAGIC {
            let mountinfo = fs::read_to_string("/proc/self/mountinfo")
                .map_err(io_err("reading", Path::new("/proc/self/mountinfo")))?;
            let hierarchies = v1::hierarchies_from_mountinfo(&mountinfo, root)
                .into_iter()
                .filter(|h| statfs(&h.dir).is_ok_and(|s| s.filesystem_type() == CGROUP_SUPER_MAGIC))
                .collect();
            Ok(Cgroups::V1(V1::new(root, hierarchies)))
        } else {
            Err(CgroupError::UnknownFilesystem {
                root: root.to_path_buf(),
                magic: format!("{:#x}", fs_type.0),
            })
        }
    }

    fn inner(&self) -> &dyn CgroupManager {
        match self {
            Cgroups::V1(m) => m,
            Cgroups::V2(m) => m,
        }
    }
}

impl CgroupManager for Cgroups {
    fn version(&self) -> CgroupVersion {
        self.inner().version()
    }
    fn create(&self, path: &CgroupPath) -> Result<bool, CgroupError> {
        self.inner().create(path)
    }
    fn apply(&self, path: &CgroupPath, resources: &LinuxResources) -> Result<(), CgroupError> {
        self.inner().apply(path, resources)
    }
    fn add_process(&self, path: &CgroupPath, pid: i32) -> Result<(), CgroupError> {
        self.inner().add_process(path, pid)
    }
    fn pids(&self, path: &CgroupPath) -> Result<Vec<i32>, CgroupError> {
        self.inner().pids(path)
    }
    fn oom_kill_count(&self, path: &CgroupPath) -> Result<u64, CgroupError> {
        self.inner().oom_kill_count(path)
    }
    fn usage(&self, path: &CgroupPath) -> CgroupUsage {
        self.inner().usage(path)
    }
    fn kill_all(&self, path: &CgroupPath, signal: Signal) -> Result<(), CgroupError> {
        self.inner().kill_all(path, signal)
    }
    fn remove(&self, path: &CgroupPath) -> Result<(), CgroupError> {
        self.inner().remove(path)
    }
    fn exists(&self, path: &CgroupPath) -> bool {
        self.inner().exists(path)
    }
    fn spec_path(&self, path: &CgroupPath) -> String {
        self.inner().spec_path(path)
    }
}

// ---------------------------------------------------------------------------
// Conversions shared by v1 and v2

/// cgroup v2 `cpu.weight` for v1 `cpu.shares` (the kernel's and runc's
/// conversion: 2..=262144 onto 1..=10000). 0 (unset) stays 0.
pub fn cpu_shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// The value of v2 `cpu.max` for a CFS quota and period, as runc writes it:
/// `max` for no quota; the period only when given.
pub fn cpu_max(quota: Option<i64>, period: Option<u64>) -> Option<String> {
    let quota = quota.filter(|q| *q != 0);
    let period = period.filter(|p| *p != 0);
    if quota.is_none() && period.is_none() {
        return None;
    }
    let mut v = match quota {
        Some(q) if q > 0 => q.to_string(),
        _ => "max".to_string(),
    };
    if let Some(p) = period {
        v.push(' ');
        v.push_str(&p.to_string());
    }
    Some(v)
}

/// v2 `memory.swap.max` from the OCI swap limit, which counts memory plus
/// swap (v1's memsw): swap alone is their difference. None: leave it.
pub fn swap_max_v2(memory: Option<i64>, swap: Option<i64>) -> Result<Option<String>, CgroupError> {
    let Some(swap) = swap.filter(|s| *s != 0) else {
        return Ok(None);
    };
    if swap == -1 {
        return Ok(Some("max".into()));
    }
    match memory {
        None | Some(0) => Err(CgroupError::InvalidResources(
            "a swap limit needs a memory limit".into(),
        )),
        Some(-1) => Err(CgroupError::InvalidResources(
            "a swap limit cannot go with an unlimited memory limit".into(),
        )),
        Some(m) if swap < m => Err(CgroupError::InvalidResources(format!(
            "memory+swap limit {swap} is below the memory limit {m}"
        ))),
        Some(m) => Ok(Some((swap - m).to_string())),
    }
}

/// `-1` or below is "no limit" for cgroup files that say `max`.
fn limit_or_max(v: i64) -> String {
    if v < 0 { "max".into() } else { v.to_string() }
}

/// A hugetlb page size as the kernel names its files (`2MB`, `1GB`).
fn hugetlb_size(page_size: &str) -> Result<&str, CgroupError> {
    if crate::model::hugepage_size_bytes(page_size).is_none() {
        return Err(CgroupError::InvalidResources(format!(
            "{page_size:?} is not a hugepage size like 2MB"
        )));
    }
    Ok(page_size)
}

// ---------------------------------------------------------------------------
// File helpers

/// Write a control file (cgroupfs files exist already; in tests they are made).
fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err(format!("writing {value:?} to"), path))
}

/// A control file's content, None if it does not exist.
fn read_file(path: &Path) -> Result<Option<String>, CgroupError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("reading", path)(e)),
    }
}

/// Make `dir` and its missing parents; whether `dir` itself is new.
fn mkdir_all(dir: &Path) -> Result<bool, CgroupError> {
    // The leaf first: its parent (the pod's, for a container) is there
    // almost always, and each lookup on cgroupfs costs.
    match fs::create_dir(dir) {
        Ok(()) => return Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => return Ok(false),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("creating cgroup", dir)(e)),
    }
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).map_err(io_err("creating cgroup", parent))?;
    }
    match fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_err("creating cgroup", dir)(e)),
    }
}

fn parse_pids(text: &str) -> Vec<i32> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// The `oom_kill` counter of memory.events (v2) or memory.oom_control (v1).
fn parse_oom_kill(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn signal_pids(pids: &[i32], signal: Signal) -> Result<(), CgroupError> {
    for &pid in pids {
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => {
                return Err(CgroupError::Io {
                    op: format!("sending {signal} to"),
                    path: PathBuf::from(format!("/proc/{pid}")),
                    source: e.into(),
                });
            }
        }
    }
    Ok(())
}

/// Attempts and first wait for a cgroup the kernel still calls busy (its
/// last processes are being reaped); the wait doubles each time, ~0.6 s in all.
const REMOVE_TRIES: u32 = 6;
const REMOVE_FIRST_WAIT: Duration = Duration::from_millis(10);

/// rmdir a cgroup directory and the cgroups below it, deepest first.
fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    // Most have no cgroup below them: the rmdir comes first, and the
    // listing (every control file of every controller, on v1 a dozen
    // hierarchies per container) only when the kernel says busy.
    match fs::remove_dir(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        // (ENOTEMPTY: what a plain directory says, in tests.)
        Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::ENOTEMPTY)) => {}
        Err(e) => return Err(io_err("removing cgroup", dir)(e)),
    }
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("listing cgroup", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("listing cgroup", dir))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    let mut wait = REMOVE_FIRST_WAIT;
    for attempt in 1..=REMOVE_TRIES {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < REMOVE_TRIES => {
                std::thread::sleep(wait);
                wait *= 2;
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(CgroupError::Busy {
                    path: dir.to_path_buf(),
                    tries: REMOVE_TRIES,
                });
            }
            Err(e) => return Err(io_err("removing cgroup", dir)(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_are_normalised_and_cannot_climb() {
        assert_eq!(
            CgroupPath::new("/kubepods/burstable/pod1/")
                .unwrap()
                .as_str(),
            "kubepods/burstable/pod1"
        );
        assert_eq!(CgroupPath::new("a//b").unwrap().as_str(), "a/b");
        assert!(CgroupPath::new("/").unwrap().is_root());
        assert!(CgroupPath::new("/kubepods/../system.slice").is_err());
        assert!(CgroupPath::new("./x").is_err());
        let pod = CgroupPath::new("/kubepods/pod1").unwrap();
        assert_eq!(pod.join("ctr").unwrap().to_string(), "/kubepods/pod1/ctr");
        assert!(pod.join("../x").is_err());
        assert!(pod.join("a/b").is_err());
    }

    #[test]
    fn pod_cgroup_is_the_parent_kubelet_gave_or_berths_own() {
        assert_eq!(
            pod_cgroup_path("/kubepods/burstable/pod7", "sb1")
                .unwrap()
                .as_str(),
            "kubepods/burstable/pod7"
        );
        assert_eq!(
            pod_cgroup_path("kubepods-burstable-pod7.slice", "sb1")
                .unwrap()
                .as_str(),
            "kubepods-burstable-pod7.slice"
        );
        assert_eq!(pod_cgroup_path("", "sb1").unwrap().as_str(), "berth/sb1");
    }

    #[test]
    fn cpu_shares_convert_to_weight() {
        assert_eq!(cpu_shares_to_weight(0), 0);
        assert_eq!(cpu_shares_to_weight(2), 1);
        assert_eq!(cpu_shares_to_weight(1024), 39);
        assert_eq!(cpu_shares_to_weight(262_144), 10_000);
        // Out of range shares are clamped, as the kernel does.
        assert_eq!(cpu_shares_to_weight(1), 1);
        assert_eq!(cpu_shares_to_weight(1 << 30), 10_000);
    }

    #[test]
    fn cpu_quota_and_period_become_cpu_max() {
        assert_eq!(cpu_max(None, None), None);
        assert_eq!(
            cpu_max(Some(50_000), Some(100_000)).unwrap(),
            "50000 100000"
        );
        assert_eq!(cpu_max(Some(-1), Some(100_000)).unwrap(), "max 100000");
        assert_eq!(cpu_max(None, Some(20_000)).unwrap(), "max 20000");
        assert_eq!(cpu_max(Some(30_000), None).unwrap(), "30000");
    }

    #[test]
    fn v2_swap_is_memory_plus_swap_minus_memory() {
        assert_eq!(swap_max_v2(Some(100), Some(300)).unwrap().unwrap(), "200");
        assert_eq!(swap_max_v2(Some(100), Some(100)).unwrap().unwrap(), "0");
        assert_eq!(swap_max_v2(Some(100), Some(-1)).unwrap().unwrap(), "max");
        assert_eq!(swap_max_v2(Some(100), None).unwrap(), None);
        assert!(swap_max_v2(None, Some(100)).is_err());
        assert!(swap_max_v2(Some(200), Some(100)).is_err());
    }

    #[test]
    fn oom_kill_counter_is_read_from_either_file() {
        let v2 = "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kill(v2), 2);
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n";
        assert_eq!(parse_oom_kill(v1), 5);
        assert_eq!(parse_oom_kill("oom_kill_disable 0\n"), 0);
    }

    /// A unique cgroup on the node's real hierarchy, removed on every path.
    struct RealCgroup {
        cgroups: Cgroups,
        top: CgroupPath,
    }

    impl RealCgroup {
        /// A fresh cgroup of the node's; panics (the test fails, never
        /// passes unrun) unless root on a node with cgroups.
        fn new() -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            assert!(
                nix::unistd::Uid::effective().is_root(),
                "this test needs root (it makes real cgroups); run the suite as root"
            );
            let cgroups = Cgroups::detect()
                .unwrap_or_else(|e| panic!("this test needs the node's cgroups: {e}"));
            let name = format!(
                "berth-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            let top = CgroupPath::new(&name).expect("a valid test cgroup name");
            Self { cgroups, top }
        }

        /// The file of `controller` (v1) for the cgroup at `path`.
        fn file(&self, controller: &str, path: &CgroupPath, name: &str) -> PathBuf {
            match &self.cgroups {
                Cgroups::V1(v1) => {
                    let h = v1
                        .hierarchies()
                        .iter()
                        .find(|h| h.controllers.iter().any(|c| c == controller))
                        .expect("controller mounted");
                    path.under(&h.dir).join(name)
                }
                Cgroups::V2(_) => PathBuf::from(self.cgroups.spec_path(path)).join(name),
            }
        }
    }

    impl Drop for RealCgroup {
        fn drop(&mut self) {
            let _ = self.cgroups.kill_all(&self.top, Signal::SIGKILL);
            if let Err(e) = self.cgroups.remove(&self.top) {
                eprintln!("cleanup of {} failed: {e}", self.top);
            }
        }
    }

    fn memory_and_cpu(limit: i64, shares: u64) -> LinuxResources {
        use oci_spec::runtime::{LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder};
        LinuxResourcesBuilder::default()
            .memory(LinuxMemoryBuilder::default().limit(limit).build().unwrap())
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(shares)
                    .quota(20_000i64)
                    .period(100_000u64)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    #[test]
    fn real_cgroup_gets_a_memory_limit_and_is_removed() {
        let real = RealCgroup::new();
        let cg = &real.cgroups;
        assert!(cg.create(&real.top).unwrap());
        assert!(cg.exists(&real.top));
        cg.apply(&real.top, &memory_and_cpu(64 << 20, 512)).unwrap();
        match cg.version() {
            CgroupVersion::V1 => {
                let limit =
                    fs::read_to_string(real.file("memory", &real.top, "memory.limit_in_bytes"))
                        .unwrap();
                assert_eq!(limit.trim(), (64u64 << 20).to_string());
                let shares = fs::read_to_string(real.file("cpu", &real.top, "cpu.shares")).unwrap();
                assert_eq!(shares.trim(), "512");
                let quota =
                    fs::read_to_string(real.file("cpu", &real.top, "cpu.cfs_quota_us")).unwrap();
                assert_eq!(quota.trim(), "20000");
                assert_eq!(cg.spec_path(&real.top), format!("/{}", real.top.as_str()));
            }
            CgroupVersion::V2 => {
                let max = fs::read_to_string(real.file("memory", &real.top, "memory.max")).unwrap();
                assert_eq!(max.trim(), (64u64 << 20).to_string());
                let weight = fs::read_to_string(real.file("cpu", &real.top, "cpu.weight")).unwrap();
                assert_eq!(weight.trim(), "20");
            }
        }
        cg.remove(&real.top).unwrap();
        assert!(!cg.exists(&real.top));
    }

    #[test]
    fn real_cgroup_holds_a_process_until_kill_all() {
        let real = RealCgroup::new();
        let cg = &real.cgroups;
        let ctr = real.top.join("ctr").unwrap();
        cg.create(&ctr).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        // On v1 this needs the copied cpuset.cpus/mems of each new level.
        let added = cg.add_process(&ctr, pid);
        if added.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
        added.unwrap();
        assert_eq!(cg.pids(&ctr).unwrap(), vec![pid]);
        assert_eq!(cg.oom_kill_count(&ctr).unwrap(), 0);
        cg.kill_all(&ctr, Signal::SIGKILL).unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success());
        // Reaped, the cgroup goes (retrying while the kernel lets go of it).
        cg.remove(&real.top).unwrap();
        assert!(!cg.exists(&ctr));
        assert!(!cg.exists(&real.top));
    }

    #[test]
    fn removing_a_missing_cgroup_is_ok() {
        let root = tempfile::tempdir().unwrap();
        remove_tree(&root.path().join("nope/deeper")).unwrap();
    }

    #[test]
    fn remove_takes_child_cgroups_first() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pod/ctr/sub");
        fs::create_dir_all(&dir).unwrap();
        remove_tree(&root.path().join("pod")).unwrap();
        assert!(!root.path().join("pod").exists());
    }
}
