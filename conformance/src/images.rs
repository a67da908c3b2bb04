//! Test images built in Rust: tar layers written header by header (so that
//! hostile layers can say anything), compressed with gzip / zstd / nothing,
//! image configs, Docker schema2 and OCI manifests, manifest lists and OCI
//! indexes. Push them with [`crate::registry::Registry::push`].
//!
//! ```no_run
//! use berth_conformance::images::{self, Compression, Format, ImageBuilder, TarBuilder};
//! // busybox + one more layer with a marker file, OCI, gzip
//! let extra = TarBuilder::new().file("hello.txt", 0o644, b"hi").layer(Compression::Gzip, Format::Oci);
//! let image = ImageBuilder::busybox(Format::Oci).layer(extra).user("1000").build();
//! println!("id {} manifest {}", image.id(), image.digest());
//! ```

use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::util::sha2_hex;

/// Media types (Docker schema2 and OCI image spec).
pub mod media {
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
}

/// `sha256:<hex>` of `data`.
pub fn digest(data: &[u8]) -> String {
    format!("sha256:{}", sha2_hex(data))
}

/// Docker schema2 (manifest list) or OCI (index) media types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Docker,
    Oci,
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

/// Bytes with their digest and media type, as a registry stores them.
#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub data: Bytes,
}

impl Blob {
    pub fn new(media_type: &str, data: impl Into<Bytes>) -> Blob {
        let data = data.into();
        Blob {
            media_type: media_type.to_string(),
            digest: digest(&data),
            data,
        }
    }

    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }

    /// The hex part of the digest.
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }

    fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size()})
    }
}

/// A layer: the (compressed) blob and the digest of the uncompressed tar.
#[derive(Clone, Debug)]
pub struct Layer {
    pub blob: Blob,
    pub diff_id: String,
    pub compression: Compression,
    /// Size of the uncompressed tar.
    pub tar_size: u64,
}

impl Layer {
    /// Compress a tar stream into a layer with the media type of `format`.
    pub fn from_tar(tar: &[u8], compression: Compression, format: Format) -> Layer {
        let data: Vec<u8> = match compression {
            Compression::Gzip => gzip(tar),
            Compression::Zstd => zstd::encode_all(tar, 3).expect("zstd in memory"),
            Compression::None => tar.to_vec(),
        };
        let media_type = match (format, compression) {
            (Format::Docker, Compression::Gzip) => media::DOCKER_LAYER_GZIP,
            (Format::Docker, Compression::None) => media::DOCKER_LAYER_TAR,
            (Format::Oci, Compression::Gzip) => media::OCI_LAYER_GZIP,
            (Format::Oci, Compression::None) => media::OCI_LAYER_TAR,
            // Docker schema2 has no zstd type; containerd and CRI-O take the OCI one.
            (_, Compression::Zstd) => media::OCI_LAYER_ZSTD,
        };
        Layer {
            blob: Blob::new(media_type, data),
            diff_id: digest(tar),
            compression,
            tar_size: tar.len() as u64,
        }
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("gzip in memory");
    enc.finish().expect("gzip in memory")
}

// ---------------------------------------------------------------- tar writer

/// Tar entry types this writer knows (the `typeflag` byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryType {
    File,
    HardLink,
    Symlink,
    CharDevice,
    BlockDevice,
    Dir,
    Fifo,
    /// GNU long name ('L'): the data is the next entry's name.
    GnuLongName,
    /// GNU long link name ('K').
    GnuLongLink,
    /// PAX extended header ('x').
    Pax,
}

impl EntryType {
    fn flag(self) -> u8 {
        match self {
            EntryType::File => b'0',
            EntryType::HardLink => b'1',
            EntryType::Symlink => b'2',
            EntryType::CharDevice => b'3',
            EntryType::BlockDevice => b'4',
            EntryType::Dir => b'5',
            EntryType::Fifo => b'6',
            EntryType::GnuLongName => b'L',
            EntryType::GnuLongLink => b'K',
            EntryType::Pax => b'x',
        }
    }
}

/// One raw header, written as given: no path cleaning, no checks. The
/// building block of hostile layers.
#[derive(Clone, Debug)]
pub struct RawEntry {
    pub name: Vec<u8>,
    pub entry_type: EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub link_name: Vec<u8>,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub data: Vec<u8>,
    /// The size written in the header; `None` means `data.len()`.
    pub declared_size: Option<u64>,
}

impl RawEntry {
    pub fn new(name: impl AsRef<[u8]>, entry_type: EntryType) -> RawEntry {
        RawEntry {
            name: name.as_ref().to_vec(),
            entry_type,
            mode: if entry_type == EntryType::Dir {
                0o755
            } else {
                0o644
            },
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            link_name: Vec::new(),
            dev_major: 0,
            dev_minor: 0,
            data: Vec::new(),
            declared_size: None,
        }
    }
}

