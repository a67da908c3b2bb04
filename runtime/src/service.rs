//! [`Runtime`]: the pod sandbox lifecycle in domain terms, what cri-server's
//! RuntimeService calls.
//!
//! Every step that makes something (a directory, a namespace pin, a tmpfs, a
//! record) pushes its undo onto an [`Undo`] list right away; the list runs
//! in reverse if a later step fails and is disarmed on success, so the set-up
//! and its rollback read together (containerd's sandbox_run.go does the same
//! with defers).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, watch};

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
    /// The berth-shim binary.
    pub shim: PathBuf,
    /// Parent cgroup of pods that come without a `cgroup_parent` (crictl,
    /// tests): their cgroup is `<this>/<pod id>`.
    pub cgroup_parent: String,
}

type UndoStep = (&'static str, Box<dyn FnOnce() + Send>);

/// Steps to undo, run in reverse unless disarmed.
#[derive(Default)]
pub struct Undo {
    steps: Vec<UndoStep>,
}

impl Undo {
    pub fn push(&mut self, what: &'static str, f: impl FnOnce() + Send + 'static) {
        self.steps.push((what, Box::new(f)));
    }

    pub fn disarm(mut self) {
        self.steps.clear();
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        while let Some((what, f)) = self.steps.pop() {
            tracing::debug!(step = what, "undoing");
            f();
        }
    }
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

/// A name being created (retries wait for it) or taken by an id.
enum NameSlot {
    InFlight(watch::Receiver<Option<std::result::Result<String, String>>>),
    Taken(String),
}

/// What GetContainerEvents streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Started,
    Stopped,
    Deleted,
}

#[derive(Clone, Debug)]
pub struct Event {
    pub container_id: String,
    pub sandbox_id: String,
    pub kind: EventKind,
    pub at_ns: i64,
}

/// Filter of ListContainers.
#[derive(Clone, Debug, Default)]
pub struct ContainerFilter {
    pub id: String,
    pub sandbox_id: String,
    pub state: Option<ContainerState>,
    pub labels: BTreeMap<String, String>,
}

/// ExecSync's answer.
#[derive(Clone, Debug)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
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
    store: StateStore,
    images: Arc<berth_image::ImageService>,
    network: Arc<dyn berth_network::Plugin>,
    cgroups: Cgroups,
    node: spec::Node,
    events: broadcast::Sender<Event>,
    containers: RwLock<HashMap<String, ContainerRecord>>,
    sandboxes: RwLock<HashMap<String, SandboxRecord>>,
    names: Mutex<HashMap<String, NameSlot>>,
    /// Serialises lifecycle calls on one id (Stop and Remove racing).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
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
    /// Open the runtime database and rebuild the in-memory view.
    pub fn open(
        cfg: RuntimeConfig,
        images: Arc<berth_image::ImageService>,
        network: Arc<dyn berth_network::Plugin>,
    ) -> Result<Self> {
        for d in [cfg.state.join("sandboxes"), cfg.state.join("containers")] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(&d)
                .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        }
        let store = StateStore::open(&cfg.root)?;
        let cgroups = Cgroups::detect()?;
        let node = spec::Node::host(cgroups.version() == crate::cgroups::CgroupVersion::V2);
        let mut sandboxes = HashMap::new();
        let mut names = HashMap::new();
        for s in store.sandboxes()? {
            names.insert(
                sandbox_name(&s.config.metadata()),
                NameSlot::Taken(s.id.clone()),
            );
            sandboxes.insert(s.id.clone(), s);
        }
        let mut containers = HashMap::new();
        for c in store.containers()? {
            if let Some(sb) = sandboxes.get(&c.sandbox_id) {
                names.insert(
                    container_name(&c.config, &sb.config),
                    NameSlot::Taken(c.id.clone()),
                );
            }
            containers.insert(c.id.clone(), c);
        }
        cleanup_unrecorded(&cfg, &sandboxes, &containers, &images, &cgroups);
        // A Stop that a crash cut short after its NotReady commit.
        for s in sandboxes.values() {
            if s.state == SandboxState::NotReady {
                release_sandbox(s);
            }
        }
        // The network plugin rebuilds its view (addresses, ports, rules)
        // from the pods that hold a network, and drops the rest.
        let live: Vec<(String, berth_network::Attachment)> = sandboxes
            .values()
            .filter_map(|s: &SandboxRecord| s.network.clone().map(|n| (s.id.clone(), n)))
            .collect();
        network.recover(&live)?;
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
                names: Mutex::new(names),
                locks: Mutex::new(HashMap::new()),
            }),
        })
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

    /// RunPodSandbox. A retry of a pod (same name) that is being created
    /// waits for that creation and gets its result; a retry after it finished
    /// gets the same id, as CRI-O's resourcestore does for kubelet's retries
    /// after a client timeout.
    pub async fn run_pod_sandbox(
        &self,
        config: SandboxConfig,
        runtime_handler: &str,
    ) -> Result<String> {
        model::validate_sandbox_config(&config)?;
        if !runtime_handler.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "runtime handler {runtime_handler:?} is not configured (berth has only the default handler \"\")"
            )));
        }
        let name = sandbox_name(&config.metadata());
        loop {
            let tx = {
                let mut names = self.inner.names.lock().map_err(|_| poisoned())?;
                match names.get(&name) {
                    Some(NameSlot::Taken(id)) => {
                        tracing::info!(pod = %name, id = %id, "pod already exists; returning it");
                        return Ok(id.clone());
                    }
                    Some(NameSlot::InFlight(rx)) => Err(rx.clone()),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        names.insert(name.clone(), NameSlot::InFlight(rx));
                        Ok(tx)
                    }
                }
            };
            match tx {
                Ok(tx) => {
                    let r = self.create_sandbox(config.clone(), &name).await;
                    let mut names = self.inner.names.lock().map_err(|_| poisoned())?;
                    match &r {
                        Ok(id) => {
                            names.insert(name.clone(), NameSlot::Taken(id.clone()));
                        }
                        Err(_) => {
                            names.remove(&name);
                        }
                    }
                    let _ = tx.send(Some(
                        r.as_ref().map(Clone::clone).map_err(|e| e.to_string()),
                    ));
                    return r;
                }
                Err(mut rx) => {
                    // Another call is creating this pod: take its result.
                    let result = loop {
                        if let Some(r) = rx.borrow().clone() {
                            break Some(r);
                        }
                        if rx.changed().await.is_err() {
                            break None;
                        }
                    };
                    if let Some(Ok(id)) = result {
                        return Ok(id);
                    }
                    // It failed (or was dropped): try ourselves.
                }
            }
        }
    }

    async fn create_sandbox(&self, config: SandboxConfig, name: &str) -> Result<String> {
        let id = new_id()?;
        let inner = self.inner.clone();
        let cfg2 = config.clone();
        let id2 = id.clone();
        let record = tokio::task::spawn_blocking(move || inner.make_sandbox(&id2, cfg2))
            .await
            .map_err(|e| Error::Internal(format!("sandbox task failed: {e}")))??;
        self.inner
            .sandboxes
            .write()
            .map_err(|_| poisoned())?
            .insert(id.clone(), record);
        tracing::info!(pod = %name, id = %id, "pod sandbox ready");
        Ok(id)
    }

    /// StopPodSandbox: tear down what the pod holds (its namespaces, its
    /// /dev/shm). Idempotent.
    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let full = match self.resolve_sandbox(id) {
            Ok(f) => f,
            // Stopping an unknown pod succeeds (kubelet retries after removal).
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        // Its containers first, killed at once (as containerd does).
        for c in self.containers_of(&full)? {
            self.stop_container(&c, 0).await?;
        }
        let lock = self.lock_for(&full)?;
        let _g = lock.lock().await;
        let Some(mut rec) = self
            .inner
            .sandboxes
            .read()
            .map_err(|_| poisoned())?
            .get(&full)
            .cloned()
        else {
            return Ok(());
        };
        // The network first, while the netns is pinned (CNI plugins enter
        // it). If it cannot be taken down, nothing changes and the Stop
        // fails, to be retried.
        if let Some(att) = rec.network.clone() {
            let net = self.inner.network.clone();
            let req = pod_request(&rec);
            tokio::task::spawn_blocking(move || net.teardown(&req, &att))
                .await
                .map_err(|e| Error::Internal(format!("network teardown task failed: {e}")))??;
        }
        // Then the record: NotReady, its addresses free from this commit on.
        // A crash after it leaves a NotReady pod whose namespaces, pause and
        // shm berthd releases again when it starts (see `open`).
        if rec.state != SandboxState::NotReady || rec.network.is_some() {
            let att = rec.network.take();
            rec.state = SandboxState::NotReady;
            self.inner.store.put_sandbox(&rec)?;
            self.inner
                .sandboxes
                .write()
                .map_err(|_| poisoned())?
                .insert(full, rec.clone());
            if let Some(att) = att {
                self.inner.network.released(&rec.id, &att);
            }
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.release_sandbox_resources(&rec))
            .await
            .map_err(|e| Error::Internal(format!("stop task failed: {e}")))?;
        Ok(())
    }

    /// RemovePodSandbox: stop if needed, then remove everything. Removing an
    /// unknown pod succeeds.
    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let full = match self.resolve_sandbox(id) {
            Ok(f) => f,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop_pod_sandbox(&full).await?;
        for c in self.containers_of(&full)? {
            self.remove_container(&c).await?;
        }
        let lock = self.lock_for(&full)?;
        let _g = lock.lock().await;
        let Some(rec) = self
            .inner
            .sandboxes
            .read()
            .map_err(|_| poisoned())?
            .get(&full)
            .cloned()
        else {
            return Ok(());
        };
        let dir = rec.dir.clone();
        let cgroup = rec.cgroup.clone();
        let cgroups = self.inner.cgroups.clone();
        let default_parent = self.inner.cfg.cgroup_parent.clone();
        let pause_cg = rec.pause.as_ref().and_then(|_| {
            self.inner
                .pod_cgroup(&rec.config, &rec.id)
                .and_then(|p| p.join("pause").map_err(Error::from))
                .ok()
        });
        tokio::task::spawn_blocking(move || {
            if let Some(cg) = pause_cg {
                remove_cgroup_logged(&cgroups, &cg);
            }
            if let Some(cg) = cgroup.as_deref().and_then(|c| CgroupPath::new(c).ok()) {
                remove_cgroup_logged(&cgroups, &cg);
                // berth's own parent of pods without a cgroup_parent goes
                // with its last pod (it stays while another pod is in it).
                if cg.as_str().starts_with(&format!("{default_parent}/")) {
                    remove_default_parent_if_empty(&default_parent);
                }
            }
            remove_dir_logged(&dir)
        })
        .await
        .map_err(|e| Error::Internal(format!("remove task failed: {e}")))?;
        self.inner.store.delete_sandbox(&full)?;
        self.inner
            .sandboxes
            .write()
            .map_err(|_| poisoned())?
            .remove(&full);
        self.inner
            .names
            .lock()
            .map_err(|_| poisoned())?
            .remove(&sandbox_name(&rec.config.metadata()));
        self.inner
            .locks
            .lock()
            .map_err(|_| poisoned())?
            .remove(&full);
        tracing::info!(id = %full, "pod sandbox removed");
        Ok(())
    }
}

