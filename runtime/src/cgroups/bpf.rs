//! The bpf(2) calls that put a device program on a cgroup v2 directory:
//! load (`BPF_PROG_LOAD`, Linux 4.15 for `BPF_PROG_TYPE_CGROUP_DEVICE`),
//! list what is attached (`BPF_PROG_QUERY`, 4.15), attach
//! (`BPF_PROG_ATTACH` with `BPF_CGROUP_DEVICE`, 4.15; `BPF_F_REPLACE`,
//! 5.6) and detach. Needs CAP_SYS_ADMIN, which opening a program by its id
//! takes (berthd runs as root).
//!
//! How berth attaches, as runc does (libcontainer/cgroups/devices/ebpf_linux.go):
//!
//! * `BPF_F_ALLOW_MULTI`: the kernel runs the programs of the cgroup and of
//!   every ancestor that has any, and a device is allowed only if all of
//!   them allow it. A node's own policy higher up (systemd's DevicePolicy
//!   on a slice) keeps applying, and nothing below the container's cgroup
//!   (a nested runtime) can widen it. Without the flag the program would
//!   either forbid programs below it or be overridden by them.
//! * Again on a cgroup that has a program (resources applied once more,
//!   as UpdateContainerResources will): the one program is swapped for the
//!   new one atomically (`BPF_F_REPLACE`), so no device access ever sees
//!   neither or both. Before 5.6, or with several programs there, the new
//!   one is attached first and the old ones detached after: for that
//!   moment both apply, which can only deny more, never allow more.
//! * Rules that allow everything (privileged) need no program: the old
//!   ones are detached and none is attached.
//!
//! No file descriptor outlives the call: the attachment holds the program,
//! and it goes with the cgroup when the cgroup is removed. berthd keeps
//! nothing per container.
//!
//! Before Linux 5.11 a loaded program counts against the RLIMIT_MEMLOCK
//! of its loader (one page each, all of root's processes together); on
//! such kernels berthd needs a high limit (`LimitMEMLOCK=infinity` in its
//! unit). berthd does not raise its own: its children (shims, containers)
//! would inherit it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use super::CgroupError;
use super::devices::{DeviceRules, Insn};

// enum bpf_cmd
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
// enum bpf_prog_type, enum bpf_attach_type
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
// attach flags
const BPF_F_ALLOW_MULTI: u32 = 1 << 1;
const BPF_F_REPLACE: u32 = 1 << 2;

/// The kernel needs no particular license: the program calls no helper,
/// GPL-only or not. berth's own.
const LICENSE: &[u8] = b"Apache-2.0\0";
/// What `bpftool cgroup tree` shows ([A-Za-z0-9_.], at most 15 bytes).
const PROG_NAME: &[u8] = b"berth_devices";

/// The head of `union bpf_attr` for BPF_PROG_LOAD, up to `prog_name`
/// (4.15); the kernel takes a shorter attr as zeros beyond it.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// BPF_PROG_ATTACH and BPF_PROG_DETACH, up to `replace_bpf_fd` (5.6).
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// BPF_PROG_QUERY, up to `prog_cnt` (4.15).
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// BPF_PROG_GET_FD_BY_ID.
#[repr(C)]
#[derive(Default)]
struct GetFdByIdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// bpf(cmd, attr): the kernel's non-negative result or errno.
///
/// # Safety
/// `attr` must be the attr struct for `cmd`, and every pointer in it must
/// point to memory that stays valid (and writable where the kernel writes)
/// for the call.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the caller vouches for attr and its pointers; the size is
    // that of the struct passed, which the kernel reads (and for some
    // commands writes back) and no further.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An fd the kernel just returned, owned from now on.
fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf returned no fd"))?;
    // SAFETY: a successful BPF_PROG_LOAD or BPF_PROG_GET_FD_BY_ID returns a
    // new file descriptor that nothing else in this process owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn load(insns: &[Insn], log: Option<&mut Vec<u8>>) -> io::Result<OwnedFd> {
    let bytes: Vec<[u8; 8]> = insns.iter().map(|i| i.to_bytes()).collect();
    let mut name = [0u8; 16];
    name[..PROG_NAME.len()].copy_from_slice(PROG_NAME);
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(bytes.len()).map_err(|_| io::Error::other("program too long"))?,
        insns: bytes.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    if let Some(buf) = log {
        attr.log_level = 1;
        attr.log_size = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        attr.log_buf = buf.as_mut_ptr() as u64;
    }
    // SAFETY: a BPF_PROG_LOAD attr whose insns, license (NUL-terminated)
    // and log buffer (with its size) live until the call returns.
    let fd = unsafe { bpf(BPF_PROG_LOAD, &mut attr) }?;
    owned(fd)
}

/// Load, and if the kernel refuses the program, load once more for the
/// verifier's reasons (a bug in the generator if it ever happens).
fn load_explained(insns: &[Insn]) -> io::Result<OwnedFd> {
    match load(insns, None) {
        Ok(fd) => Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Err(io::Error::new(
            e.kind(),
            format!(
                "{e} (before Linux 5.11 BPF programs count against RLIMIT_MEMLOCK: \
                 raise berthd's, e.g. LimitMEMLOCK=infinity)"
            ),
        )),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EINVAL)) => {
            let mut buf = vec![0u8; 64 << 10];
            let _ = load(insns, Some(&mut buf));
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            let log = String::from_utf8_lossy(&buf[..end]);
            let log = log.trim();
            if log.is_empty() {
                Err(e)
            } else {
                Err(io::Error::new(e.kind(), format!("{e}; verifier: {log}")))
            }
        }
        Err(e) => Err(e),
    }
}

/// The ids of the device programs attached to this cgroup itself.
fn query(cgroup: &OwnedFd) -> io::Result<Vec<u32>> {
    // BPF_CGROUP_MAX_PROGS is 64; should a kernel allow more, it says how
    // many (ENOSPC) and the next try has room.
    let mut ids = vec![0u32; 64];
    for _ in 0..4 {
        let mut attr = QueryAttr {
            target_fd: cgroup.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: ids.len() as u32,
            ..Default::default()
        };
        // SAFETY: a BPF_PROG_QUERY attr whose prog_ids has room for
        // prog_cnt ids, alive and writable until the call returns.
        match unsafe { bpf(BPF_PROG_QUERY, &mut attr) } {
            Ok(_) => {
                ids.truncate(attr.prog_cnt as usize);
                return Ok(ids);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                ids = vec![0; attr.prog_cnt as usize];
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(
        "the list of attached programs kept growing",
    ))
}

fn prog_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = GetFdByIdAttr {
        prog_id: id,
        ..Default::default()
    };
    // SAFETY: a BPF_PROG_GET_FD_BY_ID attr; no pointers.
    let fd = unsafe { bpf(BPF_PROG_GET_FD_BY_ID, &mut attr) }?;
    owned(fd)
}

fn attach(cgroup: &OwnedFd, prog: &OwnedFd, replace: Option<&OwnedFd>) -> io::Result<()> {
    let mut attr = AttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    if let Some(old) = replace {
        attr.attach_flags |= BPF_F_REPLACE;
        attr.replace_bpf_fd = old.as_raw_fd() as u32;
    }
    // SAFETY: a BPF_PROG_ATTACH attr of fds this process holds; no pointers.
    unsafe { bpf(BPF_PROG_ATTACH, &mut attr) }.map(drop)
}

fn detach(cgroup: &OwnedFd, prog: &OwnedFd) -> io::Result<()> {
    let mut attr = AttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    // SAFETY: a BPF_PROG_DETACH attr of fds this process holds; no pointers.
    unsafe { bpf(BPF_PROG_DETACH, &mut attr) }.map(drop)
}

/// Detach the programs with these ids; ones gone meanwhile are fine, and
/// ones this process may not open (an LSM's) are left: more programs only
/// ever deny more.
fn detach_ids(cgroup: &OwnedFd, ids: &[u32], dir: &Path) -> Result<(), CgroupError> {
    for &id in ids {
        let old = match prog_by_id(id) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {
                tracing::debug!(id, error = %e, cgroup = %dir.display(), "device program left attached");
                continue;
            }
            Err(e) => {
                return Err(super::io_err(
                    format!("opening device program {id} of"),
                    dir,
                )(e));
            }
        };
        match detach(cgroup, &old) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => {
                return Err(super::io_err(
                    format!("detaching device program {id} from"),
                    dir,
                )(e));
            }
        }
    }
    Ok(())
}

