//! A minimal VMM on kvm-ioctls + vm-memory that attaches cvmem-kvm to its own guest memory and
//! runs a guest that converts memory: `cargo run -p cvmem-kvm --example vmm`.
//!
//! The VM is the first confidential type KVM offers (SW_PROTECTED on a development host), with
//! KVM_HC_MAP_GPA_RANGE exits enabled ([`cvmem_kvm::ConfidentialVm`]); where KVM has neither,
//! a default VM. The guest (a few bytes of real-mode code) asks for 64 KiB to become private and
//! then shared again — by `vmmcall` where KVM delivers the hypercall exit, else through
//! cvmem-kvm's port transport — and halts. The vCPU loop handles the three ways a guest
//! converts — `KVM_EXIT_HYPERCALL` (KVM_HC_MAP_GPA_RANGE, TDX/SNP), the port transport,
//! `KVM_EXIT_MEMORY_FAULT` (implicit conversion) — and stops on anything else.

use std::sync::Arc;

use cvmem::{Gpa, Level};
use cvmem_kvm::kvm_ioctls::{Kvm, VcpuExit};
use cvmem_kvm::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use cvmem_kvm::{
    ConfidentialVm, CvmMemory, GuestMemfd, GuestTransport, HostMemory, TransportRegs, VmType,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// `out 0xe0, eax` (convert: RAX 12, RBX gpa, RCX pages, RDX attributes; RAX gets the status);
/// `xor edx, edx` (attributes 0: shared); `mov eax, 12`; `out 0xe0, eax`; `hlt`.
const PORT_GUEST: [u8; 16] = [
    0x66, 0xe7, 0xe0, 0x66, 0x31, 0xd2, 0x66, 0xb8, 12, 0, 0, 0, 0x66, 0xe7, 0xe0, 0xf4,
];
/// The same with `vmmcall` (KVM_HC_MAP_GPA_RANGE; real mode is CPL 0, where KVM takes it).
const HYPERCALL_GUEST: [u8; 16] = [
    0x0f, 0x01, 0xd9, 0x66, 0x31, 0xd2, 0x66, 0xb8, 12, 0, 0, 0, 0x0f, 0x01, 0xd9, 0xf4,
];
const RAM: usize = 2 << 20;
const CODE: u64 = 0x1000;

fn main() -> Result<()> {
    // ANCHOR: setup
    let kvm = Kvm::new()?;
    // A production VMM lists [Tdx, SevSnp]; Default last opts in to a VM without private memory.
    let cvm = ConfidentialVm::create(&kvm, &[VmType::SwProtected, VmType::Default])?;
    let transport = cvm.guest_transport();
    let gmem_here = cvm.guest_memfd;
    let vm = Arc::new(cvm.vm);
    // The VMM's own memory (vm-memory; any dirty bitmap), and a guest_memfd where KVM has one.
    let guest = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM)])?;
    let gmem = gmem_here.then(|| GuestMemfd::create(&vm, RAM as u64));
    let memory = CvmMemory::new(Arc::clone(&vm));
    memory.attach_slot(
        0,
        Gpa(0),
        HostMemory::from_guest_memory(&guest, GuestAddress(0), gmem.transpose()?)?,
        Level::M2,
    )?;
    let query = memory.query(); // for device threads: never blocks
                                // ANCHOR_END: setup

    let program = match transport {
        GuestTransport::Hypercall => HYPERCALL_GUEST,
        GuestTransport::PortIo => PORT_GUEST,
    };
    println!("VM type {}, guest converts by {transport:?}", cvm.vm_type);
    guest.write_slice(&program, GuestAddress(CODE))?;
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
                *hc.ret = memory.handle_hypercall(hc.nr, &hc.args);
                println!("hypercall exit: {:?}", query.runs(Gpa(0x10000), 0x10000));
            }
            // Implicit conversion: make the range the kind the access wanted, then re-enter.
            VcpuExit::MemoryFault { flags, gpa, size } => {
                memory.handle_memory_fault(flags, gpa, size)?;
            }
            VcpuExit::IoOut(port, data) if port == cvmem_kvm::PORT_MAP_GPA => {
                let data = data.to_vec();
                let mut regs = vcpu.get_regs()?;
                let (rax, rbx, rcx, rdx) = (regs.rax, regs.rbx, regs.rcx, regs.rdx);
                regs.rax =
                    memory.handle_port_io(port, &data, &TransportRegs { rax, rbx, rcx, rdx });
                vcpu.set_regs(&regs)?;
                println!("port exit: {:?}", query.range_kind(Gpa(rbx), rcx << 12));
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
