//! A model of the kernel's xarray as KVM uses it for `mem_attr_array`: a 64-way radix tree with
//! one entry per index, nodes of 576 bytes (`struct xa_node`: shift, offset, count, nr_values,
//! parent, array, list head, 64 slots, 3 mark bitmaps), value entries, `XA_ZERO_ENTRY` for
//! reserved indices, the root holding an entry directly when index 0 is the only one, growth by
//! adding levels on top (`xas_expand`), and on erase the freeing of empty nodes up the tree
//! (`xas_delete_node`) and the removal of single-child roots (`xas_shrink`).
//!
//! Every `load`, `reserve` and `store` walks from the root, as `xa_load`, `xa_reserve` and
//! `xa_store` do; only range checks move along the leaves like `xas_next` and `xas_find`.
//! Memory is counted as the kernel allocates it: 576 bytes per live node. This process stores a
//! node in 264 bytes (32-bit slots), which is what [`XArray::host_bytes`] reports.

/// `sizeof(struct xa_node)` on x86-64: the slab object the kernel allocates per node.
pub const XA_NODE_BYTES: usize = 576;
const CHUNK_SHIFT: u32 = 6;
const CHUNK: u64 = 1 << CHUNK_SHIFT;
const NO_PARENT: u32 = u32::MAX;
/// Leaf encoding: nothing stored.
const NULL: u32 = 0;
/// Leaf encoding: `XA_ZERO_ENTRY` (reserved; reads as NULL).
const ZERO: u32 = 1;
/// Nodes per arena chunk (about 1 MiB), so that growing the arena never copies it.
const ARENA_CHUNK: usize = 4096;

#[derive(Clone, Debug)]
struct Node {
    /// In a leaf (shift 0): NULL, ZERO or value + 2. Above: child node id + 1, or NULL.
    slots: [u32; CHUNK as usize],
    parent: u32,
    shift: u8,
    offset: u8,
    count: u8,
}

