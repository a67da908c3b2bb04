//! Pod and container helpers the scenarios share: the CRI calls kubelet
//! makes, in its order, with the fields it sends. A scenario builds its own
//! pod config (that is what it tests) and hands it to [`run_pod`].

use k8s_cri::v1::{
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
pub async fn run_pod(env: &Env, mut config: PodSandboxConfig, image: &str) -> Pod {
    let logs = tempfile::tempdir().expect("log dir");
    config.log_directory = logs.path().display().to_string();
    let mut rt = env.cri.runtime.clone();
    let id = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
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
        .resources = Some(k8s_cri::v1::LinuxContainerResources {
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
pub async fn list_containers(env: &Env, pod_id: &str) -> Vec<k8s_cri::v1::Container> {
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
pub async fn status(env: &Env, id: &str) -> Result<k8s_cri::v1::ContainerStatus, tonic::Status> {
    let mut rt = env.cri.runtime.clone();
    Ok(rt
        .container_status(k8s_cri::v1::ContainerStatusRequest {
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
) -> k8s_cri::v1::ContainerStatus {
    let t = std::time::Instant::now();
    loop {
        let st = status(env, id).await.expect("ContainerStatus");
        if st.state == k8s_cri::v1::ContainerState::ContainerExited as i32 {
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
        .container_status(k8s_cri::v1::ContainerStatusRequest {
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
