//! The per-container monitor (`berth-shim`) and the protocol berthd speaks
//! with it.
//!
//! `berth-shim <state dir>`: detaches from berthd, creates the container
//! process from the bundle in the state dir (stopped before exec), then
//! serves the control socket and logs output until the process exits;
//! see [`protocol`] for the files and the socket, [`spawn`] for how the
//! process is made, [`server`] for the loop.
//!
//! One process per container, single-threaded, no async runtime: its
//! memory is the point. No unwrap on anything from the kernel or a file.

pub mod cgroup;
pub mod crilog;
pub mod oci;
mod pause;
pub mod plan;
pub mod protocol;
pub mod rootfs;
pub mod seccomp;
pub mod server;
pub mod spawn;

use std::io::Write as _;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixListener;
use std::path::Path;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::{Mode, umask};

use protocol::{
    CONFIG_FILE, EXIT_FILE, ExitStatus, INIT_PID_FILE, SHIM_CONFIG_FILE, SHIM_PID_FILE,
    SOCKET_FILE, ShimConfig, ShimKind,
};

/// A problem found after detaching, when nobody reads stderr: appended to
/// `shim.log` in the state dir (kept small: a line per problem).
pub const DIAG_FILE: &str = "shim.log";

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parse {path}: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("bind {path}: {source}")]
    Bind {
        path: String,
        source: std::io::Error,
    },
    #[error("signalfd: {0}")]
    Signals(nix::errno::Errno),
    #[error(transparent)]
    Spawn(#[from] spawn::SpawnError),
    #[error(transparent)]
    Log(#[from] crilog::LogError),
}

pub fn diag(state_dir: &Path, msg: &str) {
    let path = state_dir.join(DIAG_FILE);
    // Bounded: a shim that keeps failing must not fill the disk.
    if std::fs::metadata(&path)
        .map(|m| m.len() > 64 * 1024)
        .unwrap_or(false)
    {
        return;
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let _ = writeln!(
            f,
            "{} {msg}",
            String::from_utf8_lossy(&crilog::now_timestamp())
        );
    }
}

/// Writes `bytes` to `dir/name` atomically: temp file, rename. No fsync:
/// the state dir is a tmpfs that a reboot empties (DESIGN: /run/berth), and
/// only a power loss, never a crash of berthd or the shim, would lose the
/// page cache; the rename alone keeps readers from seeing half a file. An
/// fsync here cost about a millisecond on every container start on a disk.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), ShimError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let err = |source| ShimError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok(())
}

pub fn write_exit(dir: &Path, exit: &ExitStatus) -> Result<(), ShimError> {
    let json = serde_json::to_vec(exit).map_err(|source| ShimError::Parse {
        path: EXIT_FILE.into(),
        source,
    })?;
    write_atomic(dir, EXIT_FILE, &json)
}

