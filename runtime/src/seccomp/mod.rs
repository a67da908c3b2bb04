//! Seccomp filters: an OCI `LinuxSeccomp` compiled to the classic BPF
//! program that seccomp(2) loads, laid out as libseccomp lays out runc's.
//!
//! berthd compiles ([`compile`]) when it writes a bundle and stores the
//! program next to `config.json` ([`Program::to_bytes`]); berth-shim only
//! reads it back ([`Program::from_bytes`]) and loads it in the container
//! process, so the shim carries no compiler and no syscall table.
//!
//! The program, for an x86_64 node whose profile lists x86 and x32 too:
//!
//! ```text
//!     ld  arch
//!     jeq AUDIT_ARCH_X86_64 → x86_64     (else)
//!     jeq AUDIT_ARCH_I386   → i386       (else)
//!     ret KILL_PROCESS                    an architecture the profile lacks
//! x86_64: ld nr
//!     jge __X32_SYSCALL_BIT → x32        (KILL_PROCESS without x32)
//!     one block per syscall, ascending; runs of consecutive numbers with
//!     the same unconditional action share one range check
//!     ret <default action>
//! i386:   … the same with i386's numbers and 32-bit arguments
//! x32:    … with x32's numbers (32-bit arguments, as libseccomp has them)
//! ```
//!
//! A syscall's block tries its rules that have argument conditions in the
//! profile's order (conditions of one rule are ANDed; the first rule that
//! matches decides), then its unconditional rule if it has one, then the
//! default action. As runc does, argument conditions that share an index in
//! one entry are not ANDed but each becomes a rule of its own (ORed).
//! Names that a section's architecture lacks are skipped, as runc skips
//! names libseccomp cannot resolve: profiles list names of every
//! architecture.

pub mod syscalls;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator,
};
use std::collections::BTreeMap;

/// One BPF instruction (`struct sock_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// A compiled filter and the `seccomp(2)` flags to load it with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    /// `SECCOMP_FILTER_FLAG_*`.
    pub flags: u32,
    pub insns: Vec<Insn>,
}

/// The kernel's limit on a filter's length (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

const MAGIC: &[u8; 4] = b"bsf1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("action {0} is not supported (berth runs no seccomp agent)")]
    Unsupported(String),
    #[error("syscall {name}: argument index {index} is out of range (0-5)")]
    ArgIndex { name: String, index: usize },
    #[error("the filter needs {0} BPF instructions, more than the kernel's {MAX_INSNS}")]
    TooLong(usize),
    #[error("seccomp filters are not supported on this node's architecture")]
    Arch,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a compiled seccomp filter: {0}")]
pub struct ProgramError(&'static str);

impl Program {
    /// `bsf1`, the flags, then the instructions; native byte order (the
    /// file never leaves the node).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 8 * self.insns.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.flags.to_ne_bytes());
        for i in &self.insns {
            out.extend_from_slice(&i.code.to_ne_bytes());
            out.push(i.jt);
            out.push(i.jf);
            out.extend_from_slice(&i.k.to_ne_bytes());
        }
        out
    }

    pub fn from_bytes(b: &[u8]) -> Result<Program, ProgramError> {
        let (head, body) = b.split_at_checked(8).ok_or(ProgramError("too short"))?;
        if &head[..4] != MAGIC {
            return Err(ProgramError("bad magic"));
        }
        if body.is_empty() || body.len() % 8 != 0 || body.len() / 8 > MAX_INSNS {
            return Err(ProgramError("bad length"));
        }
        let flags = u32::from_ne_bytes([head[4], head[5], head[6], head[7]]);
        let insns = body
            .chunks_exact(8)
            .map(|c| Insn {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        Ok(Program { flags, insns })
    }
}

// BPF opcodes (linux/bpf_common.h, linux/filter.h).
const BPF_LD: u16 = 0x00;
const BPF_ALU: u16 = 0x04;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_W: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
const BPF_K: u16 = 0x00;
const BPF_AND: u16 = 0x50;
const BPF_JA: u16 = 0x00;
const BPF_JEQ: u16 = 0x10;
const BPF_JGT: u16 = 0x20;
const BPF_JGE: u16 = 0x30;

// struct seccomp_data.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

// Return values (linux/seccomp.h).
pub const RET_KILL_PROCESS: u32 = 0x8000_0000;
pub const RET_KILL_THREAD: u32 = 0x0000_0000;
pub const RET_TRAP: u32 = 0x0003_0000;
pub const RET_ERRNO: u32 = 0x0005_0000;
pub const RET_TRACE: u32 = 0x7ff0_0000;
pub const RET_LOG: u32 = 0x7ffc_0000;
pub const RET_ALLOW: u32 = 0x7fff_0000;
const RET_DATA: u32 = 0x0000_ffff;

pub const FLAG_LOG: u32 = 1 << 1;
pub const FLAG_SPEC_ALLOW: u32 = 1 << 2;

pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
pub const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// What a process of an architecture the filter does not cover gets
/// (libseccomp's default kills too).
const RET_BAD_ARCH: u32 = RET_KILL_PROCESS;

/// The node's own architecture, as far as berth can filter it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Native {
    X86_64,
    Aarch64,
}

impl Native {
    /// This build's architecture; None where berth has no syscall table.
    pub fn host() -> Option<Native> {
        if cfg!(target_arch = "x86_64") {
            Some(Native::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Native::Aarch64)
        } else {
            None
        }
    }

    /// Go's name for it, as profiles' `includes.arches` spell it.
    pub fn go_name(self) -> &'static str {
        match self {
            Native::X86_64 => "amd64",
            Native::Aarch64 => "arm64",
        }
    }

    /// libseccomp's name for it (`archMap` entries).
    pub fn scmp_arch(self) -> Arch {
        match self {
            Native::X86_64 => Arch::ScmpArchX86_64,
            Native::Aarch64 => Arch::ScmpArchAarch64,
        }
    }
}