/// A tar stream written entry by entry (ustar headers, GNU long names when a
/// name does not fit). Paths are written exactly as given.
#[derive(Default, Clone)]
pub struct TarBuilder {
    buf: Vec<u8>,
}

const BLOCK: usize = 512;

fn octal(field: &mut [u8], value: u64) {
    // width-1 octal digits then NUL
    let width = field.len() - 1;
    let s = format!("{value:0width$o}");
    if s.len() > width {
        // base-256 (GNU) for values that do not fit
        field.fill(0);
        field[0] = 0x80;
        let bytes = value.to_be_bytes();
        let n = field.len();
        field[n - 8..].copy_from_slice(&bytes);
        return;
    }
    field[..width].copy_from_slice(s.as_bytes());
    field[width] = 0;
}

fn raw_header(e: &RawEntry, name: &[u8], link: &[u8], size: u64, gnu: bool) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], u64::from(e.mode));
    octal(&mut h[108..116], e.uid);
    octal(&mut h[116..124], e.gid);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], e.mtime);
    h[156] = e.entry_type.flag();
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    if gnu {
        h[257..263].copy_from_slice(b"ustar ");
        h[263..265].copy_from_slice(b" \0");
    } else {
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
    }
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    octal(&mut h[329..337], u64::from(e.dev_major));
    octal(&mut h[337..345], u64::from(e.dev_minor));
    // checksum: sum of all bytes with the checksum field as spaces
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

impl TarBuilder {
    pub fn new() -> TarBuilder {
        TarBuilder::default()
    }

    fn pad(&mut self) {
        let rem = self.buf.len() % BLOCK;
        if rem != 0 {
            self.buf.resize(self.buf.len() + BLOCK - rem, 0);
        }
    }

    /// Append one entry exactly as described (long names get a GNU 'L'/'K'
    /// entry first).
    pub fn raw(mut self, e: RawEntry) -> TarBuilder {
        let needs_long_name = e.name.len() > 100;
        let needs_long_link = e.link_name.len() > 100;
        if needs_long_link {
            let mut data = e.link_name.clone();
            data.push(0);
            let mut l = RawEntry::new("././@LongLink", EntryType::GnuLongLink);
            l.data = data;
            self = self.raw(l);
        }
        if needs_long_name {
            let mut data = e.name.clone();
            data.push(0);
            let mut l = RawEntry::new("././@LongLink", EntryType::GnuLongName);
            l.data = data;
            self = self.raw(l);
        }
        let size = e.declared_size.unwrap_or(e.data.len() as u64);
        let h = raw_header(
            &e,
            &e.name,
            &e.link_name,
            size,
            needs_long_name || needs_long_link,
        );
        self.buf.extend_from_slice(&h);
        self.buf.extend_from_slice(&e.data);
        self.pad();
        self
    }

    /// A directory (`path` without trailing slash is fine).
    pub fn dir(self, path: &str, mode: u32) -> TarBuilder {
        let mut e = RawEntry::new(format!("{}/", path.trim_end_matches('/')), EntryType::Dir);
        e.mode = mode;
        self.raw(e)
    }

    /// A regular file owned by root.
    pub fn file(self, path: &str, mode: u32, content: &[u8]) -> TarBuilder {
        self.file_owned(path, mode, 0, 0, content)
    }

    /// A regular file with an owner.
    pub fn file_owned(
        self,
        path: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        content: &[u8],
    ) -> TarBuilder {
        let mut e = RawEntry::new(path, EntryType::File);
        e.mode = mode;
        e.uid = uid;
        e.gid = gid;
        e.data = content.to_vec();
        self.raw(e)
    }

    pub fn symlink(self, path: &str, target: &str) -> TarBuilder {
        let mut e = RawEntry::new(path, EntryType::Symlink);
        e.mode = 0o777;
        e.link_name = target.as_bytes().to_vec();
        self.raw(e)
    }

    /// A hard link to an earlier entry of the same layer (`target` as written in the tar).
    pub fn hardlink(self, path: &str, target: &str) -> TarBuilder {
        let mut e = RawEntry::new(path, EntryType::HardLink);
        e.mode = 0o755;
        e.link_name = target.as_bytes().to_vec();
        self.raw(e)
    }

    pub fn char_device(self, path: &str, major: u32, minor: u32) -> TarBuilder {
        let mut e = RawEntry::new(path, EntryType::CharDevice);
        e.mode = 0o600;
        e.dev_major = major;
        e.dev_minor = minor;
        self.raw(e)
    }

