//! The kernel as oracle: op-log operations applied to a real KVM with nothing of cvmem's rules in
//! between, so that `cvmem kvm-diff` can put every line's outcome next to the core's.
//!
//! `memslot`, `attrs` and `map-gpa` become the raw ioctls (KVM_SET_USER_MEMORY_REGION2 with a
//! guest_memfd for `guest-memfd` slots, KVM_SET_MEMORY_ATTRIBUTES) and report KVM's errno.
//! `query` is answered by KVM itself: the page's leaf is zapped (its attribute toggled and
//! restored), then KVM_PRE_FAULT_MEMORY maps it as a fault of the page's own kind would — ENOENT
//! outside memslots, EFAULT where KVM would exit with a memory fault — and the VM's binary
//! statistics (`pages_4k`, `pages_2m`, `pages_1g`) say at which level it did. The MMU
//! operations (`fault`, `fault-range`, `accept`, `mmu`) have no kernel counterpart here.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use cvmem::{
    Access, AttrStore, Gfn, GfnRange, Gpa, Level, MapGpaRange, MaxLevel, MemoryFault, MemoryRegion,
    SlotChange, KVM_MEMORY_ATTRIBUTE_PRIVATE, PAGE_SIZE,
};
use cvmem_oplog::Executor;
use kvm_bindings::kvm_memory_attributes;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use crate::caps::{HostCaps, KVM_X86_SW_PROTECTED_VM};
use crate::error::{Error, Result};
use crate::sys;
use cvmem_kvm::{Backing, HostMemory};

/// A memslot as KVM has it, with the host memory behind it.
struct KernelSlot {
    mem: Option<HostMemory>,
    /// The host pages behind the shared memory, as the op-log's `backing=` asked for them.
    pages: HostPages,
    /// The `uaddr` the op-log gave (or the gpa): a later request naming another one must reach
    /// KVM as another host address.
    uaddr: u64,
    size: u64,
    /// Where KVM has it now, and whether it logs dirty pages.
    gpa: u64,
    dirty_log: bool,
}

/// The host pages behind a slot's shared memory: what bounds KVM's mapping level beside the
/// attributes (KVM maps no larger than the host's own page at that address).
#[derive(Default)]
struct HostPages {
    /// The op-log's `backing=`: 4K → `MADV_NOHUGEPAGE`, 2M → `MADV_HUGEPAGE` (THP), 1G →
    /// hugetlbfs 1G pages where the kernel has them free, THP elsewhere.
    backing: Option<Level>,
    /// Host address of the shared memory's first byte (0 without memory).
    host_addr: u64,
    /// Host addresses of the 1 GiB chunks backed by hugetlbfs 1G pages.
    hugetlb_1g: Vec<u64>,
}

/// Why KVM maps a page smaller than the core allows, where that is the host memory's doing and
/// not cvmem's: documented caps, counted apart from differences.
pub(crate) const CAP_PRIVATE_4K: &str =
    "private memory: guest_memfd folios are 4K (Linux 6.12 and 7.3 have no huge folios)";
/// See [`CAP_PRIVATE_4K`].
pub(crate) const CAP_NO_THP: &str = "shared memory: transparent huge pages are off in this kernel";
/// See [`CAP_PRIVATE_4K`].
pub(crate) const CAP_NO_1G_PAGE: &str =
    "backing=1G: no free hugetlbfs 1G page for this chunk, so THP (2M) backs it";

/// Whether the kernel gives transparent huge pages to `MADV_HUGEPAGE` memory (read once).
fn thp_available() -> bool {
    static THP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *THP.get_or_init(|| {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|s| !s.contains("[never]"))
    })
}

