//! Taking a node apart: its pods through CRI (so the shim kills containers and runs CNI DEL),
//! then a best-effort sweep of whatever is left — processes, mounts, links, nft tables, cgroups,
//! per-boot files — that reports every failure and never stops half-way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_agent::cri::{GrpcRuntime, Runtime};
use berth_runtime::cgroups::unescape;
use serde::{Deserialize, Serialize};

use crate::layout::Layout;

/// What `berth up` made that is not named by the layout alone; kept in DATA/etc/up.json.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Made {
    pub run_dir: PathBuf,
    pub cgroup_root: String,
    pub bridge: String,
    pub vxlan_device: Option<String>,
}

/// The nft tables Berth's CNI plugins create (ipMasq, macspoofchk, portmap).
pub const NFT_TABLES: &[(&str, &str)] =
    &[("inet", "berth-masq"), ("inet", "berth-portmap"), ("bridge", "berth-macspoof")];

/// Stops and removes every pod sandbox the shim at `socket` knows. Returns how many.
pub async fn remove_pods(socket: &Path) -> anyhow::Result<usize> {
    let rt = tokio::time::timeout(Duration::from_secs(5), GrpcRuntime::connect(socket)).await??;
    let pods = rt.list_pod_sandboxes(HashMap::new()).await?;
    let mut errors = Vec::new();
    for p in &pods {
        if let Err(e) = rt.stop_pod_sandbox(&p.id).await {
            errors.push(format!("stopping pod {}: {e}", p.id));
        }
        if let Err(e) = rt.remove_pod_sandbox(&p.id).await {
            errors.push(format!("removing pod {}: {e}", p.id));
        }
    }
    if !errors.is_empty() {
        anyhow::bail!("{}", errors.join("; "));
    }
    Ok(pods.len())
}

/// Removes what is left of the node: returns the failures (empty: clean).
pub fn sweep(layout: &Layout, made: &Made) -> Vec<String> {
    let mut errors = Vec::new();
    kill_leftovers(layout, &mut errors);
    unmount_under(&[&layout.run, &layout.data], &mut errors);
    delete_links(made, &mut errors);
    for (family, table) in NFT_TABLES {
        run_quiet(
            Command::new("nft").args(["delete", "table", family, table]),
            &["No such file", "does not exist"],
            &mut errors,
        );
    }
    remove_cgroups(&made.cgroup_root, &mut errors);
    for p in
        [layout.shim_run(), layout.cni_state(), layout.pid_dir(), layout.socket(), layout.peers_file(), layout.up_pid()]
    {
        let r = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        if let Err(e) = r.or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) }) {
            errors.push(format!("removing {}: {e}", p.display()));
        }
    }
    let _ = std::fs::remove_dir(&layout.run);
    errors
}

/// Processes started for this node: berth-monitor / berth-pause (their command lines name the
/// run dir) and containers (in a cgroup under the node's root).
fn kill_leftovers(layout: &Layout, errors: &mut Vec<String>) {
    let run = layout.run.to_string_lossy().to_string();
    let me = std::process::id() as i32;
    for _ in 0..3 {
        let pids: Vec<i32> = proc_pids()
            .into_iter()
            .filter(|&pid| pid != me && (cmdline_mentions(pid, &run) || in_cgroup(pid, &layout.cgroup_root)))
            .collect();
        if pids.is_empty() {
            return;
        }
        for pid in &pids {
            // SAFETY: SIGKILL to processes of this node (see the filter above).
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let left: Vec<i32> = proc_pids()
        .into_iter()
        .filter(|&pid| {
            pid != me
                && crate::daemon::alive(pid)
                && (cmdline_mentions(pid, &run) || in_cgroup(pid, &layout.cgroup_root))
        })
        .collect();
    if !left.is_empty() {
        errors.push(format!("processes still running: {left:?}"));
    }
}

fn proc_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Whether `pid`, in this mount namespace (the run dir means nothing elsewhere), has an
/// argument below `needle`.
fn cmdline_mentions(pid: i32, needle: &str) -> bool {
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).ok();
    if ns(&pid.to_string()).is_none() || ns(&pid.to_string()) != ns("self") {
        return false;
    }
    let needle = format!("{}/", needle.trim_end_matches('/'));
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|b| *b == 0).any(|a| String::from_utf8_lossy(a).starts_with(&needle)))
        .unwrap_or(false)
}

