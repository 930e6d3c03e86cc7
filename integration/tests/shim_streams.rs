//! berth-shim's streaming URLs (Exec, Attach, PortForward) driven by a WebSocket client of this
//! repository, terminal containers, the remaining RPCs (resources update, log reopen, events,
//! stats, list streams, runtime config, image status/removal/fs info) and hostile image layers
//! through PullImage — all over the real gRPC socket, against a registry on loopback.

use std::collections::HashMap;
use std::time::Duration;

use berth_integration::cri::{container_config, env, Env};
use berth_integration::streaming::{self as ws, WsChannels};
use berth_proto::runtime::v1::*;
use tokio_stream::StreamExt;

const WAIT: Duration = Duration::from_secs(15);

/// Connects to a streaming URL from inside the shim's network namespace and upgrades.
async fn open(e: &Env, url: &str, protocol: &str) -> WsChannels {
    let tcp = e.ns.connect(ws::url_addr(url).expect("url")).await.expect("connect to the streaming server");
    let session = WsChannels::upgrade(tcp, url, protocol)
        .await
        .unwrap_or_else(|err| panic!("upgrade {url}: {err:#}\n{}", e.shim.log_tail()));
    assert_eq!(session.protocol, protocol, "negotiated subprotocol");
    session
}

async fn exec_url(e: &mut Env, id: &str, cmd: &[&str], tty: bool, stdin: bool) -> String {
    let req = ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    };
    e.rt.exec(req).await.expect("Exec").into_inner().url
}

async fn attach_url(e: &mut Env, id: &str, tty: bool) -> String {
    let req = AttachRequest { container_id: id.into(), stdin: true, tty, stdout: true, stderr: !tty };
    e.rt.attach(req).await.expect("Attach").into_inner().url
}

