//! CreateContainer answers once berthd's part is done and durable (the
//! rootfs, the cgroup, the bundle, the record) and the shim has the
//! bundle; the shim makes the init (stopped before its exec) after the
//! answer, and StartContainer waits for it, as containerd's
//! StartContainer makes its task. These scenarios check what that changes
//! for a client: what the shim refuses comes from StartContainer and is
//! the container's recorded exit (StartError, 128, the shim's message);
//! a Stop or Remove right after the answer waits for the shim and leaves
//! nothing behind.

mod common;

use std::path::PathBuf;

use berth_conformance::Env;
use berth_conformance::cri::sandbox_config;
use berth_conformance::pods::*;
use berth_cri_api::v1::{
    ContainerState, Mount, RemoveContainerRequest, RemovePodSandboxRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
use common::*;
use tonic::Code;

/// A host file of this test's own, removed on drop.
struct HostFile(PathBuf);

impl Drop for HostFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn what_the_shim_refuses_fails_start_and_is_the_containers_exit() {
    let env = Env::start().await;
    let image = push_busybox(&env, "early/busybox:1").await;
    let p = run_pod(&env, sandbox_config("early-refused"), &image).await;
    // A file bound over a directory of the image: berthd has nothing to
    // check (the image's /etc is in the layers), the kernel refuses the
    // bind in the init's mount namespace.
    let file = HostFile(env.berthd.dir().join(format!("{}-file", marker("early"))));
    std::fs::write(&file.0, "a file").expect("host file");
    let mut c = container(&p, "refused", &["sleep", "1000"]);
    c.mounts = vec![Mount {
        container_path: "/etc".into(),
        host_path: file.0.display().to_string(),
        ..Default::default()
    }];
    let id = create(&env, &p, c)
        .await
        .expect("CreateContainer answers before the shim mounts");
    let s = expect_code(
        start(&env, &id).await,
        &[Code::FailedPrecondition],
        "StartContainer of a container the shim could not make",
    );
    let host = file.0.display().to_string();
    assert!(
        s.message().contains("/etc") && s.message().contains(&host),
        "the error names the bind's source and target: {}",
        s.message()
    );
    let st = status(&env, &id).await.expect("ContainerStatus");
    assert_eq!(st.state, ContainerState::ContainerExited as i32, "{st:?}");
    assert_eq!(st.reason, "StartError", "containerd's reason: {st:?}");
    assert_eq!(st.exit_code, 128, "containerd's exit code: {st:?}");
    assert!(st.message.contains("/etc"), "the shim's message: {st:?}");
    assert!(st.finished_at > 0 && st.started_at == 0, "{st:?}");
    // Asked again, StartContainer says the same.
    let again = expect_code(
        start(&env, &id).await,
        &[Code::FailedPrecondition],
        "a second StartContainer",
    );
    assert!(again.message().contains("/etc"), "{}", again.message());
    // Its rootfs, cgroup and dir stay until RemoveContainer, as an
    // exited container's do.
    let mut rt = env.cri.runtime.clone();
    rt.remove_container(RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("RemoveContainer");
    assert!(list_containers(&env, &p.id).await.is_empty());
    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn a_container_is_created_at_once_and_starts_when_its_shim_is_done() {
    let env = Env::start().await;
    let image = push_busybox(&env, "early/busybox:2").await;
    let p = run_pod(&env, sandbox_config("early-start"), &image).await;
    for n in 0..5 {
        let id = create(
            &env,
            &p,
            container(&p, &format!("c{n}"), &["sleep", "1000"]),
        )
        .await
        .expect("CreateContainer");
        let st = status(&env, &id).await.expect("ContainerStatus");
        assert_eq!(st.state, ContainerState::ContainerCreated as i32, "{st:?}");
        start(&env, &id).await.expect("StartContainer right after");
        assert!(
            container_pid(&env, &id).await > 0,
            "a started container has its pid"
        );
        assert_eq!(sh(&env, &id, "echo up").await.trim(), "up");
    }
    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn stop_and_remove_right_after_create_wait_for_the_shim_and_leave_nothing() {
    // Each shim begins its work 300 ms after it has the bundle: every
    // Stop and Remove below comes while it has not made the init (nor
    // its socket) yet.
    let env = Env::start_pausing_at("shim.start", 300).await;
    let image = push_busybox(&env, "early/busybox:3").await;
    let p = run_pod(&env, sandbox_config("early-remove"), &image).await;
    let mut rt = env.cri.runtime.clone();
    for n in 0..5 {
        let id = create(
            &env,
            &p,
            container(&p, &format!("r{n}"), &["sleep", "1000"]),
        )
        .await
        .expect("CreateContainer");
        if n % 2 == 0 {
            rt.stop_container(StopContainerRequest {
                container_id: id.clone(),
                timeout: 0,
            })
            .await
            .expect("StopContainer right after CreateContainer");
            // Stopped as a made container is: its init killed (not a
            // monitor found missing, reason Unknown).
            let st = status(&env, &id).await.expect("ContainerStatus");
            assert_eq!(st.state, ContainerState::ContainerExited as i32, "{st:?}");
            assert_eq!(
                (st.exit_code, st.reason.as_str()),
                (137, "Error"),
                "SIGKILLed: {st:?}"
            );
        }
        rt.remove_container(RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("RemoveContainer right after CreateContainer");
        expect_code(
            status(&env, &id).await,
            &[Code::NotFound],
            "a removed container",
        );
    }
    assert!(list_containers(&env, &p.id).await.is_empty());
    // The pod's Stop and Remove right after its containers' Creates.
    for n in 0..3 {
        create(
            &env,
            &p,
            container(&p, &format!("p{n}"), &["sleep", "1000"]),
        )
        .await
        .expect("CreateContainer");
    }
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: p.id.clone(),
    })
    .await
    .expect("StopPodSandbox right after CreateContainer");
    for c in list_containers(&env, &p.id).await {
        assert_eq!(c.state, ContainerState::ContainerExited as i32, "{c:?}");
    }
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: p.id.clone(),
    })
    .await
    .expect("RemovePodSandbox");
    assert!(list_containers(&env, &p.id).await.is_empty());
    env.finish().await;
}

/// Found by the fuzzing: a program name of 100 KB that is not there.
/// The init reports it while the shim makes it, on its set-up pipe (not
/// on its stderr, the log's pipe, which nobody reads until the shim's
/// loop runs and which a message that long would fill), bounded.
#[tokio::test]
async fn a_long_missing_program_fails_start_with_a_bounded_message() {
    let env = Env::start().await;
    let image = push_busybox(&env, "early/busybox:4").await;
    let p = run_pod(&env, sandbox_config("early-long"), &image).await;
    let program = format!("/{}", "x".repeat(100_000));
    let id = create(&env, &p, container(&p, "long", &[program.as_str()]))
        .await
        .expect("CreateContainer");
    let s = expect_code(
        start(&env, &id).await,
        &[Code::FailedPrecondition],
        "StartContainer of a program that is not there",
    );
    assert!(
        s.message().contains("exec failed") && s.message().contains("xxxx"),
        "{}",
        &s.message()[..s.message().len().min(300)]
    );
    assert!(
        s.message().len() < 8192,
        "bounded: {} bytes",
        s.message().len()
    );
    let st = status(&env, &id).await.expect("ContainerStatus");
    assert_eq!(st.reason, "StartError", "{}", st.reason);
    remove_pod(&env, p).await;
    env.finish().await;
}

/// StartContainer answers once the init has its start byte (runc's start
/// returns once its init has read the exec fifo): what only the execve
/// itself finds (no format the kernel runs) is the container's exit, 126,
/// with the message in its log, as kubelet shows runc's `exec format
/// error`.
#[tokio::test]
async fn an_execve_that_fails_after_start_is_an_exit_with_the_error_in_the_log() {
    let env = Env::start().await;
    let image = push_busybox(&env, "early/busybox:5").await;
    let p = run_pod(&env, sandbox_config("early-enoexec"), &image).await;
    let junk = HostFile(env.berthd.dir().join(format!("{}-junk", marker("early"))));
    std::fs::write(&junk.0, b"\0\0\0\0 not a program").expect("host file");
    std::fs::set_permissions(&junk.0, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let mut c = container(&p, "enoexec", &["/junk"]);
    c.mounts = vec![Mount {
        container_path: "/junk".into(),
        host_path: junk.0.display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    let id = create(&env, &p, c).await.expect("CreateContainer");
    start(&env, &id)
        .await
        .expect("StartContainer answers before the execve");
    let st = wait_exited(&env, &id, std::time::Duration::from_secs(10)).await;
    assert_eq!(st.exit_code, 126, "{st:?}");
    assert_eq!(st.reason, "Error", "{st:?}");
    let log = std::fs::read_to_string(&st.log_path).expect("the container's log");
    assert!(
        log.lines()
            .any(|l| l.contains(" stderr ") && l.contains("exec failed") && l.contains("/junk")),
        "{log}"
    );
    remove_pod(&env, p).await;
    env.finish().await;
}

/// The shim makes the container's log file after its `ok` (off the
/// create's path, as containerd opens the log at StartContainer): a log
/// path that cannot be a file fails StartContainer, naming the log.
#[tokio::test]
async fn a_log_file_that_cannot_be_made_fails_start() {
    let env = Env::start().await;
    let image = push_busybox(&env, "early/busybox:6").await;
    let p = run_pod(&env, sandbox_config("early-log"), &image).await;
    let c = container(&p, "nolog", &["sleep", "1000"]);
    // The log path is a directory already.
    let log = std::path::Path::new(&p.config.log_directory).join(&c.log_path);
    std::fs::create_dir_all(&log).expect("a directory where the log goes");
    let id = create(&env, &p, c).await.expect("CreateContainer");
    let s = expect_code(
        start(&env, &id).await,
        &[Code::FailedPrecondition],
        "StartContainer with a log path that is a directory",
    );
    assert!(
        s.message().contains("log") && s.message().contains(&log.display().to_string()),
        "the error names the log: {}",
        s.message()
    );
    let st = status(&env, &id).await.expect("ContainerStatus");
    assert_eq!(
        (st.state, st.reason.as_str(), st.exit_code),
        (ContainerState::ContainerExited as i32, "StartError", 128),
        "{st:?}"
    );
    assert!(st.message.contains("log"), "{st:?}");
    let mut rt = env.cri.runtime.clone();
    rt.remove_container(RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("RemoveContainer");
    std::fs::remove_dir(&log).expect("the test's directory");
    remove_pod(&env, p).await;
    env.finish().await;
}
