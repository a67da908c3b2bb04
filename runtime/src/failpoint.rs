//! Test hooks: named points in berthd's request paths where a test makes it
//! pause (or fail), to cancel a call or kill berthd at a known step.
//!
//! They are the [`fail`](https://docs.rs/fail) crate's fail points, set by
//! the `FAILPOINTS` environment variable of berthd
//! (`FAILPOINTS="sandbox.before_netns=sleep(300);container.before_commit=sleep(300)"`).
//! They exist only with the `failpoints` feature, which the conformance
//! suite's build turns on; in any other build [`hit`] is an empty function
//! and berthd refuses to start with `FAILPOINTS` set, so that a test never
//! passes believing it paused berthd when it did not.
//!
//! The points (each in blocking code, never on an async worker):
//! * `sandbox.before_netns`: RunPodSandbox, the pod's directory made, its
//!   namespaces not yet;
//! * `sandbox.before_commit`: RunPodSandbox, everything made, the record
//!   not yet committed;
//! * `container.before_commit`: CreateContainer, the shim handed its
//!   bundle and starting, the image hold and the record not yet committed;
//! * `container.before_pid`: CreateContainer, the record committed without
//!   the shim's pid, its answer not yet read.
//!
//! And one switch ([`enabled`], set with `=return`):
//! * `rootfs.classic_lowerdir`: mount root filesystems with the classic
//!   overlay options, as on a kernel before 6.8.
//! * `shim.no_mount_setattr`: the container's v1 /sys/fs/cgroup made
//!   read-only by a remount per mount, as on a kernel before 5.12 (the
//!   shim reads `FAILPOINTS` too: it inherits berthd's environment).

/// A named point (see the module docs).
#[inline]
pub fn hit(name: &str) {
    #[cfg(feature = "failpoints")]
    fail::fail_point!(name);
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Whether the named point is set to `return` (a switch rather than a
/// pause). Always false without the feature.
#[inline]
pub fn enabled(name: &str) -> bool {
    #[cfg(feature = "failpoints")]
    fail::fail_point!(name, |_| true);
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
    false
}

/// Read `FAILPOINTS`. Without the feature, an error if it is set.
pub fn setup() -> Result<(), String> {
    #[cfg(feature = "failpoints")]
    {
        // The scenario lives as long as berthd.
        std::mem::forget(fail::FailScenario::setup());
        Ok(())
    }
    #[cfg(not(feature = "failpoints"))]
    match std::env::var_os("FAILPOINTS") {
        Some(_) => Err(
            "FAILPOINTS is set, but this berthd was built without the failpoints feature (cargo build --features berth-runtime/failpoints)"
                .into(),
        ),
        None => Ok(()),
    }
}
