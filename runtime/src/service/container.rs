//! CreateContainer, StartContainer, StopContainer, RemoveContainer, and the
//! container views.

use super::*;
use tracing::Instrument as _;

/// A container whose process could not be made or started: containerd's
/// `errorStartExitCode` and `errorStartReason`.
pub(super) const START_ERROR_EXIT_CODE: i32 = 128;
pub(super) const START_ERROR_REASON: &str = "StartError";

pub(super) fn exit_reason(e: &proto::ExitStatus) -> (&'static str, String) {
    if e.oom_killed {
        ("OOMKilled", String::new())
    } else if e.code == 0 {
        ("Completed", String::new())
    } else {
        ("Error", String::new())
    }
}

impl Runtime {
    pub(super) fn containers_of(&self, sandbox_id: &str) -> Result<Vec<String>> {
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

    /// The OCI runtime of the container's pod's handler; None: the
    /// built-in executor (or a handler the config no longer has).
    pub(super) fn handler_of(&self, rec: &ContainerRecord) -> Option<proto::OciRuntimeConfig> {
        let sb = self.sandbox(&rec.sandbox_id).ok()?;
        self.inner.cfg.handlers.get(&sb.runtime_handler).cloned()
    }

    pub(super) async fn update_container(&self, rec: ContainerRecord) -> Result<()> {
        let r = rec.clone();
        self.store_write(move |s| s.put_container(&r)).await?;
        self.remember_container(rec)
    }

    /// [`Self::update_container`] for a change the shim keeps too (a start,
    /// an exit): no sync of its own (see `put_container_rederivable`).
    pub(super) async fn update_container_rederivable(&self, rec: ContainerRecord) -> Result<()> {
        let r = rec.clone();
        self.store_write(move |s| s.put_container_rederivable(&r))
            .await?;
        self.remember_container(rec)
    }

    fn remember_container(&self, rec: ContainerRecord) -> Result<()> {
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
        let rt = self.handle();
        let sandbox_id = sb.id;
        let sb_id = sandbox_id.clone();
        let id = self
            .inner
            .container_names
            .run_once(&name, move |reservation| async move {
                rt.create_in_pod(&sandbox_id, config, reservation).await
            })
            .await?;
        // A retry gets the first call's container; a container of another
        // pod sandbox with the same name (a pod's next attempt while the
        // old one stays) is a conflict, as containerd's name reservation
        // says.
        let holder = self.container(&id)?;
        if holder.sandbox_id != sb_id {
            return Err(Error::AlreadyExists(format!(
                "container name {name:?} is taken by container {id} of pod sandbox {}; remove it first",
                holder.sandbox_id
            )));
        }
        Ok(id)
    }

    /// CreateContainer's work, holding the pod's lock shared: a Stop or
    /// Remove of the pod waits for it, then finds the new container (and
    /// stops or removes it with the pod); one that came first leaves a pod
    /// that is not ready, and the container is refused. The name is
    /// taken (or freed) before the pod's lock goes: a Remove that waited
    /// for it then finds the name taken and frees it with the container.
    async fn create_in_pod(
        &self,
        sandbox_id: &str,
        config: ContainerConfig,
        reservation: super::reserve::Reservation,
    ) -> Result<String> {
        let r = self.create_in_pod_locked(sandbox_id, config).await;
        match &r {
            Ok((id, _)) => reservation.succeeded(id),
            Err(e) => reservation.failed(e),
        }
        r.map(|(id, _pod)| id)
    }

    async fn create_in_pod_locked(
        &self,
        sandbox_id: &str,
        config: ContainerConfig,
    ) -> Result<(String, tokio::sync::OwnedRwLockReadGuard<()>)> {
        let lock = self.pod_lock_existing(sandbox_id)?;
        let pod = lock.read_owned().await;
        let sb = self.sandbox(sandbox_id)?;
        if sb.state != SandboxState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready (stopped); containers cannot be created in it",
                sb.id
            )));
        }
        // A pid TARGET container joins its target's init, which must be
        // made first.
        let ns = &config.security_context().namespace_options;
        if ns.pid == NamespaceMode::Target
            && let Ok(target) = self.resolve_container(&ns.target_id)
        {
            self.await_create(&target).await?;
        }
        let inner = self.inner.clone();
        let (rec, starting) =
            Self::blocking("create", move || inner.make_container(&sb, config)).await??;
        let id = rec.id.clone();
        let (settled, rx) = tokio::sync::watch::channel(false);
        self.inner
            .creating
            .lock()
            .map_err(|_| poisoned())?
            .insert(id.clone(), rx);
        self.emit(&rec, EventKind::Created);
        self.inner
            .containers
            .write()
            .map_err(|_| poisoned())?
            .insert(id.clone(), rec);
        let rt = self.handle();
        let cid = id.clone();
        tokio::spawn(
            async move {
                rt.settle_create(&cid, starting).await;
                settled.send_replace(true);
                if let Ok(mut m) = rt.inner.creating.lock() {
                    m.remove(&cid);
                }
            }
            .in_current_span(),
        );
        Ok((id, pod))
    }

    /// The rest of a CreateContainer after its answer: the shim's start
    /// line. Its pid goes into the record; a shim that failed (a mount,
    /// the program's lookup, the runtime's create) leaves the container
    /// exited with reason StartError and the shim's message, which
    /// StartContainer then returns, as containerd records a task that
    /// failed to start. Everything else of the container stays for
    /// RemoveContainer.
    async fn settle_create(&self, id: &str, starting: shim_client::Starting) {
        let r = tokio::task::spawn_blocking(move || {
            let _step = crate::step!("shim.spawn");
            crate::failpoint::hit("container.after_answer");
            starting.finish()
        })
        .await
        .map_err(|e| format!("the shim's start task failed: {e}"))
        .and_then(|r| r.map_err(|e| e.to_string()));
        let done = async {
            let lock = self.lock_for(id)?;
            let _g = lock.lock().await;
            let Ok(mut rec) = self.container(id) else {
                return Ok(());
            };
            match r {
                // In memory only: StartContainer (waiting for this) writes
                // the record with it next, and until then the shim is where
                // the pid is kept (recovery asks it, as after a crash
                // before this point). A store write here would be on
                // Create+Start's path.
                Ok(pid) => {
                    rec.pid = pid;
                    self.remember_container(rec)
                }
                Err(message) => {
                    tracing::warn!(container = %id, error = %message, "the shim could not make the container's process");
                    let (dir, cg) = (rec.dir.clone(), rec.cgroup.clone());
                    // Whatever the shim left of the init (its monitor
                    // reported the error and ends).
                    let _ = tokio::task::spawn_blocking(move || {
                        let cg = cg.as_deref().and_then(|c| CgroupPath::new(c).ok());
                        kill_shim(&dir, 0, cg.as_ref());
                    })
                    .await;
                    self.record_start_error(rec, message).await
                }
            }
        };
        if let Err(e) = done.await {
            tracing::warn!(container = %id, error = %e, "recording the shim's start");
        }
    }

    /// A container whose process could not be made or started, recorded
    /// (durably) as containerd records a task that failed to start:
    /// exited, StartError, 128, the message. The caller holds its lock.
    async fn record_start_error(&self, mut rec: ContainerRecord, message: String) -> Result<()> {
        rec.state = ContainerState::Exited;
        rec.exit_code = START_ERROR_EXIT_CODE;
        rec.finished_at_ns = now_ns();
        rec.reason = START_ERROR_REASON.into();
        rec.message = message;
        self.update_container(rec.clone()).await?;
        self.emit(&rec, EventKind::Stopped);
        Ok(())
    }

    /// Wait until the container's shim has made its init (or failed to),
    /// and that is recorded: CreateContainer answers before that.
    pub(super) async fn await_create(&self, id: &str) -> Result<()> {
        let rx = self
            .inner
            .creating
            .lock()
            .map_err(|_| poisoned())?
            .get(id)
            .cloned();
        if let Some(mut rx) = rx {
            // Err: the task is gone without an answer (berthd stopping).
            let _ = rx.wait_for(|settled| *settled).await;
        }
        Ok(())
    }

    /// UpdateContainerResources: the new limits go to the container's
    /// cgroup (if it is created or running) and into its record, so that
    /// ContainerStatus.resources reports them, also after a restart. The
    /// request carries the whole set, as kubelet sends it; zero means
    /// unset and leaves that limit as it is in the cgroup. oom_score_adj
    /// stays what the container started with (a process's, not a
    /// cgroup's). A limit the kernel refuses (a memory limit below what
    /// the container uses, on v1) fails the call, naming the file and the
    /// kernel's answer, and changes nothing in the record.
    pub async fn update_container_resources(
        &self,
        id: &str,
        resources: model::LinuxResources,
    ) -> Result<()> {
        model::validate_resources(&resources)?;
        let full = self.resolve_container(id)?;
        let lock = self.lock_for(&full)?;
        let _g = lock.lock().await;
        let mut rec = self.container(&full)?;
        let mut resources = resources;
        if let Some(old) = rec.config.linux.resources.as_ref() {
            resources.oom_score_adj = old.oom_score_adj;
        }
        let oci = spec::linux_resources(&resources)?;
        let live = matches!(rec.state, ContainerState::Created | ContainerState::Running);
        if let (true, Some(cg)) = (
            live,
            rec.cgroup.as_deref().and_then(|c| CgroupPath::new(c).ok()),
        ) {
            let cgroups = self.inner.cgroups.clone();
            // A handler's runtime made the cgroup and keeps the container's
            // resources in its own state: it applies them (`update`).
            let handler = self.handler_of(&rec);
            let id = full.clone();
            tokio::task::spawn_blocking(move || match handler {
                Some(h) => {
                    let json = serde_json::to_vec(&oci).map_err(|e| e.to_string())?;
                    crate::handlers::update(&h, &id, &json)
                }
                None => cgroups.apply(&cg, &oci).map_err(|e| e.to_string()),
            })
            .await
            .map_err(|e| Error::Internal(format!("update task failed: {e}")))?
            .map_err(|e| {
                Error::FailedPrecondition(format!(
                    "the kernel refused the new resources of container {full}: {e}"
                ))
            })?;
        }
        rec.config.linux.resources = Some(resources);
        self.update_container(rec).await?;
        Ok(())
    }

    /// StartContainer: let the created process exec.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        let rt = self.handle();
        let id = id.to_string();
        detached("StartContainer", async move {
            rt.start_container_now(&id).await
        })
        .await
    }

    pub(super) async fn start_container_now(&self, id: &str) -> Result<()> {
        let full = self.resolve_container(id)?;
        // The pod's lock first (as Stop/RemovePodSandbox take it), then the
        // container's: a pod being stopped starts nothing.
        let sandbox_id = self.container(&full)?.sandbox_id;
        let pod_lock = self.pod_lock_existing(&sandbox_id)?;
        let _pod = pod_lock.read().await;
        if self.sandbox(&sandbox_id)?.state != SandboxState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {sandbox_id} is not ready (stopped); its containers cannot start"
            )));
        }
        self.await_create(&full)
            .instrument(crate::step_span!("start.await_create"))
            .await?;
        let lock = self.lock_for(&full)?;
        let _g = lock.lock().await;
        let mut rec = self.container(&full)?;
        if rec.state == ContainerState::Exited && rec.reason == START_ERROR_REASON {
            return Err(Error::FailedPrecondition(format!(
                "starting container {full}: {}",
                rec.message
            )));
        }
        if rec.state != ContainerState::Created {
            return Err(Error::FailedPrecondition(format!(
                "container {full} is {:?}, not created; only a created container can start",
                rec.state
            )));
        }
        match shim_client::call(&rec.dir, &Request::Start, Some(shim_client::START_TIMEOUT))
            .instrument(crate::step_span!("start.shim_start"))
            .await?
        {
            Response::Ok => {}
            Response::Error { message } => {
                // As containerd records a task that failed to start: the
                // container is exited (its init is killed), StartError.
                sigkill_all(&rec.dir).await;
                self.record_start_error(rec, message.clone()).await?;
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
        self.update_container_rederivable(rec.clone())
            .instrument(crate::step_span!("start.state_write"))
            .await?;
        self.emit(&rec, EventKind::Started);
        self.watch_exit(full);
        Ok(())
    }

    /// Follow a container until it exits, then record how.
    pub(super) fn watch_exit(&self, id: String) {
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

    pub(super) async fn record_exit(
        &self,
        id: &str,
        exit: Option<proto::ExitStatus>,
    ) -> Result<()> {
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
        self.update_container_rederivable(rec.clone()).await?;
        self.emit(&rec, EventKind::Stopped);
        Ok(())
    }

    /// StopContainer: the image's stop signal (or SIGTERM), then SIGKILL
    /// after `timeout` seconds. Stopping a stopped or unknown container
    /// succeeds.
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let rt = self.handle();
        let id = id.to_string();
        detached("StopContainer", async move {
            rt.stop_container_now(&id, timeout).await
        })
        .await
    }

    pub(super) async fn stop_container_now(&self, id: &str, timeout: i64) -> Result<()> {
        let full = match self.resolve_container(id) {
            Ok(f) => f,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.await_create(&full)
            .instrument(crate::step_span!("stop.await_create"))
            .await?;
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
        let exit = async {
            sigkill_all(&rec.dir).await;
            match shim_client::call(
                &rec.dir,
                &Request::Wait,
                Some(std::time::Duration::from_secs(10)),
            )
            .await
            {
                Ok(Response::Exit(e)) => Some(e),
                _ => shim_client::read_exit(&rec.dir),
            }
        }
        .instrument(crate::step_span!("stop.kill_and_wait"))
        .await;
        self.record_exit(&full, exit)
            .instrument(crate::step_span!("stop.record"))
            .await
    }

    /// The signal StopContainer sends first: the container config's
    /// (kubelet's `stopSignal`), else the image's STOPSIGNAL, else SIGTERM
    /// (KEP-4960's order, containerd's and CRI-O's).
    pub fn stop_signal(&self, rec: &ContainerRecord) -> i32 {
        if let Some(s) = rec.config.stop_signal {
            return s;
        }
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
        let rt = self.handle();
        let id = id.to_string();
        detached("RemoveContainer", async move {
            rt.remove_container_now(&id).await
        })
        .await
    }

    pub(super) async fn remove_container_now(&self, id: &str) -> Result<()> {
        let full = match self.resolve_container(id) {
            Ok(f) => f,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop_container_now(&full, 0).await?;
        let lock = self.lock_for(&full)?;
        let _g = lock.lock().await;
        let Ok(rec) = self.container(&full) else {
            return Ok(());
        };
        let inner = self.inner.clone();
        let rec2 = rec.clone();
        let handler = self.handler_of(&rec);
        Self::blocking("remove", move || {
            let cg = rec2.cgroup.as_deref().and_then(|c| CgroupPath::new(c).ok());
            let step = crate::step_span!("remove.shim").entered();
            kill_shim(&rec2.dir, rec2.pid, cg.as_ref());
            // The shim deletes the runtime's record when the container
            // exits; a shim killed first left it.
            if let Some(h) = handler
                && let Err(e) = crate::handlers::delete(&h, &rec2.id)
            {
                tracing::warn!(container = %rec2.id, "{e}");
            }
            drop(step);
            crate::step_span!("remove.rootfs").in_scope(|| rec2.rootfs.remove());
            if let Some(cg) = cg {
                // Nothing of the container outlives it, whatever the shim
                // managed (it kills its cgroup when its init exits).
                let _step = crate::step_span!("remove.cgroup").entered();
                kill_cgroup_logged(&inner.cgroups, &cg);
                remove_cgroup_logged(&inner.cgroups, &cg);
            }
            crate::step_span!("remove.dir").in_scope(|| remove_dir_logged(&rec2.dir));
        })
        .await?;
        self.inner
            .images
            .release(&full)
            .instrument(crate::step_span!("remove.image_release"))
            .await?;
        let id = full.clone();
        self.store_write(move |s| s.delete_container(&id))
            .instrument(crate::step_span!("remove.state_delete"))
            .await?;
        self.inner
            .containers
            .write()
            .map_err(|_| poisoned())?
            .remove(&full);
        if let Ok(sb) = self.sandbox(&rec.sandbox_id) {
            self.inner
                .container_names
                .release(&container_name(&rec.config, &sb.config))?;
        }
        self.inner
            .locks
            .lock()
            .map_err(|_| poisoned())?
            .remove(&full);
        self.forget_stats(&full);
        self.emit(&rec, EventKind::Deleted);
        Ok(())
    }
}

/// SIGKILL to every process of the container, through its shim (bounded;
/// a shim that is gone has nothing left to kill).
async fn sigkill_all(dir: &Path) {
    let _ = shim_client::call(
        dir,
        &Request::Kill {
            signal: libc::SIGKILL,
            all: true,
        },
        Some(std::time::Duration::from_secs(5)),
    )
    .await;
}

/// containerd's `restrict_oom_score_adj` for a handler's runtime, which
/// fails the container where the kernel refuses its oom_score_adj: without
/// CAP_SYS_RESOURCE no process may go below berthd's own value, so the
/// spec's is raised to it. (The built-in executor tries the value first
/// and clamps only if refused.)
fn restrict_oom_score_adj(spec: &mut oci_spec::runtime::Spec) {
    let privileged = caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_RESOURCE,
    )
    .unwrap_or(false);
    if privileged {
        return;
    }
    let current = fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    if let (Some(current), Some(p)) = (current, spec.process_mut().as_mut())
        && let Some(adj) = p.oom_score_adj().filter(|a| *a < current)
    {
        tracing::debug!(
            adj,
            current,
            "oom_score_adj raised to berthd's (no CAP_SYS_RESOURCE)"
        );
        p.set_oom_score_adj(Some(current));
    }
}

/// `sub` inside the tree at `root`, every symlink on the way resolved as
/// if `root` were `/` (openat2 RESOLVE_IN_ROOT: an image's `../../etc` or
/// `/etc` link cannot lead out), as the path it names on the node.
fn resolve_in(root: &Path, sub: &str) -> std::io::Result<PathBuf> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let fd = rustix::fs::openat2(
        &dir,
        sub,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV,
    )?;
    use std::os::fd::AsRawFd;
    let link = |fd: i32| fs::read_link(format!("/proc/self/fd/{fd}"));
    // Both as the kernel names them (a state dir reached through a symlink
    // is named by its real path).
    let (root, p) = (link(dir.as_raw_fd())?, link(fd.as_raw_fd())?);
    // The overlay is read-only and its layers berth's own: what the link
    // names now, it names when the shim binds it.
    if !p.starts_with(&root) {
        return Err(std::io::Error::other(format!(
            "{sub:?} resolved to {} outside the image",
            p.display()
        )));
    }
    Ok(p)
}

