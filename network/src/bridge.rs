//! The built-in bridge plugin: a veth pair per pod on a node bridge.
//!
//! RunPodSandbox costs a handful of netlink round trips and no process:
//! the veth is created with its pod end already inside the pod's netns
//! (`eth0`), the host end is attached to the bridge with hairpin on, and a
//! short-lived thread inside the netns sets the address, brings `eth0` up
//! and adds the default route. Only pods with hostPorts run `nft` (one
//! batch of map elements, see [`crate::nft`]).
//!
//! Teardown frees the addresses and ports and withdraws the elements; the
//! veth itself goes with the pod's netns (the kernel removes it when the
//! last reference to the namespace goes, off the request path: deleting a
//! veth waits for an RCU grace period).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnetwork::{IpNetwork, Ipv4Network};

use crate::config::DEFAULT_SUBNET;
use crate::ipam::Pool;
use crate::netlink::{Netlink, NlError};
use crate::nft::{self, Published, Table};
use crate::{Attachment, Error, NetworkConfig, Plugin, PodRequest, Protocol, Readiness, Result};

/// Host ends of pod veths are `bth` + the first 12 characters of the pod id;
/// the full id is the link's alias.
pub const VETH_PREFIX: &str = "bth";

/// How often a plugin that is not ready tries to bring the bridge up.
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

pub fn host_veth_name(pod_id: &str) -> String {
    let short: String = pod_id.chars().take(12).collect();
    format!("{VETH_PREFIX}{short}")
}

/// A published port as the kernel tells ports apart.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PortKey {
    protocol: Protocol,
    host_port: u16,
    host_ip: Option<IpAddr>,
}

impl PortKey {
    fn clashes(&self, other: &PortKey) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }
}

/// What `reserve` took for a pod, and what plumbing it needs.
struct Reserved {
    bridge: u32,
    ips: Vec<IpAddr>,
    /// Gateway and prefix length per family.
    gateways: Vec<(IpAddr, u8)>,
    published: Vec<Published>,
}

struct PortHolder {
    pod_id: String,
    pod: String,
}

struct State {
    /// Why the plugin cannot serve pods, if it cannot.
    not_ready: Option<String>,
    bridge_index: u32,
    pool4: Pool,
    pool6: Option<Pool>,
    /// Which pod holds each address (a retried teardown must not free an
    /// address that went to another pod since).
    owners: HashMap<IpAddr, String>,
    ports: HashMap<PortKey, PortHolder>,
    published: HashMap<String, Vec<Published>>,
    /// Where the IPv4 subnet came from: config, kubelet or default.
    subnet_source: &'static str,
    /// When the bridge and table were last (re)made: a plugin that is not
    /// ready tries again every few seconds (Status is asked often), so that
    /// fixing what was in the way needs no restart.
    last_try: Option<std::time::Instant>,
}

pub struct BridgePlugin {
    cfg: NetworkConfig,
    nft: Option<nft::Nft>,
    /// `<root>/network`, where kubelet's pod CIDR is kept.
    dir: PathBuf,
    state: Mutex<State>,
}

fn poisoned() -> Error {
    Error::Failed("network state lock poisoned by an earlier panic".into())
}

fn nl(e: NlError) -> Error {
    Error::Failed(e.to_string())
}

impl BridgePlugin {
    /// Check the subnet against the host's routes, create or adopt the
    /// bridge. A subnet that overlaps a host route is an error (berthd
    /// refuses to start); a bridge that cannot be made leaves the plugin
    /// not ready, with the reason.
    pub fn open(cfg: &NetworkConfig, root: &Path) -> Result<Self> {
        let dir = root.join("network");
        let (subnet4, source) = match cfg.subnet {
            Some(s) => (s, "config"),
            None => match read_pod_cidr(&dir)? {
                Some(s) => (s, "kubelet"),
                None => (
                    DEFAULT_SUBNET
                        .parse()
                        .map_err(|e| Error::failed("default subnet", e))?,
                    "default",
                ),
            },
        };
        let mut sock = Netlink::open().map_err(nl)?;
        let existing = sock.link_by_name(&cfg.bridge).map_err(nl)?;
        check_overlap(
            &mut sock,
            IpNetwork::V4(subnet4),
            existing.as_ref().map(|l| l.index),
            "network.subnet",
        )?;
        if let Some(s6) = cfg.subnet6 {
            check_overlap(
                &mut sock,
                IpNetwork::V6(s6),
                existing.as_ref().map(|l| l.index),
                "network.subnet6",
            )?;
        }
        let plugin = Self {
            cfg: cfg.clone(),
            nft: nft::Nft::find(false),
            dir,
            state: Mutex::new(State {
                not_ready: Some("not recovered yet".into()),
                bridge_index: 0,
                pool4: Pool::with_gateway(IpNetwork::V4(subnet4), cfg.gateway.map(IpAddr::V4)),
                pool6: cfg
                    .subnet6
                    .map(|s| Pool::with_gateway(IpNetwork::V6(s), cfg.gateway6.map(IpAddr::V6))),
                owners: HashMap::new(),
                ports: HashMap::new(),
                published: HashMap::new(),
                subnet_source: source,
                last_try: None,
            }),
        };
        Ok(plugin)
    }

