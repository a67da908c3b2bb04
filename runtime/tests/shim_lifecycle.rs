//! berth-shim end to end: the real binary, a busybox root filesystem, a
//! cgroup v1 per test, checked through the control socket, the CRI log and
//! exit.json. Needs root (fails otherwise).

mod shim_support;

use std::time::{Duration, Instant};

use berth_runtime::shim::protocol::{ExecResult, Request, Response, ShimKind, Status};
use oci_spec::runtime::LinuxNamespaceType;
use shim_support::*;

macro_rules! require_root {
    () => {
        assert!(
            is_root(),
            "this test needs root (it makes namespaces, mounts and cgroups); run the suite as root"
        );
    };
}

fn exec(b: &Bundle, args: &[&str], timeout_ms: u64) -> ExecResult {
    match b.request(&Request::Exec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: None,
        cwd: None,
        timeout_ms,
    }) {
        Response::Exec(r) => r,
        other => panic!("Exec: {other:?}"),
    }
}

#[test]
fn created_then_started_container_logs_and_exits_with_its_code() {
    require_root!();
    let mut b = Bundle::new("exit3");
    b.write(
        &b.spec(&["sh", "-c", "echo hello; echo oops >&2; exit 3"]),
        ShimKind::Container,
    );
    let pid = b.run_shim().unwrap();
    let shim = b.shim_pid.unwrap();
    assert_ne!(
        ppid(shim),
        Some(std::process::id() as i32),
        "the shim is detached from its starter"
    );
    let state = b.state();
    assert_eq!(state.status, Status::Created);
    assert_eq!(state.pid, pid);
    assert_eq!(state.started_at_ns, 0);
    let cg = b.cgroup.as_ref().unwrap();
    assert!(
        cg.procs().contains(&pid),
        "the process is in its cgroup before start"
    );
    assert!(b.log_text().is_empty(), "nothing runs before Start");

    assert_eq!(b.start(), Response::Ok);
    let exit = b.wait();
    assert_eq!(exit.code, 3);
    assert_eq!(exit.signal, None);
    assert!(exit.started_at_ns > 0 && exit.finished_at_ns >= exit.started_at_ns);
    assert!(!exit.oom_killed);
    assert!(b.wait_shim_gone(5), "the shim exits after its container");
    assert_eq!(b.exit_file(), Some(exit));
    assert!(!b.dir.join("shim.sock").exists());

    let log = b.log_text();
    assert_eq!(log_contents(&log, "stdout"), vec!["hello"]);
    assert_eq!(log_contents(&log, "stderr"), vec!["oops"]);
    for line in log.lines() {
        // 2016-10-06T00:17:09.669794202Z stdout F hello
        let ts = line.split(' ').next().unwrap();
        assert_eq!(ts.len(), 30, "{line}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{line}");
        assert_eq!(line.split(' ').nth(2), Some("F"), "{line}");
    }
}

#[test]
fn sigkill_is_reported_as_137() {
    require_root!();
    let mut b = Bundle::new("kill");
    b.write(&b.spec(&["sleep", "1000"]), ShimKind::Container);
    b.run_shim().unwrap();
    assert_eq!(b.start(), Response::Ok);
    assert_status(&b, Status::Running);
    let exit = b.kill_all();
    assert_eq!((exit.code, exit.signal), (137, Some(9)));
    assert!(b.wait_shim_gone(5));
}

#[test]
fn a_created_container_can_be_killed_before_it_starts() {
    require_root!();
    let mut b = Bundle::new("killcreated");
    b.write(&b.spec(&["sh", "-c", "echo never"]), ShimKind::Container);
    b.run_shim().unwrap();
    assert_eq!(
        b.request(&Request::Kill {
            signal: 9,
            all: false
        }),
        Response::Ok
    );
    let exit = b.wait();
    assert_eq!(exit.code, 137);
    assert_eq!(exit.started_at_ns, 0);
    assert!(b.wait_shim_gone(5));
    assert!(b.log_text().is_empty());
}

