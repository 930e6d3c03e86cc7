//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge patch
//! for the built-in types (list merge keys from the Kubernetes types' patch tags).

use serde_json::{Map, Value};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(PatchType::Apply),
            _ => None,
        }
    }
}

pub fn apply(kind: PatchType, orig: &Value, patch: &Value) -> Result<Value, String> {
    let mut out = orig.clone();
    match kind {
        PatchType::Json => json_patch(&mut out, patch)?,
        PatchType::Merge => merge_patch(&mut out, patch),
        PatchType::Strategic | PatchType::Apply => {
            if !patch.is_object() {
                return Err("strategic merge patch must be a JSON object".into());
            }
            strategic(&mut out, patch, "")
        }
    }
    Ok(out)
}

pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn pointer_parts(p: &str) -> Result<Vec<String>, String> {
    if p.is_empty() {
        return Ok(vec![]);
    }
    let rest = p.strip_prefix('/').ok_or_else(|| format!("invalid JSON pointer \"{p}\""))?;
    Ok(rest.split('/').map(|s| s.replace("~1", "/").replace("~0", "~")).collect())
}

fn parent_mut<'a>(doc: &'a mut Value, parts: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for p in parts {
        cur = match cur {
            Value::Object(m) => m.get_mut(p).ok_or_else(|| format!("path element \"{p}\" not found"))?,
            Value::Array(a) => {
                let i: usize = p.parse().map_err(|_| format!("invalid array index \"{p}\""))?;
                a.get_mut(i).ok_or_else(|| format!("array index {i} out of range"))?
            }
            _ => return Err(format!("cannot descend into \"{p}\"")),
        };
    }
    Ok(cur)
}

fn remove_at(doc: &mut Value, path: &str) -> Result<Value, String> {
    let parts = pointer_parts(path)?;
    let (last, parent) = parts.split_last().ok_or("cannot remove the document root")?;
    match parent_mut(doc, parent)? {
        Value::Object(m) => m.remove(last).ok_or_else(|| format!("unable to remove nonexistent key \"{last}\"")),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| format!("invalid array index \"{last}\""))?;
            if i >= a.len() {
                return Err(format!("array index {i} out of range"));
            }
            Ok(a.remove(i))
        }
        _ => Err(format!("cannot remove \"{path}\"")),
    }
}

fn add_at(doc: &mut Value, path: &str, v: Value) -> Result<(), String> {
    let parts = pointer_parts(path)?;
    let Some((last, parent)) = parts.split_last() else {
        *doc = v;
        return Ok(());
    };
    match parent_mut(doc, parent)? {
        Value::Object(m) => {
            m.insert(last.clone(), v);
            Ok(())
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse().map_err(|_| format!("invalid array index \"{last}\""))?
            };
            if i > a.len() {
                return Err(format!("array index {i} out of range"));
            }
            a.insert(i, v);
            Ok(())
        }
        _ => Err(format!("cannot add at \"{path}\"")),
    }
}

fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), String> {
    let ops = patch.as_array().ok_or("a JSON patch must be an array of operations")?;
    for op in ops {
        let path = op.get("path").and_then(Value::as_str).ok_or("JSON patch operation without a path")?;
        let value = || op.get("value").cloned().ok_or_else(|| format!("operation on \"{path}\" has no value"));
        let from =
            || op.get("from").and_then(Value::as_str).ok_or_else(|| format!("operation on \"{path}\" has no from"));
        match op.get("op").and_then(Value::as_str) {
            Some("add") => add_at(doc, path, value()?)?,
            Some("remove") => {
                remove_at(doc, path)?;
            }
            Some("replace") => {
                remove_at(doc, path)?;
                add_at(doc, path, value()?)?;
            }
            Some("move") => {
                let v = remove_at(doc, from()?)?;
                add_at(doc, path, v)?;
            }
            Some("copy") => {
                let v = doc.pointer(from()?).cloned().ok_or("copy source not found")?;
                add_at(doc, path, v)?;
            }
            Some("test") => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(format!("test operation on \"{path}\" failed"));
                }
            }
            other => return Err(format!("unknown JSON patch operation {other:?}")),
        }
    }
    Ok(())
}

/// The merge key of a list field, by field name and its parent path.
pub fn merge_key(path: &str, field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ports" if path.ends_with("containers") || path.ends_with("Containers") => "containerPort",
        "ports" => "port",
        "conditions" | "addresses" => "type",
        "ownerReferences" => "uid",
        "hostAliases" | "podIPs" => "ip",
        "taints" => "key",
        "topologySpreadConstraints" => "topologyKey",
        _ => return None,
    })
}

fn primitive_merge(field: &str) -> bool {
    field == "finalizers"
}

