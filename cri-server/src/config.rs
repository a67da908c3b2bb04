//! berthd's configuration: embedded defaults, then the TOML file, then the
//! command-line flags. `deploy/berth.toml` documents every key.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_image::limits::{FreeSpace, UnpackLimits};
use serde::{Deserialize, Serialize};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/berth.toml";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub log: LogConfig,
    pub registry: RegistrySection,
    pub runtime: RuntimeSection,
    pub network: berth_network::NetworkConfig,
    pub streaming: StreamingSection,
    pub metrics: MetricsSection,
}

/// `[metrics]`: berthd's Prometheus endpoint (`/metrics`), off unless an
/// address is set, as in containerd and CRI-O.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Where it listens, e.g. "127.0.0.1:9090" (port 0: a free one, logged).
    pub address: Option<std::net::SocketAddr>,
}

/// `[streaming]`: the HTTP server Exec, Attach and PortForward URLs point
/// at (kubelet proxies the API server's streams to it; crictl talks to it
/// directly).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingSection {
    /// The address it listens on (an IP address).
    pub address: std::net::IpAddr,
    /// Its port; 0: a free port chosen at start.
    pub port: u16,
    /// A session with no traffic for this long is closed.
    #[serde(
        deserialize_with = "duration",
        serialize_with = "berth_network::config::write_duration"
    )]
    pub idle_timeout: Duration,
    /// How long a client has to open the streams of a session.
    #[serde(
        deserialize_with = "duration",
        serialize_with = "berth_network::config::write_duration"
    )]
    pub stream_creation_timeout: Duration,
    /// TLS: both or neither (PEM files).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for StreamingSection {
    fn default() -> Self {
        Self {
            address: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            port: 0,
            idle_timeout: Duration::from_secs(4 * 3600),
            stream_creation_timeout: Duration::from_secs(30),
            tls_cert: None,
            tls_key: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    /// Parent cgroup of pods that come without a cgroup_parent.
    pub cgroup_parent: String,
    /// RuntimeClass handlers besides the built-in executor (the default
    /// handler ""): another OCI runtime under berth-shim, by name.
    pub handlers: BTreeMap<String, HandlerSection>,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        Self {
            cgroup_parent: "berth".into(),
            handlers: BTreeMap::new(),
        }
    }
}

/// `[runtime.handlers.NAME]`: an OCI runtime with runc's command line
/// (runc, crun, runsc, kata-runtime).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HandlerSection {
    /// The runtime binary, absolute.
    pub runtime_path: PathBuf,
    /// Its `--root` (state of its containers); unset:
    /// `<state>/runtimes/<NAME>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_root: Option<PathBuf>,
    /// Global flags given before every subcommand (e.g. `["--debug"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtime_args: Vec<String>,
}

impl RuntimeSection {
    /// The handlers as the shim is told them, roots resolved under `state`.
    pub fn oci_handlers(
        &self,
        state: &Path,
    ) -> BTreeMap<String, berth_runtime::shim::protocol::OciRuntimeConfig> {
        self.handlers
            .iter()
            .map(|(name, h)| {
                (
                    name.clone(),
                    berth_runtime::shim::protocol::OciRuntimeConfig {
                        name: name.clone(),
                        path: h.runtime_path.clone(),
                        root: h
                            .runtime_root
                            .clone()
                            .unwrap_or_else(|| state.join("runtimes").join(name)),
                        args: h.runtime_args.clone(),
                    },
                )
            })
            .collect()
    }
}

