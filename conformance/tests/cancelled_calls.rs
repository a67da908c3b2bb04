//! Calls whose client gives up mid-flight (kubelet's runtime-request-timeout)
//! and the retries that follow, as kubelet and crictl make them.
//!
//! berthd pauses at a named point of the call (its `FAILPOINTS` test hooks,
//! see berth_runtime::failpoint) while the client drops the call; the work
//! must finish anyway, the retry must get what it made, and berthd must be
//! idle afterwards (a retry that spun on an abandoned reservation kept a
//! core busy).

mod common;

use std::time::Duration;

use berth_conformance::Env;
use berth_conformance::cri::sandbox_config;
use berth_conformance::pods::{self, Pod};
use berth_cri_api::v1::{
    CreateContainerRequest, ListContainersRequest, PodSandboxConfig, RunPodSandboxRequest,
};

fn run_request(config: &PodSandboxConfig) -> RunPodSandboxRequest {
    RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: String::new(),
    }
}

/// RunPodSandbox dropped by its client after `deadline`: the call must not
/// have answered by then (it is mid-flight when dropped).
async fn run_and_drop(env: &Env, config: &PodSandboxConfig, deadline: Duration) {
    let mut rt = env.cri.runtime.clone();
    let r = tokio::time::timeout(deadline, rt.run_pod_sandbox(run_request(config))).await;
    assert!(
        r.is_err(),
        "RunPodSandbox answered within {deadline:?} though berthd pauses in it: {r:?}"
    );
}

/// The retry, with a deadline as kubelet's (here 10 s: it must answer).
async fn run_retry(env: &Env, config: &PodSandboxConfig) -> String {
    let mut rt = env.cri.runtime.clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        rt.run_pod_sandbox(run_request(config)),
    )
    .await
    .expect("the retry must answer within 10 s")
    .expect("the retry must get the pod")
    .into_inner()
    .pod_sandbox_id
}

/// berthd uses next to no CPU over a second with nothing in flight.
async fn assert_idle(env: &Env) {
    let before = env.berthd.cpu_time().expect("berthd's CPU time");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = env.berthd.cpu_time().expect("berthd's CPU time") - before;
    assert!(
        used < Duration::from_millis(200),
        "berthd used {used:?} of CPU in 1 s with no call in flight (spinning?)"
    );
}

async fn cancelled_run_pod_sandbox_is_finished_and_the_retry_gets_it(point: &str) {
    let env = Env::start_pausing_at(point, 400).await;
    let config = sandbox_config(&format!("cancel-{}", point.replace('.', "-")));
    run_and_drop(&env, &config, Duration::from_millis(150)).await;
    // A retry while the first call's work still runs waits for it.
    let id = run_retry(&env, &config).await;
    // One after it finished finds the pod.
    assert_eq!(run_retry(&env, &config).await, id);
    let pods = env.cri.list_pods().await;
    assert_eq!(
        pods.iter().map(|p| &p.id).collect::<Vec<_>>(),
        vec![&id],
        "one pod, the one the cancelled call made"
    );
    assert_eq!(
        pods[0].state,
        berth_cri_api::v1::PodSandboxState::SandboxReady as i32
    );
    assert_idle(&env).await;
    let mut rt = env.cri.runtime.clone();
    rt.stop_pod_sandbox(berth_cri_api::v1::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .expect("StopPodSandbox");
    rt.remove_pod_sandbox(berth_cri_api::v1::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .expect("RemovePodSandbox");
    env.finish().await;
}

#[tokio::test]
async fn run_pod_sandbox_cancelled_before_the_netns() {
    cancelled_run_pod_sandbox_is_finished_and_the_retry_gets_it("sandbox.before_netns").await;
}

#[tokio::test]
async fn run_pod_sandbox_cancelled_before_the_database_commit() {
    cancelled_run_pod_sandbox_is_finished_and_the_retry_gets_it("sandbox.before_commit").await;
}

/// crictl's reproduction: a dozen pods whose calls are dropped after 5-16
/// ms, somewhere in the middle of their work, then all retried.
#[tokio::test]
async fn a_dozen_cancelled_pods_are_all_there_for_their_retries() {
    let env = Env::start_pausing_at("sandbox.before_commit", 20).await;
    let configs: Vec<PodSandboxConfig> = (0..12)
        .map(|i| sandbox_config(&format!("dozen-{i}")))
        .collect();
    let first = configs.iter().enumerate().map(|(i, c)| {
        let mut rt = env.cri.runtime.clone();
        let req = run_request(c);
        async move {
            let _ =
                tokio::time::timeout(Duration::from_millis(5 + i as u64), rt.run_pod_sandbox(req))
                    .await;
        }
    });
    futures::future::join_all(first).await;
    let retries = configs.iter().map(|c| run_retry(&env, c));
    let mut ids = futures::future::join_all(retries).await;
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 12, "one pod per name: {ids:?}");
    let mut listed: Vec<String> = env
        .cri
        .list_pods()
        .await
        .into_iter()
        .map(|p| p.id)
        .collect();
    listed.sort();
    assert_eq!(
        listed, ids,
        "every pod made is one a retry got, and no other"
    );
    assert_idle(&env).await;
    let mut rt = env.cri.runtime.clone();
    for id in ids {
        rt.remove_pod_sandbox(berth_cri_api::v1::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .expect("RemovePodSandbox");
    }
    env.finish().await;
}

#[tokio::test]
async fn create_container_cancelled_before_the_database_commit() {
    let env = Env::start_pausing_at("container.before_commit", 400).await;
    let image = pods::push_busybox(&env, "cancel/busybox:1").await;
    let pod: Pod = pods::run_pod(&env, sandbox_config("cancel-create"), &image).await;
    let c = pods::container(&pod, "once", &["sleep", "1000"]);
    let req = CreateContainerRequest {
        pod_sandbox_id: pod.id.clone(),
        config: Some(c),
        sandbox_config: Some(pod.config.clone()),
    };
    let mut rt = env.cri.runtime.clone();
    let r =
        tokio::time::timeout(Duration::from_millis(150), rt.create_container(req.clone())).await;
    assert!(
        r.is_err(),
        "CreateContainer answered though berthd pauses in it: {r:?}"
    );
    let id = tokio::time::timeout(Duration::from_secs(10), rt.create_container(req.clone()))
        .await
        .expect("the retry must answer within 10 s")
        .expect("the retry must get the container")
        .into_inner()
        .container_id;
    let again = rt.create_container(req).await.expect("a later retry");
    assert_eq!(again.into_inner().container_id, id);
    let all = rt
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(
        all.iter().map(|c| &c.id).collect::<Vec<_>>(),
        vec![&id],
        "one container, the one the cancelled call made"
    );
    pods::start(&env, &id).await.expect("StartContainer");
    let out = pods::exec(&env, &id, &["echo", "alive"])
        .await
        .expect("ExecSync");
    assert_eq!(out.stdout, b"alive\n");
    assert_idle(&env).await;
    pods::remove_pod(&env, pod).await;
    env.finish().await;
}
