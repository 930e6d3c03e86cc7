//! Service-account tokens over the API: TokenRequest (`serviceaccounts/NAME/token`), TokenReview
//! (`authentication.k8s.io/v1`), SubjectAccessReview and SelfSubjectAccessReview
//! (`authorization.k8s.io/v1`), and bearer authentication of API requests with those tokens.
//! A token is valid while its signature, issuer and lifetime check out, its audience is asked
//! for, and its service account (and bound pod) still exist with the UIDs it names.

use http::Response;
use serde_json::{json, Value};

use super::authz::{self, Attrs};
use super::registry::meta_str;
use super::resources::{self, ResourceDef};
use super::selector::FieldSelector;
use super::status::ApiError;
use super::{json_response, parse_body, Api, Body, Req};
use crate::auth::User;
use crate::tokens::{self, Claims, Ref};

/// kube-apiserver's bounds for TokenRequest.spec.expirationSeconds (default one hour).
pub const MIN_EXPIRATION: i64 = 600;
pub const DEFAULT_EXPIRATION: i64 = 3600;
/// Longest lifetime granted (kube-apiserver's extended expiration for kubelet tokens).
const MAX_EXPIRATION: i64 = 365 * 24 * 3600;

/// The identity behind a valid token.
pub struct Reviewed {
    pub user: User,
    pub claims: Claims,
    /// The token's audiences that were asked for.
    pub audiences: Vec<String>,
}

impl Reviewed {
    fn user_json(&self) -> Value {
        let k = &self.claims.kubernetes;
        let mut extra = serde_json::Map::new();
        extra.insert("authentication.kubernetes.io/credential-id".into(), json!([format!("JTI={}", self.claims.jti)]));
        if let Some(p) = &k.pod {
            extra.insert("authentication.kubernetes.io/pod-name".into(), json!([p.name]));
            extra.insert("authentication.kubernetes.io/pod-uid".into(), json!([p.uid]));
        }
        json!({"username": self.user.name, "uid": k.serviceaccount.uid, "groups": self.user.groups, "extra": extra})
    }
}

/// Validates `token` for `audiences` (the API's own audience when empty).
pub async fn review(api: &Api, token: &str, audiences: &[String]) -> Result<Reviewed, String> {
    let claims = api.tokens.verify(token, tokens::now_secs()).map_err(|e| e.to_string())?;
    let wanted: Vec<String> = if audiences.is_empty() { vec![tokens::ISSUER.to_string()] } else { audiences.to_vec() };
    let matched: Vec<String> = wanted.iter().filter(|a| claims.aud.contains(a)).cloned().collect();
    if matched.is_empty() {
        return Err(format!("token audiences {:?} is invalid for the target audiences {wanted:?}", claims.aud));
    }
    let k = &claims.kubernetes;
    let sa = api
        .reg
        .get_opt(resources::by_kind("ServiceAccount"), Some(&k.namespace), &k.serviceaccount.name)
        .await
        .map_err(|e| e.message)?;
    match sa {
        Some(sa) if meta_str(&sa, "uid") == k.serviceaccount.uid => {}
        Some(_) => {
            return Err(format!(
                "service account {}/{} has been deleted and recreated",
                k.namespace, k.serviceaccount.name
            ))
        }
        None => return Err(format!("service account {}/{} has been deleted", k.namespace, k.serviceaccount.name)),
    }
    if let Some(p) = &k.pod {
        let pod =
            api.reg.get_opt(resources::by_kind("Pod"), Some(&k.namespace), &p.name).await.map_err(|e| e.message)?;
        if pod.as_ref().is_none_or(|pod| meta_str(pod, "uid") != p.uid) {
            return Err(format!(
                "pod {}/{} (uid {}) the token is bound to no longer exists",
                k.namespace, p.name, p.uid
            ));
        }
    }
    let groups = vec![
        "system:serviceaccounts".to_string(),
        format!("system:serviceaccounts:{}", k.namespace),
        "system:authenticated".to_string(),
    ];
    Ok(Reviewed { user: User { name: claims.sub.clone(), groups }, claims, audiences: matched })
}

