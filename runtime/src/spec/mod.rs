//! The OCI runtime spec (`config.json`) of a container and of a pod's pause
//! process, built the way containerd's CRI plugin builds them
//! (`internal/cri/server/container_create*.go`, `internal/cri/opts`,
//! `pkg/oci/spec.go`), for berth-shim to run as runc would.
//!
//! [`container_spec`] is a pure function of its inputs: where it needs the
//! node (does a host path exist? what device is this?) it asks a [`Host`],
//! and what must be made on disk comes back as lists for the caller:
//!
//! * `host_dirs`: CRI mount sources that do not exist; containerd creates
//!   them as directories (0755) before the container starts.
//! * `rootfs_dirs`: image VOLUMEs no CRI mount covers, and the working
//!   directory; made inside the rootfs ([`mkdir_in_rootfs`], which never
//!   follows the image's symlinks out of it).
//!
//! Differences from containerd, on purpose: the pod's network, IPC and UTS
//! namespaces are joined by their pinned paths (no pause image), the pod's
//! sysctls are applied once when those are pinned ([`pod_sysctls`]) rather
//! than through a sandbox container, the device cgroup rules list the
//! devices every container gets (berthd writes the rules itself; runc would
//! add them), and no AppArmor profile is set yet. The seccomp profile is
//! containerd's ([`seccomp`]); berthd compiles it to BPF for the shim.

mod host;
mod mounts;
mod pod;
pub mod seccomp;

pub use host::{Host, HostDevice, RealHost, default_device_rules, mkdir_in_rootfs};
pub use pod::{pause_spec, pod_sysctls, sysctl_proc_path};

use host::plan_devices;
use mounts::{MountPlan, image_volumes, lexically_clean, plan_mounts};

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use berth_image::manifest::RunConfig;
use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxHugepageLimitBuilder, LinuxIdMapping, LinuxIdMappingBuilder, LinuxMemoryBuilder,
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResources,
    LinuxResourcesBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder, VERSION,
};
use serde::{Deserialize, Serialize};

use crate::model::{self, ContainerConfig, NamespaceMode, SandboxConfig, parse_capability};
use crate::user::ResolvedUser;

/// PATH when the image sets none.
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// containerd's (and Docker's) default capability set.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Paths containerd masks (/dev/null over files, an empty tmpfs over dirs).
pub const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// Paths containerd makes read-only.
pub const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// containerd's oom_score_adj for the sandbox process: killed last.
pub const PAUSE_OOM_SCORE_ADJ: i32 = -998;

/// Annotations containerd sets on its specs (`internal/cri/annotations`).
pub mod annotations {
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    pub const CONTAINER_TYPE_SANDBOX: &str = "sandbox";
    pub const CONTAINER_TYPE_CONTAINER: &str = "container";
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
    pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    pub const SANDBOX_LOG_DIR: &str = "io.kubernetes.cri.sandbox-log-directory";
    pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
    pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(
        "no command to run: the container config has no command or args and the image has no Entrypoint or Cmd"
    )]
    NoCommand,
    #[error("{0:?} is not a Linux capability")]
    UnknownCapability(String),
    #[error(
        "the container asks to be privileged but its pod is not (set privileged in the pod's security context)"
    )]
    PrivilegedNotAllowed,
    #[error("sysctl {key}: {reason}")]
    Sysctl { key: String, reason: String },
    #[error("the pod has no pinned {0} namespace to join")]
    MissingNamespace(&'static str),
    #[error("{field}: {reason}")]
    UserNamespace { field: String, reason: String },
    #[error("pid namespace TARGET: the target container's pid namespace path was not given")]
    MissingTarget,
    #[error("{field}: the image volume was not mounted")]
    ImageVolume { field: String },
    #[error("device {path}: {source}")]
    Device {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("path {path:?} is mounted on {mountpoint:?} but it is not a {want} mount")]
    Propagation {
        path: String,
        mountpoint: PathBuf,
        want: &'static str,
    },
    #[error("mount source {path}: {source}")]
    HostPath {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("making {} in the container's root filesystem: {source}", path.display())]
    RootfsDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("seccomp profile {profile}: {reason}")]
    Seccomp { profile: String, reason: String },
    #[error("building the OCI spec: {0}")]
    Oci(#[from] OciSpecError),
}

impl SpecError {
    /// Whether the CRI caller's config is at fault (gRPC InvalidArgument);
    /// otherwise it is the node's (Internal / Unknown).
    pub fn is_invalid_argument(&self) -> bool {
        matches!(
            self,
            SpecError::NoCommand
                | SpecError::UserNamespace { .. }
                | SpecError::UnknownCapability(_)
                | SpecError::PrivilegedNotAllowed
                | SpecError::Sysctl { .. }
                | SpecError::Device { .. }
                | SpecError::Seccomp { .. }
        )
    }
}

// ---------------------------------------------------------------------------
// Inputs

/// Facts about the node, found once at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// What "all capabilities" means here (privileged, `ALL`): the node's
    /// bounding set, so a container never asks for one the kernel lacks.
    pub all_capabilities: Vec<Capability>,
    /// cgroup v2: a non-privileged container gets a cgroup namespace of its
    /// own (containerd's rule; on v1 it does not, for compatibility).
    pub cgroup_v2: bool,
    /// The running kernel's (major, minor), for profiles' `minKernel`.
    pub kernel: (u32, u32),
}

impl Node {
    /// This node, with `cgroup_v2` from [`crate::cgroups`]'s detection.
    pub fn host(cgroup_v2: bool) -> Self {
        let uname = rustix::system::uname();
        Self {
            all_capabilities: host_capabilities(),
            cgroup_v2,
            kernel: seccomp::kernel_version(&uname.release().to_string_lossy()).unwrap_or((0, 0)),
        }
    }
}

/// Every capability of this process's bounding set (all known ones if it
/// cannot be read).
pub fn host_capabilities() -> Vec<Capability> {
    let from_kernel: Option<Vec<Capability>> =
        caps::read(None, caps::CapSet::Bounding).ok().map(|set| {
            set.iter()
                .filter_map(|c| parse_capability(&c.to_string()))
                .collect()
        });
    let mut all = from_kernel.filter(|v| !v.is_empty()).unwrap_or_else(|| {
        caps::all()
            .iter()
            .filter_map(|c| parse_capability(&c.to_string()))
            .collect()
    });
    all.sort_by_key(|c| c.to_string());
    all
}

