//! The running agent: registers the Node, keeps its status and Lease current, watches the pods
//! bound to it (and reads static manifests), and runs one worker task per pod that syncs it
//! against the runtime, prepares its volumes, probes its containers, patches its status and
//! records events, and finally deletes it from the API once nothing of it is left.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Event, EventSource, Node, ObjectReference, Pod, PodStatus, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::chrono::Utc;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions, WatchEvent, WatchParams,
};
use kube::Client;
use tokio::sync::{mpsc, watch};

use crate::config::AgentConfig;
use crate::cri::Runtime;
use crate::node::{self, HostFacts};
use crate::pod::{PodContext, ProbeState, Worker};
use crate::probes::{self, Kind, Signal};
use crate::spec::{self, EnvSources, NodeFacts};
use crate::volumes::{self, VolumeSources};

pub struct Agent<R: Runtime> {
    pub cfg: AgentConfig,
    pub node_name: String,
    client: Client,
    rt: Arc<R>,
    runtime_name: String,
    node_facts: NodeFacts,
    facts: Mutex<HostFacts>,
    pods: Mutex<HashMap<String, watch::Sender<Option<Pod>>>>,
    /// Pods chosen for eviction (uid → the status message), handled by their workers.
    evictions: Mutex<HashMap<String, String>>,
    /// Events on their way to the API, posted in order by one task so that no pod's sync
    /// or status waits for them (kubelet's event broadcaster does the same).
    events: mpsc::Sender<(Instant, Event)>,
    /// Permits for pods setting up their sandbox (`parallelPodStarts`).
    start_gate: Arc<tokio::sync::Semaphore>,
    /// Service-account tokens of projected volumes.
    tokens: crate::sa_tokens::TokenManager,
}

/// How many events may wait for the API before new ones are dropped (and logged).
const EVENT_QUEUE: usize = 4096;

/// How long an event may be held back while pods are starting.
const EVENT_HOLD: Duration = Duration::from_secs(2);

/// Posts queued events one after another; a failed post is logged and dropped. Events yield
/// to pod start-ups: while any pod is setting up (a `start_gate` permit is out), an event waits
/// until the starts are done or it has been queued for [`EVENT_HOLD`], so that a burst of new
/// pods does not share the node and the API server with the events about them. Their
/// timestamps are those of the moment they were recorded.
async fn post_events(
    client: Client,
    mut rx: mpsc::Receiver<(Instant, Event)>,
    start_gate: Arc<tokio::sync::Semaphore>,
    starts: usize,
) {
    while let Some((queued, ev)) = rx.recv().await {
        while start_gate.available_permits() < starts && queued.elapsed() < EVENT_HOLD {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ns = ev.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(client.clone(), &ns);
        if let Err(e) = api.create(&PostParams::default(), &ev).await {
            tracing::debug!(error = %e, reason = ?ev.reason, "recording an event");
        }
    }
}

/// ConfigMaps and Secrets a pod refers to, fetched before its sync.
#[derive(Default)]
struct Sources {
    config_maps: BTreeMap<String, BTreeMap<String, String>>,
    secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    pod_ip: Option<String>,
    host_ip: Option<String>,
    /// Projected service-account tokens by `sa_tokens::source_key`.
    tokens: BTreeMap<String, String>,
}

impl EnvSources for Sources {
    fn config_map(&self, _: &str, name: &str) -> Option<BTreeMap<String, String>> {
        self.config_maps.get(name).cloned()
    }
    fn secret(&self, _: &str, name: &str) -> Option<BTreeMap<String, String>> {
        self.secrets
            .get(name)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())).collect())
    }
    fn pod_ip(&self) -> Option<String> {
        self.pod_ip.clone()
    }
    fn host_ip(&self) -> Option<String> {
        self.host_ip.clone()
    }
}

impl VolumeSources for Sources {
    fn secret_bytes(&self, _: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.secrets.get(name).cloned()
    }
    fn service_account_token(&self, audience: Option<&str>, expiration_secs: i64) -> Option<String> {
        self.tokens.get(&crate::sa_tokens::source_key(audience, expiration_secs)).cloned()
    }
}

/// Names of the ConfigMaps and Secrets the pod's env and volumes use.
fn referenced(pod: &Pod) -> (HashSet<String>, HashSet<String>) {
    let (mut cms, mut secrets) = (HashSet::new(), HashSet::new());
    let Some(spec) = &pod.spec else { return (cms, secrets) };
    for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        for e in c.env.iter().flatten().filter_map(|e| e.value_from.as_ref()) {
            if let Some(k) = &e.config_map_key_ref {
                cms.insert(k.name.clone());
            }
            if let Some(k) = &e.secret_key_ref {
                secrets.insert(k.name.clone());
            }
        }
        for f in c.env_from.iter().flatten() {
            if let Some(r) = &f.config_map_ref {
                cms.insert(r.name.clone());
            }
            if let Some(r) = &f.secret_ref {
                secrets.insert(r.name.clone());
            }
        }
    }
    for s in spec.image_pull_secrets.iter().flatten() {
        secrets.insert(s.name.clone());
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(c) = &v.config_map {
            cms.insert(c.name.clone());
        }
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.insert(s);
        }
        for s in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(c) = &s.config_map {
                cms.insert(c.name.clone());
            }
            if let Some(x) = &s.secret {
                secrets.insert(x.name.clone());
            }
        }
    }
    (cms, secrets)
}

