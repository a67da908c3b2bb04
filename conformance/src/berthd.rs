//! A real berthd for one test: its own root, state dir and socket in a
//! temporary directory, a generated config file, stdout and stderr in a log
//! file that is printed when the test fails.
//!
//! ```no_run
//! # async fn f(reg: &berth_conformance::registry::Registry) -> anyhow::Result<()> {
//! use berth_conformance::berthd::{Berthd, BerthdOptions};
//! let opts = BerthdOptions::default()
//!     .mirror("registry.k8s.io", &[&reg.url()])
//!     .pinned("registry.k8s.io/pause:3.10")
//!     .stall_timeout("2s");
//! let mut d = Berthd::start(opts).await?;
//! let cri = d.cri().await?;
//! d.kill();                 // SIGKILL
//! d.restart().await?;       // same root, state and socket
//! d.stop().await?;          // SIGTERM, must exit 0
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::cri::Cri;
use crate::netns::NetNs;
use crate::util;

/// How the daemon learns its root, state dir and socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PathsFrom {
    /// In the config file and as flags (flags win; same values).
    #[default]
    ConfigAndFlags,
    /// Only in the config file (`--config` alone).
    ConfigOnly,
    /// Only as flags, and no `--config` at all (embedded defaults).
    FlagsOnly,
}

/// What goes into the generated config file.
#[derive(Clone, Debug)]
pub struct BerthdOptions {
    pub mirrors: BTreeMap<String, Vec<String>>,
    pub insecure: Vec<String>,
    pub pinned_images: Vec<String>,
    pub pull_stall_timeout: Option<String>,
    pub max_concurrent_downloads: Option<u32>,
    pub log_level: String,
    pub log_format: Option<String>,
    /// Raw TOML put among the top-level keys (before any table).
    pub extra_top_level: String,
    /// Lines for berthd's `[runtime]` table and its sub-tables (handlers).
    pub extra_runtime: String,
    /// Raw TOML appended inside `[registry]`.
    pub extra_registry: String,
    pub paths_from: PathsFrom,
    /// Extra environment for the daemon.
    pub env: Vec<(String, String)>,
    /// Use this socket path instead of `<state>/berth.sock` (e.g. another
    /// berthd's, to see it refused).
    pub socket: Option<PathBuf>,
    /// Raw TOML inside `[network]`. Empty: `plugin = "none"` unless a
    /// node netns is given (berthd's default bridge and nftables table are
    /// node-wide: tests in parallel must not share them).
    pub network: String,
    /// The network namespace berthd runs in (the node its pods see); the
    /// test's thread should be in it too (see `NetNs::enter_current_thread`).
    pub node: Option<Arc<NetNs>>,
    /// Run berthd in a mount namespace of its own in which /sys/fs/cgroup
    /// is a fresh mount of the cgroup2 hierarchy, so that a host with v1
    /// (or hybrid) cgroups drives berth's v2 path for real. The hierarchy
    /// is the host's one unified hierarchy (its cgroups are visible under
    /// the host's cgroup2 mount, e.g. /sys/fs/cgroup/unified); its
    /// controllers are those no v1 hierarchy holds. berthd's mounts (root
    /// filesystems, pinned namespaces) live in that namespace only: see
    /// [`Berthd::mounts_in_its_namespace`].
    pub cgroup2_view: bool,
    /// Run this berthd binary instead of the workspace's (e.g. a copy in a
    /// directory of the test's, to see what it does without its shim).
    pub binary: Option<PathBuf>,
    /// Mount a tmpfs on the state dir before berthd starts (unmounted when
    /// the [`Berthd`] is dropped), as /run is on a systemd node: the
    /// benches' state dirs then sit on the file system a node's
    /// `/run/berth` (and `/run/containerd`) would.
    pub state_tmpfs: bool,
}

impl Default for BerthdOptions {
    fn default() -> Self {
        BerthdOptions {
            mirrors: BTreeMap::new(),
            insecure: Vec::new(),
            pinned_images: Vec::new(),
            pull_stall_timeout: None,
            max_concurrent_downloads: None,
            log_level: "debug".into(),
            log_format: None,
            extra_top_level: String::new(),
            extra_runtime: String::new(),
            extra_registry: String::new(),
            paths_from: PathsFrom::default(),
            env: Vec::new(),
            socket: None,
            network: String::new(),
            node: None,
            cgroup2_view: false,
            binary: None,
            state_tmpfs: false,
        }
    }
}

