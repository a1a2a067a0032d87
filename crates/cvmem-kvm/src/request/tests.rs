//! Decoding of every malformed and well-formed request.

use super::*;
use cvmem::Errno;
use cvmem::Gfn;

const PRIVATE: u64 = 1 << 4;
const EINVAL: u64 = (libc::EINVAL as u64).wrapping_neg();

fn hc(gpa: u64, npages: u64, attrs: u64) -> Result<ConversionRequest, RequestError> {
    ConversionRequest::from_hypercall(12, &[gpa, npages, attrs, 0, 0, 0])
}

fn map_gpa_errno(r: Result<ConversionRequest, RequestError>) -> Errno {
    match r {
        Err(RequestError::MapGpaRange(e)) => e.errno(),
        other => panic!("expected a map-gpa error, got {other:?}"),
    }
}

#[test]
fn hypercall_valid_private_and_shared() {
    let r = hc(0x20_0000, 512, PRIVATE | 1).unwrap();
    assert_eq!(r.range, GfnRange::new(Gfn(0x200), Gfn(0x400)));
    assert_eq!(r.to, Kind::Private);
    assert_eq!(r.hint, Level::M2);
    assert_eq!(r.source, RequestSource::Hypercall);
    assert_eq!((r.gpa(), r.npages()), (0x20_0000, 512));
    assert_eq!(r.attributes(), cvmem::KVM_MEMORY_ATTRIBUTE_PRIVATE);

    let r = hc(0x1000, 1, 0).unwrap();
    assert_eq!((r.to, r.hint, r.attributes()), (Kind::Shared, Level::K4, 0));
    assert_eq!(hc(0, 1, 2).unwrap().hint, Level::G1);
}

#[test]
fn hint_bits_are_not_the_direction() {
    // libkrun's bug: reading the page-size hint as "private". A 2M hint alone is shared.
    for hint in 0..=2 {
        assert_eq!(hc(0, 1, hint).unwrap().to, Kind::Shared);
        assert_eq!(hc(0, 1, hint | PRIVATE).unwrap().to, Kind::Private);
    }
}

#[test]
fn hypercall_malformed() {
    assert!(matches!(
        hc(0x1001, 1, 0),
        Err(RequestError::MapGpaRange(cvmem::Error::Unaligned { .. }))
    ));
    assert!(matches!(
        hc(0x1000, 0, 0),
        Err(RequestError::MapGpaRange(cvmem::Error::ZeroSize { .. }))
    ));
    // range wraps past 2^64, and npages * 4K overflows on its own
    assert!(matches!(
        hc(u64::MAX - 0xfff, 2, 0),
        Err(RequestError::MapGpaRange(cvmem::Error::Overflow { .. }))
    ));
    assert!(matches!(
        hc(0, 1 << 52, 0),
        Err(RequestError::MapGpaRange(cvmem::Error::Overflow { .. }))
    ));
    assert!(matches!(
        hc(0, u64::MAX, 0),
        Err(RequestError::MapGpaRange(cvmem::Error::Overflow { .. }))
    ));
    for bits in [1 << 5, 1 << 31, 1 << 63, PRIVATE | 1 << 6] {
        assert!(
            matches!(
                hc(0, 1, bits),
                Err(RequestError::MapGpaRange(cvmem::Error::ReservedBits { .. }))
            ),
            "{bits:#x}"
        );
    }
    for hint in 3..=15 {
        assert!(matches!(
            hc(0, 1, hint),
            Err(RequestError::MapGpaRange(cvmem::Error::InvalidHint { .. }))
        ));
    }
    assert_eq!(map_gpa_errno(hc(0x1001, 1, 0)), Errno::EINVAL);
    assert_eq!(hc(0x1001, 1, 0).unwrap_err().guest_status(), EINVAL);
}

#[test]
fn a_range_ending_at_2_pow_64_overflows_as_in_the_op_log() {
    // The op-log's rule: GPA + SIZE must fit in 64 bits. (KVM itself compares gfns and would
    // accept the very last page; no real guest has memory there.)
    assert!(matches!(
        hc(u64::MAX - 0xfff, 1, PRIVATE),
        Err(RequestError::MapGpaRange(cvmem::Error::Overflow { .. }))
    ));
    let r = hc(u64::MAX - 0x1fff, 1, PRIVATE).unwrap();
    assert_eq!(
        r.range,
        GfnRange::new(Gfn(cvmem::GFN_END - 2), Gfn(cvmem::GFN_END - 1))
    );
}

#[test]
fn unknown_hypercall() {
    for nr in [0, 11, 13, 1 << 32 | 12] {
        let e = ConversionRequest::from_hypercall(nr, &[0, 1, 0, 0, 0, 0]).unwrap_err();
        assert_eq!(e, RequestError::UnknownHypercall(nr));
        assert_eq!(e.guest_status() as i64, -1000);
    }
}