/// A RuntimeClass handler name: a DNS-1123 label, as Kubernetes
/// validates RuntimeClass.handler.
fn valid_handler_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !n.starts_with('-')
        && !n.ends_with('-')
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: LogLevel,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySection {
    pub max_concurrent_downloads: usize,
    #[serde(
        deserialize_with = "duration",
        serialize_with = "berth_network::config::write_duration"
    )]
    pub pull_stall_timeout: Duration,
    /// How often a pull in progress logs how far it is.
    #[serde(
        deserialize_with = "duration",
        serialize_with = "berth_network::config::write_duration"
    )]
    pub pull_progress_interval: Duration,
    pub insecure: Vec<String>,
    pub pinned_images: Vec<String>,
    /// Uncompressed bytes one layer may unpack to.
    #[serde(deserialize_with = "size", serialize_with = "write_size")]
    pub max_unpacked_layer_size: u64,
    /// Free space a pull must leave on the filesystem of `root`.
    #[serde(deserialize_with = "free_space", serialize_with = "write_free_space")]
    pub min_free_space: FreeSpace,
    pub mirrors: HashMap<String, Vec<String>>,
    /// `certs.d/<host>/` directories (`*.crt` CAs, `*.cert` + `*.key` a
    /// client certificate), read in order: berth's own, then containerd's,
    /// CRI-O's and Docker's, so that a node's existing files work.
    pub certs_dirs: Vec<PathBuf>,
    /// Per host (`host[:port]`): `[registry.tls."registry.example:5000"]`.
    pub tls: HashMap<String, HostTlsSection>,
}

/// One registry host's TLS, over what `certs_dirs` give it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HostTlsSection {
    /// A PEM bundle of CA certificates trusted for this host besides the
    /// system's.
    pub ca_file: Option<PathBuf>,
    /// Mutual TLS: the client certificate and its key (PEM), both or
    /// neither.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Accept any certificate from this host: an explicit choice, never
    /// the default.
    pub skip_verify: bool,
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "{s:?} is not a duration like \"30s\" or \"5m\": {e}"
        ))
    })
}

/// A size as a string with a unit: "64GiB", "500MB", "1.5 GiB" (KiB, MiB,
/// GiB, TiB count in 1024s; KB, MB, GB, TB and K, M, G, T in 1000s).
/// A size exactly, in the largest binary unit that divides it ("64GiB",
/// "1536KiB", "1000B"), as `size` reads it back.
fn write_size<S: serde::Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
    let text = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)]
        .iter()
        .find(|(_, u)| *n > 0 && n.is_multiple_of(*u))
        .map(|(unit, u)| format!("{}{unit}", n / u))
        .unwrap_or_else(|| format!("{n}B"));
    s.serialize_str(&text)
}

fn write_free_space<S: serde::Serializer>(f: &FreeSpace, s: S) -> Result<S::Ok, S::Error> {
    match f {
        FreeSpace::Percent(p) => s.serialize_str(&format!("{p}%")),
        FreeSpace::Bytes(n) => write_size(n, s),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() || t.starts_with('-') {
        return Err(format!("{s:?} is not a size like \"64GiB\" or \"500MB\""));
    }
    t.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a size like \"64GiB\" or \"500MB\": {e}"))
}

fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    parse_size(&s).map_err(serde::de::Error::custom)
}

/// A size ("1GiB") or a share of the filesystem ("5%").
fn free_space<'de, D: serde::Deserializer<'de>>(d: D) -> Result<FreeSpace, D::Error> {
    let s = String::deserialize(d)?;
    match s.trim().strip_suffix('%') {
        Some(p) => p
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= 100)
            .map(FreeSpace::Percent)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{s:?} is not a percentage from \"0%\" to \"100%\""
                ))
            }),
        None => parse_size(&s)
            .map(FreeSpace::Bytes)
            .map_err(|e| serde::de::Error::custom(format!("{e}, or a percentage like \"5%\""))),
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            root: "/var/lib/berth".into(),
            state: "/run/berth".into(),
            socket: "/run/berth/berth.sock".into(),
            log: LogConfig::default(),
            registry: RegistrySection::default(),
            runtime: RuntimeSection::default(),
            network: berth_network::NetworkConfig::default(),
            streaming: StreamingSection::default(),
            metrics: MetricsSection::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: LogLevel::Info,
            format: LogFormat::Text,
        }
    }
}

