//! The CRI pod and container configs in domain terms.
//!
//! These mirror `PodSandboxConfig` and `ContainerConfig` of the CRI
//! (`cri-api/proto/api.proto`, the vendored cri-api v1.36; the field
//! comments there are the spec) so that the gRPC types stay in cri-server.
//! berthd persists them as JSON: every struct takes `#[serde(default)]` so
//! that a record written before a field existed still loads.
//!
//! [`validate_sandbox_config`] and [`validate_container_config`] reject what
//! is malformed on its face; every error is an InvalidArgument for the CRI
//! caller. Rules that need more than one config (a privileged container in a
//! pod that is not, sysctls the pod does not own) are checked where the spec
//! is built ([`crate::spec`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

/// A config the CRI caller must fix. cri-server maps every variant to
/// `InvalidArgument`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("{field} is required")]
    Missing { field: String },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{field}: {what} is not supported by berth")]
    Unsupported { field: String, what: String },
    /// A number that is not one of a CRI enum's values.
    #[error("{value} is not a valid {kind}")]
    UnknownEnum { kind: &'static str, value: i32 },
}

fn missing(field: impl Into<String>) -> ValidationError {
    ValidationError::Missing {
        field: field.into(),
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ValidationError {
    ValidationError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

fn unsupported(field: impl Into<String>, what: impl Into<String>) -> ValidationError {
    ValidationError::Unsupported {
        field: field.into(),
        what: what.into(),
    }
}

/// CRI enums arrive as `i32` from prost; these turn them into ours, with an
/// error for a value the CRI does not define.
macro_rules! cri_enum {
    ($ty:ident, $kind:literal, { $($num:literal => $variant:ident),+ $(,)? }) => {
        impl TryFrom<i32> for $ty {
            type Error = ValidationError;
            fn try_from(value: i32) -> Result<Self, ValidationError> {
                match value {
                    $($num => Ok($ty::$variant),)+
                    _ => Err(ValidationError::UnknownEnum { kind: $kind, value }),
                }
            }
        }
        impl From<$ty> for i32 {
            fn from(v: $ty) -> i32 {
                match v {
                    $($ty::$variant => $num,)+
                }
            }
        }
    };
}

// ---------------------------------------------------------------------------
// Shared pieces

/// `NamespaceMode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NamespaceMode {
    /// Common to all containers of the pod (the CRI default).
    #[default]
    Pod,
    /// The container's own.
    Container,
    /// The node's.
    Node,
    /// That of the container named by `target_id`.
    Target,
}
cri_enum!(NamespaceMode, "NamespaceMode", { 0 => Pod, 1 => Container, 2 => Node, 3 => Target });

/// `IDMapping`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IdMapping {
    pub host_id: u32,
    pub container_id: u32,
    pub length: u32,
}

/// `UserNamespace`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UserNamespace {
    pub mode: NamespaceMode,
    pub uids: Vec<IdMapping>,
    pub gids: Vec<IdMapping>,
}

/// `NamespaceOption`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NamespaceOptions {
    pub network: NamespaceMode,
    pub pid: NamespaceMode,
    pub ipc: NamespaceMode,
    /// The container whose namespace a `Target` mode joins.
    pub target_id: String,
    /// None: the node's user namespace (kubelet sends NODE or nothing for
    /// `hostUsers: true`, POD with the mappings it chose for `false`).
    pub userns_options: Option<UserNamespace>,
}

/// `SecurityProfile.ProfileType`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProfileType {
    #[default]
    RuntimeDefault,
    Unconfined,
    Localhost,
}
cri_enum!(ProfileType, "SecurityProfile.ProfileType", { 0 => RuntimeDefault, 1 => Unconfined, 2 => Localhost });

/// `SecurityProfile` (seccomp or AppArmor).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecurityProfile {
    pub profile_type: ProfileType,
    /// Only with `Localhost`: for seccomp an absolute path on the node, for
    /// AppArmor a profile name.
    pub localhost_ref: String,
}

/// `SupplementalGroupsPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SupplementalGroupsPolicy {
    /// The image's groups of the user (from /etc/group) plus the given ones.
    #[default]
    Merge,
    /// Only the given ones.
    Strict,
}
cri_enum!(SupplementalGroupsPolicy, "SupplementalGroupsPolicy", { 0 => Merge, 1 => Strict });

/// `HugepageLimit`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HugepageLimit {
    /// `<size><unit>B`, base 1024: `2MB`, `1GB`.
    pub page_size: String,
    pub limit: u64,
}

/// `LinuxContainerResources`. Zero (or empty) means not specified.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinuxResources {
    pub cpu_period: i64,
    /// -1: no limit.
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit_in_bytes: i64,
    pub oom_score_adj: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    pub hugepage_limits: Vec<HugepageLimit>,
    /// cgroup v2 files written as they are (`memory.high` = `…`).
    pub unified: BTreeMap<String, String>,
    /// Memory plus swap; -1: unlimited swap.
    pub memory_swap_limit_in_bytes: i64,
}

// ---------------------------------------------------------------------------
// Pod sandbox

/// `PodSandboxMetadata`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SandboxMetadata {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
}

/// `DNSConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// `Protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}
cri_enum!(Protocol, "Protocol", { 0 => Tcp, 1 => Udp, 2 => Sctp });

/// `PortMapping`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PortMapping {
    pub protocol: Protocol,
    pub container_port: i32,
    /// 0: not published on the node.
    pub host_port: i32,
    /// Empty: every address of the node.
    pub host_ip: String,
}

/// `LinuxSandboxSecurityContext`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SandboxSecurityContext {
    pub namespace_options: NamespaceOptions,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub readonly_rootfs: bool,
    pub supplemental_groups: Vec<i64>,
    pub supplemental_groups_policy: SupplementalGroupsPolicy,
    /// The pod may run privileged containers.
    pub privileged: bool,
    pub seccomp: Option<SecurityProfile>,
    pub apparmor: Option<SecurityProfile>,
}

/// `LinuxPodSandboxConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinuxSandboxConfig {
    /// cgroupfs style, e.g. `/kubepods/burstable/pod<uid>`.
    pub cgroup_parent: String,
    pub security_context: SandboxSecurityContext,
    pub sysctls: BTreeMap<String, String>,
    pub overhead: Option<LinuxResources>,
    pub resources: Option<LinuxResources>,
}

