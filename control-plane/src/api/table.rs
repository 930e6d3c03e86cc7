//! Server-side printing: `meta.k8s.io/v1` Table responses (what `kubectl get` shows), with the
//! columns kube-apiserver prints for each kind.

use serde_json::{json, Value};

use super::registry::meta_str;

/// Kubernetes' HumanDuration.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        return if s % 60 == 0 { format!("{m}m") } else { format!("{m}m{}s", s % 60) };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = m / 60;
    if h < 8 {
        return if m % 60 == 0 { format!("{h}h") } else { format!("{h}h{}m", m % 60) };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        return if h % 24 == 0 { format!("{}d", h / 24) } else { format!("{}d{}h", h / 24, h % 24) };
    }
    let d = h / 24;
    if d < 365 * 2 {
        return format!("{d}d");
    }
    if d < 365 * 8 {
        return if d % 365 == 0 { format!("{}y", d / 365) } else { format!("{}y{}d", d / 365, d % 365) };
    }
    format!("{}y", d / 365)
}

fn age(ts: &Value) -> String {
    match ts.as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()) {
        Some(t) => human_duration((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds()),
        None => "<unknown>".into(),
    }
}

fn col(name: &str, ty: &str, priority: u8) -> Value {
    json!({"name": name, "type": ty, "format": if name == "Name" {"name"} else {""}, "description": "", "priority": priority})
}

fn i(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn containers_images(tpl_spec: &Value) -> (String, String) {
    let cs = tpl_spec["containers"].as_array().cloned().unwrap_or_default();
    let names: Vec<String> = cs.iter().map(|c| s(&c["name"])).collect();
    let images: Vec<String> = cs.iter().map(|c| s(&c["image"])).collect();
    (names.join(","), images.join(","))
}

pub fn selector_string(sel: &Value) -> String {
    let mut parts: Vec<String> =
        sel["matchLabels"].as_object().into_iter().flatten().map(|(k, v)| format!("{k}={}", s(v))).collect();
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let vals: Vec<String> = e["values"].as_array().into_iter().flatten().map(s).collect();
        parts.push(match e["operator"].as_str().unwrap_or_default() {
            "In" => format!("{} in ({})", s(&e["key"]), vals.join(",")),
            "NotIn" => format!("{} notin ({})", s(&e["key"]), vals.join(",")),
            "Exists" => s(&e["key"]),
            _ => format!("!{}", s(&e["key"])),
        });
    }
    parts.join(",")
}

