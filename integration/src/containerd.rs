//! containerd 1.6 (Debian's package) as a CRI runtime for comparisons: the same CNI conflist
//! and images as berth-shim, its state in a test directory, inside a test network namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::netns::NetNs;

/// Starts containerd with `conflist` (its plugins in `cni_bin`), pulling the pause image
/// `sandbox_image`; `registry` (host:port, plain http) mirrors docker.io and itself.
pub fn start(
    ns: &NetNs,
    dir: &Path,
    conflist: &str,
    cni_bin: &Path,
    sandbox_image: &str,
    registry: &str,
) -> anyhow::Result<(Child, PathBuf)> {
    std::fs::create_dir_all(dir.join("net.d"))?;
    std::fs::write(dir.join("net.d/10-test.conflist"), conflist)?;
    let sock = dir.join("containerd.sock");
    let config = format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{sock}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{d}/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{registry}"]
    endpoint = ["http://{registry}"]
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
    endpoint = ["http://{registry}"]
"#,
        d = dir.display(),
        sock = sock.display(),
        cni_bin = cni_bin.display(),
    );
    std::fs::write(dir.join("config.toml"), config)?;
    let log = std::fs::File::create(dir.join("containerd.log"))?;
    let child = ns
        .command("containerd")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting containerd (apt-get install containerd)")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        if Instant::now() > deadline {
            bail!("containerd did not listen on {} (see {}/containerd.log)", sock.display(), dir.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((child, sock))
}
