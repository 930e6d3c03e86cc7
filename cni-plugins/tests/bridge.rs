//! berth-bridge (+ berth-host-local, berth-portmap, and Debian's reference plugins) driven as a
//! runtime drives them, inside network namespaces made by the test.

mod common;

use common::*;
use serde_json::{json, Value};

fn bridge_conf(tmp: &std::path::Path, bridge: &str, subnet: &str, extra: Value) -> Value {
    let mut c = json!({
        "type": "berth-bridge", "bridge": bridge, "isDefaultGateway": true, "ipMasq": true,
        "stateDir": tmp.join("state"),
        "ipam": {"type": "berth-host-local", "subnet": subnet, "dataDir": tmp.join("ipam")}
    });
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    c
}

fn single(name: &str, version: &str, plugin: &Value) -> Value {
    let mut c = plugin.clone();
    c["name"] = json!(name);
    c["cniVersion"] = json!(version);
    c
}

fn bridge_bin() -> std::path::PathBuf {
    plugin_path("berth-bridge")
}

#[test]
#[ignore = "needs root"]
fn add_check_del_in_every_result_version() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let host = Ns::new("host")?;
    let plugin = bridge_conf(tmp.path(), "bt-br0", "10.201.0.0/24", json!({"hairpinMode": true}));
    for (n, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let pod = Ns::new("pod")?;
        let id = format!("v{n}");
        let conf = single("vers", version, &plugin);
        let r = invoke(&bridge_bin(), &host, &Call::new("ADD", &id, &pod.path()), &conf)?;
        let res = r.ok().clone();
        assert_eq!(res["cniVersion"], version);
        let ifaces = res["interfaces"].as_array().expect("interfaces");
        assert_eq!(ifaces.len(), 3, "{res}");
        assert_eq!(ifaces[0]["name"], "bt-br0");
        assert_eq!(ifaces[2]["sandbox"], pod.path().as_str());
        assert_eq!(ifaces[2].get("mtu").is_some(), version == "1.1.0", "mtu only in 1.1.0: {res}");
        let ip = &res["ips"][0];
        assert_eq!(ip["interface"], 2);
        assert_eq!(ip["gateway"], "10.201.0.1");
        assert_eq!(ip.get("version").is_some(), version.starts_with("0."), "{res}");
        assert_eq!(res["routes"][0]["dst"], "0.0.0.0/0");
        assert!(pod.ping("10.201.0.1"), "pod reaches its gateway ({version})");
        let veth = ifaces[1]["name"].as_str().expect("veth").to_string();
        assert!(host.links()?.contains(&veth));
        assert!(host.ip(&["-d", "link", "show", &veth])?.contains("hairpin on"));
        if version != "0.3.0" && version != "0.3.1" {
            let mut check = conf.clone();
            check["prevResult"] = res.clone();
            invoke(&bridge_bin(), &host, &Call::new("CHECK", &id, &pod.path()), &check)?.ok();
        }
        let mut del = conf.clone();
        del["prevResult"] = res.clone();
        invoke(&bridge_bin(), &host, &Call::new("DEL", &id, &pod.path()), &del)?.ok();
        assert!(!host.links()?.contains(&veth), "veth gone after DEL");
        assert_eq!(pod.links()?, vec!["lo"]);
        invoke(&bridge_bin(), &host, &Call::new("DEL", &id, &pod.path()), &del)?.ok();
        drop(pod);
        let gone = Call::new("DEL", &id, "/run/netns/does-not-exist");
        invoke(&bridge_bin(), &host, &gone, &del)?.ok();
    }
    assert_eq!(nft_elements(&host, "inet", "berth-masq"), 0, "ipMasq entries removed");
    assert_eq!(std::fs::read_dir(tmp.path().join("ipam/vers"))?.count(), 2, "lock + last_reserved only");
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn check_detects_a_removed_address_and_status_forwards() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let host = Ns::new("host")?;
    let pod = Ns::new("pod")?;
    let conf = single("chk", "1.1.0", &bridge_conf(tmp.path(), "bt-br1", "10.202.0.0/24", json!({})));
    let res = invoke(&bridge_bin(), &host, &Call::new("ADD", "c", &pod.path()), &conf)?.ok().clone();
    let mut check = conf.clone();
    check["prevResult"] = res.clone();
    invoke(&bridge_bin(), &host, &Call::new("CHECK", "c", &pod.path()), &check)?.ok();
    let addr = res["ips"][0]["address"].as_str().expect("address");
    pod.ip(&["addr", "del", addr, "dev", "eth0"])?;
    let r = invoke(&bridge_bin(), &host, &Call::new("CHECK", "c", &pod.path()), &check)?;
    assert_eq!(r.err_code(), 110);
    assert!(r.msg().contains(addr), "{}", r.msg());
    let r = invoke(&bridge_bin(), &host, &Call::new("CHECK", "c", &pod.path()), &conf)?;
    assert_eq!(r.err_code(), 7, "CHECK without prevResult");
    invoke(&bridge_bin(), &host, &Call::new("STATUS", "", ""), &conf)?.ok();
    let mut broken = conf.clone();
    broken["ipam"]["dataDir"] = json!("/proc/version/x");
    let r = invoke(&bridge_bin(), &host, &Call::new("STATUS", "", ""), &broken)?;
    assert_eq!(r.err_code(), 50, "IPAM's STATUS answer is forwarded");
    Ok(())
}

