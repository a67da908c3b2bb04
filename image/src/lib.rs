//! berth's image service: everything between an image reference and a stack
//! of unpacked layer directories that overlayfs can mount.
//!
//! * [`reference`]: parsing and Docker Hub normalisation of image references.
//! * [`registry`]: a Registry API v2 client (mirrors, auth, retries, stall timeout).
//! * [`tar`] and [`unpack`]: a bounded streaming tar reader and a layer applier
//!   that never follows a symlink and never writes outside its directory.
//! * [`limits`]: the caps on what one layer may unpack to (gzip bombs).
//! * [`store`]: the on-disk store: content blobs, layer snapshots keyed by chain
//!   id, and the image records in an embedded database.
//! * [`service`]: [`ImageService`], what the CRI server calls.
//! * [`group_commit`]: one transaction for many threads' writes to a redb
//!   database (the store's holds, berthd's runtime records).

pub mod commit;
pub mod digest;
pub mod error;
pub mod group_commit;
pub mod limits;
pub mod manifest;
pub mod push;
pub mod reference;
pub mod registry;
pub mod service;
pub mod store;
pub mod tar;
pub mod unpack;

pub use digest::Digest;
pub use error::{Error, Result};
pub use reference::Reference;
pub use service::{FsUsage, Image, ImageService, ImageServiceConfig};
