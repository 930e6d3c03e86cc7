//! Leak test: 1,000 ADD/DEL cycles of berth-bridge (ipMasq, macspoofchk) + berth-host-local +
//! berth-portmap, every tenth ADD killed with SIGKILL part-way and then forgotten by the
//! "runtime" (its pod netns deleted, no DEL), then one GC with an empty valid list. Afterwards
//! no address, veth, nft element, record or test netns may remain.

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
    let (mut killed, mut completed, mut killed_after_ipam) = (0, 0, 0);
    for i in 0..CYCLES {
        let id = format!("k{i}");
        let pod_path = pod.path();
        let rt =
            json!({"portMappings": [{"hostPort": 20000 + (i % 2000) as u16, "containerPort": 80}]});
        if i % 10 == 7 {
            // Kill the bridge plugin part-way through ADD (0–4 ms in), then forget the pod.
            let conf = list.plugin_conf(&list.plugins()[0], None, &rt);
            let mut child = spawn(
                &plugin_path("berth-bridge"),
                &host,
                &Call::new("ADD", &id, &pod_path),
                conf.to_string().as_bytes(),
            )?;
            std::thread::sleep(Duration::from_micros(((i * 397) % 4000) as u64));
            let _ = child.kill();
            let status = child.wait()?;
            killed += 1;
            if status.code().is_some() {
                killed_after_ipam += 1; // it finished before the signal
            }
            drop(pod);
            pod = Ns::new("leakpod")?;
            continue;
        }
        let call = Call::new("ADD", &id, &pod_path);
        let res = list.add(&host, &call, &rt)?;
        let res: Value = res.ok().clone();
        list.each(&host, &Call::new("DEL", &id, &pod_path), &rt, Some(&res))?
            .ok();
        completed += 1;
    }
    drop(pod);
    // Let IPAM children of killed plugins finish before collecting.
    std::thread::sleep(Duration::from_millis(200));
    list.gc(&host, &[])?.ok();
    let elapsed = start.elapsed();
    eprintln!(
        "leak test: {CYCLES} cycles ({completed} ADD+DEL, {killed} SIGKILLed ADDs, {killed_after_ipam} of them had already exited) + GC in {:.1} s",
        elapsed.as_secs_f64()
    );
    let ipam: Vec<_> = walk(&tmp.path().join("ipam"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok())
        })
        .collect();
    assert!(ipam.is_empty(), "leaked addresses: {ipam:?}");
    let veths: Vec<String> = host
        .links()?
        .into_iter()
        .filter(|l| l.starts_with("bv"))
        .collect();
    assert!(veths.is_empty(), "leaked veths: {veths:?}");
    assert_eq!(
        nft_elements(&host, "inet", "berth-masq"),
        0,
        "leaked ipMasq entries"
    );
    assert_eq!(
        nft_elements(&host, "bridge", "berth-macspoof"),
        0,
        "leaked macspoofchk entries"
    );
    assert!(
        nft_elements(&host, "inet", "berth-portmap") <= 1,
        "leaked port mappings (1 = the bridge in the hairpin set)"
    );
    let records: Vec<_> = walk(&state)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert!(records.is_empty(), "leaked records: {records:?}");
    assert!(count_files(&state.join("bridge")) == 0);
    let netns = sh(std::process::Command::new("ip").args(["netns", "list"]))?;
    let ours = format!("bt-leakpod-{}-", std::process::id());
    assert!(!netns.contains(&ours), "leaked test netns: {netns}");
    Ok(())
}
