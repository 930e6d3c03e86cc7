//! Authentication: who is calling, from a verified client certificate (CN = user, O = groups,
//! as Kubernetes reads them) or a bearer token (the bootstrap token here; service-account
//! tokens, which need the store, in `api::tokenreview`).

use base64::Engine as _;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }
    /// The node name when this is a node credential (`system:node:NAME` in `system:nodes`).
    pub fn node_name(&self) -> Option<&str> {
        if !self.in_group("system:nodes") {
            return None;
        }
        self.name.strip_prefix("system:node:")
    }
    /// (namespace, name) when this is a service account (`system:serviceaccount:NS:NAME`
    /// in `system:serviceaccounts`).
    pub fn service_account(&self) -> Option<(&str, &str)> {
        if !self.in_group("system:serviceaccounts") {
            return None;
        }
        self.name.strip_prefix("system:serviceaccount:")?.split_once(':')
    }
    pub fn is_admin(&self) -> bool {
        self.in_group("system:masters")
    }
}

/// Resolves a caller from its client certificate (already verified against the CA by TLS) or
/// from an `Authorization: Bearer` token.
pub struct Authenticator {
    pub bootstrap_token: String,
}

impl Authenticator {
    pub fn authenticate(&self, client_cert: Option<&[u8]>, authorization: Option<&str>) -> Option<User> {
        if let Some(der) = client_cert {
            if let Some((cn, mut groups)) = cert_subject(der) {
                groups.push("system:authenticated".into());
                return Some(User { name: cn, groups });
            }
        }
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        if !self.bootstrap_token.is_empty() && constant_time_eq(token.as_bytes(), self.bootstrap_token.as_bytes()) {
            let id = token.split('.').next().unwrap_or_default();
            return Some(User {
                name: format!("system:bootstrap:{id}"),
                groups: vec!["system:bootstrappers".into(), "system:authenticated".into()],
            });
        }
        None
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The DER of the first PEM block in `pem`.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body.trim()).ok()
}

/// A DER TLV: (tag, contents, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let l0 = *b.get(1)? as usize;
    let (len, hdr) = if l0 < 0x80 {
        (l0, 2)
    } else {
        let n = l0 & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let body = b.get(hdr..hdr.checked_add(len)?)?;
    Some((tag, body, &b[hdr + len..]))
}

/// The subject's CommonName and Organizations of an X.509 certificate.
pub fn cert_subject(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert, _) = tlv(der)?;
    let (_, tbs, _) = tlv(cert)?;
    let mut rest = tbs;
    let (tag, _, r) = tlv(rest)?;
    if tag == 0xa0 {
        rest = r; // explicit version
    }
    for _ in 0..4 {
        rest = tlv(rest)?.2; // serial, signature, issuer, validity
    }
    let (_, mut name, _) = tlv(rest)?;
    let (mut cn, mut orgs) = (None, Vec::new());
    while !name.is_empty() {
        let (_, mut rdn, r) = tlv(name)?;
        name = r;
        while !rdn.is_empty() {
            let (_, atv, r) = tlv(rdn)?;
            rdn = r;
            let (_, oid, val) = tlv(atv)?;
            let (_, v, _) = tlv(val)?;
            let v = String::from_utf8_lossy(v).into_owned();
            match oid {
                [0x55, 0x04, 0x03] => cn = Some(v),
                [0x55, 0x04, 0x0a] => orgs.push(v),
                _ => {}
            }
        }
    }
    Some((cn?, orgs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_token_and_node_identity() {
        let a = Authenticator { bootstrap_token: "abcdef.0123456789abcdef".into() };
        let u = a.authenticate(None, Some("Bearer abcdef.0123456789abcdef")).unwrap();
        assert_eq!(u.name, "system:bootstrap:abcdef");
        assert!(a.authenticate(None, Some("Bearer abcdef.x")).is_none());
        assert!(a.authenticate(None, None).is_none());
        let n = User { name: "system:node:n1".into(), groups: vec!["system:nodes".into()] };
        assert_eq!(n.node_name(), Some("n1"));
        let fake = User { name: "system:node:n1".into(), groups: vec![] };
        assert_eq!(fake.node_name(), None);
        let sa =
            User { name: "system:serviceaccount:ns1:default".into(), groups: vec!["system:serviceaccounts".into()] };
        assert_eq!(sa.service_account(), Some(("ns1", "default")));
        assert_eq!(User { groups: vec![], ..sa }.service_account(), None);
    }

    #[test]
    fn garbage_certificates_do_not_panic() {
        for b in [&b""[..], &[0x30], &[0x30, 0x85, 1, 2, 3, 4, 5], &[0x30, 0x03, 0x30, 0x01]] {
            assert!(cert_subject(b).is_none());
        }
    }
}
