//! Seccomp: OCI profile → classic BPF program, installed with seccomp(2).
//!
//! Pure Rust, no libseccomp. [`compile`] validates a `linux.seccomp` profile and turns it into a
//! [`Filter`]; [`install`] loads that filter into the calling thread. The pieces:
//!
//! - `plan`: validation; the profile becomes per-architecture rule lists keyed by syscall number.
//! - `codegen`: the rule lists become a BPF program (arch dispatch, then a binary search on the
//!   syscall number, then argument checks); `bpf` is the assembler underneath, which turns
//!   conditional jumps farther than 255 instructions into `ja` trampolines.
//! - `arch` and the generated `table`: syscall numbers for x86_64, i386, x32 and aarch64.
//! - `profile`: the CRI "RuntimeDefault" profile.
//!
//! Semantics, following the OCI runtime spec and what runc + libseccomp do:
//!
//! - The host's architecture is always filtered, plus those listed in `architectures`. A syscall
//!   from any other architecture is killed (`SECCOMP_RET_KILL_THREAD`), which is libseccomp's
//!   default bad-arch action. On x86_64, syscall numbers with `__X32_SYSCALL_BIT` set go to the x32
//!   rules when x32 is listed and are killed otherwise, so x32 numbers never reach x86_64 rules.
//! - Unknown syscall names are skipped (profiles list syscalls newer than our tables).
//! - `errnoRet` defaults to EPERM for SCMP_ACT_ERRNO and SCMP_ACT_TRACE, per rule;
//!   `defaultErrnoRet` applies to `defaultAction` only (OCI runtime spec, as runc does).
//! - Arguments of one rule are ANDed (also when two name the same index); rules for the same
//!   syscall are ORed. Rules with argument conditions are tried first, in profile order, then the
//!   first unconditional rule; the first that matches decides.
//! - Like runc, a syscall numbered above every syscall the profile names for that architecture
//!   returns ENOSYS instead of the default action (unless the default is ALLOW or LOG), so that
//!   programs fall back from syscalls newer than the profile (clone3, fchmodat2, ...).

mod arch;
mod bpf;
mod codegen;
mod plan;
mod profile;
mod table;
#[cfg(test)]
mod tests;

use std::os::fd::{FromRawFd, OwnedFd};

pub use arch::syscall_number;
pub use oci_spec::runtime::Arch;
pub use profile::default_profile;

/// The kernel's limit on the length of a classic BPF program (`BPF_MAXINSNS`).
pub const MAX_INSTRUCTIONS: usize = libc::BPF_MAXINSNS as usize;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The profile is invalid or uses something this compiler does not support.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("linux.seccomp: the compiled filter has {len} instructions, more than the kernel's limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("linux.seccomp: this host's architecture ({arch}) is not supported by the seccomp compiler")]
    UnsupportedHost { arch: &'static str },
    #[error("internal error in the seccomp compiler: {reason}")]
    Internal { reason: &'static str },
    #[error("seccomp(SECCOMP_SET_MODE_FILTER, flags {flags:#x}) with a {len}-instruction filter")]
    Install {
        flags: u32,
        len: usize,
        #[source]
        source: std::io::Error,
    },
}

impl SeccompError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        SeccompError::Invalid { field: field.into(), reason: reason.into() }
    }
}

/// A compiled seccomp filter, ready for [`install`].
#[derive(Clone)]
pub struct Filter {
    program: Vec<libc::sock_filter>,
    /// `SECCOMP_FILTER_FLAG_*` bits passed to seccomp(2).
    flags: u32,
    /// Whether the profile uses SCMP_ACT_NOTIFY (so `install` returns a listener fd).
    wants_listener: bool,
}

impl Filter {
    /// The BPF program, one `sock_filter` per instruction.
    pub fn instructions(&self) -> &[libc::sock_filter] {
        &self.program
    }

    /// The `SECCOMP_FILTER_FLAG_*` bits [`install`] passes (including `NEW_LISTENER` when needed).
    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// True when the profile uses SCMP_ACT_NOTIFY, i.e. [`install`] returns a listener.
    pub fn wants_listener(&self) -> bool {
        self.wants_listener
    }
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("instructions", &self.program.len())
            .field("flags", &format_args!("{:#x}", self.flags))
            .field("wants_listener", &self.wants_listener)
            .finish()
    }
}

/// [`compile`], remembering the last few profiles of this process. A pod's monitor compiles
/// for its infra and app containers and for every exec (an exec probe each second), nearly
/// always the same RuntimeDefault profile: comparing it with a remembered one is far cheaper
/// than planning and generating the program again.
pub fn compile_cached(spec: &oci_spec::runtime::LinuxSeccomp) -> Result<Filter, SeccompError> {
    use std::sync::Mutex;
    const KEEP: usize = 4;
    static CACHE: Mutex<Vec<(oci_spec::runtime::LinuxSeccomp, Filter)>> = Mutex::new(Vec::new());
    if let Some((_, f)) = CACHE.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|(p, _)| p == spec) {
        return Ok(f.clone());
    }
    let filter = compile(spec)?;
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() == KEEP {
        cache.remove(0);
    }
    cache.push((spec.clone(), filter.clone()));
    Ok(filter)
}

/// Validates an OCI `linux.seccomp` profile and compiles it to a BPF program.
pub fn compile(spec: &oci_spec::runtime::LinuxSeccomp) -> Result<Filter, SeccompError> {
    let plan = plan::plan(spec)?;
    let program = codegen::generate(&plan)?;
    if program.len() > MAX_INSTRUCTIONS {
        return Err(SeccompError::TooLong { len: program.len(), max: MAX_INSTRUCTIONS });
    }
    tracing::debug!(instructions = program.len(), flags = plan.flags, "compiled seccomp profile");
    Ok(Filter { program, flags: plan.flags, wants_listener: plan.wants_listener })
}

/// Installs with seccomp(SECCOMP_SET_MODE_FILTER, flags, prog). Caller has set no_new_privs or
/// holds CAP_SYS_ADMIN. Returns the notify listener fd when the profile uses SCMP_ACT_NOTIFY.
///
/// Safe to call between fork and exec: it does not allocate or log.
pub fn install(filter: &Filter) -> Result<Option<OwnedFd>, SeccompError> {
    let len = filter.program.len();
    let err = |source| SeccompError::Install { flags: filter.flags, len, source };
    let Ok(prog_len) = u16::try_from(len) else {
        return Err(err(std::io::Error::from_raw_os_error(libc::EINVAL)));
    };
    let prog = libc::sock_fprog { len: prog_len, filter: filter.program.as_ptr().cast_mut() };
    // SAFETY: `prog` points at `len` valid instructions that outlive the call; the kernel copies
    // the program and never writes through the pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER as libc::c_ulong,
            libc::c_ulong::from(filter.flags),
            &prog as *const libc::sock_fprog,
        )
    };
    if rc < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    if !filter.wants_listener {
        return Ok(None);
    }
    let fd = libc::c_int::try_from(rc).map_err(|_| SeccompError::Internal { reason: "listener fd out of range" })?;
    // SAFETY: with SECCOMP_FILTER_FLAG_NEW_LISTENER the kernel returns a new descriptor we now own.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}
