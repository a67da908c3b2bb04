//! What a running berth-shim costs: PSS (from /proc/<pid>/smaps_rollup) of
//! each of several shims, each watching a sleeping container. Printed for
//! the benchmark notes (`--nocapture`); the assertion is a loose ceiling
//! that holds for debug builds too. Needs root (fails otherwise).

mod shim_support;

use std::time::Duration;

use berth_runtime::shim::protocol::{Response, ShimKind};
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
        assert_eq!(b.kill_all().code, 137);
    }
    assert!(avg(|p| p.0) < 2048, "PSS {pss:?}");
}

/// The shim gives back what a request touched once it has been idle for
/// RELEASE_AFTER, not before: right after a burst of requests its code is
/// still mapped, a while later it is not.
#[test]
fn a_shim_gives_memory_back_once_idle_not_during_a_burst() {
    assert!(
        is_root(),
        "this test needs root (it starts real shims); run the suite as root"
    );
    let mut b = Bundle::new("release");
    b.write(
        &b.spec(&["sh", "-c", "echo started; exec sleep 1000"]),
        ShimKind::Container,
    );
    b.run_shim().unwrap();
    assert_eq!(b.start(), Response::Ok);
    b.wait_log(10, |t| t.contains("started"));
    let pid = b.shim_pid.unwrap();
    std::thread::sleep(berth_runtime::shim::server::RELEASE_AFTER + Duration::from_millis(300));
    let idle = rollup(pid, "Rss:");
    // A burst: each request comes before the last one's release is due.
    for _ in 0..5 {
        b.state();
        std::thread::sleep(berth_runtime::shim::server::RELEASE_AFTER / 4);
    }
    let busy = rollup(pid, "Rss:");
    std::thread::sleep(berth_runtime::shim::server::RELEASE_AFTER + Duration::from_millis(300));
    let after = rollup(pid, "Rss:");
    println!("berth-shim RSS: idle {idle} KiB, in a burst {busy} KiB, idle again {after} KiB");
    assert!(
        busy > after,
        "the burst's pages stay until the shim is idle, then go: {busy} KiB, then {after} KiB"
    );
    assert!(
        after <= idle + 16,
        "idle again: {after} KiB against {idle} KiB before"
    );
    assert_eq!(b.kill_all().code, 137);
}
