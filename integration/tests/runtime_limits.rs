//! berth-runtime, as root: cgroup limits on this host's (v1/hybrid) hierarchies are really
//! enforced — memory by the OOM killer, pids by failing forks, cpu by CFS quota.

mod common;

use std::time::Duration;

use common::{assert_ok, text, T, CHECK};
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
    assert_ok(&t.rt(&["update", "--memory", "128M", "--pids-limit", "30", "--cpu-quota", "50000", "--cpu-period", "100000", &t.id]));
    let read = |ctrl: &str, file: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{ctrl}/berth-test/{}/{file}", t.id)).unwrap().trim().to_owned();
    assert_eq!(read("memory", "memory.limit_in_bytes"), "134217728");
    assert_eq!(read("pids", "pids.max"), "30");
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
    let bad = t.rt(&["update", "--cpu-shares", "1", &t.id]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("cpu.shares"), "{}", text(&bad));
}
