//! # cvmem-sync — the cvmem tracker under concurrency
//!
//! In a VMM, device-emulation and vCPU threads read the private/shared state while other vCPUs
//! convert memory; in a hypervisor the fault path reads it on every EPT violation.
//! [`ConcurrentTracker`] wraps the core [`cvmem::Tracker`] so that:
//!
//! - readers (`attributes`, `range_has_attributes`, `runs`, `max_mapping_level`, any closure
//!   through [`ConcurrentTracker::read`]) do not wait for writers: they read the attributes
//!   with no lock and take the published copy of the memslots with one non-blocking try-lock
//!   (the fault path reads the memslots' part of its rule from atomic words, with no lock),
//!   and every answer comes from one committed state — never from a half-applied conversion;
//! - the VM's attributes are kept once ([`one_copy`]): a conversion is stored once, at about
//!   the core store's cost, and what a guest can make the front hold is one store's worth;
//! - memslots, guest_memfd files and large-page info (the VMM's to change, not a guest's) are
//!   published by left-right copies;
//! - a fault racing with a conversion gets the old state's answer, the new state's, or
//!   [`FaultAnswer::Retry`] — and a ticket that, checked under the MMU lock before installing,
//!   never lets a huge page be mapped across a range being changed (KVM's
//!   `mmu_invalidate_seq` protocol, with the 2025 fix: the whole huge range is checked, not
//!   only the faulting gfn).
//!
//! ```
//! use cvmem::{Access, Gpa, Level, MaxLevel, MemoryRegion, SlotFlags, Tracker, KVM_MEMORY_ATTRIBUTE_PRIVATE};
//! use cvmem_sync::{ConcurrentTracker, FaultAnswer};
//!
//! let vm = ConcurrentTracker::new(Tracker::new());
//! let flags = SlotFlags { guest_memfd: true, ..Default::default() };
//! vm.set_user_memory_region(&MemoryRegion { slot: 0, gpa: Gpa(0), size: 4 << 30, flags, ..Default::default() })?;
//! vm.set_memory_attributes(Gpa(0), 4 << 30, KVM_MEMORY_ATTRIBUTE_PRIVATE)?;
//! std::thread::scope(|s| {
//!     s.spawn(|| vm.set_memory_attributes(Gpa(0x1000_0000), 4096, 0)); // a vCPU converts a page
//!     s.spawn(|| match vm.fault(Gpa(0x1000_0000), Access::Private) {    // another one faults on it
//!         FaultAnswer::Ready(ticket) => assert!(matches!(
//!             ticket.answer,
//!             MaxLevel::Level(Level::G1) | MaxLevel::MemoryFault(_)  // before, or after
//!         )),
//!         FaultAnswer::Retry => {}                                    // during
//!     });
//! });
//! assert_eq!(vm.max_mapping_level(Gpa(0x1000_1000), Access::Private), MaxLevel::Level(Level::K4));
//! # Ok::<(), cvmem::Error>(())
//! ```
//!
//! ## Design: one copy of the attributes read under a sequence count, left-right for the rest
//!
//! **The attributes** ([`one_copy`]). One store, every word of it an atomic in memory that
//! lives as long as the store (directories, nodes, chunks of words and blocks are reused, never
//! freed: type-stable), so a reader racing the writer reads live words and safe Rust suffices.
//! The one writer stores between the two halves of a sequence count, as a seqlock does; a
//! reader reads the count, reads, and keeps its answer only if the count is even and
//! unchanged. Readers write nothing shared, so they do not slow one another; a read that a
//! conversion overlaps runs again (so closures given to [`ConcurrentTracker::read`] may run
//! more than once), and after 64 overlaps it reads under the writers' lock once that is free
//! between two writes rather than starve (never waiting for it: a writer may be zapping,
//! waiting for a lock the reader's caller holds, as KVM's `mmu_lock`).
//! [`ConcurrentTracker::fault`] does not wait: a conversion being stored is an invalidation in
//! progress, and the answer is [`FaultAnswer::Retry`], as KVM's. A conversion
//! is stored once; memory is one store (the worst a guest can force, every other page private:
//! 1.09× a flat bitmap). What the store costs against the core's (the one_copy bench):
//! DESIGN.md, "One copy of the attributes".
//!
//! **Memslots, files, large-page info** ([`LeftRight`]). Two copies of the rest of the
//! tracker, each behind a sharded reader-writer lock (crossbeam's `ShardedLock`: a reader locks
//! its own thread's shard, so vCPUs reading at once do not share a lock word; a writer locks
//! every shard), and an atomic index of the published one. A reader loads
//! the index, *try*-read-locks that copy and re-checks the index; if either fails, a writer has
//! published the other copy meanwhile, and the reader starts again there. The writer applies a
//! change to the unpublished copy, publishes it, waits for the readers still on the old copy,
//! and applies the same change to it. These are the VMM's changes (memslots, guest_memfd
//! files, TDX accept levels), rare and bounded by what the VMM creates. A VM that keeps PRIVATE
//! in its guest_memfd files (Linux 7.4's in-place conversion) keeps each file's attributes once
//! too, in a store of the file's own; a file's conversion splits and merges its folios on both
//! copies around the one store, with the front's count held odd so that no reader sees
//! folios and attributes of two states (DESIGN.md, "A file's conversion").
//!
//! **The fault path's memslots** (`fault_view.rs`). The copy's try-lock is two atomic
//! read-modify-writes; the fault path does without it: each memslot's part of the fault rule
//! ([`cvmem::FlatSlot`], three words) sits in atomics rewritten from each changed copy with a
//! count of their own held odd until that copy is published, and read under that count. Slots
//! the words cannot decide alone (GUEST_INHIBIT set, a file of huge folios, PRIVATE kept per
//! file) are answered from the copy.
//!
//! Alternatives measured or costed (DESIGN.md has the table): left-right for everything (two
//! stores, every conversion applied twice: 2.0× a bitmap, 2.3-2.6× a conversion); one copy
//! behind `arc-swap` with copy on write of the touched region and node (up to 30× a conversion
//! in fragmented memory); crossbeam-epoch over a persistent tree (unsafe reclamation, ~2-7×).
//!
//! **Invalidations** (`mmu_invalidate_seq`). Every change runs between `begin(range)` and
//! `end`: one counter, odd while a change of the stored range is in progress, incremented
//! again at the end. [`ConcurrentTracker::fault`] records the counter before reading the
//! state and answers `Retry` if the counter moved or the change in progress overlaps the range
//! the answer would map; [`ConcurrentTracker::is_stale`] repeats that check where the caller
//! installs the mapping, under the lock its zap callback takes (KVM's `mmu_lock`). Writers
//! call the zap callback after `begin` and before storing the new attributes, as KVM does.
//!
//! **Why `std`.** Writers need a blocking mutex and must wait for readers to leave a copy;
//! without `std` that means spinning on a hand-written lock (or the `spin` crate). The core
//! stays `no_std`; a hypervisor without `std` can reuse the same protocol with its own locks
//! (the one-copy store itself needs only atomics and `once_cell`'s `OnceBox`).
//!
//! ## Measured
//!
//! A 1 TiB guest_memfd guest, private, with 2,000 shared 4K pages (~4,000 runs); lookups at
//! random 4K addresses; conversions of a working set of 2,000 pages flipped back and forth, and
//! of 4 M pages flipped back and forth (stores fragmented to 35.5 MB, past the caches). What the
//! front adds, as ratios with each baseline interleaved in one run (`cargo bench -p cvmem-sync
//! --bench front_ratio`; medians of four runs, 2026-12-07, on a nested 2-vCPU host; the
//! fault path reading the memslots' words in one inline attempt):
//!
//! | | against | ratio |
//! |---|---|---|
//! | `max_mapping_level`, no writer | the front's tracker, bare (no synchronisation) | 1.10-1.15× (1.28-1.33× through the copy's lock) |
//! | `fault` (with its ticket), no writer | the same bare query | 1.24-1.26× (1.52-1.58×) |
//! | `max_mapping_level` on two threads at once | the bare tracker on two threads | 1.12-1.17× (2.3-4.3× with one lock word) |
//! | a 4K conversion, working set | the one-copy store alone | 1.12-1.13× |
//! | a 4K conversion, fragmented | the one-copy store alone | 1.02-1.05× |
//!
//! Absolute figures, against the core tracker too and with a writer on the other vCPU:
//! `cargo bench -p cvmem-sync --bench read_latency -- --warm-up-time 1 --measurement-time 3`.
//!
//! The one store's own costs are about the core store's (the `one_copy` bench: a lookup
//! 0.6-1.4×, a 4K conversion 1.0-1.3×); what the front adds is the left-right copy of the
//! memslots a read try-locks (two atomic read-modify-writes on its shard's lock word; the
//! fault path reads the memslots' words instead) and, on a write, the writers' lock and the
//! invalidation sequence. With a writer converting flat out, a `fault`
//! is answered `Retry` while a conversion is being stored (an invalidation in progress). Live
//! bytes, the worst a guest can force (every other page of 4 GiB private): 142,784, 1.089× a
//! flat bitmap (left-right for everything held 268,592). DESIGN.md, "One copy of the
//! attributes", has the protocol and the schemes weighed before it.
//!
//! ## Testing
//! `tests/one_copy.rs` checks the one store against the core's (kinds, levels, runs, uniform
//! ranges, mixed-page counts under random conversions), readers against a racing writer, and the
//! worst case in bytes. `tests/stress.rs` runs reader threads against a writer and checks every
//! answer against the recorded state of the generation it reports, and every mapping a fault
//! installs against the live state. `tests/loom.rs` model-checks left-right's publication, a
//! fault racing a conversion, a fault racing a file's conversion, and a read racing a
//! conversion in the one store (its directories have 4 entries under loom):
//! `RUSTFLAGS="--cfg loom" cargo test -p cvmem-sync --test loom --release`; without loom the
//! same scenarios run a few hundred times on real threads.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod concurrent;
mod fault;
mod fault_view;
mod front_seq;
mod invalidate;
pub mod left_right;
pub mod one_copy;
mod sync;

pub use concurrent::{ConcurrentTracker, PendingUpdate, SharedTracker, Snapshot, RUN_BATCH};
pub use fault::{FaultAnswer, FaultTicket};
pub use left_right::{Apply, LeftRight, Writer};
