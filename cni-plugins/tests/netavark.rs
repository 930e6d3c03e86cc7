//! berth-bridge driven the way netavark (Podman 5) drives an external network plugin: a
//! subcommand and the netns path as arguments, JSON on stdin, no CNI_* environment, run in the
//! "host" network namespace made by the test.

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use anyhow::Context;
use common::*;
use serde_json::{json, Value};

/// Runs `berth-bridge ARGS…` inside `host` with `stdin`, as netavark's `exec_plugin_common`
/// does (stdin closed after the request, stdout read to the end); exit code and stdout JSON.
fn netavark(host: &Ns, args: &[&str], stdin: &Value) -> anyhow::Result<(i32, Value)> {
    let ns = std::fs::File::open(host.path())?;
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new(plugin_path("berth-bridge"));
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: setns is async-signal-safe; fd stays open until after spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("spawning berth-bridge")?;
    child.stdin.take().context("stdin")?.write_all(stdin.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8(out.stdout)?;
    let json = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).with_context(|| format!("stdout not JSON: {text:?}"))?
    };
    Ok((out.status.code().unwrap_or(-1), json))
}

fn exec_input(network: &Value, id: &str, static_ips: Value, ports: Value) -> Value {
    json!({"container_id": id, "container_name": format!("ctr-{id}"), "port_mappings": ports,
           "network": network, "network_options": {"interface_name": "eth0", "static_ips": static_ips,
                                                   "aliases": [id]}})
}

