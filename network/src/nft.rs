//! berth's nftables table (family inet): outbound masquerade and hostPort
//! DNAT.
//!
//! The rules are fixed at start; a pod's hostPorts are elements of four
//! maps (any host address or one, IPv4 or IPv6), so that publishing or
//! withdrawing a port touches no rule. Every change is one batch given to
//! `nft -f -`, which the kernel applies atomically: the whole table at start
//! (deleted and rebuilt from the pods berthd knows, so that rules of pods a
//! crash forgot are gone), and a pod's elements when its network comes and
//! goes. Pods without hostPorts never run nft.
//!
//! Why nft's language and not netlink from Rust: the rules use maps with
//! concatenated keys and NAT to concatenated address . port data, which the
//! Rust nftables crates (rustables, nftnl) do not express without
//! hand-assembling expression registers; nft's batch is as atomic as a
//! netlink batch, and the table it makes reads back with `nft list table
//! inet berth`.
//!
//! How the batch reaches the kernel: in process, through libnftables (the
//! library `nft` itself is a front end of, in every distribution's nftables
//! package: `nft_run_cmd_from_buffer` takes the same text), loaded with
//! dlopen when berthd first needs it, so that a pod's hostPorts cost no
//! process spawn (about 5 ms of fork, exec and nft's start on a small node
//! against 0.2 ms). Where the library cannot be loaded, the `nft` binary
//! runs the batch as before. The library is loaded at run time, not
//! linked: berth builds without its headers and runs on nodes without it.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::{Error, PortMapping, Result};

/// One published port of one pod: the element it makes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Published {
    pub port: PortMapping,
    /// The pod's address the port leads to (same family as the map).
    pub pod_ip: IpAddr,
}

impl Published {
    fn map(&self) -> &'static str {
        match (self.pod_ip.is_ipv4(), self.port.host_ip.is_some()) {
            (true, false) => "hostports4",
            (true, true) => "hostip_ports4",
            (false, false) => "hostports6",
            (false, true) => "hostip_ports6",
        }
    }

    fn key(&self) -> String {
        let p = &self.port;
        match p.host_ip {
            Some(h) => format!("{h} . {} . {}", p.protocol.as_str(), p.host_port),
            None => format!("{} . {}", p.protocol.as_str(), p.host_port),
        }
    }

    fn element(&self) -> String {
        format!(
            "{} : {} . {}",
            self.key(),
            self.pod_ip,
            self.port.container_port
        )
    }
}

#[derive(Clone, Debug)]
pub struct Table {
    pub name: String,
    pub bridge: String,
    pub subnet4: Option<Ipv4Network>,
    pub subnet6: Option<Ipv6Network>,
}

impl Table {
    /// The whole table, replacing what is there, with `ports` published.
    pub fn full_script(&self, ports: &[Published]) -> String {
        let t = &self.name;
        let br = &self.bridge;
        let mut s = format!("table inet {t} {{}}\ndelete table inet {t}\ntable inet {t} {{\n");
        for (map, key, data) in [
            ("hostports4", "inet_proto . inet_service", "ipv4_addr"),
            (
                "hostip_ports4",
                "ipv4_addr . inet_proto . inet_service",
                "ipv4_addr",
            ),
            ("hostports6", "inet_proto . inet_service", "ipv6_addr"),
            (
                "hostip_ports6",
                "ipv6_addr . inet_proto . inet_service",
                "ipv6_addr",
            ),
        ] {
            s += &format!("  map {map} {{\n    type {key} : {data} . inet_service\n");
            let elems: Vec<String> = ports
                .iter()
                .filter(|p| p.map() == map)
                .map(Published::element)
                .collect();
            if !elems.is_empty() {
                s += &format!("    elements = {{ {} }}\n", elems.join(", "));
            }
            s += "  }\n";
        }
        s += "  chain hostports {\n";
        s += "    dnat ip to ip daddr . meta l4proto . th dport map @hostip_ports4\n";
        s += "    dnat ip to meta l4proto . th dport map @hostports4\n";
        s += "    dnat ip6 to ip6 daddr . meta l4proto . th dport map @hostip_ports6\n";
        s += "    dnat ip6 to meta l4proto . th dport map @hostports6\n";
        s += "  }\n";
        // Connections to an address of the node, from outside (prerouting)
        // and from the node itself, 127.0.0.1 included (output).
        s += "  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    fib daddr type local jump hostports\n  }\n";
        s += "  chain output {\n    type nat hook output priority -100; policy accept;\n    fib daddr type local jump hostports\n  }\n";
        s += "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n";
        if let Some(n) = self.subnet4 {
            // Pods reaching anything outside their subnet.
            s += &format!("    ip saddr {n} ip daddr != {n} masquerade\n");
            // A pod reaching a hostPort that leads back into the bridge
            // (its own: hairpin, or another pod's): the reply must come
            // back through the node to be un-DNATed.
            s += &format!("    ct status dnat ip saddr {n} oifname \"{br}\" masquerade\n");
            // The node's own 127.0.0.1:hostPort (route_localnet is on for
            // the bridge).
            s += &format!("    ip saddr 127.0.0.0/8 oifname \"{br}\" masquerade\n");
        }
        if let Some(n) = self.subnet6 {
            s += &format!("    ip6 saddr {n} ip6 daddr != {n} masquerade\n");
            s += &format!("    ct status dnat ip6 saddr {n} oifname \"{br}\" masquerade\n");
        }
        s += "  }\n}\n";
        s
    }

