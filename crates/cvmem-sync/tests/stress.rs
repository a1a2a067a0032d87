//! Readers and faulting vCPUs against a writer, on real threads, in well under a second.
//!
//! The writer replays a fixed sequence of changes, letting the readers do a few dozen operations
//! between two changes, (conversions of every size and alignment,
//! memslot moves and dirty-log toggles, guest accepts); the state after each committed change is
//! recorded beforehand with the single-threaded core. Every reader answer must equal the
//! recorded state of the generation it reports, generations never go back within a thread, and
//! every mapping a fault installs (under a mock `mmu_lock`, after `is_stale`) must be allowed by
//! the live state at that moment and at the end — the zap callbacks remove what a change makes
//! wrong.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;

use cvmem::{
    Access, AttrMode, Gfn, GfnRange, GmemBinding, GmemFlags, GmemId, GmemOffset, Gpa, Level,
    MaxLevel, MemoryRegion, MergePolicy, SlotFlags, Tracker,
    KVM_MEMORY_ATTRIBUTE_PRIVATE as PRIVATE,
};
use cvmem_sync::{ConcurrentTracker, FaultAnswer};

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
/// Guest-physical addresses the readers probe: both slots and a little beyond.
const SPAN: u64 = 6 * G1 + 512 * M2;
const CHANGES: usize = 3000;
/// Reader operations the writer lets happen between two changes (at least).
const READS_PER_CHANGE: u64 = 48;
const READERS: usize = 3;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// A page address, often near a 2M or 1G edge.
    fn gpa(&mut self) -> u64 {
        let edge = match self.below(3) {
            0 => self.below(SPAN / G1 + 1) * G1,
            1 => self.below(SPAN / M2) * M2,
            _ => self.below(SPAN / K4) * K4,
        };
        let jitter = [0, 0, K4, 2 * K4].get(self.below(4) as usize).copied();
        let gpa = if self.below(2) == 0 {
            edge + jitter.unwrap_or(0)
        } else {
            edge.saturating_sub(jitter.unwrap_or(0))
        };
        gpa.min(SPAN - K4)
    }
}

#[derive(Clone, Copy, Debug)]
enum Change {
    Attrs {
        gpa: u64,
        size: u64,
        private: bool,
    },
    Slot(MemoryRegion),
    Accept {
        gfn: u64,
        level: Level,
    },
    /// KVM_SET_MEMORY_ATTRIBUTES2 on file 0 (per-gmem mode).
    GmemAttrs {
        offset: u64,
        size: u64,
        private: bool,
    },
    /// fallocate(PUNCH_HOLE) on file 0.
    PunchHole {
        offset: u64,
        size: u64,
    },
}

