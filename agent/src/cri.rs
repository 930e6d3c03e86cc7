//! The CRI runtime as the agent uses it: a trait (so pod logic is testable against a fake) and
//! its gRPC implementation over a unix socket, for berth-shim, containerd or CRI-O alike.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};

use berth_proto::runtime::v1 as cri;
use berth_proto::runtime::v1::image_service_client::ImageServiceClient;
use berth_proto::runtime::v1::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// A failed CRI call: which one, and the runtime's answer.
#[derive(Debug, thiserror::Error)]
#[error("CRI {op}: {}", status.message())]
pub struct CriError {
    pub op: &'static str,
    pub status: tonic::Status,
}

impl CriError {
    pub fn not_found(&self) -> bool {
        self.status.code() == tonic::Code::NotFound
    }

    pub fn new(op: &'static str, code: tonic::Code, message: impl Into<String>) -> CriError {
        CriError { op, status: tonic::Status::new(code, message.into()) }
    }
}

pub type CriResult<T> = Result<T, CriError>;

/// What ExecSync returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecResult {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Which streams an exec or attach carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// The CRI calls the agent makes. Futures are `Send` so pod workers can run on any thread.
pub trait Runtime: Send + Sync + 'static {
    fn version(&self) -> impl Future<Output = CriResult<cri::VersionResponse>> + Send;
    fn run_pod_sandbox(&self, config: cri::PodSandboxConfig) -> impl Future<Output = CriResult<String>> + Send;
    fn stop_pod_sandbox(&self, id: &str) -> impl Future<Output = CriResult<()>> + Send;
    fn remove_pod_sandbox(&self, id: &str) -> impl Future<Output = CriResult<()>> + Send;
    fn pod_sandbox_status(&self, id: &str) -> impl Future<Output = CriResult<cri::PodSandboxStatus>> + Send;
    fn list_pod_sandboxes(
        &self,
        labels: HashMap<String, String>,
    ) -> impl Future<Output = CriResult<Vec<cri::PodSandbox>>> + Send;
    fn create_container(
        &self,
        sandbox_id: &str,
        config: cri::ContainerConfig,
        sandbox: cri::PodSandboxConfig,
    ) -> impl Future<Output = CriResult<String>> + Send;
    fn start_container(&self, id: &str) -> impl Future<Output = CriResult<()>> + Send;
    fn stop_container(&self, id: &str, timeout_secs: i64) -> impl Future<Output = CriResult<()>> + Send;
    fn remove_container(&self, id: &str) -> impl Future<Output = CriResult<()>> + Send;
    fn list_containers(
        &self,
        labels: HashMap<String, String>,
    ) -> impl Future<Output = CriResult<Vec<cri::Container>>> + Send;
    fn container_status(&self, id: &str) -> impl Future<Output = CriResult<cri::ContainerStatus>> + Send;
    fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout_secs: i64,
    ) -> impl Future<Output = CriResult<ExecResult>> + Send;
    /// Streaming URLs (Exec, Attach, PortForward) for the kubelet API to splice clients to.
    fn exec_url(
        &self,
        id: &str,
        cmd: Vec<String>,
        opts: StreamOptions,
    ) -> impl Future<Output = CriResult<String>> + Send;
    fn attach_url(&self, id: &str, opts: StreamOptions) -> impl Future<Output = CriResult<String>> + Send;
    fn port_forward_url(&self, sandbox_id: &str, ports: Vec<i32>) -> impl Future<Output = CriResult<String>> + Send;
    /// The image's id when present on the node.
    fn image_id(&self, image: &str) -> impl Future<Output = CriResult<Option<String>>> + Send;
    /// Pulls and returns the image reference (id).
    fn pull_image(
        &self,
        image: &str,
        auth: Option<cri::AuthConfig>,
        sandbox: Option<cri::PodSandboxConfig>,
    ) -> impl Future<Output = CriResult<String>> + Send;
    /// Stats of every pod sandbox and container (the Summary API).
    fn list_pod_sandbox_stats(&self) -> impl Future<Output = CriResult<Vec<cri::PodSandboxStats>>> + Send;
    fn list_container_stats(&self) -> impl Future<Output = CriResult<Vec<cri::ContainerStats>>> + Send;
    /// The image filesystem (image GC, the Summary API's runtime.imageFs).
    fn image_fs_info(&self) -> impl Future<Output = CriResult<cri::ImageFsInfoResponse>> + Send;
    fn list_images(&self) -> impl Future<Output = CriResult<Vec<cri::Image>>> + Send;
    fn remove_image(&self, image: &str) -> impl Future<Output = CriResult<()>> + Send;
}

