//! The port-forward protocol: per forwarded connection an error and a data stream (SPDY, also
//! tunnelled in WebSocket), or per requested port a data and an error channel (WebSocket
//! channel protocol); data is copied to and from a connection the backend opens in the pod.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::io::{ChannelReader, STREAM_QUEUE};
use super::spdy::{self, frame::Headers, SpdyStream};
use super::{ws, AsyncReadWrite, Backend, PortForwardRequest};

pub(crate) const SPDY_PROTOCOLS: &[&str] = &["portforward.k8s.io"];
/// SPDY carried in WebSocket binary messages (kubectl 1.31+, `crictl --transport websocket`).
pub(crate) const WS_TUNNEL_PROTOCOLS: &[&str] = &["SPDY/3.1+portforward.k8s.io"];
/// The older channel protocol: data channel 2n and error channel 2n+1 for the request's nth port.
pub(crate) const WS_CHANNEL_PROTOCOLS: &[&str] = &["v4.channel.k8s.io", "v4.base64.channel.k8s.io", ""];

fn accept(headers: &Headers) -> Result<(), String> {
    let port = headers.get("port").ok_or("\"port\" header is required")?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("invalid port {port:?}")),
    }
    match headers.get("streamtype") {
        Some("error" | "data") => Ok(()),
        other => Err(format!("invalid stream type {other:?}")),
    }
}

/// The request a stream belongs to; old clients send no `requestID`, and then the error stream's
/// id names it and the data stream follows two ids later.
fn request_id(stream: &SpdyStream) -> String {
    match stream.headers.get("requestid") {
        Some(id) => id.to_string(),
        None if stream.headers.get("streamtype") == Some("data") => stream.id.saturating_sub(2).to_string(),
        None => stream.id.to_string(),
    }
}

#[derive(Default)]
struct Pair {
    error: Option<SpdyStream>,
    data: Option<SpdyStream>,
}

/// Serves port-forward over an upgraded SPDY connection (or a WebSocket tunnel of one).
pub(crate) async fn serve_spdy<IO>(
    backend: Arc<dyn Backend>,
    req: PortForwardRequest,
    io: IO,
    leftover: Bytes,
    creation_timeout: Duration,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (session, mut incoming) = spdy::start(io, leftover, Box::new(accept));
    let mut pending: HashMap<String, (Instant, Pair)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            stream = incoming.recv() => {
                let Some(stream) = stream else { break };
                let id = request_id(&stream);
                let (_, pair) = pending.entry(id.clone()).or_insert_with(|| (Instant::now(), Pair::default()));
                if stream.headers.get("streamtype") == Some("error") {
                    pair.error = Some(stream);
                } else {
                    pair.data = Some(stream);
                }
                if pair.error.is_some() && pair.data.is_some() {
                    let (_, Pair { error: Some(error), data: Some(data) }) = pending.remove(&id).expect("present") else {
                        continue;
                    };
                    let port = data.headers.get("port").and_then(|p| p.parse().ok()).unwrap_or(0);
                    let (backend, sandbox, gone) = (backend.clone(), req.pod_sandbox_id.clone(), session.closed_token());
                    tokio::spawn(forward_streams(backend, sandbox, port, data, error, gone));
                }
            }
            _ = tick.tick() => {
                let expired: Vec<String> = pending
                    .iter()
                    .filter(|(_, (since, _))| since.elapsed() > creation_timeout)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in expired {
                    if let Some((_, Pair { error: Some(mut error), .. })) = pending.remove(&id) {
                        let message = format!("timed out waiting for the streams of request {id}");
                        let _ = error.writer.write_all(message.as_bytes()).await;
                        error.writer.finish().await;
                    }
                }
            }
        }
    }
    session.close().await;
}

async fn forward_streams(
    backend: Arc<dyn Backend>,
    sandbox: String,
    port: u16,
    data: SpdyStream,
    error: SpdyStream,
    gone: CancellationToken,
) {
    let SpdyStream { reader, mut writer, .. } = data;
    let mut error = error.writer;
    forward(backend, sandbox, port, reader, &mut writer, &mut error, gone).await;
    writer.finish().await;
    error.finish().await;
}

