//! The embedded store: state in memory, every write appended to a log and fsynced before memory
//! changes or anyone is answered; the log is folded into an atomically renamed snapshot now and
//! then. Recent events are kept (and snapshotted) so watches resume across restarts.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};

use super::codec::{decode_all, encode, Record};
use super::{Event, KeyValue, ListOptions, ListResult, Result, Rev, Store, StoreError, WatchStream};

const LOG: &str = "store.log";
const SNAP: &str = "store.snap";

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
    log: File,
    log_records: usize,
}

pub struct Embedded {
    dir: PathBuf,
    opts: EmbeddedOptions,
    state: Mutex<State>,
    events: broadcast::Sender<Arc<Event>>,
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
        let mut st = State {
            rev: 0,
            compacted: 0,
            data: BTreeMap::new(),
            history: VecDeque::new(),
            log: open_log(&dir.join(LOG))?,
            log_records: 0,
        };
        let snap = dir.join(SNAP);
        if snap.exists() {
            load_snapshot(&snap, &mut st)?;
        }
        replay_log(&dir.join(LOG), &mut st, opts.history)?;
        let (events, _) = broadcast::channel(4096);
        tracing::info!(dir = %dir.display(), rev = st.rev, keys = st.data.len(), "embedded store opened");
        Ok(Arc::new(Embedded { dir: dir.to_path_buf(), opts, state: Mutex::new(st), events }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Validates, appends + fsyncs, then applies to memory and tells watchers. Blocking.
    fn write(&self, key: &str, value: Option<Bytes>, op: Op) -> Result<(Rev, Option<KeyValue>)> {
        let mut st = self.lock();
        let cur = st.data.get(key).cloned();
        match (&op, &cur) {
            (Op::Create, Some(_)) => return Err(StoreError::Exists { key: key.into() }),
            (Op::Update(_) | Op::Delete(_), None) => return Err(StoreError::NotFound { key: key.into() }),
            (Op::Update(Some(exp)) | Op::Delete(Some(exp)), Some(c)) if c.mod_rev != *exp => {
                return Err(StoreError::Conflict { key: key.into(), expected: *exp, actual: c.mod_rev })
            }
            _ => {}
        }
        let rev = st.rev + 1;
        let rec = match &value {
            Some(v) => Record::Put { rev, key: key.into(), value: v.clone() },
            None => Record::Delete { rev, key: key.into() },
        };
        let mut buf = Vec::with_capacity(64 + value.as_ref().map_or(0, |v| v.len()));
        encode(&rec, &mut buf);
        let path = self.dir.join(LOG);
        st.log.write_all(&buf).map_err(io(&path))?;
        st.log.sync_data().map_err(io(&path))?;
        st.log_records += 1;
        let prev = cur.as_ref().map(|c| KeyValue {
            key: key.into(),
            value: c.value.clone(),
            create_rev: c.create_rev,
            mod_rev: c.mod_rev,
        });
        let ev = apply(&mut st, rec, self.opts.history);
        let _ = self.events.send(ev);
        if st.log_records >= self.opts.snapshot_every {
            if let Err(e) = self.snapshot(&mut st) {
                tracing::warn!(error = %e, "store snapshot failed; the log keeps growing");
            }
        }
        Ok((rev, prev))
    }

    /// Writes the whole state to a new snapshot (fsync, rename, fsync dir), then empties the log.
    fn snapshot(&self, st: &mut State) -> Result<()> {
        let tmp = self.dir.join("store.snap.tmp");
        let mut buf = Vec::new();
        encode(&Record::SnapHeader { rev: st.rev, compacted: st.compacted }, &mut buf);
        for (k, e) in &st.data {
            let rec = Record::SnapEntry { key: k.clone(), value: e.value.clone(), create_rev: e.create_rev, mod_rev: e.mod_rev };
            encode(&rec, &mut buf);
        }
        for ev in &st.history {
            let rec = Record::SnapEvent { rev: ev.rev, key: ev.key.clone(), value: ev.value.clone(), prev: ev.prev.clone() };
            encode(&rec, &mut buf);
        }
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&buf).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        let snap = self.dir.join(SNAP);
        std::fs::rename(&tmp, &snap).map_err(io(&snap))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io(&self.dir))?;
        let log = self.dir.join(LOG);
        st.log.set_len(0).map_err(io(&log))?;
        st.log.sync_all().map_err(io(&log))?;
        st.log_records = 0;
        tracing::debug!(rev = st.rev, bytes = buf.len(), "store snapshot written");
        Ok(())
    }

    fn list_now(&self, prefix: &str, opts: &ListOptions) -> Result<ListResult> {
        let st = self.lock();
        let at = match opts.at {
            Some(at) if at > st.rev => return Err(StoreError::FutureRevision { requested: at, current: st.rev }),
            Some(at) if at < st.compacted => return Err(StoreError::Compacted { requested: at, compacted: st.compacted }),
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
            Record::SnapEvent { rev, key, value, prev } => st.history.push_back(Arc::new(Event { rev, key, value, prev })),
            other => {
                return Err(StoreError::Corrupt { path: path.into(), reason: format!("unexpected record {other:?}") })
            }
        }
    }
    Ok(())
}

/// Replays the log over the snapshot; a torn tail (crash mid-append, never acknowledged) is cut.
fn replay_log(path: &Path, st: &mut State, history: usize) -> Result<()> {
    let buf = read_file(path)?;
    let (recs, valid) = decode_all(&buf);
    for rec in recs {
        let rev = match &rec {
            Record::Put { rev, .. } | Record::Delete { rev, .. } => *rev,
            other => return Err(StoreError::Corrupt { path: path.into(), reason: format!("unexpected record {other:?}") }),
        };
        if rev <= st.rev {
            continue; // already in the snapshot (crash between snapshot rename and log truncation)
        }
        apply(st, rec, history);
        st.log_records += 1;
    }
    if valid != buf.len() {
        tracing::warn!(path = %path.display(), cut = buf.len() - valid, "cutting a torn tail off the store log");
        st.log.set_len(valid as u64).map_err(io(path))?;
        st.log.sync_all().map_err(io(path))?;
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Unavailable { reason: format!("store task failed: {e}") })?
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
        let (me, key) = (self.clone(), key.to_string());
        blocking(move || me.write(&key, Some(value), Op::Create).map(|r| r.0)).await
    }

    async fn update(&self, key: &str, value: Bytes, expected: Option<Rev>) -> Result<Rev> {
        let (me, key) = (self.clone(), key.to_string());
        blocking(move || me.write(&key, Some(value), Op::Update(expected)).map(|r| r.0)).await
    }

    async fn delete(&self, key: &str, expected: Option<Rev>) -> Result<(Rev, KeyValue)> {
        let (me, key) = (self.clone(), key.to_string());
        blocking(move || {
            let (rev, prev) = me.write(&key, None, Op::Delete(expected))?;
            Ok((rev, prev.ok_or(StoreError::NotFound { key })?))
        })
        .await
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
