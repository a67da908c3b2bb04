//! `berth-bench pods`: the pod and container workload of issue 4, berth
//! against containerd in the same run.
//!
//! Per runtime (a fresh daemon each, the busybox image pulled once first):
//!
//! * N pod lifecycles serially, then N with C at a time: RunPodSandbox,
//!   CreateContainer+StartContainer of a busybox `sleep 3600`,
//!   StopContainer+RemoveContainer, StopPodSandbox+RemovePodSandbox, each
//!   step timed (p50, p99);
//! * memory: one pod with K running containers, RSS and PSS (smaps_rollup) of
//!   the daemon and of its shims;
//! * memory: the daemon's PSS with --pss-pods pods of one running
//!   container each;
//! * ListContainers with M running containers (pods of 10).
//!
//! Pods use the host network (NamespaceMode NODE) for both runtimes, so
//! that this workload times the runtimes and not their pod networks (which
//! `berth-bench network` times): containerd sets up CNI for every pod whose
//! network is POD. PID namespace CONTAINER and IPC POD, as kubelet's
//! defaults.
//!
//! Everything is removed on every path: the pods through CRI, then the
//! daemons are stopped; shims of ours still alive are killed, mounts under
//! the bench's directories detached, and new cgroups under
//! /sys/fs/cgroup/*/berth, berthd's own parent (the harness's
//! `berth-test-…`) and /sys/fs/cgroup/*/k8s.io removed (and reported).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use berth_conformance::images::{Format, ImageBuilder};
use berth_conformance::registry::Registry;
use berth_cri_api::v1::ListContainersRequest;
use clap::Parser;

use crate::containerd::ContainerdSetup;
use crate::podbench::{
    Ctx, HostInfo, Procs, Tracker, cgroup_dirs, for_each_concurrently, host_info, met, ms,
    on_berthd, on_containerd, pct, procs_naming, status_err, stuck_cgroups,
};

/// Targets of issue 13 (the last milliseconds).
const TARGET13_CREATE_START_MS: f64 = 4.0;
const TARGET13_CREATE_START_RATIO: f64 = 12.0;
const TARGET13_STOP_REMOVE_POD_MS: f64 = 3.0;
const TARGET13_CONCURRENT_RATIO: f64 = 5.0;
const TARGET13_SHIM_PSS_KIB: u64 = 250;
const TARGET13_DAEMON_PSS_KIB: u64 = 40 * 1024;
const TARGET13_PSS_PODS: u32 = 250;
/// Targets of issue 4.
const TARGET_RUN_POD_MS: f64 = 10.0;
const TARGET_RUN_POD_RATIO: f64 = 10.0;
const TARGET_CREATE_START_RATIO: f64 = 4.0;
const TARGET_SHIM_PSS_KIB: u64 = 300;
/// Issue 12: what a pod's own user namespace (its helper, idmapped layers)
/// may add to Create+Start, per container.
/// Debian's runc, the RuntimeClass handler the bench times (issue 16).
const RUNC: &str = "/usr/sbin/runc";
const RUNC_HANDLER: &str = "runc";
const TARGET_USERNS_EXTRA_MS: f64 = 1.0;
/// The pods' ids on the node in the user-namespace phase (kubelet's kind
/// of range: a multiple of 65536 past the node's own users).
const USERNS_HOST_ID: u32 = 65536 * 9;

#[derive(Parser, Debug)]
#[command(
    name = "berth-bench pods",
    about = "Pod and container benchmark (issue 4): berth against containerd",
    long_about = "Pod and container benchmark for berth (issue 4).\n\n\
        Per runtime, with a fresh daemon (berthd: $BERTHD, else target/release/berthd; --containerd: \
        Debian's containerd 1.6 + runc with its own root, state, socket and config): pull a busybox image \
        from a loopback docker-registry once, then\n\n\
        * --pods pod lifecycles serially, then --pods more --concurrency at a time: RunPodSandbox, \
        CreateContainer+StartContainer (busybox `sleep 3600`), StopContainer (timeout 0)+RemoveContainer, \
        StopPodSandbox+RemovePodSandbox; p50 and p99 per step;\n\
        * memory: one pod with --memory-containers running containers: RSS and PSS (smaps_rollup) of the \
        daemon and of its shims;\n\
        * memory: the daemon's PSS with --pss-pods pods of one running container each;\n\
        * ListContainers with --list-containers running containers (pods of 10).\n\n\
        Pods use the host network (NamespaceMode NODE) for both runtimes, so that the pod networks are \
        not timed here (berth-bench network times those), PID namespace CONTAINER, IPC POD. Must run as root. \
        Only 127.0.0.1 is contacted.",
    after_help = "Example: cargo build --release -p berth-cri-server -p berth-runtime -p berth-conformance && \
        sudo target/release/berth-bench pods --containerd --json pods.json"
)]
pub struct PodsArgs {
    /// Pod lifecycles per phase (serial, then concurrent).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pods: u32,

    /// Pods in flight at a time in the concurrent phase.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    concurrency: u32,

    /// Running containers in the one pod whose shims' memory is measured.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    memory_containers: u32,

    /// Running containers (pods of 10) while ListContainers is timed; 0 skips it.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    list_containers: u32,

    /// Stop creating containers for the ListContainers step after this many
    /// seconds per runtime, and time ListContainers with those made so far.
    #[arg(long, default_value_t = 300)]
    list_setup_limit_s: u64,

    /// Pods (one running container each) while the daemon's PSS is
    /// measured, as on a full kubelet node (issue 13); 0 skips it.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u32).range(0..=5_000))]
    pss_pods: u32,

    /// Also start Debian's containerd (CRI plugin, overlayfs, runc) and run the same workload.
    #[arg(long)]
    containerd: bool,

