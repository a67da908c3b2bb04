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
