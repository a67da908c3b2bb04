//! Pod and container helpers the scenarios share: the CRI calls kubelet
//! makes, in its order, with the fields it sends. A scenario builds its own
//! pod config (that is what it tests) and hands it to [`run_pod`].

use berth_cri_api::v1::{
    ContainerConfig, ContainerFilter, ContainerMetadata, CreateContainerRequest, ExecSyncRequest,
    ExecSyncResponse, ImageSpec, LinuxContainerConfig, LinuxContainerSecurityContext,
    ListContainersRequest, PodSandboxConfig, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest,
};

use crate::Env;
use crate::images::{Format, ImageBuilder};

/// A running pod sandbox, with the config it was made from (kubelet sends
/// it again with every CreateContainer) and its log directory.
pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
    /// The image its containers run.
    pub image: String,
    pub logs: tempfile::TempDir,
}

/// Push the busybox test image as `repo_tag` and pull it; its reference.
pub async fn push_busybox(env: &Env, repo_tag: &str) -> String {
    let img = ImageBuilder::busybox(Format::Oci).build();
    let r = env.push(repo_tag, &img).await;
    env.cri.pull(&r).await.expect("pull busybox");
    r
}

/// RunPodSandbox with `config`, whose log directory becomes a fresh
/// temporary one.
pub async fn run_pod(env: &Env, config: PodSandboxConfig, image: &str) -> Pod {
    run_pod_on(env, config, image, "").await
}

/// [`run_pod`] on the RuntimeClass handler `handler`.
pub async fn run_pod_on(
    env: &Env,
    mut config: PodSandboxConfig,
    image: &str,
    handler: &str,
) -> Pod {
    let logs = tempfile::tempdir().expect("log dir");
    config.log_directory = logs.path().display().to_string();
    let mut rt = env.cri.runtime.clone();
    let id = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_string(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    Pod {
        id,
        config,
        image: image.to_string(),
        logs,
    }
}

/// A container of `p`'s image running `cmd`, logging to `<name>.log`, with
/// a `name` label.
pub fn container(p: &Pod, name: &str, cmd: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: p.image.clone(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        labels: [("name".to_string(), name.to_string())].into(),
        ..Default::default()
    }
}

/// A container that reads `mib` MiB through `tail` (which holds a line,
/// here all of it, in memory) under a 16 MiB memory limit: 200 MiB gets it
/// OOM-killed, 1 MiB completes.
pub fn memory_hog(p: &Pod, name: &str, mib: u32) -> ContainerConfig {
    let script = format!("head -c {mib}m /dev/zero | tail; exit 0");
    let mut c = container(p, name, &["sh", "-c", &script]);
    c.linux
        .get_or_insert_with(LinuxContainerConfig::default)
        .resources = Some(berth_cri_api::v1::LinuxContainerResources {
        memory_limit_in_bytes: 16 << 20,
        ..Default::default()
    });
    c
}

/// The container's security context, made if missing.
pub fn security(c: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    c.linux
        .get_or_insert_with(LinuxContainerConfig::default)
        .security_context
        .get_or_insert_with(LinuxContainerSecurityContext::default)
}

pub async fn create(env: &Env, p: &Pod, c: ContainerConfig) -> Result<String, tonic::Status> {
    let mut rt = env.cri.runtime.clone();
    rt.create_container(CreateContainerRequest {
        pod_sandbox_id: p.id.clone(),
        config: Some(c),
        sandbox_config: Some(p.config.clone()),
    })
    .await
    .map(|r| r.into_inner().container_id)
}

pub async fn start(env: &Env, id: &str) -> Result<(), tonic::Status> {
    let mut rt = env.cri.runtime.clone();
    rt.start_container(StartContainerRequest {
        container_id: id.into(),
    })
    .await
    .map(|_| ())
}

/// CreateContainer + StartContainer, both required to succeed.
pub async fn run(env: &Env, p: &Pod, c: ContainerConfig) -> String {
    let name = c
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let id = create(env, p, c)
        .await
        .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"));
    start(env, &id)
        .await
        .unwrap_or_else(|e| panic!("StartContainer {name}: {e}"));
    id
}

/// ExecSync of `cmd` with a 10 s timeout.
pub async fn exec(env: &Env, id: &str, cmd: &[&str]) -> Result<ExecSyncResponse, tonic::Status> {
    let mut rt = env.cri.runtime.clone();
    rt.exec_sync(ExecSyncRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout: 10,
    })
    .await
    .map(|r| r.into_inner())
}

