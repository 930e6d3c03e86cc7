//! berth-shim over its real gRPC socket: every RPC family against a real registry on loopback
//! and the reference CNI plugins, all inside a network namespace made for the test.

use std::collections::HashMap;
use std::time::Duration;

use berth_integration::cri::{container_config, env};
use berth_proto::runtime::v1::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn pod_lifecycle_logs_exec_and_idempotence() {
    let mut e = env("life", 5101, "10.89.1.0/24", true).await;
    let v = e.rt.version(VersionRequest::default()).await.unwrap().into_inner();
    assert_eq!((v.runtime_name.as_str(), v.runtime_api_version.as_str()), ("berth", "v1"));
    let st = e.rt.status(StatusRequest { verbose: false }).await.unwrap().into_inner().status.unwrap();
    assert!(st.conditions.iter().all(|c| c.status), "{st:?}");

    let image_ref = e.pull().await;
    assert!(image_ref.starts_with("sha256:"), "{image_ref}");
    let listed = e.img.list_images(ListImagesRequest::default()).await.unwrap().into_inner().images;
    assert!(
        listed.iter().any(|i| i.id == image_ref && i.repo_tags.iter().any(|t| t == "docker.io/library/busybox:latest")),
        "{listed:?}"
    );

    let (pod, pod_config) = e.run_pod("web").await;
    let ps =
        e.rt.pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: true })
            .await
            .unwrap()
            .into_inner();
    let ip = ps.status.as_ref().unwrap().network.as_ref().unwrap().ip.clone();
    assert!(ip.starts_with("10.89.1."), "pod IP {ip:?}");
    assert_eq!(ps.status.unwrap().state, PodSandboxState::SandboxReady as i32);

    // Output on both streams, a long line, then a long-running sleep.
    let script = "echo hello; echo oops >&2; printf '%0.sx' $(seq 1 20000); echo; hostname; exec sleep 1000";
    let c = e.create(&pod, &pod_config, container_config("app", &["sh", "-c", script])).await;
    assert_eq!(e.status(&c).await.state, ContainerState::ContainerCreated as i32);
    e.rt.start_container(StartContainerRequest { container_id: c.clone() }).await.unwrap();
    assert_eq!(e.status(&c).await.state, ContainerState::ContainerRunning as i32);

    let r =
        e.rt.exec_sync(ExecSyncRequest {
            container_id: c.clone(),
            cmd: vec!["sh".into(), "-c".into(), "echo out; echo err >&2; exit 3".into()],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code), (&b"out\n"[..], &b"err\n"[..], 3));
    let t =
        e.rt.exec_sync(ExecSyncRequest { container_id: c.clone(), cmd: vec!["sleep".into(), "30".into()], timeout: 1 })
            .await;
    assert!(t.is_err(), "ExecSync past its timeout must fail");
    let r =
        e.rt.exec_sync(ExecSyncRequest {
            container_id: c.clone(),
            cmd: vec!["sh".into(), "-c".into(), "ps -o args | grep -c '^[s]leep 30' || true".into()],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "0", "the timed-out exec is gone");

    let log = std::fs::read_to_string(e.logs.join("app.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let fields = |l: &str| l.splitn(4, ' ').map(str::to_string).collect::<Vec<_>>();
    assert!(
        lines.iter().any(|l| {
            let f = fields(l);
            f[1] == "stdout" && f[2] == "F" && f[3] == "hello"
        }),
        "{log}"
    );
    assert!(
        lines.iter().any(|l| {
            let f = fields(l);
            f[1] == "stderr" && f[2] == "F" && f[3] == "oops"
        }),
        "{log}"
    );
    assert!(lines.iter().any(|l| fields(l)[2] == "P"), "a 20000-byte line is split into partials");
    assert!(lines.iter().any(|l| fields(l)[3] == "web"), "hostname is the pod's: {log}");

    let listed =
        e.rt.list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: pod.clone(),
                label_selector: HashMap::from([("c".into(), "app".into())]),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 1);
    let stats =
        e.rt.container_stats(ContainerStatsRequest { container_id: c.clone() })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
    assert!(stats.memory.unwrap().working_set_bytes.unwrap().value > 0);

    e.rt.stop_container(StopContainerRequest { container_id: c.clone(), timeout: 2 }).await.unwrap();
    let st = e.status(&c).await;
    assert_eq!(
        (st.state, st.exit_code, st.reason.as_str()),
        (ContainerState::ContainerExited as i32, 143, "Error"),
        "SIGTERM first"
    );
    e.rt.stop_container(StopContainerRequest { container_id: c.clone(), timeout: 2 })
        .await
        .expect("stop again is fine");

    // One that ignores SIGTERM is SIGKILLed when the timeout runs out.
    let stubborn = e
        .create(
            &pod,
            &pod_config,
            container_config("stubborn", &["sh", "-c", "trap '' TERM; while true; do sleep 1; done"]),
        )
        .await;
    e.rt.start_container(StartContainerRequest { container_id: stubborn.clone() }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = std::time::Instant::now();
    e.rt.stop_container(StopContainerRequest { container_id: stubborn.clone(), timeout: 1 }).await.unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(900), "waited for the timeout");
    let st = e.status(&stubborn).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (137, "Error"));

    // A container that exits on its own keeps its code.
    let d = e.create(&pod, &pod_config, container_config("done", &["sh", "-c", "exit 7"])).await;
    e.rt.start_container(StartContainerRequest { container_id: d.clone() }).await.unwrap();
    let st = e.wait_exited(&d).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (7, "Error"));
    assert!(st.finished_at >= st.started_at && st.started_at > 0);

    e.rt.remove_container(RemoveContainerRequest { container_id: c.clone() }).await.unwrap();
    e.rt.remove_container(RemoveContainerRequest { container_id: c.clone() }).await.expect("remove again is fine");
    assert!(e.rt.container_status(ContainerStatusRequest { container_id: c.clone(), verbose: false }).await.is_err());

    e.rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    e.rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.expect("stop pod again");
    e.rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    e.rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.expect("remove pod again");
    assert!(e.rt.list_pod_sandbox(ListPodSandboxRequest::default()).await.unwrap().into_inner().items.is_empty());
    assert!(e.rt.list_containers(ListContainersRequest::default()).await.unwrap().into_inner().containers.is_empty());
    // Nothing left: no allocation in IPAM, no pod directories, no monitor.
    let ipam = e.shim.dir.join("ipam/berth-test");
    let leftover: Vec<_> = std::fs::read_dir(&ipam)
        .map(|rd| rd.flatten().map(|e| e.file_name()).filter(|n| n.to_string_lossy().starts_with("10.")).collect())
        .unwrap_or_default();
    assert!(leftover.is_empty(), "leaked IPs {leftover:?}");
    assert_eq!(std::fs::read_dir(e.shim.dir.join("run/pods")).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn shim_kill9_keeps_containers_and_exit_codes() {
    let mut e = env("k9", 5102, "10.89.2.0/24", true).await;
    e.pull().await;
    let (pod, pod_config) = e.run_pod("k9").await;
    let long = e.create(&pod, &pod_config, container_config("long", &["sleep", "1000"])).await;
    e.rt.start_container(StartContainerRequest { container_id: long.clone() }).await.unwrap();
    let short = e.create(&pod, &pod_config, container_config("short", &["sh", "-c", "sleep 1; exit 42"])).await;
    e.rt.start_container(StartContainerRequest { container_id: short.clone() }).await.unwrap();
    let pid_before =
        e.rt.container_status(ContainerStatusRequest { container_id: long.clone(), verbose: true })
            .await
            .unwrap()
            .into_inner()
            .info["info"]
            .clone();

    e.shim.kill9_and_restart().expect("restart");
    e.reconnect().await;
    // The short container exits while the shim is down: its code must not be lost.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let st = e.wait_exited(&short).await;
    assert_eq!(st.exit_code, 42);
    let st = e.status(&long).await;
    assert_eq!(st.state, ContainerState::ContainerRunning as i32);
    let pid_after =
        e.rt.container_status(ContainerStatusRequest { container_id: long.clone(), verbose: true })
            .await
            .unwrap()
            .into_inner()
            .info["info"]
            .clone();
    assert_eq!(pid_before, pid_after, "same process, not a new one");
    assert_eq!(
        e.rt.list_containers(ListContainersRequest::default()).await.unwrap().into_inner().containers.len(),
        2,
        "nothing duplicated"
    );
    let r = e
        .rt
        .exec_sync(ExecSyncRequest { container_id: long.clone(), cmd: vec!["echo".into(), "alive".into()], timeout: 5 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.stdout, b"alive\n");
    e.rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    assert_eq!(std::fs::read_dir(e.shim.dir.join("run/pods")).unwrap().count(), 0);
}

/// The shim dies exactly between two steps of CreateContainer (the monitor made the
/// container, the record has no pid yet) and of StartContainer (Running recorded, the start
/// not yet asked for). The caller saw an error both times: after the restart the half-made
/// container is gone without a trace and can be created again, and the unstarted one is
/// Created and starts, keeping its exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn shim_killed_mid_create_or_start_recovers() {
    let mut e = env("cut", 5108, "10.89.8.0/24", true).await;
    e.pull().await;
    let (pod, pod_config) = e.run_pod("cut").await;
    let runtime_dir = e.shim.dir.join("run/runtime");
    let count = |d: &std::path::Path| std::fs::read_dir(d).map(|rd| rd.count()).unwrap_or(0);
    let (runtime_before, bundles_before) = (count(&runtime_dir), count(&e.shim.dir.join("run/bundles")));

    e.shim.restart_crashing_at(Some("create:monitor-answered")).expect("restart");
    e.reconnect().await;
    let config = Some(container_config("c", &["sh", "-c", "exit 3"]));
    let cut =
        e.rt.create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config,
            sandbox_config: Some(pod_config.clone()),
        })
        .await;
    assert!(cut.is_err(), "the shim died mid-create: {cut:?}");
    e.shim.wait_dead(Duration::from_secs(10)).expect("shim died at its crash point");
    e.shim.restart_crashing_at(None).expect("restart");
    e.reconnect().await;
    assert!(
        e.rt.list_containers(ListContainersRequest::default()).await.unwrap().into_inner().containers.is_empty(),
        "the half-made container is rolled back"
    );
    assert_eq!(
        (count(&runtime_dir), count(&e.shim.dir.join("run/bundles"))),
        (runtime_before, bundles_before),
        "no runtime state or bundle left behind"
    );
    let c = e.create(&pod, &pod_config, container_config("c", &["sh", "-c", "exit 3"])).await;
    e.rt.start_container(StartContainerRequest { container_id: c.clone() }).await.unwrap();
    assert_eq!(e.wait_exited(&c).await.exit_code, 3);

    let d = e.create(&pod, &pod_config, container_config("d", &["sh", "-c", "exit 5"])).await;
    e.shim.restart_crashing_at(Some("start:running-recorded")).expect("restart");
    e.reconnect().await;
    let cut = e.rt.start_container(StartContainerRequest { container_id: d.clone() }).await;
    assert!(cut.is_err(), "the shim died mid-start: {cut:?}");
    e.shim.wait_dead(Duration::from_secs(10)).expect("shim died at its crash point");
    e.shim.restart_crashing_at(None).expect("restart");
    e.reconnect().await;
    assert_eq!(e.status(&d).await.state, ContainerState::ContainerCreated as i32, "the start never happened");
    e.rt.start_container(StartContainerRequest { container_id: d.clone() }).await.expect("start after recovery");
    let st = e.wait_exited(&d).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (5, "Error"));
    assert_eq!(
        e.rt.list_containers(ListContainersRequest::default()).await.unwrap().into_inner().containers.len(),
        2,
        "nothing duplicated"
    );
    e.rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    assert_eq!(std::fs::read_dir(e.shim.dir.join("run/pods")).unwrap().count(), 0);
}