/// Make `rules` the device rules of the cgroup v2 directory `dir`,
/// replacing the program a previous call attached.
/// How many device programs are attached to the cgroup v2 directory
/// `dir` itself (for checks and tests: berth attaches one per container).
pub fn device_programs(dir: &Path) -> io::Result<usize> {
    let cgroup = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(query(&cgroup)?.len())
}

pub(super) fn set_device_rules(dir: &Path, rules: &DeviceRules) -> Result<(), CgroupError> {
    let cgroup = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| super::io_err("opening cgroup", dir)(e.into()))?;
    let old = match query(&cgroup) {
        Ok(ids) => ids,
        // A kernel without cgroup BPF (or a caller without the right)
        // cannot have any program here either: nothing to take away.
        Err(e) if rules.allows_everything() => {
            tracing::debug!(error = %e, cgroup = %dir.display(), "no device programs to query");
            return Ok(());
        }
        Err(e) => return Err(super::io_err("listing the device programs of", dir)(e)),
    };
    if rules.allows_everything() {
        return detach_ids(&cgroup, &old, dir);
    }
    let prog = load_explained(&rules.program())
        .map_err(|e| super::io_err("loading the device program for", dir)(e))?;
    if let [id] = old[..]
        && let Ok(old_prog) = prog_by_id(id)
    {
        match attach(&cgroup, &prog, Some(&old_prog)) {
            Ok(()) => return Ok(()),
            // Before 5.6 the flag is unknown (EINVAL); gone meanwhile
            // (ENOENT): attach beside, then detach.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {}
            Err(e) => return Err(super::io_err("replacing the device program of", dir)(e)),
        }
    }
    attach(&cgroup, &prog, None)
        .map_err(|e| super::io_err("attaching the device program to", dir)(e))?;
    detach_ids(&cgroup, &old, dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::devices::tests::{container_rules, rule};
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    // The tests below count this process's program fds: one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn attrs_have_the_kernels_sizes() {
        assert_eq!(std::mem::size_of::<ProgLoadAttr>(), 64);
        assert_eq!(std::mem::size_of::<AttachAttr>(), 20);
        assert_eq!(std::mem::size_of::<QueryAttr>(), 32);
        assert_eq!(std::mem::size_of::<GetFdByIdAttr>(), 12);
        assert!(PROG_NAME.len() < 16);
    }

    /// Where the host mounts cgroup2 (/sys/fs/cgroup or, hybrid,
    /// /sys/fs/cgroup/unified).
    fn cgroup2_mount() -> Option<PathBuf> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        text.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            (right.split(' ').next() == Some("cgroup2")).then(|| PathBuf::from(point))
        })
    }

    /// A fresh cgroup in the host's cgroup2 hierarchy, removed (its
    /// processes killed first) on every path.
    struct TestCgroup {
        dir: PathBuf,
    }

    impl TestCgroup {
        /// Panics (the test fails, never passes unrun) unless root with a
        /// cgroup2 hierarchy mounted.
        fn new(name: &str) -> Option<Self> {
            assert!(
                nix::unistd::Uid::effective().is_root(),
                "this test needs root (it makes a cgroup and loads BPF); run the suite as root"
            );
            let root = cgroup2_mount().expect(
                "this test needs a cgroup2 hierarchy mounted (pure v2, or hybrid's unified)",
            );
            let dir = root.join(format!("berth-test-devices-{}-{name}", std::process::id()));
            std::fs::create_dir(&dir).unwrap();
            Some(TestCgroup { dir })
        }

        fn fd(&self) -> OwnedFd {
            rustix::fs::open(
                &self.dir,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .unwrap()
        }

        fn programs(&self) -> Vec<u32> {
            query(&self.fd()).unwrap()
        }

        /// Run a shell script that first moves itself into the cgroup;
        /// its stdout and stderr together, and whether it succeeded.
        fn sh(&self, script: &str) -> (bool, String) {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "echo $$ > {}/cgroup.procs || exit 99\n{script}",
                    self.dir.display()
                ))
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            (out.status.success(), text)
        }
    }

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
            if let Err(e) = super::super::remove_tree(&self.dir) {
                eprintln!("cleanup of {} failed: {e}", self.dir.display());
            }
        }
    }

    /// This process's open BPF program fds.
    fn prog_fds() -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("bpf-prog"))
            })
            .count()
    }

    fn set(dir: &Path, rules: &[oci_spec::runtime::LinuxDeviceCgroup]) {
        set_device_rules(dir, &DeviceRules::from_oci(rules).unwrap()).unwrap();
    }

    /// A char device of the host that berth's defaults do not allow, to
    /// request: loop-control, else fuse.
    fn requestable() -> Option<(&'static str, u32, u32)> {
        ["/dev/loop-control", "/dev/fuse"]
            .into_iter()
            .find_map(|p| {
                let st = rustix::fs::stat(p).ok()?;
                Some((
                    p,
                    rustix::fs::major(st.st_rdev),
                    rustix::fs::minor(st.st_rdev),
                ))
            })
    }

    #[test]
    fn the_kernel_enforces_berths_default_rules() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let Some(cg) = TestCgroup::new("defaults") else {
            return;
        };
        let fds = prog_fds();
        let extra: Vec<_> = requestable()
            .map(|(_, ma, mi)| rule(true, 'c', Some(ma.into()), Some(mi.into()), "rwm"))
            .into_iter()
            .collect();
        set(&cg.dir, &container_rules(&extra));
        assert_eq!(cg.programs().len(), 1);
        assert_eq!(prog_fds(), fds, "no program fd is kept");

        // Through nodes made here: loop0 (block 7:0) and kmsg (char 1:11),
        // which root on this node opens without the program.
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path().display();
        let (ok, out) = cg.sh(&format!(
            "set -e
            head -c1 /dev/zero | wc -c
            head -c1 /dev/urandom | wc -c
            echo x > /dev/null
            : < /dev/full
            mknod {t}/disk b 7 0
            mknod {t}/kmsg c 1 11
            echo made
            if head -c1 {t}/disk; then echo disk-open; fi
            if (: < {t}/kmsg); then echo kmsg-open; fi"
        ));
        assert!(ok, "{out}");
        assert_eq!(
            out.lines().filter(|l| l.trim() == "1").count(),
            2,
            "zero and urandom read: {out}"
        );
        assert!(out.contains("made"), "mknod is allowed: {out}");
        assert!(
            !out.contains("disk-open") && !out.contains("kmsg-open"),
            "{out}"
        );
        assert_eq!(
            out.matches("Operation not permitted").count(),
            2,
            "both opens refused by the program: {out}"
        );
        if let Some((path, _, _)) = requestable() {
            let (ok, out) = cg.sh(&format!(": < {path}"));
            assert!(ok, "the requested {path} opens: {out}");
        }
        // Without the request it would not.
        set(&cg.dir, &container_rules(&[]));
        if let Some((path, _, _)) = requestable() {
            let (ok, out) = cg.sh(&format!(": < {path}"));
            assert!(!ok && out.contains("Operation not permitted"), "{out}");
        }
    }

    #[test]
    fn applying_again_replaces_the_program_and_allow_all_removes_it() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let Some(cg) = TestCgroup::new("replace") else {
            return;
        };
        let fds = prog_fds();
        set(&cg.dir, &container_rules(&[]));
        let first = cg.programs();
        assert_eq!(first.len(), 1);
        let (ok, out) = cg.sh(": < /dev/kmsg");
        assert!(!ok, "{out}");

        set(
            &cg.dir,
            &container_rules(&[rule(true, 'c', Some(1), Some(11), "r")]),
        );
        let second = cg.programs();
        assert_eq!(second.len(), 1, "replaced, not added");
        assert_ne!(second, first);
        assert!(
            prog_by_id(first[0]).is_err_and(|e| e.raw_os_error() == Some(libc::ENOENT)),
            "the old program is freed"
        );
        let (ok, out) = cg.sh(": < /dev/kmsg");
        assert!(ok, "{out}");

        // The fallback path (several programs there): attach, then detach.
        let extra = load(
            &DeviceRules::from_oci(&container_rules(&[]))
                .unwrap()
                .program(),
            None,
        )
        .unwrap();
        attach(&cg.fd(), &extra, None).unwrap();
        drop(extra);
        assert_eq!(cg.programs().len(), 2);
        set(&cg.dir, &container_rules(&[]));
        assert_eq!(cg.programs().len(), 1);

        set(&cg.dir, &[rule(true, 'a', None, None, "rwm")]);
        assert!(cg.programs().is_empty(), "allow-all needs no program");
        let (ok, out) = cg.sh(": < /dev/kmsg");
        assert!(ok, "{out}");
        assert_eq!(prog_fds(), fds, "no program fd is kept");
    }

    #[test]
    fn a_removed_cgroup_takes_its_program_along() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let Some(cg) = TestCgroup::new("removed") else {
            return;
        };
        set(&cg.dir, &container_rules(&[]));
        let ids = cg.programs();
        assert_eq!(ids.len(), 1);
        assert!(prog_by_id(ids[0]).is_ok());
        drop(cg);
        // The kernel releases a removed cgroup's programs from a worker,
        // after an RCU grace period.
        let t = Instant::now();
        loop {
            match prog_by_id(ids[0]) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
                _ if t.elapsed() > Duration::from_secs(10) => {
                    panic!("program {} still loaded after its cgroup went", ids[0])
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    #[test]
    fn v2_apply_attaches_the_rules_and_leaves_them_without_any() {
        use crate::cgroups::{CgroupManager, CgroupPath, V2};
        use oci_spec::runtime::LinuxResourcesBuilder;
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let Some(cg) = TestCgroup::new("apply") else {
            return;
        };
        let (root, name) = (cg.dir.parent().unwrap(), cg.dir.file_name().unwrap());
        let v2 = V2::at(root).unwrap();
        let path = CgroupPath::new(name.to_str().unwrap()).unwrap();
        let with = LinuxResourcesBuilder::default()
            .devices(container_rules(&[]))
            .build()
            .unwrap();
        v2.apply(&path, &with).unwrap();
        let ids = cg.programs();
        assert_eq!(ids.len(), 1);
        let (ok, out) = cg.sh(": < /dev/kmsg");
        assert!(!ok && out.contains("Operation not permitted"), "{out}");
        // Resources without devices (UpdateContainerResources) keep them.
        v2.apply(&path, &LinuxResourcesBuilder::default().build().unwrap())
            .unwrap();
        assert_eq!(cg.programs(), ids);
        // A bad rule fails before anything is written.
        let bad = LinuxResourcesBuilder::default()
            .devices(vec![rule(true, 'c', Some(1), Some(3), "rwx")])
            .build()
            .unwrap();
        assert!(matches!(
            v2.apply(&path, &bad),
            Err(CgroupError::InvalidResources(_))
        ));
        assert_eq!(cg.programs(), ids);
    }

    #[test]
    fn a_directory_that_is_no_cgroup_is_an_error() {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "this test needs root; run the suite as root"
        );
        let tmp = tempfile::tempdir().unwrap();
        let e = set_device_rules(
            tmp.path(),
            &DeviceRules::from_oci(&container_rules(&[])).unwrap(),
        )
        .unwrap_err();
        assert!(matches!(e, CgroupError::Io { .. }), "{e}");
    }
}
