//! The image store behind CRI's ImageService: registry pulls and tarball imports into a
//! content-addressed blob store, safely unpacked per-layer directories, persisted image metadata,
//! garbage collection, and overlayfs snapshots for container root filesystems.
//!
//! On disk, under the store root (default `/var/lib/berth/images`):
//! `blobs/sha256/<hex>` (verified blobs, shared), `layers/<hex>` (one unpacked directory per layer
//! blob), `snapshots/<key>/{upper,work,layers}`, `images.json` (metadata, written atomically) and
//! `tmp/` (downloads and unpacks in progress, renamed into place when complete).

mod auth;
mod error;
mod import;
mod layer_path;
mod meta;
mod pull;
pub mod reference;
mod registries;
mod snapshot;
mod store;
pub mod unpack;

pub use auth::Auth;
pub use error::ImageError;
pub use meta::{Image, ImageConfig, Layer};
pub use registries::{Endpoint, Mirror, PullFrom, RegistriesConfig, Registry};
pub use snapshot::{FsUsage, RootfsIdMap};
pub use store::{ImageStore, StoreOptions};
