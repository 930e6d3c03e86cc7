//! ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats: read from each
//! container's cgroup through the runtime library; the writable layer from the snapshot's
//! upper directory.

use berth_proto::runtime::v1 as cri;

use super::{CriError, CriResult, Shim};
use crate::store::{Container, ContainerState, Sandbox};

fn u64v(value: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value })
}

impl Shim {
    fn stats_of(&self, c: &Container) -> cri::ContainerStats {
        let now = crate::monitor::proto::now_nanos();
        let attributes = Some(cri::ContainerAttributes {
            id: c.record.id.clone(),
            metadata: c.config.metadata.clone(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
        });
        let cg =
            berth_runtime::container::Loaded::load(&self.runtime_root(), &c.record.id).and_then(|l| l.cgroup()).ok();
        let st = cg.map(|cg| cg.stats()).unwrap_or_default();
        let working_set = st.memory.usage;
        let (used, inodes) = self.images.snapshot_usage(&c.record.id).unwrap_or((0, 0));
        cri::ContainerStats {
            attributes,
            cpu: Some(cri::CpuUsage {
                timestamp: now,
                usage_core_nano_seconds: u64v(st.cpu.usage_total),
                usage_nano_cores: None,
                psi: None,
            }),
            memory: Some(cri::MemoryUsage {
                timestamp: now,
                working_set_bytes: u64v(working_set),
                available_bytes: (st.memory.limit > 0 && st.memory.limit < u64::MAX / 2)
                    .then(|| cri::UInt64Value { value: st.memory.limit.saturating_sub(working_set) }),
                usage_bytes: u64v(st.memory.usage),
                rss_bytes: u64v(0),
                page_faults: u64v(0),
                major_page_faults: u64v(0),
                psi: None,
            }),
            writable_layer: Some(cri::FilesystemUsage {
                timestamp: now,
                fs_id: Some(cri::FilesystemIdentifier { mountpoint: self.cfg.image_dir.display().to_string() }),
                used_bytes: u64v(used),
                inodes_used: u64v(inodes),
            }),
            swap: None,
            io: None,
        }
    }

    pub fn container_stats(&self, id: &str) -> CriResult<cri::ContainerStats> {
        let c = self.find_container(id)?;
        Ok(self.stats_of(&c))
    }

    pub fn list_container_stats(&self, f: Option<cri::ContainerStatsFilter>) -> Vec<cri::ContainerStats> {
        let f = f.unwrap_or_default();
        self.containers_matching(&f.id, &f.pod_sandbox_id, &f.label_selector).iter().map(|c| self.stats_of(c)).collect()
    }

    fn sandbox_stats_of(&self, sb: &Sandbox) -> cri::PodSandboxStats {
        let now = crate::monitor::proto::now_nanos();
        let containers: Vec<cri::ContainerStats> = self
            .store
            .containers()
            .iter()
            .filter(|c| c.record.sandbox_id == sb.record.id && c.record.state == ContainerState::Running)
            .map(|c| self.stats_of(c))
            .collect();
        let sum = |f: &dyn Fn(&cri::ContainerStats) -> u64| containers.iter().map(f).sum::<u64>();
        let cpu = sum(&|c| c.cpu.as_ref().and_then(|x| x.usage_core_nano_seconds.as_ref()).map_or(0, |v| v.value));
        let mem = sum(&|c| c.memory.as_ref().and_then(|x| x.working_set_bytes.as_ref()).map_or(0, |v| v.value));
        let infra = berth_runtime::container::Loaded::load(&self.runtime_root(), &sb.record.id)
            .and_then(|l| l.cgroup())
            .map(|cg| cg.stats())
            .unwrap_or_default();
        cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: sb.record.id.clone(),
                metadata: sb.config.metadata.clone(),
                labels: sb.config.labels.clone(),
                annotations: sb.config.annotations.clone(),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: Some(cri::CpuUsage {
                    timestamp: now,
                    usage_core_nano_seconds: u64v(cpu + infra.cpu.usage_total),
                    usage_nano_cores: None,
                    psi: None,
                }),
                memory: Some(cri::MemoryUsage {
                    timestamp: now,
                    working_set_bytes: u64v(mem + infra.memory.usage),
                    usage_bytes: u64v(mem + infra.memory.usage),
                    ..Default::default()
                }),
                network: None,
                process: Some(cri::ProcessUsage {
                    timestamp: now,
                    process_count: u64v(containers.len() as u64 + u64::from(!sb.record.held_by_monitor)),
                }),
                containers,
                io: None,
            }),
            windows: None,
        }
    }

    pub fn pod_sandbox_stats(&self, id: &str) -> CriResult<cri::PodSandboxStats> {
        let sb = self
            .store
            .resolve_sandbox(id)
            .and_then(|id| self.store.sandbox(&id))
            .ok_or_else(|| CriError::NotFound(format!("pod sandbox {id:?} not found")))?;
        Ok(self.sandbox_stats_of(&sb))
    }

    pub fn list_pod_sandbox_stats(&self, f: Option<cri::PodSandboxStatsFilter>) -> Vec<cri::PodSandboxStats> {
        let f = f.unwrap_or_default();
        let id = (!f.id.is_empty()).then(|| self.store.resolve_sandbox(&f.id).unwrap_or_default());
        self.store
            .sandboxes()
            .into_iter()
            .filter(|s| id.as_ref().is_none_or(|id| &s.record.id == id))
            .filter(|s| super::labels_match(&s.config.labels, &f.label_selector))
            .map(|s| self.sandbox_stats_of(&s))
            .collect()
    }
}