    fn table(&self, st: &State) -> Table {
        let IpNetwork::V4(s4) = st.pool4.subnet() else {
            unreachable!("pool4 holds an IPv4 subnet")
        };
        Table {
            name: self.cfg.nft_table.clone(),
            bridge: self.cfg.bridge.clone(),
            subnet4: Some(s4),
            subnet6: st.pool6.as_ref().and_then(|p| match p.subnet() {
                IpNetwork::V6(s) => Some(s),
                IpNetwork::V4(_) => None,
            }),
        }
    }

    /// Bridge up with its gateway addresses, forwarding on, route_localnet
    /// on the bridge.
    fn ensure_bridge(&self, st: &State) -> Result<u32> {
        let mut sock = Netlink::open().map_err(nl)?;
        let name = &self.cfg.bridge;
        let link = match sock.link_by_name(name).map_err(nl)? {
            Some(l) => l,
            None => {
                match sock.add_bridge(name, self.cfg.mtu) {
                    Ok(()) => {}
                    // Another berthd (or a restart race) made it.
                    Err(e) if e.is(libc::EEXIST) => {}
                    Err(e) => {
                        return Err(Error::NotReady(format!("cannot create bridge {name}: {e}")));
                    }
                }
                sock.link_by_name(name).map_err(nl)?.ok_or_else(|| {
                    Error::NotReady(format!("bridge {name} vanished after creation"))
                })?
            }
        };
        if link.kind.as_deref() != Some("bridge") {
            return Err(Error::NotReady(format!(
                "{name} exists and is not a bridge (kind {}): set network.bridge to another name or remove it",
                link.kind.as_deref().unwrap_or("unknown")
            )));
        }
        let pools = std::iter::once(&st.pool4).chain(st.pool6.as_ref());
        for pool in pools {
            sock.add_address(link.index, pool.gateway(), pool.subnet().prefix())
                .map_err(|e| Error::NotReady(format!("bridge {name}: {e}")))?;
        }
        sock.set_up(link.index, false)
            .map_err(|e| Error::NotReady(format!("bridge {name}: {e}")))?;
        write_sysctl("net/ipv4/ip_forward", "1")?;
        write_sysctl(&format!("net/ipv4/conf/{name}/route_localnet"), "1")?;
        if st.pool6.is_some() {
            write_sysctl("net/ipv6/conf/all/forwarding", "1")?;
        }
        Ok(link.index)
    }

    /// Bridge, addresses, sysctls and the whole nftables table; records why
    /// not in `st.not_ready`. True when ready.
    fn bring_up(&self, st: &mut State) -> bool {
        st.last_try = Some(std::time::Instant::now());
        let index = match self.ensure_bridge(st) {
            Ok(i) => i,
            Err(e) => {
                st.not_ready = Some(e.to_string());
                return false;
            }
        };
        st.bridge_index = index;
        let script = self.table(st).full_script(&Self::all_published(st));
        if let Err(e) = self.nft_apply(&script) {
            st.not_ready = Some(format!(
                "writing nftables table inet {}: {e}",
                self.cfg.nft_table
            ));
            return false;
        }
        if st.not_ready.take().is_some() {
            tracing::info!(bridge = %self.cfg.bridge, "bridge network ready");
        }
        true
    }

    fn all_published(st: &State) -> Vec<Published> {
        let mut v: Vec<Published> = st.published.values().flatten().cloned().collect();
        v.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        v
    }

