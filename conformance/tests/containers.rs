//! Container scenarios: CreateContainer, StartContainer, StopContainer,
//! RemoveContainer, ContainerStatus, ListContainers, ExecSync,
//! ReopenContainerLog and GetContainerEvents through the socket, the way
//! kubelet and critest drive them (cri-tools pkg/validate/container.go).
//! Every scenario removes what it made and ends with `env.finish()`.

mod common;

use std::time::{Duration, Instant};

use berth_conformance::Env;
use berth_conformance::cri::sandbox_config;
use berth_conformance::pods::*;
use berth_cri_api::v1::{
    ContainerState, ExecSyncRequest, GetEventsRequest, ImageSpec, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, ListContainersRequest, NamespaceMode, NamespaceOption,
    RemoveContainerRequest, RemovePodSandboxRequest, StopContainerRequest,
};
use common::*;
use tonic::Code;

/// A pod (with `pid` sharing as given) and a pulled busybox image.
async fn pod(env: &Env, name: &str, pid: NamespaceMode) -> Pod {
    let r = push_busybox(env, "ctr/busybox:1").await;
    let mut config = sandbox_config(name);
    config.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                pid: pid as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    run_pod(env, config, &r).await
}

async fn exec_timeout(
    env: &Env,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Result<berth_cri_api::v1::ExecSyncResponse, tonic::Status> {
    let mut rt = env.cri.runtime.clone();
    rt.exec_sync(ExecSyncRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout,
    })
    .await
    .map(|r| r.into_inner())
}

async fn remove_pod(env: &Env, p: Pod) {
    let mut rt = env.cri.runtime.clone();
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: p.id.clone(),
    })
    .await
    .expect("RemovePodSandbox");
    let left = rt
        .list_containers(ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert!(
        left.is_empty(),
        "RemovePodSandbox removes its containers: {left:?}"
    );
}

#[tokio::test]
async fn container_runs_logs_in_cri_format_and_reports_its_exit_code() {
    let env = Env::start().await;
    let p = pod(&env, "logs", NamespaceMode::Container).await;
    let c = container(
        &p,
        "hello",
        &["sh", "-c", "echo hello; echo oops >&2; exit 3"],
    );
    let id = create(&env, &p, c).await.expect("CreateContainer");
    let st = status(&env, &id).await.unwrap();
    assert_eq!(st.state, ContainerState::ContainerCreated as i32);
    assert!(st.created_at > 0 && st.started_at == 0);
    start(&env, &id).await.expect("StartContainer");
    let st = wait_exited(&env, &id, Duration::from_secs(20)).await;
    assert_eq!(st.exit_code, 3);
    assert_eq!(st.reason, "Error");
    assert!(st.started_at > 0 && st.finished_at >= st.started_at);
    assert_eq!(st.image_ref, st.image_id);
    assert!(st.image_id.starts_with("sha256:"));
    let log = std::fs::read_to_string(p.logs.path().join("hello.log")).expect("CRI log file");
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines.iter().any(|l| l.ends_with(" stdout F hello")),
        "stdout line in CRI format: {log}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with(" stderr F oops")),
        "stderr line: {log}"
    );
    for l in &lines {
        let ts = l.split(' ').next().unwrap();
        assert!(
            ts.ends_with('Z') && ts.contains('T') && ts.contains('.'),
            "RFC 3339 nano timestamp: {l}"
        );
    }
    let mut rt = env.cri.runtime.clone();
    rt.remove_container(RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("RemoveContainer");
    expect_code(
        status(&env, &id).await,
        &[Code::NotFound],
        "status after remove",
    );
    rt.remove_container(RemoveContainerRequest { container_id: id })
        .await
        .expect("RemoveContainer twice");
    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn exec_sync_returns_output_and_exit_code_and_its_timeout_kills() {
    let env = Env::start().await;
    let p = pod(&env, "exec", NamespaceMode::Container).await;
    let id = create(&env, &p, container(&p, "sleeper", &["sleep", "1000"]))
        .await
        .unwrap();
    start(&env, &id).await.unwrap();
    let r = exec_timeout(
        &env,
        &id,
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
        10,
    )
    .await
    .expect("ExecSync");
    assert_eq!(r.stdout, b"out\n");
    assert_eq!(r.stderr, b"err\n");
    assert_eq!(r.exit_code, 7);
    let pid1 = exec_timeout(&env, &id, &["cat", "/proc/1/cmdline"], 0)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&pid1.stdout).starts_with("sleep"),
        "own PID namespace: sleep is PID 1"
    );
    let t = Instant::now();
    expect_code(
        exec_timeout(&env, &id, &["sleep", "30"], 1).await,
        &[Code::DeadlineExceeded],
        "ExecSync past its timeout",
    );
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "the timeout kills the command"
    );
    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn stop_container_escalates_to_sigkill_after_the_timeout() {
    let env = Env::start().await;
    let p = pod(&env, "stop", NamespaceMode::Container).await;
    // PID 1 ignores SIGTERM unless it handles it: sleep does not.
    let id = create(&env, &p, container(&p, "stubborn", &["sleep", "1000"]))
        .await
        .unwrap();
    start(&env, &id).await.unwrap();
    let mut rt = env.cri.runtime.clone();
    rt.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 1,
    })
    .await
    .expect("StopContainer");
    let st = status(&env, &id).await.unwrap();
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 137, "SIGKILL after the timeout");
    rt.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 1,
    })
    .await
    .expect("StopContainer of a stopped container");
    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn containers_of_a_pod_share_ipc_and_with_pid_pod_see_each_others_processes() {
    let env = Env::start().await;
    let p = pod(&env, "shared", NamespaceMode::Pod).await;
    let a = create(&env, &p, container(&p, "a", &["sleep", "1001"]))
        .await
        .unwrap();
    let b = create(&env, &p, container(&p, "b", &["sleep", "1002"]))
        .await
        .unwrap();
    start(&env, &a).await.unwrap();
    start(&env, &b).await.unwrap();
    let ps = exec_timeout(&env, &b, &["ps"], 10).await.unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout).to_string();
    assert!(
        ps.contains("sleep 1001") && ps.contains("sleep 1002"),
        "pid POD: b sees a's process:\n{ps}"
    );
    let ipc_a = exec_timeout(&env, &a, &["readlink", "/proc/self/ns/ipc"], 10)
        .await
        .unwrap()
        .stdout;
    let ipc_b = exec_timeout(&env, &b, &["readlink", "/proc/self/ns/ipc"], 10)
        .await
        .unwrap()
        .stdout;
    assert_eq!(ipc_a, ipc_b, "one IPC namespace per pod");
    // /dev/shm is the pod's: a file written by a is read by b.
    exec_timeout(&env, &a, &["sh", "-c", "echo shared > /dev/shm/x"], 10)
        .await
        .unwrap();
    let x = exec_timeout(&env, &b, &["cat", "/dev/shm/x"], 10)
        .await
        .unwrap()
        .stdout;
    assert_eq!(x, b"shared\n");
    remove_pod(&env, p).await;
    env.finish().await;
}

