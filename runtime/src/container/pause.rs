//! `pause` and `resume`: freeze and thaw the container's cgroup.

use super::{ContainerError, Loaded};
use crate::state::{self, Root, Status};

pub fn pause(root: &Root, id: &str) -> Result<(), ContainerError> {
    set(root, id, true)
}

pub fn resume(root: &Root, id: &str) -> Result<(), ContainerError> {
    set(root, id, false)
}

fn set(root: &Root, id: &str, frozen: bool) -> Result<(), ContainerError> {
    let mut c = Loaded::load(root, id)?;
    let (from, op, to) =
        if frozen { (Status::Running, "pause", Status::Paused) } else { (Status::Paused, "resume", Status::Running) };
    c.require(&[from], op)?;
    c.cgroup()?.set_frozen(frozen)?;
    c.record.status = to;
    state::save(&c.dir, &c.record)?;
    Ok(())
}
