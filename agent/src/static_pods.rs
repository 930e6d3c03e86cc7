//! Static pods: manifests (YAML or JSON, one Pod each) in the agent's `staticPodPath`, run
//! without the API server. Each gets a stable UID from its file and content (a changed
//! manifest is a new pod), a name suffixed with the node's, and a mirror pod posted to the API
//! so `kubectl get pods` shows it (annotated `kubernetes.io/config.mirror`).

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;

pub const ANN_SOURCE: &str = "kubernetes.io/config.source";
pub const ANN_HASH: &str = "kubernetes.io/config.hash";
pub const ANN_MIRROR: &str = "kubernetes.io/config.mirror";

/// FNV-1a, 64 bits: stable across builds (the UID must survive agent upgrades).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// One manifest as the pod this node runs.
pub fn static_pod(file: &Path, text: &str, node: &str) -> Result<Pod, String> {
    let mut pod: Pod = serde_yaml::from_str(text).map_err(|e| format!("{}: {e}", file.display()))?;
    let name = pod
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("{}: metadata.name is required", file.display()))?;
    if pod.spec.as_ref().is_none_or(|s| s.containers.is_empty()) {
        return Err(format!("{}: spec.containers must not be empty", file.display()));
    }
    let hash = format!("{:016x}", fnv1a(&[file.to_string_lossy().as_bytes(), text.as_bytes(), node.as_bytes()]));
    pod.metadata.name = Some(format!("{name}-{node}"));
    pod.metadata.namespace = Some(pod.metadata.namespace.clone().unwrap_or_else(|| "default".into()));
    pod.metadata.uid = Some(format!("{}-{}-{}-{}-{}", &hash[..8], &hash[8..12], &hash[12..16], "0000", &hash[..12]));
    let ann = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    ann.insert(ANN_SOURCE.into(), "file".into());
    ann.insert(ANN_HASH.into(), hash);
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(node.to_string());
    }
    Ok(pod)
}

/// Every manifest in `dir` (files ending .yaml, .yml or .json); bad ones are reported, not run.
pub fn read_dir(dir: &Path, node: &str) -> (Vec<Pod>, Vec<String>) {
    let (mut pods, mut errors) = (Vec::new(), Vec::new());
    let Ok(rd) = std::fs::read_dir(dir) else { return (pods, errors) };
    let mut files: Vec<_> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json"))
        .collect();
    files.sort();
    for f in files {
        match std::fs::read_to_string(&f)
            .map_err(|e| format!("{}: {e}", f.display()))
            .and_then(|t| static_pod(&f, &t, node))
        {
            Ok(p) => pods.push(p),
            Err(e) => errors.push(e),
        }
    }
    (pods, errors)
}

/// The API's copy of a static pod.
pub fn mirror(pod: &Pod) -> Pod {
    let mut m = Pod { metadata: pod.metadata.clone(), spec: pod.spec.clone(), status: None };
    m.metadata.uid = None;
    m.metadata.resource_version = None;
    let hash = pod.metadata.annotations.as_ref().and_then(|a| a.get(ANN_HASH)).cloned().unwrap_or_default();
    m.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(ANN_MIRROR.into(), hash);
    m
}

pub fn is_static(pod: &Pod) -> bool {
    pod.metadata.annotations.as_ref().and_then(|a| a.get(ANN_SOURCE)).is_some_and(|s| s == "file")
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers: [{name: c, image: busybox}]\n";

    #[test]
    fn manifests_become_node_bound_pods_with_stable_uids() {
        let p = static_pod(Path::new("/etc/berth/manifests/web.yaml"), WEB, "n1").unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("web-n1"));
        assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
        let again = static_pod(Path::new("/etc/berth/manifests/web.yaml"), WEB, "n1").unwrap();
        assert_eq!(p.metadata.uid, again.metadata.uid, "same file, same pod");
        let changed =
            static_pod(Path::new("/etc/berth/manifests/web.yaml"), &WEB.replace("busybox", "nginx"), "n1").unwrap();
        assert_ne!(p.metadata.uid, changed.metadata.uid, "a changed manifest is a new pod");
        let m = mirror(&p);
        assert_eq!(m.metadata.annotations.unwrap()[ANN_MIRROR], p.metadata.annotations.as_ref().unwrap()[ANN_HASH]);
        assert!(m.metadata.uid.is_none());
    }

    #[test]
    fn bad_manifests_are_named() {
        assert!(static_pod(Path::new("/m/x.yaml"), "kind: Pod\nspec: {containers: []}\n", "n")
            .unwrap_err()
            .contains("metadata.name"));
        assert!(static_pod(Path::new("/m/x.yaml"), "metadata: {name: a}\nspec: {containers: []}\n", "n")
            .unwrap_err()
            .contains("spec.containers"));
        assert!(static_pod(Path::new("/m/bad.yaml"), ": : :", "n").unwrap_err().starts_with("/m/bad.yaml"));
    }
}
