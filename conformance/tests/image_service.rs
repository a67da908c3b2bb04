//! ImageService scenarios: a real registry, a real berthd, the CRI socket.
//! Every scenario ends with `env.finish()`: all images removed, root and
//! state back to their baseline, berthd exits 0 on SIGTERM, nothing left.

mod common;

use std::os::unix::fs::MetadataExt;

use berth_conformance::berthd::BerthdOptions;
use berth_conformance::cri::{auth_basic, auth_field, sandbox_config};
use berth_conformance::fault::FaultProxy;
use berth_conformance::images::{self, Compression, Format, ImageBuilder, TarBuilder};
use berth_conformance::inspect;
use berth_conformance::registry::{Credentials, Registry};
use berth_conformance::{Env, util};
use common::*;
use serde_json::Value;
use tonic::Code;

// ------------------------------------------------------------------ pulls

#[tokio::test]
async fn pull_by_tag_returns_the_image_id_and_status_describes_it() {
    let env = Env::start().await;
    let img = ImageBuilder::busybox(Format::Oci).build();
    let r = env.push("app/busybox:1.0", &img).await;

    let id = env.cri.pull(&r).await.expect("PullImage by tag");
    assert_eq!(
        id,
        img.id(),
        "image_ref must be the image id (config digest)"
    );

    let st = env
        .cri
        .image(&r)
        .await
        .unwrap()
        .expect("ImageStatus after pull");
    assert_eq!(st.id, img.id());
    assert!(
        st.repo_tags.contains(&r),
        "repo_tags {:?} lack {r}",
        st.repo_tags
    );
    let by_digest = env.reference(&format!("app/busybox@{}", img.digest()));
    assert!(
        st.repo_digests.contains(&by_digest),
        "repo_digests {:?} lack {by_digest}",
        st.repo_digests
    );
    assert!(st.size > 0, "size must be > 0");
    assert!(!st.pinned);
    // lookups by id and by digest find the same image
    assert_eq!(
        env.cri
            .image(img.id())
            .await
            .unwrap()
            .expect("status by id")
            .id,
        img.id()
    );
    assert_eq!(
        env.cri
            .image(&by_digest)
            .await
            .unwrap()
            .expect("status by digest")
            .id,
        img.id()
    );
    env.finish().await;
}

#[tokio::test]
async fn pull_by_tag_then_by_digest_is_one_image() {
    let env = Env::start().await;
    let img = ImageBuilder::busybox(Format::Docker).build();
    let by_tag = env.push("app/one:v1", &img).await;
    let by_digest = env.reference(&format!("app/one@{}", img.digest()));

    let a = env.cri.pull(&by_tag).await.expect("pull by tag");
    let b = env.cri.pull(&by_digest).await.expect("pull by digest");
    assert_eq!(a, b);
    let list = env.cri.list_images(None).await.unwrap();
    let same = with_id(&list, img.id());
    assert_eq!(same.len(), 1, "one image expected, got {list:?}");
    assert!(same[0].repo_tags.contains(&by_tag));
    assert!(same[0].repo_digests.contains(&by_digest));
    env.finish().await;
}

#[tokio::test]
async fn pull_by_digest_first_then_tag_is_one_image() {
    let env = Env::start().await;
    let img = ImageBuilder::busybox(Format::Oci)
        .label("order", "digest-first")
        .build();
    let by_tag = env.push("app/two:v2", &img).await;
    let by_digest = env.reference(&format!("app/two@{}", img.digest()));
    env.cri.pull(&by_digest).await.expect("pull by digest");
    let st = env
        .cri
        .image(&by_digest)
        .await
        .unwrap()
        .expect("status by digest");
    assert!(
        !st.repo_tags.contains(&by_tag),
        "no tag was pulled yet: {:?}",
        st.repo_tags
    );
    env.cri.pull(&by_tag).await.expect("pull by tag");
    let list = env.cri.list_images(None).await.unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert!(list[0].repo_tags.contains(&by_tag));
    env.finish().await;
}

#[tokio::test]
async fn pull_by_name_alone_means_latest() {
    let env = Env::start().await;
    let img = ImageBuilder::busybox(Format::Oci).build();
    env.push("app/plain:latest", &img).await;
    let id = env
        .cri
        .pull(&env.reference("app/plain"))
        .await
        .expect("pull by name only");
    assert_eq!(id, img.id());
    let st = env
        .cri
        .image(&env.reference("app/plain:latest"))
        .await
        .unwrap()
        .expect("status");
    assert!(
        st.repo_tags.contains(&env.reference("app/plain:latest")),
        "{:?}",
        st.repo_tags
    );
    assert!(
        env.cri
            .image(&env.reference("app/plain"))
            .await
            .unwrap()
            .is_some(),
        "status by name alone"
    );
    env.finish().await;
}

#[tokio::test]
async fn pull_by_tag_and_digest_together_uses_the_digest() {
    let env = Env::start().await;
    let img = ImageBuilder::busybox(Format::Oci).build();
    let other = ImageBuilder::busybox(Format::Oci)
        .label("other", "yes")
        .build();
    env.push("app/both:v1", &img).await;
    // the tag now names another image: the digest must win
    env.push("app/both:v1", &other).await;
    let r = env.reference(&format!("app/both:v1@{}", img.digest()));
    let id = env.cri.pull(&r).await.expect("pull name:tag@digest");
    assert_eq!(id, img.id());
    let st = env.cri.image(img.id()).await.unwrap().expect("status");
    assert!(
        st.repo_digests
            .contains(&env.reference(&format!("app/both@{}", img.digest()))),
        "{:?}",
        st.repo_digests
    );
    env.finish().await;
}

