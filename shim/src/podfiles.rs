//! The files a pod's containers share: hostname, hosts, resolv.conf (from the CRI DNSConfig)
//! and the /dev/shm tmpfs, kept in the pod directory.

use std::path::{Path, PathBuf};

use berth_proto::runtime::v1 as cri;

pub const SHM_SIZE: u64 = 64 << 20;

pub struct PodFiles {
    pub hostname: PathBuf,
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
    pub shm: PathBuf,
}

impl PodFiles {
    pub fn in_dir(dir: &Path) -> PodFiles {
        PodFiles {
            hostname: dir.join("hostname"),
            hosts: dir.join("hosts"),
            resolv_conf: dir.join("resolv.conf"),
            shm: dir.join("shm"),
        }
    }
}

/// resolv.conf content: the pod's DNSConfig, or the host's file when the pod gives none.
pub fn resolv_conf(dns: Option<&cri::DnsConfig>, host: &str) -> String {
    match dns {
        Some(d) if !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()) => {
            let mut s = String::new();
            if !d.searches.is_empty() {
                s.push_str(&format!("search {}\n", d.searches.join(" ")));
            }
            for server in &d.servers {
                s.push_str(&format!("nameserver {server}\n"));
            }
            if !d.options.is_empty() {
                s.push_str(&format!("options {}\n", d.options.join(" ")));
            }
            s
        }
        _ => host.to_string(),
    }
}

pub fn hosts(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n{}",
        if hostname.is_empty() { String::new() } else { format!("127.0.1.1\t{hostname}\n") }
    )
}

/// Writes the pod files; `host_network` pods get the host's hosts file.
pub fn write(
    files: &PodFiles,
    config: &cri::PodSandboxConfig,
    hostname: &str,
    host_network: bool,
) -> std::io::Result<()> {
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    std::fs::write(&files.resolv_conf, resolv_conf(config.dns_config.as_ref(), &host_resolv))?;
    std::fs::write(&files.hostname, format!("{hostname}\n"))?;
    let hosts_text = if host_network {
        std::fs::read_to_string("/etc/hosts").unwrap_or_else(|_| hosts(hostname))
    } else {
        hosts(hostname)
    };
    std::fs::write(&files.hosts, hosts_text)
}

/// Mounts the pod's /dev/shm tmpfs.
pub fn mount_shm(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path)?;
    let dst = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    let data = std::ffi::CString::new(format!("mode=1777,size={SHM_SIZE}")).map_err(std::io::Error::other)?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // SAFETY: NUL-terminated strings; mounting a fresh tmpfs.
    if unsafe { libc::mount(c"shm".as_ptr(), dst.as_ptr(), c"tmpfs".as_ptr(), flags, data.as_ptr().cast()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Unmounts the shm tmpfs if mounted (idempotent).
pub fn unmount_shm(path: &Path) {
    if let Ok(dst) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) {
        // SAFETY: NUL-terminated path; failure (not mounted) is fine.
        unsafe { libc::umount2(dst.as_ptr(), libc::MNT_DETACH) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_config_becomes_resolv_conf() {
        let d = cri::DnsConfig {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&d), "host"),
            "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n"
        );
        assert_eq!(resolv_conf(None, "nameserver 1.1.1.1\n"), "nameserver 1.1.1.1\n");
        assert_eq!(resolv_conf(Some(&cri::DnsConfig::default()), "h"), "h");
    }

    #[test]
    fn hosts_names_the_pod() {
        assert!(hosts("web-0").ends_with("127.0.1.1\tweb-0\n"));
        assert!(hosts("").starts_with("127.0.0.1\tlocalhost\n"));
    }
}
