//! Containers without a PID namespace of their own (the pod's shared one,
//! or the node's): the kernel does not kill their other processes when
//! their init exits, so berth must, as containerd's shim does. After the
//! init exits, and after StopContainer or RemoveContainer, no process of
//! the container is left.

mod common;

use std::time::{Duration, Instant};

use berth_conformance::Env;
use berth_conformance::cri::sandbox_config;
use berth_conformance::pods::*;
use berth_cri_api::v1::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    RemoveContainerRequest, StopContainerRequest,
};

/// A pod whose containers get `pid` (POD: the pod's shared namespace,
/// NODE: the host's).
async fn pod_with_pid(env: &Env, name: &str, pid: NamespaceMode) -> Pod {
    let image = push_busybox(env, "pid/busybox:1").await;
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
    run_pod(env, config, &image).await
}

/// A container running `sh -c script` in the PID namespace `pid` (kubelet
/// gives a container its pod's mode: hostPID makes both NODE).
fn in_pid(
    p: &Pod,
    pid: NamespaceMode,
    name: &str,
    script: &str,
) -> berth_cri_api::v1::ContainerConfig {
    let mut c = container(p, name, &["sh", "-c", script]);
    security(&mut c).namespace_options = Some(NamespaceOption {
        pid: pid as i32,
        ..Default::default()
    });
    c
}

/// Host pids of processes whose command line holds `marker`.
fn processes_with(marker: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        // A zombie has an empty cmdline: not running any more.
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(marker) {
            out.push(pid);
        }
    }
    out
}

async fn wait_gone(marker: &str, what: &str) {
    let t = Instant::now();
    loop {
        let left = processes_with(marker);
        if left.is_empty() {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{what}: processes of the container still run: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A unique `sleep` duration (seconds): what the container backgrounds,
/// found again by its command line. Unique per test process and call.
fn unique_sleep() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}",
        7_000_000 + (std::process::id() as u64 % 100_000) * 10 + n
    )
}

async fn init_exit_takes_the_rest_along(pid: NamespaceMode, name: &str) {
    let env = Env::start().await;
    let p = pod_with_pid(&env, name, pid).await;
    let secs = unique_sleep();
    let script = format!("sleep {secs} & sleep {secs} & echo started; exit 0");
    let id = run(&env, &p, in_pid(&p, pid, "leaver", &script)).await;
    let st = wait_exited(&env, &id, Duration::from_secs(10)).await;
    assert_eq!(st.exit_code, 0, "{st:?}");
    wait_gone(&format!("sleep {secs}"), "after the init exited").await;
    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn in_the_pods_pid_namespace_an_exited_init_leaves_no_process() {
    init_exit_takes_the_rest_along(NamespaceMode::Pod, "pid-pod-exit").await;
}

#[tokio::test]
async fn in_the_nodes_pid_namespace_an_exited_init_leaves_no_process() {
    init_exit_takes_the_rest_along(NamespaceMode::Node, "pid-node-exit").await;
}

#[tokio::test]
async fn stop_and_remove_leave_no_process_of_a_container_in_a_shared_pid_namespace() {
    let env = Env::start().await;
    let p = pod_with_pid(&env, "pid-pod-stop", NamespaceMode::Pod).await;
    let secs = unique_sleep();
    // The init ignores SIGTERM, and its children do not die with it.
    let script = format!("trap '' TERM; sleep {secs} & sleep {secs} & wait");
    let id = run(
        &env,
        &p,
        in_pid(&p, NamespaceMode::Pod, "stubborn", &script),
    )
    .await;
    let t = Instant::now();
    while processes_with(&format!("sleep {secs}")).len() < 2 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the sleeps never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut rt = env.cri.runtime.clone();
    rt.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 1,
    })
    .await
    .expect("StopContainer");
    wait_gone(&format!("sleep {secs}"), "after StopContainer").await;

    // And one whose background child outlives a stop that raced it: the
    // shim ends what is left when RemoveContainer kills the container.
    let secs2 = unique_sleep() + "1";
    let script = format!("sleep {secs2} & exec sleep {secs2}");
    let id2 = run(&env, &p, in_pid(&p, NamespaceMode::Pod, "second", &script)).await;
    rt.remove_container(RemoveContainerRequest { container_id: id2 })
        .await
        .expect("RemoveContainer");
    wait_gone(&format!("sleep {secs2}"), "after RemoveContainer").await;
    rt.remove_container(RemoveContainerRequest { container_id: id })
        .await
        .expect("RemoveContainer");
    remove_pod(&env, p).await;
    env.finish().await;
}