/// The node's cgroups as berthd finds them (v1 here: devices.allow and
/// devices.deny; cgroup_v2.rs runs the same check on v2's eBPF program).
#[tokio::test]
async fn device_rules_let_a_container_make_nodes_but_open_only_its_devices() {
    let env = Env::start().await;
    let p = pod(&env, "devices", NamespaceMode::Container).await;
    check_device_rules(&env, &p, "devices").await;
    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn containers_keep_running_while_berthd_is_killed_and_are_found_again() {
    let mut env = Env::start().await;
    let p = pod(&env, "durable", NamespaceMode::Container).await;
    let created = create(&env, &p, container(&p, "later", &["sleep", "1000"]))
        .await
        .unwrap();
    let running = create(
        &env,
        &p,
        container(
            &p,
            "now",
            &["sh", "-c", "while true; do echo tick; sleep 0.1; done"],
        ),
    )
    .await
    .unwrap();
    start(&env, &running).await.unwrap();
    env.berthd.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = p.logs.path().join("now.log");
    let before = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .count();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .count();
    assert!(
        after > before,
        "the container keeps logging while berthd is down ({before} → {after})"
    );
    env.berthd.restart().await.expect("restart berthd");
    env.cri = env.berthd.cri().await.unwrap();
    assert_eq!(
        status(&env, &running).await.unwrap().state,
        ContainerState::ContainerRunning as i32
    );
    assert_eq!(
        status(&env, &created).await.unwrap().state,
        ContainerState::ContainerCreated as i32
    );
    start(&env, &created)
        .await
        .expect("a container created before the kill starts after it");
    let r = exec_timeout(&env, &created, &["echo", "alive"], 10)
        .await
        .unwrap();
    assert_eq!(r.stdout, b"alive\n");
    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn a_retried_create_container_gets_the_first_calls_container() {
    let env = Env::start().await;
    let p = pod(&env, "retry", NamespaceMode::Container).await;
    let c = container(&p, "once", &["sleep", "1000"]);
    let (a, b) = tokio::join!(create(&env, &p, c.clone()), create(&env, &p, c.clone()));
    assert_eq!(a.unwrap(), b.unwrap());
    let mut rt = env.cri.runtime.clone();
    let all = rt
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(all.len(), 1);
    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn bad_container_requests_get_clear_errors_and_leave_nothing() {
    let env = Env::start().await;
    let p = pod(&env, "bad", NamespaceMode::Container).await;
    let before = env.snapshot();
    let mut no_meta = container(&p, "x", &["true"]);
    no_meta.metadata = None;
    expect_code(
        create(&env, &p, no_meta).await,
        &[Code::InvalidArgument],
        "container without metadata",
    );
    let mut missing_image = container(&p, "y", &["true"]);
    missing_image.image = Some(ImageSpec {
        image: "127.0.0.1:1/not/pulled:1".into(),
        ..Default::default()
    });
    expect_code(
        create(&env, &p, missing_image).await,
        &[Code::NotFound],
        "image not pulled",
    );
    let mut escape = container(&p, "z", &["true"]);
    escape.mounts = vec![berth_cri_api::v1::Mount {
        container_path: "../../etc".into(),
        host_path: "/tmp".into(),
        ..Default::default()
    }];
    expect_code(
        create(&env, &p, escape).await,
        &[Code::InvalidArgument],
        "mount path escaping",
    );
    let other = Pod {
        id: "0".repeat(64),
        config: p.config.clone(),
        image: p.image.clone(),
        logs: tempfile::tempdir().unwrap(),
    };
    expect_code(
        create(&env, &other, container(&p, "w", &["true"])).await,
        &[Code::NotFound],
        "unknown pod",
    );
    expect_code(
        start(&env, &"e".repeat(64)).await,
        &[Code::NotFound],
        "start of an unknown container",
    );
    expect_code(
        exec_timeout(&env, &"e".repeat(64), &["true"], 1).await,
        &[Code::NotFound],
        "exec in an unknown container",
    );
    env.assert_no_leaks_since(&before).await;
    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn get_container_events_streams_the_lifecycle() {
    let env = Env::start().await;
    let p = pod(&env, "events", NamespaceMode::Container).await;
    let mut rt = env.cri.runtime.clone();
    let mut stream = rt
        .get_container_events(GetEventsRequest {})
        .await
        .expect("GetContainerEvents")
        .into_inner();
    let id = create(&env, &p, container(&p, "short", &["true"]))
        .await
        .unwrap();
    start(&env, &id).await.unwrap();
    wait_exited(&env, &id, Duration::from_secs(20)).await;
    rt.remove_container(RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 4 {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an event within 10 s")
            .expect("stream")
            .expect("not closed");
        if ev.container_id == id {
            kinds.push(ev.container_event_type);
        }
    }
    assert_eq!(
        kinds,
        vec![0, 1, 2, 3],
        "created, started, stopped, deleted"
    );
    drop(stream);
    remove_pod(&env, p).await;
    env.finish().await;
}

/// crictl users and scripts give a pod a log directory that does not exist
/// yet: CreateContainer makes it (0755), as containerd and CRI-O do.
#[tokio::test]
async fn a_missing_log_directory_is_made() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::start().await;
    let image = push_busybox(&env, "logs/busybox:1").await;
    let p = run_pod(&env, sandbox_config("no-log-dir"), &image).await;
    // A second pod whose log directory nobody made (run_pod makes one).
    let missing = p.logs.path().join("not/yet");
    let mut config = sandbox_config("no-log-dir-2");
    config.log_directory = missing.display().to_string();
    let pod_id = env
        .cri
        .runtime
        .clone()
        .run_pod_sandbox(berth_cri_api::v1::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox with a log directory that does not exist")
        .into_inner()
        .pod_sandbox_id;
    assert!(
        missing.is_dir(),
        "RunPodSandbox makes the pod's log directory, as containerd does"
    );
    std::fs::remove_dir(&missing).unwrap();
    let mut rt = env.cri.runtime.clone();
    let mut c = container(&p, "talker", &["echo", "logged"]);
    c.log_path = "talker/0.log".into();
    let id = rt
        .create_container(berth_cri_api::v1::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(c),
            sandbox_config: Some(config.clone()),
        })
        .await
        .expect("CreateContainer with a log directory that does not exist")
        .into_inner()
        .container_id;
    start(&env, &id).await.unwrap();
    wait_exited(&env, &id, Duration::from_secs(10)).await;
    let log = std::fs::read_to_string(missing.join("talker/0.log")).unwrap();
    assert!(log.contains("logged"), "{log}");
    let mode = std::fs::metadata(missing.join("talker"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o755);
    rt.remove_pod_sandbox(berth_cri_api::v1::RemovePodSandboxRequest {
        pod_sandbox_id: pod_id,
    })
    .await
    .unwrap();
    remove_pod(&env, p).await;
    env.finish().await;
}
