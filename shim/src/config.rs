//! `/etc/berth/shim.toml`: every setting with its default, so an absent file means defaults.
//!
//! ```toml
//! listen = "/run/berth/cri.sock"          # the CRI socket (mode 0660, root)
//! state_dir = "/var/lib/berth/shim"       # sandbox/container records (survive reboots)
//! run_dir = "/run/berth/shim"             # pod dirs, runtime state, pinned netns (per boot)
//! image_dir = "/var/lib/berth/images"     # blobs, unpacked layers, snapshots
//! registries = "/etc/berth/registries.conf" # containers-registries.conf(5) v2: mirrors, insecure
//! cgroup_parent = "/berth"                # for pods whose config names no cgroup parent
//! streaming_address = "127.0.0.1:0"       # exec/attach/port-forward server
//! monitor = ""                            # berth-monitor binary; empty = next to berth-shim
//! pause = ""                              # berth-pause (static) binary; empty = next to berth-shim
//! [cni]
//! conf_dir = "/etc/cni/net.d"             # first *.conflist/*.conf/*.json, in name order
//! bin_dirs = ["/opt/cni/bin"]
//! cache_dir = "/var/lib/berth/cni"        # ADD results, for DEL and CHECK
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: PathBuf,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub image_dir: PathBuf,
    pub registries: PathBuf,
    pub cgroup_parent: String,
    pub streaming_address: SocketAddr,
    pub monitor: PathBuf,
    pub pause: PathBuf,
    pub cni: CniConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CniConfig {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    pub cache_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "/run/berth/cri.sock".into(),
            state_dir: "/var/lib/berth/shim".into(),
            run_dir: "/run/berth/shim".into(),
            image_dir: "/var/lib/berth/images".into(),
            registries: "/etc/berth/registries.conf".into(),
            cgroup_parent: "/berth".into(),
            streaming_address: SocketAddr::from(([127, 0, 0, 1], 0)),
            monitor: PathBuf::new(),
            pause: PathBuf::new(),
            cni: CniConfig::default(),
        }
    }
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: "/etc/cni/net.d".into(),
            bin_dirs: vec!["/opt/cni/bin".into()],
            cache_dir: "/var/lib/berth/cni".into(),
        }
    }
}

impl Config {
    /// Loads `path`; a missing file at the default location means all defaults.
    pub fn load(path: &Path, must_exist: bool) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                Config::parse(&text).map_err(|message| ConfigError::Parse { path: path.to_path_buf(), message })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => Ok(Config::default()),
            Err(source) => Err(ConfigError::Read { path: path.to_path_buf(), source }),
        }
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The pod directories, runtime state and pinned network namespaces (all per boot).
    pub fn pods_dir(&self) -> PathBuf {
        self.run_dir.join("pods")
    }
    pub fn runtime_root(&self) -> PathBuf {
        self.run_dir.join("runtime")
    }
    pub fn netns_dir(&self) -> PathBuf {
        self.run_dir.join("netns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.listen, Path::new("/run/berth/cri.sock"));
        assert_eq!(c.cni.bin_dirs, vec![PathBuf::from("/opt/cni/bin")]);
    }

    #[test]
    fn fields_override_and_unknown_fields_are_named() {
        let c = Config::parse("listen = \"/tmp/x.sock\"\n[cni]\nconf_dir = \"/tmp/net.d\"\n").unwrap();
        assert_eq!(c.listen, Path::new("/tmp/x.sock"));
        assert_eq!(c.cni.conf_dir, Path::new("/tmp/net.d"));
        assert_eq!(c.cni.cache_dir, Path::new("/var/lib/berth/cni"));
        let err = Config::parse("lisen = \"/x\"").unwrap_err();
        assert!(err.contains("lisen"), "{err}");
    }
}
