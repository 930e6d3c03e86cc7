//! OCI bundles for tests: a busybox root filesystem, host binaries with their shared libraries,
//! and a `config.json` equivalent to what `runc spec` prints.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use oci_spec::runtime::Spec;
use serde::Serialize;

mod default_spec;

/// Where busybox-static installs its binary on the host.
pub const HOST_BUSYBOX: &str = "/bin/busybox";

/// Busybox applets linked into the bundle's `/bin`.
const APPLETS: &[&str] = &[
    "sh", "ash", "true", "false", "sleep", "cat", "echo", "ls", "id", "hostname", "mount", "umount", "ps", "kill",
    "env", "pwd", "mkdir", "rmdir", "rm", "touch", "ln", "cp", "mv", "chmod", "chown", "stat", "test", "[", "printf",
    "uname", "whoami", "groups", "readlink", "grep", "head", "tail", "wc", "sed", "awk", "cut", "tr", "sort", "seq",
    "tee", "xargs", "yes", "dd", "find", "df", "free", "nproc", "sysctl", "ip", "ifconfig", "ping", "nc", "mknod",
    "nsenter", "unshare", "setpriv", "timeout", "usleep", "date", "dmesg", "top", "which",
];

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n";
const GROUP: &str = "root:x:0:\nuser:x:1000:\n";

/// Errors while building a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("destination {dest:?} must be an absolute path without '..'")]
    BadDestination { dest: String },
    #[error("cannot run ldd on {binary}")]
    LddSpawn {
        binary: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("ldd failed on {binary}: {stderr}")]
    LddFailed { binary: PathBuf, stderr: String },
    #[error("{binary} needs {library}, which ldd could not resolve")]
    MissingLibrary { binary: PathBuf, library: String },
    #[error("cannot serialize {path}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BundleError {
    let path = path.to_path_buf();
    move |source| BundleError::Io { action, path, source }
}

/// An OCI bundle directory: `config.json` plus `rootfs/`.
#[derive(Debug, Clone)]
pub struct Bundle {
    dir: PathBuf,
    rootfs: PathBuf,
}

impl Bundle {
    /// Creates `dir/rootfs` with busybox, its applet links, `/etc/passwd`, `/etc/group` (root and
    /// `user` 1000) and empty `/proc /sys /dev /tmp` mount points. Writes no `config.json`.
    pub fn busybox(dir: impl AsRef<Path>) -> Result<Bundle, BundleError> {
        let bundle = Bundle::empty(dir)?;
        for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root", "home/user"] {
            bundle.create_dir(d)?;
        }
        let tmp = bundle.rootfs.join("tmp");
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).map_err(io_err("chmod", &tmp))?;
        let busybox = bundle.rootfs.join("bin/busybox");
        fs::copy(HOST_BUSYBOX, &busybox).map_err(io_err("copy busybox to", &busybox))?;
        for applet in APPLETS {
            let link = bundle.rootfs.join("bin").join(applet);
            symlink("busybox", &link).map_err(io_err("symlink", &link))?;
        }
        bundle.add_file("/etc/passwd", PASSWD.as_bytes(), 0o644)?;
        bundle.add_file("/etc/group", GROUP.as_bytes(), 0o644)?;
        Ok(bundle)
    }

    /// Creates `dir/rootfs` empty.
    pub fn empty(dir: impl AsRef<Path>) -> Result<Bundle, BundleError> {
        let dir = dir.as_ref().to_path_buf();
        let rootfs = dir.join("rootfs");
        fs::create_dir_all(&rootfs).map_err(io_err("create", &rootfs))?;
        Ok(Bundle { dir, rootfs })
    }

    /// The bundle directory (what `--bundle` takes).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The root filesystem directory.
    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }

    /// The path of `config.json`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// Maps an absolute path inside the container to its host path under the rootfs.
    pub fn host_path(&self, dest: &str) -> Result<PathBuf, BundleError> {
        let rel = checked_relative(dest)?;
        Ok(self.rootfs.join(rel))
    }

    /// Creates a directory (and its parents) inside the rootfs.
    pub fn create_dir(&self, dest: &str) -> Result<PathBuf, BundleError> {
        let path = self.host_path(&format!("/{}", dest.trim_start_matches('/')))?;
        fs::create_dir_all(&path).map_err(io_err("create", &path))?;
        Ok(path)
    }

    /// Writes a file inside the rootfs with the given permission bits.
    pub fn add_file(&self, dest: &str, contents: &[u8], mode: u32) -> Result<PathBuf, BundleError> {
        let path = self.host_path(dest)?;
        create_parent(&path)?;
        fs::write(&path, contents).map_err(io_err("write", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", &path))?;
        Ok(path)
    }

    /// Writes `value` as pretty JSON to a file inside the rootfs (e.g. `/check.json`).
    pub fn add_json(&self, dest: &str, value: &impl Serialize) -> Result<PathBuf, BundleError> {
        let path = self.host_path(dest)?;
        let json =
            serde_json::to_vec_pretty(value).map_err(|source| BundleError::Json { path: path.clone(), source })?;
        self.add_file(dest, &json, 0o644)
    }

    /// Copies a host binary to `dest` inside the rootfs together with every shared library `ldd`
    /// reports, each at the same absolute path (the loader included, e.g.
    /// `/lib64/ld-linux-x86-64.so.2`), so glibc-linked programs run inside the container.
    pub fn add_binary(&self, host: impl AsRef<Path>, dest: &str) -> Result<PathBuf, BundleError> {
        let host = host.as_ref();
        let target = self.host_path(dest)?;
        copy_file(host, &target)?;
        for lib in shared_libraries(host)? {
            let lib_dest = self.host_path(&lib.to_string_lossy())?;
            if !lib_dest.exists() {
                copy_file(&lib, &lib_dest)?;
            }
        }
        Ok(target)
    }

    /// Writes `config.json`.
    pub fn write_spec(&self, spec: &Spec) -> Result<(), BundleError> {
        let path = self.config_path();
        let json =
            serde_json::to_vec_pretty(spec).map_err(|source| BundleError::Json { path: path.clone(), source })?;
        fs::write(&path, json).map_err(io_err("write", &path))
    }

    /// A spec equivalent to `runc spec` (runc 1.1) running `args`, with `terminal: false` and
    /// hostname `berth`: pid/network/ipc/uts/mount namespaces, the standard mounts, the classic
    /// default capabilities (AUDIT_WRITE, KILL, NET_BIND_SERVICE in bounding, effective,
    /// permitted and ambient; no inheritable), RLIMIT_NOFILE 1024, noNewPrivileges, a read-only
    /// root, a deny-all device cgroup, and runc's masked and read-only paths.
    pub fn default_spec(args: &[&str]) -> Spec {
        default_spec::runc_default(args)
    }
}

/// Validates an absolute container path and returns it relative to the rootfs.
fn checked_relative(dest: &str) -> Result<PathBuf, BundleError> {
    let path = Path::new(dest);
    let bad = || BundleError::BadDestination { dest: dest.to_string() };
    if !path.is_absolute() {
        return Err(bad());
    }
    let mut rel = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => rel.push(part),
            Component::ParentDir | Component::Prefix(_) => return Err(bad()),
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(bad());
    }
    Ok(rel)
}

