//! [`Runtime`]: the pod sandbox and container lifecycle in domain terms,
//! what cri-server's RuntimeService calls. One file per group of CRI calls,
//! as containerd's `internal/cri/server` does:
//!
//! * `sandbox.rs`: RunPodSandbox, StopPodSandbox, RemovePodSandbox;
//! * `container.rs`: CreateContainer, StartContainer, StopContainer,
//!   RemoveContainer, ContainerStatus and ListContainers' views;
//! * `exec.rs`: ExecSync, ReopenContainerLog;
//! * `events.rs`: GetContainerEvents;
//! * `recover.rs`: what berthd does at start after a crash or a reboot;
//! * `undo.rs`: the [`Undo`] list.
//!
//! This file holds the shared state ([`Runtime`], `Inner`), the lookups and
//! the helpers both pods and containers use (starting and killing shims,
//! cgroup and directory clean-up).
//!
//! Every step that makes something (a directory, a namespace pin, a tmpfs, a
//! record) pushes its undo onto an [`Undo`] list right away; the list runs
//! in reverse if a later step fails and is disarmed on success, so the set-up
//! and its rollback read together (containerd's sandbox_run.go does the same
//! with defers).

mod container;
mod events;
mod exec;
mod recover;
mod reserve;
mod sandbox;
mod stats;
mod undo;

pub use container::{cri_signal_name, cri_signal_number, parse_signal};
pub use events::{Event, EventKind};
pub use exec::{ExecOutput, StreamAsk};
pub use stats::{ContainerStats, DiskUsage, InterfaceUsage, PodStats, StatsFilter};
pub use undo::Undo;

use recover::cleanup_unrecorded;
use reserve::Names;
use sandbox::release_sandbox;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

use crate::cgroups::{CgroupManager, CgroupPath, Cgroups};
use crate::error::{Error, Result};
use crate::model::{self, ContainerConfig, NamespaceMode, SandboxConfig};
use crate::namespaces::{self, Wanted};
use crate::shim::protocol::{self as proto, Request, Response, ShimConfig, ShimKind};
use crate::shim_client;
use crate::spec::{self, PodPaths};
use crate::state::{
    ContainerRecord, ContainerState, SandboxRecord, SandboxState, ShimRef, StateStore,
};

/// Size of a pod's /dev/shm, as containerd and Docker default it.
const SHM_SIZE: &str = "size=65536k";

