//! Where `berth up` keeps things — durable state under the data dir, per-boot state (sockets,
//! pid files, CNI records, pinned netns) under the run dir — and where it finds Berth's binaries.

use std::path::{Path, PathBuf};

/// The paths of one `berth up` cluster (or `berth join` node).
#[derive(Debug, Clone)]
pub struct Layout {
    pub data: PathBuf,
    pub run: PathBuf,
    /// The cgroup every pod of this node lives under (shim and agent both use it).
    pub cgroup_root: String,
}

impl Layout {
    pub fn new(data: &Path, run: &Path, cgroup_root: &str) -> Layout {
        Layout { data: data.to_path_buf(), run: run.to_path_buf(), cgroup_root: cgroup_root.to_string() }
    }
    /// Generated configuration: shim.toml, agent.yaml, registries.conf, net.d/, node.kubeconfig.
    pub fn etc(&self) -> PathBuf {
        self.data.join("etc")
    }
    pub fn shim_toml(&self) -> PathBuf {
        self.etc().join("shim.toml")
    }
    pub fn agent_yaml(&self) -> PathBuf {
        self.etc().join("agent.yaml")
    }
    pub fn registries_conf(&self) -> PathBuf {
        self.etc().join("registries.conf")
    }
    pub fn net_d(&self) -> PathBuf {
        self.etc().join("net.d")
    }
    pub fn node_kubeconfig(&self) -> PathBuf {
        self.etc().join("node.kubeconfig")
    }
    pub fn control_dir(&self) -> PathBuf {
        self.data.join("control")
    }
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.control_dir().join("admin.kubeconfig")
    }
    pub fn registry_dir(&self) -> PathBuf {
        self.data.join("registry")
    }
    /// The daemons' logs (control.log, shim.log, agent.log, registry.log).
    pub fn log_dir(&self) -> PathBuf {
        self.data.join("log")
    }
    pub fn socket(&self) -> PathBuf {
        self.run.join("cri.sock")
    }
    pub fn shim_run(&self) -> PathBuf {
        self.run.join("shim")
    }
    /// Records of berth-bridge and the host-local store (`stateDir`, `dataDir`).
    pub fn cni_state(&self) -> PathBuf {
        self.run.join("cni")
    }
    pub fn peers_file(&self) -> PathBuf {
        self.run.join("peers.json")
    }
    /// One pid file per daemon, so `berth down` finds them even when `berth up` is gone.
    pub fn pid_dir(&self) -> PathBuf {
        self.run.join("pids")
    }
    /// The foreground `berth up` process.
    pub fn up_pid(&self) -> PathBuf {
        self.run.join("up.pid")
    }
}

/// A binary `berth up` needs was not found.
#[derive(Debug, thiserror::Error)]
#[error("{name} not found in {searched} (build it with scripts/build, or pass --bin-dir)")]
pub struct NotFound {
    pub name: String,
    pub searched: String,
}

/// The binaries a node runs, located once.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub berth: PathBuf,
    pub control: PathBuf,
    pub shim: PathBuf,
    pub agent: PathBuf,
    pub monitor: PathBuf,
    pub pause: PathBuf,
    /// The directory holding berth-bridge, berth-host-local, berth-portmap, berth-vxlan.
    pub cni_dir: PathBuf,
}

/// The CNI plugins a Berth node uses (all installed together).
pub const CNI_PLUGINS: &[&str] = &["berth-bridge", "berth-host-local", "berth-portmap", "berth-vxlan", "berth-host-gw"];

impl Binaries {
    /// Looks in `bin_dir` alone when given; otherwise next to this executable (and in
    /// `../runtime`, where scripts/build puts the static berth-monitor and berth-pause), then
    /// /usr/local/bin and /opt/cni/bin.
    pub fn locate(bin_dir: Option<&Path>) -> Result<Binaries, NotFound> {
        let berth = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("berth"));
        let dirs = search_dirs(bin_dir, &berth);
        let find = |name: &str| find_in(&dirs, name);
        let bridge = find("berth-bridge")?;
        Ok(Binaries {
            control: find("berth-control")?,
            shim: find("berth-shim")?,
            agent: find("berth-agent")?,
            monitor: find("berth-monitor")?,
            pause: find("berth-pause")?,
            cni_dir: bridge.parent().map(Path::to_path_buf).unwrap_or_default(),
            berth,
        })
    }
}

fn search_dirs(bin_dir: Option<&Path>, exe: &Path) -> Vec<PathBuf> {
    if let Some(d) = bin_dir {
        return vec![d.to_path_buf()];
    }
    let mut dirs = Vec::new();
    if let Some(d) = exe.parent() {
        dirs.push(d.join("../runtime"));
        dirs.push(d.to_path_buf());
    }
    dirs.extend(["/usr/local/bin", "/opt/cni/bin"].map(PathBuf::from));
    dirs
}

fn find_in(dirs: &[PathBuf], name: &str) -> Result<PathBuf, NotFound> {
    use std::os::unix::fs::PermissionsExt;
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false))
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
        .ok_or_else(|| NotFound {
            name: name.into(),
            searched: dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_bin_dir_is_the_only_place_searched() {
        let dir = tempfile::tempdir().unwrap();
        let err = Binaries::locate(Some(dir.path())).unwrap_err();
        assert_eq!(err.name, "berth-bridge");
        assert_eq!(err.searched, dir.path().display().to_string());
    }

    #[test]
    fn the_static_runtime_dir_comes_before_the_executable_dir() {
        let dirs = search_dirs(None, Path::new("/w/target/release/berth"));
        assert_eq!(dirs[0], Path::new("/w/target/release/../runtime"));
        assert_eq!(dirs[1], Path::new("/w/target/release"));
    }
}
