//! The reconcile itself. A sync observes, acts at most once per container, and reports; the
//! caller runs it again when the pod changes, when a container event arrives, or after the
//! `requeue` delay the sync asked for (back-offs, waits).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::runtime::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus};
use k8s_openapi::chrono::{DateTime, Utc};

use super::status::{self, ContainerView, Observed, SandboxView};
use crate::cri::{CriError, Runtime};
use crate::spec::{self, EnvSources, NodeFacts};

/// kubelet's container restart back-off: 10 s, doubling, at most 5 minutes.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(10);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Restart back-off of one container, keyed to the time of the failure it follows.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    delay: Option<Duration>,
    last: Option<DateTime<Utc>>,
}

impl Backoff {
    /// How long to wait after a failure at `event` before trying again (zero: go now).
    pub fn remaining(&self, event: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
        match self.delay {
            Some(d) => (event + d - now).to_std().unwrap_or(Duration::ZERO),
            None => Duration::ZERO,
        }
    }

    /// Records a retry after the failure at `event`: the next wait doubles (reset after a long
    /// quiet period, as kubelet forgets a back-off after twice its maximum).
    pub fn next(&mut self, event: DateTime<Utc>) {
        let expired = self.last.is_some_and(|l| (event - l).to_std().unwrap_or(Duration::ZERO) > 2 * MAX_BACKOFF);
        self.delay = Some(match self.delay {
            Some(d) if !expired => (d * 2).min(MAX_BACKOFF),
            _ => INITIAL_BACKOFF,
        });
        self.last = Some(event);
    }

    pub fn delay(&self) -> Option<Duration> {
        self.delay
    }
}

/// What the probes say about each container (by name); absent means "no probe".
#[derive(Debug, Clone, Default)]
pub struct ProbeState {
    pub ready: HashMap<String, bool>,
    pub started: HashMap<String, bool>,
}

/// Everything a sync needs besides the runtime.
pub struct PodContext<'a> {
    pub pod: &'a Pod,
    pub env: &'a (dyn EnvSources + Sync),
    pub node: &'a NodeFacts,
    pub memory_capacity: i64,
    /// The container's volume mounts (prepared by the caller), or why they cannot be made.
    pub mounts: &'a (dyn Fn(&Container) -> Result<Vec<cri::Mount>, String> + Sync),
    pub probes: &'a ProbeState,
    /// Registry credentials (from the pod's imagePullSecrets) for the image's registry.
    pub pull_auth: &'a (dyn Fn(&str) -> Option<cri::AuthConfig> + Sync),
    pub now: DateTime<Utc>,
}

/// What a sync found and wants.
#[derive(Debug, Clone)]
pub struct SyncOutcome {
    pub status: PodStatus,
    /// Sync again after this long even if nothing changes (back-offs, running init containers).
    pub requeue: Option<Duration>,
    /// The pod reached Succeeded or Failed: nothing more will run.
    pub terminal: bool,
    /// Ids of the pod's running containers by name (for probes).
    pub running: HashMap<String, String>,
    /// What happened during this sync, as Kubernetes events: (type, reason, message).
    pub events: Vec<(&'static str, &'static str, String)>,
}

/// Why a container is waiting, as status reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

/// One pod's worker state between syncs (lost on restart, rebuilt from the runtime).
pub struct Worker<R: Runtime> {
    rt: Arc<R>,
    /// The runtime's name, prefixed to container ids in status ("berth://…").
    runtime_name: String,
    backoff: HashMap<String, Backoff>,
    waiting: HashMap<String, Waiting>,
    start_time: Option<DateTime<Utc>>,
    events: Vec<(&'static str, &'static str, String)>,
    /// Shared by the node's workers: a sync that creates a sandbox holds a permit until it
    /// returns (its containers started), see `parallelPodStarts`.
    start_gate: Option<Arc<tokio::sync::Semaphore>>,
}

fn wait_for(requeue: &mut Option<Duration>, d: Duration) {
    *requeue = Some(requeue.map_or(d, |r| r.min(d)));
}

/// Restart policy of the pod.
fn policy(spec: &PodSpec) -> &str {
    spec.restart_policy.as_deref().unwrap_or("Always")
}

fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// The pod's phase when nothing more will run in it, if so.
pub(super) fn terminal_phase(spec: &PodSpec, obs: &Observed) -> Option<&'static str> {
    let policy = policy(spec);
    for c in spec.init_containers.iter().flatten().filter(|c| !is_sidecar(c)) {
        if let Some(v) = obs.latest(&c.name) {
            if v.exited() && v.exit_code != 0 && policy == "Never" {
                return Some("Failed");
            }
        }
    }
    if spec.containers.is_empty() || policy == "Always" {
        return None;
    }
    let latest: Vec<&ContainerView> = spec.containers.iter().filter_map(|c| obs.latest(&c.name)).collect();
    if latest.len() < spec.containers.len() || !latest.iter().all(|v| v.exited()) {
        return None;
    }
    let all_ok = latest.iter().all(|v| v.exit_code == 0);
    match (policy, all_ok) {
        (_, true) => Some("Succeeded"),
        ("Never", false) => Some("Failed"),
        _ => None,
    }
}

impl<R: Runtime> Worker<R> {
    pub fn new(rt: Arc<R>, runtime_name: impl Into<String>) -> Self {
        Worker {
            rt,
            runtime_name: runtime_name.into(),
            backoff: HashMap::new(),
            waiting: HashMap::new(),
            start_time: None,
            events: Vec::new(),
            start_gate: None,
        }
    }

    /// Sandbox creation (and the rest of that sync) waits for a permit of `gate`.
    pub fn with_start_gate(mut self, gate: Arc<tokio::sync::Semaphore>) -> Self {
        self.start_gate = Some(gate);
        self
    }

    async fn observe(&self, pod: &Pod) -> Result<Observed, CriError> {
        let uid = spec::ids(pod).2.to_string();
        let labels = HashMap::from([(spec::LABEL_POD_UID.to_string(), uid)]);
        let mut sandboxes = self.rt.list_pod_sandboxes(labels.clone()).await?;
        sandboxes.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        let mut obs = Observed {
            max_attempt: sandboxes.iter().map(|s| s.metadata.as_ref().map_or(0, |m| m.attempt)).max(),
            ..Default::default()
        };
        for (i, s) in sandboxes.into_iter().enumerate() {
            if i > 0 {
                obs.stale_sandboxes.push(s.id);
                continue;
            }
            let st = match self.rt.pod_sandbox_status(&s.id).await {
                Ok(st) => st,
                Err(e) if e.not_found() => continue,
                Err(e) => return Err(e),
            };
            obs.sandbox = Some(SandboxView {
                id: s.id.clone(),
                attempt: s.metadata.as_ref().map_or(0, |m| m.attempt),
                ready: st.state == cri::PodSandboxState::SandboxReady as i32,
                ip: st.network.map(|n| n.ip).unwrap_or_default(),
            });
        }
        for c in self.rt.list_containers(labels).await? {
            let st = match self.rt.container_status(&c.id).await {
                Ok(st) => st,
                Err(e) if e.not_found() => continue,
                Err(e) => return Err(e),
            };
            let view = ContainerView::from_status(&c, &st);
            obs.containers.entry(view.name.clone()).or_default().push(view);
        }
        for list in obs.containers.values_mut() {
            list.sort_by_key(|v| std::cmp::Reverse((v.attempt, v.created_at)));
        }
        Ok(obs)
    }

    /// One reconcile of a pod that should be running.
    pub async fn sync(&mut self, cx: &PodContext<'_>) -> Result<SyncOutcome, CriError> {
        let spec = cx.pod.spec.clone().unwrap_or_default();
        let mut obs = self.observe(cx.pod).await?;
        let mut requeue = None;
        let mut _start_permit = None;
        self.start_time.get_or_insert(cx.now);
        self.gc_stale(&obs).await;

        if let Some(phase) = terminal_phase(&spec, &obs) {
            self.wind_down(&spec, &obs).await;
            return Ok(self.outcome(cx, &spec, &obs, Some(phase), None));
        }

        let sandbox = match obs.sandbox.clone().filter(|s| s.ready) {
            Some(s) => s,
            None => {
                if let Some(gate) = &self.start_gate {
                    _start_permit = gate.clone().acquire_owned().await.ok();
                }
                let attempt = obs.max_attempt.map_or(0, |a| a + 1);
                if let Some(old) = obs.sandbox.take() {
                    tracing::info!(pod = spec::ids(cx.pod).1, sandbox = %old.id, "sandbox is not ready: replacing it");
                    self.kill_all(&obs, 0).await;
                    let _ = self.rt.stop_pod_sandbox(&old.id).await;
                    let _ = self.rt.remove_pod_sandbox(&old.id).await;
                }
                match self.rt.run_pod_sandbox(spec::sandbox_config(cx.pod, attempt, cx.node)).await {
                    Ok(id) => tracing::debug!(pod = spec::ids(cx.pod).1, sandbox = ?id, "sandbox running"),
                    Err(e) => {
                        tracing::warn!(pod = spec::ids(cx.pod).1, error = %e, "creating the pod sandbox");
                        for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
                            self.waiting.insert(
                                c.name.clone(),
                                Waiting { reason: "ContainerCreating".into(), message: e.to_string() },
                            );
                        }
                        wait_for(&mut requeue, INITIAL_BACKOFF);
                        obs = self.observe(cx.pod).await?;
                        return Ok(self.outcome(cx, &spec, &obs, None, requeue));
                    }
                }
                obs = self.observe(cx.pod).await?;
                match obs.sandbox.clone().filter(|s| s.ready) {
                    Some(s) => s,
                    None => {
                        wait_for(&mut requeue, Duration::from_secs(1));
                        return Ok(self.outcome(cx, &spec, &obs, None, requeue));
                    }
                }
            }
        };

