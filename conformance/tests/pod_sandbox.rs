//! Pod sandbox scenarios: RunPodSandbox, PodSandboxStatus, ListPodSandbox,
//! StopPodSandbox and RemovePodSandbox through the socket, in the order and
//! with the fields kubelet and crictl use (cri-tools pkg/validate/pod.go).
//! Every scenario removes its pods and ends with `env.finish()`, which checks
//! that no mount, file or process is left.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use berth_conformance::Env;
use berth_conformance::cri::sandbox_config;
use berth_cri_api::v1::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListPodSandboxRequest, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxFilter, PodSandboxState, PodSandboxStateValue,
    PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
};
use common::*;
use serde_json::Value;
use tonic::Code;

async fn run(env: &Env, config: PodSandboxConfig) -> Result<String, tonic::Status> {
    let mut rt = env.cri.runtime.clone();
    rt.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

async fn status(
    env: &Env,
    id: &str,
) -> Result<(berth_cri_api::v1::PodSandboxStatus, Value), tonic::Status> {
    let mut rt = env.cri.runtime.clone();
    let r = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await?
        .into_inner();
    let info: Value =
        serde_json::from_str(r.info.get("info").map(String::as_str).unwrap_or("null"))
            .unwrap_or(Value::Null);
    Ok((r.status.expect("status"), info))
}

async fn list(env: &Env, filter: Option<PodSandboxFilter>) -> Vec<berth_cri_api::v1::PodSandbox> {
    let mut rt = env.cri.runtime.clone();
    rt.list_pod_sandbox(ListPodSandboxRequest { filter })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
}

async fn stop(env: &Env, id: &str) -> Result<(), tonic::Status> {
    let mut rt = env.cri.runtime.clone();
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .map(|_| ())
}

async fn remove(env: &Env, id: &str) -> Result<(), tonic::Status> {
    let mut rt = env.cri.runtime.clone();
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .map(|_| ())
}

fn with_namespaces(
    mut c: PodSandboxConfig,
    network: NamespaceMode,
    ipc: NamespaceMode,
) -> PodSandboxConfig {
    c.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: network as i32,
                pid: NamespaceMode::Container as i32,
                ipc: ipc as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

fn is_nsfs_mount(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path) && l.contains(" - nsfs "))
}

/// The hostname and a sysctl as seen inside the pod's pinned namespaces.
fn look_inside(uts: PathBuf, net: PathBuf) -> (String, String) {
    std::thread::spawn(move || {
        use nix::sched::{CloneFlags, setns};
        setns(
            std::fs::File::open(&uts).expect("open uts pin"),
            CloneFlags::CLONE_NEWUTS,
        )
        .expect("setns uts");
        setns(
            std::fs::File::open(&net).expect("open net pin"),
            CloneFlags::CLONE_NEWNET,
        )
        .expect("setns net");
        let host = nix::unistd::gethostname()
            .expect("hostname")
            .to_string_lossy()
            .into_owned();
        let ping =
            std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").unwrap_or_default();
        (host, ping.split_whitespace().collect::<Vec<_>>().join(" "))
    })
    .join()
    .expect("namespace thread")
}

