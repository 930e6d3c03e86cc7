use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, EmptyDirVolumeSource, HostPathVolumeSource, PodSpec, SecretVolumeSource, VolumeMount,
};

use super::*;

#[derive(Default)]
struct Src {
    cm: BTreeMap<String, String>,
    token: Option<String>,
}

impl EnvSources for Src {
    fn config_map(&self, _: &str, name: &str) -> Option<BTreeMap<String, String>> {
        (name == "cfg").then(|| self.cm.clone())
    }
    fn secret(&self, _: &str, _: &str) -> Option<BTreeMap<String, String>> {
        None
    }
    fn pod_ip(&self) -> Option<String> {
        None
    }
    fn host_ip(&self) -> Option<String> {
        None
    }
}

impl VolumeSources for Src {
    fn secret_bytes(&self, _: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        (name == "creds").then(|| BTreeMap::from([("token".to_string(), vec![0, 1, 2])]))
    }
    fn service_account_token(&self, audience: Option<&str>, expiration_secs: i64) -> Option<String> {
        assert_eq!((audience, expiration_secs), (Some("vault"), 3600));
        self.token.clone()
    }
}

fn pod(volumes: Vec<Volume>) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some("p".into());
    p.metadata.uid = Some("uid-v".into());
    p.spec = Some(PodSpec { volumes: Some(volumes), ..Default::default() });
    p
}

fn cm_volume(items: Option<Vec<KeyToPath>>) -> Volume {
    Volume {
        name: "conf".into(),
        config_map: Some(ConfigMapVolumeSource { name: "cfg".into(), items, ..Default::default() }),
        ..Default::default()
    }
}

#[test]
fn config_maps_are_written_atomically_and_updated_in_place() {
    let root = tempfile::tempdir().unwrap();
    let mut src =
        Src { cm: BTreeMap::from([("a.conf".into(), "one".into()), ("b.conf".into(), "two".into())]), token: None };
    let p = pod(vec![cm_volume(None)]);
    let vols = prepare(root.path(), &p, &src).unwrap();
    let dir = &vols.paths["conf"];
    assert_eq!(std::fs::read_to_string(dir.join("a.conf")).unwrap(), "one");
    assert_eq!(std::fs::read_link(dir.join("a.conf")).unwrap(), Path::new("..data/a.conf"));
    let first = std::fs::read_link(dir.join("..data")).unwrap();
    prepare(root.path(), &p, &src).unwrap();
    assert_eq!(std::fs::read_link(dir.join("..data")).unwrap(), first, "unchanged data: nothing rewritten");

    src.cm = BTreeMap::from([("a.conf".into(), "uno".into())]);
    prepare(root.path(), &p, &src).unwrap();
    assert_eq!(std::fs::read_to_string(dir.join("a.conf")).unwrap(), "uno");
    assert!(std::fs::symlink_metadata(dir.join("b.conf")).is_err(), "a removed key's link goes");
    assert!(!dir.join(&first).exists(), "the old generation is removed");

    let items = vec![KeyToPath { key: "a.conf".into(), path: "sub/x.conf".into(), mode: Some(0o600) }];
    let vols = prepare(root.path(), &pod(vec![cm_volume(Some(items))]), &src).unwrap();
    let f = vols.paths["conf"].join("sub/x.conf");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "uno");
    assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);

    let bad = vec![KeyToPath { key: "a.conf".into(), path: "../escape".into(), mode: None }];
    let err = prepare(root.path(), &pod(vec![cm_volume(Some(bad))]), &src).unwrap_err();
    assert!(err.to_string().contains("without '..'"), "{err}");
    let missing = Volume {
        name: "m".into(),
        config_map: Some(ConfigMapVolumeSource { name: "nope".into(), ..Default::default() }),
        ..Default::default()
    };
    assert!(prepare(root.path(), &pod(vec![missing.clone()]), &src)
        .unwrap_err()
        .to_string()
        .contains("\"nope\" not found"));
    let optional = Volume {
        config_map: Some(ConfigMapVolumeSource { optional: Some(true), ..missing.config_map.clone().unwrap() }),
        ..missing
    };
    assert!(prepare(root.path(), &pod(vec![optional]), &src).is_ok());
}

