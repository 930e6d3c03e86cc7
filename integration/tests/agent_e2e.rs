//! berth-agent end to end: berth-control + berth-agent + berth-shim in a network namespace,
//! driven with kubectl. Each test is one cluster; what it shows is in its name.

use std::time::{Duration, Instant};

use berth_integration::cluster::{Cluster, Runtime};
use serde_json::Value;

fn status_of<'a>(pod: &'a Value, container: &str) -> &'a Value {
    let all = pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(pod["status"]["initContainerStatuses"].as_array().into_iter().flatten());
    all.into_iter().find(|s| s["name"] == container).unwrap_or(&Value::Null)
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True")
}

const LONG: Duration = Duration::from_secs(60);

#[test]
#[ignore = "needs root"]
fn probes_restart_and_readiness_and_hooks_run_in_order() {
    probes_and_hooks(Cluster::start("probe", 5201, "10.89.21.0/24").expect("cluster"));
}

#[test]
#[ignore = "needs root"]
fn probes_and_hooks_with_containerd() {
    probes_and_hooks(Cluster::start_with("probe-ctrd", 5205, "10.89.25.0/24", Runtime::Containerd).expect("cluster"));
}

fn probes_and_hooks(c: Cluster) {
    let order = c.dir.join("order");
    std::fs::create_dir_all(&order).unwrap();
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: probed}}
spec:
  terminationGracePeriodSeconds: 5
  volumes: [{{name: order, hostPath: {{path: {order}, type: Directory}}}}]
  containers:
  - name: app
    image: {image}
    command: [sh, -c, "trap 'echo term >> /order/log; exit 0' TERM; touch /tmp/alive; sleep 3; touch /tmp/ready; while true; do sleep 1; done"]
    volumeMounts: [{{name: order, mountPath: /order}}]
    livenessProbe: {{exec: {{command: [test, -f, /tmp/alive]}}, periodSeconds: 1, failureThreshold: 2}}
    readinessProbe: {{exec: {{command: [test, -f, /tmp/ready]}}, periodSeconds: 1}}
    lifecycle:
      postStart: {{exec: {{command: [sh, -c, "echo post-start >> /order/log"]}}}}
      preStop: {{exec: {{command: [sh, -c, "echo pre-stop >> /order/log"]}}}}
"#,
        order = order.display(),
        image = c.image
    ))
    .unwrap();
    c.wait_for(LONG, "the pod to run", |c| c.pod("probed").is_ok_and(|p| p["status"]["phase"] == "Running")).unwrap();
    let p = c.pod("probed").unwrap();
    assert!(!ready(&p), "not ready before /tmp/ready exists: {}", p["status"]);
    c.wait_for(LONG, "readiness to turn Ready", |c| c.pod("probed").is_ok_and(|p| ready(&p))).unwrap();
    assert_eq!(std::fs::read_to_string(order.join("log")).unwrap(), "post-start\n");

    // Liveness: remove the file the probe checks; the container is restarted.
    let id = status_of(&c.pod("probed").unwrap(), "app")["containerID"].as_str().unwrap().to_string();
    let cid = id.split("://").nth(1).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (mut client, _) = berth_integration::cri::connect(&c.cri_socket).await.unwrap();
        let req = berth_proto::runtime::v1::ExecSyncRequest {
            container_id: cid.into(),
            cmd: vec!["rm".into(), "/tmp/alive".into()],
            timeout: 5,
        };
        client.exec_sync(req).await.unwrap();
    });
    c.wait_for(LONG, "a liveness restart", |c| {
        c.pod("probed").is_ok_and(|p| status_of(&p, "app")["restartCount"].as_i64().unwrap_or(0) >= 1)
    })
    .unwrap();
    let events = c
        .kubectl(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=probed",
            "-o",
            "jsonpath={.items[*].reason}",
        ])
        .unwrap();
    assert!(events.contains("Killing") && events.contains("Started"), "events: {events}");
    c.wait_for(LONG, "Ready again after the restart", |c| c.pod("probed").is_ok_and(|p| ready(&p))).unwrap();

    // Deletion: preStop, then SIGTERM (the trap), then the pod is gone.
    std::fs::write(order.join("log"), "").unwrap();
    let t0 = Instant::now();
    c.kubectl(&["delete", "pod", "probed", "--wait=true", "--timeout=60s"]).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(20), "deleted within the grace period: {:?}", t0.elapsed());
    let log = std::fs::read_to_string(order.join("log")).unwrap();
    assert_eq!(log, "pre-stop\nterm\n", "preStop runs before the container is signalled");
}

#[test]
#[ignore = "needs root"]
fn init_containers_shared_empty_dir_and_config_map_updates() {
    init_volumes_and_config(Cluster::start("init", 5202, "10.89.22.0/24").expect("cluster"));
}

