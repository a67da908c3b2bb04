//! RunPodSandbox, StopPodSandbox, RemovePodSandbox.

use super::*;
use crate::model::LinuxResources;
use tracing::Instrument as _;

impl Runtime {
    /// UpdatePodSandboxResources (in-place pod resize, pod-level
    /// resources): kubelet calls it after it has set the pod cgroup it
    /// owns (cgroup_parent); berth keeps the new resources in the pod's
    /// record (PodSandboxStatus shows them, and they outlive a restart).
    /// Where berth made the pod cgroup itself (no cgroup_parent: crictl,
    /// scripts), nobody else sets it, so berth applies them there (the
    /// containers' sum plus the pod overhead). A kernel refusal is
    /// FAILED_PRECONDITION and the record keeps the old values (the files
    /// written before the refused one stay written, as with runc update).
    pub async fn update_pod_sandbox_resources(
        &self,
        id: &str,
        overhead: Option<LinuxResources>,
        resources: Option<LinuxResources>,
    ) -> Result<()> {
        for r in overhead.iter().chain(resources.iter()) {
            model::validate_resources(r)?;
        }
        let full = self.resolve_sandbox(id)?;
        let lock = self.pod_lock(&full)?;
        let _g = lock.write().await;
        let mut rec = self.sandbox(&full)?;
        if rec.state != SandboxState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {full} is not ready: its resources cannot change"
            )));
        }
        let mut config = rec.config.clone();
        if overhead.is_some() {
            config.linux.overhead = overhead;
        }
        if resources.is_some() {
            config.linux.resources = resources;
        }
        let own = CgroupPath::new(&config.linux.cgroup_parent)?.is_root();
        if own && let Some(total) = pod_total(&config.linux) {
            let cg = self.inner.pod_cgroup(&config, &full)?;
            let oci = spec::linux_resources(&total)?;
            let cgroups = self.inner.cgroups.clone();
            tokio::task::spawn_blocking(move || cgroups.apply(&cg, &oci))
                .await
                .map_err(|e| Error::Internal(format!("update task failed: {e}")))?
                .map_err(|e| {
                    Error::FailedPrecondition(format!(
                        "the kernel refused the new resources of pod sandbox {full}: {e}"
                    ))
                })?;
        }
        rec.config = config;
        let r = rec.clone();
        self.store_write(move |s| s.put_sandbox(&r)).await?;
        self.inner
            .sandboxes
            .write()
            .map_err(|_| poisoned())?
            .insert(full, rec);
        Ok(())
    }

    /// RunPodSandbox. A retry of a pod (same name) that is being created
    /// waits for that creation and gets its result; a retry after it finished
    /// gets the same id, as CRI-O's resourcestore does for kubelet's retries
    /// after a client timeout. The creation goes on if the caller is gone
    /// (see `reserve.rs`).
    pub async fn run_pod_sandbox(
        &self,
        config: SandboxConfig,
        runtime_handler: &str,
    ) -> Result<String> {
        model::validate_sandbox_config(&config)?;
        self.inner.check_handler(runtime_handler, &config)?;
        let name = sandbox_name(&config.metadata());
        let rt = self.handle();
        let n = name.clone();
        let handler = runtime_handler.to_string();
        self.inner
            .pod_names
            .run_once(&name, move |reservation| async move {
                rt.create_sandbox(config, handler, &n, reservation).await
            })
            .await
    }

    /// The pod is made, then shown and its name taken under its lock: a
    /// Stop or Remove that finds it waits until both are done.
    pub(super) async fn create_sandbox(
        &self,
        config: SandboxConfig,
        handler: String,
        name: &str,
        reservation: super::reserve::Reservation,
    ) -> Result<String> {
        let made = async {
            let id = new_id()?;
            let inner = self.inner.clone();
            let id2 = id.clone();
            let record =
                Self::blocking("sandbox", move || inner.make_sandbox(&id2, config, handler))
                    .await??;
            Ok::<_, Error>((id, record))
        }
        .await;
        let (id, record) = match made {
            Ok(m) => m,
            Err(e) => {
                reservation.failed(&e);
                return Err(e);
            }
        };
        let lock = self.pod_lock(&id)?;
        let _g = lock.write().await;
        self.inner
            .sandboxes
            .write()
            .map_err(|_| poisoned())?
            .insert(id.clone(), record);
        reservation.succeeded(&id);
        tracing::info!(pod = %name, id = %id, "pod sandbox ready");
        Ok(id)
    }

    /// StopPodSandbox: tear down what the pod holds (its namespaces, its
    /// /dev/shm). Idempotent.
    /// Like every lifecycle call, it runs to its end in a task of its own
    /// if its caller goes away.
    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let full = match self.resolve_sandbox(id) {
            Ok(f) => f,
            // Stopping an unknown pod succeeds (kubelet retries after removal).
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let rt = self.handle();
        detached("StopPodSandbox", async move {
            let lock = rt.pod_lock(&full)?;
            let _g = lock.write().await;
            rt.stop_pod_locked(&full).await
        })
        .await
    }

    /// StopPodSandbox's work, under the pod's lock held alone.
    async fn stop_pod_locked(&self, full: &str) -> Result<()> {
        // Its containers first, killed at once (as containerd does).
        async {
            for c in self.containers_of(full)? {
                self.stop_container_now(&c, 0).await?;
            }
            Ok::<_, Error>(())
        }
        .instrument(crate::step_span!("stop_pod.containers"))
        .await?;
        let full = full.to_string();
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
            let span = crate::step_span!("stop_pod.network");
            Self::blocking("network teardown", move || {
                span.in_scope(|| net.teardown(&req, &att))
            })
            .await??;
        }
        // Then the record: NotReady, its addresses free from this commit on.
        // A crash after it leaves a NotReady pod whose namespaces, pause and
        // shm berthd releases again when it starts (see `open`).
        if rec.state != SandboxState::NotReady || rec.network.is_some() {
            let att = rec.network.take();
            rec.state = SandboxState::NotReady;
            let r = rec.clone();
            self.store_write(move |s| s.put_sandbox(&r))
                .instrument(crate::step_span!("stop_pod.state_write"))
                .await?;
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
        let span = crate::step_span!("stop_pod.release");
        Self::blocking("stop", move || {
            span.in_scope(|| inner.release_sandbox_resources(&rec))
        })
        .await?;
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
        let rt = self.handle();
        detached("RemovePodSandbox", async move {
            let lock = rt.pod_lock(&full)?;
            let _g = lock.write().await;
            rt.remove_pod_locked(&full).await
        })
        .await
    }

    /// RemovePodSandbox's work, under the pod's lock held alone.
    async fn remove_pod_locked(&self, full: &str) -> Result<()> {
        self.stop_pod_locked(full).await?;
        for c in self.containers_of(full)? {
            self.remove_container_now(&c).await?;
        }
        let full = full.to_string();
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
        let pause_cg = rec.pause.as_ref().and_then(|_| {
            self.inner
                .pod_cgroup(&rec.config, &rec.id)
                .and_then(|p| p.join("pause").map_err(Error::from))
                .ok()
        });
        let span = crate::step_span!("remove_pod.cgroups_and_dir");
        Self::blocking("remove", move || {
            let _step = span.entered();
            if let Some(cg) = pause_cg {
                remove_cgroup_logged(&cgroups, &cg);
            }
            if let Some(cg) = cgroup.as_deref().and_then(|c| CgroupPath::new(c).ok()) {
                // berth's own parent of pods without a cgroup_parent stays
                // until berthd stops ([`Runtime::shutdown`]).
                remove_cgroup_logged(&cgroups, &cg);
            }
            remove_dir_logged(&dir)
        })
        .await?;
        let id = full.clone();
        self.store_write(move |s| s.delete_sandbox(&id))
            .instrument(crate::step_span!("remove_pod.state_delete"))
            .await?;
        self.inner
            .sandboxes
            .write()
            .map_err(|_| poisoned())?
            .remove(&full);
        self.inner
            .pod_names
            .release(&sandbox_name(&rec.config.metadata()))?;
        self.inner
            .pod_locks
            .lock()
            .map_err(|_| poisoned())?
            .remove(&full);
        self.forget_stats(&full);
        tracing::info!(id = %full, "pod sandbox removed");
        Ok(())
    }
}

