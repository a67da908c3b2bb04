//! `berth-bench streaming`: exec, attach and port-forward of issue 15,
//! berth against containerd in the same run, through SPDY/3.1 as kubelet
//! and crictl use it.
//!
//! Per runtime (a fresh daemon each, busybox pulled first), in one pod on
//! the host network:
//! * exec round trip: `--execs` times Exec of `true` (stdout only) and its
//!   whole SPDY session, from the CRI call to the exit status (p50, p99);
//! * port-forward throughput: `--mib` MiB fetched from busybox httpd in
//!   the pod through one port-forward connection;
//! * attach throughput: a container that writes `--mib` MiB to stdout
//!   once a line comes on its stdin, read through Attach;
//! * the container's monitor idle before and after the execs: PSS of
//!   berth-shim (of the pod's containerd-shim for containerd), from
//!   smaps_rollup. A lone berth-shim shares its code with no other shim,
//!   so its PSS here is higher than with ten shims in `berth-bench pods`.
//!
//! The SPDY client speaks as client-go (spdystream: no flow control), as
//! kubelet and crictl do.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use berth_conformance::images::{Format, ImageBuilder};
use berth_conformance::registry::Registry;
use berth_conformance::streaming::{SpdyExec, spdy_connect, spdy_portforward, spdy_remotecommand};
use berth_cri_api::v1::{
    AttachRequest, CreateContainerRequest, ExecRequest, PodSandboxConfig, PortForwardRequest,
};
use clap::Parser;

use crate::containerd::ContainerdSetup;
use crate::podbench::{
    Ctx, HostInfo, Procs, Tracker, cgroup_dirs, host_info, met, on_berthd, on_containerd, pct,
    procs_naming, status_err, stuck_cgroups,
};

/// Targets of issue 15.
const TARGET_EXEC_RATIO: f64 = 5.0;

#[derive(Parser, Debug)]
#[command(
    name = "berth-bench streaming",
    about = "Exec, attach and port-forward benchmark (issue 15): berth against containerd",
    after_help = "Example: cargo build --release -p berth-cri-server -p berth-runtime -p berth-conformance && \
        sudo target/release/berth-bench streaming --containerd --json streaming.json"
)]
pub struct StreamingArgs {
    /// Exec round trips timed.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    execs: u32,
    /// MiB moved by port-forward and by attach.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    mib: u32,
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
struct RtResult {
    name: String,
    how: String,
    exec_ms: Vec<f64>,
    port_forward_mb_s: Option<f64>,
    attach_mb_s: Option<f64>,
    /// The monitor idle before the execs, and after them.
    shim_pss_before_kib: Option<u64>,
    shim_pss_kib: Option<u64>,
    error: Option<String>,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    cores: usize,
    kernel: String,
    loadavg_start: String,
    loadavg_end: String,
    execs: u32,
    mib: u32,
    runtimes: Vec<RtResult>,
    leftover_mounts: Vec<String>,
    leftover_processes: Vec<String>,
    leftover_cgroups: Vec<String>,
}

fn spdy_how(stdin: Option<&[u8]>) -> SpdyExec {
    SpdyExec {
        protocols: SpdyExec::client_go(),
        tty: false,
        stdout: true,
        stderr: false,
        stdin: stdin.map(<[u8]>::to_vec),
        resize: vec![],
        timeout: Some(Duration::from_secs(120)),
        // As kubelet and crictl (client-go's spdystream) speak.
        flow_control: false,
    }
}

async fn create_start(
    ctx: &Ctx,
    pod: &str,
    cfg: &PodSandboxConfig,
    name: &str,
    cmd: &[&str],
    stdin: bool,
) -> Result<String> {
    let mut c = ctx.container_config(name);
    c.command = cmd.iter().map(|s| s.to_string()).collect();
    c.stdin = stdin;
    c.stdin_once = stdin;
    let id = ctx
        .client
        .runtime()
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(c),
            sandbox_config: Some(cfg.clone()),
        })
        .await
        .map_err(|s| status_err("CreateContainer", s))?
        .into_inner()
        .container_id;
    ctx.start(&id).await?;
    Ok(id)
}

