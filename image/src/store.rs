//! The image store on disk, under the berth root. The root and each store
//! directory below it are 0700 (set at every open, whatever they were), as
//! is each snapshot directory, so that nothing in a layer, setuid files and
//! device nodes included, is reachable by other users of the node through
//! the host path:
//!
//! ```text
//! content/sha256/<hex>     manifests, indexes and configs, by digest
//! snapshots/<chain hex>/   one unpacked layer each, an overlayfs lowerdir
//! tmp/                     unpacks and writes in progress; emptied at start
//! meta.redb                image, snapshot and hold records
//! ```
//!
//! Crash safety comes from order: a snapshot directory is complete before it
//! is renamed into `snapshots/`, its record is committed after the rename, and
//! an image record is committed last, after everything it names exists. At
//! start, whatever a crash left between those steps (temp files, directories
//! without a record, records without a directory) is removed, so a half pull
//! is never listed and can simply be repeated.
//!
//! Records are mirrored in memory so that ImageStatus and ListImages, which
//! kubelet calls constantly, read no disk.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::ImageConfig;
use crate::reference::Reference;

const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const HOLDS: TableDefinition<&str, &[u8]> = TableDefinition::new("holds");

/// An image as recorded in the database.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:<config digest>`, the CRI image id.
    pub id: Digest,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// The platform manifest the layers came from.
    pub manifest_digest: Digest,
    /// Chain ids of the layers, bottom first.
    pub chain_ids: Vec<Digest>,
    /// Config plus compressed layer sizes, as the registry reported them.
    pub size: u64,
    /// Seconds since the epoch of the first pull.
    pub pulled_at: u64,
}

/// An image as the service hands it out: the record plus its parsed config.
#[derive(Debug)]
pub struct ImageEntry {
    pub record: ImageRecord,
    pub config_json: Arc<[u8]>,
    pub config: ImageConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub diff_id: Digest,
    /// Bytes of file data and number of entries, counted while unpacking.
    pub bytes: u64,
    pub inodes: u64,
}

#[derive(Default)]
struct Index {
    images: BTreeMap<Digest, Arc<ImageEntry>>,
    /// `name:tag` and `name@digest` → image id.
    names: HashMap<String, Digest>,
    snapshots: HashMap<Digest, SnapshotRecord>,
    /// holder → chain ids it keeps alive (a container's root filesystem).
    holds: HashMap<String, Vec<Digest>>,
    /// holder → the image it has mounted (an image volume): the image
    /// itself is in use, not only its layers.
    in_use: HashMap<String, Digest>,
    /// Blobs (hex) a pull or a commit is writing for an image it has not
    /// recorded yet, with how many of them keep each ([`Store::keep_blobs`]).
    pending_blobs: HashMap<String, usize>,
}

/// Blobs kept out of the GC's reach until this is dropped: see
/// [`Store::keep_blobs`].
pub struct KeptBlobs<'a> {
    store: &'a Store,
    hexes: Vec<String>,
}

impl Drop for KeptBlobs<'_> {
    fn drop(&mut self) {
        let Ok(mut idx) = self.store.index.write() else {
            return;
        };
        for h in &self.hexes {
            if let Some(n) = idx.pending_blobs.get_mut(h) {
                *n -= 1;
                if *n == 0 {
                    idx.pending_blobs.remove(h);
                }
            }
        }
    }
}

/// A hold as the holds table keeps it: the chain ids, and for an image
/// volume the image (older rows are the bare list).
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum HoldRow {
    Volume { chains: Vec<Digest>, image: Digest },
    Layers(Vec<Digest>),
}

/// The container a holder belongs to: a container holds under its id,
/// its image volumes under `<id>/ivol/<n>`.
pub fn holder_container(holder: &str) -> &str {
    holder.split('/').next().unwrap_or(holder)
}

impl Index {
    /// The holders that have `image` mounted as an image volume, sorted.
    fn users(&self, image: &Digest) -> Vec<&str> {
        let mut u: Vec<&str> = self
            .in_use
            .iter()
            .filter(|(_, i)| *i == image)
            .map(|(h, _)| h.as_str())
            .collect();
        u.sort_unstable();
        u
    }

    fn reindex_names(&mut self) {
        self.names.clear();
        for (id, e) in &self.images {
            for n in e.record.repo_tags.iter().chain(&e.record.repo_digests) {
                self.names.insert(n.clone(), id.clone());
            }
        }
    }
}

pub struct Store {
    root: PathBuf,
    db: redb::Database,
    /// Holds and releases, which containers write many at a time.
    group: crate::group_commit::GroupCommit,
    index: RwLock<Index>,
    blob_bytes: AtomicU64,
    blob_count: AtomicU64,
    tmp_seq: AtomicU64,
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn io<T>(context: impl FnOnce() -> String, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|e| Error::io(context(), e))
}

fn mkdir_private(p: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(0o700).recursive(true).create(p) {
        Ok(()) => Ok(()),
        Err(e) => Err(Error::io(format!("creating {}", p.display()), e)),
    }
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Database(e.to_string()))
}

