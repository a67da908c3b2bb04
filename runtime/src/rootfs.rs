//! A container's root filesystem: overlayfs of the image's layer snapshots
//! plus a fresh upper directory.
//!
//! Mounted with the new mount API, one `lowerdir+` per layer (Linux 6.8),
//! so that an image with many layers cannot overflow the one page of
//! options that mount(2) takes (each layer path is ~90 bytes: the classic
//! form fails near 40 layers).
//!
//! Older kernels (5.15 and 6.1 LTS: Ubuntu 22.04, Debian 12, most managed
//! node images) refuse `lowerdir+`. There the classic `lowerdir=a:b:c`
//! option of mount(2) is used, with every directory given by a short
//! `/proc/self/fd/N` path of a descriptor berthd holds during the call
//! (~17 bytes a layer instead of ~90: ~220 layers fit in the page, where
//! Docker builds at most 127). The first refusal is remembered, so that
//! later mounts go straight to the classic form.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

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
        self.mount_mapped(lowers, None)
    }

    /// [`Rootfs::mount`], the layers seen through `idmap` when the pod has
    /// a user namespace: each layer idmapped (no chown of the shared
    /// layers), the upper directory owned by the container's root.
    pub fn mount_mapped(
        &self,
        lowers: &[PathBuf],
        idmap: Option<&Idmap<'_>>,
    ) -> Result<(), RootfsError> {
        let upper = self.layer_dir.join("upper");
        let work = self.layer_dir.join("work");
        for d in [&upper, &work, &self.target] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(d)
                .map_err(sys(format!("creating {}", d.display())))?;
        }
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
        let r = match idmap {
            None => overlay(&self.target, &lowers, Some((&upper, &work))),
            Some(m) => (|| {
                // What the container's root writes lands as its host id;
                // the root directory of the overlay is the upper's.
                std::os::unix::fs::chown(&upper, Some(m.root_uid), Some(m.root_gid))
                    .map_err(sys(format!("chown of {}", upper.display())))?;
                let mapped = MappedLayers::attach(&self.mapped_dir(), &lowers, m)?;
                overlay(&self.target, &mapped.paths(), Some((&upper, &work)))
            })(),
        };
        if r.is_err() {
            self.remove();
        }
        r
    }

    /// Where the idmapped layers of a mount in progress are attached.
    fn mapped_dir(&self) -> PathBuf {
        self.layer_dir.join("idmapped")
    }

    /// Where image volume `n` of this container is mounted: beside the
    /// root filesystem, so that [`Rootfs::remove`] (on removal, on undo, in
    /// recovery) takes it away too.
    pub fn volume_dir(&self, n: usize) -> PathBuf {
        self.volumes_dir().join(n.to_string())
    }

    fn volumes_dir(&self) -> PathBuf {
        self.target
            .parent()
            .unwrap_or(Path::new("/"))
            .join("image-volumes")
    }

    /// Mount image `lowers` (bottom first) read-only at [`Rootfs::volume_dir`]
    /// `n`: an overlay without an upper directory, which the kernel itself
    /// keeps read-only. An empty directory at the bottom gives even a
    /// one-layer image the two lower layers kernels before 6.x want.
    pub fn mount_volume(
        &self,
        n: usize,
        lowers: &[PathBuf],
        idmap: Option<&Idmap<'_>>,
    ) -> Result<PathBuf, RootfsError> {
        let target = self.volume_dir(n);
        let empty = self.volumes_dir().join("empty");
        for d in [&target, &empty] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(d)
                .map_err(sys(format!("creating {}", d.display())))?;
        }
        let mut dirs: Vec<&Path> = lowers.iter().rev().map(PathBuf::as_path).collect();
        dirs.push(&empty);
        match idmap {
            None => overlay(&target, &dirs, None)?,
            Some(m) => {
                let mapped = MappedLayers::attach(&self.mapped_dir(), &dirs, m)?;
                overlay(&target, &mapped.paths(), None)?;
            }
        }
        Ok(target)
    }

    pub fn is_mounted(&self) -> bool {
        is_mountpoint(&self.target)
    }

    /// Unmount (lazily: a process that still holds it does not keep the
    /// call waiting) and remove the mount point, the image volumes and the
    /// container's layer. Idempotent; errors are logged, since this is
    /// cleanup.
    pub fn remove(&self) {
        // Idmapped layers a crash left attached: unmounted before anything
        // is removed, or removing the layer dir would reach into images.
        MappedLayers::clear(&self.mapped_dir());
        let volumes = self.volumes_dir();
        if let Ok(rd) = fs::read_dir(&volumes) {
            for e in rd.flatten() {
                unmount_all(&e.path());
            }
        }
        unmount_all(&self.target);
        if self.mapped_dir().exists() {
            // Still mounted: an image layer must never be removed with it.
            tracing::warn!(path = %self.mapped_dir().display(), "idmapped layers still mounted; the container's layer is left");
            return;
        }
        for d in [&self.target, &volumes, &self.layer_dir] {
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

/// Whether pods can have their own user namespace here (KEP-127): a user
/// namespace made by `helper` (berth-shim), a layer in `dir` (berth's
/// root, where image layers live) idmapped through it and an overlay over
/// that, as [`Rootfs::mount_mapped`] does; the layer's root-owned file
/// must show as the mapped id. Err says what failed; nothing stays.
pub fn probe_userns(helper: &Path, dir: &Path) -> Result<(), String> {
    const ID: u32 = 65534;
    let one = crate::model::IdMapping {
        container_id: 0,
        host_id: ID,
        length: 1,
    };
    let h = crate::namespaces::UsernsHelper::start(
        helper,
        &crate::namespaces::UserMappings { uid: one, gid: one },
    )
    .map_err(|e| format!("a user namespace: {e}"))?;
    let userns = fs::File::open(h.ns_path("user"))
        .map_err(|e| format!("opening the user namespace: {e}"))?;
    // What a berthd killed in the middle of its probe left.
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("userns-probe-") {
                let old = e.path();
                Rootfs::new(old.join("rootfs"), old.join("layer")).remove();
                if !is_mountpoint(&old.join("rootfs")) {
                    let _ = fs::remove_dir_all(&old);
                }
            }
        }
    }
    let base = dir.join(format!("userns-probe-{}", std::process::id()));
    let lower = base.join("lower");
    let r = (|| {
        fs::create_dir_all(&lower).map_err(|e| format!("creating {}: {e}", lower.display()))?;
        fs::write(lower.join("f"), b"").map_err(|e| format!("writing the probe layer: {e}"))?;
        let rootfs = Rootfs::new(base.join("rootfs"), base.join("layer"));
        let idmap = Idmap {
            userns: std::os::fd::AsFd::as_fd(&userns),
            root_uid: ID,
            root_gid: ID,
        };
        let r = rootfs
            .mount_mapped(std::slice::from_ref(&lower), Some(&idmap))
            .map_err(|e| {
                format!(
                    "an overlay of idmapped layers (Linux 5.19 and a file system that idmaps): {e}"
                )
            })
            .and_then(|()| {
                use std::os::unix::fs::MetadataExt as _;
                let m = fs::metadata(rootfs.target.join("f"))
                    .map_err(|e| format!("reading the probe file: {e}"))?;
                if m.uid() == ID && m.gid() == ID {
                    Ok(())
                } else {
                    Err(format!(
                        "an idmapped layer shows its root's file as {}:{}, not {ID}:{ID}",
                        m.uid(),
                        m.gid()
                    ))
                }
            });
        rootfs.remove();
        r?;
        // kubelet gives every volume of such a pod the pod's mappings, its
        // service-account token (a tmpfs) too: idmapped tmpfs (Linux 6.3).
        let tmp = base.join("tmpfs");
        fs::create_dir(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
        nix::mount::mount(
            Some("tmpfs"),
            &tmp,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some("size=16k"),
        )
        .map_err(|e| format!("a tmpfs for the probe: {e}"))?;
        let t = crate::kernel::idmapped_tree(&tmp, std::os::fd::AsFd::as_fd(&userns), false)
            .map(drop)
            .map_err(|e| format!("an idmapped tmpfs (Linux 6.3), which volumes such as the service-account token need: {e}"));
        unmount_all(&tmp);
        t
    })();
    if let Err(e) = fs::remove_dir_all(&base) {
        tracing::warn!(path = %base.display(), error = %e, "removing the user namespace probe");
    }
    r
}

/// How a pod with a user namespace sees its layers (KEP-127).
pub struct Idmap<'a> {
    /// The pod's user namespace (its pin, opened).
    pub userns: std::os::fd::BorrowedFd<'a>,
    /// The host ids of the container's root.
    pub root_uid: u32,
    pub root_gid: u32,
}

