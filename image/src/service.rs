//! [`ImageService`]: pull, list, status, remove and usage, the five CRI image
//! calls in domain terms.
//!
//! A pull streams each layer once: bytes from the registry are hashed (the
//! blob digest) on the async side and handed over a bounded channel to a
//! blocking thread that inflates, hashes again (the diff id) and unpacks, all
//! in one pass. Layers run in parallel up to `max_concurrent_downloads`, and
//! a layer already being fetched by another pull is awaited, not fetched
//! again. The inflated stream is held to [`UnpackLimits`]: a layer over
//! them fails with RESOURCE_EXHAUSTED and its partial unpack is removed at
//! once. Layer work runs in its own task, so a client that gives up (kubelet
//! timing out) does not waste what was downloaded: its retry finds the layer
//! in flight or done.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::{RwLock, Semaphore, mpsc};

use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::limits::{LimitExceeded, LimitedReader, UnpackLimits};
use crate::manifest::{self, Compression, Descriptor, ImageConfig, ManifestDoc, Platform};
use crate::reference::Reference;
use crate::registry::{Credentials, RegistryClient, RegistryConfig, Session};
use crate::store::{ImageEntry, ImageRecord, SnapshotRecord, Store};

pub use crate::store::ImageEntry as Image;

#[derive(Clone, Debug)]
pub struct ImageServiceConfig {
    /// The berth root; the store lives directly under it.
    pub root: PathBuf,
    pub registry: RegistryConfig,
    /// Layers fetched at once per pull.
    pub max_concurrent_downloads: usize,
    /// References that ImageStatus reports pinned and RemoveImage refuses.
    pub pinned_images: Vec<String>,
    /// What one layer may unpack to, and the free space it must leave.
    pub unpack_limits: UnpackLimits,
    /// How often a pull in progress logs how far it is (info).
    pub progress_every: std::time::Duration,
}

/// Bytes and inodes the image store uses, and where it lives.
#[derive(Clone, Debug)]
pub struct FsUsage {
    pub mountpoint: PathBuf,
    pub used_bytes: u64,
    pub inodes_used: u64,
    pub timestamp_ns: i64,
}

/// Where a pull spent its time, for the benchmark and for debug logs.
#[derive(Clone, Debug, Default)]
pub struct PullStats {
    pub layers_fetched: usize,
    pub compressed_bytes: u64,
    pub unpacked_bytes: u64,
}

type LayerJob = Shared<BoxFuture<'static, Result<(), Arc<Error>>>>;

pub struct ImageService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    registry: Arc<RegistryClient>,
    max_concurrent: usize,
    progress_every: std::time::Duration,
    pinned: HashSet<String>,
    limits: UnpackLimits,
    /// Layers being fetched, by chain id.
    inflight: Mutex<HashMap<Digest, LayerJob>>,
    /// Pulls hold it shared from the first snapshot check until their image
    /// is recorded; garbage collection takes it exclusively.
    gc_lock: RwLock<()>,
}

impl ImageService {
    /// Open the store (cleaning up after a crash) and the registry client.
    /// Blocking: call before serving, or from a blocking context.
    pub fn open(config: ImageServiceConfig) -> Result<Self> {
        let store = Store::open(&config.root)?;
        let mut pinned = HashSet::new();
        for p in &config.pinned_images {
            let r: Reference = p
                .parse()
                .map_err(|e| Error::InvalidArgument(format!("registry.pinned_images: {e}")))?;
            pinned.insert(match (&r.digest, r.tagged_name()) {
                (Some(d), _) => r.digested_name(d),
                (None, Some(t)) => t,
                (None, None) => continue,
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                registry: Arc::new(RegistryClient::new(config.registry)?),
                max_concurrent: config.max_concurrent_downloads.max(1),
                progress_every: config
                    .progress_every
                    .max(std::time::Duration::from_millis(10)),
                pinned,
                limits: config.unpack_limits,
                inflight: Mutex::new(HashMap::new()),
                gc_lock: RwLock::new(()),
            }),
        })
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Pull `reference` and return the image id.
    pub async fn pull(&self, reference: &str, credentials: Credentials) -> Result<String> {
        self.pull_with_stats(reference, credentials)
            .await
            .map(|(id, _)| id)
    }

