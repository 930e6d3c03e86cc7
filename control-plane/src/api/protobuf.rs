//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) for the kinds
//! kubectl's typed clients send that way: ConfigMap, Secret, Namespace, ServiceAccount, Service
//! (`kubectl create configmap|secret|namespace|serviceaccount|service`) and CertificateSigningRequest
//! (`kubectl certificate approve|deny`), TokenRequest (`kubectl create token`) and
//! SelfSubjectAccessReview (`kubectl auth can-i`). The envelope is the
//! `k8s\0` magic then `runtime.Unknown`; the messages below carry just the fields those
//! commands set (field numbers from k8s.io/api's generated.proto); prost skips the rest.
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
    t.as_ref().and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0)).map_or(Value::Null, |d| json!(d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
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
    let conds: Vec<Value> = st.conditions.iter().map(|c| json!({"type": c.type_, "status": c.status, "reason": c.reason, "message": c.message,
        "lastUpdateTime": time(&c.last_update_time), "lastTransitionTime": time(&c.last_transition_time)})).collect();
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
        (v, k) => return Err(format!("protobuf bodies are decoded for v1 ConfigMap, Secret, Namespace, ServiceAccount, Service, CertificateSigningRequest, TokenRequest and SelfSubjectAccessReview only (got {v} {k}); send JSON")),
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
    for (k, v) in [("name", m.name), ("generateName", m.generate_name), ("namespace", m.namespace), ("resourceVersion", m.resource_version)] {
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
        let port = |name: &str, n: i32, target: IntOrString| ServicePort { name: Some(name.into()), protocol: Some("TCP".into()), port: Some(n), target_port: Some(target), node_port: None };
        let svc = Service {
            metadata: Some(ObjectMeta { name: "web".into(), ..Default::default() }),
            spec: Some(ServiceSpec {
                ports: vec![port("a", 80, IntOrString { type_: Some(0), int_val: Some(8080), str_val: None }), port("b", 81, IntOrString { type_: Some(1), int_val: None, str_val: Some("http".into()) })],
                selector: [("app".to_string(), "web".to_string())].into(),
                cluster_ip: Some("10.96.0.9".into()),
                type_: Some("ClusterIP".into()),
                external_name: None,
            }),
        };
        let v = decode(&envelope("Service", svc.encode_to_vec())).unwrap();
        assert_eq!(v["spec"], json!({"ports": [{"name": "a", "protocol": "TCP", "port": 80, "targetPort": 8080}, {"name": "b", "protocol": "TCP", "port": 81, "targetPort": "http"}], "selector": {"app": "web"}, "clusterIP": "10.96.0.9", "type": "ClusterIP"}));
    }

    #[test]
    fn configmap_and_secret_round_trip_to_json() {
        let meta = ObjectMeta { name: "cm".into(), labels: HashMap::from([("a".into(), "b".into())]), ..Default::default() };
        let cm = ConfigMap { metadata: Some(meta.clone()), data: HashMap::from([("k".into(), "v".into())]), binary_data: HashMap::from([("bin".into(), vec![0, 255])]), immutable: None };
        let v = decode(&envelope("ConfigMap", cm.encode_to_vec())).unwrap();
        assert_eq!(v, json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "labels": {"a": "b"}}, "data": {"k": "v"}, "binaryData": {"bin": "AP8="}}));
        let s = Secret { metadata: Some(meta), data: HashMap::from([("p".into(), b"pw".to_vec())]), type_: Some("Opaque".into()), ..Default::default() };
        let v = decode(&envelope("Secret", s.encode_to_vec())).unwrap();
        assert_eq!(v["data"]["p"], "cHc=");
        assert_eq!(v["type"], "Opaque");
        let csr = Csr { status: Some(CsrStatus { conditions: vec![CsrCondition { type_: "Approved".into(), status: "True".into(), reason: "KubectlApprove".into(), last_update_time: Some(Time { seconds: 0 }), ..Default::default() }], certificate: vec![] }), ..Default::default() };
        let u = Unknown { type_meta: Some(TypeMeta { api_version: "certificates.k8s.io/v1".into(), kind: "CertificateSigningRequest".into() }), raw: csr.encode_to_vec() };
        let v = decode(&[MAGIC.to_vec(), u.encode_to_vec()].concat()).unwrap();
        assert_eq!(v["status"]["conditions"][0], json!({"type": "Approved", "status": "True", "reason": "KubectlApprove", "message": "", "lastUpdateTime": "1970-01-01T00:00:00Z", "lastTransitionTime": null}));
        let tr = TokenRequest { spec: Some(TokenRequestSpec { audiences: vec!["a".into()], expiration_seconds: Some(700), bound_object_ref: None }), metadata: None };
        let u = Unknown { type_meta: Some(TypeMeta { api_version: "authentication.k8s.io/v1".into(), kind: "TokenRequest".into() }), raw: tr.encode_to_vec() };
        let v = decode(&[MAGIC.to_vec(), u.encode_to_vec()].concat()).unwrap();
        assert_eq!(v["spec"], json!({"audiences": ["a"], "expirationSeconds": 700}));
        let e = decode(&envelope("Pod", vec![])).unwrap_err();
        assert!(e.contains("got v1 Pod"), "{e}");
        assert!(decode(b"k8s\0\xff\xff").is_err());
    }
}
