//! Registry credentials as CRI's `AuthConfig` carries them, turned into what the registry client
//! sends. Secrets are never printed.

use std::fmt;

use base64::Engine;
use oci_client::secrets::RegistryAuth;

use super::ImageError;

/// A mirror of CRI `AuthConfig`. Only the username is ever shown by `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Auth {
    pub username: String,
    pub password: String,
    /// base64 of `username:password`.
    pub auth: String,
    /// The registry these credentials are for (informational; CRI sends them per pull).
    pub server_address: String,
    /// An OAuth2 refresh token (docker's "identitytoken").
    pub identity_token: String,
    /// A bearer token sent to the registry as is.
    pub registry_token: String,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("Auth")
            .field("username", &self.username)
            .field("password", &set(&self.password))
            .field("auth", &set(&self.auth))
            .field("server_address", &self.server_address)
            .field("identity_token", &set(&self.identity_token))
            .field("registry_token", &set(&self.registry_token))
            .finish()
    }
}

impl Auth {
    /// What the client sends: a registry token as bearer; else username/password (explicit, or
    /// decoded from `auth`) as basic credentials, which the client also presents to the token
    /// realm; else an identity token as the password of basic credentials (username `<token>`
    /// unless given), which registries such as ACR accept at their token endpoint.
    pub fn to_registry_auth(&self) -> Result<RegistryAuth, ImageError> {
        if !self.registry_token.is_empty() {
            return Ok(RegistryAuth::Bearer(self.registry_token.clone()));
        }
        if !self.username.is_empty() || !self.password.is_empty() {
            return Ok(RegistryAuth::Basic(self.username.clone(), self.password.clone()));
        }
        if !self.auth.is_empty() {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(self.auth.trim())
                .map_err(|_| ImageError::Auth { reason: "auth is not valid base64".into() })?;
            let text = String::from_utf8(raw).map_err(|_| ImageError::Auth { reason: "auth is not UTF-8".into() })?;
            let (user, pass) = text
                .split_once(':')
                .ok_or_else(|| ImageError::Auth { reason: "auth must be base64 of username:password".into() })?;
            return Ok(RegistryAuth::Basic(user.to_string(), pass.to_string()));
        }
        if !self.identity_token.is_empty() {
            let user = if self.username.is_empty() { "<token>" } else { &self.username };
            return Ok(RegistryAuth::Basic(user.to_string(), self.identity_token.clone()));
        }
        Ok(RegistryAuth::Anonymous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_and_decoding() {
        let a = Auth { username: "u".into(), password: "p".into(), registry_token: "t".into(), ..Default::default() };
        assert_eq!(a.to_registry_auth().unwrap(), RegistryAuth::Bearer("t".into()));
        let a = Auth { registry_token: String::new(), ..a };
        assert_eq!(a.to_registry_auth().unwrap(), RegistryAuth::Basic("u".into(), "p".into()));
        let b = Auth { auth: base64::engine::general_purpose::STANDARD.encode("me:se:cret"), ..Default::default() };
        assert_eq!(b.to_registry_auth().unwrap(), RegistryAuth::Basic("me".into(), "se:cret".into()));
        let c = Auth { identity_token: "refresh".into(), ..Default::default() };
        assert_eq!(c.to_registry_auth().unwrap(), RegistryAuth::Basic("<token>".into(), "refresh".into()));
        assert_eq!(Auth::default().to_registry_auth().unwrap(), RegistryAuth::Anonymous);
        let bad = Auth { auth: "!!!".into(), ..Default::default() };
        assert!(bad.to_registry_auth().is_err());
        let nocolon = Auth { auth: base64::engine::general_purpose::STANDARD.encode("nocolon"), ..Default::default() };
        assert!(nocolon.to_registry_auth().is_err());
    }

    #[test]
    fn debug_hides_secrets() {
        let a = Auth {
            username: "alice".into(),
            password: "hunter2".into(),
            identity_token: "idtok".into(),
            registry_token: "regtok".into(),
            auth: "YTpi".into(),
            ..Default::default()
        };
        let s = format!("{a:?}");
        assert!(s.contains("alice"));
        for secret in ["hunter2", "idtok", "regtok", "YTpi"] {
            assert!(!s.contains(secret), "{s}");
        }
    }
}
