//! The runtime's narrow door to the kernel for mount-namespace, filesystem and identity work.
//!
//! Everything that mounts, pivots or creates nodes goes through [`Syscall`], so the logic that
//! decides *what* to mount (see `rootfs`) can be unit-tested with the recording fake.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Converts a path to a C string; a path with an interior NUL is invalid input.
pub fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Maps a libc return value (-1 on error) to `io::Result`.
pub fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// ext2/3/4's "top of directory hierarchies" attribute (`chattr +T`; not in the libc crate).
const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;

/// Marks `dir` so that ext2/3/4 place each directory created in it in a block group of its
/// own choosing (the Orlov allocator's spreading, as for directories in the root), rather than
/// next to `dir`. For directories whose children are independent trees: one per pod or
/// container. The files created inside a child then land in the child's group too, so a burst
/// of pods does not pile every allocation into one group. That matters on ext4 without a
/// journal, which skips every inode of the group freed in the last minute on each allocation
/// (`recently_deleted`): overlay mounts create and free test files in their work dirs, and
/// pod deletions free whole trees. A hint: other filesystems refuse or ignore it, which is
/// reported and harmless.
pub fn spread_subdirectories(dir: &Path) -> io::Result<()> {
    let f = std::fs::File::open(dir)?;
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int (the kernel uses int despite the ioctl's
    // declared type) into `flags`, which outlives the call.
    cvt(unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) })?;
    if flags & FS_TOPDIR_FL == 0 {
        flags |= FS_TOPDIR_FL;
        // SAFETY: FS_IOC_SETFLAGS reads one int from `flags`.
        cvt(unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) })?;
    }
    Ok(())
}

/// Kernel operations used while building a container's root filesystem and identity.
pub trait Syscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()>;
    fn umount2(&self, target: &Path, flags: libc::c_int) -> io::Result<()>;
    /// Makes the mount at `target` and every mount below it read-only (mount_setattr).
    fn readonly_recursive(&self, target: &Path) -> io::Result<()>;
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()>;
    fn chroot(&self, path: &Path) -> io::Result<()>;
    fn chdir(&self, path: &Path) -> io::Result<()>;
    fn fchdir(&self, fd: BorrowedFd<'_>) -> io::Result<()>;
    fn mknod(&self, path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()>;
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Creates an empty regular file (and its parents) if nothing exists at `path`.
    fn create_file(&self, path: &Path) -> io::Result<()>;
    fn sethostname(&self, name: &str) -> io::Result<()>;
    fn setdomainname(&self, name: &str) -> io::Result<()>;
    /// The `MS_*` flags the mount at `path` currently has (from statvfs), for remounts that
    /// must keep flags the kernel locked.
    fn mount_flags(&self, path: &Path) -> io::Result<libc::c_ulong>;
}

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct Linux;

impl Syscall for Linux {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()> {
        let source = source.map(cstr).transpose()?;
        let target = cstr(target)?;
        let fstype = fstype.map(CString::new).transpose()?;
        let data = data.map(CString::new).transpose()?;
        let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: every pointer is either null or a NUL-terminated string that outlives the call.
        cvt(unsafe { libc::mount(ptr(&source), target.as_ptr(), ptr(&fstype), flags, ptr(&data).cast()) })?;
        Ok(())
    }

    fn umount2(&self, target: &Path, flags: libc::c_int) -> io::Result<()> {
        let target = cstr(target)?;
        // SAFETY: target is a valid C string.
        cvt(unsafe { libc::umount2(target.as_ptr(), flags) })?;
        Ok(())
    }

    fn readonly_recursive(&self, target: &Path) -> io::Result<()> {
        use crate::idmap::{mount_setattr, MountAttr, AT_RECURSIVE, MOUNT_ATTR_RDONLY};
        let target = cstr(target)?;
        let attr = MountAttr { attr_set: MOUNT_ATTR_RDONLY, attr_clr: 0, propagation: 0, userns_fd: 0 };
        mount_setattr(libc::AT_FDCWD, &target, AT_RECURSIVE, &attr)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        let new_root = cstr(new_root)?;
        let put_old = cstr(put_old)?;
        // SAFETY: both arguments are valid C strings; pivot_root has no libc wrapper.
        let ret = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
        cvt(ret as libc::c_int)?;
        Ok(())
    }

    fn chroot(&self, path: &Path) -> io::Result<()> {
        let path = cstr(path)?;
        // SAFETY: path is a valid C string.
        cvt(unsafe { libc::chroot(path.as_ptr()) })?;
        Ok(())
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        std::env::set_current_dir(path)
    }

    fn fchdir(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        // SAFETY: fd is a valid open descriptor for the duration of the call.
        cvt(unsafe { libc::fchdir(fd.as_raw_fd()) })?;
        Ok(())
    }

    fn mknod(&self, path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
        let path = cstr(path)?;
        // SAFETY: path is a valid C string.
        cvt(unsafe { libc::mknod(path.as_ptr(), mode, dev) })?;
        Ok(())
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn create_file(&self, path: &Path) -> io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        // SAFETY: the pointer and length describe `name`'s bytes.
        cvt(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })?;
        Ok(())
    }

    fn setdomainname(&self, name: &str) -> io::Result<()> {
        // SAFETY: the pointer and length describe `name`'s bytes.
        cvt(unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) })?;
        Ok(())
    }

    fn mount_flags(&self, path: &Path) -> io::Result<libc::c_ulong> {
        let path = cstr(path)?;
        // SAFETY: statvfs writes only into the zeroed struct we own.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: path is a valid C string and st is a valid out-pointer.
        cvt(unsafe { libc::statvfs(path.as_ptr(), &mut st) })?;
        const MAP: [(libc::c_ulong, libc::c_ulong); 7] = [
            (libc::ST_RDONLY, libc::MS_RDONLY),
            (libc::ST_NOSUID, libc::MS_NOSUID),
            (libc::ST_NODEV, libc::MS_NODEV),
            (libc::ST_NOEXEC, libc::MS_NOEXEC),
            (libc::ST_NOATIME, libc::MS_NOATIME),
            (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
            (libc::ST_RELATIME, libc::MS_RELATIME),
        ];
        Ok(MAP.iter().filter(|(st_flag, _)| st.f_flag & st_flag != 0).fold(0, |acc, (_, ms)| acc | ms))
    }
}

