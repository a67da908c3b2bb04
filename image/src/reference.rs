//! Image references as kubelet and crictl send them, normalised the way Docker
//! and containerd do: `busybox` is `docker.io/library/busybox:latest`.
//!
//! Grammar: distribution/reference's `reference.go` (name components, domain,
//! tag, digest), with the Docker Hub defaults from `normalize.go`.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

pub const DOCKER_HUB: &str = "docker.io";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host, with port if any (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Repository path inside the registry (`library/busybox`).
    pub repository: String,
    /// Tag; `latest` when the reference named neither tag nor digest.
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseReferenceError {
    #[error("image reference is empty")]
    Empty,
    #[error("invalid image reference {0:?}: {1}")]
    Invalid(String, &'static str),
}

impl Reference {
    /// `registry/repository`, the repository's full name.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag`, if the reference has a tag.
    pub fn tagged_name(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// `registry/repository@digest` for the given digest.
    pub fn digested_name(&self, digest: &Digest) -> String {
        format!("{}@{digest}", self.name())
    }

    /// What to ask the registry's manifest endpoint for: the digest if there
    /// is one (it wins over the tag, as in containerd), else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// One path component: `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A registry host: DNS labels or an IPv6 literal in brackets, optional port.
fn valid_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, p)) => {
                if h.is_empty()
                    || !h
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
                {
                    return false;
                }
                let port = match p.strip_prefix(':') {
                    Some(port) => Some(port),
                    None if p.is_empty() => None,
                    None => return false,
                };
                (None, port)
            }
            None => return false,
        }
    } else {
        match d.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(d), None),
        }
    };
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    match host {
        None => true,
        Some(h) => {
            !h.is_empty()
                && h.split('.').all(|label| {
                    let l = label.as_bytes();
                    !l.is_empty()
                        && l[0].is_ascii_alphanumeric()
                        && l[l.len() - 1].is_ascii_alphanumeric()
                        && l.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
                })
        }
    }
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

impl FromStr for Reference {
    type Err = ParseReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |why| ParseReferenceError::Invalid(s.to_string(), why);
        if s.is_empty() {
            return Err(ParseReferenceError::Empty);
        }
        if s.trim() != s || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("whitespace or control characters"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(
                    d.parse::<Digest>()
                        .map_err(|_| invalid("malformed digest"))?,
                ),
            ),
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&rest[..at], Some(&rest[at + 1..]))
            }
            None => (rest, None),
        };
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(invalid("malformed tag"));
        }
        if name.is_empty() {
            return Err(invalid("no repository name"));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.starts_with('[') =>
            {
                if !valid_domain(first) {
                    return Err(invalid("malformed registry host"));
                }
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        if path.is_empty() || !path.split('/').all(valid_component) {
            return Err(invalid(
                "repository must be lowercase letters, digits and separators (. _ __ -) between slashes",
            ));
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(invalid("name longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_hub_short_names_are_normalised() {
        assert_eq!(
            parse("busybox").to_string(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            parse("busybox:1.36").to_string(),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(
            parse("someone/app").to_string(),
            "docker.io/someone/app:latest"
        );
        assert_eq!(
            parse("index.docker.io/library/busybox").to_string(),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn registry_hosts_ports_and_localhost() {
        let r = parse("127.0.0.1:5000/test/img:v1");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "test/img", Some("v1"))
        );
        let r = parse("localhost/img");
        assert_eq!(r.registry, "localhost");
        let r = parse("registry.k8s.io/pause:3.10");
        assert_eq!(r.name(), "registry.k8s.io/pause");
        let r = parse("[::1]:5000/img");
        assert_eq!(r.registry, "[::1]:5000");
    }

    #[test]
    fn digest_only_and_tag_plus_digest() {
        let d = format!("sha256:{}", "0".repeat(64));
        let r = parse(&format!("busybox@{d}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_ref(), d);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{d}"));
        let r = parse(&format!("quay.io/a/b:t@{d}"));
        assert_eq!(r.tag.as_deref(), Some("t"));
        assert_eq!(r.manifest_ref(), d, "digest wins over the tag");
    }

    #[test]
    fn malformed_references_are_refused() {
        for bad in [
            "",
            " busybox",
            "Busybox",
            "busybox:",
            "busybox:-bad",
            "busybox@sha256:short",
            "a//b",
            "/busybox",
            "busybox/",
            "a..b",
            "host:99999999/x",
            "bad host/x",
            "x:tag:more",
            &format!("busybox:{}", "t".repeat(129)),
            &format!("example.com/{}", "a".repeat(260)),
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn separators_inside_components() {
        for ok in ["a_b", "a__b", "a.b", "a---b", "a-b.c_d"] {
            assert!(valid_component(ok), "{ok}");
        }
        for bad in ["a___b", "a._b", "-a", "a-", "_a", "a.."] {
            assert!(!valid_component(bad), "{bad}");
        }
    }
}
