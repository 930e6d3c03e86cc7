//! Generic object handling over the store: create, read, list, update (main and status),
//! patch, delete (graceful, finalizers, propagation policy). Objects are JSON values; the
//! resourceVersion is the store revision, set on read and never stored.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};

use super::kinds;
use super::patch::{self, PatchType};
use super::resources::{self, ResourceDef};
use super::selector::{FieldSelector, LabelSelector};
use super::service_ips::{self, ServiceIps};
use super::status::ApiError;
use crate::store::{KeyValue, ListOptions, Rev, Store, StoreError};

/// kube-apiserver's default `--service-cluster-ip-range`.
pub const DEFAULT_SERVICE_RANGE: &str = "10.96.0.0/12";

pub type ApiResult<T> = Result<T, ApiError>;

#[derive(Clone)]
pub struct Registry {
    pub store: Arc<dyn Store>,
    /// ClusterIPs of Services.
    pub service_ips: Arc<ServiceIps>,
}

/// How a write treats fields the type does not know.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

/// What a list asks for.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<Rev>,
}

pub struct ListPage {
    pub items: Vec<Value>,
    pub rev: Rev,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

/// DeleteOptions as sent in the body or query.
#[derive(Clone, Debug, Default)]
pub struct DeleteOpts {
    pub grace_period: Option<i64>,
    pub propagation: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn new_uid() -> String {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("system randomness");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn random_suffix() -> String {
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut b = [0u8; 5];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("system randomness");
    b.iter().map(|x| ALPHA[*x as usize % ALPHA.len()] as char).collect()
}

pub fn decode(kv: &KeyValue) -> ApiResult<Value> {
    let mut v: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored object {} is not JSON: {e}", kv.key)))?;
    v["metadata"]["resourceVersion"] = json!(kv.mod_rev.to_string());
    Ok(v)
}

pub fn encode(v: &Value) -> Bytes {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("selfLink");
    }
    Bytes::from(serde_json::to_vec(&v).expect("JSON values serialise"))
}

pub fn meta_str<'a>(v: &'a Value, field: &str) -> &'a str {
    v["metadata"][field].as_str().unwrap_or_default()
}

fn rv_of(v: &Value) -> Option<Rev> {
    meta_str(v, "resourceVersion").parse().ok()
}

fn continue_token(rev: Rev, key: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json!({"rv": rev, "start": key}).to_string())
}

fn parse_continue(tok: &str) -> ApiResult<(Rev, String)> {
    use base64::Engine as _;
    let bad = || ApiError::bad_request("continue key is not valid");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(tok).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    Ok((v["rv"].as_u64().ok_or_else(bad)?, v["start"].as_str().ok_or_else(bad)?.to_string()))
}

