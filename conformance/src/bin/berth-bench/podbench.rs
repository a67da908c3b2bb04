//! What the pod benchmarks (`pods`, `network`) share: percentiles and
//! timing, a CRI context that makes and removes pods, running a workload on
//! a fresh berthd or containerd (every pod removed and the daemon stopped
//! afterwards, on every path), and finding the processes and cgroups the
//! runtimes leave.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use berth_conformance::berthd::{Berthd, BerthdOptions, unmount_all_under};
use berth_conformance::leak;
use berth_cri_api::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, ListPodSandboxRequest, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, PortMapping, Protocol,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopContainerRequest, StopPodSandboxRequest,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::client::{self, Client};
use crate::containerd::{Containerd, ContainerdSetup};

/// A CRI call taking longer than this is a failure.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

// -------------------------------------------------------------------- stats

/// Nearest-rank percentile.
pub fn pct(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    Some(s[rank.clamp(1, s.len()) - 1])
}

/// Milliseconds since `t`.
pub fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

pub fn met(ok: bool) -> &'static str {
    if ok { "MET" } else { "NOT MET" }
}

pub fn status_err(what: &str, s: tonic::Status) -> anyhow::Error {
    anyhow!("{what}: {:?}: {}", s.code(), s.message())
}

/// The machine the bench runs on.
pub struct HostInfo {
    pub cores: usize,
    pub kernel: String,
    pub loadavg_start: String,
}

pub fn host_info() -> HostInfo {
    HostInfo {
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        loadavg_start: crate::loadavg(),
    }
}

/// Run `f` on every item, `c` at a time; returns the errors.
pub async fn for_each_concurrently<T, F, Fut>(items: Vec<T>, c: usize, f: F) -> Vec<anyhow::Error>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    use futures::StreamExt;
    futures::stream::iter(items)
        .map(f)
        .buffer_unordered(c.max(1))
        .filter_map(|r| async move { r.err() })
        .collect()
        .await
}

/// Run `f` on every item, `c` at a time (1: one after the other); returns
/// the outputs in the order they finished.
pub async fn map_concurrently<T, R, F, Fut>(items: Vec<T>, c: usize, f: F) -> Vec<R>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = R>,
{
    use futures::StreamExt;
    futures::stream::iter(items)
        .map(f)
        .buffer_unordered(c.max(1))
        .collect()
        .await
}

// ---------------------------------------------------------------------- CRI

/// What every pod and container needs.
pub struct Ctx {
    pub client: Client,
    pub image: String,
    pub logs: PathBuf,
    /// Distinguishes the pods of one run phase from another's.
    pub tag: String,
}

impl Ctx {
    /// A pod on the host network (NamespaceMode NODE), pid CONTAINER, ipc
    /// POD.
    pub fn pod_config(&self, name: &str) -> Result<PodSandboxConfig> {
        self.pod_config_with(name, NamespaceMode::Node, &[])
    }

