//! The VM: a [`Tracker`] and the TDP MMU model that follows it.

use alloc::vec::Vec;
use core::fmt;

use crate::addr::{Gfn, GfnRange, Gpa, Level, GFN_END};
use crate::error::Result;
use crate::tracker::{Access, Tracker};

use super::accept::{AcceptLog, AcceptPolicy};
use super::tree::{Leaf, Trees};

/// The GPA bit that selects the shared alias in a TDX guest (`GPA | shared bit`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SharedBit {
    /// Bit 47: a guest physical address width of 48 bits, 4-level EPT.
    #[default]
    Bit47,
    /// Bit 51: a guest physical address width of 52 bits, 5-level EPT.
    Bit51,
}

impl SharedBit {
    /// The bit number.
    pub const fn bit(self) -> u32 {
        match self {
            SharedBit::Bit47 => 47,
            SharedBit::Bit51 => 51,
        }
    }
    /// The mask `1 << bit`.
    pub const fn mask(self) -> u64 {
        1 << self.bit()
    }
}

/// The page-table layout of the TDP MMU model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// TDX-like: a private root (the mirror of the Secure EPT) and a shared root, walked at the
    /// shared alias `GPA | shared bit`.
    Split {
        /// The shared bit.
        shared_bit: SharedBit,
    },
    /// SNP-like (and software-protected VMs): one root whose leaves record private or shared.
    Unified,
}

impl Layout {
    /// `split` with the shared bit at 47, the op-log's `mmu split`.
    pub const SPLIT: Layout = Layout::Split {
        shared_bit: SharedBit::Bit47,
    };

    /// The op-log keyword: `split` or `unified`.
    pub const fn name(self) -> &'static str {
        match self {
            Layout::Split { .. } => "split",
            Layout::Unified => "unified",
        }
    }
    /// Whether the layout has two roots.
    pub const fn is_split(self) -> bool {
        matches!(self, Layout::Split { .. })
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The hugepage recovery policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Recovery {
    /// Leaves never become larger: a fault maps at most at the largest level whose range holds
    /// no leaf of its kind yet.
    Off,
    /// A fault maps at the level the tracker allows, replacing the smaller leaves of that range
    /// (KVM replaces a lower table with a huge leaf).
    #[default]
    OnFault,
    /// As `OnFault`, and after every operation each 2M, then 1G, region that the tracker allows
    /// at that level and whose every page is mapped by smaller leaves of one kind is collapsed
    /// into one leaf (as TDX PROMOTE would).
    Eager,
}

impl Recovery {
    /// The op-log keyword: `off`, `on-fault` or `eager`.
    pub const fn name(self) -> &'static str {
        match self {
            Recovery::Off => "off",
            Recovery::OnFault => "on-fault",
            Recovery::Eager => "eager",
        }
    }
    /// Parses `off`, `on-fault` or `eager`.
    pub fn from_name(s: &str) -> Option<Recovery> {
        match s {
            "off" => Some(Recovery::Off),
            "on-fault" => Some(Recovery::OnFault),
            "eager" => Some(Recovery::Eager),
            _ => None,
        }
    }
}

impl fmt::Display for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Event counters of the MMU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub(crate) splits: u64,
    pub(crate) demotes: u64,
    pub(crate) psmash: u64,
    pub(crate) zaps: u64,
    pub(crate) collapses: u64,
    pub(crate) replaced: u64,
    pub(crate) retries: u64,
    pub(crate) faults: u64,
}

/// An open invalidation window of a conversion in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    pub(crate) id: u64,
    /// The changing range widened to the 1G pages that hold its head and tail.
    pub(crate) range: GfnRange,
    /// Eager recovery skipped a complete region inside the window while it was open (another
    /// operation made it collapsible): the whole window is recovered when it closes.
    pub(crate) deferred: bool,
}

