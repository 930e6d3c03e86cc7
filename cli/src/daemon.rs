//! The daemons `berth up` runs as children: each in its own process group (a Ctrl-C in the
//! terminal reaches `berth up` alone, which then stops them in order), its output appended to
//! `DATA/log/NAME.log`, its pid in `RUN/pids/NAME.pid` so that `berth down` finds it after a
//! crash of `berth up`. Restarted when it dies, with a growing delay.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::layout::Layout;

pub struct Daemon {
    pub name: &'static str,
    program: PathBuf,
    args: Vec<OsString>,
    child: Option<Child>,
    log: PathBuf,
    pid_file: PathBuf,
    restarts: u32,
    next_restart: Option<Instant>,
}

impl Daemon {
    pub fn new(layout: &Layout, name: &'static str, program: &Path, args: Vec<OsString>) -> Daemon {
        Daemon {
            name,
            program: program.to_path_buf(),
            args,
            child: None,
            log: layout.log_dir().join(format!("{name}.log")),
            pid_file: layout.pid_dir().join(format!("{name}.pid")),
            restarts: 0,
            next_restart: None,
        }
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        std::fs::write(&self.pid_file, format!("{}\n", child.id()))
            .with_context(|| format!("writing {}", self.pid_file.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether it has exited (the exit is reported once, and a restart scheduled).
    pub fn check(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        self.restarts += 1;
        let delay = Duration::from_secs(1 << self.restarts.min(5));
        self.next_restart = Some(Instant::now() + delay);
        Some(format!(
            "{} exited ({status}); restarting in {}s — see {}",
            self.name,
            delay.as_secs(),
            self.log.display()
        ))
    }

    /// Restarts it when its delay has passed.
    pub fn restart_due(&mut self) -> anyhow::Result<bool> {
        match self.next_restart {
            Some(t) if Instant::now() >= t => {
                self.next_restart = None;
                self.start()?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    pub fn exited_early(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        Some(format!("{} exited ({status}):\n{}", self.name, tail(&self.log, 20)))
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(mut child) = self.child.take() {
            terminate(child.id() as i32, grace);
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn alive(pid: i32) -> bool {
    // A zombie child still answers signal 0: look at its state too.
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    exists
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            .unwrap_or(true)
}

/// SIGTERM `pid`, wait up to `grace` for it to go, then SIGKILL.
pub fn terminate(pid: i32, grace: Duration) {
    if pid <= 1 {
        return;
    }
    // SAFETY: signalling a process this tool started (callers check its pid file and name).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The pid in `RUN/pids/NAME.pid` (or another pid file) when that process still runs `expect`
/// (guards against a reused pid).
pub fn pid_from_file(path: &Path, expect: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let matches = cmdline.split(|b| *b == 0).take(2).any(|arg| String::from_utf8_lossy(arg).contains(expect));
    (matches && alive(pid)).then_some(pid)
}
