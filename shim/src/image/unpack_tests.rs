//! Unit tests of layer unpacking: whiteouts, metadata, and a corpus of hostile layers that must
//! each be refused with a message naming the entry and leave nothing behind.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use super::*;

/// One tar entry, written with raw name bytes so hostile paths survive the builder.
struct E {
    name: &'static str,
    kind: EntryType,
    link: &'static str,
    data: &'static [u8],
    mode: u32,
    dev: (u32, u32),
}

fn file(name: &'static str, data: &'static [u8]) -> E {
    E { name, kind: EntryType::Regular, link: "", data, mode: 0o644, dev: (0, 0) }
}
fn dir(name: &'static str) -> E {
    E { name, kind: EntryType::Directory, link: "", data: b"", mode: 0o755, dev: (0, 0) }
}
fn symlink(name: &'static str, link: &'static str) -> E {
    E { name, kind: EntryType::Symlink, link, data: b"", mode: 0o777, dev: (0, 0) }
}
fn hardlink(name: &'static str, link: &'static str) -> E {
    E { name, kind: EntryType::Link, link, data: b"", mode: 0o644, dev: (0, 0) }
}
fn chardev(name: &'static str, major: u32, minor: u32) -> E {
    E { name, kind: EntryType::Char, link: "", data: b"", mode: 0o666, dev: (major, minor) }
}