/// One architecture's part of the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    X86_64,
    I386,
    X32,
    Aarch64,
}

impl Section {
    fn number(self, name: &str) -> Option<u32> {
        let i = syscalls::SYSCALLS
            .binary_search_by(|e| e.0.cmp(name))
            .ok()?;
        let (_, x86_64, i386, x32, aarch64) = syscalls::SYSCALLS[i];
        let n = match self {
            Section::X86_64 => x86_64,
            Section::I386 => i386,
            Section::X32 => x32,
            Section::Aarch64 => aarch64,
        };
        if n == syscalls::N {
            return None;
        }
        Some(match self {
            Section::X32 => u32::from(n) | X32_SYSCALL_BIT,
            _ => u32::from(n),
        })
    }

    /// Arguments compared on their low 32 bits only (libseccomp's
    /// 32-bit ABIs).
    fn args_32(self) -> bool {
        matches!(self, Section::I386 | Section::X32)
    }
}

/// A rule of one syscall: return `ret` when every condition holds.
#[derive(Debug)]
struct Rule {
    ret: u32,
    conds: Vec<LinuxSeccompArg>,
}

#[derive(Debug, Default)]
struct SyscallRules {
    conditional: Vec<Rule>,
    unconditional: Option<u32>,
}

/// The return value of an action.
fn action_ret(action: LinuxSeccompAction, errno: Option<u32>) -> Result<u32, CompileError> {
    let data = errno.unwrap_or(libc::EPERM as u32) & RET_DATA;
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => RET_KILL_THREAD,
        LinuxSeccompAction::ScmpActKillProcess => RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => RET_TRAP,
        LinuxSeccompAction::ScmpActErrno => RET_ERRNO | data,
        LinuxSeccompAction::ScmpActTrace => RET_TRACE | data,
        LinuxSeccompAction::ScmpActLog => RET_LOG,
        LinuxSeccompAction::ScmpActAllow => RET_ALLOW,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(CompileError::Unsupported("SCMP_ACT_NOTIFY".into()));
        }
    })
}

/// Each syscall's rules in one section.
fn section_rules(
    profile: &LinuxSeccomp,
    section: Section,
) -> Result<BTreeMap<u32, SyscallRules>, CompileError> {
    let mut map: BTreeMap<u32, SyscallRules> = BTreeMap::new();
    for entry in profile.syscalls().iter().flatten() {
        let ret = action_ret(entry.action(), entry.errno_ret())?;
        let args = entry.args().as_deref().unwrap_or(&[]);
        for a in args {
            if a.index() > 5 {
                return Err(CompileError::ArgIndex {
                    name: entry.names().join(","),
                    index: a.index(),
                });
            }
        }
        // runc's matchCall: conditions on an index that appears once are
        // ANDed into one rule; each one on a repeated index is a rule.
        let repeated =
            |a: &LinuxSeccompArg| args.iter().filter(|b| b.index() == a.index()).count() > 1;
        let mut rules: Vec<Vec<LinuxSeccompArg>> = Vec::new();
        let shared: Vec<LinuxSeccompArg> = args.iter().filter(|a| !repeated(a)).copied().collect();
        if !shared.is_empty() {
            rules.push(shared);
        }
        rules.extend(args.iter().filter(|a| repeated(a)).map(|a| vec![*a]));
        for name in entry.names() {
            let Some(nr) = section.number(name) else {
                continue;
            };
            let r = map.entry(nr).or_default();
            if rules.is_empty() {
                r.unconditional.get_or_insert(ret);
            }
            for conds in &rules {
                r.conditional.push(Rule {
                    ret,
                    conds: conds.clone(),
                });
            }
        }
    }
    Ok(map)
}

