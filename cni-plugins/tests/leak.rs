//! Leak test: 1,000 ADD/DEL cycles of berth-bridge (ipMasq, macspoofchk) + berth-host-local +
//! berth-portmap. Every tenth ADD of berth-bridge and every twentieth of berth-portmap is killed
//! with SIGKILL part-way and the pod forgotten by the "runtime" (no DEL; a third of those pods
//! keep their netns, and so their veths), then one GC with an empty valid list. The test first
//! checks that the kills left something behind, then that GC left no address, veth, nft
//! element, record or test netns.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const CYCLES: usize = 1000;

fn count_files(dir: &std::path::Path) -> usize {
    walk(dir).len()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
#[ignore = "needs root"]
fn thousand_cycles_with_sigkills_then_gc_leave_nothing() -> anyhow::Result<()> {
    let start = Instant::now();
    let tmp = tempfile::tempdir()?;
    let host = Ns::new("leak")?;
    let state = tmp.path().join("state");
    let list = ConfList::new(
        "leak",
        "1.1.0",
        json!([
            {"type": "berth-bridge", "bridge": "bt-leak", "isDefaultGateway": true, "ipMasq": true,
             "macspoofchk": true, "stateDir": state,
             "ipam": {"type": "berth-host-local", "subnet": "10.215.0.0/22", "dataDir": tmp.path().join("ipam")}},
            {"type": "berth-portmap", "stateDir": state, "capabilities": {"portMappings": true}}
        ]),
    );
    let mut pod = Ns::new("leakpod")?;
    // Pods of killed ADDs whose netns the "runtime" keeps: their veths survive unless GC
    // removes them (a netns that goes away takes its veth pair with it).
    let mut kept = Vec::new();
    let (mut killed, mut completed, mut finished_anyway) = (0, 0, 0);
    // Kills that landed while the plugin still ran: [berth-bridge, berth-portmap].
    let mut cut_short = [0usize; 2];
    for i in 0..CYCLES {
        let id = format!("k{i}");
        let pod_path = pod.path();
        let rt = json!({"portMappings": [{"hostPort": 20000 + (i % 2000) as u16, "containerPort": 80}]});
        let kill_bridge = i % 10 == 7;
        let kill_portmap = i % 20 == 3;
        if kill_bridge || kill_portmap {
            // Kill one plugin part-way through ADD (0–4 ms in), then forget the pod.
            let (plugin, prev) = if kill_bridge {
                (0, None)
            } else {
                let conf = list.plugin_conf(&list.plugins()[0], None, &rt);
                let call = Call::new("ADD", &id, &pod_path);
                (1, Some(invoke(&plugin_path("berth-bridge"), &host, &call, &conf)?.ok().clone()))
            };
            let conf = list.plugin_conf(&list.plugins()[plugin], prev.as_ref(), &rt);
            let name = if plugin == 0 { "berth-bridge" } else { "berth-portmap" };
            let mut child =
                spawn(&plugin_path(name), &host, &Call::new("ADD", &id, &pod_path), conf.to_string().as_bytes())?;
            std::thread::sleep(Duration::from_micros(((i * 397) % 4000) as u64));
            let _ = child.kill();
            let status = child.wait()?;
            killed += 1;
            if status.code().is_some() {
                finished_anyway += 1; // it finished before the signal
            } else {
                cut_short[plugin] += 1;
            }
            let old = std::mem::replace(&mut pod, Ns::new("leakpod")?);
            if i % 3 == 0 {
                kept.push(old);
            }
            continue;
        }
        let call = Call::new("ADD", &id, &pod_path);
        let res = list.add(&host, &call, &rt)?;
        let res: Value = res.ok().clone();
        list.each(&host, &Call::new("DEL", &id, &pod_path), &rt, Some(&res))?.ok();
        completed += 1;
    }
    drop(pod);
    // What the killed ADDs left for GC: the test must have cut some of them short.
    let left_records = walk(&state).len();
    let left_veths = host.links()?.into_iter().filter(|l| l.starts_with("bv")).count();
    let left_mappings = nft_elements(&host, "inet", "berth-portmap");
    eprintln!(
        "before GC: {left_records} records, {left_veths} veths (of {} kept netns), {left_mappings} portmap elements",
        kept.len()
    );
    assert!(
        cut_short[0] > 0 && cut_short[1] > 0,
        "SIGKILLs that landed inside an ADD (berth-bridge, berth-portmap): {cut_short:?}"
    );
    assert!(left_records > 0, "the killed ADDs left records for GC");
    assert!(left_veths > 0, "the kept pods left veths for GC");
    list.gc(&host, &[])?.ok();
    let elapsed = start.elapsed();
    eprintln!(
        "leak test: {CYCLES} cycles ({completed} ADD+DEL, {killed} SIGKILLed ADDs, {finished_anyway} of them had already exited, {cut_short:?} cut short) + GC in {:.1} s",
        elapsed.as_secs_f64()
    );
    let ipam: Vec<_> = walk(&tmp.path().join("ipam"))
        .into_iter()
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok()))
        .collect();
    assert!(ipam.is_empty(), "leaked addresses: {ipam:?}");
    let veths: Vec<String> = host.links()?.into_iter().filter(|l| l.starts_with("bv")).collect();
    assert!(veths.is_empty(), "leaked veths: {veths:?}");
    assert_eq!(nft_elements(&host, "inet", "berth-masq"), 0, "leaked ipMasq entries");
    assert_eq!(nft_elements(&host, "bridge", "berth-macspoof"), 0, "leaked macspoofchk entries");
    assert!(
        nft_elements(&host, "inet", "berth-portmap") <= 1,
        "leaked port mappings (1 = the bridge in the hairpin set)"
    );
    let records: Vec<_> = walk(&state).into_iter().filter(|p| p.extension().is_some_and(|x| x == "json")).collect();
    assert!(records.is_empty(), "leaked records: {records:?}");
    assert!(count_files(&state.join("bridge")) == 0);
    let ours = format!("bt-leakpod-{}-", std::process::id());
    drop(kept);
    let netns = sh(std::process::Command::new("ip").args(["netns", "list"]))?;
    assert!(!netns.contains(&ours), "leaked test netns: {netns}");
    Ok(())
}