impl HostPages {
    /// Puts the pages `backing` asks for behind `mem` (before KVM sees it). Advice the kernel
    /// refuses and 1G pages it does not have leave smaller pages, which
    /// [`KernelVm::host_limit`] reports.
    fn new(mem: &HostMemory, backing: Level) -> Self {
        const G1: u64 = 1 << 30;
        let (addr, len) = (mem.host_addr(), mem.size());
        let advice = match backing {
            Level::K4 => libc::MADV_NOHUGEPAGE,
            _ => libc::MADV_HUGEPAGE,
        };
        let _ = sys::advise(addr, len, advice);
        let mut hugetlb_1g = Vec::new();
        if backing == Level::G1 {
            let mut chunk = addr.next_multiple_of(G1);
            while chunk + G1 <= addr + len {
                if sys::map_hugetlb_1g(chunk).is_ok() {
                    hugetlb_1g.push(chunk);
                }
                chunk += G1;
            }
        }
        HostPages {
            backing: Some(backing),
            host_addr: addr,
            hugetlb_1g,
        }
    }
}

/// The offsets of `pages_4k`, `pages_2m` and `pages_1g` in the VM's binary statistics.
struct LeafStats {
    file: File,
    offsets: [u64; 3],
}

impl LeafStats {
    /// Reads the statistics header and finds the three counters.
    fn open(vm: &VmFd) -> Result<Self> {
        let file = sys::stats_fd(vm).map_err(|e| Error::os("KVM_GET_STATS_FD", e))?;
        let read = |off: u64, len: usize| -> Result<Vec<u8>> {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, off)
                .map_err(|e| Error::os("read KVM statistics", e))?;
            Ok(buf)
        };
        let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        // struct kvm_stats_header: flags, name_size, num_desc, id_offset, desc_offset, data_offset.
        let h = read(0, 24)?;
        let (name_size, num_desc) = (u32_at(&h, 4) as usize, u32_at(&h, 8) as usize);
        let (desc_offset, data_offset) = (u64::from(u32_at(&h, 16)), u64::from(u32_at(&h, 20)));
        // struct kvm_stats_desc: flags, exponent + size, offset, bucket_size, then the name.
        let desc_len = 16 + name_size;
        let descs = read(desc_offset, desc_len * num_desc)?;
        let mut offsets = [u64::MAX; 3];
        for d in descs.chunks_exact(desc_len) {
            let name = &d[16..];
            let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
            let at = data_offset + u64::from(u32_at(d, 8));
            match name {
                b"pages_4k" => offsets[0] = at,
                b"pages_2m" => offsets[1] = at,
                b"pages_1g" => offsets[2] = at,
                _ => {}
            }
        }
        if offsets.contains(&u64::MAX) {
            return Err(Error::missing("pages_4k/2m/1g statistics"));
        }
        Ok(LeafStats { file, offsets })
    }

    /// Leaves per level (4K, 2M, 1G) in the VM's page tables now.
    fn leaves(&self) -> Result<[u64; 3]> {
        let mut out = [0u64; 3];
        for (o, &off) in out.iter_mut().zip(&self.offsets) {
            let mut b = [0u8; 8];
            self.file
                .read_exact_at(&mut b, off)
                .map_err(|e| Error::os("read KVM statistics", e))?;
            *o = u64::from_le_bytes(b);
        }
        Ok(out)
    }
}

/// A SW_PROTECTED VM driven by op-log lines, answering as the kernel does.
pub struct KernelVm {
    vcpu: VcpuFd,
    stats: LeafStats,
    slots: HashMap<u32, KernelSlot>,
    /// What KVM was told the attributes are (the kernel has no GET): only to restore a page's
    /// attribute after the toggle that zaps its leaf, never to decide an answer.
    told: AttrStore,
    /// The op-log's guest_memfd files (v2 `gmem` lines), in creation order.
    files: Vec<File>,
    vm: Arc<VmFd>,
}

