//! A CRI v1 client over berthd's Unix socket, asking what crictl and critest
//! ask, with the same fields:
//!
//! * `crictl pull [--creds u:p | --auth B64] [--pod-config F] IMG`:
//!   `PullImage{image: {image, annotations}, auth, sandbox_config}`;
//! * `crictl inspecti IMG`: `ImageStatus{image: {image}, verbose: true}`;
//! * `crictl images [IMG]`: `ListImages{filter: {image: {image}}}`;
//! * `crictl rmi IMG`: `ImageStatus` then `RemoveImage{image: {image: id}}`
//!   (critest removes by id after a status);
//! * `crictl imagefsinfo`: `ImageFsInfo{}`;
//! * `crictl version` / `info` / runtime config: `Version{version}`,
//!   `Status{verbose}`, `RuntimeConfig{}`.
//!
//! Each method returns the gRPC `Status` on error, so tests can assert codes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use berth_cri_api::v1::image_service_client::ImageServiceClient;
use berth_cri_api::v1::runtime_service_client::RuntimeServiceClient;
use berth_cri_api::v1::{
    AuthConfig, Image, ImageFilter, ImageFsInfoRequest, ImageFsInfoResponse, ImageSpec,
    ImageStatusRequest, ImageStatusResponse, ListImagesRequest, PodSandboxConfig,
    PodSandboxMetadata, PullImageRequest, RemoveImageRequest, RuntimeConfigRequest,
    RuntimeConfigResponse, StatusRequest, StatusResponse, VersionRequest, VersionResponse,
};
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

/// The version string crictl sends in VersionRequest.
pub const CRI_CLIENT_VERSION: &str = "v1";

/// Both CRI services on one channel.
#[derive(Clone)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub image: ImageServiceClient<Channel>,
    /// The channel both clients use (for raw calls, e.g. the fuzz
    /// scenario's undecodable bodies).
    pub channel: Channel,
    socket: PathBuf,
}

impl Cri {
    /// Connect to the Unix socket at `socket` (each new HTTP/2 connection
    /// dials the path again, so clients survive a berthd restart).
    pub async fn connect(socket: &Path) -> Result<Cri> {
        let path = socket.to_path_buf();
        let channel = Endpoint::try_from("http://[::]:50051")?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
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
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone()),
            image: ImageServiceClient::new(channel.clone()),
            channel,
            socket: socket.to_path_buf(),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    // ------------------------------------------------------------ images

    /// `crictl pull IMG`: no auth, no sandbox config. Returns the image ref.
    pub async fn pull(&self, image: &str) -> Result<String, Status> {
        self.pull_full(image, None, None).await
    }

    /// `crictl pull --creds` / `--auth`.
    pub async fn pull_with_auth(&self, image: &str, auth: AuthConfig) -> Result<String, Status> {
        self.pull_full(image, Some(auth), None).await
    }

    /// `crictl pull --pod-config` (as kubelet does for a pod).
    pub async fn pull_for_pod(
        &self,
        image: &str,
        sandbox: PodSandboxConfig,
    ) -> Result<String, Status> {
        self.pull_full(image, None, Some(sandbox)).await
    }

    /// PullImage with everything crictl can set.
    pub async fn pull_full(
        &self,
        image: &str,
        auth: Option<AuthConfig>,
        sandbox_config: Option<PodSandboxConfig>,
    ) -> Result<String, Status> {
        let req = PullImageRequest {
            image: Some(image_spec(image)),
            auth,
            sandbox_config,
        };
        Ok(self
            .image
            .clone()
            .pull_image(req)
            .await?
            .into_inner()
            .image_ref)
    }

    /// `crictl inspecti` (verbose) or the status kubelet asks (not verbose).
    pub async fn image_status(
        &self,
        image: &str,
        verbose: bool,
    ) -> Result<ImageStatusResponse, Status> {
        let req = ImageStatusRequest {
            image: Some(image_spec(image)),
            verbose,
        };
        Ok(self.image.clone().image_status(req).await?.into_inner())
    }

    /// The image of a non-verbose ImageStatus (`None`: not there).
    pub async fn image(&self, image: &str) -> Result<Option<Image>, Status> {
        Ok(self.image_status(image, false).await?.image)
    }

    /// `crictl images` (no filter) or `crictl images IMG`.
    pub async fn list_images(&self, filter: Option<&str>) -> Result<Vec<Image>, Status> {
        let req = ListImagesRequest {
            filter: filter.map(|f| ImageFilter {
                image: Some(image_spec(f)),
            }),
        };
        Ok(self
            .image
            .clone()
            .list_images(req)
            .await?
            .into_inner()
            .images)
    }

    /// RemoveImage with this exact reference (id, tag or digest).
    pub async fn remove_image(&self, image: &str) -> Result<(), Status> {
        let req = RemoveImageRequest {
            image: Some(image_spec(image)),
        };
        self.image.clone().remove_image(req).await?;
        Ok(())
    }

    /// `crictl rmi IMG` / critest's removeImage: status, then remove by id.
    pub async fn rmi(&self, image: &str) -> Result<(), Status> {
        if let Some(img) = self.image(image).await? {
            self.remove_image(&img.id).await?;
        }
        Ok(())
    }

    pub async fn image_fs_info(&self) -> Result<ImageFsInfoResponse, Status> {
        Ok(self
            .image
            .clone()
            .image_fs_info(ImageFsInfoRequest {})
            .await?
            .into_inner())
    }

    // ----------------------------------------------------------- runtime

    pub async fn version(&self) -> Result<VersionResponse, Status> {
        let req = VersionRequest {
            version: CRI_CLIENT_VERSION.to_string(),
        };
        Ok(self.runtime.clone().version(req).await?.into_inner())
    }

    pub async fn status(&self, verbose: bool) -> Result<StatusResponse, Status> {
        Ok(self
            .runtime
            .clone()
            .status(StatusRequest { verbose })
            .await?
            .into_inner())
    }

    /// ListPodSandbox without a filter (panics on error: test helper).
    pub async fn list_pods(&self) -> Vec<berth_cri_api::v1::PodSandbox> {
        self.runtime
            .clone()
            .list_pod_sandbox(berth_cri_api::v1::ListPodSandboxRequest { filter: None })
            .await
            .expect("ListPodSandbox")
            .into_inner()
            .items
    }

    pub async fn runtime_config(&self) -> Result<RuntimeConfigResponse, Status> {
        Ok(self
            .runtime
            .clone()
            .runtime_config(RuntimeConfigRequest {})
            .await?
            .into_inner())
    }
}

/// `ImageSpec{image}` as crictl fills it (annotations empty).
pub fn image_spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_string(),
        annotations: HashMap::new(),
        ..Default::default()
    }
}

/// AuthConfig with username and password (`crictl pull --creds user:pass`).
pub fn auth_basic(username: &str, password: &str) -> AuthConfig {
    AuthConfig {
        username: username.into(),
        password: password.into(),
        ..Default::default()
    }
}

/// AuthConfig with the `auth` field (`crictl pull --auth B64`).
pub fn auth_field(auth: &str) -> AuthConfig {
    AuthConfig {
        auth: auth.into(),
        ..Default::default()
    }
}

/// A pod sandbox config like crictl's sample pod-config.json.
pub fn sandbox_config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 1,
        }),
        log_directory: "/tmp".into(),
        ..Default::default()
    }
}
