//! (being written) Safe layer unpack.

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("{0}")]
    Other(String),
}