fn read_json<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> Result<T, ShimError> {
    let path = dir.join(name);
    let bytes = std::fs::read(&path).map_err(|source| ShimError::Read {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| ShimError::Parse {
        path: path.display().to_string(),
        source,
    })
}

/// `berth-shim --warm PAD`: started ahead by berthd, it detaches at once
/// (the process berthd started says `warm <pid>` of the detached one and
/// exits), waits for its state dir as one line on stdin, then runs as
/// `berth-shim <dir>` would after its detach; EOF (berthd gone, or
/// stopping) ends it. PAD (spaces) is room in its
/// command line for the dir, written there once it has one, so that `ps`
/// shows which container a shim serves as for one started cold.
pub const WARM_ARG: &str = "--warm";

/// The room a warm shim's command line keeps for its state dir.
pub const WARM_PAD: usize = 400;

/// Write `args` over this process's command line (its argv area, as
/// /proc/PID/cmdline and ps read it), NUL-padded; nothing if they do not
/// fit. Through /proc/self/mem: no unsafe, and only our own memory.
fn retitle(args: &[&std::ffi::OsStr]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    let stat = crate::kernel::read_proc("/proc/self/stat", 1024)?;
    let bad = || std::io::Error::other("unreadable /proc/self/stat");
    // Fields after the command's closing parenthesis start at field 3;
    // arg_start and arg_end are fields 48 and 49 (proc(5)).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .ok_or_else(bad)?
        .1
        .split_whitespace()
        .collect();
    let num = |i: usize| -> std::io::Result<u64> {
        fields.get(i).and_then(|f| f.parse().ok()).ok_or_else(bad)
    };
    let (start, end) = (num(45)?, num(46)?);
    let room = end.saturating_sub(start) as usize;
    let mut buf = Vec::with_capacity(room);
    for a in args {
        buf.extend_from_slice(a.as_encoded_bytes());
        buf.push(0);
    }
    if buf.len() > room {
        return Ok(());
    }
    buf.resize(room, 0);
    std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/mem")?
        .write_all_at(&buf, start)
}

/// The entry point of the `berth-shim` binary; returns the exit code.
pub fn main() -> i32 {
    let mut t0 = std::time::Instant::now();
    // The test switches of a failpoints build (berthd refuses FAILPOINTS
    // in any other, so there is nothing to report here).
    let _ = crate::failpoint::setup();
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() == 2 && args[1] == crate::namespaces::HELPER_ARG {
        return crate::namespaces::helper_main();
    }
    let mut detached = false;
    if args.len() == 3 && args[1] == WARM_ARG {
        // Told apart from the shims of containers while it waits.
        let _ = nix::sys::prctl::set_name(c"berth-shim-warm");
        // Detached now, while it waits: that fork is not on a container's
        // start. The process berthd started says which one waits (berthd
        // ends it by that pid if it does not go on EOF) and exits.
        spawn::close_inherited();
        match spawn::detach() {
            Ok(Some(child)) => {
                report(&format!("warm {child}"));
                return 0;
            }
            Ok(None) => detached = true,
            Err(e) => {
                report(&format!("error {e}"));
                return 1;
            }
        }
        let mut line = String::new();
        match std::io::stdin().read_line(&mut line) {
            Ok(n) if n > 1 && line.ends_with('\n') => {
                let _ = nix::sys::prctl::set_name(c"berth-shim");
                line.pop();
                args.truncate(2);
                args[1] = line.into();
                let _ = retitle(&[args[0].as_os_str(), args[1].as_os_str()]);
                // Its timings start when it has work.
                t0 = std::time::Instant::now();
            }
            // No dir: berthd went away or stopped; nothing was made.
            _ => return 0,
        }
    }
    let [_, state_dir] = args.as_slice() else {
        eprintln!("usage: berth-shim <state dir>");
        return 2;
    };
    let state_dir = match std::path::absolute(state_dir) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("berth-shim: {}: {e}", Path::new(state_dir).display());
            return 2;
        }
    };
    // Whatever berthd (or a test harness) let us inherit is not ours to
    // hold open for the container's lifetime.
    if !detached {
        spawn::close_inherited();
        match spawn::detach() {
            Ok(Some(_)) => return 0,
            Ok(None) => {}
            Err(e) => {
                report(&format!("error {e}"));
                return 1;
            }
        }
    }
    run_detached(&state_dir, t0)
}

/// One line to berthd on the start-up pipe (our stdout).
fn report(line: &str) {
    // SAFETY: fd 1 is the process's stdout for as long as it lives.
    let out = unsafe { BorrowedFd::borrow_raw(1) };
    let mut msg: String = line.replace('\n', " ");
    msg.push('\n');
    let _ = nix::unistd::write(out, msg.as_bytes());
}

/// What the shim made before `ok`, removed if it cannot say `ok`.
struct StartupGuard<'a> {
    dir: &'a Path,
    child: Option<nix::unistd::Pid>,
    armed: bool,
}

impl Drop for StartupGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(pid) = self.child {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        for f in [SOCKET_FILE, INIT_PID_FILE, SHIM_PID_FILE] {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
    }
}

/// `t0`: when main began (for the start's step timings).
fn run_detached(dir: &Path, t0: std::time::Instant) -> i32 {
    let detach_us = t0.elapsed().as_micros();
    let mut guard = StartupGuard {
        dir,
        child: None,
        armed: true,
    };
    let (mut monitor, steps) = match start(dir, &mut guard) {
        Ok(m) => m,
        Err(e) => {
            // Clean first: when berthd reads the line, nothing is left.
            drop(guard);
            report(&format!("error {e}"));
            return 1;
        }
    };
    guard.armed = false;
    // The pid, then the start's step timings for berthd's breakdown
    // (`name=micros`; berthd reads what it knows).
    report(&format!(
        "ok {} shim.detach={detach_us} shim.ready={} {steps}",
        monitor.pid,
        t0.elapsed().as_micros()
    ));
    // The log's create, off the container's create: a file it cannot
    // make fails Start, which says why.
    monitor.open_log();
    // Detached for good: berthd's pipe and our stdio go.
    if let Ok(null) = nix::fcntl::open("/dev/null", nix::fcntl::OFlag::O_RDWR, Mode::empty()) {
        for fd in 0..3 {
            // SAFETY: replaces stdio descriptors 0-2, which nothing else owns.
            unsafe {
                libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd);
            }
        }
    }
    // The spec and the set-up are gone: the loop gives their heap, stack
    // and code pages back once it has been idle a while.
    let _ = monitor.run();
    let _ = std::fs::remove_file(dir.join(SOCKET_FILE));
    0
}