#[test]
fn exec_sync_returns_output_and_exit_code_and_its_timeout_kills() {
    require_root!();
    let mut b = Bundle::new("exec");
    b.write(&b.spec(&["sleep", "1000"]), ShimKind::Container);
    b.run_shim().unwrap();
    assert_eq!(b.start(), Response::Ok);

    let r = exec(&b, &["sh", "-c", "echo out; echo err >&2; exit 5"], 0);
    assert_eq!(r.exit_code, 5);
    assert_eq!(r.stdout, b"out\n");
    assert_eq!(r.stderr, b"err\n");
    assert!(!r.timed_out);

    // The exec joins the container's namespaces: same PID namespace
    // (sleep is its PID 1), same hostname, same root.
    let r = exec(
        &b,
        &[
            "sh",
            "-c",
            "cat /proc/1/cmdline; echo; hostname; ls /bin/busybox",
        ],
        0,
    );
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "sleep\u{0}1000\u{0}\nberth-test\n/bin/busybox\n"
    );

    let started = Instant::now();
    let r = exec(&b, &["sleep", "100"], 300);
    assert!(r.timed_out);
    assert_eq!(r.exit_code, 137);
    assert!(started.elapsed() < Duration::from_secs(10));

    let r = exec(&b, &["/no/such/binary"], 0);
    assert_eq!(r.exit_code, 127);
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("exec failed"),
        "{r:?}"
    );

    // The loop served all of that while the container kept running.
    assert_status(&b, Status::Running);
    assert_eq!(b.kill_all().code, 137);
}

#[test]
fn the_container_sees_its_own_namespaces_and_a_locked_down_proc_and_sys() {
    require_root!();
    let mut b = Bundle::new("isolation");
    let script = "echo pid=$$; hostname; \
        touch /sys/x 2>/dev/null && echo sys-writable || echo sys-readonly; \
        echo kcore=$(test -e /proc/kcore && wc -c < /proc/kcore || echo absent); \
        echo timer_list=$(wc -c < /proc/timer_list) firmware=$(ls /sys/firmware | wc -l); \
        (echo 1 > /proc/sys/kernel/domainname) 2>/dev/null && echo procsys-writable || echo procsys-readonly; \
        ls /dev/null /dev/zero /dev/urandom /dev/tty /dev/pts/ptmx >/dev/null && echo devices-ok; \
        test -d /dev/shm && test -d /dev/mqueue && echo dev-mounts-ok; \
        test -L /dev/fd && echo dev-links-ok; \
        echo net=$(ls /sys/class/net); \
        cat /proc/self/oom_score_adj";
    b.write(&b.spec(&["sh", "-c", script]), ShimKind::Container);
    b.run_shim().unwrap();
    assert_eq!(b.start(), Response::Ok);
    assert_eq!(b.wait().code, 0);
    let out = log_contents(&b.log_text(), "stdout");
    assert_eq!(out[0], "pid=1", "{out:?}");
    assert_eq!(out[1], "berth-test");
    assert_eq!(out[2], "sys-readonly");
    // This VM's kernel has no /proc/kcore; where it has one it reads empty.
    assert!(out[3] == "kcore=0" || out[3] == "kcore=absent", "{out:?}");
    assert_eq!(
        out[4], "timer_list=0 firmware=0",
        "masked file and directory"
    );
    assert_eq!(out[5], "procsys-readonly");
    assert_eq!(out[6], "devices-ok");
    assert_eq!(out[7], "dev-mounts-ok");
    assert_eq!(out[8], "dev-links-ok");
    assert_eq!(out[9], "net=lo", "a new network namespace has only lo");
    // This VM refuses negative oom_score_adj; restrict_oom_score_adj keeps
    // the current value instead of failing.
    assert!(out[10].parse::<i32>().unwrap() >= -998, "{out:?}");
}