/// The caller behind an API request's service-account bearer token, if valid.
pub async fn authenticate_bearer(api: &Api, token: &str) -> Option<User> {
    match review(api, token, &[]).await {
        Ok(r) => Some(r.user),
        Err(e) => {
            tracing::debug!(error = %e, "bearer token refused");
            None
        }
    }
}

/// POST serviceaccounts/NAME/token.
pub async fn token_request(
    api: &Api,
    req: &Req,
    ns: &str,
    name: &str,
    user: &User,
) -> Result<Response<Body>, ApiError> {
    let body = if req.body.is_empty() { json!({}) } else { parse_body(&req.body)? };
    let spec = &body["spec"];
    let sa = api.reg.get(resources::by_kind("ServiceAccount"), Some(ns), name).await?;
    let ttl = spec["expirationSeconds"].as_i64().unwrap_or(DEFAULT_EXPIRATION);
    if ttl < MIN_EXPIRATION {
        return Err(ApiError::bad_request(
            "spec.expirationSeconds: Invalid value: may not specify a duration less than 10 minutes",
        ));
    }
    let ttl = ttl.min(MAX_EXPIRATION);
    let audiences: Vec<String> =
        spec["audiences"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(String::from)).collect();
    let audiences = if audiences.is_empty() { vec![tokens::ISSUER.to_string()] } else { audiences };
    let pod = bound_pod(api, ns, name, &spec["boundObjectRef"]).await?;
    if let Some(node) = user.node_name() {
        // As NodeRestriction: a node asks only for tokens bound to its own pods.
        if pod.as_ref().is_none_or(|p| p["spec"]["nodeName"].as_str() != Some(node)) {
            return Err(ApiError::forbidden(format!("serviceaccounts \"{name}\" is forbidden: node \"{node}\" may only request tokens bound to pods on itself")));
        }
    }
    let pod_ref =
        pod.as_ref().map(|p| Ref { name: meta_str(p, "name").to_string(), uid: meta_str(p, "uid").to_string() });
    let sa_ref = Ref { name: name.to_string(), uid: meta_str(&sa, "uid").to_string() };
    let now = tokens::now_secs();
    let claims = Claims::new(ns, sa_ref, pod_ref, audiences.clone(), now, ttl);
    let token = api.tokens.sign(&claims).map_err(|e| ApiError::internal(e.to_string()))?;
    tracing::info!(namespace = ns, service_account = name, user = %user.name, ttl, bound_pod = pod.as_ref().map(|p| meta_str(p, "name")), "issued a service-account token");
    let expires = chrono::DateTime::from_timestamp(claims.exp, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    let mut spec_out = json!({"audiences": audiences, "expirationSeconds": ttl});
    if !spec["boundObjectRef"].is_null() {
        spec_out["boundObjectRef"] = spec["boundObjectRef"].clone();
    }
    Ok(json_response(
        201,
        &json!({
            "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
            "spec": spec_out,
            "status": {"token": token, "expirationTimestamp": expires},
        }),
    ))
}

/// The pod a TokenRequest binds to (only Pods are supported as bound objects).
async fn bound_pod(api: &Api, ns: &str, sa: &str, r: &Value) -> Result<Option<Value>, ApiError> {
    if r.is_null() {
        return Ok(None);
    }
    let kind = r["kind"].as_str().unwrap_or_default();
    if kind != "Pod" {
        return Err(ApiError::bad_request(format!(
            "spec.boundObjectRef.kind: Unsupported value: {kind:?}: supported values: \"Pod\""
        )));
    }
    let name = r["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("spec.boundObjectRef.name: Required value"))?;
    let pod = api.reg.get(resources::by_kind("Pod"), Some(ns), name).await?;
    if let Some(uid) = r["uid"].as_str().filter(|u| !u.is_empty()) {
        if uid != meta_str(&pod, "uid") {
            return Err(ApiError::conflict(
                "",
                "pods",
                name,
                &format!("the UID in the bound object reference ({uid}) does not match the UID in record"),
            ));
        }
    }
    if pod["spec"]["serviceAccountName"].as_str().unwrap_or("default") != sa {
        return Err(ApiError::bad_request(format!(
            "cannot bind token for serviceaccount {sa:?} to pod running with different serviceaccount name"
        )));
    }
    Ok(Some(pod))
}

/// POST tokenreviews.
pub async fn token_review(api: &Api, req: &Req) -> Result<Response<Body>, ApiError> {
    let body = parse_body(&req.body)?;
    let token = body["spec"]["token"].as_str().unwrap_or_default();
    let audiences: Vec<String> = body["spec"]["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    let status = match review(api, token, &audiences).await {
        Ok(r) => json!({"authenticated": true, "user": r.user_json(), "audiences": r.audiences}),
        Err(e) => json!({"authenticated": false, "user": {}, "error": format!("[invalid bearer token, {e}]")}),
    };
    Ok(json_response(
        201,
        &json!({
            "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null}, "spec": body["spec"], "status": status,
        }),
    ))
}

/// POST subjectaccessreviews (for `spec.user`) or selfsubjectaccessreviews (for the caller).
pub async fn access_review(api: &Api, req: &Req, caller: &User, kind: &str) -> Result<Response<Body>, ApiError> {
    let body = parse_body(&req.body)?;
    let spec = &body["spec"];
    let subject = if kind == "SelfSubjectAccessReview" {
        caller.clone()
    } else {
        let groups =
            spec["groups"].as_array().into_iter().flatten().filter_map(|g| g.as_str().map(String::from)).collect();
        User { name: spec["user"].as_str().unwrap_or_default().to_string(), groups }
    };
    let (allowed, reason) = decide(api, &subject, spec).await?;
    let mut status = json!({"allowed": allowed});
    if !reason.is_empty() {
        status["reason"] = json!(reason);
    }
    Ok(json_response(
        201,
        &json!({
            "kind": kind, "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": null}, "spec": spec, "status": status,
        }),
    ))
}

/// The authoriser's answer for one review spec: (allowed, reason).
async fn decide(api: &Api, user: &User, spec: &Value) -> Result<(bool, String), ApiError> {
    let ra = &spec["resourceAttributes"];
    if ra.is_null() {
        // Non-resource URLs: discovery and health for everyone, the rest for admins.
        let path = spec["nonResourceAttributes"]["path"].as_str().unwrap_or_default();
        let open = ["/api", "/apis", "/version", "/healthz", "/livez", "/readyz", "/openapi"]
            .iter()
            .any(|p| path == *p || path.starts_with(&format!("{p}/")));
        return Ok((user.is_admin() || open, String::new()));
    }
    let s = |k: &str| ra[k].as_str().filter(|v| !v.is_empty());
    let (group, plural) = (s("group").unwrap_or_default(), s("resource").unwrap_or_default());
    let Some(r) = find_resource(group, plural) else {
        return Ok((
            user.is_admin(),
            if user.is_admin() { String::new() } else { format!("no such resource {plural}.{group}") },
        ));
    };
    let fields = FieldSelector::default();
    let attrs = Attrs {
        verb: s("verb").unwrap_or("get"),
        resource: r,
        sub: s("subresource"),
        namespace: s("namespace").filter(|_| r.namespaced),
        name: s("name"),
        fields: &fields,
    };
    match authz::authorize(&api.reg, user, &attrs).await {
        Ok(()) => Ok((true, String::new())),
        Err(e) if e.code == 403 => Ok((false, e.message)),
        Err(e) => Err(e),
    }
}

fn find_resource(group: &str, plural: &str) -> Option<&'static ResourceDef> {
    resources::RESOURCES.iter().find(|r| r.group == group && r.plural == plural)
}
