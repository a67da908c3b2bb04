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
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| CgroupError::Read {
            path: "/proc/self/mountinfo".into(),
            source,
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