/// What RunPodSandbox made for a pod that its containers use. None: the
/// node's own (host network, host IPC) or not made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPaths {
    /// Pinned namespaces (`namespaces::Pinned`).
    pub net_ns: Option<PathBuf>,
    pub ipc_ns: Option<PathBuf>,
    pub uts_ns: Option<PathBuf>,
    /// The pod's own user namespace (KEP-127), when it has one.
    pub user_ns: Option<PathBuf>,
    /// The pause process's `/proc/<pid>/ns/pid`, when the pod shares one.
    pub pid_ns: Option<PathBuf>,
    /// The pod's files, bind-mounted into each container.
    pub hostname_file: Option<PathBuf>,
    pub hosts_file: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    /// The pod's /dev/shm (a tmpfs); None with the node's IPC namespace.
    pub dev_shm: Option<PathBuf>,
}

/// A pod as its containers' specs see it.
#[derive(Clone, Copy, Debug)]
pub struct Pod<'a> {
    pub id: &'a str,
    pub config: &'a SandboxConfig,
    pub paths: &'a PodPaths,
    /// The hostname its containers see (the config's, or the node's when
    /// that is empty), for `$HOSTNAME`.
    pub hostname: &'a str,
}

/// Everything a container's spec is made from.
#[derive(Clone, Copy, Debug)]
pub struct ContainerInputs<'a> {
    pub id: &'a str,
    pub config: &'a ContainerConfig,
    /// The image config's `config` part.
    pub image: &'a RunConfig,
    /// The image as resolved (used for the annotation when the user's own
    /// spelling is not known).
    pub image_name: &'a str,
    pub pod: Pod<'a>,
    /// The mounted root filesystem (absolute).
    pub rootfs: &'a Path,
    pub user: &'a ResolvedUser,
    /// `linux.cgroupsPath` ([`crate::cgroups::CgroupManager::spec_path`]).
    pub cgroups_path: &'a str,
    /// For pid TARGET: `/proc/<target init pid>/ns/pid`.
    pub target_pid_ns: Option<&'a Path>,
    /// The mounted source of each image volume: (index in config.mounts,
    /// the directory or file to bind, image_sub_path resolved).
    pub image_volumes: &'a [(usize, PathBuf)],
}

// ---------------------------------------------------------------------------
// Outputs

/// A container's spec and what must exist before the shim runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerSpec {
    pub spec: Spec,
    /// Missing CRI mount sources, to make as directories (0755) on the node.
    pub host_dirs: Vec<PathBuf>,
    /// Directories to make inside the rootfs ([`mkdir_in_rootfs`]).
    pub rootfs_dirs: Vec<PathBuf>,
}

// ---------------------------------------------------------------------------
// The container spec

/// Build the OCI spec of a container.
pub fn container_spec(
    node: &Node,
    input: &ContainerInputs<'_>,
    host: &dyn Host,
) -> Result<ContainerSpec, SpecError> {
    let c = input.config;
    let sc = c.security_context();
    let pod = input.pod;
    if sc.privileged && !pod.config.linux.security_context.privileged {
        return Err(SpecError::PrivilegedNotAllowed);
    }

    let args = process_args(c, input.image)?;
    let mut env = process_env(c, input.image, pod.hostname);
    if c.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let cwd = if !c.working_dir.is_empty() {
        c.working_dir.clone()
    } else {
        input
            .image
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    };
    let caps = capabilities(node, c)?;
    let cap_set = |set: &BTreeSet<String>| -> Capabilities {
        set.iter().filter_map(|c| parse_capability(c)).collect()
    };
    let user = UserBuilder::default()
        .uid(input.user.uid)
        .gid(input.user.gid)
        .additional_gids(input.user.additional_gids.clone())
        .build()?;
    let mut process = ProcessBuilder::default()
        .terminal(c.tty)
        .user(user)
        .args(args)
        .env(env)
        .cwd(lexically_clean(&cwd))
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(cap_set(&caps.bounding))
                .effective(cap_set(&caps.bounding))
                .permitted(cap_set(&caps.bounding))
                .inheritable(cap_set(&caps.ambient))
                .ambient(cap_set(&caps.ambient))
                .build()?,
        )
        .no_new_privileges(sc.no_new_privs)
        .build()?;
    let seccomp = seccomp::resolve(
        sc.seccomp.as_ref(),
        sc.privileged,
        &caps.bounding,
        node.kernel,
        host,
    )?;
    // containerd drops the default RLIMIT_NOFILE of 1024: the node's apply.
    process.set_rlimits(None);
    process.set_oom_score_adj(
        c.linux
            .resources
            .as_ref()
            .and_then(|r| i32::try_from(r.oom_score_adj).ok()),
    );

    let MountPlan {
        mounts,
        host_dirs,
        propagation,
    } = plan_mounts(input, host)?;
    let mut rootfs_dirs = image_volumes(c, input.image);
    if cwd != "/" {
        rootfs_dirs.push(lexically_clean(&cwd).into());
    }

    let (devices, device_rules) = plan_devices(c, host)?;
    let mut resources = c
        .linux
        .resources
        .as_ref()
        .map(linux_resources)
        .transpose()?
        .unwrap_or_default();
    resources.set_devices(Some(device_rules));

    let (masked, readonly) = if sc.privileged {
        (Vec::new(), Vec::new())
    } else {
        (
            or_defaults(&sc.masked_paths, &DEFAULT_MASKED_PATHS),
            or_defaults(&sc.readonly_paths, &DEFAULT_READONLY_PATHS),
        )
    };
    let userns = pod_userns(input)?;
    let mut linux = LinuxBuilder::default()
        .namespaces(container_namespaces(node, input)?)
        .resources(resources)
        .cgroups_path(PathBuf::from(input.cgroups_path))
        .devices(devices)
        .masked_paths(masked)
        .readonly_paths(readonly)
        .build()?;
    linux.set_rootfs_propagation(propagation);
    linux.set_seccomp(seccomp);
    if let Some((u, g)) = userns {
        // Joined, not made: for the shim (device owners, idmapped binds)
        // and for whoever reads the bundle.
        linux.set_uid_mappings(Some(vec![oci_idmap(&u)?]));
        linux.set_gid_mappings(Some(vec![oci_idmap(&g)?]));
    }

    let meta = pod.config.metadata();
    let image_name = if c.image.user_specified_image.is_empty() {
        input.image_name
    } else {
        &c.image.user_specified_image
    };
    let annotations = HashMap::from([
        (annotations::SANDBOX_ID.into(), pod.id.into()),
        (annotations::SANDBOX_NAMESPACE.into(), meta.namespace),
        (annotations::SANDBOX_UID.into(), meta.uid),
        (annotations::SANDBOX_NAME.into(), meta.name),
        (annotations::CONTAINER_NAME.into(), c.metadata().name),
        (annotations::IMAGE_NAME.into(), image_name.to_string()),
        (
            annotations::CONTAINER_TYPE.into(),
            annotations::CONTAINER_TYPE_CONTAINER.into(),
        ),
    ]);

    let mut spec = SpecBuilder::default()
        .version(VERSION)
        .root(
            RootBuilder::default()
                .path(input.rootfs)
                .readonly(sc.readonly_rootfs)
                .build()?,
        )
        .mounts(mounts)
        .process(process)
        .linux(linux)
        .annotations(annotations)
        .build()?;
    // The UTS namespace is the pod's, its hostname set once when pinned.
    spec.set_hostname(None);
    Ok(ContainerSpec {
        spec,
        host_dirs,
        rootfs_dirs,
    })
}

