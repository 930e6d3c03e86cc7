//! The container init: the child side of create. It runs in the new namespaces, builds the
//! root filesystem, drops privileges, waits for `start`, and execs the user's program. Every
//! failure is reported to the runtime over the sync channel before the child exits.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::channel::{Channel, Msg};
use crate::rootfs::{self, CgroupBind, Context};
use crate::syscall::{cvt, Linux, Syscall};
use crate::{hooks, process, seccomp, spec::error_chain};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("joining the container's cgroup: {0}")]
    Cgroup(String),
    #[error("sync with runtime")]
    Sync(#[source] std::io::Error),
    #[error("runtime went away during setup")]
    RuntimeGone,
    #[error("unexpected message {0:?} from runtime")]
    Unexpected(Msg),
    #[error("joining {typ} namespace")]
    Setns {
        typ: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Os {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(transparent)]
    Hook(#[from] hooks::HookError),
    #[error(transparent)]
    Process(#[from] process::ProcessError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error("writing sysctl {key}")]
    Sysctl {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up the terminal")]
    Tty(#[source] std::io::Error),
    #[error("waiting for start on the exec fifo")]
    Fifo(#[source] std::io::Error),
}

/// Everything the init needs, prepared by the runtime before clone.
pub struct InitArgs<'a> {
    pub spec: &'a Spec,
    pub rootfs: PathBuf,
    pub channel: Channel,
    /// O_PATH descriptor of the state directory holding `exec.fifo`; None when `run` starts at once.
    pub state_dir: Option<OwnedFd>,
    pub console: Option<OwnedFd>,
    pub cgroup_binds: Vec<CgroupBind>,
    pub joined: Vec<(LinuxNamespaceType, OwnedFd)>,
    pub seccomp: Option<seccomp::Filter>,
    /// The init moves itself into these cgroups (fast path); None when the runtime did it.
    pub join_cgroup: Option<(crate::cgroups::Cgroup, bool)>,
}

/// Runs the init; never returns.
pub fn run(args: InitArgs<'_>) -> ! {
    let err = match setup(&args) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = args.channel.send(&Msg::Error(error_chain(&err)));
    // SAFETY: _exit is always safe; we must not run the parent's atexit handlers.
    unsafe { libc::_exit(1) }
}

fn expect(channel: &Channel, want: fn(&Msg) -> bool) -> Result<Msg, InitError> {
    match channel.recv().map_err(InitError::Sync)? {
        Some(m) if want(&m) => Ok(m),
        Some(m) => Err(InitError::Unexpected(m)),
        None => Err(InitError::RuntimeGone),
    }
}

fn os(what: &'static str) -> impl FnOnce(std::io::Error) -> InitError {
    move |source| InitError::Os { what, source }
}

fn setup(args: &InitArgs<'_>) -> Result<std::convert::Infallible, InitError> {
    let spec = args.spec;
    let sys = Linux;
    let Msg::Go(state_json) = expect(&args.channel, |m| matches!(m, Msg::Go(_)))? else { unreachable!() };
    if let Some((cgroup, born_in_unified)) = &args.join_cgroup {
        cgroup.join_self(*born_in_unified).map_err(|e| InitError::Cgroup(error_chain(&e)))?;
    }
    // While still the host's root: a user namespace's root cannot write its /proc entries.
    process::set_oom_score_adj(spec.process().as_ref().expect("validated: process is present"))?;
    for (typ, fd) in &args.joined {
        crate::namespaces::setns(fd, *typ).map_err(|source| InitError::Setns { typ: typ.to_string(), source })?;
    }
    // Created by the clone, or joined by the runtime before it.
    let new_user = crate::spec::namespaces(spec).iter().any(|ns| ns.typ() == LinuxNamespaceType::User);
    if new_user {
        become_ns_root()?;
    }
    if crate::namespaces::wants_new(spec, LinuxNamespaceType::Cgroup) {
        crate::namespaces::unshare(libc::CLONE_NEWCGROUP).map_err(os("unsharing the cgroup namespace"))?;
    }
    // Without a mount namespace nothing is mounted (validated): the init only chroots.
    let own_mounts = crate::spec::has_namespace(spec, LinuxNamespaceType::Mount);
    if own_mounts {
        let ctx = Context { rootfs: &args.rootfs, cgroup_binds: &args.cgroup_binds, in_user_ns: new_user };
        rootfs::prepare(&sys, spec, &ctx)?;
    }
    let hooks = spec.hooks().as_ref();
    let has_runtime_hooks = hooks.is_some_and(|h| h.prestart().is_some() || h.create_runtime().is_some());
    if has_runtime_hooks {
        args.channel.send(&Msg::RunHooks).map_err(InitError::Sync)?;
        expect(&args.channel, |m| *m == Msg::Continue)?;
    }
    if let Some(list) = hooks.and_then(|h| h.create_container().as_ref()) {
        hooks::run_all("createContainer", list, state_json.as_bytes())?;
    }
    if own_mounts {
        rootfs::pivot(&sys, &args.rootfs)?;
    } else {
        // The host's /proc shows this process's network and IPC namespaces' sysctls.
        write_sysctls(spec)?;
        let readonly = spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false);
        rootfs::chroot(&sys, &args.rootfs, readonly)?;
    }
    let process = spec.process().as_ref().expect("validated: process is present");
    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        sys.sethostname(h).map_err(os("sethostname"))?;
    }
    if let Some(d) = spec.domainname().as_deref().filter(|h| !h.is_empty()) {
        sys.setdomainname(d).map_err(os("setdomainname"))?;
    }
    if own_mounts {
        write_sysctls(spec)?;
        // After the sysctls: /proc/sys is usually one of the read-only paths.
        rootfs::finalize(&sys, spec)?;
    }
    let process_args = Finish {
        process,
        linux: spec.linux().as_ref(),
        console: args.console.as_ref(),
        seccomp: args.seccomp.as_ref(),
    };
    finish(&process_args, &args.channel, || {
        if let Some(dir) = &args.state_dir {
            wait_for_start(dir)?;
        }
        if let Some(list) = hooks.and_then(|h| h.start_container().as_ref()) {
            hooks::run_all("startContainer", list, state_json.as_bytes())?;
        }
        Ok(())
    })
}

/// The spec's sysctls, through /proc/sys (whose net.* and IPC entries are those of the
/// writer's namespaces).
fn write_sysctls(spec: &Spec) -> Result<(), InitError> {
    for (key, value) in spec.linux().as_ref().and_then(|l| l.sysctl().as_ref()).into_iter().flatten() {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|source| InitError::Sysctl { key: key.clone(), source })?;
    }
    Ok(())
}

/// Becomes root of a user namespace just created or joined (its id maps are written).
pub(crate) fn become_ns_root() -> Result<(), InitError> {
    // SAFETY: plain integer syscalls.
    cvt(unsafe { libc::setresgid(0, 0, 0) }).map_err(os("setresgid 0 in the user namespace"))?;
    // SAFETY: plain integer syscalls.
    cvt(unsafe { libc::setresuid(0, 0, 0) }).map_err(os("setresuid 0 in the user namespace"))?;
    Ok(())
}

/// What [`finish`] turns the calling process into.
pub(crate) struct Finish<'a> {
    pub process: &'a oci_spec::runtime::Process,
    pub linux: Option<&'a oci_spec::runtime::Linux>,
    pub console: Option<&'a OwnedFd>,
    pub seccomp: Option<&'a seccomp::Filter>,
}

/// The steps the init and `exec` share once namespaces and mounts are in place: terminal,
/// limits, seccomp, identity, capabilities, no_new_privs and cwd; then the runtime is told we
/// are ready, `after_ready` runs (the init waits for `start` there), and the program is exec'd.
pub(crate) fn finish(
    f: &Finish<'_>,
    channel: &Channel,
    after_ready: impl FnOnce() -> Result<(), InitError>,
) -> Result<std::convert::Infallible, InitError> {
    let process = f.process;
    if let Some(console) = f.console {
        let size = process.console_size().map(|b| (b.height() as u16, b.width() as u16));
        crate::tty::setup(console, size).map_err(InitError::Tty)?;
    }
    process::set_rlimits(process)?;
    process::set_personality_and_ioprio(f.linux, process)?;
    let nnp = process.no_new_privileges().unwrap_or(false);
    if let (Some(filter), false) = (f.seccomp, nnp) {
        // Without no_new_privs the filter needs CAP_SYS_ADMIN: install it before dropping caps.
        seccomp::install(filter)?;
    }
    process::set_identity_and_caps(process)?;
    if nnp {
        process::set_no_new_privs()?;
    }
    process::set_cwd_and_umask(process)?;
    let program = process::resolve(process)?;
    channel.send(&Msg::Ready).map_err(InitError::Sync)?;
    after_ready()?;
    if let (Some(filter), true) = (f.seccomp, nnp) {
        seccomp::install(filter)?;
    }
    Err(process::exec(process, program).into())
}

/// Blocks until `start` opens the fifo for reading, then tells it we are alive.
fn wait_for_start(dir: &OwnedFd) -> Result<(), InitError> {
    // SAFETY: dir is an open directory descriptor; the name is a valid C string.
    let fd = cvt(unsafe { libc::openat(dir.as_raw_fd(), c"exec.fifo".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) })
        .map_err(InitError::Fifo)?;
    // SAFETY: openat succeeded, so we own the descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: writing one byte from a static buffer.
    cvt(unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) } as libc::c_int).map_err(InitError::Fifo)?;
    Ok(())
}
