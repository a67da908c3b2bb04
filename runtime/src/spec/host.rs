//! What spec generation asks of the node: whether a mount source exists,
//! which device a path is; and making directories inside a container's
//! root filesystem without ever leaving it.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType,
};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::SpecError;
use super::mounts::lexically_clean;
use crate::model::ContainerConfig;

/// A device node on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDevice {
    pub path: PathBuf,
    pub kind: LinuxDeviceType,
    pub major: i64,
    pub minor: i64,
    /// Permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The questions spec generation asks the node (faked in tests).
pub trait Host {
    /// Whether `path` exists (symlinks followed).
    fn exists(&self, path: &Path) -> io::Result<bool>;

    /// The device node at `path` (symlinks followed), or every device node
    /// below it when it is a directory, each under its own path.
    fn devices(&self, path: &Path) -> io::Result<Vec<HostDevice>>;

    /// The mount point of the mount holding `path` and its propagation
    /// tags from mountinfo (`shared:N`, `master:N`; none when private).
    fn mount_propagation(&self, path: &Path) -> io::Result<(PathBuf, Vec<String>)>;

    /// The contents of the regular file at `path` (symlinks followed), if
    /// it holds at most `max` bytes (a seccomp profile).
    fn read_small_file(&self, path: &Path, max: u64) -> io::Result<Vec<u8>>;
}

/// The real node.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealHost;

impl Host for RealHost {
    fn read_small_file(&self, path: &Path, max: u64) -> io::Result<Vec<u8>> {
        use std::io::Read as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        // Non-blocking: a FIFO there must not hang the open.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)?;
        let meta = f.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let mut out = Vec::new();
        f.take(max + 1).read_to_end(&mut out)?;
        if out.len() as u64 > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than {max} bytes"),
            ));
        }
        Ok(out)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        match std::fs::metadata(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn devices(&self, path: &Path) -> io::Result<Vec<HostDevice>> {
        let st = rustix::fs::stat(path)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory {
            let mut out = Vec::new();
            devices_below(path, &mut out)?;
            return Ok(out);
        }
        device_from_stat(path, &st)
            .map(|d| vec![d])
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a device node"))
    }

    fn mount_propagation(&self, path: &Path) -> io::Result<(PathBuf, Vec<String>)> {
        // A missing source is made later: its nearest existing ancestor's
        // mount is the one it will be on.
        let mut p = path;
        let real = loop {
            match std::fs::canonicalize(p) {
                Ok(r) => break r.join(path.strip_prefix(p).unwrap_or(Path::new(""))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => match p.parent() {
                    Some(parent) => p = parent,
                    None => return Err(e),
                },
                Err(e) => return Err(e),
            }
        };
        let mi = std::fs::read_to_string("/proc/self/mountinfo")?;
        crate::shim::plan::mount_holding(&mi, &real)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no mount holds it"))
    }
}

fn device_from_stat(path: &Path, st: &rustix::fs::Stat) -> Option<HostDevice> {
    use rustix::fs::FileType;
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::CharacterDevice => LinuxDeviceType::C,
        FileType::BlockDevice => LinuxDeviceType::B,
        FileType::Fifo => LinuxDeviceType::P,
        _ => return None,
    };
    Some(HostDevice {
        path: path.to_path_buf(),
        kind,
        major: i64::from(rustix::fs::major(st.st_rdev)),
        minor: i64::from(rustix::fs::minor(st.st_rdev)),
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
    })
}

/// The device nodes under a directory, as containerd's `getDevices` walks
/// it: no symlinks, no FIFOs, not the pty/shm/fd/mqueue subtrees.
fn devices_below(dir: &Path, out: &mut Vec<HostDevice>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let path = entry.path();
        let ft = entry.file_type()?;
        if ft.is_dir() {
            let skip = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];
            if !skip.iter().any(|s| name == *s) {
                devices_below(&path, out)?;
            }
            continue;
        }
        if name == "console" || ft.is_symlink() {
            continue;
        }
        let st = match rustix::fs::lstat(&path) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        if let Some(d) = device_from_stat(&path, &st).filter(|d| d.kind != LinuxDeviceType::P) {
            out.push(d);
        }
    }
    Ok(())
}

