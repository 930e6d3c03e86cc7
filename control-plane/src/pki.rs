//! The control plane's PKI: on first start a CA, the serving certificate, the admin client
//! certificate and kubeconfig, the kubelet client certificate (berth-control's identity towards
//! node agents), the service-account token signing key (`sa.key`, P-256) and a bootstrap
//! token; client certificates for nodes later.
//! Everything lives in one directory (mode 0700), keys are written 0600.

use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("PKI file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating {what}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("PKI file {path} holds no PEM block")]
    NoPem { path: PathBuf },
}

type Result<T, E = PkiError> = std::result::Result<T, E>;

/// The loaded PKI.
pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: String,
    ca_key: KeyPair,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    /// berth-control's client certificate towards node agents (logs/exec/attach/port-forward):
    /// CN [`KUBELET_CLIENT_CN`], O `system:masters`.
    pub kubelet_client: ClientCert,
    pub bootstrap_token: String,
    /// PKCS#8 DER of the key that signs service-account tokens (kube-apiserver's
    /// `--service-account-signing-key-file`).
    pub sa_key_pkcs8: Vec<u8>,
}

/// A client credential: PEM certificate and key.
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

const CA_CN: &str = "berth-ca";
/// The user berth-control is when it calls a node's agent (kube-apiserver's
/// `--kubelet-client-certificate`); agents accept CA-signed client certificates of non-nodes.
pub const KUBELET_CLIENT_CN: &str = "berth-control:kubelet-client";

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_CN);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    p
}

fn gen(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Generate { what: what.to_string(), source }
}