#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Persistent root (the runtime database lives here).
    pub root: PathBuf,
    /// Runtime state dir: sandboxes/ and containers/ under it.
    pub state: PathBuf,
    /// The berth-shim binary as installed (checked for RuntimeReady).
    pub shim: PathBuf,
    /// What shims are started from: its read-only bind
    /// (`shim_client::pin_readonly`).
    pub shim_exec: PathBuf,
    /// Parent cgroup of pods that come without a `cgroup_parent` (crictl,
    /// tests): their cgroup is `<this>/<pod id>`.
    pub cgroup_parent: String,
    /// RuntimeClass handlers besides the built-in executor (""), by name.
    pub handlers: BTreeMap<String, proto::OciRuntimeConfig>,
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A new random 64-hex-digit id, like containerd's.
pub fn new_id() -> Result<String> {
    let mut b = [0u8; 32];
    let mut f = fs::File::open("/dev/urandom").map_err(|e| Error::io("opening /dev/urandom", e))?;
    std::io::Read::read_exact(&mut f, &mut b).map_err(|e| Error::io("reading /dev/urandom", e))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// kubelet's pod name key: `<name>_<namespace>_<uid>_<attempt>`.
pub fn sandbox_name(m: &model::SandboxMetadata) -> String {
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}

/// Filter of ListContainers.
#[derive(Clone, Debug, Default)]
pub struct ContainerFilter {
    pub id: String,
    pub sandbox_id: String,
    pub state: Option<ContainerState>,
    pub labels: BTreeMap<String, String>,
}

/// Filter of ListPodSandbox.
#[derive(Clone, Debug, Default)]
pub struct SandboxFilter {
    /// Full id or unique prefix.
    pub id: String,
    pub state: Option<SandboxState>,
    pub labels: BTreeMap<String, String>,
}

pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: RuntimeConfig,
    store: Arc<StateStore>,
    images: Arc<berth_image::ImageService>,
    network: Arc<dyn berth_network::Plugin>,
    cgroups: Cgroups,
    node: spec::Node,
    events: broadcast::Sender<Event>,
    containers: RwLock<HashMap<String, ContainerRecord>>,
    sandboxes: RwLock<HashMap<String, SandboxRecord>>,
    /// Pod names (`sandbox_name`), taken or being made.
    pod_names: Arc<Names>,
    /// Container names (`container_name`), taken or being made.
    container_names: Arc<Names>,
    /// Serialises lifecycle calls on one container (Stop and Remove racing).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// One per pod: CreateContainer holds it shared while it makes a
    /// container in the pod, StopPodSandbox and RemovePodSandbox hold it
    /// alone, so that a pod is never stopped or removed under a container
    /// being made in it.
    pod_locks: Mutex<HashMap<String, Arc<tokio::sync::RwLock<()>>>>,
    /// Containers whose CreateContainer has answered while their shim
    /// still makes the init (see `Runtime::await_create`): true once the
    /// shim's start line is in and recorded.
    creating: Mutex<HashMap<String, tokio::sync::watch::Receiver<bool>>>,
    /// Previous CPU samples and cached writable-layer usage (stats.rs).
    stats: Mutex<stats::StatsCache>,
    /// Whether pods may have their own user namespace, probed at start
    /// (`rootfs::probe_userns`): why not, otherwise.
    userns: std::result::Result<(), String>,
}

/// A full id from an id or a unique prefix of one (crictl takes prefixes).
fn resolve_id<T>(m: &HashMap<String, T>, id: &str, what: &str) -> Result<String> {
    if id.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} id is required")));
    }
    if m.contains_key(id) {
        return Ok(id.to_string());
    }
    let hits: Vec<&String> = m.keys().filter(|k| k.starts_with(id)).collect();
    match hits.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Error::NotFound(format!("{what} {id:?} not found"))),
        _ => Err(Error::InvalidArgument(format!(
            "{what} id prefix {id:?} is ambiguous ({} matches)",
            hits.len()
        ))),
    }
}

fn poisoned() -> Error {
    Error::Internal("runtime state lock poisoned by an earlier panic".into())
}