fn slots() -> [MemoryRegion; 2] {
    let gmem = MemoryRegion {
        slot: 0,
        gpa: Gpa(0),
        size: 4 * G1,
        flags: SlotFlags {
            guest_memfd: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let plain = MemoryRegion {
        slot: 1,
        gpa: Gpa(4 * G1),
        size: G1 + 256 * M2,
        ..Default::default()
    };
    [gmem, plain]
}

fn changes(rng: &mut Rng) -> Vec<Change> {
    let [_, plain] = slots();
    let mut plain_at = plain.gpa;
    let mut dirty = false;
    (0..CHANGES)
        .map(|_| match rng.below(40) {
            0 => {
                // Move the plain slot between 4G and 4G + 512M, or toggle dirty logging.
                if rng.below(2) == 0 {
                    plain_at = Gpa(4 * G1 + rng.below(256) * M2);
                } else {
                    dirty = !dirty;
                }
                Change::Slot(MemoryRegion {
                    gpa: plain_at,
                    flags: SlotFlags {
                        dirty_log: dirty,
                        ..Default::default()
                    },
                    ..plain
                })
            }
            1 => Change::Accept {
                gfn: rng.below(4 * G1 / K4),
                level: [Level::K4, Level::M2][rng.below(2) as usize],
            },
            _ => {
                let gpa = rng.gpa();
                let size = match rng.below(4) {
                    0 => K4 * (1 + rng.below(8)),
                    1 => M2 * (1 + rng.below(3)),
                    2 => K4 * (1 + rng.below(3000)),
                    _ => G1 + K4 * rng.below(2),
                };
                Change::Attrs {
                    gpa,
                    size: size.min(SPAN - gpa),
                    private: rng.below(3) != 0,
                }
            }
        })
        .collect()
}

fn apply_core(t: &mut Tracker, c: &Change) -> bool {
    match *c {
        Change::Attrs { gpa, size, private } => t
            .set_memory_attributes(Gpa(gpa), size, if private { PRIVATE } else { 0 })
            .unwrap(),
        Change::Slot(r) => !matches!(
            t.set_user_memory_region(&r).unwrap(),
            cvmem::SlotChange::Unchanged
        ),
        Change::Accept { gfn, level } => t.set_guest_inhibit(Gfn(gfn), level).unwrap(),
        Change::GmemAttrs {
            offset,
            size,
            private,
        } => t
            .set_gmem_attributes(FILE, GmemOffset(offset), size, attrs(private), 0)
            .unwrap(),
        Change::PunchHole { offset, size } => {
            t.gmem_punch_hole(FILE, GmemOffset(offset), size).unwrap();
            true
        }
    }
}

fn attrs(private: bool) -> u64 {
    if private {
        PRIVATE
    } else {
        0
    }
}

/// The per-gmem guest's file: 6 GiB of 2M folios; slot 0 binds its first 4 GiB at gpa 0, slot 1
/// 1 GiB - 2 MiB at 4 GiB from file offset 5 GiB + 4 KiB (not congruent: 4K mappings only); the
/// file's 4-5 GiB are bound to no memslot.
const FILE: GmemId = GmemId(0);
const FILE_BYTES: u64 = 6 * G1;

fn per_gmem_start(merge: MergePolicy) -> Tracker {
    let mut t = Tracker::new()
        .with_attr_mode(AttrMode::PerGmem)
        .with_merge_policy(merge);
    let flags = GmemFlags {
        mmap: true,
        init_shared: false,
        folio: Level::M2,
    };
    assert_eq!(t.create_guest_memfd(FILE_BYTES, flags).unwrap(), FILE);
    let gmem = SlotFlags {
        guest_memfd: true,
        ..Default::default()
    };
    for (slot, gpa, size, offset) in [(0, 0, 4 * G1, 0), (1, 4 * G1, G1 - M2, 5 * G1 + K4)] {
        t.set_user_memory_region(&MemoryRegion {
            slot,
            gpa: Gpa(gpa),
            size,
            flags: gmem,
            gmem: Some(GmemBinding {
                gmem: FILE,
                offset: GmemOffset(offset),
            }),
            ..Default::default()
        })
        .unwrap();
    }
    t
}

/// Changes to the file only: conversions of every size and alignment, and punch-holes that
/// free memory and let split folios merge.
fn gmem_changes(rng: &mut Rng) -> Vec<Change> {
    (0..CHANGES)
        .map(|_| {
            let offset = (rng.gpa() % FILE_BYTES).min(FILE_BYTES - K4);
            let size = match rng.below(4) {
                0 => K4 * (1 + rng.below(8)),
                1 => M2 * (1 + rng.below(3)),
                2 => K4 * (1 + rng.below(3000)),
                _ => G1 + K4 * rng.below(2),
            }
            .min(FILE_BYTES - offset);
            if rng.below(8) == 0 {
                Change::PunchHole { offset, size }
            } else {
                Change::GmemAttrs {
                    offset,
                    size,
                    private: rng.below(3) != 0,
                }
            }
        })
        .collect()
}

/// A leaf of the mock page tables: first gfn, level, kind.
type Leaf = (u64, Level, bool);

/// The mock TDP MMU: installed leaves, behind the lock that zaps and installs take.
struct Mmu {
    leaves: Mutex<BTreeSet<Leaf>>,
}

impl Mmu {
    fn zap(&self, range: GfnRange) {
        let mut leaves = self.leaves.lock().unwrap();
        let from = (Level::G1.align_down(range.start).0, Level::K4, false);
        let hit: Vec<Leaf> = leaves
            .range(from..(range.end.0, Level::K4, false))
            .filter(|&&(start, level, _)| start + level.pages() > range.start.0)
            .copied()
            .collect();
        for leaf in hit {
            leaves.remove(&leaf);
        }
    }
}

/// Whether the state allows a leaf: a fault at its first gfn may map at least its level.
fn allowed<A: cvmem::AttrBackend>(t: &Tracker<A>, &(start, level, private): &Leaf) -> bool {
    match t.max_mapping_level(Gpa(start * K4), Access::from_private(private)) {
        MaxLevel::Level(l) => l >= level,
        _ => false,
    }
}

#[test]
fn readers_and_faults_see_committed_states_and_install_only_valid_mappings() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let changes = changes(&mut rng);
    let mut start = Tracker::new();
    for r in slots() {
        start.set_user_memory_region(&r).unwrap();
    }
    start
        .set_memory_attributes(Gpa(0), 4 * G1, PRIVATE)
        .unwrap();
    storm(start, &changes);
}

/// The same storm where each guest_memfd keeps PRIVATE: conversions and punch-holes of a file
/// bound to two memslots (one not congruent) and partly to none, with 2M folios that split
/// and merge.
#[test]
fn per_gmem_readers_and_faults_see_committed_states_and_install_only_valid_mappings() {
    let mut rng = Rng(0x5851_f42d_4c95_7f2d);
    let changes = gmem_changes(&mut rng);
    storm(per_gmem_start(MergePolicy::OnPunchHole), &changes);
}

/// The same with folios merging as soon as a conversion makes them whole in kind: the front's
/// store of a file conversion then changes the copies after the attributes too.
#[test]
fn per_gmem_eager_readers_and_faults_see_committed_states_and_install_only_valid_mappings() {
    let mut rng = Rng(0x1f83_d9ab_fb41_bd6b);
    let changes = gmem_changes(&mut rng);
    storm(per_gmem_start(MergePolicy::Eager), &changes);
}

fn storm(start: Tracker, changes: &[Change]) {
    // The recorded state of every generation.
    let mut states = vec![start.clone()];
    let mut expected = Vec::new();
    for c in changes {
        let mut next = states.last().unwrap().clone();
        let changed = apply_core(&mut next, c);
        expected.push(changed);
        if changed {
            states.push(next);
        }
    }
    assert!(states.len() > CHANGES / 2, "most changes change something");

    let vm = ConcurrentTracker::new(start);
    let mmu = Mmu {
        leaves: Mutex::new(BTreeSet::new()),
    };
    let done = AtomicBool::new(false);
    let progress = AtomicU64::new(0);
    let (reads, installs, retries) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    thread::scope(|s| {
        s.spawn(|| {
            for (c, &want) in changes.iter().zip(&expected) {
                let zap = |r| mmu.zap(r);
                let changed = match *c {
                    Change::Attrs { gpa, size, private } => vm
                        .set_memory_attributes_with(
                            Gpa(gpa),
                            size,
                            if private { PRIVATE } else { 0 },
                            zap,
                        )
                        .unwrap(),
                    Change::Slot(r) => !matches!(
                        vm.set_user_memory_region_with(&r, zap).unwrap(),
                        cvmem::SlotChange::Unchanged
                    ),
                    Change::Accept { gfn, level } => {
                        vm.set_guest_inhibit_with(Gfn(gfn), level, zap).unwrap()
                    }
                    Change::GmemAttrs {
                        offset,
                        size,
                        private,
                    } => vm
                        .set_gmem_attributes_with(
                            FILE,
                            GmemOffset(offset),
                            size,
                            attrs(private),
                            zap,
                        )
                        .unwrap(),
                    Change::PunchHole { offset, size } => {
                        vm.gmem_punch_hole_with(FILE, GmemOffset(offset), size, zap)
                            .unwrap();
                        true
                    }
                };
                assert_eq!(changed, want, "{c:?}");
                let target = progress.load(Ordering::Relaxed) + READS_PER_CHANGE;
                let deadline = std::time::Instant::now() + std::time::Duration::from_millis(5);
                while progress.load(Ordering::Relaxed) < target
                    && std::time::Instant::now() < deadline
                {
                    thread::yield_now();
                }
            }
            done.store(true, Ordering::Release);
        });
        for id in 0..READERS {
            let (vm, mmu, states, done, progress) = (&vm, &mmu, &states, &done, &progress);
            let (reads, installs, retries) = (&reads, &installs, &retries);
            s.spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (id as u64 + 1) << 32);
                let mut last_generation = 0;
                let mut n = 0u64;
                while !done.load(Ordering::Acquire) {
                    n += 1;
                    progress.fetch_add(1, Ordering::Relaxed);
                    let gpa = rng.gpa();
                    let access = Access::from_private(rng.below(2) == 0);
                    if n % 2 == 0 {
                        // Reads: every answer from the one state of the generation seen.
                        let range =
                            GfnRange::new(Gfn(gpa / K4), Gfn(gpa / K4 + 1 + rng.below(1024)));
                        let (generation, level, attrs, runs, uniform) = vm.read(|snap| {
                            let t = snap.tracker();
                            (
                                snap.generation(),
                                t.max_mapping_level(Gpa(gpa), access),
                                t.attributes(Gfn(gpa / K4)),
                                t.runs(range).collect::<Vec<_>>(),
                                t.range_has_attributes(range, PRIVATE, PRIVATE),
                            )
                        });
                        assert!(generation >= last_generation, "reads went back in time");
                        last_generation = generation;
                        let t = &states[generation as usize];
                        assert_eq!(level, t.max_mapping_level(Gpa(gpa), access));
                        assert_eq!(attrs, t.attributes(Gfn(gpa / K4)));
                        assert_eq!(runs, t.runs(range).collect::<Vec<_>>());
                        assert_eq!(uniform, t.range_has_attributes(range, PRIVATE, PRIVATE));
                        reads.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    // Faults: the answer of the reported generation; install under the lock
                    // only if the ticket is not stale, and the live state must allow it.
                    let ticket = match vm.fault(Gpa(gpa), access) {
                        FaultAnswer::Ready(t) => t,
                        FaultAnswer::Retry => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    };
                    assert!(ticket.generation >= last_generation);
                    last_generation = ticket.generation;
                    let t = &states[ticket.generation as usize];
                    assert_eq!(ticket.answer, t.max_mapping_level(Gpa(gpa), access));
                    let MaxLevel::Level(level) = ticket.answer else {
                        continue;
                    };
                    let mut leaves = mmu.leaves.lock().unwrap();
                    if vm.is_stale(&ticket) {
                        retries.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let leaf = (ticket.range().start.0, level, access.is_private());
                    leaves.insert(leaf);
                    installs.fetch_add(1, Ordering::Relaxed);
                    // Every installed leaf agrees with the live state, checked now and then
                    // (the lock keeps zaps out; a change may be published but its range was
                    // zapped and its faults are stale).
                    if n % 64 == 1 {
                        vm.read(|snap| {
                            for leaf in leaves.iter() {
                                assert!(allowed(snap.tracker(), leaf), "stale leaf {leaf:?}");
                            }
                        });
                    } else {
                        assert!(vm.read(|snap| allowed(snap.tracker(), &leaf)));
                    }
                }
            });
        }
    });
    let last = states.last().unwrap();
    assert_eq!(vm.generation() as usize, states.len() - 1);
    assert_eq!(
        vm.read(|s| s.tracker().private_runs().collect::<Vec<_>>()),
        last.private_runs().collect::<Vec<_>>()
    );
    for leaf in mmu.leaves.lock().unwrap().iter() {
        assert!(allowed(last, leaf), "leaf {leaf:?} outlived a change");
    }
    let (reads, installs, retries) = (
        reads.into_inner(),
        installs.into_inner(),
        retries.into_inner(),
    );
    eprintln!(
        "{} changes ({} committed), {reads} reads, {installs} installs, {retries} retries",
        CHANGES,
        states.len() - 1
    );
    assert!(
        reads > 100 && installs > 100,
        "the readers ran alongside the writer"
    );
}