#[test]
fn host_paths_are_type_checked() {
    let root = tempfile::tempdir().unwrap();
    let made = root.path().join("made/here");
    let hp = |path: &Path, kind: &str| Volume {
        name: "h".into(),
        host_path: Some(HostPathVolumeSource { path: path.display().to_string(), type_: Some(kind.into()) }),
        ..Default::default()
    };
    prepare(root.path(), &pod(vec![hp(&made, "DirectoryOrCreate")]), &Src::default()).unwrap();
    assert!(made.is_dir());
    let err = prepare(root.path(), &pod(vec![hp(&made, "File")]), &Src::default()).unwrap_err();
    assert!(err.to_string().contains("is not a File"), "{err}");
    let file = root.path().join("f/x.sock");
    prepare(root.path(), &pod(vec![hp(&file, "FileOrCreate")]), &Src::default()).unwrap();
    assert!(file.is_file());
    assert!(prepare(root.path(), &pod(vec![hp(Path::new("relative"), "")]), &Src::default()).is_err());
}

#[test]
fn mounts_resolve_sub_paths_inside_the_volume() {
    let root = tempfile::tempdir().unwrap();
    let p = pod(vec![Volume {
        name: "data".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }]);
    let vols = prepare(root.path(), &p, &Src::default()).unwrap();
    let c = |sub: Option<&str>| Container {
        name: "c".into(),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".into(),
            mount_path: "/data".into(),
            sub_path: sub.map(str::to_string),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let m = container_mounts(&vols, &c(None)).unwrap();
    assert_eq!((m[0].container_path.as_str(), m[0].readonly), ("/data", true));
    let m = container_mounts(&vols, &c(Some("logs/app"))).unwrap();
    assert!(m[0].host_path.ends_with("empty-dir/data/logs/app"));
    std::os::unix::fs::symlink("/etc", vols.paths["data"].join("out")).unwrap();
    let err = container_mounts(&vols, &c(Some("out"))).unwrap_err();
    assert!(err.contains("leads outside the volume"), "{err}");
    assert!(container_mounts(&vols, &c(Some("../x"))).is_err());
    let missing = Container {
        volume_mounts: Some(vec![VolumeMount { name: "nope".into(), mount_path: "/x".into(), ..Default::default() }]),
        ..c(None)
    };
    assert!(container_mounts(&vols, &missing).unwrap_err().contains("no volume"));
}

#[test]
#[ignore = "needs root"]
fn secrets_and_memory_empty_dirs_live_on_tmpfs() {
    let root = tempfile::tempdir().unwrap();
    let p = pod(vec![
        Volume {
            name: "s".into(),
            secret: Some(SecretVolumeSource { secret_name: Some("creds".into()), ..Default::default() }),
            ..Default::default()
        },
        Volume {
            name: "m".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity("4Mi".into())),
            }),
            ..Default::default()
        },
    ]);
    let vols = prepare(root.path(), &p, &Src::default()).unwrap();
    assert!(is_mounted(&vols.paths["s"]) && is_mounted(&vols.paths["m"]));
    assert_eq!(std::fs::read(vols.paths["s"].join("token")).unwrap(), vec![0, 1, 2]);
    cleanup(root.path(), &p).unwrap();
    assert!(!vols.paths["s"].exists(), "unmounted and removed");
}

#[test]
fn service_account_tokens_are_projected_and_swapped_when_renewed() {
    let root = tempfile::tempdir().unwrap();
    let v: Volume = serde_json::from_value(serde_json::json!({"name": "t", "projected": {"defaultMode": 0o600, "sources": [{"serviceAccountToken": {"path": "token", "audience": "vault"}}]}})).unwrap();
    let p = pod(vec![v]);
    let mut src = Src { token: Some("jwt-1".into()), ..Default::default() };
    let dir = prepare(root.path(), &p, &src).unwrap().paths["t"].clone();
    assert_eq!(std::fs::read_to_string(dir.join("token")).unwrap(), "jwt-1");
    assert_eq!(std::fs::metadata(dir.join("..data/token")).unwrap().permissions().mode() & 0o777, 0o600);
    let first = std::fs::read_link(dir.join("..data")).unwrap();
    src.token = Some("jwt-2".into());
    prepare(root.path(), &p, &src).unwrap();
    assert_eq!(std::fs::read_to_string(dir.join("token")).unwrap(), "jwt-2");
    assert_ne!(std::fs::read_link(dir.join("..data")).unwrap(), first, "a renewed token is a new ..data");
    src.token = None;
    let e = prepare(root.path(), &p, &src).unwrap_err().to_string();
    assert!(e.contains("TokenRequest failed"), "{e}");
    let short: Volume = serde_json::from_value(serde_json::json!({"name": "s", "projected": {"sources": [{"serviceAccountToken": {"path": "t", "expirationSeconds": 60}}]}})).unwrap();
    assert!(prepare(root.path(), &pod(vec![short]), &src).unwrap_err().to_string().contains("minimum of 600"));
}
