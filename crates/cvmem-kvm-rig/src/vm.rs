//! A minimal x86-64 VM for the guest program: the VM type and capabilities, memslots, identity
//! page tables, 64-bit mode and one vCPU — at CPL 0 where KVM delivers KVM_HC_MAP_GPA_RANGE to
//! userspace (the guest then converts with `vmmcall`), else at CPL 3 with IOPL 3 (the port
//! transport; on a nested, paravirtualised KVM CPL 0 code is emulated and far slower).

use std::sync::Arc;

use kvm_bindings::{
    kvm_dtable, kvm_enable_cap, kvm_regs, kvm_segment, kvm_sregs, KVM_CAP_EXIT_HYPERCALL,
    KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, SyncReg, VcpuFd, VmFd};

use crate::abi::*;
use cvmem::{Level, SlotFlags};
use cvmem_kvm::{Backing, CvmMemory, HostMemory, MmuConfig};

use crate::caps::{HostCaps, HostPath};
use crate::error::{Error, Result};
use crate::sys;

/// The guest program, assembled by build.rs.
#[cfg(not(cvmem_no_guest))]
const GUEST_PROGRAM: Option<&[u8]> = Some(include_bytes!(concat!(env!("OUT_DIR"), "/guest.bin")));
#[cfg(cvmem_no_guest)]
const GUEST_PROGRAM: Option<&[u8]> = None;

/// The VM that runs the guest program. Field order matters: the vCPU goes first, then the
/// memory (which deletes its memslots), then the boot slot, then the VM.
pub(crate) struct GuestVm {
    pub(crate) vcpu: VcpuFd,
    pub(crate) memory: CvmMemory,
    boot: BootSlot,
    pub(crate) caps: HostCaps,
    /// How this run uses the host (transport, backing, guest-memfd slots).
    pub(crate) path: HostPath,
    _vm: Arc<VmFd>,
}

/// The memslot holding the guest program, its page tables and its script. It is the harness's
/// memory, not guest RAM: KVM has it, the tracker and the MMU model do not (conversions of its
/// range change nothing in it, and it adds nothing to the model's figures).
struct BootSlot {
    vm: Arc<VmFd>,
    mem: HostMemory,
}

impl BootSlot {
    fn new(vm: &Arc<VmFd>) -> Result<Self> {
        let mem = HostMemory::allocate(
            Some(vm),
            Backing::Anonymous,
            BOOT_SLOT_SIZE,
            BOOT_GPA,
            Level::M2,
        )?;
        sys::set_user_memory_region2(vm, boot_region(&mem))
            .map_err(|e| Error::kvm("KVM_SET_USER_MEMORY_REGION2 (boot slot)", e))?;
        Ok(BootSlot {
            vm: Arc::clone(vm),
            mem,
        })
    }

    fn write(&self, off: u64, bytes: &[u8]) -> Result<()> {
        let ok = self.mem.write_bytes(off, bytes);
        ok.then_some(()).ok_or_else(|| {
            cvmem_kvm::Error::NotInSlot {
                gpa: BOOT_GPA + off,
                size: bytes.len() as u64,
            }
            .into()
        })
    }
}

impl Drop for BootSlot {
    fn drop(&mut self) {
        // Delete the slot before its memory is unmapped; cannot fail for an existing slot.
        let mut region = boot_region(&self.mem);
        region.memory_size = 0;
        let _ = sys::set_user_memory_region2(&self.vm, region);
    }
}

/// The boot memslot's KVM_SET_USER_MEMORY_REGION2 payload.
fn boot_region(mem: &HostMemory) -> kvm_bindings::kvm_userspace_memory_region2 {
    mem.user_memory_region(BOOT_SLOT, BOOT_GPA, SlotFlags::default())
}

const PTE_PRESENT: u64 = 1;
const PTE_WRITE: u64 = 2;
const PTE_USER: u64 = 4;
const PTE_HUGE: u64 = 0x80;

