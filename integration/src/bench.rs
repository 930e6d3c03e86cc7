//! Measuring runtime invocations (a child reaped with `wait4`) and summarising the samples into
//! the report `bench-runtime` prints.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{json, Value};

/// One successful run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// From just before spawning to the return of `wait4`.
    pub wall_ms: f64,
    /// `ru_utime + ru_stime` of the child and its reaped descendants.
    pub cpu_ms: f64,
    /// `ru_maxrss`: the largest peak RSS among the child and its reaped descendants.
    pub maxrss_kib: u64,
}

/// Why a measured run did not produce a sample.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot create log {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot spawn {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("wait4 failed")]
    Wait(#[source] io::Error),
    #[error("killed by signal {0}")]
    Signal(i32),
    #[error("exit status {0}")]
    Exit(i32),
}

/// Spawns `program args` with stdout and stderr to `log`, reaps it with `wait4` and returns
/// its sample; a non-zero exit or a signal is an error, never a sample.
///
/// The child is forked, not vforked: at `execve` the kernel folds the pre-exec address space's
/// RSS into the child's `ru_maxrss`, which for vfork is the harness's whole resident set and
/// for fork only the anonymous pages it copied.
pub fn measure(program: &Path, args: &[&OsStr], log: &Path) -> Result<Sample, RunError> {
    let log_err = |source| RunError::Log { path: log.to_path_buf(), source };
    let out = fs::File::create(log).map_err(log_err)?;
    let err = out.try_clone().map_err(log_err)?;
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: the hook does nothing, so it is trivially async-signal-safe; its presence makes
    // std use fork + exec instead of posix_spawn.
    unsafe { command.pre_exec(|| Ok(())) };
    let start = Instant::now();
    let child = command.spawn().map_err(|source| RunError::Spawn { program: program.to_path_buf(), source })?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain old data; all-zero is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = loop {
        // SAFETY: pid is our own unreaped child; status and usage are writable.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        break rc;
    };
    let wall = start.elapsed();
    // Dropping a Child neither waits nor kills; the pid was reaped above.
    drop(child);
    if reaped != pid {
        return Err(RunError::Wait(io::Error::last_os_error()));
    }
    if libc::WIFSIGNALED(status) {
        return Err(RunError::Signal(libc::WTERMSIG(status)));
    }
    if libc::WEXITSTATUS(status) != 0 {
        return Err(RunError::Exit(libc::WEXITSTATUS(status)));
    }
    let tv_ms = |tv: libc::timeval| tv.tv_sec as f64 * 1e3 + tv.tv_usec as f64 / 1e3;
    Ok(Sample {
        wall_ms: wall.as_secs_f64() * 1e3,
        cpu_ms: tv_ms(usage.ru_utime) + tv_ms(usage.ru_stime),
        maxrss_kib: usage.ru_maxrss as u64,
    })
}

/// Nearest-rank percentile (`p` in 0..=100) of an unsorted slice; NaN when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The statistics reported per runtime.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub wall_median: f64,
    pub wall_p90: f64,
    pub cpu_median: f64,
    pub rss_median: f64,
    pub rss_max: f64,
}

pub fn summarize(samples: &[Sample]) -> Summary {
    let col = |f: fn(&Sample) -> f64| samples.iter().map(f).collect::<Vec<_>>();
    let wall = col(|s| s.wall_ms);
    let rss = col(|s| s.maxrss_kib as f64);
    Summary {
        wall_median: percentile(&wall, 50.0),
        wall_p90: percentile(&wall, 90.0),
        cpu_median: percentile(&col(|s| s.cpu_ms), 50.0),
        rss_median: percentile(&rss, 50.0),
        rss_max: percentile(&rss, 100.0),
    }
}

/// Everything measured for one runtime.
#[derive(Debug, Clone, Default)]
pub struct RuntimeResult {
    pub name: String,
    pub path: PathBuf,
    pub version: String,
    pub samples: Vec<Sample>,
    pub failures: Vec<String>,
}

/// The machine-readable report: `meta` fields plus `runtimes` and `ratios` (`<base>/<other>` for
/// median wall, CPU and peak RSS, where `base` names the runtime under test).
pub fn report_json(results: &[RuntimeResult], base: &str, meta: Value) -> Value {
    let summaries: Vec<Option<Summary>> =
        results.iter().map(|r| (!r.samples.is_empty()).then(|| summarize(&r.samples))).collect();
    let runtimes: Vec<Value> = results
        .iter()
        .zip(&summaries)
        .map(|(r, s)| {
            json!({
                "name": r.name, "path": r.path, "version": r.version,
                "runs": r.samples.len(), "failures": r.failures,
                "wall_ms": s.map(|s| json!({"median": s.wall_median, "p90": s.wall_p90})),
                "cpu_ms": s.map(|s| json!({"median": s.cpu_median})),
                "maxrss_kib": s.map(|s| json!({
                    "median": s.rss_median as u64, "max": s.rss_max as u64
                })),
            })
        })
        .collect();
    let mut ratios = serde_json::Map::new();
    let base_summary = results.iter().zip(&summaries).find(|(r, _)| r.name == base);
    if let Some((_, Some(b))) = base_summary {
        for (r, s) in results.iter().zip(&summaries) {
            let Some(s) = s.filter(|_| r.name != base) else {
                continue;
            };
            let short = base.split('-').next().unwrap_or(base);
            ratios.insert(
                format!("{short}/{}", r.name),
                json!({
                    "wall_median": b.wall_median / s.wall_median,
                    "cpu_median": b.cpu_median / s.cpu_median,
                    "maxrss_median": b.rss_median / s.rss_median,
                }),
            );
        }
    }
    let mut report = meta;
    report["runtimes"] = Value::Array(runtimes);
    report["ratios"] = Value::Object(ratios);
    report
}