/// What the network plugin needs of a pod.
pub(super) fn network_request(
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
pub(super) fn network_ports(config: &SandboxConfig) -> Result<Vec<berth_network::PortMapping>> {
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
pub(super) fn pod_request(rec: &SandboxRecord) -> berth_network::PodRequest {
    let netns = rec
        .namespaces
        .net
        .clone()
        .unwrap_or_else(|| rec.dir.join("net"));
    let ports = network_ports(&rec.config).unwrap_or_default();
    network_request(&rec.id, &rec.config, &netns, ports)
}

impl Inner {
    /// A pod's cgroup: the `cgroup_parent` kubelet gave (kubelet made it),
    /// or `<runtime cgroup_parent>/<pod id>`.
    pub(super) fn pod_cgroup(&self, config: &SandboxConfig, id: &str) -> Result<CgroupPath> {
        let given = CgroupPath::new(&config.linux.cgroup_parent)?;
        if given.is_root() {
            Ok(CgroupPath::new(&self.cfg.cgroup_parent)?.join(id)?)
        } else {
            Ok(given)
        }
    }

    /// The blocking part of RunPodSandbox, with its undo list.
    /// RunPodSandbox's handler: "" (the built-in executor) or one the
    /// config names, whose binary is there, for a pod it can run.
    fn check_handler(&self, handler: &str, config: &SandboxConfig) -> Result<()> {
        if handler.is_empty() {
            return Ok(());
        }
        let Some(h) = self.cfg.handlers.get(handler) else {
            let mut known: Vec<String> = vec!["\"\"".into()];
            known.extend(self.cfg.handlers.keys().map(|k| format!("{k:?}")));
            return Err(Error::InvalidArgument(format!(
                "runtime handler {handler:?} is not configured (berth has {})",
                known.join(", ")
            )));
        };
        if let Some(why) = crate::handlers::runtime_problem(&h.path) {
            return Err(Error::FailedPrecondition(format!(
                "runtime handler {handler:?}: its runtime {} cannot run: {why}",
                h.path.display()
            )));
        }
        let userns = config.namespace_options().userns_options.as_ref();
        if userns.and_then(|u| u.pod_mappings()).is_some() {
            return Err(Error::FailedPrecondition(format!(
                "runtime handler {handler:?} does not support user namespaces in berth (Status says so): use the default handler for pods with hostUsers: false"
            )));
        }
        Ok(())
    }

    pub(super) fn make_sandbox(
        &self,
        id: &str,
        config: SandboxConfig,
        handler: String,
    ) -> Result<SandboxRecord> {
        let ns = config.namespace_options().clone();
        let host_network = ns.network == NamespaceMode::Node;
        let own_ipc = ns.ipc != NamespaceMode::Node;
        let mut undo = Undo::default();

        let step = crate::step!("pod.dir");
        let dir = self.cfg.state.join("sandboxes").join(id);
        // 0700: nothing in it is for other users (containers get its
        // files and /dev/shm by bind mounts), and its shm tmpfs is 1777.
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let d = dir.clone();
        undo.push("pod dir", move || remove_dir_logged(&d));
        let cg = self.pod_cgroup(&config, id)?;
        write_cgroup_file(&dir, &cg)?;

        // The pod's log directory, as containerd makes it (0755) when
        // kubelet has not (crictl, scripts). Absolute (validated); not
        // removed with the pod: the logs are kubelet's.
        if !config.log_directory.is_empty() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&config.log_directory)
                .map_err(|e| {
                    Error::io(
                        format!("creating the pod's log directory {}", config.log_directory),
                        e,
                    )
                })?;
        }
        drop(step);
        crate::failpoint::hit("sandbox.before_netns");
        let sysctls = namespaced_sysctls(&config.linux.sysctls, host_network, own_ipc)?;
        let want = Wanted {
            net: !host_network,
            ipc: own_ipc,
            uts: !host_network,
        };
        let hostname = (!config.hostname.is_empty()).then_some(config.hostname.as_str());
        // A pod with hostUsers: false (KEP-127) gets its own user
        // namespace, which owns its net, ipc and uts namespaces so that
        // its namespaced sysctls and hostname are its root's to change.
        let userns = ns.userns_options.as_ref().and_then(|u| u.pod_mappings());
        if let (Some(_), Err(why)) = (&userns, &self.userns) {
            return Err(Error::FailedPrecondition(format!(
                "userns_options mode POD: this node cannot give pods a user namespace: {why}"
            )));
        }
        let step = crate::step!("pod.netns_pin");
        let pinned = match userns {
            Some((uid, gid)) => namespaces::pin_with_userns(
                &self.cfg.shim_exec,
                &dir,
                want,
                hostname,
                &sysctls,
                &namespaces::UserMappings { uid, gid },
            )?,
            None => namespaces::pin(&dir, want, hostname, &sysctls)?,
        };
        let p = pinned.clone();
        undo.push("namespaces", move || namespaces::unpin(&p));
        drop(step);

        // The pod network, in the pinned netns.
        let step = crate::step!("pod.network");
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
        drop(step);

        let step = crate::step!("pod.shm_and_files");
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
                Some(
                    match userns {
                        // Its root's, as a tmpfs the pod made itself is.
                        Some((u, g)) => {
                            format!("mode=1777,{SHM_SIZE},uid={},gid={}", u.host_id, g.host_id)
                        }
                        None => format!("mode=1777,{SHM_SIZE}"),
                    }
                    .as_str(),
                ),
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
        .and_then(|files| match userns {
            // The pod's root may edit them, as on a pod without a user
            // namespace: owned by its host ids (they are the pod's own
            // copies; a chown works on any kernel, an idmapped bind of a
            // single file on 5.19+ file systems only).
            Some((u, g)) => [&files.hosts, &files.hostname, &files.resolv_conf]
                .into_iter()
                .try_for_each(|f| std::os::unix::fs::chown(f, Some(u.host_id), Some(g.host_id))),
            None => Ok(()),
        })
        .map_err(|e| {
            Error::io(
                format!(
                    "writing the pod's hosts, hostname and resolv.conf in {}",
                    dir.display()
                ),
                e,
            )
        })?;

        drop(step);
        // The pod cgroup: kubelet's cgroup_parent (which kubelet made and
        // removes itself), or berth/<id> made here.
        let step = crate::step!("pod.cgroup");
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
        // Pod-level resources on a pod cgroup berth owns (kubelet sets the
        // ones it owns itself).
        if CgroupPath::new(&config.linux.cgroup_parent)?.is_root()
            && let Some(total) = pod_total(&config.linux)
        {
            self.cgroups
                .apply(&cg, &spec::linux_resources(&total)?)
                .map_err(|e| {
                    Error::FailedPrecondition(format!(
                        "the kernel refused the pod's resources: {e}"
                    ))
                })?;
        }

        drop(step);
        let mut record = SandboxRecord {
            id: id.to_string(),
            config,
            runtime_handler: handler,
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
            let _step = crate::step!("pod.pause");
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
            // Only its device rules (on v2 a BPF program, before the pause
            // exists): its cpu shares would need a cpu controller the
            // unified hierarchy may not offer, and a pause uses no CPU.
            if let Some(devices) = spec
                .linux()
                .as_ref()
                .and_then(|l| l.resources().as_ref())
                .and_then(|r| r.devices().clone())
            {
                let mut res = oci_spec::runtime::LinuxResources::default();
                res.set_devices(Some(devices));
                self.cgroups.apply(&pause_cg, &res)?;
            }
            let shim_cfg = ShimConfig {
                id: format!("{id}-pause"),
                kind: ShimKind::Pause,
                restrict_oom_score_adj: true,
                ..Default::default()
            };
            let pid = self.start_shim(&pause_dir, spec, &shim_cfg)?;
            let (d, c) = (pause_dir.clone(), pause_cg.clone());
            undo.push("pause", move || kill_shim(&d, pid, Some(&c)));
            record.pause = Some(ShimRef {
                dir: pause_dir,
                pid,
                cgroup: Some(pause_cg.as_str().to_string()),
            });
        }
        crate::failpoint::hit("sandbox.before_commit");
        let step = crate::step!("pod.state_write");
        self.store.put_sandbox(&record)?;
        drop(step);
        undo.disarm();
        Ok(record)
    }

    /// What StopPodSandbox releases after the network; safe to run twice.
    pub(super) fn release_sandbox_resources(&self, rec: &SandboxRecord) {
        release_sandbox(rec, &self.cgroups)
    }
}

