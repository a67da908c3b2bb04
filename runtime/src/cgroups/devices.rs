//! cgroup v2 device rules: v2 has no `devices.allow`/`devices.deny`; the
//! kernel asks a `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the
//! cgroup instead (Linux 4.15+), on every open and mknod of a device node
//! by a process in the cgroup or below it. This module turns the OCI
//! `linux.resources.devices` rules into that program; [`super::bpf`] loads
//! and attaches it.
//!
//! The rules mean what they mean on v1, where the kernel itself keeps them,
//! and what they mean to runc and youki on v2: first they are run through
//! an emulation of the v1 devices controller ([`DeviceRules`], runc's
//! `devices_emulator.go`), which leaves a default (allow or deny) and
//! exceptions that all say the opposite; the program then tests each
//! exception and returns the default when none matches. For rules in order
//! of the shape berth writes (deny all, then allows) that is exactly "the
//! last rule that matches decides"; where v1 and a plain last-match reading
//! would differ, v1 wins, as with runc: allows of one device add up (`r`
//! from one rule and `w` from another allow an `O_RDWR` open), and a deny
//! that would punch a hole into a wildcard allow (`c *:* rwm` then deny
//! `c 1:3`) is refused as v1 would silently ignore it. A list that does not
//! start from `a` starts from "deny all", as runc's does.
//!
//! The instructions are encoded here (a dozen opcodes, see [`Insn`]) rather
//! than with `aya` or libbpf: the program is straight-line compares with no
//! maps, helpers or relocations, and a loader crate would add far more
//! code, build time (libbpf-sys builds C) and dependencies than the ~100
//! lines it replaces.

use std::collections::BTreeMap;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::CgroupError;

// struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }:
// access_type is (access << 16) | type.
const DEV_BLOCK: i32 = 1; // BPF_DEVCG_DEV_BLOCK
const DEV_CHAR: i32 = 2; // BPF_DEVCG_DEV_CHAR
const ACC_MKNOD: u8 = 1; // BPF_DEVCG_ACC_MKNOD
const ACC_READ: u8 = 2; // BPF_DEVCG_ACC_READ
const ACC_WRITE: u8 = 4; // BPF_DEVCG_ACC_WRITE
const ACC_ALL: u8 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcodes: class | operation or mode | source or size (linux/bpf_common.h,
// linux/bpf.h); BPF_W and BPF_K are 0.
const LDX_MEM_W: u8 = 0x61; // BPF_LDX 0x01 | BPF_MEM 0x60 | BPF_W
const ALU32_AND_K: u8 = 0x54; // BPF_ALU 0x04 | BPF_AND 0x50 | BPF_K
const ALU32_RSH_K: u8 = 0x74; // BPF_ALU 0x04 | BPF_RSH 0x70 | BPF_K
const ALU32_MOV_K: u8 = 0xb4; // BPF_ALU 0x04 | BPF_MOV 0xb0 | BPF_K
const ALU32_MOV_X: u8 = 0xbc; // BPF_ALU 0x04 | BPF_MOV 0xb0 | BPF_X 0x08
const JMP_JNE_K: u8 = 0x55; // BPF_JMP 0x05 | BPF_JNE 0x50 | BPF_K
const JMP_JNE_X: u8 = 0x5d; // BPF_JMP 0x05 | BPF_JNE 0x50 | BPF_X 0x08
const JMP_EXIT: u8 = 0x95; // BPF_JMP 0x05 | BPF_EXIT 0x90

impl Insn {
    fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        Insn {
            code,
            dst,
            src,
            off,
            imm,
        }
    }

    /// `dst = *(u32 *)(src + off)`
    fn ldx_w(dst: u8, src: u8, off: i16) -> Self {
        Self::new(LDX_MEM_W, dst, src, off, 0)
    }
    /// `wdst &= imm`
    fn and32(dst: u8, imm: i32) -> Self {
        Self::new(ALU32_AND_K, dst, 0, 0, imm)
    }
    /// `wdst >>= imm`
    fn rsh32(dst: u8, imm: i32) -> Self {
        Self::new(ALU32_RSH_K, dst, 0, 0, imm)
    }
    /// `wdst = imm`
    fn mov32(dst: u8, imm: i32) -> Self {
        Self::new(ALU32_MOV_K, dst, 0, 0, imm)
    }
    /// `wdst = wsrc`
    fn mov32_reg(dst: u8, src: u8) -> Self {
        Self::new(ALU32_MOV_X, dst, src, 0, 0)
    }
    /// `if dst != imm goto +off`
    fn jne(dst: u8, imm: i32, off: i16) -> Self {
        Self::new(JMP_JNE_K, dst, 0, off, imm)
    }
    /// `if dst != src goto +off`
    fn jne_reg(dst: u8, src: u8, off: i16) -> Self {
        Self::new(JMP_JNE_X, dst, src, off, 0)
    }
    fn exit() -> Self {
        Self::new(JMP_EXIT, 0, 0, 0, 0)
    }

    /// The kernel's layout: code, the two 4-bit registers (dst first in the
    /// bitfield: the low nibble on little-endian, the high one on
    /// big-endian), then off and imm in the machine's byte order.
    pub fn to_bytes(self) -> [u8; 8] {
        let regs = if cfg!(target_endian = "little") {
            (self.dst & 0xf) | (self.src << 4)
        } else {
            (self.dst << 4) | (self.src & 0xf)
        };
        let off = self.off.to_ne_bytes();
        let imm = self.imm.to_ne_bytes();
        [
            self.code, regs, off[0], off[1], imm[0], imm[1], imm[2], imm[3],
        ]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Block,
    Char,
}

/// What an exception matches: a device type, and a major and minor that
/// are None for `*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Meta {
    kind: Kind,
    major: Option<u32>,
    minor: Option<u32>,
}

