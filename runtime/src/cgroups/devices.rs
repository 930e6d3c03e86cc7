//! Device control on cgroup v2: `linux.resources.devices` compiled into a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program and attached to the container's cgroup, as runc and
//! crun do. cgroup v2 has no devices controller; without this program every device node a
//! container can make (a default pod keeps CAP_MKNOD) would open on the host.
//!
//! The rules mean what the v1 files mean with the runtime's v1 writes ([`super::Cgroup::apply`]
//! denies everything first): for each access a request asks (mknod, read, write), the last rule
//! that matches the device and names that access decides, and no match denies. The devices
//! every container gets ([`super::values::DEFAULT_DEVICE_RULES`]) are allowed last, so always.
//!
//! Hand-written on purpose: the program is a prologue and three instructions per rule and
//! access, encoded here as `struct bpf_insn` (8 bytes each) and loaded with bpf(2). A BPF
//! toolchain crate (aya, libbpf-rs) loads ELF objects built by a BPF compiler, which a program
//! generated per container does not have; the encoding is checked byte by byte in the unit
//! tests, and the semantics against the kernel's verifier and device checks in the root tests.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

/// Errors of building or attaching a device program.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("linux.resources.devices[{index}]: {reason}")]
    Rule { index: usize, reason: String },
    #[error("{op} for {path}")]
    Bpf {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the kernel's verifier refused the device program for {path}: {log}")]
    Verifier { path: PathBuf, log: String },
}

/// What a rule matches: a device type (None: any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Block,
    Char,
}

/// Access bits as the kernel passes them (`BPF_DEVCG_ACC_*`).
pub const MKNOD: u8 = 1;
pub const READ: u8 = 2;
pub const WRITE: u8 = 4;

/// One device rule in the program's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    pub kind: Option<Kind>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: u8,
}

impl Rule {
    /// Parses the v1 file syntax `c 1:3 rwm` (`*` for any number, `a` for any type).
    pub fn parse(allow: bool, text: &str) -> Option<Rule> {
        let mut parts = text.split_whitespace();
        let kind = match parts.next()? {
            "a" => None,
            "b" => Some(Kind::Block),
            "c" => Some(Kind::Char),
            _ => return None,
        };
        let (major, minor) = parts.next()?.split_once(':')?;
        let number = |s: &str| if s == "*" { Some(None) } else { s.parse().ok().map(Some) };
        let access = access_bits(parts.next().unwrap_or("rwm"))?;
        Some(Rule { allow, kind, major: number(major)?, minor: number(minor)?, access })
    }

    fn from_oci(index: usize, rule: &LinuxDeviceCgroup) -> Result<Option<Rule>, DeviceError> {
        let bad = |reason: String| DeviceError::Rule { index, reason };
        let kind = match rule.typ().unwrap_or(LinuxDeviceType::A) {
            LinuxDeviceType::A => None,
            LinuxDeviceType::B => Some(Kind::Block),
            LinuxDeviceType::C | LinuxDeviceType::U => Some(Kind::Char),
            // FIFOs are not devices: the kernel asks the device cgroup about block and
            // character nodes only.
            LinuxDeviceType::P => return Ok(None),
        };
        let number = |n: Option<i64>, what: &str| match n {
            None | Some(-1) => Ok(None),
            Some(n) => u32::try_from(n).map(Some).map_err(|_| bad(format!("{what} {n} is not a device number"))),
        };
        let access = rule.access().as_deref().filter(|a| !a.is_empty()).unwrap_or("rwm");
        let access = access_bits(access).ok_or_else(|| bad(format!("access {access:?} is not made of r, w and m")))?;
        Ok(Some(Rule {
            allow: rule.allow(),
            kind,
            major: number(rule.major(), "major")?,
            minor: number(rule.minor(), "minor")?,
            access,
        }))
    }
}

fn access_bits(text: &str) -> Option<u8> {
    text.chars().try_fold(0, |bits, c| match c {
        'm' => Some(bits | MKNOD),
        'r' => Some(bits | READ),
        'w' => Some(bits | WRITE),
        _ => None,
    })
}

