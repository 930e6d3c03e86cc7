//! Checks that act: forking up to a count (pids limit) and touching memory (memory limit).

use std::io::Write;

use super::report::Report;
use super::schema::Expectations;

/// Forks `count` children that sleep until killed; returns how many forks succeeded.
pub fn fork_children(count: u32) -> u32 {
    let mut children = Vec::new();
    for _ in 0..count {
        // SAFETY: the child only calls async-signal-safe functions (pause, _exit).
        match unsafe { libc::fork() } {
            0 => loop {
                // SAFETY: pause has no preconditions; SIGKILL from the parent ends the child.
                unsafe { libc::pause() };
            },
            pid if pid > 0 => children.push(pid),
            _ => break,
        }
    }
    let forked = children.len() as u32;
    for pid in children {
        // SAFETY: pid is our own child; waitpid with a null status pointer is allowed.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    forked
}

pub fn check_fork<W: Write>(e: &Expectations, r: &mut Report<W>) {
    let Some(count) = e.fork_count else { return };
    let forked = fork_children(count);
    match e.fork_max_ok {
        None => r.check("fork_count", forked == count, format_args!("{count} forks"), forked),
        Some(max) => r.check("fork_count", forked <= max, format_args!("at most {max} of {count} forks"), forked),
    }
}

/// Maps and touches `mb` MiB of anonymous memory, then unmaps it.
pub fn touch_memory(mb: u64) -> std::io::Result<()> {
    let len = (mb as usize) << 20;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: an anonymous private mapping with no address hint has no preconditions.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let base = addr.cast::<u8>();
    for offset in (0..len).step_by(4096) {
        // SAFETY: offset < len, inside the mapping created above.
        unsafe { base.add(offset).write_volatile(1) };
    }
    // SAFETY: addr/len are exactly the mapping created above.
    unsafe { libc::munmap(addr, len) };
    Ok(())
}

pub fn check_alloc<W: Write>(e: &Expectations, r: &mut Report<W>) {
    let Some(mb) = e.alloc_mb else { return };
    match touch_memory(mb) {
        Ok(()) => r.ok_note("alloc_mb", format_args!("touched {mb} MiB")),
        Err(err) => r.fail("alloc_mb", format_args!("{mb} MiB mapped"), err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forks_and_reaps_children() {
        assert_eq!(fork_children(3), 3);
    }

    #[test]
    fn touches_memory() {
        touch_memory(4).unwrap();
        touch_memory(0).unwrap();
    }
}
