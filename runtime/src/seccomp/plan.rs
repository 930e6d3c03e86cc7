//! Validation: an OCI `linux.seccomp` profile becomes a [`Plan`] (per-architecture rule lists
//! keyed by syscall number, actions as `SECCOMP_RET_*` values) or an error naming the field.

use std::collections::BTreeMap;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction as Action, LinuxSeccompFilterFlag as Flag, LinuxSeccompOperator as Op,
    LinuxSyscall,
};

use super::arch::Target;
use super::SeccompError;

/// What the code generator needs, already validated.
#[derive(Debug)]
pub(super) struct Plan {
    /// `SECCOMP_RET_*` value of `defaultAction`.
    pub(super) default: u32,
    /// What a syscall from an architecture outside the filter gets.
    pub(super) bad_arch: u32,
    /// The native architecture first, then the listed ones; no duplicates.
    pub(super) arches: Vec<ArchRules>,
    /// Whether numbers above every syscall the profile names return ENOSYS.
    pub(super) enosys_stub: bool,
    /// `SECCOMP_FILTER_FLAG_*` bits.
    pub(super) flags: u32,
    pub(super) wants_listener: bool,
}

#[derive(Debug)]
pub(super) struct ArchRules {
    pub(super) target: Target,
    /// Rules per syscall number in the order they are tried; lists are never empty and never
    /// end with a rule whose action is the default one.
    pub(super) syscalls: BTreeMap<u32, Vec<Rule>>,
    /// The highest syscall number the profile names for this architecture.
    pub(super) max_nr: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Rule {
    pub(super) action: u32,
    /// All must hold (AND); empty means unconditional.
    pub(super) conds: Vec<Cond>,
}

/// `args[index] op value` on the full 64-bit argument; for MASKED_EQ `(arg & value) == value_two`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Cond {
    pub(super) index: u8,
    pub(super) op: Op,
    pub(super) value: u64,
    pub(super) value_two: u64,
}

const SUPPORTED_ARCHES: &str = "SCMP_ARCH_X86_64, SCMP_ARCH_X86, SCMP_ARCH_X32, SCMP_ARCH_AARCH64";

pub(super) fn plan(spec: &LinuxSeccomp) -> Result<Plan, SeccompError> {
    if spec.default_action() == Action::ScmpActNotify {
        return Err(SeccompError::invalid(
            "linux.seccomp.defaultAction",
            "SCMP_ACT_NOTIFY cannot be the default action (every syscall, the runtime's own included, would wait for the agent)",
        ));
    }
    let default = action(spec.default_action(), spec.default_errno_ret(), "linux.seccomp.defaultErrnoRet")?;
    let targets = targets(spec)?;
    // Per architecture and syscall: conditional rules in profile order, and the first unconditional one.
    let mut conditional: Vec<BTreeMap<u32, Vec<Rule>>> = vec![BTreeMap::new(); targets.len()];
    let mut unconditional: Vec<BTreeMap<u32, Rule>> = vec![BTreeMap::new(); targets.len()];
    let mut max_nr: Vec<Option<u32>> = vec![None; targets.len()];
    let mut wants_listener = false;
    for (i, syscall) in spec.syscalls().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        let rule = rule(syscall, &field)?;
        wants_listener |= syscall.action() == Action::ScmpActNotify;
        for name in syscall.names() {
            let mut known = false;
            for (a, target) in targets.iter().enumerate() {
                let Some(nr) = target.lookup(name) else { continue };
                known = true;
                max_nr[a] = max_nr[a].max(Some(nr));
                if rule.conds.is_empty() {
                    unconditional[a].entry(nr).or_insert_with(|| rule.clone());
                } else {
                    conditional[a].entry(nr).or_default().push(rule.clone());
                }
            }
            if !known {
                tracing::debug!(syscall = %name, %field, "seccomp: unknown syscall name skipped");
            }
        }
    }
    let mut arches = Vec::with_capacity(targets.len());
    for (a, target) in targets.into_iter().enumerate() {
        let mut syscalls = std::mem::take(&mut conditional[a]);
        for (nr, rule) in std::mem::take(&mut unconditional[a]) {
            syscalls.entry(nr).or_default().push(rule);
        }
        syscalls.retain(|_, rules| {
            // Falling off the end of the list gives the default action anyway.
            while rules.last().is_some_and(|r| r.action == default) {
                rules.pop();
            }
            !rules.is_empty()
        });
        arches.push(ArchRules { target, syscalls, max_nr: max_nr[a] });
    }
    let permissive = matches!(spec.default_action(), Action::ScmpActAllow | Action::ScmpActLog);
    Ok(Plan {
        default,
        bad_arch: libc::SECCOMP_RET_KILL_THREAD,
        arches,
        enosys_stub: !permissive && default != libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        flags: flags(spec, wants_listener)?,
        wants_listener,
    })
}

