//! Checks of the process's own state: namespaces, identity, capabilities, limits, syscalls.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;

use super::caps::{cap_set, parse_cap_mask};
use super::procfs::{octal, parse_id_map, parse_status};
use super::report::Report;
use super::schema::{CapabilityExpectation, Expectations, IdMapping};
use super::syscalls::{self, errno_name, parse_errno};

/// The `/proc/self/ns` entry name for a namespace kind (OCI names accepted).
pub fn ns_file_name(kind: &str) -> &str {
    match kind {
        "network" => "net",
        "mount" => "mnt",
        other => other,
    }
}

/// The inode of `/proc/self/ns/<kind>` of the calling process.
pub fn own_namespace_inode(kind: &str) -> std::io::Result<u64> {
    fs::metadata(format!("/proc/self/ns/{}", ns_file_name(kind))).map(|m| m.ino())
}

pub fn check_namespaces<W: Write>(e: &Expectations, r: &mut Report<W>) {
    for (kind, want) in &e.namespaces {
        let name = format!("namespace {kind}");
        match own_namespace_inode(kind) {
            Err(err) => r.fail(&name, "a namespace inode", format_args!("error: {err}")),
            Ok(inode) if want.shared => {
                let expected = format!("inode {} (shared)", want.host_inode);
                r.check(&name, inode == want.host_inode, expected, inode);
            }
            Ok(inode) => {
                let expected = format!("inode != {} (new namespace)", want.host_inode);
                r.check(&name, inode != want.host_inode, expected, inode);
            }
        }
    }
}

pub fn check_uts<W: Write>(e: &Expectations, r: &mut Report<W>) {
    if e.hostname.is_none() && e.domainname.is_none() {
        return;
    }
    // SAFETY: utsname is plain old data; uname fills it and NUL-terminates every field.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        let err = std::io::Error::last_os_error();
        r.fail("hostname", "uname to succeed", err);
        return;
    }
    // SAFETY: the kernel NUL-terminates these fixed-size fields.
    let field = |f: &[libc::c_char]| unsafe { CStr::from_ptr(f.as_ptr()) }.to_string_lossy().into_owned();
    if let Some(want) = &e.hostname {
        r.compare("hostname", want, &field(&uts.nodename));
    }
    if let Some(want) = &e.domainname {
        r.compare("domainname", want, &field(&uts.domainname));
    }
}

pub fn check_ids<W: Write>(e: &Expectations, r: &mut Report<W>) {
    // SAFETY: these getters cannot fail and take no pointers.
    let (uid, euid, gid, egid) = unsafe { (libc::getuid(), libc::geteuid(), libc::getgid(), libc::getegid()) };
    if let Some(want) = e.uid {
        r.compare("uid", &(want, want), &(uid, euid));
    }
    if let Some(want) = e.gid {
        r.compare("gid", &(want, want), &(gid, egid));
    }
    if let Some(want) = &e.additional_gids {
        let want: BTreeSet<u32> = want.iter().copied().collect();
        match supplementary_groups() {
            Ok(got) => r.compare("additional_gids", &want, &got),
            Err(err) => r.fail("additional_gids", format_args!("{want:?}"), err),
        }
    }
    check_id_map("uid_map", "/proc/self/uid_map", e.uid_map.as_deref(), r);
    check_id_map("gid_map", "/proc/self/gid_map", e.gid_map.as_deref(), r);
}

fn supplementary_groups() -> std::io::Result<BTreeSet<u32>> {
    let mut groups = vec![0 as libc::gid_t; 65536];
    // SAFETY: groups has room for groups.len() entries.
    let n = unsafe { libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    groups.truncate(n as usize);
    Ok(groups.into_iter().collect())
}

fn check_id_map<W: Write>(name: &str, path: &str, want: Option<&[IdMapping]>, r: &mut Report<W>) {
    let Some(want) = want else { return };
    match fs::read_to_string(path).map_err(|e| e.to_string()).and_then(|t| parse_id_map(&t)) {
        Ok(got) => r.compare(name, &want.to_vec(), &got),
        Err(err) => r.fail(name, format_args!("{want:?}"), format_args!("error: {err}")),
    }
}

pub fn check_cwd_env<W: Write>(e: &Expectations, r: &mut Report<W>) {
    if let Some(want) = &e.cwd {
        match std::env::current_dir() {
            Ok(got) => r.compare("cwd", want, &got.display().to_string()),
            Err(err) => r.fail("cwd", want, format_args!("error: {err}")),
        }
    }
    for entry in &e.env {
        let name = format!("env {entry}");
        let (key, value) = match entry.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (entry.as_str(), None),
        };
        let got = std::env::var_os(key).map(|v| v.to_string_lossy().into_owned());
        match (value, got) {
            (_, None) => r.fail(&name, format_args!("{key} set"), "unset"),
            (None, Some(_)) => r.ok(&name),
            (Some(want), Some(got)) => r.check(&name, want == got, want, got),
        }
    }
}

