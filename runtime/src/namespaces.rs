//! Namespaces: clone flags for the new ones, setns for the joined ones, and the raw clone
//! that starts the container init.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::spec::namespaces;
use crate::syscall::cvt;

pub fn flag(t: LinuxNamespaceType) -> libc::c_int {
    match t {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => libc::CLONE_NEWTIME,
    }
}

/// Flags for the namespaces created at clone time. The cgroup namespace is left out: the
/// init unshares it after it has been moved into its cgroup, so that cgroup becomes its root.
pub fn clone_flags(spec: &Spec) -> libc::c_int {
    namespaces(spec)
        .iter()
        .filter(|ns| ns.path().is_none() && ns.typ() != LinuxNamespaceType::Cgroup)
        .fold(0, |acc, ns| acc | flag(ns.typ()))
}

pub fn wants_new(spec: &Spec, t: LinuxNamespaceType) -> bool {
    namespaces(spec).iter().any(|ns| ns.typ() == t && ns.path().is_none())
}

/// Namespaces to join, opened before clone (their paths are host paths).
pub struct Joined {
    /// Joined by the runtime itself before clone (setns(PID) only affects children).
    pub pid: Option<OwnedFd>,
    /// Joined by the child in this order: user first, mount last.
    pub others: Vec<(LinuxNamespaceType, OwnedFd)>,
}

/// Opens the given namespace files in the order they must be joined.
pub fn open_joined<'a>(paths: impl IntoIterator<Item = (LinuxNamespaceType, &'a Path)>) -> io::Result<Joined> {
    let mut joined = Joined { pid: None, others: Vec::new() };
    for (typ, path) in paths {
        let fd = open_ns(path).map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
        match typ {
            LinuxNamespaceType::Pid => joined.pid = Some(fd),
            t => joined.others.push((t, fd)),
        }
    }
    joined.others.sort_by_key(|(t, _)| (*t != LinuxNamespaceType::User, *t == LinuxNamespaceType::Mount));
    Ok(joined)
}

/// The namespaces a spec joins by path.
pub fn spec_paths(spec: &Spec) -> impl Iterator<Item = (LinuxNamespaceType, &Path)> {
    namespaces(spec).iter().filter_map(|ns| ns.path().as_deref().map(|p| (ns.typ(), p)))
}

pub fn open_ns(path: &Path) -> io::Result<OwnedFd> {
    std::fs::File::open(path).map(OwnedFd::from)
}

pub fn setns(fd: &OwnedFd, t: LinuxNamespaceType) -> io::Result<()> {
    // SAFETY: fd is an open namespace descriptor.
    cvt(unsafe { libc::setns(fd.as_raw_fd(), flag(t)) })?;
    Ok(())
}

pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: plain integer syscall.
    cvt(unsafe { libc::unshare(flags) })?;
    Ok(())
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Like [`clone_process`], but the child is born in the cgroup v2 directory `cgroup` (no
/// migration afterwards). `Ok(None)`: the kernel cannot do that; fall back to `clone_process`.
///
/// # Safety
/// As for [`clone_process`].
pub unsafe fn clone_into_cgroup(flags: libc::c_int, cgroup: &OwnedFd) -> io::Result<Option<libc::pid_t>> {
    let args = CloneArgs {
        flags: flags as u32 as u64 | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..Default::default()
    };
    // SAFETY: args is a valid clone_args of the size passed; a zero stack makes the child run
    // on a copy-on-write copy of ours, as fork does. The caller guarantees single-threadedness.
    let ret = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
    if ret >= 0 {
        return Ok(Some(ret as libc::pid_t));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOSYS) | Some(libc::E2BIG) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(None),
        _ => Err(err),
    }
}

/// Clones into `cgroup` when given and supported; returns (pid, born_in_cgroup).
///
/// # Safety
/// As for [`clone_process`].
pub unsafe fn spawn(flags: libc::c_int, cgroup: Option<&OwnedFd>) -> io::Result<(libc::pid_t, bool)> {
    if let Some(fd) = cgroup {
        // SAFETY: forwarded from the caller.
        if let Some(pid) = unsafe { clone_into_cgroup(flags, fd)? } {
            return Ok((pid, true));
        }
    }
    // SAFETY: forwarded from the caller.
    Ok((unsafe { clone_process(flags)? }, false))
}

/// fork(2) with namespace flags. Returns 0 in the child, the child's PID in the parent.
///
/// # Safety
/// The caller must be single-threaded: the child is a copy of this one thread, and any lock
/// another thread held would stay locked forever in it.
pub unsafe fn clone_process(flags: libc::c_int) -> io::Result<libc::pid_t> {
    // SAFETY: a NULL stack makes clone behave like fork (the child gets a copy-on-write copy
    // of the current stack); the caller guarantees single-threadedness.
    let ret = unsafe {
        libc::syscall(libc::SYS_clone, (flags | libc::SIGCHLD) as libc::c_ulong, 0usize, 0usize, 0usize, 0usize)
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as libc::pid_t)
    }
}

/// Writes `/proc/PID/{uid,gid}_map` for a child in a new user namespace.
pub fn write_id_maps(pid: libc::pid_t, spec: &Spec) -> io::Result<()> {
    let Some(linux) = spec.linux() else { return Ok(()) };
    let fmt = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        maps.iter()
            .flatten()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    std::fs::write(format!("/proc/{pid}/uid_map"), fmt(linux.uid_mappings()))?;
    std::fs::write(format!("/proc/{pid}/gid_map"), fmt(linux.gid_mappings()))?;
    Ok(())
}
