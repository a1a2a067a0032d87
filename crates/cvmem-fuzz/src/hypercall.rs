//! Target (c): arbitrary register values to the conversion request decoders — the core's
//! [`MapGpaRange::decode`] and, on Linux with the `kvm` feature (default), the KVM crate's
//! `ConversionRequest` from a hypercall exit, the port-I/O transport and a memory-fault exit. Each is checked against a reference
//! written from KVM_HC_MAP_GPA_RANGE's rules (FACTS.md): a0 page aligned, a1 != 0, no
//! wrap-around, a2 bits 63:5 zero, page-size hint 0-2.

use cvmem::{Errno, Level, MapGpaRange, KVM_MEMORY_ATTRIBUTE_PRIVATE, PAGE_SIZE};

use crate::input::Input;

/// Whether KVM_HC_MAP_GPA_RANGE accepts these arguments.
fn reference_valid(gpa: u64, npages: u64, attrs: u64) -> bool {
    attrs >> 5 == 0
        && attrs & 0xf <= 2
        && gpa % PAGE_SIZE == 0
        && npages != 0
        && npages
            .checked_mul(PAGE_SIZE)
            .and_then(|size| gpa.checked_add(size))
            .is_some()
}

/// A register value: raw, an edge value, or a nearly valid one (aligned, small, flag bits).
fn register(input: &mut Input<'_>) -> u64 {
    match input.below(4) {
        0 => input.wild_u64() & !(PAGE_SIZE - 1),
        1 => u64::from(input.byte()) & 0x1f,
        2 => u64::from(input.u16()),
        _ => input.wild_u64(),
    }
}

/// Runs one input; panics on a disagreement with the reference.
pub fn hypercall_decode(data: &[u8]) {
    let mut input = Input::new(data);
    let (gpa, npages, attrs) = (
        register(&mut input),
        register(&mut input),
        register(&mut input),
    );
    check_map_gpa_range(gpa, npages, attrs);
    #[cfg(all(target_os = "linux", feature = "kvm"))]
    kvm::check(&mut input, [gpa, npages, attrs]);
}

/// The core decoder against the reference, field by field.
pub fn check_map_gpa_range(gpa: u64, npages: u64, attrs: u64) {
    let decoded = MapGpaRange::decode(gpa, npages, attrs);
    let args = format!("({gpa:#x}, {npages:#x}, {attrs:#x})");
    assert_eq!(
        decoded.is_ok(),
        reference_valid(gpa, npages, attrs),
        "{args}: {decoded:?}"
    );
    match decoded {
        Ok(r) => {
            assert_eq!((r.gpa.0, r.npages), (gpa, npages), "{args}");
            assert_eq!(r.private, attrs & 0x10 != 0, "{args}");
            assert_eq!(r.hint, Level::ALL[(attrs & 0xf) as usize], "{args}");
            assert_eq!(r.flags(), attrs, "{args}: flags() re-encodes");
            assert_eq!(r.size(), npages * PAGE_SIZE, "{args}");
            let range = r.range();
            assert_eq!(
                (range.start.0, range.len()),
                (gpa / PAGE_SIZE, npages),
                "{args}"
            );
            let private = if r.private {
                KVM_MEMORY_ATTRIBUTE_PRIVATE
            } else {
                0
            };
            assert_eq!(r.attributes(), private, "{args}");
        }
        Err(e) => {
            assert_eq!(e.errno(), Errno::EINVAL, "{args}");
            assert!(!e.to_string().is_empty());
        }
    }
}

#[cfg(all(target_os = "linux", feature = "kvm"))]
mod kvm {
    use cvmem::{Kind, PAGE_SIZE};
    use cvmem_kvm::PORT_MAP_GPA;
    use cvmem_kvm::{
        ConversionRequest, RequestError, RequestSource, TransportRegs, KVM_ENOSYS,
        KVM_MEMORY_EXIT_FLAG_PRIVATE,
    };

    use super::{reference_valid, register};
    use crate::input::Input;

    const EINVAL_STATUS: u64 = 22u64.wrapping_neg();

