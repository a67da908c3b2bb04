//! What berthd finds at start after a SIGKILL in the middle of a call, and
//! calls that race each other on one pod. berthd pauses at a named point
//! (its FAILPOINTS test hooks) so that the kill or the other call lands
//! exactly there.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_conformance::Env;
use berth_conformance::cri::sandbox_config;
use berth_conformance::leak;
use berth_conformance::pods::{self, Pod};
use berth_cri_api::v1::{
    ContainerState, CreateContainerRequest, LinuxPodSandboxConfig, ListContainersRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest,
};

/// CreateContainer of `config` in `pod`, in a task of its own (berthd
/// pauses inside it at the scenario's failpoint).
fn create_in_background(
    env: &Env,
    pod: &Pod,
    config: berth_cri_api::v1::ContainerConfig,
) -> tokio::task::JoinHandle<
    Result<tonic::Response<berth_cri_api::v1::CreateContainerResponse>, tonic::Status>,
> {
    let req = CreateContainerRequest {
        pod_sandbox_id: pod.id.clone(),
        config: Some(config),
        sandbox_config: Some(pod.config.clone()),
    };
    let mut rt = env.cri.runtime.clone();
    tokio::spawn(async move { rt.create_container(req).await })
}

/// Directories named `name` below `parent` (relative to each hierarchy),
/// in every mounted cgroup hierarchy.
fn cgroups_named(parent: &str, name: &str) -> Vec<PathBuf> {
    leak::cgroup_parent_dirs(parent)
        .into_iter()
        .flat_map(|d| leak::walk_dirs(&d))
        .filter(|d| d.file_name().and_then(|n| n.to_str()) == Some(name))
        .collect()
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGKILL while CreateContainer has made the container's cgroup, root
/// filesystem and shim but not its record: berthd's start removes them all,
/// the cgroup included.
#[tokio::test]
async fn a_container_cut_short_by_sigkill_leaves_no_cgroup() {
    let mut env = Env::start_pausing_at("container.before_commit", 5000).await;
    let image = pods::push_busybox(&env, "crash/busybox:1").await;
    let pod: Pod = pods::run_pod(&env, sandbox_config("crash-create"), &image).await;
    let before = env.snapshot();
    let call = create_in_background(&env, &pod, pods::container(&pod, "cut", &["sleep", "1000"]));
    // The container's cgroup is <pod cgroup>/<id>, beside the pause's leaf.
    let parent = env.berthd.cgroup_parent().to_string();
    let pod_id = pod.id.clone();
    wait_for("the container's cgroup is made", || {
        leak::cgroup_parent_dirs(&format!("{parent}/{pod_id}"))
            .iter()
            .flat_map(|d| leak::walk_dirs(d).into_iter().skip(1))
            .any(|d| d.file_name().and_then(|n| n.to_str()) != Some("pause"))
    })
    .await;
    // The shim is started after the cgroup: give it time to be there too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.berthd.kill();
    let _ = call.await;
    env.berthd.restart().await.expect("restart");
    env.cri = env.berthd.cri().await.expect("reconnect");
    env.assert_no_leaks_since(&before).await;
    let all = pods::list_containers(&env, &pod.id).await;
    assert!(all.is_empty(), "no record, no container: {all:?}");
    pods::remove_pod(&env, pod).await;
    env.finish().await;
}

/// SIGKILL after CreateContainer's durable record and before the shim's
/// answer (the record is written while the shim starts, without the pid
/// to come): the restart asks the shim for the pid, and the container
/// starts and runs as if nothing had happened.
#[tokio::test]
async fn a_container_recorded_before_its_shim_answered_gets_its_pid_from_the_shim() {
    let mut env = Env::start_pausing_at("container.before_pid", 5000).await;
    let image = pods::push_busybox(&env, "crash/busybox:2").await;
    let pod: Pod = pods::run_pod(&env, sandbox_config("crash-pid"), &image).await;
    let call = create_in_background(
        &env,
        &pod,
        pods::container(&pod, "early", &["sleep", "1000"]),
    );
    // The shim writes init.pid as it finishes; berthd waits at the point
    // by then (its record is written while the shim starts).
    let containers = env.berthd.state().join("containers");
    let init_pid = || {
        std::fs::read_dir(&containers)
            .into_iter()
            .flatten()
            .flatten()
            .find_map(|e| std::fs::read_to_string(e.path().join("init.pid")).ok())
            .and_then(|s| s.trim().parse::<i64>().ok())
    };
    wait_for("the shim writes init.pid", || init_pid().is_some()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = init_pid().unwrap();
    assert!(pid > 0);
    env.berthd.kill();
    assert!(call.await.unwrap().is_err(), "the call died with berthd");
    env.berthd.restart().await.expect("restart");
    env.cri = env.berthd.cri().await.expect("reconnect");
    let all = pods::list_containers(&env, &pod.id).await;
    assert_eq!(all.len(), 1, "the durable record came back: {all:?}");
    let id = all[0].id.clone();
    assert_eq!(all[0].state, ContainerState::ContainerCreated as i32);
    let info = pods::verbose_info(&env, &id).await;
    assert_eq!(
        info["pid"].as_i64(),
        Some(pid),
        "the pid, from the shim: {info}"
    );
    pods::start(&env, &id)
        .await
        .expect("start after the restart");
    assert_eq!(pods::sh(&env, &id, "echo up").await.trim(), "up");
    pods::remove_pod(&env, pod).await;
    env.finish().await;
}

/// SIGKILL while RunPodSandbox has started a pod's pause process (in its
/// leaf `pause` below the pod cgroup kubelet gave) but not committed the
/// pod: the pause and its cgroup go at the next start; kubelet's own pod
/// cgroup stays, kubelet's to remove.
#[tokio::test]
async fn a_pod_cut_short_by_sigkill_leaves_no_pause_cgroup_under_kubelets_parent() {
    let mut env = Env::start_pausing_at("sandbox.before_commit", 5000).await;
    let kubelet_parent = format!("{}/kubepods-crash", env.berthd.cgroup_parent());
    let mut config = sandbox_config("crash-run");
    // CRI's default pid mode (POD): a pause process holds the namespace.
    config.linux = Some(LinuxPodSandboxConfig {
        cgroup_parent: format!("/{kubelet_parent}"),
        ..Default::default()
    });
    let mut rt = env.cri.runtime.clone();
    let call = tokio::spawn(async move {
        rt.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
    });
    wait_for("the pause process runs", || {
        cgroups_named(&kubelet_parent, "pause").iter().any(|d| {
            std::fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty())
        })
    })
    .await;
    env.berthd.kill();
    let _ = call.await;
    env.berthd.restart().await.expect("restart");
    env.cri = env.berthd.cri().await.expect("reconnect");
    assert!(env.cri.list_pods().await.is_empty());
    let left = cgroups_named(&kubelet_parent, "pause");
    assert!(
        left.is_empty(),
        "the pause cgroup is berth's to remove: {left:?}"
    );
    let procs = leak::processes_for(&[env.berthd.dir().to_path_buf()]);
    assert!(
        procs
            .iter()
            .all(|p| p.name != "berth-shim" || leak::is_warm_shim(p)),
        "the pause's shim is gone: {procs:?}"
    );
    // kubelet's pod cgroup: kubelet removes it (here, the test).
    for d in leak::cgroup_parent_dirs(&kubelet_parent) {
        let _ = std::fs::remove_dir(&d);
    }
    env.finish().await;
}

/// RemovePodSandbox while a CreateContainer in that pod is half done: the
/// removal waits for the creation, then removes the new container with the
/// pod; nothing is left in a pod that is gone.
#[tokio::test]
async fn remove_pod_sandbox_racing_create_container_leaves_no_container_behind() {
    let env = Env::start_pausing_at("container.before_commit", 600).await;
    let image = pods::push_busybox(&env, "race/busybox:1").await;
    let pod: Pod = pods::run_pod(&env, sandbox_config("race"), &image).await;
    let create = create_in_background(
        &env,
        &pod,
        pods::container(&pod, "late", &["sleep", "1000"]),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut rt = env.cri.runtime.clone();
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.id.clone(),
    })
    .await
    .expect("RemovePodSandbox");
    let created = create.await.expect("create task");
    let all = rt
        .list_containers(ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert!(
        all.is_empty(),
        "a container outlived its removed pod (create answered {created:?}): {all:?}"
    );
    assert!(env.cri.list_pods().await.is_empty());
    drop(pod);
    env.finish().await;
}

/// A pid berthd read from a file (an unrecorded container's init.pid) may
/// belong to another process by the time berthd acts on it. Its shim here
/// takes the connection but never answers, so berthd gives up on it and
/// would kill the pid itself: it must not, since that pid is not in the
/// container's cgroup.
#[tokio::test]
async fn a_reused_pid_of_a_dead_container_is_not_killed() {
    let mut env = Env::start().await;
    env.berthd.kill();
    let dir = env.berthd.state().join("containers").join("reused");
    std::fs::create_dir_all(&dir).unwrap();
    let mut stranger = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("a process of the node's");
    std::fs::write(dir.join("init.pid"), stranger.id().to_string()).unwrap();
    std::fs::write(
        dir.join("cgroup"),
        format!("{}/gone-pod/reused", env.berthd.cgroup_parent()),
    )
    .unwrap();
    // A shim that accepts (the backlog does) but never answers.
    let _mute = std::os::unix::net::UnixListener::bind(dir.join("shim.sock")).unwrap();
    env.berthd.restart().await.expect("restart");
    env.cri = env.berthd.cri().await.expect("reconnect");
    let alive = stranger.try_wait().expect("try_wait").is_none();
    let _ = stranger.kill();
    let _ = stranger.wait();
    assert!(
        alive,
        "berthd killed a process that was not the container's"
    );
    assert!(!dir.exists(), "the unrecorded container's dir is removed");
    env.finish().await;
}

/// SIGKILL while CreateContainer has mounted an image volume but not
/// committed the container: at the next start the volume's overlay is
/// gone with the rest, and its image is no longer held in use
/// (RemoveImage works).
#[tokio::test]
async fn a_container_cut_short_with_an_image_volume_leaves_no_mount_and_no_hold() {
    use berth_conformance::images::{Compression, Format, ImageBuilder, TarBuilder};
    let mut env = Env::start_pausing_at("container.before_commit", 5000).await;
    let image = pods::push_busybox(&env, "crash/busybox-ivol:1").await;
    let data = ImageBuilder::new(Format::Oci)
        .layer(
            TarBuilder::new()
                .file("weights", 0o644, b"w\n")
                .layer(Compression::Gzip, Format::Oci),
        )
        .build();
    let data_ref = env.push("crash/data:1", &data).await;
    let data_id = env.cri.pull(&data_ref).await.expect("pull data");
    let pod: Pod = pods::run_pod(&env, sandbox_config("crash-ivol"), &image).await;
    let before = env.snapshot();
    let mut c = pods::container(&pod, "cut", &["sleep", "1000"]);
    c.mounts = vec![berth_cri_api::v1::Mount {
        container_path: "/data".into(),
        image: Some(berth_cri_api::v1::ImageSpec {
            image: data_id.clone(),
            ..Default::default()
        }),
        readonly: true,
        ..Default::default()
    }];
    let call = create_in_background(&env, &pod, c);
    let state = env.berthd.dir().to_path_buf();
    wait_for("the image volume is mounted", || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains(&*state.to_string_lossy()) && l.contains("/image-volumes/0"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.berthd.kill();
    let _ = call.await;
    env.berthd.restart().await.expect("restart");
    env.cri = env.berthd.cri().await.expect("reconnect");
    env.assert_no_leaks_since(&before).await;
    env.cri
        .remove_image(&data_id)
        .await
        .expect("RemoveImage: no container holds it any more");
    pods::remove_pod(&env, pod).await;
    env.finish().await;
}

/// StartContainer and a container's exit are recorded without a sync of
/// their own (the shim keeps both): a berthd SIGKILLed right after them
/// finds the same answers again from the shims, times and exit code
/// included.
#[tokio::test]
async fn starts_and_exits_survive_a_sigkill_right_after_them() {
    let mut env = Env::start().await;
    let image = pods::push_busybox(&env, "crash/rederive:1").await;
    let p = pods::run_pod(&env, sandbox_config("rederive"), &image).await;
    let running = pods::run(&env, &p, pods::container(&p, "sleeper", &["sleep", "1000"])).await;
    let done = pods::run(
        &env,
        &p,
        pods::container(&p, "done", &["sh", "-c", "exit 7"]),
    )
    .await;
    let exited = pods::wait_exited(&env, &done, Duration::from_secs(10)).await;
    let before = pods::status(&env, &running).await.unwrap();
    env.berthd.kill();
    env.berthd.restart().await.expect("restart berthd");
    env.cri = env.berthd.cri().await.expect("reconnect");
    let after = pods::status(&env, &running).await.unwrap();
    assert_eq!(
        after.state,
        berth_cri_api::v1::ContainerState::ContainerRunning as i32,
        "{after:?}"
    );
    assert_eq!(after.started_at, before.started_at);
    let again = pods::status(&env, &done).await.unwrap();
    assert_eq!(
        again.state,
        berth_cri_api::v1::ContainerState::ContainerExited as i32
    );
    assert_eq!(again.exit_code, 7);
    assert_eq!(
        (again.started_at, again.finished_at, again.reason.as_str()),
        (
            exited.started_at,
            exited.finished_at,
            exited.reason.as_str()
        )
    );
    assert_eq!(pods::sh(&env, &running, "echo ok").await, "ok\n");
    pods::remove_pod(&env, p).await;
    env.finish().await;
}

/// SIGKILL after CreateContainer has answered and before berthd has
/// read its shim's start line (the shim makes the init after the
/// answer): the restart takes the pid from the shim, and the container
/// kubelet was told about starts and runs.
#[tokio::test]
async fn a_container_killed_with_berthd_after_create_answered_still_starts() {
    let mut env = Env::start_pausing_at("container.after_answer", 5000).await;
    let image = pods::push_busybox(&env, "crash/busybox:5").await;
    let pod: Pod = pods::run_pod(&env, sandbox_config("crash-answered"), &image).await;
    let id = pods::create(
        &env,
        &pod,
        pods::container(&pod, "answered", &["sleep", "1000"]),
    )
    .await
    .expect("CreateContainer answers before the shim's start line");
    let st = pods::status(&env, &id).await.expect("ContainerStatus");
    assert_eq!(st.state, ContainerState::ContainerCreated as i32);
    let dir = env.berthd.state().join("containers").join(&id);
    wait_for("the shim writes init.pid", || dir.join("init.pid").exists()).await;
    let pid: i64 = std::fs::read_to_string(dir.join("init.pid"))
        .expect("init.pid")
        .trim()
        .parse()
        .expect("a pid");
    env.berthd.kill();
    env.berthd.restart().await.expect("restart");
    env.cri = env.berthd.cri().await.expect("reconnect");
    let st = pods::status(&env, &id).await.expect("ContainerStatus");
    assert_eq!(st.state, ContainerState::ContainerCreated as i32);
    assert_eq!(
        pods::verbose_info(&env, &id).await["pid"].as_i64(),
        Some(pid),
        "the pid, from the shim"
    );
    pods::start(&env, &id)
        .await
        .expect("start after the restart");
    assert_eq!(pods::sh(&env, &id, "echo up").await.trim(), "up");
    pods::remove_pod(&env, pod).await;
    env.finish().await;
}
