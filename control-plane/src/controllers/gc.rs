//! Garbage collection by ownerReferences (background: dependents whose owners are all gone are
//! deleted; foreground: an owner with the foregroundDeletion finalizer waits for its dependents;
//! orphan: dependents lose the reference) and the namespace controller (a terminating namespace
//! is emptied, then its finalizer removed; every namespace gets a `default` ServiceAccount).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{key_of, raw_has, split_key, Key, Reconciler};
use crate::api::registry::{decode, meta_str, DeleteOpts, FieldValidation, Registry};
use crate::api::resources::{self, ResourceDef, RESOURCES};
use crate::api::status::ApiError;
use crate::store::ListOptions;

const SWEEP: &str = "sweep";

pub struct Collector {
    pub reg: Registry,
}

/// Whether an object may have owners or be deleting (the only ones GC acts on).
fn maybe_collectable(raw: &[u8]) -> bool {
    raw_has(raw, "ownerReferences") || raw_has(raw, "deletionTimestamp")
}

/// (owner storage key, uid) → the owner, if alive.
type Owners = HashMap<(String, String), Option<Value>>;

fn has_finalizer(o: &Value, f: &str) -> bool {
    o["metadata"]["finalizers"].as_array().into_iter().flatten().any(|x| x == f)
}

impl Collector {
    /// The owner a reference points at, if it still exists with that uid; looked up once per
    /// sweep (10,000 pods of one ReplicaSet cost one read).
    async fn owner_state(&self, owners: &mut Owners, dep: &Value, r: &Value) -> Result<Option<Value>, ApiError> {
        let kind = r["kind"].as_str().unwrap_or_default();
        let Some(def) = RESOURCES.iter().find(|d| d.kind == kind) else { return Ok(None) };
        let ns = if def.namespaced { dep["metadata"]["namespace"].as_str() } else { None };
        let name = r["name"].as_str().unwrap_or_default();
        let id = (def.key(ns, name), r["uid"].as_str().unwrap_or_default().to_string());
        if let Some(o) = owners.get(&id) {
            return Ok(o.clone());
        }
        let owner = self.reg.get_opt(def, ns, name).await?.filter(|o| o["metadata"]["uid"] == r["uid"]);
        owners.insert(id, owner.clone());
        Ok(owner)
    }

    /// Objects with owner references or a deletion timestamp: the only ones a sweep acts on.
    /// The rest are skipped by a byte search, without decoding them.
    async fn candidates(&self) -> Result<Vec<(&'static ResourceDef, Value)>, ApiError> {
        let mut all = Vec::new();
        for r in RESOURCES.iter().filter(|r| r.namespaced && r.kind != "Event") {
            let page = self.reg.store.list(&r.prefix(None), ListOptions::default()).await?;
            for kv in page.items.iter().filter(|kv| maybe_collectable(&kv.value)) {
                all.push((r, decode(kv)?));
            }
        }
        Ok(all)
    }

