//! The tonic services: RuntimeService and ImageService mapped onto [`Shim`]'s methods. The one
//! place a [`CriError`] becomes a gRPC status.

use std::pin::Pin;
use std::sync::Arc;

use berth_proto::runtime::v1 as cri;
use berth_proto::runtime::v1::image_service_server::ImageService;
use berth_proto::runtime::v1::runtime_service_server::RuntimeService;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{CriError, Shim};

/// Items per message of the streaming list RPCs (well under gRPC's 4 MiB default).
const STREAM_CHUNK: usize = 256;

type RpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

pub fn to_status(e: CriError) -> Status {
    let message = crate::error_chain(&e);
    match e {
        CriError::InvalidArgument(_) | CriError::Spec(crate::oci::SpecError::Invalid { .. }) => {
            Status::invalid_argument(message)
        }
        CriError::NotFound(_) => Status::not_found(message),
        CriError::AlreadyExists(_) => Status::already_exists(message),
        CriError::FailedPrecondition(_) => Status::failed_precondition(message),
        CriError::Unimplemented(_) => Status::unimplemented(message),
        CriError::DeadlineExceeded(_) => Status::deadline_exceeded(message),
        _ => {
            tracing::warn!(error = %message, "RPC failed");
            Status::internal(message)
        }
    }
}

type R<T> = Result<Response<T>, Status>;

fn ok<T>(v: T) -> R<T> {
    Ok(Response::new(v))
}

fn chunked<T: Send + 'static, M: Send + 'static>(items: Vec<T>, wrap: fn(Vec<T>) -> M) -> RpcStream<M> {
    let mut chunks: Vec<M> = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        chunks.push(wrap(items.by_ref().take(STREAM_CHUNK).collect()));
    }
    if chunks.is_empty() {
        chunks.push(wrap(Vec::new()));
    }
    Box::pin(tokio_stream::iter(chunks.into_iter().map(Ok)))
}

/// Runs a state-changing operation on a task of its own and waits for it. A client that goes
/// away mid-call (an agent killed with SIGKILL) drops the RPC's future; the operation must
/// still finish, or records, monitors and processes are left half-made.
async fn detached<T: Send + 'static>(
    op: impl std::future::Future<Output = Result<T, CriError>> + Send + 'static,
) -> Result<T, Status> {
    match tokio::spawn(op).await {
        Ok(r) => r.map_err(to_status),
        Err(e) => Err(Status::internal(format!("the operation's task failed: {e}"))),
    }
}

/// The RuntimeService + ImageService server over one shared [`Shim`].
#[derive(Clone)]
pub struct Service(pub Arc<Shim>);

#[tonic::async_trait]
impl RuntimeService for Service {
    async fn version(&self, _: Request<cri::VersionRequest>) -> R<cri::VersionResponse> {
        ok(self.0.version())
    }

    async fn run_pod_sandbox(&self, r: Request<cri::RunPodSandboxRequest>) -> R<cri::RunPodSandboxResponse> {
        let shim = self.0.clone();
        let pod_sandbox_id = detached(async move { shim.run_pod_sandbox(r.into_inner()).await }).await?;
        ok(cri::RunPodSandboxResponse { pod_sandbox_id })
    }

    async fn stop_pod_sandbox(&self, r: Request<cri::StopPodSandboxRequest>) -> R<cri::StopPodSandboxResponse> {
        let shim = self.0.clone();
        detached(async move { shim.stop_pod_sandbox(&r.into_inner().pod_sandbox_id).await }).await?;
        ok(cri::StopPodSandboxResponse {})
    }

    async fn remove_pod_sandbox(&self, r: Request<cri::RemovePodSandboxRequest>) -> R<cri::RemovePodSandboxResponse> {
        let shim = self.0.clone();
        detached(async move { shim.remove_pod_sandbox(&r.into_inner().pod_sandbox_id).await }).await?;
        ok(cri::RemovePodSandboxResponse {})
    }

    async fn pod_sandbox_status(&self, r: Request<cri::PodSandboxStatusRequest>) -> R<cri::PodSandboxStatusResponse> {
        let r = r.into_inner();
        self.0.pod_sandbox_status(&r.pod_sandbox_id, r.verbose).map(Response::new).map_err(to_status)
    }

    async fn list_pod_sandbox(&self, r: Request<cri::ListPodSandboxRequest>) -> R<cri::ListPodSandboxResponse> {
        ok(cri::ListPodSandboxResponse { items: self.0.list_pod_sandbox(r.into_inner().filter) })
    }

    type StreamPodSandboxesStream = RpcStream<cri::StreamPodSandboxesResponse>;
    async fn stream_pod_sandboxes(
        &self,
        r: Request<cri::StreamPodSandboxesRequest>,
    ) -> R<Self::StreamPodSandboxesStream> {
        ok(chunked(self.0.list_pod_sandbox(r.into_inner().filter), |pod_sandboxes| cri::StreamPodSandboxesResponse {
            pod_sandboxes,
        }))
    }

