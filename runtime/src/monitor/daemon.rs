//! The monitor's event loop: one thread, `poll(2)` over the control socket, its connections,
//! container output pipes and a signalfd for SIGCHLD. Containers are created in a child that
//! shares the monitor's memory (see [`super::vfork`]; the runtime library may join a PID
//! namespace for its children, which must not stick to the monitor) and reparent to the
//! monitor, a child subreaper, when that child exits.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::container::{self, ContainerError, CreateOptions, Loaded};
use crate::state::Root;

use super::fds::{child_stdio, drain_signalfd, pipe, pollfd, set_nonblocking};
use super::logs::{LineSplitter, LogFile, Stream};
use super::proto::{now_nanos, Exit, Request, Response};
use super::{exit_path, write_atomic, SOCKET};

/// Output kept per stream of an ExecSync; the rest is dropped.
const EXEC_OUTPUT_CAP: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

pub struct Options {
    /// The pod directory: socket, exit records.
    pub dir: PathBuf,
    /// berth-runtime's state root.
    pub runtime_root: PathBuf,
}

pub(super) struct Pipe {
    fd: OwnedFd,
    stream: Stream,
    splitter: LineSplitter,
}

pub(super) struct Container {
    pid: i32,
    pipes: Vec<Pipe>,
    log: Option<LogFile>,
    /// Write end of the container's stdin, kept for attaches.
    pub(super) stdin: Option<OwnedFd>,
    pub(super) stdin_once: bool,
    /// On a terminal: `stdin` is a duplicate of the pty master, and output comes on one stream.
    pub(super) tty: bool,
    /// Write ends of attached callers' stdout and stderr copies.
    pub(super) attached: Vec<[Option<OwnedFd>; 2]>,
    pub(super) exit: Option<Exit>,
    waiters: Vec<UnixStream>,
}

pub(super) struct ExecJob {
    pub(super) conn: UnixStream,
    pub(super) error: OwnedFd,
    pub(super) out: [(Option<OwnedFd>, Vec<u8>); 2],
    pub(super) deadline: Option<Instant>,
    /// The caller holds the stdio (Exec, not ExecSync): answer with the exit code only.
    pub(super) streaming: bool,
}

pub(super) struct Monitor {
    pub(super) dir: PathBuf,
    pub(super) root: Root,
    pub(super) containers: HashMap<String, Container>,
    pub(super) execs: HashMap<i32, ExecJob>,
    /// Exits reaped before their container was registered.
    early_exits: HashMap<i32, i32>,
    shutting_down: bool,
    /// This process holds the pod's UTS and IPC namespaces (there is no infra container).
    held: bool,
    /// Names console sockets uniquely.
    pub(super) counter: u64,
}

/// Binds the control socket (before the caller detaches, so the shim can connect at once).
pub fn bind(dir: &Path) -> Result<UnixListener, DaemonError> {
    std::fs::create_dir_all(dir.join("exits")).map_err(io(format!("creating {}", dir.display())))?;
    let path = dir.join(SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(io(format!("binding {}", path.display())))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io("chmod socket"))?;
    listener.set_nonblocking(true).map_err(io("nonblocking socket"))?;
    Ok(listener)
}

/// Runs the loop until a Shutdown request once no container is running.
pub fn serve(opts: Options, listener: UnixListener) -> Result<(), DaemonError> {
    // SAFETY: prctl with integer arguments; sigprocmask on a local set.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let sigfd = sigchld_fd()?;
    let mut m = Monitor {
        dir: opts.dir,
        root: Root::new(opts.runtime_root),
        containers: HashMap::new(),
        execs: HashMap::new(),
        early_exits: HashMap::new(),
        shutting_down: false,
        held: false,
        counter: 0,
    };
    loop {
        if m.shutting_down && m.containers.values().all(|c| c.exit.is_some()) && m.execs.is_empty() {
            tracing::info!("shutting down");
            return Ok(());
        }
        m.poll_once(&listener, &sigfd)?;
    }
}

