//! What the agent reads from X.509 certificates (x509-parser, the parser rcgen already uses):
//! a node certificate's notAfter for TLS bootstrap, and a client certificate's subject for
//! the kubelet API's authentication.

use x509_parser::prelude::{FromDer, X509Certificate};

fn parse(der: &[u8]) -> Option<X509Certificate<'_>> {
    X509Certificate::from_der(der).ok().map(|(_, cert)| cert)
}

/// notAfter as Unix seconds.
pub fn not_after(der: &[u8]) -> Option<i64> {
    Some(parse(der)?.validity().not_after.timestamp())
}

/// The subject's common name (the last one, as kube-apiserver reads it) and organizations
/// (the user's groups).
pub fn subject(der: &[u8]) -> Option<(String, Vec<String>)> {
    let cert = parse(der)?;
    let name = cert.subject();
    let text = |a: &x509_parser::x509::AttributeTypeAndValue<'_>| String::from_utf8_lossy(a.as_slice()).into_owned();
    let cn = name.iter_common_name().last().map(text)?;
    Some((cn, name.iter_organization().map(text).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_not_after_of_rcgen_certificates() {
        let key = rcgen::KeyPair::generate().unwrap();
        for (y, unix) in [(2034, 2019686400), (2001, 978307200), (2060, 2840140800)] {
            let mut p = rcgen::CertificateParams::default();
            p.not_after = rcgen::date_time_ymd(y, 1, 1);
            let cert = p.self_signed(&key).unwrap();
            assert_eq!(not_after(cert.der()), Some(unix), "{y}");
        }
        assert_eq!(not_after(&[0x30, 0x01]), None);
    }

    #[test]
    fn reads_the_subject() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::OrganizationName, "system:masters");
        p.distinguished_name.push(rcgen::DnType::CommonName, "admin");
        let cert = p.self_signed(&key).unwrap();
        assert_eq!(subject(cert.der()), Some(("admin".to_string(), vec!["system:masters".to_string()])));
        assert_eq!(subject(&[0x30, 0x01]), None);
    }
}
