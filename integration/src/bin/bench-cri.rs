//! `bench-cri`: pod lifecycle latency and per-pod resident memory of berth-shim against
//! containerd 1.6 + runc (Debian packages), same machine, same CNI conflist (reference bridge +
//! host-local + portmap), same busybox image from a local registry, runs alternating.
//!
//!     scripts/build && target/release/bench-cri --pods 100 --resident 10
//!
//! Everything runs inside a network namespace made for the run (registry, both runtimes, CNI).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use berth_integration::netns::NetNs;
use berth_integration::registry::Registry;
use berth_integration::shim::{ShimOptions, ShimProcess};
use berth_proto::runtime::v1::runtime_service_client::RuntimeServiceClient;
use berth_proto::runtime::v1::*;
use tonic::transport::Channel;

const OPS: [&str; 6] =
    ["RunPodSandbox", "CreateContainer", "StartContainer", "StopContainer", "StopPodSandbox", "RemovePodSandbox"];
const IMAGE: &str = "127.0.0.1:5200/library/busybox:latest";

struct Runtime {
    name: &'static str,
    rt: RuntimeServiceClient<Channel>,
    logs: PathBuf,
    samples: BTreeMap<&'static str, Vec<f64>>,
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn pod_config(name: &str, logs: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

fn container_config() -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata { name: "sleep".into(), attempt: 0 }),
        image: Some(ImageSpec { image: IMAGE.into(), ..Default::default() }),
        command: vec!["sleep".into(), "3600".into()],
        log_path: "sleep.log".into(),
        linux: Some(LinuxContainerConfig::default()),
        ..Default::default()
    }
}

impl Runtime {
    /// Creates a pod with a running container; returns (pod id, per-op milliseconds).
    async fn start_pod(&mut self, name: &str) -> anyhow::Result<(String, [f64; 3])> {
        let config = pod_config(name, &self.logs);
        let t = Instant::now();
        let pod = self
            .rt
            .run_pod_sandbox(RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() })
            .await?
            .into_inner()
            .pod_sandbox_id;
        let run = ms(t);
        let t = Instant::now();
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config()),
            sandbox_config: Some(config),
        };
        let c = self.rt.create_container(req).await?.into_inner().container_id;
        let create = ms(t);
        let t = Instant::now();
        self.rt.start_container(StartContainerRequest { container_id: c }).await?;
        Ok((pod, [run, create, ms(t)]))
    }

    async fn cycle(&mut self, i: usize) -> anyhow::Result<()> {
        let (pod, first) = self.start_pod(&format!("{}-{i}", self.name)).await?;
        let c = self
            .rt
            .list_containers(ListContainersRequest {
                filter: Some(ContainerFilter { pod_sandbox_id: pod.clone(), ..Default::default() }),
            })
            .await?
            .into_inner()
            .containers[0]
            .id
            .clone();
        let t = Instant::now();
        self.rt.stop_container(StopContainerRequest { container_id: c, timeout: 10 }).await?;
        let stop = ms(t);
        let t = Instant::now();
        self.rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
        let stop_pod = ms(t);
        let t = Instant::now();
        self.rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod }).await?;
        let remove = ms(t);
        for (op, v) in OPS.iter().zip(first.iter().chain(&[stop, stop_pod, remove])) {
            self.samples.entry(op).or_default().push(*v);
        }
        Ok(())
    }

    async fn remove_all(&mut self) -> anyhow::Result<()> {
        for p in self.rt.list_pod_sandbox(ListPodSandboxRequest::default()).await?.into_inner().items {
            self.rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: p.id.clone() }).await?;
            self.rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: p.id }).await?;
        }
        Ok(())
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn median(v: &[f64]) -> f64 {
    berth_integration::bench::percentile(v, 50.0)
}

/// Proportional set size of a process, in KiB.
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Processes whose command line contains `needle`, and the direct children of those named `child`.
fn per_pod_processes(needle: &str, child: &str) -> Vec<u32> {
    let mut parents = Vec::new();
    let mut all = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0);
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let cmd: Vec<u8> = cmd.iter().map(|&b| if b == 0 { b' ' } else { b }).collect();
        if String::from_utf8_lossy(&cmd).contains(needle) {
            parents.push(pid);
        }
        all.push((pid, ppid, comm.trim().to_string()));
    }
    let children = all.iter().filter(|(_, ppid, comm)| parents.contains(ppid) && comm == child).map(|(pid, _, _)| *pid);
    let mut out = parents.clone();
    out.extend(children);
    out
}

