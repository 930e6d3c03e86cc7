//! A berth-shim under test: its own config, state and run directories under a short temp dir,
//! running inside a test network namespace with a CNI conflist of the reference plugins.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::netns::NetNs;

pub struct ShimProcess {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub child: Option<Child>,
    pub cgroup_parent: String,
    netns: String,
    /// `BERTH_SHIM_CRASH_AT` for the next spawn (see `berth_shim::crash_point`).
    crash_at: Option<String>,
}

pub struct ShimOptions<'a> {
    /// Distinguishes concurrent test environments (cgroup parent, bridge name).
    pub name: &'a str,
    /// `host:port` of the test registry, mirrored for docker.io and allowed over plain http.
    pub registry: &'a str,
    /// Subnet for the reference host-local IPAM.
    pub subnet: &'a str,
    /// Write a CNI conflist (false: NetworkReady must be false).
    pub with_cni: bool,
}

impl ShimProcess {
    /// Writes the configuration under `dir` (keep it short: pod sockets live below it).
    pub fn configure(dir: &Path, opts: &ShimOptions<'_>) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir.join("net.d"))?;
        let cgroup_parent = format!("/berth-it-{}-{}", opts.name, std::process::id());
        let config = format!(
            "listen = \"{d}/cri.sock\"\nstate_dir = \"{d}/state\"\nrun_dir = \"{d}/run\"\nimage_dir = \"{d}/images\"\nregistries = \"{d}/registries.conf\"\ncgroup_parent = \"{cgroup_parent}\"\nmonitor = \"{m}\"\npause = \"{p}\"\n[cni]\nconf_dir = \"{d}/net.d\"\nbin_dirs = [\"/usr/lib/cni\"]\ncache_dir = \"{d}/cni-cache\"\n",
            d = dir.display(),
            m = crate::bin_path("berth-monitor")?.display(),
            p = crate::bin_path("berth-pause")?.display(),
        );
        std::fs::write(dir.join("shim.toml"), config)?;
        let registries = format!(
            "unqualified-search-registries = [\"docker.io\"]\n\n[[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"{r}\"\ninsecure = true\n\n[[registry]]\nlocation = \"{r}\"\ninsecure = true\n",
            r = opts.registry
        );
        std::fs::write(dir.join("registries.conf"), registries)?;
        if opts.with_cni {
            let conflist = serde_json::json!({
                "cniVersion": "1.0.0",
                "name": "berth-test",
                "plugins": [
                    { "type": "bridge", "bridge": format!("bt-{}", opts.name), "isGateway": true, "ipMasq": false,
                      "ipam": { "type": "host-local", "ranges": [[{ "subnet": opts.subnet }]], "dataDir": dir.join("ipam"), "routes": [{ "dst": "0.0.0.0/0" }] } },
                    { "type": "portmap", "capabilities": { "portMappings": true } }
                ]
            });
            std::fs::write(dir.join("net.d/10-berth-test.conflist"), serde_json::to_vec_pretty(&conflist)?)?;
        }
        Ok(dir.join("shim.toml"))
    }

    pub fn start(ns: &NetNs, dir: &Path) -> anyhow::Result<ShimProcess> {
        let mut shim = ShimProcess {
            dir: dir.to_path_buf(),
            socket: dir.join("cri.sock"),
            child: None,
            // As `configure` wrote it, for the clean-up on drop.
            cgroup_parent: std::fs::read_to_string(dir.join("shim.toml"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| Some(l.strip_prefix("cgroup_parent = \"")?.strip_suffix('"')?.to_string()))
                .unwrap_or_default(),
            netns: ns.name.clone(),
            crash_at: None,
        };
        shim.spawn()?;
        Ok(shim)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(&self.socket);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("shim.log"))?;
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(crate::bin_path("berth-shim")?)
            .arg("--config")
            .arg(self.dir.join("shim.toml"))
            .args(["--log-level", "debug"])
            .envs(self.crash_at.iter().map(|p| ("BERTH_SHIM_CRASH_AT", p)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting berth-shim")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket.exists() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("berth-shim exited with {status}: {}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!("berth-shim did not create {}: {}", self.socket.display(), self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("shim.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGKILL, then start again on the same state.
    pub fn kill9_and_restart(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            if c.try_wait()?.is_none() {
                c.kill()?;
            }
            c.wait()?;
        }
        self.spawn()
    }

    /// SIGKILL, then a new shim that kills itself when it reaches `point` (None: a normal one).
    pub fn restart_crashing_at(&mut self, point: Option<&str>) -> anyhow::Result<()> {
        self.crash_at = point.map(str::to_string);
        self.kill9_and_restart()
    }

    /// Waits for the shim to die (at its crash point).
    pub fn wait_dead(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().context("no shim running")?;
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("berth-shim still alive after {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for ShimProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
        berth_agent::agent::remove_cgroup_everywhere(&self.cgroup_parent);
    }
}