/// The state of a v1 devices cgroup after a list of rules: a default and
/// the exceptions to it, with their access bits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRules {
    default_allow: bool,
    exceptions: BTreeMap<Meta, u8>,
}

fn invalid(rule: &LinuxDeviceCgroup, why: impl std::fmt::Display) -> CgroupError {
    CgroupError::InvalidResources(format!(
        "device rule \"{} {rule}\": {why}",
        if rule.allow() { "allow" } else { "deny" }
    ))
}

fn access_bits(rule: &LinuxDeviceCgroup) -> Result<u8, CgroupError> {
    let mut bits = 0;
    for c in rule.access().as_deref().unwrap_or_default().chars() {
        bits |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => return Err(invalid(rule, format_args!("unknown access {c:?}"))),
        };
    }
    Ok(bits)
}

/// A major or minor: negative or unset is `*`; the kernel's are 32-bit.
fn number(rule: &LinuxDeviceCgroup, n: Option<i64>) -> Result<Option<u32>, CgroupError> {
    match n {
        None => Ok(None),
        Some(n) if n < 0 => Ok(None),
        Some(n) => u32::try_from(n)
            .map(Some)
            .map_err(|_| invalid(rule, format_args!("{n} is not a device number"))),
    }
}

impl DeviceRules {
    /// Run OCI rules, in order, through the v1 semantics.
    pub fn from_oci(rules: &[LinuxDeviceCgroup]) -> Result<Self, CgroupError> {
        let mut state = DeviceRules {
            default_allow: false,
            exceptions: BTreeMap::new(),
        };
        for rule in rules {
            state.apply(rule)?;
        }
        Ok(state)
    }

