//! PullImage when things go wrong: hostile layers, blobs with the wrong
//! content, a registry that errors, cuts, stalls or dies, a berthd killed in
//! the middle. Each failure must be clear and leave nothing behind; the
//! next pull must work.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_conformance::Env;
use berth_conformance::berthd::BerthdOptions;
use berth_conformance::fault::{Fault, FaultProxy, Rule};
use berth_conformance::images::{
    self, Compression, Format, Image, ImageBuilder, TarBuilder, hostile,
};
use berth_conformance::inspect;
use berth_conformance::registry::Registry;
use common::*;
use tonic::Code;

// ---------------------------------------------------------- hostile layers

/// Push a one-layer hostile image, pull it, and check: refused with a
/// message, nothing new under root or state, nothing written outside, the
/// host file behind `secret` not linked, no image listed.
async fn hostile_is_refused(what: &str, build: impl FnOnce(&Path) -> TarBuilder) {
    let env = Env::start().await;
    let outside = outside_dir(env.berthd.dir());
    let outside_before = names_in(&outside);
    let img = hostile::image(build(&outside), Format::Oci);
    let r = env.push("hostile/layer:1", &img).await;
    let before = env.snapshot();

    let s = expect_err(env.cri.pull(&r).await, what);
    assert!(
        !matches!(
            s.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
        ),
        "{what}: refused with {:?} ({}), which reads like a crash or a timeout",
        s.code(),
        s.message()
    );
    eprintln!("{what}: refused with {:?}: {}", s.code(), s.message());

    env.assert_no_leaks_since(&before).await;
    assert_eq!(
        names_in(&outside),
        outside_before,
        "{what}: wrote outside berthd's root"
    );
    assert_eq!(
        std::fs::metadata(outside.join("secret")).unwrap().nlink(),
        1,
        "{what}: host file hard-linked"
    );
    for pwned in [
        "dotdot-pwned",
        "symlink-pwned",
        "relsymlink-pwned",
        "abs-pwned",
    ] {
        let found = inspect::entries_named(env.berthd.dir(), pwned);
        assert!(found.is_empty(), "{what}: {pwned} written at {found:?}");
    }
    assert!(
        env.cri.list_images(None).await.unwrap().is_empty(),
        "{what}: image listed after a refused pull"
    );
    assert!(env.cri.image(&r).await.unwrap().is_none());
    env.finish().await;
}

#[tokio::test]
async fn hostile_layer_dotdot_is_refused_and_leaves_nothing() {
    hostile_is_refused("entry with ..", hostile::dotdot).await;
}

#[tokio::test]
async fn hostile_layer_write_through_absolute_symlink_is_refused_and_leaves_nothing() {
    hostile_is_refused(
        "file written through an absolute symlink",
        hostile::write_through_absolute_symlink,
    )
    .await;
}

#[tokio::test]
async fn hostile_layer_write_through_climbing_symlink_is_refused_and_leaves_nothing() {
    hostile_is_refused(
        "file written through a ../ symlink",
        hostile::write_through_relative_symlink,
    )
    .await;
}

#[tokio::test]
async fn hostile_layer_hardlink_outside_is_refused_and_leaves_nothing() {
    hostile_is_refused("hard link to ../../outside", hostile::hardlink_outside).await;
}

#[tokio::test]
async fn hostile_layer_hardlink_to_absolute_host_path_is_refused_and_leaves_nothing() {
    hostile_is_refused(
        "hard link to an absolute path not in the layer",
        hostile::hardlink_absolute,
    )
    .await;
}

#[tokio::test]
async fn hostile_layer_device_number_the_kernel_cannot_hold_is_refused_and_leaves_nothing() {
    hostile_is_refused("block device 4104:0 (would alias 8:0)", |_| {
        hostile::device_number_alias()
    })
    .await;
}

#[tokio::test]
async fn hostile_layer_huge_gnu_longname_is_refused_and_leaves_nothing() {
    hostile_is_refused("1 MiB GNU long name", |_| {
        hostile::huge_gnu_longname(1 << 20)
    })
    .await;
}

