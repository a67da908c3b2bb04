//! User namespaces (KEP-127, `hostUsers: false`) as kubelet asks for them:
//! userns_options mode POD with one uid and one gid mapping, the pod's
//! user namespace joined by every container and exec, its rootfs and
//! idmapped binds seen with the right owners, hostPath writes landing as
//! the mapped ids; mode NODE the node's; the refusals of the CRI comments.
//! Each scenario drives a real berthd, removes what it made and ends with
//! `env.finish()` (nothing leaked: mounts, pins, cgroups, processes).

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

use berth_conformance::Env;
use berth_conformance::cri::sandbox_config;
use berth_conformance::pods::*;
use berth_cri_api::v1::{
    IdMapping, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListPodSandboxRequest, Mount,
    NamespaceMode, NamespaceOption, PodSandboxConfig, RunPodSandboxRequest, UserNamespace,
};
use common::*;
use tonic::Code;

/// Where the pod's ids start on the node, as kubelet picks them (a
/// multiple of 65536 past the node's own users).
const HOST_ID: u32 = 65536 * 7;
const LENGTH: u32 = 65536;

fn mapping(container_id: u32, host_id: u32, length: u32) -> IdMapping {
    IdMapping {
        container_id,
        host_id,
        length,
    }
}

fn pod_userns() -> UserNamespace {
    UserNamespace {
        mode: NamespaceMode::Pod as i32,
        uids: vec![mapping(0, HOST_ID, LENGTH)],
        gids: vec![mapping(0, HOST_ID, LENGTH)],
    }
}

/// A pod config with `userns` (and kubelet's other namespace options).
fn userns_pod(name: &str, userns: Option<UserNamespace>) -> PodSandboxConfig {
    let mut config = sandbox_config(name);
    config.hostname = name.into();
    config.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                pid: NamespaceMode::Container as i32,
                userns_options: userns,
                ..Default::default()
            }),
            ..Default::default()
        }),
        // A namespaced sysctl: the pod's root owns its network namespace.
        sysctls: [(
            "net.ipv4.ip_unprivileged_port_start".to_string(),
            "77".to_string(),
        )]
        .into(),
        ..Default::default()
    });
    config
}

/// A container of `p` with the pod's namespace options, as kubelet copies
/// them into each container.
fn userns_container(p: &Pod, name: &str, cmd: &[&str]) -> berth_cri_api::v1::ContainerConfig {
    let mut c = container(p, name, cmd);
    security(&mut c).namespace_options = p
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone());
    c
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

async fn pod_count(env: &Env) -> usize {
    let mut rt = env.cri.runtime.clone();
    rt.list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
        .len()
}

