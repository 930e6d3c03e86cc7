//! `bench-runtime`: times `run` of a `/bin/true` container under berth-runtime, crun and runc.
//!
//! All runtimes share one busybox bundle and run in the harness's own private mount namespace
//! (with `/sys/fs/cgroup/unified` detached, which Debian's crun 1.8 needs on hybrid hosts).
//! Each run is a direct child of the harness with a fresh `--root` and container id, reaped with
//! `wait4`: wall time is spawn to reap; CPU time and peak RSS come from the child's rusage, which
//! covers the runtime and every descendant it reaped (the container process included).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context, Result};
use berth_integration::bench::{measure, render_table, report_json, RuntimeResult, Sample};
use berth_integration::bundle::HOST_BUSYBOX;
use berth_integration::{bin_path, detach_cgroup2_unified, find_in_path, Bundle};
use serde_json::json;

const USAGE: &str = "usage: bench-runtime [--iterations N] [--warmup N] \
[--runtimes berth,crun,runc] [--json] [--work-dir DIR] [--keep]

Runs `RUNTIME --root FRESH run --bundle B ID` for a /bin/true busybox bundle, N times per
runtime in rotating order, and reports wall time, CPU time and peak RSS per run.
berth-runtime is found in target/runtime (scripts/build), target/release, then target/debug (override: BERTH_BIN_DIR);
crun and runc on PATH (skipped if missing).";

/// Consecutive failures after which a runtime is dropped from the rest of the benchmark.
const MAX_CONSECUTIVE_FAILURES: u32 = 3;