/// The mount points of every cgroup hierarchy (v1 and v2) mounted here, read once: they do
/// not change under a running node (as berth-runtime's `Layout::cached`), while mountinfo grows
/// with every pod and is read after each pod ends.
fn cgroup_mountpoints() -> &'static [String] {
    static MOUNTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    MOUNTS.get_or_init(|| {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        mounts
            .lines()
            .filter_map(|line| {
                let (pre, post) = line.split_once(" - ")?;
                post.starts_with("cgroup").then(|| pre.split(' ').nth(4).map(str::to_string)).flatten()
            })
            .collect()
    })
}

/// Removes a pod's (now empty) cgroup directory from every cgroup hierarchy mounted here, as
/// kubelet does: the runtime removes only the containers' own.
fn remove_cgroup(path: &str) {
    if path.is_empty() {
        return;
    }
    for mountpoint in cgroup_mountpoints() {
        let _ = std::fs::remove_dir(format!("{mountpoint}{path}"));
    }
}

/// The cgroup `path` (e.g. `/kubepods`) and the cgroups below it, deepest first, removed from
/// every hierarchy mounted here; cgroups still in use stay (see [`remove_cgroup_tree`]). An
/// empty path (the hierarchies' roots) removes nothing.
pub fn remove_cgroup_everywhere(path: &str) {
    let path = path.trim_matches('/');
    if path.is_empty() {
        return;
    }
    for mountpoint in cgroup_mountpoints() {
        remove_cgroup_tree(&std::path::Path::new(mountpoint).join(path));
    }
}

/// rmdir of `dir` and the cgroups below it, deepest first. A cgroup that still holds a process
/// refuses (EBUSY), so this never removes anything in use.
fn remove_cgroup_tree(dir: &std::path::Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// kubelet's pod cgroup GC: `pod<uid>` cgroups under `root` (and its burstable/besteffort
/// directories), in every hierarchy, of pods that are neither in `keep` nor run here. A pod
/// removed while this agent was down, or removed by the orphan sweep, leaves one behind.
fn sweep_pod_cgroups(root: &str, keep: &HashSet<String>) {
    sweep_pod_cgroups_in(cgroup_mountpoints(), root, keep);
}

fn sweep_pod_cgroups_in(mountpoints: &[String], root: &str, keep: &HashSet<String>) {
    let root = root.trim_end_matches('/');
    if root.is_empty() {
        return;
    }
    for mountpoint in mountpoints {
        for qos in ["", "/burstable", "/besteffort"] {
            let dir = std::path::PathBuf::from(format!("{mountpoint}{root}{qos}"));
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name();
                let Some(uid) = name.to_str().and_then(|n| n.strip_prefix("pod")) else { continue };
                if !keep.contains(uid) {
                    remove_cgroup_tree(&e.path());
                }
            }
        }
    }
}

/// Keeps the previous lastTransitionTime of conditions whose status did not change.
fn keep_transition_times(new: &mut PodStatus, old: Option<&PodStatus>) {
    let Some(old) = old.and_then(|o| o.conditions.as_ref()) else { return };
    for c in new.conditions.iter_mut().flatten() {
        if let Some(o) = old.iter().find(|o| o.type_ == c.type_ && o.status == c.status) {
            c.last_transition_time = o.last_transition_time.clone();
        }
    }
}

impl<R: Runtime> crate::server::Node for Agent<R> {
    type Rt = R;

    fn runtime(&self) -> &R {
        &self.rt
    }

    fn pods(&self) -> Vec<Pod> {
        self.pods.lock().expect("pods").values().filter_map(|tx| tx.borrow().clone()).collect()
    }

    fn log_root(&self) -> &std::path::Path {
        &self.cfg.pod_logs_dir
    }

    fn node_name(&self) -> &str {
        &self.node_name
    }

    fn root_dir(&self) -> &std::path::Path {
        &self.cfg.root_dir
    }
}

