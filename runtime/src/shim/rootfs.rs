//! The container's mount namespace: the mounts of the spec inside the
//! root filesystem, /dev, pivot_root, masked and read-only paths. Runs in
//! the container process before it waits for Start.
//!
//! Every destination is resolved by the kernel inside the root
//! (openat2 RESOLVE_IN_ROOT), and mounted onto the resolved file through
//! /proc/self/fd/N, so that a symlink in an image can never aim a mount at
//! the host.

#![deny(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mkdirat, mknodat};
use nix::sys::statvfs::{FsFlags, statvfs};
use nix::unistd::{Gid, Uid, chdir, fchdir, fchownat, pivot_root, symlinkat};

use super::cgroup::Cgroup;
use super::plan::{DEV_SYMLINKS, DeviceNode, MountKind, MountStep};

#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct RootfsError {
    pub op: &'static str,
    pub path: String,
    pub source: Errno,
}

type Result<T> = std::result::Result<T, RootfsError>;

fn fail(op: &'static str, path: impl AsRef<Path>) -> impl FnOnce(Errno) -> RootfsError {
    let path = path.as_ref().display().to_string();
    move |source| RootfsError { op, path, source }
}

/// What to create when a mount point is missing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Create {
    No,
    Dir,
    File,
}

fn how() -> OpenHow {
    OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// Opens `rel` (relative to the container root `root`) as an O_PATH fd,
/// every symlink resolved inside the root, creating what is missing.
pub fn open_in_root(root: BorrowedFd<'_>, rel: &Path, create: Create) -> Result<OwnedFd> {
    match openat2(root, rel, how()) {
        Err(Errno::ENOENT) if create != Create::No => {}
        other => return other.map_err(fail("resolve in container root", rel)),
    }
    let parts: Vec<_> = rel.components().collect();
    let mut prefix = PathBuf::new();
    let mut parent: Option<OwnedFd> = None;
    for (i, part) in parts.iter().enumerate() {
        prefix.push(part);
        match openat2(root, &prefix, how()) {
            Ok(fd) => {
                parent = Some(fd);
                continue;
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(fail("resolve in container root", &prefix)(e)),
        }
        let dir = parent.as_ref().map(|f| f.as_fd()).unwrap_or(root);
        let last = i + 1 == parts.len();
        let made = if last && create == Create::File {
            // O_EXCL: never follows a dangling symlink out of the root.
            openat(
                dir,
                part.as_os_str(),
                OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
            .map(drop)
        } else {
            mkdirat(dir, part.as_os_str(), Mode::from_bits_truncate(0o755))
        };
        match made {
            // EEXIST after ENOENT: a dangling symlink (or a race). Refuse
            // rather than guess where it should point.
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(fail("create mount point", &prefix)(e)),
        }
        parent = Some(openat2(root, &prefix, how()).map_err(fail(
            "resolve in container root (dangling symlink?)",
            &prefix,
        ))?);
    }
    match parent {
        Some(fd) => Ok(fd),
        None => Err(fail("resolve in container root", rel)(Errno::EINVAL)),
    }
}

fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn mount_at(
    source: Option<&str>,
    target: &OwnedFd,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    what: &Path,
) -> Result<()> {
    let data = data.filter(|d| !d.is_empty());
    mount(source, fd_path(target).as_str(), fstype, flags, data).map_err(fail("mount", what))
}

/// Everything the root filesystem needs, from the spec.
pub struct RootfsSetup<'a> {
    pub rootfs: &'a Path,
    pub propagation: MsFlags,
    pub mounts: &'a [MountStep],
    pub devices: &'a [DeviceNode],
    pub cgroup: Option<&'a Cgroup>,
    pub new_cgroup_ns: bool,
    /// The pty slave, bind-mounted on /dev/console.
    pub console: Option<BorrowedFd<'a>>,
    /// The pod's user namespace, for idmapped binds.
    pub userns: Option<BorrowedFd<'a>>,
}

/// Before pivot_root: the tree made private (or as asked), the rootfs bound
/// onto itself so it is a mount point, the spec's mounts, /dev filled.
/// Returns an fd of the new root.
pub fn prepare(s: &RootfsSetup<'_>) -> Result<OwnedFd> {
    mount(None::<&str>, "/", None::<&str>, s.propagation, None::<&str>)
        .map_err(fail("set propagation of", "/"))?;
    if s.propagation.contains(MsFlags::MS_SHARED) {
        // runc's rootfsParentMountPrivate: pivot_root refuses a shared
        // parent, and the rootfs's own mounts must not reach the host.
        let mi = crate::kernel::read_proc("/proc/self/mountinfo", 16 * 1024)
            .map_err(|e| fail("read", "/proc/self/mountinfo")(io_errno(&e)))?;
        if let Some(parent) = super::plan::shared_parent_mount(&mi, s.rootfs) {
            mount(
                None::<&str>,
                &parent,
                None::<&str>,
                MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(fail("make private", &parent))?;
        }
    }
    mount(
        Some(s.rootfs),
        s.rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(fail("bind rootfs", s.rootfs))?;
    let root: OwnedFd = nix::fcntl::open(
        s.rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail("open rootfs", s.rootfs))?;
    let mut dev_fs = false;
    for m in s.mounts {
        mount_one(root.as_fd(), m, s)?;
        dev_fs |= m.is_dev_fs();
    }
    if dev_fs {
        make_devices(root.as_fd(), s.devices)?;
        if let Some(console) = s.console {
            let target = open_in_root(root.as_fd(), Path::new("dev/console"), Create::File)?;
            // By its name: the fd's mount is the old namespace's, which a
            // bind from /proc/self/fd/N would refuse.
            let fd_link = format!("/proc/self/fd/{}", console.as_raw_fd());
            let source = std::fs::read_link(&fd_link)
                .map_err(|e| fail("read pty name", &fd_link)(io_errno(&e)))?;
            let source = source.to_string_lossy();
            mount_at(
                Some(&source),
                &target,
                None,
                MsFlags::MS_BIND,
                None,
                Path::new("/dev/console"),
            )?;
        }
    }
    Ok(root)
}

fn mount_one(root: BorrowedFd<'_>, m: &MountStep, s: &RootfsSetup<'_>) -> Result<()> {
    let dest = &m.dest;
    match &m.kind {
        MountKind::Bind { source, recursive } => {
            let is_dir = std::fs::metadata(source)
                .map_err(|e| fail("bind source", source)(io_errno(&e)))?
                .is_dir();
            let create = if is_dir { Create::Dir } else { Create::File };
            let target = open_in_root(root, dest, create)?;
            let mut flags = MsFlags::MS_BIND;
            if *recursive {
                flags |= MsFlags::MS_REC;
            }
            if m.idmap {
                // A copy of the source's tree seen through the pod's user
                // namespace, attached where the bind would go.
                let userns = s.userns.ok_or_else(|| {
                    fail("idmapped bind (no user namespace)", dest)(Errno::EINVAL)
                })?;
                let tree = crate::kernel::idmapped_tree(source, userns, *recursive)
                    .map_err(|e| fail("idmapped mount of", source)(io_errno(&e)))?;
                crate::kernel::move_mount_onto(tree.as_fd(), target.as_fd())
                    .map_err(|e| fail("move_mount", dest)(io_errno(&e)))?;
            } else {
                let src = source.to_string_lossy();
                // The source too: the request's to fix (a file over a
                // directory of the image), so the error names both.
                let what = PathBuf::from(format!("{src} on /{}", dest.display()));
                mount_at(Some(&src), &target, None, flags, None, &what)?;
            }
            if m.needs_remount() {
                // The fd above is the covered directory; look again to find
                // the new mount.
                let target = open_in_root(root, dest, Create::No)?;
                let flags = m.flags | MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
                mount_at(None, &target, None, flags & !MsFlags::MS_REC, None, dest)?;
            }
            if m.recursive_readonly {
                let target = open_in_root(root, dest, Create::No)?;
                crate::kernel::mount_setattr_recursive_rdonly(target.as_fd())
                    .map_err(fail("mount_setattr (recursive read-only)", dest))?;
            }
        }
        MountKind::Fs { fstype, source } => {
            let target = open_in_root(root, dest, Create::Dir)?;
            mount_at(
                Some(source),
                &target,
                Some(fstype),
                m.flags,
                Some(&m.data),
                dest,
            )?;
        }
        MountKind::Cgroup => mount_cgroup(root, m, s)?,
    }
    if !m.propagation.is_empty() {
        let target = open_in_root(root, dest, Create::No)?;
        for p in &m.propagation {
            mount_at(None, &target, None, *p, None, dest)?;
        }
    }
    Ok(())
}

/// /sys/fs/cgroup in the container: on v2 with its own cgroup namespace a
/// cgroup2 mount; otherwise the container's own cgroup directories bound
/// read-only (on v1, one per hierarchy over a tmpfs), as runc does.
fn mount_cgroup(root: BorrowedFd<'_>, m: &MountStep, s: &RootfsSetup<'_>) -> Result<()> {
    let dest = &m.dest;
    let flags = m.flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let target = open_in_root(root, dest, Create::Dir)?;
    let Some(cg) = s.cgroup else {
        // No cgroup of its own: an empty read-only tmpfs says so.
        return mount_at(
            Some("tmpfs"),
            &target,
            Some("tmpfs"),
            flags | MsFlags::MS_RDONLY,
            Some("mode=755"),
            dest,
        );
    };
    if cg.v2 {
        if s.new_cgroup_ns {
            return mount_at(Some("cgroup2"), &target, Some("cgroup2"), flags, None, dest);
        }
        let src = cg
            .dirs
            .first()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default();
        mount_at(Some(&src), &target, None, MsFlags::MS_BIND, None, dest)?;
        let target = open_in_root(root, dest, Create::No)?;
        return mount_at(
            None,
            &target,
            None,
            flags | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
            None,
            dest,
        );
    }
    mount_at(
        Some("tmpfs"),
        &target,
        Some("tmpfs"),
        flags & !MsFlags::MS_RDONLY,
        Some("mode=755"),
        dest,
    )?;
    // The tmpfs was mounted just now by this process, so nothing of the
    // image is in it: its directories are made and opened relative to its
    // root, with no walk through the image's paths.
    let tmpfs = open_in_root(root, dest, Create::No)?;
    let mut binds = Vec::with_capacity(cg.dirs.len());
    for (dir, h) in cg.dirs.iter().zip(&cg.hierarchies) {
        let Some(name) = h.mountpoint.file_name() else {
            continue;
        };
        let sub = dest.join(name);
        mkdirat(&tmpfs, name, Mode::from_bits_truncate(0o755))
            .map_err(fail("create mount point", &sub))?;
        let t = openat(
            &tmpfs,
            name,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(fail("open mount point", &sub))?;
        let src = dir.to_string_lossy();
        mount_at(Some(&src), &t, None, MsFlags::MS_BIND, None, &sub)?;
        binds.push((name, sub));
    }
    let bind_flags = flags | MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    if m.flags.contains(MsFlags::MS_RDONLY) && !crate::failpoint::enabled("shim.no_mount_setattr") {
        // The tmpfs and every bind read-only (nosuid, nodev, noexec) by
        // one recursive mount_setattr (Linux 5.12) rather than a remount
        // each.
        let attrs = libc::MOUNT_ATTR_RDONLY
            | libc::MOUNT_ATTR_NOSUID
            | libc::MOUNT_ATTR_NODEV
            | libc::MOUNT_ATTR_NOEXEC;
        match crate::kernel::mount_setattr_recursive(tmpfs.as_fd(), attrs) {
            Ok(()) => return Ok(()),
            Err(Errno::ENOSYS) => {}
            Err(e) => return Err(fail("mount_setattr (read-only)", dest)(e)),
        }
    }
    for (name, sub) in &binds {
        // Looked up again: now the bind's root, not its mount point.
        let t = openat(
            &tmpfs,
            *name,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(fail("open mount point", sub))?;
        mount_at(None, &t, None, bind_flags, None, sub)?;
    }
    if m.flags.contains(MsFlags::MS_RDONLY) {
        let t = open_in_root(root, dest, Create::No)?;
        mount_at(
            None,
            &t,
            None,
            flags | MsFlags::MS_REMOUNT,
            Some("mode=755"),
            dest,
        )?;
    }
    Ok(())
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn make_devices(root: BorrowedFd<'_>, devices: &[DeviceNode]) -> Result<()> {
    for d in devices {
        let (Some(parent), Some(name)) = (d.path.parent(), d.path.file_name()) else {
            continue;
        };
        let dir = open_in_root(root, parent, Create::Dir)?;
        let kind = match d.kind {
            'b' => SFlag::S_IFBLK,
            'p' => SFlag::S_IFIFO,
            _ => SFlag::S_IFCHR,
        };
        let mode = Mode::from_bits_truncate(d.mode);
        match mknodat(&dir, name, kind, mode, makedev(d.major, d.minor)) {
            Ok(()) => {}
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(fail("mknod", &d.path)(e)),
        }
        if d.uid != 0 || d.gid != 0 {
            fchownat(
                &dir,
                name,
                Some(Uid::from_raw(d.uid)),
                Some(Gid::from_raw(d.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(fail("chown", &d.path))?;
        }
    }
    let dev = open_in_root(root, Path::new("dev"), Create::Dir)?;
    for (link, target) in DEV_SYMLINKS {
        let name = link.trim_start_matches("dev/");
        match symlinkat(target, &dev, name) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(fail("symlink", link)(e)),
        }
    }
    Ok(())
}

/// Makes `root` the root of the mount namespace and lets go of the old one.
pub fn pivot(root: &OwnedFd, rootfs: &Path) -> Result<()> {
    let old_root: OwnedFd = nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail("open old root", "/"))?;
    fchdir(root).map_err(fail("chdir", rootfs))?;
    pivot_root(".", ".").map_err(fail("pivot_root", rootfs))?;
    // The old root is stacked on the new one. Into it (as runc does): "."
    // may still be the new root, whose mounts (an rshared bind) must keep
    // their propagation. Make sure unmounting it cannot propagate to the
    // host, then detach it.
    fchdir(&old_root).map_err(fail("chdir to old root", "/"))?;
    drop(old_root);
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(fail("make old root a slave", "/"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(fail("unmount old root", "/"))?;
    chdir("/").map_err(fail("chdir", "/"))
}

fn fs_flags(path: &str) -> MsFlags {
    let Ok(st) = statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
    ] {
        if f.contains(fs) {
            out |= ms;
        }
    }
    out
}

/// After pivot_root, where every path is the container's: masked paths,
/// read-only paths, a read-only root, the working directory.
pub fn finish(
    masked: &[String],
    readonly: &[String],
    root_readonly: bool,
    cwd: &Path,
) -> Result<()> {
    for p in masked {
        let meta = match std::fs::metadata(p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(fail("stat masked path", p)(io_errno(&e))),
        };
        if meta.is_dir() {
            mount(
                Some("tmpfs"),
                p.as_str(),
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(fail("mask", p))?;
        } else {
            mount(
                Some("/dev/null"),
                p.as_str(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(fail("mask", p))?;
        }
    }
    for p in readonly {
        match mount(
            Some(p.as_str()),
            p.as_str(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Ok(()) => {}
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(fail("bind read-only path", p)(e)),
        }
        let flags = fs_flags(p) | MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(None::<&str>, p.as_str(), None::<&str>, flags, None::<&str>)
            .map_err(fail("remount read-only", p))?;
    }
    if root_readonly {
        let flags = fs_flags("/") | MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(None::<&str>, "/", None::<&str>, flags, None::<&str>)
            .map_err(fail("remount read-only", "/"))?;
    }
    // The working directory is created if the image lacks it, as containerd
    // does with WorkingDir.
    let cwd = if cwd.as_os_str().is_empty() {
        Path::new("/")
    } else {
        cwd
    };
    if let Err(e) = chdir(cwd) {
        if e != Errno::ENOENT {
            return Err(fail("chdir", cwd)(e));
        }
        std::fs::create_dir_all(cwd)
            .map_err(|e| fail("create working directory", cwd)(io_errno(&e)))?;
        chdir(cwd).map_err(fail("chdir", cwd))?;
    }
    Ok(())
}