impl Runtime {
    /// Run `work` (blocking: syscalls, fsyncs, waiting for a shim) from
    /// an async call path. On berthd's multi-threaded runtime in place
    /// (block_in_place: the worker hands its other tasks to another
    /// thread and this one goes on, with no wake-up on the call's path),
    /// where spawn_blocking adds two hand-offs (a wake-up of a pool thread,
    /// then of the worker): CPU at concurrency, 0.15 ms on the small state
    /// write of StartContainer; on the lifecycle calls here the difference
    /// was within run-to-run noise. Elsewhere (a
    /// current-thread runtime in tests) on the blocking pool. Either way the
    /// work runs to its end once begun, also if the caller goes away.
    pub(super) async fn blocking<T: Send + 'static>(
        what: &'static str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        if on_multi_thread_runtime() {
            Ok(tokio::task::block_in_place(work))
        } else {
            tokio::task::spawn_blocking(work)
                .await
                .map_err(|e| Error::Internal(format!("{what} task failed: {e}")))
        }
    }

    /// A write to the state store from an async path. It may wait for the
    /// group commit that holds it (an fsync, maybe behind another one), so
    /// the worker hands its other tasks to another thread for that long
    /// (block_in_place: no thread wake-up on this call's path, which
    /// spawn_blocking's two hand-offs would add, 0.15 ms here).
    pub(super) async fn store_write(
        &self,
        write: impl FnOnce(&StateStore) -> std::result::Result<(), crate::state::StateError>,
    ) -> Result<()> {
        let store = &self.inner.store;
        let r = if on_multi_thread_runtime() {
            tokio::task::block_in_place(|| write(store))
        } else {
            write(store)
        };
        r.map_err(Error::from)
    }

    /// Open the runtime database and rebuild the in-memory view.
    pub fn open(
        cfg: RuntimeConfig,
        images: Arc<berth_image::ImageService>,
        network: Arc<dyn berth_network::Plugin>,
    ) -> Result<Self> {
        // 0700: pods' and containers' state (namespace pins, /dev/shm,
        // root filesystems, bundles) is berthd's; no other user traverses it.
        for d in [cfg.state.join("sandboxes"), cfg.state.join("containers")] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d)
                .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
            // Made by an earlier berthd with a wider mode.
            fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(|e| Error::io(format!("chmod 0700 {}", d.display()), e))?;
        }
        let store = Arc::new(StateStore::open(&cfg.root)?);
        let cgroups = Cgroups::detect()?;
        let node = spec::Node::host(cgroups.version() == crate::cgroups::CgroupVersion::V2);
        let mut sandboxes = HashMap::new();
        let pod_names = Arc::new(Names::default());
        let container_names = Arc::new(Names::default());
        for s in store.sandboxes()? {
            pod_names.take(sandbox_name(&s.config.metadata()), s.id.clone())?;
            sandboxes.insert(s.id.clone(), s);
        }
        let mut containers = HashMap::new();
        for c in store.containers()? {
            if let Some(sb) = sandboxes.get(&c.sandbox_id) {
                container_names.take(container_name(&c.config, &sb.config), c.id.clone())?;
            }
            containers.insert(c.id.clone(), c);
        }
        recover::mark_lost_pods(&store, &mut sandboxes)?;
        cleanup_unrecorded(&cfg, &sandboxes, &containers, &images, &cgroups);
        // A Stop that a crash cut short after its NotReady commit.
        for s in sandboxes.values() {
            if s.state == SandboxState::NotReady {
                release_sandbox(s, &cgroups);
            }
        }
        // The network plugin rebuilds its view (addresses, ports, rules)
        // from the pods that hold a network, and drops the rest.
        let live: Vec<(String, berth_network::Attachment)> = sandboxes
            .values()
            .filter_map(|s: &SandboxRecord| s.network.clone().map(|n| (s.id.clone(), n)))
            .collect();
        network.recover(&live)?;
        let userns = crate::rootfs::probe_userns(&cfg.shim_exec, &cfg.root);
        match &userns {
            Ok(()) => tracing::info!("pods may have user namespaces (idmapped layers work here)"),
            Err(e) => tracing::warn!(reason = %e, "pods cannot have user namespaces on this node"),
        }
        let (events, _) = broadcast::channel(1024);
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                store,
                images,
                network,
                cgroups,
                node,
                events,
                containers: RwLock::new(containers),
                sandboxes: RwLock::new(sandboxes),
                pod_names,
                container_names,
                locks: Mutex::new(HashMap::new()),
                pod_locks: Mutex::new(HashMap::new()),
                creating: Mutex::new(HashMap::new()),
                stats: Mutex::new(stats::StatsCache::default()),
                userns,
            }),
        })
    }

    /// RuntimeReady: None when containers can be created, else why not
    /// (reason, message). Checked on every Status: an operator who removes
    /// or breaks the shim sees it before kubelet's pods fail.
    pub fn runtime_readiness(&self) -> Option<(String, String)> {
        let exec = &self.inner.cfg.shim_exec;
        if exec != &self.inner.cfg.shim && !crate::rootfs::is_mountpoint(exec) {
            return Some((
                "BerthShimMissing".into(),
                format!(
                    "the read-only bind of berth-shim at {} that shims start from is gone: restart berthd",
                    exec.display()
                ),
            ));
        }
        shim_client::shim_problem(&self.inner.cfg.shim).map(|m| ("BerthShimMissing".into(), m))
    }

    /// The network plugin's NetworkReady condition (it may retry what was
    /// in its way: netlink, nft).
    pub async fn network_readiness(&self) -> berth_network::Readiness {
        let net = self.inner.network.clone();
        tokio::task::spawn_blocking(move || net.readiness())
            .await
            .unwrap_or_else(|e| berth_network::Readiness::NotReady {
                reason: "NetworkPluginNotReady".into(),
                message: format!("network readiness task failed: {e}"),
            })
    }

    /// What a commit of container `id` reads: its image id, its overlay
    /// upper directory, and (in a pod with a user namespace) the host ids
    /// its root had (uid base, gid base, length).
    pub fn commit_source(&self, id: &str) -> Result<CommitSource> {
        let c = self.container(id)?;
        let shift = {
            let sbs = self.inner.sandboxes.read().map_err(|_| poisoned())?;
            sbs.get(&c.sandbox_id)
                .and_then(|sb| {
                    sb.config
                        .namespace_options()
                        .userns_options
                        .as_ref()?
                        .pod_mappings()
                })
                .map(|(u, g)| (u.host_id, g.host_id, u.length.min(g.length)))
        };
        let upper = c.rootfs.layer_dir.join("upper");
        if !upper.is_dir() {
            return Err(Error::FailedPrecondition(format!(
                "container {id} has no writable layer at {}",
                upper.display()
            )));
        }
        Ok(CommitSource {
            image_id: c.image_id.clone(),
            upper,
            shift,
        })
    }

    /// The container's cgroup as the shim sees it (for a commit's pause).
    pub fn container_cgroup(&self, id: &str) -> Result<crate::shim::cgroup::Cgroup> {
        let c = self.container(&self.resolve_container(id)?)?;
        if c.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not running: there is nothing to pause"
            )));
        }
        let cg = c
            .cgroup
            .as_deref()
            .ok_or_else(|| Error::FailedPrecondition(format!("container {id} has no cgroup")))?;
        let path = self.inner.cgroups.spec_path(&CgroupPath::new(cg)?);
        crate::shim::cgroup::Cgroup::resolve(Path::new(&path))
            .map_err(|e| Error::FailedPrecondition(format!("container {id}'s cgroup: {e}")))
    }

    /// When berthd stops serving: berth's own parent cgroup of pods that
    /// came without a `cgroup_parent` goes, in every hierarchy where no
    /// pod is left in it. It stays while berthd runs: made again for every
    /// such pod (crictl's, one at a time), it cost a dozen mkdirs and
    /// cpuset copies on v1 per pod, and as many rmdirs.
    pub fn shutdown(&self) {
        remove_default_parent_if_empty(&self.inner.cfg.cgroup_parent);
    }

    /// How many pods and containers are in each state, and how many
    /// berth-shims run (one per container not yet exited, one per pod
    /// pause): for the metrics endpoint, read without copying records.
    pub fn state_counts(&self) -> Result<StateCounts> {
        let mut c = StateCounts::default();
        for s in self
            .inner
            .sandboxes
            .read()
            .map_err(|_| poisoned())?
            .values()
        {
            match s.state {
                SandboxState::Ready => c.pods_ready += 1,
                SandboxState::NotReady => c.pods_not_ready += 1,
            }
            if s.pause.is_some() && s.state == SandboxState::Ready {
                c.shims += 1;
            }
        }
        for r in self
            .inner
            .containers
            .read()
            .map_err(|_| poisoned())?
            .values()
        {
            let i = match r.state {
                ContainerState::Created => 0,
                ContainerState::Running => 1,
                ContainerState::Exited => 2,
                ContainerState::Unknown => 3,
            };
            c.containers[i] += 1;
            if matches!(r.state, ContainerState::Created | ContainerState::Running) {
                c.shims += 1;
            }
        }
        Ok(c)
    }

    /// Whether pods may have their own user namespace (KEP-127) on this
    /// node; why not otherwise.
    pub fn user_namespaces(&self) -> std::result::Result<(), &str> {
        self.inner
            .userns
            .as_ref()
            .map(|_| ())
            .map_err(String::as_str)
    }

    /// The RuntimeClass handlers the config names (besides the built-in
    /// ""), by name.
    pub fn handlers(&self) -> &BTreeMap<String, proto::OciRuntimeConfig> {
        &self.inner.cfg.handlers
    }

    /// The network plugin's state, for Status verbose info.
    pub fn network_info(&self) -> serde_json::Value {
        self.inner.network.info()
    }

    /// kubelet's pod CIDR (UpdateRuntimeConfig).
    pub async fn set_pod_cidr(&self, cidr: String) -> Result<()> {
        let net = self.inner.network.clone();
        tokio::task::spawn_blocking(move || net.set_pod_cidr(&cidr))
            .await
            .map_err(|e| Error::Internal(format!("pod CIDR task failed: {e}")))??;
        Ok(())
    }

    fn lock_for(&self, id: &str) -> Result<Arc<tokio::sync::Mutex<()>>> {
        let mut m = self.inner.locks.lock().map_err(|_| poisoned())?;
        Ok(m.entry(id.to_string()).or_default().clone())
    }

    /// The pod's lock (see `Inner::pod_locks`).
    fn pod_lock(&self, id: &str) -> Result<Arc<tokio::sync::RwLock<()>>> {
        let mut m = self.inner.pod_locks.lock().map_err(|_| poisoned())?;
        Ok(m.entry(id.to_string()).or_default().clone())
    }

    /// The lock of a pod that exists (so that calls on a removed pod do not
    /// bring its lock back for ever).
    fn pod_lock_existing(&self, id: &str) -> Result<Arc<tokio::sync::RwLock<()>>> {
        let full = self.resolve_sandbox(id)?;
        self.pod_lock(&full)
    }

    /// Another handle on the same runtime, for tasks that outlive a call.
    fn handle(&self) -> Runtime {
        Runtime {
            inner: self.inner.clone(),
        }
    }

    /// The full id of a sandbox given by id or unique prefix.
    pub fn resolve_sandbox(&self, id: &str) -> Result<String> {
        resolve_id(
            &*self.inner.sandboxes.read().map_err(|_| poisoned())?,
            id,
            "pod sandbox",
        )
    }

    pub fn sandbox(&self, id: &str) -> Result<SandboxRecord> {
        let m = self.inner.sandboxes.read().map_err(|_| poisoned())?;
        let full = resolve_id(&m, id, "pod sandbox")?;
        m.get(&full)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {id:?} not found")))
    }

    pub fn list_sandboxes(&self, f: &SandboxFilter) -> Result<Vec<SandboxRecord>> {
        let m = self.inner.sandboxes.read().map_err(|_| poisoned())?;
        let mut out: Vec<SandboxRecord> = m
            .values()
            .filter(|s| f.id.is_empty() || s.id.starts_with(&f.id))
            .filter(|s| f.state.is_none_or(|st| st == s.state))
            .filter(|s| {
                f.labels
                    .iter()
                    .all(|(k, v)| s.config.labels.get(k) == Some(v))
            })
            .cloned()
            .collect();
        out.sort_by_key(|s| s.created_at_ns);
        Ok(out)
    }
}

