//! Node lifecycle: a podCIDR for every node from the cluster CIDR; a node whose Lease (and
//! status heartbeat) is older than the grace period turns Ready=Unknown and is tainted
//! unreachable (NoSchedule + NoExecute); pods on NoExecute-tainted nodes are evicted after their
//! tolerationSeconds; evicted pods on a node that stays down are removed once their grace ends.

use std::net::Ipv4Addr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::scheduler::tolerates;
use super::{condition_true, key_of, set_condition, split_key, Key, Reconciler, Settings};
use crate::api::registry::{meta_str, now, DeleteOpts, Registry};
use crate::api::resources::{self, ResourceDef};
use crate::api::status::ApiError;

const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const NOT_READY: &str = "node.kubernetes.io/not-ready";

pub struct NodeLifecycle {
    reg: Registry,
    s: Settings,
}

impl NodeLifecycle {
    pub fn new(reg: Registry, s: Settings) -> Self {
        NodeLifecycle { reg, s }
    }
}

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc))
}

/// The n-th subnet of `prefix` bits inside `cidr` (IPv4).
pub fn nth_subnet(cidr: &str, prefix: u8, n: u32) -> Option<String> {
    let (base, bits) = cidr.split_once('/')?;
    let base: Ipv4Addr = base.parse().ok()?;
    let bits: u8 = bits.parse().ok()?;
    if prefix < bits || prefix > 32 || (prefix - bits) < 32 && n >= 1u32 << (prefix - bits) {
        return None;
    }
    let size = 1u64 << (32 - prefix);
    let addr = u32::from(base) as u64 + n as u64 * size;
    Some(format!("{}/{prefix}", Ipv4Addr::from(addr as u32)))
}

impl NodeLifecycle {
    async fn allocate_cidr(&self, node: &Value) -> Result<(), ApiError> {
        let nodes = self.reg.list_all(resources::by_kind("Node"), None, None).await?;
        let used: Vec<String> = nodes.iter().filter_map(|n| n["spec"]["podCIDR"].as_str().map(String::from)).collect();
        let Some(cidr) = (0..)
            .map_while(|i| nth_subnet(&self.s.cluster_cidr, self.s.node_cidr_prefix, i))
            .find(|c| !used.contains(c))
        else {
            super::record_event(
                &self.reg,
                node,
                "Warning",
                "CIDRNotAvailable",
                "no free podCIDR left in the cluster CIDR",
                "node-ipam-controller",
            )
            .await;
            return Ok(());
        };
        self.reg
            .modify(resources::by_kind("Node"), None, meta_str(node, "name"), None, |n| {
                if n["spec"]["podCIDR"].as_str().is_some_and(|c| !c.is_empty()) {
                    return false;
                }
                n["spec"]["podCIDR"] = json!(cidr);
                n["spec"]["podCIDRs"] = json!([cidr]);
                true
            })
            .await?;
        Ok(())
    }

    /// Sets or clears the node's NoExecute/NoSchedule taint for `key`.
    async fn taint(&self, name: &str, key: &str, on: bool) -> Result<(), ApiError> {
        self.reg
            .modify(resources::by_kind("Node"), None, name, None, |n| {
                let mut taints: Vec<Value> = n["spec"]["taints"].as_array().cloned().unwrap_or_default();
                let before = taints.len();
                let has = taints.iter().any(|t| t["key"] == key);
                if on && !has {
                    taints.push(json!({"key": key, "effect": "NoSchedule", "timeAdded": now()}));
                    taints.push(json!({"key": key, "effect": "NoExecute", "timeAdded": now()}));
                } else if !on {
                    taints.retain(|t| t["key"] != key);
                }
                if taints.len() == before {
                    return false;
                }
                n["spec"]["taints"] = json!(taints);
                true
            })
            .await?;
        Ok(())
    }

