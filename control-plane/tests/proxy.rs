//! pods/log, pods/exec, pods/portforward and nodes/proxy through berth-control to a fake node
//! agent: kubectl logs (plain and -f), kubectl exec over WebSocket v5, a raw SPDY upgrade
//! spliced both ways, the client identity the agent sees, and who may use the proxy.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::fake_kubelet::{FakeKubelet, GREETING, LOGS};
use common::Cluster;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn setup() -> (Cluster, FakeKubelet) {
    let c = Cluster::start();
    let fake = FakeKubelet::start(&c.dir.path().join("pki/ca.crt"));
    let node = serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": "n1"}],
                   "daemonEndpoints": {"kubeletEndpoint": {"Port": fake.port}},
                   "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": common::now()}]}});
    let o = common::kubectl_with(&c.kubeconfig, &["create", "-f", "-"], Some(&node.to_string()));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    c.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: p1}\nspec:\n  nodeName: n1\n  containers: [{name: app, image: busybox}, {name: side, image: busybox}]\n");
    c.ok(&["patch", "pod", "p1", "--subresource=status", "--type=merge", "-p", "{\"status\":{\"phase\":\"Running\"}}"]);
    (c, fake)
}

#[test]
fn logs_are_proxied_to_the_agent_and_follow_streams() {
    let (c, fake) = setup();
    assert_eq!(c.ok(&["logs", "p1", "-c", "app"]), LOGS);
    let s = fake.seen();
    let last = s.last().unwrap();
    assert_eq!(last.path_and_query, "/containerLogs/default/p1/app");
    assert_eq!(
        (last.client_cn.as_str(), last.client_orgs.clone()),
        ("berth-control:kubelet-client", vec!["system:masters".to_string()])
    );
    assert!(!last.headers.iter().any(|(k, _)| k == "authorization"), "the caller's credentials never reach the agent");
    c.ok(&["logs", "p1", "-c", "side", "--tail=5", "--timestamps", "--since=1h"]);
    let q = fake.seen().last().unwrap().path_and_query.clone();
    assert!(
        q.starts_with("/containerLogs/default/p1/side?")
            && q.contains("tailLines=5")
            && q.contains("timestamps=true")
            && q.contains("sinceSeconds=3600"),
        "{q}"
    );
    let e = c.fails(&["get", "--raw", "/api/v1/namespaces/default/pods/p1/log"]);
    assert!(e.contains("a container name must be specified for pod p1, choose one of: [app side]"), "{e}");

    // -f: the first line arrives while the agent still holds the stream open.
    let mut f = Command::new("kubectl")
        .env("KUBECONFIG", &c.kubeconfig)
        .args(["logs", "-f", "p1", "-c", "app"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(f.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "first line\n");
    assert!(f.try_wait().unwrap().is_none(), "kubectl logs -f ended before the stream did");
    fake.release_follow();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "second line\n");
    assert!(f.wait().unwrap().success());
    assert!(fake.seen().last().unwrap().path_and_query.contains("follow=true"));
}

#[test]
fn kubectl_exec_over_websocket_reaches_the_agent_both_ways() {
    let (c, fake) = setup();
    let mut ex = Command::new("kubectl")
        .env("KUBECONFIG", &c.kubeconfig)
        .args(["exec", "-i", "p1", "-c", "app", "--", "cat", "-n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    ex.stdin.take().unwrap().write_all(b"hello through berth-control\n").unwrap();
    let o = ex.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello through berth-control\n");
    let s = fake.seen();
    let exec = s.iter().find(|s| s.path_and_query.starts_with("/exec/")).unwrap();
    assert!(
        exec.path_and_query.starts_with("/exec/default/p1/app?")
            && exec.path_and_query.contains("command=cat&command=-n")
            && exec.path_and_query.contains("stdin=true"),
        "{}",
        exec.path_and_query
    );
    let h = |n: &str| exec.headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()).unwrap_or_default();
    assert!(
        h("upgrade").eq_ignore_ascii_case("websocket")
            && h("sec-websocket-protocol").contains("v5.channel.k8s.io")
            && !h("sec-websocket-key").is_empty(),
        "{:?}",
        exec.headers
    );
}

/// The admin client certificate and key from the admin kubeconfig.
fn admin_identity(c: &Cluster) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let kc = std::fs::read_to_string(&c.kubeconfig).unwrap();
    let field = |name: &str| {
        let v = kc.lines().find_map(|l| l.trim().strip_prefix(name)).unwrap().trim();
        base64::engine::general_purpose::STANDARD.decode(v).unwrap()
    };
    let certs =
        CertificateDer::pem_slice_iter(&field("client-certificate-data:")).collect::<Result<Vec<_>, _>>().unwrap();
    (certs, PrivateKeyDer::from_pem_slice(&field("client-key-data:")).unwrap())
}

#[test]
fn spdy_upgrade_is_spliced_both_ways_and_node_proxy_works() {
    let (c, fake) = setup();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (certs, key) = admin_identity(&c);
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(c.dir.path().join("pki/ca.crt")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let port = c.port;
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await.unwrap();
        s.write_all(b"POST /api/v1/namespaces/default/pods/p1/portforward?ports=8080 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: portforward.k8s.io\r\nContent-Length: 0\r\n\r\n").await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(s.read_u8().await.unwrap());
        }
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("upgrade: spdy/3.1") && head.contains("x-stream-protocol-version: portforward.k8s.io"), "{head}");
        let mut greeting = vec![0u8; GREETING.len()];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut greeting)).await.unwrap().unwrap();
        assert_eq!(greeting, GREETING, "agent → client");
        for msg in [&b"ping\n"[..], &[0u8, 1, 2, 0xff, b'x'][..]] {
            s.write_all(msg).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back)).await.unwrap().unwrap();
            assert_eq!(back, msg.to_ascii_uppercase(), "client → agent → client");
        }
    });
    let pf = fake.seen().into_iter().find(|s| s.path_and_query.starts_with("/portForward/")).unwrap();
    assert_eq!(pf.path_and_query, "/portForward/default/p1?ports=8080");
    assert_eq!(c.ok(&["get", "--raw", "/api/v1/nodes/n1/proxy/healthz"]), "ok");
    assert_eq!(fake.seen().last().unwrap().path_and_query, "/healthz");
}

#[test]
fn only_admins_reach_agents_and_unbound_pods_are_refused() {
    let (c, fake) = setup();
    let n1 = c.node("n1");
    for args in [&["logs", "p1", "-c", "app"][..], &["get", "--raw", "/api/v1/nodes/n1/proxy/healthz"]] {
        let o = n1.kubectl(args);
        assert!(
            !o.status.success() && String::from_utf8_lossy(&o.stderr).to_lowercase().contains("forbidden"),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    c.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: pending}\nspec:\n  containers: [{name: app, image: busybox}]\n  nodeSelector: {nowhere: 'true'}\n");
    let e = c.fails(&["logs", "pending"]);
    assert!(e.contains("does not have a host assigned"), "{e}");
    let before = fake.seen().len();
    c.apply("apiVersion: v1\nkind: Node\nmetadata: {name: n2}\n");
    c.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: p2}\nspec:\n  nodeName: n2\n  containers: [{name: app, image: busybox}]\n");
    let e = c.fails(&["logs", "p2"]);
    assert!(e.contains("no address"), "{e}");
    assert_eq!(fake.seen().len(), before, "nothing reached the agent");
}