/// First real-time signal as user space numbers it (glibc keeps the
/// kernel's 32 and 33 for itself), as containerd, CRI-O and Go's
/// moby/sys/signal count `SIGRTMIN+n`.
const SIGRTMIN: i32 = 34;
const SIGRTMAX: i32 = 64;

/// A signal by number (`"10"`) or name (`"SIGUSR1"`, `"usr1"`,
/// `"SIGRTMIN+3"`, `"SIGRTMAX-2"`, the aliases SIGCLD, SIGIOT, SIGPOLL),
/// as an image's STOPSIGNAL or a CRI Signal name gives it.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.trim().parse::<i32>() {
        return (1..=SIGRTMAX).contains(&n).then_some(n);
    }
    let name = s.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let rt = |base: i32, rest: &str, sign: i32| -> Option<i32> {
        let n = if rest.is_empty() {
            0
        } else {
            rest.parse::<i32>().ok()?
        };
        let v = base.checked_add(sign.checked_mul(n)?)?;
        (SIGRTMIN..=SIGRTMAX).contains(&v).then_some(v)
    };
    match name {
        "RTMIN" => return Some(SIGRTMIN),
        "RTMAX" => return Some(SIGRTMAX),
        "CLD" => return Some(libc::SIGCHLD),
        "IOT" => return Some(libc::SIGABRT),
        "POLL" => return Some(libc::SIGIO),
        _ => {}
    }
    if let Some(r) = name.strip_prefix("RTMIN+") {
        return rt(SIGRTMIN, r, 1);
    }
    if let Some(r) = name.strip_prefix("RTMAX-") {
        return rt(SIGRTMAX, r, -1);
    }
    format!("SIG{name}")
        .parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

