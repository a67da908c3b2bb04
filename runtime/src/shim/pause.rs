//! The pod's pause process: PID 1 of a shared PID namespace, built into
//! the shim (no image). Like kubernetes' pause.c it does nothing but reap
//! the zombies that its namespace hands it; SIGTERM and SIGINT are held
//! blocked, so only SIGKILL ends it.

#![deny(unsafe_code)]

use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// Never returns.
pub fn run() -> ! {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&set), None);
    let _ = nix::unistd::chdir("/");
    // Forked from the shim mid set-up: drop what that left behind.
    super::release_memory();
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    loop {
        // Reap everything that is dead, then sleep until the next SIGCHLD.
        while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if status == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
        let _ = chld.wait();
    }
}
