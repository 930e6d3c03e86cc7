//! Port-forward over SPDY, over SPDY tunnelled in WebSocket, and over WebSocket channels.

use bytes::Bytes;

use super::client::{self, SpdyClient};
use super::{echo_server, path_of, server};
use crate::streaming::ws::{self, frame as wsframe};
use crate::streaming::PortForwardRequest;

fn request(ports: &[u16]) -> PortForwardRequest {
    PortForwardRequest { pod_sandbox_id: "sb1".into(), port: ports.iter().map(|p| i32::from(*p)).collect() }
}

/// Forwards `count` connections at once through `spdy` to `port`, each echoing its own data.
async fn forward_echoes(spdy: &mut SpdyClient, port: u16, count: usize) {
    let port_s = port.to_string();
    let mut pairs = Vec::new();
    for i in 0..count {
        let id = i.to_string();
        let headers = |kind| [("streamType", kind), ("port", port_s.as_str()), ("requestID", id.as_str())];
        let error = spdy.open(&headers("error")).await.expect("error stream");
        error.finish();
        let data = spdy.open(&headers("data")).await.expect("data stream");
        pairs.push((i, error, data));
    }
    let mut checks = Vec::new();
    for (i, mut error, mut data) in pairs {
        checks.push(tokio::spawn(async move {
            let payload: Vec<u8> = format!("connection {i};").repeat(5000).into_bytes();
            data.send(&payload);
            data.finish();
            assert_eq!(data.read_all().await, payload, "connection {i}");
            // client-go resets the data stream once the remote side is done.
            data.reset();
            assert_eq!(error.read_all().await, b"", "connection {i}");
        }));
    }
    for check in checks {
        check.await.expect("forwarded connection");
    }
}

#[tokio::test]
async fn spdy_port_forward_carries_several_connections_and_reports_refusals() {
    let (server, _) = server().await;
    let port = echo_server().await;
    let url = server.port_forward_url(request(&[])).expect("url");
    let (protocol, mut spdy) =
        client::spdy_connect(server.local_addr(), &path_of(&server, &url), "portforward.k8s.io").await;
    assert_eq!(protocol, "portforward.k8s.io");
    forward_echoes(&mut spdy, port, 3).await;

    // Streams without a usable port are refused.
    assert!(spdy.open(&[("streamType", "data"), ("port", "0"), ("requestID", "9")]).await.is_none());

    // A port nobody listens on: the error stream says why.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let closed_s = closed.to_string();
    let headers = |kind| [("streamType", kind), ("port", closed_s.as_str()), ("requestID", "10")];
    let mut error = spdy.open(&headers("error")).await.expect("error stream");
    let mut data = spdy.open(&headers("data")).await.expect("data stream");
    let message = String::from_utf8(error.read_all().await).expect("text");
    assert!(message.starts_with(&format!("error forwarding port {closed} to pod sb1")), "{message}");
    assert_eq!(data.read_all().await, b"");
    spdy.go_away();
}

#[tokio::test]
async fn spdy_port_forward_tunnelled_in_websocket() {
    let (server, _) = server().await;
    let port = echo_server().await;
    let url = server.port_forward_url(request(&[port])).expect("url");
    let headers = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Protocol", "SPDY/3.1+portforward.k8s.io"),
    ];
    let up = client::request(server.local_addr(), "GET", &path_of(&server, &url), &headers).await;
    assert_eq!(up.status, 101, "{}", up.head);
    assert_eq!(up.header("Sec-WebSocket-Protocol").as_deref(), Some("SPDY/3.1+portforward.k8s.io"));
    // The server's own WebSocket layer makes a fine byte-stream client (it writes unmasked frames,
    // which the server's reader tolerates).
    let (conn, messages) = ws::start(up.stream, up.leftover.freeze());
    let mut spdy = SpdyClient::start(ws::ByteStream::new(&conn, messages), Bytes::new());
    forward_echoes(&mut spdy, port, 2).await;
}

#[tokio::test]
async fn websocket_channel_port_forward() {
    let (server, _) = server().await;
    let port = echo_server().await;
    let url = server.port_forward_url(request(&[port])).expect("url");
    let (protocol, mut ws) =
        client::ws_connect(server.local_addr(), &path_of(&server, &url), "v4.channel.k8s.io").await;
    assert_eq!(protocol.as_deref(), Some("v4.channel.k8s.io"));
    // Each channel opens with the port, little-endian.
    let mut prefix = Vec::new();
    for _ in 0..2 {
        let frame = ws.next().await.expect("port announcement");
        prefix.push(frame.payload.to_vec());
    }
    prefix.sort();
    let [lo, hi] = port.to_le_bytes();
    assert_eq!(prefix, [vec![0, lo, hi], vec![1, lo, hi]]);
    ws.send(wsframe::OP_BINARY, b"\x00ping over channels").await;
    let echoed = ws.next().await.expect("echo");
    assert_eq!(&echoed.payload[..], b"\x00ping over channels");
    ws.send(wsframe::OP_CLOSE, &1000u16.to_be_bytes()).await;
    while let Some(frame) = ws.next().await {
        if frame.opcode == wsframe::OP_CLOSE {
            break;
        }
    }
}
