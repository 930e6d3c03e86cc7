//! Importing images for air-gapped nodes from an OCI-layout tarball or a `docker save`
//! (docker-archive) tarball, optionally gzip- or zstd-compressed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::meta::{Descriptor, Image, ManifestDoc};
use super::reference::{validate_digest, ImageRef};
use super::store::Lease;
use super::unpack::{classify, decoder, EntryKind};
use super::{ImageError, ImageStore};

/// What a pass over the tarball found: every regular file stored as a blob.
struct Scan {
    /// archive path → (digest, size)
    files: HashMap<PathBuf, (String, u64)>,
    /// archive path → target archive path
    links: HashMap<PathBuf, PathBuf>,
    lease: Lease,
}

impl Scan {
    fn lookup(&self, path: &str) -> Option<&(String, u64)> {
        let mut p = match classify(path.as_bytes()) {
            Ok(EntryKind::Normal(p)) => p,
            _ => return None,
        };
        for _ in 0..16 {
            if let Some(f) = self.files.get(&p) {
                return Some(f);
            }
            p = self.links.get(&p)?.clone();
        }
        None
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// One image found in the archive, ready to be built and registered.
struct Found {
    config: Descriptor,
    layers: Vec<Descriptor>,
    manifests: Vec<String>,
    names: Vec<(Option<String>, Option<String>)>,
}

impl ImageStore {
    /// Imports every image of an OCI-layout or docker-archive tarball.
    pub async fn import(&self, tarball: &Path) -> Result<Vec<Image>, ImageError> {
        let this = self.clone();
        let path = tarball.to_path_buf();
        let scan = tokio::task::spawn_blocking(move || this.scan(&path))
            .await
            .map_err(|e| ImageError::Task { reason: e.to_string() })??;
        let found = if scan.lookup("index.json").is_some() {
            self.oci_layout(&scan, tarball)?
        } else if scan.lookup("manifest.json").is_some() {
            self.docker_archive(&scan, tarball)?
        } else {
            return Err(import_err(tarball, "neither an OCI layout (index.json) nor a docker-archive (manifest.json)"));
        };
        let mut out = Vec::new();
        for f in found {
            let name = tarball.display().to_string();
            let mut image = self.build_image(&f.config, &f.layers, f.manifests, &name).await?;
            if f.names.is_empty() {
                image = self.register(image, None, None)?;
            }
            for (tag, digest) in f.names {
                image = self.register(image.clone(), tag, digest)?;
            }
            out.push(image);
        }
        drop(scan.lease);
        Ok(out)
    }

    /// Stores every regular file of the tarball as a blob (hashed while copied) and records
    /// symlinks, so nothing is extracted twice.
    fn scan(&self, tarball: &Path) -> Result<Scan, ImageError> {
        let layout = &self.inner.layout;
        let file = File::open(tarball).map_err(|e| ImageError::io("open", tarball, e))?;
        let bad = |e: io::Error| import_err(tarball, &format!("cannot read archive: {e}"));
        let mut archive = tar::Archive::new(decoder(file).map_err(bad)?);
        let mut scan = Scan { files: HashMap::new(), links: HashMap::new(), lease: self.lease() };
        for entry in archive.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let raw = entry.path_bytes().into_owned();
            let Ok(EntryKind::Normal(rel)) = classify(&raw) else {
                continue;
            };
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let tmp = layout.temp("import");
                    let (digest, size) = copy_hashed(&mut entry, &tmp).map_err(|e| {
                        let _ = std::fs::remove_file(&tmp);
                        import_err(tarball, &format!("cannot copy {}: {e}", rel.display()))
                    })?;
                    scan.lease.add(&digest);
                    let dst = layout.blob(&digest)?;
                    std::fs::rename(&tmp, &dst).map_err(|e| ImageError::io("rename into place", &dst, e))?;
                    scan.files.insert(rel, (digest, size));
                }
                tar::EntryType::Symlink => {
                    if let Ok(Some(target)) = entry.link_name() {
                        let joined = rel.parent().unwrap_or(Path::new("")).join(&target);
                        if let Some(t) = normalize(&joined) {
                            scan.links.insert(rel, t);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(scan)
    }

    fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let p = self.inner.layout.blob(digest)?;
        std::fs::read(&p).map_err(|e| ImageError::io("read", &p, e))
    }

    fn oci_layout(&self, scan: &Scan, tarball: &Path) -> Result<Vec<Found>, ImageError> {
        let (index_digest, _) = scan.lookup("index.json").cloned().unwrap_or_default();
        let index =
            ManifestDoc::parse(&self.read_blob(&index_digest)?, "OCI index.json", &tarball.display().to_string())?;
        let mut out = Vec::new();
        for desc in index.manifests.unwrap_or_default() {
            let mut manifests = vec![desc.digest.clone()];
            let mut doc = self.oci_blob_doc(scan, tarball, &desc.digest)?;
            if doc.is_index() {
                let d = doc
                    .pick_linux_amd64()
                    .ok_or_else(|| import_err(tarball, "index without linux/amd64"))?
                    .digest
                    .clone();
                doc = self.oci_blob_doc(scan, tarball, &d)?;
                manifests.push(d);
            }
            let config = doc.config.clone().ok_or_else(|| import_err(tarball, "manifest without config"))?;
            for d in std::iter::once(&config).chain(doc.layers.iter()) {
                self.oci_blob(scan, tarball, &d.digest)?;
            }
            let name = desc
                .annotations
                .get("io.containerd.image.name")
                .or_else(|| desc.annotations.get("org.opencontainers.image.ref.name"))
                .and_then(|n| ImageRef::parse_normalized(n).ok().filter(|_| n.contains('/') || n.contains(':')));
            let names = name.map(|r| vec![(r.tagged(), Some(r.with_digest(&desc.digest)))]).unwrap_or_default();
            out.push(Found { config, layers: doc.layers, manifests, names });
        }
        Ok(out)
    }

    /// Checks `blobs/sha256/<hex>` is in the archive and really hashes to its name.
    fn oci_blob(&self, scan: &Scan, tarball: &Path, digest: &str) -> Result<(), ImageError> {
        let hex = validate_digest(digest)?;
        let (actual, _) = scan
            .lookup(&format!("blobs/sha256/{hex}"))
            .ok_or_else(|| import_err(tarball, &format!("blob {digest} missing")))?;
        if actual != digest {
            return Err(ImageError::DigestMismatch { expected: digest.to_string(), actual: actual.clone() });
        }
        Ok(())
    }

    fn oci_blob_doc(&self, scan: &Scan, tarball: &Path, digest: &str) -> Result<ManifestDoc, ImageError> {
        self.oci_blob(scan, tarball, digest)?;
        ManifestDoc::parse(&self.read_blob(digest)?, "manifest", &tarball.display().to_string())
    }

    fn docker_archive(&self, scan: &Scan, tarball: &Path) -> Result<Vec<Found>, ImageError> {
        let (digest, _) = scan.lookup("manifest.json").cloned().unwrap_or_default();
        let entries: Vec<DockerManifestEntry> = serde_json::from_slice(&self.read_blob(&digest)?)
            .map_err(|e| import_err(tarball, &format!("manifest.json: {e}")))?;
        let desc = |path: &str| {
            scan.lookup(path)
                .map(|(digest, size)| Descriptor {
                    media_type: String::new(),
                    digest: digest.clone(),
                    size: *size as i64,
                    platform: None,
                    annotations: Default::default(),
                })
                .ok_or_else(|| import_err(tarball, &format!("{path} listed in manifest.json is missing")))
        };
        let mut out = Vec::new();
        for e in entries {
            let config = desc(&e.config)?;
            let layers = e.layers.iter().map(|l| desc(l)).collect::<Result<Vec<_>, _>>()?;
            let mut names = Vec::new();
            for t in e.repo_tags.unwrap_or_default() {
                let r = ImageRef::parse_normalized(&t)?;
                names.push((r.tagged(), None));
            }
            out.push(Found { config, layers, manifests: Vec::new(), names });
        }
        Ok(out)
    }
}

fn import_err(path: &Path, reason: &str) -> ImageError {
    ImageError::Import { path: path.to_path_buf(), reason: reason.to_string() }
}

/// Lexically normalises an archive path; `None` if it climbs out.
fn normalize(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::Normal(s) => out.push(s),
            std::path::Component::ParentDir if !out.pop() => return None,
            _ => {}
        }
    }
    Some(out)
}

fn copy_hashed(r: &mut impl Read, tmp: &Path) -> io::Result<(String, u64)> {
    let mut f = File::create(tmp)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        f.write_all(&buf[..n])?;
        size += n as u64;
    }
    f.sync_all()?;
    Ok((format!("sha256:{}", hex::encode(h.finalize())), size))
}
