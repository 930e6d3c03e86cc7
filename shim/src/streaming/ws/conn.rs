//! A server-side WebSocket connection: a reader task (reassembly, ping/pong, close) that
//! delivers message payloads, a writer task, and the writers/adapters the protocols use — the
//! Kubernetes channel prefix byte (raw or base64) and a byte stream for tunnelled SPDY.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, PollSender};

use super::frame::{self, WsFrame};
use crate::streaming::io::{ChannelReader, STREAM_QUEUE};

/// Largest message accepted from a client.
const MAX_MESSAGE: usize = 16 << 20;
/// Largest payload written in one message.
const MAX_WRITE: usize = 32 * 1024;
/// How long `close` waits for the client's close frame.
const LINGER: Duration = Duration::from_secs(5);

pub(crate) enum Outgoing {
    Message {
        text: bool,
        payload: Bytes,
    },
    Pong(Bytes),
    /// Send a close frame with this status, then shut the write half down.
    Close(u16),
}

/// The handle the protocol handlers keep on a connection.
#[derive(Clone)]
pub(crate) struct Conn {
    out: mpsc::Sender<Outgoing>,
    closed: CancellationToken,
}

impl Conn {
    pub(crate) fn closed_token(&self) -> CancellationToken {
        self.closed.clone()
    }

    /// Sends a message as it is (already carrying its channel byte).
    pub(crate) async fn send(&self, text: bool, payload: Bytes) {
        let _ = self.out.send(Outgoing::Message { text, payload }).await;
    }

    /// A writer that prefixes every message with `channel` (base64-encoding for `base64`).
    pub(crate) fn channel_writer(&self, channel: u8, base64: bool) -> ChannelWriter {
        ChannelWriter { channel: Some(channel), base64, out: PollSender::new(self.out.clone()) }
    }

    /// Sends a normal close and waits (a few seconds at most) for the client's.
    pub(crate) async fn close(&self) {
        let _ = self.out.send(Outgoing::Close(frame::CLOSE_NORMAL)).await;
        let _ = tokio::time::timeout(LINGER, self.closed.cancelled()).await;
    }
}

/// Starts reader and writer tasks on an upgraded connection; returns the connection handle and
/// the payloads of the client's data messages (text or binary), in order.
pub(crate) fn start<IO>(io: IO, leftover: Bytes) -> (Conn, mpsc::Receiver<Bytes>)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(io);
    let (out_tx, out_rx) = mpsc::channel(64);
    let (msg_tx, msg_rx) = mpsc::channel(STREAM_QUEUE);
    let closed = CancellationToken::new();
    tokio::spawn(write_loop(write_half, out_rx));
    tokio::spawn(read_loop(read_half, BytesMut::from(&leftover[..]), msg_tx, out_tx.clone(), closed.clone()));
    (Conn { out: out_tx, closed }, msg_rx)
}

async fn write_loop<W: AsyncWrite>(mut w: tokio::io::WriteHalf<W>, mut rx: mpsc::Receiver<Outgoing>) {
    let mut buf = Vec::with_capacity(MAX_WRITE + 16);
    while let Some(cmd) = rx.recv().await {
        let (frame, closing) = match cmd {
            Outgoing::Message { text, payload } => {
                let opcode = if text { frame::OP_TEXT } else { frame::OP_BINARY };
                (WsFrame { fin: true, opcode, payload }, false)
            }
            Outgoing::Pong(payload) => (WsFrame { fin: true, opcode: frame::OP_PONG, payload }, false),
            Outgoing::Close(code) => {
                let payload = Bytes::copy_from_slice(&code.to_be_bytes());
                (WsFrame { fin: true, opcode: frame::OP_CLOSE, payload }, true)
            }
        };
        buf.clear();
        frame::encode(&frame, None, &mut buf);
        if w.write_all(&buf).await.is_err() || w.flush().await.is_err() {
            return;
        }
        if closing {
            let _ = w.shutdown().await;
            return;
        }
    }
}

