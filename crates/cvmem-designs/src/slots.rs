//! A memslot table shared by the designs: slots sorted by base gfn, each with the design's own
//! per-slot data, found by binary search (as KVM's gfn tree finds them in O(log S)).

use crate::design::Slot;

/// Memslots in address order with per-slot data `T`.
#[derive(Clone, Debug)]
pub struct SlotTable<T> {
    slots: Vec<(Slot, T)>,
}

impl<T> Default for SlotTable<T> {
    fn default() -> Self {
        SlotTable { slots: Vec::new() }
    }
}

impl<T> SlotTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a slot that overlaps no other.
    pub fn insert(&mut self, slot: Slot, data: T) {
        let at = self
            .slots
            .partition_point(|(s, _)| s.base_gfn < slot.base_gfn);
        self.slots.insert(at, (slot, data));
    }

    /// Removes slot `id`, returning it with its data.
    pub fn remove(&mut self, id: u32) -> Option<(Slot, T)> {
        let i = self.slots.iter().position(|(s, _)| s.id == id)?;
        Some(self.slots.remove(i))
    }

    /// The slot containing `gfn`.
    #[inline]
    pub fn find(&self, gfn: u64) -> Option<&(Slot, T)> {
        let i = self.slots.partition_point(|(s, _)| s.base_gfn <= gfn);
        let entry = self.slots.get(i.checked_sub(1)?)?;
        entry.0.contains(gfn).then_some(entry)
    }

    /// The slot with id `id`, mutably.
    pub fn get_mut(&mut self, id: u32) -> Option<&mut (Slot, T)> {
        self.slots.iter_mut().find(|(s, _)| s.id == id)
    }

    /// The slots that intersect `[start, end)`, in address order.
    pub fn overlapping(&self, start: u64, end: u64) -> &[(Slot, T)] {
        let first = self.slots.partition_point(|(s, _)| s.end_gfn() <= start);
        let last = self.slots.partition_point(|(s, _)| s.base_gfn < end);
        &self.slots[first..last.max(first)]
    }

    /// The slots that intersect `[start, end)`, mutably.
    pub fn overlapping_mut(&mut self, start: u64, end: u64) -> &mut [(Slot, T)] {
        let first = self.slots.partition_point(|(s, _)| s.end_gfn() <= start);
        let last = self.slots.partition_point(|(s, _)| s.base_gfn < end);
        &mut self.slots[first..last.max(first)]
    }

    /// All slots in address order.
    pub fn iter(&self) -> impl Iterator<Item = &(Slot, T)> + '_ {
        self.slots.iter()
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there is no slot.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Heap bytes of the table itself (not of the per-slot data's own allocations).
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<(Slot, T)>()
    }
}
