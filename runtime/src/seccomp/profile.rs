//! The Kubernetes/CRI "RuntimeDefault" seccomp profile: an allow-list of the syscalls ordinary
//! programs use, ERRNO(EPERM) for everything else, with argument rules for clone, personality
//! and socket. It is the variant for the default container capability set (CAP_SYS_CHROOT is in
//! it, CAP_SYS_ADMIN / CAP_SYS_PTRACE / CAP_SYS_MODULE & co. are not).

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction as Action, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator as Op, LinuxSyscall,
};

/// Allowed without conditions. Names missing on an architecture are skipped there (i386 has
/// the `*32`/`*64`/`*_time64` variants, x86_64 the plain ones, aarch64 neither `open` nor `stat`).
#[rustfmt::skip]
const ALLOWED: &[&str] = &[
    // files and directories
    "access", "chdir", "chmod", "chown", "chown32", "close", "close_range", "copy_file_range", "creat", "dup",
    "dup2", "dup3", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate", "fchdir", "fchmod",
    "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "flock", "fstat",
    "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futimesat", "getcwd",
    "getdents", "getdents64", "link", "linkat", "_llseek", "lseek", "lstat", "lstat64", "mkdir", "mkdirat",
    "mknod", "mknodat", "name_to_handle_at", "newfstatat", "open", "openat", "openat2", "pread64", "preadv",
    "preadv2", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv",
    "rename", "renameat", "renameat2", "rmdir", "sendfile", "sendfile64", "splice", "stat", "stat64", "statfs",
    "statfs64", "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "tee", "truncate",
    "truncate64", "umask", "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes", "vmsplice",
    "write", "writev",
    // extended attributes
    "fgetxattr", "flistxattr", "fremovexattr", "fsetxattr", "getxattr", "lgetxattr", "listxattr", "llistxattr",
    "lremovexattr", "lsetxattr", "removexattr", "setxattr",
    // polling, events, notification
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2", "epoll_wait",
    "epoll_wait_old", "eventfd", "eventfd2", "fanotify_mark", "inotify_add_watch", "inotify_init",
    "inotify_init1", "inotify_rm_watch", "_newselect", "pipe", "pipe2", "poll", "ppoll", "ppoll_time64",
    "pselect6", "pselect6_time64", "select", "signalfd", "signalfd4", "timerfd_create", "timerfd_gettime",
    "timerfd_gettime64", "timerfd_settime", "timerfd_settime64",
    // asynchronous I/O
    "io_cancel", "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "io_setup", "io_submit",
    "ioctl",
    // memory
    "brk", "cachestat", "madvise", "map_shadow_stack", "membarrier", "memfd_create", "memfd_secret", "mincore",
    "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mremap", "msync", "munlock", "munlockall",
    "munmap", "pkey_alloc", "pkey_free", "pkey_mprotect", "remap_file_pages",
    // processes and threads
    "arch_prctl", "capget", "capset", "chroot", "execve", "execveat", "exit", "exit_group", "fork",
    "get_robust_list", "get_thread_area", "getcpu", "getpgid", "getpgrp", "getpid", "getppid", "getpriority",
    "getrlimit", "getrusage", "getsid", "gettid", "ioprio_get", "ioprio_set", "kill", "modify_ldt",
    "pidfd_open", "pidfd_send_signal", "prctl", "prlimit64", "process_mrelease", "restart_syscall", "rseq",
    "sched_get_priority_max", "sched_get_priority_min", "sched_getaffinity", "sched_getattr", "sched_getparam",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity",
    "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "set_robust_list",
    "set_thread_area", "set_tid_address", "setpgid", "setpriority", "setrlimit", "setsid", "tgkill", "tkill",
    "ugetrlimit", "vfork", "wait4", "waitid", "waitpid",
    // credentials
    "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32",
    "getresgid", "getresgid32", "getresuid", "getresuid32", "getuid", "getuid32", "setfsgid", "setfsgid32",
    "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setregid", "setregid32",
    "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32", "setuid", "setuid32",
    // signals
    "pause", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn",
    "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sigaltstack",
    "sigprocmask", "sigreturn", "sigsuspend",
    // time
    "alarm", "clock_adjtime", "clock_adjtime64", "clock_getres", "clock_getres_time64", "clock_gettime",
    "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64", "getitimer", "gettimeofday", "nanosleep",
    "setitimer", "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64",
    "timer_settime", "timer_settime64", "times",
    // futexes
    "futex", "futex_requeue", "futex_time64", "futex_wait", "futex_waitv", "futex_wake",
    // System V and POSIX IPC
    "ipc", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend",
    "mq_timedsend_time64", "mq_unlink", "msgctl", "msgget", "msgrcv", "msgsnd", "semctl", "semget", "semop",
    "semtimedop", "semtimedop_time64", "shmat", "shmctl", "shmdt", "shmget",
    // sockets (socket itself has an argument rule below)
    "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt", "listen", "recv",
    "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "send", "sendmmsg", "sendmsg", "sendto",
    "setsockopt", "shutdown", "socketcall", "socketpair",
    // system information and sandboxing
    "getrandom", "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self", "sysinfo", "uname",
];

