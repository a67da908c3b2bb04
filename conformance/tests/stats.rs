//! ContainerStats, ListContainerStats, PodSandboxStats and
//! ListPodSandboxStats as kubelet's CRI stats provider reads them (its
//! eviction manager every 10 s, /stats/summary, metrics-server): values
//! checked against the cgroup's own files and against work the container
//! does.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_conformance::Env;
use berth_conformance::cri::sandbox_config;
use berth_conformance::pods::*;
use berth_cri_api::v1::{
    ContainerStatsFilter, ContainerStatsRequest, ListContainerStatsRequest,
    ListMetricDescriptorsRequest, ListPodSandboxMetricsRequest, ListPodSandboxStatsRequest,
    PodSandboxStatsFilter, PodSandboxStatsRequest,
};
use common::*;
use tonic::Code;

const MIB: u64 = 1 << 20;

async fn list(env: &Env, filter: ContainerStatsFilter) -> Vec<berth_cri_api::v1::ContainerStats> {
    env.cri
        .runtime
        .clone()
        .list_container_stats(ListContainerStatsRequest {
            filter: Some(filter),
        })
        .await
        .expect("ListContainerStats")
        .into_inner()
        .stats
}

async fn one(env: &Env, id: &str) -> berth_cri_api::v1::ContainerStats {
    env.cri
        .runtime
        .clone()
        .container_stats(ContainerStatsRequest {
            container_id: id.into(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .expect("stats")
}

fn v(x: &Option<berth_cri_api::v1::UInt64Value>) -> u64 {
    x.as_ref().map(|v| v.value).expect("a value")
}

/// The memory cgroup file `v1`/`v2` of the container's init.
fn memory_file(pid: i32, v1: &str, v2: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrls, path) = (f.next(), f.next()?, f.next()?);
        if ctrls.split(',').any(|c| c == "memory") {
            let t = std::fs::read_to_string(format!("/sys/fs/cgroup/memory{path}/{v1}")).ok()?;
            return t.trim().parse().ok();
        }
    }
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let t = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/{v2}")).ok()?;
    t.trim().parse().ok()
}

#[tokio::test]
async fn memory_cpu_and_the_writable_layer_show_what_the_container_does() {
    let env = Env::start().await;
    let image = push_busybox(&env, "stats/busybox:1").await;
    let p = run_pod(&env, sandbox_config("stats"), &image).await;
    // 64 MiB held by tail (one line, no newline, until end of file).
    let hog = run(
        &env,
        &p,
        container(
            &p,
            "hog",
            &[
                "sh",
                "-c",
                "(head -c 67108864 /dev/zero; sleep 3600) | tail",
            ],
        ),
    )
    .await;
    let spinner = run(
        &env,
        &p,
        container(&p, "spinner", &["sh", "-c", "while :; do :; done"]),
    )
    .await;
    let writer = run(
        &env,
        &p,
        container(
            &p,
            "writer",
            &[
                "sh",
                "-c",
                "head -c 5242880 /dev/urandom > /big; sleep 3600",
            ],
        ),
    )
    .await;

    // Memory: the working set holds the 64 MiB, and agrees with the cgroup.
    let pid = container_pid(&env, &hog).await;
    let t = Instant::now();
    let s = loop {
        let s = one(&env, &hog).await;
        let m = s.memory.as_ref().unwrap();
        if v(&m.working_set_bytes) >= 64 * MIB {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "working set {m:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let m = s.memory.as_ref().unwrap();
    let usage_file = memory_file(pid, "memory.usage_in_bytes", "memory.current").unwrap();
    let usage = v(&m.usage_bytes);
    assert!(
        usage.abs_diff(usage_file) < 8 * MIB,
        "usage {usage} against the cgroup's {usage_file}"
    );
    assert!(v(&m.working_set_bytes) <= usage);
    assert!(v(&m.rss_bytes) >= 64 * MIB, "{m:?}");
    assert!(v(&m.page_faults) > 0);
    assert!(
        m.available_bytes.is_none(),
        "no limit, nothing to be available against"
    );
    assert_eq!(s.attributes.as_ref().unwrap().id, hog);
    assert_eq!(
        s.attributes
            .as_ref()
            .unwrap()
            .labels
            .get("name")
            .map(String::as_str),
        Some("hog")
    );

    // CPU: the spinner uses about one core between two samples.
    one(&env, &spinner).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = one(&env, &spinner).await.cpu.unwrap();
    let cores = v(&c.usage_nano_cores) as f64 / 1e9;
    assert!(
        (0.5..=1.3).contains(&cores),
        "a busy loop uses about a core: {cores}"
    );
    assert!(v(&c.usage_core_nano_seconds) > 1_000_000_000);

    // The writable layer: the 5 MiB file (the cache is walked again at
    // most every few seconds).
    let t = Instant::now();
    loop {
        let w = one(&env, &writer).await.writable_layer.unwrap();
        if v(&w.used_bytes) >= 5 * MIB {
            assert!(v(&w.inodes_used) >= 2, "{w:?}");
            let fs = env
                .cri
                .image
                .clone()
                .image_fs_info(berth_cri_api::v1::ImageFsInfoRequest {})
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                w.fs_id.unwrap().mountpoint,
                fs.image_filesystems[0].fs_id.as_ref().unwrap().mountpoint,
                "the writable layer is on the filesystem ImageFsInfo names"
            );
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "writable layer {w:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Filters: by id, by pod, by label; exited containers are left out.
    let all = list(&env, ContainerStatsFilter::default()).await;
    assert_eq!(all.len(), 3, "{all:?}");
    let by_id = list(
        &env,
        ContainerStatsFilter {
            id: hog.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_id.len(), 1);
    let by_pod = list(
        &env,
        ContainerStatsFilter {
            pod_sandbox_id: p.id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_pod.len(), 3);
    let by_label = list(
        &env,
        ContainerStatsFilter {
            label_selector: HashMap::from([("name".to_string(), "spinner".to_string())]),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        by_label
            .iter()
            .map(|s| s.attributes.as_ref().unwrap().id.clone())
            .collect::<Vec<_>>(),
        vec![spinner.clone()]
    );
    metrics_show_the_same(&env, &p, &hog, &spinner).await;
    stream_calls_list_what_list_calls_do(&env).await;

    let done = run(&env, &p, container(&p, "done", &["true"])).await;
    wait_exited(&env, &done, Duration::from_secs(10)).await;
    assert_eq!(
        list(&env, ContainerStatsFilter::default()).await.len(),
        3,
        "the exited one is left out"
    );
    let e = env
        .cri
        .runtime
        .clone()
        .container_stats(ContainerStatsRequest {
            container_id: "no-such".into(),
        })
        .await;
    expect_code(e, &[Code::NotFound], "stats of an unknown container");

    // The pod: its cgroup holds its containers' use, and they come with it.
    let ps = env
        .cri
        .runtime
        .clone()
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: p.id.clone(),
        })
        .await
        .expect("PodSandboxStats")
        .into_inner()
        .stats
        .unwrap();
    let linux = ps.linux.unwrap();
    assert!(v(&linux.memory.unwrap().working_set_bytes) >= 64 * MIB);
    assert!(v(&linux.cpu.unwrap().usage_core_nano_seconds) > 1_000_000_000);
    assert_eq!(linux.containers.len(), 3);
    assert!(v(&linux.process.unwrap().process_count) >= 3);
    let listed = env
        .cri
        .runtime
        .clone()
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
            filter: Some(PodSandboxStatsFilter {
                id: p.id.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);
    remove_pod(&env, p).await;
    env.finish().await;
}

/// ListMetricDescriptors and ListPodSandboxMetrics (kubelet's
/// `/metrics/cadvisor` from the runtime): cadvisor's names, label values
/// matching the descriptors' keys, and values that agree with the stats.
async fn metrics_show_the_same(env: &Env, p: &Pod, hog: &str, spinner: &str) {
    let mut rt = env.cri.runtime.clone();
    let descs = rt
        .list_metric_descriptors(ListMetricDescriptorsRequest {})
        .await
        .expect("ListMetricDescriptors")
        .into_inner()
        .descriptors;
    let keys: HashMap<String, Vec<String>> = descs
        .iter()
        .map(|d| (d.name.clone(), d.label_keys.clone()))
        .collect();
    for name in [
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_network_receive_bytes_total",
        "container_fs_usage_bytes",
    ] {
        assert!(keys.contains_key(name), "{name} is described: {keys:?}");
    }
    let pods = rt
        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
        .await
        .expect("ListPodSandboxMetrics")
        .into_inner()
        .pod_metrics;
    let pm = pods
        .iter()
        .find(|m| m.pod_sandbox_id == p.id)
        .expect("the pod's metrics");
    assert_eq!(pm.container_metrics.len(), 3, "its running containers");
    let value = |id: &str, name: &str| -> (u64, Vec<String>) {
        let c = pm
            .container_metrics
            .iter()
            .find(|c| c.container_id == id)
            .unwrap_or_else(|| panic!("metrics of {id}"));
        for m in &c.metrics {
            let k = keys
                .get(&m.name)
                .unwrap_or_else(|| panic!("{} was sent but not described", m.name));
            assert_eq!(
                m.label_values.len(),
                k.len(),
                "{}: {:?}",
                m.name,
                m.label_values
            );
        }
        let m = c
            .metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} of {id}: {:?}", c.metrics));
        (m.value.unwrap().value, m.label_values.clone())
    };
    let (ws, labels) = value(hog, "container_memory_working_set_bytes");
    assert!(ws >= 64 * MIB, "working set {ws}");
    let k = &keys["container_memory_working_set_bytes"];
    let label = |name: &str| labels[k.iter().position(|x| x == name).unwrap()].clone();
    assert_eq!(label("id"), hog);
    assert_eq!(label("container"), "hog");
    assert_eq!(label("pod"), "stats");
    assert!(!label("image").is_empty(), "{labels:?}");
    // The spinner's CPU in whole seconds, between what the stats said just
    // before the metrics were read and just after (it has burnt over a
    // second by now: checked above).
    let (cpu, _) = value(spinner, "container_cpu_usage_seconds_total");
    let after = v(&one(env, spinner).await.cpu.unwrap().usage_core_nano_seconds);
    assert!(
        cpu >= 1 && cpu <= after / 1_000_000_000,
        "{cpu} s against {after} ns after"
    );
    let (procs, _) = value(spinner, "container_processes");
    assert!(procs >= 1);
    // Its pod is on the node's network: no pod-level series (network.rs
    // checks a pod network's).
    assert!(pm.metrics.is_empty(), "{:?}", pm.metrics);
}

/// cri-api 1.36's Stream* list calls carry exactly the unary calls' items.
async fn stream_calls_list_what_list_calls_do(env: &Env) {
    use berth_cri_api::v1 as cri;
    use futures::StreamExt;
    let mut rt = env.cri.runtime.clone();
    async fn gather<T, I>(s: tonic::Streaming<T>, items: fn(T) -> Vec<I>) -> (usize, Vec<I>) {
        let msgs: Vec<T> = s.map(|m| m.expect("a message")).collect().await;
        let n = msgs.len();
        (n, msgs.into_iter().flat_map(items).collect())
    }
    let unary: Vec<String> = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    let (msgs, streamed) = gather(
        rt.stream_containers(cri::StreamContainersRequest::default())
            .await
            .expect("StreamContainers")
            .into_inner(),
        |m| m.containers,
    )
    .await;
    assert!(msgs >= 1);
    assert_eq!(
        streamed.into_iter().map(|c| c.id).collect::<Vec<_>>(),
        unary
    );

    let (_, pods) = gather(
        rt.stream_pod_sandboxes(cri::StreamPodSandboxesRequest::default())
            .await
            .expect("StreamPodSandboxes")
            .into_inner(),
        |m| m.pod_sandboxes,
    )
    .await;
    let unary_pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(
        pods.iter().map(|p| &p.id).collect::<Vec<_>>(),
        unary_pods.iter().map(|p| &p.id).collect::<Vec<_>>()
    );

    let (_, stats) = gather(
        rt.stream_container_stats(cri::StreamContainerStatsRequest::default())
            .await
            .expect("StreamContainerStats")
            .into_inner(),
        |m| m.container_stats,
    )
    .await;
    let mut ids: Vec<String> = stats
        .into_iter()
        .map(|s| s.attributes.unwrap().id)
        .collect();
    let mut want: Vec<String> = list(env, ContainerStatsFilter::default())
        .await
        .into_iter()
        .map(|s| s.attributes.unwrap().id)
        .collect();
    ids.sort();
    want.sort();
    assert_eq!(ids, want);

    let ready: Vec<&String> = unary_pods
        .iter()
        .filter(|p| p.state == cri::PodSandboxState::SandboxReady as i32)
        .map(|p| &p.id)
        .collect();
    let (_, pod_stats) = gather(
        rt.stream_pod_sandbox_stats(cri::StreamPodSandboxStatsRequest::default())
            .await
            .expect("StreamPodSandboxStats")
            .into_inner(),
        |m| m.pod_sandbox_stats,
    )
    .await;
    let mut got: Vec<String> = pod_stats
        .into_iter()
        .map(|p| p.attributes.unwrap().id)
        .collect();
    got.sort();
    let mut want: Vec<String> = ready.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "the ready pods' stats");

    let (_, metrics) = gather(
        rt.stream_pod_sandbox_metrics(cri::StreamPodSandboxMetricsRequest {})
            .await
            .expect("StreamPodSandboxMetrics")
            .into_inner(),
        |m| m.pod_sandbox_metrics,
    )
    .await;
    let mut got: Vec<&String> = metrics.iter().map(|m| &m.pod_sandbox_id).collect();
    got.sort();
    let mut want = ready.clone();
    want.sort();
    assert_eq!(got, want, "the ready pods' metrics");

    // A filter that matches nothing: no message, just the end.
    let (msgs, none) = gather(
        rt.stream_containers(cri::StreamContainersRequest {
            filter: Some(cri::ContainerFilter {
                id: "no-such-container".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("StreamContainers with a filter")
        .into_inner(),
        |m| m.containers,
    )
    .await;
    assert_eq!((msgs, none.len()), (0, 0));

    let mut img = env.cri.image.clone();
    let (_, images) = gather(
        img.stream_images(cri::StreamImagesRequest::default())
            .await
            .expect("StreamImages")
            .into_inner(),
        |m| m.images,
    )
    .await;
    let unary_images = img
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(
        images.iter().map(|i| &i.id).collect::<Vec<_>>(),
        unary_images.iter().map(|i| &i.id).collect::<Vec<_>>()
    );
}
