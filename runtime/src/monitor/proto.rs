//! The shim ⇄ monitor protocol: one JSON request line, one JSON response line, per connection.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Create (not start) a container from an OCI bundle; its stdout/stderr go to `log_path`.
    /// With `stdin`, the monitor keeps the write end of its stdin for attaches; `stdin_once`
    /// hands it to the first attach and closes it when that attach ends.
    Create {
        id: String,
        bundle: PathBuf,
        log_path: Option<PathBuf>,
        stdin: bool,
        #[serde(default)]
        stdin_once: bool,
        tty: bool,
    },
    /// Hold the pod's UTS and IPC namespaces in the monitor itself, with the hostname and
    /// sysctls of the bundle's spec, instead of running an infra container: the answer is
    /// [`Response::Created`] with the monitor's pid, whose namespaces are the pod's.
    Hold {
        bundle: PathBuf,
    },
    /// Start a created container.
    Start {
        id: String,
    },
    /// Run a process inside a running container and collect its output.
    ExecSync {
        id: String,
        process: Box<oci_spec::runtime::Process>,
        timeout_ms: u64,
    },
    /// Run a process inside a running container with its stdio handed to the caller: the
    /// answer is [`Response::Stdio`] carrying the fds, then [`Response::ExecExited`]. Closing the
    /// connection early kills the process.
    Exec {
        id: String,
        process: Box<oci_spec::runtime::Process>,
        tty: bool,
        stdin: bool,
    },
    /// Hand the caller the container's stdin and a copy of its output ([`Response::Stdio`]).
    Attach {
        id: String,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    /// Answer once the container has exited (or at once when it already has).
    Wait {
        id: String,
    },
    /// Reopen a container's log file (after the kubelet rotated it).
    ReopenLog {
        id: String,
    },
    /// Forget a removed container.
    Forget {
        id: String,
    },
    /// Exit once no container is left running.
    Shutdown,
    Ping,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Ok,
    Created {
        pid: i32,
    },
    Exited(Exit),
    ExecResult {
        exit_code: i32,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
        timed_out: bool,
    },
    /// File descriptors attached to this message, in the order named ("stdin", "stdout",
    /// "stderr", or "pty" for a terminal).
    Stdio {
        fds: Vec<String>,
    },
    ExecExited {
        exit_code: i32,
    },
    Error {
        message: String,
    },
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
