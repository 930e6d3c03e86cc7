//! Unit tests of the store without a registry: images come from docker-archive and OCI-layout
//! tarballs built here; lookup, tag moves, removal, garbage collection, reload, fs usage.

use std::path::PathBuf;

use super::super::meta::sha256_digest;
use super::*;

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(rustix::process::geteuid().as_raw() as u64);
        h.set_gid(rustix::process::getegid().as_raw() as u64);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn config_json(layers: &[&[u8]], cmd: &str) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256_digest(l)).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": [cmd], "Env": ["PATH=/bin"], "User": "1000:1000", "WorkingDir": "/w",
                   "StopSignal": "SIGQUIT", "Labels": {"a": "b"}, "Volumes": {"/data": {}},
                   "ExposedPorts": {"80/tcp": {}}, "Entrypoint": null},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap()
}

/// A docker-archive with one image of the given layers.
fn docker_archive(dir: &Path, tags: &[&str], layers: &[Vec<u8>], cmd: &str) -> (PathBuf, String) {
    let refs: Vec<&[u8]> = layers.iter().map(|l| l.as_slice()).collect();
    let config = config_json(&refs, cmd);
    let id = sha256_digest(&config);
    let mut files: Vec<(String, Vec<u8>)> = vec![(format!("{}.json", &id[7..]), config)];
    let mut layer_paths = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let p = format!("l{i}/layer.tar");
        files.push((p.clone(), l.clone()));
        layer_paths.push(p);
    }
    let manifest =
        serde_json::json!([{"Config": format!("{}.json", &id[7..]), "RepoTags": tags, "Layers": layer_paths}]);
    files.push(("manifest.json".into(), serde_json::to_vec(&manifest).unwrap()));
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
    let path = dir.join(format!("{}.tar", &id[7..19]));
    std::fs::write(&path, tar_of(&refs)).unwrap();
    (path, id)
}

fn store(root: &Path) -> ImageStore {
    let conf = RegistriesConfig::parse("unqualified-search-registries = [\"docker.io\"]").unwrap();
    ImageStore::open(root, conf).unwrap()
}

fn blob_count(root: &Path) -> usize {
    std::fs::read_dir(root.join("blobs/sha256")).unwrap().count()
}

#[tokio::test]
async fn docker_archive_import_lookup_and_config() {
    let t = tempfile::tempdir().unwrap();
    let s = store(&t.path().join("store"));
    let layer = tar_of(&[("bin/hello", b"hi")]);
    let (tarball, id) =
        docker_archive(t.path(), &["busybox:latest", "example.com/x/y:2"], std::slice::from_ref(&layer), "sh");
    let imgs = s.import(&tarball).await.unwrap();
    assert_eq!(imgs.len(), 1);
    let img = s.get("busybox").unwrap();
    assert_eq!(img.id, id);
    assert_eq!(img.repo_tags, vec!["docker.io/library/busybox:latest", "example.com/x/y:2"]);
    assert_eq!(img.config.cmd, vec!["sh"]);
    assert_eq!(img.config.user, "1000:1000");
    assert_eq!(img.config.volumes, vec!["/data"]);
    assert_eq!(img.config.exposed_ports, vec!["80/tcp"]);
    assert_eq!(img.config.stop_signal, "SIGQUIT");
    assert!(img.config.entrypoint.is_empty());
    assert_eq!(img.layers[0].diff_id, sha256_digest(&layer));
    for name in ["busybox:latest", "docker.io/library/busybox:latest", "example.com/x/y:2", &id, &id[7..], &id[7..15]] {
        assert_eq!(s.get(name).map(|i| i.id), Some(id.clone()), "{name}");
    }
    assert!(s.get("example.com/x/y:3").is_none());
    assert!(s.get("nothere").is_none());
    let layer_dir = t.path().join("store/layers").join(&img.layers[0].digest[7..]);
    assert_eq!(std::fs::read(layer_dir.join("bin/hello")).unwrap(), b"hi");
}

#[tokio::test]
async fn tags_move_layers_are_shared_and_gc_keeps_what_is_used() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let s = store(&root);
    let base = tar_of(&[("base", b"b")]);
    let (a, id_a) = docker_archive(t.path(), &["app:1"], &[base.clone(), tar_of(&[("a", b"a")])], "a");
    let (b, id_b) = docker_archive(t.path(), &["app:1", "other:1"], &[base.clone(), tar_of(&[("b", b"b")])], "b");
    s.import(&a).await.unwrap();
    s.import(&b).await.unwrap();
    // the tag moved to the newer image; the older one stays, untagged
    assert_eq!(s.get("app:1").unwrap().id, id_b);
    assert!(s.get(&id_a).unwrap().repo_tags.is_empty());
    let shared = sha256_digest(&base);
    assert!(root.join("layers").join(&shared[7..]).is_dir());
    s.remove(&id_a).unwrap();
    s.remove(&id_a).unwrap(); // idempotent
    assert!(s.get(&id_a).is_none());
    // the shared base layer survives, image A's own layer and config are gone
    assert!(root.join("layers").join(&shared[7..]).is_dir());
    assert!(!root.join("blobs/sha256").join(&id_a[7..]).exists());
    assert_eq!(std::fs::read_dir(root.join("layers")).unwrap().count(), 2);
    assert_eq!(blob_count(&root), 3); // config + 2 layers of B
    s.remove("other:1").unwrap();
    assert!(s.list().is_empty());
    assert_eq!(blob_count(&root), 0);
    assert_eq!(std::fs::read_dir(root.join("layers")).unwrap().count(), 0);
}