/// Idmapped copies of layers, attached at `<dir>/<n>` while an overlay is
/// made of them. overlayfs takes private clones of its layers when it is
/// mounted, so the copies are unmounted right after (on every path, by
/// Drop): nothing of them stays on the node. Attached rather than passed
/// as detached mounts because overlayfs takes detached layers only since
/// Linux 6.15.
struct MappedLayers {
    dir: PathBuf,
    paths: Vec<PathBuf>,
}

impl MappedLayers {
    fn attach(dir: &Path, lowers: &[&Path], m: &Idmap<'_>) -> Result<Self, RootfsError> {
        use std::os::fd::AsFd;
        Self::clear(dir);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(sys(format!("creating {}", dir.display())))?;
        let mut me = MappedLayers {
            dir: dir.to_path_buf(),
            paths: Vec::with_capacity(lowers.len()),
        };
        for (i, l) in lowers.iter().enumerate() {
            let at = dir.join(i.to_string());
            fs::create_dir(&at).map_err(sys(format!("creating {}", at.display())))?;
            let tree = crate::kernel::idmapped_tree(l, m.userns, false)
                .map_err(sys(format!("an idmapped mount of layer {}", l.display())))?;
            let target = rustix::fs::open(
                &at,
                rustix::fs::OFlags::PATH
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(sys(format!("opening {}", at.display())))?;
            crate::kernel::move_mount_onto(tree.as_fd(), target.as_fd()).map_err(sys(format!(
                "attaching the idmapped layer at {}",
                at.display()
            )))?;
            me.paths.push(at);
        }
        Ok(me)
    }

    fn paths(&self) -> Vec<&Path> {
        self.paths.iter().map(PathBuf::as_path).collect()
    }

    /// Unmount and remove whatever is in `dir` (never recursively into a
    /// mount: a directory that stays mounted is left, and logged).
    fn clear(dir: &Path) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            unmount_all(&p);
            if let Err(e) = fs::remove_dir(&p) {
                tracing::warn!(path = %p.display(), error = %e, "removing an idmapped layer's mount point");
            }
        }
        let _ = fs::remove_dir(dir);
    }
}

