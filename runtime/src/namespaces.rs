//! A pod's network, IPC and UTS namespaces, pinned by bind mounts so that they
//! live without any process in them (no pause image).
//!
//! The namespaces are made in a short-lived thread of berthd's own: `unshare`
//! of these three kinds moves only the calling thread, which then sets the
//! hostname, brings loopback up, applies the pod's sysctls, bind-mounts its
//! `/proc/thread-self/ns/*` files onto files in the pod's state directory,
//! and ends. Nothing is forked, so berthd's rule (never fork from the
//! multi-threaded daemon) holds.
//!
//! A pod with a user namespace of its own (KEP-127) cannot be made that
//! way: the kernel refuses `unshare(CLONE_NEWUSER)` to a multi-threaded
//! process, and the pod's network, IPC and UTS namespaces must belong to
//! its user namespace (so that its root may use them: namespaced sysctls,
//! hostname, routes). There berthd runs `berth-shim --pod-namespaces`, a
//! helper that unshares the user namespace, waits for berthd to write its
//! uid and gid maps, makes the other namespaces inside it, and waits while
//! berthd pins `/proc/<helper>/ns/*`; then it exits. Spawning it costs
//! about a millisecond, once per pod.

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
    #[error("the pod namespace helper: {0}")]
    Helper(String),
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
    /// The pod's own user namespace (records before it have none).
    #[serde(default)]
    pub user: Option<PathBuf>,
}

impl Pinned {
    pub fn all(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.net, &self.ipc, &self.uts, &self.user]
            .into_iter()
            .flatten()
    }
}

/// A pod user namespace's one uid and one gid mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserMappings {
    pub uid: crate::model::IdMapping,
    pub gid: crate::model::IdMapping,
}

/// The argument that makes berth-shim the pod-namespace helper.
pub const HELPER_ARG: &str = "--pod-namespaces";

/// What the helper makes inside the user namespace, as one JSON line.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct HelperRequest {
    net: bool,
    ipc: bool,
    uts: bool,
    hostname: Option<String>,
    sysctls: Vec<(String, String)>,
}

/// How long berthd waits for each answer of the helper.
const HELPER_TIMEOUT_MS: u16 = 10_000;

/// A running helper whose user namespace has its mappings. Dropping it
/// ends it (the namespaces live on only where they were pinned).
pub struct UsernsHelper {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::process::ChildStdout,
}

impl UsernsHelper {
    /// Start `helper` (berth-shim) and map its new user namespace.
    pub fn start(helper: &Path, map: &UserMappings) -> Result<Self, NamespaceError> {
        use std::process::Stdio;
        let mut child = std::process::Command::new(helper)
            .arg(HELPER_ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(sys(format!("starting {} {HELPER_ARG}", helper.display())))?;
        let (stdin, stdout) = match (child.stdin.take(), child.stdout.take()) {
            (Some(i), Some(o)) => (i, o),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(NamespaceError::Helper("no pipes to the helper".into()));
            }
        };
        let mut h = UsernsHelper {
            child,
            stdin: Some(stdin),
            stdout,
        };
        h.expect("unshared")?;
        let pid = h.child.id();
        for (file, m) in [("uid_map", map.uid), ("gid_map", map.gid)] {
            let path = format!("/proc/{pid}/{file}");
            fs::write(
                &path,
                format!("{} {} {}\n", m.container_id, m.host_id, m.length),
            )
            .map_err(sys(format!("writing {path}")))?;
        }
        Ok(h)
    }

    /// `/proc/<helper>/ns/<kind>`.
    pub fn ns_path(&self, kind: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/{kind}", self.child.id()))
    }

