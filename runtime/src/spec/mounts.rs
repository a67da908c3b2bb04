//! A container's mounts: containerd's defaults, the pod's files and /dev/shm,
//! the CRI's bind mounts with their propagation, in an order where no mount
//! hides another; and the image VOLUMEs left to make.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use berth_image::manifest::RunConfig;
use oci_spec::OciSpecError;
use oci_spec::runtime::{Mount, MountBuilder};

use super::{ContainerInputs, Host, SpecError};
use crate::model::{ContainerConfig, MountPropagation, NamespaceMode};

/// The mounts of a container and what they need.
pub(super) struct MountPlan {
    pub(super) mounts: Vec<Mount>,
    /// Missing CRI mount sources.
    pub(super) host_dirs: Vec<PathBuf>,
    /// `linux.rootfsPropagation`, when a mount needs more than private.
    pub(super) propagation: Option<String>,
}

/// A CRI-style mount: the CRI's own, or one berth adds (the pod's files).
struct BindMount {
    /// The CRI's own (its source may be missing); else one of the pod's.
    from_cri: bool,
    container_path: String,
    host_path: String,
    readonly: bool,
    recursive_read_only: bool,
    propagation: MountPropagation,
    /// An image volume: read-only, nosuid, nodev, noexec (KEP-4639).
    image_volume: bool,
}

/// All mounts, in order: the defaults a CRI mount does not replace, then
/// the bind mounts sorted by depth (containerd's `orderedMounts`), so a
/// mount is never hidden by one of a parent directory. Also the sources to
/// create and `rootfsPropagation`.
pub(super) fn plan_mounts(
    input: &ContainerInputs<'_>,
    host: &dyn Host,
) -> Result<MountPlan, SpecError> {
    let c = input.config;
    let sc = c.security_context();
    let paths = input.pod.paths;

    let mut binds: Vec<BindMount> = c
        .mounts
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if m.image.is_empty() {
                return Ok(BindMount {
                    from_cri: true,
                    container_path: m.container_path.clone(),
                    host_path: m.host_path.clone(),
                    readonly: m.readonly,
                    recursive_read_only: m.recursive_read_only,
                    propagation: m.propagation,
                    image_volume: false,
                });
            }
            let src = input
                .image_volumes
                .iter()
                .find(|(n, _)| *n == i)
                .map(|(_, p)| p)
                .ok_or_else(|| SpecError::ImageVolume {
                    field: format!("mounts[{i}]"),
                })?;
            Ok(BindMount {
                // berth made it: never a missing source to create.
                from_cri: false,
                container_path: m.container_path.clone(),
                host_path: src.display().to_string(),
                readonly: true,
                recursive_read_only: m.recursive_read_only,
                propagation: MountPropagation::Private,
                image_volume: true,
            })
        })
        .collect::<Result<_, SpecError>>()?;
    let cri_paths: HashSet<String> = binds
        .iter()
        .map(|b| lexically_clean(&b.container_path))
        .collect();

    // The pod's files, unless a CRI mount takes their place.
    let shm = if sc.namespace_options.ipc == NamespaceMode::Node {
        Some(PathBuf::from("/dev/shm"))
    } else {
        paths.dev_shm.clone()
    };
    for (dest, src, readonly) in [
        ("/etc/hostname", &paths.hostname_file, sc.readonly_rootfs),
        ("/etc/hosts", &paths.hosts_file, sc.readonly_rootfs),
        ("/etc/resolv.conf", &paths.resolv_conf, sc.readonly_rootfs),
        ("/dev/shm", &shm, false),
    ] {
        if let Some(src) = src
            && !cri_paths.contains(dest)
        {
            binds.push(BindMount {
                from_cri: false,
                container_path: dest.into(),
                host_path: src.display().to_string(),
                readonly,
                recursive_read_only: false,
                propagation: MountPropagation::Private,
                image_volume: false,
            });
        }
    }
    binds.sort_by_key(|b| depth(&b.container_path));

    let taken: HashSet<String> = binds
        .iter()
        .map(|b| lexically_clean(&b.container_path))
        .collect();
    let dev_taken = taken.contains("/dev");
    let mut out: Vec<Mount> = default_mounts(sc.privileged)?
        .into_iter()
        .filter(|m| {
            let dest = m.destination().display().to_string();
            let under_taken_dev = dev_taken && dest.starts_with("/dev/");
            !(taken.contains(&dest) || under_taken_dev)
        })
        .collect();

    let mut host_dirs = Vec::new();
    let mut propagation: Option<String> = None;
    for b in &binds {
        // Only the CRI's own sources may be missing (berth made the rest).
        if b.from_cri {
            let exists =
                host.exists(Path::new(&b.host_path))
                    .map_err(|source| SpecError::HostPath {
                        path: b.host_path.clone(),
                        source,
                    })?;
            if !exists {
                host_dirs.push(PathBuf::from(&b.host_path));
            }
        }
        // containerd's ensureShared / ensureSharedOrSlave: propagation
        // needs a source on a mount that has it.
        let check = |want: &'static str, ok: &[&str]| -> Result<(), SpecError> {
            let (mountpoint, tags) =
                host.mount_propagation(Path::new(&b.host_path))
                    .map_err(|source| SpecError::HostPath {
                        path: b.host_path.clone(),
                        source,
                    })?;
            if tags.iter().any(|t| ok.iter().any(|o| t.starts_with(o))) {
                Ok(())
            } else {
                Err(SpecError::Propagation {
                    path: b.host_path.clone(),
                    mountpoint,
                    want,
                })
            }
        };
        let mut options = vec!["rbind".to_string()];
        match b.propagation {
            MountPropagation::Private => options.push("rprivate".into()),
            MountPropagation::HostToContainer => {
                check("shared or slave", &["shared:", "master:"])?;
                options.push("rslave".into());
                if propagation.as_deref() != Some("rshared") {
                    propagation = Some("rslave".into());
                }
            }
            MountPropagation::Bidirectional => {
                check("shared", &["shared:"])?;
                options.push("rshared".into());
                propagation = Some("rshared".into());
            }
        }
        // Like containerd, a read-only rootfs does not make mounts read-only.
        if b.readonly {
            options.push("ro".into());
            if b.recursive_read_only {
                // Submounts too (mount_setattr AT_RECURSIVE); "ro" stays for
                // the top mount.
                options.push("rro".into());
            }
        } else {
            options.push("rw".into());
        }
        if b.image_volume {
            options.extend(["nosuid", "nodev", "noexec"].map(String::from));
        }
        out.push(
            MountBuilder::default()
                .destination(&b.container_path)
                .typ("bind")
                .source(&b.host_path)
                .options(options)
                .build()?,
        );
    }
    host_dirs.sort();
    host_dirs.dedup();
    Ok(MountPlan {
        mounts: out,
        host_dirs,
        propagation,
    })
}