impl Store {
    /// Open (or create) the store under `root`, and clean up what an earlier
    /// crash left behind.
    pub fn open(root: &Path) -> Result<Self> {
        // Not one of them may let other users reach into snapshots: each is
        // a barrier of its own, should an operator open up another.
        for d in ["", "content", "content/sha256", "snapshots", "tmp"] {
            let p = root.join(d);
            mkdir_private(&p)?;
            io(
                || format!("setting mode 0700 on {}", p.display()),
                fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o700)),
            )?;
        }
        // In-progress work of a previous run is never resumed.
        let tmp = root.join("tmp");
        for e in io(|| format!("reading {}", tmp.display()), fs::read_dir(&tmp))?.flatten() {
            remove_any(&e.path());
        }
        let db = redb::Database::create(root.join("meta.redb"))?;
        {
            let tx = db.begin_write()?;
            tx.open_table(IMAGES)?;
            tx.open_table(SNAPSHOTS)?;
            tx.open_table(HOLDS)?;
            tx.commit()?;
        }
        let store = Store {
            root: root.to_path_buf(),
            db,
            group: crate::group_commit::GroupCommit::new(),
            index: RwLock::new(Index::default()),
            blob_bytes: AtomicU64::new(0),
            blob_count: AtomicU64::new(0),
            tmp_seq: AtomicU64::new(0),
        };
        store.load_and_reconcile()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn load_and_reconcile(&self) -> Result<()> {
        let mut images = Vec::new();
        let mut snapshots = HashMap::new();
        let mut holds = HashMap::new();
        let mut in_use = HashMap::new();
        {
            let tx = self.db.begin_read()?;
            for row in tx.open_table(IMAGES)?.iter()? {
                let (k, v) = row?;
                match serde_json::from_slice::<ImageRecord>(v.value()) {
                    Ok(r) => images.push(r),
                    Err(e) => {
                        tracing::warn!(image = k.value(), error = %e, "dropping unreadable image record")
                    }
                }
            }
            for row in tx.open_table(SNAPSHOTS)?.iter()? {
                let (k, v) = row?;
                if let (Ok(d), Ok(r)) = (
                    k.value().parse::<Digest>(),
                    serde_json::from_slice::<SnapshotRecord>(v.value()),
                ) {
                    snapshots.insert(d, r);
                }
            }
            for row in tx.open_table(HOLDS)?.iter()? {
                let (k, v) = row?;
                match serde_json::from_slice::<HoldRow>(v.value()) {
                    Ok(HoldRow::Layers(chains)) => {
                        holds.insert(k.value().to_string(), chains);
                    }
                    Ok(HoldRow::Volume { chains, image }) => {
                        holds.insert(k.value().to_string(), chains);
                        in_use.insert(k.value().to_string(), image);
                    }
                    Err(_) => {}
                }
            }
        }
        // Records whose directory is gone (should not happen) are dropped.
        snapshots.retain(|d, _| self.snapshot_path(d).is_dir());
        let mut idx = Index {
            snapshots,
            holds,
            in_use,
            ..Index::default()
        };
        let mut dropped = Vec::new();
        for r in images {
            let complete = r.chain_ids.iter().all(|c| idx.snapshots.contains_key(c));
            let config = fs::read(self.blob_path(&r.id)).ok().and_then(|b| {
                let c = ImageConfig::parse(&b).ok()?;
                Some((Arc::<[u8]>::from(b), c))
            });
            match (complete, config) {
                (true, Some((config_json, config))) => {
                    idx.images.insert(
                        r.id.clone(),
                        Arc::new(ImageEntry {
                            record: r,
                            config_json,
                            config,
                        }),
                    );
                }
                _ => {
                    tracing::warn!(image = %r.id, "dropping image whose layers or config are missing");
                    dropped.push(r.id);
                }
            }
        }
        idx.reindex_names();
        *self.index.write().map_err(|_| poisoned())? = idx;
        if !dropped.is_empty() {
            let tx = self.db.begin_write()?;
            {
                let mut t = tx.open_table(IMAGES)?;
                for id in &dropped {
                    t.remove(id.to_string().as_str())?;
                }
            }
            tx.commit()?;
        }
        // Snapshot directories nobody recorded are half-made: remove them.
        let known: HashSet<String> = self
            .index
            .read()
            .map_err(|_| poisoned())?
            .snapshots
            .keys()
            .map(|d| d.hex().to_string())
            .collect();
        let snaps = self.root.join("snapshots");
        for e in io(
            || format!("reading {}", snaps.display()),
            fs::read_dir(&snaps),
        )?
        .flatten()
        {
            let name = e.file_name().to_string_lossy().to_string();
            if !known.contains(&name) {
                tracing::info!(snapshot = %name, "removing unrecorded snapshot");
                remove_any(&e.path());
            }
        }
        self.gc()?;
        self.recount_blobs();
        Ok(())
    }

    fn recount_blobs(&self) {
        let (mut n, mut bytes) = (0, 0);
        if let Ok(rd) = fs::read_dir(self.root.join("content/sha256")) {
            for e in rd.flatten() {
                if let Ok(m) = e.metadata() {
                    n += 1;
                    bytes += m.len();
                }
            }
        }
        self.blob_count.store(n, Ordering::Relaxed);
        self.blob_bytes.store(bytes, Ordering::Relaxed);
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        let alg = match d.algorithm() {
            crate::digest::Algorithm::Sha256 => "sha256",
            crate::digest::Algorithm::Sha512 => "sha512",
        };
        self.root.join("content").join(alg).join(d.hex())
    }

    /// The directory of a layer snapshot: an overlayfs lowerdir.
    pub fn snapshot_path(&self, chain_id: &Digest) -> PathBuf {
        self.root.join("snapshots").join(chain_id.hex())
    }

    pub fn has_snapshot(&self, chain_id: &Digest) -> bool {
        self.index
            .read()
            .map(|i| i.snapshots.contains_key(chain_id))
            .unwrap_or(false)
    }

    /// A fresh, empty private directory under tmp/.
    pub fn tmp_dir(&self, what: &str) -> Result<PathBuf> {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let p = self
            .root
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()));
        io(
            || format!("creating {}", p.display()),
            fs::DirBuilder::new().mode(0o700).create(&p),
        )?;
        Ok(p)
    }

    /// Keep `digests` from the GC while the caller writes them for an image
    /// it records next: the GC removes every blob no recorded image names,
    /// and would take a pull's manifest and config between their write and
    /// the record (the image then names blobs that are gone). Drop the
    /// guard after [`Store::record_image`].
    pub fn keep_blobs(&self, digests: &[&Digest]) -> Result<KeptBlobs<'_>> {
        let hexes: Vec<String> = digests.iter().map(|d| d.hex().to_string()).collect();
        let mut idx = self.index.write().map_err(|_| poisoned())?;
        for h in &hexes {
            *idx.pending_blobs.entry(h.clone()).or_default() += 1;
        }
        Ok(KeptBlobs { store: self, hexes })
    }

    /// Write a blob atomically (temp file, fsync, rename); a blob already
    /// there is kept as it is (same digest, same bytes).
    pub fn write_blob(&self, digest: &Digest, data: &[u8]) -> Result<()> {
        let path = self.blob_path(digest);
        if path.exists() {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            mkdir_private(dir)?;
        }
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("blob-{}-{n}", std::process::id()));
        let ctx = || format!("writing blob {digest}");
        let mut f = io(
            ctx,
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp),
        )?;
        let r = f
            .write_all(data)
            .and_then(|_| f.sync_all())
            .and_then(|_| fs::rename(&tmp, &path));
        if let Err(e) = r {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(ctx(), e));
        }
        self.blob_count.fetch_add(1, Ordering::Relaxed);
        self.blob_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Move `file` (a finished, fsynced file under this store's `tmp/`)
    /// into place as blob `digest`; a blob already there is kept.
    pub fn adopt_blob(&self, digest: &Digest, file: &Path) -> Result<()> {
        let path = self.blob_path(digest);
        if path.exists() {
            let _ = fs::remove_file(file);
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            mkdir_private(dir)?;
        }
        let len = fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        io(
            || format!("moving blob {digest} into place"),
            fs::rename(file, &path),
        )?;
        self.blob_count.fetch_add(1, Ordering::Relaxed);
        self.blob_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        io(
            || format!("reading blob {digest}"),
            fs::read(self.blob_path(digest)),
        )
    }

    /// Move a finished unpack into place and record it.
    pub fn commit_snapshot(
        &self,
        unpacked: &Path,
        chain_id: &Digest,
        rec: SnapshotRecord,
    ) -> Result<()> {
        let dest = self.snapshot_path(chain_id);
        io(
            || format!("moving snapshot {chain_id} into place"),
            fs::rename(unpacked, &dest),
        )?;
        let r = (|| -> Result<()> {
            let tx = self.db.begin_write()?;
            tx.open_table(SNAPSHOTS)?
                .insert(chain_id.to_string().as_str(), json(&rec)?.as_slice())?;
            tx.commit()?;
            Ok(())
        })();
        if let Err(e) = r {
            remove_any(&dest);
            return Err(e);
        }
        self.index
            .write()
            .map_err(|_| poisoned())?
            .snapshots
            .insert(chain_id.clone(), rec);
        Ok(())
    }

    /// Record a pulled image, or add a name to it. A tag that named another
    /// image moves to this one (the other keeps its remaining names).
    pub fn record_image(
        &self,
        record: ImageRecord,
        config_json: Arc<[u8]>,
        config: ImageConfig,
    ) -> Result<Arc<ImageEntry>> {
        let mut idx = self.index.write().map_err(|_| poisoned())?;
        let mut changed: Vec<ImageRecord> = Vec::new();
        let mut merged = match idx.images.get(&record.id) {
            Some(e) => e.record.clone(),
            None => record.clone(),
        };
        for t in &record.repo_tags {
            if !merged.repo_tags.contains(t) {
                merged.repo_tags.push(t.clone());
            }
        }
        for d in &record.repo_digests {
            if !merged.repo_digests.contains(d) {
                merged.repo_digests.push(d.clone());
            }
        }
        merged.repo_tags.sort();
        merged.repo_digests.sort();
        // Tags and digests are unique across images.
        for (id, e) in &idx.images {
            if *id == record.id {
                continue;
            }
            let mut r = e.record.clone();
            let before = r.repo_tags.len() + r.repo_digests.len();
            r.repo_tags.retain(|t| !merged.repo_tags.contains(t));
            r.repo_digests.retain(|d| !merged.repo_digests.contains(d));
            if r.repo_tags.len() + r.repo_digests.len() != before {
                changed.push(r);
            }
        }
        {
            let tx = self.db.begin_write()?;
            {
                let mut t = tx.open_table(IMAGES)?;
                t.insert(merged.id.to_string().as_str(), json(&merged)?.as_slice())?;
                for r in &changed {
                    t.insert(r.id.to_string().as_str(), json(r)?.as_slice())?;
                }
            }
            tx.commit()?;
        }
        let entry = Arc::new(ImageEntry {
            record: merged,
            config_json,
            config,
        });
        idx.images.insert(entry.record.id.clone(), entry.clone());
        for r in changed {
            if let Some(old) = idx.images.get(&r.id).cloned() {
                idx.images.insert(
                    r.id.clone(),
                    Arc::new(ImageEntry {
                        record: r,
                        config_json: old.config_json.clone(),
                        config: old.config.clone(),
                    }),
                );
            }
        }
        idx.reindex_names();
        Ok(entry)
    }

    /// Find an image by id (`sha256:<hex>` or the bare hex), by tag or by
    /// digest reference (normalised: `busybox` finds
    /// `docker.io/library/busybox:latest`).
    pub fn resolve(&self, s: &str) -> Option<Arc<ImageEntry>> {
        let idx = self.index.read().ok()?;
        if let Ok(d) = s.parse::<Digest>()
            && let Some(e) = idx.images.get(&d)
        {
            return Some(e.clone());
        }
        if s.len() == 64
            && let Ok(d) = format!("sha256:{s}").parse::<Digest>()
            && let Some(e) = idx.images.get(&d)
        {
            return Some(e.clone());
        }
        let r: Reference = s.parse().ok()?;
        let key = match (&r.digest, &r.tag) {
            (Some(d), _) => r.digested_name(d),
            (None, Some(_)) => r.tagged_name()?,
            (None, None) => return None,
        };
        let id = idx.names.get(&key)?;
        idx.images.get(id).cloned()
    }

    pub fn list(&self) -> Vec<Arc<ImageEntry>> {
        self.index
            .read()
            .map(|i| i.images.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Remove one name (tag or digest reference) of an image, or the whole
    /// image if `name` is None or it was the image's last tag. Then collect
    /// what is no longer used.
    pub fn remove(&self, id: &Digest, name: Option<&str>) -> Result<()> {
        {
            let mut idx = self.index.write().map_err(|_| poisoned())?;
            let Some(entry) = idx.images.get(id).cloned() else {
                return Ok(());
            };
            let mut r = entry.record.clone();
            if let Some(n) = name {
                r.repo_tags.retain(|t| t != n);
                r.repo_digests.retain(|d| d != n);
            }
            let whole = name.is_none() || r.repo_tags.is_empty();
            // Checked under the index lock that hold_volume takes too, so a
            // container mounting it meanwhile cannot slip in between.
            if whole {
                let mut containers: Vec<&str> =
                    idx.users(id).into_iter().map(holder_container).collect();
                if !containers.is_empty() {
                    containers.dedup();
                    return Err(Error::InUse {
                        image: id.to_string(),
                        users: format!("container {}", containers.join(", ")),
                    });
                }
            }
            let tx = self.db.begin_write()?;
            {
                let mut t = tx.open_table(IMAGES)?;
                if whole {
                    t.remove(id.to_string().as_str())?;
                } else {
                    t.insert(id.to_string().as_str(), json(&r)?.as_slice())?;
                }
            }
            tx.commit()?;
            if whole {
                idx.images.remove(id);
            } else {
                idx.images.insert(
                    id.clone(),
                    Arc::new(ImageEntry {
                        record: r,
                        config_json: entry.config_json.clone(),
                        config: entry.config.clone(),
                    }),
                );
            }
            idx.reindex_names();
        }
        self.gc()
    }

    /// Keep an image's layers alive for `holder` (a container) even if the
    /// image is removed; returns the layer directories, bottom first.
    pub fn hold(&self, holder: &str, image: &Digest) -> Result<Vec<PathBuf>> {
        self.hold_as(holder, image, false)
    }

    /// Mount-grade hold for an image volume: the layers as [`Store::hold`],
    /// and the image is in use: [`Store::users`] names the holder until it
    /// is released. `holder` is `<container>/<anything>`, released with
    /// the container's own hold.
    pub fn hold_volume(&self, holder: &str, image: &Digest) -> Result<Vec<PathBuf>> {
        self.hold_as(holder, image, true)
    }

    fn hold_as(&self, holder: &str, image: &Digest, volume: bool) -> Result<Vec<PathBuf>> {
        self.hold_in(holder, image, volume, true)
    }

    /// [`Store::hold`] in memory only: GC in this process keeps the layers
    /// from now on, and [`Store::commit_hold`] makes the hold durable. The
    /// caller commits it before anything durable names `holder` (berthd
    /// overlaps the commit with the shim's start); a crash before leaves a
    /// holder nobody knows, and nothing to release.
    pub fn hold_uncommitted(&self, holder: &str, image: &Digest) -> Result<Vec<PathBuf>> {
        self.hold_in(holder, image, false, false)
    }

    /// Write the layer hold [`Store::hold_uncommitted`] made (grouped with
    /// other containers' holds and releases into one transaction).
    pub fn commit_hold(&self, holder: &str) -> Result<()> {
        let chains = self
            .index
            .read()
            .map_err(|_| poisoned())?
            .holds
            .get(holder)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no image hold of {holder:?} to commit")))?;
        let row = json(&HoldRow::Layers(chains))?;
        self.group
            .put(&self.db, HOLDS, holder.to_string(), row, true)
            .map_err(Error::Database)
    }

    fn hold_in(
        &self,
        holder: &str,
        image: &Digest,
        volume: bool,
        durable: bool,
    ) -> Result<Vec<PathBuf>> {
        let mut idx = self.index.write().map_err(|_| poisoned())?;
        let chains = idx
            .images
            .get(image)
            .map(|e| e.record.chain_ids.clone())
            .ok_or_else(|| Error::NotFound(format!("image {image} not found")))?;
        if durable {
            let row = if volume {
                HoldRow::Volume {
                    chains: chains.clone(),
                    image: image.clone(),
                }
            } else {
                HoldRow::Layers(chains.clone())
            };
            let tx = self.db.begin_write()?;
            tx.open_table(HOLDS)?
                .insert(holder, json(&row)?.as_slice())?;
            tx.commit()?;
        }
        let paths = chains.iter().map(|c| self.snapshot_path(c)).collect();
        idx.holds.insert(holder.to_string(), chains);
        if volume {
            idx.in_use.insert(holder.to_string(), image.clone());
        }
        Ok(paths)
    }

    /// Every holder (containers, `<container>/ivol/<n>`), sorted.
    pub fn holders(&self) -> Vec<String> {
        let Ok(idx) = self.index.read() else {
            return Vec::new();
        };
        let mut h: Vec<String> = idx.holds.keys().cloned().collect();
        h.sort();
        h
    }

    /// The holders that have `image` mounted as an image volume, sorted.
    pub fn users(&self, image: &Digest) -> Vec<String> {
        self.index
            .read()
            .map(|idx| idx.users(image).into_iter().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// Drop a holder's claim and those of `<holder>/…` (its image volumes),
    /// and collect layers nobody uses any more.
    ///
    /// The release is written without a sync of its own (the next durable
    /// commit carries it): a crash may bring the hold back, and berthd's
    /// start releases the holds of containers it has no record of, which a
    /// removed container's is (its record's delete is durable after this).
    pub fn release(&self, holder: &str) -> Result<()> {
        let prefix = format!("{holder}/");
        let (gone, chains): (Vec<String>, HashSet<Digest>) = {
            let idx = self.index.read().map_err(|_| poisoned())?;
            let gone: Vec<String> = idx
                .holds
                .keys()
                .filter(|h| *h == holder || h.starts_with(&prefix))
                .cloned()
                .collect();
            let chains = gone
                .iter()
                .filter_map(|h| idx.holds.get(h))
                .flatten()
                .cloned()
                .collect();
            (gone, chains)
        };
        if gone.is_empty() {
            return Ok(());
        }
        self.group
            .remove(&self.db, HOLDS, gone.clone(), false)
            .map_err(Error::Database)?;
        let mut idx = self.index.write().map_err(|_| poisoned())?;
        for h in &gone {
            idx.holds.remove(h);
            idx.in_use.remove(h);
        }
        // Only the layers these holds kept can have become unused (an
        // image removed while its containers ran); a release touches no
        // image, hence no blob. The whole collection (every image's
        // manifest read, the blob directory listed, the index locked
        // throughout) is for when an image goes, not for every container.
        self.drop_unused_snapshots(&mut idx, Some(&chains))
    }

    /// Remove snapshots and blobs that no image and no holder references.
    /// Records go first (in one transaction), then the directories are
    /// moved to tmp/ and deleted off the caller's path; a crash in between
    /// leaves directories without records, which the next start removes.
    pub fn gc(&self) -> Result<()> {
        let mut idx = self.index.write().map_err(|_| poisoned())?;
        let mut live_blobs: HashSet<String> = HashSet::new();
        for e in idx.images.values() {
            live_blobs.insert(e.record.id.hex().to_string());
            live_blobs.insert(e.record.manifest_digest.hex().to_string());
            // Layer blobs the store keeps (a commit's, a push's): the
            // image's own, as long as it is.
            if let Ok(m) = fs::read(self.blob_path(&e.record.manifest_digest))
                && let Ok(m) = serde_json::from_slice::<crate::manifest::Manifest>(&m)
            {
                live_blobs.extend(m.layers.iter().map(|l| l.digest.hex().to_string()));
            }
            for d in &e.record.repo_digests {
                if let Some((_, dg)) = d.rsplit_once('@')
                    && let Ok(dg) = dg.parse::<Digest>()
                {
                    live_blobs.insert(dg.hex().to_string());
                }
            }
        }
        live_blobs.extend(idx.pending_blobs.keys().cloned());
        self.drop_unused_snapshots(&mut idx, None)?;
        // Blobs: only sha256 ones are written by us. The index stays
        // locked until they are gone: a pull that keeps its blobs
        // ([`Store::keep_blobs`]) after this point writes them after the
        // listing.
        let dir = self.root.join("content/sha256");
        if let Ok(rd) = fs::read_dir(&dir) {
            let mut removed = false;
            for e in rd.flatten() {
                if !live_blobs.contains(e.file_name().to_string_lossy().as_ref()) {
                    let _ = fs::remove_file(e.path());
                    removed = true;
                }
            }
            if removed {
                drop(idx);
                self.recount_blobs();
            }
        }
        Ok(())
    }

    /// Remove the snapshots (of `only`, else all) that no image and no
    /// holder references: records first, in one transaction, then the
    /// directories moved to tmp/ and deleted off the caller's path.
    fn drop_unused_snapshots(&self, idx: &mut Index, only: Option<&HashSet<Digest>>) -> Result<()> {
        let mut live: HashSet<&Digest> = HashSet::new();
        for e in idx.images.values() {
            live.extend(e.record.chain_ids.iter());
        }
        for chains in idx.holds.values() {
            live.extend(chains.iter());
        }
        let dead: Vec<Digest> = idx
            .snapshots
            .keys()
            .filter(|c| only.is_none_or(|o| o.contains(*c)) && !live.contains(*c))
            .cloned()
            .collect();
        if !dead.is_empty() {
            let tx = self.db.begin_write()?;
            {
                let mut t = tx.open_table(SNAPSHOTS)?;
                for c in &dead {
                    t.remove(c.to_string().as_str())?;
                }
            }
            tx.commit()?;
            let mut trash = Vec::new();
            for c in &dead {
                idx.snapshots.remove(c);
                let src = self.snapshot_path(c);
                let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
                let dst = self.root.join("tmp").join(format!("trash-{}-{n}", c.hex()));
                match fs::rename(&src, &dst) {
                    Ok(()) => trash.push(dst),
                    Err(e) => {
                        tracing::warn!(snapshot = %c, error = %e, "cannot move snapshot to trash; removing in place");
                        trash.push(src);
                    }
                }
            }
            tracing::info!(snapshots = dead.len(), "collecting unused layers");
            std::thread::spawn(move || trash.iter().for_each(|p| remove_any(p)));
        }
        Ok(())
    }

    /// Bytes and inodes used by the store.
    pub fn usage(&self) -> (u64, u64) {
        let idx = match self.index.read() {
            Ok(i) => i,
            Err(_) => return (0, 0),
        };
        let (b, n) = idx
            .snapshots
            .values()
            .fold((0, 0), |(b, n), s| (b + s.bytes, n + s.inodes));
        (
            b + self.blob_bytes.load(Ordering::Relaxed),
            n + self.blob_count.load(Ordering::Relaxed),
        )
    }

    pub fn snapshot_count(&self) -> usize {
        self.index.read().map(|i| i.snapshots.len()).unwrap_or(0)
    }
}

fn poisoned() -> Error {
    Error::Database("image index lock poisoned by an earlier panic".into())
}

/// Remove a file or a directory tree without following symlinks; errors are
/// logged, since this is cleanup.
pub(crate) fn remove_any(p: &Path) {
    let r = match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = r {
        tracing::warn!(path = %p.display(), error = %e, "cleanup failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(diff_ids: &[Digest]) -> (Arc<[u8]>, ImageConfig) {
        let j = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"User": "1000"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let b = serde_json::to_vec(&j).unwrap();
        let c = ImageConfig::parse(&b).unwrap();
        (Arc::from(b), c)
    }

    /// Put an image with the given layer chain into the store as a pull would.
    fn add_image(store: &Store, tag: &str, layers: &[&str]) -> Digest {
        let diff_ids: Vec<Digest> = layers
            .iter()
            .map(|l| Digest::sha256_of(l.as_bytes()))
            .collect();
        let chains = crate::manifest::chain_ids(&diff_ids);
        for (c, d) in chains.iter().zip(&diff_ids) {
            if !store.has_snapshot(c) {
                let tmp = store.tmp_dir("unpack").unwrap();
                fs::write(tmp.join("file"), c.hex()).unwrap();
                let rec = SnapshotRecord {
                    diff_id: d.clone(),
                    bytes: 64,
                    inodes: 1,
                };
                store.commit_snapshot(&tmp, c, rec).unwrap();
            }
        }
        let (cj, cfg) = config(&diff_ids);
        let id = Digest::sha256_of(&cj);
        store.write_blob(&id, &cj).unwrap();
        let manifest = Digest::sha256_of(tag.as_bytes());
        store.write_blob(&manifest, tag.as_bytes()).unwrap();
        let r: Reference = tag.parse().unwrap();
        let rec = ImageRecord {
            id: id.clone(),
            repo_tags: vec![r.tagged_name().unwrap()],
            repo_digests: vec![r.digested_name(&manifest)],
            manifest_digest: manifest,
            chain_ids: chains,
            size: 100,
            pulled_at: now_secs(),
        };
        store.record_image(rec, cj, cfg).unwrap();
        id
    }

    #[test]
    fn image_is_found_by_id_hex_tag_and_digest_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let s = Store::open(dir.path()).unwrap();
            add_image(&s, "example.com/app:v1", &["base", "app"])
        };
        let s = Store::open(dir.path()).unwrap();
        let e = s.resolve("example.com/app:v1").expect("by tag");
        assert_eq!(e.record.id, id);
        assert!(s.resolve(&id.to_string()).is_some());
        assert!(s.resolve(id.hex()).is_some());
        assert!(s.resolve(&e.record.repo_digests[0]).is_some());
        assert!(s.resolve("example.com/app:v2").is_none());
        assert_eq!(e.config.config.user.as_deref(), Some("1000"));
        assert_eq!(s.snapshot_count(), 2);
    }

    #[test]
    fn removing_an_image_keeps_layers_another_image_shares() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = add_image(&s, "example.com/a:1", &["base", "a"]);
        let b = add_image(&s, "example.com/b:1", &["base", "b"]);
        let base_chain = s.resolve(&b.to_string()).unwrap().record.chain_ids[0].clone();
        s.remove(&a, None).unwrap();
        assert!(s.resolve(&a.to_string()).is_none());
        assert!(s.has_snapshot(&base_chain));
        assert!(s.snapshot_path(&base_chain).is_dir());
        assert_eq!(s.snapshot_count(), 2, "a's top layer is collected");
        s.remove(&b, None).unwrap();
        assert_eq!(s.snapshot_count(), 0);
        assert!(!s.snapshot_path(&base_chain).exists());
        assert_eq!(
            fs::read_dir(dir.path().join("content/sha256"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn a_kept_layer_blob_lives_as_long_as_an_image_whose_manifest_lists_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let layer = b"a committed layer".to_vec();
        let ld = Digest::sha256_of(&layer);
        let (cj, cfg) = config(&[Digest::sha256_of(b"diff")]);
        let id = Digest::sha256_of(&cj);
        s.write_blob(&id, &cj).unwrap();
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": id.to_string(), "size": cj.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld.to_string(), "size": layer.len()}],
        }))
        .unwrap();
        let md = Digest::sha256_of(&m);
        s.write_blob(&md, &m).unwrap();
        let tmp = s.tmp_dir("t").unwrap();
        fs::write(tmp.join("l"), &layer).unwrap();
        s.adopt_blob(&ld, &tmp.join("l")).unwrap();
        s.record_image(
            ImageRecord {
                id: id.clone(),
                repo_tags: vec!["example.com/c:1".into()],
                repo_digests: vec![],
                manifest_digest: md,
                chain_ids: vec![],
                size: 1,
                pulled_at: now_secs(),
            },
            cj,
            cfg,
        )
        .unwrap();
        let other = add_image(&s, "example.com/other:1", &["x"]);
        s.remove(&other, None).unwrap();
        assert!(s.blob_path(&ld).is_file(), "a GC keeps the listed layer");
        s.remove(&id, None).unwrap();
        assert!(!s.blob_path(&ld).exists(), "and takes it with its image");
    }

    #[test]
    fn a_held_chain_outlives_its_image_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = add_image(&s, "example.com/a:1", &["base", "a"]);
        let paths = s.hold("container-1", &a).unwrap();
        assert_eq!(paths.len(), 2);
        s.remove(&a, None).unwrap();
        assert!(paths.iter().all(|p| p.is_dir()));
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert!(paths.iter().all(|p| p.is_dir()), "holds survive a restart");
        s.release("container-1").unwrap();
        assert!(paths.iter().all(|p| !p.exists()));
    }

    #[test]
    fn kept_blobs_outlive_a_gc_until_their_image_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let (a, b) = (
            Digest::sha256_of(b"a pull's manifest"),
            Digest::sha256_of(b"a pull's config"),
        );
        let kept = s.keep_blobs(&[&a, &b]).unwrap();
        let again = s.keep_blobs(&[&a]).unwrap();
        s.write_blob(&a, b"a pull's manifest").unwrap();
        s.write_blob(&b, b"a pull's config").unwrap();
        s.gc().unwrap();
        assert!(s.blob_path(&a).is_file() && s.blob_path(&b).is_file());
        drop(kept);
        s.gc().unwrap();
        assert!(s.blob_path(&a).is_file(), "still kept by the second guard");
        assert!(!s.blob_path(&b).exists(), "no image names it: collected");
        drop(again);
        s.gc().unwrap();
        assert!(!s.blob_path(&a).exists());
    }

    #[test]
    fn a_release_collects_only_its_own_unused_layers() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = add_image(&s, "example.com/a:1", &["base", "a"]);
        let b = add_image(&s, "example.com/b:1", &["base", "b"]);
        let pa = s.hold("c-a", &a).unwrap();
        let pb = s.hold("c-b", &b).unwrap();
        assert_eq!(pa[0], pb[0], "the same base snapshot");
        s.remove(&a, None).unwrap();
        s.remove(&b, None).unwrap();
        s.release("c-a").unwrap();
        assert!(!pa[1].exists(), "a's own layer goes with its last holder");
        assert!(pb.iter().all(|p| p.is_dir()), "what c-b holds stays");
        s.release("c-b").unwrap();
        assert!(pb.iter().all(|p| !p.exists()));
        assert_eq!(s.snapshot_count(), 0);
    }

    #[test]
    fn an_uncommitted_hold_keeps_layers_in_process_and_survives_a_restart_only_once_committed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = add_image(&s, "example.com/a:1", &["base", "a"]);
        let b = add_image(&s, "example.com/b:1", &["b"]);
        let pa = s.hold_uncommitted("c-a", &a).unwrap();
        let pb = s.hold_uncommitted("c-b", &b).unwrap();
        s.remove(&a, None).unwrap();
        s.remove(&b, None).unwrap();
        assert!(
            pa.iter().chain(&pb).all(|p| p.is_dir()),
            "GC keeps held layers"
        );
        s.commit_hold("c-a").unwrap();
        assert!(matches!(s.commit_hold("nobody"), Err(Error::NotFound(_))));
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.holders(),
            vec!["c-a".to_string()],
            "only the committed hold is on disk"
        );
        s.gc().unwrap();
        assert!(pa.iter().all(|p| p.is_dir()));
        assert!(
            pb.iter().all(|p| !p.exists()),
            "the uncommitted one left nothing held"
        );
        s.release("c-a").unwrap();
        assert!(pa.iter().all(|p| !p.exists()));
    }

    #[test]
    fn a_volume_hold_marks_the_image_in_use_across_restarts_until_its_container_releases() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = add_image(&s, "example.com/a:1", &["base", "a"]);
        let b = add_image(&s, "example.com/b:1", &["b"]);
        s.hold("c1", &a).unwrap();
        let paths = s.hold_volume("c1/ivol/0", &b).unwrap();
        assert_eq!(paths.len(), 1);
        assert_eq!(s.users(&b), vec!["c1/ivol/0".to_string()]);
        assert!(s.users(&a).is_empty(), "a rootfs hold is not a volume");
        let e = s.remove(&b, None).unwrap_err().to_string();
        assert!(e.contains("in use") && e.contains("container c1"), "{e}");
        assert!(
            s.remove(&b, Some("example.com/b:1")).is_err(),
            "nor by its last tag"
        );
        assert!(s.resolve("example.com/b:1").is_some(), "nothing changed");
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.users(&b),
            vec!["c1/ivol/0".to_string()],
            "kept across a restart"
        );
        // Another container whose name starts alike is not released.
        s.hold_volume("c10/ivol/0", &b).unwrap();
        s.release("c1").unwrap();
        assert_eq!(s.users(&b), vec!["c10/ivol/0".to_string()]);
        s.release("c10").unwrap();
        assert!(s.users(&b).is_empty());
        assert!(paths.iter().all(|p| p.is_dir()), "the image still has them");
    }

    #[test]
    fn removing_one_of_two_tags_keeps_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let id = add_image(&s, "example.com/a:1", &["base"]);
        add_image(&s, "example.com/a:2", &["base"]);
        let e = s.resolve(&id.to_string()).unwrap();
        assert_eq!(
            e.record.repo_tags,
            vec!["example.com/a:1", "example.com/a:2"]
        );
        s.remove(&id, Some("example.com/a:1")).unwrap();
        let e = s.resolve(&id.to_string()).expect("image kept");
        assert_eq!(e.record.repo_tags, vec!["example.com/a:2"]);
        s.remove(&id, Some("example.com/a:2")).unwrap();
        assert!(
            s.resolve(&id.to_string()).is_none(),
            "last tag removes the image"
        );
    }

    #[test]
    fn a_tag_moves_to_the_newly_pulled_image() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let old = add_image(&s, "example.com/a:latest", &["v1"]);
        let new = add_image(&s, "example.com/a:latest", &["v2"]);
        assert_ne!(old, new);
        assert_eq!(s.resolve("example.com/a:latest").unwrap().record.id, new);
        assert!(
            s.resolve(&old.to_string())
                .unwrap()
                .record
                .repo_tags
                .is_empty()
        );
    }

    #[test]
    fn store_and_snapshot_directories_are_private_even_if_opened_up() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        for d in ["", "content", "content/sha256", "snapshots", "tmp"] {
            fs::create_dir_all(root.join(d)).unwrap();
            fs::set_permissions(root.join(d), fs::Permissions::from_mode(0o755)).unwrap();
        }
        let s = Store::open(&root).unwrap();
        let id = add_image(&s, "example.com/a:1", &["base"]);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        for d in ["", "content", "content/sha256", "snapshots", "tmp"] {
            assert_eq!(mode(&root.join(d)), 0o700, "{d:?}");
        }
        for p in s.hold("c", &id).unwrap() {
            assert_eq!(mode(&p), 0o700, "{}", p.display());
        }
    }

    #[test]
    fn leftovers_of_a_crash_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            add_image(&s, "example.com/a:1", &["base"]);
            let t = s.tmp_dir("unpack").unwrap();
            fs::write(t.join("half"), b"x").unwrap();
            // A snapshot renamed into place whose record never committed.
            fs::create_dir(dir.path().join("snapshots").join("f".repeat(64))).unwrap();
            fs::write(
                dir.path().join("content/sha256").join("e".repeat(64)),
                b"orphan",
            )
            .unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(!dir.path().join("snapshots").join("f".repeat(64)).exists());
        assert!(
            !dir.path()
                .join("content/sha256")
                .join("e".repeat(64))
                .exists()
        );
        assert!(s.resolve("example.com/a:1").is_some());
    }
}
