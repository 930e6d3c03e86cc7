//! Byte-stream adapters shared by the SPDY and WebSocket sessions: a reader fed by a channel of
//! chunks, and the JSON decoder of terminal-resize messages.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::sync::mpsc;

use super::TermSize;

/// How many received chunks a stream buffers before its session stops reading the connection.
pub(crate) const STREAM_QUEUE: usize = 32;

/// Reads the chunks a session's reader task delivers; EOF once the sender is dropped (the peer
/// finished or reset the stream, or the connection ended).
#[derive(Debug)]
pub(crate) struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    pending: Bytes,
}

impl ChannelReader {
    pub(crate) fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        ChannelReader { rx, pending: Bytes::new() }
    }
}

impl AsyncRead for ChannelReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        while self.pending.is_empty() {
            match ready!(self.rx.poll_recv(cx)) {
                Some(chunk) => self.pending = chunk,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// Reads concatenated JSON terminal sizes from `stream` and forwards them to `tx` until the stream
/// ends, the receiver is dropped, or the stream sends something that is not a size.
pub(crate) async fn forward_resizes<R: AsyncRead + Unpin>(mut stream: R, tx: mpsc::Sender<TermSize>) {
    let mut buf = BytesMut::new();
    loop {
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut values = serde_json::Deserializer::from_slice(&buf).into_iter::<TermSize>();
        let mut consumed = 0;
        loop {
            match values.next() {
                Some(Ok(size)) => {
                    consumed = values.byte_offset();
                    if tx.send(size).await.is_err() {
                        return;
                    }
                }
                Some(Err(err)) if err.is_eof() => break,
                Some(Err(err)) => {
                    tracing::debug!(error = %err, "malformed terminal resize message");
                    return;
                }
                None => {
                    consumed = values.byte_offset();
                    break;
                }
            }
        }
        buf.advance(consumed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn channel_reader_concatenates_chunks_until_the_sender_goes() {
        let (tx, rx) = mpsc::channel(4);
        let mut reader = ChannelReader::new(rx);
        tx.send(Bytes::from_static(b"hello ")).await.expect("send");
        tx.send(Bytes::new()).await.expect("send");
        tx.send(Bytes::from_static(b"world")).await.expect("send");
        drop(tx);
        let mut out = String::new();
        reader.read_to_string(&mut out).await.expect("read");
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn resizes_split_across_chunks_are_decoded() {
        let (chunk_tx, chunk_rx) = mpsc::channel(8);
        let (size_tx, mut size_rx) = mpsc::channel(8);
        let task = tokio::spawn(forward_resizes(ChannelReader::new(chunk_rx), size_tx));
        for chunk in [&b"{\"Width\":80,\"He"[..], b"ight\":24}\n{\"Width\":1", b"00,\"Height\":50}\n"] {
            chunk_tx.send(Bytes::copy_from_slice(chunk)).await.expect("send");
        }
        drop(chunk_tx);
        assert_eq!(size_rx.recv().await, Some(TermSize { width: 80, height: 24 }));
        assert_eq!(size_rx.recv().await, Some(TermSize { width: 100, height: 50 }));
        assert_eq!(size_rx.recv().await, None);
        task.await.expect("task");
    }
}