/// What the network plugin needs of a pod.
fn network_request(
    id: &str,
    config: &SandboxConfig,
    netns: &Path,
    port_mappings: Vec<berth_network::PortMapping>,
) -> berth_network::PodRequest {
    let meta = config.metadata();
    berth_network::PodRequest {
        id: id.to_string(),
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        netns: netns.to_path_buf(),
        port_mappings,
        annotations: config.annotations.clone(),
        cgroup_parent: config.linux.cgroup_parent.clone(),
    }
}

/// The pod's PortMappings in the plugin's terms (validate_sandbox_config
/// checked ranges and addresses; a bad one is still refused here).
fn network_ports(config: &SandboxConfig) -> Result<Vec<berth_network::PortMapping>> {
    let mut ports = Vec::new();
    for (i, p) in config.port_mappings.iter().enumerate() {
        let host_ip = match p.host_ip.as_str() {
            "" => None,
            s => Some(s.parse::<std::net::IpAddr>().map_err(|e| {
                Error::InvalidArgument(format!("port_mappings[{i}].host_ip {s:?}: {e}"))
            })?),
        }
        .filter(|ip| !ip.is_unspecified());
        let port = |v: i32, f: &str| {
            u16::try_from(v).map_err(|_| {
                Error::InvalidArgument(format!("port_mappings[{i}].{f}: {v} is not a port"))
            })
        };
        ports.push(berth_network::PortMapping {
            protocol: match p.protocol {
                model::Protocol::Tcp => berth_network::Protocol::Tcp,
                model::Protocol::Udp => berth_network::Protocol::Udp,
                model::Protocol::Sctp => berth_network::Protocol::Sctp,
            },
            container_port: port(p.container_port, "container_port")?,
            host_port: port(p.host_port, "host_port")?,
            host_ip,
        });
    }
    Ok(ports)
}

