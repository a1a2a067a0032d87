//! The memslots' part of the fault rule, in atomic words that the fault path reads without
//! taking a left-right copy: each slot's [`FlatSlot`], in address order.
//!
//! A copy's read lock costs two atomic read-modify-writes per read: through it the query cost
//! 1.28-1.33× the bare tracker's, through the words 1.10-1.15× (`front_ratio`). Readers
//! validate the words with the view's own count, as a seqlock's: the writer holds it odd while
//! it rewrites them from a changed copy and publishes that copy, so a reader never sees words
//! and copies of two states. The count is the view's own, not the
//! front's, so that a memslot change does not make [`read`](crate::ConcurrentTracker::read)s
//! of a copy run again (left-right keeps those whole). The store beside the words is validated
//! by its own count (the query) or by the front's (the fault, whose generation it gives). A
//! slot whose words are not complete (GUEST_INHIBIT set, a file of huge folios, PRIVATE kept
//! per file) is answered from the copy. The words sit in chunks of growing size that are never
//! freed while the front lives (a reader may be reading any of them), at most as many as the
//! VMM made memslots; the first chunk is inline.

use cvmem::{Access, FaultCode, FlatSlot, Gfn, Probe};

use crate::concurrent::SharedTracker;
use crate::front_seq::{FrontSeq, FrontWrite};
use crate::sync::{AtomicU64, AtomicUsize, OnceBox, Ordering};

/// One slot's words ([`FlatSlot::to_words`]).
type Words = [AtomicU64; 3];

/// Entries in the first chunk; chunk `k` holds `FIRST << k`. Under loom, 2: every atomic a
/// model holds multiplies what it explores.
#[cfg(not(loom))]
const FIRST: usize = 16;
#[cfg(loom)]
const FIRST: usize = 2;
/// Chunks after the first: room for more slots than KVM's `KVM_USER_MEM_SLOTS` (32,764).
#[cfg(not(loom))]
const CHUNKS: usize = 12;
#[cfg(loom)]
const CHUNKS: usize = 15;
/// `len` when the words could not be allocated: every read asks the copy.
const UNUSABLE: usize = usize::MAX;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct FaultView {
    /// Odd while the words are rewritten and their copy published.
    count: FrontSeq,
    /// The published copy's generation (its changes, not counting conversions).
    generation: AtomicU64,
    /// Slots in the view, or [`UNUSABLE`].
    len: AtomicUsize,
    /// The first chunk, inline: most VMs have a few slots, read with no pointer to follow.
    first: [Words; FIRST],
    /// Chunk `k` at `chunks[k - 1]`.
    chunks: [OnceBox<Vec<Words>>; CHUNKS],
}

/// The chunk and the place in it of entry `i`.
#[inline]
const fn place(i: usize) -> (usize, usize) {
    let j = i + FIRST;
    let k = (j.ilog2() - FIRST.ilog2()) as usize;
    (k, j - (FIRST << k))
}

impl FaultView {
    /// A view of no slot.
    pub(crate) fn new() -> Self {
        FaultView {
            count: FrontSeq::default(),
            generation: AtomicU64::new(0),
            len: AtomicUsize::new(0),
            first: core::array::from_fn(|_| core::array::from_fn(|_| AtomicU64::new(0))),
            chunks: core::array::from_fn(|_| OnceBox::new()),
        }
    }

    #[inline]
    fn words(&self, i: usize) -> Option<&Words> {
        if let Some(words) = self.first.get(i) {
            return Some(words);
        }
        let (k, at) = place(i);
        self.chunks.get(k.checked_sub(1)?)?.get()?.get(at)
    }

    #[inline]
    fn slot(&self, i: usize) -> Option<FlatSlot> {
        let w = self.words(i)?;
        Some(FlatSlot::from_words([
            w[0].load(Ordering::Relaxed),
            w[1].load(Ordering::Relaxed),
            w[2].load(Ordering::Relaxed),
        ]))
    }

    /// The view's count as a read begins; `None` while the words change.
    #[inline]
    pub(crate) fn read_begin(&self) -> Option<u64> {
        self.count.read_begin()
    }

    /// Whether a read that began at `count` overlapped no change of the words.
    #[inline]
    pub(crate) fn read_valid(&self, count: u64) -> bool {
        self.count.read_valid(count)
    }

    /// The generation of the copy the words were taken from (inside a validated read).
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The fault rule's answer for `gfn` from the words, with `probe` reading the VM's store;
    /// `None` where the copy must answer. Inside a read validated by the view's count: the
    /// words may be torn, and then the answer is thrown away.
    #[inline]
    pub(crate) fn fault_code(
        &self,
        gfn: Gfn,
        access: Access,
        probe: impl FnOnce() -> Probe,
    ) -> Option<FaultCode> {
        // The last slot starting at or below `gfn` (the tracker's `slot_for_gfn`): most VMs'
        // slots all sit in the inline chunk.
        let len = self.len.load(Ordering::Relaxed);
        let after = match self.first.get(..len) {
            Some(first) => first.partition_point(|w| w[0].load(Ordering::Relaxed) <= gfn.0),
            None => self.search(gfn, len)?,
        };
        let slot = match after.checked_sub(1) {
            Some(i) => self.slot(i)?,
            None => return Some(FaultCode::NoSlot),
        };
        if !slot.contains(gfn) {
            return Some(FaultCode::NoSlot);
        }
        slot.fault_code(gfn, access, probe)
    }

