//! The scheduler: binds pending pods (schedulerName default-scheduler) to Ready, schedulable
//! nodes that fit their requests against allocatable, match nodeSelector and required node
//! affinity, tolerate NoSchedule/NoExecute taints and have their host ports free; preferred
//! affinity and least-requested resources pick among them. Unschedulable pods get a
//! PodScheduled=False condition and one FailedScheduling event per distinct reason.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::Value;

use super::sched_cache::SchedCache;
use super::{condition_true, set_condition, Key, Reconciler};
use crate::api::registry::{meta_str, Registry};
use crate::api::resources::{self, ResourceDef};
use crate::api::status::ApiError;

/// The whole pending set is one key: a pass schedules every pending pod with one view of nodes.
pub const PASS: &str = "pass";
/// Binds in flight at once.
const BIND_CONCURRENCY: usize = 32;

pub struct Scheduler {
    reg: Registry,
    /// Pods, nodes and per-node usage, kept from watches (started by `controllers::start_all`).
    pub cache: Arc<SchedCache>,
    /// pod uid → last unschedulable message (one event per distinct reason).
    reported: Mutex<HashMap<String, String>>,
}

impl Scheduler {
    pub fn new(reg: Registry) -> Self {
        Scheduler { reg, cache: Arc::new(SchedCache::default()), reported: Mutex::new(HashMap::new()) }
    }
}

/// Parses a Kubernetes quantity to milli-units (cpu) or bytes (everything else, ×1000).
pub fn quantity_milli(q: &Value) -> i64 {
    let s = match q {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return 0,
    };
    let (num, suffix) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = num.parse().unwrap_or(0.0);
    let mult: f64 = match suffix {
        "m" => 0.001,
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        _ => 1.0,
    };
    (n * mult * 1000.0).round() as i64
}

/// A pod's requests (max of init containers and sum of containers), in milli-units.
/// The pseudo-resource counting a node's pods of the same owner (for spreading).
pub fn owner_key(pod: &Value) -> Option<String> {
    pod["metadata"]["ownerReferences"][0]["uid"].as_str().map(|u| format!("owner:{u}"))
}

pub fn pod_requests(spec: &Value) -> HashMap<String, i64> {
    let mut sum: HashMap<String, i64> = HashMap::new();
    for c in spec["containers"].as_array().into_iter().flatten() {
        for (k, v) in c["resources"]["requests"].as_object().into_iter().flatten() {
            *sum.entry(k.clone()).or_default() += quantity_milli(v);
        }
    }
    for c in spec["initContainers"].as_array().into_iter().flatten() {
        for (k, v) in c["resources"]["requests"].as_object().into_iter().flatten() {
            let e = sum.entry(k.clone()).or_default();
            *e = (*e).max(quantity_milli(v));
        }
    }
    *sum.entry("pods".into()).or_default() += 1000;
    sum
}

pub fn host_ports(spec: &Value) -> Vec<(String, i64, String)> {
    spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| {
            p["hostPort"].as_i64().filter(|hp| *hp > 0).map(|hp| {
                (
                    p["hostIP"].as_str().unwrap_or("0.0.0.0").to_string(),
                    hp,
                    p["protocol"].as_str().unwrap_or("TCP").to_string(),
                )
            })
        })
        .collect()
}

/// Whether `tols` tolerate `taint`.
pub fn tolerates(tols: &Value, taint: &Value) -> Option<Option<i64>> {
    tols.as_array()
        .into_iter()
        .flatten()
        .find(|t| {
            let key_ok = t["key"].as_str().unwrap_or_default().is_empty() && t["operator"] == "Exists"
                || t["key"] == taint["key"];
            let op_ok = t["operator"] == "Exists"
                || t["value"].as_str().unwrap_or_default() == taint["value"].as_str().unwrap_or_default();
            let eff_ok = t["effect"].as_str().unwrap_or_default().is_empty() || t["effect"] == taint["effect"];
            key_ok && op_ok && eff_ok
        })
        .map(|t| t["tolerationSeconds"].as_i64())
}

