//! An in-memory CRI runtime for the reconcile's unit tests: sandboxes and containers are
//! records; tests make containers exit and images fail.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use berth_proto::runtime::v1 as cri;

use crate::cri::{CriError, CriResult, ExecResult, Runtime, StreamOptions};

#[derive(Default)]
pub struct State {
    next: u64,
    pub sandboxes: HashMap<String, (cri::PodSandboxConfig, bool, i64)>,
    pub containers: HashMap<String, (String, cri::ContainerConfig, cri::ContainerStatus)>,
    pub images: HashSet<String>,
    pub bad_images: HashSet<String>,
    pub pulls: u32,
    pub log: Vec<String>,
    clock: i64,
    /// ListImages' answer (image GC tests) and the images RemoveImage was asked for.
    pub image_list: Vec<cri::Image>,
    pub removed_images: Vec<String>,
    /// ImageFsInfo's answer.
    pub image_fs: Vec<cri::FilesystemUsage>,
    /// ListContainerStats' answer.
    pub container_stats: Vec<cri::ContainerStats>,
}

#[derive(Default)]
pub struct FakeRuntime {
    pub state: Mutex<State>,
}

fn nf(op: &'static str, id: &str) -> CriError {
    CriError::new(op, tonic::Code::NotFound, format!("{id} not found"))
}

