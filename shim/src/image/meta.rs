//! Image metadata (what the store records per image and persists), the OCI/Docker manifest,
//! index and config documents it reads, and the on-disk layout of the store.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::IoContext;
use super::reference::validate_digest;
use super::ImageError;

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MANIFEST_TYPES: [&str; 4] = [MT_OCI_INDEX, MT_DOCKER_LIST, MT_OCI_MANIFEST, MT_DOCKER_MANIFEST];

/// One image as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The config digest, `sha256:…`.
    pub id: String,
    /// `docker.io/library/busybox:latest`, …
    pub repo_tags: Vec<String>,
    /// `docker.io/library/busybox@sha256:…` (digest of the manifest or index pulled).
    pub repo_digests: Vec<String>,
    /// Compressed size: config plus layer blobs.
    pub size: u64,
    pub config: ImageConfig,
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
    /// Manifest and index blobs kept for this image.
    #[serde(default)]
    pub manifests: Vec<String>,
}

/// One layer: its blob and the digest of its uncompressed tar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
}

/// The parts of the image config a CRI runtime uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub user: String,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub stop_signal: String,
    pub labels: BTreeMap<String, String>,
    pub volumes: Vec<String>,
    pub exposed_ports: Vec<String>,
    pub os: String,
    pub architecture: String,
}

/// A content descriptor.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

/// An image manifest (OCI or Docker v2 schema 2), or an index / manifest list.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestDoc {
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    pub manifests: Option<Vec<Descriptor>>,
}

impl ManifestDoc {
    pub fn parse(bytes: &[u8], what: &'static str, reference: &str) -> Result<Self, ImageError> {
        serde_json::from_slice(bytes).map_err(|e| ImageError::Manifest {
            what,
            reference: reference.to_string(),
            reason: format!("cannot decode: {e}"),
        })
    }

    pub fn is_index(&self) -> bool {
        self.manifests.is_some() || matches!(self.media_type.as_deref(), Some(MT_OCI_INDEX | MT_DOCKER_LIST))
    }

    /// The linux/amd64 entry of an index.
    pub fn pick_linux_amd64(&self) -> Option<&Descriptor> {
        self.manifests
            .as_deref()?
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == "amd64"))
    }
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<RunConfig>,
    rootfs: Option<RootFs>,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    user: Option<String>,
    env: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    working_dir: Option<String>,
    stop_signal: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    volumes: Option<BTreeMap<String, serde_json::Value>>,
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

/// Decodes an image config blob into the runtime config and the layers' diff IDs.
pub fn parse_config(bytes: &[u8], reference: &str) -> Result<(ImageConfig, Vec<String>), ImageError> {
    let f: ConfigFile = serde_json::from_slice(bytes).map_err(|e| ImageError::Manifest {
        what: "image config",
        reference: reference.to_string(),
        reason: format!("cannot decode: {e}"),
    })?;
    let c = f.config.unwrap_or_default();
    let keys = |m: Option<BTreeMap<String, serde_json::Value>>| m.unwrap_or_default().into_keys().collect();
    let config = ImageConfig {
        user: c.user.unwrap_or_default(),
        env: c.env.unwrap_or_default(),
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        working_dir: c.working_dir.unwrap_or_default(),
        stop_signal: c.stop_signal.unwrap_or_default(),
        labels: c.labels.unwrap_or_default(),
        volumes: keys(c.volumes),
        exposed_ports: keys(c.exposed_ports),
        os: f.os,
        architecture: f.architecture,
    };
    Ok((config, f.rootfs.map(|r| r.diff_ids).unwrap_or_default()))
}

/// Whether a layer media type is a tar (plain, gzip or zstd) this store can unpack.
pub fn is_layer_type(mt: &str) -> bool {
    mt.is_empty()
        || mt.starts_with("application/vnd.oci.image.layer.")
        || mt.starts_with("application/vnd.docker.image.rootfs.")
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Paths of the store under its root.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Layout {
    pub fn blob(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.root.join("blobs/sha256").join(validate_digest(digest)?))
    }
    pub fn layer(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.root.join("layers").join(validate_digest(digest)?))
    }
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub fn metadata(&self) -> PathBuf {
        self.root.join("images.json")
    }
    /// A fresh path in `tmp/` (same filesystem as everything else, so renames are atomic).
    pub fn temp(&self, what: &str) -> PathBuf {
        let n = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        self.tmp().join(format!("{what}-{}-{n}", std::process::id()))
    }

    pub fn create_dirs(&self) -> Result<(), ImageError> {
        for d in [self.root.join("blobs/sha256"), self.root.join("layers"), self.snapshots(), self.tmp()] {
            std::fs::create_dir_all(&d).ctx("create", &d)?;
        }
        // One directory per container's writable layer: each its own tree.
        crate::spread_subdirectories(&self.snapshots());
        Ok(())
    }

    /// Writes `bytes` as the blob `digest` after checking they hash to it (temp + rename).
    pub fn write_blob(&self, digest: &str, bytes: &[u8]) -> Result<(), ImageError> {
        let actual = sha256_digest(bytes);
        if actual != digest {
            return Err(ImageError::DigestMismatch { expected: digest.to_string(), actual });
        }
        let dst = self.blob(digest)?;
        if dst.exists() {
            return Ok(());
        }
        write_atomic(&self.temp("blob"), &dst, bytes)
    }
}

/// Writes `bytes` to `tmp`, syncs, and renames it over `dst`.
pub fn write_atomic(tmp: &Path, dst: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let result = (|| {
        let mut f = std::fs::File::create(tmp).ctx("create", tmp)?;
        f.write_all(bytes).ctx("write", tmp)?;
        f.sync_all().ctx("sync", tmp)?;
        std::fs::rename(tmp, dst).ctx("rename into place", dst)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

#[derive(Serialize, Deserialize, Default)]
struct MetadataFile {
    version: u32,
    images: Vec<Image>,
}

/// Loads the persisted images (none when the file does not exist yet).
pub fn load_images(path: &Path) -> Result<Vec<Image>, ImageError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ImageError::io("read", path, e)),
    };
    let f: MetadataFile =
        serde_json::from_slice(&bytes).map_err(|source| ImageError::Metadata { path: path.to_path_buf(), source })?;
    Ok(f.images)
}

/// Persists the images atomically.
pub fn save_images(layout: &Layout, images: Vec<Image>) -> Result<(), ImageError> {
    let path = layout.metadata();
    let bytes = serde_json::to_vec_pretty(&MetadataFile { version: 1, images })
        .map_err(|source| ImageError::Metadata { path: path.clone(), source })?;
    write_atomic(&layout.temp("images.json"), &path, &bytes)
}
