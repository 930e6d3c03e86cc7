//! The etcd v3 backend: the Store contract on etcd's KV and Watch APIs, the way kube-apiserver
//! uses them. Creates, updates and deletes are transactions comparing the key's create or mod
//! revision; lists are ranges at a revision; watches start at `after + 1` with previous values.
//! etcd's revision is the store revision, so resourceVersions stay comparable across replicas.
//! History is compacted to the newest `history` revisions, as often as every `history / 8`
//! writes (kube-apiserver compacts on a timer; counting writes keeps tests deterministic).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;

use super::{Event, KeyValue, ListOptions, ListResult, Result, Rev, Store, StoreError, WatchStream};

/// Keys read per range request.
const LIST_CHUNK: usize = 1000;
/// Largest gRPC response accepted (etcd's own request limit is 1.5 MiB per value).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Revisions of history kept for watches and lists at older revisions.
    pub history: u64,
    /// How long to keep retrying the first contact.
    pub connect_for: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions { history: 50_000, connect_for: Duration::from_secs(30) }
    }
}

pub struct Etcd {
    client: Client,
    history: u64,
    /// The newest revision a compaction was asked for.
    compacted: Arc<AtomicU64>,
}

fn etcd(op: &'static str) -> impl FnOnce(etcd_client::Error) -> StoreError {
    move |source| StoreError::Etcd { op, source }
}

