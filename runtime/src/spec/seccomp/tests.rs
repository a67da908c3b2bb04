use super::*;
use crate::seccomp::tests::{Data, run};
use crate::seccomp::{
    AUDIT_ARCH_I386, AUDIT_ARCH_X86_64, RET_ALLOW, RET_ERRNO, RET_KILL_PROCESS, compile,
};
use crate::spec::tests::{FakeHost, Fixture, privileged};
use crate::spec::{SpecError, seccomp as sc};

const EPERM: u32 = RET_ERRNO | 1;

fn caps(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn default_caps() -> BTreeSet<String> {
    crate::spec::DEFAULT_CAPABILITIES
        .iter()
        .map(|c| c.to_string())
        .collect()
}

fn ctx(bounding: &BTreeSet<String>) -> Context<'_> {
    Context {
        bounding,
        arch: Native::X86_64,
        kernel: (6, 1),
    }
}

fn runtime_default() -> SecurityProfile {
    SecurityProfile {
        profile_type: ProfileType::RuntimeDefault,
        localhost_ref: String::new(),
    }
}

fn localhost(path: &str) -> SecurityProfile {
    SecurityProfile {
        profile_type: ProfileType::Localhost,
        localhost_ref: path.into(),
    }
}

fn names_with(p: &LinuxSeccomp, name: &str) -> Vec<LinuxSyscall> {
    p.syscalls()
        .iter()
        .flatten()
        .filter(|s| s.names().iter().any(|n| n == name))
        .cloned()
        .collect()
}

/// The x86_64 number of `name`.
fn nr(name: &str) -> u32 {
    let e = crate::seccomp::syscalls::SYSCALLS
        .iter()
        .find(|e| e.0 == name)
        .unwrap();
    u32::from(e.1)
}

fn call(name: &str, args: &[u64]) -> Data {
    let mut a = [0u64; 6];
    a[..args.len()].copy_from_slice(args);
    Data {
        nr: nr(name),
        arch: AUDIT_ARCH_X86_64,
        args: a,
    }
}

