//! What hostile guests and hostile snapshots cost: for each guest strategy, the tracking a 4 GiB
//! guest can force through its conversion requests (one copy, and live: the concurrent front's
//! two) in bytes per GiB of its memslots against a flat bitmap's 32,768; then the time to
//! restore hostile snapshots per MB of JSON, and their memory.
//!
//! `cargo run --release -p cvmem-kvm --features serde --example hostile_guest`

use std::time::Instant;

use cvmem::{Gfn, Gpa, Level, Tracker, TrackerSnapshot, PAGE_SIZE};
use cvmem_kvm::{Backing, ConversionRequest, CvmMemory, RequestSource, SlotSpec};

const GIB: u64 = 1 << 30;
const RAM: u64 = 4 * GIB;
const BITMAP_PER_GIB: f64 = (GIB / PAGE_SIZE / 8) as f64;

/// A detached 4 GiB guest, all private (as a TD after boot).
fn guest() -> CvmMemory {
    let m = CvmMemory::detached();
    m.add_slot(&SlotSpec {
        slot: 0,
        gpa: Gpa(0),
        size: RAM,
        backing: Backing::Anonymous,
        max_level: Level::G1,
    })
    .expect("a slot");
    m.set_attributes(Gpa(0), RAM, 8).expect("all private");
    m
}

/// The guest asks, as its hypercall would; refusals are part of the attack.
fn ask(m: &CvmMemory, gpa: u64, pages: u64, private: bool) {
    let attrs = if private { 0x10 } else { 0 };
    if let Ok(req) =
        ConversionRequest::from_map_gpa_range(RequestSource::Hypercall, gpa, pages, attrs)
    {
        let _ = m.convert(&req);
    }
}

/// xorshift, so that every run asks the same.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A named way for a guest to fragment its memory.
type Strategy = (&'static str, Box<dyn Fn(&CvmMemory)>);

fn strategies() -> Vec<Strategy> {
    let pages = RAM / PAGE_SIZE;
    vec![
        (
            "alternating pages",
            Box::new(move |m| {
                for p in (0..pages).step_by(2) {
                    ask(m, p * PAGE_SIZE, 1, false);
                }
            }),
        ),
        (
            "runs of 1-9 pages",
            Box::new(move |m| {
                let mut rng = Rng(7);
                let mut p = 0;
                while p < pages {
                    let n = 1 + rng.below(9);
                    ask(m, p * PAGE_SIZE, n.min(pages - p), false);
                    p += n + 1 + rng.below(9);
                }
            }),
        ),
        (
            "seven holes per 2M page",
            Box::new(move |m| {
                for base in (0..pages).step_by(512) {
                    for h in 0..7 {
                        ask(m, (base + 1 + h * 73) * PAGE_SIZE, 1, false);
                    }
                }
            }),
        ),
        (
            "10^6 random flips",
            Box::new(move |m| {
                let mut rng = Rng(11);
                for _ in 0..1_000_000 {
                    ask(m, rng.below(pages) * PAGE_SIZE, 1, rng.below(2) == 0);
                }
            }),
        ),
        (
            "10^6 pages outside memslots",
            Box::new(|m| {
                let mut rng = Rng(13);
                for i in 1..=1_000_000u64 {
                    let far = (i << 30) % (1 << 51) + RAM;
                    ask(m, far + rng.below(512) * PAGE_SIZE, 1, i % 2 == 0);
                }
            }),
        ),
    ]
}

fn main() {
    println!("hostile guests: a 4 GiB guest (all private) asking through its hypercall");
    println!(
        "{:<30} {:>12} {:>10} {:>14} {:>10}",
        "strategy", "one copy/GiB", "x bitmap", "live (2)/GiB", "x bitmap"
    );
    for (name, attack) in strategies() {
        let m = guest();
        attack(&m);
        let heap = m.query().with_tracker(Tracker::heap_bytes) as f64;
        let per_gib = heap / (RAM / GIB) as f64;
        println!(
            "{name:<30} {per_gib:>12.0} {:>10.3} {:>14.0} {:>10.3}",
            per_gib / BITMAP_PER_GIB,
            2.0 * per_gib,
            2.0 * per_gib / BITMAP_PER_GIB
        );
    }

    println!("\nhostile snapshots: restore time per MB of JSON");
    println!(
        "{:<40} {:>10} {:>10} {:>12} {:>12}",
        "snapshot", "JSON", "restore", "per MB", "tracker heap"
    );
    for (name, snapshot) in snapshots() {
        let json = serde_json::to_vec(&snapshot).expect("serialises");
        let t = Instant::now();
        let parsed: TrackerSnapshot = serde_json::from_slice(&json).expect("parses");
        let restored = Tracker::restore(&parsed);
        let secs = t.elapsed().as_secs_f64();
        let mb = json.len() as f64 / 1e6;
        let heap = restored.as_ref().map_or(0, Tracker::heap_bytes);
        println!(
            "{name:<40} {:>9.2}M {:>8.1}ms {:>10.1}ms {:>12} {}",
            mb,
            secs * 1e3,
            secs * 1e3 / mb,
            heap,
            if restored.is_ok() { "" } else { "(refused)" }
        );
    }
}

/// Hostile snapshots: huge slots with one inhibit each, many inhibits in one slot, a guest of
/// alternating pages.
fn snapshots() -> Vec<(String, TrackerSnapshot)> {
    let mut out = Vec::new();
    for slots in [1024u32, 32_764] {
        let mut t = Tracker::new();
        for i in 0..slots {
            let gpa = u64::from(i) << 43;
            t.set_user_memory_region(&cvmem::MemoryRegion {
                slot: i,
                gpa: Gpa(gpa),
                size: cvmem::MAX_SLOT_PAGES * PAGE_SIZE,
                ..Default::default()
            })
            .expect("a slot");
            t.set_guest_inhibit(Gpa(gpa).gfn(), Level::K4)
                .expect("an inhibit");
        }
        out.push((
            format!("{slots} slots of 8 TiB, one inhibit each"),
            t.snapshot(),
        ));
    }
    let mut t = Tracker::new();
    t.set_user_memory_region(&cvmem::MemoryRegion {
        slot: 0,
        gpa: Gpa(0),
        size: 1 << 40,
        ..Default::default()
    })
    .expect("a slot");
    for i in 0..160_000u64 {
        t.set_guest_inhibit(cvmem::Gfn(i * 1024), Level::K4)
            .expect("an inhibit");
    }
    out.push(("160,000 inhibits in one slot".into(), t.snapshot()));
    let mut t = Tracker::new();
    t.set_user_memory_region(&cvmem::MemoryRegion {
        slot: 0,
        gpa: Gpa(0),
        size: RAM,
        ..Default::default()
    })
    .expect("a slot");
    for p in (0..RAM / PAGE_SIZE).step_by(2) {
        t.set_range_attributes(cvmem::GfnRange::new(Gfn(p), Gfn(p + 1)), 8)
            .expect("a page");
    }
    out.push(("4 GiB of alternating pages".into(), t.snapshot()));
    out
}
