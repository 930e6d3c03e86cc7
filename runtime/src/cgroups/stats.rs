//! Resource usage of a container's cgroup, in the shape of runc's `events --stats`.

use serde::Serialize;

use super::{Cgroup, Version};

#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub pids: PidsStats,
}

#[derive(Debug, Default, Serialize)]
pub struct CpuStats {
    /// Total CPU time in nanoseconds.
    pub usage_total: u64,
    pub usage_user: u64,
    pub usage_kernel: u64,
    pub throttled_periods: u64,
    pub throttled_time: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct MemoryStats {
    pub usage: u64,
    pub max_usage: u64,
    pub limit: u64,
    pub oom_kills: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct PidsStats {
    pub current: u64,
    pub limit: u64,
}

fn read(path: std::path::PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn num(s: &str) -> u64 {
    let s = s.trim();
    if s == "max" {
        u64::MAX
    } else {
        s.parse().unwrap_or(0)
    }
}

/// Value of `key` in a flat-keyed file ("key value" lines).
pub fn keyed(text: &str, key: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')).map(num)).unwrap_or(0)
}

impl Cgroup {
    /// Reads what each available controller reports; absent files count as zero.
    pub fn stats(&self) -> Stats {
        let mut st = Stats::default();
        if let Some(h) = self.layout.hierarchy_of("memory") {
            let dir = self.dir(h);
            if h.version == Version::V1 {
                st.memory.usage = num(&read(dir.join("memory.usage_in_bytes")));
                st.memory.max_usage = num(&read(dir.join("memory.max_usage_in_bytes")));
                st.memory.limit = num(&read(dir.join("memory.limit_in_bytes")));
                st.memory.oom_kills = keyed(&read(dir.join("memory.oom_control")), "oom_kill");
            } else {
                st.memory.usage = num(&read(dir.join("memory.current")));
                st.memory.max_usage = num(&read(dir.join("memory.peak")));
                st.memory.limit = num(&read(dir.join("memory.max")));
                st.memory.oom_kills = keyed(&read(dir.join("memory.events")), "oom_kill");
            }
        }
        if let Some(h) = self.layout.hierarchy_of("cpuacct").filter(|h| h.version == Version::V1) {
            let dir = self.dir(h);
            st.cpu.usage_total = num(&read(dir.join("cpuacct.usage")));
            st.cpu.usage_user = num(&read(dir.join("cpuacct.usage_user")));
            st.cpu.usage_kernel = num(&read(dir.join("cpuacct.usage_sys")));
        } else if let Some(h) = self.layout.unified() {
            let text = read(self.dir(h).join("cpu.stat"));
            st.cpu.usage_total = keyed(&text, "usage_usec") * 1000;
            st.cpu.usage_user = keyed(&text, "user_usec") * 1000;
            st.cpu.usage_kernel = keyed(&text, "system_usec") * 1000;
        }
        if let Some(h) = self.layout.hierarchy_of("cpu") {
            let text = read(self.dir(h).join("cpu.stat"));
            st.cpu.throttled_periods = keyed(&text, "nr_throttled");
            st.cpu.throttled_time = keyed(&text, "throttled_time").max(keyed(&text, "throttled_usec") * 1000);
        }
        if let Some(h) = self.layout.hierarchy_of("pids") {
            let dir = self.dir(h);
            st.pids.current = num(&read(dir.join("pids.current")));
            st.pids.limit = num(&read(dir.join("pids.max")));
        }
        st
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_keyed_files() {
        let text = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed(text, "oom_kill"), 3);
        assert_eq!(keyed("usage_usec 1500\n", "usage_usec"), 1500);
        assert_eq!(num("max\n"), u64::MAX);
    }
}
