//! `berthd check`: the host's prerequisites, one line each, ✔ or ✘ with
//! what to do, before kubelet is pointed at berth. Required ones fail the
//! command (exit 1); optional ones (`–`) say what is missing without
//! failing it.

use std::path::Path;

use berth_network::PluginKind;
use berth_runtime::cgroups::Cgroups;

use crate::config::Config;

#[derive(Debug, PartialEq, Eq)]
pub enum Mark {
    Ok,
    Fail,
    /// Optional, and missing.
    Missing,
}

#[derive(Debug)]
pub struct Line {
    pub mark: Mark,
    pub what: String,
    pub detail: String,
}

fn line(ok: bool, required: bool, what: &str, good: String, bad: String) -> Line {
    Line {
        mark: match (ok, required) {
            (true, _) => Mark::Ok,
            (false, true) => Mark::Fail,
            (false, false) => Mark::Missing,
        },
        what: what.to_string(),
        detail: if ok { good } else { bad },
    }
}

/// The cgroup controllers berth needs (cpu and memory limits, pids for
/// stats): what each hierarchy (v1) or the root (v2) offers.
const CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];

pub fn run(config: &Config) -> Vec<Line> {
    let mut out = Vec::new();
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let old = berth_runtime::kernel::too_old(&release);
    out.push(line(
        old.is_none(),
        true,
        "kernel",
        format!("{release} (5.10 or newer)"),
        old.unwrap_or_default(),
    ));
    out.push(line(
        rustix::process::geteuid().is_root(),
        true,
        "root",
        "berthd runs as root".into(),
        "berthd makes namespaces, mounts and cgroups: run it as root".into(),
    ));
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let overlay = fs
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"));
    out.push(line(
        overlay,
        true,
        "overlayfs",
        "available".into(),
        "not in /proc/filesystems: `modprobe overlay` (CONFIG_OVERLAY_FS)".into(),
    ));
    match Cgroups::detect() {
        Ok(cg) => {
            let (kind, have): (&str, Vec<String>) = match &cg {
                Cgroups::V1(v1) => (
                    "v1",
                    v1.hierarchies()
                        .iter()
                        .flat_map(|h| h.controllers.clone())
                        .collect(),
                ),
                Cgroups::V2(v2) => ("v2", v2.controllers().to_vec()),
            };
            let missing: Vec<&str> = CONTROLLERS
                .iter()
                .copied()
                .filter(|c| !have.iter().any(|h| h == c))
                .collect();
            out.push(line(
                missing.is_empty(),
                true,
                "cgroups",
                format!("{kind}, with {}", CONTROLLERS.join(", ")),
                format!(
                    "{kind}, without {}: enable them (cgroup_enable=… on the kernel command line, or delegate them to berthd's cgroup)",
                    missing.join(", ")
                ),
            ));
        }
        Err(e) => out.push(line(
            false,
            true,
            "cgroups",
            String::new(),
            format!("{e}: mount cgroup2 (or the v1 hierarchies) at /sys/fs/cgroup"),
        )),
    }
    out.push(line(
        berth_runtime::kernel::has_mount_setattr(),
        false,
        "recursive read-only mounts",
        "mount_setattr (Linux 5.12)".into(),
        "no mount_setattr (Linux 5.12): recursiveReadOnly mounts are refused".into(),
    ));
    // What berthd probes at start before it claims user namespaces: a
    // user namespace from berth-shim, idmapped layers on berthd's root
    // (or the nearest directory of it that exists: check makes nothing)
    // and an overlay of them.
    let shim = std::env::current_exe()
        .map(|e| e.with_file_name("berth-shim"))
        .unwrap_or_default();
    let dir = config
        .root
        .ancestors()
        .find(|d| d.is_dir())
        .unwrap_or(std::path::Path::new("/"));
    let userns = berth_runtime::rootfs::probe_userns(&shim, dir);
    out.push(line(
        userns.is_ok(),
        false,
        "user namespaces (hostUsers: false)",
        format!("idmapped overlay layers on {}", dir.display()),
        format!(
            "{}: such pods are refused (Linux 6.3 and a file system that idmaps are needed)",
            userns.err().unwrap_or_default()
        ),
    ));
    // Each RuntimeClass handler's runtime: there, and answering --version.
    for (name, h) in &config.runtime.handlers {
        let problem = berth_runtime::handlers::runtime_problem(&h.runtime_path);
        let version = problem
            .is_none()
            .then(|| {
                std::process::Command::new(&h.runtime_path)
                    .arg("--version")
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .and_then(|o| {
                        String::from_utf8_lossy(&o.stdout)
                            .lines()
                            .next()
                            .map(str::to_string)
                    })
            })
            .flatten();
        out.push(line(
            version.is_some(),
            true,
            &format!("runtime handler {name:?}"),
            format!(
                "{} ({})",
                h.runtime_path.display(),
                version.clone().unwrap_or_default()
            ),
            format!(
                "{}: {}; pods of RuntimeClasses with this handler fail: install it or fix runtime_path",
                h.runtime_path.display(),
                problem.unwrap_or_else(|| "it does not answer --version".into())
            ),
        ));
    }
    match config.network.plugin {
        PluginKind::Bridge => {
            let nft = berth_network::nft::Nft::find(false);
            out.push(line(
                nft.is_some(),
                true,
                "nftables",
                nft.map(|n| n.describe()).unwrap_or_default(),
                "the bridge plugin writes its NAT and hostPort rules with libnftables (or the nft binary): install nftables"
                    .into(),
            ));
        }
        PluginKind::Cni => {
            let dir = &config.network.cni_conf_dir;
            let confs = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.ends_with(".conf") || n.ends_with(".conflist") || n.ends_with(".json")
                })
                .count();
            out.push(line(
                confs > 0,
                true,
                "CNI config",
                format!("{confs} in {}", dir.display()),
                format!(
                    "no .conf or .conflist in {}: install the cluster's network plugin",
                    dir.display()
                ),
            ));
            let loopback = config
                .network
                .cni_bin_dirs
                .iter()
                .any(|d| Path::new(d).join("loopback").is_file());
            out.push(line(
                loopback,
                true,
                "CNI plugins",
                "loopback found".into(),
                format!(
                    "no loopback plugin in {}: install containernetworking-plugins",
                    config
                        .network
                        .cni_bin_dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        PluginKind::None => {}
    }
    out
}

pub fn print(lines: &[Line]) -> bool {
    for l in lines {
        let mark = match l.mark {
            Mark::Ok => "✔",
            Mark::Fail => "✘",
            Mark::Missing => "–",
        };
        println!("{mark} {}: {}", l.what, l.detail);
    }
    lines.iter().all(|l| l.mark != Mark::Fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_cni_config_fails_naming_the_dir() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        c.network.plugin = PluginKind::Cni;
        c.network.cni_conf_dir = d.path().join("net.d");
        c.network.cni_bin_dirs = vec![d.path().join("bin")];
        let lines = run(&c);
        let cni = lines.iter().find(|l| l.what == "CNI config").unwrap();
        assert_eq!(cni.mark, Mark::Fail);
        assert!(cni.detail.contains("net.d"), "{}", cni.detail);
        let bins = lines.iter().find(|l| l.what == "CNI plugins").unwrap();
        assert_eq!(bins.mark, Mark::Fail);
        assert!(!print(&lines), "a failed required check fails the command");
        std::fs::create_dir_all(d.path().join("net.d")).unwrap();
        std::fs::write(d.path().join("net.d/10-x.conflist"), "{}").unwrap();
        let lines = run(&c);
        let cni = lines.iter().find(|l| l.what == "CNI config").unwrap();
        assert_eq!(cni.mark, Mark::Ok, "{}", cni.detail);
    }

    #[test]
    fn optional_checks_do_not_fail_the_command() {
        let lines = vec![
            line(true, true, "a", "fine".into(), String::new()),
            line(false, false, "b", String::new(), "missing".into()),
        ];
        assert_eq!(lines[1].mark, Mark::Missing);
        assert!(print(&lines));
    }
}
