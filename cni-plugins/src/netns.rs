//! Network namespaces: open one by path, run code inside it on the calling thread, open sockets
//! there, and write per-namespace sysctls.
//!
//! `setns` changes the calling *thread*: plugins (single-threaded processes) call these on their
//! main thread; a multi-threaded caller (the agent) must use a dedicated OS thread, never a
//! tokio worker.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::netlink::{NlError, Socket};

/// A failed namespace operation.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    #[error("network namespace {path} does not exist")]
    NotFound { path: PathBuf },
    #[error("cannot open network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter network namespace {path}")]
    Enter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open a netlink socket in network namespace {path}")]
    Socket {
        path: PathBuf,
        #[source]
        source: NlError,
    },
    #[error("cannot write sysctl {path}")]
    Sysctl {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An open network namespace.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    path: PathBuf,
}

fn setns(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fd is a valid open descriptor; setns only reads it.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl NetNs {
    /// Opens the namespace bound at `path` (e.g. `/run/netns/x` or `/proc/PID/ns/net`).
    pub fn open(path: &Path) -> Result<NetNs, NetNsError> {
        match File::open(path) {
            Ok(f) => Ok(NetNs { fd: f.into(), path: path.to_path_buf() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(NetNsError::NotFound { path: path.to_path_buf() }),
            Err(source) => Err(NetNsError::Open { path: path.to_path_buf(), source }),
        }
    }

    /// The calling thread's current namespace.
    pub fn current() -> Result<NetNs, NetNsError> {
        NetNs::open(Path::new("/proc/thread-self/ns/net"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Runs `f` inside this namespace on the calling thread, then returns to where it was.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, NetNsError> {
        let home = NetNs::current()?;
        let enter_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| NetNsError::Enter { path, source }
        };
        setns(self.fd.as_fd()).map_err(enter_err(&self.path))?;
        let out = f();
        // Not being able to return would leave the thread in the wrong namespace: fatal.
        if let Err(e) = setns(home.fd.as_fd()) {
            panic!("cannot return to network namespace {}: {e}", home.path.display());
        }
        Ok(out)
    }

    /// A rtnetlink socket bound inside this namespace (usable from anywhere afterwards).
    pub fn route_socket(&self) -> Result<Socket, NetNsError> {
        self.run(Socket::route)?.map_err(|source| NetNsError::Socket { path: self.path.clone(), source })
    }
}

/// Writes `value` to `/proc/sys/<parts…>` in the calling thread's namespace (parts are joined
/// as path components, so interface names with dots are safe).
pub fn sysctl(parts: &[&str], value: &str) -> Result<(), NetNsError> {
    let mut path = PathBuf::from("/proc/sys");
    path.extend(parts);
    if std::fs::read_to_string(&path).is_ok_and(|cur| cur.trim() == value) {
        return Ok(());
    }
    std::fs::write(&path, value).map_err(|source| NetNsError::Sysctl { path, source })
}
