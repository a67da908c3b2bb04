//! What is the pod's rather than a container's: the spec of its pause
//! process, and its sysctls.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxResourcesBuilder, ProcessBuilder, Spec, SpecBuilder, UserBuilder,
    VERSION,
};

use super::{DEFAULT_PATH_ENV, Host, Node, PAUSE_OOM_SCORE_ADJ, Pod, SpecError, annotations};
use crate::model::{NamespaceMode, SandboxConfig};

/// The spec of a pod's pause process (a shim of kind `Pause`): it holds the
/// pod's new PID namespace and sits in the pod's other namespaces; no root
/// filesystem, no capabilities, the pod's seccomp profile (containerd puts
/// it on its sandbox container). `cgroups_path` is a leaf under the pod's
/// cgroup (on v2 a process cannot sit in a cgroup that has children).
pub fn pause_spec(
    node: &Node,
    pod: &Pod<'_>,
    cgroups_path: &str,
    host: &dyn Host,
) -> Result<Spec, SpecError> {
    let paths = pod.paths;
    let mut namespaces = vec![
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Mount)
            .build()?,
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Pid)
            .build()?,
    ];
    for (typ, path) in [
        (LinuxNamespaceType::Network, &paths.net_ns),
        (LinuxNamespaceType::Ipc, &paths.ipc_ns),
        (LinuxNamespaceType::Uts, &paths.uts_ns),
    ] {
        if let Some(p) = path {
            namespaces.push(
                LinuxNamespaceBuilder::default()
                    .typ(typ)
                    .path(p.clone())
                    .build()?,
            );
        }
    }
    let none: Capabilities = HashSet::new();
    let mut process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(0u32).gid(0u32).build()?)
        .args(vec!["pause".to_string()])
        .env(vec![DEFAULT_PATH_ENV.to_string()])
        .cwd("/")
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(none.clone())
                .effective(none.clone())
                .permitted(none.clone())
                .inheritable(none.clone())
                .ambient(none)
                .build()?,
        )
        .no_new_privileges(true)
        .build()?;
    process.set_rlimits(None);
    process.set_oom_score_adj(Some(PAUSE_OOM_SCORE_ADJ));
    // The devices of any container: on v2 berthd's apply of these
    // resources is what puts a device program on the pause's cgroup.
    let resources = LinuxResourcesBuilder::default()
        .cpu(LinuxCpuBuilder::default().shares(2u64).build()?)
        .devices(super::default_device_rules()?)
        .build()?;
    let sc = &pod.config.linux.security_context;
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(cgroups_path))
        .resources(resources)
        .masked_paths(Vec::<String>::new())
        .readonly_paths(Vec::<String>::new())
        .build()?;
    linux.set_seccomp(super::seccomp::resolve(
        sc.seccomp.as_ref(),
        sc.privileged,
        &Default::default(),
        node.kernel,
        host,
    )?);
    let meta = pod.config.metadata();
    let annotations = HashMap::from([
        (annotations::SANDBOX_ID.into(), pod.id.into()),
        (annotations::SANDBOX_NAMESPACE.into(), meta.namespace),
        (annotations::SANDBOX_UID.into(), meta.uid),
        (annotations::SANDBOX_NAME.into(), meta.name),
        (
            annotations::SANDBOX_LOG_DIR.into(),
            pod.config.log_directory.clone(),
        ),
        (
            annotations::CONTAINER_TYPE.into(),
            annotations::CONTAINER_TYPE_SANDBOX.into(),
        ),
    ]);
    let mut spec = SpecBuilder::default()
        .version(VERSION)
        .process(process)
        .linux(linux)
        .annotations(annotations)
        .build()?;
    spec.set_root(None);
    spec.set_mounts(Some(Vec::new()));
    spec.set_hostname(None);
    Ok(spec)
}

