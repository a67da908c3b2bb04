//! Committing a container's writable layer as a new image (the seeds'
//! change management): its overlay upper directory becomes an OCI layer
//! (overlayfs whiteouts, a 0/0 character device, become `.wh.<name>`; an
//! opaque directory, `trusted.overlay.opaque=y`, gets `.wh..wh..opq`), on
//! top of its image's layers, with a new config (diff_ids and history) and
//! manifest in berth's store under the name given. The layer is unpacked
//! by the same code pulls use, so the new image's snapshot is exactly what
//! a pull of it would make.
//!
//! The layer tar is written with the `tar` crate's builder (the reading
//! side of berth is its own bounded reader, `crate::tar`: writing what we
//! walk ourselves needs no bounds).

use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::manifest::{self, ImageConfig};
use crate::reference::Reference;
use crate::store::{ImageRecord, SnapshotRecord, Store};

/// A container's ids as the node sees them, when its pod had a user
/// namespace: the layer records them as the container saw them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdShift {
    pub uid: u32,
    pub gid: u32,
    pub length: u32,
}

impl IdShift {
    fn back(base: u32, length: u32, id: u32) -> u64 {
        if id >= base && id - base < length {
            u64::from(id - base)
        } else {
            // Not the container's: nobody, as it saw it.
            65534
        }
    }
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Hasher,
    written: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The layer of `upper`, gzipped into `out`: (its size, its digest, the
/// tar's diff id).
///
/// The container may still be running and changing its layer: every
/// directory is opened from `upper` with openat2 RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV and every entry relative to it
/// with O_NOFOLLOW, its type and size taken from the opened fd, so that a
/// symlink swapped in cannot make the walk read the node's files; a file
/// that changes size meanwhile is cut or zero-padded to the size its
/// header says.
pub fn layer_of<W: Write>(
    upper: &Path,
    shift: Option<IdShift>,
    out: W,
) -> Result<(u64, Digest, Digest)> {
    use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
    let ctx =
        |what: &str, p: &Path| format!("committing {}: {what} {}", upper.display(), p.display());
    let root = rustix::fs::open(
        upper,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| Error::io(ctx("opening", upper), e.into()))?;
    let blob = Hashing {
        inner: out,
        hasher: Hasher::sha256(),
        written: 0,
    };
    let gz = flate2::write::GzEncoder::new(blob, flate2::Compression::fast());
    let diff = Hashing {
        inner: gz,
        hasher: Hasher::sha256(),
        written: 0,
    };
    let mut b = tar::Builder::new(diff);
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir_path = upper.join(&rel);
        let dir = rustix::fs::openat2(
            &root,
            if rel.as_os_str().is_empty() {
                Path::new(".")
            } else {
                rel.as_path()
            },
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV,
        )
        .map_err(|e| Error::io(ctx("opening", &dir_path), e.into()))?;
        let mut names: Vec<std::ffi::OsString> = Vec::new();
        for e in rustix::fs::Dir::read_from(&dir)
            .map_err(|e| Error::io(ctx("reading", &dir_path), e.into()))?
        {
            let e = e.map_err(|e| Error::io(ctx("reading", &dir_path), e.into()))?;
            let n = std::ffi::OsStr::from_bytes(e.file_name().to_bytes());
            if n != "." && n != ".." {
                names.push(n.to_os_string());
            }
        }
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let path = dir_path.join(&name);
            let rel_path = rel.join(&name);
            let io_err = |e: io::Error| Error::io(ctx("archiving", &path), e);
            let st = match rustix::fs::statat(&dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Removed by the running container since the listing.
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(io_err(e.into())),
            };
            let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
            let mut h = tar::Header::new_gnu();
            h.set_mtime(st.st_mtime.max(0) as u64);
            h.set_mode(st.st_mode & 0o7777);
            let (uid, gid) = match shift {
                Some(s) => (
                    IdShift::back(s.uid, s.length, st.st_uid),
                    IdShift::back(s.gid, s.length, st.st_gid),
                ),
                None => (u64::from(st.st_uid), u64::from(st.st_gid)),
            };
            h.set_uid(uid);
            h.set_gid(gid);
            let empty = |mtime: i64| {
                let mut e = tar::Header::new_gnu();
                e.set_entry_type(tar::EntryType::Regular);
                e.set_size(0);
                e.set_mode(0o600);
                e.set_mtime(mtime.max(0) as u64);
                e
            };
            match kind {
                rustix::fs::FileType::CharacterDevice if st.st_rdev == 0 => {
                    // An overlayfs whiteout: the OCI one.
                    let name = format!(".wh.{}", name.to_string_lossy());
                    b.append_data(&mut empty(st.st_mtime), rel.join(name), io::empty())
                        .map_err(io_err)?;
                }
                rustix::fs::FileType::Directory => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    b.append_data(&mut h, &rel_path, io::empty())
                        .map_err(io_err)?;
                    let sub = rustix::fs::openat(
                        &dir,
                        name.as_os_str(),
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                        Mode::empty(),
                    )
                    .map_err(|e| io_err(e.into()))?;
                    if is_opaque(&sub) {
                        b.append_data(
                            &mut empty(st.st_mtime),
                            rel_path.join(".wh..wh..opq"),
                            io::empty(),
                        )
                        .map_err(io_err)?;
                    }
                    subdirs.push(rel_path);
                }
                rustix::fs::FileType::Symlink => {
                    let target = rustix::fs::readlinkat(&dir, name.as_os_str(), Vec::new())
                        .map_err(|e| io_err(e.into()))?;
                    let target = std::ffi::OsStr::from_bytes(target.as_bytes());
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, &rel_path, target).map_err(io_err)?;
                }
                rustix::fs::FileType::RegularFile => {
                    // Hardlinks between files of the upper directory
                    // become copies.
                    let fd = rustix::fs::openat(
                        &dir,
                        name.as_os_str(),
                        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NOCTTY,
                        Mode::empty(),
                    )
                    .map_err(|e| io_err(e.into()))?;
                    let fst = rustix::fs::fstat(&fd).map_err(|e| io_err(e.into()))?;
                    if rustix::fs::FileType::from_raw_mode(fst.st_mode)
                        != rustix::fs::FileType::RegularFile
                    {
                        continue;
                    }
                    let len = fst.st_size.max(0) as u64;
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(len);
                    let data = io::Read::take(
                        io::Read::chain(io::Read::take(fs::File::from(fd), len), io::repeat(0)),
                        len,
                    );
                    b.append_data(&mut h, &rel_path, data).map_err(io_err)?;
                }
                _ => {
                    // Device nodes, fifos and sockets a container made are
                    // not an image's to carry (a pull refuses most of them).
                    tracing::warn!(path = %rel_path.display(), "commit: a special file is left out of the layer");
                }
            }
        }
        // Each directory's entries, then its subdirectories' (in name
        // order): a parent always comes before what is in it.
        stack.extend(subdirs.into_iter().rev());
    }
    let diff = b
        .into_inner()
        .map_err(|e| Error::io("finishing the layer tar", e))?;
    let diff_id = diff.hasher.finish();
    let mut blob = diff
        .inner
        .finish()
        .map_err(|e| Error::io("finishing the layer's gzip", e))?;
    blob.flush()
        .map_err(|e| Error::io("writing the layer", e))?;
    Ok((blob.written, blob.hasher.finish(), diff_id))
}

