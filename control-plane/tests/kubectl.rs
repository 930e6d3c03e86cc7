//! berth-control driven by the real kubectl: workloads, watches, describe, selectors, jobs,
//! node lifecycle, the node authoriser, errors, and crash recovery. Every test runs on both
//! storage backends (`embedded::*` and `etcd::*`).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{eventually, Backend, Cluster, Kubelet};

const DEPLOY: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, tier: front}}
    spec:
      containers:
      - name: app
        image: busybox:1.36
        ports: [{containerPort: 80}]
        resources: {requests: {cpu: 100m, memory: 64Mi}}
"#;

fn count(c: &Cluster, args: &[&str]) -> usize {
    c.json(args)["items"].as_array().map_or(0, Vec::len)
}

fn deployment_apply_scale_rollout_undo_describe_delete(b: Backend) {
    let c = Cluster::on(b);
    let node = c.node("n1");
    node.register();
    let _kubelet = Kubelet::start(node, |_| false);
    assert!(c.apply(DEPLOY).contains("deployment.apps/web created"));
    c.ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    assert_eq!(count(&c, &["get", "rs", "-l", "app=web"]), 1);
    let pods = c.json(&["get", "pods", "-l", "app=web,tier=front"]);
    assert_eq!(pods["items"].as_array().unwrap().len(), 3);
    assert!(pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["spec"]["nodeName"] == "n1" && p["status"]["phase"] == "Running"));
    assert!(c.apply(DEPLOY).contains("unchanged"), "re-applying the same manifest changes nothing");

    c.ok(&["scale", "deploy/web", "--replicas=5"]);
    c.ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    assert_eq!(count(&c, &["get", "pods", "-l", "app=web", "--field-selector", "status.phase=Running"]), 5);

    c.ok(&["set", "image", "deploy/web", "app=busybox:1.37"]);
    c.ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    assert_eq!(count(&c, &["get", "rs", "-l", "app=web"]), 2);
    let history = c.ok(&["rollout", "history", "deploy/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");
    c.ok(&["rollout", "undo", "deploy/web"]);
    c.ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let d = c.json(&["get", "deploy", "web"]);
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "busybox:1.36");
    assert_eq!(d["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "3");
    eventually(30, "old pods gone", || (count(&c, &["get", "pods", "-l", "app=web"]) == 5).then_some(()));

    let desc = c.ok(&["describe", "deploy", "web"]);
    assert!(desc.contains("NewReplicaSet:") && desc.contains("ScalingReplicaSet"), "{desc}");
    let pod = c.json(&["get", "pods", "-l", "app=web"])["items"][0]["metadata"]["name"].as_str().unwrap().to_string();
    let desc = c.ok(&["describe", "pod", &pod]);
    assert!(desc.contains("Node:") && desc.contains("n1") && desc.contains("Scheduled"), "{desc}");
    let table = c.ok(&["get", "pods", "-o", "wide"]);
    assert!(table.lines().next().unwrap().contains("NODE") && table.contains("Running"), "{table}");
    let paged = c.ok(&["get", "pods", "--chunk-size=2", "-o", "name"]);
    assert_eq!(paged.lines().count(), 5);

    c.ok(&["delete", "deploy", "web"]);
    eventually(30, "ReplicaSets and pods garbage-collected", || {
        (count(&c, &["get", "rs"]) == 0 && count(&c, &["get", "pods"]) == 0).then_some(())
    });
}

fn get_watch_streams_changes(b: Backend) {
    let c = Cluster::on_with(b, &["--watch-history", "20"]);
    let mut w = Command::new("kubectl")
        .env("KUBECONFIG", &c.kubeconfig)
        .args([
            "get",
            "configmaps",
            "-w",
            "--output-watch-events",
            "-o",
            "custom-columns=EVENT:.type,NAME:.object.metadata.name",
            "--no-headers",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = w.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_millis(1000));
    c.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: watched}\ndata: {a: '1'}\n");
    c.ok(&["label", "configmap", "watched", "x=y"]);
    c.ok(&["delete", "configmap", "watched"]);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) if l.contains("watched") => seen.push(l.split_whitespace().next().unwrap().to_string()),
            Ok(_) => {}
            Err(_) => panic!("watch output so far: {seen:?}"),
        }
    }
    w.kill().unwrap();
    let _ = w.wait();
    assert_eq!(seen, ["ADDED", "MODIFIED", "DELETED"]);
    let raw = c.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=1&timeoutSeconds=2&allowWatchBookmarks=true",
    ]);
    assert!(raw.contains("\"BOOKMARK\""), "{raw}");
    assert!(raw.contains("\"DELETED\""), "a watch from an old revision replays history: {raw}");
    // Past the kept history (--watch-history 20), an old resourceVersion is 410 Gone.
    for i in 0..25 {
        c.apply(&format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: filler-{i}}}\n"));
    }
    // (etcd is compacted in the background, so this may take a moment there.)
    eventually(10, "410 for a compacted resourceVersion", || {
        let gone = c.ok(&[
            "get",
            "--raw",
            "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=1&timeoutSeconds=1",
        ]);
        let ev: serde_json::Value = serde_json::from_str(gone.lines().next()?).ok()?;
        ((ev["type"].as_str(), ev["object"]["code"].as_i64(), ev["object"]["reason"].as_str())
            == (Some("ERROR"), Some(410), Some("Expired")))
            .then_some(())
    });
    let e = c.fails(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=999999&timeoutSeconds=1",
    ]);
    assert!(e.contains("Too large resource version"), "{e}");
}