/// Gives back the memory that start-up (or a request) used and the loop
/// will not: free heap, the stack below the caller, and code pages.
///
/// Code: set-up ran most of the binary (spec parsing, mounts, namespaces),
/// and a request runs its own share; those pages stay mapped, counted in
/// every shim's PSS, though the loop does not run them again. Dropping the
/// pages of the read-only segments lets the loop fault back in just what it
/// uses (from the page cache, shared by all shims). Only segments that
/// nothing writes: every executable segment (ours, libc's, the dynamic
/// linker's) and our own read-only data at offset 0; never a RELRO segment
/// (the dynamic linker wrote the GOT there) nor [vdso]. The kernel maps up
/// to 64 KiB around each fault ("fault-around"), so whatever runs between
/// the drop and the loop costs pages again: the ranges are collected first,
/// the map text freed, and the drops come last, back to back.
///
/// Stack: parsing the spec and setting up the container went deep; those
/// pages stay resident (and private to each shim) unless given back.
/// Everything below the current frame, less a margin, is unused now: it is
/// dropped, and faults back in as zero pages if the loop ever goes as deep.
#[inline(never)]
pub(crate) fn release_memory() {
    // SAFETY: malloc_trim only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
    let marker = 0u8;
    let sp = std::hint::black_box(&marker) as *const u8 as usize;
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    // maps, then pagemap for the code ranges only: a code page that was
    // written (a text relocation, a uprobe's or debugger's breakpoint) is
    // anonymous, and dropping it would bring back the file's bytes; such a
    // mapping is left alone. (smaps says that too, but generates a dozen
    // counters per mapping by walking all of them, heap and stack
    // included: it was a third of the shim's CPU at concurrency.)
    let Ok(maps) = crate::kernel::read_proc("/proc/self/maps", 8 * 1024) else {
        return;
    };
    let Ok(pagemap) = std::fs::File::open("/proc/self/pagemap") else {
        return;
    };
    let mut ranges = [(0usize, 0usize); 16];
    let mut n = 0;
    for line in maps.lines() {
        if n == ranges.len() {
            break;
        }
        let Some((lo, hi, kind)) = releasable(line, exe.to_str().unwrap_or_default(), sp) else {
            continue;
        };
        if kind == Releasable::Code && has_written_page(&pagemap, lo, hi) {
            continue;
        }
        ranges[n] = (lo, hi);
        n += 1;
    }
    drop(pagemap);
    drop(maps);
    drop(exe);
    for &(lo, hi) in &ranges[..n] {
        // SAFETY: each range is either a private file mapping that nothing
        // has written (no anonymous page in it: code, or our own read-only
        // data at offset 0, without relocations: the shim is not PIE),
        // whose pages fault in again from the file; or the part of this
        // thread's stack at least STACK_MARGIN below the live frame, where
        // nothing live is (no signal handler runs on this stack) and which
        // stays mapped, to refault as zeroes.
        unsafe {
            libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_DONTNEED);
        }
    }
}

/// What [`release_memory`] keeps of the stack below its own frame: its
/// callees (madvise) run there.
const STACK_MARGIN: usize = 4 * 1024;

#[derive(Debug, PartialEq, Eq)]
enum Releasable {
    Code,
    Stack,
}

/// Whether a page of [lo, hi) is anonymous (present or swapped without
/// the file-page bit), from /proc/self/pagemap; true where it cannot
/// tell. Never inlined: its buffer is a frame below release_memory's,
/// gone by the time the stack below that frame is dropped.
#[inline(never)]
fn has_written_page(pagemap: &std::fs::File, lo: usize, hi: usize) -> bool {
    use std::os::unix::fs::FileExt as _;
    let mut buf = [0u8; 4096];
    let (mut page, end) = (lo / PAGE, hi / PAGE);
    while page < end {
        let want = ((end - page) * 8).min(buf.len());
        let got = match pagemap.read_at(&mut buf[..want], (page * 8) as u64) {
            Ok(got) if got > 0 && got % 8 == 0 => got,
            _ => return true,
        };
        if written_in_pagemap(&buf[..got]) {
            return true;
        }
        page += got / 8;
    }
    false
}

const PAGE: usize = 4096;

