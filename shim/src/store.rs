//! Sandbox and container records: each written atomically to disk (temp + fsync + rename)
//! BEFORE the in-memory copy changes, and reloaded at start-up. The CRI config of each object
//! is kept beside its record as the protobuf bytes the kubelet sent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use prost::Message;
use serde::{Deserialize, Serialize};

use berth_proto::runtime::v1 as cri;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path}: {message}")]
    Read { path: PathBuf, message: String },
}

/// Writes JSON atomically, fsynced when `durable` (see [`crate::monitor::write_replace`]).
pub fn write_json<T: Serialize>(path: &Path, value: &T, durable: bool) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    crate::monitor::write_replace(path, &bytes, durable)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    Ready,
    NotReady,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub name: String,
    pub state: SandboxState,
    pub created_at: i64,
    /// The pinned network namespace (None with host networking).
    pub netns: Option<PathBuf>,
    pub ips: Vec<String>,
    /// The process whose namespaces are the pod's: the infra container's, or the monitor's.
    pub infra_pid: i32,
    pub cgroup_parent: String,
    pub runtime_handler: String,
    /// CNI ADD may have run (this is recorded before it starts) and DEL has not yet.
    pub network_attached: bool,
    /// The pod's monitor holds its UTS and IPC namespaces (`infra_pid` is the monitor's):
    /// there is no infra container. Records written before this field have one.
    #[serde(default)]
    pub held_by_monitor: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub state: ContainerState,
    pub image_ref: String,
    pub image_id: String,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub pid: i32,
    pub log_path: Option<PathBuf>,
    /// The image's StopSignal ("" = SIGTERM).
    pub stop_signal: String,
    /// The process's uid, gid and supplemental groups as the spec set them (ContainerStatus.user).
    #[serde(default)]
    pub user: Option<(u32, u32, Vec<u32>)>,
}

#[derive(Debug, Clone)]
pub struct Sandbox {
    pub record: SandboxRecord,
    pub config: cri::PodSandboxConfig,
}

#[derive(Debug, Clone)]
pub struct Container {
    pub record: ContainerRecord,
    pub config: cri::ContainerConfig,
}

/// Both stores; cheap to clone.
#[derive(Clone)]
pub struct Store {
    dir: PathBuf,
    // Entries are shared: a list copies pointers, not every config (each pod's worker lists
    // its pod's sandboxes and containers, so copying all of them made a burst quadratic).
    sandboxes: Arc<RwLock<HashMap<String, Arc<Sandbox>>>>,
    containers: Arc<RwLock<HashMap<String, Arc<Container>>>>,
}

const RECORD: &str = "record.json";
const CONFIG: &str = "config.pb";