#[test]
fn a_symlink_in_the_image_cannot_send_a_mount_to_the_host() {
    require_root!();
    let host = std::env::temp_dir().join(unique("berth-shim-host-target"));
    std::fs::create_dir_all(&host).unwrap();
    let mut b = Bundle::new("symlink");
    // /escape -> <host dir>, absolute: resolved inside the root it does
    // not exist, so the mount is refused.
    std::os::unix::fs::symlink(&host, b.rootfs.join("escape")).unwrap();
    // /inside -> /etc, which exists in the image: the mount lands there.
    std::os::unix::fs::symlink("/etc", b.rootfs.join("inside")).unwrap();
    let mut spec = b.spec(&["sh", "-c", "test -d /etc/sub && echo contained"]);
    let mut mounts = spec.mounts().clone().unwrap();
    let tmpfs = |dest: &str| {
        oci_spec::runtime::MountBuilder::default()
            .destination(dest)
            .typ("tmpfs")
            .source("tmpfs")
            .build()
            .unwrap()
    };
    mounts.push(tmpfs("/escape/sub"));
    spec.set_mounts(Some(mounts.clone()));
    b.write(&spec, ShimKind::Container);
    let err = b.run_shim().unwrap_err();
    assert!(err.contains("escape"), "{err}");
    assert!(!host.join("sub").exists(), "nothing was made on the host");
    assert!(!b.dir.join("shim.sock").exists() && !b.dir.join("shim.pid").exists());
    assert!(b.wait_shim_gone(5));

    mounts.pop();
    mounts.push(tmpfs("/inside/sub"));
    spec.set_mounts(Some(mounts));
    b.write(&spec, ShimKind::Container);
    b.run_shim().unwrap();
    assert_eq!(b.start(), Response::Ok);
    assert_eq!(b.wait().code, 0);
    assert_eq!(log_contents(&b.log_text(), "stdout"), vec!["contained"]);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(host.to_str().unwrap()));
    std::fs::remove_dir_all(&host).unwrap();
}

#[test]
fn the_container_keeps_running_and_logging_when_berthd_hangs_up() {
    require_root!();
    let mut b = Bundle::new("detached");
    b.write(
        &b.spec(&[
            "sh",
            "-c",
            "i=0; while [ $i -lt 20 ]; do echo line$i; i=$((i+1)); sleep 0.05; done",
        ]),
        ShimKind::Container,
    );
    b.run_shim().unwrap();
    // berthd asks to start and dies before reading the answer; another
    // asks to wait and dies too.
    send_and_hang_up(&b.dir.join("shim.sock"), &Request::Start);
    send_and_hang_up(&b.dir.join("shim.sock"), &Request::Wait);
    // A restarted berthd finds it running.
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.state().status != Status::Running {
        assert!(Instant::now() < deadline, "never reported running");
        std::thread::sleep(Duration::from_millis(5));
    }
    let log = b.wait_log(20, |t| t.contains("line19"));
    let want: Vec<String> = (0..20).map(|i| format!("line{i}")).collect();
    assert_eq!(log_contents(&log, "stdout"), want);
    assert!(b.wait_shim_gone(10));
    assert_eq!(b.exit_file().unwrap().code, 0);
}

#[test]
fn reopen_log_after_rotation_writes_a_new_file() {
    require_root!();
    let mut b = Bundle::new("rotate");
    b.write(
        &b.spec(&[
            "sh",
            "-c",
            "i=0; while true; do echo n$i; i=$((i+1)); sleep 0.02; done",
        ]),
        ShimKind::Container,
    );
    b.run_shim().unwrap();
    assert_eq!(b.start(), Response::Ok);
    b.wait_log(10, |t| t.lines().count() >= 3);
    let rotated = b.log.with_extension("log.1");
    std::fs::rename(&b.log, &rotated).unwrap();
    assert_eq!(b.request(&Request::ReopenLog), Response::Ok);
    b.wait_log(10, |t| t.lines().count() >= 3);
    b.kill_all();
    let old = log_contents(&std::fs::read_to_string(&rotated).unwrap(), "stdout");
    let new = log_contents(&b.log_text(), "stdout");
    // Nothing lost or repeated across the rotation.
    let all: Vec<String> = old.into_iter().chain(new).collect();
    let want: Vec<String> = (0..all.len()).map(|i| format!("n{i}")).collect();
    assert_eq!(all, want);
}

