//! `berth-check` run directly on the host: passes for what the host really is and fails, with
//! exit status 1 and `FAIL` lines, for what it is not.

use std::process::Command;

use anyhow::{ensure, Result};
use berth_integration::check::{
    host_namespace_inodes, DeviceExpectation, MountExpectation, NamespaceExpectation, SyscallExpectation,
};
use berth_integration::Expectations;

const CHECK_BIN: &str = env!("CARGO_BIN_EXE_berth-check");

fn run_check(e: &Expectations) -> Result<(i32, String)> {
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("check.json");
    std::fs::write(&path, serde_json::to_vec(e)?)?;
    let out = Command::new(CHECK_BIN).arg(&path).current_dir("/").output()?;
    Ok((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn host_truth() -> Expectations {
    Expectations {
        namespaces: host_namespace_inodes()
            .into_iter()
            .map(|(kind, host_inode)| (kind, NamespaceExpectation { host_inode, shared: true }))
            .collect(),
        // SAFETY: getuid has no preconditions.
        uid: Some(unsafe { libc::getuid() }),
        cwd: Some("/".into()),
        env: vec!["PATH".into()],
        seccomp_mode: Some(0),
        mounts: vec![MountExpectation {
            destination: "/proc".into(),
            fstype: Some("proc".into()),
            ..Default::default()
        }],
        devices: vec![DeviceExpectation {
            path: "/dev/null".into(),
            kind: Some("c".into()),
            major: Some(1),
            minor: Some(3),
            ..Default::default()
        }],
        syscalls: vec![SyscallExpectation { name: "getpid".into(), ..Default::default() }],
        fork_count: Some(3),
        alloc_mb: Some(8),
        ..Default::default()
    }
}

#[test]
fn passes_for_the_host_as_it_is() -> Result<()> {
    let (code, stdout) = run_check(&host_truth())?;
    ensure!(code == 0, "exit {code}:\n{stdout}");
    ensure!(stdout.contains("ok namespace pid") && stdout.contains("ok alloc_mb"), "{stdout}");
    ensure!(!stdout.contains("FAIL"), "{stdout}");
    Ok(())
}

#[test]
fn fails_for_what_the_host_is_not() -> Result<()> {
    let mut e = host_truth();
    e.namespaces.get_mut("pid").expect("pid namespace").shared = false;
    e.cwd = Some("/nowhere".into());
    e.env = vec!["BERTH_CHECK_SURELY_UNSET".into()];
    let (code, stdout) = run_check(&e)?;
    ensure!(code == 1, "exit {code}:\n{stdout}");
    for name in ["namespace pid", "cwd", "env BERTH_CHECK_SURELY_UNSET"] {
        ensure!(stdout.contains(&format!("FAIL {name}: expected")), "{name}:\n{stdout}");
    }
    Ok(())
}

#[test]
fn bad_expectations_exit_2() -> Result<()> {
    let out = Command::new(CHECK_BIN).arg("/nonexistent/check.json").output()?;
    ensure!(out.status.code() == Some(2), "{:?}", out.status);
    Ok(())
}
