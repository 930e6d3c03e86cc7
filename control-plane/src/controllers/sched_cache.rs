//! The scheduler's view of the cluster, kept from store watches instead of re-listing every
//! pod on every pass: Ready-or-not nodes in full, per-node requested resources and host ports
//! summed incrementally from compact per-pod records, and the pending pods themselves. Like
//! kube-scheduler's cache, a pod the scheduler has just bound is "assumed" at once, so the next
//! pass counts it even before its watch event arrives. Every applied change asks for a pass.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use super::scheduler::{host_ports, owner_key, pod_requests};
use super::{pod_active, Key};
use crate::api::registry::{decode, Registry};
use crate::api::resources::{self, ResourceDef};
use crate::store::{KeyValue, ListOptions, Rev};

type Port = (String, i64, String);

/// What the scheduler needs of one pod.
struct PodInfo {
    rev: Rev,
    /// The node whose resources it holds, if any.
    node: Option<String>,
    requests: HashMap<String, i64>,
    ports: Vec<Port>,
    /// The whole pod while it waits for a node.
    pending: Option<Arc<Value>>,
}

#[derive(Default)]
struct Inner {
    synced_pods: bool,
    synced_nodes: bool,
    pods: HashMap<String, PodInfo>,
    nodes: BTreeMap<String, Arc<Value>>,
    used: HashMap<String, HashMap<String, i64>>,
    ports: HashMap<String, HashMap<Port, usize>>,
}

/// One pass's consistent view.
pub struct View {
    pub nodes: Vec<Arc<Value>>,
    pub used: HashMap<String, HashMap<String, i64>>,
    pub ports: HashMap<String, HashSet<Port>>,
    pub pending: Vec<Arc<Value>>,
}

#[derive(Default)]
pub struct SchedCache {
    inner: Mutex<Inner>,
}

fn info_of(pod: &Value, rev: Rev) -> PodInfo {
    let node = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty());
    let default_sched = pod["spec"]["schedulerName"].as_str().unwrap_or("default-scheduler") == "default-scheduler";
    let holds = node.is_some() && (pod_active(pod) || !pod["metadata"]["deletionTimestamp"].is_null());
    PodInfo {
        rev,
        node: if holds { node.map(String::from) } else { None },
        requests: if holds {
            let mut r = pod_requests(&pod["spec"]);
            if let Some(k) = owner_key(pod) {
                r.insert(k, 1);
            }
            r
        } else {
            HashMap::new()
        },
        ports: if holds { host_ports(&pod["spec"]) } else { Vec::new() },
        pending: (node.is_none() && pod_active(pod) && default_sched).then(|| Arc::new(pod.clone())),
    }
}

impl Inner {
    fn account(&mut self, p: &PodInfo, sign: i64) {
        let Some(n) = &p.node else { return };
        let u = self.used.entry(n.clone()).or_default();
        for (k, v) in &p.requests {
            *u.entry(k.clone()).or_default() += sign * v;
        }
        let ports = self.ports.entry(n.clone()).or_default();
        for hp in &p.ports {
            let c = ports.entry(hp.clone()).or_default();
            if sign > 0 {
                *c += 1;
            } else {
                *c = c.saturating_sub(1);
                if *c == 0 {
                    ports.remove(hp);
                }
            }
        }
    }

    /// Replaces the pod at `key` unless what is cached is newer.
    fn upsert(&mut self, key: &str, info: Option<PodInfo>, rev: Rev) {
        if self.pods.get(key).is_some_and(|old| old.rev > rev) {
            return;
        }
        if let Some(old) = self.pods.remove(key) {
            self.account(&old, -1);
        }
        if let Some(new) = info {
            self.account(&new, 1);
            self.pods.insert(key.to_string(), new);
        }
    }
}

impl SchedCache {
    /// Starts the pod and node feeds; each change sends `pass` on `kick`.
    pub fn start(self: &Arc<Self>, reg: Registry, kick: mpsc::UnboundedSender<Key>, pass: &str) {
        for r in [resources::by_kind("Pod"), resources::by_kind("Node")] {
            let (me, reg, kick, pass) = (self.clone(), reg.clone(), kick.clone(), pass.to_string());
            tokio::spawn(async move { me.feed(reg, r, kick, pass).await });
        }
    }

