//! What the runtime shows of a pod, and the PodStatus computed from it: phase, conditions,
//! container statuses (state, last state, restart count, ready, started), IPs, QoS class.

use std::collections::HashMap;

use berth_proto::runtime::v1 as cri;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    HostIP, Pod, PodCondition, PodIP, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::chrono::{DateTime, Utc};

use super::worker::{ProbeState, Waiting};
use crate::spec;

#[derive(Debug, Clone)]
pub(super) struct SandboxView {
    pub id: String,
    pub attempt: u32,
    pub ready: bool,
    pub ip: String,
}

/// One container instance as CRI reports it.
#[derive(Debug, Clone)]
pub struct ContainerView {
    pub id: String,
    pub name: String,
    pub attempt: u32,
    pub state: i32,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub image_ref: String,
}

fn time(nanos: i64) -> Option<Time> {
    (nanos > 0).then(|| Time(DateTime::from_timestamp_nanos(nanos)))
}

impl ContainerView {
    pub fn from_status(c: &cri::Container, st: &cri::ContainerStatus) -> ContainerView {
        let md = c.metadata.clone().unwrap_or_default();
        let name = c.labels.get(spec::LABEL_CONTAINER_NAME).cloned().unwrap_or(md.name);
        ContainerView {
            id: c.id.clone(),
            name,
            attempt: md.attempt,
            state: st.state,
            exit_code: st.exit_code,
            reason: st.reason.clone(),
            message: st.message.clone(),
            created_at: st.created_at,
            started_at: st.started_at,
            finished_at: st.finished_at,
            image_ref: st.image_ref.clone(),
        }
    }

    pub fn running(&self) -> bool {
        self.state == cri::ContainerState::ContainerRunning as i32
    }

    pub fn created(&self) -> bool {
        self.state == cri::ContainerState::ContainerCreated as i32
    }

    pub fn exited(&self) -> bool {
        !(self.running() || self.created())
    }

    pub fn finished_at_time(&self) -> Option<DateTime<Utc>> {
        (self.finished_at > 0).then(|| DateTime::from_timestamp_nanos(self.finished_at))
    }

