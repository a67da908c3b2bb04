//! CRI messages → berth's domain model (`berth_runtime::model`). Enum values
//! the CRI does not define are refused here; everything else is checked by
//! the model's validation.

use std::collections::BTreeMap;

use berth_cri_api::v1 as cri;
use berth_runtime::model as m;
use tonic::Status;

fn map(h: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    h.into_iter().collect()
}

fn bad(e: m::ValidationError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// KeyValue.value is `bytes` since cri-api v0.36.2 (it was `string`, which
/// protobuf requires to be UTF-8: a value that was not failed to decode the
/// whole request). berth's model keeps environment values as strings, so a
/// value that is not UTF-8 is refused, naming the variable.
fn env(i: usize, kv: cri::KeyValue) -> Result<m::KeyValue, Status> {
    match String::from_utf8(kv.value) {
        Ok(value) => Ok(m::KeyValue { key: kv.key, value }),
        Err(_) => Err(bad(m::ValidationError::Unsupported {
            field: format!("envs[{i}] ({:?})", kv.key),
            what: "a value that is not UTF-8".into(),
        })),
    }
}

fn ns_options(o: Option<cri::NamespaceOption>) -> Result<m::NamespaceOptions, Status> {
    let Some(o) = o else {
        return Ok(m::NamespaceOptions::default());
    };
    Ok(m::NamespaceOptions {
        network: m::NamespaceMode::try_from(o.network).map_err(bad)?,
        pid: m::NamespaceMode::try_from(o.pid).map_err(bad)?,
        ipc: m::NamespaceMode::try_from(o.ipc).map_err(bad)?,
        target_id: o.target_id,
        userns_options: match o.userns_options {
            None => None,
            Some(u) => Some(m::UserNamespace {
                mode: m::NamespaceMode::try_from(u.mode).map_err(bad)?,
                uids: u.uids.into_iter().map(idmap).collect(),
                gids: u.gids.into_iter().map(idmap).collect(),
            }),
        },
    })
}

fn idmap(i: cri::IdMapping) -> m::IdMapping {
    m::IdMapping {
        host_id: i.host_id,
        container_id: i.container_id,
        length: i.length,
    }
}

fn profile(p: Option<cri::SecurityProfile>) -> Result<Option<m::SecurityProfile>, Status> {
    p.map(|p| {
        Ok(m::SecurityProfile {
            profile_type: m::ProfileType::try_from(p.profile_type).map_err(bad)?,
            localhost_ref: p.localhost_ref,
        })
    })
    .transpose()
}

/// `apparmor`, or when that is unset the deprecated `apparmor_profile`:
/// `runtime/default`, `unconfined`, `localhost/<profile>`; empty is unset.
fn apparmor(
    p: Option<cri::SecurityProfile>,
    legacy: &str,
) -> Result<Option<m::SecurityProfile>, Status> {
    if p.is_some() || legacy.is_empty() {
        return profile(p);
    }
    let (profile_type, localhost_ref) = match legacy {
        "unconfined" => (m::ProfileType::Unconfined, ""),
        "runtime/default" => (m::ProfileType::RuntimeDefault, ""),
        _ => match legacy.strip_prefix("localhost/") {
            Some(name) => (m::ProfileType::Localhost, name),
            None => {
                return Err(Status::invalid_argument(format!(
                    "apparmor_profile {legacy:?}: want runtime/default, unconfined or localhost/<profile>"
                )));
            }
        },
    };
    Ok(Some(m::SecurityProfile {
        profile_type,
        localhost_ref: localhost_ref.to_string(),
    }))
}

/// Refuse what an LSM would have to enforce and berth would otherwise
/// drop without a word: an AppArmor profile of the node (Localhost) and
/// SELinux labels. RuntimeDefault and Unconfined need nothing.
fn lsm_checked(
    apparmor: Option<m::SecurityProfile>,
    selinux: Option<&cri::SeLinuxOption>,
) -> Result<Option<m::SecurityProfile>, Status> {
    use berth_runtime::kernel::{apparmor_enabled, selinux_enabled};
    match lsm_refusal(
        apparmor.as_ref(),
        selinux,
        apparmor_enabled(),
        selinux_enabled(),
    ) {
        Some(why) => Err(Status::failed_precondition(why)),
        None => Ok(apparmor),
    }
}

/// Why [`lsm_checked`] refuses, given which LSMs the node runs.
fn lsm_refusal(
    apparmor: Option<&m::SecurityProfile>,
    selinux: Option<&cri::SeLinuxOption>,
    apparmor_on: bool,
    selinux_on: bool,
) -> Option<String> {
    if let Some(p) = apparmor.filter(|p| p.profile_type == m::ProfileType::Localhost) {
        return Some(if apparmor_on {
            format!(
                "AppArmor profile {:?}: berth does not apply AppArmor profiles yet",
                p.localhost_ref
            )
        } else {
            format!(
                "AppArmor profile {:?}: AppArmor is not enabled on this node (no LSM to enforce it)",
                p.localhost_ref
            )
        });
    }
    let labels = selinux.filter(|o| {
        !(o.user.is_empty() && o.role.is_empty() && o.r#type.is_empty() && o.level.is_empty())
    })?;
    let label = format!(
        "{}:{}:{}:{}",
        labels.user, labels.role, labels.r#type, labels.level
    );
    Some(if selinux_on {
        format!("SELinux label {label}: berth does not apply SELinux labels yet")
    } else {
        format!("SELinux label {label}: SELinux is not enabled on this node (no LSM to enforce it)")
    })
}

/// `seccomp`, or when that is unset the deprecated `seccomp_profile_path`,
/// read as containerd reads it: `runtime/default` (or `docker/default`),
/// `unconfined`, `localhost/<absolute path>`; empty means unset.
fn seccomp(
    p: Option<cri::SecurityProfile>,
    legacy: &str,
) -> Result<Option<m::SecurityProfile>, Status> {
    if p.is_some() || legacy.is_empty() {
        return profile(p);
    }
    let (profile_type, localhost_ref) = match legacy {
        "unconfined" => (m::ProfileType::Unconfined, ""),
        "runtime/default" | "docker/default" => (m::ProfileType::RuntimeDefault, ""),
        _ => match legacy.strip_prefix("localhost/") {
            Some(path) => (m::ProfileType::Localhost, path),
            None => {
                return Err(Status::invalid_argument(format!(
                    "seccomp_profile_path {legacy:?}: not runtime/default, unconfined or localhost/<path>"
                )));
            }
        },
    };
    Ok(Some(m::SecurityProfile {
        profile_type,
        localhost_ref: localhost_ref.to_string(),
    }))
}

pub fn resources(r: cri::LinuxContainerResources) -> m::LinuxResources {
    m::LinuxResources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus,
        cpuset_mems: r.cpuset_mems,
        hugepage_limits: r
            .hugepage_limits
            .into_iter()
            .map(|h| m::HugepageLimit {
                page_size: h.page_size,
                limit: h.limit,
            })
            .collect(),
        unified: map(r.unified),
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
    }
}

pub fn sandbox_config(c: cri::PodSandboxConfig) -> Result<m::SandboxConfig, Status> {
    let linux = c.linux.unwrap_or_default();
    let sc = linux.security_context.unwrap_or_default();
    Ok(m::SandboxConfig {
        metadata: c.metadata.map(|md| m::SandboxMetadata {
            name: md.name,
            uid: md.uid,
            namespace: md.namespace,
            attempt: md.attempt,
        }),
        hostname: c.hostname,
        log_directory: c.log_directory,
        dns_config: c.dns_config.map(|d| m::DnsConfig {
            servers: d.servers,
            searches: d.searches,
            options: d.options,
        }),
        port_mappings: c
            .port_mappings
            .into_iter()
            .map(|p| {
                Ok(m::PortMapping {
                    protocol: m::Protocol::try_from(p.protocol).map_err(bad)?,
                    container_port: p.container_port,
                    host_port: p.host_port,
                    host_ip: p.host_ip,
                })
            })
            .collect::<Result<_, Status>>()?,
        labels: map(c.labels),
        annotations: map(c.annotations),
        linux: m::LinuxSandboxConfig {
            cgroup_parent: linux.cgroup_parent,
            security_context: m::SandboxSecurityContext {
                namespace_options: ns_options(sc.namespace_options)?,
                run_as_user: sc.run_as_user.map(|v| v.value),
                run_as_group: sc.run_as_group.map(|v| v.value),
                readonly_rootfs: sc.readonly_rootfs,
                supplemental_groups: sc.supplemental_groups,
                supplemental_groups_policy: m::SupplementalGroupsPolicy::try_from(
                    sc.supplemental_groups_policy,
                )
                .map_err(bad)?,
                privileged: sc.privileged,
                #[allow(deprecated)]
                seccomp: seccomp(sc.seccomp, &sc.seccomp_profile_path)?,
                apparmor: lsm_checked(profile(sc.apparmor)?, sc.selinux_options.as_ref())?,
            },
            sysctls: map(linux.sysctls),
            overhead: linux.overhead.map(resources),
            resources: linux.resources.map(resources),
        },
    })
}

/// ContainerConfig.stop_signal: RUNTIME_DEFAULT (0) is None (the image's,
/// else SIGTERM); a value the enum has not is refused.
fn stop_signal(v: i32) -> Result<Option<i32>, Status> {
    let sig = cri::Signal::try_from(v)
        .map_err(|_| Status::invalid_argument(format!("stop_signal {v} is not a Signal")))?;
    if sig == cri::Signal::RuntimeDefault {
        return Ok(None);
    }
    berth_runtime::service::cri_signal_number(sig.as_str_name())
        .map(Some)
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "stop_signal {} is not a signal of this node",
                sig.as_str_name()
            ))
        })
}

