//! cgroup v1: one hierarchy per mounted controller (or co-mounted group, e.g.
//! `cpu,cpuacct`); a cgroup is the same relative path in each of them.

use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

use super::{
    CgroupError, CgroupManager, CgroupPath, CgroupVersion, hugetlb_size, mkdir_all, parse_oom_kill,
    parse_pids, read_file, remove_tree, write_file,
};

/// One mounted v1 hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    /// Its mount point (`/sys/fs/cgroup/memory`).
    pub dir: PathBuf,
    /// Its controllers; a named hierarchy shows as `name=systemd`.
    pub controllers: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct V1 {
    root: PathBuf,
    hierarchies: Vec<Hierarchy>,
}

/// The v1 hierarchies mounted below `root`, from /proc/self/mountinfo.
pub fn hierarchies_from_mountinfo(mountinfo: &str, root: &Path) -> Vec<Hierarchy> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        // 35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split(' ');
        if r.next() != Some("cgroup") {
            continue;
        }
        let (Some(_source), Some(opts)) = (r.next(), r.next()) else {
            continue;
        };
        let Some(mountpoint) = left.split(' ').nth(4) else {
            continue;
        };
        let dir = PathBuf::from(unescape_octal(mountpoint));
        if dir.parent() != Some(root) {
            continue;
        }
        let controllers = opts
            .split(',')
            .filter(|o| {
                !matches!(*o, "rw" | "ro" | "clone_children" | "noprefix" | "xattr")
                    && !o.starts_with("release_agent=")
            })
            .map(str::to_string)
            .collect();
        if !out.iter().any(|h: &Hierarchy| h.dir == dir) {
            out.push(Hierarchy { dir, controllers });
        }
    }
    out
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(oct) = b.get(i + 1..i + 4)
            && oct.iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = oct.iter().fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl V1 {
    pub fn new(root: &Path, hierarchies: Vec<Hierarchy>) -> Self {
        Self {
            root: root.to_path_buf(),
            hierarchies,
        }
    }

    /// Every directory directly below `root` is a hierarchy named after its
    /// controllers (`cpu,cpuacct`); symlinks (aliases) are skipped. For a
    /// tree that mimics cgroupfs in tests.
    pub fn at(root: &Path) -> Result<Self, CgroupError> {
        let mut hierarchies = Vec::new();
        let entries = std::fs::read_dir(root).map_err(super::io_err("listing", root))?;
        for entry in entries {
            let entry = entry.map_err(super::io_err("listing", root))?;
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            hierarchies.push(Hierarchy {
                dir: entry.path(),
                controllers: name.split(',').map(str::to_string).collect(),
            });
        }
        hierarchies.sort_by(|a, b| a.dir.cmp(&b.dir));
        Ok(Self::new(root, hierarchies))
    }

    /// Where the hierarchies are mounted (`/sys/fs/cgroup`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn hierarchies(&self) -> &[Hierarchy] {
        &self.hierarchies
    }

    fn hierarchy(&self, controller: &str) -> Option<&Hierarchy> {
        self.hierarchies
            .iter()
            .find(|h| h.controllers.iter().any(|c| c == controller))
    }

    /// The cgroup's directory in the hierarchy of `controller`.
    fn dir(&self, controller: &'static str, path: &CgroupPath) -> Result<PathBuf, CgroupError> {
        self.hierarchy(controller)
            .map(|h| path.under(&h.dir))
            .ok_or(CgroupError::NoController(controller))
    }

    /// A new cpuset cgroup has no cpus and no mems, so no process could
    /// enter it: give each empty level its parent's.
    fn init_cpuset(&self, path: &CgroupPath) -> Result<(), CgroupError> {
        let Some(h) = self.hierarchy("cpuset") else {
            return Ok(());
        };
        for level in path.levels() {
            let dir = level.under(&h.dir);
            let Some(parent) = dir.parent() else { continue };
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let own = read_file(&dir.join(file))?.unwrap_or_default();
                if !own.trim().is_empty() {
                    continue;
                }
                if let Some(value) = read_file(&parent.join(file))?
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                {
                    write_file(&dir.join(file), &value)?;
                }
            }
        }
        Ok(())
    }

    fn apply_memory(&self, path: &CgroupPath, r: &LinuxResources) -> Result<(), CgroupError> {
        let Some(mem) = r.memory() else { return Ok(()) };
        let limit = mem.limit().filter(|v| *v != 0);
        let swap = mem.swap().filter(|v| *v != 0);
        let reservation = mem.reservation().filter(|v| *v != 0);
        if limit.is_none() && swap.is_none() && reservation.is_none() {
            return Ok(());
        }
        let dir = self.dir("memory", path)?;
        let limit_file = dir.join("memory.limit_in_bytes");
        let memsw_file = dir.join("memory.memsw.limit_in_bytes");
        // memsw exists only with swap accounting; without it nothing swaps
        // beyond what the node allows anyway.
        let swap = swap.filter(|_| memsw_file.exists());
        match (limit, swap) {
            (Some(l), Some(s)) => {
                // memory.limit must stay <= memsw at every step.
                let current: i64 = read_file(&memsw_file)?
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(i64::MAX);
                if s == -1 || s > current {
                    write_file(&memsw_file, &s.to_string())?;
                    write_file(&limit_file, &l.to_string())?;
                } else {
                    write_file(&limit_file, &l.to_string())?;
                    write_file(&memsw_file, &s.to_string())?;
                }
            }
            (Some(l), None) => write_file(&limit_file, &l.to_string())?,
            (None, Some(s)) => write_file(&memsw_file, &s.to_string())?,
            (None, None) => {}
        }
        if let Some(res) = reservation {
            write_file(&dir.join("memory.soft_limit_in_bytes"), &res.to_string())?;
        }
        Ok(())
    }
}

