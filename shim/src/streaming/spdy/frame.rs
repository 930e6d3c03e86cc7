//! SPDY/3 frames and their wire format: an encoder and a decoder, each owning its direction's
//! header compression state.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub(crate) use super::headers::Headers;
use super::zlib::{HeaderCompressor, HeaderDecompressor};
use super::SpdyError;

pub(crate) const VERSION: u16 = 3;
pub(crate) const FLAG_FIN: u8 = 0x01;
/// Length fields are 24 bits.
const MAX_LENGTH: usize = (1 << 24) - 1;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes the server sends.
pub(crate) const RST_PROTOCOL_ERROR: u32 = 1;
pub(crate) const RST_REFUSED_STREAM: u32 = 3;
#[cfg(test)]
pub(crate) const RST_CANCEL: u32 = 5;

/// One settings entry (id, value and its flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Setting {
    pub(crate) flags: u8,
    pub(crate) id: u32,
    pub(crate) value: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    SynStream { stream_id: u32, associated_to: u32, priority: u8, flags: u8, headers: Headers },
    SynReply { stream_id: u32, flags: u8, headers: Headers },
    RstStream { stream_id: u32, status: u32 },
    Settings { flags: u8, entries: Vec<Setting> },
    Ping { id: u32 },
    GoAway { last_good_stream_id: u32, status: u32 },
    Headers { stream_id: u32, flags: u8, headers: Headers },
    WindowUpdate { stream_id: u32, delta: u32 },
    Data { stream_id: u32, flags: u8, data: Bytes },
}

/// Encodes frames; compresses header blocks in this direction's zlib stream.
pub(crate) struct FrameEncoder {
    zlib: HeaderCompressor,
}

impl FrameEncoder {
    pub(crate) fn new() -> Result<Self, SpdyError> {
        Ok(FrameEncoder { zlib: HeaderCompressor::new()? })
    }

    /// Appends `frame` to `out`.
    pub(crate) fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        match frame {
            Frame::SynStream { stream_id, associated_to, priority, flags, headers } => {
                let block = self.header_block(headers)?;
                control(out, TYPE_SYN_STREAM, *flags, 10 + block.len())?;
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(associated_to & 0x7fff_ffff);
                out.put_u8((priority & 0x7) << 5);
                out.put_u8(0);
                out.extend_from_slice(&block);
            }
            Frame::SynReply { stream_id, flags, headers } | Frame::Headers { stream_id, flags, headers } => {
                let kind = if matches!(frame, Frame::SynReply { .. }) { TYPE_SYN_REPLY } else { TYPE_HEADERS };
                let block = self.header_block(headers)?;
                control(out, kind, *flags, 4 + block.len())?;
                out.put_u32(stream_id & 0x7fff_ffff);
                out.extend_from_slice(&block);
            }
            Frame::RstStream { stream_id, status } => fixed(out, TYPE_RST_STREAM, *stream_id, *status)?,
            Frame::Settings { flags, entries } => {
                control(out, TYPE_SETTINGS, *flags, 4 + 8 * entries.len())?;
                out.put_u32(entries.len() as u32);
                for s in entries {
                    out.put_u32((u32::from(s.flags) << 24) | (s.id & 0xff_ffff));
                    out.put_u32(s.value);
                }
            }
            Frame::Ping { id } => {
                control(out, TYPE_PING, 0, 4)?;
                out.put_u32(*id);
            }
            Frame::GoAway { last_good_stream_id: id, status } => fixed(out, TYPE_GOAWAY, *id, *status)?,
            Frame::WindowUpdate { stream_id, delta } => {
                fixed(out, TYPE_WINDOW_UPDATE, *stream_id, delta & 0x7fff_ffff)?
            }
            Frame::Data { stream_id, flags, data } => {
                if data.len() > MAX_LENGTH {
                    return Err(SpdyError::Malformed { what: "oversized DATA" });
                }
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32((u32::from(*flags) << 24) | data.len() as u32);
                out.extend_from_slice(data);
            }
        }
        Ok(())
    }

    fn header_block(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let raw = headers.encode();
        let mut block = Vec::new();
        self.zlib.compress(&raw, &mut block)?;
        Ok(block)
    }
}