fn is_opaque(dir: &impl std::os::fd::AsFd) -> bool {
    let mut buf = [0u8; 4];
    matches!(
        rustix::fs::fgetxattr(dir, "trusted.overlay.opaque", &mut buf),
        Ok(1) if buf[0] == b'y'
    )
}

/// What a commit made.
#[derive(Debug, Clone)]
pub struct Committed {
    pub image_id: Digest,
    pub name: String,
    pub layer_digest: Digest,
    pub diff_id: Digest,
}

/// Commit `upper` (a container's overlay upper directory) over the image
/// `parent` as `name`; blocking.
pub fn commit(
    store: &Store,
    parent: &Digest,
    upper: &Path,
    name: &str,
    comment: &str,
    shift: Option<IdShift>,
) -> Result<Committed> {
    let r: Reference = name.parse()?;
    let tagged = r.tagged_name().ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{name:?}: a commit needs a name with a tag, not a digest"
        ))
    })?;
    let base = store
        .resolve(&parent.to_string())
        .ok_or_else(|| Error::NotFound(format!("image {parent} (the container's) is gone")))?;
    let manifest_json = store.read_blob(&base.record.manifest_digest)?;
    let mut manifest: serde_json::Value = serde_json::from_slice(&manifest_json)
        .map_err(|e| Error::Registry(format!("the image's manifest: {e}")))?;
    let mut config: serde_json::Value = serde_json::from_slice(&base.config_json)
        .map_err(|e| Error::Registry(format!("the image's config: {e}")))?;

    // The layer goes to a file under the store's tmp/, not memory: a
    // writable layer can be gigabytes.
    let work = store.tmp_dir("commit-layer")?;
    let r = commit_in(
        store,
        &base,
        &mut manifest,
        &mut config,
        upper,
        &tagged,
        comment,
        shift,
        &work,
    );
    let _ = fs::remove_dir_all(&work);
    r
}

