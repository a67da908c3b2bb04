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

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::model::{self, NamespaceMode, SandboxConfig};
use crate::namespaces::{self, Wanted};
use crate::state::{SandboxRecord, SandboxState, StateStore};

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
    sandboxes: RwLock<HashMap<String, SandboxRecord>>,
    names: Mutex<HashMap<String, NameSlot>>,
    /// Serialises lifecycle calls on one id (Stop and Remove racing).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn poisoned() -> Error {
    Error::Internal("runtime state lock poisoned by an earlier panic".into())
}

impl Runtime {
    /// Open the runtime database and rebuild the in-memory view.
    pub fn open(cfg: RuntimeConfig) -> Result<Self> {
        for d in [cfg.state.join("sandboxes"), cfg.state.join("containers")] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(&d)
                .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        }
        let store = StateStore::open(&cfg.root)?;
        let mut sandboxes = HashMap::new();
        let mut names = HashMap::new();
        for s in store.sandboxes()? {
            names.insert(
                sandbox_name(&s.config.metadata()),
                NameSlot::Taken(s.id.clone()),
            );
            sandboxes.insert(s.id.clone(), s);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                store,
                sandboxes: RwLock::new(sandboxes),
                names: Mutex::new(names),
                locks: Mutex::new(HashMap::new()),
            }),
        })
    }

    fn lock_for(&self, id: &str) -> Result<Arc<tokio::sync::Mutex<()>>> {
        let mut m = self.inner.locks.lock().map_err(|_| poisoned())?;
        Ok(m.entry(id.to_string()).or_default().clone())
    }

    /// The full id of a sandbox given by id or unique prefix.
    pub fn resolve_sandbox(&self, id: &str) -> Result<String> {
        if id.is_empty() {
            return Err(Error::InvalidArgument("pod sandbox id is required".into()));
        }
        let m = self.inner.sandboxes.read().map_err(|_| poisoned())?;
        if m.contains_key(id) {
            return Ok(id.to_string());
        }
        let hits: Vec<&String> = m.keys().filter(|k| k.starts_with(id)).collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Error::NotFound(format!("pod sandbox {id:?} not found"))),
            _ => Err(Error::InvalidArgument(format!(
                "pod sandbox id prefix {id:?} is ambiguous ({} matches)",
                hits.len()
            ))),
        }
    }

    pub fn sandbox(&self, id: &str) -> Result<SandboxRecord> {
        let full = self.resolve_sandbox(id)?;
        self.inner
            .sandboxes
            .read()
            .map_err(|_| poisoned())?
            .get(&full)
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
        let inner = self.inner.clone();
        let rec2 = rec.clone();
        tokio::task::spawn_blocking(move || inner.release_sandbox_resources(&rec2))
            .await
            .map_err(|e| Error::Internal(format!("stop task failed: {e}")))?;
        if rec.state != SandboxState::NotReady {
            rec.state = SandboxState::NotReady;
            self.inner.store.put_sandbox(&rec)?;
            self.inner
                .sandboxes
                .write()
                .map_err(|_| poisoned())?
                .insert(full, rec);
        }
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
        tokio::task::spawn_blocking(move || remove_dir_logged(&dir))
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

        let record = SandboxRecord {
            id: id.to_string(),
            config,
            runtime_handler: String::new(),
            state: SandboxState::Ready,
            created_at_ns: now_ns(),
            dir,
            namespaces: pinned,
            pause: None,
            cgroup: None,
            shm,
        };
        self.store.put_sandbox(&record)?;
        undo.disarm();
        Ok(record)
    }

    /// What StopPodSandbox releases; safe to run twice.
    fn release_sandbox_resources(&self, rec: &SandboxRecord) {
        if let Some(shm) = &rec.shm {
            unmount_logged(shm);
        }
        namespaces::unpin(&rec.namespaces);
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