    /// A decoded request against the arguments it came from.
    fn check_request(
        result: &Result<ConversionRequest, RequestError>,
        valid: bool,
        [gpa, npages, attrs]: [u64; 3],
        source: RequestSource,
        what: &str,
    ) {
        assert_eq!(result.is_ok(), valid, "{what}: {result:?}");
        match result {
            Ok(req) => {
                assert_eq!(req.source, source, "{what}");
                assert_eq!((req.gpa(), req.npages()), (gpa, npages), "{what}");
                let to = Kind::from_private(attrs & 0x10 != 0);
                assert_eq!(req.to, to, "{what}");
                assert_eq!(req.range.start.0, gpa / PAGE_SIZE, "{what}");
            }
            Err(e) => {
                let want = match e {
                    RequestError::UnknownHypercall(_) => KVM_ENOSYS.wrapping_neg(),
                    _ => EINVAL_STATUS,
                };
                assert_eq!(e.guest_status(), want, "{what}: {e}");
                assert!(!e.to_string().is_empty());
            }
        }
    }

    pub(super) fn check(input: &mut Input<'_>, args: [u64; 3]) {
        let [gpa, npages, attrs] = args;
        let valid = reference_valid(gpa, npages, attrs);

        // KVM_EXIT_HYPERCALL.
        let nr = if input.below(4) == 0 {
            input.wild_u64()
        } else {
            12
        };
        let hc_args = [gpa, npages, attrs, input.u64(), input.u64(), input.u64()];
        let r = ConversionRequest::from_hypercall(nr, &hc_args);
        check_request(
            &r,
            nr == 12 && valid,
            args,
            RequestSource::Hypercall,
            "hypercall",
        );
        if nr != 12 {
            assert_eq!(r, Err(RequestError::UnknownHypercall(nr)));
        }

        // The port-I/O transport: `out %eax` of 4 bytes carrying EAX, RAX = 12.
        let port = if input.below(4) == 0 {
            input.u16()
        } else {
            PORT_MAP_GPA
        };
        let rax = if input.below(4) == 0 {
            register(input)
        } else {
            12
        };
        let len = match input.below(4) {
            0 => usize::from(input.below(9)),
            _ => 4,
        };
        let mut bytes: Vec<u8> = (rax as u32)
            .to_le_bytes()
            .into_iter()
            .cycle()
            .take(len)
            .collect();
        if input.below(8) == 0 {
            if let Some(b) = bytes.first_mut() {
                *b ^= input.byte() | 1;
            }
        }
        let regs = TransportRegs {
            rax,
            rbx: gpa,
            rcx: npages,
            rdx: attrs,
        };
        let mut word = [0u8; 8];
        word[..len.min(8)].copy_from_slice(&bytes[..len.min(8)]);
        let transport_ok = port == PORT_MAP_GPA
            && len == 4
            && u64::from_le_bytes(word) == rax & 0xffff_ffff
            && rax == 12;
        let r = ConversionRequest::from_port_io(port, &bytes, &regs);
        check_request(
            &r,
            transport_ok && valid,
            args,
            RequestSource::PortIo,
            "port io",
        );

        // KVM_EXIT_MEMORY_FAULT: flags, gpa, size.
        let flags = match input.below(4) {
            0 => register(input),
            n => KVM_MEMORY_EXIT_FLAG_PRIVATE * u64::from(n & 1),
        };
        let size = npages.wrapping_mul(PAGE_SIZE) ^ u64::from(input.below(2));
        let fault_attrs = if flags & KVM_MEMORY_EXIT_FLAG_PRIVATE != 0 {
            0x10
        } else {
            0
        };
        let fault_ok = flags & !KVM_MEMORY_EXIT_FLAG_PRIVATE == 0
            && size != 0
            && size % PAGE_SIZE == 0
            && reference_valid(gpa, size / PAGE_SIZE, fault_attrs);
        let r = ConversionRequest::from_memory_fault(flags, gpa, size);
        let fault_args = [gpa, size / PAGE_SIZE, fault_attrs];
        check_request(
            &r,
            fault_ok,
            fault_args,
            RequestSource::MemoryFault,
            "memory fault",
        );
    }
}