impl Drop for MappedLayers {
    fn drop(&mut self) {
        Self::clear(&self.dir);
    }
}

/// Unmount everything stacked at `path`.
fn unmount_all(path: &Path) {
    while is_mountpoint(path) {
        if let Err(e) = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(path = %path.display(), error = %e, "unmounting");
            break;
        }
    }
}

/// An overlay of `lowers` (top first) at `target`, with `rw` = (upper,
/// work) or read-only without; lowerdir+ where the kernel has it.
fn overlay(target: &Path, lowers: &[&Path], rw: Option<(&Path, &Path)>) -> Result<(), RootfsError> {
    match lowerdir_form() {
        LowerdirForm::Classic => mount_classic(target, lowers, rw),
        LowerdirForm::Plus => match mount_plus(target, lowers, rw) {
            Err(RootfsError::Sys { what, source })
                if source.raw_os_error() == Some(libc::EINVAL) =>
            {
                // A kernel before 6.8 (or its legacy option parser)
                // does not know lowerdir+.
                let r = mount_classic(target, lowers, rw);
                if r.is_ok() {
                    tracing::info!(
                        refused = %what,
                        "this kernel refuses overlayfs lowerdir+ (Linux 6.8); using the classic lowerdir option from now on"
                    );
                    FORM.store(CLASSIC, Ordering::Relaxed);
                }
                r
            }
            r => r,
        },
    }
}

/// The classic form: mount(2) with `lowerdir=A:B:…,upperdir=U,workdir=W`,
/// every directory a `/proc/self/fd/N` of a descriptor held across the
/// call (short, and free of the `:` and `,` the syntax reserves).
fn mount_classic(
    target: &Path,
    lowers: &[&Path],
    rw: Option<(&Path, &Path)>,
) -> Result<(), RootfsError> {
    use rustix::fs::{Mode, OFlags};
    let open = |p: &Path| {
        rustix::fs::open(
            p,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys(format!("opening {}", p.display())))
    };
    let lower_fds = lowers
        .iter()
        .map(|l| open(l))
        .collect::<Result<Vec<_>, _>>()?;
    let rw_fds = match rw {
        Some((upper, work)) => Some((open(upper)?, open(work)?)),
        None => None,
    };
    let rw_paths = rw_fds.as_ref().map(|(u, w)| (fd_path(u), fd_path(w)));
    let data = classic_options(
        &lower_fds.iter().map(fd_path).collect::<Vec<_>>(),
        rw_paths.as_ref().map(|(u, w)| (u.as_str(), w.as_str())),
    )?;
    // An image volume: read-only, and on the node no setuid binary, device
    // node or executable of the image is live either.
    let flags = if rw.is_some() {
        nix::mount::MsFlags::empty()
    } else {
        nix::mount::MsFlags::MS_RDONLY
            | nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC
    };
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        flags,
        Some(data.as_str()),
    )
    .map_err(|e| RootfsError::Sys {
        what: format!(
            "mounting an overlay at {} ({} layers, classic lowerdir)",
            target.display(),
            lowers.len()
        ),
        source: e.into(),
    })
}