/// The boot slot's page tables, GDT and program as (offset, bytes).
fn boot_image(program: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let table = |entries: &mut dyn Iterator<Item = u64>| -> Vec<u8> {
        entries.flat_map(u64::to_le_bytes).collect()
    };
    let flags = PTE_PRESENT | PTE_WRITE | PTE_USER;
    let pml4 = table(&mut std::iter::once((BOOT_GPA + PDPT_OFFSET) | flags));
    let pdpt = table(&mut (0..PD_COUNT).map(|i| (BOOT_GPA + PD_OFFSET + i * 0x1000) | flags));
    let pds = table(&mut (0..PD_COUNT * 512).map(|i| (i << 21) | flags | PTE_HUGE));
    // null, kernel code, kernel data, user code (64-bit, DPL 3), user data (DPL 3), TSS (16 bytes)
    let (tss_lo, tss_hi) = tss_descriptor(BOOT_GPA + TSS_OFFSET, TSS_LIMIT);
    let gdt = table(
        &mut [
            0,
            0x00af_9a00_0000_ffff,
            0x00cf_9200_0000_ffff,
            0x00af_fa00_0000_ffff,
            0x00cf_f200_0000_ffff,
            tss_lo,
            tss_hi,
        ]
        .into_iter(),
    );
    // A TSS whose I/O bitmap (right after it) allows every port, closed by the 0xff byte.
    let mut tss = vec![0u8; TSS_LIMIT as usize + 1];
    tss[0x66..0x68].copy_from_slice(&(TSS_IO_BITMAP as u16).to_le_bytes());
    tss[TSS_LIMIT as usize] = 0xff;
    vec![
        (PML4_OFFSET, pml4),
        (PDPT_OFFSET, pdpt),
        (PD_OFFSET, pds),
        (GDT_OFFSET, gdt),
        (TSS_OFFSET, tss),
        (CODE_OFFSET, program.to_vec()),
    ]
}

/// Offset of the I/O bitmap in the TSS, and the TSS limit (bitmap of 65536 ports + 1 byte).
const TSS_IO_BITMAP: u64 = 0x68;
const TSS_LIMIT: u64 = TSS_IO_BITMAP + 65536 / 8;
const GDT_ENTRIES: u16 = 7;
const TSS_SELECTOR: u16 = 5 * 8;

/// The two quadwords of an available 64-bit TSS descriptor.
fn tss_descriptor(base: u64, limit: u64) -> (u64, u64) {
    let lo = (limit & 0xffff)
        | (base & 0xff_ffff) << 16
        | 0x89 << 40 // present, type 9 (64-bit TSS, available)
        | (limit >> 16 & 0xf) << 48
        | (base >> 24 & 0xff) << 56;
    (lo, base >> 32)
}

