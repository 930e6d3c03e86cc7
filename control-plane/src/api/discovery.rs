//! Discovery: /version, /api, /apis (legacy and aggregated apidiscovery.k8s.io/v2 forms),
//! per-group-version resource lists, and the OpenAPI v3 documents kubectl apply/explain read.

use serde_json::{json, Map, Value};

use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, coordination::v1 as coord, core::v1 as core};

use super::resources::{ResourceDef, GROUPS, RESOURCES};

pub const AGGREGATED_V2: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

pub fn version() -> Value {
    json!({
        "major": "1", "minor": "32", "gitVersion": concat!("v1.32.0-berth.", env!("CARGO_PKG_VERSION")),
        "gitCommit": "", "gitTreeState": "clean", "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "none", "compiler": "rustc", "platform": "linux/amd64",
    })
}

pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|a| a.contains("as=APIGroupDiscoveryList") && a.contains("v=v2") && !a.contains("v=v2beta1"))
}

fn in_gv<'a>(group: &'a str, version: &'a str) -> impl Iterator<Item = &'static ResourceDef> + 'a {
    RESOURCES.iter().filter(move |r| r.group == group && r.version == version)
}

fn sub_verbs(sub: &str) -> Vec<&'static str> {
    match sub {
        "status" | "scale" => vec!["get", "patch", "update"],
        "binding" | "eviction" | "token" => vec!["create"],
        "log" => vec!["get"],
        "exec" | "attach" | "portforward" => vec!["create", "get"],
        _ => vec!["update"],
    }
}

fn sub_kind(r: &ResourceDef, sub: &str) -> (&'static str, &'static str, &'static str) {
    match sub {
        "scale" => ("autoscaling", "v1", "Scale"),
        "binding" => ("", "v1", "Binding"),
        "eviction" => ("policy", "v1", "Eviction"),
        "token" => ("authentication.k8s.io", "v1", "TokenRequest"),
        "exec" => ("", "v1", "PodExecOptions"),
        "attach" => ("", "v1", "PodAttachOptions"),
        "portforward" => ("", "v1", "PodPortForwardOptions"),
        "log" => ("", "v1", "Pod"),
        _ => (r.group, r.version, r.kind),
    }
}

pub fn api_versions(server: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}]})
}

pub fn api_group(group: &str) -> Option<Value> {
    let (_, v) = GROUPS.iter().find(|(g, _)| *g == group && !g.is_empty())?;
    let gv = json!({"groupVersion": format!("{group}/{v}"), "version": v});
    Some(
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": [gv.clone()], "preferredVersion": gv}),
    )
}

