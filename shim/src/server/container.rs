//! CreateContainer, StartContainer, StopContainer, RemoveContainer, ContainerStatus,
//! ListContainers, UpdateContainerResources, ReopenContainerLog. Containers are created and
//! reaped by their pod's monitor; their exit is read back from the monitor's exit record.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::runtime::v1 as cri;

use super::{io, CriError, CriResult, Shim};
use crate::monitor::{self, Request, Response};
use crate::store::{Container, ContainerRecord, ContainerState, SandboxState};

/// How long a SIGKILLed container may take to be reaped before Stop gives up.
const KILL_WAIT: Duration = Duration::from_secs(10);

impl Shim {
    pub async fn create_container(self: &Arc<Self>, req: cri::CreateContainerRequest) -> CriResult<String> {
        let config = req.config.ok_or_else(|| CriError::InvalidArgument("config: required".into()))?;
        let md =
            config.metadata.clone().ok_or_else(|| CriError::InvalidArgument("config.metadata: required".into()))?;
        if md.name.is_empty() {
            return Err(CriError::InvalidArgument("config.metadata.name: must not be empty".into()));
        }
        let image_name = config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        if image_name.is_empty() {
            return Err(CriError::InvalidArgument("config.image.image: must not be empty".into()));
        }
        let sb_id = self
            .store
            .resolve_sandbox(&req.pod_sandbox_id)
            .ok_or_else(|| CriError::NotFound(format!("pod sandbox {:?} not found", req.pod_sandbox_id)))?;
        let sb =
            self.store.sandbox(&sb_id).ok_or_else(|| CriError::NotFound(format!("pod sandbox {sb_id:?} not found")))?;
        if sb.record.state != SandboxState::Ready {
            return Err(CriError::FailedPrecondition(format!("pod sandbox {sb_id} is not ready")));
        }
        let name = format!("{}_{}_{}", md.name, sb.record.name, md.attempt);
        if let Some(other) = self.store.containers().into_iter().find(|c| c.record.name == name) {
            return Err(CriError::AlreadyExists(format!("container name {name:?} is reserved by {}", other.record.id)));
        }
        let image = self
            .images
            .get(&image_name)
            .ok_or_else(|| CriError::NotFound(format!("image {image_name:?} not found: pull it first")))?;
        let id = super::new_id();
        let _guard = self.lock(&id).await;
        let bundle = self.bundle_dir(&id);
        let rootfs = bundle.join("rootfs");
        let log_path = (!sb.config.log_directory.is_empty() && !config.log_path.is_empty())
            .then(|| Path::new(&sb.config.log_directory).join(&config.log_path));
        let record = ContainerRecord {
            id: id.clone(),
            sandbox_id: sb_id.clone(),
            name,
            state: ContainerState::Created,
            image_ref: image.repo_digests.first().cloned().unwrap_or_else(|| image.id.clone()),
            image_id: image.id.clone(),
            created_at: monitor::proto::now_nanos(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid: 0,
            log_path: log_path.clone(),
            stop_signal: image.config.stop_signal.clone(),
            user: None,
        };
        self.store.put_container(Container { record, config: config.clone() })?;
        let result = async {
            std::fs::create_dir_all(&rootfs).map_err(io(format!("creating {}", rootfs.display())))?;
            let images = self.images.clone();
            let (image_id, key, target) = (image.id.clone(), id.clone(), rootfs.clone());
            let idmap = rootfs_idmap(&sb);
            tokio::task::spawn_blocking(move || images.prepare_rootfs(&image_id, &key, &target, idmap.as_ref()))
                .await
                .map_err(|e| CriError::Internal(e.to_string()))?
                .map_err(|e| CriError::Internal(format!("preparing the rootfs: {}", crate::error_chain(&e))))?;
            let spec = super::specs::container(self, &id, &sb, &config, &image, &rootfs)?;
            let user = spec
                .process()
                .as_ref()
                .map(|p| p.user())
                .map(|u| (u.uid(), u.gid(), u.additional_gids().clone().unwrap_or_default()));
            let bytes = serde_json::to_vec(&spec).map_err(|e| CriError::Internal(e.to_string()))?;
            // The bundle lives under the per-boot run dir: atomic, no fsync needed.
            monitor::write_replace(&bundle.join("config.json"), &bytes, false).map_err(io("writing config.json"))?;
            let answer = self
                .monitor(&sb_id)
                .call(&Request::Create {
                    id: id.clone(),
                    bundle: bundle.clone(),
                    log_path,
                    stdin: config.stdin,
                    stdin_once: config.stdin_once,
                    tty: config.tty,
                })
                .await?;
            crate::crash_point("create:monitor-answered");
            match answer {
                Response::Created { pid } => Ok((pid, user)),
                other => Err(CriError::Internal(format!("unexpected monitor answer {other:?}"))),
            }
        }
        .await;
        match result {
            Ok((pid, user)) => {
                self.store.update_container_this_boot(&id, |r| {
                    r.pid = pid;
                    r.user = user;
                })?;
                self.emit(&id, cri::ContainerEventType::ContainerCreatedEvent, None, vec![]);
                Ok(id)
            }
            Err(e) => {
                let _ = self.images.remove_snapshot(&id, &rootfs);
                let _ = std::fs::remove_dir_all(&bundle);
                let _ = self.store.remove_container(&id);
                Err(e)
            }
        }
    }

    pub async fn start_container(self: &Arc<Self>, id: &str) -> CriResult<()> {
        let c = self.find_container(id)?;
        let _guard = self.lock(&c.record.id).await;
        let c = self
            .refresh_container(&c.record.id)
            .ok_or_else(|| CriError::NotFound(format!("container {id:?} not found")))?;
        if c.record.state != ContainerState::Created {
            return Err(CriError::FailedPrecondition(format!(
                "container {} is {:?}, not created",
                c.record.id, c.record.state
            )));
        }
        // Running is recorded before the start: an exit recorded by the monitor wins over it.
        self.store.update_container_this_boot(&c.record.id, |r| {
            r.state = ContainerState::Running;
            r.started_at = monitor::proto::now_nanos();
        })?;
        crate::crash_point("start:running-recorded");
        if let Err(e) = self.monitor(&c.record.sandbox_id).call(&Request::Start { id: c.record.id.clone() }).await {
            // A start asked for by a predecessor that died may have reached the monitor after
            // this shim's recovery looked: a started container is what was asked for.
            let started = berth_runtime::container::Loaded::load(&self.runtime_root(), &c.record.id).is_ok_and(|l| {
                matches!(l.status, berth_runtime::state::Status::Running | berth_runtime::state::Status::Paused)
            });
            if started {
                tracing::warn!(id = %c.record.id, error = %crate::error_chain(&e), "start answered with an error, but the container runs");
                self.emit(&c.record.id, cri::ContainerEventType::ContainerStartedEvent, None, vec![]);
                return Ok(());
            }
            self.store.update_container(&c.record.id, |r| {
                r.state = ContainerState::Exited;
                r.exit_code = 128;
                r.reason = "StartError".into();
                r.message = crate::error_chain(&e);
                r.finished_at = monitor::proto::now_nanos();
            })?;
            return Err(e.into());
        }
        self.emit(&c.record.id, cri::ContainerEventType::ContainerStartedEvent, None, vec![]);
        Ok(())
    }

    pub async fn stop_container(self: &Arc<Self>, id: &str, timeout: i64) -> CriResult<()> {
        let Some(id) = self.store.resolve_container(id) else { return Ok(()) };
        self.stop_container_locked(&id, timeout).await
    }

    /// Stop signal, `timeout` seconds, then SIGKILL to every process in the cgroup.
    pub(super) async fn stop_container_locked(self: &Arc<Self>, id: &str, timeout: i64) -> CriResult<()> {
        let Some(c) = self.refresh_container(id) else { return Ok(()) };
        if !matches!(c.record.state, ContainerState::Running | ContainerState::Created) {
            return Ok(());
        }
        let monitor = self.monitor(&c.record.sandbox_id);
        let wait = |d: Duration| {
            let monitor = monitor.clone();
            let id = id.to_string();
            async move { tokio::time::timeout(d, monitor.call(&Request::Wait { id })).await.ok().and_then(Result::ok) }
        };
        if timeout > 0 && c.record.state == ContainerState::Running {
            let signal = berth_runtime::container::parse_signal(&c.record.stop_signal).unwrap_or(libc::SIGTERM);
            let root = self.runtime_root();
            match berth_runtime::container::kill(&root, id, signal, false) {
                Ok(()) => {
                    wait(Duration::from_secs(timeout as u64)).await;
                }
                Err(e) => tracing::debug!(id, error = %crate::error_chain(&e), "stop signal"),
            }
        }
        if self
            .refresh_container(id)
            .is_some_and(|c| matches!(c.record.state, ContainerState::Running | ContainerState::Created))
        {
            let root = self.runtime_root();
            if let Err(e) = berth_runtime::container::kill(&root, id, libc::SIGKILL, true) {
                tracing::debug!(id, error = %crate::error_chain(&e), "SIGKILL");
            }
            if wait(KILL_WAIT).await.is_none() && monitor::read_exit(&self.pod_dir(&c.record.sandbox_id), id).is_none()
            {
                return Err(CriError::Internal(format!("container {id} did not exit within {KILL_WAIT:?} of SIGKILL")));
            }
        }
        if let Some(c) = self.refresh_container(id) {
            self.emit(
                id,
                cri::ContainerEventType::ContainerStoppedEvent,
                None,
                vec![super::convert::container_status(&c)],
            );
        }
        Ok(())
    }

    pub async fn remove_container(self: &Arc<Self>, id: &str) -> CriResult<()> {
        let Some(id) = self.store.resolve_container(id) else { return Ok(()) };
        let _guard = self.lock(&id).await;
        self.remove_container_locked(&id).await
    }

    pub(super) async fn remove_container_locked(self: &Arc<Self>, id: &str) -> CriResult<()> {
        let Some(c) = self.store.container(id) else { return Ok(()) };
        self.kill_and_delete(&c.record.sandbox_id, id).await?;
        let rootfs = self.bundle_dir(id).join("rootfs");
        self.images
            .remove_snapshot(id, &rootfs)
            .map_err(|e| CriError::Internal(format!("removing the rootfs snapshot: {}", crate::error_chain(&e))))?;
        let _ = std::fs::remove_dir_all(self.bundle_dir(id));
        let monitor = self.monitor(&c.record.sandbox_id);
        if monitor.is_alive() {
            let _ = monitor.call(&Request::Forget { id: id.to_string() }).await;
        }
        self.store.remove_container(id)?;
        self.emit(id, cri::ContainerEventType::ContainerDeletedEvent, None, vec![]);
        Ok(())
    }

    /// SIGKILL to the container's cgroup, wait for its exit record, then the runtime's delete
    /// (cgroup and runtime state). Used for containers and for the infra process.
    pub(super) async fn kill_and_delete(self: &Arc<Self>, sandbox_id: &str, id: &str) -> CriResult<()> {
        let root = self.runtime_root();
        let loaded = berth_runtime::container::Loaded::load(&root, id);
        if loaded.is_err() {
            return Ok(());
        }
        let _ = berth_runtime::container::kill(&root, id, libc::SIGKILL, true);
        let monitor = self.monitor(sandbox_id);
        if monitor.is_alive() {
            let _ = tokio::time::timeout(KILL_WAIT, monitor.call(&Request::Wait { id: id.to_string() })).await;
        }
        let id2 = id.to_string();
        tokio::task::spawn_blocking(move || berth_runtime::container::delete(&root, &id2, true))
            .await
            .map_err(|e| CriError::Internal(e.to_string()))??;
        self.refresh_container(id);
        Ok(())
    }

    pub fn container_status(&self, id: &str, verbose: bool) -> CriResult<cri::ContainerStatusResponse> {
        let c = self.find_container(id)?;
        let mut info = std::collections::HashMap::new();
        if verbose {
            let v = serde_json::json!({ "pid": c.record.pid, "sandboxID": c.record.sandbox_id, "bundle": self.bundle_dir(&c.record.id) });
            info.insert("info".to_string(), v.to_string());
        }
        Ok(cri::ContainerStatusResponse { status: Some(super::convert::container_status(&c)), info })
    }

    /// Containers matching the id / sandbox id (full or unique prefix) and label filters that
    /// ListContainers and ListContainerStats share, brought up to date with their exits.
    pub(super) fn containers_matching(
        &self,
        id: &str,
        sandbox_id: &str,
        labels: &std::collections::HashMap<String, String>,
    ) -> Vec<Container> {
        let id = (!id.is_empty()).then(|| self.store.resolve_container(id).unwrap_or_default());
        let sb = (!sandbox_id.is_empty()).then(|| self.store.resolve_sandbox(sandbox_id).unwrap_or_default());
        self.store
            .containers()
            .into_iter()
            .filter(|c| id.as_ref().is_none_or(|id| &c.record.id == id))
            .filter(|c| sb.as_ref().is_none_or(|sb| &c.record.sandbox_id == sb))
            .filter(|c| super::labels_match(&c.config.labels, labels))
            .filter_map(|c| self.refresh_container(&c.record.id))
            .collect()
    }

    pub fn list_containers(&self, filter: Option<cri::ContainerFilter>) -> Vec<cri::Container> {
        let f = filter.unwrap_or_default();
        self.containers_matching(&f.id, &f.pod_sandbox_id, &f.label_selector)
            .into_iter()
            .filter(|c| f.state.as_ref().is_none_or(|st| st.state == super::convert::container_state(c) as i32))
            .map(|c| super::convert::container(&c))
            .collect()
    }

    pub fn update_container_resources(&self, req: cri::UpdateContainerResourcesRequest) -> CriResult<()> {
        let c = self.find_container(&req.container_id)?;
        let Some(res) = req.linux else { return Ok(()) };
        let oci = crate::oci::linux_resources("linux", &res, self.host.swap_controller)?;
        berth_runtime::container::update(&self.runtime_root(), &c.record.id, &oci)?;
        let mut config = c.config.clone();
        config.linux.get_or_insert_with(Default::default).resources = Some(res);
        self.store.put_container(Container { record: c.record, config })?;
        Ok(())
    }

    pub async fn reopen_container_log(&self, id: &str) -> CriResult<()> {
        let c = self.running_container(id)?;
        self.monitor(&c.record.sandbox_id).call(&Request::ReopenLog { id: c.record.id }).await?;
        Ok(())
    }

    /// A container by full id or unique prefix, brought up to date with its exit record.
    pub(super) fn find_container(&self, id: &str) -> CriResult<Container> {
        self.store
            .resolve_container(id)
            .and_then(|id| self.refresh_container(&id))
            .ok_or_else(|| CriError::NotFound(format!("container {id:?} not found")))
    }

    /// [`Self::find_container`], which must be running (exec, attach, log reopening).
    pub(super) fn running_container(&self, id: &str) -> CriResult<Container> {
        let c = self.find_container(id)?;
        if c.record.state != ContainerState::Running {
            return Err(CriError::FailedPrecondition(format!("container {} is not running", c.record.id)));
        }
        Ok(c)
    }

    /// Brings a record up to date with the monitor's exit record; returns the current copy.
    pub fn refresh_container(&self, id: &str) -> Option<Container> {
        let c = self.store.container(id)?;
        if !matches!(c.record.state, ContainerState::Running | ContainerState::Created) {
            return Some(c);
        }
        let pod_dir = self.pod_dir(&c.record.sandbox_id);
        let update = monitor::read_exit(&pod_dir, id).map(|exit| {
            move |r: &mut ContainerRecord| {
                r.state = ContainerState::Exited;
                r.exit_code = exit.exit_code;
                r.finished_at = exit.finished_at;
                r.reason = if exit.oom_killed {
                    "OOMKilled"
                } else if exit.exit_code == 0 {
                    "Completed"
                } else {
                    "Error"
                }
                .into();
            }
        });
        match update {
            Some(f) => self.store.update_container(id, f).ok().flatten(),
            None if !pod_dir.join(monitor::SOCKET).exists() => self
                .store
                .update_container(id, |r| {
                    r.state = ContainerState::Exited;
                    r.exit_code = 255;
                    r.reason = "Unknown".into();
                    r.message = "the pod's monitor is gone (host rebooted?)".into();
                })
                .ok()
                .flatten(),
            None => Some(c),
        }
    }
}

/// A user namespace pod's containers see their layers through its user namespace.
fn rootfs_idmap(sb: &crate::store::Sandbox) -> Option<crate::image::RootfsIdMap> {
    let userns = super::sandbox::namespace_mode(&sb.config)
        .userns_options
        .filter(|u| u.mode == cri::NamespaceMode::Pod as i32)?;
    Some(crate::image::RootfsIdMap {
        userns: format!("/proc/{}/ns/user", sb.record.infra_pid).into(),
        root_uid: userns.uids.first()?.host_id,
        root_gid: userns.gids.first()?.host_id,
    })
}