#[test]
fn runtime_default_is_containerds_profile() {
    let bounding = default_caps();
    let p = default_profile(&ctx(&bounding)).unwrap();
    assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(
        p.architectures().clone().unwrap(),
        [Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    );
    // No CAP_SYS_ADMIN: clone only without namespace flags, clone3 ENOSYS,
    // none of the admin syscalls.
    let clone = names_with(&p, "clone");
    assert_eq!(clone.len(), 1);
    let a = clone[0].args().clone().unwrap();
    assert_eq!(
        (a[0].index(), a[0].value(), a[0].op()),
        (0, 0x7e02_0000, LinuxSeccompOperator::ScmpCmpMaskedEq)
    );
    let clone3 = names_with(&p, "clone3");
    assert_eq!(clone3.len(), 1);
    assert_eq!(clone3[0].action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(clone3[0].errno_ret(), Some(38));
    for name in ["mount", "unshare", "setns", "reboot", "bpf"] {
        assert!(names_with(&p, name).is_empty(), "{name}");
    }
    // Granted by the kernel version; CHROOT by the default capabilities.
    assert_eq!(names_with(&p, "ptrace").len(), 1);
    assert_eq!(names_with(&p, "chroot").len(), 1);
    assert_eq!(names_with(&p, "arch_prctl").len(), 1);
    assert!(names_with(&p, "set_tls").is_empty(), "arm only");
    assert_eq!(names_with(&p, "personality").len(), 5);
    // On an old kernel ptrace is not allowed.
    let old = Context {
        kernel: (4, 4),
        ..ctx(&bounding)
    };
    assert!(names_with(&default_profile(&old).unwrap(), "ptrace").is_empty());
}

#[test]
fn runtime_default_denies_what_containerds_denies() {
    let bounding = default_caps();
    let prog = compile(&default_profile(&ctx(&bounding)).unwrap(), Native::X86_64).unwrap();
    let r = |name: &str, args: &[u64]| run(&prog, &call(name, args));
    for name in [
        "read",
        "write",
        "openat",
        "mkdir",
        "execve",
        "exit_group",
        "getpid",
    ] {
        assert_eq!(r(name, &[]), RET_ALLOW, "{name}");
    }
    for name in [
        "unshare",
        "mount",
        "umount2",
        "setns",
        "reboot",
        "init_module",
        "kexec_load",
        "bpf",
        "swapon",
        "pivot_root",
        "keyctl",
        "add_key",
        "userfaultfd",
        "open_by_handle_at",
        "perf_event_open",
        "settimeofday",
        "clock_settime",
        "iopl",
    ] {
        assert_eq!(r(name, &[]), EPERM, "{name}");
    }
    assert_eq!(r("clone3", &[]), RET_ERRNO | 38);
    // fork-like clone is fine, a namespace is not.
    assert_eq!(
        r("clone", &[0x0120_0011]),
        RET_ALLOW,
        "SIGCHLD|CHILD_SETTID|CLEARTID"
    );
    assert_eq!(r("clone", &[0x1000_0000 | 17]), EPERM, "CLONE_NEWUSER");
    assert_eq!(r("clone", &[0x0002_0000 | 17]), EPERM, "CLONE_NEWNS");
    // socket: anything but AF_VSOCK.
    assert_eq!(r("socket", &[2, 1, 0]), RET_ALLOW, "AF_INET");
    assert_eq!(r("socket", &[1, 1, 0]), RET_ALLOW, "AF_UNIX");
    assert_eq!(r("socket", &[40, 1, 0]), EPERM, "AF_VSOCK");
    // personality: the listed values only.
    for v in [0, 8, 0x20000, 0x20008, 0xffff_ffff] {
        assert_eq!(r("personality", &[v]), RET_ALLOW, "{v:#x}");
    }
    assert_eq!(r("personality", &[0x0040_0000]), EPERM, "READ_IMPLIES_EXEC");
    // The i386 ABI is covered with its own numbers.
    let i386 = |nr, a0| Data {
        nr,
        arch: AUDIT_ARCH_I386,
        args: [a0, 0, 0, 0, 0, 0],
    };
    assert_eq!(run(&prog, &i386(3, 0)), RET_ALLOW, "i386 read");
    assert_eq!(run(&prog, &i386(310, 0)), EPERM, "i386 unshare");
    assert_eq!(
        run(&prog, &i386(120, 0x1000_0000)),
        EPERM,
        "i386 clone NEWUSER"
    );
    assert_eq!(run(&prog, &i386(120, 17)), RET_ALLOW, "i386 clone");
    let mut arm = call("read", &[]);
    arm.arch = crate::seccomp::AUDIT_ARCH_AARCH64;
    assert_eq!(run(&prog, &arm), RET_KILL_PROCESS);
    assert!(prog.insns.len() < 2000, "{} instructions", prog.insns.len());
}

#[test]
fn capabilities_open_their_syscalls() {
    let mut bounding = default_caps();
    bounding.extend(caps(&["SYS_ADMIN", "SYS_PTRACE", "SYS_BOOT", "SYS_TIME"]));
    let p = default_profile(&ctx(&bounding)).unwrap();
    let prog = compile(&p, Native::X86_64).unwrap();
    let r = |name: &str, args: &[u64]| run(&prog, &call(name, args));
    for name in [
        "mount",
        "unshare",
        "setns",
        "clone3",
        "reboot",
        "settimeofday",
        "kcmp",
    ] {
        assert_eq!(r(name, &[]), RET_ALLOW, "{name}");
    }
    assert_eq!(r("clone", &[0x1000_0000 | 17]), RET_ALLOW);
    // The clone3 ENOSYS rule is gone, not just overridden.
    assert!(
        names_with(&p, "clone3")
            .iter()
            .all(|s| s.action() == LinuxSeccompAction::ScmpActAllow)
    );
    assert_eq!(r("init_module", &[]), EPERM);
    // Without CHROOT, no chroot.
    let bounding = caps(&["CHOWN"]);
    let prog = compile(&default_profile(&ctx(&bounding)).unwrap(), Native::X86_64).unwrap();
    assert_eq!(run(&prog, &call("chroot", &[])), EPERM);
}

#[test]
fn unconfined_unset_and_privileged_get_no_filter() {
    let host = FakeHost::default();
    let b = default_caps();
    let unconfined = SecurityProfile {
        profile_type: ProfileType::Unconfined,
        localhost_ref: String::new(),
    };
    assert_eq!(resolve(None, false, &b, (6, 1), &host).unwrap(), None);
    assert_eq!(
        resolve(Some(&unconfined), false, &b, (6, 1), &host).unwrap(),
        None
    );
    assert_eq!(
        resolve(Some(&runtime_default()), true, &b, (6, 1), &host).unwrap(),
        None
    );
    // Privileged wins over a Localhost file that is not even there.
    assert_eq!(
        resolve(Some(&localhost("/nope.json")), true, &b, (6, 1), &host).unwrap(),
        None
    );
    assert!(
        resolve(Some(&runtime_default()), false, &b, (6, 1), &host)
            .unwrap()
            .is_some()
    );
}

const DENY_MKDIR: &str = r#"{
    "defaultAction": "SCMP_ACT_ALLOW",
    "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": null}
    ],
    "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "comment": "x"},
        {"name": "chmod", "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
        {"names": ["mount"], "action": "SCMP_ACT_ERRNO", "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["reboot"], "action": "SCMP_ACT_KILL_PROCESS", "includes": {"caps": ["CAP_CHOWN"], "arches": ["amd64"]}},
        {"names": ["swapon"], "action": "SCMP_ACT_ERRNO", "includes": {"minKernel": "99.0"}},
        {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "args": [
            {"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}
        ]}
    ]
}"#;

fn host_with(path: &str, text: &str) -> FakeHost {
    FakeHost {
        files: vec![(PathBuf::from(path), text.as_bytes().to_vec())],
        ..Default::default()
    }
}

use std::path::PathBuf;

#[test]
fn a_localhost_profile_in_dockers_format() {
    let host = host_with("/var/lib/kubelet/seccomp/deny-mkdir.json", DENY_MKDIR);
    let b = caps(&["CHOWN"]);
    let p = resolve_for(
        &localhost("/var/lib/kubelet/seccomp/deny-mkdir.json"),
        &ctx(&b),
        &host,
    )
    .unwrap();
    assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);
    assert_eq!(
        p.architectures().clone().unwrap(),
        [Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    );
    let prog = compile(&p, Native::X86_64).unwrap();
    let r = |name: &str, args: &[u64]| run(&prog, &call(name, args));
    assert_eq!(r("mkdir", &[]), EPERM);
    assert_eq!(r("mkdirat", &[]), EPERM);
    assert_eq!(r("getdents64", &[]), RET_ALLOW);
    assert_eq!(r("chmod", &[]), RET_ERRNO | 13);
    assert_eq!(r("mount", &[]), EPERM, "excluded only with SYS_ADMIN");
    assert_eq!(r("reboot", &[]), RET_KILL_PROCESS, "CHOWN on amd64");
    assert_eq!(r("swapon", &[]), RET_ALLOW, "needs kernel 99");
    assert_eq!(r("kill", &[1, 9]), EPERM);
    assert_eq!(r("kill", &[1, 15]), RET_ALLOW);
    // With SYS_ADMIN and without CHOWN the conditional rules turn.
    let b = caps(&["SYS_ADMIN"]);
    let p = resolve_for(
        &localhost("/var/lib/kubelet/seccomp/deny-mkdir.json"),
        &ctx(&b),
        &host,
    )
    .unwrap();
    let prog = compile(&p, Native::X86_64).unwrap();
    assert_eq!(run(&prog, &call("mount", &[])), RET_ALLOW);
    assert_eq!(run(&prog, &call("reboot", &[])), RET_ALLOW);
}

#[test]
fn an_oci_format_profile_is_taken_as_it_is() {
    let text = r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
        "architectures": ["SCMP_ARCH_X86_64"], "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "syscalls": [{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW", "args": null}]}"#;
    let host = host_with("/p.json", text);
    let b = default_caps();
    let p = resolve_for(&localhost("/p.json"), &ctx(&b), &host).unwrap();
    assert_eq!(p.default_errno_ret(), Some(38));
    let prog = compile(&p, Native::X86_64).unwrap();
    assert_eq!(prog.flags, crate::seccomp::FLAG_LOG);
    assert_eq!(run(&prog, &call("read", &[])), RET_ALLOW);
    assert_eq!(run(&prog, &call("open", &[])), RET_ERRNO | 38);
}

