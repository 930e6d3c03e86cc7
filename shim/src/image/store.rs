//! `ImageStore`: the shared state (images by id, blobs in use by pulls in flight), name lookup,
//! registration of pulled or imported images, removal and garbage collection.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::error::IoContext;
use super::meta::{load_images, save_images, Image, Layout};
use super::reference::{ImageRef, ParsedRef};
use super::unpack::UnpackOptions;
use super::{ImageError, RegistriesConfig};

/// Store-wide choices.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreOptions {
    /// Let layers create device nodes (besides overlay whiteouts).
    pub allow_devices: bool,
}

/// The image store. Cheap to clone (shared inside); `Send + Sync`.
#[derive(Clone)]
pub struct ImageStore {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub layout: Layout,
    pub registries: RegistriesConfig,
    pub unpack: UnpackOptions,
    state: Mutex<State>,
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

#[derive(Default)]
pub(super) struct State {
    pub images: BTreeMap<String, Image>,
    /// Blob digests a pull or import in progress uses, with a count: never collected.
    pub inflight: HashMap<String, usize>,
}

/// Keeps blobs out of garbage collection while a pull or import uses them.
pub(super) struct Lease {
    inner: Arc<Inner>,
    digests: Vec<String>,
}

impl Lease {
    pub fn add(&mut self, digest: &str) {
        let mut st = self.inner.state();
        *st.inflight.entry(digest.to_string()).or_default() += 1;
        self.digests.push(digest.to_string());
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut st = self.inner.state();
        for d in self.digests.drain(..) {
            if let Some(n) = st.inflight.get_mut(&d) {
                *n -= 1;
                if *n == 0 {
                    st.inflight.remove(&d);
                }
            }
        }
    }
}

impl Inner {
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One async mutex per key (a digest), so the same blob is fetched or unpacked once.
    pub async fn lock_key(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.retain(|_, w| w.strong_count() > 0);
            match locks.get(key).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(key.to_string(), Arc::downgrade(&m));
                    m
                }
            }
        };
        m.lock_owned().await
    }
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`, reloading persisted images and clearing
    /// leftovers of interrupted pulls.
    pub fn open(root: &Path, registries: RegistriesConfig) -> Result<Self, ImageError> {
        Self::open_with(root, registries, StoreOptions::default())
    }

    pub fn open_with(root: &Path, registries: RegistriesConfig, opts: StoreOptions) -> Result<Self, ImageError> {
        let layout = Layout { root: root.to_path_buf() };
        layout.create_dirs()?;
        let tmp = layout.tmp();
        for e in std::fs::read_dir(&tmp).ctx("read", &tmp)? {
            let p = e.ctx("read", &tmp)?.path();
            let r = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            r.ctx("remove stale temporary", &p)?;
        }
        let images = load_images(&layout.metadata())?.into_iter().map(|i| (i.id.clone(), i)).collect();
        tracing::debug!(root = %root.display(), "image store opened");
        Ok(ImageStore {
            inner: Arc::new(Inner {
                layout,
                registries,
                unpack: UnpackOptions { allow_devices: opts.allow_devices },
                state: Mutex::new(State { images, inflight: HashMap::new() }),
                locks: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.inner.layout.root
    }

    pub(super) fn lease(&self) -> Lease {
        Lease { inner: self.inner.clone(), digests: Vec::new() }
    }

    /// Every image.
    pub fn list(&self) -> Vec<Image> {
        self.inner.state().images.values().cloned().collect()
    }

    /// Looks an image up by id (`sha256:…`, bare hex, or a unique hex prefix of at least 3),
    /// by tag (short or full name) or by repo digest (`name@sha256:…`).
    pub fn get(&self, name: &str) -> Option<Image> {
        let st = self.inner.state();
        resolve(&self.inner.registries, &st.images, name).map(|id| st.images[&id].clone())
    }

    /// Records an image pulled or imported under `tag` and `repo_digest`: merges with an existing
    /// image of the same id and moves the tag away from any other image. Persisted before memory.
    pub(super) fn register(
        &self,
        mut image: Image,
        tag: Option<String>,
        repo_digest: Option<String>,
    ) -> Result<Image, ImageError> {
        let mut st = self.inner.state();
        let mut images = st.images.clone();
        if let Some(old) = images.get(&image.id) {
            let (mut tags, mut digests) = (old.repo_tags.clone(), old.repo_digests.clone());
            tags.extend(image.repo_tags);
            digests.extend(image.repo_digests);
            image.repo_tags = tags;
            image.repo_digests = digests;
            for m in &old.manifests {
                if !image.manifests.contains(m) {
                    image.manifests.push(m.clone());
                }
            }
        }
        if let Some(t) = tag {
            for other in images.values_mut() {
                if other.id != image.id {
                    other.repo_tags.retain(|x| *x != t);
                }
            }
            image.repo_tags.push(t);
        }
        image.repo_digests.extend(repo_digest);
        dedup(&mut image.repo_tags);
        dedup(&mut image.repo_digests);
        images.insert(image.id.clone(), image.clone());
        save_images(&self.inner.layout, images.values().cloned().collect())?;
        st.images = images;
        tracing::info!(id = %image.id, tags = ?image.repo_tags, "image registered");
        Ok(image)
    }

    /// Removes the image `name` resolves to, with all its tags, then deletes blobs and layers no
    /// remaining image, snapshot or pull in progress uses. Removing nothing is success.
    pub fn remove(&self, name: &str) -> Result<(), ImageError> {
        let mut st = self.inner.state();
        let Some(id) = resolve(&self.inner.registries, &st.images, name) else {
            return Ok(());
        };
        let mut images = st.images.clone();
        images.remove(&id);
        save_images(&self.inner.layout, images.values().cloned().collect())?;
        st.images = images;
        tracing::info!(%id, name, "image removed");
        self.collect_garbage(&st)
    }

    /// Deletes blobs and layers that no image, snapshot or pull in progress uses.
    pub fn gc(&self) -> Result<(), ImageError> {
        let st = self.inner.state();
        self.collect_garbage(&st)
    }

    /// Deletes unreferenced blobs and layer directories. Runs under the state lock so that no
    /// pull can lease a blob between the decision and the deletion.
    fn collect_garbage(&self, st: &State) -> Result<(), ImageError> {
        let layout = &self.inner.layout;
        let mut keep: HashSet<String> = st.inflight.keys().cloned().collect();
        for img in st.images.values() {
            keep.insert(img.id.clone());
            keep.extend(img.manifests.iter().cloned());
            keep.extend(img.layers.iter().map(|l| l.digest.clone()));
        }
        keep.extend(super::snapshot::layers_in_use(layout)?);
        let keep_hex: HashSet<&str> = keep.iter().filter_map(|d| d.strip_prefix("sha256:")).collect();
        for dir in [layout.root.join("blobs/sha256"), layout.root.join("layers")] {
            for e in std::fs::read_dir(&dir).ctx("read", &dir)? {
                let e = e.ctx("read", &dir)?;
                let name = e.file_name();
                if keep_hex.contains(name.to_string_lossy().as_ref()) {
                    continue;
                }
                let p = e.path();
                let r = if e.file_type().ctx("stat", &p)?.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                match r {
                    Ok(()) => tracing::debug!(path = %p.display(), "garbage collected"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(ImageError::io("remove", &p, e)),
                }
            }
        }
        Ok(())
    }

    /// The candidate full references of a (possibly short) name, for pulls.
    pub(super) fn candidates(&self, reference: &str) -> Result<Vec<ImageRef>, ImageError> {
        Ok(self.inner.registries.candidates(&ParsedRef::parse(reference)?))
    }
}

fn dedup(v: &mut Vec<String>) {
    let mut seen = HashSet::new();
    v.retain(|x| seen.insert(x.clone()));
}

/// The id `name` stands for, if any.
pub(super) fn resolve(registries: &RegistriesConfig, images: &BTreeMap<String, Image>, name: &str) -> Option<String> {
    if images.contains_key(name) {
        return Some(name.to_string());
    }
    if let Ok(parsed) = ParsedRef::parse(name) {
        for r in registries.candidates(&parsed) {
            let found = match &r.digest {
                Some(d) => {
                    let want = r.with_digest(d);
                    images.values().find(|i| i.repo_digests.contains(&want) || i.id == *d)
                }
                None => {
                    let want = r.tagged().unwrap_or_default();
                    images.values().find(|i| i.repo_tags.contains(&want))
                }
            };
            if let Some(i) = found {
                return Some(i.id.clone());
            }
        }
    }
    let hex = name.strip_prefix("sha256:").unwrap_or(name);
    if hex.len() >= 3 && hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        let mut it = images.keys().filter(|id| id[7..].starts_with(hex));
        if let (Some(id), None) = (it.next(), it.next()) {
            return Some(id.clone());
        }
    }
    None
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
