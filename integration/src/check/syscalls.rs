//! Syscalls `berth-check` can call with harmless arguments, and errno names.

use std::ffi::CString;

/// Syscall names accepted in `syscalls[].name`.
pub const SUPPORTED: &[&str] = &[
    "getcwd",
    "uname",
    "getpid",
    "getppid",
    "getuid",
    "getgid",
    "gettid",
    "sched_yield",
    "getpriority",
    "personality",
    "kill",
    "mkdir",
    "rmdir",
    "chdir",
    "unshare",
    "syslog",
];

/// Default path argument for mkdir/rmdir/chdir.
pub const DEFAULT_PATH: &str = "/tmp/.berth-check-syscall";

const ERRNOS: &[(&str, i32)] = &[
    ("EPERM", libc::EPERM),
    ("ENOENT", libc::ENOENT),
    ("ESRCH", libc::ESRCH),
    ("EINTR", libc::EINTR),
    ("EIO", libc::EIO),
    ("E2BIG", libc::E2BIG),
    ("EBADF", libc::EBADF),
    ("ECHILD", libc::ECHILD),
    ("EAGAIN", libc::EAGAIN),
    ("ENOMEM", libc::ENOMEM),
    ("EACCES", libc::EACCES),
    ("EFAULT", libc::EFAULT),
    ("EBUSY", libc::EBUSY),
    ("EEXIST", libc::EEXIST),
    ("EXDEV", libc::EXDEV),
    ("ENODEV", libc::ENODEV),
    ("ENOTDIR", libc::ENOTDIR),
    ("EISDIR", libc::EISDIR),
    ("EINVAL", libc::EINVAL),
    ("ENFILE", libc::ENFILE),
    ("EMFILE", libc::EMFILE),
    ("ENOSPC", libc::ENOSPC),
    ("EROFS", libc::EROFS),
    ("ERANGE", libc::ERANGE),
    ("ENOSYS", libc::ENOSYS),
    ("EOPNOTSUPP", libc::EOPNOTSUPP),
];

/// Parses `EPERM` or `1` into an errno; `0`, `ok` and `success` mean no error.
pub fn parse_errno(text: &str) -> Option<i32> {
    let text = text.trim();
    if matches!(text.to_ascii_lowercase().as_str(), "ok" | "success") {
        return Some(0);
    }
    ERRNOS.iter().find(|(name, _)| name.eq_ignore_ascii_case(text)).map(|&(_, n)| n).or_else(|| text.parse().ok())
}

/// The name of an errno (`EPERM`), or its number; 0 is `success`.
pub fn errno_name(errno: i32) -> String {
    if errno == 0 {
        return "success".to_string();
    }
    ERRNOS
        .iter()
        .find(|&&(_, n)| n == errno)
        .map(|(name, _)| name.to_string())
        .unwrap_or_else(|| format!("errno {errno}"))
}

/// Calls the named syscall; `Ok(0)` on success, `Ok(errno)` on failure, `Err` for an unknown name.
pub fn invoke(name: &str, path: &str) -> Result<i32, String> {
    let c_path = CString::new(path).map_err(|_| format!("path {path:?} contains NUL"))?;
    let mut buf = [0u8; 4096];
    // SAFETY: utsname is plain old data; all-zero is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: every call passes valid pointers to buffers that outlive the call, or plain integers;
    // none of the calls change state beyond what is undone below (mkdir is followed by rmdir).
    let ret = unsafe {
        match name {
            "getcwd" => libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()),
            "uname" => libc::syscall(libc::SYS_uname, &mut uts as *mut libc::utsname),
            "getpid" => libc::syscall(libc::SYS_getpid),
            "getppid" => libc::syscall(libc::SYS_getppid),
            "getuid" => libc::syscall(libc::SYS_getuid),
            "getgid" => libc::syscall(libc::SYS_getgid),
            "gettid" => libc::syscall(libc::SYS_gettid),
            "sched_yield" => libc::syscall(libc::SYS_sched_yield),
            "getpriority" => libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, 0),
            "personality" => libc::syscall(libc::SYS_personality, 0xffff_ffffu32),
            "kill" => libc::syscall(libc::SYS_kill, libc::getpid(), 0),
            "mkdir" => libc::syscall(libc::SYS_mkdir, c_path.as_ptr(), 0o700),
            "rmdir" => libc::syscall(libc::SYS_rmdir, c_path.as_ptr()),
            "chdir" => libc::syscall(libc::SYS_chdir, c_path.as_ptr()),
            "unshare" => libc::syscall(libc::SYS_unshare, 0),
            // SYSLOG_ACTION_SIZE_BUFFER (10): only reports the buffer size.
            "syslog" => libc::syscall(libc::SYS_syslog, 10, std::ptr::null_mut::<u8>(), 0),
            _ => return Err(format!("unsupported syscall {name:?} (supported: {SUPPORTED:?})")),
        }
    };
    if ret == -1 {
        return Ok(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1));
    }
    if name == "mkdir" {
        // SAFETY: c_path is a valid NUL-terminated string.
        unsafe { libc::rmdir(c_path.as_ptr()) };
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names_round_trip() {
        assert_eq!(parse_errno("EPERM"), Some(libc::EPERM));
        assert_eq!(parse_errno("eperm"), Some(libc::EPERM));
        assert_eq!(parse_errno("38"), Some(38));
        assert_eq!(parse_errno("ok"), Some(0));
        assert_eq!(parse_errno("EWHAT"), None);
        assert_eq!(errno_name(libc::EROFS), "EROFS");
        assert_eq!(errno_name(0), "success");
        assert_eq!(errno_name(200), "errno 200");
    }

    #[test]
    fn harmless_calls_succeed_unconfined() {
        for name in ["getcwd", "uname", "getpid", "gettid", "sched_yield", "personality", "kill"] {
            assert_eq!(invoke(name, DEFAULT_PATH), Ok(0), "{name}");
        }
        assert_eq!(invoke("rmdir", "/nonexistent/berth-check"), Ok(libc::ENOENT));
        assert!(invoke("reboot", DEFAULT_PATH).is_err());
    }
}