fn matches(labels: &HashMap<String, String>, want: &HashMap<String, String>) -> bool {
    want.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl FakeRuntime {
    /// Ends the newest running instance of container `name` with `code`.
    pub fn exit(&self, name: &str, code: i32, at_nanos: i64) {
        let mut st = self.state.lock().unwrap();
        let newest = st
            .containers
            .values_mut()
            .filter(|(_, cfg, s)| {
                cfg.metadata.as_ref().unwrap().name == name && s.state == cri::ContainerState::ContainerRunning as i32
            })
            .max_by_key(|(_, cfg, _)| cfg.metadata.as_ref().unwrap().attempt)
            .expect("a running instance");
        newest.2.state = cri::ContainerState::ContainerExited as i32;
        newest.2.exit_code = code;
        newest.2.finished_at = at_nanos;
    }

    pub fn instances(&self, name: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .containers
            .values()
            .filter(|(_, cfg, _)| cfg.metadata.as_ref().unwrap().name == name)
            .count()
    }

    pub fn set_sandbox_ready(&self, ready: bool) {
        for s in self.state.lock().unwrap().sandboxes.values_mut() {
            s.1 = ready;
        }
    }

    fn tick(st: &mut State) -> i64 {
        st.clock += 1;
        st.clock
    }
}

impl Runtime for FakeRuntime {
    async fn version(&self) -> CriResult<cri::VersionResponse> {
        Ok(cri::VersionResponse { runtime_name: "fake".into(), ..Default::default() })
    }

    async fn run_pod_sandbox(&self, config: cri::PodSandboxConfig) -> CriResult<String> {
        let mut st = self.state.lock().unwrap();
        st.next += 1;
        let id = format!("sb{}", st.next);
        let t = Self::tick(&mut st);
        st.log.push(format!("run-sandbox {id}"));
        st.sandboxes.insert(id.clone(), (config, true, t));
        Ok(id)
    }

    async fn stop_pod_sandbox(&self, id: &str) -> CriResult<()> {
        let mut st = self.state.lock().unwrap();
        st.log.push(format!("stop-sandbox {id}"));
        let sandbox_containers: Vec<String> =
            st.containers.iter().filter(|(_, (sb, _, _))| sb == id).map(|(c, _)| c.clone()).collect();
        for c in sandbox_containers {
            let s = &mut st.containers.get_mut(&c).unwrap().2;
            if s.state == cri::ContainerState::ContainerRunning as i32 {
                s.state = cri::ContainerState::ContainerExited as i32;
                s.exit_code = 137;
            }
        }
        if let Some(s) = st.sandboxes.get_mut(id) {
            s.1 = false;
        }
        Ok(())
    }

    async fn remove_pod_sandbox(&self, id: &str) -> CriResult<()> {
        let mut st = self.state.lock().unwrap();
        st.sandboxes.remove(id);
        st.containers.retain(|_, (sb, _, _)| sb != id);
        Ok(())
    }

    async fn pod_sandbox_status(&self, id: &str) -> CriResult<cri::PodSandboxStatus> {
        let st = self.state.lock().unwrap();
        let (config, ready, created) = st.sandboxes.get(id).ok_or_else(|| nf("PodSandboxStatus", id))?;
        Ok(cri::PodSandboxStatus {
            id: id.into(),
            metadata: config.metadata.clone(),
            state: if *ready { cri::PodSandboxState::SandboxReady } else { cri::PodSandboxState::SandboxNotready }
                as i32,
            created_at: *created,
            network: Some(cri::PodSandboxNetworkStatus { ip: "10.0.0.5".into(), ..Default::default() }),
            ..Default::default()
        })
    }

    async fn list_pod_sandboxes(&self, labels: HashMap<String, String>) -> CriResult<Vec<cri::PodSandbox>> {
        let st = self.state.lock().unwrap();
        Ok(st
            .sandboxes
            .iter()
            .filter(|(_, (c, _, _))| matches(&c.labels, &labels))
            .map(|(id, (c, ready, created))| cri::PodSandbox {
                id: id.clone(),
                metadata: c.metadata.clone(),
                state: if *ready { cri::PodSandboxState::SandboxReady } else { cri::PodSandboxState::SandboxNotready }
                    as i32,
                created_at: *created,
                labels: c.labels.clone(),
                ..Default::default()
            })
            .collect())
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: cri::ContainerConfig,
        _sandbox: cri::PodSandboxConfig,
    ) -> CriResult<String> {
        let mut st = self.state.lock().unwrap();
        if !st.sandboxes.contains_key(sandbox_id) {
            return Err(nf("CreateContainer", sandbox_id));
        }
        st.next += 1;
        let id = format!("c{}", st.next);
        let t = Self::tick(&mut st);
        let name = config.metadata.as_ref().unwrap().name.clone();
        st.log.push(format!("create {name}"));
        let status = cri::ContainerStatus {
            id: id.clone(),
            state: cri::ContainerState::ContainerCreated as i32,
            created_at: t,
            image_ref: "sha256:img".into(),
            ..Default::default()
        };
        st.containers.insert(id.clone(), (sandbox_id.to_string(), config, status));
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> CriResult<()> {
        let mut st = self.state.lock().unwrap();
        let t = Self::tick(&mut st);
        let (_, cfg, s) = st.containers.get_mut(id).ok_or_else(|| nf("StartContainer", id))?;
        s.state = cri::ContainerState::ContainerRunning as i32;
        s.started_at = t;
        let name = cfg.metadata.as_ref().unwrap().name.clone();
        st.log.push(format!("start {name}"));
        Ok(())
    }

    async fn stop_container(&self, id: &str, _timeout_secs: i64) -> CriResult<()> {
        let mut st = self.state.lock().unwrap();
        if let Some((_, _, s)) = st.containers.get_mut(id) {
            if s.state != cri::ContainerState::ContainerExited as i32 {
                s.state = cri::ContainerState::ContainerExited as i32;
                s.exit_code = 143;
            }
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> CriResult<()> {
        self.state.lock().unwrap().containers.remove(id);
        Ok(())
    }

    async fn list_containers(&self, labels: HashMap<String, String>) -> CriResult<Vec<cri::Container>> {
        let st = self.state.lock().unwrap();
        Ok(st
            .containers
            .iter()
            .filter(|(_, (_, c, _))| matches(&c.labels, &labels))
            .map(|(id, (sb, c, s))| cri::Container {
                id: id.clone(),
                pod_sandbox_id: sb.clone(),
                metadata: c.metadata.clone(),
                labels: c.labels.clone(),
                state: s.state,
                created_at: s.created_at,
                image: c.image.clone(),
                image_ref: s.image_ref.clone(),
                ..Default::default()
            })
            .collect())
    }

    async fn container_status(&self, id: &str) -> CriResult<cri::ContainerStatus> {
        let st = self.state.lock().unwrap();
        st.containers.get(id).map(|(_, _, s)| s.clone()).ok_or_else(|| nf("ContainerStatus", id))
    }

    async fn exec_sync(&self, _id: &str, _cmd: Vec<String>, _timeout_secs: i64) -> CriResult<ExecResult> {
        Ok(ExecResult::default())
    }

    async fn exec_url(&self, id: &str, _cmd: Vec<String>, _o: StreamOptions) -> CriResult<String> {
        Ok(format!("http://127.0.0.1:1/exec/{id}"))
    }

    async fn attach_url(&self, id: &str, _o: StreamOptions) -> CriResult<String> {
        Ok(format!("http://127.0.0.1:1/attach/{id}"))
    }

    async fn port_forward_url(&self, id: &str, _ports: Vec<i32>) -> CriResult<String> {
        Ok(format!("http://127.0.0.1:1/portforward/{id}"))
    }

    async fn image_id(&self, image: &str) -> CriResult<Option<String>> {
        Ok(self.state.lock().unwrap().images.contains(image).then(|| "sha256:img".to_string()))
    }

    async fn pull_image(
        &self,
        image: &str,
        _auth: Option<cri::AuthConfig>,
        _sandbox: Option<cri::PodSandboxConfig>,
    ) -> CriResult<String> {
        let mut st = self.state.lock().unwrap();
        st.pulls += 1;
        if st.bad_images.contains(image) {
            return Err(CriError::new("PullImage", tonic::Code::NotFound, format!("{image}: manifest unknown")));
        }
        st.images.insert(image.to_string());
        Ok("sha256:img".into())
    }

    async fn list_pod_sandbox_stats(&self) -> CriResult<Vec<cri::PodSandboxStats>> {
        Ok(Vec::new())
    }

    async fn list_container_stats(&self) -> CriResult<Vec<cri::ContainerStats>> {
        Ok(self.state.lock().unwrap().container_stats.clone())
    }

    async fn image_fs_info(&self) -> CriResult<cri::ImageFsInfoResponse> {
        let fs = self.state.lock().unwrap().image_fs.clone();
        Ok(cri::ImageFsInfoResponse { image_filesystems: fs.clone(), container_filesystems: fs })
    }

    async fn list_images(&self) -> CriResult<Vec<cri::Image>> {
        Ok(self.state.lock().unwrap().image_list.clone())
    }

    async fn remove_image(&self, image: &str) -> CriResult<()> {
        let mut st = self.state.lock().unwrap();
        st.log.push(format!("remove-image {image}"));
        st.removed_images.push(image.to_string());
        st.image_list.retain(|i| i.id != image);
        Ok(())
    }
}
