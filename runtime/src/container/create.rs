//! `create`: validate the bundle, make the cgroup, clone the init into its namespaces and
//! drive the setup handshake. A failure at any step removes what earlier steps made.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxNamespaceType;

use super::{os, write_pid_file, ContainerError};
use crate::cgroups::{self, Cgroup, Layout};
use crate::channel::{self, Msg};
use crate::init::{self, InitArgs};
use crate::state::{self, Record, Root, Status};
use crate::{hooks, namespaces, seccomp, spec};

pub struct CreateOptions<'a> {
    pub root: &'a Root,
    pub id: &'a str,
    pub bundle: &'a Path,
    pub pid_file: Option<&'a Path>,
    pub console_socket: Option<&'a Path>,
    /// `create` waits for `start`; `run` lets the init exec as soon as it is ready.
    pub wait_for_start: bool,
}

pub struct Created {
    pub pid: i32,
    pub dir: PathBuf,
    pub record: Record,
    pub cgroup: Cgroup,
}

/// Undoes a partial create when dropped, unless disarmed.
struct Rollback {
    dir: Option<PathBuf>,
    cgroup: Option<Cgroup>,
    pid: Option<i32>,
}

impl Drop for Rollback {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
        if let Some(cg) = &self.cgroup {
            if let Err(e) = cg.destroy() {
                tracing::warn!(error = %crate::spec::error_chain(&e), "rollback: removing cgroup");
            }
        }
        if let Some(dir) = &self.dir {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                tracing::warn!(error = %e, dir = %dir.display(), "rollback: removing state dir");
            }
        }
    }
}

impl Rollback {
    fn disarm(mut self) {
        self.dir = None;
        self.cgroup = None;
        self.pid = None;
    }
}