/// Whether one of these /proc/PID/pagemap entries (8 bytes each, native
/// order) is a page that is not the file's: present (bit 63) or swapped
/// (bit 62), and not a file page (bit 61).
fn written_in_pagemap(entries: &[u8]) -> bool {
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    const FILE: u64 = 1 << 61;
    entries.chunks_exact(8).any(|e| {
        let e = u64::from_ne_bytes(e.try_into().unwrap_or_default());
        e & (PRESENT | SWAPPED) != 0 && e & FILE == 0
    })
}

/// The part of one /proc/self/maps line whose pages can be dropped:
/// executable file mappings, the executable's read-only data at offset 0,
/// and the stack below `sp` less [`STACK_MARGIN`].
fn releasable(line: &str, exe: &str, sp: usize) -> Option<(usize, usize, Releasable)> {
    // 00200000-0029b000 r--p 00000000 fe:00 123 /path/berth-shim
    let mut f = line.split_whitespace();
    let (range, perms, offset) = (f.next()?, f.next()?, f.next()?);
    let path = f.nth(2).unwrap_or_default();
    let (lo, hi) = range.split_once('-')?;
    let (lo, hi) = (
        usize::from_str_radix(lo, 16).ok()?,
        usize::from_str_radix(hi, 16).ok()?,
    );
    if path == "[stack]" {
        let top = sp.saturating_sub(STACK_MARGIN) & !4095;
        return (sp >= lo && sp < hi && top > lo).then_some((lo, top, Releasable::Stack));
    }
    if !path.starts_with('/') {
        return None;
    }
    let at_zero = offset.trim_start_matches('0').is_empty();
    (perms == "r-xp" || (path == exe && perms == "r--p" && at_zero)).then_some((
        lo,
        hi,
        Releasable::Code,
    ))
}

