//! The Kubernetes REST API: routing, authentication and authorisation per request, content
//! negotiation (JSON, Tables, aggregated discovery) and the verbs on every resource.

pub mod authz;
pub mod discovery;
pub mod kinds;
pub mod patch;
pub mod protobuf;
pub mod proxy;
pub mod rbac;
pub mod registry;
pub mod resources;
pub mod selector;
pub mod service_ips;
pub mod status;
mod subresources;
pub mod table;
pub mod tokenreview;
mod watch;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use serde_json::{json, Value};

use crate::auth::{Authenticator, User};
use registry::{DeleteOpts, FieldValidation, ListQuery, Registry};
use resources::ResourceDef;
use selector::{FieldSelector, LabelSelector};
use status::ApiError;

pub type Body = BoxBody<Bytes, Infallible>;

/// Largest request body accepted (kube-apiserver's limit).
const MAX_BODY: usize = 3 * 1024 * 1024;

pub struct Api {
    pub reg: Registry,
    pub authn: Authenticator,
    /// host:port clients reach us at (for /api's serverAddressByClientCIDRs).
    pub server_addr: String,
    pub bookmark_every: Duration,
    /// Reaches node agents for logs/exec/attach/port-forward and nodes/proxy.
    pub kubelet: crate::kubelet::KubeletClient,
    /// Signs and verifies service-account tokens.
    pub tokens: crate::tokens::TokenSigner,
}

/// A parsed resource request.
struct Target {
    r: &'static ResourceDef,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

pub struct Req {
    method: Method,
    path: String,
    query: HashMap<String, String>,
    accept: String,
    content_type: String,
    body: Bytes,
}

pub fn json_response(code: u16, v: &Value) -> Response<Body> {
    json_typed(code, v, "application/json")
}

fn json_typed(code: u16, v: &Value, ct: &str) -> Response<Body> {
    let body = serde_json::to_vec(v).expect("JSON values serialise");
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, ct)
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("valid response")
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

fn segments(path: &str) -> Vec<String> {
    path.split('/').filter(|s| !s.is_empty()).map(percent_decode).collect()
}

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Splits `[api, v1, ...]` / `[apis, g, v, ...]` into (group, version, rest).
fn group_version(seg: &[String]) -> Option<(&str, &str, &[String])> {
    match seg.first().map(String::as_str) {
        Some("api") if seg.len() >= 2 => Some(("", seg[1].as_str(), &seg[2..])),
        Some("apis") if seg.len() >= 3 => Some((seg[1].as_str(), seg[2].as_str(), &seg[3..])),
        _ => None,
    }
}

fn parse_target(group: &str, version: &str, rest: &[String]) -> Option<Target> {
    let namespaced_path =
        rest.len() >= 3 && rest[0] == "namespaces" && !matches!(rest[2].as_str(), "status" | "finalize");
    let (ns, rest) = if namespaced_path { (Some(rest[1].clone()), &rest[2..]) } else { (None, rest) };
    let r = resources::find(group, version, rest.first()?)?;
    if namespaced_path && !r.namespaced {
        return None;
    }
    if rest.len() > 3 {
        return None;
    }
    Some(Target { r, ns, name: rest.get(1).cloned(), sub: rest.get(2).cloned() })
}

fn verb_for(method: &Method, t: &Target, watch: bool) -> &'static str {
    match (method.as_str(), t.name.is_some()) {
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("GET", true) if watch => "watch",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", false) => "deletecollection",
        ("DELETE", true) => "delete",
        _ => "unknown",
    }
}