/// Checks everything read from `/proc/self/status`: umask, capabilities, NoNewPrivs, Seccomp.
pub fn check_status<W: Write>(e: &Expectations, r: &mut Report<W>) {
    let status = match fs::read_to_string("/proc/self/status") {
        Ok(text) => parse_status(&text),
        Err(err) => {
            r.fail("/proc/self/status", "readable", err);
            return;
        }
    };
    let field = |key: &str| status.get(key).cloned().unwrap_or_else(|| "<missing>".into());
    if let Some(want) = e.umask {
        r.check("umask", field("Umask") == octal(want), octal(want), field("Umask"));
    }
    if let Some(caps) = &e.capabilities {
        check_caps(caps, &status, r);
    }
    if let Some(want) = e.no_new_privs {
        let want = if want { "1" } else { "0" };
        r.check("no_new_privs", field("NoNewPrivs") == want, want, field("NoNewPrivs"));
    }
    if let Some(want) = e.seccomp_mode {
        let want = want.to_string();
        r.check("seccomp_mode", field("Seccomp") == want, want, field("Seccomp"));
    }
}

fn check_caps<W: Write>(caps: &CapabilityExpectation, status: &BTreeMap<String, String>, r: &mut Report<W>) {
    let sets = [
        ("bounding", "CapBnd", &caps.bounding),
        ("effective", "CapEff", &caps.effective),
        ("inheritable", "CapInh", &caps.inheritable),
        ("permitted", "CapPrm", &caps.permitted),
        ("ambient", "CapAmb", &caps.ambient),
    ];
    for (set, key, want) in sets {
        let Some(want) = want else { continue };
        let name = format!("capabilities {set}");
        let want = cap_set(want);
        let got = status.get(key).ok_or_else(|| format!("no {key}")).and_then(|h| parse_cap_mask(h));
        match got {
            Ok(got) if got == want => r.ok(&name),
            Ok(got) => {
                let missing: Vec<_> = want.difference(&got).collect();
                let extra: Vec<_> = got.difference(&want).collect();
                let got = format!("{got:?} (missing {missing:?}, extra {extra:?})");
                r.fail(&name, format_args!("{want:?}"), got);
            }
            Err(err) => r.fail(&name, format_args!("{want:?}"), format_args!("error: {err}")),
        }
    }
}

/// The `RLIMIT_*` resource numbers by name.
pub fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    let table = [
        ("RLIMIT_CPU", libc::RLIMIT_CPU),
        ("RLIMIT_FSIZE", libc::RLIMIT_FSIZE),
        ("RLIMIT_DATA", libc::RLIMIT_DATA),
        ("RLIMIT_STACK", libc::RLIMIT_STACK),
        ("RLIMIT_CORE", libc::RLIMIT_CORE),
        ("RLIMIT_RSS", libc::RLIMIT_RSS),
        ("RLIMIT_NPROC", libc::RLIMIT_NPROC),
        ("RLIMIT_NOFILE", libc::RLIMIT_NOFILE),
        ("RLIMIT_MEMLOCK", libc::RLIMIT_MEMLOCK),
        ("RLIMIT_AS", libc::RLIMIT_AS),
        ("RLIMIT_LOCKS", libc::RLIMIT_LOCKS),
        ("RLIMIT_SIGPENDING", libc::RLIMIT_SIGPENDING),
        ("RLIMIT_MSGQUEUE", libc::RLIMIT_MSGQUEUE),
        ("RLIMIT_NICE", libc::RLIMIT_NICE),
        ("RLIMIT_RTPRIO", libc::RLIMIT_RTPRIO),
        ("RLIMIT_RTTIME", libc::RLIMIT_RTTIME),
    ];
    let upper = name.to_ascii_uppercase();
    table.iter().find(|(n, _)| *n == upper).map(|&(_, r)| r)
}

pub fn check_rlimits<W: Write>(e: &Expectations, r: &mut Report<W>) {
    for want in &e.rlimits {
        let name = format!("rlimit {}", want.kind);
        let Some(resource) = rlimit_resource(&want.kind) else {
            r.fail(&name, "a known RLIMIT_* name", &want.kind);
            continue;
        };
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: lim is a valid, writable rlimit.
        if unsafe { libc::getrlimit(resource, &mut lim) } != 0 {
            r.fail(&name, "getrlimit to succeed", std::io::Error::last_os_error());
            continue;
        }
        let soft_ok = want.soft.is_none_or(|s| s == lim.rlim_cur);
        let hard_ok = want.hard.is_none_or(|h| h == lim.rlim_max);
        let expected = format!("soft {:?} hard {:?}", want.soft, want.hard);
        let got = format!("soft {} hard {}", lim.rlim_cur, lim.rlim_max);
        r.check(&name, soft_ok && hard_ok, expected, got);
    }
}

pub fn check_oom_score_adj<W: Write>(e: &Expectations, r: &mut Report<W>) {
    let Some(want) = e.oom_score_adj else { return };
    match fs::read_to_string("/proc/self/oom_score_adj") {
        Ok(text) => r.check("oom_score_adj", text.trim() == want.to_string(), want, text.trim()),
        Err(err) => r.fail("oom_score_adj", want, format_args!("error: {err}")),
    }
}

pub fn check_syscalls<W: Write>(e: &Expectations, r: &mut Report<W>) {
    for call in &e.syscalls {
        let name = format!("syscall {}", call.name);
        let want = match call.errno.as_deref().map(parse_errno) {
            None => 0,
            Some(Some(errno)) => errno,
            Some(None) => {
                r.fail(&name, "a known errno", format_args!("{:?}", call.errno));
                continue;
            }
        };
        let path = call.path.as_deref().unwrap_or(syscalls::DEFAULT_PATH);
        match syscalls::invoke(&call.name, path) {
            Ok(got) => r.check(&name, got == want, errno_name(want), errno_name(got)),
            Err(err) => r.fail(&name, "a supported syscall", err),
        }
    }
}