#[derive(Debug)]
struct Options {
    iterations: u32,
    warmup: u32,
    runtimes: Vec<String>,
    json: bool,
    work_dir: Option<PathBuf>,
    keep: bool,
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut o = Options {
        iterations: 100,
        warmup: 3,
        runtimes: vec!["berth".into(), "crun".into(), "runc".into()],
        json: false,
        work_dir: None,
        keep: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--iterations" | "-n" => o.iterations = value(arg)?.parse().context("--iterations")?,
            "--warmup" => o.warmup = value(arg)?.parse().context("--warmup")?,
            "--runtimes" => {
                o.runtimes.clear();
                for name in value(arg)?.split(',').map(str::trim) {
                    let name = if name == "berth-runtime" { "berth" } else { name };
                    if !o.runtimes.iter().any(|r| r == name) {
                        o.runtimes.push(name.to_string());
                    }
                }
            }
            "--json" => o.json = true,
            "--work-dir" => o.work_dir = Some(PathBuf::from(value(arg)?)),
            "--keep" => o.keep = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if o.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    for name in &o.runtimes {
        if !matches!(name.as_str(), "berth" | "crun" | "runc") {
            bail!("unknown runtime {name:?}: choose from berth, crun, runc");
        }
    }
    Ok(o)
}

/// A runtime under test.
struct Runtime {
    result: RuntimeResult,
    consecutive_failures: u32,
}

fn locate_runtimes(names: &[String]) -> Result<Vec<Runtime>> {
    let mut found = Vec::new();
    for name in names {
        let path = if name == "berth" {
            bin_path("berth-runtime").context("berth-runtime is required")?
        } else {
            match find_in_path(name) {
                Some(p) => p,
                None => {
                    eprintln!("skipping {name}: not installed (not found on PATH)");
                    continue;
                }
            }
        };
        let display = if name == "berth" { "berth-runtime" } else { name };
        found.push(Runtime {
            result: RuntimeResult { name: display.to_string(), version: version_of(&path), path, ..Default::default() },
            consecutive_failures: 0,
        });
    }
    if found.is_empty() {
        bail!("no runtime to benchmark");
    }
    Ok(found)
}

fn version_of(path: &Path) -> String {
    Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown version".into())
}

/// Runs one container; on failure returns a description including the runtime's output.
fn run_once(rt: &Runtime, bundle: &Path, work: &Path, tag: &str) -> Result<Sample, String> {
    let id = format!("bench-{}-{}-{tag}", rt.result.name, std::process::id());
    let root = work.join("state").join(&id);
    fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    let log = work.join("logs").join(format!("{id}.log"));
    let args =
        ["--root".as_ref(), root.as_os_str(), "run".as_ref(), "--bundle".as_ref(), bundle.as_os_str(), id.as_ref()];
    let result = measure(&rt.result.path, &args, &log);
    // Clean up outside the timed region: a container left behind is force-deleted.
    if fs::read_dir(&root).map(|mut d| d.next().is_some()).unwrap_or(false) {
        let _ = Command::new(&rt.result.path)
            .arg("--root")
            .arg(&root)
            .args(["delete", "--force", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = fs::remove_dir_all(&root);
    match result {
        Ok(sample) => {
            let _ = fs::remove_file(&log);
            Ok(sample)
        }
        Err(err) => {
            let mut why = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                why = format!("{why}: {cause}");
                source = cause.source();
            }
            let output = fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = output.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(format!("{why}; output: {}", tail.join(" | ")))
        }
    }
}

fn record(rt: &mut Runtime, result: Result<Sample, String>, timed: bool, label: &str) {
    match result {
        Ok(sample) => {
            rt.consecutive_failures = 0;
            if timed {
                rt.result.samples.push(sample);
            }
        }
        Err(why) => {
            eprintln!("{} run {label} FAILED: {why}", rt.result.name);
            rt.result.failures.push(format!("{label}: {why}"));
            rt.consecutive_failures += 1;
            if rt.consecutive_failures == MAX_CONSECUTIVE_FAILURES {
                eprintln!("{}: {MAX_CONSECUTIVE_FAILURES} failures in a row, dropping it", rt.result.name);
            }
        }
    }
}

/// Exit status the preflight container must report.
const PREFLIGHT_EXIT: i32 = 7;
const PREFLIGHT_MARKER: &str = "berth-bench-preflight";

/// Writes a bundle sharing `rootfs` whose process prints a marker and exits with
/// `PREFLIGHT_EXIT`, so a runtime that exits 0 without running anything is caught.
fn preflight_bundle(work: &Path, rootfs: &Path) -> Result<PathBuf> {
    let dir = work.join("preflight");
    fs::create_dir_all(&dir)?;
    let script = format!("echo {PREFLIGHT_MARKER}; exit {PREFLIGHT_EXIT}");
    let mut spec = serde_json::to_value(Bundle::default_spec(&["/bin/sh", "-c", &script]))?;
    spec["root"]["path"] = json!(rootfs);
    fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&spec)?)?;
    Ok(dir)
}

/// Runs the preflight container once (untimed); marks the runtime failed if it misbehaves.
fn preflight(rt: &mut Runtime, bundle: &Path, work: &Path) {
    let id = format!("bench-{}-{}-preflight", rt.result.name, std::process::id());
    let root = work.join("state").join(&id);
    let output = Command::new(&rt.result.path)
        .arg("--root")
        .arg(&root)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .output();
    let _ = fs::remove_dir_all(&root);
    let problem = match output {
        Err(e) => Some(format!("spawning: {e}")),
        Ok(out) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let ran = stdout.contains(PREFLIGHT_MARKER);
            let code_ok = out.status.code() == Some(PREFLIGHT_EXIT);
            (!ran || !code_ok).then(|| {
                format!(
                    "expected output {PREFLIGHT_MARKER:?} and exit {PREFLIGHT_EXIT}, got {} and {}; stderr: {}",
                    if ran { "the marker" } else { "no marker" },
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            })
        }
    };
    if let Some(why) = problem {
        eprintln!("{}: preflight FAILED, not timing it: {why}", rt.result.name);
        rt.result.failures.push(format!("preflight: {why}"));
        rt.consecutive_failures = MAX_CONSECUTIVE_FAILURES;
    }
}

/// The ru_maxrss a trivial static program reports through the same spawn path: the floor below
/// which peak RSS numbers say nothing about the runtime.
fn rss_floor(work: &Path) -> Option<u64> {
    let log = work.join("logs").join("floor.log");
    (0..3).filter_map(|_| measure(Path::new(HOST_BUSYBOX), &["true".as_ref()], &log).ok()).map(|s| s.maxrss_kib).max()
}

fn benchmark(runtimes: &mut [Runtime], o: &Options, bundle: &Path, work: &Path) {
    let n = runtimes.len();
    for round in 0..o.warmup + o.iterations {
        let timed = round >= o.warmup;
        let label = if timed { format!("{}", round - o.warmup) } else { format!("warmup{round}") };
        for k in 0..n {
            let rt = &mut runtimes[(round as usize + k) % n];
            if rt.consecutive_failures >= MAX_CONSECUTIVE_FAILURES {
                continue;
            }
            let result = run_once(rt, bundle, work, &label);
            record(rt, result, timed, &label);
        }
    }
}

fn make_work_dir(o: &Options) -> Result<PathBuf> {
    let dir =
        o.work_dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("berth-bench-{}", std::process::id())));
    for sub in ["state", "logs"] {
        fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(dir)
}

