//! `bench-cni`: CNI plugin latency and overlay throughput.
//!
//! 1. berth-bridge + berth-host-local against the reference bridge + host-local (Debian's
//!    containernetworking-plugins), same conflist shape (bridge, isGateway, host-local /16),
//!    alternating which goes first, ADD and DEL wall time per invocation (spawn to exit).
//! 2. TCP throughput (iperf3, 5 s) between pods on two netns "hosts" over berth-vxlan and
//!    berth-host-gw.
//!
//!     scripts/build && target/release/bench-cni --pairs 200 [--ip-masq] [--no-iperf]
//!
//! Everything runs inside network namespaces made for the run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use berth_integration::bench::percentile;
use berth_integration::binaries::bin_path;
use berth_integration::netns::NetNs;
use serde_json::{json, Value};

const REFERENCE: &str = "/usr/lib/cni";

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

struct Plugin {
    label: &'static str,
    exe: PathBuf,
    conf: Value,
    add: Vec<f64>,
    del: Vec<f64>,
}

/// Runs one plugin invocation in the current (host) netns; wall milliseconds.
fn invoke(exe: &Path, cmd: &str, id: &str, netns: &Path, cni_path: &str, conf: &Value) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut child = Command::new(exe)
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("spawning {}", exe.display()))?;
    child.stdin.take().context("stdin")?.write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        bail!("{} {cmd}: {}", exe.display(), String::from_utf8_lossy(&out.stdout));
    }
    Ok(ms)
}

fn enter(ns: &NetNs) -> anyhow::Result<()> {
    let f = std::fs::File::open(ns.path())?;
    // SAFETY: a valid namespace fd; the process is single-threaded at this point.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns {}: {}", ns.path().display(), std::io::Error::last_os_error());
    }
    Ok(())
}

fn latency(pairs: usize, masq: bool, tmp: &Path) -> anyhow::Result<Value> {
    let berth_dir = bin_path("berth-bridge")?.parent().context("bin dir")?.to_path_buf();
    let cni_path = format!("{}:{REFERENCE}", berth_dir.display());
    let shape = |ty: &str, bridge: &str, ipam: &str, subnet: &str, name: &str| {
        json!({"cniVersion": "1.0.0", "name": name, "type": ty, "bridge": bridge, "isGateway": true,
               "ipMasq": masq, "stateDir": tmp.join("state"),
               "ipam": {"type": ipam, "subnet": subnet, "dataDir": tmp.join(name)}})
    };
    let mut plugins = [
        Plugin {
            label: "berth-bridge+berth-host-local",
            exe: berth_dir.join("berth-bridge"),
            conf: shape("berth-bridge", "bench-b0", "berth-host-local", "10.250.0.0/16", "bench-berth"),
            add: vec![],
            del: vec![],
        },
        Plugin {
            label: "bridge+host-local (reference)",
            exe: Path::new(REFERENCE).join("bridge"),
            conf: shape("bridge", "bench-b1", "host-local", "10.251.0.0/16", "bench-ref"),
            add: vec![],
            del: vec![],
        },
    ];
    let pod = NetNs::new("bench-cni-pod")?;
    let warmup = 5;
    for i in 0..pairs + warmup {
        let order: [usize; 2] = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            let p = &mut plugins[k];
            let id = format!("b{i}");
            let a = invoke(&p.exe, "ADD", &id, &pod.path(), &cni_path, &p.conf)?;
            let d = invoke(&p.exe, "DEL", &id, &pod.path(), &cni_path, &p.conf)?;
            if i >= warmup {
                p.add.push(a);
                p.del.push(d);
            }
        }
    }
    let stats =
        |v: &[f64]| json!({"min": percentile(v, 0.0), "median": percentile(v, 50.0), "p90": percentile(v, 90.0)});
    let rows: Vec<Value> = plugins
        .iter()
        .map(|p| json!({"plugins": p.label, "pairs": p.add.len(), "add_ms": stats(&p.add), "del_ms": stats(&p.del)}))
        .collect();
    let ratio =
        |k: &str| rows[0][k]["median"].as_f64().unwrap_or(f64::NAN) / rows[1][k]["median"].as_f64().unwrap_or(f64::NAN);
    Ok(json!({"ip_masq": masq, "results": rows, "ratio_add": ratio("add_ms"), "ratio_del": ratio("del_ms")}))
}

