//! `berth down`: stops the node `berth up` runs from a data dir — by asking the foreground
//! `berth up` to stop (it removes its pods and sweeps), then by stopping whatever its pid files
//! still name and sweeping again, so a crashed `berth up` is cleaned up too. `--purge` also
//! deletes the data dir (store, images, PKI, logs).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::daemon::{alive, pid_from_file, terminate};
use crate::layout::Layout;
use crate::teardown::{self, Made};

/// What `berth up` recorded in DATA/etc/up.json, or the defaults.
pub fn made_of(data: &Path) -> Made {
    std::fs::read(data.join("etc/up.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_else(|| Made {
        run_dir: PathBuf::from("/run/berth"),
        cgroup_root: "/berth".into(),
        bridge: "berth0".into(),
        vxlan_device: None,
    })
}

pub async fn run(data: &Path, purge: bool) -> anyhow::Result<()> {
    let made = made_of(data);
    let layout = Layout::new(data, &made.run_dir, &made.cgroup_root);
    if let Some(pid) = pid_from_file(&layout.up_pid(), "berth") {
        eprintln!("berth: asking berth up (pid {pid}) to stop");
        // SAFETY: the pid file names a live `berth` process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(120);
        while alive(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if alive(pid) {
            eprintln!("berth: berth up did not stop in 120s; killing it");
            terminate(pid, Duration::from_secs(1));
        }
    }
    let pid = |name: &str, expect: &str| pid_from_file(&layout.pid_dir().join(format!("{name}.pid")), expect);
    if let Some(p) = pid("agent", "berth-agent") {
        terminate(p, Duration::from_secs(10));
    }
    // Whoever runs the shim (berth up, systemd): while its socket is there, ask it.
    if layout.socket().exists() {
        match teardown::remove_pods(&layout.socket()).await {
            Ok(n) => eprintln!("berth: removed {n} pod sandbox(es)"),
            Err(e) => eprintln!("berth: removing pods through CRI: {e:#}"),
        }
    }
    for (name, expect) in [("shim", "berth-shim"), ("registry", "berth"), ("control", "berth-control")] {
        if let Some(p) = pid(name, expect) {
            terminate(p, Duration::from_secs(10));
        }
    }
    let errors = teardown::sweep(&layout, &made);
    for e in &errors {
        eprintln!("berth: cleanup: {e}");
    }
    if purge {
        if !teardown::mounts_under(&[data]).is_empty() {
            bail!("not purging {}: mounts are left below it", data.display());
        }
        match std::fs::remove_dir_all(data) {
            Ok(()) => eprintln!("berth: deleted {}", data.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("deleting {}: {e}", data.display()),
        }
    }
    if !errors.is_empty() {
        bail!("{} cleanup error(s)", errors.len());
    }
    eprintln!("berth: down{}", if purge { " (data deleted)" } else { " (data kept)" });
    Ok(())
}
