//! Checks of the container's filesystem view: mounts, masked and read-only paths, the root
//! filesystem, sysctls and device nodes.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::mountinfo::{find_mount, parse_mountinfo, MountInfo};
use super::report::Report;
use super::schema::{DeviceExpectation, Expectations, MountExpectation};

fn read_mounts() -> Result<Vec<MountInfo>, String> {
    let text = fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    parse_mountinfo(&text)
}

pub fn check_mounts<W: Write>(e: &Expectations, r: &mut Report<W>) {
    let needs_mounts = !e.mounts.is_empty() || !e.masked_paths.is_empty();
    if !needs_mounts {
        return;
    }
    let mounts = match read_mounts() {
        Ok(m) => m,
        Err(err) => {
            r.fail("/proc/self/mountinfo", "parsable", err);
            return;
        }
    };
    for want in &e.mounts {
        check_mount(want, &mounts, r);
    }
    for path in &e.masked_paths {
        check_masked(path, &mounts, r);
    }
}

fn check_mount<W: Write>(want: &MountExpectation, mounts: &[MountInfo], r: &mut Report<W>) {
    let name = format!("mount {}", want.destination);
    let Some(m) = find_mount(mounts, &want.destination) else {
        r.fail(&name, "a mount", "none");
        return;
    };
    // Each mismatch as (expected, got).
    let mut problems: Vec<(String, String)> = Vec::new();
    if let Some(fstype) = want.fstype.as_ref().filter(|t| **t != m.fstype) {
        problems.push((format!("fstype {fstype}"), format!("fstype {}", m.fstype)));
    }
    if let Some(source) = want.source.as_ref().filter(|s| **s != m.source) {
        problems.push((format!("source {source}"), format!("source {}", m.source)));
    }
    let missing: Vec<&str> = want.options.iter().filter(|o| !m.has_option(o)).map(String::as_str).collect();
    if !missing.is_empty() {
        let got = format!("options {} - {}", m.options.join(","), m.super_options.join(","));
        problems.push((format!("options {}", missing.join(",")), got));
    }
    if let Some(prop) = &want.propagation {
        if m.propagation.is(prop) != Some(true) {
            let got = format!("propagation {}", m.propagation.describe());
            problems.push((format!("propagation {prop}"), got));
        }
    }
    if problems.is_empty() {
        r.ok(&name);
    } else {
        let (expected, got): (Vec<_>, Vec<_>) = problems.into_iter().unzip();
        r.fail(&name, expected.join("; "), got.join("; "));
    }
}

fn check_masked<W: Write>(path: &str, mounts: &[MountInfo], r: &mut Report<W>) {
    let name = format!("masked {path}");
    let meta = match fs::symlink_metadata(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return r.ok_note(&name, "absent"),
        Err(err) => return r.fail(&name, "masked", format_args!("error: {err}")),
        Ok(meta) => meta,
    };
    if meta.is_dir() {
        let entries = fs::read_dir(path).map(|d| d.count());
        let fstype = find_mount(mounts, path).map(|m| m.fstype.as_str()).unwrap_or("no mount");
        match entries {
            Ok(0) if fstype == "tmpfs" => r.ok(&name),
            Ok(n) => r.fail(&name, "an empty tmpfs", format_args!("{n} entries on {fstype}")),
            Err(err) => r.fail(&name, "an empty tmpfs", format_args!("error: {err}")),
        }
        return;
    }
    let mut buf = [0u8; 4096];
    match fs::File::open(path).and_then(|mut f| f.read(&mut buf)) {
        Ok(0) => r.ok(&name),
        Ok(n) => r.fail(&name, "empty content", format_args!("{n} bytes")),
        Err(err) => r.fail(&name, "empty content", format_args!("error: {err}")),
    }
}

pub fn check_readonly_paths<W: Write>(e: &Expectations, r: &mut Report<W>) {
    for path in &e.readonly_paths {
        let name = format!("readonly {path}");
        match fs::symlink_metadata(path) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => r.ok_note(&name, "absent"),
            Err(err) => r.fail(&name, "EROFS", format_args!("error: {err}")),
            Ok(meta) if meta.is_dir() => check_readonly_dir(&name, Path::new(path), r),
            Ok(_) => match open_for_write(Path::new(path)) {
                Err(err) if err.raw_os_error() == Some(libc::EROFS) => r.ok(&name),
                Err(err) => r.fail(&name, "EROFS", err),
                Ok(()) => r.fail(&name, "EROFS", "opened for writing"),
            },
        }
    }
}

fn check_readonly_dir<W: Write>(name: &str, dir: &Path, r: &mut Report<W>) {
    let probe = dir.join(format!(".berth-check-ro-{}", std::process::id()));
    match fs::create_dir(&probe) {
        Err(err) if err.raw_os_error() == Some(libc::EROFS) => r.ok(name),
        Ok(()) => {
            let _ = fs::remove_dir(&probe);
            r.fail(name, "EROFS", "created a directory");
        }
        // Some filesystems (procfs) refuse creation before the read-only check: ask statvfs.
        Err(err) => match mount_read_only(dir) {
            Ok(true) => r.ok_note(name, format_args!("mkdir: {err}; statvfs: ST_RDONLY")),
            Ok(false) => r.fail(name, "EROFS", format_args!("{err}, mount is writable")),
            Err(serr) => r.fail(name, "EROFS", format_args!("{err}; statvfs: {serr}")),
        },
    }
}

