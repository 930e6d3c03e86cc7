//! Service-account tokens through the real kubectl: `kubectl create token`, TokenReview,
//! tokens bound to a pod (invalid once it is gone), bearer authentication with a token and the
//! service account's read-only access to its own namespace, SubjectAccessReview and a
//! ClusterRoleBinding granting `nodes/proxy`, and a node
//! asking for a token for its own pod only.

mod common;

use std::process::{Command, Output, Stdio};

use common::{eventually, kubectl_with, Cluster};
use serde_json::Value;

fn wait_default_sa(c: &Cluster, ns: &str) {
    eventually(20, "the default service account", || {
        c.kubectl(&["-n", ns, "get", "sa", "default"]).status.success().then_some(())
    });
}

fn review(c: &Cluster, token: &str, audiences: &[&str]) -> Value {
    let body = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token, "audiences": audiences}});
    let o = kubectl_with(&c.kubeconfig, &["create", "-f", "-", "-o", "json"], Some(&body.to_string()));
    assert!(o.status.success(), "tokenreview: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// kubectl as the holder of `token` (no client certificate).
fn as_token(c: &Cluster, token: &str, args: &[&str]) -> Output {
    let ca = c.dir.path().join("pki/ca.crt");
    let empty = c.dir.path().join("empty.kubeconfig");
    std::fs::write(&empty, "apiVersion: v1\nkind: Config\n").unwrap();
    Command::new("kubectl")
        .env("KUBECONFIG", &empty)
        .arg(format!("--server={}", c.url()))
        .arg(format!("--certificate-authority={}", ca.display()))
        .arg(format!("--token={token}"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn kubectl_create_token_and_token_review() {
    let c = Cluster::start();
    wait_default_sa(&c, "default");
    let token = c.ok(&["create", "token", "default"]).trim().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let r = review(&c, &token, &[]);
    let st = &r["status"];
    assert_eq!(st["authenticated"], true, "{r}");
    assert_eq!(st["user"]["username"], "system:serviceaccount:default:default");
    let groups: Vec<&str> = st["user"]["groups"].as_array().unwrap().iter().map(|g| g.as_str().unwrap()).collect();
    assert_eq!(groups, ["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"]);
    assert_eq!(st["audiences"][0], "https://kubernetes.default.svc.cluster.local");

    // Audiences: asked for and checked; a wrong audience is refused.
    let t2 = c.ok(&["create", "token", "default", "--audience=vault", "--duration=15m"]).trim().to_string();
    assert_eq!(review(&c, &t2, &["vault"])["status"]["authenticated"], true);
    let wrong = review(&c, &t2, &["other"]);
    assert_eq!(wrong["status"]["authenticated"], false);
    assert!(wrong["status"]["error"].as_str().unwrap().contains("audiences"), "{wrong}");
    assert_eq!(review(&c, &t2, &[])["status"]["authenticated"], false, "not an API token");
    let e = c.fails(&["create", "token", "default", "--duration=5m"]);
    assert!(e.contains("10 minutes"), "{e}");
    let e = c.fails(&["create", "token", "nobody"]);
    assert!(e.contains("not found"), "{e}");

    // Garbage and tampered tokens.
    assert_eq!(review(&c, "garbage", &[])["status"]["authenticated"], false);
    let mut tampered = token.clone().into_bytes();
    let i = token.find('.').unwrap() + 5;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    assert_eq!(review(&c, &String::from_utf8(tampered).unwrap(), &[])["status"]["authenticated"], false);

    // Deleting the service account invalidates its tokens.
    c.ok(&["create", "sa", "robot"]);
    let t3 = c.ok(&["create", "token", "robot"]).trim().to_string();
    assert_eq!(review(&c, &t3, &[])["status"]["authenticated"], true);
    c.ok(&["delete", "sa", "robot"]);
    assert_eq!(review(&c, &t3, &[])["status"]["authenticated"], false);
}

#[test]
fn bound_tokens_die_with_their_pod_and_bearer_tokens_read_only_their_namespace() {
    let c = Cluster::start();
    wait_default_sa(&c, "default");
    c.ok(&["create", "namespace", "other"]);
    c.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: p1}\nspec:\n  containers: [{name: c, image: busybox}]\n");
    c.apply("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {k: v}\n");
    let token =
        c.ok(&["create", "token", "default", "--bound-object-kind=Pod", "--bound-object-name=p1"]).trim().to_string();
    let r = review(&c, &token, &[]);
    assert_eq!(r["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"][0], "p1", "{r}");

    // The token is a credential: reads in its namespace, nothing else.
    let o = as_token(&c, &token, &["get", "pods", "-o", "name"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "pod/p1");
    for args in
        [&["get", "pods", "-n", "other"][..], &["get", "secret", "s"], &["delete", "pod", "p1"], &["get", "nodes"]]
    {
        let o = as_token(&c, &token, args);
        assert!(!o.status.success(), "the token could {args:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("forbidden"),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = as_token(&c, &token, &["auth", "can-i", "list", "pods"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "yes", "{}", String::from_utf8_lossy(&o.stderr));
    let can_proxy = || {
        String::from_utf8_lossy(&as_token(&c, &token, &["auth", "can-i", "get", "nodes", "--subresource=proxy"]).stdout)
            .trim()
            .to_string()
    };
    assert!(can_proxy().starts_with("no"), "{}", can_proxy());
    // RBAC-lite: a ClusterRoleBinding grants it.
    c.apply("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: kubelet-api}\nrules: [{apiGroups: [\"\"], resources: [nodes/proxy], verbs: [get]}]\n");
    c.apply("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: default-kubelet-api}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: kubelet-api}\nsubjects: [{kind: ServiceAccount, name: default, namespace: default}]\n");
    assert_eq!(can_proxy(), "yes");
    assert!(!as_token(&c, &token, &["get", "nodes"]).status.success(), "only the subresource");
    let o = as_token(&c, "eyJhbGciOiJFUzI1NiJ9.e30.AAAA", &["get", "pods"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("Unauthorized"), "{}", String::from_utf8_lossy(&o.stderr));

    // SubjectAccessReview for a named user.
    let sar = |user: &str, groups: &str| {
        let body = format!("{{\"apiVersion\":\"authorization.k8s.io/v1\",\"kind\":\"SubjectAccessReview\",\"spec\":{{\"user\":\"{user}\",\"groups\":[{groups}],\"resourceAttributes\":{{\"verb\":\"get\",\"resource\":\"nodes\",\"subresource\":\"proxy\",\"name\":\"n1\"}}}}}}");
        let o = kubectl_with(&c.kubeconfig, &["create", "-f", "-", "-o", "json"], Some(&body));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()["status"]["allowed"].as_bool().unwrap()
    };
    assert!(sar("alice", "\"system:masters\""));
    assert!(sar("system:serviceaccount:default:default", "\"system:serviceaccounts\""), "bound above");
    assert!(!sar("system:serviceaccount:other:x", "\"system:serviceaccounts\""));

    // Once the pod is gone, so is the token.
    c.ok(&["delete", "pod", "p1", "--grace-period=0", "--force"]);
    eventually(10, "the bound token to be refused", || {
        (review(&c, &token, &[])["status"]["authenticated"] == false).then_some(())
    });
    assert!(!as_token(&c, &token, &["get", "pods"]).status.success());
    // Binding to a missing pod fails.
    let e = c.fails(&["create", "token", "default", "--bound-object-kind=Pod", "--bound-object-name=nope"]);
    assert!(e.contains("not found"), "{e}");
}

#[test]
fn a_node_gets_tokens_only_for_its_own_pods() {
    let c = Cluster::start();
    wait_default_sa(&c, "default");
    let n1 = c.node("n1");
    n1.register();
    for (pod, node) in [("mine", "n1"), ("theirs", "n2")] {
        c.apply(&format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}}}\nspec:\n  nodeName: {node}\n  containers: [{{name: c, image: busybox}}]\n"));
    }
    let mine = n1
        .ok(&["create", "token", "default", "--bound-object-kind=Pod", "--bound-object-name=mine", "--audience=a1"])
        .trim()
        .to_string();
    // The node reviews it (as its kubelet API does), with the audience it was made for.
    let body = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": mine, "audiences": ["a1"]}});
    let r: Value = serde_json::from_str(&n1.stdin(&["create", "-f", "-", "-o", "json"], &body.to_string())).unwrap();
    assert_eq!(r["status"]["authenticated"], true, "{r}");
    for args in [
        &["create", "token", "default", "--bound-object-kind=Pod", "--bound-object-name=theirs"][..],
        &["create", "token", "default"],
    ] {
        let o = n1.kubectl(args);
        assert!(!o.status.success(), "n1 could {args:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("forbidden"),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
