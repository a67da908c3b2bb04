//! CRI ImageService: translates requests to [`berth_image::ImageService`].

use std::collections::HashMap;
use std::sync::Arc;

use berth_cri_api::v1 as cri;
use berth_cri_api::v1::image_service_server::ImageService;
use berth_image::registry::Credentials;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::status::image_error;

pub struct ImageApi {
    images: Arc<berth_image::ImageService>,
    /// The configured RuntimeClass handlers besides "" (PullImage checks
    /// ImageSpec.runtime_handler against them).
    handlers: Vec<String>,
}

impl ImageApi {
    pub fn new(images: Arc<berth_image::ImageService>, handlers: Vec<String>) -> Self {
        Self { images, handlers }
    }

    fn to_cri(&self, e: &berth_image::Image) -> cri::Image {
        let (uid, username) = berth_image::manifest::image_user(e.config.config.user.as_deref());
        cri::Image {
            id: e.record.id.to_string(),
            repo_tags: e.record.repo_tags.clone(),
            repo_digests: e.record.repo_digests.clone(),
            size: e.record.size,
            uid: uid.map(|value| cri::Int64Value { value }),
            username,
            spec: Some(cri::ImageSpec {
                image: e.record.id.to_string(),
                ..Default::default()
            }),
            pinned: self.images.is_pinned(e),
        }
    }
}

fn image_ref(spec: Option<&cri::ImageSpec>) -> &str {
    spec.map(|s| s.image.as_str()).unwrap_or("")
}

fn required_ref(spec: Option<&cri::ImageSpec>) -> Result<&str, Status> {
    let r = image_ref(spec);
    if r.is_empty() {
        return Err(Status::invalid_argument(
            "image.image (the image reference) is required",
        ));
    }
    Ok(r)
}

#[tonic::async_trait]
impl ImageService for ImageApi {
    async fn list_images(
        &self,
        request: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let req = request.into_inner();
        let filter = req
            .filter
            .as_ref()
            .and_then(|f| f.image.as_ref())
            .map(|s| s.image.as_str());
        let images = self
            .images
            .list(filter)
            .iter()
            .map(|e| self.to_cri(e))
            .collect();
        Ok(Response::new(cri::ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        request: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let req = request.into_inner();
        let r = required_ref(req.image.as_ref())?;
        let span = tracing::debug_span!("ImageStatus", image = r);
        let _g = span.enter();
        // An image that is not there is an empty answer, not an error.
        let Some(e) = self.images.status(r) else {
            return Ok(Response::new(cri::ImageStatusResponse::default()));
        };
        let mut info = HashMap::new();
        if req.verbose {
            let config: serde_json::Value =
                serde_json::from_slice(&e.config_json).unwrap_or(serde_json::Value::Null);
            let v = serde_json::json!({
                "id": e.record.id.to_string(),
                "manifestDigest": e.record.manifest_digest.to_string(),
                "chainIDs": e.record.chain_ids.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                "pinned": self.images.is_pinned(&e),
                "imageSpec": config,
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok(Response::new(cri::ImageStatusResponse {
            image: Some(self.to_cri(&e)),
            info,
        }))
    }

    async fn pull_image(
        &self,
        request: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let req = request.into_inner();
        let r = required_ref(req.image.as_ref())?.to_string();
        // ImageSpec.runtime_handler: an unknown one is refused (api.proto).
        // Images are shared by every handler (all run the same bundle).
        if let Some(h) = req
            .image
            .as_ref()
            .map(|i| i.runtime_handler.as_str())
            .filter(|h| !h.is_empty() && !self.handlers.iter().any(|k| k == h))
        {
            return Err(Status::invalid_argument(format!(
                "runtime handler {h:?} is not configured (berth has \"\"{})",
                self.handlers
                    .iter()
                    .map(|k| format!(", {k:?}"))
                    .collect::<String>()
            )));
        }
        let span = tracing::info_span!("PullImage", image = %r);
        async {
            let creds = match &req.auth {
                None => Credentials::Anonymous,
                Some(a) => Credentials::from_cri(
                    &a.username,
                    &a.password,
                    &a.auth,
                    &a.identity_token,
                    &a.registry_token,
                )
                .map_err(image_error)?,
            };
            let started = std::time::Instant::now();
            let (image_ref, stats) = match self.images.pull_with_stats(&r, creds).await {
                Ok(x) => x,
                Err(e) => {
                    crate::metrics::get().pull_failed();
                    return Err(image_error(e));
                }
            };
            crate::metrics::get().pulled(
                stats.compressed_bytes,
                stats.layers_fetched,
                started.elapsed(),
            );
            Ok(Response::new(cri::PullImageResponse { image_ref }))
        }
        .instrument(span)
        .await
    }

    async fn remove_image(
        &self,
        request: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let req = request.into_inner();
        let r = required_ref(req.image.as_ref())?.to_string();
        let span = tracing::info_span!("RemoveImage", image = %r);
        async {
            self.images.remove(&r).await.map_err(image_error)?;
            Ok(Response::new(cri::RemoveImageResponse {}))
        }
        .instrument(span)
        .await
    }

    async fn image_fs_info(
        &self,
        _request: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let u = self.images.fs_usage();
        let fs = cri::FilesystemUsage {
            timestamp: u.timestamp_ns,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: u.mountpoint.display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value {
                value: u.used_bytes,
            }),
            inodes_used: Some(cri::UInt64Value {
                value: u.inodes_used,
            }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![fs],
            container_filesystems: vec![],
        }))
    }

    // cri-api 1.36's streaming ListImages (KEP-5825).
    type StreamImagesStream = crate::listing::Chunks<cri::StreamImagesResponse>;

    async fn stream_images(
        &self,
        request: Request<cri::StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        let filter = request.into_inner().filter;
        let images = self
            .list_images(Request::new(cri::ListImagesRequest { filter }))
            .await?
            .into_inner()
            .images;
        Ok(Response::new(crate::listing::stream(images, |images| {
            cri::StreamImagesResponse { images }
        })))
    }
}
