//! What a running berth-shim costs: PSS (from /proc/<pid>/smaps_rollup) of
//! each of several shims, each watching a sleeping container. Printed for
//! the benchmark notes (`--nocapture`); the assertion is a loose ceiling
//! that holds for debug builds too. Needs root (fails otherwise).

mod shim_support;

use std::time::Duration;

use berth_runtime::shim::protocol::{Request, Response, ShimKind};
use shim_support::*;

const SHIMS: usize = 8;

fn rollup(pid: i32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in smaps_rollup of {pid}"))
}

#[test]
fn a_shim_watching_a_container_is_small() {
    assert!(
        is_root(),
        "this test needs root (it starts real shims); run the suite as root"
    );
    let mut bundles = Vec::new();
    for i in 0..SHIMS {
        let mut b = Bundle::new(&format!("mem{i}"));
        b.write(
            &b.spec(&["sh", "-c", "echo started; exec sleep 1000"]),
            ShimKind::Container,
        );
        b.run_shim().unwrap();
        assert_eq!(b.start(), Response::Ok);
        b.wait_log(10, |t| t.contains("started"));
        // A request served, as berthd's status polling would.
        b.state();
        bundles.push(b);
    }
    // Idle shims: each gives back what its set-up and requests used once
    // it has been idle for RELEASE_AFTER.
    std::thread::sleep(berth_runtime::shim::server::RELEASE_AFTER + Duration::from_millis(300));
    let mut pss = Vec::new();
    for b in &bundles {
        let pid = b.shim_pid.unwrap();
        pss.push((
            rollup(pid, "Pss:"),
            rollup(pid, "Rss:"),
            rollup(pid, "Private_Dirty:"),
        ));
    }
    let avg = |f: fn(&(u64, u64, u64)) -> u64| pss.iter().map(f).sum::<u64>() / pss.len() as u64;
    println!(
        "berth-shim with {SHIMS} running: PSS {} KiB, RSS {} KiB, private dirty {} KiB (average); PSS each: {:?}",
        avg(|p| p.0),
        avg(|p| p.1),
        avg(|p| p.2),
        pss.iter().map(|p| p.0).collect::<Vec<_>>()
    );
    for b in &bundles {
        assert_eq!(
            b.request(&Request::Kill {
                signal: 9,
                all: true
            }),
            Response::Ok
        );
        assert_eq!(b.wait().code, 137);
    }
    assert!(avg(|p| p.0) < 2048, "PSS {pss:?}");
}
