//! Subresources other than status: scale (deployments, replicasets), binding and eviction
//! (pods). log/exec/attach/portforward are proxied to the node's agent by `super::proxy`.

use http::Method;
use serde_json::{json, Value};

use super::patch::{self, PatchType};
use super::registry::{meta_str, DeleteOpts};
use super::resources::ResourceDef;
use super::status::ApiError;
use super::{json_response, parse_body, Api, Body, Req};

pub async fn handle(
    api: &Api,
    req: &Req,
    r: &'static ResourceDef,
    ns: Option<&str>,
    name: &str,
    sub: &str,
) -> Result<http::Response<Body>, ApiError> {
    if !r.subresources.contains(&sub) {
        return Err(ApiError::no_route(&req.path));
    }
    match (sub, &req.method) {
        ("scale", &Method::GET) => Ok(json_response(200, &scale_of(&api.reg.get(r, ns, name).await?))),
        ("scale", &Method::PUT | &Method::PATCH) => scale(api, req, r, ns, name).await,
        ("binding", &Method::POST) => bind(api, req, r, ns, name).await,
        ("eviction", &Method::POST) => {
            let body = parse_body(&req.body)?;
            let d = &body["deleteOptions"];
            let opts = DeleteOpts {
                grace_period: d["gracePeriodSeconds"].as_i64(),
                propagation: None,
                uid: d["preconditions"]["uid"].as_str().map(String::from),
                resource_version: d["preconditions"]["resourceVersion"].as_str().map(String::from),
            };
            api.reg.delete(r, ns, name, &opts).await?;
            Ok(json_response(
                201,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            ))
        }
        ("approval", &Method::PUT) => {
            // `kubectl certificate approve|deny`: the conditions are all this writes.
            let body = parse_body(&req.body)?;
            let conds = body["status"]["conditions"].clone();
            let obj = api
                .reg
                .modify(r, ns, name, Some("status"), |o| {
                    let changed = o["status"]["conditions"] != conds;
                    o["status"]["conditions"] = conds.clone();
                    changed
                })
                .await?;
            Ok(json_response(200, &obj))
        }
        ("finalize", &Method::PUT) => {
            let body = parse_body(&req.body)?;
            let fins = body["spec"]["finalizers"].clone();
            let obj = api
                .reg
                .modify(r, ns, name, None, |o| {
                    let changed = o["spec"]["finalizers"] != fins;
                    o["spec"]["finalizers"] = fins.clone();
                    changed
                })
                .await?;
            Ok(json_response(200, &obj))
        }
        _ => Err(ApiError::method_not_allowed(format!("{} is not supported on {}/{sub}", req.method, r.plural))),
    }
}

fn scale_of(o: &Value) -> Value {
    let m = &o["metadata"];
    let sel_str = super::table::selector_string(&o["spec"]["selector"]);
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"], "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
        "spec": {"replicas": o["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {"replicas": o["status"]["replicas"].as_i64().unwrap_or(0), "selector": sel_str},
    })
}

async fn scale(
    api: &Api,
    req: &Req,
    r: &'static ResourceDef,
    ns: Option<&str>,
    name: &str,
) -> Result<http::Response<Body>, ApiError> {
    let body = parse_body(&req.body)?;
    for _ in 0..16 {
        let cur = api.reg.get(r, ns, name).await?;
        let cur_scale = scale_of(&cur);
        let want = if req.method == Method::PUT {
            body.clone()
        } else {
            let kind = PatchType::from_content_type(&req.content_type)
                .ok_or_else(|| ApiError::unsupported_media("unsupported patch type"))?;
            patch::apply(kind, &cur_scale, &body).map_err(ApiError::bad_request)?
        };
        let replicas =
            want["spec"]["replicas"].as_i64().ok_or_else(|| ApiError::bad_request("spec.replicas is required"))?;
        if replicas < 0 {
            return Err(ApiError::invalid(
                "Scale",
                "autoscaling",
                name,
                vec![super::status::Cause::invalid(
                    "spec.replicas",
                    &replicas.to_string(),
                    "must be greater than or equal to 0",
                )],
            ));
        }
        let pinned = meta_str(&want, "resourceVersion");
        if !pinned.is_empty() && pinned != meta_str(&cur, "resourceVersion") {
            return Err(ApiError::conflict(
                r.group,
                r.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let mut new = cur.clone();
        new["spec"]["replicas"] = json!(replicas);
        match api.reg.update(r, ns, name, new, None, super::registry::FieldValidation::Ignore).await {
            Ok(o) => return Ok(json_response(200, &scale_of(&o))),
            Err(e) if e.code == 409 && pinned.is_empty() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::internal("too many conflicting writes while scaling"))
}

async fn bind(
    api: &Api,
    req: &Req,
    r: &'static ResourceDef,
    ns: Option<&str>,
    name: &str,
) -> Result<http::Response<Body>, ApiError> {
    let body = parse_body(&req.body)?;
    let node = body["target"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("binding target name is required"))?
        .to_string();
    bind_pod(api, r, ns, name, &node).await?;
    Ok(json_response(
        201,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// Sets spec.nodeName once and marks the pod scheduled.
pub async fn bind_pod(
    api: &Api,
    r: &'static ResourceDef,
    ns: Option<&str>,
    name: &str,
    node: &str,
) -> Result<(), ApiError> {
    super::super::controllers::bind(&api.reg, r, ns, name, node).await.map(|_| ())
}
