//! Invalid profiles are rejected with the offending field and the reason.

use serde_json::json;

use super::*;

#[test]
fn argument_index_out_of_range() {
    let msg = error(json!({ "defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        { "names": ["read"], "action": "SCMP_ACT_ALLOW" },
        { "names": ["getcwd"], "action": "SCMP_ACT_ALLOW", "args": [{ "index": 7, "value": 0, "op": "SCMP_CMP_EQ" }] },
    ] }));
    assert_eq!(msg, "linux.seccomp.syscalls[1].args[0].index: 7 is out of range (0-5)");
}

#[test]
fn empty_names() {
    let msg =
        error(json!({ "defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{ "names": [], "action": "SCMP_ACT_ALLOW" }] }));
    assert_eq!(msg, "linux.seccomp.syscalls[0].names: is empty; a rule must name at least one syscall");
}

#[test]
fn errno_only_with_errno_actions() {
    let msg = error(json!({ "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{ "names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1 }] }));
    assert_eq!(
        msg,
        "linux.seccomp.syscalls[0].errnoRet: 1 is set but SCMP_ACT_ALLOW takes no errno \
         (only SCMP_ACT_ERRNO and SCMP_ACT_TRACE do)"
    );
    let msg = error(json!({ "defaultAction": "SCMP_ACT_KILL", "defaultErrnoRet": 1 }));
    assert!(msg.starts_with("linux.seccomp.defaultErrnoRet: 1 is set but SCMP_ACT_KILL takes no errno"), "{msg}");
}

#[test]
fn errno_must_fit_in_16_bits() {
    let msg = error(json!({ "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{ "names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000 }] }));
    assert_eq!(msg, "linux.seccomp.syscalls[0].errnoRet: 70000 does not fit in SECCOMP_RET_DATA (0-65535)");
    let msg = error(json!({ "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 65536 }));
    assert_eq!(msg, "linux.seccomp.defaultErrnoRet: 65536 does not fit in SECCOMP_RET_DATA (0-65535)");
}

#[test]
fn unsupported_architecture() {
    let msg =
        error(json!({ "defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_MIPS"] }));
    assert_eq!(
        msg,
        "linux.seccomp.architectures[1]: SCMP_ARCH_MIPS is not supported \
         (supported: SCMP_ARCH_X86_64, SCMP_ARCH_X86, SCMP_ARCH_X32, SCMP_ARCH_AARCH64)"
    );
}

#[test]
fn notify_cannot_be_the_default() {
    let msg = error(json!({ "defaultAction": "SCMP_ACT_NOTIFY" }));
    assert!(msg.starts_with("linux.seccomp.defaultAction: SCMP_ACT_NOTIFY cannot be the default action"), "{msg}");
}

#[test]
fn wait_killable_recv_needs_a_listener() {
    let msg = error(json!({ "defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"] }));
    assert_eq!(msg, "linux.seccomp.flags[0]: SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV needs a SCMP_ACT_NOTIFY rule");
}

/// Unknown action, operator, architecture and flag names never reach `compile`: oci-spec's
/// types reject them when config.json is parsed.
#[test]
fn unknown_names_are_rejected_when_parsing() {
    let bad = [
        json!({ "defaultAction": "SCMP_ACT_MAYBE" }),
        json!({ "defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"] }),
        json!({ "defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_FOO"] }),
        json!({ "defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{ "names": ["read"], "action": "SCMP_ACT_ALLOW",
            "args": [{ "index": 0, "value": 0, "op": "SCMP_CMP_ABOUT" }] }] }),
    ];
    for profile in bad {
        assert!(serde_json::from_value::<LinuxSeccomp>(profile.clone()).is_err(), "{profile}");
    }
}
