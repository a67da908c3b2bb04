//! A container's mounts: containerd's defaults, the pod's files and /dev/shm,
//! the CRI's bind mounts with their propagation, in an order where no mount
//! hides another; and the image VOLUMEs left to make.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use berth_image::manifest::RunConfig;
use oci_spec::OciSpecError;
use oci_spec::runtime::{Mount, MountBuilder};

use super::{ContainerInputs, Host, SpecError};
use crate::model::{self, ContainerConfig, MountPropagation, NamespaceMode};

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
    /// Idmapped with the pod's user namespace (the CRI mount's mappings).
    idmap: Option<(model::IdMapping, model::IdMapping)>,
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
    let userns = super::pod_userns(input)?;

    let mut binds: Vec<BindMount> = c
        .mounts
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let idmap = mount_idmap(i, m, userns)?;
            if m.image.is_empty() {
                return Ok(BindMount {
                    idmap,
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
                // Its layers are idmapped already, as the rootfs's are.
                idmap: None,
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
                idmap: None,
            });
        }
    }
    binds.sort_by_key(|b| depth(&b.container_path));

    let taken: HashSet<String> = binds
        .iter()
        .map(|b| lexically_clean(&b.container_path))
        .collect();
    let dev_taken = taken.contains("/dev");
    // The host ids of the container's root and of its tty group (5).
    let root = userns.map(|(u, g)| (u.host_id, g.host_id, g.to_host(5).unwrap_or(g.host_id)));
    let mut out: Vec<Mount> = default_mounts(sc.privileged, root)?
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
        let mut mount = MountBuilder::default()
            .destination(&b.container_path)
            .typ("bind")
            .source(&b.host_path)
            .options(options)
            .build()?;
        if let Some((u, g)) = &b.idmap {
            mount.set_uid_mappings(Some(vec![super::oci_idmap(u)?]));
            mount.set_gid_mappings(Some(vec![super::oci_idmap(g)?]));
        }
        out.push(mount);
    }
    host_dirs.sort();
    host_dirs.dedup();
    Ok(MountPlan {
        mounts: out,
        host_dirs,
        propagation,
    })
}

/// A CRI mount's idmapping: kubelet gives every mount of a pod with a user
/// namespace that pod's mappings; berth idmaps with the pod's user
/// namespace, so other mappings (or any without one) are refused.
fn mount_idmap(
    i: usize,
    m: &model::Mount,
    userns: Option<(model::IdMapping, model::IdMapping)>,
) -> Result<Option<(model::IdMapping, model::IdMapping)>, SpecError> {
    let given = match (m.uid_mappings.as_slice(), m.gid_mappings.as_slice()) {
        ([], []) => return Ok(None),
        ([u], [g]) => (*u, *g),
        _ => {
            return Err(SpecError::UserNamespace {
                field: format!("mounts[{i}].uid_mappings"),
                reason: "an idmapped mount takes one uid and one gid mapping".into(),
            });
        }
    };
    match userns {
        Some(pod) if pod == given => Ok(Some(given)),
        Some(_) => Err(SpecError::UserNamespace {
            field: format!("mounts[{i}].uid_mappings"),
            reason: "must be the pod's user namespace mappings (berth idmaps mounts with the pod's user namespace)".into(),
        }),
        None => Err(SpecError::UserNamespace {
            field: format!("mounts[{i}].uid_mappings"),
            reason: "an idmapped mount needs a pod with a user namespace of its own (userns_options mode POD)".into(),
        }),
    }
}

