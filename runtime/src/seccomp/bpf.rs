//! A small classic-BPF assembler: symbolic forward labels, and branch relaxation that routes a
//! conditional jump farther than 255 instructions (its offsets are u8) through `ja` trampolines.

use libc::sock_filter;

/// A position in the program, bound once with [`Asm::bind`]; jumps may only go forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Label(usize);

/// Where a conditional jump goes: the next instruction, or a label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum To {
    Next,
    At(Label),
}

/// Fall through to the next instruction.
pub(super) const NEXT: To = To::Next;

impl From<Label> for To {
    fn from(l: Label) -> To {
        To::At(l)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmp {
    Eq,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug)]
enum Ins {
    /// A = 32-bit word at offset k of `seccomp_data`.
    Ld(u32),
    /// A &= k.
    And(u32),
    /// if (A cmp k) goto jt else goto jf.
    Jmp { cmp: Cmp, k: u32, jt: Label, jf: Label },
    /// return k.
    Ret(u32),
    /// Pseudo-instruction: binds a label here (no code).
    Bind(Label),
}

/// Builds a program; [`Asm::finish`] resolves labels into offsets.
#[derive(Default)]
pub(super) struct Asm {
    ins: Vec<Ins>,
    labels: usize,
}

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const ALU_AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const JMP_JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

impl Cmp {
    fn code(self) -> u16 {
        let op = match self {
            Cmp::Eq => libc::BPF_JEQ,
            Cmp::Gt => libc::BPF_JGT,
            Cmp::Ge => libc::BPF_JGE,
        };
        (libc::BPF_JMP | op | libc::BPF_K) as u16
    }
}

impl Asm {
    pub(super) fn label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels - 1)
    }

    pub(super) fn bind(&mut self, l: Label) {
        self.ins.push(Ins::Bind(l));
    }

    pub(super) fn ld(&mut self, offset: u32) {
        self.ins.push(Ins::Ld(offset));
    }

    pub(super) fn and(&mut self, k: u32) {
        self.ins.push(Ins::And(k));
    }

    pub(super) fn ret(&mut self, k: u32) {
        self.ins.push(Ins::Ret(k));
    }

    /// if A == k goto jt else goto jf.
    pub(super) fn jeq(&mut self, k: u32, jt: impl Into<To>, jf: impl Into<To>) {
        self.jump(Cmp::Eq, k, jt.into(), jf.into());
    }

    /// if A > k goto jt else goto jf (unsigned).
    pub(super) fn jgt(&mut self, k: u32, jt: impl Into<To>, jf: impl Into<To>) {
        self.jump(Cmp::Gt, k, jt.into(), jf.into());
    }

    /// if A >= k goto jt else goto jf (unsigned).
    pub(super) fn jge(&mut self, k: u32, jt: impl Into<To>, jf: impl Into<To>) {
        self.jump(Cmp::Ge, k, jt.into(), jf.into());
    }

    fn jump(&mut self, cmp: Cmp, k: u32, jt: To, jf: To) {
        let next = (jt == NEXT || jf == NEXT).then(|| self.label());
        let resolve = |t: To| match t {
            To::At(l) => l,
            To::Next => next.expect("allocated above"),
        };
        self.ins.push(Ins::Jmp { cmp, k, jt: resolve(jt), jf: resolve(jf) });
        if let Some(n) = next {
            self.bind(n);
        }
    }

    /// Resolves labels and emits the program. Fails only on a bug in the code generator
    /// (an unbound or backward label).
    pub(super) fn finish(self) -> Result<Vec<sock_filter>, &'static str> {
        // tramp[i] = (jt via trampoline, jf via trampoline) for the jump at ins[i].
        let mut tramp = vec![(false, false); self.ins.len()];
        let (pos, addr) = loop {
            let (pos, addr) = self.layout(&tramp)?;
            let mut changed = false;
            for (i, ins) in self.ins.iter().enumerate() {
                let Ins::Jmp { jt, jf, .. } = *ins else { continue };
                let base = pos[i] + 1;
                let (far_t, far_f) = &mut tramp[i];
                for (target, far) in [(jt, far_t), (jf, far_f)] {
                    let to = addr[target.0];
                    if to < base {
                        return Err("backward jump");
                    }
                    if !*far && to - base > usize::from(u8::MAX) {
                        *far = true;
                        changed = true;
                    }
                }
            }
            if !changed {
                break (pos, addr);
            }
        };
        let mut out = Vec::with_capacity(pos.last().map_or(0, |p| p + 1));
        for (i, ins) in self.ins.iter().enumerate() {
            match *ins {
                Ins::Ld(k) => out.push(stmt(LD_W_ABS, k)),
                Ins::And(k) => out.push(stmt(ALU_AND_K, k)),
                Ins::Ret(k) => out.push(stmt(RET_K, k)),
                Ins::Bind(_) => {}
                Ins::Jmp { cmp, k, jt, jf } => {
                    let (t, f) = tramp[i];
                    let after = pos[i] + 1;
                    let jt_off = if t { 0 } else { addr[jt.0] - after };
                    let jf_off = if f { usize::from(t) } else { addr[jf.0] - after };
                    let (Ok(jt_off), Ok(jf_off)) = (u8::try_from(jt_off), u8::try_from(jf_off)) else {
                        return Err("jump offset out of range after relaxation");
                    };
                    out.push(sock_filter { code: cmp.code(), jt: jt_off, jf: jf_off, k });
                    if t {
                        out.push(stmt(JMP_JA, offset(addr[jt.0], after + 1)?));
                    }
                    if f {
                        out.push(stmt(JMP_JA, offset(addr[jf.0], after + 1 + usize::from(t))?));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Addresses of every instruction and label, given which jumps need trampolines.
    fn layout(&self, tramp: &[(bool, bool)]) -> Result<(Vec<usize>, Vec<usize>), &'static str> {
        let mut pos = Vec::with_capacity(self.ins.len());
        let mut addr = vec![usize::MAX; self.labels];
        let mut pc = 0;
        for (i, ins) in self.ins.iter().enumerate() {
            pos.push(pc);
            match ins {
                Ins::Bind(l) => {
                    if addr[l.0] != usize::MAX {
                        return Err("label bound twice");
                    }
                    addr[l.0] = pc;
                }
                Ins::Jmp { .. } => pc += 1 + usize::from(tramp[i].0) + usize::from(tramp[i].1),
                _ => pc += 1,
            }
        }
        if addr.contains(&usize::MAX) {
            return Err("unbound label");
        }
        Ok((pos, addr))
    }
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter { code, jt: 0, jf: 0, k }
}

/// The `ja` offset from the instruction after the jump (`from`) to `to`.
fn offset(to: usize, from: usize) -> Result<u32, &'static str> {
    to.checked_sub(from).and_then(|d| u32::try_from(d).ok()).ok_or("backward or oversized ja")
}
