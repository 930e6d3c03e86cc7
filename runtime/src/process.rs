//! Turning the current (already namespaced, already pivoted) process into the spec's
//! `process`: rlimits, oom score, identity, capabilities, no_new_privs, cwd, exec.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{PosixRlimitType, Process};

use crate::capabilities::{self, Masks};
use crate::syscall::cvt;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("setting rlimit {name} to soft={soft} hard={hard}{hint}")]
    Rlimit {
        name: String,
        soft: u64,
        hard: u64,
        hint: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("writing oomScoreAdj {value}{hint}")]
    OomScore {
        value: i32,
        hint: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{op}")]
    Identity {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("capabilities: {op}")]
    Caps {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("chdir to {cwd}")]
    Cwd {
        cwd: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("executable {name:?} not found in $PATH")]
    NotFound { name: String },
    #[error("exec {path}")]
    Exec {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn rlimit_resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    use PosixRlimitType::*;
    match t {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

pub fn set_rlimits(process: &Process) -> Result<(), ProcessError> {
    for r in process.rlimits().iter().flatten() {
        let lim = libc::rlimit { rlim_cur: r.soft(), rlim_max: r.hard() };
        // SAFETY: lim is a valid rlimit struct.
        if let Err(source) = cvt(unsafe { libc::setrlimit(rlimit_resource(r.typ()), &lim) }) {
            let hint = if source.raw_os_error() == Some(libc::EPERM) {
                " (raising a hard limit needs CAP_SYS_RESOURCE, which this runtime does not hold)"
            } else {
                ""
            };
            return Err(ProcessError::Rlimit {
                name: format!("{:?}", r.typ()),
                soft: r.soft(),
                hard: r.hard(),
                hint,
                source,
            });
        }
    }
    Ok(())
}

/// `linux.personality` (execution domain) and `process.ioPriority`.
pub fn set_personality_and_ioprio(
    spec_linux: Option<&oci_spec::runtime::Linux>,
    process: &Process,
) -> Result<(), ProcessError> {
    if let Some(p) = spec_linux.and_then(|l| l.personality().as_ref()) {
        let persona = match p.domain() {
            oci_spec::runtime::LinuxPersonalityDomain::PerLinux => 0x0000,
            oci_spec::runtime::LinuxPersonalityDomain::PerLinux32 => 0x0008,
        };
        // SAFETY: personality takes a plain integer.
        if unsafe { libc::personality(persona) } == -1 {
            return Err(ProcessError::Identity { op: "personality".into(), source: io::Error::last_os_error() });
        }
    }
    if let Some(io) = process.io_priority() {
        use oci_spec::runtime::IOPriorityClass::*;
        let class: libc::c_long = match io.class() {
            IoprioClassRt => 1,
            IoprioClassBe => 2,
            IoprioClassIdle => 3,
        };
        const IOPRIO_WHO_PROCESS: libc::c_long = 1;
        // SAFETY: ioprio_set takes plain integers.
        let ret = unsafe {
            libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, (class << 13) | io.priority() as libc::c_long)
        };
        cvt(ret as libc::c_int).map_err(|source| ProcessError::Identity { op: "ioprio_set".into(), source })?;
    }
    Ok(())
}

pub fn set_oom_score_adj(process: &Process) -> Result<(), ProcessError> {
    let Some(value) = process.oom_score_adj() else { return Ok(()) };
    std::fs::write("/proc/self/oom_score_adj", value.to_string()).map_err(|source| {
        let hint =
            if source.raw_os_error() == Some(libc::EACCES) { " (lowering it needs CAP_SYS_RESOURCE)" } else { "" };
        ProcessError::OomScore { value, hint, source }
    })
}

/// Bounding set, then uid/gid/groups (keeping capabilities across setuid), then the other sets.
pub fn set_identity_and_caps(process: &Process) -> Result<(), ProcessError> {
    let masks = Masks::from_spec(process.capabilities().as_ref());
    let caps_err = |op| move |source| ProcessError::Caps { op, source };
    capabilities::drop_bounding(masks.bounding).map_err(caps_err("dropping from the bounding set"))?;
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) }).map_err(caps_err("PR_SET_KEEPCAPS"))?;
    let user = process.user();
    let groups: Vec<libc::gid_t> = user.additional_gids().clone().unwrap_or_default();
    let id_err = |op: String| move |source| ProcessError::Identity { op, source };
    // setgroups is denied in a user namespace whose setgroups file says "deny"; only then
    // is an empty list acceptable to skip.
    // SAFETY: groups is valid for groups.len() entries.
    match cvt(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) }) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && groups.is_empty() => {}
        other => {
            other.map_err(id_err(format!("setgroups {groups:?}")))?;
        }
    }
    // SAFETY: plain integer syscalls.
    cvt(unsafe { libc::setresgid(user.gid(), user.gid(), user.gid()) })
        .map_err(id_err(format!("setresgid {}", user.gid())))?;
    // SAFETY: plain integer syscalls.
    cvt(unsafe { libc::setresuid(user.uid(), user.uid(), user.uid()) })
        .map_err(id_err(format!("setresuid {}", user.uid())))?;
    capabilities::apply(&masks).map_err(caps_err("capset"))?;
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) }).map_err(caps_err("PR_SET_KEEPCAPS"))?;
    Ok(())
}

