//! Children that share the monitor's memory while the monitor waits for them: `clone` with
//! `CLONE_VM | CLONE_VFORK`, as posix_spawn does, on a stack of their own. Unlike a fork there
//! is no copy of the page tables, no copy-on-write faults in either process afterwards and no
//! address space to tear down when the child exits; the monitor runs one per container it
//! creates, so this is on every pod's path.

use std::ffi::c_void;
use std::io;
use std::panic::AssertUnwindSafe;
use std::ptr::NonNull;

/// Room for the runtime's create (spec parsing, cgroup set-up); reserved, not committed.
const STACK_LEN: usize = 8 << 20;
/// Inaccessible pages at the low end: an overflow faults instead of writing the heap.
const GUARD_LEN: usize = 64 << 10;

/// The child's stack: a private mapping, free to unmap once the child has exited (it can be
/// reused by one child after another, since the caller is suspended while one runs).
pub(super) struct ChildStack {
    base: NonNull<c_void>,
}

impl ChildStack {
    pub(super) fn new() -> io::Result<ChildStack> {
        // SAFETY: an anonymous private mapping; we check the result.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                STACK_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p).expect("mmap succeeded");
        // SAFETY: the first GUARD_LEN bytes of our own mapping.
        if unsafe { libc::mprotect(p, GUARD_LEN, libc::PROT_NONE) } != 0 {
            let e = io::Error::last_os_error();
            // SAFETY: unmapping what we just mapped.
            unsafe { libc::munmap(p, STACK_LEN) };
            return Err(e);
        }
        Ok(ChildStack { base })
    }

    fn top(&self) -> *mut c_void {
        // The mapping is page-aligned and STACK_LEN a multiple of 16: so is its end.
        // SAFETY: one past the end of our mapping, where a downward stack starts.
        unsafe { self.base.as_ptr().cast::<u8>().add(STACK_LEN).cast() }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new(); no child runs on it (each has exited).
        unsafe { libc::munmap(self.base.as_ptr(), STACK_LEN) };
    }
}

extern "C" fn trampoline<F: FnOnce() -> i32>(arg: *mut c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Option<F>` in spawn_shared's frame, alive while the parent is
    // suspended; only this child touches it.
    let slot = unsafe { &mut *arg.cast::<Option<F>>() };
    let f = slot.take().expect("the child runs once");
    let code = std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or(127);
    // SAFETY: leaving without the parent's atexit handlers or destructors.
    unsafe { libc::_exit(code) }
}

/// Runs `f` in a child process that shares this process's memory, on `stack`; returns once the
/// child has exited (or exec'd), with its pid, which the caller reaps. The child exits with
/// `f`'s return value (127 if it panics).
///
/// # Safety
/// The caller must be single-threaded (no lock can be held by another thread while the child
/// runs). `f` runs on shared memory: what it allocates and does not free stays allocated here,
/// and global state it changes (caches) is changed here too. Its descriptor table, signal
/// handlers and mask are the child's own copies.
pub(super) unsafe fn spawn_shared<F: FnOnce() -> i32>(stack: &ChildStack, f: F) -> io::Result<i32> {
    let mut slot = Some(f);
    // SAFETY: the trampoline runs on the child's own stack; CLONE_VFORK keeps this frame (and
    // `slot`) alive and untouched until the child is gone.
    let pid = unsafe {
        libc::clone(
            trampoline::<F>,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&raw mut slot).cast(),
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    debug_assert!(slot.is_none(), "the child took the closure");
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_child_shares_memory_and_the_parent_waits() {
        let stack = ChildStack::new().unwrap();
        let mut seen = Vec::new();
        for round in 0..3 {
            let out = &mut seen;
            // SAFETY: the test thread does nothing else while the child runs.
            let pid = unsafe {
                spawn_shared(&stack, move || {
                    out.push(round);
                    // Deep enough to use more than a page of the stack.
                    let buf = [round as u8; 16 << 10];
                    std::hint::black_box(&buf);
                    7
                })
            }
            .unwrap();
            let mut status = 0;
            // SAFETY: reaping our own child.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7, "status {status:#x}");
        }
        assert_eq!(seen, vec![0, 1, 2], "the children wrote into this process's memory");
    }
}
