//! End-to-end tests: the real server on loopback, a host backend, and in-repo SPDY and
//! WebSocket clients that speak the way client-go does.

mod backend;
mod client;
mod portforward;
mod remotecommand;

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{Config, Server};
use backend::HostBackend;

async fn server() -> (Server, HostBackend) {
    let backend = HostBackend::default();
    let server = Server::start(Config::default(), Arc::new(backend.clone())).await.expect("start");
    (server, backend)
}

/// The path of a URL the server handed out (its base is `http://<local addr>`).
fn path_of(server: &Server, url: &str) -> String {
    let base = format!("http://{}", server.local_addr());
    url.strip_prefix(&base).expect("URL on the server's address").to_string()
}

/// A TCP echo server on loopback; returns its port.
async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn urls_work_once_for_their_own_kind_and_need_an_upgrade() {
    let (server, _) = server().await;
    let addr = server.local_addr();
    let req =
        super::ExecRequest { container_id: "c".into(), cmd: vec!["true".into()], stdout: true, ..Default::default() };
    let url = server.exec_url(req.clone()).expect("url");
    assert!(url.starts_with(&format!("http://{addr}/exec/")), "{url}");

    // A plain request spends the token and is refused for lack of upgrade headers.
    let plain = client::request(addr, "POST", &path_of(&server, &url), &[]).await;
    assert_eq!(plain.status, 400);
    let again = client::request(addr, "POST", &path_of(&server, &url), &[]).await;
    assert_eq!(again.status, 404);

    // A token used under another kind is not found (and is spent).
    let url = server.exec_url(req.clone()).expect("url");
    let wrong = path_of(&server, &url).replace("/exec/", "/attach/");
    assert_eq!(client::request(addr, "POST", &wrong, &[]).await.status, 404);
    assert_eq!(client::request(addr, "GET", "/exec/unknown", &[]).await.status, 404);

    // No common SPDY protocol: 403 listing what the server accepts.
    let url = server.exec_url(req).expect("url");
    let headers =
        [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", "v9.channel.k8s.io")];
    let refused = client::request(addr, "POST", &path_of(&server, &url), &headers).await;
    assert_eq!(refused.status, 403);
    assert!(refused.head.to_ascii_lowercase().contains("x-accepted-stream-protocol-versions: v5.channel.k8s.io"));
}

#[tokio::test]
async fn invalid_requests_get_no_url() {
    let (server, _) = server().await;
    let tty_and_stderr = super::ExecRequest { container_id: "c".into(), tty: true, stderr: true, ..Default::default() };
    assert!(server.exec_url(tty_and_stderr).is_err());
    assert!(server.attach_url(super::AttachRequest { container_id: "c".into(), ..Default::default() }).is_err());
    assert!(server.port_forward_url(super::PortForwardRequest::default()).is_err());
}
