//! The Store contract, run unchanged on the embedded store and on etcd: compare-and-swap
//! writes, lists by prefix with paging and at an older revision, watches that replay and
//! follow, compaction answered as Compacted. Revisions are taken relative to the store's
//! starting revision (etcd starts at 1, the embedded store at 0).

mod common;

use std::sync::Arc;
use std::time::Duration;

use berth_control::store::{Embedded, EmbeddedOptions, Etcd, EtcdOptions, ListOptions, Store, StoreError};
use bytes::Bytes;
use common::etcd::EtcdServer;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A store of each kind with `history` kept; the guard keeps its files or server alive.
enum Guard {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Etcd(#[allow(dead_code)] EtcdServer),
}

async fn open(kind: &str, history: usize) -> (Arc<dyn Store>, Guard) {
    match kind {
        "embedded" => {
            let d = tempfile::tempdir().unwrap();
            let s = Embedded::open(d.path(), EmbeddedOptions { history, snapshot_every: 1000 }).unwrap();
            (Arc::new(s), Guard::Dir(d))
        }
        _ => {
            let e = tokio::task::spawn_blocking(EtcdServer::start).await.unwrap();
            let s = Etcd::connect(
                std::slice::from_ref(&e.url),
                EtcdOptions { history: history as u64, ..Default::default() },
            )
            .await
            .unwrap();
            (Arc::new(s), Guard::Etcd(e))
        }
    }
}

async fn crud(kind: &str) {
    let (s, _g) = open(kind, 100).await;
    let base = s.revision().await.unwrap();
    let r1 = s.create("/p/a", b("1")).await.unwrap();
    assert_eq!(r1, base + 1);
    assert!(matches!(s.create("/p/a", b("x")).await, Err(StoreError::Exists { .. })));
    assert!(
        matches!(s.update("/p/a", b("2"), Some(r1 + 7)).await, Err(StoreError::Conflict { actual, .. }) if actual == r1)
    );
    let r2 = s.update("/p/a", b("2"), Some(r1)).await.unwrap();
    let got = s.get("/p/a").await.unwrap().unwrap();
    assert_eq!((got.value, got.create_rev, got.mod_rev), (b("2"), r1, r2));
    assert!(matches!(s.update("/p/none", b("2"), None).await, Err(StoreError::NotFound { .. })));
    assert!(matches!(s.delete("/p/none", None).await, Err(StoreError::NotFound { .. })));
    assert!(matches!(s.delete("/p/a", Some(r1)).await, Err(StoreError::Conflict { .. })));
    let (r3, last) = s.delete("/p/a", None).await.unwrap();
    assert_eq!((r3, last.value), (r2 + 1, b("2")));
    assert!(s.get("/p/a").await.unwrap().is_none());
    assert_eq!(s.revision().await.unwrap(), r3);
}

async fn lists(kind: &str) {
    let (s, _g) = open(kind, 100).await;
    for k in ["/p/a", "/p/b", "/p/c", "/q/a"] {
        s.create(k, b(k)).await.unwrap();
    }
    let at = s.revision().await.unwrap();
    let page = s.list("/p/", ListOptions { limit: Some(2), ..Default::default() }).await.unwrap();
    assert_eq!(page.items.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(), ["/p/a", "/p/b"]);
    assert_eq!((page.remaining, page.rev), (1, at));
    s.update("/p/b", b("new"), None).await.unwrap();
    s.delete("/p/c", None).await.unwrap();
    s.create("/p/d", b("d")).await.unwrap();
    let page2 =
        s.list("/p/", ListOptions { at: Some(at), start_after: Some("/p/b".into()), limit: Some(2) }).await.unwrap();
    assert_eq!(page2.items.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(), ["/p/c"]);
    assert_eq!(page2.remaining, 0);
    let old = s.list("/p/", ListOptions { at: Some(at), ..Default::default() }).await.unwrap();
    assert_eq!(old.items[1].value, b("/p/b"));
    let now = s.list("/p/", ListOptions::default()).await.unwrap();
    assert_eq!(now.items.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(), ["/p/a", "/p/b", "/p/d"]);
    let future = s.list("/p/", ListOptions { at: Some(at + 99), ..Default::default() }).await;
    assert!(matches!(future, Err(StoreError::FutureRevision { .. })), "{future:?}");
}

/// More keys than one etcd range chunk, more bytes than one gRPC message.
async fn large_lists(kind: &str) {
    let (s, _g) = open(kind, 100_000).await;
    let value = Bytes::from(vec![b'v'; 4096]);
    for chunk in (0..1300).collect::<Vec<_>>().chunks(100) {
        let writes = chunk.iter().map(|i| {
            let (s, v) = (s.clone(), value.clone());
            async move { s.create(&format!("/big/{i:05}"), v).await }
        });
        for r in futures_util::future::join_all(writes).await {
            r.unwrap();
        }
    }
    let all = s.list("/big/", ListOptions::default()).await.unwrap();
    assert_eq!((all.items.len(), all.remaining), (1300, 0));
    assert!(all.items.windows(2).all(|w| w[0].key < w[1].key));
    let page = s.list("/big/", ListOptions { limit: Some(1100), ..Default::default() }).await.unwrap();
    assert_eq!((page.items.len(), page.remaining, page.items[1099].key.as_str()), (1100, 200, "/big/01099"));
    let rest = s
        .list("/big/", ListOptions { at: Some(page.rev), start_after: Some("/big/01099".into()), limit: None })
        .await
        .unwrap();
    assert_eq!((rest.items.len(), rest.remaining, rest.rev), (200, 0, page.rev));
}

async fn watches(kind: &str) {
    let (s, _g) = open(kind, 100).await;
    let r1 = s.create("/p/a", b("1")).await.unwrap();
    s.create("/q/x", b("1")).await.unwrap();
    let r3 = s.update("/p/a", b("2"), None).await.unwrap();
    let mut w = s.watch("/p/", r1).await.unwrap();
    let e = w.recv().await.unwrap().unwrap();
    assert_eq!((e.rev, e.value.clone(), e.prev.clone()), (r3, Some(b("2")), Some(b("1"))));
    let (r4, _) = s.delete("/p/a", None).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), w.recv()).await.unwrap().unwrap().unwrap();
    assert!(e.is_delete());
    assert_eq!((e.rev, e.prev), (r4, Some(b("2"))));
    s.create("/p/b", b("b")).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), w.recv()).await.unwrap().unwrap().unwrap();
    assert!(e.is_create() && e.key == "/p/b");
    assert!(matches!(s.watch("/p/", r4 + 50).await, Err(StoreError::FutureRevision { .. })));
}

async fn compaction(kind: &str) {
    let (s, _g) = open(kind, 3).await;
    let base = s.revision().await.unwrap();
    for i in 0..12 {
        s.create(&format!("/c/{i}"), b("x")).await.unwrap();
    }
    // etcd compacts in the background: wait for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let compacted = match s.watch("/c/", base).await {
            Err(StoreError::Compacted { .. }) => true,
            Err(e) => panic!("{e}"),
            Ok(mut w) => matches!(
                tokio::time::timeout(Duration::from_secs(2), w.recv()).await,
                Ok(Some(Err(StoreError::Compacted { .. })))
            ),
        };
        if compacted {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{kind}: a watch from before the kept history was not refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The newest revisions are still watchable.
    let now = s.revision().await.unwrap();
    let mut w = s.watch("/c/", now - 2).await.unwrap();
    assert_eq!(w.recv().await.unwrap().unwrap().rev, now - 1);
}

macro_rules! on_both_backends {
    ($($name:ident),*) => {
        mod embedded { $(#[tokio::test] async fn $name() { super::$name("embedded").await })* }
        mod etcd { $(#[tokio::test] async fn $name() { super::$name("etcd").await })* }
    };
}
on_both_backends!(crud, lists, large_lists, watches, compaction);