impl BerthdOptions {
    /// `[registry.mirrors] host = [endpoints…]`.
    pub fn mirror(mut self, host: &str, endpoints: &[&str]) -> Self {
        self.mirrors.insert(
            host.into(),
            endpoints.iter().map(|e| e.to_string()).collect(),
        );
        self
    }
    pub fn insecure(mut self, host: &str) -> Self {
        self.insecure.push(host.into());
        self
    }
    pub fn pinned(mut self, image: &str) -> Self {
        self.pinned_images.push(image.into());
        self
    }
    pub fn stall_timeout(mut self, d: &str) -> Self {
        self.pull_stall_timeout = Some(d.into());
        self
    }
    pub fn max_concurrent_downloads(mut self, n: u32) -> Self {
        self.max_concurrent_downloads = Some(n);
        self
    }
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.into();
        self
    }
    pub fn log_format(mut self, format: &str) -> Self {
        self.log_format = Some(format.into());
        self
    }
    pub fn extra_top_level(mut self, toml: &str) -> Self {
        self.extra_top_level.push_str(toml);
        self.extra_top_level.push('\n');
        self
    }
    /// A RuntimeClass handler `name` running the OCI runtime at `path`.
    pub fn handler(mut self, name: &str, path: &str) -> Self {
        self.extra_runtime += &format!(
            "\n[runtime.handlers.{}]\nruntime_path = {}\n",
            q(name),
            q(path)
        );
        self
    }
    pub fn extra_registry(mut self, toml: &str) -> Self {
        self.extra_registry.push_str(toml);
        self.extra_registry.push('\n');
        self
    }
    pub fn paths_from(mut self, p: PathsFrom) -> Self {
        self.paths_from = p;
        self
    }
    pub fn socket(mut self, path: &Path) -> Self {
        self.socket = Some(path.to_path_buf());
        self
    }
    /// Raw TOML put inside `[network]`.
    pub fn network(mut self, toml: &str) -> Self {
        self.network.push_str(toml);
        self
    }

    /// Run berthd in this node netns.
    pub fn node(mut self, ns: Arc<NetNs>) -> Self {
        self.node = Some(ns);
        self
    }

    /// Run this berthd binary (see [`BerthdOptions::binary`]).
    pub fn binary(mut self, path: &Path) -> Self {
        self.binary = Some(path.to_path_buf());
        self
    }

    /// The state dir on a tmpfs (see [`BerthdOptions::state_tmpfs`]).
    pub fn state_on_tmpfs(mut self) -> Self {
        self.state_tmpfs = true;
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
}

/// A TOML basic string (JSON string escapes are valid TOML).
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("string to JSON")
}

fn q_list(v: &[String]) -> String {
    format!(
        "[{}]",
        v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
    )
}

