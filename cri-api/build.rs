//! Compiles the vendored cri-api `proto/api.proto` (package `runtime.v1`)
//! into `$OUT_DIR/runtime.v1.rs` with tonic-prost-build and the system protoc
//! (`$PROTOC`, else `protoc` on PATH; Debian's 3.21 is enough). Client and
//! server are both generated: berthd serves, the conformance suite and the
//! bench are clients.
//!
//! The vendored file stays exactly as upstream ships it. protoc 3.21 cannot
//! read the `[debug_redact = true]` field options of newer cri-api releases,
//! so protoc gets a copy without them, written to `$OUT_DIR/proto/api.proto`
//! (see `build/strip.rs`).

use std::path::PathBuf;

#[path = "build/strip.rs"]
mod strip;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let vendored = PathBuf::from("proto/api.proto");
    println!("cargo:rerun-if-changed={}", vendored.display());
    println!("cargo:rerun-if-changed=build/strip.rs");
    println!("cargo:rerun-if-env-changed=PROTOC");

    let src = std::fs::read_to_string(&vendored)
        .map_err(|e| format!("reading {}: {e}", vendored.display()))?;
    let stripped =
        strip::strip_debug_redact(&src).map_err(|e| format!("{}: {e}", vendored.display()))?;

    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    let include = out_dir.join("proto");
    std::fs::create_dir_all(&include)?;
    let copy = include.join("api.proto");
    // Written only when it changes, so that its mtime does not make cargo
    // think the build script's inputs moved.
    if std::fs::read_to_string(&copy).ok().as_deref() != Some(stripped.as_str()) {
        std::fs::write(&copy, &stripped)?;
    }

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The copy is rewritten by this script; the rerun-if-changed lines
        // above name the real inputs.
        .emit_rerun_if_changed(false)
        .compile_protos(&[&copy], &[&include])
        .map_err(|e| {
            format!(
                "compiling {} (a copy of {}): {e}",
                copy.display(),
                vendored.display()
            )
        })?;
    Ok(())
}