impl Pki {
    /// Loads the PKI from `dir`, generating what is missing. `hosts` are the serving
    /// certificate's names and addresses (localhost and 127.0.0.1 are always included).
    pub fn load_or_create(dir: &Path, hosts: &[String]) -> Result<Pki> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        let (ca_key_path, ca_path) = (dir.join("ca.key"), dir.join("ca.crt"));
        let ca_key = if ca_key_path.exists() {
            key_from_pem(&ca_key_path)?
        } else {
            let key = KeyPair::generate().map_err(gen("CA key"))?;
            let cert = ca_params().self_signed(&key).map_err(gen("CA certificate"))?;
            write_private(&ca_key_path, &to_pem("PRIVATE KEY", &key.serialize_der()))?;
            write_file(&ca_path, &to_pem("CERTIFICATE", cert.der()))?;
            tracing::info!(dir = %dir.display(), "generated a new cluster CA");
            key
        };
        let ca_pem = std::fs::read_to_string(&ca_path).map_err(io(&ca_path))?;
        let (srv_cert, srv_key) = (dir.join("apiserver.crt"), dir.join("apiserver.key"));
        let mut pki = Pki {
            dir: dir.to_path_buf(),
            ca_pem,
            ca_key,
            serving_cert_pem: String::new(),
            serving_key_pem: String::new(),
            kubelet_client: ClientCert { cert_pem: String::new(), key_pem: String::new() },
            bootstrap_token: String::new(),
            sa_key_pkcs8: Vec::new(),
        };
        if !srv_cert.exists() || !srv_key.exists() {
            let c = pki.issue_serving(hosts)?;
            write_private(&srv_key, &c.key_pem)?;
            write_file(&srv_cert, &c.cert_pem)?;
        }
        pki.serving_cert_pem = std::fs::read_to_string(&srv_cert).map_err(io(&srv_cert))?;
        pki.serving_key_pem = std::fs::read_to_string(&srv_key).map_err(io(&srv_key))?;
        let (kc_cert, kc_key) = (dir.join("kubelet-client.crt"), dir.join("kubelet-client.key"));
        if !kc_cert.exists() || !kc_key.exists() {
            let c = pki.issue_client(KUBELET_CLIENT_CN, &["system:masters"])?;
            write_private(&kc_key, &c.key_pem)?;
            write_file(&kc_cert, &c.cert_pem)?;
        }
        pki.kubelet_client = ClientCert {
            cert_pem: std::fs::read_to_string(&kc_cert).map_err(io(&kc_cert))?,
            key_pem: std::fs::read_to_string(&kc_key).map_err(io(&kc_key))?,
        };
        let tok = dir.join("bootstrap-token");
        if !tok.exists() {
            let t = format!("{}.{}", random_token(6), random_token(16));
            write_private(&tok, &format!("{t}\n"))?;
        }
        pki.bootstrap_token = std::fs::read_to_string(&tok).map_err(io(&tok))?.trim().to_string();
        let sa_key = dir.join("sa.key");
        if !sa_key.exists() {
            let key = KeyPair::generate().map_err(gen("service-account signing key"))?;
            write_private(&sa_key, &to_pem("PRIVATE KEY", &key.serialize_der()))?;
        }
        pki.sa_key_pkcs8 = key_from_pem(&sa_key)?.serialize_der();
        Ok(pki)
    }

    fn issuer(&self) -> Issuer<'static, &KeyPair> {
        Issuer::new(ca_params(), &self.ca_key)
    }

    fn issue_serving(&self, hosts: &[String]) -> Result<ClientCert> {
        let mut names: Vec<String> =
            ["localhost", "127.0.0.1", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]
                .map(String::from)
                .into();
        names.extend(hosts.iter().cloned());
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "berth-apiserver");
        p.distinguished_name = dn;
        p.subject_alt_names = Vec::new();
        for n in names {
            p.subject_alt_names.push(match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.try_into().map_err(gen("serving certificate name"))?),
            });
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(p, "serving certificate")
    }

    /// Issues a client certificate: CN is the user name, O the groups (as Kubernetes reads them).
    pub fn issue_client(&self, user: &str, groups: &[&str]) -> Result<ClientCert> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, user);
        for g in groups {
            dn.push(DnType::OrganizationName, *g);
        }
        p.distinguished_name = dn;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(p, "client certificate")
    }

    fn sign(&self, mut p: CertificateParams, what: &str) -> Result<ClientCert> {
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(2034, 1, 1);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let key = KeyPair::generate().map_err(gen(what))?;
        let cert = p.signed_by(&key, &self.issuer()).map_err(gen(what))?;
        Ok(ClientCert {
            cert_pem: to_pem("CERTIFICATE", cert.der()),
            key_pem: to_pem("PRIVATE KEY", &key.serialize_der()),
        })
    }

    /// Signs a PEM certificate signing request (its self-signature verified) as a client
    /// certificate: the request's subject, client-auth usage only, ten years like the others.
    /// Returns the request's (CN, O) with the PEM certificate.
    pub fn sign_client_csr(&self, csr_pem: &str) -> Result<(String, Vec<String>, String)> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(gen("certificate from a signing request"))?;
        let dn = &csr.params.distinguished_name;
        let text = |v: &rcgen::DnValue| match v {
            rcgen::DnValue::PrintableString(s) => s.to_string(),
            rcgen::DnValue::Utf8String(s) => s.clone(),
            other => format!("{other:?}"),
        };
        let cn = dn.get(&DnType::CommonName).map(text).unwrap_or_default();
        let orgs: Vec<String> =
            dn.iter().filter(|(t, _)| **t == DnType::OrganizationName).map(|(_, v)| text(v)).collect();
        let p = &mut csr.params;
        p.subject_alt_names.clear();
        p.is_ca = IsCa::NoCa;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(2034, 1, 1);
        let cert = csr.signed_by(&self.issuer()).map_err(gen("certificate from a signing request"))?;
        Ok((cn, orgs, to_pem("CERTIFICATE", cert.der())))
    }

    /// A kubeconfig for `user` with an embedded client certificate.
    pub fn kubeconfig(&self, server: &str, user: &str, cert: &ClientCert) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: berth\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
             users:\n- name: {user}\n  user:\n    client-certificate-data: {crt}\n    client-key-data: {key}\n\
             contexts:\n- name: berth\n  context:\n    cluster: berth\n    user: {user}\ncurrent-context: berth\n",
            ca = b64(&self.ca_pem),
            crt = b64(&cert.cert_pem),
            key = b64(&cert.key_pem),
        )
    }

    /// Writes the admin kubeconfig (user `berth-admin`, group `system:masters`) to `path`.
    pub fn write_admin_kubeconfig(&self, path: &Path, server: &str) -> Result<()> {
        let cert = self.issue_client("berth-admin", &["system:masters"])?;
        write_private(path, &self.kubeconfig(server, "berth-admin", &cert))
    }
}

