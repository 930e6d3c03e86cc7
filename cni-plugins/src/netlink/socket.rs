//! A synchronous netlink socket: send one request and wait for its ack, or dump a table.
//!
//! Plugins are short-lived single-threaded processes, so a blocking socket with one request in
//! flight is all they need; the agent uses the same type from a dedicated thread.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::msg::{Attrs, Msg, NLMSG_HDRLEN};

pub const NETLINK_ROUTE: i32 = 0;
pub const NETLINK_NETFILTER: i32 = 12;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const SOL_NETLINK: i32 = 270;
const NETLINK_EXT_ACK: i32 = 11;
const NETLINK_CAP_ACK: i32 = 10;
const NETLINK_GET_STRICT_CHK: i32 = 12;

/// A failed netlink exchange.
#[derive(Debug, thiserror::Error)]
pub enum NlError {
    #[error("netlink socket: {op}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel refused the request; `msg` is its extended-ack text, if any.
    #[error("kernel refused the request: {}{}", io::Error::from_raw_os_error(*errno), ext(msg))]
    Kernel { errno: i32, msg: Option<String> },
    #[error("malformed netlink reply")]
    Malformed,
}

fn ext(msg: &Option<String>) -> String {
    msg.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
}

impl NlError {
    /// The errno when the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NlError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    pub fn is(&self, errno: i32) -> bool {
        self.errno() == Some(errno)
    }
}

/// A request's outcome and the bodies of the notifications echoed for it (see
/// [`Socket::request_echo`]).
pub type Echoed = (Result<(), NlError>, Vec<Vec<u8>>);

/// One netlink socket of a given protocol, bound in the network namespace it was opened in.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> NlError {
    move |source| NlError::Io { op, source }
}