    async fn create_container(&self, r: Request<cri::CreateContainerRequest>) -> R<cri::CreateContainerResponse> {
        let shim = self.0.clone();
        let container_id = detached(async move { shim.create_container(r.into_inner()).await }).await?;
        ok(cri::CreateContainerResponse { container_id })
    }

    async fn start_container(&self, r: Request<cri::StartContainerRequest>) -> R<cri::StartContainerResponse> {
        let shim = self.0.clone();
        detached(async move { shim.start_container(&r.into_inner().container_id).await }).await?;
        ok(cri::StartContainerResponse {})
    }

    async fn stop_container(&self, r: Request<cri::StopContainerRequest>) -> R<cri::StopContainerResponse> {
        let (shim, r) = (self.0.clone(), r.into_inner());
        detached(async move { shim.stop_container(&r.container_id, r.timeout).await }).await?;
        ok(cri::StopContainerResponse {})
    }

    async fn remove_container(&self, r: Request<cri::RemoveContainerRequest>) -> R<cri::RemoveContainerResponse> {
        let shim = self.0.clone();
        detached(async move { shim.remove_container(&r.into_inner().container_id).await }).await?;
        ok(cri::RemoveContainerResponse {})
    }

    async fn list_containers(&self, r: Request<cri::ListContainersRequest>) -> R<cri::ListContainersResponse> {
        ok(cri::ListContainersResponse { containers: self.0.list_containers(r.into_inner().filter) })
    }

    type StreamContainersStream = RpcStream<cri::StreamContainersResponse>;
    async fn stream_containers(&self, r: Request<cri::StreamContainersRequest>) -> R<Self::StreamContainersStream> {
        ok(chunked(self.0.list_containers(r.into_inner().filter), |containers| cri::StreamContainersResponse {
            containers,
        }))
    }

    async fn container_status(&self, r: Request<cri::ContainerStatusRequest>) -> R<cri::ContainerStatusResponse> {
        let r = r.into_inner();
        self.0.container_status(&r.container_id, r.verbose).map(Response::new).map_err(to_status)
    }

    async fn update_container_resources(
        &self,
        r: Request<cri::UpdateContainerResourcesRequest>,
    ) -> R<cri::UpdateContainerResourcesResponse> {
        self.0.update_container_resources(r.into_inner()).map_err(to_status)?;
        ok(cri::UpdateContainerResourcesResponse {})
    }

    async fn reopen_container_log(
        &self,
        r: Request<cri::ReopenContainerLogRequest>,
    ) -> R<cri::ReopenContainerLogResponse> {
        self.0.reopen_container_log(&r.into_inner().container_id).await.map_err(to_status)?;
        ok(cri::ReopenContainerLogResponse {})
    }

    async fn exec_sync(&self, r: Request<cri::ExecSyncRequest>) -> R<cri::ExecSyncResponse> {
        self.0.exec_sync(r.into_inner()).await.map(Response::new).map_err(to_status)
    }

    async fn exec(&self, r: Request<cri::ExecRequest>) -> R<cri::ExecResponse> {
        self.0.exec_url(r.into_inner()).await.map(Response::new).map_err(to_status)
    }

    async fn attach(&self, r: Request<cri::AttachRequest>) -> R<cri::AttachResponse> {
        self.0.attach_url(r.into_inner()).await.map(Response::new).map_err(to_status)
    }

    async fn port_forward(&self, r: Request<cri::PortForwardRequest>) -> R<cri::PortForwardResponse> {
        self.0.port_forward_url(r.into_inner()).await.map(Response::new).map_err(to_status)
    }

    async fn container_stats(&self, r: Request<cri::ContainerStatsRequest>) -> R<cri::ContainerStatsResponse> {
        let stats = self.0.container_stats(&r.into_inner().container_id).map_err(to_status)?;
        ok(cri::ContainerStatsResponse { stats: Some(stats) })
    }

    async fn list_container_stats(
        &self,
        r: Request<cri::ListContainerStatsRequest>,
    ) -> R<cri::ListContainerStatsResponse> {
        ok(cri::ListContainerStatsResponse { stats: self.0.list_container_stats(r.into_inner().filter) })
    }

    type StreamContainerStatsStream = RpcStream<cri::StreamContainerStatsResponse>;
    async fn stream_container_stats(
        &self,
        r: Request<cri::StreamContainerStatsRequest>,
    ) -> R<Self::StreamContainerStatsStream> {
        ok(chunked(self.0.list_container_stats(r.into_inner().filter), |container_stats| {
            cri::StreamContainerStatsResponse { container_stats }
        }))
    }

