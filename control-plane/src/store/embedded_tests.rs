use super::*;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn open(dir: &Path) -> Arc<Embedded> {
    Embedded::open(dir, EmbeddedOptions { history: 100, snapshot_every: 1000 }).unwrap()
}

// CRUD, lists and watches common to every backend: tests/store_contract.rs.

#[tokio::test]
async fn watch_replays_history_then_follows_and_reports_compaction() {
    let d = tempfile::tempdir().unwrap();
    let s = Embedded::open(d.path(), EmbeddedOptions { history: 3, snapshot_every: 1000 }).unwrap();
    s.create("/p/a", b("1")).await.unwrap();
    s.create("/q/x", b("1")).await.unwrap();
    s.update("/p/a", b("2"), None).await.unwrap();
    let mut w = s.watch("/p/", 1).await.unwrap();
    let e = w.recv().await.unwrap().unwrap();
    assert_eq!((e.rev, e.value.clone(), e.prev.clone()), (3, Some(b("2")), Some(b("1"))));
    s.delete("/p/a", None).await.unwrap();
    let e = w.recv().await.unwrap().unwrap();
    assert!(e.is_delete());
    assert_eq!((e.rev, e.prev), (4, Some(b("2"))));
    // history is 3 events: revisions 2..4 remain, so watching after 0 is too old.
    assert!(matches!(s.watch("/p/", 0).await, Err(StoreError::Compacted { compacted: 1, .. })));
}

#[tokio::test]
async fn state_history_and_revisions_survive_reopen_and_snapshots() {
    let d = tempfile::tempdir().unwrap();
    {
        let s = Embedded::open(d.path(), EmbeddedOptions { history: 50, snapshot_every: 7 }).unwrap();
        for i in 0..20 {
            s.create(&format!("/k/{i:02}"), b(&i.to_string())).await.unwrap();
        }
        for i in 0..5 {
            s.delete(&format!("/k/{i:02}"), None).await.unwrap();
        }
    }
    assert!(d.path().join(SNAP).exists());
    let s = Embedded::open(d.path(), EmbeddedOptions { history: 50, snapshot_every: 7 }).unwrap();
    assert_eq!(s.revision().await.unwrap(), 25);
    let all = s.list("/k/", ListOptions::default()).await.unwrap();
    assert_eq!(all.items.len(), 15);
    assert_eq!(all.items[0].create_rev, 6);
    let mut w = s.watch("/k/", 20).await.unwrap();
    for rev in 21..=25 {
        assert_eq!(w.recv().await.unwrap().unwrap().rev, rev);
    }
    assert_eq!(s.create("/k/new", b("n")).await.unwrap(), 26);
}

#[tokio::test]
async fn a_torn_log_tail_is_cut_and_earlier_writes_survive() {
    let d = tempfile::tempdir().unwrap();
    {
        let s = open(d.path());
        s.create("/a", b("1")).await.unwrap();
        s.create("/b", b("2")).await.unwrap();
    }
    // A crash mid-append: half a record at the end.
    let log = d.path().join(LOG);
    let mut rec = Vec::new();
    encode(&Record::Put { rev: 3, key: "/c".into(), value: b("3") }, &mut rec);
    let mut f = OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(&rec[..rec.len() / 2]).unwrap();
    drop(f);
    let s = open(d.path());
    assert_eq!(s.revision().await.unwrap(), 2);
    assert!(s.get("/c").await.unwrap().is_none());
    assert_eq!(s.create("/c", b("3")).await.unwrap(), 3);
    drop(s);
    let s = open(d.path());
    assert_eq!(s.get("/c").await.unwrap().unwrap().value, b("3"));
}

#[tokio::test]
async fn a_crash_between_snapshot_and_log_truncation_replays_nothing_twice() {
    let d = tempfile::tempdir().unwrap();
    let log_copy;
    {
        let s = Embedded::open(d.path(), EmbeddedOptions { history: 50, snapshot_every: 1000 }).unwrap();
        s.create("/a", b("1")).await.unwrap();
        s.update("/a", b("2"), None).await.unwrap();
        log_copy = std::fs::read(d.path().join(LOG)).unwrap();
        let mut st = s.lock();
        s.snapshot(&mut st).unwrap();
    }
    std::fs::write(d.path().join(LOG), log_copy).unwrap();
    let s = open(d.path());
    assert_eq!(s.revision().await.unwrap(), 2);
    let a = s.get("/a").await.unwrap().unwrap();
    assert_eq!((a.value, a.create_rev, a.mod_rev), (b("2"), 1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_validates_each_write_against_the_batch_before_it() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    let r1 = s.create("/g/k", b("0")).await.unwrap();
    // 64 racing compare-and-swaps on one revision: exactly one wins, even inside one batch.
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.update("/g/k", b(&i.to_string()), Some(r1)).await })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won, 1);
    // 200 concurrent creates: distinct revisions, all durable across a reopen.
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.create(&format!("/g/c{i:03}"), b("x")).await.unwrap() })
        })
        .collect();
    let mut revs = Vec::new();
    for t in tasks {
        revs.push(t.await.unwrap());
    }
    revs.sort();
    revs.dedup();
    assert_eq!(revs.len(), 200);
    let last = s.revision().await.unwrap();
    drop(s);
    let s = open(d.path());
    assert_eq!(s.revision().await.unwrap(), last);
    assert_eq!(s.list("/g/c", ListOptions::default()).await.unwrap().items.len(), 200);
}
