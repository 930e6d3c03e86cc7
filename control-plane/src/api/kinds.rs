//! Per-kind behaviour: typed round-trip through k8s-openapi (type errors, unknown-field pruning),
//! the defaults kube-apiserver applies, validation answered as 422 naming the field, and which
//! kinds track `metadata.generation`.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use k8s_openapi::api::{
    apps::v1 as apps, batch::v1 as batch, certificates::v1 as certs, coordination::v1 as coord, core::v1 as core,
};

use super::status::{ApiError, Cause};

fn roundtrip_as<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    let t: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(t).map_err(|e| e.to_string())
}

/// Decodes into the kind's type and back: rejects wrong types, drops unknown fields.
pub fn roundtrip(kind: &str, v: &Value) -> Result<Value, String> {
    match kind {
        "Namespace" => roundtrip_as::<core::Namespace>(v),
        "Pod" => roundtrip_as::<core::Pod>(v),
        "Node" => roundtrip_as::<core::Node>(v),
        "ConfigMap" => roundtrip_as::<core::ConfigMap>(v),
        "Secret" => roundtrip_as::<core::Secret>(v),
        "ServiceAccount" => roundtrip_as::<core::ServiceAccount>(v),
        "Service" => roundtrip_as::<core::Service>(v),
        "Endpoints" => roundtrip_as::<core::Endpoints>(v),
        "Event" => roundtrip_as::<core::Event>(v),
        "Lease" => roundtrip_as::<coord::Lease>(v),
        "Deployment" => roundtrip_as::<apps::Deployment>(v),
        "ReplicaSet" => roundtrip_as::<apps::ReplicaSet>(v),
        "DaemonSet" => roundtrip_as::<apps::DaemonSet>(v),
        "ControllerRevision" => roundtrip_as::<apps::ControllerRevision>(v),
        "Job" => roundtrip_as::<batch::Job>(v),
        "CertificateSigningRequest" => roundtrip_as::<certs::CertificateSigningRequest>(v),
        "ClusterRole" => roundtrip_as::<k8s_openapi::api::rbac::v1::ClusterRole>(v),
        "ClusterRoleBinding" => roundtrip_as::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>(v),
        _ => Ok(v.clone()),
    }
}

