//! berth's runtime: pod sandboxes and containers.
//!
//! berthd never forks a container itself: each container (and each pod that
//! shares a PID namespace) gets a `berth-shim`, a small single-threaded
//! monitor that creates the process from an OCI bundle, stays its parent,
//! logs its output in the CRI format and records its exit. berthd talks to
//! it over [`shim::protocol`].

pub mod shim;
