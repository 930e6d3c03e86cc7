//! Soak: 1,000 pod create/delete cycles over three hosts (VXLAN) while agents, shims and the
//! control plane are killed with SIGKILL at random moments and started again. Every round's
//! pods must reach their end state (finished pods with their own exit codes — none lost to a
//! kill), every deletion must complete, and at the end nothing is left: no pods in the API or
//! the runtimes, no IP allocations, veths, network namespaces, mounts, cgroups or processes.
//!
//! `BERTH_SOAK_CYCLES` (default 1000) and `BERTH_SOAK_SEED` (default: the clock) for local runs;
//! the seed is printed so a failure can be replayed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use berth_integration::multi::{Multi, HOSTS};

/// Pods per round: created by one apply, deleted by one delete.
const PER_ROUND: usize = 25;

/// xorshift64*: enough randomness for choosing victims and moments, replayable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy)]
enum Chaos {
    Calm,
    Agent(usize),
    Shim(usize),
    Control,
}

fn pick(rng: &mut Rng) -> Chaos {
    match rng.below(4) {
        0 => Chaos::Calm,
        1 => Chaos::Agent(rng.below(HOSTS as u64) as usize),
        2 => Chaos::Shim(rng.below(HOSTS as u64) as usize),
        _ => Chaos::Control,
    }
}

/// SIGKILL the victim, wait `pause`, start it again on the same state.
fn strike(m: &mut Multi, chaos: Chaos, pause: Duration) {
    match chaos {
        Chaos::Calm => {}
        Chaos::Agent(n) => {
            m.stop_agent(n);
            std::thread::sleep(pause);
            m.start_agent(n);
        }
        Chaos::Shim(n) => {
            let shim = m.hosts[n].shim.as_mut().expect("shim");
            if let Some(mut c) = shim.child.take() {
                c.kill().expect("kill -9 berth-shim");
                c.wait().expect("reap berth-shim");
            }
            std::thread::sleep(pause);
            shim.kill9_and_restart().expect("restart berth-shim");
        }
        Chaos::Control => {
            m.kill9_and_restart_control();
            std::thread::sleep(pause);
        }
    }
}

/// Pod `i` of round `r`: even ones finish with exit code `i % 4` (restartPolicy Never), odd ones
/// run until deleted.
fn round_yaml(r: usize) -> String {
    (0..PER_ROUND)
        .map(|i| {
            let command = if i % 2 == 0 { format!("[sh, -c, \"sleep 0.{}; exit {}\"]", i % 10, i % 4) } else { "[sleep, \"100000\"]".to_string() };
            format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: s{r}-{i}, labels: {{soak: \"{r}\"}}}}\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox:1.36\n    command: {command}\n")
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// name → (phase, exit code of a terminated container or "").
fn round_state(m: &Multi, r: usize) -> BTreeMap<String, (String, String)> {
    let out = m.kubectl(&["get", "pods", "-l", &format!("soak={r}"), "-o", "jsonpath={range .items[*]}{.metadata.name} {.status.phase} {.status.containerStatuses[0].state.terminated.exitCode}{\"\\n\"}{end}"]);
    out.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), (f.next().unwrap_or("").to_string(), f.next().unwrap_or("").to_string())))
        })
        .collect()
}

/// Pod `i` of a round has reached its end state: finished (even `i`) or running (odd `i`).
fn pod_done(i: usize, phase: &str) -> bool {
    if i.is_multiple_of(2) {
        phase == "Succeeded" || phase == "Failed"
    } else {
        phase == "Running"
    }
}

fn round_done(state: &BTreeMap<String, (String, String)>, r: usize) -> bool {
    (0..PER_ROUND).all(|i| state.get(&format!("s{r}-{i}")).is_some_and(|(phase, _)| pod_done(i, phase)))
}

