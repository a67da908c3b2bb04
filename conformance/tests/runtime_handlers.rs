//! RuntimeClass handlers (issue 16): `[runtime.handlers.runc]` puts a
//! pod's containers under Debian's runc, through its command line, with
//! berth-shim still their monitor. A pod on handler "runc" runs, logs in
//! the CRI format, execs (ExecSync and a streaming exec with a tty),
//! takes new resources (`runc update`), reports stats, stops with its
//! exit code, survives a berthd SIGKILL, and leaves nothing behind
//! (runc's own state included). Unknown handlers and what a handler does
//! not claim are refused, changing nothing.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_conformance::Env;
use berth_conformance::berthd::BerthdOptions;
use berth_conformance::cri::sandbox_config;
use berth_conformance::pods::*;
use berth_conformance::registry::Registry;
use berth_conformance::streaming::{SpdyExec, spdy_remotecommand};
use berth_cri_api::v1::{
    ContainerStatsRequest, ExecRequest, ImageSpec, LinuxContainerResources, Mount,
    PullImageRequest, RunPodSandboxRequest, SecurityProfile, StopContainerRequest,
    UpdateContainerResourcesRequest, security_profile::ProfileType,
};
use common::*;
use tonic::Code;

const RUNC: &str = "/usr/sbin/runc";
const MIB: i64 = 1 << 20;

fn runc() -> &'static str {
    assert!(
        Path::new(RUNC).is_file(),
        "these scenarios need Debian's runc at {RUNC}: apt-get install runc (.ci/run does)"
    );
    RUNC
}

async fn start_env() -> Env {
    let registry = Registry::start().await.expect("starting docker-registry");
    Env::start_with(
        registry,
        BerthdOptions::default()
            .handler("runc", runc())
            .handler("gone", "/nonexistent/berth-test/runc"),
    )
    .await
}

/// runc's root for handler "runc" (berth's default: under its state dir).
fn runc_root(env: &Env) -> PathBuf {
    env.berthd.state().join("runtimes").join("runc")
}

/// `runc state ID`'s status, or None if runc knows no such container.
fn runc_status(env: &Env, id: &str) -> Option<String> {
    let out = std::process::Command::new(RUNC)
        .arg("--root")
        .arg(runc_root(env))
        .args(["state", id])
        .output()
        .expect("runc state");
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("runc state JSON");
    v["status"].as_str().map(str::to_string)
}

/// The memory limit of a process's cgroup (v1 or v2), as the node sees it.
fn memory_limit(pid: i32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrls, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        if ctrls.split(',').any(|c| c == "memory") {
            let file = Path::new("/sys/fs/cgroup/memory")
                .join(path.trim_start_matches('/'))
                .join("memory.limit_in_bytes");
            return std::fs::read_to_string(file).unwrap().trim().to_string();
        }
    }
    let path = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    std::fs::read_to_string(
        Path::new("/sys/fs/cgroup")
            .join(path.trim_start_matches('/'))
            .join("memory.max"),
    )
    .unwrap()
    .trim()
    .to_string()
}

async fn log_of(p: &Pod, name: &str, want: &str) -> String {
    let path = p.logs.path().join(format!("{name}.log"));
    for _ in 0..200 {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.contains(want) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "{} never showed {want:?}: {:?}",
        path.display(),
        std::fs::read_to_string(&path)
    );
}