impl Default for RegistrySection {
    fn default() -> Self {
        Self {
            max_concurrent_downloads: 3,
            pull_stall_timeout: Duration::from_secs(300),
            pull_progress_interval: Duration::from_secs(10),
            insecure: Vec::new(),
            pinned_images: Vec::new(),
            max_unpacked_layer_size: UnpackLimits::default().max_layer_bytes,
            min_free_space: UnpackLimits::default().min_free,
            mirrors: HashMap::new(),
            certs_dirs: [
                "/etc/berth/certs.d",
                "/etc/containerd/certs.d",
                "/etc/containers/certs.d",
                "/etc/docker/certs.d",
            ]
            .into_iter()
            .map(PathBuf::from)
            .collect(),
            tls: HashMap::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

impl Config {
    /// Parse a config file's text. Unknown keys are errors naming the key.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        c.validate()?;
        Ok(c)
    }

    /// `--config FILE` if given (it must exist), else the default path if it
    /// exists, else the embedded defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, required) = match explicit {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (what, p) in [
            ("root", &self.root),
            ("state", &self.state),
            ("socket", &self.socket),
        ] {
            if !p.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "{what} must be an absolute path, got {}",
                    p.display()
                )));
            }
        }
        let cg = &self.runtime.cgroup_parent;
        if cg.trim_matches('/').is_empty() || cg.split('/').any(|c| c == ".." || c == ".") {
            return Err(ConfigError::Invalid(format!(
                "runtime.cgroup_parent {cg:?} must name a cgroup below the root, without . or .."
            )));
        }
        for (name, h) in &self.runtime.handlers {
            if !valid_handler_name(name) {
                return Err(ConfigError::Invalid(format!(
                    "runtime.handlers.{name:?}: a handler name is a DNS label (a-z, 0-9, -; at most 63), as RuntimeClass.handler"
                )));
            }
            if !h.runtime_path.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "runtime.handlers.{name}.runtime_path must be an absolute path, got {}",
                    h.runtime_path.display()
                )));
            }
            if let Some(r) = h.runtime_root.as_ref().filter(|r| !r.is_absolute()) {
                return Err(ConfigError::Invalid(format!(
                    "runtime.handlers.{name}.runtime_root must be an absolute path, got {}",
                    r.display()
                )));
            }
        }
        self.network.validate().map_err(ConfigError::Invalid)?;
        let st = &self.streaming;
        if st.tls_cert.is_some() != st.tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "streaming.tls_cert and streaming.tls_key go together: set both or neither".into(),
            ));
        }
        if st.idle_timeout.is_zero() || st.stream_creation_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "streaming.idle_timeout and streaming.stream_creation_timeout must be more than 0"
                    .into(),
            ));
        }
        if self.registry.max_concurrent_downloads == 0 {
            return Err(ConfigError::Invalid(
                "registry.max_concurrent_downloads must be at least 1".into(),
            ));
        }
        if self.registry.max_unpacked_layer_size == 0 {
            return Err(ConfigError::Invalid(
                "registry.max_unpacked_layer_size must be more than 0".into(),
            ));
        }
        if self.registry.pull_progress_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "registry.pull_progress_interval must be more than 0".into(),
            ));
        }
        if self.registry.pull_stall_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "registry.pull_stall_timeout must be more than 0".into(),
            ));
        }
        for (host, t) in &self.registry.tls {
            if t.cert_file.is_some() != t.key_file.is_some() {
                return Err(ConfigError::Invalid(format!(
                    "registry.tls.{host:?}: cert_file and key_file go together: set both or neither"
                )));
            }
            for (what, f) in [
                ("ca_file", &t.ca_file),
                ("cert_file", &t.cert_file),
                ("key_file", &t.key_file),
            ] {
                if let Some(f) = f
                    && !f.is_absolute()
                {
                    return Err(ConfigError::Invalid(format!(
                        "registry.tls.{host:?}.{what} must be an absolute path, got {}",
                        f.display()
                    )));
                }
            }
        }
        for p in &self.registry.pinned_images {
            p.parse::<berth_image::Reference>()
                .map_err(|e| ConfigError::Invalid(format!("registry.pinned_images: {e}")))?;
        }
        for (host, eps) in &self.registry.mirrors {
            for ep in eps {
                let ok = match ep.split_once("://") {
                    Some((scheme, rest)) => matches!(scheme, "http" | "https") && !rest.is_empty(),
                    None => !ep.is_empty(),
                };
                if !ok {
                    return Err(ConfigError::Invalid(format!(
                        "registry.mirrors.{host:?}: {ep:?} is not an http(s) endpoint"
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn image_service_config(&self) -> berth_image::ImageServiceConfig {
        berth_image::ImageServiceConfig {
            root: self.root.clone(),
            registry: berth_image::registry::RegistryConfig {
                mirrors: self.registry.mirrors.clone(),
                insecure: self.registry.insecure.iter().cloned().collect(),
                stall_timeout: self.registry.pull_stall_timeout,
                tls: self
                    .registry
                    .tls
                    .iter()
                    .map(|(host, t)| {
                        (
                            host.clone(),
                            berth_image::registry::HostTls {
                                ca_files: t.ca_file.iter().cloned().collect(),
                                client_cert: t.cert_file.clone(),
                                client_key: t.key_file.clone(),
                                skip_verify: t.skip_verify,
                            },
                        )
                    })
                    .collect(),
                certs_dirs: self.registry.certs_dirs.clone(),
            },
            max_concurrent_downloads: self.registry.max_concurrent_downloads,
            pinned_images: self.registry.pinned_images.clone(),
            unpack_limits: UnpackLimits {
                max_layer_bytes: self.registry.max_unpacked_layer_size,
                min_free: self.registry.min_free_space,
            },
            progress_every: self.registry.pull_progress_interval,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_config_written_as_toml_reads_back_the_same() {
        let mut c = Config::default();
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("pull_stall_timeout = \"5m\""), "{text}");
        assert!(
            text.contains("max_unpacked_layer_size = \"64GiB\""),
            "{text}"
        );
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), c);
        // Every kind of value, set.
        c.registry.min_free_space = FreeSpace::Percent(7);
        c.registry.max_unpacked_layer_size = 12_345_678_901;
        c.registry
            .mirrors
            .insert("docker.io".into(), vec!["http://127.0.0.1:5000".into()]);
        c.network.subnet = Some("10.1.0.0/16".parse().unwrap());
        c.network.cni_timeout = Duration::from_millis(1500);
        c.streaming.tls_cert = Some("/etc/berth/tls.crt".into());
        c.log.format = LogFormat::Json;
        let text = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), c, "{text}");
        c.registry.min_free_space = FreeSpace::Bytes(1 << 30);
        let text = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), c, "{text}");
    }

    #[test]
    fn empty_file_is_the_embedded_defaults() {
        assert_eq!(
            Config::parse("", Path::new("x")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn deploy_config_is_the_defaults() {
        let text = include_str!("../../deploy/berth.toml");
        let c = Config::parse(text, Path::new("deploy/berth.toml")).unwrap();
        assert_eq!(
            c,
            Config::default(),
            "deploy/berth.toml must document the defaults as they are"
        );
    }

    #[test]
    fn every_key_is_read() {
        let c = Config::parse(
            r#"
root = "/tmp/r"
state = "/tmp/s"
socket = "/tmp/s/b.sock"
[log]
level = "debug"
format = "json"
[registry]
max_concurrent_downloads = 5
pull_stall_timeout = "90s"
pull_progress_interval = "3s"
insecure = ["my-registry.local:5000"]
pinned_images = ["registry.k8s.io/pause:3.10"]
max_unpacked_layer_size = "2GiB"
min_free_space = "5%"
[registry.mirrors]
"registry.k8s.io" = ["http://127.0.0.1:5000"]
"#,
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.root, PathBuf::from("/tmp/r"));
        assert_eq!(c.log.level, LogLevel::Debug);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.registry.max_concurrent_downloads, 5);
        assert_eq!(c.registry.pull_stall_timeout, Duration::from_secs(90));
        assert_eq!(c.registry.pull_progress_interval, Duration::from_secs(3));
        assert_eq!(c.registry.max_unpacked_layer_size, 2 << 30);
        assert_eq!(c.registry.min_free_space, FreeSpace::Percent(5));
        assert_eq!(
            c.registry.mirrors["registry.k8s.io"],
            vec!["http://127.0.0.1:5000"]
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::parse("[registry]\nmirrorz = 1\n", Path::new("f.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("mirrorz"), "{e}");
        let e = Config::parse("rooot = \"/x\"\n", Path::new("f.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rooot"), "{e}");
    }

    #[test]
    fn bad_values_are_explained() {
        for (text, needle) in [
            ("[registry]\npull_stall_timeout = \"soon\"\n", "soon"),
            (
                "[registry]\nmax_concurrent_downloads = 0\n",
                "max_concurrent_downloads",
            ),
            ("[log]\nlevel = \"loud\"\n", "loud"),
            ("root = \"relative\"\n", "absolute"),
            (
                "[registry]\npinned_images = [\"Bad Ref\"]\n",
                "pinned_images",
            ),
            ("[registry.mirrors]\n\"x.io\" = [\"ftp://m\"]\n", "ftp://m"),
            ("[runtime]\ncgroup_parent = \"../x\"\n", "cgroup_parent"),
            ("[registry]\nmax_unpacked_layer_size = \"big\"\n", "big"),
            ("[registry]\nmax_unpacked_layer_size = \"-1GiB\"\n", "-1GiB"),
            ("[registry]\nmax_unpacked_layer_size = 1024\n", "string"),
            (
                "[registry]\nmax_unpacked_layer_size = \"0\"\n",
                "max_unpacked_layer_size",
            ),
            ("[registry]\nmin_free_space = \"101%\"\n", "101%"),
            ("[registry]\nmin_free_space = \"lots\"\n", "lots"),
        ] {
            let e = Config::parse(text, Path::new("f.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn sizes_take_binary_and_decimal_units_and_free_space_a_percentage() {
        for (text, bytes) in [
            ("64GiB", 64u64 << 30),
            ("64 GiB", 64 << 30),
            ("500MB", 500_000_000),
            ("1.5KiB", 1536),
            ("4096", 4096),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        let c = Config::parse("[registry]\nmin_free_space = \"0\"\n", Path::new("x")).unwrap();
        assert_eq!(c.registry.min_free_space, FreeSpace::Bytes(0));
        let c = Config::parse("[registry]\nmin_free_space = \"512MiB\"\n", Path::new("x")).unwrap();
        assert_eq!(c.registry.min_free_space, FreeSpace::Bytes(512 << 20));
        assert_eq!(
            c.image_service_config().unpack_limits,
            UnpackLimits {
                max_layer_bytes: 64 << 30,
                min_free: FreeSpace::Bytes(512 << 20),
            }
        );
    }

    #[test]
    fn handlers_are_read_with_their_roots_resolved_and_bad_ones_named() {
        let c = Config::parse(
            r#"
state = "/run/b"
[runtime.handlers.runc]
runtime_path = "/usr/sbin/runc"
[runtime.handlers.crun-2]
runtime_path = "/usr/bin/crun"
runtime_root = "/run/crun"
runtime_args = ["--debug"]
"#,
            Path::new("x"),
        )
        .unwrap();
        let h = c.runtime.oci_handlers(&c.state);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["crun-2", "runc"]);
        assert_eq!(h["runc"].root, PathBuf::from("/run/b/runtimes/runc"));
        assert_eq!(h["runc"].path, PathBuf::from("/usr/sbin/runc"));
        assert!(h["runc"].args.is_empty());
        assert_eq!(h["crun-2"].root, PathBuf::from("/run/crun"));
        assert_eq!(h["crun-2"].args, ["--debug"]);
        assert_eq!(h["crun-2"].name, "crun-2");
        // Written back by `berthd config` and read again: the same.
        let text = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), c, "{text}");

        for (text, needle) in [
            (
                "[runtime.handlers.Runc]\nruntime_path = \"/x\"\n",
                "DNS label",
            ),
            (
                "[runtime.handlers.\"\"]\nruntime_path = \"/x\"\n",
                "DNS label",
            ),
            (
                "[runtime.handlers.-x]\nruntime_path = \"/x\"\n",
                "DNS label",
            ),
            (
                "[runtime.handlers.runc]\nruntime_path = \"runc\"\n",
                "runtime_path",
            ),
            (
                "[runtime.handlers.runc]\nruntime_path = \"/x\"\nruntime_root = \"r\"\n",
                "runtime_root",
            ),
            (
                "[runtime.handlers.runc]\nruntime_path = \"/x\"\nbinary = 1\n",
                "binary",
            ),
            ("[runtime.handlers.runc]\n", "runtime_path"),
        ] {
            let e = Config::parse(text, Path::new("f.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn missing_default_file_means_defaults_but_missing_explicit_file_fails() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        assert!(Config::load(Some(&missing)).is_err());
    }
}
