//! Actions, errno values, flags, rule merging and the ENOSYS stub.

use serde_json::json;

use super::*;

#[test]
fn default_action_applies_to_unlisted_syscalls() {
    let f = build(json!({ "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 13,
        "syscalls": [{ "names": ["getcwd"], "action": "SCMP_ACT_ALLOW" }] }));
    assert_eq!(call0(&f, "getcwd"), ALLOW);
    assert_eq!(call0(&f, "read"), errno(13));
    assert_eq!(call0(&f, "write"), errno(13));
    let f = build(json!({ "defaultAction": "SCMP_ACT_KILL_PROCESS" }));
    assert_eq!(call0(&f, "read"), libc::SECCOMP_RET_KILL_PROCESS);
    let f = build(json!({ "defaultAction": "SCMP_ACT_ERRNO" }));
    assert_eq!(call0(&f, "read"), errno(libc::EPERM), "defaultErrnoRet defaults to EPERM");
}

#[test]
fn each_action_maps_to_its_return_value() {
    let cases = [
        ("SCMP_ACT_KILL", KILL_THREAD),
        ("SCMP_ACT_KILL_THREAD", KILL_THREAD),
        ("SCMP_ACT_KILL_PROCESS", libc::SECCOMP_RET_KILL_PROCESS),
        ("SCMP_ACT_TRAP", libc::SECCOMP_RET_TRAP),
        ("SCMP_ACT_ERRNO", errno(libc::EPERM)),
        ("SCMP_ACT_TRACE", libc::SECCOMP_RET_TRACE | libc::EPERM as u32),
        ("SCMP_ACT_LOG", libc::SECCOMP_RET_LOG),
        ("SCMP_ACT_NOTIFY", libc::SECCOMP_RET_USER_NOTIF),
    ];
    for (action, want) in cases {
        let f = build(json!({ "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{ "names": ["getcwd", "uname"], "action": action }] }));
        assert_eq!(call0(&f, "getcwd"), want, "{action}");
        assert_eq!(call0(&f, "uname"), want, "{action}");
        assert_eq!(call0(&f, "read"), ALLOW, "{action}");
        let notify = action == "SCMP_ACT_NOTIFY";
        assert_eq!(f.wants_listener(), notify, "{action}");
        assert_eq!(f.flags() & libc::SECCOMP_FILTER_FLAG_NEW_LISTENER as u32 != 0, notify, "{action}");
    }
}

#[test]
fn errno_values_per_rule() {
    let f = build(json!({ "defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        { "names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38 },
        { "names": ["uname"], "action": "SCMP_ACT_ERRNO" },
        { "names": ["getpid"], "action": "SCMP_ACT_TRACE", "errnoRet": 4242 },
        { "names": ["gettid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 0 },
    ] }));
    assert_eq!(call0(&f, "getcwd"), errno(38));
    assert_eq!(call0(&f, "uname"), errno(libc::EPERM), "rule without errnoRet: EPERM");
    assert_eq!(call0(&f, "getpid"), libc::SECCOMP_RET_TRACE | 4242);
    assert_eq!(call0(&f, "gettid"), errno(0));
    // defaultErrnoRet belongs to the default action only (OCI runtime spec).
    let f = build(json!({ "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 95,
        "syscalls": [{ "names": ["getcwd"], "action": "SCMP_ACT_ERRNO" }] }));
    assert_eq!(call0(&f, "getcwd"), errno(libc::EPERM));
    assert_eq!(call0(&f, "uname"), errno(95));
}

#[test]
fn flags_by_name() {
    let f = build(json!({ "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"] }));
    let want = libc::SECCOMP_FILTER_FLAG_TSYNC | libc::SECCOMP_FILTER_FLAG_LOG | libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW;
    assert_eq!(f.flags(), want as u32);
    assert!(!f.wants_listener());
    let f = build(json!({ "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
        "syscalls": [{ "names": ["getcwd"], "action": "SCMP_ACT_NOTIFY" }] }));
    let want = libc::SECCOMP_FILTER_FLAG_TSYNC
        | libc::SECCOMP_FILTER_FLAG_TSYNC_ESRCH
        | libc::SECCOMP_FILTER_FLAG_NEW_LISTENER
        | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
    assert_eq!(f.flags(), want as u32);
    assert!(f.wants_listener());
}

#[test]
fn rules_with_the_default_action_are_omitted() {
    let plain = build(json!({ "defaultAction": "SCMP_ACT_ALLOW" }));
    let redundant = build(json!({ "defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        { "names": ["getcwd", "uname"], "action": "SCMP_ACT_ALLOW" },
        { "names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{ "index": 0, "value": 3, "op": "SCMP_CMP_EQ" }] },
    ] }));
    assert_eq!(plain.instructions().len(), redundant.instructions().len());
    // ...but a different errno is a different action.
    let f = build(json!({ "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{ "names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 2 }] }));
    assert_eq!(call0(&f, "getcwd"), errno(2));
}

#[test]
fn unknown_syscall_names_are_skipped() {
    let f = build(json!({ "defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        { "names": ["no_such_syscall", "getcwd", "another_future_one"], "action": "SCMP_ACT_ALLOW" },
        { "names": ["only_unknown"], "action": "SCMP_ACT_ALLOW" },
    ] }));
    assert_eq!(call0(&f, "getcwd"), ALLOW);
    assert_eq!(call0(&f, "read"), errno(libc::EPERM));
}

