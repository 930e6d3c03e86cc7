//! TLS bootstrap, as kubelet does it: with the credentials of a bootstrap kubeconfig (a
//! bootstrap token), request a node client certificate through a certificates.k8s.io/v1
//! CertificateSigningRequest, wait for the signed certificate and write the node kubeconfig.
//! The pure parts (the request, the kubeconfig text, what counts as usable) are separate from
//! the API calls and the file write.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
use k8s_openapi::ByteString;
use kube::config::Kubeconfig;

/// The signer a kubelet's client certificate comes from.
pub const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// How often the CSR is read back while waiting for its certificate.
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("bootstrap kubeconfig {path}: {message}")]
    BadBootstrap { path: PathBuf, message: String },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating the node key and signing request for {node}")]
    Key {
        node: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("API client from bootstrap kubeconfig {path}")]
    Client {
        path: PathBuf,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("creating CertificateSigningRequest {name}")]
    Create {
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("CertificateSigningRequest {name} was denied: {reason}: {message}")]
    Denied { name: String, reason: String, message: String },
    #[error("CertificateSigningRequest {name} failed: {reason}: {message}")]
    Failed { name: String, reason: String, message: String },
    #[error("CertificateSigningRequest {name} not signed after {waited:?} (is it approved? `kubectl certificate approve {name}`); last read: {last}")]
    Timeout { name: String, waited: Duration, last: String },
    #[error("writing node kubeconfig {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the node's API credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The kubeconfig already held a usable client certificate.
    Existing,
    /// A new certificate was obtained through CertificateSigningRequest `csr`.
    Bootstrapped { csr: String },
}

/// The API server and CA (PEM) a kubeconfig's current context points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    pub server: String,
    pub ca_pem: Vec<u8>,
}

/// A new key and the PEM certificate signing request for node `node`: subject CN
/// `system:node:NODE`, O `system:nodes`, P-256 ECDSA.
pub fn signing_request(node: &str) -> Result<(String, rcgen::KeyPair), BootstrapError> {
    let key_err = |source| BootstrapError::Key { node: node.to_string(), source };
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(key_err)?;
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    p.distinguished_name.push(rcgen::DnType::OrganizationName, "system:nodes");
    let pem = p.serialize_request(&key).and_then(|r| r.pem()).map_err(key_err)?;
    Ok((pem, key))
}

/// The CSR's name: like kubelet's `node-csr-…`, from a digest of the request (unique per key).
pub fn csr_name(request_pem: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, request_pem.as_bytes());
    let hex: String = d.as_ref()[..10].iter().map(|b| format!("{b:02x}")).collect();
    format!("node-csr-{hex}")
}

/// The CertificateSigningRequest object kubelet creates for its client certificate.
pub fn csr_object(name: &str, request_pem: &str) -> CertificateSigningRequest {
    let mut csr = CertificateSigningRequest::default();
    csr.metadata.name = Some(name.to_string());
    csr.spec = CertificateSigningRequestSpec {
        request: ByteString(request_pem.as_bytes().to_vec()),
        signer_name: SIGNER.to_string(),
        usages: Some(["digital signature", "key encipherment", "client auth"].map(String::from).to_vec()),
        ..Default::default()
    };
    csr
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The node kubeconfig: `cluster`'s server and CA, user `system:node:NODE` with the signed
/// certificate and its key embedded.
pub fn render_kubeconfig(cluster: &ClusterInfo, node: &str, cert_pem: &[u8], key_pem: &[u8]) -> String {
    let user = format!("system:node:{node}");
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: berth\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n- name: {user}\n  user:\n    client-certificate-data: {crt}\n    client-key-data: {key}\n\
         contexts:\n- name: berth\n  context:\n    cluster: berth\n    user: {user}\ncurrent-context: berth\n",
        server = serde_json::to_string(&cluster.server).unwrap_or_default(),
        user = serde_json::to_string(&user).unwrap_or_default(),
        ca = b64(&cluster.ca_pem),
        crt = b64(cert_pem),
        key = b64(key_pem),
    )
}