/// `PodSandboxConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SandboxConfig {
    pub metadata: Option<SandboxMetadata>,
    /// May be empty only with the node's network namespace (then the node's
    /// hostname is used).
    pub hostname: String,
    pub log_directory: String,
    /// None: the node's resolv.conf is copied.
    pub dns_config: Option<DnsConfig>,
    pub port_mappings: Vec<PortMapping>,
    pub labels: BTreeMap<String, String>,
    /// Returned as given; never interpreted by berth.
    pub annotations: BTreeMap<String, String>,
    pub linux: LinuxSandboxConfig,
}

impl SandboxConfig {
    /// The metadata, or an empty one (a validated config always has it).
    pub fn metadata(&self) -> SandboxMetadata {
        self.metadata.clone().unwrap_or_default()
    }

    pub fn namespace_options(&self) -> &NamespaceOptions {
        &self.linux.security_context.namespace_options
    }
}

// ---------------------------------------------------------------------------
// Container

/// `ContainerMetadata`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerMetadata {
    pub name: String,
    pub attempt: u32,
}

/// `ImageSpec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageSpec {
    /// Image id or reference, as kubelet resolved it.
    pub image: String,
    pub annotations: BTreeMap<String, String>,
    /// What the user wrote (`busybox:1.36`), when known.
    pub user_specified_image: String,
}

/// `KeyValue`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// `MountPropagation`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MountPropagation {
    /// `rprivate`.
    #[default]
    Private,
    /// `rslave`.
    HostToContainer,
    /// `rshared`.
    Bidirectional,
}
cri_enum!(MountPropagation, "MountPropagation", { 0 => Private, 1 => HostToContainer, 2 => Bidirectional });

/// `Mount`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Mount {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    pub selinux_relabel: bool,
    pub propagation: MountPropagation,
    /// Needs `readonly` and `Private` propagation.
    pub recursive_read_only: bool,
    /// An image volume source (KEP-4639): the image (kubelet gives the
    /// id PullImage answered), mounted read-only and noexec; host_path
    /// stays empty.
    pub image: String,
    /// The directory or file of that image to mount instead of its root.
    pub image_sub_path: String,
    /// The image id `image` resolved to, filled by CreateContainer (for
    /// ContainerStatus.mounts[].image.image_ref).
    pub image_ref: String,
    /// An idmapped bind (KEP-127): kubelet gives every mount of a pod with
    /// a user namespace that pod's mappings. Empty: a plain bind.
    pub uid_mappings: Vec<IdMapping>,
    pub gid_mappings: Vec<IdMapping>,
}

/// `Device`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Device {
    pub container_path: String,
    pub host_path: String,
    /// Some of `rwm`; empty means `rwm`.
    pub permissions: String,
}

/// `Capability`: names without the `CAP_` prefix, or `ALL`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    pub add_ambient_capabilities: Vec<String>,
}

/// `LinuxContainerSecurityContext`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerSecurityContext {
    pub capabilities: Capabilities,
    pub privileged: bool,
    pub namespace_options: NamespaceOptions,
    pub run_as_user: Option<i64>,
    /// Only with `run_as_user` or `run_as_username`.
    pub run_as_group: Option<i64>,
    /// Resolved in the image's /etc/passwd; wins over `run_as_user`.
    pub run_as_username: String,
    pub readonly_rootfs: bool,
    pub supplemental_groups: Vec<i64>,
    pub supplemental_groups_policy: SupplementalGroupsPolicy,
    pub no_new_privs: bool,
    /// Empty: the runtime's defaults (proto3 cannot tell "empty" from "unset").
    pub masked_paths: Vec<String>,
    /// Empty: the runtime's defaults.
    pub readonly_paths: Vec<String>,
    pub seccomp: Option<SecurityProfile>,
    pub apparmor: Option<SecurityProfile>,
}

/// `LinuxContainerConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinuxContainerConfig {
    pub resources: Option<LinuxResources>,
    pub security_context: ContainerSecurityContext,
}

/// `ContainerConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerConfig {
    pub metadata: Option<ContainerMetadata>,
    pub image: ImageSpec,
    /// Replaces the image's Entrypoint (and drops its Cmd).
    pub command: Vec<String>,
    /// Replaces the image's Cmd.
    pub args: Vec<String>,
    pub working_dir: String,
    /// In order; a later key wins.
    pub envs: Vec<KeyValue>,
    pub mounts: Vec<Mount>,
    pub devices: Vec<Device>,
    pub labels: BTreeMap<String, String>,
    /// Returned as given; never interpreted by berth.
    pub annotations: BTreeMap<String, String>,
    /// Relative to the pod's `log_directory`.
    pub log_path: String,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    pub linux: LinuxContainerConfig,
    /// ContainerConfig.stop_signal (cri-api 1.33+, KEP-4960), a signal
    /// number; None: the image's StopSignal, else SIGTERM.
    pub stop_signal: Option<i32>,
}

impl ContainerConfig {
    /// The metadata, or an empty one (a validated config always has it).
    pub fn metadata(&self) -> ContainerMetadata {
        self.metadata.clone().unwrap_or_default()
    }

    pub fn security_context(&self) -> &ContainerSecurityContext {
        &self.linux.security_context
    }
}

// ---------------------------------------------------------------------------
// Validation

/// Longest name berth accepts: a DNS subdomain.
const MAX_NAME: usize = 253;

