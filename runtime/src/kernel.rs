//! The oldest kernel berth runs on, checked when berthd starts.
//!
//! Linux 5.10 (the oldest LTS kernel node images still ship, e.g. Debian
//! 11). What berth needs and from which release:
//!
//! * `openat2` with `RESOLVE_IN_ROOT` (5.6): every path of an image layer
//!   and of a bind mount is resolved inside its root with it; there is no
//!   safe fallback;
//! * the cgroup v2 device program (`BPF_CGROUP_DEVICE`, 4.15);
//! * `pidfd_open` (5.3): direct kills of a container's process.
//!
//! Newer features are used where the kernel has them and fallen back from
//! where it has not: overlayfs `lowerdir+` (6.8; else the classic option),
//! `clone3(CLONE_INTO_CGROUP)` (5.7; else fork and move), `cgroup.kill`
//! (5.14; else freeze, kill, thaw), `BPF_F_REPLACE` (5.6; else attach the
//! new device program, then detach the old), statx's mount-root attribute
//! (5.8; else mountinfo), `CLOSE_RANGE_CLOEXEC` (5.11; else each
//! descriptor of /proc/self/fd), BPF programs charged to the memory cgroup
//! rather than RLIMIT_MEMLOCK (5.11; else berthd raises its limit).

/// mount_setattr(2) on the mount `fd` itself (AT_EMPTY_PATH) with `attr`.
fn mount_setattr(
    fd: std::os::fd::BorrowedFd<'_>,
    flags: libc::c_int,
    attr: &libc::mount_attr,
) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `fd` is open for the whole call, the path is an empty
    // NUL-terminated string (AT_EMPTY_PATH: the fd itself), and `attr`
    // outlives the call, its size passed with it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | flags,
            attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        Err(nix::errno::Errno::last())
    } else {
        Ok(())
    }
}

/// Make the mount at `target` (an fd of its root) and every mount below it
/// read-only: mount_setattr(2) with AT_RECURSIVE and MOUNT_ATTR_RDONLY
/// (Linux 5.12), what runc's `rro` option does.
pub fn mount_setattr_recursive_rdonly(target: std::os::fd::BorrowedFd<'_>) -> nix::Result<()> {
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    mount_setattr(target, libc::AT_RECURSIVE, &attr)
}

/// Set `attrs` (MOUNT_ATTR_RDONLY, _NOSUID, ...) on the mount at `target`
/// (an fd of its root) and on every mount below it: mount_setattr(2) with
/// AT_RECURSIVE (Linux 5.12; ENOSYS before).
pub fn mount_setattr_recursive(target: std::os::fd::BorrowedFd<'_>, attrs: u64) -> nix::Result<()> {
    let attr = libc::mount_attr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    mount_setattr(target, libc::AT_RECURSIVE, &attr)
}

/// Give the detached mount `tree` (from open_tree with OPEN_TREE_CLONE)
/// the idmapping of the user namespace `userns`: mount_setattr(2) with
/// MOUNT_ATTR_IDMAP (Linux 5.12, per filesystem after that: ext4, xfs and
/// btrfs 5.15, overlayfs layers 5.19, tmpfs 6.3). `recursive`: its
/// submounts too.
pub fn mount_setattr_idmap(
    tree: std::os::fd::BorrowedFd<'_>,
    userns: std::os::fd::BorrowedFd<'_>,
    recursive: bool,
) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    mount_setattr(tree, if recursive { libc::AT_RECURSIVE } else { 0 }, &attr)
}

/// A detached copy of the mount tree at `path` (recursive: with its
/// submounts) idmapped with `userns`, ready for move_mount.
pub fn idmapped_tree(
    path: &std::path::Path,
    userns: std::os::fd::BorrowedFd<'_>,
    recursive: bool,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::mount::OpenTreeFlags;
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    let tree = rustix::mount::open_tree(rustix::fs::CWD, path, flags)?;
    mount_setattr_idmap(std::os::fd::AsFd::as_fd(&tree), userns, recursive)
        .map_err(std::io::Error::from)?;
    Ok(tree)
}

/// Attach the detached mount `tree` on `target` (an fd of the directory
/// or file to cover).
pub fn move_mount_onto(
    tree: std::os::fd::BorrowedFd<'_>,
    target: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<()> {
    use rustix::mount::MoveMountFlags;
    rustix::mount::move_mount(
        tree,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )?;
    Ok(())
}

/// Whether this kernel has mount_setattr(2) (Linux 5.12), which recursive
/// read-only mounts need: probed once with an fd that is not open (EBADF
/// where the call exists, ENOSYS where it does not).
pub fn has_mount_setattr() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        // SAFETY: fd -1 and a NULL attr of size 0: the kernel checks and
        // refuses them without touching memory.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                -1,
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                std::ptr::null::<libc::mount_attr>(),
                0usize,
            )
        };
        !(r < 0 && nix::errno::Errno::last() == nix::errno::Errno::ENOSYS)
    })
}

