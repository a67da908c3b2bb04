//! berth conformance harness: a real registry, a real berthd, test images
//! built in Rust, a fault-injecting proxy, a CRI client and leak checks.
//!
//! A scenario reads:
//!
//! ```no_run
//! use berth_conformance::{Env, images::{self, Format}};
//! # async fn f() {
//! let env = Env::start().await;                        // registry + berthd + CRI clients
//! let img = images::ImageBuilder::busybox(Format::Oci).build();
//! let reference = env.push("demo/busybox:1", &img).await; // "127.0.0.1:PORT/demo/busybox:1"
//! let id = env.cri.pull(&reference).await.expect("pull");
//! assert_eq!(id, img.id());
//! env.finish().await;                                  // remove images, check leaks, SIGTERM → exit 0
//! # }
//! ```
//!
//! [`Env::start_with`] takes a registry (plain, with auth, or behind a
//! [`fault::FaultProxy`]) and [`berthd::BerthdOptions`] built from it.

pub mod berthd;
pub mod cri;
pub mod fault;
pub mod images;
pub mod inspect;
pub mod leak;
pub mod netns;
pub mod pods;
pub mod registry;
pub mod streaming;
pub mod util;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use berthd::{Berthd, BerthdOptions};
use cri::Cri;
use images::{Image, Index};
use leak::Snapshot;
use registry::Registry;

/// One scenario's world: a registry, a berthd, CRI clients, and the baseline
/// snapshot taken right after berthd answered.
pub struct Env {
    pub registry: Registry,
    pub berthd: Berthd,
    pub cri: Cri,
    pub baseline: Snapshot,
}

impl Env {
    /// An anonymous registry and a berthd with default options.
    pub async fn start() -> Env {
        let registry = Registry::start().await.expect("starting docker-registry");
        Env::start_with(registry, BerthdOptions::default()).await
    }

    /// An anonymous registry and a berthd that sleeps `ms` at its test hook
    /// `point` each time a call passes it (`FAILPOINTS`, see
    /// berth_runtime::failpoint), so that a scenario can cancel the call or
    /// kill berthd exactly there.
    pub async fn start_pausing_at(point: &str, ms: u64) -> Env {
        let registry = Registry::start().await.expect("starting docker-registry");
        Env::start_with(
            registry,
            BerthdOptions::default().env("FAILPOINTS", &format!("{point}=sleep({ms})")),
        )
        .await
    }

    /// A berthd with `options` next to an already started registry.
    pub async fn start_with(registry: Registry, options: BerthdOptions) -> Env {
        let berthd = Berthd::start(options).await.expect("starting berthd");
        let cri = berthd.cri().await.expect("connecting to berthd");
        let baseline = Snapshot::take(
            &[berthd.dir().to_path_buf(), registry.dir().to_path_buf()],
            &Self::roots(&berthd),
            &[berthd.cgroup_parent().to_string()],
        );
        Env {
            registry,
            berthd,
            cri,
            baseline,
        }
    }

    fn roots(berthd: &Berthd) -> Vec<PathBuf> {
        vec![berthd.root(), berthd.state()]
    }

    /// The test's directories (berthd's and the registry's temp dirs).
    pub fn dirs(&self) -> Vec<PathBuf> {
        vec![
            self.berthd.dir().to_path_buf(),
            self.registry.dir().to_path_buf(),
        ]
    }

