//! The architectures the seccomp compiler knows: their audit arch values and syscall tables.

use oci_spec::runtime::Arch;

use super::table;

/// `AUDIT_ARCH_X86_64` (`EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`); x32 uses it too.
pub(super) const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// `AUDIT_ARCH_I386` (`EM_386 | __AUDIT_ARCH_LE`).
pub(super) const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// `AUDIT_ARCH_AARCH64` (`EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`).
pub(super) const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
/// x32 syscalls arrive as AUDIT_ARCH_X86_64 with this bit set in the number.
pub(super) const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// An architecture we can compile rules for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Target {
    X86_64,
    I386,
    X32,
    Aarch64,
}

impl Target {
    /// The value the kernel puts in `seccomp_data.arch` for this architecture's syscalls.
    pub(super) const fn audit_arch(self) -> u32 {
        match self {
            Target::X86_64 | Target::X32 => AUDIT_ARCH_X86_64,
            Target::I386 => AUDIT_ARCH_I386,
            Target::Aarch64 => AUDIT_ARCH_AARCH64,
        }
    }

    /// The syscall table, sorted by name.
    pub(super) fn table(self) -> &'static [(&'static str, u32)] {
        match self {
            Target::X86_64 => table::X86_64,
            Target::I386 => table::I386,
            Target::X32 => table::X32,
            Target::Aarch64 => table::AARCH64,
        }
    }

    /// The number `seccomp_data.nr` holds for `name` (x32 numbers include `X32_SYSCALL_BIT`).
    pub(super) fn lookup(self, name: &str) -> Option<u32> {
        let table = self.table();
        table.binary_search_by(|(n, _)| (*n).cmp(name)).ok().map(|i| table[i].1)
    }

    /// The architecture this binary runs on, which every filter covers.
    pub(super) fn native() -> Option<Target> {
        if cfg!(target_arch = "x86_64") {
            Some(Target::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Target::Aarch64)
        } else {
            None
        }
    }

    /// The target for an OCI architecture name, `None` when we have no table for it.
    pub(super) fn from_oci(arch: Arch) -> Option<Target> {
        match arch {
            Arch::ScmpArchNative => Target::native(),
            Arch::ScmpArchX86_64 => Some(Target::X86_64),
            Arch::ScmpArchX86 => Some(Target::I386),
            Arch::ScmpArchX32 => Some(Target::X32),
            Arch::ScmpArchAarch64 => Some(Target::Aarch64),
            _ => None,
        }
    }
}

/// The syscall number of `name` on `arch`, as the kernel reports it to seccomp filters (x32
/// numbers include `__X32_SYSCALL_BIT`). `None` for unknown names and unsupported architectures.
pub fn syscall_number(arch: Arch, name: &str) -> Option<u32> {
    Target::from_oci(arch)?.lookup(name)
}