/// A pod whose containers have PID namespaces of their own (as the kubelet asks unless
/// shareProcessNamespace) has no infra process: its monitor holds the pod's UTS and IPC
/// namespaces, with its hostname and sysctls, and keeps holding them across a kill -9 of the
/// shim. A sysctl the kernel refuses fails the sandbox by name, leaving nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn pods_without_a_shared_pid_namespace_have_no_infra_process() {
    let mut e = env("held", 5109, "10.89.9.0/24", true).await;
    e.pull().await;
    let logs = e.logs.clone();
    let held_config = |sysctls: &[(&str, &str)]| {
        let mut config = berth_integration::cri::sandbox_config("held", &logs);
        config.linux = Some(LinuxPodSandboxConfig {
            sysctls: sysctls.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption { pid: NamespaceMode::Container as i32, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        });
        config
    };
    let config = held_config(&[("kernel.shm_rmid_forced", "1"), ("net.ipv4.ip_local_port_range", "40000 41000")]);
    let pod =
        e.rt.run_pod_sandbox(RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() })
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
    let holder = |info: &HashMap<String, String>| {
        serde_json::from_str::<serde_json::Value>(&info["info"]).unwrap()["pid"].as_i64().unwrap()
    };
    let status =
        e.rt.pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: true })
            .await
            .unwrap()
            .into_inner();
    let pid = holder(&status.info);
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap().trim(),
        "berth-monitor",
        "the pod's monitor holds its namespaces"
    );
    let ns =
        |pid: &str, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap().display().to_string();
    assert_ne!(ns(&pid.to_string(), "ipc"), ns("self", "ipc"));
    assert_ne!(ns(&pid.to_string(), "uts"), ns("self", "uts"));

    let own_pid_ns = |name: &str, mode: NamespaceMode| {
        let mut c = container_config(name, &["sleep", "1000"]);
        c.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(NamespaceOption { pid: mode as i32, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        });
        c
    };
    let shared = CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(own_pid_ns("shared", NamespaceMode::Pod)),
        sandbox_config: Some(config.clone()),
    };
    let err = e.rt.create_container(shared).await.unwrap_err();
    assert!(
        err.message().contains("namespace_options.pid"),
        "no PID namespace to share, not the host's: {}",
        err.message()
    );
    let probe = "hostname; cat /proc/sys/kernel/shm_rmid_forced /proc/sys/net/ipv4/ip_local_port_range; readlink /proc/self/ns/ipc; readlink /proc/self/ns/uts; cat /proc/1/comm";
    let mut seen = Vec::new();
    for name in ["a", "b"] {
        let c = e.create(&pod, &config, own_pid_ns(name, NamespaceMode::Container)).await;
        e.rt.start_container(StartContainerRequest { container_id: c.clone() }).await.unwrap();
        let r =
            e.rt.exec_sync(ExecSyncRequest {
                container_id: c.clone(),
                cmd: vec!["sh".into(), "-c".into(), probe.into()],
                timeout: 10,
            })
            .await
            .unwrap()
            .into_inner();
        seen.push(String::from_utf8_lossy(&r.stdout).to_string());
        seen.push(c);
    }
    let expected =
        format!("held\n1\n40000\t41000\n{}\n{}\nsleep\n", ns(&pid.to_string(), "ipc"), ns(&pid.to_string(), "uts"));
    assert_eq!(
        (seen[0].as_str(), seen[2].as_str()),
        (expected.as_str(), expected.as_str()),
        "both containers: the pod's hostname, sysctls and namespaces; PID 1 their own"
    );
    let stats =
        e.rt.pod_sandbox_stats(PodSandboxStatsRequest { pod_sandbox_id: pod.clone() })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
    assert_eq!(
        stats.linux.unwrap().process.unwrap().process_count.unwrap().value,
        2,
        "two containers, no infra process"
    );

    e.shim.kill9_and_restart().expect("restart");
    e.reconnect().await;
    let status =
        e.rt.pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: true })
            .await
            .unwrap()
            .into_inner();
    assert_eq!((holder(&status.info), status.status.unwrap().state), (pid, PodSandboxState::SandboxReady as i32));
    let r =
        e.rt.exec_sync(ExecSyncRequest { container_id: seen[1].clone(), cmd: vec!["hostname".into()], timeout: 5 })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(r.stdout, b"held\n");
    e.rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    assert_eq!(std::fs::read_dir(e.shim.dir.join("run/pods")).unwrap().count(), 0);

    let bad = held_config(&[("net.ipv4.no_such_sysctl", "1")]);
    let err =
        e.rt.run_pod_sandbox(RunPodSandboxRequest { config: Some(bad), runtime_handler: String::new() })
            .await
            .unwrap_err();
    assert!(err.message().contains("net.ipv4.no_such_sysctl"), "{}", err.message());
    assert_eq!(e.rt.list_pod_sandbox(ListPodSandboxRequest::default()).await.unwrap().into_inner().items.len(), 0);
    for dir in ["run/pods", "run/netns"] {
        assert_eq!(std::fs::read_dir(e.shim.dir.join(dir)).map(|d| d.count()).unwrap_or(0), 0, "{dir} is empty");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn network_not_ready_without_cni_config_and_bad_requests_are_named() {
    let mut e = env("nocni", 5103, "10.89.3.0/24", false).await;
    let st = e.rt.status(StatusRequest { verbose: false }).await.unwrap().into_inner().status.unwrap();
    let net = st.conditions.iter().find(|c| c.r#type == "NetworkReady").unwrap();
    assert!(!net.status && net.reason == "NetworkPluginNotReady", "{net:?}");
    let err =
        e.rt.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(PodSandboxConfig::default()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("metadata"), "{}", err.message());
    let err =
        e.rt.create_container(CreateContainerRequest {
            pod_sandbox_id: "nope".into(),
            config: Some(container_config("x", &["true"])),
            sandbox_config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = e
        .img
        .pull_image(PullImageRequest {
            image: Some(ImageSpec { image: "Bad Name!".into(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("Bad Name!"), "{}", err.message());
}
