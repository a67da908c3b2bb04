//! The container's cgroup as the shim sees it: directories berthd made,
//! which the container process (and each exec) enters, whose processes
//! `Kill { all }` signals and whose OOM-kill counter says whether the
//! kernel's OOM killer struck. v1 or v2 is detected once.

#![deny(unsafe_code)]

use std::path::{Path, PathBuf};

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};

use super::plan::{self, CGROUP_ROOT, Hierarchy};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error("cgroupsPath {0}: no such cgroup directory (berthd creates it)")]
    Missing(String),
    #[error("read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("enter cgroup {path}: {source}")]
    Enter {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    pub v2: bool,
    /// One directory on v2; one per hierarchy on v1.
    pub dirs: Vec<PathBuf>,
    /// Where memory.events (v2) or memory.oom_control (v1) is.
    pub memory: Option<PathBuf>,
    /// v1: the hierarchies the dirs are in (mountpoint, same order as dirs),
    /// for the container's read-only /sys/fs/cgroup.
    pub hierarchies: Vec<Hierarchy>,
}

/// Whether /sys/fs/cgroup is the unified hierarchy.
pub fn is_v2() -> bool {
    statfs(CGROUP_ROOT)
        .map(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

pub fn v1_hierarchies() -> Result<Vec<Hierarchy>, CgroupError> {
    let text = crate::kernel::read_proc("/proc/self/mountinfo", 16 * 1024).map_err(|source| {
        CgroupError::Read {
            path: "/proc/self/mountinfo".into(),
            source,
        }
    })?;
    Ok(plan::parse_cgroup_v1_mounts(&text))
}

impl Cgroup {
    /// The cgroup for spec.linux.cgroupsPath, which must exist.
    pub fn resolve(cgroups_path: &Path) -> Result<Cgroup, CgroupError> {
        let v2 = is_v2();
        let hierarchies = if v2 { Vec::new() } else { v1_hierarchies()? };
        let candidates = plan::cgroup_candidates(v2, cgroups_path, &hierarchies)?;
        let mut dirs = Vec::new();
        let mut used = Vec::new();
        let mut memory = None;
        for dir in candidates {
            if !dir.is_dir() {
                continue;
            }
            let h = hierarchies
                .iter()
                .find(|h| dir.starts_with(&h.mountpoint))
                .cloned();
            if v2
                || h.as_ref()
                    .is_some_and(|h| h.controllers.iter().any(|c| c == "memory"))
            {
                memory.get_or_insert_with(|| dir.clone());
            }
            if let Some(h) = h {
                used.push(h);
            }
            dirs.push(dir);
        }
        if dirs.is_empty() {
            return Err(CgroupError::Missing(cgroups_path.display().to_string()));
        }
        Ok(Cgroup {
            v2,
            dirs,
            memory,
            hierarchies: used,
        })
    }

    /// Moves the calling process into the cgroup ("0" is the writer).
    ///
    /// The caller must be single-threaded (the shim's children are). On v1
    /// the thread is moved through `tasks`, not `cgroup.procs`: moving a
    /// whole thread group takes the kernel's global threadgroup rwsem for
    /// writing, an RCU grace period per hierarchy (~2 ms each, ~14 ms over
    /// six hierarchies on this 6.18 kernel: 13.9 ms against 0.6 ms), while
    /// a task moving itself alone skips it on recent kernels (older ones
    /// take the lock either way). For a single-threaded process the thread
    /// is the process.
    pub fn enter_self(&self) -> Result<(), CgroupError> {
        let file = if self.v2 { "cgroup.procs" } else { "tasks" };
        for dir in &self.dirs {
            let procs = dir.join(file);
            std::fs::write(&procs, b"0").map_err(|source| CgroupError::Enter {
                path: procs.display().to_string(),
                source,
            })?;
        }
        Ok(())
    }

    /// The processes in the cgroup (all hierarchies, once each).
    pub fn procs(&self) -> Vec<i32> {
        let mut out: Vec<i32> = Vec::new();
        for dir in &self.dirs {
            let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
                continue;
            };
            for pid in text.lines().filter_map(|l| l.trim().parse().ok()) {
                if !out.contains(&pid) {
                    out.push(pid);
                }
            }
        }
        out
    }

    /// SIGKILL every process in the cgroup, including those forking while
    /// it runs: v2's `cgroup.kill` (Linux 5.14) where there is one, else
    /// freeze, kill, thaw (runc's `kill --all`), and without a freezer
    /// rounds of kills until the cgroup is empty. Returns the processes it
    /// could not kill (none, normally). The shim itself is never in it.
    pub fn kill_all(&self) -> Vec<i32> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let kill_listed = |pids: &[i32]| {
            for &p in pids {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        };
        if self.v2
            && let Some(dir) = self.dirs.first()
            && std::fs::write(dir.join("cgroup.kill"), b"1").is_ok()
        {
            return Vec::new();
        }
        let freezer = self.freezer();
        if let Some(f) = &freezer {
            let _ = f.set(true);
        }
        // Frozen processes cannot fork: one round kills them all; thawed
        // (or without a freezer) a fork bomb may need a few.
        for _ in 0..20 {
            let pids = self.procs_deep();
            if pids.is_empty() {
                break;
            }
            kill_listed(&pids);
            if freezer.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if let Some(f) = &freezer {
            // SIGKILL takes a frozen task once it is thawed.
            let _ = f.set(false);
        }
        self.procs_deep()
            .into_iter()
            .filter(|&p| kill(Pid::from_raw(p), None).is_ok())
            .filter(|&p| !is_zombie(p))
            .collect()
    }

    /// Freeze (or thaw) every process of the cgroup and wait until the
    /// kernel says it is so: for a commit that must not see files half
    /// written (`berthd commit --pause`).
    pub fn freeze(&self, frozen: bool) -> Result<(), String> {
        let f = self
            .freezer()
            .ok_or_else(|| "the container's cgroup has no freezer".to_string())?;
        if f.set(frozen) {
            Ok(())
        } else {
            Err(format!(
                "the container's cgroup did not {} within a second",
                if frozen { "freeze" } else { "thaw" }
            ))
        }
    }

    /// Whether the cgroup is frozen (or freezing) now.
    pub fn is_frozen(&self) -> bool {
        match self.freezer() {
            Some(Freezer::V1(d)) => {
                std::fs::read_to_string(d.join("freezer.state")).is_ok_and(|s| s.trim() != "THAWED")
            }
            Some(Freezer::V2(d)) => {
                std::fs::read_to_string(d.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
            }
            None => false,
        }
    }

    /// The freezer of this cgroup: v2's `cgroup.freeze` (5.2), or the v1
    /// freezer hierarchy's `freezer.state`.
    fn freezer(&self) -> Option<Freezer> {
        if self.v2 {
            let dir = self.dirs.first()?;
            return dir
                .join("cgroup.freeze")
                .exists()
                .then(|| Freezer::V2(dir.clone()));
        }
        self.dirs
            .iter()
            .find(|d| d.join("freezer.state").exists())
            .map(|d| Freezer::V1(d.clone()))
    }

    /// The processes in the cgroup and in any cgroup below it (a privileged
    /// container may make its own), all hierarchies, once each.
    fn procs_deep(&self) -> Vec<i32> {
        let mut out: Vec<i32> = Vec::new();
        let mut dirs: Vec<PathBuf> = self.dirs.clone();
        while let Some(dir) = dirs.pop() {
            if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in text.lines().filter_map(|l| l.trim().parse().ok()) {
                    if !out.contains(&pid) {
                        out.push(pid);
                    }
                }
            }
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(e.path());
                }
            }
        }
        out
    }

    /// How many times the OOM killer killed in this cgroup (0 if unknown).
    pub fn oom_kills(&self) -> u64 {
        let Some(dir) = &self.memory else { return 0 };
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|t| plan::parse_oom_kill(&t))
            .unwrap_or(0)
    }
}