fn create_parent(path: &Path) -> Result<(), BundleError> {
    match path.parent() {
        Some(parent) => fs::create_dir_all(parent).map_err(io_err("create", parent)),
        None => Ok(()),
    }
}

/// Copies a file's contents (following symlinks) and permission bits.
fn copy_file(from: &Path, to: &Path) -> Result<(), BundleError> {
    create_parent(to)?;
    fs::copy(from, to).map_err(io_err("copy", from))?;
    Ok(())
}

/// Runs `ldd` on `binary` and returns the absolute paths of the libraries and loader it needs.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, BundleError> {
    let output = Command::new("ldd")
        .arg(binary)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| BundleError::LddSpawn { binary: binary.to_path_buf(), source })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stdout.contains("not a dynamic executable") || stderr.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    if !output.status.success() {
        return Err(BundleError::LddFailed { binary: binary.to_path_buf(), stderr: stderr.trim().to_string() });
    }
    parse_ldd(&stdout).map_err(|library| BundleError::MissingLibrary { binary: binary.to_path_buf(), library })
}

/// Parses `ldd` output into absolute library paths; `Err(name)` for a library it could not find.
///
/// Lines look like `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`,
/// `/lib64/ld-linux-x86-64.so.2 (0x...)` (the loader), `linux-vdso.so.1 (0x...)` (no file),
/// `statically linked`, or `libfoo.so => not found`.
pub(crate) fn parse_ldd(output: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (name, resolved) = match line.split_once("=>") {
            Some((name, rest)) => (name.trim(), rest.trim()),
            None => (line, line),
        };
        if resolved.starts_with("not found") {
            return Err(name.to_string());
        }
        let path = resolved.split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') && !libs.iter().any(|l: &PathBuf| l.as_os_str() == path) {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output_with_loader_and_vdso() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        let libs = parse_ldd(out).unwrap();
        assert_eq!(
            libs,
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn ldd_missing_library_is_an_error() {
        let out = "\tlibfoo.so.1 => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n";
        assert_eq!(parse_ldd(out), Err("libfoo.so.1".to_string()));
    }

    #[test]
    fn ldd_static_binary_has_no_libraries() {
        assert_eq!(parse_ldd("\tstatically linked\n"), Ok(vec![]));
    }

    #[test]
    fn destinations_must_stay_inside_the_rootfs() {
        assert_eq!(checked_relative("/bin/x").unwrap(), PathBuf::from("bin/x"));
        assert!(checked_relative("bin/x").is_err());
        assert!(checked_relative("/../etc/passwd").is_err());
        assert!(checked_relative("/").is_err());
    }

    #[test]
    fn busybox_bundle_has_applets_and_users() {
        if !Path::new(HOST_BUSYBOX).exists() {
            panic!("{HOST_BUSYBOX} missing: install busybox-static");
        }
        let tmp = tempfile::tempdir().unwrap();
        let bundle = Bundle::busybox(tmp.path()).unwrap();
        let root = bundle.rootfs();
        assert!(root.join("bin/busybox").is_file());
        assert_eq!(fs::read_link(root.join("bin/sh")).unwrap(), Path::new("busybox"));
        for dir in ["proc", "sys", "dev", "tmp"] {
            assert_eq!(fs::read_dir(root.join(dir)).unwrap().count(), 0, "{dir}");
        }
        let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert!(passwd.contains("user:x:1000:1000"));
        bundle.write_spec(&Bundle::default_spec(&["/bin/true"])).unwrap();
        assert!(Spec::load(bundle.config_path()).is_ok());
    }

    #[test]
    fn add_binary_copies_loader_and_libraries() {
        let tmp = tempfile::tempdir().unwrap();
        let bundle = Bundle::empty(tmp.path()).unwrap();
        bundle.add_binary("/bin/ls", "/bin/ls").unwrap();
        let libs = shared_libraries(Path::new("/bin/ls")).unwrap();
        assert!(!libs.is_empty());
        for lib in libs {
            let copied = bundle.host_path(&lib.to_string_lossy()).unwrap();
            let meta = fs::symlink_metadata(&copied).unwrap();
            assert!(meta.is_file(), "{} is not a regular file", copied.display());
        }
    }
}
