//! berth on kernels older than this VM's: 5.15 and 6.1 LTS refuse
//! overlayfs's `lowerdir+` (Linux 6.8), so berthd falls back to the classic
//! `lowerdir=` option. Here berthd is made to take that path (its
//! `rootfs.classic_lowerdir` test switch) on a kernel that has both.
//! Kernels before 5.12 lack mount_setattr(2), with which the shim makes a
//! v1 container's /sys/fs/cgroup read-only in one call: its remount per
//! mount is taken with the switch `shim.no_mount_setattr`.

mod common;

use berth_conformance::Env;
use berth_conformance::berthd::BerthdOptions;
use berth_conformance::cri::sandbox_config;
use berth_conformance::images::{Compression, Format, ImageBuilder, TarBuilder};
use berth_conformance::pods::*;
use berth_conformance::registry::Registry;

#[tokio::test]
async fn a_deep_image_runs_with_the_classic_overlay_option() {
    let registry = Registry::start().await.expect("starting docker-registry");
    let env = Env::start_with(
        registry,
        BerthdOptions::default().env("FAILPOINTS", "rootfs.classic_lowerdir=return"),
    )
    .await;
    // busybox and 100 more layers: their snapshot paths (~90 bytes each)
    // would take 9 KB of options, twice what mount(2) copies.
    let mut img = ImageBuilder::busybox(Format::Oci);
    for i in 0..100 {
        img = img.layer(
            TarBuilder::new()
                .file("which", 0o644, format!("{i}").as_bytes())
                .file(&format!("only-{i}"), 0o644, b"x")
                .layer(Compression::Gzip, Format::Oci),
        );
    }
    let reference = env.push("deep/busybox:1", &img.build()).await;
    env.cri.pull(&reference).await.expect("pull the deep image");
    let p = run_pod(&env, sandbox_config("deep"), &reference).await;
    let id = run(&env, &p, container(&p, "deep", &["sleep", "1000"])).await;
    assert_eq!(
        sh(&env, &id, "cat /which").await,
        "99",
        "the top layer wins"
    );
    sh(
        &env,
        &id,
        "test -e /only-0 && test -e /only-99 && echo ok > /new",
    )
    .await;
    assert_eq!(sh(&env, &id, "cat /new").await, "ok\n");

    // The root filesystem was mounted with the classic option.
    let rootfs = env
        .berthd
        .state()
        .join("containers")
        .join(&id)
        .join("rootfs");
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(rootfs.to_str().unwrap()))
        .unwrap_or_else(|| panic!("no mount at {}", rootfs.display()));
    assert!(
        line.contains(" overlay ") && line.contains("lowerdir=/proc/self/fd/"),
        "classic overlay options: {line}"
    );
    remove_pod(&env, p).await;
    env.finish().await;
}

/// The container's view of its cgroups on a v1 host: a read-only tmpfs on
/// /sys/fs/cgroup holding a read-only (nosuid, nodev, noexec) bind of the
/// container's own cgroup per hierarchy. Made by one recursive
/// mount_setattr (Linux 5.12); with the switch `shim.no_mount_setattr` by
/// a remount per mount, as before 5.12. Nothing on a host without v1
/// hierarchies, whose containers get cgroup2 (see cgroup_v2.rs).
async fn check_v1_cgroup_view(options: BerthdOptions, name: &str) {
    if !std::path::Path::new("/sys/fs/cgroup/memory/tasks").exists() {
        eprintln!(
            "this scenario needs a host with v1 cgroups (memory hierarchy at /sys/fs/cgroup/memory): skipped"
        );
        return;
    }
    let registry = Registry::start().await.expect("starting docker-registry");
    let env = Env::start_with(registry, options).await;
    let busybox = push_busybox(&env, "v1view/busybox:1").await;
    let p = run_pod(&env, sandbox_config(name), &busybox).await;
    let mut c = container(&p, name, &["sleep", "1000"]);
    c.linux.get_or_insert_with(Default::default).resources =
        Some(berth_cri_api::v1::LinuxContainerResources {
            memory_limit_in_bytes: 48 << 20,
            ..Default::default()
        });
    let id = run(&env, &p, c).await;

    let info = sh(&env, &id, "cat /proc/self/mountinfo").await;
    // Mount point (field 5) and per-mount options (field 6).
    let mounts: Vec<(&str, &str)> = info
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Some((*f.get(4)?, *f.get(5)?))
        })
        .filter(|(m, _)| m.starts_with("/sys/fs/cgroup"))
        .collect();
    let top = mounts
        .iter()
        .find(|(m, _)| *m == "/sys/fs/cgroup")
        .unwrap_or_else(|| panic!("no /sys/fs/cgroup mount in the container:\n{info}"));
    assert!(
        top.1.split(',').any(|o| o == "ro"),
        "/sys/fs/cgroup: {top:?}"
    );
    let binds: Vec<_> = mounts
        .iter()
        .filter(|(m, _)| *m != "/sys/fs/cgroup")
        .collect();
    assert!(
        binds.iter().any(|(m, _)| *m == "/sys/fs/cgroup/memory"),
        "a memory hierarchy in the container: {mounts:?}"
    );
    for (m, opts) in &binds {
        let o: Vec<&str> = opts.split(',').collect();
        for want in ["ro", "nosuid", "nodev", "noexec"] {
            assert!(o.contains(&want), "{m} lacks {want}: {opts}");
        }
    }
    // The container's own memory cgroup, and nothing in it writable.
    assert_eq!(
        sh(&env, &id, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes")
            .await
            .trim(),
        (48u64 << 20).to_string()
    );
    let (code, _, err) = try_sh(&env, &id, "echo 1 > /sys/fs/cgroup/memory/cgroup.procs").await;
    assert_ne!(code, 0, "cgroup.procs writable in the container");
    assert!(err.contains("Read-only"), "{err}");
    let (code, _, _) = try_sh(&env, &id, "mkdir /sys/fs/cgroup/new").await;
    assert_ne!(
        code, 0,
        "a directory made in the container's /sys/fs/cgroup"
    );
    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn v1_cgroups_are_read_only_in_the_container() {
    check_v1_cgroup_view(BerthdOptions::default(), "v1view").await;
}

#[tokio::test]
async fn v1_cgroups_are_read_only_in_the_container_without_mount_setattr() {
    check_v1_cgroup_view(
        BerthdOptions::default().env("FAILPOINTS", "shim.no_mount_setattr=return"),
        "v1view-old",
    )
    .await;
}