/// The name of signal `n` in CRI's Signal enum spelling (`SIGTERM`,
/// `SIGRTMINPLUS3`, `SIGRTMAXMINUS2`); None for a number no signal has.
pub fn cri_signal_name(n: i32) -> Option<String> {
    match n {
        SIGRTMIN => Some("SIGRTMIN".into()),
        SIGRTMAX => Some("SIGRTMAX".into()),
        n if n > SIGRTMIN && n <= SIGRTMIN + 15 => Some(format!("SIGRTMINPLUS{}", n - SIGRTMIN)),
        n if n > SIGRTMIN + 15 && n < SIGRTMAX => Some(format!("SIGRTMAXMINUS{}", SIGRTMAX - n)),
        n => nix::sys::signal::Signal::try_from(n)
            .ok()
            .map(|s| s.as_str().to_string()),
    }
}

/// [`parse_signal`] of CRI's enum spelling (`SIGRTMINPLUS3`).
pub fn cri_signal_number(name: &str) -> Option<i32> {
    let plus = name.replacen("RTMINPLUS", "RTMIN+", 1);
    let minus = plus.replacen("RTMAXMINUS", "RTMAX-", 1);
    parse_signal(&minus)
}

impl Inner {
    /// The container's layers mounted at `rootfs` (through idmapped
    /// mounts in a pod with its own user namespace) with its image
    /// volumes, the user it runs as (looked up in the image's files), and
    /// its spec; with the image's name the record keeps.
    #[allow(clippy::too_many_arguments)]
    fn rootfs_and_spec(
        &self,
        sb: &SandboxRecord,
        id: &str,
        rootfs: &crate::rootfs::Rootfs,
        lowers: &[PathBuf],
        config: &mut ContainerConfig,
        image: &berth_image::store::ImageEntry,
        cg: &CgroupPath,
    ) -> Result<(spec::ContainerSpec, String, crate::user::ResolvedUser)> {
        let step = crate::step!("container.rootfs_and_cgroup.rootfs");
        // A pod with its own user namespace (KEP-127) sees the layers
        // through idmapped mounts: the image's root is the container's.
        let pod_userns = sb
            .config
            .namespace_options()
            .userns_options
            .as_ref()
            .and_then(|u| u.pod_mappings());
        let userns_fd = match (&pod_userns, &sb.namespaces.user) {
            (None, _) => None,
            (Some(_), Some(pin)) => Some(fs::File::open(pin).map_err(|e| {
                Error::io(
                    format!("opening the pod's user namespace {}", pin.display()),
                    e,
                )
            })?),
            (Some(_), None) => {
                return Err(Error::FailedPrecondition(format!(
                    "pod {} asks for a user namespace but has none pinned",
                    sb.id
                )));
            }
        };
        let idmap = match (&pod_userns, &userns_fd) {
            (Some((u, g)), Some(f)) => Some(crate::rootfs::Idmap {
                userns: std::os::fd::AsFd::as_fd(f),
                root_uid: u.host_id,
                root_gid: g.host_id,
            }),
            _ => None,
        };
        rootfs.mount_mapped(lowers, idmap.as_ref())?;
        let image_volumes = self.mount_image_volumes(id, rootfs, idmap.as_ref(), config)?;
        drop(step);
        let step = crate::step!("container.rootfs_and_cgroup.user");
        let user = crate::user::resolve(
            &rootfs.target,
            image.config.config.user.as_deref(),
            config.security_context(),
        )?;
        drop(step);
        let _step = crate::step!("container.rootfs_and_cgroup.spec");
        let image_name = image
            .record
            .repo_tags
            .first()
            .or(image.record.repo_digests.first())
            .cloned()
            .unwrap_or_else(|| image.record.id.to_string());
        // A container asking for the pod's PID namespace in a pod that has
        // none to share (the pod's own pid mode is CONTAINER) gets its own.
        if config.security_context().namespace_options.pid == NamespaceMode::Pod
            && sb.pause.is_none()
        {
            config.linux.security_context.namespace_options.pid = NamespaceMode::Container;
        }
        let target_pid_ns = self.target_pid_ns(config)?;
        let cgroups_path = self.cgroups.spec_path(cg);
        let (paths, hostname) = (pod_paths(sb), pod_hostname(&sb.config));
        let input = spec::ContainerInputs {
            id,
            config,
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
            image_volumes: &image_volumes,
        };
        let cs = spec::container_spec(&self.node, &input, &spec::RealHost)?;
        Ok((cs, image_name, user))
    }

