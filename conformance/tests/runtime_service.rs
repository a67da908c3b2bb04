//! RuntimeService calls: Version, Status (RuntimeReady, NetworkReady with
//! its reason), RuntimeConfig answer; the calls of later issues answer
//! UNIMPLEMENTED naming themselves.

mod common;

use berth_conformance::Env;
use berth_cri_api::v1::CheckpointContainerRequest;
use common::*;
use tonic::Code;

#[tokio::test]
async fn version_reports_berth_and_cri_v1() {
    let env = Env::start().await;
    let v = env.cri.version().await.expect("Version");
    assert_eq!(v.runtime_name, "berth");
    assert_eq!(v.runtime_api_version, "v1");
    assert!(!v.runtime_version.is_empty(), "runtime_version empty");
    assert!(!v.version.is_empty(), "version empty");
    // Every call leaves one line at debug (the suite's level): method,
    // code and duration.
    let t = std::time::Instant::now();
    loop {
        let log = env.berthd.log();
        if let Some(l) = log
            .lines()
            .find(|l| l.contains("CRI call answered") && l.contains("RuntimeService/Version"))
        {
            assert!(l.contains("elapsed_ms") && l.contains("code"), "{l}");
            break;
        }
        assert!(t.elapsed().as_secs() < 5, "no call line in the log:\n{log}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    env.finish().await;
}

#[tokio::test]
async fn status_reports_network_not_ready_with_a_reason_a_person_can_act_on() {
    // The CNI plugin with an empty config dir: NetworkReady false, saying
    // where the config was looked for.
    let conf = tempfile::tempdir().unwrap();
    let registry = berth_conformance::registry::Registry::start()
        .await
        .expect("registry");
    let env = Env::start_with(
        registry,
        berth_conformance::berthd::BerthdOptions::default().network(&format!(
            "plugin = \"cni\"\ncni_conf_dir = \"{}\"\n",
            conf.path().display()
        )),
    )
    .await;
    for verbose in [false, true] {
        let st = env.cri.status(verbose).await.expect("Status");
        let conds = st.status.expect("status.status").conditions;
        let runtime = conds
            .iter()
            .find(|c| c.r#type == "RuntimeReady")
            .expect("RuntimeReady condition");
        assert!(runtime.status, "RuntimeReady must be true");
        let net = conds
            .iter()
            .find(|c| c.r#type == "NetworkReady")
            .expect("NetworkReady condition");
        assert!(
            !net.status,
            "NetworkReady must be false without a CNI config"
        );
        assert_eq!(net.reason, "NetworkPluginNotReady");
        assert!(
            net.message.contains(&conf.path().display().to_string()),
            "the message names the config dir: {}",
            net.message
        );
    }
    env.finish().await;
}

/// kubelet reads the handlers and their features from Status: it refuses
/// `hostUsers: false` pods and `recursiveReadOnly: Enabled` mounts on a
/// handler that does not claim them, and critest skips those specs. berth
/// claims only what it does.
#[tokio::test]
async fn status_lists_the_default_handler_and_claims_no_feature_berth_lacks() {
    let env = Env::start().await;
    let st = env.cri.status(false).await.expect("Status");
    assert_eq!(st.runtime_handlers.len(), 1, "{:?}", st.runtime_handlers);
    let h = &st.runtime_handlers[0];
    assert_eq!(h.name, "", "the default handler is named \"\"");
    let f = h.features.expect("the handler's features");
    // mount_setattr(2) came in Linux 5.12.
    let release = nix::sys::utsname::uname().unwrap();
    let mut v = release
        .release()
        .to_string_lossy()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok())
        .take(2)
        .collect::<Vec<_>>()
        .into_iter();
    let (major, minor) = (v.next().unwrap(), v.next().unwrap());
    // Overlays of idmapped layers came in Linux 5.19 (berthd's root here
    // is on a file system that idmaps: ext4 or tmpfs 6.3+).
    assert_eq!(
        f.user_namespaces,
        (major, minor) >= (5, 19),
        "user namespaces are claimed where the kernel idmaps overlay layers"
    );
    assert_eq!(
        f.recursive_read_only_mounts,
        (major, minor) >= (5, 12),
        "recursive read-only mounts are claimed where mount_setattr exists"
    );
    let rf = st.features.expect("RuntimeFeatures");
    assert!(
        rf.supplemental_groups_policy,
        "Merge and Strict work (containers_more.rs)"
    );
    assert_eq!(
        rf.user_namespaces_host_network, f.user_namespaces,
        "a host-network pod may have a user namespace wherever any pod may (user_namespaces.rs)"
    );
    env.finish().await;
}

#[tokio::test]
async fn runtime_config_answers() {
    let env = Env::start().await;
    let rc = env.cri.runtime_config().await.expect("RuntimeConfig");
    // kubelet (1.28+, KubeletCgroupDriverFromCRI) takes its cgroup driver
    // from this answer: berth writes cgroupfs paths itself.
    let linux = rc.linux.expect("RuntimeConfig.linux must be set on Linux");
    assert_eq!(
        linux.cgroup_driver,
        berth_cri_api::v1::CgroupDriver::Cgroupfs as i32,
        "berth manages cgroups through cgroupfs: {linux:?}"
    );
    env.finish().await;
}

#[tokio::test]
async fn other_runtime_calls_answer_unimplemented_with_their_names() {
    let env = Env::start().await;
    let mut rt = env.cri.runtime.clone();
    let checks = vec![(
        "CheckpointContainer",
        rt.checkpoint_container(CheckpointContainerRequest::default())
            .await
            .map(|_| ()),
    )];
    for (name, r) in checks {
        let s = expect_code(r, &[Code::Unimplemented], name);
        assert!(
            s.message().contains(name),
            "{name}: message {:?} must name the call",
            s.message()
        );
    }
    // the server still answers afterwards
    env.cri
        .version()
        .await
        .expect("Version after UNIMPLEMENTED calls");
    env.finish().await;
}