/// The human-readable table for a [`report_json`] report.
pub fn render_table(report: &Value) -> String {
    let mut out = String::new();
    let num = |v: &Value| v.as_f64().map(|f| format!("{f:.2}")).unwrap_or_else(|| "-".into());
    let kib = |v: &Value| v.as_f64().map(|f| format!("{f:.0}")).unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "{:<14} {:>5} {:>5} {:>9} {:>9} {:>9} {:>12} {:>12}",
        "runtime", "runs", "fail", "wall p50", "wall p90", "cpu p50", "rss p50 KiB", "rss max KiB"
    );
    let runtimes = report["runtimes"].as_array().cloned().unwrap_or_default();
    for rt in &runtimes {
        let _ = writeln!(
            out,
            "{:<14} {:>5} {:>5} {:>9} {:>9} {:>9} {:>12} {:>12}",
            rt["name"].as_str().unwrap_or("?"),
            rt["runs"],
            rt["failures"].as_array().map_or(0, Vec::len),
            num(&rt["wall_ms"]["median"]),
            num(&rt["wall_ms"]["p90"]),
            num(&rt["cpu_ms"]["median"]),
            kib(&rt["maxrss_kib"]["median"]),
            kib(&rt["maxrss_kib"]["max"]),
        );
    }
    let versions: Vec<&str> = runtimes.iter().filter_map(|rt| rt["version"].as_str()).collect();
    let _ = writeln!(out, "(times in ms; {})", versions.join("; "));
    for (name, r) in report["ratios"].as_object().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{name}: wall {}x, cpu {}x, peak rss {}x",
            num(&r["wall_median"]),
            num(&r["cpu_median"]),
            num(&r["maxrss_median"])
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(wall_ms: f64, cpu_ms: f64, maxrss_kib: u64) -> Sample {
        Sample { wall_ms, cpu_ms, maxrss_kib }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 5.0);
        assert_eq!(percentile(&v, 90.0), 9.0);
        assert_eq!(percentile(&v, 100.0), 10.0);
        assert_eq!(percentile(&[3.0], 90.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn measures_children_and_rejects_failures() {
        let s = measure(Path::new("/bin/true"), &[], Path::new("/dev/null")).unwrap();
        assert!(s.wall_ms > 0.0 && s.maxrss_kib > 0);
        let err = measure(Path::new("/bin/false"), &[], Path::new("/dev/null")).unwrap_err();
        assert_eq!(err.to_string(), "exit status 1");
        let args = ["-c".as_ref(), "kill -9 $$".as_ref()];
        let err = measure(Path::new("/bin/sh"), &args, Path::new("/dev/null")).unwrap_err();
        assert!(matches!(err, RunError::Signal(9)), "{err}");
    }

    #[test]
    fn report_has_summaries_and_ratios() {
        let results = vec![
            RuntimeResult {
                name: "berth-runtime".into(),
                samples: vec![sample(2.0, 1.0, 1000), sample(4.0, 3.0, 3000)],
                ..Default::default()
            },
            RuntimeResult { name: "crun".into(), samples: vec![sample(10.0, 5.0, 2000)], ..Default::default() },
            RuntimeResult { name: "runc".into(), failures: vec!["0: exit status 1".into()], ..Default::default() },
        ];
        let report = report_json(&results, "berth-runtime", json!({"iterations": 2}));
        assert_eq!(report["iterations"], 2);
        assert_eq!(report["runtimes"][0]["wall_ms"]["median"], 2.0);
        assert_eq!(report["runtimes"][0]["maxrss_kib"]["max"], 3000);
        assert_eq!(report["runtimes"][2]["wall_ms"], Value::Null);
        assert_eq!(report["ratios"]["berth/crun"]["wall_median"], 0.2);
        assert!(report["ratios"].get("berth/runc").is_none());
        let table = render_table(&report);
        assert!(table.contains("berth/crun: wall 0.20x"), "{table}");
        assert!(table.lines().nth(3).unwrap().starts_with("runc"), "{table}");
    }
}
