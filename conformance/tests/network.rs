//! Pod network scenarios (issue 5), built-in bridge plugin: pods reach
//! each other and the node reaches them; hostPorts from 127.0.0.1, from
//! "another host", from the pod itself (hairpin) and from another pod, TCP
//! and UDP; outbound masquerade; dual stack; 50 pods at once; conflicts,
//! exhaustion and malformed mappings; berthd SIGKILLed in the middle of
//! RunPodSandbox and StopPodSandbox.
//!
//! Each berthd runs in a node netns of its own (the harness makes it); the
//! "other host" is a netns this file makes, wired to the node by a veth
//! (198.51.100.1 on the node, .2 over there). Traffic goes nowhere else.
//! Servers and clients inside pods are busybox's httpd and wget; UDP has no
//! busybox server, so the UDP listener is a socket this test opens inside
//! the pod's netns. Every scenario ends in `env.finish()`, which also checks
//! that no address, veth or hostPort rule is left.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_conformance::Env;
use berth_conformance::berthd::BerthdOptions;
use berth_conformance::cri::sandbox_config;
use berth_conformance::images::{Format, ImageBuilder};
use berth_conformance::netns::NetNs;
use berth_conformance::registry::Registry;
use berth_cri_api::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxStatusRequest, PortMapping, Protocol, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use common::*;
use tonic::Code;

const NODE_ADDR: &str = "198.51.100.1";
const EXT_ADDR: &str = "198.51.100.2";

struct Net {
    env: Env,
    image: String,
    /// "Another host", wired to the node.
    ext: NetNs,
    _logs: tempfile::TempDir,
}

async fn start(network_toml: &str) -> Net {
    // This test's thread, its registry and its berthd live in a node netns
    // of their own.
    let node = Arc::new(NetNs::create("berth-node").expect("node netns"));
    node.enter_current_thread()
        .expect("entering the node netns");
    let registry = Registry::start().await.expect("starting docker-registry");
    let env = Env::start_with(
        registry,
        BerthdOptions::default().node(node).network(network_toml),
    )
    .await;
    let ext = NetNs::create("berth-ext").expect("other host netns");
    env.berthd
        .node()
        .expect("berthd runs in a node netns")
        .connect(&ext, "bext0", NODE_ADDR, EXT_ADDR)
        .expect("wiring the other host");
    let img = ImageBuilder::busybox(Format::Oci).build();
    let image = env.push("net/busybox:1", &img).await;
    env.cri.pull(&image).await.expect("pull busybox");
    Net {
        env,
        image,
        ext,
        _logs: tempfile::tempdir().expect("log dir"),
    }
}

fn pod_config(n: &Net, name: &str, ports: Vec<PortMapping>) -> PodSandboxConfig {
    let mut c = sandbox_config(name);
    c.log_directory = n._logs.path().display().to_string();
    c.port_mappings = ports;
    c.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                pid: NamespaceMode::Container as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

fn tcp(host_port: i32, container_port: i32) -> PortMapping {
    PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port,
        host_port,
        host_ip: String::new(),
    }
}

