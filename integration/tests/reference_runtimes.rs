//! Root-only checks of the test tooling against the reference runtimes: `berth-check` inside crun
//! and runc containers built with `Bundle` must pass `Expectations::from_spec`, and must catch
//! wrong expectations, OOM kills and pids limits.
//!
//! Run with `cargo test -p berth-integration --test reference_runtimes -- --ignored` as root.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};
use berth_integration::{find_in_path, Bundle, Expectations};
use oci_spec::runtime::Spec;

const CHECK_BIN: &str = env!("CARGO_BIN_EXE_berth-check");

/// Runs `runtime run` in a private mount namespace without /sys/fs/cgroup/unified (crun 1.8
/// refuses hybrid hosts otherwise).
fn run_container(runtime: &str, bundle: &Bundle, id: &str) -> Result<Output> {
    let runtime = find_in_path(runtime).with_context(|| format!("{runtime} not installed"))?;
    let root = bundle.dir().join("state");
    let script = "umount -l /sys/fs/cgroup/unified 2>/dev/null; exec \"$@\"";
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(&runtime)
        .arg("--root")
        .arg(&root)
        .args(["run", "--bundle"])
        .arg(bundle.dir())
        .arg(id)
        .output()
        .context("spawning unshare")
}

fn check_bundle(dir: &Path, spec: &Spec, expectations: &Expectations) -> Result<Bundle> {
    let bundle = Bundle::busybox(dir)?;
    bundle.add_binary(CHECK_BIN, "/bin/berth-check")?;
    bundle.add_json("/check.json", expectations)?;
    bundle.write_spec(spec)?;
    Ok(bundle)
}

fn checker_spec() -> Spec {
    Bundle::default_spec(&["/bin/berth-check", "/check.json"])
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn default_spec_passes(runtime: &str) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let spec = checker_spec();
    let mut expectations = Expectations::from_spec(&spec)?;
    expectations.syscalls.push(serde_json::from_str(r#"{"name": "getcwd"}"#)?);
    let bundle = check_bundle(tmp.path(), &spec, &expectations)?;
    let out = run_container(runtime, &bundle, &format!("check-{runtime}"))?;
    ensure!(out.status.success(), "{}", show(&out));
    ensure!(!String::from_utf8_lossy(&out.stdout).contains("FAIL"), "{}", show(&out));
    Ok(())
}

#[test]
#[ignore = "needs root and crun"]
fn default_spec_passes_under_crun() -> Result<()> {
    default_spec_passes("crun")
}

#[test]
#[ignore = "needs root and runc"]
fn default_spec_passes_under_runc() -> Result<()> {
    default_spec_passes("runc")
}

#[test]
#[ignore = "needs root and crun"]
fn wrong_expectations_fail() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let spec = checker_spec();
    let mut expectations = Expectations::from_spec(&spec)?;
    expectations.hostname = Some("not-berth".into());
    expectations.rootfs_readonly = Some(false);
    expectations.namespaces.get_mut("pid").context("pid ns")?.shared = true;
    let bundle = check_bundle(tmp.path(), &spec, &expectations)?;
    let out = run_container("crun", &bundle, "check-wrong")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.code() == Some(1), "{}", show(&out));
    for name in ["hostname", "rootfs_readonly", "namespace pid"] {
        ensure!(stdout.contains(&format!("FAIL {name}:")), "{name}: {}", show(&out));
    }
    Ok(())
}

fn limited_spec(resources: serde_json::Value) -> Result<Spec> {
    let mut value = serde_json::to_value(checker_spec())?;
    value["linux"]["resources"] = resources;
    Ok(serde_json::from_value(value)?)
}

fn memory_limit_oom_kills(runtime: &str) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let spec = limited_spec(serde_json::json!({"memory": {"limit": 64 << 20, "swap": 64 << 20}}))?;
    let mut expectations = Expectations::from_spec(&spec)?;
    expectations.alloc_mb = Some(256);
    let bundle = check_bundle(tmp.path(), &spec, &expectations)?;
    let out = run_container(runtime, &bundle, &format!("oom-{runtime}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(stdout.contains("ok cgroup memory.max|"), "{}", show(&out));
    ensure!(!stdout.contains("alloc_mb"), "allocation survived: {}", show(&out));
    ensure!(out.status.code() == Some(137), "expected SIGKILL (137): {}", show(&out));
    Ok(())
}

#[test]
#[ignore = "needs root and crun"]
fn memory_limit_oom_kills_under_crun() -> Result<()> {
    memory_limit_oom_kills("crun")
}

#[test]
#[ignore = "needs root and runc"]
fn memory_limit_oom_kills_under_runc() -> Result<()> {
    memory_limit_oom_kills("runc")
}

#[test]
#[ignore = "needs root and runc"]
fn pids_limit_stops_forks() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let spec = limited_spec(serde_json::json!({"pids": {"limit": 10}}))?;
    let mut expectations = Expectations::from_spec(&spec)?;
    expectations.fork_count = Some(30);
    expectations.fork_max_ok = Some(9);
    let bundle = check_bundle(tmp.path(), &spec, &expectations)?;
    let out = run_container("runc", &bundle, "pids-runc")?;
    ensure!(out.status.success(), "{}", show(&out));
    ensure!(String::from_utf8_lossy(&out.stdout).contains("ok fork_count"), "{}", show(&out));
    Ok(())
}