fn tar_bytes(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        {
            let old = h.as_old_mut();
            old.name[..e.name.len()].copy_from_slice(e.name.as_bytes());
            old.linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
        }
        h.set_entry_type(e.kind);
        h.set_size(e.data.len() as u64);
        h.set_mode(e.mode);
        h.set_uid(rustix::process::geteuid().as_raw() as u64);
        h.set_gid(rustix::process::getegid().as_raw() as u64);
        h.set_mtime(1_000_000_000);
        h.set_device_major(e.dev.0).unwrap();
        h.set_device_minor(e.dev.1).unwrap();
        h.set_cksum();
        b.append(&h, e.data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Writes `blob`, unpacks it into `<tmp>/layer`, and returns the result and the layer path.
fn unpack(blob: &[u8], opts: UnpackOptions) -> (tempfile::TempDir, PathBuf, Result<String, ImageError>) {
    let tmp = tempfile::tempdir().unwrap();
    let blob_path = tmp.path().join("blob");
    fs::write(&blob_path, blob).unwrap();
    let dest = tmp.path().join("layer");
    let r = unpack_layer(&blob_path, &dest, "sha256:test", opts);
    (tmp, dest, r)
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

#[test]
fn classify_paths() {
    use EntryKind::*;
    assert_eq!(classify(b"./").unwrap(), Root);
    assert_eq!(classify(b".").unwrap(), Root);
    assert_eq!(classify(b"/").unwrap(), Root);
    assert!(classify(b"/.").is_ok());
    assert_eq!(classify(b"./a/b").unwrap(), Normal("a/b".into()));
    assert_eq!(classify(b"a//b/").unwrap(), Normal("a/b".into()));
    assert_eq!(classify(b"a/.wh.b").unwrap(), Whiteout("a/b".into()));
    assert_eq!(classify(b".wh.top").unwrap(), Whiteout("top".into()));
    assert_eq!(classify(b"a/b/.wh..wh..opq").unwrap(), Opaque("a/b".into()));
    assert_eq!(classify(b".wh..wh..opq").unwrap(), Opaque("".into()));
    assert_eq!(classify(b"a/.wh..wh.plnk").unwrap(), Ignore);
    assert!(classify(b"/etc/passwd").unwrap_err().contains("absolute"));
    assert!(classify(b"a/../../x").unwrap_err().contains(".."));
    assert!(classify(b"a/.wh.").is_err());
}

#[test]
fn symlink_escape_is_lexical_from_the_link_directory() {
    let p = Path::new;
    assert!(!symlink_escapes(p("bin/sh"), p("busybox")));
    assert!(!symlink_escapes(p("usr/bin/x"), p("../../bin/busybox")));
    assert!(symlink_escapes(p("usr/bin/x"), p("../../../etc")));
    assert!(symlink_escapes(p("x"), p("..")));
    assert!(!symlink_escapes(p("etc/mtab"), p("/proc/mounts")));
    assert!(!symlink_escapes(p("a/b"), p("./../b/./c")));
}

#[test]
fn unpacks_gzip_with_metadata_and_reports_the_diff_id() {
    let tar = tar_bytes(&[
        dir("./"),
        dir("bin/"),
        file("bin/busybox", b"\x7fELF..."),
        symlink("bin/sh", "busybox"),
        hardlink("bin/ls", "bin/busybox"),
        symlink("etc/mtab", "/proc/mounts"),
        E { mode: 0o4755, ..file("bin/su", b"su") },
    ]);
    let (_t, dest, r) = unpack(&gzip(&tar), UnpackOptions::default());
    assert_eq!(r.unwrap(), sha(&tar));
    assert_eq!(fs::read(dest.join("bin/busybox")).unwrap(), b"\x7fELF...");
    assert_eq!(fs::read_link(dest.join("bin/sh")).unwrap(), Path::new("busybox"));
    assert_eq!(fs::read_link(dest.join("etc/mtab")).unwrap(), Path::new("/proc/mounts"));
    let a = fs::metadata(dest.join("bin/busybox")).unwrap();
    let b = fs::metadata(dest.join("bin/ls")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.mtime(), 1_000_000_000);
    assert_eq!(a.mode() & 0o7777, 0o644);
    assert_eq!(fs::metadata(dest.join("bin/su")).unwrap().mode() & 0o7777, 0o4755);
    assert_eq!(fs::metadata(dest.join("bin")).unwrap().mtime(), 1_000_000_000);
}

#[test]
fn plain_tar_and_zstd_unpack() {
    let tar = tar_bytes(&[file("a", b"plain")]);
    let (_t, dest, r) = unpack(&tar, UnpackOptions::default());
    assert_eq!(r.unwrap(), sha(&tar));
    assert_eq!(fs::read(dest.join("a")).unwrap(), b"plain");
    let z = ruzstd::encoding::compress_to_vec(&tar[..], ruzstd::encoding::CompressionLevel::Fastest);
    let (_t, dest, r) = unpack(&z, UnpackOptions::default());
    assert_eq!(r.unwrap(), sha(&tar));
    assert_eq!(fs::read(dest.join("a")).unwrap(), b"plain");
}

#[test]
fn later_entries_replace_earlier_ones() {
    let tar = tar_bytes(&[file("x", b"one"), dir("x/"), file("x/y", b"two"), file("x", b"three")]);
    let (_t, dest, r) = unpack(&tar, UnpackOptions::default());
    r.unwrap();
    assert_eq!(fs::read(dest.join("x")).unwrap(), b"three");
}

#[test]
#[ignore = "needs root"]
fn whiteouts_and_opaque_dirs_become_overlay_markers() {
    let tar = tar_bytes(&[
        dir("etc/"),
        file("etc/.wh.passwd", b""),
        dir("var/cache/"),
        file("var/cache/.wh..wh..opq", b""),
        file("var/cache/new", b"n"),
        file("gone/.wh..wh..opq", b""),
        file(".wh.top", b""),
        file("a/.wh..wh.plnk", b""),
    ]);
    let (_t, dest, r) = unpack(&tar, UnpackOptions::default());
    r.unwrap();
    for w in ["etc/passwd", "top"] {
        let m = fs::symlink_metadata(dest.join(w)).unwrap();
        assert!(m.file_type().is_char_device(), "{w}");
        assert_eq!(m.rdev(), 0, "{w}");
    }
    for d in ["var/cache", "gone"] {
        let mut buf = [0u8; 4];
        let n = rfs::lgetxattr(dest.join(d), OPAQUE_XATTR, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"y", "{d}");
    }
    assert_eq!(fs::read(dest.join("var/cache/new")).unwrap(), b"n");
    assert!(!dest.join("etc/.wh.passwd").exists());
    assert!(!dest.join("a/.wh..wh.plnk").exists());
}

/// Each hostile layer: (what, entries, words the error must contain).
fn hostile() -> Vec<(&'static str, Vec<E>, &'static [&'static str])> {
    vec![
        ("dotdot", vec![file("ok", b"1"), file("a/../../escape", b"x")], &["a/../../escape", "'..'"]),
        ("absolute", vec![file("ok", b"1"), file("/tmp/berth-evil", b"x")], &["/tmp/berth-evil", "absolute"]),
        (
            "symlink write-through",
            vec![symlink("evil", "/tmp"), file("evil/berth-evil", b"x")],
            &["evil/berth-evil", "parent evil is a symlink"],
        ),
        (
            "symlink dir write-through",
            vec![dir("d/"), symlink("d/l", "/etc"), file("d/l/passwd", b"x")],
            &["d/l/passwd", "parent d/l is a symlink"],
        ),
        ("relative symlink escape", vec![symlink("a/up", "../../../etc")], &["a/up", "escapes the layer root"]),
        ("hardlink outside", vec![file("ok", b"1"), hardlink("pw", "../../etc/passwd")], &["pw", "hardlink target"]),
        ("hardlink absolute", vec![hardlink("pw", "/etc/passwd")], &["pw", "absolute"]),
        ("hardlink missing", vec![hardlink("pw", "etc/passwd")], &["pw", "not in this layer"]),
        (
            "hardlink through symlink",
            vec![symlink("s", "/etc"), hardlink("pw", "s/passwd")],
            &["pw", "parent s is a symlink"],
        ),
        ("device node", vec![file("ok", b"1"), chardev("dev/mem", 1, 1)], &["dev/mem", "device node not allowed"]),
    ]
}

#[test]
fn hostile_layers_are_refused_and_leave_nothing() {
    for (what, entries, words) in hostile() {
        let (tmp, dest, r) = unpack(&gzip(&tar_bytes(&entries)), UnpackOptions::default());
        let err = r.expect_err(what);
        let msg = err.to_string();
        assert!(matches!(err, ImageError::UnsafeEntry { .. }), "{what}: {msg}");
        for w in words {
            assert!(msg.contains(w), "{what}: {msg:?} lacks {w:?}");
        }
        assert!(msg.contains("sha256:test"), "{what}: {msg}");
        assert!(!dest.exists(), "{what}: partial layer left behind");
        let left: Vec<_> = fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("blob")], "{what}");
    }
    assert!(!Path::new("/tmp/berth-evil").exists());
}

#[test]
#[ignore = "needs root"]
fn devices_only_when_allowed() {
    let tar = tar_bytes(&[chardev("dev/null", 1, 3)]);
    let (_t, dest, r) = unpack(&tar, UnpackOptions { allow_devices: true });
    r.unwrap();
    let m = fs::symlink_metadata(dest.join("dev/null")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), rfs::makedev(1, 3));
}

#[test]
fn truncated_archive_is_an_error_and_leaves_nothing() {
    let tar = gzip(&tar_bytes(&[file("a", &[7u8; 4096])]));
    let (_t, dest, r) = unpack(&tar[..tar.len() / 2], UnpackOptions::default());
    assert!(matches!(r, Err(ImageError::Archive { .. })), "{r:?}");
    assert!(!dest.exists());
}

#[test]
fn a_stream_ending_right_after_the_last_entry_data_unpacks() {
    // What umoci left in critest's images: header + 5 bytes of data, no padding, no end marker.
    let full = tar_bytes(&[file("pause", b"hello")]);
    let cut = full[..512 + 5].to_vec();
    let (_t, dest, r) = unpack(&gzip(&cut), UnpackOptions::default());
    assert_eq!(r.unwrap(), sha(&cut));
    assert_eq!(fs::read(dest.join("pause")).unwrap(), b"hello");
    // Cut inside the data it is still an error.
    let (_t, dest, r) = unpack(&gzip(&full[..512 + 3]), UnpackOptions::default());
    assert!(r.is_err(), "{r:?}");
    assert!(!dest.exists());
}
