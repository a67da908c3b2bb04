//! berth's nftables table (family inet): outbound masquerade and hostPort
//! DNAT.
//!
//! The rules are fixed at start; a pod's hostPorts are elements of four
//! maps (any host address or one, IPv4 or IPv6), so that publishing or
//! withdrawing a port touches no rule. Every change is one batch given to
//! `nft -f -`, which the kernel applies atomically: the whole table at start
//! (deleted and rebuilt from the pods berthd knows, so that rules of pods a
//! crash forgot are gone), and a pod's elements when its network comes and
//! goes. Pods without hostPorts never run nft.
//!
//! Why `nft` and not netlink from Rust: the rules use maps with
//! concatenated keys and NAT to concatenated address . port data, which the
//! Rust nftables crates (rustables, nftnl) do not express without
//! hand-assembling expression registers; `nft` is in every distribution's
//! nftables package, its batch is as atomic as a netlink batch, and the
//! table it makes reads back with `nft list table inet berth`.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::{Error, PortMapping, Result};

/// One published port of one pod: the element it makes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Published {
    pub port: PortMapping,
    /// The pod's address the port leads to (same family as the map).
    pub pod_ip: IpAddr,
}

impl Published {
    fn map(&self) -> &'static str {
        match (self.pod_ip.is_ipv4(), self.port.host_ip.is_some()) {
            (true, false) => "hostports4",
            (true, true) => "hostip_ports4",
            (false, false) => "hostports6",
            (false, true) => "hostip_ports6",
        }
    }

    fn key(&self) -> String {
        let p = &self.port;
        match p.host_ip {
            Some(h) => format!("{h} . {} . {}", p.protocol.as_str(), p.host_port),
            None => format!("{} . {}", p.protocol.as_str(), p.host_port),
        }
    }

    fn element(&self) -> String {
        format!(
            "{} : {} . {}",
            self.key(),
            self.pod_ip,
            self.port.container_port
        )
    }
}

#[derive(Clone, Debug)]
pub struct Table {
    pub name: String,
    pub bridge: String,
    pub subnet4: Option<Ipv4Network>,
    pub subnet6: Option<Ipv6Network>,
}

impl Table {
    /// The whole table, replacing what is there, with `ports` published.
    pub fn full_script(&self, ports: &[Published]) -> String {
        let t = &self.name;
        let br = &self.bridge;
        let mut s = format!("table inet {t} {{}}\ndelete table inet {t}\ntable inet {t} {{\n");
        for (map, key, data) in [
            ("hostports4", "inet_proto . inet_service", "ipv4_addr"),
            (
                "hostip_ports4",
                "ipv4_addr . inet_proto . inet_service",
                "ipv4_addr",
            ),
            ("hostports6", "inet_proto . inet_service", "ipv6_addr"),
            (
                "hostip_ports6",
                "ipv6_addr . inet_proto . inet_service",
                "ipv6_addr",
            ),
        ] {
            s += &format!("  map {map} {{\n    type {key} : {data} . inet_service\n");
            let elems: Vec<String> = ports
                .iter()
                .filter(|p| p.map() == map)
                .map(Published::element)
                .collect();
            if !elems.is_empty() {
                s += &format!("    elements = {{ {} }}\n", elems.join(", "));
            }
            s += "  }\n";
        }
        s += "  chain hostports {\n";
        s += "    dnat ip to ip daddr . meta l4proto . th dport map @hostip_ports4\n";
        s += "    dnat ip to meta l4proto . th dport map @hostports4\n";
        s += "    dnat ip6 to ip6 daddr . meta l4proto . th dport map @hostip_ports6\n";
        s += "    dnat ip6 to meta l4proto . th dport map @hostports6\n";
        s += "  }\n";
        // Connections to an address of the node, from outside (prerouting)
        // and from the node itself, 127.0.0.1 included (output).
        s += "  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    fib daddr type local jump hostports\n  }\n";
        s += "  chain output {\n    type nat hook output priority -100; policy accept;\n    fib daddr type local jump hostports\n  }\n";
        s += "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n";
        if let Some(n) = self.subnet4 {
            // Pods reaching anything outside their subnet.
            s += &format!("    ip saddr {n} ip daddr != {n} masquerade\n");
            // A pod reaching a hostPort that leads back into the bridge
            // (its own: hairpin, or another pod's): the reply must come
            // back through the node to be un-DNATed.
            s += &format!("    ct status dnat ip saddr {n} oifname \"{br}\" masquerade\n");
            // The node's own 127.0.0.1:hostPort (route_localnet is on for
            // the bridge).
            s += &format!("    ip saddr 127.0.0.0/8 oifname \"{br}\" masquerade\n");
        }
        if let Some(n) = self.subnet6 {
            s += &format!("    ip6 saddr {n} ip6 daddr != {n} masquerade\n");
            s += &format!("    ct status dnat ip6 saddr {n} oifname \"{br}\" masquerade\n");
        }
        s += "  }\n}\n";
        s
    }