#[tokio::test]
async fn pull_with_a_sandbox_config_like_kubelet() {
    let env = Env::start().await;
    let img = ImageBuilder::busybox(Format::Oci).build();
    let r = env.push("app/for-pod:1", &img).await;
    let id = env
        .cri
        .pull_for_pod(&r, sandbox_config("pod-a"))
        .await
        .expect("pull with sandbox_config");
    assert_eq!(id, img.id());
    // ImageSpec.runtime_handler names a handler berth has not: refused,
    // and nothing is pulled.
    let other = env.push("app/for-handler:1", &img).await;
    let e = env
        .cri
        .image
        .clone()
        .pull_image(berth_cri_api::v1::PullImageRequest {
            image: Some(berth_cri_api::v1::ImageSpec {
                image: other.clone(),
                runtime_handler: "kata".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let s = expect_code(e, &[Code::InvalidArgument], "an unknown runtime handler");
    assert!(s.message().contains("kata"), "{}", s.message());
    assert!(
        env.cri
            .image_status(&other, false)
            .await
            .unwrap()
            .image
            .is_none(),
        "nothing was pulled"
    );
    env.finish().await;
}

#[tokio::test]
async fn pulling_an_image_already_present_only_records_the_new_tag() {
    let reg = Registry::start().await.unwrap();
    let proxy = FaultProxy::start(&reg.host()).await.unwrap();
    let env = Env::start_with(reg, BerthdOptions::default()).await;
    let img = ImageBuilder::busybox(Format::Oci).build();
    env.push("app/tags:a", &img).await;
    env.push("app/tags:b", &img).await;
    env.cri
        .pull(&proxy.reference("app/tags:a"))
        .await
        .expect("pull a");
    env.cri
        .pull(&proxy.reference("app/tags:b"))
        .await
        .expect("pull b");
    let layer = &img.layers[0].blob.digest;
    assert_eq!(
        proxy.count_get(layer),
        1,
        "layer fetched again for a second tag: {:?}",
        proxy.seen()
    );
    assert!(
        proxy.count_get(img.id()) <= 1,
        "config fetched again: {:?}",
        proxy.seen()
    );
    let list = env.cri.list_images(None).await.unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    for t in ["app/tags:a", "app/tags:b"] {
        assert!(
            list[0].repo_tags.contains(&proxy.reference(t)),
            "{:?} lacks {t}",
            list[0].repo_tags
        );
    }
    env.finish().await;
}

#[tokio::test]
async fn concurrent_pulls_fetch_a_shared_layer_once() {
    let reg = Registry::start().await.unwrap();
    let proxy = FaultProxy::start(&reg.host()).await.unwrap();
    let env = Env::start_with(reg, BerthdOptions::default()).await;
    let a = images::marked_image(Format::Oci, Compression::Gzip, &marker("a"));
    let b = images::marked_image(Format::Oci, Compression::Gzip, &marker("b"));
    env.push("share/a:1", &a).await;
    env.push("share/b:1", &b).await;
    let (ra, rb) = (proxy.reference("share/a:1"), proxy.reference("share/b:1"));
    let (x, y) = tokio::join!(env.cri.pull(&ra), env.cri.pull(&rb));
    assert_eq!(x.expect("pull a"), a.id());
    assert_eq!(y.expect("pull b"), b.id());
    let base = &a.layers[0].blob.digest;
    assert_eq!(base, &b.layers[0].blob.digest);
    assert_eq!(
        proxy.count_get(base),
        1,
        "shared layer fetched more than once: {:?}",
        proxy.seen()
    );
    env.finish().await;
}

#[tokio::test]
async fn same_image_pulled_twice_at_once_is_one_image_fetched_once() {
    let reg = Registry::start().await.unwrap();
    let proxy = FaultProxy::start(&reg.host()).await.unwrap();
    let env = Env::start_with(reg, BerthdOptions::default()).await;
    let img = ImageBuilder::busybox(Format::Oci)
        .label("twice", "1")
        .build();
    env.push("twice/img:1", &img).await;
    let r = proxy.reference("twice/img:1");
    let (x, y) = tokio::join!(env.cri.pull(&r), env.cri.pull(&r));
    assert_eq!(x.expect("first"), img.id());
    assert_eq!(y.expect("second"), img.id());
    assert_eq!(
        proxy.count_get(&img.layers[0].blob.digest),
        1,
        "{:?}",
        proxy.seen()
    );
    assert_eq!(env.cri.list_images(None).await.unwrap().len(), 1);
    env.finish().await;
}

// ------------------------------------------------- names, mirrors, Docker Hub

#[tokio::test]
async fn docker_hub_short_names_are_normalised_through_a_docker_io_mirror() {
    let reg = Registry::start().await.unwrap();
    let opts = BerthdOptions::default().mirror("docker.io", &[&reg.url()]);
    let env = Env::start_with(reg, opts).await;
    let img = ImageBuilder::busybox(Format::Docker).build();
    env.push("library/busybox:latest", &img).await;
    let tool = ImageBuilder::busybox(Format::Oci)
        .label("tool", "1")
        .build();
    env.push("someone/tool:1", &tool).await;

    let id = env
        .cri
        .pull("busybox")
        .await
        .expect("pull busybox via the docker.io mirror");
    assert_eq!(id, img.id());
    let st = env
        .cri
        .image("busybox")
        .await
        .unwrap()
        .expect("status of busybox");
    assert!(
        st.repo_tags
            .contains(&"docker.io/library/busybox:latest".to_string()),
        "{:?}",
        st.repo_tags
    );
    for name in [
        "busybox:latest",
        "docker.io/library/busybox",
        "docker.io/library/busybox:latest",
        "library/busybox",
    ] {
        let s = env.cri.image(name).await.unwrap();
        assert_eq!(
            s.map(|s| s.id),
            Some(img.id().to_string()),
            "ImageStatus({name})"
        );
    }
    let id = env
        .cri
        .pull("someone/tool:1")
        .await
        .expect("pull user/repo via the mirror");
    assert_eq!(id, tool.id());
    let st = env.cri.image(tool.id()).await.unwrap().unwrap();
    assert!(
        st.repo_tags
            .contains(&"docker.io/someone/tool:1".to_string()),
        "{:?}",
        st.repo_tags
    );
    env.finish().await;
}

#[tokio::test]
async fn pull_through_a_configured_mirror_keeps_the_repository_path() {
    let reg = Registry::start().await.unwrap();
    let opts = BerthdOptions::default().mirror("registry.k8s.io", &[&reg.url()]);
    let env = Env::start_with(reg, opts).await;
    let pause = ImageBuilder::busybox(Format::Oci)
        .cmd(&["sleep", "3600"])
        .build();
    let agnhost = ImageBuilder::busybox(Format::Oci)
        .label("agnhost", "2.53")
        .build();
    env.push("pause:3.10", &pause).await;
    env.push("e2e-test-images/agnhost:2.53", &agnhost).await;

    assert_eq!(
        env.cri
            .pull("registry.k8s.io/pause:3.10")
            .await
            .expect("pull pause via mirror"),
        pause.id()
    );
    assert_eq!(
        env.cri
            .pull("registry.k8s.io/e2e-test-images/agnhost:2.53")
            .await
            .expect("pull agnhost via mirror"),
        agnhost.id()
    );
    let st = env
        .cri
        .image("registry.k8s.io/pause:3.10")
        .await
        .unwrap()
        .expect("status");
    assert!(
        st.repo_tags
            .contains(&"registry.k8s.io/pause:3.10".to_string()),
        "tags name the upstream host: {:?}",
        st.repo_tags
    );
    assert!(
        !st.repo_tags.iter().any(|t| t.starts_with("127.0.0.1")),
        "tags must not name the mirror: {:?}",
        st.repo_tags
    );
    env.finish().await;
}

#[tokio::test]
async fn mirrors_are_tried_in_order() {
    let reg = Registry::start().await.unwrap();
    let dead = format!("http://127.0.0.1:{}", util::free_port().unwrap());
    let opts = BerthdOptions::default().mirror("registry.k8s.io", &[&dead, &reg.url()]);
    let env = Env::start_with(reg, opts).await;
    let img = ImageBuilder::busybox(Format::Oci).build();
    env.push("pause:3.10", &img).await;
    let id = env
        .cri
        .pull("registry.k8s.io/pause:3.10")
        .await
        .expect("second mirror must serve after a dead first");
    assert_eq!(id, img.id());
    env.finish().await;
}

#[tokio::test]
async fn registry_named_localhost_and_listed_insecure_pulls_over_http() {
    // A host listed in `insecure` is pulled over plain HTTP. The only
    // registries a test may reach are on loopback, which is plain HTTP
    // anyway; this checks that a host *name* (not 127.0.0.1) listed in
    // `insecure` works.
    let reg = Registry::start().await.unwrap();
    let host = format!("localhost:{}", reg.port());
    let opts = BerthdOptions::default().insecure(&host);
    let env = Env::start_with(reg, opts).await;
    let img = ImageBuilder::busybox(Format::Oci).build();
    env.push("insecure/img:1", &img).await;
    let id = env
        .cri
        .pull(&format!("{host}/insecure/img:1"))
        .await
        .expect("pull from an insecure host");
    assert_eq!(id, img.id());
    env.finish().await;
}

// ----------------------------------------------------- manifests and indexes

async fn pull_format(format: Format) {
    let env = Env::start().await;
    let img = ImageBuilder::busybox(format).build();
    let r = env.push("fmt/img:1", &img).await;
    assert_eq!(env.cri.pull(&r).await.expect("pull"), img.id());
    assert!(
        !inspect::files_with_content(&env.berthd.root(), images::busybox_binary()).is_empty(),
        "busybox not unpacked"
    );
    env.finish().await;
}

#[tokio::test]
async fn docker_schema2_image_pulls() {
    pull_format(Format::Docker).await;
}

#[tokio::test]
async fn oci_image_pulls() {
    pull_format(Format::Oci).await;
}

async fn index_resolves_linux_amd64(format: Format) {
    let env = Env::start().await;
    let amd64 = ImageBuilder::busybox(format).label("arch", "amd64").build();
    let index = images::multi_platform_index(format, amd64.clone());
    let r = env.push_index("multi/arch:1", &index).await;
    let id = env.cri.pull(&r).await.expect("pull an index");
    assert_eq!(id, amd64.id(), "the linux/amd64 image must be chosen");
    let st = env.cri.image(&r).await.unwrap().expect("status");
    assert_eq!(st.id, amd64.id());
    // the arm fakes were not unpacked
    assert!(
        inspect::entries_named(&env.berthd.root(), "platform.txt").is_empty(),
        "a foreign platform was unpacked"
    );
    // pull by the index digest: same image
    let by_index = env.reference(&format!("multi/arch@{}", index.digest()));
    assert_eq!(
        env.cri.pull(&by_index).await.expect("pull by index digest"),
        amd64.id()
    );
    assert_eq!(env.cri.list_images(None).await.unwrap().len(), 1);
    env.finish().await;
}

#[tokio::test]
async fn docker_manifest_list_resolves_to_linux_amd64() {
    index_resolves_linux_amd64(Format::Docker).await;
}

#[tokio::test]
async fn oci_index_resolves_to_linux_amd64() {
    index_resolves_linux_amd64(Format::Oci).await;
}

#[tokio::test]
async fn index_without_linux_amd64_is_refused() {
    let env = Env::start().await;
    let index = images::Index::new(
        Format::Oci,
        vec![
            images::fake_platform_image(Format::Oci, images::Platform::linux_arm64()),
            images::fake_platform_image(Format::Oci, images::Platform::linux_arm_v7()),
        ],
    );
    let r = env.push_index("multi/armonly:1", &index).await;
    let before = env.snapshot();
    let s = expect_err(env.cri.pull(&r).await, "pull an index with no linux/amd64");
    assert_ne!(s.code(), Code::Ok);
    env.assert_no_leaks_since(&before).await;
    assert!(env.cri.list_images(None).await.unwrap().is_empty());
    env.finish().await;
}

// ------------------------------------------------------------------ layers

async fn layer_unpacks(compression: Compression, format: Format) {
    let env = Env::start().await;
    let m = marker(&format!("{compression:?} layer"));
    let img = images::marked_image(format, compression, &m);
    let r = env.push("layers/img:1", &img).await;
    assert_eq!(env.cri.pull(&r).await.expect("pull"), img.id());
    let root = env.berthd.root();
    assert!(
        !inspect::files_with_content(&root, m.as_bytes()).is_empty(),
        "marker file not unpacked"
    );
    let bins = inspect::files_with_content(&root, images::busybox_binary());
    assert!(!bins.is_empty(), "busybox not unpacked");
    env.finish().await;
}

#[tokio::test]
async fn gzip_layers_unpack() {
    layer_unpacks(Compression::Gzip, Format::Oci).await;
}

#[tokio::test]
async fn zstd_layers_unpack() {
    layer_unpacks(Compression::Zstd, Format::Oci).await;
}

#[tokio::test]
async fn uncompressed_oci_layers_unpack() {
    layer_unpacks(Compression::None, Format::Oci).await;
}

#[tokio::test]
async fn uncompressed_docker_layers_unpack() {
    layer_unpacks(Compression::None, Format::Docker).await;
}

#[tokio::test]
async fn hardlinked_applets_stay_hard_links() {
    let env = Env::start().await;
    let img = ImageBuilder::busybox(Format::Oci).build();
    let r = env.push("links/busybox:1", &img).await;
    env.cri.pull(&r).await.expect("pull");
    let applets = images::busybox_applets().len() as u64;
    let bins = inspect::files_with_content(&env.berthd.root(), images::busybox_binary());
    let linked = bins
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .any(|m| m.nlink() > applets);
    assert!(
        linked,
        "no unpacked bin/busybox with more than {applets} links: {bins:?}"
    );
    // and no symlink stands in for an applet
    let sh = inspect::entries_ending_with(&env.berthd.root(), "bin/sh");
    assert!(!sh.is_empty(), "bin/sh not unpacked");
    for p in sh {
        let md = std::fs::symlink_metadata(&p).unwrap();
        assert!(
            md.is_file(),
            "{} is not a regular file (hard link)",
            p.display()
        );
    }
    env.finish().await;
}

#[tokio::test]
async fn whiteouts_and_opaque_dirs_become_overlay_whiteouts() {
    use images::whiteout_image::*;
    let env = Env::start().await;
    let m = marker("whiteout");
    let img = images::whiteout_image(Format::Oci, &m);
    let r = env.push("wh/img:1", &img).await;
    assert_eq!(env.cri.pull(&r).await.expect("pull"), img.id());
    let root = env.berthd.root();
    assert!(
        !inspect::whiteouts_named(&root, "removed-file").is_empty(),
        "no 0/0 char device for {REMOVED_FILE}"
    );
    assert!(
        !inspect::whiteouts_named(&root, "gone-dir").is_empty(),
        "no 0/0 char device for {REMOVED_DIR}"
    );
    assert!(
        !inspect::opaque_dirs_named(&root, OPAQUE_DIR).is_empty(),
        "no opaque xattr on {OPAQUE_DIR}/"
    );
    assert!(
        inspect::entries_named(&root, ".wh.removed-file").is_empty(),
        ".wh. file kept as is"
    );
    assert!(
        inspect::entries_named(&root, ".wh..wh..opq").is_empty(),
        "opaque marker kept as a file"
    );
    assert!(
        !inspect::files_with_content(&root, format!("new {m}\n").as_bytes()).is_empty(),
        "{NEW_FILE} not unpacked"
    );
    assert!(
        !inspect::entries_ending_with(&root, KEPT_FILE).is_empty(),
        "{KEPT_FILE} not unpacked"
    );
    // A whiteout never hides its own layer's entry: layer 2's directory
    // stays, made opaque so that layer 1's contents stay hidden.
    assert!(
        inspect::whiteouts_named(&root, RECREATED_DIR).is_empty(),
        "the whiteout of {RECREATED_DIR} hid layer 2's own directory"
    );
    assert!(
        !inspect::opaque_dirs_named(&root, RECREATED_DIR).is_empty(),
        "{RECREATED_DIR}/ of layer 2 not opaque"
    );
    assert!(
        !inspect::files_with_content(&root, format!("recreated {m}\n").as_bytes()).is_empty(),
        "{RECREATED_NEW} not unpacked"
    );
    env.finish().await;
}

#[tokio::test]
async fn image_with_device_nodes_pulls_and_its_nodes_are_private_to_root() {
    use images::devices_image::*;
    let env = Env::start().await;
    let img = images::devices_image(Format::Oci);
    let r = env.push("dev/nodes:1", &img).await;
    assert_eq!(env.cri.pull(&r).await.expect("pull"), img.id());
    let st = env.cri.image(&r).await.unwrap().expect("ImageStatus");
    assert_eq!(st.id, img.id());

    let root = env.berthd.root();
    for (path, numbers, mode, block) in [
        (BLOCK, BLOCK_NUMBERS, 0o660, true),
        (CHAR, CHAR_NUMBERS, 0o666, false),
    ] {
        let found = inspect::entries_ending_with(&root, path);
        assert_eq!(found.len(), 1, "{path}: {found:?}");
        let md = std::fs::symlink_metadata(&found[0]).unwrap();
        use std::os::unix::fs::FileTypeExt;
        let ft = md.file_type();
        assert!(
            if block {
                ft.is_block_device()
            } else {
                ft.is_char_device()
            },
            "{path}: {ft:?}"
        );
        assert_eq!(
            md.rdev(),
            rustix::fs::makedev(numbers.0, numbers.1),
            "{path}"
        );
        assert_eq!(md.mode() & 0o7777, mode, "{path}");
        // Other users of the node must not reach it through the host path:
        // some directory on the way is closed to them.
        let closed = found[0]
            .ancestors()
            .skip(1)
            .any(|d| std::fs::metadata(d).is_ok_and(|m| m.is_dir() && m.mode() & 0o011 == 0));
        assert!(closed, "{} is reachable by other users", found[0].display());
    }
    env.finish().await;
}

// ------------------------------------------------------------ image status

#[tokio::test]
async fn image_status_reports_username_from_the_config_user() {
    let env = Env::start().await;
    let img = images::configured_image(Format::Oci, "app");
    let r = env.push("cfg/named:1", &img).await;
    env.cri.pull(&r).await.expect("pull");
    let st = env.cri.image(&r).await.unwrap().expect("status");
    assert_eq!(st.username, "app");
    assert!(
        st.uid.is_none(),
        "uid and username are exclusive: {:?}",
        st.uid
    );
    env.finish().await;
}

#[tokio::test]
async fn image_status_reports_uid_from_a_numeric_config_user() {
    let env = Env::start().await;
    let a = images::configured_image(Format::Oci, "1000");
    let b = images::configured_image(Format::Docker, "1000:1000");
    let ra = env.push("cfg/uid:1", &a).await;
    let rb = env.push("cfg/uidgid:1", &b).await;
    env.cri.pull(&ra).await.expect("pull");
    env.cri.pull(&rb).await.expect("pull");
    for r in [&ra, &rb] {
        let st = env.cri.image(r).await.unwrap().expect("status");
        assert_eq!(st.uid.map(|u| u.value), Some(1000), "{r}");
        assert_eq!(st.username, "", "{r}");
    }
    env.finish().await;
}

#[tokio::test]
async fn image_status_verbose_carries_the_image_config() {
    let env = Env::start().await;
    let img = images::configured_image(Format::Oci, "app");
    let r = env.push("cfg/verbose:1", &img).await;
    env.cri.pull(&r).await.expect("pull");

    let quiet = env.cri.image_status(&r, false).await.unwrap();
    assert!(
        quiet.info.is_empty(),
        "info only when verbose: {:?}",
        quiet.info
    );

    let v = env.cri.image_status(&r, true).await.unwrap();
    let info = v
        .info
        .get("info")
        .expect("verbose ImageStatus must have info[\"info\"]");
    let json: Value = serde_json::from_str(info).expect("info[\"info\"] is JSON");
    let cfg = find_object_with_key(&json, "Entrypoint").expect("image config in info");
    assert_eq!(cfg["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(cfg["Cmd"], serde_json::json!(["/srv/app/run.sh"]));
    assert_eq!(cfg["WorkingDir"], "/srv/app");
    assert_eq!(cfg["User"], "app");
    assert_eq!(cfg["StopSignal"], "SIGINT");
    assert!(
        cfg["Env"]
            .as_array()
            .unwrap()
            .contains(&Value::from("GREETING=hello"))
    );
    assert!(cfg["Volumes"].get("/data").is_some() && cfg["Volumes"].get("/cache").is_some());
    assert_eq!(v.image.expect("image").id, img.id());
    env.finish().await;
}

#[tokio::test]
async fn image_status_of_an_absent_image_is_empty_not_an_error() {
    let env = Env::start().await;
    for name in [
        env.reference("nothing/here:1"),
        "nothing-here:1".to_string(),
        format!("sha256:{}", "ab".repeat(32)),
    ] {
        let st = env
            .cri
            .image_status(&name, false)
            .await
            .unwrap_or_else(|e| panic!("ImageStatus({name}): {e}"));
        assert!(st.image.is_none(), "{name}: {:?}", st.image);
        let st = env
            .cri
            .image_status(&name, true)
            .await
            .unwrap_or_else(|e| panic!("verbose ImageStatus({name}): {e}"));
        assert!(st.image.is_none());
    }
    env.finish().await;
}

// ----------------------------------------------------------- list images

#[tokio::test]
async fn list_images_filter_selects_one_image() {
    let env = Env::start().await;
    let a = images::marked_image(Format::Oci, Compression::Gzip, &marker("list a"));
    let b = images::marked_image(Format::Oci, Compression::Gzip, &marker("list b"));
    let ra = env.push("list/a:1", &a).await;
    let rb = env.push("list/b:1", &b).await;
    env.cri.pull(&ra).await.unwrap();
    env.cri.pull(&rb).await.unwrap();
    let all = env.cri.list_images(None).await.unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    let only_a = env.cri.list_images(Some(&ra)).await.unwrap();
    assert_eq!(
        only_a.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        vec![a.id()]
    );
    let only_b = env.cri.list_images(Some(&rb)).await.unwrap();
    assert_eq!(
        only_b.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        vec![b.id()]
    );
    let none = env
        .cri
        .list_images(Some(&env.reference("list/c:1")))
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    // an empty filter spec is no filter (crictl images with no argument)
    assert_eq!(env.cri.list_images(Some("")).await.unwrap().len(), 2);
    for img in &all {
        assert!(img.size > 0);
    }
    env.finish().await;
}

#[tokio::test]
async fn several_tags_of_one_image_are_listed_as_one_image() {
    let env = Env::start().await;
    let img = ImageBuilder::busybox(Format::Oci).build();
    let tags = ["multi/tag:1", "multi/tag:1.0", "multi/tag:latest"];
    for t in tags {
        env.push(t, &img).await;
        env.cri.pull(&env.reference(t)).await.expect("pull");
    }
    let list = env.cri.list_images(None).await.unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    for t in tags {
        assert!(
            list[0].repo_tags.contains(&env.reference(t)),
            "{:?} lacks {t}",
            list[0].repo_tags
        );
    }
    env.finish().await;
}

// ---------------------------------------------------------- remove images

#[tokio::test]
async fn remove_image_by_id_removes_every_tag() {
    let env = Env::start().await;
    let img = ImageBuilder::busybox(Format::Oci).build();
    let r1 = env.push("rm/id:1", &img).await;
    let r2 = env.push("rm/id:2", &img).await;
    env.cri.pull(&r1).await.unwrap();
    env.cri.pull(&r2).await.unwrap();
    env.cri
        .remove_image(img.id())
        .await
        .expect("RemoveImage by id");
    assert!(env.cri.image(&r1).await.unwrap().is_none());
    assert!(env.cri.image(&r2).await.unwrap().is_none());
    assert!(env.cri.image(img.id()).await.unwrap().is_none());
    assert!(env.cri.list_images(None).await.unwrap().is_empty());
    let baseline = env.baseline.clone();
    env.assert_no_leaks_since(&baseline).await;
    env.finish().await;
}

#[tokio::test]
async fn remove_one_tag_of_several_keeps_the_image() {
    let env = Env::start().await;
    let img = ImageBuilder::busybox(Format::Oci).build();
    let r1 = env.push("rm/tag:1", &img).await;
    let r2 = env.push("rm/tag:2", &img).await;
    env.cri.pull(&r1).await.unwrap();
    env.cri.pull(&r2).await.unwrap();
    env.cri.remove_image(&r1).await.expect("RemoveImage by tag");
    assert!(
        env.cri.image(&r1).await.unwrap().is_none(),
        "removed tag still resolves"
    );
    let st = env
        .cri
        .image(&r2)
        .await
        .unwrap()
        .expect("other tag must keep the image");
    assert_eq!(st.id, img.id());
    assert!(!st.repo_tags.contains(&r1), "{:?}", st.repo_tags);
    assert!(st.repo_tags.contains(&r2));
    assert!(
        !inspect::files_with_content(&env.berthd.root(), images::busybox_binary()).is_empty(),
        "layers of a kept image deleted"
    );
    // the last tag removes the image
    env.cri
        .remove_image(&r2)
        .await
        .expect("RemoveImage last tag");
    assert!(env.cri.list_images(None).await.unwrap().is_empty());
    env.finish().await;
}

#[tokio::test]
async fn remove_image_by_digest() {
    let env = Env::start().await;
    let img = ImageBuilder::busybox(Format::Docker).build();
    let r = env.push("rm/digest:1", &img).await;
    env.cri.pull(&r).await.unwrap();
    let by_digest = env.reference(&format!("rm/digest@{}", img.digest()));
    env.cri
        .remove_image(&by_digest)
        .await
        .expect("RemoveImage by digest");
    assert!(
        env.cri.image(img.id()).await.unwrap().is_none(),
        "image still there after remove by digest"
    );
    assert!(env.cri.list_images(None).await.unwrap().is_empty());
    env.finish().await;
}

#[tokio::test]
async fn remove_unknown_image_succeeds() {
    let env = Env::start().await;
    env.cri
        .remove_image(&env.reference("never/pulled:1"))
        .await
        .expect("RemoveImage of an unknown tag");
    env.cri
        .remove_image(&format!("sha256:{}", "cd".repeat(32)))
        .await
        .expect("RemoveImage of an unknown id");
    env.cri
        .remove_image("never-pulled")
        .await
        .expect("RemoveImage of an unknown short name");
    env.finish().await;
}

#[tokio::test]
async fn crictl_rmi_by_status_then_id() {
    let env = Env::start().await;
    let img = ImageBuilder::busybox(Format::Oci).build();
    let r = env.push("rm/rmi:1", &img).await;
    env.cri.pull(&r).await.unwrap();
    env.cri.rmi(&r).await.expect("status then remove by id");
    assert!(env.cri.image(&r).await.unwrap().is_none());
    env.finish().await;
}

#[tokio::test]
async fn remove_image_keeps_layers_shared_with_another_image() {
    let env = Env::start().await;
    let (ma, mb) = (marker("shared a"), marker("shared b"));
    let a = images::marked_image(Format::Oci, Compression::Gzip, &ma);
    let b = images::marked_image(Format::Oci, Compression::Gzip, &mb);
    assert_eq!(
        a.layers[0].blob.digest, b.layers[0].blob.digest,
        "test images must share the base layer"
    );
    let ra = env.push("shared/a:1", &a).await;
    let rb = env.push("shared/b:1", &b).await;
    env.cri.pull(&ra).await.unwrap();
    env.cri.pull(&rb).await.unwrap();
    let root = env.berthd.root();
    let used_both = fs_used(&env).await;

    env.cri.remove_image(a.id()).await.expect("remove a");
    assert!(env.cri.image(&ra).await.unwrap().is_none());
    let st = env
        .cri
        .image(&rb)
        .await
        .unwrap()
        .expect("b must still be there");
    assert_eq!(st.id, b.id());
    assert_eq!(env.cri.list_images(None).await.unwrap().len(), 1);
    // a's own layer goes (GC may take a moment), the shared one stays
    util::poll_until(
        "a's own layer to be deleted",
        std::time::Duration::from_secs(10),
        || {
            let gone = inspect::files_with_content(&root, ma.as_bytes()).is_empty();
            async move { gone.then_some(()) }
        },
    )
    .await
    .expect("a's unique layer left after removing a");
    assert!(
        !inspect::files_with_content(&root, mb.as_bytes()).is_empty(),
        "b's layer deleted"
    );
    let bins = inspect::files_with_content(&root, images::busybox_binary());
    assert!(
        !bins.is_empty(),
        "shared busybox layer deleted while b still uses it"
    );
    let used_b = fs_used(&env).await;
    assert!(
        used_b >= images::busybox_binary().len() as u64,
        "ImageFsInfo used_bytes {used_b} below b's size"
    );
    assert!(
        used_b <= used_both,
        "used_bytes grew after a remove: {used_b} > {used_both}"
    );
    // pulling a again reuses the kept layer
    env.cri.pull(&ra).await.expect("pull a again");
    env.finish().await;
}

// ---------------------------------------------------------- image fs info

async fn fs_used(env: &Env) -> u64 {
    let info = env.cri.image_fs_info().await.expect("ImageFsInfo");
    let fs = info
        .image_filesystems
        .first()
        .expect("image_filesystems[0]");
    fs.used_bytes.as_ref().expect("used_bytes").value
}

#[tokio::test]
async fn image_fs_info_reports_the_image_store() {
    let env = Env::start().await;
    let info = env
        .cri
        .image_fs_info()
        .await
        .expect("ImageFsInfo on an empty store");
    let fs0 = info
        .image_filesystems
        .first()
        .expect("image_filesystems[0]");
    let mp = &fs0.fs_id.as_ref().expect("fs_id").mountpoint;
    assert!(
        std::path::Path::new(mp).starts_with(env.berthd.root()),
        "mountpoint {mp} is not under the root {}",
        env.berthd.root().display()
    );
    assert!(fs0.timestamp > 0);
    let before = fs0.used_bytes.as_ref().map(|u| u.value).unwrap_or(0);

    let img = ImageBuilder::busybox(Format::Oci).build();
    let r = env.push("fsinfo/img:1", &img).await;
    env.cri.pull(&r).await.unwrap();
    let info = env
        .cri
        .image_fs_info()
        .await
        .expect("ImageFsInfo after a pull");
    let fs1 = info
        .image_filesystems
        .first()
        .expect("image_filesystems[0]");
    let used = fs1.used_bytes.as_ref().expect("used_bytes").value;
    let inodes = fs1.inodes_used.as_ref().expect("inodes_used").value;
    assert!(
        used > before,
        "used_bytes did not grow with a pull: {before} -> {used}"
    );
    assert!(
        used >= images::busybox_binary().len() as u64,
        "used_bytes {used} smaller than busybox"
    );
    assert!(inodes > 0);
    env.finish().await;
}

// ----------------------------------------------------------------- pinned

#[tokio::test]
async fn pinned_image_is_reported_pinned_and_cannot_be_removed() {
    let reg = Registry::start().await.unwrap();
    let opts = BerthdOptions::default()
        .mirror("registry.k8s.io", &[&reg.url()])
        .pinned("registry.k8s.io/pause:3.10");
    let env = Env::start_with(reg, opts).await;
    let pause = ImageBuilder::busybox(Format::Oci)
        .cmd(&["sleep", "inf"])
        .build();
    let other = ImageBuilder::busybox(Format::Oci)
        .label("pinned", "no")
        .build();
    env.push("pause:3.10", &pause).await;
    let ro = env.push("not/pinned:1", &other).await;
    env.cri
        .pull("registry.k8s.io/pause:3.10")
        .await
        .expect("pull pause");
    env.cri.pull(&ro).await.expect("pull other");

    let st = env
        .cri
        .image("registry.k8s.io/pause:3.10")
        .await
        .unwrap()
        .expect("status");
    assert!(st.pinned, "pinned image not reported pinned");
    assert!(!env.cri.image(&ro).await.unwrap().unwrap().pinned);
    let listed = env.cri.list_images(None).await.unwrap();
    assert!(listed.iter().any(|i| i.id == pause.id() && i.pinned));

    expect_err(
        env.cri.remove_image("registry.k8s.io/pause:3.10").await,
        "remove pinned by tag",
    );
    expect_err(
        env.cri.remove_image(pause.id()).await,
        "remove pinned by id",
    );
    assert!(
        env.cri.image(pause.id()).await.unwrap().is_some(),
        "pinned image removed"
    );
    env.finish().await;
}

// -------------------------------------------------------------------- auth

async fn auth_env() -> Env {
    let reg = Registry::start_with_auth("alice", "s3cret").await.unwrap();
    Env::start_with(reg, BerthdOptions::default()).await
}

#[tokio::test]
async fn pull_with_username_and_password_from_an_htpasswd_registry() {
    let env = auth_env().await;
    let img = ImageBuilder::busybox(Format::Oci).build();
    let r = env.push("private/app:1", &img).await;
    let id = env
        .cri
        .pull_with_auth(&r, auth_basic("alice", "s3cret"))
        .await
        .expect("pull with username/password");
    assert_eq!(id, img.id());
    env.finish().await;
}

#[tokio::test]
async fn pull_with_the_auth_field_from_an_htpasswd_registry() {
    let env = auth_env().await;
    let img = ImageBuilder::busybox(Format::Docker).build();
    let r = env.push("private/app:2", &img).await;
    let auth = Credentials::new("alice", "s3cret").auth_field();
    let id = env
        .cri
        .pull_with_auth(&r, auth_field(&auth))
        .await
        .expect("pull with auth (base64 user:pass)");
    assert_eq!(id, img.id());
    env.finish().await;
}

#[tokio::test]
async fn pull_without_credentials_from_an_htpasswd_registry_is_refused() {
    let env = auth_env().await;
    let img = ImageBuilder::busybox(Format::Oci).build();
    let r = env.push("private/app:3", &img).await;
    let before = env.snapshot();
    expect_code(
        env.cri.pull(&r).await,
        &[Code::Unauthenticated, Code::PermissionDenied],
        "anonymous pull of a private image",
    );
    env.assert_no_leaks_since(&before).await;
    env.finish().await;
}

#[tokio::test]
async fn pull_with_a_wrong_password_is_unauthenticated() {
    let env = auth_env().await;
    let img = ImageBuilder::busybox(Format::Oci).build();
    let r = env.push("private/app:4", &img).await;
    let before = env.snapshot();
    expect_code(
        env.cri
            .pull_with_auth(&r, auth_basic("alice", "wrong"))
            .await,
        &[Code::Unauthenticated, Code::PermissionDenied],
        "pull with a wrong password",
    );
    env.assert_no_leaks_since(&before).await;
    env.finish().await;
}

#[tokio::test]
async fn pull_with_a_garbage_auth_field_is_refused() {
    let env = auth_env().await;
    let img = ImageBuilder::busybox(Format::Oci).build();
    let r = env.push("private/app:5", &img).await;
    let before = env.snapshot();
    for garbage in ["!!! not base64 !!!", "bm9jb2xvbg==" /* "nocolon" */] {
        expect_code(
            env.cri.pull_with_auth(&r, auth_field(garbage)).await,
            &[
                Code::InvalidArgument,
                Code::Unauthenticated,
                Code::PermissionDenied,
            ],
            &format!("pull with auth={garbage:?}"),
        );
    }
    env.assert_no_leaks_since(&before).await;
    env.finish().await;
}

// --------------------------------------------------------------- bad input

#[tokio::test]
async fn pull_with_an_empty_reference_is_invalid_argument() {
    let env = Env::start().await;
    let before = env.snapshot();
    expect_code(
        env.cri.pull("").await,
        &[Code::InvalidArgument],
        "pull \"\"",
    );
    env.assert_no_leaks_since(&before).await;
    env.finish().await;
}

#[tokio::test]
async fn pull_with_a_malformed_reference_is_invalid_argument() {
    let env = Env::start().await;
    let before = env.snapshot();
    let host = env.registry.host();
    for bad in [
        format!("{host}/UPPER/Case:1"),
        format!("{host}/repo:tag with space"),
        format!("{host}/repo@sha256:1234"),
        format!("{host}/repo::tag"),
        format!("{host}/repo:-tag"),
        "-leading-dash".to_string(),
        format!("{host}/repo@md5:d41d8cd98f00b204e9800998ecf8427e"),
        format!("{host}/{}:1", "a".repeat(300)),
    ] {
        expect_code(
            env.cri.pull(&bad).await,
            &[Code::InvalidArgument],
            &format!("pull {bad:?}"),
        );
    }
    env.assert_no_leaks_since(&before).await;
    assert!(env.cri.list_images(None).await.unwrap().is_empty());
    env.finish().await;
}

#[tokio::test]
async fn pull_of_an_unknown_repository_or_tag_is_not_found() {
    let env = Env::start().await;
    let img = ImageBuilder::busybox(Format::Oci).build();
    env.push("known/repo:1", &img).await;
    let before = env.snapshot();
    for missing in [
        env.reference("unknown/repo:1"),
        env.reference("known/repo:2"),
        env.reference(&format!("known/repo@sha256:{}", "ef".repeat(32))),
    ] {
        expect_code(
            env.cri.pull(&missing).await,
            &[Code::NotFound],
            &format!("pull {missing}"),
        );
    }
    env.assert_no_leaks_since(&before).await;
    env.finish().await;
}

#[tokio::test]
async fn a_tar_layer_pushed_as_its_own_image_keeps_modes_and_owners() {
    // ownership and modes preserved (setuid included: contained, not dropped)
    let env = Env::start().await;
    let m = marker("owned");
    let layer = TarBuilder::new()
        .dir("srv", 0o750)
        .file_owned("srv/owned.txt", 0o640, 1000, 1000, m.as_bytes())
        .file("srv/suid", 0o4755, format!("suid {m}").as_bytes())
        .layer(Compression::Gzip, Format::Oci);
    let img = ImageBuilder::busybox(Format::Oci).layer(layer).build();
    let r = env.push("modes/img:1", &img).await;
    env.cri.pull(&r).await.expect("pull");
    let root = env.berthd.root();
    let owned = inspect::files_with_content(&root, m.as_bytes());
    assert!(!owned.is_empty(), "file not unpacked");
    let md = std::fs::metadata(&owned[0]).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (1000, 1000, 0o640)
    );
    let suid = inspect::files_with_content(&root, format!("suid {m}").as_bytes());
    assert_eq!(std::fs::metadata(&suid[0]).unwrap().mode() & 0o7777, 0o4755);
    env.finish().await;
}
