//! cgroup v2: one hierarchy; a cgroup's controllers are those its parent
//! delegates in `cgroup.subtree_control`.

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use oci_spec::runtime::LinuxResources;

use super::devices::DeviceRules;
use super::{
    CgroupError, CgroupManager, CgroupPath, CgroupVersion, bpf, cpu_max, cpu_shares_to_weight,
    hugetlb_size, limit_or_max, mkdir_all, parse_oom_kill, parse_pids, read_file, remove_tree,
    signal_pids, swap_max_v2, write_file,
};

#[derive(Clone, Debug)]
pub struct V2 {
    root: PathBuf,
    /// What the root offers (`cgroup.controllers`), delegated down to every
    /// cgroup berth makes.
    controllers: Vec<String>,
}

impl V2 {
    /// The unified hierarchy mounted at `root`.
    pub fn at(root: &Path) -> Result<Self, CgroupError> {
        let controllers = read_file(&root.join("cgroup.controllers"))?
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        Ok(Self {
            root: root.to_path_buf(),
            controllers,
        })
    }

    pub fn controllers(&self) -> &[String] {
        &self.controllers
    }

    fn dir(&self, path: &CgroupPath) -> PathBuf {
        path.under(&self.root)
    }

    /// Delegate the controllers `dir` has to its children. All at once
    /// first; if the kernel refuses one, each alone, keeping what works
    /// (e.g. a cpuset that a threaded subtree cannot take).
    fn delegate(&self, dir: &Path) -> Result<(), CgroupError> {
        let available: Vec<String> = match read_file(&dir.join("cgroup.controllers"))? {
            Some(text) => text.split_whitespace().map(str::to_string).collect(),
            None => self.controllers.clone(),
        };
        if available.is_empty() {
            return Ok(());
        }
        let control = dir.join("cgroup.subtree_control");
        let all: Vec<String> = available.iter().map(|c| format!("+{c}")).collect();
        if write_file(&control, &all.join(" ")).is_ok() {
            return Ok(());
        }
        for c in &all {
            if let Err(e) = write_file(&control, c) {
                tracing::debug!(error = %e, "controller not delegated");
            }
        }
        Ok(())
    }
}

