//! berth-runtime on a pure cgroup v2 host: a QEMU guest (software emulation, Debian's kernel,
//! every v2 controller enabled) runs real containers and checks that memory, pids and cpu
//! limits are enforced, and that freeze, update and cleanup work through the v2 files.

use std::path::Path;
use std::process::Command;

use berth_integration::{bin_path, workspace_root, Bundle};
use serde_json::{json, Value};

const CHECK: &str = "/usr/local/bin/berth-check";

/// A config dir sharing one read-only rootfs at /bundles/rootfs inside the guest.
fn config(dir: &Path, name: &str, args: &[&str], resources: Value, check: Option<Value>) {
    let bundle = dir.join(name);
    std::fs::create_dir_all(&bundle).unwrap();
    let mut spec = serde_json::to_value(Bundle::default_spec(args)).unwrap();
    spec["root"] = json!({ "path": "/bundles/rootfs", "readonly": true });
    spec["linux"]["cgroupsPath"] = json!(format!("/berth-v2/{name}"));
    spec["linux"]["resources"] = resources;
    spec["linux"]["namespaces"].as_array_mut().unwrap().push(json!({ "type": "cgroup" }));
    if let Some(check) = check {
        std::fs::write(bundle.join("check.json"), serde_json::to_vec(&check).unwrap()).unwrap();
        spec["process"]["args"] = json!([CHECK, format!("/bundles/{name}/check.json")]);
        spec["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/bundles", "type": "bind", "source": "/bundles", "options": ["rbind", "ro"]
        }));
    }
    std::fs::write(bundle.join("config.json"), serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
}

const GUEST_SCRIPT: &str = r#"#!/bin/sh
set -u
R="berth-runtime --root /run/berth-test"
cg=/sys/fs/cgroup/berth-v2
fails=0
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; fails=$((fails+1)); }
status() { $R state "$1" | grep -o '"status": "[a-z]*"' | cut -d'"' -f4; }

if $R run --bundle /bundles/confine confine >/tmp/confine.log 2>&1; then pass confine; else fail confine "$(cat /tmp/confine.log)"; fi

$R run --keep --bundle /bundles/oom oom >/tmp/oom.log 2>&1; rc=$?
kills=$(grep '^oom_kill ' $cg/oom/memory.events | cut -d' ' -f2)
if [ "$rc" = 137 ] && [ "${kills:-0}" -ge 1 ]; then pass oom; else fail oom "rc=$rc oom_kill=${kills:-none} $(cat /tmp/oom.log)"; fi
$R delete oom

if $R run --bundle /bundles/pids pids >/tmp/pids.log 2>&1; then pass pids; else fail pids "$(cat /tmp/pids.log)"; fi

$R create --bundle /bundles/cpu cpu </dev/null >/tmp/cpu.log 2>&1 && $R start cpu
sleep 3
stats=$($R events --stats cpu)
$R delete --force cpu
usage=$(echo "$stats" | grep -o '"usage_total":[0-9]*' | cut -d: -f2)
throttled=$(echo "$stats" | grep -o '"throttled_periods":[0-9]*' | cut -d: -f2)
# 20% of 3 s is 0.6 s of CPU; unthrottled it would be about 3 s.
if [ "${usage:-0}" -gt 100000000 ] && [ "${usage:-0}" -lt 1500000000 ] && [ "${throttled:-0}" -gt 0 ]; then pass cpu; else fail cpu "$stats $(cat /tmp/cpu.log)"; fi

$R create --bundle /bundles/life life </dev/null >/tmp/life.log 2>&1 || fail life-create "$(cat /tmp/life.log)"
$R start life
[ "$(status life)" = running ] && pass life-running || fail life-running "$(status life)"
$R pause life
[ "$(cat $cg/life/cgroup.freeze)" = 1 ] && [ "$(status life)" = paused ] && pass life-paused || fail life-paused "$(status life)"
$R resume life
[ "$(cat $cg/life/cgroup.freeze)" = 0 ] && [ "$(status life)" = running ] && pass life-resumed || fail life-resumed "$(status life)"
$R exec life sh -c 'exit 5'; rc=$?
[ "$rc" = 5 ] && pass life-exec || fail life-exec "rc=$rc"
inner=$($R exec life cat /sys/fs/cgroup/memory.max)
[ "$inner" = 67108864 ] && pass life-cgroupns-view || fail life-cgroupns-view "memory.max inside: $inner"
$R update --memory 96M --pids-limit 7 life
[ "$(cat $cg/life/memory.max)" = 100663296 ] && [ "$(cat $cg/life/pids.max)" = 7 ] && pass life-update || fail life-update "$(cat $cg/life/memory.max) $(cat $cg/life/pids.max)"
$R kill life KILL
sleep 1
[ "$(status life)" = stopped ] && pass life-killed || fail life-killed "$(status life)"
$R delete life
[ ! -d $cg/life ] && [ ! -d /run/berth-test/life ] && pass life-deleted || fail life-deleted "leftovers"

