//! berth-agent with berth-control: projected service-account tokens in a pod, checked by a
//! TokenReview through kubectl and used as bearer tokens on the agent's kubelet API (:10250),
//! authorised by SubjectAccessReview (and a ClusterRoleBinding); the Summary and resource
//! metrics APIs through `kubectl get --raw …/proxy/…`; image garbage collection.

use std::time::Duration;

use berth_integration::cluster::{Cluster, Runtime};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

/// (HTTP status, body) of GET https://127.0.0.1:10250`path` from inside the cluster's netns.
fn kubelet_get(c: &Cluster, path: &str, token: Option<&str>) -> (u16, String) {
    let mut cmd = c.ns.command("curl");
    cmd.args(["-sk", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10"]);
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    let out = cmd.arg(format!("https://127.0.0.1:10250{path}")).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn token_review(c: &Cluster, token: &str, audiences: &[&str]) -> Value {
    let body = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token, "audiences": audiences}});
    let out = c.kubectl_output(&["create", "-f", "-", "-o", "json"], Some(&body.to_string())).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
#[ignore = "needs root"]
fn projected_service_account_tokens_authenticate_to_the_api_and_the_kubelet() {
    let c = Cluster::start("tokens", 5230, "10.89.30.0/24").expect("cluster");
    c.wait_for(LONG, "the default service account", |c| c.kubectl(&["get", "sa", "default"]).is_ok()).unwrap();
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: tok}}\nspec:\n  containers:\n  - name: app\n    image: {}\n    command: [sleep, \"1000\"]\n    volumeMounts: [{{name: t, mountPath: /var/run/secrets/tokens}}]\n  volumes:\n  - name: t\n    projected:\n      sources:\n      - serviceAccountToken: {{path: token, expirationSeconds: 600}}\n      - serviceAccountToken: {{path: vault-token, audience: vault}}\n      - downwardAPI: {{items: [{{path: namespace, fieldRef: {{fieldPath: metadata.namespace}}}}]}}\n",
        c.image
    ))
    .unwrap();
    c.wait_for(LONG, "the pod to run", |c| c.pod("tok").is_ok_and(|p| p["status"]["phase"] == "Running")).unwrap();
    let token = c.kubectl(&["exec", "tok", "--", "cat", "/var/run/secrets/tokens/token"]).unwrap();
    let vault = c.kubectl(&["exec", "tok", "--", "cat", "/var/run/secrets/tokens/vault-token"]).unwrap();
    assert_eq!(c.kubectl(&["exec", "tok", "--", "cat", "/var/run/secrets/tokens/namespace"]).unwrap(), "default");
    let links = c.kubectl(&["exec", "tok", "--", "ls", "-la", "/var/run/secrets/tokens/"]).unwrap();
    assert!(links.contains("token -> ..data/token"), "written with the atomic writer: {links}");

    // The file's token passes a TokenReview, bound to the pod; the vault one only for "vault".
    let r = token_review(&c, &token, &[]);
    assert_eq!(r["status"]["authenticated"], true, "{r}");
    assert_eq!(r["status"]["user"]["username"], "system:serviceaccount:default:default");
    assert_eq!(r["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"][0], "tok");
    assert_eq!(token_review(&c, &vault, &["vault"])["status"]["authenticated"], true);
    assert_eq!(token_review(&c, &vault, &[])["status"]["authenticated"], false);

    // The kubelet API: no credential and garbage → 401; a valid token without the right → 403;
    // once a ClusterRoleBinding grants nodes/proxy → 200.
    assert_eq!(kubelet_get(&c, "/pods", None).0, 401);
    assert_eq!(kubelet_get(&c, "/pods", Some("garbage")).0, 401);
    assert_eq!(kubelet_get(&c, "/pods", Some(&vault)).0, 401, "a token for another audience");
    let (code, body) = kubelet_get(&c, "/pods", Some(&token));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("subresource=proxy"), "{body}");
    c.apply("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: kubelet-api}\nrules: [{apiGroups: [\"\"], resources: [nodes/proxy], verbs: [get]}]\n").unwrap();
    c.apply("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: default-kubelet-api}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: kubelet-api}\nsubjects: [{kind: ServiceAccount, name: default, namespace: default}]\n").unwrap();
    let (code, body) = kubelet_get(&c, "/pods", Some(&token));
    assert_eq!(code, 200, "{body}");
    let pods: Value = serde_json::from_str(&body).unwrap();
    assert!(pods["items"].as_array().unwrap().iter().any(|p| p["metadata"]["name"] == "tok"), "{body}");
    assert_eq!(kubelet_get(&c, "/stats/summary", Some(&token)).0, 403, "nodes/stats is not granted");
    assert_eq!(kubelet_get(&c, "/pods", Some("garbage")).0, 401);

    // Once the pod is deleted its token is worthless (the agent's 2-minute cache aside).
    c.kubectl(&["delete", "pod", "tok", "--wait=false"]).unwrap();
    c.wait_for(LONG, "the bound token to be refused", |c| token_review(c, &token, &[])["status"]["authenticated"] == false).unwrap();
}
