//! More container scenarios of issue 4: mount propagation (private,
//! host-to-container, bidirectional), devices, pid TARGET, image VOLUMEs,
//! a read-only rootfs and a command that does not exist. Each scenario
//! drives a real berthd through the socket, removes what it made (pods,
//! its own host mounts and dirs) and ends with `env.finish()`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_conformance::Env;
use berth_conformance::cri::sandbox_config;
use berth_conformance::images::{Format, ImageBuilder};
use berth_conformance::pods::*;
use berth_cri_api::v1::{
    Device, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, Mount, MountPropagation,
    NamespaceMode, NamespaceOption, RemoveContainerRequest,
};
use common::*;
use nix::mount::{MntFlags, MsFlags};
use tonic::Code;

/// kubelet's usual pod: containers get their own PID namespaces.
async fn pod_with_image(env: &Env, name: &str, image: &str) -> Pod {
    pod_with(env, name, image, false).await
}

/// A pod (privileged as asked: its containers may be) running `image`.
async fn pod_with(env: &Env, name: &str, image: &str, privileged: bool) -> Pod {
    let mut config = sandbox_config(name);
    config.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                pid: NamespaceMode::Container as i32,
                ..Default::default()
            }),
            privileged,
            ..Default::default()
        }),
        ..Default::default()
    });
    run_pod(env, config, image).await
}

async fn pod(env: &Env, name: &str) -> Pod {
    let r = push_busybox(env, "more/busybox:1").await;
    pod_with_image(env, name, &r).await
}

fn bind(container_path: &str, host: &Path, propagation: MountPropagation) -> Mount {
    Mount {
        container_path: container_path.into(),
        host_path: host.display().to_string(),
        propagation: propagation as i32,
        ..Default::default()
    }
}

/// Mount points of the host (this process's namespace).
fn host_mount_points() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .collect()
}