fn lines_of(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// What is left of pods on host `n`, by kind; every count must be zero.
fn leftovers(m: &Multi, n: usize) -> BTreeMap<&'static str, Vec<String>> {
    let h = &m.hosts[n];
    let d = h.dir.display().to_string();
    let mut left = BTreeMap::new();
    let ipam = h.dir.join("cni-state/networks");
    let ips: Vec<String> = walk(&ipam).into_iter().filter(|p| p.parse::<std::net::IpAddr>().is_ok()).collect();
    left.insert("IP allocations", ips);
    let veths = h.ns.command("ip").args(["-o", "link", "show", "type", "veth"]).output().expect("ip link");
    left.insert("veths", lines_of(&veths).into_iter().filter(|l| !l.contains(" eth0@")).collect());
    let netns_dir = h.dir.join("s/run/netns");
    left.insert(
        "netns pins",
        std::fs::read_dir(&netns_dir).into_iter().flatten().flatten().map(|e| e.path().display().to_string()).collect(),
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    left.insert("mounts", mounts.lines().filter(|l| l.contains(&d)).map(str::to_string).collect());
    // The agent's pod hierarchy (only its QoS-class directories may stay) and the shim's parent.
    let cg_root = format!("berth-mn-s{n}-{}", std::process::id());
    let shim_root = format!("berth-it-ms{n}-{}", std::process::id());
    let mut cgroups = Vec::new();
    for ctrl in ["memory", "cpu", "pids"] {
        for root in [&cg_root, &shim_root] {
            let base = std::path::Path::new("/sys/fs/cgroup").join(ctrl).join(root);
            cgroups.extend(
                walk_dirs(&base)
                    .into_iter()
                    .filter(|p| !["burstable", "besteffort"].iter().any(|q| p.ends_with(&format!("{root}/{q}")))),
            );
        }
    }
    left.insert("cgroups", cgroups);
    let procs: Vec<String> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).into_owned())
                .unwrap_or_default();
            cg.contains(&format!("/{cg_root}/"))
                || cg.contains(&format!("/{shim_root}/"))
                || cmd.contains(&format!("{d}/s/run/"))
        })
        .map(|pid| {
            format!(
                "{pid} {}",
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                    .unwrap_or_default()
            )
        })
        .collect();
    left.insert("processes", procs);
    left
}

/// File names (not paths) below `dir`, recursively.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

/// Directory paths below `dir`, recursively.
fn walk_dirs(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.push(p.display().to_string());
            out.extend(walk_dirs(&p));
        }
    }
    out
}

