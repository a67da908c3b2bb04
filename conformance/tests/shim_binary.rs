//! CVE-2019-5736: a shim's children run berth-shim's code inside a
//! container's namespaces until their execve (a created container's init
//! waits there for StartContainer). A process of the container must not
//! be able to reach that binary through /proc/PID/exe and overwrite it.
//! berth does what runc does: the children are non-dumpable until execve,
//! and the binary they run is a read-only bind mount of the installed one.

mod common;

use std::time::Duration;

use berth_conformance::Env;
use berth_conformance::cri::sandbox_config;
use berth_conformance::pods::*;
use berth_cri_api::v1::{LinuxPodSandboxConfig, LinuxSandboxSecurityContext};
use sha2::Digest;

/// Pids (in the pod's PID namespace) of the processes still running
/// berth-shim's code, as a container sees them.
const FIND_SHIM_CODE: &str = "for d in /proc/[0-9]*; do [ \"$(cat $d/comm 2>/dev/null)\" = berth-shim ] && echo ${d#/proc/}; done; true";

/// ETXTBSY is the inode's, not the bind's: while the other scenario runs
/// berth-shim (its shims, berthd's start-up user-namespace probe), an open
/// for writing fails with it before EROFS is looked at. One at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn a_container_cannot_reach_the_shim_binary_of_a_created_container() {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = Env::start().await;
    let image = push_busybox(&env, "cve/busybox:1").await;
    // The CRI default pid mode (POD): the pod's containers see each other.
    let mut config = sandbox_config("cve-5736");
    config.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let p = run_pod(&env, config, &image).await;
    let attacker = run(&env, &p, container(&p, "attacker", &["sleep", "1000"])).await;
    let mut priv_c = container(&p, "privileged", &["sleep", "1000"]);
    security(&mut priv_c).privileged = true;
    let privileged = run(&env, &p, priv_c).await;
    // Created, never started: its init sits in the shim's code.
    let victim = create(&env, &p, container(&p, "victim", &["true"]))
        .await
        .expect("CreateContainer");
    tokio::time::sleep(Duration::from_millis(100)).await;

    let installed = berth_conformance::berthd::berthd_binary()
        .unwrap()
        .with_file_name("berth-shim");
    let hash = || sha2::Sha256::digest(std::fs::read(&installed).unwrap());
    let before = hash();

    // The pause holds no capability (its spec's, though it never execs).
    let caps = sh(
        &env,
        &attacker,
        "grep -E '^Cap(Prm|Eff|Bnd)' /proc/1/status",
    )
    .await;
    assert!(
        caps.lines().all(|l| l.ends_with("0000000000000000")),
        "the pause process's capabilities: {caps}"
    );
    let pids = sh(&env, &attacker, FIND_SHIM_CODE).await;
    let pids: Vec<&str> = pids.split_whitespace().collect();
    // The created init, and the pod's pause process (PID 1).
    assert!(pids.len() >= 2, "processes running shim code: {pids:?}");
    for pid in &pids {
        // Default capabilities (no CAP_SYS_PTRACE): a non-dumpable
        // process's exe link is closed to it.
        let (code, out, err) = try_sh(&env, &attacker, &format!("readlink /proc/{pid}/exe")).await;
        assert_ne!(code, 0, "readlink of pid {pid}'s exe: {out}");
        let (code, _, err2) =
            try_sh(&env, &attacker, &format!("echo pwned >> /proc/{pid}/exe")).await;
        assert_ne!(code, 0, "writing pid {pid}'s exe succeeded");
        assert!(
            err.contains("denied") || err2.contains("denied"),
            "refused for want of permission: {err} / {err2}"
        );
    }
    // PID 1 is the pause: even with CAP_SYS_PTRACE its root is an empty
    // tmpfs (its /proc only), never the node's root filesystem.
    let root = sh(&env, &privileged, "ls -A /proc/1/root").await;
    assert_eq!(
        root.split_whitespace().collect::<Vec<_>>(),
        vec!["proc"],
        "the pause's root"
    );
    let (code, _, _) = try_sh(&env, &privileged, "cat /proc/1/root/etc/hostname").await;
    assert_ne!(code, 0, "the node's files through the pause's root");
    // With every capability the link opens, and names the read-only bind,
    // not the installed binary; writing through it fails.
    for pid in &pids {
        let exe = sh(&env, &privileged, &format!("readlink /proc/{pid}/exe")).await;
        assert_eq!(
            exe.trim(),
            env.berthd.state().join("berth-shim").to_str().unwrap(),
            "the shim runs from its read-only bind"
        );
        let (code, _, err) =
            try_sh(&env, &privileged, &format!("echo pwned >> /proc/{pid}/exe")).await;
        assert_ne!(code, 0, "writing through pid {pid}'s exe succeeded");
        assert!(err.contains("Read-only") || err.contains("busy"), "{err}");
    }
    // On the host the bind is a read-only mount: no writer, with or
    // without a running shim to make the kernel say ETXTBSY.
    assert_read_only_mount(&env.berthd.state().join("berth-shim"));
    assert_eq!(hash(), before, "the installed shim is unchanged");
    let _ = victim;
    remove_pod(&env, p).await;
    env.finish().await;
}