#[tokio::test]
async fn state_is_reloaded_on_open() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let (tarball, id) = docker_archive(t.path(), &["busybox:1"], &[tar_of(&[("x", b"x")])], "sh");
    store(&root).import(&tarball).await.unwrap();
    std::fs::write(root.join("tmp/blob-stale"), b"partial").unwrap();
    let s = store(&root);
    assert_eq!(s.get("busybox:1").unwrap().id, id);
    assert_eq!(s.list().len(), 1);
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
}

#[tokio::test]
async fn concurrent_removes_all_succeed() {
    let t = tempfile::tempdir().unwrap();
    let s = store(&t.path().join("store"));
    let (tarball, _) = docker_archive(t.path(), &["busybox:1"], &[tar_of(&[("x", b"x")])], "sh");
    s.import(&tarball).await.unwrap();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || s.remove("busybox:1"))
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    assert!(s.list().is_empty());
}

#[tokio::test]
async fn oci_layout_import_verifies_blob_names() {
    let t = tempfile::tempdir().unwrap();
    let s = store(&t.path().join("store"));
    let layer = tar_of(&[("etc/os-release", b"berth")]);
    let config = config_json(&[&layer], "sh");
    let desc = |mt: &str, b: &[u8]| serde_json::json!({"mediaType": mt, "digest": sha256_digest(b), "size": b.len()});
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc("application/vnd.oci.image.config.v1+json", &config),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar", &layer)]
    }))
    .unwrap();
    let mut mdesc = desc("application/vnd.oci.image.manifest.v1+json", &manifest);
    mdesc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "quay.io/berth/test:v1"});
    let index = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [mdesc]})).unwrap();
    let blob = |b: &[u8]| format!("blobs/sha256/{}", &sha256_digest(b)[7..]);
    let files: Vec<(String, Vec<u8>)> = vec![
        ("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ("index.json".into(), index),
        (blob(&manifest), manifest.clone()),
        (blob(&config), config.clone()),
        (blob(&layer), layer.clone()),
    ];
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
    let good = t.path().join("oci.tar");
    std::fs::write(&good, tar_of(&refs)).unwrap();
    let imgs = s.import(&good).await.unwrap();
    assert_eq!(imgs[0].repo_tags, vec!["quay.io/berth/test:v1"]);
    let digest_ref = format!("quay.io/berth/test@{}", sha256_digest(&manifest));
    assert_eq!(imgs[0].repo_digests, vec![digest_ref.clone()]);
    assert_eq!(s.get(&digest_ref).unwrap().id, sha256_digest(&config));

    // a blob whose content does not match its name is refused
    let mut bad = files.clone();
    bad[4].1 = tar_of(&[("etc/os-release", b"evil!")]);
    let refs: Vec<(&str, &[u8])> = bad.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
    let badp = t.path().join("bad.tar");
    std::fs::write(&badp, tar_of(&refs)).unwrap();
    s.remove(&digest_ref).unwrap();
    let err = s.import(&badp).await.unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
}

#[tokio::test]
async fn fs_info_counts_the_store() {
    let t = tempfile::tempdir().unwrap();
    let s = store(&t.path().join("store"));
    let before = s.fs_info().unwrap();
    let (tarball, _) = docker_archive(t.path(), &["busybox:1"], &[tar_of(&[("big", &[1u8; 100_000])])], "sh");
    s.import(&tarball).await.unwrap();
    let after = s.fs_info().unwrap();
    assert_eq!(after.mountpoint, t.path().join("store"));
    assert!(after.used_bytes >= before.used_bytes + 200_000, "{before:?} {after:?}");
    assert!(after.inodes_used > before.inodes_used);
}

#[test]
fn snapshot_keys_are_checked() {
    let t = tempfile::tempdir().unwrap();
    let s = store(&t.path().join("store"));
    for key in ["", "..", "a/b", "x y"] {
        assert!(s.prepare_rootfs("busybox", key, t.path(), None).is_err(), "{key:?}");
    }
    let err = s.prepare_rootfs("nothere", "k", t.path(), None).unwrap_err();
    assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
    s.remove_snapshot("never-made", &t.path().join("nope")).unwrap();
}
