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
use std::time::Instant;

use anyhow::{Context, Result, bail};
use berth_conformance::images::Image;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::workload::MB;

/// Wall-clock and CPU seconds of one stage.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Cost {
    pub wall_s: f64,
    pub cpu_s: f64,
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(self, o: Cost) -> Cost {
        Cost {
            wall_s: self.wall_s + o.wall_s,
            cpu_s: self.cpu_s + o.cpu_s,
        }
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LayerTimes {
    pub digest: String,
    pub compressed_bytes: u64,
    pub uncompressed_bytes: u64,
    pub entries: u64,
    /// The GET alone; cpu = this process (client side).
    pub network: Cost,
    /// The registry's CPU while serving that GET.
    pub registry_cpu_s: f64,
    pub inflate: Cost,
    pub hash_compressed: Cost,
    pub hash_uncompressed: Cost,
    pub unpack: Cost,
}

impl LayerTimes {
    /// berthd's per-layer pipeline on an idle machine: a tokio task
    /// downloads (client and registry work in parallel) and hashes the
    /// compressed stream; a blocking thread inflates, hashes the tar and
    /// unpacks. The layer takes about the slower of the two (CPU seconds:
    /// they do not depend on what else runs on the machine).
    pub fn pipeline_s(&self) -> f64 {
        let download = self.network.cpu_s.max(self.registry_cpu_s) + self.hash_compressed.cpu_s;
        let unpack = self.inflate.cpu_s + self.hash_uncompressed.cpu_s + self.unpack.cpu_s;
        download.max(unpack)
    }
    /// Every stage of this layer (berth's side: without the registry).
    pub fn sum(&self) -> Cost {
        self.network + self.hash_compressed + self.inflate + self.hash_uncompressed + self.unpack
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Components {
    pub layers: Vec<LayerTimes>,
    /// All blobs fetched 3 at a time (berthd's default max_concurrent_downloads).
    pub network_parallel: Cost,
    pub syncfs_s: f64,
    pub compressed_bytes: u64,
    pub uncompressed_bytes: u64,
    /// Whether the unpack directory is on the same file system as the berthd root used.
    pub same_fs_as_berth_root: Option<bool>,
    pub concurrency: usize,
    pub cores: usize,
}

impl Components {
    pub fn total(&self, f: impl Fn(&LayerTimes) -> Cost) -> Cost {
        self.layers
            .iter()
            .map(f)
            .fold(Cost::default(), |a, b| a + b)
    }

    pub fn registry_cpu_s(&self) -> f64 {
        self.layers.iter().map(|l| l.registry_cpu_s).sum()
    }

    /// Every stage of every layer one after the other, plus the syncfs.
    pub fn serial(&self) -> Cost {
        self.total(LayerTimes::sum)
            + Cost {
                wall_s: self.syncfs_s,
                cpu_s: 0.0,
            }
    }

    /// The layers scheduled `concurrency` at a time in manifest order, each
    /// taking its pipeline time (unbounded cores), plus the final syncfs.
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

    /// Every stage's CPU (the registry's included: it shares the cores)
    /// spread over all cores, plus the syncfs.
    pub fn cpu_bound_s(&self) -> f64 {
        (self.serial().cpu_s + self.registry_cpu_s()) / self.cores.max(1) as f64 + self.syncfs_s
    }

    /// What a perfect one-pass, parallel-layer pull could reach on this
    /// machine when nothing else runs.
    pub fn estimate_s(&self) -> f64 {
        self.critical_path_s().max(self.cpu_bound_s())
    }
}

fn thread_cpu() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

fn process_cpu() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Run `f` on this thread, measuring wall and this thread's CPU time.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Cost) {
    let (w, c) = (Instant::now(), thread_cpu());
    let r = f();
    (
        r,
        Cost {
            wall_s: w.elapsed().as_secs_f64(),
            cpu_s: thread_cpu() - c,
        },
    )
}

fn registry_cpu(pid: Option<u32>) -> f64 {
    pid.and_then(|p| crate::cpu::sample_tree(p).ok())
        .map(|s| s.total())
        .unwrap_or(0.0)
}

async fn get_to_sink(http: &reqwest::Client, url: &str, expect: u64) -> Result<()> {
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
    Ok(())
}

/// Measure every stage. `registry_url` is `http://127.0.0.1:PORT`, `repo` the
/// repository the image was pushed to, `work` a directory to unpack into,
/// `berth_root` a berthd root of this run (for the same-file-system check).
pub async fn measure(
    image: &Image,
    registry_url: &str,
    registry_pid: Option<u32>,
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
    // CPU: this whole process (the client side; nothing else runs in it
    // meanwhile) and, separately, the registry.
    let http = reqwest::Client::builder().build()?;
    let url = |d: &str| format!("{registry_url}/v2/{repo}/blobs/{d}");
    for l in &image.layers {
        let (w, cpu, reg) = (Instant::now(), process_cpu(), registry_cpu(registry_pid));
        get_to_sink(&http, &url(&l.blob.digest), l.blob.size()).await?;
        c.layers.push(LayerTimes {
            digest: l.blob.digest.clone(),
            compressed_bytes: l.blob.size(),
            uncompressed_bytes: l.tar_size,
            network: Cost {
                wall_s: w.elapsed().as_secs_f64(),
                cpu_s: process_cpu() - cpu,
            },
            registry_cpu_s: registry_cpu(registry_pid) - reg,
            ..Default::default()
        });
    }
    let (w, cpu) = (Instant::now(), process_cpu());
    let http = Arc::new(http);
    let results: Vec<Result<()>> = futures::stream::iter(image.layers.iter().map(|l| {
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
    c.network_parallel = Cost {
        wall_s: w.elapsed().as_secs_f64(),
        cpu_s: process_cpu() - cpu,
    };

    // (b) inflate, (c) hash, (d) unpack: layer by layer, on one blocking
    // thread (its CPU time is exact).
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
            for (i, (blob, digest, diff_id, tar_size)) in layers.iter().enumerate() {
                tar.clear();
                let (r, cost) =
                    timed(|| flate2::bufread::MultiGzDecoder::new(&blob[..]).read_to_end(&mut tar));
                r.with_context(|| format!("inflating {digest}"))?;
                times[i].inflate = cost;
                if tar.len() as u64 != *tar_size {
                    bail!(
                        "{digest} inflated to {} bytes, expected {tar_size}",
                        tar.len()
                    );
                }

                let (hc, cost) = timed(|| Sha256::digest(&blob[..]));
                times[i].hash_compressed = cost;
                let (hu, cost) = timed(|| Sha256::digest(&tar[..]));
                times[i].hash_uncompressed = cost;
                if format!("sha256:{}", hex::encode(hc)) != *digest
                    || format!("sha256:{}", hex::encode(hu)) != *diff_id
                {
                    bail!("sha256 of {digest} does not match its digest or diff id");
                }

                let dir = work.join(format!("layer-{i}"));
                std::fs::create_dir(&dir)?;
                let (stats, cost) = timed(|| berth_image::unpack::unpack_layer(&tar[..], &dir));
                let stats =
                    stats.with_context(|| format!("unpacking {digest} into {}", dir.display()))?;
                times[i].unpack = cost;
                times[i].entries = stats.entries;
            }
            let t = Instant::now();
            let f = std::fs::File::open(&work)?;
            rustix::fs::syncfs(&f).context("syncfs")?;
            Ok((times, t.elapsed().as_secs_f64()))
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