/// A bootstrap kubeconfig: `server` and its CA (PEM) embedded, user `kubelet-bootstrap` with the
/// bootstrap token (`ID.SECRET`) as its bearer token. What `berth join --token` writes.
pub fn render_bootstrap_kubeconfig(cluster: &ClusterInfo, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: berth\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n- name: kubelet-bootstrap\n  user:\n    token: {token}\n\
         contexts:\n- name: bootstrap\n  context:\n    cluster: berth\n    user: kubelet-bootstrap\ncurrent-context: bootstrap\n",
        server = serde_json::to_string(&cluster.server).unwrap_or_default(),
        ca = b64(&cluster.ca_pem),
        token = serde_json::to_string(token).unwrap_or_default(),
    )
}

/// Embedded data, else the file it names (relative to the kubeconfig's directory).
fn data_or_file(data: Option<&str>, file: Option<&str>, base: &Path) -> Result<Option<Vec<u8>>, String> {
    if let Some(d) = data {
        return base64::engine::general_purpose::STANDARD
            .decode(d.trim())
            .map(Some)
            .map_err(|e| format!("bad base64: {e}"));
    }
    match file {
        Some(f) => {
            std::fs::read(base.join(f)).map(Some).map_err(|e| format!("reading {}: {e}", base.join(f).display()))
        }
        None => Ok(None),
    }
}

/// The current context's cluster (server and CA) of a parsed kubeconfig; `base` resolves
/// relative file names.
pub fn cluster_info(kc: &Kubeconfig, base: &Path) -> Result<ClusterInfo, String> {
    let ctx_name = kc.current_context.as_deref().ok_or("no current-context")?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| format!("no context {ctx_name:?}"))?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| format!("no cluster {:?}", ctx.cluster))?;
    let server = cluster
        .server
        .clone()
        .filter(|s| s.starts_with("https://"))
        .ok_or_else(|| format!("cluster {:?}: no https:// server", ctx.cluster))?;
    let ca_pem =
        data_or_file(cluster.certificate_authority_data.as_deref(), cluster.certificate_authority.as_deref(), base)
            .and_then(|ca| ca.ok_or_else(|| "no CA".to_string()))
            .map_err(|e| format!("cluster {:?}: certificate-authority: {e}", ctx.cluster))?;
    Ok(ClusterInfo { server, ca_pem })
}

/// The subject CN of the current user's client certificate, when the kubeconfig holds a
/// certificate and key and the certificate is still valid at `now_unix`.
pub fn usable_client_cert(kc: &Kubeconfig, base: &Path, now_unix: i64) -> Option<String> {
    let ctx_name = kc.current_context.as_deref()?;
    let ctx = kc.contexts.iter().find(|c| c.name == ctx_name)?.context.as_ref()?;
    let user = kc.auth_infos.iter().find(|a| Some(&a.name) == ctx.user.as_ref())?.auth_info.as_ref()?;
    // The key is only checked for presence: a bad one fails loudly when the client loads it.
    if user.client_key_data.is_none() && !user.client_key.as_deref().is_some_and(|f| base.join(f).is_file()) {
        return None;
    }
    let pem =
        data_or_file(user.client_certificate_data.as_deref(), user.client_certificate.as_deref(), base).ok()??;
    let pem = String::from_utf8(pem).ok()?;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body).ok()?;
    if crate::x509::not_after(&der)? <= now_unix {
        return None;
    }
    crate::x509::subject(&der).map(|(cn, _)| cn)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn read_kubeconfig(path: &Path) -> Result<Kubeconfig, String> {
    Kubeconfig::read_from(path).map_err(|e| format!("{e}"))
}

/// Writes `text` to `path` atomically: a 0600 temp file beside it, synced, renamed into place.
pub fn write_private(path: &Path, text: &str) -> Result<(), BootstrapError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let werr = |source| BootstrapError::Write { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(werr)?;
    }
    let tmp =
        path.with_file_name(format!(".{}.tmp", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(werr)?;
    f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)
}

