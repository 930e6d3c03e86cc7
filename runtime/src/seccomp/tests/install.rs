//! Real installs, each in a forked child that sets no_new_privs first, so no root is needed.

use std::os::fd::AsRawFd;

use serde_json::json;

use super::super::{default_profile, install};
use super::*;

/// How a forked child ended.
#[derive(Debug, PartialEq, Eq)]
enum Exit {
    Code(i32),
    Signal(i32),
}

/// Runs `body` in a forked child after PR_SET_NO_NEW_PRIVS and returns how the child ended.
/// The child only makes syscalls (everything it needs is prepared before the fork) and leaves
/// with `_exit`, so it never runs test-harness code.
fn in_child(body: impl FnOnce() -> i32) -> Exit {
    // SAFETY: the child only makes raw syscalls and calls _exit, which is fork-safe even though
    // the test harness is multi-threaded.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: prctl with integer arguments.
        let code = if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            100
        } else {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(101)
        };
        // SAFETY: _exit ends the child without running the parent's atexit handlers or destructors.
        unsafe { libc::_exit(code) }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child; status is a valid out pointer.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid, "waitpid: {}", std::io::Error::last_os_error());
    if libc::WIFEXITED(status) {
        Exit::Code(libc::WEXITSTATUS(status))
    } else {
        Exit::Signal(libc::WTERMSIG(status))
    }
}

/// errno after a raw syscall that failed, or 0 when it succeeded.
fn errno_of(rc: libc::c_long) -> i32 {
    if rc == -1 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    } else {
        0
    }
}

fn raw_getcwd() -> i32 {
    let mut buf = [0u8; 512];
    // SAFETY: the kernel writes at most buf.len() bytes into buf.
    errno_of(unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) })
}

fn raw_uname() -> i32 {
    // SAFETY: utsname is plain data; the kernel fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts is a valid, writable utsname.
    errno_of(unsafe { libc::syscall(libc::SYS_uname, &mut uts as *mut libc::utsname) })
}

#[test]
fn installed_filter_returns_the_errno() {
    let filter = build(json!({ "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{ "names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EXDEV }] }));
    let exit = in_child(|| {
        if raw_getcwd() != 0 {
            return 1;
        }
        match install(&filter) {
            Ok(None) => {}
            _ => return 2,
        }
        match (raw_getcwd(), raw_uname()) {
            (libc::EXDEV, 0) => 0,
            (libc::EXDEV, _) => 3,
            _ => 4,
        }
    });
    assert_eq!(exit, Exit::Code(0));
}

#[test]
fn installed_kill_process_kills_with_sigsys() {
    let filter = build(json!({ "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{ "names": ["uname"], "action": "SCMP_ACT_KILL_PROCESS" }] }));
    let exit = in_child(|| {
        if install(&filter).is_err() {
            return 2;
        }
        raw_uname();
        3
    });
    assert_eq!(exit, Exit::Signal(libc::SIGSYS));
}

#[test]
fn notify_returns_a_listener() {
    let filter = build(json!({ "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{ "names": ["uname"], "action": "SCMP_ACT_NOTIFY" }] }));
    let exit = in_child(|| {
        let Ok(Some(listener)) = install(&filter) else { return 2 };
        if listener.as_raw_fd() < 0 {
            return 3;
        }
        drop(listener);
        // With the listener closed, notified syscalls fail with ENOSYS.
        if raw_uname() == libc::ENOSYS {
            0
        } else {
            4
        }
    });
    assert_eq!(exit, Exit::Code(0));
}

#[test]
fn default_profile_installs_and_confines() {
    let filter = compile(&default_profile()).unwrap();
    let exit = in_child(|| {
        if install(&filter).is_err() {
            return 2;
        }
        // SAFETY: unshare with a flag word; it must be refused by the filter.
        let unshare = errno_of(unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER) });
        // SAFETY: a null clone_args pointer; the filter answers before the kernel reads it.
        let clone3 = errno_of(unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) });
        match (raw_getcwd(), raw_uname(), unshare, clone3) {
            (0, 0, libc::EPERM, libc::ENOSYS) => 0,
            (0, 0, libc::EPERM, _) => 5,
            (0, 0, _, _) => 4,
            _ => 3,
        }
    });
    assert_eq!(exit, Exit::Code(0));
}
