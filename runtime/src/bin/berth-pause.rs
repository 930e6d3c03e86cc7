//! `berth-pause`: the infra process of a pod. It holds the pod's namespaces, reaps orphans
//! when it is the PID namespace's init, and exits cleanly on SIGINT/SIGTERM.

fn main() {
    // SAFETY: signal mask manipulation and sigwait on a local set, in our single thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGCHLD] {
            libc::sigaddset(&mut set, s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        loop {
            let mut sig = 0;
            if libc::sigwait(&set, &mut sig) != 0 {
                continue;
            }
            match sig {
                libc::SIGCHLD => while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {},
                _ => libc::_exit(0),
            }
        }
    }
}
