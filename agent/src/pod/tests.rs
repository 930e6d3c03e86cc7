use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::runtime::v1 as cri;
use k8s_openapi::api::core::v1::{ConfigMapKeySelector, Container, EnvVar, EnvVarSource, Pod, PodSpec, PodStatus};
use k8s_openapi::chrono::{DateTime, TimeZone, Utc};

use super::fake::FakeRuntime;
use super::*;
use crate::spec::{EnvSources, NodeFacts};

struct NoSources;

impl EnvSources for NoSources {
    fn config_map(&self, _: &str, _: &str) -> Option<BTreeMap<String, String>> {
        None
    }
    fn secret(&self, _: &str, _: &str) -> Option<BTreeMap<String, String>> {
        None
    }
    fn pod_ip(&self) -> Option<String> {
        None
    }
    fn host_ip(&self) -> Option<String> {
        Some("192.168.1.2".into())
    }
}

fn c(name: &str) -> Container {
    Container { name: name.into(), image: Some("busybox:1.36".into()), ..Default::default() }
}

fn pod(init: Vec<Container>, apps: Vec<Container>, policy: &str) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some("web".into());
    p.metadata.namespace = Some("default".into());
    p.metadata.uid = Some("uid-1".into());
    p.spec = Some(PodSpec {
        init_containers: (!init.is_empty()).then_some(init),
        containers: apps,
        restart_policy: Some(policy.into()),
        ..Default::default()
    });
    p
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
}

fn nanos(secs: i64) -> i64 {
    at(secs).timestamp_nanos_opt().unwrap()
}

struct Harness {
    rt: Arc<FakeRuntime>,
    worker: Worker<FakeRuntime>,
    node: NodeFacts,
    probes: ProbeState,
}

impl Harness {
    fn new() -> Harness {
        let rt = Arc::new(FakeRuntime::default());
        Harness {
            worker: Worker::new(rt.clone(), "fake"),
            rt,
            node: NodeFacts { log_root: "/var/log/pods".into(), ..Default::default() },
            probes: ProbeState::default(),
        }
    }

    async fn sync(&mut self, pod: &Pod, now: i64) -> SyncOutcome {
        let mounts = |_: &Container| Ok(Vec::new());
        let cx = PodContext {
            pod,
            env: &NoSources,
            node: &self.node,
            memory_capacity: 1 << 30,
            mounts: &mounts,
            probes: &self.probes,
            pull_auth: &|_: &str| None,
            now: at(now),
        };
        self.worker.sync(&cx).await.expect("sync")
    }
}

fn state_of(status: &PodStatus, name: &str) -> (String, i32) {
    let all = status.container_statuses.iter().flatten().chain(status.init_container_statuses.iter().flatten());
    let s = all.into_iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no status for {name}"));
    let st = s.state.clone().unwrap();
    let what = if st.running.is_some() {
        "running".to_string()
    } else if let Some(t) = st.terminated {
        format!("terminated:{}", t.reason.unwrap_or_default())
    } else {
        format!("waiting:{}", st.waiting.unwrap().reason.unwrap_or_default())
    };
    (what, s.restart_count)
}

fn cond(status: &PodStatus, kind: &str) -> String {
    status.conditions.iter().flatten().find(|c| c.type_ == kind).map(|c| c.status.clone()).unwrap_or_default()
}

#[tokio::test]
async fn init_containers_run_in_order_before_apps() {
    let mut h = Harness::new();
    let p = pod(vec![c("first"), c("second")], vec![c("app")], "Always");
    let out = h.sync(&p, 0).await;
    assert_eq!(h.rt.state.lock().unwrap().log, ["run-sandbox sb1", "create first", "start first"]);
    assert_eq!(out.status.phase.as_deref(), Some("Pending"));
    assert_eq!(cond(&out.status, "Initialized"), "False");
    assert_eq!(state_of(&out.status, "app").0, "waiting:PodInitializing");
    assert!(out.requeue.is_some(), "a running init container is polled");

    h.sync(&p, 1).await;
    assert_eq!(h.rt.instances("second"), 0, "second waits for first");
    h.rt.exit("first", 0, nanos(2));
    h.sync(&p, 3).await;
    assert_eq!(h.rt.instances("second"), 1);
    assert_eq!(h.rt.instances("app"), 0);
    h.rt.exit("second", 0, nanos(4));
    let out = h.sync(&p, 5).await;
    assert_eq!(state_of(&out.status, "app").0, "running");
    assert_eq!(state_of(&out.status, "first").0, "terminated:Completed");
    assert_eq!(out.status.phase.as_deref(), Some("Running"));
    assert_eq!((cond(&out.status, "Initialized"), cond(&out.status, "Ready")), ("True".into(), "True".into()));
    assert_eq!(out.status.pod_ip.as_deref(), Some("10.0.0.5"));
    assert_eq!(out.status.qos_class.as_deref(), Some("BestEffort"));
}

