//! Streaming requests to a real berth-shim: an exec whose stdio comes to
//! the caller as descriptors (SCM_RIGHTS), and attach to the container's
//! own stdio (output frames on the connection, stdin as a descriptor).
//! Root only.

mod shim_support;

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use berth_runtime::shim::protocol::{
    ATTACH_STDERR, ATTACH_STDOUT, Request, Response, ShimKind, Status,
};
use berth_runtime::shim_client::{ShimStream, open_stream};
use shim_support::*;
use tokio::io::AsyncReadExt;

fn require_root() {
    assert!(
        is_root(),
        "this test needs root (it makes namespaces, mounts and cgroups); run the suite as root"
    );
}

fn exec_req(args: &[&str], tty: bool, stdin: bool) -> Request {
    Request::ExecStream {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: None,
        cwd: None,
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
        size: tty.then_some((91, 17)),
    }
}

fn file(fd: OwnedFd) -> std::fs::File {
    std::fs::File::from(fd)
}

/// Reads `f` (a non-blocking pipe or pty master) until EOF, EIO (a pty
/// whose other side closed) or `within`.
fn read_all(f: &mut std::fs::File, within: Duration) -> Vec<u8> {
    let t = Instant::now();
    let mut out = Vec::new();
    let mut b = [0u8; 4096];
    while t.elapsed() < within {
        match f.read(&mut b) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => break,
        }
    }
    out
}

/// The exit line after the answer.
async fn exit_code(s: &mut ShimStream) -> i32 {
    let mut line = std::mem::take(&mut s.rest);
    while !line.contains(&b'\n') {
        let mut b = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(10), s.conn.read(&mut b))
            .await
            .expect("the exit comes")
            .unwrap();
        assert!(n > 0, "connection closed before the exit");
        line.extend_from_slice(&b[..n]);
    }
    let end = line.iter().position(|&b| b == b'\n').unwrap();
    match serde_json::from_slice(&line[..end]).unwrap() {
        Response::Exec(r) => r.exit_code,
        other => panic!("exit: {other:?}"),
    }
}

fn running(
    name: &str,
    args: &[&str],
    edit: impl FnOnce(&mut berth_runtime::shim::protocol::ShimConfig),
) -> Bundle {
    let mut b = Bundle::new(name);
    b.write_cfg(&b.spec(args), edit);
    b.run_shim().unwrap();
    assert_eq!(b.start(), Response::Ok);
    let t = Instant::now();
    while b.state().status != Status::Running {
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(10));
    }
    b
}

#[tokio::test]
async fn a_streaming_exec_hands_its_pipes_over_and_reports_its_exit() {
    require_root();
    let b = running("xs-pipes", &["sleep", "1000"], |_| {});
    let mut s = open_stream(
        &b.dir,
        &exec_req(&["sh", "-c", "cat; echo err >&2; exit 7"], false, true),
    )
    .await
    .unwrap();
    assert!(
        matches!(s.answer, Response::Streaming { pid } if pid > 0),
        "{:?}",
        s.answer
    );
    assert_eq!(s.fds.len(), 3, "stdin, stdout, stderr");
    let mut fds = std::mem::take(&mut s.fds).into_iter();
    let (mut stdin, mut stdout, mut stderr) = (
        file(fds.next().unwrap()),
        file(fds.next().unwrap()),
        file(fds.next().unwrap()),
    );
    stdin.write_all(b"through the pipe\n").unwrap();
    drop(stdin); // EOF: cat ends
    assert_eq!(
        read_all(&mut stdout, Duration::from_secs(5)),
        b"through the pipe\n"
    );
    assert_eq!(read_all(&mut stderr, Duration::from_secs(5)), b"err\n");
    assert_eq!(exit_code(&mut s).await, 7);
}

#[tokio::test]
async fn a_tty_exec_gets_a_pty_of_the_asked_size() {
    require_root();
    let b = running("xs-tty", &["sleep", "1000"], |_| {});
    let mut s = open_stream(
        &b.dir,
        &exec_req(
            &[
                "sh",
                "-c",
                "stty size; [ -t 0 ] && [ -t 1 ] && echo is-a-tty",
            ],
            true,
            true,
        ),
    )
    .await
    .unwrap();
    assert_eq!(s.fds.len(), 1, "the pty alone");
    let mut pty = file(s.fds.pop().unwrap());
    let out = String::from_utf8_lossy(&read_all(&mut pty, Duration::from_secs(5))).into_owned();
    assert!(out.contains("17 91"), "rows columns: {out:?}");
    assert!(out.contains("is-a-tty"), "{out:?}");
    assert_eq!(exit_code(&mut s).await, 0);
}