/// The rules a container's program enforces: the spec's, then the always-allowed defaults.
pub fn rules(spec: &[LinuxDeviceCgroup]) -> Result<Vec<Rule>, DeviceError> {
    let mut out = Vec::with_capacity(spec.len() + super::values::DEFAULT_DEVICE_RULES.len());
    for (index, rule) in spec.iter().enumerate() {
        out.extend(Rule::from_oci(index, rule)?);
    }
    out.extend(super::values::DEFAULT_DEVICE_RULES.iter().map(|r| Rule::parse(true, r).expect("valid default rule")));
    Ok(out)
}

/// One `struct bpf_insn`: opcode, dst (low nibble) and src (high nibble) registers, offset,
/// immediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0; 8];
        b[0] = self.code;
        b[1] = self.regs;
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }
}

// Opcodes used (linux/bpf_common.h, linux/bpf.h).
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_MOV_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const ALU32_RSH_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const ALU32_AND_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const ALU64_MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const JMP_JA: u8 = 0x05; // BPF_JMP | BPF_JA
const JMP32_JNE_K: u8 = 0x56; // BPF_JMP32 | BPF_JNE | BPF_K
const JMP32_JSET_K: u8 = 0x46; // BPF_JMP32 | BPF_JSET | BPF_K
const JMP_EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

// Registers: r1 holds the context (struct bpf_cgroup_dev_ctx { access_type, major, minor }).
const R0: u8 = 0;
const R1: u8 = 1;
const TYPE: u8 = 2;
const ACCESS: u8 = 3;
const MAJOR: u8 = 4;
const MINOR: u8 = 5;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: dst | (src << 4), off, imm }
}

/// An instruction list with forward jumps to labels, resolved at the end.
#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    jumps: Vec<(usize, usize)>,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }

    fn bind(&mut self, label: usize) {
        self.labels[label] = Some(self.insns.len());
    }

    fn push(&mut self, i: Insn) {
        self.insns.push(i);
    }

    fn jump(&mut self, code: u8, dst: u8, imm: i32, label: usize) {
        self.jumps.push((self.insns.len(), label));
        self.insns.push(insn(code, dst, 0, 0, imm));
    }

    fn finish(mut self) -> Vec<Insn> {
        for (at, label) in self.jumps {
            let target = self.labels[label].expect("every jump target is bound");
            let off = target as i64 - at as i64 - 1;
            self.insns[at].off = i16::try_from(off).expect("device programs stay far below 32k instructions");
        }
        self.insns
    }
}

/// Compiles `rules` into a program returning 1 (allow) or 0 (deny). Only forward jumps, and
/// no instruction the verifier would find unreachable (it refuses such programs).
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut a = Asm::default();
    a.push(insn(LDX_MEM_W, TYPE, R1, 0, 0));
    a.push(insn(ALU32_MOV_X, ACCESS, TYPE, 0, 0));
    a.push(insn(ALU32_RSH_K, ACCESS, 0, 0, 16));
    a.push(insn(ALU32_AND_K, TYPE, 0, 0, 0xffff));
    a.push(insn(LDX_MEM_W, MAJOR, R1, 4, 0));
    a.push(insn(LDX_MEM_W, MINOR, R1, 8, 0));
    let deny = a.label();
    let mut deny_used = false;
    for bit in [MKNOD, READ, WRITE] {
        let done = a.label();
        let check = a.label();
        a.jump(JMP32_JSET_K, ACCESS, i32::from(bit), check);
        a.jump(JMP_JA, 0, 0, done);
        a.bind(check);
        let mut decided = false;
        for rule in rules.iter().rev().filter(|r| r.access & bit != 0) {
            let next = a.label();
            let conds = [
                rule.kind.map(|k| (TYPE, if k == Kind::Block { 1 } else { 2 })),
                rule.major.map(|m| (MAJOR, m)),
                rule.minor.map(|m| (MINOR, m)),
            ];
            let mut conditional = false;
            for (reg, value) in conds.into_iter().flatten() {
                a.jump(JMP32_JNE_K, reg, value as i32, next);
                conditional = true;
            }
            if rule.allow {
                a.jump(JMP_JA, 0, 0, done);
            } else {
                a.jump(JMP_JA, 0, 0, deny);
                deny_used = true;
            }
            a.bind(next);
            if !conditional {
                decided = true;
                break;
            }
        }
        if !decided {
            a.jump(JMP_JA, 0, 0, deny);
            deny_used = true;
        }
        a.bind(done);
    }
    a.push(insn(ALU64_MOV_K, R0, 0, 0, 1));
    a.push(insn(JMP_EXIT, 0, 0, 0, 0));
    if deny_used {
        a.bind(deny);
        a.push(insn(ALU64_MOV_K, R0, 0, 0, 0));
        a.push(insn(JMP_EXIT, 0, 0, 0, 0));
    }
    a.finish()
}