    pub async fn pull_with_stats(
        &self,
        reference: &str,
        credentials: Credentials,
    ) -> Result<(String, PullStats)> {
        let inner = &self.inner;
        let r: Reference = reference.parse()?;
        let started = Instant::now();
        let session = Arc::new(Session::new(inner.registry.clone(), &r, credentials));
        let (top_body, top_ct, top_digest) = session.manifest(&r.manifest_ref()).await?;
        let mut blobs: Vec<(Digest, Bytes)> = vec![(top_digest.clone(), top_body.clone())];
        let (manifest, manifest_digest) = match ManifestDoc::parse(&top_ct, &top_body)? {
            ManifestDoc::Image(m) => (m, top_digest.clone()),
            ManifestDoc::Index(index) => {
                let host = Platform::host();
                let d = host.choose(&index).ok_or_else(|| {
                    let have: Vec<String> = index
                        .manifests
                        .iter()
                        .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                        .collect();
                    Error::NotFound(format!(
                        "{r} has no image for this node's platform {host} (it has: {})",
                        if have.is_empty() {
                            "none".to_string()
                        } else {
                            have.join(", ")
                        }
                    ))
                })?;
                let (body, ct, digest) = session.manifest(&d.digest.to_string()).await?;
                let ManifestDoc::Image(m) = ManifestDoc::parse(&ct, &body)? else {
                    return Err(Error::Registry(format!(
                        "{r}: an index entry points to another index"
                    )));
                };
                blobs.push((digest.clone(), body));
                (m, digest)
            }
        };
        // Removals wait until this pull has recorded its image, so that
        // nothing it found present is collected under it.
        let _gc = inner.gc_lock.read().await;
        // An image already here only gets the new name.
        if let Some(existing) = inner.store.resolve(&manifest.config.digest.to_string())
            && existing
                .record
                .chain_ids
                .iter()
                .all(|c| inner.store.has_snapshot(c))
        {
            let mut record = existing.record.clone();
            record.repo_tags = r.tagged_name().into_iter().collect();
            record.repo_digests = vec![r.digested_name(&top_digest)];
            let (cj, cfg) = (existing.config_json.clone(), existing.config.clone());
            let inner2 = inner.clone();
            tokio::task::spawn_blocking(move || -> Result<()> {
                let digests: Vec<&Digest> = blobs.iter().map(|(d, _)| d).collect();
                let _kept = inner2.store.keep_blobs(&digests)?;
                for (d, b) in &blobs {
                    inner2.store.write_blob(d, b)?;
                }
                inner2.store.record_image(record, cj, cfg).map(|_| ())
            })
            .await
            .map_err(|e| Error::Database(format!("recording task failed: {e}")))??;
            tracing::info!(image = %r, id = %existing.record.id, "image already present; name recorded");
            return Ok((existing.record.id.to_string(), PullStats::default()));
        }
        let config_json = session
            .blob_bytes(&manifest.config.digest, manifest::MAX_CONFIG_SIZE)
            .await?;
        let config = ImageConfig::parse(&config_json)?;
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != manifest.layers.len() {
            return Err(Error::Registry(format!(
                "{r}: the manifest has {} layers but the config lists {} diff ids",
                manifest.layers.len(),
                diff_ids.len()
            )));
        }
        for l in &manifest.layers {
            Compression::of_layer(&l.media_type)?;
            if l.size < 0 {
                return Err(Error::Registry(format!(
                    "{r}: layer {} has a negative size",
                    l.digest
                )));
            }
        }
        let image_id = manifest.config.digest.clone();
        let chain = manifest::chain_ids(diff_ids);

        let sem = Arc::new(Semaphore::new(inner.max_concurrent));
        let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let layers_done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut stats = PullStats::default();
        let jobs =
            manifest
                .layers
                .iter()
                .zip(diff_ids)
                .zip(&chain)
                .map(|((layer, diff_id), chain_id)| {
                    if !inner.store.has_snapshot(chain_id) {
                        stats.layers_fetched += 1;
                        stats.compressed_bytes += layer.size as u64;
                    }
                    let done = layers_done.clone();
                    Inner::ensure_layer(
                        inner,
                        session.clone(),
                        layer.clone(),
                        diff_id.clone(),
                        chain_id.clone(),
                        sem.clone(),
                        progress.clone(),
                    )
                    .inspect(move |r| {
                        if r.is_ok() {
                            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    })
                });
        // A long pull is not silent: every progress_every (10 s), how far
        // it is (as CRI-O and containerd log it).
        let all = futures::future::try_join_all(jobs);
        tokio::pin!(all);
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + inner.progress_every,
            inner.progress_every,
        );
        loop {
            tokio::select! {
                r = &mut all => {
                    r?;
                    break;
                }
                _ = tick.tick() => {
                    tracing::info!(
                        image = %r,
                        bytes_done = progress.load(std::sync::atomic::Ordering::Relaxed),
                        bytes_total = stats.compressed_bytes,
                        layers_done = layers_done.load(std::sync::atomic::Ordering::Relaxed),
                        layers = manifest.layers.len(),
                        elapsed_s = started.elapsed().as_secs(),
                        "pulling"
                    );
                }
            }
        }

        blobs.push((image_id.clone(), config_json.clone()));
        let size = manifest.config.size.max(0) as u64
            + manifest
                .layers
                .iter()
                .map(|l| l.size.max(0) as u64)
                .sum::<u64>();
        let record = ImageRecord {
            id: image_id.clone(),
            repo_tags: r.tagged_name().into_iter().collect(),
            repo_digests: vec![r.digested_name(&top_digest)],
            manifest_digest,
            chain_ids: chain,
            size,
            pulled_at: crate::store::now_secs(),
        };
        let inner2 = inner.clone();
        let fetched = stats.layers_fetched;
        tokio::task::spawn_blocking(move || -> Result<()> {
            // Until the record names them, the GC would take them.
            let digests: Vec<&Digest> = blobs.iter().map(|(d, _)| d).collect();
            let _kept = inner2.store.keep_blobs(&digests)?;
            for (d, b) in &blobs {
                inner2.store.write_blob(d, b)?;
            }
            if fetched > 0 {
                // Unpacked files reach the disk before the record that says
                // the image is complete.
                sync_fs(inner2.store.root())?;
            }
            inner2
                .store
                .record_image(record, Arc::from(&config_json[..]), config)?;
            Ok(())
        })
        .await
        .map_err(|e| Error::Database(format!("recording task failed: {e}")))??;
        tracing::info!(image = %r, id = %image_id, layers = fetched, elapsed_ms = started.elapsed().as_millis() as u64, "pulled");
        Ok((image_id.to_string(), stats))
    }

