//! Locating the binaries the tests drive: Berth's own (in the workspace target dir) and host tools.

use std::env;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Environment variable that, when set, is the only directory searched for workspace binaries.
pub const BIN_DIR_ENV: &str = "BERTH_BIN_DIR";

/// A binary could not be found.
#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    #[error("binary {name:?} not found (searched {searched}); build it with cargo build")]
    NotFound { name: String, searched: String },
}

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The directories searched for workspace binaries, in order.
///
/// `$BERTH_BIN_DIR` alone if set; otherwise `<target>/runtime` (the shipped static
/// berth-runtime, see scripts/build), `<target>/release`, then `<target>/debug`, where
/// `<target>` is `$CARGO_TARGET_DIR` or `<workspace>/target`.
pub fn bin_search_dirs() -> Vec<PathBuf> {
    if let Some(dir) = env::var_os(BIN_DIR_ENV).filter(|d| !d.is_empty()) {
        return vec![PathBuf::from(dir)];
    }
    let target = env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    vec![target.join("runtime"), target.join("release"), target.join("debug")]
}

/// Finds a workspace binary such as `berth-runtime` or `berth-check`.
pub fn bin_path(name: &str) -> Result<PathBuf, BinaryError> {
    let dirs = bin_search_dirs();
    dirs.iter()
        .map(|dir| dir.join(name))
        .find(|path| is_executable(path))
        .ok_or_else(|| BinaryError::NotFound { name: name.to_string(), searched: join_paths(&dirs) })
}

/// Finds a host program (such as `crun` or `runc`) on `$PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    env::split_paths(&path).map(|dir| dir.join(name)).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    path.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

fn join_paths(dirs: &[PathBuf]) -> String {
    dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("integration").is_dir());
    }

    #[test]
    fn finds_sh_on_path() {
        assert!(find_in_path("sh").is_some());
        assert!(find_in_path("definitely-not-a-real-program-xyz").is_none());
    }
}
