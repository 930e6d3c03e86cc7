//! A real OCI registry for tests — Debian's `docker-registry` (distribution v2, plain http) on
//! loopback inside a test network namespace — and busybox test images built with umoci from
//! Debian's busybox-static and pushed with skopeo.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::netns::{run, NetNs};

pub struct Registry {
    pub addr: String,
    dir: PathBuf,
    child: Child,
}

/// Applets linked into the busybox test image.
const APPLETS: &[&str] = &[
    "sh", "ls", "cat", "echo", "sleep", "true", "false", "id", "env", "pwd", "mkdir", "rm", "ps", "kill", "grep",
    "head", "wc", "hostname", "touch", "test", "stat", "readlink", "nc", "wget", "printf", "dd", "yes", "top", "mount",
    "ip", "ifconfig", "whoami",
];

impl Registry {
    /// Starts a registry on 127.0.0.1:`port` inside `ns`, storing under `dir`.
    pub fn start(ns: &NetNs, dir: &Path, port: u16) -> anyhow::Result<Registry> {
        std::fs::create_dir_all(dir)?;
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n", dir.join("storage").display()),
        )?;
        let log = std::fs::File::create(dir.join("registry.log"))?;
        let child = ns
            .command("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry (apt-get install docker-registry)")?;
        let reg = Registry { addr, dir: dir.to_path_buf(), child };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ok = ns
                .command("bash")
                .arg("-c")
                .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{port}"))
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(reg);
            }
            if Instant::now() > deadline {
                bail!(
                    "docker-registry did not listen on {} (see {})",
                    reg.addr,
                    reg.dir.join("registry.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Builds a busybox image (static busybox, a few applets, passwd/group with root and
    /// nobody) with the given config `cmd`, and pushes it as `<addr>/<name>`.
    pub fn push_busybox(&self, ns: &NetNs, name: &str, cmd: &[&str]) -> anyhow::Result<()> {
        let work = self.dir.join("build").join(name.replace(['/', ':'], "_"));
        let _ = std::fs::remove_dir_all(&work);
        let rootfs = work.join("rootfs");
        for d in ["bin", "etc", "tmp", "root", "proc", "sys", "dev"] {
            std::fs::create_dir_all(rootfs.join(d))?;
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .context("copying /bin/busybox (apt-get install busybox-static)")?;
        for a in APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a))?;
        }
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\nwww-data:x:33:33:www-data:/var/www:/bin/false\n")?;
        std::fs::write(
            rootfs.join("etc/group"),
            "root:x:0:\nwww-data:x:33:\nusers:x:100:www-data\nnogroup:x:65534:\n",
        )?;
        self.push_rootfs(ns, name, &work, &rootfs, cmd)
    }

    /// A pause image: only `/pause` (the static berth-pause), for runtimes that need one.
    pub fn push_pause(&self, ns: &NetNs, name: &str, pause: &Path) -> anyhow::Result<()> {
        let work = self.dir.join("build").join(name.replace(['/', ':'], "_"));
        let _ = std::fs::remove_dir_all(&work);
        let rootfs = work.join("rootfs");
        std::fs::create_dir_all(&rootfs)?;
        std::fs::copy(pause, rootfs.join("pause")).with_context(|| format!("copying {}", pause.display()))?;
        self.push_rootfs(ns, name, &work, &rootfs, &["/pause"])
    }

    /// Packs `rootfs` as a one-layer image with config `cmd` and pushes it as `<addr>/<name>`.
    fn push_rootfs(&self, ns: &NetNs, name: &str, work: &Path, rootfs: &Path, cmd: &[&str]) -> anyhow::Result<()> {
        let layout = work.join("oci");
        let image = format!("{}:img", layout.display());
        run(Command::new("umoci").args(["init", "--layout"]).arg(&layout))?;
        run(Command::new("umoci").args(["new", "--image", &image]))?;
        run(Command::new("umoci").args(["insert", "--image", &image]).arg(rootfs).arg("/"))?;
        let mut config = Command::new("umoci");
        config.args([
            "config",
            "--image",
            &image,
            "--os",
            "linux",
            "--architecture",
            "amd64",
            "--config.env",
            "PATH=/bin",
        ]);
        for c in cmd {
            config.arg(format!("--config.cmd={c}"));
        }
        run(&mut config)?;
        let dest = format!("docker://{}/{name}", self.addr);
        run(ns.command("skopeo").args(["copy", "--quiet", "--dest-tls-verify=false", &format!("oci:{image}"), &dest]))
    }

    /// Pushes an image made of the given layer tarballs (uncompressed, used as they are: tests
    /// hand-craft hostile ones) as `<addr>/<name>`, through an OCI layout written here.
    pub fn push_layers(&self, ns: &NetNs, name: &str, layers: &[Vec<u8>]) -> anyhow::Result<()> {
        use sha2::{Digest, Sha256};
        let layout = self.dir.join("build").join(name.replace(['/', ':'], "_")).join("oci");
        let _ = std::fs::remove_dir_all(&layout);
        let blobs = layout.join("blobs/sha256");
        std::fs::create_dir_all(&blobs)?;
        let put = |bytes: &[u8]| -> anyhow::Result<(String, usize)> {
            let hex: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
            std::fs::write(blobs.join(&hex), bytes)?;
            Ok((format!("sha256:{hex}"), bytes.len()))
        };
        let mut descriptors = Vec::new();
        let mut diff_ids = Vec::new();
        for layer in layers {
            let (digest, size) = put(layer)?;
            descriptors.push(serde_json::json!({ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size }));
            diff_ids.push(digest);
        }
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": { "Cmd": ["/bin/sh"] },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        });
        let (config_digest, config_size) = put(&serde_json::to_vec(&config)?)?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size },
            "layers": descriptors,
        });
        let (manifest_digest, manifest_size) = put(&serde_json::to_vec(&manifest)?)?;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest_size,
                            "annotations": { "org.opencontainers.image.ref.name": "img" } }],
        });
        std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
        std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let dest = format!("docker://{}/{name}", self.addr);
        run(ns.command("skopeo").args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci:{}:img", layout.display()),
            &dest,
        ]))
    }

    /// Where the registry keeps blobs (for corrupting one on purpose).
    pub fn storage(&self) -> PathBuf {
        self.dir.join("storage")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