impl Api {
    /// Serves one request. `cert` is the verified client certificate, if any.
    pub async fn handle<B>(self: Arc<Self>, req: Request<B>, cert: Option<Vec<u8>>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = std::time::Instant::now();
        let user = self
            .authenticate(cert.as_deref(), req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()))
            .await;
        if let Some(t) = proxy::match_path(req.uri().path()) {
            let (method, path) = (req.method().clone(), req.uri().path().to_string());
            let resp = proxy::handle(&self, req, t, user.as_ref()).await.unwrap_or_else(|e| error_response(&e));
            tracing::debug!(%method, %path, user = user.as_ref().map(|u| u.name.as_str()), status = resp.status().as_u16(), ms = started.elapsed().as_millis() as u64, "proxied request");
            return resp;
        }
        let (parts, body) = req.into_parts();
        let h =
            |n: header::HeaderName| parts.headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return error_response(&ApiError {
                    code: 413,
                    reason: "RequestEntityTooLarge",
                    message: format!("request body: {e}"),
                    details: None,
                })
            }
        };
        let req = Req {
            method: parts.method.clone(),
            path: parts.uri.path().to_string(),
            query: parts
                .uri
                .query()
                .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
            accept: h(header::ACCEPT),
            content_type: h(header::CONTENT_TYPE),
            body,
        };
        let resp = match self.route(&req, user.as_ref()).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
        tracing::debug!(method = %req.method, path = %req.path, content_type = %req.content_type, accept = %req.accept, user = user.as_ref().map(|u| u.name.as_str()), status = resp.status().as_u16(), ms = started.elapsed().as_millis() as u64, "request");
        resp
    }

    /// Client certificate or bootstrap token first, then a service-account token.
    async fn authenticate(&self, cert: Option<&[u8]>, authorization: Option<&str>) -> Option<User> {
        if let Some(u) = self.authn.authenticate(cert, authorization) {
            return Some(u);
        }
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        if !crate::tokens::looks_like_jwt(token) {
            return None;
        }
        tokenreview::authenticate_bearer(self, token).await
    }

    async fn route(&self, req: &Req, user: Option<&User>) -> Result<Response<Body>, ApiError> {
        let seg = segments(&req.path);
        let s: Vec<&str> = seg.iter().map(String::as_str).collect();
        match s.as_slice() {
            ["healthz" | "livez" | "readyz", ..] => {
                return Ok(Response::builder()
                    .status(200)
                    .header(header::CONTENT_TYPE, "text/plain")
                    .body(Full::new(Bytes::from_static(b"ok")).boxed())
                    .expect("valid response"))
            }
            ["version"] => return Ok(json_response(200, &discovery::version())),
            _ => {}
        }
        let user = user.ok_or_else(ApiError::unauthorized)?;
        if req.method == Method::GET {
            let agg = discovery::wants_aggregated(&req.accept);
            match s.as_slice() {
                ["api"] if agg => return Ok(json_typed(200, &discovery::aggregated(true), discovery::AGGREGATED_V2)),
                ["apis"] if agg => return Ok(json_typed(200, &discovery::aggregated(false), discovery::AGGREGATED_V2)),
                ["api"] => return Ok(json_response(200, &discovery::api_versions(&self.server_addr))),
                ["apis"] => return Ok(json_response(200, &discovery::api_group_list())),
                ["apis", g] => {
                    return discovery::api_group(g)
                        .map(|v| json_response(200, &v))
                        .ok_or_else(|| ApiError::no_route(&req.path))
                }
                ["api", v] => {
                    return discovery::resource_list("", v)
                        .map(|v| json_response(200, &v))
                        .ok_or_else(|| ApiError::no_route(&req.path))
                }
                ["apis", g, v] => {
                    return discovery::resource_list(g, v)
                        .map(|v| json_response(200, &v))
                        .ok_or_else(|| ApiError::no_route(&req.path))
                }
                ["openapi", "v3"] => return Ok(json_response(200, &discovery::openapi_v3_root())),
                ["openapi", "v3", "api", v] => {
                    return discovery::openapi_v3("", v)
                        .map(|v| json_response(200, &v))
                        .ok_or_else(|| ApiError::no_route(&req.path))
                }
                ["openapi", "v3", "apis", g, v] => {
                    return discovery::openapi_v3(g, v)
                        .map(|v| json_response(200, &v))
                        .ok_or_else(|| ApiError::no_route(&req.path))
                }
                _ => {}
            }
        }
        let (legacy_watch, seg) = match seg.first().map(String::as_str) {
            Some("api" | "apis")
                if seg.get(if seg[0] == "api" { 2 } else { 3 }).map(String::as_str) == Some("watch") =>
            {
                let i = if seg[0] == "api" { 2 } else { 3 };
                let mut s = seg.clone();
                s.remove(i);
                (true, s)
            }
            _ => (false, seg),
        };
        let (g, v, rest) = group_version(&seg).ok_or_else(|| ApiError::no_route(&req.path))?;
        let t = parse_target(g, v, rest).ok_or_else(|| ApiError::no_route(&req.path))?;
        let watch = legacy_watch || matches!(req.query.get("watch").map(String::as_str), Some("true" | "1"));
        let verb = verb_for(&req.method, &t, watch);
        let fields = FieldSelector::parse(req.query.get("fieldSelector").map(String::as_str).unwrap_or_default())
            .map_err(ApiError::bad_request)?;
        let attrs = authz::Attrs {
            verb,
            resource: t.r,
            sub: t.sub.as_deref(),
            namespace: t.ns.as_deref(),
            name: t.name.as_deref(),
            fields: &fields,
        };
        authz::authorize(&self.reg, user, &attrs).await?;
        if verb == "create" && t.sub.is_none() && !user.is_admin() && t.r.kind == "Pod" {
            if let Some(node) = user.node_name() {
                // A node may create only mirror pods of its own static pods (as NodeRestriction).
                let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
                let mirror = body["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string();
                if !mirror || body["spec"]["nodeName"].as_str() != Some(node) {
                    return Err(ApiError::forbidden(format!(
                        "node \"{node}\" may only create mirror pods bound to itself"
                    )));
                }
            }
        } else if verb == "create"
            && t.sub.is_none()
            && !user.is_admin()
            && !t.r.is_virtual()
            && !matches!(t.r.kind, "Event" | "CertificateSigningRequest")
        {
            if let Some(node) = user.node_name() {
                // A node may create only its own Node (and its own Lease); events about its
                // pods carry generated names.
                let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
                if registry::meta_str(&body, "name") != node {
                    return Err(ApiError::forbidden(format!("node \"{node}\" may only create its own {}", t.r.kind)));
                }
            }
        }
        self.dispatch(req, &t, verb, fields, user).await
    }

    async fn dispatch(
        &self,
        req: &Req,
        t: &Target,
        verb: &str,
        fields: FieldSelector,
        user: &User,
    ) -> Result<Response<Body>, ApiError> {
        let (r, ns, name) = (t.r, t.ns.as_deref(), t.name.as_deref());
        if r.namespaced && ns.is_none() && !matches!(verb, "list" | "watch") {
            return Err(ApiError::no_route(&req.path));
        }
        match (verb, r.kind, t.sub.as_deref()) {
            ("create", "ServiceAccount", Some("token")) => {
                return tokenreview::token_request(self, req, ns.unwrap_or_default(), name.unwrap_or_default(), user)
                    .await
            }
            ("create", "TokenReview", None) => return tokenreview::token_review(self, req).await,
            ("create", "SubjectAccessReview" | "SelfSubjectAccessReview", None) => {
                return tokenreview::access_review(self, req, user, r.kind).await
            }
            (_, "TokenReview" | "SubjectAccessReview" | "SelfSubjectAccessReview", _) => {
                return Err(ApiError::method_not_allowed(format!("{} supports create only", r.plural)))
            }
            _ => {}
        }
        if let Some(sub) = t.sub.as_deref() {
            if sub != "status" {
                return subresources::handle(self, req, r, ns, name.unwrap_or_default(), sub).await;
            }
        }
        let fv = match req.query.get("fieldValidation").map(String::as_str) {
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            _ => FieldValidation::Warn,
        };
        let dry_run = req.query.contains_key("dryRun");
        if dry_run && verb != "create" {
            return Err(ApiError::bad_request("dryRun is supported for create only"));
        }
        match verb {
            "get" => {
                let obj = self.reg.get(r, ns, name.unwrap_or_default()).await?;
                Ok(self.render_one(req, r, obj, 200))
            }
            "list" => self.list(req, r, ns, fields).await,
            "watch" => self.watch(req, r, ns, name, fields).await,
            "create" => {
                let mut body = parse_body(&req.body)?;
                if r.kind == "CertificateSigningRequest" {
                    // Who asked is recorded by the server, never taken from the body.
                    body["spec"]["username"] = json!(user.name);
                    body["spec"]["groups"] = json!(user.groups);
                    if let Some(s) = body["spec"].as_object_mut() {
                        s.remove("uid");
                        s.remove("extra");
                    }
                }
                if dry_run {
                    return Err(ApiError::bad_request("dryRun create is not supported yet"));
                }
                let obj = self.reg.create(r, ns, body, fv).await?;
                Ok(self.render_one(req, r, obj, 201))
            }
            "update" => {
                let body = parse_body(&req.body)?;
                let obj = self.reg.update(r, ns, name.unwrap_or_default(), body, t.sub.as_deref(), fv).await?;
                Ok(self.render_one(req, r, obj, 200))
            }
            "patch" => {
                let kind = patch::PatchType::from_content_type(&req.content_type)
                    .ok_or_else(|| ApiError::unsupported_media(format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {})", req.content_type)))?;
                if kind == patch::PatchType::Apply {
                    return Err(ApiError::unsupported_media(
                        "server-side apply is not supported yet; use client-side kubectl apply",
                    ));
                }
                let body = parse_body(&req.body)?;
                let obj = self.reg.patch(r, ns, name.unwrap_or_default(), kind, &body, t.sub.as_deref(), fv).await?;
                Ok(self.render_one(req, r, obj, 200))
            }
            "delete" => {
                let opts = delete_opts(req)?;
                let (obj, _gone) = self.reg.delete(r, ns, name.unwrap_or_default(), &opts).await?;
                Ok(self.render_one(req, r, obj, 200))
            }
            "deletecollection" => {
                let opts = delete_opts(req)?;
                let q = list_query(req, fields)?;
                let items = self.reg.list(r, ns, &ListQuery { limit: None, continue_token: None, ..q }).await?.items;
                let mut deleted = Vec::new();
                for o in items {
                    let (n, ons) = (
                        registry::meta_str(&o, "name").to_string(),
                        o["metadata"]["namespace"].as_str().map(String::from),
                    );
                    match self.reg.delete(r, ons.as_deref(), &n, &opts).await {
                        Ok((obj, _)) => deleted.push(obj),
                        Err(e) if e.code == 404 => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(json_response(
                    200,
                    &json!({"kind": format!("{}List", r.kind), "apiVersion": r.api_version(), "metadata": {}, "items": deleted}),
                ))
            }
            _ => Err(ApiError::method_not_allowed(format!("{} is not supported here", req.method))),
        }
    }

    fn render_one(&self, req: &Req, r: &ResourceDef, obj: Value, code: u16) -> Response<Body> {
        if wants_table(&req.accept) {
            let rv = obj["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string();
            let inc = req.query.get("includeObject").map(String::as_str).unwrap_or("Metadata");
            return json_response(code, &table::table(r.kind, &[obj], &rv, None, inc, true));
        }
        json_response(code, &obj)
    }

    async fn list(
        &self,
        req: &Req,
        r: &'static ResourceDef,
        ns: Option<&str>,
        fields: FieldSelector,
    ) -> Result<Response<Body>, ApiError> {
        let q = list_query(req, fields)?;
        let page = self.reg.list(r, ns, &q).await?;
        let rv = page.rev.to_string();
        if wants_table(&req.accept) {
            let inc = req.query.get("includeObject").map(String::as_str).unwrap_or("Metadata");
            let mut t = table::table(r.kind, &page.items, &rv, page.continue_token.as_deref(), inc, true);
            if let Some(n) = page.remaining {
                t["metadata"]["remainingItemCount"] = json!(n);
            }
            return Ok(json_response(200, &t));
        }
        let mut meta = json!({"resourceVersion": rv});
        if let Some(c) = &page.continue_token {
            meta["continue"] = json!(c);
        }
        if let Some(n) = page.remaining {
            meta["remainingItemCount"] = json!(n);
        }
        // The items are moved in: json!() would serialise a second copy of a large list.
        let mut list = json!({"kind": format!("{}List", r.kind), "apiVersion": r.api_version(), "metadata": meta});
        list["items"] = Value::Array(page.items);
        Ok(json_response(200, &list))
    }

    async fn watch(
        &self,
        req: &Req,
        r: &'static ResourceDef,
        ns: Option<&str>,
        name: Option<&str>,
        mut fields: FieldSelector,
    ) -> Result<Response<Body>, ApiError> {
        if let Some(n) = name {
            fields = FieldSelector::parse(&format!("metadata.name={n}")).map_err(ApiError::bad_request)?;
        }
        let q = list_query(req, fields)?;
        let rv = req.query.get("resourceVersion").map(String::as_str).unwrap_or_default();
        let since = match rv {
            "" | "0" => None,
            v => Some(v.parse().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))?),
        };
        let timeout = req
            .query
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(1800));
        let p = watch::WatchParams {
            query: ListQuery { limit: None, continue_token: None, resource_version: None, ..q },
            since,
            bookmarks: req.query.get("allowWatchBookmarks").is_some_and(|v| v == "true"),
            bookmark_every: self.bookmark_every,
            timeout,
            initial_events_end: req.query.get("sendInitialEvents").is_some_and(|v| v == "true"),
            as_table: wants_table(&req.accept)
                .then(|| req.query.get("includeObject").cloned().unwrap_or_else(|| "Metadata".into())),
        };
        let rx = watch::start(&self.reg, r, ns.map(String::from), p).await?;
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, Infallible>(hyper::body::Frame::data(b)), rx))
        });
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .expect("valid response"))
    }
}

