//! `berth-bench network`: pods with a pod network (NamespaceMode POD),
//! berth's built-in bridge plugin against containerd with Debian's CNI
//! plugins, in the same run.
//!
//! Per runtime (a fresh daemon each, in the host's network namespace):
//!
//! * N pods made with RunPodSandbox one after the other, their IPs checked
//!   (PodSandboxStatus, not timed), then StopPodSandbox+RemovePodSandbox
//!   per pod one after the other; then the same with C calls at a time.
//!   p50 and p99 per step; every failed call is counted (the run fails if
//!   one fails).
//! * Where the time goes, from outside, and berthd's own per-step timings
//!   (its `berth_step_duration_seconds`) after each phase:
//!   the same serial steps with M pods on the host network (NODE), with one
//!   hostPort each, and (berth) with `[network] plugin = "none"`, which
//!   pins the pod's netns but gives it no interface.
//!
//! berth: `plugin = "bridge"` with a bridge, subnet and nft table of the
//! bench's own (berth-bench0, 10.252.0.0/16, inet berth_bench).
//! containerd: a conflist in its own conf dir: bridge (cni-bench0) with
//! host-local (10.251.0.0/16, its dataDir in the bench's temp dir), then
//! portmap; containerd adds its loopback network (the loopback plugin)
//! itself. No traffic is sent anywhere; hostPorts are published on ports
//! nothing listens on.
//!
//! Clean-up, on every path (also on Ctrl-C, from a guard): the pods through
//! CRI, the daemons stopped; then the veths on the two bridges (waited for:
//! the kernel deletes a veth when its netns goes), the bridges, berth's
//! nft table, the CNI-* chains portmap and bridge made in iptables' tables
//! (and those tables if the run made them), containerd's netns files in
//! /run/netns, libcni's cache dir if the run made it, and the sysctls the
//! plugins set (ip_forward) put back. What a runtime should have removed
//! itself is reported as left behind.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use berth_conformance::registry::Registry;
use berth_cri_api::v1::NamespaceMode;
use clap::Parser;
use serde_json::Value;

use crate::containerd::ContainerdSetup;
use crate::podbench::{
    Ctx, HostInfo, Tracker, cgroup_dirs, host_info, kill_in_new_cgroups, map_concurrently, met, ms,
    on_berthd, on_containerd, pct, remove_new_cgroups, stuck_cgroups,
};

/// Targets of the issue.
const TARGET_RUN_POD_MS: f64 = 10.0;
const TARGET_RATIO: f64 = 10.0;

/// The CNI network containerd's pods get.
const CNI_NETWORK: &str = "berth-bench-net";

/// How long the kernel may take to delete the veths of removed pods.
const VETH_GRACE: Duration = Duration::from_secs(15);

/// Error messages kept per phase (all are counted).
const ERROR_SAMPLES: usize = 5;

#[derive(Parser, Debug)]
#[command(
    name = "berth-bench network",
    about = "Pod network benchmark: berth's bridge plugin against containerd with CNI",
    long_about = "Pod network benchmark for berth.\n\n\
        Per runtime, with a fresh daemon in the host's network namespace (berthd: $BERTHD, else \
        target/release/berthd, with [network] plugin = \"bridge\" on --berth-bridge, --berth-subnet and \
        nft table inet --berth-nft-table; --containerd: Debian's containerd 1.6 + runc with Debian's CNI \
        plugins: bridge --cni-bridge + host-local --cni-subnet + portmap, and containerd's own loopback \
        network):\n\n\
        * --pods RunPodSandbox calls with NamespaceMode POD for the network, one after the other, the \
        pods' IPs checked, then StopPodSandbox+RemovePodSandbox per pod one after the other; then the \
        same --concurrency at a time; p50 and p99 per step, and the errors (the run fails on one);\n\
        * where the time goes (serial, --breakdown-pods pods each): host network pods (NODE), pods \
        with one hostPort each, and (berth) a berthd with plugin = \"none\" (a pinned netns with \
        loopback only); the differences are the netns's, the network plugin's and the hostPort \
        rules' shares.\n\n\
        The subnets must not overlap a host route; the bridges and berth's nft table must not \
        exist. Everything the runtimes make on the host (veths, bridges, nft table, CNI iptables \
        chains, netns files, libcni's cache) is removed at the end and on errors, and what a \
        runtime should have removed itself is reported. No traffic is sent. Must run as root.",
    after_help = "Example: cargo build --release -p berth-cri-server -p berth-runtime -p berth-conformance && \
        sudo BERTHD=$PWD/target/release/berthd target/release/berth-bench network --containerd --json network.json"
)]
pub struct NetworkArgs {
    /// Pods per phase (serial, then concurrent).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pods: u32,

    /// Calls in flight at a time in the concurrent phase.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    concurrency: u32,

    /// Pods per breakdown variant (serial; default: --pods); 0 skips the breakdown.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=5000))]
    breakdown_pods: Option<u32>,

    /// Also start Debian's containerd (CRI plugin, runc, CNI) and run the same workload.
    #[arg(long)]
    containerd: bool,

    /// Do not run berthd.
    #[arg(long)]
    pub skip_berth: bool,

    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// berth's bridge (made by berthd, deleted at the end).
    #[arg(long, default_value = "berth-bench0", value_parser = parse_ifname)]
    berth_bridge: String,

    /// berth's pod subnet.
    #[arg(long, default_value = "10.252.0.0/16")]
    berth_subnet: Net4,

    /// berth's nftables table (family inet; deleted at the end).
    #[arg(long, default_value = "berth_bench", value_parser = parse_table)]
    berth_nft_table: String,

    /// containerd's CNI bridge (made by the bridge plugin, deleted at the end).
    #[arg(long, default_value = "cni-bench0", value_parser = parse_ifname)]
    cni_bridge: String,

    /// containerd's pod subnet (host-local).
    #[arg(long, default_value = "10.251.0.0/16")]
    cni_subnet: Net4,

    /// First hostPort of the hostPort pods (ports something listens on are skipped).
    #[arg(long, default_value_t = 20000, value_parser = clap::value_parser!(u16).range(1024..))]
    host_port_base: u16,
}

fn parse_ifname(s: &str) -> Result<String, String> {
    if s.is_empty()
        || s.len() > 15
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(format!(
            "{s:?} is not an interface name (1-15 of [A-Za-z0-9._-])"
        ));
    }
    Ok(s.to_string())
}

fn parse_table(s: &str) -> Result<String, String> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    {
        return Err(format!("{s:?} is not a table name (1-64 of [A-Za-z0-9_-])"));
    }
    Ok(s.to_string())
}

// ------------------------------------------------------------------ subnets

