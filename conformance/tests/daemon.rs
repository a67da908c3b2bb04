//! berthd as a process: config file and flags, the socket, signals.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use berth_conformance::berthd::{Berthd, BerthdOptions, PathsFrom};
use berth_conformance::cri::Cri;
use berth_conformance::leak;
use nix::sys::signal::Signal;

/// After a clean exit: no process and no mount of this berthd left.
fn assert_nothing_left(d: &Berthd) {
    let dirs = [d.dir().to_path_buf()];
    let procs = leak::processes_for(&dirs);
    assert!(procs.is_empty(), "processes left: {procs:?}");
    let mounts = leak::mounts_under(&dirs);
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
}

#[tokio::test]
async fn sigterm_exits_zero() {
    let mut d = Berthd::start(BerthdOptions::default()).await.unwrap();
    d.cri().await.unwrap().version().await.expect("Version");
    d.stop().await.expect("SIGTERM must exit 0");
    assert_nothing_left(&d);
}

#[tokio::test]
async fn sigint_exits_zero() {
    let mut d = Berthd::start(BerthdOptions::default()).await.unwrap();
    d.signal(Signal::SIGINT).unwrap();
    let status = d
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("exit after SIGINT");
    assert!(status.success(), "SIGINT: {status}");
    assert_nothing_left(&d);
}

#[tokio::test]
async fn socket_is_created_with_mode_0660_and_its_directory_if_missing() {
    let d = Berthd::start(BerthdOptions::default()).await.unwrap();
    let md = std::fs::metadata(d.socket()).unwrap();
    assert!(md.file_type().is_socket());
    assert_eq!(md.permissions().mode() & 0o777, 0o660, "socket mode");
    assert!(d.root().is_dir(), "root not created");
    assert!(d.state().is_dir(), "state dir not created");
}

#[tokio::test]
async fn config_file_alone_sets_root_state_and_socket() {
    let d = Berthd::start(BerthdOptions::default().paths_from(PathsFrom::ConfigOnly))
        .await
        .unwrap();
    assert!(d.socket().exists());
    d.cri().await.unwrap().version().await.expect("Version");
    assert!(d.root().is_dir());
}

#[tokio::test]
async fn flags_alone_without_a_config_file_start_berthd() {
    let d = Berthd::start(BerthdOptions::default().paths_from(PathsFrom::FlagsOnly))
        .await
        .unwrap();
    d.cri().await.unwrap().version().await.expect("Version");
    assert!(d.root().is_dir());
}

