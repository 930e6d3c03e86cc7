//! The CNI error result: the spec's well-known codes and the JSON a plugin prints on failure.

use serde::Serialize;

/// Error codes defined by the CNI spec (1.1, "Error"); 100 and above are plugin-specific.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    IncompatibleVersion,
    UnsupportedField,
    UnknownContainer,
    InvalidEnv,
    Io,
    Decode,
    InvalidNetworkConfig,
    TryAgainLater,
    NotAvailable,
    CannotGc,
    /// A plugin-specific code, 100 or more.
    Plugin(u32),
}

/// Host-local: the range set has no free address.
pub const CODE_RANGE_EXHAUSTED: u32 = 100;
/// Host-local: a requested address cannot be honoured.
pub const CODE_REQUESTED_IP: u32 = 101;
/// A kernel operation (netlink, nftables, sysctl) failed; the message names it.
pub const CODE_KERNEL: u32 = 110;
/// The interface to create already exists (in the container or on the host).
pub const CODE_LINK_EXISTS: u32 = 111;
/// A host port of a port mapping is already mapped.
pub const CODE_PORT_IN_USE: u32 = 112;
/// A VXLAN/host-gw peer cannot be reached as configured (e.g. not on this L2 segment).
pub const CODE_PEER: u32 = 113;

/// Turns a kernel-side error into code 110 naming the operation, with the cause as details.
pub trait KernelContext<T> {
    fn kernel(self, what: impl FnOnce() -> String) -> Result<T, CniError>;
}

impl<T, E: std::error::Error> KernelContext<T> for Result<T, E> {
    fn kernel(self, what: impl FnOnce() -> String) -> Result<T, CniError> {
        self.map_err(|e| {
            let chain = source_chain(&e);
            let details = if chain.is_empty() { e.to_string() } else { format!("{e}: {chain}") };
            CniError::new(ErrorCode::Plugin(CODE_KERNEL), what()).with_details(details)
        })
    }
}

impl ErrorCode {
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnsupportedField => 2,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::InvalidEnv => 4,
            ErrorCode::Io => 5,
            ErrorCode::Decode => 6,
            ErrorCode::InvalidNetworkConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::NotAvailable => 50,
            ErrorCode::CannotGc => 51,
            ErrorCode::Plugin(c) => c.max(100),
        }
    }
}

/// A failed CNI operation, as reported to the runtime.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {}: {msg}", code.code())]
pub struct CniError {
    pub code: ErrorCode,
    pub msg: String,
    pub details: String,
}

#[derive(Serialize)]
struct ErrorJson<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'a str,
    code: u32,
    msg: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    details: &'a str,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Self { code, msg: msg.into(), details: String::new() }
    }

    /// Adds the underlying cause, shown to the user as `details`.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error object the spec wants on stdout.
    pub fn to_json(&self, cni_version: &str) -> String {
        let body = ErrorJson { cni_version, code: self.code.code(), msg: &self.msg, details: &self.details };
        serde_json::to_string(&body).unwrap_or_else(|_| {
            format!(r#"{{"cniVersion":"{cni_version}","code":{},"msg":"error"}}"#, self.code.code())
        })
    }
}

/// `Ok` when `errors` is empty, else one error with `code`, `msg` and every failure as details
/// (best-effort operations such as DEL and GC try every step and report them together).
pub fn all_or_report(errors: Vec<String>, code: ErrorCode, msg: &str) -> Result<(), CniError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(code, msg).with_details(errors.join("; ")))
    }
}

/// Details for an error chain: each source after the first, joined.
pub fn source_chain(err: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut cur = err.source();
    while let Some(e) = cur {
        parts.push(e.to_string());
        cur = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_spec() {
        let all = [
            (ErrorCode::IncompatibleVersion, 1),
            (ErrorCode::UnsupportedField, 2),
            (ErrorCode::UnknownContainer, 3),
            (ErrorCode::InvalidEnv, 4),
            (ErrorCode::Io, 5),
            (ErrorCode::Decode, 6),
            (ErrorCode::InvalidNetworkConfig, 7),
            (ErrorCode::TryAgainLater, 11),
            (ErrorCode::NotAvailable, 50),
            (ErrorCode::CannotGc, 51),
            (ErrorCode::Plugin(120), 120),
        ];
        for (c, n) in all {
            assert_eq!(c.code(), n);
        }
    }

    #[test]
    fn json_shape() {
        let e = CniError::new(ErrorCode::Decode, "bad json").with_details("line 1");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.1.0")).unwrap();
        assert_eq!(v["code"], 6);
        assert_eq!(v["msg"], "bad json");
        assert_eq!(v["details"], "line 1");
        assert_eq!(v["cniVersion"], "1.1.0");
        let plain = CniError::new(ErrorCode::Io, "x").to_json("1.0.0");
        assert!(!plain.contains("details"));
    }
}
