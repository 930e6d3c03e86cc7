//! Controllers: level-triggered reconcilers fed by store watches, one worker per controller (so
//! a key is never reconciled twice at once), with periodic resync and requeue-after.

pub mod csr;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod gc;
pub mod job;
pub mod node_lifecycle;
pub mod replicaset;
pub mod sched_cache;
pub mod scheduler;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::api::registry::{meta_str, new_uid, now, FieldValidation, Registry};
use crate::api::resources::{self, ResourceDef};
use crate::api::status::ApiError;

/// `namespace/name` (or just `name` for cluster objects).
pub type Key = String;

pub fn key_of(obj: &Value) -> Key {
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{ns}/{}", meta_str(obj, "name")),
        None => meta_str(obj, "name").to_string(),
    }
}

pub fn split_key(k: &str) -> (Option<&str>, &str) {
    match k.split_once('/') {
        Some((ns, n)) => (Some(ns), n),
        None => (None, k),
    }
}

/// The controller owner reference of `obj` with this kind: (name, uid).
pub fn controller_of(obj: &Value, kind: &str) -> Option<(String, String)> {
    obj["metadata"]["ownerReferences"].as_array()?.iter().find(|o| o["controller"] == true && o["kind"] == kind).map(
        |o| (o["name"].as_str().unwrap_or_default().to_string(), o["uid"].as_str().unwrap_or_default().to_string()),
    )
}

/// The key of `obj` when it is of kind `own`, else the key of its controller of kind `own`.
pub fn self_or_controller(r: &ResourceDef, obj: &Value, own: &str) -> Vec<Key> {
    if r.kind == own {
        return vec![key_of(obj)];
    }
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
    controller_of(obj, own).map(|(n, _)| format!("{ns}/{n}")).into_iter().collect()
}