fn strategic(target: &mut Value, patch: &Value, path: &str) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut r = p.clone();
        r.remove("$patch");
        *target = Value::Object(r);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("object");
    let mut orders = Vec::new();
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            orders.push((field.to_string(), v.clone()));
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(del)) = (t.get_mut(field), v.as_array()) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        let child = format!("{path}/{k}");
        match (t.get_mut(k), v) {
            (Some(cur @ Value::Object(_)), Value::Object(_)) => {
                if v.get("$patch").and_then(Value::as_str) == Some("delete") {
                    t.remove(k);
                } else {
                    strategic(cur, v, &child);
                }
            }
            (Some(Value::Array(cur)), Value::Array(items)) => {
                if let Some(mk) = merge_key(path, k) {
                    merge_list(cur, items, mk, &child);
                } else if primitive_merge(k) {
                    for i in items {
                        if !cur.contains(i) {
                            cur.push(i.clone());
                        }
                    }
                } else {
                    *cur = strip_directives(items);
                }
            }
            (_, Value::Array(items)) => {
                t.insert(k.clone(), Value::Array(strip_directives(items)));
            }
            (_, _) => {
                let mut fresh = Value::Null;
                strategic(&mut fresh, v, &child);
                t.insert(k.clone(), fresh);
            }
        }
    }
    if let Some(keep) = p.get("$retainKeys").and_then(Value::as_array) {
        t.retain(|k, _| keep.iter().any(|x| x.as_str() == Some(k)));
    }
    for (field, order) in orders {
        if let (Some(Value::Array(list)), Some(order)) = (t.get_mut(&field), order.as_array()) {
            reorder(list, order, merge_key(path, &field));
        }
    }
}

fn strip_directives(items: &[Value]) -> Vec<Value> {
    items
        .iter()
        .filter(|i| i.get("$patch").is_none())
        .map(|i| {
            let mut fresh = Value::Null;
            if i.is_object() {
                strategic(&mut fresh, i, "");
                fresh
            } else {
                i.clone()
            }
        })
        .collect()
}

fn merge_list(cur: &mut Vec<Value>, items: &[Value], key: &str, path: &str) {
    if items.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace")) {
        *cur = strip_directives(items);
        return;
    }
    for item in items {
        let id = item.get(key);
        let pos = id.and_then(|id| cur.iter().position(|c| c.get(key) == Some(id)));
        match (item.get("$patch").and_then(Value::as_str), pos) {
            (Some("delete"), Some(i)) => {
                cur.remove(i);
            }
            (Some("delete"), None) => {}
            (_, Some(i)) => strategic(&mut cur[i], item, path),
            (_, None) => {
                let mut fresh = Value::Null;
                strategic(&mut fresh, item, path);
                cur.push(fresh);
            }
        }
    }
}

/// Orders `list` as `order` says (elements not named keep their relative order, after).
fn reorder(list: &mut [Value], order: &[Value], key: Option<&str>) {
    let rank = |v: &Value| {
        order
            .iter()
            .position(|o| match key {
                Some(k) => o.get(k).is_some() && o.get(k) == v.get(k),
                None => o == v,
            })
            .unwrap_or(usize::MAX)
    };
    list.sort_by_key(rank);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_and_merge_patches() {
        let o = json!({"a": {"b": 1, "c": [1, 2]}});
        let p = json!([{"op": "add", "path": "/a/c/-", "value": 3}, {"op": "replace", "path": "/a/b", "value": 5},
                       {"op": "test", "path": "/a/b", "value": 5}, {"op": "remove", "path": "/a/c/0"}]);
        assert_eq!(apply(PatchType::Json, &o, &p).unwrap(), json!({"a": {"b": 5, "c": [2, 3]}}));
        assert!(apply(PatchType::Json, &o, &json!([{"op": "test", "path": "/a/b", "value": 9}])).is_err());
        let m = apply(PatchType::Merge, &o, &json!({"a": {"b": null, "d": "x"}})).unwrap();
        assert_eq!(m, json!({"a": {"c": [1, 2], "d": "x"}}));
    }

    #[test]
    fn strategic_merges_containers_by_name_and_honours_directives() {
        let o = json!({"metadata": {"finalizers": ["a"]}, "spec": {"containers": [
            {"name": "app", "image": "v1", "env": [{"name": "A", "value": "1"}]},
            {"name": "side", "image": "s1"}], "tolerations": [{"key": "x"}]}});
        let p = json!({"metadata": {"finalizers": ["b"]}, "spec": {
            "$setElementOrder/containers": [{"name": "side"}, {"name": "app"}],
            "containers": [{"name": "app", "image": "v2", "env": [{"name": "B", "value": "2"}]},
                           {"name": "gone", "$patch": "delete"}],
            "tolerations": [{"key": "y"}]}});
        let r = apply(PatchType::Strategic, &o, &p).unwrap();
        assert_eq!(r["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(r["spec"]["containers"][0]["name"], "side");
        assert_eq!(r["spec"]["containers"][1]["image"], "v2");
        assert_eq!(r["spec"]["containers"][1]["env"].as_array().unwrap().len(), 2);
        assert_eq!(r["spec"]["tolerations"], json!([{"key": "y"}]));
        let d = apply(
            PatchType::Strategic,
            &r,
            &json!({"spec": {"containers": [{"name": "side", "$patch": "delete"}]},
            "$deleteFromPrimitiveList/finalizers": ["a"], "metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        )
        .unwrap();
        assert_eq!(d["spec"]["containers"].as_array().unwrap().len(), 1);
        assert_eq!(d["metadata"]["finalizers"], json!(["b"]));
        let rk = apply(
            PatchType::Strategic,
            &json!({"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}),
            &json!({"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}),
        )
        .unwrap();
        assert_eq!(rk, json!({"strategy": {"type": "Recreate"}}));
    }
}