/// An IPv4 subnet, written as its network address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net4 {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Net4 {
    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }
    fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }
    fn overlaps(&self, other: &Net4) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
    /// Addresses for pods (network, gateway and broadcast taken away).
    fn pod_capacity(&self) -> u64 {
        (1u64 << (32 - u32::from(self.prefix))).saturating_sub(3)
    }
    /// `a.b.c.d/len`, `a.b.c.d` (a /32) or `default`, as `ip route` writes them.
    fn parse_route(s: &str) -> Option<Net4> {
        if s == "default" {
            return Some(Net4 {
                addr: Ipv4Addr::UNSPECIFIED,
                prefix: 0,
            });
        }
        let (a, p) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = a.parse().ok()?;
        let prefix: u8 = p.parse().ok().filter(|p| *p <= 32)?;
        let n = Net4 { addr, prefix };
        Some(Net4 {
            addr: Ipv4Addr::from(u32::from(addr) & n.mask()),
            prefix,
        })
    }
}

impl FromStr for Net4 {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected a.b.c.d/len"))?;
        let addr: Ipv4Addr = a.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let prefix: u8 = p.parse().map_err(|e| format!("{s:?}: {e}"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!("{s}: the prefix must be /8 to /30"));
        }
        let n = Net4 { addr, prefix };
        if u32::from(addr) & n.mask() != u32::from(addr) {
            return Err(format!("{s} is not a network address"));
        }
        if addr.is_loopback() || addr.is_multicast() || addr.is_link_local() {
            return Err(format!("{s} is not a unicast subnet"));
        }
        Ok(n)
    }
}

impl fmt::Display for Net4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

// ------------------------------------------------------------ host commands

/// Run a command; its stdout if it exits 0.
fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sh_json(args: &[&str]) -> Result<Value> {
    let text = sh(args)?;
    if text.trim().is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_str(&text).with_context(|| format!("parsing the output of {}", args.join(" ")))
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// The interfaces whose master is `bridge`.
fn bridge_ports(bridge: &str) -> Vec<String> {
    let Ok(v) = sh_json(&["ip", "-j", "link", "show", "master", bridge]) else {
        return Vec::new();
    };
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.get("ifname").and_then(Value::as_str).map(String::from))
        .collect()
}

/// Every object of `nft -j list ruleset`.
fn nft_ruleset() -> Result<Vec<Value>> {
    let v = sh_json(&["nft", "-j", "list", "ruleset"])?;
    Ok(v.get("nftables")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default())
}

fn nft_tables(rs: &[Value]) -> BTreeSet<(String, String)> {
    rs.iter()
        .filter_map(|o| o.get("table"))
        .filter_map(|t| Some((str_of(t, "family")?, str_of(t, "name")?)))
        .collect()
}

fn nft_chains(rs: &[Value]) -> BTreeSet<(String, String, String)> {
    rs.iter()
        .filter_map(|o| o.get("chain"))
        .filter_map(|c| {
            Some((
                str_of(c, "family")?,
                str_of(c, "table")?,
                str_of(c, "name")?,
            ))
        })
        .collect()
}

fn str_of(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(String::from)
}

/// The chains a rule jumps or goes to.
fn jump_targets(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if (k == "jump" || k == "goto")
                    && let Some(t) = x.get("target").and_then(Value::as_str)
                {
                    out.push(t.to_string());
                }
                jump_targets(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| jump_targets(x, out)),
        _ => {}
    }
}

