//! The core's headline costs: set 1 TiB private, random 4K flips on a fragmented 1 TiB guest, the
//! fault-path query, and the tracking memory of a realistic 1 TiB guest (printed).
#![allow(missing_docs)] // criterion_group! generates an undocumented function

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use cvmem::{
    Access, Gfn, Gpa, MemoryRegion, SlotFlags, Tracker, KVM_MEMORY_ATTRIBUTE_PRIVATE as PRIVATE,
};

const K4: u64 = 4096;
const G1: u64 = 1 << 30;
const T1: u64 = 1 << 40;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A 1 TiB guest in one guest_memfd slot, everything shared.
fn guest_1t() -> Tracker {
    let mut t = Tracker::new();
    let flags = SlotFlags {
        guest_memfd: true,
        ..Default::default()
    };
    t.set_user_memory_region(&MemoryRegion {
        gmem: None,
        slot: 0,
        gpa: Gpa(0),
        size: T1,
        flags,
        uaddr: None,
        backing: None,
    })
    .unwrap();
    t
}

/// 1 TiB private, a 1 GiB shared bounce pool, 2,000 scattered shared 4K pages.
fn realistic_1t() -> Tracker {
    let mut t = guest_1t();
    t.set_memory_attributes(Gpa(0), T1, PRIVATE).unwrap();
    t.set_memory_attributes(Gpa(3 * G1), G1, 0).unwrap();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..2000 {
        t.set_memory_attributes(Gpa((rng.next() % (T1 / K4)) * K4), K4, 0)
            .unwrap();
    }
    t
}

fn benches(c: &mut Criterion) {
    c.bench_function("set 1 TiB private (1 TiB slot)", |b| {
        b.iter_batched(
            guest_1t,
            |mut t| t.set_memory_attributes(Gpa(0), T1, PRIVATE).unwrap(),
            BatchSize::LargeInput,
        )
    });

    // 10^6 random 4K flips leave ~2·10^6 boundaries (86% of 2M pages mixed); each further flip
    // is measured on that state.
    let mut fragmented = guest_1t();
    fragmented
        .set_memory_attributes(Gpa(0), T1, PRIVATE)
        .unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..1_000_000 {
        let gpa = (rng.next() % (T1 / K4)) * K4;
        let now = fragmented.attributes(Gfn(gpa / K4));
        fragmented
            .set_memory_attributes(Gpa(gpa), K4, now ^ PRIVATE)
            .unwrap();
    }
    eprintln!(
        "after 10^6 random 4K flips on 1 TiB: {} boundaries, {} bytes of heap",
        fragmented.attribute_store().boundaries(),
        fragmented.heap_bytes()
    );
    c.bench_function("4K flip on 1 TiB after 10^6 random flips", |b| {
        b.iter(|| {
            let gpa = (rng.next() % (T1 / K4)) * K4;
            let now = fragmented.attributes(Gfn(gpa / K4));
            fragmented
                .set_memory_attributes(Gpa(gpa), K4, now ^ PRIVATE)
                .unwrap()
        })
    });

    // The fault path on the fragmented guest: most 2M pages are mixed, so most queries reach a
    // region's slot or block.
    let frag_gpas: Vec<u64> = (0..4096).map(|_| (rng.next() % (T1 / K4)) * K4).collect();
    let frag_access: Vec<Access> = frag_gpas
        .iter()
        .map(|&g| Access::from_private(fragmented.is_private(Gfn(g / K4))))
        .collect();
    let mut j = 0;
    c.bench_function("max_mapping_level, 1 TiB after 10^6 random flips", |b| {
        b.iter(|| {
            j = (j + 1) & 4095;
            black_box(fragmented.max_mapping_level(black_box(Gpa(frag_gpas[j])), frag_access[j]))
        })
    });

    let t = realistic_1t();
    eprintln!(
        "1 TiB private + 1 GiB bounce pool + 2,000 shared 4K pages: tracker heap {} bytes \
         (attribute store {} bytes), Linux lpage ints alone: {} bytes",
        t.heap_bytes(),
        t.attribute_store().heap_bytes(),
        (T1 / (2 << 20) + T1 / G1) * 4
    );
    let gpas: Vec<u64> = (0..4096).map(|_| (rng.next() % (T1 / K4)) * K4).collect();
    let accesses: Vec<Access> = gpas
        .iter()
        .map(|&g| Access::from_private(t.is_private(Gfn(g / K4))))
        .collect();
    let mut i = 0;
    c.bench_function("max_mapping_level, 1 TiB realistic guest", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(t.max_mapping_level(black_box(Gpa(gpas[i])), accesses[i]))
        })
    });
}

criterion_group!(core, benches);
criterion_main!(core);