/// The plugin request of a recorded pod (for teardown; its netns may be
/// gone already). Its config was validated when it was made; teardown
/// goes by the attachment, not by these ports.
fn pod_request(rec: &SandboxRecord) -> berth_network::PodRequest {
    let netns = rec
        .namespaces
        .net
        .clone()
        .unwrap_or_else(|| rec.dir.join("net"));
    let ports = network_ports(&rec.config).unwrap_or_default();
    network_request(&rec.id, &rec.config, &netns, ports)
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
    /// A pod's cgroup: the `cgroup_parent` kubelet gave (kubelet made it),
    /// or `<runtime cgroup_parent>/<pod id>`.
    fn pod_cgroup(&self, config: &SandboxConfig, id: &str) -> Result<CgroupPath> {
        let given = CgroupPath::new(&config.linux.cgroup_parent)?;
        if given.is_root() {
            Ok(CgroupPath::new(&self.cfg.cgroup_parent)?.join(id)?)
        } else {
            Ok(given)
        }
    }

    /// The blocking part of RunPodSandbox, with its undo list.
    fn make_sandbox(&self, id: &str, config: SandboxConfig) -> Result<SandboxRecord> {
        let ns = config.namespace_options().clone();
        let host_network = ns.network == NamespaceMode::Node;
        let own_ipc = ns.ipc != NamespaceMode::Node;
        let mut undo = Undo::default();

        let dir = self.cfg.state.join("sandboxes").join(id);
        fs::DirBuilder::new()
            .mode(0o711)
            .create(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let d = dir.clone();
        undo.push("pod dir", move || remove_dir_logged(&d));

        let sysctls = namespaced_sysctls(&config.linux.sysctls, host_network, own_ipc)?;
        let want = Wanted {
            net: !host_network,
            ipc: own_ipc,
            uts: !host_network,
        };
        let hostname = (!config.hostname.is_empty()).then_some(config.hostname.as_str());
        let pinned = namespaces::pin(&dir, want, hostname, &sysctls)?;
        let p = pinned.clone();
        undo.push("namespaces", move || namespaces::unpin(&p));

        // The pod network, in the pinned netns.
        let network = match &pinned.net {
            Some(netns) => {
                let req = network_request(id, &config, netns, network_ports(&config)?);
                let att = self.network.setup(&req)?;
                let (plugin, a) = (self.network.clone(), att.clone());
                undo.push("network", move || {
                    if let Err(e) = plugin.teardown(&req, &a) {
                        tracing::warn!(error = %e, "taking down the network of a pod that failed");
                    }
                    plugin.released(&req.id, &a);
                });
                Some(att)
            }
            None => None,
        };

        let shm = if own_ipc {
            let shm = dir.join("shm");
            fs::create_dir(&shm)
                .map_err(|e| Error::io(format!("creating {}", shm.display()), e))?;
            use nix::mount::MsFlags;
            nix::mount::mount(
                Some("shm"),
                &shm,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some(format!("mode=1777,{SHM_SIZE}").as_str()),
            )
            .map_err(|e| {
                Error::io(
                    format!("mounting the pod's /dev/shm at {}", shm.display()),
                    e.into(),
                )
            })?;
            let s = shm.clone();
            undo.push("shm", move || unmount_logged(&s));
            Some(shm)
        } else {
            None
        };

        crate::pod_files::write(
            &dir,
            &config.hostname,
            config.dns_config.as_ref(),
            host_network,
        )
        .map_err(|e| {
            Error::io(
                format!(
                    "writing the pod's hosts, hostname and resolv.conf in {}",
                    dir.display()
                ),
                e,
            )
        })?;

        // The pod cgroup: kubelet's cgroup_parent (which kubelet made and
        // removes itself), or berth/<id> made here.
        let cg = self.pod_cgroup(&config, id)?;
        // The last pod's removal may take away berth's default parent
        // between our mkdirs: one retry makes it again.
        let made = match self.cgroups.create(&cg) {
            Ok(m) => m,
            Err(_) => self.cgroups.create(&cg)?,
        };
        if made {
            let (cgroups, c) = (self.cgroups.clone(), cg.clone());
            undo.push("pod cgroup", move || remove_cgroup_logged(&cgroups, &c));
        }

        let mut record = SandboxRecord {
            id: id.to_string(),
            config,
            runtime_handler: String::new(),
            state: SandboxState::Ready,
            created_at_ns: now_ns(),
            dir,
            namespaces: pinned,
            pause: None,
            cgroup: made.then(|| cg.as_str().to_string()),
            shm,
            network,
        };

        // A shared PID namespace is held by berth-shim's own pause process.
        if ns.pid == NamespaceMode::Pod {
            let pause_dir = record.dir.join("pause");
            let paths = pod_paths(&record);
            let hostname = pod_hostname(&record.config);
            let pod = spec::Pod {
                id,
                config: &record.config,
                paths: &paths,
                hostname: &hostname,
            };
            // In a leaf of its own: on cgroup v2 a cgroup with children
            // cannot hold processes.
            let pause_cg = cg.join("pause")?;
            if self.cgroups.create(&pause_cg)? {
                let (cgroups, c) = (self.cgroups.clone(), pause_cg.clone());
                undo.push("pause cgroup", move || remove_cgroup_logged(&cgroups, &c));
            }
            let spec = spec::pause_spec(
                &self.node,
                &pod,
                &self.cgroups.spec_path(&pause_cg),
                &spec::RealHost,
            )?;
            let shim_cfg = ShimConfig {
                id: format!("{id}-pause"),
                kind: ShimKind::Pause,
                restrict_oom_score_adj: true,
                ..Default::default()
            };
            let pid = self.start_shim(&pause_dir, spec, &shim_cfg)?;
            let d = pause_dir.clone();
            undo.push("pause", move || kill_shim(&d, pid));
            record.pause = Some(ShimRef {
                dir: pause_dir,
                pid,
            });
        }
        self.store.put_sandbox(&record)?;
        undo.disarm();
        Ok(record)
    }

    /// What StopPodSandbox releases after the network; safe to run twice.
    fn release_sandbox_resources(&self, rec: &SandboxRecord) {
        release_sandbox(rec)
    }
}

/// A stopped pod's pause, /dev/shm and namespace pins; idempotent.
fn release_sandbox(rec: &SandboxRecord) {
    if let Some(p) = &rec.pause {
        kill_shim(&p.dir, p.pid);
    }
    if let Some(shm) = &rec.shm {
        unmount_logged(shm);
    }
    namespaces::unpin(&rec.namespaces);
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
        mut spec: oci_spec::runtime::Spec,
        shim_cfg: &ShimConfig,
    ) -> Result<i32> {
        fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let r = (|| {
            let write = |name: &str, bytes: &[u8]| {
                fs::write(dir.join(name), bytes)
                    .map_err(|e| Error::io(format!("writing the bundle in {}", dir.display()), e))
            };
            let mut shim_cfg = shim_cfg.clone();
            if let Some(profile) = spec
                .linux_mut()
                .as_mut()
                .and_then(|l| l.seccomp_mut().take())
            {
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
            fs::write(dir.join(proto::CONFIG_FILE), spec_json)
                .map_err(|e| Error::io(format!("writing the bundle in {}", dir.display()), e))?;

            let shim_json = serde_json::to_vec(&shim_cfg)
                .map_err(|e| Error::Internal(format!("encoding shim.json: {e}")))?;
            fs::write(dir.join(proto::SHIM_CONFIG_FILE), shim_json)
                .map_err(|e| Error::io(format!("writing the bundle in {}", dir.display()), e))?;
            let handle = tokio::runtime::Handle::try_current()
                .map_err(|_| Error::Internal("no async runtime to start the shim from".into()))?;
            handle
                .block_on(shim_client::spawn(&self.cfg.shim, dir))
                .map_err(Error::from)
        })();
        if r.is_err() {
            remove_dir_logged(dir);
        }
        r
    }
}

/// Pod sysctls, checked: only namespaced ones, and only for namespaces the
/// pod owns (a host-network pod cannot set net.*).
fn namespaced_sysctls(
    sysctls: &BTreeMap<String, String>,
    host_network: bool,
    own_ipc: bool,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (k, v) in sysctls {
        let bad = |why: &str| Error::InvalidArgument(format!("sysctl {k}={v}: {why}"));
        if k.contains("..") || k.contains('/') || k.is_empty() || v.contains('\n') {
            return Err(bad("malformed"));
        }
        let ipc = k.starts_with("kernel.shm")
            || k.starts_with("kernel.msg")
            || k == "kernel.sem"
            || k.starts_with("fs.mqueue.");
        let net = k.starts_with("net.");
        if net && host_network {
            return Err(bad(
                "net.* sysctls need the pod's own network namespace (hostNetwork is set)",
            ));
        }
        if ipc && !own_ipc {
            return Err(bad(
                "IPC sysctls need the pod's own IPC namespace (hostIPC is set)",
            ));
        }
        if !net && !ipc {
            return Err(bad(
                "not a namespaced sysctl; it would change the whole node",
            ));
        }
        out.push((k.clone(), v.clone()));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Helpers shared by pods and containers

/// rmdir of berth's default parent cgroup in every hierarchy: the kernel
/// refuses while it has child cgroups, so another pod's is never touched.
fn remove_default_parent_if_empty(parent: &str) {
    let root = Path::new("/sys/fs/cgroup");
    let _ = fs::remove_dir(root.join(parent));
    for e in fs::read_dir(root).into_iter().flatten().flatten() {
        let _ = fs::remove_dir(e.path().join(parent));
    }
}

fn remove_cgroup_logged(cgroups: &Cgroups, cg: &CgroupPath) {
    if let Err(e) = cgroups.remove(cg) {
        tracing::warn!(cgroup = %cg, error = %e, "removing cgroup");
    }
}

/// SIGKILL everything a shim runs and wait (5 s at most) for the shim to
/// record the exit and go. Cleanup: errors are logged.
fn kill_shim(dir: &Path, pid: i32) {
    let req = Request::Kill {
        signal: libc::SIGKILL,
        all: true,
    };
    match shim_client::call_blocking(dir, &req, std::time::Duration::from_secs(5)) {
        Ok(_) => {}
        Err(shim_client::ShimError::Gone { .. }) => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "asking the shim to kill; killing the process directly");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
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

/// What a pod offers its containers' specs.
fn pod_paths(rec: &SandboxRecord) -> PodPaths {
    let files = crate::pod_files::PodFiles::in_dir(&rec.dir);
    PodPaths {
        net_ns: rec.namespaces.net.clone(),
        ipc_ns: rec.namespaces.ipc.clone(),
        uts_ns: rec.namespaces.uts.clone(),
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

/// At start: what a crash left half made (a directory of a pod or container
/// whose record never committed) is removed, with its mounts and processes.
fn cleanup_unrecorded(
    cfg: &RuntimeConfig,
    sandboxes: &HashMap<String, SandboxRecord>,
    containers: &HashMap<String, ContainerRecord>,
    images: &berth_image::ImageService,
    cgroups: &Cgroups,
) {
    let containers_dir = cfg.state.join("containers");
    for e in fs::read_dir(&containers_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let id = e.file_name().to_string_lossy().into_owned();
        if containers.contains_key(&id) {
            continue;
        }
        tracing::info!(container = %id, "removing a container a crash left half made");
        let dir = e.path();
        let pid = fs::read_to_string(dir.join(proto::INIT_PID_FILE))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if pid > 0 {
            kill_shim(&dir, pid);
        }
        crate::rootfs::Rootfs::new(dir.join("rootfs"), cfg.root.join("containers").join(&id))
            .remove();
        remove_dir_logged(&dir);
        let _ = images.store().release(&id);
    }
    for e in fs::read_dir(cfg.root.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let id = e.file_name().to_string_lossy().into_owned();
        if !containers.contains_key(&id) {
            remove_dir_logged(&e.path());
        }
    }
    for e in fs::read_dir(cfg.state.join("sandboxes"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let id = e.file_name().to_string_lossy().into_owned();
        if sandboxes.contains_key(&id) {
            continue;
        }
        tracing::info!(pod = %id, "removing a pod a crash left half made");
        let dir = e.path();
        let pause = dir.join("pause");
        if let Some(pid) = fs::read_to_string(pause.join(proto::INIT_PID_FILE))
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            kill_shim(&pause, pid);
        }
        unmount_logged(&dir.join("shm"));
        namespaces::unpin(&namespaces::Pinned {
            net: Some(dir.join("net")),
            ipc: Some(dir.join("ipc")),
            uts: Some(dir.join("uts")),
        });
        // Its cgroup, if it was to be under berth's own parent (kubelet
        // makes and removes the ones under its parents itself).
        if let Ok(cg) = CgroupPath::new(&cfg.cgroup_parent).and_then(|p| p.join(&id)) {
            if let Ok(pause) = cg.join("pause") {
                remove_cgroup_logged(cgroups, &pause);
            }
            remove_cgroup_logged(cgroups, &cg);
            remove_default_parent_if_empty(&cfg.cgroup_parent);
        }
        remove_dir_logged(&dir);
    }
}

fn exit_reason(e: &proto::ExitStatus) -> (&'static str, String) {
    if e.oom_killed {
        ("OOMKilled", String::new())
    } else if e.code == 0 {
        ("Completed", String::new())
    } else {
        ("Error", String::new())
    }
}

// ---------------------------------------------------------------------------
// Containers

impl Runtime {
    /// Events of every container, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    fn emit(&self, c: &ContainerRecord, kind: EventKind) {
        let _ = self.inner.events.send(Event {
            container_id: c.id.clone(),
            sandbox_id: c.sandbox_id.clone(),
            kind,
            at_ns: now_ns(),
        });
    }

    fn containers_of(&self, sandbox_id: &str) -> Result<Vec<String>> {
        Ok(self
            .inner
            .containers
            .read()
            .map_err(|_| poisoned())?
            .values()
            .filter(|c| c.sandbox_id == sandbox_id)
            .map(|c| c.id.clone())
            .collect())
    }

    /// The full id of a container given by id or unique prefix.
    pub fn resolve_container(&self, id: &str) -> Result<String> {
        resolve_id(
            &*self.inner.containers.read().map_err(|_| poisoned())?,
            id,
            "container",
        )
    }

    pub fn container(&self, id: &str) -> Result<ContainerRecord> {
        let m = self.inner.containers.read().map_err(|_| poisoned())?;
        let full = resolve_id(&m, id, "container")?;
        m.get(&full)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not found")))
    }

    pub fn list_containers(&self, f: &ContainerFilter) -> Result<Vec<ContainerRecord>> {
        self.list_containers_map(f, ContainerRecord::clone)
    }

    /// ListContainers turning each match into `T` under the read lock, in
    /// creation order: kubelet lists every few seconds, and a whole record
    /// (its full config) is far more than a list entry needs.
    pub fn list_containers_map<T>(
        &self,
        f: &ContainerFilter,
        map: impl Fn(&ContainerRecord) -> T,
    ) -> Result<Vec<T>> {
        let m = self.inner.containers.read().map_err(|_| poisoned())?;
        let mut hits: Vec<&ContainerRecord> = m
            .values()
            .filter(|c| f.id.is_empty() || c.id.starts_with(&f.id))
            .filter(|c| f.sandbox_id.is_empty() || c.sandbox_id.starts_with(&f.sandbox_id))
            .filter(|c| f.state.is_none_or(|st| st == c.state))
            .filter(|c| {
                f.labels
                    .iter()
                    .all(|(k, v)| c.config.labels.get(k) == Some(v))
            })
            .collect();
        hits.sort_by_key(|c| c.created_at_ns);
        Ok(hits.into_iter().map(map).collect())
    }

    fn update_container(&self, rec: ContainerRecord) -> Result<()> {
        self.inner.store.put_container(&rec)?;
        self.inner
            .containers
            .write()
            .map_err(|_| poisoned())?
            .insert(rec.id.clone(), rec);
        Ok(())
    }

    /// CreateContainer. A retry of the same container name gets the first
    /// call's container.
    pub async fn create_container(
        &self,
        sandbox_id: &str,
        config: ContainerConfig,
    ) -> Result<String> {
        model::validate_container_config(&config)?;
        let sb = self.sandbox(sandbox_id)?;
        if sb.state != SandboxState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready (stopped); containers cannot be created in it",
                sb.id
            )));
        }
        let name = container_name(&config, &sb.config);
        let tx = {
            let mut names = self.inner.names.lock().map_err(|_| poisoned())?;
            match names.get(&name) {
                Some(NameSlot::Taken(id)) => return Ok(id.clone()),
                Some(NameSlot::InFlight(rx)) => Err(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    names.insert(name.clone(), NameSlot::InFlight(rx));
                    Ok(tx)
                }
            }
        };
        let tx = match tx {
            Ok(tx) => tx,
            Err(mut rx) => loop {
                if let Some(r) = rx.borrow().clone() {
                    return r.map_err(|e| {
                        Error::FailedPrecondition(format!("the first CreateContainer failed: {e}"))
                    });
                }
                if rx.changed().await.is_err() {
                    return Err(Error::FailedPrecondition(
                        "the first CreateContainer was abandoned".into(),
                    ));
                }
            },
        };
        let inner = self.inner.clone();
        let r = tokio::task::spawn_blocking(move || inner.make_container(&sb, config))
            .await
            .map_err(|e| Error::Internal(format!("create task failed: {e}")))
            .and_then(|r| r);
        let mut names = self.inner.names.lock().map_err(|_| poisoned())?;
        let out = match r {
            Ok(rec) => {
                names.insert(name, NameSlot::Taken(rec.id.clone()));
                let id = rec.id.clone();
                self.emit(&rec, EventKind::Created);
                self.inner
                    .containers
                    .write()
                    .map_err(|_| poisoned())?
                    .insert(id.clone(), rec);
                Ok(id)
            }
            Err(e) => {
                names.remove(&name);
                Err(e)
            }
        };
        let _ = tx.send(Some(
            out.as_ref().map(Clone::clone).map_err(|e| e.to_string()),
        ));
        out
    }

    /// StartContainer: let the created process exec.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        let full = self.resolve_container(id)?;
        let lock = self.lock_for(&full)?;
        let _g = lock.lock().await;
        let mut rec = self.container(&full)?;
        if rec.state != ContainerState::Created {
            return Err(Error::FailedPrecondition(format!(
                "container {full} is {:?}, not created; only a created container can start",
                rec.state
            )));
        }
        match shim_client::call(&rec.dir, &Request::Start, Some(shim_client::START_TIMEOUT)).await?
        {
            Response::Ok => {}
            Response::Error { message } => {
                return Err(Error::FailedPrecondition(format!(
                    "starting container {full}: {message}"
                )));
            }
            other => {
                return Err(Error::Internal(format!(
                    "shim answered Start with {other:?}"
                )));
            }
        }
        rec.state = ContainerState::Running;
        rec.started_at_ns = now_ns();
        self.update_container(rec.clone())?;
        self.emit(&rec, EventKind::Started);
        self.watch_exit(full);
        Ok(())
    }

    /// Follow a container until it exits, then record how.
    fn watch_exit(&self, id: String) {
        let rt = Runtime {
            inner: self.inner.clone(),
        };
        tokio::spawn(async move {
            let Ok(rec) = rt.container(&id) else { return };
            let exit = match shim_client::call(&rec.dir, &Request::Wait, None).await {
                Ok(Response::Exit(e)) => Some(e),
                _ => shim_client::read_exit(&rec.dir),
            };
            if let Err(e) = rt.record_exit(&id, exit).await {
                tracing::warn!(container = %id, error = %e, "recording the exit");
            }
        });
    }

    async fn record_exit(&self, id: &str, exit: Option<proto::ExitStatus>) -> Result<()> {
        let lock = self.lock_for(id)?;
        let _g = lock.lock().await;
        let Ok(mut rec) = self.container(id) else {
            return Ok(());
        };
        if rec.state == ContainerState::Exited {
            return Ok(());
        }
        match exit {
            Some(e) => {
                let (reason, message) = exit_reason(&e);
                rec.exit_code = e.code;
                rec.finished_at_ns = e.finished_at_ns;
                // The shim's own clock of the exec, not when berthd heard.
                if e.started_at_ns > 0 {
                    rec.started_at_ns = e.started_at_ns;
                }
                rec.reason = reason.to_string();
                rec.message = message;
            }
            None => {
                rec.exit_code = 255;
                rec.finished_at_ns = now_ns();
                rec.reason = "Unknown".into();
                rec.message = "the container's monitor is gone and left no exit status".into();
            }
        }
        rec.state = ContainerState::Exited;
        self.update_container(rec.clone())?;
        self.emit(&rec, EventKind::Stopped);
        Ok(())
    }

    /// StopContainer: the image's stop signal (or SIGTERM), then SIGKILL
    /// after `timeout` seconds. Stopping a stopped or unknown container
    /// succeeds.
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let full = match self.resolve_container(id) {
            Ok(f) => f,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let rec = self.container(&full)?;
        if rec.state == ContainerState::Exited {
            return Ok(());
        }
        if timeout > 0 && rec.state == ContainerState::Running {
            let sig = self.stop_signal(&rec);
            let _ = shim_client::call(
                &rec.dir,
                &Request::Kill {
                    signal: sig,
                    all: false,
                },
                Some(std::time::Duration::from_secs(5)),
            )
            .await;
            let wait = std::time::Duration::from_secs(timeout as u64);
            if let Ok(Response::Exit(e)) =
                shim_client::call(&rec.dir, &Request::Wait, Some(wait)).await
            {
                return self.record_exit(&full, Some(e)).await;
            }
        }
        let _ = shim_client::call(
            &rec.dir,
            &Request::Kill {
                signal: libc::SIGKILL,
                all: true,
            },
            Some(std::time::Duration::from_secs(5)),
        )
        .await;
        let exit = match shim_client::call(
            &rec.dir,
            &Request::Wait,
            Some(std::time::Duration::from_secs(10)),
        )
        .await
        {
            Ok(Response::Exit(e)) => Some(e),
            _ => shim_client::read_exit(&rec.dir),
        };
        self.record_exit(&full, exit).await
    }

    fn stop_signal(&self, rec: &ContainerRecord) -> i32 {
        let from_image = self
            .inner
            .images
            .status(&rec.image_id)
            .and_then(|i| i.config.config.stop_signal.clone());
        from_image
            .as_deref()
            .and_then(parse_signal)
            .unwrap_or(libc::SIGTERM)
    }

    /// RemoveContainer: kill it if it runs, then remove its root filesystem,
    /// cgroup, state and record. Removing an unknown container succeeds.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let full = match self.resolve_container(id) {
            Ok(f) => f,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop_container(&full, 0).await?;
        let lock = self.lock_for(&full)?;
        let _g = lock.lock().await;
        let Ok(rec) = self.container(&full) else {
            return Ok(());
        };
        let inner = self.inner.clone();
        let rec2 = rec.clone();
        tokio::task::spawn_blocking(move || {
            kill_shim(&rec2.dir, rec2.pid);
            rec2.rootfs.remove();
            if let Some(cg) = rec2.cgroup.as_deref().and_then(|c| CgroupPath::new(c).ok()) {
                remove_cgroup_logged(&inner.cgroups, &cg);
            }
            remove_dir_logged(&rec2.dir);
        })
        .await
        .map_err(|e| Error::Internal(format!("remove task failed: {e}")))?;
        self.inner.images.release(&full).await?;
        self.inner.store.delete_container(&full)?;
        self.inner
            .containers
            .write()
            .map_err(|_| poisoned())?
            .remove(&full);
        if let Ok(sb) = self.sandbox(&rec.sandbox_id) {
            self.inner
                .names
                .lock()
                .map_err(|_| poisoned())?
                .remove(&container_name(&rec.config, &sb.config));
        }
        self.inner
            .locks
            .lock()
            .map_err(|_| poisoned())?
            .remove(&full);
        self.emit(&rec, EventKind::Deleted);
        Ok(())
    }

    /// ExecSync: run a command in the container and collect its output.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout_secs: i64,
    ) -> Result<ExecOutput> {
        let rec = self.container(id)?;
        if cmd.is_empty() {
            return Err(Error::InvalidArgument("cmd is required".into()));
        }
        if rec.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        let timeout_ms = (timeout_secs.max(0) as u64) * 1000;
        let deadline =
            (timeout_ms > 0).then(|| std::time::Duration::from_millis(timeout_ms + 10_000));
        let req = Request::Exec {
            args: cmd,
            env: None,
            cwd: None,
            timeout_ms,
        };
        match shim_client::call(&rec.dir, &req, deadline).await? {
            Response::Exec(r) if r.timed_out => Err(Error::DeadlineExceeded(format!(
                "command timed out after {timeout_secs}s and was killed"
            ))),
            Response::Exec(r) => Ok(ExecOutput {
                stdout: r.stdout,
                stderr: r.stderr,
                exit_code: r.exit_code,
            }),
            Response::Error { message } => Err(Error::FailedPrecondition(format!(
                "exec in {}: {message}",
                rec.id
            ))),
            other => Err(Error::Internal(format!(
                "shim answered Exec with {other:?}"
            ))),
        }
    }

    /// ReopenContainerLog (kubelet rotated the file).
    pub async fn reopen_container_log(&self, id: &str) -> Result<()> {
        let rec = self.container(id)?;
        if rec.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        match shim_client::call(
            &rec.dir,
            &Request::ReopenLog,
            Some(std::time::Duration::from_secs(10)),
        )
        .await?
        {
            Response::Ok => Ok(()),
            Response::Error { message } => Err(Error::FailedPrecondition(message)),
            other => Err(Error::Internal(format!(
                "shim answered ReopenLog with {other:?}"
            ))),
        }
    }

    /// After a restart: ask each live container's shim (bounded, so one
    /// hung shim cannot block start-up) and follow it again; a shim that is
    /// gone left its exit in exit.json.
    pub async fn recover(&self) -> Result<()> {
        let ids: Vec<String> = self
            .inner
            .containers
            .read()
            .map_err(|_| poisoned())?
            .values()
            .filter(|c| matches!(c.state, ContainerState::Created | ContainerState::Running))
            .map(|c| c.id.clone())
            .collect();
        // All shims at once, each bounded: one hung shim delays start-up by
        // its own 2 s, not 2 s per container.
        let results =
            futures::future::join_all(ids.into_iter().map(|id| self.recover_one(id))).await;
        for r in results {
            r?;
        }
        Ok(())
    }
}

