//! berth's cgroup v2 path, driven for real on any host: berthd runs in a
//! mount namespace of its own whose /sys/fs/cgroup is the cgroup2
//! hierarchy (`BerthdOptions::cgroup2_view`), so berthd and its shims
//! detect v2 and use it, while the host may be v1 or hybrid.
//!
//! On a hybrid host the unified hierarchy offers only the controllers no v1
//! hierarchy holds (here: hugetlb), so the limits checked are those of the
//! controllers it offers; on a pure v2 host (memory, cpu, hugetlb, ...) all
//! of them. What every host checks: detection, placement of the container,
//! its execs and the pod's pause process in leaf cgroups of their own (v2
//! forbids processes in a cgroup that delegates controllers), the
//! container's cgroup namespace and read-only cgroup2 /sys/fs/cgroup, the
//! device rules (an eBPF program on v2: mknod of the node's disk works,
//! opening it does not; the OCI defaults and a requested device open), Stop
//! ending every process of a container that shares the pod's PID
//! namespace, and every cgroup and mount gone afterwards.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_conformance::Env;
use berth_conformance::berthd::BerthdOptions;
use berth_conformance::cri::sandbox_config;
use berth_conformance::pods::*;
use berth_conformance::registry::Registry;
use berth_cri_api::v1::{
    HugepageLimit, LinuxContainerConfig, LinuxContainerResources, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, RemoveContainerRequest,
    StopContainerRequest,
};

/// Where this host mounts the cgroup2 hierarchy (the one berthd sees on
/// its /sys/fs/cgroup), if anywhere: /sys/fs/cgroup on a pure v2 host,
/// /sys/fs/cgroup/unified on a hybrid one.
fn host_cgroup2() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let point = left.split(' ').nth(4)?;
        (right.split(' ').next() == Some("cgroup2")).then(|| PathBuf::from(point))
    })
}

/// Takes back, when dropped (after berthd and its cgroups are gone, also on
/// a failed run), the controllers the hierarchy's root delegates now and
/// did not before: berth delegates from the root down, as a runtime does.
struct RootDelegation {
    control: PathBuf,
    before: String,
}

impl RootDelegation {
    fn taken_back(&self) -> Vec<String> {
        let now = std::fs::read_to_string(&self.control).unwrap_or_default();
        let mut left = Vec::new();
        for c in now.split_whitespace() {
            if !self.before.split_whitespace().any(|b| b == c)
                && std::fs::write(&self.control, format!("-{c}")).is_err()
            {
                left.push(c.to_string());
            }
        }
        left
    }
}

impl Drop for RootDelegation {
    fn drop(&mut self) {
        let _ = self.taken_back();
    }
}

/// The v2 cgroup of a process ("0::<path>" of /proc/PID/cgroup).
fn v2_cgroup_of(pid: i32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("/proc/PID/cgroup");
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no v2 line in /proc/{pid}/cgroup: {text}"))
        .to_string()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .trim()
        .to_string()
}

