//! berthd's Prometheus endpoint (`[metrics] address`, issue 16): scraped
//! over plain HTTP the way Prometheus does, after a workload of known
//! calls, its series must count exactly what happened: CRI calls by method
//! and code, the pull, pods and containers by state, shims, exits by
//! reason and OOM kills, network plugin calls.

mod common;

use std::time::Duration;

use berth_conformance::Env;
use berth_conformance::berthd::BerthdOptions;
use berth_conformance::cri::sandbox_config;
use berth_conformance::pods::*;
use berth_conformance::registry::Registry;
use berth_cri_api::v1::ContainerStatusRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A port free on loopback right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` over HTTP/1.0: (status line, body).
async fn get(port: u16, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connecting to the metrics endpoint");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("the endpoint answers within 10 s")
        .unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// The value of the series `series` (name and labels as exposed).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn must(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
}

#[tokio::test]
async fn the_metrics_endpoint_counts_what_berthd_did() {
    let port = free_port();
    let registry = Registry::start().await.expect("starting docker-registry");
    let env = Env::start_with(
        registry,
        BerthdOptions::default()
            .extra_top_level(&format!("metrics = {{ address = \"127.0.0.1:{port}\" }}")),
    )
    .await;

    let (status, body) = get(port, "/nope").await;
    assert!(status.contains("404"), "{status}: {body}");

    let image = push_busybox(&env, "metrics/busybox:1").await;
    let p = run_pod(&env, sandbox_config("metrics"), &image).await;
    let running = run(&env, &p, container(&p, "sleeper", &["sleep", "1000"])).await;
    let done = run(&env, &p, container(&p, "done", &["true"])).await;
    wait_exited(&env, &done, Duration::from_secs(30)).await;
    let hog = run(&env, &p, memory_hog(&p, "hog", 200)).await;
    let st = wait_exited(&env, &hog, Duration::from_secs(60)).await;
    assert_eq!(st.reason, "OOMKilled", "the hog is OOM-killed: {st:?}");
    sh(&env, &running, "true").await;
    let mut rt = env.cri.runtime.clone();
    let missing = rt
        .container_status(ContainerStatusRequest {
            container_id: "0".repeat(64),
            verbose: false,
        })
        .await;
    assert!(missing.is_err());

    let (status, text) = get(port, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    let calls = |m: &str, code: &str| {
        must(
            &text,
            &format!("berth_cri_requests_total{{method=\"{m}\",code=\"{code}\"}}"),
        )
    };
    assert_eq!(calls("RunPodSandbox", "OK"), 1.0);
    assert_eq!(calls("CreateContainer", "OK"), 3.0);
    assert_eq!(calls("StartContainer", "OK"), 3.0);
    assert!(calls("ExecSync", "OK") >= 1.0);
    assert_eq!(calls("ContainerStatus", "NotFound"), 1.0);
    assert_eq!(calls("PullImage", "OK"), 1.0);
    assert_eq!(
        must(
            &text,
            "berth_cri_request_duration_seconds_count{method=\"CreateContainer\"}"
        ),
        3.0
    );
    assert!(must(&text, "berth_image_pull_bytes_total") > 0.0);
    assert!(must(&text, "berth_image_layers_unpacked_total") >= 1.0);
    assert_eq!(must(&text, "berth_image_pull_duration_seconds_count"), 1.0);
    assert_eq!(must(&text, "berth_image_pull_failures_total"), 0.0);
    assert_eq!(must(&text, "berth_pods{state=\"READY\"}"), 1.0);
    assert_eq!(must(&text, "berth_containers{state=\"RUNNING\"}"), 1.0);
    assert_eq!(must(&text, "berth_containers{state=\"EXITED\"}"), 2.0);
    // The shims of this berthd, counted from /proc: the sleeper's and the
    // pod's pause (the exited containers' are gone).
    let procs: Vec<_> = env
        .snapshot()
        .live_processes()
        .into_iter()
        .filter(|p| p.name == "berth-shim" && !berth_conformance::leak::is_warm_shim(p))
        .collect();
    // The pause process is a berth-shim too (it never execs): a child of
    // its pod's shim, so not a monitor of its own.
    let ppid = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()?
                    .split_whitespace()
                    .nth(1)?
                    .parse::<i32>()
                    .ok()
            })
    };
    let pids: Vec<i32> = procs.iter().map(|p| p.pid).collect();
    let shims = procs
        .iter()
        .filter(|p| ppid(p.pid).is_none_or(|pp| !pids.contains(&pp)))
        .count();
    assert_eq!(
        shims, 2,
        "the sleeper's and the pause's shims run: {procs:#?}"
    );
    assert_eq!(must(&text, "berth_shims_running"), shims as f64);
    assert_eq!(
        must(&text, "berth_container_exits_total{reason=\"Completed\"}"),
        1.0
    );
    assert_eq!(
        must(&text, "berth_container_exits_total{reason=\"OOMKilled\"}"),
        1.0
    );
    assert_eq!(must(&text, "berth_container_oom_kills_total"), 1.0);
    assert_eq!(
        must(
            &text,
            "berth_network_plugin_duration_seconds_count{operation=\"setup\"}"
        ),
        1.0
    );
    // berthd's own per-step timings (issue 13): each step of the calls
    // above, counted once per call, inside the call's own time.
    let step = |name: &str, what: &str| {
        must(
            &text,
            &format!("berth_step_duration_seconds_{what}{{step=\"{name}\"}}"),
        )
    };
    for s in [
        "pod.dir",
        "pod.netns_pin",
        "pod.network",
        "pod.cgroup",
        "pod.state_write",
    ] {
        assert_eq!(step(s, "count"), 1.0, "{s}");
    }
    for s in [
        "container.dir_and_hold",
        "container.rootfs_and_cgroup",
        "container.rootfs_and_cgroup.rootfs",
        "container.rootfs_and_cgroup.cgroup",
        "container.rootfs_and_cgroup.user",
        "container.rootfs_and_cgroup.spec",
        "container.hold_commit",
        "container.record_write",
        "container.shim_begin",
        "start.await_create",
        "start.shim_start",
        "start.state_write",
        "init.mounts",
        "init.pivot_root",
        "init.exec_prepare",
    ] {
        assert_eq!(step(s, "count"), 3.0, "{s}");
    }
    // The shim's own steps come for the pause too, if the pod has one.
    assert!(step("shim.spawn", "count") >= 3.0);
    assert!(step("shim.create", "count") >= 3.0);
    assert!(step("container.rootfs_and_cgroup.rootfs", "sum") > 0.0);
    let create = must(
        &text,
        "berth_cri_request_duration_seconds_sum{method=\"CreateContainer\"}",
    );
    // The rootfs, the user and the spec one after another, the cgroup
    // beside them: each within their step, which is within the call.
    let whole = step("container.rootfs_and_cgroup", "sum");
    let in_turn = step("container.rootfs_and_cgroup.rootfs", "sum")
        + step("container.rootfs_and_cgroup.user", "sum")
        + step("container.rootfs_and_cgroup.spec", "sum");
    assert!(
        in_turn <= whole && step("container.rootfs_and_cgroup.cgroup", "sum") <= whole,
        "parts of container.rootfs_and_cgroup: {in_turn} s in turn of {whole} s"
    );
    assert!(
        whole < create,
        "steps are parts of CreateContainer: {whole} s of {create} s"
    );
    assert!(step("init.mounts", "sum") < step("shim.create", "sum"));
    // CreateContainer answers once the shim is started and the record
    // durable; berthd's wait for the shim's start line is after that, so
    // not a part of the call's own time.
    assert!(
        step("container.record_write", "sum") < create,
        "inside CreateContainer"
    );
    assert!(step("shim.create", "sum") < step("shim.ready", "sum"));

    remove_pod(&env, p).await;
    let (_, text) = get(port, "/metrics").await;
    for s in [
        "stop_pod.network",
        "stop_pod.release",
        "remove_pod.state_delete",
    ] {
        assert!(
            must(
                &text,
                &format!("berth_step_duration_seconds_count{{step=\"{s}\"}}")
            ) >= 1.0,
            "{s}"
        );
    }
    assert_eq!(must(&text, "berth_pods{state=\"READY\"}"), 0.0, "{text}");
    assert_eq!(must(&text, "berth_shims_running"), 0.0);
    assert!(
        must(
            &text,
            "berth_network_plugin_duration_seconds_count{operation=\"teardown\"}"
        ) >= 1.0
    );
    env.finish().await;
}
