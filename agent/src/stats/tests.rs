use std::collections::HashMap;

use berth_proto::runtime::v1 as cri;
use k8s_openapi::api::core::v1::Pod;

use super::*;
use crate::pod::fake::FakeRuntime;

fn pod() -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
        "spec": {"containers": [{"name": "app", "image": "busybox"}], "volumes": [{"name": "scratch", "emptyDir": {}}]},
        "status": {"startTime": "2026-01-02T03:04:05Z"}
    }))
    .unwrap()
}

fn stats(id: &str, name: &str, cpu: u64, ws: u64) -> cri::ContainerStats {
    let v = |value| Some(cri::UInt64Value { value });
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: id.into(),
            metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
            labels: HashMap::from([(spec::LABEL_POD_UID.to_string(), "u1".to_string())]),
            annotations: HashMap::new(),
        }),
        cpu: Some(cri::CpuUsage { timestamp: 5_000_000_000, usage_core_nano_seconds: v(cpu), ..Default::default() }),
        memory: Some(cri::MemoryUsage {
            timestamp: 5_000_000_000,
            working_set_bytes: v(ws),
            usage_bytes: v(ws + 10),
            ..Default::default()
        }),
        writable_layer: Some(cri::FilesystemUsage { used_bytes: v(4096), inodes_used: v(3), ..Default::default() }),
        ..Default::default()
    }
}

#[tokio::test]
async fn collects_running_containers_from_cri_and_renders_both_apis() {
    let rt = FakeRuntime::default();
    let p = pod();
    let mut sb = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "web".into(),
            namespace: "default".into(),
            uid: "u1".into(),
            attempt: 0,
        }),
        ..Default::default()
    };
    sb.labels.insert(spec::LABEL_POD_UID.into(), "u1".into());
    let sb_id = rt.run_pod_sandbox(sb.clone()).await.unwrap();
    let mut cfg = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "app".into(), attempt: 0 }),
        ..Default::default()
    };
    cfg.labels.insert(spec::LABEL_POD_UID.into(), "u1".into());
    let id = rt.create_container(&sb_id, cfg.clone(), sb.clone()).await.unwrap();
    rt.start_container(&id).await.unwrap();
    let exited = rt.create_container(&sb_id, cfg, sb).await.unwrap();
    rt.state.lock().unwrap().container_stats =
        vec![stats(&id, "app", 2_500_000_000, 1 << 20), stats(&exited, "app", 7, 7)];
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("pods/u1/volumes/empty-dir/scratch")).unwrap();
    std::fs::write(dir.path().join("pods/u1/volumes/empty-dir/scratch/f"), vec![1u8; 10_000]).unwrap();
    let paths = Paths { proc_root: Path::new("/proc"), root_dir: dir.path(), log_root: dir.path() };
    let snap = collect(&rt, "n1", &[p], &paths).await;
    assert!(!snap.scrape_error);
    assert!(snap.cpu_ns.unwrap() > 0 && snap.memory.unwrap().working_set > 0, "host figures from /proc");
    let pod = &snap.pods[0];
    assert_eq!(pod.containers.len(), 1, "only the running instance: {:?}", pod.containers);
    assert_eq!((pod.cpu_ns, pod.working_set), (2_500_000_000, 1 << 20), "no sandbox stats: the containers' sum");
    assert!(pod.volumes[0].1 >= 10_000, "{:?}", pod.volumes);

    let rates = Rates::default();
    let sum = summary(&snap, &rates);
    let jp = &sum["pods"][0];
    assert_eq!(sum["node"]["nodeName"], "n1");
    assert!(sum["node"]["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap() > 0);
    assert!(sum["node"]["fs"]["capacityBytes"].as_u64().unwrap() > 0);
    assert!(sum["node"]["rlimit"]["maxpid"].as_u64().unwrap() > 0);
    assert_eq!(jp["podRef"], json!({"name": "web", "namespace": "default", "uid": "u1"}));
    assert_eq!(jp["startTime"], "2026-01-02T03:04:05Z");
    assert_eq!(jp["containers"][0]["name"], "app");
    assert_eq!(jp["containers"][0]["cpu"]["usageCoreNanoSeconds"], 2_500_000_000u64);
    assert_eq!(jp["containers"][0]["rootfs"]["usedBytes"], 4096);
    assert_eq!(jp["volume"][0]["name"], "scratch");
    assert!(jp["ephemeral-storage"]["usedBytes"].as_u64().unwrap() >= 14_096);
    assert!(jp["cpu"].get("usageNanoCores").is_none(), "one reading is no rate yet");

    // A second reading a second later at +0.5 CPU-seconds: half a core.
    let mut later = snap.clone();
    later.pods[0].ts_ns += 1_000_000_000;
    later.pods[0].cpu_ns += 500_000_000;
    assert_eq!(summary(&later, &rates)["pods"][0]["cpu"]["usageNanoCores"], 500_000_000u64);

    let text = prometheus::resource_metrics(&snap);
    assert!(
        text.contains(
            "container_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"web\"} 2.5 5000\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "container_memory_working_set_bytes{container=\"app\",namespace=\"default\",pod=\"web\"} 1048576 5000\n"
        ),
        "{text}"
    );
    assert!(text.contains("pod_cpu_usage_seconds_total{namespace=\"default\",pod=\"web\"} 2.5 "), "{text}");
    assert!(text.contains("# TYPE node_cpu_usage_seconds_total counter\nnode_cpu_usage_seconds_total "), "{text}");
    assert!(text.contains("container_start_time_seconds{container=\"app\""), "{text}");
    assert!(text.ends_with("resource_scrape_error 0\n"), "{text}");
}