    /// Do not run berthd.
    #[arg(long)]
    pub skip_berth: bool,

    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

// ------------------------------------------------------------------ results

#[derive(Clone, Debug, Default, serde::Serialize)]
struct Steps {
    /// Milliseconds per call, in order.
    run_pod: Vec<f64>,
    create: Vec<f64>,
    start: Vec<f64>,
    create_start: Vec<f64>,
    stop_remove_container: Vec<f64>,
    stop_remove_pod: Vec<f64>,
    /// Whole phase.
    wall_s: f64,
    /// The host's CPU time over the phase (all processes: daemon, shims,
    /// kernel, this bench), in core-seconds, from /proc/stat.
    cpu_s: Option<f64>,
}

impl Steps {
    fn add(&mut self, l: &Lifecycle) {
        self.run_pod.push(l.run_pod);
        self.create.push(l.create);
        self.start.push(l.start);
        self.create_start.push(l.create + l.start);
        self.stop_remove_container.push(l.stop_remove_container);
        self.stop_remove_pod.push(l.stop_remove_pod);
    }
    fn named(&self) -> [(&'static str, &Vec<f64>); 6] {
        [
            ("RunPodSandbox", &self.run_pod),
            ("CreateContainer", &self.create),
            ("StartContainer", &self.start),
            ("Create+Start", &self.create_start),
            ("StopContainer+RemoveContainer", &self.stop_remove_container),
            ("StopPodSandbox+RemovePodSandbox", &self.stop_remove_pod),
        ]
    }
}

#[derive(Clone, Debug, serde::Serialize)]
struct ProcMem {
    pid: i32,
    name: String,
    rss_kib: u64,
    pss_kib: u64,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
struct Memory {
    containers: u32,
    daemon: Option<ProcMem>,
    /// Every shim process of this daemon (berth: one per container;
    /// containerd-shim-runc-v2: one per pod).
    shims: Vec<ProcMem>,
    /// Other processes of the pod that are the runtime's overhead
    /// (containerd: the sandbox's pause container).
    pause: Vec<ProcMem>,
}

/// The daemon's memory with many pods (issue 13: berthd at most 40 MiB
/// PSS with 250 pods).
#[derive(Clone, Debug, Default, serde::Serialize)]
struct ManyPods {
    pods: u32,
    daemon: Option<ProcMem>,
    setup_s: f64,
    teardown_s: f64,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
struct Listing {
    asked: u32,
    /// Containers actually running while listing.
    containers: usize,
    setup_s: f64,
    /// Milliseconds per ListContainers call.
    list_ms: Vec<f64>,
    teardown_s: f64,
    note: String,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
struct Scrapes {
    /// Milliseconds per scrape, once a second during the concurrent phase.
    during_ms: Vec<f64>,
    /// berthd CPU milliseconds per scrape, over back-to-back scrapes.
    cpu_ms_per_scrape: f64,
    bytes: usize,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
struct RtResult {
    name: String,
    how: String,
    pull_s: f64,
    serial: Steps,
    concurrent: Steps,
    /// Serial, each pod with a user namespace of its own (berth only:
    /// containerd 1.6 has none).
    userns: Option<Steps>,
    /// Serial, each pod on RuntimeClass handler "runc" (berth only: the
    /// same runc containerd runs).
    handler_runc: Option<Steps>,
    /// berthd's /metrics endpoint (issue 16), scraped every second during
    /// the concurrent phase.
    metrics: Option<Scrapes>,
    /// berthd's own step timings over the serial and the concurrent
    /// phase (issue 13), from its /metrics.
    breakdown_serial: Option<Vec<crate::breakdown::CallRow>>,
    breakdown_concurrent: Option<Vec<crate::breakdown::CallRow>>,
    memory: Option<Memory>,
    many_pods: Option<ManyPods>,
    listing: Option<Listing>,
    error: Option<String>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
struct PodsReport {
    cores: usize,
    kernel: String,
    loadavg_start: String,
    loadavg_end: String,
    /// The kernel's memory cgroups (/proc/cgroups) at start and end: see
    /// [`memory_cgroups`].
    memory_cgroups: (Option<u64>, Option<u64>),
    pods: u32,
    concurrency: u32,
    network: String,
    /// Milliseconds per `cgroup.procs` write of a fresh process (see
    /// [`cgroup_join_probe`]).
    cgroup_join_ms: Vec<f64>,
    runtimes: Vec<RtResult>,
    leftover_mounts: Vec<String>,
    leftover_processes: Vec<String>,
    leftover_cgroups: Vec<String>,
}

// ---------------------------------------------------------------- processes

/// `Pss:` and `Rss:` of /proc/PID/smaps_rollup, in KiB.
fn mem_of(pid: i32, name: &str) -> Option<ProcMem> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |k: &str| {
        text.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some(ProcMem {
        pid,
        name: name.to_string(),
        rss_kib: field("Rss:")?,
        pss_kib: field("Pss:")?,
    })
}

fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            if let Ok(s) = fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
            }
        }
    }
    out
}

fn comm_of(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

// ------------------------------------------------------------------ cgroups

/// How many memory cgroups the kernel has (/proc/cgroups), live and dying.
/// A removed cgroup whose page cache (image files its container read, say)
/// is still charged to it lives on, dying, until that memory is reclaimed;
/// with hundreds of them here, container creation took half again as long.
fn memory_cgroups() -> Option<u64> {
    let text = fs::read_to_string("/proc/cgroups").ok()?;
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"memory"))
        .and_then(|f| f.get(2)?.parse().ok())
}

/// The kernel's price of moving a whole process into a cgroup through
/// `cgroup.procs` (what runc does, per hierarchy, once per container): a
/// fresh `sleep` moved into a fresh cgroup of its own, 7 times, 50 ms
/// apart; milliseconds of the write. Under strace only the first write of a
/// burst is slow: an RCU grace period taken for the write side of
/// cgroup_threadgroup_rwsem. berth-shim does not pay it on v1: its
/// single-threaded child moves itself through `tasks`, which skips that lock.
fn cgroup_join_probe() -> Result<Vec<f64>> {
    let base = [
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup",
    ]
    .into_iter()
    .map(Path::new)
    .find(|p| p.join("cgroup.procs").exists())
    .ok_or_else(|| anyhow!("no cgroup hierarchy found under /sys/fs/cgroup"))?;
    let dir = base.join(format!("berth-bench-probe-{}", std::process::id()));
    fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut out = Vec::new();
    let r = (|| {
        for _ in 0..7 {
            std::thread::sleep(Duration::from_millis(50));
            let mut child = std::process::Command::new("sleep").arg("10").spawn()?;
            let t = Instant::now();
            let w = fs::write(dir.join("cgroup.procs"), child.id().to_string());
            out.push(ms(t));
            let _ = child.kill();
            let _ = child.wait();
            w?;
        }
        Ok::<_, anyhow::Error>(())
    })();
    let mut removed = false;
    for _ in 0..50 {
        if fs::remove_dir(&dir).is_ok() {
            removed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    r?;
    if !removed {
        bail!("could not remove {}", dir.display());
    }
    Ok(out)
}

// ---------------------------------------------------------------- workload

struct Lifecycle {
    run_pod: f64,
    create: f64,
    start: f64,
    stop_remove_container: f64,
    stop_remove_pod: f64,
}

/// One timed pod lifecycle.
async fn lifecycle(ctx: &Ctx, name: &str) -> Result<Lifecycle> {
    lifecycle_with(ctx, name, false, "").await
}

/// One timed pod lifecycle; `userns`: the pod with a user namespace of its
/// own (userns_options POD, as kubelet sends for `hostUsers: false`);
/// `handler`: the pod on that RuntimeClass handler ("": the built-in).
async fn lifecycle_with(ctx: &Ctx, name: &str, userns: bool, handler: &str) -> Result<Lifecycle> {
    let mut config = ctx.pod_config(name)?;
    if userns {
        use berth_cri_api::v1::{IdMapping, NamespaceMode, UserNamespace};
        let m = IdMapping {
            container_id: 0,
            host_id: USERNS_HOST_ID,
            length: 65536,
        };
        if let Some(ns) = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|s| s.namespace_options.as_mut())
        {
            ns.userns_options = Some(UserNamespace {
                mode: NamespaceMode::Pod as i32,
                uids: vec![m],
                gids: vec![m],
            });
        }
    }
    let t = Instant::now();
    let pod = ctx.run_pod_on(&config, handler).await?;
    let run_pod = ms(t);
    let t = Instant::now();
    let c = ctx.create(&pod, &config, "sleep").await?;
    let create = ms(t);
    let t = Instant::now();
    ctx.start(&c).await?;
    let start = ms(t);
    let t = Instant::now();
    ctx.stop_remove_container(&c).await?;
    let stop_remove_container = ms(t);
    let t = Instant::now();
    ctx.stop_remove_pod(&pod).await?;
    let stop_remove_pod = ms(t);
    Ok(Lifecycle {
        run_pod,
        create,
        start,
        stop_remove_container,
        stop_remove_pod,
    })
}

fn host_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Busy core-seconds of the whole host since boot (/proc/stat's `cpu` line
/// less idle and iowait).
fn host_busy_s() -> Option<f64> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = text
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let busy: u64 = v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| busy as f64 / hz as f64)
}

async fn phase(ctx: &Ctx, prefix: &str, n: u32, concurrency: u32) -> Result<Steps> {
    let t = Instant::now();
    let busy0 = host_busy_s();
    let mut steps = Steps::default();
    if concurrency <= 1 {
        for i in 0..n {
            let l = lifecycle(ctx, &format!("{prefix}-{i}")).await?;
            steps.add(&l);
        }
    } else {
        let next = Arc::new(AtomicUsize::new(0));
        let results = futures::future::join_all((0..concurrency).map(|_| {
            let next = next.clone();
            async move {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n as usize {
                        return Ok::<_, anyhow::Error>(out);
                    }
                    out.push(lifecycle(ctx, &format!("{prefix}-{i}")).await?);
                }
            }
        }))
        .await;
        for r in results {
            for l in r? {
                steps.add(&l);
            }
        }
    }
    steps.wall_s = t.elapsed().as_secs_f64();
    steps.cpu_s = busy0.zip(host_busy_s()).map(|(a, b)| b - a);
    Ok(steps)
}

async fn memory(ctx: &Ctx, procs: &Procs, k: u32) -> Result<Memory> {
    let config = ctx.pod_config("mem")?;
    let pod = ctx.run_pod(&config).await?;
    for i in 0..k {
        let c = ctx.create(&pod, &config, &format!("sleep-{i}")).await?;
        ctx.start(&c).await?;
    }
    // Let the shims settle (lazy set-up, freed start-up memory).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut m = Memory {
        containers: k,
        daemon: procs.daemon_pid.and_then(|p| mem_of(p as i32, "daemon")),
        ..Default::default()
    };
    // (berthd's shim exec'd ahead for the next container is named
    // berth-shim-warm: not one of these.)
    for (pid, comm, _) in procs_naming(&procs.dir, &[procs.shim_comm]) {
        if let Some(pm) = mem_of(pid, &comm) {
            m.shims.push(pm);
        }
        // containerd's shim: its children besides the containers' processes
        // are the sandbox (pause) containers.
        if procs.shim_comm.starts_with("containerd") {
            for child in children_of(pid) {
                let c = comm_of(child);
                if c != "sleep"
                    && let Some(pm) = mem_of(child, &format!("{c} (sandbox container)"))
                {
                    m.pause.push(pm);
                }
            }
        }
    }
    ctx.stop_remove_pod(&pod).await?;
    Ok(m)
}