#[tokio::test]
async fn a_pod_on_the_runc_handler_runs_logs_execs_resizes_and_leaves_nothing() {
    let env = start_env().await;
    // Status names every handler; berth claims neither feature on runc.
    let st = env.cri.status(false).await.expect("Status");
    let names: Vec<&str> = st
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(names, ["", "gone", "runc"], "{st:?}");
    let runc_h = &st.runtime_handlers[2];
    let f = runc_h.features.as_ref().expect("features");
    assert!(!f.user_namespaces && !f.recursive_read_only_mounts);

    let image = push_busybox(&env, "handlers/busybox:1").await;
    let p = run_pod_on(&env, sandbox_config("on-runc"), &image, "runc").await;
    let mut c = container(
        &p,
        "app",
        &[
            "sh",
            "-c",
            "echo hello from runc; echo oops >&2; exec sleep 1000",
        ],
    );
    c.linux.get_or_insert_with(Default::default).resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 64 * MIB,
        ..Default::default()
    });
    // berth's RuntimeDefault profile, handed to runc in the spec.
    security(&mut c).seccomp = Some(SecurityProfile {
        profile_type: ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    });
    let id = create(&env, &p, c).await.expect("CreateContainer on runc");
    // CreateContainer answers once the shim has the bundle; the shim's
    // `runc create` goes on after it, as containerd's task is made later.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while runc_status(&env, &id).as_deref() != Some("created") {
        assert!(
            std::time::Instant::now() < deadline,
            "runc made the container, stopped before its exec: {:?}",
            runc_status(&env, &id)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start(&env, &id).await.expect("StartContainer on runc");
    assert_eq!(runc_status(&env, &id).as_deref(), Some("running"));

    // Logs in the CRI format, both streams.
    let log = log_of(&p, "app", "oops").await;
    assert!(
        log.lines()
            .any(|l| l.ends_with(" stdout F hello from runc")),
        "{log}"
    );
    assert!(log.lines().any(|l| l.ends_with(" stderr F oops")), "{log}");

    // ExecSync: output, exit codes, the container's own pid namespace.
    assert_eq!(sh(&env, &id, "echo exec ok").await, "exec ok\n");
    assert_eq!(
        sh(&env, &id, "grep '^Seccomp:' /proc/self/status").await,
        "Seccomp:\t2\n",
        "runc filtered the exec with the container's profile"
    );
    let (code, _, err) = try_sh(&env, &id, "echo bad >&2; exit 3").await;
    assert_eq!((code, err.as_str()), (3, "bad\n"));
    // The pod's shared PID namespace, joined by runc from its path: PID 1
    // is berth's pause process.
    let init = sh(&env, &id, "cat /proc/1/cmdline | tr '\\0' ' '").await;
    assert!(init.contains("/pause "), "PID 1 is {init:?}");

    // A streaming exec with a tty (runc sends the pty on its console socket).
    let mut rt = env.cri.runtime.clone();
    let url = rt
        .exec(ExecRequest {
            container_id: id.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "stty size; [ -t 1 ] && echo tty".into(),
            ],
            tty: true,
            stdin: true,
            stdout: true,
            stderr: false,
        })
        .await
        .expect("Exec")
        .into_inner()
        .url;
    let out = spdy_remotecommand(
        &url,
        &SpdyExec {
            protocols: SpdyExec::client_go(),
            tty: true,
            stdout: true,
            stderr: false,
            stdin: Some(Vec::new()),
            resize: vec![(100, 30)],
            timeout: Some(Duration::from_secs(20)),
            flow_control: false,
        },
    )
    .await
    .expect("streaming exec");
    let text = out.stdout_text();
    assert!(text.contains("tty"), "{text:?}");
    assert_eq!(out.exit_code().unwrap(), 0);

    // New resources through runc update.
    let pid = container_pid(&env, &id).await;
    assert_eq!(memory_limit(pid), (64 * MIB).to_string());
    rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(LinuxContainerResources {
            memory_limit_in_bytes: 96 * MIB,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("UpdateContainerResources on runc");
    assert_eq!(memory_limit(pid), (96 * MIB).to_string());

    // Stats from the cgroup runc made.
    let stats = rt
        .container_stats(ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .expect("stats");
    let mem = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value);
    assert!(mem.is_some_and(|m| m > 0), "{mem:?}");

    // Stop: SIGTERM ends `sleep` (not PID 1 here: the pause is).
    rt.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 1,
    })
    .await
    .expect("StopContainer");
    let s = status(&env, &id).await.expect("ContainerStatus");
    assert_eq!((s.exit_code, s.reason.as_str()), (143, "Error"), "{s:?}");
    assert_eq!(
        runc_status(&env, &id),
        None,
        "the shim deleted runc's record"
    );
    remove_pod(&env, p).await;
    let left: Vec<_> = std::fs::read_dir(runc_root(&env))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "runc's root keeps {left:?}");
    env.finish().await;
}