fn open_for_write(path: &Path) -> io::Result<()> {
    fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path).map(drop)
}

/// Whether the mount holding `path` is read-only, by `statvfs`.
fn mount_read_only(path: &Path) -> io::Result<bool> {
    let c_path =
        CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: statvfs is plain old data; all-zero is valid.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and st is writable.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_flag & libc::ST_RDONLY != 0)
}

pub fn check_rootfs<W: Write>(e: &Expectations, r: &mut Report<W>) {
    let Some(want) = e.rootfs_readonly else {
        return;
    };
    let probe = format!("/.berth-check-rootfs-{}", std::process::id());
    let created = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&probe);
    let got = match created {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            false
        }
        Err(err) if err.raw_os_error() == Some(libc::EROFS) => true,
        Err(err) => match mount_read_only(Path::new("/")) {
            Ok(ro) => ro,
            Err(_) => return r.fail("rootfs_readonly", want, format_args!("error: {err}")),
        },
    };
    r.compare("rootfs_readonly", &want, &got);
}

/// `/proc/sys` path of a dotted sysctl key.
pub fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

pub fn check_sysctls<W: Write>(e: &Expectations, r: &mut Report<W>) {
    let normalize = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    for (key, want) in &e.sysctls {
        let name = format!("sysctl {key}");
        match fs::read_to_string(sysctl_path(key)) {
            Ok(got) => r.check(&name, normalize(&got) == normalize(want), want, got.trim()),
            Err(err) => r.fail(&name, want, format_args!("error: {err}")),
        }
    }
}

/// Major number of a Linux `dev_t` (glibc encoding).
pub fn dev_major(dev: u64) -> u64 {
    ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)
}

/// Minor number of a Linux `dev_t` (glibc encoding).
pub fn dev_minor(dev: u64) -> u64 {
    (dev & 0xff) | ((dev >> 12) & !0xff)
}

pub fn check_devices<W: Write>(e: &Expectations, r: &mut Report<W>) {
    for want in &e.devices {
        check_device(want, r);
    }
}

fn check_device<W: Write>(want: &DeviceExpectation, r: &mut Report<W>) {
    let name = format!("device {}", want.path);
    let meta = match fs::metadata(&want.path) {
        Ok(meta) => meta,
        Err(err) => return r.fail(&name, "a device node", format_args!("error: {err}")),
    };
    let ft = meta.file_type();
    let kind = if ft.is_char_device() {
        "c"
    } else if ft.is_block_device() {
        "b"
    } else if ft.is_fifo() {
        "p"
    } else {
        "not a device"
    };
    let got = format!(
        "{kind} {}:{} mode {:04o} owner {}:{}",
        dev_major(meta.rdev()),
        dev_minor(meta.rdev()),
        meta.mode() & 0o7777,
        meta.uid(),
        meta.gid()
    );
    let want_kind = want.kind.as_deref().map(|k| if k == "u" { "c" } else { k });
    let ok = want_kind.is_none_or(|k| k == kind)
        && want.major.is_none_or(|m| m == dev_major(meta.rdev()))
        && want.minor.is_none_or(|m| m == dev_minor(meta.rdev()))
        && want.mode.is_none_or(|m| m & 0o7777 == meta.mode() & 0o7777)
        && want.uid.is_none_or(|u| u == meta.uid())
        && want.gid.is_none_or(|g| g == meta.gid());
    let expected = format!(
        "{} {}:{} mode {} owner {}:{}",
        want_kind.unwrap_or("*"),
        opt(want.major),
        opt(want.minor),
        want.mode.map(|m| format!("{m:04o}")).unwrap_or_else(|| "*".into()),
        opt(want.uid),
        opt(want.gid)
    );
    r.check(&name, ok, expected, got);
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "*".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_numbers_split_like_glibc() {
        // makedev(1, 3) and makedev(259, 70000)
        assert_eq!((dev_major(0x103), dev_minor(0x103)), (1, 3));
        let dev = ((259u64 & 0xfff) << 8) | ((70000u64 & 0xff) | ((70000u64 & !0xff) << 12));
        assert_eq!((dev_major(dev), dev_minor(dev)), (259, 70000));
    }

    #[test]
    fn sysctl_keys_map_to_proc_sys() {
        assert_eq!(sysctl_path("net.ipv4.ip_forward"), "/proc/sys/net/ipv4/ip_forward");
        assert_eq!(sysctl_path("kernel.shmmax"), "/proc/sys/kernel/shmmax");
    }

    #[test]
    fn dev_null_checks_out_on_the_host() {
        let e = Expectations {
            devices: vec![DeviceExpectation {
                path: "/dev/null".into(),
                kind: Some("c".into()),
                major: Some(1),
                minor: Some(3),
                mode: Some(0o666),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut r = Report::new(Vec::new());
        check_devices(&e, &mut r);
        assert_eq!(r.failed(), 0, "{}", String::from_utf8_lossy(&r.into_inner()));
    }
}