fn job_runs_to_completion(b: Backend) {
    let c = Cluster::on(b);
    let node = c.node("n1");
    node.register();
    let _kubelet = Kubelet::start(node, |p| p["metadata"]["labels"]["job-name"] == "pi");
    c.apply("apiVersion: batch/v1\nkind: Job\nmetadata: {name: pi}\nspec:\n  completions: 3\n  parallelism: 2\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{name: pi, image: busybox, command: [\"true\"]}]\n");
    c.ok(&["wait", "--for=condition=complete", "job/pi", "--timeout=60s"]);
    let job = c.json(&["get", "job", "pi"]);
    assert_eq!(job["status"]["succeeded"], 3);
    assert!(c.ok(&["get", "job", "pi"]).contains("Complete"));
    assert_eq!(count(&c, &["get", "pods", "-l", "job-name=pi"]), 3);
}

fn lease_expiry_turns_node_not_ready_and_evicts_pods(b: Backend) {
    let c = Cluster::on(b);
    let node = c.node("n1");
    node.register();
    node.renew();
    c.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: short}\nspec:\n  containers: [{name: c, image: busybox}]\n  tolerations: [{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}]\n");
    c.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: forever}\nspec:\n  containers: [{name: c, image: busybox}]\n  tolerations: [{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute}]\n");
    eventually(20, "pods scheduled", || (c.json(&["get", "pod", "short"])["spec"]["nodeName"] == "n1").then_some(()));
    // The node stops renewing: NotReady after the 3 s grace period, tainted unreachable.
    eventually(20, "node NotReady", || c.ok(&["get", "node", "n1"]).contains("NotReady").then_some(()));
    let n = c.json(&["get", "node", "n1"]);
    assert!(n["spec"]["taints"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute"));
    eventually(30, "pod evicted after tolerationSeconds", || {
        let o = c.kubectl(&["get", "pod", "short", "-o", "json"]);
        let gone = !o.status.success();
        let terminating = o.status.success()
            && !serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["metadata"]["deletionTimestamp"]
                .is_null();
        (gone || terminating).then_some(())
    });
    let f = c.json(&["get", "pod", "forever"]);
    assert!(f["metadata"]["deletionTimestamp"].is_null(), "a pod tolerating forever stays");
    assert!(c.ok(&["get", "events", "--field-selector", "involvedObject.name=short"]).contains("TaintManagerEviction"));
    // The node comes back: renews its lease and posts Ready; the taints go.
    node.renew();
    let st = serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": common::now()}]}});
    node.ok(&["patch", "node", "n1", "--subresource=status", "--type=strategic", "-p", &st.to_string()]);
    eventually(20, "node Ready and untainted", || {
        let n = c.json(&["get", "node", "n1"]);
        n["spec"]["taints"].as_array().is_none_or(|t| t.is_empty()).then_some(())
    });
    assert!(!c.ok(&["get", "node", "n1"]).contains("NotReady"));
}

fn node_credentials_reach_only_their_own_pods_and_secrets(b: Backend) {
    let c = Cluster::on(b);
    let (n1, n2) = (c.node("n1"), c.node("n2"));
    n1.register();
    n2.register();
    for (kind, name) in [("Secret", "s1"), ("Secret", "s2"), ("ConfigMap", "c2"), ("ConfigMap", "c3")] {
        let data = if kind == "Secret" { "data: {k: dg==}" } else { "data: {k: v}" };
        c.apply(&format!("apiVersion: v1\nkind: {kind}\nmetadata: {{name: {name}}}\n{data}\n"));
    }
    for (pod, node, secret) in [("p1", "n1", "s1"), ("p2", "n2", "s2")] {
        c.apply(&format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}}}\nspec:\n  nodeName: {node}\n  containers: [{{name: c, image: busybox, envFrom: [{{configMapRef: {{name: c2}}}}]}}]\n  volumes: [{{name: s, secret: {{secretName: {secret}}}}}]\n"));
    }
    assert!(n1.ok(&["get", "pod", "p1", "-o", "name"]).contains("p1"));
    assert!(n1.ok(&["get", "secret", "s1", "-o", "name"]).contains("s1"));
    let denied = |args: &[&str]| {
        let o = n1.kubectl(args);
        assert!(!o.status.success(), "n1 could {args:?}");
        let e = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(e.contains("Forbidden") || e.contains("forbidden"), "{args:?}: {e}");
    };
    denied(&["get", "pod", "p2"]);
    denied(&["get", "secret", "s2"]);
    denied(&["get", "configmap", "c3"]);
    denied(&["get", "pods", "-A"]);
    denied(&["get", "secrets"]);
    denied(&["patch", "node", "n2", "--subresource=status", "--type=merge", "-p", "{\"status\":{\"phase\":\"x\"}}"]);
    denied(&[
        "-n",
        "kube-node-lease",
        "patch",
        "lease",
        "n2",
        "--type=merge",
        "-p",
        "{\"spec\":{\"holderIdentity\":\"n1\"}}",
    ]);
    denied(&[
        "patch",
        "pod",
        "p2",
        "--subresource=status",
        "--type=merge",
        "-p",
        "{\"status\":{\"phase\":\"Failed\"}}",
    ]);
    // n2 reads c2 because its pod references it; n1's pod does too.
    assert!(n2.ok(&["get", "configmap", "c2", "-o", "name"]).contains("c2"));
    assert_eq!(n1.pods().len(), 1);
    n1.ok(&[
        "patch",
        "pod",
        "p1",
        "--subresource=status",
        "--type=merge",
        "-p",
        "{\"status\":{\"phase\":\"Running\"}}",
    ]);
    let o = common::kubectl_with(
        &n1.kubeconfig,
        &["create", "-f", "-"],
        Some("{\"apiVersion\":\"v1\",\"kind\":\"Node\",\"metadata\":{\"name\":\"n3\"}}"),
    );
    assert!(!o.status.success(), "n1 created another node");
}

