//! A server-side SPDY/3.1 session: a reader task that replies to the client's streams and routes
//! their data, and a writer task that owns the socket's write half and the header compressor.
//!
//! Like moby/spdystream (which Kubernetes clients use), flow-control windows are not enforced in
//! either direction: spdystream never sends WINDOW_UPDATE. A stream whose consumer lags holds up
//! the reader once its queue is full, as spdystream's frame workers do.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, PollSender};

use super::frame::{self, Frame, FrameDecoder, FrameEncoder, Headers};
use super::SpdyError;
use crate::streaming::io::{ChannelReader, STREAM_QUEUE};

/// Largest DATA frame the server writes.
const MAX_DATA_FRAME: usize = 32 * 1024;
/// How long the session waits for the client to close after the server sent GOAWAY.
const LINGER: Duration = Duration::from_secs(5);

/// Decides whether a new stream is accepted (from its headers); `Err` refuses it with a reason.
pub(crate) type Accept = Box<dyn Fn(&Headers) -> Result<(), String> + Send + Sync>;

enum Outgoing {
    Frame(Frame),
    /// Send GOAWAY, then shut the write half down.
    Close,
}

/// Per-stream flags shared by the session and the stream's writer.
#[derive(Debug, Default)]
struct StreamState {
    /// The server sent FIN (or gave up on) this stream.
    finished: AtomicBool,
    /// The client reset this stream.
    reset: AtomicBool,
}

/// A stream the client opened and the server replied to.
pub(crate) struct SpdyStream {
    pub(crate) id: u32,
    pub(crate) headers: Headers,
    pub(crate) reader: ChannelReader,
    pub(crate) writer: StreamWriter,
}

/// The handle the protocol handlers keep on a session.
#[derive(Clone)]
pub(crate) struct Session {
    out: mpsc::Sender<Outgoing>,
    /// Cancelled when the client's side ends (EOF, GOAWAY, read or protocol error).
    closed: CancellationToken,
}

impl Session {
    pub(crate) fn closed_token(&self) -> CancellationToken {
        self.closed.clone()
    }

    /// Sends GOAWAY and closes the write side, then waits (a few seconds at most) for the client
    /// to close its side, so that nothing it still sends turns our close into a reset.
    pub(crate) async fn close(&self) {
        let _ = self.out.send(Outgoing::Close).await;
        let _ = tokio::time::timeout(LINGER, self.closed.cancelled()).await;
    }
}

/// Starts a session on an upgraded connection. Streams the client opens and `accept` approves
/// come out of the returned receiver; dropping it refuses later streams.
pub(crate) fn start<IO>(io: IO, leftover: Bytes, accept: Accept) -> (Session, mpsc::Receiver<SpdyStream>)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(io);
    let (out_tx, out_rx) = mpsc::channel(64);
    let (incoming_tx, incoming_rx) = mpsc::channel(16);
    let closed = CancellationToken::new();
    tokio::spawn(write_loop(write_half, out_rx));
    let reader =
        Reader { out: out_tx.clone(), incoming: incoming_tx, accept, streams: HashMap::new(), last_stream_id: 0 };
    tokio::spawn(reader.run(read_half, BytesMut::from(&leftover[..]), closed.clone()));
    (Session { out: out_tx, closed }, incoming_rx)
}

async fn write_loop<W: AsyncWrite>(mut w: tokio::io::WriteHalf<W>, mut rx: mpsc::Receiver<Outgoing>) {
    let mut enc = match FrameEncoder::new() {
        Ok(enc) => enc,
        Err(err) => {
            tracing::warn!(error = %err, "SPDY header compressor");
            return;
        }
    };
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(mut cmd) = rx.recv().await {
        loop {
            let closing = matches!(cmd, Outgoing::Close);
            let frame = match cmd {
                Outgoing::Frame(frame) => frame,
                Outgoing::Close => Frame::GoAway { last_good_stream_id: 0, status: 0 },
            };
            if let Err(err) = enc.encode(&frame, &mut buf) {
                tracing::warn!(error = %err, "encoding a SPDY frame");
                return;
            }
            if closing {
                let _ = w.write_all(&buf).await;
                let _ = w.shutdown().await;
                return;
            }
            match rx.try_recv() {
                Ok(next) if buf.len() < 64 * 1024 => cmd = next,
                Ok(next) => {
                    if w.write_all(&buf).await.is_err() {
                        return;
                    }
                    buf.clear();
                    cmd = next;
                }
                Err(_) => break,
            }
        }
        if w.write_all(&buf).await.is_err() || w.flush().await.is_err() {
            return;
        }
        buf.clear();
    }
}

struct Entry {
    /// `None` once the client finished its side.
    data: Option<mpsc::Sender<Bytes>>,
    state: Arc<StreamState>,
}

struct Reader {
    out: mpsc::Sender<Outgoing>,
    incoming: mpsc::Sender<SpdyStream>,
    accept: Accept,
    streams: HashMap<u32, Entry>,
    last_stream_id: u32,
}

