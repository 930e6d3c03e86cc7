//! berth-runtime as podman's OCI runtime (Debian's podman 4 through conmon): the same CLI
//! contract runc and crun serve — create/start/state/exec/pause/kill/delete, the console and
//! exit-code plumbing, and podman's own large default seccomp profile.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use berth_integration::{bin_path, Bundle};
use common::text;

struct Podman {
    _tmp: tempfile::TempDir,
    base: Vec<String>,
}

impl Podman {
    fn new() -> Podman {
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root: run it through scripts/test");
        let tmp = tempfile::tempdir().unwrap();
        let p = |s: &str| tmp.path().join(s).display().to_string();
        let base = vec![
            format!("--runtime={}", bin_path("berth-runtime").unwrap().display()),
            format!("--root={}", p("storage")),
            format!("--runroot={}", p("run")),
            "--storage-driver=vfs".into(),
            "--events-backend=file".into(),
            "--cgroup-manager=cgroupfs".into(),
        ];
        let podman = Podman { _tmp: tmp, base };
        let bundle = Bundle::busybox(podman._tmp.path().join("image")).unwrap();
        let tar = podman._tmp.path().join("rootfs.tar");
        let st = Command::new("tar").arg("-C").arg(bundle.rootfs()).arg("-cf").arg(&tar).arg(".").status().unwrap();
        assert!(st.success());
        assert_ok(&podman.run(&["import", tar.to_str().unwrap(), "localhost/berth-busybox:test"]));
        podman
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("podman").args(&self.base).args(args).output().expect("podman (installed by scripts/deps)")
    }
}

fn assert_ok(out: &Output) {
    assert!(out.status.success(), "{}", text(out));
}

/// This host lacks CAP_SYS_RESOURCE: podman's default (raised) ulimits cannot be applied by
/// any runtime, so ask for limits below the current hard ones.
const ULIMITS: [&str; 4] = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"];

#[test]
#[ignore = "needs root and podman"]
fn podman_runs_containers_with_berth_runtime() {
    assert!(Path::new("/usr/bin/podman").exists(), "podman missing: scripts/deps installs it");
    let pm = Podman::new();
    let mut args = vec!["run", "--rm", "--network=none", "--hostname=pm", "--memory=64m"];
    args.extend(ULIMITS);
    args.extend(["localhost/berth-busybox:test", "sh", "-c", "hostname; grep Seccomp: /proc/self/status; cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null; exit 3"]);
    let out = pm.run(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(stdout.contains("pm\n") && stdout.contains("Seccomp:\t2") && stdout.contains("67108864"), "{}", text(&out));

    let mut args = vec!["run", "-d", "--network=none"];
    args.extend(ULIMITS);
    args.extend(["localhost/berth-busybox:test", "sleep", "1000"]);
    let out = pm.run(&args);
    assert_ok(&out);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let exec = pm.run(&["exec", &id, "cat", "/proc/1/cmdline"]);
    assert_ok(&exec);
    assert!(String::from_utf8_lossy(&exec.stdout).starts_with("sleep"), "{}", text(&exec));
    assert_ok(&pm.run(&["pause", &id]));
    let state = pm.run(&["inspect", "--format", "{{.State.Status}}", &id]);
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "paused", "{}", text(&state));
    assert_ok(&pm.run(&["unpause", &id]));
    assert_ok(&pm.run(&["stop", "-t", "1", &id]));
    let state = pm.run(&["inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", &id]);
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "exited 137", "{}", text(&state));
    assert_ok(&pm.run(&["rm", &id]));
}
