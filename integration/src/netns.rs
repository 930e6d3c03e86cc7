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