async fn run_pod(n: &Net, config: &PodSandboxConfig) -> Result<String, tonic::Status> {
    let mut rt = n.env.cri.runtime.clone();
    rt.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: String::new(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

/// The pod's IPs (primary first) and its netns pin, from PodSandboxStatus.
async fn pod_ips(n: &Net, id: &str) -> (Vec<IpAddr>, Option<String>) {
    let mut rt = n.env.cri.runtime.clone();
    let r = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner();
    let info: serde_json::Value =
        serde_json::from_str(r.info.get("info").map(String::as_str).unwrap_or("null"))
            .unwrap_or_default();
    let netns = info["namespaces"]["network"].as_str().map(str::to_string);
    let mut ips = Vec::new();
    if let Some(net) = r.status.and_then(|s| s.network) {
        if !net.ip.is_empty() {
            ips.push(net.ip.parse().expect("pod IP parses"));
        }
        for a in net.additional_ips {
            ips.push(a.ip.parse().expect("additional IP parses"));
        }
    }
    (ips, netns)
}

async fn stop_and_remove(n: &Net, id: &str) {
    let mut rt = n.env.cri.runtime.clone();
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .expect("StopPodSandbox");
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .expect("RemovePodSandbox");
}

/// A container in the pod running `script` with sh.
async fn run_container(
    n: &Net,
    pod: &str,
    config: &PodSandboxConfig,
    name: &str,
    script: &str,
) -> String {
    let mut rt = n.env.cri.runtime.clone();
    let c = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: n.image.clone(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        ..Default::default()
    };
    let id = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(c),
            sandbox_config: Some(config.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("StartContainer");
    id
}

/// A pod whose container serves `text` on port 80 with busybox httpd.
async fn http_pod(n: &Net, name: &str, ports: Vec<PortMapping>) -> (String, String, IpAddr) {
    let config = pod_config(n, name, ports);
    let pod = run_pod(n, &config).await.expect("RunPodSandbox");
    let script = format!(
        "mkdir -p /www && echo served-by-{name} > /www/index.html && exec httpd -f -p 80 -h /www"
    );
    let c = run_container(n, &pod, &config, "web", &script).await;
    let (ips, _) = pod_ips(n, &pod).await;
    let ip = *ips.first().expect("the pod has an IP");
    // Serving once httpd listens.
    let url = format!("http://{}/", url_host(ip));
    let mut last = Err(String::new());
    for _ in 0..100 {
        last = node_get(n, &url);
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Err(e) = last {
        let mut rt = n.env.cri.runtime.clone();
        let diag = rt
            .exec_sync(ExecSyncRequest {
                container_id: c.clone(),
                cmd: ["sh", "-c", "ps; ip addr; ip route; netstat -ltn"]
                    .map(String::from)
                    .to_vec(),
                timeout: 10,
            })
            .await
            .map(|r| String::from_utf8_lossy(&r.into_inner().stdout).to_string());
        let log = std::fs::read_to_string(n._logs.path().join("web.log")).unwrap_or_default();
        let node = n.env.berthd.node().unwrap();
        panic!(
            "pod {name} never served {url}: {e}\ninside: {diag:?}\nlog: {log}\nnode: {}\n{}",
            node.ip(&["addr"]).unwrap_or_default(),
            node.ip(&["route"]).unwrap_or_default()
        );
    }
    (pod, name.to_string(), ip)
}

fn url_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

fn get_in(ns: &NetNs, url: &str) -> Result<String, String> {
    let out = ns
        // (busybox's wget -T crashes; coreutils' timeout bounds it)
        .exec("timeout", &["5", "busybox", "wget", "-q", "-O", "-", url])
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "wget {url}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn node_get(n: &Net, url: &str) -> Result<String, String> {
    get_in(n.env.berthd.node().expect("node netns"), url)
}

/// wget inside a pod's container (busybox), via ExecSync.
async fn pod_get(n: &Net, container: &str, url: &str) -> Result<String, String> {
    let mut rt = n.env.cri.runtime.clone();
    let r = rt
        .exec_sync(ExecSyncRequest {
            container_id: container.into(),
            cmd: ["timeout", "5", "wget", "-q", "-O", "-", url]
                .map(String::from)
                .to_vec(),
            timeout: 10,
        })
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    if r.exit_code == 0 {
        Ok(String::from_utf8_lossy(&r.stdout).trim().to_string())
    } else {
        Err(format!(
            "wget {url} in the pod: exit {}: {}",
            r.exit_code,
            String::from_utf8_lossy(&r.stderr).trim()
        ))
    }
}

/// A pod with a sleeping container to run wget from.
async fn client_pod(n: &Net, name: &str) -> (String, String) {
    let config = pod_config(n, name, vec![]);
    let pod = run_pod(n, &config).await.expect("RunPodSandbox");
    let c = run_container(n, &pod, &config, "client", "exec sleep 3600").await;
    (pod, c)
}

#[tokio::test]
async fn pods_reach_each_other_and_the_node_reaches_them() {
    let n = start("").await;
    let st = n.env.cri.status(true).await.expect("Status");
    let cond = st
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .expect("NetworkReady condition");
    assert!(
        cond.status,
        "NetworkReady: {} {}",
        cond.reason, cond.message
    );

    let (a, _, a_ip) = http_pod(&n, "net-a", vec![]).await;
    let (b, b_client) = client_pod(&n, "net-b").await;
    let (b_ips, _) = pod_ips(&n, &b).await;
    let subnet: ipnetwork::IpNetwork = "10.89.0.0/16".parse().unwrap();
    assert!(subnet.contains(a_ip), "{a_ip} in the default subnet");
    assert_eq!(b_ips.len(), 1, "IPv4 only by default: {b_ips:?}");
    assert_ne!(a_ip, b_ips[0], "two pods, two addresses");

    let url = format!("http://{a_ip}/");
    assert_eq!(
        pod_get(&n, &b_client, &url).await.unwrap(),
        "served-by-net-a"
    );
    assert_eq!(node_get(&n, &url).unwrap(), "served-by-net-a");

    // Inside the pod: eth0 with the address and the MTU, a default route
    // via the bridge's address.
    let mut rt = n.env.cri.runtime.clone();
    let r = rt
        .exec_sync(ExecSyncRequest {
            container_id: b_client.clone(),
            cmd: [
                "sh",
                "-c",
                "ip -4 addr show eth0; ip route; cat /sys/class/net/eth0/mtu",
            ]
            .map(String::from)
            .to_vec(),
            timeout: 10,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.contains(&format!("inet {}/16", b_ips[0])), "{out}");
    assert!(out.contains("default via 10.89.0.1 dev eth0"), "{out}");

    // Verbose Status shows IPAM's view.
    let info: serde_json::Value =
        serde_json::from_str(&st.info["network"]).expect("network info JSON");
    assert_eq!(info["plugin"], "bridge");
    let allocated = n.env.cri.status(true).await.unwrap().info["network"].clone();
    assert!(allocated.contains(&a_ip.to_string()), "{allocated}");

    // Stop takes the network down: no IP in the status any more.
    let mut rt = n.env.cri.runtime.clone();
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: a.clone(),
    })
    .await
    .expect("StopPodSandbox");
    let (ips, _) = pod_ips(&n, &a).await;
    assert!(ips.is_empty(), "a stopped pod has no IP: {ips:?}");
    let allocated = n.env.cri.status(true).await.unwrap().info["network"].clone();
    assert!(!allocated.contains(&format!("\"{a_ip}\"")), "{allocated}");
    // Stop again is fine.
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: a.clone(),
    })
    .await
    .expect("second StopPodSandbox");
    stop_and_remove(&n, &a).await;
    stop_and_remove(&n, &b).await;
    n.env.finish().await;
}

#[tokio::test]
async fn host_ports_are_reachable_from_everywhere() {
    let mut n = start("").await;
    let (a, _, a_ip) = http_pod(&n, "hp-a", vec![tcp(8080, 80)]).await;
    let (b, b_client) = client_pod(&n, "hp-b").await;

    // From the node itself, on loopback and on its address.
    assert_eq!(
        node_get(&n, "http://127.0.0.1:8080/").unwrap(),
        "served-by-hp-a"
    );
    assert_eq!(
        node_get(&n, &format!("http://{NODE_ADDR}:8080/")).unwrap(),
        "served-by-hp-a"
    );
    // From another host.
    assert_eq!(
        get_in(&n.ext, &format!("http://{NODE_ADDR}:8080/")).unwrap(),
        "served-by-hp-a"
    );
    // From another pod, through the node's address and the gateway.
    assert_eq!(
        pod_get(&n, &b_client, &format!("http://{NODE_ADDR}:8080/"))
            .await
            .unwrap(),
        "served-by-hp-a"
    );
    assert_eq!(
        pod_get(&n, &b_client, "http://10.89.0.1:8080/")
            .await
            .unwrap(),
        "served-by-hp-a"
    );
    // From the pod itself (hairpin). Its container is httpd: use a second
    // container in the same pod for wget.
    let a_cfg = pod_config(&n, "hp-a", vec![tcp(8080, 80)]);
    let a_client = run_container(&n, &a, &a_cfg, "self", "exec sleep 3600").await;
    assert_eq!(
        pod_get(&n, &a_client, &format!("http://{NODE_ADDR}:8080/"))
            .await
            .unwrap(),
        "served-by-hp-a"
    );

    // berthd SIGKILLed and started again: the hostPort still answers, and
    // berthd still knows who holds it.
    n.env.berthd.kill();
    n.env.berthd.restart().await.expect("restart");
    n.env.cri = n.env.berthd.cri().await.expect("reconnect");
    let node = n.env.berthd.node().unwrap();
    assert_eq!(
        get_in(&n.ext, &format!("http://{NODE_ADDR}:8080/")).unwrap(),
        "served-by-hp-a"
    );

    // The port is held: another pod asking for it gets ALREADY_EXISTS
    // naming the holder, and leaves nothing.
    let before = node.links().unwrap().len();
    let cfg = pod_config(&n, "hp-clash", vec![tcp(8080, 81)]);
    let st = expect_code(
        run_pod(&n, &cfg).await,
        &[Code::AlreadyExists],
        "hostPort clash",
    );
    assert!(st.message().contains("default/hp-a"), "{}", st.message());
    assert!(st.message().contains("8080"), "{}", st.message());
    // The same port on one address clashes with "all addresses" too.
    let mut one = tcp(8080, 81);
    one.host_ip = "127.0.0.1".into();
    let cfg = pod_config(&n, "hp-clash2", vec![one]);
    expect_code(
        run_pod(&n, &cfg).await,
        &[Code::AlreadyExists],
        "hostPort clash on one IP",
    );
    // UDP on the same number is another port.
    let udp = PortMapping {
        protocol: Protocol::Udp as i32,
        container_port: 53,
        host_port: 8080,
        host_ip: String::new(),
    };
    let u_cfg = pod_config(&n, "hp-udp", vec![udp]);
    let u = run_pod(&n, &u_cfg).await.expect("UDP 8080 beside TCP 8080");
    assert_eq!(
        n.env.cri.list_pods().await.len(),
        3,
        "the refused pods are not listed"
    );
    let _ = before;

    // UDP: a datagram from another host to node:8080/udp arrives in the
    // pod on port 53.
    let (_, netns) = pod_ips(&n, &u).await;
    let netns = netns.expect("pod netns path");
    let got = udp_roundtrip(&netns, &n.ext, &format!("{NODE_ADDR}:8080"));
    assert_eq!(got, "ping-udp");

    // After Stop the port is free again and its rule is gone.
    stop_and_remove(&n, &a).await;
    let r = get_in(&n.ext, &format!("http://{NODE_ADDR}:8080/"));
    assert!(
        r.is_err(),
        "hostPort still answers after the pod stopped: {r:?}"
    );
    let again = pod_config(&n, "hp-again", vec![tcp(8080, 80)]);
    let c = run_pod(&n, &again).await.expect("the port is free again");
    stop_and_remove(&n, &c).await;
    stop_and_remove(&n, &b).await;
    stop_and_remove(&n, &u).await;
    let _ = a_ip;
    n.env.finish().await;
}

/// Listen on UDP :53 inside the pod netns, send from `from` to `to`,
/// return what arrived.
fn udp_roundtrip(pod_netns: &str, from: &NetNs, to: &str) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = pod_netns.to_string();
    let listener = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("pod netns");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let s = std::net::UdpSocket::bind("0.0.0.0:53").expect("bind :53 in the pod");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 64];
        let (len, _) = s.recv_from(&mut buf).expect("a datagram in the pod");
        String::from_utf8_lossy(&buf[..len]).to_string()
    });
    rx.recv().expect("listener ready");
    let ext = from.path();
    let to = to.to_string();
    let sender = std::thread::spawn(move || {
        let f = std::fs::File::open(ext).expect("ext netns");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..20 {
            let _ = s.send_to(b"ping-udp", &to);
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let got = listener.join().expect("listener");
    let _ = sender.join();
    got
}

#[tokio::test]
async fn outbound_traffic_is_masqueraded_to_the_node_address() {
    let n = start("").await;
    // A server on the other host that answers with the client's address.
    let www = tempfile::tempdir().unwrap();
    std::fs::create_dir(www.path().join("cgi-bin")).unwrap();
    let cgi = www.path().join("cgi-bin/ip");
    std::fs::write(
        &cgi,
        "#!/bin/sh\necho Content-Type: text/plain\necho\necho $REMOTE_ADDR\n",
    )
    .unwrap();
    std::fs::set_permissions(&cgi, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut server = n
        .ext
        .command("busybox")
        .unwrap()
        .args(["httpd", "-f", "-p", "9000", "-h"])
        .arg(www.path())
        .spawn()
        .expect("httpd on the other host");
    let (p, c) = client_pod(&n, "out").await;
    let url = format!("http://{EXT_ADDR}:9000/cgi-bin/ip");
    let mut seen = Err(String::new());
    for _ in 0..50 {
        seen = pod_get(&n, &c, &url).await;
        if seen.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = server.kill();
    let _ = server.wait();
    // httpd writes IPv4 clients of its dual-stack socket as [::ffff:a.b.c.d].
    let seen = seen.unwrap();
    let seen = seen.trim_matches(['[', ']']).trim_start_matches("::ffff:");
    assert_eq!(seen, NODE_ADDR, "the other host sees the node's address");
    stop_and_remove(&n, &p).await;
    n.env.finish().await;
}

#[tokio::test]
async fn dual_stack_pods_get_both_families_and_talk_over_ipv6() {
    let n = start("subnet = \"10.90.0.0/24\"\nsubnet6 = \"fd89:1::/64\"").await;
    let (a, _, _) = http_pod(&n, "ds-a", vec![tcp(8080, 80)]).await;
    let (b, b_client) = client_pod(&n, "ds-b").await;
    let (a_ips, _) = pod_ips(&n, &a).await;
    assert_eq!(a_ips.len(), 2, "{a_ips:?}");
    assert!(a_ips[0].is_ipv4(), "IPv4 first: {a_ips:?}");
    assert!(a_ips[1].is_ipv6(), "{a_ips:?}");
    let s6: ipnetwork::IpNetwork = "fd89:1::/64".parse().unwrap();
    assert!(s6.contains(a_ips[1]));
    let url = format!("http://[{}]/", a_ips[1]);
    let mut r = Err(String::new());
    for _ in 0..30 {
        r = pod_get(&n, &b_client, &url).await;
        if r.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(r.unwrap(), "served-by-ds-a");
    assert_eq!(node_get(&n, &url).unwrap(), "served-by-ds-a");
    // The hostPort answers on the node's IPv6 address too (the bridge's),
    // from the node and from the other pod.
    let v6 = "http://[fd89:1::1]:8080/";
    assert_eq!(node_get(&n, v6).unwrap(), "served-by-ds-a");
    assert_eq!(pod_get(&n, &b_client, v6).await.unwrap(), "served-by-ds-a");
    stop_and_remove(&n, &a).await;
    stop_and_remove(&n, &b).await;
    n.env.finish().await;
}

#[tokio::test]
async fn fifty_pods_at_once_get_distinct_reachable_addresses() {
    let n = start("").await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let config = pod_config(&n, &format!("many-{i}"), vec![]);
        let mut rt = n.env.cri.runtime.clone();
        tasks.push(tokio::spawn(async move {
            rt.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .map(|r| r.into_inner().pod_sandbox_id)
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().expect("RunPodSandbox"));
    }
    let mut ips = HashSet::new();
    for id in &ids {
        let (a, _) = pod_ips(&n, id).await;
        assert_eq!(a.len(), 1);
        assert!(ips.insert(a[0]), "address {} given twice", a[0]);
    }
    // Every one answers the node (the pod's kernel answers ping: no
    // container needed).
    let node = n.env.berthd.node().unwrap();
    for ip in &ips {
        let out = node
            .exec("busybox", &["ping", "-c", "1", "-W", "2", &ip.to_string()])
            .unwrap();
        assert!(out.status.success(), "{ip} unreachable: {out:?}");
    }
    let mut tasks = Vec::new();
    for id in ids {
        let mut rt = n.env.cri.runtime.clone();
        tasks.push(tokio::spawn(async move {
            rt.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await?;
            rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("Stop+Remove");
    }
    n.env.finish().await;
}

#[tokio::test]
async fn exhausted_subnets_and_malformed_mappings_fail_cleanly() {
    // A /30 has room for one pod (.2).
    let n = start("subnet = \"10.91.0.0/30\"").await;
    let one = run_pod(&n, &pod_config(&n, "only", vec![]))
        .await
        .expect("first pod");
    let node = n.env.berthd.node().unwrap();
    let links = node.links().unwrap();
    let st = expect_code(
        run_pod(&n, &pod_config(&n, "no-room", vec![])).await,
        &[Code::ResourceExhausted],
        "subnet exhausted",
    );
    assert!(st.message().contains("10.91.0.0/30"), "{}", st.message());
    for (what, m) in [
        ("container port 0", tcp(8080, 0)),
        ("host port 70000", tcp(70000, 80)),
        (
            "unknown protocol",
            PortMapping {
                protocol: 7,
                container_port: 80,
                host_port: 8081,
                host_ip: String::new(),
            },
        ),
        (
            "host IP not an address",
            PortMapping {
                host_ip: "node-a".into(),
                ..tcp(8082, 80)
            },
        ),
    ] {
        expect_code(
            run_pod(&n, &pod_config(&n, "bad-port", vec![m])).await,
            &[Code::InvalidArgument],
            what,
        );
    }
    // The same hostPort twice in one pod.
    expect_code(
        run_pod(
            &n,
            &pod_config(&n, "twice", vec![tcp(8080, 80), tcp(8080, 81)]),
        )
        .await,
        &[Code::InvalidArgument],
        "one hostPort twice",
    );
    assert_eq!(
        n.env.cri.list_pods().await.len(),
        1,
        "refused pods are not kept"
    );
    // Nothing new on the node once the kernel has dropped refused pods'
    // namespaces.
    let mut now = node.links().unwrap();
    for _ in 0..100 {
        if now == links {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        now = node.links().unwrap();
    }
    assert_eq!(now, links, "links changed by refused pods");
    // The one address is free again after the pod goes.
    stop_and_remove(&n, &one).await;
    let two = run_pod(&n, &pod_config(&n, "next", vec![]))
        .await
        .expect("room again");
    stop_and_remove(&n, &two).await;
    n.env.finish().await;
}

#[tokio::test]
async fn host_network_pods_get_no_veth_and_no_ip() {
    let n = start("").await;
    let mut cfg = pod_config(&n, "hostnet", vec![]);
    cfg.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options
        .as_mut()
        .unwrap()
        .network = NamespaceMode::Node as i32;
    let node = n.env.berthd.node().unwrap();
    let before = node.links().unwrap();
    let id = run_pod(&n, &cfg).await.expect("RunPodSandbox");
    let (ips, netns) = pod_ips(&n, &id).await;
    assert!(ips.is_empty(), "{ips:?}");
    assert!(netns.is_none(), "{netns:?}");
    assert_eq!(node.links().unwrap(), before);
    stop_and_remove(&n, &id).await;
    n.env.finish().await;
}

/// berthd SIGKILLed while RunPodSandbox calls are in flight, then while
/// StopPodSandbox calls are: after each restart there is no veth, address
/// or rule of a pod that does not exist, and the pods that do exist reach
/// each other.
#[tokio::test]
async fn sigkill_during_run_and_stop_leaves_no_orphans() {
    let mut n = start("").await;
    for (round, delay_ms) in [(0, 3u64), (1, 12), (2, 30)] {
        let mut tasks = Vec::new();
        for i in 0..8 {
            let cfg = pod_config(
                &n,
                &format!("kill-{round}-{i}"),
                vec![tcp(9000 + round * 10 + i, 80)],
            );
            let mut rt = n.env.cri.runtime.clone();
            tasks.push(tokio::spawn(async move {
                rt.run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(cfg),
                    runtime_handler: String::new(),
                })
                .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        n.env.berthd.kill();
        for t in tasks {
            let _ = t.await;
        }
        n.env.berthd.restart().await.expect("restart after SIGKILL");
        n.env.cri = n.env.berthd.cri().await.expect("reconnect");
        check_consistent(&n).await;
    }
    // Now kill in the middle of stopping them.
    let pods = n.env.cri.list_pods().await;
    let mut tasks = Vec::new();
    for p in pods.iter().take(12) {
        let mut rt = n.env.cri.runtime.clone();
        let id = p.id.clone();
        tasks.push(tokio::spawn(async move {
            rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id })
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    n.env.berthd.kill();
    for t in tasks {
        let _ = t.await;
    }
    n.env.berthd.restart().await.expect("restart after SIGKILL");
    n.env.cri = n.env.berthd.cri().await.expect("reconnect");
    check_consistent(&n).await;
    for p in n.env.cri.list_pods().await {
        stop_and_remove(&n, &p.id).await;
    }
    n.env.finish().await;
}

/// A node reboot as berthd sees it: its database (under root) survives,
/// everything else is gone: berthd, the shims, the containers, the cgroups,
/// the state dir (a tmpfs) with its namespace pins and mounts, the pods'
/// veths and berth's nftables table. The pods must come back NOTREADY
/// (containerd's answer, so that kubelet makes new ones), their addresses
/// and hostPorts free, their containers EXITED, and Stop and Remove work.
#[tokio::test]
async fn after_a_node_reboot_pods_are_not_ready_and_release_what_they_held() {
    let mut n = start("").await;
    let mut pods = Vec::new();
    // A hostPort pod, one with a pause process, a plain one, and one on
    // the host's network and IPC (it pins nothing: only its state dir,
    // with its resolv.conf and hosts, tells that the node rebooted).
    for (i, ports, pid, host) in [
        (0, vec![tcp(9471, 80)], NamespaceMode::Container, false),
        (1, vec![], NamespaceMode::Pod, false),
        (2, vec![], NamespaceMode::Container, false),
        (3, vec![], NamespaceMode::Container, true),
    ] {
        let mut cfg = pod_config(&n, &format!("reboot-{i}"), ports);
        if let Some(ns) = cfg
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|s| s.namespace_options.as_mut())
        {
            ns.pid = pid as i32;
            if host {
                ns.network = NamespaceMode::Node as i32;
                ns.ipc = NamespaceMode::Node as i32;
            }
        }
        let id = run_pod(&n, &cfg).await.expect("RunPodSandbox");
        let c = run_container(&n, &id, &cfg, "sleeper", "exec sleep 100000").await;
        assert_eq!(pod_ips(&n, &id).await.0.len(), usize::from(!host));
        pods.push((id, c));
    }

    // A plain restart first: berthd killed, the node up. Nothing is lost,
    // so every pod (the one with a pause process too) stays READY.
    n.env.berthd.kill();
    n.env.berthd.restart().await.expect("restart");
    n.env.cri = n.env.berthd.cri().await.expect("reconnect");
    for p in n.env.cri.list_pods().await {
        assert_eq!(
            p.state,
            berth_cri_api::v1::PodSandboxState::SandboxReady as i32,
            "pod {} is whole after a mere berthd restart",
            p.id
        );
    }

    // The reboot.
    n.env.berthd.kill();
    let dirs = [n.env.berthd.dir().to_path_buf()];
    for p in berth_conformance::leak::processes_for(&dirs) {
        if p.name == "berth-shim" {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    n.env.berthd.remove_cgroups();
    let state = n.env.berthd.state();
    berth_conformance::berthd::unmount_all_under(&state);
    std::fs::remove_dir_all(&state).expect("wiping the state dir");
    let node = n.env.berthd.node().expect("node netns");
    for l in node
        .links()
        .unwrap()
        .into_iter()
        .filter(|l| l.starts_with("bth"))
    {
        let _ = node.ip(&["link", "del", &l]);
    }
    let _ = node.exec("nft", &["delete", "table", "inet", "berth"]);
    n.env
        .berthd
        .restart()
        .await
        .expect("berthd starts after the reboot");
    n.env.cri = n.env.berthd.cri().await.expect("reconnect");

    let listed = n.env.cri.list_pods().await;
    assert_eq!(listed.len(), 4, "{listed:?}");
    for p in &listed {
        assert_eq!(
            p.state,
            berth_cri_api::v1::PodSandboxState::SandboxNotready as i32,
            "pod {} whose namespaces are gone must be NOTREADY",
            p.id
        );
        let (ips, _) = pod_ips(&n, &p.id).await;
        assert!(ips.is_empty(), "a NOTREADY pod has no IP: {ips:?}");
    }
    let mut rt = n.env.cri.runtime.clone();
    for (_, c) in &pods {
        let st = rt
            .container_status(berth_cri_api::v1::ContainerStatusRequest {
                container_id: c.clone(),
                verbose: false,
            })
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .unwrap();
        assert_eq!(
            st.state,
            berth_cri_api::v1::ContainerState::ContainerExited as i32
        );
    }
    let info = n.env.cri.status(true).await.unwrap().info["network"].clone();
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(
        info["allocated"].as_array().map(Vec::len),
        Some(0),
        "no address held by a NOTREADY pod: {info}"
    );
    // Its hostPort is free: a new pod (kubelet's replacement) takes it.
    let again = pod_config(&n, "reboot-0-new", vec![tcp(9471, 80)]);
    let new = run_pod(&n, &again)
        .await
        .expect("the lost pod's hostPort is free again");
    for (id, _) in &pods {
        stop_and_remove(&n, id).await;
    }
    stop_and_remove(&n, &new).await;
    n.env.finish().await;
}

/// Every veth on the node belongs to a ready pod with an IP, every ready
/// pod's address is allocated, and the ready pods reach each other.
async fn check_consistent(n: &Net) {
    let pods = n.env.cri.list_pods().await;
    let mut ready_ips = HashMap::new();
    for p in &pods {
        let (ips, _) = pod_ips(n, &p.id).await;
        if p.state == berth_cri_api::v1::PodSandboxState::SandboxReady as i32 {
            assert_eq!(ips.len(), 1, "ready pod {} has an IP", p.id);
            ready_ips.insert(p.id.clone(), ips[0]);
        } else {
            assert!(ips.is_empty(), "stopped pod {} has no IP: {ips:?}", p.id);
        }
    }
    let info = n.env.cri.status(true).await.unwrap().info["network"].clone();
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let allocated: HashSet<String> = info["allocated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let want: HashSet<String> = ready_ips.values().map(|ip| ip.to_string()).collect();
    assert_eq!(
        allocated, want,
        "IPAM holds exactly the ready pods' addresses"
    );
    // Orphan veths go (asynchronously) after the restart.
    let node = n.env.berthd.node().unwrap();
    let wanted: HashSet<String> = ready_ips
        .keys()
        .map(|id| format!("bth{}", &id[..12]))
        .collect();
    let mut veths = HashSet::new();
    for _ in 0..100 {
        veths = node
            .links()
            .unwrap()
            .into_iter()
            .filter(|l| l.starts_with("bth"))
            .collect();
        if veths == wanted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(veths, wanted, "the node's pod veths are the ready pods'");
    // Rules: one hostPort element per ready pod.
    let table = node
        .exec("nft", &["list", "map", "inet", "berth", "hostports4"])
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout).to_string();
    for ip in ready_ips.values() {
        assert!(
            text.contains(&format!(": {ip} . 80")),
            "rule of {ip} missing:\n{text}"
        );
    }
    let elements = text.matches(" . 80").count();
    assert_eq!(
        elements,
        ready_ips.len(),
        "rules of gone pods left:\n{text}"
    );
    for ip in ready_ips.values() {
        let out = node
            .exec("busybox", &["ping", "-c", "1", "-W", "2", &ip.to_string()])
            .unwrap();
        assert!(out.status.success(), "{ip} unreachable after restart");
    }
}

// ---- CNI plugins (Debian's containernetworking-plugins) ----

const CNI_BIN: &str = "/usr/lib/cni";

/// A node running the CNI plugin with a bridge + host-local + portmap +
/// loopback network (host-local's data in the test dir; loopback brings up
/// `lo` whatever the interface and passes the result on), plus fake
/// plugins in `bin`.
struct Cni {
    net: Net,
    conf: tempfile::TempDir,
    data: tempfile::TempDir,
    bin: tempfile::TempDir,
}

fn conflist(data: &std::path::Path, extra_plugins: &str) -> String {
    format!(
        r#"{{
  "cniVersion": "1.0.0",
  "name": "berth-test",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "cni-test0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "dataDir": "{}",
        "ranges": [[{{ "subnet": "10.92.0.0/24" }}]],
        "routes": [{{ "dst": "0.0.0.0/0" }}]
      }}
    }},
    {{ "type": "portmap", "capabilities": {{ "portMappings": true }}, "snat": true }},
    {{ "type": "loopback" }}{extra_plugins}
  ]
}}"#,
        data.display()
    )
}

async fn start_cni(extra_plugins: &str, extra_toml: &str) -> Cni {
    let conf = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    std::fs::write(
        conf.path().join("10-test.conflist"),
        conflist(data.path(), extra_plugins),
    )
    .unwrap();
    let net = start(&format!(
        "plugin = \"cni\"\ncni_conf_dir = \"{}\"\ncni_bin_dirs = [\"{CNI_BIN}\", \"{}\"]\n{extra_toml}",
        conf.path().display(),
        bin.path().display()
    ))
    .await;
    Cni {
        net,
        conf,
        data,
        bin,
    }
}

/// Addresses host-local holds (one file per address in its network dir).
fn host_local_allocations(data: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(data.join("berth-test"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<IpAddr>().is_ok())
        .collect()
}

fn node_veths(n: &Net) -> Vec<String> {
    n.env
        .berthd
        .node()
        .unwrap()
        .links()
        .unwrap()
        .into_iter()
        .filter(|l| l.starts_with("veth") || l.starts_with("bth"))
        .collect()
}

async fn wait_no_veths(n: &Net) {
    for _ in 0..100 {
        if node_veths(n).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("veths left on the node: {:?}", node_veths(n));
}

#[tokio::test]
async fn cni_plugins_connect_pods_publish_host_ports_and_clean_up() {
    if !std::path::Path::new(CNI_BIN).join("bridge").exists() {
        panic!("{CNI_BIN}/bridge missing: install containernetworking-plugins (.ci/run does)");
    }
    let c = start_cni("", "").await;
    let n = &c.net;
    let st = n.env.cri.status(false).await.unwrap();
    let ready = st
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap();
    assert!(ready.status, "{} {}", ready.reason, ready.message);

    let (a, _, a_ip) = http_pod(n, "cni-a", vec![tcp(8080, 80)]).await;
    let (b, b_client) = client_pod(n, "cni-b").await;
    let subnet: ipnetwork::IpNetwork = "10.92.0.0/24".parse().unwrap();
    assert!(subnet.contains(a_ip), "{a_ip} from host-local's range");
    let url = format!("http://{a_ip}/");
    assert_eq!(
        pod_get(n, &b_client, &url).await.unwrap(),
        "served-by-cni-a"
    );
    assert_eq!(node_get(n, &url).unwrap(), "served-by-cni-a");
    // portmap's hostPort, from another host.
    assert_eq!(
        get_in(&n.ext, &format!("http://{NODE_ADDR}:8080/")).unwrap(),
        "served-by-cni-a"
    );
    assert_eq!(host_local_allocations(c.data.path()).len(), 2);

    // DEL works after a restart (berthd SIGKILLed): the cached result.
    let mut n2 = c.net;
    n2.env.berthd.kill();
    n2.env.berthd.restart().await.expect("restart");
    n2.env.cri = n2.env.berthd.cri().await.expect("reconnect");
    assert_eq!(
        get_in(&n2.ext, &format!("http://{NODE_ADDR}:8080/")).unwrap(),
        "served-by-cni-a",
        "the pod network outlives berthd"
    );
    stop_and_remove(&n2, &a).await;
    stop_and_remove(&n2, &b).await;
    assert!(
        host_local_allocations(c.data.path()).is_empty(),
        "host-local still holds {:?}",
        host_local_allocations(c.data.path())
    );
    let r = get_in(&n2.ext, &format!("http://{NODE_ADDR}:8080/"));
    assert!(r.is_err(), "portmap's rule outlived its pod: {r:?}");
    wait_no_veths(&n2).await;
    drop((c.conf, c.bin));
    n2.env.finish().await;
}

#[tokio::test]
async fn a_failing_or_hanging_cni_plugin_fails_the_pod_and_leaves_nothing() {
    let c = start_cni(
        r#",
    { "type": "berth-fail" }"#,
        "cni_timeout = \"2s\"\n",
    )
    .await;
    let fail = c.bin.path().join("berth-fail");
    // Fails ADD with a CNI error; DEL succeeds.
    std::fs::write(
        &fail,
        "#!/bin/sh\ncat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then\n  echo '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"berth test refuses\",\"details\":\"on purpose\"}'\n  exit 1\nfi\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&fail, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let n = &c.net;
    let cfg = pod_config(n, "cni-fail", vec![]);
    let st = expect_err(run_pod(n, &cfg).await, "failing CNI plugin");
    assert!(
        st.message().contains("berth test refuses"),
        "{}",
        st.message()
    );
    assert!(n.env.cri.list_pods().await.is_empty());
    assert!(
        host_local_allocations(c.data.path()).is_empty(),
        "the chain was not DELeted: {:?}",
        host_local_allocations(c.data.path())
    );
    wait_no_veths(n).await;

    // Now it hangs: killed at cni_timeout, the call fails saying so.
    std::fs::write(&fail, "#!/bin/sh\nexec sleep 600\n").unwrap();
    let t = std::time::Instant::now();
    let st = expect_err(run_pod(n, &cfg).await, "hanging CNI plugin");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert!(
        st.message().contains("berth-fail") && st.message().contains("2s"),
        "{}",
        st.message()
    );
    // Its DEL hung too, so the others' DELs ran without it: nothing holds
    // an address, but the setup is not fully undone until berth-fail's DEL
    // succeeds; berthd tries again before the next setup.
    assert!(n.env.cri.list_pods().await.is_empty());
    assert!(
        host_local_allocations(c.data.path()).is_empty(),
        "{:?}",
        host_local_allocations(c.data.path())
    );
    wait_no_veths(n).await;
    // berth-fail's DEL works again, and it leaves the chain.
    std::fs::write(&fail, "#!/bin/sh\ncat >/dev/null\nexit 0\n").unwrap();
    std::fs::write(
        c.conf.path().join("10-test.conflist"),
        conflist(c.data.path(), ""),
    )
    .unwrap();
    let ok = run_pod(n, &pod_config(n, "cni-ok", vec![]))
        .await
        .expect("the plugin works again");
    stop_and_remove(n, &ok).await;
    wait_no_veths(n).await;
    let Cni {
        net,
        conf,
        data,
        bin,
    } = c;
    drop((conf, bin));
    assert!(host_local_allocations(data.path()).is_empty());
    net.env.finish().await;
}

/// kubelet cancels a RunPodSandbox that outlives its request timeout, most
/// often because a CNI plugin is slow. Here the bridge plugin is wrapped to
/// take 400 ms on ADD and the client drops the call at 150 ms: the pod is
/// made anyway, the retry gets it, and host-local holds one address, not
/// two.
#[tokio::test]
async fn a_run_pod_sandbox_cancelled_inside_a_slow_cni_plugin_is_there_for_its_retry() {
    let c = start_cni("", "").await;
    let slow = c.bin.path().join("berth-slow");
    std::fs::write(
        &slow,
        format!("#!/bin/sh\n[ \"$CNI_COMMAND\" = ADD ] && sleep 0.4\nexec {CNI_BIN}/bridge\n"),
    )
    .unwrap();
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        c.conf.path().join("10-test.conflist"),
        conflist(c.data.path(), "").replace(r#""type": "bridge""#, r#""type": "berth-slow""#),
    )
    .unwrap();
    let n = &c.net;
    let cfg = pod_config(n, "cni-slow", vec![]);
    let first = tokio::time::timeout(Duration::from_millis(150), run_pod(n, &cfg)).await;
    assert!(first.is_err(), "answered inside a 400 ms plugin: {first:?}");
    let id = tokio::time::timeout(Duration::from_secs(10), run_pod(n, &cfg))
        .await
        .expect("the retry must answer within 10 s")
        .expect("the retry must get the pod");
    assert_eq!(run_pod(n, &cfg).await.expect("a later retry"), id);
    let pods = n.env.cri.list_pods().await;
    assert_eq!(pods.iter().map(|p| &p.id).collect::<Vec<_>>(), vec![&id]);
    let (ips, _) = pod_ips(n, &id).await;
    assert_eq!(ips.len(), 1, "{ips:?}");
    assert_eq!(
        host_local_allocations(c.data.path()),
        vec![ips[0].to_string()],
        "one ADD, for the one pod"
    );
    stop_and_remove(n, &id).await;
    assert!(host_local_allocations(c.data.path()).is_empty());
    wait_no_veths(n).await;
    let Cni {
        net,
        conf,
        data,
        bin,
    } = c;
    drop((conf, data, bin));
    net.env.finish().await;
}

// ---- start-up: subnets, readiness, kubelet's pod CIDR ----

#[tokio::test]
async fn kubelets_pod_cidr_is_used_when_no_subnet_is_configured() {
    let mut n = start("").await;
    let mut rt = n.env.cri.runtime.clone();
    let update = |cidr: &str| berth_cri_api::v1::UpdateRuntimeConfigRequest {
        runtime_config: Some(berth_cri_api::v1::RuntimeConfig {
            network_config: Some(berth_cri_api::v1::NetworkConfig {
                pod_cidr: cidr.into(),
            }),
        }),
    };
    rt.update_runtime_config(update("10.93.0.0/24"))
        .await
        .expect("UpdateRuntimeConfig");
    let a = run_pod(&n, &pod_config(&n, "cidr-a", vec![]))
        .await
        .unwrap();
    let (ips, _) = pod_ips(&n, &a).await;
    assert_eq!(ips[0].to_string(), "10.93.0.2", "{ips:?}");
    let info = n.env.cri.status(true).await.unwrap().info["network"].clone();
    assert!(info.contains("\"subnetSource\":\"kubelet\""), "{info}");
    // The bridge moved to the new gateway.
    let addrs = n
        .env
        .berthd
        .node()
        .unwrap()
        .ip(&["-4", "addr", "show", "berth0"])
        .unwrap();
    assert!(addrs.contains("10.93.0.1/24"), "{addrs}");
    assert!(!addrs.contains("10.89.0.1"), "{addrs}");
    // A pod holds an address of it: another CIDR is not taken.
    rt.update_runtime_config(update("10.94.0.0/24"))
        .await
        .expect("UpdateRuntimeConfig is not an error");
    let b = run_pod(&n, &pod_config(&n, "cidr-b", vec![]))
        .await
        .unwrap();
    assert_eq!(pod_ips(&n, &b).await.0[0].to_string(), "10.93.0.3");
    // Malformed CIDRs are refused.
    expect_code(
        rt.update_runtime_config(update("10.95.0.0/33")).await,
        &[Code::InvalidArgument],
        "bad pod CIDR",
    );
    // It survives a restart.
    n.env.berthd.kill();
    n.env.berthd.restart().await.expect("restart");
    n.env.cri = n.env.berthd.cri().await.unwrap();
    let c = run_pod(&n, &pod_config(&n, "cidr-c", vec![]))
        .await
        .unwrap();
    assert_eq!(pod_ips(&n, &c).await.0[0].to_string(), "10.93.0.4");
    for id in [a, b, c] {
        stop_and_remove(&n, &id).await;
    }
    // kubelet's CIDR is a setting berthd keeps, not a leak.
    std::fs::remove_file(n.env.berthd.root().join("network/pod-cidr")).unwrap();
    n.env.finish().await;
}

#[tokio::test]
async fn a_subnet_overlapping_a_node_route_is_refused_at_start() {
    let node = Arc::new(NetNs::create("berth-node").unwrap());
    node.enter_current_thread().unwrap();
    let ext = NetNs::create("berth-ext").unwrap();
    node.connect(&ext, "bext0", NODE_ADDR, EXT_ADDR).unwrap();
    let (status, log) = berth_conformance::berthd::Berthd::run_to_exit(
        BerthdOptions::default()
            .node(node.clone())
            .network("subnet = \"198.51.100.0/25\"\n"),
        Duration::from_secs(30),
    )
    .await
    .expect("berthd exits by itself");
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("network.subnet 198.51.100.0/25 overlaps the host route 198.51.100.0/24"),
        "{log}"
    );
    // Nothing was made.
    assert!(!node.links().unwrap().iter().any(|l| l == "berth0"));
}

#[tokio::test]
async fn a_link_in_the_way_of_the_bridge_makes_the_network_not_ready() {
    let node = Arc::new(NetNs::create("berth-node").unwrap());
    node.enter_current_thread().unwrap();
    node.ip(&[
        "link", "add", "berth0", "type", "veth", "peer", "name", "berth0p",
    ])
    .unwrap();
    let registry = Registry::start().await.unwrap();
    let env = Env::start_with(registry, BerthdOptions::default().node(node.clone())).await;
    let st = env.cri.status(false).await.unwrap();
    let net = st
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap();
    assert!(!net.status);
    assert_eq!(net.reason, "NetworkPluginNotReady");
    assert!(
        net.message.contains("berth0 exists and is not a bridge"),
        "{}",
        net.message
    );
    let mut rt = env.cri.runtime.clone();
    let r = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox_config("not-ready")),
            runtime_handler: String::new(),
        })
        .await;
    let st = expect_code(
        r,
        &[Code::Unavailable],
        "pod while the network is not ready",
    );
    assert!(st.message().contains("not a bridge"), "{}", st.message());
    assert!(env.cri.list_pods().await.is_empty());
    // Once the link is out of the way, the network comes up by itself.
    node.ip(&["link", "del", "berth0"]).unwrap();
    let mut ready = false;
    for _ in 0..100 {
        let st = env.cri.status(false).await.unwrap();
        ready = st
            .status
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.r#type == "NetworkReady" && c.status);
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "NetworkReady stays false after the fix");
    let id = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox_config("ready-now")),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox once ready")
        .into_inner()
        .pod_sandbox_id;
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
    env.finish().await;
}

#[tokio::test]
async fn sctp_host_ports_become_rules_of_their_own() {
    let n = start("").await;
    let sctp = PortMapping {
        protocol: Protocol::Sctp as i32,
        container_port: 9,
        host_port: 9999,
        host_ip: String::new(),
    };
    let id = run_pod(&n, &pod_config(&n, "sctp", vec![sctp, tcp(9999, 9)]))
        .await
        .expect("SCTP and TCP on one port number");
    let (ips, _) = pod_ips(&n, &id).await;
    let node = n.env.berthd.node().unwrap();
    let map = node
        .exec("nft", &["list", "map", "inet", "berth", "hostports4"])
        .unwrap();
    let text = String::from_utf8_lossy(&map.stdout).to_string();
    assert!(
        text.contains(&format!("sctp . 9999 : {} . 9", ips[0])),
        "{text}"
    );
    assert!(
        text.contains(&format!("tcp . 9999 : {} . 9", ips[0])),
        "{text}"
    );
    stop_and_remove(&n, &id).await;
    n.env.finish().await;
}

#[tokio::test]
async fn a_configured_gateway_is_the_bridges_address_and_the_pods_route() {
    let n = start("subnet = \"10.96.0.0/24\"\ngateway = \"10.96.0.254\"\n").await;
    let (p, c) = client_pod(&n, "gw").await;
    let (ips, _) = pod_ips(&n, &p).await;
    assert_eq!(
        ips[0].to_string(),
        "10.96.0.1",
        "the first host address is a pod's"
    );
    let node = n.env.berthd.node().unwrap();
    let addrs = node.ip(&["-4", "addr", "show", "berth0"]).unwrap();
    assert!(addrs.contains("10.96.0.254/24"), "{addrs}");
    let routes = berth_conformance::pods::sh(&n.env, &c, "ip route").await;
    assert!(
        routes.contains("default via 10.96.0.254 dev eth0"),
        "{routes}"
    );
    stop_and_remove(&n, &p).await;
    n.env.finish().await;
}

/// PodSandboxStats counts the pod's traffic on its own interface, read
/// inside its network namespace.
#[tokio::test]
async fn pod_stats_count_the_pods_network_traffic() {
    let n = start("").await;
    let cfg = pod_config(&n, "net-stats", vec![]);
    let id = run_pod(&n, &cfg).await.expect("RunPodSandbox");
    let gateway = "10.89.0.1";
    run_container(
        &n,
        &id,
        &cfg,
        "pinger",
        &format!("ping -c 5 -i 0.2 {gateway}; sleep 3600"),
    )
    .await;
    let stats = || async {
        n.env
            .cri
            .runtime
            .clone()
            .pod_sandbox_stats(berth_cri_api::v1::PodSandboxStatsRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .expect("PodSandboxStats")
            .into_inner()
            .stats
            .and_then(|s| s.linux)
            .and_then(|l| l.network)
            .expect("a pod network's counters")
    };
    let t = std::time::Instant::now();
    loop {
        let net = stats().await;
        let eth0 = net
            .default_interface
            .expect("eth0 is the default interface");
        assert_eq!(eth0.name, "eth0");
        let (rx, tx) = (
            eth0.rx_bytes.map(|v| v.value).unwrap_or(0),
            eth0.tx_bytes.map(|v| v.value).unwrap_or(0),
        );
        // five echo requests and their replies, 98 bytes each at least
        if rx >= 5 * 98 && tx >= 5 * 98 {
            assert!(
                net.interfaces.iter().all(|i| i.name != "lo"),
                "{:?}",
                net.interfaces
            );
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "rx {rx} tx {tx}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // ListPodSandboxMetrics: the same counters as cadvisor's series, at pod
    // level with the interface as the last label.
    let pm = n
        .env
        .cri
        .runtime
        .clone()
        .list_pod_sandbox_metrics(berth_cri_api::v1::ListPodSandboxMetricsRequest {})
        .await
        .expect("ListPodSandboxMetrics")
        .into_inner()
        .pod_metrics
        .into_iter()
        .find(|m| m.pod_sandbox_id == id)
        .expect("the pod's metrics");
    let series = |name: &str| {
        pm.metrics
            .iter()
            .find(|m| m.name == name && m.label_values.last().map(String::as_str) == Some("eth0"))
            .unwrap_or_else(|| panic!("{name} for eth0: {:?}", pm.metrics))
            .clone()
    };
    let rx = series("container_network_receive_bytes_total");
    assert!(rx.value.unwrap().value >= 5 * 98, "{rx:?}");
    assert_eq!(
        rx.metric_type,
        berth_cri_api::v1::MetricType::Counter as i32
    );
    assert_eq!(rx.label_values[3], "net-stats", "the pod label: {rx:?}");
    assert_eq!(rx.label_values[4], "POD", "pod-level series: {rx:?}");
    assert!(
        series("container_network_transmit_packets_total")
            .value
            .unwrap()
            .value
            >= 5
    );
    stop_and_remove(&n, &id).await;
    n.env.finish().await;
}
