//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) for the kinds
//! kubectl's typed clients send that way: ConfigMap, Secret, Namespace, ServiceAccount, Service,
//! Deployment, Job (`kubectl create configmap|secret|namespace|serviceaccount|service|deployment|job`)
//! and CertificateSigningRequest
//! (`kubectl certificate approve|deny`), TokenRequest (`kubectl create token`) and
//! SelfSubjectAccessReview (`kubectl auth can-i`). The envelope is the
//! `k8s\0` magic then `runtime.Unknown`; the messages below carry just the fields those
//! commands set (field numbers from k8s.io/api's generated.proto); prost skips the rest, except
//! for Deployment and Job, whose other fields must be unset (see `check_fields`).
//! Decoded bodies become JSON and follow the normal path. Responses stay JSON, which every
//! client's Accept header allows.

use std::collections::HashMap;

use base64::Engine as _;
use prost::Message;
use serde_json::{json, Map, Value};

pub const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, PartialEq, Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", tag = "2")]
    raw: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeMeta {
    #[prost(string, tag = "1")]
    api_version: String,
    #[prost(string, tag = "2")]
    kind: String,
}

#[derive(Clone, PartialEq, Message)]
struct ObjectMeta {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    generate_name: String,
    #[prost(string, tag = "3")]
    namespace: String,
    #[prost(string, tag = "6")]
    resource_version: String,
    #[prost(map = "string, string", tag = "11")]
    labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "12")]
    annotations: HashMap<String, String>,
    #[prost(string, repeated, tag = "14")]
    finalizers: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ConfigMap {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(map = "string, string", tag = "2")]
    data: HashMap<String, String>,
    #[prost(map = "string, bytes", tag = "3")]
    binary_data: HashMap<String, Vec<u8>>,
    #[prost(bool, optional, tag = "4")]
    immutable: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
struct Secret {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(map = "string, bytes", tag = "2")]
    data: HashMap<String, Vec<u8>>,
    #[prost(string, optional, tag = "3")]
    type_: Option<String>,
    #[prost(map = "string, string", tag = "4")]
    string_data: HashMap<String, String>,
    #[prost(bool, optional, tag = "5")]
    immutable: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
struct Namespace {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
}

#[derive(Clone, PartialEq, Message)]
struct ServiceAccount {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(bool, optional, tag = "4")]
    automount_service_account_token: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