impl CgroupManager for V1 {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V1
    }

    fn create(&self, path: &CgroupPath) -> Result<bool, CgroupError> {
        if path.is_root() {
            return Err(CgroupError::InvalidPath {
                path: path.to_string(),
                reason: "is the root cgroup".into(),
            });
        }
        let mut created = false;
        for h in &self.hierarchies {
            created |= mkdir_all(&path.under(&h.dir))?;
        }
        self.init_cpuset(path)?;
        Ok(created)
    }

    fn apply(&self, path: &CgroupPath, r: &LinuxResources) -> Result<(), CgroupError> {
        if r.unified().as_ref().is_some_and(|u| !u.is_empty()) {
            return Err(CgroupError::Unsupported(
                "unified (cgroup v2) resources were given but this node runs cgroup v1".into(),
            ));
        }
        if let Some(cpu) = r.cpu() {
            let shares = cpu.shares().filter(|v| *v != 0);
            let quota = cpu.quota().filter(|v| *v != 0);
            let period = cpu.period().filter(|v| *v != 0);
            if shares.is_some() || quota.is_some() || period.is_some() {
                let dir = self.dir("cpu", path)?;
                if let Some(s) = shares {
                    write_file(&dir.join("cpu.shares"), &s.to_string())?;
                }
                let quota_file = dir.join("cpu.cfs_quota_us");
                let period_file = dir.join("cpu.cfs_period_us");
                match (quota, period) {
                    (q, Some(p)) => {
                        // The kernel checks the pair at each write: if the
                        // period alone is refused, the quota goes first.
                        if write_file(&period_file, &p.to_string()).is_err() {
                            if let Some(q) = q {
                                write_file(&quota_file, &q.to_string())?;
                            }
                            write_file(&period_file, &p.to_string())?;
                        } else if let Some(q) = q {
                            write_file(&quota_file, &q.to_string())?;
                        }
                    }
                    (Some(q), None) => write_file(&quota_file, &q.to_string())?,
                    (None, None) => {}
                }
            }
            let cpus = cpu.cpus().as_deref().filter(|s| !s.is_empty());
            let mems = cpu.mems().as_deref().filter(|s| !s.is_empty());
            if cpus.is_some() || mems.is_some() {
                let dir = self.dir("cpuset", path)?;
                if let Some(c) = cpus {
                    write_file(&dir.join("cpuset.cpus"), c)?;
                }
                if let Some(m) = mems {
                    write_file(&dir.join("cpuset.mems"), m)?;
                }
            }
        }
        self.apply_memory(path, r)?;
        if let Some(pids) = r.pids() {
            let limit = pids.limit();
            write_file(
                &self.dir("pids", path)?.join("pids.max"),
                &if limit > 0 {
                    limit.to_string()
                } else {
                    "max".into()
                },
            )?;
        }
        let hugepages = r.hugepage_limits().as_deref().unwrap_or_default();
        if !hugepages.is_empty() {
            let dir = self.dir("hugetlb", path)?;
            for h in hugepages {
                let size = hugetlb_size(h.page_size())?;
                write_file(
                    &dir.join(format!("hugetlb.{size}.limit_in_bytes")),
                    &h.limit().to_string(),
                )?;
            }
        }
        let devices = r.devices().as_deref().unwrap_or_default();
        if !devices.is_empty() {
            let dir = self.dir("devices", path)?;
            for rule in devices {
                let file = if rule.allow() {
                    "devices.allow"
                } else {
                    "devices.deny"
                };
                write_file(&dir.join(file), &rule.to_string())?;
            }
        }
        Ok(())
    }

    fn add_process(&self, path: &CgroupPath, pid: i32) -> Result<(), CgroupError> {
        for h in &self.hierarchies {
            write_file(&path.under(&h.dir).join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn pids(&self, path: &CgroupPath) -> Result<Vec<i32>, CgroupError> {
        // Every hierarchy holds the same processes; take the first that has
        // the cgroup, preferring those every container is in.
        let preferred = ["pids", "memory", "cpu", "devices", "freezer"];
        let mut order: Vec<&Hierarchy> =
            preferred.iter().filter_map(|c| self.hierarchy(c)).collect();
        order.extend(self.hierarchies.iter());
        for h in order {
            if let Some(text) = read_file(&path.under(&h.dir).join("cgroup.procs"))? {
                return Ok(parse_pids(&text));
            }
        }
        Ok(Vec::new())
    }

    fn usage(&self, path: &CgroupPath) -> super::CgroupUsage {
        super::usage::v1(|controller, file| {
            let h = self.hierarchy(controller)?;
            std::fs::read_to_string(path.under(&h.dir).join(file)).ok()
        })
    }

    fn oom_kill_count(&self, path: &CgroupPath) -> Result<u64, CgroupError> {
        let Some(h) = self.hierarchy("memory") else {
            return Ok(0);
        };
        Ok(read_file(&path.under(&h.dir).join("memory.oom_control"))?
            .map(|t| parse_oom_kill(&t))
            .unwrap_or(0))
    }

    fn remove(&self, path: &CgroupPath) -> Result<(), CgroupError> {
        if path.is_root() {
            return Err(CgroupError::InvalidPath {
                path: path.to_string(),
                reason: "is the root cgroup".into(),
            });
        }
        // Try every hierarchy, then report the first failure.
        let mut first_err = None;
        for h in &self.hierarchies {
            if let Err(e) = remove_tree(&path.under(&h.dir)) {
                first_err.get_or_insert(e);
            }
        }
        // A hybrid node's cgroup2 tree (`unified`, no controllers): berth
        // makes nothing there, but runc (a RuntimeClass handler) and
        // systemd mirror their cgroups into it, and runc's delete removes
        // only the container's own directory, not the pod's above it.
        let unified = self.root.join("unified");
        if !self.hierarchies.iter().any(|h| h.dir == unified)
            && let Err(e) = remove_tree(&path.under(&unified))
        {
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(()), Err)
    }

    fn exists(&self, path: &CgroupPath) -> bool {
        self.hierarchies.iter().any(|h| path.under(&h.dir).is_dir())
    }

    fn spec_path(&self, path: &CgroupPath) -> String {
        path.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder,
        LinuxPidsBuilder, LinuxResourcesBuilder,
    };
    use std::collections::HashMap;
    use std::fs;

    /// A directory that looks like /sys/fs/cgroup on a v1 node.
    fn fake_root() -> (tempfile::TempDir, V1) {
        let root = tempfile::tempdir().unwrap();
        for h in ["cpu,cpuacct", "cpuset", "memory", "pids", "devices"] {
            fs::create_dir(root.path().join(h)).unwrap();
        }
        fs::write(root.path().join("cpuset/cpuset.cpus"), "0-7\n").unwrap();
        fs::write(root.path().join("cpuset/cpuset.mems"), "0\n").unwrap();
        let v1 = V1::at(root.path()).unwrap();
        (root, v1)
    }

    fn read(p: impl AsRef<Path>) -> String {
        fs::read_to_string(p).unwrap()
    }

    fn path(s: &str) -> CgroupPath {
        CgroupPath::new(s).unwrap()
    }

    #[test]
    fn hierarchies_come_from_mountinfo() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /mnt/other rw - cgroup cgroup rw,pids
";
        let h = hierarchies_from_mountinfo(mountinfo, Path::new("/sys/fs/cgroup"));
        assert_eq!(
            h,
            vec![
                Hierarchy {
                    dir: "/sys/fs/cgroup/cpu,cpuacct".into(),
                    controllers: vec!["cpu".into(), "cpuacct".into()],
                },
                Hierarchy {
                    dir: "/sys/fs/cgroup/memory".into(),
                    controllers: vec!["memory".into()],
                },
                Hierarchy {
                    dir: "/sys/fs/cgroup/systemd".into(),
                    controllers: vec!["name=systemd".into()],
                },
            ]
        );
    }

    #[test]
    fn create_makes_the_cgroup_in_every_hierarchy() {
        let (root, v1) = fake_root();
        let ctr = path("/kubepods/pod1/ctr1");
        assert!(v1.create(&ctr).unwrap());
        for h in ["cpu,cpuacct", "cpuset", "memory", "pids", "devices"] {
            assert!(
                root.path().join(h).join("kubepods/pod1/ctr1").is_dir(),
                "{h}"
            );
        }
        assert!(!v1.create(&ctr).unwrap());
    }

    #[test]
    fn a_new_cpuset_gets_its_parents_cpus_and_mems() {
        let (root, v1) = fake_root();
        let ctr = path("pod/ctr");
        v1.create(&ctr).unwrap();
        for level in ["cpuset/pod", "cpuset/pod/ctr"] {
            assert_eq!(read(root.path().join(level).join("cpuset.cpus")), "0-7");
            assert_eq!(read(root.path().join(level).join("cpuset.mems")), "0");
        }
    }

    #[test]
    fn resources_are_written_in_v1_terms() {
        let (root, v1) = fake_root();
        let ctr = path("pod/ctr");
        v1.create(&ctr).unwrap();
        let mem = root.path().join("memory/pod/ctr");
        fs::write(
            mem.join("memory.memsw.limit_in_bytes"),
            "9223372036854771712",
        )
        .unwrap();
        let r = LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(512u64)
                    .quota(50_000i64)
                    .period(100_000u64)
                    .cpus("2-3")
                    .build()
                    .unwrap(),
            )
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(128i64 << 20)
                    .swap(256i64 << 20)
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(0i64).build().unwrap())
            .devices(vec![
                LinuxDeviceCgroupBuilder::default()
                    .allow(false)
                    .access("rwm")
                    .build()
                    .unwrap(),
                LinuxDeviceCgroupBuilder::default()
                    .allow(true)
                    .typ(LinuxDeviceType::C)
                    .major(1i64)
                    .minor(3i64)
                    .access("rwm")
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap();
        v1.apply(&ctr, &r).unwrap();
        let cpu = root.path().join("cpu,cpuacct/pod/ctr");
        assert_eq!(read(cpu.join("cpu.shares")), "512");
        assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "50000");
        assert_eq!(read(root.path().join("cpuset/pod/ctr/cpuset.cpus")), "2-3");
        assert_eq!(
            read(mem.join("memory.limit_in_bytes")),
            (128u64 << 20).to_string()
        );
        assert_eq!(
            read(mem.join("memory.memsw.limit_in_bytes")),
            (256u64 << 20).to_string()
        );
        assert_eq!(read(root.path().join("pids/pod/ctr/pids.max")), "max");
        // Each write replaces the file in the fake; the kernel would append
        // the rule. The last rule is what a file shows here.
        assert_eq!(
            read(root.path().join("devices/pod/ctr/devices.allow")),
            "c 1:3 rwm"
        );
        assert_eq!(
            read(root.path().join("devices/pod/ctr/devices.deny")),
            "a *:* rwm"
        );
    }

    #[test]
    fn memsw_is_skipped_without_swap_accounting() {
        let (root, v1) = fake_root();
        let ctr = path("pod/ctr");
        v1.create(&ctr).unwrap();
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64i64 << 20)
                    .swap(64i64 << 20)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        v1.apply(&ctr, &r).unwrap();
        let mem = root.path().join("memory/pod/ctr");
        assert!(!mem.join("memory.memsw.limit_in_bytes").exists());
        assert_eq!(
            read(mem.join("memory.limit_in_bytes")),
            (64u64 << 20).to_string()
        );
    }

    #[test]
    fn unified_resources_are_refused_on_v1() {
        let (_root, v1) = fake_root();
        let ctr = path("pod/ctr");
        v1.create(&ctr).unwrap();
        let r = LinuxResourcesBuilder::default()
            .unified(HashMap::from([(
                "memory.high".to_string(),
                "1".to_string(),
            )]))
            .build()
            .unwrap();
        let e = v1.apply(&ctr, &r).unwrap_err();
        assert!(e.to_string().contains("cgroup v1"), "{e}");
    }

    #[test]
    fn a_missing_controller_is_named() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("memory")).unwrap();
        let v1 = V1::at(root.path()).unwrap();
        let ctr = path("pod/ctr");
        v1.create(&ctr).unwrap();
        let r = LinuxResourcesBuilder::default()
            .pids(LinuxPidsBuilder::default().limit(10i64).build().unwrap())
            .build()
            .unwrap();
        assert_eq!(
            v1.apply(&ctr, &r).unwrap_err().to_string(),
            "cgroup v1 has no pids controller mounted"
        );
    }

    #[test]
    fn spec_path_is_relative_to_every_hierarchy() {
        let (_root, v1) = fake_root();
        assert_eq!(
            v1.spec_path(&path("kubepods/pod123/ctr456")),
            "/kubepods/pod123/ctr456"
        );
    }

    #[test]
    fn pids_and_oom_kills_are_read_back() {
        let (root, v1) = fake_root();
        let ctr = path("pod/ctr");
        v1.create(&ctr).unwrap();
        fs::write(root.path().join("pids/pod/ctr/cgroup.procs"), "7\n8\n").unwrap();
        fs::write(
            root.path().join("memory/pod/ctr/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        )
        .unwrap();
        assert_eq!(v1.pids(&ctr).unwrap(), vec![7, 8]);
        assert_eq!(v1.oom_kill_count(&ctr).unwrap(), 3);
    }

    #[test]
    fn remove_takes_the_cgroup_out_of_every_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        for h in ["cpu", "memory"] {
            fs::create_dir(root.path().join(h)).unwrap();
        }
        let v1 = V1::at(root.path()).unwrap();
        let ctr = path("pod/ctr");
        v1.create(&ctr).unwrap();
        v1.remove(&ctr).unwrap();
        assert!(!v1.exists(&ctr));
        assert!(v1.exists(&path("pod")));
        v1.remove(&path("pod")).unwrap();
        v1.remove(&path("pod")).unwrap();
        assert!(!root.path().join("memory/pod").exists());
    }
}