/// Where the berthd binary is: `$BERTHD` if set; else `berthd` next to the
/// running executable's profile dir (`target/<profile>/berthd`; test
/// binaries live in `target/<profile>/deps/`), brought up to date first.
///
/// `cargo test --workspace` builds a package's binaries only for that
/// package's own integration tests, so `target/<profile>/berthd` may be
/// missing or stale when the conformance tests run. The first call in a
/// process therefore runs `cargo build -p berth-cri-server --bin berthd`
/// (same target dir and profile; a no-op when up to date) unless
/// `BERTH_CONFORMANCE_NO_BUILD` is set or the workspace is not where this
/// crate was built from.
pub fn berthd_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BERTHD") {
        let p = PathBuf::from(p);
        if !p.exists() {
            bail!("BERTHD={} does not exist", p.display());
        }
        return Ok(p);
    }
    static FOUND: std::sync::OnceLock<std::result::Result<PathBuf, String>> =
        std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| locate_and_build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn locate_and_build() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe")?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow!("no parent dir of {}", exe.display()))?
        .to_path_buf();
    if dir.file_name().and_then(|n| n.to_str()) == Some("deps") {
        dir.pop();
    }
    let bin = dir.join("berthd");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf);
    let manifest = workspace
        .as_ref()
        .map(|w| w.join("Cargo.toml"))
        .filter(|m| m.exists());
    if let (Some(manifest), None) = (manifest, std::env::var_os("BERTH_CONFORMANCE_NO_BUILD")) {
        let profile = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_string();
        let target_dir = dir
            .parent()
            .ok_or_else(|| anyhow!("no target dir above {}", dir.display()))?;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        // berthd runs berth-shim from its own directory: build both.
        cmd.args([
            "build",
            "-p",
            "berth-cri-server",
            "-p",
            "berth-runtime",
            "--bin",
            "berthd",
            "--bin",
            "berth-shim",
            // the test hooks (FAILPOINTS) that some scenarios set; the
            // same features `cargo test --workspace` builds it with
            "--features",
            "berth-runtime/failpoints",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null());
        // Cargo gives a test the variables it gives crates (CARGO_PKG_NAME,
        // CARGO_MANIFEST_DIR, …). Build scripts such as ring's watch them
        // with rerun-if-env-changed: passed on, they would rebuild half the
        // dependency tree here and again in the next plain `cargo test`.
        for (k, _) in std::env::vars_os() {
            let Some(k) = k.to_str() else { continue };
            let crate_var = [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_CFG_",
            ]
            .iter()
            .any(|p| k.starts_with(p))
                || matches!(
                    k,
                    "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                        | "CARGO_RUSTC_CURRENT_DIR"
                        | "OUT_DIR"
                );
            if crate_var {
                cmd.env_remove(k);
            }
        }
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let out = cmd
            .output()
            .context("running cargo build -p berth-cri-server")?;
        if !out.status.success() {
            bail!(
                "`cargo build -p berth-cri-server` failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    if !bin.exists() {
        bail!(
            "berthd not found at {}: run `cargo build -p berth-cri-server` (same profile) first, or set BERTHD=/path/to/berthd",
            bin.display()
        );
    }
    Ok(bin)
}

/// A berthd owned by one test.
pub struct Berthd {
    dir: TempDir,
    options: BerthdOptions,
    child: Option<Child>,
    binary: PathBuf,
    /// This berthd's own parent cgroup for pods (`[runtime] cgroup_parent`),
    /// so that a scenario can check that its pods left no cgroup.
    cgroup_parent: String,
    /// The network namespace berthd runs in: the node, as its pods see it.
    /// Dropped (deleted, when the test holds it no more) after berthd and
    /// its cgroups are gone.
    node: Option<Arc<NetNs>>,
}

impl Berthd {
    /// Generate the config, start berthd and wait until its socket accepts.
    pub async fn start(options: BerthdOptions) -> Result<Berthd> {
        let binary = match &options.binary {
            Some(b) => b.clone(),
            None => berthd_binary()?,
        };
        let dir = tempfile::Builder::new().prefix("berth-test-").tempdir()?;
        let mut d = Berthd {
            dir,
            options,
            child: None,
            binary,
            cgroup_parent: format!("berth-test-{}", util::unique_suffix()),
            node: None,
        };
        d.node = d.options.node.clone();
        if d.node.is_none() && d.options.paths_from == PathsFrom::FlagsOnly {
            // No config file: berthd's embedded defaults, the bridge plugin
            // included, which must not touch the host's network.
            d.node = Some(Arc::new(NetNs::create("berth-node")?));
        }
        if d.options.state_tmpfs {
            mount_tmpfs(&d.state())?;
        }
        d.write_config()?;
        d.spawn()?;
        d.wait_ready().await?;
        Ok(d)
    }

    /// Start berthd with these options and wait for it to exit by itself (for
    /// config errors). Returns the exit status and the log.
    pub async fn run_to_exit(
        options: BerthdOptions,
        timeout: Duration,
    ) -> Result<(ExitStatus, String)> {
        let binary = match &options.binary {
            Some(b) => b.clone(),
            None => berthd_binary()?,
        };
        let dir = tempfile::Builder::new().prefix("berth-test-").tempdir()?;
        let mut d = Berthd {
            dir,
            options,
            child: None,
            binary,
            cgroup_parent: format!("berth-test-{}", util::unique_suffix()),
            node: None,
        };
        d.node = d.options.node.clone();
        if d.node.is_none() && d.options.paths_from == PathsFrom::FlagsOnly {
            // No config file: berthd's embedded defaults, the bridge plugin
            // included, which must not touch the host's network.
            d.node = Some(Arc::new(NetNs::create("berth-node")?));
        }
        d.write_config()?;
        d.spawn()?;
        let start = Instant::now();
        loop {
            if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                d.child = None;
                return Ok((status, d.log()));
            }
            if start.elapsed() > timeout {
                let log = d.log();
                d.kill();
                bail!("berthd still running after {timeout:?}; log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The test's temporary directory (holds root/, state/, berthd.toml, berthd.log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn socket(&self) -> PathBuf {
        self.options
            .socket
            .clone()
            .unwrap_or_else(|| self.state().join("berth.sock"))
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("berthd.toml")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("berthd.log")
    }
    pub fn options(&self) -> &BerthdOptions {
        &self.options
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// CPU time (user + system) berthd has used so far, from
    /// /proc/PID/stat: a berthd that spins with nothing in flight shows.
    pub fn cpu_time(&self) -> Result<Duration> {
        let pid = self.pid().ok_or_else(|| anyhow!("berthd is not running"))?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // After the ")" that ends comm: state is field 3, utime 14, stime 15.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f
            .get(11)
            .zip(f.get(12))
            .and_then(|(u, s)| Some(u.parse::<u64>().ok()? + s.parse::<u64>().ok()?))
            .ok_or_else(|| anyhow!("no utime/stime in /proc/{pid}/stat"))?;
        let hz = rustix::param::clock_ticks_per_second();
        Ok(Duration::from_millis(ticks * 1000 / hz))
    }

    /// Mounts under this berthd's directory as berthd itself sees them (in
    /// its own mount namespace with [`BerthdOptions::cgroup2_view`]).
    pub fn mounts_in_its_namespace(&self) -> Result<std::collections::BTreeSet<String>> {
        let pid = self.pid().ok_or_else(|| anyhow!("berthd is not running"))?;
        crate::leak::mounts_of(&pid.to_string(), &[self.dir().to_path_buf()])
            .with_context(|| format!("reading /proc/{pid}/mountinfo"))
    }

    /// The config file as generated.
    pub fn config_text(&self) -> String {
        let o = &self.options;
        let mut s = String::new();
        if o.paths_from != PathsFrom::FlagsOnly {
            s += &format!("root = {}\n", q(&self.root().display().to_string()));
            s += &format!("state = {}\n", q(&self.state().display().to_string()));
            s += &format!("socket = {}\n", q(&self.socket().display().to_string()));
        }
        s += &o.extra_top_level;
        s += "\n[log]\n";
        s += &format!("level = {}\n", q(&o.log_level));
        if let Some(f) = &o.log_format {
            s += &format!("format = {}\n", q(f));
        }
        s += "\n[registry]\n";
        if let Some(n) = o.max_concurrent_downloads {
            s += &format!("max_concurrent_downloads = {n}\n");
        }
        if let Some(t) = &o.pull_stall_timeout {
            s += &format!("pull_stall_timeout = {}\n", q(t));
        }
        if !o.insecure.is_empty() {
            s += &format!("insecure = {}\n", q_list(&o.insecure));
        }
        if !o.pinned_images.is_empty() {
            s += &format!("pinned_images = {}\n", q_list(&o.pinned_images));
        }
        s += &o.extra_registry;
        if !o.mirrors.is_empty() {
            s += "\n[registry.mirrors]\n";
            for (host, endpoints) in &o.mirrors {
                s += &format!("{} = {}\n", q(host), q_list(endpoints));
            }
        }
        s += &format!("\n[runtime]\ncgroup_parent = {}\n", q(&self.cgroup_parent));
        s += &o.extra_runtime;
        if !o.network.is_empty() {
            s += &format!("\n[network]\n{}\n", o.network);
        } else if o.node.is_none() {
            s += "\n[network]\nplugin = \"none\"\n";
        }
        s
    }

    /// The node's network namespace (None: the host's).
    pub fn node(&self) -> Option<&NetNs> {
        self.node.as_deref()
    }

    /// The parent cgroup of this berthd's pods.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// Cgroups left under this berthd's parent, in any hierarchy.
    pub fn leftover_cgroups(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for dir in crate::leak::cgroup_parent_dirs(&self.cgroup_parent) {
            for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        out
    }

    /// Kill what still runs in this berthd's cgroups (their shims then end)
    /// and remove them, deepest first: cleanup after a failed scenario.
    pub fn remove_cgroups(&self) {
        for dir in crate::leak::cgroup_parent_dirs(&self.cgroup_parent) {
            let mut dirs: Vec<PathBuf> = crate::leak::walk_dirs(&dir);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in &dirs {
                for pid in fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                {
                    if let Ok(pid) = pid.trim().parse::<i32>() {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
            }
            for d in &dirs {
                for _ in 0..50 {
                    if fs::remove_dir(d).is_ok() || !d.exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    fn write_config(&self) -> Result<()> {
        fs::write(self.config_path(), self.config_text())?;
        Ok(())
    }

    fn spawn(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = match &self.node {
            Some(ns) => ns.command(&self.binary.display().to_string())?,
            None => Command::new(&self.binary),
        };
        match self.options.paths_from {
            PathsFrom::ConfigAndFlags => {
                cmd.arg("--config").arg(self.config_path());
                cmd.arg("--root")
                    .arg(self.root())
                    .arg("--state")
                    .arg(self.state())
                    .arg("--socket")
                    .arg(self.socket());
            }
            PathsFrom::ConfigOnly => {
                cmd.arg("--config").arg(self.config_path());
            }
            PathsFrom::FlagsOnly => {
                cmd.arg("--root")
                    .arg(self.root())
                    .arg("--state")
                    .arg(self.state())
                    .arg("--socket")
                    .arg(self.socket());
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .current_dir(self.dir.path());
        if self.options.cgroup2_view {
            cgroup2_view(&mut cmd);
        }
        cmd.env_remove("RUST_LOG");
        for (k, v) in &self.options.env {
            cmd.env(k, v);
        }
        util::die_with_parent(&mut cmd);
        // A binary a test has just copied may still be open for writing in
        // a child another test thread forked meanwhile (until its exec):
        // ETXTBSY goes once that child has exec'd.
        let mut tries = 0;
        let child = loop {
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                r => break r.with_context(|| format!("spawning {}", self.binary.display()))?,
            }
        };
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let socket = self.socket();
        let start = Instant::now();
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                bail!(
                    "berthd exited during start-up with {status}; log:\n{}",
                    util::tail(&self.log_path(), 16384)
                );
            }
            if tokio::net::UnixStream::connect(&socket).await.is_ok() {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(30) {
                let log = util::tail(&self.log_path(), 16384);
                self.kill();
                bail!(
                    "berthd did not accept on {} within 30s; log:\n{log}",
                    socket.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// CRI clients on this berthd's socket.
    pub async fn cri(&self) -> Result<Cri> {
        Cri::connect(&self.socket()).await
    }

    /// SIGKILL berthd and reap it (no clean-up on its side).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            util::kill_and_reap(&mut c);
        }
    }

    /// Start again on the same root, state, socket and config (after
    /// [`Berthd::kill`] or [`Berthd::stop`]; kills a running one first).
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.write_config()?;
        self.spawn()?;
        self.wait_ready().await
    }

    /// SIGTERM, then wait (20 s at most) for exit status 0.
    pub async fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("berthd is not running")
        };
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                if status.success() {
                    return Ok(());
                }
                bail!(
                    "berthd exited with {status} on SIGTERM (want 0); log:\n{}",
                    util::tail(&self.log_path(), 16384)
                );
            }
            if start.elapsed() > Duration::from_secs(20) {
                util::kill_and_reap(&mut child);
                bail!(
                    "berthd did not exit within 20s of SIGTERM; log:\n{}",
                    util::tail(&self.log_path(), 16384)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Send a signal (SIGTERM, SIGINT, …) without waiting.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow!("berthd is not running"))?;
        kill(Pid::from_raw(pid as i32), sig)?;
        Ok(())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Wait for the process to exit by itself (after a signal).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let start = Instant::now();
        loop {
            let child = self
                .child
                .as_mut()
                .ok_or_else(|| anyhow!("berthd is not running"))?;
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if start.elapsed() > timeout {
                bail!("berthd still running after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Detach every mount under `dir` (deepest first) so that removing the
/// directory can never reach into a mounted file system.
/// Makes `dir` (created if missing) a fresh tmpfs, mode 0700, as /run is
/// on a systemd node. [`unmount_all_under`] a directory above removes it;
/// the leak checks do not count it (`leak::harness_mount`).
pub fn mount_tmpfs(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some("mode=0700"),
    )
    .with_context(|| format!("mounting a tmpfs on {}", dir.display()))?;
    crate::leak::harness_mount(dir);
    Ok(())
}

pub fn unmount_all_under(dir: &Path) {
    let mounts = crate::leak::all_mounts_under(&[dir.to_path_buf()]);
    let mut mounts: Vec<_> = mounts.into_iter().collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = nix::mount::umount2(Path::new(&m), nix::mount::MntFlags::MNT_DETACH);
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- berthd log ({}) ----\n{}\n---- config ----\n{}---- end of berthd log ----",
                self.log_path().display(),
                util::tail(&self.log_path(), 64 * 1024),
                self.config_text()
            );
        }
        unmount_all_under(self.dir.path());
        self.remove_cgroups();
    }
}

/// Makes `cmd` start in a mount namespace of its own (mounts private, so
/// that nothing it mounts reaches the host) with the cgroup2 hierarchy
/// mounted on /sys/fs/cgroup.
fn cgroup2_view(cmd: &mut Command) {
    // SAFETY: unshare and mount are plain system calls; the paths are
    // literals (nix copies them to the stack), so nothing allocates
    // between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            use nix::mount::{MsFlags, mount};
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )?;
            mount(
                Some("cgroup2"),
                "/sys/fs/cgroup",
                Some("cgroup2"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None::<&str>,
            )?;
            Ok(())
        });
    }
}