/// The native architecture, then every listed one we support.
fn targets(spec: &LinuxSeccomp) -> Result<Vec<Target>, SeccompError> {
    let native = Target::native().ok_or(SeccompError::UnsupportedHost { arch: std::env::consts::ARCH })?;
    let mut out = vec![native];
    for (i, arch) in spec.architectures().iter().flatten().enumerate() {
        let target = Target::from_oci(*arch).ok_or_else(|| {
            SeccompError::invalid(
                format!("linux.seccomp.architectures[{i}]"),
                format!("{arch} is not supported (supported: {SUPPORTED_ARCHES})"),
            )
        })?;
        if !out.contains(&target) {
            out.push(target);
        }
    }
    Ok(out)
}

fn rule(syscall: &LinuxSyscall, field: &str) -> Result<Rule, SeccompError> {
    if syscall.names().is_empty() {
        return Err(SeccompError::invalid(format!("{field}.names"), "is empty; a rule must name at least one syscall"));
    }
    let action = action(syscall.action(), syscall.errno_ret(), &format!("{field}.errnoRet"))?;
    let mut conds = Vec::new();
    for (j, arg) in syscall.args().iter().flatten().enumerate() {
        let index = u8::try_from(arg.index()).ok().filter(|&i| i < 6).ok_or_else(|| {
            SeccompError::invalid(format!("{field}.args[{j}].index"), format!("{} is out of range (0-5)", arg.index()))
        })?;
        conds.push(Cond { index, op: arg.op(), value: arg.value(), value_two: arg.value_two().unwrap_or(0) });
    }
    Ok(Rule { action, conds })
}

/// The `SECCOMP_RET_*` value of an action; `errno` is its errnoRet, named `errno_field` in errors.
fn action(action: Action, errno: Option<u32>, errno_field: &str) -> Result<u32, SeccompError> {
    let takes_errno = matches!(action, Action::ScmpActErrno | Action::ScmpActTrace);
    let data = match errno {
        Some(e) if !takes_errno => {
            return Err(SeccompError::invalid(
                errno_field,
                format!("{e} is set but {action} takes no errno (only SCMP_ACT_ERRNO and SCMP_ACT_TRACE do)"),
            ))
        }
        Some(e) if e > libc::SECCOMP_RET_DATA => {
            return Err(SeccompError::invalid(errno_field, format!("{e} does not fit in SECCOMP_RET_DATA (0-65535)")))
        }
        Some(e) => e,
        None => libc::EPERM as u32,
    };
    Ok(match action {
        Action::ScmpActKill | Action::ScmpActKillThread => libc::SECCOMP_RET_KILL_THREAD,
        Action::ScmpActKillProcess => libc::SECCOMP_RET_KILL_PROCESS,
        Action::ScmpActTrap => libc::SECCOMP_RET_TRAP,
        Action::ScmpActErrno => libc::SECCOMP_RET_ERRNO | data,
        Action::ScmpActTrace => libc::SECCOMP_RET_TRACE | data,
        Action::ScmpActNotify => libc::SECCOMP_RET_USER_NOTIF,
        Action::ScmpActLog => libc::SECCOMP_RET_LOG,
        Action::ScmpActAllow => libc::SECCOMP_RET_ALLOW,
    })
}

fn flags(spec: &LinuxSeccomp, wants_listener: bool) -> Result<u32, SeccompError> {
    let mut bits: libc::c_ulong = 0;
    for (i, flag) in spec.flags().iter().flatten().enumerate() {
        bits |= match flag {
            Flag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            Flag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            Flag::SeccompFilterFlagSpecAllow => libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            Flag::SeccompFilterFlagWaitKillableRecv if wants_listener => libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
            Flag::SeccompFilterFlagWaitKillableRecv => {
                return Err(SeccompError::invalid(
                    format!("linux.seccomp.flags[{i}]"),
                    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV needs a SCMP_ACT_NOTIFY rule",
                ))
            }
        };
    }
    if wants_listener {
        bits |= libc::SECCOMP_FILTER_FLAG_NEW_LISTENER;
        if bits & libc::SECCOMP_FILTER_FLAG_TSYNC != 0 {
            // The kernel refuses TSYNC with NEW_LISTENER unless TSYNC failures report ESRCH.
            bits |= libc::SECCOMP_FILTER_FLAG_TSYNC_ESRCH;
        }
    }
    u32::try_from(bits).map_err(|_| SeccompError::Internal { reason: "filter flags above 32 bits" })
}