async fn read_loop<R: AsyncRead>(
    mut r: tokio::io::ReadHalf<R>,
    mut buf: BytesMut,
    messages: mpsc::Sender<Bytes>,
    out: mpsc::Sender<Outgoing>,
    closed: CancellationToken,
) {
    let mut partial: Option<BytesMut> = None;
    let result: Result<(), super::WsError> = async {
        loop {
            while let Some(f) = frame::decode(&mut buf, MAX_MESSAGE)? {
                match f.opcode {
                    frame::OP_PING => {
                        let _ = out.send(Outgoing::Pong(f.payload)).await;
                    }
                    frame::OP_PONG => {}
                    frame::OP_CLOSE => {
                        let _ = out.send(Outgoing::Close(frame::CLOSE_NORMAL)).await;
                        return Ok(());
                    }
                    frame::OP_CONTINUATION => {
                        let message = partial.as_mut().ok_or(super::WsError::Continuation)?;
                        if message.len() + f.payload.len() > MAX_MESSAGE {
                            return Err(super::WsError::TooLarge { limit: MAX_MESSAGE });
                        }
                        message.extend_from_slice(&f.payload);
                        if f.fin {
                            let whole = partial.take().map(BytesMut::freeze).unwrap_or_default();
                            let _ = messages.send(whole).await;
                        }
                    }
                    _ if f.fin => {
                        let _ = messages.send(f.payload).await;
                    }
                    _ => partial = Some(BytesMut::from(&f.payload[..])),
                }
            }
            match r.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => {}
            }
        }
    }
    .await;
    if let Err(err) = result {
        tracing::debug!(error = %err, "WebSocket connection ends on a protocol error");
    }
    closed.cancel();
}

/// Routes the client's messages to channels by their first byte (`'0' + n` and base64 payloads
/// with `base64`). With `close_signal` (v5), `[255, n]` ends channel `n`. Messages for channels
/// without a receiver are dropped.
pub(crate) async fn demux(
    mut messages: mpsc::Receiver<Bytes>,
    mut channels: Vec<Option<mpsc::Sender<Bytes>>>,
    base64: bool,
    close_signal: bool,
) {
    const STREAM_CLOSE: u8 = 255;
    while let Some(message) = messages.recv().await {
        let Some(&first) = message.first() else {
            continue;
        };
        if close_signal && first == STREAM_CLOSE {
            if let Some(&channel) = message.get(1) {
                if let Some(slot) = channels.get_mut(usize::from(channel)) {
                    *slot = None;
                }
            }
            continue;
        }
        let (channel, data) = if base64 {
            match base64::engine::general_purpose::STANDARD.decode(&message[1..]) {
                Ok(data) => (first.wrapping_sub(b'0'), Bytes::from(data)),
                Err(err) => {
                    tracing::debug!(error = %err, "dropping a message that is not base64");
                    continue;
                }
            }
        } else {
            (first, message.slice(1..))
        };
        if let Some(slot) = channels.get_mut(usize::from(channel)) {
            if let Some(tx) = slot {
                if tx.send(data).await.is_err() {
                    *slot = None;
                }
            }
        }
    }
}

/// Writes messages on one Kubernetes channel (`channel: None`: bare binary messages).
pub(crate) struct ChannelWriter {
    channel: Option<u8>,
    base64: bool,
    out: PollSender<Outgoing>,
}

impl AsyncWrite for ChannelWriter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let broken = || io::Error::from(io::ErrorKind::BrokenPipe);
        ready!(self.out.poll_reserve(cx)).map_err(|_| broken())?;
        let n = buf.len().min(MAX_WRITE);
        let (text, payload) = match (self.channel, self.base64) {
            (None, _) => (false, Bytes::copy_from_slice(&buf[..n])),
            (Some(ch), false) => {
                let mut message = Vec::with_capacity(n + 1);
                message.push(ch);
                message.extend_from_slice(&buf[..n]);
                (false, message.into())
            }
            (Some(ch), true) => {
                let mut message = vec![b'0' + ch];
                let encoded = base64::engine::general_purpose::STANDARD.encode(&buf[..n]);
                message.extend_from_slice(encoded.as_bytes());
                (true, message.into())
            }
        };
        self.out.send_item(Outgoing::Message { text, payload }).map_err(|_| broken())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Channels have no end of their own on the server side (v5's close signal is client-only).
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The connection as a byte stream: binary message payloads in, one binary message per write
/// out; shutdown sends a normal close. Carries tunnelled SPDY.
pub(crate) struct ByteStream {
    reader: ChannelReader,
    writer: ChannelWriter,
}

impl ByteStream {
    pub(crate) fn new(conn: &Conn, messages: mpsc::Receiver<Bytes>) -> Self {
        ByteStream {
            reader: ChannelReader::new(messages),
            writer: ChannelWriter { channel: None, base64: false, out: PollSender::new(conn.out.clone()) },
        }
    }
}

impl AsyncRead for ByteStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for ByteStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let out = &mut self.writer.out;
        ready!(out.poll_reserve(cx)).map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        let _ = out.send_item(Outgoing::Close(frame::CLOSE_NORMAL));
        Poll::Ready(Ok(()))
    }
}
