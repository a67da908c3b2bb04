//! berth-bench: cold image pulls through CRI, berth against containerd (or
//! any CRI endpoint), and where berth's time goes. See `--help`.

mod breakdown;
mod client;
mod components;
mod containerd;
mod cpu;
mod network;
mod podbench;
mod pods;
mod report;
mod stats;
mod streaming;
mod workload;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use berth_conformance::berthd::{Berthd, BerthdOptions};
use berth_conformance::images::Image;
use berth_conformance::leak;
use berth_conformance::registry::Registry;
use clap::Parser;

use crate::containerd::{Containerd, ContainerdSetup};
use crate::report::{ImageDesc, Iteration, Machine, Report, RuntimeResult};
use crate::workload::MB;

/// A file system probe slower than this (microseconds per empty file; about
/// 40 here normally) marks a pull as skewed.
const SLOW_FS_PROBE_US: f64 = 200.0;

/// A pull that takes longer than this is a failure.
const PULL_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Parser, Debug)]
#[command(
    name = "berth-bench",
    about = "Cold image pull benchmark: berth against containerd or any CRI endpoint",
    long_about = "Cold image pull benchmark for berth (issue 3).\n\n\
        Generates a multi-layer image (gzip layers; incompressible and compressible content, many small \
        files and a few large ones) of at least --size-mb MB compressed, pushes it to a loopback \
        docker-registry (Debian's docker-registry) and pulls it cold through the CRI socket \
        (PullImage), --iterations times per runtime, iterations of the runtimes interleaved:\n\n\
        * berth: a fresh berthd with a fresh root per pull ($BERTHD, else target/release/berthd);\n\
        * --containerd: Debian's containerd 1.6 + runc with its own root, state, socket and config under \
        a temp dir, a fresh root per pull;\n\
        * --endpoint unix:///path.sock: an already running CRI runtime (the image is removed with \
        RemoveImage before each pull; its store may not be fully cold).\n\n\
        Reports wall time, MB/s (compressed and uncompressed bytes / wall time), the daemon's CPU time \
        (utime+stime of it and its children from /proc), the berth/other ratios against the target \
        (berth >= 2x containerd's throughput), and a breakdown of berth's stages measured in-process \
        (network, inflate, hash, write). MB = 10^6 bytes. Must run as root. Only 127.0.0.1 is contacted.",
    after_help = "Example: cargo build --release -p berth-cri-server -p berth-conformance && \
        sudo target/release/berth-bench --containerd --iterations 3 --json bench.json\n\n\
        The pod and container benchmark (issue 4) is another mode: berth-bench pods --help; the pod \
        network benchmark another: berth-bench network --help"
)]
struct Args {
    /// Cold pulls per runtime.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    iterations: u32,

    /// Minimum compressed size of the generated image, in MB (10^6 bytes).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(8..=20_000))]
    size_mb: u64,

    /// Also start Debian's containerd (CRI plugin, overlayfs) per pull and pull the same image with it.
    #[arg(long)]
    containerd: bool,

    /// An already running CRI endpoint to pull with too, as unix:///path.sock (repeatable).
    #[arg(long, value_name = "unix:///PATH.sock")]
    endpoint: Vec<String>,

    /// Do not run berthd (only the other runtimes and the stage breakdown).
    #[arg(long)]
    skip_berth: bool,

    /// Skip the in-process breakdown of berth's stages.
    #[arg(long)]
    skip_breakdown: bool,

    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Seed of the generated image's content.
    #[arg(long, default_value_t = 0xBE27)]
    seed: u64,
}

/// One runtime under test.
enum Target {
    Berth,
    Containerd(ContainerdSetup),
    Endpoint {
        socket: PathBuf,
        client: Box<client::Client>,
        pid: Option<u32>,
    },
}