/// Poll an async condition every 50 ms; panic after `within`.
macro_rules! poll_until {
    ($what:expr, $within:expr, $cond:expr) => {{
        let t = Instant::now();
        loop {
            if $cond {
                break;
            }
            assert!(t.elapsed() < $within, "{}: not within {:?}", $what, $within);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }};
}

/// A host directory that is its own bind mount with shared propagation
/// (what a kubelet volume dir on a shared mount looks like). Mounts this
/// test makes under it are listed in `submounts`; Drop unmounts them all,
/// innermost first, then the directory itself, and removes it.
struct SharedDir {
    dir: tempfile::TempDir,
    submounts: Vec<PathBuf>,
}

impl SharedDir {
    fn new() -> SharedDir {
        SharedDir::with(MsFlags::MS_SHARED)
    }

    /// Its own bind mount, private (`MS_PRIVATE`) or shared.
    fn with(propagation: MsFlags) -> SharedDir {
        let dir = tempfile::tempdir().expect("temp dir");
        nix::mount::mount(
            Some(dir.path()),
            dir.path(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind mount of the test dir on itself");
        let d = SharedDir {
            dir,
            submounts: Vec::new(),
        };
        // a fresh peer group of its own, then shared
        for f in [MsFlags::MS_PRIVATE, propagation] {
            nix::mount::mount(None::<&str>, d.path(), None::<&str>, f, None::<&str>)
                .expect("mount --make-private/--make-shared");
        }
        d
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A tmpfs on `sub` (made) below the shared dir.
    fn mount_tmpfs(&mut self, sub: &str) -> PathBuf {
        let p = self.path().join(sub);
        std::fs::create_dir_all(&p).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &p,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=1m"),
        )
        .expect("tmpfs mount");
        self.submounts.push(p.clone());
        p
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        // Every mount at or below the dir, deepest first (a mount made in a
        // container with bidirectional propagation included).
        let root = self.path().to_path_buf();
        for _ in 0..8 {
            let mut here: Vec<String> = host_mount_points()
                .into_iter()
                .filter(|m| Path::new(m).starts_with(&root))
                .collect();
            if here.is_empty() {
                break;
            }
            here.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in here {
                let _ = nix::mount::umount2(Path::new(&m), MntFlags::MNT_DETACH);
            }
        }
        self.submounts.clear();
    }
}

// ---------------------------------------------------------------- scenarios

#[tokio::test]
async fn host_to_container_propagation_shows_new_host_mounts_and_private_does_not() {
    let env = Env::start().await;
    let mut src = SharedDir::new();
    let p = pod(&env, "propagation").await;
    let mut c = container(&p, "slave", &["sleep", "1000"]);
    c.mounts = vec![bind(
        "/mnt/in",
        src.path(),
        MountPropagation::PropagationHostToContainer,
    )];
    let slave = run(&env, &p, c).await;
    let mut c = container(&p, "private", &["sleep", "1000"]);
    c.mounts = vec![bind(
        "/mnt/in",
        src.path(),
        MountPropagation::PropagationPrivate,
    )];
    let private = run(&env, &p, c).await;

    // Mounted on the host after both containers started.
    let sub = src.mount_tmpfs("sub");
    let m = marker("host-to-container");
    std::fs::write(sub.join("marker"), &m).unwrap();

    poll_until!(
        "the host's new mount seen in the rslave container",
        Duration::from_secs(10),
        try_sh(&env, &slave, "cat /mnt/in/sub/marker").await.1 == m
    );
    let mi = sh(&env, &slave, "cat /proc/self/mountinfo").await;
    assert!(
        mi.lines()
            .any(|l| l.split(' ').nth(4) == Some("/mnt/in/sub")),
        "/mnt/in/sub in the container's mountinfo:\n{mi}"
    );
    // The private one sees the directory, not what is mounted on it.
    let (_, out, _) = try_sh(&env, &private, "cat /mnt/in/sub/marker").await;
    assert_ne!(out, m, "a private mount does not receive host mounts");
    let mi = sh(&env, &private, "cat /proc/self/mountinfo").await;
    assert!(
        !mi.lines()
            .any(|l| l.split(' ').nth(4) == Some("/mnt/in/sub")),
        "no /mnt/in/sub in the private container's mountinfo:\n{mi}"
    );
    // And a mount made in the containers does not reach the host: neither
    // may mount (not privileged), so nothing more to check here.

    remove_pod(&env, p).await;
    drop(src);
    env.finish().await;
}

#[tokio::test]
async fn bidirectional_propagation_shows_a_container_mount_on_the_host() {
    let env = Env::start().await;
    let src = SharedDir::new();
    let image = push_busybox(&env, "more/busybox:1").await;
    let p = pod_with(&env, "bidirectional", &image, true).await;
    let mut c = container(&p, "shared", &["sleep", "1000"]);
    c.mounts = vec![bind(
        "/mnt/shared",
        src.path(),
        MountPropagation::PropagationBidirectional,
    )];
    security(&mut c).privileged = true;
    let id = run(&env, &p, c).await;

    let m = marker("bidirectional");
    sh(
        &env,
        &id,
        &format!(
            "mkdir -p /mnt/shared/x && mount -t tmpfs none /mnt/shared/x && echo '{m}' > /mnt/shared/x/f"
        ),
    )
    .await;
    let x = src.path().join("x");
    let xs = x.display().to_string();
    poll_until!(
        "the container's mount seen on the host",
        Duration::from_secs(10),
        host_mount_points().contains(&xs)
    );
    assert_eq!(
        std::fs::read_to_string(x.join("f")).unwrap(),
        format!("{m}\n"),
        "the host reads the container's tmpfs"
    );
    // Only the shared dir got the container's mount: none of the
    // container's own mounts (its rootfs, /proc…) leaked to the host.
    let leaked: Vec<String> = host_mount_points()
        .into_iter()
        .filter(|mp| mp.contains(&p.id) || mp.contains(&id))
        .filter(|mp| mp.ends_with("/proc") || mp.ends_with("/dev") || mp.ends_with("/sys"))
        .collect();
    assert!(
        leaked.is_empty(),
        "container mounts on the host: {leaked:#?}"
    );

    // The host unmounts it: gone in the container too.
    nix::mount::umount2(&x, MntFlags::empty()).expect("umount on the host");
    poll_until!(
        "the host's unmount seen in the container",
        Duration::from_secs(10),
        !sh(&env, &id, "cat /proc/self/mountinfo")
            .await
            .lines()
            .any(|l| l.split(' ').nth(4) == Some("/mnt/shared/x"))
    );

    remove_pod(&env, p).await;
    drop(src);
    env.finish().await;
}

#[tokio::test]
async fn propagation_from_a_private_host_mount_is_refused_as_containerd_does() {
    let env = Env::start().await;
    let src = SharedDir::with(MsFlags::MS_PRIVATE);
    let image = push_busybox(&env, "more/busybox:1").await;
    let p = pod_with(&env, "privsrc", &image, true).await;
    for (prop, want) in [
        (
            MountPropagation::PropagationBidirectional,
            "is not a shared mount",
        ),
        (
            MountPropagation::PropagationHostToContainer,
            "is not a shared or slave mount",
        ),
    ] {
        let mut c = container(&p, "refused", &["sleep", "1000"]);
        c.mounts = vec![bind("/mnt/x", src.path(), prop)];
        security(&mut c).privileged = true;
        let s = expect_err(create(&env, &p, c).await, "CreateContainer");
        assert!(
            s.message().contains(want) && s.message().contains(&src.path().display().to_string()),
            "{prop:?}: containerd's error: {}",
            s.message()
        );
        assert!(
            list_containers(&env, &p.id).await.is_empty(),
            "a refused CreateContainer leaves no container"
        );
    }
    remove_pod(&env, p).await;
    drop(src);
    env.finish().await;
}

#[tokio::test]
async fn a_device_is_mapped_and_an_unknown_device_is_invalid_argument() {
    let env = Env::start().await;
    let p = pod(&env, "devices").await;
    let mut c = container(&p, "dev", &["sleep", "1000"]);
    c.devices = vec![Device {
        container_path: "/dev/berth-null".into(),
        host_path: "/dev/null".into(),
        permissions: "rwm".into(),
    }];
    let id = run(&env, &p, c).await;
    sh(&env, &id, "echo discarded > /dev/berth-null").await;
    let ls = sh(&env, &id, "ls -l /dev/berth-null").await;
    assert!(ls.starts_with('c'), "a char device: {ls}");
    let nums: String = ls.split_whitespace().skip(4).take(2).collect();
    assert_eq!(nums, "1,3", "major,minor 1,3: {ls}");
    assert_eq!(
        sh(&env, &id, "cat /dev/berth-null | wc -c").await.trim(),
        "0"
    );

    let before = list_containers(&env, &p.id).await.len();
    let mut c = container(&p, "nodev", &["sleep", "1000"]);
    c.devices = vec![Device {
        container_path: "/dev/nothing".into(),
        host_path: "/dev/berth-no-such-device".into(),
        permissions: "rwm".into(),
    }];
    let s = expect_code(
        create(&env, &p, c).await,
        &[Code::InvalidArgument],
        "CreateContainer with an unknown device",
    );
    assert!(
        s.message().contains("/dev/berth-no-such-device"),
        "the error names the device: {}",
        s.message()
    );
    assert_eq!(
        list_containers(&env, &p.id).await.len(),
        before,
        "a failed CreateContainer leaves no container"
    );

    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn pid_target_sees_the_target_containers_processes() {
    let env = Env::start().await;
    let p = pod(&env, "pidtarget").await;
    let target = run(&env, &p, container(&p, "target", &["sleep", "4242"])).await;
    let mut c = container(&p, "debug", &["sleep", "1000"]);
    security(&mut c).namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Target as i32,
        target_id: target.clone(),
        ..Default::default()
    });
    let debug = run(&env, &p, c).await;
    let ps = sh(&env, &debug, "ps").await;
    assert!(ps.contains("sleep 4242"), "the target's process: {ps}");
    assert!(ps.contains("sleep 1000"), "its own process: {ps}");
    // The target sees the debug container's process too (one namespace).
    let ps = sh(&env, &target, "ps").await;
    assert!(ps.contains("sleep 1000"), "shared namespace: {ps}");
    // A third, plain container sees neither.
    let other = run(&env, &p, container(&p, "other", &["sleep", "999"])).await;
    let ps = sh(&env, &other, "ps").await;
    assert!(
        !ps.contains("sleep 4242") && !ps.contains("sleep 1000"),
        "its own PID namespace: {ps}"
    );

    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn image_volume_directory_exists_and_is_writable() {
    let env = Env::start().await;
    let img = ImageBuilder::busybox(Format::Oci)
        .volumes(&["/data", "/var/lib/deep/vol"])
        .build();
    let r = env.push("more/volumes:1", &img).await;
    env.cri.pull(&r).await.expect("pull");
    let p = pod_with_image(&env, "volumes", &r).await;
    let id = run(&env, &p, container(&p, "v", &["sleep", "1000"])).await;
    for v in ["/data", "/var/lib/deep/vol"] {
        sh(&env, &id, &format!("test -d {v}")).await;
        assert_eq!(
            sh(&env, &id, &format!("echo in-volume > {v}/f && cat {v}/f")).await,
            "in-volume\n"
        );
    }
    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn readonly_rootfs_refuses_writes_but_a_rw_mount_takes_them() {
    let env = Env::start().await;
    let host = tempfile::tempdir().unwrap();
    let p = pod(&env, "rorootfs").await;
    let mut c = container(&p, "ro", &["sleep", "1000"]);
    security(&mut c).readonly_rootfs = true;
    c.mounts = vec![bind(
        "/data",
        host.path(),
        MountPropagation::PropagationPrivate,
    )];
    let id = run(&env, &p, c).await;
    let (code, _, err) = try_sh(&env, &id, "touch /written").await;
    assert_ne!(code, 0, "writing to / fails");
    assert!(err.contains("Read-only file system"), "EROFS: {err}");
    let (code, _, _) = try_sh(&env, &id, "mkdir /etc/new").await;
    assert_ne!(code, 0, "no directory made in the rootfs");
    sh(&env, &id, "echo ok > /data/out").await;
    assert_eq!(std::fs::read(host.path().join("out")).unwrap(), b"ok\n");
    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn missing_command_fails_start_container_and_remove_leaves_nothing() {
    let env = Env::start().await;
    let p = pod(&env, "nobinary").await;
    let id = create(&env, &p, container(&p, "nobin", &["/no/such/binary"]))
        .await
        .expect("CreateContainer (runc checks the command at start)");
    let s = expect_err(start(&env, &id).await, "StartContainer of /no/such/binary");
    assert!(
        s.message().contains("/no/such/binary")
            && s.message()
                .to_lowercase()
                .contains("no such file or directory"),
        "runc's error: {}",
        s.message()
    );
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

/// ContainerConfig.stop_signal (KEP-4960): StopContainer sends it, before
/// the image's STOPSIGNAL, before SIGTERM; ContainerStatus.stop_signal
/// reports the one in effect; a value the enum has not is refused.
#[tokio::test]
async fn stop_signal_of_the_config_beats_the_images_and_status_reports_it() {
    use berth_cri_api::v1::Signal;
    let env = Env::start().await;
    let img = ImageBuilder::busybox(Format::Oci)
        .stop_signal("SIGINT")
        .build();
    let r = env.push("more/stopsignal:1", &img).await;
    env.cri.pull(&r).await.expect("pull");
    let p = pod_with_image(&env, "stopsignal", &r).await;
    // The exit code says which signal came first.
    let script = "trap 'exit 41' USR1; trap 'exit 42' INT; trap 'exit 43' TERM; \
                  echo ready > /tmp/ready; while :; do sleep 0.1; done";
    let mut with = container(&p, "with", &["sh", "-c", script]);
    with.stop_signal = Signal::Sigusr1 as i32;
    let with = run(&env, &p, with).await;
    let from_image = run(&env, &p, container(&p, "image", &["sh", "-c", script])).await;
    for id in [&with, &from_image] {
        let t = Instant::now();
        while try_sh(&env, id, "cat /tmp/ready").await.0 != 0 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{id} never got ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(
        status(&env, &with).await.unwrap().stop_signal,
        Signal::Sigusr1 as i32
    );
    assert_eq!(
        status(&env, &from_image).await.unwrap().stop_signal,
        Signal::Sigint as i32
    );

    let mut rt = env.cri.runtime.clone();
    for (id, code) in [(&with, 41), (&from_image, 42)] {
        rt.stop_container(berth_cri_api::v1::StopContainerRequest {
            container_id: id.clone(),
            timeout: 10,
        })
        .await
        .expect("StopContainer");
        let st = wait_exited(&env, id, Duration::from_secs(5)).await;
        assert_eq!(st.exit_code, code, "{st:?}");
    }

    // No STOPSIGNAL in the image, none in the config: SIGTERM.
    let plain = push_busybox(&env, "more/stopsignal-plain:1").await;
    let mut c = container(&p, "plain", &["sleep", "1000"]);
    c.image = Some(berth_cri_api::v1::ImageSpec {
        image: plain,
        ..Default::default()
    });
    let plain = create(&env, &p, c).await.expect("CreateContainer");
    assert_eq!(
        status(&env, &plain).await.unwrap().stop_signal,
        Signal::Sigterm as i32
    );

    let mut bad = container(&p, "bad", &["true"]);
    bad.stop_signal = 999;
    let e = create(&env, &p, bad).await;
    let s = expect_code(e, &[Code::InvalidArgument], "stop_signal 999");
    assert!(s.message().contains("stop_signal"), "{}", s.message());
    remove_pod(&env, p).await;
    env.finish().await;
}

/// Image volumes (KEP-4639): kubelet pulls an image and asks for it as a
/// mount (Mount.image with PullImage's image_ref, no host_path). berth
/// mounts it read-only and noexec, only image_sub_path of it where asked,
/// resolved inside the image (its symlinks cannot lead to the node's
/// files), reports it in ContainerStatus, refuses RemoveImage while it is
/// mounted, and leaves no mount behind.
#[tokio::test]
async fn an_image_volume_is_mounted_read_only_noexec_with_its_sub_path_and_keeps_its_image() {
    use berth_conformance::images::{Compression, TarBuilder};
    let env = Env::start().await;
    let base = TarBuilder::new()
        .dir("models", 0o755)
        .dir("models/v1", 0o755)
        .file("models/v1/weights", 0o644, b"old weights\n")
        .file("models/v1/run", 0o755, b"#!/bin/sh\necho ran\n")
        .file("models/readme", 0o644, b"models\n")
        .layer(Compression::Gzip, Format::Oci);
    let top = TarBuilder::new()
        .dir("models", 0o755)
        .dir("models/v1", 0o755)
        .file("models/v1/weights", 0o644, b"new weights\n")
        .symlink("models/up", "../../../../../../../etc")
        .symlink("models/abs", "/etc")
        .symlink("models/nowhere", "../../../../no-such-dir")
        .dir("etc", 0o755)
        .file("etc/marker", 0o644, b"the image's etc\n")
        .layer(Compression::Gzip, Format::Oci);
    let data = ImageBuilder::new(Format::Oci)
        .layer(base)
        .layer(top)
        .build();
    let data_ref = env.push("more/data:1", &data).await;
    let data_id = env.cri.pull(&data_ref).await.expect("pull the data image");
    let busybox = push_busybox(&env, "more/ivol-busybox:1").await;
    let p = pod_with_image(&env, "ivol", &busybox).await;

    let volume = |path: &str, sub: &str| Mount {
        container_path: path.into(),
        image: Some(berth_cri_api::v1::ImageSpec {
            image: data_id.clone(),
            ..Default::default()
        }),
        image_sub_path: sub.into(),
        readonly: true,
        ..Default::default()
    };
    let mut c = container(&p, "reader", &["sleep", "1000"]);
    c.mounts = vec![volume("/data", ""), volume("/v1", "models/v1")];
    let id = run(&env, &p, c).await;
    // The whole image, its top layer winning; only the sub path at /v1.
    assert_eq!(
        sh(&env, &id, "cat /data/models/v1/weights").await,
        "new weights\n"
    );
    assert_eq!(sh(&env, &id, "cat /v1/weights").await, "new weights\n");
    assert_eq!(try_sh(&env, &id, "test -e /v1/readme").await.0, 1);
    // Read-only, and nothing in it runs.
    let (code, _, err) = try_sh(&env, &id, "echo x > /v1/new").await;
    assert_ne!(code, 0, "an image volume is read-only");
    assert!(err.to_lowercase().contains("read-only"), "{err}");
    let (code, out, _) = try_sh(&env, &id, "/v1/run").await;
    assert_ne!(code, 0, "noexec: {out}");
    let opts = sh(&env, &id, "grep ' /v1 ' /proc/self/mounts").await;
    for o in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(opts.split([' ', ',']).any(|f| f == o), "{o} in {opts}");
    }
    // ContainerStatus names the image and the id it was.
    let st = status(&env, &id).await.unwrap();
    let m = st
        .mounts
        .iter()
        .find(|m| m.container_path == "/v1")
        .expect("the /v1 mount");
    let spec = m.image.as_ref().expect("the mount's image");
    assert_eq!(spec.image, data_id);
    assert_eq!(spec.image_ref, data_id);
    assert_eq!(m.image_sub_path, "models/v1");
    assert!(m.host_path.is_empty());

    // The image is in use: RemoveImage refuses, naming the container.
    let e = env.cri.remove_image(&data_id).await;
    let s = expect_code(
        e,
        &[Code::FailedPrecondition],
        "RemoveImage of a mounted image",
    );
    assert!(s.message().contains(&id), "{}", s.message());

    // Symlinks in the image resolve inside it: `../../etc` and `/etc` are
    // the image's /etc, never the node's.
    let mut inside = Vec::new();
    for (n, sub) in ["models/up", "models/abs"].into_iter().enumerate() {
        let mut c = container(&p, &format!("inside-{n}"), &["sleep", "1000"]);
        c.mounts = vec![volume("/x", sub)];
        let id = run(&env, &p, c).await;
        inside.push(id.clone());
        assert_eq!(
            sh(&env, &id, "cat /x/marker").await,
            "the image's etc\n",
            "{sub}"
        );
        assert_eq!(
            try_sh(&env, &id, "test -e /x/passwd").await.0,
            1,
            "{sub}: not the node's /etc"
        );
    }
    for sub in ["models/up/passwd", "models/nowhere", "no/such/dir"] {
        let mut c = container(&p, "escape", &["sleep", "1000"]);
        c.mounts = vec![volume("/x", sub)];
        let e = create(&env, &p, c).await;
        let s = expect_code(e, &[Code::InvalidArgument], sub);
        assert!(
            s.message().contains("image_sub_path"),
            "{sub}: {}",
            s.message()
        );
    }
    // An image that was never pulled.
    let mut c = container(&p, "unpulled", &["sleep", "1000"]);
    c.mounts = vec![Mount {
        container_path: "/x".into(),
        image: Some(berth_cri_api::v1::ImageSpec {
            image: env.reference("more/never:1"),
            ..Default::default()
        }),
        ..Default::default()
    }];
    expect_code(
        create(&env, &p, c).await,
        &[Code::NotFound],
        "an unpulled image volume",
    );

    // Once the containers are gone, the image can go.
    let mut rt = env.cri.runtime.clone();
    for container_id in inside.into_iter().chain([id.clone()]) {
        rt.remove_container(RemoveContainerRequest { container_id })
            .await
            .expect("RemoveContainer");
    }
    env.cri
        .remove_image(&data_id)
        .await
        .expect("RemoveImage once no container mounts it");
    remove_pod(&env, p).await;
    env.finish().await;
}

/// SupplementalGroupsPolicy (KEP-3619): Merge (the default) adds the
/// image's /etc/group memberships of the user to kubelet's groups, Strict
/// only kubelet's; the container's process and every exec have the same
/// groups, and ContainerStatus.user reports them.
#[tokio::test]
async fn supplemental_groups_policy_merge_and_strict_reach_the_process_exec_and_status() {
    use berth_conformance::images::{Compression, TarBuilder};
    use berth_cri_api::v1::SupplementalGroupsPolicy;
    use std::collections::BTreeSet;
    let env = Env::start().await;
    let groups = TarBuilder::new()
        .dir("etc", 0o755)
        .file(
            "etc/group",
            0o644,
            b"root:x:0:\napp:x:1000:\nextra:x:2000:app\nother:x:3000:root\n",
        )
        .layer(Compression::Gzip, Format::Oci);
    let img = ImageBuilder::busybox(Format::Oci).layer(groups).build();
    let r = env.push("more/groups:1", &img).await;
    env.cri.pull(&r).await.expect("pull");
    let p = pod_with_image(&env, "groups", &r).await;
    let set = |s: &str| -> BTreeSet<i64> {
        s.split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect()
    };
    for (policy, want) in [
        (SupplementalGroupsPolicy::Merge, set("1000 2000 5000")),
        (SupplementalGroupsPolicy::Strict, set("1000 5000")),
    ] {
        let name = format!("{policy:?}").to_lowercase();
        let mut c = container(&p, &name, &["sleep", "1000"]);
        let sc = security(&mut c);
        sc.run_as_user = Some(berth_cri_api::v1::Int64Value { value: 1000 });
        sc.supplemental_groups = vec![5000];
        sc.supplemental_groups_policy = policy as i32;
        let id = run(&env, &p, c).await;
        let from_exec = set(&sh(&env, &id, "id -G").await);
        assert_eq!(from_exec, want, "{name}: the groups of an exec");
        let init = sh(&env, &id, "grep '^Groups:' /proc/1/status").await;
        let mut init = set(init.trim_start_matches("Groups:"));
        init.insert(1000);
        assert_eq!(init, want, "{name}: the groups of the container's process");
        let user = status(&env, &id)
            .await
            .unwrap()
            .user
            .and_then(|u| u.linux)
            .expect("ContainerStatus.user.linux");
        assert_eq!((user.uid, user.gid), (1000, 1000), "{name}");
        let mut reported: BTreeSet<i64> = user.supplemental_groups.into_iter().collect();
        reported.insert(user.gid);
        assert_eq!(reported, want, "{name}: ContainerStatus.user");
    }
    let st = env.cri.status(false).await.expect("Status");
    assert!(
        st.features
            .expect("RuntimeFeatures")
            .supplemental_groups_policy,
        "claimed, since it works"
    );
    remove_pod(&env, p).await;
    env.finish().await;
}

/// Mount.recursive_read_only: the bind and every mount below it read-only
/// (mount_setattr AT_RECURSIVE); a plain read-only mount stays
/// non-recursive (a submount of it is writable, as critest checks); rro
/// without readonly, or with a propagation other than PRIVATE, is refused.
#[tokio::test]
async fn a_recursive_read_only_mount_makes_its_submounts_read_only_too() {
    let env = Env::start().await;
    let image = push_busybox(&env, "more/rro:1").await;
    let p = pod_with_image(&env, "rro", &image).await;
    let mut host = SharedDir::with(MsFlags::MS_PRIVATE);
    host.mount_tmpfs("sub");
    let bind = |path: &str, rro: bool| Mount {
        container_path: path.into(),
        host_path: host.path().display().to_string(),
        readonly: true,
        recursive_read_only: rro,
        ..Default::default()
    };
    let mut c = container(&p, "rro", &["sleep", "1000"]);
    c.mounts = vec![bind("/rro", true), bind("/ro", false)];
    let id = run(&env, &p, c).await;
    for (what, cmd, ok) in [
        ("the rro mount", "touch /rro/x", false),
        ("a submount of the rro mount", "touch /rro/sub/x", false),
        ("the plain ro mount", "touch /ro/x", false),
        ("a submount of the plain ro mount", "touch /ro/sub/y", true),
    ] {
        let (code, _, err) = try_sh(&env, &id, cmd).await;
        assert_eq!(code == 0, ok, "{what}: {cmd}: exit {code}, {err}");
        if !ok {
            assert!(err.to_lowercase().contains("read-only"), "{what}: {err}");
        }
    }
    assert!(host.path().join("sub/y").exists());
    assert!(!host.path().join("sub/x").exists());

    let mut bad = container(&p, "bad", &["true"]);
    bad.mounts = vec![Mount {
        readonly: false,
        ..bind("/x", true)
    }];
    expect_code(
        create(&env, &p, bad).await,
        &[Code::InvalidArgument],
        "rro without readonly",
    );
    let mut bad = container(&p, "bad2", &["true"]);
    bad.mounts = vec![Mount {
        propagation: MountPropagation::PropagationHostToContainer as i32,
        ..bind("/x", true)
    }];
    expect_code(
        create(&env, &p, bad).await,
        &[Code::InvalidArgument],
        "rro with HostToContainer",
    );
    let st = env.cri.status(false).await.expect("Status");
    assert!(
        st.runtime_handlers[0]
            .features
            .as_ref()
            .unwrap()
            .recursive_read_only_mounts,
        "claimed where the kernel has mount_setattr (5.12; this test's kernel has)"
    );
    remove_pod(&env, p).await;
    drop(host);
    env.finish().await;
}

/// AppArmor and SELinux: a node profile (Localhost) or SELinux labels are
/// refused with FAILED_PRECONDITION naming the LSM, never dropped without
/// a word (this node runs neither; berth applies neither yet);
/// RuntimeDefault and Unconfined need nothing and run.
#[tokio::test]
async fn lsm_profiles_no_lsm_enforces_are_refused_naming_it() {
    use berth_cri_api::v1::{SeLinuxOption, SecurityProfile, security_profile::ProfileType};
    let env = Env::start().await;
    let image = push_busybox(&env, "more/lsm:1").await;
    let p = pod_with_image(&env, "lsm", &image).await;
    let mut c = container(&p, "aa", &["true"]);
    security(&mut c).apparmor = Some(SecurityProfile {
        profile_type: ProfileType::Localhost as i32,
        localhost_ref: "k8s-deny-write".into(),
    });
    let s = expect_code(
        create(&env, &p, c).await,
        &[Code::FailedPrecondition],
        "AppArmor Localhost",
    );
    assert!(
        s.message().contains("AppArmor") && s.message().contains("k8s-deny-write"),
        "{}",
        s.message()
    );
    let mut c = container(&p, "aa-legacy", &["true"]);
    #[allow(deprecated)]
    {
        security(&mut c).apparmor_profile = "localhost/k8s-deny-write".into();
    }
    expect_code(
        create(&env, &p, c).await,
        &[Code::FailedPrecondition],
        "apparmor_profile localhost/",
    );
    let mut c = container(&p, "se", &["true"]);
    security(&mut c).selinux_options = Some(SeLinuxOption {
        level: "s0:c1,c2".into(),
        ..Default::default()
    });
    let s = expect_code(
        create(&env, &p, c).await,
        &[Code::FailedPrecondition],
        "SELinux labels",
    );
    assert!(s.message().contains("SELinux"), "{}", s.message());
    let mut pod = sandbox_config("lsm-pod");
    pod.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            selinux_options: Some(SeLinuxOption {
                r#type: "spc_t".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let e = env
        .cri
        .runtime
        .clone()
        .run_pod_sandbox(berth_cri_api::v1::RunPodSandboxRequest {
            config: Some(pod),
            runtime_handler: String::new(),
        })
        .await;
    expect_code(e, &[Code::FailedPrecondition], "a pod's SELinux labels");
    for t in [ProfileType::RuntimeDefault, ProfileType::Unconfined] {
        let mut c = container(&p, &format!("ok-{}", t as i32), &["true"]);
        security(&mut c).apparmor = Some(SecurityProfile {
            profile_type: t as i32,
            localhost_ref: String::new(),
        });
        create(&env, &p, c)
            .await
            .expect("RuntimeDefault / Unconfined run");
    }
    remove_pod(&env, p).await;
    env.finish().await;
}

/// An image whose /etc is a symlink to / (and /var one to ../../..): the
/// pod's hosts, hostname and resolv.conf, a CRI mount under /etc and the
/// working dir under /var all land inside the container's root (openat2
/// RESOLVE_IN_ROOT), never on the node's /. (Devices go only under the
/// container's own /dev tmpfs, as with runc.)
#[tokio::test]
async fn an_image_with_etc_linked_to_root_cannot_make_a_mount_land_on_the_node() {
    use berth_conformance::images::{Compression, TarBuilder};
    let env = Env::start().await;
    let wh = TarBuilder::new()
        .whiteout("etc")
        .whiteout("var")
        .layer(Compression::Gzip, Format::Oci);
    let links = TarBuilder::new()
        .symlink("etc", "/")
        .symlink("var", "../../..")
        .layer(Compression::Gzip, Format::Oci);
    let img = ImageBuilder::busybox(Format::Oci)
        .layer(wh)
        .layer(links)
        .build();
    let r = env.push("more/etc-link:1", &img).await;
    env.cri.pull(&r).await.expect("pull");
    let p = pod_with_image(&env, "etclink", &r).await;
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("in-volume"), "v\n").unwrap();
    let names = ["data", "hosts", "hostname", "resolv.conf", "lib/app"];
    let existed: Vec<bool> = names
        .iter()
        .map(|n| Path::new("/").join(n).exists())
        .collect();
    let mounts_before = host_mount_points();

    let mut c = container(&p, "linked", &["sleep", "1000"]);
    c.working_dir = "/var/lib/app".into();
    c.mounts = vec![Mount {
        container_path: "/etc/data".into(),
        host_path: host.path().display().to_string(),
        ..Default::default()
    }];
    let id = run(&env, &p, c).await;
    // Inside, everything is where the links lead within the root.
    assert_eq!(sh(&env, &id, "cat /data/in-volume").await, "v\n");
    assert_eq!(sh(&env, &id, "cat /etc/data/in-volume").await, "v\n");
    sh(
        &env,
        &id,
        "test -s /hosts && test -s /hostname && test -s /resolv.conf",
    )
    .await;
    assert_eq!(sh(&env, &id, "pwd").await.trim(), "/lib/app");

    // On the node: no new entry in /, no mount outside berth's own dirs.
    for (name, existed) in names.iter().zip(existed) {
        assert!(
            existed || !Path::new("/").join(name).exists(),
            "/{name} appeared on the node"
        );
    }
    // Other scenarios run beside this one, their berthds and dirs all in
    // the temp dir: a mount that escaped would be on the node's own paths.
    let tmp = std::env::temp_dir();
    let new: Vec<String> = host_mount_points()
        .into_iter()
        .filter(|m| !mounts_before.contains(m) && !Path::new(m).starts_with(&tmp))
        .collect();
    assert!(new.is_empty(), "mounts outside the test dirs: {new:?}");
    remove_pod(&env, p).await;
    env.finish().await;
}
