//! The writing half of the Registry API v2 client, for `berthd commit
//! --push`: blob existence, cross-repository blob mounts, monolithic blob
//! uploads from a file, and manifest puts. Each request goes through the
//! session's auth dance and its retries of transient failures; an upload
//! retried starts a fresh upload session.

use std::path::Path;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};

use super::{Endpoint, Failure, Session};
use crate::digest::Digest;
use crate::error::{Error, Result};

impl Session {
    fn url(&self, ep: &Endpoint, path: &str) -> String {
        format!("{}/v2/{}/{path}", ep.base, self.repository)
    }

    /// Whether the repository has the blob `digest` already.
    pub async fn has_blob(&self, digest: &Digest) -> Result<bool> {
        let what = format!("blob {digest} of {}", self.name());
        let r = self
            .with_endpoints(&what, |i| {
                let ep = &self.endpoints[i];
                let url = self.url(ep, &format!("blobs/{digest}"));
                let what = &what;
                async move { self.send(ep, what, |http| Ok(http.head(&url))).await }
            })
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(Error::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Ask the registry to mount the blob `digest` from its repository
    /// `from` (the repository the image was pulled from) without sending
    /// it: true if it did (201). A registry that cannot (202, an upload
    /// session instead) gets that session cancelled, and false.
    pub async fn mount_blob(&self, digest: &Digest, from: &str) -> Result<bool> {
        let what = format!("a mount of blob {digest} from {from} into {}", self.name());
        let resp = self
            .with_endpoints(&what, |i| {
                let ep = &self.endpoints[i];
                let url = self.url(ep, "blobs/uploads/");
                let what = &what;
                async move {
                    self.send(ep, what, |http| {
                        Ok(http
                            .post(&url)
                            .query(&[("mount", digest.to_string().as_str()), ("from", from)])
                            .header(CONTENT_LENGTH, 0))
                    })
                    .await
                    .map(|r| (r, ep.clone()))
                }
            })
            .await?;
        let (resp, ep) = resp;
        if resp.status() == StatusCode::CREATED {
            return Ok(true);
        }
        // An upload session was opened instead: close it, best effort.
        if let Ok(loc) = upload_location(&ep, &resp) {
            let _ = self
                .send(&ep, &what, |http| Ok(http.delete(loc.clone())))
                .await;
        }
        Ok(false)
    }

    /// Upload the blob `digest` (`size` bytes, in the file `path`): an
    /// upload session (POST), then the whole blob in one PUT with its
    /// digest, which the registry verifies.
    pub async fn upload_blob(&self, digest: &Digest, path: &Path, size: u64) -> Result<()> {
        let what = format!("the upload of blob {digest} to {}", self.name());
        self.with_endpoints(&what, |i| {
            let ep = &self.endpoints[i];
            let url = self.url(ep, "blobs/uploads/");
            let what = &what;
            async move {
                let resp = self
                    .send(ep, what, |http| {
                        Ok(http.post(&url).header(CONTENT_LENGTH, 0))
                    })
                    .await?;
                if resp.status() != StatusCode::ACCEPTED {
                    return Err(Failure::Final(Error::Registry(format!(
                        "{}: the registry answered {} to the upload's POST, not 202",
                        what,
                        resp.status()
                    ))));
                }
                let mut put = upload_location(ep, &resp).map_err(Failure::Final)?;
                put.query_pairs_mut()
                    .append_pair("digest", &digest.to_string());
                // The answer comes after the whole body: the stall bound
                // plus the blob at 256 KiB/s.
                let within = self.client.config.stall_timeout
                    + std::time::Duration::from_secs(size / (256 << 10));
                let resp = self
                    .send_within(ep, what, within, |http| {
                        let f = std::fs::File::open(path).map_err(|e| {
                            Failure::Final(Error::io(format!("opening {}", path.display()), e))
                        })?;
                        Ok(http
                            .put(put.clone())
                            .header(CONTENT_TYPE, "application/octet-stream")
                            .header(CONTENT_LENGTH, size)
                            .body(reqwest::Body::from(tokio::fs::File::from_std(f))))
                    })
                    .await?;
                if resp.status() != StatusCode::CREATED {
                    return Err(Failure::Final(Error::Registry(format!(
                        "{}: the registry answered {} to the blob's PUT, not 201",
                        what,
                        resp.status()
                    ))));
                }
                Ok(())
            }
        })
        .await
    }

    /// Put a manifest under `tag`: the digest the registry gives it (it
    /// must be the digest of `body`, which is checked).
    pub async fn put_manifest(&self, tag: &str, body: &[u8], media_type: &str) -> Result<Digest> {
        let what = format!("the manifest {}:{tag}", self.name());
        let ours = Digest::sha256_of(body);
        let resp = self
            .with_endpoints(&what, |i| {
                let ep = &self.endpoints[i];
                let url = self.url(ep, &format!("manifests/{tag}"));
                let what = &what;
                async move {
                    self.send(ep, what, |http| {
                        Ok(http
                            .put(&url)
                            .header(CONTENT_TYPE, media_type)
                            .body(body.to_vec()))
                    })
                    .await
                }
            })
            .await?;
        let theirs = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::parse::<Digest>);
        match theirs {
            Some(Ok(d)) if d != ours => Err(Error::DigestMismatch {
                what,
                expected: ours.to_string(),
                actual: d.to_string(),
            }),
            _ => Ok(ours),
        }
    }
}

/// The upload URL a registry answered with (`Location`, absolute or
/// relative to the endpoint). It must stay on the endpoint (scheme, host
/// and port): the session's credentials and client certificate go with
/// the upload, and a registry does not get to send them elsewhere.
fn upload_location(ep: &Endpoint, resp: &reqwest::Response) -> Result<reqwest::Url> {
    let loc = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            Error::Registry(format!(
                "{} opened an upload without a Location header",
                ep.base
            ))
        })?;
    let base = reqwest::Url::parse(&format!("{}/", ep.base))
        .map_err(|e| Error::Registry(format!("endpoint {}: {e}", ep.base)))?;
    let url = base.join(loc).map_err(|e| {
        Error::Registry(format!(
            "{} sent an unusable Location {loc:?}: {e}",
            ep.base
        ))
    })?;
    if url.scheme() != base.scheme()
        || url.host_str() != base.host_str()
        || url.port_or_known_default() != base.port_or_known_default()
    {
        return Err(Error::Registry(format!(
            "{} sent an upload Location on another host or scheme ({loc:?}): refused, the push's credentials are the registry's",
            ep.base
        )));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_locations_relative_and_absolute() {
        let ep = Endpoint {
            base: "http://127.0.0.1:5000".into(),
            host: "127.0.0.1:5000".into(),
            mirror: false,
        };
        let resp = |loc: &str| {
            let r = http::Response::builder()
                .status(202)
                .header("location", loc)
                .body(Vec::<u8>::new())
                .unwrap();
            reqwest::Response::from(r)
        };
        assert_eq!(
            upload_location(&ep, &resp("/v2/a/blobs/uploads/u1?_state=x"))
                .unwrap()
                .as_str(),
            "http://127.0.0.1:5000/v2/a/blobs/uploads/u1?_state=x"
        );
        assert_eq!(
            upload_location(&ep, &resp("http://127.0.0.1:5000/v2/a/blobs/uploads/u2"))
                .unwrap()
                .as_str(),
            "http://127.0.0.1:5000/v2/a/blobs/uploads/u2"
        );
        for elsewhere in [
            "https://other.example/up/u2",
            "http://169.254.169.254/latest",
            "http://127.0.0.1:5001/v2/a/blobs/uploads/u3",
            "https://127.0.0.1:5000/v2/a/blobs/uploads/u4",
        ] {
            let e = upload_location(&ep, &resp(elsewhere))
                .unwrap_err()
                .to_string();
            assert!(e.contains("another host"), "{elsewhere}: {e}");
        }
        let none = reqwest::Response::from(
            http::Response::builder()
                .status(202)
                .body(Vec::<u8>::new())
                .unwrap(),
        );
        assert!(upload_location(&ep, &none).is_err());
    }
}