fn sigchld_fd() -> Result<OwnedFd, DaemonError> {
    // SAFETY: building and installing a signal mask; signalfd returns a new fd we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(DaemonError::Io { what: "signalfd".into(), source: std::io::Error::last_os_error() });
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

enum Slot {
    Listener,
    Signal,
    Pipe(String, RawFd),
    ExecOut(i32, usize),
    ExecConn(i32),
}

impl Monitor {
    fn poll_once(&mut self, listener: &UnixListener, sigfd: &OwnedFd) -> Result<(), DaemonError> {
        let mut fds = vec![pollfd(listener.as_raw_fd()), pollfd(sigfd.as_raw_fd())];
        let mut slots = vec![Slot::Listener, Slot::Signal];
        for (id, c) in &self.containers {
            for p in &c.pipes {
                fds.push(pollfd(p.fd.as_raw_fd()));
                slots.push(Slot::Pipe(id.clone(), p.fd.as_raw_fd()));
            }
        }
        for (pid, job) in &self.execs {
            if job.streaming {
                fds.push(pollfd(job.conn.as_raw_fd()));
                slots.push(Slot::ExecConn(*pid));
            }
            for (i, (fd, _)) in job.out.iter().enumerate() {
                if let Some(fd) = fd {
                    fds.push(pollfd(fd.as_raw_fd()));
                    slots.push(Slot::ExecOut(*pid, i));
                }
            }
        }
        let timeout = self
            .execs
            .values()
            .filter_map(|j| j.deadline)
            .min()
            .map(|d| d.saturating_duration_since(Instant::now()).as_millis().min(60_000) as i32)
            .unwrap_or(-1);
        // SAFETY: fds is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(DaemonError::Io { what: "poll".into(), source: e });
        }
        for (pfd, slot) in fds.iter().zip(slots) {
            if pfd.revents == 0 {
                continue;
            }
            match slot {
                Slot::Listener => self.accept(listener),
                Slot::Signal => {
                    drain_signalfd(sigfd);
                    self.reap();
                }
                Slot::Pipe(id, fd) => self.read_pipe(&id, fd),
                Slot::ExecOut(pid, i) => {
                    if let Some(job) = self.execs.get_mut(&pid) {
                        read_exec_output(&mut job.out[i]);
                    }
                }
                Slot::ExecConn(pid) => self.exec_caller_gone(pid),
            }
        }
        self.expire_execs();
        Ok(())
    }

    fn accept(&mut self, listener: &UnixListener) {
        while let Ok((conn, _)) = listener.accept() {
            // Requests are one short line: read it blocking, with a bound on the wait.
            let _ = conn.set_nonblocking(false);
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut line = Vec::new();
            let mut reader = std::io::BufReader::new(&conn);
            if std::io::BufRead::read_until(&mut reader, b'\n', &mut line).is_err() {
                continue;
            }
            match serde_json::from_slice::<Request>(&line) {
                Ok(req) => self.handle(req, conn),
                Err(e) => respond(conn, &Response::Error { message: format!("bad request: {e}") }),
            }
        }
    }

    fn handle(&mut self, req: Request, conn: UnixStream) {
        tracing::debug!(?req, "request");
        let reply = match req {
            Request::Ping => Response::Ok,
            Request::Create { id, bundle, log_path, stdin, stdin_once, tty } => {
                self.create(&id, &bundle, log_path.as_deref(), stdin, stdin_once, tty)
            }
            Request::Exec { id, process, tty, stdin } => return self.exec_stream(&id, *process, tty, stdin, conn),
            Request::Attach { id, stdin, stdout, stderr } => return self.attach(&id, [stdin, stdout, stderr], conn),
            Request::Hold { bundle } => self.hold(&bundle),
            Request::Start { id } => match container::start(&self.root, &id) {
                Ok(()) => Response::Ok,
                Err(e) => Response::Error { message: crate::spec::error_chain(&e) },
            },
            Request::ExecSync { id, process, timeout_ms } => return self.exec_sync(&id, *process, timeout_ms, conn),
            Request::Wait { id } => match self.containers.get_mut(&id) {
                Some(c) if c.exit.is_none() => return c.waiters.push(conn),
                Some(c) => Response::Exited(c.exit.clone().expect("checked")),
                None => match super::read_exit(&self.dir, &id) {
                    Some(exit) => Response::Exited(exit),
                    None => Response::Error { message: format!("container {id} is not known to this pod's monitor") },
                },
            },
            Request::ReopenLog { id } => match self.containers.get_mut(&id).and_then(|c| c.log.as_mut()) {
                Some(log) => match log.reopen() {
                    Ok(()) => Response::Ok,
                    Err(e) => Response::Error { message: format!("reopening log: {e}") },
                },
                None => Response::Error { message: format!("container {id} has no open log") },
            },
            Request::Forget { id } => {
                self.containers.remove(&id);
                let _ = std::fs::remove_file(exit_path(&self.dir, &id));
                Response::Ok
            }
            Request::Shutdown => {
                self.shutting_down = true;
                Response::Ok
            }
        };
        respond(conn, &reply);
    }

    /// Holds the pod's namespaces in this process (see [`container::hold`]); once, before any
    /// container. The answer names this process as the one whose namespaces the pod's are.
    fn hold(&mut self, bundle: &Path) -> Response {
        if self.held || !self.containers.is_empty() {
            return Response::Error {
                message: "the pod's namespaces can be held only once, before any container".into(),
            };
        }
        let held =
            crate::spec::load(bundle).map_err(ContainerError::from).and_then(|spec| container::hold(&spec, bundle));
        match held {
            Ok(()) => {
                self.held = true;
                Response::Created { pid: std::process::id() as i32 }
            }
            Err(e) => Response::Error { message: crate::spec::error_chain(&e) },
        }
    }

    fn create(
        &mut self,
        id: &str,
        bundle: &Path,
        log_path: Option<&Path>,
        stdin: bool,
        stdin_once: bool,
        tty: bool,
    ) -> Response {
        if self.containers.contains_key(id) {
            return Response::Error { message: format!("container {id} already exists in this pod") };
        }
        let spawned = if tty { self.spawn_create_tty(id, bundle, stdin) } else { self.spawn_create(id, bundle, stdin) };
        match spawned {
            Ok((pid, pipes, stdin_w)) => {
                let log = log_path.and_then(|p| match LogFile::open(p) {
                    Ok(l) => Some(l),
                    Err(e) => {
                        tracing::warn!(path = %p.display(), error = %e, "opening container log");
                        None
                    }
                });
                let mut c = Container {
                    pid,
                    pipes,
                    log,
                    stdin: stdin_w,
                    stdin_once,
                    tty,
                    attached: Vec::new(),
                    exit: None,
                    waiters: Vec::new(),
                };
                if let Some(status) = self.early_exits.remove(&pid) {
                    self.record_exit(id, &mut c, status);
                }
                self.containers.insert(id.to_string(), c);
                Response::Created { pid }
            }
            Err(message) => Response::Error { message },
        }
    }

    /// Creates a container with pipes for its stdio: output is read into the log, the write end
    /// of its stdin (when asked) kept for attaches.
    fn spawn_create(
        &mut self,
        id: &str,
        bundle: &Path,
        stdin: bool,
    ) -> Result<(i32, Vec<Pipe>, Option<OwnedFd>), String> {
        let (out_r, out_w) = pipe().map_err(|e| format!("pipe: {e}"))?;
        let (err_r, err_w) = pipe().map_err(|e| format!("pipe: {e}"))?;
        let (in_r, in_w) = if stdin {
            let (r, w) = pipe().map_err(|e| format!("pipe: {e}"))?;
            (r, Some(w))
        } else {
            (super::fds::null().map_err(|e| format!("/dev/null: {e}"))?, None)
        };
        let pid = self.fork_create(id, bundle, [&in_r, &out_w, &err_w], None)?;
        drop((out_w, err_w, in_r));
        set_nonblocking(&out_r);
        set_nonblocking(&err_r);
        let pipes = vec![
            Pipe { fd: out_r, stream: Stream::Stdout, splitter: LineSplitter::default() },
            Pipe { fd: err_r, stream: Stream::Stderr, splitter: LineSplitter::default() },
        ];
        Ok((pid, pipes, in_w))
    }

    /// Creates a container on a terminal (`process.terminal`): the runtime hands the pty master
    /// over a console socket. Everything the container writes arrives on the master (logged as
    /// stdout); attaches get a duplicate of the master to type into and resize.
    fn spawn_create_tty(
        &mut self,
        id: &str,
        bundle: &Path,
        stdin: bool,
    ) -> Result<(i32, Vec<Pipe>, Option<OwnedFd>), String> {
        self.counter += 1;
        let path = self.dir.join(format!("c{}.sock", self.counter));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(|e| format!("console socket {}: {e}", path.display()))?;
        let null = super::fds::null().map_err(|e| format!("/dev/null: {e}"))?;
        // The runtime sends the master before its create returns; the socket buffers it.
        let created = self.fork_create(id, bundle, [&null, &null, &null], Some(&path));
        let master = created.as_ref().map_err(Clone::clone).and_then(|_| super::exec::receive_pty(&listener));
        let _ = std::fs::remove_file(&path);
        let pid = created?;
        let master = match master {
            Ok(m) => m,
            Err(e) => {
                let _ = container::kill(&self.root, id, libc::SIGKILL, false);
                return Err(e);
            }
        };
        let pty = if stdin { Some(master.try_clone().map_err(|e| format!("dup pty: {e}"))?) } else { None };
        set_nonblocking(&master);
        Ok((pid, vec![Pipe { fd: master, stream: Stream::Stdout, splitter: LineSplitter::default() }], pty))
    }

    /// Forks a child that runs the runtime's create with the given stdio (or console socket),
    /// waits for it and returns the container's pid.
    fn fork_create(
        &mut self,
        id: &str,
        bundle: &Path,
        [in_r, out_w, err_w]: [&OwnedFd; 3],
        console: Option<&Path>,
    ) -> Result<i32, String> {
        let (res_r, res_w) = pipe().map_err(|e| format!("pipe: {e}"))?;
        // A fresh stack each time: unmapped once the child is gone, so the monitor (one per
        // pod, living as long as it) does not keep the pages the create touched.
        let stack = super::vfork::ChildStack::new().map_err(|e| format!("mapping a stack for create: {e}"))?;
        let root = &self.root;
        let res_w_raw = res_w.as_raw_fd();
        let run = move || {
            // The child's own descriptor table: stdio for the init, the result pipe as fd 3.
            // SAFETY: res_w_raw is the parent's open descriptor, copied into this child's table;
            // this child owns its copy.
            let res_w = child_stdio(in_r, out_w, err_w, unsafe { OwnedFd::from_raw_fd(res_w_raw) });
            let opts =
                CreateOptions { root, id, bundle, pid_file: None, console_socket: console, wait_for_start: true };
            let (code, msg) = match container::create(&opts) {
                Ok(created) => (0, created.pid.to_string()),
                Err(e) => (1, crate::spec::error_chain(&e)),
            };
            let mut f = std::fs::File::from(res_w);
            let _ = f.write_all(msg.as_bytes());
            code
        };
        // SAFETY: the monitor is single-threaded; the child only calls into the runtime library
        // (itself written for a single-threaded caller), frees what it allocates, and exits.
        let child = unsafe { super::vfork::spawn_shared(&stack, run) }.map_err(|e| format!("clone: {e}"))?;
        drop((res_w, stack));
        // The child parsed the spec, compiled its seccomp profile into this process's cache
        // (so the pod's other containers and every exec child forked from here find it) and
        // set up the container, all in this heap: give back what it freed (a monitor lives as
        // long as its pod).
        // SAFETY: malloc_trim only releases free heap memory.
        unsafe { libc::malloc_trim(0) };
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(child, &mut status, 0) };
        // The container's init still holds the write end until it execs: read what the
        // (exited) child wrote without waiting for end-of-file.
        set_nonblocking(&res_r);
        let mut msg = String::new();
        let _ = std::fs::File::from(res_r).read_to_string(&mut msg);
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            return Err(if msg.is_empty() { format!("create of {id} failed (status {status})") } else { msg });
        }
        msg.trim().parse().map_err(|_| format!("create of {id}: bad pid {msg:?}"))
    }

    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: reaping any child; status is a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            if let Some(mut job) = self.execs.remove(&pid) {
                job.out.iter_mut().for_each(read_exec_output);
                let mut err = String::new();
                set_nonblocking(&job.error);
                let _ = std::fs::File::from(job.error).read_to_string(&mut err);
                let [(_, stdout), (_, stderr)] = job.out;
                let code =
                    if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
                let reply = if job.streaming && err.is_empty() {
                    Response::ExecExited { exit_code: code }
                } else if err.is_empty() {
                    Response::ExecResult { exit_code: code, stdout, stderr, timed_out: false }
                } else {
                    Response::Error { message: err }
                };
                respond(job.conn, &reply);
                continue;
            }
            let id = self.containers.iter().find(|(_, c)| c.pid == pid && c.exit.is_none()).map(|(id, _)| id.clone());
            match id {
                Some(id) => {
                    let mut c = self.containers.remove(&id).expect("found above");
                    self.record_exit(&id, &mut c, status);
                    self.containers.insert(id, c);
                }
                None => {
                    self.early_exits.insert(pid, status);
                }
            }
        }
    }

    /// Drains the output, writes `exit.json`, then tells the waiters.
    fn record_exit(&mut self, id: &str, c: &mut Container, status: i32) {
        for p in &mut c.pipes {
            drain_pipe(p, c.log.as_mut(), &mut c.attached, false);
        }
        // Attached callers see end-of-file: the container is gone.
        c.attached.clear();
        let oom_killed = libc::WIFSIGNALED(status)
            && libc::WTERMSIG(status) == libc::SIGKILL
            && Loaded::load(&self.root, id)
                .and_then(|l| l.cgroup())
                .map(|cg| cg.stats().memory.oom_kills > 0)
                .unwrap_or(false);
        let exit = Exit::from_wait_status(c.pid, status, now_nanos(), oom_killed);
        let bytes = serde_json::to_vec(&exit).unwrap_or_default();
        if let Err(e) = write_atomic(&exit_path(&self.dir, id), &bytes) {
            tracing::error!(id, error = %e, "writing the exit record");
        }
        tracing::info!(id, exit_code = exit.exit_code, oom_killed, "container exited");
        for w in c.waiters.drain(..) {
            respond(w, &Response::Exited(exit.clone()));
        }
        c.exit = Some(exit);
    }

    /// Copies what a container wrote on one pipe (named by its fd: an earlier EOF in the same
    /// poll round may have removed another pipe of the container) into its log.
    fn read_pipe(&mut self, id: &str, fd: RawFd) {
        let Some(c) = self.containers.get_mut(id) else { return };
        let Some(i) = c.pipes.iter().position(|p| p.fd.as_raw_fd() == fd) else { return };
        if drain_pipe(&mut c.pipes[i], c.log.as_mut(), &mut c.attached, true) {
            c.pipes.remove(i);
        }
    }
}