#[test]
#[ignore = "needs root"]
fn a_thousand_pods_with_random_kill9() {
    let cycles: usize = std::env::var("BERTH_SOAK_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let seed: u64 = std::env::var("BERTH_SOAK_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64 | 1
    });
    eprintln!("soak: {cycles} pods, seed {seed} (BERTH_SOAK_SEED={seed} replays the same kills)");
    let mut rng = Rng(seed);
    let mut m = Multi::start("vxlan", "s");
    m.wait("three Ready nodes", Duration::from_secs(60), |m| m.ready_nodes() == HOSTS);
    let rounds = cycles.div_ceil(PER_ROUND);
    let started = Instant::now();
    let mut kills: BTreeMap<&'static str, usize> = BTreeMap::new();
    for r in 0..rounds {
        // Create the round's pods; somewhere in their start-up, kill something.
        m.apply(&round_yaml(r));
        let chaos = pick(&mut rng);
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
        strike(&mut m, chaos, Duration::from_millis(rng.below(500)));
        count(&mut kills, chaos);
        let deadline = Instant::now() + Duration::from_secs(180);
        while !round_done(&round_state(&m, r), r) {
            if Instant::now() > deadline {
                // Which pods, in which phase, with which container states: enough to find
                // the pod in the agents' logs.
                let state = round_state(&m, r);
                let stuck: Vec<String> = state
                    .iter()
                    .filter(|(name, (phase, _))| {
                        !pod_done(name.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0), phase)
                    })
                    .map(|(name, _)| {
                        format!(
                            "{name}: {}",
                            m.kubectl(&[
                                "get",
                                "pod",
                                name,
                                "-o",
                                "jsonpath={.spec.nodeName} {.metadata.uid} {.status}"
                            ])
                        )
                    })
                    .collect();
                m.wait(
                    &format!(
                        "round {r}: every pod Running or finished (after {chaos:?}); stuck:\n{}",
                        stuck.join("\n")
                    ),
                    Duration::from_secs(1),
                    |m| round_done(&round_state(m, r), r),
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        if r == 0 {
            // The leak probes see live pods: with the round's pods running, every kind is
            // present somewhere (a probe that cannot see a pod could not see a leak).
            let mut seen: BTreeMap<&'static str, usize> = BTreeMap::new();
            for n in 0..HOSTS {
                for (what, items) in leftovers(&m, n) {
                    *seen.entry(what).or_default() += items.len();
                }
            }
            assert!(seen.values().all(|n| *n > 0), "with pods running, each probe finds something: {seen:?}");
        }
        let state = round_state(&m, r);
        for i in (0..PER_ROUND).step_by(2) {
            let (phase, code) = &state[&format!("s{r}-{i}")];
            let want = (i % 4).to_string();
            assert_eq!(
                code, &want,
                "round {r}: pod s{r}-{i} ({phase}) exited {want}; its exit code was lost (after {chaos:?})"
            );
            assert_eq!(phase, if i % 4 == 0 { "Succeeded" } else { "Failed" }, "round {r}: s{r}-{i}");
        }
        // Delete them; kill something during the deletion too.
        let _ = m.kubectl(&["delete", "pods", "-l", &format!("soak={r}"), "--wait=false"]);
        let chaos = pick(&mut rng);
        std::thread::sleep(Duration::from_millis(rng.below(1000)));
        strike(&mut m, chaos, Duration::from_millis(rng.below(500)));
        count(&mut kills, chaos);
        m.wait(&format!("round {r}: its pods deleted (after {chaos:?})"), Duration::from_secs(180), |m| {
            round_state(m, r).is_empty()
        });
        eprintln!("soak: round {}/{rounds} done at {:.0} s", r + 1, started.elapsed().as_secs_f64());
    }
    eprintln!("soak: {} pods in {:.0} s; kills: {kills:?}", rounds * PER_ROUND, started.elapsed().as_secs_f64());

    // Nothing of them is left anywhere: the runtimes have no sandboxes, the hosts nothing else.
    m.wait("every host's runtime to hold no pod", Duration::from_secs(60), |m| {
        (0..HOSTS).all(|n| sandboxes(m, n) == 0)
    });
    let mut report = Vec::new();
    for n in 0..HOSTS {
        for (what, items) in leftovers(&m, n) {
            eprintln!("soak: host {n}: {} leaked {what}", items.len());
            if !items.is_empty() {
                report.push(format!("host {n}: {} {what}: {items:#?}", items.len()));
            }
        }
    }
    assert!(report.is_empty(), "leaks after the soak:\n{}", report.join("\n"));
}

fn count(kills: &mut BTreeMap<&'static str, usize>, chaos: Chaos) {
    let k = match chaos {
        Chaos::Calm => "none",
        Chaos::Agent(_) => "agent",
        Chaos::Shim(_) => "shim",
        Chaos::Control => "control",
    };
    *kills.entry(k).or_default() += 1;
}

/// Pod sandboxes the runtime of host `n` still has.
fn sandboxes(m: &Multi, n: usize) -> usize {
    let socket = m.hosts[n].shim.as_ref().expect("shim").socket.clone();
    tokio::runtime::Runtime::new().expect("tokio").block_on(async move {
        let Ok((mut rt, _)) = berth_integration::cri::connect(&socket).await else { return usize::MAX };
        rt.list_pod_sandbox(berth_proto::runtime::v1::ListPodSandboxRequest::default())
            .await
            .map(|r| r.into_inner().items.len())
            .unwrap_or(usize::MAX)
    })
}
