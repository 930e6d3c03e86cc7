//! `delete`: remove a stopped container's cgroup and state, then run poststop hooks. With
//! `force`, a live container is killed first; a created one is always killed (as runc does).

use std::time::{Duration, Instant};

use super::{ContainerError, Loaded};
use crate::cgroups::Cgroup;
use crate::state::{self, Root, Status};

pub fn delete(root: &Root, id: &str, force: bool) -> Result<(), ContainerError> {
    let c = match Loaded::load(root, id) {
        Ok(c) => c,
        Err(ContainerError::State(state::StateError::NotFound { .. })) if force => return Ok(()),
        Err(e) => return Err(e),
    };
    let cgroup = c.cgroup()?;
    delete_loaded(&c, &cgroup, force)
}

/// [`delete`] for a caller that already holds the record and cgroup (`run` after its wait).
pub fn delete_loaded(c: &Loaded, cgroup: &Cgroup, force: bool) -> Result<(), ContainerError> {
    let id = &c.record.id;
    match c.status {
        Status::Stopped | Status::Creating => {}
        Status::Created => kill_and_wait(c, cgroup)?,
        Status::Running | Status::Paused if force => kill_and_wait(c, cgroup)?,
        status => return Err(ContainerError::WrongStatus { id: id.clone(), status, op: "delete (use --force)" }),
    }
    // Leftover processes outside the PID namespace's reach (or without one) die too.
    if !cgroup.procs()?.is_empty() {
        kill_and_wait(c, cgroup)?;
    }
    cgroup.destroy()?;
    if let Some(list) = c.record.config.hooks().as_ref().and_then(|h| h.poststop().clone()) {
        let stopped = serde_json::to_vec(&c.record.oci_state(Status::Stopped)).unwrap_or_default();
        if let Err(e) = crate::hooks::run_all("poststop", &list, &stopped) {
            tracing::warn!(error = %crate::spec::error_chain(&e), "poststop hook failed");
        }
    }
    std::fs::remove_dir_all(&c.dir).map_err(super::os(format!("removing {}", c.dir.display())))
}

fn kill_and_wait(c: &Loaded, cgroup: &Cgroup) -> Result<(), ContainerError> {
    cgroup.signal_all(libc::SIGKILL)?;
    if c.record.pid > 0 && state::process_alive(c.record.pid, c.record.pid_start) {
        // SAFETY: the PID was just checked to be the container's init.
        unsafe { libc::kill(c.record.pid, libc::SIGKILL) };
    }
    if cgroup.is_frozen() {
        cgroup.set_frozen(false)?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let init_gone = !state::process_alive(c.record.pid, c.record.pid_start);
        if init_gone && cgroup.procs()?.is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err(ContainerError::Init(format!("processes of {} did not exit after SIGKILL", c.record.id)))
}
