//! Runs the built `berth-host-local` exactly as a CNI runtime does: CNI_* env, config on stdin.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_berth-host-local");

struct Reply {
    code: i32,
    json: Value,
}

fn invoke(cmd: &str, id: &str, conf: &str, extra: &[(&str, &str)]) -> anyhow::Result<Reply> {
    let mut child = Command::new(BIN)
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/run/netns/{id}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .envs(extra.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child.stdin.take().expect("stdin").write_all(conf.as_bytes())?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8(out.stdout)?;
    let json = if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text)? };
    Ok(Reply { code: out.status.code().unwrap_or(-1), json })
}

fn conf(version: &str, dir: &Path, ipam: Value) -> String {
    let mut ipam = ipam;
    ipam["type"] = json!("berth-host-local");
    ipam["dataDir"] = json!(dir);
    json!({"cniVersion": version, "name": "testnet", "type": "berth-bridge", "ipam": ipam}).to_string()
}

fn subnet(version: &str, dir: &Path, cidr: &str) -> String {
    conf(version, dir, json!({"subnet": cidr, "routes": [{"dst": "0.0.0.0/0"}]}))
}

fn add_ip(reply: &Reply) -> String {
    assert_eq!(reply.code, 0, "ADD failed: {}", reply.json);
    reply.json["ips"][0]["address"].as_str().expect("address").to_string()
}

#[test]
fn add_result_shape_per_version() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    for (n, version) in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let c = conf(
            version,
            tmp.path(),
            json!({"ranges": [[{"subnet": "10.10.0.0/24"}], [{"subnet": "fd10::/64"}]],
                   "routes": [{"dst": "0.0.0.0/0"}]}),
        );
        let r = invoke("ADD", &format!("c{n}"), &c, &[])?;
        assert_eq!(r.code, 0, "{}", r.json);
        assert_eq!(r.json["cniVersion"], version);
        let ips = r.json["ips"].as_array().expect("ips");
        assert_eq!(ips.len(), 2);
        assert_eq!(ips[0]["gateway"], "10.10.0.1");
        assert!(ips[0]["address"].as_str().unwrap().ends_with("/24"));
        assert!(ips[1]["address"].as_str().unwrap().starts_with("fd10::"));
        assert_eq!(r.json["routes"][0]["dst"], "0.0.0.0/0");
        let want_version = version.starts_with("0.");
        assert_eq!(ips[0].get("version").is_some(), want_version, "{version}: {}", r.json);
        if want_version {
            assert_eq!((ips[0]["version"].as_str(), ips[1]["version"].as_str()), (Some("4"), Some("6")));
        }
        assert!(r.json.get("interfaces").is_none(), "IPAM reports no interfaces");
    }
    Ok(())
}

#[test]
fn two_adds_differ_and_del_is_idempotent() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let c = subnet("1.1.0", tmp.path(), "10.20.0.0/24");
    let a = add_ip(&invoke("ADD", "a", &c, &[])?);
    let b = add_ip(&invoke("ADD", "b", &c, &[])?);
    assert_ne!(a, b);
    assert_eq!(a, "10.20.0.2/24");
    assert!(tmp.path().join("testnet/10.20.0.2").exists());
    assert_eq!(std::fs::read_to_string(tmp.path().join("testnet/10.20.0.2"))?, "a\neth0");
    assert_eq!(invoke("CHECK", "a", &c, &[])?.code, 0);
    let del = invoke("DEL", "a", &c, &[])?;
    assert_eq!((del.code, &del.json), (0, &Value::Null));
    assert!(!tmp.path().join("testnet/10.20.0.2").exists());
    assert_eq!(invoke("DEL", "a", &c, &[])?.code, 0, "second DEL succeeds");
    assert_eq!(invoke("DEL", "never-added", &c, &[])?.code, 0);
    let check = invoke("CHECK", "a", &c, &[])?;
    assert_eq!((check.code, check.json["code"].as_u64()), (1, Some(3)));
    // Round-robin: the freed address is not handed out again at once.
    let d = add_ip(&invoke("ADD", "d", &c, &[])?);
    assert_eq!(d, "10.20.0.4/24");
    // Repeating ADD for the same attachment returns its address.
    assert_eq!(add_ip(&invoke("ADD", "d", &c, &[])?), d);
    Ok(())
}

#[test]
fn del_then_add_reuses_in_a_full_range() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let c = subnet("1.0.0", tmp.path(), "10.30.0.0/29"); // .2 to .6 usable
    let ips: Vec<String> = (0..5).map(|i| add_ip(&invoke("ADD", &format!("x{i}"), &c, &[]).unwrap())).collect();
    assert_eq!(ips.first().map(String::as_str), Some("10.30.0.2/29"));
    assert_eq!(ips.last().map(String::as_str), Some("10.30.0.6/29"));
    assert_eq!(invoke("DEL", "x2", &c, &[])?.code, 0);
    assert_eq!(add_ip(&invoke("ADD", "y", &c, &[])?), ips[2]);
    Ok(())
}

#[test]
fn exhausted_range_reports_error_json() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let c = subnet("1.1.0", tmp.path(), "10.40.0.0/30");
    assert_eq!(add_ip(&invoke("ADD", "a", &c, &[])?), "10.40.0.2/30");
    let r = invoke("ADD", "b", &c, &[])?;
    assert_eq!(r.code, 1);
    assert_eq!(r.json["code"], 100);
    assert_eq!(r.json["cniVersion"], "1.1.0");
    assert!(r.json["msg"].as_str().unwrap().contains("10.40.0.0/30"), "{}", r.json);
    Ok(())
}