    /// Have the helper make the wanted namespaces inside its user
    /// namespace (hostname, loopback and sysctls set there).
    fn make(&mut self, req: &HelperRequest) -> Result<(), NamespaceError> {
        use std::io::Write as _;
        let mut line = serde_json::to_vec(req)
            .map_err(|e| NamespaceError::Helper(format!("encoding the request: {e}")))?;
        line.push(b'\n');
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| NamespaceError::Helper("the helper's input is closed".into()))?;
        stdin
            .write_all(&line)
            .map_err(sys("writing to the pod namespace helper"))?;
        self.expect("ready")
    }

    /// Read one line and want `word`; the helper's `error …` otherwise.
    fn expect(&mut self, word: &str) -> Result<(), NamespaceError> {
        use std::io::Read as _;
        use std::os::fd::AsFd;
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while line.len() < 4096 {
            let mut fds = [nix::poll::PollFd::new(
                self.stdout.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            match nix::poll::poll(&mut fds, HELPER_TIMEOUT_MS) {
                Ok(0) => {
                    return Err(NamespaceError::Helper(format!(
                        "no answer in {} s",
                        HELPER_TIMEOUT_MS / 1000
                    )));
                }
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(sys("waiting for the helper")(e)),
            }
            match self.stdout.read(&mut b) {
                Ok(0) => break,
                Ok(_) if b[0] == b'\n' => break,
                Ok(_) => line.push(b[0]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(sys("reading from the helper")(e)),
            }
        }
        let line = String::from_utf8_lossy(&line);
        if line == word {
            return Ok(());
        }
        Err(NamespaceError::Helper(match line.strip_prefix("error ") {
            Some(msg) => msg.to_string(),
            None if line.is_empty() => "the helper ended without an answer".into(),
            None => format!("unexpected answer {line:?}"),
        }))
    }
}

impl Drop for UsernsHelper {
    fn drop(&mut self) {
        // EOF on its input ends it; a kill makes sure of it.
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Create a user namespace with `map` and the wanted namespaces owned by
/// it, and pin them all under `dir` (`user`, `net`, `ipc`, `uts`). On
/// error nothing stays pinned.
pub fn pin_with_userns(
    helper: &Path,
    dir: &Path,
    want: Wanted,
    hostname: Option<&str>,
    sysctls: &[(String, String)],
    map: &UserMappings,
) -> Result<Pinned, NamespaceError> {
    let mut h = UsernsHelper::start(helper, map)?;
    h.make(&HelperRequest {
        net: want.net,
        ipc: want.ipc,
        uts: want.uts,
        hostname: hostname.map(str::to_string),
        sysctls: sysctls.to_vec(),
    })?;
    let mut pinned = Pinned::default();
    let result = (|| {
        for (on, kind, slot) in [
            (true, "user", &mut pinned.user),
            (want.net, "net", &mut pinned.net),
            (want.ipc, "ipc", &mut pinned.ipc),
            (want.uts, "uts", &mut pinned.uts),
        ] {
            if on {
                let target = dir.join(kind);
                bind_file(&h.ns_path(kind), kind, &target)?;
                *slot = Some(target);
            }
        }
        Ok(())
    })();
    drop(h);
    match result {
        Ok(()) => Ok(pinned),
        Err(e) => {
            unpin(&pinned);
            Err(e)
        }
    }
}

/// The helper's side (`berth-shim --pod-namespaces`); returns the exit
/// code. It must be single-threaded, as the shim's main is.
pub fn helper_main() -> i32 {
    use std::io::{BufRead as _, Read as _, Write as _};
    let say = |line: &str| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", line.replace('\n', " "));
        let _ = out.flush();
    };
    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWUSER) {
        say(&format!("error unshare of the user namespace: {e}"));
        return 1;
    }
    say("unshared");
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    match stdin.read_line(&mut line) {
        // berthd only wanted the user namespace (a probe).
        Ok(0) => return 0,
        Ok(_) => {}
        Err(e) => {
            say(&format!("error reading the request: {e}"));
            return 1;
        }
    }
    let req: HelperRequest = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            say(&format!("error parsing the request: {e}"));
            return 1;
        }
    };
    // The maps are written (berthd sends the request after): become the
    // namespace's root, so that what is checked against its owner (ipc
    // sysctls on newer kernels) sees the pod's root, not an unmapped id.
    let root = (nix::unistd::Gid::from_raw(0), nix::unistd::Uid::from_raw(0));
    if let Err(e) = nix::unistd::setresgid(root.0, root.0, root.0)
        .and_then(|()| nix::unistd::setresuid(root.1, root.1, root.1))
    {
        say(&format!("error becoming the user namespace's root: {e}"));
        return 1;
    }
    let want = Wanted {
        net: req.net,
        ipc: req.ipc,
        uts: req.uts,
    };
    if let Err(e) = make_here(want, req.hostname.as_deref(), &req.sysctls) {
        say(&format!("error {e}"));
        return 1;
    }
    say("ready");
    // Live until berthd has pinned what it needs and closes our input.
    let mut rest = Vec::new();
    let _ = stdin.read_to_end(&mut rest);
    0
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
    // Only this thread moves; it ends right after, taking nothing along.
    make_here(want, hostname, sysctls)?;
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

/// Unshare the wanted namespaces (the calling thread, or the helper
/// process) and set them up: hostname, loopback, sysctls.
fn make_here(
    want: Wanted,
    hostname: Option<&str>,
    sysctls: &[(String, String)],
) -> Result<(), NamespaceError> {
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
    Ok(())
}

fn bind_ns(kind: &str, target: &Path) -> Result<(), NamespaceError> {
    bind_file(
        &PathBuf::from(format!("/proc/thread-self/ns/{kind}")),
        kind,
        target,
    )
}

fn bind_file(source: &Path, kind: &str, target: &Path) -> Result<(), NamespaceError> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(target)
        .map_err(sys(format!("creating pin file {}", target.display())))?;
    if let Err(e) = nix::mount::mount(
        Some(source),
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