#[cfg(any(test, feature = "test-util"))]
pub mod fake {
    //! A recording fake of [`Syscall`] for unit tests of mount planning.
    use super::*;
    use std::cell::RefCell;
    use std::path::PathBuf;

    /// One recorded kernel call.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        Mount {
            source: Option<PathBuf>,
            target: PathBuf,
            fstype: Option<String>,
            flags: libc::c_ulong,
            data: Option<String>,
        },
        Umount {
            target: PathBuf,
            flags: libc::c_int,
        },
        ReadonlyRecursive(PathBuf),
        PivotRoot {
            new_root: PathBuf,
            put_old: PathBuf,
        },
        Chroot(PathBuf),
        Chdir(PathBuf),
        Fchdir,
        Mknod {
            path: PathBuf,
            mode: libc::mode_t,
            dev: libc::dev_t,
        },
        Symlink {
            target: PathBuf,
            link: PathBuf,
        },
        CreateDir(PathBuf),
        CreateFile(PathBuf),
        Hostname(String),
        Domainname(String),
    }

    /// Records every call and succeeds.
    #[derive(Debug, Default)]
    pub struct Recorder {
        pub calls: RefCell<Vec<Call>>,
    }

    impl Recorder {
        pub fn calls(&self) -> Vec<Call> {
            self.calls.borrow().clone()
        }
        fn push(&self, call: Call) -> io::Result<()> {
            self.calls.borrow_mut().push(call);
            Ok(())
        }
    }

    impl Syscall for Recorder {
        fn mount(
            &self,
            source: Option<&Path>,
            target: &Path,
            fstype: Option<&str>,
            flags: libc::c_ulong,
            data: Option<&str>,
        ) -> io::Result<()> {
            self.push(Call::Mount {
                source: source.map(Path::to_path_buf),
                target: target.to_path_buf(),
                fstype: fstype.map(str::to_owned),
                flags,
                data: data.map(str::to_owned),
            })
        }
        fn umount2(&self, target: &Path, flags: libc::c_int) -> io::Result<()> {
            self.push(Call::Umount { target: target.to_path_buf(), flags })
        }
        fn readonly_recursive(&self, target: &Path) -> io::Result<()> {
            self.push(Call::ReadonlyRecursive(target.to_path_buf()))
        }
        fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
            self.push(Call::PivotRoot { new_root: new_root.to_path_buf(), put_old: put_old.to_path_buf() })
        }
        fn chroot(&self, path: &Path) -> io::Result<()> {
            self.push(Call::Chroot(path.to_path_buf()))
        }
        fn chdir(&self, path: &Path) -> io::Result<()> {
            self.push(Call::Chdir(path.to_path_buf()))
        }
        fn fchdir(&self, _fd: BorrowedFd<'_>) -> io::Result<()> {
            self.push(Call::Fchdir)
        }
        fn mknod(&self, path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
            self.push(Call::Mknod { path: path.to_path_buf(), mode, dev })
        }
        fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
            self.push(Call::Symlink { target: target.to_path_buf(), link: link.to_path_buf() })
        }
        fn create_dir_all(&self, path: &Path) -> io::Result<()> {
            self.push(Call::CreateDir(path.to_path_buf()))
        }
        fn create_file(&self, path: &Path) -> io::Result<()> {
            self.push(Call::CreateFile(path.to_path_buf()))
        }
        fn sethostname(&self, name: &str) -> io::Result<()> {
            self.push(Call::Hostname(name.to_owned()))
        }
        fn setdomainname(&self, name: &str) -> io::Result<()> {
            self.push(Call::Domainname(name.to_owned()))
        }
        fn mount_flags(&self, _path: &Path) -> io::Result<libc::c_ulong> {
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreading_sets_the_topdir_attribute_or_says_why_not() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("pods");
        std::fs::create_dir(&dir).unwrap();
        match spread_subdirectories(&dir) {
            Ok(()) => {
                let f = std::fs::File::open(&dir).unwrap();
                let mut flags: libc::c_int = 0;
                // SAFETY: FS_IOC_GETFLAGS writes one int into `flags`.
                cvt(unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) }).unwrap();
                assert_ne!(flags & FS_TOPDIR_FL, 0, "flags {flags:#x}");
                spread_subdirectories(&dir).expect("setting it again is a no-op");
            }
            // A filesystem without the attribute (tmpfs, xfs ...): refused, not ignored silently.
            Err(e) => assert!(matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EOPNOTSUPP | libc::EINVAL)), "{e}"),
        }
        assert_eq!(spread_subdirectories(&d.path().join("missing")).unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