/// containerd's default mounts, without /run, plus the container's cgroup.
/// In a pod with a user namespace (`root`: the host ids of the container's
/// root) /dev and its pty group belong to the container: those mounts are
/// made by the shim on the host's side, where ids are the host's.
fn default_mounts(
    privileged: bool,
    root: Option<(u32, u32, u32)>,
) -> Result<Vec<Mount>, OciSpecError> {
    let rw = if privileged { "rw" } else { "ro" };
    let dev_owner = root.map(|(u, g, _)| format!("uid={u},gid={g}"));
    let tty_gid = format!("gid={}", root.map_or(5, |(_, _, tty)| tty));
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
                "TTY_GID",
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
            let mut options: Vec<String> = options
                .iter()
                .map(|o| match *o {
                    "TTY_GID" => tty_gid.clone(),
                    o => o.to_string(),
                })
                .collect();
            if *typ == "tmpfs"
                && let Some(o) = &dev_owner
            {
                options.push(o.clone());
            }
            MountBuilder::default()
                .destination(*dest)
                .typ(*typ)
                .source(*source)
                .options(options)
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

    fn userns_fixture() -> (Fixture, crate::model::IdMapping) {
        let m = crate::model::IdMapping {
            container_id: 0,
            host_id: 65536 * 3,
            length: 65536,
        };
        let u = crate::model::UserNamespace {
            mode: NamespaceMode::Pod,
            uids: vec![m],
            gids: vec![m],
        };
        let mut f = Fixture::new();
        f.pod
            .linux
            .security_context
            .namespace_options
            .userns_options = Some(u.clone());
        f.ctr
            .linux
            .security_context
            .namespace_options
            .userns_options = Some(u);
        (f, m)
    }

    #[test]
    fn a_pod_user_namespace_is_joined_and_its_mounts_are_the_containers_roots() {
        let (f, m) = userns_fixture();
        let s = f.spec();
        assert!(namespaces(&s).contains(&(
            LinuxNamespaceType::User,
            Some("/run/berth/pods/p1/user".into())
        )));
        let linux = s.linux().as_ref().unwrap();
        let maps = linux.uid_mappings().as_ref().unwrap();
        assert_eq!(
            (maps[0].container_id(), maps[0].host_id(), maps[0].size()),
            (0, m.host_id, m.length)
        );
        assert!(linux.gid_mappings().is_some());
        let dev = options(mount(&s, "/dev").unwrap());
        let owner = format!("uid={},gid={}", m.host_id, m.host_id);
        assert!(dev.contains(&owner), "{dev:?}");
        let pts = options(mount(&s, "/dev/pts").unwrap());
        assert!(pts.contains(&format!("gid={}", m.host_id + 5)), "{pts:?}");

        // Without one: no user namespace, the node's owners.
        let s = Fixture::new().spec();
        assert!(
            !namespaces(&s)
                .iter()
                .any(|(t, _)| *t == LinuxNamespaceType::User)
        );
        assert!(options(mount(&s, "/dev/pts").unwrap()).contains(&"gid=5".to_string()));
    }

    #[test]
    fn idmapped_mounts_take_the_pods_mappings_only() {
        let (mut f, m) = userns_fixture();
        let bind = |uid: Vec<crate::model::IdMapping>| CriMount {
            container_path: "/data".into(),
            host_path: "/srv/data".into(),
            gid_mappings: uid.clone(),
            uid_mappings: uid,
            ..Default::default()
        };
        f.ctr.mounts = vec![bind(vec![m])];
        let s = f.spec();
        let data = mount(&s, "/data").unwrap();
        assert_eq!(data.uid_mappings().as_ref().map(Vec::len), Some(1));
        assert_eq!(data.gid_mappings().as_ref().map(Vec::len), Some(1));

        let other = crate::model::IdMapping {
            host_id: m.host_id * 2,
            ..m
        };
        f.ctr.mounts = vec![bind(vec![other])];
        let e = f.build().unwrap_err();
        assert!(e.is_invalid_argument(), "{e}");
        assert!(e.to_string().contains("pod's"), "{e}");

        // No user namespace in the pod: nothing to idmap with.
        let mut f = Fixture::new();
        f.ctr.mounts = vec![bind(vec![m])];
        let e = f.build().unwrap_err();
        assert!(e.is_invalid_argument(), "{e}");

        // A container whose user namespace is not its pod's.
        let (mut f, _) = userns_fixture();
        f.ctr
            .linux
            .security_context
            .namespace_options
            .userns_options = None;
        f.ctr
            .linux
            .security_context
            .namespace_options
            .userns_options = Some(crate::model::UserNamespace {
            mode: NamespaceMode::Node,
            ..Default::default()
        });
        assert!(f.build().unwrap_err().is_invalid_argument());
    }
}
