//! Container lifecycle operations, one file each, over the on-disk state in [`crate::state`].

mod create;
mod delete;
mod exec;
mod hold;
mod kill;
mod pause;
mod start;
mod update;

pub use create::{create, CreateOptions, Created};
pub use delete::{delete, delete_loaded};
pub use exec::{exec, ExecOptions};
pub use hold::hold;
pub use kill::{kill, parse_signal};
pub use pause::{pause, resume};
pub use start::{run_poststart, start};
pub use update::update;

use std::path::PathBuf;

use crate::cgroups::{Cgroup, CgroupError, Layout};
use crate::state::{Record, Root, StateError, Status};

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cgroup")]
    Cgroup(#[from] CgroupError),
    #[error("seccomp")]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error(transparent)]
    Hook(#[from] crate::hooks::HookError),
    #[error("container init failed: {0}")]
    Init(String),
    #[error("{what}")]
    Os {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("container {id:?} is {status}: cannot {op}")]
    WrongStatus { id: String, status: Status, op: &'static str },
    #[error("{0}")]
    Invalid(String),
}

pub(crate) fn os(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContainerError {
    let what = what.into();
    move |source| ContainerError::Os { what, source }
}

/// A container loaded from disk with its live status.
pub struct Loaded {
    pub dir: PathBuf,
    pub record: Record,
    pub status: Status,
}

impl Loaded {
    pub fn load(root: &Root, id: &str) -> Result<Loaded, ContainerError> {
        let (dir, record) = root.load(id)?;
        let status = record.status(&dir);
        Ok(Loaded { dir, record, status })
    }

    pub fn cgroup(&self) -> Result<Cgroup, ContainerError> {
        Ok(Cgroup::new(Layout::cached()?, self.record.cgroup_path.clone()))
    }

    pub fn require(&self, allowed: &[Status], op: &'static str) -> Result<(), ContainerError> {
        if allowed.contains(&self.status) {
            Ok(())
        } else {
            Err(ContainerError::WrongStatus { id: self.record.id.clone(), status: self.status, op })
        }
    }

    pub fn state_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.record.oci_state(self.status)).unwrap_or_default()
    }
}

/// Writes a PID file atomically (callers such as containerd poll for it).
pub fn write_pid_file(path: &std::path::Path, pid: i32) -> Result<(), ContainerError> {
    let tmp = path.with_extension("tmp-berth");
    std::fs::write(&tmp, pid.to_string()).map_err(os(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(os(format!("renaming to {}", path.display())))
}

/// Waits for `pid` (our child), forwarding termination signals to it; returns a shell-style
/// exit code (128+signal when killed).
pub fn wait_forwarding(pid: i32) -> i32 {
    const FORWARD: [i32; 7] =
        [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2, libc::SIGWINCH];
    // SAFETY: sigset manipulation on a local set; blocking signals in our single thread.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&mut set);
        for s in FORWARD.iter().chain(&[libc::SIGCHLD]) {
            libc::sigaddset(&mut set, *s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
        }
        if r < 0 {
            return 255;
        }
        let timeout = libc::timespec { tv_sec: 1, tv_nsec: 0 };
        // SAFETY: set and timeout are valid; info is not requested.
        let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
        if sig > 0 && sig != libc::SIGCHLD {
            // SAFETY: forwarding a signal to our own child.
            unsafe { libc::kill(pid, sig) };
        }
    }
}