fn segment(selector: u16, type_: u8, long: bool, cpl: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: selector | u16::from(cpl),
        type_,
        present: 1,
        dpl: cpl,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

impl GuestVm {
    /// Opens /dev/kvm, creates the VM, its memory (with the MMU model `mmu`) and the boot slot,
    /// loads the program and puts the vCPU in 64-bit mode at CPL 3.
    pub(crate) fn new(mmu: MmuConfig) -> Result<Self> {
        let program =
            GUEST_PROGRAM.ok_or(Error::NoGuestProgram("no assembler, or not x86-64 Linux"))?;
        let kvm = Kvm::new().map_err(|e| Error::kvm("open /dev/kvm", e))?;
        let (vm_types, vm_type) = HostCaps::vm_type_of(&kvm);
        let vm = Arc::new(
            kvm.create_vm_with_type(vm_type)
                .map_err(|e| Error::kvm("KVM_CREATE_VM", e))?,
        );
        let caps = HostCaps {
            vm_types,
            vm_type,
            ..HostCaps::of(&vm)
        };
        let path = caps.path()?;
        if path.hypercall {
            let mut cap = kvm_enable_cap {
                cap: KVM_CAP_EXIT_HYPERCALL,
                ..Default::default()
            };
            cap.args[0] = 1 << 12;
            vm.enable_cap(&cap)
                .map_err(|e| Error::kvm("KVM_ENABLE_CAP(EXIT_HYPERCALL)", e))?;
        }
        let memory = CvmMemory::with_mmu(Arc::clone(&vm), mmu);
        let boot = BootSlot::new(&vm)?;
        for (off, bytes) in boot_image(program) {
            boot.write(off, &bytes)?;
        }
        let vcpu = vm
            .create_vcpu(0)
            .map_err(|e| Error::kvm("KVM_CREATE_VCPU", e))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| Error::kvm("KVM_GET_SUPPORTED_CPUID", e))?;
        vcpu.set_cpuid2(&cpuid)
            .map_err(|e| Error::kvm("KVM_SET_CPUID2", e))?;
        let mut sregs = vcpu
            .get_sregs()
            .map_err(|e| Error::kvm("KVM_GET_SREGS", e))?;
        sregs.gdt = kvm_dtable {
            base: BOOT_GPA + GDT_OFFSET,
            limit: GDT_ENTRIES * 8 - 1,
            padding: [0; 3],
        };
        sregs.tr = kvm_segment {
            base: BOOT_GPA + TSS_OFFSET,
            limit: TSS_LIMIT as u32,
            selector: TSS_SELECTOR,
            type_: 11, // busy 64-bit TSS, as after LTR
            present: 1,
            ..Default::default()
        };
        sregs.cr3 = BOOT_GPA + PML4_OFFSET;
        sregs.cr4 = 1 << 5; // PAE
        sregs.cr0 = 1 | 1 << 5 | 1 << 16 | 1 << 31; // PE, NE, WP, PG
        sregs.efer = 1 << 8 | 1 << 10; // LME, LMA
        let mut vm = GuestVm {
            vcpu,
            memory,
            boot,
            caps,
            path,
            _vm: vm,
        };
        vm.set_cpl(sregs, if path.hypercall { 0 } else { 3 })?;
        if caps.sync_regs {
            vm.vcpu.set_sync_valid_reg(SyncReg::Register);
        }
        Ok(vm)
    }

    /// Puts the vCPU at `cpl` (0 or 3) with the matching GDT segments: 0x08/0x10 kernel code
    /// and data, 0x18/0x20 user code and data.
    fn set_cpl(&mut self, mut sregs: kvm_sregs, cpl: u8) -> Result<()> {
        let (code, data) = if cpl == 0 { (0x08, 0x10) } else { (0x18, 0x20) };
        sregs.cs = segment(code, 11, true, cpl);
        let data = segment(data, 3, false, cpl);
        (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
        self.vcpu
            .set_sregs(&sregs)
            .map_err(|e| Error::kvm("KVM_SET_SREGS", e))
    }

    /// Writes a script batch into the boot slot and points the vCPU at the program's start.
    pub(crate) fn load_script(&mut self, script: &[u8]) -> Result<()> {
        if script.len() as u64 > SCRIPT_MAX {
            return Err(Error::Workload(format!(
                "script batch of {} bytes is too large",
                script.len()
            )));
        }
        self.boot.write(SCRIPT_OFFSET, script)?;
        let regs = kvm_regs {
            rip: BOOT_GPA + CODE_OFFSET,
            rdi: BOOT_GPA + SCRIPT_OFFSET,
            rsi: u64::from(self.path.hypercall),
            rsp: BOOT_GPA + BOOT_SLOT_SIZE,
            rflags: 2 | 3 << 12, // IOPL 3: port I/O from CPL 3
            ..Default::default()
        };
        self.vcpu
            .set_regs(&regs)
            .map_err(|e| Error::kvm("KVM_SET_REGS", e))
    }

    /// The general registers at an exit (from the synchronised block when KVM has it).
    pub(crate) fn regs(&self) -> Result<kvm_regs> {
        if self.caps.sync_regs {
            Ok(self.vcpu.sync_regs().regs)
        } else {
            self.vcpu
                .get_regs()
                .map_err(|e| Error::kvm("KVM_GET_REGS", e))
        }
    }

    /// Sets RAX for the guest's next instruction.
    pub(crate) fn set_rax(&mut self, rax: u64) -> Result<()> {
        if self.caps.sync_regs {
            self.vcpu.sync_regs_mut().regs.rax = rax;
            self.vcpu.set_sync_dirty_reg(SyncReg::Register);
            Ok(())
        } else {
            let mut regs = self.regs()?;
            regs.rax = rax;
            self.vcpu
                .set_regs(&regs)
                .map_err(|e| Error::kvm("KVM_SET_REGS", e))
        }
    }
}
