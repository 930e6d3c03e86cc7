//! Pod start-up latency as Kubernetes defines it: from each pod's creation (its POST
//! answered) to Running as a watch sees it. Pods are created by one `kubectl create`, which
//! prints `pod/<name> created` as each POST returns; a `kubectl get -w` read on its own thread
//! records when each pod is first seen Running.

use std::collections::HashMap;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};

/// Seconds, each sorted ascending.
#[derive(Debug, Clone)]
pub struct Startup {
    /// From the start of the create command to each pod Running (the batch as a whole).
    pub from_create: Vec<f64>,
    /// From each pod's own creation to Running: the SLI.
    pub per_pod: Vec<f64>,
    /// When the last pod was created, from the start of the create command.
    pub created_last: f64,
}

/// The `p` quantile (0..=1) of `sorted`, NaN if empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v
}

/// Creates the `pods` pods of `yaml` (all labelled `selector`) and waits up to `timeout` for
/// each to run. `kubectl` gives a kubectl command already pointed at the cluster.
pub fn measure(
    kubectl: &dyn Fn() -> Command,
    selector: &str,
    yaml: String,
    pods: usize,
    timeout: Duration,
) -> anyhow::Result<Startup> {
    let mut watch = kubectl();
    watch
        .args([
            "get",
            "pods",
            "-l",
            selector,
            "-w",
            "--no-headers",
            "-o",
            "custom-columns=N:.metadata.name,P:.status.phase",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut watcher = watch.spawn()?;
    let stdout = watcher.stdout.take().expect("stdout");
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let reader = std::thread::spawn(move || {
        let mut running: HashMap<String, f64> = HashMap::new();
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 2 && f[1] == "Running" {
                running.entry(f[0].to_string()).or_insert(t0.elapsed().as_secs_f64());
            }
            if running.len() >= pods {
                break;
            }
        }
        running
    });
    let mut create = kubectl();
    // No client-side schema validation: the figures are the node's, and kubectl's OpenAPI
    // validation of each object was a fifth of the machine's CPU during the burst.
    create
        .args(["create", "--validate=false", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut creator = create.spawn()?;
    let mut stdin = creator.stdin.take().expect("stdin");
    std::thread::spawn(move || std::io::Write::write_all(&mut stdin, yaml.as_bytes()));
    let mut created: HashMap<String, f64> = HashMap::new();
    for line in std::io::BufReader::new(creator.stdout.take().expect("stdout")).lines().map_while(Result::ok) {
        if let Some(name) = line.strip_prefix("pod/").and_then(|l| l.strip_suffix(" created")) {
            created.insert(name.to_string(), t0.elapsed().as_secs_f64());
        }
    }
    let status = creator.wait()?;
    ensure!(
        status.success() && created.len() == pods,
        "kubectl create: {status}, {} of {pods} pods created",
        created.len()
    );
    // The reader ends when every pod ran; past the deadline, stop the watch to end it.
    while !reader.is_finished() && t0.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
    let running = reader.join().expect("watch reader");
    if running.len() < pods {
        bail!("only {} of {pods} pods ran within {timeout:?}", running.len());
    }
    Ok(Startup {
        from_create: sorted(running.values().copied().collect()),
        per_pod: sorted(running.iter().map(|(name, t)| t - created.get(name).copied().unwrap_or(0.0)).collect()),
        created_last: created.values().copied().fold(0.0, f64::max),
    })
}
