//! Helpers for the berth-shim integration tests: a busybox root
//! filesystem, a containerd-like OCI spec, a cgroup per test, the real
//! `berth-shim` binary started as berthd would, and a client for its
//! socket. Everything made is removed on drop, on every path.

#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use berth_runtime::shim::protocol::{
    ExitStatus, Request, Response, ShimConfig, ShimKind, State, Status,
};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespace, LinuxNamespaceBuilder,
    LinuxNamespaceType, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder, get_default_maskedpaths, get_default_readonly_paths,
};

pub const SHIM: &str = env!("CARGO_BIN_EXE_berth-shim");

/// Integration tests need root (namespaces, mounts, cgroups).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

static SEQ: AtomicU32 = AtomicU32::new(0);

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

/// A root filesystem of Debian's static busybox, applets as hard links.
pub fn busybox_rootfs(root: &Path) {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for d in ["proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet.is_empty() || applet == "busybox" {
            continue;
        }
        let _ = std::fs::hard_link(bin.join("busybox"), bin.join(applet));
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
}

/// cgroup v1 directories under memory, cpu and pids, removed on drop.
pub struct TestCgroup {
    pub name: String,
    pub dirs: Vec<PathBuf>,
}

impl TestCgroup {
    pub fn new(name: &str) -> TestCgroup {
        let mut dirs = Vec::new();
        for c in ["memory", "cpu", "pids"] {
            let d = Path::new("/sys/fs/cgroup").join(c).join(name);
            if std::fs::create_dir(&d).is_ok() {
                dirs.push(d);
            }
        }
        TestCgroup {
            name: name.to_string(),
            dirs,
        }
    }

    pub fn procs(&self) -> Vec<i32> {
        let Some(d) = self.dirs.first() else {
            return vec![];
        };
        std::fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            // A cgroup can only go once its processes have.
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::fs::remove_dir(d).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn caps(list: &[Capability]) -> HashSet<Capability> {
    list.iter().copied().collect()
}

/// containerd's default capability set.
pub fn default_caps() -> HashSet<Capability> {
    use Capability::*;
    caps(&[
        Chown,
        DacOverride,
        Fsetid,
        Fowner,
        Mknod,
        NetRaw,
        Setgid,
        Setuid,
        Setfcap,
        Setpcap,
        NetBindService,
        SysChroot,
        Kill,
        AuditWrite,
    ])
}

fn mount(dest: &str, typ: &str, src: &str, opts: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(src)
        .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .unwrap()
}

/// The mounts containerd gives every container.
pub fn default_mounts() -> Vec<Mount> {
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ]
}

pub fn ns(typ: LinuxNamespaceType, path: Option<String>) -> LinuxNamespace {
    let b = LinuxNamespaceBuilder::default().typ(typ);
    match path {
        Some(p) => b.path(p).build().unwrap(),
        None => b.build().unwrap(),
    }
}

pub fn new_namespaces() -> Vec<LinuxNamespace> {
    use LinuxNamespaceType::*;
    vec![
        ns(Pid, None),
        ns(Ipc, None),
        ns(Uts, None),
        ns(Mount, None),
        ns(Network, None),
    ]
}

/// A minimal but realistic spec, as containerd would write it.
pub fn container_spec(
    rootfs: &Path,
    args: &[&str],
    cgroup: Option<&str>,
    namespaces: Vec<LinuxNamespace>,
) -> Spec {
    let caps = default_caps();
    let process = ProcessBuilder::default()
        .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .env(vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            "HOSTNAME=berth-test".to_string(),
        ])
        .cwd("/")
        .user(UserBuilder::default().uid(0u32).gid(0u32).build().unwrap())
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .build()
                .unwrap(),
        )
        .oom_score_adj(-998)
        .no_new_privileges(false)
        .build()
        .unwrap();
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(get_default_maskedpaths())
        .readonly_paths(get_default_readonly_paths());
    if let Some(cg) = cgroup {
        linux = linux.cgroups_path(format!("/{cg}"));
    }
    SpecBuilder::default()
        .version("1.1.0")
        .root(
            RootBuilder::default()
                .path(rootfs)
                .readonly(false)
                .build()
                .unwrap(),
        )
        .hostname("berth-test")
        .mounts(default_mounts())
        .process(process)
        .linux(linux.build().unwrap())
        .build()
        .unwrap()
}

