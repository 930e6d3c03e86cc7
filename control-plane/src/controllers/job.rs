//! The Job controller: runs pods from the template until `completions` succeed (at most
//! `parallelism` at once) or more than `backoffLimit` fail, then sets Complete or Failed.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::replicaset::{owned_pods, scale_pods};
use super::{condition_true, pod_active, pod_ready, set_condition, split_key, Key, Reconciler};
use crate::api::registry::{now, Registry};
use crate::api::resources::{self, ResourceDef};
use crate::api::status::ApiError;

pub struct Jobs {
    pub reg: Registry,
}

#[async_trait]
impl Reconciler for Jobs {
    fn name(&self) -> &'static str {
        "job"
    }
    fn watches(&self) -> Vec<&'static ResourceDef> {
        vec![resources::by_kind("Job"), resources::by_kind("Pod")]
    }
    fn keys_for(&self, r: &ResourceDef, obj: &Value) -> Vec<Key> {
        super::self_or_controller(r, obj, "Job")
    }
    fn may_concern(&self, r: &ResourceDef, raw: &[u8]) -> bool {
        super::own_or_owned(r, "Job", raw)
    }
    async fn all_keys(&self) -> Vec<Key> {
        super::keys_of_kind(&self.reg, "Job").await
    }
    async fn reconcile(&self, key: &Key) -> Result<Option<Duration>, ApiError> {
        let (ns, name) = split_key(key);
        let jr = resources::by_kind("Job");
        let Some(job) = self.reg.get_opt(jr, ns, name).await? else { return Ok(None) };
        if !job["metadata"]["deletionTimestamp"].is_null() {
            return Ok(None);
        }
        let finished = condition_true(&job["status"], "Complete") || condition_true(&job["status"], "Failed");
        let pods = owned_pods(&self.reg, &job, "Job").await?;
        let active: Vec<Value> = pods.iter().filter(|p| pod_active(p)).cloned().collect();
        let succeeded = pods.iter().filter(|p| p["status"]["phase"] == "Succeeded").count() as i64;
        let failed = pods.iter().filter(|p| p["status"]["phase"] == "Failed").count() as i64;
        let spec = &job["spec"];
        let completions = spec["completions"].as_i64();
        let parallelism = spec["parallelism"].as_i64().unwrap_or(1).max(0);
        let backoff = spec["backoffLimit"].as_i64().unwrap_or(6);
        let done = completions.map_or(succeeded > 0 && active.is_empty(), |c| succeeded >= c);
        let failed_out = failed > backoff;
        let mut status = job["status"].clone();
        if !status.is_object() {
            status = json!({});
        }
        if status["startTime"].is_null() {
            status["startTime"] = json!(now());
        }
        if !finished {
            if done {
                set_condition(
                    &mut status,
                    "SuccessCriteriaMet",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                );
                set_condition(
                    &mut status,
                    "Complete",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                );
                status["completionTime"] = json!(now());
                scale_pods(&self.reg, &job, &spec["template"], &active, 0).await?;
                super::record_event(&self.reg, &job, "Normal", "Completed", "Job completed", "job-controller").await;
            } else if failed_out {
                set_condition(
                    &mut status,
                    "FailureTarget",
                    "True",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                );
                set_condition(
                    &mut status,
                    "Failed",
                    "True",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                );
                scale_pods(&self.reg, &job, &spec["template"], &active, 0).await?;
                super::record_event(
                    &self.reg,
                    &job,
                    "Warning",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                    "job-controller",
                )
                .await;
            } else if spec["suspend"] != true {
                let remaining = completions.map_or(parallelism, |c| (c - succeeded).max(0));
                let want = parallelism.min(remaining).max(0) as usize;
                if active.len() < want {
                    super::record_event(
                        &self.reg,
                        &job,
                        "Normal",
                        "SuccessfulCreate",
                        &format!("Created {} pod(s)", want - active.len()),
                        "job-controller",
                    )
                    .await;
                }
                scale_pods(&self.reg, &job, &spec["template"], &active, want).await?;
            }
        }
        let still_active =
            if condition_true(&status, "Complete") || condition_true(&status, "Failed") { 0 } else { active.len() };
        status["active"] = json!(still_active);
        status["succeeded"] = json!(succeeded);
        status["failed"] = json!(failed);
        status["ready"] = json!(active.iter().filter(|p| pod_ready(p)).count());
        status["terminating"] = json!(pods.iter().filter(|p| !p["metadata"]["deletionTimestamp"].is_null()).count());
        status["uncountedTerminatedPods"] = json!({});
        if let Some(m) = status.as_object_mut() {
            m.retain(|k, v| {
                !(v == &json!(0) && matches!(k.as_str(), "active" | "succeeded" | "failed" | "terminating"))
            });
        }
        self.reg
            .modify(jr, ns, name, Some("status"), |o| {
                let changed = o["status"] != status;
                o["status"] = status.clone();
                changed
            })
            .await?;
        Ok(None)
    }
}