    /// Evicts pods that do not tolerate the node's NoExecute taints (after tolerationSeconds).
    async fn evict(&self, node: &Value) -> Result<Option<Duration>, ApiError> {
        let taints: Vec<Value> = node["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["effect"] == "NoExecute")
            .cloned()
            .collect();
        let ready = condition_true(&node["status"], "Ready");
        if taints.is_empty() && ready {
            return Ok(None);
        }
        let name = meta_str(node, "name");
        let pod_r = resources::by_kind("Pod");
        let pods = self.reg.list_all(pod_r, None, None).await?;
        let now_t = Utc::now();
        let mut next: Option<Duration> = None;
        for p in pods.iter().filter(|p| p["spec"]["nodeName"].as_str() == Some(name)) {
            let (ns, pname) = (p["metadata"]["namespace"].as_str(), meta_str(p, "name"));
            if let Some(del) = parse_time(&p["metadata"]["deletionTimestamp"]) {
                // Already evicted: the node is down and cannot finish it; remove after the grace.
                if !ready && now_t >= del {
                    let _ = self
                        .reg
                        .delete(pod_r, ns, pname, &DeleteOpts { grace_period: Some(0), ..Default::default() })
                        .await;
                } else if !ready {
                    next = Some(next.map_or(Duration::from_secs(1), |d| d.min(Duration::from_secs(1))));
                }
                continue;
            }
            let mut evict_at: Option<DateTime<Utc>> = None;
            for t in &taints {
                let added = parse_time(&t["timeAdded"]).unwrap_or(now_t);
                let at = match tolerates(&p["spec"]["tolerations"], t) {
                    None => added,
                    Some(None) => continue,
                    Some(Some(secs)) => added + chrono::Duration::seconds(secs.max(0)),
                };
                evict_at = Some(evict_at.map_or(at, |e| e.min(at)));
            }
            match evict_at {
                Some(at) if at <= now_t => {
                    super::record_event(
                        &self.reg,
                        p,
                        "Normal",
                        "TaintManagerEviction",
                        &format!("Marking for deletion Pod {}/{pname}", ns.unwrap_or_default()),
                        "taint-eviction-controller",
                    )
                    .await;
                    let _ = self
                        .reg
                        .modify(pod_r, ns, pname, Some("status"), |o| {
                            set_condition(
                                &mut o["status"],
                                "DisruptionTarget",
                                "True",
                                "DeletionByTaintManager",
                                "Taint manager: deleting due to NoExecute taint",
                            )
                        })
                        .await;
                    match self.reg.delete(pod_r, ns, pname, &DeleteOpts::default()).await {
                        Ok(_) | Err(ApiError { code: 404, .. }) => {}
                        Err(e) => return Err(e),
                    }
                    next = Some(Duration::from_secs(1));
                }
                Some(at) => {
                    let d = (at - now_t).to_std().unwrap_or_default() + Duration::from_millis(50);
                    next = Some(next.map_or(d, |n| n.min(d)));
                }
                None => {}
            }
        }
        Ok(next)
    }
}

#[async_trait]
impl Reconciler for NodeLifecycle {
    fn name(&self) -> &'static str {
        "node-lifecycle"
    }
    fn watches(&self) -> Vec<&'static ResourceDef> {
        vec![resources::by_kind("Node"), resources::by_kind("Lease")]
    }
    fn keys_for(&self, r: &ResourceDef, obj: &Value) -> Vec<Key> {
        match r.kind {
            "Node" => vec![key_of(obj)],
            _ if obj["metadata"]["namespace"] == "kube-node-lease" => vec![meta_str(obj, "name").to_string()],
            _ => vec![],
        }
    }
    async fn all_keys(&self) -> Vec<Key> {
        super::keys_of_kind(&self.reg, "Node").await
    }
    fn resync(&self) -> Duration {
        Duration::from_secs(5)
    }
    async fn reconcile(&self, key: &Key) -> Result<Option<Duration>, ApiError> {
        let (_, name) = split_key(key);
        let nr = resources::by_kind("Node");
        let Some(node) = self.reg.get_opt(nr, None, name).await? else { return Ok(None) };
        if node["spec"]["podCIDR"].as_str().unwrap_or_default().is_empty() {
            self.allocate_cidr(&node).await?;
        }
        let lease = self.reg.get_opt(resources::by_kind("Lease"), Some("kube-node-lease"), name).await?;
        let heartbeat = node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .and_then(|c| parse_time(&c["lastHeartbeatTime"]));
        let renewed = lease.as_ref().and_then(|l| parse_time(&l["spec"]["renewTime"]));
        let last = [heartbeat, renewed, parse_time(&node["metadata"]["creationTimestamp"])].into_iter().flatten().max();
        let grace = chrono::Duration::from_std(self.s.node_monitor_grace).unwrap_or_default();
        let now_t = Utc::now();
        let stale = last.is_none_or(|t| now_t - t > grace);
        let ready_status = node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .and_then(|c| c["status"].as_str().map(String::from));
        let mut requeue = last.map(|t| (t + grace - now_t).to_std().unwrap_or_default() + Duration::from_millis(100));
        if stale && ready_status.as_deref() != Some("Unknown") {
            tracing::info!(node = name, "node lease expired; marking Ready=Unknown");
            self.reg
                .modify(nr, None, name, Some("status"), |n| {
                    let mut changed = false;
                    for ty in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
                        changed |= set_condition(
                            &mut n["status"],
                            ty,
                            "Unknown",
                            "NodeStatusUnknown",
                            "Kubelet stopped posting node status.",
                        );
                    }
                    changed
                })
                .await?;
            super::record_event(
                &self.reg,
                &node,
                "Normal",
                "NodeNotReady",
                &format!("Node {name} status is now: NodeNotReady"),
                "node-controller",
            )
            .await;
        }
        let node = self.reg.get(nr, None, name).await?;
        let ready = ready_status_of(&node);
        self.taint(name, UNREACHABLE, ready.as_deref() == Some("Unknown")).await?;
        self.taint(name, NOT_READY, ready.as_deref() == Some("False")).await?;
        let node = self.reg.get(nr, None, name).await?;
        if let Some(d) = self.evict(&node).await? {
            requeue = Some(requeue.map_or(d, |r| r.min(d)));
        }
        Ok(requeue.map(|d| d.max(Duration::from_millis(200))))
    }
}

fn ready_status_of(node: &Value) -> Option<String> {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["status"].as_str().map(String::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        assert_eq!(nth_subnet("10.244.0.0/16", 24, 0).as_deref(), Some("10.244.0.0/24"));
        assert_eq!(nth_subnet("10.244.0.0/16", 24, 3).as_deref(), Some("10.244.3.0/24"));
        assert_eq!(nth_subnet("10.244.0.0/16", 24, 256), None);
    }
}