    /// None until both feeds have listed.
    pub fn view(&self) -> Option<View> {
        let st = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !(st.synced_pods && st.synced_nodes) {
            return None;
        }
        Some(View {
            nodes: st.nodes.values().cloned().collect(),
            used: st.used.clone(),
            ports: st.ports.iter().map(|(n, p)| (n.clone(), p.keys().cloned().collect())).collect(),
            pending: st.pods.values().filter_map(|p| p.pending.clone()).collect(),
        })
    }

    /// Records a pod the scheduler just bound (as returned by the write).
    pub fn assume(&self, r: &ResourceDef, pod: &Value) {
        let rev = pod["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse().ok()).unwrap_or(0);
        let key = r.key(pod["metadata"]["namespace"].as_str(), pod["metadata"]["name"].as_str().unwrap_or_default());
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).upsert(&key, Some(info_of(pod, rev)), rev);
    }

    fn apply(&self, r: &ResourceDef, key: &str, value: Option<Value>, rev: Rev) {
        let mut st = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if r.kind == "Node" {
            let name = key.rsplit('/').next().unwrap_or_default().to_string();
            match value {
                Some(v) => st.nodes.insert(name, Arc::new(v)),
                None => st.nodes.remove(&name),
            };
        } else {
            let info = value.map(|v| info_of(&v, rev));
            st.upsert(key, info, rev);
        }
    }

    /// List, then watch from the list's revision; relist when the watch fails.
    async fn feed(
        self: Arc<Self>,
        reg: Registry,
        r: &'static ResourceDef,
        kick: mpsc::UnboundedSender<Key>,
        pass: String,
    ) {
        let prefix = r.prefix(None);
        loop {
            let page = match reg.store.list(&prefix, ListOptions::default()).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(error = %e, resource = r.plural, "scheduler cache list failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            {
                let mut st = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                if r.kind == "Node" {
                    st.nodes.clear();
                } else {
                    st.pods.clear();
                    st.used.clear();
                    st.ports.clear();
                }
            }
            for kv in &page.items {
                if let Ok(v) = decode(kv) {
                    self.apply(r, &kv.key, Some(v), kv.mod_rev);
                }
            }
            {
                let mut st = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                if r.kind == "Node" {
                    st.synced_nodes = true;
                } else {
                    st.synced_pods = true;
                }
            }
            let _ = kick.send(pass.clone());
            let Ok(mut w) = reg.store.watch(&prefix, page.rev).await else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            while let Some(Ok(ev)) = w.recv().await {
                let value = ev.value.as_ref().and_then(|v| {
                    decode(&KeyValue { key: ev.key.clone(), value: v.clone(), create_rev: 0, mod_rev: ev.rev }).ok()
                });
                self.apply(r, &ev.key, value, ev.rev);
                if kick.send(pass.clone()).is_err() {
                    return;
                }
            }
            tracing::debug!(resource = r.plural, "scheduler cache watch ended; relisting");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accounting_follows_binds_deletes_and_stale_events() {
        let mut st = Inner::default();
        let pod = |node: &str, phase: &str| json!({"metadata": {"name": "p"}, "spec": {"nodeName": node, "containers": [{"resources": {"requests": {"cpu": "100m"}}, "ports": [{"containerPort": 80, "hostPort": 8080}]}]}, "status": {"phase": phase}});
        st.upsert("/p", Some(info_of(&pod("", "Pending"), 5)), 5);
        assert!(st.pods["/p"].pending.is_some() && st.used.is_empty());
        st.upsert("/p", Some(info_of(&pod("n1", "Pending"), 7)), 7);
        assert_eq!(st.used["n1"]["cpu"], 100);
        assert_eq!(st.ports["n1"].len(), 1);
        // A stale event (the pending pod at rev 6) does not undo the assumed bind.
        st.upsert("/p", Some(info_of(&pod("", "Pending"), 6)), 6);
        assert_eq!(st.used["n1"]["cpu"], 100);
        st.upsert("/p", Some(info_of(&pod("n1", "Succeeded"), 8)), 8);
        assert_eq!((st.used["n1"]["cpu"], st.ports["n1"].len()), (0, 0));
        st.upsert("/p", None, 9);
        assert!(st.pods.is_empty());
    }
}