#[tokio::test]
async fn pod_runs_ready_with_pinned_namespaces_hostname_and_sysctls_then_stops_and_goes() {
    let env = Env::start().await;
    let mut c = sandbox_config("web");
    c.hostname = "web-0".into();
    c.labels = HashMap::from([("app".into(), "web".into())]);
    c.annotations = HashMap::from([("note".into(), "kept as given".into())]);
    c.linux = Some(LinuxPodSandboxConfig {
        sysctls: HashMap::from([("net.ipv4.ping_group_range".into(), "0 2147483647".into())]),
        ..Default::default()
    });
    let id = run(&env, c).await.expect("RunPodSandbox");
    assert_eq!(id.len(), 64, "ids are 64 hex digits");

    let (st, info) = status(&env, &id).await.expect("PodSandboxStatus");
    assert_eq!(st.id, id);
    assert_eq!(st.state, PodSandboxState::SandboxReady as i32);
    let md = st.metadata.expect("metadata");
    assert_eq!(
        (md.name.as_str(), md.namespace.as_str(), md.attempt),
        ("web", "default", 1)
    );
    assert_eq!(st.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(
        st.annotations.get("note").map(String::as_str),
        Some("kept as given")
    );
    assert!(st.created_at > 0);
    let net = info["namespaces"]["network"]
        .as_str()
        .expect("verbose info names the netns pin")
        .to_string();
    let uts = info["namespaces"]["uts"]
        .as_str()
        .expect("uts pin")
        .to_string();
    assert!(
        is_nsfs_mount(&net),
        "{net} must be a bind mount of a network namespace"
    );
    let (host, ping) = look_inside(uts.clone().into(), net.clone().into());
    assert_eq!(host, "web-0");
    assert_eq!(
        ping, "0 2147483647",
        "the pod's sysctl is set in its own netns"
    );
    let node_ping = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").unwrap();
    assert_ne!(
        node_ping.split_whitespace().collect::<Vec<_>>().join(" "),
        "0 2147483647",
        "the node is untouched"
    );

    let ids: Vec<String> = list(&env, None).await.into_iter().map(|p| p.id).collect();
    assert_eq!(ids, vec![id.clone()]);

    stop(&env, &id).await.expect("StopPodSandbox");
    let (st, _) = status(&env, &id).await.expect("status after stop");
    assert_eq!(st.state, PodSandboxState::SandboxNotready as i32);
    assert!(!is_nsfs_mount(&net), "stop releases the network namespace");
    stop(&env, &id).await.expect("StopPodSandbox twice");

    remove(&env, &id).await.expect("RemovePodSandbox");
    expect_code(
        status(&env, &id).await,
        &[Code::NotFound],
        "status after remove",
    );
    assert!(list(&env, None).await.is_empty());
    remove(&env, &id).await.expect("RemovePodSandbox twice");
    env.finish().await;
}

#[tokio::test]
async fn remove_without_stop_releases_everything() {
    let env = Env::start().await;
    let id = run(&env, sandbox_config("nostop"))
        .await
        .expect("RunPodSandbox");
    remove(&env, &id)
        .await
        .expect("RemovePodSandbox of a ready pod");
    assert!(list(&env, None).await.is_empty());
    env.finish().await;
}

/// berthd's own parent cgroup of pods without a cgroup_parent (crictl's)
/// outlives its last pod while berthd runs, as containerd's does, and the
/// next pod goes into it; `finish` checks that it goes when berthd stops.
#[tokio::test]
async fn the_parent_cgroup_outlives_the_last_pod_until_berthd_stops() {
    let env = Env::start().await;
    let parent = env.berthd.cgroup_parent().to_string();
    for round in 0..2 {
        let id = run(&env, sandbox_config(&format!("parent-{round}")))
            .await
            .expect("RunPodSandbox");
        let pod_dirs = berth_conformance::leak::cgroup_parent_dirs(&format!("{parent}/{id}"));
        assert!(!pod_dirs.is_empty(), "the pod's cgroup is under {parent}");
        stop(&env, &id).await.expect("StopPodSandbox");
        remove(&env, &id).await.expect("RemovePodSandbox");
        assert!(
            pod_dirs.iter().all(|d| !d.exists()),
            "the pod's cgroup goes with it: {pod_dirs:#?}"
        );
        let parents = berth_conformance::leak::cgroup_parent_dirs(&parent);
        assert!(
            !parents.is_empty(),
            "the parent stays while berthd runs (round {round})"
        );
    }
    env.finish().await;
}

#[tokio::test]
async fn unknown_ids_stop_and_remove_fine_but_have_no_status() {
    let env = Env::start().await;
    let unknown = "f".repeat(64);
    stop(&env, &unknown)
        .await
        .expect("StopPodSandbox of an unknown id succeeds");
    remove(&env, &unknown)
        .await
        .expect("RemovePodSandbox of an unknown id succeeds");
    expect_code(
        status(&env, &unknown).await,
        &[Code::NotFound],
        "status of an unknown id",
    );
    expect_code(
        status(&env, "").await,
        &[Code::InvalidArgument],
        "status of an empty id",
    );
    env.finish().await;
}

#[tokio::test]
async fn a_retried_run_pod_sandbox_gets_the_first_calls_pod() {
    let env = Env::start().await;
    let c = sandbox_config("retry");
    // kubelet's retry after a client timeout, racing the first call.
    let (a, b) = tokio::join!(run(&env, c.clone()), run(&env, c.clone()));
    let (a, b) = (a.expect("first call"), b.expect("concurrent retry"));
    assert_eq!(a, b, "both calls get the same pod");
    let c2 = run(&env, c).await.expect("retry after the first finished");
    assert_eq!(a, c2);
    assert_eq!(list(&env, None).await.len(), 1, "one pod, not three");
    remove(&env, &a).await.unwrap();
    env.finish().await;
}

#[tokio::test]
async fn list_filters_by_id_prefix_state_and_labels() {
    let env = Env::start().await;
    let mut a = sandbox_config("a");
    a.labels = HashMap::from([("tier".into(), "front".into())]);
    let mut b = sandbox_config("b");
    b.labels = HashMap::from([("tier".into(), "back".into())]);
    let ida = run(&env, a).await.unwrap();
    let idb = run(&env, b).await.unwrap();
    stop(&env, &idb).await.unwrap();

    let by_prefix = list(
        &env,
        Some(PodSandboxFilter {
            id: ida[..12].into(),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(
        by_prefix.iter().map(|p| &p.id).collect::<Vec<_>>(),
        vec![&ida]
    );
    let ready = list(
        &env,
        Some(PodSandboxFilter {
            state: Some(PodSandboxStateValue {
                state: PodSandboxState::SandboxReady as i32,
            }),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(ready.iter().map(|p| &p.id).collect::<Vec<_>>(), vec![&ida]);
    let back = list(
        &env,
        Some(PodSandboxFilter {
            label_selector: HashMap::from([("tier".into(), "back".into())]),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(back.iter().map(|p| &p.id).collect::<Vec<_>>(), vec![&idb]);
    // A status by unique prefix works too (crictl accepts prefixes).
    assert_eq!(status(&env, &ida[..12]).await.unwrap().0.id, ida);
    remove(&env, &ida).await.unwrap();
    remove(&env, &idb).await.unwrap();
    env.finish().await;
}

#[tokio::test]
async fn host_network_pod_has_no_network_namespace_of_its_own() {
    let env = Env::start().await;
    let c = with_namespaces(
        sandbox_config("hostnet"),
        NamespaceMode::Node,
        NamespaceMode::Node,
    );
    let id = run(&env, c).await.expect("RunPodSandbox hostNetwork");
    let (st, info) = status(&env, &id).await.unwrap();
    assert!(
        info["namespaces"]["network"].is_null(),
        "no netns pin for a host-network pod: {info}"
    );
    assert!(info["namespaces"]["ipc"].is_null());
    let opts = st.linux.unwrap().namespaces.unwrap().options.unwrap();
    assert_eq!(opts.network, NamespaceMode::Node as i32);
    remove(&env, &id).await.unwrap();
    env.finish().await;
}

#[tokio::test]
async fn malformed_pods_are_refused_and_leave_nothing() {
    let env = Env::start().await;
    let before = env.snapshot();
    let mut no_meta = sandbox_config("x");
    no_meta.metadata = None;
    expect_code(
        run(&env, no_meta).await,
        &[Code::InvalidArgument],
        "pod without metadata",
    );
    let mut node_sysctl = sandbox_config("sysctl");
    node_sysctl.linux = Some(LinuxPodSandboxConfig {
        sysctls: HashMap::from([("vm.swappiness".into(), "10".into())]),
        ..Default::default()
    });
    let s = expect_code(
        run(&env, node_sysctl).await,
        &[Code::InvalidArgument],
        "a node-wide sysctl",
    );
    assert!(s.message().contains("vm.swappiness"), "{}", s.message());
    let mut hostnet_sysctl = with_namespaces(
        sandbox_config("hs"),
        NamespaceMode::Node,
        NamespaceMode::Pod,
    );
    hostnet_sysctl.linux.as_mut().unwrap().sysctls =
        HashMap::from([("net.ipv4.ip_forward".into(), "1".into())]);
    expect_code(
        run(&env, hostnet_sysctl).await,
        &[Code::InvalidArgument],
        "net.* sysctl on a host-network pod",
    );
    let mut rt = env.cri.runtime.clone();
    expect_code(
        rt.run_pod_sandbox(RunPodSandboxRequest {
            config: None,
            runtime_handler: String::new(),
        })
        .await,
        &[Code::InvalidArgument],
        "RunPodSandbox without config",
    );
    expect_code(
        rt.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox_config("h")),
            runtime_handler: "no-such-handler".into(),
        })
        .await,
        &[Code::InvalidArgument, Code::NotFound],
        "unknown runtime handler",
    );
    assert!(list(&env, None).await.is_empty());
    env.assert_no_leaks_since(&before).await;
    env.finish().await;
}

#[tokio::test]
async fn pods_survive_a_berthd_sigkill() {
    let mut env = Env::start().await;
    let id = run(&env, sandbox_config("durable")).await.unwrap();
    let (_, info) = status(&env, &id).await.unwrap();
    let net = info["namespaces"]["network"].as_str().unwrap().to_string();
    env.berthd.kill();
    env.berthd.restart().await.expect("berthd restarts");
    env.cri = env.berthd.cri().await.expect("reconnect");
    let (st, _) = status(&env, &id).await.expect("status after restart");
    assert_eq!(st.state, PodSandboxState::SandboxReady as i32);
    assert!(
        is_nsfs_mount(&net),
        "the pod's network namespace is still pinned"
    );
    // The same pod asked again after the restart is the same pod.
    assert_eq!(run(&env, sandbox_config("durable")).await.unwrap(), id);
    remove(&env, &id).await.unwrap();
    env.finish().await;
}

/// A pod's state dir holds its namespace pins and its /dev/shm (a 1777
/// tmpfs, as containers need it): no other node user may reach them
/// through the host path. Containers get them by bind mounts.
#[tokio::test]
async fn pod_state_is_not_reachable_by_other_node_users() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::start().await;
    let id = run(&env, sandbox_config("private")).await.unwrap();
    let sandboxes = env.berthd.state().join("sandboxes");
    for d in [
        sandboxes.clone(),
        sandboxes.join(&id),
        env.berthd.state().join("containers"),
    ] {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is {mode:o}", d.display());
    }
    let shm = sandboxes.join(&id).join("shm");
    let mode = std::fs::metadata(&shm).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o1777, "the pod's /dev/shm stays writable inside");
    remove(&env, &id).await.unwrap();
    env.finish().await;
}