        let mut initialized = true;
        for c in spec.init_containers.iter().flatten() {
            let sidecar = is_sidecar(c);
            let done = match obs.latest(&c.name) {
                None => {
                    self.start(cx, &sandbox, c, 0).await;
                    false
                }
                Some(v) if v.created() => {
                    self.start_existing(c, v).await;
                    false
                }
                Some(v) if v.running() => {
                    sidecar && cx.probes.started.get(&c.name).copied().unwrap_or(c.startup_probe.is_none())
                }
                Some(v) if !sidecar && v.exit_code == 0 => true,
                Some(v) => {
                    self.restart(cx, &sandbox, c, v, &mut requeue).await;
                    false
                }
            };
            if !done {
                initialized = false;
                wait_for(&mut requeue, Duration::from_secs(1));
                break;
            }
        }
        if initialized {
            let policy = policy(&spec).to_string();
            for c in &spec.containers {
                match obs.latest(&c.name) {
                    None => self.start(cx, &sandbox, c, 0).await,
                    Some(v) if v.created() => self.start_existing(c, v).await,
                    Some(v) if v.running() => {}
                    Some(v) => {
                        let again = match policy.as_str() {
                            "Always" => true,
                            "OnFailure" => v.exit_code != 0,
                            _ => false,
                        };
                        if again {
                            self.restart(cx, &sandbox, c, v, &mut requeue).await;
                        }
                    }
                }
            }
        }
        let obs = self.observe(cx.pod).await?;
        Ok(self.outcome(cx, &spec, &obs, None, requeue))
    }

    fn event(&mut self, kind: &'static str, reason: &'static str, message: String) {
        self.events.push((kind, reason, message));
    }

    fn outcome(
        &mut self,
        cx: &PodContext<'_>,
        spec: &PodSpec,
        obs: &Observed,
        phase: Option<&'static str>,
        requeue: Option<Duration>,
    ) -> SyncOutcome {
        let status = status::pod_status(&status::StatusInput {
            pod: cx.pod,
            spec,
            obs,
            terminal_phase: phase,
            waiting: &self.waiting,
            probes: cx.probes,
            runtime_name: &self.runtime_name,
            start_time: self.start_time,
            host_ip: cx.env.host_ip(),
            now: cx.now,
        });
        let running = obs
            .containers
            .iter()
            .filter_map(|(name, list)| list.first().filter(|v| v.running()).map(|v| (name.clone(), v.id.clone())))
            .collect();
        SyncOutcome { status, requeue, terminal: phase.is_some(), running, events: std::mem::take(&mut self.events) }
    }

    /// Restarts an exited container unless its back-off says wait.
    async fn restart(
        &mut self,
        cx: &PodContext<'_>,
        sandbox: &SandboxView,
        c: &Container,
        v: &ContainerView,
        requeue: &mut Option<Duration>,
    ) {
        let event = v.finished_at_time().unwrap_or(cx.now);
        let backoff = self.backoff.entry(c.name.clone()).or_default();
        let wait = backoff.remaining(event, cx.now);
        if !wait.is_zero() {
            let message = format!(
                "back-off {}s restarting failed container={} pod={}",
                backoff.delay().unwrap_or_default().as_secs(),
                c.name,
                spec::ids(cx.pod).1
            );
            if self.waiting.get(&c.name).is_none_or(|w| w.reason != "CrashLoopBackOff") {
                self.event("Warning", "BackOff", format!("Back-off restarting failed container {}", c.name));
            }
            self.waiting.insert(c.name.clone(), Waiting { reason: "CrashLoopBackOff".into(), message });
            wait_for(requeue, wait);
            return;
        }
        backoff.next(event);
        self.start(cx, sandbox, c, v.attempt + 1).await;
    }

    async fn start_existing(&mut self, c: &Container, v: &ContainerView) {
        match self.rt.start_container(&v.id).await {
            Ok(()) => {
                self.waiting.remove(&c.name);
            }
            Err(e) => {
                self.waiting
                    .insert(c.name.clone(), Waiting { reason: "RunContainerError".into(), message: e.to_string() });
            }
        }
    }

    /// Image, environment, mounts, create and start; failures become the container's waiting
    /// reason.
    async fn start(&mut self, cx: &PodContext<'_>, sandbox: &SandboxView, c: &Container, attempt: u32) {
        let fail = |reason: &str, message: String| Waiting { reason: reason.into(), message };
        let sandbox_config = spec::sandbox_config(cx.pod, sandbox.attempt, cx.node);
        let image = match self.ensure_image(cx, c, &sandbox_config).await {
            Ok(image) => image,
            Err(w) => {
                self.waiting.insert(c.name.clone(), w);
                return;
            }
        };
        let env = match spec::container_env(cx.pod, c, cx.env) {
            Ok(env) => env,
            Err(e) => {
                self.event("Warning", "Failed", format!("Error: {e}"));
                self.waiting.insert(c.name.clone(), fail("CreateContainerConfigError", e.to_string()));
                return;
            }
        };
        let mounts = match (cx.mounts)(c) {
            Ok(m) => m,
            Err(e) => {
                self.waiting.insert(c.name.clone(), fail("CreateContainerConfigError", e));
                return;
            }
        };
        let qos = spec::qos_class(cx.pod);
        let input = spec::ContainerInput {
            container: c,
            restart_count: attempt,
            env: &env,
            mounts,
            image,
            qos,
            memory_capacity: cx.memory_capacity,
        };
        let config = spec::container_config(cx.pod, &input);
        let id = match self.rt.create_container(&sandbox.id, config, sandbox_config).await {
            Ok(id) => id,
            Err(e) => {
                self.event("Warning", "Failed", format!("Error: {e}"));
                self.waiting.insert(c.name.clone(), fail("CreateContainerError", e.to_string()));
                return;
            }
        };
        self.event("Normal", "Created", format!("Created container {}", c.name));
        match self.rt.start_container(&id).await {
            Ok(()) => {
                self.waiting.remove(&c.name);
                self.event("Normal", "Started", format!("Started container {}", c.name));
                tracing::info!(pod = spec::ids(cx.pod).1, container = %c.name, attempt, "container started");
                if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
                    let grace = cx.pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30);
                    let limit = Duration::from_secs(grace.max(1) as u64);
                    if let Err(e) = crate::probes::run_hook(self.rt.as_ref(), c, hook, &id, &sandbox.ip, limit).await {
                        // As kubelet: a failed postStart kills the container; the restart policy decides what next.
                        self.event("Warning", "FailedPostStartHook", format!("PostStartHook failed: {e}"));
                        let _ = self.rt.stop_container(&id, grace).await;
                    }
                }
            }
            Err(e) => {
                self.event("Warning", "Failed", format!("Error: {e}"));
                self.waiting.insert(c.name.clone(), fail("RunContainerError", e.to_string()));
            }
        }
    }

    /// The image reference to run, pulled according to the container's pull policy.
    async fn ensure_image(
        &mut self,
        cx: &PodContext<'_>,
        c: &Container,
        sandbox: &cri::PodSandboxConfig,
    ) -> Result<String, Waiting> {
        let image = c.image.clone().unwrap_or_default();
        if image.is_empty() {
            return Err(Waiting {
                reason: "InvalidImageName".into(),
                message: format!("container {}: no image", c.name),
            });
        }
        let policy = c.image_pull_policy.clone().unwrap_or_else(|| default_pull_policy(&image).to_string());
        let present = self.rt.image_id(&image).await.ok().flatten();
        match (policy.as_str(), present) {
            ("IfNotPresent", Some(_)) | ("Never", Some(_)) => return Ok(image),
            ("Never", None) => {
                return Err(Waiting {
                    reason: "ErrImageNeverPull".into(),
                    message: format!("image {image:?} is not present and the pull policy is Never"),
                });
            }
            _ => {}
        }
        let key = format!("pull/{}", c.name);
        let backoff = self.backoff.entry(key.clone()).or_default();
        if let Some(last) = backoff.last {
            if !backoff.remaining(last, cx.now).is_zero() {
                return Err(Waiting {
                    reason: "ImagePullBackOff".into(),
                    message: format!("Back-off pulling image {image:?}"),
                });
            }
        }
        self.event("Normal", "Pulling", format!("Pulling image {image:?}"));
        match self.rt.pull_image(&image, (cx.pull_auth)(&image), Some(sandbox.clone())).await {
            Ok(_) => {
                self.backoff.remove(&key);
                self.event("Normal", "Pulled", format!("Successfully pulled image {image:?}"));
                Ok(image)
            }
            Err(e) => {
                self.backoff.entry(key).or_default().next(cx.now);
                self.event("Warning", "Failed", format!("Failed to pull image {image:?}: {e}"));
                Err(Waiting { reason: "ErrImagePull".into(), message: e.to_string() })
            }
        }
    }

    /// Runs the preStop hooks of the running containers, concurrently, within the grace
    /// period (what they use of it is taken from the stop's own timeout by the caller's clock).
    async fn pre_stop(&self, pod: &Pod, obs: &Observed, grace: i64) {
        let Some(spec) = &pod.spec else { return };
        let ip = obs.sandbox.as_ref().map(|s| s.ip.clone()).unwrap_or_default();
        let limit = Duration::from_secs(grace.max(0) as u64);
        let hooks = spec.containers.iter().chain(spec.init_containers.iter().flatten()).filter_map(|c| {
            let hook = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref())?;
            let v = obs.latest(&c.name).filter(|v| v.running())?;
            let ip = ip.clone();
            Some(async move {
                if let Err(e) =
                    tokio::time::timeout(limit, crate::probes::run_hook(self.rt.as_ref(), c, hook, &v.id, &ip, limit))
                        .await
                        .unwrap_or(Err("timed out".into()))
                {
                    tracing::warn!(container = %c.name, error = %e, "preStop hook failed");
                }
            })
        });
        futures_util::future::join_all(hooks).await;
    }

    /// Stops every running container of the pod (`grace` seconds each, concurrently).
    async fn kill_all(&self, obs: &Observed, grace: i64) {
        let running: Vec<&ContainerView> =
            obs.containers.values().flatten().filter(|v| v.running() || v.created()).collect();
        let stops = running.iter().map(|v| self.rt.stop_container(&v.id, grace));
        for r in futures_util::future::join_all(stops).await {
            if let Err(e) = r {
                tracing::warn!(error = %e, "stopping a container");
            }
        }
    }

    /// A finished pod keeps its exited containers for logs but stops sidecars and its sandbox.
    async fn wind_down(&self, spec: &PodSpec, obs: &Observed) {
        let sidecars: Vec<&str> =
            spec.init_containers.iter().flatten().filter(|c| is_sidecar(c)).map(|c| c.name.as_str()).collect();
        for name in sidecars {
            if let Some(v) = obs.latest(name).filter(|v| v.running()) {
                let _ = self.rt.stop_container(&v.id, spec.termination_grace_period_seconds.unwrap_or(30)).await;
            }
        }
        if let Some(sb) = obs.sandbox.as_ref().filter(|s| s.ready) {
            let _ = self.rt.stop_pod_sandbox(&sb.id).await;
        }
    }

    /// Removes sandboxes older than the current one and container instances older than the
    /// previous one (kept for `logs --previous`).
    async fn gc_stale(&self, obs: &Observed) {
        for id in &obs.stale_sandboxes {
            let _ = self.rt.stop_pod_sandbox(id).await;
            let _ = self.rt.remove_pod_sandbox(id).await;
        }
        for list in obs.containers.values() {
            for v in list.iter().skip(2).filter(|v| v.exited()) {
                let _ = self.rt.remove_container(&v.id).await;
            }
        }
    }

    /// Deletes the pod from the node: every container stopped within `grace` seconds, then the
    /// sandbox and everything in it removed. True once nothing of the pod is left.
    pub async fn terminate(&mut self, pod: &Pod, grace: i64) -> Result<bool, CriError> {
        let obs = self.observe(pod).await?;
        self.pre_stop(pod, &obs, grace).await;
        self.kill_all(&obs, grace).await;
        let mut ids: Vec<String> = obs.stale_sandboxes.clone();
        ids.extend(obs.sandbox.iter().map(|s| s.id.clone()));
        for id in &ids {
            self.rt.stop_pod_sandbox(id).await?;
            self.rt.remove_pod_sandbox(id).await?;
        }
        for v in obs.containers.values().flatten() {
            match self.rt.remove_container(&v.id).await {
                Err(e) if !e.not_found() => return Err(e),
                _ => {}
            }
        }
        let left = self.observe(pod).await?;
        Ok(left.sandbox.is_none() && left.stale_sandboxes.is_empty() && left.containers.is_empty())
    }
}

/// kubelet's default: Always for `:latest` or untagged images, IfNotPresent otherwise.
pub fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}
