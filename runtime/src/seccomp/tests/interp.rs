//! A classic-BPF checker and interpreter for seccomp programs, standing in for the kernel.

use libc::sock_filter;

/// `struct seccomp_data`, as the kernel fills it in for a syscall.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Data {
    pub nr: u32,
    pub arch: u32,
    pub instruction_pointer: u64,
    pub args: [u64; 6],
}

impl Data {
    /// The structure's bytes in host order, as a filter reads them.
    fn bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..4].copy_from_slice(&self.nr.to_ne_bytes());
        b[4..8].copy_from_slice(&self.arch.to_ne_bytes());
        b[8..16].copy_from_slice(&self.instruction_pointer.to_ne_bytes());
        for (i, a) in self.args.iter().enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        b
    }
}

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const ALU_AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGT_K: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// What the kernel's loader checks (bpf_check_classic + seccomp_check_filter) for the
/// instructions we emit: length, known opcodes, aligned in-bounds loads, jumps inside the
/// program, and a program that cannot run off its end.
pub(super) fn check(prog: &[sock_filter]) {
    assert!(!prog.is_empty() && prog.len() <= 4096, "program length {}", prog.len());
    for (pc, ins) in prog.iter().enumerate() {
        let next = pc + 1;
        match ins.code {
            LD_W_ABS => assert!(ins.k % 4 == 0 && ins.k < 64, "{pc}: bad load offset {}", ins.k),
            ALU_AND_K | RET_K => {}
            JA => assert!(next + (ins.k as usize) < prog.len(), "{pc}: ja out of program"),
            JEQ_K | JGT_K | JGE_K | JSET_K => {
                let far = next + usize::from(ins.jt.max(ins.jf));
                assert!(far < prog.len(), "{pc}: conditional jump out of program");
            }
            code => panic!("{pc}: opcode {code:#x} not allowed"),
        }
    }
    assert_eq!(prog.last().unwrap().code, RET_K, "the last instruction must be a return");
}

/// Runs the program on `data` and returns its `SECCOMP_RET_*` value.
pub(super) fn run(prog: &[sock_filter], data: &Data) -> u32 {
    let bytes = data.bytes();
    let mut a: u32 = 0;
    let mut pc = 0usize;
    loop {
        let ins = prog.get(pc).unwrap_or_else(|| panic!("ran off the end at {pc}"));
        pc += 1;
        let taken = match ins.code {
            LD_W_ABS => {
                let k = ins.k as usize;
                a = u32::from_ne_bytes(bytes[k..k + 4].try_into().unwrap());
                continue;
            }
            ALU_AND_K => {
                a &= ins.k;
                continue;
            }
            JA => {
                pc += ins.k as usize;
                continue;
            }
            RET_K => return ins.k,
            JEQ_K => a == ins.k,
            JGT_K => a > ins.k,
            JGE_K => a >= ins.k,
            JSET_K => a & ins.k != 0,
            code => panic!("opcode {code:#x} at {}", pc - 1),
        };
        pc += usize::from(if taken { ins.jt } else { ins.jf });
    }
}
