//! Applies one OCI image layer (an uncompressed tar stream) to an empty
//! directory that becomes one overlayfs lower directory.
//!
//! Each layer is unpacked into its own directory, not on top of the previous
//! layers: OCI whiteouts become overlayfs whiteouts (`.wh.NAME` a 0/0
//! character device `NAME`, `.wh..wh..opq` the `trusted.overlay.opaque`
//! xattr on its directory) and overlayfs does the merging.
//!
//! A whiteout hides only what the layers below have ("Whiteout files MUST
//! only apply to resources in lower/parent layers"), never an entry of its
//! own layer, whichever comes first in the archive. So `.wh.NAME` becomes a
//! 0/0 device only where this layer has no `NAME`; where it has one (now or
//! from a later entry, or as the implicit parent of a later entry), `NAME`
//! stays, and if it is a directory it is made opaque, so that it hides the
//! lower `NAME`'s contents as the whiteout asked. A non-directory hides the
//! lower `NAME` by itself.
//!
//! A layer is untrusted input. The rules:
//!
//! * Nothing is ever resolved through a symlink. The parent directory of each
//!   entry is opened with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS |
//!   RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)` relative to the layer
//!   directory, and the entry itself is created with `*at()` calls relative
//!   to that parent (`O_EXCL | O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`). An entry
//!   below a symlink is refused; an entry *named* like an existing symlink
//!   replaces the symlink.
//! * Paths are contained: a leading `/` or `./` (and `.` or empty components)
//!   are dropped; a `..` component is refused.
//! * Missing parent directories are created (0755, root-owned).
//! * Later entries replace earlier ones with the same path; a directory over
//!   a directory only updates its metadata; anything else over a directory
//!   removes that directory tree (without following symlinks) first.
//! * Hardlinks must point at an existing non-directory of this layer (not
//!   at a whiteout).
//! * Character and block device nodes are created with the header's
//!   major/minor, as containerd does: opening one inside a container is the
//!   cgroup device controller's decision, and on the host the store's
//!   directories are 0700 (see [`crate::store`]). Device numbers the
//!   kernel's 12-bit major / 20-bit minor cannot hold are refused (they
//!   would silently name another device). FIFOs and symlinks (literal
//!   target) are created too.
//! * Owner, mode (setuid/setgid kept), xattrs (except `trusted.*`, which only
//!   we may set; none on FIFOs and device nodes, where `user.*` is not
//!   allowed) and mtimes are applied; directory mtimes at the very end.
//!
//! On error the directory may hold partial content: the caller removes it.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{
    self as rfs, AtFlags, CWD, Dir, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec,
    Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;

use crate::tar::{EntryData, EntryHeader, EntryKind, Mtime, TarError, TarReader};

/// Buffer for copying file data (one allocation per layer).
const COPY_BUF_SIZE: usize = 1 << 20;

/// Path resolution inside the layer: never through a symlink, never out.
const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// How directories are opened (readable: fsetxattr does not take O_PATH
/// fds). Always with `openat2(RESOLVE)` or `O_NOFOLLOW`. (Not `O_NOFOLLOW`
/// with openat2: a symlink would then fail with ENOTDIR instead of ELOOP.)
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What one layer held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Tar entries read (including whiteouts and skipped ones).
    pub entries: u64,
    /// Bytes of regular file data written.
    pub bytes: u64,
}

/// Why a layer could not be unpacked. Every variant names the entry.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The tar stream is malformed, truncated or over a limit.
    #[error("layer archive: {0}")]
    Tar(#[from] TarError),
    /// The entry would resolve outside the layer or through a symlink.
    #[error("entry {path:?}: unsafe path: {reason}")]
    UnsafePath { path: String, reason: String },
    /// A hardlink whose target is not an existing non-directory of the layer.
    #[error("entry {path:?}: hardlink to {target:?} {reason}")]
    Hardlink {
        path: String,
        target: String,
        reason: String,
    },
    /// An entry that cannot be applied (unknown type, out-of-range owner,
    /// a parent that is not a directory, ...).
    #[error("entry {path:?}: {reason}")]
    Invalid { path: String, reason: String },
    /// A filesystem operation failed.
    #[error("entry {path:?}: {op}: {source}")]
    Io {
        path: String,
        op: String,
        #[source]
        source: io::Error,
    },
}

/// Unpacks the tar stream `reader` into `dir`, an existing empty directory.
///
/// Stops right after the end-of-archive marker: whatever follows is left in
/// `reader` for the caller to drain (and hash).
pub fn unpack_layer<R: Read>(reader: R, dir: &Path) -> Result<UnpackStats, UnpackError> {
    let root = rfs::openat(CWD, dir, DIR_FLAGS, Mode::empty()).map_err(|e| UnpackError::Io {
        path: dir.display().to_string(),
        op: "open the layer directory".into(),
        source: e.into(),
    })?;
    let mut state = State {
        t: Tracked::default(),
        buf: vec![0; COPY_BUF_SIZE],
        stats: UnpackStats::default(),
    };
    let mut tar = TarReader::new(reader);
    while let Some(entry) = tar.next_entry()? {
        state.stats.entries += 1;
        let (header, data) = entry.into_parts();
        apply(root.as_fd(), &mut state, &header, data)?;
    }
    set_dir_times(root.as_fd(), &state.t.dir_times)?;
    Ok(state.stats)
}

struct State {
    t: Tracked,
    buf: Vec<u8>,
    stats: UnpackStats,
}

/// What refers to directories by path, to forget when a tree is removed.
#[derive(Default)]
struct Tracked {
    /// The last parent directory used: its path in the layer and an fd.
    cache: Option<(Vec<u8>, OwnedFd)>,
    /// Directory mtimes, applied at the end; one per existing directory (a
    /// repeated or removed directory does not make it grow).
    dir_times: BTreeMap<Vec<u8>, Mtime>,
    /// Paths a `.wh.` entry of this layer named: the lower layers' entry
    /// there is gone, so a directory this layer has there must be opaque.
    /// Kept when a tree is removed: it says what the lower layers lose.
    whited: HashSet<Vec<u8>>,
}

impl Tracked {
    /// The directory tree at `path` (in the layer) was removed.
    fn forget_tree(&mut self, path: &[u8]) {
        // The cached directory may have been inside the tree.
        self.cache = None;
        self.dir_times.remove(path);
        // Keys below `path/` sort between "path/" and "path0" ('0' follows '/').
        let mut lo = path.to_vec();
        lo.push(b'/');
        let mut hi = path.to_vec();
        hi.push(b'0');
        let below: Vec<Vec<u8>> = self
            .dir_times
            .range(lo..hi)
            .map(|(k, _)| k.clone())
            .collect();
        for k in below {
            self.dir_times.remove(&k);
        }
    }
}

/// The parent directory of the current entry.
enum Parent {
    Root,
    Dir { key: Vec<u8>, fd: OwnedFd },
}

impl Parent {
    fn key(&self) -> &[u8] {
        match self {
            Parent::Root => b"",
            Parent::Dir { key, .. } => key,
        }
    }

    fn fd<'a>(&'a self, root: BorrowedFd<'a>) -> BorrowedFd<'a> {
        match self {
            Parent::Root => root,
            Parent::Dir { fd, .. } => fd.as_fd(),
        }
    }
}

impl State {
    fn take_parent(
        &mut self,
        root: BorrowedFd<'_>,
        comps: &[&[u8]],
        raw: &[u8],
    ) -> Result<Parent, UnpackError> {
        if comps.is_empty() {
            return Ok(Parent::Root);
        }
        let key = join(comps);
        if let Some((k, fd)) = self.t.cache.take()
            && k == key
        {
            return Ok(Parent::Dir { key, fd });
        }
        let fd = open_parent(root, &key, comps, &self.t.whited, raw)?;
        Ok(Parent::Dir { key, fd })
    }

    fn keep_parent(&mut self, parent: Parent) {
        if let Parent::Dir { key, fd } = parent {
            self.t.cache = Some((key, fd));
        }
    }
}

fn disp(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

fn io_err(raw: &[u8], op: impl Into<String>, e: impl Into<io::Error>) -> UnpackError {
    UnpackError::Io {
        path: disp(raw),
        op: op.into(),
        source: e.into(),
    }
}

fn unsafe_path(raw: &[u8], reason: impl Into<String>) -> UnpackError {
    UnpackError::UnsafePath {
        path: disp(raw),
        reason: reason.into(),
    }
}

fn invalid(raw: &[u8], reason: impl Into<String>) -> UnpackError {
    UnpackError::Invalid {
        path: disp(raw),
        reason: reason.into(),
    }
}

/// The components of an archive path: empty and `.` components dropped
/// (so a leading `/` or `./` is stripped), `..` refused.
fn split_path(raw: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    let mut comps = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("contains a \"..\" component"),
            c => comps.push(c),
        }
    }
    Ok(comps)
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(comps.iter().map(|c| c.len() + 1).sum());
    for (i, c) in comps.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(c);
    }
    out
}

