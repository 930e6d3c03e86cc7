//! Parser for `/proc/self/mountinfo` lines (proc(5)).

/// Propagation of a mount, from the optional fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Propagation {
    /// `shared:N`
    pub shared: bool,
    /// `master:N` (a slave mount)
    pub slave: bool,
    /// `unbindable`
    pub unbindable: bool,
}

impl Propagation {
    /// Whether the mount has the named propagation (`shared`, `slave`, `private`, `unbindable`).
    pub fn is(&self, name: &str) -> Option<bool> {
        match name {
            "shared" | "rshared" => Some(self.shared),
            "slave" | "rslave" => Some(self.slave),
            "unbindable" | "runbindable" => Some(self.unbindable),
            "private" | "rprivate" => Some(!self.shared && !self.slave && !self.unbindable),
            _ => None,
        }
    }

    /// A short description such as `shared,slave` or `private`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.shared {
            parts.push("shared");
        }
        if self.slave {
            parts.push("slave");
        }
        if self.unbindable {
            parts.push("unbindable");
        }
        if parts.is_empty() {
            parts.push("private");
        }
        parts.join(",")
    }
}

/// One mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub id: u32,
    pub parent: u32,
    pub root: String,
    pub mount_point: String,
    /// Per-mount options (`rw`, `nosuid`, `relatime`, ...).
    pub options: Vec<String>,
    pub propagation: Propagation,
    pub fstype: String,
    pub source: String,
    /// Superblock options.
    pub super_options: Vec<String>,
}

impl MountInfo {
    /// Whether the mount or its superblock is read-only.
    pub fn read_only(&self) -> bool {
        self.options.iter().chain(&self.super_options).any(|o| o == "ro")
    }

    /// Whether `option` holds: `ro`/`rw` by [`MountInfo::read_only`], others by presence in
    /// either option list.
    pub fn has_option(&self, option: &str) -> bool {
        match option {
            "ro" => self.read_only(),
            "rw" => !self.read_only(),
            _ => self.options.iter().chain(&self.super_options).any(|o| o == option),
        }
    }
}

/// Parses one mountinfo line, e.g.
/// `36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue`.
pub fn parse_mountinfo_line(line: &str) -> Result<MountInfo, String> {
    let bad = |what: &str| format!("bad mountinfo line ({what}): {line:?}");
    let (left, right) = line.split_once(" - ").ok_or_else(|| bad("no separator"))?;
    let mut fields = left.split_whitespace();
    let mut next = |what: &str| fields.next().ok_or_else(|| bad(what));
    let id = next("id")?.parse().map_err(|_| bad("id"))?;
    let parent = next("parent")?.parse().map_err(|_| bad("parent"))?;
    let _dev = next("major:minor")?;
    let root = unescape(next("root")?);
    let mount_point = unescape(next("mount point")?);
    let options = split_options(next("options")?);
    let mut propagation = Propagation::default();
    for tag in fields {
        if tag.starts_with("shared:") {
            propagation.shared = true;
        } else if tag.starts_with("master:") {
            propagation.slave = true;
        } else if tag == "unbindable" {
            propagation.unbindable = true;
        }
    }
    let mut rest = right.split_whitespace();
    let fstype = rest.next().ok_or_else(|| bad("fstype"))?.to_string();
    let source = unescape(rest.next().unwrap_or_default());
    let super_options = rest.next().map(split_options).unwrap_or_default();
    Ok(MountInfo { id, parent, root, mount_point, options, propagation, fstype, source, super_options })
}

/// Parses a whole mountinfo file, in mount order.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountInfo>, String> {
    text.lines().filter(|l| !l.trim().is_empty()).map(parse_mountinfo_line).collect()
}

/// The topmost (last mounted) entry at `mount_point`.
pub fn find_mount<'a>(mounts: &'a [MountInfo], mount_point: &str) -> Option<&'a MountInfo> {
    let wanted = mount_point.trim_end_matches('/');
    let wanted = if wanted.is_empty() { "/" } else { wanted };
    mounts.iter().rev().find(|m| m.mount_point == wanted)
}

fn split_options(s: &str) -> Vec<String> {
    s.split(',').filter(|o| !o.is_empty()).map(String::from).collect()
}

/// Decodes the `\040`-style octal escapes the kernel uses for space, tab, newline and backslash.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_proc5_example() {
        let m = parse_mountinfo_line(
            "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue",
        )
        .unwrap();
        assert_eq!((m.id, m.parent), (36, 35));
        assert_eq!(m.root, "/mnt1");
        assert_eq!(m.mount_point, "/mnt/parent");
        assert_eq!(m.options, ["rw", "noatime"]);
        assert_eq!(m.fstype, "ext3");
        assert_eq!(m.source, "/dev/root");
        assert_eq!(m.super_options, ["rw", "errors=continue"]);
        assert!(m.propagation.slave && !m.propagation.shared);
        assert_eq!(m.propagation.is("slave"), Some(true));
        assert_eq!(m.propagation.is("private"), Some(false));
    }

    #[test]
    fn private_readonly_mount_without_optional_fields() {
        let m = parse_mountinfo_line("612 598 0:57 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs rw").unwrap();
        assert_eq!(m.propagation.describe(), "private");
        assert!(m.read_only());
        assert!(m.has_option("ro") && !m.has_option("rw"));
        assert!(m.has_option("nosuid") && m.has_option("noexec") && !m.has_option("strictatime"));
    }

    #[test]
    fn multiple_optional_fields_and_escapes() {
        let m = parse_mountinfo_line(
            "40 27 0:50 / /mnt/with\\040space rw shared:7 master:3 unbindable - tmpfs my\\134src rw,size=64k",
        )
        .unwrap();
        assert_eq!(m.mount_point, "/mnt/with space");
        assert_eq!(m.source, "my\\src");
        assert!(m.propagation.shared && m.propagation.slave && m.propagation.unbindable);
        assert_eq!(m.propagation.describe(), "shared,slave,unbindable");
    }

    #[test]
    fn rejects_garbage_and_finds_topmost() {
        assert!(parse_mountinfo_line("not a mountinfo line").is_err());
        let all = parse_mountinfo(
            "1 0 0:1 / / rw - ext4 /dev/vda rw\n\
             2 1 0:2 / /dev rw - tmpfs tmpfs rw\n\
             3 2 0:3 / /dev rw,nosuid - tmpfs tmpfs rw\n",
        )
        .unwrap();
        assert_eq!(find_mount(&all, "/dev").unwrap().id, 3);
        assert_eq!(find_mount(&all, "/dev/").unwrap().id, 3);
        assert_eq!(find_mount(&all, "/").unwrap().id, 1);
        assert!(find_mount(&all, "/proc").is_none());
    }
}