#[test]
#[ignore = "needs root"]
fn init_containers_and_volumes_with_containerd() {
    init_volumes_and_config(
        Cluster::start_with("init-ctrd", 5206, "10.89.26.0/24", Runtime::Containerd).expect("cluster"),
    );
}

fn init_volumes_and_config(c: Cluster) {
    c.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {greeting: hello}\n").unwrap();
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: staged}}
spec:
  volumes:
  - {{name: shared, emptyDir: {{}}}}
  - {{name: cfg, configMap: {{name: settings}}}}
  initContainers:
  - {{name: first, image: {image}, command: [sh, -c, "echo one >> /shared/steps"], volumeMounts: [{{name: shared, mountPath: /shared}}]}}
  - {{name: second, image: {image}, command: [sh, -c, "test \"$(cat /shared/steps)\" = one && echo two >> /shared/steps"], volumeMounts: [{{name: shared, mountPath: /shared}}]}}
  containers:
  - name: writer
    image: {image}
    command: [sh, -c, "cat /shared/steps; echo from-writer > /shared/note; while true; do sleep 1; done"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  - name: reader
    image: {image}
    command: [sh, -c, "while true; do cat /shared/note /cfg/greeting 2>/dev/null; echo; sleep 1; done"]
    env: [{{name: GREETING, valueFrom: {{configMapKeyRef: {{name: settings, key: greeting}}}}}}]
    volumeMounts: [{{name: shared, mountPath: /shared}}, {{name: cfg, mountPath: /cfg}}]
"#,
        image = c.image
    ))
    .unwrap();
    c.wait_for(LONG, "the pod to run", |c| c.pod("staged").is_ok_and(|p| p["status"]["phase"] == "Running")).unwrap();
    let p = c.pod("staged").unwrap();
    for name in ["first", "second"] {
        assert_eq!(
            status_of(&p, name)["state"]["terminated"]["reason"],
            "Completed",
            "{name}: {}",
            status_of(&p, name)
        );
    }
    let first_done = status_of(&p, "first")["state"]["terminated"]["finishedAt"].as_str().unwrap().to_string();
    let second_start = status_of(&p, "second")["state"]["terminated"]["startedAt"].as_str().unwrap().to_string();
    assert!(first_done <= second_start, "in order: {first_done} then {second_start}");
    assert!(
        c.container_output("staged", "writer").starts_with("one\ntwo\n"),
        "{}",
        c.container_output("staged", "writer")
    );
    c.wait_for(LONG, "the reader to see the writer's file and the configMap", |c| {
        c.container_output("staged", "reader").contains("from-writer\nhello")
    })
    .unwrap();

    c.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {greeting: bonjour}\n").unwrap();
    c.wait_for(LONG, "the configMap update in the mounted volume", |c| {
        c.container_output("staged", "reader").contains("bonjour")
    })
    .unwrap();
    assert_eq!(status_of(&c.pod("staged").unwrap(), "reader")["restartCount"], 0, "updated in place, no restart");
}

#[test]
#[ignore = "needs root"]
fn oom_kills_crash_loops_graceful_stops_and_agent_restarts() {
    let mut c = Cluster::start("oom", 5203, "10.89.23.0/24").expect("cluster");
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: hungry}}
spec:
  restartPolicy: Never
  containers:
  - name: eat
    image: {image}
    command: [dd, if=/dev/zero, of=/dev/null, bs=300M, count=1]
    resources: {{limits: {{memory: 64Mi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: crasher}}
spec:
  containers: [{{name: crash, image: {image}, command: [sh, -c, "exit 3"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: stubborn}}
spec:
  terminationGracePeriodSeconds: 3
  containers: [{{name: app, image: {image}, command: [sh, -c, "trap '' TERM; while true; do sleep 1; done"]}}]
"#,
        image = c.image
    ))
    .unwrap();
    c.wait_for(LONG, "the OOM kill", |c| c.pod("hungry").is_ok_and(|p| p["status"]["phase"] == "Failed")).unwrap();
    let eat = status_of(&c.pod("hungry").unwrap(), "eat").clone();
    assert_eq!(eat["state"]["terminated"]["reason"], "OOMKilled", "{eat}");
    assert_eq!(c.pod("hungry").unwrap()["status"]["qosClass"], "Burstable");

    // CrashLoopBackOff: restarts come later and later.
    c.wait_for(Duration::from_secs(90), "three restarts", |c| {
        c.pod("crasher").is_ok_and(|p| status_of(&p, "crash")["restartCount"].as_i64().unwrap_or(0) >= 3)
    })
    .unwrap();
    let p = c.pod("crasher").unwrap();
    let st = status_of(&p, "crash");
    let waiting = st["state"]["waiting"]["reason"].as_str().unwrap_or_default().to_string();
    assert!(waiting == "CrashLoopBackOff" || st["state"]["running"].is_object(), "{st}");
    assert_eq!(st["lastState"]["terminated"]["exitCode"], 3);
    let started: Vec<String> = c
        .kubectl(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=crasher,reason=Started",
            "-o",
            "jsonpath={.items[*].firstTimestamp}",
        ])
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert!(started.len() >= 4, "{started:?}");
    let mut t: Vec<i64> =
        started.iter().map(|s| k8s_openapi::chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp()).collect();
    t.sort();
    let gaps: Vec<i64> = t.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[1] >= 9 && gaps[2] >= 19, "back-off 10 s then 20 s: gaps {gaps:?}");

    // An agent killed with -9 and restarted adopts what runs: same container, no restart.
    c.wait_for(LONG, "stubborn running", |c| c.pod("stubborn").is_ok_and(|p| p["status"]["phase"] == "Running"))
        .unwrap();
    let before = status_of(&c.pod("stubborn").unwrap(), "app")["containerID"].clone();
    c.kill9_agent();
    c.start_agent().unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let after = c.pod("stubborn").unwrap();
    assert_eq!(status_of(&after, "app")["containerID"], before, "the same container: {}", c.agent_log());
    assert_eq!(status_of(&after, "app")["restartCount"], 0);

    // It ignores SIGTERM: deletion waits out the 3 s grace period, then SIGKILL.
    let t0 = Instant::now();
    c.kubectl(&["delete", "pod", "stubborn", "--wait=true", "--timeout=60s"]).unwrap();
    let took = t0.elapsed();
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(15), "grace period honoured: {took:?}");
}