fn owner_id(v: u64, raw: &[u8], what: &str) -> Result<u32, UnpackError> {
    u32::try_from(v)
        .ok()
        .filter(|&v| v != u32::MAX)
        .ok_or_else(|| invalid(raw, format!("{what} {v} is out of range")))
}

fn timestamps(m: Mtime) -> Timestamps {
    let t = Timespec {
        tv_sec: m.secs,
        tv_nsec: i64::from(m.nanos),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Opens the parent directory `key` (components `comps`) inside the layer,
/// creating what is missing.
fn open_parent(
    root: BorrowedFd<'_>,
    key: &[u8],
    comps: &[&[u8]],
    whited: &HashSet<Vec<u8>>,
    raw: &[u8],
) -> Result<OwnedFd, UnpackError> {
    for _ in 0..4 {
        match rfs::openat2(root, key, DIR_FLAGS, Mode::empty(), RESOLVE) {
            Ok(fd) => return Ok(fd),
            // The kernel asks to retry when a rename raced the lookup.
            Err(Errno::AGAIN) => continue,
            // Missing, a symlink, or not a directory: the walk creates what
            // is missing and says precisely which component is wrong.
            Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => break,
            Err(Errno::XDEV) => {
                return Err(unsafe_path(
                    raw,
                    "its parent directory crosses a mount point",
                ));
            }
            Err(e) => return Err(io_err(raw, "open parent directory", e)),
        }
    }
    walk_parent(root, comps, whited, raw)
}

/// Opens `comps` one component at a time (each with the same openat2
/// rules), creating missing directories 0755. A component that is a
/// whiteout of this layer becomes an opaque directory: the entry below it
/// belongs to this layer, the lower layers' directory stays hidden.
fn walk_parent(
    root: BorrowedFd<'_>,
    comps: &[&[u8]],
    whited: &HashSet<Vec<u8>>,
    raw: &[u8],
) -> Result<OwnedFd, UnpackError> {
    let mut cur: Option<OwnedFd> = None;
    for (i, &comp) in comps.iter().enumerate() {
        let at = cur.as_ref().map_or(root, |f| f.as_fd());
        let prefix = || disp(&join(&comps[..=i]));
        let classify = |e: Errno| match e {
            Errno::LOOP => unsafe_path(
                raw,
                format!(
                    "parent {} is a symlink: would write through symlink",
                    prefix()
                ),
            ),
            Errno::NOTDIR => invalid(raw, format!("parent {} is not a directory", prefix())),
            e => io_err(raw, format!("open parent directory {}", prefix()), e),
        };
        let opened = match rfs::openat2(at, comp, DIR_FLAGS, Mode::empty(), RESOLVE) {
            Err(Errno::NOTDIR) if whited.contains(&join(&comps[..=i])) && is_whiteout(at, comp) => {
                rfs::unlinkat(at, comp, AtFlags::empty())
                    .map_err(|e| io_err(raw, format!("remove the whiteout {}", prefix()), e))?;
                Err(Errno::NOENT)
            }
            r => r,
        };
        let fd = match opened {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                let created = match rfs::mkdirat(at, comp, Mode::from_raw_mode(0o755)) {
                    Ok(()) => true,
                    Err(Errno::EXIST) => false,
                    Err(e) => {
                        return Err(io_err(
                            raw,
                            format!("create parent directory {}", prefix()),
                            e,
                        ));
                    }
                };
                let fd =
                    rfs::openat2(at, comp, DIR_FLAGS, Mode::empty(), RESOLVE).map_err(classify)?;
                if created {
                    // Whatever the umask.
                    rfs::fchmod(&fd, Mode::from_raw_mode(0o755)).map_err(|e| {
                        io_err(raw, format!("chmod parent directory {}", prefix()), e)
                    })?;
                    if whited.contains(&join(&comps[..=i])) {
                        set_opaque(fd.as_fd(), raw)?;
                    }
                }
                fd
            }
            Err(e) => return Err(classify(e)),
        };
        cur = Some(fd);
    }
    cur.ok_or_else(|| invalid(raw, "no parent directory"))
}

/// Removes whatever is at `name` in `pfd` (a directory tree without
/// following symlinks). A missing entry is fine.
fn remove_existing(
    t: &mut Tracked,
    pfd: BorrowedFd<'_>,
    parent_key: &[u8],
    name: &[u8],
    raw: &[u8],
) -> Result<(), UnpackError> {
    let st = match rfs::statat(pfd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(io_err(raw, "stat the existing entry", e)),
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        t.forget_tree(&child_key(parent_key, name));
        remove_tree(pfd, name).map_err(|e| io_err(raw, "remove the directory it replaces", e))
    } else {
        rfs::unlinkat(pfd, name, AtFlags::empty())
            .map_err(|e| io_err(raw, "remove the entry it replaces", e))
    }
}

/// Removes the directory tree `name` in `pfd` without recursion and without
/// following symlinks: every lookup is an openat2 below `pfd` with
/// `RESOLVE_NO_SYMLINKS`, and at most two directories are open at a time.
fn remove_tree(pfd: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<()> {
    let mut stack: Vec<Vec<u8>> = vec![name.to_vec()];
    while let Some(top) = stack.last().cloned() {
        let fd = rfs::openat2(pfd, top.as_slice(), DIR_FLAGS, Mode::empty(), RESOLVE)?;
        let mut dir = Dir::new(fd)?;
        let mut files = Vec::new();
        let mut subdirs = Vec::new();
        while let Some(ent) = dir.read() {
            let ent = ent?;
            let n = ent.file_name().to_bytes();
            if n == b"." || n == b".." {
                continue;
            }
            let is_dir = match ent.file_type() {
                FileType::Directory => true,
                FileType::Unknown => {
                    let st = rfs::statat(dir.fd()?, n, AtFlags::SYMLINK_NOFOLLOW)?;
                    FileType::from_raw_mode(st.st_mode) == FileType::Directory
                }
                _ => false,
            };
            if is_dir {
                subdirs.push(n.to_vec());
            } else {
                files.push(n.to_vec());
            }
        }
        for f in &files {
            rfs::unlinkat(dir.fd()?, f.as_slice(), AtFlags::empty())?;
        }
        drop(dir);
        if subdirs.is_empty() {
            stack.pop();
            match top.iter().rposition(|&b| b == b'/') {
                None => rfs::unlinkat(pfd, top.as_slice(), AtFlags::REMOVEDIR)?,
                Some(i) => {
                    let parent = rfs::openat2(pfd, &top[..i], DIR_FLAGS, Mode::empty(), RESOLVE)?;
                    rfs::unlinkat(&parent, &top[i + 1..], AtFlags::REMOVEDIR)?;
                }
            }
        } else {
            // Children first; this directory is read again once they are gone.
            for s in subdirs {
                let mut p = Vec::with_capacity(top.len() + 1 + s.len());
                p.extend_from_slice(&top);
                p.push(b'/');
                p.extend_from_slice(&s);
                stack.push(p);
            }
        }
    }
    Ok(())
}

/// Runs `create`; if the name exists, removes what is there and runs it again.
fn create_replacing<T>(
    t: &mut Tracked,
    pfd: BorrowedFd<'_>,
    parent_key: &[u8],
    name: &[u8],
    raw: &[u8],
    op: &str,
    mut create: impl FnMut() -> rustix::io::Result<T>,
) -> Result<T, UnpackError> {
    match create() {
        Err(Errno::EXIST) => {
            remove_existing(t, pfd, parent_key, name, raw)?;
            create().map_err(|e| io_err(raw, op, e))
        }
        r => r.map_err(|e| io_err(raw, op, e)),
    }
}

fn set_owner(fd: BorrowedFd<'_>, uid: u32, gid: u32, raw: &[u8]) -> Result<(), UnpackError> {
    rfs::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .map_err(|e| io_err(raw, "chown", e))
}

fn set_mode(fd: BorrowedFd<'_>, mode: u32, raw: &[u8]) -> Result<(), UnpackError> {
    rfs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777)).map_err(|e| io_err(raw, "chmod", e))
}

