//! UpdateContainerResources (kubelet's in-place pod resize, the static CPU
//! manager): the new limits reach the container's cgroup, ContainerStatus
//! reports them, also after berthd restarts; a limit the kernel refuses
//! fails the call clearly and changes nothing.

mod common;

use std::time::Duration;

use berth_conformance::Env;
use berth_conformance::cri::sandbox_config;
use berth_conformance::pods::*;
use berth_cri_api::v1::{
    LinuxContainerResources, UpdateContainerResourcesRequest, UpdatePodSandboxResourcesRequest,
};
use common::*;
use tonic::Code;

const MIB: i64 = 1 << 20;

/// A cgroup file of a process: `controller` on v1 (its hierarchy), the
/// unified one on v2 (then `v2_file`).
fn cgroup_file(pid: i32, controller: &str, v1_file: &str, v2_file: &str) -> String {
    cgroup_file_of(pid, "", controller, v1_file, v2_file)
}

/// The same file of the cgroup `up` (`..` for the parent, the pod's) from
/// the process's.
fn cgroup_file_of(pid: i32, up: &str, controller: &str, v1_file: &str, v2_file: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrls, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        if ctrls.split(',').any(|c| c == controller) {
            let dir = std::fs::read_dir("/sys/fs/cgroup")
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.split(',').any(|c| c == controller))
                })
                .unwrap();
            return std::fs::read_to_string(
                dir.join(path.trim_start_matches('/'))
                    .join(up)
                    .join(v1_file),
            )
            .unwrap()
            .trim()
            .to_string();
        }
    }
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup path");
    std::fs::read_to_string(
        std::path::Path::new("/sys/fs/cgroup")
            .join(path.trim_start_matches('/'))
            .join(up)
            .join(v2_file),
    )
    .unwrap()
    .trim()
    .to_string()
}

fn limits(memory: i64, quota: i64, shares: i64) -> LinuxContainerResources {
    LinuxContainerResources {
        memory_limit_in_bytes: memory,
        cpu_period: 100_000,
        cpu_quota: quota,
        cpu_shares: shares,
        ..Default::default()
    }
}

async fn status_limits(env: &Env, id: &str) -> LinuxContainerResources {
    status(env, id)
        .await
        .expect("ContainerStatus")
        .resources
        .and_then(|r| r.linux)
        .expect("ContainerStatus.resources.linux")
}

#[tokio::test]
async fn new_limits_reach_the_cgroup_and_the_status_and_survive_a_restart() {
    let mut env = Env::start().await;
    let image = push_busybox(&env, "res/busybox:1").await;
    let p = run_pod(&env, sandbox_config("resize"), &image).await;
    let mut c = container(&p, "app", &["sleep", "3600"]);
    c.linux.get_or_insert_with(Default::default).resources = Some(limits(64 * MIB, 20_000, 256));
    let id = run(&env, &p, c).await;
    let pid = container_pid(&env, &id).await;
    let v1 = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .any(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|c| c == "memory"))
        });
    let memory = || cgroup_file(pid, "memory", "memory.limit_in_bytes", "memory.max");
    assert_eq!(memory(), (64 * MIB).to_string());

    let mut rt = env.cri.runtime.clone();
    rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(limits(96 * MIB, 50_000, 512)),
        ..Default::default()
    })
    .await
    .expect("UpdateContainerResources");
    assert_eq!(memory(), (96 * MIB).to_string());
    let quota = cgroup_file(pid, "cpu", "cpu.cfs_quota_us", "cpu.max");
    if v1 {
        assert_eq!(quota, "50000");
        assert_eq!(cgroup_file(pid, "cpu", "cpu.shares", "cpu.weight"), "512");
    } else {
        assert_eq!(quota, "50000 100000");
    }
    let r = status_limits(&env, &id).await;
    assert_eq!(
        (r.memory_limit_in_bytes, r.cpu_quota, r.cpu_shares),
        (96 * MIB, 50_000, 512)
    );

    env.berthd.kill();
    env.berthd.restart().await.expect("restart");
    env.cri = env.berthd.cri().await.expect("reconnect");
    let r = status_limits(&env, &id).await;
    assert_eq!(r.memory_limit_in_bytes, 96 * MIB, "the update is persisted");

    // Bad requests change nothing.
    let mut rt = env.cri.runtime.clone();
    let e = rt
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(limits(-5, 0, 0)),
            ..Default::default()
        })
        .await;
    expect_code(e, &[Code::InvalidArgument], "a negative limit");
    let e = rt
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: "no-such-container".into(),
            linux: Some(limits(96 * MIB, 0, 0)),
            ..Default::default()
        })
        .await;
    expect_code(e, &[Code::NotFound], "an unknown container");
    assert_eq!(memory(), (96 * MIB).to_string());
    assert_eq!(
        status_limits(&env, &id).await.memory_limit_in_bytes,
        96 * MIB,
        "the record is unchanged too"
    );
    remove_pod(&env, p).await;
    env.finish().await;
}

