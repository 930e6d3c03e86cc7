//! The image store against a real registry (Debian's `docker-registry`) on loopback, with a
//! busybox image built from Debian's busybox-static by umoci and pushed by skopeo: pull through a
//! mirror, digest verification, lookup, removal, overlay snapshots, reload and tarball import.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use berth_shim::image::{ImageError, ImageStore, RegistriesConfig};

/// A `docker-registry serve` process on 127.0.0.1, killed on drop.
struct Registry {
    child: Child,
    port: u16,
    storage: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("spawn {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl Registry {
    fn start(dir: &Path) -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let storage = dir.join("registry");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start docker-registry")?;
        let reg = Registry { child, port, storage };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n")?;
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200") {
                    return Ok(reg);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("docker-registry did not come up on port {port}")
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's data file for a blob.
    fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage.join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }
}

/// An OCI layout at `<dir>/oci` with tag `bb`: /bin/busybox (static) plus a `sh` symlink.
fn build_busybox_layout(dir: &Path) -> Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    std::fs::create_dir_all(rootfs.join("tmp"))?;
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).context("copy /bin/busybox (busybox-static)")?;
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh"))?;
    let layout = dir.join("oci");
    let image = format!("{}:bb", layout.display());
    run(Command::new("umoci").args(["init", "--layout"]).arg(&layout))?;
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    run(Command::new("umoci").args(["insert", "--image", &image]).arg(&rootfs).arg("/"))?;
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--os",
        "linux",
        "--architecture",
        "amd64",
        "--config.cmd",
        "sh",
        "--config.env",
        "PATH=/bin",
        "--config.workingdir",
        "/tmp",
    ]))?;
    Ok(layout)
}

fn skopeo_copy(src: &str, dst: &str) -> Result<()> {
    run(Command::new("skopeo").args(["copy", "-q", "--dest-tls-verify=false", src, dst]))
}

fn registries(reg: &Registry) -> Result<RegistriesConfig> {
    Ok(RegistriesConfig::parse(&format!(
        "unqualified-search-registries = [\"docker.io\"]\n\
         [[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n\
         [[registry.mirror]]\nlocation = \"{h}\"\ninsecure = true\n\
         [[registry]]\nlocation = \"{h}\"\ninsecure = true\n",
        h = reg.host()
    ))?)
}

