//! Code generation: a validated [`Plan`] becomes a classic BPF program.
//!
//! Layout:
//!
//! ```text
//!   A = arch; one `jeq` per audit arch → its group; otherwise return bad-arch action
//!   group AUDIT_ARCH_X86_64: nr < X32 bit → x86_64 section; nr ≥ X32 bit → x32 section if
//!       listed, else kill (nr == -1, which ptrace uses to skip a syscall, goes to x86_64)
//!   section:  A = nr; [nr > highest named → ENOSYS]; binary search on nr down to leaves of
//!       ≤ LEAF checks (a `jeq` per syscall, or a range check per run of consecutive syscalls
//!       with one action); each leaf ends with its own `ret`s and argument-check blocks, so
//!       most jumps are short. The assembler adds trampolines for the ones that are not.
//! ```

use libc::sock_filter;

use super::arch::{Target, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT};
use super::bpf::{Asm, Label, NEXT};
use super::plan::{ArchRules, Cond, Plan, Rule};
use super::SeccompError;
use oci_spec::runtime::LinuxSeccompOperator as Op;

/// Offsets in `struct seccomp_data { int nr; u32 arch; u64 instruction_pointer; u64 args[6]; }`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

/// Checks (syscalls or ranges of them) per binary-search leaf.
const LEAF: usize = 8;

pub(super) fn generate(plan: &Plan) -> Result<Vec<sock_filter>, SeccompError> {
    let mut a = Asm::default();
    // Group the sections by audit arch (x86_64 and x32 share one), keeping the plan's order.
    let mut groups: Vec<(u32, Vec<&ArchRules>)> = Vec::new();
    for rules in &plan.arches {
        let audit = rules.target.audit_arch();
        match groups.iter_mut().find(|(g, _)| *g == audit) {
            Some((_, members)) => members.push(rules),
            None => groups.push((audit, vec![rules])),
        }
    }
    let labels: Vec<Label> = groups.iter().map(|_| a.label()).collect();
    a.ld(OFF_ARCH);
    for ((audit, _), &l) in groups.iter().zip(&labels) {
        a.jeq(*audit, l, NEXT);
    }
    a.ret(plan.bad_arch);
    for ((audit, members), l) in groups.iter().zip(labels) {
        a.bind(l);
        if *audit == AUDIT_ARCH_X86_64 {
            x86_64_group(&mut a, plan, members);
        } else {
            for rules in members {
                section(&mut a, plan, rules);
            }
        }
    }
    a.finish().map_err(|reason| SeccompError::Internal { reason })
}

/// AUDIT_ARCH_X86_64 carries both x86_64 and x32 syscalls; the X32 bit tells them apart.
fn x86_64_group(a: &mut Asm, plan: &Plan, members: &[&ArchRules]) {
    let find = |t: Target| members.iter().copied().find(|r| r.target == t);
    let (x64, x32) = (find(Target::X86_64), find(Target::X32));
    let (l64, l32) = (a.label(), a.label());
    a.ld(OFF_NR);
    match (x64, x32) {
        (Some(_), Some(_)) => a.jge(X32_SYSCALL_BIT, l32, l64),
        (Some(_), None) => {
            a.jge(X32_SYSCALL_BIT, NEXT, l64);
            a.jeq(u32::MAX, l64, NEXT);
            a.ret(plan.bad_arch);
        }
        (None, Some(_)) => {
            a.jge(X32_SYSCALL_BIT, l32, NEXT);
            a.ret(plan.bad_arch);
        }
        (None, None) => a.ret(plan.bad_arch),
    }
    a.bind(l64);
    if let Some(rules) = x64 {
        section(a, plan, rules);
    }
    a.bind(l32);
    if let Some(rules) = x32 {
        section(a, plan, rules);
    }
}

/// The rules of one architecture. Entered with any A; returns on every path.
fn section(a: &mut Asm, plan: &Plan, rules: &ArchRules) {
    a.ld(OFF_NR);
    if let (true, Some(max)) = (plan.enosys_stub, rules.max_nr) {
        let body = a.label();
        a.jgt(max, NEXT, body);
        a.ret(libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
        a.bind(body);
    }
    let entries: Vec<(u32, &[Rule])> = rules.syscalls.iter().map(|(nr, r)| (*nr, r.as_slice())).collect();
    if entries.is_empty() {
        a.ret(plan.default);
    } else {
        search(a, &entries, plan.default);
    }
}

/// Consecutive syscall numbers with the same action: one range check instead of a `jeq` each.
/// Profiles allow long runs of neighbouring syscalls (RuntimeDefault's x86_64 section shrinks
/// from about 350 entries to about 40), and every container's install pays the kernel's
/// conversion and JIT of each instruction.
struct Segment<'a> {
    lo: u32,
    hi: u32,
    rules: &'a [Rule],
}

fn segments<'a>(entries: &[(u32, &'a [Rule])]) -> Vec<Segment<'a>> {
    let plain = |rules: &[Rule]| match rules {
        [only] if only.conds.is_empty() => Some(only.action),
        _ => None,
    };
    let mut out: Vec<Segment<'a>> = Vec::new();
    for &(nr, rules) in entries {
        match out.last_mut() {
            Some(last)
                if last.hi.checked_add(1) == Some(nr)
                    && plain(last.rules).is_some()
                    && plain(last.rules) == plain(rules) =>
            {
                last.hi = nr
            }
            _ => out.push(Segment { lo: nr, hi: nr, rules }),
        }
    }
    out
}