impl Runtime {
    async fn recover_one(&self, id: String) -> Result<()> {
        let rec = self.container(&id)?;
        match shim_client::call(
            &rec.dir,
            &Request::State,
            Some(std::time::Duration::from_secs(2)),
        )
        .await
        {
            Ok(Response::State(st)) => match st.status {
                proto::Status::Exited => self.record_exit(&id, st.exit).await,
                proto::Status::Running => {
                    if rec.state != ContainerState::Running {
                        let mut r = rec.clone();
                        r.state = ContainerState::Running;
                        r.started_at_ns = st.started_at_ns;
                        self.update_container(r)?;
                    }
                    self.watch_exit(id);
                    Ok(())
                }
                proto::Status::Created => Ok(()),
            },
            _ => {
                self.record_exit(&id, shim_client::read_exit(&rec.dir))
                    .await
            }
        }
    }
}

fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return Some(n);
    }
    let name = s.trim().to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

impl Inner {
    /// The blocking part of CreateContainer, with its undo list.
    fn make_container(
        &self,
        sb: &SandboxRecord,
        config: ContainerConfig,
    ) -> Result<ContainerRecord> {
        let image_ref = config.image.image.clone();
        let image = self.images.status(&image_ref).ok_or_else(|| {
            Error::NotFound(format!(
                "image {image_ref:?} not found: pull it first (PullImage)"
            ))
        })?;
        let id = new_id()?;
        let mut undo = Undo::default();

        let dir = self.cfg.state.join("containers").join(&id);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let d = dir.clone();
        undo.push("container dir", move || remove_dir_logged(&d));

        let lowers = self.images.hold(&id, &image.record.id)?;
        {
            let (images, holder) = (self.images.clone(), id.clone());
            undo.push("image hold", move || {
                let _ = images.store().release(&holder);
            });
        }
        let rootfs = crate::rootfs::Rootfs::new(
            dir.join("rootfs"),
            self.cfg.root.join("containers").join(&id),
        );
        rootfs.mount(&lowers)?;
        {
            let r = rootfs.clone();
            undo.push("rootfs", move || r.remove());
        }

        let user = crate::user::resolve(
            &rootfs.target,
            image.config.config.user.as_deref(),
            config.security_context(),
        )?;
        let pod_cg = self.pod_cgroup(&sb.config, &sb.id)?;
        let cg = pod_cg.join(&id)?;
        if self.cgroups.create(&cg)? {
            let (cgroups, c) = (self.cgroups.clone(), cg.clone());
            undo.push("container cgroup", move || {
                remove_cgroup_logged(&cgroups, &c)
            });
        }
        let paths = pod_paths(sb);
        let hostname = pod_hostname(&sb.config);
        let image_name = image
            .record
            .repo_tags
            .first()
            .or(image.record.repo_digests.first())
            .cloned()
            .unwrap_or_else(|| image.record.id.to_string());
        // A container asking for the pod's PID namespace in a pod that has
        // none to share (the pod's own pid mode is CONTAINER) gets its own.
        let mut config = config;
        if config.security_context().namespace_options.pid == NamespaceMode::Pod
            && sb.pause.is_none()
        {
            config.linux.security_context.namespace_options.pid = NamespaceMode::Container;
        }
        let target_pid_ns = self.target_pid_ns(&config)?;
        let cgroups_path = self.cgroups.spec_path(&cg);
        let input = spec::ContainerInputs {
            id: &id,
            config: &config,
            image: &image.config.config,
            image_name: &image_name,
            pod: spec::Pod {
                id: &sb.id,
                config: &sb.config,
                paths: &paths,
                hostname: &hostname,
            },
            rootfs: &rootfs.target,
            user: &user,
            cgroups_path: &cgroups_path,
            target_pid_ns: target_pid_ns.as_deref(),
        };
        let cs = spec::container_spec(&self.node, &input, &spec::RealHost)?;
        if let Some(res) = cs
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
        {
            self.cgroups.apply(&cg, res)?;
        }
        for d in &cs.host_dirs {
            fs::create_dir_all(d)
                .map_err(|e| Error::io(format!("creating mount source {}", d.display()), e))?;
        }
        spec::mkdir_in_rootfs(&rootfs.target, &cs.rootfs_dirs)?;

        let log_path = if sb.config.log_directory.is_empty() || config.log_path.is_empty() {
            String::new()
        } else {
            Path::new(&sb.config.log_directory)
                .join(&config.log_path)
                .display()
                .to_string()
        };
        let shim_cfg = ShimConfig {
            id: id.clone(),
            kind: ShimKind::Container,
            log_path: log_path.clone(),
            stdin: config.stdin,
            stdin_once: config.stdin_once,
            tty: config.tty,
            restrict_oom_score_adj: true,
            seccomp: false,
        };
        let pid = self.start_shim(&dir, cs.spec, &shim_cfg)?;
        {
            let d = dir.clone();
            undo.push("shim", move || kill_shim(&d, pid));
        }
        let rec = ContainerRecord {
            id: id.clone(),
            sandbox_id: sb.id.clone(),
            image_ref,
            image_id: image.record.id.to_string(),
            image_name,
            config,
            state: ContainerState::Created,
            created_at_ns: now_ns(),
            started_at_ns: 0,
            finished_at_ns: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid,
            dir,
            rootfs,
            log_path,
            cgroup: Some(cg.as_str().to_string()),
            user: Some(user),
        };
        self.store.put_container(&rec)?;
        undo.disarm();
        Ok(rec)
    }

