//! The node's own figures for the Summary API, read from a proc root (`/proc`, or a directory of
//! fake files in tests): CPU time from `stat`, memory from `meminfo` and `vmstat`, interfaces
//! from `net/dev`, process limits; filesystems with statvfs; directory usage by walking.

use std::path::Path;

/// USER_HZ: /proc/stat counts in 1/100 s on Linux.
const NANOS_PER_TICK: u64 = 10_000_000;

/// Cumulative CPU time of the whole node, in nanoseconds (user+nice+system+irq+softirq+steal).
pub fn cpu_usage_nanos(proc_root: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(proc_root.join("stat")).ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let busy = [0, 1, 2, 5, 6, 7].iter().filter_map(|i| f.get(*i)).sum::<u64>();
    Some(busy * NANOS_PER_TICK)
}

/// Node memory as kubelet reports it from the root cgroup, here from meminfo.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub total: u64,
    pub usage: u64,
    pub working_set: u64,
    pub available: u64,
    pub rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
}

pub fn memory(proc_root: &Path) -> Option<Memory> {
    let info = std::fs::read_to_string(proc_root.join("meminfo")).ok()?;
    let kib = |key: &str| {
        info.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |v| v * 1024)
    };
    let vm = std::fs::read_to_string(proc_root.join("vmstat")).unwrap_or_default();
    let count = |key: &str| {
        vm.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0)
    };
    let total = kib("MemTotal:");
    let usage = total.saturating_sub(kib("MemFree:"));
    let working_set = usage.saturating_sub(kib("Inactive(file):"));
    Some(Memory {
        total,
        usage,
        working_set,
        available: total.saturating_sub(working_set),
        rss: kib("AnonPages:"),
        page_faults: count("pgfault "),
        major_page_faults: count("pgmajfault "),
    })
}

/// One interface's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// Interfaces from `net/dev`, loopback left out.
pub fn interfaces(proc_root: &Path) -> Vec<Interface> {
    let text = std::fs::read_to_string(proc_root.join("net/dev")).unwrap_or_default();
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest.split_whitespace().filter_map(|v| v.parse().ok()).collect();
            let name = name.trim().to_string();
            (name != "lo" && f.len() >= 16).then(|| Interface {
                name,
                rx_bytes: f[0],
                rx_errors: f[2],
                tx_bytes: f[8],
                tx_errors: f[10],
            })
        })
        .collect()
}

/// (maxpid, curproc): the pid limit and the tasks now running.
pub fn rlimit(proc_root: &Path) -> (Option<u64>, Option<u64>) {
    let max = std::fs::read_to_string(proc_root.join("sys/kernel/pid_max")).ok().and_then(|s| s.trim().parse().ok());
    let cur = std::fs::read_to_string(proc_root.join("loadavg"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(3)?.split_once('/')?.1.parse().ok());
    (max, cur)
}

/// A filesystem's size and use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fs {
    pub capacity: u64,
    pub available: u64,
    pub used: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

pub fn statvfs(p: &Path) -> Option<Fs> {
    let c = std::ffi::CString::new(p.to_string_lossy().as_bytes()).ok()?;
    // SAFETY: statvfs fills a struct we own.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C path and out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    let (capacity, free, available) = (s.f_blocks * s.f_frsize, s.f_bfree * s.f_frsize, s.f_bavail * s.f_frsize);
    Some(Fs { capacity, available, used: capacity.saturating_sub(free), inodes: s.f_files, inodes_free: s.f_ffree })
}

/// (bytes, inodes) under `dir`, not following links nor crossing into other filesystems' mounts
/// only by their own entries (a tmpfs volume is counted too, as kubelet does).
pub fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut stack = vec![dir.to_path_buf()];
    let (mut bytes, mut inodes) = (0u64, 0u64);
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else { continue };
            inodes += 1;
            bytes += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_like_kubelet() {
        let d = tempfile::tempdir().unwrap();
        let w = |p: &str, s: &str| {
            let path = d.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, s).unwrap();
        };
        w("stat", "cpu  100 5 50 1000 7 1 2 3 0 0\ncpu0 1 2 3\n");
        w(
            "meminfo",
            "MemTotal:       1000 kB\nMemFree:         200 kB\nInactive(file):  100 kB\nAnonPages:       300 kB\n",
        );
        w("vmstat", "pgfault 42\npgmajfault 3\n");
        w("net/dev", "Inter-|   Receive\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo: 9 1 0 0 0 0 0 0 9 1 0 0 0 0 0 0\n  eth0: 1000 10 1 0 0 0 0 0 2000 20 2 0 0 0 0 0\n");
        w("sys/kernel/pid_max", "4194304\n");
        w("loadavg", "0.10 0.20 0.30 2/345 6789\n");
        assert_eq!(cpu_usage_nanos(d.path()), Some((100 + 5 + 50 + 1 + 2 + 3) * NANOS_PER_TICK));
        let m = memory(d.path()).unwrap();
        assert_eq!(
            (m.total, m.usage, m.working_set, m.available, m.rss, m.page_faults),
            (1_024_000, 819_200, 716_800, 307_200, 307_200, 42)
        );
        assert_eq!(
            interfaces(d.path()),
            [Interface { name: "eth0".into(), rx_bytes: 1000, rx_errors: 1, tx_bytes: 2000, tx_errors: 2 }]
        );
        assert_eq!(rlimit(d.path()), (Some(4194304), Some(345)));
        let fs = statvfs(d.path()).unwrap();
        assert!(fs.capacity > 0 && fs.available <= fs.capacity);
        let (bytes, inodes) = disk_usage(d.path());
        assert!(bytes > 0 && inodes >= 8, "{bytes} {inodes}");
    }
}
