//! Bring-your-own memory: a VMM's vm-memory regions (anonymous and file-backed) attached as
//! memslots of a detached `CvmMemory`; conversions discard the VMM's bytes exactly where they
//! changed kind, listeners hear the VMM's host addresses, and removing the slot leaves the
//! VMM's mapping alone.
#![cfg(all(target_os = "linux", feature = "vm-memory"))]

use std::fs::File;
use std::sync::{Arc, Mutex};

use cvmem::{Gpa, Kind, Level, KVM_MEMORY_ATTRIBUTE_PRIVATE};
use cvmem_kvm::{ConversionListener, CvmMemory, HostMemory, ListenerError, MemoryEvent, SlotRange};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

const GPA: u64 = 0x1_0000_0000;
const SIZE: usize = 4 << 20;

fn anonymous_region() -> Arc<GuestRegionMmap> {
    let mmap = MmapRegion::<()>::new(SIZE).unwrap();
    Arc::new(GuestRegionMmap::new(mmap, GuestAddress(GPA)).unwrap())
}

fn memfd_region() -> Arc<GuestRegionMmap> {
    // SAFETY: a fresh memfd; the name is a valid C string.
    let fd = unsafe { libc::memfd_create(c"cvmem-attach".as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: memfd_create just returned this descriptor and nothing else owns it.
    let file: File = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    file.set_len(SIZE as u64).unwrap();
    let mmap = MmapRegion::<()>::from_file(FileOffset::new(file, 0), SIZE).unwrap();
    Arc::new(GuestRegionMmap::new(mmap, GuestAddress(GPA)).unwrap())
}

#[derive(Default)]
struct Seen(Mutex<Vec<(Kind, Vec<SlotRange>)>>);

impl ConversionListener for Seen {
    fn name(&self) -> &str {
        "seen"
    }
    fn notify(&self, e: &MemoryEvent<'_>) -> Result<(), ListenerError> {
        self.0.lock().unwrap().push((e.to, e.ranges.to_vec()));
        Ok(())
    }
}

fn check(region: Arc<GuestRegionMmap>) {
    let guest = GuestMemoryMmap::from_arc_regions(vec![Arc::clone(&region)]).unwrap();
    let hva = region.as_ptr() as u64;
    let ones = vec![0xa5u8; SIZE];
    guest.write_slice(&ones, GuestAddress(GPA)).unwrap();

    let memory = CvmMemory::detached();
    let seen = Arc::new(Seen::default());
    memory.add_listener(seen.clone()).unwrap();
    let host = HostMemory::from_region(Arc::clone(&region), None).unwrap();
    assert_eq!((host.host_addr(), host.size()), (hva, SIZE as u64));
    memory.attach_slot(3, Gpa(GPA), host, Level::M2).unwrap();

    // The listener learns the VMM's own host addresses.
    {
        let events = seen.0.lock().unwrap();
        let (to, ranges) = events.last().unwrap();
        assert_eq!(*to, Kind::Shared);
        assert_eq!((ranges[0].hva, ranges[0].size()), (hva, SIZE as u64));
    }

    // Two pages become private: exactly their bytes are discarded in the VMM's mapping.
    let done = memory
        .set_attributes(Gpa(GPA + 0x10_0000), 0x2000, KVM_MEMORY_ATTRIBUTE_PRIVATE)
        .unwrap();
    assert_eq!((done.changed_pages, done.discarded_bytes), (2, 0x2000));
    let mut page = [0u8; 4096];
    for (off, want) in [
        (0x0f_f000u64, 0xa5u8),
        (0x10_0000, 0),
        (0x10_1000, 0),
        (0x10_2000, 0xa5),
    ] {
        guest
            .read_slice(&mut page, GuestAddress(GPA + off))
            .unwrap();
        assert!(
            page.iter().all(|&b| b == want),
            "page at +{off:#x} should read {want:#x}"
        );
    }
    let query = memory.query();
    assert!(query.is_private(Gpa(GPA + 0x10_1000)));
    assert!(!query.is_private(Gpa(GPA + 0x10_2000)));

    // Removing the slot hands the memory back: the VMM's mapping still works.
    memory.remove_slot(3).unwrap();
    drop(memory);
    guest.write_slice(&ones[..4096], GuestAddress(GPA)).unwrap();
    guest.read_slice(&mut page, GuestAddress(GPA)).unwrap();
    assert_eq!(page[0], 0xa5);
}

#[test]
fn anonymous_region_is_discarded_with_madvise() {
    check(anonymous_region());
}

#[test]
fn file_backed_region_is_discarded_by_punching_its_file() {
    // MADV_DONTNEED would leave a shared file mapping's bytes in place; the check above fails
    // unless the memfd is punched.
    check(memfd_region());
}

#[test]
fn attached_memory_is_checked_before_anything_changes() {
    let memory = CvmMemory::detached();
    // SAFETY: the address is never touched: the request is refused as unaligned first.
    let unaligned = unsafe { HostMemory::from_raw_parts(0x1234, 4096, None, None) };
    assert!(unaligned.is_err());
    // A slot whose gpa KVM refuses leaves the memory with the caller (dropped, not unmapped).
    let region = anonymous_region();
    let host = HostMemory::from_region(Arc::clone(&region), None).unwrap();
    assert!(memory.attach_slot(0, Gpa(0x1001), host, Level::M2).is_err());
    assert!(!memory.query().has_slot(0));
    let host = HostMemory::from_region(Arc::clone(&region), None).unwrap();
    memory.attach_slot(0, Gpa(GPA), host, Level::M2).unwrap();
    let again = HostMemory::from_region(region, None).unwrap();
    assert!(memory.attach_slot(0, Gpa(0), again, Level::M2).is_err());
}

fn memfd(size: usize) -> File {
    // SAFETY: a fresh memfd; the name is a valid C string.
    let fd = unsafe { libc::memfd_create(c"cvmem-gmem-stand-in".as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: memfd_create just returned this descriptor and nothing else owns it.
    let file: File = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    file.set_len(size as u64).unwrap();
    file
}

#[test]
fn an_attach_is_checked_against_what_it_is_told() {
    let memory = CvmMemory::detached();
    // Placed at a GPA by its owner; attached at another gpa than the region's own: EINVAL,
    // nothing attached.
    let region = anonymous_region();
    let host = HostMemory::from_region(Arc::clone(&region), None).unwrap();
    let e = memory.attach_slot(1, Gpa(0), host, Level::M2).unwrap_err();
    assert_eq!(e.errno_name(), "EINVAL", "{e}");
    assert!(memory.query().snapshot().slots.is_empty());
    // Where it belongs: attached.
    let host = HostMemory::from_region(Arc::clone(&region), None).unwrap();
    memory.attach_slot(1, Gpa(GPA), host, Level::M2).unwrap();
    // The same id again: EEXIST.
    let other = anonymous_region();
    let host = HostMemory::from_region(other, None).unwrap();
    let e = memory
        .attach_slot(1, Gpa(GPA), host, Level::M2)
        .unwrap_err();
    assert!(matches!(e, cvmem_kvm::Error::SlotExists { slot: 1 }), "{e}");
    assert_eq!(e.errno_name(), "EEXIST");
    // The same memory under another id: EEXIST (a conversion of one would discard the other).
    // SAFETY: the region stays mapped for the test (`region` is alive).
    let alias = unsafe {
        HostMemory::from_raw_parts(region.as_ptr() as u64, SIZE as u64, None, None).unwrap()
    };
    let e = memory
        .attach_slot(2, Gpa(GPA + SIZE as u64), alias, Level::M2)
        .unwrap_err();
    assert!(
        matches!(e, cvmem_kvm::Error::AlreadyAttached { slot: 1 }),
        "{e}"
    );
    assert_eq!(memory.query().snapshot().slots.len(), 1);
}

/// A memfd of `len` bytes (a stand-in guest_memfd) mapped from offset 0 as a region at GPA,
/// and claimed in place at `claimed_offset`.
fn mapped_memfd(len: usize, claimed_offset: u64) -> (Arc<GuestRegionMmap>, cvmem_kvm::GuestMemfd) {
    let file = memfd(len);
    let mmap =
        MmapRegion::<()>::from_file(FileOffset::new(file.try_clone().unwrap(), 0), SIZE).unwrap();
    let region = Arc::new(GuestRegionMmap::new(mmap, GuestAddress(GPA)).unwrap());
    let gmem = cvmem_kvm::GuestMemfd {
        file,
        offset: claimed_offset,
        in_place: true,
    };
    (region, gmem)
}

#[test]
fn an_in_place_guest_memfd_must_be_what_is_mapped() {
    use cvmem_kvm::GuestMemfd;
    let memory = CvmMemory::detached();
    // Anonymous memory claimed to be an in-place mapping of a (stand-in) guest_memfd: EINVAL.
    let region = anonymous_region();
    let gmem = GuestMemfd {
        file: memfd(SIZE),
        offset: 0,
        in_place: true,
    };
    let host = HostMemory::from_region(region, Some(gmem)).unwrap();
    let e = memory
        .attach_slot(1, Gpa(GPA), host, Level::M2)
        .unwrap_err();
    assert_eq!(e.errno_name(), "EINVAL", "{e}");
    assert!(e.to_string().contains("in_place"), "{e}");
    // The file really mapped there, at another offset than claimed: EINVAL too.
    let (region, gmem) = mapped_memfd(2 * SIZE, SIZE as u64);
    let host = HostMemory::from_region(region, Some(gmem)).unwrap();
    let e = memory
        .attach_slot(1, Gpa(GPA), host, Level::M2)
        .unwrap_err();
    assert_eq!(e.errno_name(), "EINVAL", "{e}");
    assert!(memory.query().snapshot().slots.is_empty());
    // Mapped at the offset claimed: attached.
    let (region, gmem) = mapped_memfd(SIZE, 0);
    let host = HostMemory::from_region(region, Some(gmem)).unwrap();
    memory.attach_slot(1, Gpa(GPA), host, Level::M2).unwrap();
}

#[test]
fn guest_memory_with_a_dirty_bitmap_attaches_region_by_region() {
    use vm_memory::bitmap::AtomicBitmap;
    // A cloud-hypervisor-style guest memory: two regions with dirty bitmaps.
    let guest = GuestMemoryMmap::<AtomicBitmap>::from_ranges(&[
        (GuestAddress(0), SIZE),
        (GuestAddress(GPA), SIZE),
    ])
    .unwrap();
    let memory = CvmMemory::detached();
    for (slot, start) in [(0, 0), (1, GPA)] {
        let host = HostMemory::from_guest_memory(&guest, GuestAddress(start), None).unwrap();
        assert_eq!(host.guest_addr(), Some(start));
        memory
            .attach_slot(slot, Gpa(start), host, Level::M2)
            .unwrap();
    }
    // No region starts there: refused.
    assert!(HostMemory::from_guest_memory(&guest, GuestAddress(0x1000), None).is_err());
    // A region with a bitmap, handed over as an Arc.
    let mmap = MmapRegion::<AtomicBitmap>::new(SIZE).unwrap();
    let region = Arc::new(GuestRegionMmap::new(mmap, GuestAddress(2 * GPA)).unwrap());
    let host = HostMemory::from_region(region, None).unwrap();
    memory
        .attach_slot(2, Gpa(2 * GPA), host, Level::M2)
        .unwrap();
    memory
        .set_attributes(Gpa(GPA), 0x2000, KVM_MEMORY_ATTRIBUTE_PRIVATE)
        .unwrap();
    assert_eq!(memory.query().snapshot().slots.len(), 3);
    assert_eq!(memory.query().snapshot().slots[1].private_bytes, 0x2000);
}

/// A VM on this host's /dev/kvm, or `None` (printed) where there is none.
fn vm() -> Option<Arc<kvm_ioctls::VmFd>> {
    let kvm = match kvm_ioctls::Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("skipped: open /dev/kvm: {e}");
            return None;
        }
    };
    if !kvm.check_extension(kvm_ioctls::Cap::UserMemory2) {
        eprintln!("skipped: KVM lacks KVM_CAP_USER_MEMORY2");
        return None;
    }
    match kvm.create_vm() {
        Ok(vm) => Some(Arc::new(vm)),
        Err(e) => {
            eprintln!("skipped: KVM_CREATE_VM: {e}");
            None
        }
    }
}

/// Creates KVM memslot `slot` over `region` at its guest address, as a VMM's memory manager
/// does; the errno on failure.
fn kvm_slot(vm: &kvm_ioctls::VmFd, slot: u32, region: &GuestRegionMmap) -> Result<(), i32> {
    let r = kvm_bindings::kvm_userspace_memory_region {
        slot,
        flags: 0,
        guest_phys_addr: GPA,
        memory_size: SIZE as u64,
        userspace_addr: region.as_ptr() as u64,
    };
    // SAFETY: `region` stays mapped until the end of the test, after the VM is gone.
    unsafe { vm.set_user_memory_region(r) }.map_err(|e| e.errno())
}

#[test]
fn an_adopted_slot_is_the_vmms_in_kvm() {
    let Some(vm) = vm() else { return };
    let region = anonymous_region();
    // The VMM's memory manager created slot 0 itself.
    kvm_slot(&vm, 0, &region).unwrap();
    let memory = CvmMemory::new(Arc::clone(&vm));
    let host = HostMemory::from_region(Arc::clone(&region), None).unwrap();
    memory.adopt_slot(0, Gpa(GPA), host, Level::M2).unwrap();
    memory
        .set_attributes(Gpa(GPA), 0x1000, KVM_MEMORY_ATTRIBUTE_PRIVATE)
        .unwrap();
    assert!(memory.query().is_private(Gpa(GPA)));
    // Forgotten by cvmem, still in KVM: another slot over the same range is EEXIST there.
    memory.remove_slot(0).unwrap();
    assert_eq!(kvm_slot(&vm, 1, &region), Err(libc::EEXIST));
    // An attached slot, by contrast, is cvmem's: removing it deletes it from KVM.
    let other = anonymous_region();
    let vm2 = match self::vm() {
        Some(v) => v,
        None => return,
    };
    let memory = CvmMemory::new(Arc::clone(&vm2));
    let host = HostMemory::from_region(Arc::clone(&other), None).unwrap();
    memory.attach_slot(0, Gpa(GPA), host, Level::M2).unwrap();
    memory.remove_slot(0).unwrap();
    assert_eq!(kvm_slot(&vm2, 1, &other), Ok(()));
}
