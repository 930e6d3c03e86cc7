//! Authorisation. Admins (`system:masters`) may do anything. Nodes get the Node authoriser's
//! rules: read their own pods and the secrets, configmaps and service accounts those pods
//! reference; write only their own Node, Lease and their pods' status. Every other
//! authenticated user may read discovery and ask SelfSubjectAccessReviews. Service accounts
//! (`system:serviceaccount:NS:NAME`) may read (get, list, watch) everything in their own
//! namespace except Secrets. Nodes may also create TokenReviews and SubjectAccessReviews (their
//! kubelet API checks bearer tokens with them) and tokens for the service accounts of their own
//! pods. Bootstrap-token users (`system:bootstrappers`) and nodes may create and read
//! CertificateSigningRequests. What these rules refuse, a ClusterRoleBinding may still grant
//! (`super::rbac`).

use serde_json::Value;

use super::registry::Registry;
use super::resources::{self, ResourceDef};
use super::selector::FieldSelector;
use super::status::ApiError;
use crate::auth::User;

/// One request's attributes.
pub struct Attrs<'a> {
    pub verb: &'a str,
    pub resource: &'a ResourceDef,
    pub sub: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
    pub fields: &'a FieldSelector,
}

fn deny(user: &User, a: &Attrs) -> ApiError {
    let what = if a.resource.group.is_empty() {
        a.resource.plural.to_string()
    } else {
        format!("{}.{}", a.resource.plural, a.resource.group)
    };
    let what = match a.sub {
        Some(s) => format!("{what}/{s}"),
        None => what,
    };
    let scope = match a.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".into(),
    };
    let name = a.name.map(|n| format!(" \"{n}\"")).unwrap_or_default();
    ApiError::forbidden(format!(
        "{what}{name} is forbidden: User \"{}\" cannot {} resource \"{what}\" in API group \"{}\" {scope}",
        user.name, a.verb, a.resource.group
    ))
}

pub async fn authorize(reg: &Registry, user: &User, a: &Attrs<'_>) -> Result<(), ApiError> {
    if user.is_admin() || builtin(reg, user, a).await? || super::rbac::allows(reg, user, a).await? {
        return Ok(());
    }
    Err(deny(user, a))
}

/// The built-in rules (no RBAC objects).
async fn builtin(reg: &Registry, user: &User, a: &Attrs<'_>) -> Result<bool, ApiError> {
    // Nodes joining with the bootstrap token (and nodes renewing) ask for client certificates.
    let csr_verb = a.resource.kind == "CertificateSigningRequest"
        && a.sub.is_none()
        && matches!(a.verb, "create" | "get" | "list" | "watch");
    if csr_verb && (user.in_group("system:bootstrappers") || user.node_name().is_some()) {
        return Ok(true);
    }
    if a.verb == "create" && a.resource.kind == "SelfSubjectAccessReview" {
        return Ok(true);
    }
    if let Some((ns, _)) = user.service_account() {
        return Ok(service_account_allows(ns, a));
    }
    match user.node_name() {
        Some(node) => node_allows(reg, node, a).await,
        None => Ok(false),
    }
}

/// Read access in the service account's own namespace, Secrets excepted.
fn service_account_allows(ns: &str, a: &Attrs<'_>) -> bool {
    matches!(a.verb, "get" | "list" | "watch")
        && a.resource.namespaced
        && a.namespace == Some(ns)
        && a.resource.kind != "Secret"
        && matches!(a.sub, None | Some("status" | "log"))
}

async fn node_allows(reg: &Registry, node: &str, a: &Attrs<'_>) -> Result<bool, ApiError> {
    let read = matches!(a.verb, "get" | "list" | "watch");
    let own_name = a.name == Some(node);
    Ok(match (a.resource.kind, a.sub) {
        // Creates are checked against the body's name by the router (a node creates only itself).
        ("Node", None) => read || a.verb == "create" || (matches!(a.verb, "update" | "patch") && own_name),
        ("Node", Some("status")) => own_name && matches!(a.verb, "get" | "update" | "patch"),
        ("Lease", None) => {
            a.namespace == Some("kube-node-lease")
                && (a.verb == "create" || own_name)
                && !matches!(a.verb, "list" | "watch")
        }
        ("Pod", None) => match a.verb {
            "list" | "watch" => a.fields.required("spec.nodeName") == Some(node),
            "get" | "delete" => pod_on_node(reg, a, node).await?.is_some(),
            // Mirror pods of the node's static pods; the body is checked by the caller.
            "create" => true,
            _ => false,
        },
        ("Pod", Some("status")) => {
            matches!(a.verb, "get" | "update" | "patch") && pod_on_node(reg, a, node).await?.is_some()
        }
        ("Secret" | "ConfigMap" | "ServiceAccount", None) => {
            let name = match a.verb {
                "get" => a.name,
                "list" | "watch" => a.fields.required("metadata.name"),
                _ => None,
            };
            match (name, a.namespace) {
                (Some(name), Some(ns)) => referenced_by_node(reg, node, a.resource.kind, ns, name).await?,
                _ => false,
            }
        }
        ("Event", None) => matches!(a.verb, "create" | "update" | "patch"),
        ("TokenReview" | "SubjectAccessReview", None) => a.verb == "create",
        // Tokens for the service accounts of the node's pods; bound to such a pod (checked
        // against the request body by `tokenreview::token_request`).
        ("ServiceAccount", Some("token")) => match (a.verb, a.name, a.namespace) {
            ("create", Some(name), Some(ns)) => referenced_by_node(reg, node, "ServiceAccount", ns, name).await?,
            _ => false,
        },
        ("Service" | "Endpoints", None) => read,
        _ => false,
    })
}

