//! A CRI client over a unix socket (tonic needs a placeholder URI and a connector).

use std::path::{Path, PathBuf};

use berth_proto::runtime::v1::image_service_client::ImageServiceClient;
use berth_proto::runtime::v1::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

pub async fn channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    Endpoint::try_from("http://[::]:50051")
        .expect("static URI")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

/// Both CRI clients on one connection.
pub async fn connect(path: &Path) -> Result<(RuntimeServiceClient<Channel>, ImageServiceClient<Channel>), tonic::transport::Error> {
    let ch = channel(path).await?;
    Ok((RuntimeServiceClient::new(ch.clone()).max_decoding_message_size(64 << 20), ImageServiceClient::new(ch)))
}