impl Store {
    /// Opens the store under `dir`, loading every complete record (a half-written object —
    /// config without record — is removed: its request never succeeded).
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let store = Store { dir: dir.to_path_buf(), sandboxes: Default::default(), containers: Default::default() };
        for kind in ["sandboxes", "containers"] {
            let d = dir.join(kind);
            std::fs::create_dir_all(&d).map_err(|source| StoreError::Write { path: d.clone(), source })?;
            // One directory per sandbox or container: each its own tree.
            crate::spread_subdirectories(&d);
        }
        for (id, record, config) in load_all::<SandboxRecord, cri::PodSandboxConfig>(&dir.join("sandboxes"))? {
            store.sandboxes.write().expect("lock").insert(id, Arc::new(Sandbox { record, config }));
        }
        for (id, record, config) in load_all::<ContainerRecord, cri::ContainerConfig>(&dir.join("containers"))? {
            store.containers.write().expect("lock").insert(id, Arc::new(Container { record, config }));
        }
        Ok(store)
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.dir.join("sandboxes").join(id)
    }
    fn container_dir(&self, id: &str) -> PathBuf {
        self.dir.join("containers").join(id)
    }

    pub fn put_sandbox(&self, sb: Sandbox) -> Result<(), StoreError> {
        let dir = self.sandbox_dir(&sb.record.id);
        persist(&dir, &sb.record, Some(&sb.config.encode_to_vec()), true)?;
        self.sandboxes.write().expect("lock").insert(sb.record.id.clone(), Arc::new(sb));
        Ok(())
    }

    /// Changes a sandbox's record (disk first, then memory).
    pub fn update_sandbox(&self, id: &str, f: impl FnOnce(&mut SandboxRecord)) -> Result<Option<Sandbox>, StoreError> {
        self.change_sandbox(id, f, true)
    }

    /// [`Store::update_sandbox`] for a fact that dies with the machine (see [`Store::update_container_this_boot`]).
    pub fn update_sandbox_this_boot(
        &self,
        id: &str,
        f: impl FnOnce(&mut SandboxRecord),
    ) -> Result<Option<Sandbox>, StoreError> {
        self.change_sandbox(id, f, false)
    }

    fn change_sandbox(
        &self,
        id: &str,
        f: impl FnOnce(&mut SandboxRecord),
        durable: bool,
    ) -> Result<Option<Sandbox>, StoreError> {
        let Some(mut sb) = self.sandbox(id) else { return Ok(None) };
        f(&mut sb.record);
        persist(&self.sandbox_dir(id), &sb.record, None, durable)?;
        self.sandboxes.write().expect("lock").insert(id.to_string(), Arc::new(sb.clone()));
        Ok(Some(sb))
    }

    pub fn remove_sandbox(&self, id: &str) -> Result<(), StoreError> {
        remove_dir(&self.sandbox_dir(id))?;
        self.sandboxes.write().expect("lock").remove(id);
        Ok(())
    }

    pub fn sandbox(&self, id: &str) -> Option<Sandbox> {
        self.sandboxes.read().expect("lock").get(id).map(|s| Sandbox::clone(s))
    }

    pub fn sandboxes(&self) -> Vec<Arc<Sandbox>> {
        self.sandboxes.read().expect("lock").values().cloned().collect()
    }

    pub fn put_container(&self, c: Container) -> Result<(), StoreError> {
        persist(&self.container_dir(&c.record.id), &c.record, Some(&c.config.encode_to_vec()), true)?;
        self.containers.write().expect("lock").insert(c.record.id.clone(), Arc::new(c));
        Ok(())
    }

    pub fn update_container(
        &self,
        id: &str,
        f: impl FnOnce(&mut ContainerRecord),
    ) -> Result<Option<Container>, StoreError> {
        self.change_container(id, f, true)
    }

    /// Changes a record with a fact that dies with the machine: a container's pid, its start,
    /// a sandbox becoming ready. Written atomically before memory changes, like every update,
    /// so a restarted shim always reads it; but not fsynced (three fewer fsyncs per pod start).
    /// A power cut may keep the previous version instead, and after a reboot that reads the
    /// same: the sandbox is NotReady either way, a container without its pid is a create cut
    /// short and is rolled back, and one recorded Created or Running has no monitor left.
    pub fn update_container_this_boot(
        &self,
        id: &str,
        f: impl FnOnce(&mut ContainerRecord),
    ) -> Result<Option<Container>, StoreError> {
        self.change_container(id, f, false)
    }

    fn change_container(
        &self,
        id: &str,
        f: impl FnOnce(&mut ContainerRecord),
        durable: bool,
    ) -> Result<Option<Container>, StoreError> {
        let Some(mut c) = self.container(id) else { return Ok(None) };
        f(&mut c.record);
        persist(&self.container_dir(id), &c.record, None, durable)?;
        self.containers.write().expect("lock").insert(id.to_string(), Arc::new(c.clone()));
        Ok(Some(c))
    }

    pub fn remove_container(&self, id: &str) -> Result<(), StoreError> {
        remove_dir(&self.container_dir(id))?;
        self.containers.write().expect("lock").remove(id);
        Ok(())
    }

    pub fn container(&self, id: &str) -> Option<Container> {
        self.containers.read().expect("lock").get(id).map(|c| Container::clone(c))
    }

    pub fn containers(&self) -> Vec<Arc<Container>> {
        self.containers.read().expect("lock").values().cloned().collect()
    }

    /// Resolves a full id or a unique prefix (as crictl users type them).
    pub fn resolve_sandbox(&self, id: &str) -> Option<String> {
        unique_prefix(self.sandboxes.read().expect("lock").keys(), id)
    }

    pub fn resolve_container(&self, id: &str) -> Option<String> {
        unique_prefix(self.containers.read().expect("lock").keys(), id)
    }
}