/// The pod's root is the mapped host id: /proc/self/uid_map says so, the
/// image's files are root's inside (idmapped layers, no chown), the rootfs,
/// /etc/hosts, /dev/shm and the hostname take root's writes, execs join
/// the same user namespace, a namespaced sysctl applies, an idmapped
/// hostPath gets files the node sees as its root's and a plain one as the
/// mapped id's. Status claims the feature.
#[tokio::test]
async fn a_pod_with_its_own_user_namespace_maps_root_and_sees_its_files_as_roots() {
    let env = Env::start().await;
    let st = env.cri.status(false).await.expect("Status");
    let features = st.runtime_handlers[0].features.unwrap();
    assert!(
        features.user_namespaces,
        "claimed where the kernel idmaps overlay layers (this test's kernel does)"
    );
    assert!(st.features.unwrap().user_namespaces_host_network);

    let image = push_busybox(&env, "userns/busybox:1").await;
    let p = run_pod(&env, userns_pod("userns", Some(pod_userns())), &image).await;

    let idmapped = tempfile::tempdir().expect("temp dir");
    let plain = tempfile::tempdir().expect("temp dir");
    // A plain bind keeps the node's owners: the pod's root (HOST_ID on
    // the node) writes there only where anyone may.
    std::fs::set_permissions(plain.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut c = userns_container(&p, "app", &["sleep", "1000"]);
    c.mounts = vec![
        Mount {
            container_path: "/idmapped".into(),
            host_path: idmapped.path().display().to_string(),
            uid_mappings: vec![mapping(0, HOST_ID, LENGTH)],
            gid_mappings: vec![mapping(0, HOST_ID, LENGTH)],
            ..Default::default()
        },
        Mount {
            container_path: "/plain".into(),
            host_path: plain.path().display().to_string(),
            ..Default::default()
        },
    ];
    let id = run(&env, &p, c).await;

    let want = vec!["0".to_string(), HOST_ID.to_string(), LENGTH.to_string()];
    assert_eq!(words(&sh(&env, &id, "cat /proc/self/uid_map").await), want);
    assert_eq!(words(&sh(&env, &id, "cat /proc/self/gid_map").await), want);
    // The container's own process too (the exec above could differ).
    assert_eq!(words(&sh(&env, &id, "cat /proc/1/uid_map").await), want);
    let node_userns = std::fs::read_link("/proc/self/ns/user").unwrap();
    let pod_userns_link = sh(&env, &id, "readlink /proc/self/ns/user").await;
    assert_ne!(pod_userns_link.trim(), node_userns.display().to_string());
    assert_eq!(
        pod_userns_link.trim(),
        sh(&env, &id, "readlink /proc/1/ns/user").await.trim(),
        "an exec joins the container's user namespace"
    );
    assert_eq!(sh(&env, &id, "id -u; id -g").await, "0\n0\n");
    assert_eq!(
        sh(&env, &id, "stat -c %u:%g /bin/sh /etc /").await,
        "0:0\n0:0\n0:0\n",
        "the image's files are root's inside"
    );
    for (what, script) in [
        (
            "the rootfs",
            "echo hi > /new && chown 1:1 /new && stat -c %u:%g /new",
        ),
        (
            "/etc/hosts",
            "echo '10.9.9.9 extra' >> /etc/hosts && stat -c %u:%g /etc/hosts",
        ),
        ("/dev/shm", "touch /dev/shm/x && stat -c %u:%g /dev/shm/x"),
        ("resolv.conf", "stat -c %u:%g /etc/resolv.conf"),
    ] {
        let (code, out, err) = try_sh(&env, &id, script).await;
        assert_eq!(code, 0, "{what}: {script}: {err}");
        let last = out.lines().last().unwrap_or_default();
        assert!(
            last == "0:0" || last == "1:1",
            "{what}: owner {last:?} inside"
        );
    }
    assert_eq!(
        sh(
            &env,
            &id,
            "cat /proc/sys/net/ipv4/ip_unprivileged_port_start"
        )
        .await,
        "77\n",
        "the pod's namespaced sysctl"
    );
    assert_eq!(sh(&env, &id, "hostname").await.trim(), "userns");
    // Not the node's root: what only the node's root may do is refused.
    // Not the node's root: a device node only the node's root may make
    // (CAP_MKNOD of the user namespace is not the node's).
    let (code, _, _) = try_sh(&env, &id, "mknod /tmp/mem c 1 1").await;
    assert_ne!(code, 0, "the pod's root made a device node");
    let (code, _, _) = try_sh(
        &env,
        &id,
        "ls /dev/null /dev/zero /dev/urandom >/dev/null && echo x > /dev/null",
    )
    .await;
    assert_eq!(code, 0, "the pod's devices work");

    sh(&env, &id, "touch /idmapped/a /plain/b").await;
    let a = std::fs::metadata(idmapped.path().join("a")).unwrap();
    assert_eq!(
        (a.uid(), a.gid()),
        (0, 0),
        "an idmapped hostPath: the container's root writes as the node's"
    );
    let b = std::fs::metadata(plain.path().join("b")).unwrap();
    assert_eq!(
        (b.uid(), b.gid()),
        (HOST_ID, HOST_ID),
        "a plain hostPath: the container's root writes as its mapped id"
    );
    assert_eq!(sh(&env, &id, "stat -c %u /idmapped/a").await, "0\n");

    // A second container joins the same user namespace.
    let id2 = run(&env, &p, userns_container(&p, "second", &["sleep", "1000"])).await;
    assert_eq!(
        sh(&env, &id2, "readlink /proc/self/ns/user").await,
        pod_userns_link
    );
    // ContainerStatus reports the idmapped mount's mappings.
    let cs = status(&env, &id).await.expect("ContainerStatus");
    let m = cs
        .mounts
        .iter()
        .find(|m| m.container_path == "/idmapped")
        .expect("the idmapped mount in ContainerStatus");
    assert_eq!(m.uid_mappings, vec![mapping(0, HOST_ID, LENGTH)]);

    remove_pod(&env, p).await;
    env.finish().await;
}

/// berthd SIGKILLed under a user-namespaced pod: the container runs on,
/// and after the restart an exec joins the same user namespace, a new
/// container of the pod too, and the pod's removal takes every pin away.
#[tokio::test]
async fn a_user_namespaced_pod_survives_a_berthd_sigkill() {
    let mut env = Env::start().await;
    let image = push_busybox(&env, "userns/crash:1").await;
    let p = run_pod(&env, userns_pod("crash", Some(pod_userns())), &image).await;
    let id = run(&env, &p, userns_container(&p, "c", &["sleep", "1000"])).await;
    let before = sh(&env, &id, "readlink /proc/self/ns/user").await;
    env.berthd.kill();
    env.berthd.restart().await.expect("restart berthd");
    env.cri = env.berthd.cri().await.unwrap();
    assert_eq!(sh(&env, &id, "readlink /proc/self/ns/user").await, before);
    assert_eq!(sh(&env, &id, "id -u").await, "0\n");
    let id2 = run(&env, &p, userns_container(&p, "after", &["sleep", "1000"])).await;
    assert_eq!(sh(&env, &id2, "readlink /proc/self/ns/user").await, before);
    remove_pod(&env, p).await;
    env.finish().await;
}

/// A pod on the node's network with a user namespace of its own
/// (RuntimeFeatures.user_namespaces_host_network): the network namespace
/// is the node's, the user namespace the pod's.
#[tokio::test]
async fn a_host_network_pod_can_have_its_own_user_namespace() {
    let env = Env::start().await;
    let image = push_busybox(&env, "userns/hostnet:1").await;
    let mut config = userns_pod("hostnet", Some(pod_userns()));
    let linux = config.linux.as_mut().unwrap();
    linux.sysctls.clear();
    linux
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options
        .as_mut()
        .unwrap()
        .network = NamespaceMode::Node as i32;
    let p = run_pod(&env, config, &image).await;
    let id = run(&env, &p, userns_container(&p, "c", &["sleep", "1000"])).await;
    assert_eq!(
        words(&sh(&env, &id, "cat /proc/self/uid_map").await),
        vec!["0".to_string(), HOST_ID.to_string(), LENGTH.to_string()]
    );
    assert_eq!(
        sh(&env, &id, "readlink /proc/self/ns/net").await.trim(),
        std::fs::read_link("/proc/self/ns/net")
            .unwrap()
            .display()
            .to_string(),
        "the node's network namespace"
    );
    remove_pod(&env, p).await;
    env.finish().await;
}

/// Mode NODE (and no userns_options): the node's user namespace, its
/// mapping printed as the node's.
#[tokio::test]
async fn mode_node_runs_in_the_nodes_user_namespace() {
    let env = Env::start().await;
    let image = push_busybox(&env, "userns/node:1").await;
    let host_map = words(&std::fs::read_to_string("/proc/self/uid_map").unwrap());
    for (name, userns) in [
        (
            "node",
            Some(UserNamespace {
                mode: NamespaceMode::Node as i32,
                ..Default::default()
            }),
        ),
        ("unset", None),
    ] {
        let p = run_pod(&env, userns_pod(name, userns), &image).await;
        let id = run(&env, &p, userns_container(&p, "c", &["sleep", "1000"])).await;
        assert_eq!(
            words(&sh(&env, &id, "cat /proc/self/uid_map").await),
            host_map,
            "{name}"
        );
        assert_eq!(
            sh(&env, &id, "readlink /proc/self/ns/user").await.trim(),
            std::fs::read_link("/proc/self/ns/user")
                .unwrap()
                .display()
                .to_string(),
            "{name}"
        );
        // A container whose PID 1 moved into a user namespace of its own
        // (`unshare -U`): its execs stay in the pod's, here the node's.
        if name == "node" {
            let moved = run(
                &env,
                &p,
                userns_container(&p, "moved", &["unshare", "-U", "sleep", "1000"]),
            )
            .await;
            let mut own = String::new();
            for _ in 0..50 {
                // Until `unshare` has run (an unmapped namespace shows an
                // empty map).
                own = sh(&env, &moved, "cat /proc/1/uid_map").await;
                if words(&own) != host_map {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            assert_ne!(
                words(&own),
                host_map,
                "PID 1 is in a user namespace of its own"
            );
            assert_eq!(
                words(&sh(&env, &moved, "cat /proc/self/uid_map").await),
                host_map,
                "an exec joins the pod's user namespace, not PID 1's"
            );
        }
        remove_pod(&env, p).await;
    }
    env.finish().await;
}

/// What the CRI comments refuse, with INVALID_ARGUMENT naming it, and
/// nothing made: mappings that are not one each, container id 0 unmapped,
/// mappings with NODE, CONTAINER and TARGET; a container whose user
/// namespace is not its pod's; an idmapped mount whose mappings are not
/// the pod's, or in a pod without a user namespace.
#[tokio::test]
async fn malformed_user_namespaces_are_refused_and_make_nothing() {
    let env = Env::start().await;
    let image = push_busybox(&env, "userns/bad:1").await;
    let before = pod_count(&env).await;
    let two = vec![mapping(0, 1000, 100000), mapping(0, 2000, 100000)];
    let cases = [
        (
            "two mappings",
            UserNamespace {
                mode: NamespaceMode::Pod as i32,
                uids: two.clone(),
                gids: two,
            },
            "one",
        ),
        (
            "container id 0 not mapped",
            UserNamespace {
                mode: NamespaceMode::Pod as i32,
                uids: vec![mapping(1, 1000, 100000)],
                gids: vec![mapping(1, 1000, 100000)],
            },
            "container id 0",
        ),
        (
            "POD without mappings",
            UserNamespace {
                mode: NamespaceMode::Pod as i32,
                ..Default::default()
            },
            "mapping",
        ),
        (
            "a mapping past the last id",
            UserNamespace {
                mode: NamespaceMode::Pod as i32,
                uids: vec![mapping(0, u32::MAX - 10, 100)],
                gids: vec![mapping(0, HOST_ID, 100)],
            },
            "uids",
        ),
        (
            "the node's root as the pod's",
            UserNamespace {
                mode: NamespaceMode::Pod as i32,
                uids: vec![mapping(0, 0, 65536)],
                gids: vec![mapping(0, 0, 65536)],
            },
            "host id 0",
        ),
        (
            "NODE with mappings",
            UserNamespace {
                mode: NamespaceMode::Node as i32,
                uids: vec![mapping(0, 1000, 100000)],
                gids: vec![mapping(0, 1000, 100000)],
            },
            "NODE",
        ),
        (
            "CONTAINER",
            UserNamespace {
                mode: NamespaceMode::Container as i32,
                ..Default::default()
            },
            "CONTAINER",
        ),
        (
            "TARGET",
            UserNamespace {
                mode: NamespaceMode::Target as i32,
                ..Default::default()
            },
            "TARGET",
        ),
    ];
    for (what, userns, says) in cases {
        let mut rt = env.cri.runtime.clone();
        let r = rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(userns_pod("bad", Some(userns))),
                runtime_handler: String::new(),
            })
            .await;
        let s = expect_code(r, &[Code::InvalidArgument], what);
        assert!(
            s.message().contains("userns_options") && s.message().contains(says),
            "{what}: {}",
            s.message()
        );
    }
    assert_eq!(pod_count(&env).await, before, "a refused pod is not made");

    // A container must share its pod's user namespace.
    let p = run_pod(&env, userns_pod("good", Some(pod_userns())), &image).await;
    let mut c = container(&p, "other", &["true"]);
    security(&mut c).namespace_options = Some(NamespaceOption {
        userns_options: Some(UserNamespace {
            mode: NamespaceMode::Pod as i32,
            uids: vec![mapping(0, HOST_ID * 2, LENGTH)],
            gids: vec![mapping(0, HOST_ID * 2, LENGTH)],
        }),
        ..Default::default()
    });
    let s = expect_code(
        create(&env, &p, c).await,
        &[Code::InvalidArgument],
        "other userns",
    );
    assert!(s.message().contains("pod's"), "{}", s.message());
    let dir = tempfile::tempdir().unwrap();
    let idmapped = |m: IdMapping| Mount {
        container_path: "/m".into(),
        host_path: dir.path().display().to_string(),
        uid_mappings: vec![m],
        gid_mappings: vec![m],
        ..Default::default()
    };
    let mut c = userns_container(&p, "badmount", &["true"]);
    c.mounts = vec![idmapped(mapping(0, HOST_ID * 3, LENGTH))];
    expect_code(
        create(&env, &p, c).await,
        &[Code::InvalidArgument],
        "an idmapped mount with other mappings",
    );
    let mut c = userns_container(&p, "halfmount", &["true"]);
    c.mounts = vec![Mount {
        gid_mappings: vec![],
        ..idmapped(mapping(0, HOST_ID, LENGTH))
    }];
    expect_code(
        create(&env, &p, c).await,
        &[Code::InvalidArgument],
        "an idmapped mount with uid mappings only",
    );
    assert!(list_containers(&env, &p.id).await.is_empty());
    remove_pod(&env, p).await;

    let p = run_pod(&env, userns_pod("plain", None), &image).await;
    let mut c = container(&p, "mapped", &["true"]);
    c.mounts = vec![idmapped(mapping(0, HOST_ID, LENGTH))];
    expect_code(
        create(&env, &p, c).await,
        &[Code::InvalidArgument],
        "an idmapped mount in a pod without a user namespace",
    );
    remove_pod(&env, p).await;
    env.finish().await;
}

/// `berthd commit` of a container in a pod with its own user namespace:
/// the layer records the ids as the container saw them (its root is 0,
/// not the node's HOST_ID), so the image runs the same anywhere.
#[tokio::test]
async fn a_commit_of_a_user_namespaced_container_records_the_ids_it_saw() {
    let env = Env::start().await;
    let image = push_busybox(&env, "userns/commit:1").await;
    let p = run_pod(
        &env,
        userns_pod("userns-commit", Some(pod_userns())),
        &image,
    )
    .await;
    let id = run(&env, &p, userns_container(&p, "writer", &["sleep", "1000"])).await;
    sh(
        &env,
        &id,
        "mkdir -p /srv/out && echo r > /srv/out/root && echo u > /srv/out/user && \
         chown 1000:1001 /srv/out/user",
    )
    .await;
    // On the node the container's files are the mapped ids.
    {
        use std::os::unix::fs::MetadataExt as _;
        let upper = env
            .berthd
            .root()
            .join("containers")
            .join(&id)
            .join("upper/srv/out");
        let (r, u) = (
            std::fs::metadata(upper.join("root")).expect("the writable layer's file"),
            std::fs::metadata(upper.join("user")).expect("the writable layer's file"),
        );
        assert_eq!((r.uid(), r.gid()), (HOST_ID, HOST_ID));
        assert_eq!((u.uid(), u.gid()), (HOST_ID + 1000, HOST_ID + 1001));
    }
    let berthd = berth_conformance::berthd::berthd_binary().expect("the harness's berthd");
    let name = format!("{}/userns/committed:1", env.registry.host());
    let out = std::process::Command::new(berthd)
        .arg("--config")
        .arg(env.berthd.dir().join("berthd.toml"))
        .args(["commit", &id, &name])
        .output()
        .expect("berthd commit");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A pod without a user namespace: the ids are the container's.
    let plain = run_pod(&env, userns_pod("userns-commit-plain", None), &name).await;
    let c = run(
        &env,
        &plain,
        container(&plain, "reader", &["sleep", "1000"]),
    )
    .await;
    assert_eq!(
        sh(
            &env,
            &c,
            "stat -c '%u:%g %n' /srv/out /srv/out/root /srv/out/user"
        )
        .await,
        "0:0 /srv/out\n0:0 /srv/out/root\n1000:1001 /srv/out/user\n"
    );
    remove_pod(&env, plain).await;
    remove_pod(&env, p).await;
    env.finish().await;
}
