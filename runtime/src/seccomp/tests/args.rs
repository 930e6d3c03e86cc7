//! Argument conditions: every operator on 64-bit values, AND within a rule, OR across rules.

use serde_json::json;

use super::*;

/// Values around the 32-bit boundary, where comparing only one word would go wrong.
const VALUES: &[u64] = &[
    0,
    1,
    5,
    0xffff_fffe,
    0xffff_ffff,
    0x1_0000_0000,
    0x1_0000_0004,
    0x1_0000_0005,
    0x1_0000_0006,
    0x2_0000_0005,
    0x8000_0000_0000_0005,
    0xffff_ffff_0000_0005,
    u64::MAX,
];

fn holds(op: &str, arg: u64, value: u64) -> bool {
    match op {
        "SCMP_CMP_NE" => arg != value,
        "SCMP_CMP_LT" => arg < value,
        "SCMP_CMP_LE" => arg <= value,
        "SCMP_CMP_EQ" => arg == value,
        "SCMP_CMP_GE" => arg >= value,
        "SCMP_CMP_GT" => arg > value,
        _ => unreachable!(),
    }
}

/// Allows getcwd only when the conditions hold; everything else gets ERRNO(EPERM).
fn guarded(args: Value) -> Filter {
    build(json!({ "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{ "names": ["getcwd"], "action": "SCMP_ACT_ALLOW", "args": args }] }))
}

fn verdict(ok: bool) -> u32 {
    if ok {
        ALLOW
    } else {
        errno(libc::EPERM)
    }
}

#[test]
fn comparison_operators_use_both_words() {
    for op in ["SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT"] {
        for &value in VALUES {
            let f = guarded(json!([{ "index": 2, "value": value, "op": op }]));
            for &arg in VALUES {
                // Noise in the other arguments must not matter.
                let args = [u64::MAX, 0x1234_5678_9abc_def0, arg, 0, 7, value];
                let got = call(&f, "getcwd", args);
                assert_eq!(got, verdict(holds(op, arg, value)), "{arg:#x} {op} {value:#x}");
            }
        }
    }
}

#[test]
fn masked_equality() {
    let cases: &[(u64, u64)] = &[
        (0xff, 0x05),
        (0x7e02_0000, 0),
        (0x1_0000_00ff, 0x1_0000_0005),
        (0xffff_ffff_0000_0000, 0x1_0000_0000),
        (0xffff_ffff_ffff_ffff, 0x1_0000_0005),
        (0x0f, 0x10), // datum outside the mask: never matches
    ];
    for &(mask, datum) in cases {
        let f = guarded(json!([{ "index": 0, "value": mask, "valueTwo": datum, "op": "SCMP_CMP_MASKED_EQ" }]));
        for &arg in VALUES.iter().chain(&[0x7e02_0000, 0x1_0000_0105, 0x1_ffff_ff05, 0x0300_0000_0000_0005]) {
            let got = call(&f, "getcwd", [arg, 0, 0, 0, 0, 0]);
            assert_eq!(got, verdict(arg & mask == datum), "{arg:#x} & {mask:#x} == {datum:#x}");
        }
    }
}

#[test]
fn conditions_in_one_rule_are_anded() {
    let f = guarded(json!([
        { "index": 0, "value": 1, "op": "SCMP_CMP_EQ" },
        { "index": 1, "value": 0x1_0000_0000u64, "op": "SCMP_CMP_GT" },
    ]));
    assert_eq!(call(&f, "getcwd", [1, 0x1_0000_0001, 0, 0, 0, 0]), ALLOW);
    assert_eq!(call(&f, "getcwd", [1, 0x1_0000_0000, 0, 0, 0, 0]), errno(libc::EPERM));
    assert_eq!(call(&f, "getcwd", [2, 0x1_0000_0001, 0, 0, 0, 0]), errno(libc::EPERM));
    assert_eq!(call(&f, "getcwd", [2, 0, 0, 0, 0, 0]), errno(libc::EPERM));
    // Two conditions on the same argument make a range.
    let f = guarded(json!([
        { "index": 5, "value": 10, "op": "SCMP_CMP_GE" },
        { "index": 5, "value": 20, "op": "SCMP_CMP_LE" },
    ]));
    for a5 in 0..30u64 {
        assert_eq!(call(&f, "getcwd", [0, 0, 0, 0, 0, a5]), verdict((10..=20).contains(&a5)), "arg5 = {a5}");
    }
}

#[test]
fn rules_for_one_syscall_are_ored() {
    let f = build(json!({ "defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        { "names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{ "index": 0, "value": 0, "op": "SCMP_CMP_EQ" }] },
        { "names": ["personality"], "action": "SCMP_ACT_LOG", "args": [{ "index": 0, "value": 8, "op": "SCMP_CMP_EQ" }] },
        { "names": ["getcwd", "personality"], "action": "SCMP_ACT_ALLOW",
          "args": [{ "index": 0, "value": 0x1_0000_0000u64, "op": "SCMP_CMP_EQ" }] },
    ] }));
    assert_eq!(call(&f, "personality", [0; 6]), ALLOW);
    assert_eq!(call(&f, "personality", [8, 0, 0, 0, 0, 0]), libc::SECCOMP_RET_LOG);
    assert_eq!(call(&f, "personality", [0x1_0000_0000, 0, 0, 0, 0, 0]), ALLOW);
    assert_eq!(call(&f, "personality", [9, 0, 0, 0, 0, 0]), errno(libc::EPERM));
    assert_eq!(call(&f, "getcwd", [0x1_0000_0000, 0, 0, 0, 0, 0]), ALLOW);
    assert_eq!(call(&f, "getcwd", [0; 6]), errno(libc::EPERM));
}

#[test]
fn conditional_rules_take_precedence_over_unconditional_ones() {
    for order in [false, true] {
        let uncond = json!({ "names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5 });
        let cond = json!({ "names": ["getcwd"], "action": "SCMP_ACT_ALLOW",
                           "args": [{ "index": 0, "value": 7, "op": "SCMP_CMP_EQ" }] });
        let rules = if order { json!([uncond, cond]) } else { json!([cond, uncond]) };
        let f = build(json!({ "defaultAction": "SCMP_ACT_KILL", "syscalls": rules }));
        assert_eq!(call(&f, "getcwd", [7, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(call(&f, "getcwd", [8, 0, 0, 0, 0, 0]), errno(5));
    }
}
