//! Storage behind one trait: a revision-ordered key/value store with compare-and-swap writes,
//! lists at a revision and watches from a revision (the contract kube-apiserver gets from etcd).

mod codec;
pub mod embedded;
pub mod etcd;

use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

pub use embedded::{Embedded, EmbeddedOptions};
pub use etcd::{Etcd, EtcdOptions};

/// A store revision: every write gets the next one; 0 means "nothing written yet".
pub type Rev = u64;

/// One stored object.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    pub create_rev: Rev,
    pub mod_rev: Rev,
}

/// One change, as a watcher sees it. `value` is None for a delete; `prev` is the value before
/// (None for a create).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub rev: Rev,
    pub key: String,
    pub value: Option<Bytes>,
    pub prev: Option<Bytes>,
}

impl Event {
    pub fn is_create(&self) -> bool {
        self.value.is_some() && self.prev.is_none()
    }
    pub fn is_delete(&self) -> bool {
        self.value.is_none()
    }
}

/// A page of a list: items in key order, the revision the list was taken at, and how many
/// matching keys follow the page.
#[derive(Clone, Debug)]
pub struct ListResult {
    pub items: Vec<KeyValue>,
    pub rev: Rev,
    pub remaining: usize,
}

/// What a list asks for.
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// List the state as of this revision (None: the newest).
    pub at: Option<Rev>,
    /// Start strictly after this key (paging).
    pub start_after: Option<String>,
    /// At most this many items (None: all).
    pub limit: Option<usize>,
}

/// A watch: events in revision order, or one error after which the stream ends.
pub type WatchStream = mpsc::Receiver<Result<Event, StoreError>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {key} already exists")]
    Exists { key: String },
    #[error("key {key} not found")]
    NotFound { key: String },
    #[error("key {key} is at revision {actual}, not {expected}")]
    Conflict { key: String, expected: Rev, actual: Rev },
    #[error("revision {requested} has been compacted (oldest watchable is after {compacted})")]
    Compacted { requested: Rev, compacted: Rev },
    #[error("revision {requested} is newer than the store ({current})")]
    FutureRevision { requested: Rev, current: Rev },
    #[error("store I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("etcd {op}")]
    Etcd {
        op: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("store backend unavailable: {reason}")]
    Unavailable { reason: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The newest revision.
    async fn revision(&self) -> Result<Rev>;
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// Creates `key`; `Exists` if it is there.
    async fn create(&self, key: &str, value: Bytes) -> Result<Rev>;
    /// Replaces `key`, which must exist and, when `expected` is given, be at that mod revision.
    async fn update(&self, key: &str, value: Bytes, expected: Option<Rev>) -> Result<Rev>;
    /// Deletes `key` (at `expected`, when given); returns the delete's revision and the last value.
    async fn delete(&self, key: &str, expected: Option<Rev>) -> Result<(Rev, KeyValue)>;
    /// Keys starting with `prefix`, in key order.
    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult>;
    /// Changes to keys starting with `prefix` with a revision greater than `after`.
    async fn watch(&self, prefix: &str, after: Rev) -> Result<WatchStream>;
}