/// The pod's sysctls, checked to belong to a namespace the pod owns, as
/// `(name, value)` with `.` separators, sorted. `net.*` needs the pod's own
/// network namespace; `kernel.shm*`, `kernel.msg*`, `kernel.sem` and
/// `fs.mqueue.*` its own IPC namespace; anything else would change the whole
/// node and is refused. Names in Kubernetes' `/` form are converted
/// (`net/ipv4/conf/eth0.100/rp_filter` → `net.ipv4.conf.eth0/100.rp_filter`):
/// use [`sysctl_proc_path`] for the file.
pub fn pod_sysctls(config: &SandboxConfig) -> Result<Vec<(String, String)>, SpecError> {
    let ns = config.namespace_options();
    let mut out = Vec::new();
    for (raw, value) in &config.linux.sysctls {
        let key = dotted_sysctl(raw);
        let err = |reason: String| SpecError::Sysctl {
            key: raw.clone(),
            reason,
        };
        // Each /proc/sys path component: a name, never `.` or `..`.
        let well_formed = key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '_' | '-'))
            && key.split('.').all(|part| {
                let component = part.replace('/', ".");
                !component.is_empty() && component != "." && component != ".."
            });
        if !well_formed {
            return Err(err("is not a sysctl name".into()));
        }
        let ipc = key.starts_with("kernel.shm")
            || key.starts_with("kernel.msg")
            || key == "kernel.sem"
            || key.starts_with("fs.mqueue.");
        if key.starts_with("net.") {
            if ns.network == NamespaceMode::Node {
                return Err(err(
                    "the pod uses the node's network namespace, so this would change the node"
                        .into(),
                ));
            }
        } else if ipc {
            if ns.ipc == NamespaceMode::Node {
                return Err(err(
                    "the pod uses the node's IPC namespace, so this would change the node".into(),
                ));
            }
        } else {
            return Err(err(
                "is not namespaced (only net.*, kernel.shm*, kernel.msg*, kernel.sem and fs.mqueue.* are); it would change the whole node".into(),
            ));
        }
        out.push((key, value.clone()));
    }
    out.sort();
    Ok(out)
}

/// Kubernetes' conversion of a sysctl name to `.` separators: when the first
/// separator is `/`, dots and slashes swap.
fn dotted_sysctl(key: &str) -> String {
    match key.find(['.', '/']) {
        Some(i) if key.as_bytes()[i] == b'/' => key
            .chars()
            .map(|c| match c {
                '/' => '.',
                '.' => '/',
                other => other,
            })
            .collect(),
        _ => key.to_string(),
    }
}