/// Whether `pid` is in `root` or below it in any hierarchy.
pub fn in_cgroup(pid: i32, root: &str) -> bool {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    text.lines().filter_map(|l| l.splitn(3, ':').nth(2)).any(|path| under(path, root))
}

fn under(path: &str, root: &str) -> bool {
    let root = root.trim_end_matches('/');
    !root.is_empty() && (path == root || path.starts_with(&format!("{root}/")))
}

/// Every mount point of this mount namespace.
fn mount_points() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines().filter_map(mount_point).collect()
}

/// The mount point (fifth field) of a mountinfo line.
fn mount_point(line: &str) -> Option<PathBuf> {
    line.split(' ').nth(4).map(|m| PathBuf::from(unescape(m)))
}

/// Mount points at or below any of `dirs`.
pub fn mounts_under(dirs: &[&Path]) -> Vec<PathBuf> {
    mount_points().into_iter().filter(|m| dirs.iter().any(|d| m.starts_with(d))).collect()
}

fn unmount_under(dirs: &[&Path], errors: &mut Vec<String>) {
    for _ in 0..3 {
        let mut points = mounts_under(dirs);
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for p in points {
            let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else { continue };
            // SAFETY: a valid C string; MNT_DETACH of a mount this node made.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let left = mounts_under(dirs);
    if !left.is_empty() {
        errors.push(format!("mounts left: {left:?}"));
    }
}

fn delete_links(made: &Made, errors: &mut Vec<String>) {
    // Host ends of pod veths on the bridge (normally gone with their netns already).
    if let Ok(out) =
        Command::new("ip").args(["-o", "link", "show", "master", &made.bridge]).stderr(Stdio::null()).output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(name) = line.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n)) {
                run_quiet(Command::new("ip").args(["link", "del", name]), &["Cannot find device"], errors);
            }
        }
    }
    for dev in std::iter::once(&made.bridge).chain(made.vxlan_device.iter()) {
        run_quiet(Command::new("ip").args(["link", "del", dev]), &["Cannot find device"], errors);
    }
}

/// Runs a cleanup command; a failure whose message contains one of `ignore` is success.
fn run_quiet(cmd: &mut Command, ignore: &[&str], errors: &mut Vec<String>) {
    match cmd.stdout(Stdio::null()).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let msg = String::from_utf8_lossy(&o.stderr).trim().to_string();
            if !ignore.iter().any(|i| msg.contains(i)) {
                errors.push(format!("{cmd:?}: {msg}"));
            }
        }
        Err(e) => errors.push(format!("{cmd:?}: {e}")),
    }
}

/// The node's cgroup directories in every mounted hierarchy (v1 controllers and v2).
pub fn cgroup_dirs(root: &str) -> Vec<PathBuf> {
    let rel = root.trim_matches('/');
    if rel.is_empty() {
        return Vec::new();
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    berth_runtime::cgroups::Layout::from_mountinfo(&info)
        .hierarchies
        .into_iter()
        .map(|h| h.mountpoint.join(rel))
        .filter(|d| d.is_dir())
        .collect()
}

fn remove_cgroups(root: &str, errors: &mut Vec<String>) {
    for dir in cgroup_dirs(root) {
        let mut last = None;
        for _ in 0..20 {
            match remove_tree(&dir) {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(e) = last {
            errors.push(format!("removing cgroup {}: {e}", dir.display()));
        }
    }
}

/// rmdir children first, killing what still runs in each.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&e.path())?;
        }
    }
    for pid in std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
    {
        // SAFETY: a process inside this node's cgroup.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_unescaped() {
        let l = "36 35 98:0 /mnt1 /mnt\\040two rw,noatime master:1 - ext3 /dev/root rw,errors=continue";
        assert_eq!(mount_point(l), Some(PathBuf::from("/mnt two")));
    }

    #[test]
    fn cgroup_paths_match_the_root_and_below_only() {
        assert!(under("/berth", "/berth"));
        assert!(under("/berth/pod1/c", "/berth/"));
        assert!(!under("/berth-it-x", "/berth"));
        assert!(!under("/", ""));
    }
}
