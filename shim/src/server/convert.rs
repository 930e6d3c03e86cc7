//! Store records → CRI messages.

use berth_proto::runtime::v1 as cri;

use crate::store::{Container, ContainerState};

pub fn container_state(c: &Container) -> cri::ContainerState {
    match c.record.state {
        ContainerState::Created => cri::ContainerState::ContainerCreated,
        ContainerState::Running => cri::ContainerState::ContainerRunning,
        ContainerState::Exited => cri::ContainerState::ContainerExited,
        ContainerState::Unknown => cri::ContainerState::ContainerUnknown,
    }
}

fn image_spec(c: &Container) -> cri::ImageSpec {
    let mut spec = c.config.image.clone().unwrap_or_default();
    spec.image_ref = c.record.image_id.clone();
    spec
}

pub fn container(c: &Container) -> cri::Container {
    cri::Container {
        id: c.record.id.clone(),
        pod_sandbox_id: c.record.sandbox_id.clone(),
        metadata: c.config.metadata.clone(),
        image: Some(image_spec(c)),
        image_ref: c.record.image_ref.clone(),
        state: container_state(c) as i32,
        created_at: c.record.created_at,
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        image_id: c.record.image_id.clone(),
    }
}

pub fn container_status(c: &Container) -> cri::ContainerStatus {
    let r = &c.record;
    cri::ContainerStatus {
        id: r.id.clone(),
        metadata: c.config.metadata.clone(),
        state: container_state(c) as i32,
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        exit_code: r.exit_code,
        image: Some(image_spec(c)),
        image_ref: r.image_ref.clone(),
        reason: r.reason.clone(),
        message: r.message.clone(),
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        mounts: c.config.mounts.clone(),
        log_path: r.log_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        resources: c
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .map(|linux| cri::ContainerResources { linux: Some(linux), windows: None }),
        image_id: r.image_id.clone(),
        user: r.user.as_ref().map(|(uid, gid, groups)| cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: i64::from(*uid),
                gid: i64::from(*gid),
                supplemental_groups: groups.iter().map(|g| i64::from(*g)).collect(),
            }),
        }),
        stop_signal: 0,
    }
}
