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
    c.wait_for(LONG, "the bound token to be refused", |c| {
        token_review(c, &token, &[])["status"]["authenticated"] == false
    })
    .unwrap();
}

fn metric(text: &str, prefix: &str) -> f64 {
    let line = text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
#[ignore = "needs root"]
fn stats_summary_and_resource_metrics_through_the_api_proxy() {
    stats_through_the_proxy(Cluster::start("stats", 5231, "10.89.31.0/24").expect("cluster"), Runtime::BerthShim);
}

#[test]
#[ignore = "needs root"]
fn stats_summary_and_resource_metrics_with_containerd() {
    stats_through_the_proxy(
        Cluster::start_with("statsctd", 5233, "10.89.33.0/24", Runtime::Containerd).expect("cluster"),
        Runtime::Containerd,
    );
}

fn stats_through_the_proxy(c: Cluster, runtime: Runtime) {
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: busy}}\nspec:\n  containers:\n  - name: app\n    image: {}\n    command: [sh, -c, \"echo started; dd if=/dev/zero of=/scratch/blob bs=1k count=2048; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo warm; sleep 1000\"]\n    volumeMounts: [{{name: scratch, mountPath: /scratch}}]\n  volumes: [{{name: scratch, emptyDir: {{}}}}]\n",
        c.image
    ))
    .unwrap();
    c.wait_for(LONG, "the pod to warm up", |c| c.container_output("busy", "app").contains("warm")).unwrap();
    let base = format!("/api/v1/nodes/{}/proxy", c.node);
    let summary = || -> Value {
        serde_json::from_str(&c.kubectl(&["get", "--raw", &format!("{base}/stats/summary")]).unwrap()).unwrap()
    };
    let first = summary();
    std::thread::sleep(Duration::from_millis(1100));
    let s = summary();
    let node = &s["node"];
    assert_eq!(node["nodeName"], c.node.as_str());
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    assert!(n(&node["cpu"]["usageCoreNanoSeconds"]) > 0 && node["cpu"]["usageNanoCores"].is_u64(), "{node}");
    assert!(n(&node["memory"]["workingSetBytes"]) > 0 && n(&node["memory"]["availableBytes"]) > 0, "{node}");
    assert!(n(&node["fs"]["capacityBytes"]) > 0 && n(&node["fs"]["usedBytes"]) > 0, "{node}");
    assert!(
        n(&node["runtime"]["imageFs"]["capacityBytes"]) > 0 && node["runtime"]["imageFs"]["usedBytes"].is_u64(),
        "{node}"
    );
    if runtime == Runtime::BerthShim {
        // containerd 1.6 measures its snapshots in the background: 0 for its first minute.
        assert!(n(&node["runtime"]["imageFs"]["usedBytes"]) > 0, "{node}");
    }
    assert!(n(&node["rlimit"]["maxpid"]) > 0 && n(&node["rlimit"]["curproc"]) > 0, "{node}");
    assert!(node["network"]["interfaces"].is_array(), "{node}");
    let pod = s["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podRef"]["name"] == "busy")
        .unwrap_or_else(|| panic!("{s}"))
        .clone();
    let app = &pod["containers"][0];
    assert_eq!(app["name"], "app");
    let (cpu, ws) = (n(&app["cpu"]["usageCoreNanoSeconds"]), n(&app["memory"]["workingSetBytes"]));
    assert!(cpu > 0 && ws > 0, "{app}");
    assert!(n(&app["logs"]["usedBytes"]) > 0 && app["rootfs"]["usedBytes"].is_u64(), "{app}");
    assert!(n(&pod["cpu"]["usageCoreNanoSeconds"]) >= cpu && n(&pod["memory"]["workingSetBytes"]) >= ws, "{pod}");
    assert!(pod["cpu"]["usageNanoCores"].is_u64(), "a rate from the previous reading: {pod}");
    let vol = pod["volume"].as_array().unwrap().iter().find(|v| v["name"] == "scratch").unwrap().clone();
    assert!(n(&vol["usedBytes"]) >= 2048 * 1024, "{vol}");
    assert!(n(&pod["ephemeral-storage"]["usedBytes"]) >= 2048 * 1024, "{pod}");
    assert!(pod["startTime"].is_string() && app["startTime"].is_string(), "{pod}");
    assert!(first["pods"].as_array().is_some_and(|p| !p.is_empty()));
    eprintln!(
        "summary: node cpu {} ns ({} nanocores), node working set {} B; busy/app cpu {cpu} ns, working set {ws} B, logs {} B, scratch {} B",
        n(&node["cpu"]["usageCoreNanoSeconds"]), n(&node["cpu"]["usageNanoCores"]), n(&node["memory"]["workingSetBytes"]), n(&app["logs"]["usedBytes"]), n(&vol["usedBytes"])
    );

    let text = c.kubectl(&["get", "--raw", &format!("{base}/metrics/resource")]).unwrap();
    let labels = "{container=\"app\",namespace=\"default\",pod=\"busy\"}";
    let ccpu = metric(&text, &format!("container_cpu_usage_seconds_total{labels}"));
    let cws = metric(&text, &format!("container_memory_working_set_bytes{labels}"));
    assert!(ccpu > 0.0 && cws > 0.0, "{text}");
    assert!(metric(&text, &format!("container_start_time_seconds{labels}")) > 1.0e9, "{text}");
    assert!(metric(&text, "pod_cpu_usage_seconds_total{namespace=\"default\",pod=\"busy\"}") >= ccpu, "{text}");
    assert!(metric(&text, "pod_memory_working_set_bytes{namespace=\"default\",pod=\"busy\"}") > 0.0, "{text}");
    assert!(
        metric(&text, "node_cpu_usage_seconds_total ") > 0.0 && metric(&text, "node_memory_working_set_bytes ") > 0.0,
        "{text}"
    );
    assert_eq!(metric(&text, "resource_scrape_error "), 0.0, "{text}");
    assert!(text.contains("# TYPE container_cpu_usage_seconds_total counter"), "{text}");
    eprintln!("metrics/resource: container cpu {ccpu} s, working set {cws} B");
}

