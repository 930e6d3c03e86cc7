//! Pulling an image from a registry (through its mirrors) with `oci-client`: manifest or index,
//! config and layer blobs, each verified by its sha256 digest before it enters the store.

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::meta::{is_layer_type, parse_config, sha256_digest, Descriptor, Image, Layer, ManifestDoc, MANIFEST_TYPES};
use super::reference::{validate_digest, ImageRef};
use super::registries::Endpoint;
use super::unpack::unpack_layer;
use super::{Auth, ImageError, ImageStore};

/// Installs rustls' ring provider once (reqwest is built without a provider of its own).
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// One registry endpoint to talk to, with the reference as that endpoint names it.
struct Source {
    client: Client,
    reference: Reference,
    endpoint: String,
    original: String,
}

impl Source {
    fn new(ep: &Endpoint, original: &ImageRef) -> Self {
        install_crypto_provider();
        let r = &ep.reference;
        let config = ClientConfig {
            protocol: if ep.insecure {
                ClientProtocol::HttpsExcept(vec![r.registry.clone()])
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: ep.insecure,
            platform_resolver: None,
            connect_timeout: Some(std::time::Duration::from_secs(30)),
            read_timeout: Some(std::time::Duration::from_secs(300)),
            ..Default::default()
        };
        let reference = match (&r.digest, &r.tag) {
            (Some(d), _) => Reference::with_digest(r.registry.clone(), r.repository.clone(), d.clone()),
            (None, t) => Reference::with_tag(
                r.registry.clone(),
                r.repository.clone(),
                t.clone().unwrap_or_else(|| "latest".into()),
            ),
        };
        Source {
            client: Client::new(config),
            reference,
            endpoint: format!("{}{}", if ep.insecure { "http://" } else { "https://" }, r),
            original: original.to_string(),
        }
    }

    fn err(&self, source: oci_client::errors::OciDistributionError) -> ImageError {
        ImageError::Registry { reference: self.original.clone(), endpoint: self.endpoint.clone(), source }
    }

    /// Fetches a manifest (by the source's reference, or by `digest`) and checks its digest.
    async fn manifest(&self, auth: &RegistryAuth, digest: Option<&str>) -> Result<(Vec<u8>, String), ImageError> {
        let reference = match digest {
            Some(d) => self.reference.clone_with_digest(d.to_string()),
            None => self.reference.clone(),
        };
        let (bytes, _) =
            self.client.pull_manifest_raw(&reference, auth, &MANIFEST_TYPES).await.map_err(|e| self.err(e))?;
        let actual = sha256_digest(&bytes);
        if let Some(expected) = digest.or(reference.digest()) {
            if expected != actual {
                return Err(ImageError::DigestMismatch { expected: expected.to_string(), actual });
            }
        }
        Ok((bytes.to_vec(), actual))
    }
}

impl ImageStore {
    /// Pulls `reference` (short names are tried in each search registry) and returns the image.
    /// Mirrors are tried before the registry itself; the first endpoint that works wins.
    pub async fn pull(&self, reference: &str, auth: Option<&Auth>) -> Result<Image, ImageError> {
        let auth = match auth {
            Some(a) => a.to_registry_auth()?,
            None => RegistryAuth::Anonymous,
        };
        let mut attempts = Vec::new();
        for candidate in self.candidates(reference)? {
            for ep in self.inner.registries.endpoints(&candidate)? {
                let src = Source::new(&ep, &candidate);
                // CRI credentials are for the image's own registry, never handed to a mirror.
                let ep_auth =
                    if ep.reference.registry == candidate.registry { auth.clone() } else { RegistryAuth::Anonymous };
                match self.pull_from(&src, &candidate, &ep_auth).await {
                    Ok(img) => return Ok(img),
                    Err(e) => {
                        tracing::warn!(reference, endpoint = %src.endpoint, error = %e.chain(), "pull attempt failed");
                        attempts.push(format!("[{}] {}", src.endpoint, e.chain()));
                    }
                }
            }
        }
        // drop what the failed attempts stored (manifests, verified blobs no image uses)
        if let Err(e) = self.gc() {
            tracing::warn!(reference, error = %e.chain(), "garbage collection after a failed pull");
        }
        Err(ImageError::PullFailed { reference: reference.to_string(), attempts: attempts.join("; ") })
    }

    async fn pull_from(&self, src: &Source, name: &ImageRef, auth: &RegistryAuth) -> Result<Image, ImageError> {
        let mut lease = self.lease();
        let (top, top_digest) = src.manifest(auth, None).await?;
        let mut doc = ManifestDoc::parse(&top, "manifest", &src.original)?;
        let mut manifests = vec![top_digest.clone()];
        lease.add(&top_digest);
        self.inner.layout.write_blob(&top_digest, &top)?;
        if doc.is_index() {
            let entry = doc.pick_linux_amd64().ok_or_else(|| ImageError::Manifest {
                what: "image index",
                reference: src.original.clone(),
                reason: "no linux/amd64 manifest".into(),
            })?;
            let want = entry.digest.clone();
            validate_digest(&want)?;
            let (bytes, digest) = src.manifest(auth, Some(&want)).await?;
            lease.add(&digest);
            self.inner.layout.write_blob(&digest, &bytes)?;
            manifests.push(digest);
            doc = ManifestDoc::parse(&bytes, "manifest", &src.original)?;
        }
        let config = doc.config.clone().ok_or_else(|| ImageError::Manifest {
            what: "manifest",
            reference: src.original.clone(),
            reason: "no config descriptor (not an image manifest)".into(),
        })?;
        for l in &doc.layers {
            if !is_layer_type(&l.media_type) {
                return Err(ImageError::Manifest {
                    what: "manifest",
                    reference: src.original.clone(),
                    reason: format!("layer {} has media type {:?}, not a container layer", l.digest, l.media_type),
                });
            }
        }
        lease.add(&config.digest);
        for l in &doc.layers {
            lease.add(&l.digest);
        }
        let all: Vec<&Descriptor> = std::iter::once(&config).chain(doc.layers.iter()).collect();
        futures_util::future::try_join_all(all.iter().map(|d| self.fetch_blob(src, d))).await?;
        let image = self.build_image(&config, &doc.layers, manifests, &src.original).await?;
        let image = self.register(image, name.tagged(), Some(name.with_digest(&top_digest)))?;
        drop(lease);
        Ok(image)
    }

