//! `update`: change a live container's cgroup resources and remember them.

use oci_spec::runtime::LinuxResources;

use super::{ContainerError, Loaded};
use crate::state::{self, Root, Status};

pub fn update(root: &Root, id: &str, resources: &LinuxResources) -> Result<Vec<String>, ContainerError> {
    let mut c = Loaded::load(root, id)?;
    c.require(&[Status::Created, Status::Running, Status::Paused], "update")?;
    crate::cgroups::values::validate(resources)
        .map_err(|(field, reason)| ContainerError::Invalid(format!("resources.{field}: {reason}")))?;
    let warnings = c.cgroup()?.apply(resources)?;
    let merged = merge(c.record.config.linux().as_ref().and_then(|l| l.resources().clone()), resources);
    let mut linux = c.record.config.linux().clone().unwrap_or_default();
    linux.set_resources(Some(merged));
    c.record.config.set_linux(Some(linux));
    state::save(&c.dir, &c.record)?;
    Ok(warnings)
}

/// Overlays the set sections of `update` on `current`.
fn merge(current: Option<LinuxResources>, update: &LinuxResources) -> LinuxResources {
    let mut out = current.unwrap_or_default();
    if update.memory().is_some() {
        out.set_memory(*update.memory());
    }
    if update.cpu().is_some() {
        out.set_cpu(update.cpu().clone());
    }
    if update.pids().is_some() {
        out.set_pids(*update.pids());
    }
    if update.block_io().is_some() {
        out.set_block_io(update.block_io().clone());
    }
    if update.hugepage_limits().is_some() {
        out.set_hugepage_limits(update.hugepage_limits().clone());
    }
    if update.unified().is_some() {
        out.set_unified(update.unified().clone());
    }
    out
}