/// Tags of the images the runtime holds.
fn image_tags(c: &Cluster) -> Vec<String> {
    let socket = c.cri_socket.clone();
    tokio::runtime::Runtime::new().unwrap().block_on(async move {
        let (_, mut img) = berth_integration::cri::connect(&socket).await.unwrap();
        let list = img
            .list_images(berth_proto::runtime::v1::ListImagesRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .images;
        list.into_iter().flat_map(|i| i.repo_tags).collect()
    })
}

#[test]
#[ignore = "needs root"]
fn image_gc_removes_unused_images_and_keeps_used_ones() {
    // Thresholds no disk is under: every pass wants to free all it may.
    let gc = "imageGCHighThresholdPercent: 1\nimageGCLowThresholdPercent: 0\nimageMinimumGCAge: 0s\n";
    let c = Cluster::start_custom("imggc", 5232, "10.89.32.0/24", Runtime::BerthShim, gc).expect("cluster");
    c.registry.push_busybox(&c.ns, "library/busybox:gc", &["true"]).unwrap();
    let pod = |name: &str, image: &str, cmd: &str, policy: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  restartPolicy: {policy}\n  containers: [{{name: c, image: {image}, command: [sh, -c, \"{cmd}\"]}}]\n")
    };
    c.apply(&pod("keep", &c.image, "sleep 1000", "Always")).unwrap();
    c.apply(&pod("once", "busybox:gc", "true", "Never")).unwrap();
    c.wait_for(LONG, "the pods to run and finish", |c| {
        c.pod("keep").is_ok_and(|p| p["status"]["phase"] == "Running")
            && c.pod("once").is_ok_and(|p| p["status"]["phase"] == "Succeeded")
    })
    .unwrap();
    let tags = image_tags(&c);
    assert!(tags.iter().any(|t| t.ends_with("busybox:gc")), "{tags:?}");
    // While its (exited) container exists the image stays; once the pod is gone it goes.
    c.kubectl(&["delete", "pod", "once"]).unwrap();
    c.wait_for(Duration::from_secs(90), "the unused image to be collected", |c| {
        !image_tags(c).iter().any(|t| t.ends_with("busybox:gc"))
    })
    .unwrap();
    let tags = image_tags(&c);
    assert!(tags.iter().any(|t| t.ends_with("busybox:1.36")), "the running pod's image stays: {tags:?}");
    let log = std::fs::read_to_string(c.dir.join("agent.log")).unwrap();
    assert!(
        log.lines().any(|l| l.contains("image garbage-collected") && l.contains("busybox:gc")),
        "{}",
        c.agent_log()
    );
    assert_eq!(c.pod("keep").unwrap()["status"]["phase"], "Running");
}
