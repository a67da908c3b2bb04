//! berth-shim: the per-container monitor. See `berth_runtime::shim`.

fn main() {
    std::process::exit(berth_runtime::shim::main());
}