/// A container's state dir and root filesystem, its shim, its cgroup.
pub struct Bundle {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub log: PathBuf,
    pub cgroup: Option<TestCgroup>,
    pub shim_pid: Option<i32>,
    pub init_pid: Option<i32>,
}

impl Bundle {
    pub fn new(name: &str) -> Bundle {
        let dir = std::env::temp_dir().join(unique(&format!("berth-shim-{name}")));
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        busybox_rootfs(&rootfs);
        let cgroup = TestCgroup::new(dir.file_name().unwrap().to_str().unwrap());
        Bundle {
            log: dir.join("logs").join("0.log"),
            dir,
            rootfs,
            cgroup: Some(cgroup),
            shim_pid: None,
            init_pid: None,
        }
    }

    pub fn cgroup_name(&self) -> Option<String> {
        self.cgroup.as_ref().map(|c| c.name.clone())
    }

    /// A container spec running `args`, with every namespace new.
    pub fn spec(&self, args: &[&str]) -> Spec {
        container_spec(
            &self.rootfs,
            args,
            self.cgroup_name().as_deref(),
            new_namespaces(),
        )
    }

    pub fn write(&self, spec: &Spec, kind: ShimKind) {
        self.write_with(spec, kind, false);
    }

    pub fn write_with(&self, spec: &Spec, kind: ShimKind, tty: bool) {
        self.write_cfg(spec, |c| {
            c.kind = kind;
            c.stdin = tty;
            c.tty = tty;
        });
    }

    /// The spec and a shim.json that `edit` adjusts.
    pub fn write_cfg(&self, spec: &Spec, edit: impl FnOnce(&mut ShimConfig)) {
        std::fs::create_dir_all(self.log.parent().unwrap()).unwrap();
        spec.save(self.dir.join("config.json")).unwrap();
        let mut cfg = ShimConfig {
            id: self.dir.file_name().unwrap().to_string_lossy().into_owned(),
            kind: ShimKind::Container,
            log_path: self.log.to_string_lossy().into_owned(),
            stdin: false,
            stdin_once: false,
            tty: false,
            restrict_oom_score_adj: true,
            seccomp: false,
            runtime: None,
        };
        edit(&mut cfg);
        std::fs::write(
            self.dir.join("shim.json"),
            serde_json::to_vec(&cfg).unwrap(),
        )
        .unwrap();
    }

