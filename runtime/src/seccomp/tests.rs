//! The compiler checked by running its programs: a classic-BPF interpreter
//! that also enforces what the kernel's checker does (forward jumps inside
//! the program, every path ends in `ret`), and, as root, the kernel itself.

use super::*;
use oci_spec::runtime::{LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSyscallBuilder};

/// `struct seccomp_data` as the filter sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Data {
    pub nr: u32,
    pub arch: u32,
    pub args: [u64; 6],
}

impl Data {
    fn word(&self, off: u32) -> u32 {
        match off {
            0 => self.nr,
            4 => self.arch,
            16..=63 if off.is_multiple_of(4) => {
                let a = self.args[(off as usize - 16) / 8];
                if off.is_multiple_of(8) {
                    a as u32
                } else {
                    (a >> 32) as u32
                }
            }
            _ => panic!("load of offset {off}"),
        }
    }
}

/// Runs `p` on `d`; panics on anything the kernel would refuse.
pub(crate) fn run(p: &Program, d: &Data) -> u32 {
    assert!(!p.insns.is_empty() && p.insns.len() <= MAX_INSNS);
    let mut acc: u32 = 0;
    let mut pc = 0usize;
    loop {
        let i = p
            .insns
            .get(pc)
            .unwrap_or_else(|| panic!("ran off the end at {pc}"));
        let next = |off: usize| {
            let t = pc + 1 + off;
            assert!(t < p.insns.len(), "jump out of the program at {pc}");
            t
        };
        match i.code {
            c if c == BPF_LD | BPF_W | BPF_ABS => {
                acc = d.word(i.k);
                pc += 1;
            }
            c if c == BPF_ALU | BPF_AND | BPF_K => {
                acc &= i.k;
                pc += 1;
            }
            c if c == BPF_JMP | BPF_JA => pc = next(i.k as usize),
            c if c == BPF_JMP | BPF_JEQ | BPF_K => {
                pc = next(usize::from(if acc == i.k { i.jt } else { i.jf }))
            }
            c if c == BPF_JMP | BPF_JGT | BPF_K => {
                pc = next(usize::from(if acc > i.k { i.jt } else { i.jf }))
            }
            c if c == BPF_JMP | BPF_JGE | BPF_K => {
                pc = next(usize::from(if acc >= i.k { i.jt } else { i.jf }))
            }
            c if c == BPF_RET | BPF_K => return i.k,
            c => panic!("unknown opcode {c:#x} at {pc}"),
        }
    }
}

