//! Unit tests of registries.conf parsing and endpoint (mirror) resolution.

use super::*;

const CONF: &str = r#"
unqualified-search-registries = ["quay.io", "docker.io"]

[[registry]]
prefix = "docker.io"
location = "docker.io"
[[registry.mirror]]
location = "127.0.0.1:5000"
insecure = true
[[registry.mirror]]
location = "mirror.example.com/hub"
pull-from-mirror = "digest-only"

[[registry]]
location = "127.0.0.1:5000"
insecure = true

[[registry]]
prefix = "registry.k8s.io"
location = "127.0.0.1:5000"
insecure = true

[[registry]]
prefix = "docker.io/evil"
blocked = true

[[registry]]
prefix = "*.corp.example"
insecure = true

[[registry]]
prefix = "gcr.io/only-digests"
location = "gcr.io/only-digests"
mirror-by-digest-only = true
[[registry.mirror]]
location = "127.0.0.1:5000/gcr"
"#;

const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn eps(conf: &RegistriesConfig, r: &str) -> Vec<(String, bool, bool)> {
    conf.endpoints(&ImageRef::parse_normalized(r).unwrap())
        .unwrap()
        .into_iter()
        .map(|e| (e.reference.to_string(), e.insecure, e.mirror))
        .collect()
}

#[test]
fn parses_v2_entries() {
    let c = RegistriesConfig::parse(CONF).unwrap();
    assert_eq!(c.search_registries(), vec!["quay.io", "docker.io"]);
    let r = c.find(&ImageRef::parse_normalized("busybox").unwrap()).unwrap();
    assert_eq!(r.prefix, "docker.io");
    assert_eq!(r.mirrors.len(), 2);
    assert!(r.mirrors[0].insecure);
    assert_eq!(r.mirrors[1].pull_from, PullFrom::DigestOnly);
    let local = c.find(&ImageRef::parse_normalized("127.0.0.1:5000/x").unwrap()).unwrap();
    assert_eq!(local.prefix, "127.0.0.1:5000");
    assert!(local.insecure);
}

#[test]
fn mirrors_come_first_then_the_location() {
    let c = RegistriesConfig::parse(CONF).unwrap();
    assert_eq!(
        eps(&c, "busybox:1"),
        vec![
            ("127.0.0.1:5000/library/busybox:1".into(), true, true),
            ("docker.io/library/busybox:1".into(), false, false),
        ]
    );
    assert_eq!(
        eps(&c, &format!("busybox@{D}")),
        vec![
            (format!("127.0.0.1:5000/library/busybox@{D}"), true, true),
            (format!("mirror.example.com/hub/library/busybox@{D}"), false, true),
            (format!("docker.io/library/busybox@{D}"), false, false),
        ]
    );
}

#[test]
fn location_rewrites_the_prefix() {
    let c = RegistriesConfig::parse(CONF).unwrap();
    assert_eq!(eps(&c, "registry.k8s.io/pause:3.9"), vec![("127.0.0.1:5000/pause:3.9".into(), true, false)]);
    assert_eq!(eps(&c, "127.0.0.1:5000/a/b:c"), vec![("127.0.0.1:5000/a/b:c".into(), true, false)]);
}

#[test]
fn unmatched_registry_is_pulled_directly_over_https() {
    let c = RegistriesConfig::parse(CONF).unwrap();
    assert_eq!(eps(&c, "quay.io/x/y:1"), vec![("quay.io/x/y:1".into(), false, false)]);
    // the prefix matches at a path boundary only
    assert_eq!(
        eps(&c, "registry.k8s.io.evil.example/p:1"),
        vec![("registry.k8s.io.evil.example/p:1".into(), false, false)]
    );
}

#[test]
fn blocked_longest_prefix_wins() {
    let c = RegistriesConfig::parse(CONF).unwrap();
    let err = c.endpoints(&ImageRef::parse_normalized("docker.io/evil/thing").unwrap()).unwrap_err();
    assert!(matches!(err, ImageError::Blocked { .. }), "{err}");
    assert!(err.to_string().contains("docker.io/evil"), "{err}");
    assert!(c.endpoints(&ImageRef::parse_normalized("docker.io/evilish/thing").unwrap()).is_ok());
}

#[test]
fn wildcard_matches_subdomains_only() {
    let c = RegistriesConfig::parse(CONF).unwrap();
    assert_eq!(eps(&c, "a.corp.example:443/x:1"), vec![("a.corp.example:443/x:1".into(), true, false)]);
    assert_eq!(eps(&c, "corp.example/x:1"), vec![("corp.example/x:1".into(), false, false)]);
}

#[test]
fn mirror_by_digest_only() {
    let c = RegistriesConfig::parse(CONF).unwrap();
    assert_eq!(eps(&c, "gcr.io/only-digests/img:t"), vec![("gcr.io/only-digests/img:t".into(), false, false)]);
    assert_eq!(
        eps(&c, &format!("gcr.io/only-digests/img@{D}")),
        vec![
            (format!("127.0.0.1:5000/gcr/img@{D}"), false, true),
            (format!("gcr.io/only-digests/img@{D}"), false, false),
        ]
    );
}

#[test]
fn short_names_expand_over_search_registries() {
    let c = RegistriesConfig::parse(CONF).unwrap();
    let p = ParsedRef::parse("busybox").unwrap();
    let names: Vec<String> = c.candidates(&p).iter().map(|r| r.to_string()).collect();
    assert_eq!(names, vec!["quay.io/busybox:latest", "docker.io/library/busybox:latest"]);
    let empty = RegistriesConfig::default();
    assert_eq!(empty.candidates(&p)[0].to_string(), "docker.io/library/busybox:latest");
}

#[test]
fn rejects_bad_configs() {
    for bad in [
        "[[registry]]\ninsecure = true\n",
        "[[registry]]\nprefix = \"*.a/b\"\n",
        "[[registry]]\nprefix = \"*.a\"\nlocation = \"x\"\n",
        "[[registry]]\nlocation = \"x\"\n[[registry.mirror]]\nlocation = \"m\"\npull-from-mirror = \"sometimes\"\n",
        "[registries.search]\nregistries = [\"docker.io\"]\n",
        "unqualified-search-registries = \"docker.io\"\n",
    ] {
        assert!(RegistriesConfig::parse(bad).is_err(), "accepted: {bad}");
    }
}

#[test]
fn missing_file_is_the_empty_config() {
    let c = RegistriesConfig::load(Path::new("/nonexistent/registries.conf")).unwrap();
    assert_eq!(c, RegistriesConfig::default());
}
