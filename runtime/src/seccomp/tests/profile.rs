//! The RuntimeDefault profile compiles and allows/denies what it should.

use super::super::default_profile;
use super::*;

const CLONE_NEWUSER: u64 = libc::CLONE_NEWUSER as u64;
/// What glibc's pthread_create passes to clone.
const THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS
    | libc::CLONE_PARENT_SETTID
    | libc::CLONE_CHILD_CLEARTID) as u64;

fn with_arg0(v: u64) -> [u64; 6] {
    [v, 0, 0, 0, 0, 0]
}

#[test]
fn default_profile_compiles() {
    let f = compile(&default_profile()).expect("default profile compiles");
    // Its runs of neighbouring syscalls are range checks: 462 instructions for three
    // architectures, against 1634 with one `jeq` per syscall.
    assert!(f.instructions().len() < 600, "{} instructions", f.instructions().len());
    assert_eq!(f.flags(), 0);
    assert!(!f.wants_listener());
    // It round-trips through config.json.
    let json = serde_json::to_value(default_profile()).unwrap();
    assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(parse(json), default_profile());
}

#[test]
fn default_profile_allows_ordinary_syscalls() {
    let f = compile(&default_profile()).unwrap();
    let allowed = [
        "read",
        "write",
        "openat",
        "close",
        "mmap",
        "munmap",
        "brk",
        "execve",
        "exit_group",
        "exit",
        "futex",
        "rt_sigaction",
        "getcwd",
        "wait4",
        "socketpair",
        "epoll_pwait",
        "prlimit64",
        "getrandom",
        "uname",
    ];
    for name in allowed {
        assert_eq!(call0(&f, name), ALLOW, "{name}");
    }
}

#[test]
fn default_profile_denies_privileged_syscalls() {
    let f = compile(&default_profile()).unwrap();
    let denied = [
        "kexec_load",
        "mount",
        "umount2",
        "unshare",
        "setns",
        "init_module",
        "finit_module",
        "delete_module",
        "reboot",
        "swapon",
        "bpf",
        "ptrace",
        "open_by_handle_at",
        "keyctl",
        "add_key",
        "userfaultfd",
        "perf_event_open",
        "pivot_root",
        "io_uring_setup",
        "syslog",
        "settimeofday",
    ];
    for name in denied {
        assert_eq!(call0(&f, name), errno(libc::EPERM), "{name}");
    }
}

#[test]
fn default_profile_argument_rules() {
    let f = compile(&default_profile()).unwrap();
    // clone: threads and plain forks yes, new namespaces no; clone3 falls back via ENOSYS.
    assert_eq!(call(&f, "clone", with_arg0(THREAD_FLAGS)), ALLOW);
    assert_eq!(call(&f, "clone", with_arg0(libc::SIGCHLD as u64)), ALLOW);
    assert_eq!(call(&f, "clone", with_arg0(CLONE_NEWUSER | libc::SIGCHLD as u64)), errno(libc::EPERM));
    assert_eq!(call(&f, "clone", with_arg0(libc::CLONE_NEWNET as u64)), errno(libc::EPERM));
    assert_eq!(call0(&f, "clone3"), errno(libc::ENOSYS));
    // personality: only the harmless values.
    for p in [0, 8, 0x2_0000, 0x2_0008, 0xffff_ffff] {
        assert_eq!(call(&f, "personality", with_arg0(p)), ALLOW, "personality({p:#x})");
    }
    for p in [1, 0x0040_0000 /* READ_IMPLIES_EXEC */, 0x1_0000_0000] {
        assert_eq!(call(&f, "personality", with_arg0(p)), errno(libc::EPERM), "personality({p:#x})");
    }
    // socket: anything but AF_VSOCK.
    assert_eq!(call(&f, "socket", with_arg0(libc::AF_INET as u64)), ALLOW);
    assert_eq!(call(&f, "socket", with_arg0(libc::AF_UNIX as u64)), ALLOW);
    assert_eq!(call(&f, "socket", with_arg0(libc::AF_VSOCK as u64)), errno(libc::EPERM));
    // Syscalls newer than anything the profile names.
    let t = native();
    assert_eq!(eval(&f, t.audit_arch(), 1000, [0; 6]), errno(libc::ENOSYS));
}

#[cfg(target_arch = "x86_64")]
#[test]
fn default_profile_covers_compat_abis() {
    use super::super::arch::{AUDIT_ARCH_I386, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT};
    let f = compile(&default_profile()).unwrap();
    let i386 = |name| eval(&f, AUDIT_ARCH_I386, Target::I386.lookup(name).unwrap(), [0; 6]);
    assert_eq!(i386("read"), ALLOW);
    assert_eq!(i386("socketcall"), ALLOW);
    assert_eq!(i386("clock_gettime64"), ALLOW);
    assert_eq!(i386("kexec_load"), errno(libc::EPERM));
    let x32 = |name| eval(&f, AUDIT_ARCH_X86_64, Target::X32.lookup(name).unwrap(), [0; 6]);
    assert_eq!(x32("read"), ALLOW);
    assert_eq!(x32("rt_sigaction"), ALLOW);
    assert_eq!(x32("kexec_load"), errno(libc::EPERM));
    assert_eq!(Target::X32.lookup("read"), Some(X32_SYSCALL_BIT));
}