    pub fn block_device(self, path: &str, major: u32, minor: u32) -> TarBuilder {
        let mut e = RawEntry::new(path, EntryType::BlockDevice);
        e.mode = 0o600;
        e.dev_major = major;
        e.dev_minor = minor;
        self.raw(e)
    }

    /// OCI whiteout: `dir/.wh.name` deletes `dir/name` of the layers below.
    pub fn whiteout(self, path: &str) -> TarBuilder {
        let p = Path::new(path);
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .expect("whiteout of a named path");
        let wh = match p
            .parent()
            .and_then(|d| d.to_str())
            .filter(|d| !d.is_empty())
        {
            Some(d) => format!("{d}/.wh.{name}"),
            None => format!(".wh.{name}"),
        };
        self.file(&wh, 0o644, b"")
    }

    /// OCI opaque whiteout: `dir/.wh..wh..opq` hides everything below `dir`
    /// in the lower layers.
    pub fn opaque(self, dir: &str) -> TarBuilder {
        self.file(
            &format!("{}/.wh..wh..opq", dir.trim_end_matches('/')),
            0o644,
            b"",
        )
    }

    /// The tar stream with its two terminating zero blocks.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.resize(self.buf.len() + 2 * BLOCK, 0);
        self.buf
    }

    /// The tar stream without the end-of-archive blocks (a truncated layer).
    pub fn finish_unterminated(self) -> Vec<u8> {
        self.buf
    }

    pub fn layer(self, compression: Compression, format: Format) -> Layer {
        Layer::from_tar(&self.finish(), compression, format)
    }
}

// ------------------------------------------------------------------ busybox

/// Debian's static busybox (package busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

/// The static busybox binary's bytes.
pub fn busybox_binary() -> &'static [u8] {
    static BIN: OnceLock<Vec<u8>> = OnceLock::new();
    BIN.get_or_init(|| {
        std::fs::read(BUSYBOX).unwrap_or_else(|e| {
            panic!("reading {BUSYBOX}: {e}: install Debian's busybox-static package (.ci/run does)")
        })
    })
}

/// Applet names from `busybox --list`.
pub fn busybox_applets() -> &'static [String] {
    static LIST: OnceLock<Vec<String>> = OnceLock::new();
    LIST.get_or_init(|| {
        let out = std::process::Command::new(BUSYBOX)
            .arg("--list")
            .output()
            .unwrap_or_else(|e| panic!("running {BUSYBOX} --list: {e}: install busybox-static"));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.contains('/') && *l != "busybox")
            .map(String::from)
            .collect()
    })
}

pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
app:x:1000:1000:app:/home/app:/bin/sh\n";
pub const GROUP: &str = "root:x:0:\nnobody:x:65534:\napp:x:1000:\n";

/// The busybox root filesystem as a tar: bin/busybox with every applet as a
/// hard link in bin/, etc/passwd and etc/group (root, nobody, app uid 1000),
/// and the usual empty dirs.
pub fn busybox_rootfs() -> TarBuilder {
    let mut t = TarBuilder::new()
        .dir("bin", 0o755)
        .file("bin/busybox", 0o755, busybox_binary());
    for applet in busybox_applets() {
        t = t.hardlink(&format!("bin/{applet}"), "bin/busybox");
    }
    t.dir("etc", 0o755)
        .file("etc/passwd", 0o644, PASSWD.as_bytes())
        .file("etc/group", 0o644, GROUP.as_bytes())
        .dir("home", 0o755)
        .dir("home/app", 0o755)
        .dir("root", 0o700)
        .dir("tmp", 0o1777)
        .dir("proc", 0o555)
        .dir("sys", 0o555)
        .dir("dev", 0o755)
        .dir("var", 0o755)
}

/// The busybox layer, compressed once per process and compression (the media
/// type follows `format`).
pub fn busybox_layer(compression: Compression, format: Format) -> Layer {
    static CACHE: OnceLock<std::sync::Mutex<Vec<(Compression, Layer)>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut guard = cache.lock().unwrap_or_else(|p| p.into_inner());
    let layer = match guard.iter().find(|(c, _)| *c == compression) {
        Some((_, l)) => l.clone(),
        None => {
            let l = busybox_rootfs().layer(compression, Format::Oci);
            guard.push((compression, l.clone()));
            l
        }
    };
    drop(guard);
    Layer::from_parts(layer, format)
}

impl Layer {
    fn from_parts(mut layer: Layer, format: Format) -> Layer {
        layer.blob.media_type = match (format, layer.compression) {
            (Format::Docker, Compression::Gzip) => media::DOCKER_LAYER_GZIP,
            (Format::Docker, Compression::None) => media::DOCKER_LAYER_TAR,
            (Format::Oci, Compression::Gzip) => media::OCI_LAYER_GZIP,
            (Format::Oci, Compression::None) => media::OCI_LAYER_TAR,
            (_, Compression::Zstd) => media::OCI_LAYER_ZSTD,
        }
        .to_string();
        layer
    }
}

