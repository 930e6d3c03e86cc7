//! Named network namespaces (`ip netns add`) for tests that must not touch the host's network:
//! the shim, its CNI plugins and the test registry all run inside one.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

/// A named network namespace with loopback up, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(prefix: &str) -> anyhow::Result<NetNs> {
        let name = format!("{prefix}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "delete", &name]).stderr(std::process::Stdio::null()).status();
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = NetNs { name };
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs `program` inside this namespace (network only: the mount namespace
    /// stays the host's, so a restarted daemon sees the same mounts).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display())).arg("--").arg(program);
        c
    }

    /// A TCP connection to `addr` made from inside this namespace (on a thread of its own: the
    /// caller's threads stay in theirs).
    pub async fn connect(&self, addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpStream> {
        let path = self.path();
        let stream = tokio::task::spawn_blocking(move || -> anyhow::Result<std::net::TcpStream> {
            std::thread::spawn(move || -> anyhow::Result<std::net::TcpStream> {
                let ns = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                // SAFETY: setns on this short-lived thread only.
                if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns {}: {}", path.display(), std::io::Error::last_os_error());
                }
                let s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
                    .with_context(|| format!("connecting to {addr}"))?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("connect thread panicked"))?
        })
        .await??;
        Ok(tokio::net::TcpStream::from_std(stream)?)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.name]).status();
    }
}

/// Runs `cmd`; a non-zero exit is an error carrying its stderr.
pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