impl<R: Runtime> Agent<R> {
    pub async fn new(cfg: AgentConfig, client: Client, rt: Arc<R>) -> anyhow::Result<Arc<Self>> {
        let version = rt.version().await?;
        let facts = HostFacts {
            runtime_version: format!("{}://{}", version.runtime_name, version.runtime_version),
            ..HostFacts::gather(&cfg)
        };
        let node_name = node::node_name(&cfg, &facts);
        let node_facts = NodeFacts {
            log_root: cfg.pod_logs_dir.to_string_lossy().into_owned(),
            cluster_dns: cfg.cluster_dns.clone(),
            cluster_domain: cfg.cluster_domain.clone(),
            cgroup_parent: cfg.cgroup_root.clone(),
        };
        let (events, rx) = mpsc::channel(EVENT_QUEUE);
        let starts = match cfg.parallel_pod_starts {
            0 => 2 * std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let start_gate = Arc::new(tokio::sync::Semaphore::new(starts));
        tokio::spawn(post_events(client.clone(), rx, start_gate.clone(), starts));
        Ok(Arc::new(Agent {
            cfg,
            node_name,
            client,
            rt,
            runtime_name: version.runtime_name,
            node_facts,
            facts: Mutex::new(facts),
            pods: Mutex::new(HashMap::new()),
            evictions: Mutex::new(HashMap::new()),
            events,
            start_gate,
            tokens: Default::default(),
        }))
    }

    /// Runs until the pod watch fails for good. `ca` (DER) verifies clients of the kubelet API.
    pub async fn run(self: Arc<Self>, ca: Vec<Vec<u8>>) -> anyhow::Result<()> {
        for dir in [self.cfg.pod_logs_dir.clone(), self.cfg.root_dir.join("pods")] {
            crate::node::spread_pod_directories(&dir);
        }
        self.refresh_facts().await;
        let mut names = vec![self.node_name.clone(), "localhost".to_string()];
        names.extend(self.facts.lock().expect("facts").internal_ip.clone());
        let tls = crate::server::tls_config(&ca, &names)?;
        let addr = format!("{}:{}", self.cfg.address, self.cfg.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding the kubelet API on {addr}: {e}"))?;
        tracing::info!(%addr, "kubelet API listening");
        let reviewer = Box::new(crate::authn::ApiReviewer { client: self.client.clone() });
        let auth = crate::authn::KubeletAuth::new(reviewer, self.node_name.clone(), self.cfg.authorization.mode);
        let state = Arc::new(crate::server::ApiState { auth, rates: Default::default() });
        tokio::spawn(crate::server::serve(self.clone(), listener, tls, state));
        self.register().await?;
        tokio::spawn(self.clone().node_status_loop());
        tokio::spawn(self.clone().lease_loop());
        tokio::spawn(crate::image_gc::run(self.rt.clone(), crate::image_gc::Policy::from_config(&self.cfg)));
        if let Some(dir) = self.cfg.static_pod_path.clone() {
            tokio::spawn(self.clone().static_pod_loop(dir));
        }
        if self.cfg.network.mode != crate::network::Mode::None {
            tokio::spawn(self.clone().network_loop());
        }
        self.watch_pods().await
    }

    async fn refresh_facts(&self) {
        let mut facts = HostFacts::gather(&self.cfg);
        facts.not_ready = match crate::cri::Runtime::version(self.rt.as_ref()).await {
            Ok(v) => {
                facts.runtime_version = format!("{}://{}", v.runtime_name, v.runtime_version);
                None
            }
            Err(e) => Some(format!("container runtime is down: {e}")),
        };
        if facts.not_ready.is_none() {
            facts.not_ready = self.runtime_conditions().await;
        }
        *self.facts.lock().expect("facts") = facts;
    }

    /// Why CRI Status says the node cannot run pods, if it does.
    async fn runtime_conditions(&self) -> Option<String> {
        let socket = self.cfg.runtime_socket();
        let ch = crate::cri::unix_channel(&socket).await.ok()?;
        let mut client = berth_proto::runtime::v1::runtime_service_client::RuntimeServiceClient::new(ch);
        let st =
            client.status(berth_proto::runtime::v1::StatusRequest { verbose: false }).await.ok()?.into_inner().status?;
        st.conditions
            .iter()
            .find(|c| !c.status)
            .map(|c| format!("{}=false reason:{} message:{}", c.r#type, c.reason, c.message))
    }

    async fn register(&self) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = node::node_object(&self.cfg, &self.facts.lock().expect("facts"), Utc::now());
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => tracing::info!(node = %self.node_name, "registered the node"),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::info!(node = %self.node_name, "node already registered")
            }
            Err(e) => return Err(anyhow::anyhow!("registering node {}: {e}", self.node_name)),
        }
        self.post_node_status().await
    }

    async fn post_node_status(&self) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let status = node::node_status(&self.cfg, &self.facts.lock().expect("facts"), Utc::now());
        nodes
            .patch_status(
                &self.node_name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "status": status })),
            )
            .await?;
        Ok(())
    }

    async fn node_status_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.cfg.node_status_update_frequency).await;
            self.refresh_facts().await;
            if let Err(e) = self.post_node_status().await {
                tracing::warn!(error = %e, "updating the node status");
            }
            self.maybe_evict();
            self.sweep_pod_cgroups(&HashSet::new());
        }
    }

    /// Pod cgroups of pods this agent does not run (nor `live` ones it is about to).
    fn sweep_pod_cgroups(&self, live: &HashSet<String>) {
        let mut keep: HashSet<String> = self.pods.lock().expect("pods").keys().cloned().collect();
        keep.extend(live.iter().cloned());
        sweep_pod_cgroups(&self.node_facts.cgroup_parent, &keep);
    }

    /// Under a hard eviction threshold, one pod at a time is evicted: BestEffort first, then
    /// Burstable, then Guaranteed, the newest first within a class; static pods never.
    fn maybe_evict(&self) {
        let signal = node::eviction_signal(&self.cfg, &self.facts.lock().expect("facts"));
        let Some((resource, left)) = signal else { return };
        if !self.evictions.lock().expect("evictions").is_empty() {
            return; // the last eviction is still under way
        }
        let pods = self.pods.lock().expect("pods");
        let rank = |p: &Pod| match spec::qos_class(p) {
            spec::QosClass::BestEffort => 0,
            spec::QosClass::Burstable => 1,
            spec::QosClass::Guaranteed => 2,
        };
        let victim = pods
            .values()
            .filter_map(|tx| tx.borrow().clone())
            .filter(|p| !crate::static_pods::is_static(p) && p.metadata.deletion_timestamp.is_none())
            .filter(|p| !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")))
            .min_by_key(|p| (rank(p), std::cmp::Reverse(p.metadata.creation_timestamp.clone().map(|t| t.0))));
        let Some(victim) = victim else { return };
        let uid = victim.metadata.uid.clone().unwrap_or_default();
        let message = format!(
            "The node was low on resource: {resource}. Threshold quantity: {}, available: {left}.",
            self.cfg
                .eviction_hard
                .get(if resource == "memory" { "memory.available" } else { "nodefs.available" })
                .cloned()
                .unwrap_or_default()
        );
        tracing::warn!(pod = spec::ids(&victim).1, %message, "evicting");
        self.evictions.lock().expect("evictions").insert(uid.clone(), message);
        if let Some(tx) = pods.get(&uid) {
            tx.send_modify(|_| {});
        }
    }

    async fn lease_loop(self: Arc<Self>) {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let every = Duration::from_secs((self.cfg.node_lease_duration_seconds.max(4) / 4) as u64);
        loop {
            let spec = LeaseSpec {
                holder_identity: Some(self.node_name.clone()),
                lease_duration_seconds: Some(self.cfg.node_lease_duration_seconds),
                renew_time: Some(MicroTime(Utc::now())),
                ..Default::default()
            };
            let patch = serde_json::json!({ "spec": spec });
            let renewed = match leases.patch(&self.node_name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    let mut lease = Lease { spec: Some(spec), ..Default::default() };
                    lease.metadata.name = Some(self.node_name.clone());
                    lease.metadata.namespace = Some("kube-node-lease".into());
                    leases.create(&PostParams::default(), &lease).await.map(|_| ())
                }
                other => other.map(|_| ()),
            };
            if let Err(e) = renewed {
                tracing::warn!(error = %e, "renewing the node lease");
            }
            tokio::time::sleep(every).await;
        }
    }

    /// List, then watch from the list's resourceVersion; relist when the watch expires (410).
    async fn watch_pods(self: &Arc<Self>) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let selector = format!("spec.nodeName={}", self.node_name);
        loop {
            let list = match pods.list(&ListParams::default().fields(&selector)).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "listing pods");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
            };
            let live: HashSet<String> = list.items.iter().filter_map(|p| p.metadata.uid.clone()).collect();
            let gone: Vec<String> = self
                .pods
                .lock()
                .expect("pods")
                .iter()
                .filter(|(uid, tx)| {
                    !live.contains(*uid) && !tx.borrow().as_ref().is_some_and(crate::static_pods::is_static)
                })
                .map(|(uid, _)| uid.clone())
                .collect();
            for uid in gone {
                self.deliver_gone(&uid);
            }
            self.remove_orphans(&live).await;
            for p in list.items {
                self.deliver(p);
            }
            let mut rv = list.metadata.resource_version.unwrap_or_default();
            loop {
                let wp = WatchParams::default().fields(&selector).timeout(290);
                let stream = match pods.watch(&wp, &rv).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "watching pods");
                        break;
                    }
                };
                let mut stream = stream.boxed();
                let mut relist = false;
                loop {
                    match stream.try_next().await {
                        Ok(Some(WatchEvent::Added(p))) | Ok(Some(WatchEvent::Modified(p))) => {
                            rv = p.metadata.resource_version.clone().unwrap_or(rv);
                            self.deliver(p);
                        }
                        Ok(Some(WatchEvent::Deleted(p))) => {
                            rv = p.metadata.resource_version.clone().unwrap_or(rv);
                            if let Some(uid) = &p.metadata.uid {
                                self.deliver_gone(uid);
                            }
                        }
                        Ok(Some(WatchEvent::Bookmark(b))) => rv = b.metadata.resource_version,
                        Ok(Some(WatchEvent::Error(e))) => {
                            relist = e.code == 410;
                            tracing::debug!(code = e.code, message = %e.message, "watch error");
                            break;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "pod watch stream");
                            relist = true;
                            break;
                        }
                    }
                }
                if relist {
                    break;
                }
            }
        }
    }

    /// Keeps the CNI conflist and the overlay peers in step with the cluster's Nodes.
    async fn network_loop(self: Arc<Self>) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut rounds = 0u32;
        loop {
            match nodes.list(&ListParams::default()).await {
                Ok(list) => {
                    let (cfg, me) = (self.cfg.network.clone(), self.node_name.clone());
                    // Re-apply now and then even without changes: a reboot or a manual edit
                    // may have removed routes.
                    let force = rounds.is_multiple_of(12);
                    match tokio::task::spawn_blocking(move || crate::network::apply(&cfg, &list.items, &me, force))
                        .await
                    {
                        Ok(Err(e)) => tracing::warn!(error = %e, "node networking"),
                        Err(e) => tracing::warn!(error = %e, "node networking task"),
                        Ok(Ok(_)) => {}
                    }
                }
                Err(e) => tracing::warn!(error = %e, "listing nodes"),
            }
            rounds = rounds.wrapping_add(1);
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }

    /// Runs the manifests in `dir`: new ones started, removed or changed ones stopped, and each
    /// one's mirror pod kept in the API.
    async fn static_pod_loop(self: Arc<Self>, dir: std::path::PathBuf) {
        let mut running: HashSet<String> = HashSet::new();
        loop {
            let (pods, errors) = crate::static_pods::read_dir(&dir, &self.node_name);
            for e in errors {
                tracing::warn!("static pod manifest: {e}");
            }
            let now: HashSet<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
            for uid in running.difference(&now) {
                self.deliver_gone(uid);
            }
            for pod in pods {
                self.ensure_mirror(&pod).await;
                if !self.pods.lock().expect("pods").contains_key(pod.metadata.uid.as_deref().unwrap_or_default()) {
                    self.deliver_local(pod);
                }
            }
            running = now;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }

    /// Posts (or replaces) the mirror pod of a static pod.
    async fn ensure_mirror(&self, pod: &Pod) {
        let (ns, name, _) = spec::ids(pod);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let want = pod.metadata.annotations.as_ref().and_then(|a| a.get(crate::static_pods::ANN_HASH)).cloned();
        // Create first: a node may not read pods that are not (yet) bound to it.
        match api.create(&PostParams::default(), &crate::static_pods::mirror(pod)).await {
            Ok(_) => tracing::info!(pod = %name, "mirror pod created"),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let current = api.get_opt(name).await.ok().flatten();
                let hash = current
                    .as_ref()
                    .and_then(|m| m.metadata.annotations.as_ref())
                    .and_then(|a| a.get(crate::static_pods::ANN_MIRROR))
                    .cloned();
                if current.is_some() && hash != want {
                    // An older manifest's mirror: replaced on the next round.
                    let _ =
                        api.delete(name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await;
                }
            }
            Err(e) => tracing::warn!(pod = %name, error = %e, "creating the mirror pod"),
        }
    }

    /// Sandboxes of pods the API no longer has (deleted while this agent was down) and that
    /// no worker owns: stopped and removed, with their volumes.
    async fn remove_orphans(&self, live: &HashSet<String>) {
        let Ok(sandboxes) = self.rt.list_pod_sandboxes(HashMap::new()).await else { return };
        let owned: HashSet<String> = self.pods.lock().expect("pods").keys().cloned().collect();
        for sb in sandboxes {
            let Some(uid) = sb.labels.get(spec::LABEL_POD_UID) else { continue };
            let is_static = sb.annotations.get(crate::static_pods::ANN_SOURCE).is_some_and(|s| s == "file");
            if live.contains(uid) || owned.contains(uid) || is_static {
                continue;
            }
            tracing::info!(pod = ?sb.labels.get(spec::LABEL_POD_NAME), uid = %uid, "removing a pod the API no longer has");
            let _ = self.rt.stop_pod_sandbox(&sb.id).await;
            let _ = self.rt.remove_pod_sandbox(&sb.id).await;
            // Its volumes: unmounted and removed with the pod directory.
            let mut ghost = Pod::default();
            ghost.metadata.uid = Some(uid.clone());
            let _ = volumes::cleanup(&self.cfg.root_dir, &ghost);
        }
        self.sweep_pod_cgroups(live);
    }

    fn deliver(self: &Arc<Self>, pod: Pod) {
        if pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(crate::static_pods::ANN_MIRROR)) {
            return;
        }
        self.deliver_local(pod);
    }

    fn deliver_local(self: &Arc<Self>, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else { return };
        let mut pods = self.pods.lock().expect("pods");
        match pods.get(&uid) {
            Some(tx) => {
                let _ = tx.send(Some(pod));
            }
            None => {
                tracing::debug!(pod = ?pod.metadata.name, uid = %uid, "new pod: starting its worker");
                let (tx, rx) = watch::channel(Some(pod));
                pods.insert(uid.clone(), tx);
                tokio::spawn(self.clone().pod_task(uid, rx));
            }
        }
    }

    /// The pod vanished from the API (force deletion): tear it down at once.
    fn deliver_gone(&self, uid: &str) {
        if let Some(tx) = self.pods.lock().expect("pods").get(uid) {
            let _ = tx.send(None);
        }
    }

    async fn fetch_sources(&self, pod: &Pod, pod_ip: Option<String>) -> Sources {
        let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let (cms, secrets) = referenced(pod);
        let mut src =
            Sources { pod_ip, host_ip: self.facts.lock().expect("facts").internal_ip.clone(), ..Default::default() };
        src.tokens = self
            .tokens
            .tokens_for(&crate::sa_tokens::ApiTokens { client: self.client.clone() }, pod, std::time::SystemTime::now())
            .await;
        let cm_api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &ns);
        for name in cms {
            if let Ok(Some(cm)) = cm_api.get_opt(&name).await {
                let mut data: BTreeMap<String, String> = cm.data.unwrap_or_default();
                for (k, v) in cm.binary_data.unwrap_or_default() {
                    data.insert(k, String::from_utf8_lossy(&v.0).into_owned());
                }
                src.config_maps.insert(name, data);
            }
        }
        let secret_api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        for name in secrets {
            if let Ok(Some(s)) = secret_api.get_opt(&name).await {
                let mut data: BTreeMap<String, Vec<u8>> =
                    s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
                for (k, v) in s.string_data.unwrap_or_default() {
                    data.insert(k, v.into_bytes());
                }
                src.secrets.insert(name, data);
            }
        }
        src
    }

    /// Queues an event about `pod` (posted by [`post_events`]).
    fn record(&self, pod: &Pod, kind: &str, reason: &str, message: &str) {
        let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let now = Utc::now();
        let mut ev = Event {
            involved_object: ObjectReference {
                kind: Some("Pod".into()),
                api_version: Some("v1".into()),
                namespace: Some(ns.clone()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(kind.into()),
            source: Some(EventSource { component: Some("kubelet".into()), host: Some(self.node_name.clone()) }),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.node_name.clone()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            ..Default::default()
        };
        ev.metadata.generate_name = Some(format!("{}.", pod.metadata.name.clone().unwrap_or_default()));
        ev.metadata.namespace = Some(ns);
        if self.events.try_send((Instant::now(), ev)).is_err() {
            tracing::warn!(reason, "the event queue is full: dropping an event");
        }
    }

    async fn pod_task(self: Arc<Self>, uid: String, mut rx: watch::Receiver<Option<Pod>>) {
        let mut worker =
            Worker::new(self.rt.clone(), self.runtime_name.clone()).with_start_gate(self.start_gate.clone());
        let probe_state = Arc::new(Mutex::new(ProbeState::default()));
        let (sig_tx, mut sig_rx) = mpsc::unbounded_channel::<Signal>();
        let mut probers: HashMap<(String, Kind), (String, tokio::task::JoinHandle<()>)> = HashMap::new();
        let mut last_status: Option<PodStatus> = None;
        let mut last_pod: Option<Pod> = rx.borrow().clone();
        let mut pod_ip: Option<String> = None;
        loop {
            let current = rx.borrow_and_update().clone();
            if let Some(p) = &current {
                last_pod = Some(p.clone());
            }
            let Some(pod) = last_pod.clone() else { break };
            let deleting = current.is_none() || pod.metadata.deletion_timestamp.is_some();
            let eviction = self.evictions.lock().expect("evictions").get(&uid).cloned();
            if let (Some(message), false) = (eviction, deleting) {
                for (_, (_, h)) in probers.drain() {
                    h.abort();
                }
                if let Err(e) = worker.terminate(&pod, 0).await {
                    tracing::warn!(pod = %uid, error = %e, "evicting");
                }
                let mut status = last_status.clone().unwrap_or_default();
                status.phase = Some("Failed".into());
                status.reason = Some("Evicted".into());
                status.message = Some(message.clone());
                if let Err(e) = self.patch_status(&pod, &status).await {
                    tracing::warn!(pod = %uid, error = %e, "reporting the eviction");
                }
                self.record(&pod, "Warning", "Evicted", &message);
                self.evictions.lock().expect("evictions").remove(&uid);
                last_status = Some(status);
                continue;
            }
            if deleting {
                for (_, (_, h)) in probers.drain() {
                    h.abort();
                }
                let grace = if current.is_none() {
                    0
                } else {
                    pod.metadata
                        .deletion_grace_period_seconds
                        .or(pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
                        .unwrap_or(30)
                };
                self.record(
                    &pod,
                    "Normal",
                    "Killing",
                    &format!("Stopping pod {} (grace period {grace}s)", spec::ids(&pod).1),
                );
                match worker.terminate(&pod, grace).await {
                    Ok(true) => {
                        if let Err(e) = volumes::cleanup(&self.cfg.root_dir, &pod) {
                            tracing::warn!(error = %e, "removing pod volumes");
                        }
                        let _ = std::fs::remove_dir_all(spec::pod_log_dir(&self.node_facts.log_root, &pod));
                        remove_cgroup(&spec::pod_cgroup(&pod, &self.node_facts.cgroup_parent));
                        if current.is_some() || crate::static_pods::is_static(&pod) {
                            self.confirm_deletion(&pod).await;
                        }
                        break;
                    }
                    Ok(false) => tokio::time::sleep(Duration::from_secs(1)).await,
                    Err(e) => {
                        tracing::warn!(pod = %uid, error = %e, "terminating");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
                continue;
            }
            // A pod the API already calls Succeeded or Failed (finished, or evicted) is never run
            // again, by this worker or a fresh one after a restart: wait for its deletion.
            let api_phase = last_status.as_ref().or(pod.status.as_ref()).and_then(|s| s.phase.clone());
            if matches!(api_phase.as_deref(), Some("Succeeded" | "Failed"))
                && last_status.as_ref().is_none_or(|s| s.reason.as_deref() == Some("Evicted"))
            {
                if rx.changed().await.is_err() {
                    break;
                }
                continue;
            }
            let sources = self.fetch_sources(&pod, pod_ip.clone()).await;
            let prepared = volumes::prepare(&self.cfg.root_dir, &pod, &sources);
            if let Err(e) = &prepared {
                self.record(&pod, "Warning", "FailedMount", &e.to_string());
            }
            let mounts = |c: &k8s_openapi::api::core::v1::Container| match &prepared {
                Ok(v) => volumes::container_mounts(v, c),
                Err(e) => Err(e.to_string()),
            };
            let probes_now = probe_state.lock().expect("probe state").clone();
            let pull_secrets: Vec<Vec<u8>> = pod
                .spec
                .iter()
                .flat_map(|s| s.image_pull_secrets.iter().flatten())
                .filter_map(|r| sources.secrets.get(&r.name))
                .filter_map(|d| d.get(".dockerconfigjson").or_else(|| d.get(".dockercfg")).cloned())
                .collect();
            let pull_auth = |image: &str| spec::pull_auth(&pull_secrets, image);
            let memory_capacity = self.facts.lock().expect("facts").memory_total;
            let cx = PodContext {
                pod: &pod,
                env: &sources,
                node: &self.node_facts,
                memory_capacity,
                mounts: &mounts,
                probes: &probes_now,
                pull_auth: &pull_auth,
                now: Utc::now(),
            };
            let outcome = worker.sync(&cx).await;
            let mut wait = self.cfg.sync_frequency;
            match outcome {
                Ok(mut out) => {
                    for (kind, reason, message) in &out.events {
                        self.record(&pod, kind, reason, message);
                    }
                    pod_ip = out.status.pod_ip.clone();
                    self.manage_probers(
                        &pod,
                        &out.running,
                        pod_ip.as_deref().unwrap_or(""),
                        &probe_state,
                        &sig_tx,
                        &mut probers,
                    );
                    keep_transition_times(&mut out.status, last_status.as_ref().or(pod.status.as_ref()));
                    if last_status.as_ref() != Some(&out.status) {
                        match self.patch_status(&pod, &out.status).await {
                            Ok(()) => {
                                tracing::debug!(pod = ?pod.metadata.name, phase = ?out.status.phase, "status patched");
                                last_status = Some(out.status.clone());
                            }
                            Err(e) => tracing::warn!(pod = %uid, error = %e, "patching pod status"),
                        }
                    }
                    if let Some(r) = out.requeue {
                        wait = wait.min(r.max(Duration::from_millis(100)));
                    }
                }
                Err(e) => {
                    tracing::warn!(pod = %uid, error = %e, "sync failed");
                    wait = Duration::from_secs(2);
                }
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(wait) => {}
                sig = sig_rx.recv() => {
                    if let Some(Signal::Restart { container, id, message }) = sig {
                        self.record(&pod, "Normal", "Killing", &format!("Container {container} failed its probe and will be restarted: {message}"));
                        let grace = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30);
                        let _ = self.rt.stop_container(&id, grace).await;
                        probers.retain(|(name, _), _| name != &container);
                        probe_state.lock().expect("probe state").ready.remove(&container);
                        probe_state.lock().expect("probe state").started.remove(&container);
                    }
                }
            }
        }
        self.pods.lock().expect("pods").remove(&uid);
        self.sweep_pod_cgroups(&HashSet::new());
        self.tokens.forget(&uid);
        tracing::info!(pod = %uid, "pod worker done");
    }

    /// One probe task per (container, kind) for the running instance; restarted instances get
    /// fresh probes.
    fn manage_probers(
        &self,
        pod: &Pod,
        running: &HashMap<String, String>,
        ip: &str,
        state: &Arc<Mutex<ProbeState>>,
        sig: &mpsc::UnboundedSender<Signal>,
        probers: &mut HashMap<(String, Kind), (String, tokio::task::JoinHandle<()>)>,
    ) {
        probers.retain(|(name, _), (id, h)| {
            let keep = running.get(name) == Some(id);
            if !keep {
                h.abort();
            }
            keep
        });
        let Some(spec) = &pod.spec else { return };
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always")))
        {
            let Some(id) = running.get(&c.name) else { continue };
            {
                let mut st = state.lock().expect("probe state");
                if c.readiness_probe.is_some() {
                    st.ready.entry(c.name.clone()).or_insert(false);
                }
                if c.startup_probe.is_some() {
                    st.started.entry(c.name.clone()).or_insert(false);
                }
            }
            for (kind, probe) in [
                (Kind::Liveness, &c.liveness_probe),
                (Kind::Readiness, &c.readiness_probe),
                (Kind::Startup, &c.startup_probe),
            ] {
                let Some(probe) = probe else { continue };
                let key = (c.name.clone(), kind);
                if probers.contains_key(&key) {
                    continue;
                }
                let task = probes::watch_container(
                    self.rt.clone(),
                    c.clone(),
                    kind,
                    probe.clone(),
                    id.clone(),
                    ip.to_string(),
                    state.clone(),
                    sig.clone(),
                );
                probers.insert(key, (id.clone(), tokio::spawn(task)));
            }
        }
    }

    async fn patch_status(&self, pod: &Pod, status: &PodStatus) -> Result<(), kube::Error> {
        let (ns, name, _) = spec::ids(pod);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(serde_json::json!({ "status": status }))).await?;
        Ok(())
    }

    /// Everything of the pod is gone from the node: finish its deletion in the API.
    async fn confirm_deletion(&self, pod: &Pod) {
        let (ns, name, uid) = spec::ids(pod);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        // A static pod's API copy (its mirror) has a UID of its own.
        let preconditions = (!crate::static_pods::is_static(pod))
            .then(|| Preconditions { uid: Some(uid.to_string()), resource_version: None });
        let dp = DeleteParams { grace_period_seconds: Some(0), preconditions, ..Default::default() };
        match api.delete(name, &dp).await {
            Ok(_) => tracing::info!(pod = %name, "pod deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => tracing::warn!(pod = %name, error = %e, "confirming the deletion"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cgroup_sweep_removes_only_unknown_idle_pods() {
        let d = tempfile::tempdir().unwrap();
        let mount = d.path().join("memory");
        let pod = |rel: &str| mount.join("berth").join(rel);
        for rel in [
            "podgone/ctr",
            "burstable/podgone2",
            "besteffort/podkept/ctr",
            "besteffort/podbusy/ctr",
            "besteffort/notapod",
        ] {
            std::fs::create_dir_all(pod(rel)).unwrap();
        }
        // A cgroup holding a process refuses rmdir; a file stands in for it here.
        std::fs::write(pod("besteffort/podbusy/ctr/tasks"), "42").unwrap();
        let keep: HashSet<String> = ["kept".to_string()].into();
        sweep_pod_cgroups_in(&[mount.display().to_string()], "/berth/", &keep);
        assert!(
            !pod("podgone").exists() && !pod("burstable/podgone2").exists(),
            "unknown idle pods are removed with their container cgroups"
        );
        assert!(pod("besteffort/podkept/ctr").exists(), "a pod this agent runs stays");
        assert!(pod("besteffort/podbusy/ctr").exists(), "a cgroup in use stays");
        assert!(pod("besteffort/notapod").exists() && pod("burstable").exists(), "QoS and other directories stay");
    }
}