/// `n` pods with one running container each (10 made at a time), then
/// the daemon's PSS, then all of them removed.
async fn many_pods(ctx: &Ctx, procs: &Procs, n: u32) -> Result<ManyPods> {
    let t = Instant::now();
    let errors = for_each_concurrently((0..n).collect(), 10, |p| async move {
        let config = ctx.pod_config(&format!("many-{p}"))?;
        let pod = ctx.run_pod(&config).await?;
        let c = ctx.create(&pod, &config, "sleep").await?;
        ctx.start(&c).await?;
        Ok(())
    })
    .await;
    let mut m = ManyPods {
        pods: n,
        setup_s: t.elapsed().as_secs_f64(),
        ..Default::default()
    };
    let result = async {
        if let Some(e) = errors.into_iter().next() {
            return Err(e);
        }
        // As for the shims: let the daemon settle after the burst.
        tokio::time::sleep(Duration::from_secs(1)).await;
        m.daemon = procs.daemon_pid.and_then(|p| mem_of(p as i32, "daemon"));
        Ok(())
    }
    .await;
    let t = Instant::now();
    let removed = ctx.remove_all_pods().await;
    m.teardown_s = t.elapsed().as_secs_f64();
    result?;
    removed?;
    Ok(m)
}

async fn listing(ctx: &Ctx, m: u32, limit: Duration) -> Result<Listing> {
    let t = Instant::now();
    let pods = m.div_ceil(10);
    let made = AtomicUsize::new(0);
    let timed_out = std::sync::atomic::AtomicBool::new(false);
    let errors = for_each_concurrently((0..pods).collect(), 10, |p| {
        let (made, timed_out) = (&made, &timed_out);
        async move {
            if t.elapsed() > limit {
                timed_out.store(true, Ordering::SeqCst);
                return Ok(());
            }
            let config = ctx.pod_config(&format!("list-{p}"))?;
            let pod = ctx.run_pod(&config).await?;
            for i in 0..10.min(m - p * 10) {
                if t.elapsed() > limit {
                    timed_out.store(true, Ordering::SeqCst);
                    return Ok(());
                }
                let c = ctx.create(&pod, &config, &format!("sleep-{i}")).await?;
                ctx.start(&c).await?;
                made.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        }
    })
    .await;
    let setup_s = t.elapsed().as_secs_f64();
    let mut l = Listing {
        asked: m,
        setup_s,
        ..Default::default()
    };
    let result = async {
        if let Some(e) = errors.into_iter().next() {
            return Err(e);
        }
        // One call not timed (connection, caches), then 10 timed.
        let mut rt = ctx.client.runtime();
        let n = rt
            .list_containers(ListContainersRequest::default())
            .await
            .map_err(|s| status_err("ListContainers", s))?
            .into_inner()
            .containers
            .len();
        l.containers = n;
        for _ in 0..10 {
            let t = Instant::now();
            let got = rt
                .list_containers(ListContainersRequest::default())
                .await
                .map_err(|s| status_err("ListContainers", s))?
                .into_inner()
                .containers
                .len();
            l.list_ms.push(ms(t));
            if got != n {
                bail!("ListContainers returned {got} containers, then {n}");
            }
        }
        if timed_out.load(Ordering::SeqCst) {
            l.note = format!(
                "set-up stopped after --list-setup-limit-s {} s: {} of {m} containers made",
                limit.as_secs(),
                made.load(Ordering::SeqCst)
            );
        }
        Ok(())
    }
    .await;
    let t = Instant::now();
    let removed = ctx.remove_all_pods().await;
    l.teardown_s = t.elapsed().as_secs_f64();
    result?;
    removed?;
    Ok(l)
}

/// The whole workload against one runtime; the pods it made are removed
/// by the caller on error.
async fn workload(
    ctx: &Ctx,
    procs: &Procs,
    args: &PodsArgs,
    r: &mut RtResult,
    name: &str,
    metrics_port: Option<u16>,
) -> Result<()> {
    let t = Instant::now();
    ctx.client
        .pull(&ctx.image)
        .await
        .map_err(|s| status_err("PullImage busybox", s))?;
    r.pull_s = t.elapsed().as_secs_f64();
    // Warm-up, not counted: one lifecycle (first snapshot, caches).
    lifecycle(ctx, "warmup")
        .await
        .context("warm-up lifecycle")?;
    println!("{name:<11} serial: {} pod lifecycles...", args.pods);
    let before = match metrics_port {
        Some(p) => Some(crate::breakdown::scrape_text(p).await?),
        None => None,
    };
    r.serial = phase(ctx, "serial", args.pods, 1)
        .await
        .context("serial phase")?;
    print_steps(name, "serial", &r.serial);
    if let (Some(p), Some(before)) = (metrics_port, before) {
        let after = crate::breakdown::scrape_text(p).await?;
        let rows = crate::breakdown::between(
            &crate::breakdown::parse(&before),
            &crate::breakdown::parse(&after),
            args.pods,
        );
        crate::breakdown::print(name, "serial", &rows);
        r.breakdown_serial = Some(rows);
    }
    if name == "berth" {
        let st = ctx
            .client
            .runtime()
            .status(berth_cri_api::v1::StatusRequest { verbose: false })
            .await
            .map_err(|s| status_err("Status", s))?
            .into_inner();
        let claimed = st
            .runtime_handlers
            .iter()
            .any(|h| h.name.is_empty() && h.features.is_some_and(|f| f.user_namespaces));
        if claimed {
            println!(
                "{name:<11} serial with a user namespace per pod: {} pod lifecycles...",
                args.pods
            );
            lifecycle_with(ctx, "userns-warmup", true, "")
                .await
                .context("user-namespace warm-up")?;
            let mut steps = Steps::default();
            let t = Instant::now();
            for i in 0..args.pods {
                steps.add(
                    &lifecycle_with(ctx, &format!("userns-{i}"), true, "")
                        .await
                        .context("user-namespace phase")?,
                );
            }
            steps.wall_s = t.elapsed().as_secs_f64();
            print_steps(name, "user namespace", &steps);
            r.userns = Some(steps);
        } else {
            println!(
                "{name:<11} user namespaces: not claimed by this berthd (see its log), not timed"
            );
        }
        // The same lifecycles on RuntimeClass handler "runc" (Debian's
        // runc under berth-shim), where berthd has it.
        if st.runtime_handlers.iter().any(|h| h.name == RUNC_HANDLER) {
            println!(
                "{name:<11} serial on handler {RUNC_HANDLER:?}: {} pod lifecycles...",
                args.pods
            );
            lifecycle_with(ctx, "runc-warmup", false, RUNC_HANDLER)
                .await
                .context("runc handler warm-up")?;
            let mut steps = Steps::default();
            let t = Instant::now();
            for i in 0..args.pods {
                steps.add(
                    &lifecycle_with(ctx, &format!("runc-{i}"), false, RUNC_HANDLER)
                        .await
                        .context("runc handler phase")?,
                );
            }
            steps.wall_s = t.elapsed().as_secs_f64();
            print_steps(name, "handler runc", &steps);
            r.handler_runc = Some(steps);
        } else {
            println!("{name:<11} handler {RUNC_HANDLER:?}: {RUNC} not found, not timed");
        }
    }
    println!(
        "{name:<11} concurrent: {} pod lifecycles, {} at a time...",
        args.pods, args.concurrency
    );
    let before_conc = match metrics_port {
        Some(p) => Some(crate::breakdown::scrape_text(p).await?),
        None => None,
    };
    // A scrape a second while the concurrent phase runs, as Prometheus
    // would: its latency under load.
    let stop = Arc::new(tokio::sync::Notify::new());
    let scraper = metrics_port.map(|port| {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let t = Instant::now();
                if scrape(port).await.is_ok() {
                    out.push(ms(t));
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.notified() => break,
                }
            }
            out
        })
    });
    let conc = phase(ctx, "conc", args.pods, args.concurrency).await;
    stop.notify_one();
    let during = match scraper {
        Some(task) => task.await.unwrap_or_default(),
        None => Vec::new(),
    };
    if let (Some(p), Some(before)) = (metrics_port, before_conc) {
        let after = crate::breakdown::scrape_text(p).await?;
        r.breakdown_concurrent = Some(crate::breakdown::between(
            &crate::breakdown::parse(&before),
            &crate::breakdown::parse(&after),
            args.pods,
        ));
    }
    r.concurrent = conc.context("concurrent phase")?;
    print_steps(name, "concurrency", &r.concurrent);
    if let Some(rows) = &r.breakdown_concurrent {
        crate::breakdown::print(name, "concurrent", rows);
    }
    if let (Some(port), Some(pid)) = (metrics_port, procs.daemon_pid) {
        r.metrics = Some(measure_scrapes(port, pid as i32, during).await?);
    }
    let m = memory(ctx, procs, args.memory_containers)
        .await
        .context("memory")?;
    print_memory(name, &m);
    r.memory = Some(m);
    if args.pss_pods > 0 {
        println!(
            "{name:<11} memory with {} pods (one running container each)...",
            args.pss_pods
        );
        let mp = many_pods(ctx, procs, args.pss_pods)
            .await
            .context("many-pods memory step")?;
        if let Some(d) = &mp.daemon {
            println!(
                "{name:<11} memory with {} pods: daemon PSS {} KiB (RSS {} KiB) (set-up {:.1} s, teardown {:.1} s)",
                mp.pods, d.pss_kib, d.rss_kib, mp.setup_s, mp.teardown_s
            );
        }
        r.many_pods = Some(mp);
    }
    if args.list_containers > 0 {
        println!(
            "{name:<11} ListContainers: starting {} containers in pods of 10...",
            args.list_containers
        );
        let l = listing(
            ctx,
            args.list_containers,
            Duration::from_secs(args.list_setup_limit_s),
        )
        .await
        .context("ListContainers step")?;
        println!(
            "{name:<11} ListContainers with {} containers: p50 {:.2} ms, p99 {:.2} ms (set-up {:.1} s, teardown {:.1} s){}",
            l.containers,
            pct(&l.list_ms, 50.0).unwrap_or(f64::NAN),
            pct(&l.list_ms, 99.0).unwrap_or(f64::NAN),
            l.setup_s,
            l.teardown_s,
            if l.note.is_empty() {
                String::new()
            } else {
                format!("  NOTE: {}", l.note)
            }
        );
        r.listing = Some(l);
    }
    Ok(())
}