/// A confidential VM's memory: attributes, memslots and large-page info (the [`Tracker`]) and
/// the TDP MMU's page tables that follow them.
///
/// Every operation updates the tracker and the page tables in KVM's order (zap first, then
/// attributes) and leaves the tables consistent: no leaf maps a page whose attributes differ
/// from its kind, spans two attributes or two memslots, or exceeds the level the tracker
/// allows; no empty table is left behind. See [`Vm::check_invariants`].
///
/// ```
/// use cvmem::mmu::{FaultOutcome, Layout, Recovery, Vm};
/// use cvmem::{Access, Gpa, Level, MemoryRegion, SlotFlags, KVM_MEMORY_ATTRIBUTE_PRIVATE};
///
/// let mut vm = Vm::new(Layout::SPLIT, Recovery::Eager);
/// let gmem = SlotFlags { guest_memfd: true, ..Default::default() };
/// vm.set_user_memory_region(&MemoryRegion { slot: 0, gpa: Gpa(0), size: 1 << 30, flags: gmem, ..Default::default() })?;
/// vm.set_memory_attributes(Gpa(0), 1 << 30, KVM_MEMORY_ATTRIBUTE_PRIVATE)?;
/// assert_eq!(vm.fault(Gpa(0x1000), Access::Private)?, FaultOutcome::Mapped { level: Level::G1 });
/// vm.set_memory_attributes(Gpa(0x200000), 4096, 0)?; // split 1G -> 2M -> 4K, zap one page
/// let stats = vm.stats();
/// assert_eq!((stats.splits, stats.zaps), (2, 1));
/// assert_eq!(stats.private.g1 + stats.private.m2 + stats.private.k4, 511 + 511);
/// # Ok::<(), cvmem::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Vm {
    pub(crate) tracker: Tracker,
    pub(crate) trees: Trees,
    pub(crate) layout: Layout,
    pub(crate) recovery: Recovery,
    pub(crate) accept_policy: AcceptPolicy,
    pub(crate) accepted: AcceptLog,
    pub(crate) windows: Vec<Window>,
    pub(crate) next_window: u64,
    /// Unique among the VMs of this process: a [`super::Conversion`] carries it, so a token of
    /// one VM can never close a window of another (window ids alone are per-VM counters). A
    /// clone keeps it: it is a fork of the same VM, with the same open windows.
    pub(crate) brand: u64,
    pub(crate) counters: Counters,
}

/// The next VM's brand. Relaxed is enough: only uniqueness matters, not order.
static NEXT_BRAND: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

impl Vm {
    /// An empty VM (no memslots, every page shared) with this layout and recovery policy, and
    /// the one-way GUEST_INHIBIT accept policy of the TDX huge page series.
    pub fn new(layout: Layout, recovery: Recovery) -> Self {
        let nroots = if layout.is_split() { 2 } else { 1 };
        let depth = Self::min_depth(layout);
        // Two tables: if even that fails, allocation would have failed anywhere.
        let trees = Trees::new(nroots, depth).expect("allocating two root tables");
        Vm {
            tracker: Tracker::new(),
            trees,
            layout,
            recovery,
            accept_policy: AcceptPolicy::default(),
            accepted: AcceptLog::default(),
            windows: Vec::new(),
            next_window: 0,
            brand: NEXT_BRAND.fetch_add(1, core::sync::atomic::Ordering::Relaxed),
            counters: Counters::default(),
        }
    }

    /// The same VM with another accept policy (see [`AcceptPolicy`]); set it before the first
    /// `accept`.
    pub fn with_accept_policy(mut self, policy: AcceptPolicy) -> Self {
        self.accept_policy = policy;
        self
    }

    /// The same VM with a guest-physical address width (see [`Tracker::with_gpa_bits`]); set it
    /// before creating memslots.
    pub fn with_gpa_bits(mut self, bits: u32) -> Self {
        self.tracker = self.tracker.with_gpa_bits(bits);
        self
    }

    /// The attribute and memslot tracker (read only: change it through the VM).
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// The layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The recovery policy.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// The accept policy.
    pub fn accept_policy(&self) -> AcceptPolicy {
        self.accept_policy
    }

    /// Heap bytes held by the model: the tracker plus the arena of table pages (4 KiB of
    /// entries and a few bytes of metadata per table, free ones included).
    pub fn heap_bytes(&self) -> usize {
        self.tracker.heap_bytes() + self.trees.tables.heap_bytes()
    }

    /// Levels of page tables: 4 while every memslot lies below 2^48, else 5 (and 5 from the
    /// start with the shared bit at 51, as TDX with a 52-bit GPA width). Memslots above 2^57,
    /// which no x86 CPU can map (KVM refuses them), get a model-only sixth level so that every
    /// slot the op-log accepts can still be mapped.
    pub fn paging_levels(&self) -> u32 {
        u32::from(self.trees.depth())
    }