/// Two hosts on an underlay bridge, one pod each, over `plugin`; iperf3 bits/s pod → pod.
fn throughput(plugin: &str, tmp: &Path, seconds: u32) -> anyhow::Result<f64> {
    let exe = bin_path(plugin)?;
    let cni_path = format!("{}:{REFERENCE}", exe.parent().context("dir")?.display());
    let ul = NetNs::new(&format!("bench-ul-{plugin}"))?;
    let ip = |ns: &str, args: &[&str]| -> anyhow::Result<()> {
        let st = Command::new("ip").arg("-n").arg(ns).args(args).status()?;
        if !st.success() {
            bail!("ip -n {ns} {args:?} failed");
        }
        Ok(())
    };
    ip(&ul.name, &["link", "add", "ul", "type", "bridge"])?;
    ip(&ul.name, &["link", "set", "ul", "up"])?;
    let mut hosts = Vec::new();
    let mut pods = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..2 {
        let h = NetNs::new(&format!("bench-h{i}-{plugin}"))?;
        let port = format!("ul{i}");
        ip(&h.name, &["link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &ul.name])?;
        ip(&ul.name, &["link", "set", &port, "master", "ul", "up"])?;
        ip(&h.name, &["addr", "add", &format!("192.168.200.{}/24", 10 + i), "dev", "eth0"])?;
        ip(&h.name, &["link", "set", "eth0", "up"])?;
        let peers: Vec<Value> = (0..2)
            .map(|j| json!({"podCIDR": format!("10.252.{j}.0/24"), "underlayIP": format!("192.168.200.{}", 10 + j)}))
            .collect();
        let conf = json!({"cniVersion": "1.1.0", "name": "bench-overlay", "type": plugin, "underlayDevice": "eth0",
            "peers": peers, "stateDir": tmp.join(format!("ov{i}")),
            "ipam": {"type": "berth-host-local", "subnet": format!("10.252.{i}.0/24"), "dataDir": tmp.join(format!("ov{i}"))}});
        let pod = NetNs::new(&format!("bench-p{i}-{plugin}"))?;
        // The plugin runs inside the host netns through `ip netns exec`.
        let mut child = Command::new("ip")
            .args(["netns", "exec", &h.name])
            .arg(&exe)
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", format!("iperf{i}"))
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        child.stdin.take().context("stdin")?.write_all(conf.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        let res: Value = serde_json::from_slice(&out.stdout)?;
        if !out.status.success() {
            bail!("{plugin} ADD: {res}");
        }
        addrs.push(res["ips"][0]["address"].as_str().unwrap_or("").split('/').next().unwrap_or("").to_string());
        hosts.push(h);
        pods.push(pod);
    }
    let mut server = Command::new("ip")
        .args(["netns", "exec", &pods[1].name, "iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .spawn()
        .context("iperf3 (apt-get install iperf3)")?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = Command::new("ip")
        .args(["netns", "exec", &pods[0].name, "iperf3", "-J", "-t", &seconds.to_string(), "-c", &addrs[1]])
        .output()?;
    let _ = server.wait();
    let v: Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    v["end"]["sum_received"]["bits_per_second"].as_f64().with_context(|| format!("iperf3: {v}"))
}

/// The 1-minute load average (`/proc/loadavg`), if readable.
fn loadavg() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn main() -> anyhow::Result<()> {
    let pairs: usize = arg("--pairs").and_then(|v| v.parse().ok()).unwrap_or(200);
    let tmp = tempfile::tempdir()?;
    let host = NetNs::new("bench-cni-host")?;
    enter(&host)?;
    let load_before = loadavg();
    let mut report = json!({"latency": latency(pairs, flag("--ip-masq"), tmp.path())?});
    // The machine is shared: the 1-minute load average says how much the medians carry.
    report["loadavg_1m"] = json!({"before": load_before, "after": loadavg()});
    if !flag("--no-iperf") {
        let secs = 5;
        let vx = throughput("berth-vxlan", tmp.path(), secs)?;
        let hg = throughput("berth-host-gw", tmp.path(), secs)?;
        report["iperf3_gbit_s"] = json!({"berth-vxlan": vx / 1e9, "berth-host-gw": hg / 1e9, "seconds": secs});
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