#[allow(clippy::too_many_arguments)]
fn commit_in(
    store: &Store,
    base: &crate::store::ImageEntry,
    manifest: &mut serde_json::Value,
    config: &mut serde_json::Value,
    upper: &Path,
    tagged: &str,
    comment: &str,
    shift: Option<IdShift>,
    work: &Path,
) -> Result<Committed> {
    let blob_path = work.join("layer.tar.gz");
    let file = fs::File::create(&blob_path).map_err(|e| Error::io("creating the layer file", e))?;
    let mut w = io::BufWriter::new(file);
    let (blob_len, layer_digest, diff_id) = layer_of(upper, shift, &mut w)?;
    let file = w
        .into_inner()
        .map_err(|e| Error::io("writing the layer file", e.into_error()))?;
    file.sync_all()
        .map_err(|e| Error::io("syncing the layer file", e))?;
    drop(file);
    let open_blob = || {
        fs::File::open(&blob_path)
            .map(io::BufReader::new)
            .map_err(|e| Error::io("reading the layer file", e))
    };

    // The new layer's snapshot, unpacked as a pull would.
    let mut diff_ids = base.config.rootfs.diff_ids.clone();
    diff_ids.push(diff_id.clone());
    let chain = manifest::chain_ids(&diff_ids);
    let chain_id = chain.last().cloned().unwrap_or_else(|| diff_id.clone());
    if !store.has_snapshot(&chain_id) {
        let tmp = store.tmp_dir("commit")?;
        let stats = crate::unpack::unpack_layer(flate2::read::GzDecoder::new(open_blob()?), &tmp)
            .map_err(|e| Error::Registry(format!("unpacking the committed layer: {e}")));
        match stats {
            Ok(s) => store.commit_snapshot(
                &tmp,
                &chain_id,
                SnapshotRecord {
                    diff_id: diff_id.clone(),
                    bytes: s.bytes,
                    inodes: s.entries,
                },
            )?,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
        }
    }
    // Until the record names them, the GC would take the new blobs.
    let _kept_layer = store.keep_blobs(&[&layer_digest])?;
    store.adopt_blob(&layer_digest, &blob_path)?;

    let oci = manifest
        .get("mediaType")
        .and_then(|m| m.as_str())
        .is_none_or(|m| m.contains("oci"));
    let layer_type = if oci {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    } else {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    };
    let now = humantime_now();
    config["created"] = now.clone().into();
    config["rootfs"]["diff_ids"] = diff_ids
        .iter()
        .map(|d| serde_json::Value::from(d.to_string()))
        .collect::<Vec<_>>()
        .into();
    let history = config
        .get_mut("history")
        .and_then(|h| h.as_array_mut())
        .map(std::mem::take)
        .unwrap_or_default();
    let mut history = history;
    history.push(serde_json::json!({
        "created": now,
        "created_by": "berth commit",
        "comment": comment,
    }));
    config["history"] = history.into();
    let config_json = serde_json::to_vec(&config)
        .map_err(|e| Error::Registry(format!("encoding the config: {e}")))?;
    let image_id = Digest::sha256_of(&config_json);
    manifest["config"]["digest"] = image_id.to_string().into();
    manifest["config"]["size"] = config_json.len().into();
    let layers = manifest
        .get_mut("layers")
        .and_then(|l| l.as_array_mut())
        .ok_or_else(|| Error::Registry("the image's manifest has no layers".into()))?;
    layers.push(serde_json::json!({
        "mediaType": layer_type,
        "digest": layer_digest.to_string(),
        "size": blob_len,
    }));
    let size = config_json.len() as u64
        + layers
            .iter()
            .filter_map(|l| l["size"].as_u64())
            .sum::<u64>();
    let manifest_json = serde_json::to_vec(&manifest)
        .map_err(|e| Error::Registry(format!("encoding the manifest: {e}")))?;
    let manifest_digest = Digest::sha256_of(&manifest_json);
    let _kept = store.keep_blobs(&[&image_id, &manifest_digest])?;
    store.write_blob(&image_id, &config_json)?;
    store.write_blob(&manifest_digest, &manifest_json)?;
    let parsed = ImageConfig::parse(&config_json)?;
    store.record_image(
        ImageRecord {
            id: image_id.clone(),
            repo_tags: vec![tagged.to_string()],
            repo_digests: Vec::new(),
            manifest_digest,
            chain_ids: chain,
            size,
            pulled_at: crate::store::now_secs(),
        },
        Arc::from(&config_json[..]),
        parsed,
    )?;
    Ok(Committed {
        image_id,
        name: tagged.to_string(),
        layer_digest,
        diff_id,
    })
}