    fn min_depth(layout: Layout) -> u8 {
        match layout {
            Layout::Split {
                shared_bit: SharedBit::Bit51,
            } => 5,
            _ => 4,
        }
    }

    /// The paging depth the current memslots need.
    pub(crate) fn needed_depth(&self) -> u8 {
        let end = self
            .tracker
            .memslots()
            .map(|s| s.range().end.0)
            .max()
            .unwrap_or(0);
        let depth = if end <= 1 << 36 {
            4
        } else if end <= 1 << 45 {
            5
        } else {
            6
        };
        depth.max(Self::min_depth(self.layout))
    }

    /// Decodes a TDX guest physical address: with the shared bit set it is a shared access to
    /// the GPA without the bit, else a private access. `None` in the unified layout, where the
    /// access kind comes from the fault's error code instead.
    pub fn decode_tdx_gpa(&self, gpa: Gpa) -> Option<(Gpa, Access)> {
        match self.layout {
            Layout::Split { shared_bit } if gpa.0 & shared_bit.mask() != 0 => {
                Some((Gpa(gpa.0 & !shared_bit.mask()), Access::Shared))
            }
            Layout::Split { .. } => Some((gpa, Access::Private)),
            Layout::Unified => None,
        }
    }

    /// The leaf of kind `access` that maps `gpa`, if any.
    pub fn lookup(&self, gpa: Gpa, access: Access) -> Option<Leaf> {
        self.trees.lookup(gpa.gfn().0, access.is_private())
    }

    /// Every leaf, root by root (the private root first in the split layout), in address order.
    pub fn leaves(&self) -> Leaves<'_> {
        Leaves {
            vm: self,
            root: 0,
            it: self.trees.walk(0, GfnRange::new(Gfn(0), Gfn(GFN_END)), 1),
        }
    }

    /// Whether `gfn` lies in an open invalidation window.
    #[inline]
    pub(crate) fn in_window(&self, gfn: u64) -> Option<&Window> {
        self.windows.iter().find(|w| w.range.contains(Gfn(gfn)))
    }

    /// Whether any open window intersects `range`.
    pub(crate) fn window_overlaps(&self, range: GfnRange) -> bool {
        self.windows
            .iter()
            .any(|w| w.range.intersect(&range).is_some())
    }

    /// Brings the paging depth in line with the memslots (after slots were added or removed).
    pub(crate) fn adjust_depth(&mut self) -> Result<()> {
        let want = self.needed_depth();
        let have = self.trees.depth();
        if want > have {
            let n = usize::from(want - have) * usize::from(self.trees.nroots());
            self.trees.tables.reserve(n)?;
        }
        if want != have {
            self.trees.set_depth(want);
        }
        Ok(())
    }

    /// Largest level the tracker allows for a page of kind `private` at `gfn`, if it may be
    /// mapped at all.
    #[inline]
    pub(crate) fn allowed(&self, gfn: u64, private: bool) -> Option<Level> {
        match self
            .tracker
            .max_mapping_level(crate::Gfn(gfn).gpa(), Access::from_private(private))
        {
            crate::tracker::MaxLevel::Level(l) => Some(l),
            _ => None,
        }
    }
}

/// Iterator over the leaves of a [`Vm`]; see [`Vm::leaves`].
#[derive(Clone, Debug)]
pub struct Leaves<'a> {
    vm: &'a Vm,
    root: u8,
    it: super::iter::TdpIter,
}

impl Iterator for Leaves<'_> {
    type Item = Leaf;

    fn next(&mut self) -> Option<Leaf> {
        let tables = &self.vm.trees.tables;
        loop {
            while self.it.valid() {
                let e = self.it.spte(tables);
                let found = e.is_leaf().then(|| Leaf {
                    gfn: crate::addr::Gfn(self.it.gfn()),
                    level: super::table::leaf_level(self.it.level())
                        .expect("leaves live in levels 1-3"),
                    private: e.is_private(),
                });
                self.it.next(tables);
                if found.is_some() {
                    return found;
                }
            }
            self.root += 1;
            if self.root >= self.vm.trees.nroots() {
                return None;
            }
            self.it = self
                .vm
                .trees
                .walk(self.root, GfnRange::new(Gfn(0), Gfn(GFN_END)), 1);
        }
    }
}