// ------------------------------------------------------------------- images

/// An OS/architecture/variant triple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.into(),
            architecture: architecture.into(),
            variant: variant.map(Into::into),
        }
    }
    pub fn linux_amd64() -> Platform {
        Platform::new("linux", "amd64", None)
    }
    pub fn linux_arm64() -> Platform {
        Platform::new("linux", "arm64", Some("v8"))
    }
    pub fn linux_arm_v7() -> Platform {
        Platform::new("linux", "arm", Some("v7"))
    }
    fn json(&self) -> Value {
        let mut v = json!({"os": self.os, "architecture": self.architecture});
        if let Some(var) = &self.variant {
            v["variant"] = json!(var);
        }
        v
    }
}

/// A built image: config blob, layers, manifest blob.
#[derive(Clone, Debug)]
pub struct Image {
    pub format: Format,
    pub platform: Platform,
    pub config: Blob,
    pub layers: Vec<Layer>,
    pub manifest: Blob,
}

impl Image {
    /// The image id as CRI reports it: `sha256:<config digest hex>`.
    pub fn id(&self) -> &str {
        &self.config.digest
    }

    /// The manifest digest (what `repo@digest` names).
    pub fn digest(&self) -> &str {
        &self.manifest.digest
    }

    /// The config as JSON.
    pub fn config_json(&self) -> Value {
        serde_json::from_slice(&self.config.data).expect("our own config is JSON")
    }

    /// Sum of the layer tar sizes (what an unpacked image roughly weighs).
    pub fn unpacked_size(&self) -> u64 {
        self.layers.iter().map(|l| l.tar_size).sum()
    }

    /// Sum of the compressed layers and config.
    pub fn compressed_size(&self) -> u64 {
        self.layers.iter().map(|l| l.blob.size()).sum::<u64>() + self.config.size()
    }
}

/// Builds an image config and manifest around a list of layers.
#[derive(Clone)]
pub struct ImageBuilder {
    format: Format,
    platform: Platform,
    layers: Vec<Layer>,
    config: serde_json::Map<String, Value>,
    labels: serde_json::Map<String, Value>,
    created: String,
}

impl ImageBuilder {
    /// An image with no layers yet.
    pub fn new(format: Format) -> ImageBuilder {
        ImageBuilder {
            format,
            platform: Platform::linux_amd64(),
            layers: Vec::new(),
            config: serde_json::Map::new(),
            labels: serde_json::Map::new(),
            created: "2024-01-01T00:00:00Z".into(),
        }
    }

