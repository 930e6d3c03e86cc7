//! The embedded store's on-disk records: `[len u32][crc32 u32][payload]`, little-endian, so a
//! torn tail (a crash mid-append) is recognised and cut off on replay.

use bytes::Bytes;

use super::Rev;

#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// A write in the log; create_rev is derived on replay.
    Put {
        rev: Rev,
        key: String,
        value: Bytes,
    },
    Delete {
        rev: Rev,
        key: String,
    },
    /// First record of a snapshot.
    SnapHeader {
        rev: Rev,
        compacted: Rev,
    },
    SnapEntry {
        key: String,
        value: Bytes,
        create_rev: Rev,
        mod_rev: Rev,
    },
    /// A retained history event, so watches resume across restarts.
    SnapEvent {
        rev: Rev,
        key: String,
        value: Option<Bytes>,
        prev: Option<Bytes>,
    },
}

pub fn encode(rec: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    match rec {
        Record::Put { rev, key, value } => {
            out.push(1);
            put_u64(out, *rev);
            put_bytes(out, key.as_bytes());
            put_bytes(out, value);
        }
        Record::Delete { rev, key } => {
            out.push(2);
            put_u64(out, *rev);
            put_bytes(out, key.as_bytes());
        }
        Record::SnapHeader { rev, compacted } => {
            out.push(3);
            put_u64(out, *rev);
            put_u64(out, *compacted);
        }
        Record::SnapEntry { key, value, create_rev, mod_rev } => {
            out.push(4);
            put_bytes(out, key.as_bytes());
            put_bytes(out, value);
            put_u64(out, *create_rev);
            put_u64(out, *mod_rev);
        }
        Record::SnapEvent { rev, key, value, prev } => {
            out.push(5);
            put_u64(out, *rev);
            put_bytes(out, key.as_bytes());
            put_opt(out, value.as_deref());
            put_opt(out, prev.as_deref());
        }
    }
    let len = (out.len() - start - 8) as u32;
    let crc = crc32(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes records from `buf`; returns them and the length of the valid prefix (a torn or
/// corrupt record ends the sequence).
pub fn decode_all(buf: &[u8]) -> (Vec<Record>, usize) {
    let mut recs = Vec::new();
    let mut pos = 0;
    while buf.len() - pos >= 8 {
        let len = u32::from_le_bytes(buf[pos..pos + 4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(buf[pos + 4..pos + 8].try_into().unwrap_or_default());
        let Some(payload) = buf.get(pos + 8..pos + 8 + len) else { break };
        if crc32(payload) != crc {
            break;
        }
        match decode(payload) {
            Some(r) => recs.push(r),
            None => break,
        }
        pos += 8 + len;
    }
    (recs, pos)
}

fn decode(p: &[u8]) -> Option<Record> {
    let mut r = Reader { p, pos: 1 };
    Some(match *p.first()? {
        1 => Record::Put { rev: r.u64()?, key: r.string()?, value: r.bytes()? },
        2 => Record::Delete { rev: r.u64()?, key: r.string()? },
        3 => Record::SnapHeader { rev: r.u64()?, compacted: r.u64()? },
        4 => Record::SnapEntry { key: r.string()?, value: r.bytes()?, create_rev: r.u64()?, mod_rev: r.u64()? },
        5 => Record::SnapEvent { rev: r.u64()?, key: r.string()?, value: r.opt()?, prev: r.opt()? },
        _ => return None,
    })
}

struct Reader<'a> {
    p: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.p.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<Bytes> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        Some(Bytes::copy_from_slice(self.take(n)?))
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    fn opt(&mut self) -> Option<Option<Bytes>> {
        match self.take(1)?[0] {
            0 => Some(None),
            _ => Some(Some(self.bytes()?)),
        }
    }
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_opt(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            put_bytes(out, b);
        }
    }
}

/// CRC-32 (IEEE), bitwise with a table built at compile time.
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = !0u32;
    for &b in data {
        c = TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_cut() {
        let recs = vec![
            Record::Put { rev: 1, key: "/a".into(), value: Bytes::from_static(b"{}") },
            Record::Delete { rev: 2, key: "/a".into() },
            Record::SnapHeader { rev: 2, compacted: 0 },
            Record::SnapEntry { key: "/b".into(), value: Bytes::from_static(b"x"), create_rev: 1, mod_rev: 2 },
            Record::SnapEvent { rev: 2, key: "/a".into(), value: None, prev: Some(Bytes::from_static(b"{}")) },
        ];
        let mut buf = Vec::new();
        for r in &recs {
            encode(r, &mut buf);
        }
        let full = buf.len();
        let (got, valid) = decode_all(&buf);
        assert_eq!(got, recs);
        assert_eq!(valid, full);
        for cut in 1..12 {
            let (got, valid) = decode_all(&buf[..full - cut]);
            assert_eq!(got.len(), recs.len() - 1, "cut {cut}");
            assert!(valid < full - cut + 1);
        }
        buf[full - 1] ^= 0xff;
        assert_eq!(decode_all(&buf).0.len(), recs.len() - 1);
    }
}
