//! A container's root filesystem: overlayfs of the image's layer snapshots
//! plus a fresh upper directory.
//!
//! Mounted with the new mount API, one `lowerdir+` per layer, so that an image
//! with many layers cannot overflow the one page of options that mount(2)
//! takes (each layer path is ~90 bytes: the classic form fails near 40
//! layers).

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn sys<E: Into<std::io::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> RootfsError {
    let what = what.into();
    move |e| RootfsError::Sys {
        what,
        source: e.into(),
    }
}

/// Where a container's layers live.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rootfs {
    /// The mount point (under the state dir; gone at reboot).
    pub target: PathBuf,
    /// Container-private directory holding `upper` and `work` (under root).
    pub layer_dir: PathBuf,
}

impl Rootfs {
    pub fn new(target: PathBuf, layer_dir: PathBuf) -> Self {
        Self { target, layer_dir }
    }

    /// Mount `lowers` (bottom layer first, as images list them) with a fresh
    /// upper directory at `target`. On error nothing stays mounted or made.
    pub fn mount(&self, lowers: &[PathBuf]) -> Result<(), RootfsError> {
        let upper = self.layer_dir.join("upper");
        let work = self.layer_dir.join("work");
        for d in [&upper, &work, &self.target] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(d)
                .map_err(sys(format!("creating {}", d.display())))?;
        }
        let r = self.mount_overlay(lowers, &upper, &work);
        if r.is_err() {
            self.remove();
        }
        r
    }

    fn mount_overlay(
        &self,
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
    ) -> Result<(), RootfsError> {
        let fs_fd = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
            .map_err(sys("fsopen(overlay)"))?;
        // An image without layers still needs one lower directory.
        let empty;
        let lowers: Vec<&Path> = if lowers.is_empty() {
            empty = self.layer_dir.join("empty");
            fs::create_dir_all(&empty).map_err(sys(format!("creating {}", empty.display())))?;
            vec![empty.as_path()]
        } else {
            // overlayfs lists the top layer first.
            lowers.iter().rev().map(PathBuf::as_path).collect()
        };
        for l in lowers {
            rustix::mount::fsconfig_set_string(&fs_fd, "lowerdir+", l)
                .map_err(sys(format!("overlay lowerdir+ {}", l.display())))?;
        }
        rustix::mount::fsconfig_set_string(&fs_fd, "upperdir", upper)
            .map_err(sys("overlay upperdir"))?;
        rustix::mount::fsconfig_set_string(&fs_fd, "workdir", work)
            .map_err(sys("overlay workdir"))?;
        rustix::mount::fsconfig_create(&fs_fd).map_err(sys("creating the overlay superblock"))?;
        let mnt = rustix::mount::fsmount(
            &fs_fd,
            FsMountFlags::FSMOUNT_CLOEXEC,
            MountAttrFlags::empty(),
        )
        .map_err(sys("fsmount(overlay)"))?;
        rustix::mount::move_mount(
            &mnt,
            "",
            rustix::fs::CWD,
            &self.target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(sys(format!(
            "mounting the root filesystem at {}",
            self.target.display()
        )))?;
        Ok(())
    }

    pub fn is_mounted(&self) -> bool {
        is_mountpoint(&self.target)
    }

    /// Unmount (lazily: a process that still holds it does not keep the
    /// call waiting) and remove the mount point and the container's layer.
    /// Idempotent; errors are logged, since this is cleanup.
    pub fn remove(&self) {
        while is_mountpoint(&self.target) {
            if let Err(e) = nix::mount::umount2(&self.target, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(path = %self.target.display(), error = %e, "unmounting root filesystem");
                break;
            }
        }
        for d in [&self.target, &self.layer_dir] {
            match fs::remove_dir_all(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %d.display(), error = %e, "removing root filesystem directory")
                }
            }
        }
    }
}

/// Whether `path` is a mount point: statx's MOUNT_ROOT attribute (one
/// syscall; reading /proc/self/mountinfo instead costs time in the number of
/// mounts, which made tearing down many containers quadratic), with
/// mountinfo only for kernels older than 5.8.
pub fn is_mountpoint(path: &Path) -> bool {
    use rustix::fs::{AtFlags, StatxAttributes, StatxFlags};
    match rustix::fs::statx(
        rustix::fs::CWD,
        path,
        AtFlags::NO_AUTOMOUNT | AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::empty(),
    ) {
        Ok(st) if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) => {
            st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
        }
        Ok(_) | Err(rustix::io::Errno::NOSYS) => is_mountpoint_by_mountinfo(path),
        Err(_) => false,
    }
}

fn is_mountpoint_by_mountinfo(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|m| unescape_mountinfo(m) == want)
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v as char);
            i += 4;
            continue;
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_layers_stack_with_the_top_one_winning() {
        let dir = tempfile::tempdir().unwrap();
        // 80 layers of long paths: more than the classic mount options hold.
        let mut lowers = Vec::new();
        for i in 0..80 {
            let l = dir.path().join(format!("layer-{i:03}-{}", "x".repeat(60)));
            fs::create_dir(&l).unwrap();
            fs::write(l.join("which"), format!("{i}")).unwrap();
            fs::write(l.join(format!("only-{i}")), "").unwrap();
            lowers.push(l);
        }
        let rootfs = Rootfs::new(dir.path().join("rootfs"), dir.path().join("ctr"));
        rootfs.mount(&lowers).unwrap();
        assert!(rootfs.is_mounted());
        let which = fs::read_to_string(rootfs.target.join("which"));
        let has_first = rootfs.target.join("only-0").exists();
        fs::write(rootfs.target.join("new-file"), "x").unwrap();
        let upper_has_it = dir.path().join("ctr/upper/new-file").exists();
        rootfs.remove();
        assert_eq!(which.unwrap(), "79", "the last image layer is on top");
        assert!(has_first);
        assert!(upper_has_it, "writes go to the container's upper dir");
        assert!(!rootfs.is_mounted());
        assert!(!dir.path().join("rootfs").exists());
        assert!(!dir.path().join("ctr").exists());
    }

    #[test]
    fn mount_points_are_told_from_plain_directories() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m");
        fs::create_dir(&m).unwrap();
        assert!(!is_mountpoint(&m));
        assert!(!is_mountpoint(&dir.path().join("missing")));
        nix::mount::mount(
            Some("none"),
            &m,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let (statx, info) = (is_mountpoint(&m), is_mountpoint_by_mountinfo(&m));
        nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH).unwrap();
        assert!(statx && info);
        assert!(!is_mountpoint(&m));
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/a\040b\011c\134d"), "/a b\tc\\d");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