fn remove_dir_logged(dir: &Path) {
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %dir.display(), error = %e, "removing pod directory"),
    }
}

fn unmount_logged(p: &Path) {
    if crate::rootfs::is_mountpoint(p)
        && let Err(e) = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH)
    {
        tracing::warn!(path = %p.display(), error = %e, "unmounting");
    }
}

impl Inner {
    /// Write a bundle and start its shim; returns the process's pid. On
    /// error the bundle dir is removed. Runs on a blocking thread.
    ///
    /// The spec's seccomp profile is compiled here and written beside
    /// config.json (`seccomp.bpf` for the shim, `seccomp.json` as the
    /// profile's record), not in it: the shim never parses a profile of
    /// hundreds of names, whose freed heap would stay in its memory.
    fn start_shim(
        &self,
        dir: &Path,
        spec: oci_spec::runtime::Spec,
        shim_cfg: &ShimConfig,
    ) -> Result<i32> {
        let r = self.write_bundle(dir, spec, shim_cfg).and_then(|()| {
            let _step = crate::step!("shim.spawn");
            let starting = self.begin_shim(dir)?;
            starting.finish().map_err(Error::from)
        });
        if r.is_err() {
            remove_dir_logged(dir);
        }
        r
    }

    /// The shim's bundle in `dir`: config.json, shim.json and the seccomp
    /// program. The caller removes `dir` if it fails (a container's holds
    /// its mounted rootfs, which goes first).
    fn write_bundle(
        &self,
        dir: &Path,
        mut spec: oci_spec::runtime::Spec,
        shim_cfg: &ShimConfig,
    ) -> Result<()> {
        fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let _step = crate::step!("shim.bundle");
        let write = |name: &str, bytes: &[u8]| {
            fs::write(dir.join(name), bytes)
                .map_err(|e| Error::io(format!("writing the bundle in {}", dir.display()), e))
        };
        let mut shim_cfg = shim_cfg.clone();
        // A handler's runtime reads the profile from the spec itself.
        let profile = match shim_cfg.runtime {
            Some(_) => None,
            None => spec
                .linux_mut()
                .as_mut()
                .and_then(|l| l.seccomp_mut().take()),
        };
        if let Some(profile) = profile {
            let native = crate::seccomp::Native::host().ok_or_else(|| {
                Error::InvalidArgument(
                    "seccomp filters are not supported on this node's architecture".into(),
                )
            })?;
            let program = crate::seccomp::compile(&profile, native)
                .map_err(|e| Error::InvalidArgument(format!("seccomp profile: {e}")))?;
            let json = serde_json::to_vec(&profile)
                .map_err(|e| Error::Internal(format!("encoding the seccomp profile: {e}")))?;
            write(proto::SECCOMP_PROFILE_FILE, &json)?;
            write(proto::SECCOMP_FILE, &program.to_bytes())?;
            shim_cfg.seccomp = true;
        }
        let spec_json = serde_json::to_vec(&spec)
            .map_err(|e| Error::Internal(format!("encoding the OCI spec: {e}")))?;
        write(proto::CONFIG_FILE, &spec_json)?;
        let shim_json = serde_json::to_vec(&shim_cfg)
            .map_err(|e| Error::Internal(format!("encoding shim.json: {e}")))?;
        write(proto::SHIM_CONFIG_FILE, &shim_json)
    }