impl Registry {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Registry {
            store,
            service_ips: Arc::new(ServiceIps::parse(DEFAULT_SERVICE_RANGE).expect("the default range parses")),
        }
    }

    /// Services get their ClusterIPs from `cidr`.
    pub fn with_service_range(mut self, cidr: &str) -> Result<Self, String> {
        self.service_ips = Arc::new(ServiceIps::parse(cidr)?);
        Ok(self)
    }

    pub async fn get(&self, r: &ResourceDef, ns: Option<&str>, name: &str) -> ApiResult<Value> {
        match self.store.get(&r.key(ns, name)).await? {
            Some(kv) => decode(&kv),
            None => Err(ApiError::not_found(r.group, r.plural, name)),
        }
    }

    pub async fn get_opt(&self, r: &ResourceDef, ns: Option<&str>, name: &str) -> ApiResult<Option<Value>> {
        match self.get(r, ns, name).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.code == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A page of matching objects; selectors are applied while filling the page.
    pub async fn list(&self, r: &ResourceDef, ns: Option<&str>, q: &ListQuery) -> ApiResult<ListPage> {
        let prefix = r.prefix(ns);
        let (mut at, mut start) = (q.resource_version.filter(|rv| *rv > 0), None);
        if let Some(tok) = &q.continue_token {
            let (rv, key) = parse_continue(tok)?;
            at = Some(rv);
            start = Some(key);
        }
        let mut items = Vec::new();
        let want = q.limit.unwrap_or(usize::MAX);
        let batch = q.limit.map(|l| l.max(100));
        loop {
            let page = match self
                .store
                .list(&prefix, ListOptions { at, start_after: start.clone(), limit: batch })
                .await
            {
                Ok(p) => p,
                Err(StoreError::Compacted { .. }) if q.continue_token.is_some() => {
                    return Err(ApiError::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list."));
                }
                Err(e) => return Err(e.into()),
            };
            at = Some(page.rev);
            let n = page.items.len();
            for (i, kv) in page.items.iter().enumerate() {
                let mut v = decode(kv)?;
                start = Some(kv.key.clone());
                if q.labels.matches_object(&v) && q.fields.matches(&v) {
                    v["metadata"]["resourceVersion"] = json!(kv.mod_rev.to_string());
                    items.push(v);
                    if items.len() == want {
                        let more = page.remaining > 0 || i + 1 < n;
                        let left = page.remaining + (n - i - 1);
                        let tok = more.then(|| continue_token(page.rev, &kv.key));
                        let remaining = (more && q.labels.is_empty() && q.fields.is_empty()).then_some(left);
                        return Ok(ListPage { items, rev: page.rev, continue_token: tok, remaining });
                    }
                }
            }
            if page.remaining == 0 {
                return Ok(ListPage { items, rev: page.rev, continue_token: None, remaining: None });
            }
        }
    }

    /// Every matching object (no paging), for controllers.
    pub async fn list_all(
        &self,
        r: &ResourceDef,
        ns: Option<&str>,
        labels: Option<&LabelSelector>,
    ) -> ApiResult<Vec<Value>> {
        let q = ListQuery { labels: labels.cloned().unwrap_or_default(), ..Default::default() };
        Ok(self.list(r, ns, &q).await?.items)
    }

    /// Fills in identity, defaults, typed round-trip and validation for a new object.
    fn prepare_create(
        &self,
        r: &ResourceDef,
        ns: Option<&str>,
        mut obj: Value,
        fv: FieldValidation,
    ) -> ApiResult<Value> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the request body must be a JSON object"));
        }
        check_type(r, &obj)?;
        obj["kind"] = json!(r.kind);
        obj["apiVersion"] = json!(r.api_version());
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let m = &mut obj["metadata"];
        if r.namespaced {
            let ns = ns.ok_or_else(|| ApiError::bad_request("a namespace is required"))?;
            match m["namespace"].as_str() {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
                _ => m["namespace"] = json!(ns),
            }
        } else if let Some(mm) = m.as_object_mut() {
            mm.remove("namespace");
        }
        if m["name"].as_str().unwrap_or_default().is_empty() {
            if let Some(g) = m["generateName"].as_str().filter(|g| !g.is_empty()) {
                m["name"] = json!(format!("{g}{}", random_suffix()));
            }
        }
        if !meta_str(&obj, "resourceVersion").is_empty() {
            return Err(ApiError::bad_request("resourceVersion should not be set on objects to be created"));
        }
        let m = obj["metadata"].as_object_mut().expect("metadata object");
        m.insert("uid".into(), json!(new_uid()));
        m.insert("creationTimestamp".into(), json!(now()));
        m.remove("deletionTimestamp");
        m.remove("deletionGracePeriodSeconds");
        m.remove("managedFields");
        if kinds::tracks_generation(r.kind) {
            m.insert("generation".into(), json!(1));
        } else {
            m.remove("generation");
        }
        if r.has_status() && r.kind != "Node" {
            if let Some(o) = obj.as_object_mut() {
                o.remove("status");
            }
        }
        kinds::apply_defaults(r.kind, &mut obj);
        let obj = typed(r, obj, fv)?;
        let causes = kinds::validate(r.kind, &obj, None);
        if !causes.is_empty() {
            return Err(ApiError::invalid(r.kind, r.group, meta_str(&obj, "name"), causes));
        }
        Ok(obj)
    }

    pub async fn create(&self, r: &ResourceDef, ns: Option<&str>, obj: Value, fv: FieldValidation) -> ApiResult<Value> {
        let mut obj = self.prepare_create(r, ns, obj, fv)?;
        if r.namespaced {
            self.check_namespace(ns.unwrap_or_default()).await?;
        }
        let name = meta_str(&obj, "name").to_string();
        // Held until the Service is stored, so two creates never pick the same address.
        let _allocating = match r.kind {
            "Service" => {
                let guard = self.service_ips.lock.lock().await;
                let used = service_ips::in_use(&self.list_all(r, None, None).await?);
                self.service_ips
                    .assign(&mut obj, &used)
                    .map_err(|c| ApiError::invalid(r.kind, r.group, &name, vec![c]))?;
                Some(guard)
            }
            _ => None,
        };
        match self.store.create(&r.key(ns, &name), encode(&obj)).await {
            Ok(rev) => {
                obj["metadata"]["resourceVersion"] = json!(rev.to_string());
                Ok(obj)
            }
            Err(StoreError::Exists { .. }) => Err(ApiError::already_exists(r.group, r.plural, &name)),
            Err(e) => Err(e.into()),
        }
    }

    async fn check_namespace(&self, ns: &str) -> ApiResult<()> {
        let nsr = resources::by_kind("Namespace");
        match self.get_opt(nsr, None, ns).await? {
            None => Err(ApiError::not_found("", "namespaces", ns)),
            Some(n) if !n["metadata"]["deletionTimestamp"].is_null() => Err(ApiError::forbidden(format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ))),
            Some(_) => Ok(()),
        }
    }

    /// PUT: replaces the object (or its status with `sub = Some("status")`).
    pub async fn update(
        &self,
        r: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        body: Value,
        sub: Option<&str>,
        fv: FieldValidation,
    ) -> ApiResult<Value> {
        check_type(r, &body)?;
        let body_name = meta_str(&body, "name");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let precondition = rv_of(&body);
        let cur = self.get(r, ns, name).await?;
        if let Some(p) = precondition {
            if Some(p) != rv_of(&cur) {
                return Err(conflict(r, name));
            }
        }
        self.write_update(r, ns, name, cur, body, sub, fv, precondition.is_some()).await
    }

    /// PATCH; retried on write conflicts unless the patch carries a resourceVersion.
    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        r: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        kind: PatchType,
        body: &Value,
        sub: Option<&str>,
        fv: FieldValidation,
    ) -> ApiResult<Value> {
        for _ in 0..16 {
            let cur = self.get(r, ns, name).await?;
            let patched = patch::apply(kind, &cur, body)
                .map_err(|e| ApiError::bad_request(format!("the patch could not be applied: {e}")))?;
            let pinned = rv_of(&patched) != rv_of(&cur);
            if pinned {
                return Err(conflict(r, name));
            }
            match self.write_update(r, ns, name, cur, patched, sub, fv, true).await {
                Err(e) if e.code == 409 && e.reason == "Conflict" && !pinned => continue,
                other => return other,
            }
        }
        Err(ApiError::internal("too many conflicting writes while patching"))
    }

    /// Read-modify-write for controllers: `f` edits the object (returns false for no change).
    pub async fn modify(
        &self,
        r: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        mut f: impl FnMut(&mut Value) -> bool,
    ) -> ApiResult<Value> {
        for _ in 0..16 {
            let cur = self.get(r, ns, name).await?;
            let mut new = cur.clone();
            if !f(&mut new) {
                return Ok(cur);
            }
            match self.write_update(r, ns, name, cur, new, sub, FieldValidation::Ignore, true).await {
                Err(e) if e.code == 409 && e.reason == "Conflict" => continue,
                other => return other,
            }
        }
        Err(ApiError::internal("too many conflicting writes"))
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_update(
        &self,
        r: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        cur: Value,
        body: Value,
        sub: Option<&str>,
        fv: FieldValidation,
        cas: bool,
    ) -> ApiResult<Value> {
        let cur_rev = rv_of(&cur).unwrap_or(0);
        let mut new = match sub {
            Some("status") => {
                let mut n = cur.clone();
                n["status"] = body.get("status").cloned().unwrap_or(Value::Null);
                n
            }
            _ => {
                let mut n = body;
                if !n.is_object() {
                    return Err(ApiError::bad_request("the request body must be a JSON object"));
                }
                // "binding" (internal: spec.nodeName with the PodScheduled condition) writes both.
                if r.has_status() && sub != Some("binding") {
                    n["status"] = cur.get("status").cloned().unwrap_or(Value::Null);
                }
                n
            }
        };
        new["kind"] = json!(r.kind);
        new["apiVersion"] = json!(r.api_version());
        if !new["metadata"].is_object() {
            new["metadata"] = json!({});
        }
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "namespace",
            "name",
        ] {
            match cur["metadata"].get(f) {
                Some(v) => new["metadata"][f] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(f);
                    }
                }
            }
        }
        if new["metadata"]["deletionTimestamp"].is_null() {
            if let Some(m) = new["metadata"].as_object_mut() {
                m.remove("deletionTimestamp");
            }
        }
        kinds::apply_defaults(r.kind, &mut new);
        let mut new = typed(r, new, fv)?;
        if kinds::tracks_generation(r.kind) && new.get("spec") != cur.get("spec") {
            let g = cur["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            new["metadata"]["generation"] = json!(g);
        }
        let mut causes = kinds::validate(r.kind, &new, Some(&cur));
        if r.kind == "Service" {
            causes.extend(service_ips::keep_on_update(&mut new, &cur));
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(r.kind, r.group, name, causes));
        }
        new["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
        if new == cur {
            return Ok(cur);
        }
        let key = r.key(ns, name);
        if finalized(r, &new) {
            return match self.store.delete(&key, Some(cur_rev)).await {
                Ok((rev, _)) => {
                    new["metadata"]["resourceVersion"] = json!(rev.to_string());
                    Ok(new)
                }
                Err(StoreError::Conflict { .. }) => Err(conflict(r, name)),
                Err(StoreError::NotFound { .. }) => Err(ApiError::not_found(r.group, r.plural, name)),
                Err(e) => Err(e.into()),
            };
        }
        match self.store.update(&key, encode(&new), cas.then_some(cur_rev)).await {
            Ok(rev) => {
                new["metadata"]["resourceVersion"] = json!(rev.to_string());
                Ok(new)
            }
            Err(StoreError::Conflict { .. }) => Err(conflict(r, name)),
            Err(StoreError::NotFound { .. }) => Err(ApiError::not_found(r.group, r.plural, name)),
            Err(e) => Err(e.into()),
        }
    }

    /// DELETE. Returns the object as last seen (with deletionTimestamp when deletion waits for
    /// finalizers or a node) and whether it is gone from the store.
    pub async fn delete(
        &self,
        r: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOpts,
    ) -> ApiResult<(Value, bool)> {
        for _ in 0..16 {
            let cur = self.get(r, ns, name).await?;
            if opts.uid.as_deref().is_some_and(|u| u != meta_str(&cur, "uid")) {
                return Err(ApiError::conflict(
                    r.group,
                    r.plural,
                    name,
                    "Precondition failed: UID in precondition does not match the UID in record",
                ));
            }
            if opts.resource_version.as_deref().is_some_and(|v| v != meta_str(&cur, "resourceVersion")) {
                return Err(ApiError::conflict(
                    r.group,
                    r.plural,
                    name,
                    "Precondition failed: ResourceVersion in precondition does not match",
                ));
            }
            let rev = rv_of(&cur).unwrap_or(0);
            let mut new = cur.clone();
            let mut finalizers: Vec<Value> = cur["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
            match opts.propagation.as_deref() {
                Some("Orphan") => add_finalizer(&mut finalizers, "orphan"),
                Some("Foreground") => add_finalizer(&mut finalizers, "foregroundDeletion"),
                _ => {}
            }
            let grace = self.grace_period(r, &cur, opts);
            // Namespaces wait for their spec finalizers (the namespace controller empties them).
            let ns_finalizers =
                r.kind == "Namespace" && cur["spec"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
            if ns_finalizers {
                new["status"]["phase"] = json!("Terminating");
            }
            let already = !cur["metadata"]["deletionTimestamp"].is_null();
            let wait = !finalizers.is_empty() || grace > 0 || ns_finalizers;
            if wait {
                let old_grace = cur["metadata"]["deletionGracePeriodSeconds"].as_i64();
                if already
                    && old_grace.is_none_or(|g| g <= grace)
                    && finalizers == cur["metadata"]["finalizers"].as_array().cloned().unwrap_or_default()
                {
                    return Ok((cur, false));
                }
                let when = chrono::Utc::now() + chrono::Duration::seconds(grace);
                if !already || old_grace.is_some_and(|g| grace < g) {
                    new["metadata"]["deletionTimestamp"] =
                        json!(when.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                    new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                }
                new["metadata"]["finalizers"] = json!(finalizers);
                if new["metadata"]["finalizers"] == json!([]) {
                    new["metadata"].as_object_mut().map(|m| m.remove("finalizers"));
                }
                match self.store.update(&r.key(ns, name), encode(&new), Some(rev)).await {
                    Ok(rev) => {
                        new["metadata"]["resourceVersion"] = json!(rev.to_string());
                        return Ok((new, false));
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            return match self.store.delete(&r.key(ns, name), Some(rev)).await {
                Ok((rev, _)) => {
                    new["metadata"]["resourceVersion"] = json!(rev.to_string());
                    Ok((new, true))
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound { .. }) => Err(ApiError::not_found(r.group, r.plural, name)),
                Err(e) => Err(e.into()),
            };
        }
        Err(ApiError::internal("too many conflicting writes while deleting"))
    }

    /// Pods bound to a node terminate gracefully (the node deletes them with grace 0).
    fn grace_period(&self, r: &ResourceDef, cur: &Value, opts: &DeleteOpts) -> i64 {
        if r.kind != "Pod" {
            return 0;
        }
        let phase = cur["status"]["phase"].as_str().unwrap_or_default();
        if cur["spec"]["nodeName"].as_str().unwrap_or_default().is_empty() || phase == "Succeeded" || phase == "Failed"
        {
            return 0;
        }
        opts.grace_period.unwrap_or_else(|| cur["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(30)).max(0)
    }
}

fn add_finalizer(list: &mut Vec<Value>, f: &str) {
    if !list.iter().any(|x| x == f) {
        list.push(json!(f));
    }
}

/// A terminating object whose last finalizer is gone is deleted (pods wait for their node).
fn finalized(r: &ResourceDef, v: &Value) -> bool {
    let m = &v["metadata"];
    !m["deletionTimestamp"].is_null()
        && m["finalizers"].as_array().is_none_or(Vec::is_empty)
        && (r.kind != "Pod" || m["deletionGracePeriodSeconds"].as_i64().unwrap_or(0) == 0)
        && (r.kind != "Namespace" || v["spec"]["finalizers"].as_array().is_none_or(Vec::is_empty))
}

fn conflict(r: &ResourceDef, name: &str) -> ApiError {
    ApiError::conflict(
        r.group,
        r.plural,
        name,
        "the object has been modified; please apply your changes to the latest version and try again",
    )
}

fn check_type(r: &ResourceDef, obj: &Value) -> ApiResult<()> {
    let kind = obj["kind"].as_str().unwrap_or_default();
    let av = obj["apiVersion"].as_str().unwrap_or_default();
    if (!kind.is_empty() && kind != r.kind) || (!av.is_empty() && av != r.api_version()) {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({}) or kind {kind} is not {}",
            r.api_version(),
            r.kind
        )));
    }
    Ok(())
}

fn typed(r: &ResourceDef, obj: Value, fv: FieldValidation) -> ApiResult<Value> {
    let mut t = kinds::roundtrip(r.kind, &obj).map_err(|e| kinds::decode_error(r.kind, &e))?;
    if fv == FieldValidation::Strict {
        let mut unknown = Vec::new();
        kinds::unknown_fields(&obj, &t, "", &mut unknown);
        if !unknown.is_empty() {
            let list: Vec<String> = unknown.iter().map(|u| format!("unknown field \"{u}\"")).collect();
            return Err(ApiError::bad_request(format!("strict decoding error: {}", list.join(", "))));
        }
    }
    // The round-trip drops a null resourceVersion/status; keep what the store needs.
    if let Some(rv) = obj["metadata"].get("resourceVersion") {
        t["metadata"]["resourceVersion"] = rv.clone();
    }
    Ok(t)
}