    /// Reads the config blob, unpacks every layer (checking its diff ID) and assembles the image.
    pub(super) async fn build_image(
        &self,
        config: &Descriptor,
        layers: &[Descriptor],
        manifests: Vec<String>,
        name: &str,
    ) -> Result<Image, ImageError> {
        let path = self.inner.layout.blob(&config.digest)?;
        let bytes = tokio::fs::read(&path).await.map_err(|e| ImageError::io("read", &path, e))?;
        let (cfg, diff_ids) = parse_config(&bytes, name)?;
        if diff_ids.len() != layers.len() {
            return Err(ImageError::Manifest {
                what: "image config",
                reference: name.to_string(),
                reason: format!("{} diff_ids for {} layers", diff_ids.len(), layers.len()),
            });
        }
        let mut out = Vec::new();
        for (l, diff_id) in layers.iter().zip(diff_ids) {
            self.ensure_layer(&l.digest, &diff_id).await?;
            out.push(Layer { digest: l.digest.clone(), diff_id, size: l.size.max(0) as u64 });
        }
        Ok(Image {
            id: config.digest.clone(),
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            size: config.size.max(0) as u64 + out.iter().map(|l| l.size).sum::<u64>(),
            config: cfg,
            layers: out,
            manifests,
        })
    }

    /// Unpacks the layer blob `digest` into `layers/<hex>` unless already there; the unpacked tar
    /// must hash to `diff_id`.
    pub(super) async fn ensure_layer(&self, digest: &str, diff_id: &str) -> Result<(), ImageError> {
        let _guard = self.inner.lock_key(&format!("layer:{digest}")).await;
        let layout = self.inner.layout.clone();
        let dst = layout.layer(digest)?;
        if dst.exists() {
            return Ok(());
        }
        let (blob, tmp, opts) = (layout.blob(digest)?, layout.temp("layer"), self.inner.unpack);
        let (digest, diff_id) = (digest.to_string(), diff_id.to_string());
        tokio::task::spawn_blocking(move || {
            let actual = unpack_layer(&blob, &tmp, &digest, opts)?;
            if actual != diff_id {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(ImageError::DigestMismatch { expected: diff_id, actual });
            }
            std::fs::rename(&tmp, &dst).map_err(|e| {
                let _ = std::fs::remove_dir_all(&tmp);
                ImageError::io("rename into place", &dst, e)
            })
        })
        .await
        .map_err(|e| ImageError::Task { reason: e.to_string() })?
    }

    /// Downloads one blob into the store (temp file, sha256 checked, rename), unless present.
    async fn fetch_blob(&self, src: &Source, d: &Descriptor) -> Result<(), ImageError> {
        let _guard = self.inner.lock_key(&d.digest).await;
        let dst = self.inner.layout.blob(&d.digest)?;
        if dst.exists() {
            return Ok(());
        }
        // Removed on every way out, including this future being dropped part-way (a sibling
        // layer's failure ends the whole pull while this download is still running).
        let tmp = TempFile(self.inner.layout.temp("blob"));
        self.download(src, d, &tmp.0).await?;
        tokio::fs::rename(&tmp.0, &dst).await.map_err(|e| ImageError::io("rename into place", &dst, e))
    }

    async fn download(&self, src: &Source, d: &Descriptor, tmp: &std::path::Path) -> Result<(), ImageError> {
        let desc = OciDescriptor {
            media_type: d.media_type.clone(),
            digest: d.digest.clone(),
            size: d.size,
            ..Default::default()
        };
        let mut stream = src.client.pull_blob_stream(&src.reference, &desc).await.map_err(|e| src.err(e))?;
        let mut file = tokio::fs::File::create(tmp).await.map_err(|e| ImageError::io("create", tmp, e))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| src.err(e.into()))?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(|e| ImageError::io("write", tmp, e))?;
        }
        file.sync_all().await.map_err(|e| ImageError::io("sync", tmp, e))?;
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != d.digest {
            return Err(ImageError::DigestMismatch { expected: d.digest.clone(), actual });
        }
        if d.size >= 0 && size != d.size as u64 {
            return Err(ImageError::Manifest {
                what: "blob",
                reference: src.original.clone(),
                reason: format!("{} is {size} bytes, the manifest says {}", d.digest, d.size),
            });
        }
        Ok(())
    }
}

/// A download's temporary file, removed when dropped (after a rename it is already gone).
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
