//! What the front's benchmarks share: the guest, the probe addresses and the conversion
//! sequences, so that every store and every benchmark is given the same ones.

use cvmem_sync::one_copy::OneCopyWriter;
use cvmem_sync::ConcurrentTracker;

use cvmem::{
    GfnRange, Gpa, MemoryRegion, SlotFlags, Tracker, KVM_MEMORY_ATTRIBUTE_PRIVATE as PRIVATE,
};

pub(crate) const K4: u64 = 4096;
pub(crate) const T1: u64 = 1 << 40;
/// Shared 4K pages sprinkled over the private guest: 2 boundaries each, ~4,000 runs. Also the
/// size of the working set a guest's bounce buffers flip back and forth.
pub(crate) const SHARED_PAGES: usize = 2000;
/// Pages of the fragmented regime: about 8 in each 2M page of the 1 TiB guest, a store of tens
/// of MB past the caches (35.5 MB after `front_ratio`'s conversions), shrinking and growing
/// again as they flip back and forth.
pub(crate) const FRAGMENT_PAGES: usize = 4_000_000;

/// xorshift64: the same sequences in every run and every benchmark.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A random 4K page's gpa in the 1 TiB guest.
    pub(crate) fn page(&mut self) -> u64 {
        (self.next() % (T1 / K4)) * K4
    }
}

/// A 1 TiB guest_memfd guest, private, with `SHARED_PAGES` random shared 4K pages.
pub(crate) fn fragmented_guest() -> Tracker {
    let mut t = Tracker::new();
    t.set_user_memory_region(&MemoryRegion {
        slot: 0,
        gpa: Gpa(0),
        size: T1,
        flags: SlotFlags {
            guest_memfd: true,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    t.set_memory_attributes(Gpa(0), T1, PRIVATE).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..SHARED_PAGES {
        t.set_memory_attributes(Gpa(rng.page()), K4, 0).unwrap();
    }
    t
}

/// Random probe addresses, precomputed so the loop measures the lookup only.
pub(crate) fn probes() -> Vec<u64> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    (0..1 << 16).map(|_| rng.page()).collect()
}

/// `pages` random pages (gpas), the same for every caller.
pub(crate) fn pool(pages: usize) -> Vec<u64> {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    (0..pages).map(|_| rng.page()).collect()
}

/// 4K conversions (gpa, attributes) flipping `pool`'s pages back and forth: every page to
/// shared, then every page to private, and so on, beginning at conversion `from`. In the
/// private guest every conversion changes something, and whatever number of them a benchmark
/// runs, the store holds between none and all of the pool's fragments.
pub(crate) fn flips(pool: &[u64], from: usize) -> impl FnMut() -> (u64, u64) + '_ {
    let mut n = from;
    move || {
        let attrs = if (n / pool.len()) % 2 == 0 {
            0
        } else {
            PRIVATE
        };
        let gpa = pool[n % pool.len()];
        n += 1;
        (gpa, attrs)
    }
}

/// The one-copy store with `tracker`'s attributes, written directly (no validation, lock or
/// invalidation): what the front adds to a conversion is the difference.
pub(crate) fn bare_store(tracker: &Tracker) -> OneCopyWriter {
    let mut bare = OneCopyWriter::new().unwrap();
    for run in tracker.nonzero_runs() {
        bare.set(run.range(), run.attributes).unwrap();
    }
    bare
}

/// A 4K conversion of the bare store: the page at `gpa` gets `attributes`.
pub(crate) fn set_page(store: &mut OneCopyWriter, gpa: u64, attributes: u64) -> bool {
    store
        .set(GfnRange::from_len(Gpa(gpa).gfn(), 1), attributes)
        .unwrap()
}

/// Makes every page of `pool` shared in the front and the bare store (setup, not measured).
pub(crate) fn make_shared(pool: &[u64], vm: &ConcurrentTracker, store: &mut OneCopyWriter) {
    for &gpa in pool {
        vm.set_memory_attributes(Gpa(gpa), K4, 0).unwrap();
        set_page(store, gpa, 0);
    }
}