/// Whether AppArmor is the node's (enabled) LSM: read once (the LSMs are
/// chosen at boot).
pub fn apparmor_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|t| t.trim() == "Y")
    })
}

/// Whether SELinux is enabled on the node (selinuxfs mounted): read once.
pub fn selinux_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::path::Path::new("/sys/fs/selinux/enforce").exists())
}

/// The oldest supported release, (major, minor).
pub const MINIMUM: (u32, u32) = (5, 10);

/// Why `release` (uname -r, e.g. "6.1.0-18-amd64") is too old, if it is.
pub fn too_old(release: &str) -> Option<String> {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().ok());
    let (Some(Some(major)), Some(Some(minor))) = (parts.next(), parts.next()) else {
        return Some(format!(
            "cannot read the kernel release {release:?}; berth needs Linux {}.{} or newer",
            MINIMUM.0, MINIMUM.1
        ));
    };
    ((major, minor) < MINIMUM).then(|| {
        format!(
            "Linux {release} is older than {}.{}, the oldest kernel berth supports (it resolves every image and mount path with openat2, Linux 5.6, and uses pidfds and cgroup BPF): upgrade the node's kernel",
            MINIMUM.0, MINIMUM.1
        )
    })
}

/// Before Linux 5.11 every BPF program counts against the locked memory
/// limit of the user that loads it (since, against its memory cgroup):
/// berthd loads one device program per container on cgroup v2, and
/// systemd's default 64 KiB (shared with systemd's own programs) runs out
/// within a few containers. On such a kernel the limit is raised for berthd,
/// as runc and youki do; shims get the original one back (see
/// [`memlock_for_children`]), so containers never inherit it.
pub fn raise_memlock_for_bpf() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    if !release_before(&release, (5, 11)) {
        return;
    }
    let old = getrlimit(Resource::Memlock);
    let _ = ORIGINAL_MEMLOCK.set((old.current, old.maximum));
    let unlimited = Rlimit {
        current: None,
        maximum: None,
    };
    if let Err(e) = setrlimit(Resource::Memlock, unlimited) {
        // Without CAP_SYS_RESOURCE: the soft limit up to the hard one.
        let up = Rlimit {
            current: old.maximum,
            maximum: old.maximum,
        };
        let r = setrlimit(Resource::Memlock, up);
        tracing::warn!(
            error = %e,
            raised_to_hard_limit = r.is_ok(),
            "Linux before 5.11 charges BPF programs to RLIMIT_MEMLOCK and it cannot be lifted: device programs may fail to load on cgroup v2 (LimitMEMLOCK=infinity in berthd's unit)"
        );
    }
}

static ORIGINAL_MEMLOCK: std::sync::OnceLock<(Option<u64>, Option<u64>)> =
    std::sync::OnceLock::new();

/// The locked memory limit berthd started with, if it raised its own
/// (soft, hard; None: unlimited). Shims are started with it.
pub fn memlock_for_children() -> Option<(Option<u64>, Option<u64>)> {
    ORIGINAL_MEMLOCK.get().copied()
}

fn release_before(release: &str, v: (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(Some(major)), Some(Some(minor))) => (major, minor) < v,
        _ => false,
    }
}

/// This node's kernel, checked.
pub fn check() -> Result<(), String> {
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    too_old(&release).map_or(Ok(()), Err)
}

/// A /proc file's text, read with room for `hint` bytes from the start:
/// procfs reports size 0, so `fs::read_to_string` begins with a 32-byte
/// read and doubles (nine reads for a short mountinfo, each generating
/// its text again from where the last stopped); this takes one or two.
pub fn read_proc(path: impl AsRef<std::path::Path>, hint: usize) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::with_capacity(hint);
    std::fs::File::open(path)?.read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lts_kernels_from_5_10_pass_and_older_ones_are_named() {
        for ok in [
            "5.10.0-28-amd64",
            "5.15.0-91-generic",
            "6.1.0-18-cloud-amd64",
            "6.18.44-fc-v1300",
            "10.0",
        ] {
            assert_eq!(too_old(ok), None, "{ok}");
        }
        for old in ["5.4.0-150-generic", "4.19.0", "3.10.0-1160.el7.x86_64"] {
            let e = too_old(old).unwrap_or_else(|| panic!("{old} passed"));
            assert!(e.contains(old) && e.contains("5.10"), "{e}");
        }
        assert!(too_old("garbage").is_some());
    }

    #[test]
    fn memlock_matters_before_5_11() {
        assert!(release_before("5.10.0-28-amd64", (5, 11)));
        assert!(!release_before("5.11.0", (5, 11)));
        assert!(!release_before("6.1.0-18-amd64", (5, 11)));
    }

    #[test]
    fn this_node_passes() {
        assert_eq!(check(), Ok(()));
    }
}