    /// Commit a container's writable layer `upper` over its image
    /// `parent` as the image `name` (see [`crate::commit`]).
    pub async fn commit(
        &self,
        parent: Digest,
        upper: PathBuf,
        name: String,
        comment: String,
        shift: Option<crate::commit::IdShift>,
    ) -> Result<crate::commit::Committed> {
        // As a pull: no GC between the new snapshot and its image record.
        let _gc = self.inner.gc_lock.read().await;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            crate::commit::commit(&inner.store, &parent, &upper, &name, &comment, shift)
        })
        .await
        .map_err(|e| Error::Database(format!("commit task failed: {e}")))?
    }

    /// Push the image `name` to its registry (see [`crate::push`]).
    pub async fn push(&self, name: &str, credentials: Credentials) -> Result<crate::push::Pushed> {
        // No GC lock for the length of a push (it would hold up pulls and
        // removals): an image removed meanwhile fails the push, whose
        // blobs are read from the store as it goes.
        let started = std::time::Instant::now();
        let p =
            crate::push::push(&self.inner.store, &self.inner.registry, name, credentials).await?;
        tracing::info!(image = %name, digest = %p.repo_digest, uploaded = p.uploaded, mounted = p.mounted, present = p.present, refetched = p.refetched, elapsed_ms = started.elapsed().as_millis() as u64, "pushed");
        Ok(p)
    }

    /// An image by id, tag or digest reference; None if absent or malformed.
    pub fn status(&self, reference: &str) -> Option<Arc<ImageEntry>> {
        self.inner.store.resolve(reference)
    }

    /// All images, or those a filter reference resolves to.
    pub fn list(&self, filter: Option<&str>) -> Vec<Arc<ImageEntry>> {
        match filter.filter(|f| !f.is_empty()) {
            None => self.inner.store.list(),
            Some(f) => self.inner.store.resolve(f).into_iter().collect(),
        }
    }

    /// Whether any name of the image is pinned.
    pub fn is_pinned(&self, image: &ImageEntry) -> bool {
        let p = &self.inner.pinned;
        image
            .record
            .repo_tags
            .iter()
            .chain(&image.record.repo_digests)
            .any(|n| p.contains(n))
    }

    /// Remove an image by id or digest (the whole image) or by tag (that
    /// tag only, unless it is the last one). An image that is not there is
    /// not an error, as in containerd.
    pub async fn remove(&self, reference: &str) -> Result<()> {
        if reference.is_empty() {
            return Err(Error::InvalidArgument("image reference is empty".into()));
        }
        let Some(entry) = self.inner.store.resolve(reference) else {
            if reference.parse::<Digest>().is_err() && reference.len() != 64 {
                // Report a malformed reference instead of silently succeeding.
                reference.parse::<Reference>()?;
            }
            return Ok(());
        };
        // A tag reference removes that tag; id and digest remove the image.
        let tag: Option<String> = reference
            .parse::<Reference>()
            .ok()
            .filter(|r| {
                r.digest.is_none()
                    && entry.record.id.to_string() != reference
                    && entry.record.id.hex() != reference
            })
            .and_then(|r| r.tagged_name())
            .filter(|t| entry.record.repo_tags.contains(t));
        let removes_whole = tag.is_none() || entry.record.repo_tags.len() == 1;
        let pinned = &self.inner.pinned;
        let hits_pin = if removes_whole {
            self.is_pinned(&entry)
        } else {
            tag.as_ref().is_some_and(|t| pinned.contains(t))
        };
        if hits_pin {
            return Err(Error::Pinned(reference.to_string()));
        }
        let _gc = self.inner.gc_lock.write().await;
        let inner = self.inner.clone();
        let id = entry.record.id.clone();
        tokio::task::spawn_blocking(move || inner.store.remove(&id, tag.as_deref()))
            .await
            .map_err(|e| Error::Database(format!("remove task failed: {e}")))?
    }

    pub fn fs_usage(&self) -> FsUsage {
        let (used_bytes, inodes_used) = self.inner.store.usage();
        FsUsage {
            mountpoint: self.inner.store.root().join("snapshots"),
            used_bytes,
            inodes_used,
            timestamp_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0),
        }
    }

    /// Keep an image mounted as a volume for `holder`; see
    /// [`Store::hold_volume`].
    pub fn hold_volume(&self, holder: &str, image: &Digest) -> Result<Vec<PathBuf>> {
        self.inner.store.hold_volume(holder, image)
    }

    /// Keep an image's layers for `holder`; see [`Store::hold`].
    pub fn hold(&self, holder: &str, image: &Digest) -> Result<Vec<PathBuf>> {
        self.inner.store.hold(holder, image)
    }

    /// [`Store::hold_uncommitted`], made durable by [`Self::commit_hold`].
    pub fn hold_uncommitted(&self, holder: &str, image: &Digest) -> Result<Vec<PathBuf>> {
        self.inner.store.hold_uncommitted(holder, image)
    }

    /// See [`Store::commit_hold`].
    pub fn commit_hold(&self, holder: &str) -> Result<()> {
        self.inner.store.commit_hold(holder)
    }

    pub async fn release(&self, holder: &str) -> Result<()> {
        let _gc = self.inner.gc_lock.write().await;
        let inner = self.inner.clone();
        let holder = holder.to_string();
        tokio::task::spawn_blocking(move || inner.store.release(&holder))
            .await
            .map_err(|e| Error::Database(format!("release task failed: {e}")))?
    }
}