impl Etcd {
    /// Connects to `endpoints` (`http://host:port`), retrying for `opts.connect_for`.
    pub async fn connect(endpoints: &[String], opts: EtcdOptions) -> Result<Etcd> {
        let co = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let deadline = tokio::time::Instant::now() + opts.connect_for;
        loop {
            let attempt = async {
                let mut client = Client::connect(endpoints, Some(co.clone())).await.map_err(etcd("connect"))?;
                let rev = client
                    .get("/", Some(GetOptions::new().with_count_only()))
                    .await
                    .map_err(etcd("get"))?
                    .header()
                    .map_or(0, |h| h.revision());
                Ok::<_, StoreError>((client, rev))
            };
            match attempt.await {
                Ok((client, rev)) => {
                    tracing::info!(?endpoints, rev, "connected to etcd");
                    return Ok(Etcd { client, history: opts.history.max(1), compacted: Arc::new(AtomicU64::new(0)) });
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "etcd not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Compacts in the background once enough writes have passed the last compaction.
    fn after_write(&self, rev: Rev) {
        let target = rev.saturating_sub(self.history);
        let last = self.compacted.load(Ordering::Relaxed);
        if target == 0 || target < last + (self.history / 8).max(1) {
            return;
        }
        if self.compacted.compare_exchange(last, target, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return;
        }
        let mut kv = self.client.kv_client();
        tokio::spawn(async move {
            match kv.compact(target as i64, None).await {
                Ok(_) => tracing::debug!(rev = target, "etcd compacted"),
                // Another replica got there first.
                Err(e) if e.to_string().contains("compacted") => {}
                Err(e) => tracing::warn!(error = %e, rev = target, "etcd compaction failed"),
            }
        });
    }

    /// A transaction writing `then` when `cond` holds; on failure the key's current state
    /// tells NotFound / Exists / Conflict apart.
    async fn txn(
        &self,
        key: &str,
        cond: Compare,
        then: TxnOp,
    ) -> Result<std::result::Result<(Rev, Vec<TxnOpResponse>), Option<KeyValue>>> {
        let t = Txn::new().when([cond]).and_then([then]).or_else([TxnOp::get(key, None)]);
        let resp = self.kv().txn(t).await.map_err(etcd("txn"))?;
        let rev = resp.header().map_or(0, |h| h.revision()) as Rev;
        let ops = resp.op_responses();
        if resp.succeeded() {
            self.after_write(rev);
            return Ok(Ok((rev, ops)));
        }
        let cur = ops.into_iter().find_map(|o| match o {
            TxnOpResponse::Get(g) => g.kvs().first().map(kv_of),
            _ => None,
        });
        Ok(Err(cur))
    }

    async fn current(&self) -> Rev {
        self.revision().await.unwrap_or(0)
    }

    /// A KV client that accepts responses as large as one object can be.
    fn kv(&self) -> etcd_client::KvClient {
        self.client.kv_client().max_decoding_message_size(MAX_MESSAGE)
    }

    async fn range_error(&self, e: etcd_client::Error, at: Option<Rev>) -> StoreError {
        let msg = e.to_string();
        match at {
            Some(at) if msg.contains("future revision") => {
                StoreError::FutureRevision { requested: at, current: self.current().await }
            }
            Some(at) if msg.contains("compacted") => {
                StoreError::Compacted { requested: at, compacted: self.compacted.load(Ordering::Relaxed) }
            }
            _ => StoreError::Etcd { op: "range", source: e },
        }
    }
}

fn kv_of(k: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(k.key()).into_owned(),
        value: Bytes::copy_from_slice(k.value()),
        create_rev: k.create_revision() as Rev,
        mod_rev: k.mod_revision() as Rev,
    }
}

/// The first key after every key starting with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn conflict_or_missing(key: &str, expected: Option<Rev>, cur: Option<KeyValue>) -> StoreError {
    match (cur, expected) {
        (Some(c), Some(e)) => StoreError::Conflict { key: key.into(), expected: e, actual: c.mod_rev },
        _ => StoreError::NotFound { key: key.into() },
    }
}

#[async_trait]
impl Store for Etcd {
    async fn revision(&self) -> Result<Rev> {
        let r =
            self.client.kv_client().get("/", Some(GetOptions::new().with_count_only())).await.map_err(etcd("get"))?;
        Ok(r.header().map_or(0, |h| h.revision()) as Rev)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let r = self.kv().get(key, None).await.map_err(etcd("get"))?;
        Ok(r.kvs().first().map(kv_of))
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<Rev> {
        match self
            .txn(key, Compare::create_revision(key, CompareOp::Equal, 0), TxnOp::put(key, value.to_vec(), None))
            .await?
        {
            Ok((rev, _)) => Ok(rev),
            Err(_) => Err(StoreError::Exists { key: key.into() }),
        }
    }

    async fn update(&self, key: &str, value: Bytes, expected: Option<Rev>) -> Result<Rev> {
        let cond = match expected {
            Some(e) => Compare::mod_revision(key, CompareOp::Equal, e as i64),
            None => Compare::create_revision(key, CompareOp::Greater, 0),
        };
        match self.txn(key, cond, TxnOp::put(key, value.to_vec(), None)).await? {
            Ok((rev, _)) => Ok(rev),
            Err(cur) => Err(conflict_or_missing(key, expected, cur)),
        }
    }

    async fn delete(&self, key: &str, expected: Option<Rev>) -> Result<(Rev, KeyValue)> {
        let cond = match expected {
            Some(e) => Compare::mod_revision(key, CompareOp::Equal, e as i64),
            None => Compare::create_revision(key, CompareOp::Greater, 0),
        };
        let del = TxnOp::delete(key, Some(etcd_client::DeleteOptions::new().with_prev_key()));
        match self.txn(key, cond, del).await? {
            Ok((rev, ops)) => {
                let prev = ops.into_iter().find_map(|o| match o {
                    TxnOpResponse::Delete(d) => d.prev_kvs().first().map(kv_of),
                    _ => None,
                });
                Ok((rev, prev.ok_or_else(|| StoreError::NotFound { key: key.into() })?))
            }
            Err(cur) => Err(conflict_or_missing(key, expected, cur)),
        }
    }

    /// Ranges are read in chunks at one revision: a single response for 10,000 pods would pass
    /// gRPC's message size limit, and chunks bound the memory one read takes.
    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult> {
        let mut start = match &opts.start_after {
            Some(s) if s.as_str() >= prefix => format!("{s}\0"),
            _ => prefix.to_string(),
        };
        let (end, want) = (prefix_end(prefix), opts.limit.unwrap_or(usize::MAX));
        let mut at = opts.at;
        let mut items: Vec<KeyValue> = Vec::new();
        loop {
            let n = (want - items.len()).min(LIST_CHUNK);
            let mut o = GetOptions::new().with_range(end.clone()).with_limit(n as i64);
            if let Some(at) = at {
                o = o.with_revision(at as i64);
            }
            let r = match self.kv().get(start.as_str(), Some(o)).await {
                Ok(r) => r,
                Err(e) => return Err(self.range_error(e, at).await),
            };
            let rev = *at.get_or_insert(r.header().map_or(0, |h| h.revision()) as Rev);
            items.extend(r.kvs().iter().map(kv_of));
            let left = (r.count() as usize).saturating_sub(r.kvs().len());
            match items.last() {
                Some(last) if left > 0 && items.len() < want => start = format!("{}\0", last.key),
                _ => return Ok(ListResult { items, rev, remaining: left }),
            }
        }
    }

    async fn watch(&self, prefix: &str, after: Rev) -> Result<WatchStream> {
        let current = self.revision().await?;
        if after > current {
            return Err(StoreError::FutureRevision { requested: after, current });
        }
        let wo = WatchOptions::new().with_prefix().with_start_revision(after as i64 + 1).with_prev_key();
        let mut stream = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE)
            .watch(prefix, Some(wo))
            .await
            .map_err(etcd("watch"))?;
        let (tx, out) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = stream.message() => m,
                    _ = tx.closed() => return,
                };
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        let _ = tx.send(Err(StoreError::Unavailable { reason: "etcd ended the watch".into() })).await;
                        return;
                    }
                    Err(source) => {
                        let _ = tx.send(Err(StoreError::Etcd { op: "watch", source })).await;
                        return;
                    }
                };
                if resp.compact_revision() > 0 {
                    let compacted = (resp.compact_revision() as Rev).saturating_sub(1);
                    let _ = tx.send(Err(StoreError::Compacted { requested: after, compacted })).await;
                    return;
                }
                if resp.canceled() {
                    let _ = tx
                        .send(Err(StoreError::Unavailable {
                            reason: format!("etcd cancelled the watch: {}", resp.cancel_reason()),
                        }))
                        .await;
                    return;
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let e = Event {
                        rev: kv.mod_revision() as Rev,
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        value: (ev.event_type() == EventType::Put).then(|| Bytes::copy_from_slice(kv.value())),
                        prev: ev.prev_kv().map(|p| Bytes::copy_from_slice(p.value())),
                    };
                    if tx.send(Ok(e)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }
}
