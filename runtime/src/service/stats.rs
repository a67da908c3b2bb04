//! ContainerStats, ListContainerStats, PodSandboxStats and
//! ListPodSandboxStats in domain terms: what a container's and a pod's
//! cgroups used, the CPU rate between two samples, the writable layer's
//! bytes and inodes, and the pod's network counters.
//!
//! * CPU: `usage_nano_cores` is the rate between this sample and the one
//!   before it (of any caller: kubelet every 10 s, metrics-server), kept per
//!   cgroup as containerd keeps it; the first sample of a cgroup has none.
//! * The writable layer is not walked on every call (250 pods every 10 s):
//!   its usage is cached per container, walked once when first asked for,
//!   then again in the background when the cached value is older than
//!   [`FS_REFRESH`]; a call always answers from the cache.
//! * Network: `/proc/thread-self/net/dev` read by a short thread inside the
//!   pod's network namespace (a pinned netns has no process to read it
//!   through).

use super::*;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use crate::cgroups::CgroupUsage;

/// The writable layer's cached usage is walked again once older than this.
pub const FS_REFRESH: Duration = Duration::from_secs(5);

/// One interface's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceUsage {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// A writable layer's (or any directory tree's) disk usage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Allocated bytes (st_blocks × 512, as du counts; hard links once).
    pub bytes: u64,
    pub inodes: u64,
    pub at_ns: i64,
}

#[derive(Clone, Debug)]
pub struct ContainerStats {
    pub record: ContainerRecord,
    pub at_ns: i64,
    pub cgroup: CgroupUsage,
    /// CPU in use, nanocores (billionths of a core), since the sample
    /// before this one.
    pub nano_cores: Option<u64>,
    pub writable_layer: DiskUsage,
}

#[derive(Clone, Debug)]
pub struct PodStats {
    pub record: SandboxRecord,
    pub at_ns: i64,
    pub cgroup: CgroupUsage,
    pub nano_cores: Option<u64>,
    /// The pod's interfaces (loopback left out); None for a host-network
    /// pod, whose traffic is the node's.
    pub interfaces: Option<Vec<InterfaceUsage>>,
    pub containers: Vec<ContainerStats>,
}

/// Filter of ListContainerStats / ListPodSandboxStats.
#[derive(Clone, Debug, Default)]
pub struct StatsFilter {
    pub id: String,
    pub sandbox_id: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Default)]
pub(super) struct StatsCache {
    /// Previous CPU sample per cgroup: (time, usage ns).
    cpu: HashMap<String, (i64, u64)>,
    /// Writable layer usage per container, and whether a walk is running.
    fs: HashMap<String, (DiskUsage, Instant, bool)>,
}

impl Runtime {
    /// One container's stats (it must not have exited).
    pub async fn container_stats(&self, id: &str) -> Result<ContainerStats> {
        let rec = self.container(id)?;
        if rec.state == ContainerState::Exited {
            return Err(Error::NotFound(format!(
                "container {} has exited: it has no stats",
                rec.id
            )));
        }
        let rt = self.handle();
        tokio::task::spawn_blocking(move || rt.container_sample(rec, true))
            .await
            .map_err(|e| Error::Internal(format!("stats task failed: {e}")))
    }

    /// Stats of the containers `f` selects that have not exited (as
    /// containerd lists them).
    pub async fn list_container_stats(&self, f: &StatsFilter) -> Result<Vec<ContainerStats>> {
        let recs: Vec<ContainerRecord> = self.list_containers(&ContainerFilter {
            id: f.id.clone(),
            sandbox_id: f.sandbox_id.clone(),
            state: None,
            labels: f.labels.clone(),
        })?;
        let rt = self.handle();
        tokio::task::spawn_blocking(move || {
            recs.into_iter()
                .filter(|r| r.state != ContainerState::Exited)
                .map(|r| rt.container_sample(r, true))
                .collect()
        })
        .await
        .map_err(|e| Error::Internal(format!("stats task failed: {e}")))
    }

    /// One pod's stats (it must be ready), its running containers' with it.
    pub async fn pod_stats(&self, id: &str) -> Result<PodStats> {
        let rec = self.sandbox(id)?;
        if rec.state != SandboxState::Ready {
            return Err(Error::NotFound(format!(
                "pod sandbox {} is not ready: it has no stats",
                rec.id
            )));
        }
        let rt = self.handle();
        tokio::task::spawn_blocking(move || rt.pod_sample(rec, true))
            .await
            .map_err(|e| Error::Internal(format!("stats task failed: {e}")))
    }