/// Paths present in `input` but dropped by the round-trip (unknown fields), for strict validation.
pub fn unknown_fields(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match b.get(k) {
                    Some(tv) => unknown_fields(v, tv, &p, out),
                    None if v.is_null() || v == &json!({}) || v == &json!([]) => {}
                    None if k == "status" || k.starts_with('$') => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                unknown_fields(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Kinds whose `metadata.generation` counts spec changes.
pub fn tracks_generation(kind: &str) -> bool {
    matches!(kind, "Deployment" | "ReplicaSet" | "DaemonSet" | "Job" | "Service" | "Namespace")
}

fn set_default(obj: &mut Value, key: &str, v: Value) {
    if let Some(m) = obj.as_object_mut() {
        if m.get(key).is_none_or(Value::is_null) {
            m.insert(key.into(), v);
        }
    }
}

fn child<'a>(obj: &'a mut Value, key: &str) -> &'a mut Value {
    set_default(obj, key, json!({}));
    &mut obj[key]
}

/// The defaults kube-apiserver applies (SetDefaults_* plus the admission plugins a kubelet
/// relies on: DefaultTolerationSeconds, ServiceAccount name).
pub fn apply_defaults(kind: &str, obj: &mut Value) {
    match kind {
        "Pod" => {
            default_pod_spec(child(obj, "spec"));
            let spec = &mut obj["spec"];
            set_default(spec, "serviceAccountName", json!("default"));
            let sa = spec["serviceAccountName"].clone();
            set_default(spec, "serviceAccount", sa);
            set_default(spec, "priority", json!(0));
            let tols = child_array(spec, "tolerations");
            for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
                if !tols.iter().any(|t| t["key"] == key && (t["effect"] == "NoExecute" || t["effect"].is_null())) {
                    tols.push(
                        json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}),
                    );
                }
            }
            let qos = qos_class(&obj["spec"]);
            let status = child(obj, "status");
            set_default(status, "phase", json!("Pending"));
            set_default(status, "qosClass", json!(qos));
        }
        "Deployment" => {
            let spec = child(obj, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            let strategy = child(spec, "strategy");
            set_default(strategy, "type", json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                let ru = child(strategy, "rollingUpdate");
                set_default(ru, "maxSurge", json!("25%"));
                set_default(ru, "maxUnavailable", json!("25%"));
            }
            default_template(spec);
        }
        "ReplicaSet" => {
            let spec = child(obj, "spec");
            set_default(spec, "replicas", json!(1));
            default_template(spec);
        }
        "DaemonSet" => {
            let spec = child(obj, "spec");
            set_default(spec, "revisionHistoryLimit", json!(10));
            let us = child(spec, "updateStrategy");
            set_default(us, "type", json!("RollingUpdate"));
            if us["type"] == "RollingUpdate" {
                let ru = child(us, "rollingUpdate");
                set_default(ru, "maxUnavailable", json!(1));
                set_default(ru, "maxSurge", json!(0));
            }
            default_template(spec);
        }
        "Job" => default_job(obj),
        "Service" => {
            let spec = child(obj, "spec");
            set_default(spec, "type", json!("ClusterIP"));
            set_default(spec, "sessionAffinity", json!("None"));
            set_default(spec, "ipFamilies", json!(["IPv4"]));
            set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
            set_default(spec, "internalTrafficPolicy", json!("Cluster"));
            for p in child_array(spec, "ports") {
                set_default(p, "protocol", json!("TCP"));
                let port = p["port"].clone();
                set_default(p, "targetPort", port);
            }
        }
        "Namespace" => {
            let name = obj.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
            child(child(obj, "metadata"), "labels")["kubernetes.io/metadata.name"] = name;
            set_default(child(obj, "spec"), "finalizers", json!(["kubernetes"]));
            set_default(child(obj, "status"), "phase", json!("Active"));
        }
        "Secret" => set_default(obj, "type", json!("Opaque")),
        _ => {}
    }
}

fn child_array<'a>(obj: &'a mut Value, key: &str) -> &'a mut Vec<Value> {
    set_default(obj, key, json!([]));
    if !obj[key].is_array() {
        obj[key] = json!([]);
    }
    obj[key].as_array_mut().expect("array")
}

fn default_template(spec: &mut Value) {
    let tpl = child(spec, "template");
    default_pod_spec(child(tpl, "spec"));
}

fn default_pod_spec(spec: &mut Value) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "enableServiceLinks", json!(true));
    set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    for list in ["initContainers", "containers"] {
        let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) else { continue };
        for c in cs {
            let image = c["image"].as_str().unwrap_or_default().to_string();
            let last = image.rsplit('/').next().unwrap_or_default();
            let latest = !image.contains('@') && (!last.contains(':') || last.ends_with(":latest"));
            set_default(c, "imagePullPolicy", json!(if latest { "Always" } else { "IfNotPresent" }));
            set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
            set_default(c, "terminationMessagePolicy", json!("File"));
            set_default(c, "resources", json!({}));
            for p in c.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
                set_default(p, "protocol", json!("TCP"));
            }
        }
    }
}

fn default_job(obj: &mut Value) {
    let uid = obj.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
    let name = obj.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
    let spec = child(obj, "spec");
    if spec["completions"].is_null() && spec["parallelism"].is_null() {
        spec["completions"] = json!(1);
    }
    set_default(spec, "parallelism", json!(1));
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    if spec["manualSelector"] != json!(true) && !uid.is_null() {
        let labels = json!({"batch.kubernetes.io/controller-uid": uid, "controller-uid": uid,
                            "batch.kubernetes.io/job-name": name, "job-name": name});
        if spec["selector"].is_null() {
            spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
        }
        let tl = child(child(child(spec, "template"), "metadata"), "labels");
        for (k, v) in labels.as_object().into_iter().flatten() {
            tl[k] = v.clone();
        }
    }
    default_pod_spec(child(child(spec, "template"), "spec"));
}

