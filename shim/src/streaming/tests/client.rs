//! Test clients: the HTTP upgrade, a SPDY client session (streams opened by the client, as
//! client-go does) and a WebSocket client (masked frames, as RFC 6455 requires of clients).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::streaming::spdy::frame::{self, Frame, FrameDecoder, FrameEncoder, Headers};
use crate::streaming::ws::frame::{self as wsframe, WsFrame};

/// An HTTP response head and the connection after it.
pub(super) struct Upgraded {
    pub(super) status: u16,
    pub(super) head: String,
    pub(super) stream: TcpStream,
    pub(super) leftover: BytesMut,
}

impl Upgraded {
    /// The value of response header `name` (case-insensitive), if present.
    pub(super) fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// Sends `method path` with `headers` and reads the response head.
pub(super) async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Upgraded {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.expect("send request");
    let mut buf = BytesMut::new();
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        assert_ne!(stream.read_buf(&mut buf).await.expect("read response"), 0, "connection closed early");
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let leftover = buf.split_off(end + 4);
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
    Upgraded { status, head, stream, leftover }
}

/// Upgrades to SPDY/3.1 offering `protocols`; returns the negotiated one and the session.
pub(super) async fn spdy_connect(addr: SocketAddr, path: &str, protocols: &str) -> (String, SpdyClient) {
    let up = request(
        addr,
        "POST",
        path,
        &[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", protocols)],
    )
    .await;
    assert_eq!(up.status, 101, "{}", up.head);
    let protocol = up.header("X-Stream-Protocol-Version").expect("negotiated protocol");
    (protocol, SpdyClient::start(up.stream, up.leftover.freeze()))
}

#[derive(Default)]
struct ClientEntry {
    data: Option<mpsc::UnboundedSender<Bytes>>,
    reply: Option<oneshot::Sender<bool>>,
}

type Entries = Arc<Mutex<HashMap<u32, ClientEntry>>>;

/// The client side of a SPDY session.
pub(super) struct SpdyClient {
    out: mpsc::UnboundedSender<Frame>,
    entries: Entries,
    next_id: u32,
}

impl SpdyClient {
    pub(super) fn start<IO: AsyncRead + AsyncWrite + Send + 'static>(io: IO, leftover: Bytes) -> Self {
        let (mut r, mut w) = tokio::io::split(io);
        let (out, mut out_rx) = mpsc::unbounded_channel::<Frame>();
        tokio::spawn(async move {
            let mut enc = FrameEncoder::new().expect("encoder");
            while let Some(frame) = out_rx.recv().await {
                let mut buf = Vec::new();
                enc.encode(&frame, &mut buf).expect("encode");
                if w.write_all(&buf).await.is_err() {
                    return;
                }
            }
            let _ = w.shutdown().await;
        });
        let entries: Entries = Arc::default();
        let routes = entries.clone();
        tokio::spawn(async move {
            let mut dec = FrameDecoder::new();
            let mut buf = BytesMut::from(&leftover[..]);
            loop {
                while let Some(frame) = dec.decode(&mut buf).expect("decode") {
                    let mut routes = routes.lock().expect("routes");
                    match frame {
                        Frame::SynReply { stream_id, .. } => {
                            if let Some(reply) = routes.entry(stream_id).or_default().reply.take() {
                                let _ = reply.send(true);
                            }
                        }
                        Frame::RstStream { stream_id, .. } => {
                            if let Some(mut entry) = routes.remove(&stream_id) {
                                if let Some(reply) = entry.reply.take() {
                                    let _ = reply.send(false);
                                }
                            }
                        }
                        Frame::Data { stream_id, flags, data } => {
                            let entry = routes.entry(stream_id).or_default();
                            if let Some(tx) = &entry.data {
                                let _ = tx.send(data);
                            }
                            if flags & frame::FLAG_FIN != 0 {
                                entry.data = None;
                            }
                        }
                        _ => {}
                    }
                }
                match r.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            routes.lock().expect("routes").clear();
        });
        SpdyClient { out, entries, next_id: 1 }
    }

    /// Opens a stream with `headers` and waits for the server's reply (`None`: refused).
    pub(super) async fn open(&mut self, headers: &[(&str, &str)]) -> Option<ClientStream> {
        let id = self.next_id;
        self.next_id += 2;
        let (data_tx, data_rx) = mpsc::unbounded_channel();
        let (reply_tx, reply_rx) = oneshot::channel();
        self.entries.lock().expect("entries").insert(id, ClientEntry { data: Some(data_tx), reply: Some(reply_tx) });
        let headers = Headers::from_pairs(headers);
        self.out
            .send(Frame::SynStream { stream_id: id, associated_to: 0, priority: 0, flags: 0, headers })
            .expect("writer alive");
        match reply_rx.await {
            Ok(true) => Some(ClientStream { id, rx: data_rx, out: self.out.clone() }),
            _ => None,
        }
    }

    /// Sends GOAWAY, as client-go does when it is done.
    pub(super) fn go_away(&self) {
        let _ = self.out.send(Frame::GoAway { last_good_stream_id: 0, status: 0 });
    }
}

/// One client-opened stream.
pub(super) struct ClientStream {
    pub(super) id: u32,
    rx: mpsc::UnboundedReceiver<Bytes>,
    out: mpsc::UnboundedSender<Frame>,
}

impl ClientStream {
    pub(super) fn send(&self, data: &[u8]) {
        let data = Bytes::copy_from_slice(data);
        self.out.send(Frame::Data { stream_id: self.id, flags: 0, data }).expect("writer alive");
    }

    /// Sends FIN (client-go's `stream.Close()`).
    pub(super) fn finish(&self) {
        let _ = self.out.send(Frame::Data { stream_id: self.id, flags: frame::FLAG_FIN, data: Bytes::new() });
    }

    pub(super) fn reset(&self) {
        let _ = self.out.send(Frame::RstStream { stream_id: self.id, status: frame::RST_CANCEL });
    }

    /// The next chunk the server sent (`None` after FIN, reset or the session's end).
    pub(super) async fn next_chunk(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }

    /// Everything the server sends until FIN, reset or the session's end.
    pub(super) async fn read_all(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        while let Some(chunk) = self.rx.recv().await {
            all.extend_from_slice(&chunk);
        }
        all
    }
}

/// Upgrades to WebSocket offering `protocols`; returns the negotiated one and the client.
pub(super) async fn ws_connect(addr: SocketAddr, path: &str, protocols: &str) -> (Option<String>, WsClient) {
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let mut headers = vec![
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", key),
    ];
    if !protocols.is_empty() {
        headers.push(("Sec-WebSocket-Protocol", protocols));
    }
    let up = request(addr, "GET", path, &headers).await;
    assert_eq!(up.status, 101, "{}", up.head);
    assert_eq!(up.header("Sec-WebSocket-Accept").as_deref(), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    let protocol = up.header("Sec-WebSocket-Protocol");
    (protocol, WsClient::start(up.stream, up.leftover))
}

/// A WebSocket client: masked frames out, data messages in until the server's close.
pub(super) struct WsClient {
    write: tokio::net::tcp::OwnedWriteHalf,
    messages: mpsc::UnboundedReceiver<WsFrame>,
}

impl WsClient {
    fn start(stream: TcpStream, mut buf: BytesMut) -> Self {
        let (mut read, write) = stream.into_split();
        let (tx, messages) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                while let Some(f) = wsframe::decode(&mut buf, 1 << 24).expect("server frame") {
                    let close = f.opcode == wsframe::OP_CLOSE;
                    let _ = tx.send(f);
                    if close {
                        return;
                    }
                }
                match read.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
        WsClient { write, messages }
    }

    pub(super) async fn send(&mut self, opcode: u8, payload: &[u8]) {
        let mut wire = Vec::new();
        let frame = WsFrame { fin: true, opcode, payload: Bytes::copy_from_slice(payload) };
        wsframe::encode(&frame, Some([0x11, 0x22, 0x33, 0x44]), &mut wire);
        self.write.write_all(&wire).await.expect("send frame");
    }

    /// The next frame from the server (`None` once the connection is gone).
    pub(super) async fn next(&mut self) -> Option<WsFrame> {
        self.messages.recv().await
    }

    /// Collects data messages by their first byte until the server closes.
    pub(super) async fn collect_channels(&mut self, base64: bool) -> HashMap<u8, Vec<u8>> {
        use base64::Engine;
        let mut channels: HashMap<u8, Vec<u8>> = HashMap::new();
        while let Some(f) = self.next().await {
            match f.opcode {
                wsframe::OP_CLOSE => break,
                wsframe::OP_BINARY | wsframe::OP_TEXT if !f.payload.is_empty() => {
                    let (ch, data) = if base64 {
                        let data = base64::engine::general_purpose::STANDARD.decode(&f.payload[1..]).expect("base64");
                        (f.payload[0] - b'0', data)
                    } else {
                        (f.payload[0], f.payload[1..].to_vec())
                    };
                    channels.entry(ch).or_default().extend_from_slice(&data);
                }
                _ => {}
            }
        }
        channels
    }
}