/// The host's network state the plugins change, taken before the run, and
/// the clean-up that puts it back. Dropped without [`HostNet::clean`]
/// (an error, Ctrl-C), it cleans up then.
struct HostNet {
    bridges: Vec<(String, &'static str)>,
    nft_table: String,
    ipam_dir: PathBuf,
    netns_before: BTreeSet<String>,
    tables_before: BTreeSet<(String, String)>,
    chains_before: BTreeSet<(String, String, String)>,
    sysctls_before: Vec<(&'static str, Option<String>)>,
    var_lib_cni_existed: bool,
    /// The cgroups before the run (see [`cgroup_dirs`]).
    cgroups_before: BTreeSet<PathBuf>,
    done: bool,
}

/// What [`HostNet::clean`] did.
#[derive(Clone, Debug, Default, serde::Serialize)]
struct HostCleanup {
    /// Removed or put back as expected (a runtime keeps these).
    removed: Vec<String>,
    /// What a runtime should have removed itself (removed now).
    left_by_runtimes: Vec<String>,
    /// What could not be removed.
    errors: Vec<String>,
}

const NETNS_DIR: &str = "/run/netns";
const LIBCNI_DIR: &str = "/var/lib/cni";
const SYSCTLS: &[&str] = &[
    "net/ipv4/ip_forward",
    "net/ipv6/conf/all/forwarding",
    "net/ipv4/conf/all/route_localnet",
];

fn netns_entries() -> BTreeSet<String> {
    fs::read_dir(NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

impl HostNet {
    /// Check that nothing of the bench's is there and that the subnets are
    /// free; record the state the run will change.
    fn preflight(args: &NetworkArgs, ipam_dir: &Path) -> Result<HostNet> {
        for tool in ["ip", "nft"] {
            sh(&[tool, "--version"])
                .or_else(|_| sh(&[tool, "-V"]))
                .with_context(|| format!("`{tool}` is needed (iproute2, nftables)"))?;
        }
        if args.containerd {
            sh(&["iptables", "--version"])
                .context("iptables is needed by the CNI plugins (bridge ipMasq, portmap)")?;
        }
        let mut bridges = Vec::new();
        let mut subnets = Vec::new();
        if !args.skip_berth {
            bridges.push((args.berth_bridge.clone(), "berth"));
            subnets.push(("--berth-subnet", args.berth_subnet));
        }
        if args.containerd {
            bridges.push((args.cni_bridge.clone(), "containerd"));
            subnets.push(("--cni-subnet", args.cni_subnet));
        }
        if args.berth_bridge == args.cni_bridge {
            bail!("--berth-bridge and --cni-bridge must differ");
        }
        for (b, _) in &bridges {
            if link_exists(b) {
                bail!(
                    "interface {b} already exists (left by an earlier run?): remove it with `ip link del {b}` or choose another name"
                );
            }
        }
        let rs = nft_ruleset().context("listing the nftables ruleset")?;
        let tables = nft_tables(&rs);
        if !args.skip_berth && tables.contains(&("inet".into(), args.berth_nft_table.clone())) {
            bail!(
                "nft table inet {t} already exists (left by an earlier run?): remove it with `nft delete table inet {t}` or choose another --berth-nft-table",
                t = args.berth_nft_table
            );
        }
        if subnets.len() == 2 && subnets[0].1.overlaps(&subnets[1].1) {
            bail!(
                "--berth-subnet {} and --cni-subnet {} overlap",
                subnets[0].1,
                subnets[1].1
            );
        }
        let routes = sh_json(&["ip", "-j", "-4", "route", "show", "table", "all"])?;
        for r in routes.as_array().into_iter().flatten() {
            let Some(dst) = r.get("dst").and_then(Value::as_str) else {
                continue;
            };
            let Some(route) = Net4::parse_route(dst) else {
                continue;
            };
            if route.prefix == 0 {
                continue;
            }
            for (flag, s) in &subnets {
                if s.overlaps(&route) {
                    bail!(
                        "{flag} {s} overlaps the host route {dst} (dev {}, table {}): choose another subnet",
                        str_of(r, "dev").unwrap_or_default(),
                        str_of(r, "table").unwrap_or_else(|| "main".into())
                    );
                }
            }
        }
        for (flag, s) in &subnets {
            if s.pod_capacity() < u64::from(args.pods) + 1 {
                bail!("{flag} {s} is too small for {} pods", args.pods);
            }
        }
        Ok(HostNet {
            bridges,
            nft_table: args.berth_nft_table.clone(),
            ipam_dir: ipam_dir.to_path_buf(),
            netns_before: netns_entries(),
            tables_before: tables,
            chains_before: nft_chains(&rs),
            sysctls_before: SYSCTLS
                .iter()
                .map(|k| {
                    (
                        *k,
                        fs::read_to_string(format!("/proc/sys/{k}"))
                            .ok()
                            .map(|v| v.trim().to_string()),
                    )
                })
                .collect(),
            var_lib_cni_existed: Path::new(LIBCNI_DIR).exists(),
            cgroups_before: cgroup_dirs(&[]),
            done: false,
        })
    }

    /// After the daemons are stopped: remove what the runtimes made on the
    /// host. Blocking (waits for the kernel to delete veths).
    fn clean(&mut self) -> HostCleanup {
        self.done = true;
        let mut c = HostCleanup::default();

        // Processes a runtime left running hold their pods' netns (and so
        // veths); the cgroups themselves are removed later.
        let killed = kill_in_new_cgroups(&self.cgroups_before, &[]);
        if !killed.is_empty() {
            c.left_by_runtimes.push(format!(
                "processes in the runtimes' cgroups after they stopped (killed): {}",
                killed.join(", ")
            ));
            std::thread::sleep(Duration::from_millis(200));
        }

        // containerd's netns files (/run/netns/cni-…): a removed pod's go
        // with it.
        for n in netns_entries().difference(&self.netns_before) {
            if !n.starts_with("cni-") {
                continue;
            }
            let p = Path::new(NETNS_DIR).join(n);
            let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
            match fs::remove_file(&p) {
                Ok(()) => c
                    .left_by_runtimes
                    .push(format!("containerd: netns {}", p.display())),
                Err(e) => c.errors.push(format!("removing {}: {e}", p.display())),
            }
        }

        // Veths: the kernel deletes a pod's when its netns goes, after
        // the pod is removed; give it time, then remove what is left.
        let start = Instant::now();
        loop {
            let left: usize = self
                .bridges
                .iter()
                .map(|(b, _)| bridge_ports(b).len())
                .sum();
            if left == 0 || start.elapsed() > VETH_GRACE {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for (b, owner) in &self.bridges {
            for v in bridge_ports(b) {
                c.left_by_runtimes.push(format!(
                    "{owner}: veth {v} on {b}, {VETH_GRACE:?} after its pods were removed"
                ));
                if let Err(e) = sh(&["ip", "link", "del", &v]) {
                    c.errors.push(format!("{e:#}"));
                }
            }
            if link_exists(b) {
                match sh(&["ip", "link", "del", b]) {
                    Ok(_) => c.removed.push(format!("bridge {b} ({owner})")),
                    Err(e) => c.errors.push(format!("{e:#}")),
                }
            }
        }

        // berth's table: no hostPort element may be left.
        let t = self.nft_table.clone();
        if let Ok(v) = sh_json(&["nft", "-j", "list", "table", "inet", &t]) {
            let elems: usize = v
                .get("nftables")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|o| o.get("map"))
                .map(|m| m.get("elem").and_then(Value::as_array).map_or(0, Vec::len))
                .sum();
            if elems > 0 {
                c.left_by_runtimes.push(format!(
                    "berth: {elems} hostPort elements in nft table inet {t} after its pods were removed"
                ));
            }
            match sh(&["nft", "delete", "table", "inet", &t]) {
                Ok(_) => c.removed.push(format!("nft table inet {t} (berth)")),
                Err(e) => c.errors.push(format!("{e:#}")),
            }
        }

        self.clean_cni_chains(&mut c);

        // host-local's leases (its dataDir goes with the run's temp dir).
        let leases: Vec<String> = fs::read_dir(self.ipam_dir.join(CNI_NETWORK))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<Ipv4Addr>().is_ok())
            .collect();
        if !leases.is_empty() {
            c.left_by_runtimes.push(format!(
                "containerd: host-local leases {} after its pods were removed",
                leases.join(", ")
            ));
        }

        // libcni's cache of results (containerd 1.6 has no setting for it).
        let results = Path::new(LIBCNI_DIR).join("results");
        let cached: Vec<PathBuf> = fs::read_dir(&results)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with(&format!("{CNI_NETWORK}-")) || n.starts_with("cni-loopback-")
                })
            })
            .collect();
        for p in &cached {
            c.left_by_runtimes
                .push(format!("containerd: libcni cache {}", p.display()));
            let _ = fs::remove_file(p);
        }
        if !self.var_lib_cni_existed && Path::new(LIBCNI_DIR).exists() {
            match fs::remove_dir_all(LIBCNI_DIR) {
                Ok(()) => c.removed.push(format!(
                    "{LIBCNI_DIR} (libcni's cache dir, made by containerd)"
                )),
                Err(e) => c.errors.push(format!("removing {LIBCNI_DIR}: {e}")),
            }
        }

        // Sysctls the plugins set (ip_forward: both).
        for (k, before) in &self.sysctls_before {
            let Some(before) = before else { continue };
            let path = format!("/proc/sys/{k}");
            let now = fs::read_to_string(&path).map(|v| v.trim().to_string());
            if now.as_deref().is_ok_and(|n| n != before) {
                match fs::write(&path, before) {
                    Ok(()) => c
                        .removed
                        .push(format!("{} put back to {before}", k.replace('/', "."))),
                    Err(e) => c.errors.push(format!("writing {path}: {e}")),
                }
            }
        }
        c
    }