fn errors_are_kubernetes_status_codes(b: Backend) {
    let c = Cluster::on(b);
    let e = c.fails(&["get", "pod", "nope"]);
    assert!(e.contains("pods \"nope\" not found"), "{e}");
    let o = common::kubectl_with(&c.kubeconfig, &["create", "-f", "-"], Some("{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"bad\"},\"spec\":{\"containers\":[{\"name\":\"c\"}]}}"));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("is invalid") && e.contains("spec.containers[0].image: Required value"), "{e}");
    let cm_json =
        "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"cm\"},\"data\":{\"a\":\"1\"}}";
    assert!(common::kubectl_with(&c.kubeconfig, &["create", "-f", "-"], Some(cm_json)).status.success());
    let o = common::kubectl_with(&c.kubeconfig, &["create", "-f", "-"], Some(cm_json));
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(e.contains("AlreadyExists") || e.contains("already exists"), "{e}");
    let mut cm = c.json(&["get", "configmap", "cm"]);
    c.ok(&["label", "configmap", "cm", "v=2"]);
    cm["data"]["a"] = serde_json::json!("stale");
    let o = common::kubectl_with(&c.kubeconfig, &["replace", "-f", "-"], Some(&cm.to_string()));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("the object has been modified"), "{e}");
    let e = c.fails(&["get", "pods", "-l", "=bad"]);
    assert!(!e.is_empty());
    let o = common::kubectl_with(
        &c.kubeconfig,
        &["create", "-f", "-"],
        Some("{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"x\"},\"bogus\":1}"),
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unknown field \"bogus\""),
        "strict field validation: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn kill9_under_write_load_loses_nothing_acknowledged_and_watches_resume(b: Backend) {
    let mut c = Cluster::on(b);
    let start_rv = c.json(&["get", "configmaps"])["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..3).map(|w| {
        let (acked, stop, kc) = (acked.clone(), stop.clone(), c.kubeconfig.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("w{w}-{i}");
                let body = format!("{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"{name}\"}},\"data\":{{\"i\":\"1\"}}}}");
                let o = common::kubectl_with(&kc, &["create", "-f", "-", "--request-timeout=2s"], Some(&body));
                if o.status.success() {
                    acked.lock().unwrap().push(name);
                }
                i += 1;
            }
        })
    }).collect();
    std::thread::sleep(Duration::from_secs(4));
    c.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 10, "only {} writes acknowledged", acked.len());
    c.spawn();
    let have: std::collections::HashSet<String> = c.json(&["get", "configmaps"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|a| !have.contains(*a)).collect();
    assert!(lost.is_empty(), "acknowledged but lost after kill -9: {lost:?}");
    // A watch from before the crash resumes: every acknowledged create arrives as ADDED.
    let raw = c.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={start_rv}&timeoutSeconds=2"),
    ]);
    let added: std::collections::HashSet<String> = raw
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["type"] == "ADDED")
        .map(|e| e["object"]["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert!(acked.iter().all(|a| added.contains(a)), "watch resumed from {start_rv} misses writes");
    c.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: after-restart}\n");
}