#[tokio::test]
async fn an_exec_whose_caller_hangs_up_is_killed() {
    require_root();
    let b = running("xs-hangup", &["sleep", "1000"], |_| {});
    let s = open_stream(&b.dir, &exec_req(&["sleep", "4242"], false, false))
        .await
        .unwrap();
    let Response::Streaming { pid } = s.answer else {
        panic!("{:?}", s.answer)
    };
    assert!(alive(pid));
    drop(s);
    let t = Instant::now();
    while alive(pid) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "exec {pid} outlived its caller"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        b.state().status,
        Status::Running,
        "the container is not touched"
    );
}

/// Reads attach frames until `done(stdout, stderr)` holds for what came
/// on each stream (or panics).
async fn frames_until(s: &mut ShimStream, done: impl Fn(&str, &str) -> bool) -> (String, String) {
    let mut buf = std::mem::take(&mut s.rest);
    let (mut out, mut err) = (String::new(), String::new());
    let t = Instant::now();
    loop {
        while buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < 5 + len {
                break;
            }
            let text = String::from_utf8_lossy(&buf[5..5 + len]).into_owned();
            match buf[0] {
                ATTACH_STDOUT => out.push_str(&text),
                ATTACH_STDERR => err.push_str(&text),
                other => panic!("frame of stream {other}"),
            }
            buf.drain(..5 + len);
        }
        if done(&out, &err) {
            s.rest = buf;
            return (out, err);
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "stdout {out:?} stderr {err:?}"
        );
        let mut b = [0u8; 4096];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), s.conn.read(&mut b)).await
        {
            assert!(n > 0, "attach closed; stdout {out:?} stderr {err:?}");
            buf.extend_from_slice(&b[..n]);
        }
    }
}

#[tokio::test]
async fn attach_writes_stdin_and_reads_both_streams_while_the_log_goes_on() {
    require_root();
    let script = "while read l; do echo out-$l; echo err-$l >&2; done";
    let b = running("at-pipes", &["sh", "-c", script], |c| c.stdin = true);
    let attach = Request::Attach {
        stdin: true,
        stdout: true,
        stderr: true,
    };
    let mut a = open_stream(&b.dir, &attach).await.unwrap();
    assert_eq!(
        a.answer,
        Response::Attached {
            tty: false,
            stdin: true
        }
    );
    // A second attacher, output only.
    let mut watcher = open_stream(
        &b.dir,
        &Request::Attach {
            stdin: false,
            stdout: true,
            stderr: false,
        },
    )
    .await
    .unwrap();
    assert!(watcher.fds.is_empty());
    let mut stdin = file(a.fds.pop().expect("stdin"));
    stdin.write_all(b"one\n").unwrap();
    frames_until(&mut a, |o, e| {
        o.contains("out-one") && e.contains("err-one")
    })
    .await;
    let (_, err) = frames_until(&mut watcher, |o, _| o.contains("out-one")).await;
    assert!(err.is_empty(), "the watcher asked for stdout only: {err:?}");
    drop(a);
    drop(stdin);
    // Without stdin_once the container keeps its stdin after the attach.
    let mut again = open_stream(&b.dir, &attach).await.unwrap();
    let mut stdin = file(again.fds.pop().expect("stdin again"));
    stdin.write_all(b"two\n").unwrap();
    frames_until(&mut again, |o, _| o.contains("out-two")).await;
    let log = b.wait_log(5, |l| l.contains("out-two"));
    assert!(log.contains("out-one") && log.contains("err-one"), "{log}");
}

#[tokio::test]
async fn stdin_once_closes_stdin_when_the_first_attach_ends() {
    require_root();
    let b = running("at-once", &["sh", "-c", "cat; echo stdin-closed"], |c| {
        c.stdin = true;
        c.stdin_once = true;
    });
    let mut a = open_stream(
        &b.dir,
        &Request::Attach {
            stdin: true,
            stdout: true,
            stderr: false,
        },
    )
    .await
    .unwrap();
    let mut stdin = file(a.fds.pop().expect("stdin"));
    stdin.write_all(b"hi\n").unwrap();
    frames_until(&mut a, |o, _| o.contains("hi")).await;
    // The client's stdin ends: berthd closes its copy and shuts its side
    // of the attach down; the attach itself goes on, and sees the rest.
    drop(stdin);
    tokio::io::AsyncWriteExt::shutdown(&mut a.conn)
        .await
        .unwrap();
    frames_until(&mut a, |o, _| o.contains("stdin-closed")).await;
    let exit = b.wait();
    assert_eq!(exit.code, 0);
    assert!(b.log_text().contains("stdin-closed"));
}

