//! Tests of the seccomp compiler: programs run in a classic-BPF interpreter (no root needed),
//! plus installs into forked children with no_new_privs.

mod actions;
mod arch;
mod args;
mod cache;
mod install;
mod interp;
mod profile;
mod validation;

use oci_spec::runtime::LinuxSeccomp;
use serde_json::Value;

use super::arch::Target;
use super::{compile, Filter};
use interp::Data;

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const KILL_THREAD: u32 = libc::SECCOMP_RET_KILL_THREAD;

fn errno(e: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | e as u32
}

fn parse(profile: Value) -> LinuxSeccomp {
    serde_json::from_value(profile).expect("valid linux.seccomp JSON")
}

fn build(profile: Value) -> Filter {
    compile(&parse(profile)).expect("profile compiles")
}

fn error(profile: Value) -> String {
    compile(&parse(profile)).expect_err("profile must be rejected").to_string()
}

/// Checks the program like the kernel's loader would, then runs it for syscall `nr` of the
/// architecture whose audit value is `arch`.
fn eval(f: &Filter, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    interp::check(f.instructions());
    interp::run(f.instructions(), &Data { nr, arch, instruction_pointer: 0x7fff_1234_5678, args })
}

fn native() -> Target {
    Target::native().expect("tests run on a supported host")
}

/// Runs the filter for the host architecture's syscall `name`.
fn call(f: &Filter, name: &str, args: [u64; 6]) -> u32 {
    let t = native();
    let nr = t.lookup(name).unwrap_or_else(|| panic!("{name} is not a syscall on {t:?}"));
    eval(f, t.audit_arch(), nr, args)
}

fn call0(f: &Filter, name: &str) -> u32 {
    call(f, name, [0; 6])
}

#[test]
fn tables_are_sorted_and_unique() {
    for t in [Target::X86_64, Target::I386, Target::X32, Target::Aarch64] {
        let table = t.table();
        assert!(table.len() > 250, "{t:?} table has only {} entries", table.len());
        for w in table.windows(2) {
            assert!(w[0].0 < w[1].0, "{t:?}: {} before {}", w[0].0, w[1].0);
        }
    }
}

#[test]
fn syscall_numbers() {
    use super::{syscall_number, Arch};
    assert_eq!(syscall_number(Arch::ScmpArchX86_64, "read"), Some(0));
    assert_eq!(syscall_number(Arch::ScmpArchX86_64, "getcwd"), Some(79));
    assert_eq!(syscall_number(Arch::ScmpArchX86_64, "clone3"), Some(435));
    assert_eq!(syscall_number(Arch::ScmpArchX86, "getcwd"), Some(183));
    assert_eq!(syscall_number(Arch::ScmpArchX86, "socketcall"), Some(102));
    assert_eq!(syscall_number(Arch::ScmpArchX32, "getcwd"), Some(0x4000_0000 | 79));
    assert_eq!(syscall_number(Arch::ScmpArchX32, "rt_sigaction"), Some(0x4000_0000 | 512));
    assert_eq!(syscall_number(Arch::ScmpArchAarch64, "getcwd"), Some(17));
    assert_eq!(syscall_number(Arch::ScmpArchAarch64, "openat"), Some(56));
    assert_eq!(syscall_number(Arch::ScmpArchAarch64, "open"), None);
    assert_eq!(syscall_number(Arch::ScmpArchX86_64, "no_such_syscall"), None);
    assert_eq!(syscall_number(Arch::ScmpArchMips, "read"), None);
    assert_eq!(syscall_number(Arch::ScmpArchNative, "getcwd"), native().lookup("getcwd"));
}

/// The assembler routes conditional jumps beyond 255 instructions through `ja` trampolines.
#[test]
fn assembler_relaxes_long_jumps() {
    use super::bpf::{Asm, NEXT};
    let mut a = Asm::default();
    let (far_a, far_b, near) = (a.label(), a.label(), a.label());
    a.ld(0);
    a.jeq(7, far_a, NEXT); // jt far
    a.jgt(20, NEXT, far_b); // jf far
    a.jge(30, far_a, near); // jt far, jf near
    let filler = |a: &mut Asm, n| (0..n).for_each(|_| a.ret(0xdead));
    filler(&mut a, 100);
    a.bind(near);
    a.ret(0xc);
    filler(&mut a, 300);
    a.bind(far_a);
    a.ret(0xa);
    filler(&mut a, 300);
    a.bind(far_b);
    a.ret(0xb);
    let prog = a.finish().unwrap();
    interp::check(&prog);
    assert_eq!(prog.len(), 1 + 2 + 2 + 2 + 100 + 1 + 300 + 1 + 300 + 1, "one trampoline per far target");
    let run = |nr| interp::run(&prog, &Data { nr, ..Data::default() });
    assert_eq!(run(7), 0xa);
    assert_eq!(run(5), 0xb);
    assert_eq!(run(25), 0xc);
    assert_eq!(run(40), 0xa);
}
