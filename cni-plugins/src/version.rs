//! CNI spec versions this library speaks, version negotiation and the VERSION response.

use serde::Serialize;

use crate::error::{CniError, ErrorCode};

/// Every spec version a Berth plugin accepts, oldest first.
pub const SUPPORTED: &[&str] = &["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest spec version.
pub const CURRENT: &str = "1.1.0";

/// Accepts `requested` if this library supports it, else error code 1 naming it.
pub fn negotiate(requested: &str) -> Result<&'static str, CniError> {
    SUPPORTED.iter().copied().find(|v| *v == requested).ok_or_else(|| {
        CniError::new(
            ErrorCode::IncompatibleVersion,
            format!("incompatible CNI version {requested:?}: this plugin supports {}", SUPPORTED.join(", ")),
        )
    })
}

/// `a >= b` for dotted numeric versions (missing parts count as 0).
pub fn at_least(a: &str, b: &str) -> bool {
    fn parts(v: &str) -> Vec<u32> {
        v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
    }
    let (mut pa, mut pb) = (parts(a), parts(b));
    let n = pa.len().max(pb.len());
    pa.resize(n, 0);
    pb.resize(n, 0);
    pa >= pb
}

/// The VERSION command's answer.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct VersionInfo {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

/// The VERSION answer, echoing the caller's version when it is one we speak.
pub fn version_info(requested: Option<&str>) -> VersionInfo {
    let cni_version = requested.and_then(|r| negotiate(r).ok()).unwrap_or(CURRENT);
    VersionInfo {
        cni_version: cni_version.to_string(),
        supported_versions: SUPPORTED.iter().map(|s| s.to_string()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        assert_eq!(negotiate("0.4.0").unwrap(), "0.4.0");
        let err = negotiate("9.9.9").unwrap_err();
        assert_eq!(err.code, ErrorCode::IncompatibleVersion);
        assert!(err.msg.contains("9.9.9"));
    }

    #[test]
    fn ordering() {
        assert!(at_least("1.1.0", "1.1.0"));
        assert!(at_least("1.10.0", "1.2.0"));
        assert!(!at_least("1.0.0", "1.1.0"));
        assert!(!at_least("0.4.0", "1.0"));
    }

    #[test]
    fn version_response() {
        let v = version_info(Some("0.3.1"));
        assert_eq!(v.cni_version, "0.3.1");
        assert_eq!(v.supported_versions.first().map(String::as_str), Some("0.1.0"));
        assert_eq!(v.supported_versions.last().map(String::as_str), Some("1.1.0"));
        assert_eq!(version_info(Some("7.0.0")).cni_version, CURRENT);
    }
}
