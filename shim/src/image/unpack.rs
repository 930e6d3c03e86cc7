//! Safe unpacking of one layer tarball (gzip, zstd or plain tar) into its own directory, with OCI
//! whiteouts turned into overlayfs whiteouts and every path that could escape the layer refused.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Gid, Mode, Timestamps, Uid, XattrFlags, CWD};
use sha2::{Digest, Sha256};
use tar::EntryType;

use super::error::IoContext;
pub use super::layer_path::{classify, symlink_escapes, EntryKind};
use super::ImageError;

/// The xattr that marks an overlayfs lower directory as opaque.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What a layer may contain beyond files, directories, links and fifos.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnpackOptions {
    /// Create character and block device nodes (other than whiteouts). Off by default.
    pub allow_devices: bool,
}

/// Unpacks the layer blob at `blob` into `dest` (which must not exist yet) and returns the layer's
/// diff ID (sha256 of the uncompressed tar). On any error `dest` is removed: nothing is left.
pub fn unpack_layer(blob: &Path, dest: &Path, layer: &str, opts: UnpackOptions) -> Result<String, ImageError> {
    fs::create_dir(dest).ctx("create layer directory", dest)?;
    let result = File::open(blob).ctx("open layer blob", blob).and_then(|f| Unpacker::new(dest, layer, opts).run(f));
    if result.is_err() {
        if let Err(e) = fs::remove_dir_all(dest) {
            tracing::warn!(path = %dest.display(), error = %e, "cannot remove partial layer");
        }
    }
    result
}

/// Picks the decompressor from the stream's magic bytes.
pub(super) fn decoder<'a>(r: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut r = BufReader::with_capacity(256 * 1024, r);
    let magic = r.fill_buf()?;
    if magic.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(r)))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let d = ruzstd::decoding::StreamingDecoder::new(r)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Ok(Box::new(d))
    } else {
        Ok(Box::new(r))
    }
}

/// Hashes everything read through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Ownership, mode and times of one entry.
#[derive(Debug, Clone, Copy)]
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
}

impl Meta {
    fn of(h: &tar::Header) -> io::Result<Self> {
        Ok(Meta {
            uid: u32::try_from(h.uid()?).unwrap_or(u32::MAX),
            gid: u32::try_from(h.gid()?).unwrap_or(u32::MAX),
            mode: h.mode()? & 0o7777,
            mtime: i64::try_from(h.mtime()?).unwrap_or(0),
        })
    }

    fn times(&self) -> Timestamps {
        let t = rustix::fs::Timespec { tv_sec: self.mtime, tv_nsec: 0 };
        Timestamps { last_access: t, last_modification: t }
    }
}

struct Unpacker<'a> {
    root: &'a Path,
    layer: &'a str,
    opts: UnpackOptions,
    /// Directories whose mode and mtime are applied last (writing into them changes the mtime).
    dirs: Vec<(PathBuf, Meta)>,
}

impl<'a> Unpacker<'a> {
    fn new(root: &'a Path, layer: &'a str, opts: UnpackOptions) -> Self {
        Unpacker { root, layer, opts, dirs: Vec::new() }
    }

    fn refuse(&self, entry: &[u8], reason: impl Into<String>) -> ImageError {
        ImageError::UnsafeEntry {
            layer: self.layer.to_string(),
            entry: String::from_utf8_lossy(entry).into_owned(),
            reason: reason.into(),
        }
    }

    fn archive_err(&self, source: io::Error) -> ImageError {
        ImageError::Archive { layer: self.layer.to_string(), source }
    }

