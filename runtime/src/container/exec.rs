//! `exec`: start another process inside a running container — same namespaces, cgroup,
//! seccomp profile and confinement rules as its init, with the given process spec.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxNamespaceType, Process};

use super::{os, write_pid_file, ContainerError, Loaded};
use crate::channel::{self, Channel, Msg};
use crate::init::{self, Finish, InitError};
use crate::state::{Root, Status};
use crate::{namespaces, seccomp, spec};

pub struct ExecOptions<'a> {
    pub root: &'a Root,
    pub id: &'a str,
    pub process: Process,
    pub console_socket: Option<&'a Path>,
    pub pid_file: Option<&'a Path>,
    pub detach: bool,
}

/// Runs the process; returns its exit code (or 0 at once when detached).
pub fn exec(opts: ExecOptions<'_>) -> Result<i32, ContainerError> {
    let c = Loaded::load(opts.root, opts.id)?;
    c.require(&[Status::Running], "exec")?;
    spec::validate_process_fields(&opts.process, "process")?;
    if opts.process.terminal().unwrap_or(false) && opts.console_socket.is_none() {
        return Err(ContainerError::Invalid("a terminal needs --console-socket".into()));
    }
    let config = &c.record.config;
    let filter = config.linux().as_ref().and_then(|l| l.seccomp().as_ref()).map(seccomp::compile_cached).transpose()?;
    // Every namespace the container has (created or joined), through its init's /proc entry.
    let paths: Vec<(LinuxNamespaceType, std::path::PathBuf)> = spec::namespaces(config)
        .iter()
        .map(|ns| (ns.typ(), format!("/proc/{}/ns/{}", c.record.pid, ns.typ()).into()))
        .collect();
    let namespaces::Joined { pid: pid_ns, others: joined } =
        namespaces::open_joined(paths.iter().map(|(t, p)| (*t, p.as_path())))
            .map_err(os("opening the container's namespaces"))?;
    // A container without a mount namespace is chrooted: the helper enters the same root.
    let root = (!spec::has_namespace(config, LinuxNamespaceType::Mount))
        .then(|| std::fs::File::open(format!("/proc/{}/root", c.record.pid)).map(OwnedFd::from))
        .transpose()
        .map_err(os("opening the container's root"))?;
    let console = opts
        .console_socket
        .map(|p| crate::tty::connect(p).map_err(os(format!("connecting to {}", p.display()))))
        .transpose()?;
    if let Some(fd) = &pid_ns {
        namespaces::setns(fd, LinuxNamespaceType::Pid).map_err(os("joining the container's PID namespace"))?;
    }
    let (parent_end, child_end) = channel::pair().map_err(os("creating the sync socketpair"))?;
    let cgroup = c.cgroup()?;
    let unified = cgroup.unified_dir_fd();
    // SAFETY: the CLI is single-threaded.
    let (pid, born_in_unified) = unsafe { namespaces::spawn(0, unified.as_ref()) }.map_err(os("clone"))?;
    if pid == 0 {
        drop(parent_end);
        let finish = Finish {
            process: &opts.process,
            linux: config.linux().as_ref(),
            console: console.as_ref(),
            seccomp: filter.as_ref(),
        };
        // Still in the host's namespaces: move ourselves into the container's cgroups (fast path).
        let joined_cgroup = cgroup.join_self(born_in_unified).map_err(|e| InitError::Cgroup(spec::error_chain(&e)));
        let result = joined_cgroup.and_then(|()| child(&child_end, &joined, root.as_ref(), &finish));
        let err = match result {
            Ok(never) => match never {},
            Err(e) => e,
        };
        let _ = child_end.send(&Msg::Error(spec::error_chain(&err)));
        // SAFETY: leave without running the parent's destructors or atexit handlers.
        unsafe { libc::_exit(127) }
    }
    drop((child_end, console, joined, unified, root));
    let reap = |pid| {
        // SAFETY: killing and reaping our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    };
    parent_end.send(&Msg::Go(String::new())).map_err(os("sync: sending go"))?;
    // Ready, then EOF when exec closes the close-on-exec socket; an Error at any point.
    let mut ready = false;
    loop {
        match parent_end.recv().map_err(os("sync: receiving"))? {
            Some(Msg::Ready) => ready = true,
            Some(Msg::Error(message)) => {
                reap(pid);
                return Err(ContainerError::Init(message));
            }
            Some(other) => return Err(ContainerError::Init(format!("unexpected message {other:?}"))),
            None if ready => break,
            None => return Err(ContainerError::Init("exec helper exited before it was ready".into())),
        }
    }
    if let Some(path) = opts.pid_file {
        write_pid_file(path, pid)?;
    }
    if opts.detach {
        return Ok(0);
    }
    Ok(super::wait_forwarding(pid))
}

/// The exec helper, in the host's namespaces until it joins the container's.
fn child(
    channel: &Channel,
    joined: &[(LinuxNamespaceType, OwnedFd)],
    root: Option<&OwnedFd>,
    finish: &Finish<'_>,
) -> Result<std::convert::Infallible, InitError> {
    match channel.recv().map_err(InitError::Sync)? {
        Some(Msg::Go(_)) => {}
        Some(m) => return Err(InitError::Unexpected(m)),
        None => return Err(InitError::RuntimeGone),
    }
    // While still the host's root: a user namespace's root cannot write its /proc entries.
    crate::process::set_oom_score_adj(finish.process)?;
    for (typ, fd) in joined {
        namespaces::setns(fd, *typ).map_err(|source| InitError::Setns { typ: typ.to_string(), source })?;
    }
    if joined.iter().any(|(t, _)| *t == LinuxNamespaceType::User) {
        init::become_ns_root()?;
    }
    if let Some(root) = root {
        let sys = crate::syscall::Linux;
        use crate::syscall::Syscall;
        sys.fchdir(root.as_fd()).map_err(|source| InitError::Os { what: "entering the container's root", source })?;
        sys.chroot(Path::new("."))
            .map_err(|source| InitError::Os { what: "chroot into the container's root", source })?;
        sys.chdir(Path::new("/")).map_err(|source| InitError::Os { what: "chdir /", source })?;
    }
    init::finish(finish, channel, || Ok(()))
}