#[tokio::test]
async fn a_runc_container_outlives_a_berthd_sigkill_and_a_tty_container_logs() {
    let mut env = start_env().await;
    let image = push_busybox(&env, "handlers/busybox:2").await;
    // Each container its own PID namespace, made by runc.
    let mut cfg = sandbox_config("runc-crash");
    cfg.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options
        .get_or_insert_with(Default::default)
        .pid = berth_cri_api::v1::NamespaceMode::Container as i32;
    let p = run_pod_on(&env, cfg, &image, "runc").await;
    let id = run(&env, &p, container(&p, "steady", &["sleep", "1000"])).await;
    assert_eq!(
        sh(&env, &id, "cat /proc/1/cmdline | tr '\\0' ' '").await,
        "sleep 1000 ",
        "PID 1 is the container's process"
    );
    let mut c = container(&p, "term", &["sh", "-c", "tty; exec sleep 1000"]);
    c.tty = true;
    let tty = run(&env, &p, c).await;
    let log = log_of(&p, "term", "/dev/pts/").await;
    assert!(log.contains(" stdout F /dev/pts/"), "{log}");
    let pid = container_pid(&env, &id).await;

    env.berthd.kill();
    env.berthd.restart().await.expect("restart berthd");
    env.cri = env.berthd.cri().await.expect("reconnect");
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the container ran on without berthd"
    );
    let s = status(&env, &id).await.expect("ContainerStatus");
    assert_eq!(s.state, 1, "RUNNING after the restart: {s:?}");
    assert_eq!(sh(&env, &id, "echo still here").await, "still here\n");
    assert_eq!(runc_status(&env, &tty).as_deref(), Some("running"));
    remove_pod(&env, p).await;
    assert_eq!(runc_status(&env, &id), None);
    assert_eq!(runc_status(&env, &tty), None);
    env.finish().await;
}

#[tokio::test]
async fn unknown_handlers_and_what_a_handler_does_not_claim_are_refused() {
    let env = start_env().await;
    let image = push_busybox(&env, "handlers/busybox:3").await;
    let before = env.snapshot();
    let mut rt = env.cri.runtime.clone();
    let run_on = |handler: &str, config| RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: handler.into(),
    };
    let e = rt
        .run_pod_sandbox(run_on("kata", sandbox_config("unknown-handler")))
        .await;
    let s = expect_code(e, &[Code::InvalidArgument], "an unknown handler");
    assert!(s.message().contains("\"kata\""), "{}", s.message());
    let e = rt
        .run_pod_sandbox(run_on("gone", sandbox_config("missing-runtime")))
        .await;
    let s = expect_code(
        e,
        &[Code::FailedPrecondition],
        "a handler without its binary",
    );
    assert!(
        s.message().contains("/nonexistent/berth-test/runc"),
        "{}",
        s.message()
    );
    // hostUsers: false on runc.
    let mut cfg = sandbox_config("userns-on-runc");
    cfg.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options
        .get_or_insert_with(Default::default)
        .userns_options = Some(berth_cri_api::v1::UserNamespace {
        mode: berth_cri_api::v1::NamespaceMode::Pod as i32,
        uids: vec![berth_cri_api::v1::IdMapping {
            host_id: 100_000,
            container_id: 0,
            length: 65_536,
        }],
        gids: vec![berth_cri_api::v1::IdMapping {
            host_id: 100_000,
            container_id: 0,
            length: 65_536,
        }],
    });
    let e = rt.run_pod_sandbox(run_on("runc", cfg)).await;
    expect_code(e, &[Code::FailedPrecondition], "a user namespace on runc");
    assert!(env.cri.list_pods().await.is_empty(), "no pod was made");
    env.assert_no_leaks_since(&before).await;

    // PullImage names handlers too.
    let pull = |handler: &str| PullImageRequest {
        image: Some(ImageSpec {
            image: image.clone(),
            runtime_handler: handler.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut images = env.cri.image.clone();
    expect_code(
        images.pull_image(pull("kata")).await,
        &[Code::InvalidArgument],
        "PullImage for an unknown handler",
    );
    images
        .pull_image(pull("runc"))
        .await
        .expect("PullImage for handler runc");

    // A recursive read-only mount on runc.
    let p = run_pod_on(&env, sandbox_config("rro-on-runc"), &image, "runc").await;
    let host = tempfile::tempdir().unwrap();
    let mut c = container(&p, "rro", &["sleep", "10"]);
    c.mounts = vec![Mount {
        container_path: "/data".into(),
        host_path: host.path().display().to_string(),
        readonly: true,
        recursive_read_only: true,
        ..Default::default()
    }];
    expect_code(
        create(&env, &p, c).await,
        &[Code::FailedPrecondition],
        "recursive_read_only on runc",
    );
    assert!(list_containers(&env, &p.id).await.is_empty());
    remove_pod(&env, p).await;
    env.finish().await;
}