#[test]
#[ignore = "needs root"]
fn static_pods_get_mirror_pods() {
    let c = Cluster::start("static", 5204, "10.89.24.0/24").expect("cluster");
    let manifest = c.dir.join("manifests/web.yaml");
    std::fs::write(&manifest, format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  containers: [{{name: web, image: {}, command: [sh, -c, 'echo static; sleep 1000']}}]\n", c.image)).unwrap();
    let name = format!("web-{}", c.node);
    c.wait_for(LONG, "the mirror pod to run", |c| c.pod(&name).is_ok_and(|p| p["status"]["phase"] == "Running"))
        .unwrap();
    let p = c.pod(&name).unwrap();
    assert!(p["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string(), "{}", p["metadata"]);
    assert_eq!(p["spec"]["nodeName"], c.node.as_str());
    c.wait_for(LONG, "the static pod's output", |c| c.container_output(&name, "web").contains("static")).unwrap();
    // Removing the manifest removes the pod and its mirror.
    std::fs::remove_file(&manifest).unwrap();
    c.wait_for(LONG, "the mirror pod to go", |c| c.kubectl(&["get", "pods", "-o", "name"]).is_ok_and(|o| o.is_empty()))
        .unwrap();
}

#[test]
#[ignore = "needs root"]
fn pods_are_evicted_under_memory_pressure_best_effort_first() {
    // A threshold no machine meets: the node is always under memory pressure.
    let c = Cluster::start_custom(
        "evict",
        5207,
        "10.89.27.0/24",
        Runtime::BerthShim,
        "evictionHard: {memory.available: 100Ti}\n",
    )
    .expect("cluster");
    let pod = |name: &str, resources: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {}\n  containers:\n  - name: c\n    image: {}\n    command: [sleep, \"1000\"]\n    resources: {resources}\n", c.node, c.image)
    };
    c.apply(&pod("guaranteed", "{limits: {memory: 32Mi, cpu: 100m}}")).unwrap();
    c.apply(&pod("besteffort", "{}")).unwrap();
    c.wait_for(LONG, "the BestEffort pod's eviction", |c| {
        c.pod("besteffort").is_ok_and(|p| p["status"]["reason"] == "Evicted")
    })
    .unwrap();
    let p = c.pod("besteffort").unwrap();
    assert_eq!(p["status"]["phase"], "Failed");
    assert!(p["status"]["message"].as_str().unwrap_or_default().contains("low on resource: memory"), "{}", p["status"]);
    let g = c.pod("guaranteed").unwrap();
    assert_ne!(g["status"]["reason"], "Evicted", "BestEffort goes first");
    let events = c
        .kubectl(&["get", "events", "--field-selector", "involvedObject.name=besteffort,reason=Evicted", "-o", "name"])
        .unwrap();
    assert!(!events.is_empty(), "an Evicted event");
    // The evicted pod stays down (no containers come back), even for a restarted agent.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.pod("besteffort").unwrap()["status"]["phase"], "Failed");
}

#[test]
#[ignore = "needs root"]
fn kubectl_logs_exec_and_port_forward_through_the_control_plane() {
    let c = Cluster::start("kctl", 5208, "10.89.28.0/24").expect("cluster");
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: talk}}\nspec:\n  containers:\n  - name: app\n    image: {}\n    command: [sh, -c, \"echo first; (nc -ll -p 8080 -e /bin/cat &); i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done\"]\n",
        c.image
    ))
    .unwrap();
    c.wait_for(LONG, "the pod to run", |c| c.pod("talk").is_ok_and(|p| p["status"]["phase"] == "Running")).unwrap();
    c.wait_for(LONG, "kubectl logs", |c| c.kubectl(&["logs", "talk"]).is_ok_and(|o| o.starts_with("first\ntick 1")))
        .unwrap();
    let tail = c.kubectl(&["logs", "talk", "--tail=1"]).unwrap();
    assert!(tail.starts_with("tick ") && !tail.contains('\n'), "{tail:?}");

    // logs -f streams: new lines arrive while the command runs.
    let out =
        c.ns.command("timeout")
            .args(["4", "kubectl", "--kubeconfig"])
            .arg(&c.kubeconfig)
            .args(["logs", "-f", "talk", "--tail=1"])
            .output()
            .unwrap();
    let followed = String::from_utf8_lossy(&out.stdout);
    assert!(followed.matches("tick").count() >= 3, "follow streamed new lines: {followed:?}");

    // exec, with stdin, and its exit code.
    let out = c
        .kubectl_output(
            &["exec", "-i", "talk", "--", "sh", "-c", "cat; echo done >&2; exit 3"],
            Some("through stdin\n"),
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through stdin\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("done"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "the exit code comes back");
    assert_eq!(c.kubectl(&["exec", "talk", "--", "hostname"]).unwrap(), "talk");

    // port-forward to the pod's echo server (which answers inside the pod first).
    c.wait_for(LONG, "the echo server in the pod", |c| {
        c.kubectl(&["exec", "talk", "--", "sh", "-c", "echo inside | nc -w 1 127.0.0.1 8080"])
            .is_ok_and(|o| o.contains("inside"))
    })
    .unwrap();
    let mut pf = c.ns.command("kubectl");
    let pf_log = c.dir.join("port-forward.log");
    let pf_err = std::fs::File::create(&pf_log).unwrap();
    pf.arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(["port-forward", "-v=6", "pod/talk", "18080:8080"])
        .stdout(pf_err.try_clone().unwrap())
        .stderr(pf_err);
    let mut child = pf.spawn().unwrap();
    let mut got = String::new();
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(300));
        let out =
            c.ns.command("sh")
                .args(["-c", "echo via-port-forward | busybox nc -w 2 127.0.0.1 18080"])
                .output()
                .unwrap();
        got = String::from_utf8_lossy(&out.stdout).into_owned();
        if got.contains("via-port-forward") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        got.contains("via-port-forward"),
        "port-forward echoed: {got:?}\n{}\n{}",
        std::fs::read_to_string(&pf_log).unwrap_or_default(),
        c.agent_log()
    );
}

