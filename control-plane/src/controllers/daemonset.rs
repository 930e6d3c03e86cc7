//! The DaemonSet controller: one pod per eligible node (the template's nodeSelector and required
//! node affinity match, its NoSchedule/NoExecute taints are tolerated, counting the tolerations
//! every DaemonSet pod gets), placed as kube's controller does since 1.12: the pod carries a
//! required node affinity on `metadata.name` and the scheduler binds it. Pods on nodes that no
//! longer qualify, and duplicates, are deleted. RollingUpdate replaces pods whose
//! `controller-revision-hash` is stale, at most maxUnavailable unavailable at a time; OnDelete
//! waits for the user. Status carries the counts `kubectl rollout status ds` reads.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::deployment::{int_or_percent, template_hash};
use super::replicaset::{owned_pods, pod_from_template, strip_zero};
use super::scheduler::{node_selector_term_matches, tolerates};
use super::{pod_active, pod_ready, split_key, Key, Reconciler};
use crate::api::registry::{meta_str, DeleteOpts, FieldValidation, Registry};
use crate::api::resources::{self, ResourceDef};
use crate::api::status::ApiError;

pub const HASH_LABEL: &str = "controller-revision-hash";

pub struct DaemonSets {
    pub reg: Registry,
}

/// Tolerations kube's DaemonSet controller adds to every pod it creates.
fn default_tolerations() -> Vec<Value> {
    let mut t = vec![
        json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}),
    ];
    for k in ["disk-pressure", "memory-pressure", "pid-pressure", "unschedulable"] {
        t.push(json!({"key": format!("node.kubernetes.io/{k}"), "operator": "Exists", "effect": "NoSchedule"}));
    }
    t
}

/// The template's pod spec with the default tolerations merged in.
fn with_default_tolerations(spec: &Value) -> Value {
    let mut spec = spec.clone();
    let mut tols = spec["tolerations"].as_array().cloned().unwrap_or_default();
    for d in default_tolerations() {
        if !tols.iter().any(|t| t["key"] == d["key"] && t["effect"] == d["effect"]) {
            tols.push(d);
        }
    }
    spec["tolerations"] = json!(tols);
    spec
}

/// Whether a daemon pod of `spec` belongs on `node`.
pub fn should_run(spec: &Value, node: &Value) -> bool {
    let labels = crate::api::selector::labels_of(node);
    if spec["nodeSelector"]
        .as_object()
        .into_iter()
        .flatten()
        .any(|(k, v)| labels.get(k).map(String::as_str) != v.as_str())
    {
        return false;
    }
    if let Some(terms) = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
        .as_array()
    {
        if !terms.iter().any(|t| node_selector_term_matches(t, node)) {
            return false;
        }
    }
    let spec = with_default_tolerations(spec);
    node["spec"]["taints"].as_array().into_iter().flatten().all(|taint| {
        !matches!(taint["effect"].as_str(), Some("NoSchedule" | "NoExecute"))
            || tolerates(&spec["tolerations"], taint).is_some()
    })
}

/// The node a daemon pod is for: its nodeName, else its `metadata.name` affinity.
fn target_node(pod: &Value) -> Option<String> {
    if let Some(n) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
        return Some(n.to_string());
    }
    let terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
        .as_array()?;
    terms
        .iter()
        .flat_map(|t| t["matchFields"].as_array().cloned().unwrap_or_default())
        .find(|f| f["key"] == "metadata.name")
        .and_then(|f| f["values"][0].as_str().map(String::from))
}

