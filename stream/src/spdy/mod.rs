//! SPDY/3.1, as Kubernetes streaming uses it.
//!
//! * [`frame`]: the frame codec (both directions' zlib contexts, limits on
//!   untrusted input).

pub mod dictionary;
pub mod frame;

pub use frame::{GoAwayStatus, Headers, RstStatus};