/// The process's argv the Kubernetes way: `command` replaces the image's
/// Entrypoint and drops its Cmd; `args` alone replace Cmd.
pub fn process_args(c: &ContainerConfig, image: &RunConfig) -> Result<Vec<String>, SpecError> {
    let mut command = c.command.clone();
    let mut args = c.args.clone();
    if command.is_empty() {
        if args.is_empty() {
            args = image.cmd.clone().unwrap_or_default();
        }
        let entrypoint = image.entrypoint.clone().unwrap_or_default();
        // `ENTRYPOINT [""]` means none (Docker's reset).
        if !(entrypoint.len() == 1 && entrypoint[0].is_empty()) {
            command = entrypoint;
        }
    }
    command.extend(args);
    if command.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(command)
}

/// The environment: PATH (the image's or the default), HOSTNAME, then the
/// image's Env, then the CRI's envs, a later key replacing an earlier one in
/// place. An image entry without `=` unsets the key (Docker's rule).
pub fn process_env(c: &ContainerConfig, image: &RunConfig, hostname: &str) -> Vec<String> {
    let mut env = vec![DEFAULT_PATH_ENV.to_string()];
    replace_or_append(&mut env, [format!("HOSTNAME={hostname}")]);
    replace_or_append(&mut env, image.env.iter().flatten().cloned());
    replace_or_append(
        &mut env,
        c.envs.iter().map(|kv| format!("{}={}", kv.key, kv.value)),
    );
    env
}

fn replace_or_append(env: &mut Vec<String>, overrides: impl IntoIterator<Item = String>) {
    let key_of = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_string();
    for value in overrides {
        let key = key_of(&value);
        let pos = env.iter().position(|e| key_of(e) == key);
        match (value.contains('='), pos) {
            (true, Some(i)) => env[i] = value,
            (true, None) => env.push(value),
            (false, Some(i)) => {
                env.remove(i);
            }
            (false, None) => {}
        }
    }
}

struct CapSets {
    bounding: BTreeSet<String>,
    ambient: BTreeSet<String>,
}

/// containerd's `WithCapabilities`: the default set, `ALL` added or dropped
/// first, then each named one; privileged gets everything. Ambient ones (the
/// CRI's `add_ambient_capabilities`) go into every set.
fn capabilities(node: &Node, c: &ContainerConfig) -> Result<CapSets, SpecError> {
    let sc = c.security_context();
    let all: BTreeSet<String> = node
        .all_capabilities
        .iter()
        .map(|c| c.to_string())
        .collect();
    let name = |n: &str| -> Result<String, SpecError> {
        parse_capability(n)
            .map(|c| c.to_string())
            .ok_or_else(|| SpecError::UnknownCapability(n.to_string()))
    };
    if sc.privileged {
        return Ok(CapSets {
            bounding: all,
            ambient: BTreeSet::new(),
        });
    }
    let is_all = |n: &String| n.eq_ignore_ascii_case("ALL");
    let caps = &sc.capabilities;
    let mut set: BTreeSet<String> = DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    if caps.add_capabilities.iter().any(is_all) {
        set = all.clone();
    }
    if caps.drop_capabilities.iter().any(is_all) {
        set.clear();
    }
    for n in caps.add_capabilities.iter().filter(|n| !is_all(n)) {
        set.insert(name(n)?);
    }
    for n in caps.drop_capabilities.iter().filter(|n| !is_all(n)) {
        set.remove(&name(n)?);
    }
    let mut ambient = BTreeSet::new();
    for n in &caps.add_ambient_capabilities {
        let n = name(n)?;
        set.insert(n.clone());
        ambient.insert(n);
    }
    Ok(CapSets {
        bounding: set,
        ambient,
    })
}

fn or_defaults(given: &[String], defaults: &[&str]) -> Vec<String> {
    if given.is_empty() {
        defaults.iter().map(|s| s.to_string()).collect()
    } else {
        given.to_vec()
    }
}

