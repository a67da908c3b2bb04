//! Loading the seccomp filter that berthd compiled into the bundle
//! ([`SECCOMP_FILE`](super::protocol::SECCOMP_FILE)) into a container
//! process. The shim itself never runs under it: only the processes it
//! forks for the container (its init, each exec, the pause process) load
//! it, as their last step before exec (see `spawn::try_exec` for when).

use std::io::Read as _;
use std::path::Path;

use nix::errno::Errno;

use crate::seccomp::{MAX_INSNS, Program};

/// The compiled filter at `path` (the bundle's `seccomp.bpf`).
pub fn read(path: &Path) -> Result<Program, String> {
    let err = |e: &dyn std::fmt::Display| format!("seccomp filter {}: {e}", path.display());
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(8 + 8 * MAX_INSNS as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| err(&e))?;
    Program::from_bytes(&bytes).map_err(|e| err(&e))
}

/// Loads `p` into the calling thread with seccomp(2). The kernel takes a
/// filter only from a process with no_new_privs or CAP_SYS_ADMIN; without
/// the capability no_new_privs is set first.
pub fn load(p: &Program) -> Result<(), Errno> {
    let admin = caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_ADMIN,
    )
    .unwrap_or(false);
    if !admin {
        nix::sys::prctl::set_no_new_privs()?;
    }
    install(&mut sock_filters(p), p.flags)
}

fn sock_filters(p: &Program) -> Vec<libc::sock_filter> {
    p.insns
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect()
}

/// seccomp(SECCOMP_SET_MODE_FILTER, flags, filter); allocates nothing.
fn install(filter: &mut [libc::sock_filter], flags: u32) -> Result<(), Errno> {
    let len = u16::try_from(filter.len()).map_err(|_| Errno::EINVAL)?;
    let prog = libc::sock_fprog {
        len,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `filter`, both alive for the call; the
    // kernel copies the program and keeps no pointer to it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::c_ulong::from(flags),
            &prog as *const libc::sock_fprog,
        )
    };
    Errno::result(r).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ProfileType, SecurityProfile};
    use crate::seccomp::{Native, compile};
    use crate::spec::seccomp::{Context, resolve_for};
    use std::collections::BTreeSet;

    /// Runs `f` in a forked child under `p`; its exit code.
    fn in_child(p: &Program, f: fn() -> i32) -> i32 {
        let mut filter = sock_filters(p);
        // SAFETY: the test runner has threads, so the child allocates
        // nothing (the filter is built before the fork): it makes raw
        // syscalls only and leaves with _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: as above.
                let nnp = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                let code = match (nnp, install(&mut filter, p.flags)) {
                    (0, Ok(())) => f(),
                    _ => 100,
                };
                // SAFETY: ends the child without running the parent's exit path.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                match nix::sys::wait::waitpid(child, None).unwrap() {
                    nix::sys::wait::WaitStatus::Exited(_, c) => c,
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    fn errno_of(r: libc::c_long) -> i32 {
        if r >= 0 { 0 } else { Errno::last_raw() }
    }

    /// The kernel takes the default profile and enforces what it says.
    #[test]
    fn the_kernel_enforces_the_default_profile() {
        let Some(native) = Native::host() else { return };
        let bounding: BTreeSet<String> = crate::spec::DEFAULT_CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .collect();
        let ctx = Context {
            bounding: &bounding,
            arch: native,
            kernel: (6, 1),
        };
        let host = crate::spec::RealHost;
        let profile = SecurityProfile {
            profile_type: ProfileType::RuntimeDefault,
            localhost_ref: String::new(),
        };
        let p = compile(&resolve_for(&profile, &ctx, &host).unwrap(), native).unwrap();
        let p = Program::from_bytes(&p.to_bytes()).unwrap();
        // unshare: EPERM; clone3: ENOSYS; AF_VSOCK: EPERM; getpid: fine.
        let code = in_child(&p, || {
            // SAFETY: raw syscalls with plain integer arguments.
            unsafe {
                if errno_of(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER)) != libc::EPERM {
                    return 1;
                }
                if errno_of(libc::syscall(libc::SYS_clone3, 0usize, 0usize)) != libc::ENOSYS {
                    return 2;
                }
                if errno_of(libc::syscall(
                    libc::SYS_socket,
                    libc::AF_VSOCK,
                    libc::SOCK_STREAM,
                    0,
                )) != libc::EPERM
                {
                    return 3;
                }
                if libc::syscall(libc::SYS_getpid) <= 0 {
                    return 4;
                }
                if errno_of(libc::syscall(libc::SYS_personality, 0xffff_ffffu64)) != 0 {
                    return 5;
                }
                let mut buf = [0u8; 256];
                if libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) <= 0 {
                    return 6;
                }
            }
            0
        });
        assert_eq!(code, 0);
    }
}