async fn workload(ctx: &Ctx, procs: &Procs, args: &StreamingArgs, r: &mut RtResult) -> Result<()> {
    ctx.client
        .pull(&ctx.image)
        .await
        .map_err(|s| status_err("PullImage busybox", s))?;
    let cfg = ctx.pod_config("streaming")?;
    let pod = ctx.run_pod(&cfg).await?;
    let mut rt = ctx.client.runtime();

    // Exec round trips (one warm-up first).
    let sleeper = create_start(ctx, &pod, &cfg, "sleeper", &["sleep", "3600"], false).await?;
    r.shim_pss_before_kib = shim_pss(procs, &sleeper, &pod);
    for i in 0..=args.execs {
        let t = Instant::now();
        let url = rt
            .exec(ExecRequest {
                container_id: sleeper.clone(),
                cmd: vec!["true".into()],
                stdout: true,
                ..Default::default()
            })
            .await
            .map_err(|s| status_err("Exec", s))?
            .into_inner()
            .url;
        let out = spdy_remotecommand(&url, &spdy_how(None)).await?;
        let code = out.exit_code()?;
        if code != 0 {
            bail!("exec of true exited {code}");
        }
        if i > 0 {
            r.exec_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    println!(
        "{:<11} exec round trip: p50 {:.2} ms, p99 {:.2} ms",
        r.name,
        pct(&r.exec_ms, 50.0).unwrap_or(f64::NAN),
        pct(&r.exec_ms, 99.0).unwrap_or(f64::NAN)
    );
    r.shim_pss_kib = shim_pss(procs, &sleeper, &pod);

    // Port-forward throughput.
    let port = 20_000 + (std::process::id() % 20_000) as u16;
    let script = format!(
        "mkdir -p /www && head -c {}m /dev/zero > /www/big && exec httpd -f -p 127.0.0.1:{port} -h /www",
        args.mib
    );
    create_start(ctx, &pod, &cfg, "web", &["sh", "-c", &script], false).await?;
    let url = rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![i32::from(port)],
        })
        .await
        .map_err(|s| status_err("PortForward", s))?
        .into_inner()
        .url;
    let (session, _) = spdy_connect(&url, &["portforward.k8s.io"]).await?;
    let want = u64::from(args.mib) << 20;
    let get = b"GET /big HTTP/1.0\r\nHost: bench\r\n\r\n";
    let t0 = Instant::now();
    let mut request_id = 0;
    let (bytes, secs) = loop {
        request_id += 1;
        let t = Instant::now();
        let (answer, err) = spdy_portforward(&session, port, request_id, get).await?;
        if answer.len() as u64 >= want {
            break (answer.len() as u64, t.elapsed().as_secs_f64());
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("port-forward never brought the file: {err}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    session.close().await;
    r.port_forward_mb_s = Some(bytes as f64 / 1e6 / secs);

    // Attach throughput.
    let script = format!("read x; head -c {}m /dev/zero", args.mib);
    let talker = create_start(ctx, &pod, &cfg, "talker", &["sh", "-c", &script], true).await?;
    let url = rt
        .attach(AttachRequest {
            container_id: talker,
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .await
        .map_err(|s| status_err("Attach", s))?
        .into_inner()
        .url;
    let t = Instant::now();
    let out = spdy_remotecommand(&url, &spdy_how(Some(b"go\n"))).await?;
    let secs = t.elapsed().as_secs_f64();
    if (out.stdout.len() as u64) < want {
        bail!(
            "attach brought {} of {want} bytes (error stream: {:?})",
            out.stdout.len(),
            String::from_utf8_lossy(&out.error)
        );
    }
    r.attach_mb_s = Some(out.stdout.len() as f64 / 1e6 / secs);
    println!(
        "{:<11} port-forward {:.0} MB/s, attach {:.0} MB/s, monitor PSS {} KiB",
        r.name,
        r.port_forward_mb_s.unwrap_or(f64::NAN),
        r.attach_mb_s.unwrap_or(f64::NAN),
        pss_pair(r)
    );
    Ok(())
}

/// The monitor's PSS before and after the execs, "BEFORE -> AFTER".
fn pss_pair(r: &RtResult) -> String {
    let k = |v: Option<u64>| v.map(|k| k.to_string()).unwrap_or("?".into());
    format!("{} -> {}", k(r.shim_pss_before_kib), k(r.shim_pss_kib))
}

/// PSS of the container's monitor: berth-shim of `container`, or the
/// containerd-shim that holds the pod (its command line names the pod:
/// `-id POD`).
fn shim_pss(procs: &Procs, container: &str, pod: &str) -> Option<u64> {
    // Give the shim its idle moment (it releases memory after requests).
    std::thread::sleep(Duration::from_millis(500));
    let shims = procs_naming(&procs.dir, &[]);
    let pid = shims
        .iter()
        .find(|(_, comm, cmd)| {
            comm.starts_with(procs.shim_comm) && (cmd.contains(container) || cmd.contains(pod))
        })
        .map(|(pid, _, _)| *pid)?;
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub async fn run(args: StreamingArgs, berthd: Option<String>) -> Result<i32> {
    let HostInfo {
        cores,
        kernel,
        loadavg_start,
    } = host_info();
    let cgroups_before = cgroup_dirs(&[]);
    let run_dir = tempfile::Builder::new()
        .prefix("berth-bench-streaming-")
        .tempdir()
        .context("creating the run's temp dir")?;
    println!(
        "berth-bench streaming: {cores} cores, kernel {kernel}, load average {loadavg_start}, temp dir {}",
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
        execs: args.execs,
        mib: args.mib,
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
    println!("==== streaming benchmark: summary ====");
    println!(
        "{} cores, kernel {}, load average {} -> {}; {} execs, {} MiB moved",
        r.cores, r.kernel, r.loadavg_start, r.loadavg_end, r.execs, r.mib
    );
    let fmt = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or("-".into());
    println!(
        "{:<12}{:>24}{:>20}{:>16}{:>24}",
        "", "exec p50 / p99 ms", "port-forward MB/s", "attach MB/s", "monitor PSS KiB"
    );
    for x in &r.runtimes {
        println!(
            "{:<12}{:>24}{:>20}{:>16}{:>24}",
            x.name,
            format!(
                "{} / {}",
                fmt(pct(&x.exec_ms, 50.0)),
                fmt(pct(&x.exec_ms, 99.0))
            ),
            fmt(x.port_forward_mb_s),
            fmt(x.attach_mb_s),
            pss_pair(x)
        );
    }
    let by = |n: &str| r.runtimes.iter().find(|x| x.name == n);
    if let (Some(b), Some(c)) = (by("berth"), by("containerd")) {
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
        let exec = ratio(pct(&c.exec_ms, 50.0), pct(&b.exec_ms, 50.0));
        let pf = ratio(b.port_forward_mb_s, c.port_forward_mb_s);
        let at = ratio(b.attach_mb_s, c.attach_mb_s);
        println!();
        println!(
            "exec round trip: containerd/berth {}x (target >= {TARGET_EXEC_RATIO}x): {}",
            fmt(exec),
            met(exec.is_some_and(|x| x >= TARGET_EXEC_RATIO))
        );
        println!(
            "port-forward throughput: berth/containerd {}x (target >= 1x): {}",
            fmt(pf),
            met(pf.is_some_and(|x| x >= 1.0))
        );
        println!(
            "attach throughput: berth/containerd {}x (target >= 1x): {}",
            fmt(at),
            met(at.is_some_and(|x| x >= 1.0))
        );
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