/// Binary search on A (the syscall number) over `entries`, sorted by number.
fn search(a: &mut Asm, entries: &[(u32, &[Rule])], default: u32) {
    search_segments(a, &segments(entries), default);
}

fn search_segments(a: &mut Asm, segs: &[Segment<'_>], default: u32) {
    if segs.len() <= LEAF {
        return leaf(a, segs, default);
    }
    let mid = segs.len() / 2;
    let right = a.label();
    a.jge(segs[mid].lo, right, NEXT);
    search_segments(a, &segs[..mid], default);
    a.bind(right);
    search_segments(a, &segs[mid..], default);
}

/// A run of checks, in ascending order, followed by the `ret`s and argument blocks they jump
/// to. A single number is a `jeq`; a range is `A > hi → the next check`, then `A ≥ lo → hit`,
/// else miss (every later segment starts above `hi`).
fn leaf(a: &mut Asm, segs: &[Segment<'_>], default: u32) {
    let mut rets: Vec<(u32, Label)> = Vec::new();
    let mut ret_label = |a: &mut Asm, action: u32| match rets.iter().find(|(k, _)| *k == action) {
        Some(&(_, l)) => l,
        None => {
            let l = a.label();
            rets.push((action, l));
            l
        }
    };
    let mut blocks: Vec<(Label, &[Rule])> = Vec::new();
    for (i, seg) in segs.iter().enumerate() {
        let target = match seg.rules {
            [only] if only.conds.is_empty() => ret_label(a, only.action),
            _ => {
                let l = a.label();
                blocks.push((l, seg.rules));
                l
            }
        };
        let last = i + 1 == segs.len();
        if seg.lo == seg.hi {
            if last {
                let miss = ret_label(a, default);
                a.jeq(seg.lo, target, miss);
            } else {
                a.jeq(seg.lo, target, NEXT);
            }
        } else {
            let miss = ret_label(a, default);
            let next = if last { miss } else { a.label() };
            a.jgt(seg.hi, next, NEXT);
            a.jge(seg.lo, target, miss);
            if !last {
                a.bind(next);
            }
        }
    }
    for (action, l) in rets {
        a.bind(l);
        a.ret(action);
    }
    for (l, rules) in blocks {
        a.bind(l);
        block(a, rules, default);
    }
}

/// The rules of one syscall: the first whose conditions all hold returns its action.
fn block(a: &mut Asm, rules: &[Rule], default: u32) {
    for rule in rules {
        let fail = a.label();
        for cond in &rule.conds {
            condition(a, cond, fail);
        }
        a.ret(rule.action);
        a.bind(fail);
        if rule.conds.is_empty() {
            return; // later rules are unreachable; plan puts the unconditional rule last
        }
    }
    a.ret(default);
}

/// Falls through when `cond` holds, jumps to `fail` when it does not. BPF compares 32 bits at a
/// time, so the high words decide first and the low words only when the high words are equal.
fn condition(a: &mut Asm, cond: &Cond, fail: Label) {
    let (lo_off, hi_off) = arg_offsets(cond.index);
    let (vh, vl) = split(cond.value);
    let ok = a.label();
    match cond.op {
        Op::ScmpCmpEq => {
            a.ld(hi_off);
            a.jeq(vh, NEXT, fail);
            a.ld(lo_off);
            a.jeq(vl, ok, fail);
        }
        Op::ScmpCmpNe => {
            a.ld(hi_off);
            a.jeq(vh, NEXT, ok);
            a.ld(lo_off);
            a.jeq(vl, fail, ok);
        }
        Op::ScmpCmpGt | Op::ScmpCmpLe => {
            let (yes, no) = if cond.op == Op::ScmpCmpGt { (ok, fail) } else { (fail, ok) };
            a.ld(hi_off);
            a.jgt(vh, yes, NEXT);
            a.jeq(vh, NEXT, no);
            a.ld(lo_off);
            a.jgt(vl, yes, no);
        }
        Op::ScmpCmpGe | Op::ScmpCmpLt => {
            let (yes, no) = if cond.op == Op::ScmpCmpGe { (ok, fail) } else { (fail, ok) };
            a.ld(hi_off);
            a.jgt(vh, yes, NEXT);
            a.jeq(vh, NEXT, no);
            a.ld(lo_off);
            a.jge(vl, yes, no);
        }
        Op::ScmpCmpMaskedEq => {
            let (mh, ml) = (vh, vl);
            let (dh, dl) = split(cond.value_two);
            a.ld(hi_off);
            a.and(mh);
            a.jeq(dh, NEXT, fail);
            a.ld(lo_off);
            a.and(ml);
            a.jeq(dl, ok, fail);
        }
    }
    a.bind(ok);
}

/// (low word, high word) offsets of `args[index]` in seccomp_data, on this host's byte order.
fn arg_offsets(index: u8) -> (u32, u32) {
    let base = OFF_ARGS + 8 * u32::from(index);
    if cfg!(target_endian = "little") {
        (base, base + 4)
    } else {
        (base + 4, base)
    }
}

/// (high, low) 32-bit halves.
fn split(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32)
}
