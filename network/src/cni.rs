//! The CNI plugin: the standard CNI plugins (bridge, host-local, portmap,
//! Calico, ...) run per the CNI spec (lists of cniVersion 0.1.0 to 1.1.0).
//!
//! * Config: the lexically first `*.conflist`, `*.conf` or `*.json` file of
//!   `cni_conf_dir`, as libcni's `ConfFiles` lists them and containerd picks
//!   one; a `.conf`/`.json` file holds one plugin and is wrapped into a list.
//!   It is read again when the directory or the file changes.
//! * Before ADD a cache record (config, CNI_ARGS, capability data, netns) is
//!   written under `<root>/cni/results`, so that whatever ADD did can be
//!   undone with the same config even if berthd dies in the middle or the
//!   config directory changes later; the record gets ADD's result once it is
//!   done, and goes after a successful DEL.
//! * A plugin runs in its own process group with a clean environment (PATH
//!   only), for at most `cni_timeout` (then its whole group is killed), and
//!   what it prints is capped.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tracing::{debug, info, warn};

use crate::{Attachment, Error, NetworkConfig, Plugin, PodRequest, Readiness, Result};

/// The interface CNI creates in the pod, as kubelet expects it.
const IFNAME: &str = "eth0";
/// The most a plugin may print on stdout (a result is a few KiB).
const STDOUT_CAP: usize = 1 << 20;
/// What is kept of a plugin's stderr, for error messages.
const STDERR_CAP: usize = 64 << 10;
/// The largest config or cache file read.
const FILE_CAP: u64 = 4 << 20;
/// The spec versions a list may name.
const SUPPORTED_VERSIONS: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];
/// A directory or file modified less than this long before it was read may
/// change again without a visible change of its mtime (timestamps are as
/// coarse as a clock tick, or a second on some filesystems): it is read again
/// on the next call instead of being trusted ("racy git").
const RACY: Duration = Duration::from_secs(2);
const NOT_READY: &str = "NetworkPluginNotReady";
const CACHE_KIND: &str = "berthCniCacheV1";
/// Kubelet's bounds for the bandwidth annotations (ValidateBandwidthIsReasonable).
const MIN_BANDWIDTH: u128 = 1_000;
const MAX_BANDWIDTH: u128 = 1_000_000_000_000_000;
const INGRESS_ANNOTATION: &str = "kubernetes.io/ingress-bandwidth";
const EGRESS_ANNOTATION: &str = "kubernetes.io/egress-bandwidth";
/// containerd's capability for passing the pod's annotations to plugins.
const ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";

/// One plugin of a list: its `type` (a file name, checked) and its config.
#[derive(Clone, Debug, PartialEq)]
struct PluginConf {
    ty: String,
    conf: Map<String, Value>,
}

/// A network configuration list, validated.
#[derive(Clone, Debug, PartialEq)]
struct NetList {
    cni_version: String,
    name: String,
    disable_check: bool,
    plugins: Vec<PluginConf>,
}

impl NetList {
    /// A `.conflist` document (or a cached list).
    fn from_value(v: &Value) -> Result<Self, String> {
        let obj = v.as_object().ok_or("not a JSON object")?;
        let cni_version = pick_version(obj)?;
        let name = match obj.get("name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::String(_)) | None => return Err("no network \"name\"".into()),
            Some(_) => return Err("\"name\" is not a string".into()),
        };
        if name.contains('/') || name.chars().any(char::is_control) {
            return Err(format!(
                "network name {name:?} holds a '/' or a control character"
            ));
        }
        let disable_check = match obj.get("disableCheck") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            // Older libcni took a string.
            Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
            Some(_) => return Err("\"disableCheck\" is not a boolean".into()),
        };
        let plugins = match obj.get("plugins") {
            Some(Value::Array(a)) if !a.is_empty() => a,
            Some(Value::Array(_)) => return Err("the \"plugins\" list is empty".into()),
            Some(_) => return Err("\"plugins\" is not a list".into()),
            None => return Err("no \"plugins\" list".into()),
        };
        let mut out = Vec::with_capacity(plugins.len());
        for (i, p) in plugins.iter().enumerate() {
            let conf = p
                .as_object()
                .ok_or_else(|| format!("plugins[{i}] is not a JSON object"))?;
            let ty = match conf.get("type") {
                Some(Value::String(t)) => t,
                Some(_) => return Err(format!("plugins[{i}]: \"type\" is not a string")),
                None => return Err(format!("plugins[{i}] has no \"type\"")),
            };
            if !plain_file_name(ty) {
                return Err(format!(
                    "plugins[{i}]: type {ty:?} is not a plain file name of a plugin"
                ));
            }
            out.push(PluginConf {
                ty: ty.clone(),
                conf: conf.clone(),
            });
        }
        Ok(NetList {
            cni_version,
            name,
            disable_check,
            plugins: out,
        })
    }

    /// A `.conf`/`.json` document: one plugin, wrapped into a list as libcni's
    /// ConfListFromConf does. One that holds a list anyway is read as a list.
    fn from_single(v: &Value) -> Result<Self, String> {
        let obj = v.as_object().ok_or("not a JSON object")?;
        if !obj.contains_key("type") && obj.contains_key("plugins") {
            return Self::from_value(v);
        }
        let mut list = Map::new();
        for key in ["cniVersion", "name"] {
            if let Some(x) = obj.get(key) {
                list.insert(key.into(), x.clone());
            }
        }
        list.insert("plugins".into(), Value::Array(vec![v.clone()]));
        Self::from_value(&Value::Object(list))
    }

    fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("cniVersion".into(), self.cni_version.clone().into());
        m.insert("name".into(), self.name.clone().into());
        if self.disable_check {
            m.insert("disableCheck".into(), true.into());
        }
        m.insert(
            "plugins".into(),
            Value::Array(
                self.plugins
                    .iter()
                    .map(|p| Value::Object(p.conf.clone()))
                    .collect(),
            ),
        );
        Value::Object(m)
    }

    fn types(&self) -> Vec<&str> {
        self.plugins.iter().map(|p| p.ty.as_str()).collect()
    }

    /// CHECK exists from 0.4.0 on, and a list may turn it off.
    fn checks(&self) -> bool {
        version_at_least(&self.cni_version, (0, 4, 0)) && !self.disable_check
    }

    /// DEL gets prevResult from 0.4.0 on.
    fn del_gets_prev_result(&self) -> bool {
        version_at_least(&self.cni_version, (0, 4, 0))
    }
}

/// The version of a list: the highest supported one of a 1.1 `cniVersions`
/// list, else `cniVersion`.
fn pick_version(obj: &Map<String, Value>) -> Result<String, String> {
    if let Some(Value::Array(vs)) = obj.get("cniVersions") {
        let best = vs
            .iter()
            .filter_map(Value::as_str)
            .filter(|v| SUPPORTED_VERSIONS.contains(v))
            .filter_map(|v| Some((parse_version(v)?, v)))
            .max();
        return match best {
            Some((_, v)) => Ok(v.to_owned()),
            None => Err(format!(
                "none of \"cniVersions\" is supported (berth supports {})",
                SUPPORTED_VERSIONS.join(", ")
            )),
        };
    }
    match obj.get("cniVersion") {
        Some(Value::String(v)) if SUPPORTED_VERSIONS.contains(&v.as_str()) => Ok(v.clone()),
        Some(Value::String(v)) => Err(format!(
            "cniVersion {v:?} is not supported (berth supports {})",
            SUPPORTED_VERSIONS.join(", ")
        )),
        Some(_) => Err("\"cniVersion\" is not a string".into()),
        None => Err("no \"cniVersion\"".into()),
    }
}

fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let out = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(out)
}

fn version_at_least(v: &str, min: (u32, u32, u32)) -> bool {
    parse_version(v).is_some_and(|v| v >= min)
}

/// A plugin type names a file in a bin dir, nothing else.
fn plain_file_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}

/// A CNI container id (the spec's pattern), which also makes a safe file name
/// (short enough for `.<id>.json.tmp` to fit NAME_MAX).
fn valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 200
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// The loaded config: the file it came from and its list.
#[derive(Debug)]
struct Loaded {
    file: PathBuf,
    list: NetList,
}

/// What tells whether a directory or file changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    mtime: Option<SystemTime>,
    size: u64,
    ino: u64,
    dev: u64,
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Self {
        Stamp {
            mtime: m.modified().ok(),
            size: m.len(),
            ino: m.ino(),
            dev: m.dev(),
        }
    }

    fn settled(&self, now: SystemTime) -> bool {
        self.mtime
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|d| d > RACY)
    }
}

/// The stamps a loaded config may be trusted by: the directory's and the
/// chosen file's (none when the directory held no config).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamps {
    dir: Stamp,
    file: Option<(PathBuf, Stamp)>,
}

#[derive(Default)]
struct ConfState {
    /// None: read the directory on the next call.
    stamps: Option<Stamps>,
    /// The state of the directory as last read: a config, or why there is
    /// none (the message for readiness).
    current: Option<Result<Arc<Loaded>, String>>,
    /// The last config that was valid, for `info`.
    last_good: Option<Arc<Loaded>>,
    /// How many times the directory was read (tests).
    reads: u64,
}

/// Pods with an operation in flight: the spec forbids parallel operations on
/// one container, and recover may meet a teardown.
#[derive(Default)]
struct PodLocks {
    busy: Mutex<HashSet<String>>,
    freed: Condvar,
}

struct PodGuard<'a> {
    locks: &'a PodLocks,
    id: String,
}

impl PodLocks {
    fn lock(&self, id: &str) -> PodGuard<'_> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        while busy.contains(id) {
            busy = self.freed.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        busy.insert(id.to_owned());
        PodGuard {
            locks: self,
            id: id.to_owned(),
        }
    }
}

impl Drop for PodGuard<'_> {
    fn drop(&mut self) {
        let mut busy = self.locks.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.remove(&self.id);
        drop(busy);
        self.locks.freed.notify_all();
    }
}

