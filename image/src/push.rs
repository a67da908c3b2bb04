//! Pushing an image of the store to a registry (`berthd commit --push`):
//! its layers, config and manifest, byte for byte as they are recorded, so
//! that the pushed manifest's digest is the local one and a pull of it by
//! digest gets exactly this image.
//!
//! A pull keeps only unpacked layers, not their compressed blobs: a layer
//! berth made (a commit) is in the store, but the base image's are not.
//! Each of those is, in order: already in the target repository (HEAD);
//! mounted from the repository the base image was pulled from when that is
//! on the same registry (the registry's cross-repository mount, nothing
//! sent); or fetched again from that repository (with its mirrors, as a
//! pull would), verified, kept in the store for the next push, and
//! uploaded.

use std::sync::Arc;

use tokio::io::AsyncWriteExt as _;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{self, Manifest};
use crate::reference::Reference;
use crate::registry::{Credentials, RegistryClient, Session};
use crate::store::{ImageRecord, Store};

/// What a push did, for the log and the caller.
#[derive(Debug, Default, Clone)]
pub struct Pushed {
    /// `registry/repository@sha256:...` of the pushed manifest.
    pub repo_digest: String,
    /// Blobs sent, mounted from another repository, and already there.
    pub uploaded: usize,
    pub mounted: usize,
    pub present: usize,
    /// Of the uploaded, those fetched again from where the image came from.
    pub refetched: usize,
}

/// The store's manifest of an image, parsed.
fn manifest_of(store: &Store, id: &Digest) -> Result<(Vec<u8>, Manifest)> {
    let bytes = store.read_blob(id)?;
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Registry(format!("the stored manifest {id}: {e}")))?;
    Ok((bytes, m))
}

/// Repositories the layer `layer` can be had from: those of the pulled
/// images whose manifest lists it (by their repo digests), the ones on
/// `registry` first.
fn sources_of(store: &Store, layer: &Digest, registry: &str) -> Vec<Reference> {
    let mut out: Vec<Reference> = Vec::new();
    for e in store.list() {
        if e.record.repo_digests.is_empty() {
            continue;
        }
        let Ok((_, m)) = manifest_of(store, &e.record.manifest_digest) else {
            continue;
        };
        if !m.layers.iter().any(|l| &l.digest == layer) {
            continue;
        }
        for d in &e.record.repo_digests {
            if let Ok(r) = d.parse::<Reference>()
                && !out.iter().any(|o| o.name() == r.name())
            {
                out.push(r);
            }
        }
    }
    out.sort_by_key(|r| r.registry != registry);
    out
}

/// Fetch the blob `digest` from `source` into the store, verified.
async fn refetch(
    store: &Store,
    client: &Arc<RegistryClient>,
    source: &Reference,
    credentials: Credentials,
    digest: &Digest,
    size: u64,
) -> Result<()> {
    let session = Session::new(client.clone(), source, credentials);
    let dir = store.tmp_dir("push")?;
    let path = dir.join("blob");
    let r = async {
        let mut f = tokio::fs::File::create(&path)
            .await
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let mut stream = session.blob_stream(digest, size);
        let mut h = digest.hasher();
        while let Some(c) = stream.next_chunk().await? {
            h.update(&c);
            f.write_all(&c)
                .await
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        }
        f.sync_all()
            .await
            .map_err(|e| Error::io(format!("syncing {}", path.display()), e))?;
        let actual = h.finish();
        if &actual != digest {
            return Err(Error::DigestMismatch {
                what: format!("blob {digest} of {}", source.name()),
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        store.adopt_blob(digest, &path)
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// Push the store's image named `name` (a tagged reference) to its
/// registry; the image gets the pushed repo digest as a name.
pub async fn push(
    store: &Store,
    client: &Arc<RegistryClient>,
    name: &str,
    credentials: Credentials,
) -> Result<Pushed> {
    let target: Reference = name.parse()?;
    let tag = target.tag.clone().ok_or_else(|| {
        Error::InvalidArgument(format!("{name:?}: a push needs a name with a tag"))
    })?;
    let entry = store
        .resolve(name)
        .ok_or_else(|| Error::NotFound(format!("image {name:?} is not in the store")))?;
    let (manifest_json, m) = manifest_of(store, &entry.record.manifest_digest)?;
    let media_type = m
        .media_type
        .clone()
        .unwrap_or_else(|| manifest::OCI_MANIFEST.to_string());
    let session = Session::for_push(client.clone(), &target, credentials.clone());
    let mut done = Pushed::default();
    for layer in &m.layers {
        let (d, size) = (&layer.digest, layer.size.max(0) as u64);
        if session.has_blob(d).await? {
            done.present += 1;
            continue;
        }
        if !store.blob_path(d).is_file() {
            let sources = sources_of(store, d, &target.registry);
            // A registry that will not mount (no pull right on the other
            // repository, no mount support) gets the blob sent instead.
            let mounted = match sources.iter().find(|s| s.registry == target.registry) {
                Some(s) => match session.mount_blob(d, &s.repository).await {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!(layer = %d, from = %s.name(), error = %e, "no cross-repository mount");
                        false
                    }
                },
                None => false,
            };
            if mounted {
                tracing::debug!(layer = %d, "mounted from the repository it came from");
                done.mounted += 1;
                continue;
            }
            let mut last = None;
            for s in &sources {
                let creds = if s.registry == target.registry {
                    credentials.clone()
                } else {
                    Credentials::Anonymous
                };
                match refetch(store, client, s, creds, d, size).await {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(layer = %d, from = %s.name(), error = %e, "cannot fetch the layer again");
                        last = Some(e);
                    }
                }
            }
            if let Some(e) = last {
                return Err(e);
            }
            if !store.blob_path(d).is_file() {
                return Err(Error::NotFound(format!(
                    "layer {d} of {name}: its blob is not kept and no image in the store says where it was pulled from"
                )));
            }
            done.refetched += 1;
        }
        session.upload_blob(d, &store.blob_path(d), size).await?;
        done.uploaded += 1;
    }
    let config = &m.config.digest;
    if session.has_blob(config).await? {
        done.present += 1;
    } else {
        let path = store.blob_path(config);
        let size = std::fs::metadata(&path)
            .map_err(|e| Error::io(format!("the config blob {}", path.display()), e))?
            .len();
        session.upload_blob(config, &path, size).await?;
        done.uploaded += 1;
    }
    let digest = session
        .put_manifest(&tag, &manifest_json, &media_type)
        .await?;
    done.repo_digest = target.digested_name(&digest);
    if store.resolve(&entry.record.id.to_string()).is_none() {
        // Removed while it was pushed: nothing to name.
        return Ok(done);
    }
    store.record_image(
        // Only the digest is added: the tags stay where they are now (a
        // pull or commit during the push may have moved one).
        ImageRecord {
            repo_tags: Vec::new(),
            repo_digests: vec![done.repo_digest.clone()],
            ..entry.record.clone()
        },
        entry.config_json.clone(),
        entry.config.clone(),
    )?;
    Ok(done)
}