fn set_xattrs(fd: BorrowedFd<'_>, hdr: &EntryHeader, raw: &[u8]) -> Result<(), UnpackError> {
    for (name, value) in &hdr.xattrs {
        if name.starts_with("trusted.") {
            // overlayfs trusts trusted.overlay.*: only whiteout handling sets them.
            tracing::debug!(path = %disp(raw), xattr = %name, "ignoring trusted xattr from layer");
            continue;
        }
        match rfs::fsetxattr(fd, name.as_str(), value, XattrFlags::empty()) {
            Ok(()) => {}
            Err(Errno::OPNOTSUPP) => {
                tracing::warn!(path = %disp(raw), xattr = %name, "xattr not supported by the filesystem; ignored");
            }
            Err(e) => return Err(io_err(raw, format!("set xattr {name}"), e)),
        }
    }
    Ok(())
}

/// Owner, xattrs, then mode (chown clears setuid/setgid), as containerd does.
fn set_metadata(
    fd: BorrowedFd<'_>,
    hdr: &EntryHeader,
    ids: (u32, u32),
    xattrs: bool,
    raw: &[u8],
) -> Result<(), UnpackError> {
    set_owner(fd, ids.0, ids.1, raw)?;
    if xattrs {
        set_xattrs(fd, hdr, raw)?;
    }
    set_mode(fd, hdr.mode, raw)
}