#[tokio::test]
async fn absolute_entry_name_is_contained_in_the_snapshot_or_refused() {
    // Tar tools strip the leading '/', so an absolute entry name may be
    // unpacked inside the snapshot; it must never reach the host path.
    let env = Env::start().await;
    let outside = outside_dir(env.berthd.dir());
    let outside_before = names_in(&outside);
    let img = hostile::image(hostile::absolute_path(&outside), Format::Oci);
    let r = env.push("hostile/abs:1", &img).await;
    let before = env.snapshot();
    match env.cri.pull(&r).await {
        Ok(id) => {
            assert_eq!(id, img.id());
            let inside = inspect::files_with_content(&env.berthd.root(), b"absolute path\n");
            assert!(
                !inside.is_empty(),
                "pull succeeded but the entry is nowhere under the root"
            );
        }
        Err(s) => {
            eprintln!(
                "absolute entry refused with {:?}: {}",
                s.code(),
                s.message()
            );
            env.assert_no_leaks_since(&before).await;
        }
    }
    assert_eq!(
        names_in(&outside),
        outside_before,
        "absolute entry written to the host path"
    );
    env.finish().await;
}

// ------------------------------------------------------------------ limits

#[tokio::test]
async fn gzip_bomb_layer_fails_with_resource_exhausted_and_leaves_nothing() {
    let reg = Registry::start().await.unwrap();
    let options = BerthdOptions::default().extra_registry("max_unpacked_layer_size = \"16MiB\"");
    let env = Env::start_with(reg, options).await;
    // 200 MiB of zeros in a blob of about 200 KB: what would fill a disk.
    let bomb = images::gzip_bomb("bomb", 200, Format::Oci);
    assert!(bomb.blob.size() < 512 << 10, "{} bytes", bomb.blob.size());
    let img = ImageBuilder::new(Format::Oci)
        .layer(bomb.clone())
        .cmd(&["/bomb"])
        .build();
    let r = env.push("bomb/layer:1", &img).await;
    let before = env.snapshot();

    let s = expect_code(
        env.cri.pull(&r).await,
        &[Code::ResourceExhausted],
        "gzip bomb over max_unpacked_layer_size",
    );
    eprintln!("gzip bomb: {:?}: {}", s.code(), s.message());
    for part in [
        bomb.blob.digest.as_str(),
        "16.0 MiB",
        "registry.max_unpacked_layer_size",
    ] {
        assert!(
            s.message().contains(part),
            "message lacks {part:?}: {}",
            s.message()
        );
    }
    env.assert_no_leaks_since(&before).await;
    assert!(env.cri.list_images(None).await.unwrap().is_empty());

    // A layer within the limit still pulls.
    let ok = images::marked_image(Format::Oci, Compression::Gzip, &marker("after the bomb"));
    let r = env.push("bomb/after:1", &ok).await;
    assert_eq!(
        env.cri.pull(&r).await.expect("pull after the bomb"),
        ok.id()
    );
    env.finish().await;
}

#[tokio::test]
async fn pull_under_the_free_space_reserve_fails_with_resource_exhausted_and_leaves_nothing() {
    let reg = Registry::start().await.unwrap();
    let options = BerthdOptions::default().extra_registry("min_free_space = \"100%\"");
    let env = Env::start_with(reg, options).await;
    let img = single_layer(Compression::Gzip);
    let r = env.push("full/disk:1", &img).await;
    let before = env.snapshot();
    let s = expect_code(
        env.cri.pull(&r).await,
        &[Code::ResourceExhausted],
        "pull with a reserve of the whole disk",
    );
    eprintln!("reserve: {:?}: {}", s.code(), s.message());
    for part in [
        img.layers[0].blob.digest.as_str(),
        "registry.min_free_space",
        "100%",
    ] {
        assert!(
            s.message().contains(part),
            "message lacks {part:?}: {}",
            s.message()
        );
    }
    env.assert_no_leaks_since(&before).await;
    assert!(env.cri.list_images(None).await.unwrap().is_empty());
    env.finish().await;
}

// ------------------------------------------------------ wrong blob content

/// A registry behind a fault proxy and a berthd with a 2 s stall timeout.
async fn proxied_env() -> (Env, FaultProxy) {
    let reg = Registry::start().await.unwrap();
    let proxy = FaultProxy::start(&reg.host()).await.unwrap();
    let env = Env::start_with(reg, BerthdOptions::default().stall_timeout("2s")).await;
    (env, proxy)
}

fn single_layer(compression: Compression) -> Image {
    ImageBuilder::new(Format::Oci)
        .layer(images::busybox_layer(compression, Format::Oci))
        .cmd(&["sh"])
        .build()
}

