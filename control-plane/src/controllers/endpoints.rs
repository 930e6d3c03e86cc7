//! The Endpoints controller: for each Service with a selector, an Endpoints object of the same
//! name listing the matching pods that have an IP — Ready ones under `addresses`, the others
//! under `notReadyAddresses` — with the Service's ports resolved against each pod's container
//! ports (named target ports), one subset per distinct port list. A Service without a selector
//! keeps the Endpoints its owner writes; a deleted Service's Endpoints go with it, as in kube.
//! Also the `kubernetes` Service and its Endpoints, pointing at this API server.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{key_of, pod_active, pod_ready, split_key, Key, Reconciler};
use crate::api::registry::{meta_str, DeleteOpts, FieldValidation, Registry};
use crate::api::resources::{self, ResourceDef};
use crate::api::selector::LabelSelector;
use crate::api::status::ApiError;

pub struct Endpoints {
    pub reg: Registry,
}

/// A key meaning "every Service of this namespace" (a pod changed).
const ALL: &str = "*";

/// A Service's ports as one pod serves them: (name, port, protocol).
type Ports = Vec<(String, i64, String)>;

/// The Service's ports as `pod` serves them, or None when a named target port is not among the
/// pod's container ports.
fn resolve_ports(svc: &Value, pod: &Value) -> Option<Ports> {
    let mut out = Vec::new();
    for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
        let proto = p["protocol"].as_str().unwrap_or("TCP").to_string();
        let name = p["name"].as_str().unwrap_or_default().to_string();
        let port = match &p["targetPort"] {
            Value::Number(n) => n.as_i64()?,
            Value::String(s) => match s.parse::<i64>() {
                Ok(n) => n,
                Err(_) => pod["spec"]["containers"]
                    .as_array()?
                    .iter()
                    .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                    .find(|cp| cp["name"] == s.as_str() && cp["protocol"].as_str().unwrap_or("TCP") == proto)?
                    ["containerPort"]
                    .as_i64()?,
            },
            _ => p["port"].as_i64()?,
        };
        out.push((name, port, proto));
    }
    Some(out)
}