/// Now as RFC 3339 (UTC, seconds), as image configs write `created`.
fn humantime_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86400;
    let rem = secs % 86400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_is_rfc3339() {
        let t = humantime_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }

    #[test]
    fn an_upper_dir_becomes_an_oci_layer_with_whiteouts() {
        let d = tempfile::tempdir().unwrap();
        let up = d.path();
        fs::create_dir(up.join("etc")).unwrap();
        fs::write(up.join("etc/new"), b"hello").unwrap();
        std::os::unix::fs::symlink("new", up.join("etc/link")).unwrap();
        // An overlayfs whiteout of /bin/gone.
        fs::create_dir(up.join("bin")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            up.join("bin/gone"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0),
            0,
        )
        .unwrap();
        fs::create_dir(up.join("opaque")).unwrap();
        rustix::fs::setxattr(
            up.join("opaque"),
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let mut blob = Vec::new();
        let (len, digest, diff_id) = layer_of(up, None, &mut blob).unwrap();
        assert_eq!(len, blob.len() as u64);
        assert_eq!(digest, Digest::sha256_of(&blob));
        let mut tar_bytes = Vec::new();
        io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&blob[..]), &mut tar_bytes)
            .unwrap();
        assert_eq!(diff_id, Digest::sha256_of(&tar_bytes));
        let mut a = tar::Archive::new(&tar_bytes[..]);
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "bin",
                "etc",
                "opaque",
                "opaque/.wh..wh..opq",
                "bin/.wh.gone",
                "etc/link",
                "etc/new",
            ]
        );
    }
}