fn setsockopt_int(fd: i32, opt: i32) {
    let one: libc::c_int = 1;
    // SAFETY: fd is an open socket; the option value is a valid c_int for the call's duration.
    // Failures (old kernels) only lose error texts or strict checking, so they are ignored.
    unsafe {
        libc::setsockopt(
            fd,
            SOL_NETLINK,
            opt,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

impl Socket {
    /// Opens a socket of `protocol` in the calling thread's current network namespace.
    pub fn open(protocol: i32) -> Result<Socket, NlError> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
        if raw < 0 {
            return Err(io_err("socket")(io::Error::last_os_error()));
        }
        // SAFETY: raw is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        for opt in [NETLINK_EXT_ACK, NETLINK_CAP_ACK, NETLINK_GET_STRICT_CHK] {
            setsockopt_int(raw, opt);
        }
        Ok(Socket { fd, seq: 0, buf: vec![0; 64 * 1024] })
    }

    pub fn route() -> Result<Socket, NlError> {
        Socket::open(NETLINK_ROUTE)
    }

    fn send(&mut self, msg: &mut Msg) -> Result<u32, NlError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = msg.finish(seq);
        self.send_bytes(bytes)?;
        Ok(seq)
    }

    /// Sends prepared bytes (e.g. a netfilter batch of several messages).
    pub(crate) fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), NlError> {
        // SAFETY: the kernel is the destination (sockaddr_nl zeroed = pid 0); `bytes` is valid
        // for reading for its length.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: as above; addr lives across the call.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io_err("sendto")(io::Error::last_os_error()));
        }
        Ok(())
    }

    pub(crate) fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn recv(&mut self) -> Result<usize, NlError> {
        loop {
            // SAFETY: buf is writable for its whole length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len(), 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(io_err("recv")(err));
            }
        }
    }

    /// Sends `msg` with NLM_F_ACK and waits for the kernel's answer.
    pub fn request(&mut self, mut msg: Msg) -> Result<(), NlError> {
        msg.add_flags(super::msg::NLM_F_REQUEST | super::msg::NLM_F_ACK);
        let seq = self.send(&mut msg)?;
        self.wait_ack(seq, seq)
    }

    /// Sends every message of `msgs` in one datagram, each with NLM_F_ACK, and returns each
    /// one's outcome in order. The kernel handles them one after the other (a failed one does
    /// not stop the rest) and acknowledges each, so N requests cost one round trip instead of N.
    pub fn request_all(&mut self, msgs: Vec<Msg>) -> Result<Vec<Result<(), NlError>>, NlError> {
        let mut batch = Vec::new();
        let first = self.seq.wrapping_add(1);
        for mut msg in msgs {
            msg.add_flags(super::msg::NLM_F_REQUEST | super::msg::NLM_F_ACK);
            let seq = self.next_seq();
            batch.extend_from_slice(msg.finish(seq));
        }
        let count = self.seq.wrapping_sub(first).wrapping_add(1) as usize;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.send_bytes(&batch)?;
        let mut outcomes: Vec<Option<Result<(), NlError>>> = (0..count).map(|_| None).collect();
        let mut pending = count;
        while pending > 0 {
            let n = self.recv()?;
            for_each_msg(&self.buf[..n], |ty, flags, seq, body| {
                let slot = seq.wrapping_sub(first) as usize;
                if ty != NLMSG_ERROR || slot >= count || outcomes[slot].is_some() {
                    return Ok(());
                }
                outcomes[slot] = Some(match parse_error(flags, body)? {
                    Some(e) => Err(e),
                    None => Ok(()),
                });
                pending -= 1;
                Ok(())
            })?;
        }
        Ok(outcomes.into_iter().flatten().collect())
    }

    /// Sends `msg` with NLM_F_ACK and NLM_F_ECHO: its outcome, and the bodies of the
    /// notifications the kernel echoed for it (Linux 6.2+ echoes new and changed links; older
    /// kernels echo nothing, and the caller looks the object up instead).
    pub fn request_echo(&mut self, mut msg: Msg) -> Result<Echoed, NlError> {
        msg.add_flags(super::msg::NLM_F_REQUEST | super::msg::NLM_F_ACK | super::msg::NLM_F_ECHO);
        let seq = self.send(&mut msg)?;
        let mut echoed = Vec::new();
        loop {
            let n = self.recv()?;
            let mut outcome: Option<Result<(), NlError>> = None;
            for_each_msg(&self.buf[..n], |ty, flags, mseq, body| {
                if mseq != seq || outcome.is_some() {
                    return Ok(());
                }
                if ty == NLMSG_ERROR {
                    outcome = Some(parse_error(flags, body)?.map_or(Ok(()), Err));
                } else {
                    echoed.push(body.to_vec());
                }
                Ok(())
            })?;
            if let Some(o) = outcome {
                return Ok((o, echoed));
            }
        }
    }

    /// Waits until every sequence number in `first..=last` has been acknowledged; the first
    /// error ends the wait (later replies carry other sequence numbers and are skipped by the
    /// next exchange).
    pub(crate) fn wait_ack(&mut self, first: u32, last: u32) -> Result<(), NlError> {
        loop {
            let n = self.recv()?;
            let mut outcome: Option<Result<(), NlError>> = None;
            for_each_msg(&self.buf[..n], |ty, flags, seq, body| {
                if outcome.is_some() || ty != NLMSG_ERROR || seq < first || seq > last {
                    return Ok(());
                }
                match parse_error(flags, body)? {
                    Some(e) => outcome = Some(Err(e)),
                    None if seq == last => outcome = Some(Ok(())),
                    None => {}
                }
                Ok(())
            })?;
            if let Some(o) = outcome {
                return o;
            }
        }
    }

    /// Sends a dump request and returns every reply message's body (after the netlink header).
    pub fn dump(&mut self, mut msg: Msg) -> Result<Vec<Vec<u8>>, NlError> {
        msg.add_flags(super::msg::NLM_F_REQUEST | super::msg::NLM_F_DUMP);
        let seq = self.send(&mut msg)?;
        let mut out = Vec::new();
        loop {
            let n = self.recv()?;
            let mut done = false;
            for_each_msg(&self.buf[..n], |ty, flags, mseq, body| {
                if mseq != seq {
                    return Ok(());
                }
                match ty {
                    NLMSG_DONE => done = true,
                    NLMSG_ERROR => {
                        if let Some(e) = parse_error(flags, body)? {
                            return Err(e);
                        }
                        done = true;
                    }
                    _ => out.push(body.to_vec()),
                }
                Ok(())
            })?;
            if done {
                return Ok(out);
            }
        }
    }

    /// Sends a request that answers with one message (e.g. RTM_GETLINK by name); `None` when the
    /// kernel says it does not exist (`missing` errno).
    pub fn get(&mut self, mut msg: Msg, missing: &[i32]) -> Result<Option<Vec<u8>>, NlError> {
        msg.add_flags(super::msg::NLM_F_REQUEST);
        let seq = self.send(&mut msg)?;
        loop {
            let n = self.recv()?;
            let mut answer: Option<Result<Option<Vec<u8>>, NlError>> = None;
            for_each_msg(&self.buf[..n], |ty, flags, mseq, body| {
                if mseq != seq || answer.is_some() {
                    return Ok(());
                }
                answer = Some(if ty == NLMSG_ERROR {
                    match parse_error(flags, body)? {
                        Some(e) if e.errno().is_some_and(|n| missing.contains(&n)) => Ok(None),
                        Some(e) => Err(e),
                        None => Ok(None),
                    }
                } else {
                    Ok(Some(body.to_vec()))
                });
                Ok(())
            })?;
            if let Some(a) = answer {
                return a;
            }
        }
    }
}

/// Calls `f(type, flags, seq, body)` for each message in a datagram.
fn for_each_msg(
    mut data: &[u8],
    mut f: impl FnMut(u16, u16, u32, &[u8]) -> Result<(), NlError>,
) -> Result<(), NlError> {
    while data.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(data[0..4].try_into().map_err(|_| NlError::Malformed)?);
        let len = len as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(NlError::Malformed);
        }
        let ty = u16::from_ne_bytes([data[4], data[5]]);
        let flags = u16::from_ne_bytes([data[6], data[7]]);
        let seq = u32::from_ne_bytes([data[8], data[9], data[10], data[11]]);
        f(ty, flags, seq, &data[NLMSG_HDRLEN..len])?;
        let next = (len + 3) & !3;
        data = data.get(next..).unwrap_or(&[]);
    }
    Ok(())
}

/// An NLMSG_ERROR body: `None` for an ack (error 0), else the error with its ext-ack text.
fn parse_error(flags: u16, body: &[u8]) -> Result<Option<NlError>, NlError> {
    let code = body.get(0..4).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]])).ok_or(NlError::Malformed)?;
    if code == 0 {
        return Ok(None);
    }
    let mut msg = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        // With NETLINK_CAP_ACK only the original header follows the error code.
        let tlvs = body.get(4 + NLMSG_HDRLEN..).unwrap_or(&[]);
        for (ty, val) in Attrs::new(tlvs) {
            if ty == NLMSGERR_ATTR_MSG {
                let text = val.split(|b| *b == 0).next().unwrap_or(&[]);
                msg = Some(String::from_utf8_lossy(text).into_owned());
            }
        }
    }
    Ok(Some(NlError::Kernel { errno: -code, msg }))
}
