//! Unit tests of TLS bootstrap's pure parts: the signing request, the CSR object, the node
//! kubeconfig and what counts as a usable client certificate.

use super::*;

fn self_signed(cn: &str, not_after_year: i32) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.not_after = rcgen::date_time_ymd(not_after_year, 1, 1);
    (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

fn parse(text: &str) -> Kubeconfig {
    Kubeconfig::from_yaml(text).unwrap()
}

#[test]
fn signing_request_names_the_node_in_system_nodes() {
    let (pem, key) = signing_request("n1").unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"), "{pem}");
    assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    let csr = rcgen::CertificateSigningRequestParams::from_pem(&pem).unwrap();
    let dn: Vec<(rcgen::DnType, String)> = csr
        .params
        .distinguished_name
        .iter()
        .map(|(t, v)| {
            (
                t.clone(),
                match v {
                    rcgen::DnValue::Utf8String(s) => s.clone(),
                    rcgen::DnValue::PrintableString(s) => s.to_string(),
                    other => format!("{other:?}"),
                },
            )
        })
        .collect();
    assert!(dn.contains(&(rcgen::DnType::CommonName, "system:node:n1".into())), "{dn:?}");
    assert!(dn.contains(&(rcgen::DnType::OrganizationName, "system:nodes".into())), "{dn:?}");
    assert!(csr_name(&pem).starts_with("node-csr-"));
    assert_ne!(csr_name(&pem), csr_name(&signing_request("n1").unwrap().0), "a new key, a new name");
}

#[test]
fn csr_object_is_a_kubelet_client_request() {
    let csr = csr_object("node-csr-x", "PEM");
    let v = serde_json::to_value(&csr).unwrap();
    assert_eq!(v["metadata"]["name"], "node-csr-x");
    assert_eq!(v["spec"]["signerName"], "kubernetes.io/kube-apiserver-client-kubelet");
    assert_eq!(v["spec"]["request"], b64(b"PEM"), "the PEM, base64 in JSON");
    assert_eq!(v["spec"]["usages"], serde_json::json!(["digital signature", "key encipherment", "client auth"]));
}

#[test]
fn rendered_kubeconfig_round_trips_and_is_usable() {
    let (cert, key) = self_signed("system:node:n1", 2099);
    let cluster = ClusterInfo { server: "https://10.0.0.1:6443".into(), ca_pem: b"CA PEM".to_vec() };
    let kc = parse(&render_kubeconfig(&cluster, "n1", cert.as_bytes(), key.as_bytes()));
    assert_eq!(cluster_info(&kc, Path::new("/")).unwrap(), cluster);
    assert_eq!(kc.auth_infos[0].name, "system:node:n1");
    assert_eq!(usable_client_cert(&kc, Path::new("/"), unix_now()).as_deref(), Some("system:node:n1"));
}

#[test]
fn bootstrap_kubeconfig_carries_the_token_and_ca() {
    let cluster = ClusterInfo { server: "https://10.0.0.1:6443".into(), ca_pem: b"CA PEM".to_vec() };
    let kc = parse(&render_bootstrap_kubeconfig(&cluster, "abcdef.0123456789abcdef"));
    assert_eq!(cluster_info(&kc, Path::new("/")).unwrap(), cluster);
    assert!(kc.auth_infos[0].auth_info.as_ref().unwrap().token.is_some());
    assert_eq!(usable_client_cert(&kc, Path::new("/"), unix_now()), None);
}

#[test]
fn expired_or_missing_client_certs_are_not_usable() {
    let cluster = ClusterInfo { server: "https://h:6443".into(), ca_pem: b"CA".to_vec() };
    let (old, key) = self_signed("system:node:n1", 2001);
    let kc = parse(&render_kubeconfig(&cluster, "n1", old.as_bytes(), key.as_bytes()));
    assert_eq!(usable_client_cert(&kc, Path::new("/"), unix_now()), None, "expired");
    let token_only = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://h:6443', certificate-authority-data: Q0E=}\nusers:\n- name: u\n  user: {token: abc.def}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n";
    assert_eq!(
        usable_client_cert(&parse(token_only), Path::new("/"), unix_now()),
        None,
        "a token is no client certificate"
    );
    assert_eq!(cluster_info(&parse(token_only), Path::new("/")).unwrap().ca_pem, b"CA");
}

#[test]
fn bad_bootstrap_kubeconfigs_say_what_is_missing() {
    let no_ca = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://h:6443'}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n";
    assert!(cluster_info(&parse(no_ca), Path::new("/")).unwrap_err().contains("certificate-authority"));
    let plain = no_ca.replace("https://", "http://");
    assert!(cluster_info(&parse(&plain), Path::new("/")).unwrap_err().contains("https"));
    let no_ctx = no_ca.replace("current-context: x", "current-context: y");
    assert!(cluster_info(&parse(&no_ctx), Path::new("/")).unwrap_err().contains("no context \"y\""));
    let d = tempfile::tempdir().unwrap();
    let ca_file =
        no_ca.replace("{server: 'https://h:6443'}", "{server: 'https://h:6443', certificate-authority: ca.pem}");
    assert!(cluster_info(&parse(&ca_file), d.path()).unwrap_err().contains("ca.pem"));
    std::fs::write(d.path().join("ca.pem"), "CA").unwrap();
    assert_eq!(cluster_info(&parse(&ca_file), d.path()).unwrap().ca_pem, b"CA", "relative to the kubeconfig");
}

#[test]
fn denied_and_failed_csrs_are_errors_naming_the_reason() {
    use k8s_openapi::api::certificates::v1::{CertificateSigningRequestCondition, CertificateSigningRequestStatus};
    let with = |type_: &str, cert: Option<&[u8]>| {
        let mut csr = csr_object("c", "PEM");
        let conditions = vec![CertificateSigningRequestCondition {
            type_: type_.into(),
            reason: Some("Because".into()),
            message: Some("no".into()),
            status: "True".into(),
            ..Default::default()
        }];
        csr.status = Some(CertificateSigningRequestStatus {
            conditions: Some(conditions),
            certificate: cert.map(|c| ByteString(c.to_vec())),
        });
        csr
    };
    assert_eq!(csr_state("c", &csr_object("c", "PEM")).unwrap(), None, "pending");
    assert_eq!(csr_state("c", &with("Approved", None)).unwrap(), None, "approved, not yet signed");
    assert_eq!(csr_state("c", &with("Approved", Some(b"CERT"))).unwrap().as_deref(), Some(&b"CERT"[..]));
    let e = csr_state("c", &with("Denied", None)).unwrap_err().to_string();
    assert!(e.contains("denied") && e.contains("Because"), "{e}");
    assert!(matches!(csr_state("c", &with("Failed", None)), Err(BootstrapError::Failed { .. })));
}

#[test]
fn node_kubeconfig_is_written_atomically_and_private() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("sub/node.kubeconfig");
    write_private(&path, "one").unwrap();
    write_private(&path, "two").unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "no temp file left");
}
