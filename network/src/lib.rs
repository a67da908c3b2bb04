//! berth-network: a pod's network.
//!
//! Two plugins behind one trait, [`Plugin`]:
//! * [`bridge::BridgePlugin`], the default: a veth pair per pod on a node
//!   bridge, addresses from an in-process IPAM whose allocations live in the
//!   pod's record (so in berthd's database, in the same transaction), NAT and
//!   hostPort in berth's own nftables table. All links and addresses through
//!   netlink.
//! * [`cni::CniPlugin`]: the standard CNI plugins (bridge, host-local,
//!   portmap, Calico, ...) run per the CNI spec, for real clusters.
//!
//! The runtime calls a plugin from a blocking thread with the path of the
//! pod's pinned network namespace; the plugin returns an [`Attachment`],
//! which the runtime stores with the pod and gives back on teardown and on
//! recovery after a restart. This crate depends on no other berth crate.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod bridge;
pub mod cni;
pub mod config;
pub mod ipam;
pub mod netlink;
pub mod nft;

pub use config::{NetworkConfig, PluginKind};

/// Errors of the network plugins. The runtime maps them to gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request cannot be served as it is (bad port mapping, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// A hostPort already held by another pod.
    #[error("{0}")]
    AlreadyExists(String),
    /// No address left in the pod subnet.
    #[error("{0}")]
    Exhausted(String),
    /// The plugin is not ready (bridge missing, CNI config missing).
    #[error("{0}")]
    NotReady(String),
    /// The kernel, a CNI plugin or nft failed.
    #[error("{0}")]
    Failed(String),
}

impl Error {
    pub fn failed(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Self {
        Error::Failed(format!("{what}: {e}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A port published on the node (`PortMapping`), already validated.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    pub protocol: Protocol,
    pub container_port: u16,
    pub host_port: u16,
    /// None: every address of the node.
    pub host_ip: Option<IpAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// What a plugin needs to know about a pod.
#[derive(Clone, Debug)]
pub struct PodRequest {
    /// The sandbox id.
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// The pinned network namespace (bind-mounted nsfs file).
    pub netns: PathBuf,
    pub port_mappings: Vec<PortMapping>,
    /// The pod's annotations (CNI bandwidth capability reads the
    /// kubernetes.io/{ingress,egress}-bandwidth ones).
    pub annotations: std::collections::BTreeMap<String, String>,
    /// The pod's cgroup (cgroupfs path), for CNI's cgroupPath capability.
    pub cgroup_parent: String,
}

/// What a pod got from its plugin; stored with the pod, in berthd's database.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Attachment {
    /// The plugin that made it ("bridge" or "cni").
    pub plugin: String,
    /// The pod's addresses; the first is its primary IP (IPv4 first in a
    /// dual-stack pod, as kubelet expects).
    pub ips: Vec<IpAddr>,
    /// The host end of the pod's veth (bridge plugin).
    pub host_veth: Option<String>,
    /// The published ports, as applied.
    pub port_mappings: Vec<PortMapping>,
    /// `namespace/name` of the pod, for messages (a hostPort clash names
    /// its holder, also after a restart).
    pub pod: String,
}

impl Attachment {
    pub fn pod_ip(&self) -> Option<IpAddr> {
        self.ips.first().copied()
    }
}

/// NetworkReady in the CRI Status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady { reason: String, message: String },
}

/// A pod network plugin. Every method runs on a blocking thread and may take
/// milliseconds; none may be called from an async task directly.
pub trait Plugin: Send + Sync {
    /// "bridge", "cni" or "none".
    fn name(&self) -> &'static str;

    fn readiness(&self) -> Readiness;

    /// Give the pod in `pod.netns` its network. On error nothing of it is
    /// left behind.
    fn setup(&self, pod: &PodRequest) -> Result<Attachment>;

    /// Take the pod's network down: free its ports, remove its rules.
    /// Idempotent; the netns may already be gone. Its addresses stay taken
    /// until [`Plugin::released`].
    fn teardown(&self, pod: &PodRequest, att: &Attachment) -> Result<()>;

    /// The pod's record no longer holds `att` (committed): its addresses
    /// are free from now on. Never before, so that a crash between teardown
    /// and the commit cannot leave one address to two pods.
    fn released(&self, _pod_id: &str, _att: &Attachment) {}

    /// After berthd starts: `live` are the pods that still hold a network
    /// (id and attachment). Everything else the plugin finds of its own (veths,
    /// rules, cached CNI results) belongs to no pod and is removed.
    fn recover(&self, live: &[(String, Attachment)]) -> Result<()>;

    /// kubelet's pod CIDR (UpdateRuntimeConfig). Used when none is configured.
    fn set_pod_cidr(&self, _cidr: &str) -> Result<()> {
        Ok(())
    }

    /// For Status verbose info.
    fn info(&self) -> serde_json::Value;
}

/// The plugin of `network.plugin = "none"`: pods get loopback only.
pub struct NoNetwork;

impl Plugin for NoNetwork {
    fn name(&self) -> &'static str {
        "none"
    }
    fn readiness(&self) -> Readiness {
        Readiness::Ready
    }
    fn setup(&self, _pod: &PodRequest) -> Result<Attachment> {
        Ok(Attachment {
            plugin: "none".into(),
            ..Default::default()
        })
    }
    fn teardown(&self, _pod: &PodRequest, _att: &Attachment) -> Result<()> {
        Ok(())
    }
    fn recover(&self, _live: &[(String, Attachment)]) -> Result<()> {
        Ok(())
    }
    fn info(&self) -> serde_json::Value {
        serde_json::json!({ "plugin": "none" })
    }
}

/// Open the configured plugin. `root` is berthd's root dir (CNI's result
/// cache lives under it).
pub fn open(cfg: &NetworkConfig, root: &Path) -> Result<std::sync::Arc<dyn Plugin>> {
    Ok(match cfg.plugin {
        PluginKind::None => std::sync::Arc::new(NoNetwork),
        PluginKind::Bridge => std::sync::Arc::new(bridge::BridgePlugin::open(cfg, root)?),
        PluginKind::Cni => std::sync::Arc::new(cni::CniPlugin::open(cfg, root)?),
    })
}
