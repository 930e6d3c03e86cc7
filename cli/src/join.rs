//! `berth join --token`: the bootstrap credentials a joining node starts from. Checks the
//! token, server and CA, and writes the bootstrap kubeconfig berth-agent's TLS bootstrap uses
//! (`bootstrapKubeconfig`) to obtain the node's own certificate.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use berth_agent::bootstrap::{render_bootstrap_kubeconfig, ClusterInfo};

/// A bootstrap-token join: what `--token`, `--server` and `--ca-cert` say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenJoin {
    pub token: String,
    pub server: String,
    pub ca_pem: Vec<u8>,
}

/// Where the control plane keeps the two things a joining host needs.
const WHERE: &str =
    "on the control-plane host: the token is DATA/control/pki/bootstrap-token, the CA DATA/control/pki/ca.crt";

/// A bootstrap token is `ID.SECRET`: 6 and 16 characters of [a-z0-9].
fn check_token(token: &str) -> anyhow::Result<()> {
    let ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    match token.split_once('.') {
        Some((id, secret)) if ok(id, 6) && ok(secret, 16) => Ok(()),
        _ => bail!("--token: not a bootstrap token (ID.SECRET, 6 and 16 of [a-z0-9]); {WHERE}"),
    }
}

impl TokenJoin {
    /// Checks the flags of a token join and reads the CA certificate.
    pub fn new(token: &str, server: Option<&str>, ca_cert: Option<&Path>) -> anyhow::Result<TokenJoin> {
        check_token(token)?;
        let Some(server) = server else {
            bail!("--token needs --server https://HOST:6443 (the control plane's API server)")
        };
        if !server.starts_with("https://") {
            bail!("--server {server}: must be https://HOST:PORT");
        }
        let Some(ca_cert) = ca_cert else {
            bail!("--token needs --ca-cert FILE, the cluster CA that signs the API server's certificate; {WHERE}")
        };
        let ca_pem = std::fs::read(ca_cert).with_context(|| format!("reading --ca-cert {}", ca_cert.display()))?;
        if !String::from_utf8_lossy(&ca_pem).contains("-----BEGIN CERTIFICATE-----") {
            bail!("--ca-cert {}: no PEM certificate in it", ca_cert.display());
        }
        Ok(TokenJoin { token: token.to_string(), server: server.to_string(), ca_pem })
    }

    /// Writes the bootstrap kubeconfig (0600) at `path` and returns it.
    pub fn write_bootstrap_kubeconfig(&self, path: &Path) -> anyhow::Result<PathBuf> {
        let cluster = ClusterInfo { server: self.server.clone(), ca_pem: self.ca_pem.clone() };
        berth_agent::bootstrap::write_private(path, &render_bootstrap_kubeconfig(&cluster, &self.token))?;
        Ok(path.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "abcdef.0123456789abcdef";

    #[test]
    fn flags_are_checked_and_name_what_is_wrong() {
        let d = tempfile::tempdir().unwrap();
        let ca = d.path().join("ca.crt");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMII=\n-----END CERTIFICATE-----\n").unwrap();
        let err = |t: &str, s: Option<&str>, c: Option<&Path>| TokenJoin::new(t, s, c).unwrap_err().to_string();
        assert!(err("nope", Some("https://h:6443"), Some(&ca)).contains("not a bootstrap token"));
        assert!(err(TOKEN, None, Some(&ca)).contains("--server"));
        assert!(err(TOKEN, Some("http://h:6443"), Some(&ca)).contains("https://"));
        assert!(err(TOKEN, Some("https://h:6443"), None).contains("--ca-cert"));
        assert!(err(TOKEN, Some("https://h:6443"), Some(&d.path().join("none"))).contains("reading --ca-cert"));
        let j = TokenJoin::new(TOKEN, Some("https://h:6443"), Some(&ca)).unwrap();
        assert_eq!(j.server, "https://h:6443");
    }

    #[test]
    fn bootstrap_kubeconfig_is_private_and_carries_token_server_and_ca() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let j = TokenJoin { token: TOKEN.into(), server: "https://10.0.0.1:6443".into(), ca_pem: b"CA".to_vec() };
        let path = j.write_bootstrap_kubeconfig(&d.path().join("etc/bootstrap.kubeconfig")).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(TOKEN)
                && text.contains("server: \"https://10.0.0.1:6443\"")
                && text.contains("certificate-authority-data: Q0E="),
            "{text}"
        );
    }
}