    /// Start the shim on the bundle in `dir` (the warm one if it waits);
    /// [`shim_client::Starting::finish`] waits for its start line.
    fn begin_shim(&self, dir: &Path) -> Result<shim_client::Starting> {
        tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Internal("no async runtime to start the shim from".into()))?
            .block_on(shim_client::begin(&self.cfg.shim_exec, dir))
            .map_err(Error::from)
    }
}

/// Whether this thread runs on a multi-threaded tokio runtime, where
/// block_in_place may be called.
fn on_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

// ---------------------------------------------------------------------------
// Helpers shared by pods and containers

/// Run `work` in a task of its own and wait for it: a lifecycle call whose
/// client gives up (kubelet's runtime-request-timeout) still finishes what
/// it started, so that the next call finds a whole state, not a half one.
async fn detached<T: Send + 'static>(
    call: &'static str,
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    use tracing::Instrument;
    tokio::spawn(work.in_current_span())
        .await
        .map_err(|e| Error::Internal(format!("{call} task failed: {e}")))?
}

/// rmdir of berth's default parent cgroup in every hierarchy: the kernel
/// refuses while it has child cgroups, so another pod's is never touched.
fn remove_default_parent_if_empty(parent: &str) {
    let root = Path::new("/sys/fs/cgroup");
    let _ = fs::remove_dir(root.join(parent));
    for e in fs::read_dir(root).into_iter().flatten().flatten() {
        let _ = fs::remove_dir(e.path().join(parent));
    }
}

