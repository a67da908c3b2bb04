//! CRI RuntimeService. Version, Status and RuntimeConfig answer now; the pod
//! and container calls answer UNIMPLEMENTED, naming the call, until the
//! runtime lands.

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

/// The CRI API version berth speaks (VersionResponse.version is the kubelet
/// runtime API version, "0.1.0" for every runtime today).
const KUBELET_API_VERSION: &str = "0.1.0";

pub struct RuntimeApi;

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
        run_pod_sandbox(RunPodSandboxRequest) -> RunPodSandboxResponse = "RunPodSandbox";
        stop_pod_sandbox(StopPodSandboxRequest) -> StopPodSandboxResponse = "StopPodSandbox";
        remove_pod_sandbox(RemovePodSandboxRequest) -> RemovePodSandboxResponse = "RemovePodSandbox";
        pod_sandbox_status(PodSandboxStatusRequest) -> PodSandboxStatusResponse = "PodSandboxStatus";
        list_pod_sandbox(ListPodSandboxRequest) -> ListPodSandboxResponse = "ListPodSandbox";
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