/// ExecSync of `sh -c script`: (exit code, stdout, stderr).
pub async fn try_sh(env: &Env, id: &str, script: &str) -> (i32, String, String) {
    let r = exec(env, id, &["sh", "-c", script])
        .await
        .unwrap_or_else(|e| panic!("ExecSync {script:?}: {e}"));
    (
        r.exit_code,
        String::from_utf8_lossy(&r.stdout).into_owned(),
        String::from_utf8_lossy(&r.stderr).into_owned(),
    )
}

/// ExecSync that must exit 0; its stdout.
pub async fn sh(env: &Env, id: &str, script: &str) -> String {
    let (code, out, err) = try_sh(env, id, script).await;
    assert_eq!(
        code, 0,
        "{script:?} exited {code}: stdout {out:?} stderr {err:?}"
    );
    out
}

/// ListContainers of one pod.
pub async fn list_containers(env: &Env, pod_id: &str) -> Vec<berth_cri_api::v1::Container> {
    let mut rt = env.cri.runtime.clone();
    rt.list_containers(ListContainersRequest {
        filter: Some(ContainerFilter {
            pod_sandbox_id: pod_id.into(),
            ..Default::default()
        }),
    })
    .await
    .expect("ListContainers")
    .into_inner()
    .containers
}

/// RemovePodSandbox without a Stop first (it stops), which must take the
/// pod's containers along.
pub async fn remove_pod(env: &Env, p: Pod) {
    let mut rt = env.cri.runtime.clone();
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: p.id.clone(),
    })
    .await
    .expect("RemovePodSandbox");
    let left = list_containers(env, &p.id).await;
    assert!(
        left.is_empty(),
        "RemovePodSandbox removes its containers: {left:?}"
    );
}