#[tokio::test]
async fn unknown_top_level_config_key_is_an_error_naming_the_key() {
    let opts = BerthdOptions::default().extra_top_level("bogus_top_key = 1");
    let (status, log) = Berthd::run_to_exit(opts, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(
        !status.success(),
        "berthd accepted an unknown key; log:\n{log}"
    );
    assert!(
        log.contains("bogus_top_key"),
        "error must name the key; log:\n{log}"
    );
}

#[tokio::test]
async fn unknown_registry_config_key_is_an_error_naming_the_key() {
    let opts = BerthdOptions::default().extra_registry("mirrorz = 1");
    let (status, log) = Berthd::run_to_exit(opts, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(
        !status.success(),
        "berthd accepted an unknown key; log:\n{log}"
    );
    assert!(
        log.contains("mirrorz"),
        "error must name the key; log:\n{log}"
    );
}

#[tokio::test]
async fn bad_duration_in_config_is_an_error() {
    let opts = BerthdOptions::default().stall_timeout("soon");
    let (status, log) = Berthd::run_to_exit(opts, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(
        !status.success(),
        "berthd accepted pull_stall_timeout = \"soon\"; log:\n{log}"
    );
    assert!(
        log.contains("pull_stall_timeout") || log.contains("soon"),
        "error must say what is wrong; log:\n{log}"
    );
}

#[tokio::test]
async fn a_second_berthd_on_a_live_socket_is_refused() {
    let first = Berthd::start(BerthdOptions::default()).await.unwrap();
    let opts = BerthdOptions::default().socket(&first.socket());
    let (status, log) = Berthd::run_to_exit(opts, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(
        !status.success(),
        "a second berthd took a live socket; log:\n{log}"
    );
    assert!(!log.trim().is_empty(), "refusal without a message");
    // the first one is unharmed
    let cri = Cri::connect(&first.socket()).await.unwrap();
    cri.version()
        .await
        .expect("the first berthd must still answer");
}

#[tokio::test]
async fn a_stale_socket_left_by_sigkill_is_replaced() {
    let mut d = Berthd::start(BerthdOptions::default()).await.unwrap();
    d.kill();
    assert!(
        d.socket().exists(),
        "SIGKILL leaves the socket file (stale)"
    );
    d.restart().await.expect("restart over a stale socket");
    d.cri()
        .await
        .unwrap()
        .version()
        .await
        .expect("Version after restart");
    d.stop().await.expect("exit 0");
    assert_nothing_left(&d);
}

#[tokio::test]
async fn json_log_format_writes_json_lines() {
    let mut d = Berthd::start(
        BerthdOptions::default()
            .log_format("json")
            .log_level("debug"),
    )
    .await
    .unwrap();
    d.cri().await.unwrap().version().await.unwrap();
    d.stop().await.unwrap();
    let log = d.log();
    let json_lines = log
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
        .count();
    assert!(json_lines > 0, "no JSON line in the log:\n{log}");
}

#[tokio::test]
async fn clients_survive_a_berthd_restart() {
    let mut d = Berthd::start(BerthdOptions::default()).await.unwrap();
    let cri = d.cri().await.unwrap();
    cri.version().await.unwrap();
    d.stop().await.unwrap();
    d.restart().await.unwrap();
    // tonic reconnects through the same connector; a call may need a retry
    let mut ok = false;
    for _ in 0..20 {
        if cri.version().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the same client did not reach the restarted berthd");
}

/// berthd and, if `with_shim`, berth-shim copied into a directory of the
/// test's (berthd looks for its shim next to itself).
fn berthd_copy(with_shim: bool) -> (tempfile::TempDir, std::path::PathBuf) {
    let bin = berth_conformance::berthd::berthd_binary().expect("berthd binary");
    let dir = tempfile::Builder::new()
        .prefix("berth-bin-")
        .tempdir()
        .unwrap();
    let copy = dir.path().join("berthd");
    std::fs::copy(&bin, &copy).expect("copying berthd");
    if with_shim {
        std::fs::copy(
            bin.with_file_name("berth-shim"),
            dir.path().join("berth-shim"),
        )
        .expect("copying berth-shim (built next to berthd)");
    }
    (dir, copy)
}

#[tokio::test]
async fn berthd_without_its_shim_refuses_to_start_and_says_how_to_build_it() {
    let (_bins, berthd) = berthd_copy(false);
    let opts = BerthdOptions::default().binary(&berthd);
    let (status, log) = Berthd::run_to_exit(opts, Duration::from_secs(20))
        .await
        .expect("berthd must exit by itself without its shim");
    assert!(!status.success(), "exit status {status}; log:\n{log}");
    assert!(
        log.contains("berth-shim not found")
            && log.contains("cargo build --release --bin berthd --bin berth-shim"),
        "the log must name the missing shim and the command that builds it:\n{log}"
    );
}

#[tokio::test]
async fn runtime_ready_is_false_while_the_shim_is_not_executable() {
    let (bins, berthd) = berthd_copy(true);
    let shim = bins.path().join("berth-shim");
    let mut d = Berthd::start(BerthdOptions::default().binary(&berthd))
        .await
        .unwrap();
    let cri = d.cri().await.unwrap();
    let runtime_ready = |s: &berth_cri_api::v1::StatusResponse| {
        s.status
            .as_ref()
            .and_then(|st| st.conditions.iter().find(|c| c.r#type == "RuntimeReady"))
            .cloned()
            .expect("a RuntimeReady condition")
    };
    let c = runtime_ready(&cri.status(false).await.expect("Status"));
    assert!(c.status, "RuntimeReady with its shim in place: {c:?}");

    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = runtime_ready(&cri.status(false).await.expect("Status"));
    assert!(!c.status, "RuntimeReady with a shim that cannot run: {c:?}");
    assert_eq!(c.reason, "BerthShimMissing");
    assert!(c.message.contains("not executable"), "{c:?}");

    std::fs::remove_file(&shim).unwrap();
    let c = runtime_ready(&cri.status(false).await.expect("Status"));
    assert!(!c.status && c.message.contains("not found"), "{c:?}");

    std::fs::copy(
        berth_conformance::berthd::berthd_binary()
            .unwrap()
            .with_file_name("berth-shim"),
        &shim,
    )
    .unwrap();
    let c = runtime_ready(&cri.status(false).await.expect("Status"));
    assert!(c.status, "RuntimeReady once the shim is back: {c:?}");
    d.stop().await.expect("SIGTERM must exit 0");
    assert_nothing_left(&d);
}

#[tokio::test]
async fn runtime_ready_is_false_once_the_shims_read_only_bind_is_gone() {
    let mut d = Berthd::start(BerthdOptions::default()).await.unwrap();
    let cri = d.cri().await.unwrap();
    let bind = d.state().join("berth-shim");
    nix::mount::umount2(&bind, nix::mount::MntFlags::MNT_DETACH).expect("unmounting the bind");
    let st = cri.status(false).await.expect("Status");
    let c = st
        .status
        .and_then(|s| {
            s.conditions
                .into_iter()
                .find(|c| c.r#type == "RuntimeReady")
        })
        .expect("RuntimeReady");
    assert!(!c.status && c.message.contains("restart berthd"), "{c:?}");
    d.stop().await.expect("SIGTERM must exit 0");
    assert_nothing_left(&d);
}

/// deploy/berthd.service is Type=notify: berthd sends READY=1 to
/// $NOTIFY_SOCKET once its CRI socket serves, STOPPING=1 on SIGTERM.
#[tokio::test]
async fn berthd_tells_systemd_it_is_ready_once_the_socket_serves_and_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut d =
        Berthd::start(BerthdOptions::default().env("NOTIFY_SOCKET", &path.display().to_string()))
            .await
            .unwrap();
    let sock = std::sync::Arc::new(sock);
    let recv = |sock: std::sync::Arc<std::os::unix::net::UnixDatagram>| async move {
        tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 64];
            sock.recv(&mut buf)
                .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
        })
        .await
        .unwrap()
        .expect("a datagram from berthd")
    };
    assert_eq!(recv(sock.clone()).await, "READY=1\n");
    d.cri().await.unwrap().version().await.expect("it serves");
    d.stop().await.expect("SIGTERM must exit 0");
    assert_eq!(recv(sock).await, "STOPPING=1\n", "and says it stops");
    assert_nothing_left(&d);
}