/// The /proc/sys file of a dotted sysctl name (a `/` in it stands for a dot
/// in a path component, e.g. an interface `eth0.100`).
pub fn sysctl_proc_path(key: &str) -> PathBuf {
    let rel: String = key
        .chars()
        .map(|c| match c {
            '.' => '/',
            '/' => '.',
            other => other,
        })
        .collect();
    Path::new("/proc/sys").join(rel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::{Fixture, namespaces, pod_config};

    #[test]
    fn pause_spec_holds_a_new_pid_namespace_and_joins_the_rest() {
        let f = Fixture::new();
        let pod = Pod {
            id: "pod1",
            config: &f.pod,
            paths: &f.paths,
            hostname: "web",
        };
        let s = pause_spec(&f.node, &pod, "/kubepods/pod1/pod1", &f.host).unwrap();
        assert_eq!(
            namespaces(&s),
            [
                (LinuxNamespaceType::Mount, None),
                (LinuxNamespaceType::Pid, None),
                (
                    LinuxNamespaceType::Network,
                    Some("/run/berth/pods/p1/net".into())
                ),
                (
                    LinuxNamespaceType::Ipc,
                    Some("/run/berth/pods/p1/ipc".into())
                ),
                (
                    LinuxNamespaceType::Uts,
                    Some("/run/berth/pods/p1/uts".into())
                ),
            ]
        );
        assert_eq!(s.root(), &None);
        assert_eq!(s.hostname(), &None);
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.oom_score_adj(), Some(PAUSE_OOM_SCORE_ADJ));
        assert!(
            p.capabilities()
                .as_ref()
                .unwrap()
                .bounding()
                .as_ref()
                .unwrap()
                .is_empty()
        );
        // The same device rules as any container (a program on v2).
        let r = s.linux().as_ref().unwrap().resources().clone().unwrap();
        assert_eq!(
            r.devices().as_deref(),
            Some(&super::super::default_device_rules().unwrap()[..])
        );
        let a = s.annotations().clone().unwrap();
        assert_eq!(a[annotations::CONTAINER_TYPE], "sandbox");
        assert_eq!(
            a[annotations::SANDBOX_LOG_DIR],
            "/var/log/pods/default_web_uid-1"
        );
    }

    fn with_sysctls(pairs: &[(&str, &str)]) -> SandboxConfig {
        let mut p = pod_config();
        p.linux.sysctls = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        p
    }

    #[test]
    fn namespaced_sysctls_of_a_pod_are_accepted() {
        let p = with_sysctls(&[
            ("net.ipv4.ip_unprivileged_port_start", "0"),
            ("kernel.shmmax", "1000000"),
            ("kernel.sem", "250 32000 32 128"),
            ("fs.mqueue.msg_max", "100"),
            ("net/ipv4/conf/eth0.100/rp_filter", "1"),
        ]);
        assert_eq!(
            pod_sysctls(&p).unwrap(),
            [
                ("fs.mqueue.msg_max".to_string(), "100".to_string()),
                ("kernel.sem".into(), "250 32000 32 128".into()),
                ("kernel.shmmax".into(), "1000000".into()),
                ("net.ipv4.conf.eth0/100.rp_filter".into(), "1".into()),
                ("net.ipv4.ip_unprivileged_port_start".into(), "0".into()),
            ]
        );
        assert_eq!(
            sysctl_proc_path("net.ipv4.conf.eth0/100.rp_filter"),
            Path::new("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
    }

    #[test]
    fn sysctl_names_cannot_climb_out_of_proc_sys() {
        for bad in ["net.//.x", "net./.x", "net..x", "net.a\nb", "net/../../x"] {
            let e = pod_sysctls(&with_sysctls(&[(bad, "1")])).unwrap_err();
            assert!(e.to_string().contains("not a sysctl name"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn node_wide_sysctl_is_refused() {
        let e = pod_sysctls(&with_sysctls(&[("vm.swappiness", "10")])).unwrap_err();
        assert!(e.to_string().contains("not namespaced"), "{e}");
        assert!(e.is_invalid_argument());
        let e = pod_sysctls(&with_sysctls(&[("kernel.hostname", "x")])).unwrap_err();
        assert!(e.to_string().contains("not namespaced"), "{e}");
    }

    #[test]
    fn net_sysctl_on_a_host_network_pod_is_refused() {
        let mut p = with_sysctls(&[("net.core.somaxconn", "1024")]);
        p.linux.security_context.namespace_options.network = NamespaceMode::Node;
        let e = pod_sysctls(&p).unwrap_err();
        assert!(e.to_string().contains("node's network namespace"), "{e}");
        let mut p = with_sysctls(&[("kernel.msgmax", "1")]);
        p.linux.security_context.namespace_options.ipc = NamespaceMode::Node;
        assert!(pod_sysctls(&p).unwrap_err().to_string().contains("IPC"));
    }

    #[test]
    fn the_pause_process_gets_the_pods_seccomp_profile() {
        use crate::model::{ProfileType, SecurityProfile};
        let mut f = Fixture::new();
        let spec = |f: &Fixture| {
            let pod = Pod {
                id: "pod1",
                config: &f.pod,
                paths: &f.paths,
                hostname: "web",
            };
            pause_spec(&f.node, &pod, "/kubepods/pod1/pause", &f.host)
        };
        let seccomp = |f: &Fixture| spec(f).unwrap().linux().clone().unwrap().seccomp().clone();
        assert_eq!(seccomp(&f), None);
        f.pod.linux.security_context.seccomp = Some(SecurityProfile {
            profile_type: ProfileType::RuntimeDefault,
            localhost_ref: String::new(),
        });
        let s = seccomp(&f).unwrap();
        // No capabilities: the namespace-free clone only.
        let clone: Vec<_> = s
            .syscalls()
            .iter()
            .flatten()
            .filter(|c| c.names().iter().any(|n| n == "clone"))
            .collect();
        assert_eq!(clone.len(), 1);
        assert!(clone[0].args().is_some());
        f.pod.linux.security_context.seccomp = Some(SecurityProfile {
            profile_type: ProfileType::Localhost,
            localhost_ref: "/missing.json".into(),
        });
        assert!(spec(&f).unwrap_err().is_invalid_argument());
    }
}
