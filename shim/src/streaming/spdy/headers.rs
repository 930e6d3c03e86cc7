//! SPDY/3 header blocks (uncompressed): lower-case names and NUL-separated values.

use bytes::{Buf, BufMut};

use super::SpdyError;

/// A header block with more entries than this is refused (moby/spdystream's limit too).
const MAX_HEADERS: u32 = 1000;

/// A header block: lower-case names; a value holding several values separates them with NUL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Headers(pub(crate) Vec<(String, String)>);

impl Headers {
    /// A block from (name, value) pairs, for tests and the test client.
    #[cfg(test)]
    pub(crate) fn from_pairs(pairs: &[(&str, &str)]) -> Headers {
        Headers(pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect())
    }

    /// The first value of `name` (case-insensitive).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        let (_, value) = self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name))?;
        value.split('\0').next()
    }

    /// The uncompressed header block: a count, then length-prefixed names and values.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.put_u32(self.0.len() as u32);
        for (name, value) in &self.0 {
            raw.put_u32(name.len() as u32);
            raw.extend(name.bytes().map(|b| b.to_ascii_lowercase()));
            raw.put_u32(value.len() as u32);
            raw.extend_from_slice(value.as_bytes());
        }
        raw
    }

    /// Parses an uncompressed header block.
    pub(crate) fn parse(mut raw: &[u8]) -> Result<Headers, SpdyError> {
        let truncated = SpdyError::HeaderBlock { reason: "truncated" };
        if raw.len() < 4 {
            return Err(truncated);
        }
        let count = raw.get_u32();
        if count > MAX_HEADERS {
            return Err(SpdyError::HeaderBlock { reason: "too many headers" });
        }
        let field = |raw: &mut &[u8]| -> Result<String, SpdyError> {
            if raw.len() < 4 {
                return Err(SpdyError::HeaderBlock { reason: "truncated" });
            }
            let len = raw.get_u32() as usize;
            if raw.len() < len {
                return Err(SpdyError::HeaderBlock { reason: "truncated" });
            }
            let text = String::from_utf8_lossy(&raw[..len]).into_owned();
            raw.advance(len);
            Ok(text)
        };
        let mut headers = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let name = field(&mut raw)?.to_ascii_lowercase();
            let value = field(&mut raw)?;
            headers.push((name, value));
        }
        Ok(Headers(headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lookup_is_case_insensitive_and_takes_the_first_value() {
        let h = Headers::from_pairs(&[("streamtype", "stdout"), ("x", "a\0b")]);
        assert_eq!(h.get("streamType"), Some("stdout"));
        assert_eq!(h.get("x"), Some("a"));
        assert_eq!(h.get("port"), None);
    }

    #[test]
    fn hostile_header_blocks_are_refused() {
        assert!(Headers::parse(&[0, 0, 0, 1, 0, 0, 0, 9, b'a']).is_err());
        assert!(Headers::parse(&[0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(Headers::parse(&[0, 0]).is_err());
    }

    #[test]
    fn blocks_round_trip() {
        let h = Headers::from_pairs(&[("streamtype", "error"), ("x", "a\0b")]);
        assert_eq!(Headers::parse(&h.encode()).expect("parse"), h);
    }
}