    /// The CNI-* chains the run made in iptables' (nft) tables, the rules
    /// that jump to them, and the tables the run made if they are empty
    /// then. Per-pod chains (all but CNI-HOSTPORT-*) count as left behind.
    fn clean_cni_chains(&self, c: &mut HostCleanup) {
        let rs = match nft_ruleset() {
            Ok(rs) => rs,
            Err(e) => {
                c.errors.push(format!("{e:#}"));
                return;
            }
        };
        let new: BTreeSet<(String, String, String)> = nft_chains(&rs)
            .difference(&self.chains_before)
            .filter(|(f, _, n)| (f == "ip" || f == "ip6") && n.starts_with("CNI-"))
            .cloned()
            .collect();
        for (f, t, n) in &new {
            if !n.starts_with("CNI-HOSTPORT-") {
                c.left_by_runtimes.push(format!(
                    "containerd: chain {f} {t} {n} after its pods were removed"
                ));
            }
        }
        // Rules of other chains that lead into them.
        for r in rs.iter().filter_map(|o| o.get("rule")) {
            let (Some(f), Some(t), Some(ch)) =
                (str_of(r, "family"), str_of(r, "table"), str_of(r, "chain"))
            else {
                continue;
            };
            if new.contains(&(f.clone(), t.clone(), ch.clone())) {
                continue;
            }
            let mut targets = Vec::new();
            jump_targets(r, &mut targets);
            if targets
                .iter()
                .any(|x| new.contains(&(f.clone(), t.clone(), x.clone())))
                && let Some(h) = r.get("handle").and_then(Value::as_u64)
                && let Err(e) = sh(&[
                    "nft",
                    "delete",
                    "rule",
                    &f,
                    &t,
                    &ch,
                    "handle",
                    &h.to_string(),
                ])
            {
                c.errors.push(format!("{e:#}"));
            }
        }
        for (f, t, n) in &new {
            if let Err(e) = sh(&["nft", "flush", "chain", f, t, n]) {
                c.errors.push(format!("{e:#}"));
            }
        }
        let mut deleted = Vec::new();
        for (f, t, n) in &new {
            match sh(&["nft", "delete", "chain", f, t, n]) {
                Ok(_) => deleted.push(format!("{f} {t} {n}")),
                Err(e) => c.errors.push(format!("{e:#}")),
            }
        }
        if !deleted.is_empty() {
            c.removed.push(format!(
                "iptables chains of the CNI plugins: {}",
                deleted.join(", ")
            ));
        }
        // Tables iptables made for them, if nothing is in them now.
        let Ok(rs) = nft_ruleset() else { return };
        for (f, t) in nft_tables(&rs).difference(&self.tables_before) {
            if f != "ip" && f != "ip6" {
                continue;
            }
            let rules = rs
                .iter()
                .filter_map(|o| o.get("rule"))
                .filter(|r| {
                    str_of(r, "family").as_ref() == Some(f)
                        && str_of(r, "table").as_ref() == Some(t)
                })
                .count();
            let user_chains = rs
                .iter()
                .filter_map(|o| o.get("chain"))
                .filter(|ch| {
                    str_of(ch, "family").as_ref() == Some(f)
                        && str_of(ch, "table").as_ref() == Some(t)
                        && ch.get("hook").is_none()
                })
                .count();
            if rules == 0 && user_chains == 0 {
                match sh(&["nft", "delete", "table", f, t]) {
                    Ok(_) => c.removed.push(format!(
                        "nft table {f} {t} (made by iptables for the CNI plugins)"
                    )),
                    Err(e) => c.errors.push(format!("{e:#}")),
                }
            }
        }
    }
}

impl Drop for HostNet {
    fn drop(&mut self) {
        if !self.done {
            let c = self.clean();
            let cgroups = remove_new_cgroups(&self.cgroups_before, &[]);
            if !cgroups.is_empty() {
                eprintln!("berth-bench: removed the cgroups {cgroups:?}");
            }
            eprintln!(
                "berth-bench: host network clean-up: removed {}",
                c.removed.join("; ")
            );
            for m in c.left_by_runtimes.iter().take(20).chain(&c.errors) {
                eprintln!("berth-bench: left behind (removed): {m}");
            }
            if c.left_by_runtimes.len() > 20 {
                eprintln!(
                    "berth-bench: ... and {} more left behind (removed)",
                    c.left_by_runtimes.len() - 20
                );
            }
        }
    }
}

// ------------------------------------------------------------------ results

#[derive(Clone, Debug, Default, serde::Serialize)]
struct Phase {
    /// "serial", "concurrent", "hostport", "host-network", "plugin-none".
    key: String,
    /// berthd's own step timings over the phase (issue 13).
    breakdown: Option<Vec<crate::breakdown::CallRow>>,
    /// How the pods were made, for people.
    what: String,
    pods: u32,
    concurrency: u32,
    /// Milliseconds per successful RunPodSandbox.
    run_ms: Vec<f64>,
    /// Milliseconds per successful StopPodSandbox+RemovePodSandbox.
    stop_remove_ms: Vec<f64>,
    run_wall_s: f64,
    stop_remove_wall_s: f64,
    /// Seconds from the last StopPodSandbox+RemovePodSandbox until no
    /// veth was left on the runtime's bridge (the kernel deletes berth's
    /// with the pod's netns, after the call); None: not watched.
    veths_gone_s: Option<f64>,
    errors: u32,
    error_samples: Vec<String>,
}

