//! A WebSocket client for the CRI streaming URLs that Exec, Attach and PortForward return: the
//! HTTP upgrade, masked client frames (RFC 6455), and the Kubernetes channel framing (first
//! byte of each binary message names the channel: `v5.channel.k8s.io` for exec/attach,
//! `v4.channel.k8s.io` for port-forward). Written for tests; the shim's own SPDY and WebSocket
//! server code is not reused, so the two sides check each other.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `v5.channel.k8s.io` channel numbers.
pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5's close signal: a message on this channel whose payload names the channel to close.
pub const CLOSE: u8 = 255;

const OP_CONTINUATION: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;

/// One upgraded connection.
pub struct WsChannels {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The subprotocol the server chose.
    pub protocol: String,
    mask_seed: u32,
}

/// Splits `http://host:port/path` into `(host:port, /path)`.
fn split_url(url: &str) -> anyhow::Result<(&str, &str)> {
    let rest = url.strip_prefix("http://").with_context(|| format!("not an http URL: {url}"))?;
    let slash = rest.find('/').unwrap_or(rest.len());
    Ok((&rest[..slash], if slash == rest.len() { "/" } else { &rest[slash..] }))
}

/// The host:port part of a streaming URL (to connect from the right network namespace).
pub fn url_addr(url: &str) -> anyhow::Result<std::net::SocketAddr> {
    let (host, _) = split_url(url)?;
    host.parse().with_context(|| format!("address of {url}"))
}

