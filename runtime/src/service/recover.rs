//! Start-up: what a crash left half made, and the containers that lived on.

use super::*;

/// At start: READY pods that lost what makes them a pod. The database is
/// under `root` (it survives a reboot), the namespace pins and the pause
/// process are not: after a reboot every pod would still read READY, with
/// an IP whose netns is gone. Such a pod becomes NOTREADY, as containerd
/// reports it, so that kubelet makes a new one; its network is dropped from
/// the record (the plugin then rebuilds its view without it: addresses,
/// hostPort rules, CNI results are released), and what is left of it
/// (pins, /dev/shm, a pause) is released with the other NOTREADY pods.
/// Stop and Remove then work as for any stopped pod.
pub(super) fn mark_lost_pods(
    store: &StateStore,
    sandboxes: &mut HashMap<String, SandboxRecord>,
) -> Result<()> {
    for rec in sandboxes.values_mut() {
        if rec.state != SandboxState::Ready {
            continue;
        }
        let lost = lost_parts(rec);
        if lost.is_empty() {
            continue;
        }
        tracing::warn!(
            pod = %rec.id,
            name = %sandbox_name(&rec.config.metadata()),
            lost = %lost.join(", "),
            "pod lost its namespaces or its pause (a reboot?): it is NOTREADY now; kubelet makes a new one"
        );
        rec.state = SandboxState::NotReady;
        rec.network = None;
        store.put_sandbox(rec)?;
    }
    Ok(())
}

/// What of a READY pod is gone: its state dir, a namespace pin, or its
/// pause process.
fn lost_parts(rec: &SandboxRecord) -> Vec<String> {
    // Its hosts, resolv.conf and hostname live there (a host-network,
    // host-IPC pod pins nothing else).
    let mut lost: Vec<String> = (!rec.dir.is_dir())
        .then(|| format!("state directory {}", rec.dir.display()))
        .into_iter()
        .collect();
    lost.extend(
        rec.namespaces
            .all()
            .filter(|p| !namespaces::is_pinned(p))
            .map(|p| format!("namespace pin {}", p.display())),
    );
    if let Some(p) = &rec.pause
        && !shim_client::is_listening(&p.dir)
    {
        lost.push(format!("pause process (shim at {})", p.dir.display()));
    }
    lost
}

/// At start: what a crash left half made (a directory of a pod or container
/// whose record never committed) is removed, with its mounts and processes.
pub(super) fn cleanup_unrecorded(
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
        let cg = read_cgroup_file(&dir);
        let pid = fs::read_to_string(dir.join(proto::INIT_PID_FILE))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if pid > 0 {
            kill_shim(&dir, pid, cg.as_ref());
        }
        crate::rootfs::Rootfs::new(dir.join("rootfs"), cfg.root.join("containers").join(&id))
            .remove();
        if let Some(cg) = &cg {
            kill_cgroup_logged(cgroups, cg);
            remove_cgroup_logged(cgroups, cg);
        }
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
            let layer = e.path();
            // Idmapped layers a crash left attached are unmounted first
            // (Rootfs::remove); a dir still holding one is left, never
            // removed through it into an image's snapshot.
            crate::rootfs::Rootfs::new(layer.join("rootfs"), layer.clone()).remove();
            if layer.join("idmapped").exists() {
                tracing::warn!(path = %layer.display(), "idmapped layers still mounted; left");
                continue;
            }
            remove_dir_logged(&layer);
        }
    }
    // Holds of containers that have no record (a crash in CreateContainer,
    // then a reboot that emptied the state dir): their layers, and the
    // images they mounted as volumes, which RemoveImage would otherwise
    // refuse for ever. Nothing is being created while berthd starts.
    for holder in images.store().holders() {
        let id = berth_image::store::holder_container(&holder);
        if !containers.contains_key(id) {
            tracing::info!(holder = %holder, "releasing the image hold of a container that has no record");
            let _ = images.store().release(id);
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
        // The pod cgroup it was to get (written before it was made); an
        // older berthd wrote none: berth's default parent is assumed.
        let pod_cg = read_cgroup_file(&dir).or_else(|| {
            CgroupPath::new(&cfg.cgroup_parent)
                .and_then(|p| p.join(&id))
                .ok()
        });
        let pause_cg = pod_cg.as_ref().and_then(|c| c.join("pause").ok());
        let pause = dir.join("pause");
        if let Some(pid) = fs::read_to_string(pause.join(proto::INIT_PID_FILE))
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            kill_shim(&pause, pid, pause_cg.as_ref());
        }
        // The pause's leaf is berth's wherever the pod cgroup is.
        if let Some(cg) = &pause_cg {
            kill_cgroup_logged(cgroups, cg);
            remove_cgroup_logged(cgroups, cg);
        }
        unmount_logged(&dir.join("shm"));
        namespaces::unpin(&namespaces::Pinned {
            net: Some(dir.join("net")),
            ipc: Some(dir.join("ipc")),
            uts: Some(dir.join("uts")),
            user: Some(dir.join("user")),
        });
        // The pod cgroup, if it is under berth's own parent (kubelet
        // makes and removes the ones under its parents itself).
        if let Some(cg) = pod_cg.filter(|c| {
            c.as_str()
                .trim_start_matches('/')
                .starts_with(&format!("{}/", cfg.cgroup_parent.trim_matches('/')))
        }) {
            remove_cgroup_logged(cgroups, &cg);
        }
        remove_dir_logged(&dir);
    }
}

impl Runtime {
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

    pub(super) async fn recover_one(&self, id: String) -> Result<()> {
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
                    if rec.state != ContainerState::Running || rec.pid != st.pid {
                        let mut r = rec.clone();
                        r.state = ContainerState::Running;
                        r.started_at_ns = st.started_at_ns;
                        r.pid = st.pid;
                        self.update_container(r).await?;
                    }
                    // berth freezes a container only for the length of a
                    // `commit --pause`; a berthd killed during one left it
                    // frozen: thawed now.
                    if let Ok(cg) = self.container_cgroup(&id)
                        && cg.is_frozen()
                    {
                        let r = tokio::task::spawn_blocking(move || cg.freeze(false)).await;
                        tracing::warn!(container = %id, "thawed a container a paused commit left frozen: {r:?}");
                    }
                    self.watch_exit(id);
                    Ok(())
                }
                // CreateContainer's durable record is written while the
                // shim starts, with the pid to come: a crash right after
                // it leaves pid 0, which the shim knows.
                proto::Status::Created if rec.pid != st.pid => {
                    let mut r = rec.clone();
                    r.pid = st.pid;
                    self.update_container(r).await
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