/// Check a pod sandbox config before anything is made for it.
pub fn validate_sandbox_config(c: &SandboxConfig) -> Result<(), ValidationError> {
    let Some(m) = &c.metadata else {
        return Err(missing("metadata"));
    };
    dns_ish("metadata.name", &m.name)?;
    dns_ish("metadata.namespace", &m.namespace)?;
    dns_ish("metadata.uid", &m.uid)?;

    let ns = c.namespace_options();
    if !c.hostname.is_empty() {
        hostname("hostname", &c.hostname)?;
    }
    if !c.log_directory.is_empty() && !c.log_directory.starts_with('/') {
        return Err(invalid(
            "log_directory",
            format!("{:?} must be an absolute path", c.log_directory),
        ));
    }
    no_nul("log_directory", &c.log_directory)?;
    if let Some(dns) = &c.dns_config {
        for (field, items) in [
            ("dns_config.servers", &dns.servers),
            ("dns_config.searches", &dns.searches),
            ("dns_config.options", &dns.options),
        ] {
            for item in items {
                resolv_word(field, item)?;
            }
        }
        for server in &dns.servers {
            if server.parse::<IpAddr>().is_err() {
                return Err(invalid(
                    "dns_config.servers",
                    format!("{server:?} is not an IP address"),
                ));
            }
        }
    }
    for (i, p) in c.port_mappings.iter().enumerate() {
        let field = format!("port_mappings[{i}]");
        if !(1..=65535).contains(&p.container_port) {
            return Err(invalid(
                format!("{field}.container_port"),
                format!("{} is not a port (1..=65535)", p.container_port),
            ));
        }
        if !(0..=65535).contains(&p.host_port) {
            return Err(invalid(
                format!("{field}.host_port"),
                format!("{} is not a port (0..=65535)", p.host_port),
            ));
        }
        if !p.host_ip.is_empty() && p.host_ip.parse::<IpAddr>().is_err() {
            return Err(invalid(
                format!("{field}.host_ip"),
                format!("{:?} is not an IP address", p.host_ip),
            ));
        }
    }

    let l = &c.linux;
    cgroup_parent("linux.cgroup_parent", &l.cgroup_parent)?;
    namespace_options("linux.security_context.namespace_options", ns, false)?;
    let sc = &l.security_context;
    non_negative_id("linux.security_context.run_as_user", sc.run_as_user)?;
    non_negative_id("linux.security_context.run_as_group", sc.run_as_group)?;
    if sc.run_as_group.is_some() && sc.run_as_user.is_none() {
        return Err(invalid(
            "linux.security_context.run_as_group",
            "is set without run_as_user",
        ));
    }
    for g in &sc.supplemental_groups {
        non_negative_id("linux.security_context.supplemental_groups", Some(*g))?;
    }
    for (field, p) in [
        ("linux.security_context.seccomp", &sc.seccomp),
        ("linux.security_context.apparmor", &sc.apparmor),
    ] {
        security_profile(field, p.as_ref(), field.ends_with("seccomp"))?;
    }
    for (k, v) in &l.sysctls {
        sysctl("linux.sysctls", k, v)?;
    }
    if let Some(r) = &l.overhead {
        resources("linux.overhead", r)?;
    }
    if let Some(r) = &l.resources {
        resources("linux.resources", r)?;
    }
    Ok(())
}

/// Check a container config before anything is made for it.
pub fn validate_container_config(c: &ContainerConfig) -> Result<(), ValidationError> {
    let Some(m) = &c.metadata else {
        return Err(missing("metadata"));
    };
    dns_ish("metadata.name", &m.name)?;
    if c.image.image.is_empty() {
        return Err(missing("image.image"));
    }
    for (field, list) in [("command", &c.command), ("args", &c.args)] {
        for a in list {
            no_nul(field, a)?;
        }
    }
    if !c.working_dir.is_empty() {
        container_path("working_dir", &c.working_dir)?;
    }
    for (i, e) in c.envs.iter().enumerate() {
        let field = format!("envs[{i}]");
        if e.key.is_empty() {
            return Err(missing(format!("{field}.key")));
        }
        if e.key.contains('=') {
            return Err(invalid(
                format!("{field}.key"),
                format!("{:?} contains '='", e.key),
            ));
        }
        no_nul(&field, &e.key)?;
        no_nul(&field, &e.value)?;
    }
    for (i, mnt) in c.mounts.iter().enumerate() {
        let field = format!("mounts[{i}]");
        container_path(&format!("{field}.container_path"), &mnt.container_path)?;
        if mnt.uid_mappings.is_empty() != mnt.gid_mappings.is_empty() {
            return Err(invalid(
                format!("{field}.uid_mappings"),
                "an idmapped mount needs both uid_mappings and gid_mappings",
            ));
        }
        for (name, maps) in [
            ("uid_mappings", &mnt.uid_mappings),
            ("gid_mappings", &mnt.gid_mappings),
        ] {
            match maps.as_slice() {
                [] => {}
                [m] => id_mapping(&format!("{field}.{name}"), m)?,
                _ => {
                    return Err(invalid(
                        format!("{field}.{name}"),
                        "takes one mapping: the pod's (as kubelet sends)",
                    ));
                }
            }
        }
        if mnt.image.is_empty() {
            host_path(&format!("{field}.host_path"), &mnt.host_path)?;
            if !mnt.image_sub_path.is_empty() {
                return Err(invalid(
                    format!("{field}.image_sub_path"),
                    "is only for an image volume (image is not set)",
                ));
            }
        } else {
            no_nul(&format!("{field}.image"), &mnt.image)?;
            if !mnt.host_path.is_empty() {
                return Err(invalid(
                    format!("{field}.host_path"),
                    "must be empty for an image volume",
                ));
            }
            relative_path(&format!("{field}.image_sub_path"), &mnt.image_sub_path)?;
            if mnt.propagation != MountPropagation::Private {
                return Err(invalid(
                    format!("{field}.propagation"),
                    "an image volume is read-only: only PROPAGATION_PRIVATE",
                ));
            }
        }
        if mnt.recursive_read_only {
            if !mnt.readonly {
                return Err(invalid(
                    format!("{field}.recursive_read_only"),
                    "needs readonly to be set too",
                ));
            }
            if mnt.propagation != MountPropagation::Private {
                return Err(invalid(
                    format!("{field}.recursive_read_only"),
                    "needs PROPAGATION_PRIVATE",
                ));
            }
        }
    }
    for (i, d) in c.devices.iter().enumerate() {
        let field = format!("devices[{i}]");
        container_path(&format!("{field}.container_path"), &d.container_path)?;
        host_path(&format!("{field}.host_path"), &d.host_path)?;
        if let Some(bad) = d.permissions.chars().find(|c| !"rwm".contains(*c)) {
            return Err(invalid(
                format!("{field}.permissions"),
                format!(
                    "{:?} has {bad:?}; only r, w and m are allowed",
                    d.permissions
                ),
            ));
        }
    }
    if !c.log_path.is_empty() {
        relative_path("log_path", &c.log_path)?;
    }
    if let Some(r) = &c.linux.resources {
        resources("linux.resources", r)?;
    }

    let sc = &c.linux.security_context;
    let f = "linux.security_context";
    namespace_options(
        &format!("{f}.namespace_options"),
        &sc.namespace_options,
        true,
    )?;
    non_negative_id(&format!("{f}.run_as_user"), sc.run_as_user)?;
    non_negative_id(&format!("{f}.run_as_group"), sc.run_as_group)?;
    if sc.run_as_group.is_some() && sc.run_as_user.is_none() && sc.run_as_username.is_empty() {
        return Err(invalid(
            format!("{f}.run_as_group"),
            "is set without run_as_user or run_as_username",
        ));
    }
    if sc.run_as_username.contains(':') || sc.run_as_username.chars().any(char::is_control) {
        return Err(invalid(
            format!("{f}.run_as_username"),
            format!("{:?} is not a user name", sc.run_as_username),
        ));
    }
    for g in &sc.supplemental_groups {
        non_negative_id(&format!("{f}.supplemental_groups"), Some(*g))?;
    }
    let caps = &sc.capabilities;
    for (field, list) in [
        ("add_capabilities", &caps.add_capabilities),
        ("drop_capabilities", &caps.drop_capabilities),
        ("add_ambient_capabilities", &caps.add_ambient_capabilities),
    ] {
        for name in list {
            capability_name(&format!("{f}.capabilities.{field}"), name)?;
        }
    }
    for (field, list) in [
        ("masked_paths", &sc.masked_paths),
        ("readonly_paths", &sc.readonly_paths),
    ] {
        for p in list {
            container_path(&format!("{f}.{field}"), p)?;
        }
    }
    security_profile(&format!("{f}.seccomp"), sc.seccomp.as_ref(), true)?;
    security_profile(&format!("{f}.apparmor"), sc.apparmor.as_ref(), false)?;
    Ok(())
}