fn wants_table(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|a| a.contains("as=Table"))
}

fn parse_body(b: &Bytes) -> Result<Value, ApiError> {
    if b.starts_with(protobuf::MAGIC) {
        return protobuf::decode(b).map_err(ApiError::unsupported_media);
    }
    serde_json::from_slice(b).map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

fn list_query(req: &Req, fields: FieldSelector) -> Result<ListQuery, ApiError> {
    let labels = LabelSelector::parse(req.query.get("labelSelector").map(String::as_str).unwrap_or_default())
        .map_err(ApiError::bad_request)?;
    let limit = match req.query.get("limit").map(|l| l.parse::<usize>()) {
        Some(Ok(0)) | None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return Err(ApiError::bad_request("limit must be a non-negative integer")),
    };
    let resource_version = match req.query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(v) if req.query.get("resourceVersionMatch").map(String::as_str) == Some("Exact") => {
            Some(v.parse().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))?)
        }
        Some(_) => None,
    };
    Ok(ListQuery {
        labels,
        fields,
        limit,
        continue_token: req.query.get("continue").filter(|c| !c.is_empty()).cloned(),
        resource_version,
    })
}

fn delete_opts(req: &Req) -> Result<DeleteOpts, ApiError> {
    let body: Value = if req.body.is_empty() { Value::Null } else { parse_body(&req.body)? };
    let mut o = DeleteOpts {
        grace_period: body["gracePeriodSeconds"].as_i64(),
        propagation: body["propagationPolicy"].as_str().map(String::from),
        uid: body["preconditions"]["uid"].as_str().map(String::from),
        resource_version: body["preconditions"]["resourceVersion"].as_str().map(String::from),
    };
    if body["orphanDependents"] == json!(true) {
        o.propagation = Some("Orphan".into());
    }
    if let Some(g) = req.query.get("gracePeriodSeconds") {
        o.grace_period = Some(g.parse().map_err(|_| ApiError::bad_request("gracePeriodSeconds must be an integer"))?);
    }
    if let Some(p) = req.query.get("propagationPolicy") {
        o.propagation = Some(p.clone());
    }
    Ok(o)
}
