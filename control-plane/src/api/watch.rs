//! Watch responses: a stream of `{"type","object"}` JSON lines from a store watch, with
//! selector transitions (an object leaving the selection is DELETED), bookmarks, synthetic
//! ADDED events for "start from now", and 410 Expired as an ERROR event.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::registry::{decode, ListQuery, Registry};
use super::resources::ResourceDef;
use super::status::ApiError;
use super::table;
use crate::store::{KeyValue, Rev, StoreError};

pub struct WatchParams {
    pub query: ListQuery,
    /// None: start from the current state (synthetic ADDED events first).
    pub since: Option<Rev>,
    pub bookmarks: bool,
    pub bookmark_every: Duration,
    pub timeout: Duration,
    pub initial_events_end: bool,
    pub as_table: Option<String>,
}

struct Out {
    tx: mpsc::Sender<Bytes>,
    kind: &'static str,
    as_table: Option<String>,
    headers_sent: bool,
}

impl Out {
    async fn send(&mut self, ty: &str, obj: Value) -> bool {
        let obj = match &self.as_table {
            Some(inc) if ty != "BOOKMARK" && ty != "ERROR" => {
                let rv = obj["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string();
                let t = table::table(self.kind, &[obj], &rv, None, inc, !self.headers_sent);
                self.headers_sent = true;
                t
            }
            _ => obj,
        };
        let mut line = serde_json::to_vec(&json!({"type": ty, "object": obj})).expect("JSON values serialise");
        line.push(b'\n');
        self.tx.send(Bytes::from(line)).await.is_ok()
    }
}

/// Starts the watch; returns the receiver of response chunks, or an error before any output.
pub async fn start(
    reg: &Registry,
    r: &'static ResourceDef,
    ns: Option<String>,
    p: WatchParams,
) -> Result<mpsc::Receiver<Bytes>, ApiError> {
    let prefix = r.prefix(ns.as_deref());
    let mut initial = Vec::new();
    let since = match p.since {
        Some(rv) => rv,
        None => {
            let page = reg.list(r, ns.as_deref(), &p.query).await?;
            initial = page.items;
            page.rev
        }
    };
    let (tx, rx) = mpsc::channel(64);
    let mut out = Out { tx, kind: r.kind, as_table: p.as_table.clone(), headers_sent: false };
    let events = match reg.store.watch(&prefix, since).await {
        Ok(w) => w,
        Err(StoreError::Compacted { requested, .. }) => {
            let st = ApiError::gone(format!("too old resource version: {requested}")).to_status();
            tokio::spawn(async move { out.send("ERROR", st).await });
            return Ok(rx);
        }
        Err(e) => return Err(e.into()),
    };
    tokio::spawn(run(r, out, events, initial, since, p));
    Ok(rx)
}

async fn run(
    r: &'static ResourceDef,
    mut out: Out,
    mut events: crate::store::WatchStream,
    initial: Vec<Value>,
    since: Rev,
    p: WatchParams,
) {
    for obj in initial {
        if !out.send("ADDED", obj).await {
            return;
        }
    }
    let mut last = since;
    let bookmark = |rev: Rev, end: bool| {
        let mut m = json!({"resourceVersion": rev.to_string()});
        if end {
            m["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({"kind": r.kind, "apiVersion": r.api_version(), "metadata": m})
    };
    if p.initial_events_end && p.bookmarks && !out.send("BOOKMARK", bookmark(last, true)).await {
        return;
    }
    let deadline = tokio::time::sleep(p.timeout);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(p.bookmark_every);
    tick.tick().await;
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(Ok(ev)) => {
                    last = ev.rev;
                    let Some((ty, obj)) = classify(&p.query, &ev) else { continue };
                    if !out.send(ty, obj).await { return; }
                }
                Some(Err(e)) => {
                    let st = ApiError::from(e).to_status();
                    out.send("ERROR", st).await;
                    return;
                }
                None => return,
            },
            _ = tick.tick(), if p.bookmarks => {
                if !out.send("BOOKMARK", bookmark(last, false)).await { return; }
            }
            _ = &mut deadline => return,
            _ = out.tx.closed() => return,
        }
    }
}

fn obj_at(key: &str, value: &Bytes, rev: Rev) -> Option<Value> {
    decode(&KeyValue { key: key.to_string(), value: value.clone(), create_rev: 0, mod_rev: rev }).ok()
}

/// Maps a store event to a watch event for this selection.
fn classify(q: &ListQuery, ev: &crate::store::Event) -> Option<(&'static str, Value)> {
    let sel = |v: &Value| q.labels.matches_object(v) && q.fields.matches(v);
    let new = ev.value.as_ref().and_then(|v| obj_at(&ev.key, v, ev.rev));
    // Without selectors the previous value only matters for a delete: skip decoding it otherwise.
    let everything = q.labels.0.is_empty() && q.fields.is_empty();
    let old =
        if everything && new.is_some() { None } else { ev.prev.as_ref().and_then(|v| obj_at(&ev.key, v, ev.rev)) };
    let new_m = new.as_ref().is_some_and(sel);
    let old_m = if everything && new.is_some() { ev.prev.is_some() } else { old.as_ref().is_some_and(sel) };
    match (new, new_m, old_m) {
        (Some(n), true, true) => Some(("MODIFIED", n)),
        (Some(n), true, false) => Some(("ADDED", n)),
        (Some(n), false, true) => Some(("DELETED", n)),
        (None, _, true) => old.map(|o| ("DELETED", o)),
        _ => None,
    }
}
