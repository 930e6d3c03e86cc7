//! Netlink message building (header, fixed family header, nested attributes) and attribute parsing.

pub const NLMSG_HDRLEN: usize = 16;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_ECHO: u16 = 0x8;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A netlink message under construction.
#[derive(Debug, Clone)]
pub struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    /// A message of `ty` with `flags` (NLM_F_REQUEST and ACK/DUMP are added by the socket).
    pub fn new(ty: u16, flags: u16) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&[0; 8]);
        Msg { buf, nests: Vec::new() }
    }

    pub fn add_flags(&mut self, flags: u16) {
        let cur = u16::from_ne_bytes([self.buf[6], self.buf[7]]);
        self.buf[6..8].copy_from_slice(&(cur | flags).to_ne_bytes());
    }

    /// Appends a fixed header (ifinfomsg, rtmsg …), padded to 4 bytes.
    pub fn header(mut self, bytes: &[u8]) -> Msg {
        self.buf.extend_from_slice(bytes);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    pub fn attr(mut self, ty: u16, value: &[u8]) -> Msg {
        self.push_attr(ty, value);
        self
    }

    pub fn push_attr(&mut self, ty: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    pub fn u8(self, ty: u16, v: u8) -> Msg {
        self.attr(ty, &[v])
    }

    pub fn u16(self, ty: u16, v: u16) -> Msg {
        self.attr(ty, &v.to_ne_bytes())
    }

    pub fn u32(self, ty: u16, v: u32) -> Msg {
        self.attr(ty, &v.to_ne_bytes())
    }

    pub fn u32_be(self, ty: u16, v: u32) -> Msg {
        self.attr(ty, &v.to_be_bytes())
    }

    /// A NUL-terminated string attribute.
    pub fn str(self, ty: u16, v: &str) -> Msg {
        let mut bytes = Vec::with_capacity(v.len() + 1);
        bytes.extend_from_slice(v.as_bytes());
        bytes.push(0);
        self.attr(ty, &bytes)
    }

    /// Opens a nested attribute; close it with [`Msg::end`].
    pub fn nest(mut self, ty: u16) -> Msg {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }

    pub fn end(mut self) -> Msg {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    /// Applies `f` when `cond` holds (keeps builder chains readable).
    pub fn when(self, cond: bool, f: impl FnOnce(Msg) -> Msg) -> Msg {
        if cond {
            f(self)
        } else {
            self
        }
    }

    /// Fills in length and sequence number and returns the wire bytes.
    pub fn finish(&mut self, seq: u32) -> &[u8] {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        &self.buf
    }
}

/// Iterates the attributes of a buffer as (type without flag bits, payload).
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    data: &'a [u8],
}

impl<'a> Attrs<'a> {
    pub fn new(data: &'a [u8]) -> Attrs<'a> {
        Attrs { data }
    }

    /// The attributes following a fixed header of `hdr` bytes.
    pub fn after(body: &'a [u8], hdr: usize) -> Attrs<'a> {
        Attrs::new(body.get(align4(hdr)..).unwrap_or(&[]))
    }

    /// The payload of the first attribute of type `ty`.
    pub fn get(&self, ty: u16) -> Option<&'a [u8]> {
        self.clone().find(|(t, _)| *t == ty).map(|(_, v)| v)
    }

    pub fn get_u32(&self, ty: u16) -> Option<u32> {
        self.get(ty).and_then(|v| Some(u32::from_ne_bytes(v.get(0..4)?.try_into().ok()?)))
    }

    pub fn get_u8(&self, ty: u16) -> Option<u8> {
        self.get(ty).and_then(|v| v.first().copied())
    }

    pub fn get_str(&self, ty: u16) -> Option<String> {
        self.get(ty).map(|v| {
            let text = v.split(|b| *b == 0).next().unwrap_or(&[]);
            String::from_utf8_lossy(text).into_owned()
        })
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.data.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([self.data[0], self.data[1]]) as usize;
        let ty = u16::from_ne_bytes([self.data[2], self.data[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > self.data.len() {
            self.data = &[];
            return None;
        }
        let value = &self.data[4..len];
        self.data = self.data.get(align4(len)..).unwrap_or(&[]);
        Some((ty, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_nested() {
        let mut m =
            Msg::new(16, NLM_F_CREATE).header(&[1, 2, 3]).str(3, "eth0").nest(18).str(1, "veth").u32(2, 7).end();
        let bytes = m.finish(9).to_vec();
        assert_eq!(u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize, bytes.len());
        assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().unwrap()), 9);
        let attrs = Attrs::after(&bytes[NLMSG_HDRLEN..], 3);
        assert_eq!(attrs.get_str(3).as_deref(), Some("eth0"));
        let nested = Attrs::new(attrs.get(18).unwrap());
        assert_eq!(nested.get_str(1).as_deref(), Some("veth"));
        assert_eq!(nested.get_u32(2), Some(7));
        assert_eq!(attrs.get(99), None);
    }
}