    /// Mount each image volume of `config` (KEP-4639) beside the rootfs,
    /// read-only, its image held in use (RemoveImage refuses it) under
    /// `<id>/ivol/<n>`; returns the bind sources, image_sub_path resolved
    /// inside the image. Undone by the rootfs's removal and the release of
    /// the container's image hold, both already on the undo list.
    fn mount_image_volumes(
        &self,
        id: &str,
        rootfs: &crate::rootfs::Rootfs,
        idmap: Option<&crate::rootfs::Idmap<'_>>,
        config: &mut ContainerConfig,
    ) -> Result<Vec<(usize, PathBuf)>> {
        let mut out = Vec::new();
        for (i, m) in config.mounts.iter_mut().enumerate() {
            if m.image.is_empty() {
                continue;
            }
            let image = self.images.status(&m.image).ok_or_else(|| {
                Error::NotFound(format!(
                    "mounts[{i}].image {:?} not found: pull it first (PullImage)",
                    m.image
                ))
            })?;
            let lowers = self
                .images
                .hold_volume(&format!("{id}/ivol/{i}"), &image.record.id)?;
            let root = rootfs.mount_volume(i, &lowers, idmap)?;
            let src = if m.image_sub_path.is_empty() {
                root
            } else {
                resolve_in(&root, &m.image_sub_path).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Error::InvalidArgument(format!(
                        "mounts[{i}].image_sub_path {:?} does not exist in image {}",
                        m.image_sub_path, m.image
                    )),
                    _ => Error::io(
                        format!(
                            "mounts[{i}].image_sub_path {:?} of image {}",
                            m.image_sub_path, m.image
                        ),
                        e,
                    ),
                })?
            };
            m.image_ref = image.record.id.to_string();
            out.push((i, src));
        }
        Ok(out)
    }

    /// The blocking part of CreateContainer, with its undo list.
    /// CreateContainer's work up to its answer: everything berthd sets up
    /// (checked, made, durable), and the shim started on the bundle. The
    /// shim's own part, making the init stopped before its exec, goes on
    /// after the answer (`Runtime::settle_create`): StartContainer waits
    /// for it, as containerd's StartContainer makes its task. Any failure
    /// before the shim starts undoes all of it.
    pub(super) fn make_container(
        &self,
        sb: &SandboxRecord,
        config: ContainerConfig,
    ) -> Result<(ContainerRecord, shim_client::Starting)> {
        if let Some(i) = config.mounts.iter().position(|m| m.recursive_read_only)
            && !crate::kernel::has_mount_setattr()
        {
            return Err(Error::FailedPrecondition(format!(
                "mounts[{i}].recursive_read_only needs mount_setattr(2) (Linux 5.12), which this kernel has not"
            )));
        }
        // The pod's RuntimeClass handler, if it is not the built-in
        // executor (checked at RunPodSandbox; gone from the config since:
        // refused, the pod's containers need it).
        let handler = match sb.runtime_handler.as_str() {
            "" => None,
            name => Some(self.cfg.handlers.get(name).cloned().ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "pod {} runs on runtime handler {name:?}, which berthd's config no longer has",
                    sb.id
                ))
            })?),
        };
        if let (Some(h), Some(i)) = (
            &handler,
            config.mounts.iter().position(|m| m.recursive_read_only),
        ) {
            return Err(Error::FailedPrecondition(format!(
                "mounts[{i}].recursive_read_only: runtime handler {:?} does not claim recursive read-only mounts (Status says so)",
                h.name
            )));
        }
        let image_ref = config.image.image.clone();
        let image = self.images.status(&image_ref).ok_or_else(|| {
            Error::NotFound(format!(
                "image {image_ref:?} not found: pull it first (PullImage)"
            ))
        })?;
        let id = new_id()?;
        let mut undo = Undo::default();

        let step = crate::step!("container.dir_and_hold");
        let dir = self.cfg.state.join("containers").join(&id);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let d = dir.clone();
        undo.push("container dir", move || remove_dir_logged(&d));
        let pod_cg = self.pod_cgroup(&sb.config, &sb.id)?;
        let cg = pod_cg.join(&id)?;
        write_cgroup_file(&dir, &cg)?;

        // Made durable while the shim starts (below), before the record.
        let lowers = self.images.hold_uncommitted(&id, &image.record.id)?;
        {
            let (images, holder) = (self.images.clone(), id.clone());
            undo.push("image hold", move || {
                let _ = images.store().release(&holder);
            });
        }
        drop(step);
        let rootfs = crate::rootfs::Rootfs::new(
            dir.join("rootfs"),
            self.cfg.root.join("containers").join(&id),
        );
        // Undone whatever fails below: removing a rootfs that was never (or
        // only partly) mounted removes the directories its mount made.
        {
            let r = rootfs.clone();
            undo.push("rootfs", move || r.remove());
        }
        let mut config = config;
        // The cgroup (a mkdir with its cpuset copies in each hierarchy, a
        // dozen on v1) needs neither the rootfs nor the spec, nor they
        // it: it is made on a thread of its own while the layers are
        // mounted, the image's user looked up in them and the spec built
        // (two cores: about 0.2 ms off the path). Both outcomes are known
        // before either is undone or returned.
        let step = crate::step!("container.rootfs_and_cgroup");
        let (built, cgroup_made) = std::thread::scope(|scope| {
            let cgroups = &self.cgroups;
            let made = scope.spawn(|| {
                let _step = crate::step!("container.rootfs_and_cgroup.cgroup");
                cgroups.create(&cg).map_err(Error::from)
            });
            let built = self.rootfs_and_spec(sb, &id, &rootfs, &lowers, &mut config, &image, &cg);
            let made = made.join().unwrap_or_else(|_| {
                Err(Error::Internal(format!("making the cgroup {cg} panicked")))
            });
            (built, made)
        });
        drop(step);
        if let Ok(true) = cgroup_made {
            let (cgroups, c) = (self.cgroups.clone(), cg.clone());
            undo.push("container cgroup", move || {
                remove_cgroup_logged(&cgroups, &c)
            });
        }
        let (mut cs, image_name, user) = built?;
        cgroup_made?;
        if handler.is_some() {
            restrict_oom_score_adj(&mut cs.spec);
        }
        let step = crate::step!("container.resources_and_dirs");
        if let Some(res) = cs
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
        {
            // Values the kernel refuses (a CFS quota under 1 ms, a cpuset
            // of CPUs the node has not, …) are the request's to fix.
            self.cgroups.apply(&cg, res).map_err(|e| {
                Error::FailedPrecondition(format!(
                    "the kernel refused the container's resources: {e}"
                ))
            })?;
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
        // The log's directory, as containerd and CRI-O make it (0755) when
        // kubelet has not yet: crictl users and scripts pass one that does
        // not exist. log_path is relative without `..` (validated).
        if let Some(parent) = Path::new(&log_path)
            .parent()
            .filter(|_| !log_path.is_empty())
        {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|e| {
                    // What the request named cannot be a directory here (a
                    // part of it is a file, or it is not writable): the
                    // caller's to fix, not berthd's failure.
                    Error::FailedPrecondition(format!(
                        "log_path {:?}: creating its directory {}: {e}",
                        config.log_path,
                        parent.display()
                    ))
                })?;
        }
        drop(step);
        let shim_cfg = ShimConfig {
            id: id.clone(),
            kind: ShimKind::Container,
            log_path: log_path.clone(),
            stdin: config.stdin,
            stdin_once: config.stdin_once,
            tty: config.tty,
            restrict_oom_score_adj: true,
            seccomp: false,
            runtime: handler.clone(),
        };
        // A shim that fails after the runtime's create leaves the runtime's
        // record of the container (its process is the shim's to kill).
        if let Some(h) = handler {
            let id = id.clone();
            undo.push("runtime record", move || {
                if let Err(e) = crate::handlers::delete(&h, &id) {
                    tracing::warn!(container = %id, "{e}");
                }
            });
        }
        self.write_bundle(&dir, cs.spec, &shim_cfg)?;
        let step = crate::step!("container.shim_begin");
        let starting = self.begin_shim(&dir)?;
        drop(step);
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
            // The shim's answer, after CreateContainer's (`settle_create`),
            // in memory; stored with StartContainer's write. Until then
            // the shim keeps it: recovery asks it after a crash.
            pid: 0,
            dir,
            rootfs,
            log_path,
            cgroup: Some(cg.as_str().to_string()),
            user: Some(user),
        };
        // The two durable commits (about 0.4 ms each) while the shim
        // starts (about 2 ms): the hold first, so that a durable record
        // always has its layers held.
        let written = (|| {
            crate::failpoint::hit("container.before_commit");
            let step = crate::step!("container.hold_commit");
            self.images.commit_hold(&id)?;
            drop(step);
            let _step = crate::step!("container.record_write");
            self.store.put_container(&rec)?;
            Ok::<_, Error>(())
        })();
        if let Err(e) = written {
            // The shim is told nothing: it is waited for (its init made)
            // and killed with it, before the rest goes.
            let pid = starting.finish().unwrap_or(0);
            kill_shim(&rec.dir, pid, Some(&cg));
            return Err(e);
        }
        crate::failpoint::hit("container.before_pid");
        undo.disarm();
        Ok((rec, starting))
    }

    /// pid TARGET: the target container's PID namespace.
    pub(super) fn target_pid_ns(&self, config: &ContainerConfig) -> Result<Option<PathBuf>> {
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
mod signal_tests {
    use super::*;

    #[test]
    fn signals_by_number_name_and_real_time_offset() {
        assert_eq!(parse_signal("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("usr1"), Some(libc::SIGUSR1));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGRTMIN+3"), Some(37));
        assert_eq!(parse_signal("SIGRTMAX-2"), Some(62));
        assert_eq!(parse_signal("SIGCLD"), Some(libc::SIGCHLD));
        assert_eq!(parse_signal("SIGRTMIN+40"), None, "past SIGRTMAX");
        assert_eq!(parse_signal("SIGRTMIN+2147483647"), None, "no overflow");
        assert_eq!(parse_signal("SIGRTMAX--2147483648"), None);
        assert_eq!(parse_signal("0"), None);
        assert_eq!(parse_signal("65"), None);
        assert_eq!(parse_signal("SIGNOPE"), None);
    }

    #[test]
    fn every_cri_spelling_goes_there_and_back() {
        for n in 1..=SIGRTMAX {
            // 32 and 33 are glibc's, not signals a CRI name has.
            let Some(name) = cri_signal_name(n) else {
                assert!(n == 32 || n == 33, "{n} has no name");
                continue;
            };
            assert_eq!(cri_signal_number(&name), Some(n), "{name}");
        }
        assert_eq!(cri_signal_name(libc::SIGTERM).as_deref(), Some("SIGTERM"));
        assert_eq!(cri_signal_name(35).as_deref(), Some("SIGRTMINPLUS1"));
        assert_eq!(cri_signal_name(63).as_deref(), Some("SIGRTMAXMINUS1"));
        assert_eq!(cri_signal_number("SIGRTMINPLUS15"), Some(49));
        assert_eq!(cri_signal_number("SIGRTMAXMINUS14"), Some(50));
    }
}
