//! The one error type of the image store (`ImageError`), with the context each failure needs.

use std::path::PathBuf;

/// Everything the image store can fail with. Messages carry context; the underlying cause, if
/// any, is the `source()` (never printed twice).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("registries config {path}: cannot parse")]
    ConfigParse { path: PathBuf, source: toml::de::Error },

    #[error("registries config: {reason}")]
    ConfigInvalid { reason: String },

    #[error("pulling {reference} is blocked by the registries config (registry entry {prefix:?})")]
    Blocked { reference: String, prefix: String },

    #[error("pull {reference} from {endpoint}")]
    Registry { reference: String, endpoint: String, source: oci_client::errors::OciDistributionError },

    #[error("pull {reference}: every endpoint failed: {attempts}")]
    PullFailed { reference: String, attempts: String },

    #[error("{what} {reference}: {reason}")]
    Manifest { what: &'static str, reference: String, reason: String },

    #[error("blob {expected}: content has digest {actual}")]
    DigestMismatch { expected: String, actual: String },

    #[error("unsupported or malformed digest {digest:?}")]
    BadDigest { digest: String },

    #[error("layer {layer}: entry {entry:?} refused: {reason}")]
    UnsafeEntry { layer: String, entry: String, reason: String },

    #[error("layer {layer}: cannot read archive")]
    Archive { layer: String, source: std::io::Error },

    #[error("image {name:?} not found")]
    NotFound { name: String },

    #[error("snapshot {key:?}: {reason}")]
    Snapshot { key: String, reason: String },

    #[error("mount overlay at {target}")]
    Mount { target: PathBuf, source: std::io::Error },

    #[error("import {path}: {reason}")]
    Import { path: PathBuf, reason: String },

    #[error("credentials: {reason}")]
    Auth { reason: String },

    #[error("{op} {path}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },

    #[error("image metadata {path}: cannot decode")]
    Metadata { path: PathBuf, source: serde_json::Error },

    #[error("background task failed: {reason}")]
    Task { reason: String },
}

impl ImageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ImageError::Io { op, path: path.into(), source }
    }

    /// The message of this error followed by its whole `source()` chain, for places that can only
    /// carry one string (aggregated pull attempts, gRPC status messages).
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(self);
        while let Some(e) = cur {
            out.push_str(": ");
            out.push_str(&e.to_string());
            cur = e.source();
        }
        out
    }
}

/// Shorthand for `map_err(|e| ImageError::io(op, path, e))`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T, ImageError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T, ImageError> {
        self.map_err(|e| ImageError::io(op, path, e))
    }
}