/// Column definitions for a kind.
pub fn columns(kind: &str) -> Vec<Value> {
    let c = |list: &[(&str, &str, u8)]| list.iter().map(|(n, t, p)| col(n, t, *p)).collect();
    match kind {
        "Pod" => c(&[
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ]),
        "Deployment" => c(&[
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ]),
        "ReplicaSet" => c(&[
            ("Name", "string", 0),
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ]),
        "DaemonSet" => c(&[
            ("Name", "string", 0),
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Node Selector", "string", 0),
            ("Age", "string", 0),
        ]),
        "Job" => c(&[
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Completions", "string", 0),
            ("Duration", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ]),
        "Node" => c(&[
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Roles", "string", 0),
            ("Age", "string", 0),
            ("Version", "string", 0),
            ("Internal-IP", "string", 1),
            ("External-IP", "string", 1),
            ("OS-Image", "string", 1),
            ("Kernel-Version", "string", 1),
            ("Container-Runtime", "string", 1),
        ]),
        "Namespace" => c(&[("Name", "string", 0), ("Status", "string", 0), ("Age", "string", 0)]),
        "Service" => c(&[
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
            ("Selector", "string", 1),
        ]),
        "ConfigMap" => c(&[("Name", "string", 0), ("Data", "integer", 0), ("Age", "string", 0)]),
        "Secret" => c(&[("Name", "string", 0), ("Type", "string", 0), ("Data", "integer", 0), ("Age", "string", 0)]),
        "ServiceAccount" => c(&[("Name", "string", 0), ("Secrets", "integer", 0), ("Age", "string", 0)]),
        "Endpoints" => c(&[("Name", "string", 0), ("Endpoints", "string", 0), ("Age", "string", 0)]),
        "Event" => c(&[
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Message", "string", 0),
        ]),
        "Lease" => c(&[("Name", "string", 0), ("Holder", "string", 0), ("Age", "string", 0)]),
        "CertificateSigningRequest" => c(&[
            ("Name", "string", 0),
            ("Age", "string", 0),
            ("SignerName", "string", 0),
            ("Requestor", "string", 0),
            ("RequestedDuration", "string", 0),
            ("Condition", "string", 0),
        ]),
        _ => c(&[("Name", "string", 0), ("Age", "string", 0)]),
    }
}

fn pod_status(p: &Value) -> String {
    if !p["metadata"]["deletionTimestamp"].is_null() {
        return "Terminating".into();
    }
    let mut reason = s(&p["status"]["reason"]);
    if reason.is_empty() {
        reason = s(&p["status"]["phase"]);
    }
    for cs in p["status"]["containerStatuses"].as_array().into_iter().flatten() {
        if let Some(r) = cs["state"]["waiting"]["reason"].as_str() {
            reason = r.into();
        } else if let Some(r) = cs["state"]["terminated"]["reason"].as_str() {
            reason = r.into();
        }
    }
    reason
}

/// One row's cells.
pub fn cells(kind: &str, o: &Value) -> Vec<Value> {
    let name = json!(meta_str(o, "name"));
    let created = age(&o["metadata"]["creationTimestamp"]);
    let (st, sp) = (&o["status"], &o["spec"]);
    match kind {
        "Pod" => {
            let total = sp["containers"].as_array().map_or(0, Vec::len);
            let cstat = st["containerStatuses"].as_array().cloned().unwrap_or_default();
            let ready = cstat.iter().filter(|c| c["ready"] == true).count();
            let restarts: i64 = cstat.iter().map(|c| i(&c["restartCount"])).sum();
            let ip = st["podIP"].as_str().unwrap_or("<none>");
            let node = sp["nodeName"].as_str().unwrap_or("<none>");
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(pod_status(o)),
                json!(restarts.to_string()),
                json!(created),
                json!(ip),
                json!(node),
                json!("<none>"),
                json!("<none>"),
            ]
        }
        "Deployment" => {
            let (c, im) = containers_images(&sp["template"]["spec"]);
            vec![
                name,
                json!(format!("{}/{}", i(&st["readyReplicas"]), i(&sp["replicas"]))),
                json!(i(&st["updatedReplicas"])),
                json!(i(&st["availableReplicas"])),
                json!(created),
                json!(c),
                json!(im),
                json!(selector_string(&sp["selector"])),
            ]
        }
        "ReplicaSet" => {
            let (c, im) = containers_images(&sp["template"]["spec"]);
            vec![
                name,
                json!(i(&sp["replicas"])),
                json!(i(&st["replicas"])),
                json!(i(&st["readyReplicas"])),
                json!(created),
                json!(c),
                json!(im),
                json!(selector_string(&sp["selector"])),
            ]
        }
        "DaemonSet" => {
            let nsel: Vec<String> = sp["template"]["spec"]["nodeSelector"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", s(v)))
                .collect();
            let nsel = if nsel.is_empty() { "<none>".to_string() } else { nsel.join(",") };
            vec![
                name,
                json!(i(&st["desiredNumberScheduled"])),
                json!(i(&st["currentNumberScheduled"])),
                json!(i(&st["numberReady"])),
                json!(i(&st["updatedNumberScheduled"])),
                json!(i(&st["numberAvailable"])),
                json!(nsel),
                json!(created),
            ]
        }
        "Job" => {
            let (c, im) = containers_images(&sp["template"]["spec"]);
            let conds = st["conditions"].as_array().cloned().unwrap_or_default();
            let has = |t: &str| conds.iter().any(|c| c["type"] == t && c["status"] == "True");
            let status = if has("Complete") {
                "Complete"
            } else if has("Failed") {
                "Failed"
            } else if sp["suspend"] == true {
                "Suspended"
            } else {
                "Running"
            };
            let duration = match (st["startTime"].as_str(), st["completionTime"].as_str()) {
                (Some(a), Some(b)) => {
                    match (chrono::DateTime::parse_from_rfc3339(a), chrono::DateTime::parse_from_rfc3339(b)) {
                        (Ok(a), Ok(b)) => human_duration((b - a).num_seconds()),
                        _ => String::new(),
                    }
                }
                (Some(_), None) => age(&st["startTime"]),
                _ => String::new(),
            };
            let comp = match sp["completions"].as_i64() {
                Some(n) => format!("{}/{n}", i(&st["succeeded"])),
                None => format!("{}/1 of {}", i(&st["succeeded"]), i(&sp["parallelism"])),
            };
            vec![
                name,
                json!(status),
                json!(comp),
                json!(duration),
                json!(created),
                json!(c),
                json!(im),
                json!(selector_string(&sp["selector"])),
            ]
        }
        "Node" => {
            let ready = st["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Ready");
            let mut status = match ready.map(|c| s(&c["status"])) {
                Some(x) if x == "True" => "Ready".to_string(),
                Some(_) => "NotReady".to_string(),
                None => "Unknown".to_string(),
            };
            if sp["unschedulable"] == true {
                status.push_str(",SchedulingDisabled");
            }
            let roles: Vec<String> = o["metadata"]["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/").map(String::from))
                .collect();
            let roles = if roles.is_empty() { "<none>".into() } else { roles.join(",") };
            let addr = |t: &str| {
                st["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["type"] == t)
                    .map_or("<none>".into(), |a| s(&a["address"]))
            };
            let ni = &st["nodeInfo"];
            vec![
                name,
                json!(status),
                json!(roles),
                json!(created),
                json!(s(&ni["kubeletVersion"])),
                json!(addr("InternalIP")),
                json!(addr("ExternalIP")),
                json!(s(&ni["osImage"])),
                json!(s(&ni["kernelVersion"])),
                json!(s(&ni["containerRuntimeVersion"])),
            ]
        }
        "Namespace" => {
            let phase =
                if o["metadata"]["deletionTimestamp"].is_null() { s(&st["phase"]) } else { "Terminating".into() };
            vec![name, json!(phase), json!(created)]
        }
        "Service" => {
            let ports: Vec<String> = sp["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| match p["nodePort"].as_i64() {
                    Some(np) => format!("{}:{np}/{}", i(&p["port"]), s(&p["protocol"])),
                    None => format!("{}/{}", i(&p["port"]), s(&p["protocol"])),
                })
                .collect();
            let ports = if ports.is_empty() { "<none>".into() } else { ports.join(",") };
            let sel = sp["selector"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| format!("{k}={}", s(v))).collect::<Vec<_>>().join(","))
                .unwrap_or("<none>".into());
            vec![
                name,
                json!(s(&sp["type"])),
                json!(sp["clusterIP"].as_str().unwrap_or("<none>")),
                json!("<none>"),
                json!(ports),
                json!(created),
                json!(sel),
            ]
        }
        "ConfigMap" => {
            let n = o["data"].as_object().map_or(0, |m| m.len()) + o["binaryData"].as_object().map_or(0, |m| m.len());
            vec![name, json!(n), json!(created)]
        }
        "Secret" => {
            vec![name, json!(s(&o["type"])), json!(o["data"].as_object().map_or(0, |m| m.len())), json!(created)]
        }
        "ServiceAccount" => vec![name, json!(o["secrets"].as_array().map_or(0, Vec::len)), json!(created)],
        "Endpoints" => {
            let eps: Vec<String> = o["subsets"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|ss| {
                    let ports: Vec<i64> = ss["ports"].as_array().into_iter().flatten().map(|p| i(&p["port"])).collect();
                    ss["addresses"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(move |a| {
                            let ip = s(&a["ip"]);
                            let ports = ports.clone();
                            if ports.is_empty() {
                                vec![ip]
                            } else {
                                ports.into_iter().map(|p| format!("{ip}:{p}")).collect()
                            }
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            vec![name, json!(if eps.is_empty() { "<none>".into() } else { eps.join(",") }), json!(created)]
        }
        "Event" => {
            let last = [&o["lastTimestamp"], &o["eventTime"], &o["metadata"]["creationTimestamp"]]
                .into_iter()
                .find(|v| !v.is_null())
                .cloned()
                .unwrap_or(Value::Null);
            let io = &o["involvedObject"];
            vec![
                json!(age(&last)),
                json!(s(&o["type"])),
                json!(s(&o["reason"])),
                json!(format!("{}/{}", s(&io["kind"]).to_lowercase(), s(&io["name"]))),
                json!(s(&o["message"])),
            ]
        }
        "Lease" => vec![name, json!(sp["holderIdentity"].as_str().unwrap_or("")), json!(created)],
        "CertificateSigningRequest" => {
            // As kubectl prints it: the condition types, then Issued once signed; else Pending.
            let mut cond: Vec<String> =
                o["status"]["conditions"].as_array().into_iter().flatten().map(|c| s(&c["type"]).to_string()).collect();
            if o["status"]["certificate"].as_str().is_some_and(|c| !c.is_empty()) {
                cond.push("Issued".into());
            }
            let cond = if cond.is_empty() { "Pending".to_string() } else { cond.join(",") };
            vec![
                name,
                json!(created),
                json!(s(&sp["signerName"])),
                json!(s(&sp["username"])),
                json!("<none>"),
                json!(cond),
            ]
        }
        _ => vec![name, json!(created)],
    }
}

/// The object a row carries: full, or PartialObjectMetadata (the default).
pub fn row(kind: &str, o: &Value, include_object: &str) -> Value {
    let object = match include_object {
        "Object" => o.clone(),
        "None" => Value::Null,
        _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}),
    };
    json!({"cells": cells(kind, o), "object": object})
}

pub fn table(kind: &str, items: &[Value], rv: &str, cont: Option<&str>, include_object: &str, headers: bool) -> Value {
    let mut t = json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": if headers { Value::Array(columns(kind)) } else { Value::Null },
        "rows": items.iter().map(|o| row(kind, o, include_object)).collect::<Vec<_>>(),
    });
    if let Some(c) = cont {
        t["metadata"]["continue"] = json!(c);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_like_kubectl() {
        for (s, want) in [
            (5, "5s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (50 * 3600, "2d2h"),
            (800 * 86400, "2y70d"),
        ] {
            assert_eq!(human_duration(s), want);
        }
    }

    #[test]
    fn pod_row() {
        let p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{}, {}], "nodeName": "n1"},
                       "status": {"phase": "Running", "containerStatuses": [{"ready": true, "restartCount": 2}]}});
        let c = cells("Pod", &p);
        assert_eq!(c[1], "1/2");
        assert_eq!(c[2], "Running");
        assert_eq!(c[3], "2");
        assert_eq!(c[6], "n1");
    }
}