fn is_mounted(target: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let t = target.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4) == Some(t.as_ref()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn pull_through_mirror_snapshot_remove_reload() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let reg = Registry::start(tmp.path())?;
    let layout = build_busybox_layout(tmp.path())?;
    let src = format!("oci:{}:bb", layout.display());
    skopeo_copy(&src, &format!("docker://{}/library/busybox:latest", reg.host()))?;

    let root = tmp.path().join("store");
    let store = ImageStore::open(&root, registries(&reg)?)?;
    // concurrent pulls of the same image, by short name through the docker.io mirror
    let pulls: Vec<_> = (0..4)
        .map(|_| {
            let s = store.clone();
            tokio::spawn(async move { s.pull("busybox", None).await })
        })
        .collect();
    let mut ids = Vec::new();
    for p in pulls {
        ids.push(p.await??.id);
    }
    ids.dedup();
    ensure!(ids.len() == 1, "concurrent pulls gave {ids:?}");
    let img = store.get("busybox").context("get busybox")?;
    assert_eq!(img.repo_tags, vec!["docker.io/library/busybox:latest"]);
    assert_eq!(img.config.cmd, vec!["sh"]);
    assert_eq!(img.config.working_dir, "/tmp");
    assert!(img.size > 500_000, "size {}", img.size);
    let repo_digest = img.repo_digests[0].clone();
    assert!(repo_digest.starts_with("docker.io/library/busybox@sha256:"), "{repo_digest}");

    // the same image by its direct (insecure) registry name: same id, both tags
    let direct = format!("{}/library/busybox:latest", reg.host());
    let img2 = store.pull(&direct, None).await?;
    assert_eq!(img2.id, img.id);
    assert_eq!(img2.repo_tags.len(), 2);
    for name in [
        "busybox",
        "busybox:latest",
        "docker.io/library/busybox:latest",
        &direct,
        &img.id,
        &img.id[7..19],
        &repo_digest,
    ] {
        assert_eq!(store.get(name).map(|i| i.id), Some(img.id.clone()), "get {name}");
    }
    // pull by digest through the mirror
    let by_digest = store.pull(&repo_digest, None).await?;
    assert_eq!(by_digest.id, img.id);
    assert!(std::fs::read_dir(root.join("tmp"))?.next().is_none(), "temporaries left");

    // overlay snapshot: rootfs has busybox, writes land in upper
    let target = tmp.path().join("rootfs-c1");
    std::fs::create_dir(&target)?;
    store.prepare_rootfs(&img.id, "c1", &target, None)?;
    store.prepare_rootfs(&img.id, "c1", &target, None)?; // idempotent
    ensure!(target.join("bin/busybox").is_file(), "no bin/busybox in rootfs");
    let out = Command::new(target.join("bin/busybox")).arg("echo").arg("hi").output()?;
    assert_eq!(out.stdout, b"hi\n");
    std::fs::write(target.join("tmp/written"), b"x")?;
    ensure!(root.join("snapshots/c1/upper/tmp/written").is_file(), "write did not go to upper");
    let layer_dir = root.join("layers").join(&img.layers[0].digest[7..]);
    ensure!(!layer_dir.join("tmp/written").exists(), "write reached the layer");

    // removing the image keeps layers a snapshot uses
    store.remove(&direct)?;
    store.remove(&direct)?;
    ensure!(store.get("busybox").is_none() && store.list().is_empty());
    ensure!(layer_dir.join("bin/busybox").is_file(), "layer of a live snapshot collected");
    store.remove_snapshot("c1", &target)?;
    store.remove_snapshot("c1", &target)?;
    ensure!(!is_mounted(&target) && !root.join("snapshots/c1").exists());

    // reload after a restart
    let img = store.pull("docker.io/library/busybox", None).await?;
    drop(store);
    let store = ImageStore::open(&root, registries(&reg)?)?;
    assert_eq!(store.get("busybox").map(|i| i.id), Some(img.id.clone()));
    let usage = store.fs_info()?;
    ensure!(usage.used_bytes > 1_000_000 && usage.inodes_used > 5, "{usage:?}");
    store.remove("busybox")?;
    ensure!(std::fs::read_dir(root.join("blobs/sha256"))?.next().is_none(), "blobs left after remove");
    ensure!(std::fs::read_dir(root.join("layers"))?.next().is_none(), "layers left after remove");

    // a missing image is an error naming every endpoint tried
    let err = store.pull("nothere:1", None).await.unwrap_err();
    assert!(matches!(err, ImageError::PullFailed { .. }), "{err}");
    assert!(err.to_string().contains(&reg.host()), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn corrupted_blob_in_registry_is_rejected() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let reg = Registry::start(tmp.path())?;
    let layout = build_busybox_layout(tmp.path())?;
    skopeo_copy(&format!("oci:{}:bb", layout.display()), &format!("docker://{}/berth/bad:1", reg.host()))?;
    // find the layer: the largest blob in the registry
    let good = ImageStore::open(&tmp.path().join("good"), registries(&reg)?)?;
    let img = good.pull(&format!("{}/berth/bad:1", reg.host()), None).await?;
    let data = reg.blob_data(&img.layers[0].digest);
    let mut bytes = std::fs::read(&data)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, &bytes)?;

    let root = tmp.path().join("store");
    let store = ImageStore::open(&root, registries(&reg)?)?;
    let err = store.pull(&format!("{}/berth/bad:1", reg.host()), None).await.unwrap_err();
    let msg = err.chain();
    assert!(msg.to_lowercase().contains("digest"), "{msg}");
    assert!(store.list().is_empty());
    ensure!(std::fs::read_dir(root.join("layers"))?.next().is_none(), "layer unpacked from a bad blob");
    ensure!(std::fs::read_dir(root.join("tmp"))?.next().is_none(), "temporaries left");
    ensure!(std::fs::read_dir(root.join("blobs/sha256"))?.next().is_none(), "blobs left after a failed pull");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn import_docker_archive_and_oci_archive() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let layout = build_busybox_layout(tmp.path())?;
    let src = format!("oci:{}:bb", layout.display());
    let docker_tar = tmp.path().join("docker.tar");
    let oci_tar = tmp.path().join("oci.tar");
    skopeo_copy(&src, &format!("docker-archive:{}:import/me:v1", docker_tar.display()))?;
    skopeo_copy(&src, &format!("oci-archive:{}:quay.io/berth/me:v2", oci_tar.display()))?;

    let root = tmp.path().join("store");
    let store = ImageStore::open(&root, RegistriesConfig::default())?;
    let a = store.import(&docker_tar).await?;
    assert_eq!(a.len(), 1);
    assert_eq!(store.get("import/me:v1").map(|i| i.id), Some(a[0].id.clone()));
    let b = store.import(&oci_tar).await?;
    assert_eq!(b.len(), 1);
    let img = store.get(&b[0].id).context("oci import")?;
    assert_eq!(img.config.cmd, vec!["sh"]);
    let target = tmp.path().join("mnt");
    std::fs::create_dir(&target)?;
    store.prepare_rootfs(&img.id, "imp", &target, None)?;
    let ok = target.join("bin/busybox").is_file();
    store.remove_snapshot("imp", &target)?;
    ensure!(ok, "imported image rootfs lacks bin/busybox");
    Ok(())
}