/// The new mount API with one `lowerdir+` per layer (Linux 6.8).
fn mount_plus(
    target: &Path,
    lowers: &[&Path],
    rw: Option<(&Path, &Path)>,
) -> Result<(), RootfsError> {
    let fs_fd = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(sys("fsopen(overlay)"))?;
    for l in lowers {
        rustix::mount::fsconfig_set_string(&fs_fd, "lowerdir+", *l)
            .map_err(sys(format!("overlay lowerdir+ {}", l.display())))?;
    }
    let attrs = match rw {
        Some((upper, work)) => {
            rustix::mount::fsconfig_set_string(&fs_fd, "upperdir", upper)
                .map_err(sys("overlay upperdir"))?;
            rustix::mount::fsconfig_set_string(&fs_fd, "workdir", work)
                .map_err(sys("overlay workdir"))?;
            MountAttrFlags::empty()
        }
        None => {
            MountAttrFlags::MOUNT_ATTR_RDONLY
                | MountAttrFlags::MOUNT_ATTR_NOSUID
                | MountAttrFlags::MOUNT_ATTR_NODEV
                | MountAttrFlags::MOUNT_ATTR_NOEXEC
        }
    };
    rustix::mount::fsconfig_create(&fs_fd).map_err(sys("creating the overlay superblock"))?;
    let mnt = rustix::mount::fsmount(&fs_fd, FsMountFlags::FSMOUNT_CLOEXEC, attrs)
        .map_err(sys("fsmount(overlay)"))?;
    rustix::mount::move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(sys(format!("mounting an overlay at {}", target.display())))?;
    Ok(())
}

/// How overlayfs gets the lower layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LowerdirForm {
    /// One `lowerdir+` per layer through fsconfig (Linux 6.8).
    Plus,
    /// `lowerdir=a:b:c` in mount(2)'s option page.
    Classic,
}

const UNKNOWN: u8 = 0;
const CLASSIC: u8 = 2;
/// CLASSIC once the kernel refused lowerdir+.
static FORM: AtomicU8 = AtomicU8::new(UNKNOWN);

fn lowerdir_form() -> LowerdirForm {
    // Test hook: a 6.8+ kernel drives the fallback as 5.15 would.
    if FORM.load(Ordering::Relaxed) == CLASSIC
        || crate::failpoint::enabled("rootfs.classic_lowerdir")
    {
        LowerdirForm::Classic
    } else {
        LowerdirForm::Plus
    }
}

