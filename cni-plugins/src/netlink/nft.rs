//! nf_tables set and map elements over nfnetlink, and one-time table set-up through `nft -f -`.
//!
//! Measured here: one `nft -f -` run costs 5–7 ms, twice the whole ADD budget, so the per-pod
//! work (adding/removing a pod address, a port mapping, an anti-spoofing pair) is one nfnetlink
//! batch of set-element messages (~0.1 ms). The tables, sets and rules that reference them are
//! created once per network by `nft -f -`, when the first element operation finds them missing.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use super::msg::{Attrs, Msg, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
use super::{NlError, Socket};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DESTROYSETELEM: u16 = 30;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

/// nf_tables families (`NFPROTO_*`).
pub const FAMILY_INET: u8 = 1;
pub const FAMILY_BRIDGE: u8 = 7;

/// Errors from the one-time `nft -f -` set-up.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft")]
    Spawn(#[source] std::io::Error),
    #[error("nft -f - failed: {stderr}")]
    Failed { stderr: String },
    #[error("nf_tables set elements of {table}/{set}")]
    Netlink {
        table: String,
        set: String,
        #[source]
        source: NlError,
    },
}

/// Builders for element keys and values: each component padded to 4 bytes, as nftables'
/// registers hold them (so concatenations are plain appends).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Key(pub Vec<u8>);

impl Key {
    pub fn new() -> Key {
        Key(Vec::with_capacity(16))
    }

    fn push(mut self, bytes: &[u8]) -> Key {
        self.0.extend_from_slice(bytes);
        self.0.resize((self.0.len() + 3) & !3, 0);
        self
    }

    pub fn ip(self, ip: IpAddr) -> Key {
        match ip {
            IpAddr::V4(a) => self.push(&a.octets()),
            IpAddr::V6(a) => self.push(&a.octets()),
        }
    }

    /// An `inet_proto` (6 = tcp, 17 = udp, 132 = sctp).
    pub fn proto(self, p: u8) -> Key {
        self.push(&[p])
    }

    /// An `inet_service` (port, network byte order).
    pub fn port(self, port: u16) -> Key {
        self.push(&port.to_be_bytes())
    }

    /// An `ifname`: 16 bytes, NUL-padded.
    pub fn ifname(self, name: &str) -> Key {
        let mut b = [0u8; 16];
        let n = name.len().min(15);
        b[..n].copy_from_slice(&name.as_bytes()[..n]);
        self.push(&b)
    }

    pub fn mac(self, mac: [u8; 6]) -> Key {
        self.push(&mac)
    }
}

/// One element: a key, and a value when the set is a map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elem {
    pub key: Key,
    pub data: Option<Key>,
}

/// Adds or removes elements of one set.
#[derive(Debug, Clone)]
pub struct SetOp<'a> {
    pub family: u8,
    pub table: &'a str,
    pub set: &'a str,
    pub elems: Vec<Elem>,
    pub action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Add; an equal element already present is fine.
    Add,
    /// Add; an element with the same key is an error (`EEXIST`), e.g. a host port in use.
    AddExclusive,
    /// Remove; an absent element is fine.
    Remove,
}

fn nfgen(family: u8) -> [u8; 4] {
    let res_id = if family == 0 { NFNL_SUBSYS_NFTABLES } else { 0 };
    let mut h = [0u8; 4];
    h[0] = family;
    h[2..4].copy_from_slice(&res_id.to_be_bytes());
    h
}

fn elems_msg(ty: u16, flags: u16, op_family: u8, table: &str, set: &str, elems: &[Elem]) -> Msg {
    let mut msg = Msg::new((NFNL_SUBSYS_NFTABLES << 8) | ty, flags)
        .header(&nfgen(op_family))
        .str(NFTA_SET_ELEM_LIST_TABLE, table)
        .str(NFTA_SET_ELEM_LIST_SET, set)
        .nest(NFTA_SET_ELEM_LIST_ELEMENTS);
    for e in elems {
        msg = msg.nest(NFTA_LIST_ELEM).nest(NFTA_SET_ELEM_KEY).attr(NFTA_DATA_VALUE, &e.key.0).end();
        if let Some(d) = &e.data {
            msg = msg.nest(NFTA_SET_ELEM_DATA).attr(NFTA_DATA_VALUE, &d.0).end();
        }
        msg = msg.end();
    }
    msg.end()
}

impl Socket {
    /// A netfilter socket in the calling thread's namespace.
    pub fn netfilter() -> Result<Socket, NlError> {
        Socket::open(super::socket::NETLINK_NETFILTER)
    }