#[test]
#[ignore = "needs root"]
fn host_ports_reach_the_pod_and_go_with_it() {
    host_ports(Cluster::start("hport", 5209, "10.89.29.0/24").expect("cluster"));
}

#[test]
#[ignore = "needs root"]
fn host_ports_with_containerd() {
    host_ports(Cluster::start_with("hport-ctrd", 5210, "10.89.34.0/24", Runtime::Containerd).expect("cluster"));
}

/// A container port with a hostPort: reachable on the node (through the CNI conflist's
/// port mapping), and unmapped once the pod is deleted.
fn host_ports(c: Cluster) {
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: hp}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: app\n    image: {}\n    command: [sh, -c, \"nc -ll -p 8080 -e /bin/cat\"]\n    ports: [{{containerPort: 8080, hostPort: 18090}}]\n",
        c.image
    ))
    .unwrap();
    c.wait_for(LONG, "the pod to run", |c| c.pod("hp").is_ok_and(|p| p["status"]["phase"] == "Running")).unwrap();
    let echo = |c: &Cluster| {
        let out =
            c.ns.command("sh").args(["-c", "echo via-host-port | busybox nc -w 2 127.0.0.1 18090"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).contains("via-host-port")
    };
    c.wait_for(LONG, "the host port to echo", &echo).unwrap_or_else(|e| panic!("{e}\n{}", c.agent_log()));
    let mapped = |c: &Cluster| {
        c.ns.command("nft")
            .args(["list", "map", "inet", "berth-portmap", "dnat4"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("18090"))
            .unwrap_or(false)
    };
    assert!(mapped(&c), "the node's DNAT map holds the port");
    c.kubectl(&["delete", "pod", "hp", "--wait=true", "--timeout=60s"]).unwrap();
    c.wait_for(LONG, "the mapping to go with the pod", |c| !mapped(c)).unwrap();
    assert!(!echo(&c), "nothing answers on the host port any more");
}