    fn run(mut self, blob: File) -> Result<String, ImageError> {
        let mut hashing = Hashing { inner: decoder(blob).map_err(|e| self.archive_err(e))?, hasher: Sha256::new() };
        {
            let mut archive = tar::Archive::new(&mut hashing);
            for (seen, entry) in archive.entries().map_err(|e| self.archive_err(e))?.enumerate() {
                let entry = match entry {
                    Ok(entry) => entry,
                    // Some writers (Go's archive/tar without Close, as umoci can leave it) end
                    // the stream right after the last entry's data: no padding, no end marker.
                    // Like Go's reader (and so containerd), take that as the end of the archive.
                    Err(e) if seen > 0 && e.to_string() == "unexpected EOF during skip" => {
                        tracing::debug!(layer = %self.layer, "layer ends without tar padding or end marker");
                        break;
                    }
                    Err(e) => return Err(self.archive_err(e)),
                };
                self.entry(entry)?;
            }
        }
        // The tar reader stops at the end marker; the diff ID covers the padding after it too.
        io::copy(&mut hashing, &mut io::sink()).map_err(|e| self.archive_err(e))?;
        for (path, meta) in self.dirs.iter().rev() {
            // a later entry may have replaced the directory
            if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
                apply_path_meta(path, meta, false)?;
            }
        }
        Ok(format!("sha256:{}", hex::encode(hashing.hasher.finalize())))
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ImageError> {
        let raw = entry.path_bytes().into_owned();
        let etype = entry.header().entry_type();
        if matches!(etype, EntryType::XGlobalHeader | EntryType::XHeader) {
            return Ok(());
        }
        let kind = classify(&raw).map_err(|r| self.refuse(&raw, r))?;
        let meta = Meta::of(entry.header()).map_err(|e| self.archive_err(e))?;
        let rel = match kind {
            EntryKind::Ignore => return Ok(()),
            EntryKind::Root => {
                if etype.is_dir() {
                    self.dirs.push((self.root.to_path_buf(), meta));
                }
                return Ok(());
            }
            EntryKind::Opaque(dir) => return self.opaque(&raw, &dir),
            EntryKind::Whiteout(path) => {
                let full = self.prepare(&raw, &path)?;
                return make_whiteout(&full);
            }
            EntryKind::Normal(rel) => rel,
        };
        let full = self.prepare(&raw, &rel)?;
        let xattrs = self.xattrs(&mut entry, &raw)?;
        match etype {
            EntryType::Directory => self.dir(&full, meta)?,
            EntryType::Regular | EntryType::Continuous => {
                self.file(&mut entry, &full, meta, &xattrs)?;
                return Ok(());
            }
            EntryType::Symlink => self.symlink(&entry, &raw, &rel, &full, meta)?,
            EntryType::Link => {
                self.hardlink(&entry, &raw, &full)?;
                return Ok(());
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => self.node(&entry, &raw, &full, etype, meta)?,
            other => return Err(self.refuse(&raw, format!("unsupported entry type {other:?}"))),
        }
        for (name, value) in &xattrs {
            rfs::lsetxattr(&full, name.as_str(), value, XattrFlags::empty())
                .map_err(|e| ImageError::io("set xattr on", &full, e.into()))?;
        }
        Ok(())
    }

    /// Checks every parent of `rel` is a real directory inside the root (creating missing ones),
    /// removes whatever is at `rel` unless both are directories, and returns the full path.
    fn prepare(&self, raw: &[u8], rel: &Path) -> Result<PathBuf, ImageError> {
        let mut cur = self.root.to_path_buf();
        if let Some(parent) = rel.parent() {
            for c in parent.components() {
                cur.push(c);
                match fs::symlink_metadata(&cur) {
                    Ok(m) if m.file_type().is_symlink() => {
                        let parent = cur.strip_prefix(self.root).unwrap_or(&cur);
                        return Err(self.refuse(
                            raw,
                            format!("parent {} is a symlink (write through it refused)", parent.display()),
                        ));
                    }
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        let parent = cur.strip_prefix(self.root).unwrap_or(&cur);
                        return Err(self.refuse(raw, format!("parent {} is not a directory", parent.display())));
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        fs::create_dir(&cur).ctx("create directory", &cur)?;
                    }
                    Err(e) => return Err(ImageError::io("stat", &cur, e)),
                }
            }
        }
        Ok(self.root.join(rel))
    }