    /// An image whose first layer is busybox (gzip), `PATH` set and `Cmd` `sh`.
    pub fn busybox(format: Format) -> ImageBuilder {
        ImageBuilder::new(format)
            .layer(busybox_layer(Compression::Gzip, format))
            .env(&["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
            .cmd(&["sh"])
    }

    pub fn layer(mut self, layer: Layer) -> ImageBuilder {
        self.layers.push(layer);
        self
    }

    pub fn platform(mut self, platform: Platform) -> ImageBuilder {
        self.platform = platform;
        self
    }

    fn set(mut self, key: &str, value: Value) -> ImageBuilder {
        self.config.insert(key.into(), value);
        self
    }

    pub fn user(self, user: &str) -> ImageBuilder {
        self.set("User", json!(user))
    }
    pub fn env(self, env: &[&str]) -> ImageBuilder {
        self.set("Env", json!(env))
    }
    pub fn entrypoint(self, entrypoint: &[&str]) -> ImageBuilder {
        self.set("Entrypoint", json!(entrypoint))
    }
    pub fn cmd(self, cmd: &[&str]) -> ImageBuilder {
        self.set("Cmd", json!(cmd))
    }
    pub fn working_dir(self, dir: &str) -> ImageBuilder {
        self.set("WorkingDir", json!(dir))
    }
    pub fn volumes(self, volumes: &[&str]) -> ImageBuilder {
        let map: serde_json::Map<String, Value> =
            volumes.iter().map(|v| (v.to_string(), json!({}))).collect();
        self.set("Volumes", Value::Object(map))
    }
    pub fn stop_signal(self, signal: &str) -> ImageBuilder {
        self.set("StopSignal", json!(signal))
    }
    pub fn exposed_ports(self, ports: &[&str]) -> ImageBuilder {
        let map: serde_json::Map<String, Value> =
            ports.iter().map(|v| (v.to_string(), json!({}))).collect();
        self.set("ExposedPorts", Value::Object(map))
    }
    /// A label; also a cheap way to make two otherwise equal images differ.
    pub fn label(mut self, key: &str, value: &str) -> ImageBuilder {
        self.labels.insert(key.into(), json!(value));
        self
    }
    pub fn created(mut self, rfc3339: &str) -> ImageBuilder {
        self.created = rfc3339.into();
        self
    }

    /// Config JSON, then the manifest that names it and the layers.
    pub fn build(self) -> Image {
        let mut config = self.config.clone();
        if !self.labels.is_empty() {
            config.insert("Labels".into(), Value::Object(self.labels.clone()));
        }
        let mut cfg = json!({
            "created": self.created,
            "architecture": self.platform.architecture,
            "os": self.platform.os,
            "config": Value::Object(config),
            "rootfs": {
                "type": "layers",
                "diff_ids": self.layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
            "history": self.layers.iter().map(|l| json!({
                "created": self.created,
                "created_by": format!("berth-conformance layer {}", &l.diff_id[7..19]),
            })).collect::<Vec<_>>(),
        });
        if let Some(v) = &self.platform.variant {
            cfg["variant"] = json!(v);
        }
        let (config_type, manifest_type) = match self.format {
            Format::Docker => (media::DOCKER_CONFIG, media::DOCKER_MANIFEST),
            Format::Oci => (media::OCI_CONFIG, media::OCI_MANIFEST),
        };
        let config = Blob::new(config_type, serde_json::to_vec(&cfg).expect("json"));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": config.descriptor(),
            "layers": self.layers.iter().map(|l| l.blob.descriptor()).collect::<Vec<_>>(),
        });
        let manifest = Blob::new(
            manifest_type,
            serde_json::to_vec_pretty(&manifest).expect("json"),
        );
        Image {
            format: self.format,
            platform: self.platform,
            config,
            layers: self.layers,
            manifest,
        }
    }
}

/// A manifest list (Docker) or image index (OCI) over platform images.
#[derive(Clone, Debug)]
pub struct Index {
    pub format: Format,
    pub images: Vec<(Image, Platform)>,
    pub manifest: Blob,
}

impl Index {
    /// Entries keep their order (put the wanted platform last to check that a
    /// puller does not just take the first).
    pub fn new(format: Format, images: Vec<Image>) -> Index {
        let images: Vec<(Image, Platform)> = images
            .into_iter()
            .map(|i| {
                let p = i.platform.clone();
                (i, p)
            })
            .collect();
        let media_type = match format {
            Format::Docker => media::DOCKER_MANIFEST_LIST,
            Format::Oci => media::OCI_INDEX,
        };
        let body = json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": images.iter().map(|(img, p)| {
                let mut d = img.manifest.descriptor();
                d["platform"] = p.json();
                d
            }).collect::<Vec<_>>(),
        });
        Index {
            format,
            images,
            manifest: Blob::new(media_type, serde_json::to_vec_pretty(&body).expect("json")),
        }
    }

    pub fn digest(&self) -> &str {
        &self.manifest.digest
    }

    /// The image for a platform.
    pub fn image_for(&self, platform: &Platform) -> Option<&Image> {
        self.images
            .iter()
            .find(|(_, p)| p == platform)
            .map(|(i, _)| i)
    }
}

// ------------------------------------------------------------ test images

