//! berth's runtime: pod sandboxes and containers.
//!
//! berthd never forks a container itself: each container (and each pod that
//! shares a PID namespace) gets a `berth-shim`, a small single-threaded
//! monitor that creates the process from an OCI bundle, stays its parent,
//! logs its output in the CRI format and records its exit. berthd talks to
//! it over [`shim::protocol`].
//!
//! * [`model`]: the CRI pod and container configs in domain terms.
//! * [`spec`]: OCI runtime spec generation from those, the image config and
//!   the sandbox.
//! * [`user`]: user and group resolution inside an image's root filesystem.
//! * [`cgroups`]: cgroup v1 and v2 behind one interface.
//! * [`seccomp`]: seccomp profiles compiled to BPF for the shim to load.
//! * [`shim`]: the monitor and its protocol.

pub mod cgroups;
pub mod error;
pub mod failpoint;
pub mod handlers;
pub mod kernel;
pub mod model;
pub mod namespaces;
pub mod pod_files;
pub mod rootfs;
pub mod seccomp;
pub mod service;
pub mod shim;
pub mod shim_client;
pub mod spec;
pub mod state;
pub mod steps;
pub mod user;