    fn nft_apply(&self, script: &str) -> Result<()> {
        let nft = self.nft.as_ref().ok_or_else(|| {
            Error::NotReady(
                "neither libnftables.so.1 nor nft (PATH, /usr/sbin, /sbin) is there: install the nftables package".into(),
            )
        })?;
        nft.apply(script)
    }

    /// Free what `setup` took, in memory.
    fn release(st: &mut State, pod_id: &str, ips: &[IpAddr]) -> Vec<Published> {
        for ip in ips {
            if st.owners.get(ip).is_some_and(|o| o == pod_id) {
                st.owners.remove(ip);
                if st.pool4.contains(*ip) {
                    st.pool4.release(*ip);
                } else if let Some(p) = st.pool6.as_mut() {
                    p.release(*ip);
                }
            }
        }
        st.ports.retain(|_, h| h.pod_id != pod_id);
        st.published.remove(pod_id).unwrap_or_default()
    }

    /// Allocate addresses and reserve ports for a pod, in memory.
    fn reserve(&self, pod: &PodRequest) -> Result<Reserved> {
        let mut st = self.state.lock().map_err(|_| poisoned())?;
        if st.not_ready.is_some() && st.last_try.is_some_and(|t| t.elapsed() >= RETRY_EVERY) {
            self.bring_up(&mut st);
        }
        if let Some(why) = &st.not_ready {
            return Err(Error::NotReady(format!(
                "the bridge network is not ready: {why}"
            )));
        }
        // Ports first: a clash takes nothing.
        let keys: Vec<PortKey> = pod
            .port_mappings
            .iter()
            .filter(|p| p.host_port != 0)
            .map(|p| PortKey {
                protocol: p.protocol,
                host_port: p.host_port,
                host_ip: p.host_ip.filter(|ip| !ip.is_unspecified()),
            })
            .collect();
        for (i, k) in keys.iter().enumerate() {
            if let Some((_, h)) = st.ports.iter().find(|(held, _)| held.clashes(k)) {
                return Err(Error::AlreadyExists(format!(
                    "hostPort {}/{}{} is already held by pod {} ({})",
                    k.host_port,
                    k.protocol.as_str(),
                    k.host_ip.map(|ip| format!(" on {ip}")).unwrap_or_default(),
                    h.pod,
                    h.pod_id
                )));
            }
            if keys[..i].iter().any(|o| o.clashes(k)) {
                return Err(Error::InvalidArgument(format!(
                    "hostPort {}/{} is given twice",
                    k.host_port,
                    k.protocol.as_str()
                )));
            }
        }
        let mut ips = Vec::new();
        let subnet4 = st.pool4.subnet();
        let Some(ip4) = st.pool4.allocate() else {
            return Err(Error::Exhausted(format!(
                "no address left in the pod subnet {subnet4} ({} pods hold one)",
                st.pool4.in_use()
            )));
        };
        ips.push(ip4);
        if let Some(p6) = st.pool6.as_mut() {
            match p6.allocate() {
                Some(ip6) => ips.push(ip6),
                None => {
                    let s6 = p6.subnet();
                    st.pool4.release(ip4);
                    return Err(Error::Exhausted(format!(
                        "no address left in the pod subnet {s6}"
                    )));
                }
            }
        }
        for ip in &ips {
            st.owners.insert(*ip, pod.id.clone());
        }
        let mut published = Vec::new();
        for (k, p) in keys
            .iter()
            .zip(pod.port_mappings.iter().filter(|p| p.host_port != 0))
        {
            st.ports.insert(
                k.clone(),
                PortHolder {
                    pod_id: pod.id.clone(),
                    pod: format!("{}/{}", pod.namespace, pod.name),
                },
            );
            for ip in &ips {
                // A host address of one family leads to the pod's address
                // of the same family; "all addresses" to both.
                if k.host_ip.is_some_and(|h| h.is_ipv4() != ip.is_ipv4()) {
                    continue;
                }
                let mut port = p.clone();
                port.host_ip = k.host_ip;
                published.push(Published { port, pod_ip: *ip });
            }
        }
        st.published.insert(pod.id.clone(), published.clone());
        let gateways = std::iter::once(&st.pool4)
            .chain(st.pool6.as_ref())
            .map(|p| (p.gateway(), p.subnet().prefix()))
            .collect();
        Ok(Reserved {
            bridge: st.bridge_index,
            ips,
            gateways,
            published,
        })
    }

