//! How a layer tar entry's path is read: the layer root, an ordinary path, an OCI whiteout or
//! opaque marker, or a refusal (absolute paths, `..`); and whether a symlink climbs out of the root.

use std::path::{Component, Path, PathBuf};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// What one tar entry means for the layer directory.
#[derive(Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// The layer root itself (`.` or `./`): only its metadata applies.
    Root,
    /// An ordinary entry at this relative path.
    Normal(PathBuf),
    /// `.wh.<name>`: hide `<name>` of the lower layers (becomes a 0/0 character device).
    Whiteout(PathBuf),
    /// `.wh..wh..opq`: hide the whole lower content of this directory (empty path = root).
    Opaque(PathBuf),
    /// Other `.wh..wh.*` AUFS bookkeeping entries, skipped.
    Ignore,
}

/// Classifies a raw tar path, refusing absolute paths and `..` components.
pub fn classify(raw: &[u8]) -> Result<EntryKind, String> {
    let s = std::str::from_utf8(raw).map_err(|_| "path is not UTF-8".to_string())?;
    // "/" alone names the root (umoci writes it); any other absolute path is refused
    if s.starts_with('/') && !s.split('/').all(|c| c.is_empty() || c == ".") {
        return Err("absolute path".into());
    }
    if s.contains('\0') {
        return Err("NUL in path".into());
    }
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("'..' path component".into()),
            c => parts.push(c),
        }
    }
    let Some(last) = parts.pop() else {
        return Ok(EntryKind::Root);
    };
    let parent: PathBuf = parts.iter().collect();
    if last == OPAQUE_MARKER {
        return Ok(EntryKind::Opaque(parent));
    }
    if last.starts_with(".wh..wh.") {
        return Ok(EntryKind::Ignore);
    }
    if let Some(name) = last.strip_prefix(WHITEOUT_PREFIX) {
        if name.is_empty() {
            return Err("whiteout of nothing".into());
        }
        return Ok(EntryKind::Whiteout(parent.join(name)));
    }
    Ok(EntryKind::Normal(parent.join(last)))
}

/// True when a relative symlink target, read from a link at `link` (relative to the layer root),
/// climbs above the root. Absolute targets are resolved inside the container root, never here.
pub fn symlink_escapes(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth = link.parent().map_or(0, |p| p.components().count()) as i64;
    for c in target.components() {
        match c {
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            Component::Normal(_) => depth += 1,
            _ => {}
        }
    }
    false
}
