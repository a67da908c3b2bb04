//! berth-shim is linked as a fixed-address (non-PIE) executable: a PIE's
//! relocated pointers (vtables, GOT) dirty several hundred KiB of pages in
//! every shim at start, private to each; without PIE they are resolved at
//! link time and stay shared with the file.
fn main() {
    println!("cargo:rustc-link-arg-bin=berth-shim=-no-pie");
    println!("cargo:rerun-if-changed=build.rs");
}
