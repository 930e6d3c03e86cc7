//! Label selectors (the query syntax and `metav1.LabelSelector`) and field selectors.

use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector(pub Vec<Req>);

impl LabelSelector {
    /// Parses `a=b,c!=d,e in (x,y),f notin (z),g,!h`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in split_top(s) {
            let p = part.trim();
            if p.is_empty() {
                continue;
            }
            let req = if let Some(k) = p.strip_prefix('!') {
                Req::NotExists(check_key(k.trim())?)
            } else if let Some((k, v)) = p.split_once("!=") {
                Req::Ne(check_key(k.trim())?, v.trim().into())
            } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                Req::Eq(check_key(k.trim())?, v.trim().into())
            } else if let Some((k, vs)) = split_set(p, " notin ") {
                Req::NotIn(check_key(&k)?, vs)
            } else if let Some((k, vs)) = split_set(p, " in ") {
                Req::In(check_key(&k)?, vs)
            } else {
                Req::Exists(check_key(p)?)
            };
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// From a `metav1.LabelSelector` JSON value (matchLabels + matchExpressions). A null
    /// selector matches nothing (as Kubernetes treats it for controllers), an empty one everything.
    pub fn from_value(v: &Value) -> Result<Option<Self>, String> {
        if v.is_null() {
            return Ok(None);
        }
        let mut reqs = Vec::new();
        if let Some(m) = v.get("matchLabels").and_then(Value::as_object) {
            for (k, val) in m {
                reqs.push(Req::Eq(k.clone(), val.as_str().unwrap_or_default().into()));
            }
        }
        for e in v.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
            let key = e.get("key").and_then(Value::as_str).unwrap_or_default().to_string();
            let vals: Vec<String> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(String::from))
                .collect();
            reqs.push(match e.get("operator").and_then(Value::as_str) {
                Some("In") => Req::In(key, vals),
                Some("NotIn") => Req::NotIn(key, vals),
                Some("Exists") => Req::Exists(key),
                Some("DoesNotExist") => Req::NotExists(key),
                other => return Err(format!("{other:?} is not a valid label selector operator")),
            });
        }
        Ok(Some(LabelSelector(reqs)))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => labels.get(k) == Some(v),
            Req::Ne(k, v) => labels.get(k) != Some(v),
            Req::In(k, vs) => labels.get(k).is_some_and(|x| vs.contains(x)),
            Req::NotIn(k, vs) => labels.get(k).is_none_or(|x| !vs.contains(x)),
            Req::Exists(k) => labels.contains_key(k),
            Req::NotExists(k) => !labels.contains_key(k),
        })
    }

    pub fn matches_object(&self, obj: &Value) -> bool {
        self.0.is_empty() || self.matches(&labels_of(obj))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
        .unwrap_or_default()
}

fn check_key(k: &str) -> Result<String, String> {
    let ok = !k.is_empty()
        && k.len() <= 317
        && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && k.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(k.to_string())
    } else {
        Err(format!("invalid label key \"{k}\""))
    }
}

fn split_set(p: &str, op: &str) -> Option<(String, Vec<String>)> {
    let (k, rest) = p.split_once(op)?;
    let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some((k.trim().to_string(), inner.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()))
}

/// Splits on commas outside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// A field selector: `path=value` / `path==value` / `path!=value`, comma-separated. Paths are
/// dotted JSON paths (`spec.nodeName`, `metadata.name`, `status.phase`, `involvedObject.uid`).
#[derive(Clone, Debug, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (path, eq, val) = if let Some((k, v)) = p.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                (k, true, v)
            } else {
                return Err(format!("invalid field selector \"{p}\": expected key=value or key!=value"));
            };
            out.push((path.trim().to_string(), eq, val.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, eq, want)| (field_value(obj, path) == *want) == *eq)
    }

    /// The value this selector requires for `path` with `=`, if any.
    pub fn required(&self, path: &str) -> Option<&str> {
        self.0.iter().find(|(p, eq, _)| p == path && *eq).map(|(_, _, v)| v.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The string form of a dotted path (missing fields are "", as Kubernetes' field sets have them).
pub fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for seg in path.split('.') {
        match cur.get(seg) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selector_syntax() {
        let s = LabelSelector::parse("app=web, tier!=db,env in (prod, staging),!legacy,track").unwrap();
        assert_eq!(s.0.len(), 5);
        let obj = json!({"metadata": {"labels": {"app": "web", "env": "prod", "track": "x"}}});
        assert!(s.matches_object(&obj));
        let obj2 = json!({"metadata": {"labels": {"app": "web", "env": "dev", "track": "x"}}});
        assert!(!s.matches_object(&obj2));
        assert!(LabelSelector::parse("app notin (a,b)").unwrap().matches_object(&obj));
        assert!(LabelSelector::parse("=x").is_err());
    }

    #[test]
    fn metav1_selector_and_field_selector() {
        let sel = json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "env", "operator": "Exists"}]});
        let s = LabelSelector::from_value(&sel).unwrap().unwrap();
        assert!(s.matches_object(&json!({"metadata": {"labels": {"app": "web", "env": ""}}})));
        assert!(!s.matches_object(&json!({"metadata": {"labels": {"app": "web"}}})));
        assert!(LabelSelector::from_value(&Value::Null).unwrap().is_none());
        let f = FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed").unwrap();
        assert!(f.matches(&json!({"spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})));
        assert!(!f.matches(&json!({"spec": {"nodeName": "n1"}, "status": {"phase": "Failed"}})));
        assert!(FieldSelector::parse("spec.nodeName=").unwrap().matches(&json!({"spec": {}})));
        assert_eq!(f.required("spec.nodeName"), Some("n1"));
    }
}
