//! berth-agent under load, for each CRI runtime (berth-shim, containerd 1.6 + runc), same
//! agent, same control plane, same machine:
//! - 100 pods created at once (one `kubectl create`) → time until each is Running as a watch
//!   sees it, p50 and p99: from the create command, and from each pod's creation;
//! - RSS of the agent and of the runtime, idle and with the 100 pods (and the runtime's PSS,
//!   which counts the pages its processes share once);
//! - CPU (user + system, children included) of agent + runtime over a 30 s window while every
//!   pod runs an exec probe each second (from 5 s after its start).
//!
//! Usage: `bench-agent [--pods 100] [--window 30] [--runtime berth|containerd|both]` (root).

use std::time::Duration;

use berth_integration::cluster::{Cluster, Runtime};
use berth_integration::startup::{self, percentile};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn arg_str(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_string())
}

/// Processes whose command line contains `needle` (by /proc), excluding this one.
fn pids(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| *p != me)
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

/// The `field:` line of `/proc/<pid>/<file>`, in kB (0 when absent).
fn proc_kib(pid: i32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn rss_kib(pid: i32) -> u64 {
    proc_kib(pid, "status", "VmRSS")
}

/// Proportional set size: shared pages (the binary of 100 monitors or shims) split among
/// the processes that map them, so a sum over processes counts them once.
fn pss_kib(pid: i32) -> u64 {
    proc_kib(pid, "smaps_rollup", "Pss")
}

/// The machine's busy time so far (every CPU: all but idle and iowait), in clock ticks.
fn node_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    f.iter().sum::<u64>() - f.get(3).copied().unwrap_or(0) - f.get(4).copied().unwrap_or(0)
}

/// utime + stime + cutime + cstime, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    (11..15).filter_map(|i| f.get(i)?.parse::<u64>().ok()).sum()
}

/// The runtime's resident processes: berth-shim + its monitors, or containerd + its shims.
fn runtime_pids(rt: Runtime, dir: &std::path::Path) -> Vec<i32> {
    let d = dir.display().to_string();
    match rt {
        Runtime::BerthShim => {
            pids(&format!("{d}/s/shim.toml")).into_iter().chain(pids(&format!("{d}/s/run/pods"))).collect()
        }
        Runtime::Containerd => {
            pids(&format!("{d}/c/config.toml")).into_iter().chain(pids("containerd-shim-runc-v2")).collect()
        }
    }
}

/// The probes start `PROBE_DELAY` s after each container, so the start-up figures are those of
/// the pods alone (as in Kubernetes' density tests, whose pods have no probes) and the CPU
/// window, which opens after it, sees every probe running.
const PROBE_DELAY: u64 = 5;