/// STATUS and GC reach an IPAM plugin that runs as a process of its own (berth-host-local
/// under another name, so berth-bridge executes it instead of calling it in-process; Debian's
/// reference IPAM plugins stop at CNI 1.0.0 and know neither command).
#[test]
#[ignore = "needs root"]
fn status_and_gc_are_forwarded_to_an_executed_ipam_plugin() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin)?;
    std::fs::copy(plugin_path("berth-host-local"), bin.join("other-ipam"))?;
    let host = Ns::new("host")?;
    let mut plugin = bridge_conf(tmp.path(), "bt-br11", "10.211.0.0/24", json!({}));
    plugin["ipam"]["type"] = json!("other-ipam");
    let list = ConfList::new("exec", "1.1.0", json!([plugin]));
    fn call<'a>(command: &'a str, id: &'a str, netns: &'a str, bin: &'a std::path::Path) -> Call<'a> {
        Call { extra_path: Some(bin), ..Call::new(command, id, netns) }
    }
    let pods: Vec<Ns> = (0..2).map(|_| Ns::new("pod")).collect::<Result<_, _>>()?;
    for (i, p) in pods.iter().enumerate() {
        let (id, netns) = (format!("x{i}"), p.path());
        list.add(&host, &call("ADD", &id, &netns, &bin), &Value::Null)?.ok();
    }
    let held = || addresses_held(&tmp.path().join("ipam/exec"));
    assert_eq!(held(), 2, "the executed IPAM allocated");
    let conf = list.plugin_conf(&list.plugins()[0], None, &Value::Null);
    invoke(&bridge_bin(), &host, &call("STATUS", "", "", &bin), &conf)?.ok();
    let mut broken = conf.clone();
    broken["ipam"]["dataDir"] = json!("/proc/version/x");
    let r = invoke(&bridge_bin(), &host, &call("STATUS", "", "", &bin), &broken)?;
    assert_eq!(r.err_code(), 50, "the executed IPAM's STATUS answer is forwarded: {}", r.json);
    assert!(r.msg().contains("other-ipam"), "the answer names the IPAM plugin: {}", r.json);
    // GC keeping x0: x1's veth and address go, x0's stay.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "x0", "ifname": "eth0"}]);
    invoke(&bridge_bin(), &host, &call("GC", "", "", &bin), &gc)?.ok();
    assert_eq!(held(), 1, "the executed IPAM freed x1's address");
    assert_eq!(pods[1].links()?, vec!["lo"], "x1's veth is gone");
    assert_eq!(pods[0].links()?.len(), 2, "x0 keeps its interface");
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn bad_input_is_answered_with_spec_codes_and_leaves_nothing() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let host = Ns::new("host")?;
    let pod = Ns::new("pod")?;
    let good = single("bad", "1.1.0", &bridge_conf(tmp.path(), "bt-br2", "10.203.0.0/30", json!({})));
    let pod_path = pod.path();
    let add = Call::new("ADD", "a", &pod_path);
    let raw = spawn(&bridge_bin(), &host, &add, b"{\"cniVersion\": \"1.1.0\", ")?.wait_with_output()?;
    let v: Value = serde_json::from_slice(&raw.stdout)?;
    assert_eq!(v["code"], 6, "malformed JSON: {v}");
    let mut c = good.clone();
    c["cniVersion"] = json!("0.9.9");
    let r = invoke(&bridge_bin(), &host, &add, &c)?;
    assert_eq!(r.err_code(), 1);
    assert!(r.msg().contains("0.9.9"));
    let r = invoke(&bridge_bin(), &host, &Call::new("ADD", "a", "/run/netns/bt-missing"), &good)?;
    assert_eq!(r.err_code(), 4);
    assert!(r.msg().contains("/run/netns/bt-missing"), "{}", r.msg());
    let mut c = good.clone();
    c["ipam"] = json!({"type": "berth-host-local", "dataDir": tmp.path().join("ipam"),
                       "ranges": [[{"subnet": "10.9.0.0/16"}], [{"subnet": "10.9.4.0/24"}]]});
    let r = invoke(&bridge_bin(), &host, &add, &c)?;
    assert_eq!(r.err_code(), 7);
    assert!(r.msg().contains("10.9.0.0/16") && r.msg().contains("10.9.4.0/24"), "{}", r.msg());
    // None of those made anything: no address, record, bridge or veth.
    assert_eq!(addresses_held(&tmp.path().join("ipam/bad")), 0, "no address allocated by a refused ADD");
    // Records live in one directory per network under state/bridge: none may hold a file.
    let records: usize = std::fs::read_dir(tmp.path().join("state/bridge"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|net| std::fs::read_dir(net.path()).into_iter().flatten().count())
        .sum();
    assert_eq!(records, 0, "no record written by a refused ADD");
    assert_eq!(host.links()?, vec!["lo"], "no bridge or veth made by a refused ADD");
    // A /30 has one usable address besides the gateway.
    invoke(&bridge_bin(), &host, &add, &good)?.ok();
    let pod2 = Ns::new("pod")?;
    let r = invoke(&bridge_bin(), &host, &Call::new("ADD", "b", &pod2.path()), &good)?;
    assert_eq!(r.err_code(), 100);
    assert!(r.msg().contains("10.203.0.0/30"), "{}", r.msg());
    assert_eq!(pod2.links()?, vec!["lo"], "nothing created for the failed ADD");
    // An interface of that name already in the pod: error, and the address is given back.
    pod2.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "other"])?;
    let mut wide = good.clone();
    wide["ipam"]["subnet"] = json!("10.204.0.0/24");
    let r = invoke(&bridge_bin(), &host, &Call::new("ADD", "c", &pod2.path()), &wide)?;
    assert_eq!(r.err_code(), 111, "{}", r.json);
    assert!(r.msg().contains("eth0"));
    let held: Vec<_> = std::fs::read_dir(tmp.path().join("ipam/bad"))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("10.204."))
        .collect();
    assert!(held.is_empty(), "the failed ADD released its address");
    let veths = host.links()?.iter().filter(|l| l.starts_with("bv")).count();
    assert_eq!(veths, 1, "only pod a's veth exists");
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn gc_removes_attachments_not_in_the_valid_list() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let host = Ns::new("host")?;
    let plugins = json!([bridge_conf(tmp.path(), "bt-br3", "10.205.0.0/24", json!({"macspoofchk": true}))]);
    let list = ConfList::new("gcnet", "1.1.0", plugins);
    let pods: Vec<Ns> = (0..3).map(|_| Ns::new("pod")).collect::<Result<_, _>>()?;
    for (i, p) in pods.iter().enumerate() {
        list.add(&host, &Call::new("ADD", &format!("g{i}"), &p.path()), &Value::Null)?.ok();
    }
    assert_eq!(nft_elements(&host, "inet", "berth-masq"), 3);
    assert_eq!(nft_elements(&host, "bridge", "berth-macspoof"), 6);
    list.gc(&host, &[("g1", "eth0")])?.ok();
    assert_eq!(nft_elements(&host, "inet", "berth-masq"), 1);
    assert_eq!(nft_elements(&host, "bridge", "berth-macspoof"), 2);
    assert_eq!(host.links()?.iter().filter(|l| l.starts_with("bv")).count(), 1);
    let ips = std::fs::read_dir(tmp.path().join("ipam/gcnet"))?.count();
    assert_eq!(ips, 3, "lock, last_reserved and g1's address");
    assert!(pods[1].ping("10.205.0.1"), "the valid attachment still works");
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn berth_bridge_with_reference_host_local_and_portmap() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let host = Ns::new("host")?;
    let pod = Ns::new("pod")?;
    let list = ConfList::new(
        "mixa",
        "1.0.0",
        json!([
            {"type": "berth-bridge", "bridge": "bt-br4", "isDefaultGateway": true, "stateDir": tmp.path(),
             "ipam": {"type": "host-local", "subnet": "10.206.0.0/24", "dataDir": tmp.path().join("ref")}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]),
    );
    let rt = json!({"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]});
    let pod_path = pod.path();
    let res = list.add(&host, &Call::new("ADD", "m1", &pod_path), &rt)?.ok().clone();
    let ip = res["ips"][0]["address"].as_str().expect("ip").split('/').next().unwrap_or("").to_string();
    assert!(tmp.path().join("ref/mixa").join(&ip).exists(), "reference host-local allocated {ip}");
    let client = Ns::new("client")?;
    host.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1", "netns", &client.name])?;
    host.ip(&["addr", "add", "192.168.77.1/24", "dev", "up0"])?;
    host.ip(&["link", "set", "up0", "up"])?;
    client.ip(&["addr", "add", "192.168.77.2/24", "dev", "up1"])?;
    client.ip(&["link", "set", "up1", "up"])?;
    assert!(tcp_transfer(&pod, "0.0.0.0:80", &client, "192.168.77.1:18080", 100_000), "reference portmap DNAT");
    // CHECK berth-bridge alone: the reference portmap 1.1.1's CHECK fails on hosts without an
    // ip6tables chain for it (its bug, not the runtime's).
    let mut check = json!({"cniVersion": "1.0.0", "name": "mixa", "prevResult": res.clone()});
    if let (Some(c), Some(p)) = (check.as_object_mut(), list.list["plugins"][0].as_object()) {
        c.extend(p.clone());
    }
    invoke(&plugin_path("berth-bridge"), &host, &Call::new("CHECK", "m1", &pod_path), &check)?.ok();
    list.each(&host, &Call::new("DEL", "m1", &pod.path()), &rt, Some(&res))?.ok();
    assert!(!tmp.path().join("ref/mixa").join(&ip).exists());
    // The same chain in the older result versions the reference plugins speak.
    for (n, version) in ["0.3.0", "0.3.1", "0.4.0"].into_iter().enumerate() {
        let older = ConfList::new("mixa", version, list.list["plugins"].clone());
        let id = format!("m{}", n + 2);
        let res = older.add(&host, &Call::new("ADD", &id, &pod_path), &rt)?.ok().clone();
        assert_eq!(res["cniVersion"], version, "{res}");
        assert!(res["ips"][0].get("version").is_some(), "0.x results carry the IP version: {res}");
        assert!(
            tcp_transfer(&pod, "0.0.0.0:80", &client, "192.168.77.1:18080", 10_000),
            "reference portmap DNAT after berth-bridge {version}"
        );
        older.each(&host, &Call::new("DEL", &id, &pod_path), &rt, Some(&res))?.ok();
        assert_eq!(pod.links()?, vec!["lo"], "{version}: DEL removed the pod's interface");
    }
    let left = addresses_held(&tmp.path().join("ref/mixa"));
    assert_eq!(left, 0, "the reference host-local holds no address after the DELs");
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn reference_bridge_with_berth_host_local() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let host = Ns::new("host")?;
    // Every result version the reference plugins 1.1.1 speak.
    for (n, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"].into_iter().enumerate() {
        let pod = Ns::new("pod")?;
        let id = format!("r{n}");
        let list = ConfList::new(
            "mixb",
            version,
            json!([{"type": "bridge", "bridge": "bt-br5", "isGateway": true,
                    "ipam": {"type": "berth-host-local", "ranges": [[{"subnet": "10.207.0.0/24"}], [{"subnet": "fd07::/64"}]],
                             "dataDir": tmp.path()}}]),
        );
        let res = list.add(&host, &Call::new("ADD", &id, &pod.path()), &Value::Null)?.ok().clone();
        assert_eq!(res["cniVersion"], version);
        assert_eq!(res["ips"].as_array().map(Vec::len), Some(2), "{res}");
        assert_eq!(res["ips"][0].get("version").is_some(), version.starts_with("0."), "{res}");
        assert!(pod.ping("10.207.0.1"), "{version}");
        if version != "0.3.0" && version != "0.3.1" {
            list.each(&host, &Call::new("CHECK", &id, &pod.path()), &Value::Null, Some(&res))?.ok();
        }
        list.each(&host, &Call::new("DEL", &id, &pod.path()), &Value::Null, Some(&res))?.ok();
    }
    assert_eq!(std::fs::read_dir(tmp.path().join("mixb"))?.count(), 3, "lock + two last_reserved");
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn berth_portmap_from_outside_localhost_and_hairpin() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let host = Ns::new("host")?;
    let list = ConfList::new(
        "pmap",
        "1.1.0",
        json!([
            bridge_conf(tmp.path(), "bt-br6", "10.208.0.0/24", json!({"hairpinMode": true})),
            {"type": "berth-portmap", "stateDir": tmp.path(), "capabilities": {"portMappings": true}}
        ]),
    );
    let server = Ns::new("pod")?;
    let other = Ns::new("pod")?;
    let rt = json!({"portMappings": [{"hostPort": 18081, "containerPort": 8080, "protocol": "tcp"}]});
    let res = list.add(&host, &Call::new("ADD", "s", &server.path()), &rt)?.ok().clone();
    let res2 = list.add(&host, &Call::new("ADD", "o", &other.path()), &Value::Null)?.ok().clone();
    assert!(tcp_transfer(&server, "0.0.0.0:8080", &host, "127.0.0.1:18081", 50_000), "localhost");
    assert!(tcp_transfer(&server, "0.0.0.0:8080", &host, "10.208.0.1:18081", 50_000), "host address");
    assert!(tcp_transfer(&server, "0.0.0.0:8080", &other, "10.208.0.1:18081", 50_000), "another pod");
    assert!(tcp_transfer(&server, "0.0.0.0:8080", &server, "10.208.0.1:18081", 50_000), "hairpin to itself");
    list.each(&host, &Call::new("CHECK", "s", &server.path()), &rt, Some(&res))?.ok();
    // The same host port for another pod is refused, and the first mapping survives.
    let third = Ns::new("pod")?;
    let r = list.add(&host, &Call::new("ADD", "t", &third.path()), &rt)?;
    assert_eq!(r.err_code(), 112, "{}", r.json);
    list.each(&host, &Call::new("DEL", "t", &third.path()), &rt, None)?.ok();
    assert_eq!(nft_elements(&host, "inet", "berth-portmap"), 1 + 1, "mapping + hairpin bridge");
    list.each(&host, &Call::new("DEL", "s", &server.path()), &rt, Some(&res))?.ok();
    list.each(&host, &Call::new("DEL", "o", &other.path()), &Value::Null, Some(&res2))?.ok();
    assert_eq!(nft_elements(&host, "inet", "berth-portmap"), 1, "only the hairpin interface set entry");
    assert_eq!(nft_elements(&host, "inet", "berth-masq"), 0);
    Ok(())
}

/// An ADD killed after recording its mappings but before making them (here: made, then its
/// map element removed by hand): its host port goes to another pod, and the dead one's CHECK
/// and DEL see that the mapping leads elsewhere and leave it alone.
#[test]
#[ignore = "needs root"]
fn a_dead_pods_del_leaves_the_host_port_another_pod_took() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let host = Ns::new("host")?;
    let list = ConfList::new(
        "pdead",
        "1.1.0",
        json!([
            bridge_conf(tmp.path(), "bt-br12", "10.212.0.0/24", json!({})),
            {"type": "berth-portmap", "stateDir": tmp.path(), "capabilities": {"portMappings": true}}
        ]),
    );
    let live = Ns::new("pod")?;
    let rt2 = json!({"portMappings": [{"hostPort": 18082, "containerPort": 8080, "protocol": "tcp"}]});
    let killed = Ns::new("pod")?;
    let res_k = list.add(&host, &Call::new("ADD", "k", &killed.path()), &rt2)?.ok().clone();
    host.run("nft", &["delete", "element", "inet", "berth-portmap", "dnat4", "{ tcp . 18082 }"])?;
    let res_t = list.add(&host, &Call::new("ADD", "t", &live.path()), &rt2)?.ok().clone();
    let r = list.each(&host, &Call::new("CHECK", "k", &killed.path()), &rt2, Some(&res_k))?;
    assert!(r.msg().contains("another pod"), "CHECK of the dead pod sees the port lead elsewhere: {}", r.json);
    list.each(&host, &Call::new("DEL", "k", &killed.path()), &rt2, Some(&res_k))?.ok();
    assert!(
        tcp_transfer(&live, "0.0.0.0:8080", &host, "127.0.0.1:18082", 10_000),
        "the live pod's mapping survives the dead pod's DEL"
    );
    list.each(&host, &Call::new("CHECK", "t", &live.path()), &rt2, Some(&res_t))?.ok();
    list.each(&host, &Call::new("DEL", "t", &live.path()), &rt2, Some(&res_t))?.ok();
    assert_eq!(nft_elements(&host, "inet", "berth-portmap"), 1, "only the hairpin interface set entry");
    Ok(())
}

/// berth-bridge declaring the `portMappings` capability maps host ports itself (no
/// berth-portmap in the list): ADD, CHECK, a taken port refused with nothing left, GC.
#[test]
#[ignore = "needs root"]
fn bridge_maps_host_ports_itself_with_the_capability() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let host = Ns::new("host")?;
    let caps = json!({"capabilities": {"portMappings": true}});
    let list = ConfList::new("inport", "1.1.0", json!([bridge_conf(tmp.path(), "bt-br13", "10.213.0.0/24", caps)]));
    let rt = json!({"portMappings": [{"hostPort": 18083, "containerPort": 8080, "protocol": "tcp"}]});
    let server = Ns::new("pod")?;
    let res = list.add(&host, &Call::new("ADD", "p1", &server.path()), &rt)?.ok().clone();
    assert!(tcp_transfer(&server, "0.0.0.0:8080", &host, "127.0.0.1:18083", 50_000), "the bridge's own DNAT");
    assert_eq!(nft_elements(&host, "inet", "berth-portmap"), 2, "mapping + hairpin bridge");
    list.each(&host, &Call::new("CHECK", "p1", &server.path()), &rt, Some(&res))?.ok();
    let second = Ns::new("pod")?;
    let r = list.add(&host, &Call::new("ADD", "p2", &second.path()), &rt)?;
    assert_eq!(r.err_code(), 112, "{}", r.json);
    assert_eq!(second.links()?, vec!["lo"], "the refused pod has no interface");
    assert_eq!(addresses_held(&tmp.path().join("ipam/inport")), 1, "its address went back");
    let veths = host.links()?.into_iter().filter(|l| l.starts_with("bv")).count();
    assert_eq!(veths, 1, "only p1's veth");
    list.gc(&host, &[])?.ok();
    assert_eq!(nft_elements(&host, "inet", "berth-portmap"), 1, "GC unmapped p1's port");
    assert_eq!(server.links()?, vec!["lo"], "GC removed p1's veth");
    assert_eq!(addresses_held(&tmp.path().join("ipam/inport")), 0);
    list.each(&host, &Call::new("DEL", "p1", &server.path()), &rt, Some(&res))?.ok();
    // The freed port serves the next pod; its DEL unmaps it.
    let res = list.add(&host, &Call::new("ADD", "p2", &second.path()), &rt)?.ok().clone();
    assert!(tcp_transfer(&second, "0.0.0.0:8080", &host, "127.0.0.1:18083", 10_000));
    list.each(&host, &Call::new("DEL", "p2", &second.path()), &rt, Some(&res))?.ok();
    assert_eq!(nft_elements(&host, "inet", "berth-portmap"), 1, "DEL unmapped p2's port");
    assert_eq!(second.links()?, vec!["lo"]);
    Ok(())
}