    /// A pod with the given network namespace mode (POD: the runtime's pod
    /// network) and a TCP hostPort (container port 80) per `host_ports`
    /// entry, on every host address; pid CONTAINER, ipc POD.
    pub fn pod_config_with(
        &self,
        name: &str,
        network: NamespaceMode,
        host_ports: &[u16],
    ) -> Result<PodSandboxConfig> {
        let logs = self.logs.join(name);
        fs::create_dir_all(&logs)?;
        Ok(PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{}-{name}", self.tag),
                namespace: "berth-bench".into(),
                attempt: 0,
            }),
            log_directory: logs.display().to_string(),
            labels: HashMap::from([("berth-bench".into(), self.tag.clone())]),
            port_mappings: host_ports
                .iter()
                .map(|p| PortMapping {
                    protocol: Protocol::Tcp as i32,
                    container_port: 80,
                    host_port: i32::from(*p),
                    host_ip: String::new(),
                })
                .collect(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: network as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    pub fn container_config(&self, name: &str) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: vec!["sleep".into(), "3600".into()],
            log_path: format!("{name}.log"),
            labels: HashMap::from([("name".into(), name.into())]),
            ..Default::default()
        }
    }

    pub async fn run_pod(&self, config: &PodSandboxConfig) -> Result<String> {
        self.run_pod_on(config, "").await
    }

    /// RunPodSandbox on the RuntimeClass handler `handler`.
    pub async fn run_pod_on(&self, config: &PodSandboxConfig, handler: &str) -> Result<String> {
        Ok(self
            .client
            .runtime()
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.to_string(),
            })
            .await
            .map_err(|s| status_err("RunPodSandbox", s))?
            .into_inner()
            .pod_sandbox_id)
    }

    pub async fn create(&self, pod: &str, config: &PodSandboxConfig, name: &str) -> Result<String> {
        Ok(self
            .client
            .runtime()
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(self.container_config(name)),
                sandbox_config: Some(config.clone()),
            })
            .await
            .map_err(|s| status_err("CreateContainer", s))?
            .into_inner()
            .container_id)
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        self.client
            .runtime()
            .start_container(StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .map_err(|s| status_err("StartContainer", s))?;
        Ok(())
    }

    pub async fn stop_remove_container(&self, id: &str) -> Result<()> {
        let mut rt = self.client.runtime();
        rt.stop_container(StopContainerRequest {
            container_id: id.into(),
            timeout: 0,
        })
        .await
        .map_err(|s| status_err("StopContainer", s))?;
        rt.remove_container(RemoveContainerRequest {
            container_id: id.into(),
        })
        .await
        .map_err(|s| status_err("RemoveContainer", s))?;
        Ok(())
    }

    pub async fn stop_remove_pod(&self, id: &str) -> Result<()> {
        let mut rt = self.client.runtime();
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .map_err(|s| status_err("StopPodSandbox", s))?;
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .map_err(|s| status_err("RemovePodSandbox", s))?;
        Ok(())
    }

    /// The pod's IPs as PodSandboxStatus reports them (primary first;
    /// empty without a pod network).
    pub async fn pod_ips(&self, id: &str) -> Result<Vec<String>> {
        let status = self
            .client
            .runtime()
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            })
            .await
            .map_err(|s| status_err("PodSandboxStatus", s))?
            .into_inner()
            .status
            .ok_or_else(|| anyhow!("PodSandboxStatus of {id}: no status"))?;
        Ok(status
            .network
            .map(|n| {
                std::iter::once(n.ip)
                    .chain(n.additional_ips.into_iter().map(|i| i.ip))
                    .filter(|ip| !ip.is_empty())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Remove every pod of the runtime (best effort, 10 at a time); returns
    /// how many and the first error.
    pub async fn remove_all_pods(&self) -> Result<usize> {
        let pods = self
            .client
            .runtime()
            .list_pod_sandbox(ListPodSandboxRequest::default())
            .await
            .map_err(|s| status_err("ListPodSandbox", s))?
            .into_inner()
            .items;
        let n = pods.len();
        let ids: Vec<String> = pods.into_iter().map(|p| p.id).collect();
        let errors =
            for_each_concurrently(ids, 10, |id| async move { self.stop_remove_pod(&id).await })
                .await;
        if let Some(e) = errors.into_iter().next() {
            return Err(e);
        }
        Ok(n)
    }
}

// ------------------------------------------------------------------ daemons

/// How the runtime's processes are found.
pub struct Procs {
    pub daemon_pid: Option<u32>,
    /// The daemon's directory, which its shims' command lines name.
    pub dir: PathBuf,
    pub shim_comm: &'static str,
}

/// What the daemons of a run made, for the checks at its end.
#[derive(Default)]
pub struct Tracker {
    /// Every directory of the run (no mount may stay under them).
    pub dirs: Vec<PathBuf>,
    /// berthd's own parents of pod cgroups (the harness gives each berthd one).
    pub cgroup_parents: Vec<String>,
    /// Processes of a stopped daemon still alive (killed): "PID COMM: CMDLINE".
    pub leftover_processes: Vec<String>,
    /// Mounts a stopped daemon left under its directory (detached).
    pub leftover_mounts: Vec<String>,
}

/// Run `work` on a fresh berthd started with `options`, with a CRI
/// context whose pods are tagged `tag`; then remove every pod it has and
/// stop it (SIGTERM, exit 0 wanted). Processes of it still alive after
/// that are killed and recorded, mounts under its directory detached. An
/// error carries the tail of berthd's log.
pub async fn on_berthd(
    options: BerthdOptions,
    run_dir: &Path,
    tag: &str,
    image: &str,
    track: &mut Tracker,
    work: impl AsyncFnOnce(&Ctx, &Procs) -> Result<()>,
) -> Result<()> {
    let mut d = Berthd::start(options).await.context("starting berthd")?;
    track.dirs.push(d.dir().to_path_buf());
    track.cgroup_parents.push(d.cgroup_parent().to_string());
    let procs = Procs {
        daemon_pid: d.pid(),
        dir: d.dir().to_path_buf(),
        shim_comm: "berth-shim",
    };
    let out = drive(&d.socket(), procs, run_dir, tag, image, work).await;
    let mut out = out.map_err(|e| {
        anyhow!(
            "{e:#}\n---- berthd log (tail) ----\n{}",
            crate::tail_lines(&d.log(), 40)
        )
    });
    if let Err(e) = d.stop().await {
        let msg = format!("berthd did not stop cleanly: {e:#}");
        eprintln!("berth-bench: {msg}");
        if out.is_ok() {
            out = Err(anyhow!(msg));
        }
    }
    // Shims (and their containers) still alive: report, kill.
    for (pid, comm, cmd) in procs_naming(d.dir(), &[]) {
        track
            .leftover_processes
            .push(format!("{pid} {comm}: {cmd}"));
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    // Every pod was removed: nothing of berthd's may stay mounted (its
    // state dir's own tmpfs, the harness's, aside).
    track
        .leftover_mounts
        .extend(leak::mounts_under(&[d.dir().to_path_buf()]));
    unmount_all_under(d.dir());
    // Dropping `d` removes its cgroups and its directory.
    out
}

/// Connect to a daemon's socket, run `work` with a CRI context whose pods
/// are tagged `tag`, then remove every pod it has (both must succeed).
async fn drive(
    socket: &Path,
    procs: Procs,
    run_dir: &Path,
    tag: &str,
    image: &str,
    work: impl AsyncFnOnce(&Ctx, &Procs) -> Result<()>,
) -> Result<()> {
    let client = client::connect(socket, CALL_TIMEOUT).await?;
    let ctx = Ctx {
        client,
        image: image.to_string(),
        logs: run_dir.join(format!("logs-{tag}")),
        tag: tag.to_string(),
    };
    let w = work(&ctx, &procs).await;
    let removed = ctx.remove_all_pods().await;
    match (w, removed) {
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(e.context("removing the pods at the end")),
        (Ok(()), Ok(_)) => Ok(()),
    }
}

/// Like [`on_berthd`], on a fresh containerd (directory under `run_dir`).
/// Stopping it kills its shims and detaches its mounts; its directory goes
/// with the run's.
pub async fn on_containerd(
    setup: &ContainerdSetup,
    run_dir: &Path,
    tag: &str,
    image: &str,
    track: &mut Tracker,
    work: impl AsyncFnOnce(&Ctx, &Procs) -> Result<()>,
) -> Result<()> {
    let c = Containerd::start(run_dir, setup).await?;
    track.dirs.push(c.path().to_path_buf());
    let procs = Procs {
        daemon_pid: c.pid(),
        dir: c.path().to_path_buf(),
        shim_comm: "containerd-shim",
    };
    let out = drive(&c.socket(), procs, run_dir, tag, image, work).await;
    let mut out = out.map_err(|e| {
        anyhow!(
            "{e:#}\n---- containerd log (tail) ----\n{}",
            crate::tail_lines(&c.log_tail(), 40)
        )
    });
    match c.stop().await {
        Ok(dir) => drop(dir),
        Err(e) => {
            let msg = format!("stopping containerd: {e:#}");
            eprintln!("berth-bench: {msg}");
            if out.is_ok() {
                out = Err(anyhow!(msg));
            }
        }
    }
    out
}

// ---------------------------------------------------------------- processes

/// Processes whose comm is in `comms` (empty: any) and whose command line
/// names `dir`: (pid, comm, cmdline).
pub fn procs_naming(dir: &Path, comms: &[&str]) -> Vec<(i32, String, String)> {
    let needle = dir.display().to_string();
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let comm = fs::read_to_string(e.path().join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        if !comms.is_empty() && !comms.contains(&comm.as_str()) {
            continue;
        }
        let cmdline = fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if cmdline.contains(&needle) {
            out.push((pid, comm, cmdline.trim().to_string()));
        }
    }
    out.sort();
    out
}

// ------------------------------------------------------------------ cgroups

const CGROUP_PARENTS: &[&str] = &["berth", "k8s.io"];

/// Every directory under /sys/fs/cgroup/*/{berth,k8s.io,EXTRA…} (and the
/// unified hierarchy's), the parents included.
pub fn cgroup_dirs(extra: &[String]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(rd) = fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                roots.push(e.path());
            }
        }
    }
    fn walk(d: &Path, out: &mut BTreeSet<PathBuf>) {
        out.insert(d.to_path_buf());
        if let Ok(rd) = fs::read_dir(d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
    }
    for r in roots {
        for p in CGROUP_PARENTS
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str))
        {
            let d = r.join(p);
            if d.is_dir() {
                walk(&d, &mut out);
            }
        }
    }
    out
}