    /// The number of the first `len` slots that start at or below `gfn`, where they reach
    /// past the inline chunk; `None` where a chunk is missing (`len` UNUSABLE, or torn).
    #[cold]
    #[inline(never)]
    fn search(&self, gfn: Gfn, len: usize) -> Option<usize> {
        let (mut lo, mut hi) = (0, len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.words(mid)?[0].load(Ordering::Relaxed) <= gfn.0 {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Some(lo)
    }

    /// Rewrites the words from `tracker`, a copy of generation `generation` about to be
    /// published (the writer's, under the writers' lock). The count stays odd until the guard
    /// drops: after the copy is published.
    pub(crate) fn refresh(&self, tracker: &SharedTracker, generation: u64) -> FrontWrite<'_> {
        let write = self.count.write();
        self.generation.store(generation, Ordering::Relaxed);
        self.store(tracker);
        write
    }

    fn store(&self, tracker: &SharedTracker) {
        let slots = tracker.flat_slots();
        let n = slots.len();
        if !self.make_room(n) {
            self.len.store(UNUSABLE, Ordering::Relaxed);
            return;
        }
        for (i, slot) in slots.enumerate() {
            let Some(words) = self.words(i) else {
                unreachable!("room was made for every slot");
            };
            for (word, value) in words.iter().zip(slot.to_words()) {
                word.store(value, Ordering::Relaxed);
            }
        }
        self.len.store(n, Ordering::Relaxed);
    }

    /// Makes the chunks that `n` entries need; false if one cannot be allocated.
    fn make_room(&self, n: usize) -> bool {
        let Some(last) = n.checked_sub(1) else {
            return true;
        };
        let (chunks, _) = place(last);
        for k in 1..=chunks {
            let Some(chunk) = self.chunks.get(k - 1) else {
                return false;
            };
            if chunk.get().is_some() {
                continue;
            }
            let size = FIRST << k;
            let mut words = Vec::new();
            if words.try_reserve_exact(size).is_err() {
                return false;
            }
            words.extend((0..size).map(|_| core::array::from_fn(|_| AtomicU64::new(0))));
            // The writer is alone: the chunk is unset.
            let _ = chunk.set(Box::new(words));
        }
        true
    }

    /// Heap bytes of the chunks made.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.chunks
            .iter()
            .filter_map(OnceBox::get)
            .map(|c| {
                std::mem::size_of::<Vec<Words>>() + c.capacity() * std::mem::size_of::<Words>()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConcurrentTracker;
    use cvmem::{
        AttrBackend, Gpa, MaxLevel, MemoryRegion, SlotFlags, Tracker, KVM_MEMORY_ATTRIBUTE_PRIVATE,
    };

    #[test]
    fn entries_fill_the_chunks_in_order() {
        assert_eq!(place(0), (0, 0));
        assert_eq!(place(FIRST - 1), (0, FIRST - 1));
        assert_eq!(place(FIRST), (1, 0));
        assert_eq!(place(3 * FIRST - 1), (1, 2 * FIRST - 1));
        assert_eq!(place(3 * FIRST), (2, 0));
        let capacity = FIRST * ((1 << (CHUNKS + 1)) - 1);
        assert_eq!(place(capacity - 1), (CHUNKS, (FIRST << CHUNKS) - 1));
        assert!(capacity > cvmem::MAX_SLOT_ID as usize);
    }

    /// Slots past the inline chunk, made and deleted through the front: the words answer as
    /// the tracker does in every slot, and between them (no slot).
    #[test]
    fn the_words_of_many_slots_answer_as_the_tracker() {
        const SLOTS: u32 = 3 * FIRST as u32 + 5;
        let m2 = 2 << 20;
        let vm = ConcurrentTracker::new(Tracker::new());
        let region = |slot: u32, size| MemoryRegion {
            slot,
            gpa: Gpa(u64::from(slot) * 2 * m2),
            size,
            flags: SlotFlags {
                guest_memfd: slot % 2 == 0,
                ..Default::default()
            },
            ..Default::default()
        };
        for slot in 0..SLOTS {
            vm.set_user_memory_region(&region(slot, m2)).unwrap();
        }
        vm.set_memory_attributes(
            Gpa(0),
            u64::from(SLOTS) * 2 * m2,
            KVM_MEMORY_ATTRIBUTE_PRIVATE,
        )
        .unwrap();
        vm.set_user_memory_region(&region(7, 0)).unwrap();
        let tracker = vm.to_tracker().unwrap();
        let (view, attrs) = vm.view();
        assert_eq!(view.len.load(Ordering::Relaxed), SLOTS as usize - 1);
        for gpa in (0..u64::from(SLOTS) * 2 * m2 + m2).step_by(m2 as usize / 2) {
            for access in [Access::Private, Access::Shared] {
                let gfn = Gpa(gpa).gfn();
                let words = view.fault_code(gfn, access, || attrs.probe(gfn));
                let expected = tracker.max_mapping_level(Gpa(gpa), access);
                assert_eq!(words.map(|c| c.max_level(gfn, access)), Some(expected));
                assert_eq!(vm.max_mapping_level(Gpa(gpa), access), expected);
                assert_ne!(expected, MaxLevel::Level(cvmem::Level::K4), "{gpa:#x}");
            }
        }
    }
}
