//! The Deployment controller: one ReplicaSet per pod template (named by the template hash), a
//! rolling update bounded by maxSurge/maxUnavailable (or Recreate), revision annotations for
//! rollout history/undo, old ReplicaSets pruned to revisionHistoryLimit, and status.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::replicaset::strip_zero;
use super::{controller_of, owner_ref, set_condition, split_key, Key, Reconciler};
use crate::api::registry::{meta_str, DeleteOpts, FieldValidation, Registry};
use crate::api::resources::{self, ResourceDef};
use crate::api::status::ApiError;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
const HASH_LABEL: &str = "pod-template-hash";

pub struct Deployments {
    pub reg: Registry,
}

/// FNV-1a of the template, in the alphabet Kubernetes uses for generated names.
pub fn template_hash(template: &Value) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in serde_json::to_vec(template).unwrap_or_default() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = String::new();
    let mut x = h as u64;
    for _ in 0..10 {
        out.push(ALPHA[(x % ALPHA.len() as u64) as usize] as char);
        x /= ALPHA.len() as u64;
        if x == 0 {
            break;
        }
    }
    out
}

/// The template without the pod-template-hash label (what a ReplicaSet's template is compared by).
fn bare_template(t: &Value) -> Value {
    let mut t = t.clone();
    if let Some(l) = t["metadata"]["labels"].as_object_mut() {
        l.remove(HASH_LABEL);
    }
    t
}

fn revision(rs: &Value) -> i64 {
    rs["metadata"]["annotations"][REVISION].as_str().and_then(|r| r.parse().ok()).unwrap_or(0)
}