    fn apply(&mut self, rule: &LinuxDeviceCgroup) -> Result<(), CgroupError> {
        let kind = match rule.typ().unwrap_or_default() {
            // `a` (or no type) resets, whatever the numbers and access say,
            // as the v1 kernel reads it.
            LinuxDeviceType::A => {
                self.default_allow = rule.allow();
                self.exceptions.clear();
                return Ok(());
            }
            LinuxDeviceType::B => Kind::Block,
            LinuxDeviceType::C => Kind::Char,
            t @ (LinuxDeviceType::U | LinuxDeviceType::P) => {
                return Err(invalid(
                    rule,
                    format_args!("type {} has no device cgroup", t.as_str()),
                ));
            }
        };
        let meta = Meta {
            kind,
            major: number(rule, rule.major())?,
            minor: number(rule, rule.minor())?,
        };
        let bits = access_bits(rule)?;
        if bits == 0 {
            return Ok(());
        }
        if rule.allow() != self.default_allow {
            *self.exceptions.entry(meta).or_insert(0) |= bits;
            return Ok(());
        }
        // Taking access away from an exception: v1 only ever subtracts from
        // the exception of exactly these numbers, so one that a wildcard
        // exception grants too would stay granted. Refused (as runc does)
        // rather than silently not applied.
        for wider in [
            Meta {
                major: None,
                ..meta
            },
            Meta {
                minor: None,
                ..meta
            },
            Meta {
                major: None,
                minor: None,
                ..meta
            },
        ] {
            if wider != meta
                && let Some(w) = self.exceptions.get(&wider)
                && w & bits != 0
            {
                return Err(invalid(
                    rule,
                    "would punch a hole in a wider rule, which cgroup v1 cannot express",
                ));
            }
        }
        if let Some(have) = self.exceptions.get_mut(&meta) {
            *have &= !bits;
            if *have == 0 {
                self.exceptions.remove(&meta);
            }
        }
        Ok(())
    }

    /// Every device, every access: nothing for a program to enforce.
    pub fn allows_everything(&self) -> bool {
        self.default_allow && self.exceptions.is_empty()
    }

