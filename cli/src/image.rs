//! The busybox image a fresh node needs for `kubectl run … --image=busybox`: one layer made
//! from the host's static busybox (Debian's busybox-static) with every applet it lists, written
//! as an OCI image layout that the local registry serves. Reproducible: the same busybox gives
//! the same digests.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path} is not a static busybox (apt-get install busybox-static)")]
    NoBusybox { path: PathBuf },
    #[error("writing the image layout {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The ref-name annotation OCI layouts tag manifests with (skopeo and umoci write it too).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// Applets linked when `busybox --list` gives nothing.
const FALLBACK_APPLETS: &[&str] = &[
    "sh", "ls", "cat", "echo", "sleep", "true", "false", "id", "env", "ps", "kill", "wget", "nc", "httpd", "hostname",
    "ip", "mkdir", "rm", "grep", "top", "date", "uname",
];

/// Writes `busybox` as the image `<layout>:<tag>` (an OCI layout directory), replacing the tag.
pub fn write_busybox(busybox: &Path, layout: &Path, tag: &str) -> Result<String, ImageError> {
    let bytes = std::fs::read(busybox).map_err(|_| ImageError::NoBusybox { path: busybox.into() })?;
    if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
        return Err(ImageError::NoBusybox { path: busybox.into() });
    }
    let applets = list_applets(busybox);
    let w = |source| ImageError::Write { path: layout.into(), source };
    let layer = layer_tar(&bytes, &applets).map_err(w)?;
    let (layer_digest, layer_size) = put_blob(layout, &layer).map_err(w)?;
    let config = json!({
        "architecture": oci_arch(), "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": format!("berth: {} with {} applets", busybox.display(), applets.len())}],
    });
    let (config_digest, config_size) = put_blob(layout, &serde_json::to_vec(&config).expect("json")).map_err(w)?;
    let manifest = json!({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let (digest, size) = put_blob(layout, &serde_json::to_vec(&manifest).expect("json")).map_err(w)?;
    tag_manifest(layout, tag, &digest, size).map_err(w)?;
    Ok(digest)
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn list_applets(busybox: &Path) -> Vec<String> {
    let listed = std::process::Command::new(busybox).arg("--list").output().ok().filter(|o| o.status.success());
    let mut applets: Vec<String> = match listed {
        Some(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::trim)
            .filter(|a| !a.is_empty() && !a.contains('/'))
            .map(String::from)
            .collect(),
        None => Vec::new(),
    };
    if applets.is_empty() {
        applets = FALLBACK_APPLETS.iter().map(|s| s.to_string()).collect();
    }
    applets.retain(|a| a != "busybox");
    applets.sort();
    applets.dedup();
    applets
}

/// The layer: /bin/busybox, a link per applet, passwd/group with root and nobody, and the
/// directories a container expects. Fixed mtimes and owners, so the digest is reproducible.
fn layer_tar(busybox: &[u8], applets: &[String]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    for (dir, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("var", 0o755),
    ] {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        b.append_data(&mut h, dir, std::io::empty())?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    b.append_data(&mut h, "bin/busybox", busybox)?;
    for a in applets {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, format!("bin/{a}"), "busybox")?;
    }
    let files: [(&str, &str); 3] = [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n"),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ("etc/nsswitch.conf", "hosts: files dns\n"),
    ];
    for (path, text) in files {
        let mut h = header(tar::EntryType::Regular, 0o644, text.len() as u64);
        b.append_data(&mut h, path, text.as_bytes())?;
    }
    b.into_inner()
}

/// Stores `bytes` under blobs/sha256/ and returns (digest, size).
fn put_blob(layout: &Path, bytes: &[u8]) -> std::io::Result<(String, usize)> {
    let hex: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(&hex);
    if !path.exists() {
        write_atomic(&path, bytes)?;
    }
    Ok((format!("sha256:{hex}"), bytes.len()))
}

/// Points `tag` at the manifest in index.json (other tags stay), and writes oci-layout.
fn tag_manifest(layout: &Path, tag: &str, digest: &str, size: usize) -> std::io::Result<()> {
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value = std::fs::read(&index_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| json!({"schemaVersion": 2, "manifests": []}));
    let mut manifests: Vec<serde_json::Value> = index["manifests"].as_array().cloned().unwrap_or_default();
    manifests.retain(|m| m["annotations"][REF_NAME] != tag);
    manifests.push(json!({"mediaType": MANIFEST_TYPE, "digest": digest, "size": size, "annotations": {REF_NAME: tag}}));
    index["manifests"] = json!(manifests);
    write_atomic(&layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    write_atomic(&index_path, &serde_json::to_vec_pretty(&index).expect("json"))
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_reproducible_and_tagged() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("busybox");
        std::fs::write(&fake, b"\x7fELF not really").unwrap();
        let a = write_busybox(&fake, &dir.path().join("l"), "latest").unwrap();
        let b = write_busybox(&fake, &dir.path().join("l"), "latest").unwrap();
        assert_eq!(a, b);
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("l/index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(index["manifests"][0]["annotations"][REF_NAME], "latest");
        assert!(dir.path().join("l/blobs/sha256").join(a.trim_start_matches("sha256:")).is_file());
    }

    #[test]
    fn a_missing_or_non_elf_busybox_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_busybox(&dir.path().join("nope"), dir.path(), "latest").unwrap_err();
        assert!(err.to_string().contains("busybox-static"), "{err}");
    }
}
