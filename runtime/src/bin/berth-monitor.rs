//! `berth-monitor`: the per-pod parent and reaper of a pod's containers (see
//! `berth_shim::monitor`). Started by berth-shim; prints `ready` once it listens.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use berth_runtime::monitor::daemon;
use clap::Parser;

#[derive(Parser)]
#[command(name = "berth-monitor", about = "Per-pod container parent, reaper and log writer for berth-shim")]
struct Args {
    /// The pod directory (control socket, exit records, monitor.log).
    #[arg(long)]
    dir: PathBuf,
    /// berth-runtime's state root.
    #[arg(long, default_value = "/run/berth/shim/runtime")]
    runtime_root: PathBuf,
}

fn main() -> anyhow::Result<()> {
    // Its own session, before anything else: signals sent to the shim's process group (a ^C
    // in the shim's terminal) must not reach the pods. The shim spawns it without a pre-exec
    // hook, so that spawning is a vfork rather than a fork of the shim.
    // SAFETY: setsid has no preconditions; it fails only for a group leader, which we are not.
    unsafe { libc::setsid() };
    let args = Args::parse();
    berth_runtime::cgroups::Layout::adopt_from_env();
    let listener = daemon::bind(&args.dir).context("binding the control socket")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(args.dir.join("monitor.log"))
        .context("opening monitor.log")?;
    tracing_subscriber::fmt().with_writer(std::sync::Mutex::new(log)).with_ansi(false).init();
    // Detach stdio from the shim: stdin/stderr already /dev/null; stdout says ready then goes.
    let mut out = std::io::stdout();
    out.write_all(b"ready\n").and_then(|()| out.flush()).context("signalling readiness")?;
    let null = std::fs::File::options().write(true).open("/dev/null").context("/dev/null")?;
    let log =
        std::fs::OpenOptions::new().append(true).open(args.dir.join("monitor.log")).context("opening monitor.log")?;
    // SAFETY: replacing our own stdout with /dev/null and stderr with the log (panics land there).
    unsafe {
        libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 1);
        libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&log), 2);
    }
    daemon::serve(daemon::Options { dir: args.dir, runtime_root: args.runtime_root }, listener).context("monitor loop")
}
