//! Architecture dispatch: listed, native and foreign arches, and x32 numbers on x86_64.
#![cfg(target_arch = "x86_64")]

use serde_json::json;

use super::super::arch::{AUDIT_ARCH_AARCH64, AUDIT_ARCH_I386, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT};
use super::*;

const GETCWD_X86_64: u32 = 79;
const GETCWD_I386: u32 = 183;

/// getcwd → ERRNO(38), everything else allowed, for the given architectures.
fn getcwd_denied(arches: Value) -> Filter {
    build(json!({ "defaultAction": "SCMP_ACT_ALLOW", "architectures": arches,
        "syscalls": [{ "names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38 }] }))
}

#[test]
fn native_arch_is_always_filtered() {
    for arches in [json!(null), json!([]), json!(["SCMP_ARCH_X86"]), json!(["SCMP_ARCH_NATIVE"])] {
        let f = getcwd_denied(arches.clone());
        assert_eq!(eval(&f, AUDIT_ARCH_X86_64, GETCWD_X86_64, [0; 6]), errno(38), "{arches}");
        assert_eq!(eval(&f, AUDIT_ARCH_X86_64, 0, [0; 6]), ALLOW, "{arches}");
    }
}

#[test]
fn foreign_arch_is_killed() {
    let f = getcwd_denied(json!(["SCMP_ARCH_X86_64"]));
    for arch in [AUDIT_ARCH_I386, AUDIT_ARCH_AARCH64, 0, 0x1234_5678] {
        for nr in [0, GETCWD_I386, GETCWD_X86_64] {
            assert_eq!(eval(&f, arch, nr, [0; 6]), KILL_THREAD, "arch {arch:#x} nr {nr}");
        }
    }
}

#[test]
fn listed_arch_uses_its_own_numbers() {
    let f = getcwd_denied(json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_AARCH64"]));
    assert_eq!(eval(&f, AUDIT_ARCH_I386, GETCWD_I386, [0; 6]), errno(38));
    // 79 is settimeofday on i386, 17 getcwd on aarch64.
    assert_eq!(eval(&f, AUDIT_ARCH_I386, GETCWD_X86_64, [0; 6]), ALLOW);
    assert_eq!(eval(&f, AUDIT_ARCH_AARCH64, 17, [0; 6]), errno(38));
    assert_eq!(eval(&f, AUDIT_ARCH_AARCH64, GETCWD_X86_64, [0; 6]), ALLOW);
    assert_eq!(eval(&f, AUDIT_ARCH_X86_64, GETCWD_X86_64, [0; 6]), errno(38));
}

#[test]
fn x32_numbers_cannot_reach_x86_64_rules() {
    // x86_64 allows getcwd only; an x32 getcwd must not be let through by that rule.
    let f = build(json!({ "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{ "names": ["getcwd", "read"], "action": "SCMP_ACT_ALLOW" }] }));
    assert_eq!(eval(&f, AUDIT_ARCH_X86_64, GETCWD_X86_64, [0; 6]), ALLOW);
    for nr in [X32_SYSCALL_BIT | GETCWD_X86_64, X32_SYSCALL_BIT, 0x8000_0000 | GETCWD_X86_64, 0xffff_fffe] {
        assert_eq!(eval(&f, AUDIT_ARCH_X86_64, nr, [0; 6]), KILL_THREAD, "nr {nr:#x}");
    }
    // nr -1 (a tracer skipping the syscall) is not x32: it gets x86_64 treatment.
    assert_eq!(eval(&f, AUDIT_ARCH_X86_64, u32::MAX, [0; 6]), errno(libc::ENOSYS));
    let f = getcwd_denied(json!([]));
    assert_eq!(eval(&f, AUDIT_ARCH_X86_64, u32::MAX, [0; 6]), ALLOW);
}

#[test]
fn listed_x32_has_its_own_rules() {
    let f = build(json!({ "defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X32"],
        "syscalls": [
            { "names": ["getcwd"], "action": "SCMP_ACT_ALLOW" },
            { "names": ["rt_sigaction"], "action": "SCMP_ACT_LOG" },
        ] }));
    let x32 = |nr: u32| eval(&f, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | nr, [0; 6]);
    assert_eq!(x32(GETCWD_X86_64), ALLOW);
    assert_eq!(x32(512), libc::SECCOMP_RET_LOG, "x32 rt_sigaction is 512");
    assert_eq!(x32(13), errno(libc::EPERM), "13 is rt_sigaction on x86_64 but not on x32");
    assert_eq!(x32(0), errno(libc::EPERM));
    assert_eq!(x32(0x3fff_ffff), errno(libc::ENOSYS), "above every x32 syscall the profile names");
    assert_eq!(eval(&f, AUDIT_ARCH_X86_64, 13, [0; 6]), libc::SECCOMP_RET_LOG);
    assert_eq!(eval(&f, AUDIT_ARCH_X86_64, GETCWD_X86_64, [0; 6]), ALLOW);
    assert_eq!(eval(&f, AUDIT_ARCH_I386, GETCWD_I386, [0; 6]), KILL_THREAD, "i386 not listed");
}
