//! `berthd commit` (issue 16): a container's file-system changes become a
//! new image on top of its image, through berthd's admin socket (not the
//! CRI one), visible to ListImages/ImageStatus and usable by
//! CreateContainer at once. A new container of the committed image sees
//! exactly the changes: a new file, a modified one, a deleted image file
//! (a whiteout), a directory replaced by a new one (opaque). A commit of a
//! running container works; bad requests change nothing. A commit pushed
//! (`--push`) to the same registry and to another is pulled back by digest
//! with exactly its changes; one that asks for credentials takes it only
//! with them; a failed push keeps the commit.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use berth_conformance::Env;
use berth_conformance::cri::sandbox_config;
use berth_conformance::images::{Compression, Format, ImageBuilder, TarBuilder};
use berth_conformance::pods::*;

fn berthd_bin() -> std::path::PathBuf {
    // The binary the harness runs.
    berth_conformance::berthd::berthd_binary().expect("the harness's berthd")
}

/// `berthd --config FILE commit CONTAINER NAME`, finding the running
/// berthd from its config as berthd does: (exit ok, stdout, stderr).
fn commit(config: &Path, container: &str, name: &str) -> (bool, String, String) {
    let out = Command::new(berthd_bin())
        .arg("--config")
        .arg(config)
        .args(["commit", container, name])
        .output()
        .expect("running berthd commit");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_committed_container_is_an_image_with_exactly_its_changes() {
    let env = Env::start().await;
    let extra = TarBuilder::new()
        .dir("data", 0o755)
        .file("data/keep", 0o644, b"kept\n")
        .file("data/gone", 0o644, b"deleted by the container\n")
        .file("data/edit", 0o644, b"before\n")
        .dir("data/swap", 0o755)
        .file("data/swap/old", 0o644, b"old dir\n")
        .layer(Compression::Gzip, Format::Oci);
    let img = ImageBuilder::busybox(Format::Oci).layer(extra).build();
    let image = env.push("commit/base:1", &img).await;
    env.cri.pull(&image).await.expect("pull the base");
    let p = run_pod(&env, sandbox_config("commit"), &image).await;
    let id = run(&env, &p, container(&p, "writer", &["sleep", "1000"])).await;
    sh(
        &env,
        &id,
        "echo new > /data/new && echo after > /data/edit && rm /data/gone && \
         rm -rf /data/swap && mkdir /data/swap && echo fresh > /data/swap/only && \
         mkdir -p /srv/app && echo app > /srv/app/run",
    )
    .await;

    // Bad requests: an unknown container, a name that is not a reference.
    let state = env.berthd.state();
    let config = env.berthd.dir().join("berthd.toml");
    assert!(config.is_file());
    assert!(
        state.join("admin.sock").exists(),
        "the admin socket is there"
    );
    let mode = std::fs::metadata(state.join("admin.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the admin socket is root's only");
    let before = env.cri.list_images(None).await.unwrap().len();
    let (ok, _, err) = commit(&config, &"f".repeat(64), "commit/new:1");
    assert!(!ok && err.contains("not found"), "{err}");
    let (ok, _, err) = commit(&config, &id, "Not A Reference!");
    assert!(!ok, "{err}");
    assert_eq!(env.cri.list_images(None).await.unwrap().len(), before);

    // The commit of the running container.
    let name = format!("{}/commit/new:1", env.registry.host());
    let (ok, image_id, err) = commit(&config, &id, &name);
    assert!(ok, "berthd commit failed: {err}");
    assert!(image_id.starts_with("sha256:"), "{image_id}");
    let listed = env.cri.list_images(None).await.unwrap();
    let new = listed
        .iter()
        .find(|i| i.id == image_id)
        .unwrap_or_else(|| panic!("{image_id} not in ListImages: {listed:?}"));
    assert_eq!(new.repo_tags, vec![name.clone()]);
    assert_eq!(
        sh(&env, &id, "cat /data/new").await,
        "new\n",
        "the container runs on"
    );

    // A container of the new image: exactly the changes.
    let p2 = run_pod(&env, sandbox_config("committed"), &name).await;
    let c2 = run(&env, &p2, container(&p2, "reader", &["sleep", "1000"])).await;
    assert_eq!(
        sh(&env, &c2, "cat /data/new /data/edit /data/keep").await,
        "new\nafter\nkept\n"
    );
    assert_eq!(sh(&env, &c2, "cat /srv/app/run").await, "app\n");
    assert_eq!(
        sh(&env, &c2, "ls /data/swap").await,
        "only\n",
        "the replaced directory is opaque: none of the old one shows"
    );
    let (code, _, _) = try_sh(&env, &c2, "test -e /data/gone").await;
    assert_ne!(code, 0, "the deleted file is whited out");
    assert_eq!(sh(&env, &c2, "echo ok").await, "ok\n");
    remove_pod(&env, p2).await;
    remove_pod(&env, p).await;
    env.finish().await;
}

/// The freezer file of a process's cgroup: v1 `freezer.state`
/// (FROZEN/THAWED), or v2 `cgroup.freeze` (1/0), and whether it is v2.
fn freezer_file(pid: i32) -> (std::path::PathBuf, bool) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrls, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        if ctrls.split(',').any(|c| c == "freezer") {
            let file = Path::new("/sys/fs/cgroup/freezer")
                .join(path.trim_start_matches('/'))
                .join("freezer.state");
            return (file, false);
        }
    }
    let path = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    let file = Path::new("/sys/fs/cgroup")
        .join(path.trim_start_matches('/'))
        .join("cgroup.freeze");
    (file, true)
}

