//! Seccomp (CRI `SecurityProfile`) as containerd applies it: RuntimeDefault
//! filters the container process and its execs with containerd's default
//! profile, Unconfined (or nothing asked) and privileged containers run
//! without a filter, a Localhost profile comes from a JSON file on the
//! node, and one that is missing fails CreateContainer with InvalidArgument
//! and leaves nothing. A pod's profile goes on its pause process. Each
//! scenario drives a real berthd and ends with `env.finish()`.

mod common;

use std::path::Path;

use berth_conformance::Env;
use berth_conformance::cri::sandbox_config;
use berth_conformance::pods::*;
use berth_cri_api::v1::{
    ContainerConfig, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode,
    NamespaceOption, SecurityProfile, security_profile::ProfileType,
};
use common::*;
use tonic::Code;

/// A pod; `pod_seccomp` is its own profile (its pause process has it when
/// the pod shares a PID namespace, `shared_pid`).
async fn pod_with(
    env: &Env,
    name: &str,
    image: &str,
    privileged: bool,
    shared_pid: bool,
    pod_seccomp: Option<SecurityProfile>,
) -> Pod {
    let mut config = sandbox_config(name);
    let pid = if shared_pid {
        NamespaceMode::Pod
    } else {
        NamespaceMode::Container
    };
    config.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                pid: pid as i32,
                ..Default::default()
            }),
            privileged,
            seccomp: pod_seccomp,
            ..Default::default()
        }),
        ..Default::default()
    });
    run_pod(env, config, image).await
}

fn profile(t: ProfileType, localhost_ref: &str) -> SecurityProfile {
    SecurityProfile {
        profile_type: t as i32,
        localhost_ref: localhost_ref.into(),
    }
}

fn container_with(
    p: &Pod,
    name: &str,
    cmd: &[&str],
    seccomp: Option<SecurityProfile>,
) -> ContainerConfig {
    let mut c = container(p, name, cmd);
    security(&mut c).seccomp = seccomp;
    c
}

/// The `Seccomp:` mode of process `pid` in the container (0 none, 2 filter).
async fn seccomp_mode(env: &Env, id: &str, pid: &str) -> String {
    sh(env, id, &format!("grep '^Seccomp:' /proc/{pid}/status"))
        .await
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

/// The seccomp modes of the shims (not of the processes they fork, which
/// are called berth-shim too until they exec): a shim never filters itself.
fn shim_modes() -> Vec<String> {
    let comm = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if comm(&pid) != "berth-shim" {
            continue;
        }
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .unwrap_or_default()
            .trim()
            .to_string();
        if comm(&ppid) == "berth-shim" {
            continue;
        }
        if let Some(l) = status.lines().find(|l| l.starts_with("Seccomp:")) {
            out.push(l.split_whitespace().nth(1).unwrap_or_default().to_string());
        }
    }
    out
}

// ---------------------------------------------------------------- scenarios