/// `path` is a mount point of a read-only mount (mountinfo's options).
fn assert_read_only_mount(path: &std::path::Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(path.to_str().unwrap()))
        .unwrap_or_else(|| panic!("no mount at {}", path.display()));
    assert!(
        line.split(' ')
            .nth(5)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "{line}"
    );
}

#[tokio::test]
async fn the_shim_bind_refuses_writers_and_goes_with_berthd() {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = Env::start().await;
    let bind = env.berthd.state().join("berth-shim");
    let e = std::fs::OpenOptions::new()
        .append(true)
        .open(&bind)
        .expect_err("the shim's bind must not open for writing");
    // berthd's warm shim runs from the bind (ETXTBSY may come first);
    // the bind itself is a read-only mount either way.
    assert!(
        matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::ETXTBSY)),
        "{e}"
    );
    assert_read_only_mount(&bind);
    // env.finish stops berthd (SIGTERM) and checks no mount is left
    // under its directory: the bind included.
    env.finish().await;
}

/// berthd keeps one shim exec'd and detached ahead (`berth-shim --warm`,
/// named berth-shim-warm while it waits): CreateContainer hands it the
/// container's state dir instead of starting a shim then, and the next
/// one is started after. Stopping berthd ends the waiting one.
#[tokio::test]
async fn berthd_keeps_one_shim_execd_ahead_and_ends_it_when_it_stops() {
    let env = Env::start().await;
    let dirs = [env.berthd.dir().to_path_buf()];
    let warm = || {
        berth_conformance::leak::processes_for(&dirs)
            .into_iter()
            .filter(|p| p.name == "berth-shim-warm")
            .collect::<Vec<_>>()
    };
    let wait_for_one = async |not: Option<i32>| {
        for _ in 0..200 {
            let w = warm();
            if w.len() == 1 && Some(w[0].pid) != not {
                return w[0].clone();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no single new warm shim: {:?}", warm());
    };
    let first = wait_for_one(None).await;
    assert!(first.cmdline.contains("--warm"), "{first:?}");
    // Detached already, as a container's shim is once it runs: the
    // process berthd started forked it and exited, and it leads a session
    // of its own, so that no fork is left for CreateContainer.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", first.pid)).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let (ppid, sid): (u32, u32) = (fields[1].parse().unwrap(), fields[3].parse().unwrap());
    assert_ne!(Some(ppid), env.berthd.pid(), "not berthd's child any more");
    assert_eq!(sid as i32, first.pid, "a session of its own: {stat}");

    let image = push_busybox(&env, "shim/warm:1").await;
    let p = run_pod(&env, sandbox_config("warm"), &image).await;
    let id = run(&env, &p, container(&p, "c", &["sleep", "1000"])).await;
    assert_eq!(sh(&env, &id, "echo ok").await, "ok\n");
    // Its monitor's command line names its state dir, as a cold one's.
    let dir = env.berthd.state().join("containers").join(&id);
    let monitor = std::fs::read_to_string(dir.join("shim.pid")).unwrap();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", monitor.trim())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert_eq!(
        cmdline.trim(),
        format!(
            "{} {}",
            env.berthd.state().join("berth-shim").display(),
            dir.display()
        ),
        "the shim's command line names its container"
    );
    let second = wait_for_one(Some(first.pid)).await;
    assert!(
        !std::path::Path::new(&format!("/proc/{}", first.pid)).exists()
            || std::fs::read_to_string(format!("/proc/{}/comm", first.pid))
                .is_ok_and(|c| c.trim() != "berth-shim-warm"),
        "the first warm shim became the container's"
    );
    let c2 = run(&env, &p, container(&p, "c2", &["sleep", "1000"])).await;
    assert_eq!(sh(&env, &c2, "echo ok").await, "ok\n");
    wait_for_one(Some(second.pid)).await;
    remove_pod(&env, p).await;
    // finish stops berthd and fails on any process of its left, a warm
    // shim included.
    env.finish().await;
}