fn print_steps(name: &str, what: &str, s: &Steps) {
    println!(
        "{name:<11} {what}: {} lifecycles in {:.2} s{}",
        s.run_pod.len(),
        s.wall_s,
        s.cpu_s
            .map(|c| format!(
                "; the host's CPU {:.2} ms per lifecycle (all processes), its cores {:.0}% busy",
                c * 1000.0 / s.run_pod.len().max(1) as f64,
                c / s.wall_s / host_cores() as f64 * 100.0
            ))
            .unwrap_or_default()
    );
    for (step, v) in s.named() {
        println!(
            "{name:<11}   {step:<32} p50 {:>8.2} ms  p99 {:>8.2} ms",
            pct(v, 50.0).unwrap_or(f64::NAN),
            pct(v, 99.0).unwrap_or(f64::NAN)
        );
    }
}

fn print_memory(name: &str, m: &Memory) {
    if let Some(d) = &m.daemon {
        println!(
            "{name:<11} memory with {} running containers: daemon PSS {} KiB (RSS {} KiB)",
            m.containers, d.pss_kib, d.rss_kib
        );
    }
    let pss: u64 = m.shims.iter().map(|s| s.pss_kib).sum();
    let rss: u64 = m.shims.iter().map(|s| s.rss_kib).sum();
    if let Some(s) = m.shims.first() {
        println!(
            "{name:<11}   one shim ({}) PSS {} KiB (RSS {} KiB); all {} shims PSS {} KiB (RSS {} KiB)",
            s.name,
            s.pss_kib,
            s.rss_kib,
            m.shims.len(),
            pss,
            rss
        );
    }
    for p in &m.pause {
        println!(
            "{name:<11}   {} PSS {} KiB (RSS {} KiB)",
            p.name, p.pss_kib, p.rss_kib
        );
    }
}