#[test]
fn bad_localhost_profiles_are_invalid_arguments_naming_the_file() {
    let b = default_caps();
    let cases: &[(&str, &str)] = &[
        ("", "cannot read it"),
        ("{not json", "not a profile"),
        (r#"{"syscalls": []}"#, "not a profile"),
        (r#"{"defaultAction": "SCMP_ACT_FLY"}"#, "not a profile"),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]}"#,
            "SCMP_ACT_NOTIFY",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}"#,
            "both set",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 7, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
            "out of range",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                "includes": {"minKernel": "four"}}]}"#,
            "minKernel",
        ),
    ];
    for (text, want) in cases {
        let host = if text.is_empty() {
            FakeHost::default()
        } else {
            host_with("/etc/seccomp/x.json", text)
        };
        let e = resolve(
            Some(&localhost("/etc/seccomp/x.json")),
            false,
            &b,
            (6, 1),
            &host,
        )
        .unwrap_err();
        assert!(e.is_invalid_argument(), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("/etc/seccomp/x.json") && msg.contains(want),
            "{text}: {msg}"
        );
    }
    // Too large.
    let big = format!(
        r#"{{"defaultAction": "SCMP_ACT_ALLOW", "x": "{}"}}"#,
        "a".repeat(1 << 20)
    );
    let host = host_with("/big.json", &big);
    let e = resolve(Some(&localhost("/big.json")), false, &b, (6, 1), &host).unwrap_err();
    assert!(e.to_string().contains("cannot read it"), "{e}");
}

