//! Checks of the harness itself, with a real docker-registry and no berthd:
//! images push and come back byte for byte, auth works, the fault proxy
//! does what it says, processes do not leak.

use std::time::Duration;

use berth_conformance::fault::{Fault, FaultProxy, Rule};
use berth_conformance::images::{
    self, Compression, Format, ImageBuilder, Platform, TarBuilder, media,
};
use berth_conformance::leak::{Snapshot, processes_for};
use berth_conformance::registry::{Credentials, Registry, RegistryClient};
use serde_json::Value;

#[tokio::test]
async fn registry_starts_answers_v2_and_dies_with_its_guard() {
    let reg = Registry::start().await.expect("registry");
    let pid = reg.pid().expect("pid");
    assert_eq!(reg.client().ping().await.unwrap(), 200);
    let procs = processes_for(&[reg.dir().to_path_buf()]);
    assert!(
        procs
            .iter()
            .any(|p| p.pid == pid as i32 && p.name == "docker-registry"),
        "{procs:?}"
    );
    let dir = reg.dir().to_path_buf();
    drop(reg);
    assert!(
        processes_for(std::slice::from_ref(&dir)).is_empty(),
        "registry survived its guard"
    );
    assert!(!dir.exists(), "registry temp dir left");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "registry pid {pid} not reaped"
    );
}

#[tokio::test]
async fn registry_restart_keeps_storage_and_port() {
    let mut reg = Registry::start().await.unwrap();
    let img = ImageBuilder::busybox(Format::Oci).build();
    let digest = reg.push("keep/me", "v1", &img).await.unwrap();
    let port = reg.port();
    reg.kill();
    assert!(!reg.is_running());
    assert!(
        reg.client().ping().await.is_err(),
        "a killed registry still answers"
    );
    reg.restart().await.unwrap();
    assert_eq!(reg.port(), port);
    let (_, got, body) = reg.client().get_manifest("keep/me", "v1").await.unwrap();
    assert_eq!(got, digest);
    assert_eq!(body, img.manifest.data.to_vec());
}

async fn round_trip(reg: &Registry, repo: &str, img: &images::Image) {
    let c = reg.client();
    let digest = reg.push(repo, "t", img).await.unwrap();
    assert_eq!(digest, img.digest());
    let (ct, d, body) = c.get_manifest(repo, "t").await.unwrap();
    assert_eq!(ct, img.manifest.media_type);
    assert_eq!(d, img.digest());
    assert_eq!(body, img.manifest.data.to_vec());
    let (_, _, by_digest) = c.get_manifest(repo, img.digest()).await.unwrap();
    assert_eq!(by_digest, body);
    assert_eq!(
        c.get_blob(repo, img.id()).await.unwrap(),
        img.config.data.to_vec()
    );
    // each distinct layer is checked once (sha256 and inflate are slow in
    // debug builds, and most test images share the busybox layer)
    static CHECKED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    for l in &img.layers {
        if CHECKED.lock().unwrap().contains(&l.blob.digest) {
            continue;
        }
        CHECKED.lock().unwrap().push(l.blob.digest.clone());
        let blob = c.get_blob(repo, &l.blob.digest).await.unwrap();
        assert_eq!(images::digest(&blob), l.blob.digest);
        let tar = match l.compression {
            Compression::Gzip => {
                use std::io::Read;
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&blob[..])
                    .read_to_end(&mut out)
                    .unwrap();
                out
            }
            Compression::Zstd => zstd::decode_all(&blob[..]).unwrap(),
            Compression::None => blob,
        };
        assert_eq!(
            images::digest(&tar),
            l.diff_id,
            "diff_id of {}",
            l.blob.digest
        );
    }
}

#[tokio::test]
async fn every_test_image_kind_pushes_and_reads_back() {
    let reg = Registry::start().await.unwrap();
    round_trip(
        &reg,
        "kinds/docker",
        &ImageBuilder::busybox(Format::Docker).build(),
    )
    .await;
    round_trip(
        &reg,
        "kinds/oci",
        &ImageBuilder::busybox(Format::Oci).build(),
    )
    .await;
    round_trip(
        &reg,
        "kinds/whiteouts",
        &images::whiteout_image(Format::Oci, "m1"),
    )
    .await;
    round_trip(
        &reg,
        "kinds/configured",
        &images::configured_image(Format::Docker, "app"),
    )
    .await;
    round_trip(
        &reg,
        "kinds/zstd",
        &images::marked_image(Format::Oci, Compression::Zstd, "z"),
    )
    .await;
    round_trip(
        &reg,
        "kinds/plain",
        &images::marked_image(Format::Oci, Compression::None, "p"),
    )
    .await;
    round_trip(
        &reg,
        "kinds/plain-docker",
        &images::marked_image(Format::Docker, Compression::None, "p"),
    )
    .await;
    let outside = std::path::Path::new("/nonexistent/outside");
    for (name, tar) in [
        ("dotdot", images::hostile::dotdot(outside)),
        (
            "symlink",
            images::hostile::write_through_absolute_symlink(outside),
        ),
        ("hardlink", images::hostile::hardlink_outside(outside)),
        ("devalias", images::hostile::device_number_alias()),
        ("longname", images::hostile::huge_gnu_longname(1 << 20)),
    ] {
        round_trip(
            &reg,
            &format!("hostile/{name}"),
            &images::hostile::image(tar, Format::Oci),
        )
        .await;
    }
}

