//! The registry documents a pull reads: manifests (Docker schema 2 and OCI),
//! manifest lists / OCI indexes, and the image config, with the platform
//! choice for this node.
//!
//! Small serde structs of our own instead of oci-spec's types: we read a
//! handful of fields from both the Docker and the OCI media types, ignore
//! the rest, and keep the config's raw JSON for ImageStatus verbose.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{Error, Result};

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// What we ask the manifest endpoint for, best first.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json;q=0.9";

/// Largest manifest or index we read (containerd's limit too).
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;
/// Largest image config we read.
pub const MAX_CONFIG_SIZE: usize = 32 << 20;
/// Most layers an image may have (overlayfs stacks at most 500 lowerdirs).
pub const MAX_LAYERS: usize = 256;

#[derive(Clone, Debug, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: i64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion", default)]
    pub schema_version: i64,
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion", default)]
    pub schema_version: i64,
    pub manifests: Vec<Descriptor>,
}

/// A manifest endpoint's answer, classified.
#[derive(Debug)]
pub enum ManifestDoc {
    Image(Manifest),
    Index(Index),
}

/// The compression of a layer blob, from its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn of_layer(media_type: &str) -> Result<Self> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Ok(Compression::Zstd)
            }
            other => Err(Error::Registry(format!(
                "layer media type {other:?} is not supported (expected an OCI or Docker tar, tar+gzip or tar+zstd layer)"
            ))),
        }
    }
}

impl ManifestDoc {
    /// Parse a manifest body by its Content-Type (or the body's own
    /// `mediaType` when the registry sent a generic type).
    pub fn parse(content_type: &str, body: &[u8]) -> Result<Self> {
        let bad = |e: serde_json::Error| Error::Registry(format!("malformed manifest: {e}"));
        let ct = content_type.split(';').next().unwrap_or("").trim();
        let declared = if matches!(
            ct,
            "" | "application/json" | "application/octet-stream" | "text/plain"
        ) {
            #[derive(Deserialize)]
            struct Probe {
                #[serde(rename = "mediaType", default)]
                media_type: Option<String>,
                #[serde(default)]
                manifests: Option<serde_json::Value>,
                #[serde(rename = "schemaVersion", default)]
                schema_version: i64,
            }
            let p: Probe = serde_json::from_slice(body).map_err(bad)?;
            match (p.media_type, p.manifests, p.schema_version) {
                (Some(mt), _, _) => mt,
                (None, Some(_), _) => OCI_INDEX.to_string(),
                (None, None, 1) => DOCKER_SCHEMA1.to_string(),
                (None, None, _) => OCI_MANIFEST.to_string(),
            }
        } else {
            ct.to_string()
        };
        match declared.as_str() {
            DOCKER_MANIFEST | OCI_MANIFEST => {
                let m: Manifest = serde_json::from_slice(body).map_err(bad)?;
                if m.schema_version != 2 {
                    return Err(Error::Registry(format!("manifest schemaVersion {} is not 2", m.schema_version)));
                }
                if m.layers.len() > MAX_LAYERS {
                    return Err(Error::Registry(format!(
                        "manifest has {} layers, more than the {MAX_LAYERS} berth stacks",
                        m.layers.len()
                    )));
                }
                Ok(ManifestDoc::Image(m))
            }
            DOCKER_MANIFEST_LIST | OCI_INDEX => {
                let i: Index = serde_json::from_slice(body).map_err(bad)?;
                Ok(ManifestDoc::Index(i))
            }
            DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED => Err(Error::Registry(
                "Docker schema 1 manifests are deprecated and not supported; push the image again with a current client"
                    .into(),
            )),
            other => Err(Error::Registry(format!("unsupported manifest media type {other:?}"))),
        }
    }
}

impl Platform {
    /// The platform of this node, in OCI terms.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            architecture: architecture.to_string(),
            os: std::env::consts::OS.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// How well an index entry's platform fits this one: None if it cannot
    /// run here, else a rank (higher is better), after containerd's
    /// platforms.Only matcher: the exact variant best, then no variant, then
    /// an older variant of the same architecture (arm v6 on a v7 host).
    pub fn rank(&self, candidate: &Platform) -> Option<u32> {
        if candidate.os != self.os || candidate.architecture != self.architecture {
            return None;
        }
        let norm = |v: &Option<String>| -> Option<String> {
            match (self.architecture.as_str(), v.as_deref()) {
                (_, None | Some("")) => None,
                ("amd64", Some("v1")) | ("arm64", Some("v8")) => None,
                (_, Some(v)) => Some(v.to_string()),
            }
        };
        let (mine, theirs) = (norm(&self.variant), norm(&candidate.variant));
        if mine == theirs {
            return Some(3);
        }
        let level = |v: &str| v.strip_prefix('v').and_then(|n| n.parse::<u32>().ok());
        match (&mine, &theirs) {
            (_, None) => Some(2),
            (Some(m), Some(t)) => match (level(m), level(t)) {
                (Some(m), Some(t)) if t < m => Some(1),
                _ => None,
            },
            (None, Some(_)) => None,
        }
    }