/// A gRPC channel over a unix socket (tonic wants a URI; the connector ignores it).
pub async fn unix_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    Endpoint::try_from("http://[::]:50051")
        .expect("static URI")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

/// CRI over gRPC.
#[derive(Clone)]
pub struct GrpcRuntime {
    rt: RuntimeServiceClient<Channel>,
    img: ImageServiceClient<Channel>,
}

impl GrpcRuntime {
    pub async fn connect(socket: &Path) -> Result<GrpcRuntime, tonic::transport::Error> {
        let ch = unix_channel(socket).await?;
        Ok(GrpcRuntime {
            rt: RuntimeServiceClient::new(ch.clone()).max_decoding_message_size(64 << 20),
            img: ImageServiceClient::new(ch).max_decoding_message_size(64 << 20),
        })
    }
}

fn call(op: &'static str) -> impl FnOnce(tonic::Status) -> CriError {
    move |status| CriError { op, status }
}

impl Runtime for GrpcRuntime {
    async fn version(&self) -> CriResult<cri::VersionResponse> {
        Ok(self.rt.clone().version(cri::VersionRequest::default()).await.map_err(call("Version"))?.into_inner())
    }

    async fn run_pod_sandbox(&self, config: cri::PodSandboxConfig) -> CriResult<String> {
        let req = cri::RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() };
        Ok(self.rt.clone().run_pod_sandbox(req).await.map_err(call("RunPodSandbox"))?.into_inner().pod_sandbox_id)
    }

    async fn stop_pod_sandbox(&self, id: &str) -> CriResult<()> {
        self.rt
            .clone()
            .stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.into() })
            .await
            .map_err(call("StopPodSandbox"))?;
        Ok(())
    }

    async fn remove_pod_sandbox(&self, id: &str) -> CriResult<()> {
        self.rt
            .clone()
            .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id.into() })
            .await
            .map_err(call("RemovePodSandbox"))?;
        Ok(())
    }

    async fn pod_sandbox_status(&self, id: &str) -> CriResult<cri::PodSandboxStatus> {
        let r = self
            .rt
            .clone()
            .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: false })
            .await
            .map_err(call("PodSandboxStatus"))?;
        r.into_inner()
            .status
            .ok_or_else(|| CriError::new("PodSandboxStatus", tonic::Code::Internal, "no status in the answer"))
    }

    async fn list_pod_sandboxes(&self, labels: HashMap<String, String>) -> CriResult<Vec<cri::PodSandbox>> {
        let filter = cri::PodSandboxFilter { label_selector: labels, ..Default::default() };
        Ok(self
            .rt
            .clone()
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: Some(filter) })
            .await
            .map_err(call("ListPodSandbox"))?
            .into_inner()
            .items)
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: cri::ContainerConfig,
        sandbox: cri::PodSandboxConfig,
    ) -> CriResult<String> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.into(),
            config: Some(config),
            sandbox_config: Some(sandbox),
        };
        Ok(self.rt.clone().create_container(req).await.map_err(call("CreateContainer"))?.into_inner().container_id)
    }

    async fn start_container(&self, id: &str) -> CriResult<()> {
        self.rt
            .clone()
            .start_container(cri::StartContainerRequest { container_id: id.into() })
            .await
            .map_err(call("StartContainer"))?;
        Ok(())
    }

    async fn stop_container(&self, id: &str, timeout_secs: i64) -> CriResult<()> {
        self.rt
            .clone()
            .stop_container(cri::StopContainerRequest { container_id: id.into(), timeout: timeout_secs })
            .await
            .map_err(call("StopContainer"))?;
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> CriResult<()> {
        self.rt
            .clone()
            .remove_container(cri::RemoveContainerRequest { container_id: id.into() })
            .await
            .map_err(call("RemoveContainer"))?;
        Ok(())
    }

    async fn list_containers(&self, labels: HashMap<String, String>) -> CriResult<Vec<cri::Container>> {
        let filter = cri::ContainerFilter { label_selector: labels, ..Default::default() };
        Ok(self
            .rt
            .clone()
            .list_containers(cri::ListContainersRequest { filter: Some(filter) })
            .await
            .map_err(call("ListContainers"))?
            .into_inner()
            .containers)
    }

    async fn container_status(&self, id: &str) -> CriResult<cri::ContainerStatus> {
        let r = self
            .rt
            .clone()
            .container_status(cri::ContainerStatusRequest { container_id: id.into(), verbose: false })
            .await
            .map_err(call("ContainerStatus"))?;
        r.into_inner()
            .status
            .ok_or_else(|| CriError::new("ContainerStatus", tonic::Code::Internal, "no status in the answer"))
    }

    async fn exec_sync(&self, id: &str, cmd: Vec<String>, timeout_secs: i64) -> CriResult<ExecResult> {
        let r = self
            .rt
            .clone()
            .exec_sync(cri::ExecSyncRequest { container_id: id.into(), cmd, timeout: timeout_secs })
            .await
            .map_err(call("ExecSync"))?
            .into_inner();
        Ok(ExecResult { exit_code: r.exit_code, stdout: r.stdout, stderr: r.stderr })
    }

    async fn exec_url(&self, id: &str, cmd: Vec<String>, o: StreamOptions) -> CriResult<String> {
        let req = cri::ExecRequest {
            container_id: id.into(),
            cmd,
            tty: o.tty,
            stdin: o.stdin,
            stdout: o.stdout,
            stderr: o.stderr && !o.tty,
        };
        Ok(self.rt.clone().exec(req).await.map_err(call("Exec"))?.into_inner().url)
    }

    async fn attach_url(&self, id: &str, o: StreamOptions) -> CriResult<String> {
        let req = cri::AttachRequest {
            container_id: id.into(),
            tty: o.tty,
            stdin: o.stdin,
            stdout: o.stdout,
            stderr: o.stderr && !o.tty,
        };
        Ok(self.rt.clone().attach(req).await.map_err(call("Attach"))?.into_inner().url)
    }

    async fn port_forward_url(&self, sandbox_id: &str, ports: Vec<i32>) -> CriResult<String> {
        let req = cri::PortForwardRequest { pod_sandbox_id: sandbox_id.into(), port: ports };
        Ok(self.rt.clone().port_forward(req).await.map_err(call("PortForward"))?.into_inner().url)
    }

    async fn image_id(&self, image: &str) -> CriResult<Option<String>> {
        let req = cri::ImageStatusRequest {
            image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
            verbose: false,
        };
        Ok(self.img.clone().image_status(req).await.map_err(call("ImageStatus"))?.into_inner().image.map(|i| i.id))
    }

    async fn pull_image(
        &self,
        image: &str,
        auth: Option<cri::AuthConfig>,
        sandbox: Option<cri::PodSandboxConfig>,
    ) -> CriResult<String> {
        let req = cri::PullImageRequest {
            image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
            auth,
            sandbox_config: sandbox,
        };
        Ok(self.img.clone().pull_image(req).await.map_err(call("PullImage"))?.into_inner().image_ref)
    }

    async fn list_pod_sandbox_stats(&self) -> CriResult<Vec<cri::PodSandboxStats>> {
        let r = self
            .rt
            .clone()
            .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
            .await
            .map_err(call("ListPodSandboxStats"))?;
        Ok(r.into_inner().stats)
    }

    async fn list_container_stats(&self) -> CriResult<Vec<cri::ContainerStats>> {
        let r = self
            .rt
            .clone()
            .list_container_stats(cri::ListContainerStatsRequest { filter: None })
            .await
            .map_err(call("ListContainerStats"))?;
        Ok(r.into_inner().stats)
    }

    async fn image_fs_info(&self) -> CriResult<cri::ImageFsInfoResponse> {
        Ok(self.img.clone().image_fs_info(cri::ImageFsInfoRequest {}).await.map_err(call("ImageFsInfo"))?.into_inner())
    }

    async fn list_images(&self) -> CriResult<Vec<cri::Image>> {
        Ok(self
            .img
            .clone()
            .list_images(cri::ListImagesRequest { filter: None })
            .await
            .map_err(call("ListImages"))?
            .into_inner()
            .images)
    }

    async fn remove_image(&self, image: &str) -> CriResult<()> {
        let req = cri::RemoveImageRequest { image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }) };
        self.img.clone().remove_image(req).await.map_err(call("RemoveImage"))?;
        Ok(())
    }
}