#[test]
fn a_pause_shim_holds_a_pid_namespace_that_a_container_joins() {
    require_root!();
    let mut pause = Bundle::new("pause");
    let mut spec = pause.spec(&[]);
    spec.set_process(None);
    spec.set_root(None);
    spec.set_mounts(None);
    pause.write(&spec, ShimKind::Pause);
    let pause_pid = pause.run_shim().unwrap();
    assert_status(&pause, Status::Running);
    assert_eq!(pause.start(), Response::Ok, "Start on a pause is a no-op");

    let mut c = Bundle::new("inpod");
    let mut namespaces = new_namespaces();
    namespaces[0] = ns(
        LinuxNamespaceType::Pid,
        Some(format!("/proc/{pause_pid}/ns/pid")),
    );
    c.write(
        &container_spec(
            &c.rootfs,
            &[
                "sh",
                "-c",
                "echo me=$$; tr '\\0' ' ' < /proc/1/cmdline; echo; sleep 0.2 & wait",
            ],
            c.cgroup_name().as_deref(),
            namespaces,
        ),
        ShimKind::Container,
    );
    c.run_shim().unwrap();
    assert_eq!(c.start(), Response::Ok);
    assert_eq!(c.wait().code, 0);
    let out = log_contents(&c.log_text(), "stdout");
    assert_ne!(out[0], "me=1", "{out:?}");
    assert!(out[1].contains("berth-shim"), "the pause is PID 1: {out:?}");

    // Not PID 1 of its own namespace: Kill { all } reaches every process of
    // the container's cgroup, a background one too.
    let mut d = Bundle::new("inpod2");
    let mut namespaces = new_namespaces();
    namespaces[0] = ns(
        LinuxNamespaceType::Pid,
        Some(format!("/proc/{pause_pid}/ns/pid")),
    );
    d.write(
        &container_spec(
            &d.rootfs,
            &["sh", "-c", "sleep 1000 & echo bg; exec sleep 1000"],
            d.cgroup_name().as_deref(),
            namespaces,
        ),
        ShimKind::Container,
    );
    d.run_shim().unwrap();
    assert_eq!(d.start(), Response::Ok);
    d.wait_log(10, |t| t.contains("bg"));
    let cg = d.cgroup.as_ref().unwrap();
    assert_eq!(cg.procs().len(), 2);
    assert_eq!(
        d.request(&Request::Kill {
            signal: 15,
            all: true
        }),
        Response::Ok
    );
    assert_eq!(d.wait().code, 143);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cg.procs().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        cg.procs().is_empty(),
        "the background process got the signal too"
    );

    // SIGTERM is ignored, SIGKILL ends it.
    assert_eq!(
        pause.request(&Request::Kill {
            signal: 15,
            all: false
        }),
        Response::Ok
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_status(&pause, Status::Running);
    assert_eq!(
        pause.request(&Request::Kill {
            signal: 9,
            all: false
        }),
        Response::Ok
    );
    assert_eq!(pause.wait().code, 137);
}

#[test]
fn a_missing_binary_fails_the_shims_start_as_runcs_create_does() {
    require_root!();
    for program in ["no-such-program", "/no/such/program"] {
        let mut b = Bundle::new("enoent");
        b.write(&b.spec(&[program, "x"]), ShimKind::Container);
        let e = b.run_shim().expect_err("the shim's start");
        assert!(
            e.contains("exec failed") && e.contains(program),
            "{program}: {e}"
        );
        if program.starts_with('/') {
            assert!(e.contains("No such file or directory"), "{e}");
        }
    }
}

