//! CRI RuntimeService: gRPC in, berth's runtime calls out (translation and
//! error codes only). Calls berth has not got yet answer UNIMPLEMENTED,
//! naming the call.

use std::collections::HashMap;
use std::sync::Arc;

use berth_cri_api::v1 as cri;
use berth_cri_api::v1::runtime_service_server::RuntimeService;
use berth_runtime::service::{
    ContainerFilter, EventKind, Runtime, SandboxFilter, StatsFilter, StreamAsk,
};
use berth_runtime::state::{ContainerRecord, ContainerState, SandboxRecord, SandboxState};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::convert;
use crate::listing::Chunks;
use crate::status::{not_yet, runtime_error};

/// The CRI API version berth speaks (VersionResponse.version is the kubelet
/// runtime API version, "0.1.0" for every runtime today).
const KUBELET_API_VERSION: &str = "0.1.0";

pub struct RuntimeApi {
    runtime: Arc<Runtime>,
    streaming: Arc<crate::streaming::Server>,
}

impl RuntimeApi {
    pub fn new(runtime: Arc<Runtime>, streaming: Arc<crate::streaming::Server>) -> Self {
        Self { runtime, streaming }
    }

    fn stream_url(&self, p: crate::streaming::Pending) -> Result<String, Status> {
        self.streaming.url(p).map_err(|e| match e {
            crate::streaming::StreamingError::Full => Status::resource_exhausted(e.to_string()),
            crate::streaming::StreamingError::Internal(m) => Status::internal(m),
        })
    }
}

fn sandbox_state(s: SandboxState) -> i32 {
    match s {
        SandboxState::Ready => cri::PodSandboxState::SandboxReady as i32,
        SandboxState::NotReady => cri::PodSandboxState::SandboxNotready as i32,
    }
}

fn sandbox_metadata(r: &SandboxRecord) -> cri::PodSandboxMetadata {
    let m = r.config.metadata();
    cri::PodSandboxMetadata {
        name: m.name,
        uid: m.uid,
        namespace: m.namespace,
        attempt: m.attempt,
    }
}

fn container_state(s: ContainerState) -> i32 {
    match s {
        ContainerState::Created => cri::ContainerState::ContainerCreated as i32,
        ContainerState::Running => cri::ContainerState::ContainerRunning as i32,
        ContainerState::Exited => cri::ContainerState::ContainerExited as i32,
        ContainerState::Unknown => cri::ContainerState::ContainerUnknown as i32,
    }
}

fn container_metadata(r: &ContainerRecord) -> cri::ContainerMetadata {
    let m = r.config.metadata();
    cri::ContainerMetadata {
        name: m.name,
        attempt: m.attempt,
    }
}

fn container_status(r: &ContainerRecord, stop_signal: i32) -> cri::ContainerStatus {
    let mounts = r
        .config
        .mounts
        .iter()
        .map(|m| cri::Mount {
            container_path: m.container_path.clone(),
            host_path: m.host_path.clone(),
            readonly: m.readonly,
            selinux_relabel: m.selinux_relabel,
            propagation: m.propagation as i32,
            recursive_read_only: m.recursive_read_only,
            // An image volume: the image as asked, and the id it was.
            image: (!m.image.is_empty()).then(|| cri::ImageSpec {
                image: m.image.clone(),
                image_ref: m.image_ref.clone(),
                ..Default::default()
            }),
            image_sub_path: m.image_sub_path.clone(),
            uid_mappings: m.uid_mappings.iter().map(convert::idmap_to_cri).collect(),
            gid_mappings: m.gid_mappings.iter().map(convert::idmap_to_cri).collect(),
        })
        .collect();
    let resources = r
        .config
        .linux
        .resources
        .as_ref()
        .map(|res| cri::ContainerResources {
            linux: Some(cri::LinuxContainerResources {
                cpu_period: res.cpu_period,
                cpu_quota: res.cpu_quota,
                cpu_shares: res.cpu_shares,
                memory_limit_in_bytes: res.memory_limit_in_bytes,
                oom_score_adj: res.oom_score_adj,
                cpuset_cpus: res.cpuset_cpus.clone(),
                cpuset_mems: res.cpuset_mems.clone(),
                memory_swap_limit_in_bytes: res.memory_swap_limit_in_bytes,
                ..Default::default()
            }),
            windows: None,
        });
    cri::ContainerStatus {
        id: r.id.clone(),
        metadata: Some(container_metadata(r)),
        state: container_state(r.state),
        created_at: r.created_at_ns,
        started_at: r.started_at_ns,
        finished_at: r.finished_at_ns,
        exit_code: r.exit_code,
        image: Some(cri::ImageSpec {
            image: r.image_name.clone(),
            ..Default::default()
        }),
        image_ref: r.image_id.clone(),
        reason: r.reason.clone(),
        message: r.message.clone(),
        labels: labels(&r.config.labels),
        annotations: labels(&r.config.annotations),
        mounts,
        log_path: r.log_path.clone(),
        resources,
        image_id: r.image_id.clone(),
        user: process_user(r.user.as_ref()),
        // The signal StopContainer sends: the config's, the image's or
        // SIGTERM (KEP-4960: the status shows the one in effect).
        stop_signal: convert::cri_signal(stop_signal),
    }
}