impl Phase {
    fn error(&mut self, msg: String) {
        self.errors += 1;
        if self.error_samples.len() < ERROR_SAMPLES {
            self.error_samples.push(msg);
        }
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
struct NetRt {
    name: String,
    how: String,
    network: String,
    phases: Vec<Phase>,
    /// What stopped the workload (the daemon did not start, a warm-up pod
    /// failed, it did not stop cleanly).
    error: Option<String>,
}

impl NetRt {
    fn phase(&self, key: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.key == key)
    }
    fn p50(&self, key: &str, f: fn(&Phase) -> &Vec<f64>) -> Option<f64> {
        self.phase(key).and_then(|p| pct(f(p), 50.0))
    }
    fn errors(&self) -> u32 {
        self.phases.iter().map(|p| p.errors).sum()
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
struct NetworkReport {
    cores: usize,
    kernel: String,
    loadavg_start: String,
    loadavg_end: String,
    pods: u32,
    concurrency: u32,
    breakdown_pods: u32,
    /// Milliseconds per unshare(CLONE_NEWNET) of a fresh thread.
    netns_create_ms: Vec<f64>,
    runtimes: Vec<NetRt>,
    host: HostCleanup,
    leftover_mounts: Vec<String>,
    leftover_processes: Vec<String>,
    leftover_cgroups: Vec<String>,
}

// ---------------------------------------------------------------- workload

#[derive(Clone, Copy, PartialEq, Eq)]
enum PodNet {
    /// The runtime's pod network.
    Pod,
    /// The pod network and one TCP hostPort.
    PodHostPort,
    /// The host's network (NamespaceMode NODE).
    Node,
}

struct PhaseSpec<'a> {
    key: &'static str,
    what: String,
    net: PodNet,
    pods: u32,
    concurrency: u32,
    host_ports: &'a [u16],
    /// Every pod's primary IP must be in it (and differ from the others').
    subnet: Option<Net4>,
    /// The runtime's bridge: after the removals, the phase waits until no
    /// veth is left on it (so that the next phase starts without the
    /// kernel still deleting this one's).
    bridge: Option<String>,
}

/// Make `spec.pods` pods (each RunPodSandbox timed), check their IPs,
/// then stop and remove them (each StopPodSandbox+RemovePodSandbox timed),
/// `spec.concurrency` calls at a time. A failed call is counted and the
/// phase goes on.
async fn phase(ctx: &Ctx, spec: &PhaseSpec<'_>) -> Result<Phase> {
    let mut ph = Phase {
        key: spec.key.into(),
        what: spec.what.clone(),
        pods: spec.pods,
        concurrency: spec.concurrency,
        ..Default::default()
    };
    let mode = match spec.net {
        PodNet::Pod | PodNet::PodHostPort => NamespaceMode::Pod,
        PodNet::Node => NamespaceMode::Node,
    };
    let mut configs = Vec::new();
    for i in 0..spec.pods as usize {
        let name = format!("{}-{i}", spec.key);
        let ports: &[u16] = match spec.net {
            PodNet::PodHostPort => std::slice::from_ref(
                spec.host_ports
                    .get(i)
                    .ok_or_else(|| anyhow!("no hostPort for pod {i}"))?,
            ),
            _ => &[],
        };
        configs.push((name.clone(), ctx.pod_config_with(&name, mode, ports)?));
    }

    let t = Instant::now();
    let made = map_concurrently(
        configs,
        spec.concurrency as usize,
        |(name, cfg)| async move {
            let t = Instant::now();
            let r = ctx.run_pod(&cfg).await;
            (name, r, ms(t))
        },
    )
    .await;
    ph.run_wall_s = t.elapsed().as_secs_f64();
    let mut ids = Vec::new();
    for (name, r, took) in made {
        match r {
            Ok(id) => {
                ph.run_ms.push(took);
                ids.push((name, id));
            }
            Err(e) => ph.error(format!("{name}: {e:#}")),
        }
    }

    if let Some(subnet) = spec.subnet {
        let gateway = Ipv4Addr::from(u32::from(subnet.addr) + 1);
        let mut seen = HashSet::new();
        for (name, id) in &ids {
            match ctx.pod_ips(id).await {
                Ok(ips) => {
                    let ip = ips.first().and_then(|i| i.parse::<Ipv4Addr>().ok());
                    match ip {
                        None => ph.error(format!("{name}: no IPv4 pod IP ({ips:?})")),
                        Some(ip) if !subnet.contains(ip) || ip == gateway => ph.error(format!(
                            "{name}: pod IP {ip} is not a pod address of {subnet}"
                        )),
                        Some(ip) if !seen.insert(ip) => {
                            ph.error(format!("{name}: pod IP {ip} given to two pods"))
                        }
                        Some(_) => {}
                    }
                }
                Err(e) => ph.error(format!("{name}: {e:#}")),
            }
        }
    }

    let t = Instant::now();
    let removed = map_concurrently(ids, spec.concurrency as usize, |(name, id)| async move {
        let t = Instant::now();
        let r = ctx.stop_remove_pod(&id).await;
        (name, r, ms(t))
    })
    .await;
    ph.stop_remove_wall_s = t.elapsed().as_secs_f64();
    for (name, r, took) in removed {
        match r {
            Ok(()) => ph.stop_remove_ms.push(took),
            Err(e) => ph.error(format!("{name}: {e:#}")),
        }
    }
    if let Some(bridge) = spec.bridge.clone() {
        let t = Instant::now();
        let left = tokio::task::spawn_blocking(move || {
            while !bridge_ports(&bridge).is_empty() && t.elapsed() < VETH_GRACE {
                std::thread::sleep(Duration::from_millis(5));
            }
            bridge_ports(&bridge).len()
        })
        .await?;
        if left == 0 {
            ph.veths_gone_s = Some(t.elapsed().as_secs_f64());
        } else {
            ph.error(format!(
                "{left} veths still on the bridge {VETH_GRACE:?} after the pods were removed"
            ));
        }
    }
    Ok(ph)
}

/// One pod made and removed, not timed (first netns, first veth, the
/// CNI bridge, caches); it must work.
async fn warm_up(ctx: &Ctx) -> Result<()> {
    let cfg = ctx.pod_config_with("warmup", NamespaceMode::Pod, &[])?;
    let id = ctx.run_pod(&cfg).await.context("warm-up pod")?;
    ctx.stop_remove_pod(&id).await.context("warm-up pod")?;
    Ok(())
}

async fn run_phases(
    ctx: &Ctx,
    name: &str,
    specs: &[PhaseSpec<'_>],
    r: &mut NetRt,
    metrics_port: Option<u16>,
) -> Result<()> {
    warm_up(ctx).await?;
    for s in specs {
        println!(
            "{name:<11} {}: {} pods, {} at a time...",
            s.what,
            s.pods,
            s.concurrency.max(1)
        );
        let before = match metrics_port {
            Some(p) => Some(crate::breakdown::scrape_text(p).await?),
            None => None,
        };
        let mut ph = phase(ctx, s)
            .await
            .with_context(|| format!("phase {}", s.key))?;
        print_phase(name, &ph);
        if let (Some(p), Some(before)) = (metrics_port, before) {
            let after = crate::breakdown::scrape_text(p).await?;
            let rows = crate::breakdown::between(
                &crate::breakdown::parse(&before),
                &crate::breakdown::parse(&after),
                s.pods,
            );
            crate::breakdown::print(name, &s.what, &rows);
            ph.breakdown = Some(rows);
        }
        r.phases.push(ph);
    }
    Ok(())
}

fn print_phase(name: &str, ph: &Phase) {
    let p = |v: &Vec<f64>, q| pct(v, q).unwrap_or(f64::NAN);
    println!(
        "{name:<11}   RunPodSandbox                    p50 {:>8.2} ms  p99 {:>8.2} ms  ({:.2} s)",
        p(&ph.run_ms, 50.0),
        p(&ph.run_ms, 99.0),
        ph.run_wall_s
    );
    println!(
        "{name:<11}   StopPodSandbox+RemovePodSandbox  p50 {:>8.2} ms  p99 {:>8.2} ms  ({:.2} s)",
        p(&ph.stop_remove_ms, 50.0),
        p(&ph.stop_remove_ms, 99.0),
        ph.stop_remove_wall_s
    );
    if let Some(g) = ph.veths_gone_s {
        println!("{name:<11}   no veth left on the bridge {g:.2} s after the last removal");
    }
    if ph.errors > 0 {
        println!("{name:<11}   ERRORS: {}", ph.errors);
        for e in &ph.error_samples {
            println!("{name:<11}     {}", e.lines().next().unwrap_or_default());
        }
    }
}

/// `n` TCP ports from `base` on that nothing listens (a bind to them
/// works), for hostPorts: their DNAT rules then take no one's connections.
fn free_host_ports(base: u16, n: u32) -> Result<Vec<u16>> {
    let mut out = Vec::new();
    let mut p = base;
    while out.len() < n as usize {
        if std::net::TcpListener::bind(("0.0.0.0", p)).is_ok()
            && std::net::TcpListener::bind(("::", p)).is_ok()
        {
            out.push(p);
        }
        p = p
            .checked_add(1)
            .ok_or_else(|| anyhow!("not {n} free ports from {base} on"))?;
    }
    Ok(out)
}

/// The kernel's price of a network namespace: a fresh thread's
/// unshare(CLONE_NEWNET), 10 times, 20 ms apart (the namespace goes with
/// the thread).
fn netns_probe() -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(20));
        let took = std::thread::spawn(|| {
            let t = Instant::now();
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map(|_| ms(t))
        })
        .join()
        .map_err(|_| anyhow!("the netns probe thread panicked"))?
        .context("unshare(CLONE_NEWNET)")?;
        out.push(took);
    }
    Ok(out)
}

// --------------------------------------------------------------------- run