#[test]
fn an_execve_that_fails_after_start_is_the_containers_exit_and_in_its_log() {
    require_root!();
    let mut b = Bundle::new("enoexec");
    // Executable, but no format the kernel runs (no ELF, no #!): execve
    // says ENOEXEC, which only the execve itself finds.
    let junk = b.rootfs.join("junk");
    std::fs::write(&junk, b"\0\0\0\0 not a program").unwrap();
    std::fs::set_permissions(&junk, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    b.write(&b.spec(&["/junk"]), ShimKind::Container);
    b.run_shim()
        .expect("the shim's start: /junk is there and executable");
    assert_eq!(
        b.start(),
        Response::Ok,
        "Start answers once the init is told"
    );
    let exit = b.wait();
    assert_eq!(exit.code, 126, "{exit:?}");
    let err = log_contents(&b.log_text(), "stderr");
    assert!(
        err.iter()
            .any(|l| l.contains("exec failed") && l.contains("/junk")),
        "{err:?}"
    );
}

#[test]
fn a_bad_bundle_is_an_error_line_and_leaves_nothing() {
    require_root!();
    let mut b = Bundle::new("bad");
    let mut spec = b.spec(&["true"]);
    spec.set_root(Some(
        oci_spec::runtime::RootBuilder::default()
            .path(b.dir.join("no-such-rootfs"))
            .build()
            .unwrap(),
    ));
    b.write(&spec, ShimKind::Container);
    let err = b.run_shim().unwrap_err();
    assert!(err.contains("no-such-rootfs"), "{err}");
    assert!(b.wait_shim_gone(5));
    for f in ["shim.sock", "shim.pid", "init.pid", "exit.json"] {
        assert!(!b.dir.join(f).exists(), "{f} left behind");
    }
    assert!(b.cgroup.as_ref().unwrap().procs().is_empty());
}

#[test]
fn a_tty_container_logs_its_terminal_as_stdout_and_can_be_resized() {
    require_root!();
    let mut b = Bundle::new("tty");
    b.write_with(
        &b.spec(&["sh", "-c", "tty; stty size; echo done"]),
        ShimKind::Container,
        true,
    );
    b.run_shim().unwrap();
    assert_eq!(
        b.request(&Request::Resize {
            width: 100,
            height: 40
        }),
        Response::Ok
    );
    assert_eq!(b.start(), Response::Ok);
    assert_eq!(b.wait().code, 0);
    let log = b.log_text();
    assert_eq!(
        log_contents(&log, "stdout"),
        // The host pty, bound on /dev/console as runc does.
        vec!["/dev/console", "40 100", "done"],
        "{log}"
    );
    assert!(log_contents(&log, "stderr").is_empty());
}

#[test]
fn an_oom_kill_is_recorded() {
    require_root!();
    let mut b = Bundle::new("oom");
    let cg = b.cgroup.as_ref().unwrap();
    let mem = cg
        .dirs
        .iter()
        .find(|d| d.starts_with("/sys/fs/cgroup/memory"))
        .unwrap();
    std::fs::write(mem.join("memory.limit_in_bytes"), "16777216").unwrap();
    let _ = std::fs::write(mem.join("memory.memsw.limit_in_bytes"), "16777216");
    // A shell variable of 64 MB in a 16 MB cgroup.
    b.write(
        &b.spec(&[
            "sh",
            "-c",
            "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived",
        ]),
        ShimKind::Container,
    );
    b.run_shim().unwrap();
    assert_eq!(b.start(), Response::Ok);
    let exit = b.wait();
    assert!(exit.oom_killed, "{exit:?}: {}", b.log_text());
}

#[test]
fn a_flood_of_output_and_a_long_line_are_logged_completely_in_order() {
    require_root!();
    let mut b = Bundle::new("flood");
    b.write(
        &b.spec(&[
            "sh",
            "-c",
            "seq 1 100000; head -c 40000 /dev/zero | tr '\\0' x; echo; echo end",
        ]),
        ShimKind::Container,
    );
    b.run_shim().unwrap();
    assert_eq!(b.start(), Response::Ok);
    assert_eq!(b.wait().code, 0);
    let log = b.log_text();
    let records: Vec<(&str, &str)> = log
        .lines()
        .map(|l| {
            let mut p = l.splitn(4, ' ');
            let _ts = p.next();
            let _stream = p.next();
            (p.next().unwrap(), p.next().unwrap_or(""))
        })
        .collect();
    assert_eq!(records.len(), 100_000 + 3 + 1);
    for (i, (tag, content)) in records[..100_000].iter().enumerate() {
        assert_eq!((*tag, *content), ("F", (i + 1).to_string().as_str()));
    }
    // 40000 bytes: two partial records of 16 KiB and a full one.
    let long = &records[100_000..100_003];
    assert_eq!(long[0].0, "P");
    assert_eq!(long[0].1.len(), 16384);
    assert_eq!(long[1].0, "P");
    assert_eq!(long[2], ("F", "x".repeat(40_000 - 2 * 16384).as_str()));
    assert_eq!(records[100_003], ("F", "end"));
}

/// A tmpfs, unmounted on drop.
struct TinyFs(std::path::PathBuf);

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_full_disk_drops_output_instead_of_blocking_the_container() {
    require_root!();
    let mut b = Bundle::new("diskfull");
    let logs = b.log.parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&logs).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &logs,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=64k"),
    )
    .unwrap();
    let fs = TinyFs(logs);
    b.write(
        &b.spec(&["sh", "-c", "seq 1 200000; echo done >&2; exit 7"]),
        ShimKind::Container,
    );
    b.run_shim().unwrap();
    assert_eq!(b.start(), Response::Ok);
    let started = Instant::now();
    assert_eq!(b.wait().code, 7);
    assert!(started.elapsed() < Duration::from_secs(20));
    let log = b.log_text();
    assert!(log.len() <= 64 * 1024);
    assert!(log.contains(" stdout F 1\n"), "what fitted was logged");
    // Unmount before the bundle's leak check.
    drop(fs);
    drop(b);
}