/// The subsets of a Service's Endpoints from the pods it selects.
pub fn subsets(svc: &Value, pods: &[Value]) -> Vec<Value> {
    let mut groups: BTreeMap<Ports, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    let mut pods: Vec<&Value> = pods
        .iter()
        .filter(|p| pod_active(p) && !p["status"]["podIP"].as_str().unwrap_or_default().is_empty())
        .collect();
    // A stable order, so an unchanged set of pods never rewrites the Endpoints.
    pods.sort_by_key(|p| {
        (p["status"]["podIP"].as_str().unwrap_or_default().to_string(), meta_str(p, "name").to_string())
    });
    for p in pods {
        let Some(ports) = resolve_ports(svc, p) else { continue };
        let mut addr = json!({
            "ip": p["status"]["podIP"],
            "targetRef": {"kind": "Pod", "namespace": p["metadata"]["namespace"], "name": p["metadata"]["name"], "uid": p["metadata"]["uid"]},
        });
        if let Some(node) = p["spec"]["nodeName"].as_str() {
            addr["nodeName"] = json!(node);
        }
        let (ready, not_ready) = groups.entry(ports).or_default();
        if pod_ready(p) { ready } else { not_ready }.push(addr);
    }
    groups
        .into_iter()
        .map(|(ports, (ready, not_ready))| {
            let ports: Vec<Value> = ports
                .into_iter()
                .map(|(name, port, protocol)| {
                    let mut v = json!({"port": port, "protocol": protocol});
                    if !name.is_empty() {
                        v["name"] = json!(name);
                    }
                    v
                })
                .collect();
            let mut s = json!({"ports": ports});
            if !ready.is_empty() {
                s["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                s["notReadyAddresses"] = json!(not_ready);
            }
            s
        })
        .collect()
}

/// Creates the Endpoints `ns/name` with these labels and subsets, or brings it up to date.
async fn put_endpoints(
    reg: &Registry,
    ns: &str,
    name: &str,
    labels: &Value,
    subsets: Vec<Value>,
) -> Result<(), ApiError> {
    let r = resources::by_kind("Endpoints");
    let subsets = json!(subsets);
    match reg.get_opt(r, Some(ns), name).await? {
        None => {
            let mut ep = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": ns}, "subsets": subsets});
            if labels.is_object() {
                ep["metadata"]["labels"] = labels.clone();
            }
            match reg.create(r, Some(ns), ep, FieldValidation::Ignore).await {
                Err(e) if e.code != 409 => Err(e),
                _ => Ok(()),
            }
        }
        Some(cur)
            if cur["subsets"] == subsets
                || (subsets.as_array().is_some_and(Vec::is_empty) && cur["subsets"].is_null()) =>
        {
            Ok(())
        }
        Some(_) => {
            reg.modify(r, Some(ns), name, None, |o| {
                o["subsets"] = subsets.clone();
                true
            })
            .await?;
            Ok(())
        }
    }
}

#[async_trait]
impl Reconciler for Endpoints {
    fn name(&self) -> &'static str {
        "endpoints"
    }
    fn watches(&self) -> Vec<&'static ResourceDef> {
        vec![resources::by_kind("Service"), resources::by_kind("Pod")]
    }
    fn keys_for(&self, r: &ResourceDef, obj: &Value) -> Vec<Key> {
        match r.kind {
            "Service" => vec![key_of(obj)],
            _ => vec![format!("{}/{ALL}", obj["metadata"]["namespace"].as_str().unwrap_or_default())],
        }
    }
    async fn all_keys(&self) -> Vec<Key> {
        super::keys_of_kind(&self.reg, "Service").await
    }
    async fn reconcile(&self, key: &Key) -> Result<Option<Duration>, ApiError> {
        let (ns, name) = split_key(key);
        let svc_r = resources::by_kind("Service");
        if name == ALL {
            for svc in self.reg.list_all(svc_r, ns, None).await? {
                self.sync(&svc).await?;
            }
            return Ok(None);
        }
        match self.reg.get_opt(svc_r, ns, name).await? {
            Some(svc) => self.sync(&svc).await?,
            None => {
                // As kube's controller does: a Service's Endpoints go with it.
                match self.reg.delete(resources::by_kind("Endpoints"), ns, name, &DeleteOpts::default()).await {
                    Err(e) if e.code != 404 => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(None)
    }
}

impl Endpoints {
    async fn sync(&self, svc: &Value) -> Result<(), ApiError> {
        let Some(selector) = svc["spec"]["selector"].as_object().filter(|m| !m.is_empty()) else { return Ok(()) };
        if !svc["metadata"]["deletionTimestamp"].is_null() {
            return Ok(());
        }
        let ns = svc["metadata"]["namespace"].as_str().unwrap_or("default");
        let sel = LabelSelector::from_value(&json!({"matchLabels": selector})).map_err(ApiError::bad_request)?;
        let pods = self.reg.list_all(resources::by_kind("Pod"), Some(ns), sel.as_ref()).await?;
        put_endpoints(&self.reg, ns, meta_str(svc, "name"), &svc["metadata"]["labels"], subsets(svc, &pods)).await
    }
}

/// The `kubernetes` Service in `default` (the range's first address, port 443) and its
/// Endpoints: this API server at `ip:port`.
pub async fn ensure_kubernetes_service(reg: &Registry, ip: IpAddr, port: u16) -> Result<(), ApiError> {
    let svc_r = resources::by_kind("Service");
    let labels = json!({"component": "apiserver", "provider": "kubernetes"});
    if reg.get_opt(svc_r, Some("default"), "kubernetes").await?.is_none() {
        let svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": labels},
            "spec": {"type": "ClusterIP", "clusterIP": reg.service_ips.first().to_string(), "sessionAffinity": "None",
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
        });
        match reg.create(svc_r, Some("default"), svc, FieldValidation::Ignore).await {
            Err(e) if e.code != 409 => return Err(e),
            _ => {}
        }
    }
    let subset =
        json!({"addresses": [{"ip": ip.to_string()}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]});
    put_endpoints(reg, "default", "kubernetes", &labels, vec![subset]).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ready: bool, named_port: Option<i64>) -> Value {
        let mut p = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}")},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        });
        if let Some(port) = named_port {
            p["spec"]["containers"][0]["ports"] = json!([{"name": "web", "containerPort": port, "protocol": "TCP"}]);
        }
        p
    }

    #[test]
    fn ready_and_not_ready_pods_by_resolved_ports() {
        let svc = json!({"spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "web"}]}});
        let mut gone = pod("gone", "10.0.0.9", true, Some(8080));
        gone["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let pods = [
            pod("b", "10.0.0.2", true, Some(8080)),
            pod("a", "10.0.0.1", false, Some(8080)),
            pod("c", "10.0.0.3", true, Some(9090)),
            pod("noport", "10.0.0.4", true, None),
            pod("noip", "", true, Some(8080)),
            gone,
        ];
        let s = subsets(&svc, &pods);
        assert_eq!(s.len(), 2, "{s:#?}");
        let s8080 = s.iter().find(|x| x["ports"][0]["port"] == 8080).unwrap();
        assert_eq!(s8080["ports"], json!([{"name": "http", "port": 8080, "protocol": "TCP"}]));
        assert_eq!(
            s8080["addresses"],
            json!([{"ip": "10.0.0.2", "nodeName": "n1", "targetRef": {"kind": "Pod", "namespace": "default", "name": "b", "uid": "u-b"}}])
        );
        assert_eq!(s8080["notReadyAddresses"][0]["ip"], "10.0.0.1");
        let s9090 = s.iter().find(|x| x["ports"][0]["port"] == 9090).unwrap();
        assert_eq!(s9090["addresses"][0]["ip"], "10.0.0.3");
    }

    #[test]
    fn numeric_target_ports_need_no_container_port() {
        let svc = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 53, "protocol": "UDP", "targetPort": "5353"}]}});
        let s = subsets(&svc, &[pod("a", "10.0.0.1", true, None)]);
        assert_eq!(s[0]["ports"], json!([{"port": 8080, "protocol": "TCP"}, {"port": 5353, "protocol": "UDP"}]));
    }
}
