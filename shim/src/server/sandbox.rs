//! RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus, ListPodSandbox.
//!
//! A sandbox is a pod directory (shared files, /dev/shm, the monitor's socket and exit
//! records), a pinned network namespace with CNI attached, and the pod's UTS and IPC
//! namespaces: held by the pod's monitor itself, or, when the pod shares one PID namespace or
//! has a user namespace, by an infra process run through the monitor. Its record is on disk
//! before any of these exist, so a crash part-way leaves something Stop/Remove can clean up.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use berth_proto::runtime::v1 as cri;
use serde_json::json;

use super::{io, CriError, CriResult, Shim};
use crate::cni::Attachment;
use crate::monitor::MonitorClient;
use crate::monitor::Request;
use crate::podfiles::{self, PodFiles};
use crate::store::{Sandbox, SandboxRecord, SandboxState};

pub(crate) fn namespace_mode(config: &cri::PodSandboxConfig) -> cri::NamespaceOption {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

/// No process of the pod is PID 1 of a PID namespace shared by its containers (PID mode
/// CONTAINER or NODE): then the pod's monitor can hold its UTS and IPC namespaces and no infra
/// container is needed (a user namespace pod still has one: its namespaces are owned by it).
fn no_shared_pid_namespace(config: &cri::PodSandboxConfig) -> bool {
    let pid = namespace_mode(config).pid;
    pid == cri::NamespaceMode::Container as i32 || pid == cri::NamespaceMode::Node as i32
}

/// The pod asked for a user namespace of its own (userns_options mode POD).
pub(crate) fn pod_userns(config: &cri::PodSandboxConfig) -> bool {
    namespace_mode(config).userns_options.is_some_and(|u| u.mode == cri::NamespaceMode::Pod as i32)
}

pub(crate) fn host_network(config: &cri::PodSandboxConfig) -> bool {
    namespace_mode(config).network == cri::NamespaceMode::Node as i32
}

fn validate(config: &cri::PodSandboxConfig) -> CriResult<&cri::PodSandboxMetadata> {
    let md = config.metadata.as_ref().ok_or_else(|| CriError::InvalidArgument("config.metadata: required".into()))?;
    for (field, value) in [("name", &md.name), ("namespace", &md.namespace), ("uid", &md.uid)] {
        if value.is_empty() {
            return Err(CriError::InvalidArgument(format!("config.metadata.{field}: must not be empty")));
        }
    }
    Ok(md)
}

impl Shim {
    pub async fn run_pod_sandbox(self: &Arc<Self>, req: cri::RunPodSandboxRequest) -> CriResult<String> {
        let config = req.config.ok_or_else(|| CriError::InvalidArgument("config: required".into()))?;
        let md = validate(&config)?;
        let name = format!("{}_{}_{}_{}", md.name, md.namespace, md.uid, md.attempt);
        if let Some(other) = self.store.sandboxes().into_iter().find(|s| s.record.name == name) {
            return Err(CriError::AlreadyExists(format!("sandbox name {name:?} is reserved by {}", other.record.id)));
        }
        let id = super::new_id();
        let _guard = self.lock(&id).await;
        let host_net = host_network(&config);
        let cgroup_parent = config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| self.cfg.cgroup_parent.clone());
        let record = SandboxRecord {
            id: id.clone(),
            name,
            state: SandboxState::NotReady,
            created_at: crate::monitor::proto::now_nanos(),
            netns: (!host_net).then(|| self.cfg.netns_dir().join(&id)),
            ips: Vec::new(),
            infra_pid: 0,
            cgroup_parent,
            runtime_handler: req.runtime_handler.clone(),
            // Recorded before CNI ADD runs: a crash during or after it leaves a DEL to do, and
            // DEL of an attachment that never happened is success (CNI spec). One record
            // write (an fsync) fewer per pod than marking it after the ADD.
            network_attached: !host_net,
            held_by_monitor: !pod_userns(&config) && no_shared_pid_namespace(&config),
        };
        self.store.put_sandbox(Sandbox { record: record.clone(), config: config.clone() })?;
        match self.start_sandbox(&record, &config).await {
            Ok((pid, ips)) => {
                self.store.update_sandbox_this_boot(&id, |r| {
                    r.state = SandboxState::Ready;
                    r.infra_pid = pid;
                    r.ips = ips;
                })?;
                Ok(id)
            }
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %crate::error_chain(&e), "RunPodSandbox failed: rolling back");
                if let Err(e2) = self.teardown_sandbox(&id, true).await {
                    tracing::error!(sandbox = %id, error = %crate::error_chain(&e2), "rollback incomplete");
                }
                let _ = self.store.remove_sandbox(&id);
                Err(e)
            }
        }
    }

    /// Pod files, netns, monitor, infra process and CNI ADD (the last two concurrently).
    async fn start_sandbox(
        self: &Arc<Self>,
        record: &SandboxRecord,
        config: &cri::PodSandboxConfig,
    ) -> CriResult<(i32, Vec<String>)> {
        let id = &record.id;
        let dir = self.pod_dir(id);
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let files = PodFiles::in_dir(&dir);
        let host_net = host_network(config);
        let ns = namespace_mode(config);
        let hostname = if host_net { self.host.hostname.clone() } else { config.hostname.clone() };
        podfiles::write(&files, config, &hostname, host_net)
            .map_err(io("writing the pod's hosts, hostname and resolv.conf"))?;
        if ns.ipc != cri::NamespaceMode::Node as i32 {
            podfiles::mount_shm(&files.shm).map_err(io("mounting the pod's /dev/shm"))?;
        }
        // A pod with its own user namespace gets a network namespace owned by it, made by the
        // infra process and pinned afterwards; other pods' is pinned first, and CNI runs
        // while the infra starts.
        let userns = pod_userns(config);
        if let (Some(netns), false) = (&record.netns, userns) {
            let path = netns.clone();
            tokio::task::spawn_blocking(move || crate::netns::create(&path))
                .await
                .map_err(|e| CriError::Internal(e.to_string()))?
                .map_err(io("creating the pod network namespace"))?;
        }
        let (monitor, child) = MonitorClient::spawn(&self.monitor_bin, &dir, &self.cfg.runtime_root()).await?;
        tokio::spawn(async move {
            let mut child = child;
            let _ = child.wait().await;
        });
        let held = record.held_by_monitor;
        let bundle = self.write_sandbox_bundle(record, config)?;
        let infra = async {
            let request = if held {
                Request::Hold { bundle }
            } else {
                Request::Create { id: id.clone(), bundle, log_path: None, stdin: false, stdin_once: false, tty: false }
            };
            let pid = match monitor.call(&request).await? {
                crate::monitor::Response::Created { pid } => pid,
                other => return Err(CriError::Internal(format!("unexpected monitor answer {other:?}"))),
            };
            if !held {
                monitor.call(&Request::Start { id: id.clone() }).await?;
            }
            Ok::<i32, CriError>(pid)
        };
        let network = async {
            match &record.netns {
                None => Ok(Vec::new()),
                Some(netns) => {
                    let att = attachment(id, netns, config);
                    Ok::<_, CriError>(self.cni.add(&att).await?.ips)
                }
            }
        };
        let (pid, ips) = if userns {
            let pid = infra.await?;
            if let Some(netns) = &record.netns {
                let (src, dst) = (PathBuf::from(format!("/proc/{pid}/ns/net")), netns.clone());
                tokio::task::spawn_blocking(move || crate::netns::pin(&src, &dst))
                    .await
                    .map_err(|e| CriError::Internal(e.to_string()))?
                    .map_err(io("pinning the pod network namespace"))?;
            }
            (Ok(pid), network.await)
        } else {
            tokio::join!(infra, network)
        };
        Ok((pid?, ips?))
    }

    pub async fn stop_pod_sandbox(self: &Arc<Self>, id: &str) -> CriResult<()> {
        let Some(id) = self.store.resolve_sandbox(id) else { return Ok(()) };
        let _guard = self.lock(&id).await;
        for c in self.store.containers().into_iter().filter(|c| c.record.sandbox_id == id) {
            self.stop_container_locked(&c.record.id, 0).await?;
        }
        self.teardown_sandbox(&id, false).await?;
        self.store.update_sandbox(&id, |r| r.state = SandboxState::NotReady)?;
        Ok(())
    }

    /// Network DEL, infra stopped and deleted, netns and shm released. `all` also stops the
    /// monitor and removes the pod directory. Every step runs; the first error is returned.
    async fn teardown_sandbox(self: &Arc<Self>, id: &str, all: bool) -> CriResult<()> {
        let Some(sb) = self.store.sandbox(id) else { return Ok(()) };
        let mut first: Option<CriError> = None;
        if let (true, Some(netns)) = (sb.record.network_attached || all, &sb.record.netns) {
            match self.cni.del(&attachment(id, netns, &sb.config)).await {
                Ok(()) => {
                    self.store.update_sandbox(id, |r| r.network_attached = false)?;
                }
                Err(e) => {
                    first.get_or_insert(e.into());
                }
            }
        }
        if let Err(e) = self.kill_and_delete(id, id).await {
            first.get_or_insert(e);
        }
        if first.is_none() {
            if let Some(netns) = &sb.record.netns {
                if let Err(e) = crate::netns::remove(netns) {
                    first.get_or_insert(CriError::Io { what: format!("removing {}", netns.display()), source: e });
                }
            }
        }
        let dir = self.pod_dir(id);
        podfiles::unmount_shm(&PodFiles::in_dir(&dir).shm);
        if all {
            let monitor = self.monitor(id);
            if monitor.is_alive() {
                let _ = monitor.call(&Request::Shutdown).await;
            }
            let _ = std::fs::remove_dir_all(self.bundle_dir(id));
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    first.get_or_insert(CriError::Io { what: format!("removing {}", dir.display()), source: e });
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    pub async fn remove_pod_sandbox(self: &Arc<Self>, id: &str) -> CriResult<()> {
        let Some(id) = self.store.resolve_sandbox(id) else { return Ok(()) };
        let _guard = self.lock(&id).await;
        for c in self.store.containers().into_iter().filter(|c| c.record.sandbox_id == id) {
            self.remove_container_locked(&c.record.id).await?;
        }
        self.teardown_sandbox(&id, true).await?;
        self.store.remove_sandbox(&id)?;
        Ok(())
    }

    pub fn pod_sandbox_status(&self, id: &str, verbose: bool) -> CriResult<cri::PodSandboxStatusResponse> {
        let id = self
            .store
            .resolve_sandbox(id)
            .ok_or_else(|| CriError::NotFound(format!("pod sandbox {id:?} not found")))?;
        let sb = self.store.sandbox(&id).ok_or_else(|| CriError::NotFound(format!("pod sandbox {id:?} not found")))?;
        let status = sandbox_status(&sb);
        let mut info = HashMap::new();
        if verbose {
            let v = json!({
                "pid": sb.record.infra_pid,
                "netNamespacePath": sb.record.netns,
                "cgroupParent": sb.record.cgroup_parent,
                "podDir": self.pod_dir(&id),
                "runtimeHandler": sb.record.runtime_handler,
                "networkAttached": sb.record.network_attached,
            });
            info.insert("info".to_string(), v.to_string());
        }
        let containers_statuses = self
            .store
            .containers()
            .into_iter()
            .filter(|c| c.record.sandbox_id == id)
            .map(|c| super::convert::container_status(&c))
            .collect();
        Ok(cri::PodSandboxStatusResponse {
            status: Some(status),
            info,
            containers_statuses,
            timestamp: crate::monitor::proto::now_nanos(),
        })
    }

    pub fn list_pod_sandbox(&self, filter: Option<cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
        let f = filter.unwrap_or_default();
        let id = (!f.id.is_empty()).then(|| self.store.resolve_sandbox(&f.id).unwrap_or_default());
        self.store
            .sandboxes()
            .into_iter()
            .filter(|s| id.as_ref().is_none_or(|id| &s.record.id == id))
            .filter(|s| f.state.as_ref().is_none_or(|st| st.state == sandbox_state(s) as i32))
            .filter(|s| super::labels_match(&s.config.labels, &f.label_selector))
            .map(|s| cri::PodSandbox {
                id: s.record.id.clone(),
                metadata: s.config.metadata.clone(),
                state: sandbox_state(&s) as i32,
                created_at: s.record.created_at,
                labels: s.config.labels.clone(),
                annotations: s.config.annotations.clone(),
                runtime_handler: s.record.runtime_handler.clone(),
            })
            .collect()
    }

    fn write_sandbox_bundle(&self, record: &SandboxRecord, config: &cri::PodSandboxConfig) -> CriResult<PathBuf> {
        let bundle = self.bundle_dir(&record.id);
        let rootfs = self.pause_rootfs()?;
        let mut spec = super::specs::sandbox(self, record, config, &rootfs)?;
        if record.held_by_monitor {
            // The holder keeps the UTS and IPC namespaces; the containers have PID namespaces
            // of their own, so the pod has none to hold.
            if let Some(linux) = spec.linux_mut() {
                let kept = linux
                    .namespaces()
                    .iter()
                    .flatten()
                    .filter(|n| n.typ() != oci_spec::runtime::LinuxNamespaceType::Pid)
                    .cloned()
                    .collect();
                linux.set_namespaces(Some(kept));
            }
        }
        std::fs::create_dir_all(&bundle).map_err(io(format!("creating {}", bundle.display())))?;
        let bytes = serde_json::to_vec(&spec).map_err(|e| CriError::Internal(e.to_string()))?;
        crate::monitor::write_replace(&bundle.join("config.json"), &bytes, false)
            .map_err(io("writing the infra bundle"))?;
        Ok(bundle)
    }

    /// A shared read-only rootfs holding only the pause binary and its mount points (made here:
    /// a user namespace pod's infra cannot create them in a directory of the host's root).
    fn pause_rootfs(&self) -> CriResult<PathBuf> {
        let rootfs = self.cfg.run_dir.join("pause-rootfs");
        for dir in ["proc", "dev"] {
            std::fs::create_dir_all(rootfs.join(dir)).map_err(io(format!("creating {}", rootfs.display())))?;
        }
        let target = rootfs.join("pause");
        let fresh = std::fs::metadata(&target).ok().map(|m| m.len())
            == std::fs::metadata(&self.pause_bin).ok().map(|m| m.len());
        if !fresh {
            std::fs::create_dir_all(&rootfs).map_err(io(format!("creating {}", rootfs.display())))?;
            // A name of its own: concurrent first sandboxes each copy, and each rename
            // atomically installs the same binary.
            static COPIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let tmp = rootfs.join(format!(".pause.tmp.{}", COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
            std::fs::copy(&self.pause_bin, &tmp).map_err(io(format!("copying {}", self.pause_bin.display())))?;
            std::fs::rename(&tmp, &target).map_err(io("installing the pause binary"))?;
        }
        Ok(rootfs)
    }
}

pub(crate) fn attachment<'a>(
    id: &'a str,
    netns: &'a std::path::Path,
    config: &cri::PodSandboxConfig,
) -> Attachment<'a> {
    let md = config.metadata.clone().unwrap_or_default();
    let port_mappings = config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| {
            let proto = match cri::Protocol::try_from(p.protocol).unwrap_or(cri::Protocol::Tcp) {
                cri::Protocol::Tcp => "tcp",
                cri::Protocol::Udp => "udp",
                cri::Protocol::Sctp => "sctp",
            };
            json!({ "hostPort": p.host_port, "containerPort": p.container_port, "protocol": proto, "hostIP": p.host_ip })
        })
        .collect();
    Attachment {
        container_id: id,
        netns,
        ifname: "eth0",
        args: vec![
            ("K8S_POD_NAMESPACE".into(), md.namespace),
            ("K8S_POD_NAME".into(), md.name),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), id.to_string()),
            ("K8S_POD_UID".into(), md.uid),
        ],
        port_mappings,
    }
}

fn sandbox_state(sb: &Sandbox) -> cri::PodSandboxState {
    match sb.record.state {
        SandboxState::Ready => cri::PodSandboxState::SandboxReady,
        SandboxState::NotReady => cri::PodSandboxState::SandboxNotready,
    }
}

pub(crate) fn sandbox_status(sb: &Sandbox) -> cri::PodSandboxStatus {
    let ips: Vec<String> =
        sb.record.ips.iter().map(|ip| ip.split('/').next().unwrap_or_default().to_string()).collect();
    cri::PodSandboxStatus {
        id: sb.record.id.clone(),
        metadata: sb.config.metadata.clone(),
        state: sandbox_state(sb) as i32,
        created_at: sb.record.created_at,
        network: Some(cri::PodSandboxNetworkStatus {
            ip: ips.first().cloned().unwrap_or_default(),
            additional_ips: ips.iter().skip(1).map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace { options: Some(namespace_mode(&sb.config)) }),
        }),
        labels: sb.config.labels.clone(),
        annotations: sb.config.annotations.clone(),
        runtime_handler: sb.record.runtime_handler.clone(),
    }
}