    /// A snapshot now (mounts, processes, files under root and state,
    /// cgroups under berthd's parent).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::take(
            &self.dirs(),
            &Self::roots(&self.berthd),
            &[self.berthd.cgroup_parent().to_string()],
        )
    }

    /// Push `image` as `repo:tag` to the registry; returns the reference to pull.
    pub async fn push(&self, repo_tag: &str, image: &Image) -> String {
        let (repo, tag) = split_repo_tag(repo_tag);
        self.registry
            .push(repo, tag, image)
            .await
            .expect("pushing test image");
        self.registry.reference(repo_tag)
    }

    /// Push an index (and its images) as `repo:tag`; returns the reference.
    pub async fn push_index(&self, repo_tag: &str, index: &Index) -> String {
        let (repo, tag) = split_repo_tag(repo_tag);
        self.registry
            .push_index(repo, tag, index)
            .await
            .expect("pushing test index");
        self.registry.reference(repo_tag)
    }

    /// `127.0.0.1:PORT/<repo_and_rest>`.
    pub fn reference(&self, repo_and_rest: &str) -> String {
        self.registry.reference(repo_and_rest)
    }

    /// Poll (10 s at most) until nothing leaked since `before`: no new file
    /// under root or state (database aside), no temp file, no new mount or
    /// process. Panics with the list otherwise.
    pub async fn assert_no_leaks_since(&self, before: &Snapshot) {
        let start = Instant::now();
        loop {
            let mut leaks = before.retake().leaks_since(before);
            // a restarted berthd or registry has a new pid: not a leak
            let current = [self.berthd.pid(), self.registry.pid()];
            leaks
                .processes
                .retain(|p| !current.contains(&Some(p.pid as u32)));
            if leaks.is_empty() {
                return;
            }
            if start.elapsed() > Duration::from_secs(10) {
                panic!("left behind after the scenario:\n{leaks}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// No temp file under root or state right now.
    pub fn assert_no_temp_files(&self) {
        let tmp = self.snapshot().temp_files();
        assert!(
            tmp.is_empty(),
            "temp files left under berthd's root: {tmp:#?}"
        );
    }

    /// RemoveImage (by id) every listed image that is not pinned; returns the
    /// pinned ones left.
    pub async fn remove_all_images(&self) -> Vec<String> {
        let mut pinned = Vec::new();
        let images = self.cri.list_images(None).await.expect("ListImages");
        for img in images {
            if img.pinned {
                pinned.push(img.id.clone());
                continue;
            }
            self.cri
                .remove_image(&img.id)
                .await
                .unwrap_or_else(|e| panic!("RemoveImage {}: {e}", img.id));
        }
        pinned
    }

    /// The pod network holds nothing once no pod does: no address in
    /// IPAM (berthd's view, Status verbose), no pod veth in the node, no
    /// hostPort element in berth's nftables table. Veths go with their
    /// netns, which the kernel cleans up asynchronously: waited for.
    pub async fn assert_network_clean(&self) {
        let status = self.cri.status(true).await.expect("Status");
        let net: serde_json::Value = status
            .info
            .get("network")
            .map(|s| serde_json::from_str(s).expect("network info is JSON"))
            .unwrap_or_default();
        if let Some(allocated) = net.get("allocated").and_then(|a| a.as_array()) {
            assert!(
                allocated.is_empty(),
                "addresses still allocated with no pod: {allocated:?}"
            );
        }
        let Some(node) = self.berthd.node() else {
            return;
        };
        let start = Instant::now();
        loop {
            let veths: Vec<String> = node
                .links()
                .expect("listing the node's links")
                .into_iter()
                .filter(|l| l.starts_with("bth"))
                .collect();
            if veths.is_empty() {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                panic!("pod veths left on the node: {veths:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // One bridge at most: the plugin's (berth0, or the CNI config's).
        let bridges = node
            .ip(&["-o", "link", "show", "type", "bridge"])
            .expect("listing bridges");
        assert!(
            bridges.lines().count() <= 1,
            "bridges other than the configured one on the node:\n{bridges}"
        );
        let table = node
            .exec("nft", &["list", "table", "inet", "berth"])
            .expect("nft");
        let text = String::from_utf8_lossy(&table.stdout);
        assert!(
            !text.contains("elements"),
            "hostPort elements left in berth's table:\n{text}"
        );
    }

    /// End of a scenario: remove every image (pinned ones stay), check that
    /// root and state are back to the baseline (if nothing pinned stayed),
    /// stop berthd with SIGTERM (exit 0 required), stop the registry, and
    /// check that no process or mount of this test is left.
    pub async fn finish(mut self) {
        let pinned = self.remove_all_images().await;
        let left = self.cri.list_images(None).await.expect("ListImages");
        assert!(
            left.iter().all(|i| i.pinned),
            "images left after removing all: {:?}",
            left.iter()
                .map(|i| (&i.id, &i.repo_tags))
                .collect::<Vec<_>>()
        );
        if pinned.is_empty() {
            let baseline = self.baseline.clone();
            self.assert_no_leaks_since(&baseline).await;
        } else {
            self.assert_no_temp_files();
        }
        let cgroups = self.berthd.leftover_cgroups();
        assert!(
            cgroups.is_empty(),
            "cgroups left under this berthd's parent {}: {cgroups:#?}",
            self.berthd.cgroup_parent()
        );
        self.assert_network_clean().await;
        self.berthd
            .stop()
            .await
            .expect("berthd must exit 0 on SIGTERM");
        self.registry.kill();
        let after = self.snapshot();
        let procs = after.live_processes();
        assert!(
            procs.is_empty(),
            "processes of this test still running after stop: {procs:#?}"
        );
        assert!(
            after.mounts.is_empty(),
            "mounts left under the test dirs: {:#?}",
            after.mounts
        );
        // Its own parent of pods without a cgroup_parent, empty by now,
        // goes when berthd stops.
        let parents = leak::cgroup_parent_dirs(self.berthd.cgroup_parent());
        assert!(
            parents.is_empty(),
            "berthd's parent cgroup is left after it stopped: {parents:#?}"
        );
    }
}

/// `repo:tag` → (`repo`, `tag`) (`latest` without a tag).
pub fn split_repo_tag(repo_tag: &str) -> (&str, &str) {
    match repo_tag.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (repo_tag, "latest"),
    }
}