fn run(o: &Options) -> Result<bool> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench-runtime must run as root");
    }
    let mut runtimes = locate_runtimes(&o.runtimes)?;
    let detached = detach_cgroup2_unified().context("preparing the mount namespace")?;
    if detached && !o.json {
        println!("private mount namespace: detached /sys/fs/cgroup/unified");
    }
    let work = make_work_dir(o)?;
    let bundle = Bundle::busybox(work.join("bundle")).context("building the bundle")?;
    bundle.write_spec(&Bundle::default_spec(&["/bin/true"]))?;
    let preflight_dir = preflight_bundle(&work, bundle.rootfs())?;
    for rt in runtimes.iter_mut() {
        preflight(rt, &preflight_dir, &work);
    }
    let floor = rss_floor(&work);
    benchmark(&mut runtimes, o, bundle.dir(), &work);
    let results: Vec<RuntimeResult> = runtimes.into_iter().map(|rt| rt.result).collect();
    let meta = json!({
        "iterations": o.iterations, "warmup": o.warmup, "command": "/bin/true",
        "bundle": bundle.dir(), "rss_floor_kib": floor,
    });
    let report = report_json(&results, "berth-runtime", meta);
    if o.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{} timed runs per runtime (+{} warmup) of /bin/true, rotating order", o.iterations, o.warmup);
        print!("{}", render_table(&report));
        if let Some(floor) = floor {
            println!("(ru_maxrss floor of this spawn path, static busybox true: {floor} KiB)");
        }
    }
    let failed = results.iter().any(|r| !r.failures.is_empty() || r.samples.is_empty());
    if o.keep {
        eprintln!("kept {}", work.display());
    } else {
        let _ = fs::remove_dir_all(&work);
    }
    Ok(!failed)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = parse_args(&args).and_then(|o| run(&o));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("bench-runtime: some runs failed (see above); they are not in the timings");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("bench-runtime: {err:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_options() {
        let o = parse_args(&args("--iterations 7 --runtimes crun,runc,crun --json")).unwrap();
        assert_eq!(o.iterations, 7);
        assert_eq!(o.runtimes, ["crun", "runc"]);
        assert!(o.json);
        let d = parse_args(&[]).unwrap();
        assert_eq!((d.iterations, d.runtimes.len()), (100, 3));
        assert!(parse_args(&args("--runtimes youki")).is_err());
        let b = parse_args(&args("--runtimes berth-runtime,runc")).unwrap();
        assert_eq!(b.runtimes, ["berth", "runc"]);
        assert!(parse_args(&args("--iterations")).is_err());
        assert!(parse_args(&args("--iterations 0")).is_err());
    }
}