/// ContainerStatus (not verbose).
pub async fn status(
    env: &Env,
    id: &str,
) -> Result<berth_cri_api::v1::ContainerStatus, tonic::Status> {
    let mut rt = env.cri.runtime.clone();
    Ok(rt
        .container_status(berth_cri_api::v1::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .expect("status"))
}

/// Polls ContainerStatus until the container has exited (panics after
/// `within`).
pub async fn wait_exited(
    env: &Env,
    id: &str,
    within: std::time::Duration,
) -> berth_cri_api::v1::ContainerStatus {
    let t = std::time::Instant::now();
    loop {
        let st = status(env, id).await.expect("ContainerStatus");
        if st.state == berth_cri_api::v1::ContainerState::ContainerExited as i32 {
            return st;
        }
        assert!(t.elapsed() < within, "container {id} did not exit: {st:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// ContainerStatus's verbose `info` (pid, runtimeSpec, ...), parsed.
pub async fn verbose_info(env: &Env, id: &str) -> serde_json::Value {
    let mut rt = env.cri.runtime.clone();
    let r = rt
        .container_status(berth_cri_api::v1::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .expect("ContainerStatus verbose")
        .into_inner();
    serde_json::from_str(r.info.get("info").expect("info key")).expect("info is JSON")
}

/// The host pid of a running container's process (verbose info `pid`).
pub async fn container_pid(env: &Env, id: &str) -> i32 {
    verbose_info(env, id).await["pid"]
        .as_i64()
        .expect("pid in info") as i32
}

/// A block device of this node (a whole disk, the first in /sys/block that
/// is not a loop, ram or zram device) as (name, major, minor): what a
/// container must not read through a node it makes itself. sda's 8:0
/// where there is none.
pub fn node_disk() -> (String, u32, u32) {
    let mut disks: Vec<(String, u32, u32)> = std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if ["loop", "ram", "zram", "nbd"]
                .iter()
                .any(|p| name.starts_with(p))
            {
                return None;
            }
            let dev = std::fs::read_to_string(e.path().join("dev")).ok()?;
            let (ma, mi) = dev.trim().split_once(':')?;
            Some((name, ma.parse().ok()?, mi.parse().ok()?))
        })
        .collect();
    disks.sort();
    disks
        .into_iter()
        .next()
        .unwrap_or_else(|| ("sda".into(), 8, 0))
}

/// The device cgroup rules, checked from inside a container of `p` (root,
/// default capabilities, so CAP_MKNOD) that asks for the node's
/// /dev/loop-control through ContainerConfig.devices: mknod of any device
/// works, but only the OCI defaults (null, zero, full, random, urandom,
/// tty, ptmx) and the requested device open. Refused with "Operation not
/// permitted" (the cgroup said no, not the filesystem), through nodes made
/// in the container: the node's disk, and devices that root on the node
/// can open and that need no capability, so that without the rules they
/// would open: /dev/loop0 (block 7:0) and /dev/fuse (char 10:229). The
/// container is stopped and removed after.
pub async fn check_device_rules(env: &Env, p: &Pod, name: &str) {
    let exists = |d: &str| std::path::Path::new(d).exists();
    assert!(
        exists("/dev/loop-control"),
        "the device check asks for the node's /dev/loop-control, which this node lacks (modprobe loop)"
    );
    let requested = Some("/dev/loop-control");
    let mut c = container(p, name, &["sleep", "3600"]);
    if let Some(dev) = requested {
        c.devices = vec![berth_cri_api::v1::Device {
            container_path: dev.into(),
            host_path: dev.into(),
            permissions: "rwm".into(),
        }];
    }
    let id = run(env, p, c).await;

    let (disk, major, minor) = node_disk();
    let mut refused = vec![(format!("b {major} {minor}"), format!("the disk {disk}"))];
    if exists("/dev/loop0") {
        refused.push(("b 7 0".into(), "/dev/loop0".into()));
    }
    if exists("/dev/fuse") {
        refused.push(("c 10 229".into(), "/dev/fuse".into()));
    }
    for (i, (node, what)) in refused.iter().enumerate() {
        let made = sh(
            env,
            &id,
            &format!("mkdir -p /tmp && mknod /tmp/dev{i} {node} && echo made"),
        )
        .await;
        assert_eq!(made.trim(), "made", "mknod {node} ({what}) is allowed");
        let (code, out, err) = try_sh(env, &id, &format!("head -c1 /tmp/dev{i} >/dev/null")).await;
        assert!(
            code != 0 && err.contains("Operation not permitted"),
            "opening {node} ({what}) must be refused by the device rules: \
             exit {code}, stdout {out:?}, stderr {err:?}"
        );
    }
    let out = sh(
        env,
        &id,
        "head -c1 /dev/zero | wc -c; head -c1 /dev/urandom | wc -c; head -c1 /dev/random | wc -c; \
         echo x > /dev/null; echo x > /dev/zero; : < /dev/full; : < /dev/ptmx; echo ok",
    )
    .await;
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["1", "1", "1", "ok"],
        "null, zero, full, random, urandom, ptmx"
    );
    // A container without a terminal has no controlling tty: /dev/tty
    // says ENXIO, not EPERM.
    let (_, _, err) = try_sh(env, &id, ": < /dev/tty").await;
    assert!(!err.contains("Operation not permitted"), "/dev/tty: {err}");
    if let Some(dev) = requested {
        let (code, out, err) = try_sh(env, &id, &format!(": < {dev} && echo opened")).await;
        assert!(
            code == 0 && out.contains("opened"),
            "the requested {dev} opens: exit {code}, stderr {err:?}"
        );
    }

    let mut rt = env.cri.runtime.clone();
    rt.stop_container(berth_cri_api::v1::StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .expect("StopContainer");
    rt.remove_container(berth_cri_api::v1::RemoveContainerRequest { container_id: id })
        .await
        .expect("RemoveContainer");
}