/// Names kubelet and crictl send: Kubernetes object names, namespaces and
/// UIDs. Anything that could act as a path or break a line is refused.
fn dns_ish(field: &str, s: &str) -> Result<(), ValidationError> {
    if s.is_empty() {
        return Err(missing(field));
    }
    if s.len() > MAX_NAME {
        return Err(invalid(
            field,
            format!("is {} characters long; at most {MAX_NAME}", s.len()),
        ));
    }
    let first_ok = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !first_ok || !rest_ok {
        return Err(invalid(
            field,
            format!(
                "{s:?} must start with a letter or digit and hold only letters, digits, '-', '.' and '_'"
            ),
        ));
    }
    Ok(())
}

/// RFC 1123 host name, at most 64 bytes (the kernel's limit for a UTS name).
fn hostname(field: &str, s: &str) -> Result<(), ValidationError> {
    if s.len() > 64 {
        return Err(invalid(
            field,
            format!("{s:?} is longer than 64 characters"),
        ));
    }
    let ok = s.split('.').all(|label| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    if !ok {
        return Err(invalid(field, format!("{s:?} is not a valid host name")));
    }
    Ok(())
}

/// One word of resolv.conf: no spaces, no line breaks.
fn resolv_word(field: &str, s: &str) -> Result<(), ValidationError> {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            field,
            format!("{s:?} must be one word with no spaces or control characters"),
        ));
    }
    Ok(())
}

fn no_nul(field: &str, s: &str) -> Result<(), ValidationError> {
    if s.contains('\0') {
        return Err(invalid(field, "contains a NUL byte"));
    }
    Ok(())
}

/// An absolute path inside the container, without `..`.
fn container_path(field: &str, p: &str) -> Result<(), ValidationError> {
    if p.is_empty() {
        return Err(missing(field));
    }
    no_nul(field, p)?;
    if !p.starts_with('/') {
        return Err(invalid(field, format!("{p:?} must be an absolute path")));
    }
    if Path::new(p).components().any(|c| c == Component::ParentDir) {
        return Err(invalid(field, format!("{p:?} must not contain '..'")));
    }
    Ok(())
}

/// An absolute path on the node.
fn host_path(field: &str, p: &str) -> Result<(), ValidationError> {
    if p.is_empty() {
        return Err(missing(field));
    }
    no_nul(field, p)?;
    if !p.starts_with('/') {
        return Err(invalid(field, format!("{p:?} must be an absolute path")));
    }
    Ok(())
}

/// A relative path that stays below where it is joined.
fn relative_path(field: &str, p: &str) -> Result<(), ValidationError> {
    no_nul(field, p)?;
    let path = Path::new(p);
    if path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(
            field,
            format!("{p:?} must be a relative path without '..'"),
        ));
    }
    Ok(())
}

fn cgroup_parent(field: &str, p: &str) -> Result<(), ValidationError> {
    no_nul(field, p)?;
    if Path::new(p)
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(invalid(
            field,
            format!("{p:?} must not contain '.' or '..'"),
        ));
    }
    Ok(())
}

fn non_negative_id(field: &str, id: Option<i64>) -> Result<(), ValidationError> {
    match id {
        Some(v) if !(0..=i64::from(i32::MAX)).contains(&v) => Err(invalid(
            field,
            format!("{v} is out of range (0..={})", i32::MAX),
        )),
        _ => Ok(()),
    }
}

fn namespace_options(
    field: &str,
    ns: &NamespaceOptions,
    container: bool,
) -> Result<(), ValidationError> {
    for (name, mode) in [("network", ns.network), ("ipc", ns.ipc)] {
        if matches!(mode, NamespaceMode::Container | NamespaceMode::Target) {
            return Err(unsupported(
                format!("{field}.{name}"),
                format!("namespace mode {mode:?}"),
            ));
        }
    }
    if ns.pid == NamespaceMode::Target {
        if !container {
            return Err(invalid(
                format!("{field}.pid"),
                "TARGET is only for containers",
            ));
        }
        if ns.target_id.is_empty() {
            return Err(missing(format!("{field}.target_id")));
        }
    }
    if let Some(u) = &ns.userns_options {
        user_namespace(&format!("{field}.userns_options"), u)?;
    }
    Ok(())
}

/// KEP-127's rules, as the CRI comments give them: NODE (the node's user
/// namespace, no mappings) or POD with exactly one uid and one gid mapping
/// (what kubelet sends) that maps the container's root; CONTAINER and
/// TARGET are not user namespace modes of the CRI.
fn user_namespace(field: &str, u: &UserNamespace) -> Result<(), ValidationError> {
    match u.mode {
        NamespaceMode::Node => {
            if !u.uids.is_empty() || !u.gids.is_empty() {
                return Err(invalid(
                    field,
                    "mode NODE uses the node's user namespace and takes no uids or gids mappings",
                ));
            }
        }
        NamespaceMode::Pod => {
            for (name, maps) in [("uids", &u.uids), ("gids", &u.gids)] {
                let f = format!("{field}.{name}");
                let [m] = maps.as_slice() else {
                    return Err(invalid(
                        f,
                        format!(
                            "mode POD takes exactly one mapping (as kubelet sends), not {}",
                            maps.len()
                        ),
                    ));
                };
                id_mapping(&f, m)?;
            }
        }
        other => {
            return Err(invalid(
                format!("{field}.mode"),
                format!(
                    "{} is not a user namespace mode: only POD and NODE are",
                    format!("{other:?}").to_uppercase()
                ),
            ));
        }
    }
    Ok(())
}