    /// The program: load the context into r2 (type), r3 (access), r4
    /// (major), r5 (minor); one block per exception that jumps to the next
    /// block at the first field that differs and otherwise returns the
    /// exception's verdict; then the default. r1 (the context pointer) is
    /// scratch once read.
    pub fn program(&self) -> Vec<Insn> {
        let mut p = vec![
            Insn::ldx_w(2, 1, 0),
            Insn::and32(2, 0xffff),
            Insn::ldx_w(3, 1, 0),
            Insn::rsh32(3, 16),
            Insn::ldx_w(4, 1, 4),
            Insn::ldx_w(5, 1, 8),
        ];
        let verdict = i32::from(!self.default_allow);
        for (meta, &bits) in &self.exceptions {
            // A number the kernel cannot give a device (majors have 12
            // bits, minors 20) matches nothing: no block. Every other fits
            // the sign-extended 32-bit immediate of a 64-bit compare.
            let (Ok(major), Ok(minor)) = (
                meta.major.map(i32::try_from).transpose(),
                meta.minor.map(i32::try_from).transpose(),
            ) else {
                continue;
            };
            // Each test: the jump and whatever comes before it in the test.
            let mut tests: Vec<Vec<Insn>> = Vec::new();
            let kind = match meta.kind {
                Kind::Block => DEV_BLOCK,
                Kind::Char => DEV_CHAR,
            };
            tests.push(vec![Insn::jne(2, kind, 0)]);
            if bits != ACC_ALL {
                // The access asked for must be within the exception's:
                // (access & bits) == access.
                tests.push(vec![
                    Insn::mov32_reg(1, 3),
                    Insn::and32(1, i32::from(bits)),
                    Insn::jne_reg(1, 3, 0),
                ]);
            }
            if let Some(major) = major {
                tests.push(vec![Insn::jne(4, major, 0)]);
            }
            if let Some(minor) = minor {
                tests.push(vec![Insn::jne(5, minor, 0)]);
            }
            let mut block: Vec<Insn> = tests.into_iter().flatten().collect();
            block.push(Insn::mov32(0, verdict));
            block.push(Insn::exit());
            // Every jump lands just past the block's exit.
            let len = block.len();
            for (i, insn) in block.iter_mut().enumerate() {
                if insn.code == JMP_JNE_K || insn.code == JMP_JNE_X {
                    // A block has at most 9 instructions.
                    insn.off = (len - 1 - i) as i16;
                }
            }
            p.extend(block);
        }
        p.push(Insn::mov32(0, i32::from(self.default_allow)));
        p.push(Insn::exit());
        p
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    pub(crate) fn rule(
        allow: bool,
        typ: char,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> LinuxDeviceCgroup {
        let typ = match typ {
            'a' => LinuxDeviceType::A,
            'b' => LinuxDeviceType::B,
            'c' => LinuxDeviceType::C,
            'u' => LinuxDeviceType::U,
            _ => LinuxDeviceType::P,
        };
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .typ(typ)
            .access(access);
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build().unwrap()
    }

    /// berth's rules for a container (spec::default_device_rules) plus
    /// the CRI devices given.
    pub(crate) fn container_rules(extra: &[LinuxDeviceCgroup]) -> Vec<LinuxDeviceCgroup> {
        let mut rules = crate::spec::default_device_rules().unwrap();
        rules.extend_from_slice(extra);
        rules
    }

    /// Runs a program the way the kernel would, for the instructions this
    /// module emits (anything else fails the test): the verdict for a
    /// device access.
    pub(crate) fn run(prog: &[Insn], kind: i32, access: u8, major: u32, minor: u32) -> u64 {
        let ctx: [u32; 3] = [(u32::from(access) << 16) | kind as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        let mut r1_is_ctx = true;
        loop {
            let i = prog[pc];
            let (d, s) = (usize::from(i.dst), usize::from(i.src));
            pc += 1;
            match i.code {
                LDX_MEM_W => {
                    assert!(s == 1 && r1_is_ctx, "loads only from the context");
                    assert!(i.off >= 0 && i.off % 4 == 0 && i.off < 12);
                    r[d] = u64::from(ctx[i.off as usize / 4]);
                }
                ALU32_AND_K => r[d] = u64::from((r[d] as u32) & (i.imm as u32)),
                ALU32_RSH_K => r[d] = u64::from((r[d] as u32) >> i.imm),
                ALU32_MOV_K => r[d] = u64::from(i.imm as u32),
                ALU32_MOV_X => r[d] = u64::from(r[s] as u32),
                JMP_JNE_K | JMP_JNE_X => {
                    let other = if i.code == JMP_JNE_K {
                        i64::from(i.imm) as u64
                    } else {
                        r[s]
                    };
                    assert!(i.off >= 0, "forward jumps only");
                    if r[d] != other {
                        pc += i.off as usize;
                    }
                }
                JMP_EXIT => return r[0],
                c => panic!("unexpected opcode {c:#x}"),
            }
            if d == 1 && i.code != JMP_JNE_K && i.code != JMP_JNE_X {
                r1_is_ctx = false;
            }
            assert!(pc < prog.len(), "ran off the end");
        }
    }

    /// The plain reading of a rule list: the last rule that matches the
    /// request (type, numbers, every access bit asked for) decides.
    fn last_match(
        rules: &[LinuxDeviceCgroup],
        kind: i32,
        access: u8,
        major: u32,
        minor: u32,
    ) -> u64 {
        for r in rules.iter().rev() {
            let typ_ok = match r.typ().unwrap_or_default() {
                LinuxDeviceType::A => true,
                LinuxDeviceType::B => kind == DEV_BLOCK,
                LinuxDeviceType::C => kind == DEV_CHAR,
                _ => false,
            };
            let num_ok = |n: Option<i64>, v: u32| n.is_none_or(|n| n < 0 || n == i64::from(v));
            let bits = access_bits(r).unwrap();
            let all = r.typ().unwrap_or_default() == LinuxDeviceType::A;
            if typ_ok
                && (all || (num_ok(r.major(), major) && num_ok(r.minor(), minor)))
                && (all || bits & access == access)
            {
                return u64::from(r.allow());
            }
        }
        0
    }

    const REQUESTS: [u8; 5] = [
        ACC_MKNOD,
        ACC_READ,
        ACC_WRITE,
        ACC_READ | ACC_WRITE,
        ACC_ALL,
    ];

    fn grid() -> impl Iterator<Item = (i32, u8, u32, u32)> {
        let devs = [
            (1, 3),
            (1, 5),
            (1, 9),
            (1, 11),
            (5, 0),
            (5, 2),
            (8, 0),
            (10, 229),
            (10, 237),
            (136, 0),
            (136, 7),
            (226, 128),
            (4095, 0xfffff),
        ];
        [DEV_CHAR, DEV_BLOCK].into_iter().flat_map(move |k| {
            REQUESTS
                .into_iter()
                .flat_map(move |a| devs.into_iter().map(move |(ma, mi)| (k, a, ma, mi)))
        })
    }

    fn allowed(rules: &[LinuxDeviceCgroup], kind: i32, access: u8, major: u32, minor: u32) -> bool {
        let prog = DeviceRules::from_oci(rules).unwrap().program();
        run(&prog, kind, access, major, minor) == 1
    }

    #[test]
    fn encoding_is_the_kernels_struct_bpf_insn() {
        let b = Insn::jne(4, 136, 3).to_bytes();
        if cfg!(target_endian = "little") {
            assert_eq!(b, [0x55, 0x04, 3, 0, 136, 0, 0, 0]);
            assert_eq!(
                Insn::ldx_w(2, 1, 8).to_bytes(),
                [0x61, 0x12, 8, 0, 0, 0, 0, 0]
            );
            assert_eq!(
                Insn::and32(2, 0xffff).to_bytes(),
                [0x54, 0x02, 0, 0, 0xff, 0xff, 0, 0]
            );
            assert_eq!(
                Insn::jne_reg(1, 3, 2).to_bytes(),
                [0x5d, 0x31, 2, 0, 0, 0, 0, 0]
            );
        }
        assert_eq!(Insn::exit().to_bytes(), [0x95, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Insn::mov32(0, 1).to_bytes()[0], 0xb4);
        assert_eq!(Insn::mov32_reg(1, 3).to_bytes()[0], 0xbc);
        assert_eq!(Insn::rsh32(3, 16).to_bytes()[0], 0x74);
    }

    #[test]
    fn program_for_a_small_list_is_laid_out_block_by_block() {
        let rules = [
            rule(false, 'a', None, None, "rwm"),
            rule(true, 'c', None, None, "m"),
            rule(true, 'c', Some(1), Some(3), "rwm"),
            rule(true, 'b', Some(8), None, "r"),
        ];
        let prog = DeviceRules::from_oci(&rules).unwrap().program();
        let expected = vec![
            Insn::ldx_w(2, 1, 0),
            Insn::and32(2, 0xffff),
            Insn::ldx_w(3, 1, 0),
            Insn::rsh32(3, 16),
            Insn::ldx_w(4, 1, 4),
            Insn::ldx_w(5, 1, 8),
            // b 8:* r (blocks come in (type, major, minor) order: b < c)
            Insn::jne(2, DEV_BLOCK, 6),
            Insn::mov32_reg(1, 3),
            Insn::and32(1, 2),
            Insn::jne_reg(1, 3, 3),
            Insn::jne(4, 8, 2),
            Insn::mov32(0, 1),
            Insn::exit(),
            // c *:* m
            Insn::jne(2, DEV_CHAR, 5),
            Insn::mov32_reg(1, 3),
            Insn::and32(1, 1),
            Insn::jne_reg(1, 3, 2),
            Insn::mov32(0, 1),
            Insn::exit(),
            // c 1:3 rwm: no access test
            Insn::jne(2, DEV_CHAR, 4),
            Insn::jne(4, 1, 3),
            Insn::jne(5, 3, 2),
            Insn::mov32(0, 1),
            Insn::exit(),
            // deny the rest
            Insn::mov32(0, 0),
            Insn::exit(),
        ];
        assert_eq!(prog, expected);
    }

    #[test]
    fn berths_default_rules_allow_the_oci_devices_and_mknod_only() {
        let rules = container_rules(&[]);
        let ok = |k, a, ma, mi| allowed(&rules, k, a, ma, mi);
        for (ma, mi) in [
            (1, 3),
            (1, 5),
            (1, 7),
            (1, 8),
            (1, 9),
            (5, 0),
            (5, 1),
            (5, 2),
        ] {
            assert!(ok(DEV_CHAR, ACC_READ | ACC_WRITE, ma, mi), "c {ma}:{mi}");
        }
        assert!(ok(DEV_CHAR, ACC_READ | ACC_WRITE, 136, 42), "ptys");
        // mknod of anything, char or block; using it is another matter.
        assert!(ok(DEV_BLOCK, ACC_MKNOD, 8, 0));
        assert!(ok(DEV_CHAR, ACC_MKNOD, 1, 1));
        assert!(!ok(DEV_BLOCK, ACC_READ, 8, 0));
        assert!(!ok(DEV_BLOCK, ACC_WRITE, 8, 0));
        assert!(!ok(DEV_CHAR, ACC_READ, 1, 1), "/dev/mem");
        assert!(!ok(DEV_CHAR, ACC_READ, 1, 11), "/dev/kmsg");
        assert!(!ok(DEV_CHAR, ACC_READ | ACC_WRITE, 10, 229), "/dev/fuse");
    }

    #[test]
    fn requested_devices_open_with_the_access_asked_for() {
        let rules = container_rules(&[
            rule(true, 'c', Some(10), Some(229), "rwm"),
            rule(true, 'c', Some(226), Some(128), "rw"),
            rule(true, 'b', Some(7), Some(0), "r"),
        ]);
        let ok = |k, a, ma, mi| allowed(&rules, k, a, ma, mi);
        assert!(ok(DEV_CHAR, ACC_READ | ACC_WRITE, 10, 229));
        assert!(ok(DEV_CHAR, ACC_READ | ACC_WRITE, 226, 128));
        assert!(ok(DEV_BLOCK, ACC_READ, 7, 0));
        assert!(!ok(DEV_BLOCK, ACC_WRITE, 7, 0));
        assert!(!ok(DEV_BLOCK, ACC_READ, 7, 1));
    }

    #[test]
    fn for_berths_lists_the_program_is_the_last_matching_rule() {
        for extra in [
            vec![],
            vec![rule(true, 'c', Some(10), Some(229), "rwm")],
            vec![
                rule(true, 'c', Some(226), None, "rw"),
                rule(true, 'b', Some(8), Some(0), "r"),
                rule(true, 'c', Some(1), Some(11), "w"),
            ],
        ] {
            let rules = container_rules(&extra);
            let prog = DeviceRules::from_oci(&rules).unwrap().program();
            for (k, a, ma, mi) in grid() {
                assert_eq!(
                    run(&prog, k, a, ma, mi),
                    last_match(&rules, k, a, ma, mi),
                    "type {k} access {a} {ma}:{mi} under {extra:?}"
                );
            }
        }
        // Privileged: allow a.
        let all = [rule(true, 'a', None, None, "rwm")];
        let state = DeviceRules::from_oci(&all).unwrap();
        assert!(state.allows_everything());
        for (k, a, ma, mi) in grid() {
            assert_eq!(run(&state.program(), k, a, ma, mi), 1);
        }
    }

    #[test]
    fn later_rules_take_access_away_and_an_a_rule_resets() {
        // Allow-list, then part of an exception taken back.
        let rules = [
            rule(false, 'a', None, None, "rwm"),
            rule(true, 'c', Some(10), Some(229), "rwm"),
            rule(false, 'c', Some(10), Some(229), "w"),
        ];
        assert!(allowed(&rules, DEV_CHAR, ACC_READ, 10, 229));
        assert!(!allowed(&rules, DEV_CHAR, ACC_WRITE, 10, 229));
        // Deny-list: everything but the exceptions.
        let rules = [
            rule(true, 'a', None, None, "rwm"),
            rule(false, 'b', Some(8), None, "rw"),
        ];
        assert!(!allowed(&rules, DEV_BLOCK, ACC_READ, 8, 16));
        assert!(allowed(&rules, DEV_BLOCK, ACC_MKNOD, 8, 16));
        assert!(allowed(&rules, DEV_BLOCK, ACC_READ, 9, 0));
        assert!(allowed(&rules, DEV_CHAR, ACC_READ, 1, 1));
        // An `a` rule later forgets everything before it.
        let rules = [
            rule(true, 'c', Some(1), Some(3), "rwm"),
            rule(false, 'a', None, None, ""),
        ];
        assert!(!allowed(&rules, DEV_CHAR, ACC_READ, 1, 3));
        // No `a` at all: from "deny all", as runc.
        let rules = [rule(true, 'c', Some(1), Some(3), "rwm")];
        assert!(allowed(&rules, DEV_CHAR, ACC_READ, 1, 3));
        assert!(!allowed(&rules, DEV_CHAR, ACC_READ, 1, 5));
    }

    #[test]
    fn allows_of_one_device_add_up_as_on_v1() {
        let rules = [
            rule(false, 'a', None, None, "rwm"),
            rule(true, 'c', Some(10), Some(229), "r"),
            rule(true, 'c', Some(10), Some(229), "w"),
        ];
        assert!(allowed(&rules, DEV_CHAR, ACC_READ | ACC_WRITE, 10, 229));
        assert!(!allowed(&rules, DEV_CHAR, ACC_MKNOD, 10, 229));
    }

    #[test]
    fn bad_rules_are_refused() {
        let bad = [
            vec![rule(true, 'c', Some(1), Some(3), "rwx")],
            vec![rule(true, 'p', None, None, "rwm")],
            vec![rule(true, 'u', Some(1), Some(3), "rwm")],
            vec![rule(true, 'c', Some(1 << 32), Some(3), "rwm")],
            // A hole in a wildcard: v1 would ignore the deny.
            vec![
                rule(false, 'a', None, None, "rwm"),
                rule(true, 'c', None, None, "rwm"),
                rule(false, 'c', Some(1), Some(3), "r"),
            ],
        ];
        for rules in bad {
            let e = DeviceRules::from_oci(&rules).unwrap_err();
            assert!(matches!(e, CgroupError::InvalidResources(_)), "{e}");
        }
        // Negative numbers are OCI's `*`.
        let rules = [
            rule(false, 'a', None, None, "rwm"),
            rule(true, 'c', Some(-1), Some(-1), "r"),
        ];
        assert!(allowed(&rules, DEV_CHAR, ACC_READ, 7, 7));
    }

    #[test]
    fn a_number_no_device_can_have_matches_nothing() {
        let rules = [
            rule(false, 'a', None, None, "rwm"),
            rule(true, 'c', Some(0x8000_0000), None, "rwm"),
        ];
        let prog = DeviceRules::from_oci(&rules).unwrap().program();
        assert_eq!(prog.len(), 8, "the loads and the default only");
        assert_eq!(run(&prog, DEV_CHAR, ACC_READ, 0x8000_0000, 0), 0);
    }
}
