//! The shim ⇄ monitor protocol: one JSON request line, one JSON response line, per connection.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Create (not start) a container from an OCI bundle; its stdout/stderr go to `log_path`.
    Create { id: String, bundle: PathBuf, log_path: Option<PathBuf>, stdin: bool, tty: bool },
    /// Start a created container.
    Start { id: String },
    /// Run a process inside a running container and collect its output.
    ExecSync { id: String, process: Box<oci_spec::runtime::Process>, timeout_ms: u64 },
    /// Answer once the container has exited (or at once when it already has).
    Wait { id: String },
    /// Reopen a container's log file (after the kubelet rotated it).
    ReopenLog { id: String },
    /// Forget a removed container.
    Forget { id: String },
    /// Exit once no container is left running.
    Shutdown,
    Ping,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Ok,
    Created { pid: i32 },
    Exited(Exit),
    ExecResult { exit_code: i32, stdout: Vec<u8>, stderr: Vec<u8>, timed_out: bool },
    Error { message: String },
}

/// How a container ended, written by the monitor to `exit.json` before anyone is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    pub pid: i32,
    /// Shell-style: the exit status, or 128 + the signal that killed it.
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// Nanoseconds since the epoch.
    pub finished_at: i64,
    pub oom_killed: bool,
}

impl Exit {
    /// From a raw `waitpid` status.
    pub fn from_wait_status(pid: i32, status: i32, finished_at: i64, oom_killed: bool) -> Exit {
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            Exit { pid, exit_code: 128 + sig, signal: Some(sig), finished_at, oom_killed }
        } else {
            Exit { pid, exit_code: libc::WEXITSTATUS(status), signal: None, finished_at, oom_killed }
        }
    }
}

pub fn now_nanos() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}