/// A stopped pod's pause, /dev/shm and namespace pins; idempotent.
pub(super) fn release_sandbox(rec: &SandboxRecord, cgroups: &Cgroups) {
    if let Some(p) = &rec.pause {
        let cg = p.cgroup.as_deref().and_then(|c| CgroupPath::new(c).ok());
        kill_shim(&p.dir, p.pid, cg.as_ref());
        // Whatever its shim managed: nothing of the pause outlives Stop.
        if let Some(cg) = &cg {
            kill_cgroup_logged(cgroups, cg);
        }
    }
    if let Some(shm) = &rec.shm {
        unmount_logged(shm);
    }
    namespaces::unpin(&rec.namespaces);
}

/// Pod sysctls, checked: only namespaced ones, and only for namespaces the
/// pod owns (a host-network pod cannot set net.*).
pub(super) fn namespaced_sysctls(
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
}

/// What a pod cgroup berth owns is limited to: the containers' sum
/// (`resources`) plus the pod's `overhead` for CPU shares, quota and
/// memory, the rest (period, cpusets, hugepages, unified) as `resources`
/// has it. None without `resources`.
pub(super) fn pod_total(l: &model::LinuxSandboxConfig) -> Option<LinuxResources> {
    let r = l.resources.clone()?;
    let Some(o) = l.overhead.as_ref() else {
        return Some(r);
    };
    let add = |a: i64, b: i64| {
        if a > 0 && b > 0 {
            a.saturating_add(b)
        } else {
            a
        }
    };
    Some(LinuxResources {
        cpu_shares: add(r.cpu_shares, o.cpu_shares),
        cpu_quota: add(r.cpu_quota, o.cpu_quota),
        memory_limit_in_bytes: add(r.memory_limit_in_bytes, o.memory_limit_in_bytes),
        ..r
    })
}

#[cfg(test)]
mod pod_resource_tests {
    use super::*;

    #[test]
    fn the_pod_total_adds_the_overhead_to_what_is_limited() {
        let mut l = model::LinuxSandboxConfig::default();
        assert_eq!(pod_total(&l), None);
        l.resources = Some(LinuxResources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        });
        assert_eq!(pod_total(&l), l.resources);
        l.overhead = Some(LinuxResources {
            cpu_shares: 10,
            cpu_quota: 5_000,
            memory_limit_in_bytes: 8 << 20,
            ..Default::default()
        });
        let t = pod_total(&l).unwrap();
        assert_eq!((t.cpu_shares, t.cpu_quota), (522, 55_000));
        assert_eq!(t.memory_limit_in_bytes, 72 << 20);
        assert_eq!(t.cpu_period, 100_000);
        // Unlimited stays unlimited, whatever the overhead.
        l.resources.as_mut().unwrap().memory_limit_in_bytes = 0;
        l.resources.as_mut().unwrap().cpu_quota = -1;
        let t = pod_total(&l).unwrap();
        assert_eq!((t.memory_limit_in_bytes, t.cpu_quota), (0, -1));
    }
}