#[tokio::test]
async fn a_tty_container_is_attached_through_its_pty() {
    require_root();
    let mut b = Bundle::new("at-tty");
    b.write_with(&b.spec(&["sh"]), ShimKind::Container, true);
    b.run_shim().unwrap();
    assert_eq!(b.start(), Response::Ok);
    let mut a = open_stream(
        &b.dir,
        &Request::Attach {
            stdin: true,
            stdout: true,
            stderr: false,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        a.answer,
        Response::Attached {
            tty: true,
            stdin: true
        }
    );
    let mut pty = file(a.fds.pop().expect("the pty"));
    pty.write_all(b"echo via-$((40+2))\n").unwrap();
    frames_until(&mut a, |o, _| o.contains("via-42")).await;
    pty.write_all(b"exit 5\n").unwrap();
    assert_eq!(b.wait().code, 5);
}

fn pss_kib(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// What 100 streaming execs and an attach leave in an idle shim: once the
/// loop is idle again it gives back what they made it touch (code, heap,
/// stack), so its PSS comes back to about where it was. Printed for the
/// notes with --nocapture (`berth-bench streaming` measures the release
/// shim among others).
#[tokio::test]
async fn a_shim_after_a_hundred_execs_and_an_attach_gives_its_memory_back() {
    require_root();
    let b = running(
        "xs-pss",
        &["sh", "-c", "while read l; do echo $l; done"],
        |c| c.stdin = true,
    );
    let shim = b.shim_pid.unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = pss_kib(shim);
    for _ in 0..100 {
        let mut s = open_stream(&b.dir, &exec_req(&["true"], false, false))
            .await
            .unwrap();
        assert_eq!(exit_code(&mut s).await, 0);
    }
    let mut a = open_stream(
        &b.dir,
        &Request::Attach {
            stdin: true,
            stdout: true,
            stderr: false,
        },
    )
    .await
    .unwrap();
    let mut stdin = file(a.fds.pop().unwrap());
    stdin.write_all(b"hello\n").unwrap();
    frames_until(&mut a, |o, _| o.contains("hello")).await;
    drop((stdin, a));
    std::thread::sleep(Duration::from_millis(500));
    let after = pss_kib(shim);
    println!(
        "berth-shim PSS: {before} KiB idle, {after} KiB after 100 streaming execs and an attach"
    );
    assert!(
        after <= before + 128,
        "the shim kept {} KiB of what the execs and the attach used",
        after.saturating_sub(before)
    );
}

/// An attach client slower than the container loses nothing (the
/// container's output waits for it); one that takes nothing for 10 s is
/// dropped and the container and its log go on.
#[tokio::test]
async fn a_slow_attacher_gets_everything_and_a_hung_one_is_dropped() {
    require_root();
    let b = running(
        "at-slow",
        &[
            "sh",
            "-c",
            "read x; head -c 20971520 /dev/zero; echo; echo second-part-done; read y; head -c 8388608 /dev/zero; echo all-done; sleep 1000",
        ],
        |c| c.stdin = true,
    );
    let mut a = open_stream(
        &b.dir,
        &Request::Attach {
            stdin: true,
            stdout: true,
            stderr: false,
        },
    )
    .await
    .unwrap();
    let mut stdin = file(a.fds.pop().unwrap());
    stdin.write_all(b"go\n").unwrap();
    // Read 20 MiB slowly: 64 KiB at a time with pauses.
    let mut buf = std::mem::take(&mut a.rest);
    let mut payload = 0usize;
    let t = Instant::now();
    while payload < 20 << 20 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{payload} bytes so far"
        );
        while buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < 5 + len {
                break;
            }
            payload += buf[5..5 + len].iter().filter(|&&c| c == 0).count();
            buf.drain(..5 + len);
        }
        if payload >= 20 << 20 {
            break;
        }
        let mut chunk = vec![0u8; 64 << 10];
        let n = s_read(&mut a, &mut chunk, payload).await;
        buf.extend_from_slice(&chunk[..n]);
        if payload % (4 << 20) < (64 << 10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(payload, 20 << 20, "every byte, none dropped");
    // Now hang: read nothing while the container writes 8 MiB more.
    stdin.write_all(b"more\n").unwrap();
    let log = b.wait_log(30, |l| l.contains("all-done"));
    assert!(log.contains("second-part-done"), "the log went on");
    // The hung client was dropped: what the socket still holds, then EOF
    // (the container sleeps on, so only a drop ends the stream).
    let mut rest = vec![0u8; 1 << 20];
    let t = Instant::now();
    loop {
        assert!(t.elapsed() < Duration::from_secs(20), "never dropped");
        if s_read(&mut a, &mut rest, payload).await == 0 {
            break;
        }
    }
}

async fn s_read(s: &mut ShimStream, buf: &mut [u8], so_far: usize) -> usize {
    tokio::time::timeout(Duration::from_secs(20), s.conn.read(buf))
        .await
        .unwrap_or_else(|_| panic!("no attach output after {so_far} bytes"))
        .unwrap()
}