/// FROZEN, FREEZING or THAWED, as v1 says it.
fn freezer_state(pid: i32) -> String {
    let (file, v2) = freezer_file(pid);
    let v = std::fs::read_to_string(file).unwrap().trim().to_string();
    match (v2, v.as_str()) {
        (true, "1") => "FROZEN".into(),
        (true, _) => "THAWED".into(),
        (false, _) => v,
    }
}

/// `berthd commit --pause`: the container is frozen while its layer is
/// read (a writer cannot leave half a file in it), thawed after; a
/// container that is not running cannot be paused, and nothing is made.
#[tokio::test]
async fn a_paused_commit_freezes_the_container_and_thaws_it_after() {
    let mut env = Env::start().await;
    let image = push_busybox(&env, "commit/pause:1").await;
    let p = run_pod(&env, sandbox_config("commit-pause"), &image).await;
    // A writer that appends numbered lines as fast as it can.
    let id = run(
        &env,
        &p,
        container(
            &p,
            "writer",
            &[
                "sh",
                "-c",
                "i=0; while true; do i=$((i+1)); echo line-$i >> /count; done",
            ],
        ),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let pid = container_pid(&env, &id).await;
    let config = env.berthd.dir().join("berthd.toml");
    let name = format!("{}/commit/paused:1", env.registry.host());
    let out = Command::new(berthd_bin())
        .arg("--config")
        .arg(&config)
        .args(["commit", "--pause", &id, &name])
        .output()
        .expect("berthd commit --pause");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(freezer_state(pid), "THAWED", "thawed after the commit");
    // It writes on.
    let n = |s: String| s.trim().parse::<u64>().unwrap();
    let before = n(sh(&env, &id, "wc -l < /count").await);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        n(sh(&env, &id, "wc -l < /count").await) > before,
        "the writer runs on"
    );
    assert!(
        env.berthd
            .log()
            .contains("froze the container for its commit"),
        "berthd froze it (its log)"
    );
    // The committed file is the writer's, whole lines up to the freeze.
    let p2 = run_pod(&env, sandbox_config("commit-paused-reader"), &name).await;
    let c2 = run(&env, &p2, container(&p2, "reader", &["sleep", "1000"])).await;
    let tail = sh(&env, &c2, "tail -n 1 /count").await;
    assert!(
        tail.starts_with("line-") && tail.ends_with('\n'),
        "{tail:?}"
    );
    remove_pod(&env, p2).await;

    // An exited container cannot be paused; no image is made.
    let done = run(&env, &p, container(&p, "done", &["true"])).await;
    wait_exited(&env, &done, std::time::Duration::from_secs(10)).await;
    let before = env.cri.list_images(None).await.unwrap().len();
    let (ok, _, err) = {
        let out = Command::new(berthd_bin())
            .arg("--config")
            .arg(&config)
            .args([
                "commit",
                "--pause",
                &done,
                &format!("{}/commit/no:1", env.registry.host()),
            ])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(!ok && err.contains("not running"), "{err}");
    assert_eq!(env.cri.list_images(None).await.unwrap().len(), before);

    // A berthd killed during a paused commit leaves the container frozen
    // (made so here by hand): the next berthd thaws it.
    let (file, v2) = freezer_file(pid);
    std::fs::write(&file, if v2 { "1" } else { "FROZEN" }).unwrap();
    for _ in 0..100 {
        if freezer_state(pid) == "FROZEN" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(freezer_state(pid), "FROZEN");
    env.berthd.kill();
    env.berthd.restart().await.expect("restart berthd");
    env.cri = env.berthd.cri().await.expect("reconnect");
    assert_eq!(freezer_state(pid), "THAWED", "thawed at recovery");
    assert!(
        env.berthd
            .log()
            .contains("thawed a container a paused commit left frozen")
    );
    remove_pod(&env, p).await;
    env.finish().await;
}

/// `berthd --config FILE commit ARGS...`: (exit ok, stdout, stderr).
fn commit_args(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(berthd_bin())
        .arg("--config")
        .arg(config)
        .arg("commit")
        .args(args)
        .output()
        .expect("running berthd commit");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `pushed` log line's count `key=N` of berthd's last push to `name`.
fn pushed_count(log: &str, name: &str, key: &str) -> u64 {
    // The text log's colours (ESC [ ... m) out.
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let line = plain
        .lines()
        .rev()
        .find(|l| l.contains("pushed") && l.contains(name))
        .unwrap_or_else(|| panic!("no push of {name} in berthd's log"));
    let at = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no {key} in {line}"));
    line[at + key.len() + 1..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap()
}

/// Every blob of the manifest `digest` in `repo` of `registry`, fetched
/// and checked against its digest.
async fn all_blobs_are_there(
    registry: &berth_conformance::registry::Registry,
    repo: &str,
    digest: &str,
) -> usize {
    use sha2::Digest as _;
    let client = registry.client();
    let (_, _, body) = client
        .get_manifest(repo, digest)
        .await
        .expect("the pushed manifest by digest");
    assert_eq!(
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&body))),
        digest,
        "the registry serves the manifest's own bytes"
    );
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let mut blobs: Vec<String> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    blobs.push(m["config"]["digest"].as_str().unwrap().to_string());
    for b in &blobs {
        let data = client
            .get_blob(repo, b)
            .await
            .unwrap_or_else(|e| panic!("blob {b} of {repo}: {e}"));
        assert_eq!(
            &format!("sha256:{}", hex::encode(sha2::Sha256::digest(&data))),
            b
        );
    }
    blobs.len()
}

#[tokio::test]
async fn a_pushed_commit_is_pulled_back_by_digest_from_each_registry() {
    use berth_conformance::registry::Registry;
    let env = Env::start().await;
    let image = push_busybox(&env, "pushbase/app:1").await;
    let p = run_pod(&env, sandbox_config("commit-push"), &image).await;
    let id = run(&env, &p, container(&p, "writer", &["sleep", "1000"])).await;
    sh(&env, &id, "echo pushed > /pushed && rm /bin/vi").await;
    let config = env.berthd.dir().join("berthd.toml");

    // The same registry, another repository: the base layers are mounted
    // from the repository they were pulled from, the new one uploaded.
    let same = format!("{}/pushed/app:v1", env.registry.host());
    let (ok, image_id, err) = commit_args(&config, &["--push", &id, &same]);
    assert!(ok, "commit --push failed: {err}");
    let repo_digest = err
        .lines()
        .find_map(|l| l.strip_prefix("pushed "))
        .unwrap_or_else(|| panic!("no 'pushed' line: {err}"))
        .to_string();
    assert!(
        repo_digest.starts_with(&format!("{}/pushed/app@sha256:", env.registry.host())),
        "{repo_digest}"
    );
    let st = env.cri.image(&image_id).await.unwrap().expect("the commit");
    assert_eq!(st.repo_tags, vec![same.clone()]);
    assert!(
        st.repo_digests.contains(&repo_digest),
        "the image is known by its pushed digest: {:?}",
        st.repo_digests
    );
    let log = env.berthd.log();
    assert!(pushed_count(&log, &same, "mounted") >= 1, "{log}");
    assert_eq!(pushed_count(&log, &same, "refetched"), 0);
    let digest = repo_digest.rsplit_once('@').unwrap().1.to_string();
    let n = all_blobs_are_there(&env.registry, "pushed/app", &digest).await;
    assert!(n >= 3, "base layer(s), the commit's layer and the config");

    // Another registry: the base layers are fetched again from the first
    // and uploaded; kept for the next push.
    let other = Registry::start().await.expect("a second registry");
    let far = format!("{}/copied/app:v1", other.host());
    let (ok, image_id2, err) = commit_args(&config, &["--push", &id, &far]);
    assert!(ok, "commit --push to another registry failed: {err}");
    let log = env.berthd.log();
    assert!(pushed_count(&log, &far, "refetched") >= 1, "{log}");
    assert_eq!(pushed_count(&log, &far, "mounted"), 0);
    let far_digest = env
        .cri
        .image(&image_id2)
        .await
        .unwrap()
        .unwrap()
        .repo_digests
        .into_iter()
        .find(|d| d.starts_with(&other.host()))
        .expect("the second push's digest");
    let digest2 = far_digest.rsplit_once('@').unwrap().1.to_string();
    all_blobs_are_there(&other, "copied/app", &digest2).await;

    // A registry that demands credentials: refused without, pushed with.
    let locked = Registry::start_with_auth("pusher", "s3cret").await.unwrap();
    let guarded = format!("{}/guarded/app:v1", locked.host());
    let (ok, _, err) = commit_args(&config, &["--push", &id, &guarded]);
    assert!(!ok, "a push without credentials is refused");
    assert!(
        err.contains("the push failed") && err.contains("committed"),
        "the commit is kept and the push's error said: {err}"
    );
    let (ok, _, err) = commit_args(
        &config,
        &["--push", "--creds", "pusher:wrong", &id, &guarded],
    );
    assert!(!ok && err.contains("the push failed"), "{err}");
    let (ok, _, err) = commit_args(
        &config,
        &["--push", "--creds", "pusher:s3cret", &id, &guarded],
    );
    assert!(ok, "commit --push --creds failed: {err}");
    // The same, the credentials from stdin (off the command line).
    let out = {
        use std::io::Write as _;
        let mut child = Command::new(berthd_bin())
            .arg("--config")
            .arg(&config)
            .args(["commit", "--push", "--creds", "-", &id, &guarded])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"pusher:s3cret\n")
            .unwrap();
        child.wait_with_output().unwrap()
    };
    assert!(
        out.status.success(),
        "--creds - failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, _, err) = commit_args(&config, &["--creds", "pusher:s3cret", &id, &guarded]);
    assert!(!ok && err.contains("--push"), "--creds needs --push: {err}");
    drop(locked);
    // A registry that is not there: the commit stays, the push fails.
    let (ok, _, err) = commit_args(&config, &["--push", &id, "127.0.0.1:1/gone/app:v1"]);
    assert!(!ok && err.contains("the push failed"), "{err}");
    assert!(
        env.cri
            .image("127.0.0.1:1/gone/app:v1")
            .await
            .unwrap()
            .is_some(),
        "the commit is kept under its name"
    );

    // Everything local goes; each registry gives the commit back by
    // digest, with exactly its changes.
    remove_pod(&env, p).await;
    for i in env.cri.list_images(None).await.unwrap() {
        env.cri.remove_image(&i.id).await.unwrap();
    }
    assert!(env.cri.list_images(None).await.unwrap().is_empty());
    for r in [&far_digest, &repo_digest] {
        let got = env
            .cri
            .pull(r)
            .await
            .unwrap_or_else(|e| panic!("pull {r}: {e}"));
        let p = run_pod(&env, sandbox_config("pushed-reader"), r).await;
        let c = run(&env, &p, container(&p, "reader", &["sleep", "1000"])).await;
        assert_eq!(sh(&env, &c, "cat /pushed").await, "pushed\n", "{r}");
        let (code, _, _) = try_sh(&env, &c, "test -e /bin/vi").await;
        assert_ne!(code, 0, "the deletion is whited out in {r}");
        remove_pod(&env, p).await;
        env.cri.remove_image(&got).await.unwrap();
    }
    env.finish().await;
}