fn qos_class(spec: &Value) -> &'static str {
    let cs: Vec<&Value> = spec["containers"].as_array().into_iter().flatten().collect();
    let (mut any, mut guaranteed) = (false, !cs.is_empty());
    for c in &cs {
        let (req, lim) = (&c["resources"]["requests"], &c["resources"]["limits"]);
        for r in ["cpu", "memory"] {
            any |= !req[r].is_null() || !lim[r].is_null();
            let l = &lim[r];
            guaranteed &= !l.is_null() && (req[r].is_null() || req[r] == *l);
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        _ => "Burstable",
    }
}

pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Validation after defaults; every problem names its field.
pub fn validate(kind: &str, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut c = Vec::new();
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let label_names = matches!(kind, "Namespace" | "Service");
    let ok = if label_names { is_dns_label(name) } else { is_dns_subdomain(name) };
    if name.is_empty() {
        c.push(Cause::required("metadata.name"));
    } else if !ok {
        let why = if label_names {
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
        } else {
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        };
        c.push(Cause::invalid("metadata.name", name, why));
    }
    for (k, v) in obj.pointer("/metadata/labels").and_then(Value::as_object).into_iter().flatten() {
        let val = v.as_str().unwrap_or_default();
        let ok = val.len() <= 63 && val.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch));
        if !ok {
            c.push(Cause::invalid(
                &format!("metadata.labels.{k}"),
                val,
                "a valid label must be 63 characters or less and consist of alphanumerics, '-', '_' or '.'",
            ));
        }
    }
    match kind {
        "Pod" => validate_pod_spec(&obj["spec"], "spec", &mut c),
        "Deployment" | "ReplicaSet" | "DaemonSet" => validate_workload(kind, obj, &mut c),
        "Job" => {
            validate_pod_spec(&obj["spec"]["template"]["spec"], "spec.template.spec", &mut c);
            let rp = obj["spec"]["template"]["spec"]["restartPolicy"].as_str().unwrap_or_default();
            if rp != "Never" && rp != "OnFailure" {
                c.push(Cause {
                    field: "spec.template.spec.restartPolicy".into(),
                    kind: "FieldValueNotSupported",
                    message: format!("Unsupported value: \"{rp}\": supported values: \"OnFailure\", \"Never\""),
                });
            }
        }
        _ => {}
    }
    if let Some(old) = old {
        immutable(kind, obj, old, &mut c);
    }
    c
}

fn validate_workload(kind: &str, obj: &Value, c: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    if spec["replicas"].as_i64().is_some_and(|r| r < 0) {
        c.push(Cause::invalid("spec.replicas", &spec["replicas"].to_string(), "must be greater than or equal to 0"));
    }
    match super::selector::LabelSelector::from_value(&spec["selector"]) {
        Ok(None) => c.push(Cause::required("spec.selector")),
        Ok(Some(sel)) if sel.is_empty() => {
            c.push(Cause::invalid("spec.selector", "{}", "empty selector is invalid for deployment"))
        }
        Ok(Some(sel)) => {
            if !sel.matches_object(&spec["template"]) {
                let labels = serde_json::to_string(&spec["template"]["metadata"]["labels"]).unwrap_or_default();
                c.push(Cause::invalid(
                    "spec.template.metadata.labels",
                    &labels,
                    "`selector` does not match template `labels`",
                ));
            }
        }
        Err(e) => c.push(Cause::invalid("spec.selector", "", &e)),
    }
    validate_pod_spec(&spec["template"]["spec"], "spec.template.spec", c);
    if kind == "Deployment" || kind == "DaemonSet" {
        let rp = spec["template"]["spec"]["restartPolicy"].as_str().unwrap_or("Always");
        if rp != "Always" {
            c.push(Cause {
                field: "spec.template.spec.restartPolicy".into(),
                kind: "FieldValueNotSupported",
                message: format!("Unsupported value: \"{rp}\": supported values: \"Always\""),
            });
        }
    }
}