/// Everything an ADD, CHECK or DEL of one pod runs with; cached between them.
#[derive(Clone, Debug, PartialEq)]
struct Call {
    list: NetList,
    conf_file: PathBuf,
    container_id: String,
    netns: String,
    ifname: String,
    cni_args: Vec<(String, String)>,
    /// The data of the capabilities (runtimeConfig) berth has for the pod.
    caps: Map<String, Value>,
}

/// The cache file of a pod, `<cache>/<pod id>.json`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CacheRecord {
    kind: String,
    container_id: String,
    #[serde(default)]
    conf_file: PathBuf,
    config: Value,
    netns: String,
    if_name: String,
    #[serde(default)]
    cni_args: Vec<(String, String)>,
    #[serde(default)]
    capability_args: Map<String, Value>,
    /// The final result of ADD; null while ADD runs (or if it never ended).
    #[serde(default)]
    result: Option<Value>,
}

impl Call {
    fn record(&self, result: Option<&Value>) -> CacheRecord {
        CacheRecord {
            kind: CACHE_KIND.into(),
            container_id: self.container_id.clone(),
            conf_file: self.conf_file.clone(),
            config: self.list.to_value(),
            netns: self.netns.clone(),
            if_name: self.ifname.clone(),
            cni_args: self.cni_args.clone(),
            capability_args: self.caps.clone(),
            result: result.cloned(),
        }
    }

    fn from_record(rec: CacheRecord, id: &str) -> Result<(Call, Option<Value>), String> {
        if rec.kind != CACHE_KIND {
            return Err(format!("unknown kind {:?}", rec.kind));
        }
        if rec.container_id != id {
            return Err(format!("it is the record of {:?}", rec.container_id));
        }
        if !plain_file_name(&rec.if_name) {
            return Err(format!("bad ifName {:?}", rec.if_name));
        }
        let list = NetList::from_value(&rec.config).map_err(|e| format!("config: {e}"))?;
        let result = rec.result.filter(|r| !r.is_null());
        Ok((
            Call {
                list,
                conf_file: rec.conf_file,
                container_id: rec.container_id,
                netns: rec.netns,
                ifname: rec.if_name,
                cni_args: rec.cni_args,
                caps: rec.capability_args,
            },
            result,
        ))
    }

    fn cni_args_env(&self) -> String {
        let parts: Vec<String> = self
            .cni_args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.join(";")
    }
}

/// What the runtime gives plugins as CNI_ARGS, as containerd does.
fn cni_args(pod: &PodRequest) -> Result<Vec<(String, String)>> {
    let args = vec![
        ("IgnoreUnknown".to_owned(), "1".to_owned()),
        ("K8S_POD_NAMESPACE".to_owned(), pod.namespace.clone()),
        ("K8S_POD_NAME".to_owned(), pod.name.clone()),
        ("K8S_POD_INFRA_CONTAINER_ID".to_owned(), pod.id.clone()),
        ("K8S_POD_UID".to_owned(), pod.uid.clone()),
    ];
    for (k, v) in &args {
        if v.chars().any(|c| c == ';' || c == '=' || c.is_control()) {
            return Err(Error::InvalidArgument(format!(
                "{k} {v:?} cannot be passed in CNI_ARGS (';', '=' or a control character)"
            )));
        }
    }
    Ok(args)
}

/// The runtimeConfig data berth has for a pod, by capability name; a plugin
/// gets those it declares.
fn capability_args(pod: &PodRequest) -> Result<Map<String, Value>> {
    let mut caps = Map::new();
    let ports: Vec<Value> = pod
        .port_mappings
        .iter()
        .filter(|p| p.host_port != 0)
        .map(|p| {
            json!({
                "hostPort": p.host_port,
                "containerPort": p.container_port,
                "protocol": p.protocol.as_str(),
                "hostIP": p.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            })
        })
        .collect();
    if !ports.is_empty() {
        caps.insert("portMappings".into(), Value::Array(ports));
    }
    if let Some(bw) = bandwidth(&pod.annotations)? {
        caps.insert("bandwidth".into(), bw);
    }
    if !pod.cgroup_parent.is_empty() {
        caps.insert("cgroupPath".into(), pod.cgroup_parent.clone().into());
    }
    if !pod.annotations.is_empty() {
        let a: Map<String, Value> = pod
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        caps.insert(ANNOTATIONS_CAPABILITY.into(), Value::Object(a));
    }
    Ok(caps)
}

/// The bandwidth capability from the pod's annotations, in bits per second,
/// with containerd's burst (u32::MAX) for a set rate.
fn bandwidth(annotations: &BTreeMap<String, String>) -> Result<Option<Value>> {
    let rate = |key: &str| -> Result<Option<u128>> {
        let Some(v) = annotations.get(key) else {
            return Ok(None);
        };
        let bits = parse_quantity(v)
            .map_err(|e| Error::InvalidArgument(format!("annotation {key}: {v:?}: {e}")))?;
        if bits < MIN_BANDWIDTH {
            return Err(Error::InvalidArgument(format!(
                "annotation {key}: {v:?} is unreasonably small (< 1kbit)"
            )));
        }
        if bits > MAX_BANDWIDTH {
            return Err(Error::InvalidArgument(format!(
                "annotation {key}: {v:?} is unreasonably large (> 1Pbit)"
            )));
        }
        Ok(Some(bits))
    };
    let ingress = rate(INGRESS_ANNOTATION)?;
    let egress = rate(EGRESS_ANNOTATION)?;
    if ingress.is_none() && egress.is_none() {
        return Ok(None);
    }
    let burst = |r: Option<u128>| if r.is_some() { u64::from(u32::MAX) } else { 0 };
    Ok(Some(json!({
        "ingressRate": ingress.unwrap_or(0) as u64,
        "ingressBurst": burst(ingress),
        "egressRate": egress.unwrap_or(0) as u64,
        "egressBurst": burst(egress),
    })))
}

/// A Kubernetes resource quantity ("10M", "1.5Gi", "100k", "1e6"), rounded up
/// to an integer as `Quantity.Value()` does.
fn parse_quantity(s: &str) -> Result<u128, String> {
    let s = s.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(end);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return Err("not a quantity like \"10M\"".into());
    }
    if int.len() + frac.len() > 30 {
        return Err("too many digits".into());
    }
    let mantissa: u128 = format!("0{int}{frac}")
        .parse()
        .map_err(|_| "not a quantity like \"10M\"".to_owned())?;
    let (pow2, pow10): (u32, i32) = match suffix {
        "" => (0, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        _ => match suffix.strip_prefix(['e', 'E']).map(str::parse::<i32>) {
            Some(Ok(e)) if (-60..=60).contains(&e) => (0, e),
            _ => return Err(format!("unknown suffix {suffix:?}")),
        },
    };
    let too_large = || "too large".to_owned();
    let n = mantissa.checked_mul(1u128 << pow2).ok_or_else(too_large)?;
    let exp = pow10 - frac.len() as i32;
    if exp >= 0 {
        10u128
            .checked_pow(exp as u32)
            .and_then(|m| n.checked_mul(m))
            .ok_or_else(too_large)
    } else {
        match 10u128.checked_pow(exp.unsigned_abs()) {
            Some(d) => Ok(n.div_ceil(d)),
            None => Ok(u128::from(n > 0)),
        }
    }
}

/// The pod's addresses in a result: `ips[].address` (0.3.0 and later) of the
/// pod's interface or of no named interface, else `ip4.ip`/`ip6.ip` (0.1/0.2).
/// IPv4 first, then IPv6, without duplicates.
fn result_ips(result: &Value, ifname: &str) -> Vec<IpAddr> {
    let mut found = Vec::new();
    let cidr_ip = |v: Option<&Value>| -> Option<IpAddr> {
        let s = v?.as_str()?;
        s.split('/').next()?.trim().parse().ok()
    };
    let ifaces = result.get("interfaces").and_then(Value::as_array);
    if let Some(ips) = result.get("ips").and_then(Value::as_array) {
        for ip in ips {
            let iface = ip
                .get("interface")
                .and_then(Value::as_u64)
                .and_then(|i| ifaces?.get(usize::try_from(i).ok()?));
            if let Some(iface) = iface {
                let name = iface.get("name").and_then(Value::as_str);
                let sandbox = iface.get("sandbox").and_then(Value::as_str).unwrap_or("");
                let ours = match name {
                    Some(n) => n == ifname,
                    None => !sandbox.is_empty(),
                };
                if !ours {
                    continue;
                }
            }
            found.extend(cidr_ip(ip.get("address")));
        }
    }
    for key in ["ip4", "ip6"] {
        found.extend(cidr_ip(result.get(key).and_then(|v| v.get("ip"))));
    }
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in found
        .iter()
        .filter(|ip| ip.is_ipv4())
        .chain(found.iter().filter(|ip| ip.is_ipv6()))
    {
        if !out.contains(ip) {
            out.push(*ip);
        }
    }
    out
}

/// The config a plugin reads on stdin: its own, with the list's name and
/// version, prevResult, and runtimeConfig holding the capabilities it
/// declares that berth has data for (libcni's buildOneConfig).
fn plugin_stdin(
    list: &NetList,
    plugin: &PluginConf,
    prev: Option<&Value>,
    caps: &Map<String, Value>,
) -> Result<Vec<u8>> {
    let mut conf = plugin.conf.clone();
    conf.insert("name".into(), list.name.clone().into());
    conf.insert("cniVersion".into(), list.cni_version.clone().into());
    match prev {
        Some(p) => conf.insert("prevResult".into(), p.clone()),
        None => conf.remove("prevResult"),
    };
    let mut rc = Map::new();
    if let Some(declared) = conf.get("capabilities").and_then(Value::as_object) {
        for (k, v) in caps {
            if declared.get(k) == Some(&Value::Bool(true)) {
                rc.insert(k.clone(), v.clone());
            }
        }
    }
    if !rc.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(rc));
    }
    serde_json::to_vec(&Value::Object(conf)).map_err(|e| Error::failed("encode a CNI config", e))
}