    /// Applies `ops` in one atomic nf_tables transaction.
    pub fn nft_apply(&mut self, ops: &[SetOp]) -> Result<(), NlError> {
        let ops: Vec<&SetOp> = ops.iter().filter(|o| !o.elems.is_empty()).collect();
        if ops.is_empty() {
            return Ok(());
        }
        let mut wire = Vec::with_capacity(512);
        let seq = self.next_seq();
        let mut begin = Msg::new(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST).header(&nfgen(0));
        wire.extend_from_slice(begin.finish(seq));
        let first = self.next_seq();
        let mut last = first;
        for (i, op) in ops.iter().enumerate() {
            let (ty, extra) = match op.action {
                Action::Add => (NFT_MSG_NEWSETELEM, NLM_F_CREATE),
                Action::AddExclusive => (NFT_MSG_NEWSETELEM, NLM_F_CREATE | NLM_F_EXCL),
                Action::Remove => (NFT_MSG_DESTROYSETELEM, 0),
            };
            let flags = NLM_F_REQUEST | NLM_F_ACK | extra;
            let mut m = elems_msg(ty, flags, op.family, op.table, op.set, &op.elems);
            last = if i == 0 { first } else { self.next_seq() };
            wire.extend_from_slice(m.finish(last));
        }
        let end_seq = self.next_seq();
        let mut end = Msg::new(NFNL_MSG_BATCH_END, NLM_F_REQUEST).header(&nfgen(0));
        wire.extend_from_slice(end.finish(end_seq));
        self.send_bytes(&wire)?;
        self.wait_ack(first, last)
    }

    /// Whether set `set` of `table` holds an element with `key`.
    pub fn nft_has(&mut self, family: u8, table: &str, set: &str, key: &Key) -> Result<bool, NlError> {
        Ok(self.nft_get(family, table, set, key)?.is_some())
    }

    /// The element of `set` with `key`: `None` when there is none, else its value (empty for a
    /// plain set).
    pub fn nft_get(&mut self, family: u8, table: &str, set: &str, key: &Key) -> Result<Option<Vec<u8>>, NlError> {
        let elem = Elem { key: key.clone(), data: None };
        let msg = elems_msg(NFT_MSG_GETSETELEM, 0, family, table, set, &[elem]);
        Ok(self.get(msg, &[libc::ENOENT])?.map(|body| element_data(&body)))
    }
}

/// The value of the first element in a GETSETELEM answer (the body after its `nfgenmsg`).
fn element_data(body: &[u8]) -> Vec<u8> {
    let data = Attrs::after(body, 4)
        .get(NFTA_SET_ELEM_LIST_ELEMENTS)
        .and_then(|l| Attrs::new(l).get(NFTA_LIST_ELEM))
        .and_then(|e| Attrs::new(e).get(NFTA_SET_ELEM_DATA))
        .and_then(|d| Attrs::new(d).get(NFTA_DATA_VALUE));
    data.map(<[u8]>::to_vec).unwrap_or_default()
}

/// Runs `script` through `nft -f -` (in the calling process's namespace).
pub fn nft_script(script: &str) -> Result<(), NftError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Failed { stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}

/// Applies `ops`; when a table or set is missing, runs `setup` once and tries again.
pub fn apply_with_setup(ops: &[SetOp], setup: &dyn Fn() -> String) -> Result<(), NftError> {
    let wrap = |source: NlError| NftError::Netlink {
        table: ops.first().map(|o| o.table.to_string()).unwrap_or_default(),
        set: ops.first().map(|o| o.set.to_string()).unwrap_or_default(),
        source,
    };
    let mut sock = Socket::netfilter().map_err(wrap)?;
    match sock.nft_apply(ops) {
        Err(e) if e.is(libc::ENOENT) && ops.iter().any(|o| o.action != Action::Remove) => {
            nft_script(&setup())?;
            sock.nft_apply(ops).map_err(wrap)
        }
        // Removing from a table that does not exist: nothing to remove.
        Err(e) if e.is(libc::ENOENT) => Ok(()),
        other => other.map_err(wrap),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_data_is_read_from_a_get_answer() {
        let value = Key::new().ip("10.0.0.5".parse().unwrap()).port(80);
        let elem = Elem { key: Key::new().proto(6).port(8080), data: Some(value.clone()) };
        let mut msg = elems_msg(NFT_MSG_NEWSETELEM, 0, FAMILY_INET, "t", "dnat4", &[elem]);
        let wire = msg.finish(1).to_vec();
        assert_eq!(element_data(&wire[16..]), value.0, "after the 16-byte nlmsghdr");
        let plain = Elem { key: Key::new().proto(6).port(8080), data: None };
        let mut msg = elems_msg(NFT_MSG_NEWSETELEM, 0, FAMILY_INET, "t", "s", &[plain]);
        assert!(element_data(&msg.finish(1)[16..]).is_empty());
    }

    #[test]
    fn keys_are_register_padded() {
        let k = Key::new().proto(6).port(8080);
        assert_eq!(k.0, vec![6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        let k = Key::new().ip("10.0.0.5".parse().unwrap()).port(80);
        assert_eq!(k.0, vec![10, 0, 0, 5, 0, 80, 0, 0]);
        assert_eq!(Key::new().ifname("veth0").0.len(), 16);
        assert_eq!(Key::new().ifname("v").mac([1, 2, 3, 4, 5, 6]).0.len(), 24);
        assert_eq!(Key::new().ip("fd00::1".parse().unwrap()).0.len(), 16);
    }
}