fn apply<R: Read>(
    root: BorrowedFd<'_>,
    st: &mut State,
    hdr: &EntryHeader,
    mut data: EntryData<'_, R>,
) -> Result<(), UnpackError> {
    let raw = hdr.path.as_slice();
    let comps = split_path(raw).map_err(|reason| unsafe_path(raw, reason))?;
    let Some((&name, parent_comps)) = comps.split_last() else {
        // The layer root itself ("./", "/", "."): its directory belongs to the caller.
        return Ok(());
    };

    if let Some(rest) = name.strip_prefix(WHITEOUT_PREFIX) {
        if name == WHITEOUT_OPAQUE {
            let parent = st.take_parent(root, parent_comps, raw)?;
            set_opaque(parent.fd(root), raw)?;
            st.keep_parent(parent);
        } else if rest.starts_with(WHITEOUT_PREFIX) {
            tracing::debug!(path = %disp(raw), "ignoring unknown whiteout meta entry");
        } else {
            if rest.is_empty() || rest == b"." || rest == b".." {
                return Err(unsafe_path(raw, "whiteout of an invalid name"));
            }
            let parent = st.take_parent(root, parent_comps, raw)?;
            whiteout(parent.fd(root), rest, raw)?;
            st.t.whited.insert(child_key(parent.key(), rest));
            st.keep_parent(parent);
        }
        return Ok(());
    }

    match hdr.kind {
        EntryKind::Char | EntryKind::Block => check_device_numbers(hdr, raw)?,
        EntryKind::Other(t) => {
            return Err(invalid(
                raw,
                format!("unsupported tar entry type {:?}", char::from(t)),
            ));
        }
        _ => {}
    }
    let ids = (
        owner_id(hdr.uid, raw, "uid")?,
        owner_id(hdr.gid, raw, "gid")?,
    );

    let parent = st.take_parent(root, parent_comps, raw)?;
    let pfd = parent.fd(root);
    match hdr.kind {
        EntryKind::Regular => {
            let fd = create_replacing(
                &mut st.t,
                pfd,
                parent.key(),
                name,
                raw,
                "create file",
                || {
                    rfs::openat(
                        pfd,
                        name,
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                },
            )?;
            let mut file = File::from(fd);
            loop {
                let n = data.read_data(&mut st.buf)?;
                if n == 0 {
                    break;
                }
                file.write_all(&st.buf[..n])
                    .map_err(|e| io_err(raw, "write file data", e))?;
                st.stats.bytes += n as u64;
            }
            set_metadata(file.as_fd(), hdr, ids, true, raw)?;
            rfs::futimens(&file, &timestamps(hdr.mtime))
                .map_err(|e| io_err(raw, "set mtime", e))?;
        }
        EntryKind::Directory => {
            match rfs::mkdirat(pfd, name, Mode::from_raw_mode(0o700)) {
                Ok(()) => {}
                Err(Errno::EXIST) => {
                    let is_dir = rfs::statat(pfd, name, AtFlags::SYMLINK_NOFOLLOW)
                        .map(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory)
                        .map_err(|e| io_err(raw, "stat the existing entry", e))?;
                    if !is_dir {
                        remove_existing(&mut st.t, pfd, parent.key(), name, raw)?;
                        rfs::mkdirat(pfd, name, Mode::from_raw_mode(0o700))
                            .map_err(|e| io_err(raw, "create directory", e))?;
                    }
                }
                Err(e) => return Err(io_err(raw, "create directory", e)),
            }
            let fd = rfs::openat(pfd, name, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())
                .map_err(|e| io_err(raw, "open the directory", e))?;
            set_metadata(fd.as_fd(), hdr, ids, true, raw)?;
            let key = join(&comps);
            if st.t.whited.contains(&key) {
                // It replaced this layer's whiteout of the lower directory.
                set_opaque(fd.as_fd(), raw)?;
            }
            st.t.dir_times.insert(key.clone(), hdr.mtime);
            // Its children usually come next: it becomes the cached parent.
            st.t.cache = Some((key, fd));
            return Ok(());
        }
        EntryKind::Symlink => {
            if hdr.link.is_empty() {
                return Err(invalid(raw, "symlink with an empty target"));
            }
            create_replacing(
                &mut st.t,
                pfd,
                parent.key(),
                name,
                raw,
                "create symlink",
                || rfs::symlinkat(hdr.link.as_slice(), pfd, name),
            )?;
            rfs::chownat(
                pfd,
                name,
                Some(Uid::from_raw(ids.0)),
                Some(Gid::from_raw(ids.1)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_err(raw, "chown symlink", e))?;
            rfs::utimensat(pfd, name, &timestamps(hdr.mtime), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io_err(raw, "set symlink mtime", e))?;
        }
        EntryKind::Hardlink => {
            hardlink(root, &mut st.t, pfd, parent.key(), &comps, hdr)?;
        }
        EntryKind::Fifo => {
            create_replacing(
                &mut st.t,
                pfd,
                parent.key(),
                name,
                raw,
                "create fifo",
                || rfs::mknodat(pfd, name, FileType::Fifo, Mode::from_raw_mode(0o600), 0),
            )?;
            // Non-blocking read-only open of a FIFO does not wait for a writer.
            let fd = rfs::openat(
                pfd,
                name,
                OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err(raw, "open fifo", e))?;
            // user.* xattrs are not allowed on FIFOs: none are applied.
            set_metadata(fd.as_fd(), hdr, ids, false, raw)?;
            rfs::futimens(&fd, &timestamps(hdr.mtime)).map_err(|e| io_err(raw, "set mtime", e))?;
        }
        EntryKind::Char | EntryKind::Block => {
            let file_type = if hdr.kind == EntryKind::Char {
                FileType::CharacterDevice
            } else {
                FileType::BlockDevice
            };
            let dev = rfs::makedev(hdr.dev_major, hdr.dev_minor);
            create_replacing(
                &mut st.t,
                pfd,
                parent.key(),
                name,
                raw,
                "create device node",
                || rfs::mknodat(pfd, name, file_type, Mode::from_raw_mode(0o600), dev),
            )?;
            // Opening a device node would open the device: it is changed by
            // name. The name cannot have changed since mknodat: only this
            // unpack writes in the layer directory, which is private.
            rfs::chownat(
                pfd,
                name,
                Some(Uid::from_raw(ids.0)),
                Some(Gid::from_raw(ids.1)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_err(raw, "chown device node", e))?;
            rfs::chmodat(
                pfd,
                name,
                Mode::from_raw_mode(hdr.mode & 0o7777),
                AtFlags::empty(),
            )
            .map_err(|e| io_err(raw, "chmod device node", e))?;
            rfs::utimensat(pfd, name, &timestamps(hdr.mtime), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io_err(raw, "set device node mtime", e))?;
        }
        EntryKind::Other(_) => {
            return Err(invalid(raw, "unexpected entry type"));
        }
    }
    st.keep_parent(parent);
    Ok(())
}

/// A hardlink to an existing non-directory of this layer. The linked inode
/// already carries its metadata (from its own entry): none is applied.
fn hardlink(
    root: BorrowedFd<'_>,
    t: &mut Tracked,
    pfd: BorrowedFd<'_>,
    parent_key: &[u8],
    comps: &[&[u8]],
    hdr: &EntryHeader,
) -> Result<(), UnpackError> {
    let raw = hdr.path.as_slice();
    let herr = |reason: &str| UnpackError::Hardlink {
        path: disp(raw),
        target: disp(&hdr.link),
        reason: reason.into(),
    };
    let tcomps = split_path(&hdr.link).map_err(|_| herr("points outside the layer"))?;
    let Some((&tname, tparent)) = tcomps.split_last() else {
        return Err(herr("points to the layer root, a directory"));
    };
    let Some((&name, parent_comps)) = comps.split_last() else {
        return Err(invalid(raw, "hardlink at the layer root"));
    };
    let topened;
    let tpfd = if tparent == parent_comps {
        pfd
    } else if tparent.is_empty() {
        root
    } else {
        match rfs::openat2(root, join(tparent), DIR_FLAGS, Mode::empty(), RESOLVE) {
            Ok(fd) => {
                topened = fd;
                topened.as_fd()
            }
            Err(Errno::NOENT | Errno::NOTDIR) => return Err(herr("points to a missing file")),
            Err(Errno::LOOP) => return Err(herr("points through a symlink")),
            Err(Errno::XDEV) => return Err(herr("crosses a mount point")),
            Err(e) => return Err(io_err(raw, "open the hardlink target's directory", e)),
        }
    };
    match rfs::statat(tpfd, tname, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            return Err(herr("points to a directory"));
        }
        Ok(st) if is_whiteout_stat(&st) && t.whited.contains(&join(&tcomps)) => {
            return Err(herr("points to a whiteout, not a file of this layer"));
        }
        Ok(_) => {}
        Err(Errno::NOENT) => return Err(herr("points to a missing file")),
        Err(e) => return Err(io_err(raw, "stat the hardlink target", e)),
    }
    if tcomps == comps {
        return Ok(()); // a link to itself: already there
    }
    let link = || rfs::linkat(tpfd, tname, pfd, name, AtFlags::empty());
    let result = match link() {
        Err(Errno::EXIST) => {
            remove_existing(t, pfd, parent_key, name, raw)?;
            link()
        }
        r => r,
    };
    match result {
        Ok(()) => Ok(()),
        // Replacing the old entry removed the target (it was inside it).
        Err(Errno::NOENT) => Err(herr("points to a missing file")),
        Err(e) => Err(io_err(raw, "create hardlink", e)),
    }
}

fn child_key(parent_key: &[u8], name: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(parent_key.len() + 1 + name.len());
    key.extend_from_slice(parent_key);
    if !key.is_empty() {
        key.push(b'/');
    }
    key.extend_from_slice(name);
    key
}

fn is_whiteout_stat(st: &rfs::Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

/// Whether `name` in `pfd` is an overlayfs whiteout (a 0/0 character device).
fn is_whiteout(pfd: BorrowedFd<'_>, name: &[u8]) -> bool {
    rfs::statat(pfd, name, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| is_whiteout_stat(&st))
}

fn set_opaque(dir: BorrowedFd<'_>, raw: &[u8]) -> Result<(), UnpackError> {
    rfs::fsetxattr(dir, OPAQUE_XATTR, b"y", XattrFlags::empty())
        .map_err(|e| io_err(raw, format!("set {OPAQUE_XATTR} on the directory"), e))
}

/// `.wh.NAME` in `pfd`: hide the lower layers' `NAME`. Where this layer has
/// no `NAME` that is a 0/0 device; an entry of this layer stays (a later
/// `NAME` entry replaces the device the same way), a directory made opaque.
fn whiteout(pfd: BorrowedFd<'_>, name: &[u8], raw: &[u8]) -> Result<(), UnpackError> {
    match rfs::statat(pfd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => rfs::mknodat(
            pfd,
            name,
            FileType::CharacterDevice,
            Mode::empty(),
            rfs::makedev(0, 0),
        )
        .map_err(|e| io_err(raw, "create whiteout", e)),
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            let fd = rfs::openat(pfd, name, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())
                .map_err(|e| io_err(raw, "open the directory it whites out", e))?;
            set_opaque(fd.as_fd(), raw)
        }
        Ok(_) => Ok(()),
        Err(e) => Err(io_err(raw, "stat the entry it whites out", e)),
    }
}

/// Device numbers as the kernel's `dev_t` holds them: 12-bit major, 20-bit
/// minor. mknod takes 32 bits, so a larger number would be cut down to a
/// different device than the header names.
fn check_device_numbers(hdr: &EntryHeader, raw: &[u8]) -> Result<(), UnpackError> {
    const MAX_MAJOR: u32 = (1 << 12) - 1;
    const MAX_MINOR: u32 = (1 << 20) - 1;
    if hdr.dev_major > MAX_MAJOR || hdr.dev_minor > MAX_MINOR {
        return Err(invalid(
            raw,
            format!(
                "device number {}:{} is out of range (major at most {MAX_MAJOR}, minor at most {MAX_MINOR})",
                hdr.dev_major, hdr.dev_minor
            ),
        ));
    }
    Ok(())
}

/// Directory mtimes, set last (creating children changes them).
fn set_dir_times(
    root: BorrowedFd<'_>,
    dir_times: &BTreeMap<Vec<u8>, Mtime>,
) -> Result<(), UnpackError> {
    for (key, mtime) in dir_times {
        match rfs::openat2(root, key.as_slice(), DIR_FLAGS, Mode::empty(), RESOLVE) {
            Ok(fd) => rfs::futimens(&fd, &timestamps(*mtime))
                .map_err(|e| io_err(key, "set directory mtime", e))?,
            // Replaced by a later entry.
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => {}
            Err(e) => return Err(io_err(key, "open directory to set its mtime", e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tar::testutil::{RawHeader, TarBuilder};
    use std::fs;
    use std::io::Cursor;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::path::PathBuf;

    /// A temp root holding `layer/` (the target) and `outside/` (its
    /// sibling, with one file that must never change).
    struct Fixture {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        layer: PathBuf,
        outside: PathBuf,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let layer = root.join("layer");
        let outside = root.join("outside");
        fs::create_dir(&layer).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), b"keep").unwrap();
        Fixture {
            _tmp: tmp,
            root,
            layer,
            outside,
        }
    }

    impl Fixture {
        fn unpack(&self, archive: &[u8]) -> Result<UnpackStats, UnpackError> {
            unpack_layer(archive, &self.layer)
        }

        fn p(&self, rel: &str) -> PathBuf {
            self.layer.join(rel)
        }

        fn assert_outside_untouched(&self) {
            let mut names: Vec<_> = fs::read_dir(&self.root)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            assert_eq!(
                names,
                ["layer", "outside"],
                "nothing created next to the layer"
            );
            let inside: Vec<_> = fs::read_dir(&self.outside)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(inside, ["secret"], "nothing created in the sibling");
            assert_eq!(fs::read(self.outside.join("secret")).unwrap(), b"keep");
            let md = fs::symlink_metadata(self.outside.join("secret")).unwrap();
            assert!(md.is_file());
            assert_eq!(md.permissions().mode() & 0o7777, 0o644);
        }

        fn names(&self, rel: &str) -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(self.p(rel))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
    }

    fn lget(path: &Path, name: &str) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 4096];
        match rfs::lgetxattr(path, name, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                Some(buf)
            }
            Err(Errno::NODATA) => None,
            Err(e) => panic!("lgetxattr {}: {e}", path.display()),
        }
    }

    fn meta(path: &Path) -> fs::Metadata {
        fs::symlink_metadata(path).unwrap()
    }

    #[test]
    fn files_dirs_symlinks_hardlinks_and_fifos_are_created() {
        let f = fixture();
        let mut t = TarBuilder::new();
        t.dir("etc/")
            .file("etc/hostname", b"berth\n")
            .file("empty", b"")
            .symlink("etc/localtime", "/usr/share/zoneinfo/UTC")
            .symlink("rel", "../../etc")
            .hardlink("etc/hostname2", "etc/hostname")
            .header(&RawHeader::ustar(b'6', b"run/fifo"));
        let stats = f.unpack(&t.finish()).unwrap();
        assert_eq!(
            stats,
            UnpackStats {
                entries: 7,
                bytes: 6
            }
        );
        assert_eq!(fs::read(f.p("etc/hostname")).unwrap(), b"berth\n");
        assert_eq!(fs::read(f.p("empty")).unwrap(), b"");
        assert_eq!(
            fs::read_link(f.p("etc/localtime")).unwrap(),
            Path::new("/usr/share/zoneinfo/UTC")
        );
        assert_eq!(fs::read_link(f.p("rel")).unwrap(), Path::new("../../etc"));
        assert_eq!(
            meta(&f.p("etc/hostname2")).ino(),
            meta(&f.p("etc/hostname")).ino()
        );
        assert_eq!(meta(&f.p("etc/hostname")).nlink(), 2);
        assert!(meta(&f.p("run/fifo")).file_type().is_fifo());
        assert!(meta(&f.p("etc")).is_dir());
        f.assert_outside_untouched();
    }

    #[test]
    fn dotdot_entry_is_refused() {
        let f = fixture();
        for path in ["../outside/secret", "a/../../outside/pwned", "a/.."] {
            let mut t = TarBuilder::new();
            t.file(path, b"pwned");
            let err = f.unpack(&t.finish()).unwrap_err();
            assert!(
                matches!(&err, UnpackError::UnsafePath { path: p, .. } if p == path),
                "{path}: {err}"
            );
            assert!(err.to_string().contains(path), "{err}");
        }
        f.assert_outside_untouched();
    }

    #[test]
    fn absolute_paths_are_contained() {
        let f = fixture();
        let outside_abs = format!("{}/pwned", f.outside.display());
        let mut t = TarBuilder::new();
        t.file("/etc/passwd", b"root")
            .file("./bin/sh", b"sh")
            .file(&outside_abs, b"pwned")
            .file("//usr/./lib//x", b"x");
        f.unpack(&t.finish()).unwrap();
        assert_eq!(fs::read(f.p("etc/passwd")).unwrap(), b"root");
        assert_eq!(fs::read(f.p("bin/sh")).unwrap(), b"sh");
        assert_eq!(fs::read(f.p("usr/lib/x")).unwrap(), b"x");
        let contained = f.layer.join(outside_abs.trim_start_matches('/'));
        assert_eq!(fs::read(contained).unwrap(), b"pwned");
        f.assert_outside_untouched();
    }

    #[test]
    fn root_entries_are_skipped() {
        let f = fixture();
        fs::set_permissions(&f.layer, fs::Permissions::from_mode(0o700)).unwrap();
        let mut t = TarBuilder::new();
        let mut h = RawHeader::ustar(b'5', b"./");
        h.mode(0o777).uid(1234);
        t.header(&h).dir("/").dir(".").file("./a", b"a");
        let stats = f.unpack(&t.finish()).unwrap();
        assert_eq!(stats.entries, 4);
        let md = meta(&f.layer);
        assert_eq!((md.mode() & 0o7777, md.uid()), (0o700, 0));
        assert_eq!(f.names(""), ["a"]);
    }

    #[test]
    fn file_written_through_symlink_parent_is_refused() {
        let f = fixture();
        let mut t = TarBuilder::new();
        t.symlink("evil", f.outside.to_str().unwrap())
            .file("evil/pwned", b"pwned");
        let err = f.unpack(&t.finish()).unwrap_err();
        assert!(
            matches!(&err, UnpackError::UnsafePath { path, reason }
                if path == "evil/pwned" && reason.contains("would write through symlink")),
            "{err}"
        );
        f.assert_outside_untouched();
    }

    #[test]
    fn deep_write_through_relative_symlink_is_refused() {
        let f = fixture();
        let mut t = TarBuilder::new();
        t.dir("a/")
            .symlink("a/up", "../..")
            .file("a/up/outside/pwned", b"pwned");
        let err = f.unpack(&t.finish()).unwrap_err();
        assert!(matches!(err, UnpackError::UnsafePath { .. }), "{err}");
        f.assert_outside_untouched();
    }

    #[test]
    fn directory_entry_through_symlink_is_refused() {
        let f = fixture();
        let mut t = TarBuilder::new();
        t.symlink("evil", f.outside.to_str().unwrap())
            .dir("evil/newdir/");
        let err = f.unpack(&t.finish()).unwrap_err();
        assert!(matches!(err, UnpackError::UnsafePath { .. }), "{err}");
        f.assert_outside_untouched();
    }

    #[test]
    fn file_over_existing_symlink_replaces_the_link_not_the_target() {
        let f = fixture();
        let secret = f.outside.join("secret");
        let mut t = TarBuilder::new();
        t.symlink("link", secret.to_str().unwrap())
            .file("link", b"replaced")
            .symlink("dirlink", f.outside.to_str().unwrap())
            .dir("dirlink/");
        f.unpack(&t.finish()).unwrap();
        assert!(meta(&f.p("link")).is_file());
        assert_eq!(fs::read(f.p("link")).unwrap(), b"replaced");
        assert!(meta(&f.p("dirlink")).is_dir());
        assert!(f.names("dirlink").is_empty());
        f.assert_outside_untouched();
    }

    #[test]
    fn hardlink_to_outside_target_is_refused() {
        let f = fixture();
        let cases = [
            ("../outside/secret", "points outside the layer"),
            ("a/../../outside/secret", "points outside the layer"),
            // Leading "/" is stripped: there is no etc/passwd in this layer.
            ("/etc/passwd", "points to a missing file"),
            ("nodir/file", "points to a missing file"),
        ];
        for (target, reason) in cases {
            let mut t = TarBuilder::new();
            t.hardlink("h", target);
            let err = f.unpack(&t.finish()).unwrap_err();
            assert!(
                matches!(&err, UnpackError::Hardlink { path, target: tg, reason: r }
                    if path == "h" && tg == target && r == reason),
                "{target}: {err}"
            );
        }
        f.assert_outside_untouched();
        assert!(!f.p("h").exists());
    }

    #[test]
    fn hardlink_through_symlink_is_refused() {
        let f = fixture();
        let mut t = TarBuilder::new();
        t.symlink("s", f.outside.to_str().unwrap())
            .hardlink("h", "s/secret");
        let err = f.unpack(&t.finish()).unwrap_err();
        assert!(
            matches!(&err, UnpackError::Hardlink { reason, .. } if reason == "points through a symlink"),
            "{err}"
        );
        assert_eq!(meta(&f.outside.join("secret")).nlink(), 1);
        f.assert_outside_untouched();
    }

    #[test]
    fn hardlink_to_a_symlink_links_the_symlink_itself() {
        let f = fixture();
        let mut t = TarBuilder::new();
        t.symlink("s", f.outside.join("secret").to_str().unwrap())
            .hardlink("h", "s");
        f.unpack(&t.finish()).unwrap();
        assert!(meta(&f.p("h")).file_type().is_symlink());
        assert_eq!(meta(&f.p("h")).ino(), meta(&f.p("s")).ino());
        assert_eq!(meta(&f.outside.join("secret")).nlink(), 1);
        f.assert_outside_untouched();
    }

    #[test]
    fn hardlink_to_directory_or_root_is_refused() {
        let f = fixture();
        for (target, reason) in [
            ("d", "points to a directory"),
            ("./", "points to the layer root, a directory"),
        ] {
            let mut t = TarBuilder::new();
            t.dir("d/").hardlink("h", target);
            let err = f.unpack(&t.finish()).unwrap_err();
            assert!(
                matches!(&err, UnpackError::Hardlink { reason: r, .. } if r == reason),
                "{target}: {err}"
            );
        }
    }

    #[test]
    fn hardlink_replacing_an_existing_entry_and_to_itself() {
        let f = fixture();
        let mut t = TarBuilder::new();
        t.file("a", b"A")
            .file("b", b"B")
            .hardlink("b", "a")
            .hardlink("a", "/a")
            .dir("d/")
            .file("d/x", b"x")
            .hardlink("d", "a");
        f.unpack(&t.finish()).unwrap();
        assert_eq!(fs::read(f.p("b")).unwrap(), b"A");
        assert_eq!(meta(&f.p("d")).ino(), meta(&f.p("a")).ino());
        assert_eq!(meta(&f.p("a")).nlink(), 3);
    }

    #[test]
    fn device_nodes_are_created_with_their_type_numbers_mode_and_owner() {
        let f = fixture();
        let mut t = TarBuilder::new();
        let mut h = RawHeader::ustar(b'4', b"dev/sda");
        h.dev(8, 1).mode(0o660).uid(0).gid(6).mtime(1_234_567_890);
        t.header(&h);
        let mut h = RawHeader::ustar(b'3', b"dev/null");
        h.dev(1, 3).mode(0o666).uid(7).gid(8);
        t.header(&h);
        // The largest numbers the kernel holds; over an earlier file.
        let mut h = RawHeader::ustar(b'3', b"dev/big");
        h.dev(4095, (1 << 20) - 1).mode(0o600);
        t.file("dev/big", b"file first").header(&h);
        f.unpack(&t.finish()).unwrap();

        let md = meta(&f.p("dev/sda"));
        assert!(md.file_type().is_block_device());
        assert_eq!(md.rdev(), rfs::makedev(8, 1));
        assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o660, 0, 6));
        assert_eq!(md.mtime(), 1_234_567_890);
        let md = meta(&f.p("dev/null"));
        assert!(md.file_type().is_char_device());
        assert_eq!(md.rdev(), rfs::makedev(1, 3));
        assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o666, 7, 8));
        let md = meta(&f.p("dev/big"));
        assert!(md.file_type().is_char_device());
        assert_eq!(
            (rfs::major(md.rdev()), rfs::minor(md.rdev())),
            (4095, (1 << 20) - 1)
        );
        f.assert_outside_untouched();
    }

    #[test]
    fn device_numbers_the_kernel_cannot_hold_are_refused() {
        let f = fixture();
        for (major, minor) in [(4096, 0), (8, 1 << 20)] {
            let mut h = RawHeader::ustar(b'4', b"dev/alias");
            h.dev(major, minor);
            let mut t = TarBuilder::new();
            t.header(&h);
            let err = f.unpack(&t.finish()).unwrap_err();
            assert!(
                matches!(&err, UnpackError::Invalid { path, reason }
                    if path == "dev/alias" && reason.contains("out of range")),
                "{major}:{minor}: {err}"
            );
            assert!(!f.p("dev/alias").exists());
        }
    }

    #[test]
    fn device_node_below_a_symlink_is_refused() {
        let f = fixture();
        let mut t = TarBuilder::new();
        let mut h = RawHeader::ustar(b'3', b"evil/mem");
        h.dev(1, 1);
        t.symlink("evil", f.outside.to_str().unwrap()).header(&h);
        let err = f.unpack(&t.finish()).unwrap_err();
        assert!(matches!(err, UnpackError::UnsafePath { .. }), "{err}");
        f.assert_outside_untouched();
    }

    #[test]
    fn unknown_entry_type_is_refused() {
        let f = fixture();
        let mut t = TarBuilder::new();
        t.header(&RawHeader::gnu(b'V', b"volume label"));
        let err = f.unpack(&t.finish()).unwrap_err();
        assert!(matches!(err, UnpackError::Invalid { .. }), "{err}");
    }

    #[test]
    fn whiteout_becomes_char_device_0_0() {
        let f = fixture();
        let mut t = TarBuilder::new();
        t.file("etc/.wh.passwd", b"")
            .file(".wh.tmp", b"whiteouts may carry data; it is skipped")
            .file("etc/.wh.shadow", b"")
            .file("etc/.wh.shadow", b"");
        let stats = f.unpack(&t.finish()).unwrap();
        assert_eq!(stats.entries, 4);
        for p in ["etc/passwd", "tmp", "etc/shadow"] {
            let md = meta(&f.p(p));
            assert!(md.file_type().is_char_device(), "{p}");
            assert_eq!(md.rdev(), 0, "{p}");
        }
        assert_eq!(f.names("etc"), ["passwd", "shadow"]);
        assert!(!f.p(".wh.tmp").exists());
    }

    /// The archive orders of one layer that holds both `NAME` and `.wh.NAME`.
    fn both_orders(entry: impl Fn(&mut TarBuilder), whiteout: &str) -> [Vec<u8>; 2] {
        let mut first = TarBuilder::new();
        entry(&mut first);
        first.file(whiteout, b"");
        let mut second = TarBuilder::new();
        second.file(whiteout, b"");
        entry(&mut second);
        [first.finish(), second.finish()]
    }

    #[test]
    fn whiteout_keeps_a_file_of_its_own_layer_in_either_order() {
        let cases = [
            both_orders(
                |t| {
                    t.file("etc/shadow", b"mine");
                },
                "etc/.wh.shadow",
            ),
            both_orders(
                |t| {
                    t.symlink("etc/shadow", "target");
                },
                "etc/.wh.shadow",
            ),
        ];
        for (i, archive) in cases.iter().flatten().enumerate() {
            let f = fixture();
            f.unpack(archive).unwrap();
            let md = meta(&f.p("etc/shadow"));
            assert!(!md.file_type().is_char_device(), "case {i}: whited out");
            if md.is_file() {
                assert_eq!(fs::read(f.p("etc/shadow")).unwrap(), b"mine", "case {i}");
            } else {
                assert!(md.file_type().is_symlink(), "case {i}");
            }
            assert_eq!(f.names("etc"), ["shadow"], "case {i}");
        }
    }

    #[test]
    fn whiteout_of_a_directory_of_its_own_layer_keeps_it_and_makes_it_opaque() {
        let explicit = both_orders(
            |t| {
                t.dir("d/").dir("d/sub/").file("d/sub/f", b"f");
            },
            ".wh.d",
        );
        // Only the implicit parent of a later (or earlier) entry.
        let implicit = both_orders(
            |t| {
                t.file("d/sub/f", b"f");
            },
            ".wh.d",
        );
        for (i, archive) in explicit.iter().chain(&implicit).enumerate() {
            let f = fixture();
            f.unpack(archive).unwrap();
            assert!(meta(&f.p("d")).is_dir(), "case {i}");
            assert_eq!(fs::read(f.p("d/sub/f")).unwrap(), b"f", "case {i}");
            assert_eq!(
                lget(&f.p("d"), OPAQUE_XATTR).as_deref(),
                Some(&b"y"[..]),
                "case {i}: the lower d's contents must stay hidden"
            );
            assert_eq!(lget(&f.p("d/sub"), OPAQUE_XATTR), None, "case {i}");
            assert_eq!(f.names(""), ["d"], "case {i}");
        }
        // A whiteout parent replaced by a directory gets 0755, like any
        // implicit parent.
        let f = fixture();
        f.unpack(&implicit[1]).unwrap();
        assert_eq!(meta(&f.p("d")).mode() & 0o7777, 0o755);
    }

    #[test]
    fn whiteout_of_a_lower_entry_below_a_directory_of_this_layer() {
        let f = fixture();
        let mut t = TarBuilder::new();
        t.file("d/.wh.gone", b"")
            .file("d/.wh.x", b"")
            .dir("d/x/")
            .file("d/x/y", b"y");
        f.unpack(&t.finish()).unwrap();
        let md = meta(&f.p("d/gone"));
        assert!(md.file_type().is_char_device() && md.rdev() == 0);
        assert_eq!(lget(&f.p("d"), OPAQUE_XATTR), None);
        assert_eq!(lget(&f.p("d/x"), OPAQUE_XATTR).as_deref(), Some(&b"y"[..]));
        assert_eq!(f.names("d"), ["gone", "x"]);
    }

    #[test]
    fn hardlink_to_a_whiteout_is_refused() {
        let f = fixture();
        let mut t = TarBuilder::new();
        t.file(".wh.gone", b"").hardlink("h", "gone");
        let err = f.unpack(&t.finish()).unwrap_err();
        assert!(
            matches!(&err, UnpackError::Hardlink { reason, .. } if reason.contains("whiteout")),
            "{err}"
        );
    }

    /// What a container sees: the layers as overlayfs lower directories
    /// (bottom first), mounted read-only in this test thread's own mount
    /// namespace, which goes away with the thread.
    fn overlay_view(lowers: &[&Path], target: &Path, look: impl FnOnce(&Path) + Send) {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let lowerdir = lowers
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let target_c = CString::new(target.as_os_str().as_bytes()).unwrap();
        let opts = CString::new(format!("lowerdir={lowerdir}")).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: unshare and mount with valid C strings; they only
                // affect this thread (CLONE_NEWNS unshares its fs state).
                unsafe {
                    assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare");
                    let none = c"none";
                    assert_eq!(
                        libc::mount(
                            none.as_ptr(),
                            c"/".as_ptr(),
                            std::ptr::null(),
                            libc::MS_REC | libc::MS_PRIVATE,
                            std::ptr::null()
                        ),
                        0,
                        "make mounts private"
                    );
                    let r = libc::mount(
                        c"overlay".as_ptr(),
                        target_c.as_ptr(),
                        c"overlay".as_ptr(),
                        libc::MS_RDONLY,
                        opts.as_ptr().cast(),
                    );
                    assert_eq!(r, 0, "mount overlay: {}", io::Error::last_os_error());
                }
                look(target);
            });
        });
    }

    #[test]
    fn overlayfs_shows_the_upper_layers_own_entry_and_hides_the_lower_one() {
        let tmp = tempfile::tempdir().unwrap();
        let lower = tmp.path().join("lower");
        let mnt = tmp.path().join("mnt");
        for d in [&lower, &mnt] {
            fs::create_dir(d).unwrap();
        }
        let mut t = TarBuilder::new();
        t.file("d/old", b"lower")
            .file("f", b"lower")
            .file("gone", b"lower");
        unpack_layer(&t.finish()[..], &lower).unwrap();
        for (i, upper_tar) in both_orders(
            |t| {
                t.dir("d/").file("d/new", b"upper").file("f", b"upper");
            },
            ".wh.d",
        )
        .into_iter()
        .enumerate()
        {
            let upper = tmp.path().join(format!("upper{i}"));
            fs::create_dir(&upper).unwrap();
            let mut tar = upper_tar[..upper_tar.len() - 1024].to_vec();
            let mut more = TarBuilder::new();
            more.file(".wh.f", b"").file(".wh.gone", b"");
            tar.extend_from_slice(&more.finish());
            unpack_layer(&tar[..], &upper).unwrap();
            overlay_view(&[&lower, &upper], &mnt, |m| {
                let names = |p: &str| {
                    let mut v: Vec<String> = fs::read_dir(m.join(p))
                        .unwrap()
                        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect();
                    v.sort();
                    v
                };
                assert_eq!(names(""), ["d", "f"], "order {i}");
                assert_eq!(names("d"), ["new"], "order {i}: lower d/old shows through");
                assert_eq!(fs::read(m.join("f")).unwrap(), b"upper", "order {i}");
            });
        }
    }

    #[test]
    fn whiteout_with_dot_names_is_refused() {
        let f = fixture();
        for p in ["a/.wh.", "a/.wh..", "a/.wh..."] {
            let mut t = TarBuilder::new();
            t.file(p, b"");
            let err = f.unpack(&t.finish()).unwrap_err();
            assert!(matches!(err, UnpackError::UnsafePath { .. }), "{p}: {err}");
        }
    }

    #[test]
    fn opaque_marker_sets_trusted_overlay_opaque() {
        let f = fixture();
        let mut t = TarBuilder::new();
        t.dir("var/")
            .dir("var/lib/")
            .file("var/lib/.wh..wh..opq", b"")
            .file("fresh/dir/.wh..wh..opq", b"")
            .file("var/.wh..wh.plnk", b"") // other meta whiteouts: ignored
            .file("var/lib/kept", b"k");
        f.unpack(&t.finish()).unwrap();
        assert_eq!(
            lget(&f.p("var/lib"), OPAQUE_XATTR).as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(
            lget(&f.p("fresh/dir"), OPAQUE_XATTR).as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(lget(&f.p("var"), OPAQUE_XATTR), None);
        assert_eq!(f.names("var"), ["lib"]);
        assert_eq!(f.names("var/lib"), ["kept"]);
        assert_eq!(f.names("fresh/dir"), Vec::<String>::new());
    }

    #[test]
    fn opaque_marker_at_layer_root_sets_it_on_the_layer_dir() {
        let f = fixture();
        let mut t = TarBuilder::new();
        t.file(".wh..wh..opq", b"");
        f.unpack(&t.finish()).unwrap();
        assert_eq!(lget(&f.layer, OPAQUE_XATTR).as_deref(), Some(&b"y"[..]));
    }

    #[test]
    fn ownership_modes_setuid_xattrs_and_mtimes_are_preserved() {
        let f = fixture();
        // security.capability, v2: CAP_NET_RAW (13) permitted + effective.
        let cap: Vec<u8> = [0x0200_0001u32, 1 << 13, 0, 0, 0]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let mut t = TarBuilder::new();
        let mut h = RawHeader::ustar(b'5', b"d/");
        h.mode(0o1777).uid(1001).gid(1002).mtime(1_500_000_000);
        t.pax(b'x', &[("SCHILY.xattr.user.dir", b"dv")]).header(&h);

        t.pax(
            b'x',
            &[
                ("SCHILY.xattr.user.note", b"hello"),
                ("SCHILY.xattr.security.capability", &cap),
                ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
                ("SCHILY.xattr.trusted.evil", b"x"),
                ("mtime", b"1600000000.123456789"),
            ],
        );
        let mut h = RawHeader::ustar(b'0', b"d/ping");
        h.mode(0o4755).uid(1000).gid(2000);
        t.entry(&h, b"#!ping");

        let mut h = RawHeader::ustar(b'0', b"d/sgid");
        h.mode(0o2711).uid(0).gid(5);
        t.entry(&h, b"x");

        let mut h = RawHeader::gnu(b'0', b"d/bigid");
        h.base256(108, 8, 3_000_000_000)
            .base256(116, 8, 70_000)
            .mode(0o640);
        t.entry(&h, b"y");

        let mut h = RawHeader::ustar(b'2', b"d/link");
        h.link(b"ping").uid(33).gid(44).mtime(1_234_567_890);
        t.header(&h);

        let mut h = RawHeader::ustar(b'6', b"d/fifo");
        h.mode(0o620).uid(7).gid(8).mtime(1_111_111_111);
        t.header(&h);

        f.unpack(&t.finish()).unwrap();

        let md = meta(&f.p("d/ping"));
        assert_eq!((md.uid(), md.gid()), (1000, 2000));
        assert_eq!(md.mode() & 0o7777, 0o4755, "setuid kept after chown");
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_600_000_000, 123_456_789));
        assert_eq!(
            lget(&f.p("d/ping"), "user.note").as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(lget(&f.p("d/ping"), "security.capability"), Some(cap));
        assert_eq!(lget(&f.p("d/ping"), "trusted.overlay.opaque"), None);
        assert_eq!(lget(&f.p("d/ping"), "trusted.evil"), None);

        let md = meta(&f.p("d/sgid"));
        assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (0, 5, 0o2711));

        let md = meta(&f.p("d/bigid"));
        assert_eq!(
            (md.uid(), md.gid(), md.mode() & 0o7777),
            (3_000_000_000, 70_000, 0o640)
        );

        let md = meta(&f.p("d/link"));
        assert!(md.file_type().is_symlink());
        assert_eq!((md.uid(), md.gid()), (33, 44));
        assert_eq!(md.mtime(), 1_234_567_890);

        let md = meta(&f.p("d/fifo"));
        assert!(md.file_type().is_fifo());
        assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (7, 8, 0o620));
        assert_eq!(md.mtime(), 1_111_111_111);

        let md = meta(&f.p("d"));
        assert_eq!(
            (md.uid(), md.gid(), md.mode() & 0o7777),
            (1001, 1002, 0o1777)
        );
        assert_eq!(
            md.mtime(),
            1_500_000_000,
            "directory mtime set after its children"
        );
        assert_eq!(lget(&f.p("d"), "user.dir").as_deref(), Some(&b"dv"[..]));
    }

    #[test]
    fn directory_mtimes_survive_later_whiteouts_and_children() {
        let f = fixture();
        let mut t = TarBuilder::new();
        let mut h = RawHeader::ustar(b'5', b"a/");
        h.mode(0o755).mtime(1000);
        t.header(&h);
        let mut h = RawHeader::ustar(b'5', b"a/b/");
        h.mode(0o755).mtime(2000);
        t.header(&h)
            .file("a/b/c", b"c")
            .file("a/.wh.gone", b"")
            .file("a/b/.wh..wh..opq", b"");
        f.unpack(&t.finish()).unwrap();
        assert_eq!(meta(&f.p("a")).mtime(), 1000);
        assert_eq!(meta(&f.p("a/b")).mtime(), 2000);
    }

    #[test]
    fn removed_directory_trees_drop_their_pending_mtimes() {
        let mut t = Tracked::default();
        for k in ["a", "a/b", "a/b/c", "a.x", "a0", "ab", "b"] {
            t.dir_times.insert(k.as_bytes().to_vec(), Mtime::default());
        }
        t.forget_tree(b"a");
        let left: Vec<&[u8]> = t.dir_times.keys().map(Vec::as_slice).collect();
        assert_eq!(left, [&b"a.x"[..], b"a0", b"ab", b"b"]);

        // End to end: a directory removed and created again gets the new mtime.
        let f = fixture();
        let mut b = TarBuilder::new();
        let mut h = RawHeader::ustar(b'5', b"a/b/");
        h.mtime(100);
        b.header(&h).file("a", b"file").dir("a/");
        h.mtime(300);
        b.header(&h);
        // Repeated directory entries: the last one wins.
        for m in [400, 500] {
            let mut h = RawHeader::ustar(b'5', b"r/");
            h.mtime(m);
            b.header(&h);
        }
        f.unpack(&b.finish()).unwrap();
        assert_eq!(meta(&f.p("a/b")).mtime(), 300);
        assert_eq!(meta(&f.p("r")).mtime(), 500);
    }

    #[test]
    fn missing_parents_are_created_0755_root_owned() {
        let f = fixture();
        let mut t = TarBuilder::new();
        let mut h = RawHeader::ustar(b'0', b"usr/local/bin/tool");
        h.uid(1000).gid(1000).mode(0o700);
        t.entry(&h, b"tool");
        f.unpack(&t.finish()).unwrap();
        for d in ["usr", "usr/local", "usr/local/bin"] {
            let md = meta(&f.p(d));
            assert!(md.is_dir());
            assert_eq!(
                (md.mode() & 0o7777, md.uid(), md.gid()),
                (0o755, 0, 0),
                "{d}"
            );
        }
        assert_eq!(meta(&f.p("usr/local/bin/tool")).uid(), 1000);
    }

    #[test]
    fn parent_that_is_a_file_is_an_error() {
        let f = fixture();
        let mut t = TarBuilder::new();
        t.file("a", b"file").file("a/b", b"x");
        let err = f.unpack(&t.finish()).unwrap_err();
        assert!(
            matches!(&err, UnpackError::Invalid { reason, .. } if reason.contains("not a directory")),
            "{err}"
        );
    }

    #[test]
    fn later_entry_replaces_earlier() {
        let f = fixture();
        let mut t = TarBuilder::new();
        // file over file
        t.file("f", b"one").file("f", b"two");
        // symlink over file, file over symlink
        t.file("s", b"file").symlink("s", "target");
        t.symlink("s2", "target").file("s2", b"file now");
        // file over a directory tree (holding a symlink that points out)
        t.dir("tree/")
            .dir("tree/sub/")
            .dir("tree/sub/deeper/")
            .file("tree/sub/deeper/x", b"x")
            .symlink("tree/out", f.outside.to_str().unwrap())
            .file("tree/sub/y", b"y")
            .file("tree", b"tree is a file now");
        // directory over file
        t.file("d", b"file").dir("d/").file("d/inner", b"inner");
        // directory over directory keeps its children, updates metadata
        let mut h = RawHeader::ustar(b'5', b"keep/");
        h.mode(0o700);
        t.header(&h).file("keep/child", b"c");
        let mut h = RawHeader::ustar(b'5', b"keep/");
        h.mode(0o750).uid(42);
        t.header(&h);
        // fifo over file, fifo over this layer's whiteout
        t.file("p", b"").header(&RawHeader::ustar(b'6', b"p"));
        t.file(".wh.q", b"").header(&RawHeader::ustar(b'6', b"q"));
        f.unpack(&t.finish()).unwrap();

        assert_eq!(fs::read(f.p("f")).unwrap(), b"two");
        assert_eq!(fs::read_link(f.p("s")).unwrap(), Path::new("target"));
        assert_eq!(fs::read(f.p("s2")).unwrap(), b"file now");
        assert!(meta(&f.p("s2")).is_file());
        assert_eq!(fs::read(f.p("tree")).unwrap(), b"tree is a file now");
        assert!(meta(&f.p("d")).is_dir());
        assert_eq!(fs::read(f.p("d/inner")).unwrap(), b"inner");
        let md = meta(&f.p("keep"));
        assert_eq!((md.mode() & 0o7777, md.uid()), (0o750, 42));
        assert_eq!(f.names("keep"), ["child"]);
        assert!(meta(&f.p("p")).file_type().is_fifo());
        assert!(meta(&f.p("q")).file_type().is_fifo());
        f.assert_outside_untouched();
    }

    #[test]
    fn entries_after_a_replaced_parent_directory_go_to_the_new_one() {
        // The cached parent fd must not outlive the directory it points to.
        let f = fixture();
        let mut t = TarBuilder::new();
        t.dir("a/")
            .dir("a/b/")
            .file("a/b/one", b"1")
            .file("a", b"now a file")
            .dir("a/")
            .file("a/b/two", b"2");
        f.unpack(&t.finish()).unwrap();
        assert_eq!(f.names("a"), ["b"]);
        assert_eq!(f.names("a/b"), ["two"]);
    }

    #[test]
    fn long_gnu_and_pax_paths_are_unpacked() {
        let f = fixture();
        let deep = (0..20)
            .map(|i| format!("dir{i:02}-{}", "x".repeat(20)))
            .collect::<Vec<_>>()
            .join("/");
        let gnu_path = format!("{deep}/gnu-file");
        let pax_path = format!("{deep}/pax-file");
        let mut prefix_h = RawHeader::ustar(b'0', b"in-prefix");
        prefix_h.prefix(b"some/prefix/dir");
        let mut t = TarBuilder::new();
        t.gnu_long(b'L', gnu_path.as_bytes())
            .entry(&RawHeader::gnu(b'0', b"short"), b"gnu")
            .pax(b'x', &[("path", pax_path.as_bytes())])
            .entry(&RawHeader::ustar(b'0', b"short"), b"pax")
            .entry(&prefix_h, b"prefix");
        f.unpack(&t.finish()).unwrap();
        assert_eq!(fs::read(f.p(&gnu_path)).unwrap(), b"gnu");
        assert_eq!(fs::read(f.p(&pax_path)).unwrap(), b"pax");
        assert_eq!(
            fs::read(f.p("some/prefix/dir/in-prefix")).unwrap(),
            b"prefix"
        );
        assert!(!f.p("short").exists());
    }

    #[test]
    fn non_utf8_names_are_kept_as_bytes() {
        use std::os::unix::ffi::OsStrExt;
        let f = fixture();
        let mut t = TarBuilder::new();
        t.entry(&RawHeader::ustar(b'0', b"caf\xe9"), b"latin1");
        f.unpack(&t.finish()).unwrap();
        let p = f.layer.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
        assert_eq!(fs::read(p).unwrap(), b"latin1");
    }

    #[test]
    fn out_of_range_owner_is_refused() {
        let f = fixture();
        let mut h = RawHeader::gnu(b'0', b"f");
        h.base256(108, 8, u32::MAX as i64);
        let mut t = TarBuilder::new();
        t.header(&h);
        let err = f.unpack(&t.finish()).unwrap_err();
        assert!(matches!(err, UnpackError::Invalid { .. }), "{err}");
    }

    #[test]
    fn truncated_archive_is_an_error() {
        let f = fixture();
        let mut t = TarBuilder::new();
        t.file("a", &[5u8; 4000]);
        let bytes = t.buf[..512 + 1000].to_vec();
        let err = f.unpack(&bytes).unwrap_err();
        assert!(
            matches!(
                err,
                UnpackError::Tar(TarError::Truncated {
                    what: "inside entry data",
                    ..
                })
            ),
            "{err}"
        );
        let err = f.unpack(&t.buf[..300]).unwrap_err();
        assert!(
            matches!(err, UnpackError::Tar(TarError::Truncated { .. })),
            "{err}"
        );
    }

    #[test]
    fn bad_checksum_is_an_error() {
        let f = fixture();
        let mut t = TarBuilder::new();
        t.file("a", b"a");
        let mut bytes = t.finish();
        bytes[0] = b'b'; // the path changed after the checksum was computed
        let err = f.unpack(&bytes).unwrap_err();
        assert!(
            matches!(err, UnpackError::Tar(TarError::Checksum { .. })),
            "{err}"
        );
        assert!(f.names("").is_empty());
    }

    #[test]
    fn huge_gnu_longname_is_refused_before_anything_is_written() {
        let f = fixture();
        let mut h = RawHeader::gnu(b'L', b"././@LongLink");
        h.size(u32::MAX.into());
        let mut t = TarBuilder::new();
        t.file("first", b"1").header(&h);
        let err = f.unpack(&t.buf).unwrap_err();
        assert!(
            matches!(err, UnpackError::Tar(TarError::TooLarge { .. })),
            "{err}"
        );
    }

    #[test]
    fn stops_at_end_of_archive_marker_leaving_the_rest_for_the_caller() {
        let f = fixture();
        let mut t = TarBuilder::new();
        t.file("a", &[1u8; 600])
            .end()
            .raw(b"the caller drains this");
        let bytes = t.buf.clone();
        let mut cursor = Cursor::new(bytes);
        let stats = unpack_layer(&mut cursor, &f.layer).unwrap();
        assert_eq!(
            stats,
            UnpackStats {
                entries: 1,
                bytes: 600
            }
        );
        // header + 2 data blocks + the first zero block.
        assert_eq!(cursor.position(), 512 * 4);
    }

    #[test]
    fn large_file_is_copied_intact() {
        let f = fixture();
        let data: Vec<u8> = (0..(3 * COPY_BUF_SIZE + 12345))
            .map(|i| (i * 7 % 253) as u8)
            .collect();
        let mut t = TarBuilder::new();
        t.file("big", &data);
        let archive = t.finish();
        let stats = unpack_layer(io::BufReader::new(&archive[..]), &f.layer).unwrap();
        assert_eq!(stats.bytes, data.len() as u64);
        assert!(fs::read(f.p("big")).unwrap() == data);
    }

    #[test]
    fn errors_name_the_entry_and_are_send_sync() {
        fn assert_error<E: std::error::Error + Send + Sync + 'static>() {}
        assert_error::<UnpackError>();
        assert_error::<TarError>();
        let f = fixture();
        let mut t = TarBuilder::new();
        t.hardlink("usr/bin/x", "../../etc/shadow");
        let msg = f.unpack(&t.finish()).unwrap_err().to_string();
        assert!(
            msg.contains("usr/bin/x") && msg.contains("../../etc/shadow"),
            "{msg}"
        );
    }
}
