//! `kill`: send a signal to the init, or with `all` to every process in the container's cgroup.

use super::{ContainerError, Loaded};
use crate::state::{Root, Status};

/// Parses `KILL`, `SIGKILL` or `9`.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let n = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "TRAP" => libc::SIGTRAP,
        "ABRT" | "IOT" => libc::SIGABRT,
        "BUS" => libc::SIGBUS,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "SEGV" => libc::SIGSEGV,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "STKFLT" => libc::SIGSTKFLT,
        "CHLD" | "CLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "WINCH" => libc::SIGWINCH,
        "IO" | "POLL" => libc::SIGIO,
        "PWR" => libc::SIGPWR,
        "SYS" => libc::SIGSYS,
        other => {
            let rt = other.strip_prefix("RTMIN+").and_then(|n| n.parse::<i32>().ok());
            return rt.map(|n| libc::SIGRTMIN() + n).filter(|s| *s <= libc::SIGRTMAX());
        }
    };
    Some(n)
}

pub fn kill(root: &Root, id: &str, signal: i32, all: bool) -> Result<(), ContainerError> {
    let c = Loaded::load(root, id)?;
    if all {
        // Signalling a stopped container's leftovers is allowed with --all (runc does too).
        return Ok(c.cgroup()?.signal_all(signal)?);
    }
    c.require(&[Status::Created, Status::Running, Status::Paused], "kill")?;
    // SAFETY: kill has no memory-safety preconditions; the PID is checked alive above.
    crate::syscall::cvt(unsafe { libc::kill(c.record.pid, signal) })
        .map_err(super::os(format!("kill {}", c.record.pid)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_signals() {
        assert_eq!(parse_signal("KILL"), Some(9));
        assert_eq!(parse_signal("sigterm"), Some(15));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("RTMIN+1"), Some(libc::SIGRTMIN() + 1));
        assert_eq!(parse_signal("0"), None);
        assert_eq!(parse_signal("NOPE"), None);
    }
}