fn unique_prefix<'a>(keys: impl Iterator<Item = &'a String>, id: &str) -> Option<String> {
    if id.is_empty() {
        return None;
    }
    let mut found = None;
    for k in keys {
        if k == id {
            return Some(k.clone());
        }
        if k.starts_with(id) {
            if found.is_some() {
                return None;
            }
            found = Some(k.clone());
        }
    }
    found
}

fn persist<T: Serialize>(dir: &Path, record: &T, config: Option<&[u8]>, durable: bool) -> Result<(), StoreError> {
    let w = |path: PathBuf| move |source| StoreError::Write { path, source };
    if let Some(bytes) = config {
        // Not fsynced on its own: the record written next is, and a config without a record
        // is dropped at load (the request never completed).
        crate::monitor::write_replace(&dir.join(CONFIG), bytes, false).map_err(w(dir.join(CONFIG)))?;
    }
    write_json(&dir.join(RECORD), record, durable).map_err(w(dir.join(RECORD)))
}

fn remove_dir(dir: &Path) -> Result<(), StoreError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Write { path: dir.to_path_buf(), source }),
    }
}

fn load_all<R: for<'de> Deserialize<'de>, C: Message + Default>(dir: &Path) -> Result<Vec<(String, R, C)>, StoreError> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let id = entry.file_name().to_string_lossy().into_owned();
        let record = std::fs::read(path.join(RECORD));
        let config = std::fs::read(path.join(CONFIG));
        match (record, config) {
            // An empty config (a power cut after the unsynced write) is incomplete too: valid
            // configs always carry metadata.
            (Ok(r), Ok(c)) if !c.is_empty() => {
                let record = serde_json::from_slice(&r)
                    .map_err(|e| StoreError::Read { path: path.join(RECORD), message: e.to_string() })?;
                let config = C::decode(c.as_slice())
                    .map_err(|e| StoreError::Read { path: path.join(CONFIG), message: e.to_string() })?;
                out.push((id, record, config));
            }
            _ => {
                tracing::warn!(path = %path.display(), "removing an incomplete record");
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(id: &str) -> Sandbox {
        Sandbox {
            record: SandboxRecord {
                id: id.into(),
                name: format!("{id}-name"),
                state: SandboxState::Ready,
                created_at: 1,
                netns: None,
                ips: vec![],
                infra_pid: 0,
                cgroup_parent: "/berth".into(),
                runtime_handler: String::new(),
                network_attached: false,
                held_by_monitor: false,
            },
            config: cri::PodSandboxConfig { hostname: "h".into(), ..Default::default() },
        }
    }

    #[test]
    fn records_survive_a_reopen_and_updates_hit_disk_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.put_sandbox(sandbox("aaa1")).unwrap();
        s.update_sandbox("aaa1", |r| r.state = SandboxState::NotReady).unwrap();
        let s2 = Store::open(dir.path()).unwrap();
        let sb = s2.sandbox("aaa1").unwrap();
        assert_eq!(sb.record.state, SandboxState::NotReady);
        assert_eq!(sb.config.hostname, "h");
        s2.remove_sandbox("aaa1").unwrap();
        s2.remove_sandbox("aaa1").unwrap();
        assert!(Store::open(dir.path()).unwrap().sandboxes().is_empty());
    }

    #[test]
    fn an_incomplete_object_is_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sandboxes/half")).unwrap();
        std::fs::write(dir.path().join("sandboxes/half/config.pb"), b"").unwrap();
        assert!(Store::open(dir.path()).unwrap().sandboxes().is_empty());
        assert!(!dir.path().join("sandboxes/half").exists());
    }

    #[test]
    fn prefixes_resolve_only_when_unique() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.put_sandbox(sandbox("abc1")).unwrap();
        s.put_sandbox(sandbox("abd2")).unwrap();
        assert_eq!(s.resolve_sandbox("abc"), Some("abc1".into()));
        assert_eq!(s.resolve_sandbox("ab"), None);
        assert_eq!(s.resolve_sandbox("abd2"), Some("abd2".into()));
        assert_eq!(s.resolve_sandbox(""), None);
    }
}
