//! berth-runtime, as root: cgroup limits on this host's (v1/hybrid) hierarchies are really
//! enforced — memory by the OOM killer, pids by failing forks, cpu by CFS quota.

mod common;

use std::time::Duration;

use common::{assert_ok, text, CHECK, T};
use serde_json::json;

#[test]
#[ignore = "needs root"]
fn memory_limit_oom_kills() {
    let t = T::new("oom");
    let mut spec = t.spec(&[CHECK, "/check.json"]);
    spec["linux"]["resources"] = json!({ "memory": { "limit": 33554432, "swap": 33554432 } });
    t.expect(&json!({
        "cgroup": [{ "any_of": [{ "path": "memory.max", "value": "33554432" }, { "path": "memory/memory.limit_in_bytes", "value": "33554432" }] }],
        "alloc_mb": 128
    }));
    let out = t.run(&spec);
    assert_eq!(out.status.code(), Some(128 + 9), "expected SIGKILL by the OOM killer\n{}", text(&out));
}

#[test]
#[ignore = "needs root"]
fn memory_within_limit_survives() {
    let t = T::new("nooom");
    let mut spec = t.spec(&[CHECK, "/check.json"]);
    spec["linux"]["resources"] = json!({ "memory": { "limit": 134217728 } });
    t.expect(&json!({ "alloc_mb": 32 }));
    assert_ok(&t.run(&spec));
}

#[test]
#[ignore = "needs root"]
fn pids_limit_fails_forks() {
    let t = T::new("pids");
    let mut spec = t.spec(&[CHECK, "/check.json"]);
    spec["linux"]["resources"] = json!({ "pids": { "limit": 10 } });
    t.expect(&json!({
        "cgroup": [{ "any_of": [{ "path": "pids.max", "value": "10" }, { "path": "pids/pids.max", "value": "10" }] }],
        "fork_count": 20, "fork_max_ok": 9
    }));
    assert_ok(&t.run(&spec));
}

#[test]
#[ignore = "needs root"]
fn cpu_quota_throttles() {
    let t = T::new("cpu");
    let mut spec = t.spec(&["sh", "-c", "while :; do :; done"]);
    spec["linux"]["resources"] = json!({ "cpu": { "quota": 20000, "period": 100000, "shares": 256 } });
    assert_ok(&t.create(&spec));
    assert_ok(&t.rt(&["start", &t.id]));
    std::thread::sleep(Duration::from_millis(1500));
    let out = t.rt(&["events", "--stats", &t.id]);
    assert_ok(&out);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let used_ns = stats["data"]["cpu"]["usage_total"].as_u64().unwrap();
    // 20% of 1.5 s is 0.3 s; unthrottled a busy loop would use ~1.5 s.
    assert!(used_ns > 100_000_000 && used_ns < 600_000_000, "cpu used {used_ns} ns in 1.5 s with a 20% quota");
    assert!(stats["data"]["cpu"]["throttled_periods"].as_u64().unwrap() > 0, "{stats}");
    assert_ok(&t.rt(&["delete", "--force", &t.id]));
}

#[test]
#[ignore = "needs root"]
fn update_changes_live_limits() {
    let t = T::new("update");
    let mut spec = t.spec(&["sleep", "100"]);
    spec["linux"]["resources"] = json!({ "memory": { "limit": 67108864 }, "pids": { "limit": 50 } });
    assert_ok(&t.create(&spec));
    assert_ok(&t.rt(&["start", &t.id]));
    assert_ok(&t.rt(&[
        "update",
        "--memory",
        "128M",
        "--pids-limit",
        "30",
        "--cpu-quota",
        "50000",
        "--cpu-period",
        "100000",
        &t.id,
    ]));
    let read = |ctrl: &str, file: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{ctrl}/berth-test/{}/{file}", t.id)).unwrap().trim().to_owned()
    };
    assert_eq!(read("memory", "memory.limit_in_bytes"), "134217728");
    assert_eq!(read("pids", "pids.max"), "30");
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
    let bad = t.rt(&["update", "--cpu-shares", "1", &t.id]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("cpu.shares"), "{}", text(&bad));
}

#[test]
#[ignore = "needs root"]
fn every_resource_kind_reaches_its_cgroup_file() {
    let t = T::new("resources");
    let mut spec = t.spec(&["sleep", "100"]);
    spec["linux"]["resources"] = json!({
        "memory": { "limit": 67108864, "reservation": 33554432, "swap": 134217728, "swappiness": 10 },
        "cpu": { "shares": 256, "quota": 30000, "period": 50000, "cpus": "0", "mems": "0" },
        "pids": { "limit": 33 },
        "blockIO": { "weight": 300 },
        "hugepageLimits": [{ "pageSize": "2MB", "limit": 4194304 }]
    });
    // A block IO weight needs a weight file, which only a host with BFQ (or the old CFQ)
    // has: without one the create fails naming it, as runc's does, and leaves nothing behind.
    let created = t.create(&spec);
    let weight = created.status.success();
    if !weight {
        let err = text(&created);
        assert!(err.contains("blkio.bfq.weight"), "only the block IO weight may be refused here: {err}");
        assert!(
            std::fs::metadata(format!("/sys/fs/cgroup/memory/berth-test/{}", t.id)).is_err(),
            "the refused create left its cgroup"
        );
        spec["linux"]["resources"].as_object_mut().expect("resources").remove("blockIO");
        assert_ok(&t.create(&spec));
    }
    let read = |path: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{path}"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|e| format!("<{e}>"))
    };
    let id = &t.id;
    let expect = [
        (format!("memory/berth-test/{id}/memory.limit_in_bytes"), "67108864"),
        (format!("memory/berth-test/{id}/memory.soft_limit_in_bytes"), "33554432"),
        (format!("memory/berth-test/{id}/memory.memsw.limit_in_bytes"), "134217728"),
        (format!("memory/berth-test/{id}/memory.swappiness"), "10"),
        (format!("cpu/berth-test/{id}/cpu.shares"), "256"),
        (format!("cpu/berth-test/{id}/cpu.cfs_quota_us"), "30000"),
        (format!("cpu/berth-test/{id}/cpu.cfs_period_us"), "50000"),
        (format!("cpuset/berth-test/{id}/cpuset.cpus"), "0"),
        (format!("cpuset/berth-test/{id}/cpuset.mems"), "0"),
        (format!("pids/berth-test/{id}/pids.max"), "33"),
    ];
    if weight {
        assert_eq!(read(&format!("blkio/berth-test/{id}/blkio.bfq.weight")), "300");
    }
    for (path, want) in &expect {
        assert_eq!(read(path), *want, "{path}");
    }
    // On this hybrid host hugetlb lives only in the unified hierarchy: the write goes there.
    let unified = std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers").unwrap_or_default();
    if unified.split_whitespace().any(|c| c == "hugetlb") {
        assert_eq!(read(&format!("unified/berth-test/{id}/hugetlb.2MB.max")), "4194304");
    } else {
        assert_eq!(read(&format!("hugetlb/berth-test/{id}/hugetlb.2MB.limit_in_bytes")), "4194304");
    }
}
