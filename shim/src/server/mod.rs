//! The CRI server: shared state and the helpers every RPC uses. One file per group of RPCs
//! (sandbox, container, exec, stats, runtime info, images); `service.rs` maps the tonic traits
//! onto them and is the one place errors become `tonic::Status`.

mod container;
mod convert;
mod exec;
mod images;
mod runtime_info;
mod sandbox;
pub mod service;
mod specs;
mod stats;
mod streams;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use berth_proto::runtime::v1 as cri;
use tokio::sync::broadcast;

use crate::cni::Cni;
use crate::config::Config;
use crate::monitor::{MonitorClient, MonitorError};
use crate::store::{ContainerState, Store, StoreError};

/// Every failure an RPC can report; mapped to a gRPC code in `service.rs`.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state store")]
    Store(#[from] StoreError),
    #[error("pod monitor")]
    Monitor(#[from] MonitorError),
    #[error("network")]
    Cni(#[from] crate::cni::CniError),
    #[error("container runtime")]
    Runtime(#[from] berth_runtime::container::ContainerError),
    #[error("container spec")]
    Spec(#[from] crate::oci::SpecError),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Internal(String),
}

pub type CriResult<T> = Result<T, CriError>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CriError {
    let what = what.into();
    move |source| CriError::Io { what, source }
}

/// The shim's state, shared by all RPCs.
pub struct Shim {
    pub cfg: Config,
    pub store: Store,
    pub cni: Cni,
    pub images: crate::image::ImageStore,
    pub monitor_bin: PathBuf,
    pub pause_bin: PathBuf,
    pub host: crate::oci::Host,
    /// Set when this process lacks CAP_SYS_RESOURCE: the lowest oom_score_adj it may give.
    pub oom_score_adj_floor: Option<i32>,
    /// This process's capability bounding set (a container cannot get more).
    pub bounding_caps: u64,
    events: broadcast::Sender<cri::ContainerEventResponse>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Monitors spawned by this process, reaped in the background when they exit.
    pub pod_cidr: Mutex<String>,
    streaming: std::sync::OnceLock<crate::streaming::Server>,
}

impl Shim {
    /// Opens the stores and finishes what a killed predecessor left half-done (see
    /// [`Shim::recover`]) before any request is served.
    pub async fn new(cfg: Config, monitor_bin: PathBuf, pause_bin: PathBuf) -> CriResult<Arc<Shim>> {
        for dir in
            [&cfg.state_dir, &cfg.run_dir, &cfg.pods_dir(), &cfg.runtime_root(), &cfg.netns_dir(), &cfg.cni.cache_dir]
        {
            std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        }
        let store = Store::open(&cfg.state_dir)?;
        let registries = crate::image::RegistriesConfig::load(&cfg.registries)
            .map_err(|e| CriError::Internal(format!("{}: {}", cfg.registries.display(), e.chain())))?;
        let images =
            crate::image::ImageStore::open(&cfg.image_dir, registries).map_err(|e| CriError::Internal(e.chain()))?;
        let longest = cfg.pods_dir().join("f".repeat(64)).join(crate::monitor::SOCKET);
        if longest.as_os_str().len() >= 108 {
            return Err(CriError::InvalidArgument(format!(
                "run_dir {} is too long: pod sockets ({} bytes) must stay under 108 bytes",
                cfg.run_dir.display(),
                longest.as_os_str().len()
            )));
        }
        let cni = Cni {
            conf_dir: cfg.cni.conf_dir.clone(),
            bin_dirs: cfg.cni.bin_dirs.clone(),
            cache_dir: cfg.cni.cache_dir.clone(),
        };
        // berth-runtime supports `rro` (mount_setattr), so recursive read-only mounts are on.
        let host = crate::oci::Host {
            default_cgroup_parent: cfg.cgroup_parent.clone(),
            rro_mounts: true,
            ..crate::oci::Host::detect()
        };
        let (events, _) = broadcast::channel(1024);
        let shim = Arc::new(Shim {
            cfg,
            store,
            cni,
            images,
            monitor_bin,
            pause_bin,
            host,
            oom_score_adj_floor: oom_score_adj_floor(),
            bounding_caps: proc_status_mask("CapBnd:").unwrap_or(u64::MAX),
            events,
            locks: Mutex::new(HashMap::new()),
            pod_cidr: Mutex::new(String::new()),
            streaming: std::sync::OnceLock::new(),
        });
        shim.recover().await;
        Ok(shim)
    }

    /// Serialises operations on one object (sandbox or container id).
    pub async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = self.locks.lock().expect("lock").entry(id.to_string()).or_default().clone();
        m.lock_owned().await
    }

    pub fn pod_dir(&self, sandbox_id: &str) -> PathBuf {
        self.cfg.pods_dir().join(sandbox_id)
    }

    pub fn bundle_dir(&self, id: &str) -> PathBuf {
        self.cfg.run_dir.join("bundles").join(id)
    }

    pub fn monitor(&self, sandbox_id: &str) -> MonitorClient {
        MonitorClient::new(&self.pod_dir(sandbox_id))
    }

    pub fn runtime_root(&self) -> berth_runtime::state::Root {
        berth_runtime::state::Root::new(self.cfg.runtime_root())
    }

    pub fn emit(
        &self,
        container_id: &str,
        kind: cri::ContainerEventType,
        sandbox: Option<cri::PodSandboxStatus>,
        containers: Vec<cri::ContainerStatus>,
    ) {
        let _ = self.events.send(cri::ContainerEventResponse {
            container_id: container_id.to_string(),
            container_event_type: kind as i32,
            created_at: crate::monitor::proto::now_nanos(),
            pod_sandbox_status: sandbox,
            containers_statuses: containers,
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<cri::ContainerEventResponse> {
        self.events.subscribe()
    }

    /// After a restart:
    /// - sandboxes whose pod directory vanished (a reboot) are NotReady and their running
    ///   containers are marked exited with an unknown code;
    /// - a container whose CreateContainer was cut short (its record is written first, its pid
    ///   last) is rolled back: the caller never got its id and will create it again;
    /// - a container recorded Running whose start never reached the runtime (the shim died
    ///   between recording it and asking the monitor) is Created again, so StartContainer can
    ///   be repeated instead of the container waiting forever.
    async fn recover(self: &Arc<Self>) {
        for sb in self.store.sandboxes() {
            if sb.record.state == crate::store::SandboxState::Ready
                && !self.pod_dir(&sb.record.id).join(crate::monitor::SOCKET).exists()
            {
                tracing::warn!(sandbox = %sb.record.id, "pod monitor is gone (reboot?): sandbox is NotReady");
                let _ = self.store.update_sandbox(&sb.record.id, |r| r.state = crate::store::SandboxState::NotReady);
            }
        }
        let root = self.runtime_root();
        for c in self.store.containers() {
            let Some(c) = self.refresh_container(&c.record.id) else { continue };
            let id = &c.record.id;
            match c.record.state {
                ContainerState::Created if c.record.pid == 0 => {
                    tracing::warn!(container = %id, "CreateContainer was interrupted: rolling it back");
                    if let Err(e) = self.remove_container_locked(id).await {
                        tracing::warn!(container = %id, error = %e, "rolling back an interrupted create");
                    }
                }
                ContainerState::Running
                    if berth_runtime::container::Loaded::load(&root, id)
                        .is_ok_and(|l| l.status == berth_runtime::state::Status::Created) =>
                {
                    tracing::warn!(container = %id, "StartContainer was interrupted before the start: the container is Created again");
                    let _ = self.store.update_container(id, |r| {
                        r.state = ContainerState::Created;
                        r.started_at = 0;
                    });
                }
                _ => {}
            }
        }
    }
}

/// A hex capability mask from /proc/self/status ("CapEff:", "CapBnd:").
fn proc_status_mask(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

fn oom_score_adj_floor() -> Option<i32> {
    let cap_eff = proc_status_mask("CapEff:")?;
    const CAP_SYS_RESOURCE: u32 = 24;
    if cap_eff & (1 << CAP_SYS_RESOURCE) != 0 {
        return None;
    }
    std::fs::read_to_string("/proc/self/oom_score_adj").ok()?.trim().parse().ok()
}

/// A random 64-hex-digit id, as containerd makes them.
pub fn new_id() -> String {
    let mut buf = [0u8; 32];
    // SAFETY: getrandom fills the local buffer of the given length.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        let t = crate::monitor::proto::now_nanos() as u128 ^ (std::process::id() as u128) << 64;
        buf[..16].copy_from_slice(&t.to_le_bytes());
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Does `labels` contain every pair of `selector`?
pub fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