#[test]
fn the_real_host_reads_only_small_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.json");
    std::fs::write(&f, DENY_MKDIR).unwrap();
    let real = crate::spec::RealHost;
    assert_eq!(
        real.read_small_file(&f, MAX_PROFILE_SIZE).unwrap(),
        DENY_MKDIR.as_bytes()
    );
    assert!(real.read_small_file(&f, 10).is_err());
    assert!(real.read_small_file(dir.path(), MAX_PROFILE_SIZE).is_err());
    assert!(
        real.read_small_file(&dir.path().join("none"), MAX_PROFILE_SIZE)
            .is_err()
    );
    // A FIFO does not hang the read.
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    assert!(real.read_small_file(&fifo, MAX_PROFILE_SIZE).is_err());
}

#[test]
fn kernel_versions_parse() {
    assert_eq!(kernel_version("6.1.0-18-amd64"), Some((6, 1)));
    assert_eq!(kernel_version("6.18.44-fc-v595"), Some((6, 18)));
    assert_eq!(kernel_version("5.10"), Some((5, 10)));
    assert_eq!(kernel_version("x"), None);
}

#[test]
fn the_container_spec_carries_the_profile() {
    let mut f = Fixture::new();
    let seccomp = |f: &Fixture| f.spec().linux().as_ref().unwrap().seccomp().clone();
    assert_eq!(seccomp(&f), None, "nothing asked: unconfined");
    f.ctr.linux.security_context.seccomp = Some(runtime_default());
    let s = seccomp(&f).unwrap();
    assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActErrno);
    // The fixture's default capabilities: no admin syscalls.
    assert!(names_with(&s, "mount").is_empty());
    f.ctr.linux.security_context.capabilities.add_capabilities = vec!["SYS_ADMIN".into()];
    assert!(!names_with(&seccomp(&f).unwrap(), "mount").is_empty());
    privileged(&mut f);
    assert_eq!(seccomp(&f), None);
    // A missing Localhost file fails the spec.
    let mut f = Fixture::new();
    f.ctr.linux.security_context.seccomp = Some(localhost("/missing.json"));
    let e = f.build().unwrap_err();
    assert!(
        matches!(e, SpecError::Seccomp { .. }) && e.is_invalid_argument(),
        "{e}"
    );
    let _ = sc::MAX_PROFILE_SIZE;
}