// Never inlined: its deep frame (the spec, the plan) must lie below the
// loop's, where release_memory can give it back.
#[inline(never)]
/// The monitor of the new container, and the start's step timings
/// (`name=micros ...`).
fn start(dir: &Path, guard: &mut StartupGuard<'_>) -> Result<(server::Monitor, String), ShimError> {
    // A slow start, in tests: calls that come meanwhile find no socket.
    crate::failpoint::hit("shim.start");
    let t = std::time::Instant::now();
    // SIGCHLD only through the signalfd; blocked before any child exists.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).map_err(ShimError::Signals)?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(ShimError::Signals)?;
    write_atomic(
        dir,
        SHIM_PID_FILE,
        std::process::id().to_string().as_bytes(),
    )?;
    let cfg: ShimConfig = read_json(dir, SHIM_CONFIG_FILE)?;
    let spec: oci_spec::runtime::Spec = read_json(dir, CONFIG_FILE)?;
    let pause = cfg.kind == ShimKind::Pause;
    let mut plan = spawn::ContainerPlan::from_spec(
        &spec,
        pause,
        cfg.tty,
        cfg.stdin,
        cfg.restrict_oom_score_adj,
    )?;
    drop(spec);
    // The filter berthd compiled: read now for the container process (it
    // is gone from view once that pivots), again by each exec.
    if cfg.seccomp {
        let path = dir.join(protocol::SECCOMP_FILE);
        plan.seccomp = Some(seccomp::read(&path).map_err(spawn::SpawnError::Child)?);
        plan.process.seccomp = Some(path);
    }
    // Opened after `ok` (see run_detached).
    let log = crilog::LogFile::deferred(if pause { "" } else { &cfg.log_path });
    // A RuntimeClass handler's runtime makes the container (never the
    // pause process, which is berth's own); the shim stays its monitor.
    let oci = match (&cfg.runtime, pause) {
        (Some(rt), false) => Some(oci::OciRuntime::new(rt.clone(), &cfg.id, dir)),
        _ => None,
    };
    let config_us = t.elapsed().as_micros();
    let created = match &oci {
        Some(rt) => rt.create(cfg.tty, cfg.stdin)?,
        None => spawn::create(&plan)?,
    };
    let create_us = t.elapsed().as_micros() - config_us;
    let steps = format!(
        "shim.config={config_us} shim.create={create_us} {}",
        created.steps
    );
    guard.child = Some(created.pid);
    write_atomic(dir, INIT_PID_FILE, created.pid.to_string().as_bytes())?;
    let sock = dir.join(SOCKET_FILE);
    let _ = std::fs::remove_file(&sock);
    // Bound by a relative name from inside the state dir: a socket path is
    // limited to 108 bytes and state dirs with 64-digit ids come close.
    std::env::set_current_dir(dir).map_err(|source| ShimError::Bind {
        path: dir.display().to_string(),
        source,
    })?;
    // Mode 0600 from the start: no window in which others may connect.
    let old = umask(Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(SOCKET_FILE);
    umask(old);
    let listener = listener.map_err(|source| ShimError::Bind {
        path: sock.display().to_string(),
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ShimError::Bind {
            path: sock.display().to_string(),
            source,
        })?;
    let own_pid_ns = plan.ns.pid == plan::PidNs::New;
    let spawn::ContainerPlan {
        cgroup, process, ..
    } = plan;
    let monitor = server::Monitor::new(server::MonitorParts {
        kind: cfg.kind,
        created,
        own_pid_ns,
        cgroup,
        exec_cfg: process,
        log,
        listener,
        sigfd,
        state_dir: dir.to_path_buf(),
        stdin_once: cfg.stdin_once,
        oci,
    });
    Ok((monitor, steps))
}

#[cfg(test)]
mod tests {
    use super::{PAGE, Releasable, STACK_MARGIN, has_written_page, releasable, written_in_pagemap};

    const EXE: &str = "/usr/bin/berth-shim";

    #[test]
    fn code_and_our_read_only_data_are_releasable() {
        let text = "00400000-005c6000 r-xp 00000000 fe:00 12 /usr/bin/berth-shim";
        assert_eq!(
            releasable(text, EXE, 0),
            Some((0x400000, 0x5c6000, Releasable::Code))
        );
        let libc =
            "7f0000000000-7f0000150000 r-xp 00028000 fe:00 9 /usr/lib/x86_64-linux-gnu/libc.so.6";
        assert_eq!(
            releasable(libc, EXE, 0),
            Some((0x7f0000000000, 0x7f0000150000, Releasable::Code))
        );
        let rodata = "00200000-0029b000 r--p 00000000 fe:00 12 /usr/bin/berth-shim";
        assert!(releasable(rodata, EXE, 0).is_some());
    }

    #[test]
    fn written_or_foreign_mappings_are_kept() {
        for line in [
            // RELRO: the dynamic linker wrote the GOT there.
            "005c6000-00604000 r--p 001c6000 fe:00 12 /usr/bin/berth-shim",
            // Another file's read-only data at offset 0 (may be relocated).
            "7f0000200000-7f0000226000 r--p 00000000 fe:00 9 /usr/lib/x86_64-linux-gnu/libc.so.6",
            "00604000-00606000 rw-p 00204000 fe:00 12 /usr/bin/berth-shim",
            "01000000-01008000 rw-p 00000000 00:00 0 [heap]",
            "7ffd000f0000-7ffd000f2000 r-xp 00000000 00:00 0 [vdso]",
            "7f0000300000-7f0000310000 rw-p 00000000 00:00 0",
            "garbage",
        ] {
            assert_eq!(releasable(line, EXE, 0), None, "{line}");
        }
    }

    #[test]
    fn code_with_written_pages_is_kept() {
        let entry = |bits: u64| bits.to_ne_bytes();
        let file_page = entry(1 << 63 | 1 << 61 | 0x1234);
        let absent = entry(0);
        let cow = entry(1 << 63 | 0x99);
        let swapped = entry(1 << 62);
        let clean: Vec<u8> = [file_page, absent, file_page].concat();
        assert!(!written_in_pagemap(&clean));
        assert!(written_in_pagemap(&[file_page, cow].concat()));
        assert!(written_in_pagemap(&[absent, swapped].concat()));
        assert!(!written_in_pagemap(&[]));
    }

    #[test]
    fn pagemap_tells_our_code_from_a_written_page() {
        let pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let code = maps
            .lines()
            .find_map(|l| releasable(l, exe.to_str().unwrap(), 0))
            .expect("a code mapping of this test binary");
        // Nothing writes this binary's code.
        assert!(!has_written_page(&pagemap, code.0, code.1), "{code:?}");
        // A private page that was written is anonymous.
        let mut page = vec![0u8; 3 * PAGE];
        page.iter_mut().step_by(PAGE).for_each(|b| *b = 1);
        let lo = (page.as_ptr() as usize).next_multiple_of(PAGE);
        assert!(has_written_page(&pagemap, lo, lo + PAGE));
    }

    #[test]
    fn stack_below_the_frame_less_the_margin() {
        let stack = "7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0 [stack]";
        let sp = 0x7ffc00020123;
        let top = (sp - STACK_MARGIN) & !4095;
        assert_eq!(
            releasable(stack, EXE, sp),
            Some((0x7ffc00000000, top, Releasable::Stack))
        );
        // A frame not on this stack, or too close to its end: nothing.
        assert_eq!(releasable(stack, EXE, 0x1000), None);
        assert_eq!(releasable(stack, EXE, 0x7ffc00000800), None);
    }
}