/// A program built back to front, so that every jump's target is already
/// placed when the jump is written. Labels are indexes into `rev`.
#[derive(Default)]
struct Rev {
    rev: Vec<Insn>,
}

type Label = usize;

/// Conditional jumps reach at most 255 ahead; a farther target gets a
/// `ja` trampoline. Two trampolines may be placed for one jump, so a
/// target counts as near up to 253.
const NEAR: usize = 253;

impl Rev {
    fn push(&mut self, code: u16, jt: u8, jf: u8, k: u32) -> Label {
        self.rev.push(Insn { code, jt, jf, k });
        self.rev.len() - 1
    }

    /// The offset from the instruction about to be placed to `target`.
    fn offset(&self, target: Label) -> usize {
        self.rev.len() - 1 - target
    }

    fn ret(&mut self, k: u32) -> Label {
        self.push(BPF_RET | BPF_K, 0, 0, k)
    }

    fn load(&mut self, off: u32) -> Label {
        self.push(BPF_LD | BPF_W | BPF_ABS, 0, 0, off)
    }

    fn and(&mut self, k: u32) -> Label {
        self.push(BPF_ALU | BPF_AND | BPF_K, 0, 0, k)
    }

    fn ja(&mut self, target: Label) -> Label {
        let off = self.offset(target) as u32;
        self.push(BPF_JMP | BPF_JA, 0, 0, off)
    }

    /// `if A <op> k goto t else goto f`.
    fn jump(&mut self, op: u16, k: u32, t: Label, f: Label) -> Label {
        let t = if self.offset(t) > NEAR { self.ja(t) } else { t };
        let f = if self.offset(f) > NEAR { self.ja(f) } else { f };
        let (jt, jf) = (self.offset(t) as u8, self.offset(f) as u8);
        self.push(BPF_JMP | op | BPF_K, jt, jf, k)
    }

    /// One argument condition: on to `ok` when it holds, else to `fail`.
    /// 64-bit arguments test the high word first, then the low one.
    fn condition(&mut self, a: &LinuxSeccompArg, args_32: bool, ok: Label, fail: Label) -> Label {
        use LinuxSeccompOperator as Op;
        let lo_off = OFF_ARGS + 8 * a.index() as u32;
        let split = |v: u64| ((v >> 32) as u32, v as u32);
        // MASKED_EQ: value is the mask, valueTwo what the masked arg equals.
        let (vhi, vlo) = split(a.value());
        let (dhi, dlo) = split(a.value_two().unwrap_or(0));
        match a.op() {
            Op::ScmpCmpEq => self.jump(BPF_JEQ, vlo, ok, fail),
            Op::ScmpCmpNe => self.jump(BPF_JEQ, vlo, fail, ok),
            Op::ScmpCmpMaskedEq => {
                self.jump(BPF_JEQ, dlo, ok, fail);
                self.and(vlo)
            }
            Op::ScmpCmpGt => self.jump(BPF_JGT, vlo, ok, fail),
            Op::ScmpCmpGe => self.jump(BPF_JGE, vlo, ok, fail),
            Op::ScmpCmpLt => self.jump(BPF_JGE, vlo, fail, ok),
            Op::ScmpCmpLe => self.jump(BPF_JGT, vlo, fail, ok),
        };
        let low = self.load(lo_off);
        if args_32 {
            return low;
        }
        match a.op() {
            Op::ScmpCmpEq => self.jump(BPF_JEQ, vhi, low, fail),
            Op::ScmpCmpNe => self.jump(BPF_JEQ, vhi, low, ok),
            Op::ScmpCmpMaskedEq => {
                self.jump(BPF_JEQ, dhi, low, fail);
                self.and(vhi)
            }
            // Above: holds (Gt, Ge) or fails (Lt, Le); equal: the low word
            // decides; below: the opposite.
            Op::ScmpCmpGt | Op::ScmpCmpGe => {
                let eq = self.jump(BPF_JEQ, vhi, low, fail);
                self.jump(BPF_JGT, vhi, ok, eq)
            }
            Op::ScmpCmpLt | Op::ScmpCmpLe => {
                let eq = self.jump(BPF_JEQ, vhi, low, ok);
                self.jump(BPF_JGT, vhi, fail, eq)
            }
        };
        self.load(lo_off + 4)
    }