fn fd_path(fd: &std::os::fd::OwnedFd) -> String {
    use std::os::fd::AsRawFd;
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// mount(2) copies one page of options.
const MOUNT_OPTIONS_MAX: usize = 4095;

/// The classic overlay options for these (top layer first) directories,
/// refused with a clear error beyond what mount(2) takes.
fn classic_options(lowers: &[String], rw: Option<(&str, &str)>) -> Result<String, RootfsError> {
    let mut data = format!("lowerdir={}", lowers.join(":"));
    if let Some((upper, work)) = rw {
        data.push_str(&format!(",upperdir={upper},workdir={work}"));
    }
    if data.len() > MOUNT_OPTIONS_MAX {
        return Err(RootfsError::Sys {
            what: format!(
                "an image of {} layers: its overlay options take {} bytes, more than the {MOUNT_OPTIONS_MAX} a mount(2) on this kernel (before Linux 6.8) takes",
                lowers.len(),
                data.len()
            ),
            source: std::io::Error::from_raw_os_error(libc::E2BIG),
        });
    }
    Ok(data)
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
    fn an_image_volume_is_a_read_only_overlay_that_remove_takes_away() {
        let dir = tempfile::tempdir().unwrap();
        let (base, top) = (dir.path().join("base"), dir.path().join("top"));
        for (l, which) in [(&base, "base"), (&top, "top")] {
            fs::create_dir(l).unwrap();
            fs::write(l.join("which"), which).unwrap();
        }
        fs::write(base.join("only-base"), "").unwrap();
        let rootfs = Rootfs::new(dir.path().join("c/rootfs"), dir.path().join("ctr"));
        rootfs.mount(std::slice::from_ref(&base)).unwrap();
        // One layer and two: both mount (the empty bottom layer).
        let one = rootfs.mount_volume(0, std::slice::from_ref(&base), None);
        let two = rootfs.mount_volume(1, &[base.clone(), top.clone()], None);
        let (one, two) = (
            one.map_err(|e| e.to_string()),
            two.map_err(|e| e.to_string()),
        );
        let read = |p: &Path| fs::read_to_string(p.join("which")).ok();
        let seen = (
            one.as_ref().ok().and_then(|p| read(p)),
            two.as_ref().ok().and_then(|p| read(p)),
        );
        let write = two
            .as_ref()
            .map(|p| fs::write(p.join("new"), "x").map_err(|e| e.raw_os_error()));
        let only_base = two.as_ref().map(|p| p.join("only-base").exists());
        // The mount's options as mountinfo shows them (field 6).
        let opts = two.as_ref().ok().and_then(|p| {
            fs::read_to_string("/proc/self/mountinfo")
                .ok()?
                .lines()
                .find(|l| l.split(' ').nth(4) == Some(&*p.to_string_lossy()))
                .and_then(|l| l.split(' ').nth(5).map(str::to_string))
        });
        rootfs.remove();
        let (one, two) = (one.clone().unwrap(), two.clone().unwrap());
        assert_eq!(seen.0.as_deref(), Some("base"));
        assert_eq!(seen.1.as_deref(), Some("top"), "the image's top layer wins");
        assert!(only_base.unwrap());
        assert_eq!(write.unwrap(), Err(Some(libc::EROFS)), "read-only");
        assert!(
            opts.as_ref()
                .is_some_and(|o| ["ro", "nosuid", "nodev", "noexec"]
                    .iter()
                    .all(|f| o.split(',').any(|x| x == *f))),
            "{opts:?}"
        );
        assert!(!is_mountpoint(&one) && !is_mountpoint(&two));
        assert!(!dir.path().join("c/image-volumes").exists());
        assert!(base.join("which").exists(), "the layers stay");
    }

    #[test]
    fn the_classic_form_stacks_many_layers_too() {
        let dir = tempfile::tempdir().unwrap();
        // 120 layers with 100-byte names (a Docker image has at most 127):
        // far beyond a page as paths, within it as /proc/self/fd names.
        let mut lowers = Vec::new();
        for i in 0..120 {
            let l = dir.path().join(format!("layer-{i:03}-{}", "y".repeat(92)));
            fs::create_dir(&l).unwrap();
            fs::write(l.join("which"), format!("{i}")).unwrap();
            fs::write(l.join(format!("only-{i}")), "").unwrap();
            lowers.push(l);
        }
        let rootfs = Rootfs::new(dir.path().join("rootfs"), dir.path().join("ctr"));
        for d in [
            rootfs.layer_dir.join("upper"),
            rootfs.layer_dir.join("work"),
            rootfs.target.clone(),
        ] {
            fs::create_dir_all(d).unwrap();
        }
        let top_first: Vec<&Path> = lowers.iter().rev().map(PathBuf::as_path).collect();
        let (upper, work) = (
            rootfs.layer_dir.join("upper"),
            rootfs.layer_dir.join("work"),
        );
        let r = mount_classic(&rootfs.target, &top_first, Some((&upper, &work)));
        let which = fs::read_to_string(rootfs.target.join("which"));
        let has_first = rootfs.target.join("only-0").exists();
        let _ = fs::write(rootfs.target.join("new-file"), "x");
        let upper_has_it = dir.path().join("ctr/upper/new-file").exists();
        rootfs.remove();
        r.unwrap();
        assert_eq!(which.unwrap(), "119", "the last image layer is on top");
        assert!(has_first);
        assert!(upper_has_it, "writes go to the container's upper dir");
        assert!(!rootfs.is_mounted());
    }

    #[test]
    fn classic_options_beyond_a_page_are_refused_naming_the_layers() {
        let lowers: Vec<String> = (0..300)
            .map(|i| format!("/proc/self/fd/{}", 1000 + i))
            .collect();
        let e = classic_options(&lowers, Some(("/proc/self/fd/3", "/proc/self/fd/4")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("300 layers") && e.contains("6.8"), "{e}");
        let ok = classic_options(&lowers[..2], Some(("/u", "/w"))).unwrap();
        assert_eq!(
            ok,
            "lowerdir=/proc/self/fd/1000:/proc/self/fd/1001,upperdir=/u,workdir=/w"
        );
        let ro = classic_options(&lowers[..2], None).unwrap();
        assert_eq!(ro, "lowerdir=/proc/self/fd/1000:/proc/self/fd/1001");
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