/// A signal number as CRI's Signal enum (RUNTIME_DEFAULT for one it has
/// no name for).
pub fn cri_signal(n: i32) -> i32 {
    berth_runtime::service::cri_signal_name(n)
        .and_then(|name| cri::Signal::from_str_name(&name))
        .unwrap_or(cri::Signal::RuntimeDefault) as i32
}

pub fn container_config(c: cri::ContainerConfig) -> Result<m::ContainerConfig, Status> {
    let linux = c.linux.unwrap_or_default();
    let sc = linux.security_context.unwrap_or_default();
    let caps = sc.capabilities.unwrap_or_default();
    Ok(m::ContainerConfig {
        metadata: c.metadata.map(|md| m::ContainerMetadata {
            name: md.name,
            attempt: md.attempt,
        }),
        image: c
            .image
            .map(|i| m::ImageSpec {
                image: i.image,
                annotations: map(i.annotations),
                user_specified_image: i.user_specified_image,
            })
            .unwrap_or_default(),
        command: c.command,
        args: c.args,
        working_dir: c.working_dir,
        envs: c
            .envs
            .into_iter()
            .enumerate()
            .map(|(i, kv)| env(i, kv))
            .collect::<Result<_, _>>()?,
        mounts: c
            .mounts
            .into_iter()
            .map(|mt| {
                Ok(m::Mount {
                    container_path: mt.container_path,
                    host_path: mt.host_path,
                    readonly: mt.readonly,
                    selinux_relabel: mt.selinux_relabel,
                    propagation: m::MountPropagation::try_from(mt.propagation).map_err(bad)?,
                    recursive_read_only: mt.recursive_read_only,
                    image: mt.image.map(|i| i.image).unwrap_or_default(),
                    image_sub_path: mt.image_sub_path,
                    image_ref: String::new(),
                    uid_mappings: mt.uid_mappings.into_iter().map(idmap).collect(),
                    gid_mappings: mt.gid_mappings.into_iter().map(idmap).collect(),
                })
            })
            .collect::<Result<_, Status>>()?,
        devices: c
            .devices
            .into_iter()
            .map(|d| m::Device {
                container_path: d.container_path,
                host_path: d.host_path,
                permissions: d.permissions,
            })
            .collect(),
        labels: map(c.labels),
        annotations: map(c.annotations),
        log_path: c.log_path,
        stdin: c.stdin,
        stdin_once: c.stdin_once,
        tty: c.tty,
        stop_signal: stop_signal(c.stop_signal)?,
        linux: m::LinuxContainerConfig {
            resources: linux.resources.map(resources),
            security_context: m::ContainerSecurityContext {
                capabilities: m::Capabilities {
                    add_capabilities: caps.add_capabilities,
                    drop_capabilities: caps.drop_capabilities,
                    add_ambient_capabilities: caps.add_ambient_capabilities,
                },
                privileged: sc.privileged,
                namespace_options: ns_options(sc.namespace_options)?,
                run_as_user: sc.run_as_user.map(|v| v.value),
                run_as_group: sc.run_as_group.map(|v| v.value),
                run_as_username: sc.run_as_username,
                readonly_rootfs: sc.readonly_rootfs,
                supplemental_groups: sc.supplemental_groups,
                supplemental_groups_policy: m::SupplementalGroupsPolicy::try_from(
                    sc.supplemental_groups_policy,
                )
                .map_err(bad)?,
                no_new_privs: sc.no_new_privs,
                masked_paths: sc.masked_paths,
                readonly_paths: sc.readonly_paths,
                #[allow(deprecated)]
                seccomp: seccomp(sc.seccomp, &sc.seccomp_profile_path)?,
                #[allow(deprecated)]
                apparmor: lsm_checked(
                    apparmor(sc.apparmor, &sc.apparmor_profile)?,
                    sc.selinux_options.as_ref(),
                )?,
            },
        },
    })
}

