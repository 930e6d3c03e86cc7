//! Registry mirrors, plain-http (insecure) and blocked registries and short-name search, read from
//! a `containers-registries.conf(5)` version 2 TOML file (the format CRI-O and podman use).

use std::path::Path;

use serde::Deserialize;

use super::reference::{canonical_registry, ImageRef, ParsedRef, DEFAULT_REGISTRY};
use super::ImageError;

/// A parsed `registries.conf`. `Default` is the empty config: short names search `docker.io`, every
/// registry is pulled from directly over https.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistriesConfig {
    search: Vec<String>,
    registries: Vec<Registry>,
}

/// One `[[registry]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    /// `host[/path]`, or `*.domain` for a wildcard entry.
    pub prefix: String,
    /// Where the prefix really lives (`prefix` itself when not set; empty for wildcard entries).
    pub location: String,
    pub insecure: bool,
    pub blocked: bool,
    pub mirror_by_digest_only: bool,
    pub mirrors: Vec<Mirror>,
}

/// One `[[registry.mirror]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub location: String,
    pub insecure: bool,
    pub pull_from: PullFrom,
}

/// `pull-from-mirror`: which references a mirror serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullFrom {
    All,
    DigestOnly,
    TagOnly,
}

/// A place to pull a reference from, in the order they are tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The reference rewritten for this endpoint (mirror host and path).
    pub reference: ImageRef,
    /// Plain http instead of https (and certificates not verified).
    pub insecure: bool,
    /// A mirror, as opposed to the primary location.
    pub mirror: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct RawConfig {
    #[serde(default)]
    unqualified_search_registries: Vec<String>,
    #[serde(default)]
    registry: Vec<RawRegistry>,
    /// The v1 format's table; present only to refuse it with a clear message.
    registries: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawRegistry {
    prefix: Option<String>,
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    #[serde(default)]
    mirror: Vec<RawMirror>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawMirror {
    location: String,
    #[serde(default)]
    insecure: bool,
    pull_from_mirror: Option<String>,
}

impl RegistriesConfig {
    /// Reads and parses a registries.conf file. A missing file is the empty config.
    pub fn load(path: &Path) -> Result<Self, ImageError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse_text(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(ImageError::io("read", path, e)),
        }
    }

    /// Parses registries.conf text.
    pub fn parse(text: &str) -> Result<Self, ImageError> {
        Self::parse_text(text, Path::new("<inline>"))
    }

    fn parse_text(text: &str, path: &Path) -> Result<Self, ImageError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|source| ImageError::ConfigParse { path: path.to_path_buf(), source })?;
        if raw.registries.is_some() {
            return Err(invalid("the v1 [registries.*] format is not supported; use version 2 ([[registry]])"));
        }
        let registries = raw.registry.into_iter().map(Registry::from_raw).collect::<Result<Vec<_>, _>>()?;
        let search =
            raw.unqualified_search_registries.iter().map(|s| canonical_registry(s.trim_end_matches('/'))).collect();
        Ok(RegistriesConfig { search, registries })
    }

    /// The registries short names are tried in, in order (`docker.io` when none are configured).
    pub fn search_registries(&self) -> Vec<String> {
        if self.search.is_empty() {
            vec![DEFAULT_REGISTRY.to_string()]
        } else {
            self.search.clone()
        }
    }

    /// Every fully qualified reference a (possibly short) name may stand for, in search order.
    pub fn candidates(&self, parsed: &ParsedRef) -> Vec<ImageRef> {
        if parsed.is_short() {
            self.search_registries().iter().map(|r| parsed.qualify(r)).collect()
        } else {
            vec![parsed.qualify(DEFAULT_REGISTRY)]
        }
    }

    /// The `[[registry]]` entry that applies to `r`: the longest matching prefix.
    pub fn find(&self, r: &ImageRef) -> Option<&Registry> {
        let name = r.name();
        self.registries.iter().filter(|reg| reg.matches(&r.registry, &name)).max_by_key(|reg| reg.prefix.len())
    }

    /// Where to pull `r` from, in order: the matching entry's mirrors that serve this kind of
    /// reference, then its location. A blocked entry is an error.
    pub fn endpoints(&self, r: &ImageRef) -> Result<Vec<Endpoint>, ImageError> {
        let Some(reg) = self.find(r) else {
            return Ok(vec![Endpoint { reference: r.clone(), insecure: false, mirror: false }]);
        };
        if reg.blocked {
            return Err(ImageError::Blocked { reference: r.to_string(), prefix: reg.prefix.clone() });
        }
        let by_digest = r.digest.is_some();
        let mut out = Vec::new();
        if !reg.mirror_by_digest_only || by_digest {
            for m in &reg.mirrors {
                let serves = match m.pull_from {
                    PullFrom::All => true,
                    PullFrom::DigestOnly => by_digest,
                    PullFrom::TagOnly => !by_digest,
                };
                if serves {
                    out.push(Endpoint { reference: reg.rewrite(r, &m.location)?, insecure: m.insecure, mirror: true });
                }
            }
        }
        out.push(Endpoint { reference: reg.rewrite(r, &reg.location)?, insecure: reg.insecure, mirror: false });
        Ok(out)
    }
}