impl KernelVm {
    /// A SW_PROTECTED VM with one vCPU; `MissingCapability` where KVM has no such VM type,
    /// no memory attributes or no KVM_PRE_FAULT_MEMORY.
    pub fn new() -> Result<Self> {
        let kvm = Kvm::new().map_err(|e| Error::kvm("open /dev/kvm", e))?;
        let (_, vm_type) = HostCaps::vm_type_of(&kvm);
        if vm_type != KVM_X86_SW_PROTECTED_VM {
            return Err(Error::missing("KVM_X86_SW_PROTECTED_VM"));
        }
        let vm = Arc::new(
            kvm.create_vm_with_type(vm_type)
                .map_err(|e| Error::kvm("KVM_CREATE_VM", e))?,
        );
        if HostCaps::of(&vm).memory_attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE == 0 {
            return Err(Error::missing("KVM_CAP_MEMORY_ATTRIBUTES"));
        }
        let vcpu = vm
            .create_vcpu(0)
            .map_err(|e| Error::kvm("KVM_CREATE_VCPU", e))?;
        Ok(KernelVm {
            vcpu,
            stats: LeafStats::open(&vm)?,
            slots: HashMap::new(),
            told: AttrStore::new(),
            files: Vec::new(),
            vm,
        })
    }

    fn set_region(&self, region: kvm_bindings::kvm_userspace_memory_region2) -> Result<()> {
        sys::set_user_memory_region2(&self.vm, region)
            .map_err(|e| Error::kvm("KVM_SET_USER_MEMORY_REGION2", e))
    }

    fn set_kvm_attributes(&self, gpa: u64, size: u64, attributes: u64) -> Result<()> {
        self.vm
            .set_memory_attributes(kvm_memory_attributes {
                address: gpa,
                size,
                attributes,
                flags: 0,
            })
            .map_err(|e| Error::kvm("KVM_SET_MEMORY_ATTRIBUTES", e))
    }

    /// Whether this VM's guest_memfd takes `GUEST_MEMFD_FLAG_MMAP` (`KVM_CAP_GUEST_MEMFD_FLAGS`).
    pub fn gmem_mmap(&self) -> bool {
        let flags = self
            .vm
            .check_extension_raw(u64::from(cvmem_kvm::KVM_CAP_GUEST_MEMFD_FLAGS));
        flags > 0 && (flags as u64) & cvmem_kvm::GUEST_MEMFD_FLAG_MMAP != 0
    }

    /// A slot KVM accepts needs host memory; one it must refuse (unaligned, too large, past the
    /// address space) is passed on without any, so that KVM, not an mmap, says why.
    fn memory_for(&self, r: &MemoryRegion) -> Option<(HostMemory, HostPages)> {
        let plausible = r.size % PAGE_SIZE == 0
            && r.gpa.is_aligned(cvmem::Level::K4)
            && r.size / PAGE_SIZE <= cvmem::MAX_SLOT_PAGES
            && r.gpa.checked_add(r.size).is_some()
            && r.new_slot_uaddr() % PAGE_SIZE == 0;
        let backing = if r.flags.guest_memfd {
            Backing::GuestMemfdSeparate
        } else {
            Backing::Anonymous
        };
        plausible
            .then(|| {
                HostMemory::allocate(
                    Some(&self.vm),
                    backing,
                    r.size,
                    r.new_slot_uaddr(),
                    Level::G1,
                )
                .ok()
            })
            .flatten()
            .map(|mem| {
                let pages = HostPages::new(&mem, r.new_slot_backing());
                (mem, pages)
            })
    }

    /// The largest level the host memory behind `gpa` lets KVM map an access of kind
    /// `private` with, and why, where that is below what the op-log's slot asked for (its
    /// `backing=`, which the core honours itself); `None` where the host gives all of it.
    pub fn host_limit(&self, gpa: Gpa, private: bool) -> Option<(Level, &'static str)> {
        let slot = self
            .slots
            .values()
            .find(|s| (s.gpa..s.gpa + s.size).contains(&gpa.0))?;
        if private {
            return Some((Level::K4, CAP_PRIVATE_4K));
        }
        let asked = slot.pages.backing?;
        if asked > Level::K4 && !thp_available() {
            return Some((Level::K4, CAP_NO_THP));
        }
        let hva = slot.pages.host_addr + (gpa.0 - slot.gpa);
        let chunk = hva & !((1 << 30) - 1);
        (asked == Level::G1 && !slot.pages.hugetlb_1g.contains(&chunk))
            .then_some((Level::M2, CAP_NO_1G_PAGE))
    }
}

impl Executor for KernelVm {
    type Error = Error;

