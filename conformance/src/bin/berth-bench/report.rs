//! Results, the summary table and the JSON file.

use crate::components::{Components, Cost, mbps};
use crate::cpu::CpuSample;
use crate::workload::{LayerInfo, MB};

/// The throughput target of issue 3: berth at least this many times
/// containerd's pull throughput.
pub const TARGET_RATIO: f64 = 2.0;
/// Issue 13's bar for the pull ("stays >= 3x containerd's").
pub const ISSUE13_RATIO: f64 = 3.0;

#[derive(Clone, Debug, serde::Serialize)]
pub struct Iteration {
    pub wall_s: f64,
    pub mb_per_s_compressed: f64,
    pub mb_per_s_uncompressed: f64,
    /// The daemon's (and its children's) CPU for the pull; None if unknown.
    pub cpu: Option<CpuSample>,
    /// The registry's CPU while serving the pull.
    pub registry_cpu_s: Option<f64>,
    /// Time to start the daemon (not part of the pull).
    pub startup_s: Option<f64>,
    /// Microseconds per empty file created just before the pull: how fast
    /// the file system creates files at that moment.
    pub fs_probe_us_per_file: Option<f64>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct RuntimeResult {
    pub name: String,
    pub endpoint: String,
    pub how: String,
    pub cold_note: String,
    pub iterations: Vec<Iteration>,
    pub error: Option<String>,
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Summary {
    pub iterations: usize,
    pub median_wall_s: f64,
    pub best_wall_s: f64,
    pub median_mb_per_s: f64,
    pub best_mb_per_s: f64,
    pub median_mb_per_s_uncompressed: f64,
    pub median_cpu_s: Option<f64>,
    pub median_cpu_user_s: Option<f64>,
    pub median_cpu_system_s: Option<f64>,
    pub median_registry_cpu_s: Option<f64>,
    pub median_fs_probe_us: Option<f64>,
}

pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn median_of(it: &[Iteration], f: impl Fn(&Iteration) -> Option<f64>) -> Option<f64> {
    let mut v: Option<Vec<f64>> = it.iter().map(f).collect();
    v.as_mut().and_then(|v| median(v))
}

impl RuntimeResult {
    pub fn summary(&self) -> Option<Summary> {
        let it = &self.iterations;
        if it.is_empty() {
            return None;
        }
        Some(Summary {
            iterations: it.len(),
            median_wall_s: median_of(it, |i| Some(i.wall_s))?,
            best_wall_s: it.iter().map(|i| i.wall_s).fold(f64::INFINITY, f64::min),
            median_mb_per_s: median_of(it, |i| Some(i.mb_per_s_compressed))?,
            best_mb_per_s: it.iter().map(|i| i.mb_per_s_compressed).fold(0.0, f64::max),
            median_mb_per_s_uncompressed: median_of(it, |i| Some(i.mb_per_s_uncompressed))?,
            median_cpu_s: median_of(it, |i| i.cpu.map(|c| c.total())),
            median_cpu_user_s: median_of(it, |i| i.cpu.map(|c| c.user)),
            median_cpu_system_s: median_of(it, |i| i.cpu.map(|c| c.system)),
            median_registry_cpu_s: median_of(it, |i| i.registry_cpu_s),
            median_fs_probe_us: median_of(it, |i| i.fs_probe_us_per_file),
        })
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Ratio {
    pub other: String,
    /// berth median MB/s / other median MB/s.
    pub throughput: f64,
    /// berth median CPU s / other median CPU s (lower is better for berth).
    pub cpu: Option<f64>,
    pub target: f64,
    pub target_met: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ImageDesc {
    pub reference: String,
    pub id: String,
    pub compressed_bytes: u64,
    pub uncompressed_bytes: u64,
    pub layers: Vec<LayerInfo>,
    pub generation_s: f64,
    pub push_s: f64,
    pub seed: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub machine: Machine,
    pub berthd_binary: Option<String>,
    pub image: ImageDesc,
    pub runtimes: Vec<(RuntimeResult, Option<Summary>)>,
    pub ratios: Vec<Ratio>,
    pub components: Option<Components>,
    pub components_error: Option<String>,
    pub leftover_mounts: Vec<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Machine {
    pub cores: usize,
    pub kernel: String,
    pub loadavg_start: String,
    pub loadavg_end: String,
}

pub fn ratios(runtimes: &[(RuntimeResult, Option<Summary>)]) -> Vec<Ratio> {
    let Some((_, Some(berth))) = runtimes.iter().find(|(r, _)| r.name == "berth") else {
        return Vec::new();
    };
    runtimes
        .iter()
        .filter(|(r, _)| r.name != "berth")
        .filter_map(|(r, s)| {
            let s = s.as_ref()?;
            let throughput = berth.median_mb_per_s / s.median_mb_per_s;
            Some(Ratio {
                other: r.name.clone(),
                throughput,
                cpu: match (berth.median_cpu_s, s.median_cpu_s) {
                    (Some(b), Some(o)) if o > 0.0 => Some(b / o),
                    _ => None,
                },
                target: TARGET_RATIO,
                target_met: throughput >= TARGET_RATIO,
            })
        })
        .collect()
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}"))
        .unwrap_or_else(|| "n/a".into())
}

/// The summary table, ratios and the component breakdown.
pub fn print(report: &Report) {
    let img = &report.image;
    println!();
    println!("==================================================================================");
    println!(
        "berth-bench: cold pull of {} ({} layers, {:.1} MB compressed, {:.1} MB uncompressed; MB = 10^6 bytes)",
        img.reference,
        img.layers.len(),
        img.compressed_bytes as f64 / MB,
        img.uncompressed_bytes as f64 / MB
    );
    println!(
        "machine: {} cores, kernel {}, load average at start {} / end {}",
        report.machine.cores,
        report.machine.kernel,
        report.machine.loadavg_start,
        report.machine.loadavg_end
    );
    if let Some(b) = &report.berthd_binary {
        println!("berthd: {b}");
    }
    println!();
    println!(
        "{:<12} {:>5} {:>9} {:>8} {:>10} {:>9} {:>11} {:>9} {:>13} {:>12} {:>11}",
        "runtime",
        "runs",
        "median s",
        "best s",
        "MB/s med",
        "MB/s best",
        "MB/s unc.",
        "CPU s",
        "CPU usr/sys",
        "registry CPU",
        "fs probe us"
    );
    for (r, s) in &report.runtimes {
        match s {
            Some(s) => println!(
                "{:<12} {:>5} {:>9.2} {:>8.2} {:>10.1} {:>9.1} {:>11.1} {:>9} {:>13} {:>12} {:>11}",
                r.name,
                s.iterations,
                s.median_wall_s,
                s.best_wall_s,
                s.median_mb_per_s,
                s.best_mb_per_s,
                s.median_mb_per_s_uncompressed,
                opt(s.median_cpu_s, 2),
                format!(
                    "{}/{}",
                    opt(s.median_cpu_user_s, 2),
                    opt(s.median_cpu_system_s, 2)
                ),
                opt(s.median_registry_cpu_s, 2),
                opt(s.median_fs_probe_us, 0),
            ),
            None => println!("{:<12} {:>5} (no successful pull)", r.name, 0),
        }
        if let Some(e) = &r.error {
            println!("{:<12}       FAILED: {}", "", first_line(e));
        }
    }
    for (r, _) in &report.runtimes {
        if !r.cold_note.is_empty() {
            println!("note ({}): {}", r.name, r.cold_note);
        }
    }
    println!(
        "(MB/s = compressed image bytes / wall time of PullImage; 'MB/s unc.' = uncompressed bytes / wall time;"
    );
    println!(
        " CPU s = utime+stime of the daemon and its children during the pull, medians over the runs;"
    );
    println!(
        " fs probe = microseconds per empty file created just before each pull, ~40 when the file system is healthy)"
    );
    println!();
    if report.ratios.is_empty() {
        println!("ratio: not available (needs a successful berth run and another runtime)");
    }
    for r in &report.ratios {
        println!(
            "ratio berth/{}: throughput {:.2}x, CPU {}  ->  target (berth >= {:.1}x {}'s throughput): {}",
            r.other,
            r.throughput,
            r.cpu
                .map(|c| format!("{c:.2}x"))
                .unwrap_or_else(|| "n/a".into()),
            r.target,
            r.other,
            if r.target_met { "MET" } else { "NOT MET" }
        );
        if r.other == "containerd" {
            println!(
                "  issue 13: cold pull stays at least {ISSUE13_RATIO:.0}x containerd's throughput: {:.2}x: {}",
                r.throughput,
                if r.throughput >= ISSUE13_RATIO {
                    "MET"
                } else {
                    "NOT MET"
                }
            );
        }
    }
    if let Some(c) = &report.components {
        print_components(c, report);
    } else if let Some(e) = &report.components_error {
        println!();
        println!("where the time goes: FAILED: {e}");
    }
    println!("==================================================================================");
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn print_components(c: &Components, report: &Report) {
    println!();
    println!(
        "where the time goes (berth's stages measured alone, in-process, same crates, same image data;"
    );
    println!(" wall seconds suffer from whatever else runs on the machine, CPU seconds do not):");
    if cfg!(debug_assertions) {
        println!(
            " WARNING: berth-bench itself is a debug build: these stages ran unoptimized; build it with --release"
        );
    }
    println!(
        "{:>5} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "layer",
        "gz MB",
        "tar MB",
        "entries",
        "net",
        "inflate",
        "sha gz",
        "sha tar",
        "unpack",
        "pipeline"
    );
    for (i, l) in c.layers.iter().enumerate() {
        println!(
            "{:>5} {:>7.1} {:>7.1} {:>7} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>9.3}",
            i,
            l.compressed_bytes as f64 / MB,
            l.uncompressed_bytes as f64 / MB,
            l.entries,
            l.network.cpu_s.max(l.registry_cpu_s),
            l.inflate.cpu_s,
            l.hash_compressed.cpu_s,
            l.hash_uncompressed.cpu_s,
            l.unpack.cpu_s,
            l.pipeline_s()
        );
    }
    println!(
        "      (CPU seconds; net = max(client, registry) CPU; pipeline = max(net + sha gz, inflate + sha tar + unpack))"
    );
    let gz = c.compressed_bytes;
    let tar = c.uncompressed_bytes;
    let net = c.total(|l| l.network);
    let inflate = c.total(|l| l.inflate);
    let hash_c = c.total(|l| l.hash_compressed);
    let hash_u = c.total(|l| l.hash_uncompressed);
    let hash = hash_c + hash_u;
    let unpack = c.total(|l| l.unpack);
    let serial = c.serial();
    println!();
    println!(
        "{:<46} {:>8} {:>8} {:>14}",
        "stage (all layers)", "wall s", "CPU s", "MB/s (CPU)"
    );
    let row = |name: &str, cost: Cost, rate: String| {
        println!(
            "{name:<46} {:>8.3} {:>8.3} {rate:>14}",
            cost.wall_s, cost.cpu_s
        )
    };
    row(
        "network: GET blobs to a sink, one at a time",
        net,
        format!("{:.0} gz", mbps(gz, net.cpu_s)),
    );
    println!(
        "{:<46} {:>8} {:>8.3} {:>14}",
        "  the registry serving them",
        "",
        c.registry_cpu_s(),
        format!("{:.0} gz", mbps(gz, c.registry_cpu_s()))
    );
    row(
        &format!("network: GET blobs to a sink, {} at a time", c.concurrency),
        c.network_parallel,
        format!("{:.0} gz", mbps(gz, c.network_parallel.cpu_s)),
    );
    row(
        "inflate: MultiGzDecoder (zlib-rs)",
        inflate,
        format!("{:.0} tar", mbps(tar, inflate.cpu_s)),
    );
    row(
        "hash: sha256 of compressed bytes",
        hash_c,
        format!("{:.0} gz", mbps(gz, hash_c.cpu_s)),
    );
    row(
        "hash: sha256 of uncompressed bytes",
        hash_u,
        format!("{:.0} tar", mbps(tar, hash_u.cpu_s)),
    );
    row(
        "hash: both",
        hash,
        format!("{:.0} gz+tar", mbps(gz + tar, hash.cpu_s)),
    );
    row(
        "write: unpack_layer into a fresh dir",
        unpack,
        format!("{:.0} tar", mbps(tar, unpack.cpu_s)),
    );
    row(
        "write: syncfs afterwards",
        Cost {
            wall_s: c.syncfs_s,
            cpu_s: 0.0,
        },
        String::new(),
    );
    row(
        "sum of berth's stages, one after the other",
        serial,
        format!("{:.0} gz", mbps(gz, serial.cpu_s)),
    );
    println!();
    println!(
        "model of a one-pass pull on an idle {}-core machine, {} layers at a time:",
        c.cores, c.concurrency
    );
    println!(
        "  critical path (layers on {} slots, per-layer pipeline, + syncfs): {:>7.3} s",
        c.concurrency,
        c.critical_path_s()
    );
    println!(
        "  CPU bound (all stages' CPU + registry's, over {} cores, + syncfs): {:>7.3} s",
        c.cores,
        c.cpu_bound_s()
    );
    println!(
        "  => estimate: {:.3} s = {:.0} MB/s",
        c.estimate_s(),
        mbps(gz, c.estimate_s())
    );
    if let Some(same) = c.same_fs_as_berth_root {
        println!(
            "  (unpack directory on the same file system as berthd's root: {})",
            if same { "yes" } else { "NO" }
        );
    }
    let berth = report
        .runtimes
        .iter()
        .find(|(r, _)| r.name == "berth")
        .and_then(|(_, s)| *s);
    if let Some(b) = berth {
        let (name, stage) = slowest(net.cpu_s, inflate.cpu_s, hash.cpu_s, unpack.cpu_s);
        println!(
            "berth end-to-end median: {:.3} s wall = {:.2}x the estimate, {:.2}x the serial CPU sum; slowest stage: {name} ({stage:.3} CPU s)",
            b.median_wall_s,
            b.median_wall_s / c.estimate_s(),
            b.median_wall_s / serial.cpu_s,
        );
        if let Some(cpu) = b.median_cpu_s {
            println!(
                "berthd CPU for the pull (median): {cpu:.3} s vs {:.3} s for the stages measured alone = {:.2}x",
                serial.cpu_s,
                cpu / serial.cpu_s
            );
            println!(
                "  (> 1: CPU berthd spends beyond the raw stages; < 1: its 256 KiB streaming stays in cache where the stage-by-stage measure does not)"
            );
        }
    }
}

fn slowest(net: f64, inflate: f64, hash: f64, write: f64) -> (&'static str, f64) {
    [
        ("network", net),
        ("inflate", inflate),
        ("hash", hash),
        ("write", write),
    ]
    .into_iter()
    .fold(("", 0.0), |a, b| if b.1 > a.1 { b } else { a })
}

/// Writes `report` as pretty JSON to `path`, if one was given, and says so.
pub fn write_json<T: serde::Serialize>(
    report: &T,
    path: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let Some(path) = path else { return Ok(()) };
    std::fs::write(path, serde_json::to_vec_pretty(report)?)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    println!("results written to {}", path.display());
    Ok(())
}
