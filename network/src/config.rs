//! The `[network]` table of berthd's config.

use std::path::PathBuf;
use std::time::Duration;

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    Bridge,
    Cni,
    None,
}

/// The pod subnet used when neither the config nor kubelet gives one.
pub const DEFAULT_SUBNET: &str = "10.89.0.0/16";

#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    pub plugin: PluginKind,
    /// The node bridge of the built-in plugin.
    pub bridge: String,
    /// IPv4 pod subnet. None: kubelet's pod CIDR (UpdateRuntimeConfig) if it
    /// sends one before the first pod, else [`DEFAULT_SUBNET`].
    pub subnet: Option<Ipv4Network>,
    /// The bridge's address in `subnet`, the pods' default gateway. None:
    /// the subnet's first host address.
    pub gateway: Option<std::net::Ipv4Addr>,
    /// IPv6 pod subnet for dual-stack pods.
    pub subnet6: Option<Ipv6Network>,
    /// The bridge's address in `subnet6`. None: its first host address.
    pub gateway6: Option<std::net::Ipv6Addr>,
    pub mtu: u32,
    /// berth's nftables table (family inet).
    pub nft_table: String,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dirs: Vec<PathBuf>,
    /// A CNI plugin that runs longer than this is killed and the call fails.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub cni_timeout: Duration,
}

/// A duration as the config file writes it ("30s", "5m").
pub fn write_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "{s:?} is not a duration like \"30s\" or \"5m\": {e}"
        ))
    })
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            plugin: PluginKind::Bridge,
            bridge: "berth0".into(),
            subnet: None,
            gateway: None,
            subnet6: None,
            gateway6: None,
            mtu: 1500,
            nft_table: "berth".into(),
            cni_conf_dir: "/etc/cni/net.d".into(),
            cni_bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            cni_timeout: Duration::from_secs(60),
        }
    }
}

impl NetworkConfig {
    /// Checks that need no kernel. The message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.bridge.is_empty()
            || self.bridge.len() > 15
            || !self
                .bridge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(format!(
                "network.bridge: {:?} is not an interface name (1-15 of [A-Za-z0-9._-])",
                self.bridge
            ));
        }
        if !(576..=65535).contains(&self.mtu) {
            return Err(format!("network.mtu: {} is not in 576..=65535", self.mtu));
        }
        if self.nft_table.is_empty()
            || self.nft_table.len() > 64
            || !self
                .nft_table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "network.nft_table: {:?} is not a table name (1-64 of [A-Za-z0-9_-])",
                self.nft_table
            ));
        }
        if let Some(s) = self.subnet {
            check_subnet4(s).map_err(|e| format!("network.subnet: {e}"))?;
        }
        if let Some(s) = self.subnet6 {
            if s.prefix() > 120 || s.prefix() < 64 {
                return Err(format!(
                    "network.subnet6: {s} must be a /64 to /120 (SLAAC-free pods still want room)"
                ));
            }
            if s.ip().is_loopback() || s.ip().is_multicast() || s.ip().is_unspecified() {
                return Err(format!("network.subnet6: {s} is not a unicast subnet"));
            }
        }
        match (self.gateway, self.subnet) {
            (Some(g), None) => {
                return Err(format!(
                    "network.gateway {g} needs network.subnet (kubelet's pod CIDR takes its first address)"
                ));
            }
            (Some(g), Some(s)) => {
                let host = s.contains(g) && g != s.network() && g != s.broadcast();
                if !host {
                    return Err(format!("network.gateway {g} is not a host address of {s}"));
                }
            }
            _ => {}
        }
        match (self.gateway6, self.subnet6) {
            (Some(g), None) => {
                return Err(format!("network.gateway6 {g} needs network.subnet6"));
            }
            (Some(g), Some(s)) if !s.contains(g) || g == s.network() => {
                return Err(format!("network.gateway6 {g} is not a host address of {s}"));
            }
            _ => {}
        }
        if self.cni_timeout.is_zero() {
            return Err("network.cni_timeout must be more than 0".into());
        }
        Ok(())
    }
}

/// A usable IPv4 pod subnet: room for a gateway and pods, unicast, and
/// written as its network address.
pub fn check_subnet4(s: Ipv4Network) -> Result<(), String> {
    if s.prefix() > 30 || s.prefix() < 8 {
        return Err(format!("{s} must be a /8 to /30"));
    }
    if s.network() != s.ip() {
        return Err(format!(
            "{s} is not a network address (did you mean {}/{}?)",
            s.network(),
            s.prefix()
        ));
    }
    let ip = s.ip();
    if ip.is_loopback()
        || ip.is_multicast()
        || ip.is_unspecified()
        || ip.is_link_local()
        || ip.is_broadcast()
    {
        return Err(format!("{s} is not a unicast subnet"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<NetworkConfig, String> {
        let c: NetworkConfig = toml::from_str(t).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = parse("").unwrap();
        assert_eq!(c.plugin, PluginKind::Bridge);
        assert_eq!(c.bridge, "berth0");
        assert_eq!(c.subnet, None);
        assert_eq!(c.mtu, 1500);
        assert_eq!(c.nft_table, "berth");
        assert_eq!(c.cni_timeout, Duration::from_secs(60));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (t, key) in [
            ("bridge = \"a-name-far-too-long\"", "network.bridge"),
            ("bridge = \"br/0\"", "network.bridge"),
            ("mtu = 100", "network.mtu"),
            ("subnet = \"10.89.0.1/16\"", "network.subnet"),
            ("subnet = \"127.0.0.0/8\"", "network.subnet"),
            ("subnet = \"10.0.0.0/31\"", "network.subnet"),
            ("subnet6 = \"fd89::/32\"", "network.subnet6"),
            ("nft_table = \"a b\"", "network.nft_table"),
            ("gateway = \"10.89.0.1\"", "network.gateway"),
            (
                "subnet = \"10.89.0.0/24\"\ngateway = \"10.89.0.255\"",
                "network.gateway",
            ),
            (
                "subnet = \"10.89.0.0/24\"\ngateway = \"10.90.0.1\"",
                "network.gateway",
            ),
            (
                "subnet6 = \"fd89::/64\"\ngateway6 = \"fd90::1\"",
                "network.gateway6",
            ),
        ] {
            let e = parse(t).unwrap_err();
            assert!(e.contains(key), "{t}: {e}");
        }
        assert!(parse("plugin = \"calico\"").unwrap_err().contains("calico"));
        assert!(parse("subnet = \"10.89.0.0/33\"").is_err());
        assert!(
            parse("cni_timeout = \"soon\"")
                .unwrap_err()
                .contains("soon")
        );
        assert!(parse("bogus = 1").unwrap_err().contains("bogus"));
    }

    #[test]
    fn good_values_parse() {
        let c = parse(
            "plugin = \"cni\"\nsubnet = \"10.90.0.0/24\"\nsubnet6 = \"fd89::/64\"\ncni_timeout = \"5s\"",
        )
        .unwrap();
        assert_eq!(c.plugin, PluginKind::Cni);
        assert_eq!(c.subnet.unwrap().to_string(), "10.90.0.0/24");
        assert_eq!(c.subnet6.unwrap().prefix(), 64);
        assert_eq!(c.cni_timeout, Duration::from_secs(5));
    }
}