    fn errno(error: &Error) -> &'static str {
        error.errno_name()
    }

    fn memslot(&mut self, r: &MemoryRegion) -> Result<SlotChange> {
        let flag = |on: bool, bit: u32| if on { bit } else { 0 };
        let flags = flag(r.flags.guest_memfd, kvm_bindings::KVM_MEM_GUEST_MEMFD)
            | flag(r.flags.dirty_log, kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES)
            | flag(r.flags.readonly, kvm_bindings::KVM_MEM_READONLY);
        let Some(old) = self.slots.get(&r.slot) else {
            let (mem, pages) = (r.size != 0).then(|| self.memory_for(r)).flatten().unzip();
            let mut region = kvm_bindings::kvm_userspace_memory_region2 {
                slot: r.slot,
                flags,
                guest_phys_addr: r.gpa.0,
                memory_size: r.size,
                userspace_addr: r.new_slot_uaddr(),
                ..Default::default()
            };
            if let Some(m) = &mem {
                let base = m.user_memory_region(r.slot, r.gpa.0, r.flags);
                region.userspace_addr = base.userspace_addr;
                region.guest_memfd = base.guest_memfd;
            }
            // A v2 binding: the op-log's file at its offset (an unknown file is fd -1, for
            // KVM to refuse), whatever the flags say — KVM itself ignores it without
            // KVM_MEM_GUEST_MEMFD.
            if let Some(b) = r.gmem {
                use std::os::fd::AsRawFd;
                region.guest_memfd = self
                    .files
                    .get(b.gmem.0 as usize)
                    .map_or(u32::MAX, |f| f.as_raw_fd() as u32);
                region.guest_memfd_offset = b.offset.0;
            }
            self.set_region(region)?;
            self.slots.insert(
                r.slot,
                KernelSlot {
                    mem,
                    pages: pages.unwrap_or(HostPages {
                        backing: Some(r.new_slot_backing()),
                        ..HostPages::default()
                    }),
                    uaddr: r.new_slot_uaddr(),
                    size: r.size,
                    gpa: r.gpa.0,
                    dirty_log: r.flags.dirty_log,
                },
            );
            return Ok(SlotChange::Created);
        };
        // An existing slot: the same host memory, unless the request names another address.
        let (hva, gmem) = match &old.mem {
            Some(m) => {
                let base = m.user_memory_region(r.slot, r.gpa.0, r.flags);
                (base.userspace_addr, base.guest_memfd)
            }
            None => (old.uaddr, 0),
        };
        // Another `uaddr=` or another `backing=` is other host memory: another address, which
        // KVM refuses for a live slot and ignores for a delete.
        let other_backing = r.backing.is_some_and(|b| Some(b) != old.pages.backing);
        let delta = match r.uaddr {
            Some(u) => u.wrapping_sub(old.uaddr),
            None => 0,
        };
        let hva = other_host_address(hva, delta, other_backing);
        let old_range = GfnRange::covering(Gpa(old.gpa), old.size);
        let (old_gpa, old_dirty_log) = (old.gpa, old.dirty_log);
        self.set_region(kvm_bindings::kvm_userspace_memory_region2 {
            slot: r.slot,
            flags,
            guest_phys_addr: r.gpa.0,
            memory_size: r.size,
            userspace_addr: hva,
            guest_memfd: gmem,
            ..Default::default()
        })?;
        if r.size == 0 {
            self.slots.remove(&r.slot);
            return Ok(SlotChange::Deleted { old: old_range });
        }
        if let Some(s) = self.slots.get_mut(&r.slot) {
            (s.gpa, s.dirty_log) = (r.gpa.0, r.flags.dirty_log);
        }
        Ok(if r.gpa != Gpa(old_gpa) {
            SlotChange::Moved { old: old_range }
        } else if r.flags.dirty_log != old_dirty_log {
            SlotChange::DirtyLog {
                enabled: r.flags.dirty_log,
            }
        } else {
            SlotChange::Unchanged
        })
    }

    fn set_attributes(&mut self, gpa: Gpa, size: u64, attributes: u64) -> Result<()> {
        self.set_kvm_attributes(gpa.0, size, attributes)?;
        // KVM accepted the range, so it is page aligned and inside the gfn space.
        let range = GfnRange::from_len(gpa.gfn(), size / PAGE_SIZE);
        self.told.set(range, attributes)?;
        Ok(())
    }

    fn map_gpa(&mut self, request: &MapGpaRange) -> Result<()> {
        self.set_attributes(request.gpa, request.size(), request.attributes())
    }

    /// `KVM_CREATE_GUEST_MEMFD` as the line asks: `mmap` and `init-shared` as their flags, and
    /// a HugeTLB folio size as a flag bit no kernel up to 7.3 knows, so that KVM says EINVAL
    /// itself.
    fn create_gmem(
        &mut self,
        size: u64,
        flags: cvmem::GmemFlags,
        _merge: Option<cvmem::MergePolicy>,
    ) -> Result<cvmem::GmemId> {
        let flag = |on: bool, bit: u64| if on { bit } else { 0 };
        let bits = flag(flags.mmap, cvmem_kvm::GUEST_MEMFD_FLAG_MMAP)
            | flag(flags.init_shared, cvmem_kvm::GUEST_MEMFD_FLAG_INIT_SHARED)
            | flag(flags.folio != Level::K4, 1 << 63);
        let file = cvmem_kvm::create_guest_memfd(&self.vm, size, bits)?;
        self.files.push(file);
        Ok(cvmem::GmemId(self.files.len() as u32 - 1))
    }

    /// KVM's answer for an access of the page's own kind (a SW_PROTECTED VM's accesses are of
    /// the kind the attribute says), whatever `access` the line names.
    fn query(&mut self, gpa: Gpa, access: Access) -> Result<MaxLevel> {
        let page = Gpa(gpa.0 & !(PAGE_SIZE - 1));
        let own = self.told.get(page.gfn());
        // Zap whatever leaf maps the page: KVM zaps every leaf over a range whose attributes
        // change, and restoring them recomputes the large pages' MIXED state exactly.
        let other = own ^ KVM_MEMORY_ATTRIBUTE_PRIVATE;
        if self.set_kvm_attributes(page.0, PAGE_SIZE, other).is_ok() {
            self.set_kvm_attributes(page.0, PAGE_SIZE, own)?;
        }
        let before = self.stats.leaves()?;
        let result = sys::pre_fault_memory(&self.vcpu, page.0, PAGE_SIZE);
        let after = self.stats.leaves()?;
        match result {
            Ok(()) => {
                let level = [Level::G1, Level::M2, Level::K4]
                    .into_iter()
                    .find(|l| after[l.index()] > before[l.index()])
                    .unwrap_or(Level::K4);
                Ok(MaxLevel::Level(level))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(MaxLevel::NoSlot),
            Err(e) if e.raw_os_error() == Some(libc::EFAULT) => {
                Ok(MaxLevel::MemoryFault(MemoryFault {
                    gpa: page,
                    size: PAGE_SIZE,
                    private: own != 0 || access.is_private(),
                }))
            }
            Err(e) => Err(Error::os("KVM_PRE_FAULT_MEMORY", e)),
        }
    }
}

/// The host address KVM is given for an existing slot whose op-log line moves its host memory
/// by `delta` bytes (or names `other_backing`): `hva` itself when neither, else another
/// address inside the user address space with the same offset within a page (so that an
/// unaligned `uaddr=` stays unaligned). The op-log's addresses are of an abstract host; a raw
/// offset could leave this process's address space, which KVM refuses even for a delete.
fn other_host_address(hva: u64, delta: u64, other_backing: bool) -> u64 {
    const SPAN: u64 = 1 << 40;
    let moved = match delta % SPAN {
        0 if delta == 0 && !other_backing => return hva,
        0 => 1 << 30,
        d => d,
    };
    if hva > moved + PAGE_SIZE {
        hva - moved
    } else {
        hva + moved
    }
}

/// The gfn's attribute as KVM was told it (for callers comparing answers).
impl KernelVm {
    /// Whether KVM was last told `gfn` is private.
    pub fn told_private(&self, gfn: Gfn) -> bool {
        self.told.is_private(gfn)
    }
}
