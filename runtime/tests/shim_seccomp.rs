//! berth-shim and a seccomp profile: the filter berthd compiled into the
//! bundle goes on the container process and on each exec, never on the
//! shim; a bundle that asks for a filter it lacks fails to start and
//! leaves nothing. Also the memory a filtered container's shim keeps. Needs
//! root (fails otherwise).

mod shim_support;

use berth_runtime::seccomp::{Native, compile};
use berth_runtime::shim::protocol::{
    ExecResult, Request, Response, SECCOMP_FILE, ShimConfig, ShimKind,
};
use oci_spec::runtime::{Arch, LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder, Spec};
use shim_support::*;

macro_rules! require_root {
    () => {
        assert!(
            is_root(),
            "this test needs root (it makes namespaces, mounts and cgroups); run the suite as root"
        );
    };
}

/// `spec` with a profile that allows everything but mkdir (EPERM).
fn deny_mkdir(mut spec: Spec) -> Spec {
    let profile = LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86])
        .syscalls(vec![
            LinuxSyscallBuilder::default()
                .names(vec!["mkdir".to_string(), "mkdirat".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(1u32)
                .build()
                .unwrap(),
        ])
        .build()
        .unwrap();
    let mut linux = spec.linux().clone().unwrap();
    linux.set_seccomp(Some(profile));
    spec.set_linux(Some(linux));
    spec
}

/// `spec` with containerd's default profile (default capabilities).
fn runtime_default(mut spec: Spec) -> Spec {
    use berth_runtime::model::{ProfileType, SecurityProfile};
    let bounding = berth_runtime::spec::DEFAULT_CAPABILITIES
        .iter()
        .map(|c| c.to_string())
        .collect();
    let profile = berth_runtime::spec::seccomp::resolve(
        Some(&SecurityProfile {
            profile_type: ProfileType::RuntimeDefault,
            localhost_ref: String::new(),
        }),
        false,
        &bounding,
        (6, 1),
        &berth_runtime::spec::RealHost,
    )
    .unwrap();
    let mut linux = spec.linux().clone().unwrap();
    linux.set_seccomp(profile);
    spec.set_linux(Some(linux));
    spec
}

/// Writes the bundle as berthd does with `spec`'s profile: config.json
/// without it, the compiled filter beside, shim.json saying so.
fn write_filtered(b: &Bundle, spec: &Spec) {
    let mut spec = spec.clone();
    let mut linux = spec.linux().clone().unwrap();
    let profile = linux.seccomp().clone().unwrap();
    linux.set_seccomp(None);
    spec.set_linux(Some(linux));
    b.write(&spec, ShimKind::Container);
    let p = compile(&profile, Native::host().unwrap()).unwrap();
    std::fs::write(b.dir.join(SECCOMP_FILE), p.to_bytes()).unwrap();
    let path = b.dir.join("shim.json");
    let mut cfg: ShimConfig = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cfg.seccomp = true;
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
}

fn seccomp_mode(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .unwrap()
        .trim()
        .to_string()
}

fn exec(b: &Bundle, args: &[&str]) -> ExecResult {
    match b.request(&Request::Exec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: None,
        cwd: None,
        timeout_ms: 10_000,
    }) {
        Response::Exec(r) => r,
        other => panic!("Exec: {other:?}"),
    }
}

#[test]
fn the_filter_goes_on_the_container_and_its_execs_not_the_shim() {
    require_root!();
    if Native::host().is_none() {
        return;
    }
    let mut b = Bundle::new("seccomp");
    let spec = deny_mkdir(b.spec(&[
        "sh",
        "-c",
        "mkdir /from-init; echo mkdir=$?; exec sleep 1000",
    ]));
    write_filtered(&b, &spec);
    let init = b.run_shim().unwrap();
    assert_eq!(b.start(), Response::Ok);
    b.wait_log(10, |t| t.contains("mkdir="));
    assert!(b.log_text().contains("mkdir=1"), "{}", b.log_text());
    assert_eq!(seccomp_mode(init), "2", "the container process");
    assert_eq!(seccomp_mode(b.shim_pid.unwrap()), "0", "the shim");
    let r = exec(&b, &["mkdir", "/from-exec"]);
    assert_ne!(r.exit_code, 0);
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("Operation not permitted"),
        "{r:?}"
    );
    let r = exec(&b, &["sh", "-c", "grep Seccomp: /proc/self/status; ls /"]);
    assert_eq!(r.exit_code, 0, "{r:?}");
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.contains("Seccomp:\t2") && out.contains("etc"), "{out}");
    assert!(!b.rootfs.join("from-init").exists() && !b.rootfs.join("from-exec").exists());
    assert_eq!(b.kill_all().code, 137);
}

#[test]
fn a_profile_without_its_compiled_filter_fails_and_leaves_nothing() {
    require_root!();
    let mut b = Bundle::new("seccomp-missing");
    let spec = deny_mkdir(b.spec(&["sleep", "1000"]));
    write_filtered(&b, &spec);
    std::fs::remove_file(b.dir.join(SECCOMP_FILE)).unwrap();
    let e = b.run_shim().unwrap_err();
    assert!(e.contains(SECCOMP_FILE), "{e}");
    assert!(b.wait_shim_gone(10));
    for f in ["shim.sock", "init.pid"] {
        assert!(!b.dir.join(f).exists(), "{f} left behind");
    }
    // A file that is not a filter: refused the same way.
    std::fs::write(b.dir.join(SECCOMP_FILE), b"not bpf").unwrap();
    let e = b.run_shim().unwrap_err();
    assert!(e.contains("not a compiled seccomp filter"), "{e}");
}

fn rollup(pid: i32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The filter (here the default profile's) is read and dropped during
/// set-up: a filtered container's shim is as small as any (printed with
/// --nocapture; see shim_memory.rs).
#[test]
fn a_filtered_containers_shim_keeps_no_filter_in_memory() {
    require_root!();
    if Native::host().is_none() {
        return;
    }
    let mut plain = Bundle::new("pss-plain");
    let spec = plain.spec(&["sh", "-c", "echo started; exec sleep 1000"]);
    plain.write(&spec, ShimKind::Container);
    let mut filtered = Bundle::new("pss-seccomp");
    let spec = runtime_default(filtered.spec(&["sh", "-c", "echo started; exec sleep 1000"]));
    write_filtered(&filtered, &spec);
    let mut pss = Vec::new();
    for b in [&mut plain, &mut filtered] {
        b.run_shim().unwrap();
        assert_eq!(b.start(), Response::Ok);
        b.wait_log(10, |t| t.contains("started"));
        b.state();
    }
    // Read together: PSS shares pages among the shims alive at the time.
    for b in [&plain, &filtered] {
        let pid = b.shim_pid.unwrap();
        pss.push((rollup(pid, "Pss:"), rollup(pid, "Private_Dirty:")));
    }
    println!(
        "berth-shim PSS / private dirty: {} / {} KiB without a filter, {} / {} KiB with the default profile's",
        pss[0].0, pss[0].1, pss[1].0, pss[1].1
    );
    assert!(pss[1].1 <= pss[0].1 + 16, "{pss:?}");
    for b in [&plain, &filtered] {
        b.request(&Request::Kill {
            signal: 9,
            all: true,
        });
        b.wait();
    }
}