pub async fn run(args: NetworkArgs, berthd: Option<String>) -> Result<i32> {
    let HostInfo {
        cores,
        kernel,
        loadavg_start,
    } = host_info();
    let breakdown_pods = args.breakdown_pods.unwrap_or(args.pods);
    let run_dir = tempfile::Builder::new()
        .prefix("berth-bench-network-")
        .tempdir()
        .context("creating the run's temp dir")?;
    let ipam_dir = run_dir.path().join("cni-ipam");
    // Declared before the daemons: dropped (cleaning up) after them.
    let mut host = HostNet::preflight(&args, &ipam_dir)?;
    let cgroups_before = host.cgroups_before.clone();
    println!(
        "berth-bench network: {cores} cores, kernel {kernel}, load average {loadavg_start}, temp dir {}",
        run_dir.path().display()
    );
    if let Some(b) = &berthd {
        println!("berthd: {b}");
    }
    let containerd_version = crate::containerd::announce(args.containerd)?;
    let netns_create_ms = match tokio::task::spawn_blocking(netns_probe).await? {
        Ok(v) => {
            println!(
                "kernel: creating a network namespace (unshare CLONE_NEWNET): p50 {:.2} ms, max {:.2} ms",
                pct(&v, 50.0).unwrap_or(f64::NAN),
                pct(&v, 100.0).unwrap_or(f64::NAN)
            );
            v
        }
        Err(e) => {
            println!("kernel: netns probe failed: {e:#}");
            Vec::new()
        }
    };
    let host_ports = free_host_ports(args.host_port_base, breakdown_pods)?;

    let mut track = Tracker {
        dirs: vec![run_dir.path().to_path_buf()],
        ..Default::default()
    };
    let mut results = Vec::new();
    let mut registry = None;

    if !args.skip_berth {
        let network = format!(
            "bridge plugin: bridge {}, subnet {}, nft table inet {}",
            args.berth_bridge, args.berth_subnet, args.berth_nft_table
        );
        println!("berth:      {network}");
        let mut r = NetRt {
            name: "berth".into(),
            how: berthd.clone().unwrap_or_default(),
            network,
            ..Default::default()
        };
        let toml = format!(
            "plugin = \"bridge\"\nbridge = {}\nsubnet = \"{}\"\nnft_table = {}\n",
            serde_json::to_string(&args.berth_bridge)?,
            args.berth_subnet,
            serde_json::to_string(&args.berth_nft_table)?
        );
        let specs = main_specs(
            &args,
            breakdown_pods,
            &host_ports,
            args.berth_subnet,
            &args.berth_bridge,
        );
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let out = on_berthd(
            crate::berthd_options(&toml).extra_top_level(&format!(
                "metrics = {{ address = \"127.0.0.1:{metrics_port}\" }}"
            )),
            run_dir.path(),
            "berth",
            "",
            &mut track,
            async |ctx, _| run_phases(ctx, "berth", &specs, &mut r, Some(metrics_port)).await,
        )
        .await;
        if let Err(e) = out {
            println!("berth       FAILED:\n{e:#}");
            r.error = Some(format!("{e:#}"));
        }
        if breakdown_pods > 0 {
            let specs = [PhaseSpec {
                key: "plugin-none",
                what: "pod netns, plugin \"none\" (serial)".into(),
                net: PodNet::Pod,
                pods: breakdown_pods,
                concurrency: 1,
                host_ports: &[],
                subnet: None,
                bridge: None,
            }];
            let out = on_berthd(
                crate::berthd_options("plugin = \"none\""),
                run_dir.path(),
                "berth-none",
                "",
                &mut track,
                async |ctx, _| run_phases(ctx, "berth", &specs, &mut r, None).await,
            )
            .await;
            if let Err(e) = out {
                println!("berth (plugin none) FAILED:\n{e:#}");
                let msg = format!("plugin \"none\": {e:#}");
                r.error = Some(match r.error.take() {
                    Some(prev) => format!("{prev}\n{msg}"),
                    None => msg,
                });
            }
        }
        results.push(r);
    }

    if args.containerd {
        let network = format!(
            "CNI: bridge {} + host-local {} + portmap (conflist in its conf dir), and containerd's loopback network",
            args.cni_bridge, args.cni_subnet
        );
        println!("containerd: {network}");
        let mut r = NetRt {
            name: "containerd".into(),
            how: containerd_version.clone().unwrap_or_default(),
            network,
            ..Default::default()
        };
        let out = async {
            let reg = Registry::start()
                .await
                .context("starting docker-registry")?;
            reg.push("berth-bench/pause", "1", &crate::workload::pause_image())
                .await
                .context("pushing the pause image")?;
            track.dirs.push(reg.dir().to_path_buf());
            let pause = reg.reference("berth-bench/pause:1");
            let setup = ContainerdSetup {
                registry_host: reg.host(),
                registry_url: reg.url(),
                sandbox_image: pause.clone(),
                cni_conflist: Some(cni_conflist(&args, &ipam_dir)),
            };
            registry = Some(reg);
            let specs = main_specs(
                &args,
                breakdown_pods,
                &host_ports,
                args.cni_subnet,
                &args.cni_bridge,
            );
            on_containerd(
                &setup,
                run_dir.path(),
                "containerd",
                &pause,
                &mut track,
                async |ctx, _| {
                    ctx.client
                        .pull(&pause)
                        .await
                        .map_err(|s| crate::podbench::status_err("PullImage (pause)", s))?;
                    run_phases(ctx, "containerd", &specs, &mut r, None).await
                },
            )
            .await
        }
        .await;
        if let Err(e) = out {
            println!("containerd  FAILED:\n{e:#}");
            r.error = Some(format!("{e:#}"));
        }
        results.push(r);
    }

    // ------------------------------------------------------------ teardown
    drop(registry);
    println!("cleaning up the host's network (waiting for the kernel to delete the veths)...");
    let host_cleanup = tokio::task::spawn_blocking(move || {
        let c = host.clean();
        drop(host);
        c
    })
    .await?;
    let left = track.finish(run_dir, cgroups_before).await?;

    let report = NetworkReport {
        cores,
        kernel,
        loadavg_start,
        loadavg_end: crate::loadavg(),
        pods: args.pods,
        concurrency: args.concurrency,
        breakdown_pods,
        netns_create_ms,
        runtimes: results,
        host: host_cleanup,
        leftover_mounts: left.mounts,
        leftover_processes: left.processes,
        leftover_cgroups: left.cgroups,
    };
    print_report(&report);
    crate::report::write_json(&report, args.json.as_deref())?;
    let stuck = stuck_cgroups(&report.leftover_cgroups);
    let left_behind: Vec<&String> = report
        .leftover_mounts
        .iter()
        .chain(&report.leftover_processes)
        .chain(stuck)
        .chain(&report.host.left_by_runtimes)
        .chain(&report.host.errors)
        .collect();
    if !left_behind.is_empty() {
        eprintln!("berth-bench: LEFT BEHIND after the run (removed by the bench where it could):");
        for m in left_behind {
            eprintln!("  {m}");
        }
        return Ok(2);
    }
    let failed = report
        .runtimes
        .iter()
        .any(|r| r.error.is_some() || r.errors() > 0);
    Ok(if failed { 1 } else { 0 })
}