    fn opaque(&mut self, raw: &[u8], dir: &Path) -> Result<(), ImageError> {
        let full = if dir.as_os_str().is_empty() {
            self.root.to_path_buf()
        } else {
            let full = self.prepare(raw, dir)?;
            match fs::symlink_metadata(&full) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(self.refuse(raw, "opaque marker in something that is not a directory")),
                Err(_) => fs::create_dir(&full).ctx("create directory", &full)?,
            }
            full
        };
        rfs::lsetxattr(&full, OPAQUE_XATTR, b"y", XattrFlags::empty())
            .map_err(|e| ImageError::io("mark opaque", &full, e.into()))
    }

    /// The entry's `SCHILY.xattr.*` records, without overlayfs' own (an image must not forge them).
    fn xattrs<R: Read>(&self, entry: &mut tar::Entry<'_, R>, raw: &[u8]) -> Result<Vec<(String, Vec<u8>)>, ImageError> {
        let mut out = Vec::new();
        let Some(exts) = entry.pax_extensions().map_err(|e| self.archive_err(e))? else {
            return Ok(out);
        };
        for ext in exts {
            let ext = ext.map_err(|e| self.archive_err(e))?;
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                if name.starts_with("trusted.overlay.") {
                    tracing::warn!(layer = self.layer, entry = %String::from_utf8_lossy(raw), xattr = name,
                        "overlayfs xattr in layer ignored");
                    continue;
                }
                out.push((name.to_string(), ext.value_bytes().to_vec()));
            }
        }
        Ok(out)
    }

    fn dir(&mut self, full: &Path, meta: Meta) -> Result<(), ImageError> {
        match fs::symlink_metadata(full) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                remove_any(full)?;
                fs::create_dir(full).ctx("create directory", full)?;
            }
            Err(_) => fs::create_dir(full).ctx("create directory", full)?,
        }
        self.dirs.push((full.to_path_buf(), meta));
        Ok(())
    }

    fn file<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        full: &Path,
        meta: Meta,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<(), ImageError> {
        remove_existing(full)?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(full)
            .ctx("create", full)?;
        let expected = entry.size();
        let copied = io::copy(entry, &mut f).map_err(|e| self.archive_err(e))?;
        if copied != expected {
            let e = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: {copied} of {expected} bytes before the archive ended", full.display()),
            );
            return Err(self.archive_err(e));
        }
        rfs::fchown(&f, Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)))
            .map_err(|e| ImageError::io("chown", full, e.into()))?;
        // after chown, which clears set-id bits
        f.set_permissions(fs::Permissions::from_mode(meta.mode)).ctx("chmod", full)?;
        for (name, value) in xattrs {
            rfs::fsetxattr(&f, name.as_str(), value, XattrFlags::empty())
                .map_err(|e| ImageError::io("set xattr on", full, e.into()))?;
        }
        rfs::futimens(&f, &meta.times()).map_err(|e| ImageError::io("set mtime of", full, e.into()))
    }

    fn symlink<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        raw: &[u8],
        rel: &Path,
        full: &Path,
        meta: Meta,
    ) -> Result<(), ImageError> {
        let target = entry
            .link_name()
            .map_err(|e| self.archive_err(e))?
            .ok_or_else(|| self.refuse(raw, "symlink without a target"))?;
        if symlink_escapes(rel, &target) {
            return Err(self.refuse(raw, format!("symlink target {} escapes the layer root", target.display())));
        }
        remove_existing(full)?;
        std::os::unix::fs::symlink(&target, full).ctx("create symlink", full)?;
        apply_path_meta(full, &meta, true)
    }

    fn hardlink<R: Read>(&self, entry: &tar::Entry<'_, R>, raw: &[u8], full: &Path) -> Result<(), ImageError> {
        let name = entry.link_name_bytes().ok_or_else(|| self.refuse(raw, "hardlink without a target"))?;
        let target_rel = match classify(&name) {
            Ok(EntryKind::Normal(p)) => p,
            Ok(_) => return Err(self.refuse(raw, "hardlink to the root or to a whiteout")),
            Err(r) => {
                return Err(self.refuse(raw, format!("hardlink target {:?}: {r}", String::from_utf8_lossy(&name))))
            }
        };
        let target = self.prepare(raw, &target_rel)?;
        match fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => return Err(self.refuse(raw, "hardlink to a directory")),
            Ok(_) => {}
            Err(_) => {
                return Err(self.refuse(raw, format!("hardlink target {} is not in this layer", target_rel.display())))
            }
        }
        if target == full {
            return Ok(());
        }
        remove_existing(full)?;
        fs::hard_link(&target, full).ctx("create hardlink", full)
    }

    fn node<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        raw: &[u8],
        full: &Path,
        etype: EntryType,
        meta: Meta,
    ) -> Result<(), ImageError> {
        let h = entry.header();
        let major = h.device_major().ok().flatten().unwrap_or(0);
        let minor = h.device_minor().ok().flatten().unwrap_or(0);
        let is_whiteout = etype == EntryType::Char && major == 0 && minor == 0;
        if etype != EntryType::Fifo && !is_whiteout && !self.opts.allow_devices {
            return Err(self.refuse(raw, "device node not allowed (allow_devices is off)"));
        }
        remove_existing(full)?;
        let ftype = match etype {
            EntryType::Char => FileType::CharacterDevice,
            EntryType::Block => FileType::BlockDevice,
            _ => FileType::Fifo,
        };
        rfs::mknodat(CWD, full, ftype, Mode::from_raw_mode(meta.mode), rfs::makedev(major, minor))
            .map_err(|e| ImageError::io("mknod", full, e.into()))?;
        apply_path_meta(full, &meta, false)
    }
}

/// An overlayfs whiteout: a 0/0 character device.
fn make_whiteout(full: &Path) -> Result<(), ImageError> {
    remove_existing(full)?;
    rfs::mknodat(CWD, full, FileType::CharacterDevice, Mode::empty(), rfs::makedev(0, 0))
        .map_err(|e| ImageError::io("create whiteout", full, e.into()))
}

fn apply_path_meta(path: &Path, meta: &Meta, symlink: bool) -> Result<(), ImageError> {
    rfs::chownat(CWD, path, Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| ImageError::io("chown", path, e.into()))?;
    if !symlink {
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode)).ctx("chmod", path)?;
    }
    rfs::utimensat(CWD, path, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| ImageError::io("set mtime of", path, e.into()))
}

/// Removes a non-directory at `path`, or a directory tree; missing is fine.
fn remove_existing(path: &Path) -> Result<(), ImageError> {
    match fs::symlink_metadata(path) {
        Ok(_) => remove_any(path),
        Err(_) => Ok(()),
    }
}

fn remove_any(path: &Path) -> Result<(), ImageError> {
    let m = fs::symlink_metadata(path).ctx("stat", path)?;
    if m.is_dir() {
        fs::remove_dir_all(path).ctx("remove", path)
    } else {
        fs::remove_file(path).ctx("remove", path)
    }
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;