/// `len` pseudo-random (incompressible) bytes from `seed`, the same every time.
pub fn random_bytes(seed: &str, len: usize) -> Vec<u8> {
    let h = crate::util::sha2_hex(seed.as_bytes());
    let mut x = u64::from_str_radix(&h[..16], 16).unwrap_or(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A layer with one file `name` of `len` incompressible bytes.
pub fn random_layer(
    name: &str,
    seed: &str,
    len: usize,
    compression: Compression,
    format: Format,
) -> Layer {
    TarBuilder::new()
        .file(name, 0o644, &random_bytes(seed, len))
        .layer(compression, format)
}

/// A tiny image for another architecture (one small layer saying which); it
/// cannot run, it only has to be skipped by a puller on linux/amd64.
pub fn fake_platform_image(format: Format, platform: Platform) -> Image {
    let tag = format!(
        "{}/{}{}",
        platform.os,
        platform.architecture,
        platform
            .variant
            .as_deref()
            .map(|v| format!("/{v}"))
            .unwrap_or_default()
    );
    let layer = TarBuilder::new()
        .file("platform.txt", 0o644, tag.as_bytes())
        .layer(Compression::Gzip, format);
    ImageBuilder::new(format)
        .platform(platform)
        .layer(layer)
        .cmd(&["/nothing"])
        .build()
}

/// The multi-platform index the issue asks for: linux/arm64, linux/arm/v7
/// (tiny fakes) and linux/amd64 (busybox + `extra`), amd64 listed last.
pub fn multi_platform_index(format: Format, amd64: Image) -> Index {
    Index::new(
        format,
        vec![
            fake_platform_image(format, Platform::linux_arm64()),
            fake_platform_image(format, Platform::linux_arm_v7()),
            amd64,
        ],
    )
}

/// A gzip bomb: one layer holding one file `name` of `mib` MiB of zeros,
/// compressed about 1000:1 (200 MiB make a ~200 KB blob). A valid layer
/// with its true diff id; the stream is one gzip member per MiB, all the
/// same, so that building a large one costs one MiB of compression.
pub fn gzip_bomb(name: &str, mib: usize, format: Format) -> Layer {
    use sha2::Digest as _;
    fn gz(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data).expect("gzip in memory");
        enc.finish().expect("gzip in memory")
    }
    let size = (mib as u64) << 20;
    let header = raw_header(
        &RawEntry::new(name, EntryType::File),
        name.as_bytes(),
        b"",
        size,
        false,
    );
    let zeros = vec![0u8; 1 << 20];
    let zeros_gz = gz(&zeros);
    let end = [0u8; 2 * BLOCK];
    let mut data = gz(&header);
    let mut diff = sha2::Sha256::new();
    diff.update(header);
    for _ in 0..mib {
        data.extend_from_slice(&zeros_gz);
        diff.update(&zeros);
    }
    data.extend_from_slice(&gz(&end));
    diff.update(end);
    let media_type = match format {
        Format::Docker => media::DOCKER_LAYER_GZIP,
        Format::Oci => media::OCI_LAYER_GZIP,
    };
    Layer {
        blob: Blob::new(media_type, data),
        diff_id: format!("sha256:{}", hex::encode(diff.finalize())),
        compression: Compression::Gzip,
        tar_size: BLOCK as u64 + size + end.len() as u64,
    }
}

/// Files of the whiteout test image, so that tests can look for them.
pub mod whiteout_image {
    /// Deleted by a `.wh.` entry in layer 2.
    pub const REMOVED_FILE: &str = "etc/removed-file";
    /// Kept: only its sibling is whited out.
    pub const KEPT_FILE: &str = "etc/kept-file";
    /// Made opaque by layer 2 (`opq/.wh..wh..opq`).
    pub const OPAQUE_DIR: &str = "opq";
    /// Hidden by the opaque dir.
    pub const HIDDEN_FILE: &str = "opq/old";
    /// Added by layer 2 inside the opaque dir.
    pub const NEW_FILE: &str = "opq/new";
    /// A whole directory deleted by a whiteout in layer 2.
    pub const REMOVED_DIR: &str = "gone-dir";
    /// A directory that layer 2 whites out *and* has itself (the whiteout
    /// before the directory): kept, opaque, so only layer 2's file is in it.
    pub const RECREATED_DIR: &str = "redo-dir";
    /// In layer 1's RECREATED_DIR: hidden.
    pub const RECREATED_OLD: &str = "redo-dir/old";
    /// In layer 2's RECREATED_DIR: seen.
    pub const RECREATED_NEW: &str = "redo-dir/new";
}

/// busybox + layer 1 (files) + layer 2 (a file whiteout, a dir whiteout and an
/// opaque dir with a new file). `marker` goes into the new file's content.
pub fn whiteout_image(format: Format, marker: &str) -> Image {
    use whiteout_image::*;
    let l1 = TarBuilder::new()
        .dir("etc", 0o755)
        .file(REMOVED_FILE, 0o644, b"removed by a whiteout\n")
        .file(KEPT_FILE, 0o644, b"kept\n")
        .dir(OPAQUE_DIR, 0o755)
        .file(HIDDEN_FILE, 0o644, b"hidden by an opaque dir\n")
        .dir(REMOVED_DIR, 0o755)
        .file(&format!("{REMOVED_DIR}/inner"), 0o644, b"inner\n")
        .dir(RECREATED_DIR, 0o755)
        .file(RECREATED_OLD, 0o644, b"old\n")
        .layer(Compression::Gzip, format);
    let l2 = TarBuilder::new()
        .dir("etc", 0o755)
        .whiteout(REMOVED_FILE)
        .whiteout(REMOVED_DIR)
        .dir(OPAQUE_DIR, 0o755)
        .opaque(OPAQUE_DIR)
        .file(NEW_FILE, 0o644, format!("new {marker}\n").as_bytes())
        .whiteout(RECREATED_DIR)
        .dir(RECREATED_DIR, 0o755)
        .file(
            RECREATED_NEW,
            0o644,
            format!("recreated {marker}\n").as_bytes(),
        )
        .layer(Compression::Gzip, format);
    ImageBuilder::busybox(format)
        .layer(l1)
        .layer(l2)
        .label("berth.test", "whiteouts")
        .build()
}

/// An image whose config sets User, Env, Entrypoint, Cmd, WorkingDir,
/// Volumes, StopSignal and ExposedPorts (busybox + a layer with the workdir).
pub fn configured_image(format: Format, user: &str) -> Image {
    let layer = TarBuilder::new()
        .dir("srv", 0o755)
        .dir("srv/app", 0o755)
        .file_owned(
            "srv/app/run.sh",
            0o755,
            1000,
            1000,
            b"#!/bin/sh\necho hello from berth\n",
        )
        .dir("data", 0o755)
        .layer(Compression::Gzip, format);
    ImageBuilder::busybox(format)
        .layer(layer)
        .user(user)
        .env(&[
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "GREETING=hello",
            "EMPTY=",
        ])
        .entrypoint(&["/bin/sh", "-c"])
        .cmd(&["/srv/app/run.sh"])
        .working_dir("/srv/app")
        .volumes(&["/data", "/cache"])
        .stop_signal("SIGINT")
        .exposed_ports(&["8080/tcp"])
        .build()
}

/// Files of the device node test image.
pub mod devices_image {
    /// A block device node, 8:0 (what /dev/sda is on most hosts), 0660.
    pub const BLOCK: &str = "dev/sda";
    pub const BLOCK_NUMBERS: (u32, u32) = (8, 0);
    /// A character device node, 1:3 (/dev/null), 0666.
    pub const CHAR: &str = "dev/null";
    pub const CHAR_NUMBERS: (u32, u32) = (1, 3);
}

/// One layer with device nodes, as containerd unpacks them (opening them
/// in a container is the device cgroup's call).
pub fn devices_image(format: Format) -> Image {
    use devices_image::*;
    let mut block = RawEntry::new(BLOCK, EntryType::BlockDevice);
    (block.dev_major, block.dev_minor) = BLOCK_NUMBERS;
    block.mode = 0o660;
    block.gid = 6;
    let mut char_dev = RawEntry::new(CHAR, EntryType::CharDevice);
    (char_dev.dev_major, char_dev.dev_minor) = CHAR_NUMBERS;
    char_dev.mode = 0o666;
    let layer = TarBuilder::new()
        .dir("dev", 0o755)
        .raw(block)
        .raw(char_dev)
        .layer(Compression::Gzip, format);
    ImageBuilder::new(format)
        .layer(layer)
        .cmd(&["/bin/sh"])
        .build()
}

/// busybox (with `compression` for its layer) + one small layer holding a
/// file `marker.txt` whose content is `marker`: lets a test find the unpacked
/// file under berthd's root.
pub fn marked_image(format: Format, compression: Compression, marker: &str) -> Image {
    let extra = TarBuilder::new()
        .file("marker.txt", 0o644, marker.as_bytes())
        .layer(compression, format);
    ImageBuilder::new(format)
        .layer(busybox_layer(compression, format))
        .layer(extra)
        .env(&["PATH=/bin"])
        .cmd(&["sh"])
        .build()
}

/// Layers that a safe unpacker must refuse. Each is one layer: benign entries
/// first (so a half-done unpack has something to roll back), then the hostile
/// one. `outside` is an absolute directory outside berthd's root that the
/// layer tries to reach.
pub mod hostile {
    use super::*;

    /// `../../…/outside/dotdot-pwned`: a path that climbs out.
    pub fn dotdot(outside: &Path) -> TarBuilder {
        let climb = "../".repeat(40);
        let target = format!(
            "{climb}{}/dotdot-pwned",
            outside.display().to_string().trim_start_matches('/')
        );
        benign().file(&target, 0o644, b"escaped via ..\n")
    }

    /// `escape -> <outside>` (absolute symlink), then `escape/symlink-pwned`
    /// written through it.
    pub fn write_through_absolute_symlink(outside: &Path) -> TarBuilder {
        benign()
            .symlink("escape", &outside.display().to_string())
            .file("escape/symlink-pwned", 0o644, b"escaped via a symlink\n")
    }

    /// `escape -> ../../../…` (relative symlink climbing out), then a file
    /// written through it.
    pub fn write_through_relative_symlink(outside: &Path) -> TarBuilder {
        let climb = "../".repeat(40);
        let target = format!(
            "{climb}{}",
            outside.display().to_string().trim_start_matches('/')
        );
        benign().symlink("rel-escape", &target).file(
            "rel-escape/relsymlink-pwned",
            0o644,
            b"escaped via a relative symlink\n",
        )
    }

    /// A hard link whose target is outside the layer: `../../…/<outside>/secret`.
    pub fn hardlink_outside(outside: &Path) -> TarBuilder {
        let climb = "../".repeat(40);
        let target = format!(
            "{climb}{}/secret",
            outside.display().to_string().trim_start_matches('/')
        );
        benign().hardlink("stolen-secret", &target)
    }

    /// A hard link to an absolute host path (`<outside>/secret`).
    pub fn hardlink_absolute(outside: &Path) -> TarBuilder {
        benign().hardlink(
            "stolen-secret-abs",
            &format!("{}/secret", outside.display()),
        )
    }

    /// A block device whose major (4096 + 8) the kernel cannot hold: cut to
    /// 32 bits for mknod it would alias 8:0 (/dev/sda) under another name.
    pub fn device_number_alias() -> TarBuilder {
        benign().block_device("alias-of-sda", 4096 + 8, 0)
    }

    /// A GNU long-name entry of `len` bytes (far past PATH_MAX) before a file.
    pub fn huge_gnu_longname(len: usize) -> TarBuilder {
        let mut data = vec![b'a'; len];
        data.push(0);
        let mut l = RawEntry::new("././@LongLink", EntryType::GnuLongName);
        l.data = data;
        benign().raw(l).raw({
            let mut e = RawEntry::new("placeholder", EntryType::File);
            e.data = b"named by a huge long name\n".to_vec();
            e
        })
    }

    /// An absolute entry name `<outside>/abs-pwned`: must be contained under
    /// the snapshot (or refused), never written to the host path.
    pub fn absolute_path(outside: &Path) -> TarBuilder {
        benign().file(
            &format!("{}/abs-pwned", outside.display()),
            0o644,
            b"absolute path\n",
        )
    }

    fn benign() -> TarBuilder {
        TarBuilder::new()
            .dir("ok", 0o755)
            .file("ok/fine.txt", 0o644, b"a benign file\n")
    }

    /// A one-layer image around a hostile tar.
    pub fn image(tar: TarBuilder, format: Format) -> Image {
        ImageBuilder::new(format)
            .layer(tar.layer(Compression::Gzip, format))
            .cmd(&["/bin/sh"])
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_headers_have_valid_checksums() {
        let tar = TarBuilder::new()
            .file("a", 0o644, b"hello")
            .symlink("b", "/a")
            .finish();
        assert_eq!(tar.len() % 512, 0);
        let h = &tar[..512];
        let stored = std::str::from_utf8(&h[148..154]).unwrap();
        let mut copy = h.to_vec();
        copy[148..156].fill(b' ');
        let sum: u64 = copy.iter().map(|&b| u64::from(b)).sum();
        assert_eq!(u64::from_str_radix(stored, 8).unwrap(), sum);
        assert_eq!(&h[124..135], b"00000000005");
    }

    #[test]
    fn long_names_get_a_gnu_longname_entry() {
        let name = "d/".repeat(80) + "f";
        let tar = TarBuilder::new().file(&name, 0o644, b"x").finish();
        assert_eq!(tar[156], b'L');
        assert_eq!(&tar[512..512 + name.len()], name.as_bytes());
    }

    #[test]
    fn whiteout_names() {
        let tar = TarBuilder::new()
            .whiteout("etc/x")
            .opaque("d/")
            .whiteout("top")
            .finish();
        assert_eq!(&tar[..10], b"etc/.wh.x\0");
        assert_eq!(&tar[512..528], b"d/.wh..wh..opq\0\0");
        assert_eq!(&tar[1024..1033], b".wh.top\0\0");
    }

    #[test]
    fn gzip_bomb_is_small_and_inflates_to_its_diff_id() {
        let layer = gzip_bomb("bomb", 3, Format::Oci);
        assert!(layer.blob.size() < 16 << 10, "{}", layer.blob.size());
        let mut tar = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::MultiGzDecoder::new(&layer.blob.data[..]),
            &mut tar,
        )
        .unwrap();
        assert_eq!(tar.len() as u64, layer.tar_size);
        assert_eq!(digest(&tar), layer.diff_id);
        assert_eq!(&tar[..5], b"bomb\0");
    }

    #[test]
    fn manifest_names_config_and_layers() {
        let layer = TarBuilder::new()
            .file("f", 0o644, b"x")
            .layer(Compression::Zstd, Format::Oci);
        let img = ImageBuilder::new(Format::Oci)
            .layer(layer.clone())
            .user("1000")
            .build();
        let m: Value = serde_json::from_slice(&img.manifest.data).unwrap();
        assert_eq!(m["config"]["digest"], json!(img.config.digest));
        assert_eq!(m["layers"][0]["mediaType"], json!(media::OCI_LAYER_ZSTD));
        assert_eq!(m["layers"][0]["digest"], json!(layer.blob.digest));
        let c = img.config_json();
        assert_eq!(c["rootfs"]["diff_ids"][0], json!(layer.diff_id));
        assert_eq!(c["config"]["User"], json!("1000"));
        let back = zstd::decode_all(&layer.blob.data[..]).unwrap();
        assert_eq!(digest(&back), layer.diff_id);
    }
}