/// The devices every container (and a pod's pause process) may use
/// (runc's allowed list): mknod of any, and null, zero, full, random,
/// urandom, tty, console, ptmx, ptys; deny all first.
pub fn default_device_rules() -> Result<Vec<LinuxDeviceCgroup>, OciSpecError> {
    let mut rules = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()?,
    ];
    for (typ, major, minor, access) in [
        (LinuxDeviceType::C, None, None, "m"),
        (LinuxDeviceType::B, None, None, "m"),
        (LinuxDeviceType::C, Some(1), Some(3), "rwm"),
        (LinuxDeviceType::C, Some(1), Some(5), "rwm"),
        (LinuxDeviceType::C, Some(1), Some(7), "rwm"),
        (LinuxDeviceType::C, Some(1), Some(8), "rwm"),
        (LinuxDeviceType::C, Some(1), Some(9), "rwm"),
        (LinuxDeviceType::C, Some(5), Some(0), "rwm"),
        (LinuxDeviceType::C, Some(5), Some(1), "rwm"),
        (LinuxDeviceType::C, Some(5), Some(2), "rwm"),
        (LinuxDeviceType::C, Some(136), None, "rwm"),
    ] {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(typ)
            .access(access);
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        rules.push(b.build()?);
    }
    Ok(rules)
}

/// The CRI's devices as device nodes and cgroup rules (a directory brings
/// every device below it); privileged adds every device of the node, all
/// allowed.
pub(super) fn plan_devices(
    c: &ContainerConfig,
    host: &dyn Host,
) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), SpecError> {
    let node = |d: &HostDevice, path: &Path| -> Result<LinuxDevice, OciSpecError> {
        LinuxDeviceBuilder::default()
            .path(path)
            .typ(d.kind)
            .major(d.major)
            .minor(d.minor)
            .file_mode(d.mode)
            .uid(d.uid)
            .gid(d.gid)
            .build()
    };
    let mut nodes = Vec::new();
    let mut rules = default_device_rules()?;
    for d in &c.devices {
        let host_path = Path::new(&d.host_path);
        let found = host
            .devices(host_path)
            .map_err(|source| SpecError::Device {
                path: d.host_path.clone(),
                source,
            })?;
        let access = if d.permissions.is_empty() {
            "rwm"
        } else {
            d.permissions.as_str()
        };
        for hd in &found {
            let dest = match hd.path.strip_prefix(host_path) {
                Ok(rest) if !rest.as_os_str().is_empty() => Path::new(&d.container_path).join(rest),
                _ => PathBuf::from(&d.container_path),
            };
            nodes.push(node(hd, &dest)?);
            rules.push(
                LinuxDeviceCgroupBuilder::default()
                    .allow(true)
                    .typ(hd.kind)
                    .major(hd.major)
                    .minor(hd.minor)
                    .access(access)
                    .build()?,
            );
        }
    }
    if c.security_context().privileged {
        // Every device of the node too, under its own path, and no rule
        // but "all allowed".
        let all = host
            .devices(Path::new("/dev"))
            .map_err(|source| SpecError::Device {
                path: "/dev".into(),
                source,
            })?;
        for d in &all {
            if !nodes.iter().any(|n: &LinuxDevice| n.path() == &d.path) {
                nodes.push(node(d, &d.path)?);
            }
        }
        let allow_all = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .access("rwm")
            .build()?;
        rules = vec![allow_all];
    }
    Ok((nodes, rules))
}

