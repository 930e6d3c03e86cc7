//! The embedded store: state in memory, every write appended to a log and fsynced before memory
//! changes or anyone is answered; the log is folded into an atomically renamed snapshot now and
//! then. Recent events are kept (and snapshotted) so watches resume across restarts.
//!
//! Writes go through one committer thread (group commit): it takes every write queued while
//! the previous batch was being synced, validates them in order against the state plus the
//! batch so far, appends them with one write and one fdatasync, then applies them and answers.
//! Concurrent writers share an fsync instead of queueing for one each.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, MutexGuard, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::codec::{decode_all, encode, Record};
use super::{Event, KeyValue, ListOptions, ListResult, Result, Rev, Store, StoreError, WatchStream};

const LOG: &str = "store.log";
const SNAP: &str = "store.snap";
/// Most writes committed with one fsync.
const MAX_BATCH: usize = 1024;

#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// How many past events are kept for watches and lists at older revisions.
    pub history: usize,
    /// Fold the log into a snapshot after this many appended records.
    pub snapshot_every: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions { history: 50_000, snapshot_every: 50_000 }
    }
}

#[derive(Clone)]
struct Entry {
    value: Bytes,
    create_rev: Rev,
    mod_rev: Rev,
}

struct State {
    rev: Rev,
    /// Events with a revision <= compacted are gone.
    compacted: Rev,
    data: BTreeMap<String, Entry>,
    history: VecDeque<Arc<Event>>,
    log_records: usize,
}

pub struct Embedded {
    dir: PathBuf,
    opts: EmbeddedOptions,
    state: Mutex<State>,
    /// The log file: written only by the committer, outside the state lock.
    log: Mutex<File>,
    events: broadcast::Sender<Arc<Event>>,
    /// To the committer thread, which ends when this store is dropped.
    writes: std_mpsc::Sender<WriteReq>,
}

/// One queued write and where its outcome goes.
struct WriteReq {
    key: String,
    value: Option<Bytes>,
    op: Op,
    done: oneshot::Sender<WriteOutcome>,
}

/// A committed write's revision and the value it replaced.
type WriteOutcome = Result<(Rev, Option<KeyValue>)>;

/// Takes queued writes in batches until the store is gone.
fn committer(store: Weak<Embedded>, rx: std_mpsc::Receiver<WriteReq>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let Some(me) = store.upgrade() else { return };
        me.commit(batch);
    }
}

enum Op {
    Create,
    Update(Option<Rev>),
    Delete(Option<Rev>),
}