// --------------------------------------------------------------------- run

pub async fn run(args: PodsArgs, berthd: Option<String>) -> Result<i32> {
    let HostInfo {
        cores,
        kernel,
        loadavg_start,
    } = host_info();
    let cgroups_before = cgroup_dirs(&[]);
    let memcgs_start = memory_cgroups();
    let run_dir = tempfile::Builder::new()
        .prefix("berth-bench-pods-")
        .tempdir()
        .context("creating the run's temp dir")?;
    println!(
        "berth-bench pods: {cores} cores, kernel {kernel}, load average {loadavg_start}, temp dir {}",
        run_dir.path().display()
    );
    println!(
        "pods: host network (NamespaceMode NODE) for every runtime, pid CONTAINER, ipc POD; \
         containers: busybox `sleep 3600`, StopContainer timeout 0"
    );
    if let Some(b) = &berthd {
        println!("berthd: {b}");
    }
    let containerd_version = crate::containerd::announce(args.containerd)?;

    let cgroup_join_ms = match tokio::task::spawn_blocking(cgroup_join_probe).await? {
        Ok(v) => {
            println!(
                "kernel: moving a fresh process into a cgroup through cgroup.procs (runc's way, per hierarchy): \
                 p50 {:.2} ms, max {:.2} ms",
                pct(&v, 50.0).unwrap_or(f64::NAN),
                pct(&v, 100.0).unwrap_or(f64::NAN)
            );
            v
        }
        Err(e) => {
            println!("kernel: cgroup join probe failed: {e:#}");
            Vec::new()
        }
    };

    let registry = Registry::start()
        .await
        .context("starting docker-registry")?;
    let busybox = ImageBuilder::busybox(Format::Oci)
        .label("berth.bench", "busybox")
        .build();
    registry
        .push("berth-bench/busybox", "1", &busybox)
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
        ..Default::default()
    };
    let mut results = Vec::new();
    if !args.skip_berth {
        let mut r = RtResult {
            name: "berth".into(),
            how: berthd.clone().unwrap_or_default(),
            ..Default::default()
        };
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut options = crate::berthd_options("plugin = \"none\"").extra_top_level(&format!(
            "metrics = {{ address = \"127.0.0.1:{metrics_port}\" }}"
        ));
        if Path::new(RUNC).is_file() {
            options = options.handler(RUNC_HANDLER, RUNC);
        }
        let out = on_berthd(
            options,
            run_dir.path(),
            "berth",
            &image,
            &mut track,
            async |ctx, procs| {
                workload(ctx, procs, &args, &mut r, "berth", Some(metrics_port)).await
            },
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
            async |ctx, procs| workload(ctx, procs, &args, &mut r, "containerd", None).await,
        )
        .await;
        if let Err(e) = out {
            r.error = Some(format!("{e:#}"));
            println!("containerd  FAILED:\n{e:#}");
        }
        results.push(r);
    }

    // ------------------------------------------------------------ teardown
    drop(registry);
    let left = track.finish(run_dir, cgroups_before).await?;

    let report = PodsReport {
        cores,
        kernel,
        loadavg_start,
        loadavg_end: crate::loadavg(),
        memory_cgroups: (memcgs_start, memory_cgroups()),
        pods: args.pods,
        concurrency: args.concurrency,
        network: "host (NamespaceMode NODE) for every runtime".into(),
        cgroup_join_ms,
        runtimes: results,
        leftover_mounts: left.mounts,
        leftover_processes: left.processes,
        leftover_cgroups: left.cgroups,
    };
    print_report(&report);
    crate::report::write_json(&report, args.json.as_deref())?;
    // Cgroups the runtimes left are removed above; only those that could
    // not be removed count as left behind.
    let stuck = stuck_cgroups(&report.leftover_cgroups);
    let left = !report.leftover_mounts.is_empty()
        || !report.leftover_processes.is_empty()
        || !stuck.is_empty();
    if left {
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

// ------------------------------------------------------------------ report

fn print_report(r: &PodsReport) {
    println!();
    println!("==== pods benchmark: summary ====");
    println!(
        "{} cores, kernel {}, load average {} -> {}; {} pods per phase, concurrency {}; network: {}; {}",
        r.cores,
        r.kernel,
        r.loadavg_start,
        r.loadavg_end,
        r.pods,
        r.concurrency,
        r.network,
        crate::where_state_and_root_are()
    );
    if let (Some(a), Some(b)) = r.memory_cgroups {
        println!(
            "memory cgroups in the kernel: {a} -> {b} (most of them dying: removed, still holding \
             page cache; many of them slow every runtime's cgroup work, so compare runs made \
             from similar counts)"
        );
    }
    let by: BTreeMap<&str, &RtResult> = r.runtimes.iter().map(|x| (x.name.as_str(), x)).collect();
    for (label, pick) in [
        (
            "serial",
            (|x: &RtResult| &x.serial) as fn(&RtResult) -> &Steps,
        ),
        ("concurrency", |x: &RtResult| &x.concurrent),
    ] {
        println!();
        let c = if label == "serial" {
            "serial".to_string()
        } else {
            format!("concurrency {}", r.concurrency)
        };
        print!("{:<34}", format!("{c}, ms (p50 / p99)"));
        for x in &r.runtimes {
            print!("{:>22}", x.name);
        }
        if by.contains_key("berth") && by.contains_key("containerd") {
            print!("{:>20}", "containerd/berth");
        }
        println!();
        let names: Vec<&str> = Steps::default().named().iter().map(|(n, _)| *n).collect();
        for (i, step) in names.iter().enumerate() {
            print!("{step:<34}");
            for x in &r.runtimes {
                let v = pick(x).named()[i].1.clone();
                match (pct(&v, 50.0), pct(&v, 99.0)) {
                    (Some(a), Some(b)) => print!("{:>22}", format!("{a:.2} / {b:.2}")),
                    _ => print!("{:>22}", "-"),
                }
            }
            if let (Some(b), Some(c)) = (by.get("berth"), by.get("containerd")) {
                let (vb, vc) = (pick(b).named()[i].1.clone(), pick(c).named()[i].1.clone());
                match (pct(&vb, 50.0), pct(&vc, 50.0)) {
                    (Some(b), Some(c)) if b > 0.0 => print!("{:>20}", format!("{:.1}x", c / b)),
                    _ => print!("{:>20}", "-"),
                }
            }
            println!();
        }
        print!("{:<34}", "wall time of the phase, s");
        for x in &r.runtimes {
            print!("{:>22}", format!("{:.2}", pick(x).wall_s));
        }
        println!();
    }

    println!();
    println!("memory (KiB, from /proc/PID/smaps_rollup)     PSS        RSS");
    for x in &r.runtimes {
        if let Some(mp) = &x.many_pods
            && let Some(d) = &mp.daemon
        {
            println!(
                "{:<44} {:>6} {:>10}",
                format!("{} daemon with {} pods", x.name, mp.pods),
                d.pss_kib,
                d.rss_kib
            );
        }
        let Some(m) = &x.memory else { continue };
        if let Some(d) = &m.daemon {
            println!(
                "{:<44} {:>6} {:>10}",
                format!("{} daemon", x.name),
                d.pss_kib,
                d.rss_kib
            );
        }
        if let Some(s) = m.shims.first() {
            println!(
                "{:<44} {:>6} {:>10}",
                format!("{} one shim", x.name),
                s.pss_kib,
                s.rss_kib
            );
        }
        println!(
            "{:<44} {:>6} {:>10}",
            format!(
                "{} all {} shims ({} containers)",
                x.name,
                m.shims.len(),
                m.containers
            ),
            m.shims.iter().map(|s| s.pss_kib).sum::<u64>(),
            m.shims.iter().map(|s| s.rss_kib).sum::<u64>()
        );
        for p in &m.pause {
            println!(
                "{:<44} {:>6} {:>10}",
                format!("{} {}", x.name, p.name),
                p.pss_kib,
                p.rss_kib
            );
        }
    }
    if by.contains_key("containerd") {
        println!(
            "(containerd-shim-runc-v2: one shim per pod serving all its containers, plus the pod's \
             sandbox (pause) container; berth-shim: one per container, no sandbox process with pid \
             CONTAINER)"
        );
    }

    println!();
    for x in &r.runtimes {
        if let Some(l) = &x.listing {
            println!(
                "{:<11} ListContainers with {} running containers: p50 {:.2} ms, p99 {:.2} ms (set-up {:.1} s){}",
                x.name,
                l.containers,
                pct(&l.list_ms, 50.0).unwrap_or(f64::NAN),
                pct(&l.list_ms, 99.0).unwrap_or(f64::NAN),
                l.setup_s,
                if l.note.is_empty() {
                    String::new()
                } else {
                    format!("; {}", l.note)
                }
            );
        }
    }
    for x in &r.runtimes {
        if let Some(e) = &x.error {
            println!(
                "{}: FAILED: {}",
                x.name,
                e.lines().next().unwrap_or_default()
            );
        }
    }

    if !r.cgroup_join_ms.is_empty() {
        println!(
            "kernel: a cgroup.procs write of a fresh process takes p50 {:.2} ms here (an RCU grace period for the \
             cgroup threadgroup lock), per hierarchy, in runc; berth-shim moves its single-threaded child through \
             the v1 `tasks` file, which skips that lock",
            pct(&r.cgroup_join_ms, 50.0).unwrap_or(f64::NAN)
        );
    }

    println!();
    println!("targets (issue 4; serial p50s):");
    let b = by.get("berth").filter(|b| b.error.is_none());
    let c = by.get("containerd").filter(|c| c.error.is_none());
    let p50 = |x: &RtResult, f: fn(&Steps) -> &Vec<f64>| pct(f(&x.serial), 50.0);
    match b.and_then(|b| p50(b, |s| &s.run_pod)) {
        Some(v) => println!(
            "  RunPodSandbox p50 under {TARGET_RUN_POD_MS} ms (no network): {v:.2} ms: {}",
            met(v < TARGET_RUN_POD_MS)
        ),
        None => println!("  RunPodSandbox p50 under {TARGET_RUN_POD_MS} ms: not measured"),
    }
    match (
        b.and_then(|b| p50(b, |s| &s.run_pod)),
        c.and_then(|c| p50(c, |s| &s.run_pod)),
    ) {
        (Some(vb), Some(vc)) => println!(
            "  RunPodSandbox p50 at most 1/{TARGET_RUN_POD_RATIO} of containerd's: {vb:.2} vs {vc:.2} ms ({:.1}x faster): {}",
            vc / vb,
            met(vb * TARGET_RUN_POD_RATIO <= vc)
        ),
        _ => println!(
            "  RunPodSandbox at most 1/{TARGET_RUN_POD_RATIO} of containerd's: not measured"
        ),
    }
    match (
        b.and_then(|b| p50(b, |s| &s.create_start)),
        c.and_then(|c| p50(c, |s| &s.create_start)),
    ) {
        (Some(vb), Some(vc)) => println!(
            "  Create+Start p50 at most 1/{TARGET_CREATE_START_RATIO} of containerd's: {vb:.2} vs {vc:.2} ms ({:.1}x faster): {}",
            vc / vb,
            met(vb * TARGET_CREATE_START_RATIO <= vc)
        ),
        _ => println!(
            "  Create+Start at most 1/{TARGET_CREATE_START_RATIO} of containerd's: not measured"
        ),
    }
    match b
        .and_then(|b| b.memory.as_ref())
        .and_then(|m| m.shims.iter().map(|s| s.pss_kib).max())
    {
        Some(v) => println!(
            "  berth-shim PSS under {TARGET_SHIM_PSS_KIB} KiB: largest of the shims {v} KiB: {}",
            met(v < TARGET_SHIM_PSS_KIB)
        ),
        None => println!("  berth-shim PSS under {TARGET_SHIM_PSS_KIB} KiB: not measured"),
    }
    if let Some(b) = b {
        print_userns(b);
        print_handler(b, c.copied());
        print_issue13(b, c.copied(), r.concurrency);
    }
    if r.leftover_mounts.is_empty() && r.leftover_processes.is_empty() {
        println!(
            "clean-up: no mount or process left under the bench's directories; cgroups removed after the run: {}",
            if r.leftover_cgroups.is_empty() {
                "none".to_string()
            } else {
                r.leftover_cgroups.join(", ")
            }
        );
    }
}

/// Issue 13's targets of this workload (serial p50s; the concurrent
/// phase against the serial one).
fn print_issue13(b: &RtResult, c: Option<&RtResult>, concurrency: u32) {
    println!("targets (issue 13):");
    let p50 = |v: &Vec<f64>| pct(v, 50.0).unwrap_or(f64::NAN);
    let cs = p50(&b.serial.create_start);
    println!(
        "  Create+Start p50 at most {TARGET13_CREATE_START_MS} ms: {cs:.2} ms: {}",
        met(cs <= TARGET13_CREATE_START_MS)
    );
    if let Some(c) = c {
        let (vb, vc) = (p50(&b.serial.create_start), p50(&c.serial.create_start));
        println!(
            "  Create+Start at least {TARGET13_CREATE_START_RATIO}x faster than containerd: {vb:.2} vs {vc:.2} ms ({:.1}x): {}",
            vc / vb,
            met(vb * TARGET13_CREATE_START_RATIO <= vc)
        );
        let (vb, vc) = (p50(&b.serial.create), p50(&c.serial.create));
        println!(
            "  CreateContainer at most half of containerd's: {vb:.2} vs {vc:.2} ms: {}",
            met(vb * 2.0 <= vc)
        );
    }
    let srp = p50(&b.serial.stop_remove_pod);
    println!(
        "  StopPodSandbox+RemovePodSandbox p50 at most {TARGET13_STOP_REMOVE_POD_MS} ms: {srp:.2} ms: {}",
        met(srp <= TARGET13_STOP_REMOVE_POD_MS)
    );
    for (step, serial) in b.serial.named() {
        let conc = b
            .concurrent
            .named()
            .into_iter()
            .find(|(s, _)| *s == step)
            .map(|(_, v)| p50(v))
            .unwrap_or(f64::NAN);
        let ratio = conc / p50(serial);
        println!(
            "  {step} at concurrency: p50 at most {TARGET13_CONCURRENT_RATIO}x the serial one: {conc:.2} vs {:.2} ms ({ratio:.1}x): {}",
            p50(serial),
            met(ratio <= TARGET13_CONCURRENT_RATIO)
        );
    }
    // What the CPU alone allows: with C lifecycles in flight on K cores
    // and X ms of the host's CPU per lifecycle, each takes about C/K * X
    // ms; against its serial time Y, that is C/K * X/Y.
    if let Some(cpu) = b.concurrent.cpu_s {
        let n = b.concurrent.run_pod.len().max(1) as f64;
        let x = cpu * 1000.0 / n;
        let y: f64 = [
            &b.serial.run_pod,
            &b.serial.create_start,
            &b.serial.stop_remove_container,
            &b.serial.stop_remove_pod,
        ]
        .iter()
        .map(|v| p50(v))
        .sum();
        let c = f64::from(concurrency).min(n);
        let k = host_cores() as f64;
        println!(
            "  (the CPU's share: at concurrency {c:.0} on {k:.0} cores a lifecycle taking {x:.2} ms of the host's CPU \
             (all processes) cannot take less than {:.1} ms; a serial one takes {y:.2} ms: {:.1}x from CPU alone)",
            c / k * x,
            c / k * x / y
        );
    }
    match b
        .memory
        .as_ref()
        .and_then(|m| m.shims.iter().map(|s| s.pss_kib).max())
    {
        Some(v) => println!(
            "  berth-shim PSS at most {TARGET13_SHIM_PSS_KIB} KiB idle: largest {v} KiB: {}",
            met(v <= TARGET13_SHIM_PSS_KIB)
        ),
        None => println!("  berth-shim PSS at most {TARGET13_SHIM_PSS_KIB} KiB: not measured"),
    }
    match b
        .many_pods
        .as_ref()
        .and_then(|m| Some((m.pods, m.daemon.as_ref()?.pss_kib)))
    {
        Some((n, v)) if n >= TARGET13_PSS_PODS => println!(
            "  berthd PSS at most {} MiB with {TARGET13_PSS_PODS} pods: {:.1} MiB with {n}: {}",
            TARGET13_DAEMON_PSS_KIB / 1024,
            v as f64 / 1024.0,
            met(v <= TARGET13_DAEMON_PSS_KIB)
        ),
        _ => println!(
            "  berthd PSS at most {} MiB with {TARGET13_PSS_PODS} pods: not measured (--pss-pods {TARGET13_PSS_PODS})",
            TARGET13_DAEMON_PSS_KIB / 1024
        ),
    }
}

/// A pod with its own user namespace against one without (issue 12):
/// p50 of each step and what the user namespace adds.
fn print_userns(b: &RtResult) {
    let Some(u) = &b.userns else {
        println!(
            "  user namespace adds at most {TARGET_USERNS_EXTRA_MS} ms to Create+Start: not measured"
        );
        return;
    };
    println!();
    println!(
        "{:<34}{:>14}{:>18}{:>12}",
        "berth serial, p50 ms", "plain", "user namespace", "added"
    );
    for ((step, plain), (_, with)) in b.serial.named().iter().zip(u.named().iter()) {
        let (p, w) = (
            pct(plain, 50.0).unwrap_or(f64::NAN),
            pct(with, 50.0).unwrap_or(f64::NAN),
        );
        println!("{step:<34}{p:>14.2}{w:>18.2}{:>12.2}", w - p);
    }
    let p50 = |v: &Vec<f64>| pct(v, 50.0).unwrap_or(f64::NAN);
    let added = p50(&u.create_start) - p50(&b.serial.create_start);
    println!(
        "  user namespace adds at most {TARGET_USERNS_EXTRA_MS} ms to Create+Start (idmapped layers): {added:.2} ms: {}",
        met(added <= TARGET_USERNS_EXTRA_MS)
    );
}

/// Create+Start and the other steps on handler runc against the built-in
/// executor and containerd (which runs the same runc): p50s.
fn print_handler(b: &RtResult, c: Option<&RtResult>) {
    let Some(h) = &b.handler_runc else {
        println!("  handler runc: not measured");
        return;
    };
    println!();
    println!(
        "{:<34}{:>14}{:>16}{:>14}",
        "serial, p50 ms", "berth built-in", "berth + runc", "containerd"
    );
    let cd: Vec<(&str, &Vec<f64>)> = c.map(|c| c.serial.named().to_vec()).unwrap_or_default();
    for (i, ((step, plain), (_, with))) in b.serial.named().iter().zip(h.named().iter()).enumerate()
    {
        let p50 = |v: &Vec<f64>| pct(v, 50.0).unwrap_or(f64::NAN);
        let cv = cd.get(i).map(|(_, v)| p50(v)).unwrap_or(f64::NAN);
        println!(
            "{step:<34}{:>14.2}{:>16.2}{cv:>14.2}",
            p50(plain),
            p50(with)
        );
    }
    let p50 = |v: &Vec<f64>| pct(v, 50.0).unwrap_or(f64::NAN);
    let (vb, vh) = (p50(&b.serial.create_start), p50(&h.create_start));
    match c.map(|c| p50(&c.serial.create_start)) {
        Some(vc) => println!(
            "  Create+Start on handler runc: {vh:.2} ms, {:.1}x the built-in's {vb:.2} ms; containerd+runc {vc:.2} ms ({:.1}x berth+runc)",
            vh / vb,
            vc / vh
        ),
        None => println!(
            "  Create+Start on handler runc: {vh:.2} ms, {:.1}x the built-in's {vb:.2} ms",
            vh / vb
        ),
    }
}

/// GET /metrics from berthd's endpoint on loopback; the body's length.
async fn scrape(port: u16) -> Result<usize> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await??;
    if !out.starts_with(b"HTTP/1.0 200") && !out.starts_with(b"HTTP/1.1 200") {
        bail!(
            "the metrics endpoint answered {:?}",
            String::from_utf8_lossy(&out[..out.len().min(40)])
        );
    }
    Ok(out.len())
}