async fn resident(r: &mut Runtime, pods: usize, needle: &str) -> anyhow::Result<(f64, usize)> {
    for i in 0..pods {
        r.start_pod(&format!("{}-res-{i}", r.name)).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let procs = per_pod_processes(needle, "pause");
    let total: u64 = procs.iter().map(|p| pss_kib(*p)).sum();
    r.remove_all().await?;
    Ok((total as f64 / pods as f64 / 1024.0, procs.len()))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let pods = arg("--pods", 100);
    let res_pods = arg("--resident", 10);
    // BERTH_KEEP_TMP=1 keeps the runtimes' logs and state for reading.
    let tmp = tempfile::Builder::new()
        .prefix("bc")
        .disable_cleanup(std::env::var_os("BERTH_KEEP_TMP").is_some())
        .tempdir_in("/tmp")?;
    let ns = NetNs::new("bench-cri")?;
    let registry = Registry::start(&ns, &tmp.path().join("reg"), 5200)?;
    registry.push_busybox(&ns, "library/busybox:latest", &["sh"])?;
    registry.push_pause(&ns, "library/pause:3.9", &berth_integration::bin_path("berth-pause")?)?;

    let shim_dir = tmp.path().join("s");
    ShimProcess::configure(
        &shim_dir,
        &ShimOptions { name: "bench", registry: &registry.addr, subnet: "10.90.0.0/16", with_cni: true },
    )?;
    let conflist = std::fs::read_to_string(shim_dir.join("net.d/10-berth-test.conflist"))?
        .replace("bt-bench", "bc-ctr")
        .replace("10.90.0.0/16", "10.91.0.0/16")
        .replace(&shim_dir.join("ipam").display().to_string(), &tmp.path().join("c/ipam").display().to_string());
    let shim = ShimProcess::start(&ns, &shim_dir)?;
    let (mut ctrd, ctrd_sock) = berth_integration::containerd::start(
        &ns,
        &tmp.path().join("c"),
        &conflist,
        std::path::Path::new("/usr/lib/cni"),
        "127.0.0.1:5200/library/pause:3.9",
        "127.0.0.1:5200",
    )?;

    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut runtimes = Vec::new();
    for (name, sock) in [("berth-shim", shim.socket.clone()), ("containerd", ctrd_sock.clone())] {
        let (rt, mut img) = berth_integration::cri::connect(&sock).await?;
        img.pull_image(PullImageRequest {
            image: Some(ImageSpec { image: IMAGE.into(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .with_context(|| format!("{name}: pull"))?;
        runtimes.push(Runtime { name, rt, logs: logs.clone(), samples: BTreeMap::new() });
    }
    // Warm-up (first pod pays for snapshot and cache set-up), then alternate.
    for r in runtimes.iter_mut() {
        r.cycle(usize::MAX).await.with_context(|| format!("{}: warm-up", r.name))?;
        r.samples.clear();
    }
    for i in 0..pods {
        let order: [usize; 2] = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for j in order {
            let r = &mut runtimes[j];
            r.cycle(i).await.with_context(|| format!("{} cycle {i}", r.name))?;
        }
    }
    let berth_needle = shim_dir.join("run/pods").display().to_string();
    let (berth_pss, berth_procs) = resident(&mut runtimes[0], res_pods, &berth_needle).await?;
    let (ctrd_pss, ctrd_procs) =
        resident(&mut runtimes[1], res_pods, &format!("-address {}", ctrd_sock.display())).await?;

    println!("bench-cri: {pods} pods each, alternating; medians in ms (p90)");
    println!("| op | berth-shim | containerd 1.6 + runc | ratio |");
    println!("|---|---|---|---|");
    let mut sums = [0.0f64; 2];
    for op in OPS {
        let b = &runtimes[0].samples[op];
        let c = &runtimes[1].samples[op];
        let p90 = |v: &[f64]| berth_integration::bench::percentile(v, 90.0);
        println!(
            "| {op} | {:.1} ({:.1}) | {:.1} ({:.1}) | {:.2}× |",
            median(b),
            p90(b),
            median(c),
            p90(c),
            median(b) / median(c)
        );
        if ["RunPodSandbox", "CreateContainer", "StartContainer"].contains(&op) {
            sums[0] += median(b);
            sums[1] += median(c);
        }
    }
    println!("| Run+Create+Start | {:.1} | {:.1} | {:.2}× |", sums[0], sums[1], sums[0] / sums[1]);
    println!("resident per running pod (PSS, {res_pods} pods, runtime processes only): berth-monitor+pause {berth_pss:.2} MiB ({berth_procs} processes), containerd-shim+pause {ctrd_pss:.2} MiB ({ctrd_procs} processes)");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(ctrd.id() as i32, libc::SIGTERM) };
    let _ = ctrd.wait();
    drop(shim);
    Ok(())
}
