//! berthd's command line, run as a process. (Being an integration test of
//! this package also makes `cargo test --workspace` build the berthd binary
//! that the conformance suite starts.)

use std::process::Command;

const BERTHD: &str = env!("CARGO_BIN_EXE_berthd");

#[test]
fn help_lists_the_flags_that_override_the_config() {
    let out = Command::new(BERTHD)
        .arg("--help")
        .output()
        .expect("run berthd --help");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--config", "--root", "--state", "--socket"] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
}

#[test]
fn a_missing_config_file_is_an_error_that_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.toml");
    let out = Command::new(BERTHD)
        .arg("--config")
        .arg(&missing)
        .output()
        .expect("run berthd");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope.toml"), "{err}");
}

#[test]
fn relative_paths_are_refused() {
    let out = Command::new(BERTHD)
        .args(["--root", "relative/root"])
        .output()
        .expect("run berthd");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("absolute"));
}

#[test]
fn version_names_the_release_the_commit_and_the_cri() {
    let out = Command::new(BERTHD)
        .arg("--version")
        .output()
        .expect("run berthd --version");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("berthd {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains("commit "), "{text}");
    assert!(text.contains("cri-api v0.36"), "{text}");
    let commit = text
        .split("commit ")
        .nth(1)
        .and_then(|r| r.split([',', ')']).next())
        .unwrap();
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{commit:?}"
    );
}

#[test]
fn config_prints_the_effective_config_with_the_flags_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("berth.toml");
    std::fs::write(&file, "[registry]\npull_stall_timeout = \"90s\"\n").unwrap();
    let out = Command::new(BERTHD)
        .arg("--config")
        .arg(&file)
        .args(["--root", "/srv/berth", "config"])
        .output()
        .expect("run berthd config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("root = \"/srv/berth\""), "the flag: {text}");
    assert!(
        text.contains("pull_stall_timeout = \"1m 30s\""),
        "the file: {text}"
    );
    assert!(
        text.contains("[network]") && text.contains("plugin = \"bridge\""),
        "the defaults: {text}"
    );
    // What it prints is a config berthd reads.
    let again = dir.path().join("effective.toml");
    std::fs::write(&again, text.as_bytes()).unwrap();
    let out2 = Command::new(BERTHD)
        .arg("--config")
        .arg(&again)
        .arg("config")
        .output()
        .expect("run berthd config on its own output");
    assert!(
        out2.status.success(),
        "{}",
        String::from_utf8_lossy(&out2.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out2.stdout), text);
}

#[test]
fn check_passes_on_this_host_and_fails_naming_what_is_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ok = dir.path().join("none.toml");
    std::fs::write(&ok, "[network]\nplugin = \"none\"\n").unwrap();
    let out = Command::new(BERTHD)
        .arg("--config")
        .arg(&ok)
        .arg("check")
        .output()
        .expect("run berthd check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for what in ["✔ kernel", "✔ root", "✔ overlayfs", "✔ cgroups"] {
        assert!(text.contains(what), "{what}: {text}");
    }
    let cni = dir.path().join("cni.toml");
    std::fs::write(
        &cni,
        format!(
            "[network]\nplugin = \"cni\"\ncni_conf_dir = \"{}\"\n",
            dir.path().join("empty-net.d").display()
        ),
    )
    .unwrap();
    let out = Command::new(BERTHD)
        .arg("--config")
        .arg(&cni)
        .arg("check")
        .output()
        .expect("run berthd check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("✘ CNI config") && text.contains("empty-net.d"),
        "{text}"
    );
}

/// deploy/berthd.service parses as systemd reads it (`systemd-analyze
/// verify`, with ExecStart pointed at this build's berthd), and keeps what
/// berth relies on: Type=notify, KillMode=process (containers outlive a
/// restart of berthd), Delegate=yes.
#[test]
fn the_systemd_unit_is_valid_and_keeps_containers_across_restarts() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/berthd.service"
    ))
    .expect("deploy/berthd.service");
    let mut keys = std::collections::HashMap::new();
    let mut section = String::new();
    for l in unit.lines().map(str::trim) {
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = l
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {l:?}"));
        keys.insert(format!("{section}.{k}"), v.to_string());
    }
    for (k, v) in [
        ("Service.Type", "notify"),
        ("Service.KillMode", "process"),
        ("Service.Delegate", "yes"),
        ("Service.LimitMEMLOCK", "infinity"),
        ("Install.WantedBy", "multi-user.target"),
    ] {
        assert_eq!(keys.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert!(keys["Service.ExecStart"].starts_with("/usr/local/bin/berthd "));
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(analyze) = analyze else {
        eprintln!("no systemd-analyze here: the unit was checked by the parser above only");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("berthd.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/berthd", BERTHD)).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze verify");
    let err = String::from_utf8_lossy(&out.stderr);
    // Only what concerns this unit (other units of the host may warn).
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("berthd.service"))
        .collect();
    assert!(out.status.success() && ours.is_empty(), "{err}");
}