/// The credentials the container's process started with, as containerd
/// reports them in ContainerStatus (kept in the record: no file read here).
fn process_user(u: Option<&berth_runtime::user::ResolvedUser>) -> Option<cri::ContainerUser> {
    let u = u?;
    Some(cri::ContainerUser {
        linux: Some(cri::LinuxContainerUser {
            uid: u.uid.into(),
            gid: u.gid.into(),
            supplemental_groups: u.additional_gids.iter().map(|g| i64::from(*g)).collect(),
        }),
    })
}

fn labels(m: &std::collections::BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// `#[async_trait]` does not see inside a macro's expansion, so the methods
/// are written in its desugared form: a boxed future.
macro_rules! unimplemented_calls {
    ($($method:ident($req:ident) -> $resp:ident = $name:literal;)*) => {$(
        fn $method<'life0, 'async_trait>(
            &'life0 self,
            _request: Request<cri::$req>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Response<cri::$resp>, Status>> + Send + 'async_trait>,
        >
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(std::future::ready(Err(not_yet($name))))
        }
    )*};
}

#[tonic::async_trait]
impl RuntimeService for RuntimeApi {
    async fn version(
        &self,
        _request: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: KUBELET_API_VERSION.to_string(),
            runtime_name: "berth".to_string(),
            runtime_version: env!("CARGO_PKG_VERSION").to_string(),
            runtime_api_version: "v1".to_string(),
        }))
    }

    async fn status(
        &self,
        request: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        let verbose = request.into_inner().verbose;
        let (runtime_ready, reason, message) = match self.runtime.runtime_readiness() {
            None => (true, String::new(), String::new()),
            Some((reason, message)) => (false, reason, message),
        };
        let conditions = vec![
            cri::RuntimeCondition {
                r#type: "RuntimeReady".to_string(),
                status: runtime_ready,
                reason,
                message,
            },
            match self.runtime.network_readiness().await {
                berth_network::Readiness::Ready => cri::RuntimeCondition {
                    r#type: "NetworkReady".to_string(),
                    status: true,
                    reason: String::new(),
                    message: String::new(),
                },
                berth_network::Readiness::NotReady { reason, message } => cri::RuntimeCondition {
                    r#type: "NetworkReady".to_string(),
                    status: false,
                    reason,
                    message,
                },
            },
        ];
        let mut info = std::collections::HashMap::new();
        if verbose {
            info.insert(
                "config".to_string(),
                serde_json::json!({"runtimeName": "berth", "version": env!("CARGO_PKG_VERSION")})
                    .to_string(),
            );
            info.insert(
                "network".to_string(),
                self.runtime.network_info().to_string(),
            );
        }
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info,
            runtime_handlers: std::iter::once(cri::RuntimeHandler {
                // The built-in executor. kubelet refuses `hostUsers: false`
                // pods and `recursiveReadOnly: Enabled` mounts on a handler
                // that does not claim them, so nothing is claimed berth
                // does not do.
                name: String::new(),
                features: Some(cri::RuntimeHandlerFeatures {
                    // mount_setattr(2) AT_RECURSIVE (Linux 5.12).
                    recursive_read_only_mounts: berth_runtime::kernel::has_mount_setattr(),
                    // Probed at start: a user namespace, idmapped layers
                    // and an overlay of them (the log says why not).
                    user_namespaces: self.runtime.user_namespaces().is_ok(),
                }),
            })
            // Each configured OCI runtime: berth refuses both features on
            // them (it does not pass idmapped layers or rro mounts to
            // another runtime).
            .chain(
                self.runtime
                    .handlers()
                    .keys()
                    .map(|name| cri::RuntimeHandler {
                        name: name.clone(),
                        features: Some(cri::RuntimeHandlerFeatures {
                            recursive_read_only_mounts: false,
                            user_namespaces: false,
                        }),
                    }),
            )
            .collect(),
            features: Some(cri::RuntimeFeatures {
                // Merge and Strict, for the process, its execs and
                // ContainerStatus.user (kubelet refuses Strict otherwise).
                supplemental_groups_policy: true,
                // A user-namespaced pod on the node's network: the netns
                // stays the node's, only user/ipc/uts are the pod's.
                user_namespaces_host_network: self.runtime.user_namespaces().is_ok(),
            }),
        }))
    }

    async fn runtime_config(
        &self,
        _request: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        // berth manages cgroups through cgroupfs, not systemd.
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let req = request.into_inner();
        let config = req
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        let config = convert::sandbox_config(config)?;
        let m = config.metadata();
        let span = tracing::info_span!("RunPodSandbox", pod = %m.name, namespace = %m.namespace, uid = %m.uid);
        async {
            let id = self
                .runtime
                .run_pod_sandbox(config, &req.runtime_handler)
                .await
                .map_err(runtime_error)?;
            Ok(Response::new(cri::RunPodSandboxResponse {
                pod_sandbox_id: id,
            }))
        }
        .instrument(span)
        .await
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        let span = tracing::info_span!("StopPodSandbox", pod_sandbox_id = %id);
        async {
            self.runtime
                .stop_pod_sandbox(&id)
                .await
                .map_err(runtime_error)?;
            Ok(Response::new(cri::StopPodSandboxResponse {}))
        }
        .instrument(span)
        .await
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        let span = tracing::info_span!("RemovePodSandbox", pod_sandbox_id = %id);
        async {
            self.runtime
                .remove_pod_sandbox(&id)
                .await
                .map_err(runtime_error)?;
            Ok(Response::new(cri::RemovePodSandboxResponse {}))
        }
        .instrument(span)
        .await
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let req = request.into_inner();
        let r = self
            .runtime
            .sandbox(&req.pod_sandbox_id)
            .map_err(runtime_error)?;
        let status = cri::PodSandboxStatus {
            id: r.id.clone(),
            metadata: Some(sandbox_metadata(&r)),
            state: sandbox_state(r.state),
            created_at: r.created_at_ns,
            network: r.network.as_ref().and_then(|n| {
                let mut ips = n.ips.iter().map(|ip| ip.to_string());
                ips.next().map(|ip| cri::PodSandboxNetworkStatus {
                    ip,
                    additional_ips: ips.map(|ip| cri::PodIp { ip }).collect(),
                })
            }),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: Some(convert::ns_options_to_cri(r.config.namespace_options())),
                }),
            }),
            labels: labels(&r.config.labels),
            annotations: labels(&r.config.annotations),
            runtime_handler: r.runtime_handler.clone(),
        };
        let mut info = HashMap::new();
        if req.verbose {
            let v = serde_json::json!({
                "pid": r.pause.as_ref().map(|p| p.pid).unwrap_or(0),
                "namespaces": {
                    "network": r.namespaces.net,
                    "ipc": r.namespaces.ipc,
                    "uts": r.namespaces.uts,
                    "pid": r.pause.as_ref().map(|p| format!("/proc/{}/ns/pid", p.pid)),
                },
                "stateDir": r.dir,
                "network": r.network,
                "cgroup": r.cgroup,
                "config": r.config,
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(status),
            info,
            containers_statuses: vec![],
            timestamp: berth_runtime::service::now_ns(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let f = request.into_inner().filter.unwrap_or_default();
        let state = match f.state {
            None => None,
            Some(s) => match cri::PodSandboxState::try_from(s.state) {
                Ok(cri::PodSandboxState::SandboxReady) => Some(SandboxState::Ready),
                Ok(cri::PodSandboxState::SandboxNotready) => Some(SandboxState::NotReady),
                Err(_) => {
                    return Err(Status::invalid_argument(format!(
                        "{} is not a PodSandboxState",
                        s.state
                    )));
                }
            },
        };
        let filter = SandboxFilter {
            id: f.id,
            state,
            labels: f.label_selector.into_iter().collect(),
        };
        let items = self
            .runtime
            .list_sandboxes(&filter)
            .map_err(runtime_error)?
            .iter()
            .map(|r| cri::PodSandbox {
                id: r.id.clone(),
                metadata: Some(sandbox_metadata(r)),
                state: sandbox_state(r.state),
                created_at: r.created_at_ns,
                labels: labels(&r.config.labels),
                annotations: labels(&r.config.annotations),
                runtime_handler: r.runtime_handler.clone(),
            })
            .collect();
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    type GetContainerEventsStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>,
    >;

    async fn get_container_events(
        &self,
        _request: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        let rx = self.runtime.subscribe();
        let runtime = self.runtime.clone();
        let stream = futures::stream::unfold((rx, runtime), |(mut rx, runtime)| async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        let kind = match ev.kind {
                            EventKind::Created => cri::ContainerEventType::ContainerCreatedEvent,
                            EventKind::Started => cri::ContainerEventType::ContainerStartedEvent,
                            EventKind::Stopped => cri::ContainerEventType::ContainerStoppedEvent,
                            EventKind::Deleted => cri::ContainerEventType::ContainerDeletedEvent,
                        };
                        let statuses = runtime
                            .container(&ev.container_id)
                            .map(|c| {
                                let sig = runtime.stop_signal(&c);
                                vec![container_status(&c, sig)]
                            })
                            .unwrap_or_default();
                        let resp = cri::ContainerEventResponse {
                            container_id: ev.container_id,
                            container_event_type: kind as i32,
                            created_at: ev.at_ns,
                            pod_sandbox_status: None,
                            containers_statuses: statuses,
                        };
                        return Some((Ok(resp), (rx, runtime)));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "an events client fell behind");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create_container(
        &self,
        request: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let req = request.into_inner();
        let config = req
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        let config = convert::container_config(config)?;
        let span = tracing::info_span!("CreateContainer", pod_sandbox_id = %req.pod_sandbox_id, container = %config.metadata().name);
        async {
            let id = self
                .runtime
                .create_container(&req.pod_sandbox_id, config)
                .await
                .map_err(runtime_error)?;
            Ok(Response::new(cri::CreateContainerResponse {
                container_id: id,
            }))
        }
        .instrument(span)
        .await
    }

    async fn start_container(
        &self,
        request: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        let span = tracing::info_span!("StartContainer", container_id = %id);
        async {
            self.runtime
                .start_container(&id)
                .await
                .map_err(runtime_error)?;
            Ok(Response::new(cri::StartContainerResponse {}))
        }
        .instrument(span)
        .await
    }

    async fn stop_container(
        &self,
        request: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!("StopContainer", container_id = %req.container_id);
        async {
            self.runtime
                .stop_container(&req.container_id, req.timeout)
                .await
                .map_err(runtime_error)?;
            Ok(Response::new(cri::StopContainerResponse {}))
        }
        .instrument(span)
        .await
    }

    async fn remove_container(
        &self,
        request: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        let span = tracing::info_span!("RemoveContainer", container_id = %id);
        async {
            self.runtime
                .remove_container(&id)
                .await
                .map_err(runtime_error)?;
            Ok(Response::new(cri::RemoveContainerResponse {}))
        }
        .instrument(span)
        .await
    }

    async fn list_containers(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let f = request.into_inner().filter.unwrap_or_default();
        let state = match f.state {
            None => None,
            Some(s) => Some(match cri::ContainerState::try_from(s.state) {
                Ok(cri::ContainerState::ContainerCreated) => ContainerState::Created,
                Ok(cri::ContainerState::ContainerRunning) => ContainerState::Running,
                Ok(cri::ContainerState::ContainerExited) => ContainerState::Exited,
                Ok(cri::ContainerState::ContainerUnknown) => ContainerState::Unknown,
                Err(_) => {
                    return Err(Status::invalid_argument(format!(
                        "{} is not a ContainerState",
                        s.state
                    )));
                }
            }),
        };
        let filter = ContainerFilter {
            id: f.id,
            sandbox_id: f.pod_sandbox_id,
            state,
            labels: f.label_selector.into_iter().collect(),
        };
        let containers = self
            .runtime
            .list_containers_map(&filter, |r| cri::Container {
                id: r.id.clone(),
                pod_sandbox_id: r.sandbox_id.clone(),
                metadata: Some(container_metadata(r)),
                image: Some(cri::ImageSpec {
                    image: r.image_name.clone(),
                    ..Default::default()
                }),
                image_ref: r.image_id.clone(),
                state: container_state(r.state),
                created_at: r.created_at_ns,
                labels: labels(&r.config.labels),
                annotations: labels(&r.config.annotations),
                image_id: r.image_id.clone(),
            })
            .map_err(runtime_error)?;
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        request: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let req = request.into_inner();
        let r = self
            .runtime
            .container(&req.container_id)
            .map_err(runtime_error)?;
        let mut info = HashMap::new();
        if req.verbose {
            let read = |name: &str| -> Option<serde_json::Value> {
                std::fs::read(r.dir.join(name))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
            };
            let mut spec = read("config.json").unwrap_or(serde_json::Value::Null);
            // The seccomp profile is kept beside the shim's config.json.
            if let (Some(profile), Some(linux)) = (
                read("seccomp.json"),
                spec.get_mut("linux").and_then(|l| l.as_object_mut()),
            ) {
                linux.insert("seccomp".into(), profile);
            }
            let v = serde_json::json!({
                "pid": r.pid,
                "sandboxID": r.sandbox_id,
                "runtimeSpec": spec,
                "config": r.config,
                "stateDir": r.dir,
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok(Response::new(cri::ContainerStatusResponse {
            status: Some(container_status(&r, self.runtime.stop_signal(&r))),
            info,
        }))
    }

    async fn exec_sync(
        &self,
        request: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!("ExecSync", container_id = %req.container_id);
        async {
            let out = self
                .runtime
                .exec_sync(&req.container_id, req.cmd, req.timeout)
                .await
                .map_err(runtime_error)?;
            Ok(Response::new(cri::ExecSyncResponse {
                stdout: out.stdout,
                stderr: out.stderr,
                exit_code: out.exit_code,
            }))
        }
        .instrument(span)
        .await
    }

    async fn reopen_container_log(
        &self,
        request: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        let id = request.into_inner().container_id;
        self.runtime
            .reopen_container_log(&id)
            .await
            .map_err(runtime_error)?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    /// kubelet sends the node's pod CIDR; the bridge plugin uses it when
    /// no subnet is configured and no pod holds an address yet.
    async fn update_runtime_config(
        &self,
        request: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        let cidr = request
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        if !cidr.is_empty() {
            self.runtime
                .set_pod_cidr(cidr)
                .await
                .map_err(runtime_error)?;
        }
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    /// Exec: checked now (the container runs, the streams make sense),
    /// run when the client comes to the URL.
    async fn exec(
        &self,
        request: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let req = request.into_inner();
        let ask = StreamAsk {
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        };
        if req.cmd.is_empty() {
            return Err(Status::invalid_argument("cmd is required"));
        }
        let rec = self
            .runtime
            .check_stream(&req.container_id, &ask)
            .map_err(runtime_error)?;
        let url = self.stream_url(crate::streaming::Pending::Exec {
            container: rec.id,
            cmd: req.cmd,
            ask,
        })?;
        Ok(Response::new(cri::ExecResponse { url }))
    }

    async fn attach(
        &self,
        request: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        let req = request.into_inner();
        let ask = StreamAsk {
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        };
        let rec = self
            .runtime
            .check_stream(&req.container_id, &ask)
            .map_err(runtime_error)?;
        if req.stdin && !rec.config.stdin {
            return Err(Status::invalid_argument(format!(
                "container {} was not created with stdin: there is no stdin to attach to",
                rec.id
            )));
        }
        let ask = StreamAsk {
            // A terminal is the container's to have, not the client's.
            tty: rec.config.tty,
            ..ask
        };
        let url = self.stream_url(crate::streaming::Pending::Attach {
            container: rec.id,
            ask,
        })?;
        Ok(Response::new(cri::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        request: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let req = request.into_inner();
        let pod = self
            .runtime
            .resolve_sandbox(&req.pod_sandbox_id)
            .map_err(runtime_error)?;
        let netns = self
            .runtime
            .port_forward_netns(&pod)
            .map_err(runtime_error)?;
        for p in &req.port {
            if !(1..=65535).contains(p) {
                return Err(Status::invalid_argument(format!("{p} is not a port")));
            }
        }
        let url = self.stream_url(crate::streaming::Pending::PortForward { pod, netns })?;
        Ok(Response::new(cri::PortForwardResponse { url }))
    }

    /// kubelet's in-place pod resize and the static CPU manager.
    async fn update_container_resources(
        &self,
        request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let req = request.into_inner();
        let span =
            tracing::info_span!("UpdateContainerResources", container_id = %req.container_id);
        async {
            let linux = req.linux.ok_or_else(|| {
                Status::invalid_argument("linux resources are required on a Linux node")
            })?;
            self.runtime
                .update_container_resources(&req.container_id, crate::convert::resources(linux))
                .await
                .map_err(runtime_error)?;
            Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
        }
        .instrument(span)
        .await
    }

    async fn container_stats(
        &self,
        request: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let id = request.into_inner().container_id;
        let s = self
            .runtime
            .container_stats(&id)
            .await
            .map_err(runtime_error)?;
        let mp = self
            .runtime
            .writable_layer_mountpoint()
            .display()
            .to_string();
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(crate::stats::container(&s, &mp)),
        }))
    }

    /// kubelet's eviction manager (every 10 s), /stats/summary and
    /// /metrics/resource (metrics-server: kubectl top, the HPA).
    async fn list_container_stats(
        &self,
        request: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let f = request.into_inner().filter.unwrap_or_default();
        let filter = StatsFilter {
            id: f.id,
            sandbox_id: f.pod_sandbox_id,
            labels: f.label_selector.into_iter().collect(),
        };
        let all = self
            .runtime
            .list_container_stats(&filter)
            .await
            .map_err(runtime_error)?;
        let mp = self
            .runtime
            .writable_layer_mountpoint()
            .display()
            .to_string();
        Ok(Response::new(cri::ListContainerStatsResponse {
            stats: all
                .iter()
                .map(|s| crate::stats::container(s, &mp))
                .collect(),
        }))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        let s = self.runtime.pod_stats(&id).await.map_err(runtime_error)?;
        let mp = self
            .runtime
            .writable_layer_mountpoint()
            .display()
            .to_string();
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(crate::stats::pod(&s, &mp)),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let f = request.into_inner().filter.unwrap_or_default();
        let filter = StatsFilter {
            id: f.id,
            sandbox_id: String::new(),
            labels: f.label_selector.into_iter().collect(),
        };
        let all = self
            .runtime
            .list_pod_stats(&filter)
            .await
            .map_err(runtime_error)?;
        let mp = self
            .runtime
            .writable_layer_mountpoint()
            .display()
            .to_string();
        Ok(Response::new(cri::ListPodSandboxStatsResponse {
            stats: all.iter().map(|s| crate::stats::pod(s, &mp)).collect(),
        }))
    }

    /// In-place pod resize and pod-level resources: kubelet has set the
    /// pod cgroup already; berth records the new values (and applies them
    /// to a pod cgroup it made itself).
    async fn update_pod_sandbox_resources(
        &self,
        request: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<cri::UpdatePodSandboxResourcesResponse>, Status> {
        let req = request.into_inner();
        let span =
            tracing::info_span!("UpdatePodSandboxResources", pod_sandbox_id = %req.pod_sandbox_id);
        async {
            self.runtime
                .update_pod_sandbox_resources(
                    &req.pod_sandbox_id,
                    req.overhead.map(convert::resources),
                    req.resources.map(convert::resources),
                )
                .await
                .map_err(runtime_error)?;
            Ok(Response::new(cri::UpdatePodSandboxResourcesResponse {}))
        }
        .instrument(span)
        .await
    }

    /// The metrics kubelet's `/metrics/cadvisor` serves from the runtime
    /// (PodAndContainerStatsFromCRI): asked once, at kubelet's start.
    async fn list_metric_descriptors(
        &self,
        _request: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors: crate::pod_metrics::descriptors(),
        }))
    }

    /// Every ready pod's metrics, read live (one Prometheus scrape of
    /// kubelet, one call).
    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        let pods = self
            .runtime
            .pod_metrics_samples()
            .await
            .map_err(runtime_error)?;
        Ok(Response::new(cri::ListPodSandboxMetricsResponse {
            pod_metrics: pods.iter().map(crate::pod_metrics::pod).collect(),
        }))
    }

    unimplemented_calls! {
        checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse = "CheckpointContainer";
    }

    // cri-api 1.36's streaming list calls (KEP-5825): the unary call's
    // items, cut into messages of at most a megabyte.
    type StreamPodSandboxesStream = Chunks<cri::StreamPodSandboxesResponse>;

    async fn stream_pod_sandboxes(
        &self,
        request: Request<cri::StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        let filter = request.into_inner().filter;
        let items = self
            .list_pod_sandbox(Request::new(cri::ListPodSandboxRequest { filter }))
            .await?
            .into_inner()
            .items;
        Ok(Response::new(crate::listing::stream(
            items,
            |pod_sandboxes| cri::StreamPodSandboxesResponse { pod_sandboxes },
        )))
    }

    type StreamContainersStream = Chunks<cri::StreamContainersResponse>;

    async fn stream_containers(
        &self,
        request: Request<cri::StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        let filter = request.into_inner().filter;
        let items = self
            .list_containers(Request::new(cri::ListContainersRequest { filter }))
            .await?
            .into_inner()
            .containers;
        Ok(Response::new(crate::listing::stream(items, |containers| {
            cri::StreamContainersResponse { containers }
        })))
    }

    type StreamContainerStatsStream = Chunks<cri::StreamContainerStatsResponse>;

    async fn stream_container_stats(
        &self,
        request: Request<cri::StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        let filter = request.into_inner().filter;
        let items = self
            .list_container_stats(Request::new(cri::ListContainerStatsRequest { filter }))
            .await?
            .into_inner()
            .stats;
        Ok(Response::new(crate::listing::stream(
            items,
            |container_stats| cri::StreamContainerStatsResponse { container_stats },
        )))
    }

    type StreamPodSandboxStatsStream = Chunks<cri::StreamPodSandboxStatsResponse>;

    async fn stream_pod_sandbox_stats(
        &self,
        request: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        let filter = request.into_inner().filter;
        let items = self
            .list_pod_sandbox_stats(Request::new(cri::ListPodSandboxStatsRequest { filter }))
            .await?
            .into_inner()
            .stats;
        Ok(Response::new(crate::listing::stream(
            items,
            |pod_sandbox_stats| cri::StreamPodSandboxStatsResponse { pod_sandbox_stats },
        )))
    }

    type StreamPodSandboxMetricsStream = Chunks<cri::StreamPodSandboxMetricsResponse>;

    async fn stream_pod_sandbox_metrics(
        &self,
        _request: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        let items = self
            .list_pod_sandbox_metrics(Request::new(cri::ListPodSandboxMetricsRequest {}))
            .await?
            .into_inner()
            .pod_metrics;
        Ok(Response::new(crate::listing::stream(
            items,
            |pod_sandbox_metrics| cri::StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics,
            },
        )))
    }
}