/// Resolves an int-or-percent against `total` (percent rounded up for surge, down otherwise).
pub fn int_or_percent(v: &Value, total: i64, round_up: bool) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) if s.ends_with('%') => {
            let p: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            if round_up {
                (p * total + 99) / 100
            } else {
                p * total / 100
            }
        }
        Value::String(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

fn replicas(rs: &Value) -> i64 {
    rs["spec"]["replicas"].as_i64().unwrap_or(0)
}

fn available(rs: &Value) -> i64 {
    rs["status"]["availableReplicas"].as_i64().unwrap_or(0)
}

impl Deployments {
    async fn set_rs_replicas(&self, rs: &Value, n: i64) -> Result<(), ApiError> {
        let (ns, name) = (rs["metadata"]["namespace"].as_str(), meta_str(rs, "name"));
        self.reg
            .modify(resources::by_kind("ReplicaSet"), ns, name, None, |o| {
                let changed = replicas(o) != n;
                o["spec"]["replicas"] = json!(n);
                changed
            })
            .await?;
        Ok(())
    }

    async fn new_rs(&self, d: &Value, all: &[Value]) -> Result<Value, ApiError> {
        let tpl = &d["spec"]["template"];
        let max_rev = all.iter().map(revision).max().unwrap_or(0);
        let ns = d["metadata"]["namespace"].as_str();
        let rsr = resources::by_kind("ReplicaSet");
        if let Some(rs) = all.iter().find(|rs| bare_template(&rs["spec"]["template"]) == bare_template(tpl)) {
            // Rolling back to an older template makes its ReplicaSet the newest revision.
            if revision(rs) < max_rev {
                let next = (max_rev + 1).to_string();
                return self
                    .reg
                    .modify(rsr, ns, meta_str(rs, "name"), None, |o| {
                        o["metadata"]["annotations"][REVISION] = json!(next);
                        true
                    })
                    .await;
            }
            return Ok(rs.clone());
        }
        let hash = template_hash(tpl);
        let mut t = tpl.clone();
        t["metadata"]["labels"][HASH_LABEL] = json!(hash);
        let mut sel = d["spec"]["selector"].clone();
        sel["matchLabels"][HASH_LABEL] = json!(hash);
        let mut labels = tpl["metadata"]["labels"].clone();
        labels[HASH_LABEL] = json!(hash);
        let rs = json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": format!("{}-{hash}", meta_str(d, "name")), "namespace": ns, "labels": labels,
                         "annotations": {REVISION: (max_rev + 1).to_string(), "deployment.kubernetes.io/desired-replicas": replicas(d).to_string()},
                         "ownerReferences": [owner_ref(d)]},
            "spec": {"replicas": 0, "selector": sel, "template": t, "minReadySeconds": d["spec"]["minReadySeconds"]},
        });
        match self.reg.create(rsr, ns, rs, FieldValidation::Ignore).await {
            Ok(rs) => {
                super::record_event(
                    &self.reg,
                    d,
                    "Normal",
                    "ScalingReplicaSet",
                    &format!("Created new replica set \"{}\"", meta_str(&rs, "name")),
                    "deployment-controller",
                )
                .await;
                Ok(rs)
            }
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl Reconciler for Deployments {
    fn name(&self) -> &'static str {
        "deployment"
    }
    fn watches(&self) -> Vec<&'static ResourceDef> {
        vec![resources::by_kind("Deployment"), resources::by_kind("ReplicaSet")]
    }
    fn keys_for(&self, r: &ResourceDef, obj: &Value) -> Vec<Key> {
        super::self_or_controller(r, obj, "Deployment")
    }
    fn may_concern(&self, r: &ResourceDef, raw: &[u8]) -> bool {
        super::own_or_owned(r, "Deployment", raw)
    }
    async fn all_keys(&self) -> Vec<Key> {
        super::keys_of_kind(&self.reg, "Deployment").await
    }
    async fn reconcile(&self, key: &Key) -> Result<Option<Duration>, ApiError> {
        let (ns, name) = split_key(key);
        let dr = resources::by_kind("Deployment");
        let Some(d) = self.reg.get_opt(dr, ns, name).await? else { return Ok(None) };
        if !d["metadata"]["deletionTimestamp"].is_null() {
            return Ok(None);
        }
        let uid = meta_str(&d, "uid").to_string();
        let all: Vec<Value> = self
            .reg
            .list_all(resources::by_kind("ReplicaSet"), ns, None)
            .await?
            .into_iter()
            .filter(|rs| controller_of(rs, "Deployment").is_some_and(|(_, u)| u == uid))
            .collect();
        let paused = d["spec"]["paused"] == true;
        let new = self.new_rs(&d, &all).await?;
        let new_name = meta_str(&new, "name").to_string();
        let olds: Vec<&Value> = all.iter().filter(|rs| meta_str(rs, "name") != new_name).collect();
        let want = replicas(&d);
        let mut requeue = None;
        if !paused {
            if d["spec"]["strategy"]["type"] == "Recreate" {
                let old_running: i64 =
                    olds.iter().map(|rs| replicas(rs) + rs["status"]["replicas"].as_i64().unwrap_or(0)).sum();
                for rs in &olds {
                    if replicas(rs) > 0 {
                        self.set_rs_replicas(rs, 0).await?;
                    }
                }
                if old_running == 0 && replicas(&new) != want {
                    self.set_rs_replicas(&new, want).await?;
                }
            } else {
                let ru = &d["spec"]["strategy"]["rollingUpdate"];
                let surge = int_or_percent(&ru["maxSurge"], want, true);
                let mut unavail = int_or_percent(&ru["maxUnavailable"], want, false);
                if surge == 0 && unavail == 0 {
                    unavail = 1;
                }
                let old_total: i64 = olds.iter().map(|rs| replicas(rs)).sum();
                if old_total == 0 {
                    if replicas(&new) != want {
                        self.set_rs_replicas(&new, want).await?;
                    }
                } else {
                    // Scale up the new ReplicaSet within maxSurge.
                    let total = old_total + replicas(&new);
                    let room = (want + surge - total).max(0);
                    let up = room.min((want - replicas(&new)).max(0));
                    if up > 0 {
                        self.set_rs_replicas(&new, replicas(&new) + up).await?;
                    }
                    // Scale down old ReplicaSets within maxUnavailable: unhealthy replicas first.
                    let avail: i64 = all.iter().map(available).sum();
                    let mut budget = (avail - (want - unavail)).max(0);
                    for rs in &olds {
                        let unhealthy = (replicas(rs) - available(rs)).max(0);
                        if unhealthy > 0 {
                            self.set_rs_replicas(rs, replicas(rs) - unhealthy).await?;
                        }
                    }
                    let mut olds_sorted: Vec<&&Value> = olds.iter().filter(|rs| replicas(rs) > 0).collect();
                    olds_sorted.sort_by_key(|rs| revision(rs));
                    for rs in olds_sorted {
                        if budget == 0 {
                            break;
                        }
                        let cur = available(rs).min(replicas(rs));
                        let down = budget.min(cur);
                        if down > 0 {
                            self.set_rs_replicas(rs, replicas(rs).min(available(rs)) - down).await?;
                            budget -= down;
                        }
                    }
                    requeue = Some(Duration::from_millis(500));
                }
            }
            // Prune old ReplicaSets beyond the history limit.
            let limit = d["spec"]["revisionHistoryLimit"].as_i64().unwrap_or(10).max(0) as usize;
            let mut dead: Vec<&&Value> = olds
                .iter()
                .filter(|rs| replicas(rs) == 0 && rs["status"]["replicas"].as_i64().unwrap_or(0) == 0)
                .collect();
            if dead.len() > limit {
                dead.sort_by_key(|rs| revision(rs));
                for rs in &dead[..dead.len() - limit] {
                    let _ = self
                        .reg
                        .delete(resources::by_kind("ReplicaSet"), ns, meta_str(rs, "name"), &DeleteOpts::default())
                        .await;
                }
            }
        }
        // Status from the ReplicaSets as they are now.
        let all: Vec<Value> = self
            .reg
            .list_all(resources::by_kind("ReplicaSet"), ns, None)
            .await?
            .into_iter()
            .filter(|rs| controller_of(rs, "Deployment").is_some_and(|(_, u)| u == uid))
            .collect();
        let sum = |f: &str| all.iter().map(|rs| rs["status"][f].as_i64().unwrap_or(0)).sum::<i64>();
        let newrs = all.iter().find(|rs| meta_str(rs, "name") == new_name);
        let updated = newrs.map_or(0, |rs| rs["status"]["replicas"].as_i64().unwrap_or(0));
        let (total, ready, avail) = (sum("replicas"), sum("readyReplicas"), sum("availableReplicas"));
        let max_unavail = int_or_percent(&d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], want, false);
        let rev = newrs.map(revision).unwrap_or(0).to_string();
        let complete = updated == want && total == want && avail >= want;
        let mut status = strip_zero(json!({
            "observedGeneration": d["metadata"]["generation"], "replicas": total, "updatedReplicas": updated,
            "readyReplicas": ready, "availableReplicas": avail, "unavailableReplicas": (want - avail).max(0),
        }));
        status["conditions"] = d["status"]["conditions"].clone();
        if avail >= want - max_unavail {
            set_condition(
                &mut status,
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            );
        } else {
            set_condition(
                &mut status,
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            );
        }
        let (reason, msg) = if complete {
            ("NewReplicaSetAvailable", format!("ReplicaSet \"{new_name}\" has successfully progressed."))
        } else {
            ("ReplicaSetUpdated", format!("ReplicaSet \"{new_name}\" is progressing."))
        };
        set_condition(&mut status, "Progressing", "True", reason, &msg);
        let d2 = self
            .reg
            .modify(dr, ns, name, Some("status"), |o| {
                let changed = o["status"] != status;
                o["status"] = status.clone();
                changed
            })
            .await?;
        if d2["metadata"]["annotations"][REVISION].as_str() != Some(rev.as_str()) && rev != "0" {
            self.reg
                .modify(dr, ns, name, None, |o| {
                    o["metadata"]["annotations"][REVISION] = json!(rev.clone());
                    true
                })
                .await?;
        }
        Ok(if complete { None } else { requeue.or(Some(Duration::from_secs(1))) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_like_kubernetes() {
        assert_eq!(int_or_percent(&json!("25%"), 3, true), 1);
        assert_eq!(int_or_percent(&json!("25%"), 3, false), 0);
        assert_eq!(int_or_percent(&json!(2), 3, false), 2);
        assert_eq!(template_hash(&json!({"a": 1})), template_hash(&json!({"a": 1})));
        assert_ne!(template_hash(&json!({"a": 1})), template_hash(&json!({"a": 2})));
    }
}
