//! The files every container of a pod sees: /etc/hostname, /etc/hosts and
//! /etc/resolv.conf, written once per pod and bind-mounted into each
//! container (a CRI mount at the same path wins).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::model::DnsConfig;

pub const HOSTNAME: &str = "hostname";
pub const HOSTS: &str = "hosts";
pub const RESOLV_CONF: &str = "resolv.conf";

/// Paths of a pod's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFiles {
    pub hostname: PathBuf,
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
}

impl PodFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            hostname: dir.join(HOSTNAME),
            hosts: dir.join(HOSTS),
            resolv_conf: dir.join(RESOLV_CONF),
        }
    }
}

/// What containerd writes for a pod with its own network namespace.
const DEFAULT_HOSTS: &str = "127.0.0.1\tlocalhost\n\
::1\tlocalhost ip6-localhost ip6-loopback\n\
fe00::0\tip6-localnet\n\
ff00::0\tip6-mcastprefix\n\
ff02::1\tip6-allnodes\n\
ff02::2\tip6-allrouters\n";

/// resolv.conf from the pod's DNSConfig (kubelet's ClusterFirst and
/// friends), or None when the node's should be copied.
pub fn resolv_conf(dns: Option<&DnsConfig>) -> Option<String> {
    let dns = dns?;
    if dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty() {
        return None;
    }
    let mut s = String::new();
    if !dns.searches.is_empty() {
        s.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for n in &dns.servers {
        s.push_str(&format!("nameserver {n}\n"));
    }
    if !dns.options.is_empty() {
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Some(s)
}

fn write_file(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(content)?;
    Ok(())
}

/// Write the pod's files into `dir`. A host-network pod gets the node's
/// hosts and resolv.conf (and hostname), as containerd does.
pub fn write(
    dir: &Path,
    hostname: &str,
    dns: Option<&DnsConfig>,
    host_network: bool,
) -> std::io::Result<PodFiles> {
    let files = PodFiles::in_dir(dir);
    let hostname = if hostname.is_empty() || host_network {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        hostname.to_string()
    };
    write_file(&files.hostname, format!("{hostname}\n").as_bytes())?;
    let hosts = if host_network {
        fs::read("/etc/hosts").unwrap_or_else(|_| DEFAULT_HOSTS.as_bytes().to_vec())
    } else {
        DEFAULT_HOSTS.as_bytes().to_vec()
    };
    write_file(&files.hosts, &hosts)?;
    let resolv = match (host_network, resolv_conf(dns)) {
        (false, Some(s)) => s.into_bytes(),
        _ => fs::read("/etc/resolv.conf").unwrap_or_default(),
    };
    write_file(&files.resolv_conf, &resolv)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_config_becomes_resolv_conf() {
        let dns = DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&dns)).unwrap(),
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        assert_eq!(resolv_conf(Some(&DnsConfig::default())), None);
        assert_eq!(resolv_conf(None), None);
    }

    #[test]
    fn pod_files_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "web-0", None, false).unwrap();
        assert_eq!(fs::read_to_string(&f.hostname).unwrap(), "web-0\n");
        assert!(
            fs::read_to_string(&f.hosts)
                .unwrap()
                .starts_with("127.0.0.1\tlocalhost\n")
        );
        assert_eq!(
            fs::read(&f.resolv_conf).unwrap(),
            fs::read("/etc/resolv.conf").unwrap_or_default(),
            "no DNSConfig: the node's resolv.conf"
        );
    }
}
