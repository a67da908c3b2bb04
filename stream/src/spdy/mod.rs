//! SPDY/3.1, as Kubernetes streaming uses it.
//!
//! * [`frame`]: the frame codec (both directions' zlib contexts, limits on
//!   untrusted input).
//! * [`session`]: the stream multiplexer over an upgraded connection, for both
//!   the server role (kubelet's streaming server, berth's) and the client role
//!   (kubectl, crictl, berth's conformance clients).
//!
//! Kubernetes speaks SPDY/3.1 through `github.com/moby/spdystream`, which
//! implements the SPDY/3 framer but no flow control: it never sends
//! WINDOW_UPDATE and ignores the ones it gets. [`session`] therefore speaks
//! flow control only with a peer that shows it speaks it (see
//! [`session::FlowControl`]).

pub mod dictionary;
pub mod frame;
pub mod session;

pub use frame::{GoAwayStatus, Headers, RstStatus};
pub use session::{
    CloseReason, Config, Error, FlowControl, IncomingStream, RecvStream, Role, SendStream, Session,
    Stream,
};