/// What the netns path of DEL is: the path while it is a network namespace,
/// else empty, as containerd does and the spec allows ("when CNI_NETNS is not
/// provided, the plugin should clean up as many resources as possible"). A
/// path that is gone or no longer a mount of one would make plugins fail
/// opening it.
fn netns_for_del(path: &str) -> &str {
    if path.is_empty() {
        return path;
    }
    match nix::sys::statfs::statfs(Path::new(path)) {
        Ok(s) if s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC => path,
        _ => "",
    }
}

/// A plugin's output, capped.
struct Captured {
    data: Vec<u8>,
    overflow: bool,
}

fn read_capped<R: Read + Send + 'static>(
    mut r: R,
    cap: usize,
) -> io::Result<mpsc::Receiver<Captured>> {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("cni-plugin-out".into())
        .spawn(move || {
            let mut data = Vec::new();
            let mut overflow = false;
            let mut buf = [0u8; 16 << 10];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let room = cap - data.len();
                        if n > room {
                            overflow = true;
                        }
                        // Past the cap, keep reading so that the plugin is
                        // not blocked on a full pipe, and drop it.
                        data.extend_from_slice(&buf[..n.min(room)]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send(Captured { data, overflow });
        })?;
    Ok(rx)
}

/// Kill a plugin and whatever it started in its process group.
fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Spawn, trying again while the binary is being written (ETXTBSY: an
/// installer copying it, or another thread's fork holding a write fd).
fn spawn(cmd: &mut Command) -> io::Result<Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                thread::sleep(Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

/// Text from a plugin, for a message: one line, at most `max` chars.
fn clean(b: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(b);
    let s: String = s
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

fn code_name(code: u64) -> &'static str {
    match code {
        1 => " (incompatible CNI version)",
        2 => " (unsupported field in network configuration)",
        3 => " (container unknown or does not exist)",
        4 => " (invalid necessary environment variables)",
        5 => " (I/O failure)",
        6 => " (failed to decode content)",
        7 => " (invalid network config)",
        11 => " (try again later)",
        _ => "",
    }
}

/// The error of a plugin that exited non-zero: its error result on stdout if
/// it printed one, else its stderr.
fn plugin_error(what: &str, status: ExitStatus, out: &Captured, err: &Captured) -> Error {
    if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(&out.data)
        && (o.contains_key("code") || o.contains_key("msg"))
    {
        let code = match o.get("code") {
            Some(Value::Number(n)) => {
                let name = n.as_u64().map(code_name).unwrap_or("");
                format!("{n}{name}")
            }
            Some(v) => clean(v.to_string().as_bytes(), 40),
            None => "?".into(),
        };
        let text = |k: &str| match o.get(k) {
            Some(Value::String(s)) => clean(s.as_bytes(), 2048),
            Some(Value::Null) | None => String::new(),
            Some(v) => clean(v.to_string().as_bytes(), 2048),
        };
        let msg = text("msg");
        let details = text("details");
        let mut s = format!("{what} failed with code {code}: {msg}");
        if !details.is_empty() {
            s.push_str(&format!(" ({details})"));
        }
        return Error::Failed(s);
    }
    let text = match clean(&err.data, 2048) {
        t if t.is_empty() => clean(&out.data, 2048),
        t => t,
    };
    if text.is_empty() {
        Error::Failed(format!("{what} failed ({status}) and said nothing"))
    } else {
        Error::Failed(format!("{what} failed ({status}): {text}"))
    }
}

/// Add a note to an error, keeping its kind.
fn with_note(e: Error, note: &str) -> Error {
    match e {
        Error::InvalidArgument(s) => Error::InvalidArgument(format!("{s}; {note}")),
        Error::AlreadyExists(s) => Error::AlreadyExists(format!("{s}; {note}")),
        Error::Exhausted(s) => Error::Exhausted(format!("{s}; {note}")),
        Error::NotReady(s) => Error::NotReady(format!("{s}; {note}")),
        Error::Failed(s) => Error::Failed(format!("{s}; {note}")),
    }
}

fn has_conf_ext(name: &OsString) -> bool {
    let b = name.as_bytes();
    [".conflist".as_bytes(), b".conf", b".json"]
        .iter()
        .any(|ext| b.len() > ext.len() && b.ends_with(ext))
}

/// Read a whole file of at most FILE_CAP bytes; also gives its stamp.
fn read_small(file: &mut fs::File) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    file.take(FILE_CAP + 1).read_to_end(&mut data)?;
    if data.len() as u64 > FILE_CAP {
        return Err(io::Error::other(format!(
            "larger than {} MiB",
            FILE_CAP >> 20
        )));
    }
    Ok(data)
}

pub struct CniPlugin {
    conf_dir: PathBuf,
    bin_dirs: Vec<PathBuf>,
    /// CNI_PATH: the bin dirs joined by ':'.
    cni_path: OsString,
    /// PATH of the plugins: berthd's.
    path_env: OsString,
    timeout: Duration,
    cache_dir: PathBuf,
    conf: Mutex<ConfState>,
    pods: PodLocks,
    /// Pods whose failed setup could not be undone (their DEL failed too):
    /// retried before the next setup, so that what they hold does not wait
    /// for a restart.
    pending: Mutex<HashSet<String>>,
}

impl CniPlugin {
    /// Remembers the directories and makes the result cache dir. A missing
    /// config dir is no error: readiness tells it.
    pub fn open(cfg: &NetworkConfig, root: &Path) -> Result<Self> {
        let cache_dir = root.join("cni").join("results");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&cache_dir)
            .map_err(|e| Error::failed(format!("create {}", cache_dir.display()), e))?;
        fs::set_permissions(&cache_dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::failed(format!("chmod {}", cache_dir.display()), e))?;
        let cni_path = cfg
            .cni_bin_dirs
            .iter()
            .map(|d| d.as_os_str().to_owned())
            .collect::<Vec<_>>()
            .join(std::ffi::OsStr::new(":"));
        let path_env = std::env::var_os("PATH").unwrap_or_else(|| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
        });
        Ok(CniPlugin {
            conf_dir: cfg.cni_conf_dir.clone(),
            bin_dirs: cfg.cni_bin_dirs.clone(),
            cni_path,
            path_env,
            timeout: cfg.cni_timeout,
            cache_dir,
            conf: Mutex::new(ConfState::default()),
            pods: PodLocks::default(),
            pending: Mutex::new(HashSet::new()),
        })
    }

    fn lock_conf(&self) -> MutexGuard<'_, ConfState> {
        self.conf.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bin_dirs_display(&self) -> String {
        String::from_utf8_lossy(self.cni_path.as_bytes()).into_owned()
    }

    /// Read the config dir again if it or the chosen file changed (or might
    /// have: see RACY).
    fn refresh(&self, st: &mut ConfState) {
        let dir = self.conf_dir.display();
        let dir_meta = match fs::metadata(&self.conf_dir) {
            Ok(m) => m,
            Err(e) => {
                st.stamps = None;
                st.current = Some(Err(if e.kind() == io::ErrorKind::NotFound {
                    format!("no network config found in {dir} (the directory does not exist)")
                } else {
                    format!("cannot read the network config directory {dir}: {e}")
                }));
                return;
            }
        };
        let dir_stamp = Stamp::of(&dir_meta);
        if let (Some(stamps), Some(_)) = (&st.stamps, &st.current) {
            let file_same = match &stamps.file {
                Some((p, s)) => fs::metadata(p).ok().map(|m| Stamp::of(&m)) == Some(*s),
                None => true,
            };
            if stamps.dir == dir_stamp && file_same {
                return;
            }
        }
        let now = SystemTime::now();
        let (file, result) = self.read_dir();
        st.reads += 1;
        let settled = dir_stamp.settled(now) && file.as_ref().is_none_or(|(_, s)| s.settled(now));
        st.stamps = settled.then_some(Stamps {
            dir: dir_stamp,
            file,
        });
        match &result {
            Ok(l) => {
                let changed = st
                    .last_good
                    .as_ref()
                    .is_none_or(|g| g.list != l.list || g.file != l.file);
                if changed {
                    info!(file = %l.file.display(), network = %l.list.name, plugins = ?l.list.types(), "CNI config loaded");
                }
                st.last_good = Some(l.clone());
            }
            Err(e) => {
                if st
                    .current
                    .as_ref()
                    .is_none_or(|c| c.as_ref().err() != Some(e))
                {
                    warn!("CNI config: {e}");
                }
            }
        }
        st.current = Some(result);
    }

    /// The first config file of the dir, and what it holds.
    #[allow(clippy::type_complexity)]
    fn read_dir(&self) -> (Option<(PathBuf, Stamp)>, Result<Arc<Loaded>, String>) {
        let dir = self.conf_dir.display();
        let rd = match fs::read_dir(&self.conf_dir) {
            Ok(rd) => rd,
            Err(e) => {
                return (
                    None,
                    Err(format!(
                        "cannot read the network config directory {dir}: {e}"
                    )),
                );
            }
        };
        let mut names: Vec<OsString> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .filter(has_conf_ext)
            .collect();
        names.sort();
        for name in names {
            let path = self.conf_dir.join(&name);
            let mut f = match fs::File::open(&path) {
                Ok(f) => f,
                // Gone since the listing, or a dangling link.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return (None, Err(format!("{}: {e}", path.display()))),
            };
            let meta = match f.metadata() {
                Ok(m) if m.is_file() => m,
                Ok(_) => continue,
                Err(e) => return (None, Err(format!("{}: {e}", path.display()))),
            };
            let stamp = Stamp::of(&meta);
            let parsed = read_small(&mut f)
                .map_err(|e| e.to_string())
                .and_then(|data| {
                    serde_json::from_slice::<Value>(&data).map_err(|e| format!("invalid JSON: {e}"))
                })
                .and_then(|v| {
                    if path.extension().is_some_and(|e| e == "conflist") {
                        NetList::from_value(&v)
                    } else {
                        NetList::from_single(&v)
                    }
                });
            let result = match parsed {
                Ok(list) => Ok(Arc::new(Loaded {
                    file: path.clone(),
                    list,
                })),
                Err(e) => Err(format!("invalid network config {}: {e}", path.display())),
            };
            return (Some((path, stamp)), result);
        }
        (None, Err(format!("no network config found in {dir}")))
    }

    /// The current config, or why there is none.
    fn current(&self) -> Result<Arc<Loaded>, String> {
        let mut st = self.lock_conf();
        self.refresh(&mut st);
        match &st.current {
            Some(Ok(l)) => Ok(l.clone()),
            Some(Err(e)) => Err(e.clone()),
            None => Err("the network config was not read".into()),
        }
    }

    fn find_plugin(&self, ty: &str) -> Option<PathBuf> {
        if !plain_file_name(ty) {
            return None;
        }
        self.bin_dirs.iter().map(|d| d.join(ty)).find(|p| {
            fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    }

    /// Why a list cannot run here: the first plugin missing from the bin dirs.
    fn missing_plugin(&self, list: &NetList) -> Option<String> {
        list.plugins
            .iter()
            .find(|p| self.find_plugin(&p.ty).is_none())
            .map(|p| format!("plugin {:?} not found in {}", p.ty, self.bin_dirs_display()))
    }

    fn cache_path(&self, id: &str) -> PathBuf {
        self.cache_dir.join(format!("{id}.json"))
    }

    fn write_cache(&self, call: &Call, result: Option<&Value>) -> Result<()> {
        let path = self.cache_path(&call.container_id);
        let tmp = self
            .cache_dir
            .join(format!(".{}.json.tmp", call.container_id));
        let what = || format!("write the CNI cache file {}", path.display());
        let data = serde_json::to_vec_pretty(&call.record(result))
            .map_err(|e| Error::failed(what(), e))?;
        let write = || -> io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.cache_dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::failed(what(), e)
        })
    }

    /// The cached call of a pod and ADD's result; None without a cache file;
    /// Err(message) for a file that cannot be used.
    #[allow(clippy::type_complexity)]
    fn read_cache(&self, id: &str) -> Result<Option<(Call, Option<Value>)>, String> {
        let path = self.cache_path(id);
        let mut f = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let data = read_small(&mut f).map_err(|e| format!("{}: {e}", path.display()))?;
        let rec: CacheRecord =
            serde_json::from_slice(&data).map_err(|e| format!("{}: {e}", path.display()))?;
        Call::from_record(rec, id)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    fn remove_cache(&self, id: &str) -> Result<()> {
        let path = self.cache_path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::failed(format!("remove {}", path.display()), e)),
        }
    }

    /// Run one plugin: its stdout on success.
    fn exec(
        &self,
        call: &Call,
        command: &str,
        netns: &str,
        ty: &str,
        stdin: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let what = format!(
            "CNI plugin {ty:?} {command} (network {:?}, pod {})",
            call.list.name, call.container_id
        );
        let bin = self.find_plugin(ty).ok_or_else(|| {
            Error::Failed(format!(
                "{what}: plugin {ty:?} not found in {}",
                self.bin_dirs_display()
            ))
        })?;
        let mut cmd = Command::new(&bin);
        cmd.env_clear()
            .env("PATH", &self.path_env)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &call.container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", &call.ifname)
            .env("CNI_ARGS", call.cni_args_env())
            .env("CNI_PATH", &self.cni_path)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = spawn(&mut cmd)
            .map_err(|e| Error::Failed(format!("{what}: cannot run {}: {e}", bin.display())))?;
        let pid = child.id();
        let started = (|| -> io::Result<_> {
            let out = read_capped(
                child
                    .stdout
                    .take()
                    .ok_or_else(|| io::Error::other("no stdout pipe"))?,
                STDOUT_CAP,
            )?;
            let err = read_capped(
                child
                    .stderr
                    .take()
                    .ok_or_else(|| io::Error::other("no stderr pipe"))?,
                STDERR_CAP,
            )?;
            let mut input = child
                .stdin
                .take()
                .ok_or_else(|| io::Error::other("no stdin pipe"))?;
            thread::Builder::new()
                .name("cni-plugin-in".into())
                .spawn(move || {
                    // A plugin may exit without reading it all: EPIPE is fine.
                    let _ = input.write_all(&stdin);
                })?;
            Ok((out, err))
        })();
        let (out_rx, err_rx) = match started {
            Ok(x) => x,
            Err(e) => {
                kill_group(pid);
                let _ = child.wait();
                return Err(Error::Failed(format!("{what}: {e}")));
            }
        };
        let (wait_tx, wait_rx) = mpsc::channel();
        let waiter = thread::Builder::new()
            .name("cni-plugin-wait".into())
            .spawn(move || {
                let _ = wait_tx.send(child.wait());
            });
        if let Err(e) = waiter {
            kill_group(pid);
            return Err(Error::Failed(format!("{what}: {e}")));
        }
        let deadline = std::time::Instant::now() + self.timeout;
        let timeout = humantime::format_duration(self.timeout);
        let status = match wait_rx.recv_timeout(self.timeout) {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => {
                kill_group(pid);
                return Err(Error::Failed(format!("{what}: waiting for it: {e}")));
            }
            Err(_) => {
                kill_group(pid);
                let _ = wait_rx.recv_timeout(Duration::from_secs(5));
                return Err(Error::Failed(format!(
                    "{what} timed out after {timeout}: killed it and its process group"
                )));
            }
        };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let out = match out_rx.recv_timeout(left) {
            Ok(out) => out,
            Err(_) => {
                kill_group(pid);
                return Err(Error::Failed(format!(
                    "{what}: it exited, but a process it started kept its output open \
                     past the timeout of {timeout}: killed its process group"
                )));
            }
        };
        let err = err_rx
            .recv_timeout(Duration::from_millis(200))
            .unwrap_or(Captured {
                data: Vec::new(),
                overflow: false,
            });
        if !status.success() {
            return Err(plugin_error(&what, status, &out, &err));
        }
        if out.overflow {
            return Err(Error::Failed(format!(
                "{what} printed more than {} MiB",
                STDOUT_CAP >> 20
            )));
        }
        if !err.data.is_empty() {
            debug!("{what} said on stderr: {}", clean(&err.data, 4096));
        }
        Ok(out.data)
    }

    /// ADD of every plugin in order, each getting the previous one's result;
    /// the last result.
    fn add_list(&self, call: &Call) -> Result<Value> {
        let mut prev: Option<Value> = None;
        for p in &call.list.plugins {
            let stdin = plugin_stdin(&call.list, p, prev.as_ref(), &call.caps)?;
            let out = self.exec(call, "ADD", &call.netns, &p.ty, stdin)?;
            let v: Value = serde_json::from_slice(&out).map_err(|e| {
                Error::Failed(format!(
                    "CNI plugin {:?} ADD: its result is not JSON ({e}): {}",
                    p.ty,
                    clean(&out, 200)
                ))
            })?;
            if !v.is_object() {
                return Err(Error::Failed(format!(
                    "CNI plugin {:?} ADD: its result is not a JSON object: {}",
                    p.ty,
                    clean(&out, 200)
                )));
            }
            prev = Some(v);
        }
        prev.ok_or_else(|| Error::Failed("the CNI network has no plugins".into()))
    }

    /// DEL of every plugin in reverse order. Unlike libcni, a failing DEL
    /// does not stop the others: what they hold (an address, a veth) is
    /// freed now rather than after a restart. The first error is returned,
    /// so the cache stays and the whole DEL is retried later (DEL must be
    /// idempotent, says the spec).
    fn del_list(&self, call: &Call, prev: Option<&Value>) -> Result<()> {
        let prev = prev.filter(|_| call.list.del_gets_prev_result());
        let netns = netns_for_del(&call.netns);
        let mut first = None;
        for p in call.list.plugins.iter().rev() {
            let r = plugin_stdin(&call.list, p, prev, &call.caps)
                .and_then(|stdin| self.exec(call, "DEL", netns, &p.ty, stdin));
            if let Err(e) = r {
                tracing::warn!(plugin = %p.ty, error = %e, "CNI DEL failed; going on with the others");
                first.get_or_insert(e);
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn check_list(&self, call: &Call, prev: &Value) -> Result<()> {
        for p in &call.list.plugins {
            let stdin = plugin_stdin(&call.list, p, Some(prev), &call.caps)?;
            self.exec(call, "CHECK", &call.netns, &p.ty, stdin)?;
        }
        Ok(())
    }

    /// DEL with a pod's cache record and remove it. Nothing cached: nothing
    /// to do. A record that cannot be read: DEL with the current config (and
    /// what `pod` tells), as a runtime without a cache would.
    fn del_cached(&self, id: &str, pod: Option<&PodRequest>) -> Result<()> {
        match self.read_cache(id) {
            Ok(None) => Ok(()),
            Ok(Some((call, prev))) => {
                self.del_list(&call, prev.as_ref())?;
                self.remove_cache(id)
            }
            Err(e) => {
                warn!("CNI cache record unusable, running DEL with the current config: {e}");
                let loaded = self.current().map_err(|c| {
                    Error::Failed(format!(
                        "{e}; and no network config to run DEL with instead: {c}"
                    ))
                })?;
                let (netns, cni_args, caps) = match pod {
                    Some(pod) => (
                        pod.netns.to_string_lossy().into_owned(),
                        cni_args(pod)?,
                        capability_args(pod).unwrap_or_default(),
                    ),
                    None => (
                        String::new(),
                        vec![
                            ("IgnoreUnknown".to_owned(), "1".to_owned()),
                            ("K8S_POD_INFRA_CONTAINER_ID".to_owned(), id.to_owned()),
                        ],
                        Map::new(),
                    ),
                };
                let call = Call {
                    list: loaded.list.clone(),
                    conf_file: loaded.file.clone(),
                    container_id: id.to_owned(),
                    netns,
                    ifname: IFNAME.to_owned(),
                    cni_args,
                    caps,
                };
                self.del_list(&call, None)?;
                self.remove_cache(id)
            }
        }
    }

    /// After a failed setup: DEL the whole list; the error, with the DEL's
    /// failure if it failed too (then the cache record stays for a later
    /// teardown or recover).
    fn undo(&self, call: &Call, prev: Option<&Value>, e: Error) -> Error {
        match self
            .del_list(call, prev)
            .and_then(|()| self.remove_cache(&call.container_id))
        {
            Ok(()) => e,
            Err(d) => {
                if let Ok(mut p) = self.pending.lock() {
                    p.insert(call.container_id.clone());
                }
                with_note(e, &format!("and undoing it failed: {d}"))
            }
        }
    }

    /// DEL again the failed setups that could not be undone.
    fn retry_pending(&self) {
        let ids: Vec<String> = match self.pending.lock() {
            Ok(p) => p.iter().cloned().collect(),
            Err(_) => return,
        };
        for id in ids {
            let _g = self.pods.lock(&id);
            match self.del_cached(&id, None) {
                Ok(()) => {
                    tracing::info!(pod = %id, "undid a failed CNI setup");
                    if let Ok(mut p) = self.pending.lock() {
                        p.remove(&id);
                    }
                }
                Err(e) => {
                    tracing::warn!(pod = %id, error = %e, "undoing a failed CNI setup, again")
                }
            }
        }
    }

    /// CHECK of a pod's network with its cached config and result. Ok without
    /// running anything for lists before 0.4.0 or with `disableCheck`.
    pub fn check(&self, pod_id: &str) -> Result<()> {
        if !valid_id(pod_id) {
            return Err(Error::InvalidArgument(format!(
                "{pod_id:?} is not a CNI container id"
            )));
        }
        let _g = self.pods.lock(pod_id);
        let (call, prev) = match self.read_cache(pod_id) {
            Ok(Some(x)) => x,
            Ok(None) => {
                return Err(Error::Failed(format!(
                    "pod {pod_id} has no CNI cache record"
                )));
            }
            Err(e) => return Err(Error::Failed(e)),
        };
        if !call.list.checks() {
            return Ok(());
        }
        let prev = prev
            .ok_or_else(|| Error::Failed(format!("pod {pod_id}: its CNI ADD never completed")))?;
        self.check_list(&call, &prev)
    }

    #[cfg(test)]
    fn reads(&self) -> u64 {
        self.lock_conf().reads
    }
}

impl Plugin for CniPlugin {
    fn name(&self) -> &'static str {
        "cni"
    }

    fn readiness(&self) -> Readiness {
        let not_ready = |message: String| Readiness::NotReady {
            reason: NOT_READY.into(),
            message,
        };
        match self.current() {
            Err(e) => not_ready(e),
            Ok(l) => match self.missing_plugin(&l.list) {
                Some(m) => not_ready(m),
                None => Readiness::Ready,
            },
        }
    }

    fn setup(&self, pod: &PodRequest) -> Result<Attachment> {
        if !valid_id(&pod.id) {
            return Err(Error::InvalidArgument(format!(
                "pod id {:?} is not a CNI container id",
                pod.id
            )));
        }
        let netns = pod
            .netns
            .to_str()
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "netns path {} is not an absolute UTF-8 path",
                    pod.netns.display()
                ))
            })?;
        let cni_args = cni_args(pod)?;
        let caps = capability_args(pod)?;
        let loaded = self.current().map_err(Error::NotReady)?;
        if let Some(m) = self.missing_plugin(&loaded.list) {
            return Err(Error::NotReady(m));
        }
        self.retry_pending();
        let _g = self.pods.lock(&pod.id);
        // An ADD that never got its DEL (berthd died during setup): the spec
        // forbids a second ADD before it.
        self.del_cached(&pod.id, Some(pod))
            .map_err(|e| with_note(e, "(DEL of an earlier ADD of this pod, before a new ADD)"))?;
        let call = Call {
            list: loaded.list.clone(),
            conf_file: loaded.file.clone(),
            container_id: pod.id.clone(),
            netns: netns.to_owned(),
            ifname: IFNAME.to_owned(),
            cni_args,
            caps,
        };
        self.write_cache(&call, None)?;
        let result = match self.add_list(&call) {
            Ok(r) => r,
            Err(e) => return Err(self.undo(&call, None, e)),
        };
        let ips = result_ips(&result, IFNAME);
        if ips.is_empty() {
            let e = Error::Failed(format!(
                "CNI network {:?} gave pod {} no IP address on {IFNAME}",
                call.list.name, pod.id
            ));
            return Err(self.undo(&call, Some(&result), e));
        }
        if let Err(e) = self.write_cache(&call, Some(&result)) {
            return Err(self.undo(&call, Some(&result), e));
        }
        Ok(Attachment {
            plugin: "cni".into(),
            ips,
            host_veth: None,
            port_mappings: pod.port_mappings.clone(),
            pod: format!("{}/{}", pod.namespace, pod.name),
        })
    }

    fn teardown(&self, pod: &PodRequest, _att: &Attachment) -> Result<()> {
        if !valid_id(&pod.id) {
            // Nothing can have been set up, nor cached, under it.
            return Ok(());
        }
        let _g = self.pods.lock(&pod.id);
        self.del_cached(&pod.id, Some(pod))
    }

    fn recover(&self, live: &[(String, Attachment)]) -> Result<()> {
        let live: HashSet<&str> = live.iter().map(|(id, _)| id.as_str()).collect();
        let rd = fs::read_dir(&self.cache_dir)
            .map_err(|e| Error::failed(format!("read {}", self.cache_dir.display()), e))?;
        let mut ids = Vec::new();
        for entry in rd.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = name.strip_suffix(".json")
                && valid_id(id)
            {
                ids.push(id.to_owned());
            } else if let Some(id) = name
                .strip_prefix('.')
                .and_then(|n| n.strip_suffix(".json.tmp"))
                && valid_id(id)
            {
                // A write cut short; the record itself is whole or absent.
                let _ = fs::remove_file(entry.path());
            }
        }
        ids.sort();
        for id in ids {
            if live.contains(id.as_str()) {
                if let Err(e) = self.check(&id) {
                    warn!(pod = %id, "CNI CHECK failed: {e}");
                }
                continue;
            }
            let _g = self.pods.lock(&id);
            match self.del_cached(&id, None) {
                Ok(()) => info!(pod = %id, "CNI network of a pod that is gone removed"),
                Err(e) => warn!(pod = %id, "CNI DEL of a pod that is gone failed: {e}"),
            }
        }
        Ok(())
    }

    fn info(&self) -> serde_json::Value {
        let mut st = self.lock_conf();
        self.refresh(&mut st);
        let mut m = Map::new();
        m.insert("plugin".into(), "cni".into());
        m.insert("confDir".into(), self.conf_dir.display().to_string().into());
        m.insert("binDirs".into(), self.bin_dirs_display().into());
        let shown = match &st.current {
            Some(Ok(l)) => Some(l.clone()),
            Some(Err(e)) => {
                m.insert("error".into(), e.clone().into());
                st.last_good.clone()
            }
            None => None,
        };
        if let Some(l) = shown {
            m.insert("confFile".into(), l.file.display().to_string().into());
            m.insert("network".into(), l.list.name.clone().into());
            m.insert("cniVersion".into(), l.list.cni_version.clone().into());
            m.insert("plugins".into(), json!(l.list.types()));
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PortMapping, Protocol};
    use std::time::Instant;

    /// Fake plugins: `#!/bin/sh` scripts that record their stdin and env
    /// under `log/`, append "CMD type" to `log/calls`, source
    /// `hooks/<type>.<CMD>` if there is one, and print `results/<type>` (or a
    /// default result) on ADD.
    struct Fake {
        dir: tempfile::TempDir,
    }

    const DEFAULT_RESULT: &str = r#"{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/24"}]}"#;

    impl Fake {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            for d in ["bin", "net.d", "log", "hooks", "results", "root"] {
                fs::create_dir(dir.path().join(d)).expect("mkdir");
            }
            Fake { dir }
        }
        fn p(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }
        fn plugin(&self, ty: &str) {
            let d = self.dir.path().display();
            let script = format!(
                "#!/bin/sh\nd='{d}'\nt='{ty}'\n\
                 cat > \"$d/log/$CNI_COMMAND-$t.stdin\"\n\
                 env > \"$d/log/$CNI_COMMAND-$t.env\"\n\
                 echo \"$CNI_COMMAND $t\" >> \"$d/log/calls\"\n\
                 if [ -f \"$d/hooks/$t.$CNI_COMMAND\" ]; then . \"$d/hooks/$t.$CNI_COMMAND\"; fi\n\
                 if [ \"$CNI_COMMAND\" = ADD ]; then\n\
                 if [ -f \"$d/results/$t\" ]; then cat \"$d/results/$t\"; else printf '%s' '{DEFAULT_RESULT}'; fi\n\
                 fi\nexit 0\n"
            );
            let path = self.p(&format!("bin/{ty}"));
            fs::write(&path, script).expect("write plugin");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        fn hook(&self, ty: &str, cmd: &str, body: &str) {
            fs::write(self.p(&format!("hooks/{ty}.{cmd}")), body).expect("hook");
        }
        fn result(&self, ty: &str, v: &Value) {
            fs::write(self.p(&format!("results/{ty}")), v.to_string()).expect("result");
        }
        fn conf(&self, file: &str, v: &Value) {
            fs::write(self.p(&format!("net.d/{file}")), v.to_string()).expect("conf");
        }
        fn list(&self, file: &str, version: &str, plugins: Value) {
            self.conf(
                file,
                &json!({"cniVersion": version, "name": "testnet", "plugins": plugins}),
            );
        }
        fn cni_with(&self, timeout: Duration) -> CniPlugin {
            let cfg = NetworkConfig {
                plugin: crate::PluginKind::Cni,
                cni_conf_dir: self.p("net.d"),
                cni_bin_dirs: vec![self.p("nobin"), self.p("bin")],
                cni_timeout: timeout,
                ..Default::default()
            };
            CniPlugin::open(&cfg, &self.p("root")).expect("open")
        }
        fn cni(&self) -> CniPlugin {
            self.cni_with(Duration::from_secs(10))
        }
        fn calls(&self) -> Vec<String> {
            fs::read_to_string(self.p("log/calls"))
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect()
        }
        fn clear_calls(&self) {
            let _ = fs::remove_file(self.p("log/calls"));
        }
        fn stdin(&self, cmd: &str, ty: &str) -> Value {
            let data = fs::read(self.p(&format!("log/{cmd}-{ty}.stdin"))).expect("stdin log");
            serde_json::from_slice(&data).expect("stdin json")
        }
        fn env(&self, cmd: &str, ty: &str) -> BTreeMap<String, String> {
            fs::read_to_string(self.p(&format!("log/{cmd}-{ty}.env")))
                .expect("env log")
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        }
        fn cache_file(&self, id: &str) -> PathBuf {
            self.p(&format!("root/cni/results/{id}.json"))
        }
        fn pod(&self, n: u32) -> PodRequest {
            PodRequest {
                id: format!("{n:064x}"),
                name: format!("pod{n}"),
                namespace: "default".into(),
                uid: format!("uid-{n}"),
                netns: self.p(&format!("netns-{n}")),
                port_mappings: vec![],
                annotations: BTreeMap::new(),
                cgroup_parent: String::new(),
            }
        }
    }

    fn calls(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn not_ready_message(r: Readiness) -> String {
        match r {
            Readiness::NotReady { reason, message } => {
                assert_eq!(reason, "NetworkPluginNotReady");
                message
            }
            Readiness::Ready => panic!("ready, expected not ready"),
        }
    }

    /// Put a file's or directory's mtime an hour back, so it counts as settled.
    fn age(path: &Path, secs: u64) {
        let t = SystemTime::now() - Duration::from_secs(secs);
        fs::File::open(path)
            .expect("open")
            .set_modified(t)
            .expect("set mtime");
    }

    #[test]
    fn add_in_order_chains_prev_result_and_del_in_reverse() {
        let f = Fake::new();
        for t in ["a", "b", "c"] {
            f.plugin(t);
        }
        let ra = json!({"cniVersion":"1.0.0","ips":[{"address":"10.1.0.7/24"}],"x-extra":{"y":1}});
        let rc = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "veth1234", "mac": "aa:bb:cc:dd:ee:ff"},
                {"name": "eth0", "sandbox": "/x"},
                {"name": "lo", "sandbox": "/x"}
            ],
            "ips": [
                {"address": "fd00::7/64", "interface": 1},
                {"address": "10.1.0.7/24", "interface": 1, "gateway": "10.1.0.1"},
                {"address": "10.9.9.9/24", "interface": 0},
                {"address": "127.0.0.1/8", "interface": 2}
            ],
            "dns": {}
        });
        f.result("a", &ra);
        f.result("c", &rc);
        f.list(
            "10-net.conflist",
            "1.0.0",
            json!([
                {"type": "a", "prevResult": {"bogus": true}},
                {"type": "b"},
                {"type": "c", "some": "thing"}
            ]),
        );
        let cni = f.cni();
        assert_eq!(cni.readiness(), Readiness::Ready);
        let pod = f.pod(1);
        let att = cni.setup(&pod).expect("setup");
        assert_eq!(f.calls(), calls(&["ADD a", "ADD b", "ADD c"]));
        assert_eq!(att.plugin, "cni");
        assert_eq!(
            att.ips,
            vec![
                "10.1.0.7".parse::<IpAddr>().unwrap(),
                "fd00::7".parse().unwrap()
            ]
        );
        assert_eq!(att.host_veth, None);

        let a = f.stdin("ADD", "a");
        assert_eq!(a["name"], "testnet");
        assert_eq!(a["cniVersion"], "1.0.0");
        assert!(
            a.get("prevResult").is_none(),
            "first plugin gets no prevResult: {a}"
        );
        assert!(a.get("runtimeConfig").is_none());
        let b = f.stdin("ADD", "b");
        assert_eq!(b["prevResult"], ra);
        let c = f.stdin("ADD", "c");
        assert_eq!(
            c["prevResult"],
            json!(DEFAULT_RESULT.parse::<Value>().unwrap())
        );
        assert_eq!(c["some"], "thing");

        let env = f.env("ADD", "b");
        assert_eq!(env["CNI_COMMAND"], "ADD");
        assert_eq!(env["CNI_CONTAINERID"], pod.id);
        assert_eq!(env["CNI_NETNS"], pod.netns.display().to_string());
        assert_eq!(env["CNI_IFNAME"], "eth0");
        assert_eq!(
            env["CNI_ARGS"],
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod1;K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID=uid-1",
                pod.id
            )
        );
        assert_eq!(
            env["CNI_PATH"],
            format!("{}:{}", f.p("nobin").display(), f.p("bin").display())
        );
        assert!(env.contains_key("PATH"));
        for k in env.keys() {
            assert!(
                k.starts_with("CNI_")
                    || ["PATH", "PWD", "SHLVL", "_", "OLDPWD"].contains(&k.as_str()),
                "unexpected variable {k} in the plugin's environment"
            );
        }

        // The cache holds the final result.
        let rec: Value = serde_json::from_slice(&fs::read(f.cache_file(&pod.id)).unwrap()).unwrap();
        assert_eq!(rec["result"], rc);
        assert_eq!(rec["netns"], pod.netns.display().to_string());
        assert_eq!(rec["ifName"], "eth0");

        f.clear_calls();
        cni.teardown(&pod, &att).expect("teardown");
        assert_eq!(f.calls(), calls(&["DEL c", "DEL b", "DEL a"]));
        for t in ["a", "b", "c"] {
            let s = f.stdin("DEL", t);
            assert_eq!(s["prevResult"], rc, "DEL {t} gets the cached result");
            // Not a network namespace any more (here: never was): empty.
            assert_eq!(f.env("DEL", t)["CNI_NETNS"], "");
        }
        assert!(!f.cache_file(&pod.id).exists());

        // Idempotent: nothing cached, nothing run.
        f.clear_calls();
        cni.teardown(&pod, &att).expect("teardown again");
        assert!(f.calls().is_empty());
    }

    #[test]
    fn runtime_config_only_for_declared_capabilities() {
        let f = Fake::new();
        for t in ["a", "b", "c"] {
            f.plugin(t);
        }
        f.list(
            "10-net.conflist",
            "1.0.0",
            json!([
                {"type": "a", "capabilities": {"portMappings": true, "bandwidth": false}},
                {"type": "b", "capabilities": {"bandwidth": true, "cgroupPath": true, "dns": true}},
                {"type": "c", "capabilities": {"portMappings": true}, "runtimeConfig": {"keep": 1}}
            ]),
        );
        let cni = f.cni();
        let mut pod = f.pod(2);
        pod.port_mappings = vec![
            PortMapping {
                protocol: Protocol::Tcp,
                container_port: 80,
                host_port: 8080,
                host_ip: None,
            },
            PortMapping {
                protocol: Protocol::Udp,
                container_port: 53,
                host_port: 0,
                host_ip: None,
            },
            PortMapping {
                protocol: Protocol::Sctp,
                container_port: 9,
                host_port: 9999,
                host_ip: Some("127.0.0.1".parse().unwrap()),
            },
        ];
        pod.annotations
            .insert("kubernetes.io/ingress-bandwidth".into(), "10M".into());
        pod.annotations
            .insert("kubernetes.io/egress-bandwidth".into(), "1Mi".into());
        pod.cgroup_parent = "/kubepods/pod-x".into();
        let att = cni.setup(&pod).expect("setup");
        assert_eq!(att.port_mappings, pod.port_mappings);
        let ports = json!([
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""},
            {"hostPort": 9999, "containerPort": 9, "protocol": "sctp", "hostIP": "127.0.0.1"}
        ]);
        assert_eq!(
            f.stdin("ADD", "a")["runtimeConfig"],
            json!({"portMappings": ports})
        );
        assert_eq!(
            f.stdin("ADD", "b")["runtimeConfig"],
            json!({
                "bandwidth": {
                    "ingressRate": 10_000_000u64, "ingressBurst": 4294967295u64,
                    "egressRate": 1_048_576u64, "egressBurst": 4294967295u64
                },
                "cgroupPath": "/kubepods/pod-x"
            })
        );
        assert_eq!(
            f.stdin("ADD", "c")["runtimeConfig"],
            json!({"portMappings": ports})
        );
        // DEL gets the same runtimeConfig.
        cni.teardown(&pod, &att).expect("teardown");
        assert_eq!(
            f.stdin("DEL", "a")["runtimeConfig"],
            json!({"portMappings": ports})
        );

        // No data, no runtimeConfig (and the file's own one stays).
        let pod = f.pod(3);
        cni.setup(&pod).expect("setup");
        assert!(f.stdin("ADD", "a").get("runtimeConfig").is_none());
        assert!(f.stdin("ADD", "b").get("runtimeConfig").is_none());
        assert_eq!(f.stdin("ADD", "c")["runtimeConfig"], json!({"keep": 1}));
    }

    #[test]
    fn error_result_fails_setup_and_dels_the_list() {
        let f = Fake::new();
        for t in ["a", "b", "c"] {
            f.plugin(t);
        }
        f.hook(
            "b",
            "ADD",
            "printf '%s' '{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"no good\",\"details\":\"bad subnet\"}'\nexit 1\n",
        );
        f.list(
            "10-net.conflist",
            "1.0.0",
            json!([{"type": "a"}, {"type": "b"}, {"type": "c"}]),
        );
        let cni = f.cni();
        let pod = f.pod(4);
        let e = cni.setup(&pod).expect_err("setup must fail").to_string();
        assert!(e.contains("\"b\""), "{e}");
        assert!(e.contains("code 7"), "{e}");
        assert!(e.contains("no good"), "{e}");
        assert!(e.contains("bad subnet"), "{e}");
        assert_eq!(
            f.calls(),
            calls(&["ADD a", "ADD b", "DEL c", "DEL b", "DEL a"])
        );
        assert!(f.stdin("DEL", "a").get("prevResult").is_none());
        assert!(!f.cache_file(&pod.id).exists(), "DEL done: no cache left");
    }

    #[test]
    fn failing_plugin_without_error_json_reports_stderr() {
        let f = Fake::new();
        f.plugin("a");
        f.hook("a", "ADD", "echo 'it broke' >&2\nexit 3\n");
        f.list("10-net.conflist", "0.4.0", json!([{"type": "a"}]));
        let cni = f.cni();
        let e = cni.setup(&f.pod(5)).expect_err("fails").to_string();
        assert!(
            e.contains("it broke") && e.contains("exit status: 3"),
            "{e}"
        );
    }

    #[test]
    fn failing_del_on_undo_keeps_cache_for_later() {
        let f = Fake::new();
        f.plugin("a");
        f.plugin("b");
        f.hook("b", "ADD", "exit 1\n");
        f.hook("a", "DEL", "echo 'del broke' >&2; exit 1\n");
        f.list(
            "10-net.conflist",
            "1.0.0",
            json!([{"type": "a"}, {"type": "b"}]),
        );
        let cni = f.cni();
        let pod = f.pod(6);
        let e = cni.setup(&pod).expect_err("fails").to_string();
        assert!(
            e.contains("undoing it failed") && e.contains("del broke"),
            "{e}"
        );
        assert!(f.cache_file(&pod.id).exists());
        // Teardown fails the same way, then works once DEL does.
        let att = Attachment::default();
        assert!(matches!(cni.teardown(&pod, &att), Err(Error::Failed(_))));
        assert!(f.cache_file(&pod.id).exists());
        fs::remove_file(f.p("hooks/a.DEL")).unwrap();
        f.clear_calls();
        cni.teardown(&pod, &att).expect("teardown");
        assert_eq!(f.calls(), calls(&["DEL b", "DEL a"]));
        assert!(!f.cache_file(&pod.id).exists());
    }

    fn gone_or_zombie(pid: &str) -> bool {
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(s) => s
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    #[test]
    fn hanging_plugin_is_killed_with_its_group() {
        let f = Fake::new();
        f.plugin("a");
        let d = f.p("").display().to_string();
        f.hook(
            "a",
            "ADD",
            &format!("echo $$ > '{d}/pid'\nsleep 60 &\necho $! > '{d}/bg'\nsleep 60\n"),
        );
        f.list("10-net.conflist", "1.0.0", json!([{"type": "a"}]));
        let cni = f.cni_with(Duration::from_secs(1));
        let pod = f.pod(7);
        let t0 = Instant::now();
        let e = cni.setup(&pod).expect_err("times out").to_string();
        let took = t0.elapsed();
        assert!(e.contains("timed out after 1s"), "{e}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
        // DEL of the list ran after it.
        assert_eq!(f.calls(), calls(&["ADD a", "DEL a"]));
        let pids = [
            fs::read_to_string(f.p("pid")).unwrap(),
            fs::read_to_string(f.p("bg")).unwrap(),
        ];
        let t0 = Instant::now();
        while !pids.iter().all(|p| gone_or_zombie(p.trim())) {
            assert!(
                t0.elapsed() < Duration::from_secs(3),
                "plugin processes survive"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn output_is_capped() {
        let f = Fake::new();
        f.plugin("a");
        f.hook(
            "a",
            "ADD",
            "head -c 3000000 /dev/zero | tr '\\0' ' '\nexit 0\n",
        );
        f.list("10-net.conflist", "1.0.0", json!([{"type": "a"}]));
        let e = f.cni().setup(&f.pod(8)).expect_err("too big").to_string();
        assert!(e.contains("more than 1 MiB"), "{e}");
    }

    #[test]
    fn cache_is_written_before_add_and_del_uses_it_after_the_dir_changed() {
        let f = Fake::new();
        for t in ["a", "b", "x"] {
            f.plugin(t);
        }
        let pod = f.pod(9);
        let cache = f.cache_file(&pod.id);
        let d = f.p("").display().to_string();
        f.hook(
            "a",
            "ADD",
            &format!("cp '{}' '{d}/cache-at-add'\n", cache.display()),
        );
        f.list(
            "10-net.conflist",
            "1.0.0",
            json!([{"type": "a", "k": 1}, {"type": "b"}]),
        );
        let cni = f.cni();
        let att = cni.setup(&pod).expect("setup");
        let early: Value = serde_json::from_slice(&fs::read(f.p("cache-at-add")).unwrap()).unwrap();
        assert_eq!(early["result"], Value::Null);
        assert_eq!(early["containerId"], pod.id);
        assert_eq!(early["config"]["plugins"][0]["k"], 1);
        assert_eq!(early["cniArgs"][1], json!(["K8S_POD_NAMESPACE", "default"]));
        let mode = fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(f.p("root/cni/results"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);

        // Another network now: DEL still runs the one of ADD.
        fs::remove_file(f.p("net.d/10-net.conflist")).unwrap();
        f.list("20-other.conflist", "1.0.0", json!([{"type": "x"}]));
        assert_eq!(cni.info()["plugins"], json!(["x"]));
        f.clear_calls();
        cni.teardown(&pod, &att).expect("teardown");
        assert_eq!(f.calls(), calls(&["DEL b", "DEL a"]));
        assert_eq!(f.stdin("DEL", "a")["k"], 1);
    }

    #[test]
    fn a_second_add_dels_the_first() {
        let f = Fake::new();
        f.plugin("a");
        f.list("10-net.conflist", "1.0.0", json!([{"type": "a"}]));
        let cni = f.cni();
        let pod = f.pod(10);
        cni.setup(&pod).expect("setup");
        f.clear_calls();
        cni.setup(&pod).expect("setup again");
        assert_eq!(f.calls(), calls(&["DEL a", "ADD a"]));
    }

    #[test]
    fn recover_dels_orphans_and_checks_live_pods() {
        let f = Fake::new();
        f.plugin("a");
        f.plugin("b");
        f.list(
            "10-net.conflist",
            "1.0.0",
            json!([{"type": "a"}, {"type": "b"}]),
        );
        let cni = f.cni();
        let live = f.pod(11);
        let orphan = f.pod(12);
        let att = cni.setup(&live).expect("setup");
        cni.setup(&orphan).expect("setup");
        let junk = f.p("root/cni/results/not a pod.json");
        fs::write(&junk, "{}").unwrap();
        fs::write(f.p("root/cni/results/README"), "x").unwrap();
        let stale_tmp = f.p(&format!("root/cni/results/.{}.json.tmp", live.id));
        fs::write(&stale_tmp, "{").unwrap();
        // A link out of the cache dir is not followed.
        let outside = f.p("outside.json");
        fs::write(&outside, "{}").unwrap();
        let link_id = format!("{:064x}", 13);
        std::os::unix::fs::symlink(&outside, f.p(&format!("root/cni/results/{link_id}.json")))
            .unwrap();

        f.clear_calls();
        cni.recover(&[(live.id.clone(), att)]).expect("recover");
        let mut c = f.calls();
        c.sort();
        assert_eq!(c, calls(&["CHECK a", "CHECK b", "DEL a", "DEL b"]));
        assert!(f.cache_file(&live.id).exists());
        assert!(!f.cache_file(&orphan.id).exists());
        assert_eq!(f.env("DEL", "a")["CNI_CONTAINERID"], orphan.id);
        assert_eq!(
            f.stdin("CHECK", "a")["prevResult"],
            DEFAULT_RESULT.parse::<Value>().unwrap()
        );
        assert!(junk.exists());
        assert!(!stale_tmp.exists());
        assert!(outside.exists());

        // A failing CHECK is logged, not returned.
        f.hook("a", "CHECK", "exit 1\n");
        cni.recover(&[(live.id.clone(), Attachment::default())])
            .expect("recover");
        assert!(cni.check(&live.id).is_err());
    }

    #[test]
    fn check_is_skipped_before_0_4_0_and_with_disable_check() {
        let f = Fake::new();
        f.plugin("a");
        f.hook("a", "CHECK", "exit 1\n");
        f.list("10-net.conflist", "0.3.1", json!([{"type": "a"}]));
        let cni = f.cni();
        let pod = f.pod(14);
        let att = cni.setup(&pod).expect("setup");
        cni.check(&pod.id).expect("no CHECK for 0.3.1");
        f.clear_calls();
        cni.teardown(&pod, &att).expect("teardown");
        assert!(
            f.stdin("DEL", "a").get("prevResult").is_none(),
            "no prevResult on DEL before 0.4.0"
        );

        f.conf(
            "10-net.conflist",
            &json!({"cniVersion": "1.0.0", "name": "n", "disableCheck": true, "plugins": [{"type": "a"}]}),
        );
        cni.setup(&pod).expect("setup");
        cni.check(&pod.id).expect("CHECK disabled");
        assert!(!f.calls().iter().any(|c| c.starts_with("CHECK")));
        f.conf(
            "10-net.conflist",
            &json!({"cniVersion": "1.0.0", "name": "nn", "plugins": [{"type": "a"}]}),
        );
        let pod = f.pod(15);
        cni.setup(&pod).expect("setup");
        assert!(cni.check(&pod.id).is_err());
        assert!(cni.check("../x").is_err());
        assert!(cni.check(&"a".repeat(201)).is_err());
        assert!(valid_id(&"a".repeat(200)) && !valid_id("-a") && !valid_id("a/b"));
    }

    #[test]
    fn readiness_tells_what_is_wrong() {
        let f = Fake::new();
        let cfg = NetworkConfig {
            plugin: crate::PluginKind::Cni,
            cni_conf_dir: f.p("missing"),
            cni_bin_dirs: vec![f.p("bin")],
            ..Default::default()
        };
        let cni = CniPlugin::open(&cfg, &f.p("root")).expect("open without a conf dir");
        let m = not_ready_message(cni.readiness());
        assert!(
            m.starts_with(&format!(
                "no network config found in {}",
                f.p("missing").display()
            )),
            "{m}"
        );
        assert!(matches!(cni.setup(&f.pod(1)), Err(Error::NotReady(_))));

        let cni = f.cni();
        let m = not_ready_message(cni.readiness());
        assert_eq!(
            m,
            format!("no network config found in {}", f.p("net.d").display())
        );

        f.plugin("a");
        f.list(
            "10-net.conflist",
            "1.0.0",
            json!([{"type": "a"}, {"type": "bridge"}]),
        );
        let m = not_ready_message(cni.readiness());
        assert_eq!(
            m,
            format!(
                "plugin \"bridge\" not found in {}:{}",
                f.p("nobin").display(),
                f.p("bin").display()
            )
        );
        let e = cni.setup(&f.pod(1)).expect_err("not ready");
        assert!(matches!(e, Error::NotReady(_)), "{e}");
        assert!(!f.cache_file(&f.pod(1).id).exists());
        assert!(f.calls().is_empty());

        f.list("10-net.conflist", "1.0.0", json!([{"type": "a"}]));
        assert_eq!(cni.readiness(), Readiness::Ready);

        // A broken file: NotReady naming it; info keeps the last good one.
        fs::write(f.p("net.d/10-net.conflist"), "{\"cniVersion\": ").unwrap();
        let m = not_ready_message(cni.readiness());
        assert!(
            m.contains("10-net.conflist") && m.contains("invalid JSON"),
            "{m}"
        );
        let info = cni.info();
        assert_eq!(info["plugins"], json!(["a"]));
        assert!(info["error"].as_str().unwrap().contains("invalid JSON"));
        assert!(matches!(cni.setup(&f.pod(1)), Err(Error::NotReady(_))));

        let bad = [
            (
                json!({"name": "n", "plugins": [{"type": "a"}]}),
                "no \"cniVersion\"",
            ),
            (
                json!({"cniVersion": "9.9.9", "name": "n", "plugins": [{"type": "a"}]}),
                "not supported",
            ),
            (
                json!({"cniVersion": "1.0.0", "plugins": [{"type": "a"}]}),
                "no network \"name\"",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "plugins": []}),
                "empty",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n"}),
                "no \"plugins\"",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{}]}),
                "has no \"type\"",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../a"}]}),
                "not a plain file name",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": ".."}]}),
                "not a plain file name",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "/bin/sh"}]}),
                "not a plain file name",
            ),
            (json!([1]), "not a JSON object"),
        ];
        for (v, want) in bad {
            f.conf("10-net.conflist", &v);
            let m = not_ready_message(cni.readiness());
            assert!(
                m.contains(want) && m.contains("10-net.conflist"),
                "{v}: {m}"
            );
        }
    }

    #[test]
    fn first_file_in_lexical_order_wins_and_single_confs_are_wrapped() {
        let f = Fake::new();
        f.plugin("a");
        f.plugin("b");
        f.plugin("c");
        let cni = f.cni();
        f.list("20-b.conflist", "1.0.0", json!([{"type": "b"}]));
        f.conf("00-ignored.txt", &json!({}));
        fs::create_dir(f.p("net.d/01-dir.conf")).unwrap();
        assert_eq!(cni.info()["plugins"], json!(["b"]));
        f.conf(
            "10-a.conf",
            &json!({"cniVersion": "0.4.0", "name": "single", "type": "a", "bridge": "x"}),
        );
        let info = cni.info();
        assert_eq!(info["plugins"], json!(["a"]));
        assert_eq!(info["network"], "single");
        assert_eq!(info["cniVersion"], "0.4.0");
        assert!(
            info["confFile"]
                .as_str()
                .unwrap()
                .ends_with("/net.d/10-a.conf")
        );
        let pod = f.pod(1);
        cni.setup(&pod).expect("setup");
        let s = f.stdin("ADD", "a");
        assert_eq!(s["name"], "single");
        assert_eq!(s["bridge"], "x");
        f.conf(
            "05-c.json",
            &json!({"cniVersion": "1.1.0", "name": "j", "type": "c"}),
        );
        assert_eq!(cni.info()["plugins"], json!(["c"]));
        // A 1.1 list with cniVersions: the highest one berth knows.
        f.conf(
            "04-v.conflist",
            &json!({"cniVersions": ["0.4.0", "1.1.0", "9.0.0"], "cniVersion": "0.4.0", "name": "v", "plugins": [{"type": "a"}]}),
        );
        assert_eq!(cni.info()["cniVersion"], "1.1.0");
    }

    #[test]
    fn reread_only_when_the_dir_or_file_changes() {
        let f = Fake::new();
        f.plugin("a");
        f.plugin("b");
        f.list("10-net.conflist", "1.0.0", json!([{"type": "a"}]));
        let file = f.p("net.d/10-net.conflist");
        let dir = f.p("net.d");
        age(&file, 3600);
        age(&dir, 3600);
        let cni = f.cni();
        assert_eq!(cni.readiness(), Readiness::Ready);
        let n = cni.reads();
        for _ in 0..3 {
            assert_eq!(cni.readiness(), Readiness::Ready);
        }
        assert_eq!(cni.reads(), n, "unchanged: not read again");

        // Rewritten in place (dir mtime unchanged): its size and mtime tell.
        f.list(
            "10-net.conflist",
            "1.0.0",
            json!([{"type": "a"}, {"type": "b"}]),
        );
        age(&file, 3000);
        age(&dir, 3600);
        assert_eq!(cni.info()["plugins"], json!(["a", "b"]));
        assert_eq!(cni.reads(), n + 1);
        cni.readiness();
        assert_eq!(cni.reads(), n + 1);

        // A new file sorting first: the directory's mtime tells.
        f.list("05-new.conflist", "1.0.0", json!([{"type": "b"}]));
        age(&f.p("net.d/05-new.conflist"), 3000);
        age(&dir, 2000);
        assert_eq!(cni.info()["plugins"], json!(["b"]));
        assert_eq!(cni.reads(), n + 2);

        // Changed moments ago: not trusted, read on every call until settled.
        f.list("05-new.conflist", "1.0.0", json!([{"type": "a"}]));
        cni.readiness();
        cni.readiness();
        assert_eq!(cni.reads(), n + 4);
        assert_eq!(cni.info()["plugins"], json!(["a"]));
    }

    #[test]
    fn concurrent_setups_of_different_pods() {
        let f = Fake::new();
        f.plugin("a");
        f.plugin("b");
        f.list(
            "10-net.conflist",
            "1.0.0",
            json!([{"type": "a"}, {"type": "b"}]),
        );
        let cni = Arc::new(f.cni());
        let pods: Vec<PodRequest> = (20..28).map(|n| f.pod(n)).collect();
        thread::scope(|s| {
            for pod in &pods {
                let cni = cni.clone();
                s.spawn(move || {
                    let att = cni.setup(pod).expect("setup");
                    cni.teardown(pod, &att).expect("teardown");
                });
            }
        });
        assert_eq!(f.calls().len(), 8 * 4);
        assert_eq!(fs::read_dir(f.p("root/cni/results")).unwrap().count(), 0);
    }

    #[test]
    fn setup_rejects_bad_requests() {
        let f = Fake::new();
        f.plugin("a");
        f.list("10-net.conflist", "1.0.0", json!([{"type": "a"}]));
        let cni = f.cni();
        let mut pod = f.pod(1);
        pod.id = "../../etc".into();
        assert!(matches!(cni.setup(&pod), Err(Error::InvalidArgument(_))));
        let mut pod = f.pod(1);
        pod.name = "a;b=c".into();
        assert!(matches!(cni.setup(&pod), Err(Error::InvalidArgument(_))));
        let mut pod = f.pod(1);
        pod.annotations.insert(
            "kubernetes.io/ingress-bandwidth".into(),
            "10 bananas".into(),
        );
        assert!(matches!(cni.setup(&pod), Err(Error::InvalidArgument(_))));
        pod.annotations
            .insert("kubernetes.io/ingress-bandwidth".into(), "10".into());
        assert!(matches!(cni.setup(&pod), Err(Error::InvalidArgument(_))));
        assert!(f.calls().is_empty());
        // No IP in the result: an error, and DEL.
        f.result("a", &json!({"cniVersion": "1.0.0", "ips": []}));
        let e = cni.setup(&f.pod(1)).expect_err("no ip").to_string();
        assert!(e.contains("no IP address"), "{e}");
        assert_eq!(f.calls(), calls(&["ADD a", "DEL a"]));
        // Not JSON.
        fs::write(f.p("results/a"), "hello").unwrap();
        let e = cni.setup(&f.pod(1)).expect_err("not json").to_string();
        assert!(e.contains("not JSON"), "{e}");
    }

    #[test]
    fn quantities() {
        let q = |s: &str| parse_quantity(s);
        assert_eq!(q("10M"), Ok(10_000_000));
        assert_eq!(q("1Mi"), Ok(1 << 20));
        assert_eq!(q("1.5k"), Ok(1500));
        assert_eq!(q("100"), Ok(100));
        assert_eq!(q("1e6"), Ok(1_000_000));
        assert_eq!(q("2E3"), Ok(2000));
        assert_eq!(q("1E"), Ok(1_000_000_000_000_000_000));
        assert_eq!(q("0.5Ki"), Ok(512));
        assert_eq!(q("1500m"), Ok(2));
        assert_eq!(q(".5"), Ok(1));
        assert_eq!(q("1n"), Ok(1));
        assert!(q("").is_err());
        assert!(q("M").is_err());
        assert!(q("-1M").is_err());
        assert!(q("1..2").is_err());
        assert!(q("1Q").is_err());
        assert!(q("1 M").is_err());
        assert!(q("99999999999999999999999999999999999E").is_err());
    }

    #[test]
    fn ips_of_results() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // 0.3/0.4/1.0 without interfaces (IPAM-style).
        let r = json!({"ips": [{"version": "6", "address": "fd00::2/64"}, {"version": "4", "address": "10.0.0.2/24"}, {"address": "10.0.0.2/24"}]});
        assert_eq!(result_ips(&r, "eth0"), vec![ip("10.0.0.2"), ip("fd00::2")]);
        // 0.2.0.
        let r = json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.3/24"}, "ip6": {"ip": "fd00::3/64"}});
        assert_eq!(result_ips(&r, "eth0"), vec![ip("10.0.0.3"), ip("fd00::3")]);
        // Junk is skipped, not fatal.
        let r = json!({"ips": [{"address": 5}, {"address": "nope"}, {}, "x"], "interfaces": "y"});
        assert!(result_ips(&r, "eth0").is_empty());
        // An interface index out of range counts as none.
        let r = json!({"ips": [{"address": "10.0.0.4/24", "interface": 9}], "interfaces": []});
        assert_eq!(result_ips(&r, "eth0"), vec![ip("10.0.0.4")]);
    }
}