fn imperative_create_with_protobuf_bodies(b: Backend) {
    let c = Cluster::on(b);
    c.ok(&["create", "namespace", "team"]);
    c.ok(&["-n", "team", "create", "configmap", "settings", "--from-literal=mode=fast", "--from-literal=level=3"]);
    c.ok(&["-n", "team", "create", "secret", "generic", "creds", "--from-literal=password=s3cret"]);
    c.ok(&["-n", "team", "create", "serviceaccount", "robot"]);
    let cm = c.json(&["-n", "team", "get", "configmap", "settings"]);
    assert_eq!((cm["data"]["mode"].as_str(), cm["data"]["level"].as_str()), (Some("fast"), Some("3")));
    let s = c.json(&["-n", "team", "get", "secret", "creds"]);
    assert_eq!((s["data"]["password"].as_str(), s["type"].as_str()), (Some("czNjcmV0"), Some("Opaque")));
    assert!(c.ok(&["get", "ns", "team"]).contains("Active"));
    assert_eq!(c.json(&["-n", "team", "get", "sa", "robot"])["metadata"]["name"], "robot");

    // Deployments and Jobs, whose pod templates come as protobuf too.
    c.ok(&[
        "-n",
        "team",
        "create",
        "deployment",
        "web",
        "--image=busybox:1.36",
        "--replicas=2",
        "--port=8080",
        "--",
        "sleep",
        "3600",
    ]);
    let d = c.json(&["-n", "team", "get", "deployment", "web"]);
    assert_eq!(
        (d["spec"]["replicas"].as_i64(), d["spec"]["selector"]["matchLabels"]["app"].as_str()),
        (Some(2), Some("web")),
        "{d}"
    );
    let ctr = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        (ctr["name"].as_str(), ctr["image"].as_str(), ctr["ports"][0]["containerPort"].as_i64()),
        (Some("busybox"), Some("busybox:1.36"), Some(8080)),
        "{d}"
    );
    assert_eq!(ctr["command"], serde_json::json!(["sleep", "3600"]), "{d}");
    assert_eq!(d["spec"]["template"]["metadata"]["labels"]["app"], "web", "{d}");
    c.ok(&["-n", "team", "create", "job", "once", "--image=busybox:1.36", "--", "true"]);
    let j = c.json(&["-n", "team", "get", "job", "once"]);
    assert_eq!(j["spec"]["template"]["spec"]["restartPolicy"], "Never", "{j}");
    assert_eq!(j["spec"]["template"]["spec"]["containers"][0]["command"], serde_json::json!(["true"]), "{j}");
}

const DAEMONSET: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      nodeSelector: {role: edge}
      containers: [{name: c, image: "busybox:1.36"}]
"#;