fn regs(rax: u64, rbx: u64, rcx: u64, rdx: u64) -> TransportRegs {
    TransportRegs { rax, rbx, rcx, rdx }
}

#[test]
fn port_io_valid() {
    let p = PORT_MAP_GPA;
    let r = ConversionRequest::from_port_io(
        p,
        &12u32.to_le_bytes(),
        &regs(12, 0x4000_0000, 16, PRIVATE),
    )
    .unwrap();
    assert_eq!(r.range, GfnRange::new(Gfn(0x40000), Gfn(0x40010)));
    assert_eq!((r.to, r.source), (Kind::Private, RequestSource::PortIo));
}

#[test]
fn port_io_malformed() {
    let p = PORT_MAP_GPA;
    let ok = regs(12, 0, 1, 0);
    assert_eq!(
        ConversionRequest::from_port_io(p + 1, &12u32.to_le_bytes(), &ok),
        Err(RequestError::WrongPort(p + 1))
    );
    for data in [&[12u8][..], &[12, 0], &[12, 0, 0, 0, 0, 0, 0, 0], &[]] {
        assert!(matches!(
            ConversionRequest::from_port_io(p, data, &ok),
            Err(RequestError::BadPortData { .. })
        ));
    }
    // data that does not match EAX
    assert!(matches!(
        ConversionRequest::from_port_io(p, &13u32.to_le_bytes(), &ok),
        Err(RequestError::BadPortData {
            value: 13,
            eax: 12,
            ..
        })
    ));
    // RAX's upper half makes it another hypercall number
    let e = ConversionRequest::from_port_io(p, &12u32.to_le_bytes(), &regs(1 << 32 | 12, 0, 1, 0))
        .unwrap_err();
    assert_eq!(e, RequestError::UnknownHypercall(1 << 32 | 12));
    let e =
        ConversionRequest::from_port_io(p, &11u32.to_le_bytes(), &regs(11, 0, 1, 0)).unwrap_err();
    assert_eq!(e.guest_status() as i64, -1000);
    // map-gpa rules through the transport
    for (rbx, rcx, rdx) in [
        (1, 1, 0),
        (0, 0, 0),
        (0, 1, 1 << 5),
        (0, 1, 3),
        (!0xfff_u64, 2, 0),
    ] {
        let e = ConversionRequest::from_port_io(p, &12u32.to_le_bytes(), &regs(12, rbx, rcx, rdx))
            .unwrap_err();
        assert!(
            matches!(e, RequestError::MapGpaRange(_)),
            "{rbx:#x} {rcx} {rdx:#x}"
        );
        assert_eq!(e.guest_status(), EINVAL);
    }
}

#[test]
fn memory_fault_valid() {
    let r =
        ConversionRequest::from_memory_fault(KVM_MEMORY_EXIT_FLAG_PRIVATE, 0x5000, 4096).unwrap();
    assert_eq!(r.range, GfnRange::new(Gfn(5), Gfn(6)));
    assert_eq!(
        (r.to, r.hint, r.source),
        (Kind::Private, Level::K4, RequestSource::MemoryFault)
    );
    let r = ConversionRequest::from_memory_fault(0, 0x20_0000, 0x20_0000).unwrap();
    assert_eq!((r.to, r.npages()), (Kind::Shared, 512));
    let f = cvmem::MemoryFault {
        gpa: cvmem::Gpa(0x7000),
        size: 4096,
        private: true,
    };
    assert_eq!(
        ConversionRequest::from_fault(&f).unwrap().range,
        GfnRange::new(Gfn(7), Gfn(8))
    );
}

#[test]
fn memory_fault_malformed() {
    for flags in [1, 1 << 4, 1 << 63, KVM_MEMORY_EXIT_FLAG_PRIVATE | 1] {
        assert_eq!(
            ConversionRequest::from_memory_fault(flags, 0, 4096),
            Err(RequestError::FaultFlags(flags))
        );
    }
    for size in [0, 1, 4095, 4097] {
        assert_eq!(
            ConversionRequest::from_memory_fault(0, 0, size),
            Err(RequestError::FaultSize(size))
        );
    }
    assert!(matches!(
        ConversionRequest::from_memory_fault(0, 0x800, 4096),
        Err(RequestError::MapGpaRange(cvmem::Error::Unaligned { .. }))
    ));
    assert!(matches!(
        ConversionRequest::from_memory_fault(0, u64::MAX - 0xfff, 0x2000),
        Err(RequestError::MapGpaRange(cvmem::Error::Overflow { .. }))
    ));
}
