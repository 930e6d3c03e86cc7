//! Multi-node: three network-namespace "hosts" on a shared underlay (a bridge in a fourth
//! netns), pods behind each host's bridge, traffic across hosts over berth-vxlan and
//! berth-host-gw, and peer removal through `sync`.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::*;
use serde_json::{json, Value};

struct Cluster {
    _underlay: Ns,
    hosts: Vec<Ns>,
    tmp: tempfile::TempDir,
}

fn underlay_ip(i: usize) -> String {
    format!("192.168.{}.{}", 100, 10 + i)
}

fn pod_cidr(net: u8, i: usize) -> String {
    format!("10.{net}.{i}.0/24")
}

fn cluster() -> anyhow::Result<Cluster> {
    let underlay = Ns::new("ul")?;
    underlay.ip(&["link", "add", "ul", "type", "bridge"])?;
    underlay.ip(&["link", "set", "ul", "up"])?;
    let mut hosts = Vec::new();
    for i in 0..3 {
        let h = Ns::new(&format!("node{i}"))?;
        let port = format!("ul{i}");
        h.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &underlay.name])?;
        underlay.ip(&["link", "set", &port, "master", "ul", "up"])?;
        h.ip(&["addr", "add", &format!("{}/24", underlay_ip(i)), "dev", "eth0"])?;
        h.ip(&["link", "set", "eth0", "up"])?;
        hosts.push(h);
    }
    Ok(Cluster { _underlay: underlay, hosts, tmp: tempfile::tempdir()? })
}

fn peers(net: u8, which: &[usize]) -> Value {
    Value::Array(which.iter().map(|&i| json!({"podCIDR": pod_cidr(net, i), "underlayIP": underlay_ip(i)})).collect())
}

impl Cluster {
    fn conf(&self, plugin: &str, net: u8, i: usize, peer_list: Value) -> Value {
        let dir = self.tmp.path().join(format!("node{i}"));
        json!({
            "cniVersion": "1.1.0", "name": "overlay", "type": plugin,
            "underlayDevice": "eth0", "clusterCIDR": format!("10.{net}.0.0/16"), "ipMasq": true,
            "peers": peer_list, "stateDir": dir.join("state"),
            "ipam": {"type": "berth-host-local", "subnet": pod_cidr(net, i), "dataDir": dir.join("ipam"),
                     "routes": [{"dst": "0.0.0.0/0"}]}
        })
    }
}

fn sync(host: &Ns, plugin: &str, conf: &Value) -> anyhow::Result<Value> {
    let mut child = host
        .cmd(plugin_path(plugin).to_str().expect("path"))
        .arg("sync")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child.stdin.take().expect("stdin").write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    assert!(out.status.success(), "sync failed: {v}");
    Ok(v)
}

fn pod_ip(res: &Value) -> String {
    res["ips"][0]["address"].as_str().expect("ip").split('/').next().unwrap_or("").to_string()
}

