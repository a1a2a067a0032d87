//! The paravirtual ABI between the host and the guest program in `guest/guest.S`.
//!
//! This file is the single source of truth for the numbers: `build.rs` reads every
//! `pub const NAME: u64 = LITERAL;` line of it and passes it to the assembler with `--defsym`, so
//! the guest and the host cannot disagree.
//!
//! The guest runs in 64-bit mode at CPL 3 with IOPL 3 (so `in`/`out` do not fault and the data
//! loops run natively rather than emulated), with every register it needs for a request loaded
//! before one `out %eax, $PORT` instruction. The host reads the registers from the vCPU's
//! synchronised register block (`KVM_CAP_SYNC_REGS`) and writes the return value to RAX.

/// Port of the conversion transport (`cvmem_kvm::PORT_MAP_GPA`; a test keeps them equal): RAX =
/// hypercall number (12, KVM_HC_MAP_GPA_RANGE),
/// RBX = gpa, RCX = number of 4K pages, RDX = attributes; on return RAX = 0 or -errno.
pub const PORT_MAP_GPA: u64 = 0xe0;
/// Port of a script synchronisation point: RBX = index of the command; the host performs the
/// host side of that command (writes or checks shared memory).
pub const PORT_SYNC: u64 = 0xe1;
/// Port of the paravirtual memory-fault probe: RBX = gpa, RCX = 1 for a private access, 0 for a
/// shared one. The host asks the tracker what KVM's fault path would do and, where KVM would
/// exit with KVM_EXIT_MEMORY_FAULT, handles it as that exit (an implicit conversion).
pub const PORT_FAULT: u64 = 0xe2;
/// Port of a mismatch report: RAX = kind (`REPORT_*`), RBX = command index, RCX = address,
/// RDX = expected value, RSI = actual value.
pub const PORT_REPORT: u64 = 0xe3;
/// Port the guest writes when its script is finished: RBX = index of the `END` command.
pub const PORT_DONE: u64 = 0xe4;
/// Port of calibration exits that the host answers without work.
pub const PORT_PING: u64 = 0xe5;

/// Script command: stop and report on [`PORT_DONE`].
pub const OP_END: u64 = 0;
/// Script command: convert `npages` at `gpa` with attributes `arg` through [`PORT_MAP_GPA`];
/// the returned RAX must equal `expect`.
pub const OP_MAP: u64 = 1;
/// Script command: fill `npages` at `gpa` with the pattern `arg` (see [`pattern_value`]).
pub const OP_FILL: u64 = 2;
/// Script command: check `npages` at `gpa` against the pattern `arg`, reporting the first
/// mismatching quadword of each page.
pub const OP_CHECK: u64 = 3;
/// Script command: exit on [`PORT_SYNC`] so that the host performs its part of this command.
pub const OP_SYNC: u64 = 4;
/// Script command: probe `npages` pages at `gpa` through [`PORT_FAULT`] as private (`arg` = 1)
/// or shared (`arg` = 0) accesses, then read one quadword of each.
pub const OP_ACCESS: u64 = 5;
/// Script command: exit `npages` times on [`PORT_PING`].
pub const OP_PING: u64 = 6;

/// Report kind: a data quadword differs from the expected pattern.
pub const REPORT_DATA: u64 = 1;
/// Report kind: a conversion returned another status than expected.
pub const REPORT_STATUS: u64 = 2;
/// Report kind: the script holds an unknown command.
pub const REPORT_BAD_OP: u64 = 3;

/// Size of one script command in bytes: eight quadwords `op, gpa, npages, arg, expect, 0, 0, 0`.
pub const COMMAND_SIZE: u64 = 64;

/// Guest-physical address of the boot memslot (anonymous memory holding page tables, GDT, the
/// program and its script): the last 2 MiB of the identity map, out of the way of the places
/// workloads and op-logs put guest RAM and firmware (0 - 4 GiB and 4 GiB up). The slot is
/// KVM's only: the tracker and the MMU model do not know it.
pub const BOOT_GPA: u64 = 0xf_ffe0_0000;
/// Slot id of the boot memslot (the last x86 user memslot, out of the way of op-log slots).
pub const BOOT_SLOT: u32 = 32763;
/// Size of the boot memslot.
pub const BOOT_SLOT_SIZE: u64 = 0x20_0000;
/// Offset of the PML4 page in the boot memslot.
pub const PML4_OFFSET: u64 = 0x1000;
/// Offset of the page-directory-pointer table (covers 512 GiB).
pub const PDPT_OFFSET: u64 = 0x2000;
/// Offset of the GDT.
pub const GDT_OFFSET: u64 = 0x3000;
/// Offset of the 64-bit TSS, whose I/O bitmap allows every port (some hosts check it even
/// with IOPL 3).
pub const TSS_OFFSET: u64 = 0x4000;
/// Offset of the guest program (and its entry point).
pub const CODE_OFFSET: u64 = 0x8000;
/// Largest guest program in bytes.
pub const CODE_MAX: u64 = 0x8000;
/// Offset of the first page directory; one per GiB of identity-mapped guest-physical space.
pub const PD_OFFSET: u64 = 0x10000;
/// Number of page directories, so the identity map covers this many GiB from GPA 0.
pub const PD_COUNT: u64 = 64;
/// Offset where the host writes the script (the guest gets its address in RDI).
pub const SCRIPT_OFFSET: u64 = 0x100000;
/// Bytes available for one batch of the script.
pub const SCRIPT_MAX: u64 = 0xf0000;

/// The value a pattern writes at guest-physical address `gpa`: 0 for pattern 0 (which stands for
/// discarded, zeroed memory), else `pattern ^ gpa` so that every quadword differs.
pub const fn pattern_value(pattern: u64, gpa: u64) -> u64 {
    if pattern == 0 {
        0
    } else {
        pattern ^ gpa
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_guest_uses_the_integrations_transport_port() {
        assert_eq!(super::PORT_MAP_GPA, u64::from(cvmem_kvm::PORT_MAP_GPA));
    }
}
