//! A minimal VMM on kvm-ioctls + vm-memory that attaches cvmem-kvm to its own guest memory and
//! runs a guest that converts memory: `cargo run -p cvmem-kvm --example vmm`.
//!
//! The guest (sixteen bytes of real-mode code) asks, through cvmem-kvm's port transport, for 64
//! KiB to become private and then shared again, and halts. The vCPU loop handles the three
//! ways a guest converts — `KVM_EXIT_HYPERCALL` (KVM_HC_MAP_GPA_RANGE, TDX/SNP), the port
//! transport, `KVM_EXIT_MEMORY_FAULT` (implicit conversion) — and stops on anything else.

use std::sync::Arc;

use cvmem::{Gpa, Level};
use cvmem_kvm::{ConversionRequest, CvmMemory, GuestMemfd, HostMemory, TransportRegs};
use kvm_ioctls::{Cap, Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// `out 0xe0, eax` (convert: RAX 12, RBX gpa, RCX pages, RDX attributes; RAX gets the status);
/// `xor edx, edx` (attributes 0: shared); `mov eax, 12`; `out 0xe0, eax`; `hlt`.
const GUEST: [u8; 16] = [
    0x66, 0xe7, 0xe0, 0x66, 0x31, 0xd2, 0x66, 0xb8, 12, 0, 0, 0, 0x66, 0xe7, 0xe0, 0xf4,
];
const RAM: usize = 2 << 20;
const CODE: u64 = 0x1000;

fn main() -> Result<()> {
    // ANCHOR: setup
    let kvm = Kvm::new()?;
    let vm = Arc::new(kvm.create_vm()?);
    // The VMM's own memory: a vm-memory region (and a guest_memfd where KVM has one).
    let region = Arc::new(GuestRegionMmap::new(
        MmapRegion::new(RAM)?,
        GuestAddress(0),
    )?);
    let guest = GuestMemoryMmap::from_arc_regions(vec![Arc::clone(&region)])?;
    let gmem = kvm.check_extension(Cap::GuestMemfd).then(|| {
        let file = cvmem_kvm::create_guest_memfd(&vm, RAM as u64, 0);
        file.map(|file| GuestMemfd {
            file,
            offset: 0,
            in_place: false,
        })
    });
    let memory = CvmMemory::new(Arc::clone(&vm));
    memory.attach_slot(
        0,
        Gpa(0),
        HostMemory::from_region(region, gmem.transpose()?)?,
        Level::M2,
    )?;
    let query = memory.query(); // for device threads: never blocks
                                // ANCHOR_END: setup

    guest.write_slice(&GUEST, GuestAddress(CODE))?;
    let mut vcpu = vm.create_vcpu(0)?;
    let mut sregs = vcpu.get_sregs()?;
    (sregs.cs.base, sregs.cs.selector) = (0, 0);
    vcpu.set_sregs(&sregs)?;
    let mut regs = vcpu.get_regs()?;
    (regs.rip, regs.rflags) = (CODE, 2);
    (regs.rax, regs.rbx, regs.rcx, regs.rdx) = (12, 0x10000, 16, 0x10);
    vcpu.set_regs(&regs)?;

    // ANCHOR: loop
    loop {
        match vcpu.run()? {
            VcpuExit::Hypercall(hc) => {
                *hc.ret = match ConversionRequest::from_hypercall(hc.nr, &hc.args) {
                    Ok(req) => cvmem_kvm::guest_status(&memory.convert(&req)),
                    Err(e) => e.guest_status(),
                };
            }
            VcpuExit::MemoryFault { flags, gpa, size } => {
                // Implicit conversion: make the range the kind the access wanted, re-enter.
                memory.convert(&ConversionRequest::from_memory_fault(flags, gpa, size)?)?;
            }
            VcpuExit::IoOut(port, data) if port == cvmem_kvm::PORT_MAP_GPA => {
                let data = data.to_vec();
                let mut regs = vcpu.get_regs()?;
                let (rax, rbx, rcx, rdx) = (regs.rax, regs.rbx, regs.rcx, regs.rdx);
                let transport = TransportRegs { rax, rbx, rcx, rdx };
                regs.rax = match ConversionRequest::from_port_io(port, &data, &transport) {
                    Ok(req) => {
                        let result = memory.convert(&req);
                        println!(
                            "{:?} {:#x}+{} pages: {:?}",
                            req.to,
                            rbx,
                            rcx,
                            query.range_kind(Gpa(rbx), rcx << 12)
                        );
                        cvmem_kvm::guest_status(&result)
                    }
                    Err(e) => e.guest_status(),
                };
                vcpu.set_regs(&regs)?;
            }
            VcpuExit::Hlt => break,
            // Devices' MMIO and port I/O go here; never spin on an exit you do not handle.
            other => return Err(format!("unhandled exit {other:?}").into()),
        }
    }
    // ANCHOR_END: loop
    let map = query.snapshot();
    println!(
        "guest halted; private ranges {:?}, tracker {} bytes",
        map.private, map.tracker_heap_bytes
    );
    if !map.private.is_empty() || vcpu.get_regs()?.rax != 0 {
        return Err("the guest's conversions did not round-trip".into());
    }
    Ok(())
}