pub fn node_selector_term_matches(term: &Value, node: &Value) -> bool {
    let labels = crate::api::selector::labels_of(node);
    let exprs_ok = term["matchExpressions"].as_array().into_iter().flatten().all(|e| {
        let key = e["key"].as_str().unwrap_or_default();
        let vals: Vec<&str> = e["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let v = labels.get(key);
        match e["operator"].as_str().unwrap_or_default() {
            "In" => v.is_some_and(|v| vals.contains(&v.as_str())),
            "NotIn" => v.is_none_or(|v| !vals.contains(&v.as_str())),
            "Exists" => v.is_some(),
            "DoesNotExist" => v.is_none(),
            "Gt" => v
                .and_then(|v| v.parse::<i64>().ok())
                .zip(vals.first().and_then(|x| x.parse::<i64>().ok()))
                .is_some_and(|(a, b)| a > b),
            "Lt" => v
                .and_then(|v| v.parse::<i64>().ok())
                .zip(vals.first().and_then(|x| x.parse::<i64>().ok()))
                .is_some_and(|(a, b)| a < b),
            _ => false,
        }
    });
    let fields_ok = term["matchFields"].as_array().into_iter().flatten().all(|e| {
        let vals: Vec<&str> = e["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let name = meta_str(node, "name");
        match e["operator"].as_str().unwrap_or_default() {
            "In" => vals.contains(&name),
            "NotIn" => !vals.contains(&name),
            _ => false,
        }
    });
    exprs_ok && fields_ok
}

/// Why `node` cannot take `pod`, or None if it can.
pub fn filter(
    pod: &Value,
    node: &Value,
    used: &HashMap<String, i64>,
    ports: &HashSet<(String, i64, String)>,
) -> Option<&'static str> {
    let spec = &pod["spec"];
    if !condition_true(&node["status"], "Ready") {
        return Some("node(s) were not ready");
    }
    if node["spec"]["unschedulable"] == true {
        return Some("node(s) were unschedulable");
    }
    let labels = crate::api::selector::labels_of(node);
    if spec["nodeSelector"]
        .as_object()
        .into_iter()
        .flatten()
        .any(|(k, v)| labels.get(k).map(String::as_str) != v.as_str())
    {
        return Some("node(s) didn't match Pod's node affinity/selector");
    }
    let required =
        &spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    if let Some(terms) = required.as_array() {
        if !terms.iter().any(|t| node_selector_term_matches(t, node)) {
            return Some("node(s) didn't match Pod's node affinity/selector");
        }
    }
    for taint in node["spec"]["taints"].as_array().into_iter().flatten() {
        if matches!(taint["effect"].as_str(), Some("NoSchedule" | "NoExecute"))
            && tolerates(&spec["tolerations"], taint).is_none()
        {
            return Some("node(s) had untolerated taint");
        }
    }
    for (ip, port, proto) in host_ports(spec) {
        let clash = ports
            .iter()
            .any(|(i, p, pr)| *p == port && *pr == proto && (i == &ip || i == "0.0.0.0" || ip == "0.0.0.0"));
        if clash {
            return Some("node(s) didn't have free ports for the requested pod ports");
        }
    }
    let alloc = &node["status"]["allocatable"];
    for (res, want) in pod_requests(spec) {
        let cap = match alloc.get(&res) {
            Some(q) => quantity_milli(q),
            None if res == "pods" => 110_000,
            None if want == 0 => continue,
            None => 0,
        };
        if used.get(&res).copied().unwrap_or(0) + want > cap {
            return Some(match res.as_str() {
                "cpu" => "Insufficient cpu",
                "memory" => "Insufficient memory",
                "pods" => "Too many pods",
                _ => "Insufficient resources",
            });
        }
    }
    None
}

/// Higher is better: preferred node affinity weights, then the least requested cpu+memory share.
fn score(pod: &Value, node: &Value, used: &HashMap<String, i64>) -> i64 {
    let mut s = 0;
    for p in pod["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if node_selector_term_matches(&p["preference"], node) {
            s += p["weight"].as_i64().unwrap_or(0) * 1000;
        }
    }
    let alloc = &node["status"]["allocatable"];
    let mut free = 0;
    for r in ["cpu", "memory"] {
        let cap = alloc.get(r).map(quantity_milli).unwrap_or(0);
        if cap > 0 {
            free += (cap - used.get(r).copied().unwrap_or(0)).max(0) * 100 / cap;
        }
    }
    s + free
}