fn sync_fs(root: &std::path::Path) -> Result<()> {
    let f = std::fs::File::open(root).map_err(|e| Error::io("opening the root to sync it", e))?;
    rustix::fs::syncfs(&f).map_err(|e| Error::io("syncing the image store", e.into()))
}

impl Inner {
    /// Make sure the snapshot of `chain_id` exists: done, in flight (await
    /// it), or fetch it now in a task of its own.
    async fn ensure_layer(
        self: &Arc<Self>,
        session: Arc<Session>,
        layer: Descriptor,
        diff_id: Digest,
        chain_id: Digest,
        sem: Arc<Semaphore>,
        progress: Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<()> {
        if self.store.has_snapshot(&chain_id) {
            return Ok(());
        }
        let job = {
            let mut inflight = self
                .inflight
                .lock()
                .map_err(|_| Error::Database("in-flight map poisoned".into()))?;
            match inflight.get(&chain_id) {
                Some(j) => j.clone(),
                None => {
                    let inner = self.clone();
                    let key = chain_id.clone();
                    let handle = tokio::spawn(async move {
                        let r = match sem.acquire().await {
                            Ok(_permit) => {
                                inner
                                    .fetch_layer(&session, &layer, &diff_id, &chain_id, &progress)
                                    .await
                            }
                            Err(_) => Err(Error::Unavailable("download slots closed".into())),
                        };
                        if let Ok(mut m) = inner.inflight.lock() {
                            m.remove(&chain_id);
                        }
                        r.map_err(Arc::new)
                    });
                    let job = async move {
                        handle.await.unwrap_or_else(|e| {
                            Err(Arc::new(Error::Database(format!("layer task failed: {e}"))))
                        })
                    }
                    .boxed()
                    .shared();
                    inflight.insert(key, job.clone());
                    job
                }
            }
        };
        job.await.map_err(Error::Shared)
    }

    async fn fetch_layer(
        &self,
        session: &Session,
        layer: &Descriptor,
        diff_id: &Digest,
        chain_id: &Digest,
        progress: &std::sync::atomic::AtomicU64,
    ) -> Result<()> {
        if self.store.has_snapshot(chain_id) {
            return Ok(());
        }
        let started = Instant::now();
        let compression = Compression::of_layer(&layer.media_type)?;
        let dir = self.store.tmp_dir("unpack")?;
        let (tx, rx) = mpsc::channel::<Bytes>(32);
        let unpack_dir = dir.clone();
        let limits = self.limits;
        let unpacker = tokio::task::spawn_blocking(move || {
            unpack_or_discard(rx, compression, &unpack_dir, &limits)
        });
        let mut stream = session.blob_stream(&layer.digest, layer.size as u64);
        let mut hasher = layer.digest.hasher();
        let download: Result<()> = async {
            let mut tx = Some(tx);
            while let Some(chunk) = stream.next_chunk().await? {
                hasher.update(&chunk);
                progress.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                if let Some(t) = &tx
                    && t.send(chunk).await.is_err()
                {
                    // The unpacker stopped early. Its error says why, unless
                    // the blob is not what the manifest promised: read the
                    // rest so that a corrupt blob is reported as corrupt.
                    tx = None;
                }
            }
            Ok(())
        }
        .await;
        let unpacked = unpacker
            .await
            .map_err(|e| Error::Database(format!("unpack task failed: {e}")));
        let what = || format!("layer {} of {}", layer.digest, session.name());
        let result = (|| -> Result<SnapshotRecord> {
            download?;
            let actual = hasher.finish();
            if actual != layer.digest {
                return Err(Error::DigestMismatch {
                    what: what(),
                    expected: layer.digest.to_string(),
                    actual: actual.to_string(),
                });
            }
            let (diff, stats) = unpacked?.map_err(|e| match e {
                UnpackFailure::Unpack(source) => Error::Unpack {
                    layer: layer.digest.to_string(),
                    source,
                },
                UnpackFailure::Decompress(e) => {
                    Error::Registry(format!("{}: cannot decompress: {e}", what()))
                }
                UnpackFailure::Limit(limit) => Error::LayerLimit {
                    layer: what(),
                    limit,
                },
            })?;
            if &diff != diff_id {
                return Err(Error::DigestMismatch {
                    what: format!("{} (uncompressed)", what()),
                    expected: diff_id.to_string(),
                    actual: diff.to_string(),
                });
            }
            Ok(SnapshotRecord {
                diff_id: diff,
                bytes: stats.bytes,
                inodes: stats.entries,
            })
        })();
        let r = match result {
            Ok(rec) => self.store.commit_snapshot(&dir, chain_id, rec),
            Err(e) => Err(e),
        };
        if r.is_err() {
            let dir = dir.clone();
            let _ = tokio::task::spawn_blocking(move || crate::store::remove_any(&dir)).await;
        }
        if r.is_ok() {
            tracing::debug!(layer = %layer.digest, bytes = layer.size, elapsed_ms = started.elapsed().as_millis() as u64, "layer unpacked");
        }
        r
    }
}

#[derive(Debug)]
enum UnpackFailure {
    Unpack(crate::unpack::UnpackError),
    Decompress(std::io::Error),
    Limit(LimitExceeded),
}

/// Bytes arriving over a channel, as a `Read` for the blocking unpacker.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// Hashes what passes through: the diff id of the uncompressed stream.
struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    /// Set when the inner reader failed, to tell a decompression error from
    /// a tar error.
    failed: Option<std::io::ErrorKind>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                Ok(n)
            }
            Err(e) => {
                self.failed = Some(e.kind());
                Err(e)
            }
        }
    }
}