impl Embedded {
    /// Opens (or creates) the store in `dir`, replaying snapshot and log.
    pub fn open(dir: &Path, opts: EmbeddedOptions) -> Result<Arc<Embedded>> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut st = State { rev: 0, compacted: 0, data: BTreeMap::new(), history: VecDeque::new(), log_records: 0 };
        let log = open_log(&dir.join(LOG))?;
        let snap = dir.join(SNAP);
        if snap.exists() {
            load_snapshot(&snap, &mut st)?;
        }
        replay_log(&dir.join(LOG), &log, &mut st, opts.history)?;
        let (events, _) = broadcast::channel(4096);
        tracing::info!(dir = %dir.display(), rev = st.rev, keys = st.data.len(), "embedded store opened");
        let (writes, rx) = std_mpsc::channel();
        let me = Arc::new(Embedded {
            dir: dir.to_path_buf(),
            opts,
            state: Mutex::new(st),
            log: Mutex::new(log),
            events,
            writes,
        });
        let weak = Arc::downgrade(&me);
        std::thread::Builder::new().name("store-commit".into()).spawn(move || committer(weak, rx)).map_err(io(dir))?;
        Ok(me)
    }

    /// Queues a write for the committer and waits for its outcome.
    async fn submit(&self, key: &str, value: Option<Bytes>, op: Op) -> Result<(Rev, Option<KeyValue>)> {
        let (done, rx) = oneshot::channel();
        let gone = || StoreError::Unavailable { reason: "the store's committer has stopped".into() };
        self.writes.send(WriteReq { key: key.to_string(), value, op, done }).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Commits a batch: validates each write in order (against the state and the batch so far),
    /// appends all accepted records with one write + fdatasync, then applies them to memory,
    /// tells watchers and answers. Runs on the committer thread, the only writer, so the state
    /// cannot change between validation and apply and the lock is not held across the fsync
    /// (readers on async workers never wait for the disk).
    fn commit(&self, batch: Vec<WriteReq>) {
        let st = self.lock();
        let mut overlay: HashMap<String, Option<Entry>> = HashMap::new();
        let mut accepted: Vec<(WriteReq, Record, Option<KeyValue>)> = Vec::with_capacity(batch.len());
        let mut refused: Vec<(WriteReq, StoreError)> = Vec::new();
        let mut buf = Vec::new();
        let mut rev = st.rev;
        for w in batch {
            let cur = match overlay.get(&w.key) {
                Some(e) => e.clone(),
                None => st.data.get(&w.key).cloned(),
            };
            if let Err(e) = validate(&w.key, &w.op, cur.as_ref()) {
                refused.push((w, e));
                continue;
            }
            rev += 1;
            let rec = match &w.value {
                Some(v) => Record::Put { rev, key: w.key.clone(), value: v.clone() },
                None => Record::Delete { rev, key: w.key.clone() },
            };
            encode(&rec, &mut buf);
            let next = w.value.as_ref().map(|v| Entry {
                value: v.clone(),
                create_rev: cur.as_ref().map_or(rev, |c| c.create_rev),
                mod_rev: rev,
            });
            overlay.insert(w.key.clone(), next);
            let prev = cur.map(|c| KeyValue {
                key: w.key.clone(),
                value: c.value,
                create_rev: c.create_rev,
                mod_rev: c.mod_rev,
            });
            accepted.push((w, rec, prev));
        }
        drop(st);
        let path = self.dir.join(LOG);
        let written = if accepted.is_empty() {
            Ok(())
        } else {
            let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            let before = log.metadata().map(|m| m.len());
            let r = log.write_all(&buf).and_then(|_| log.sync_data());
            if r.is_err() {
                // Nothing of this batch was acknowledged: cut whatever reached the file.
                if let Ok(len) = before {
                    let _ = log.set_len(len);
                }
            }
            r
        };
        let mut st = self.lock();
        let mut snapshot = None;
        let mut answers: Vec<(oneshot::Sender<WriteOutcome>, WriteOutcome)> =
            refused.into_iter().map(|(w, e)| (w.done, Err(e))).collect();
        match written {
            Ok(()) => {
                for (w, rec, prev) in accepted {
                    let ev = apply(&mut st, rec, self.opts.history);
                    st.log_records += 1;
                    let _ = self.events.send(ev.clone());
                    answers.push((w.done, Ok((ev.rev, prev))));
                }
                if st.log_records >= self.opts.snapshot_every {
                    snapshot = Some((st.rev, snapshot_bytes(&st)));
                    st.log_records = 0;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, path = %path.display(), writes = accepted.len(), "store log append failed");
                for (w, _, _) in accepted {
                    let source = std::io::Error::new(e.kind(), e.to_string());
                    answers.push((w.done, Err(StoreError::Io { path: path.clone(), source })));
                }
            }
        }
        drop(st);
        for (done, r) in answers {
            let _ = done.send(r);
        }
        // No write is applied until this returns, so the snapshot and the log truncation
        // cannot miss one.
        if let Some((rev, buf)) = snapshot {
            if let Err(e) = self.write_snapshot(rev, &buf) {
                tracing::warn!(error = %e, "store snapshot failed; the log keeps growing");
            }
        }
    }

    /// Writes the whole state to a new snapshot (fsync, rename, fsync dir), then empties the log.
    #[cfg(test)]
    fn snapshot(&self, st: &mut State) -> Result<()> {
        st.log_records = 0;
        self.write_snapshot(st.rev, &snapshot_bytes(st))
    }

    /// Puts an encoded snapshot in place atomically, then empties the log it contains.
    fn write_snapshot(&self, rev: Rev, buf: &[u8]) -> Result<()> {
        let tmp = self.dir.join("store.snap.tmp");
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(buf).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        let snap = self.dir.join(SNAP);
        std::fs::rename(&tmp, &snap).map_err(io(&snap))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io(&self.dir))?;
        let path = self.dir.join(LOG);
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.set_len(0).map_err(io(&path))?;
        log.sync_all().map_err(io(&path))?;
        tracing::debug!(rev, bytes = buf.len(), "store snapshot written");
        Ok(())
    }

    fn list_now(&self, prefix: &str, opts: &ListOptions) -> Result<ListResult> {
        let st = self.lock();
        let at = match opts.at {
            Some(at) if at > st.rev => return Err(StoreError::FutureRevision { requested: at, current: st.rev }),
            Some(at) if at < st.compacted => {
                return Err(StoreError::Compacted { requested: at, compacted: st.compacted })
            }
            Some(at) => at,
            None => st.rev,
        };
        let start = match &opts.start_after {
            Some(s) if s.as_str() >= prefix => std::ops::Bound::Excluded(s.clone()),
            _ => std::ops::Bound::Included(prefix.to_string()),
        };
        let mut view: BTreeMap<String, Entry> = BTreeMap::new();
        let in_range = |k: &str| k.starts_with(prefix) && opts.start_after.as_deref().is_none_or(|s| k > s);
        if at == st.rev {
            let limit = opts.limit.unwrap_or(usize::MAX);
            let mut items = Vec::new();
            let mut remaining = 0;
            for (k, e) in st.data.range((start, std::ops::Bound::Unbounded)) {
                if !k.starts_with(prefix) {
                    break;
                }
                if items.len() < limit {
                    items.push(kv(k, e));
                } else {
                    remaining += 1;
                }
            }
            return Ok(ListResult { items, rev: at, remaining });
        }
        for (k, e) in st.data.range((start, std::ops::Bound::Unbounded)) {
            if !k.starts_with(prefix) {
                break;
            }
            view.insert(k.clone(), e.clone());
        }
        // Undo the events after `at`, newest first.
        for ev in st.history.iter().rev().take_while(|e| e.rev > at) {
            if !in_range(&ev.key) {
                continue;
            }
            match &ev.prev {
                None => {
                    view.remove(&ev.key);
                }
                Some(p) => {
                    // The previous mod revision is unknown after an undo; the event before it in
                    // history would tell, but callers only need values at `at`.
                    let create_rev = view.get(&ev.key).map_or(0, |e| e.create_rev);
                    view.insert(ev.key.clone(), Entry { value: p.clone(), create_rev, mod_rev: at });
                }
            }
        }
        let limit = opts.limit.unwrap_or(usize::MAX);
        let remaining = view.len().saturating_sub(limit);
        let items = view.iter().take(limit).map(|(k, e)| kv(k, e)).collect();
        Ok(ListResult { items, rev: at, remaining })
    }

    /// Events after `after` under `prefix` from history; Compacted if they are gone.
    fn backlog(st: &State, prefix: &str, after: Rev) -> Result<Vec<Arc<Event>>> {
        if after < st.compacted {
            return Err(StoreError::Compacted { requested: after, compacted: st.compacted });
        }
        let n = st.history.iter().rev().take_while(|e| e.rev > after).count();
        Ok(st.history.iter().skip(st.history.len() - n).filter(|e| e.key.starts_with(prefix)).cloned().collect())
    }
}