    /// Stats of the ready pods `f` selects.
    pub async fn list_pod_stats(&self, f: &StatsFilter) -> Result<Vec<PodStats>> {
        self.sample_ready_pods(f, true).await
    }

    /// Every ready pod's sample for ListPodSandboxMetrics: counters only,
    /// so that a Prometheus scrape does not shorten the window of the CPU
    /// rate kubelet's stats calls read (usage_nano_cores).
    pub async fn pod_metrics_samples(&self) -> Result<Vec<PodStats>> {
        self.sample_ready_pods(&StatsFilter::default(), false).await
    }

    async fn sample_ready_pods(&self, f: &StatsFilter, rate: bool) -> Result<Vec<PodStats>> {
        let recs = self.list_sandboxes(&SandboxFilter {
            id: f.id.clone(),
            state: Some(SandboxState::Ready),
            labels: f.labels.clone(),
        })?;
        let rt = self.handle();
        tokio::task::spawn_blocking(move || {
            recs.into_iter().map(|r| rt.pod_sample(r, rate)).collect()
        })
        .await
        .map_err(|e| Error::Internal(format!("stats task failed: {e}")))
    }

    /// `rate`: compute usage_nano_cores against the previous sample and
    /// keep this one for the next.
    fn container_sample(&self, record: ContainerRecord, rate: bool) -> ContainerStats {
        let at_ns = now_ns();
        let cgroup = record
            .cgroup
            .as_deref()
            .and_then(|c| CgroupPath::new(c).ok())
            .map(|cg| self.inner.cgroups.usage(&cg))
            .unwrap_or_default();
        let nano_cores = rate
            .then(|| self.cpu_rate(&format!("c/{}", record.id), at_ns, cgroup.cpu_usage_ns))
            .flatten();
        let writable_layer = self.writable_layer(&record);
        ContainerStats {
            record,
            at_ns,
            cgroup,
            nano_cores,
            writable_layer,
        }
    }

    fn pod_sample(&self, record: SandboxRecord, rate: bool) -> PodStats {
        let at_ns = now_ns();
        let cgroup = self
            .inner
            .pod_cgroup(&record.config, &record.id)
            .map(|cg| self.inner.cgroups.usage(&cg))
            .unwrap_or_default();
        let nano_cores = rate
            .then(|| self.cpu_rate(&format!("p/{}", record.id), at_ns, cgroup.cpu_usage_ns))
            .flatten();
        let interfaces = record.namespaces.net.as_deref().map(|ns| {
            net_dev_in(ns).unwrap_or_else(|e| {
                tracing::debug!(pod = %record.id, error = %e, "reading the pod's network counters");
                Vec::new()
            })
        });
        let containers = self
            .list_containers(&ContainerFilter {
                sandbox_id: record.id.clone(),
                ..Default::default()
            })
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.sandbox_id == record.id && c.state != ContainerState::Exited)
            .map(|c| self.container_sample(c, rate))
            .collect();
        PodStats {
            record,
            at_ns,
            cgroup,
            nano_cores,
            interfaces,
            containers,
        }
    }

    /// The CPU rate since the last sample of `key`, and this one kept.
    fn cpu_rate(&self, key: &str, at_ns: i64, usage: Option<u64>) -> Option<u64> {
        let usage = usage?;
        let mut c = self.inner.stats.lock().ok()?;
        let prev = c.cpu.insert(key.to_string(), (at_ns, usage));
        let (t0, u0) = prev?;
        let dt = u64::try_from(at_ns.checked_sub(t0)?)
            .ok()
            .filter(|&d| d > 0)?;
        // usage counters only grow; a cgroup made anew restarts them.
        let du = usage.checked_sub(u0)?;
        Some(u64::try_from(u128::from(du) * 1_000_000_000 / u128::from(dt)).unwrap_or(u64::MAX))
    }

    /// The writable layer's usage from the cache, walked now the first
    /// time, in the background once it is older than FS_REFRESH.
    fn writable_layer(&self, rec: &ContainerRecord) -> DiskUsage {
        let upper = rec.rootfs.layer_dir.join("upper");
        let cached = {
            let Ok(mut c) = self.inner.stats.lock() else {
                return DiskUsage::default();
            };
            match c.fs.get_mut(&rec.id) {
                Some((u, at, walking)) => {
                    if at.elapsed() >= FS_REFRESH && !*walking {
                        *walking = true;
                        let (rt, id, dir) = (self.handle(), rec.id.clone(), upper.clone());
                        tokio::task::spawn_blocking(move || {
                            let u = disk_usage(&dir);
                            if let Ok(mut c) = rt.inner.stats.lock()
                                && let Some(e) = c.fs.get_mut(&id)
                            {
                                *e = (u, Instant::now(), false);
                            }
                        });
                    }
                    Some(*u)
                }
                None => None,
            }
        };
        if let Some(u) = cached {
            return u;
        }
        let u = disk_usage(&upper);
        if let Ok(mut c) = self.inner.stats.lock() {
            c.fs.insert(rec.id.clone(), (u, Instant::now(), false));
        }
        u
    }

    /// A removed container's or pod's samples go too.
    pub(super) fn forget_stats(&self, id: &str) {
        if let Ok(mut c) = self.inner.stats.lock() {
            c.cpu.remove(&format!("c/{id}"));
            c.cpu.remove(&format!("p/{id}"));
            c.fs.remove(id);
        }
    }

    /// Where writable layers live, as ImageFsInfo names the filesystem
    /// (kubelet matches the two).
    pub fn writable_layer_mountpoint(&self) -> PathBuf {
        self.inner.images.fs_usage().mountpoint
    }
}