impl Node {
    fn new(shift: u32, parent: u32, offset: u64) -> Self {
        Node {
            slots: [NULL; CHUNK as usize],
            parent,
            shift: shift as u8,
            offset: offset as u8,
            count: 0,
        }
    }
    fn max_index(&self) -> u64 {
        (CHUNK << self.shift).wrapping_sub(1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Head {
    Empty,
    /// An entry (leaf encoding) for index 0, held in `xa_head` itself.
    Entry(u32),
    Node(u32),
}

/// Where `xas_create` left us.
enum Place {
    Root,
    Leaf(u32, usize),
}

/// The radix tree.
#[derive(Clone, Debug)]
pub struct XArray {
    head: Head,
    arena: Vec<Vec<Node>>,
    free: Vec<u32>,
    live: usize,
    peak: usize,
}

impl Default for XArray {
    fn default() -> Self {
        Self::new()
    }
}

/// Encodes a non-zero value as a leaf entry.
fn value_entry(v: u32) -> u32 {
    debug_assert!(v < u32::MAX - 2);
    v + 2
}

impl XArray {
    /// An empty array.
    pub const fn new() -> Self {
        XArray {
            head: Head::Empty,
            arena: Vec::new(),
            free: Vec::new(),
            live: 0,
            peak: 0,
        }
    }

    /// Live nodes.
    pub fn nodes(&self) -> usize {
        self.live
    }

    /// The most nodes ever live at once.
    pub fn peak_nodes(&self) -> usize {
        self.peak
    }

    /// Bytes the kernel would hold: 576 per node.
    pub fn kernel_bytes(&self) -> usize {
        self.live * XA_NODE_BYTES
    }

    /// Bytes this process holds for the tree.
    pub fn host_bytes(&self) -> usize {
        self.arena.iter().map(|c| c.capacity()).sum::<usize>() * std::mem::size_of::<Node>()
            + self.arena.capacity() * std::mem::size_of::<Vec<Node>>()
            + self.free.capacity() * 4
    }

    #[inline]
    fn node(&self, id: u32) -> &Node {
        &self.arena[id as usize / ARENA_CHUNK][id as usize % ARENA_CHUNK]
    }

    #[inline]
    fn node_mut(&mut self, id: u32) -> &mut Node {
        &mut self.arena[id as usize / ARENA_CHUNK][id as usize % ARENA_CHUNK]
    }

    fn alloc(&mut self, shift: u32, parent: u32, offset: u64) -> u32 {
        self.live += 1;
        self.peak = self.peak.max(self.live);
        let node = Node::new(shift, parent, offset);
        if let Some(id) = self.free.pop() {
            *self.node_mut(id) = node;
            return id;
        }
        if self.arena.last().is_none_or(|c| c.len() == ARENA_CHUNK) {
            self.arena.push(Vec::with_capacity(ARENA_CHUNK));
        }
        let chunk = self.arena.len() - 1;
        self.arena[chunk].push(node);
        (chunk * ARENA_CHUNK + self.arena[chunk].len() - 1) as u32
    }

    fn release(&mut self, id: u32) {
        self.live -= 1;
        self.free.push(id);
    }

    /// The raw leaf entry at `index` (NULL, ZERO or a value), walking from the root.
    #[inline]
    fn load_raw(&self, index: u64) -> u32 {
        match self.head {
            Head::Empty => NULL,
            Head::Entry(e) => {
                if index == 0 {
                    e
                } else {
                    NULL
                }
            }
            Head::Node(root) => {
                let mut id = root;
                if index > self.node(id).max_index() {
                    return NULL;
                }
                loop {
                    let node = self.node(id);
                    let e = node.slots[((index >> node.shift) & (CHUNK - 1)) as usize];
                    if node.shift == 0 || e == NULL {
                        return e;
                    }
                    id = e - 1;
                }
            }
        }
    }

    /// `xa_load`: the value at `index`, or `None` (reserved entries read as NULL).
    #[inline]
    pub fn load(&self, index: u64) -> Option<u32> {
        match self.load_raw(index) {
            NULL | ZERO => None,
            e => Some(e - 2),
        }
    }

    /// The leaf node holding `index`, if the path exists.
    fn leaf(&self, index: u64) -> Option<u32> {
        let Head::Node(root) = self.head else {
            return None;
        };
        let mut id = root;
        if index > self.node(id).max_index() {
            return None;
        }
        loop {
            let node = self.node(id);
            if node.shift == 0 {
                return Some(id);
            }
            let e = node.slots[((index >> node.shift) & (CHUNK - 1)) as usize];
            if e == NULL {
                return None;
            }
            id = e - 1;
        }
    }

    /// `xas_create`: makes the path to `index` exist, growing the tree on top as needed.
    fn create(&mut self, index: u64, allow_root: bool) -> Place {
        let root = match self.head {
            Head::Empty => {
                if index == 0 && allow_root {
                    return Place::Root;
                }
                let mut shift = 0;
                while (index >> shift) >= CHUNK {
                    shift += CHUNK_SHIFT;
                }
                let id = self.alloc(shift, NO_PARENT, 0);
                self.head = Head::Node(id);
                id
            }
            Head::Entry(e) => {
                if index == 0 {
                    return Place::Root;
                }
                let id = self.alloc(0, NO_PARENT, 0);
                let node = self.node_mut(id);
                node.slots[0] = e;
                node.count = 1;
                self.head = Head::Node(id);
                id
            }
            Head::Node(id) => id,
        };
        let mut root = root;
        while index > self.node(root).max_index() {
            let shift = u32::from(self.node(root).shift) + CHUNK_SHIFT;
            let top = self.alloc(shift, NO_PARENT, 0);
            let node = self.node_mut(top);
            node.slots[0] = root + 1;
            node.count = 1;
            let old = self.node_mut(root);
            old.parent = top;
            old.offset = 0;
            root = top;
        }
        self.head = Head::Node(root);
        let mut id = root;
        loop {
            let shift = u32::from(self.node(id).shift);
            let off = ((index >> shift) & (CHUNK - 1)) as usize;
            if shift == 0 {
                return Place::Leaf(id, off);
            }
            let e = self.node(id).slots[off];
            id = if e == NULL {
                let child = self.alloc(shift - CHUNK_SHIFT, id, off as u64);
                let node = self.node_mut(id);
                node.slots[off] = child + 1;
                node.count += 1;
                child
            } else {
                e - 1
            };
        }
    }

    /// `xa_reserve`: stores `XA_ZERO_ENTRY` at `index` if nothing is there (allocating the path).
    pub fn reserve(&mut self, index: u64) {
        if self.load_raw(index) == NULL {
            self.store_raw(index, ZERO);
        }
    }

    /// `xa_store(index, value)` of a non-zero value.
    pub fn store(&mut self, index: u64, value: u32) {
        self.store_raw(index, value_entry(value));
    }

    /// `xa_store(index, NULL)` (`xa_erase`): frees nodes that become empty.
    pub fn erase(&mut self, index: u64) {
        self.store_raw(index, NULL);
    }

    fn store_raw(&mut self, index: u64, entry: u32) {
        if entry != NULL {
            match self.create(index, entry != ZERO) {
                Place::Root => self.head = Head::Entry(entry),
                Place::Leaf(id, off) => {
                    let node = self.node_mut(id);
                    if node.slots[off] == NULL {
                        node.count += 1;
                    }
                    node.slots[off] = entry;
                }
            }
            return;
        }
        match self.head {
            Head::Empty => {}
            Head::Entry(_) => {
                if index == 0 {
                    self.head = Head::Empty;
                }
            }
            Head::Node(_) => {
                let Some(id) = self.leaf(index) else {
                    return;
                };
                let off = (index & (CHUNK - 1)) as usize;
                let node = self.node_mut(id);
                if node.slots[off] == NULL {
                    return;
                }
                node.slots[off] = NULL;
                node.count -= 1;
                self.delete_node(id);
            }
        }
    }

    /// `xas_delete_node`: frees empty nodes from `id` upwards, then shrinks the root.
    fn delete_node(&mut self, mut id: u32) {
        loop {
            let node = self.node(id);
            if node.count != 0 {
                break;
            }
            let (parent, offset) = (node.parent, node.offset);
            self.release(id);
            if parent == NO_PARENT {
                self.head = Head::Empty;
                return;
            }
            let p = self.node_mut(parent);
            p.slots[offset as usize] = NULL;
            p.count -= 1;
            id = parent;
        }
        if self.node(id).parent == NO_PARENT {
            self.shrink();
        }
    }

    /// `xas_shrink`: while the root has one entry, at offset 0, make that entry the root.
    fn shrink(&mut self) {
        while let Head::Node(root) = self.head {
            let node = self.node(root);
            let e = node.slots[0];
            if node.count != 1 || e == NULL {
                break;
            }
            if node.shift == 0 {
                self.head = Head::Entry(e);
                self.release(root);
                break;
            }
            self.head = Head::Node(e - 1);
            self.node_mut(e - 1).parent = NO_PARENT;
            self.release(root);
        }
    }

    /// Whether every index of `[start, end)` holds `value`, moving along the leaves as
    /// `xas_next` does (the loop of `kvm_range_has_memory_attributes` for non-zero attributes).
    pub fn all_equal(&self, start: u64, end: u64, value: u32) -> bool {
        let want = value_entry(value);
        let mut index = start;
        if let Head::Entry(e) = self.head {
            return start == 0 && end == 1 && e == want;
        }
        while index < end {
            let Some(leaf) = self.leaf(index) else {
                return false;
            };
            let node = self.node(leaf);
            let block_end = ((index | (CHUNK - 1)) + 1).min(end);
            for i in index..block_end {
                if node.slots[(i & (CHUNK - 1)) as usize] != want {
                    return false;
                }
            }
            index = block_end;
        }
        true
    }

    /// Whether any entry lies in `[start, end)` (`xas_find`, skipping empty subtrees).
    pub fn any_in(&self, start: u64, end: u64) -> bool {
        match self.head {
            Head::Empty => false,
            Head::Entry(e) => start == 0 && end > 0 && e != NULL,
            Head::Node(root) => {
                let max = self.node(root).max_index();
                start <= max && self.search(root, 0, start, end.min(max.saturating_add(1)))
            }
        }
    }

    fn search(&self, id: u32, base: u64, start: u64, end: u64) -> bool {
        let node = self.node(id);
        let shift = u32::from(node.shift);
        let first = ((start - base) >> shift) as usize;
        let last = ((end - 1 - base) >> shift) as usize;
        for off in first..=last {
            let e = node.slots[off];
            if e == NULL {
                continue;
            }
            if shift == 0 {
                return true;
            }
            let child_base = base + ((off as u64) << shift);
            let child_end = child_base + (1u64 << shift);
            if self.search(e - 1, child_base, start.max(child_base), end.min(child_end)) {
                return true;
            }
        }
        false
    }

    /// Tree height (0 for an empty tree or a root entry).
    pub fn height(&self) -> u32 {
        match self.head {
            Head::Node(root) => u32::from(self.node(root).shift) / CHUNK_SHIFT + 1,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_load_erase_frees_every_node() {
        let mut xa = XArray::new();
        xa.store(0, 8);
        assert_eq!(xa.nodes(), 0, "index 0 alone lives in the root");
        xa.store(1, 8);
        assert_eq!(xa.nodes(), 1);
        xa.store(1 << 20, 8);
        assert_eq!(xa.height(), 4);
        assert_eq!(xa.load(1 << 20), Some(8));
        assert_eq!(xa.load(0), Some(8));
        assert_eq!(xa.load(2), None);
        xa.erase(1 << 20);
        assert_eq!(xa.height(), 1, "erasing the far index shrinks the tree");
        xa.erase(1);
        assert_eq!(xa.nodes(), 0, "a single entry at 0 goes back to the root");
        assert_eq!(xa.load(0), Some(8));
        xa.erase(0);
        assert_eq!(xa.nodes(), 0);
        assert!(!xa.any_in(0, u64::MAX));
    }

    #[test]
    fn reserve_allocates_and_erase_releases() {
        let mut xa = XArray::new();
        for i in 100..300 {
            xa.reserve(i);
        }
        assert!(xa.nodes() >= 4);
        assert_eq!(xa.load(150), None, "reserved entries read as NULL");
        assert!(xa.any_in(0, 101));
        for i in 100..300 {
            xa.erase(i);
        }
        assert_eq!(xa.nodes(), 0);
    }

    #[test]
    fn range_checks() {
        let mut xa = XArray::new();
        for i in 64..640 {
            xa.store(i, 8);
        }
        assert!(xa.all_equal(64, 640, 8));
        assert!(!xa.all_equal(63, 640, 8));
        assert!(!xa.all_equal(64, 641, 8));
        assert!(xa.any_in(639, 10_000));
        assert!(!xa.any_in(640, 10_000));
        assert!(!xa.any_in(0, 64));
        // 576 bytes a node: 9 leaves (blocks 1..=9) + 1 parent.
        assert_eq!(xa.kernel_bytes(), 10 * XA_NODE_BYTES);
    }
}