impl Registry {
    fn from_raw(raw: RawRegistry) -> Result<Self, ImageError> {
        let clean = |s: Option<String>| s.map(|s| s.trim_end_matches('/').to_string());
        let location = clean(raw.location).unwrap_or_default();
        let prefix = clean(raw.prefix).filter(|p| !p.is_empty()).unwrap_or_else(|| location.clone());
        if prefix.is_empty() {
            return Err(invalid("a [[registry]] entry needs a prefix or a location"));
        }
        let wildcard = prefix.starts_with("*.");
        if wildcard && (prefix[2..].contains('/') || prefix[2..].contains('*')) {
            return Err(invalid(&format!("wildcard prefix {prefix:?} must be *.domain")));
        }
        if wildcard && !location.is_empty() {
            return Err(invalid(&format!("wildcard prefix {prefix:?} cannot have a location")));
        }
        let mirrors = raw
            .mirror
            .into_iter()
            .map(|m| {
                let pull_from = match m.pull_from_mirror.as_deref() {
                    None | Some("") | Some("all") => PullFrom::All,
                    Some("digest-only") => PullFrom::DigestOnly,
                    Some("tag-only") => PullFrom::TagOnly,
                    Some(other) => {
                        return Err(invalid(&format!("pull-from-mirror {other:?} is not all, digest-only or tag-only")))
                    }
                };
                let location = m.location.trim_end_matches('/').to_string();
                if location.is_empty() {
                    return Err(invalid("a [[registry.mirror]] entry needs a location"));
                }
                Ok(Mirror { location, insecure: m.insecure, pull_from })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Registry {
            prefix: normalize_prefix(&prefix),
            location: if wildcard { String::new() } else { location_or(&location, &prefix) },
            insecure: raw.insecure,
            blocked: raw.blocked,
            mirror_by_digest_only: raw.mirror_by_digest_only,
            mirrors,
        })
    }

    fn matches(&self, host: &str, name: &str) -> bool {
        if let Some(domain) = self.prefix.strip_prefix("*.") {
            let host = host.split(':').next().unwrap_or(host);
            return host.len() > domain.len() && host.ends_with(&format!(".{domain}"));
        }
        name == self.prefix || name.strip_prefix(&self.prefix).is_some_and(|rest| rest.starts_with('/'))
    }

    /// Replaces the matched prefix of `r` with `location` (unchanged for wildcard entries).
    fn rewrite(&self, r: &ImageRef, location: &str) -> Result<ImageRef, ImageError> {
        if location.is_empty() || self.prefix.starts_with("*.") {
            return Ok(r.clone());
        }
        let name = r.name();
        let rest = &name[self.prefix.len()..];
        let full = format!("{location}{rest}");
        let (registry, repository) = full
            .split_once('/')
            .ok_or_else(|| invalid(&format!("location {location:?} leaves no repository for {r}")))?;
        Ok(ImageRef {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag: r.tag.clone(),
            digest: r.digest.clone(),
        })
    }
}

fn location_or(location: &str, prefix: &str) -> String {
    if location.is_empty() {
        normalize_prefix(prefix)
    } else {
        location.to_string()
    }
}

/// `index.docker.io/x` and `docker.io/x` name the same thing.
fn normalize_prefix(p: &str) -> String {
    match p.split_once('/') {
        Some((host, rest)) => format!("{}/{}", canonical_registry(host), rest),
        None => canonical_registry(p),
    }
}

fn invalid(reason: &str) -> ImageError {
    ImageError::ConfigInvalid { reason: reason.to_string() }
}

#[cfg(test)]
#[path = "registries_tests.rs"]
mod tests;