/// Pull through the proxy with `rule` applied: expect `codes` (any error if
/// empty), nothing kept; then without faults the pull works.
async fn corrupt_then_recover(
    env: &Env,
    proxy: &FaultProxy,
    img: &Image,
    rule: Rule,
    codes: &[Code],
    what: &str,
) {
    let r = proxy.reference("corrupt/img:1");
    env.push("corrupt/img:1", img).await;
    proxy.add(rule);
    let before = env.snapshot();
    let res = env.cri.pull(&r).await;
    let s = if codes.is_empty() {
        expect_err(res, what)
    } else {
        expect_code(res, codes, what)
    };
    eprintln!("{what}: {:?}: {}", s.code(), s.message());
    env.assert_no_leaks_since(&before).await;
    assert!(
        env.cri.list_images(None).await.unwrap().is_empty(),
        "{what}: image kept"
    );
    proxy.clear();
    assert_eq!(
        env.cri
            .pull(&r)
            .await
            .expect("pull once the registry serves the right bytes"),
        img.id()
    );
}

#[tokio::test]
async fn blob_with_wrong_content_fails_with_data_loss_and_keeps_nothing() {
    // uncompressed layer: only the digest can tell
    let (env, proxy) = proxied_env().await;
    let img = single_layer(Compression::None);
    let rule = Rule::new(&img.layers[0].blob.digest, Fault::Corrupt);
    corrupt_then_recover(
        &env,
        &proxy,
        &img,
        rule,
        &[Code::DataLoss],
        "layer with one byte flipped",
    )
    .await;
    env.finish().await;
}

#[tokio::test]
async fn gzip_blob_with_wrong_content_fails_and_keeps_nothing() {
    let (env, proxy) = proxied_env().await;
    let img = single_layer(Compression::Gzip);
    let rule = Rule::new(&img.layers[0].blob.digest, Fault::Corrupt);
    corrupt_then_recover(
        &env,
        &proxy,
        &img,
        rule,
        &[],
        "gzip layer with one byte flipped",
    )
    .await;
    env.finish().await;
}

#[tokio::test]
async fn config_with_wrong_content_fails_with_data_loss_and_keeps_nothing() {
    let (env, proxy) = proxied_env().await;
    let img = single_layer(Compression::Gzip);
    let rule = Rule::new(img.id(), Fault::Corrupt);
    corrupt_then_recover(
        &env,
        &proxy,
        &img,
        rule,
        &[Code::DataLoss],
        "config with one byte flipped",
    )
    .await;
    env.finish().await;
}

#[tokio::test]
async fn manifest_with_wrong_content_fails_a_pull_by_digest() {
    let (env, proxy) = proxied_env().await;
    let img = single_layer(Compression::Gzip);
    env.push("corrupt/bydigest:1", &img).await;
    proxy.add(Rule::new(
        &format!("/manifests/{}", img.digest()),
        Fault::Corrupt,
    ));
    let r = proxy.reference(&format!("corrupt/bydigest@{}", img.digest()));
    let before = env.snapshot();
    let s = expect_err(
        env.cri.pull(&r).await,
        "manifest that does not match its digest",
    );
    eprintln!("corrupt manifest: {:?}: {}", s.code(), s.message());
    env.assert_no_leaks_since(&before).await;
    proxy.clear();
    assert_eq!(
        env.cri
            .pull(&r)
            .await
            .expect("pull by digest once the manifest is right"),
        img.id()
    );
    env.finish().await;
}

// ----------------------------------------------------- transient failures

#[tokio::test]
async fn transient_5xx_on_a_blob_is_retried() {
    let (env, proxy) = proxied_env().await;
    let img = single_layer(Compression::Gzip);
    env.push("retry/5xx:1", &img).await;
    let layer = img.layers[0].blob.digest.clone();
    proxy.add(Rule::new(&layer, Fault::Status(503)).times(2));
    let id = env
        .cri
        .pull(&proxy.reference("retry/5xx:1"))
        .await
        .expect("pull must retry 503s");
    assert_eq!(id, img.id());
    assert!(
        proxy.count(&layer) >= 3,
        "layer asked {} times: {:?}",
        proxy.count(&layer),
        proxy.seen()
    );
    env.finish().await;
}

#[tokio::test]
async fn transient_5xx_on_the_manifest_is_retried() {
    let (env, proxy) = proxied_env().await;
    let img = single_layer(Compression::Gzip);
    env.push("retry/manifest:1", &img).await;
    proxy.add(Rule::new("/manifests/", Fault::Status(502)).times(1));
    let id = env
        .cri
        .pull(&proxy.reference("retry/manifest:1"))
        .await
        .expect("pull must retry a 502");
    assert_eq!(id, img.id());
    env.finish().await;
}

