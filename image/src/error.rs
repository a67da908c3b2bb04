//! The image crate's errors. cri-server maps [`Error::kind`] to a gRPC code;
//! the message is meant for the person reading kubelet's events.

use crate::limits::LimitExceeded;
use crate::reference::ParseReferenceError;
use crate::unpack::UnpackError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a caller should classify an error (for gRPC codes and retries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    Unauthenticated,
    PermissionDenied,
    FailedPrecondition,
    /// Over a configured limit (a layer too large, the disk too full).
    ResourceExhausted,
    Unavailable,
    DeadlineExceeded,
    DataLoss,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    InvalidReference(#[from] ParseReferenceError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("registry {registry} refused the credentials: {message}")]
    Unauthenticated { registry: String, message: String },
    #[error("registry {registry} denied access to {repository}: {message}")]
    Denied {
        registry: String,
        repository: String,
        message: String,
    },
    #[error("{0}")]
    Registry(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("pull of {what} made no progress for {secs}s (registry.pull_stall_timeout)")]
    Stalled { what: String, secs: u64 },
    #[error("{what}: content does not match its digest (expected {expected}, got {actual})")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("layer {layer}: {source}")]
    Unpack {
        layer: String,
        #[source]
        source: UnpackError,
    },
    /// A layer over `registry.max_unpacked_layer_size` or
    /// `registry.min_free_space`; `layer` names it and its image.
    #[error("{layer}: {limit}")]
    LayerLimit { layer: String, limit: LimitExceeded },
    #[error("image {0} is pinned (registry.pinned_images) and cannot be removed")]
    Pinned(String),
    #[error("image {image} is in use as an image volume by {users}: remove those containers first")]
    InUse { image: String, users: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("image database: {0}")]
    Database(String),
    /// An error of work shared by several callers (a layer two pulls wait on).
    #[error(transparent)]
    Shared(std::sync::Arc<Error>),
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidReference(_) | Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Unauthenticated { .. } => ErrorKind::Unauthenticated,
            Error::Denied { .. } => ErrorKind::PermissionDenied,
            Error::Registry(_) | Error::Unpack { .. } => ErrorKind::FailedPrecondition,
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::Stalled { .. } => ErrorKind::DeadlineExceeded,
            Error::DigestMismatch { .. } => ErrorKind::DataLoss,
            Error::Pinned(_) | Error::InUse { .. } => ErrorKind::FailedPrecondition,
            Error::LayerLimit { .. } => ErrorKind::ResourceExhausted,
            Error::Io { .. } | Error::Database(_) => ErrorKind::Internal,
            Error::Shared(e) => e.kind(),
        }
    }
}

macro_rules! db_error {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Database(e.to_string())
            }
        }
    )*};
}
db_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