fn nr(name: &str) -> u32 {
    Section::X86_64.number(name).unwrap()
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

fn arg(index: usize, value: u64, op: LinuxSeccompOperator) -> LinuxSeccompArg {
    LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .op(op)
        .build()
        .unwrap()
}

fn rule(
    names: &[&str],
    action: LinuxSeccompAction,
    args: Vec<LinuxSeccompArg>,
) -> oci_spec::runtime::LinuxSyscall {
    let mut b = LinuxSyscallBuilder::default()
        .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(action);
    if !args.is_empty() {
        b = b.args(args);
    }
    b.build().unwrap()
}

fn profile(
    default: LinuxSeccompAction,
    arches: Vec<Arch>,
    rules: Vec<oci_spec::runtime::LinuxSyscall>,
) -> LinuxSeccomp {
    LinuxSeccompBuilder::default()
        .default_action(default)
        .architectures(arches)
        .syscalls(rules)
        .build()
        .unwrap()
}

const EPERM: u32 = RET_ERRNO | 1;
use LinuxSeccompAction::{ScmpActAllow as Allow, ScmpActErrno as Errno};
use LinuxSeccompOperator as Op;

#[test]
fn allowed_denied_and_per_syscall_errno() {
    let mut enosys = rule(&["clone3"], Errno, vec![]);
    enosys.set_errno_ret(Some(38));
    let p = compile(
        &profile(
            Errno,
            vec![],
            vec![
                rule(&["read", "write", "getpid", "not_a_syscall"], Allow, vec![]),
                enosys,
            ],
        ),
        Native::X86_64,
    )
    .unwrap();
    assert_eq!(run(&p, &call("read", &[])), RET_ALLOW);
    assert_eq!(run(&p, &call("write", &[])), RET_ALLOW);
    assert_eq!(run(&p, &call("getpid", &[])), RET_ALLOW);
    assert_eq!(run(&p, &call("mkdir", &[])), EPERM);
    assert_eq!(run(&p, &call("clone3", &[])), RET_ERRNO | 38);
    // Another architecture, or x32 numbers, are not this profile's.
    let mut d = call("read", &[]);
    d.arch = AUDIT_ARCH_I386;
    assert_eq!(run(&p, &d), RET_KILL_PROCESS);
    let mut d = call("read", &[]);
    d.nr |= X32_SYSCALL_BIT;
    assert_eq!(run(&p, &d), RET_KILL_PROCESS);
    // The program survives its file.
    assert_eq!(Program::from_bytes(&p.to_bytes()).unwrap(), p);
    assert!(Program::from_bytes(b"bsf1\0\0\0\0").is_err());
    assert!(Program::from_bytes(&p.to_bytes()[1..]).is_err());
}

#[test]
fn default_errno_ret_and_deny_list_profiles() {
    let mut p = profile(
        Allow,
        vec![],
        vec![rule(&["mkdir", "mkdirat"], Errno, vec![])],
    );
    let prog = compile(&p, Native::X86_64).unwrap();
    assert_eq!(run(&prog, &call("mkdir", &[])), EPERM);
    assert_eq!(run(&prog, &call("mkdirat", &[])), EPERM);
    assert_eq!(run(&prog, &call("getdents64", &[])), RET_ALLOW);
    p.set_default_action(Errno);
    p.set_default_errno_ret(Some(13));
    p.set_syscalls(Some(vec![]));
    let prog = compile(&p, Native::X86_64).unwrap();
    assert_eq!(run(&prog, &call("read", &[])), RET_ERRNO | 13);
}

#[test]
fn argument_conditions_compare_all_64_bits() {
    type Case = (Op, u64, &'static [(u64, bool)]);
    let cases: &[Case] = &[
        (
            Op::ScmpCmpEq,
            8,
            &[(8, true), (9, false), (8 | 1 << 32, false)],
        ),
        (
            Op::ScmpCmpNe,
            40,
            &[(40, false), (2, true), (40 | 1 << 40, true)],
        ),
        (
            Op::ScmpCmpGt,
            1 << 32,
            &[
                (1 << 32, false),
                ((1 << 32) + 1, true),
                (5, false),
                (2 << 32, true),
            ],
        ),
        (
            Op::ScmpCmpGe,
            (1 << 32) + 7,
            &[
                ((1 << 32) + 7, true),
                ((1 << 32) + 6, false),
                (u64::MAX, true),
                (7, false),
            ],
        ),
        (
            Op::ScmpCmpLt,
            (1 << 32) + 7,
            &[
                ((1 << 32) + 7, false),
                ((1 << 32) + 6, true),
                (8, true),
                (2 << 32, false),
            ],
        ),
        (
            Op::ScmpCmpLe,
            100,
            &[(100, true), (101, false), (0, true), (1 << 33, false)],
        ),
    ];
    for &(op, value, checks) in cases {
        let p = compile(
            &profile(
                Errno,
                vec![],
                vec![rule(&["personality"], Allow, vec![arg(0, value, op)])],
            ),
            Native::X86_64,
        )
        .unwrap();
        for &(v, allowed) in checks {
            let got = run(&p, &call("personality", &[v]));
            assert_eq!(
                got == RET_ALLOW,
                allowed,
                "{op:?} {value:#x} on {v:#x}: {got:#x}"
            );
        }
    }
}

#[test]
fn masked_equal_is_the_default_profiles_clone_rule() {
    // clone without namespace flags: (flags & 0x7e020000) == 0.
    let p = compile(
        &profile(
            Errno,
            vec![],
            vec![rule(
                &["clone"],
                Allow,
                vec![arg(0, 0x7e02_0000, Op::ScmpCmpMaskedEq)],
            )],
        ),
        Native::X86_64,
    )
    .unwrap();
    let thread = 0x003d_0f00; // CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|…
    assert_eq!(run(&p, &call("clone", &[thread])), RET_ALLOW);
    assert_eq!(
        run(&p, &call("clone", &[0x1000_0000 | 17])),
        EPERM,
        "CLONE_NEWUSER"
    );
    assert_eq!(
        run(&p, &call("clone", &[0x2000_0000])),
        EPERM,
        "CLONE_NEWPID"
    );
    // valueTwo is what the masked value must equal.
    let a = LinuxSeccompArgBuilder::default()
        .index(1usize)
        .value(0xffu64)
        .value_two(0x12u64)
        .op(Op::ScmpCmpMaskedEq)
        .build()
        .unwrap();
    let p = compile(
        &profile(Errno, vec![], vec![rule(&["ioctl"], Allow, vec![a])]),
        Native::X86_64,
    )
    .unwrap();
    assert_eq!(run(&p, &call("ioctl", &[0, 0x3412])), RET_ALLOW);
    assert_eq!(run(&p, &call("ioctl", &[0, 0x3413])), EPERM);
}

#[test]
fn conditions_of_one_rule_and_repeated_indexes_or() {
    // Two args of different indexes: both must hold.
    let p = compile(
        &profile(
            Errno,
            vec![],
            vec![rule(
                &["kill"],
                Allow,
                vec![arg(0, 1, Op::ScmpCmpEq), arg(1, 15, Op::ScmpCmpEq)],
            )],
        ),
        Native::X86_64,
    )
    .unwrap();
    assert_eq!(run(&p, &call("kill", &[1, 15])), RET_ALLOW);
    assert_eq!(run(&p, &call("kill", &[1, 9])), EPERM);
    assert_eq!(run(&p, &call("kill", &[2, 15])), EPERM);
    // The same index twice: either (runc's rule).
    let p = compile(
        &profile(
            Errno,
            vec![],
            vec![rule(
                &["personality"],
                Allow,
                vec![arg(0, 0, Op::ScmpCmpEq), arg(0, 8, Op::ScmpCmpEq)],
            )],
        ),
        Native::X86_64,
    )
    .unwrap();
    assert_eq!(run(&p, &call("personality", &[0])), RET_ALLOW);
    assert_eq!(run(&p, &call("personality", &[8])), RET_ALLOW);
    assert_eq!(run(&p, &call("personality", &[9])), EPERM);
}

#[test]
fn conditional_rules_come_before_the_unconditional_one() {
    // socket is allowed except for AF_VSOCK, whichever order they come in.
    let deny_vsock = rule(&["socket"], Errno, vec![arg(0, 40, Op::ScmpCmpEq)]);
    let allow = rule(&["socket"], Allow, vec![]);
    for rules in [
        vec![deny_vsock.clone(), allow.clone()],
        vec![allow, deny_vsock],
    ] {
        let p = compile(&profile(Errno, vec![], rules), Native::X86_64).unwrap();
        assert_eq!(run(&p, &call("socket", &[2, 1, 0])), RET_ALLOW);
        assert_eq!(run(&p, &call("socket", &[40, 1, 0])), EPERM);
    }
}

#[test]
fn i386_and_x32_get_their_own_numbers_and_32_bit_arguments() {
    let p = compile(
        &profile(
            Errno,
            vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
            vec![
                rule(&["read", "rt_sigaction"], Allow, vec![]),
                rule(
                    &["personality"],
                    Allow,
                    vec![arg(0, 0xffff_ffff, Op::ScmpCmpEq)],
                ),
            ],
        ),
        Native::X86_64,
    )
    .unwrap();
    let i386 = |nr: u32, a0: u64| Data {
        nr,
        arch: AUDIT_ARCH_I386,
        args: [a0, 0, 0, 0, 0, 0],
    };
    assert_eq!(run(&p, &i386(3, 0)), RET_ALLOW, "i386 read");
    assert_eq!(run(&p, &i386(174, 0)), RET_ALLOW, "i386 rt_sigaction");
    assert_eq!(run(&p, &i386(0, 0)), EPERM, "i386 restart_syscall");
    assert_eq!(run(&p, &i386(136, 0xffff_ffff)), RET_ALLOW);
    assert_eq!(run(&p, &i386(136, 0xffff_fffe)), EPERM);
    let x32 = |nr: u32| Data {
        nr: nr | X32_SYSCALL_BIT,
        arch: AUDIT_ARCH_X86_64,
        args: [0; 6],
    };
    assert_eq!(run(&p, &x32(0)), RET_ALLOW, "x32 read");
    assert_eq!(run(&p, &x32(512)), RET_ALLOW, "x32 rt_sigaction");
    assert_eq!(
        run(&p, &x32(13)),
        EPERM,
        "x86_64's rt_sigaction number is not x32's"
    );
    assert_eq!(run(&p, &call("rt_sigaction", &[])), RET_ALLOW);
    let mut d = call("read", &[]);
    d.arch = AUDIT_ARCH_AARCH64;
    assert_eq!(run(&p, &d), RET_KILL_PROCESS);
}

#[test]
fn aarch64_has_its_numbers() {
    let p = compile(
        &profile(Errno, vec![], vec![rule(&["read", "mkdir"], Allow, vec![])]),
        Native::Aarch64,
    )
    .unwrap();
    let d = |nr| Data {
        nr,
        arch: AUDIT_ARCH_AARCH64,
        args: [0; 6],
    };
    assert_eq!(run(&p, &d(63)), RET_ALLOW, "read");
    assert_eq!(run(&p, &d(34)), EPERM, "mkdirat: aarch64 has no mkdir");
    let mut x = d(63);
    x.arch = AUDIT_ARCH_X86_64;
    assert_eq!(run(&p, &x), RET_KILL_PROCESS);
}

#[test]
fn notify_and_bad_indexes_are_refused() {
    let p = profile(
        Errno,
        vec![],
        vec![rule(&["read"], LinuxSeccompAction::ScmpActNotify, vec![])],
    );
    assert!(matches!(
        compile(&p, Native::X86_64),
        Err(CompileError::Unsupported(_))
    ));
    let p = profile(
        Errno,
        vec![],
        vec![rule(&["read"], Allow, vec![arg(6, 0, Op::ScmpCmpEq)])],
    );
    assert!(matches!(
        compile(&p, Native::X86_64),
        Err(CompileError::ArgIndex { index: 6, .. })
    ));
}

#[test]
fn long_programs_use_trampolines() {
    // Every syscall conditional: blocks far longer than a jump reaches.
    let names: Vec<&str> = syscalls::SYSCALLS.iter().map(|e| e.0).take(150).collect();
    let rules = names
        .iter()
        .map(|n| {
            rule(
                &[n],
                Allow,
                vec![arg(2, 7, Op::ScmpCmpGe), arg(3, 1 << 40, Op::ScmpCmpLt)],
            )
        })
        .collect();
    let p = compile(
        &profile(Errno, vec![Arch::ScmpArchX86], rules),
        Native::X86_64,
    )
    .unwrap();
    assert!(p.insns.len() > 1000, "{}", p.insns.len());
    assert!(
        p.insns.iter().any(|i| i.code == BPF_JMP | BPF_JA),
        "no trampoline"
    );
    for n in &names {
        let Some(nr) = Section::X86_64.number(n) else {
            continue;
        };
        let d = |a2, a3| Data {
            nr,
            arch: AUDIT_ARCH_X86_64,
            args: [0, 0, a2, a3, 0, 0],
        };
        assert_eq!(run(&p, &d(7, 5)), RET_ALLOW, "{n}");
        assert_eq!(run(&p, &d(6, 5)), EPERM, "{n}");
        assert_eq!(run(&p, &d(9, 1 << 40)), EPERM, "{n}");
    }
    // Too many for the kernel.
    let names: Vec<&str> = syscalls::SYSCALLS.iter().map(|e| e.0).collect();
    let rules = names
        .iter()
        .map(|n| {
            rule(
                &[n],
                Allow,
                vec![
                    arg(2, 7, Op::ScmpCmpGe),
                    arg(3, 1 << 40, Op::ScmpCmpLt),
                    arg(4, 1, Op::ScmpCmpNe),
                ],
            )
        })
        .collect();
    let p = profile(Errno, vec![Arch::ScmpArchX86, Arch::ScmpArchX32], rules);
    assert!(matches!(
        compile(&p, Native::X86_64),
        Err(CompileError::TooLong(_))
    ));
}

#[test]
fn the_syscall_table_is_sorted_and_sane() {
    let t = syscalls::SYSCALLS;
    assert!(t.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(Section::X86_64.number("read"), Some(0));
    assert_eq!(Section::X86_64.number("clone3"), Some(435));
    assert_eq!(Section::I386.number("socketcall"), Some(102));
    assert_eq!(Section::X32.number("read"), Some(X32_SYSCALL_BIT));
    assert_eq!(Section::Aarch64.number("open"), None);
    if cfg!(target_arch = "x86_64") {
        for (name, n) in [
            ("read", libc::SYS_read),
            ("mkdir", libc::SYS_mkdir),
            ("unshare", libc::SYS_unshare),
            ("clone3", libc::SYS_clone3),
            ("seccomp", libc::SYS_seccomp),
            ("fchmodat2", libc::SYS_fchmodat2),
        ] {
            assert_eq!(Section::X86_64.number(name), Some(n as u32), "{name}");
        }
    }
}