fn pods_yaml(n: u64, image: &str, probe: bool) -> String {
    let probe = if probe {
        format!("\n    livenessProbe: {{exec: {{command: [\"true\"]}}, periodSeconds: 1, initialDelaySeconds: {PROBE_DELAY}}}")
    } else {
        String::new()
    };
    (0..n)
        .map(|i| format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, labels: {{bench: \"1\"}}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {image}\n    command: [sleep, \"100000\"]{probe}\n"))
        .collect::<Vec<_>>()
        .join("---\n")
}

struct Run {
    /// From the apply: the batch.
    p50: f64,
    p99: f64,
    /// From each pod's creation (its POST answered) to Running as the watch saw it: the
    /// Kubernetes pod startup SLI.
    startup_p50: f64,
    startup_p99: f64,
    /// When the last pod was created.
    created_last: f64,
    agent_idle: u64,
    runtime_idle: u64,
    agent_loaded: u64,
    runtime_loaded: u64,
    runtime_loaded_pss: u64,
    cpu_percent: f64,
    /// The whole machine's CPU time from the create command until every pod ran, per pod
    /// (agent, runtime, control plane, kubectl, CNI, kernel threads): what a pod costs the node.
    burst_ms_per_pod: f64,
}

fn run(rt: Runtime, pods: u64, window: u64) -> anyhow::Result<Run> {
    let name = if rt == Runtime::BerthShim { "bench-b" } else { "bench-c" };
    let port = if rt == Runtime::BerthShim { 5301 } else { 5302 };
    // BENCH_AGENT_YAML: extra agent configuration (e.g. `parallelPodStarts: 8`) for experiments.
    let extra = std::env::var("BENCH_AGENT_YAML").unwrap_or_default();
    let c = Cluster::start_custom(
        name,
        port,
        if rt == Runtime::BerthShim { "10.92.0.0/16" } else { "10.93.0.0/16" },
        rt,
        &extra,
    )?;
    // Warm the image so pull time is not measured.
    c.apply(&pods_yaml(1, &c.image, false).replace("name: p0", "name: warm"))?;
    c.wait_for(Duration::from_secs(60), "the warm-up pod", |c| {
        c.pod("warm").is_ok_and(|p| p["status"]["phase"] == "Running")
    })?;
    c.kubectl(&["delete", "pod", "warm", "--wait=true"])?;
    std::thread::sleep(Duration::from_secs(3));
    let agent = pids(&format!("{}/agent.yaml", c.dir.display()));
    let sum = |ps: &[i32], f: fn(i32) -> u64| ps.iter().map(|p| f(*p)).sum::<u64>();
    let (agent_idle, runtime_idle) = (sum(&agent, rss_kib), sum(&runtime_pids(rt, &c.dir), rss_kib));

    // All pods created at once; each one's time to Running as a watch saw it.
    let kubectl = || {
        let mut k = c.ns.command("kubectl");
        k.arg("--kubeconfig").arg(&c.kubeconfig);
        k
    };
    let busy_before = node_busy_ticks();
    let s =
        startup::measure(&kubectl, "bench=1", pods_yaml(pods, &c.image, true), pods as usize, Duration::from_secs(600))
            .map_err(|e| anyhow::anyhow!("{e}\n{}", c.agent_log()))?;
    let burst_ticks = node_busy_ticks().saturating_sub(busy_before);
    if let Ok(keep) = std::env::var("BENCH_KEEP_LOGS") {
        for f in ["agent.log", "control.log", "s/shim.log"] {
            let _ = std::fs::copy(c.dir.join(f), format!("{keep}/{}-{}", name, f.replace('/', "-")));
        }
    }

    // Steady state with the exec probes: CPU over the window, once every probe has begun.
    std::thread::sleep(Duration::from_secs(PROBE_DELAY + 5));
    let procs: Vec<i32> = agent.iter().copied().chain(runtime_pids(rt, &c.dir)).collect();
    let before = sum(&procs, cpu_ticks);
    std::thread::sleep(Duration::from_secs(window));
    let procs_after: Vec<i32> = agent.iter().copied().chain(runtime_pids(rt, &c.dir)).collect();
    let after = sum(&procs_after, cpu_ticks);
    // SAFETY: sysconf with a valid name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu_percent = after.saturating_sub(before) as f64 / hz / window as f64 * 100.0;
    let burst_ms_per_pod = burst_ticks as f64 / hz * 1000.0 / pods as f64;
    let (agent_loaded, runtime_loaded) = (sum(&agent, rss_kib), sum(&runtime_pids(rt, &c.dir), rss_kib));
    let runtime_loaded_pss = sum(&runtime_pids(rt, &c.dir), pss_kib);
    c.kubectl(&["delete", "pods", "-l", "bench=1", "--wait=true", "--timeout=300s"])?;
    Ok(Run {
        p50: percentile(&s.from_create, 0.5),
        p99: percentile(&s.from_create, 0.99),
        startup_p50: percentile(&s.per_pod, 0.5),
        startup_p99: percentile(&s.per_pod, 0.99),
        created_last: s.created_last,
        agent_idle,
        runtime_idle,
        agent_loaded,
        runtime_loaded,
        runtime_loaded_pss,
        cpu_percent,
        burst_ms_per_pod,
    })
}

fn main() -> anyhow::Result<()> {
    let pods = arg("--pods", 100);
    let window = arg("--window", 30);
    let which = arg_str("--runtime", "both");
    let mut rows = Vec::new();
    for (label, rt) in [("berth-shim", Runtime::BerthShim), ("containerd 1.6 + runc", Runtime::Containerd)] {
        let wanted = which == "both"
            || (which == "berth" && rt == Runtime::BerthShim)
            || (which == "containerd" && rt == Runtime::Containerd);
        if wanted {
            eprintln!("== {label}");
            rows.push((label, run(rt, pods, window)?));
        }
    }
    println!("{pods} pods created at once, each with an exec liveness probe every second; same berth-agent and berth-control");
    println!("Running p50/p99: from the create command; startup p50/p99: from each pod's creation (its POST answered) to Running as the watch saw it");
    println!(
        "node CPU per pod: the whole machine's busy time from the create command until all ran, divided by the pods"
    );
    println!("| runtime | Running p50 | Running p99 | startup p50 | startup p99 | last created | node CPU per pod | agent RSS idle / loaded | runtime RSS idle / loaded | runtime PSS loaded | CPU agent+runtime ({window} s) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (label, r) in rows {
        println!(
            "| {label} | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.1} ms | {:.1} / {:.1} MiB | {:.1} / {:.1} MiB | {:.1} MiB | {:.1}% of a core |",
            r.p50,
            r.p99,
            r.startup_p50,
            r.startup_p99,
            r.created_last,
            r.burst_ms_per_pod,
            r.agent_idle as f64 / 1024.0,
            r.agent_loaded as f64 / 1024.0,
            r.runtime_idle as f64 / 1024.0,
            r.runtime_loaded as f64 / 1024.0,
            r.runtime_loaded_pss as f64 / 1024.0,
            r.cpu_percent
        );
    }
    Ok(())
}
