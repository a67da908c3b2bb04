//! CRI RuntimeService. Version, Status and RuntimeConfig answer now; the pod
//! and container calls answer UNIMPLEMENTED, naming the call, until the
//! runtime lands.

use std::collections::HashMap;
use std::sync::Arc;

use berth_runtime::service::{Runtime, SandboxFilter};
use berth_runtime::state::{SandboxRecord, SandboxState};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::convert;
use crate::status::runtime_error;

/// The CRI API version berth speaks (VersionResponse.version is the kubelet
/// runtime API version, "0.1.0" for every runtime today).
const KUBELET_API_VERSION: &str = "0.1.0";

pub struct RuntimeApi {
    runtime: Arc<Runtime>,
}

impl RuntimeApi {
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self { runtime }
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

fn labels(m: &std::collections::BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn not_yet(call: &str) -> Status {
    Status::unimplemented(format!("{call} is not implemented by berth yet"))
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
        let conditions = vec![
            cri::RuntimeCondition {
                r#type: "RuntimeReady".to_string(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            cri::RuntimeCondition {
                r#type: "NetworkReady".to_string(),
                status: false,
                reason: "NetworkPluginNotReady".to_string(),
                message: "berth has no pod network yet: the network plugin is not implemented in this version".to_string(),
            },
        ];
        let mut info = std::collections::HashMap::new();
        if verbose {
            info.insert(
                "config".to_string(),
                serde_json::json!({"runtimeName": "berth", "version": env!("CARGO_PKG_VERSION")})
                    .to_string(),
            );
        }
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info,
            runtime_handlers: vec![],
            features: None,
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
            // The pod network comes with the network plugin: loopback only.
            network: None,
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
        Err(not_yet("GetContainerEvents"))
    }

    unimplemented_calls! {
        create_container(CreateContainerRequest) -> CreateContainerResponse = "CreateContainer";
        start_container(StartContainerRequest) -> StartContainerResponse = "StartContainer";
        stop_container(StopContainerRequest) -> StopContainerResponse = "StopContainer";
        remove_container(RemoveContainerRequest) -> RemoveContainerResponse = "RemoveContainer";
        list_containers(ListContainersRequest) -> ListContainersResponse = "ListContainers";
        container_status(ContainerStatusRequest) -> ContainerStatusResponse = "ContainerStatus";
        update_container_resources(UpdateContainerResourcesRequest) -> UpdateContainerResourcesResponse = "UpdateContainerResources";
        reopen_container_log(ReopenContainerLogRequest) -> ReopenContainerLogResponse = "ReopenContainerLog";
        exec_sync(ExecSyncRequest) -> ExecSyncResponse = "ExecSync";
        exec(ExecRequest) -> ExecResponse = "Exec";
        attach(AttachRequest) -> AttachResponse = "Attach";
        port_forward(PortForwardRequest) -> PortForwardResponse = "PortForward";
        container_stats(ContainerStatsRequest) -> ContainerStatsResponse = "ContainerStats";
        list_container_stats(ListContainerStatsRequest) -> ListContainerStatsResponse = "ListContainerStats";
        pod_sandbox_stats(PodSandboxStatsRequest) -> PodSandboxStatsResponse = "PodSandboxStats";
        list_pod_sandbox_stats(ListPodSandboxStatsRequest) -> ListPodSandboxStatsResponse = "ListPodSandboxStats";
        update_runtime_config(UpdateRuntimeConfigRequest) -> UpdateRuntimeConfigResponse = "UpdateRuntimeConfig";
        checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse = "CheckpointContainer";
        list_metric_descriptors(ListMetricDescriptorsRequest) -> ListMetricDescriptorsResponse = "ListMetricDescriptors";
        list_pod_sandbox_metrics(ListPodSandboxMetricsRequest) -> ListPodSandboxMetricsResponse = "ListPodSandboxMetrics";
    }
}