/// [`unpack_stream`], and on failure remove `dir` right here: a layer
/// stopped at a limit may have left gigabytes, and the download side may
/// still be reading the rest of the blob.
fn unpack_or_discard(
    rx: mpsc::Receiver<Bytes>,
    compression: Compression,
    dir: &std::path::Path,
    limits: &UnpackLimits,
) -> std::result::Result<(Digest, crate::unpack::UnpackStats), UnpackFailure> {
    let r = unpack_stream(rx, compression, dir, limits);
    if r.is_err() {
        crate::store::remove_any(dir);
    }
    r
}

/// Inflate, hash and unpack one layer stream into `dir`; returns the diff id.
fn unpack_stream(
    rx: mpsc::Receiver<Bytes>,
    compression: Compression,
    dir: &std::path::Path,
    limits: &UnpackLimits,
) -> std::result::Result<(Digest, crate::unpack::UnpackStats), UnpackFailure> {
    const BUF: usize = 256 << 10;
    let src = std::io::BufReader::with_capacity(
        BUF,
        ChannelReader {
            rx,
            cur: Bytes::new(),
        },
    );
    let decoder: Box<dyn Read> = match compression {
        Compression::None => Box::new(src),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(src)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(src).map_err(UnpackFailure::Decompress)?,
        ),
    };
    let hashing = HashingReader {
        inner: decoder,
        hasher: Hasher::sha256(),
        failed: None,
    };
    let fs_error = |op: &str, source: std::io::Error| {
        UnpackFailure::Unpack(crate::unpack::UnpackError::Io {
            path: dir.display().to_string(),
            op: op.into(),
            source,
        })
    };
    let store_fs = std::fs::File::open(dir).map_err(|e| fs_error("open the layer directory", e))?;
    let mut limited = LimitedReader::new(hashing, limits, store_fs.into())
        .map_err(|e| fs_error("measure the image store's filesystem", e))?;
    let stats = {
        let reader = std::io::BufReader::with_capacity(BUF, &mut limited);
        crate::unpack::unpack_layer(reader, dir)
    };
    let stats = match stats {
        Ok(s) => s,
        Err(e) => {
            return Err(match (limited.exceeded(), limited.get_ref().failed) {
                (Some(limit), _) => UnpackFailure::Limit(limit),
                (None, Some(kind)) => {
                    UnpackFailure::Decompress(std::io::Error::new(kind, e.to_string()))
                }
                (None, None) => UnpackFailure::Unpack(e),
            });
        }
    };
    // Whatever follows the end-of-archive marker is part of the diff id.
    if let Err(e) = std::io::copy(&mut limited, &mut std::io::sink()) {
        return Err(match limited.exceeded() {
            Some(limit) => UnpackFailure::Limit(limit),
            None => UnpackFailure::Decompress(e),
        });
    }
    Ok((limited.into_inner().hasher.finish(), stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::FreeSpace;
    use crate::tar::testutil::RawHeader;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    fn zeros_header(mib: usize) -> [u8; 512] {
        let mut h = RawHeader::ustar(b'0', b"zeros");
        h.size((mib as u64) << 20).mode(0o644);
        h.finish()
    }

    /// A gzip layer of one file of `mib` MiB of zeros. One gzip member per
    /// MiB, all the same: compressed once, however large the bomb (a
    /// multi-member stream is one valid gzip stream).
    fn zeros_layer(mib: usize) -> Vec<u8> {
        let zeros_member = gzip(&vec![0u8; 1 << 20]);
        let mut blob = gzip(&zeros_header(mib));
        for _ in 0..mib {
            blob.extend_from_slice(&zeros_member);
        }
        blob.extend_from_slice(&gzip(&[0u8; 1024]));
        blob
    }

    fn zeros_diff_id(mib: usize) -> Digest {
        let mut hasher = Hasher::sha256();
        hasher.update(&zeros_header(mib));
        for _ in 0..mib {
            hasher.update(&[0u8; 1 << 20]);
        }
        hasher.update(&[0u8; 1024]);
        hasher.finish()
    }

    /// Feed `blob` to the unpacker as the download would, in chunks.
    fn unpack(
        blob: &[u8],
        dir: &std::path::Path,
        limits: &UnpackLimits,
    ) -> std::result::Result<(Digest, crate::unpack::UnpackStats), UnpackFailure> {
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let chunks: Vec<Bytes> = blob.chunks(16 << 10).map(Bytes::copy_from_slice).collect();
        let feeder = std::thread::spawn(move || {
            for c in chunks {
                if tx.blocking_send(c).is_err() {
                    break; // the unpacker stopped
                }
            }
        });
        let r = unpack_or_discard(rx, Compression::Gzip, dir, limits);
        feeder.join().unwrap();
        r
    }

    fn fresh_dir(tmp: &tempfile::TempDir) -> std::path::PathBuf {
        let d = tmp.path().join("unpack");
        std::fs::create_dir(&d).unwrap();
        d
    }

    #[test]
    fn a_gzip_bomb_over_the_layer_limit_is_refused_and_its_partial_unpack_removed() {
        let blob = zeros_layer(64);
        assert!(blob.len() < 256 << 10, "{} bytes compressed", blob.len());
        let tmp = tempfile::tempdir().unwrap();
        let dir = fresh_dir(&tmp);
        let limits = UnpackLimits {
            max_layer_bytes: 2 << 20,
            min_free: FreeSpace::Bytes(0),
        };
        match unpack(&blob, &dir, &limits) {
            Err(UnpackFailure::Limit(LimitExceeded::LayerSize { limit })) => {
                assert_eq!(limit, 2 << 20)
            }
            other => panic!("{other:?}"),
        }
        assert!(!dir.exists(), "partial unpack left behind");
    }

    #[test]
    fn a_layer_within_the_limits_unpacks_with_its_diff_id() {
        let (blob, diff_id) = (zeros_layer(3), zeros_diff_id(3));
        let tmp = tempfile::tempdir().unwrap();
        let dir = fresh_dir(&tmp);
        let limits = UnpackLimits {
            max_layer_bytes: 4 << 20,
            min_free: FreeSpace::Bytes(1),
        };
        let (diff, stats) = unpack(&blob, &dir, &limits).unwrap();
        assert_eq!(diff, diff_id);
        assert_eq!(stats.bytes, 3 << 20);
        assert_eq!(std::fs::metadata(dir.join("zeros")).unwrap().len(), 3 << 20);
    }

    #[test]
    fn unpacking_into_a_filesystem_under_the_reserve_is_refused_and_removed() {
        let blob = zeros_layer(1);
        let tmp = tempfile::tempdir().unwrap();
        let dir = fresh_dir(&tmp);
        let limits = UnpackLimits {
            max_layer_bytes: u64::MAX,
            min_free: FreeSpace::Percent(100),
        };
        match unpack(&blob, &dir, &limits) {
            Err(UnpackFailure::Limit(LimitExceeded::FreeSpace { .. })) => {}
            other => panic!("{other:?}"),
        }
        assert!(!dir.exists());
    }

    #[test]
    fn limit_errors_name_the_layer_the_limit_and_the_key_and_map_to_resource_exhausted() {
        let e = Error::LayerLimit {
            layer: "layer sha256:abc of example.com/bomb".into(),
            limit: LimitExceeded::LayerSize { limit: 64 << 20 },
        };
        let msg = e.to_string();
        for part in [
            "sha256:abc",
            "example.com/bomb",
            "64.0 MiB",
            "registry.max_unpacked_layer_size",
        ] {
            assert!(msg.contains(part), "{part}: {msg}");
        }
        assert_eq!(e.kind(), crate::error::ErrorKind::ResourceExhausted);
        assert_eq!(
            Error::Shared(Arc::new(e)).kind(),
            crate::error::ErrorKind::ResourceExhausted
        );
    }
}