/// berthd's CPU per scrape, over 500 scrapes back to back.
async fn measure_scrapes(port: u16, pid: i32, during: Vec<f64>) -> Result<Scrapes> {
    // Clock ticks are 10 ms: enough scrapes that their CPU shows.
    const N: u32 = 500;
    let before = crate::cpu::process_cpu(pid).ok_or_else(|| anyhow!("berthd is gone"))?;
    let mut bytes = 0;
    for _ in 0..N {
        bytes = scrape(port).await.context("scraping /metrics")?;
    }
    let after = crate::cpu::process_cpu(pid).ok_or_else(|| anyhow!("berthd is gone"))?;
    let s = Scrapes {
        during_ms: during,
        cpu_ms_per_scrape: (after - before) * 1000.0 / f64::from(N),
        bytes,
    };
    println!(
        "berth       /metrics: {} scrapes during the concurrent phase, p50 {:.2} ms, max {:.2} ms; \
         berthd CPU {:.3} ms per scrape ({} bytes): a scrape a second costs {:.3}% of a core",
        s.during_ms.len(),
        pct(&s.during_ms, 50.0).unwrap_or(f64::NAN),
        pct(&s.during_ms, 100.0).unwrap_or(f64::NAN),
        s.cpu_ms_per_scrape,
        s.bytes,
        s.cpu_ms_per_scrape / 10.0
    );
    Ok(s)
}