    pub fn add_script(&self, ports: &[Published]) -> String {
        self.elements_script("add", ports, true)
    }

    pub fn delete_script(&self, ports: &[Published]) -> String {
        self.elements_script("delete", ports, false)
    }

    fn elements_script(&self, verb: &str, ports: &[Published], with_data: bool) -> String {
        let mut s = String::new();
        for p in ports {
            let what = if with_data { p.element() } else { p.key() };
            s += &format!(
                "{verb} element inet {} {} {{ {what} }}\n",
                self.name,
                p.map()
            );
        }
        s
    }

    pub fn delete_table_script(&self) -> String {
        format!("table inet {0} {{}}\ndelete table inet {0}\n", self.name)
    }
}

/// The nft binary: PATH, then the usual sbin dirs (berthd may run with a
/// PATH without them).
pub fn find_nft() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join("nft"))
        .find(|p| p.is_file())
}

/// libnftables' soname (its ABI has been 1 since nftables 0.8).
const LIBNFTABLES: &str = "libnftables.so.1";

type CtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type CtxBuffer = unsafe extern "C" fn(*mut c_void) -> c_int;
type CtxGetBuffer = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

/// An nft context of libnftables, loaded in process.
struct Library {
    ctx: *mut c_void,
    free: CtxFree,
    get_error: CtxGetBuffer,
    get_output: CtxGetBuffer,
    run: RunCmd,
    /// Keeps the library mapped while the pointers above are used.
    _lib: libloading::Library,
}

// SAFETY: the context is used only through `Nft`'s mutex, one call at a
// time, as libnftables asks of a context (it has no thread of its own).
unsafe impl Send for Library {}

impl Library {
    fn load() -> std::result::Result<Self, String> {
        // SAFETY: loading libnftables runs only its ELF constructors, which
        // set up its own tables; it is the library nft itself runs.
        let lib = unsafe { libloading::Library::new(LIBNFTABLES) }
            .map_err(|e| format!("loading {LIBNFTABLES}: {e}"))?;
        // SAFETY: each symbol is libnftables' public API, declared in
        // nftables/libnftables.h with exactly these C signatures.
        let (new, free, buffer_error, buffer_output, get_error, get_output, run) = unsafe {
            let sym = |name: &[u8]| format!("{LIBNFTABLES}: {}", String::from_utf8_lossy(name));
            (
                *lib.get::<CtxNew>(b"nft_ctx_new\0")
                    .map_err(|e| format!("{}: {e}", sym(b"nft_ctx_new")))?,
                *lib.get::<CtxFree>(b"nft_ctx_free\0")
                    .map_err(|e| format!("{}: {e}", sym(b"nft_ctx_free")))?,
                *lib.get::<CtxBuffer>(b"nft_ctx_buffer_error\0")
                    .map_err(|e| format!("{}: {e}", sym(b"nft_ctx_buffer_error")))?,
                *lib.get::<CtxBuffer>(b"nft_ctx_buffer_output\0")
                    .map_err(|e| format!("{}: {e}", sym(b"nft_ctx_buffer_output")))?,
                *lib.get::<CtxGetBuffer>(b"nft_ctx_get_error_buffer\0")
                    .map_err(|e| format!("{}: {e}", sym(b"nft_ctx_get_error_buffer")))?,
                *lib.get::<CtxGetBuffer>(b"nft_ctx_get_output_buffer\0")
                    .map_err(|e| format!("{}: {e}", sym(b"nft_ctx_get_output_buffer")))?,
                *lib.get::<RunCmd>(b"nft_run_cmd_from_buffer\0")
                    .map_err(|e| format!("{}: {e}", sym(b"nft_run_cmd_from_buffer")))?,
            )
        };
        // libnftables exits the process when it cannot open its netlink
        // socket (no nf_tables, or a sandbox that forbids the family): ask
        // the kernel first, and run the binary instead if it says no.
        use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
        drop(
            socket(
                AddressFamily::Netlink,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::NetlinkNetFilter,
            )
            .map_err(|e| format!("no netfilter netlink socket for {LIBNFTABLES}: {e}"))?,
        );
        // SAFETY: NFT_CTX_DEFAULT (0) is the only flag; a null result is
        // checked.
        let ctx = unsafe { new(0) };
        if ctx.is_null() {
            return Err("nft_ctx_new failed".into());
        }
        // nft_ctx_new opens its netlink socket without O_CLOEXEC (1.0.6),
        // and keeps it for the context's life.
        sockets_cloexec();
        // Errors (and any output) into buffers of the context, not stderr.
        // SAFETY: ctx is the live context made above.
        let buffered = unsafe { buffer_error(ctx) == 0 && buffer_output(ctx) == 0 };
        let l = Library {
            ctx,
            free,
            get_error,
            get_output,
            run,
            _lib: lib,
        };
        if !buffered {
            return Err("nft_ctx_buffer_error failed".into());
        }
        Ok(l)
    }