fn procs(dir: &Path) -> Vec<i32> {
    read(&dir.join("cgroup.procs"))
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_and_containers_on_cgroup_v2() {
    // The host must see the hierarchy too: that is where this test looks,
    // and where the harness finds what a failed run left.
    let root = host_cgroup2().expect(
        "this scenario needs the host to mount the cgroup2 hierarchy (pure v2, or v1 with /sys/fs/cgroup/unified) to check berthd's cgroups in",
    );
    let control = root.join("cgroup.subtree_control");
    let delegation = RootDelegation {
        before: read(&control),
        control,
    };
    let registry = Registry::start().await.expect("starting docker-registry");
    let env = Env::start_with(
        registry,
        BerthdOptions {
            cgroup2_view: true,
            ..Default::default()
        },
    )
    .await;
    let controllers: Vec<String> = read(&root.join("cgroup.controllers"))
        .split_whitespace()
        .map(str::to_string)
        .collect();
    println!("cgroup2 controllers offered here: {controllers:?}");
    let mounts_before = env
        .berthd
        .mounts_in_its_namespace()
        .expect("berthd's mounts");
    let image = push_busybox(&env, "busybox:v2").await;

    // kubelet's pod with a shared PID namespace: berth's pause process.
    let mut config = sandbox_config("v2");
    config.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                pid: NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = run_pod(&env, config, &image).await;

    // Limits for the controllers this hierarchy offers.
    let mut resources = LinuxContainerResources::default();
    let mut expected: Vec<(&str, String)> = Vec::new();
    if controllers.iter().any(|c| c == "memory") {
        resources.memory_limit_in_bytes = 64 << 20;
        expected.push(("memory.max", (64u64 << 20).to_string()));
    }
    if controllers.iter().any(|c| c == "cpu") {
        resources.cpu_quota = 50_000;
        resources.cpu_period = 100_000;
        resources.cpu_shares = 512;
        expected.push(("cpu.max", "50000 100000".into()));
        // runc's conversion: 1 + ((shares - 2) * 9999) / 262142.
        expected.push(("cpu.weight", "20".into()));
    }
    if controllers.iter().any(|c| c == "hugetlb")
        && Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").is_dir()
    {
        resources.hugepage_limits = vec![HugepageLimit {
            page_size: "2MB".into(),
            limit: 4 << 20,
        }];
        expected.push(("hugetlb.2MB.max", (4u64 << 20).to_string()));
    }
    if expected.is_empty() {
        // Every controller is held by a v1 hierarchy: placement only.
        println!("no limit checked: the cgroup2 hierarchy offers none berth sets");
    }
    let mut c = container(&pod, "a", &["sleep", "3600"]);
    c.linux
        .get_or_insert_with(LinuxContainerConfig::default)
        .resources = Some(resources);
    let a = run(&env, &pod, c).await;

    // The container's process is in a cgroup of its own under berthd's
    // parent, in the v2 hierarchy.
    let pid = container_pid(&env, &a).await;
    let path = v2_cgroup_of(pid);
    let parent = format!("/{}/", env.berthd.cgroup_parent());
    assert!(
        path.starts_with(&parent),
        "container cgroup {path} is under {parent}"
    );
    let dir = root.join(path.trim_start_matches('/'));
    assert_eq!(procs(&dir), vec![pid], "{}", dir.display());
    for (file, value) in &expected {
        assert_eq!(&read(&dir.join(file)), value, "{file}");
    }

    // The pod cgroup delegates controllers, so it holds no process itself:
    // the pause process has a leaf of its own beside the container's.
    let pod_dir = dir.parent().expect("pod cgroup").to_path_buf();
    assert!(
        procs(&pod_dir).is_empty(),
        "processes in the pod cgroup {}",
        pod_dir.display()
    );
    // It delegates (at least) the controllers of the limits set above.
    let subtree = read(&pod_dir.join("cgroup.subtree_control"));
    for (file, _) in &expected {
        let c = file.split('.').next().unwrap_or_default();
        assert!(
            subtree.split_whitespace().any(|s| s == c),
            "pod cgroup delegates {c}: {subtree:?}"
        );
    }
    let pause = std::fs::read_dir(&pod_dir)
        .expect("pod cgroup")
        .flatten()
        .filter(|e| e.path().is_dir() && e.path() != dir)
        .map(|e| procs(&e.path()))
        .find(|p| !p.is_empty())
        .expect("a sibling cgroup with the pause process");
    assert_eq!(pause.len(), 1, "the pause cgroup holds pause only");
    // Both leaves are governed by a device program of their own.
    for leaf in std::fs::read_dir(&pod_dir)
        .expect("pod cgroup")
        .flatten()
        .filter(|e| e.path().is_dir())
    {
        assert_eq!(
            berth_runtime::cgroups::device_programs(&leaf.path()).expect("BPF_PROG_QUERY"),
            1,
            "one device program on {}",
            leaf.path().display()
        );
    }

    // Inside: a cgroup namespace rooted at the container's cgroup, and
    // cgroup2 on a read-only /sys/fs/cgroup.
    // (On a hybrid host the v1 lines are there too: the v1 hierarchies are
    // not berthd's here, and the process stays where berthd was in them.)
    let own = sh(&env, &a, "cat /proc/self/cgroup").await;
    assert!(own.lines().any(|l| l == "0::/"), "an exec's cgroup: {own}");
    let mnt = sh(&env, &a, "grep ' /sys/fs/cgroup ' /proc/self/mountinfo").await;
    assert!(
        mnt.contains(" - cgroup2 ")
            && mnt
                .split_whitespace()
                .nth(5)
                .is_some_and(|o| o.split(',').any(|f| f == "ro")),
        "container /sys/fs/cgroup: {mnt}"
    );
    // Running `sleep` in the background keeps the exec's own process alive
    // while the host looks at the cgroup.
    let two = sh(&env, &a, "sleep 30 >/dev/null 2>&1 & echo $!").await;
    let exec_child: i32 = two.trim().parse().expect("background pid");
    let in_cgroup = procs(&dir);
    let others: Vec<i32> = in_cgroup.iter().copied().filter(|p| *p != pid).collect();
    assert_eq!(
        others.len(),
        1,
        "the container and the exec's child: {in_cgroup:?}"
    );
    // NSpid: its pid on the host, then in the pod's PID namespace.
    let status = std::fs::read_to_string(format!("/proc/{}/status", others[0])).unwrap();
    let ns_pid = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|v| v.split_whitespace().last())
        .and_then(|v| v.parse::<i32>().ok());
    assert_eq!(
        ns_pid,
        Some(exec_child),
        "the other process in the container's cgroup is the exec's child"
    );

    // Device rules: v2 has no devices controller; berth attaches an eBPF
    // program to the container's cgroup instead.
    check_device_rules(&env, &pod, "devices").await;

    // A second container whose processes share the pod's PID namespace:
    // its init dying does not end the others; Stop must end them all.
    let b = run(
        &env,
        &pod,
        container(&pod, "b", &["sh", "-c", "sleep 3600 & sleep 3600 & wait"]),
    )
    .await;
    let b_dir = root.join(v2_cgroup_of(container_pid(&env, &b).await).trim_start_matches('/'));
    let t = Instant::now();
    let b_procs = loop {
        let p = procs(&b_dir);
        if p.len() == 3 || t.elapsed() > Duration::from_secs(10) {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(b_procs.len(), 3, "sh and two sleeps: {b_procs:?}");
    let mut rt = env.cri.runtime.clone();
    rt.stop_container(StopContainerRequest {
        container_id: b.clone(),
        timeout: 0,
    })
    .await
    .expect("StopContainer");
    let t = Instant::now();
    while b_procs.iter().any(|p| alive(*p)) && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left: Vec<i32> = b_procs.iter().copied().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes of b alive after Stop: {left:?}");
    rt.remove_container(RemoveContainerRequest {
        container_id: b.clone(),
    })
    .await
    .expect("RemoveContainer");
    assert!(!b_dir.exists(), "{} removed with b", b_dir.display());

    // The OOM killer's kills are read from memory.events.
    if controllers.iter().any(|c| c == "memory") {
        let hog = run(&env, &pod, memory_hog(&pod, "hog", 200)).await;
        let st = wait_exited(&env, &hog, Duration::from_secs(30)).await;
        assert_eq!(st.reason, "OOMKilled", "{st:?}");
    }

    remove_pod(&env, pod).await;
    assert!(!dir.exists(), "{} removed with the pod", dir.display());
    assert!(!pod_dir.exists(), "{} removed", pod_dir.display());
    let parent_dir = root.join(env.berthd.cgroup_parent());
    let children: Vec<PathBuf> = std::fs::read_dir(&parent_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert!(children.is_empty(), "cgroups left: {children:?}");
    assert_eq!(
        env.berthd
            .mounts_in_its_namespace()
            .expect("berthd's mounts"),
        mounts_before,
        "mounts in berthd's namespace"
    );
    env.finish().await;
    assert_eq!(
        delegation.taken_back(),
        Vec::<String>::new(),
        "controllers the root delegates only since berthd ran"
    );
    assert_eq!(read(&delegation.control), delegation.before);
}