/// Kill the processes in the cgroups that were not there at the start
/// (what a runtime left running: containerd's sandbox containers survive
/// their shims); returns "PID COMM" of each.
pub fn kill_in_new_cgroups(before: &BTreeSet<PathBuf>, extra: &[String]) -> Vec<String> {
    let mut out = BTreeSet::new();
    for d in cgroup_dirs(extra).difference(before) {
        if let Ok(procs) = fs::read_to_string(d.join("cgroup.procs")) {
            for pid in procs
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                    out.insert(format!("{pid} {}", comm.trim()));
                }
            }
        }
    }
    out.into_iter().collect()
}

/// Remove the cgroups that were not there at the start, deepest first;
/// returns them (those that could not be removed marked).
pub fn remove_new_cgroups(before: &BTreeSet<PathBuf>, extra: &[String]) -> Vec<String> {
    let mut new: Vec<PathBuf> = cgroup_dirs(extra).difference(before).cloned().collect();
    new.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    let mut out = Vec::new();
    for d in new {
        // A cgroup with processes cannot go: kill them first.
        if let Ok(procs) = fs::read_to_string(d.join("cgroup.procs")) {
            for pid in procs
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let mut ok = false;
        for _ in 0..50 {
            if fs::remove_dir(&d).is_ok() || !d.exists() {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        out.push(if ok {
            d.display().to_string()
        } else {
            format!("{} (could not be removed)", d.display())
        });
    }
    out
}

/// The cgroups in `list` (from [`remove_new_cgroups`]) that could not be
/// removed.
pub fn stuck_cgroups(list: &[String]) -> Vec<&String> {
    list.iter()
        .filter(|c| c.ends_with("(could not be removed)"))
        .collect()
}

/// What the daemons of a run left behind (removed by then).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Leftovers {
    /// Mounts under the run's directories (detached).
    pub mounts: Vec<String>,
    /// Processes of stopped daemons (killed).
    pub processes: Vec<String>,
    /// Cgroups that were not there at the start (removed, or marked as
    /// not removable).
    pub cgroups: Vec<String>,
}

impl Tracker {
    /// After every daemon is stopped: detach the mounts left under the
    /// run's directories, remove the cgroups made since `cgroups_before`,
    /// and remove `run_dir` (kept if a mount was there, so that removing it
    /// cannot reach into a file system that was mounted).
    pub async fn finish(
        self,
        run_dir: tempfile::TempDir,
        cgroups_before: BTreeSet<PathBuf>,
    ) -> Result<Leftovers> {
        let dirs = self.dirs;
        let mut mounts = self.leftover_mounts;
        for m in leak::mounts_under(&dirs) {
            if !mounts.contains(&m) {
                mounts.push(m);
            }
        }
        for d in &dirs {
            unmount_all_under(d);
        }
        for m in leak::mounts_under(&dirs) {
            if !mounts.contains(&m) {
                mounts.push(m);
            }
        }
        let parents = self.cgroup_parents;
        let cgroups =
            tokio::task::spawn_blocking(move || remove_new_cgroups(&cgroups_before, &parents))
                .await?;
        let run_path = run_dir.path().to_path_buf();
        if mounts.is_empty() {
            run_dir
                .close()
                .with_context(|| format!("removing {}", run_path.display()))?;
        } else {
            drop(run_dir);
        }
        Ok(Leftovers {
            mounts,
            processes: self.leftover_processes,
            cgroups,
        })
    }
}