#[test]
fn syscalls_above_the_profile_get_enosys() {
    let f = build(json!({ "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{ "names": ["read", "getcwd"], "action": "SCMP_ACT_ALLOW" }] }));
    let (t, getcwd) = (native(), native().lookup("getcwd").unwrap());
    assert_eq!(eval(&f, t.audit_arch(), getcwd, [0; 6]), ALLOW);
    assert_eq!(eval(&f, t.audit_arch(), getcwd - 1, [0; 6]), errno(libc::EPERM));
    assert_eq!(eval(&f, t.audit_arch(), getcwd + 1, [0; 6]), errno(libc::ENOSYS));
    assert_eq!(eval(&f, t.audit_arch(), 5000, [0; 6]), errno(libc::ENOSYS));
    // Not with a permissive default: new syscalls stay allowed.
    let f = build(json!({ "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{ "names": ["getcwd"], "action": "SCMP_ACT_ERRNO" }] }));
    assert_eq!(eval(&f, t.audit_arch(), 5000, [0; 6]), ALLOW);
    // Nor without any known syscall to measure against.
    let f = build(json!({ "defaultAction": "SCMP_ACT_KILL" }));
    assert_eq!(eval(&f, t.audit_arch(), 5000, [0; 6]), KILL_THREAD);
}

/// 450+ names across x86_64 and i386: the program is far longer than a u8 jump can cross.
#[test]
fn large_profile_keeps_every_jump_in_range() {
    let (x64, i386) = (Target::X86_64.table(), Target::I386.table());
    let mut names: Vec<&str> = x64.iter().chain(i386).map(|(n, _)| *n).collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() > 400);
    // Deterministic expectation for name i: allow, errno(i), or allow only when arg1 == i.
    let expect = |i: usize, arg1: u64| match i % 3 {
        0 => ALLOW,
        1 => errno(i as i32),
        _ if arg1 == i as u64 => ALLOW,
        _ => libc::SECCOMP_RET_KILL_PROCESS,
    };
    let rules: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| match i % 3 {
            0 => json!({ "names": [n], "action": "SCMP_ACT_ALLOW" }),
            1 => json!({ "names": [n], "action": "SCMP_ACT_ERRNO", "errnoRet": i }),
            _ => json!({ "names": [n], "action": "SCMP_ACT_ALLOW",
                         "args": [{ "index": 1, "value": i, "op": "SCMP_CMP_EQ" }] }),
        })
        .collect();
    let f = build(json!({ "defaultAction": "SCMP_ACT_KILL_PROCESS",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"], "syscalls": rules }));
    let len = f.instructions().len();
    assert!(len > 1000 && len <= super::super::MAX_INSTRUCTIONS, "{len} instructions");
    for t in [Target::X86_64, Target::I386] {
        for (i, name) in names.iter().enumerate() {
            let Some(nr) = t.lookup(name) else { continue };
            for arg1 in [i as u64, i as u64 + 1, 0] {
                assert_eq!(eval(&f, t.audit_arch(), nr, [0, arg1, 0, 0, 0, 0]), expect(i, arg1), "{t:?} {name}");
            }
        }
    }
}

#[test]
fn program_over_the_kernel_limit_is_an_error() {
    let names: Vec<&str> = Target::X86_64.table().iter().map(|(n, _)| *n).collect();
    let args: Vec<Value> = (0..6).map(|i| json!({ "index": i, "value": i, "op": "SCMP_CMP_EQ" })).collect();
    let msg = error(json!({ "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{ "names": names, "action": "SCMP_ACT_ALLOW", "args": args }] }));
    assert!(msg.contains("more than the kernel's limit of 4096"), "{msg}");
}

/// Runs of consecutive syscalls with one action become range checks: every number in, around
/// and between the runs still gets its own verdict (checked exhaustively, in leaves and across
/// the binary search), and the program is much shorter than one `jeq` per syscall.
#[test]
fn consecutive_syscalls_share_a_range_check() {
    let t = Target::X86_64;
    let name = |nr: u32| {
        t.table().iter().find(|(_, n)| *n == nr).map(|(s, _)| *s).unwrap_or_else(|| panic!("no x86_64 syscall {nr}"))
    };
    // nr → verdict: runs of ALLOW broken by an errno run, single numbers, a conditional one
    // (arg0 == 7), and gaps that fall to the default.
    let allow: Vec<u32> = (0..=40).chain([42]).chain(44..=60).chain(62..=100).chain([150]).chain(200..=260).collect();
    let denied: Vec<u32> = (101..=104).chain([149]).collect();
    let conditional = 61u32;
    let rules = json!([
        { "names": allow.iter().map(|n| name(*n)).collect::<Vec<_>>(), "action": "SCMP_ACT_ALLOW" },
        { "names": denied.iter().map(|n| name(*n)).collect::<Vec<_>>(), "action": "SCMP_ACT_ERRNO", "errnoRet": 38 },
        { "names": [name(conditional)], "action": "SCMP_ACT_ALLOW", "args": [{ "index": 0, "value": 7, "op": "SCMP_CMP_EQ" }] },
    ]);
    let f = build(
        json!({ "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "architectures": ["SCMP_ARCH_X86_64"], "syscalls": rules }),
    );
    let listed = allow.len() + denied.len() + 1;
    assert!(f.instructions().len() < listed / 2, "{} instructions for {listed} syscalls", f.instructions().len());
    for nr in 0..=300u32 {
        let want = if allow.contains(&nr) {
            ALLOW
        } else if denied.contains(&nr) {
            errno(38)
        } else if nr > 260 {
            errno(libc::ENOSYS)
        } else {
            errno(1)
        };
        if nr == conditional {
            assert_eq!(eval(&f, t.audit_arch(), nr, [7, 0, 0, 0, 0, 0]), ALLOW, "nr {nr} arg 7");
            assert_eq!(eval(&f, t.audit_arch(), nr, [8, 0, 0, 0, 0, 0]), errno(1), "nr {nr} arg 8");
        } else {
            assert_eq!(eval(&f, t.audit_arch(), nr, [0; 6]), want, "nr {nr}");
        }
    }
}