/// containerd's default mounts, without /run, plus the container's cgroup.
fn default_mounts(privileged: bool) -> Result<Vec<Mount>, OciSpecError> {
    let rw = if privileged { "rw" } else { "ro" };
    let table: [(&str, &str, &str, &[&str]); 7] = [
        ("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        (
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        (
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        (
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        (
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        ("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", rw]),
        (
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", rw],
        ),
    ];
    table
        .iter()
        .map(|(dest, typ, source, options)| {
            MountBuilder::default()
                .destination(*dest)
                .typ(*typ)
                .source(*source)
                .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
                .build()
        })
        .collect()
}

/// Path components below `/`: the sort key of mounts.
fn depth(p: &str) -> usize {
    Path::new(p)
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count()
}

/// An absolute path with `.`, `..` and repeated slashes resolved lexically,
/// never above `/`.
pub(super) fn lexically_clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str().unwrap_or_default()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    format!("/{}", parts.join("/"))
}

/// Image VOLUMEs that no CRI mount covers, as directories to make in the
/// rootfs (containerd's default for image volumes).
pub(super) fn image_volumes(c: &ContainerConfig, image: &RunConfig) -> Vec<PathBuf> {
    let covered: HashSet<String> = c
        .mounts
        .iter()
        .map(|m| lexically_clean(&m.container_path))
        .collect();
    let mut out: Vec<PathBuf> = image
        .volumes
        .iter()
        .flatten()
        .map(|(dst, _)| lexically_clean(dst))
        .filter(|dst| dst != "/" && !covered.contains(dst))
        .map(PathBuf::from)
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Mount as CriMount;
    use crate::spec::PodPaths;
    use crate::spec::tests::{Fixture, mount, namespaces, options};
    use oci_spec::runtime::LinuxNamespaceType;
    use std::collections::BTreeMap;

    #[test]
    fn default_mounts_are_containerds_without_run() {
        let mut f = Fixture::new();
        f.paths = PodPaths::default();
        f.pod.linux.security_context.namespace_options.network = NamespaceMode::Node;
        f.pod.linux.security_context.namespace_options.ipc = NamespaceMode::Node;
        let s = f.spec();
        let dests: Vec<_> = s
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup"
            ]
        );
        assert_eq!(
            mount(&s, "/dev/shm").unwrap().typ().as_deref(),
            Some("tmpfs")
        );
    }

    #[test]
    fn pod_files_and_shm_are_bind_mounted() {
        let f = Fixture::new();
        let s = f.spec();
        for (dest, src) in [
            ("/etc/hostname", "/run/berth/pods/p1/hostname"),
            ("/etc/hosts", "/run/berth/pods/p1/hosts"),
            ("/etc/resolv.conf", "/run/berth/pods/p1/resolv.conf"),
            ("/dev/shm", "/run/berth/pods/p1/shm"),
        ] {
            let m = mount(&s, dest).unwrap_or_else(|| panic!("{dest} not mounted"));
            assert_eq!(m.typ().as_deref(), Some("bind"));
            assert_eq!(m.source().as_deref(), Some(Path::new(src)));
            assert_eq!(options(m), ["rbind", "rprivate", "rw"]);
        }
        // The pod's shm replaces the default tmpfs: only one /dev/shm.
        let shm = s
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.destination() == Path::new("/dev/shm"))
            .count();
        assert_eq!(shm, 1);
    }

    #[test]
    fn readonly_rootfs_makes_pod_files_readonly_but_not_shm() {
        let mut f = Fixture::new();
        f.ctr.linux.security_context.readonly_rootfs = true;
        let s = f.spec();
        assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
        assert_eq!(
            options(mount(&s, "/etc/hosts").unwrap()).last().unwrap(),
            "ro"
        );
        assert_eq!(
            options(mount(&s, "/dev/shm").unwrap()).last().unwrap(),
            "rw"
        );
    }

    #[test]
    fn host_ipc_container_gets_the_nodes_shm() {
        let mut f = Fixture::new();
        f.pod.linux.security_context.namespace_options.ipc = NamespaceMode::Node;
        f.ctr.linux.security_context.namespace_options.ipc = NamespaceMode::Node;
        f.paths.ipc_ns = None;
        f.paths.dev_shm = None;
        let s = f.spec();
        assert_eq!(
            mount(&s, "/dev/shm").unwrap().source().as_deref(),
            Some(Path::new("/dev/shm"))
        );
        assert!(
            !namespaces(&s)
                .iter()
                .any(|(t, _)| *t == LinuxNamespaceType::Ipc)
        );
    }

    #[test]
    fn cri_mount_over_etc_hosts_wins_over_the_pod_file() {
        let mut f = Fixture::new();
        f.ctr.mounts.push(CriMount {
            container_path: "/etc/hosts".into(),
            host_path: "/var/lib/kubelet/pods/uid-1/etc-hosts".into(),
            ..Default::default()
        });
        f.host.existing = vec!["/var/lib/kubelet/pods/uid-1/etc-hosts".into()];
        let s = f.spec();
        let hosts: Vec<_> = s
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.destination() == Path::new("/etc/hosts"))
            .collect();
        assert_eq!(hosts.len(), 1);
        assert_eq!(
            hosts[0].source().as_deref(),
            Some(Path::new("/var/lib/kubelet/pods/uid-1/etc-hosts"))
        );
    }

    fn cri_mount(container: &str, host: &str, propagation: MountPropagation) -> CriMount {
        CriMount {
            container_path: container.into(),
            host_path: host.into(),
            propagation,
            ..Default::default()
        }
    }

    #[test]
    fn bidirectional_mount_is_rshared() {
        let mut f = Fixture::new();
        f.ctr.mounts.push(cri_mount(
            "/mnt/shared",
            "/srv/shared",
            MountPropagation::Bidirectional,
        ));
        f.host.existing = vec!["/srv/shared".into()];
        let s = f.spec();
        assert_eq!(
            options(mount(&s, "/mnt/shared").unwrap()),
            ["rbind", "rshared", "rw"]
        );
        assert_eq!(
            s.linux().as_ref().unwrap().rootfs_propagation().as_deref(),
            Some("rshared")
        );
    }

    #[test]
    fn host_to_container_mount_is_rslave() {
        let mut f = Fixture::new();
        f.ctr.mounts.push(cri_mount(
            "/mnt/in",
            "/srv/in",
            MountPropagation::HostToContainer,
        ));
        f.host.existing = vec!["/srv/in".into()];
        let s = f.spec();
        assert_eq!(
            options(mount(&s, "/mnt/in").unwrap()),
            ["rbind", "rslave", "rw"]
        );
        assert_eq!(
            s.linux().as_ref().unwrap().rootfs_propagation().as_deref(),
            Some("rslave")
        );
    }

    #[test]
    fn private_mount_is_rprivate_and_leaves_rootfs_propagation() {
        let mut f = Fixture::new();
        let mut m = cri_mount("/data", "/srv/data", MountPropagation::Private);
        m.readonly = true;
        f.ctr.mounts.push(m);
        f.host.existing = vec!["/srv/data".into()];
        let s = f.spec();
        assert_eq!(
            options(mount(&s, "/data").unwrap()),
            ["rbind", "rprivate", "ro"]
        );
        assert_eq!(s.linux().as_ref().unwrap().rootfs_propagation(), &None);
    }

    #[test]
    fn recursive_read_only_mount_is_ro_and_rro() {
        let mut f = Fixture::new();
        let mut m = cri_mount("/data", "/srv/data", MountPropagation::Private);
        m.readonly = true;
        m.recursive_read_only = true;
        f.ctr.mounts.push(m);
        f.host.existing = vec!["/srv/data".into()];
        assert_eq!(
            options(mount(&f.spec(), "/data").unwrap()),
            ["rbind", "rprivate", "ro", "rro"]
        );
    }

    #[test]
    fn mounts_are_sorted_parents_first() {
        let mut f = Fixture::new();
        for (c, h) in [
            ("/a/b/c", "/h1"),
            ("/a", "/h2"),
            ("/a/b", "/h3"),
            ("/z", "/h4"),
        ] {
            f.ctr
                .mounts
                .push(cri_mount(c, h, MountPropagation::Private));
            f.host.existing.push(h.into());
        }
        let s = f.spec();
        let binds: Vec<_> = s
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.typ().as_deref() == Some("bind"))
            .map(|m| m.destination().display().to_string())
            .collect();
        assert_eq!(
            binds,
            [
                "/a",
                "/z",
                "/a/b",
                "/etc/hostname",
                "/etc/hosts",
                "/etc/resolv.conf",
                "/dev/shm",
                "/a/b/c"
            ]
        );
    }

    #[test]
    fn missing_host_path_is_listed_to_create() {
        let mut f = Fixture::new();
        f.ctr.mounts.push(cri_mount(
            "/cache",
            "/var/cache/app",
            MountPropagation::Private,
        ));
        f.ctr
            .mounts
            .push(cri_mount("/data", "/srv/data", MountPropagation::Private));
        f.host.existing = vec!["/srv/data".into()];
        let out = f.build().unwrap();
        assert_eq!(out.host_dirs, [PathBuf::from("/var/cache/app")]);
    }

    #[test]
    fn cri_mount_over_dev_drops_the_default_dev_mounts() {
        let mut f = Fixture::new();
        f.ctr
            .mounts
            .push(cri_mount("/dev", "/dev", MountPropagation::Private));
        f.host.existing = vec!["/dev".into()];
        let s = f.spec();
        let under_dev: Vec<_> = s
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.destination().starts_with("/dev"))
            .map(|m| {
                (
                    m.destination().display().to_string(),
                    m.typ().clone().unwrap(),
                )
            })
            .collect();
        // The node's /dev bound, then the pod's shm over it.
        assert_eq!(
            under_dev,
            [
                ("/dev".into(), "bind".into()),
                ("/dev/shm".into(), "bind".into())
            ]
        );
    }

    #[test]
    fn image_volumes_not_covered_become_rootfs_dirs() {
        let mut f = Fixture::new();
        f.image.volumes = Some(BTreeMap::from([
            ("/var/lib/data".to_string(), serde_json::json!({})),
            ("/cache".to_string(), serde_json::json!({})),
            ("relative/vol".to_string(), serde_json::json!({})),
            ("/../../escape".to_string(), serde_json::json!({})),
        ]));
        f.ctr.mounts.push(cri_mount(
            "/cache/",
            "/srv/cache",
            MountPropagation::Private,
        ));
        f.host.existing = vec!["/srv/cache".into()];
        let out = f.build().unwrap();
        assert_eq!(
            out.rootfs_dirs,
            [
                PathBuf::from("/escape"),
                "/relative/vol".into(),
                "/var/lib/data".into(),
                "/usr/share/nginx".into(),
            ]
        );
    }
}