#[tokio::test]
async fn crash_loop_backs_off_doubling() {
    let mut h = Harness::new();
    let p = pod(vec![], vec![c("app")], "Always");
    h.sync(&p, 0).await;
    h.rt.exit("app", 1, nanos(1));
    let out = h.sync(&p, 1).await;
    assert_eq!(state_of(&out.status, "app"), ("running".into(), 1), "the first restart is immediate");

    h.rt.exit("app", 1, nanos(2));
    let out = h.sync(&p, 3).await;
    assert_eq!(state_of(&out.status, "app"), ("waiting:CrashLoopBackOff".into(), 1));
    assert_eq!(out.requeue, Some(Duration::from_secs(9)), "10 s after the exit");
    let last = out.status.container_statuses.unwrap()[0].last_state.clone().unwrap();
    assert_eq!(last.terminated.unwrap().exit_code, 1);
    assert_eq!(h.sync(&p, 11).await.status.phase.as_deref(), Some("Running"), "still backing off, pod stays Running");
    assert_eq!(h.rt.instances("app"), 2);
    let out = h.sync(&p, 12).await;
    assert_eq!(state_of(&out.status, "app"), ("running".into(), 2));

    h.rt.exit("app", 1, nanos(13));
    let out = h.sync(&p, 14).await;
    assert_eq!(out.requeue, Some(Duration::from_secs(19)), "then 20 s");
    assert_eq!(h.rt.instances("app"), 2, "instances older than the previous one are collected");
    h.sync(&p, 33).await;
    assert_eq!(state_of(&h.sync(&p, 34).await.status, "app").1, 3);
}

#[tokio::test]
async fn restart_policies_decide_the_end() {
    let mut h = Harness::new();
    let never = pod(vec![], vec![c("a"), c("b")], "Never");
    h.sync(&never, 0).await;
    h.rt.exit("a", 0, nanos(1));
    let out = h.sync(&never, 2).await;
    assert!(!out.terminal, "b still runs");
    assert_eq!(state_of(&out.status, "a").0, "terminated:Completed");
    h.rt.exit("b", 3, nanos(3));
    let out = h.sync(&never, 4).await;
    assert!(out.terminal);
    assert_eq!(out.status.phase.as_deref(), Some("Failed"));
    assert_eq!(state_of(&out.status, "b").0, "terminated:Error");
    assert_eq!(cond(&out.status, "Ready"), "False");

    let mut h = Harness::new();
    let on_failure = pod(vec![], vec![c("job")], "OnFailure");
    h.sync(&on_failure, 0).await;
    h.rt.exit("job", 2, nanos(1));
    assert_eq!(state_of(&h.sync(&on_failure, 1).await.status, "job"), ("running".into(), 1), "a failure is retried");
    h.rt.exit("job", 0, nanos(2));
    let out = h.sync(&on_failure, 3).await;
    assert_eq!((out.terminal, out.status.phase.as_deref()), (true, Some("Succeeded")));
    assert!(
        h.rt.state.lock().unwrap().log.last().unwrap().starts_with("stop-sandbox"),
        "a finished pod's sandbox is stopped"
    );
}

#[tokio::test]
async fn a_failed_init_container_fails_a_never_pod() {
    let mut h = Harness::new();
    let p = pod(vec![c("setup")], vec![c("app")], "Never");
    h.sync(&p, 0).await;
    h.rt.exit("setup", 1, nanos(1));
    let out = h.sync(&p, 2).await;
    assert_eq!((out.terminal, out.status.phase.as_deref()), (true, Some("Failed")));
    assert_eq!(h.rt.instances("app"), 0);
}

#[tokio::test]
async fn image_and_config_errors_are_waiting_reasons() {
    let mut h = Harness::new();
    h.rt.state.lock().unwrap().bad_images.insert("nope:1".into());
    let mut bad = c("app");
    bad.image = Some("nope:1".into());
    let p = pod(vec![], vec![bad], "Always");
    let out = h.sync(&p, 0).await;
    assert_eq!(state_of(&out.status, "app").0, "waiting:ErrImagePull");
    let out = h.sync(&p, 1).await;
    assert_eq!(state_of(&out.status, "app").0, "waiting:ImagePullBackOff");
    assert_eq!(h.rt.state.lock().unwrap().pulls, 1, "no pull while backing off");
    assert_eq!(out.status.phase.as_deref(), Some("Pending"));

    let mut h = Harness::new();
    let mut cfg = c("app");
    cfg.env = Some(vec![EnvVar {
        name: "X".into(),
        value_from: Some(EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector { name: "missing".into(), key: "k".into(), optional: None }),
            ..Default::default()
        }),
        ..Default::default()
    }]);
    let out = h.sync(&pod(vec![], vec![cfg], "Always"), 0).await;
    let st = out.status.container_statuses.unwrap()[0].state.clone().unwrap().waiting.unwrap();
    assert_eq!(st.reason.as_deref(), Some("CreateContainerConfigError"));
    assert!(st.message.unwrap().contains("configMap \"missing\" not found"));
}

