//! Kubernetes `Status` errors: the one place API failures become HTTP status codes and bodies.

use serde_json::{json, Value};

use crate::store::StoreError;

/// An API error as Kubernetes reports it: code, reason, message and optional details.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

/// One field problem in a 422 Invalid.
#[derive(Debug)]
pub struct Cause {
    pub field: String,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: None }
    }
    fn with(mut self, name: &str, group: &str, kind: &str) -> Self {
        self.details = Some(json!({"name": name, "group": group, "kind": kind}));
        self
    }
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", msg)
    }
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }
    pub fn forbidden(msg: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", msg)
    }
    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        let what = if group.is_empty() { plural.to_string() } else { format!("{plural}.{group}") };
        Self::new(404, "NotFound", format!("{what} \"{name}\" not found")).with(name, group, plural)
    }
    pub fn no_route(path: &str) -> Self {
        Self::new(404, "NotFound", format!("the server could not find the requested resource ({path})"))
    }
    pub fn method_not_allowed(msg: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", msg)
    }
    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        let what = if group.is_empty() { plural.to_string() } else { format!("{plural}.{group}") };
        Self::new(409, "AlreadyExists", format!("{what} \"{name}\" already exists")).with(name, group, plural)
    }
    pub fn conflict(group: &str, plural: &str, name: &str, why: &str) -> Self {
        let what = if group.is_empty() { plural.to_string() } else { format!("{plural}.{group}") };
        Self::new(409, "Conflict", format!("Operation cannot be fulfilled on {what} \"{name}\": {why}"))
            .with(name, group, plural)
    }
    pub fn gone(msg: impl Into<String>) -> Self {
        Self::new(410, "Expired", msg)
    }
    pub fn unsupported_media(msg: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", msg)
    }
    pub fn too_many_requests(msg: impl Into<String>) -> Self {
        Self::new(429, "TooManyRequests", msg)
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(500, "InternalError", msg)
    }
    pub fn timeout(msg: impl Into<String>) -> Self {
        Self::new(504, "Timeout", msg)
    }
    /// 422 naming every invalid field.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> Self {
        let summary: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        let message = format!("{kind} \"{name}\" is invalid: {}", summary.join(", "));
        let causes: Vec<Value> =
            causes.iter().map(|c| json!({"reason": c.kind, "message": c.message, "field": c.field})).collect();
        ApiError {
            code: 422,
            reason: "Invalid",
            message,
            details: Some(json!({"name": name, "group": group, "kind": kind, "causes": causes})),
        }
    }

    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Compacted { .. } => ApiError::gone(format!("too old resource version: {e}")),
            StoreError::FutureRevision { requested, current } => ApiError::timeout(format!(
                "Too large resource version: {requested}, current resource version: {current}"
            )),
            _ => {
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "storage error");
                ApiError::internal(e.to_string())
            }
        }
    }
}

impl Cause {
    pub fn required(field: &str) -> Self {
        Cause { field: field.into(), kind: "FieldValueRequired", message: "Required value".into() }
    }
    pub fn invalid(field: &str, value: &str, why: &str) -> Self {
        Cause { field: field.into(), kind: "FieldValueInvalid", message: format!("Invalid value: \"{value}\": {why}") }
    }
    pub fn forbidden(field: &str, why: &str) -> Self {
        Cause { field: field.into(), kind: "FieldValueForbidden", message: format!("Forbidden: {why}") }
    }
    pub fn duplicate(field: &str, value: &str) -> Self {
        Cause { field: field.into(), kind: "FieldValueDuplicate", message: format!("Duplicate value: \"{value}\"") }
    }
}
