//! Network namespaces the tests create: the "node" each berthd runs in (its
//! bridge, nftables table and sysctls are then its own, and vanish with
//! it), and "other hosts" wired to a node by a veth pair.
//!
//! Made with iproute2's `ip netns` (test scaffolding; berthd itself never
//! runs `ip`). Every namespace is deleted on drop.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

use crate::util;

#[derive(Debug)]
pub struct NetNs {
    name: String,
}

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

impl NetNs {
    /// A new namespace named `<prefix>-<unique>` with loopback up.
    pub fn create(prefix: &str) -> Result<NetNs> {
        let name = format!("{prefix}-{}", util::unique_suffix());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Move the calling thread into this namespace; what it spawns from
    /// then on (registry, berthd, threads) starts there too. A test's own
    /// thread does this first thing, so that its registry and berthd share
    /// a loopback and berthd's bridge, table and sysctls are the test's.
    pub fn enter_current_thread(&self) -> Result<()> {
        let f = fs::File::open(self.path())
            .with_context(|| format!("opening {}", self.path().display()))?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering netns {}", self.name))?;
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> <args>`; stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let out = run(Command::new("ip").arg("-n").arg(&self.name).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A command that runs inside this namespace (network only: the mount
    /// namespace stays the test's).
    pub fn command(&self, program: &str) -> Result<Command> {
        let fd: OwnedFd = fs::File::open(self.path())
            .with_context(|| format!("opening {}", self.path().display()))?
            .into();
        let mut cmd = Command::new(program);
        // SAFETY: setns is async-signal-safe; only this runs between fork
        // and exec, on an fd opened before the fork.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        Ok(cmd)
    }

    /// Run `program args` in the namespace; its output, whatever the status.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        self.command(program)?
            .args(args)
            .output()
            .with_context(|| format!("running {program} {args:?} in netns {}", self.name))
    }

    /// Names of the links in this namespace.
    pub fn links(&self) -> Result<Vec<String>> {
        let out = self.ip(&["-o", "link", "show"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect())
    }

    /// Wire `other` to this namespace as another host: a veth pair with
    /// `here/24` on this side (`ifname`) and `there/24` as `eth0` over
    /// there, whose default route goes through `here`.
    pub fn connect(&self, other: &NetNs, ifname: &str, here: &str, there: &str) -> Result<()> {
        run(Command::new("ip").args([
            "-n",
            &self.name,
            "link",
            "add",
            ifname,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &other.name,
        ]))?;
        self.ip(&["addr", "add", &format!("{here}/24"), "dev", ifname])?;
        self.ip(&["link", "set", ifname, "up"])?;
        other.ip(&["addr", "add", &format!("{there}/24"), "dev", "eth0"])?;
        other.ip(&["link", "set", "eth0", "up"])?;
        other.ip(&["route", "add", "default", "via", here])?;
        Ok(())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
