//! RFC 6455 frames: encode (masked or not), decode (unmasking), and the handshake's accept key.

use base64::Engine;
use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::WsError;

pub(crate) const OP_CONTINUATION: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xa;

/// Close status: normal closure.
pub(crate) const CLOSE_NORMAL: u16 = 1000;

const HANDSHAKE_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WsFrame {
    pub(crate) fin: bool,
    pub(crate) opcode: u8,
    pub(crate) payload: Bytes,
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub(crate) fn accept_key(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.trim().as_bytes());
    sha.update(HANDSHAKE_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// Appends `frame` to `out`; clients mask (`Some(key)`), servers do not.
pub(crate) fn encode(frame: &WsFrame, mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    out.put_u8(u8::from(frame.fin) << 7 | (frame.opcode & 0x0f));
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let len = frame.payload.len();
    if len < 126 {
        out.put_u8(mask_bit | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.put_u8(mask_bit | 126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(mask_bit | 127);
        out.put_u64(len as u64);
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(frame.payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(&frame.payload),
    }
}

/// Takes the next complete frame off `buf` (unmasked), or `None` until one is there.
pub(crate) fn decode(buf: &mut BytesMut, max_payload: usize) -> Result<Option<WsFrame>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(WsError::Reserved);
    }
    let opcode = b0 & 0x0f;
    if !matches!(opcode, OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG) {
        return Err(WsError::Opcode { opcode });
    }
    let fin = b0 & 0x80 != 0;
    let masked = b1 & 0x80 != 0;
    let (len, mut header) = match b1 & 0x7f {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")), 10),
        126 | 127 => return Ok(None),
        n => (u64::from(n), 2),
    };
    if opcode >= OP_CLOSE && (!fin || len > 125) {
        return Err(WsError::Control);
    }
    if len > max_payload as u64 {
        return Err(WsError::TooLarge { limit: max_payload });
    }
    let len = len as usize;
    let key_at = header;
    if masked {
        header += 4;
    }
    if buf.len() < header + len {
        buf.reserve(header + len - buf.len());
        return Ok(None);
    }
    let key = masked.then(|| [buf[key_at], buf[key_at + 1], buf[key_at + 2], buf[key_at + 3]]);
    buf.advance(header);
    let mut payload = buf.split_to(len);
    if let Some(key) = key {
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= key[i % 4];
        }
    }
    Ok(Some(WsFrame { fin, opcode, payload: payload.freeze() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc6455_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn rfc6455_masked_hello_decodes() {
        // RFC 6455 section 5.7: a single-frame masked text message "Hello".
        let mut buf = BytesMut::from(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58][..]);
        let frame = decode(&mut buf, 1024).expect("decode").expect("a frame");
        assert_eq!(frame, WsFrame { fin: true, opcode: OP_TEXT, payload: Bytes::from_static(b"Hello") });
        assert!(buf.is_empty());
    }

    #[test]
    fn frames_of_every_length_class_round_trip_masked_and_not() {
        for len in [0usize, 5, 125, 126, 65535, 65536, 70000] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let payload: Bytes = (0..len).map(|i| i as u8).collect::<Vec<_>>().into();
                let frame = WsFrame { fin: len % 2 == 0, opcode: OP_BINARY, payload };
                let mut wire = Vec::new();
                encode(&frame, mask, &mut wire);
                let mut buf = BytesMut::new();
                // Partial input yields nothing until the frame is whole.
                buf.extend_from_slice(&wire[..wire.len() - 1]);
                assert_eq!(decode(&mut buf, 1 << 20).expect("decode"), None);
                buf.extend_from_slice(&wire[wire.len() - 1..]);
                assert_eq!(decode(&mut buf, 1 << 20).expect("decode"), Some(frame));
            }
        }
    }

    #[test]
    fn violations_are_refused() {
        let mut reserved = BytesMut::from(&[0xc2, 0x00][..]);
        assert!(matches!(decode(&mut reserved, 10), Err(WsError::Reserved)));
        let mut opcode = BytesMut::from(&[0x83, 0x00][..]);
        assert!(matches!(decode(&mut opcode, 10), Err(WsError::Opcode { opcode: 3 })));
        let mut fragmented_ping = BytesMut::from(&[0x09, 0x00][..]);
        assert!(matches!(decode(&mut fragmented_ping, 10), Err(WsError::Control)));
        let mut big = BytesMut::from(&[0x82, 0x7e, 0x01, 0x00][..]);
        assert!(matches!(decode(&mut big, 10), Err(WsError::TooLarge { .. })));
    }
}