async fn start(e: &mut Env, pod: &str, pod_config: &PodSandboxConfig, c: ContainerConfig) -> String {
    let id = e.create(pod, pod_config, c).await;
    e.rt.start_container(StartContainerRequest { container_id: id.clone() }).await.expect("StartContainer");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn exec_attach_tty_and_port_forward_over_websocket() {
    let mut e = env("strm", 5104, "10.89.4.0/24", true).await;
    e.pull().await;
    let (pod, pod_config) = e.run_pod("strm").await;
    let server =
        start(&mut e, &pod, &pod_config, container_config("echo", &["nc", "-ll", "-p", "8080", "-e", "/bin/cat"]))
            .await;

    // Exec with stdin, both output streams and a non-zero exit code in the error channel.
    let url = exec_url(&mut e, &server, &["sh", "-c", "cat; echo err >&2; exit 3"], false, true).await;
    let mut s = open(&e, &url, "v5.channel.k8s.io").await;
    s.send(ws::STDIN, b"hello through stdin\n").await.unwrap();
    s.close_channel(ws::STDIN).await.unwrap();
    let got = s.collect(WAIT).await.unwrap();
    assert_eq!(got.text(ws::STDOUT), "hello through stdin\n");
    assert_eq!(got.text(ws::STDERR), "err\n");
    let status = got.text(ws::ERROR);
    assert!(status.contains("NonZeroExitCode") && status.contains("\"message\":\"3\""), "exit status: {status}");

    // A successful exec reports Success.
    let url = exec_url(&mut e, &server, &["true"], false, false).await;
    let got = open(&e, &url, "v5.channel.k8s.io").await.collect(WAIT).await.unwrap();
    assert!(got.text(ws::ERROR).contains("Success"), "{:?}", got);

    // A terminal exec: resized, then asked its size and terminal name.
    let url = exec_url(&mut e, &server, &["sh"], true, true).await;
    let mut s = open(&e, &url, "v5.channel.k8s.io").await;
    s.resize(123, 45).await.unwrap();
    s.send(ws::STDIN, b"busybox stty size; busybox tty; exit 5\n").await.unwrap();
    let got = s.collect(WAIT).await.unwrap();
    let out = got.text(ws::STDOUT);
    assert!(out.contains("45 123"), "terminal size after resize: {out:?}");
    assert!(out.contains("/dev/pts/"), "a pty: {out:?}");
    assert!(got.text(ws::ERROR).contains("\"message\":\"5\""), "{}", got.text(ws::ERROR));

    // Exec into a missing container is NotFound at the RPC.
    let err =
        e.rt.exec(ExecRequest {
            container_id: "missing".into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");

    // Attach to a container reading its stdin.
    let mut reader = container_config("reader", &["sh", "-c", "while read l; do echo got:$l; done"]);
    reader.stdin = true;
    let reader = start(&mut e, &pod, &pod_config, reader).await;
    let url = attach_url(&mut e, &reader, false).await;
    let mut s = open(&e, &url, "v5.channel.k8s.io").await;
    s.send(ws::STDIN, b"abc\n").await.unwrap();
    s.read_until(ws::STDOUT, "got:abc", WAIT).await.unwrap();
    s.close().await.unwrap();
    drop(s);
    // The attach's end is not the container's: a second attach still talks to it.
    let url = attach_url(&mut e, &reader, false).await;
    let mut s = open(&e, &url, "v5.channel.k8s.io").await;
    s.send(ws::STDIN, b"again\n").await.unwrap();
    s.read_until(ws::STDOUT, "got:again", WAIT).await.unwrap();
    drop(s);

    // stdin_once: the first attach's end of input is the container's end of input.
    let mut once = container_config("once", &["sh", "-c", "cat; echo eof-seen; exec sleep 1000"]);
    once.stdin = true;
    once.stdin_once = true;
    let once = start(&mut e, &pod, &pod_config, once).await;
    let url = attach_url(&mut e, &once, false).await;
    let mut s = open(&e, &url, "v5.channel.k8s.io").await;
    s.send(ws::STDIN, b"line\n").await.unwrap();
    s.read_until(ws::STDOUT, "line", WAIT).await.unwrap();
    s.close_channel(ws::STDIN).await.unwrap();
    s.read_until(ws::STDOUT, "eof-seen", WAIT).await.unwrap();
    drop(s);

    // A terminal container: its output is logged as stdout, attach types into its terminal.
    let mut term = container_config("term", &["sh"]);
    (term.tty, term.stdin) = (true, true);
    let term = start(&mut e, &pod, &pod_config, term).await;
    let url = attach_url(&mut e, &term, true).await;
    let mut s = open(&e, &url, "v5.channel.k8s.io").await;
    s.resize(77, 22).await.unwrap();
    s.send(ws::STDIN, b"echo tty-$((40+2)); busybox stty size\n").await.unwrap();
    s.read_until(ws::STDOUT, "22 77", WAIT).await.unwrap();
    drop(s);
    let st = e.status(&term).await;
    assert_eq!(st.state, ContainerState::ContainerRunning as i32, "detaching leaves a terminal container running");
    let log = std::fs::read_to_string(e.logs.join("term.log")).unwrap();
    assert!(log.lines().any(|l| l.contains(" stdout ") && l.ends_with("tty-42")), "terminal output logged: {log}");
    assert!(!log.contains(" stderr "), "a terminal has one stream: {log}");

    // Port-forward to the echo server on the pod's loopback (v4 channel protocol).
    let url =
        e.rt.port_forward(PortForwardRequest { pod_sandbox_id: pod.clone(), port: vec![8080] })
            .await
            .expect("PortForward")
            .into_inner()
            .url;
    let mut s = open(&e, &url, "v4.channel.k8s.io").await;
    s.send(0, b"ping-through-the-pod\n").await.unwrap();
    s.read_until(0, "ping-through-the-pod", WAIT).await.unwrap();
    drop(s);
    let err =
        e.rt.port_forward(PortForwardRequest { pod_sandbox_id: "missing".into(), port: vec![80] }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    e.rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
    assert_eq!(std::fs::read_dir(e.shim.dir.join("run/pods")).unwrap().count(), 0, "no pod left behind");
}

/// The host cgroup v1 file `file` of controller `controller` for process `pid`.
fn cgroup_file(pid: i64, controller: &str, file: &str) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = cgroups
        .lines()
        .find_map(|l| {
            l.splitn(3, ':')
                .collect::<Vec<_>>()
                .get(1..)
                .filter(|f| f[0].split(',').any(|c| c == controller))
                .map(|f| f[1].to_string())
        })
        .unwrap_or_else(|| panic!("no {controller} cgroup in {cgroups}"));
    std::fs::read_to_string(format!("/sys/fs/cgroup/{controller}{path}/{file}")).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn resources_logs_events_stats_lists_and_images() {
    let mut e = env("rpcs", 5105, "10.89.5.0/24", true).await;
    let image_ref = e.pull().await;
    let mut events =
        e.rt.get_container_events(GetEventsRequest::default()).await.expect("GetContainerEvents").into_inner();
    let (pod, pod_config) = e.run_pod("rpcs").await;
    let c = start(
        &mut e,
        &pod,
        &pod_config,
        container_config("app", &["sh", "-c", "while true; do echo tick; sleep 0.2; done"]),
    )
    .await;

    // UpdateContainerResources reaches the kernel's cgroup.
    let info =
        e.rt.container_status(ContainerStatusRequest { container_id: c.clone(), verbose: true })
            .await
            .unwrap()
            .into_inner()
            .info["info"]
            .clone();
    let pid = serde_json::from_str::<serde_json::Value>(&info).unwrap()["pid"].as_i64().unwrap();
    let resources = LinuxContainerResources { memory_limit_in_bytes: 96 << 20, cpu_shares: 512, ..Default::default() };
    e.rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: c.clone(),
        linux: Some(resources),
        ..Default::default()
    })
    .await
    .expect("UpdateContainerResources");
    assert_eq!(cgroup_file(pid, "memory", "memory.limit_in_bytes"), (96u64 << 20).to_string());
    assert_eq!(cgroup_file(pid, "cpu", "cpu.shares"), "512");
    let st = e.status(&c).await;
    assert_eq!(
        st.resources.and_then(|r| r.linux).map(|l| l.memory_limit_in_bytes),
        Some(96 << 20),
        "ContainerStatus shows the update"
    );

    // ReopenContainerLog: after a rotation the output goes to a new file at the same path.
    let log = e.logs.join("app.log");
    let rotated = e.logs.join("app.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    e.rt.reopen_container_log(ReopenContainerLogRequest { container_id: c.clone() }).await.expect("ReopenContainerLog");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(std::fs::read_to_string(&log).unwrap().contains("stdout F tick"), "new log gets output");
    assert!(std::fs::read_to_string(&rotated).unwrap().contains("tick"));

    // Stats of containers and pods, and the metrics RPCs.
    let all = e.rt.list_container_stats(ListContainerStatsRequest::default()).await.unwrap().into_inner().stats;
    assert!(all.iter().any(|s| s.attributes.as_ref().is_some_and(|a| a.id == c)), "{all:?}");
    let ps =
        e.rt.pod_sandbox_stats(PodSandboxStatsRequest { pod_sandbox_id: pod.clone() })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
    assert_eq!(ps.attributes.as_ref().unwrap().id, pod);
    assert!(ps.linux.as_ref().and_then(|l| l.memory.as_ref()).is_some_and(|m| m.working_set_bytes.is_some()), "{ps:?}");
    assert_eq!(
        e.rt.list_pod_sandbox_stats(ListPodSandboxStatsRequest::default()).await.unwrap().into_inner().stats.len(),
        1
    );
    e.rt.list_metric_descriptors(ListMetricDescriptorsRequest::default()).await.expect("ListMetricDescriptors");
    e.rt.list_pod_sandbox_metrics(ListPodSandboxMetricsRequest::default()).await.expect("ListPodSandboxMetrics");

    // The streaming list RPCs carry the same objects as the unary ones.
    let streamed: Vec<_> =
        e.rt.stream_containers(StreamContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .collect::<Result<Vec<_>, _>>()
            .await
            .unwrap();
    assert_eq!(streamed.iter().flat_map(|r| &r.containers).count(), 1);
    let streamed: Vec<_> =
        e.rt.stream_pod_sandboxes(StreamPodSandboxesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .collect::<Result<Vec<_>, _>>()
            .await
            .unwrap();
    assert_eq!(streamed.iter().flat_map(|r| &r.pod_sandboxes).count(), 1);
    let streamed: Vec<_> =
        e.rt.stream_container_stats(StreamContainerStatsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .collect::<Result<Vec<_>, _>>()
            .await
            .unwrap();
    assert_eq!(streamed.iter().flat_map(|r| &r.container_stats).count(), 1);
    let streamed: Vec<_> =
        e.rt.stream_pod_sandbox_stats(StreamPodSandboxStatsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .collect::<Result<Vec<_>, _>>()
            .await
            .unwrap();
    assert_eq!(streamed.iter().flat_map(|r| &r.pod_sandbox_stats).count(), 1);
    e.rt.stream_pod_sandbox_metrics(StreamPodSandboxMetricsRequest::default())
        .await
        .expect("StreamPodSandboxMetrics")
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    let streamed: Vec<_> = e
        .img
        .stream_images(StreamImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    assert!(streamed.iter().flat_map(|r| &r.images).any(|i| i.id == image_ref));

    // Runtime configuration.
    let cfg = e.rt.runtime_config(RuntimeConfigRequest {}).await.unwrap().into_inner();
    assert_eq!(cfg.linux.unwrap().cgroup_driver, CgroupDriver::Cgroupfs as i32);
    e.rt.update_runtime_config(UpdateRuntimeConfigRequest {
        runtime_config: Some(RuntimeConfig { network_config: Some(NetworkConfig { pod_cidr: "10.89.5.0/24".into() }) }),
    })
    .await
    .expect("UpdateRuntimeConfig");
    e.rt.update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: pod.clone(),
        ..Default::default()
    })
    .await
    .expect("UpdatePodSandboxResources");
    let err =
        e.rt.checkpoint_container(CheckpointContainerRequest { container_id: c.clone(), ..Default::default() })
            .await
            .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    assert!(err.message().contains("checkpoint"), "{}", err.message());

    // Events: created, started, stopped and deleted, for this container, in order.
    e.rt.stop_container(StopContainerRequest { container_id: c.clone(), timeout: 1 }).await.unwrap();
    e.rt.remove_container(RemoveContainerRequest { container_id: c.clone() }).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let ev = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("event");
        if ev.container_id == c {
            seen.push(ev.container_event_type);
        }
    }
    use ContainerEventType::*;
    assert_eq!(
        seen,
        [ContainerCreatedEvent, ContainerStartedEvent, ContainerStoppedEvent, ContainerDeletedEvent].map(|t| t as i32)
    );

    // Images: status, fs info, removal; unpacked layers go with the last image using them.
    let st = e
        .img
        .image_status(ImageStatusRequest {
            image: Some(ImageSpec { image: "busybox".into(), ..Default::default() }),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.image.as_ref().map(|i| i.id.as_str()), Some(image_ref.as_str()));
    assert!(st.image.unwrap().size > 500_000, "busybox is about 1-2 MB");
    let fs = e.img.image_fs_info(ImageFsInfoRequest {}).await.unwrap().into_inner();
    assert!(
        fs.image_filesystems.first().and_then(|f| f.used_bytes.as_ref()).is_some_and(|u| u.value > 500_000),
        "{fs:?}"
    );
    e.rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
    e.img
        .remove_image(RemoveImageRequest { image: Some(ImageSpec { image: image_ref.clone(), ..Default::default() }) })
        .await
        .expect("RemoveImage");
    let st = e
        .img
        .image_status(ImageStatusRequest {
            image: Some(ImageSpec { image: "busybox".into(), ..Default::default() }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(st.image.is_none(), "removed");
    e.img
        .remove_image(RemoveImageRequest { image: Some(ImageSpec { image: image_ref, ..Default::default() }) })
        .await
        .expect("removing again is fine");
    let layers = std::fs::read_dir(e.shim.dir.join("images/layers")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(layers, 0, "the image's unpacked layers were collected");
}

/// One tar entry with a raw name (and link name): the tar crate refuses to write `..` itself.
fn entry(out: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(data.len() as u64);
    h.set_cksum();
    out.append(&h, data).unwrap();
}

fn layer(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    entry(&mut b, "ok/", tar::EntryType::Directory, "", b"");
    build(&mut b);
    b.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn hostile_layers_are_refused_by_pull_and_leave_nothing() {
    let mut e = env("hostile", 5106, "10.89.6.0/24", false).await;
    let outside = e.tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let target = outside.display().to_string();
    use tar::EntryType::{Link, Regular, Symlink};
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("dotdot", layer(|b| entry(b, "../../../../escape", Regular, "", b"x")), ".."),
        ("nested-dotdot", layer(|b| entry(b, "ok/../../escape", Regular, "", b"x")), ".."),
        (
            "symlink-then-write",
            layer(|b| {
                entry(b, "ok/evil", Symlink, &target, b"");
                entry(b, "ok/evil/pwned", Regular, "", b"x");
            }),
            "evil",
        ),
        (
            "relative-symlink-escape",
            layer(|b| {
                entry(b, "ok/up", Symlink, "../../../../../../..", b"");
                entry(b, "ok/up/tmp/pwned", Regular, "", b"x");
            }),
            "up",
        ),
        ("hardlink-out", layer(|b| entry(b, "ok/passwd", Link, "../../../../etc/passwd", b"")), "passwd"),
    ];
    for (name, bytes, _) in &cases {
        e.registry
            .push_layers(&e.ns, &format!("hostile/{name}:latest"), std::slice::from_ref(bytes))
            .expect("push hostile image");
    }
    for (name, _, needle) in &cases {
        let image = format!("{}/hostile/{name}:latest", e.registry.addr);
        let err = e
            .img
            .pull_image(PullImageRequest {
                image: Some(ImageSpec { image: image.clone(), ..Default::default() }),
                ..Default::default()
            })
            .await
            .expect_err(name);
        assert!(err.message().contains(needle), "{name}: the error names the entry: {}", err.message());
        let st = e
            .img
            .image_status(ImageStatusRequest { image: Some(ImageSpec { image, ..Default::default() }), verbose: false })
            .await
            .unwrap()
            .into_inner();
        assert!(st.image.is_none(), "{name}: no image recorded");
    }
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing written outside the layer root");
    for gone in ["escape", "pwned"] {
        assert!(
            !e.tmp.path().join(gone).exists() && !std::path::Path::new("/tmp").join(gone).exists(),
            "{gone} escaped"
        );
    }
    let count = |d: &str| std::fs::read_dir(e.shim.dir.join("images").join(d)).map(|r| r.count()).unwrap_or(0);
    assert_eq!(
        (count("layers"), count("tmp"), count("snapshots")),
        (0, 0, 0),
        "no half-unpacked layer or snapshot left"
    );
    // The store is intact: a good image still pulls.
    e.pull().await;
    let images: HashMap<_, _> = e
        .img
        .list_images(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images
        .into_iter()
        .map(|i| (i.id.clone(), i))
        .collect();
    assert_eq!(images.len(), 1, "only busybox: {:?}", images.keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn user_namespace_pod_maps_ids_and_owns_its_rootfs() {
    let mut e = env("userns", 5107, "10.89.7.0/24", true).await;
    e.pull().await;
    let range = vec![IdMapping { container_id: 0, host_id: 200_000, length: 65_536 }];
    let userns = UserNamespace { mode: NamespaceMode::Pod as i32, uids: range.clone(), gids: range };
    let options = NamespaceOption { userns_options: Some(userns.clone()), ..Default::default() };
    let mut pod_config = berth_integration::cri::sandbox_config("userns", &e.logs);
    pod_config.linux.get_or_insert_with(Default::default).security_context =
        Some(LinuxSandboxSecurityContext { namespace_options: Some(options.clone()), ..Default::default() });
    let pod =
        e.rt.run_pod_sandbox(RunPodSandboxRequest { config: Some(pod_config.clone()), runtime_handler: String::new() })
            .await
            .unwrap_or_else(|err| panic!("RunPodSandbox: {err}\n{}", e.shim.log_tail()))
            .into_inner()
            .pod_sandbox_id;
    let ps =
        e.rt.pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
    assert!(ps.network.unwrap().ip.starts_with("10.89.7."), "CNI attached the user namespace's network namespace");

    let mut c = container_config(
        "inside",
        &[
            "sh",
            "-c",
            "cat /proc/self/uid_map; id -u; touch /probe && echo wrote; stat -c '%u %g' /bin/busybox; exec sleep 1000",
        ],
    );
    c.linux.get_or_insert_with(Default::default).security_context =
        Some(LinuxContainerSecurityContext { namespace_options: Some(options), ..Default::default() });
    let id = start(&mut e, &pod, &pod_config, c).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = std::fs::read_to_string(e.logs.join("inside.log")).unwrap();
    let out: Vec<&str> = log.lines().map(|l| l.splitn(4, ' ').nth(3).unwrap_or("")).collect();
    assert!(out[0].split_whitespace().eq(["0", "200000", "65536"]), "uid_map: {log}");
    assert_eq!(&out[1..4], ["0", "wrote", "0 0"], "root inside, owner of its idmapped rootfs: {log}");

    // Seen from the host: the process runs as host uid 200000 and its new file is owned by it.
    let info =
        e.rt.container_status(ContainerStatusRequest { container_id: id.clone(), verbose: true })
            .await
            .unwrap()
            .into_inner()
            .info["info"]
            .clone();
    let pid = serde_json::from_str::<serde_json::Value>(&info).unwrap()["pid"].as_i64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("200000")), "{status}");
    let upper = e.shim.dir.join("images/snapshots").join(&id).join("upper/probe");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&upper).map(|m| (m.uid(), m.gid())).unwrap(), (200_000, 200_000));

    // Exec enters the same user namespace.
    let r =
        e.rt.exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into(), "-c".into(), "id -u; cat /proc/self/uid_map".into()],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.starts_with("0\n") && out.contains("200000"), "{out}");

    // Refused up front: two ranges, or a range that does not start at 0.
    for uids in [
        vec![
            IdMapping { container_id: 0, host_id: 1000, length: 10 },
            IdMapping { container_id: 10, host_id: 5000, length: 10 },
        ],
        vec![IdMapping { container_id: 1, host_id: 1000, length: 100 }],
    ] {
        let bad = UserNamespace { uids, ..userns.clone() };
        let mut config = berth_integration::cri::sandbox_config("bad-userns", &e.logs);
        config.linux.get_or_insert_with(Default::default).security_context = Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption { userns_options: Some(bad), ..Default::default() }),
            ..Default::default()
        });
        let err =
            e.rt.run_pod_sandbox(RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() })
                .await
                .unwrap_err();
        assert!(err.message().contains("userns_options.uids"), "{}", err.message());
    }
    e.rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
    assert_eq!(std::fs::read_dir(e.shim.dir.join("run/pods")).unwrap().count(), 0);
    assert_eq!(
        e.rt.list_pod_sandbox(ListPodSandboxRequest::default()).await.unwrap().into_inner().items.len(),
        0,
        "the refused pods left nothing"
    );
}