pub fn create(opts: &CreateOptions<'_>) -> Result<Created, ContainerError> {
    let bundle = std::fs::canonicalize(opts.bundle).map_err(os(format!("bundle {}", opts.bundle.display())))?;
    let spec = spec::load(&bundle)?;
    spec::validate(&spec, &bundle)?;
    let process = spec.process().as_ref().expect("validated");
    if process.terminal().unwrap_or(false) && opts.console_socket.is_none() {
        return Err(ContainerError::Invalid("process.terminal is true: --console-socket is required".into()));
    }
    if process.apparmor_profile().as_ref().is_some_and(|p| !p.is_empty()) {
        tracing::warn!("process.apparmorProfile is ignored: this host has no AppArmor support in berth-runtime");
    }
    if process.selinux_label().as_ref().is_some_and(|p| !p.is_empty()) {
        tracing::warn!("process.selinuxLabel is ignored: this host has no SELinux support in berth-runtime");
    }
    let filter = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()).map(seccomp::compile_cached).transpose()?;
    let rootfs = spec::rootfs(&spec, &bundle);

    let dir = opts.root.create_dir(opts.id)?;
    let mut rollback = Rollback { dir: Some(dir.clone()), cgroup: None, pid: None };

    let linux = spec.linux().as_ref();
    let cgroup_path = cgroups::resolve_path(linux.and_then(|l| l.cgroups_path().as_deref()), opts.id);
    let cgroup = Cgroup::new(Layout::cached()?, cgroup_path.clone());
    cgroup.create()?;
    rollback.cgroup = Some(cgroup.clone());
    if let Some(res) = linux.and_then(|l| l.resources().as_ref()) {
        let mut res = res.clone();
        // Devices listed in linux.devices are allowed by the device cgroup too.
        if let (Some(rules), Some(devs)) = (res.devices().clone(), linux.and_then(|l| l.devices().as_ref())) {
            let mut rules = rules;
            rules.extend(devs.iter().map(oci_spec::runtime::LinuxDeviceCgroup::from));
            res.set_devices(Some(rules));
        }
        for warning in cgroup.apply(&res)? {
            tracing::warn!("{warning}");
        }
    }

    let (parent_end, child_end) = channel::pair().map_err(os("creating the sync socketpair"))?;
    let console = opts
        .console_socket
        .map(|p| crate::tty::connect(p).map_err(os(format!("connecting to console socket {}", p.display()))))
        .transpose()?;
    let namespaces::Joined { pid: pid_ns, others: joined } =
        namespaces::open_joined(namespaces::spec_paths(&spec)).map_err(os("opening namespaces to join"))?;
    let state_dir = if opts.wait_for_start {
        make_fifo(&dir.join(state::EXEC_FIFO))?;
        Some(open_path(&dir)?)
    } else {
        None
    };
    // A joined user namespace is entered here, before clone, so that the namespaces the
    // init creates are owned by it (a pod's containers share its infra's user namespace).
    // Host files stay writable: the credentials keep host uid 0 as owner.
    let mut joined = joined;
    let joined_user = joined.iter().position(|(t, _)| *t == LinuxNamespaceType::User).map(|i| joined.remove(i).1);
    if let Some(fd) = &joined_user {
        namespaces::setns(fd, LinuxNamespaceType::User).map_err(os("joining the user namespace"))?;
    }
    if let Some(fd) = &pid_ns {
        namespaces::setns(fd, LinuxNamespaceType::Pid).map_err(os("joining the PID namespace"))?;
    }

    let new_user = namespaces::wants_new(&spec, LinuxNamespaceType::User);
    let in_user_ns = new_user || joined_user.is_some();
    let unified = cgroup.unified_dir_fd();
    // SAFETY: the runtime is single-threaded here (the CLI never starts threads).
    let (pid, born_in_unified) =
        unsafe { namespaces::spawn(namespaces::clone_flags(&spec), unified.as_ref()) }.map_err(os("clone"))?;
    if pid == 0 {
        drop(parent_end);
        std::mem::forget(rollback);
        init::run(InitArgs {
            spec: &spec,
            rootfs,
            channel: child_end,
            state_dir,
            console,
            cgroup_binds: cgroup.binds(),
            joined,
            seccomp: filter,
            // In a user namespace the init cannot write the host's cgroup files.
            join_cgroup: (!in_user_ns).then(|| (cgroup.clone(), born_in_unified)),
        });
    }
    rollback.pid = Some(pid);
    drop((child_end, console, state_dir, joined, unified));

    if new_user {
        namespaces::write_id_maps(pid, &spec).map_err(os("writing uid/gid maps"))?;
    }
    if in_user_ns {
        cgroup.add(pid, born_in_unified)?;
    }
    let mut record = Record {
        id: opts.id.to_owned(),
        status: Status::Creating,
        pid,
        pid_start: state::process_start_time(pid).unwrap_or(0),
        bundle: bundle.clone(),
        rootfs,
        cgroup_path,
        created: state::now_rfc3339(),
        owner: String::new(),
        config: spec,
    };
    state::save(&dir, &record)?;
    let state_json = serde_json::to_string(&record.oci_state(Status::Creating)).unwrap_or_default();
    parent_end.send(&Msg::Go(state_json.clone())).map_err(os("sync: sending go"))?;
    loop {
        match parent_end.recv().map_err(os("sync: receiving"))? {
            Some(Msg::RunHooks) => {
                if let Some(h) = record.config.hooks() {
                    hooks::run_all("prestart", h.prestart().as_deref().unwrap_or(&[]), state_json.as_bytes())?;
                    hooks::run_all(
                        "createRuntime",
                        h.create_runtime().as_deref().unwrap_or(&[]),
                        state_json.as_bytes(),
                    )?;
                }
                parent_end.send(&Msg::Continue).map_err(os("sync: sending continue"))?;
            }
            Some(Msg::Ready) => break,
            Some(Msg::Error(message)) => return Err(ContainerError::Init(message)),
            Some(other) => return Err(ContainerError::Init(format!("unexpected message {other:?}"))),
            None => return Err(ContainerError::Init("the init exited before it was ready".into())),
        }
    }
    record.status = if opts.wait_for_start { Status::Created } else { Status::Running };
    state::save(&dir, &record)?;
    if let Some(path) = opts.pid_file {
        write_pid_file(path, pid)?;
    }
    rollback.disarm();
    Ok(Created { pid, dir, record, cgroup })
}

fn make_fifo(path: &Path) -> Result<(), ContainerError> {
    let c = crate::syscall::cstr(path).map_err(os("fifo path"))?;
    // SAFETY: c is a valid C string.
    crate::syscall::cvt(unsafe { libc::mkfifo(c.as_ptr(), 0o622) })
        .map_err(os(format!("mkfifo {}", path.display())))?;
    // mkfifo honours the umask; the init may run as any uid and must be able to open it.
    // SAFETY: c is a valid C string.
    crate::syscall::cvt(unsafe { libc::chmod(c.as_ptr(), 0o622) }).map_err(os(format!("chmod {}", path.display())))?;
    Ok(())
}

fn open_path(dir: &Path) -> Result<OwnedFd, ContainerError> {
    let c = crate::syscall::cstr(dir).map_err(os("state dir path"))?;
    // SAFETY: c is a valid C string.
    let fd = crate::syscall::cvt(unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) })
        .map_err(os(format!("opening {}", dir.display())))?;
    // SAFETY: open succeeded, so we own the descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