/// Ensures `kubeconfig` holds a usable client certificate for node `node`: kept when it does,
/// otherwise obtained with the credentials of `bootstrap` (waiting up to `timeout` for the
/// CSR to be approved and signed) and written atomically, mode 0600.
pub async fn ensure_node_kubeconfig(
    bootstrap: &Path,
    kubeconfig: &Path,
    node: &str,
    timeout: Duration,
) -> Result<Outcome, BootstrapError> {
    let base = |p: &Path| p.parent().map(Path::to_path_buf).unwrap_or_default();
    if let Ok(kc) = read_kubeconfig(kubeconfig) {
        match usable_client_cert(&kc, &base(kubeconfig), unix_now()) {
            Some(cn) => {
                tracing::info!(kubeconfig = %kubeconfig.display(), subject = %cn, "node kubeconfig has a usable client certificate");
                return Ok(Outcome::Existing);
            }
            None => {
                tracing::warn!(kubeconfig = %kubeconfig.display(), "node kubeconfig has no usable client certificate; bootstrapping")
            }
        }
    }
    let bad = |message: String| BootstrapError::BadBootstrap { path: bootstrap.to_path_buf(), message };
    let boot = read_kubeconfig(bootstrap).map_err(bad)?;
    let cluster = cluster_info(&boot, &base(bootstrap)).map_err(bad)?;
    let config = kube::Config::from_custom_kubeconfig(boot, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    let client = kube::Client::try_from(config)
        .map_err(|e| BootstrapError::Client { path: bootstrap.to_path_buf(), source: Box::new(e) })?;
    let (request, key) = signing_request(node)?;
    let name = csr_name(&request);
    let api = kube::Api::<CertificateSigningRequest>::all(client);
    api.create(&kube::api::PostParams::default(), &csr_object(&name, &request))
        .await
        .map_err(|e| BootstrapError::Create { name: name.clone(), source: Box::new(e) })?;
    tracing::info!(csr = %name, node, server = %cluster.server, "created CertificateSigningRequest; waiting for its certificate");
    let cert = wait_for_certificate(&api, &name, timeout).await?;
    write_private(kubeconfig, &render_kubeconfig(&cluster, node, &cert, key.serialize_pem().as_bytes()))?;
    tracing::info!(csr = %name, kubeconfig = %kubeconfig.display(), "wrote the node kubeconfig");
    Ok(Outcome::Bootstrapped { csr: name })
}

/// What a CSR read says: signed (the PEM certificate), denied/failed, or still waiting.
pub fn csr_state(name: &str, csr: &CertificateSigningRequest) -> Result<Option<Vec<u8>>, BootstrapError> {
    let status = csr.status.as_ref();
    for c in status.and_then(|s| s.conditions.as_ref()).into_iter().flatten() {
        let (reason, message) = (c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default());
        match c.type_.as_str() {
            "Denied" => return Err(BootstrapError::Denied { name: name.into(), reason, message }),
            "Failed" => return Err(BootstrapError::Failed { name: name.into(), reason, message }),
            _ => {}
        }
    }
    Ok(status.and_then(|s| s.certificate.as_ref()).map(|c| c.0.clone()).filter(|c| !c.is_empty()))
}

async fn wait_for_certificate(
    api: &kube::Api<CertificateSigningRequest>,
    name: &str,
    timeout: Duration,
) -> Result<Vec<u8>, BootstrapError> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match api.get(name).await {
            Ok(csr) => {
                if let Some(cert) = csr_state(name, &csr)? {
                    return Ok(cert);
                }
                let conditions: Vec<String> =
                    csr.status.and_then(|s| s.conditions).unwrap_or_default().into_iter().map(|c| c.type_).collect();
                if conditions.is_empty() {
                    "Pending".into()
                } else {
                    conditions.join(",")
                }
            }
            Err(e) => {
                tracing::debug!(csr = name, error = %e, "reading the CSR");
                e.to_string()
            }
        };
        if Instant::now() >= deadline {
            return Err(BootstrapError::Timeout { name: name.into(), waited: timeout, last });
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
#[path = "bootstrap_tests.rs"]
mod tests;