/// One mapping of a pod's user namespace: the container's root mapped, a
/// range that fits in 32 bits and leaves out the node's root.
fn id_mapping(field: &str, m: &IdMapping) -> Result<(), ValidationError> {
    if m.container_id != 0 {
        return Err(invalid(
            field,
            format!(
                "must map container id 0 (the container's root); this mapping starts at {}",
                m.container_id
            ),
        ));
    }
    if m.length == 0 {
        return Err(invalid(field, "length must be at least 1"));
    }
    if u64::from(m.host_id) + u64::from(m.length) > u64::from(u32::MAX) {
        return Err(invalid(
            field,
            format!(
                "host ids {}..{} go past the last id (4294967294)",
                m.host_id,
                u64::from(m.host_id) + u64::from(m.length)
            ),
        ));
    }
    if m.host_id == 0 {
        return Err(invalid(
            field,
            "maps the node's root (host id 0) into the pod, which a user namespace is meant to keep out",
        ));
    }
    Ok(())
}

impl UserNamespace {
    /// The pod's own user namespace (mode POD), with its one uid and gid
    /// mapping (validated).
    pub fn pod_mappings(&self) -> Option<(IdMapping, IdMapping)> {
        match (self.mode, self.uids.as_slice(), self.gids.as_slice()) {
            (NamespaceMode::Pod, [u], [g]) => Some((*u, *g)),
            _ => None,
        }
    }
}

impl IdMapping {
    /// The host id of container id `id`, if the mapping covers it.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        let off = id.checked_sub(self.container_id)?;
        (off < self.length).then(|| self.host_id + off)
    }
}

fn security_profile(
    field: &str,
    p: Option<&SecurityProfile>,
    seccomp: bool,
) -> Result<(), ValidationError> {
    let Some(p) = p else { return Ok(()) };
    match p.profile_type {
        ProfileType::Localhost => {
            if p.localhost_ref.is_empty() {
                return Err(missing(format!("{field}.localhost_ref")));
            }
            if seccomp && !p.localhost_ref.starts_with('/') {
                return Err(invalid(
                    format!("{field}.localhost_ref"),
                    format!("{:?} must be an absolute path", p.localhost_ref),
                ));
            }
        }
        _ if !p.localhost_ref.is_empty() => {
            return Err(invalid(
                format!("{field}.localhost_ref"),
                "is only for profile type Localhost",
            ));
        }
        _ => {}
    }
    Ok(())
}

/// `ALL`, or a capability name with or without `CAP_`, any case.
fn capability_name(field: &str, name: &str) -> Result<(), ValidationError> {
    if name.eq_ignore_ascii_case("ALL") || parse_capability(name).is_some() {
        return Ok(());
    }
    Err(invalid(
        field,
        format!("{name:?} is not a Linux capability"),
    ))
}

/// A CRI capability name (`NET_ADMIN`, `CAP_NET_ADMIN`, `net_admin`).
pub fn parse_capability(name: &str) -> Option<oci_spec::runtime::Capability> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    bare.parse().ok()
}

/// A sysctl's name and value, syntactically (which namespace it belongs to is
/// [`crate::spec::pod_sysctls`]'s question). Names may use `/` as separator,
/// as Kubernetes allows.
fn sysctl(field: &str, key: &str, value: &str) -> Result<(), ValidationError> {
    let ok = !key.is_empty()
        && key.len() <= 253
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '_' | '-'))
        && key.split(['.', '/']).all(|part| !part.is_empty());
    if !ok {
        return Err(invalid(field, format!("{key:?} is not a sysctl name")));
    }
    if value.chars().any(|c| c == '\n' || c == '\0') {
        return Err(invalid(format!("{field}[{key}]"), "value must be one line"));
    }
    Ok(())
}

/// UpdateContainerResources' resources, checked as CreateContainer's are.
pub fn validate_resources(r: &LinuxResources) -> Result<(), ValidationError> {
    resources("linux", r)
}

fn resources(field: &str, r: &LinuxResources) -> Result<(), ValidationError> {
    for (name, v, min) in [
        ("cpu_period", r.cpu_period, 0),
        ("cpu_quota", r.cpu_quota, -1),
        ("cpu_shares", r.cpu_shares, 0),
        ("memory_limit_in_bytes", r.memory_limit_in_bytes, 0),
        (
            "memory_swap_limit_in_bytes",
            r.memory_swap_limit_in_bytes,
            -1,
        ),
    ] {
        if v < min {
            return Err(invalid(
                format!("{field}.{name}"),
                format!("{v} is negative"),
            ));
        }
    }
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return Err(invalid(
            format!("{field}.oom_score_adj"),
            format!("{} is outside -1000..=1000", r.oom_score_adj),
        ));
    }
    if r.memory_swap_limit_in_bytes > 0
        && r.memory_limit_in_bytes > 0
        && r.memory_swap_limit_in_bytes < r.memory_limit_in_bytes
    {
        return Err(invalid(
            format!("{field}.memory_swap_limit_in_bytes"),
            format!(
                "{} is below memory_limit_in_bytes {} (it counts memory plus swap)",
                r.memory_swap_limit_in_bytes, r.memory_limit_in_bytes
            ),
        ));
    }
    for (name, v) in [
        ("cpuset_cpus", &r.cpuset_cpus),
        ("cpuset_mems", &r.cpuset_mems),
    ] {
        if !v.is_empty() && !is_cpu_list(v) {
            return Err(invalid(
                format!("{field}.{name}"),
                format!("{v:?} is not a list like 0-3,5"),
            ));
        }
    }
    for (i, h) in r.hugepage_limits.iter().enumerate() {
        if hugepage_size_bytes(&h.page_size).is_none() {
            return Err(invalid(
                format!("{field}.hugepage_limits[{i}].page_size"),
                format!("{:?} is not a page size like 2MB or 1GB", h.page_size),
            ));
        }
        if i64::try_from(h.limit).is_err() {
            return Err(invalid(
                format!("{field}.hugepage_limits[{i}].limit"),
                format!("{} is too large", h.limit),
            ));
        }
    }
    for (k, v) in &r.unified {
        let ok = k
            .split_once('.')
            .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty())
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(invalid(
                format!("{field}.unified"),
                format!("{k:?} is not a cgroup v2 file name like memory.high"),
            ));
        }
        if v.contains('\0') {
            return Err(invalid(
                format!("{field}.unified[{k}]"),
                "contains a NUL byte",
            ));
        }
    }
    Ok(())
}