/// A pod template for `node`: labelled with the revision hash, pinned by node affinity.
fn template_for(ds: &Value, hash: &str, node: &str) -> Value {
    let mut t = ds["spec"]["template"].clone();
    t["metadata"]["labels"][HASH_LABEL] = json!(hash);
    t["spec"] = with_default_tolerations(&t["spec"]);
    t["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] =
        json!({"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]});
    t
}

impl DaemonSets {
    async fn delete_pod(&self, ns: Option<&str>, p: &Value) -> Result<(), ApiError> {
        match self.reg.delete(resources::by_kind("Pod"), ns, meta_str(p, "name"), &DeleteOpts::default()).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl Reconciler for DaemonSets {
    fn name(&self) -> &'static str {
        "daemonset"
    }
    fn watches(&self) -> Vec<&'static ResourceDef> {
        vec![resources::by_kind("DaemonSet"), resources::by_kind("Pod"), resources::by_kind("Node")]
    }
    fn keys_for(&self, r: &ResourceDef, obj: &Value) -> Vec<Key> {
        match r.kind {
            // A node change can concern every DaemonSet; resync picks them up (all_keys).
            "Node" => vec![ALL.into()],
            _ => super::self_or_controller(r, obj, "DaemonSet"),
        }
    }
    fn may_concern(&self, r: &ResourceDef, raw: &[u8]) -> bool {
        r.kind == "Node" || super::own_or_owned(r, "DaemonSet", raw)
    }
    async fn all_keys(&self) -> Vec<Key> {
        super::keys_of_kind(&self.reg, "DaemonSet").await
    }
    async fn reconcile(&self, key: &Key) -> Result<Option<Duration>, ApiError> {
        if key == ALL {
            // Fan out: one pass per DaemonSet.
            for k in self.all_keys().await {
                self.reconcile(&k).await?;
            }
            return Ok(None);
        }
        let (ns, name) = split_key(key);
        let dsr = resources::by_kind("DaemonSet");
        let Some(ds) = self.reg.get_opt(dsr, ns, name).await? else { return Ok(None) };
        if !ds["metadata"]["deletionTimestamp"].is_null() {
            return Ok(None);
        }
        let nodes = self.reg.list_all(resources::by_kind("Node"), None, None).await?;
        let pods: Vec<Value> = owned_pods(&self.reg, &ds, "DaemonSet").await?.into_iter().filter(pod_active).collect();
        let hash = template_hash(&ds["spec"]["template"]);
        let mut by_node: HashMap<String, Vec<&Value>> = HashMap::new();
        for p in &pods {
            by_node.entry(target_node(p).unwrap_or_default()).or_default().push(p);
        }
        let (mut desired, mut misscheduled, mut changed) = (0, 0, false);
        let mut stale: Vec<&Value> = Vec::new();
        for node in &nodes {
            let n = meta_str(node, "name").to_string();
            let here = by_node.remove(&n).unwrap_or_default();
            if should_run(&ds["spec"]["template"]["spec"], node) {
                desired += 1;
                match here.as_slice() {
                    [] => {
                        self.reg
                            .create(
                                resources::by_kind("Pod"),
                                ns,
                                pod_from_template(&ds, &template_for(&ds, &hash, &n)),
                                FieldValidation::Ignore,
                            )
                            .await?;
                        changed = true;
                    }
                    [one, extra @ ..] => {
                        for p in extra {
                            self.delete_pod(ns, p).await?;
                            changed = true;
                        }
                        if one["metadata"]["labels"][HASH_LABEL].as_str() != Some(hash.as_str()) {
                            stale.push(one);
                        }
                    }
                }
            } else {
                misscheduled += here.iter().filter(|p| !p["spec"]["nodeName"].is_null()).count();
                for p in here {
                    self.delete_pod(ns, p).await?;
                    changed = true;
                }
            }
        }
        // Pods whose node is gone.
        for p in by_node.into_values().flatten() {
            self.delete_pod(ns, p).await?;
            changed = true;
        }
        let unavailable = pods.iter().filter(|p| !pod_ready(p)).count() as i64;
        if ds["spec"]["updateStrategy"]["type"].as_str().unwrap_or("RollingUpdate") == "RollingUpdate" {
            let max =
                int_or_percent(&ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"], desired, true).max(1);
            let budget = (max - unavailable).max(0) as usize;
            // Stale pods already unavailable go at once; available ones within the budget.
            let (down, up): (Vec<&Value>, Vec<&Value>) = stale.into_iter().partition(|p| !pod_ready(p));
            for p in down.into_iter().chain(up.into_iter().take(budget)) {
                self.delete_pod(ns, p).await?;
                changed = true;
            }
        }
        let current: Vec<&Value> =
            pods.iter().filter(|p| p["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty())).collect();
        let updated =
            current.iter().filter(|p| p["metadata"]["labels"][HASH_LABEL].as_str() == Some(hash.as_str())).count();
        let ready = current.iter().filter(|p| pod_ready(p)).count();
        let status = strip_zero(json!({
            "desiredNumberScheduled": desired, "currentNumberScheduled": current.len(), "numberMisscheduled": misscheduled,
            "numberReady": ready, "numberAvailable": ready, "numberUnavailable": (desired as usize).saturating_sub(ready),
            "updatedNumberScheduled": updated, "observedGeneration": ds["metadata"]["generation"],
        }));
        let status =
            ensure(status, &["desiredNumberScheduled", "currentNumberScheduled", "numberMisscheduled", "numberReady"]);
        self.reg
            .modify(dsr, ns, name, Some("status"), |o| {
                let differs = o["status"] != status;
                o["status"] = status.clone();
                differs
            })
            .await?;
        Ok(changed.then_some(Duration::from_millis(200)))
    }
}

/// The key that stands for "every DaemonSet" (a node changed).
const ALL: &str = "*";

/// Required status fields stay even when zero.
fn ensure(mut v: Value, keys: &[&str]) -> Value {
    for k in keys {
        if v.get(*k).is_none() {
            v[*k] = json!(0);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eligibility_and_placement() {
        let node = |labels: Value, taints: Value| json!({"metadata": {"name": "n1", "labels": labels}, "spec": {"taints": taints}});
        let spec = json!({"nodeSelector": {"role": "edge"}, "containers": [{"name": "c"}]});
        assert!(should_run(&spec, &node(json!({"role": "edge"}), json!([]))));
        assert!(!should_run(&spec, &node(json!({"role": "core"}), json!([]))));
        let plain = json!({"containers": [{"name": "c"}]});
        // Not-ready/unreachable and unschedulable taints are tolerated by default; others are not.
        assert!(should_run(
            &plain,
            &node(
                json!({}),
                json!([{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}, {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}])
            )
        ));
        assert!(!should_run(
            &plain,
            &node(json!({}), json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]))
        ));
        assert!(should_run(&plain, &node(json!({}), json!([{"key": "x", "effect": "PreferNoSchedule"}]))));
        let ds = json!({"spec": {"template": {"metadata": {"labels": {"app": "a"}}, "spec": plain}}});
        let t = template_for(&ds, "h1", "n7");
        assert_eq!(t["metadata"]["labels"][HASH_LABEL], "h1");
        let pod = json!({"spec": t["spec"]});
        assert_eq!(target_node(&pod).as_deref(), Some("n7"));
        assert_eq!(t["spec"]["tolerations"].as_array().unwrap().len(), 6);
    }
}