/// Bytes (allocated) and inodes of the tree at `dir`, symlinks not
/// followed, each inode counted once, without leaving its filesystem.
pub fn disk_usage(dir: &Path) -> DiskUsage {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut u = DiskUsage {
        at_ns: now_ns(),
        ..Default::default()
    };
    let Ok(top) = fs::symlink_metadata(dir) else {
        return u;
    };
    let dev = top.dev();
    let mut stack = vec![dir.to_path_buf()];
    if seen.insert(top.ino()) {
        u.bytes += top.blocks() * 512;
        u.inodes += 1;
    }
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.dev() != dev {
                continue;
            }
            if md.nlink() > 1 && !seen.insert(md.ino()) {
                continue;
            }
            u.bytes += md.blocks() * 512;
            u.inodes += 1;
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    u
}

/// The interfaces of the network namespace pinned at `netns`, but `lo`.
fn net_dev_in(netns: &Path) -> std::io::Result<Vec<InterfaceUsage>> {
    let ns = fs::File::open(netns)?;
    let text = std::thread::Builder::new()
        .name("berth-netstat".into())
        .spawn(move || {
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(std::io::Error::from)?;
            fs::read_to_string("/proc/thread-self/net/dev")
        })?
        .join()
        .map_err(|_| std::io::Error::other("the netns thread panicked"))??;
    Ok(parse_net_dev(&text))
}

/// /proc/net/dev: two header lines, then `name: rx_bytes packets errs drop
/// fifo frame compressed multicast tx_bytes packets errs …`.
pub fn parse_net_dev(text: &str) -> Vec<InterfaceUsage> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let v: Vec<u64> = rest
                .split_whitespace()
                .map(|n| n.parse().ok())
                .collect::<Option<_>>()?;
            Some(InterfaceUsage {
                name: name.to_string(),
                rx_bytes: *v.first()?,
                rx_packets: *v.get(1)?,
                rx_errors: *v.get(2)?,
                rx_dropped: *v.get(3)?,
                tx_bytes: *v.get(8)?,
                tx_packets: *v.get(9)?,
                tx_errors: *v.get(10)?,
                tx_dropped: *v.get(11)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_lines_become_interfaces_without_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  \
eth0:    5000      40    2    1    0     0          0         0     7000      50    3    4    0     0       0          0\n";
        let ifs = parse_net_dev(text);
        assert_eq!(
            ifs,
            vec![InterfaceUsage {
                name: "eth0".into(),
                rx_bytes: 5000,
                rx_packets: 40,
                rx_errors: 2,
                rx_dropped: 1,
                tx_bytes: 7000,
                tx_packets: 50,
                tx_errors: 3,
                tx_dropped: 4,
            }]
        );
        assert!(parse_net_dev("garbage").is_empty());
    }

    #[test]
    fn disk_usage_counts_blocks_and_inodes_and_hard_links_once() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        fs::write(d.path().join("sub/f"), vec![1u8; 100 * 1024]).unwrap();
        fs::hard_link(d.path().join("sub/f"), d.path().join("g")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("l")).unwrap();
        let u = disk_usage(d.path());
        // top, sub, f (once), l
        assert_eq!(u.inodes, 4, "{u:?}");
        assert!(u.bytes >= 100 * 1024, "{u:?}");
        assert!(
            u.bytes < 200 * 1024,
            "the hard link is not counted twice: {u:?}"
        );
        assert_eq!(disk_usage(&d.path().join("missing")).inodes, 0);
    }
}