fn ds_pods(c: &Cluster) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = c.json(&["get", "pods", "-l", "app=agent"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            (
                p["spec"]["nodeName"].as_str().unwrap_or_default().to_string(),
                p["spec"]["containers"][0]["image"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn daemonset_runs_one_pod_per_eligible_node(b: Backend) {
    let c = Cluster::on(b);
    let _kubelets: Vec<Kubelet> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| {
            let node = c.node(n);
            node.register();
            Kubelet::start(node, |_| false)
        })
        .collect();
    c.ok(&["label", "node", "n1", "n2", "role=edge"]);
    c.apply(DAEMONSET);
    c.ok(&["rollout", "status", "ds/agent", "--timeout=60s"]);
    let one = |img: &str| vec![("n1".to_string(), img.to_string()), ("n2".to_string(), img.to_string())];
    assert_eq!(ds_pods(&c), one("busybox:1.36"));
    let ds = c.json(&["get", "ds", "agent"]);
    assert_eq!(
        (ds["status"]["desiredNumberScheduled"].as_i64(), ds["status"]["numberReady"].as_i64()),
        (Some(2), Some(2))
    );
    // A rolling update replaces every pod.
    c.ok(&["set", "image", "ds/agent", "c=busybox:1.37"]);
    c.ok(&["rollout", "status", "ds/agent", "--timeout=60s"]);
    eventually(30, "old daemon pods gone", || (ds_pods(&c) == one("busybox:1.37")).then_some(()));
    // A node that starts qualifying gets a pod; one that stops loses it.
    c.ok(&["label", "node", "n3", "role=edge"]);
    eventually(30, "a pod on n3", || ds_pods(&c).iter().any(|(n, _)| n == "n3").then_some(()));
    c.ok(&["label", "node", "n1", "role-"]);
    eventually(30, "n1's pod removed", || {
        (ds_pods(&c).iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>() == ["n2", "n3"]).then_some(())
    });
    assert!(c.ok(&["get", "ds"]).contains("agent"));
    c.ok(&["delete", "ds", "agent"]);
    eventually(30, "daemon pods garbage-collected", || ds_pods(&c).is_empty().then_some(()));
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A PEM certificate signing request for CN/O, and its key.
fn signing_request(cn: &str, org: &str) -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.distinguished_name.push(rcgen::DnType::OrganizationName, org);
    (p.serialize_request(&key).unwrap().pem().unwrap(), key)
}

fn csr_json(name: &str, req: &str) -> String {
    serde_json::json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"name": name},
        "spec": {"request": b64(req), "signerName": "kubernetes.io/kube-apiserver-client-kubelet", "usages": ["digital signature", "key encipherment", "client auth"]}}).to_string()
}