#[tokio::test]
async fn a_dead_sandbox_is_replaced_and_a_new_worker_adopts_what_runs() {
    let mut h = Harness::new();
    let p = pod(vec![], vec![c("app")], "Always");
    h.sync(&p, 0).await;
    // An agent restart: a fresh worker sees the running container and creates nothing.
    let mut fresh = Harness {
        rt: h.rt.clone(),
        worker: Worker::new(h.rt.clone(), "fake"),
        node: h.node.clone(),
        probes: ProbeState::default(),
    };
    let before = h.rt.state.lock().unwrap().log.len();
    let out = fresh.sync(&p, 1).await;
    assert_eq!(h.rt.state.lock().unwrap().log.len(), before, "nothing created or started again");
    assert_eq!(state_of(&out.status, "app"), ("running".into(), 0));

    h.rt.set_sandbox_ready(false);
    let out = fresh.sync(&p, 2).await;
    let st = h.rt.state.lock().unwrap();
    assert_eq!(st.sandboxes.len(), 1, "the old sandbox is gone");
    let (cfg, ready, _) = st.sandboxes.values().next().unwrap();
    assert_eq!((cfg.metadata.as_ref().unwrap().attempt, *ready), (1, true));
    drop(st);
    assert_eq!(state_of(&out.status, "app").0, "running");
}

#[tokio::test]
async fn sidecars_start_before_apps_and_stop_with_the_pod() {
    let mut h = Harness::new();
    let mut side = c("proxy");
    side.restart_policy = Some("Always".into());
    let p = pod(vec![side], vec![c("job")], "Never");
    h.sync(&p, 0).await;
    let out = h.sync(&p, 1).await;
    assert_eq!(state_of(&out.status, "job").0, "running", "the sidecar does not block initialization");
    assert_eq!(state_of(&out.status, "proxy").0, "running");
    h.rt.exit("job", 0, nanos(2));
    let out = h.sync(&p, 3).await;
    assert_eq!(out.status.phase.as_deref(), Some("Succeeded"));
    let st = h.rt.state.lock().unwrap();
    assert!(
        st.containers.values().all(|(_, _, s)| s.state != cri::ContainerState::ContainerRunning as i32),
        "sidecar stopped"
    );
}

#[tokio::test]
async fn terminate_removes_everything() {
    let mut h = Harness::new();
    let p = pod(vec![], vec![c("a"), c("b")], "Always");
    h.sync(&p, 0).await;
    assert!(h.worker.terminate(&p, 30).await.unwrap());
    let st = h.rt.state.lock().unwrap();
    assert!(st.sandboxes.is_empty() && st.containers.is_empty());
}

#[test]
fn pull_policy_defaults() {
    use super::worker::default_pull_policy as d;
    assert_eq!(d("busybox"), "Always");
    assert_eq!(d("busybox:latest"), "Always");
    assert_eq!(d("registry:5000/busybox"), "Always");
    assert_eq!(d("registry:5000/busybox:1.36"), "IfNotPresent");
    assert_eq!(d("busybox@sha256:abc"), "IfNotPresent");
}

#[tokio::test]
async fn a_probed_container_is_not_ready_or_started_before_its_probe_answers() {
    let mut h = Harness::new();
    let probe = || {
        Some(k8s_openapi::api::core::v1::Probe {
            exec: Some(k8s_openapi::api::core::v1::ExecAction { command: Some(vec!["true".into()]) }),
            ..Default::default()
        })
    };
    let (mut readied, mut gated) = (c("readied"), c("gated"));
    readied.readiness_probe = probe();
    gated.startup_probe = probe();
    let p = pod(vec![], vec![readied, gated, c("plain")], "Always");
    h.sync(&p, 0).await;
    let out = h.sync(&p, 1).await;
    let st = |name: &str| out.status.container_statuses.iter().flatten().find(|s| s.name == name).cloned().unwrap();
    assert_eq!(state_of(&out.status, "readied").0, "running");
    assert!(!st("readied").ready && st("readied").started == Some(true), "no readiness result yet: not ready");
    assert!(!st("gated").ready && st("gated").started == Some(false), "no startup result yet: not started");
    assert!(st("plain").ready && st("plain").started == Some(true), "no probes: ready once running");
    assert_eq!(cond(&out.status, "Ready"), "False");
    h.probes.ready.insert("readied".into(), true);
    h.probes.started.insert("gated".into(), true);
    let out = h.sync(&p, 2).await;
    assert_eq!(cond(&out.status, "Ready"), "True", "{:?}", out.status.conditions);
}
