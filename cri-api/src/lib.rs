//! berth's CRI bindings: the official Kubernetes CRI API (`runtime.v1`,
//! cri-api v0.36.3, the API of Kubernetes 1.36), vendored as
//! `proto/api.proto` and compiled by `build.rs` with tonic-prost-build.
//!
//! `v1` has the messages and enums, `runtime_service_server` /
//! `image_service_server` (the traits berthd implements) and
//! `runtime_service_client` / `image_service_client`, with the names the
//! k8s-cri crate used, so `k8s_cri::v1::X` is `berth_cri_api::v1::X`.

/// The cri-api release `proto/api.proto` is taken from.
pub const CRI_API_VERSION: &str = "v0.36.3";

/// The `runtime.v1` package of `proto/api.proto`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, rustdoc::all)]
    tonic::include_proto!("runtime.v1");
}

#[cfg(test)]
#[path = "../build/strip.rs"]
mod strip;