    fn run(&mut self, script: &CStr) -> std::result::Result<(), String> {
        // SAFETY: ctx is live (freed only in Drop) and used by one caller
        // at a time (the mutex); script is a NUL-terminated string that
        // outlives the call.
        let rc = unsafe { (self.run)(self.ctx, script.as_ptr()) };
        // SAFETY: the buffers belong to ctx; each get returns its content
        // and rewinds it, valid until the next call on ctx, and is copied
        // out here at once. Output is read only to keep it from growing.
        let (err, _) = unsafe {
            let text = |p: *const c_char| {
                if p.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(p).to_string_lossy().into_owned()
                }
            };
            (
                text((self.get_error)(self.ctx)),
                text((self.get_output)(self.ctx)),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(err.trim().to_string())
        }
    }
}

/// Close on exec every socket of this process: berthd's own are so
/// already (std opens everything O_CLOEXEC), libnftables' is not, and no
/// process berthd starts is to inherit it.
fn sockets_cloexec() {
    for fd in open_fds() {
        let is_socket = std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
        if is_socket {
            // SAFETY: fcntl(F_SETFD) changes only the close-on-exec flag of
            // an open descriptor.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// The descriptors this process has open.
fn open_fds() -> std::collections::BTreeSet<i32> {
    std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

impl Drop for Library {
    fn drop(&mut self) {
        // SAFETY: ctx was made by nft_ctx_new and is freed once, here.
        unsafe { (self.free)(self.ctx) }
    }
}

enum Backend {
    Library(Mutex<Library>),
    Binary(PathBuf),
}

/// Where berth's batches go: libnftables in process, else the nft binary.
pub struct Nft {
    backend: Backend,
}

impl Nft {
    /// libnftables if it loads (unless `binary_only`), else the `nft`
    /// binary; None if neither is there.
    pub fn find(binary_only: bool) -> Option<Nft> {
        if !binary_only {
            match Library::load() {
                Ok(l) => {
                    tracing::debug!("nftables: {LIBNFTABLES} in process");
                    return Some(Nft {
                        backend: Backend::Library(Mutex::new(l)),
                    });
                }
                Err(e) => tracing::info!("nftables: {e}; running the nft binary instead"),
            }
        }
        find_nft().map(|p| Nft {
            backend: Backend::Binary(p),
        })
    }

    /// What runs the batches, for Status and `berthd check`.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Library(_) => format!("{LIBNFTABLES} (in process)"),
            Backend::Binary(p) => p.display().to_string(),
        }
    }

    /// Run one batch as one transaction.
    pub fn apply(&self, script: &str) -> Result<()> {
        if script.is_empty() {
            return Ok(());
        }
        match &self.backend {
            Backend::Binary(p) => apply(p, script),
            Backend::Library(l) => {
                let script = CString::new(script)
                    .map_err(|_| Error::Failed("an nft batch with a NUL byte".into()))?;
                let mut l = l
                    .lock()
                    .map_err(|_| Error::Failed("the nftables context lock is poisoned".into()))?;
                l.run(&script)
                    .map_err(|e| Error::Failed(format!("nftables refused berth's rules: {e}")))
            }
        }
    }
}

/// Run one batch with the nft binary. nft applies a file as one
/// transaction.
pub fn apply(nft: &std::path::Path, script: &str) -> Result<()> {
    if script.is_empty() {
        return Ok(());
    }
    let mut child = Command::new(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::failed(format!("running {}", nft.display()), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| Error::failed("writing rules to nft", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::failed("waiting for nft", e))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Failed(format!(
            "nft refused berth's rules ({}): {}",
            out.status,
            err.trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Protocol;

    /// Both ways of applying a batch, in a network namespace of this test
    /// thread's own (gone when the thread ends): the table appears, a
    /// batch the kernel or parser refuses is an error that says why and
    /// changes nothing.
    #[test]
    fn batches_apply_through_the_library_and_the_binary_alike() {
        if !nix::unistd::geteuid().is_root() || find_nft().is_none() {
            eprintln!("skipped: needs root and nft");
            return;
        }
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let list = || {
                let out = Command::new(find_nft().unwrap())
                    .args(["list", "ruleset"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            for binary_only in [false, true] {
                let nft = Nft::find(binary_only).expect("libnftables or nft");
                assert_eq!(
                    matches!(nft.backend, Backend::Binary(_)),
                    binary_only,
                    "{}",
                    nft.describe()
                );
                let t = table();
                let published = vec![published(Protocol::Tcp, None, "10.89.0.7")];
                nft.apply(&t.full_script(&published)).unwrap();
                // Every socket of this process is closed on exec (std opens
                // its own so; libnftables' netlink socket is made so).
                for fd in open_fds() {
                    let is_socket = std::fs::read_link(format!("/proc/self/fd/{fd}"))
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
                    // SAFETY: F_GETFD only reads a descriptor's flags.
                    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
                    assert!(
                        !is_socket || flags < 0 || flags & libc::FD_CLOEXEC != 0,
                        "socket fd {fd} would be inherited by berthd's children ({})",
                        nft.describe()
                    );
                }
                let rules = list();
                assert!(rules.contains("table inet berth"), "{rules}");
                assert!(rules.contains("10.89.0.7 . 80"), "{rules}");
                nft.apply(&t.delete_script(&published)).unwrap();
                assert!(!list().contains("10.89.0.7"), "withdrawn");
                let e = nft
                    .apply("add element inet berth nosuchmap { 1 }\n")
                    .unwrap_err()
                    .to_string();
                assert!(e.contains("nosuchmap") || e.contains("No such file"), "{e}");
                assert!(
                    list().contains("table inet berth"),
                    "a refused batch changes nothing"
                );
                nft.apply(&t.delete_table_script()).unwrap();
                assert!(!list().contains("table inet berth"));
            }
        })
        .join()
        .unwrap();
    }

    fn table() -> Table {
        Table {
            name: "berth".into(),
            bridge: "berth0".into(),
            subnet4: Some("10.89.0.0/16".parse().unwrap()),
            subnet6: Some("fd89::/64".parse().unwrap()),
        }
    }

    fn published(proto: Protocol, host_ip: Option<&str>, pod_ip: &str) -> Published {
        Published {
            port: PortMapping {
                protocol: proto,
                container_port: 80,
                host_port: 8080,
                host_ip: host_ip.map(|h| h.parse().unwrap()),
            },
            pod_ip: pod_ip.parse().unwrap(),
        }
    }

    #[test]
    fn elements_go_to_the_map_of_their_family_and_host_address() {
        let t = table();
        let s = t.add_script(&[
            published(Protocol::Tcp, None, "10.89.0.2"),
            published(Protocol::Udp, Some("127.0.0.1"), "10.89.0.2"),
            published(Protocol::Sctp, None, "fd89::2"),
            published(Protocol::Tcp, Some("fd00::2"), "fd89::2"),
        ]);
        assert_eq!(
            s,
            "add element inet berth hostports4 { tcp . 8080 : 10.89.0.2 . 80 }\n\
             add element inet berth hostip_ports4 { 127.0.0.1 . udp . 8080 : 10.89.0.2 . 80 }\n\
             add element inet berth hostports6 { sctp . 8080 : fd89::2 . 80 }\n\
             add element inet berth hostip_ports6 { fd00::2 . tcp . 8080 : fd89::2 . 80 }\n"
        );
        let d = t.delete_script(&[published(Protocol::Tcp, None, "10.89.0.2")]);
        assert_eq!(d, "delete element inet berth hostports4 { tcp . 8080 }\n");
    }

    #[test]
    fn the_full_table_replaces_the_old_one_and_masquerades_both_families() {
        let s = table().full_script(&[published(Protocol::Tcp, None, "10.89.0.2")]);
        assert!(s.starts_with("table inet berth {}\ndelete table inet berth\n"));
        assert!(s.contains("elements = { tcp . 8080 : 10.89.0.2 . 80 }"));
        assert!(s.contains("ip saddr 10.89.0.0/16 ip daddr != 10.89.0.0/16 masquerade"));
        assert!(s.contains("ip6 saddr fd89::/64 ip6 daddr != fd89::/64 masquerade"));
        assert!(s.contains("ip saddr 127.0.0.0/8 oifname \"berth0\" masquerade"));
        let v4only = Table {
            subnet6: None,
            ..table()
        }
        .full_script(&[]);
        assert!(!v4only.contains("ip6 saddr"));
        assert!(!v4only.contains("elements"));
    }
}