/// Make `dirs` (absolute in the container) inside the mounted `rootfs`,
/// with missing parents, mode 0755, owned by root. Every component is
/// resolved with `RESOLVE_IN_ROOT`: an image's symlink can point anywhere,
/// it still lands inside the rootfs.
pub fn mkdir_in_rootfs(rootfs: &Path, dirs: &[PathBuf]) -> Result<(), SpecError> {
    let dir_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e: Errno| SpecError::RootfsDir {
            path,
            source: e.into(),
        }
    };
    let root = rustix::fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(dir_err(rootfs))?;
    let open_in_root = |rel: &Path| -> Result<OwnedFd, Errno> {
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        rustix::fs::openat2(
            &root,
            rel,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    };
    for dir in dirs {
        let clean = lexically_clean(&dir.display().to_string());
        let mut rel = PathBuf::new();
        for part in Path::new(&clean).components().filter_map(|c| match c {
            Component::Normal(s) => Some(s),
            _ => None,
        }) {
            let parent = open_in_root(&rel).map_err(dir_err(dir))?;
            rel.push(part);
            match open_in_root(&rel) {
                Ok(_) => continue,
                Err(Errno::NOENT) => {}
                Err(e) => return Err(dir_err(dir)(e)),
            }
            match rustix::fs::mkdirat(&parent, part, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(dir_err(dir)(e)),
            }
            open_in_root(&rel).map_err(dir_err(dir))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Device;
    use crate::spec::tests::{Fixture, dev};
    use std::fs;

    #[test]
    fn devices_are_resolved_and_allowed() {
        let mut f = Fixture::new();
        f.host.devices = vec![
            dev("/dev/fuse", 10, 229),
            dev("/dev/dri/card0", 226, 0),
            dev("/dev/dri/renderD128", 226, 128),
        ];
        f.ctr.devices = vec![
            Device {
                container_path: "/dev/fuse".into(),
                host_path: "/dev/fuse".into(),
                permissions: String::new(),
            },
            Device {
                container_path: "/dev/gpu".into(),
                host_path: "/dev/dri".into(),
                permissions: "rw".into(),
            },
        ];
        let s = f.spec();
        let l = s.linux().as_ref().unwrap();
        let devs: Vec<_> = l
            .devices()
            .as_ref()
            .unwrap()
            .iter()
            .map(|d| (d.path().display().to_string(), d.major(), d.minor()))
            .collect();
        assert_eq!(
            devs,
            [
                ("/dev/fuse".to_string(), 10, 229),
                ("/dev/gpu/card0".to_string(), 226, 0),
                ("/dev/gpu/renderD128".to_string(), 226, 128),
            ]
        );
        let rules: Vec<String> = l
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap()
            .iter()
            .map(|r| format!("{} {}", if r.allow() { "allow" } else { "deny" }, r))
            .collect();
        assert_eq!(rules[0], "deny a *:* rwm");
        assert!(rules.contains(&"allow c 1:3 rwm".to_string()), "{rules:?}");
        assert!(rules.ends_with(&[
            "allow c 10:229 rwm".to_string(),
            "allow c 226:0 rw".to_string(),
            "allow c 226:128 rw".to_string(),
        ]));
    }

    #[test]
    fn missing_device_is_an_error_naming_it() {
        let mut f = Fixture::new();
        f.ctr.devices = vec![Device {
            container_path: "/dev/nope".into(),
            host_path: "/dev/nope".into(),
            permissions: "rwm".into(),
        }];
        let e = f.build().unwrap_err();
        assert!(e.to_string().starts_with("device /dev/nope:"), "{e}");
    }

    #[test]
    fn mkdir_in_rootfs_makes_nested_dirs() {
        let root = tempfile::tempdir().unwrap();
        mkdir_in_rootfs(root.path(), &["/var/lib/data".into(), "/srv".into()]).unwrap();
        assert!(root.path().join("var/lib/data").is_dir());
        assert!(root.path().join("srv").is_dir());
        // Again: nothing to do.
        mkdir_in_rootfs(root.path(), &["/var/lib/data".into()]).unwrap();
    }

    #[test]
    fn mkdir_in_rootfs_follows_symlinks_only_inside_the_rootfs() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        // /escape -> <outside> (absolute). Resolved in the root that is
        // <root>/<outside>: missing there, so it fails, and the real
        // <outside> is never touched.
        std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).unwrap();
        assert!(mkdir_in_rootfs(root.path(), &["/escape/x".into()]).is_err());
        assert!(!outside.path().join("x").exists());
        // Once the image has that directory, the link leads into it.
        let inside = root.path().join(outside.path().strip_prefix("/").unwrap());
        fs::create_dir_all(&inside).unwrap();
        mkdir_in_rootfs(root.path(), &["/escape/x".into()]).unwrap();
        assert!(inside.join("x").is_dir());
        assert!(!outside.path().join("x").exists());
        // `..` cannot climb above the root either.
        std::os::unix::fs::symlink("../../../..", root.path().join("up")).unwrap();
        mkdir_in_rootfs(root.path(), &["/up/y".into()]).unwrap();
        assert!(root.path().join("y").is_dir());
    }

    #[test]
    fn real_host_knows_dev_null() {
        let d = RealHost.devices(Path::new("/dev/null")).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].kind, d[0].major, d[0].minor),
            (LinuxDeviceType::C, 1, 3)
        );
        assert!(RealHost.exists(Path::new("/dev/null")).unwrap());
        assert!(!RealHost.exists(Path::new("/no/such/path")).unwrap());
        let e = RealHost.devices(Path::new("/etc/hostname"));
        assert!(e.is_err());
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("plain"), "x").unwrap();
        assert!(RealHost.devices(tmp.path()).unwrap().is_empty());
    }
}
