//! Exec, Attach and PortForward through berthd's streaming server, with
//! the clients kubelet, crictl and kubectl use (here: the WebSocket
//! executor of client-go and port-forward over a WebSocket).

mod common;

use std::time::Duration;

use berth_conformance::Env;
use berth_conformance::cri::sandbox_config;
use berth_conformance::pods::*;
use berth_conformance::streaming::{WsExec, ws_connect, ws_remotecommand};
use berth_cri_api::v1::{AttachRequest, ExecRequest, PortForwardRequest};
use common::*;
use tonic::Code;

async fn exec_url(env: &Env, id: &str, cmd: &[&str], tty: bool, stdin: bool) -> String {
    let mut rt = env.cri.runtime.clone();
    rt.exec(ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    })
    .await
    .expect("Exec")
    .into_inner()
    .url
}

fn v5() -> Vec<String> {
    vec!["v5.channel.k8s.io".into()]
}

async fn running(env: &Env, name: &str) -> (Pod, String) {
    let image = push_busybox(env, "stream/busybox:1").await;
    let p = run_pod(env, sandbox_config(name), &image).await;
    let id = run(env, &p, container(&p, "main", &["sleep", "3600"])).await;
    (p, id)
}

#[tokio::test]
async fn exec_over_websocket_v5_reports_output_and_exit_codes() {
    let env = Env::start().await;
    let (p, id) = running(&env, "ws-exec").await;
    let url = exec_url(
        &env,
        &id,
        &["sh", "-c", "echo out; echo err >&2"],
        false,
        false,
    )
    .await;
    assert!(
        url.starts_with("http://127.0.0.1:") && url.contains("/exec/"),
        "{url}"
    );
    let how = WsExec {
        protocols: v5(),
        timeout: Some(Duration::from_secs(20)),
        ..Default::default()
    };
    let out = ws_remotecommand(&url, &how).await.unwrap();
    assert_eq!(out.protocol.as_deref(), Some("v5.channel.k8s.io"));
    assert_eq!(out.stdout_text(), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(out.exit_code().unwrap(), 0);
    for code in [1, 137] {
        let cmd = format!("exit {code}");
        let url = exec_url(&env, &id, &["sh", "-c", &cmd], false, false).await;
        let out = ws_remotecommand(&url, &how).await.unwrap();
        assert_eq!(out.exit_code().unwrap(), code, "{out:?}");
    }
    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn exec_stdin_is_delivered_and_closed_with_v5() {
    let env = Env::start().await;
    let (p, id) = running(&env, "ws-stdin").await;
    let url = exec_url(
        &env,
        &id,
        &["sh", "-c", "cat; echo end-of-input"],
        false,
        true,
    )
    .await;
    let how = WsExec {
        protocols: v5(),
        stdin: Some(b"line one\nline two\n".to_vec()),
        timeout: Some(Duration::from_secs(20)),
        ..Default::default()
    };
    let out = ws_remotecommand(&url, &how).await.unwrap();
    assert_eq!(out.stdout_text(), "line one\nline two\nend-of-input\n");
    assert_eq!(out.exit_code().unwrap(), 0);
    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn exec_with_a_tty_gets_the_size_the_client_sends() {
    let env = Env::start().await;
    let (p, id) = running(&env, "ws-tty").await;
    let url = exec_url(
        &env,
        &id,
        &["sh", "-c", "stty size; [ -t 1 ] && echo tty"],
        true,
        true,
    )
    .await;
    let how = WsExec {
        protocols: v5(),
        resize: Some((123, 45)),
        timeout: Some(Duration::from_secs(20)),
        ..Default::default()
    };
    let out = ws_remotecommand(&url, &how).await.unwrap();
    let text = out.stdout_text();
    assert!(text.contains("45 123"), "rows columns: {text:?}");
    assert!(text.contains("tty"), "{text:?}");
    assert!(out.stderr.is_empty(), "a tty has one output stream");
    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn older_websocket_protocols_still_work() {
    let env = Env::start().await;
    let (p, id) = running(&env, "ws-old").await;
    for proto in [
        "v4.channel.k8s.io",
        "v4.base64.channel.k8s.io",
        "channel.k8s.io",
    ] {
        let url = exec_url(&env, &id, &["echo", "hi"], false, false).await;
        let how = WsExec {
            protocols: vec![proto.into()],
            timeout: Some(Duration::from_secs(20)),
            ..Default::default()
        };
        let out = ws_remotecommand(&url, &how).await.unwrap();
        assert_eq!(out.protocol.as_deref(), Some(proto));
        assert_eq!(out.stdout_text(), "hi\n", "{proto}");
        if proto.starts_with("v4") {
            assert_eq!(out.exit_code().unwrap(), 0, "{proto}");
        }
    }
    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn tokens_are_single_use_and_bad_requests_are_refused_before_a_url() {
    let env = Env::start().await;
    let (p, id) = running(&env, "ws-tokens").await;
    let url = exec_url(&env, &id, &["true"], false, false).await;
    let how = WsExec {
        protocols: v5(),
        timeout: Some(Duration::from_secs(20)),
        ..Default::default()
    };
    ws_remotecommand(&url, &how).await.expect("first use");
    let again = ws_connect(&url, &["v5.channel.k8s.io"]).await;
    assert!(again.is_err(), "a used token must be refused");
    let unknown = url.rsplit_once('/').unwrap().0.to_string() + "/not-a-token";
    assert!(ws_connect(&unknown, &["v5.channel.k8s.io"]).await.is_err());
    let url = exec_url(&env, &id, &["true"], false, false).await;
    let bad_proto = ws_connect(&url, &["v9.channel.k8s.io"]).await;
    assert!(bad_proto.is_err(), "an unsupported protocol is refused");

    let mut rt = env.cri.runtime.clone();
    let e = rt
        .exec(ExecRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into()],
            tty: true,
            stderr: true,
            stdout: true,
            ..Default::default()
        })
        .await;
    expect_code(e, &[Code::InvalidArgument], "tty with stderr");
    let e = rt
        .exec(ExecRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            ..Default::default()
        })
        .await;
    expect_code(e, &[Code::InvalidArgument], "no stream at all");
    let e = rt
        .exec(ExecRequest {
            container_id: "no-such-container".into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await;
    expect_code(e, &[Code::NotFound], "unknown container");
    let created = create(&env, &p, container(&p, "idle", &["true"]))
        .await
        .unwrap();
    let e = rt
        .attach(AttachRequest {
            container_id: created,
            stdout: true,
            ..Default::default()
        })
        .await;
    expect_code(
        e,
        &[Code::FailedPrecondition],
        "attach to a container not running",
    );
    let e = rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: "no-such-pod".into(),
            port: vec![80],
        })
        .await;
    expect_code(e, &[Code::NotFound], "unknown pod");
    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn attach_relays_stdin_and_output_and_stdin_once_ends_the_container() {
    let env = Env::start().await;
    let image = push_busybox(&env, "stream/busybox:1").await;
    let p = run_pod(&env, sandbox_config("ws-attach"), &image).await;
    let mut c = container(
        &p,
        "reader",
        &["sh", "-c", "while read l; do echo got-$l; done; echo bye"],
    );
    c.stdin = true;
    c.stdin_once = true;
    let id = run(&env, &p, c).await;
    let mut rt = env.cri.runtime.clone();
    let url = rt
        .attach(AttachRequest {
            container_id: id.clone(),
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        })
        .await
        .expect("Attach")
        .into_inner()
        .url;
    let how = WsExec {
        protocols: v5(),
        stdin: Some(b"one\ntwo\n".to_vec()),
        timeout: Some(Duration::from_secs(20)),
        ..Default::default()
    };
    let out = ws_remotecommand(&url, &how).await.unwrap();
    assert_eq!(out.stdout_text(), "got-one\ngot-two\nbye\n");
    let st = wait_exited(&env, &id, Duration::from_secs(10)).await;
    assert_eq!(st.exit_code, 0);
    // What the attach saw went to the log too.
    let log = std::fs::read_to_string(p.logs.path().join("reader.log")).unwrap();
    assert!(log.contains("got-two"), "{log}");
    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn port_forward_over_websocket_reaches_the_pods_loopback() {
    let env = Env::start().await;
    let image = push_busybox(&env, "stream/busybox:1").await;
    let p = run_pod(&env, sandbox_config("ws-pf"), &image).await;
    let script = "mkdir -p /www && echo served-through-port-forward > /www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /www";
    let _web = run(&env, &p, container(&p, "web", &["sh", "-c", script])).await;
    let mut rt = env.cri.runtime.clone();
    let get = b"GET / HTTP/1.0\r\nHost: x\r\n\r\n";
    let mut answer = String::new();
    for _ in 0..50 {
        let url = rt
            .port_forward(PortForwardRequest {
                pod_sandbox_id: p.id.clone(),
                port: vec![8080],
            })
            .await
            .expect("PortForward")
            .into_inner()
            .url;
        let (data, err) =
            berth_conformance::streaming::ws_portforward(&url, 8080, get, Duration::from_secs(5))
                .await
                .unwrap();
        answer = String::from_utf8_lossy(&data).into_owned();
        if answer.contains("served-through-port-forward") {
            break;
        }
        assert!(err.is_empty() || err.contains("connect"), "{err}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answer.contains("served-through-port-forward"), "{answer}");
    // A port nothing listens on: reported on the error channel.
    let url = rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: p.id.clone(),
            port: vec![8081],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (_, err) =
        berth_conformance::streaming::ws_portforward(&url, 8081, get, Duration::from_secs(3))
            .await
            .unwrap();
    assert!(err.contains("8081"), "the refusal names the port: {err:?}");
    remove_pod(&env, p).await;
    env.finish().await;
}

// ---- SPDY/3.1: kubelet's and crictl's default transport ----

use berth_conformance::streaming::{
    SpdyExec, spdy_connect, spdy_connect_with, spdy_portforward, spdy_remotecommand,
};

fn spdy(stdin: Option<&[u8]>, tty: bool) -> SpdyExec {
    SpdyExec {
        protocols: SpdyExec::client_go(),
        tty,
        stdout: true,
        stderr: !tty,
        stdin: stdin.map(<[u8]>::to_vec),
        resize: if tty { vec![(100, 30)] } else { vec![] },
        timeout: Some(Duration::from_secs(20)),
        flow_control: false,
    }
}

#[tokio::test]
async fn exec_over_spdy_reports_output_stdin_exit_codes_and_the_tty_size() {
    let env = Env::start().await;
    let (p, id) = running(&env, "spdy-exec").await;
    let url = exec_url(
        &env,
        &id,
        &["sh", "-c", "echo out; echo err >&2"],
        false,
        false,
    )
    .await;
    let out = spdy_remotecommand(&url, &spdy(None, false)).await.unwrap();
    assert_eq!(out.protocol.as_deref(), Some("v4.channel.k8s.io"));
    assert_eq!(out.stdout_text(), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(out.exit_code().unwrap(), 0);
    for code in [1, 137] {
        let cmd = format!("exit {code}");
        let url = exec_url(&env, &id, &["sh", "-c", &cmd], false, false).await;
        let out = spdy_remotecommand(&url, &spdy(None, false)).await.unwrap();
        assert_eq!(out.exit_code().unwrap(), code, "{out:?}");
    }
    let url = exec_url(&env, &id, &["cat"], false, true).await;
    let out = spdy_remotecommand(&url, &spdy(Some(b"piped through\n"), false))
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "piped through\n");
    // A SPDY/3.1 peer that grants windows: held to them both ways, 1 MiB
    // each way (16 of its 64 KiB windows) passes.
    let url = exec_url(&env, &id, &["cat"], false, true).await;
    let big: Vec<u8> = (0..1 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    let how = SpdyExec {
        flow_control: true,
        ..spdy(Some(&big), false)
    };
    let out = spdy_remotecommand(&url, &how).await.unwrap();
    assert_eq!(out.stdout.len(), big.len());
    assert!(out.stdout == big, "cat gave back what it got");
    assert_eq!(out.exit_code().unwrap(), 0);
    let url = exec_url(&env, &id, &["sh", "-c", "stty size"], true, true).await;
    let out = spdy_remotecommand(&url, &spdy(Some(b""), true))
        .await
        .unwrap();
    assert!(
        out.stdout_text().contains("30 100"),
        "{:?}",
        out.stdout_text()
    );
    // Older protocol versions.
    for proto in ["v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"] {
        let url = exec_url(&env, &id, &["echo", "old"], false, false).await;
        let how = SpdyExec {
            protocols: vec![proto.into()],
            ..spdy(None, false)
        };
        let out = spdy_remotecommand(&url, &how).await.unwrap();
        assert_eq!(out.protocol.as_deref(), Some(proto));
        assert_eq!(out.stdout_text(), "old\n", "{proto}");
        assert!(
            out.error.is_empty(),
            "{proto}: success writes nothing before v4"
        );
    }
    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn a_client_that_vanishes_mid_exec_leaves_no_process() {
    let env = Env::start().await;
    let (p, id) = running(&env, "spdy-vanish").await;
    let url = exec_url(&env, &id, &["sleep", "4711"], false, false).await;
    let (session, _) = spdy_connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
    let _err = session
        .open(berth_stream::spdy::frame::Headers::new().with("streamType", "error"))
        .await
        .unwrap();
    let _out = session
        .open(berth_stream::spdy::frame::Headers::new().with("streamType", "stdout"))
        .await
        .unwrap();
    let _stderr = session
        .open(berth_stream::spdy::frame::Headers::new().with("streamType", "stderr"))
        .await
        .unwrap();
    let running_sleep = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c.starts_with(b"sleep\x004711"))
        })
    };
    let t = std::time::Instant::now();
    while !running_sleep() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the exec never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The client goes away without a word.
    drop((_err, _out, _stderr, session));
    let t = std::time::Instant::now();
    while running_sleep() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the exec outlived its client"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn attach_over_spdy_and_port_forward_with_fifty_connections() {
    let env = Env::start().await;
    let image = push_busybox(&env, "stream/busybox:1").await;
    let p = run_pod(&env, sandbox_config("spdy-pf"), &image).await;
    let script = "mkdir -p /www && echo served-by-spdy > /www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /www";
    let _web = run(&env, &p, container(&p, "web", &["sh", "-c", script])).await;
    let mut rt = env.cri.runtime.clone();
    let url = rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: p.id.clone(),
            port: vec![8080],
        })
        .await
        .expect("PortForward")
        .into_inner()
        .url;
    // This one as a flow-controlled SPDY/3.1 peer; the 100 MiB one below
    // speaks as client-go.
    let (session, proto) = spdy_connect_with(&url, &["portforward.k8s.io"], true)
        .await
        .unwrap();
    assert_eq!(proto.as_deref(), Some("portforward.k8s.io"));
    let get = b"GET / HTTP/1.0\r\nHost: x\r\n\r\n";
    // The server may not listen yet: the first request retries.
    let t = std::time::Instant::now();
    loop {
        let (answer, err) = spdy_portforward(&session, 8080, 0, get).await.unwrap();
        if String::from_utf8_lossy(&answer).contains("served-by-spdy") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{err}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let many = (1..=50).map(|i| {
        let session = session.clone();
        async move { spdy_portforward(&session, 8080, i, get).await }
    });
    for r in futures::future::join_all(many).await {
        let (answer, err) = r.unwrap();
        assert!(
            String::from_utf8_lossy(&answer).contains("served-by-spdy"),
            "{err}"
        );
    }
    let (_, err) = spdy_portforward(&session, 8081, 99, get).await.unwrap();
    assert!(
        err.contains("8081"),
        "a closed port is reported on the error stream: {err:?}"
    );
    let (answer, _) = spdy_portforward(&session, 8080, 100, get).await.unwrap();
    assert!(
        String::from_utf8_lossy(&answer).contains("served-by-spdy"),
        "the session goes on after a refused port"
    );
    session.close().await;

    // The same through client-go's SPDY-in-WebSocket tunnel.
    let url = rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: p.id.clone(),
            port: vec![8080],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let tunnel = berth_conformance::streaming::ws_spdy_tunnel(&url)
        .await
        .unwrap();
    let (answer, err) = spdy_portforward(&tunnel, 8080, 1, get).await.unwrap();
    assert!(
        String::from_utf8_lossy(&answer).contains("served-by-spdy"),
        "{err}"
    );
    tunnel.close().await;

    // Attach over SPDY to a container with stdin.
    let mut c = container(&p, "reader", &["sh", "-c", "read l; echo got-$l"]);
    c.stdin = true;
    c.stdin_once = true;
    let id = run(&env, &p, c).await;
    let url = rt
        .attach(AttachRequest {
            container_id: id.clone(),
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let out = spdy_remotecommand(&url, &spdy(Some(b"it\n"), false))
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "got-it\n");
    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn spdy_sessions_answer_pings_and_refuse_an_unknown_version() {
    let env = Env::start().await;
    let (p, id) = running(&env, "spdy-misc").await;
    let url = exec_url(&env, &id, &["sleep", "2"], false, false).await;
    let (session, _) = spdy_connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
    // kubelet's client pings every few seconds; so does this one.
    let rtt = tokio::time::timeout(Duration::from_secs(5), session.ping())
        .await
        .expect("the PING is answered")
        .unwrap();
    assert!(rtt < Duration::from_secs(5));
    session.close().await;
    let url = exec_url(&env, &id, &["true"], false, false).await;
    let e = spdy_connect(&url, &["v9.channel.k8s.io"]).await;
    let msg = format!("{:#}", e.expect_err("an unknown version is refused"));
    assert!(msg.contains("403"), "{msg}");
    remove_pod(&env, p).await;
    env.finish().await;
}

#[tokio::test]
async fn a_tty_container_attached_twice_resizes_and_a_hundred_mib_pass_one_port_forward() {
    let env = Env::start().await;
    let image = push_busybox(&env, "stream/busybox:1").await;
    let p = run_pod(&env, sandbox_config("spdy-tty"), &image).await;
    let mut c = container(&p, "term", &["sh"]);
    c.tty = true;
    c.stdin = true;
    let id = run(&env, &p, c).await;
    let mut rt = env.cri.runtime.clone();
    let attach_url = |rt: &mut berth_cri_api::v1::runtime_service_client::RuntimeServiceClient<
        tonic::transport::Channel,
    >,
                      stdin: bool| {
        let id = id.clone();
        let mut rt = rt.clone();
        async move {
            rt.attach(AttachRequest {
                container_id: id,
                stdin,
                stdout: true,
                tty: true,
                ..Default::default()
            })
            .await
            .expect("Attach")
            .into_inner()
            .url
        }
    };
    // A watcher (output only) and a typist (stdin, a resize), at once.
    let watch = {
        let url = attach_url(&mut rt, false).await;
        tokio::spawn(async move {
            let how = SpdyExec {
                stdin: None,
                resize: vec![],
                ..spdy(None, true)
            };
            spdy_remotecommand(&url, &how).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = attach_url(&mut rt, true).await;
    let how = SpdyExec {
        resize: vec![(77, 22)],
        ..spdy(Some(b"stty size; exit 4\n"), true)
    };
    let typed = spdy_remotecommand(&url, &how).await.unwrap();
    assert!(
        typed.stdout_text().contains("22 77"),
        "{:?}",
        typed.stdout_text()
    );
    let watched = watch.await.unwrap().unwrap();
    assert!(
        watched.stdout_text().contains("22 77"),
        "the second attacher sees it too: {:?}",
        watched.stdout_text()
    );
    assert_eq!(
        wait_exited(&env, &id, Duration::from_secs(10))
            .await
            .exit_code,
        4
    );

    // 100 MiB through one port-forward connection.
    let script = "mkdir -p /www && head -c 104857600 /dev/zero > /www/big && exec httpd -f -p 127.0.0.1:8080 -h /www";
    let _web = run(&env, &p, container(&p, "web", &["sh", "-c", script])).await;
    let url = rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: p.id.clone(),
            port: vec![8080],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (session, _) = spdy_connect(&url, &["portforward.k8s.io"]).await.unwrap();
    let t = std::time::Instant::now();
    let mut n = 0;
    let answer = loop {
        n += 1;
        let (answer, _) = spdy_portforward(&session, 8080, n, b"GET /big HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        if answer.len() >= 100 << 20 {
            break answer;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{} bytes",
            answer.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let body = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(answer.len() - body, 100 << 20, "every byte of the file");
    assert!(answer[body..].iter().all(|&b| b == 0));
    session.close().await;
    remove_pod(&env, p).await;
    env.finish().await;
}