impl Reader {
    async fn run<R: AsyncRead>(mut self, mut r: tokio::io::ReadHalf<R>, mut buf: BytesMut, closed: CancellationToken) {
        let mut dec = FrameDecoder::new();
        let result: Result<(), SpdyError> = async {
            loop {
                while let Some(frame) = dec.decode(&mut buf)? {
                    if !self.handle(frame).await {
                        return Ok(());
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
            tracing::debug!(error = %err, "SPDY session ends on a protocol error");
        }
        for entry in self.streams.values() {
            entry.state.reset.store(true, Ordering::Release);
        }
        self.streams.clear();
        closed.cancel();
    }

    /// Handles one frame; `false` ends the session (GOAWAY).
    async fn handle(&mut self, frame: Frame) -> bool {
        match frame {
            Frame::SynStream { stream_id, flags, headers, .. } => self.open(stream_id, flags, headers).await,
            Frame::Data { stream_id, flags, data } => {
                if let Some(entry) = self.streams.get_mut(&stream_id) {
                    if let Some(tx) = &entry.data {
                        // A consumer that dropped its reader just discards.
                        if !data.is_empty() && tx.send(data).await.is_err() {
                            entry.data = None;
                        }
                    }
                    if flags & frame::FLAG_FIN != 0 {
                        entry.data = None;
                    }
                }
            }
            Frame::RstStream { stream_id, .. } => {
                if let Some(entry) = self.streams.remove(&stream_id) {
                    entry.state.reset.store(true, Ordering::Release);
                }
            }
            // Client pings have odd ids; answer them. Ours (even) we never send.
            Frame::Ping { id } if id % 2 == 1 => self.send(Frame::Ping { id }).await,
            Frame::GoAway { .. } => return false,
            Frame::Headers { stream_id, flags, .. } if flags & frame::FLAG_FIN != 0 => {
                if let Some(entry) = self.streams.get_mut(&stream_id) {
                    entry.data = None;
                }
            }
            _ => {}
        }
        true
    }

    async fn open(&mut self, id: u32, flags: u8, headers: Headers) {
        if id.is_multiple_of(2) || id <= self.last_stream_id {
            self.send(Frame::RstStream { stream_id: id, status: frame::RST_PROTOCOL_ERROR }).await;
            return;
        }
        self.last_stream_id = id;
        if let Err(reason) = (self.accept)(&headers) {
            tracing::debug!(stream = id, %reason, "refusing SPDY stream");
            self.send(Frame::RstStream { stream_id: id, status: frame::RST_REFUSED_STREAM }).await;
            return;
        }
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let state = Arc::new(StreamState::default());
        let data = (flags & frame::FLAG_FIN == 0).then_some(tx);
        self.streams.insert(id, Entry { data, state: state.clone() });
        self.send(Frame::SynReply { stream_id: id, flags: 0, headers: Headers::default() }).await;
        let stream = SpdyStream {
            id,
            headers,
            reader: ChannelReader::new(rx),
            writer: StreamWriter { id, out: PollSender::new(self.out.clone()), state },
        };
        if self.incoming.send(stream).await.is_err() {
            self.streams.remove(&id);
            self.send(Frame::RstStream { stream_id: id, status: frame::RST_REFUSED_STREAM }).await;
        }
    }

    async fn send(&self, frame: Frame) {
        let _ = self.out.send(Outgoing::Frame(frame)).await;
    }
}

/// Writes DATA frames on one stream; shutting it down sends FIN.
pub(crate) struct StreamWriter {
    id: u32,
    out: PollSender<Outgoing>,
    state: Arc<StreamState>,
}

impl StreamWriter {
    /// A second writer on the same stream (the error stream is written by the session's end).
    pub(crate) fn handle(&self) -> StreamWriter {
        StreamWriter { id: self.id, out: self.out.clone(), state: self.state.clone() }
    }

    /// Sends FIN unless it was sent already (or the stream is gone).
    pub(crate) async fn finish(&mut self) {
        let _ = self.shutdown().await;
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>, frame: Frame) -> Poll<io::Result<()>> {
        if self.state.reset.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        ready!(self.out.poll_reserve(cx)).map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        self.out.send_item(Outgoing::Frame(frame)).map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for StreamWriter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.state.finished.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(MAX_DATA_FRAME);
        let data = Bytes::copy_from_slice(&buf[..n]);
        let id = self.id;
        ready!(self.poll_frame(cx, Frame::Data { stream_id: id, flags: 0, data }))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.state.finished.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        let id = self.id;
        let fin = Frame::Data { stream_id: id, flags: frame::FLAG_FIN, data: Bytes::new() };
        let result = ready!(self.poll_frame(cx, fin));
        self.state.finished.store(true, Ordering::Release);
        Poll::Ready(result)
    }
}
