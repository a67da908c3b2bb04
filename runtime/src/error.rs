//! The runtime's errors; cri-server maps [`Error::kind`] to gRPC codes.

use crate::model::ValidationError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    DeadlineExceeded,
    ResourceExhausted,
    Unavailable,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Namespace(#[from] crate::namespaces::NamespaceError),
    #[error(transparent)]
    Rootfs(#[from] crate::rootfs::RootfsError),
    #[error(transparent)]
    Shim(#[from] crate::shim_client::ShimError),
    #[error(transparent)]
    Image(#[from] berth_image::Error),
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error(transparent)]
    User(#[from] crate::user::UserError),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
    #[error("pod network: {0}")]
    Network(#[from] berth_network::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
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
            Error::Invalid(_) | Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            Error::DeadlineExceeded(_) => ErrorKind::DeadlineExceeded,
            Error::Image(e) => match e.kind() {
                berth_image::error::ErrorKind::NotFound => ErrorKind::NotFound,
                berth_image::error::ErrorKind::InvalidArgument => ErrorKind::InvalidArgument,
                _ => ErrorKind::Internal,
            },
            Error::Shim(crate::shim_client::ShimError::Failed(_)) => ErrorKind::FailedPrecondition,
            Error::Spec(e) if e.is_invalid_argument() => ErrorKind::InvalidArgument,
            // The node's mounts, not the request, are in the way.
            Error::Spec(crate::spec::SpecError::Propagation { .. }) => {
                ErrorKind::FailedPrecondition
            }
            // A directory the request names (working_dir, a mount point, an
            // image VOLUME) cannot be made in this image: a file is in its
            // way, or the path is too long or loops.
            Error::Spec(crate::spec::SpecError::RootfsDir { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(
                        libc::ENOTDIR
                            | libc::EEXIST
                            | libc::ELOOP
                            | libc::ENAMETOOLONG
                            | libc::EXDEV
                    )
                ) =>
            {
                ErrorKind::FailedPrecondition
            }
            Error::User(crate::user::UserError::Rootfs { .. }) => ErrorKind::Internal,
            Error::User(_) => ErrorKind::InvalidArgument,
            Error::Network(e) => match e {
                berth_network::Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
                berth_network::Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
                berth_network::Error::Exhausted(_) => ErrorKind::ResourceExhausted,
                berth_network::Error::NotReady(_) => ErrorKind::Unavailable,
                berth_network::Error::Failed(_) => ErrorKind::Internal,
            },
            Error::Internal(_)
            | Error::State(_)
            | Error::Namespace(_)
            | Error::Rootfs(_)
            | Error::Shim(_)
            | Error::Spec(_)
            | Error::Cgroup(_)
            | Error::Io { .. } => ErrorKind::Internal,
        }
    }
}
