//! RuntimeService calls in scope before the runtime lands: Version, Status,
//! RuntimeConfig answer; the others answer UNIMPLEMENTED naming themselves.

mod common;

use berth_conformance::Env;
use common::*;
use k8s_cri::v1::{ContainerStatsRequest, UpdateContainerResourcesRequest};
use tonic::Code;

#[tokio::test]
async fn version_reports_berth_and_cri_v1() {
    let env = Env::start().await;
    let v = env.cri.version().await.expect("Version");
    assert_eq!(v.runtime_name, "berth");
    assert_eq!(v.runtime_api_version, "v1");
    assert!(!v.runtime_version.is_empty(), "runtime_version empty");
    assert!(!v.version.is_empty(), "version empty");
    env.finish().await;
}

#[tokio::test]
async fn status_reports_runtime_ready_and_network_not_ready_with_a_reason() {
    let env = Env::start().await;
    for verbose in [false, true] {
        let st = env.cri.status(verbose).await.expect("Status");
        let conds = st.status.expect("status.status").conditions;
        let runtime = conds
            .iter()
            .find(|c| c.r#type == "RuntimeReady")
            .expect("RuntimeReady condition");
        assert!(runtime.status, "RuntimeReady must be true");
        let net = conds
            .iter()
            .find(|c| c.r#type == "NetworkReady")
            .expect("NetworkReady condition");
        assert!(
            !net.status,
            "NetworkReady must be false until the network lands"
        );
        assert!(!net.reason.is_empty(), "NetworkReady false needs a reason");
        assert!(
            !net.message.is_empty(),
            "NetworkReady false needs a message"
        );
    }
    env.finish().await;
}

#[tokio::test]
async fn runtime_config_answers() {
    let env = Env::start().await;
    let rc = env.cri.runtime_config().await.expect("RuntimeConfig");
    if let Some(linux) = rc.linux {
        // kubelet compares this with its own cgroup driver
        let _ = linux.cgroup_driver;
    }
    env.finish().await;
}

#[tokio::test]
async fn other_runtime_calls_answer_unimplemented_with_their_names() {
    let env = Env::start().await;
    let mut rt = env.cri.runtime.clone();
    let checks = vec![
        (
            "UpdateContainerResources",
            rt.update_container_resources(UpdateContainerResourcesRequest::default())
                .await
                .map(|_| ()),
        ),
        (
            "ContainerStats",
            rt.container_stats(ContainerStatsRequest::default())
                .await
                .map(|_| ()),
        ),
    ];
    for (name, r) in checks {
        let s = expect_code(r, &[Code::Unimplemented], name);
        assert!(
            s.message().contains(name),
            "{name}: message {:?} must name the call",
            s.message()
        );
    }
    // the server still answers afterwards
    env.cri
        .version()
        .await
        .expect("Version after UNIMPLEMENTED calls");
    env.finish().await;
}
