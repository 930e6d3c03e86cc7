//! Three "hosts" (network namespaces on a shared underlay bridge), each with berth-shim and
//! berth-agent, the first also with berth-control and the registry. The agents keep the VXLAN
//! (or host-gw) conflist and peers; pods on different hosts talk over the overlay; a Deployment
//! spreads; a host whose agent stops turns NotReady, its pods move, and it rejoins.

use std::time::Duration;

use berth_integration::multi::{Multi, HOSTS};
use berth_integration::startup::{self, percentile};

fn echo_pod(name: &str, node: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox:1.36\n    command: [nc, -ll, -p, \"8080\", -e, /bin/cat]\n")
}

fn cross_host_traffic_and_failover(mode: &str, tag: &str) {
    let mut m = Multi::start(mode, tag);
    m.wait("three Ready nodes", Duration::from_secs(60), |m| m.ready_nodes() == HOSTS);
    let nodes: Vec<String> = (0..HOSTS).map(|n| format!("node-{tag}{n}")).collect();
    for (n, node) in nodes.iter().enumerate() {
        m.apply(&echo_pod(&format!("echo{n}"), node));
    }
    m.wait("the echo pods", Duration::from_secs(90), |m| {
        (0..HOSTS).all(|n| m.pod_field(&format!("echo{n}"), ".status.phase") == "Running")
    });
    let ips: Vec<String> = (0..HOSTS).map(|n| m.pod_field(&format!("echo{n}"), ".status.podIP")).collect();
    let subnets: std::collections::HashSet<String> =
        ips.iter().map(|ip| ip.rsplit_once('.').unwrap().0.to_string()).collect();
    assert_eq!(subnets.len(), HOSTS, "each node has its own pod subnet: {ips:?}");
    // From the pod on host 0 to the pods on hosts 1 and 2: a TCP round trip through the overlay.
    for (n, target) in ips.iter().enumerate().skip(1) {
        let payload = format!("hello-from-0-to-{n}");
        let mut got = (0, String::new());
        for _ in 0..20 {
            got = m.exec(0, "echo0", &["sh", "-c", &format!("echo {payload} | nc -w 2 {target} 8080")]);
            if got.1.contains(&payload) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        assert!(got.1.contains(&payload), "{mode}: TCP to {target} on host {n}: {got:?}");
    }
    // A larger transfer back from host 2 to host 0.
    let (code, out) = m.exec(
        2,
        "echo2",
        &["sh", "-c", &format!("dd if=/dev/zero bs=1k count=512 2>/dev/null | nc -w 3 {} 8080 | wc -c", ips[0])],
    );
    assert_eq!((code, out.trim()), (0, "524288"), "512 KiB echoed across hosts");

    // Start-up latency across the three nodes: 60 pods created at once, spread by the
    // scheduler; from each pod's creation to Running as a watch sees it.
    let yaml = (0..60)
        .map(|i| format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: st{i}, labels: {{startup: \"1\"}}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox:1.36\n    command: [sleep, \"100000\"]\n"))
        .collect::<Vec<_>>()
        .join("---\n");
    let kubectl = || {
        let mut k = m.hosts[0].ns.command("kubectl");
        k.arg("--kubeconfig").arg(&m.kubeconfig);
        k
    };
    let s = startup::measure(&kubectl, "startup=1", yaml, 60, Duration::from_secs(180)).expect("60 pods running");
    eprintln!(
        "{mode}: 60 pods over {HOSTS} nodes: start-up p50 {:.2} s, p99 {:.2} s; from the create command p50 {:.2} s, p99 {:.2} s (last created at {:.2} s)",
        percentile(&s.per_pod, 0.5),
        percentile(&s.per_pod, 0.99),
        percentile(&s.from_create, 0.5),
        percentile(&s.from_create, 0.99),
        s.created_last
    );
    let _ = m.kubectl(&["delete", "pods", "-l", "startup=1", "--wait=false"]);
    m.wait("the start-up pods gone", Duration::from_secs(120), |m| {
        m.kubectl(&["get", "pods", "-l", "startup=1", "-o", "name"]).is_empty()
    });

    // A Deployment of 6 spreads over the nodes; stopping one agent moves its pods.
    m.apply("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 6\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      tolerations:\n      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}\n      - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}\n      containers: [{name: c, image: busybox:1.36, command: [sleep, \"100000\"]}]\n");
    let running_on = |m: &Multi| -> Vec<String> {
        m.kubectl(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "--field-selector",
            "status.phase=Running",
            "-o",
            "jsonpath={.items[*].spec.nodeName}",
        ])
        .split_whitespace()
        .map(str::to_string)
        .collect()
    };
    m.wait("6 replicas running", Duration::from_secs(90), |m| running_on(m).len() == 6);
    let spread: std::collections::HashSet<String> = running_on(&m).into_iter().collect();
    assert!(spread.len() >= 2, "replicas spread over nodes: {spread:?}");
    let victim = 2;
    m.stop_agent(victim);
    m.wait("the stopped node to turn NotReady", Duration::from_secs(60), |m| m.ready_nodes() == HOSTS - 1);
    m.wait("its pods to move", Duration::from_secs(90), |m| {
        let on = running_on(m);
        on.len() == 6 && !on.contains(&nodes[victim])
    });
    m.start_agent(victim);
    m.wait("the node to rejoin", Duration::from_secs(60), |m| m.ready_nodes() == HOSTS);
}

#[test]
#[ignore = "needs root"]
fn three_hosts_over_vxlan() {
    cross_host_traffic_and_failover("vxlan", "v");
}

#[test]
#[ignore = "needs root"]
fn three_hosts_over_host_gw() {
    cross_host_traffic_and_failover("host-gw", "g");
}