/// Domain namespace options back to CRI (PodSandboxStatus reports them).
pub fn ns_options_to_cri(o: &m::NamespaceOptions) -> cri::NamespaceOption {
    let mode = |m: m::NamespaceMode| match m {
        m::NamespaceMode::Pod => cri::NamespaceMode::Pod as i32,
        m::NamespaceMode::Container => cri::NamespaceMode::Container as i32,
        m::NamespaceMode::Node => cri::NamespaceMode::Node as i32,
        m::NamespaceMode::Target => cri::NamespaceMode::Target as i32,
    };
    cri::NamespaceOption {
        network: mode(o.network),
        pid: mode(o.pid),
        ipc: mode(o.ipc),
        target_id: o.target_id.clone(),
        userns_options: o.userns_options.as_ref().map(|u| cri::UserNamespace {
            mode: mode(u.mode),
            uids: u.uids.iter().map(idmap_to_cri).collect(),
            gids: u.gids.iter().map(idmap_to_cri).collect(),
        }),
    }
}

pub fn idmap_to_cri(i: &m::IdMapping) -> cri::IdMapping {
    cri::IdMapping {
        host_id: i.host_id,
        container_id: i.container_id,
        length: i.length,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsm_profiles_are_refused_where_no_lsm_would_enforce_them() {
        let local = m::SecurityProfile {
            profile_type: m::ProfileType::Localhost,
            localhost_ref: "k8s-deny-write".into(),
        };
        let default = m::SecurityProfile::default();
        let e = lsm_refusal(Some(&local), None, false, false).unwrap();
        assert!(
            e.contains("AppArmor is not enabled") && e.contains("k8s-deny-write"),
            "{e}"
        );
        let e = lsm_refusal(Some(&local), None, true, false).unwrap();
        assert!(e.contains("does not apply AppArmor profiles"), "{e}");
        assert_eq!(lsm_refusal(Some(&default), None, false, false), None);
        assert_eq!(
            lsm_refusal(None, Some(&cri::SeLinuxOption::default()), false, false),
            None
        );
        let label = cri::SeLinuxOption {
            level: "s0:c1,c2".into(),
            ..Default::default()
        };
        let e = lsm_refusal(None, Some(&label), false, false).unwrap();
        assert!(
            e.contains("SELinux is not enabled") && e.contains("s0:c1,c2"),
            "{e}"
        );
    }

    #[test]
    fn the_deprecated_apparmor_profile_string_is_read() {
        let p = apparmor(None, "localhost/custom").unwrap().unwrap();
        assert_eq!(p.profile_type, m::ProfileType::Localhost);
        assert_eq!(p.localhost_ref, "custom");
        let p = apparmor(None, "runtime/default").unwrap().unwrap();
        assert_eq!(p.profile_type, m::ProfileType::RuntimeDefault);
        assert_eq!(apparmor(None, "").unwrap(), None);
        assert!(apparmor(None, "bogus").is_err());
    }

    #[test]
    fn the_deprecated_seccomp_path_counts_only_when_seccomp_is_unset() {
        let got = |p: Option<cri::SecurityProfile>, legacy: &str| {
            seccomp(p, legacy).map(|p| p.map(|p| (p.profile_type, p.localhost_ref)))
        };
        assert_eq!(got(None, "").unwrap(), None);
        assert_eq!(
            got(None, "runtime/default").unwrap(),
            Some((m::ProfileType::RuntimeDefault, String::new()))
        );
        assert_eq!(
            got(None, "docker/default").unwrap(),
            Some((m::ProfileType::RuntimeDefault, String::new()))
        );
        assert_eq!(
            got(None, "unconfined").unwrap(),
            Some((m::ProfileType::Unconfined, String::new()))
        );
        assert_eq!(
            got(None, "localhost//var/lib/kubelet/seccomp/a.json").unwrap(),
            Some((
                m::ProfileType::Localhost,
                "/var/lib/kubelet/seccomp/a.json".into()
            ))
        );
        assert!(got(None, "bogus").is_err());
        let explicit = cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::Unconfined as i32,
            localhost_ref: String::new(),
        };
        assert_eq!(
            got(Some(explicit), "runtime/default").unwrap(),
            Some((m::ProfileType::Unconfined, String::new()))
        );
    }

    #[test]
    fn env_values_that_are_not_utf8_are_refused_naming_the_variable() {
        let kv = |key: &str, value: &[u8]| cri::KeyValue {
            key: key.into(),
            value: value.to_vec(),
        };
        let ok = env(0, kv("GREETING", "grüß".as_bytes())).unwrap();
        assert_eq!((ok.key.as_str(), ok.value.as_str()), ("GREETING", "grüß"));
        let err = env(3, kv("RAW", &[0x66, 0xff, 0x6f])).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            err.message(),
            "envs[3] (\"RAW\"): a value that is not UTF-8 is not supported by berth"
        );
    }
}