/// `0-3,5,7-8`.
fn is_cpu_list(s: &str) -> bool {
    s.split(',').all(|part| {
        let mut ends = part.splitn(2, '-');
        let a = ends.next().unwrap_or("");
        let num = |x: &str| !x.is_empty() && x.chars().all(|c| c.is_ascii_digit());
        match ends.next() {
            None => num(a),
            Some(b) => num(a) && num(b) && a.parse::<u32>().ok() <= b.parse::<u32>().ok(),
        }
    })
}

/// Bytes in a CRI hugepage size (`2MB`, `1GB`, `64KB`), base 1024.
pub fn hugepage_size_bytes(s: &str) -> Option<u64> {
    let num_end = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(num_end);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit {
        "KB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        "PB" => 1 << 50,
        _ => return None,
    };
    if n == 0 {
        return None;
    }
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> SandboxConfig {
        SandboxConfig {
            metadata: Some(SandboxMetadata {
                name: "nginx".into(),
                uid: "0f1e2d3c-aaaa-bbbb-cccc-000000000001".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: "nginx".into(),
            log_directory: "/var/log/pods/default_nginx_0f1e".into(),
            ..Default::default()
        }
    }

    fn ctr() -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "web".into(),
                attempt: 0,
            }),
            image: ImageSpec {
                image: "docker.io/library/nginx:1.27".into(),
                ..Default::default()
            },
            log_path: "web/0.log".into(),
            ..Default::default()
        }
    }

    fn err_of(r: Result<(), ValidationError>) -> String {
        r.expect_err("config should be refused").to_string()
    }

    #[test]
    fn a_kubelet_shaped_pod_and_container_are_accepted() {
        validate_sandbox_config(&pod()).unwrap();
        validate_container_config(&ctr()).unwrap();
    }

    #[test]
    fn pod_without_metadata_is_refused() {
        let mut p = pod();
        p.metadata = None;
        assert_eq!(err_of(validate_sandbox_config(&p)), "metadata is required");
    }

    #[test]
    fn pod_without_name_or_namespace_or_uid_is_refused() {
        for field in ["name", "namespace", "uid"] {
            let mut p = pod();
            let m = p.metadata.as_mut().unwrap();
            match field {
                "name" => m.name.clear(),
                "namespace" => m.namespace.clear(),
                _ => m.uid.clear(),
            }
            assert_eq!(
                err_of(validate_sandbox_config(&p)),
                format!("metadata.{field} is required")
            );
        }
    }

    #[test]
    fn names_that_could_act_as_paths_are_refused() {
        for bad in ["../etc", "a/b", "a b", "-lead", "x\ny", &"a".repeat(254)] {
            let mut c = ctr();
            c.metadata.as_mut().unwrap().name = bad.to_string();
            let e = err_of(validate_container_config(&c));
            assert!(e.starts_with("metadata.name:"), "{bad:?}: {e}");
        }
        // critest and crictl use upper case and UUID suffixes.
        let mut c = ctr();
        c.metadata.as_mut().unwrap().name = "Container-for-test_1.x-0c4f".into();
        validate_container_config(&c).unwrap();
    }

    #[test]
    fn container_without_metadata_or_image_is_refused() {
        let mut c = ctr();
        c.metadata = None;
        assert_eq!(
            err_of(validate_container_config(&c)),
            "metadata is required"
        );
        let mut c = ctr();
        c.image.image.clear();
        assert_eq!(
            err_of(validate_container_config(&c)),
            "image.image is required"
        );
    }

    #[test]
    fn mount_with_relative_container_path_is_refused() {
        let mut c = ctr();
        c.mounts.push(Mount {
            container_path: "data".into(),
            host_path: "/srv/data".into(),
            ..Default::default()
        });
        assert_eq!(
            err_of(validate_container_config(&c)),
            "mounts[0].container_path: \"data\" must be an absolute path"
        );
    }

    #[test]
    fn mount_container_path_with_dotdot_is_refused() {
        let mut c = ctr();
        c.mounts.push(Mount {
            container_path: "/data/../../etc".into(),
            host_path: "/srv/data".into(),
            ..Default::default()
        });
        let e = err_of(validate_container_config(&c));
        assert!(e.contains("must not contain '..'"), "{e}");
    }

    #[test]
    fn mount_with_empty_host_path_is_refused() {
        let mut c = ctr();
        c.mounts.push(Mount {
            container_path: "/data".into(),
            ..Default::default()
        });
        assert_eq!(
            err_of(validate_container_config(&c)),
            "mounts[0].host_path is required"
        );
    }

    #[test]
    fn recursive_read_only_needs_readonly_and_private_propagation() {
        let mut c = ctr();
        c.mounts.push(Mount {
            container_path: "/data".into(),
            host_path: "/srv".into(),
            recursive_read_only: true,
            ..Default::default()
        });
        assert!(err_of(validate_container_config(&c)).contains("needs readonly"));
        c.mounts[0].readonly = true;
        c.mounts[0].propagation = MountPropagation::Bidirectional;
        assert!(err_of(validate_container_config(&c)).contains("PROPAGATION_PRIVATE"));
        c.mounts[0].propagation = MountPropagation::Private;
        validate_container_config(&c).unwrap();
    }

    #[test]
    fn image_volume_mounts_take_no_host_path_and_a_relative_sub_path() {
        let mut c = ctr();
        c.mounts.push(Mount {
            container_path: "/models".into(),
            image: "registry.local/models:1".into(),
            image_sub_path: "weights/v1".into(),
            ..Default::default()
        });
        validate_container_config(&c).unwrap();
        c.mounts[0].host_path = "/srv".into();
        assert!(
            err_of(validate_container_config(&c)).contains("must be empty for an image volume")
        );
        c.mounts[0].host_path.clear();
        for bad in ["/etc", "../up", "a/../../b"] {
            c.mounts[0].image_sub_path = bad.into();
            assert!(
                err_of(validate_container_config(&c)).contains("mounts[0].image_sub_path"),
                "{bad}"
            );
        }
        c.mounts[0].image_sub_path.clear();
        c.mounts[0].propagation = MountPropagation::Bidirectional;
        assert!(err_of(validate_container_config(&c)).contains("PROPAGATION_PRIVATE"));
        let mut plain = ctr();
        plain.mounts.push(Mount {
            container_path: "/x".into(),
            host_path: "/srv".into(),
            image_sub_path: "a".into(),
            ..Default::default()
        });
        assert!(err_of(validate_container_config(&plain)).contains("only for an image volume"));
    }

    #[test]
    fn unknown_propagation_number_is_refused() {
        assert_eq!(
            MountPropagation::try_from(2).unwrap(),
            MountPropagation::Bidirectional
        );
        let e = MountPropagation::try_from(7).unwrap_err();
        assert_eq!(e.to_string(), "7 is not a valid MountPropagation");
        assert!(NamespaceMode::try_from(-1).is_err());
        assert_eq!(i32::from(Protocol::Sctp), 2);
    }

    #[test]
    fn device_permissions_are_some_of_rwm() {
        let mut c = ctr();
        c.devices.push(Device {
            container_path: "/dev/fuse".into(),
            host_path: "/dev/fuse".into(),
            permissions: "rwx".into(),
        });
        let e = err_of(validate_container_config(&c));
        assert!(e.contains("only r, w and m"), "{e}");
        c.devices[0].permissions = "rw".into();
        validate_container_config(&c).unwrap();
    }

    #[test]
    fn negative_resources_are_refused() {
        let mut c = ctr();
        c.linux.resources = Some(LinuxResources {
            memory_limit_in_bytes: -5,
            ..Default::default()
        });
        assert_eq!(
            err_of(validate_container_config(&c)),
            "linux.resources.memory_limit_in_bytes: -5 is negative"
        );
        // -1 is "unlimited" for quota and swap.
        c.linux.resources = Some(LinuxResources {
            cpu_quota: -1,
            memory_swap_limit_in_bytes: -1,
            ..Default::default()
        });
        validate_container_config(&c).unwrap();
    }

    #[test]
    fn swap_below_memory_limit_is_refused() {
        let mut c = ctr();
        c.linux.resources = Some(LinuxResources {
            memory_limit_in_bytes: 100 << 20,
            memory_swap_limit_in_bytes: 50 << 20,
            ..Default::default()
        });
        let e = err_of(validate_container_config(&c));
        assert!(e.contains("memory plus swap"), "{e}");
    }

    #[test]
    fn oom_score_adj_and_cpuset_and_hugepages_are_checked() {
        let mut r = LinuxResources {
            oom_score_adj: 1001,
            ..Default::default()
        };
        assert!(resources("r", &r).is_err());
        r.oom_score_adj = -998;
        r.cpuset_cpus = "0-3,5".into();
        r.cpuset_mems = "0".into();
        r.hugepage_limits.push(HugepageLimit {
            page_size: "2MB".into(),
            limit: 1 << 30,
        });
        resources("r", &r).unwrap();
        r.cpuset_cpus = "3-1".into();
        assert!(resources("r", &r).is_err());
        r.cpuset_cpus.clear();
        r.hugepage_limits[0].page_size = "2M".into();
        assert!(resources("r", &r).is_err());
        assert_eq!(hugepage_size_bytes("1GB"), Some(1 << 30));
        assert_eq!(hugepage_size_bytes("64KB"), Some(64 << 10));
        assert_eq!(hugepage_size_bytes("0MB"), None);
    }

    #[test]
    fn unified_keys_must_be_cgroup_file_names() {
        let mut r = LinuxResources::default();
        r.unified.insert("memory.high".into(), "max".into());
        r.unified.insert("io.weight".into(), "default 100".into());
        resources("r", &r).unwrap();
        r.unified.insert("../../etc/passwd".into(), "x".into());
        assert!(resources("r", &r).is_err());
    }

    #[test]
    fn port_out_of_range_is_refused() {
        let mut p = pod();
        p.port_mappings.push(PortMapping {
            container_port: 0,
            ..Default::default()
        });
        assert_eq!(
            err_of(validate_sandbox_config(&p)),
            "port_mappings[0].container_port: 0 is not a port (1..=65535)"
        );
        p.port_mappings[0].container_port = 80;
        p.port_mappings[0].host_port = 65536;
        assert!(err_of(validate_sandbox_config(&p)).contains("host_port"));
        p.port_mappings[0].host_port = 0;
        p.port_mappings[0].host_ip = "not-an-ip".into();
        assert!(err_of(validate_sandbox_config(&p)).contains("host_ip"));
        p.port_mappings[0].host_ip = "127.0.0.1".into();
        validate_sandbox_config(&p).unwrap();
    }

    #[test]
    fn dns_entries_cannot_inject_resolv_conf_lines() {
        let mut p = pod();
        p.dns_config = Some(DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc.cluster.local\nnameserver 6.6.6.6".into()],
            options: vec!["ndots:5".into()],
        });
        let e = err_of(validate_sandbox_config(&p));
        assert!(e.starts_with("dns_config.searches"), "{e}");
        p.dns_config.as_mut().unwrap().searches = vec!["svc.cluster.local".into()];
        validate_sandbox_config(&p).unwrap();
        p.dns_config.as_mut().unwrap().servers = vec!["dns.example".into()];
        assert!(err_of(validate_sandbox_config(&p)).contains("not an IP address"));
    }

    #[test]
    fn bad_hostname_is_refused() {
        let mut p = pod();
        p.hostname = "a".repeat(65);
        assert!(err_of(validate_sandbox_config(&p)).contains("longer than 64"));
        p.hostname = "under_score".into();
        assert!(err_of(validate_sandbox_config(&p)).contains("not a valid host name"));
        p.hostname.clear();
        validate_sandbox_config(&p).unwrap();
    }

    #[test]
    fn run_as_group_without_user_is_refused() {
        let mut c = ctr();
        c.linux.security_context.run_as_group = Some(1000);
        let e = err_of(validate_container_config(&c));
        assert!(e.contains("without run_as_user"), "{e}");
        c.linux.security_context.run_as_username = "nginx".into();
        validate_container_config(&c).unwrap();
        c.linux.security_context.run_as_user = Some(-1);
        assert!(err_of(validate_container_config(&c)).contains("out of range"));
    }

    #[test]
    fn pid_target_needs_a_target_id() {
        let mut c = ctr();
        c.linux.security_context.namespace_options.pid = NamespaceMode::Target;
        assert_eq!(
            err_of(validate_container_config(&c)),
            "linux.security_context.namespace_options.target_id is required"
        );
        c.linux.security_context.namespace_options.target_id = "abc".into();
        validate_container_config(&c).unwrap();
    }

    #[test]
    fn user_namespaces_follow_the_cri_rules() {
        let one = |c, h, l| IdMapping {
            container_id: c,
            host_id: h,
            length: l,
        };
        let check = |u: UserNamespace| {
            let mut p = pod();
            p.linux.security_context.namespace_options.userns_options = Some(u.clone());
            let mut c = ctr();
            c.linux.security_context.namespace_options.userns_options = Some(u);
            let (a, b) = (validate_sandbox_config(&p), validate_container_config(&c));
            assert_eq!(a.is_ok(), b.is_ok());
            a.err().map(|e| e.to_string())
        };
        let pod_mode = |uids: Vec<IdMapping>, gids: Vec<IdMapping>| UserNamespace {
            mode: NamespaceMode::Pod,
            uids,
            gids,
        };
        let good = one(0, 65536, 65536);
        let u = pod_mode(vec![good], vec![good]);
        assert_eq!(check(u.clone()), None);
        assert_eq!(u.pod_mappings(), Some((good, good)));
        assert_eq!(
            check(UserNamespace {
                mode: NamespaceMode::Node,
                ..Default::default()
            }),
            None
        );
        let cases = [
            (
                pod_mode(vec![good, one(0, 200000, 10)], vec![good]),
                "uids: mode POD takes exactly one mapping (as kubelet sends), not 2",
            ),
            (
                pod_mode(vec![good], vec![]),
                "gids: mode POD takes exactly one mapping",
            ),
            (
                pod_mode(vec![one(1, 1000, 100000)], vec![good]),
                "must map container id 0",
            ),
            (
                pod_mode(vec![good], vec![one(0, 1000, 0)]),
                "length must be at least 1",
            ),
            (
                pod_mode(vec![one(0, u32::MAX - 5, 10)], vec![good]),
                "go past the last id",
            ),
            (pod_mode(vec![one(0, 0, 65536)], vec![good]), "node's root"),
            (
                UserNamespace {
                    mode: NamespaceMode::Container,
                    ..Default::default()
                },
                "CONTAINER is not a user namespace mode",
            ),
            (
                UserNamespace {
                    mode: NamespaceMode::Target,
                    ..Default::default()
                },
                "TARGET is not a user namespace mode",
            ),
            (
                UserNamespace {
                    mode: NamespaceMode::Node,
                    uids: vec![good],
                    gids: vec![good],
                },
                "takes no uids or gids mappings",
            ),
        ];
        for (u, want) in cases {
            let e = check(u.clone()).unwrap_or_else(|| panic!("{u:?} was accepted"));
            assert!(e.contains(want), "{u:?}: {e}");
        }
        assert_eq!(good.to_host(0), Some(65536));
        assert_eq!(good.to_host(65535), Some(131071));
        assert_eq!(good.to_host(65536), None);
    }

    #[test]
    fn idmapped_mounts_take_one_mapping_of_each() {
        let m = IdMapping {
            container_id: 0,
            host_id: 65536,
            length: 65536,
        };
        let mut c = ctr();
        c.mounts.push(Mount {
            container_path: "/data".into(),
            host_path: "/tmp/data".into(),
            uid_mappings: vec![m],
            gid_mappings: vec![m],
            ..Default::default()
        });
        validate_container_config(&c).unwrap();
        c.mounts[0].gid_mappings.clear();
        let e = err_of(validate_container_config(&c));
        assert!(
            e.contains("needs both uid_mappings and gid_mappings"),
            "{e}"
        );
        c.mounts[0].gid_mappings = vec![m, m];
        let e = err_of(validate_container_config(&c));
        assert!(e.contains("mounts[0].gid_mappings"), "{e}");
    }

    #[test]
    fn unknown_capability_is_refused() {
        let mut c = ctr();
        c.linux.security_context.capabilities.add_capabilities =
            vec!["NET_ADMIN".into(), "cap_sys_ptrace".into(), "ALL".into()];
        validate_container_config(&c).unwrap();
        c.linux.security_context.capabilities.drop_capabilities = vec!["FLY".into()];
        let e = err_of(validate_container_config(&c));
        assert!(e.contains("\"FLY\" is not a Linux capability"), "{e}");
    }

    #[test]
    fn sysctl_names_and_values_are_checked() {
        let mut p = pod();
        p.linux
            .sysctls
            .insert("net.ipv4.conf.eth0/100.rp_filter".into(), "1".into());
        validate_sandbox_config(&p).unwrap();
        p.linux.sysctls.insert("net..x".into(), "1".into());
        assert!(err_of(validate_sandbox_config(&p)).contains("not a sysctl name"));
        p.linux.sysctls.clear();
        p.linux
            .sysctls
            .insert("kernel.shmmax".into(), "1\nkernel.x=1".into());
        assert!(err_of(validate_sandbox_config(&p)).contains("one line"));
    }

    #[test]
    fn log_path_must_stay_below_the_log_directory() {
        let mut c = ctr();
        c.log_path = "../../etc/cron.d/x".into();
        assert!(err_of(validate_container_config(&c)).starts_with("log_path"));
        c.log_path = "/abs.log".into();
        assert!(err_of(validate_container_config(&c)).starts_with("log_path"));
    }

    #[test]
    fn cgroup_parent_cannot_climb() {
        let mut p = pod();
        p.linux.cgroup_parent = "/kubepods/../../system.slice".into();
        assert!(err_of(validate_sandbox_config(&p)).contains("'..'"));
        p.linux.cgroup_parent = "kubepods-burstable-pod123.slice".into();
        validate_sandbox_config(&p).unwrap();
    }

    #[test]
    fn configs_round_trip_through_json_and_old_records_load() {
        let mut c = ctr();
        c.envs.push(KeyValue {
            key: "A".into(),
            value: "1".into(),
        });
        c.mounts.push(Mount {
            container_path: "/data".into(),
            host_path: "/srv".into(),
            propagation: MountPropagation::HostToContainer,
            ..Default::default()
        });
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("\"HOST_TO_CONTAINER\""), "{json}");
        assert_eq!(serde_json::from_str::<ContainerConfig>(&json).unwrap(), c);
        // A record from before most fields existed.
        let old: SandboxConfig =
            serde_json::from_str(r#"{"metadata":{"name":"p","uid":"u","namespace":"n"}}"#).unwrap();
        assert_eq!(old.metadata().name, "p");
        assert_eq!(old.namespace_options().pid, NamespaceMode::Pod);
    }
}