// bpf(2) commands, program and attach types, flags (linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// bpf(2) with `attr` as its attribute union.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr is a live, initialised #[repr(C)] prefix of union bpf_attr of the size
    // passed; the kernel reads (and for queries writes) only within that size.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>() as u32) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Loads the program; on a refusal, loads it again with the verifier's log to say why.
fn load(insns: &[Insn], path: &Path) -> Result<OwnedFd, DeviceError> {
    let license = c"Apache-2.0";
    let mut name = [0u8; 16];
    name[..12].copy_from_slice(b"berth_device");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(owned(fd)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) || e.raw_os_error() == Some(libc::EACCES) => {
            let mut log = vec![0u8; 64 * 1024];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = bpf(BPF_PROG_LOAD, &mut attr).map(owned);
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]).trim().to_string();
            Err(DeviceError::Verifier {
                path: path.to_path_buf(),
                log: if text.is_empty() { e.to_string() } else { text },
            })
        }
        Err(source) => Err(DeviceError::Bpf { op: "loading the device program", path: path.to_path_buf(), source }),
    }
}

/// IDs of the device programs attached to the cgroup itself (not inherited ones).
fn attached(cgroup: &OwnedFd, path: &Path) -> Result<Vec<u32>, DeviceError> {
    let mut ids = vec![0u32; 64];
    let mut attr = QueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr).map_err(|source| DeviceError::Bpf {
        op: "listing the device programs",
        path: path.to_path_buf(),
        source,
    })?;
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
}

/// Attaches `insns` to the cgroup directory `dir` and then detaches the device programs that
/// were there before (an update replaces the rules; for a moment both apply, the stricter
/// wins). Every device access of a process in the cgroup (or below) is then decided by it.
pub fn attach(dir: &Path, insns: &[Insn]) -> Result<(), DeviceError> {
    let bpf_err = |op: &'static str| move |source| DeviceError::Bpf { op, path: dir.to_path_buf(), source };
    let cgroup: OwnedFd = std::fs::File::open(dir).map_err(bpf_err("opening the cgroup"))?.into();
    let before = attached(&cgroup, dir)?;
    let prog = load(insns, dir)?;
    let mut attr = AttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map_err(bpf_err("attaching the device program"))?;
    for id in before {
        let mut get = GetFdAttr { prog_id: id, ..Default::default() };
        let old = match bpf(BPF_PROG_GET_FD_BY_ID, &mut get) {
            Ok(fd) => owned(fd),
            // Detached and freed meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(source) => return Err(bpf_err("opening a previous device program")(source)),
        };
        let mut detach = AttachAttr {
            target_fd: cgroup.as_raw_fd() as u32,
            attach_bpf_fd: old.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        match bpf(BPF_PROG_DETACH, &mut detach) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(source) => return Err(bpf_err("detaching a previous device program")(source)),
        }
    }
    Ok(())
}

/// How many device programs are attached to the cgroup directory itself.
pub fn attached_count(dir: &Path) -> Result<usize, DeviceError> {
    let cgroup: OwnedFd = std::fs::File::open(dir)
        .map_err(|source| DeviceError::Bpf { op: "opening the cgroup", path: dir.to_path_buf(), source })?
        .into();
    Ok(attached(&cgroup, dir)?.len())
}

#[cfg(test)]
#[path = "devices_tests.rs"]
mod tests;