    pub fn add_script(&self, ports: &[Published]) -> String {
        self.elements_script("add", ports, true)
    }

    pub fn delete_script(&self, ports: &[Published]) -> String {
        self.elements_script("delete", ports, false)
    }

    fn elements_script(&self, verb: &str, ports: &[Published], with_data: bool) -> String {
        let mut s = String::new();
        for p in ports {
            let what = if with_data { p.element() } else { p.key() };
            s += &format!(
                "{verb} element inet {} {} {{ {what} }}\n",
                self.name,
                p.map()
            );
        }
        s
    }

    pub fn delete_table_script(&self) -> String {
        format!("table inet {0} {{}}\ndelete table inet {0}\n", self.name)
    }
}

/// The nft binary: PATH, then the usual sbin dirs (berthd may run with a
/// PATH without them).
pub fn find_nft() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join("nft"))
        .find(|p| p.is_file())
}

/// Run one batch. nft applies a file as one transaction.
pub fn apply(nft: &std::path::Path, script: &str) -> Result<()> {
    if script.is_empty() {
        return Ok(());
    }
    let mut child = Command::new(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::failed(format!("running {}", nft.display()), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| Error::failed("writing rules to nft", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::failed("waiting for nft", e))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Failed(format!(
            "nft refused berth's rules ({}): {}",
            out.status,
            err.trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Protocol;

    fn table() -> Table {
        Table {
            name: "berth".into(),
            bridge: "berth0".into(),
            subnet4: Some("10.89.0.0/16".parse().unwrap()),
            subnet6: Some("fd89::/64".parse().unwrap()),
        }
    }

    fn published(proto: Protocol, host_ip: Option<&str>, pod_ip: &str) -> Published {
        Published {
            port: PortMapping {
                protocol: proto,
                container_port: 80,
                host_port: 8080,
                host_ip: host_ip.map(|h| h.parse().unwrap()),
            },
            pod_ip: pod_ip.parse().unwrap(),
        }
    }

    #[test]
    fn elements_go_to_the_map_of_their_family_and_host_address() {
        let t = table();
        let s = t.add_script(&[
            published(Protocol::Tcp, None, "10.89.0.2"),
            published(Protocol::Udp, Some("127.0.0.1"), "10.89.0.2"),
            published(Protocol::Sctp, None, "fd89::2"),
            published(Protocol::Tcp, Some("fd00::2"), "fd89::2"),
        ]);
        assert_eq!(
            s,
            "add element inet berth hostports4 { tcp . 8080 : 10.89.0.2 . 80 }\n\
             add element inet berth hostip_ports4 { 127.0.0.1 . udp . 8080 : 10.89.0.2 . 80 }\n\
             add element inet berth hostports6 { sctp . 8080 : fd89::2 . 80 }\n\
             add element inet berth hostip_ports6 { fd00::2 . tcp . 8080 : fd89::2 . 80 }\n"
        );
        let d = t.delete_script(&[published(Protocol::Tcp, None, "10.89.0.2")]);
        assert_eq!(d, "delete element inet berth hostports4 { tcp . 8080 }\n");
    }

    #[test]
    fn the_full_table_replaces_the_old_one_and_masquerades_both_families() {
        let s = table().full_script(&[published(Protocol::Tcp, None, "10.89.0.2")]);
        assert!(s.starts_with("table inet berth {}\ndelete table inet berth\n"));
        assert!(s.contains("elements = { tcp . 8080 : 10.89.0.2 . 80 }"));
        assert!(s.contains("ip saddr 10.89.0.0/16 ip daddr != 10.89.0.0/16 masquerade"));
        assert!(s.contains("ip6 saddr fd89::/64 ip6 daddr != fd89::/64 masquerade"));
        assert!(s.contains("ip saddr 127.0.0.0/8 oifname \"berth0\" masquerade"));
        let v4only = Table {
            subnet6: None,
            ..table()
        }
        .full_script(&[]);
        assert!(!v4only.contains("ip6 saddr"));
        assert!(!v4only.contains("elements"));
    }
}