# No devices controller on v2: the deny-all rule must reach the kernel as a BPF device program.
# Without it, opening the node gives ENXIO (no such disk in the guest), not EPERM.
$R run --bundle /bundles/devices devices >/tmp/devices.log 2>&1; rc=$?
if [ "$rc" != 0 ] && grep -q "Operation not permitted" /tmp/devices.log && ! grep -q "no-" /tmp/devices.log; then pass devices; else fail devices "rc=$rc $(cat /tmp/devices.log)"; fi

echo "guest: $fails failed"
[ "$fails" = 0 ]
"#;

#[test]
#[ignore = "needs root and QEMU (software emulation); run by scripts/test"]
fn cgroup_v2_limits_in_qemu_guest() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root: run it through scripts/test");
    let tmp = tempfile::tempdir().unwrap();
    let bundles = tmp.path().join("bundles");
    let rootfs = Bundle::busybox(bundles.join("rootfs-bundle")).unwrap();
    rootfs.add_binary(bin_path("berth-check").unwrap(), CHECK).unwrap();
    std::fs::rename(rootfs.rootfs(), bundles.join("rootfs")).unwrap();
    std::fs::remove_dir_all(bundles.join("rootfs-bundle")).unwrap();

    let limits = json!({ "memory": { "limit": 67108864 }, "pids": { "limit": 64 }, "cpu": { "quota": 50000, "period": 100000, "shares": 512 } });
    config(
        &bundles,
        "confine",
        &[],
        limits.clone(),
        Some(json!({
            "uid": 0, "no_new_privs": true,
            "cgroup": [
                { "any_of": [{ "path": "memory.max", "value": "67108864" }] },
                { "any_of": [{ "path": "pids.max", "value": "64" }] },
                { "any_of": [{ "path": "cpu.max", "value": "50000 100000" }] },
                { "any_of": [{ "path": "cpu.weight", "value": "20" }] }
            ],
            "mounts": [{ "destination": "/sys/fs/cgroup", "options": ["ro"] }]
        })),
    );
    config(&bundles, "oom", &[], json!({ "memory": { "limit": 33554432 } }), Some(json!({ "alloc_mb": 128 })));
    config(
        &bundles,
        "pids",
        &[],
        json!({ "pids": { "limit": 10 } }),
        Some(json!({ "fork_count": 20, "fork_max_ok": 9 })),
    );
    config(
        &bundles,
        "cpu",
        &["sh", "-c", "while :; do :; done"],
        json!({ "cpu": { "quota": 20000, "period": 100000 } }),
        None,
    );
    config(&bundles, "life", &["sleep", "1000"], limits, None);
    let probe = "echo x >/dev/null || echo no-null; mknod /dev/sda b 8 0 || echo no-mknod; exec 3</dev/sda";
    config(
        &bundles,
        "devices",
        &["sh", "-c", probe],
        json!({ "devices": [{ "allow": false, "access": "rwm" }] }),
        None,
    );
    // A default pod keeps CAP_MKNOD (runc's default spec here does not): give it back.
    let path = bundles.join("devices/config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for set in spec["process"]["capabilities"].as_object_mut().unwrap().values_mut() {
        set.as_array_mut().unwrap().push(json!("CAP_MKNOD"));
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();

    let script = tmp.path().join("guest.sh");
    std::fs::write(&script, GUEST_SCRIPT).unwrap();
    let out_dir = tmp.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let runner = workspace_root().join("integration/qemu/run-guest.sh");
    let out = Command::new(&runner)
        .arg("--out")
        .arg(&out_dir)
        .arg("--bin")
        .arg(bin_path("berth-runtime").unwrap())
        .arg("--dir")
        .arg(format!("{}:/bundles", bundles.display()))
        .args(["--mem", "1024M", "--timeout", "600", "--"])
        .arg(&script)
        .output()
        .expect("run-guest.sh");
    let log = std::fs::read_to_string(out_dir.join("guest.log")).unwrap_or_default();
    println!("{log}");
    assert!(
        out.status.success(),
        "guest failed: {:?}\n{log}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["confine", "oom", "pids", "cpu", "life-paused", "life-exec", "life-update", "life-deleted", "devices"]
    {
        assert!(log.contains(&format!("PASS {name}")), "{name} did not pass:\n{log}");
    }
    assert!(!log.contains("FAIL "), "{log}");
}