enum Freezer {
    V1(PathBuf),
    V2(PathBuf),
}

impl Freezer {
    /// Freeze or thaw, waiting (a second at most) until the kernel says
    /// so; whether it did.
    fn set(&self, frozen: bool) -> bool {
        let (file, value, state_file, want): (&str, &[u8], &str, &str) = match (self, frozen) {
            (Freezer::V1(_), true) => ("freezer.state", b"FROZEN", "freezer.state", "FROZEN"),
            (Freezer::V1(_), false) => ("freezer.state", b"THAWED", "freezer.state", "THAWED"),
            (Freezer::V2(_), true) => ("cgroup.freeze", b"1", "cgroup.events", "frozen 1"),
            (Freezer::V2(_), false) => ("cgroup.freeze", b"0", "cgroup.events", "frozen 0"),
        };
        let dir = match self {
            Freezer::V1(d) | Freezer::V2(d) => d,
        };
        if std::fs::write(dir.join(file), value).is_err() {
            return false;
        }
        for _ in 0..1000 {
            let now = std::fs::read_to_string(dir.join(state_file)).unwrap_or_default();
            if now.lines().any(|l| l.trim() == want) {
                return true;
            }
            // v1 needs the write repeated while it is FREEZING.
            if frozen && matches!(self, Freezer::V1(_)) {
                let _ = std::fs::write(dir.join(file), value);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        false
    }
}

/// A process that has exited and waits to be reaped (it stays listed in
/// its cgroup until then on v1).
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|st| st == "Z" || st == "X"))
        })
        .unwrap_or(true)
}
