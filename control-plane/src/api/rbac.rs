//! RBAC-lite: ClusterRoles and ClusterRoleBindings (`rbac.authorization.k8s.io/v1`, stored like
//! any object) grant users, groups and service accounts what the built-in rules of `authz` do
//! not — e.g. `get` on `nodes/proxy` for a service account that calls kubelet APIs. Rules match
//! as in Kubernetes: verbs, apiGroups and resources (`plural`, `plural/sub`, `*`, `*/sub`,
//! `plural/*`) with optional resourceNames. Roles and RoleBindings (namespaced) are not served.

use serde_json::Value;

use super::authz::Attrs;
use super::registry::Registry;
use super::resources;
use super::status::ApiError;
use crate::auth::User;

/// Whether some ClusterRoleBinding for `user` grants the request.
pub async fn allows(reg: &Registry, user: &User, a: &Attrs<'_>) -> Result<bool, ApiError> {
    let bindings = reg.list_all(resources::by_kind("ClusterRoleBinding"), None, None).await?;
    for b in bindings.iter().filter(|b| b["roleRef"]["kind"] == "ClusterRole" && binds(&b["subjects"], user)) {
        let Some(role) = b["roleRef"]["name"].as_str() else { continue };
        if let Some(role) = reg.get_opt(resources::by_kind("ClusterRole"), None, role).await? {
            if rules_allow(&role["rules"], a) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn binds(subjects: &Value, user: &User) -> bool {
    subjects.as_array().into_iter().flatten().any(|s| {
        let name = s["name"].as_str().unwrap_or_default();
        match s["kind"].as_str() {
            Some("User") => user.name == name,
            Some("Group") => user.in_group(name),
            Some("ServiceAccount") => {
                user.service_account() == Some((s["namespace"].as_str().unwrap_or_default(), name))
            }
            _ => false,
        }
    })
}

fn has(list: &Value, want: &str) -> bool {
    list.as_array().into_iter().flatten().any(|v| v == "*" || v == want)
}

fn rules_allow(rules: &Value, a: &Attrs<'_>) -> bool {
    let plural = a.resource.plural;
    rules.as_array().into_iter().flatten().any(|r| {
        let resource_ok =
            r["resources"].as_array().into_iter().flatten().filter_map(Value::as_str).any(|res| match a.sub {
                None => res == "*" || res == plural,
                Some(sub) => {
                    res == "*"
                        || res == format!("{plural}/{sub}")
                        || res == format!("*/{sub}")
                        || res == format!("{plural}/*")
                }
            });
        let names = r["resourceNames"].as_array().filter(|n| !n.is_empty());
        has(&r["verbs"], a.verb)
            && has(&r["apiGroups"], a.resource.group)
            && resource_ok
            && names.is_none_or(|n| a.name.is_some_and(|name| n.iter().any(|x| x == name)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::selector::FieldSelector;
    use serde_json::json;

    #[test]
    fn rules_and_subjects_match_like_kubernetes() {
        let f = FieldSelector::default();
        let node = resources::by_kind("Node");
        let at = |verb, sub, name| Attrs { verb, resource: node, sub, namespace: None, name, fields: &f };
        let rules =
            json!([{"apiGroups": [""], "resources": ["nodes/proxy", "nodes/stats"], "verbs": ["get", "create"]}]);
        assert!(rules_allow(&rules, &at("get", Some("proxy"), Some("n1"))));
        assert!(!rules_allow(&rules, &at("get", None, Some("n1"))), "the subresource only");
        assert!(!rules_allow(&rules, &at("delete", Some("proxy"), Some("n1"))));
        let named = json!([{"apiGroups": ["*"], "resources": ["nodes/*"], "verbs": ["*"], "resourceNames": ["n2"]}]);
        assert!(!rules_allow(&named, &at("get", Some("proxy"), Some("n1"))));
        assert!(rules_allow(&named, &at("get", Some("metrics"), Some("n2"))));
        let sa = User { name: "system:serviceaccount:d:x".into(), groups: vec!["system:serviceaccounts".into()] };
        assert!(binds(&json!([{"kind": "ServiceAccount", "namespace": "d", "name": "x"}]), &sa));
        assert!(!binds(&json!([{"kind": "ServiceAccount", "namespace": "e", "name": "x"}]), &sa));
        assert!(binds(&json!([{"kind": "Group", "name": "system:serviceaccounts"}]), &sa));
        assert!(!binds(&json!([{"kind": "User", "name": "x"}]), &sa));
    }
}