    /// pid TARGET: the target container's PID namespace.
    fn target_pid_ns(&self, config: &ContainerConfig) -> Result<Option<PathBuf>> {
        let ns = &config.security_context().namespace_options;
        if ns.pid != NamespaceMode::Target {
            return Ok(None);
        }
        let m = self.containers.read().map_err(|_| poisoned())?;
        let target = m
            .values()
            .find(|c| {
                c.id == ns.target_id
                    || (!ns.target_id.is_empty() && c.id.starts_with(&ns.target_id))
            })
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "target container {:?} for the PID namespace not found",
                    ns.target_id
                ))
            })?;
        if target.state != ContainerState::Running && target.state != ContainerState::Created {
            return Err(Error::FailedPrecondition(format!(
                "target container {} is not running",
                target.id
            )));
        }
        Ok(Some(PathBuf::from(format!("/proc/{}/ns/pid", target.pid))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_namespaced_sysctls_of_owned_namespaces_pass() {
        let s = |k: &str| BTreeMap::from([(k.to_string(), "1".to_string())]);
        assert!(namespaced_sysctls(&s("net.ipv4.ip_forward"), false, true).is_ok());
        assert!(namespaced_sysctls(&s("kernel.shmmax"), false, true).is_ok());
        assert!(namespaced_sysctls(&s("net.ipv4.ip_forward"), true, true).is_err());
        assert!(namespaced_sysctls(&s("kernel.msgmax"), false, false).is_err());
        let e = namespaced_sysctls(&s("vm.swappiness"), false, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("whole node"), "{e}");
        assert!(namespaced_sysctls(&s("net/../../x"), false, true).is_err());
    }

    #[test]
    fn undo_runs_in_reverse_unless_disarmed() {
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let mut u = Undo::default();
            for i in 0..3 {
                let l = log.clone();
                u.push("step", move || l.lock().unwrap().push(i));
            }
        }
        assert_eq!(*log.lock().unwrap(), vec![2, 1, 0]);
        let mut u = Undo::default();
        let l = log.clone();
        u.push("step", move || l.lock().unwrap().push(9));
        u.disarm();
        assert_eq!(log.lock().unwrap().len(), 3);
    }
}