fn validate_pod_spec(spec: &Value, at: &str, c: &mut Vec<Cause>) {
    let containers = spec["containers"].as_array().map(Vec::as_slice).unwrap_or_default();
    if containers.is_empty() {
        c.push(Cause::required(&format!("{at}.containers")));
    }
    let mut names = std::collections::HashSet::new();
    for list in ["initContainers", "containers"] {
        for (i, ct) in spec[list].as_array().into_iter().flatten().enumerate() {
            let f = format!("{at}.{list}[{i}]");
            let n = ct["name"].as_str().unwrap_or_default();
            if n.is_empty() {
                c.push(Cause::required(&format!("{f}.name")));
            } else if !is_dns_label(n) {
                c.push(Cause::invalid(
                    &format!("{f}.name"),
                    n,
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'",
                ));
            } else if !names.insert(n.to_string()) {
                c.push(Cause::duplicate(&format!("{f}.name"), n));
            }
            if ct["image"].as_str().unwrap_or_default().is_empty() {
                c.push(Cause::required(&format!("{f}.image")));
            }
            for (j, p) in ct["ports"].as_array().into_iter().flatten().enumerate() {
                let port = p["containerPort"].as_i64().unwrap_or(0);
                if !(1..=65535).contains(&port) {
                    c.push(Cause::invalid(
                        &format!("{f}.ports[{j}].containerPort"),
                        &port.to_string(),
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
        }
    }
    if let Some(rp) = spec["restartPolicy"].as_str() {
        if !["Always", "OnFailure", "Never"].contains(&rp) {
            c.push(Cause {
                field: format!("{at}.restartPolicy"),
                kind: "FieldValueNotSupported",
                message: format!("Unsupported value: \"{rp}\": supported values: \"Always\", \"OnFailure\", \"Never\""),
            });
        }
    }
}

fn immutable(kind: &str, new: &Value, old: &Value, c: &mut Vec<Cause>) {
    match kind {
        "Deployment" | "ReplicaSet" | "DaemonSet" if new["spec"]["selector"] != old["spec"]["selector"] => {
            c.push(Cause::invalid("spec.selector", &new["spec"]["selector"].to_string(), "field is immutable"));
        }
        "Job" if new["spec"]["template"] != old["spec"]["template"] => {
            c.push(Cause::invalid("spec.template", "", "field is immutable"));
        }
        "Pod" => {
            // Only images, activeDeadlineSeconds and added tolerations may change.
            let strip = |v: &Value| {
                let mut s = v["spec"].clone();
                for list in ["containers", "initContainers"] {
                    for ct in s.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
                        ct["image"] = Value::Null;
                    }
                }
                if let Some(m) = s.as_object_mut() {
                    m.remove("activeDeadlineSeconds");
                    m.remove("tolerations");
                    if old["spec"]["nodeName"].is_null() {
                        m.remove("nodeName");
                    }
                }
                s
            };
            if strip(new) != strip(old) {
                c.push(Cause::forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds` or `spec.tolerations` (only additions to existing tolerations)"));
            }
        }
        _ => {}
    }
}

/// 400 for a body whose fields have the wrong types.
pub fn decode_error(kind: &str, msg: &str) -> ApiError {
    ApiError::bad_request(format!("error decoding {kind}: {msg}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_defaults_and_validation() {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        apply_defaults("Pod", &mut p);
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(p["spec"]["tolerations"].as_array().unwrap().len(), 2);
        assert_eq!(p["status"]["qosClass"], "BestEffort");
        assert!(validate("Pod", &p, None).is_empty());
        let bad = json!({"metadata": {"name": "Bad_Name"}, "spec": {"containers": [{"name": "c"}]}});
        let fields: Vec<String> = validate("Pod", &bad, None).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["metadata.name", "spec.containers[0].image"]);
    }

    #[test]
    fn deployment_selector_must_match_template() {
        let mut d = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}});
        apply_defaults("Deployment", &mut d);
        let causes = validate("Deployment", &d, None);
        assert_eq!(causes[0].field, "spec.template.metadata.labels");
    }

    #[test]
    fn roundtrip_reports_unknown_fields() {
        let v = json!({"metadata": {"name": "c"}, "data": {"a": "b"}, "bogus": 1});
        let t = roundtrip("ConfigMap", &v).unwrap();
        let mut unknown = Vec::new();
        unknown_fields(&v, &t, "", &mut unknown);
        assert_eq!(unknown, ["bogus"]);
        assert!(roundtrip("ConfigMap", &json!({"data": 5})).is_err());
    }
}