async fn pod_on_node(reg: &Registry, a: &Attrs<'_>, node: &str) -> Result<Option<Value>, ApiError> {
    let Some(name) = a.name else { return Ok(None) };
    let pod = reg.get_opt(a.resource, a.namespace, name).await?;
    Ok(pod.filter(|p| p["spec"]["nodeName"].as_str() == Some(node)))
}

/// Whether a pod bound to `node` in `ns` references the object.
async fn referenced_by_node(reg: &Registry, node: &str, kind: &str, ns: &str, name: &str) -> Result<bool, ApiError> {
    let pods = reg.list_all(resources::by_kind("Pod"), Some(ns), None).await?;
    Ok(pods.iter().filter(|p| p["spec"]["nodeName"].as_str() == Some(node)).any(|p| references(p, kind, name)))
}

/// The pod's references to secrets, configmaps and its service account.
pub fn references(pod: &Value, kind: &str, name: &str) -> bool {
    let spec = &pod["spec"];
    if kind == "ServiceAccount" {
        return spec["serviceAccountName"].as_str() == Some(name);
    }
    let mut found = Vec::new();
    let (vol_key, name_key, env_key) = match kind {
        "Secret" => ("secret", "secretName", "secretKeyRef"),
        _ => ("configMap", "name", "configMapKeyRef"),
    };
    let env_from_key = if kind == "Secret" { "secretRef" } else { "configMapRef" };
    for v in spec["volumes"].as_array().into_iter().flatten() {
        found.push(v[vol_key][name_key].clone());
        for src in v["projected"]["sources"].as_array().into_iter().flatten() {
            found.push(src[vol_key]["name"].clone());
        }
    }
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for c in spec[list].as_array().into_iter().flatten() {
            for e in c["env"].as_array().into_iter().flatten() {
                found.push(e["valueFrom"][env_key]["name"].clone());
            }
            for e in c["envFrom"].as_array().into_iter().flatten() {
                found.push(e[env_from_key]["name"].clone());
            }
        }
    }
    if kind == "Secret" {
        for s in spec["imagePullSecrets"].as_array().into_iter().flatten() {
            found.push(s["name"].clone());
        }
    }
    found.iter().any(|f| f.as_str() == Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn service_accounts_read_their_own_namespace_but_not_secrets() {
        let f = FieldSelector::default();
        let at = |verb, kind: &str, ns, sub| Attrs {
            verb,
            resource: resources::by_kind(kind),
            sub,
            namespace: ns,
            name: None,
            fields: &f,
        };
        assert!(service_account_allows("a", &at("list", "Pod", Some("a"), None)));
        assert!(service_account_allows("a", &at("get", "Pod", Some("a"), Some("log"))));
        assert!(!service_account_allows("a", &at("list", "Pod", Some("b"), None)));
        assert!(!service_account_allows("a", &at("delete", "Pod", Some("a"), None)));
        assert!(!service_account_allows("a", &at("get", "Secret", Some("a"), None)));
        assert!(!service_account_allows("a", &at("get", "Node", None, None)));
        assert!(!service_account_allows("a", &at("create", "Pod", Some("a"), Some("exec"))));
    }

    #[test]
    fn pod_references() {
        let p = json!({"spec": {"serviceAccountName": "sa", "volumes": [{"secret": {"secretName": "s1"}}, {"configMap": {"name": "c1"}},
            {"projected": {"sources": [{"secret": {"name": "s2"}}]}}],
            "containers": [{"env": [{"valueFrom": {"configMapKeyRef": {"name": "c2"}}}], "envFrom": [{"secretRef": {"name": "s3"}}]}]}});
        for s in ["s1", "s2", "s3"] {
            assert!(references(&p, "Secret", s), "{s}");
        }
        for c in ["c1", "c2"] {
            assert!(references(&p, "ConfigMap", c), "{c}");
        }
        assert!(!references(&p, "Secret", "c1"));
        assert!(references(&p, "ServiceAccount", "sa"));
    }
}
