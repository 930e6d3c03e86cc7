//! A container's state on disk under `--root`: written atomically (temp file + rename) before
//! any caller is told about it, so a crash never leaves a half-written record.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

pub const STATE_FILE: &str = "state.json";
pub const EXEC_FIFO: &str = "exec.fifo";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("container {id:?} does not exist")]
    NotFound { id: String },
    #[error("container {id:?} already exists")]
    Exists { id: String },
    #[error("invalid container id {id:?}: use letters, digits, '_', '-', '.' (not starting with '.')")]
    InvalidId { id: String },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt state file {path}: {message}")]
    Corrupt { path: PathBuf, message: String },
}

/// The lifecycle states of the OCI runtime spec, plus runc's `paused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        };
        f.write_str(s)
    }
}

/// What Berth remembers about a container between CLI invocations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    /// Status as last written; the live status is derived by [`Record::status`].
    pub status: Status,
    /// Host PID of the container init (0 while creating).
    pub pid: i32,
    /// Start time of the init in clock ticks since boot (guards against PID reuse).
    pub pid_start: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// Cgroup path relative to each hierarchy's root.
    pub cgroup_path: String,
    pub created: String,
    #[serde(default)]
    pub owner: String,
    /// The config the container was created with (hooks, seccomp and resources are needed later).
    pub config: Spec,
}

impl Record {
    /// The status right now, from the process table and the exec fifo.
    pub fn status(&self, dir: &Path) -> Status {
        if self.pid <= 0 || !process_alive(self.pid, self.pid_start) {
            return Status::Stopped;
        }
        if self.status == Status::Creating {
            return Status::Creating;
        }
        if dir.join(EXEC_FIFO).exists() {
            return Status::Created;
        }
        if self.status == Status::Paused {
            return Status::Paused;
        }
        Status::Running
    }

    /// The OCI state document (`state` command output and hook stdin).
    pub fn oci_state(&self, status: Status) -> serde_json::Value {
        let annotations: HashMap<String, String> = self.config.annotations().clone().unwrap_or_default();
        serde_json::json!({
            "ociVersion": "1.2.0",
            "id": self.id,
            "status": status.to_string(),
            "pid": if status == Status::Stopped { 0 } else { self.pid },
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": self.owner,
            "annotations": annotations,
        })
    }
}

/// The directory that holds every container's state.
#[derive(Debug, Clone)]
pub struct Root {
    pub path: PathBuf,
}

impl Root {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Root { path: path.into() }
    }

    pub fn container_dir(&self, id: &str) -> Result<PathBuf, StateError> {
        validate_id(id)?;
        Ok(self.path.join(id))
    }

    /// Creates the state directory of a new container; fails if the id is taken.
    pub fn create_dir(&self, id: &str) -> Result<PathBuf, StateError> {
        let dir = self.container_dir(id)?;
        std::fs::create_dir_all(&self.path).map_err(|source| io("creating", &self.path, source))?;
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StateError::Exists { id: id.into() })
            }
            Err(source) => return Err(io("creating", &dir, source)),
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|source| io("chmod", &dir, source))?;
        Ok(dir)
    }

    pub fn load(&self, id: &str) -> Result<(PathBuf, Record), StateError> {
        let dir = self.container_dir(id)?;
        let path = dir.join(STATE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StateError::NotFound { id: id.into() }),
            Err(source) => return Err(io("reading", &path, source)),
        };
        let record =
            serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt { path, message: e.to_string() })?;
        Ok((dir, record))
    }

    /// Every container id under the root (directories holding a state file).
    pub fn list(&self) -> Result<Vec<String>, StateError> {
        let entries = match std::fs::read_dir(&self.path) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(io("listing", &self.path, source)),
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().join(STATE_FILE).exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }
}

/// Writes the record atomically (temp file, then rename), so a runtime killed at any point
/// leaves either the old or the new record. No fsync: the state describes processes that do
/// not survive a reboot either, and lives on tmpfs (/run) by default.
pub fn save(dir: &Path, record: &Record) -> Result<(), StateError> {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(".state.json.tmp");
    let bytes =
        serde_json::to_vec(record).map_err(|e| StateError::Corrupt { path: path.clone(), message: e.to_string() })?;
    let mut file = std::fs::File::create(&tmp).map_err(|source| io("creating", &tmp, source))?;
    file.write_all(&bytes).map_err(|source| io("writing", &tmp, source))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(|source| io("renaming", &path, source))
}

fn io(op: &'static str, path: &Path, source: std::io::Error) -> StateError {
    StateError::Io { op, path: path.to_path_buf(), source }
}

/// Container ids become directory names: keep them to a safe alphabet.
pub fn validate_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('.')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+'));
    if ok {
        Ok(())
    } else {
        Err(StateError::InvalidId { id: id.into() })
    }
}

/// Start time (field 22 of /proc/PID/stat) in clock ticks since boot; `None` if gone.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, start)| start)
}

/// Parses `/proc/PID/stat` into (state char, start time); the command may contain spaces and ')'.
pub fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 is `state`; start time is field 22, i.e. 19 further on.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// True if `pid` is still the process that was recorded (same start time) and not a zombie.
pub fn process_alive(pid: i32, start: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    match parse_stat(&stat) {
        Some((state, s)) => (start == 0 || s == start) && state != 'Z' && state != 'X',
        None => false,
    }
}

/// Current time as RFC 3339 with nanoseconds, UTC.
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    rfc3339(now.as_secs() as i64, now.subsec_nanos())
}

/// Formats seconds since the epoch as RFC 3339 (civil-from-days, proleptic Gregorian).
pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z", sod / 3600, sod % 3600 / 60, sod % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_795_000_000, 5), "2026-11-18T11:06:40.000000005Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn parses_stat_with_hostile_comm() {
        let stat = "42 (a) b) (c) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 123456 1000 10";
        assert_eq!(parse_stat(stat), Some(('S', 123456)));
    }

    #[test]
    fn rejects_bad_ids() {
        for id in ["", ".", "..", "../x", "a/b", "a b", ".hidden"] {
            assert!(validate_id(id).is_err(), "{id:?}");
        }
        for id in ["abc", "a-b_c.d", "0123456789abcdef"] {
            assert!(validate_id(id).is_ok(), "{id:?}");
        }
    }

    #[test]
    fn own_process_is_alive() {
        let pid = std::process::id() as i32;
        let start = process_start_time(pid).unwrap();
        assert!(process_alive(pid, start));
        assert!(!process_alive(pid, start + 1));
    }
}