/// Removes the network's allocations directory under the default data dir when the test ends.
struct DataDir(std::path::PathBuf);

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
#[ignore = "needs root"]
fn info_create_setup_teardown_as_netavark_calls_them() -> anyhow::Result<()> {
    let host = Ns::new("nv-host")?;
    let name = format!("bt-nv-{}", std::process::id());
    let _data = DataDir(std::path::Path::new("/run/berth/cni/networks").join(&name));

    let (code, info) = netavark(&host, &["info"], &Value::Null)?;
    assert_eq!((code, info["api_version"].as_str()), (0, Some("1.0.0")), "{info}");
    assert!(info["version"].is_string());

    // create: Podman fills name, id, driver and the --subnet; the plugin completes the rest.
    let request = json!({"name": name, "id": "7a1c0ffee0ddba11deadbeef", "driver": "berth-bridge",
        "network_interface": "bt-nvbr0", "subnets": [{"subnet": "10.213.0.0/24"}],
        "ipv6_enabled": false, "internal": false, "dns_enabled": true,
        "ipam_options": {"driver": "host-local"}, "options": {"mtu": "1400"}});
    let (code, network) = netavark(&host, &["create"], &request)?;
    assert_eq!(code, 0, "{network}");
    assert_eq!(network["subnets"][0]["gateway"], "10.213.0.1");
    assert_eq!((network["name"].as_str(), network["dns_enabled"].as_bool()), (Some(name.as_str()), Some(false)));
    let (code, err) = netavark(&host, &["create"], &json!({"name": "x", "id": "y", "driver": "berth-bridge"}))?;
    assert_eq!(code, 1);
    assert!(err["error"].as_str().unwrap_or("").contains("no subnet"), "{err}");

    // setup: one pod with an address Podman's IPAM chose, one left to berth-host-local, and a port.
    let pods = [Ns::new("nv-pod")?, Ns::new("nv-pod")?];
    let ports = json!([{"container_port": 80, "host_ip": "", "host_port": 18080, "protocol": "tcp", "range": 1}]);
    let inputs = [
        exec_input(&network, "nva", json!(["10.213.0.50"]), ports),
        exec_input(&network, "nvb", Value::Null, Value::Null),
    ];
    let mut addrs = Vec::new();
    for (pod, input) in pods.iter().zip(&inputs) {
        let (code, status) = netavark(&host, &["setup", &pod.path()], input)?;
        assert_eq!(code, 0, "{status}");
        let eth0 = &status["interfaces"]["eth0"];
        let ipnet = eth0["subnets"][0]["ipnet"].as_str().context("ipnet")?.to_string();
        assert_eq!(eth0["subnets"][0]["gateway"], "10.213.0.1", "{status}");
        let mac = eth0["mac_address"].as_str().context("mac")?;
        assert!(pod.ip(&["link", "show", "eth0"])?.contains(mac), "status MAC is the pod's");
        assert!(pod.ip(&["-o", "addr", "show", "eth0"])?.contains(&ipnet));
        assert!(pod.ip(&["link", "show", "eth0"])?.contains("mtu 1400"));
        addrs.push(ipnet.split('/').next().unwrap_or_default().to_string());
    }
    assert_eq!(addrs[0], "10.213.0.50", "static_ips honoured");
    assert_ne!(addrs[1], addrs[0]);
    assert!(pods[0].ping(&addrs[1]), "pod to pod over the bridge");
    assert!(pods[1].ping("10.213.0.1"), "pod to gateway");
    assert_eq!(nft_elements(&host, "inet", "berth-portmap"), 1 + 1, "mapping + hairpin bridge");
    assert_eq!(nft_elements(&host, "inet", "berth-masq"), 2, "both pods masqueraded");
    assert!(tcp_transfer(&pods[0], "0.0.0.0:80", &host, "127.0.0.1:18080", 50_000), "host port 18080 reaches the pod");

    // A repeated setup of the same container (a retry) replaces the attachment: same address.
    let (code, again) = netavark(&host, &["setup", &pods[1].path()], &inputs[1])?;
    assert_eq!(code, 0, "{again}");
    assert_eq!(again["interfaces"]["eth0"]["subnets"][0]["ipnet"], format!("{}/24", addrs[1]));
    assert!(pods[1].ip(&["-o", "addr", "show", "eth0"])?.contains(&addrs[1]));

    // teardown: everything goes; again, and with the netns gone, is still success.
    for (pod, input) in pods.iter().zip(&inputs) {
        let (code, out) = netavark(&host, &["teardown", &pod.path()], input)?;
        assert_eq!((code, &out), (0, &Value::Null));
        assert!(!pod.links()?.iter().any(|l| l == "eth0"));
        let (code, _) = netavark(&host, &["teardown", &pod.path()], input)?;
        assert_eq!(code, 0);
    }
    let (code, out) = netavark(&host, &["teardown", "/proc/does-not-exist/ns/net"], &inputs[0])?;
    assert_eq!(code, 0, "{out}");
    assert_eq!(nft_elements(&host, "inet", "berth-portmap"), 1, "only the hairpin bridge entry");
    assert_eq!(nft_elements(&host, "inet", "berth-masq"), 0);
    let veths: Vec<String> = host.links()?.into_iter().filter(|l| l.starts_with("bv")).collect();
    assert!(veths.is_empty(), "host veths left: {veths:?}");
    let left: Vec<_> =
        std::fs::read_dir(&_data.0)?.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("10.")).collect();
    assert!(left.is_empty(), "allocations left: {left:?}");

    // Teardown is best-effort: a port mapping it cannot read is reported, the bridge side goes.
    let pod = Ns::new("nv-pod")?;
    let plain = exec_input(&network, "nvc", Value::Null, Value::Null);
    let (code, status) = netavark(&host, &["setup", &pod.path()], &plain)?;
    assert_eq!(code, 0, "{status}");
    let bad_ports = json!([{"container_port": 80, "host_port": 0, "protocol": "tcp", "range": 1}]);
    let broken = exec_input(&network, "nvc", Value::Null, bad_ports);
    let (code, err) = netavark(&host, &["teardown", &pod.path()], &broken)?;
    assert_eq!(code, 1, "{err}");
    assert!(err["error"].as_str().unwrap_or("").contains("port mapping"), "{err}");
    assert!(!pod.links()?.iter().any(|l| l == "eth0"), "bridge side torn down anyway");

    // Requests netavark could send that berth-bridge must answer with an error, not a panic.
    let (code, err) = netavark(&host, &["setup"], &inputs[0])?;
    assert_eq!(code, 1);
    assert!(err["error"].as_str().unwrap_or("").contains("network namespace"), "{err}");
    let (code, err) = netavark(&host, &["setup", &pods[0].path()], &json!({"container_id": 5}))?;
    assert_eq!(code, 1);
    assert!(err["error"].as_str().unwrap_or("").contains("decode"), "{err}");
    Ok(())
}