fn bootstrap_token_join_gets_a_node_certificate(b: Backend) {
    let c = Cluster::on(b);
    let token = std::fs::read_to_string(c.dir.path().join("pki/bootstrap-token")).unwrap().trim().to_string();
    let admin = std::fs::read_to_string(&c.kubeconfig).unwrap();
    let ca =
        admin.lines().find_map(|l| l.trim().strip_prefix("certificate-authority-data:")).unwrap().trim().to_string();
    let kubeconfig = |file: &str, user: &str| {
        let path = c.dir.path().join(file);
        std::fs::write(&path, format!("apiVersion: v1\nkind: Config\nclusters:\n- name: b\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n{user}\ncontexts:\n- name: b\n  context: {{cluster: b, user: u}}\ncurrent-context: b\n", c.url())).unwrap();
        path
    };
    let boot = kubeconfig("bootstrap.kubeconfig", &format!("    token: {token}"));
    let (req, key) = signing_request("system:node:n9", "system:nodes");
    let o = common::kubectl_with(&boot, &["create", "-f", "-"], Some(&csr_json("node-csr-n9", &req)));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csr = eventually(20, "the CSR approved and signed", || {
        let o = common::kubectl_with(&boot, &["get", "csr", "node-csr-n9", "-o", "json"], None);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        v["status"]["certificate"].is_string().then_some(v)
    });
    assert_eq!(csr["status"]["conditions"][0]["reason"], "AutoApproved");
    assert_eq!(csr["spec"]["username"], format!("system:bootstrap:{}", token.split('.').next().unwrap()));
    // The signed certificate is node n9's identity.
    let cert = csr["status"]["certificate"].as_str().unwrap();
    let n9 = common::Node {
        name: "n9".into(),
        kubeconfig: kubeconfig(
            "n9.kubeconfig",
            &format!("    client-certificate-data: {cert}\n    client-key-data: {}", b64(&key.serialize_pem())),
        ),
    };
    n9.register();
    assert!(n9.ok(&["get", "node", "n9", "-o", "name"]).contains("n9"));
    // The token is good for nothing else.
    let o = common::kubectl_with(&boot, &["get", "pods"], None);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("forbidden"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A request for another identity waits for an admin, who may deny it.
    let (req, _) = signing_request("mallory", "system:masters");
    let o = common::kubectl_with(&boot, &["create", "-f", "-"], Some(&csr_json("grab-admin", &req)));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::thread::sleep(Duration::from_secs(2));
    assert!(c.ok(&["get", "csr", "grab-admin"]).contains("Pending"));
    c.ok(&["certificate", "deny", "grab-admin"]);
    eventually(10, "denied", || c.ok(&["get", "csr", "grab-admin"]).contains("Denied").then_some(()));
    assert!(c.json(&["get", "csr", "grab-admin"])["status"]["certificate"].is_null());
}

/// Services get ClusterIPs from the service range (the first is the API server's own
/// `kubernetes` Service) and Endpoints that follow the Ready pods their selector matches.
fn services_get_cluster_ips_and_endpoints_follow_ready_pods(b: Backend) {
    let c = Cluster::on(b);
    let node = c.node("n1");
    node.register();
    let _kubelet = Kubelet::start(node, |_| false);
    assert_eq!(c.json(&["get", "svc", "kubernetes"])["spec"]["clusterIP"], "10.96.0.1");
    let ep = c.json(&["get", "endpoints", "kubernetes"]);
    assert_eq!(ep["subsets"][0]["ports"][0]["name"], "https", "{ep}");
    assert!(!ep["subsets"][0]["addresses"][0]["ip"].as_str().unwrap_or_default().is_empty(), "{ep}");

    c.apply(DEPLOY);
    c.ok(&["expose", "deployment", "web", "--port", "8080", "--target-port", "80"]);
    let ip = c.json(&["get", "svc", "web"])["spec"]["clusterIP"].as_str().unwrap_or_default().to_string();
    assert!(ip.starts_with("10.96.") && ip != "10.96.0.1", "{ip}");
    let ready =
        |c: &Cluster| c.json(&["get", "endpoints", "web"])["subsets"][0]["addresses"].as_array().map_or(0, Vec::len);
    eventually(60, "3 ready endpoints", || (ready(&c) == 3).then_some(()));
    let ep = c.json(&["get", "endpoints", "web"]);
    assert_eq!(ep["subsets"][0]["ports"][0]["port"], 80, "{ep}");
    assert_eq!(ep["subsets"][0]["addresses"][0]["targetRef"]["kind"], "Pod", "{ep}");

    // An address in use, or outside the range, is a 422 naming the field.
    for (name, bad, why) in
        [("dup", ip.as_str(), "already allocated"), ("far", "192.168.7.7", "not in the valid range")]
    {
        let o = c.kubectl(&["create", "service", "clusterip", name, "--tcp=80:80", "--clusterip", bad]);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success() && err.contains("spec.clusterIP") && err.contains(why), "{err}");
    }
    // The address is kept across updates and cannot be changed.
    c.ok(&["label", "svc", "web", "team=a"]);
    assert_eq!(c.json(&["get", "svc", "web"])["spec"]["clusterIP"], ip.as_str());
    let o = c.kubectl(&["patch", "svc", "web", "--type=merge", "-p", r#"{"spec":{"clusterIP":"10.96.0.77"}}"#]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("immutable"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    c.ok(&["scale", "deployment", "web", "--replicas=0"]);
    eventually(30, "no endpoints left", || (ready(&c) == 0).then_some(()));
    c.ok(&["delete", "svc", "web"]);
    eventually(30, "the Endpoints removed with the Service", || {
        (!c.kubectl(&["get", "endpoints", "web"]).status.success()).then_some(())
    });
}

macro_rules! on_both_backends {
    ($($name:ident),*) => {
        mod embedded { $(#[test] fn $name() { super::$name(super::Backend::Embedded) })* }
        mod etcd { $(#[test] fn $name() { super::$name(super::Backend::Etcd) })* }
    };
}
on_both_backends!(
    deployment_apply_scale_rollout_undo_describe_delete,
    get_watch_streams_changes,
    job_runs_to_completion,
    lease_expiry_turns_node_not_ready_and_evicts_pods,
    node_credentials_reach_only_their_own_pods_and_secrets,
    errors_are_kubernetes_status_codes,
    kill9_under_write_load_loses_nothing_acknowledged_and_watches_resume,
    imperative_create_with_protobuf_bodies,
    daemonset_runs_one_pod_per_eligible_node,
    bootstrap_token_join_gets_a_node_certificate,
    services_get_cluster_ips_and_endpoints_follow_ready_pods
);