    fn plumb(
        &self,
        pod: &PodRequest,
        bridge: u32,
        ips: &[IpAddr],
        gateways: &[(IpAddr, u8)],
    ) -> Result<String> {
        let host = host_veth_name(&pod.id);
        let netns = fs::File::open(&pod.netns).map_err(|e| {
            Error::failed(format!("opening the pod netns {}", pod.netns.display()), e)
        })?;
        let mut sock = Netlink::open().map_err(nl)?;
        let mtu = self.cfg.mtu;
        match sock.add_veth(&host, &pod.id, bridge, mtu, "eth0", netns.as_fd()) {
            Ok(()) => {}
            Err(e) if e.is(libc::EEXIST) => {
                // A leftover of this pod (a retry after a crash): replace it.
                match sock.link_by_name(&host).map_err(nl)? {
                    Some(l) if l.alias.as_deref() == Some(pod.id.as_str()) => {
                        sock.del_link(l.index).map_err(nl)?;
                        sock.add_veth(&host, &pod.id, bridge, mtu, "eth0", netns.as_fd())
                            .map_err(nl)?;
                    }
                    _ => {
                        return Err(Error::Failed(format!(
                            "{e} (a link of another pod has this name)"
                        )));
                    }
                }
            }
            Err(e) => return Err(nl(e)),
        }
        let r = (|| {
            sock.set_up_with_alias_by_name(&host, true, Some(&pod.id))
                .map_err(nl)?;
            configure_pod_side(&netns, ips, gateways)
        })();
        match r {
            Ok(()) => Ok(host),
            Err(e) => {
                if let Ok(Some(l)) = sock.link_by_name(&host) {
                    let _ = sock.del_link(l.index);
                }
                Err(e)
            }
        }
    }
}

/// Inside the pod's netns, from a thread of its own: addresses, eth0 up,
/// default routes.
fn configure_pod_side(netns: &fs::File, ips: &[IpAddr], gateways: &[(IpAddr, u8)]) -> Result<()> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::failed("entering the pod netns", e))?;
            let mut sock = Netlink::open().map_err(nl)?;
            let idx = sock.set_up_by_name("eth0").map_err(nl)?;
            for ip in ips {
                let prefix = gateways
                    .iter()
                    .find(|(g, _)| g.is_ipv4() == ip.is_ipv4())
                    .map(|(_, p)| *p)
                    .unwrap_or(if ip.is_ipv4() { 32 } else { 128 });
                sock.add_address(idx, *ip, prefix).map_err(nl)?;
            }
            for (gw, _) in gateways {
                sock.add_default_route(*gw, idx).map_err(nl)?;
            }
            Ok(())
        })
        .join()
        .map_err(|_| Error::Failed("the pod network thread panicked".into()))?
    })
}

fn write_sysctl(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{key}");
    match fs::read_to_string(&path) {
        Ok(v) if v.trim() == value => return Ok(()),
        _ => {}
    }
    fs::write(&path, value)
        .map_err(|e| Error::NotReady(format!("setting {} = {value}: {e}", key.replace('/', "."))))
}