/// SIGKILL whatever is still in `cg` (v2: cgroup.kill) and wait a little
/// for it to go, so that the cgroup can be removed.
fn kill_cgroup_logged(cgroups: &Cgroups, cg: &CgroupPath) {
    if !cgroups.pids(cg).is_ok_and(|p| !p.is_empty()) {
        return;
    }
    tracing::info!(cgroup = %cg, "killing what is left in the cgroup");
    if let Err(e) = cgroups.kill_all(cg, nix::sys::signal::Signal::SIGKILL) {
        tracing::warn!(cgroup = %cg, error = %e, "killing the cgroup's processes");
    }
    for _ in 0..100 {
        if cgroups.pids(cg).map_or(true, |p| p.is_empty()) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn remove_cgroup_logged(cgroups: &Cgroups, cg: &CgroupPath) {
    if let Err(e) = cgroups.remove(cg) {
        tracing::warn!(cgroup = %cg, error = %e, "removing cgroup");
    }
}

/// SIGKILL everything a shim runs and wait (5 s at most) for the shim to
/// record the exit and go. If the shim does not answer, its process `pid`
/// is killed directly, but only while it is still a member of `cgroup`
/// (the container's): a pid read from a record or a file may have been
/// reused by now. Cleanup: errors are logged.
fn kill_shim(dir: &Path, pid: i32, cgroup: Option<&CgroupPath>) {
    let req = Request::Kill {
        signal: libc::SIGKILL,
        all: true,
    };
    match shim_client::call_blocking(dir, &req, std::time::Duration::from_secs(5)) {
        Ok(_) => {}
        Err(e) => {
            let gone = matches!(e, shim_client::ShimError::Gone { .. });
            if !gone {
                tracing::warn!(dir = %dir.display(), error = %e, "asking the shim to kill; killing the process directly");
            }
            match cgroup {
                Some(cg) => kill_if_member(pid, cg),
                None => tracing::warn!(
                    dir = %dir.display(),
                    pid,
                    "the shim does not answer and the process's cgroup is unknown: not killing a pid that may have been reused"
                ),
            }
            if gone {
                // No shim listens (a SIGKILLed one leaves its socket file):
                // nothing will remove the socket, nothing to wait for.
                let _ = fs::remove_file(dir.join(proto::SOCKET_FILE));
                return;
            }
        }
    }
    let sock = dir.join(proto::SOCKET_FILE);
    for _ in 0..500 {
        if !sock.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    tracing::warn!(dir = %dir.display(), "shim still there 5 s after the kill");
}

/// SIGKILL `pid` if it is a member of `cg`. The process is pinned by a
/// pidfd before the check, and the signal goes through that pidfd: if the
/// pid is reused meanwhile, the check fails (another process's cgroup) or
/// the signal finds its process gone (ESRCH), never a stranger.
fn kill_if_member(pid: i32, cg: &CgroupPath) {
    use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
    let Some(p) = Pid::from_raw(pid) else { return };
    let fd = match pidfd_open(p, PidfdFlags::empty()) {
        Ok(fd) => Some(fd),
        Err(rustix::io::Errno::SRCH) => return, // gone already
        // No pidfds (a seccomp profile around berthd refuses them): the
        // check and a plain kill, with the small race that leaves.
        Err(e) => {
            tracing::debug!(pid, error = %e, "pidfd_open; killing by pid");
            None
        }
    };
    let member =
        fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|text| lists_cgroup(&text, cg));
    if !member {
        tracing::warn!(
            pid,
            cgroup = %cg,
            "pid is no longer in the container's cgroup (reused?): not killed"
        );
        return;
    }
    let r = match &fd {
        Some(fd) => pidfd_send_signal(fd, Signal::KILL),
        None => rustix::process::kill_process(p, Signal::KILL),
    };
    if let Err(e) = r {
        tracing::debug!(pid, error = %e, "killing through a pidfd");
    }
}

/// Whether a /proc/PID/cgroup text places the process in `cg` (in any
/// hierarchy).
fn lists_cgroup(text: &str, cg: &CgroupPath) -> bool {
    let want = cg.as_str().trim_matches('/');
    text.lines().any(|l| {
        l.splitn(3, ':')
            .nth(2)
            .is_some_and(|p| p.trim_matches('/') == want)
    })
}

/// A pod's or container's state dir names the cgroup it is to get, written
/// before the cgroup is made, so that berthd finds (and removes) it after a
/// crash that came before the record.
const CGROUP_FILE: &str = "cgroup";

fn write_cgroup_file(dir: &Path, cg: &CgroupPath) -> Result<()> {
    fs::write(dir.join(CGROUP_FILE), cg.as_str())
        .map_err(|e| Error::io(format!("writing {}", dir.join(CGROUP_FILE).display()), e))
}

fn read_cgroup_file(dir: &Path) -> Option<CgroupPath> {
    let text = fs::read_to_string(dir.join(CGROUP_FILE)).ok()?;
    CgroupPath::new(text.trim()).ok()
}

/// [`Runtime::commit_source`].
#[derive(Clone, Debug)]
pub struct CommitSource {
    pub image_id: String,
    /// The container's overlay upper directory.
    pub upper: PathBuf,
    /// Host uid base, gid base and length of its pod's user namespace.
    pub shift: Option<(u32, u32, u32)>,
}

/// [`Runtime::state_counts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub pods_ready: i64,
    pub pods_not_ready: i64,
    /// Created, running, exited, unknown.
    pub containers: [i64; 4],
    pub shims: i64,
}

/// What a pod offers its containers' specs.
fn pod_paths(rec: &SandboxRecord) -> PodPaths {
    let files = crate::pod_files::PodFiles::in_dir(&rec.dir);
    PodPaths {
        net_ns: rec.namespaces.net.clone(),
        ipc_ns: rec.namespaces.ipc.clone(),
        uts_ns: rec.namespaces.uts.clone(),
        user_ns: rec.namespaces.user.clone(),
        pid_ns: rec
            .pause
            .as_ref()
            .map(|p| PathBuf::from(format!("/proc/{}/ns/pid", p.pid))),
        hostname_file: Some(files.hostname),
        hosts_file: Some(files.hosts),
        resolv_conf: Some(files.resolv_conf),
        dev_shm: rec.shm.clone(),
    }
}

fn pod_hostname(c: &SandboxConfig) -> String {
    if c.hostname.is_empty() || c.namespace_options().network == NamespaceMode::Node {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        c.hostname.clone()
    }
}

/// kubelet's container name key: `<name>_<pod>_<namespace>_<uid>_<attempt>`.
pub fn container_name(c: &ContainerConfig, pod: &SandboxConfig) -> String {
    let m = c.metadata();
    let p = pod.metadata();
    format!(
        "{}_{}_{}_{}_{}",
        m.name, p.name, p.namespace, p.uid, m.attempt
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_in_the_cgroup_its_proc_file_names() {
        let cg = CgroupPath::new("/kubepods/pod1/abc").unwrap();
        let v2 = "0::/kubepods/pod1/abc\n";
        let v1 = "12:pids:/kubepods/pod1/abc\n3:memory:/kubepods/pod1/abc\n0::/\n";
        assert!(lists_cgroup(v2, &cg));
        assert!(lists_cgroup(v1, &cg));
        assert!(!lists_cgroup("0::/kubepods/pod1/abcd\n", &cg));
        assert!(!lists_cgroup("0::/kubepods/pod1\n", &cg));
        assert!(!lists_cgroup("0::/user.slice/session-1.scope\n", &cg));
    }
}