impl Scheduler {
    async fn pass(&self) -> Result<Option<Duration>, ApiError> {
        let pod_r = resources::by_kind("Pod");
        let Some(view) = self.cache.view() else {
            return Ok(Some(Duration::from_millis(200)));
        };
        let (nodes, mut used, mut ports) = (view.nodes, view.used, view.ports);
        let mut retry = false;
        let mut binds: Vec<(Value, String)> = Vec::new();
        for pod in view.pending.iter().map(|p| p.as_ref()) {
            let mut reasons: HashMap<&'static str, usize> = HashMap::new();
            let mut best: Option<(i64, &Value)> = None;
            for n in &nodes {
                let name = meta_str(n, "name");
                let empty = HashMap::new();
                let empty_ports = HashSet::new();
                match filter(pod, n, used.get(name).unwrap_or(&empty), ports.get(name).unwrap_or(&empty_ports)) {
                    Some(why) => *reasons.entry(why).or_default() += 1,
                    None => {
                        // Spreading, as kube-scheduler's default topology spread and balanced
                        // allocation do it in effect: fewer pods of the same owner, then fewer
                        // pods, on the node win.
                        let u = used.get(name).unwrap_or(&empty);
                        let same_owner = owner_key(pod).and_then(|k| u.get(&k).copied()).unwrap_or(0);
                        let s = score(pod, n, u) - same_owner * 20 - u.get("pods").copied().unwrap_or(0) / 1000;
                        if best.is_none_or(|(b, _)| s > b) {
                            best = Some((s, n));
                        }
                    }
                }
            }
            let (ns, name) = (pod["metadata"]["namespace"].as_str(), meta_str(pod, "name"));
            match best {
                Some((_, n)) => {
                    // Decided here, against this pass's accounting; bound below, concurrently.
                    let node = meta_str(n, "name").to_string();
                    let u = used.entry(node.clone()).or_default();
                    for (k, v) in pod_requests(&pod["spec"]) {
                        *u.entry(k).or_default() += v;
                    }
                    if let Some(k) = owner_key(pod) {
                        *u.entry(k).or_default() += 1;
                    }
                    ports.entry(node.clone()).or_default().extend(host_ports(&pod["spec"]));
                    binds.push((pod.clone(), node));
                }
                None => {
                    retry = true;
                    let mut parts: Vec<String> = reasons.iter().map(|(why, n)| format!("{n} {why}")).collect();
                    parts.sort();
                    let msg = format!(
                        "0/{} nodes are available: {}.",
                        nodes.len(),
                        if parts.is_empty() { "no nodes registered".to_string() } else { parts.join(", ") }
                    );
                    let uid = meta_str(pod, "uid").to_string();
                    let new =
                        self.reported.lock().unwrap_or_else(|e| e.into_inner()).insert(uid, msg.clone()).as_deref()
                            != Some(msg.as_str());
                    if new {
                        let m = msg.clone();
                        let _ = self
                            .reg
                            .modify(pod_r, ns, name, Some("status"), |p| {
                                set_condition(&mut p["status"], "PodScheduled", "False", "Unschedulable", &m)
                            })
                            .await;
                        super::record_event(&self.reg, pod, "Warning", "FailedScheduling", &msg, "default-scheduler")
                            .await;
                    }
                }
            }
        }
        // Binds are independent writes: issue them concurrently (the store batches their
        // commits). A bind lost to a race (404/409) is redone by the next pass.
        let results: Vec<Result<(), ApiError>> = futures_util::stream::iter(binds)
            .map(|(pod, node)| async move {
                let pod = &pod;
                let (ns, name) = (pod["metadata"]["namespace"].as_str(), meta_str(pod, "name"));
                match super::bind(&self.reg, pod_r, ns, name, &node).await {
                    Ok(bound) => {
                        self.cache.assume(pod_r, &bound);
                        super::record_event(
                            &self.reg,
                            pod,
                            "Normal",
                            "Scheduled",
                            &format!("Successfully assigned {}/{name} to {node}", ns.unwrap_or_default()),
                            "default-scheduler",
                        )
                        .await;
                        Ok(())
                    }
                    Err(e) if e.code == 404 || e.code == 409 => Ok(()),
                    Err(e) => Err(e),
                }
            })
            .buffer_unordered(BIND_CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect::<Result<(), _>>()?;
        Ok(retry.then_some(Duration::from_secs(5)))
    }
}

#[async_trait]
impl Reconciler for Scheduler {
    fn name(&self) -> &'static str {
        "scheduler"
    }
    /// None: the cache's own feeds ask for passes.
    fn watches(&self) -> Vec<&'static ResourceDef> {
        vec![]
    }
    fn keys_for(&self, _r: &ResourceDef, _obj: &Value) -> Vec<Key> {
        vec![]
    }
    async fn all_keys(&self) -> Vec<Key> {
        vec![PASS.to_string()]
    }
    async fn reconcile(&self, _key: &Key) -> Result<Option<Duration>, ApiError> {
        self.pass().await
    }
    fn resync(&self) -> Duration {
        Duration::from_secs(10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> Value {
        json!({"metadata": {"name": "n1", "labels": {"disk": "ssd", "zone": "a"}},
               "spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]},
               "status": {"conditions": [{"type": "Ready", "status": "True"}], "allocatable": {"cpu": "2", "memory": "1Gi", "pods": "110"}}})
    }

    #[test]
    fn filters_follow_kubernetes_rules() {
        let tol = json!([{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]);
        let pod = |extra: Value| {
            let mut p = json!({"spec": {"tolerations": tol, "containers": [{"resources": {"requests": {"cpu": "500m", "memory": "128Mi"}}}]}});
            crate::api::patch::merge_patch(&mut p, &extra);
            p
        };
        let (used, ports) = (HashMap::new(), HashSet::new());
        assert_eq!(filter(&pod(json!({})), &node(), &used, &ports), None);
        assert_eq!(
            filter(&pod(json!({"spec": {"tolerations": []}})), &node(), &used, &ports),
            Some("node(s) had untolerated taint")
        );
        assert!(filter(&pod(json!({"spec": {"nodeSelector": {"disk": "hdd"}}})), &node(), &used, &ports).is_some());
        let busy: HashMap<String, i64> = [("cpu".to_string(), 1800)].into();
        assert_eq!(filter(&pod(json!({})), &node(), &busy, &ports), Some("Insufficient cpu"));
        let aff = json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}]}}}}});
        assert!(filter(&pod(aff), &node(), &used, &ports).is_some());
        let hp = json!({"spec": {"containers": [{"ports": [{"containerPort": 80, "hostPort": 8080}]}]}});
        let taken: HashSet<_> = [("0.0.0.0".to_string(), 8080, "TCP".to_string())].into();
        assert!(filter(&pod(hp), &node(), &used, &taken).is_some());
        assert_eq!(quantity_milli(&json!("1Gi")), 1024 * 1024 * 1024 * 1000);
        assert_eq!(quantity_milli(&json!("250m")), 250);
    }
}
