//! "Where the time goes": each stage of berth's pull measured alone,
//! in-process, with the crates berth uses, on the same image data:
//!
//! * network: GET each blob from the loopback registry into a sink (reqwest);
//! * inflate: flate2 (zlib-rs backend) `bufread::MultiGzDecoder` over the
//!   blob in memory;
//! * hash: sha256 (sha2) over the compressed and the uncompressed bytes;
//! * write: `berth_image::unpack::unpack_layer` of the tar into a fresh
//!   directory on the same file system as berthd's root, then one syncfs
//!   (berthd syncs once before it records the image).

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use berth_conformance::images::Image;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::workload::MB;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LayerTimes {
    pub digest: String,
    pub compressed_bytes: u64,
    pub uncompressed_bytes: u64,
    pub entries: u64,
    pub network_s: f64,
    pub inflate_s: f64,
    pub hash_compressed_s: f64,
    pub hash_uncompressed_s: f64,
    pub unpack_s: f64,
}

impl LayerTimes {
    /// berthd's per-layer pipeline: a tokio task downloads and hashes the
    /// compressed stream; a blocking thread inflates, hashes the tar and
    /// unpacks. The layer takes about the slower of the two.
    pub fn pipeline_s(&self) -> f64 {
        (self.network_s + self.hash_compressed_s)
            .max(self.inflate_s + self.hash_uncompressed_s + self.unpack_s)
    }
    pub fn sum_s(&self) -> f64 {
        self.network_s
            + self.hash_compressed_s
            + self.inflate_s
            + self.hash_uncompressed_s
            + self.unpack_s
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Components {
    pub layers: Vec<LayerTimes>,
    /// All blobs fetched 3 at a time (berthd's default max_concurrent_downloads).
    pub network_parallel_s: f64,
    pub syncfs_s: f64,
    pub compressed_bytes: u64,
    pub uncompressed_bytes: u64,
    /// Whether the unpack directory is on the same file system as the berthd root used.
    pub same_fs_as_berth_root: Option<bool>,
    pub concurrency: usize,
    pub cores: usize,
}

impl Components {
    pub fn total(&self, f: impl Fn(&LayerTimes) -> f64) -> f64 {
        self.layers.iter().map(f).sum()
    }

    /// Every stage of every layer one after the other.
    pub fn serial_s(&self) -> f64 {
        self.total(LayerTimes::sum_s) + self.syncfs_s
    }

    /// The layers scheduled `concurrency` at a time in manifest order, each
    /// taking its pipeline time (unbounded CPU), plus the final syncfs.
    pub fn critical_path_s(&self) -> f64 {
        let mut slots = vec![0.0f64; self.concurrency.max(1)];
        for l in &self.layers {
            // the earliest free slot takes the next layer
            let (i, _) = slots
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .unwrap_or((0, &0.0));
            slots[i] += l.pipeline_s();
        }
        slots.into_iter().fold(0.0, f64::max) + self.syncfs_s
    }

    /// All stages' time spread over every core (network time includes the
    /// registry's side, which shares the same cores).
    pub fn cpu_bound_s(&self) -> f64 {
        self.total(LayerTimes::sum_s) / self.cores.max(1) as f64 + self.syncfs_s
    }

    /// What a perfect one-pass, parallel-layer pull could reach here.
    pub fn estimate_s(&self) -> f64 {
        self.critical_path_s().max(self.cpu_bound_s())
    }
}

async fn get_to_sink(http: &reqwest::Client, url: &str, expect: u64) -> Result<f64> {
    let t = Instant::now();
    let mut resp = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !resp.status().is_success() {
        bail!("GET {url}: {}", resp.status());
    }
    let mut n = 0u64;
    while let Some(chunk) = resp
        .chunk()
        .await
        .with_context(|| format!("reading {url}"))?
    {
        n += chunk.len() as u64;
    }
    if n != expect {
        bail!("GET {url}: {n} bytes, expected {expect}");
    }
    Ok(t.elapsed().as_secs_f64())
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Measure every stage. `registry_url` is `http://127.0.0.1:PORT`, `repo` the
/// repository the image was pushed to, `work` a directory to unpack into,
/// `berth_root` a berthd root of this run (for the same-file-system check).
pub async fn measure(
    image: &Image,
    registry_url: &str,
    repo: &str,
    work: &Path,
    berth_root: Option<&Path>,
) -> Result<Components> {
    let concurrency = 3;
    let mut c = Components {
        concurrency,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        compressed_bytes: image.layers.iter().map(|l| l.blob.size()).sum(),
        uncompressed_bytes: image.unpacked_size(),
        ..Default::default()
    };
    std::fs::create_dir_all(work)?;
    c.same_fs_as_berth_root = berth_root.and_then(|r| {
        Some(std::fs::metadata(r).ok()?.dev() == std::fs::metadata(work).ok()?.dev())
    });

    // (a) network, each blob alone, then all of them `concurrency` at a time.
    let http = reqwest::Client::builder().build()?;
    let url = |d: &str| format!("{registry_url}/v2/{repo}/blobs/{d}");
    for l in &image.layers {
        let network_s = get_to_sink(&http, &url(&l.blob.digest), l.blob.size()).await?;
        c.layers.push(LayerTimes {
            digest: l.blob.digest.clone(),
            compressed_bytes: l.blob.size(),
            uncompressed_bytes: l.tar_size,
            network_s,
            ..Default::default()
        });
    }
    let t = Instant::now();
    let http = Arc::new(http);
    let results: Vec<Result<f64>> = futures::stream::iter(image.layers.iter().map(|l| {
        let http = http.clone();
        let u = url(&l.blob.digest);
        let size = l.blob.size();
        async move { get_to_sink(&http, &u, size).await }
    }))
    .buffer_unordered(concurrency)
    .collect()
    .await;
    for r in results {
        r?;
    }
    c.network_parallel_s = secs(t.elapsed());

    // (b) inflate, (c) hash, (d) unpack: layer by layer, on a blocking thread.
    let layers: Vec<_> = image
        .layers
        .iter()
        .map(|l| {
            (
                l.blob.data.clone(),
                l.blob.digest.clone(),
                l.diff_id.clone(),
                l.tar_size,
            )
        })
        .collect();
    let work = work.to_path_buf();
    let mut times = c.layers.clone();
    let (times, syncfs_s) =
        tokio::task::spawn_blocking(move || -> Result<(Vec<LayerTimes>, f64)> {
            let max_tar = layers.iter().map(|l| l.3).max().unwrap_or(0) as usize;
            // One buffer for every layer, touched once so that page faults are
            // not counted as inflate time.
            let mut tar = vec![0u8; max_tar + (1 << 20)];
            tar.clear();
            for (i, (blob, digest, diff_id, tar_size)) in layers.iter().enumerate() {
                tar.clear();
                let t = Instant::now();
                let mut dec = flate2::bufread::MultiGzDecoder::new(&blob[..]);
                dec.read_to_end(&mut tar)
                    .with_context(|| format!("inflating {digest}"))?;
                times[i].inflate_s = secs(t.elapsed());
                if tar.len() as u64 != *tar_size {
                    bail!(
                        "{digest} inflated to {} bytes, expected {tar_size}",
                        tar.len()
                    );
                }

                let t = Instant::now();
                let hc = Sha256::digest(&blob[..]);
                times[i].hash_compressed_s = secs(t.elapsed());
                let t = Instant::now();
                let hu = Sha256::digest(&tar[..]);
                times[i].hash_uncompressed_s = secs(t.elapsed());
                if format!("sha256:{}", hex::encode(hc)) != *digest
                    || format!("sha256:{}", hex::encode(hu)) != *diff_id
                {
                    bail!("sha256 of {digest} does not match its digest or diff id");
                }

                let dir = work.join(format!("layer-{i}"));
                std::fs::create_dir(&dir)?;
                let t = Instant::now();
                let stats = berth_image::unpack::unpack_layer(&tar[..], &dir)
                    .with_context(|| format!("unpacking {digest} into {}", dir.display()))?;
                times[i].unpack_s = secs(t.elapsed());
                times[i].entries = stats.entries;
            }
            let t = Instant::now();
            let f = std::fs::File::open(&work)?;
            rustix::fs::syncfs(&f).context("syncfs")?;
            let syncfs_s = secs(t.elapsed());
            Ok((times, syncfs_s))
        })
        .await
        .context("component task")??;
    c.layers = times;
    c.syncfs_s = syncfs_s;
    Ok(c)
}

/// MB/s of `bytes` over `s` seconds.
pub fn mbps(bytes: u64, s: f64) -> f64 {
    if s > 0.0 {
        bytes as f64 / MB / s
    } else {
        f64::INFINITY
    }
}