/// Whether `op` may apply to the key's current entry.
fn validate(key: &str, op: &Op, cur: Option<&Entry>) -> Result<()> {
    match (op, cur) {
        (Op::Create, Some(_)) => Err(StoreError::Exists { key: key.into() }),
        (Op::Update(_) | Op::Delete(_), None) => Err(StoreError::NotFound { key: key.into() }),
        (Op::Update(Some(exp)) | Op::Delete(Some(exp)), Some(c)) if c.mod_rev != *exp => {
            Err(StoreError::Conflict { key: key.into(), expected: *exp, actual: c.mod_rev })
        }
        _ => Ok(()),
    }
}

/// The state as snapshot records (encoded under the lock; written without it).
fn snapshot_bytes(st: &State) -> Vec<u8> {
    let mut buf = Vec::new();
    encode(&Record::SnapHeader { rev: st.rev, compacted: st.compacted }, &mut buf);
    for (k, e) in &st.data {
        let rec =
            Record::SnapEntry { key: k.clone(), value: e.value.clone(), create_rev: e.create_rev, mod_rev: e.mod_rev };
        encode(&rec, &mut buf);
    }
    for ev in &st.history {
        let rec =
            Record::SnapEvent { rev: ev.rev, key: ev.key.clone(), value: ev.value.clone(), prev: ev.prev.clone() };
        encode(&rec, &mut buf);
    }
    buf
}

fn kv(k: &str, e: &Entry) -> KeyValue {
    KeyValue { key: k.to_string(), value: e.value.clone(), create_rev: e.create_rev, mod_rev: e.mod_rev }
}

/// Applies a log record to memory and history; returns the event.
fn apply(st: &mut State, rec: Record, history: usize) -> Arc<Event> {
    let ev = match rec {
        Record::Put { rev, key, value } => {
            let prev = st.data.get(&key).cloned();
            let create_rev = prev.as_ref().map_or(rev, |p| p.create_rev);
            st.data.insert(key.clone(), Entry { value: value.clone(), create_rev, mod_rev: rev });
            Event { rev, key, value: Some(value), prev: prev.map(|p| p.value) }
        }
        Record::Delete { rev, key } => {
            let prev = st.data.remove(&key).map(|p| p.value);
            Event { rev, key, value: None, prev }
        }
        _ => unreachable!("only Put and Delete are applied"),
    };
    st.rev = ev.rev;
    let ev = Arc::new(ev);
    st.history.push_back(ev.clone());
    while st.history.len() > history {
        if let Some(old) = st.history.pop_front() {
            st.compacted = old.rev;
        }
    }
    ev
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

fn open_log(path: &Path) -> Result<File> {
    OpenOptions::new().create(true).read(true).append(true).open(path).map_err(io(path))
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut buf)).map_err(io(path))?;
    Ok(buf)
}