/// The capability declared twice (berth-bridge and berth-portmap, one stateDir): the second
/// mapping finds the first already in place, and one DEL (here without runtimeConfig, as a
/// runtime may call it) leaves nothing mapped.
#[test]
#[ignore = "needs root"]
fn ports_declared_on_both_plugins_are_mapped_once_and_unmapped() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let host = Ns::new("host")?;
    let caps = json!({"capabilities": {"portMappings": true}});
    let state = tmp.path().join("state");
    let list = ConfList::new(
        "twice",
        "1.1.0",
        json!([
            bridge_conf(tmp.path(), "bt-br14", "10.214.0.0/24", caps),
            {"type": "berth-portmap", "stateDir": state, "capabilities": {"portMappings": true}}
        ]),
    );
    let rt = json!({"portMappings": [{"hostPort": 18084, "containerPort": 8080, "protocol": "tcp"}]});
    let pod = Ns::new("pod")?;
    let res = list.add(&host, &Call::new("ADD", "w1", &pod.path()), &rt)?.ok().clone();
    assert!(tcp_transfer(&pod, "0.0.0.0:8080", &host, "127.0.0.1:18084", 10_000));
    list.each(&host, &Call::new("DEL", "w1", &pod.path()), &Value::Null, Some(&res))?.ok();
    assert_eq!(nft_elements(&host, "inet", "berth-portmap"), 1, "only the hairpin bridge");
    assert_eq!(addresses_held(&tmp.path().join("ipam/twice")), 0);
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn bridge_options_mac_capability_and_force_address_reach_the_kernel() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let host = Ns::new("host")?;
    let nothing_left = |pod: &Ns, what: &str| -> anyhow::Result<()> {
        assert_eq!(pod.links()?, vec!["lo"], "{what}: nothing made in the pod");
        assert!(!host.links()?.iter().any(|l| l.starts_with("bv")), "{what}: no veth left");
        assert_eq!(addresses_held(&tmp.path().join("ipam/opts")), 0, "{what}: the address went back");
        Ok(())
    };
    // A bridge that already holds another address in the pods' subnet.
    host.ip(&["link", "add", "bt-br9", "type", "bridge"])?;
    host.ip(&["addr", "add", "10.209.0.77/24", "dev", "bt-br9"])?;
    let options = json!({"mtu": 1400, "promiscMode": true, "capabilities": {"mac": true}});
    let conf = |extra: Value| {
        let mut o = options.clone();
        if let (Some(o), Some(e)) = (o.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        ConfList::new("opts", "1.1.0", json!([bridge_conf(tmp.path(), "bt-br9", "10.209.0.0/24", o)]))
    };
    let mac = "0a:58:0a:d1:00:42";
    let rt = json!({"mac": mac});
    let pod = Ns::new("pod")?;
    let refused = conf(json!({})).add(&host, &Call::new("ADD", "o", &pod.path()), &rt)?;
    assert_eq!(refused.err_code(), 7, "{}", refused.json);
    assert!(refused.msg().contains("10.209.0.77/24") && refused.msg().contains("forceAddress"));
    nothing_left(&pod, "address conflict")?;

    let list = conf(json!({"forceAddress": true}));
    let res = list.add(&host, &Call::new("ADD", "o", &pod.path()), &rt)?.ok().clone();
    let bridge = host.ip(&["-d", "addr", "show", "bt-br9"])?;
    assert!(bridge.contains("10.209.0.1/24") && !bridge.contains("10.209.0.77"), "{bridge}");
    assert!(bridge.contains("PROMISC"), "{bridge}");
    assert_eq!(res["interfaces"][2]["mac"], mac, "{res}");
    let eth = pod.ip(&["link", "show", "eth0"])?;
    assert!(eth.contains(&format!("link/ether {mac}")) && eth.contains("mtu 1400"), "{eth}");
    let veth = res["interfaces"][1]["name"].as_str().expect("veth").to_string();
    assert!(host.ip(&["link", "show", &veth])?.contains("mtu 1400"));
    list.each(&host, &Call::new("CHECK", "o", &pod.path()), &rt, Some(&res))?.ok();
    list.each(&host, &Call::new("DEL", "o", &pod.path()), &rt, Some(&res))?.ok();
    nothing_left(&pod, "DEL")?;

    // `vlan` on a bridge of its own: the port in that VLAN, untagged, without the default
    // VLAN 1. Kernels built without bridge VLAN filtering (this machine's) refuse it, and the
    // refused ADD must leave nothing.
    let filtering = host.ip(&["link", "add", "bt-probe", "type", "bridge", "vlan_filtering", "1"]).is_ok();
    let pod = Ns::new("pod")?;
    let mut vlan = conf(json!({"vlan": 7}));
    vlan.list["plugins"][0]["bridge"] = json!("bt-br10");
    let r = vlan.add(&host, &Call::new("ADD", "v", &pod.path()), &rt)?;
    if filtering {
        let res = r.ok().clone();
        let veth = res["interfaces"][1]["name"].as_str().expect("veth").to_string();
        let vlans = host.run("bridge", &["vlan", "show", "dev", &veth])?;
        assert!(
            vlans.lines().any(|l| l.contains(" 7 PVID") && l.contains("Untagged")),
            "pod port in VLAN 7, untagged: {vlans}"
        );
        assert!(host.ip(&["-d", "link", "show", "bt-br10"])?.contains("vlan_filtering 1"));
        vlan.each(&host, &Call::new("DEL", "v", &pod.path()), &rt, Some(&res))?.ok();
    } else {
        assert_eq!(r.err_code(), 110, "{}", r.json);
        assert!(r.msg().contains("bt-br10"), "the refusal names the bridge: {}", r.json);
    }
    nothing_left(&pod, "vlan")?;
    Ok(())
}
