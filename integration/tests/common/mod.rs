//! Shared set-up for the root integration tests: a temp state root, a busybox bundle with
//! `berth-check` inside, and helpers to run `berth-runtime` and read host namespace inodes.

#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use berth_integration::{bin_path, Bundle};
use serde_json::{json, Value};

pub const CHECK: &str = "/usr/local/bin/berth-check";

pub struct T {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub bundle: Bundle,
    pub runtime: PathBuf,
    pub id: String,
}

impl T {
    /// A fresh bundle for container `name` (ids are unique per process).
    pub fn new(name: &str) -> T {
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root: run it through scripts/test");
        let tmp = tempfile::tempdir().expect("tempdir");
        let bundle = Bundle::busybox(tmp.path().join("bundle")).expect("busybox bundle");
        bundle.add_binary(bin_path("berth-check").expect("berth-check built"), CHECK).expect("add berth-check");
        let root = tmp.path().join("state");
        T {
            root,
            bundle,
            runtime: bin_path("berth-runtime").expect("berth-runtime built"),
            id: format!("{name}-{}", std::process::id()),
            tmp,
        }
    }

    /// The default (runc-shaped) spec as JSON, in its own cgroup under /berth-test.
    pub fn spec(&self, args: &[&str]) -> Value {
        let mut v = serde_json::to_value(Bundle::default_spec(args)).expect("spec json");
        v["linux"]["cgroupsPath"] = json!(format!("/berth-test/{}", self.id));
        v["linux"]["namespaces"].as_array_mut().expect("namespaces").push(json!({ "type": "cgroup" }));
        v
    }

    pub fn write(&self, spec: &Value) {
        std::fs::write(self.bundle.config_path(), serde_json::to_vec_pretty(spec).unwrap()).expect("write config.json");
    }

    pub fn expect(&self, expectations: &Value) {
        self.bundle.add_json("/check.json", expectations).expect("write check.json");
    }

    /// Runs `berth-runtime --root <root> ARGS`.
    pub fn rt(&self, args: &[&str]) -> Output {
        Command::new(&self.runtime).arg("--root").arg(&self.root).args(args).output().expect("spawn berth-runtime")
    }

    /// `run` in the foreground with this bundle.
    pub fn run(&self, spec: &Value) -> Output {
        self.write(spec);
        let bundle = self.bundle.dir().to_str().unwrap().to_owned();
        self.rt(&["run", "--bundle", &bundle, &self.id])
    }

    pub fn create(&self, spec: &Value) -> Output {
        self.write(spec);
        let bundle = self.bundle.dir().to_str().unwrap().to_owned();
        self.rt_detached(&["create", "--bundle", &bundle, &self.id])
    }

    /// Like [`T::rt`] for commands that leave a container behind: the container inherits the
    /// runtime's stdio, so it goes to a file (a pipe would stay open until the container exits).
    pub fn rt_detached(&self, args: &[&str]) -> Output {
        let log = self.tmp.path().join(format!(
            "rt-{}.log",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        ));
        let file = std::fs::File::create(&log).expect("log file");
        let status = Command::new(&self.runtime)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .status()
            .expect("spawn berth-runtime");
        let stderr = std::fs::read(&log).unwrap_or_default();
        Output { status, stdout: Vec::new(), stderr }
    }

    pub fn state(&self) -> Value {
        let out = self.rt(&["state", &self.id]);
        assert!(out.status.success(), "state: {}", text(&out));
        serde_json::from_slice(&out.stdout).expect("state json")
    }

    /// Host paths of this container's cgroup in every mounted hierarchy.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        for entry in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let d = entry.path().join("berth-test").join(&self.id);
            if d.exists() {
                dirs.push(d);
            }
        }
        dirs
    }
}

impl Drop for T {
    fn drop(&mut self) {
        let _ = self.rt(&["delete", "--force", &self.id]);
    }
}

/// stdout and stderr, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn assert_ok(out: &Output) {
    assert!(out.status.success(), "{}", text(out));
}

/// Inode of the host's namespace of `kind` (as seen by this test process).
pub fn host_ns(kind: &str) -> u64 {
    std::fs::metadata(Path::new("/proc/self/ns").join(kind)).expect("ns").ino()
}

/// Namespace expectations: the listed kinds differ from the host's, the others are shared.
pub fn namespaces(private: &[&str]) -> Value {
    let mut m = serde_json::Map::new();
    for kind in ["pid", "net", "ipc", "uts", "mnt", "cgroup", "user"] {
        m.insert(kind.into(), json!({ "host_inode": host_ns(kind), "shared": !private.contains(&kind) }));
    }
    Value::Object(m)
}