    async fn sweep(&self) -> Result<(), ApiError> {
        let all = self.candidates().await?;
        let mut owners = Owners::new();
        for (r, dep) in &all {
            let Some(refs) = dep["metadata"]["ownerReferences"].as_array().filter(|a| !a.is_empty()) else { continue };
            let (ns, name) = (dep["metadata"]["namespace"].as_str(), meta_str(dep, "name"));
            let mut alive = Vec::new();
            let mut delete_for_foreground = false;
            for oref in refs {
                match self.owner_state(&mut owners, dep, oref).await? {
                    None => {}
                    Some(owner)
                        if !owner["metadata"]["deletionTimestamp"].is_null() && has_finalizer(&owner, "orphan") => {}
                    Some(owner) => {
                        if !owner["metadata"]["deletionTimestamp"].is_null()
                            && has_finalizer(&owner, "foregroundDeletion")
                        {
                            delete_for_foreground = true;
                        }
                        alive.push(oref.clone());
                    }
                }
            }
            if alive.is_empty() || delete_for_foreground {
                let orphaned_only =
                    refs.iter().all(|o| alive.iter().all(|a| a["uid"] != o["uid"])) && !delete_for_foreground;
                let owners_orphaning = self.any_orphaning(&mut owners, dep, refs).await?;
                if orphaned_only && owners_orphaning {
                    self.drop_refs(r, ns, name, refs).await?;
                } else if dep["metadata"]["deletionTimestamp"].is_null() {
                    tracing::debug!(kind = r.kind, name, "garbage-collecting dependent");
                    let policy = if delete_for_foreground { Some("Foreground".to_string()) } else { None };
                    match self.reg.delete(r, ns, name, &DeleteOpts { propagation: policy, ..Default::default() }).await
                    {
                        Ok(_) | Err(ApiError { code: 404, .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            } else if alive.len() < refs.len() {
                let gone: Vec<Value> =
                    refs.iter().filter(|o| alive.iter().all(|a| a["uid"] != o["uid"])).cloned().collect();
                if self.any_orphaning(&mut owners, dep, &gone).await? {
                    self.drop_refs(r, ns, name, &gone).await?;
                }
            }
        }
        // Owners waiting on finalizers.
        for (r, owner) in &all {
            if owner["metadata"]["deletionTimestamp"].is_null() {
                continue;
            }
            let uid = &owner["metadata"]["uid"];
            let deps: Vec<&(&ResourceDef, Value)> = all
                .iter()
                .filter(|(_, d)| {
                    d["metadata"]["ownerReferences"].as_array().into_iter().flatten().any(|o| &o["uid"] == uid)
                })
                .collect();
            let (ns, name) = (owner["metadata"]["namespace"].as_str(), meta_str(owner, "name"));
            if has_finalizer(owner, "orphan") {
                for (dr, d) in &deps {
                    let refs = d["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
                    let mine: Vec<Value> = refs.into_iter().filter(|o| &o["uid"] == uid).collect();
                    self.drop_refs(dr, d["metadata"]["namespace"].as_str(), meta_str(d, "name"), &mine).await?;
                }
                self.remove_finalizer(r, ns, name, "orphan").await?;
            } else if has_finalizer(owner, "foregroundDeletion") && deps.is_empty() {
                self.remove_finalizer(r, ns, name, "foregroundDeletion").await?;
            }
        }
        Ok(())
    }

    async fn any_orphaning(&self, owners: &mut Owners, dep: &Value, refs: &[Value]) -> Result<bool, ApiError> {
        for oref in refs {
            if let Some(o) = self.owner_state(owners, dep, oref).await? {
                if has_finalizer(&o, "orphan") {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    async fn drop_refs(
        &self,
        r: &'static ResourceDef,
        ns: Option<&str>,
        name: &str,
        refs: &[Value],
    ) -> Result<(), ApiError> {
        let uids: Vec<Value> = refs.iter().map(|o| o["uid"].clone()).collect();
        match self
            .reg
            .modify(r, ns, name, None, |o| {
                let Some(list) = o["metadata"]["ownerReferences"].as_array_mut() else { return false };
                let before = list.len();
                list.retain(|x| !uids.contains(&x["uid"]));
                before != list.len()
            })
            .await
        {
            Ok(_) | Err(ApiError { code: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn remove_finalizer(
        &self,
        r: &'static ResourceDef,
        ns: Option<&str>,
        name: &str,
        f: &str,
    ) -> Result<(), ApiError> {
        match self
            .reg
            .modify(r, ns, name, None, |o| {
                let Some(list) = o["metadata"]["finalizers"].as_array_mut() else { return false };
                let before = list.len();
                list.retain(|x| x != f);
                before != list.len()
            })
            .await
        {
            Ok(_) | Err(ApiError { code: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl Reconciler for Collector {
    fn name(&self) -> &'static str {
        "garbage-collector"
    }
    fn watches(&self) -> Vec<&'static ResourceDef> {
        ["ReplicaSet", "Deployment", "Job", "DaemonSet", "Pod"].iter().map(|k| resources::by_kind(k)).collect()
    }
    fn keys_for(&self, _r: &ResourceDef, obj: &Value) -> Vec<Key> {
        let interesting =
            !obj["metadata"]["deletionTimestamp"].is_null() || obj["metadata"]["ownerReferences"].is_array();
        if interesting {
            vec![SWEEP.into()]
        } else {
            vec![]
        }
    }
    fn may_concern(&self, _r: &ResourceDef, raw: &[u8]) -> bool {
        maybe_collectable(raw)
    }
    async fn all_keys(&self) -> Vec<Key> {
        vec![SWEEP.into()]
    }
    async fn reconcile(&self, _key: &Key) -> Result<Option<Duration>, ApiError> {
        self.sweep().await?;
        // Deletes cascade level by level; look again shortly.
        Ok(None)
    }
    fn resync(&self) -> Duration {
        Duration::from_secs(5)
    }
}

pub struct Namespaces {
    pub reg: Registry,
}

#[async_trait]
impl Reconciler for Namespaces {
    fn name(&self) -> &'static str {
        "namespace"
    }
    fn watches(&self) -> Vec<&'static ResourceDef> {
        vec![resources::by_kind("Namespace")]
    }
    fn keys_for(&self, _r: &ResourceDef, obj: &Value) -> Vec<Key> {
        vec![key_of(obj)]
    }
    async fn all_keys(&self) -> Vec<Key> {
        super::keys_of_kind(&self.reg, "Namespace").await
    }
    async fn reconcile(&self, key: &Key) -> Result<Option<Duration>, ApiError> {
        let (_, name) = split_key(key);
        let nsr = resources::by_kind("Namespace");
        let Some(ns) = self.reg.get_opt(nsr, None, name).await? else { return Ok(None) };
        if ns["metadata"]["deletionTimestamp"].is_null() {
            let sa = resources::by_kind("ServiceAccount");
            if self.reg.get_opt(sa, Some(name), "default").await?.is_none() {
                let _ = self
                    .reg
                    .create(sa, Some(name), json!({"metadata": {"name": "default"}}), FieldValidation::Ignore)
                    .await;
            }
            return Ok(None);
        }
        let mut left = 0;
        for r in RESOURCES.iter().filter(|r| r.namespaced) {
            for o in self.reg.list_all(r, Some(name), None).await? {
                left += 1;
                if o["metadata"]["deletionTimestamp"].is_null() {
                    let _ = self
                        .reg
                        .delete(
                            r,
                            Some(name),
                            meta_str(&o, "name"),
                            &DeleteOpts { grace_period: Some(0), ..Default::default() },
                        )
                        .await;
                }
            }
        }
        if left > 0 {
            return Ok(Some(Duration::from_millis(500)));
        }
        self.reg
            .modify(nsr, None, name, None, |n| {
                let had = n["spec"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
                n["spec"]["finalizers"] = json!([]);
                had
            })
            .await
            .map(|_| None)
            .or_else(|e| if e.code == 404 { Ok(None) } else { Err(e) })
    }
}