    /// Runs `berth-shim` as berthd does; Ok(init pid) or Err(message).
    pub fn run_shim(&mut self) -> Result<i32, String> {
        let mut child = Command::new(SHIM)
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // One line, within a bound: a hung set-up fails the test instead of
        // hanging it.
        let mut out = child.stdout.take().unwrap();
        let mut bytes = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !bytes.ends_with(b"\n") {
            use std::os::fd::AsFd as _;
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = [nix::poll::PollFd::new(
                out.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let n = nix::poll::poll(&mut pfd, ms).unwrap();
            assert!(n > 0, "berth-shim said nothing within 30 s");
            let mut chunk = [0u8; 256];
            match out.read(&mut chunk).unwrap() {
                0 => break,
                k => bytes.extend_from_slice(&chunk[..k]),
            }
        }
        let line = String::from_utf8_lossy(&bytes).into_owned();
        // The shim's first process exits at once; reap it.
        child.wait().unwrap();
        if let Ok(p) = std::fs::read_to_string(self.dir.join("shim.pid")) {
            self.shim_pid = p.trim().parse().ok();
        }
        let line = line.trim_end();
        match line.strip_prefix("ok ") {
            Some(rest) => {
                // `ok <pid>`, then the start's step timings.
                let (pid, steps) = rest.split_once(' ').unwrap_or((rest, ""));
                let pid: i32 = pid.parse().map_err(|_| line.to_string())?;
                let steps = berth_runtime::steps::parse_shim_steps(steps);
                assert!(
                    steps.iter().any(|(s, _)| s == "shim.create")
                        && steps.iter().any(|(s, _)| s == "shim.ready"),
                    "the start line carries the shim's timings: {line}"
                );
                self.init_pid = Some(pid);
                Ok(pid)
            }
            None => Err(line.strip_prefix("error ").unwrap_or(line).to_string()),
        }
    }

    pub fn request(&self, req: &Request) -> Response {
        request(&self.dir.join("shim.sock"), req)
    }

    pub fn state(&self) -> State {
        match self.request(&Request::State) {
            Response::State(s) => s,
            other => panic!("State: {other:?}"),
        }
    }

    pub fn start(&self) -> Response {
        self.request(&Request::Start)
    }

    /// Wait as berthd does: over the socket, or from exit.json once the
    /// shim is gone.
    /// SIGKILL every process of the container through the shim, and its
    /// exit.
    pub fn kill_all(&self) -> ExitStatus {
        assert_eq!(
            self.request(&Request::Kill {
                signal: 9,
                all: true
            }),
            Response::Ok
        );
        self.wait()
    }

    pub fn wait(&self) -> ExitStatus {
        match try_request(&self.dir.join("shim.sock"), &Request::Wait) {
            Ok(Response::Exit(e)) => return e,
            Ok(other) => panic!("Wait: {other:?}"),
            Err(_) => {}
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.exit_file() {
                return e;
            }
            assert!(Instant::now() < deadline, "no shim and no exit.json");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn exit_file(&self) -> Option<ExitStatus> {
        let bytes = std::fs::read(self.dir.join("exit.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the log until `pred` holds (or panics after `secs`).
    pub fn wait_log(&self, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let text = self.log_text();
            if pred(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "log never matched; it has:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the shim process is gone.
    pub fn wait_shim_gone(&self, secs: u64) -> bool {
        let Some(pid) = self.shim_pid else {
            return true;
        };
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if !alive(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

pub fn alive(pid: i32) -> bool {
    // A zombie is as good as gone (its parent reaps it).
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

pub fn ppid(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Processes whose command line mentions `needle` (left-over shims).
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmd).contains(needle)
            && alive(pid)
        {
            out.push(pid);
        }
    }
    out
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let kill9 = |pid: i32| {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        };
        if let Some(pid) = self.init_pid {
            kill9(pid);
        }
        let dir = self.dir.to_string_lossy().into_owned();
        // Whatever is left of ours (the shim, a pause): by pid, never by name.
        let mut left = processes_mentioning(&dir);
        if let Some(p) = self.shim_pid {
            left.push(p);
        }
        for pid in &left {
            kill9(*pid);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while left.iter().any(|p| alive(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.cgroup.take();
        let _ = std::fs::remove_dir_all(&self.dir);
        if !std::thread::panicking() {
            assert!(
                processes_mentioning(&dir).is_empty(),
                "shim processes left for {dir}"
            );
            let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            assert!(!mounts.contains(&dir), "mounts left under {dir}");
        }
    }
}

/// One request, one response, over a fresh connection.
pub fn request(sock: &Path, req: &Request) -> Response {
    try_request(sock, req).unwrap_or_else(|e| panic!("{req:?} to {}: {e}", sock.display()))
}

pub fn try_request(sock: &Path, req: &Request) -> std::io::Result<Response> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_vec(req).unwrap();
    line.push(b'\n');
    s.write_all(&line)?;
    let mut out = Vec::new();
    let mut r = BufReader::new(&mut s);
    r.read_until(b'\n', &mut out)?;
    if out.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("bad response {:?}: {e}", String::from_utf8_lossy(&out))))
}

/// Sends a request and hangs up without reading the answer.
pub fn send_and_hang_up(sock: &Path, req: &Request) {
    let mut s = UnixStream::connect(sock).unwrap();
    let mut line = serde_json::to_vec(req).unwrap();
    line.push(b'\n');
    s.write_all(&line).unwrap();
    let mut b = [0u8; 1];
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let _ = s.read(&mut b);
}

/// The content of the records of one stream, in order.
pub fn log_contents(text: &str, stream: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(4, ' ');
            let _ts = parts.next()?;
            (parts.next()? == stream).then_some(())?;
            let _tag = parts.next()?;
            Some(parts.next().unwrap_or("").to_string())
        })
        .collect()
}

pub fn assert_status(b: &Bundle, s: Status) {
    assert_eq!(b.state().status, s);
}
