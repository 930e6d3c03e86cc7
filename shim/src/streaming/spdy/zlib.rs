//! SPDY/3 header-block compression: one zlib stream per direction and connection, primed with
//! the SPDY dictionary and sync-flushed after every header block.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

use super::dictionary::HEADER_DICTIONARY;
use super::SpdyError;

/// Decompressed header blocks larger than this are refused (a zlib bomb guard).
const MAX_HEADER_BLOCK: usize = 1 << 20;

/// Compresses the header blocks one side sends.
pub(crate) struct HeaderCompressor {
    z: Compress,
}

impl HeaderCompressor {
    pub(crate) fn new() -> Result<Self, SpdyError> {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(&HEADER_DICTIONARY)
            .map_err(|err| SpdyError::Zlib { op: "compression", source: Box::new(err) })?;
        Ok(HeaderCompressor { z })
    }

    /// Compresses one header block and sync-flushes, so the peer can decode it at once.
    pub(crate) fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let mut consumed = 0;
        out.reserve(input.len() / 2 + 64);
        loop {
            let before = self.z.total_in();
            self.z
                .compress_vec(&input[consumed..], out, FlushCompress::Sync)
                .map_err(|err| SpdyError::Zlib { op: "compression", source: Box::new(err) })?;
            consumed += (self.z.total_in() - before) as usize;
            if consumed == input.len() && out.len() < out.capacity() {
                return Ok(());
            }
            out.reserve(out.capacity().max(64));
        }
    }
}

/// Decompresses the header blocks one side receives.
pub(crate) struct HeaderDecompressor {
    z: Decompress,
}

impl HeaderDecompressor {
    pub(crate) fn new() -> Self {
        HeaderDecompressor { z: Decompress::new(true) }
    }

    /// Decompresses one sync-flushed header block.
    pub(crate) fn decompress(&mut self, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(input.len() * 4 + 256);
        let mut consumed = 0;
        loop {
            let (in_before, out_before) = (self.z.total_in(), out.len());
            let result = self.z.decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync);
            consumed += (self.z.total_in() - in_before) as usize;
            match result {
                Ok(_) => {}
                Err(err) if err.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(&HEADER_DICTIONARY)
                        .map_err(|err| SpdyError::Zlib { op: "decompression", source: Box::new(err) })?;
                    continue;
                }
                Err(err) => return Err(SpdyError::Zlib { op: "decompression", source: Box::new(err) }),
            }
            if consumed == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(SpdyError::HeaderBlock { reason: "too large" });
            }
            if out.len() == out_before && self.z.total_in() == in_before && out.len() < out.capacity() {
                return Err(SpdyError::HeaderBlock { reason: "truncated compressed data" });
            }
            out.reserve(out.capacity());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_through_one_stream() {
        let mut c = HeaderCompressor::new().expect("compressor");
        let mut d = HeaderDecompressor::new();
        let blocks: [&[u8]; 3] = [b"\x00\x00\x00\x01streamtype", b"", &[7u8; 5000]];
        for block in blocks {
            let mut wire = Vec::new();
            c.compress(block, &mut wire).expect("compress");
            assert_eq!(d.decompress(&wire).expect("decompress"), block);
        }
    }

    #[test]
    fn the_stream_announces_the_spdy_dictionary() {
        let mut c = HeaderCompressor::new().expect("compressor");
        let mut wire = Vec::new();
        c.compress(b"x", &mut wire).expect("compress");
        // zlib header with FDICT set, then the dictionary's Adler-32 (as RFC 1950 defines it).
        assert_eq!(wire[1] & 0x20, 0x20);
        let (mut a, mut b) = (1u32, 0u32);
        for byte in HEADER_DICTIONARY {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!(u32::from_be_bytes([wire[2], wire[3], wire[4], wire[5]]), (b << 16) | a);
    }

    #[test]
    fn garbage_is_an_error() {
        let mut d = HeaderDecompressor::new();
        assert!(d.decompress(b"\x00\x01\x02\x03\x04").is_err());
    }
}
