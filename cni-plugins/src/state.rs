//! Per-attachment records a plugin keeps under /run (boot-tied): what ADD created, so DEL and GC
//! can undo it without a prevResult or a live netns. One JSON file per attachment, written
//! atomically (temp file + rename).

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{CniError, ErrorCode};
use crate::netconf::Attachment;

/// Where plugins keep records unless the config's `stateDir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/berth/cni";

/// 64-bit FNV-1a: stable across builds, for deterministic names (host veths, nft tags, files).
pub fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// A failed record operation.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} state record {path}")]
pub struct StateError {
    op: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

impl From<StateError> for CniError {
    fn from(e: StateError) -> CniError {
        CniError::new(ErrorCode::Io, e.to_string()).with_details(e.source.to_string())
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
    data: T,
}

/// The records of one plugin for one network.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    pub fn new(root: &Path, plugin: &str, network: &str) -> Records {
        let net = format!("{:016x}", fnv1a(&[network]));
        Records { dir: root.join(plugin).join(net) }
    }

    fn path(&self, who: &Attachment) -> PathBuf {
        let key = fnv1a(&[&who.container_id, &who.ifname]);
        self.dir.join(format!("{key:016x}.json"))
    }

    fn err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
        let path = path.to_path_buf();
        move |source| StateError { op, path, source }
    }

    pub fn write<T: Serialize>(&self, who: &Attachment, data: &T) -> Result<(), StateError> {
        let path = self.path(who);
        let env = Envelope { container_id: who.container_id.clone(), ifname: who.ifname.clone(), data };
        let text = serde_json::to_vec(&env).unwrap_or_default();
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        // The directory exists on every ADD but the first: create it only when missing.
        if let Err(e) = fs::write(&tmp, &text) {
            if e.kind() != ErrorKind::NotFound {
                return Err(Self::err("write", &path)(e));
            }
            fs::create_dir_all(&self.dir).map_err(Self::err("create the directory of", &path))?;
            fs::write(&tmp, &text).map_err(Self::err("write", &path))?;
        }
        fs::rename(&tmp, &path).map_err(Self::err("rename", &path))
    }

    /// The record of `who`; a missing or unreadable (half-written) one is `None`.
    pub fn read<T: DeserializeOwned>(&self, who: &Attachment) -> Option<T> {
        let text = fs::read(self.path(who)).ok()?;
        let env: Envelope<T> = serde_json::from_slice(&text).ok()?;
        Some(env.data)
    }

    pub fn remove(&self, who: &Attachment) -> Result<(), StateError> {
        let path = self.path(who);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(Self::err("remove", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Removes temporary files left by writers that were killed (their pid is gone).
    pub fn sweep(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.rsplit_once(".tmp").and_then(|(_, p)| p.parse::<u32>().ok()) else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Every readable record with its attachment.
    pub fn list<T: DeserializeOwned>(&self) -> Vec<(Attachment, T)> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| {
                let env: Envelope<T> = serde_json::from_slice(&fs::read(e.path()).ok()?).ok()?;
                let who = Attachment { container_id: env.container_id, ifname: env.ifname };
                Some((who, env.data))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_list_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let r = Records::new(tmp.path(), "bridge", "net/with/slashes");
        let a = Attachment { container_id: "c1".into(), ifname: "eth0".into() };
        assert_eq!(r.read::<Vec<u32>>(&a), None);
        r.write(&a, &vec![1u32, 2]).unwrap();
        assert_eq!(r.read::<Vec<u32>>(&a), Some(vec![1, 2]));
        assert_eq!(r.list::<Vec<u32>>(), vec![(a.clone(), vec![1, 2])]);
        r.remove(&a).unwrap();
        r.remove(&a).unwrap();
        let stale = r.dir.join("0123.tmp4194999");
        fs::write(&stale, "").unwrap();
        r.sweep();
        assert!(!stale.exists(), "a dead writer's temp file is swept");
        assert!(r.list::<Vec<u32>>().is_empty());
        assert_ne!(fnv1a(&["a", "bc"]), fnv1a(&["ab", "c"]));
    }
}