#[test]
fn failed_later_range_set_releases_earlier() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let c = conf("1.1.0", tmp.path(), json!({"ranges": [[{"subnet": "10.41.0.0/24"}], [{"subnet": "10.42.0.0/30"}]]}));
    assert_eq!(invoke("ADD", "a", &c, &[])?.code, 0);
    let r = invoke("ADD", "b", &c, &[])?;
    assert_eq!(r.json["code"], 100);
    assert!(!tmp.path().join("testnet/10.41.0.3").exists(), "first set's address given back");
    Ok(())
}

#[test]
fn malformed_config_and_versions() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let r = invoke("ADD", "a", "{\"cniVersion\": ", &[])?;
    assert_eq!((r.code, r.json["code"].as_u64()), (1, Some(6)));
    let r = invoke("ADD", "a", &subnet("0.9.9", tmp.path(), "10.50.0.0/24"), &[])?;
    assert_eq!(r.json["code"], 1);
    assert!(r.json["msg"].as_str().unwrap().contains("0.9.9"));
    let overlap =
        conf("1.1.0", tmp.path(), json!({"ranges": [[{"subnet": "10.0.0.0/16"}], [{"subnet": "10.0.9.0/24"}]]}));
    let r = invoke("ADD", "a", &overlap, &[])?;
    assert_eq!(r.json["code"], 7);
    let msg = r.json["msg"].as_str().unwrap();
    assert!(msg.contains("10.0.0.0/16") && msg.contains("10.0.9.0/24"), "{msg}");
    let v = invoke("VERSION", "", "{\"cniVersion\":\"1.0.0\"}", &[])?;
    assert_eq!(v.json["cniVersion"], "1.0.0");
    assert_eq!(v.json["supportedVersions"], json!(["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]));
    let r = invoke("ADD", "", &subnet("1.1.0", tmp.path(), "10.50.0.0/24"), &[])?;
    assert_eq!(r.json["code"], 4, "missing CNI_CONTAINERID");
    Ok(())
}

#[test]
fn requested_ips() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let c = subnet("1.1.0", tmp.path(), "10.60.0.0/24");
    assert_eq!(add_ip(&invoke("ADD", "a", &c, &[("CNI_ARGS", "IgnoreUnknown=1;IP=10.60.0.77")])?), "10.60.0.77/24");
    let taken = invoke("ADD", "b", &c, &[("CNI_ARGS", "IP=10.60.0.77")])?;
    assert_eq!(taken.json["code"], 101);
    let mut rc: Value = serde_json::from_str(&c)?;
    rc["runtimeConfig"] = json!({"ips": ["10.60.0.88/24"]});
    assert_eq!(add_ip(&invoke("ADD", "c", &rc.to_string(), &[])?), "10.60.0.88/24");
    let outside = invoke("ADD", "d", &c, &[("CNI_ARGS", "IP=192.168.1.1")])?;
    assert_eq!(outside.json["code"], 101);
    assert_eq!(std::fs::read_dir(tmp.path().join("testnet"))?.count(), 2 + 2, "lock, last_reserved, two IPs");
    Ok(())
}

#[test]
fn gc_frees_unlisted_attachments_and_status() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let c = subnet("1.1.0", tmp.path(), "10.70.0.0/24");
    for id in ["keep", "drop1", "drop2"] {
        add_ip(&invoke("ADD", id, &c, &[])?);
    }
    let mut gc: Value = serde_json::from_str(&c)?;
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let r = invoke("GC", "", &gc.to_string(), &[])?;
    assert_eq!(r.code, 0, "{}", r.json);
    assert_eq!(invoke("CHECK", "keep", &c, &[])?.code, 0);
    assert_eq!(invoke("CHECK", "drop1", &c, &[])?.json["code"], 3);
    assert!(!tmp.path().join("testnet/10.70.0.3").exists());
    assert_eq!(invoke("STATUS", "", &c, &[])?.code, 0);
    let blocked = tmp.path().join("file");
    std::fs::write(&blocked, "")?;
    let r = invoke("STATUS", "", &subnet("1.1.0", &blocked, "10.70.0.0/24"), &[])?;
    assert_eq!(r.json["code"], 50);
    let old = invoke("GC", "", &subnet("1.0.0", tmp.path(), "10.70.0.0/24"), &[])?;
    assert_eq!(old.json["code"], 1, "GC needs cniVersion 1.1.0");
    Ok(())
}

#[test]
fn fifty_concurrent_adds_get_distinct_ips() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let c = subnet("1.1.0", tmp.path(), "10.80.0.0/24");
    let children: Vec<_> = (0..50)
        .map(|i| {
            let mut child = Command::new(BIN)
                .env_clear()
                .env("CNI_COMMAND", "ADD")
                .env("CNI_CONTAINERID", format!("p{i}"))
                .env("CNI_NETNS", "/run/netns/x")
                .env("CNI_IFNAME", "eth0")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            child.stdin.take().expect("stdin").write_all(c.as_bytes())?;
            Ok(child)
        })
        .collect::<anyhow::Result<_>>()?;
    let mut ips = std::collections::HashSet::new();
    for child in children {
        let out = child.wait_with_output()?;
        let json: Value = serde_json::from_slice(&out.stdout)?;
        assert!(out.status.success(), "{json}");
        ips.insert(json["ips"][0]["address"].as_str().expect("address").to_string());
    }
    assert_eq!(ips.len(), 50);
    Ok(())
}
