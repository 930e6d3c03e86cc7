//! A CRI client over a unix socket (tonic needs a placeholder URI and a connector), and a test
//! environment: berth-shim in a network namespace with a registry holding busybox.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_proto::runtime::v1::image_service_client::ImageServiceClient;
use berth_proto::runtime::v1::runtime_service_client::RuntimeServiceClient;
use berth_proto::runtime::v1::*;
use tonic::transport::Channel;

use crate::netns::NetNs;
use crate::registry::Registry;
use crate::shim::{ShimOptions, ShimProcess};

pub use berth_agent::cri::unix_channel as channel;

/// Both CRI clients on one connection.
pub async fn connect(
    path: &Path,
) -> Result<(RuntimeServiceClient<Channel>, ImageServiceClient<Channel>), tonic::transport::Error> {
    let ch = channel(path).await?;
    Ok((RuntimeServiceClient::new(ch.clone()).max_decoding_message_size(64 << 20), ImageServiceClient::new(ch)))
}

/// A shim in its own network namespace with a registry holding busybox, and CRI clients.
pub struct Env {
    pub ns: NetNs,
    pub registry: Registry,
    pub shim: ShimProcess,
    pub rt: RuntimeServiceClient<Channel>,
    pub img: ImageServiceClient<Channel>,
    pub tmp: tempfile::TempDir,
    pub logs: PathBuf,
}

/// A short temp dir (pod sockets live below it and unix socket paths are limited to 108 bytes).
pub fn short_tempdir() -> tempfile::TempDir {
    let mut b = tempfile::Builder::new();
    // BERTH_KEEP_TMP=1 keeps logs and state of a failed run for reading.
    b.prefix("bs").disable_cleanup(std::env::var_os("BERTH_KEEP_TMP").is_some());
    b.tempdir_in("/tmp").expect("tempdir")
}

pub async fn env(name: &str, port: u16, subnet: &str, with_cni: bool) -> Env {
    let tmp = short_tempdir();
    let ns = NetNs::new(&format!("bs-{name}")).expect("netns");
    let registry = Registry::start(&ns, &tmp.path().join("reg"), port).expect("registry");
    registry.push_busybox(&ns, "library/busybox:latest", &["sh"]).expect("push busybox");
    let dir = tmp.path().join("s");
    ShimProcess::configure(&dir, &ShimOptions { name, registry: &registry.addr, subnet, with_cni }).expect("configure");
    let shim = ShimProcess::start(&ns, &dir).expect("start shim");
    let (rt, img) = connect(&shim.socket).await.expect("connect");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    Env { ns, registry, shim, rt, img, tmp, logs }
}

pub fn sandbox_config(name: &str, logs: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.display().to_string(),
        labels: HashMap::from([("app".into(), name.into())]),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

pub fn container_config(name: &str, cmd: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(ImageSpec { image: "busybox".into(), ..Default::default() }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        labels: HashMap::from([("c".into(), name.into())]),
        linux: Some(LinuxContainerConfig::default()),
        ..Default::default()
    }
}

impl Env {
    /// New clients for a restarted shim.
    pub async fn reconnect(&mut self) {
        let (rt, img) = connect(&self.shim.socket).await.expect("connecting to the restarted shim");
        self.rt = rt;
        self.img = img;
    }

    pub async fn pull(&mut self) -> String {
        let r = self
            .img
            .pull_image(PullImageRequest {
                image: Some(ImageSpec { image: "busybox".into(), ..Default::default() }),
                ..Default::default()
            })
            .await
            .expect("pull");
        r.into_inner().image_ref
    }

    pub async fn run_pod(&mut self, name: &str) -> (String, PodSandboxConfig) {
        let config = sandbox_config(name, &self.logs);
        let id = self
            .rt
            .run_pod_sandbox(RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", self.shim.log_tail()))
            .into_inner()
            .pod_sandbox_id;
        (id, config)
    }

    pub async fn create(&mut self, pod: &str, pod_config: &PodSandboxConfig, c: ContainerConfig) -> String {
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(c),
            sandbox_config: Some(pod_config.clone()),
        };
        self.rt
            .create_container(req)
            .await
            .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", self.shim.log_tail()))
            .into_inner()
            .container_id
    }

    pub async fn status(&mut self, id: &str) -> ContainerStatus {
        self.rt
            .container_status(ContainerStatusRequest { container_id: id.into(), verbose: false })
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("status")
    }

    pub async fn wait_exited(&mut self, id: &str) -> ContainerStatus {
        for _ in 0..200 {
            let st = self.status(id).await;
            if st.state == ContainerState::ContainerExited as i32 {
                return st;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("container {id} did not exit");
    }
}