impl Target {
    fn name(&self, index: usize) -> String {
        match self {
            Target::Berth => "berth".into(),
            Target::Containerd(_) => "containerd".into(),
            Target::Endpoint { .. } => format!("endpoint{}", index),
        }
    }
}

/// What the run created: every directory (for the final mount check), and
/// the stopped daemons' directories, kept until every measurement is done.
///
/// Deleting thousands of files makes creating files slower for minutes on
/// this machine's ext4 (mounted without a journal, its inode allocator skips
/// recently deleted inodes one by one), so no pull may run right after a
/// previous root was deleted.
#[derive(Default)]
struct Owned {
    dirs: Vec<PathBuf>,
    stopped_berthd: Vec<Berthd>,
    stopped_dirs: Vec<tempfile::TempDir>,
}

/// Before each pull: flush what earlier pulls left dirty (syncfs, not
/// timed), then time creating 1000 empty files (kept until the end) as a
/// health probe of the file system. Returns microseconds per file.
fn prepare_fs(run_dir: &Path, n: usize) -> Result<f64> {
    let f = std::fs::File::open(run_dir)?;
    rustix::fs::syncfs(&f).context("syncfs before a pull")?;
    let probe = run_dir.join(format!("fs-probe-{n}"));
    std::fs::create_dir(&probe)?;
    let t = Instant::now();
    for i in 0..1000 {
        std::fs::File::create_new(probe.join(i.to_string()))?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / 1000.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Where berthd comes from: `$BERTHD` as given; else the harness's choice
/// (`berthd` next to this executable, which the harness first brings up to
/// date with `cargo build`: done here, before anything is timed). A bench
/// that is not itself a release build re-executes itself with BERTHD set to
/// `target/release/berthd` when that exists.
fn choose_berthd() -> Result<String> {
    let kind = |p: &Path| {
        if p.components().any(|c| c.as_os_str() == "release") {
            "release build"
        } else {
            "NOT a release build: numbers will be slow"
        }
    };
    if let Some(p) = std::env::var_os("BERTHD") {
        let p = PathBuf::from(p);
        if !p.is_absolute() {
            // berthd is spawned from another working directory.
            bail!(
                "BERTHD={} is relative: give an absolute path (e.g. BERTHD=$PWD/{})",
                p.display(),
                p.display()
            );
        }
        return Ok(format!(
            "{} ($BERTHD, {}{})",
            p.display(),
            kind(&p),
            mtime(&p)
        ));
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow!("no parent of {}", exe.display()))?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let release = dir.parent().map(|t| t.join("release").join("berthd"));
    if dir.file_name().is_none_or(|n| n != "release")
        && let Some(release) = release.filter(|r| r.exists())
    {
        eprintln!(
            "berth-bench: using the release berthd {}{} (set BERTHD to choose another)",
            release.display(),
            mtime(&release)
        );
        let err = std::process::Command::new(&exe)
            .args(std::env::args_os().skip(1))
            .env("BERTHD", &release)
            .exec();
        bail!(
            "re-executing {} with BERTHD={}: {err}",
            exe.display(),
            release.display()
        );
    }
    eprintln!(
        "berth-bench: making sure berthd is built and up to date (cargo build, via the harness)..."
    );
    let bin = berth_conformance::berthd::berthd_binary()
        .context("locating berthd (or pass --skip-berth, or set BERTHD=/path/to/berthd)")?;
    Ok(format!("{} ({}{})", bin.display(), kind(&bin), mtime(&bin)))
}

fn mtime(p: &Path) -> String {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map(|age| format!(", built {} s ago", age.as_secs()))
        .unwrap_or_default()
}

/// The modes: the pull benchmark (no subcommand, issue 3) or `pods`
/// (issue 4).
enum Mode {
    Pull(Args),
    Pods(pods::PodsArgs),
    Network(network::NetworkArgs),
    Streaming(streaming::StreamingArgs),
    Stats(stats::StatsArgs),
}

fn main() {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mode = if argv.get(1).is_some_and(|a| a == "pods") {
        Mode::Pods(pods::PodsArgs::parse_from(
            std::iter::once(std::ffi::OsString::from("berth-bench pods"))
                .chain(argv[2..].iter().cloned()),
        ))
    } else if argv.get(1).is_some_and(|a| a == "network") {
        Mode::Network(network::NetworkArgs::parse_from(
            std::iter::once(std::ffi::OsString::from("berth-bench network"))
                .chain(argv[2..].iter().cloned()),
        ))
    } else if argv.get(1).is_some_and(|a| a == "streaming") {
        Mode::Streaming(streaming::StreamingArgs::parse_from(
            std::iter::once(std::ffi::OsString::from("berth-bench streaming"))
                .chain(argv[2..].iter().cloned()),
        ))
    } else if argv.get(1).is_some_and(|a| a == "stats") {
        Mode::Stats(stats::StatsArgs::parse_from(
            std::iter::once(std::ffi::OsString::from("berth-bench stats"))
                .chain(argv[2..].iter().cloned()),
        ))
    } else {
        Mode::Pull(Args::parse())
    };
    let code = match start(mode) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth-bench: error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

/// Exit status: 0 all pulls and measurements done, 1 something failed,
/// 2 mounts were left behind, 130 interrupted.
fn start(mode: Mode) -> Result<i32> {
    if !nix::unistd::geteuid().is_root() {
        bail!("berth-bench must run as root (berthd and containerd unpack image layers as root)");
    }
    let skip_berth = match &mode {
        Mode::Pull(a) => a.skip_berth,
        Mode::Pods(a) => a.skip_berth,
        Mode::Network(a) => a.skip_berth,
        Mode::Streaming(a) => a.skip_berth,
        Mode::Stats(a) => a.skip_berth,
    };
    let berthd = if skip_berth {
        None
    } else {
        Some(choose_berthd()?)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // The bench's future runs on this (main) thread: the children it spawns
    // get PR_SET_PDEATHSIG tied to it. On Ctrl-C the future is dropped, and
    // with it every guard (daemons, containerd and its mounts, temp dirs).
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = async {
                match mode {
                    Mode::Pull(args) => run(args, berthd).await,
                    Mode::Pods(args) => pods::run(args, berthd).await,
                    Mode::Network(args) => network::run(args, berthd).await,
                    Mode::Streaming(args) => streaming::run(args, berthd).await,
                    Mode::Stats(args) => stats::run(args, berthd).await,
                }
            } => r,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("berth-bench: interrupted: stopping and removing everything it started");
                Ok(130)
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    outcome
}

async fn run(args: Args, berthd: Option<String>) -> Result<i32> {
    let loadavg_start = loadavg();
    let run_dir = tempfile::Builder::new()
        .prefix("berth-bench-")
        .tempdir()
        .context("creating the run's temp dir")?;
    let mut owned = Owned {
        dirs: vec![run_dir.path().to_path_buf()],
        ..Default::default()
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    println!(
        "berth-bench: {cores} cores, kernel {kernel}, load average {loadavg_start}, temp dir {}",
        run_dir.path().display()
    );
    if let Some(b) = &berthd {
        println!("berthd: {b}");
    }
    let containerd_version = if args.containerd {
        Some(Containerd::check_installed()?)
    } else {
        None
    };
    if let Some(v) = &containerd_version {
        println!("containerd: {v} ({})", containerd::CONTAINERD_BIN);
    }

    // ---------------------------------------------------------------- image
    let target = args.size_mb * 1_000_000;
    let seed = args.seed;
    let generated = tokio::task::spawn_blocking(move || workload::generate(target, seed)).await??;
    let img = &generated.image;
    println!(
        "image: {} layers, {:.1} MB compressed, {:.1} MB uncompressed, generated in {:.2} s",
        img.layers.len(),
        generated.compressed() as f64 / MB,
        generated.uncompressed() as f64 / MB,
        generated.generation.as_secs_f64()
    );
    for (i, l) in generated.layers.iter().enumerate() {
        println!(
            "  layer {i}: {:<20} {:>7} files {:>8.1} MB gz {:>8.1} MB tar  (ratio {:.2})",
            l.name,
            l.files,
            l.compressed_bytes as f64 / MB,
            l.uncompressed_bytes as f64 / MB,
            l.uncompressed_bytes as f64 / l.compressed_bytes.max(1) as f64
        );
    }

    let registry = Registry::start()
        .await
        .context("starting docker-registry")?;
    owned.dirs.push(registry.dir().to_path_buf());
    let repo = "berth-bench/big";
    let tag = format!("s{}-{}", args.size_mb, args.seed);
    let t = Instant::now();
    registry
        .push(repo, &tag, img)
        .await
        .context("pushing the bench image")?;
    let pause = workload::pause_image();
    registry
        .push("berth-bench/pause", "1", &pause)
        .await
        .context("pushing the pause image")?;
    let push_s = t.elapsed().as_secs_f64();
    let reference = registry.reference(&format!("{repo}:{tag}"));
    println!(
        "registry: {} (pid {:?}), pushed {reference} in {push_s:.2} s",
        registry.url(),
        registry.pid()
    );

    // ------------------------------------------------------------- runtimes
    let mut targets: Vec<Target> = Vec::new();
    if !args.skip_berth {
        targets.push(Target::Berth);
    }
    if args.containerd {
        targets.push(Target::Containerd(ContainerdSetup {
            registry_host: registry.host(),
            registry_url: registry.url(),
            sandbox_image: registry.reference("berth-bench/pause:1"),
            cni_conflist: None,
        }));
    }
    for e in &args.endpoint {
        let path = PathBuf::from(e.strip_prefix("unix://").unwrap_or(e));
        if !path.is_absolute() {
            bail!("--endpoint {e}: expected unix:///absolute/path.sock");
        }
        let client = client::connect(&path, PULL_TIMEOUT).await?;
        let v = client
            .version()
            .await
            .map_err(|s| anyhow!("--endpoint {e}: Version: {s}"))?;
        let pid = cpu::pid_listening_on(&path.display().to_string());
        println!(
            "endpoint {e}: {} {} (CRI {}), daemon pid {}",
            v.runtime_name,
            v.runtime_version,
            v.runtime_api_version,
            pid.map(|p| p.to_string())
                .unwrap_or_else(|| "not found: CPU not measured".into())
        );
        targets.push(Target::Endpoint {
            socket: path,
            client: Box::new(client),
            pid,
        });
    }
    if targets.is_empty() {
        println!("no runtime to pull with (--skip-berth without --containerd or --endpoint)");
    }
    let mut results: Vec<RuntimeResult> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| RuntimeResult {
            name: t.name(i),
            endpoint: match t {
                Target::Berth => "fresh berthd per pull".into(),
                Target::Containerd(_) => "fresh containerd per pull".into(),
                Target::Endpoint { socket, .. } => format!("unix://{}", socket.display()),
            },
            how: match t {
                Target::Berth => berthd.clone().unwrap_or_default(),
                Target::Containerd(_) => containerd_version.clone().unwrap_or_default(),
                Target::Endpoint { .. } => "already running".into(),
            },
            cold_note: match t {
                Target::Endpoint { .. } => {
                    "RemoveImage before each pull: the runtime's store may not be fully cold (content or \
                     snapshots kept until its GC runs, caches)"
                        .into()
                }
                _ => String::new(),
            },
            iterations: Vec::new(),
            error: None,
        })
        .collect();

    let mut berth_root_seen: Option<PathBuf> = None;
    let mut probes = 0;
    for iter in 0..args.iterations {
        for (ti, t) in targets.iter().enumerate() {
            if results[ti].error.is_some() {
                continue;
            }
            let name = results[ti].name.clone();
            probes += 1;
            let probe_us = prepare_fs(run_dir.path(), probes)?;
            let r = match t {
                Target::Berth => {
                    pull_berth(&reference, img, &registry, &mut owned, &mut berth_root_seen).await
                }
                Target::Containerd(setup) => {
                    pull_containerd(
                        &reference,
                        img,
                        &registry,
                        run_dir.path(),
                        setup,
                        &mut owned,
                    )
                    .await
                }
                Target::Endpoint { client, pid, .. } => {
                    pull_endpoint(&reference, img, &registry, client, *pid).await
                }
            };
            let r = r.map(|mut it| {
                it.fs_probe_us_per_file = Some(probe_us);
                it
            });
            match r {
                Ok(it) => {
                    println!(
                        "{name:<11} pull {}/{}: {:>7.3} s  {:>7.1} MB/s  ({:.1} MB/s uncompressed)  CPU {}  registry CPU {}{}",
                        iter + 1,
                        args.iterations,
                        it.wall_s,
                        it.mb_per_s_compressed,
                        it.mb_per_s_uncompressed,
                        it.cpu
                            .map(|c| format!(
                                "{:.2} s ({:.2} usr + {:.2} sys)",
                                c.total(),
                                c.user,
                                c.system
                            ))
                            .unwrap_or_else(|| "n/a".into()),
                        it.registry_cpu_s
                            .map(|c| format!("{c:.2} s"))
                            .unwrap_or_else(|| "n/a".into()),
                        it.startup_s
                            .map(|s| format!("  [daemon start {s:.2} s, not counted]"))
                            .unwrap_or_default(),
                    );
                    println!(
                        "{:<11}   (file system probe before it: {probe_us:.0} us per empty file created)",
                        ""
                    );
                    if probe_us > SLOW_FS_PROBE_US {
                        println!(
                            "{:<11}   WARNING: creating files is slow right now (many files deleted in the last minutes?): this pull is skewed",
                            ""
                        );
                    }
                    if it.startup_s.is_some_and(|s| s > 10.0) {
                        println!(
                            "{:<11}   WARNING: the daemon took {:.0} s to start (not counted): the machine is stalling",
                            "",
                            it.startup_s.unwrap_or_default()
                        );
                    }
                    results[ti].iterations.push(it);
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    println!(
                        "{name:<11} pull {}/{}: FAILED:\n{msg}",
                        iter + 1,
                        args.iterations
                    );
                    results[ti].error = Some(msg);
                }
            }
        }
    }

    // ------------------------------------------------------------ breakdown
    let (components, components_error) = if args.skip_breakdown {
        (None, None)
    } else {
        println!("measuring berth's stages in-process (network, inflate, hash, write)...");
        let work = run_dir.path().join("stages");
        prepare_fs(run_dir.path(), 0)?;
        let r = components::measure(
            img,
            &registry.url(),
            registry.pid(),
            repo,
            &work,
            berth_root_seen.as_deref(),
        )
        .await;
        match r {
            Ok(c) => (Some(c), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        }
    };

    // ------------------------------------------------------------- teardown
    // Every daemon is stopped and its guard dropped by now; the registry goes
    // next. Then nothing may be mounted under any directory of this run.
    let registry_dir = registry.dir().to_path_buf();
    drop(registry);
    // Mounts a stopped daemon left (before the guards detach anything) ...
    let mut leftover: Vec<String> = leak::mounts_under(&owned.dirs).into_iter().collect();
    println!("removing the stopped daemons' directories...");
    let t = Instant::now();
    let stopped_berthd = std::mem::take(&mut owned.stopped_berthd);
    let stopped_dirs = std::mem::take(&mut owned.stopped_dirs);
    tokio::task::spawn_blocking(move || {
        drop(stopped_berthd);
        drop(stopped_dirs);
    })
    .await?;
    println!("  done in {:.1} s", t.elapsed().as_secs_f64());
    // ... and anything still mounted under the run's directories now.
    for m in leak::mounts_under(&owned.dirs) {
        if !leftover.contains(&m) {
            leftover.push(m);
        }
    }
    let run_path = run_dir.path().to_path_buf();
    if leftover.is_empty() {
        run_dir
            .close()
            .with_context(|| format!("removing {}", run_path.display()))?;
    } else {
        // Detach them so that removing the temp dir cannot reach into them;
        // the run still fails below.
        for d in &owned.dirs {
            berth_conformance::berthd::unmount_all_under(d);
        }
        drop(run_dir);
    }
    if registry_dir.exists() {
        eprintln!(
            "berth-bench: warning: {} was not removed",
            registry_dir.display()
        );
    }

    let runtimes: Vec<_> = results
        .into_iter()
        .map(|r| {
            let s = r.summary();
            (r, s)
        })
        .collect();
    let ratios = report::ratios(&runtimes);
    let report = Report {
        machine: Machine {
            cores,
            kernel,
            loadavg_start,
            loadavg_end: loadavg(),
        },
        berthd_binary: berthd,
        image: ImageDesc {
            reference,
            id: img.id().to_string(),
            compressed_bytes: generated.compressed(),
            uncompressed_bytes: generated.uncompressed(),
            layers: generated.layers.clone(),
            generation_s: generated.generation.as_secs_f64(),
            push_s,
            seed: args.seed,
        },
        runtimes,
        ratios,
        components,
        components_error,
        leftover_mounts: leftover.clone(),
    };
    report::print(&report);
    report::write_json(&report, args.json.as_deref())?;
    if !leftover.is_empty() {
        eprintln!("berth-bench: LEFT BEHIND after the run (mounts under the bench's temp dirs):");
        for m in &leftover {
            eprintln!("  {m}");
        }
        return Ok(2);
    }
    let failed =
        report.runtimes.iter().any(|(r, _)| r.error.is_some()) || report.components_error.is_some();
    Ok(if failed { 1 } else { 0 })
}

fn iteration(
    img: &Image,
    wall: Duration,
    cpu: Option<cpu::CpuSample>,
    registry_cpu_s: Option<f64>,
    startup_s: Option<f64>,
) -> Iteration {
    let s = wall.as_secs_f64();
    Iteration {
        wall_s: s,
        mb_per_s_compressed: img.compressed_size() as f64 / MB / s,
        mb_per_s_uncompressed: img.unpacked_size() as f64 / MB / s,
        cpu,
        registry_cpu_s,
        startup_s,
        fs_probe_us_per_file: None,
    }
}

/// Pull `reference` once with `client`, measuring the daemon `pid` and the
/// registry; checks the image id.
async fn timed_pull(
    client: &client::Client,
    reference: &str,
    img: &Image,
    registry: &Registry,
    pid: Option<u32>,
    startup_s: Option<f64>,
) -> Result<Iteration> {
    let reg_before = registry.pid().and_then(|p| cpu::sample_tree(p).ok());
    let before = pid.map(cpu::sample_tree).transpose()?;
    let t = Instant::now();
    let r = client.pull(reference).await;
    let wall = t.elapsed();
    let after = pid.map(cpu::sample_tree).transpose()?;
    let reg_after = registry.pid().and_then(|p| cpu::sample_tree(p).ok());
    let id = r.map_err(|s| anyhow!("PullImage {reference}: {:?}: {}", s.code(), s.message()))?;
    if id != img.id() {
        bail!(
            "PullImage {reference} returned {id}, expected the image id {}",
            img.id()
        );
    }
    let cpu = match (before, after) {
        (Some(b), Some(a)) => Some(a.since(&b)),
        _ => None,
    };
    let reg = match (reg_before, reg_after) {
        (Some(b), Some(a)) => Some(a.since(&b).total()),
        _ => None,
    };
    Ok(iteration(img, wall, cpu, reg, startup_s))
}

async fn pull_berth(
    reference: &str,
    img: &Image,
    registry: &Registry,
    owned: &mut Owned,
    root_seen: &mut Option<PathBuf>,
) -> Result<Iteration> {
    let t = Instant::now();
    let mut d = Berthd::start(berthd_options("plugin = \"none\""))
        .await
        .context("starting berthd")?;
    let startup = t.elapsed().as_secs_f64();
    owned.dirs.push(d.dir().to_path_buf());
    *root_seen = Some(d.root());
    let result = async {
        let client = client::connect(&d.socket(), PULL_TIMEOUT).await?;
        timed_pull(&client, reference, img, registry, d.pid(), Some(startup)).await
    }
    .await;
    let result = result.map_err(|e| {
        anyhow!(
            "{e:#}\n---- berthd log (tail) ----\n{}",
            tail_lines(&d.log(), 40)
        )
    });
    if let Err(e) = d.stop().await {
        eprintln!("berth-bench: warning: berthd did not stop cleanly: {e:#}");
    }
    owned.stopped_berthd.push(d);
    result
}

async fn pull_containerd(
    reference: &str,
    img: &Image,
    registry: &Registry,
    parent: &Path,
    setup: &ContainerdSetup,
    owned: &mut Owned,
) -> Result<Iteration> {
    let t = Instant::now();
    let c = Containerd::start(parent, setup).await?;
    let startup = t.elapsed().as_secs_f64();
    owned.dirs.push(c.path().to_path_buf());
    let result = async {
        let client = client::connect(&c.socket(), PULL_TIMEOUT).await?;
        timed_pull(&client, reference, img, registry, c.pid(), Some(startup)).await
    }
    .await;
    let result = result.map_err(|e| {
        anyhow!(
            "{e:#}\n---- containerd log (tail) ----\n{}",
            tail_lines(&c.log_tail(), 40)
        )
    });
    let stopped = c.stop().await;
    let it = result?;
    owned
        .stopped_dirs
        .push(stopped.context("stopping containerd")?);
    Ok(it)
}

async fn pull_endpoint(
    reference: &str,
    img: &Image,
    registry: &Registry,
    client: &client::Client,
    pid: Option<u32>,
) -> Result<Iteration> {
    client
        .rmi(reference)
        .await
        .map_err(|s| anyhow!("RemoveImage {reference}: {:?}: {}", s.code(), s.message()))?;
    timed_pull(client, reference, img, registry, pid, None).await
}

/// berthd for a benchmark: log level info, in the bench's (the host's)
/// network namespace, where the loopback registry is, with `network` as
/// its `[network]` table: `plugin = "none"` unless the bench gives it a
/// bridge, subnet and nft table of its own. Its state dir is a tmpfs, as
/// `/run/berth` is on a node (and containerd's, as `/run/containerd`).
fn berthd_options(network: &str) -> BerthdOptions {
    BerthdOptions::default()
        .log_level("info")
        .network(network)
        .state_on_tmpfs()
}

/// Where each runtime's state and root are, for a summary's first line.
fn where_state_and_root_are() -> String {
    format!(
        "every runtime's state dir on a tmpfs (as /run is on a node), its root on {}",
        fs_type_of_temp()
    )
}

/// The file system type of the temp dir (where each runtime's root is),
/// from /proc/self/mountinfo: the mount with the longest matching point.
fn fs_type_of_temp() -> String {
    let tmp = std::env::temp_dir();
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let point = l.split(' ').nth(4)?;
            let fstype = l.split(" - ").nth(1)?.split(' ').next()?;
            tmp.starts_with(point)
                .then(|| (point.len(), fstype.to_string()))
        })
        .max()
        .map(|(_, t)| t)
        .unwrap_or_else(|| "?".into())
}

fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