/// A control frame of two words: a stream id (or the last good one) and a status or delta.
fn fixed(out: &mut Vec<u8>, kind: u16, stream_id: u32, word: u32) -> Result<(), SpdyError> {
    control(out, kind, 0, 8)?;
    out.put_u32(stream_id & 0x7fff_ffff);
    out.put_u32(word);
    Ok(())
}

fn control(out: &mut Vec<u8>, kind: u16, flags: u8, len: usize) -> Result<(), SpdyError> {
    if len > MAX_LENGTH {
        return Err(SpdyError::Malformed { what: "oversized control" });
    }
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u32((u32::from(flags) << 24) | len as u32);
    Ok(())
}

/// Decodes frames; decompresses header blocks in this direction's zlib stream.
pub(crate) struct FrameDecoder {
    zlib: HeaderDecompressor,
}

impl FrameDecoder {
    pub(crate) fn new() -> Self {
        FrameDecoder { zlib: HeaderDecompressor::new() }
    }

    /// Takes the next complete frame off the front of `buf`, or `None` until one is there.
    /// Control frames of unknown types are skipped, as SPDY/3 asks.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        loop {
            if buf.len() < 8 {
                return Ok(None);
            }
            let len = (u32::from_be_bytes([0, buf[5], buf[6], buf[7]])) as usize;
            if buf.len() < 8 + len {
                buf.reserve(8 + len - buf.len());
                return Ok(None);
            }
            let mut frame = buf.split_to(8 + len).freeze();
            let first = frame.get_u32();
            let flags = frame.get_u8();
            frame.advance(3);
            if first & 0x8000_0000 == 0 {
                return Ok(Some(Frame::Data { stream_id: first & 0x7fff_ffff, flags, data: frame }));
            }
            let version = ((first >> 16) & 0x7fff) as u16;
            if version != VERSION {
                return Err(SpdyError::Version { version });
            }
            if let Some(decoded) = self.control((first & 0xffff) as u16, flags, frame)? {
                return Ok(Some(decoded));
            }
        }
    }

    fn control(&mut self, kind: u16, flags: u8, mut p: Bytes) -> Result<Option<Frame>, SpdyError> {
        let need = |p: &Bytes, n: usize, what| {
            if p.len() < n {
                Err(SpdyError::Malformed { what })
            } else {
                Ok(())
            }
        };
        let frame = match kind {
            TYPE_SYN_STREAM => {
                need(&p, 10, "SYN_STREAM")?;
                self.syn_stream(flags, p)?
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                need(&p, 4, "SYN_REPLY/HEADERS")?;
                let stream_id = p.get_u32() & 0x7fff_ffff;
                let headers = self.header_block(&p)?;
                if kind == TYPE_SYN_REPLY {
                    Frame::SynReply { stream_id, flags, headers }
                } else {
                    Frame::Headers { stream_id, flags, headers }
                }
            }
            TYPE_RST_STREAM => {
                need(&p, 8, "RST_STREAM")?;
                Frame::RstStream { stream_id: p.get_u32() & 0x7fff_ffff, status: p.get_u32() }
            }
            TYPE_SETTINGS => {
                need(&p, 4, "SETTINGS")?;
                let count = p.get_u32() as usize;
                if count > p.len() / 8 {
                    return Err(SpdyError::Malformed { what: "SETTINGS" });
                }
                let entries = (0..count)
                    .map(|_| {
                        let word = p.get_u32();
                        Setting { flags: (word >> 24) as u8, id: word & 0xff_ffff, value: p.get_u32() }
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            TYPE_PING => {
                need(&p, 4, "PING")?;
                Frame::Ping { id: p.get_u32() }
            }
            TYPE_GOAWAY => {
                need(&p, 4, "GOAWAY")?;
                let last_good_stream_id = p.get_u32() & 0x7fff_ffff;
                let status = if p.len() >= 4 { p.get_u32() } else { 0 };
                Frame::GoAway { last_good_stream_id, status }
            }
            TYPE_WINDOW_UPDATE => {
                need(&p, 8, "WINDOW_UPDATE")?;
                Frame::WindowUpdate { stream_id: p.get_u32() & 0x7fff_ffff, delta: p.get_u32() & 0x7fff_ffff }
            }
            _ => return Ok(None),
        };
        Ok(Some(frame))
    }

    fn syn_stream(&mut self, flags: u8, mut p: Bytes) -> Result<Frame, SpdyError> {
        let stream_id = p.get_u32() & 0x7fff_ffff;
        let associated_to = p.get_u32() & 0x7fff_ffff;
        let priority = p.get_u8() >> 5;
        p.advance(1);
        let headers = self.header_block(&p)?;
        Ok(Frame::SynStream { stream_id, associated_to, priority, flags, headers })
    }

    fn header_block(&mut self, compressed: &[u8]) -> Result<Headers, SpdyError> {
        let raw = self.zlib.decompress(compressed)?;
        Headers::parse(&raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 3,
                flags: FLAG_FIN,
                headers: Headers::from_pairs(&[("streamtype", "error"), ("port", "80"), ("requestid", "0")]),
            },
            Frame::SynReply { stream_id: 1, flags: 0, headers: Headers::default() },
            Frame::Headers { stream_id: 3, flags: FLAG_FIN, headers: Headers::from_pairs(&[("x", "a\0b")]) },
            Frame::RstStream { stream_id: 5, status: RST_CANCEL },
            Frame::Settings { flags: 1, entries: vec![Setting { flags: 1, id: 7, value: 65536 }] },
            Frame::Ping { id: 7 },
            Frame::GoAway { last_good_stream_id: 9, status: 0 },
            Frame::WindowUpdate { stream_id: 1, delta: 1 << 20 },
            Frame::Data { stream_id: 3, flags: 0, data: Bytes::from_static(b"hello") },
            Frame::Data { stream_id: 3, flags: FLAG_FIN, data: Bytes::new() },
        ]
    }

    #[test]
    fn every_frame_round_trips_through_one_connection() {
        let mut enc = FrameEncoder::new().expect("encoder");
        let mut dec = FrameDecoder::new();
        let mut wire = Vec::new();
        for frame in all_frames() {
            enc.encode(&frame, &mut wire).expect("encode");
        }
        // Feed the bytes one at a time: the decoder must wait for whole frames.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in wire {
            buf.put_u8(byte);
            while let Some(frame) = dec.decode(&mut buf).expect("decode") {
                got.push(frame);
            }
        }
        assert_eq!(got, all_frames());
        assert!(buf.is_empty());
    }

    #[test]
    fn the_wire_layout_is_spdy3() {
        let mut enc = FrameEncoder::new().expect("encoder");
        let mut wire = Vec::new();
        enc.encode(&Frame::Ping { id: 1 }, &mut wire).expect("encode");
        assert_eq!(wire, [0x80, 0x03, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1]);
        wire.clear();
        let data = Frame::Data { stream_id: 5, flags: FLAG_FIN, data: Bytes::from_static(b"ab") };
        enc.encode(&data, &mut wire).expect("encode");
        assert_eq!(wire, [0, 0, 0, 5, 1, 0, 0, 2, b'a', b'b']);
    }

    #[test]
    fn unknown_control_frames_are_skipped_and_bad_versions_refused() {
        let mut dec = FrameDecoder::new();
        let mut buf = BytesMut::from(&[0x80, 0x03, 0x00, 0x0a, 0, 0, 0, 1, 0xff][..]);
        buf.extend_from_slice(&[0x80, 0x03, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 3]);
        assert_eq!(dec.decode(&mut buf).expect("decode"), Some(Frame::Ping { id: 3 }));
        let mut buf = BytesMut::from(&[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 3][..]);
        assert!(matches!(dec.decode(&mut buf), Err(SpdyError::Version { version: 2 })));
    }
}
