//! Target (a): arbitrary operation sequences on the core [`Tracker`], the dense oracle
//! [`DenseModel`] and the concurrent front [`ConcurrentTracker`]; every answer must agree.
//!
//! Addresses are mostly inside a 3 GiB window (the oracle stores one attribute per page there),
//! biased to 2M and 1G edges; one value in eight is a wild one (u64 limits, unaligned, beyond
//! the window) to drive the validation paths. Answers about gfns outside the window are compared
//! between the tracker and the front only.

use cvmem::{
    Access, Errno, Gfn, Gpa, Level, MapGpaRange, MaxLevel, MemoryRegion, SlotFlags, Tracker,
    KVM_MEMORY_ATTRIBUTE_PRIVATE as PRIVATE, PAGE_SIZE,
};
use cvmem_sync::ConcurrentTracker;
use cvmem_testkit::DenseModel;

use crate::input::Input;

/// Pages modelled by the oracle: 3 GiB.
const WINDOW: u64 = 3 << 18;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
/// Operations per input: enough for interesting states, few enough for thousands of inputs a
/// second.
const MAX_OPS: usize = 40;
/// Addresses whose answers are compared at the end (edges of the changes made).
const MAX_PROBES: usize = 24;

struct Run<'a> {
    input: Input<'a>,
    tracker: Tracker,
    front: ConcurrentTracker,
    model: DenseModel,
    probes: Vec<u64>,
}

/// Runs one input; panics on any disagreement.
pub fn tracker_oracle(data: &[u8]) {
    let mut run = Run {
        input: Input::new(data),
        tracker: Tracker::new(),
        front: ConcurrentTracker::default(),
        model: DenseModel::new(WINDOW),
        probes: Vec::new(),
    };
    run.preset();
    for _ in 0..MAX_OPS {
        if run.input.is_empty() {
            break;
        }
        run.step();
    }
    run.check_end();
}

fn errno<T>(r: &cvmem::Result<T>) -> Result<(), Errno> {
    match r {
        Ok(_) => Ok(()),
        Err(e) => Err(e.errno()),
    }
}