/// The container's namespaces: the pod's network, IPC and UTS joined (none
/// when the pod uses the node's), pid as asked, a new mount namespace, and
/// on cgroup v2 a cgroup namespace unless privileged.
fn container_namespaces(
    node: &Node,
    input: &ContainerInputs<'_>,
) -> Result<Vec<LinuxNamespace>, SpecError> {
    let pod_ns = input.pod.config.namespace_options();
    let paths = input.pod.paths;
    let sc = input.config.security_context();
    let join = |typ, path: &Option<PathBuf>, what| -> Result<LinuxNamespace, SpecError> {
        let path = path.as_ref().ok_or(SpecError::MissingNamespace(what))?;
        Ok(LinuxNamespaceBuilder::default()
            .typ(typ)
            .path(path.clone())
            .build()?)
    };
    let new = |typ| LinuxNamespaceBuilder::default().typ(typ).build();
    let mut out = vec![new(LinuxNamespaceType::Mount)?];
    if pod_ns
        .userns_options
        .as_ref()
        .is_some_and(|u| u.pod_mappings().is_some())
    {
        out.push(join(LinuxNamespaceType::User, &paths.user_ns, "user")?);
    }
    if pod_ns.network != NamespaceMode::Node {
        out.push(join(LinuxNamespaceType::Network, &paths.net_ns, "network")?);
        // A pod on the node's network has the node's UTS too (its hostname).
        out.push(join(LinuxNamespaceType::Uts, &paths.uts_ns, "uts")?);
    }
    if pod_ns.ipc != NamespaceMode::Node {
        out.push(join(LinuxNamespaceType::Ipc, &paths.ipc_ns, "ipc")?);
    }
    match sc.namespace_options.pid {
        NamespaceMode::Container => out.push(new(LinuxNamespaceType::Pid)?),
        NamespaceMode::Pod => out.push(join(LinuxNamespaceType::Pid, &paths.pid_ns, "pid")?),
        NamespaceMode::Target => {
            let path = input.target_pid_ns.ok_or(SpecError::MissingTarget)?;
            out.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Pid)
                    .path(path)
                    .build()?,
            );
        }
        NamespaceMode::Node => {}
    }
    if node.cgroup_v2 && !sc.privileged {
        out.push(new(LinuxNamespaceType::Cgroup)?);
    }
    Ok(out)
}

/// The pod's user namespace mappings, if it has one of its own; a
/// container's own `userns_options` (kubelet copies the pod's) must be the
/// pod's: every container of a pod shares its user namespace.
pub(super) fn pod_userns(
    input: &ContainerInputs<'_>,
) -> Result<Option<(model::IdMapping, model::IdMapping)>, SpecError> {
    let pod = input.pod.config.namespace_options().userns_options.as_ref();
    let mine = input
        .config
        .security_context()
        .namespace_options
        .userns_options
        .as_ref();
    let mode = |u: Option<&model::UserNamespace>| u.map_or(NamespaceMode::Node, |u| u.mode);
    let pod_map = pod.and_then(|u| u.pod_mappings());
    if let Some(c) = mine {
        let same = mode(Some(c)) == mode(pod) && c.pod_mappings() == pod_map;
        if !same {
            return Err(SpecError::UserNamespace {
                field: "linux.security_context.namespace_options.userns_options".into(),
                reason: format!(
                    "must be the pod's ({:?}{}): the containers of a pod share its user namespace",
                    mode(pod),
                    pod_map.map_or(String::new(), |(u, g)| format!(
                        ", uids {}:{}:{}, gids {}:{}:{}",
                        u.container_id, u.host_id, u.length, g.container_id, g.host_id, g.length
                    )),
                ),
            });
        }
    }
    Ok(pod_map)
}

fn oci_idmap(m: &model::IdMapping) -> Result<LinuxIdMapping, SpecError> {
    Ok(LinuxIdMappingBuilder::default()
        .container_id(m.container_id)
        .host_id(m.host_id)
        .size(m.length)
        .build()?)
}

