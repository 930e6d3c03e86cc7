//! The generated CRI RuntimeService server and client, and the ImageService client, talk to each
//! other over a unix socket the way berth-shim and berth-agent will.

use std::path::PathBuf;
use std::pin::Pin;

use berth_proto::runtime::v1::image_service_client::ImageServiceClient;
use berth_proto::runtime::v1::runtime_service_client::RuntimeServiceClient;
use berth_proto::runtime::v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use berth_proto::runtime::v1::*;
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::Stream;
use tonic::transport::{Channel, Endpoint, Server, Uri};
use tonic::{Code, Request, Response, Status};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Answers Version; every other RPC is `Status::unimplemented`.
struct VersionOnly;

/// Implements `RuntimeService` for `VersionOnly`: tonic's trait requires every RPC.
macro_rules! version_only_runtime_service {
    (
        unary { $($m:ident: $req:ident => $resp:ident;)* }
        stream { $($sm:ident, $st:ident: $sreq:ident => $sresp:ident;)* }
    ) => {
        #[tonic::async_trait]
        impl RuntimeService for VersionOnly {
            async fn version(
                &self,
                request: Request<VersionRequest>,
            ) -> Result<Response<VersionResponse>, Status> {
                Ok(Response::new(VersionResponse {
                    version: request.into_inner().version,
                    runtime_name: "berth-test".into(),
                    runtime_version: "0.0.0".into(),
                    runtime_api_version: "v1".into(),
                }))
            }
            $(
                async fn $m(&self, _: Request<$req>) -> Result<Response<$resp>, Status> {
                    Err(Status::unimplemented(stringify!($m)))
                }
            )*
            $(
                type $st = BoxStream<$sresp>;
                async fn $sm(&self, _: Request<$sreq>) -> Result<Response<Self::$st>, Status> {
                    Err(Status::unimplemented(stringify!($sm)))
                }
            )*
        }
    };
}

version_only_runtime_service! {
    unary {
    run_pod_sandbox: RunPodSandboxRequest => RunPodSandboxResponse;
    stop_pod_sandbox: StopPodSandboxRequest => StopPodSandboxResponse;
    remove_pod_sandbox: RemovePodSandboxRequest => RemovePodSandboxResponse;
    pod_sandbox_status: PodSandboxStatusRequest => PodSandboxStatusResponse;
    list_pod_sandbox: ListPodSandboxRequest => ListPodSandboxResponse;
    create_container: CreateContainerRequest => CreateContainerResponse;
    start_container: StartContainerRequest => StartContainerResponse;
    stop_container: StopContainerRequest => StopContainerResponse;
    remove_container: RemoveContainerRequest => RemoveContainerResponse;
    list_containers: ListContainersRequest => ListContainersResponse;
    container_status: ContainerStatusRequest => ContainerStatusResponse;
    update_container_resources: UpdateContainerResourcesRequest => UpdateContainerResourcesResponse;
    reopen_container_log: ReopenContainerLogRequest => ReopenContainerLogResponse;
    exec_sync: ExecSyncRequest => ExecSyncResponse;
    exec: ExecRequest => ExecResponse;
    attach: AttachRequest => AttachResponse;
    port_forward: PortForwardRequest => PortForwardResponse;
    container_stats: ContainerStatsRequest => ContainerStatsResponse;
    list_container_stats: ListContainerStatsRequest => ListContainerStatsResponse;
    pod_sandbox_stats: PodSandboxStatsRequest => PodSandboxStatsResponse;
    list_pod_sandbox_stats: ListPodSandboxStatsRequest => ListPodSandboxStatsResponse;
    update_runtime_config: UpdateRuntimeConfigRequest => UpdateRuntimeConfigResponse;
    status: StatusRequest => StatusResponse;
    checkpoint_container: CheckpointContainerRequest => CheckpointContainerResponse;
    checkpoint_pod: CheckpointPodRequest => CheckpointPodResponse;
    restore_pod: RestorePodRequest => RestorePodResponse;
    list_metric_descriptors: ListMetricDescriptorsRequest => ListMetricDescriptorsResponse;
    list_pod_sandbox_metrics: ListPodSandboxMetricsRequest => ListPodSandboxMetricsResponse;
    runtime_config: RuntimeConfigRequest => RuntimeConfigResponse;
    update_pod_sandbox_resources: UpdatePodSandboxResourcesRequest => UpdatePodSandboxResourcesResponse;
    }
    stream {
    stream_pod_sandboxes, StreamPodSandboxesStream: StreamPodSandboxesRequest => StreamPodSandboxesResponse;
    stream_containers, StreamContainersStream: StreamContainersRequest => StreamContainersResponse;
    stream_container_stats, StreamContainerStatsStream: StreamContainerStatsRequest => StreamContainerStatsResponse;
    stream_pod_sandbox_stats, StreamPodSandboxStatsStream: StreamPodSandboxStatsRequest => StreamPodSandboxStatsResponse;
    get_container_events, GetContainerEventsStream: GetEventsRequest => ContainerEventResponse;
    stream_pod_sandbox_metrics, StreamPodSandboxMetricsStream: StreamPodSandboxMetricsRequest => StreamPodSandboxMetricsResponse;
    }
}

/// tonic's unix-socket client pattern: the URI is a placeholder, the connector dials the socket.
async fn uds_channel(path: PathBuf) -> Channel {
    Endpoint::try_from("http://[::]:50051")
        .expect("static URI")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .expect("connect over the unix socket")
}

#[tokio::test]
async fn runtime_service_server_and_clients_over_unix_socket() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sock = dir.path().join("cri.sock");
    let listener = UnixListener::bind(&sock).expect("bind unix socket");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder().add_service(RuntimeServiceServer::new(VersionOnly)).serve_with_incoming_shutdown(
            UnixListenerStream::new(listener),
            async {
                let _ = stop_rx.await;
            },
        ),
    );

    let channel = uds_channel(sock).await;
    let mut runtime = RuntimeServiceClient::new(channel.clone());
    let version = runtime.version(VersionRequest { version: "v1".into() }).await.expect("Version").into_inner();
    assert_eq!(version.version, "v1");
    assert_eq!(version.runtime_name, "berth-test");
    assert_eq!(version.runtime_api_version, "v1");

    let status = runtime.status(StatusRequest { verbose: false }).await.expect_err("Status is not implemented");
    assert_eq!(status.code(), Code::Unimplemented);

    let status = runtime
        .stream_containers(StreamContainersRequest::default())
        .await
        .expect_err("StreamContainers is not implemented");
    assert_eq!(status.code(), Code::Unimplemented);

    // No ImageService is served: tonic's router answers Unimplemented for the unknown service.
    let status = ImageServiceClient::new(channel)
        .list_images(ListImagesRequest::default())
        .await
        .expect_err("ImageService is not served");
    assert_eq!(status.code(), Code::Unimplemented);

    stop_tx.send(()).expect("server still running");
    server.await.expect("server task").expect("server exits cleanly");
}
