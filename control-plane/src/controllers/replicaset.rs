//! The ReplicaSet controller: keeps `spec.replicas` active pods from the template, owned by the
//! ReplicaSet, and reports replicas/ready/available in status.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{controller_of, owner_ref, pod_active, pod_ready, split_key, Key, Reconciler};
use crate::api::registry::{meta_str, DeleteOpts, FieldValidation, Registry};
use crate::api::resources::{self, ResourceDef};
use crate::api::selector::LabelSelector;
use crate::api::status::ApiError;

/// At most this many pod creations or deletions per reconcile (kube's burst).
const BURST: usize = 500;

pub struct ReplicaSets {
    pub reg: Registry,
}

/// Pods controlled by `owner` (by controller ownerReference uid) in its namespace.
pub async fn owned_pods(reg: &Registry, owner: &Value, kind: &str) -> Result<Vec<Value>, ApiError> {
    let ns = owner["metadata"]["namespace"].as_str();
    let sel = LabelSelector::from_value(&owner["spec"]["selector"])
        .ok()
        .flatten()
        .unwrap_or(LabelSelector(vec![crate::api::selector::Req::Exists("\u{0}never".into())]));
    let uid = meta_str(owner, "uid");
    let pods = reg.list_all(resources::by_kind("Pod"), ns, Some(&sel)).await?;
    Ok(pods.into_iter().filter(|p| controller_of(p, kind).is_some_and(|(_, u)| u == uid)).collect())
}

/// A new pod from a template, owned by `owner`.
pub fn pod_from_template(owner: &Value, template: &Value) -> Value {
    let mut meta = template["metadata"].clone();
    if !meta.is_object() {
        meta = json!({});
    }
    meta["generateName"] = json!(format!("{}-", meta_str(owner, "name")));
    meta["namespace"] = owner["metadata"]["namespace"].clone();
    meta["ownerReferences"] = json!([owner_ref(owner)]);
    if let Some(m) = meta.as_object_mut() {
        m.remove("name");
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]})
}

/// Rank for deletion: unscheduled, then pending, then not ready, then newest first.
fn delete_rank(p: &Value) -> (u8, u8, u8, std::cmp::Reverse<String>) {
    (
        !p["spec"]["nodeName"].as_str().unwrap_or_default().is_empty() as u8,
        (p["status"]["phase"] != "Pending") as u8,
        pod_ready(p) as u8,
        std::cmp::Reverse(p["metadata"]["creationTimestamp"].as_str().unwrap_or_default().to_string()),
    )
}

pub async fn scale_pods(
    reg: &Registry,
    owner: &Value,
    template: &Value,
    active: &[Value],
    want: usize,
) -> Result<(), ApiError> {
    let ns = owner["metadata"]["namespace"].as_str();
    let pod_r = resources::by_kind("Pod");
    if active.len() < want {
        for _ in 0..(want - active.len()).min(BURST) {
            reg.create(pod_r, ns, pod_from_template(owner, template), FieldValidation::Ignore).await?;
        }
    } else if active.len() > want {
        let mut victims: Vec<&Value> = active.iter().collect();
        victims.sort_by_key(|p| delete_rank(p));
        for p in victims.into_iter().take((active.len() - want).min(BURST)) {
            match reg.delete(pod_r, ns, meta_str(p, "name"), &DeleteOpts::default()).await {
                Ok(_) => {}
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[async_trait]
impl Reconciler for ReplicaSets {
    fn name(&self) -> &'static str {
        "replicaset"
    }
    fn watches(&self) -> Vec<&'static ResourceDef> {
        vec![resources::by_kind("ReplicaSet"), resources::by_kind("Pod")]
    }
    fn keys_for(&self, r: &ResourceDef, obj: &Value) -> Vec<Key> {
        super::self_or_controller(r, obj, "ReplicaSet")
    }
    fn may_concern(&self, r: &ResourceDef, raw: &[u8]) -> bool {
        super::own_or_owned(r, "ReplicaSet", raw)
    }
    async fn all_keys(&self) -> Vec<Key> {
        super::keys_of_kind(&self.reg, "ReplicaSet").await
    }
    async fn reconcile(&self, key: &Key) -> Result<Option<Duration>, ApiError> {
        let (ns, name) = split_key(key);
        let rsr = resources::by_kind("ReplicaSet");
        let Some(rs) = self.reg.get_opt(rsr, ns, name).await? else { return Ok(None) };
        let pods = owned_pods(&self.reg, &rs, "ReplicaSet").await?;
        let active: Vec<Value> = pods.iter().filter(|p| pod_active(p)).cloned().collect();
        let want = rs["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
        if rs["metadata"]["deletionTimestamp"].is_null() && active.len() != want {
            scale_pods(&self.reg, &rs, &rs["spec"]["template"], &active, want).await?;
            return Ok(Some(Duration::from_millis(50)));
        }
        let ready = active.iter().filter(|p| pod_ready(p)).count();
        let status = json!({
            "replicas": active.len(), "fullyLabeledReplicas": active.len(), "readyReplicas": ready,
            "availableReplicas": ready, "observedGeneration": rs["metadata"]["generation"],
        });
        let status = strip_zero(status);
        self.reg
            .modify(rsr, ns, name, Some("status"), |o| {
                let changed = o["status"] != status;
                o["status"] = status.clone();
                changed
            })
            .await?;
        Ok(None)
    }
}

/// Drops zero counters, as Go's omitempty does (so kubectl prints what it expects).
pub fn strip_zero(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.retain(|k, x| x != &json!(0) || k == "replicas" || k == "observedGeneration");
    }
    v
}