    /// Pick the best manifest of an index for this platform.
    pub fn choose<'a>(&self, index: &'a Index) -> Option<&'a Descriptor> {
        index
            .manifests
            .iter()
            .filter(|d| matches!(d.media_type.as_str(), DOCKER_MANIFEST | OCI_MANIFEST | ""))
            .filter_map(|d| {
                let p = d.platform.as_ref()?;
                self.rank(p).map(|r| (r, d))
            })
            // max_by_key keeps the last of equals; we want the first.
            .fold(
                None,
                |best: Option<(u32, &Descriptor)>, (r, d)| match best {
                    Some((br, _)) if br >= r => best,
                    _ => Some((r, d)),
                },
            )
            .map(|(_, d)| d)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The parts of an image config that berth reads. The raw JSON is kept too.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: RunConfig,
    pub rootfs: RootFs,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "User", default)]
    pub user: Option<String>,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "Volumes", default)]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(rename = "StopSignal", default)]
    pub stop_signal: Option<String>,
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

impl ImageConfig {
    pub fn parse(body: &[u8]) -> Result<Self> {
        serde_json::from_slice(body)
            .map_err(|e| Error::Registry(format!("malformed image config: {e}")))
    }
}

/// Chain ids of a layer stack (OCI image spec, config.md "Layer ChainID"):
/// ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)).
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => Digest::sha256_of(format!("{parent} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// uid or user name from the config's `User`, as ImageStatus reports them:
/// a numeric user (optionally `uid:gid`) is a uid, anything else a name.
pub fn image_user(user: Option<&str>) -> (Option<i64>, String) {
    let user = user.unwrap_or("");
    let name = user.split(':').next().unwrap_or("");
    match name.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, name.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    fn plat(arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            architecture: arch.into(),
            os: "linux".into(),
            variant: variant.map(Into::into),
        }
    }

    #[test]
    fn chain_id_of_one_layer_is_its_diff_id_and_then_chains() {
        let ids = chain_ids(&[d('a'), d('b')]);
        assert_eq!(ids[0], d('a'));
        assert_eq!(
            ids[1],
            Digest::sha256_of(format!("{} {}", d('a'), d('b')).as_bytes())
        );
    }

    #[test]
    fn index_resolves_to_amd64_over_arm() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
            d('1'),
            d('2'),
            d('3')
        );
        let ManifestDoc::Index(idx) = ManifestDoc::parse(OCI_INDEX, body.as_bytes()).unwrap()
        else {
            panic!("not an index")
        };
        assert_eq!(plat("amd64", None).choose(&idx).unwrap().digest, d('2'));
        assert_eq!(
            plat("arm64", Some("v8")).choose(&idx).unwrap().digest,
            d('3')
        );
        assert_eq!(plat("arm", Some("v7")).choose(&idx).unwrap().digest, d('1'));
        assert!(plat("s390x", None).choose(&idx).is_none());
    }

    #[test]
    fn variant_rules() {
        let v7 = plat("arm", Some("v7"));
        assert_eq!(v7.rank(&plat("arm", Some("v7"))), Some(3));
        assert_eq!(v7.rank(&plat("arm", None)), Some(2));
        assert_eq!(v7.rank(&plat("arm", Some("v6"))), Some(1));
        assert_eq!(v7.rank(&plat("arm", Some("v8"))), None);
        let amd = plat("amd64", None);
        assert_eq!(amd.rank(&plat("amd64", Some("v1"))), Some(3));
        assert_eq!(amd.rank(&plat("amd64", Some("v3"))), None);
        assert_eq!(
            plat("arm64", Some("v8")).rank(&plat("arm64", None)),
            Some(3)
        );
    }

    #[test]
    fn manifest_kind_from_body_when_content_type_is_generic() {
        let body = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{}","size":2}},"layers":[]}}"#,
            d('c')
        );
        assert!(matches!(
            ManifestDoc::parse("application/json", body.as_bytes()),
            Ok(ManifestDoc::Image(_))
        ));
        let schema1 = r#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        let err = ManifestDoc::parse("", schema1.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("schema 1"), "{err}");
    }

    #[test]
    fn layer_compressions() {
        assert_eq!(
            Compression::of_layer("application/vnd.docker.image.rootfs.diff.tar.gzip").unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            Compression::of_layer("application/vnd.oci.image.layer.v1.tar+zstd").unwrap(),
            Compression::Zstd
        );
        assert_eq!(
            Compression::of_layer("application/vnd.oci.image.layer.v1.tar").unwrap(),
            Compression::None
        );
        assert!(Compression::of_layer("application/vnd.oci.image.layer.v1.tar+lz4").is_err());
    }

    #[test]
    fn image_user_numeric_or_name() {
        assert_eq!(image_user(Some("1000")), (Some(1000), String::new()));
        assert_eq!(image_user(Some("1000:1000")), (Some(1000), String::new()));
        assert_eq!(image_user(Some("app:staff")), (None, "app".to_string()));
        assert_eq!(image_user(None), (None, String::new()));
    }
}
