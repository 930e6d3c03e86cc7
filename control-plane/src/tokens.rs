//! Service-account tokens: ES256 JSON Web Tokens signed with the cluster's service-account key
//! (`pki/sa.key`, P-256, made with the rest of the PKI), in kube-apiserver's claim format
//! (`iss`, `sub`, `aud`, `exp`, `iat`, `nbf`, `jti` and the private `kubernetes.io` claim with
//! the namespace, service account and bound pod). Signing and verifying only: whether the
//! service account and pod still exist is checked by the API layer (`api::tokenreview`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// kube-apiserver's default issuer, also the default audience of API tokens.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Tolerated clock skew for `nbf`/`exp` (kube-apiserver allows 60 s as well).
const LEEWAY_SECS: i64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("service-account signing key rejected: {reason}")]
    Key { reason: String },
    #[error("signing a token")]
    Sign,
    #[error("malformed token: {reason}")]
    Malformed { reason: &'static str },
    #[error("invalid token signature")]
    Signature,
    #[error("token issued by {issuer:?}, not by this cluster")]
    Issuer { issuer: String },
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
}

/// A reference in the `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ref {
    pub name: String,
    pub uid: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KubeClaims {
    pub namespace: String,
    pub serviceaccount: Ref,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Ref>,
}

/// The claims of a service-account token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubeClaims,
}

impl Claims {
    /// Claims for `ns/sa` valid `ttl_secs` from `now` (Unix seconds).
    pub fn new(ns: &str, sa: Ref, pod: Option<Ref>, aud: Vec<String>, now: i64, ttl_secs: i64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            sub: format!("system:serviceaccount:{ns}:{}", sa.name),
            aud,
            exp: now + ttl_secs,
            iat: now,
            nbf: now,
            jti: crate::pki::random_token(32),
            kubernetes: KubeClaims { namespace: ns.into(), serviceaccount: sa, pod, node: None },
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    kid: String,
}

/// Signs and verifies tokens with one key.
pub struct TokenSigner {
    key: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
}

impl TokenSigner {
    /// From the PKCS#8 DER of a P-256 key.
    pub fn new(pkcs8: &[u8]) -> Result<TokenSigner, TokenError> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|e| TokenError::Key { reason: e.to_string() })?;
        let kid =
            URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref()).as_ref());
        Ok(TokenSigner { key, kid, rng })
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let header = Header { alg: "ES256".into(), kid: self.kid.clone() };
        let enc = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
        let head = enc(&serde_json::to_vec(&header).map_err(|_| TokenError::Sign)?);
        let body = enc(&serde_json::to_vec(claims).map_err(|_| TokenError::Sign)?);
        let input = format!("{head}.{body}");
        let sig = self.key.sign(&self.rng, input.as_bytes()).map_err(|_| TokenError::Sign)?;
        Ok(format!("{input}.{}", enc(sig.as_ref())))
    }

    /// Checks signature, issuer and validity window at `now`; audiences are the caller's.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(head), Some(body), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed { reason: "not three dot-separated parts" });
        };
        let dec = |s: &str| URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenError::Malformed { reason: "not base64url" });
        let header: Header =
            serde_json::from_slice(&dec(head)?).map_err(|_| TokenError::Malformed { reason: "unreadable header" })?;
        if header.alg != "ES256" {
            return Err(TokenError::Malformed { reason: "algorithm is not ES256" });
        }
        let public = UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref());
        let signed = &token[..head.len() + 1 + body.len()];
        public.verify(signed.as_bytes(), &dec(sig)?).map_err(|_| TokenError::Signature)?;
        let claims: Claims =
            serde_json::from_slice(&dec(body)?).map_err(|_| TokenError::Malformed { reason: "unreadable claims" })?;
        if claims.iss != ISSUER {
            return Err(TokenError::Issuer { issuer: claims.iss });
        }
        if now > claims.exp + LEEWAY_SECS {
            return Err(TokenError::Expired);
        }
        if now + LEEWAY_SECS < claims.nbf {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

/// Whether `s` has the shape of a JWT (three base64url parts), i.e. worth verifying.
pub fn looks_like_jwt(s: &str) -> bool {
    s.split('.').count() == 3 && s.starts_with("eyJ")
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> TokenSigner {
        let key = rcgen::KeyPair::generate().unwrap();
        TokenSigner::new(&key.serialize_der()).unwrap()
    }

    #[test]
    fn signed_tokens_verify_and_tampering_or_expiry_fails() {
        let s = signer();
        let sa = Ref { name: "default".into(), uid: "u1".into() };
        let pod = Ref { name: "p".into(), uid: "u2".into() };
        let c = Claims::new("ns1", sa, Some(pod), vec!["api".into()], 1_000_000, 600);
        let t = s.sign(&c).unwrap();
        assert!(looks_like_jwt(&t));
        assert_eq!(s.verify(&t, 1_000_100).unwrap(), c);
        assert_eq!(c.sub, "system:serviceaccount:ns1:default");
        assert!(matches!(s.verify(&t, 1_000_000 + 600 + 61), Err(TokenError::Expired)));
        assert!(matches!(s.verify(&t, 1_000_000 - 61), Err(TokenError::NotYetValid)));
        // Another key's token, a changed claim, garbage.
        let other = signer().sign(&c).unwrap();
        assert!(matches!(s.verify(&other, 1_000_100), Err(TokenError::Signature)));
        let mut forged = c.clone();
        forged.kubernetes.namespace = "kube-system".into();
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let parts: Vec<&str> = t.split('.').collect();
        let tampered = format!("{}.{body}.{}", parts[0], parts[2]);
        assert!(matches!(s.verify(&tampered, 1_000_100), Err(TokenError::Signature)));
        assert!(matches!(s.verify("abc.def", 0), Err(TokenError::Malformed { .. })));
        assert!(!looks_like_jwt("abcdef.0123456789abcdef"));
    }
}