#[tokio::test]
async fn indexes_push_with_their_platform_images() {
    let reg = Registry::start().await.unwrap();
    for format in [Format::Docker, Format::Oci] {
        let amd64 = ImageBuilder::busybox(format)
            .label("which", "amd64")
            .build();
        let index = images::multi_platform_index(format, amd64.clone());
        let digest = reg
            .push_index("multi/arch", "latest", &index)
            .await
            .unwrap();
        assert_eq!(digest, index.digest());
        let (ct, _, body) = reg
            .client()
            .get_manifest("multi/arch", "latest")
            .await
            .unwrap();
        let want = if format == Format::Docker {
            media::DOCKER_MANIFEST_LIST
        } else {
            media::OCI_INDEX
        };
        assert_eq!(ct, want);
        let v: Value = serde_json::from_slice(&body).unwrap();
        let entries = v["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[2]["platform"]["architecture"], "amd64");
        assert_eq!(entries[2]["digest"], amd64.digest());
        assert_eq!(entries[1]["platform"]["variant"], "v7");
        assert_eq!(
            index.image_for(&Platform::linux_amd64()).unwrap().id(),
            amd64.id()
        );
    }
}

#[tokio::test]
async fn htpasswd_registry_needs_credentials_over_plain_http() {
    let reg = Registry::start_with_auth("alice", "s3cret").await.unwrap();
    let anon = RegistryClient::new(&reg.url(), None);
    assert_eq!(anon.ping().await.unwrap(), 401);
    let wrong = RegistryClient::new(&reg.url(), Some(Credentials::new("alice", "nope")));
    assert_eq!(wrong.ping().await.unwrap(), 401);
    assert_eq!(reg.client().ping().await.unwrap(), 200);
    let img = ImageBuilder::busybox(Format::Oci).build();
    reg.push("private/busybox", "1", &img).await.unwrap();
    assert!(anon.get_manifest("private/busybox", "1").await.is_err());
    reg.client()
        .get_manifest("private/busybox", "1")
        .await
        .unwrap();
    assert_eq!(
        Credentials::new("alice", "s3cret").auth_field(),
        "YWxpY2U6czNjcmV0"
    );
}

async fn proxied() -> (Registry, FaultProxy, images::Image, RegistryClient) {
    let reg = Registry::start().await.unwrap();
    let img = images::marked_image(Format::Oci, Compression::None, "proxied");
    reg.push("via/proxy", "v1", &img).await.unwrap();
    let proxy = FaultProxy::start(&reg.host()).await.unwrap();
    let client = RegistryClient::new(&proxy.url(), None);
    (reg, proxy, img, client)
}

#[tokio::test]
async fn fault_proxy_passes_through_and_counts() {
    let (_reg, proxy, img, c) = proxied().await;
    let blob = c
        .get_blob("via/proxy", &img.layers[0].blob.digest)
        .await
        .unwrap();
    assert_eq!(images::digest(&blob), img.layers[0].blob.digest);
    let (_, d, _) = c.get_manifest("via/proxy", "v1").await.unwrap();
    assert_eq!(d, img.digest());
    assert_eq!(proxy.count_get(&img.layers[0].blob.digest), 1);
    assert_eq!(proxy.count("/manifests/v1"), 1);
}

#[tokio::test]
async fn fault_proxy_corrupts_one_byte_keeping_length() {
    let (_reg, proxy, img, c) = proxied().await;
    let d = img.layers[0].blob.digest.clone();
    proxy.add(Rule::new(&d, Fault::Corrupt).times(1));
    let bad = c.get_blob("via/proxy", &d).await.unwrap();
    assert_eq!(bad.len(), img.layers[0].blob.data.len());
    let diff = bad
        .iter()
        .zip(img.layers[0].blob.data.iter())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(diff, 1);
    let good = c.get_blob("via/proxy", &d).await.unwrap();
    assert_eq!(images::digest(&good), d, "times(1) must wear off");
}

#[tokio::test]
async fn fault_proxy_answers_status_then_passes() {
    let (_reg, proxy, img, c) = proxied().await;
    let d = img.layers[0].blob.digest.clone();
    proxy.add(Rule::new(&d, Fault::Status(503)).times(2));
    assert!(c.get_blob("via/proxy", &d).await.is_err());
    assert!(c.get_blob("via/proxy", &d).await.is_err());
    assert!(c.get_blob("via/proxy", &d).await.is_ok());
    let statuses: Vec<u16> = proxy.seen().iter().map(|s| s.status).collect();
    assert_eq!(statuses, vec![503, 503, 200]);
}

#[tokio::test]
async fn fault_proxy_drops_after_n_bytes() {
    let (_reg, proxy, img, _) = proxied().await;
    let d = img.layers[0].blob.digest.clone();
    proxy.add(Rule::new(&d, Fault::DropAfter(100_000)).times(1));
    let resp = reqwest::get(format!("{}/v2/via/proxy/blobs/{d}", proxy.url()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = 0usize;
    let mut resp = resp;
    let err = loop {
        match resp.chunk().await {
            Ok(Some(c)) => got += c.len(),
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    assert!(
        err.is_some(),
        "body must end in an error, got {got} bytes cleanly"
    );
    assert_eq!(got, 100_000);
}

#[tokio::test]
async fn fault_proxy_stalls_until_released_or_broken() {
    let (_reg, proxy, img, _) = proxied().await;
    let d = img.layers[0].blob.digest.clone();
    let total = img.layers[0].blob.data.len();
    proxy.add(Rule::new(&d, Fault::StallAfter(65_536)).times(2));
    let url = format!("{}/v2/via/proxy/blobs/{d}", proxy.url());

    // released: the whole body arrives, intact
    let u = url.clone();
    let t = tokio::spawn(async move { reqwest::get(u).await.unwrap().bytes().await.unwrap() });
    proxy
        .wait_stalled(1, Duration::from_secs(10))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!t.is_finished(), "a stalled body finished");
    proxy.release_stalled();
    let body = tokio::time::timeout(Duration::from_secs(10), t)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body.len(), total);
    assert_eq!(images::digest(&body), d);

    // broken: the client sees an error after the first bytes
    let t = tokio::spawn(async move { reqwest::get(url).await.unwrap().bytes().await });
    proxy
        .wait_stalled(2, Duration::from_secs(10))
        .await
        .unwrap();
    proxy.break_stalled();
    let r = tokio::time::timeout(Duration::from_secs(10), t)
        .await
        .unwrap()
        .unwrap();
    assert!(r.is_err(), "a broken stall must fail the body");
}

#[tokio::test]
async fn fault_proxy_cuts_connections_when_the_registry_is_dead() {
    let (mut reg, proxy, img, c) = proxied().await;
    reg.kill();
    assert!(
        c.get_blob("via/proxy", &img.layers[0].blob.digest)
            .await
            .is_err()
    );
    reg.restart().await.unwrap();
    assert!(
        c.get_blob("via/proxy", &img.layers[0].blob.digest)
            .await
            .is_ok()
    );
    assert_eq!(proxy.seen()[0].status, 0);
}

#[tokio::test]
async fn hostile_tar_headers_say_what_they_should() {
    let outside = std::path::Path::new("/x/outside");
    let tar = images::hostile::dotdot(outside).finish();
    // third entry (after ok/ and ok/fine.txt) has a GNU long name with ..
    let name_block = String::from_utf8_lossy(&tar[512 * 4..512 * 5]);
    assert!(name_block.starts_with("../../"), "{name_block}");
    let tar = images::hostile::device_number_alias().finish();
    assert_eq!(tar[512 * 3 + 156], b'4');
    assert_eq!(&tar[512 * 3 + 329..512 * 3 + 336], b"0010010");
    let tar = images::hostile::huge_gnu_longname(5000).finish();
    assert_eq!(tar[512 * 3 + 156], b'L');
    let layer = TarBuilder::new()
        .char_device("c", 1, 3)
        .layer(Compression::Gzip, Format::Oci);
    assert_eq!(layer.blob.media_type, media::OCI_LAYER_GZIP);
}

#[tokio::test]
async fn snapshot_sees_new_files_and_ignores_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("content")).unwrap();
    let before = Snapshot::take(
        &[dir.path().to_path_buf()],
        std::slice::from_ref(&root),
        &[],
    );
    std::fs::write(root.join("meta.redb"), b"db").unwrap();
    assert!(before.retake().leaks_since(&before).is_empty());
    std::fs::write(root.join("content/blob"), b"x").unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::write(root.join("tmp/partial"), b"x").unwrap();
    let leaks = before.retake().leaks_since(&before);
    assert_eq!(leaks.files.len(), 2, "{leaks}");
    assert_eq!(leaks.temp_files.len(), 1, "{leaks}");
}

#[tokio::test]
async fn snapshot_sees_a_new_cgroup_below_the_parent() {
    let parent = format!("berth-test-{}", berth_conformance::util::unique_suffix());
    // The first hierarchy the node mounts (cgroup2's root, or a v1 one).
    let hierarchy = [
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup",
    ]
    .into_iter()
    .map(std::path::Path::new)
    .find(|p| p.join("cgroup.procs").exists())
    .expect("a mounted cgroup hierarchy");
    let top = hierarchy.join(&parent);
    std::fs::create_dir(&top).unwrap();
    let before = Snapshot::take(&[], &[], std::slice::from_ref(&parent));
    assert!(before.cgroups.is_empty(), "{:?}", before.cgroups);
    std::fs::create_dir(top.join("pod")).unwrap();
    let leaks = before.retake().leaks_since(&before);
    let _ = std::fs::remove_dir(top.join("pod"));
    let _ = std::fs::remove_dir(&top);
    assert_eq!(leaks.cgroups, vec![top.join("pod")], "{leaks}");
    assert!(leaks.to_string().contains("leaked cgroup"), "{leaks}");
}
