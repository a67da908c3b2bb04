//! A pod's network, IPC and UTS namespaces, pinned by bind mounts so that they
//! live without any process in them (no pause image).
//!
//! The namespaces are made in a short-lived thread of berthd's own: `unshare`
//! of these three kinds moves only the calling thread, which then sets the
//! hostname, brings loopback up, applies the pod's sysctls, bind-mounts its
//! `/proc/thread-self/ns/*` files onto files in the pod's state directory,
//! and ends. Nothing is forked, so berthd's rule (never fork from the
//! multi-threaded daemon) holds.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("namespace thread panicked")]
    Thread,
}

fn sys<E: Into<std::io::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> NamespaceError {
    let what = what.into();
    move |e| NamespaceError::Sys {
        what,
        source: e.into(),
    }
}

/// Which namespaces a pod gets of its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
}

/// Pin files of a pod's namespaces (None: the node's is used).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pinned {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
}

impl Pinned {
    pub fn all(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.net, &self.ipc, &self.uts].into_iter().flatten()
    }
}

/// Whether `path` still pins a namespace: an nsfs bind mount. After a
/// reboot (the state dir is a tmpfs) or an unmount, it is not.
pub fn is_pinned(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Create and pin the wanted namespaces under `dir` (files `net`, `ipc`,
/// `uts`). `sysctls` are `(key, value)` pairs already checked to belong to
/// the namespaces being made. On error nothing stays pinned.
pub fn pin(
    dir: &Path,
    want: Wanted,
    hostname: Option<&str>,
    sysctls: &[(String, String)],
) -> Result<Pinned, NamespaceError> {
    if want == Wanted::default() {
        return Ok(Pinned::default());
    }
    let dir = dir.to_path_buf();
    let hostname = hostname.map(str::to_string);
    let sysctls = sysctls.to_vec();
    std::thread::Builder::new()
        .name("berth-netns".into())
        .spawn(move || pin_in_this_thread(&dir, want, hostname.as_deref(), &sysctls))
        .map_err(sys("spawning the namespace thread"))?
        .join()
        .map_err(|_| NamespaceError::Thread)?
}

fn pin_in_this_thread(
    dir: &Path,
    want: Wanted,
    hostname: Option<&str>,
    sysctls: &[(String, String)],
) -> Result<Pinned, NamespaceError> {
    let mut flags = CloneFlags::empty();
    if want.net {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if want.ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if want.uts {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    // Only this thread moves; it ends right after, taking nothing along.
    nix::sched::unshare(flags).map_err(sys("unshare of the pod namespaces"))?;
    if want.uts
        && let Some(h) = hostname
    {
        nix::unistd::sethostname(h).map_err(sys(format!("setting hostname {h:?}")))?;
    }
    if want.net {
        loopback_up().map_err(sys("bringing up lo in the pod network namespace"))?;
    }
    for (k, v) in sysctls {
        let path = crate::spec::sysctl_proc_path(k);
        fs::write(&path, v).map_err(sys(format!("setting sysctl {k}={v}")))?;
    }
    let mut pinned = Pinned::default();
    let result = (|| {
        for (on, kind, slot) in [
            (want.net, "net", &mut pinned.net),
            (want.ipc, "ipc", &mut pinned.ipc),
            (want.uts, "uts", &mut pinned.uts),
        ] {
            if on {
                let target = dir.join(kind);
                bind_ns(kind, &target)?;
                *slot = Some(target);
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(pinned),
        Err(e) => {
            unpin(&pinned);
            Err(e)
        }
    }
}

fn bind_ns(kind: &str, target: &Path) -> Result<(), NamespaceError> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(target)
        .map_err(sys(format!("creating pin file {}", target.display())))?;
    let source = PathBuf::from(format!("/proc/thread-self/ns/{kind}"));
    if let Err(e) = nix::mount::mount(
        Some(&source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        let _ = fs::remove_file(target);
        return Err(sys(format!(
            "pinning the {kind} namespace at {}",
            target.display()
        ))(e));
    }
    Ok(())
}

/// Unmount and remove pin files; missing ones are fine (idempotent).
pub fn unpin(p: &Pinned) {
    for path in p.all() {
        match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unmounting namespace pin")
            }
        }
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "removing namespace pin"),
        }
    }
}

/// `ip link set lo up`, with an ioctl on a socket of the current (new) netns.
fn loopback_up() -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads into the ifreq we own, on a socket we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the union member written by SIOCGIFFLAGS is ifru_flags.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own, on a socket we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn ns_inode(path: &Path) -> u64 {
        fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn pinned_namespaces_are_new_and_outlive_their_thread() {
        let dir = tempfile::tempdir().unwrap();
        let want = Wanted {
            net: true,
            ipc: true,
            uts: true,
        };
        let p = pin(
            dir.path(),
            want,
            Some("pod-host"),
            &[("net.ipv4.ip_forward".into(), "1".into())],
        )
        .unwrap();
        let guard = scopeguard(&p);
        for (kind, path) in [("net", &p.net), ("ipc", &p.ipc), ("uts", &p.uts)] {
            let path = path.as_ref().unwrap();
            assert_ne!(
                ns_inode(path),
                ns_inode(Path::new(&format!("/proc/self/ns/{kind}"))),
                "{kind} must be a namespace of its own"
            );
        }
        // Enter the pinned UTS and net namespaces in a thread and look.
        let (uts, net) = (p.uts.clone().unwrap(), p.net.clone().unwrap());
        let (host, fwd, lo) = std::thread::spawn(move || {
            let f = fs::File::open(&uts).unwrap();
            nix::sched::setns(f, CloneFlags::CLONE_NEWUTS).unwrap();
            let n = fs::File::open(&net).unwrap();
            nix::sched::setns(n, CloneFlags::CLONE_NEWNET).unwrap();
            let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
            let fwd = fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
            let lo = fs::read_to_string("/proc/thread-self/net/dev").unwrap();
            (host, fwd, lo)
        })
        .join()
        .unwrap();
        assert_eq!(host, "pod-host");
        assert_eq!(fwd.trim(), "1");
        assert!(lo.contains("lo:"), "{lo}");
        drop(guard);
        assert!(!dir.path().join("net").exists());
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&dir.path().display().to_string()),
            "pins left mounted"
        );
    }

    #[test]
    fn a_bad_sysctl_leaves_nothing_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let want = Wanted {
            net: true,
            ipc: false,
            uts: true,
        };
        let err = pin(
            dir.path(),
            want,
            None,
            &[("net.no.such.key".into(), "1".into())],
        )
        .unwrap_err();
        assert!(err.to_string().contains("net.no.such.key"), "{err}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    struct Guard<'a>(&'a Pinned);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            unpin(self.0);
        }
    }
    fn scopeguard(p: &Pinned) -> Guard<'_> {
        Guard(p)
    }
}