/// Below what the container uses: on v1 the kernel refuses (EBUSY) and the
/// call says so; on v2 it takes the limit and reclaims or OOM-kills, as
/// with runc.
#[tokio::test]
async fn a_memory_limit_below_the_usage_is_refused_on_cgroup_v1() {
    let env = Env::start().await;
    let image = push_busybox(&env, "res/busybox:1").await;
    let p = run_pod(&env, sandbox_config("resize-low"), &image).await;
    // tail keeps its one line (40 MiB, no newline) in memory until end of
    // file, which the sleep holds off: anonymous memory that cannot be
    // reclaimed without swap.
    let script = "(head -c 41943040 /dev/zero; sleep 3600) | tail";
    let mut c = container(&p, "holder", &["sh", "-c", script]);
    c.linux.get_or_insert_with(Default::default).resources = Some(limits(128 * MIB, 0, 0));
    let id = run(&env, &p, c).await;
    let pid = container_pid(&env, &id).await;
    let v1 = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .any(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|c| c == "memory"))
        });
    assert!(
        v1,
        "this scenario checks the v1 refusal; the node is cgroup v2"
    );
    let usage = || {
        cgroup_file(pid, "memory", "memory.usage_in_bytes", "memory.current")
            .parse::<i64>()
            .unwrap()
    };
    let t = std::time::Instant::now();
    while usage() < 40 * MIB {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the container never held its memory: {}",
            usage()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut rt = env.cri.runtime.clone();
    let e = rt
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(limits(8 * MIB, 0, 0)),
            ..Default::default()
        })
        .await;
    let s = expect_code(e, &[Code::FailedPrecondition], "a limit below the usage");
    assert!(
        s.message().contains("memory") && s.message().contains("refused"),
        "{}",
        s.message()
    );
    assert_eq!(
        status_limits(&env, &id).await.memory_limit_in_bytes,
        128 * MIB,
        "a refused update changes nothing"
    );
    remove_pod(&env, p).await;
    env.finish().await;
}

/// UpdatePodSandboxResources: the pod's new resources are recorded
/// (PodSandboxStatus shows them, also after a restart); on a pod cgroup
/// berth made itself (no cgroup_parent) they are applied there, the
/// containers' sum plus the overhead.
#[tokio::test]
async fn pod_resources_reach_a_pod_cgroup_berth_owns_and_are_kept() {
    let mut env = Env::start().await;
    let image = push_busybox(&env, "res/busybox-pod:1").await;
    let p = run_pod(&env, sandbox_config("pod-resize"), &image).await;
    let id = run(&env, &p, container(&p, "app", &["sleep", "3600"])).await;
    let pid = container_pid(&env, &id).await;
    let pod_memory = || cgroup_file_of(pid, "..", "memory", "memory.limit_in_bytes", "memory.max");
    let mut rt = env.cri.runtime.clone();
    rt.update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: p.id.clone(),
        overhead: Some(LinuxContainerResources {
            memory_limit_in_bytes: 16 * MIB,
            ..Default::default()
        }),
        resources: Some(limits(256 * MIB, 0, 0)),
    })
    .await
    .expect("UpdatePodSandboxResources");
    assert_eq!(pod_memory(), (272 * MIB).to_string());
    let recorded = |info: serde_json::Value| {
        info["config"]["linux"]["resources"]["memory_limit_in_bytes"].as_i64()
    };
    let info = pod_info(&env, &p.id).await;
    assert_eq!(recorded(info), Some(256 * MIB));

    env.berthd.kill();
    env.berthd.restart().await.expect("restart");
    env.cri = env.berthd.cri().await.expect("reconnect");
    assert_eq!(
        recorded(pod_info(&env, &p.id).await),
        Some(256 * MIB),
        "kept"
    );

    // Bad requests change nothing.
    let mut rt = env.cri.runtime.clone();
    let e = rt
        .update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: p.id.clone(),
            resources: Some(limits(-1, 0, 0)),
            ..Default::default()
        })
        .await;
    expect_code(e, &[Code::InvalidArgument], "a negative pod limit");
    let e = rt
        .update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: "no-such-pod".into(),
            resources: Some(limits(MIB, 0, 0)),
            ..Default::default()
        })
        .await;
    expect_code(e, &[Code::NotFound], "an unknown pod");
    assert_eq!(pod_memory(), (272 * MIB).to_string());
    assert_eq!(
        recorded(pod_info(&env, &p.id).await),
        Some(256 * MIB),
        "the record is unchanged too"
    );
    remove_pod(&env, p).await;
    env.finish().await;
}

async fn pod_info(env: &Env, id: &str) -> serde_json::Value {
    let st = env
        .cri
        .runtime
        .clone()
        .pod_sandbox_status(berth_cri_api::v1::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner();
    serde_json::from_str(&st.info["info"]).expect("verbose info is JSON")
}