fn read_pod_cidr(dir: &Path) -> Result<Option<Ipv4Network>> {
    match fs::read_to_string(dir.join("pod-cidr")) {
        Ok(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| Error::failed(format!("{}/pod-cidr", dir.display()), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::failed(
            format!("reading {}/pod-cidr", dir.display()),
            e,
        )),
    }
}

fn write_pod_cidr(dir: &Path, cidr: Ipv4Network) -> Result<()> {
    use std::io::Write;
    fs::create_dir_all(dir).map_err(|e| Error::failed(format!("creating {}", dir.display()), e))?;
    let tmp = dir.join("pod-cidr.tmp");
    let mut f = fs::File::create(&tmp)
        .map_err(|e| Error::failed(format!("writing {}", tmp.display()), e))?;
    f.write_all(format!("{cidr}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::failed(format!("writing {}", tmp.display()), e))?;
    fs::rename(&tmp, dir.join("pod-cidr")).map_err(|e| Error::failed("saving the pod CIDR", e))
}

fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// A pod subnet must not overlap a route of the host (other than the
/// default route and routes through our own bridge).
fn check_overlap(
    sock: &mut Netlink,
    subnet: IpNetwork,
    bridge: Option<u32>,
    key: &str,
) -> Result<()> {
    for r in sock.routes(subnet.is_ipv6()).map_err(nl)? {
        if r.prefix == 0 || (bridge.is_some() && r.oif == bridge) {
            continue;
        }
        // IPv6 link-local and multicast routes are on every interface.
        if let IpAddr::V6(a) = r.dst
            && (a.segments()[0] & 0xffc0 == 0xfe80 || a.is_multicast())
        {
            continue;
        }
        let Ok(route) = IpNetwork::new(r.dst, r.prefix) else {
            continue;
        };
        if overlaps(route, subnet) {
            return Err(Error::InvalidArgument(format!(
                "{key} {subnet} overlaps the host route {route}{}: choose a pod subnet that is not in use on this node",
                r.oif
                    .map(|i| format!(" (interface index {i})"))
                    .unwrap_or_default()
            )));
        }
    }
    Ok(())
}

impl Plugin for BridgePlugin {
    fn name(&self) -> &'static str {
        "bridge"
    }

    fn readiness(&self) -> Readiness {
        match self.state.lock() {
            Ok(mut st) => {
                if st.not_ready.is_some() && st.last_try.is_some_and(|t| t.elapsed() >= RETRY_EVERY)
                {
                    self.bring_up(&mut st);
                }
                match &st.not_ready {
                    None => Readiness::Ready,
                    Some(why) => Readiness::NotReady {
                        reason: "NetworkPluginNotReady".into(),
                        message: format!("berth bridge network {}: {why}", self.cfg.bridge),
                    },
                }
            }
            Err(_) => Readiness::NotReady {
                reason: "NetworkPluginNotReady".into(),
                message: "network state lock poisoned".into(),
            },
        }
    }

    fn setup(&self, pod: &PodRequest) -> Result<Attachment> {
        let Reserved {
            bridge,
            ips,
            gateways,
            published,
        } = self.reserve(pod)?;
        let r = (|| {
            let host = self.plumb(pod, bridge, &ips, &gateways)?;
            if !published.is_empty() {
                let st = self.state.lock().map_err(|_| poisoned())?;
                let script = self.table(&st).add_script(&published);
                drop(st);
                let _step =
                    tracing::debug_span!(target: "berth_step", "pod.network.hostports").entered();
                if let Err(e) = self.nft_apply(&script) {
                    // Nothing of this pod's may stay in the kernel.
                    if let Ok(mut s) = Netlink::open()
                        && let Ok(Some(l)) = s.link_by_name(&host)
                    {
                        let _ = s.del_link(l.index);
                    }
                    return Err(e);
                }
            }
            Ok(host)
        })();
        match r {
            Ok(host) => Ok(Attachment {
                plugin: "bridge".into(),
                ips,
                host_veth: Some(host),
                port_mappings: pod.port_mappings.clone(),
                pod: format!("{}/{}", pod.namespace, pod.name),
            }),
            Err(e) => {
                if let Ok(mut st) = self.state.lock() {
                    Self::release(&mut st, &pod.id, &ips);
                }
                Err(e)
            }
        }
    }

    fn teardown(&self, pod: &PodRequest, _att: &Attachment) -> Result<()> {
        let (script, table) = {
            let mut st = self.state.lock().map_err(|_| poisoned())?;
            // The ports go now; the addresses when the pod's record no
            // longer holds them (`released`).
            let gone = Self::release(&mut st, &pod.id, &[]);
            let t = self.table(&st);
            (t.delete_script(&gone), t)
        };
        let _step = (!script.is_empty()).then(|| {
            tracing::debug_span!(target: "berth_step", "stop_pod.network.hostports").entered()
        });
        if let Err(e) = self.nft_apply(&script) {
            // Put the table back in line with what berthd knows.
            tracing::warn!(pod = %pod.id, error = %e, "withdrawing hostPorts; rewriting berth's table");
            let st = self.state.lock().map_err(|_| poisoned())?;
            let full = table.full_script(&Self::all_published(&st));
            drop(st);
            self.nft_apply(&full)?;
        }
        Ok(())
    }

    fn released(&self, pod_id: &str, att: &Attachment) {
        if let Ok(mut st) = self.state.lock() {
            Self::release(&mut st, pod_id, &att.ips);
        }
    }

    fn recover(&self, live: &[(String, Attachment)]) -> Result<()> {
        let mut st = self.state.lock().map_err(|_| poisoned())?;
        // The pools, owners and ports, from the pods' records.
        st.owners.clear();
        st.ports.clear();
        st.published.clear();
        st.pool4 = Pool::with_gateway(st.pool4.subnet(), Some(st.pool4.gateway()));
        st.pool6 = st
            .pool6
            .as_ref()
            .map(|p| Pool::with_gateway(p.subnet(), Some(p.gateway())));
        for (id, att) in live.iter().filter(|(_, a)| a.plugin == "bridge") {
            let mut ips = Vec::new();
            for ip in &att.ips {
                let took = if st.pool4.contains(*ip) {
                    st.pool4.mark_used(*ip)
                } else {
                    st.pool6.as_mut().is_some_and(|p| p.mark_used(*ip))
                };
                if took {
                    st.owners.insert(*ip, id.clone());
                    ips.push(*ip);
                } else {
                    tracing::warn!(pod = %id, ip = %ip, "pod address outside the pod subnet; not managed");
                }
            }
            let mut published = Vec::new();
            for p in att.port_mappings.iter().filter(|p| p.host_port != 0) {
                let host_ip = p.host_ip.filter(|ip| !ip.is_unspecified());
                st.ports.insert(
                    PortKey {
                        protocol: p.protocol,
                        host_port: p.host_port,
                        host_ip,
                    },
                    PortHolder {
                        pod_id: id.clone(),
                        pod: if att.pod.is_empty() {
                            id.clone()
                        } else {
                            att.pod.clone()
                        },
                    },
                );
                for ip in &ips {
                    if host_ip.is_some_and(|h| h.is_ipv4() != ip.is_ipv4()) {
                        continue;
                    }
                    let mut port = p.clone();
                    port.host_ip = host_ip;
                    published.push(Published { port, pod_ip: *ip });
                }
            }
            st.published.insert(id.clone(), published);
        }
        if !self.bring_up(&mut st) {
            return Ok(());
        }
        let index = st.bridge_index;
        drop(st);
        // Veths on our bridge that belong to no live pod: left by a crash.
        let keep: HashSet<&str> = live.iter().map(|(id, _)| id.as_str()).collect();
        let keep_names: HashSet<String> = live.iter().map(|(id, _)| host_veth_name(id)).collect();
        let mut sock = Netlink::open().map_err(nl)?;
        let orphans: Vec<(u32, String)> = sock
            .links()
            .map_err(nl)?
            .into_iter()
            .filter(|l| l.master == Some(index) && l.name.starts_with(VETH_PREFIX))
            .filter(|l| {
                !keep_names.contains(&l.name)
                    && !l.alias.as_deref().is_some_and(|a| keep.contains(a))
            })
            .map(|l| (l.index, l.name))
            .collect();
        if !orphans.is_empty() {
            // Each deletion waits for RCU: off the start path.
            std::thread::spawn(move || {
                let Ok(mut sock) = Netlink::open() else {
                    return;
                };
                for (idx, name) in orphans {
                    match sock.del_link(idx) {
                        Ok(()) => tracing::info!(veth = %name, "removed a veth of no pod"),
                        Err(e) if e.is(libc::ENODEV) => {}
                        Err(e) => {
                            tracing::warn!(veth = %name, error = %e, "removing a veth of no pod")
                        }
                    }
                }
            });
        }
        Ok(())
    }

    fn set_pod_cidr(&self, cidr: &str) -> Result<()> {
        if self.cfg.subnet.is_some() {
            tracing::debug!(
                cidr,
                "kubelet's pod CIDR ignored: network.subnet is configured"
            );
            return Ok(());
        }
        // kubelet may send several (dual-stack): take the IPv4 one.
        let Some(net) = cidr
            .split(',')
            .filter_map(|c| c.trim().parse::<Ipv4Network>().ok())
            .next()
        else {
            return Err(Error::InvalidArgument(format!(
                "pod CIDR {cidr:?} has no IPv4 subnet"
            )));
        };
        crate::config::check_subnet4(net)
            .map_err(|e| Error::InvalidArgument(format!("pod CIDR: {e}")))?;
        let mut st = self.state.lock().map_err(|_| poisoned())?;
        if st.pool4.subnet() == IpNetwork::V4(net) {
            return Ok(());
        }
        if st.pool4.in_use() > 0 {
            tracing::warn!(cidr, current = %st.pool4.subnet(), "kubelet's pod CIDR ignored: pods hold addresses of the current subnet");
            return Ok(());
        }
        let mut sock = Netlink::open().map_err(nl)?;
        let bridge = sock
            .link_by_name(&self.cfg.bridge)
            .map_err(nl)?
            .map(|l| l.index);
        check_overlap(&mut sock, IpNetwork::V4(net), bridge, "pod CIDR")?;
        write_pod_cidr(&self.dir, net)?;
        // The old gateway leaves the bridge with its subnet.
        if let Some(b) = bridge {
            let old = &st.pool4;
            if let Err(e) = sock.del_address(b, old.gateway(), old.subnet().prefix()) {
                tracing::warn!(error = %e, "removing the old gateway address from the bridge");
            }
        }
        st.pool4 = Pool::new(IpNetwork::V4(net));
        st.subnet_source = "kubelet";
        let index = self.ensure_bridge(&st)?;
        st.bridge_index = index;
        let script = self.table(&st).full_script(&Self::all_published(&st));
        self.nft_apply(&script)?;
        tracing::info!(cidr = %net, "pod subnet from kubelet's pod CIDR");
        Ok(())
    }

    fn info(&self) -> serde_json::Value {
        let Ok(st) = self.state.lock() else {
            return serde_json::json!({ "plugin": "bridge", "error": "lock poisoned" });
        };
        let mut allocated: Vec<String> =
            st.pool4.allocated().iter().map(|a| a.to_string()).collect();
        if let Some(p) = &st.pool6 {
            allocated.extend(p.allocated().iter().map(|a| a.to_string()));
        }
        serde_json::json!({
            "plugin": "bridge",
            "bridge": self.cfg.bridge,
            "subnet": st.pool4.subnet().to_string(),
            "subnetSource": st.subnet_source,
            "subnet6": st.pool6.as_ref().map(|p| p.subnet().to_string()),
            "mtu": self.cfg.mtu,
            "nftTable": self.cfg.nft_table,
            "allocated": allocated,
            "hostPorts": st.ports.len(),
            "ready": st.not_ready.is_none(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_ifnamsiz() {
        let n = host_veth_name(&"ab".repeat(32));
        assert_eq!(n, "bthabababababab");
        assert!(n.len() <= 15);
    }

    #[test]
    fn ports_clash_on_the_same_protocol_and_port_and_overlapping_addresses() {
        let k = |proto, port, ip: Option<&str>| PortKey {
            protocol: proto,
            host_port: port,
            host_ip: ip.map(|i| i.parse().unwrap()),
        };
        assert!(k(Protocol::Tcp, 80, None).clashes(&k(Protocol::Tcp, 80, None)));
        assert!(k(Protocol::Tcp, 80, None).clashes(&k(Protocol::Tcp, 80, Some("127.0.0.1"))));
        assert!(k(Protocol::Tcp, 80, Some("10.0.0.1")).clashes(&k(Protocol::Tcp, 80, None)));
        assert!(!k(Protocol::Tcp, 80, None).clashes(&k(Protocol::Udp, 80, None)));
        assert!(!k(Protocol::Tcp, 80, None).clashes(&k(Protocol::Tcp, 81, None)));
        assert!(!k(Protocol::Tcp, 80, Some("10.0.0.1")).clashes(&k(
            Protocol::Tcp,
            80,
            Some("10.0.0.2")
        )));
    }

    #[test]
    fn overlap_is_symmetric() {
        let n = |s: &str| s.parse::<IpNetwork>().unwrap();
        assert!(overlaps(n("10.89.0.0/16"), n("10.89.3.0/24")));
        assert!(overlaps(n("10.89.3.0/24"), n("10.89.0.0/16")));
        assert!(overlaps(n("10.0.0.0/8"), n("10.89.0.0/16")));
        assert!(!overlaps(n("10.89.0.0/16"), n("10.90.0.0/16")));
        assert!(!overlaps(n("10.89.0.0/16"), n("fd89::/64")));
    }
}