    async fn pod_sandbox_stats(&self, r: Request<cri::PodSandboxStatsRequest>) -> R<cri::PodSandboxStatsResponse> {
        let stats = self.0.pod_sandbox_stats(&r.into_inner().pod_sandbox_id).map_err(to_status)?;
        ok(cri::PodSandboxStatsResponse { stats: Some(stats) })
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> R<cri::ListPodSandboxStatsResponse> {
        ok(cri::ListPodSandboxStatsResponse { stats: self.0.list_pod_sandbox_stats(r.into_inner().filter) })
    }

    type StreamPodSandboxStatsStream = RpcStream<cri::StreamPodSandboxStatsResponse>;
    async fn stream_pod_sandbox_stats(
        &self,
        r: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> R<Self::StreamPodSandboxStatsStream> {
        ok(chunked(self.0.list_pod_sandbox_stats(r.into_inner().filter), |pod_sandbox_stats| {
            cri::StreamPodSandboxStatsResponse { pod_sandbox_stats }
        }))
    }

    async fn update_runtime_config(
        &self,
        r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> R<cri::UpdateRuntimeConfigResponse> {
        self.0.update_runtime_config(r.into_inner());
        ok(cri::UpdateRuntimeConfigResponse {})
    }

    async fn status(&self, r: Request<cri::StatusRequest>) -> R<cri::StatusResponse> {
        ok(self.0.status(r.into_inner().verbose))
    }

    async fn checkpoint_container(
        &self,
        _: Request<cri::CheckpointContainerRequest>,
    ) -> R<cri::CheckpointContainerResponse> {
        Err(Status::unimplemented("berth-shim does not checkpoint containers (no CRIU support)"))
    }

    async fn checkpoint_pod(&self, _: Request<cri::CheckpointPodRequest>) -> R<cri::CheckpointPodResponse> {
        Err(Status::unimplemented("berth-shim does not checkpoint pods (no CRIU support)"))
    }

    async fn restore_pod(&self, _: Request<cri::RestorePodRequest>) -> R<cri::RestorePodResponse> {
        Err(Status::unimplemented("berth-shim does not restore pods (no CRIU support)"))
    }

    type GetContainerEventsStream = RpcStream<cri::ContainerEventResponse>;
    async fn get_container_events(&self, _: Request<cri::GetEventsRequest>) -> R<Self::GetContainerEventsStream> {
        let mut rx = self.0.subscribe();
        let (tx, out) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        if tx.send(Ok(ev)).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "a container event subscriber fell behind")
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out)))
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<cri::ListMetricDescriptorsRequest>,
    ) -> R<cri::ListMetricDescriptorsResponse> {
        ok(cri::ListMetricDescriptorsResponse { descriptors: Vec::new() })
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> R<cri::ListPodSandboxMetricsResponse> {
        ok(cri::ListPodSandboxMetricsResponse { pod_metrics: Vec::new() })
    }

    type StreamPodSandboxMetricsStream = RpcStream<cri::StreamPodSandboxMetricsResponse>;
    async fn stream_pod_sandbox_metrics(
        &self,
        _: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> R<Self::StreamPodSandboxMetricsStream> {
        ok(chunked(Vec::new(), |pod_sandbox_metrics| cri::StreamPodSandboxMetricsResponse { pod_sandbox_metrics }))
    }

    async fn runtime_config(&self, _: Request<cri::RuntimeConfigRequest>) -> R<cri::RuntimeConfigResponse> {
        ok(self.0.runtime_config())
    }

    async fn update_pod_sandbox_resources(
        &self,
        r: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> R<cri::UpdatePodSandboxResourcesResponse> {
        let r = r.into_inner();
        if self.0.store.resolve_sandbox(&r.pod_sandbox_id).is_none() {
            return Err(Status::not_found(format!("pod sandbox {:?} not found", r.pod_sandbox_id)));
        }
        // Containers carry their own limits; the pod cgroup belongs to whoever named it as parent.
        ok(cri::UpdatePodSandboxResourcesResponse {})
    }
}

#[tonic::async_trait]
impl ImageService for Service {
    async fn list_images(&self, r: Request<cri::ListImagesRequest>) -> R<cri::ListImagesResponse> {
        ok(cri::ListImagesResponse { images: self.0.list_images(r.into_inner().filter) })
    }

    type StreamImagesStream = RpcStream<cri::StreamImagesResponse>;
    async fn stream_images(&self, r: Request<cri::StreamImagesRequest>) -> R<Self::StreamImagesStream> {
        ok(chunked(self.0.list_images(r.into_inner().filter), |images| cri::StreamImagesResponse { images }))
    }

    async fn image_status(&self, r: Request<cri::ImageStatusRequest>) -> R<cri::ImageStatusResponse> {
        let r = r.into_inner();
        self.0.image_status(r.image.unwrap_or_default(), r.verbose).map(Response::new).map_err(to_status)
    }

    async fn pull_image(&self, r: Request<cri::PullImageRequest>) -> R<cri::PullImageResponse> {
        self.0.pull_image(r.into_inner()).await.map(Response::new).map_err(to_status)
    }

    async fn remove_image(&self, r: Request<cri::RemoveImageRequest>) -> R<cri::RemoveImageResponse> {
        self.0.remove_image(r.into_inner().image.unwrap_or_default()).await.map_err(to_status)?;
        ok(cri::RemoveImageResponse {})
    }

    async fn image_fs_info(&self, _: Request<cri::ImageFsInfoRequest>) -> R<cri::ImageFsInfoResponse> {
        self.0.image_fs_info().map(Response::new).map_err(to_status)
    }
}