/// The phases every runtime runs: serial and concurrent with the pod
/// network, then the breakdown variants.
fn main_specs<'a>(
    args: &NetworkArgs,
    breakdown_pods: u32,
    host_ports: &'a [u16],
    subnet: Net4,
    bridge: &str,
) -> Vec<PhaseSpec<'a>> {
    let mut v = vec![
        PhaseSpec {
            key: "serial",
            what: "pod network, serial".into(),
            net: PodNet::Pod,
            pods: args.pods,
            concurrency: 1,
            host_ports: &[],
            subnet: Some(subnet),
            bridge: Some(bridge.to_string()),
        },
        PhaseSpec {
            key: "concurrent",
            what: format!("pod network, concurrency {}", args.concurrency),
            net: PodNet::Pod,
            pods: args.pods,
            concurrency: args.concurrency,
            host_ports: &[],
            subnet: Some(subnet),
            bridge: Some(bridge.to_string()),
        },
    ];
    if breakdown_pods > 0 {
        // Right after the serial phase it is compared with, before the
        // concurrent one: the kernel is still tearing down the concurrent
        // phase's network namespaces for a while after it, which slowed
        // every step of a phase run then (0.4 ms of the 0.7 ms a hostPort
        // seemed to add to RunPodSandbox, outside its own nft step).
        v.insert(
            1,
            PhaseSpec {
                key: "hostport",
                what: "pod network + 1 hostPort (serial)".into(),
                net: PodNet::PodHostPort,
                pods: breakdown_pods,
                concurrency: 1,
                host_ports,
                subnet: Some(subnet),
                bridge: Some(bridge.to_string()),
            },
        );
        v.push(PhaseSpec {
            key: "host-network",
            what: "host network, NODE (serial)".into(),
            net: PodNet::Node,
            pods: breakdown_pods,
            concurrency: 1,
            host_ports: &[],
            subnet: None,
            bridge: None,
        });
    }
    v
}