    fn section(
        &mut self,
        section: Section,
        rules: &BTreeMap<u32, SyscallRules>,
        default: u32,
        x32: Option<Label>,
    ) -> Label {
        let mut next = self.ret(default);
        // Runs of consecutive numbers with one unconditional action.
        enum Group<'a> {
            Range(u32, u32, u32),
            Rules(u32, &'a SyscallRules),
        }
        let mut groups: Vec<Group<'_>> = Vec::new();
        for (&nr, r) in rules {
            match (r.conditional.is_empty(), r.unconditional, groups.last_mut()) {
                (true, Some(ret), Some(Group::Range(_, hi, gret)))
                    if *hi + 1 == nr && *gret == ret =>
                {
                    *hi = nr;
                }
                (true, Some(ret), _) => groups.push(Group::Range(nr, nr, ret)),
                _ => groups.push(Group::Rules(nr, r)),
            }
        }
        for g in groups.iter().rev() {
            match *g {
                Group::Range(lo, hi, ret) if lo == hi => {
                    let r = self.ret(ret);
                    next = self.jump(BPF_JEQ, lo, r, next);
                }
                Group::Range(lo, hi, ret) => {
                    let r = self.ret(ret);
                    let below = self.jump(BPF_JGT, hi, next, r);
                    next = self.jump(BPF_JGE, lo, below, next);
                }
                Group::Rules(nr, r) => {
                    let mut fail = self.ret(r.unconditional.unwrap_or(default));
                    for rule in r.conditional.iter().rev() {
                        let mut ok = self.ret(rule.ret);
                        for c in rule.conds.iter().rev() {
                            ok = self.condition(c, section.args_32(), ok, fail);
                        }
                        fail = ok;
                    }
                    next = self.jump(BPF_JEQ, nr, fail, next);
                }
            }
        }
        if section == Section::X86_64 {
            // x32 shares x86_64's audit arch; its numbers carry a bit.
            let x32 = match x32 {
                Some(l) => l,
                None => self.ret(RET_BAD_ARCH),
            };
            self.jump(BPF_JGE, X32_SYSCALL_BIT, x32, next);
        }
        self.load(OFF_NR)
    }
}

/// Compiles `profile` for a node of architecture `native`. The native
/// architecture is always covered; on x86_64 so are x86 and x32 when the
/// profile lists them; others are not (their processes are killed).
pub fn compile(profile: &LinuxSeccomp, native: Native) -> Result<Program, CompileError> {
    let listed = |a: Arch| profile.architectures().iter().flatten().any(|x| *x == a);
    let default = action_ret(profile.default_action(), profile.default_errno_ret())?;
    let mut flags = 0;
    for f in profile.flags().iter().flatten() {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => FLAG_SPEC_ALLOW,
            // One thread; no listener.
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync
            | LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 0,
        };
    }
    let mut b = Rev::default();
    match native {
        Native::X86_64 => {
            let x32 = if listed(Arch::ScmpArchX32) {
                let r = section_rules(profile, Section::X32)?;
                Some(b.section(Section::X32, &r, default, None))
            } else {
                None
            };
            let i386 = if listed(Arch::ScmpArchX86) {
                let r = section_rules(profile, Section::I386)?;
                Some(b.section(Section::I386, &r, default, None))
            } else {
                None
            };
            let r = section_rules(profile, Section::X86_64)?;
            let x86_64 = b.section(Section::X86_64, &r, default, x32);
            let bad = b.ret(RET_BAD_ARCH);
            let next = match i386 {
                Some(l) => b.jump(BPF_JEQ, AUDIT_ARCH_I386, l, bad),
                None => bad,
            };
            b.jump(BPF_JEQ, AUDIT_ARCH_X86_64, x86_64, next)
        }
        Native::Aarch64 => {
            let r = section_rules(profile, Section::Aarch64)?;
            let s = b.section(Section::Aarch64, &r, default, None);
            let bad = b.ret(RET_BAD_ARCH);
            b.jump(BPF_JEQ, AUDIT_ARCH_AARCH64, s, bad)
        }
    };
    b.load(OFF_ARCH);
    if b.rev.len() > MAX_INSNS {
        return Err(CompileError::TooLong(b.rev.len()));
    }
    b.rev.reverse();
    Ok(Program {
        flags,
        insns: b.rev,
    })
}

#[cfg(test)]
pub(crate) mod tests;