fn overlay_round_trip(plugin: &str, net: u8) -> anyhow::Result<()> {
    let c = cluster()?;
    let mut pods = Vec::new();
    let mut ips = Vec::new();
    for (i, h) in c.hosts.iter().enumerate() {
        let pod = Ns::new("pod")?;
        let conf = c.conf(plugin, net, i, peers(net, &[0, 1, 2]));
        let res =
            invoke(&plugin_path(plugin), h, &Call::new("ADD", &format!("p{i}"), &pod.path()), &conf)?.ok().clone();
        ips.push(pod_ip(&res));
        if plugin == "berth-vxlan" {
            assert_eq!(res["interfaces"][2]["mtu"], 1450, "pod MTU = underlay − 50: {res}");
        }
        let mut check = conf.clone();
        check["prevResult"] = res;
        invoke(&plugin_path(plugin), h, &Call::new("CHECK", &format!("p{i}"), &pod.path()), &check)?.ok();
        pods.push(pod);
    }
    for (a, b) in [(0, 1), (0, 2), (1, 2), (2, 0)] {
        assert!(pods[a].ping(&ips[b]), "{plugin}: pod on node{a} reaches pod on node{b} ({})", ips[b]);
    }
    let target = format!("{}:5001", ips[2]);
    assert!(
        tcp_transfer(&pods[2], "0.0.0.0:5001", &pods[0], &target, 4 << 20),
        "{plugin}: 4 MiB TCP echo across nodes"
    );
    // Node 0 forgets node 2: its route (and for VXLAN its neighbour and FDB entry) go away.
    let conf = c.conf(plugin, net, 0, peers(net, &[0, 1]));
    let report = sync(&c.hosts[0], plugin, &conf)?;
    assert!(report["removed"].as_u64() >= Some(1), "{report}");
    let routes = c.hosts[0].ip(&["route", "show", "proto", "190"])?;
    assert!(routes.contains(&pod_cidr(net, 1)) && !routes.contains(&pod_cidr(net, 2)), "{routes}");
    if plugin == "berth-vxlan" {
        let fdb = c.hosts[0].run("bridge", &["fdb", "show", "dev", "berth.1"])?;
        assert!(fdb.contains(&underlay_ip(1)) && !fdb.contains(&underlay_ip(2)), "{fdb}");
        let neigh = c.hosts[0].ip(&["neigh", "show", "dev", "berth.1"])?;
        assert!(!neigh.contains(&format!("10.{net}.2.0 ")), "{neigh}");
    }
    assert!(!pods[0].ping(&ips[2]), "node2's pods are unreachable once it is no peer");
    assert!(pods[0].ping(&ips[1]), "node1 still is");
    for (i, h) in c.hosts.iter().enumerate() {
        let conf = c.conf(plugin, net, i, peers(net, &[0, 1, 2]));
        invoke(&plugin_path(plugin), h, &Call::new("DEL", &format!("p{i}"), &pods[i].path()), &conf)?.ok();
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn vxlan_three_nodes() -> anyhow::Result<()> {
    overlay_round_trip("berth-vxlan", 211)
}

#[test]
#[ignore = "needs root"]
fn host_gw_three_nodes() -> anyhow::Result<()> {
    overlay_round_trip("berth-host-gw", 212)
}

#[test]
#[ignore = "needs root"]
fn host_gw_peer_off_segment_is_a_clear_error() -> anyhow::Result<()> {
    let c = cluster()?;
    let pod = Ns::new("pod")?;
    let mut far = peers(213, &[1]);
    far.as_array_mut().expect("list").push(json!({"podCIDR": "10.213.9.0/24", "underlayIP": "172.31.9.9"}));
    let conf = c.conf("berth-host-gw", 213, 0, far);
    let r = invoke(&plugin_path("berth-host-gw"), &c.hosts[0], &Call::new("ADD", "x", &pod.path()), &conf)?;
    assert_eq!(r.err_code(), 113, "{}", r.json);
    assert!(r.msg().contains("10.213.9.0/24") && r.msg().contains("172.31.9.9"), "{}", r.msg());
    assert_eq!(pod.links()?, vec!["lo"], "no pod interface");
    let held = std::fs::read_dir(c.tmp.path().join("node0/ipam")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(held, 0, "no address allocated");
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn peers_file_is_read_on_add() -> anyhow::Result<()> {
    let c = cluster()?;
    let file = c.tmp.path().join("peers.json");
    std::fs::write(&file, json!({"peers": peers(214, &[1])}).to_string())?;
    let mut conf = c.conf("berth-vxlan", 214, 0, json!([]));
    conf["peersFile"] = json!(file);
    let report = sync(&c.hosts[0], "berth-vxlan", &conf)?;
    assert_eq!(report["added"], 1, "{report}");
    assert!(c.hosts[0].ip(&["route", "show", "proto", "190"])?.contains("10.214.1.0/24"));
    std::fs::write(&file, "[]")?;
    assert_eq!(sync(&c.hosts[0], "berth-vxlan", &conf)?["removed"].as_u64().map(|n| n >= 1), Some(true));
    assert_eq!(c.hosts[0].ip(&["route", "show", "proto", "190"])?.trim(), "");
    Ok(())
}