impl WsChannels {
    /// Upgrades `stream` (already connected to the URL's host) offering `protocol`.
    pub async fn upgrade(mut stream: TcpStream, url: &str, protocol: &str) -> anyhow::Result<WsChannels> {
        let (host, path) = split_url(url)?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: YmVydGgtdGVzdC1ub25jZQ==\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::new();
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed before the upgrade answer: {:?}", String::from_utf8_lossy(&buf));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            bail!("upgrade refused: {head}");
        }
        let chosen = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(n, _)| n.trim().eq_ignore_ascii_case("sec-websocket-protocol"))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default();
        Ok(WsChannels { stream, buf: buf[end + 4..].to_vec(), protocol: chosen, mask_seed: 0x9e37_79b9 })
    }

    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> anyhow::Result<()> {
        self.mask_seed = self.mask_seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let mask = self.mask_seed.to_be_bytes();
        let mut wire = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => wire.push(0x80 | n as u8),
            n if n <= 0xffff => {
                wire.push(0x80 | 126);
                wire.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                wire.push(0x80 | 127);
                wire.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        wire.extend_from_slice(&mask);
        wire.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&wire).await?;
        Ok(())
    }

    /// Sends `data` on `channel`.
    pub async fn send(&mut self, channel: u8, data: &[u8]) -> anyhow::Result<()> {
        let mut payload = Vec::with_capacity(data.len() + 1);
        payload.push(channel);
        payload.extend_from_slice(data);
        self.send_frame(OP_BINARY, &payload).await
    }

    /// v5: end of input on `channel` (stdin's EOF).
    pub async fn close_channel(&mut self, channel: u8) -> anyhow::Result<()> {
        self.send(CLOSE, &[channel]).await
    }

    /// A terminal resize.
    pub async fn resize(&mut self, width: u16, height: u16) -> anyhow::Result<()> {
        self.send(RESIZE, format!("{{\"Width\":{width},\"Height\":{height}}}").as_bytes()).await
    }

    /// Ends the session with a close frame.
    pub async fn close(&mut self) -> anyhow::Result<()> {
        self.send_frame(OP_CLOSE, &1000u16.to_be_bytes()).await
    }

    /// The next frame: `(fin, opcode, payload)`, or None when the connection ended.
    async fn frame(&mut self) -> anyhow::Result<Option<(bool, u8, Vec<u8>)>> {
        loop {
            if let Some(f) = parse_frame(&self.buf)? {
                self.buf.drain(..f.used);
                return Ok(Some((f.fin, f.opcode, f.payload)));
            }
            let mut chunk = [0u8; 16384];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next non-empty channel message `(channel, data)`; None once the server closed.
    pub async fn recv(&mut self) -> anyhow::Result<Option<(u8, Vec<u8>)>> {
        let mut message = Vec::new();
        loop {
            let Some((fin, opcode, payload)) = self.frame().await? else { return Ok(None) };
            match opcode {
                OP_CLOSE => return Ok(None),
                OP_PING => self.send_frame(0xA, &payload).await?,
                OP_BINARY | OP_TEXT | OP_CONTINUATION => {
                    message.extend_from_slice(&payload);
                    if fin {
                        if message.len() > 1 {
                            return Ok(Some((message[0], message[1..].to_vec())));
                        }
                        message.clear();
                    }
                }
                _ => {}
            }
        }
    }

    /// Reads channel messages until the server closes or `timeout` passes, gathering data by
    /// channel.
    pub async fn collect(&mut self, timeout: Duration) -> anyhow::Result<Channels> {
        let mut out = Channels::default();
        tokio::time::timeout(timeout, async {
            while let Some((ch, data)) = self.recv().await? {
                out.data.entry(ch).or_default().extend_from_slice(&data);
            }
            anyhow::Ok(())
        })
        .await
        .context("the server did not close the stream in time")??;
        Ok(out)
    }

    /// Reads until `channel`'s data contains `needle` (or fails after `timeout`).
    pub async fn read_until(&mut self, channel: u8, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let mut seen = Vec::new();
        let found = tokio::time::timeout(timeout, async {
            while let Some((ch, data)) = self.recv().await? {
                if ch == channel {
                    seen.extend_from_slice(&data);
                    if String::from_utf8_lossy(&seen).contains(needle) {
                        return anyhow::Ok(true);
                    }
                }
            }
            anyhow::Ok(false)
        })
        .await;
        let text = String::from_utf8_lossy(&seen).into_owned();
        match found {
            Ok(Ok(true)) => Ok(text),
            Ok(Ok(false)) => bail!("stream closed before {needle:?} on channel {channel}; got {text:?}"),
            Ok(Err(e)) => Err(e),
            Err(_) => bail!("no {needle:?} on channel {channel} within {timeout:?}; got {text:?}"),
        }
    }
}

/// What a session delivered, by channel.
#[derive(Debug, Default)]
pub struct Channels {
    pub data: std::collections::HashMap<u8, Vec<u8>>,
}

impl Channels {
    pub fn text(&self, channel: u8) -> String {
        self.data.get(&channel).map(|d| String::from_utf8_lossy(d).into_owned()).unwrap_or_default()
    }
}

/// One decoded server frame and the bytes of the buffer it used.
#[derive(Debug, PartialEq)]
struct Frame {
    fin: bool,
    /// Continuation fragments have opcode 0.
    opcode: u8,
    payload: Vec<u8>,
    used: usize,
}

/// Decodes one complete server frame from `buf` (server frames are unmasked).
fn parse_frame(buf: &[u8]) -> anyhow::Result<Option<Frame>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let opcode = buf[0] & 0x0f;
    if buf[1] & 0x80 != 0 {
        bail!("the server sent a masked frame");
    }
    let (len, mut at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")) as usize, 10),
        126 | 127 => return Ok(None),
        n => (n as usize, 2),
    };
    if buf.len() < at + len {
        return Ok(None);
    }
    let payload = buf[at..at + len].to_vec();
    at += len;
    Ok(Some(Frame { fin: buf[0] & 0x80 != 0, opcode, payload, used: at }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_with_each_length_form() {
        assert_eq!(
            parse_frame(&[0x82, 2, 1, b'x']).unwrap(),
            Some(Frame { fin: true, opcode: 2, payload: vec![1, b'x'], used: 4 })
        );
        assert_eq!(
            parse_frame(&[0x02, 1, 1]).unwrap(),
            Some(Frame { fin: false, opcode: 2, payload: vec![1], used: 3 }),
            "first fragment"
        );
        let mut long = vec![0x82, 126, 0x01, 0x00];
        long.extend(vec![7u8; 256]);
        assert_eq!(parse_frame(&long).unwrap().unwrap().payload.len(), 256);
        assert_eq!(parse_frame(&long[..100]).unwrap(), None, "incomplete");
        assert!(parse_frame(&[0x82, 0x81, 0, 0, 0, 0, 0]).is_err(), "masked server frame");
    }

    #[test]
    fn urls_split_into_address_and_path() {
        assert_eq!(split_url("http://127.0.0.1:3456/exec/abc").unwrap(), ("127.0.0.1:3456", "/exec/abc"));
        assert_eq!(url_addr("http://127.0.0.1:3456/exec/abc").unwrap().port(), 3456);
        assert!(split_url("https://x/").is_err());
    }
}
