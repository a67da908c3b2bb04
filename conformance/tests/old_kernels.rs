//! berth on kernels older than this VM's: 5.15 and 6.1 LTS refuse
//! overlayfs's `lowerdir+` (Linux 6.8), so berthd falls back to the classic
//! `lowerdir=` option. Here berthd is made to take that path (its
//! `rootfs.classic_lowerdir` test switch) on a kernel that has both.

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