/// containerd's network: bridge with host-local (its dataDir in the run's
/// temp dir), then portmap. As containerd's own example (ipMasq, hairpin),
/// IPv4 only.
fn cni_conflist(args: &NetworkArgs, ipam_dir: &Path) -> String {
    let v = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": args.cni_bridge,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": args.cni_subnet.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir,
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

// ------------------------------------------------------------------ report

type Pick = fn(&Phase) -> &Vec<f64>;

fn fmt_p(v: Option<&Vec<f64>>) -> String {
    match v.map(|v| (pct(v, 50.0), pct(v, 99.0))) {
        Some((Some(a), Some(b))) => format!("{a:.2} / {b:.2}"),
        _ => "-".into(),
    }
}

fn print_report(r: &NetworkReport) {
    println!();
    println!("==== network benchmark: summary ====");
    println!(
        "{} cores, kernel {}, load average {} -> {}; {} pods per phase, concurrency {}, {} pods per breakdown variant; {}",
        r.cores,
        r.kernel,
        r.loadavg_start,
        r.loadavg_end,
        r.pods,
        r.concurrency,
        r.breakdown_pods,
        crate::where_state_and_root_are()
    );
    for x in &r.runtimes {
        println!("{:<11} {}", x.name, x.network);
    }
    let b = r.runtimes.iter().find(|x| x.name == "berth");
    let c = r.runtimes.iter().find(|x| x.name == "containerd");
    let run: Pick = |p| &p.run_ms;
    let rm: Pick = |p| &p.stop_remove_ms;

    println!();
    print!("{:<44}", "pod network, ms (p50 / p99)");
    for x in &r.runtimes {
        print!("{:>20}", x.name);
    }
    if b.is_some() && c.is_some() {
        print!("{:>18}", "berth/containerd");
    }
    println!();
    let rows: [(&str, &str, Pick); 4] = [
        ("RunPodSandbox, serial", "serial", run),
        ("RunPodSandbox, concurrent", "concurrent", run as Pick),
        ("Stop+RemovePodSandbox, serial", "serial", rm),
        ("Stop+RemovePodSandbox, concurrent", "concurrent", rm),
    ];
    for (label, key, pick) in rows {
        let label = label.replace("concurrent", &format!("concurrency {}", r.concurrency));
        print!("{label:<44}");
        for x in &r.runtimes {
            print!("{:>20}", fmt_p(x.phase(key).map(pick)));
        }
        if let (Some(b), Some(c)) = (b, c) {
            match (b.p50(key, pick), c.p50(key, pick)) {
                (Some(vb), Some(vc)) if vc > 0.0 => {
                    print!("{:>18}", format!("{:.3} ({:.0}x)", vb / vc, vc / vb))
                }
                _ => print!("{:>18}", "-"),
            }
        }
        println!();
    }
    for (label, key) in [
        ("wall time, serial: run / remove, s", "serial"),
        ("wall time, concurrent: run / remove, s", "concurrent"),
    ] {
        print!("{label:<44}");
        for x in &r.runtimes {
            match x.phase(key) {
                Some(p) => print!(
                    "{:>20}",
                    format!("{:.2} / {:.2}", p.run_wall_s, p.stop_remove_wall_s)
                ),
                None => print!("{:>20}", "-"),
            }
        }
        println!();
    }
    for (label, key) in [
        ("veths gone after removal, serial, s", "serial"),
        ("veths gone after removal, concurrent, s", "concurrent"),
    ] {
        print!("{label:<44}");
        for x in &r.runtimes {
            match x.phase(key).and_then(|p| p.veths_gone_s) {
                Some(g) => print!("{:>20}", format!("{g:.2}")),
                None => print!("{:>20}", "-"),
            }
        }
        println!();
    }
    print!("{:<44}", "failed calls (all phases)");
    for x in &r.runtimes {
        print!("{:>20}", x.errors());
    }
    println!();

    // Where the time goes.
    if r.breakdown_pods > 0 {
        println!();
        println!(
            "where the time goes (serial p50, ms; measured from outside, {} pods per variant, {} for the pod network row):",
            r.breakdown_pods, r.pods
        );
        println!("{:<52}{:>16}{:>16}", "", "RunPodSandbox", "Stop+Remove");
        let variants: [(&str, &str); 4] = [
            ("host-network", "host network (NODE: no netns, no plugin)"),
            ("plugin-none", "pod netns, plugin \"none\" (loopback only)"),
            ("serial", "pod network (netns + plugin)"),
            ("hostport", "pod network + 1 hostPort"),
        ];
        for x in &r.runtimes {
            for (key, label) in variants {
                if x.phase(key).is_none() {
                    continue;
                }
                let f = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or("-".into());
                println!(
                    "{:<52}{:>16}{:>16}",
                    format!("{} {label}", x.name),
                    f(x.p50(key, run)),
                    f(x.p50(key, rm))
                );
            }
            let d = |a: &str, b: &str, pick: Pick| match (x.p50(a, pick), x.p50(b, pick)) {
                (Some(a), Some(b)) => format!("{:+.2}", a - b),
                _ => "-".into(),
            };
            let shares: Vec<(&str, &str, &str)> = if x.name == "berth" {
                vec![
                    (
                        "  netns (+uts) pinned, loopback up",
                        "plugin-none",
                        "host-network",
                    ),
                    (
                        "  bridge plugin: veth, address, routes",
                        "serial",
                        "plugin-none",
                    ),
                    (
                        "  one hostPort (its nft batch in process)",
                        "hostport",
                        "serial",
                    ),
                ]
            } else {
                vec![
                    (
                        "  netns + CNI (bridge, host-local, portmap, loopback)",
                        "serial",
                        "host-network",
                    ),
                    (
                        "  one hostPort: portmap's iptables rules",
                        "hostport",
                        "serial",
                    ),
                ]
            };
            for (label, a, bb) in shares {
                if x.phase(a).is_some() && x.phase(bb).is_some() {
                    println!(
                        "{:<52}{:>16}{:>16}",
                        format!("{} {}", x.name, label.trim_start()),
                        d(a, bb, run),
                        d(a, bb, rm)
                    );
                }
            }
        }
        if !r.netns_create_ms.is_empty() {
            println!(
                "kernel: unshare(CLONE_NEWNET) of a fresh thread p50 {:.2} ms (part of every pod with a netns)",
                pct(&r.netns_create_ms, 50.0).unwrap_or(f64::NAN)
            );
        }
        if b.is_some() {
            println!(
                "(berthd's own step timings are printed after each phase above; berth's veth goes with the \
                 pod's netns, deleted by the kernel after RemovePodSandbox, not timed)"
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

    println!();
    fn ok(x: Option<&NetRt>) -> Option<&NetRt> {
        x.filter(|x| x.error.is_none())
    }
    let (b, c) = (ok(b), ok(c));
    for key in ["serial", "concurrent"] {
        if key == "serial" {
            println!("targets (pod network; serial p50s):");
        } else {
            println!(
                "the same at concurrency {} ({} calls in flight on {} cores: the latencies include queueing):",
                r.concurrency, r.concurrency, r.cores
            );
        }
        match b.and_then(|b| b.p50(key, run)) {
            Some(v) => println!(
                "  RunPodSandbox under {TARGET_RUN_POD_MS} ms: {v:.2} ms: {}",
                met(v < TARGET_RUN_POD_MS)
            ),
            None => println!("  RunPodSandbox under {TARGET_RUN_POD_MS} ms: not measured"),
        }
        for (step, pick) in [
            ("RunPodSandbox", run as Pick),
            ("StopPodSandbox+RemovePodSandbox", rm as Pick),
        ] {
            match (
                b.and_then(|b| b.p50(key, pick)),
                c.and_then(|c| c.p50(key, pick)),
            ) {
                (Some(vb), Some(vc)) => println!(
                    "  {step} at most 1/{TARGET_RATIO} of containerd's: {vb:.2} vs {vc:.2} ms ({:.1}x faster): {}",
                    vc / vb,
                    met(vb * TARGET_RATIO <= vc)
                ),
                _ => println!("  {step} at most 1/{TARGET_RATIO} of containerd's: not measured"),
            }
        }
        if key == "serial" {
            for x in &r.runtimes {
                if let Some(p) = x.phase("concurrent") {
                    println!(
                        "  {} pods with a pod network at concurrency {} without an error ({}): {} failed calls: {}",
                        p.pods,
                        p.concurrency,
                        x.name,
                        p.errors,
                        met(p.errors == 0)
                    );
                }
            }
        }
    }

    if let Some(b) = b {
        print_issue13(b);
    }

    println!();
    if !r.host.removed.is_empty() {
        println!(
            "clean-up of the host: removed {}",
            r.host.removed.join("; ")
        );
    }
    if r.host.left_by_runtimes.is_empty()
        && r.host.errors.is_empty()
        && r.leftover_mounts.is_empty()
        && r.leftover_processes.is_empty()
        && stuck_cgroups(&r.leftover_cgroups).is_empty()
    {
        println!(
            "clean-up: no veth, netns, chain, lease, mount or process left; cgroups removed after the run: {}",
            if r.leftover_cgroups.is_empty() {
                "none".to_string()
            } else {
                r.leftover_cgroups.len().to_string()
            }
        );
    } else {
        for m in r.host.left_by_runtimes.iter().chain(&r.host.errors) {
            println!("LEFT BEHIND: {m}");
        }
    }
}

/// Issue 13's targets of the pod network: RunPodSandbox with it, a
/// hostPort's cost (from outside, and berthd's own step), and the
/// concurrency ratios.
fn print_issue13(b: &NetRt) {
    const RUN_MS: f64 = 4.0;
    const HOSTPORT_MS: f64 = 0.5;
    const RATIO: f64 = 5.0;
    let run: Pick = |p| &p.run_ms;
    let rm: Pick = |p| &p.stop_remove_ms;
    println!("targets (issue 13; serial p50s):");
    match b.p50("serial", run) {
        Some(v) => println!(
            "  RunPodSandbox with a pod network at most {RUN_MS} ms: {v:.2} ms: {}",
            met(v <= RUN_MS)
        ),
        None => println!("  RunPodSandbox with a pod network at most {RUN_MS} ms: not measured"),
    }
    let step = |method: &str, name: &str| {
        b.phase("hostport")?
            .breakdown
            .as_ref()?
            .iter()
            .find(|r| r.method == method)?
            .steps
            .iter()
            .find(|s| s.step == name)
            .map(|s| s.mean_ms)
    };
    for (what, pick, method, name) in [
        (
            "RunPodSandbox",
            run as Pick,
            "RunPodSandbox",
            "pod.network.hostports",
        ),
        (
            "its removal",
            rm as Pick,
            "StopPodSandbox",
            "stop_pod.network.hostports",
        ),
    ] {
        match (b.p50("hostport", pick), b.p50("serial", pick)) {
            (Some(with), Some(without)) => {
                let added = with - without;
                println!(
                    "  one hostPort adds at most {HOSTPORT_MS} ms to {what}: {added:+.2} ms (p50 with it less p50 without){}: {}",
                    step(method, name)
                        .map(|v| format!("; berthd's own {name} step {v:.2} ms mean"))
                        .unwrap_or_default(),
                    met(added <= HOSTPORT_MS)
                );
            }
            _ => println!("  one hostPort adds at most {HOSTPORT_MS} ms to {what}: not measured"),
        }
    }
    for (what, pick) in [
        ("RunPodSandbox", run as Pick),
        ("StopPodSandbox+RemovePodSandbox", rm as Pick),
    ] {
        match (b.p50("concurrent", pick), b.p50("serial", pick)) {
            (Some(c), Some(s)) => println!(
                "  {what} at concurrency: p50 at most {RATIO}x the serial one: {c:.2} vs {s:.2} ms ({:.1}x): {}",
                c / s,
                met(c <= RATIO * s)
            ),
            _ => println!(
                "  {what} at concurrency: p50 at most {RATIO}x the serial one: not measured"
            ),
        }
    }
}