struct IntOrString {
    #[prost(int64, optional, tag = "1")]
    type_: Option<i64>,
    #[prost(int32, optional, tag = "2")]
    int_val: Option<i32>,
    #[prost(string, optional, tag = "3")]
    str_val: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ServicePort {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    protocol: Option<String>,
    #[prost(int32, optional, tag = "3")]
    port: Option<i32>,
    #[prost(message, optional, tag = "4")]
    target_port: Option<IntOrString>,
    #[prost(int32, optional, tag = "5")]
    node_port: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
struct ServiceSpec {
    #[prost(message, repeated, tag = "1")]
    ports: Vec<ServicePort>,
    #[prost(map = "string, string", tag = "2")]
    selector: HashMap<String, String>,
    #[prost(string, optional, tag = "3")]
    cluster_ip: Option<String>,
    #[prost(string, optional, tag = "4")]
    type_: Option<String>,
    #[prost(string, optional, tag = "10")]
    external_name: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct Service {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<ServiceSpec>,
}

fn service_json(m: Service) -> Map<String, Value> {
    let mut o = with_meta(m.metadata);
    let s = m.spec.unwrap_or_default();
    let mut spec = Map::new();
    let ports: Vec<Value> = s
        .ports
        .into_iter()
        .map(|p| {
            let mut v = Map::new();
            for (k, x) in [("name", p.name), ("protocol", p.protocol)] {
                if let Some(x) = x.filter(|x| !x.is_empty()) {
                    v.insert(k.into(), json!(x));
                }
            }
            for (k, x) in [("port", p.port), ("nodePort", p.node_port)] {
                if let Some(x) = x.filter(|x| *x != 0) {
                    v.insert(k.into(), json!(x));
                }
            }
            match p.target_port {
                Some(IntOrString { type_: Some(1), str_val: Some(s), .. }) => v.insert("targetPort".into(), json!(s)),
                Some(IntOrString { int_val: Some(n), .. }) if n != 0 => v.insert("targetPort".into(), json!(n)),
                _ => None,
            };
            Value::Object(v)
        })
        .collect();
    if !ports.is_empty() {
        spec.insert("ports".into(), json!(ports));
    }
    put_map(&mut spec, "selector", s.selector.into_iter().map(|(k, v)| (k, json!(v))));
    for (k, x) in [("clusterIP", s.cluster_ip), ("type", s.type_), ("externalName", s.external_name)] {
        if let Some(x) = x.filter(|x| !x.is_empty()) {
            spec.insert(k.into(), json!(x));
        }
    }
    o.insert("spec".into(), Value::Object(spec));
    o
}

#[derive(Clone, PartialEq, Message)]
struct Time {
    #[prost(int64, tag = "1")]
    seconds: i64,
}

#[derive(Clone, PartialEq, Message)]
struct CsrCondition {
    #[prost(string, tag = "1")]
    type_: String,
    #[prost(string, tag = "2")]
    reason: String,
    #[prost(string, tag = "3")]
    message: String,
    #[prost(message, optional, tag = "4")]
    last_update_time: Option<Time>,
    #[prost(message, optional, tag = "5")]
    last_transition_time: Option<Time>,
    #[prost(string, tag = "6")]
    status: String,
}

#[derive(Clone, PartialEq, Message)]
struct CsrSpec {
    #[prost(bytes = "vec", tag = "1")]
    request: Vec<u8>,
    #[prost(string, repeated, tag = "5")]
    usages: Vec<String>,
    #[prost(string, tag = "7")]
    signer_name: String,
    #[prost(int32, optional, tag = "8")]
    expiration_seconds: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
struct CsrStatus {
    #[prost(message, repeated, tag = "1")]
    conditions: Vec<CsrCondition>,
    #[prost(bytes = "vec", tag = "2")]
    certificate: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct Csr {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<CsrSpec>,
    #[prost(message, optional, tag = "3")]
    status: Option<CsrStatus>,
}

fn time(t: &Option<Time>) -> Value {
    t.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map_or(Value::Null, |d| json!(d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
}

fn csr_json(m: Csr) -> Map<String, Value> {
    let mut o = with_meta(m.metadata);
    let spec = m.spec.unwrap_or_default();
    let mut s = json!({"request": b64(&spec.request), "signerName": spec.signer_name, "usages": spec.usages});
    if let Some(e) = spec.expiration_seconds {
        s["expirationSeconds"] = json!(e);
    }
    o.insert("spec".into(), s);
    let st = m.status.unwrap_or_default();
    let conds: Vec<Value> = st
        .conditions
        .iter()
        .map(|c| {
            json!({"type": c.type_, "status": c.status, "reason": c.reason, "message": c.message,
        "lastUpdateTime": time(&c.last_update_time), "lastTransitionTime": time(&c.last_transition_time)})
        })
        .collect();
    let mut status = json!({"conditions": conds});
    if !st.certificate.is_empty() {
        status["certificate"] = json!(b64(&st.certificate));
    }
    o.insert("status".into(), status);
    o
}

#[derive(Clone, PartialEq, Message)]
struct BoundObjectReference {
    #[prost(string, tag = "1")]
    kind: String,
    #[prost(string, tag = "2")]
    api_version: String,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    uid: String,
}

#[derive(Clone, PartialEq, Message)]
struct TokenRequestSpec {
    #[prost(string, repeated, tag = "1")]
    audiences: Vec<String>,
    #[prost(message, optional, tag = "3")]
    bound_object_ref: Option<BoundObjectReference>,
    #[prost(int64, optional, tag = "4")]
    expiration_seconds: Option<i64>,
}

#[derive(Clone, PartialEq, Message)]
struct TokenRequest {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<TokenRequestSpec>,
}

#[derive(Clone, PartialEq, Message)]
struct ResourceAttributes {
    #[prost(string, tag = "1")]
    namespace: String,
    #[prost(string, tag = "2")]
    verb: String,
    #[prost(string, tag = "3")]
    group: String,
    #[prost(string, tag = "4")]
    version: String,
    #[prost(string, tag = "5")]
    resource: String,
    #[prost(string, tag = "6")]
    subresource: String,
    #[prost(string, tag = "7")]
    name: String,
}

#[derive(Clone, PartialEq, Message)]
struct NonResourceAttributes {
    #[prost(string, tag = "1")]
    path: String,
    #[prost(string, tag = "2")]
    verb: String,
}

#[derive(Clone, PartialEq, Message)]
struct SelfSubjectAccessReviewSpec {
    #[prost(message, optional, tag = "1")]
    resource_attributes: Option<ResourceAttributes>,
    #[prost(message, optional, tag = "2")]
    non_resource_attributes: Option<NonResourceAttributes>,
}

#[derive(Clone, PartialEq, Message)]
struct SelfSubjectAccessReview {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<SelfSubjectAccessReviewSpec>,
}

fn ssar_json(m: SelfSubjectAccessReview) -> Map<String, Value> {
    let mut o = with_meta(m.metadata);
    let s = m.spec.unwrap_or_default();
    let mut spec = json!({});
    if let Some(r) = s.resource_attributes {
        spec["resourceAttributes"] = json!({"namespace": r.namespace, "verb": r.verb, "group": r.group, "version": r.version, "resource": r.resource, "subresource": r.subresource, "name": r.name});
    }
    if let Some(n) = s.non_resource_attributes {
        spec["nonResourceAttributes"] = json!({"path": n.path, "verb": n.verb});
    }
    o.insert("spec".into(), spec);
    o
}

fn token_request_json(m: TokenRequest) -> Map<String, Value> {
    let mut o = with_meta(m.metadata);
    let s = m.spec.unwrap_or_default();
    let mut spec = json!({"audiences": s.audiences});
    if let Some(e) = s.expiration_seconds {
        spec["expirationSeconds"] = json!(e);
    }
    if let Some(b) = s.bound_object_ref {
        spec["boundObjectRef"] = json!({"kind": b.kind, "apiVersion": b.api_version, "name": b.name, "uid": b.uid});
    }
    o.insert("spec".into(), spec);
    o
}

// --- Workloads: what `kubectl create deployment|job` send ---------------------------------
//
// These kinds carry a pod template, whose full schema is far larger than what is decoded
// here. So, unlike the kinds above, their bodies are first checked against the fields the
// decoder reads ([`check_fields`]): a body that sets any other field (a client sending env,
// volumes, probes… as protobuf) is refused with a 415 naming the field, never stored with the
// field silently dropped.

#[derive(Clone, PartialEq, Message)]
struct LabelSelector {
    #[prost(map = "string, string", tag = "1")]
    match_labels: HashMap<String, String>,
}

#[derive(Clone, PartialEq, Message)]
struct ContainerPort {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(int32, optional, tag = "2")]
    host_port: Option<i32>,
    #[prost(int32, optional, tag = "3")]
    container_port: Option<i32>,
    #[prost(string, optional, tag = "4")]
    protocol: Option<String>,
    #[prost(string, optional, tag = "5")]
    host_ip: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct Container {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    image: Option<String>,
    #[prost(string, repeated, tag = "3")]
    command: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    args: Vec<String>,
    #[prost(string, optional, tag = "5")]
    working_dir: Option<String>,
    #[prost(message, repeated, tag = "6")]
    ports: Vec<ContainerPort>,
    #[prost(string, optional, tag = "14")]
    image_pull_policy: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct PodSpec {
    #[prost(message, repeated, tag = "2")]
    containers: Vec<Container>,
    #[prost(string, optional, tag = "3")]
    restart_policy: Option<String>,
    #[prost(int64, optional, tag = "4")]
    termination_grace_period_seconds: Option<i64>,
    #[prost(map = "string, string", tag = "7")]
    node_selector: HashMap<String, String>,
    #[prost(string, optional, tag = "8")]
    service_account_name: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct PodTemplateSpec {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<PodSpec>,
}

#[derive(Clone, PartialEq, Message)]
struct DeploymentStrategy {
    #[prost(string, optional, tag = "1")]
    type_: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct DeploymentSpec {
    #[prost(int32, optional, tag = "1")]
    replicas: Option<i32>,
    #[prost(message, optional, tag = "2")]
    selector: Option<LabelSelector>,
    #[prost(message, optional, tag = "3")]
    template: Option<PodTemplateSpec>,
    #[prost(message, optional, tag = "4")]
    strategy: Option<DeploymentStrategy>,
    #[prost(int32, optional, tag = "5")]
    min_ready_seconds: Option<i32>,
    #[prost(int32, optional, tag = "6")]
    revision_history_limit: Option<i32>,
    #[prost(bool, optional, tag = "7")]
    paused: Option<bool>,
    #[prost(int32, optional, tag = "9")]
    progress_deadline_seconds: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
struct Deployment {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<DeploymentSpec>,
}

#[derive(Clone, PartialEq, Message)]
struct JobSpec {
    #[prost(int32, optional, tag = "1")]
    parallelism: Option<i32>,
    #[prost(int32, optional, tag = "2")]
    completions: Option<i32>,
    #[prost(int64, optional, tag = "3")]
    active_deadline_seconds: Option<i64>,
    #[prost(message, optional, tag = "6")]
    template: Option<PodTemplateSpec>,
    #[prost(int32, optional, tag = "7")]
    backoff_limit: Option<i32>,
    #[prost(int32, optional, tag = "8")]
    ttl_seconds_after_finished: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
struct Job {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<JobSpec>,
}

/// The fields of a message that the decoder reads: (number, name, the nested message's
/// fields when the decoder reads inside it).
struct Fields(&'static [(u32, &'static str, Option<&'static Fields>)]);

const META: Fields = Fields(&[
    (1, "name", None),
    (2, "generateName", None),
    (3, "namespace", None),
    (6, "resourceVersion", None),
    (11, "labels", None),
    (12, "annotations", None),
    (14, "finalizers", None),
]);
const PORT: Fields = Fields(&[
    (1, "name", None),
    (2, "hostPort", None),
    (3, "containerPort", None),
    (4, "protocol", None),
    (5, "hostIP", None),
]);
const CONTAINER: Fields = Fields(&[
    (1, "name", None),
    (2, "image", None),
    (3, "command", None),
    (4, "args", None),
    (5, "workingDir", None),
    (6, "ports", Some(&PORT)),
    (14, "imagePullPolicy", None),
]);
const POD_SPEC: Fields = Fields(&[
    (2, "containers", Some(&CONTAINER)),
    (3, "restartPolicy", None),
    (4, "terminationGracePeriodSeconds", None),
    (7, "nodeSelector", None),
    (8, "serviceAccountName", None),
]);
const TEMPLATE: Fields = Fields(&[(1, "metadata", Some(&META)), (2, "spec", Some(&POD_SPEC))]);
const STRATEGY: Fields = Fields(&[(1, "type", None)]);
const SELECTOR: Fields = Fields(&[(1, "matchLabels", None)]);
const DEPLOYMENT_SPEC: Fields = Fields(&[
    (1, "replicas", None),
    (2, "selector", Some(&SELECTOR)),
    (3, "template", Some(&TEMPLATE)),
    (4, "strategy", Some(&STRATEGY)),
    (5, "minReadySeconds", None),
    (6, "revisionHistoryLimit", None),
    (7, "paused", None),
    (9, "progressDeadlineSeconds", None),
]);
const DEPLOYMENT: Fields = Fields(&[(1, "metadata", Some(&META)), (2, "spec", Some(&DEPLOYMENT_SPEC))]);
const JOB_SPEC: Fields = Fields(&[
    (1, "parallelism", None),
    (2, "completions", None),
    (3, "activeDeadlineSeconds", None),
    (6, "template", Some(&TEMPLATE)),
    (7, "backoffLimit", None),
    (8, "ttlSecondsAfterFinished", None),
]);
const JOB: Fields = Fields(&[(1, "metadata", Some(&META)), (2, "spec", Some(&JOB_SPEC))]);

/// One field of a protobuf message: its number and its value (a varint or fixed value as an
/// integer, a length-delimited one as bytes).
enum Wire<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The fields of a message in order, or None if it is not well-formed protobuf.
fn fields(mut b: &[u8]) -> Option<Vec<(u32, Wire<'_>)>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let n = u32::try_from(key >> 3).ok()?;
        let value = match key & 7 {
            0 => Wire::Int(varint(&mut b)?),
            1 | 5 => {
                let len = if key & 7 == 1 { 8 } else { 4 };
                let (v, rest) = (b.get(..len)?, b.get(len..)?);
                b = rest;
                Wire::Int(v.iter().rev().fold(0, |a, x| a << 8 | u64::from(*x)))
            }
            2 => {
                let len = usize::try_from(varint(&mut b)?).ok()?;
                let (v, rest) = (b.get(..len)?, b.get(len..)?);
                b = rest;
                Wire::Bytes(v)
            }
            _ => return None,
        };
        out.push((n, value));
    }
    Some(out)
}

/// Whether a value carries nothing: zero, empty, or a message of such values (Go's encoder
/// writes unset non-pointer fields as zeros and empty structs, e.g. `status: {}`).
fn is_empty(w: &Wire<'_>) -> bool {
    match w {
        Wire::Int(v) => *v == 0,
        Wire::Bytes(b) => b.is_empty() || fields(b).is_some_and(|f| f.iter().all(|(_, w)| is_empty(w))),
    }
}

/// Err names the first field of `body` (at `path`) that is set but not among `known`.
fn check_fields(body: &[u8], known: &Fields, path: &str) -> Result<(), String> {
    let fs = fields(body).ok_or_else(|| format!("{path}: not well-formed protobuf"))?;
    for (n, w) in &fs {
        match known.0.iter().find(|(k, ..)| k == n) {
            Some((_, name, Some(nested))) => match w {
                Wire::Bytes(b) => check_fields(b, nested, &format!("{path}.{name}"))?,
                Wire::Int(_) => return Err(format!("{path}.{name}: expected a message")),
            },
            Some(_) => {}
            None if is_empty(w) => {}
            None => return Err(format!("{path}: field number {n} is set, and this server decodes only some fields of this kind from protobuf; send the object as JSON")),
        }
    }
    Ok(())
}

fn opt_insert<T: Into<Value>>(o: &mut Map<String, Value>, key: &str, v: Option<T>) {
    if let Some(v) = v {
        o.insert(key.into(), v.into());
    }
}

fn template_json(t: PodTemplateSpec) -> Value {
    let mut o = with_meta(t.metadata);
    let s = t.spec.unwrap_or_default();
    let containers: Vec<Value> = s
        .containers
        .into_iter()
        .map(|c| {
            let mut v = Map::new();
            opt_insert(&mut v, "name", c.name);
            opt_insert(&mut v, "image", c.image.filter(|i| !i.is_empty()));
            if !c.command.is_empty() {
                v.insert("command".into(), json!(c.command));
            }
            if !c.args.is_empty() {
                v.insert("args".into(), json!(c.args));
            }
            opt_insert(&mut v, "workingDir", c.working_dir.filter(|w| !w.is_empty()));
            let ports: Vec<Value> = c
                .ports
                .into_iter()
                .map(|p| {
                    let mut pv = Map::new();
                    opt_insert(&mut pv, "name", p.name.filter(|n| !n.is_empty()));
                    opt_insert(&mut pv, "hostPort", p.host_port.filter(|n| *n != 0));
                    opt_insert(&mut pv, "containerPort", p.container_port);
                    opt_insert(&mut pv, "protocol", p.protocol.filter(|n| !n.is_empty()));
                    opt_insert(&mut pv, "hostIP", p.host_ip.filter(|n| !n.is_empty()));
                    Value::Object(pv)
                })
                .collect();
            if !ports.is_empty() {
                v.insert("ports".into(), json!(ports));
            }
            opt_insert(&mut v, "imagePullPolicy", c.image_pull_policy.filter(|p| !p.is_empty()));
            Value::Object(v)
        })
        .collect();
    let mut spec = Map::new();
    spec.insert("containers".into(), json!(containers));
    opt_insert(&mut spec, "restartPolicy", s.restart_policy.filter(|p| !p.is_empty()));
    opt_insert(&mut spec, "terminationGracePeriodSeconds", s.termination_grace_period_seconds);
    put_map(&mut spec, "nodeSelector", s.node_selector.into_iter().map(|(k, v)| (k, json!(v))));
    opt_insert(&mut spec, "serviceAccountName", s.service_account_name.filter(|n| !n.is_empty()));
    o.insert("spec".into(), Value::Object(spec));
    Value::Object(o)
}

fn deployment_json(m: Deployment) -> Map<String, Value> {
    let mut o = with_meta(m.metadata);
    let s = m.spec.unwrap_or_default();
    let mut spec = Map::new();
    opt_insert(&mut spec, "replicas", s.replicas);
    if let Some(sel) = s.selector {
        let mut sv = Map::new();
        put_map(&mut sv, "matchLabels", sel.match_labels.into_iter().map(|(k, v)| (k, json!(v))));
        spec.insert("selector".into(), Value::Object(sv));
    }
    if let Some(t) = s.template {
        spec.insert("template".into(), template_json(t));
    }
    if let Some(t) = s.strategy.and_then(|st| st.type_).filter(|t| !t.is_empty()) {
        spec.insert("strategy".into(), json!({"type": t}));
    }
    opt_insert(&mut spec, "minReadySeconds", s.min_ready_seconds.filter(|n| *n != 0));
    opt_insert(&mut spec, "revisionHistoryLimit", s.revision_history_limit);
    opt_insert(&mut spec, "paused", s.paused.filter(|p| *p));
    opt_insert(&mut spec, "progressDeadlineSeconds", s.progress_deadline_seconds);
    o.insert("spec".into(), Value::Object(spec));
    o
}

fn job_json(m: Job) -> Map<String, Value> {
    let mut o = with_meta(m.metadata);
    let s = m.spec.unwrap_or_default();
    let mut spec = Map::new();
    opt_insert(&mut spec, "parallelism", s.parallelism);
    opt_insert(&mut spec, "completions", s.completions);
    opt_insert(&mut spec, "activeDeadlineSeconds", s.active_deadline_seconds);
    if let Some(t) = s.template {
        spec.insert("template".into(), template_json(t));
    }
    opt_insert(&mut spec, "backoffLimit", s.backoff_limit);
    opt_insert(&mut spec, "ttlSecondsAfterFinished", s.ttl_seconds_after_finished);
    o.insert("spec".into(), Value::Object(spec));
    o
}

/// Decodes a protobuf body into the JSON the API takes. Err is a message for a 415/400.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let rest = body.strip_prefix(MAGIC).ok_or("not a Kubernetes protobuf body")?;
    let u = Unknown::decode(rest).map_err(|e| format!("decoding the protobuf envelope: {e}"))?;
    let tm = u.type_meta.unwrap_or_default();
    let bad = |e: prost::DecodeError| format!("decoding {} protobuf: {e}", tm.kind);
    let raw = u.raw.as_slice();
    let mut obj = match (tm.api_version.as_str(), tm.kind.as_str()) {
        ("v1", "ConfigMap") => {
            let m = ConfigMap::decode(raw).map_err(bad)?;
            let mut o = with_meta(m.metadata);
            put_map(&mut o, "data", m.data.into_iter().map(|(k, v)| (k, json!(v))));
            put_map(&mut o, "binaryData", m.binary_data.into_iter().map(|(k, v)| (k, json!(b64(&v)))));
            if let Some(i) = m.immutable {
                o.insert("immutable".into(), json!(i));
            }
            o
        }
        ("v1", "Secret") => {
            let m = Secret::decode(raw).map_err(bad)?;
            let mut o = with_meta(m.metadata);
            put_map(&mut o, "data", m.data.into_iter().map(|(k, v)| (k, json!(b64(&v)))));
            put_map(&mut o, "stringData", m.string_data.into_iter().map(|(k, v)| (k, json!(v))));
            if let Some(t) = m.type_.filter(|t| !t.is_empty()) {
                o.insert("type".into(), json!(t));
            }
            if let Some(i) = m.immutable {
                o.insert("immutable".into(), json!(i));
            }
            o
        }
        ("v1", "Namespace") => with_meta(Namespace::decode(raw).map_err(bad)?.metadata),
        ("v1", "ServiceAccount") => {
            let m = ServiceAccount::decode(raw).map_err(bad)?;
            let mut o = with_meta(m.metadata);
            if let Some(a) = m.automount_service_account_token {
                o.insert("automountServiceAccountToken".into(), json!(a));
            }
            o
        }
        ("v1", "Service") => service_json(Service::decode(raw).map_err(bad)?),
        ("certificates.k8s.io/v1", "CertificateSigningRequest") => csr_json(Csr::decode(raw).map_err(bad)?),
        ("authentication.k8s.io/v1", "TokenRequest") => token_request_json(TokenRequest::decode(raw).map_err(bad)?),
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => ssar_json(SelfSubjectAccessReview::decode(raw).map_err(bad)?),
        ("apps/v1", "Deployment") => {
            check_fields(raw, &DEPLOYMENT, "Deployment")?;
            deployment_json(Deployment::decode(raw).map_err(bad)?)
        }
        ("batch/v1", "Job") => {
            check_fields(raw, &JOB, "Job")?;
            job_json(Job::decode(raw).map_err(bad)?)
        }
        (v, k) => return Err(format!("protobuf bodies are decoded for v1 ConfigMap, Secret, Namespace, ServiceAccount, Service, apps/v1 Deployment, batch/v1 Job, CertificateSigningRequest, TokenRequest and SelfSubjectAccessReview only (got {v} {k}); send JSON")),
    };
    obj.insert("apiVersion".into(), json!(tm.api_version));
    obj.insert("kind".into(), json!(tm.kind));
    Ok(Value::Object(obj))
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn put_map(o: &mut Map<String, Value>, key: &str, entries: impl Iterator<Item = (String, Value)>) {
    let m: Map<String, Value> = entries.collect();
    if !m.is_empty() {
        o.insert(key.into(), Value::Object(m));
    }
}

fn with_meta(m: Option<ObjectMeta>) -> Map<String, Value> {
    let m = m.unwrap_or_default();
    let mut meta = Map::new();
    for (k, v) in [
        ("name", m.name),
        ("generateName", m.generate_name),
        ("namespace", m.namespace),
        ("resourceVersion", m.resource_version),
    ] {
        if !v.is_empty() {
            meta.insert(k.into(), json!(v));
        }
    }
    put_map(&mut meta, "labels", m.labels.into_iter().map(|(k, v)| (k, json!(v))));
    put_map(&mut meta, "annotations", m.annotations.into_iter().map(|(k, v)| (k, json!(v))));
    if !m.finalizers.is_empty() {
        meta.insert("finalizers".into(), json!(m.finalizers));
    }
    let mut o = Map::new();
    o.insert("metadata".into(), Value::Object(meta));
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let u = Unknown { type_meta: Some(TypeMeta { api_version: "v1".into(), kind: kind.into() }), raw };
        [MAGIC.to_vec(), u.encode_to_vec()].concat()
    }

    #[test]
    fn service_ports_and_target_ports_to_json() {
        let port = |name: &str, n: i32, target: IntOrString| ServicePort {
            name: Some(name.into()),
            protocol: Some("TCP".into()),
            port: Some(n),
            target_port: Some(target),
            node_port: None,
        };
        let svc = Service {
            metadata: Some(ObjectMeta { name: "web".into(), ..Default::default() }),
            spec: Some(ServiceSpec {
                ports: vec![
                    port("a", 80, IntOrString { type_: Some(0), int_val: Some(8080), str_val: None }),
                    port("b", 81, IntOrString { type_: Some(1), int_val: None, str_val: Some("http".into()) }),
                ],
                selector: [("app".to_string(), "web".to_string())].into(),
                cluster_ip: Some("10.96.0.9".into()),
                type_: Some("ClusterIP".into()),
                external_name: None,
            }),
        };
        let v = decode(&envelope("Service", svc.encode_to_vec())).unwrap();
        assert_eq!(
            v["spec"],
            json!({"ports": [{"name": "a", "protocol": "TCP", "port": 80, "targetPort": 8080}, {"name": "b", "protocol": "TCP", "port": 81, "targetPort": "http"}], "selector": {"app": "web"}, "clusterIP": "10.96.0.9", "type": "ClusterIP"})
        );
    }

    #[test]
    fn configmap_and_secret_round_trip_to_json() {
        let meta =
            ObjectMeta { name: "cm".into(), labels: HashMap::from([("a".into(), "b".into())]), ..Default::default() };
        let cm = ConfigMap {
            metadata: Some(meta.clone()),
            data: HashMap::from([("k".into(), "v".into())]),
            binary_data: HashMap::from([("bin".into(), vec![0, 255])]),
            immutable: None,
        };
        let v = decode(&envelope("ConfigMap", cm.encode_to_vec())).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "labels": {"a": "b"}}, "data": {"k": "v"}, "binaryData": {"bin": "AP8="}})
        );
        let s = Secret {
            metadata: Some(meta),
            data: HashMap::from([("p".into(), b"pw".to_vec())]),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        let v = decode(&envelope("Secret", s.encode_to_vec())).unwrap();
        assert_eq!(v["data"]["p"], "cHc=");
        assert_eq!(v["type"], "Opaque");
        let csr = Csr {
            status: Some(CsrStatus {
                conditions: vec![CsrCondition {
                    type_: "Approved".into(),
                    status: "True".into(),
                    reason: "KubectlApprove".into(),
                    last_update_time: Some(Time { seconds: 0 }),
                    ..Default::default()
                }],
                certificate: vec![],
            }),
            ..Default::default()
        };
        let u = Unknown {
            type_meta: Some(TypeMeta {
                api_version: "certificates.k8s.io/v1".into(),
                kind: "CertificateSigningRequest".into(),
            }),
            raw: csr.encode_to_vec(),
        };
        let v = decode(&[MAGIC.to_vec(), u.encode_to_vec()].concat()).unwrap();
        assert_eq!(
            v["status"]["conditions"][0],
            json!({"type": "Approved", "status": "True", "reason": "KubectlApprove", "message": "", "lastUpdateTime": "1970-01-01T00:00:00Z", "lastTransitionTime": null})
        );
        let tr = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: vec!["a".into()],
                expiration_seconds: Some(700),
                bound_object_ref: None,
            }),
            metadata: None,
        };
        let u = Unknown {
            type_meta: Some(TypeMeta { api_version: "authentication.k8s.io/v1".into(), kind: "TokenRequest".into() }),
            raw: tr.encode_to_vec(),
        };
        let v = decode(&[MAGIC.to_vec(), u.encode_to_vec()].concat()).unwrap();
        assert_eq!(v["spec"], json!({"audiences": ["a"], "expirationSeconds": 700}));
        let e = decode(&envelope("Pod", vec![])).unwrap_err();
        assert!(e.contains("apps/v1 Deployment"), "{e}");
        assert!(e.contains("got v1 Pod"), "{e}");
        assert!(decode(b"k8s\0\xff\xff").is_err());
    }
    fn workload(kind: &str, api: &str, raw: Vec<u8>) -> Vec<u8> {
        let u = Unknown { type_meta: Some(TypeMeta { api_version: api.into(), kind: kind.into() }), raw };
        [MAGIC.to_vec(), u.encode_to_vec()].concat()
    }

    /// A container with `env` (field 7), which the decoder does not read.
    #[derive(Clone, PartialEq, Message)]
    struct EnvVar {
        #[prost(string, tag = "1")]
        name: String,
    }
    #[derive(Clone, PartialEq, Message)]
    struct ContainerWithEnv {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(message, repeated, tag = "7")]
        env: Vec<EnvVar>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct PodSpecWithEnv {
        #[prost(message, repeated, tag = "2")]
        containers: Vec<ContainerWithEnv>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct TemplateWithEnv {
        #[prost(message, optional, tag = "2")]
        spec: Option<PodSpecWithEnv>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct JobSpecWithEnv {
        #[prost(message, optional, tag = "6")]
        template: Option<TemplateWithEnv>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct JobWithEnv {
        #[prost(message, optional, tag = "2")]
        spec: Option<JobSpecWithEnv>,
        /// Go writes an unset status as an empty message.
        #[prost(bytes = "vec", tag = "3")]
        status: Vec<u8>,
    }

    #[test]
    fn deployments_and_jobs_decode_and_unread_fields_are_refused() {
        let ctr = Container {
            name: Some("web".into()),
            image: Some("busybox:1.36".into()),
            command: vec!["sleep".into(), "1".into()],
            ports: vec![ContainerPort { container_port: Some(80), ..Default::default() }],
            ..Default::default()
        };
        let labels = HashMap::from([("app".to_string(), "web".to_string())]);
        let d = Deployment {
            metadata: Some(ObjectMeta { name: "web".into(), labels: labels.clone(), ..Default::default() }),
            spec: Some(DeploymentSpec {
                replicas: Some(2),
                selector: Some(LabelSelector { match_labels: labels.clone() }),
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta { labels, ..Default::default() }),
                    spec: Some(PodSpec { containers: vec![ctr], ..Default::default() }),
                }),
                strategy: Some(DeploymentStrategy::default()),
                ..Default::default()
            }),
        };
        let v = decode(&workload("Deployment", "apps/v1", d.encode_to_vec())).unwrap();
        assert_eq!(
            v["spec"],
            json!({"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "busybox:1.36", "command": ["sleep", "1"], "ports": [{"containerPort": 80}]}]}}})
        );

        // Zero-valued fields the decoder does not read (Go's empty status) pass; set ones do not.
        let quiet = JobWithEnv {
            spec: Some(JobSpecWithEnv {
                template: Some(TemplateWithEnv {
                    spec: Some(PodSpecWithEnv { containers: vec![ContainerWithEnv { name: "c".into(), env: vec![] }] }),
                }),
            }),
            status: vec![0x08, 0x00],
        };
        let v = decode(&workload("Job", "batch/v1", quiet.encode_to_vec())).unwrap();
        assert_eq!(v["spec"]["template"]["spec"]["containers"], json!([{"name": "c"}]));
        let mut loud = quiet.clone();
        loud.spec.as_mut().unwrap().template.as_mut().unwrap().spec.as_mut().unwrap().containers[0]
            .env
            .push(EnvVar { name: "A".into() });
        let e = decode(&workload("Job", "batch/v1", loud.encode_to_vec())).unwrap_err();
        assert!(e.contains("Job.spec.template.spec.containers: field number 7") && e.contains("JSON"), "{e}");
        let e = decode(&workload("Job", "batch/v1", vec![0x12, 0x05, 0x01])).unwrap_err();
        assert!(e.contains("not well-formed"), "{e}");
    }
}