#[tokio::test]
async fn connection_cut_mid_blob_is_retried() {
    let (env, proxy) = proxied_env().await;
    let img = single_layer(Compression::Gzip);
    env.push("retry/cut:1", &img).await;
    let layer = img.layers[0].blob.digest.clone();
    proxy.add(Rule::new(&layer, Fault::DropAfter(200_000)).times(1));
    let id = env
        .cri
        .pull(&proxy.reference("retry/cut:1"))
        .await
        .expect("pull must retry a cut connection");
    assert_eq!(id, img.id());
    assert!(proxy.count_get(&layer) >= 2, "{:?}", proxy.seen());
    env.assert_no_temp_files();
    env.finish().await;
}

#[tokio::test]
async fn stalled_blob_fails_after_the_stall_timeout_and_keeps_nothing() {
    let (env, proxy) = proxied_env().await;
    let img = single_layer(Compression::Gzip);
    env.push("stall/img:1", &img).await;
    proxy.add(Rule::new(
        &img.layers[0].blob.digest,
        Fault::StallAfter(64 * 1024),
    ));
    let before = env.snapshot();
    let start = Instant::now();
    let res = tokio::time::timeout(
        Duration::from_secs(90),
        env.cri.pull(&proxy.reference("stall/img:1")),
    )
    .await
    .expect("a stalled pull must fail by itself (pull_stall_timeout = 2s), not hang");
    let s = expect_err(res, "pull of a stalled blob");
    eprintln!(
        "stalled pull failed after {:?}: {:?}: {}",
        start.elapsed(),
        s.code(),
        s.message()
    );
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "failed before the stall timeout"
    );
    proxy.break_stalled();
    env.assert_no_leaks_since(&before).await;
    assert!(env.cri.list_images(None).await.unwrap().is_empty());
    proxy.clear();
    assert_eq!(
        env.cri
            .pull(&proxy.reference("stall/img:1"))
            .await
            .expect("pull after the stall"),
        img.id()
    );
    env.finish().await;
}

// ---------------------------------------------------- parallel downloads

/// busybox + 4 layers of 64 KiB incompressible data.
fn wide_image(seed: &str) -> Image {
    let mut b = ImageBuilder::busybox(Format::Oci);
    for i in 0..4 {
        b = b.layer(images::random_layer(
            &format!("blob{i}"),
            &format!("{seed}{i}"),
            64 * 1024,
            Compression::Gzip,
            Format::Oci,
        ));
    }
    b.build()
}