#[tokio::test]
async fn runtime_default_filters_the_container_and_its_execs_and_unconfined_does_not() {
    let env = Env::start().await;
    let image = push_busybox(&env, "seccomp/busybox:1").await;
    let p = pod_with(&env, "seccomp-default", &image, false, false, None).await;

    let c = container_with(
        &p,
        "default",
        &["sh", "-c", "unshare -U true; echo unshare=$?; sleep 1000"],
        Some(profile(ProfileType::RuntimeDefault, "")),
    );
    let def = run(&env, &p, c).await;
    assert_eq!(
        seccomp_mode(&env, &def, "1").await,
        "2",
        "the container process"
    );
    // The profile shows in the verbose status's runtime spec, as containerd's.
    let v = verbose_info(&env, &def).await;
    let seccomp = &v["runtimeSpec"]["linux"]["seccomp"];
    assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ERRNO", "{seccomp}");
    assert_eq!(seccomp_mode(&env, &def, "self").await, "2", "an exec");
    // Denied by the profile (not by capabilities: a user namespace needs
    // none): unshare, and mount on top of the missing CAP_SYS_ADMIN.
    let (code, _, err) = try_sh(&env, &def, "unshare -U true").await;
    assert_ne!(code, 0, "unshare -U under RuntimeDefault");
    assert!(err.contains("Operation not permitted"), "EPERM: {err}");
    let (code, _, _) = try_sh(&env, &def, "mount -t tmpfs none /mnt").await;
    assert_ne!(code, 0);
    // What the profile allows still works: files, processes, personality.
    sh(
        &env,
        &def,
        "mkdir /tmp/d && ls /tmp/d && linux32 true && ps",
    )
    .await;
    assert!(
        shim_modes().iter().all(|m| m == "0"),
        "the shims run unfiltered: {:?}",
        shim_modes()
    );

    // Unconfined, and nothing asked (what kubelet sends as Unconfined).
    for (name, seccomp) in [
        ("unconfined", Some(profile(ProfileType::Unconfined, ""))),
        ("unset", None),
    ] {
        let id = run(
            &env,
            &p,
            container_with(&p, name, &["sleep", "1000"], seccomp),
        )
        .await;
        assert_eq!(seccomp_mode(&env, &id, "1").await, "0", "{name}");
        assert_eq!(seccomp_mode(&env, &id, "self").await, "0", "{name}");
        // With no filter a user namespace can be made (no capability needed).
        sh(&env, &id, "unshare -U true").await;
    }
    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn privileged_containers_and_the_pods_pause_process() {
    let env = Env::start().await;
    let image = push_busybox(&env, "seccomp/busybox:1").await;
    // A privileged container asking for RuntimeDefault gets no filter (nor
    // does a privileged pod's pause process), as with containerd.
    let p = pod_with(
        &env,
        "seccomp-priv",
        &image,
        true,
        true,
        Some(profile(ProfileType::RuntimeDefault, "")),
    )
    .await;
    let mut c = container_with(
        &p,
        "priv",
        &["sleep", "1000"],
        Some(profile(ProfileType::RuntimeDefault, "")),
    );
    c.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .privileged = true;
    let id = run(&env, &p, c).await;
    assert_eq!(seccomp_mode(&env, &id, "self").await, "0", "privileged");
    assert_eq!(
        seccomp_mode(&env, &id, "1").await,
        "0",
        "privileged pod's pause"
    );
    remove_pod(&env, p).await;

    // A pod sharing its PID namespace: PID 1 is the pause process, which
    // gets the pod's profile; a container that asks for none, none.
    let p = pod_with(
        &env,
        "seccomp-pause",
        &image,
        false,
        true,
        Some(profile(ProfileType::RuntimeDefault, "")),
    )
    .await;
    let id = run(
        &env,
        &p,
        container_with(&p, "plain", &["sleep", "1000"], None),
    )
    .await;
    assert_eq!(seccomp_mode(&env, &id, "1").await, "2", "the pause process");
    assert_eq!(seccomp_mode(&env, &id, "self").await, "0", "the container");
    assert!(
        sh(&env, &id, "ps").await.contains("sleep 1000"),
        "one PID namespace"
    );
    remove_pod(&env, p).await;
    env.finish().await;
}

const DENY_MKDIR: &str = r#"{
    "defaultAction": "SCMP_ACT_ALLOW",
    "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}
    ],
    "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
    ]
}"#;

#[tokio::test]
async fn a_localhost_profile_is_read_from_the_node_and_a_missing_one_is_invalid() {
    let env = Env::start().await;
    let image = push_busybox(&env, "seccomp/busybox:1").await;
    let profiles = tempfile::tempdir().expect("profile dir");
    let deny_mkdir = profiles.path().join("deny-mkdir.json");
    std::fs::write(&deny_mkdir, DENY_MKDIR).unwrap();
    let p = pod_with(&env, "seccomp-local", &image, false, false, None).await;

    let c = container_with(
        &p,
        "nomkdir",
        &["sh", "-c", "mkdir /from-init; echo mkdir=$?; sleep 1000"],
        Some(profile(
            ProfileType::Localhost,
            &deny_mkdir.display().to_string(),
        )),
    );
    let id = run(&env, &p, c).await;
    assert_eq!(seccomp_mode(&env, &id, "1").await, "2");
    let (code, _, err) = try_sh(&env, &id, "mkdir /x").await;
    assert_ne!(code, 0, "mkdir under a profile that denies it");
    assert!(err.contains("Operation not permitted"), "EPERM: {err}");
    assert!(sh(&env, &id, "ls /").await.contains("etc"), "ls works");
    sh(&env, &id, "touch /tmp/f && rm /tmp/f").await;
    // The container process got it too (its own output, in the log).
    let log = Path::new(&p.config.log_directory).join("nomkdir.log");
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("mkdir=") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(text.contains("mkdir=1"), "the init's mkdir failed: {text}");

    // A profile that is not there: InvalidArgument naming it, nothing left.
    let before = list_containers(&env, &p.id).await.len();
    let missing = profiles.path().join("no-such-profile.json");
    let c = container_with(
        &p,
        "missing",
        &["sleep", "1000"],
        Some(profile(
            ProfileType::Localhost,
            &missing.display().to_string(),
        )),
    );
    let s = expect_code(
        create(&env, &p, c).await,
        &[Code::InvalidArgument],
        "CreateContainer with a missing Localhost profile",
    );
    assert!(
        s.message().contains("no-such-profile.json"),
        "the error names the file: {}",
        s.message()
    );
    // A malformed one likewise.
    let bad = profiles.path().join("bad.json");
    std::fs::write(&bad, "{\"defaultAction\": \"SCMP_ACT_NOPE\"}").unwrap();
    let c = container_with(
        &p,
        "bad",
        &["sleep", "1000"],
        Some(profile(ProfileType::Localhost, &bad.display().to_string())),
    );
    let s = expect_code(
        create(&env, &p, c).await,
        &[Code::InvalidArgument],
        "CreateContainer with a malformed Localhost profile",
    );
    assert!(s.message().contains("bad.json"), "{}", s.message());
    assert_eq!(list_containers(&env, &p.id).await.len(), before);

    remove_pod(&env, p).await;
    env.finish().await;
}
