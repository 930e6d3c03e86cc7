//! Idmapped mounts (mount_setattr with MOUNT_ATTR_IDMAP): a clone of a directory tree whose
//! file owners are seen through a user namespace's id maps. The shim uses it to give a user
//! namespace pod's root filesystem layers the owners its root expects.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::syscall::cvt;

/// `struct mount_attr` of linux/mount.h.
#[repr(C)]
pub(crate) struct MountAttr {
    pub attr_set: u64,
    pub attr_clr: u64,
    pub propagation: u64,
    pub userns_fd: u64,
}

pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
pub(crate) const AT_RECURSIVE: libc::c_uint = 0x8000;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

fn cstr(p: &Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

/// mount_setattr(2) on `dirfd`/`path` with `flags`.
pub(crate) fn mount_setattr(
    dirfd: libc::c_int,
    path: &std::ffi::CStr,
    flags: libc::c_uint,
    attr: &MountAttr,
) -> io::Result<()> {
    // SAFETY: path is a valid C string and attr a mount_attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            flags,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    cvt(r as libc::c_int)?;
    Ok(())
}

/// A detached clone of the mount at `source` (not recursive) with `attr` applied to it.
fn cloned_tree(source: &Path, attr: &MountAttr) -> io::Result<OwnedFd> {
    let c = cstr(source)?;
    // SAFETY: open_tree with a valid C path; the result is a new fd we own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    let fd = cvt(fd as libc::c_int)?;
    // SAFETY: fd was just returned by open_tree.
    let tree = unsafe { OwnedFd::from_raw_fd(fd) };
    mount_setattr(tree.as_raw_fd(), c"", libc::AT_EMPTY_PATH as libc::c_uint, attr)?;
    Ok(tree)
}

/// A detached clone of the mount tree at `source` (not recursive), idmapped through the user
/// namespace `userns` (an open /proc/PID/ns/user).
pub fn idmapped_tree(source: &Path, userns: &std::fs::File) -> io::Result<OwnedFd> {
    cloned_tree(
        source,
        &MountAttr { attr_set: MOUNT_ATTR_IDMAP, attr_clr: 0, propagation: 0, userns_fd: userns.as_raw_fd() as u64 },
    )
}

/// A detached, read-only clone of the mount at `source` (not recursive): a read-only root for
/// a container without a mount namespace, which `fchdir` + `chroot(".")` enter without adding
/// a mount to anyone's table. It goes away with the last process rooted in it.
pub fn readonly_tree(source: &Path) -> io::Result<OwnedFd> {
    cloned_tree(
        source,
        &MountAttr {
            attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        },
    )
}

/// Attaches a detached mount (from [`idmapped_tree`]) at `target`.
pub fn attach(tree: &OwnedFd, target: &Path) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: move_mount from an fd with an empty path to a valid C path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    cvt(r as libc::c_int)?;
    Ok(())
}