/// Reads what is available into the log and every attached copy; returns true at end of file.
fn drain_pipe(
    p: &mut Pipe,
    mut log: Option<&mut LogFile>,
    attached: &mut Vec<[Option<OwnedFd>; 2]>,
    once: bool,
) -> bool {
    let mut buf = [0u8; 64 * 1024];
    loop {
        // SAFETY: reading into a local buffer of the given length.
        let n = unsafe { libc::read(p.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        // A terminal's master reads EIO once every holder of its slave side has gone.
        let eof = n == 0 || (n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EIO));
        if eof {
            if let Some(log) = log.as_deref_mut() {
                log.write_records(&mut p.splitter, p.stream, &[], true);
            }
            return true;
        }
        if n < 0 {
            return false;
        }
        if let Some(log) = log.as_deref_mut() {
            log.write_records(&mut p.splitter, p.stream, &buf[..n as usize], false);
        }
        super::attach::tee(attached, p.stream, &buf[..n as usize]);
        if once {
            return false;
        }
    }
}

pub(super) fn read_exec_output(slot: &mut (Option<OwnedFd>, Vec<u8>)) {
    let Some(fd) = &slot.0 else { return };
    let mut buf = [0u8; 64 * 1024];
    loop {
        // SAFETY: reading into a local buffer of the given length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            slot.0 = None;
            return;
        }
        if n < 0 {
            return;
        }
        let room = EXEC_OUTPUT_CAP.saturating_sub(slot.1.len());
        slot.1.extend_from_slice(&buf[..(n as usize).min(room)]);
    }
}

pub(super) fn respond(mut conn: UnixStream, reply: &Response) {
    let mut line = serde_json::to_vec(reply).unwrap_or_default();
    line.push(b'\n');
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    if let Err(e) = conn.write_all(&line) {
        tracing::warn!(error = %e, "answering the shim");
    }
}