pub fn api_group_list() -> Value {
    let groups: Vec<Value> = GROUPS
        .iter()
        .filter(|(g, _)| !g.is_empty())
        .filter_map(|(g, _)| {
            let mut v = api_group(g)?;
            if let Some(m) = v.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            Some(v)
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    if !GROUPS.contains(&(group, version)) {
        return None;
    }
    let mut out = Vec::new();
    for r in in_gv(group, version) {
        out.push(json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
            "verbs": r.verbs(), "shortNames": r.short_names, "categories": r.categories,
        }));
        for sub in r.subresources {
            let (g, v, k) = sub_kind(r, sub);
            let mut e = json!({"name": format!("{}/{sub}", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": k, "verbs": sub_verbs(sub)});
            if !g.is_empty() || v != r.version {
                e["group"] = json!(g);
                e["version"] = json!(v);
            }
            out.push(e);
        }
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}))
}

/// The aggregated discovery document for the core group (`legacy`) or all named groups.
pub fn aggregated(legacy: bool) -> Value {
    let mut items = Vec::new();
    for (group, version) in GROUPS.iter().filter(|(g, _)| g.is_empty() == legacy) {
        let resources: Vec<Value> = in_gv(group, version).map(|r| {
            let subs: Vec<Value> = r.subresources.iter().map(|sub| {
                let (g, v, k) = sub_kind(r, sub);
                json!({"subresource": sub, "responseKind": {"group": g, "version": v, "kind": k}, "verbs": sub_verbs(sub)})
            }).collect();
            let mut e = json!({
                "resource": r.plural, "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                "scope": if r.namespaced { "Namespaced" } else { "Cluster" }, "singularResource": r.singular,
                "verbs": r.verbs(), "subresources": subs,
            });
            if !r.short_names.is_empty() { e["shortNames"] = json!(r.short_names); }
            if !r.categories.is_empty() { e["categories"] = json!(r.categories); }
            e
        }).collect();
        items.push(json!({"metadata": {"name": group, "creationTimestamp": null},
            "versions": [{"version": version, "resources": resources, "freshness": "Current"}]}));
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// OpenAPI v3 root: one document per group-version.
pub fn openapi_v3_root() -> Value {
    let mut paths = Map::new();
    for (g, v) in GROUPS {
        let p = if g.is_empty() { format!("api/{v}") } else { format!("apis/{g}/{v}") };
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=berth-{}", env!("CARGO_PKG_VERSION"))}),
        );
    }
    json!({"paths": paths})
}

fn schema_for_kind(gen: &mut schemars::SchemaGenerator, kind: &str) {
    match kind {
        "Namespace" => {
            gen.subschema_for::<core::Namespace>();
        }
        "Pod" => {
            gen.subschema_for::<core::Pod>();
        }
        "Node" => {
            gen.subschema_for::<core::Node>();
        }
        "ConfigMap" => {
            gen.subschema_for::<core::ConfigMap>();
        }
        "Secret" => {
            gen.subschema_for::<core::Secret>();
        }
        "ServiceAccount" => {
            gen.subschema_for::<core::ServiceAccount>();
        }
        "Service" => {
            gen.subschema_for::<core::Service>();
        }
        "Endpoints" => {
            gen.subschema_for::<core::Endpoints>();
        }
        "Event" => {
            gen.subschema_for::<core::Event>();
        }
        "Lease" => {
            gen.subschema_for::<coord::Lease>();
        }
        "Deployment" => {
            gen.subschema_for::<apps::Deployment>();
        }
        "ReplicaSet" => {
            gen.subschema_for::<apps::ReplicaSet>();
        }
        "DaemonSet" => {
            gen.subschema_for::<apps::DaemonSet>();
        }
        "ControllerRevision" => {
            gen.subschema_for::<apps::ControllerRevision>();
        }
        "Job" => {
            gen.subschema_for::<batch::Job>();
        }
        "ClusterRole" => {
            gen.subschema_for::<k8s_openapi::api::rbac::v1::ClusterRole>();
        }
        "ClusterRoleBinding" => {
            gen.subschema_for::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>();
        }
        "TokenReview" => {
            gen.subschema_for::<k8s_openapi::api::authentication::v1::TokenReview>();
        }
        "SubjectAccessReview" => {
            gen.subschema_for::<k8s_openapi::api::authorization::v1::SubjectAccessReview>();
        }
        "SelfSubjectAccessReview" => {
            gen.subschema_for::<k8s_openapi::api::authorization::v1::SelfSubjectAccessReview>();
        }
        "CertificateSigningRequest" => {
            gen.subschema_for::<k8s_openapi::api::certificates::v1::CertificateSigningRequest>();
        }
        _ => {}
    }
}

fn schema_name(r: &ResourceDef) -> String {
    let g = match r.group {
        "" => "core".to_string(),
        g => g.trim_end_matches(".k8s.io").to_string(),
    };
    format!("io.k8s.api.{g}.{}.{}", r.version, r.kind)
}

/// The OpenAPI v3 document of one group-version: component schemas (with the GVK extensions
/// kubectl explain looks for) and paths whose PATCH operations declare `fieldValidation`, which
/// tells kubectl the server validates fields itself.
pub fn openapi_v3(group: &str, version: &str) -> Option<Value> {
    if !GROUPS.contains(&(group, version)) {
        return None;
    }
    let mut gen = schemars::generate::SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    for r in in_gv(group, version) {
        schema_for_kind(&mut gen, r.kind);
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let base = if group.is_empty() { format!("/api/{version}") } else { format!("/apis/{group}/{version}") };
        let item = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{base}/{}/{{name}}", r.plural)
        };
        let reference = json!({"$ref": format!("#/components/schemas/{}", schema_name(r))});
        let body = json!({"content": {"application/json": {"schema": reference}}});
        let params = json!([
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        ]);
        paths.insert(item, json!({
            "get": {"responses": {"200": body.clone()}, "x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk},
            "put": {"requestBody": body.clone(), "responses": {"200": body.clone()}, "parameters": params, "x-kubernetes-action": "put", "x-kubernetes-group-version-kind": gvk},
            "patch": {"requestBody": {"content": {"application/strategic-merge-patch+json": {"schema": {"type": "object"}}}}, "responses": {"200": body.clone()}, "parameters": params, "x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk},
            "delete": {"responses": {"200": body}, "x-kubernetes-action": "delete", "x-kubernetes-group-version-kind": gvk},
        }));
    }
    let mut schemas = gen.take_definitions(true);
    for (name, schema) in schemas.iter_mut() {
        add_patch_extensions(name, schema);
    }
    for r in in_gv(group, version) {
        if let Some(s) = schemas.get_mut(&schema_name(r)).and_then(Value::as_object_mut) {
            s.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": r.group, "version": r.version, "kind": r.kind}]),
            );
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// Declares list merge keys the way kube-apiserver's OpenAPI does, so kubectl apply computes
/// strategic merge patches that merge containers, env, ports … by key instead of replacing them.
fn add_patch_extensions(schema_name: &str, schema: &mut Value) {
    let parent = if schema_name.ends_with(".Container") || schema_name.ends_with(".EphemeralContainer") {
        "containers"
    } else {
        ""
    };
    let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) else { return };
    for (field, prop) in props.iter_mut() {
        let Some(p) = prop.as_object_mut() else { continue };
        if let Some(key) = super::patch::merge_key(parent, field) {
            p.insert("x-kubernetes-patch-merge-key".into(), json!(key));
            p.insert("x-kubernetes-patch-strategy".into(), json!("merge"));
        } else if field == "finalizers" {
            p.insert("x-kubernetes-patch-strategy".into(), json!("merge"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_discovery_lists_pods_with_subresources() {
        let core = aggregated(true);
        let pods = core["items"][0]["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "pods")
            .unwrap()
            .clone();
        assert_eq!(pods["scope"], "Namespaced");
        assert!(pods["subresources"].as_array().unwrap().iter().any(|s| s["subresource"] == "status"));
        assert_eq!(
            aggregated(false)["items"].as_array().unwrap().len(),
            7,
            "apps, authentication, authorization, batch, certificates, coordination, rbac"
        );
        let sa = core["items"][0]["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "serviceaccounts")
            .unwrap()
            .clone();
        assert_eq!(sa["subresources"][0]["responseKind"]["kind"], "TokenRequest");
    }

    #[test]
    fn openapi_has_kind_schemas_with_gvk() {
        let doc = openapi_v3("apps", "v1").unwrap();
        let d = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(d["x-kubernetes-group-version-kind"][0]["kind"], "Deployment");
        assert!(d["properties"]["spec"].is_object());
        let doc = openapi_v3("coordination.k8s.io", "v1").unwrap();
        assert!(doc["components"]["schemas"]["io.k8s.api.coordination.v1.Lease"].is_object());
    }
}