/// PEM armour (64-column base64) around DER; rcgen's own PEM would pull a second base64.
fn to_pem(label: &str, der: &[u8]) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn key_from_pem(path: &Path) -> Result<KeyPair> {
    let pem = std::fs::read_to_string(path).map_err(io(path))?;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| PkiError::NoPem { path: path.into() })?;
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from(der);
    KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen("loading the CA key"))
}

/// `n` random lowercase alphanumerics (bootstrap token alphabet).
pub fn random_token(n: usize) -> String {
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut buf = vec![0u8; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf).expect("system randomness");
    buf.iter().map(|b| ALPHA[*b as usize % ALPHA.len()] as char).collect()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.to_path_buf(), source }
}

fn write_file(path: &Path, s: &str) -> Result<()> {
    std::fs::write(path, s).map_err(io(path))
}

/// Writes a secret: created 0600, via a temp file renamed into place.
pub fn write_private(path: &Path, s: &str) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io(&tmp))?;
    f.write_all(s.as_bytes()).and_then(|_| f.sync_all()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_generates_and_second_start_reuses() {
        let d = tempfile::tempdir().unwrap();
        let a = Pki::load_or_create(d.path(), &["10.0.0.1".into()]).unwrap();
        let b = Pki::load_or_create(d.path(), &[]).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.serving_cert_pem, b.serving_cert_pem);
        assert_eq!(a.bootstrap_token, b.bootstrap_token);
        assert_eq!(a.bootstrap_token.len(), 23);
        assert_eq!(a.kubelet_client.cert_pem, b.kubelet_client.cert_pem);
        assert_eq!(a.sa_key_pkcs8, b.sa_key_pkcs8);
        assert!(crate::tokens::TokenSigner::new(&a.sa_key_pkcs8).is_ok());
        let kc = crate::auth::cert_subject(&crate::auth::pem_to_der(&a.kubelet_client.cert_pem).unwrap()).unwrap();
        assert_eq!(kc, (KUBELET_CLIENT_CN.to_string(), vec!["system:masters".to_string()]));
        let c = b.issue_client("system:node:n1", &["system:nodes"]).unwrap();
        let der = crate::auth::pem_to_der(&c.cert_pem).unwrap();
        let subj = crate::auth::cert_subject(&der).unwrap();
        assert_eq!(subj.0, "system:node:n1");
        assert_eq!(subj.1, vec!["system:nodes".to_string()]);
        // A node's signing request: subject kept, signed by the CA, verified on the way in.
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "system:node:n9");
        p.distinguished_name.push(DnType::OrganizationName, "system:nodes");
        let req = p.serialize_request(&key).unwrap().pem().unwrap();
        let (cn, orgs, cert) = b.sign_client_csr(&req).unwrap();
        assert_eq!((cn.as_str(), orgs), ("system:node:n9", vec!["system:nodes".to_string()]));
        let subj = crate::auth::cert_subject(&crate::auth::pem_to_der(&cert).unwrap()).unwrap();
        assert_eq!(subj.0, "system:node:n9");
        let mut tampered = req.clone().into_bytes();
        let mid = tampered.len() / 2;
        tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
        assert!(b.sign_client_csr(&String::from_utf8(tampered).unwrap()).is_err());
        let mode = std::fs::metadata(d.path().join("ca.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