/// Whether the raw JSON of a stored object mentions `"field"` (a cheap pre-decode test).
pub fn raw_has(raw: &[u8], field: &str) -> bool {
    let needle = format!("\"{field}\"");
    raw.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// For owner-keyed controllers: their own kind, or objects with owner references.
pub fn own_or_owned(r: &ResourceDef, own: &str, raw: &[u8]) -> bool {
    r.kind == own || raw_has(raw, "ownerReferences")
}

/// Keys of every object of `kind`.
pub async fn keys_of_kind(reg: &Registry, kind: &str) -> Vec<Key> {
    reg.list_all(resources::by_kind(kind), None, None).await.unwrap_or_default().iter().map(key_of).collect()
}

pub fn owner_ref(owner: &Value) -> Value {
    json!({"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
           "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true})
}

#[async_trait]
pub trait Reconciler: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Resources whose changes are mapped to keys.
    fn watches(&self) -> Vec<&'static ResourceDef>;
    /// Keys to reconcile when `obj` (of resource `r`) changed.
    fn keys_for(&self, r: &ResourceDef, obj: &Value) -> Vec<Key>;
    /// Whether a stored object may map to keys at all, judged from its raw JSON before it
    /// is decoded (most pod events concern no owner-keyed controller).
    fn may_concern(&self, _r: &ResourceDef, _raw: &[u8]) -> bool {
        true
    }
    /// All keys, for resync.
    async fn all_keys(&self) -> Vec<Key>;
    /// Reconciles one key; Some(d) asks to run again after d.
    async fn reconcile(&self, key: &Key) -> Result<Option<Duration>, ApiError>;
    fn resync(&self) -> Duration {
        Duration::from_secs(30)
    }
}

/// Runs a reconciler until the process ends; returns a sender that queues keys for it.
pub fn spawn(reg: Registry, rec: Arc<dyn Reconciler>) -> mpsc::UnboundedSender<Key> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Key>();
    for r in rec.watches() {
        let (reg, rec, tx) = (reg.clone(), rec.clone(), tx.clone());
        tokio::spawn(async move { feed(reg, rec, r, tx).await });
    }
    let kick = tx.clone();
    tokio::spawn(async move {
        let mut queue: VecDeque<Key> = VecDeque::new();
        let mut queued: HashSet<Key> = HashSet::new();
        let mut later: BTreeMap<Instant, Vec<Key>> = BTreeMap::new();
        let mut next_resync = Instant::now();
        loop {
            while let Ok(k) = rx.try_recv() {
                if queued.insert(k.clone()) {
                    queue.push_back(k);
                }
            }
            let now = Instant::now();
            if now >= next_resync {
                for k in rec.all_keys().await {
                    if queued.insert(k.clone()) {
                        queue.push_back(k);
                    }
                }
                next_resync = now + rec.resync();
            }
            while let Some((&t, _)) = later.first_key_value() {
                if t > now {
                    break;
                }
                for k in later.pop_first().map(|e| e.1).unwrap_or_default() {
                    if queued.insert(k.clone()) {
                        queue.push_back(k);
                    }
                }
            }
            if let Some(k) = queue.pop_front() {
                queued.remove(&k);
                match rec.reconcile(&k).await {
                    Ok(Some(d)) => later.entry(Instant::now() + d).or_default().push(k),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(controller = rec.name(), key = %k, error = %e, "reconcile failed; retrying");
                        later.entry(Instant::now() + Duration::from_millis(500)).or_default().push(k);
                    }
                }
                continue;
            }
            let wake = later.first_key_value().map(|(t, _)| *t).unwrap_or(next_resync).min(next_resync);
            tokio::select! {
                k = rx.recv() => match k {
                    Some(k) => if queued.insert(k.clone()) { queue.push_back(k) },
                    None => return,
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    });
    kick
}

/// Watches one resource (all namespaces) and maps changes to keys; restarts on errors.
async fn feed(reg: Registry, rec: Arc<dyn Reconciler>, r: &'static ResourceDef, tx: mpsc::UnboundedSender<Key>) {
    loop {
        let Ok(rev) = reg.store.revision().await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let mut w = match reg.store.watch(&r.prefix(None), rev).await {
            Ok(w) => w,
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for k in rec.all_keys().await {
            let _ = tx.send(k);
        }
        while let Some(Ok(ev)) = w.recv().await {
            for v in [&ev.value, &ev.prev].into_iter().flatten().filter(|v| rec.may_concern(r, v)) {
                if let Ok(obj) = serde_json::from_slice::<Value>(v) {
                    for k in rec.keys_for(r, &obj) {
                        if tx.send(k).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        tracing::debug!(controller = rec.name(), resource = r.plural, "watch ended; restarting");
    }
}

/// Records a core/v1 Event about `obj`.
pub async fn record_event(reg: &Registry, obj: &Value, ty: &str, reason: &str, message: &str, component: &str) {
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
    let ts = now();
    let ev = json!({
        "metadata": {"name": format!("{}.{}", meta_str(obj, "name"), &new_uid()[..8]), "namespace": ns},
        "involvedObject": {"kind": obj["kind"], "apiVersion": obj["apiVersion"], "name": obj["metadata"]["name"],
                           "namespace": obj["metadata"]["namespace"], "uid": obj["metadata"]["uid"],
                           "resourceVersion": obj["metadata"]["resourceVersion"]},
        "reason": reason, "message": message, "type": ty, "count": 1,
        "firstTimestamp": ts, "lastTimestamp": ts, "source": {"component": component},
        "reportingComponent": component, "reportingInstance": "berth-control",
    });
    if let Err(e) = reg.create(resources::by_kind("Event"), Some(&ns), ev, FieldValidation::Ignore).await {
        tracing::debug!(error = %e, reason, "event not recorded");
    }
}

/// Binds a pod to a node once (409 if bound elsewhere) and sets PodScheduled, in one write
/// (as kube-apiserver's binding subresource does). Returns the bound pod.
pub async fn bind(
    reg: &Registry,
    r: &'static ResourceDef,
    ns: Option<&str>,
    name: &str,
    node: &str,
) -> Result<Value, ApiError> {
    let mut already: Option<String> = None;
    let bound = reg
        .modify(r, ns, name, Some("binding"), |p| match p["spec"]["nodeName"].as_str() {
            Some(n) if !n.is_empty() => {
                already = Some(n.to_string());
                false
            }
            _ => {
                p["spec"]["nodeName"] = json!(node);
                set_condition(&mut p["status"], "PodScheduled", "True", "", "");
                true
            }
        })
        .await?;
    if let Some(n) = already {
        return Err(ApiError::conflict("", "pods", name, &format!("pod {name} is already assigned to node \"{n}\"")));
    }
    Ok(bound)
}

/// Sets a status condition; returns whether anything changed.
pub fn set_condition(status: &mut Value, ty: &str, st: &str, reason: &str, message: &str) -> bool {
    if !status.is_object() {
        *status = json!({});
    }
    if !status["conditions"].is_array() {
        status["conditions"] = json!([]);
    }
    let conds = status["conditions"].as_array_mut().expect("array");
    let ts = now();
    match conds.iter_mut().find(|c| c["type"] == ty) {
        Some(c)
            if c["status"] == st
                && c["reason"].as_str().unwrap_or_default() == reason
                && c["message"].as_str().unwrap_or_default() == message =>
        {
            false
        }
        Some(c) => {
            if c["status"] != st {
                c["lastTransitionTime"] = json!(ts);
            }
            c["status"] = json!(st);
            c["reason"] = json!(reason);
            c["message"] = json!(message);
            c["lastProbeTime"] = Value::Null;
            true
        }
        None => {
            let mut c = json!({"type": ty, "status": st, "lastTransitionTime": ts, "lastProbeTime": null});
            if !reason.is_empty() {
                c["reason"] = json!(reason);
            }
            if !message.is_empty() {
                c["message"] = json!(message);
            }
            conds.push(c);
            true
        }
    }
}

pub fn condition_true(status: &Value, ty: &str) -> bool {
    status["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == ty && c["status"] == "True")
}

/// Active: not terminating and not finished.
pub fn pod_active(p: &Value) -> bool {
    p["metadata"]["deletionTimestamp"].is_null()
        && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

pub fn pod_ready(p: &Value) -> bool {
    condition_true(&p["status"], "Ready")
}

/// Settings for the controllers.
#[derive(Clone, Debug)]
pub struct Settings {
    pub cluster_cidr: String,
    pub node_cidr_prefix: u8,
    pub node_monitor_grace: Duration,
}

/// Starts every controller; `pki` signs the client certificates nodes ask for.
pub fn start_all(reg: &Registry, s: &Settings, pki: Arc<crate::pki::Pki>) {
    let _ = spawn(reg.clone(), Arc::new(csr::Csrs { reg: reg.clone(), pki }));
    let _ = spawn(reg.clone(), Arc::new(replicaset::ReplicaSets { reg: reg.clone() }));
    let _ = spawn(reg.clone(), Arc::new(deployment::Deployments { reg: reg.clone() }));
    let _ = spawn(reg.clone(), Arc::new(job::Jobs { reg: reg.clone() }));
    let _ = spawn(reg.clone(), Arc::new(daemonset::DaemonSets { reg: reg.clone() }));
    let _ = spawn(reg.clone(), Arc::new(endpoints::Endpoints { reg: reg.clone() }));
    let sched = Arc::new(scheduler::Scheduler::new(reg.clone()));
    let kick = spawn(reg.clone(), sched.clone());
    sched.cache.start(reg.clone(), kick, scheduler::PASS);
    let _ = spawn(reg.clone(), Arc::new(gc::Collector { reg: reg.clone() }));
    let _ = spawn(reg.clone(), Arc::new(gc::Namespaces { reg: reg.clone() }));
    let _ = spawn(reg.clone(), Arc::new(node_lifecycle::NodeLifecycle::new(reg.clone(), s.clone())));
}
