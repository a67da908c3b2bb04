//! A CRI client for the bench: like the harness's [`berth_conformance::cri::Cri`]
//! (same Unix-socket connector and requests) but with a per-call deadline
//! chosen by the bench, so that a slow pull of a large image is measured
//! instead of cut at the harness's 120 s.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use berth_conformance::cri::{CRI_CLIENT_VERSION, image_spec};
use berth_cri_api::v1::image_service_client::ImageServiceClient;
use berth_cri_api::v1::runtime_service_client::RuntimeServiceClient;
use berth_cri_api::v1::{
    ImageStatusRequest, PullImageRequest, RemoveImageRequest, VersionRequest, VersionResponse,
};
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

#[derive(Clone)]
pub struct Client {
    runtime: RuntimeServiceClient<Channel>,
    image: ImageServiceClient<Channel>,
}

pub async fn connect(socket: &Path, timeout: Duration) -> Result<Client> {
    let path = socket.to_path_buf();
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .with_context(|| format!("connecting to the CRI socket {}", socket.display()))?;
    Ok(Client {
        runtime: RuntimeServiceClient::new(channel.clone()),
        image: ImageServiceClient::new(channel),
    })
}

impl Client {
    /// The RuntimeService stub (pods and containers), cloned per call.
    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        self.runtime.clone()
    }

    pub async fn version(&self) -> Result<VersionResponse, Status> {
        let req = VersionRequest {
            version: CRI_CLIENT_VERSION.to_string(),
        };
        Ok(self.runtime.clone().version(req).await?.into_inner())
    }

    /// PullImage as `crictl pull IMG` sends it; returns the image ref.
    pub async fn pull(&self, image: &str) -> Result<String, Status> {
        let req = PullImageRequest {
            image: Some(image_spec(image)),
            auth: None,
            sandbox_config: None,
        };
        Ok(self
            .image
            .clone()
            .pull_image(req)
            .await?
            .into_inner()
            .image_ref)
    }

    /// `crictl rmi IMG`: ImageStatus, then RemoveImage by id. Returns whether
    /// an image was there.
    pub async fn rmi(&self, image: &str) -> Result<bool, Status> {
        let req = ImageStatusRequest {
            image: Some(image_spec(image)),
            verbose: false,
        };
        let Some(img) = self
            .image
            .clone()
            .image_status(req)
            .await?
            .into_inner()
            .image
        else {
            return Ok(false);
        };
        let req = RemoveImageRequest {
            image: Some(image_spec(&img.id)),
        };
        self.image.clone().remove_image(req).await?;
        Ok(true)
    }
}