impl Run<'_> {
    /// An address: mostly a page in the window near a 2M / 1G edge; sometimes wild.
    fn gpa(&mut self) -> u64 {
        if self.input.below(8) == 0 {
            return self.input.wild_u64();
        }
        let g = u64::from(self.input.below(3));
        let m = self.near_edge();
        let p = self.near_edge();
        g * G1 + m * M2 + p * PAGE_SIZE
    }

    /// 0, 1, 511 or anything in 0..512.
    fn near_edge(&mut self) -> u64 {
        match self.input.below(4) {
            0 => 0,
            1 => 1,
            2 => 511,
            _ => u64::from(self.input.u16() % 512),
        }
    }

    /// A size: a few pages, large-page multiples and their neighbours, up to a little over 1G.
    fn size(&mut self) -> u64 {
        let n = u64::from(self.input.below(4)) + 1;
        match self.input.below(9) {
            0 => n * PAGE_SIZE,
            1 => n * M2,
            2 => n * M2 + PAGE_SIZE,
            3 => n * M2 - PAGE_SIZE,
            4 => G1,
            5 => G1 + M2,
            6 => G1 - PAGE_SIZE,
            7 => u64::from(self.input.u16()) * PAGE_SIZE,
            _ => self.input.wild_u64(),
        }
    }

    fn level(&mut self) -> Level {
        Level::ALL[usize::from(self.input.below(3))]
    }

    fn access(&mut self) -> Access {
        Access::from_private(self.input.flag())
    }

    /// Remembers the edges of a range inside the window for the final comparison.
    fn probe_edges(&mut self, gpa: u64, size: u64) {
        let end = gpa.saturating_add(size);
        for p in [
            gpa.wrapping_sub(PAGE_SIZE),
            gpa,
            end.wrapping_sub(PAGE_SIZE),
            end,
        ] {
            if p / PAGE_SIZE < WINDOW && self.probes.len() < MAX_PROBES {
                self.probes.push(p & !(PAGE_SIZE - 1));
            }
        }
    }

    /// A starting layout chosen by the first byte, so that short inputs reach deep states:
    /// none; one 2G guest_memfd slot, private; a guest_memfd slot and a plain slot with 2M
    /// backing and a misaligned host address; a slot with unaligned edges, private.
    fn preset(&mut self) {
        let gmem = SlotFlags {
            guest_memfd: true,
            ..Default::default()
        };
        let slot = |slot, gpa, size, flags| MemoryRegion {
            slot,
            gpa,
            size,
            flags,
            ..Default::default()
        };
        match self.input.below(4) {
            0 => {}
            1 => {
                self.apply_memslot(slot(0, Gpa(0), 2 * G1, gmem));
                self.attrs(0, 2 * G1, PRIVATE);
            }
            2 => {
                self.apply_memslot(slot(0, Gpa(0), G1, gmem));
                self.apply_memslot(MemoryRegion {
                    uaddr: Some(G1 + M2 + PAGE_SIZE),
                    backing: Some(Level::M2),
                    ..slot(1, Gpa(G1 + M2), G1 + 3 * M2, SlotFlags::default())
                });
                self.attrs(0, 3 * M2 + G1 / 2, PRIVATE);
            }
            _ => {
                self.apply_memslot(slot(2, Gpa(M2 + PAGE_SIZE), 3 * G1 - 4 * M2, gmem));
                self.attrs(0, 3 * G1, PRIVATE);
            }
        }
    }

    fn step(&mut self) {
        match self.input.below(16) {
            0..=2 => self.memslot(),
            3..=7 => {
                let (gpa, size) = (self.gpa(), self.size());
                let attributes = match self.input.below(8) {
                    0 => self.input.wild_u64(),
                    1..=3 => 0,
                    _ => PRIVATE,
                };
                self.attrs(gpa, size, attributes);
            }
            8..=9 => {
                let (gpa, npages) = (self.gpa(), self.size() / PAGE_SIZE);
                let flags = match self.input.below(8) {
                    0 => self.input.wild_u64(),
                    n => u64::from(n & 1) << 4 | u64::from(self.input.below(3)),
                };
                let t = MapGpaRange::decode(gpa, npages, flags).and_then(|r| {
                    self.tracker
                        .set_memory_attributes(r.gpa, r.size(), r.attributes())
                        .map(|_| r)
                });
                let m = self.model.map_gpa(gpa, npages, flags);
                let f = MapGpaRange::decode(gpa, npages, flags)
                    .and_then(|r| self.front.map_gpa_range(&r, |_| {}).map(|_| r));
                assert_eq!(errno(&t), m, "map-gpa {gpa:#x} {npages:#x} {flags:#x}");
                assert_eq!(t, f, "front: map-gpa {gpa:#x} {npages:#x} {flags:#x}");
                if let Ok(r) = t {
                    self.probe_edges(r.gpa.0, r.size());
                }
            }
            10..=13 => {
                let (gpa, access) = (self.gpa(), self.access());
                self.compare_query(gpa, access);
                if self.probes.len() < MAX_PROBES {
                    self.probes.push(gpa & !(PAGE_SIZE - 1));
                }
            }
            _ => {
                let (gpa, level) = (self.gpa(), self.level());
                let gfn = gpa / PAGE_SIZE;
                let t = self.tracker.set_guest_inhibit(Gfn(gfn), level);
                let f = self.front.set_guest_inhibit(Gfn(gfn), level);
                assert_eq!(t, f, "front: inhibit {gfn:#x} {level}");
                if t.is_ok() {
                    self.model.set_guest_inhibit(gfn, level);
                    self.probe_edges(Level::G1.align_down(Gfn(gfn)).0 * PAGE_SIZE, G1);
                }
            }
        }
    }

    fn memslot(&mut self) {
        let id = match self.input.below(16) {
            0 => [32763, 32764, u32::MAX][usize::from(self.input.below(3))],
            n => u32::from(n % 4),
        };
        let gpa = self.gpa();
        let size = match self.input.below(6) {
            0 => 0,
            _ => self.size(),
        };
        let bits = self.input.byte();
        let flags = SlotFlags {
            guest_memfd: bits & 1 != 0,
            dirty_log: bits & 0x0e == 0x02,
            readonly: bits & 0x30 == 0x10,
        };
        let uaddr = match self.input.below(6) {
            0 => Some(self.gpa()),
            1 => Some(gpa.wrapping_add(M2)),
            _ => None,
        };
        let backing = match self.input.below(4) {
            0 => Some(self.level()),
            _ => None,
        };
        self.apply_memslot(MemoryRegion {
            gmem: None,
            slot: id,
            gpa: Gpa(gpa),
            size,
            flags,
            uaddr,
            backing,
        });
    }

    fn attrs(&mut self, gpa: u64, size: u64, attributes: u64) {
        let t = self
            .tracker
            .set_memory_attributes(Gpa(gpa), size, attributes);
        let m = self.model.set_memory_attributes(gpa, size, attributes);
        let f = self.front.set_memory_attributes(Gpa(gpa), size, attributes);
        assert_eq!(errno(&t), m, "attrs {gpa:#x} {size:#x} {attributes:#x}");
        assert_eq!(t, f, "front: attrs {gpa:#x} {size:#x} {attributes:#x}");
        if t.is_ok() {
            self.probe_edges(gpa, size);
        }
    }

    fn apply_memslot(&mut self, r: MemoryRegion) {
        let MemoryRegion {
            slot: id,
            gpa,
            size,
            flags,
            uaddr,
            backing,
            gmem: _,
        } = r;
        let t = self.tracker.set_user_memory_region(&r);
        let m = self.model.set_memslot(
            id,
            gpa.0,
            size,
            flags.guest_memfd,
            flags.dirty_log,
            flags.readonly,
            uaddr,
            backing,
        );
        let f = self.front.set_user_memory_region(&r);
        assert_eq!(errno(&t), m, "memslot {r:?}");
        assert_eq!(t, f, "front: memslot {r:?}");
        if t.is_ok() {
            self.probe_edges(gpa.0, size);
        }
    }

    fn compare_query(&self, gpa: u64, access: Access) {
        let t = self.tracker.max_mapping_level(Gpa(gpa), access);
        assert_eq!(
            t,
            self.front.max_mapping_level(Gpa(gpa), access),
            "front: query {gpa:#x} {access:?}"
        );
        if gpa / PAGE_SIZE < WINDOW {
            assert_eq!(
                t,
                self.model.max_mapping_level(gpa, access),
                "query {gpa:#x} {}",
                access.name()
            );
        }
        if let MaxLevel::Level(level) = t {
            // A level is only answered inside a slot; the fault path agrees on the kind.
            let slot = self.tracker.slot_for_gfn(Gpa(gpa).gfn());
            assert!(slot.is_some_and(|s| level <= s.max_level()));
        }
    }

    fn check_end(&self) {
        for &gpa in &self.probes {
            for access in [Access::Shared, Access::Private] {
                self.compare_query(gpa, access);
            }
        }
        let runs: Vec<(u64, u64, u64)> = self
            .tracker
            .nonzero_runs()
            .filter(|r| r.start.0 < WINDOW)
            .map(|r| (r.start.0, r.end.0.min(WINDOW), r.attributes))
            .collect();
        assert_eq!(runs, self.model.nonzero_runs(), "attribute runs");
        assert_eq!(
            self.tracker.nonzero_runs().collect::<Vec<_>>(),
            self.front
                .read(|s| s.tracker().nonzero_runs().collect::<Vec<_>>()),
            "front: attribute runs"
        );
        if let Err(why) = self.tracker.attribute_store().check_invariants() {
            panic!("attribute store invariant: {why}");
        }
        let slots: Vec<(u32, Gfn, u64)> = self
            .tracker
            .memslots()
            .map(|s| (s.id(), s.base_gfn(), s.npages()))
            .collect();
        let front_slots: Vec<(u32, Gfn, u64)> = self.front.read(|s| {
            s.tracker()
                .memslots()
                .map(|s| (s.id(), s.base_gfn(), s.npages()))
                .collect()
        });
        assert_eq!(slots, front_slots, "front: memslots");
        let mut model_slots: Vec<(u32, Gfn, u64)> = self
            .model
            .slots
            .iter()
            .map(|s| (s.id, Gfn(s.base), s.npages))
            .collect();
        model_slots.sort_by_key(|s| s.1);
        assert_eq!(slots, model_slots, "memslots");
        for (id, base, npages) in slots {
            if base.0 + npages > WINDOW {
                continue;
            }
            for level in Level::LARGE {
                assert_eq!(
                    self.tracker.mixed_count(id, level),
                    self.model.mixed_count(id, level),
                    "mixed {level} pages of slot {id}"
                );
            }
        }
    }
}