/// Opens the pod connection and copies both ways until both directions are done (or the
/// client goes away). A failure to connect is written to `error`.
async fn forward<R, W, E>(
    backend: Arc<dyn Backend>,
    sandbox: String,
    port: u16,
    mut from_client: R,
    to_client: &mut W,
    error: &mut E,
    gone: CancellationToken,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let conn: Box<dyn AsyncReadWrite> = tokio::select! {
        conn = backend.port_forward(sandbox.clone(), port) => match conn {
            Ok(conn) => conn,
            Err(err) => {
                tracing::debug!(%sandbox, port, error = %err, "port-forward connect failed");
                let message = format!("error forwarding port {port} to pod {sandbox}: {}", err.chain());
                let _ = error.write_all(message.as_bytes()).await;
                return;
            }
        },
        () = gone.cancelled() => return,
    };
    let (mut pod_r, mut pod_w) = tokio::io::split(conn);
    let up = async {
        let _ = tokio::io::copy(&mut from_client, &mut pod_w).await;
        let _ = pod_w.shutdown().await;
    };
    let down = async {
        if let Err(err) = tokio::io::copy(&mut pod_r, to_client).await {
            tracing::debug!(%sandbox, port, error = %err, "port-forward copy from the pod ended");
        }
        let _ = to_client.shutdown().await;
    };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        () = gone.cancelled() => {}
    }
}

/// Serves port-forward as SPDY tunnelled in WebSocket binary messages.
pub(crate) async fn serve_ws_tunnel<IO>(
    backend: Arc<dyn Backend>,
    req: PortForwardRequest,
    io: IO,
    leftover: Bytes,
    creation_timeout: Duration,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (conn, messages) = ws::start(io, leftover);
    let stream = ws::ByteStream::new(&conn, messages);
    serve_spdy(backend, req, stream, Bytes::new(), creation_timeout).await;
}

/// Serves port-forward over the WebSocket channel protocol: one data and one error channel per
/// port of the request, each opened by a message carrying the port (little-endian u16).
pub(crate) async fn serve_ws_channels<IO>(
    backend: Arc<dyn Backend>,
    req: PortForwardRequest,
    protocol: &str,
    io: IO,
    leftover: Bytes,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (conn, messages) = ws::start(io, leftover);
    let base64 = protocol.contains("base64");
    let ports: Vec<u16> = req.port.iter().filter_map(|p| u16::try_from(*p).ok()).filter(|p| *p > 0).collect();
    let mut channels = Vec::with_capacity(ports.len() * 2);
    let mut readers = Vec::with_capacity(ports.len());
    for _ in &ports {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        channels.extend([Some(tx), None]);
        readers.push(ChannelReader::new(rx));
    }
    tokio::spawn(ws::demux(messages, channels, base64, false));
    let mut forwards = JoinSet::new();
    for (i, (port, reader)) in ports.into_iter().zip(readers).enumerate() {
        let (data_ch, error_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        let mut data = conn.channel_writer(data_ch, base64);
        let mut error = conn.channel_writer(error_ch, base64);
        let _ = data.write_all(&port.to_le_bytes()).await;
        let _ = error.write_all(&port.to_le_bytes()).await;
        let (backend, sandbox, gone) = (backend.clone(), req.pod_sandbox_id.clone(), conn.closed_token());
        forwards.spawn(async move { forward(backend, sandbox, port, reader, &mut data, &mut error, gone).await });
    }
    while forwards.join_next().await.is_some() {}
    conn.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_need_a_port_and_a_known_type() {
        assert!(accept(&Headers::from_pairs(&[("port", "80"), ("streamtype", "data")])).is_ok());
        assert!(accept(&Headers::from_pairs(&[("port", "80"), ("streamtype", "error")])).is_ok());
        assert!(accept(&Headers::from_pairs(&[("streamtype", "data")])).is_err());
        assert!(accept(&Headers::from_pairs(&[("port", "0"), ("streamtype", "data")])).is_err());
        assert!(accept(&Headers::from_pairs(&[("port", "70000"), ("streamtype", "data")])).is_err());
        assert!(accept(&Headers::from_pairs(&[("port", "80"), ("streamtype", "stdout")])).is_err());
    }
}
