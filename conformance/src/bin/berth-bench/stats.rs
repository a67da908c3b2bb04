//! `berth-bench stats`: ListContainerStats and ListPodSandboxStats of
//! issue 11, berth against containerd in the same run, as kubelet's CRI
//! stats provider calls them (its eviction manager every 10 s,
//! /stats/summary, metrics-server).
//!
//! Per runtime (a fresh daemon each, busybox pulled first): pods of
//! `--per-pod` `sleep` containers on the host network, up to each count
//! of `--containers` (100 and 250 by default). At each count, `--calls`
//! calls of each (one warm-up first, not counted), one after another:
//! p50 and p99 latency, and the CPU they cost the runtime per call (the
//! daemon's threads and every shim of its own: containerd asks each shim
//! over ttrpc, berthd reads the cgroups itself). Every answer is checked
//! to list every running container (or pod).

use std::time::Instant;

use anyhow::{Context, Result, bail};
use berth_conformance::images::{Format, ImageBuilder};
use berth_conformance::registry::Registry;
use berth_cri_api::v1::{ListContainerStatsRequest, ListPodSandboxStatsRequest};
use clap::Parser;

use crate::containerd::ContainerdSetup;
use crate::podbench::{
    Ctx, HostInfo, Procs, Tracker, cgroup_dirs, for_each_concurrently, host_info, met, on_berthd,
    on_containerd, pct, procs_naming, status_err, stuck_cgroups,
};

/// Issue 11: berth's latency at most a third of containerd's.
const TARGET_RATIO: f64 = 3.0;