/// personality(2) values that only select execution-domain quirks: PER_LINUX, PER_LINUX32,
/// UNAME26, UNAME26|PER_LINUX32, and 0xffffffff (query).
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
/// CLONE_NEWNET: creating namespaces needs CAP_SYS_ADMIN, which the default set lacks.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7e02_0000;

/// AF_VSOCK: reaches the hypervisor/host, not the container's network namespace.
const AF_VSOCK: u64 = 40;

/// Kubernetes/CRI "RuntimeDefault" profile as an OCI LinuxSeccomp value (the usual container-runtime
/// default: allow-list of common syscalls, ERRNO(EPERM) otherwise, with the clone/personality/socket
/// argument rules).
pub fn default_profile() -> LinuxSeccomp {
    let mut syscalls = vec![syscall(ALLOWED, Action::ScmpActAllow, None, vec![])];
    for &persona in PERSONALITIES {
        syscalls.push(syscall(&["personality"], Action::ScmpActAllow, None, vec![arg(0, Op::ScmpCmpEq, persona, 0)]));
    }
    // clone without namespace flags; clone3 passes flags in memory BPF cannot read, so it gets
    // ENOSYS and libc falls back to clone.
    let no_namespaces = arg(0, Op::ScmpCmpMaskedEq, CLONE_NAMESPACE_FLAGS, 0);
    syscalls.push(syscall(&["clone"], Action::ScmpActAllow, None, vec![no_namespaces]));
    syscalls.push(syscall(&["clone3"], Action::ScmpActErrno, Some(libc::ENOSYS as u32), vec![]));
    syscalls.push(syscall(&["socket"], Action::ScmpActAllow, None, vec![arg(0, Op::ScmpCmpNe, AF_VSOCK, 0)]));

    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(Action::ScmpActErrno);
    profile.set_default_errno_ret(Some(libc::EPERM as u32));
    profile.set_architectures(Some(architectures()));
    profile.set_syscalls(Some(syscalls));
    profile
}

/// The host's architecture and the compat ABIs its kernel can run.
fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64]
    } else {
        vec![Arch::ScmpArchNative]
    }
}

fn syscall(names: &[&str], action: Action, errno: Option<u32>, args: Vec<LinuxSeccompArg>) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names.iter().map(|n| n.to_string()).collect());
    s.set_action(action);
    s.set_errno_ret(errno);
    s.set_args((!args.is_empty()).then_some(args));
    s
}

fn arg(index: usize, op: Op, value: u64, value_two: u64) -> LinuxSeccompArg {
    let arg = LinuxSeccompArgBuilder::default().index(index).op(op).value(value);
    let arg = if value_two != 0 { arg.value_two(value_two) } else { arg };
    arg.build().expect("every LinuxSeccompArg field has a default")
}
