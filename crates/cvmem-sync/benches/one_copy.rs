//! The one-copy store against the core's attribute store, same guests, same requests:
//! a lookup (the fault path's probe), a 4K conversion, and the bytes each holds.
//!
//! `cargo bench -p cvmem-sync --bench one_copy -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use cvmem::{AttrStore, Gfn, GfnRange, KVM_MEMORY_ATTRIBUTE_PRIVATE as PRIVATE};
use cvmem_sync::one_copy::OneCopyWriter;

/// 1 TiB of gfns.
const T1: u64 = 1 << 28;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn gfn(&mut self) -> u64 {
        self.next() % T1
    }
}

fn page(g: u64) -> GfnRange {
    GfnRange::new(Gfn(g), Gfn(g + 1))
}

/// Both stores with 1 TiB private and `flips` random 4K pages flipped.
fn guest(flips: usize) -> (AttrStore, OneCopyWriter) {
    let mut core = AttrStore::new();
    let mut one = OneCopyWriter::new().unwrap();
    let all = GfnRange::new(Gfn(0), Gfn(T1));
    core.set(all, PRIVATE).unwrap();
    one.set(all, PRIVATE).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..flips {
        let g = rng.gfn();
        let a = if core.is_private(Gfn(g)) { 0 } else { PRIVATE };
        core.set(page(g), a).unwrap();
        one.set(page(g), a).unwrap();
    }
    (core, one)
}

fn report_memory() {
    for flips in [2_000, 1_000_000] {
        let (core, one) = guest(flips);
        eprintln!(
            "1 TiB private, {flips} random 4K flips: core {} bytes, one copy {} bytes, a bitmap {}",
            core.heap_bytes(),
            one.heap_bytes(),
            T1 / 8
        );
    }
    let (mut core, mut one) = (AttrStore::new(), OneCopyWriter::new().unwrap());
    for g in (0..1u64 << 20).step_by(2) {
        core.set(page(g), PRIVATE).unwrap();
        one.set(page(g), PRIVATE).unwrap();
    }
    eprintln!(
        "4 GiB, every other page private: core {} bytes, one copy {} bytes, a bitmap {}",
        core.heap_bytes(),
        one.heap_bytes(),
        (1u64 << 20) / 8
    );
}

fn bench(c: &mut Criterion) {
    report_memory();
    for flips in [2_000, 1_000_000] {
        let (mut core, mut one) = guest(flips);
        let mut g = c.benchmark_group(format!("{flips} flips"));
        g.warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .sample_size(30);
        let probes: Vec<u64> = {
            let mut rng = Rng(0x2545_f491_4f6c_dd1d);
            (0..1 << 16).map(|_| rng.gfn()).collect()
        };
        let mut i = 0usize;
        let mut next = || {
            i = (i + 1) & (probes.len() - 1);
            Gfn(probes[i])
        };
        g.bench_function("probe: core", |b| b.iter(|| core.probe(black_box(next()))));
        let store = std::sync::Arc::clone(one.store());
        g.bench_function("probe: one copy", |b| {
            b.iter(|| store.probe(black_box(next())))
        });
        // Each store flips its own random pages back and forth (the fragmentation stays put).
        for (name, seed) in [("core", 1u64), ("one copy", 1)] {
            let mut rng = Rng(0x1234_5678_9abc_def1 ^ seed);
            let pool: Vec<u64> = (0..4096).map(|_| rng.gfn()).collect();
            let mut k = 0usize;
            let mut flip = 0u64;
            g.bench_function(format!("4K conversion: {name}"), |b| {
                b.iter(|| {
                    k = (k + 1) & 4095;
                    if k == 0 {
                        flip ^= PRIVATE;
                    }
                    let r = page(pool[k]);
                    if name == "core" {
                        core.set(r, flip).unwrap()
                    } else {
                        one.set(r, flip).unwrap()
                    }
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