#[derive(Parser, Debug)]
#[command(
    name = "berth-bench stats",
    about = "ListContainerStats / ListPodSandboxStats benchmark (issue 11): berth against containerd",
    after_help = "Example: cargo build --release -p berth-cri-server -p berth-runtime -p berth-conformance && \
        sudo target/release/berth-bench stats --containerd --json stats.json"
)]
pub struct StatsArgs {
    /// Running containers at which the calls are timed, in growing order.
    #[arg(long, value_delimiter = ',', default_values_t = [100u32, 250])]
    containers: Vec<u32>,
    /// Containers per pod.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    per_pod: u32,
    /// Calls timed of each, at each count.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    calls: u32,
    /// Also start Debian's containerd (CRI plugin, runc) and run the same workload.
    #[arg(long)]
    containerd: bool,
    /// Do not run berthd.
    #[arg(long)]
    pub skip_berth: bool,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
struct Point {
    containers: u32,
    pods: u32,
    container_stats_ms: Vec<f64>,
    pod_stats_ms: Vec<f64>,
    /// CPU of the runtime (daemon and shims) per call, milliseconds.
    container_stats_cpu_ms: f64,
    pod_stats_cpu_ms: f64,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
struct RtResult {
    name: String,
    how: String,
    points: Vec<Point>,
    error: Option<String>,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    cores: usize,
    kernel: String,
    loadavg_start: String,
    loadavg_end: String,
    per_pod: u32,
    calls: u32,
    runtimes: Vec<RtResult>,
    leftover_mounts: Vec<String>,
    leftover_processes: Vec<String>,
    leftover_cgroups: Vec<String>,
}

/// The kubelet-like parent of the bench's pod cgroups (one per run).
fn cgroup_root() -> String {
    format!("berth-bench-stats-{}", std::process::id())
}

/// CPU seconds so far of the daemon (all its threads) and its shims.
fn runtime_cpu(procs: &Procs) -> f64 {
    let mut pids: Vec<i32> = procs_naming(&procs.dir, &[])
        .into_iter()
        .filter(|(_, comm, _)| comm.starts_with(procs.shim_comm))
        .map(|(pid, _, _)| pid)
        .collect();
    if let Some(d) = procs.daemon_pid.and_then(|p| i32::try_from(p).ok()) {
        pids.push(d);
    }
    pids.sort_unstable();
    pids.dedup();
    pids.into_iter().filter_map(crate::cpu::process_cpu).sum()
}

async fn workload(ctx: &Ctx, procs: &Procs, args: &StatsArgs, r: &mut RtResult) -> Result<()> {
    ctx.client
        .pull(&ctx.image)
        .await
        .map_err(|s| status_err("PullImage busybox", s))?;
    let mut rt = ctx.client.runtime();
    let mut pods = 0u32;
    for &want in &args.containers {
        // Pods of per_pod containers until `want` run (4 pods at a time).
        let need = want.div_ceil(args.per_pod).saturating_sub(pods);
        let first = pods;
        let errors = for_each_concurrently((first..first + need).collect(), 4, |n| async move {
            let mut cfg = ctx.pod_config(&format!("stats-{n}"))?;
            // As kubelet gives it (containerd 1.6 has no pod stats without).
            cfg.linux.get_or_insert_with(Default::default).cgroup_parent =
                format!("/{}/pod{n}", cgroup_root());
            let pod = ctx.run_pod(&cfg).await?;
            for i in 0..args.per_pod {
                let id = ctx.create(&pod, &cfg, &format!("c{i}")).await?;
                ctx.start(&id).await?;
            }
            Ok(())
        })
        .await;
        if let Some(e) = errors.into_iter().next() {
            return Err(e.context(format!("making pods for {want} containers")));
        }
        pods += need;
        let running = pods * args.per_pod;
        let mut p = Point {
            containers: running,
            pods,
            ..Default::default()
        };
        // CPU over the whole batch (the kernel counts it in ticks of 10 ms).
        let mut c0 = 0.0;
        for i in 0..=args.calls {
            if i == 1 {
                c0 = runtime_cpu(procs);
            }
            let t = Instant::now();
            let n = rt
                .list_container_stats(ListContainerStatsRequest::default())
                .await
                .map_err(|s| status_err("ListContainerStats", s))?
                .into_inner()
                .stats
                .len();
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if n != running as usize {
                bail!("ListContainerStats listed {n} of {running} running containers");
            }
            if i > 0 {
                p.container_stats_ms.push(ms);
            }
        }
        p.container_stats_cpu_ms = (runtime_cpu(procs) - c0) * 1000.0 / f64::from(args.calls);
        for i in 0..=args.calls {
            if i == 1 {
                c0 = runtime_cpu(procs);
            }
            let t = Instant::now();
            let s = rt
                .list_pod_sandbox_stats(ListPodSandboxStatsRequest::default())
                .await
                .map_err(|s| status_err("ListPodSandboxStats", s))?
                .into_inner()
                .stats;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if s.len() != pods as usize {
                bail!("ListPodSandboxStats listed {} of {pods} pods", s.len());
            }
            let inside: usize = s
                .iter()
                .map(|p| p.linux.as_ref().map_or(0, |l| l.containers.len()))
                .sum();
            if inside != running as usize {
                bail!("ListPodSandboxStats carried {inside} of {running} containers");
            }
            if i > 0 {
                p.pod_stats_ms.push(ms);
            }
        }
        p.pod_stats_cpu_ms = (runtime_cpu(procs) - c0) * 1000.0 / f64::from(args.calls);
        println!(
            "{:<11} {running:>4} containers in {pods} pods: ListContainerStats p50 {:.2} ms ({:.2} ms CPU), ListPodSandboxStats p50 {:.2} ms ({:.2} ms CPU)",
            r.name,
            pct(&p.container_stats_ms, 50.0).unwrap_or(f64::NAN),
            p.container_stats_cpu_ms,
            pct(&p.pod_stats_ms, 50.0).unwrap_or(f64::NAN),
            p.pod_stats_cpu_ms,
        );
        r.points.push(p);
    }
    Ok(())
}

pub async fn run(args: StatsArgs, berthd: Option<String>) -> Result<i32> {
    let mut counts = args.containers.clone();
    counts.sort_unstable();
    counts.dedup();
    if counts.is_empty() || counts[0] == 0 {
        bail!("--containers wants counts above 0");
    }
    let args = StatsArgs {
        containers: counts,
        ..args
    };
    let HostInfo {
        cores,
        kernel,
        loadavg_start,
    } = host_info();
    let cgroups_before = cgroup_dirs(&[]);
    let run_dir = tempfile::Builder::new()
        .prefix("berth-bench-stats-")
        .tempdir()
        .context("creating the run's temp dir")?;
    println!(
        "berth-bench stats: {cores} cores, kernel {kernel}, load average {loadavg_start}, temp dir {}",
        run_dir.path().display()
    );
    if let Some(b) = &berthd {
        println!("berthd: {b}");
    }
    let containerd_version = crate::containerd::announce(args.containerd)?;
    let registry = Registry::start()
        .await
        .context("starting docker-registry")?;
    registry
        .push(
            "berth-bench/busybox",
            "1",
            &ImageBuilder::busybox(Format::Oci).build(),
        )
        .await
        .context("pushing busybox")?;
    registry
        .push("berth-bench/pause", "1", &crate::workload::pause_image())
        .await
        .context("pushing the pause image")?;
    let image = registry.reference("berth-bench/busybox:1");
    let setup = ContainerdSetup {
        registry_host: registry.host(),
        registry_url: registry.url(),
        sandbox_image: registry.reference("berth-bench/pause:1"),
        cni_conflist: None,
    };
    let mut track = Tracker {
        dirs: vec![run_dir.path().to_path_buf(), registry.dir().to_path_buf()],
        cgroup_parents: vec![cgroup_root()],
        ..Default::default()
    };
    let mut results = Vec::new();
    if !args.skip_berth {
        let mut r = RtResult {
            name: "berth".into(),
            how: berthd.clone().unwrap_or_default(),
            ..Default::default()
        };
        let out = on_berthd(
            crate::berthd_options("plugin = \"none\""),
            run_dir.path(),
            "berth",
            &image,
            &mut track,
            async |ctx, procs| workload(ctx, procs, &args, &mut r).await,
        )
        .await;
        if let Err(e) = out {
            r.error = Some(format!("{e:#}"));
            println!("berth       FAILED:\n{e:#}");
        }
        results.push(r);
    }
    if args.containerd {
        let mut r = RtResult {
            name: "containerd".into(),
            how: containerd_version.clone().unwrap_or_default(),
            ..Default::default()
        };
        let out = on_containerd(
            &setup,
            run_dir.path(),
            "containerd",
            &image,
            &mut track,
            async |ctx, procs| workload(ctx, procs, &args, &mut r).await,
        )
        .await;
        if let Err(e) = out {
            r.error = Some(format!("{e:#}"));
            println!("containerd  FAILED:\n{e:#}");
        }
        results.push(r);
    }
    drop(registry);
    let left = track.finish(run_dir, cgroups_before).await?;
    let report = Report {
        cores,
        kernel,
        loadavg_start,
        loadavg_end: crate::loadavg(),
        per_pod: args.per_pod,
        calls: args.calls,
        runtimes: results,
        leftover_mounts: left.mounts,
        leftover_processes: left.processes,
        leftover_cgroups: left.cgroups,
    };
    print_report(&report);
    crate::report::write_json(&report, args.json.as_deref())?;
    let stuck = stuck_cgroups(&report.leftover_cgroups);
    if !report.leftover_mounts.is_empty()
        || !report.leftover_processes.is_empty()
        || !stuck.is_empty()
    {
        eprintln!("berth-bench: LEFT BEHIND after the run:");
        for m in report
            .leftover_mounts
            .iter()
            .chain(&report.leftover_processes)
            .chain(stuck)
        {
            eprintln!("  {m}");
        }
        return Ok(2);
    }
    Ok(if report.runtimes.iter().any(|r| r.error.is_some()) {
        1
    } else {
        0
    })
}

fn print_report(r: &Report) {
    println!();
    println!("==== stats benchmark: summary ====");
    println!(
        "{} cores, kernel {}, load average {} -> {}; {} containers a pod, {} calls each",
        r.cores, r.kernel, r.loadavg_start, r.loadavg_end, r.per_pod, r.calls
    );
    let fmt = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or("-".into());
    println!(
        "{:<12}{:>12}{:>38}{:>38}",
        "",
        "containers",
        "ListContainerStats p50/p99 (CPU) ms",
        "ListPodSandboxStats p50/p99 (CPU) ms"
    );
    for x in &r.runtimes {
        for p in &x.points {
            println!(
                "{:<12}{:>12}{:>38}{:>38}",
                x.name,
                p.containers,
                format!(
                    "{} / {} ({:.2})",
                    fmt(pct(&p.container_stats_ms, 50.0)),
                    fmt(pct(&p.container_stats_ms, 99.0)),
                    p.container_stats_cpu_ms
                ),
                format!(
                    "{} / {} ({:.2})",
                    fmt(pct(&p.pod_stats_ms, 50.0)),
                    fmt(pct(&p.pod_stats_ms, 99.0)),
                    p.pod_stats_cpu_ms
                ),
            );
        }
    }
    let by = |n: &str| r.runtimes.iter().find(|x| x.name == n);
    if let (Some(b), Some(c)) = (by("berth"), by("containerd")) {
        println!();
        for bp in &b.points {
            let Some(cp) = c.points.iter().find(|p| p.containers == bp.containers) else {
                continue;
            };
            for (call, bv, cv) in [
                (
                    "ListContainerStats",
                    &bp.container_stats_ms,
                    &cp.container_stats_ms,
                ),
                ("ListPodSandboxStats", &bp.pod_stats_ms, &cp.pod_stats_ms),
            ] {
                let ratio = pct(cv, 50.0).zip(pct(bv, 50.0)).map(|(c, b)| c / b);
                println!(
                    "{call} at {} containers: containerd/berth p50 {}x (target >= {TARGET_RATIO}x): {}",
                    bp.containers,
                    fmt(ratio),
                    met(ratio.is_some_and(|x| x >= TARGET_RATIO))
                );
            }
        }
    }
    for x in &r.runtimes {
        if let Some(e) = &x.error {
            println!(
                "{} FAILED: {}",
                x.name,
                e.lines().next().unwrap_or_default()
            );
        }
    }
}