/// The OCI resources of a CRI `LinuxContainerResources` (containerd's
/// `WithResources`): zero means unset; with a memory limit and no swap
/// limit, swap is capped at the memory limit (no swapping), as containerd
/// does where swap is accounted. Devices are left to the caller.
pub fn linux_resources(r: &model::LinuxResources) -> Result<LinuxResources, SpecError> {
    let mut cpu = LinuxCpuBuilder::default();
    if r.cpu_period != 0 {
        cpu = cpu.period(r.cpu_period.unsigned_abs());
    }
    if r.cpu_quota != 0 {
        cpu = cpu.quota(r.cpu_quota);
    }
    if r.cpu_shares != 0 {
        cpu = cpu.shares(r.cpu_shares.unsigned_abs());
    }
    if !r.cpuset_cpus.is_empty() {
        cpu = cpu.cpus(r.cpuset_cpus.clone());
    }
    if !r.cpuset_mems.is_empty() {
        cpu = cpu.mems(r.cpuset_mems.clone());
    }
    let mut mem = LinuxMemoryBuilder::default();
    if r.memory_limit_in_bytes != 0 {
        mem = mem.limit(r.memory_limit_in_bytes);
        if r.memory_swap_limit_in_bytes == 0 {
            mem = mem.swap(r.memory_limit_in_bytes);
        }
    }
    if r.memory_swap_limit_in_bytes != 0 {
        mem = mem.swap(r.memory_swap_limit_in_bytes);
    }
    let hugepages = r
        .hugepage_limits
        .iter()
        .map(|h| {
            LinuxHugepageLimitBuilder::default()
                .page_size(h.page_size.clone())
                .limit(i64::try_from(h.limit).unwrap_or(i64::MAX))
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = LinuxResourcesBuilder::default()
        .cpu(cpu.build()?)
        .memory(mem.build()?)
        .build()?;
    if !hugepages.is_empty() {
        out.set_hugepage_limits(Some(hugepages));
    }
    if !r.unified.is_empty() {
        out.set_unified(Some(
            r.unified
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Capabilities as CriCaps, ContainerMetadata, ImageSpec, KeyValue,
        LinuxResources as CriResources, SandboxMetadata,
    };
    use oci_spec::runtime::{LinuxDeviceType, Mount};
    use std::collections::BTreeMap;

    /// A node whose paths and devices are made up.
    #[derive(Default)]
    pub(super) struct FakeHost {
        pub(super) existing: Vec<PathBuf>,
        pub(super) devices: Vec<HostDevice>,
        pub(super) files: Vec<(PathBuf, Vec<u8>)>,
    }

    impl Host for FakeHost {
        fn read_small_file(&self, path: &Path, max: u64) -> io::Result<Vec<u8>> {
            let (_, bytes) = self
                .files
                .iter()
                .find(|(p, _)| p == path)
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
            if bytes.len() as u64 > max {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "too large"));
            }
            Ok(bytes.clone())
        }
        fn exists(&self, path: &Path) -> io::Result<bool> {
            Ok(self.existing.iter().any(|p| p == path))
        }
        fn mount_propagation(&self, _path: &Path) -> io::Result<(PathBuf, Vec<String>)> {
            Ok((PathBuf::from("/"), vec!["shared:1".into()]))
        }
        fn devices(&self, path: &Path) -> io::Result<Vec<HostDevice>> {
            let found: Vec<HostDevice> = self
                .devices
                .iter()
                .filter(|d| d.path == path || d.path.starts_with(path))
                .cloned()
                .collect();
            if found.is_empty() {
                return Err(io::Error::from(io::ErrorKind::NotFound));
            }
            Ok(found)
        }
    }

    pub(super) fn dev(path: &str, major: i64, minor: i64) -> HostDevice {
        HostDevice {
            path: path.into(),
            kind: LinuxDeviceType::C,
            major,
            minor,
            mode: 0o666,
            uid: 0,
            gid: 0,
        }
    }

    pub(super) fn node() -> Node {
        Node {
            all_capabilities: caps::all()
                .iter()
                .filter_map(|c| parse_capability(&c.to_string()))
                .collect(),
            cgroup_v2: false,
            kernel: (6, 1),
        }
    }

    pub(super) fn pod_config() -> SandboxConfig {
        SandboxConfig {
            metadata: Some(SandboxMetadata {
                name: "web".into(),
                uid: "uid-1".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: "web".into(),
            log_directory: "/var/log/pods/default_web_uid-1".into(),
            ..Default::default()
        }
    }

    pub(super) fn pod_paths() -> PodPaths {
        PodPaths {
            net_ns: Some("/run/berth/pods/p1/net".into()),
            ipc_ns: Some("/run/berth/pods/p1/ipc".into()),
            uts_ns: Some("/run/berth/pods/p1/uts".into()),
            user_ns: Some("/run/berth/pods/p1/user".into()),
            pid_ns: Some("/proc/4242/ns/pid".into()),
            hostname_file: Some("/run/berth/pods/p1/hostname".into()),
            hosts_file: Some("/run/berth/pods/p1/hosts".into()),
            resolv_conf: Some("/run/berth/pods/p1/resolv.conf".into()),
            dev_shm: Some("/run/berth/pods/p1/shm".into()),
        }
    }

    pub(super) fn ctr_config() -> ContainerConfig {
        let mut c = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "nginx".into(),
                attempt: 0,
            }),
            image: ImageSpec {
                image: "sha256:abc".into(),
                user_specified_image: "nginx:1.27".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        c.linux.security_context.namespace_options.pid = NamespaceMode::Container;
        c
    }

    pub(super) fn image() -> RunConfig {
        RunConfig {
            entrypoint: Some(vec!["/docker-entrypoint.sh".into()]),
            cmd: Some(vec!["nginx".into(), "-g".into(), "daemon off;".into()]),
            env: Some(vec![
                "PATH=/usr/local/nginx/bin:/usr/bin:/bin".into(),
                "NGINX_VERSION=1.27".into(),
            ]),
            working_dir: Some("/usr/share/nginx".into()),
            ..Default::default()
        }
    }

    pub(super) struct Fixture {
        pub(super) node: Node,
        pub(super) pod: SandboxConfig,
        pub(super) paths: PodPaths,
        pub(super) ctr: ContainerConfig,
        pub(super) image: RunConfig,
        pub(super) user: ResolvedUser,
        pub(super) host: FakeHost,
        pub(super) target: Option<PathBuf>,
        pub(super) image_volumes: Vec<(usize, PathBuf)>,
    }

    impl Fixture {
        pub(super) fn new() -> Self {
            Self {
                node: node(),
                pod: pod_config(),
                paths: pod_paths(),
                ctr: ctr_config(),
                image: image(),
                user: ResolvedUser {
                    uid: 101,
                    gid: 101,
                    additional_gids: vec![101],
                },
                host: FakeHost::default(),
                target: None,
                image_volumes: Vec::new(),
            }
        }

        pub(super) fn build(&self) -> Result<ContainerSpec, SpecError> {
            let input = ContainerInputs {
                id: "ctr1",
                config: &self.ctr,
                image: &self.image,
                image_name: "docker.io/library/nginx@sha256:abc",
                pod: Pod {
                    id: "pod1",
                    config: &self.pod,
                    paths: &self.paths,
                    hostname: "web",
                },
                rootfs: Path::new("/run/berth/containers/ctr1/rootfs"),
                user: &self.user,
                cgroups_path: "/kubepods/pod1/ctr1",
                target_pid_ns: self.target.as_deref(),
                image_volumes: &self.image_volumes,
            };
            container_spec(&self.node, &input, &self.host)
        }

        pub(super) fn spec(&self) -> Spec {
            self.build().unwrap().spec
        }
    }

    pub(super) fn args(s: &Spec) -> Vec<String> {
        s.process().as_ref().unwrap().args().clone().unwrap()
    }

    pub(super) fn env(s: &Spec) -> Vec<String> {
        s.process().as_ref().unwrap().env().clone().unwrap()
    }

    pub(super) fn mount<'a>(s: &'a Spec, dest: &str) -> Option<&'a Mount> {
        s.mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new(dest))
    }

    pub(super) fn options(m: &Mount) -> Vec<String> {
        m.options().clone().unwrap()
    }

    pub(super) fn caps_of(s: &Spec) -> BTreeSet<String> {
        s.process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.to_string())
            .collect()
    }

    pub(super) fn namespaces(s: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
        s.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| (n.typ(), n.path().clone()))
            .collect()
    }

    #[test]
    fn image_entrypoint_and_cmd_run_when_cri_says_nothing() {
        let f = Fixture::new();
        assert_eq!(
            args(&f.spec()),
            ["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]
        );
    }

    #[test]
    fn command_overrides_entrypoint_and_drops_cmd() {
        let mut f = Fixture::new();
        f.ctr.command = vec!["/bin/sh".into(), "-c".into()];
        assert_eq!(args(&f.spec()), ["/bin/sh", "-c"]);
        f.ctr.args = vec!["echo hi".into()];
        assert_eq!(args(&f.spec()), ["/bin/sh", "-c", "echo hi"]);
    }

    #[test]
    fn args_alone_replace_cmd() {
        let mut f = Fixture::new();
        f.ctr.args = vec!["nginx-debug".into()];
        assert_eq!(args(&f.spec()), ["/docker-entrypoint.sh", "nginx-debug"]);
    }

    #[test]
    fn empty_string_entrypoint_means_none() {
        let mut f = Fixture::new();
        f.image.entrypoint = Some(vec![String::new()]);
        assert_eq!(args(&f.spec()), ["nginx", "-g", "daemon off;"]);
    }

    #[test]
    fn nothing_to_run_is_an_error() {
        let mut f = Fixture::new();
        f.image.entrypoint = None;
        f.image.cmd = None;
        let e = f.build().unwrap_err();
        assert!(matches!(e, SpecError::NoCommand));
        assert!(e.is_invalid_argument());
    }

    #[test]
    fn cri_env_overrides_image_env_by_key() {
        let mut f = Fixture::new();
        f.ctr.envs = vec![
            KeyValue {
                key: "NGINX_VERSION".into(),
                value: "custom".into(),
            },
            KeyValue {
                key: "EXTRA".into(),
                value: "a=b".into(),
            },
        ];
        assert_eq!(
            env(&f.spec()),
            [
                "PATH=/usr/local/nginx/bin:/usr/bin:/bin",
                "HOSTNAME=web",
                "NGINX_VERSION=custom",
                "EXTRA=a=b",
            ]
        );
    }

    #[test]
    fn default_path_when_the_image_sets_none() {
        let mut f = Fixture::new();
        f.image.env = None;
        assert_eq!(env(&f.spec()), [DEFAULT_PATH_ENV, "HOSTNAME=web"]);
    }

    #[test]
    fn image_env_without_value_unsets_the_key() {
        let mut f = Fixture::new();
        f.image.env = Some(vec!["A=1".into(), "A".into(), "B=2".into()]);
        assert_eq!(env(&f.spec()), [DEFAULT_PATH_ENV, "HOSTNAME=web", "B=2"]);
    }

    #[test]
    fn tty_sets_terminal_and_term() {
        let mut f = Fixture::new();
        f.ctr.tty = true;
        let s = f.spec();
        assert_eq!(s.process().as_ref().unwrap().terminal(), Some(true));
        assert_eq!(env(&s).last().unwrap(), "TERM=xterm");
        f.ctr.envs.push(KeyValue {
            key: "TERM".into(),
            value: "vt100".into(),
        });
        assert!(!env(&f.spec()).contains(&"TERM=xterm".to_string()));
    }

    #[test]
    fn working_dir_from_cri_then_image_then_root() {
        let mut f = Fixture::new();
        let cwd = |f: &Fixture| f.spec().process().as_ref().unwrap().cwd().clone();
        assert_eq!(cwd(&f), Path::new("/usr/share/nginx"));
        f.ctr.working_dir = "/srv".into();
        assert_eq!(cwd(&f), Path::new("/srv"));
        assert!(
            f.build()
                .unwrap()
                .rootfs_dirs
                .contains(&PathBuf::from("/srv"))
        );
        f.ctr.working_dir.clear();
        f.image.working_dir = None;
        assert_eq!(cwd(&f), Path::new("/"));
        assert!(f.build().unwrap().rootfs_dirs.is_empty());
    }

    #[test]
    fn user_comes_from_the_resolved_user() {
        let mut f = Fixture::new();
        f.user.additional_gids = vec![29, 101];
        let s = f.spec();
        let u = s.process().as_ref().unwrap().user();
        assert_eq!((u.uid(), u.gid()), (101, 101));
        assert_eq!(u.additional_gids().clone().unwrap(), [29, 101]);
    }

    #[test]
    fn default_capabilities_are_containerds() {
        let f = Fixture::new();
        let s = f.spec();
        let want: BTreeSet<String> = DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
        assert_eq!(caps_of(&s), want);
        assert_eq!(want.len(), 14);
        let c = s
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        assert!(c.ambient().as_ref().unwrap().is_empty());
        assert!(c.inheritable().as_ref().unwrap().is_empty());
        assert_eq!(c.effective(), c.bounding());
        assert_eq!(c.permitted(), c.bounding());
    }

    #[test]
    fn capabilities_are_added_and_dropped() {
        let mut f = Fixture::new();
        f.ctr.linux.security_context.capabilities = CriCaps {
            add_capabilities: vec!["NET_ADMIN".into(), "CAP_SYS_TIME".into()],
            drop_capabilities: vec!["net_raw".into(), "MKNOD".into()],
            add_ambient_capabilities: vec![],
        };
        let got = caps_of(&f.spec());
        assert!(got.contains("NET_ADMIN") && got.contains("SYS_TIME"));
        assert!(!got.contains("NET_RAW") && !got.contains("MKNOD"));
        assert_eq!(got.len(), 14);
    }

    #[test]
    fn drop_all_then_add_one_leaves_just_that_one() {
        let mut f = Fixture::new();
        f.ctr.linux.security_context.capabilities = CriCaps {
            add_capabilities: vec!["NET_BIND_SERVICE".into()],
            drop_capabilities: vec!["ALL".into()],
            add_ambient_capabilities: vec![],
        };
        assert_eq!(
            caps_of(&f.spec()),
            BTreeSet::from(["NET_BIND_SERVICE".to_string()])
        );
    }

    #[test]
    fn add_all_then_drop_one() {
        let mut f = Fixture::new();
        f.ctr.linux.security_context.capabilities = CriCaps {
            add_capabilities: vec!["ALL".into()],
            drop_capabilities: vec!["CHOWN".into()],
            add_ambient_capabilities: vec![],
        };
        let got = caps_of(&f.spec());
        assert_eq!(got.len(), f.node.all_capabilities.len() - 1);
        assert!(!got.contains("CHOWN"));
    }

    #[test]
    fn ambient_capabilities_go_in_every_set() {
        let mut f = Fixture::new();
        f.ctr
            .linux
            .security_context
            .capabilities
            .add_ambient_capabilities = vec!["NET_ADMIN".into()];
        let s = f.spec();
        let c = s
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        for set in [c.ambient(), c.inheritable(), c.bounding(), c.effective()] {
            assert!(set.as_ref().unwrap().contains(&Capability::NetAdmin));
        }
    }

    #[test]
    fn unknown_capability_is_an_error() {
        let mut f = Fixture::new();
        f.ctr.linux.security_context.capabilities.add_capabilities = vec!["FLY".into()];
        let e = f.build().unwrap_err();
        assert_eq!(e.to_string(), "\"FLY\" is not a Linux capability");
    }

    pub(super) fn privileged(f: &mut Fixture) {
        f.pod.linux.security_context.privileged = true;
        f.ctr.linux.security_context.privileged = true;
        f.host.devices = vec![dev("/dev/null", 1, 3), dev("/dev/fuse", 10, 229)];
    }

    #[test]
    fn privileged_gets_all_caps_and_no_masked_paths() {
        let mut f = Fixture::new();
        privileged(&mut f);
        let s = f.spec();
        assert_eq!(caps_of(&s).len(), f.node.all_capabilities.len());
        let l = s.linux().as_ref().unwrap();
        assert!(l.masked_paths().as_ref().unwrap().is_empty());
        assert!(l.readonly_paths().as_ref().unwrap().is_empty());
        assert_eq!(options(mount(&s, "/sys").unwrap()).last().unwrap(), "rw");
        assert_eq!(
            options(mount(&s, "/sys/fs/cgroup").unwrap())
                .last()
                .unwrap(),
            "rw"
        );
        // Every host device, every device allowed.
        let devs: Vec<_> = l
            .devices()
            .as_ref()
            .unwrap()
            .iter()
            .map(|d| d.path().clone())
            .collect();
        assert_eq!(devs, [PathBuf::from("/dev/null"), "/dev/fuse".into()]);
        // The CRI's devices stay, under their container paths.
        f.ctr.devices = vec![model::Device {
            container_path: "/dev/fuse-in-ctr".into(),
            host_path: "/dev/fuse".into(),
            permissions: "rwm".into(),
        }];
        let s = f.spec();
        let devs: Vec<_> = s
            .linux()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap()
            .iter()
            .map(|d| d.path().display().to_string())
            .collect();
        assert_eq!(devs, ["/dev/fuse-in-ctr", "/dev/null", "/dev/fuse"]);
        let rules = l.resources().as_ref().unwrap().devices().clone().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].to_string(), "a *:* rwm");
    }

    #[test]
    fn privileged_container_needs_a_privileged_pod() {
        let mut f = Fixture::new();
        f.ctr.linux.security_context.privileged = true;
        let e = f.build().unwrap_err();
        assert!(matches!(e, SpecError::PrivilegedNotAllowed));
        assert!(e.is_invalid_argument());
    }

    #[test]
    fn unprivileged_gets_default_masked_and_readonly_paths_and_ro_sys() {
        let f = Fixture::new();
        let s = f.spec();
        let l = s.linux().as_ref().unwrap();
        assert_eq!(l.masked_paths().as_ref().unwrap().len(), 11);
        assert!(
            l.masked_paths()
                .as_ref()
                .unwrap()
                .contains(&"/proc/kcore".to_string())
        );
        assert_eq!(
            l.readonly_paths().clone().unwrap(),
            DEFAULT_READONLY_PATHS.map(String::from)
        );
        assert_eq!(options(mount(&s, "/sys").unwrap()).last().unwrap(), "ro");
    }

    #[test]
    fn cri_masked_paths_replace_the_defaults() {
        let mut f = Fixture::new();
        f.ctr.linux.security_context.masked_paths = vec!["/proc/kcore".into()];
        f.ctr.linux.security_context.readonly_paths = vec!["/proc/sys".into()];
        let s = f.spec();
        let l = s.linux().as_ref().unwrap();
        assert_eq!(l.masked_paths().clone().unwrap(), ["/proc/kcore"]);
        assert_eq!(l.readonly_paths().clone().unwrap(), ["/proc/sys"]);
    }

    #[test]
    fn pod_namespaces_are_joined_by_their_pinned_paths() {
        let mut f = Fixture::new();
        f.ctr.linux.security_context.namespace_options.pid = NamespaceMode::Pod;
        assert_eq!(
            namespaces(&f.spec()),
            [
                (LinuxNamespaceType::Mount, None),
                (
                    LinuxNamespaceType::Network,
                    Some("/run/berth/pods/p1/net".into())
                ),
                (
                    LinuxNamespaceType::Uts,
                    Some("/run/berth/pods/p1/uts".into())
                ),
                (
                    LinuxNamespaceType::Ipc,
                    Some("/run/berth/pods/p1/ipc".into())
                ),
                (LinuxNamespaceType::Pid, Some("/proc/4242/ns/pid".into())),
            ]
        );
        assert_eq!(f.spec().hostname(), &None);
    }

    #[test]
    fn host_network_pod_has_no_network_or_uts_namespace() {
        let mut f = Fixture::new();
        f.pod.linux.security_context.namespace_options.network = NamespaceMode::Node;
        f.paths.net_ns = None;
        f.paths.uts_ns = None;
        let ns = namespaces(&f.spec());
        assert!(
            !ns.iter()
                .any(|(t, _)| matches!(t, LinuxNamespaceType::Network | LinuxNamespaceType::Uts))
        );
    }

    #[test]
    fn a_pod_namespace_that_was_not_pinned_is_an_error() {
        let mut f = Fixture::new();
        f.paths.net_ns = None;
        let e = f.build().unwrap_err();
        assert_eq!(
            e.to_string(),
            "the pod has no pinned network namespace to join"
        );
    }

    #[test]
    fn pid_modes() {
        let mut f = Fixture::new();
        let pid = |f: &Fixture| {
            namespaces(&f.spec())
                .into_iter()
                .find(|(t, _)| *t == LinuxNamespaceType::Pid)
        };
        f.ctr.linux.security_context.namespace_options.pid = NamespaceMode::Container;
        assert_eq!(pid(&f), Some((LinuxNamespaceType::Pid, None)));
        f.ctr.linux.security_context.namespace_options.pid = NamespaceMode::Node;
        assert_eq!(pid(&f), None);
        f.ctr.linux.security_context.namespace_options.pid = NamespaceMode::Target;
        assert!(matches!(f.build().unwrap_err(), SpecError::MissingTarget));
        f.target = Some("/proc/77/ns/pid".into());
        assert_eq!(
            pid(&f),
            Some((LinuxNamespaceType::Pid, Some("/proc/77/ns/pid".into())))
        );
    }

    #[test]
    fn cgroup_v2_gives_unprivileged_containers_a_cgroup_namespace() {
        let mut f = Fixture::new();
        f.node.cgroup_v2 = true;
        assert!(
            namespaces(&f.spec())
                .iter()
                .any(|(t, p)| *t == LinuxNamespaceType::Cgroup && p.is_none())
        );
        privileged(&mut f);
        assert!(
            !namespaces(&f.spec())
                .iter()
                .any(|(t, _)| *t == LinuxNamespaceType::Cgroup)
        );
    }

    /// Root-only: what the spec asks of cgroups, the node's kernel takes
    /// (device rules, swap, quota), written as berthd will write it.
    #[test]
    fn generated_resources_are_accepted_by_the_real_cgroup() {
        use crate::cgroups::{CgroupManager, CgroupPath, Cgroups};
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "this test needs root (it writes a real cgroup); run the suite as root"
        );
        let cgroups = Cgroups::detect().expect("this test needs the node's cgroups");
        let mut f = Fixture::new();
        f.ctr.linux.resources = Some(CriResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 256,
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        });
        f.ctr.devices = vec![model::Device {
            container_path: "/dev/zero2".into(),
            host_path: "/dev/zero".into(),
            permissions: "rw".into(),
        }];
        let spec = {
            let input = ContainerInputs {
                id: "ctr1",
                config: &f.ctr,
                image: &f.image,
                image_name: "img",
                pod: Pod {
                    id: "pod1",
                    config: &f.pod,
                    paths: &f.paths,
                    hostname: "web",
                },
                rootfs: Path::new("/nonexistent"),
                user: &f.user,
                cgroups_path: "/unused",
                target_pid_ns: None,
                image_volumes: &[],
            };
            container_spec(&f.node, &input, &RealHost).unwrap().spec
        };
        let resources = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        let path = CgroupPath::new(&format!("berth-test-spec-{}", std::process::id())).unwrap();
        cgroups.create(&path).unwrap();
        let applied = cgroups.apply(&path, &resources);
        cgroups.remove(&path).unwrap();
        applied.unwrap();
    }

    #[test]
    fn resources_and_oom_score_adj_are_carried() {
        let mut f = Fixture::new();
        f.ctr.linux.resources = Some(CriResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 128 << 20,
            oom_score_adj: 900,
            cpuset_cpus: "0-1".into(),
            ..Default::default()
        });
        let s = f.spec();
        assert_eq!(s.process().as_ref().unwrap().oom_score_adj(), Some(900));
        let r = s.linux().as_ref().unwrap().resources().clone().unwrap();
        let cpu = r.cpu().clone().unwrap();
        assert_eq!(cpu.period(), Some(100_000));
        assert_eq!(cpu.quota(), Some(50_000));
        assert_eq!(cpu.shares(), Some(512));
        assert_eq!(cpu.cpus().as_deref(), Some("0-1"));
        let mem = r.memory().unwrap();
        assert_eq!(mem.limit(), Some(128 << 20));
        // No swap beyond the memory limit unless asked.
        assert_eq!(mem.swap(), Some(128 << 20));
        assert_eq!(
            s.linux().as_ref().unwrap().cgroups_path().as_deref(),
            Some(Path::new("/kubepods/pod1/ctr1"))
        );
    }

    #[test]
    fn hugepages_and_unified_are_carried() {
        let r = linux_resources(&CriResources {
            hugepage_limits: vec![model::HugepageLimit {
                page_size: "2MB".into(),
                limit: 1 << 30,
            }],
            unified: BTreeMap::from([("memory.high".into(), "1000000".into())]),
            memory_swap_limit_in_bytes: -1,
            memory_limit_in_bytes: 1 << 20,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.hugepage_limits().as_ref().unwrap()[0].page_size(), "2MB");
        assert_eq!(r.unified().as_ref().unwrap()["memory.high"], "1000000");
        assert_eq!(r.memory().unwrap().swap(), Some(-1));
    }

    #[test]
    fn no_new_privs_and_no_default_rlimits() {
        let mut f = Fixture::new();
        let p = f.spec().process().clone().unwrap();
        assert_eq!(p.no_new_privileges(), Some(false));
        assert_eq!(p.rlimits(), &None);
        assert_eq!(p.oom_score_adj(), None);
        f.ctr.linux.security_context.no_new_privs = true;
        assert_eq!(
            f.spec().process().as_ref().unwrap().no_new_privileges(),
            Some(true)
        );
    }

    #[test]
    fn annotations_are_containerds() {
        let f = Fixture::new();
        let a = f.spec().annotations().clone().unwrap();
        assert_eq!(a[annotations::CONTAINER_TYPE], "container");
        assert_eq!(a[annotations::SANDBOX_ID], "pod1");
        assert_eq!(a[annotations::SANDBOX_NAME], "web");
        assert_eq!(a[annotations::SANDBOX_NAMESPACE], "default");
        assert_eq!(a[annotations::SANDBOX_UID], "uid-1");
        assert_eq!(a[annotations::CONTAINER_NAME], "nginx");
        assert_eq!(a[annotations::IMAGE_NAME], "nginx:1.27");
    }

    #[test]
    fn spec_round_trips_through_config_json() {
        let f = Fixture::new();
        let s = f.spec();
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("youki"), "{json}");
        let back: Spec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(
            s.root().as_ref().unwrap().path(),
            Path::new("/run/berth/containers/ctr1/rootfs")
        );
    }

    #[test]
    fn host_capabilities_are_known_ones() {
        let caps = host_capabilities();
        assert!(caps.contains(&Capability::Chown));
        assert!(caps.len() >= 14);
    }
}
