//! Image reference parsing and normalisation the way containerd and CRI-O name images
//! (`busybox` → `docker.io/library/busybox:latest`).

use std::fmt;

use super::ImageError;

/// The registry that short names fall back to when no `unqualified-search-registries` are set.
pub const DEFAULT_REGISTRY: &str = "docker.io";
const DEFAULT_TAG: &str = "latest";

/// A fully qualified reference: registry, repository path and a tag and/or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// A parsed reference whose registry may still be unknown (a short name such as `busybox`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRef {
    /// `None` for a short name.
    pub registry: Option<String>,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ParsedRef {
    /// Parses `[registry/]path[:tag][@sha256:hex]`.
    pub fn parse(input: &str) -> Result<Self, ImageError> {
        let bad =
            |reason: &str| ImageError::InvalidReference { reference: input.to_string(), reason: reason.to_string() };
        if input.is_empty() {
            return Err(bad("empty"));
        }
        if input.len() > 4096 || input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("contains whitespace or is too long"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => {
                validate_digest(d).map_err(|_| bad("digest must be sha256:<64 lowercase hex>"))?;
                (r, Some(d.to_string()))
            }
            None => (input, None),
        };
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(rest[i + 1..].to_string())),
            _ => (rest, None),
        };
        if let Some(t) = &tag {
            if !valid_tag(t) {
                return Err(bad("tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"));
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, p)) if looks_like_registry(first) => (Some(canonical_registry(first)), p),
            _ => (None, name),
        };
        if let Some(r) = &registry {
            if !r.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c)) {
                return Err(bad("registry host has invalid characters"));
            }
        }
        if path.is_empty() || !path.split('/').all(valid_path_component) {
            return Err(bad(
                "repository path components must be lowercase [a-z0-9] separated by '.', '_', '__' or '-'",
            ));
        }
        Ok(ParsedRef { registry, path: path.to_string(), tag, digest })
    }

    /// True for a short name (no registry host).
    pub fn is_short(&self) -> bool {
        self.registry.is_none()
    }

    /// Qualifies a short name with `registry` (no-op when it already has one); `docker.io`
    /// single-component paths get `library/`, and a reference without tag or digest gets `latest`.
    pub fn qualify(&self, registry: &str) -> ImageRef {
        let registry = self.registry.clone().unwrap_or_else(|| canonical_registry(registry));
        let repository = if registry == DEFAULT_REGISTRY && !self.path.contains('/') {
            format!("library/{}", self.path)
        } else {
            self.path.clone()
        };
        let tag = match (&self.tag, &self.digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (t, _) => t.clone(),
        };
        ImageRef { registry, repository, tag, digest: self.digest.clone() }
    }
}

impl ImageRef {
    /// Parses a reference, qualifying a short name with `docker.io`.
    pub fn parse_normalized(input: &str) -> Result<Self, ImageError> {
        Ok(ParsedRef::parse(input)?.qualify(DEFAULT_REGISTRY))
    }

    /// `registry/repository`, e.g. `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag`, if there is a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{}", self.name(), t))
    }

    /// `registry/repository@digest` for a given manifest digest.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}@{}", self.name(), digest)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// docker.io's historical aliases all name the same registry.
pub fn canonical_registry(host: &str) -> String {
    match host {
        "index.docker.io" | "registry-1.docker.io" => DEFAULT_REGISTRY.to_string(),
        h => h.to_string(),
    }
}

fn looks_like_registry(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost" || first.chars().any(|c| c.is_ascii_uppercase())
}

fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let sep = |x: u8| matches!(x, b'.' | b'_' | b'-');
    let ok_char = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit() || sep(x);
    !b.is_empty()
        && b.iter().all(|&x| ok_char(x))
        && !sep(b[0])
        && !sep(b[b.len() - 1])
        && !c.contains("..")
        && !c.contains("___")
        && !c.contains("._")
        && !c.contains("_.")
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

/// Checks `sha256:<64 lowercase hex>`, the only digest algorithm the store verifies, and returns
/// the hex part.
pub fn validate_digest(d: &str) -> Result<&str, ImageError> {
    match d.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) => {
            Ok(hex)
        }
        _ => Err(ImageError::BadDigest { digest: d.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn norm(s: &str) -> String {
        ImageRef::parse_normalized(s).unwrap().to_string()
    }

    #[test]
    fn short_names_default_to_docker_library_latest() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("foo/bar"), "docker.io/foo/bar:latest");
        assert_eq!(norm("docker.io/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("index.docker.io/busybox"), "docker.io/library/busybox:latest");
    }

    #[test]
    fn registries_ports_and_digests() {
        assert_eq!(norm("localhost/foo"), "localhost/foo:latest");
        assert_eq!(norm("127.0.0.1:5000/a/b/c:v1"), "127.0.0.1:5000/a/b/c:v1");
        assert_eq!(norm("registry.k8s.io/pause:3.9"), "registry.k8s.io/pause:3.9");
        let r = ImageRef::parse_normalized(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        let r = ImageRef::parse_normalized(&format!("quay.io/x/y:t@{D}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("t"));
        assert_eq!(r.with_digest(D), format!("quay.io/x/y@{D}"));
    }

    #[test]
    fn short_name_is_kept_short_until_qualified() {
        let p = ParsedRef::parse("busybox:1").unwrap();
        assert!(p.is_short());
        assert_eq!(p.qualify("quay.io").to_string(), "quay.io/busybox:1");
        assert!(!ParsedRef::parse("a.b/c").unwrap().is_short());
    }

    #[test]
    fn rejects_malformed_references() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox::1",
            "a//b",
            "a/../b",
            "busybox@sha256:abc",
            "busybox@md5:0123",
            "bad name",
            "-foo",
            "foo-/bar",
            "busybox:-x",
        ] {
            assert!(ImageRef::parse_normalized(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn digest_validation() {
        assert!(validate_digest(D).is_ok());
        assert!(validate_digest("sha256:ABC").is_err());
        assert!(validate_digest(&D.replace('a', "A")).is_err());
        assert!(validate_digest("sha512:00").is_err());
    }
}