fn load_snapshot(path: &Path, st: &mut State) -> Result<()> {
    let buf = read_file(path)?;
    let (recs, valid) = decode_all(&buf);
    if valid != buf.len() {
        // Snapshots are renamed into place complete; a bad one is real corruption.
        return Err(StoreError::Corrupt { path: path.into(), reason: format!("invalid record at byte {valid}") });
    }
    for rec in recs {
        match rec {
            Record::SnapHeader { rev, compacted } => {
                st.rev = rev;
                st.compacted = compacted;
            }
            Record::SnapEntry { key, value, create_rev, mod_rev } => {
                st.data.insert(key, Entry { value, create_rev, mod_rev });
            }
            Record::SnapEvent { rev, key, value, prev } => {
                st.history.push_back(Arc::new(Event { rev, key, value, prev }))
            }
            other => {
                return Err(StoreError::Corrupt { path: path.into(), reason: format!("unexpected record {other:?}") })
            }
        }
    }
    Ok(())
}

/// Replays the log over the snapshot; a torn tail (crash mid-append, never acknowledged) is cut.
fn replay_log(path: &Path, log: &File, st: &mut State, history: usize) -> Result<()> {
    let buf = read_file(path)?;
    let (recs, valid) = decode_all(&buf);
    for rec in recs {
        let rev = match &rec {
            Record::Put { rev, .. } | Record::Delete { rev, .. } => *rev,
            other => {
                return Err(StoreError::Corrupt { path: path.into(), reason: format!("unexpected record {other:?}") })
            }
        };
        if rev <= st.rev {
            continue; // already in the snapshot (crash between snapshot rename and log truncation)
        }
        apply(st, rec, history);
        st.log_records += 1;
    }
    if valid != buf.len() {
        tracing::warn!(path = %path.display(), cut = buf.len() - valid, "cutting a torn tail off the store log");
        log.set_len(valid as u64).map_err(io(path))?;
        log.sync_all().map_err(io(path))?;
    }
    Ok(())
}

#[async_trait]
impl Store for Arc<Embedded> {
    async fn revision(&self) -> Result<Rev> {
        Ok(self.lock().rev)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.lock().data.get(key).map(|e| kv(key, e)))
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<Rev> {
        self.submit(key, Some(value), Op::Create).await.map(|r| r.0)
    }

    async fn update(&self, key: &str, value: Bytes, expected: Option<Rev>) -> Result<Rev> {
        self.submit(key, Some(value), Op::Update(expected)).await.map(|r| r.0)
    }

    async fn delete(&self, key: &str, expected: Option<Rev>) -> Result<(Rev, KeyValue)> {
        let (rev, prev) = self.submit(key, None, Op::Delete(expected)).await?;
        Ok((rev, prev.ok_or_else(|| StoreError::NotFound { key: key.into() })?))
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult> {
        self.list_now(prefix, &opts)
    }

    async fn watch(&self, prefix: &str, after: Rev) -> Result<WatchStream> {
        let (backlog, mut rx) = {
            let st = self.lock();
            if after > st.rev {
                return Err(StoreError::FutureRevision { requested: after, current: st.rev });
            }
            (Embedded::backlog(&st, prefix, after)?, self.events.subscribe())
        };
        let (tx, out) = mpsc::channel(256);
        let (me, prefix) = (self.clone(), prefix.to_string());
        tokio::spawn(async move {
            let mut last = after;
            let mut pending = backlog;
            loop {
                for ev in pending.drain(..) {
                    if ev.rev > last && ev.key.starts_with(&prefix) {
                        last = ev.rev;
                        if tx.send(Ok((*ev).clone())).await.is_err() {
                            return;
                        }
                    } else if ev.rev > last {
                        last = ev.rev;
                    }
                }
                tokio::select! {
                    r = rx.recv() => match r {
                        Ok(ev) => pending.push(ev),
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            // Fell behind the broadcast: catch up from history.
                            let caught_up = {
                                let st = me.lock();
                                Embedded::backlog(&st, &prefix, last).map(|b| (b, me.events.subscribe()))
                            };
                            match caught_up {
                                Ok((b, new_rx)) => { pending = b; rx = new_rx; }
                                Err(e) => { let _ = tx.send(Err(e)).await; return; }
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(out)
    }
}

#[cfg(test)]
#[path = "embedded_tests.rs"]
mod tests;
