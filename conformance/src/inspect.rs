//! Looking at berthd's root without knowing its layout: find unpacked files
//! by content or name, overlayfs whiteouts, opaque directories.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Every entry under `root` (directories included), symlinks not followed.
pub fn walk(root: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut out = Vec::new();
    walk_into(root, &mut out);
    out
}

fn walk_into(dir: &Path, out: &mut Vec<(PathBuf, fs::Metadata)>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for entry in rd.flatten() {
        let path = entry.path();
        let Ok(md) = fs::symlink_metadata(&path) else {
            continue;
        };
        let is_dir = md.is_dir();
        out.push((path.clone(), md));
        if is_dir {
            walk_into(&path, out);
        }
    }
}

/// Regular files under `root` whose content is exactly `content`.
pub fn files_with_content(root: &Path, content: &[u8]) -> Vec<PathBuf> {
    walk(root)
        .into_iter()
        .filter(|(_, md)| md.is_file() && md.len() == content.len() as u64)
        .filter(|(p, _)| fs::read(p).map(|c| c == content).unwrap_or(false))
        .map(|(p, _)| p)
        .collect()
}

/// Entries under `root` whose file name is `name`.
pub fn entries_named(root: &Path, name: &str) -> Vec<PathBuf> {
    walk(root)
        .into_iter()
        .filter(|(p, _)| {
            p.file_name()
                .map(|n| n.as_bytes() == name.as_bytes())
                .unwrap_or(false)
        })
        .map(|(p, _)| p)
        .collect()
}

/// Entries under `root` whose path ends with `suffix` (e.g. `opq/new`).
pub fn entries_ending_with(root: &Path, suffix: &str) -> Vec<PathBuf> {
    walk(root)
        .into_iter()
        .filter(|(p, _)| p.ends_with(suffix))
        .map(|(p, _)| p)
        .collect()
}

/// overlayfs whiteouts named `name`: character devices 0/0.
pub fn whiteouts_named(root: &Path, name: &str) -> Vec<PathBuf> {
    walk(root)
        .into_iter()
        .filter(|(p, md)| {
            md.file_type().is_char_device()
                && md.rdev() == 0
                && p.file_name()
                    .map(|n| n.as_bytes() == name.as_bytes())
                    .unwrap_or(false)
        })
        .map(|(p, _)| p)
        .collect()
}

/// The value of an extended attribute (not following symlinks).
pub fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = CString::new(name).ok()?;
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the given length.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return None;
    }
    buf.truncate(len as usize);
    Some(buf)
}

/// Directories named `name` marked opaque for overlayfs
/// (`trusted.overlay.opaque` or `user.overlay.opaque` = `y`).
pub fn opaque_dirs_named(root: &Path, name: &str) -> Vec<PathBuf> {
    walk(root)
        .into_iter()
        .filter(|(p, md)| {
            md.is_dir()
                && p.file_name()
                    .map(|n| n.as_bytes() == name.as_bytes())
                    .unwrap_or(false)
        })
        .filter(|(p, _)| {
            ["trusted.overlay.opaque", "user.overlay.opaque"]
                .iter()
                .any(|x| xattr(p, x).as_deref() == Some(b"y"))
        })
        .map(|(p, _)| p)
        .collect()
}

/// Total bytes of regular files under `root` (hard links counted once).
pub fn disk_bytes(root: &Path) -> u64 {
    let mut seen = std::collections::HashSet::new();
    walk(root)
        .into_iter()
        .filter(|(_, md)| md.is_file() && seen.insert((md.dev(), md.ino())))
        .map(|(_, md)| md.len())
        .sum()
}