/// Stall every layer (not the ~1 KiB config) after 16 KiB and count how many
/// are in flight at once; release until the pull is done.
async fn layers_in_flight(opts: BerthdOptions, expect: usize) -> usize {
    let reg = Registry::start().await.unwrap();
    let proxy = FaultProxy::start(&reg.host()).await.unwrap();
    let env = Env::start_with(reg, opts).await;
    let img = wide_image(&marker("wide"));
    env.push("wide/img:1", &img).await;
    for l in &img.layers {
        proxy.add(Rule::new(&l.blob.digest, Fault::StallAfter(16 * 1024)).times(1));
    }
    let cri = env.cri.clone();
    let r = proxy.reference("wide/img:1");
    let task = tokio::spawn(async move { cri.pull(&r).await });
    proxy
        .wait_stalled(expect, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("fewer than {expect} layer downloads at once: {e}"));
    // give any download beyond the limit time to show up
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let in_flight = proxy.stalled();
    let start = Instant::now();
    while !task.is_finished() && start.elapsed() < Duration::from_secs(60) {
        proxy.release_stalled();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = task
        .await
        .unwrap()
        .expect("pull after releasing the stalls");
    assert_eq!(id, img.id());
    env.finish().await;
    in_flight
}

#[tokio::test]
async fn layers_download_in_parallel_three_by_default() {
    let n = layers_in_flight(BerthdOptions::default(), 3).await;
    assert_eq!(n, 3, "default max_concurrent_downloads is 3");
}

#[tokio::test]
async fn max_concurrent_downloads_limits_parallel_layer_fetches() {
    let n = layers_in_flight(BerthdOptions::default().max_concurrent_downloads(1), 1).await;
    assert_eq!(n, 1, "max_concurrent_downloads = 1");
}

// ----------------------------------------------------- processes that die

#[tokio::test]
async fn registry_killed_mid_pull_fails_the_pull_and_a_pull_after_restart_works() {
    let (mut env, proxy) = proxied_env().await;
    let img = single_layer(Compression::Gzip);
    env.push("dies/img:1", &img).await;
    proxy.add(Rule::new(&img.layers[0].blob.digest, Fault::StallAfter(64 * 1024)).times(1));
    let cri = env.cri.clone();
    let r = proxy.reference("dies/img:1");
    let r2 = r.clone();
    let task = tokio::spawn(async move { cri.pull(&r2).await });
    proxy
        .wait_stalled(1, Duration::from_secs(30))
        .await
        .unwrap();

    env.registry.kill();
    proxy.break_stalled(); // the registry's connection dies with it
    let res = tokio::time::timeout(Duration::from_secs(90), task)
        .await
        .expect("pull from a dead registry must fail by itself")
        .unwrap();
    let s = expect_err(res, "pull while the registry is dead");
    eprintln!("registry killed: {:?}: {}", s.code(), s.message());
    assert!(
        env.cri.list_images(None).await.unwrap().is_empty(),
        "half image listed"
    );
    env.assert_no_temp_files();

    env.registry.restart().await.unwrap();
    assert_eq!(
        env.cri
            .pull(&r)
            .await
            .expect("pull after the registry restarted"),
        img.id()
    );
    env.finish().await;
}

#[tokio::test]
async fn berthd_sigkilled_mid_pull_restarts_clean_and_pulls_again() {
    let (mut env, proxy) = proxied_env().await;
    let img = images::marked_image(Format::Oci, Compression::Gzip, &marker("crash"));
    env.push("crash/img:1", &img).await;
    // stall the big layer: the small one and the config may well be done
    proxy.add(Rule::new(&img.layers[0].blob.digest, Fault::StallAfter(256 * 1024)).times(1));
    let cri = env.cri.clone();
    let r = proxy.reference("crash/img:1");
    let r2 = r.clone();
    let task = tokio::spawn(async move { cri.pull(&r2).await });
    proxy
        .wait_stalled(1, Duration::from_secs(30))
        .await
        .unwrap();

    env.berthd.kill();
    proxy.break_stalled();
    let res = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("client sees the death")
        .unwrap();
    assert!(
        res.is_err(),
        "pull answered Ok from a killed berthd: {res:?}"
    );
    proxy.clear();

    env.berthd
        .restart()
        .await
        .expect("berthd restarts on the same root and state");
    env.cri = env.berthd.cri().await.unwrap();
    let listed = env.cri.list_images(None).await.unwrap();
    assert!(
        listed.is_empty(),
        "half image listed after restart: {listed:?}"
    );
    assert!(env.cri.image(&r).await.unwrap().is_none());
    env.assert_no_temp_files();

    assert_eq!(
        env.cri.pull(&r).await.expect("pull again after the crash"),
        img.id()
    );
    // whatever the killed pull had stored is either reused or collected:
    // finish() removes the image and wants the root back at its baseline
    env.finish().await;
}

/// A long pull is not silent: every `pull_progress_interval` berthd logs
/// (info) the image, the bytes and the layers done. Here a layer stalls
/// after 64 KiB until released; the log shows the 64 KiB meanwhile.
#[tokio::test]
async fn a_long_pull_logs_its_progress() {
    let reg = Registry::start().await.unwrap();
    let proxy = FaultProxy::start(&reg.host()).await.unwrap();
    let env = Env::start_with(
        reg,
        BerthdOptions::default()
            .stall_timeout("60s")
            .extra_registry("pull_progress_interval = \"200ms\"\n"),
    )
    .await;
    let img = single_layer(Compression::Gzip);
    env.push("progress/img:1", &img).await;
    proxy.add(Rule::new(&img.layers[0].blob.digest, Fault::StallAfter(64 * 1024)).times(1));
    let cri = env.cri.clone();
    let r = proxy.reference("progress/img:1");
    let pull = tokio::spawn(async move { cri.pull(&r).await });
    let t = Instant::now();
    // The text log colours its fields: compare without the escapes.
    let plain = |s: &str| {
        let mut out = String::new();
        let mut it = s.chars();
        while let Some(c) = it.next() {
            if c == '\u{1b}' {
                for c in it.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    let line = loop {
        let log = plain(&env.berthd.log());
        if let Some(l) = log
            .lines()
            .find(|l| l.contains("pulling") && l.contains("bytes_done=65536"))
        {
            break l.to_string();
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no progress line:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(line.contains("progress/img:1"), "names the image: {line}");
    assert!(
        line.contains("layers_done=0") && line.contains("layers=1"),
        "{line}"
    );
    assert!(
        line.contains(&format!("bytes_total={}", img.layers[0].blob.size())),
        "{line}"
    );
    proxy.release_stalled();
    assert_eq!(pull.await.unwrap().expect("the pull, released"), img.id());
    env.finish().await;
}