pub fn set_no_new_privs() -> Result<(), ProcessError> {
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
        .map(drop)
        .map_err(|source| ProcessError::Caps { op: "PR_SET_NO_NEW_PRIVS", source })
}

pub fn set_cwd_and_umask(process: &Process) -> Result<(), ProcessError> {
    std::env::set_current_dir(process.cwd())
        .map_err(|source| ProcessError::Cwd { cwd: process.cwd().clone(), source })?;
    let umask = process.user().umask().unwrap_or(0o022);
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(umask as libc::mode_t) };
    Ok(())
}

/// The value of `PATH` in the process's environment (the container's, not the runtime's).
fn env_path(env: &[String]) -> &str {
    env.iter()
        .find_map(|v| v.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
}

/// Finds the program as execvp would, but with the container's PATH.
pub fn find_executable(name: &str, env: &[String]) -> Result<PathBuf, ProcessError> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    for dir in env_path(env).split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(ProcessError::NotFound { name: name.to_owned() })
}

fn is_executable(path: &Path) -> bool {
    let Ok(c) = crate::syscall::cstr(path) else { return false };
    // SAFETY: c is a valid C string.
    let ok = unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0;
    ok && path.is_file()
}

/// The program to run, found with the container's PATH; checked before the runtime is told
/// the container is ready, so "not found" is reported instead of lost after the handshake.
pub fn resolve(process: &Process) -> Result<PathBuf, ProcessError> {
    let args = process.args().as_deref().unwrap_or_default();
    let env = process.env().as_deref().unwrap_or_default();
    let name = args.first().map(String::as_str).unwrap_or_default();
    let path = find_executable(name, env)?;
    if !is_executable(&path) {
        let source = std::fs::metadata(&path).err().unwrap_or_else(|| io::Error::from_raw_os_error(libc::EACCES));
        return Err(ProcessError::Exec { path, source });
    }
    Ok(path)
}

/// Replaces this process with the spec's program at `path`. Returns only on failure.
pub fn exec(process: &Process, path: PathBuf) -> ProcessError {
    let args = process.args().clone().unwrap_or_default();
    let env = process.env().clone().unwrap_or_default();
    let to_c = |s: &str| CString::new(s).unwrap_or_default();
    let c_path = match crate::syscall::cstr(&path) {
        Ok(p) => p,
        Err(source) => return ProcessError::Exec { path, source },
    };
    let c_args: Vec<CString> = args.iter().map(|a| to_c(a)).collect();
    let c_env: Vec<CString> = env.iter().map(|a| to_c(a)).collect();
    let mut argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = c_env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: argv and envp are NULL-terminated arrays of valid C strings kept alive above.
    unsafe { libc::execve(c_path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    ProcessError::Exec { path, source: io::Error::last_os_error() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_lookup_uses_container_env() {
        let env = vec!["PATH=/nonexistent:/bin".to_string()];
        assert_eq!(find_executable("sh", &env).unwrap(), PathBuf::from("/bin/sh"));
        assert_eq!(find_executable("/x/y", &env).unwrap(), PathBuf::from("/x/y"));
        assert!(matches!(find_executable("no-such-program-here", &env), Err(ProcessError::NotFound { .. })));
    }
}