impl CgroupManager for V2 {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
    }

    fn create(&self, path: &CgroupPath) -> Result<bool, CgroupError> {
        if path.is_root() {
            return Err(CgroupError::InvalidPath {
                path: path.to_string(),
                reason: "is the root cgroup".into(),
            });
        }
        let mut created = false;
        let mut parent = self.root.clone();
        for level in path.levels() {
            self.delegate(&parent)?;
            let dir = self.dir(&level);
            created = mkdir_all(&dir)?;
            parent = dir;
        }
        Ok(created)
    }

    fn apply(&self, path: &CgroupPath, r: &LinuxResources) -> Result<(), CgroupError> {
        let dir = self.dir(path);
        // Checked before anything is written; attached last.
        let devices = match r.devices().as_deref() {
            Some(rules) if !rules.is_empty() => Some(DeviceRules::from_oci(rules)?),
            _ => None,
        };
        let file = |name: &str| dir.join(name);
        if let Some(cpu) = r.cpu() {
            if let Some(weight) = cpu.shares().map(cpu_shares_to_weight).filter(|w| *w != 0) {
                write_file(&file("cpu.weight"), &weight.to_string())?;
            }
            if let Some(max) = cpu_max(cpu.quota(), cpu.period()) {
                write_file(&file("cpu.max"), &max)?;
            }
            if let Some(cpus) = cpu.cpus().as_deref().filter(|s| !s.is_empty()) {
                write_file(&file("cpuset.cpus"), cpus)?;
            }
            if let Some(mems) = cpu.mems().as_deref().filter(|s| !s.is_empty()) {
                write_file(&file("cpuset.mems"), mems)?;
            }
        }
        if let Some(mem) = r.memory() {
            if let Some(limit) = mem.limit().filter(|l| *l != 0) {
                write_file(&file("memory.max"), &limit_or_max(limit))?;
            }
            if let Some(low) = mem.reservation().filter(|l| *l != 0) {
                write_file(&file("memory.low"), &limit_or_max(low))?;
            }
            // Without swap accounting there is no memory.swap.max: nothing
            // can swap beyond what the node allows anyway.
            if let Some(swap) = swap_max_v2(mem.limit(), mem.swap())?
                && file("memory.swap.max").exists()
            {
                write_file(&file("memory.swap.max"), &swap)?;
            }
        }
        if let Some(pids) = r.pids() {
            let limit = pids.limit();
            write_file(
                &file("pids.max"),
                &if limit > 0 {
                    limit.to_string()
                } else {
                    "max".into()
                },
            )?;
        }
        for h in r.hugepage_limits().iter().flatten() {
            let size = hugetlb_size(h.page_size())?;
            write_file(
                &file(&format!("hugetlb.{size}.max")),
                &limit_or_max(h.limit()),
            )?;
        }
        // Last, so that an explicit unified value wins.
        for (key, value) in r.unified().iter().flatten() {
            if key.contains('/') || key.starts_with('.') || !key.contains('.') {
                return Err(CgroupError::InvalidResources(format!(
                    "{key:?} is not a cgroup v2 file name"
                )));
            }
            write_file(&file(key), value)?;
        }
        // v2 has no devices.allow: an eBPF program on the cgroup holds the
        // rules. No rules given: whatever is attached stays.
        if let Some(rules) = devices {
            bpf::set_device_rules(&dir, &rules)?;
        }
        Ok(())
    }

    fn add_process(&self, path: &CgroupPath, pid: i32) -> Result<(), CgroupError> {
        write_file(&self.dir(path).join("cgroup.procs"), &pid.to_string())
    }

    fn pids(&self, path: &CgroupPath) -> Result<Vec<i32>, CgroupError> {
        Ok(read_file(&self.dir(path).join("cgroup.procs"))?
            .map(|t| parse_pids(&t))
            .unwrap_or_default())
    }

    fn usage(&self, path: &CgroupPath) -> super::CgroupUsage {
        let dir = self.dir(path);
        super::usage::v2(|f| std::fs::read_to_string(dir.join(f)).ok())
    }

    fn oom_kill_count(&self, path: &CgroupPath) -> Result<u64, CgroupError> {
        Ok(read_file(&self.dir(path).join("memory.events"))?
            .map(|t| parse_oom_kill(&t))
            .unwrap_or(0))
    }

    fn kill_all(&self, path: &CgroupPath, signal: Signal) -> Result<(), CgroupError> {
        let kill = self.dir(path).join("cgroup.kill");
        if signal == Signal::SIGKILL && kill.exists() {
            return write_file(&kill, "1");
        }
        signal_pids(&self.pids(path)?, signal)
    }

    fn remove(&self, path: &CgroupPath) -> Result<(), CgroupError> {
        if path.is_root() {
            return Err(CgroupError::InvalidPath {
                path: path.to_string(),
                reason: "is the root cgroup".into(),
            });
        }
        remove_tree(&self.dir(path))
    }

    fn exists(&self, path: &CgroupPath) -> bool {
        self.dir(path).is_dir()
    }

    fn spec_path(&self, path: &CgroupPath) -> String {
        self.dir(path).display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxHugepageLimitBuilder, LinuxMemoryBuilder, LinuxPidsBuilder,
        LinuxResourcesBuilder,
    };
    use std::collections::HashMap;
    use std::fs;

    /// A directory that looks like /sys/fs/cgroup on a v2 node.
    fn fake_root() -> (tempfile::TempDir, V2) {
        let root = tempfile::tempdir().unwrap();
        fs::write(
            root.path().join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids\n",
        )
        .unwrap();
        let v2 = V2::at(root.path()).unwrap();
        (root, v2)
    }

    fn read(p: impl AsRef<Path>) -> String {
        fs::read_to_string(p).unwrap()
    }

    fn path(s: &str) -> CgroupPath {
        CgroupPath::new(s).unwrap()
    }

    #[test]
    fn create_delegates_controllers_down_to_the_new_cgroup() {
        let (root, v2) = fake_root();
        let ctr = path("/kubepods/pod1/ctr1");
        assert!(v2.create(&ctr).unwrap());
        let all = "+cpuset +cpu +io +memory +hugetlb +pids";
        assert_eq!(read(root.path().join("cgroup.subtree_control")), all);
        assert_eq!(
            read(root.path().join("kubepods/cgroup.subtree_control")),
            all
        );
        assert_eq!(
            read(root.path().join("kubepods/pod1/cgroup.subtree_control")),
            all
        );
        // The container's own cgroup is a leaf: it delegates nothing.
        assert!(
            !root
                .path()
                .join("kubepods/pod1/ctr1/cgroup.subtree_control")
                .exists()
        );
        // A second create finds it there.
        assert!(!v2.create(&ctr).unwrap());
    }

    #[test]
    fn a_parent_offering_fewer_controllers_delegates_only_those() {
        let (root, v2) = fake_root();
        fs::create_dir(root.path().join("kubepods")).unwrap();
        fs::write(
            root.path().join("kubepods/cgroup.controllers"),
            "cpu memory",
        )
        .unwrap();
        v2.create(&path("kubepods/pod2")).unwrap();
        assert_eq!(
            read(root.path().join("kubepods/cgroup.subtree_control")),
            "+cpu +memory"
        );
    }

    #[test]
    fn resources_are_written_in_v2_terms() {
        let (root, v2) = fake_root();
        let ctr = path("pod/ctr");
        v2.create(&ctr).unwrap();
        let dir = root.path().join("pod/ctr");
        fs::write(dir.join("memory.swap.max"), "max").unwrap();
        let r = LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(512u64)
                    .quota(50_000i64)
                    .period(100_000u64)
                    .cpus("0-1")
                    .mems("0")
                    .build()
                    .unwrap(),
            )
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(256i64 << 20)
                    .swap(256i64 << 20)
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(100i64).build().unwrap())
            .hugepage_limits(vec![
                LinuxHugepageLimitBuilder::default()
                    .page_size("2MB")
                    .limit(4i64 << 20)
                    .build()
                    .unwrap(),
            ])
            .unified(HashMap::from([(
                "memory.high".to_string(),
                "200000000".to_string(),
            )]))
            .build()
            .unwrap();
        v2.apply(&ctr, &r).unwrap();
        assert_eq!(read(dir.join("cpu.weight")), "20");
        assert_eq!(read(dir.join("cpu.max")), "50000 100000");
        assert_eq!(read(dir.join("cpuset.cpus")), "0-1");
        assert_eq!(read(dir.join("cpuset.mems")), "0");
        assert_eq!(read(dir.join("memory.max")), (256u64 << 20).to_string());
        // memory+swap == memory: no swap at all.
        assert_eq!(read(dir.join("memory.swap.max")), "0");
        assert_eq!(read(dir.join("pids.max")), "100");
        assert_eq!(read(dir.join("hugetlb.2MB.max")), (4u64 << 20).to_string());
        assert_eq!(read(dir.join("memory.high")), "200000000");
    }

    #[test]
    fn swap_is_left_alone_without_swap_accounting() {
        let (root, v2) = fake_root();
        let ctr = path("pod/ctr");
        v2.create(&ctr).unwrap();
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64i64 << 20)
                    .swap(128i64 << 20)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        v2.apply(&ctr, &r).unwrap();
        assert!(!root.path().join("pod/ctr/memory.swap.max").exists());
        assert_eq!(
            read(root.path().join("pod/ctr/memory.max")),
            (64u64 << 20).to_string()
        );
    }

    #[test]
    fn unified_keys_cannot_name_other_files() {
        let (_root, v2) = fake_root();
        let ctr = path("pod/ctr");
        v2.create(&ctr).unwrap();
        let r = LinuxResourcesBuilder::default()
            .unified(HashMap::from([(
                "../../cgroup.procs".to_string(),
                "1".to_string(),
            )]))
            .build()
            .unwrap();
        assert!(matches!(
            v2.apply(&ctr, &r),
            Err(CgroupError::InvalidResources(_))
        ));
    }

    #[test]
    fn pids_and_oom_kills_are_read_back() {
        let (root, v2) = fake_root();
        let ctr = path("pod/ctr");
        v2.create(&ctr).unwrap();
        let dir = root.path().join("pod/ctr");
        fs::write(dir.join("cgroup.procs"), "12\n34\n").unwrap();
        fs::write(dir.join("memory.events"), "low 0\noom 1\noom_kill 1\n").unwrap();
        assert_eq!(v2.pids(&ctr).unwrap(), vec![12, 34]);
        assert_eq!(v2.oom_kill_count(&ctr).unwrap(), 1);
        let gone = path("pod/gone");
        assert_eq!(v2.pids(&gone).unwrap(), Vec::<i32>::new());
        assert_eq!(v2.oom_kill_count(&gone).unwrap(), 0);
    }

    #[test]
    fn sigkill_uses_cgroup_kill_when_the_kernel_has_it() {
        let (root, v2) = fake_root();
        let ctr = path("pod/ctr");
        v2.create(&ctr).unwrap();
        let kill = root.path().join("pod/ctr/cgroup.kill");
        fs::write(&kill, "").unwrap();
        v2.kill_all(&ctr, Signal::SIGKILL).unwrap();
        assert_eq!(read(&kill), "1");
    }

    #[test]
    fn spec_path_is_the_absolute_directory() {
        let v2 = V2 {
            root: PathBuf::from("/sys/fs/cgroup"),
            controllers: vec![],
        };
        assert_eq!(
            v2.spec_path(&path("/kubepods/pod123/ctr456")),
            "/sys/fs/cgroup/kubepods/pod123/ctr456"
        );
    }

    #[test]
    fn remove_leaves_the_parent_and_tolerates_a_missing_cgroup() {
        let root = tempfile::tempdir().unwrap();
        let v2 = V2 {
            root: root.path().to_path_buf(),
            controllers: vec![],
        };
        let ctr = path("pod/ctr");
        v2.create(&ctr).unwrap();
        v2.remove(&ctr).unwrap();
        assert!(!v2.exists(&ctr));
        assert!(v2.exists(&path("pod")));
        v2.remove(&ctr).unwrap();
        assert!(v2.remove(&path("/")).is_err());
    }
}
