//! Image garbage collection, as kubelet's image GC manager: every pass notes which images exist
//! and which any container (running or not) uses; when the image filesystem (CRI ImageFsInfo's
//! mount point, measured with statvfs) is at least `imageGCHighThresholdPercent` full, unused
//! images at least `imageMinimumGCAge` old are removed, least recently used first, until usage
//! is down to `imageGCLowThresholdPercent`. Pinned images and images any container uses are
//! never removed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use berth_proto::runtime::v1 as cri;

use crate::cri::{CriError, Runtime};

/// How often images are detected and, when needed, collected.
pub const PERIOD: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("listing images or containers")]
    List(#[source] CriError),
    #[error("the runtime reports no image filesystem")]
    NoImageFs,
    #[error("statvfs of the image filesystem {mountpoint}")]
    Statvfs { mountpoint: String },
}

/// The thresholds from the agent's configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub high_percent: u8,
    pub low_percent: u8,
    pub min_age: Duration,
}

impl Policy {
    pub fn from_config(cfg: &crate::config::AgentConfig) -> Policy {
        Policy {
            high_percent: cfg.image_gc_high_threshold_percent,
            low_percent: cfg.image_gc_low_threshold_percent,
            min_age: cfg.image_minimum_gc_age,
        }
    }

    /// Bytes to free for a filesystem of `capacity` with `available` free: none below the high
    /// threshold, else down to the low one.
    pub fn to_free(&self, capacity: u64, available: u64) -> u64 {
        if capacity == 0 {
            return 0;
        }
        let used_percent = 100 - (available.min(capacity) as u128 * 100 / capacity as u128) as u64;
        if used_percent < u64::from(self.high_percent) {
            return 0;
        }
        let target_available = capacity as u128 * (100 - u128::from(self.low_percent)) / 100;
        (target_available as u64).saturating_sub(available)
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    first_seen: SystemTime,
    last_used: Option<SystemTime>,
}

/// What the collector remembers between passes.
#[derive(Default)]
pub struct ImageGc {
    records: Mutex<HashMap<String, Record>>,
}

/// Whether `c` runs image `img` (by id, tag or digest).
fn uses(c: &cri::Container, img: &cri::Image) -> bool {
    let name = c.image.as_ref().map(|i| i.image.as_str()).unwrap_or_default();
    c.image_ref == img.id
        || name == img.id
        || img.repo_tags.iter().any(|t| t == name)
        || img.repo_digests.iter().any(|d| d == name || *d == c.image_ref)
}

impl ImageGc {
    /// Notes the images present and the ones in use now; forgets removed images. Returns the
    /// ids in use.
    fn detect(&self, images: &[cri::Image], containers: &[cri::Container], now: SystemTime) -> HashSet<String> {
        let in_use: HashSet<String> =
            images.iter().filter(|i| containers.iter().any(|c| uses(c, i))).map(|i| i.id.clone()).collect();
        let mut rec = self.records.lock().expect("image records");
        rec.retain(|id, _| images.iter().any(|i| &i.id == id));
        for i in images {
            let r = rec.entry(i.id.clone()).or_insert(Record { first_seen: now, last_used: None });
            if in_use.contains(&i.id) {
                r.last_used = Some(now);
            }
        }
        in_use
    }

    /// The images to remove to free `amount` bytes, in order.
    fn plan(
        &self,
        images: &[cri::Image],
        in_use: &HashSet<String>,
        policy: &Policy,
        amount: u64,
        now: SystemTime,
    ) -> Vec<(String, u64)> {
        let rec = self.records.lock().expect("image records");
        let mut candidates: Vec<(&cri::Image, Record)> = images
            .iter()
            .filter(|i| !in_use.contains(&i.id) && !i.pinned)
            .filter_map(|i| rec.get(&i.id).map(|r| (i, *r)))
            .filter(|(_, r)| now.duration_since(r.first_seen).unwrap_or_default() >= policy.min_age)
            .collect();
        candidates.sort_by_key(|(i, r)| (r.last_used, r.first_seen, i.id.clone()));
        let mut freed = 0u64;
        let mut out = Vec::new();
        for (i, _) in candidates {
            if freed >= amount {
                break;
            }
            freed += i.size;
            out.push((i.id.clone(), i.size));
        }
        out
    }

    /// One pass. `capacity_available` measures a mount point (statvfs in production).
    pub async fn run_once<R: Runtime>(
        &self,
        rt: &R,
        policy: &Policy,
        capacity_available: impl Fn(&str) -> Option<(u64, u64)>,
        now: SystemTime,
    ) -> Result<Vec<String>, GcError> {
        let images = rt.list_images().await.map_err(GcError::List)?;
        let containers = rt.list_containers(HashMap::new()).await.map_err(GcError::List)?;
        let in_use = self.detect(&images, &containers, now);
        let info = rt.image_fs_info().await.map_err(GcError::List)?;
        let mountpoint = info
            .image_filesystems
            .first()
            .and_then(|f| f.fs_id.as_ref())
            .map(|f| f.mountpoint.clone())
            .ok_or(GcError::NoImageFs)?;
        let (capacity, available) =
            capacity_available(&mountpoint).ok_or_else(|| GcError::Statvfs { mountpoint: mountpoint.clone() })?;
        let amount = policy.to_free(capacity, available);
        if amount == 0 {
            return Ok(Vec::new());
        }
        let plan = self.plan(&images, &in_use, policy, amount, now);
        tracing::info!(
            mountpoint,
            capacity,
            available,
            to_free = amount,
            candidates = plan.len(),
            "image filesystem above the GC threshold"
        );
        let mut removed = Vec::new();
        for (id, size) in plan {
            match rt.remove_image(&id).await {
                Ok(()) => {
                    let tags = images.iter().find(|i| i.id == id).map(|i| i.repo_tags.join(",")).unwrap_or_default();
                    tracing::info!(image = %id, tags, size, "image garbage-collected");
                    removed.push(id);
                }
                Err(e) => tracing::warn!(image = %id, error = %e, "removing an unused image"),
            }
        }
        Ok(removed)
    }
}

/// Runs passes every [`PERIOD`] (the first after a few seconds) until the process ends.
pub async fn run<R: Runtime>(rt: Arc<R>, policy: Policy) {
    let gc = ImageGc::default();
    tokio::time::sleep(Duration::from_secs(5)).await;
    loop {
        let measure = |m: &str| crate::stats::host::statvfs(std::path::Path::new(m)).map(|f| (f.capacity, f.available));
        if let Err(e) = gc.run_once(rt.as_ref(), &policy, measure, SystemTime::now()).await {
            tracing::warn!(error = %e, source = %std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default(), "image garbage collection");
        }
        tokio::time::sleep(PERIOD).await;
    }
}

#[cfg(test)]
#[path = "image_gc_tests.rs"]
mod tests;
