//! berth-stream: the wire protocols of Kubernetes streaming (exec, attach,
//! port-forward) as berth's streaming server and its conformance clients
//! speak them.
//!
//! * [`spdy`]: SPDY/3.1 framing and a tokio multiplexer, server and client.
//! * [`upgrade`]: the HTTP/1.1 `Upgrade: SPDY/3.1` handshake on both sides,
//!   with `X-Stream-Protocol-Version` negotiation, independent of any HTTP
//!   server (it works with hyper 1's `hyper::upgrade::on`).
//! * [`k8s`]: protocol names, header names, stream types, and the JSON the
//!   remotecommand v4 error stream and resize stream carry.
//!
//! Not here: the WebSocket (v5.channel.k8s.io) side, and anything about
//! containers; this crate depends on nothing else in berth.

pub mod k8s;
pub mod spdy;
pub mod upgrade;