    fn terminated(&self, runtime: &str) -> ContainerState {
        let reason = if !self.reason.is_empty() {
            self.reason.clone()
        } else if self.exit_code == 0 {
            "Completed".into()
        } else {
            "Error".into()
        };
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: self.exit_code,
                reason: Some(reason),
                message: (!self.message.is_empty()).then(|| self.message.clone()),
                started_at: time(self.started_at),
                finished_at: time(self.finished_at),
                container_id: Some(format!("{runtime}://{}", self.id)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Observed {
    pub sandbox: Option<SandboxView>,
    pub stale_sandboxes: Vec<String>,
    /// The highest sandbox attempt the runtime still holds (a new sandbox takes the next one:
    /// sandbox names, which carry the attempt, must not collide with a stale one's).
    pub max_attempt: Option<u32>,
    /// Instances by container name, newest first.
    pub containers: HashMap<String, Vec<ContainerView>>,
}

impl Observed {
    pub fn latest(&self, name: &str) -> Option<&ContainerView> {
        self.containers.get(name).and_then(|l| l.first())
    }

    fn previous(&self, name: &str) -> Option<&ContainerView> {
        self.containers.get(name).and_then(|l| l.get(1))
    }
}

pub(super) struct StatusInput<'a> {
    pub pod: &'a Pod,
    pub spec: &'a PodSpec,
    pub obs: &'a Observed,
    pub terminal_phase: Option<&'static str>,
    pub waiting: &'a HashMap<String, Waiting>,
    pub probes: &'a ProbeState,
    pub runtime_name: &'a str,
    pub start_time: Option<DateTime<Utc>>,
    pub host_ip: Option<String>,
    pub now: DateTime<Utc>,
}

fn condition(kind: &str, ok: bool, now: DateTime<Utc>, reason: Option<&str>) -> PodCondition {
    PodCondition {
        type_: kind.into(),
        status: if ok { "True" } else { "False" }.into(),
        last_transition_time: Some(Time(now)),
        reason: (!ok).then(|| reason.unwrap_or("").to_string()).filter(|r| !r.is_empty()),
        ..Default::default()
    }
}

fn container_status(input: &StatusInput<'_>, c: &Container, default_waiting: &str) -> ContainerStatus {
    let obs = input.obs;
    let latest = obs.latest(&c.name);
    let waiting = input.waiting.get(&c.name);
    let waiting_state = |reason: &str, message: Option<&str>| ContainerState {
        waiting: Some(ContainerStateWaiting { reason: Some(reason.into()), message: message.map(str::to_string) }),
        ..Default::default()
    };
    let (state, last_state) = match latest {
        None => (
            waiting_state(waiting.map_or(default_waiting, |w| w.reason.as_str()), waiting.map(|w| w.message.as_str())),
            None,
        ),
        Some(v) if v.running() => {
            let state = ContainerState {
                running: Some(ContainerStateRunning { started_at: time(v.started_at) }),
                ..Default::default()
            };
            (state, obs.previous(&c.name).map(|p| p.terminated(input.runtime_name)))
        }
        Some(v) if v.created() => (
            waiting_state(
                waiting.map_or("ContainerCreating", |w| w.reason.as_str()),
                waiting.map(|w| w.message.as_str()),
            ),
            None,
        ),
        // Exited, and about to be restarted (or backing off): waiting, with the exit as last state.
        Some(v) if waiting.is_some() && input.terminal_phase.is_none() => {
            let w = waiting.expect("checked");
            (waiting_state(&w.reason, Some(&w.message)), Some(v.terminated(input.runtime_name)))
        }
        Some(v) => (v.terminated(input.runtime_name), obs.previous(&c.name).map(|p| p.terminated(input.runtime_name))),
    };
    let running = latest.is_some_and(|v| v.running());
    // A probe that has not answered yet counts as failing (kubelet's initial result): a
    // container with a readiness probe is not ready, nor one with a startup probe started,
    // until its probe first succeeds.
    let started = running && input.probes.started.get(&c.name).copied().unwrap_or(c.startup_probe.is_none());
    let ready = started && input.probes.ready.get(&c.name).copied().unwrap_or(c.readiness_probe.is_none());
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_id: latest.map(|v| v.image_ref.clone()).unwrap_or_default(),
        container_id: latest.map(|v| format!("{}://{}", input.runtime_name, v.id)),
        restart_count: latest.map_or(0, |v| v.attempt as i32),
        ready,
        started: Some(started),
        state: Some(state),
        last_state: last_state.or_else(|| Some(ContainerState::default())),
        ..Default::default()
    }
}

pub(super) fn pod_status(input: &StatusInput<'_>) -> PodStatus {
    let spec = input.spec;
    let obs = input.obs;
    let now = input.now;
    let init: Vec<ContainerStatus> =
        spec.init_containers.iter().flatten().map(|c| container_status(input, c, "PodInitializing")).collect();
    let initialized = spec.init_containers.iter().flatten().zip(&init).all(|(c, st)| {
        let sidecar = c.restart_policy.as_deref() == Some("Always");
        let state = st.state.as_ref();
        if sidecar {
            st.started == Some(true)
        } else {
            state.and_then(|s| s.terminated.as_ref()).is_some_and(|t| t.exit_code == 0)
        }
    });
    let app_default = if initialized { "ContainerCreating" } else { "PodInitializing" };
    let apps: Vec<ContainerStatus> = spec.containers.iter().map(|c| container_status(input, c, app_default)).collect();
    let sandbox_ready = obs.sandbox.as_ref().is_some_and(|s| s.ready);
    let containers_ready = !apps.is_empty() && apps.iter().all(|s| s.ready);
    let phase = match input.terminal_phase {
        Some(p) => p,
        None if !sandbox_ready || !initialized => "Pending",
        None if apps.iter().any(|s| {
            s.state.as_ref().is_some_and(|st| st.waiting.is_some())
                && s.last_state.as_ref().is_none_or(|l| l.terminated.is_none())
        }) =>
        {
            "Pending"
        }
        None => "Running",
    };
    let terminal = input.terminal_phase.is_some();
    let ip = obs.sandbox.as_ref().map(|s| s.ip.clone()).filter(|ip| !ip.is_empty());
    let host_network = spec.host_network.unwrap_or(false);
    let pod_ip = if host_network { input.host_ip.clone() } else { ip };
    let conditions = vec![
        condition("PodReadyToStartContainers", sandbox_ready, now, None),
        condition("Initialized", initialized, now, Some("ContainersNotInitialized")),
        condition(
            "Ready",
            containers_ready && !terminal,
            now,
            Some(if terminal { "PodCompleted" } else { "ContainersNotReady" }),
        ),
        condition(
            "ContainersReady",
            containers_ready && !terminal,
            now,
            Some(if terminal { "PodCompleted" } else { "ContainersNotReady" }),
        ),
        condition("PodScheduled", true, now, None),
    ];
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        host_ip: input.host_ip.clone(),
        host_ips: input.host_ip.clone().map(|ip| vec![HostIP { ip }]),
        pod_ip: pod_ip.clone(),
        pod_ips: pod_ip.map(|ip| vec![PodIP { ip }]),
        start_time: input.start_time.map(Time),
        qos_class: Some(spec::qos_class(input.pod).as_str().into()),
        init_container_statuses: (!init.is_empty()).then_some(init),
        container_statuses: Some(apps),
        ..Default::default()
    }
}
