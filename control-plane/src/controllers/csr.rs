//! CertificateSigningRequests: the approver and signer nodes join through. A request for the
//! `kubernetes.io/kube-apiserver-client-kubelet` signer whose subject is `system:node:NAME` in
//! `system:nodes` only, with client-auth usages only, is approved automatically when it comes
//! from a bootstrap-token user (`system:bootstrappers`, a node joining) or from that same node
//! (renewal) — kube-controller-manager's csrapproving rules. Approved requests for that signer
//! or for `kubernetes.io/kube-apiserver-client` (approved by an admin with `kubectl certificate
//! approve`) are signed by the cluster CA into `status.certificate`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use serde_json::{json, Value};

use super::{key_of, set_condition, Key, Reconciler};
use crate::api::registry::Registry;
use crate::api::resources::{self, ResourceDef};
use crate::api::status::ApiError;
use crate::pki::Pki;

pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";

pub struct Csrs {
    pub reg: Registry,
    pub pki: Arc<Pki>,
}

fn condition(csr: &Value, ty: &str) -> bool {
    csr["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == ty && c["status"].as_str().unwrap_or("True") == "True")
}

fn request_pem(csr: &Value) -> Option<String> {
    let b = base64::engine::general_purpose::STANDARD.decode(csr["spec"]["request"].as_str()?).ok()?;
    String::from_utf8(b).ok()
}

/// Whether kube's node-client approver would approve: the right signer and usages, a node
/// subject, asked for by a bootstrapper or by that node. `subject` is the request's (CN, O).
pub fn auto_approvable(csr: &Value, subject: &(String, Vec<String>)) -> bool {
    let spec = &csr["spec"];
    let usages: Vec<&str> = spec["usages"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let usages_ok = usages.contains(&"client auth")
        && usages.iter().all(|u| matches!(*u, "client auth" | "digital signature" | "key encipherment"));
    let (cn, orgs) = subject;
    let groups: Vec<&str> = spec["groups"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let requester_ok = groups.contains(&"system:bootstrappers")
        || (groups.contains(&"system:nodes") && spec["username"].as_str() == Some(cn.as_str()));
    spec["signerName"] == KUBELET_CLIENT_SIGNER && usages_ok && node_subject(cn, orgs) && requester_ok
}

fn node_subject(cn: &str, orgs: &[String]) -> bool {
    cn.strip_prefix("system:node:").is_some_and(|n| !n.is_empty()) && orgs == ["system:nodes"]
}

#[async_trait]
impl Reconciler for Csrs {
    fn name(&self) -> &'static str {
        "csr"
    }
    fn watches(&self) -> Vec<&'static ResourceDef> {
        vec![resources::by_kind("CertificateSigningRequest")]
    }
    fn keys_for(&self, _r: &ResourceDef, obj: &Value) -> Vec<Key> {
        vec![key_of(obj)]
    }
    async fn all_keys(&self) -> Vec<Key> {
        super::keys_of_kind(&self.reg, "CertificateSigningRequest").await
    }
    async fn reconcile(&self, key: &Key) -> Result<Option<Duration>, ApiError> {
        let r = resources::by_kind("CertificateSigningRequest");
        let Some(csr) = self.reg.get_opt(r, None, key).await? else { return Ok(None) };
        if condition(&csr, "Denied")
            || condition(&csr, "Failed")
            || csr["status"]["certificate"].as_str().is_some_and(|c| !c.is_empty())
        {
            return Ok(None);
        }
        let signer = csr["spec"]["signerName"].as_str().unwrap_or_default();
        if signer != KUBELET_CLIENT_SIGNER && signer != CLIENT_SIGNER {
            return Ok(None);
        }
        let signed = request_pem(&csr).ok_or_else(|| "spec.request is not base64 PEM".to_string()).and_then(|pem| {
            self.pki.sign_client_csr(&pem).map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))
        });
        let (cn, orgs, cert) = match signed {
            Ok(s) => s,
            Err(why) => {
                tracing::info!(csr = %key, %why, "certificate signing request is invalid");
                self.reg
                    .modify(r, None, key, Some("status"), |o| {
                        set_condition(&mut o["status"], "Failed", "True", "SignerValidationFailure", &why)
                    })
                    .await?;
                return Ok(None);
            }
        };
        let approved = condition(&csr, "Approved");
        if !approved && !auto_approvable(&csr, &(cn.clone(), orgs.clone())) {
            return Ok(None); // waits for an admin's `kubectl certificate approve`
        }
        if signer == KUBELET_CLIENT_SIGNER && !node_subject(&cn, &orgs) {
            // That signer issues node identities only, whoever approved.
            let why = format!("subject {cn} {orgs:?} is not a node (system:node:NAME in system:nodes)");
            self.reg
                .modify(r, None, key, Some("status"), |o| {
                    set_condition(&mut o["status"], "Failed", "True", "SignerValidationFailure", &why)
                })
                .await?;
            return Ok(None);
        }
        let cert_b64 = base64::engine::general_purpose::STANDARD.encode(cert);
        self.reg
            .modify(r, None, key, Some("status"), |o| {
                if !approved {
                    set_condition(
                        &mut o["status"],
                        "Approved",
                        "True",
                        "AutoApproved",
                        "Auto approving kubelet client certificate after SubjectAccessReview.",
                    );
                }
                o["status"]["certificate"] = json!(cert_b64);
                true
            })
            .await?;
        tracing::info!(csr = %key, subject = %cn, auto = !approved, "signed a client certificate");
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_client_requests_from_bootstrappers_or_the_node_itself() {
        let csr = |groups: Value, user: &str, usages: Value| json!({"spec": {"signerName": KUBELET_CLIENT_SIGNER, "groups": groups, "username": user, "usages": usages}});
        let usages = json!(["digital signature", "key encipherment", "client auth"]);
        let node = ("system:node:n1".to_string(), vec!["system:nodes".to_string()]);
        assert!(auto_approvable(&csr(json!(["system:bootstrappers"]), "system:bootstrap:abc", usages.clone()), &node));
        assert!(auto_approvable(&csr(json!(["system:nodes"]), "system:node:n1", usages.clone()), &node));
        assert!(
            !auto_approvable(&csr(json!(["system:nodes"]), "system:node:n2", usages.clone()), &node),
            "a node renews only itself"
        );
        assert!(!auto_approvable(
            &csr(json!(["system:bootstrappers"]), "b", json!(["client auth", "server auth"])),
            &node
        ));
        let admin = ("admin".to_string(), vec!["system:masters".to_string()]);
        assert!(!auto_approvable(&csr(json!(["system:bootstrappers"]), "b", usages.clone()), &admin));
        let two_orgs = ("system:node:n1".to_string(), vec!["system:nodes".to_string(), "system:masters".to_string()]);
        assert!(!auto_approvable(&csr(json!(["system:bootstrappers"]), "b", usages), &two_orgs));
    }
}
