//! The headline cases of `cvmem bench`, under criterion, for every design: make a guest
//! private, flip random 4K pages (to shared and back), and answer random fault-path queries.
//! Sizes are smaller than the CLI's 1 TiB so that a run takes seconds: 16 GiB for making
//! private (linux touches every page), 64 GiB for flips and queries.
#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use cvmem::{Access, Gfn, GfnRange, Gpa, PAGE_SHIFT, PAGE_SIZE};
use cvmem_designs::workloads::{Layout, Rng};
use cvmem_designs::Vm;
use cvmem_designs::{make_design, Design, DESIGNS};

/// A design with the memslots of a guest of `bytes`, not yet private.
fn with_slots(name: &str, bytes: u64) -> (Box<dyn Design>, Layout) {
    let layout = Layout::new(bytes);
    let mut vm = Vm::new(make_design(name).expect("known design"));
    vm.run(&layout.memslot_ops()).expect("valid layout");
    (vm.into_design(), layout)
}

fn make_private(d: &mut dyn Design, layout: &Layout) {
    for s in layout.ram.iter().chain(std::iter::once(&layout.firmware)) {
        let r = GfnRange::covering(Gpa(s.gpa), s.size);
        d.set_attributes(r, 8).expect("converted");
    }
}

fn random_pages(layout: &Layout, n: usize, seed: u64) -> Vec<u64> {
    let mut rng = Rng::new(seed);
    let pages = layout.ram_bytes() / PAGE_SIZE;
    (0..n)
        .map(|_| layout.ram_at(rng.below(pages) * PAGE_SIZE) >> PAGE_SHIFT)
        .collect()
}

fn bench_make_private(c: &mut Criterion) {
    let mut g = c.benchmark_group("make_private_16g");
    g.sample_size(10);
    for name in DESIGNS {
        g.bench_function(*name, |b| {
            b.iter_batched(
                || with_slots(name, 16 << 30),
                |(mut d, layout)| {
                    make_private(d.as_mut(), &layout);
                    d
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

fn bench_flips(c: &mut Criterion) {
    let mut g = c.benchmark_group("flip_4k_pair_64g");
    g.sample_size(10);
    for name in DESIGNS {
        let (mut d, layout) = with_slots(name, 64 << 30);
        make_private(d.as_mut(), &layout);
        let pages = random_pages(&layout, 256, 7);
        let mut i = 0;
        g.bench_function(*name, |b| {
            b.iter(|| {
                let gfn = pages[i % pages.len()];
                i += 1;
                let r = GfnRange::new(Gfn(gfn), Gfn(gfn + 1));
                d.set_attributes(r, 0).expect("shared");
                d.set_attributes(r, 8).expect("private");
            })
        });
    }
    g.finish();
}

fn bench_queries(c: &mut Criterion) {
    let mut g = c.benchmark_group("query_64g");
    for name in DESIGNS {
        let (mut d, layout) = with_slots(name, 64 << 30);
        make_private(d.as_mut(), &layout);
        for gfn in random_pages(&layout, 10_000, 3) {
            d.set_attributes(GfnRange::new(Gfn(gfn), Gfn(gfn + 1)), 0)
                .expect("shared");
        }
        let probes = random_pages(&layout, 4096, 11);
        let mut i = 0;
        g.bench_function(*name, |b| {
            b.iter(|| {
                let gfn = probes[i % probes.len()];
                i += 1;
                black_box(d.max_mapping_level(black_box(gfn << PAGE_SHIFT), Access::Private))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_make_private, bench_flips, bench_queries);
criterion_main!(benches);
