//! What the one-copy design of DESIGN.md ("Two copies, and why not one", last row) would add to a
//! read and to a write, measured on the store's worst-case form: a 1 TiB guest whose every 4K
//! page has its own bit (a dense store, 32 MiB), read at random gfns.
//!
//! - `plain`: the bits in a `Vec<u64>`, what the store reads today behind left-right.
//! - `seq arena`: the same bits as `AtomicU64` words in 4 KiB chunks reached through a directory
//!   (type-stable memory: never freed while the store lives), a read validated by a sequence
//!   count and retried if a writer crossed it; a write stores between the two halves of the count.
//!
//! The mechanism only, not a store: the ratio of the two is what the arena would add to each of a
//! query's loads and to a conversion. `cargo bench -p cvmem-sync --bench seq_arena`.
#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::sync::atomic::{fence, AtomicU64, Ordering};

use criterion::{criterion_group, criterion_main, Criterion};

const PAGES: u64 = 1 << 28; // 1 TiB of 4K pages
const WORDS: usize = (PAGES / 64) as usize;
/// The arena: chunks of atomic words behind a directory, and the writer's sequence count.
struct SeqArena {
    seq: AtomicU64,
    /// A chunk holds `1 << shift` words (a shift and a mask: no division on the read path).
    shift: u32,
    chunks: Vec<Box<[AtomicU64]>>,
}

impl SeqArena {
    /// Chunks of `1 << shift` words (`WORDS`: one chunk, no directory to speak of).
    fn new(shift: u32) -> Self {
        let chunks = (0..WORDS >> shift)
            .map(|_| (0..1 << shift).map(|_| AtomicU64::new(0)).collect())
            .collect();
        SeqArena {
            seq: AtomicU64::new(0),
            shift,
            chunks,
        }
    }

    fn word(&self, w: usize) -> Option<&AtomicU64> {
        self.chunks
            .get(w >> self.shift)?
            .get(w & ((1 << self.shift) - 1))
    }

    /// A read validated by the sequence count (the classic seqlock read, over atomics).
    #[inline]
    fn get(&self, gfn: u64) -> bool {
        loop {
            let s = self.seq.load(Ordering::Acquire);
            if s % 2 == 0 {
                let v = self
                    .word((gfn / 64) as usize)
                    .map_or(0, |w| w.load(Ordering::Relaxed));
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == s {
                    return (v >> (gfn % 64)) & 1 != 0;
                }
            }
            std::hint::spin_loop();
        }
    }

    /// A one-gfn flip by the one writer, between the two halves of the count.
    #[inline]
    fn flip(&self, gfn: u64) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        if let Some(w) = self.word((gfn / 64) as usize) {
            w.store(
                w.load(Ordering::Relaxed) ^ (1 << (gfn % 64)),
                Ordering::Relaxed,
            );
        }
        self.seq.store(s + 2, Ordering::Release);
    }
}

fn gfns() -> Vec<u64> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..1 << 16)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % PAGES
        })
        .collect()
}

fn mechanism(c: &mut Criterion) {
    let gfns = gfns();
    let mut plain = vec![0u64; WORDS];
    // 4 KiB chunks (a 1 MiB directory), 64 KiB chunks (64 KiB), one chunk (the mechanism alone).
    let arenas = [
        ("4K chunks", 9),
        ("64K chunks", 13),
        ("one chunk", WORDS.ilog2()),
    ]
    .map(|(name, shift)| (name, SeqArena::new(shift)));
    for &g in gfns.iter().step_by(2) {
        plain[(g / 64) as usize] ^= 1 << (g % 64);
        for (_, a) in &arenas {
            a.flip(g);
        }
    }
    let mut g = c.benchmark_group("one-copy mechanism");
    let mut i = 0usize;
    let mut next = || {
        i = (i + 1) & (gfns.len() - 1);
        gfns[i]
    };
    g.bench_function("read, plain", |b| {
        b.iter(|| {
            let gfn = next();
            (plain[(gfn / 64) as usize] >> (gfn % 64)) & 1 != 0
        })
    });
    for (name, arena) in &arenas {
        g.bench_function(format!("read, seq arena, {name}"), |b| {
            b.iter(|| arena.get(next()))
        });
    }
    // One fault at a time: each read's gfn depends on the previous answer, so reads cannot
    // overlap their misses (a vCPU's fault path), where the loops above measure throughput.
    let mut last = false;
    g.bench_function("dependent read, plain", |b| {
        b.iter(|| {
            let gfn = next() ^ u64::from(last);
            last = (plain[(gfn / 64) as usize] >> (gfn % 64)) & 1 != 0;
            last
        })
    });
    for (name, arena) in &arenas {
        g.bench_function(format!("dependent read, seq arena, {name}"), |b| {
            b.iter(|| {
                last = arena.get(next() ^ u64::from(last));
                last
            })
        });
    }
    g.bench_function("write, plain", |b| {
        b.iter(|| {
            let gfn = next();
            plain[(gfn / 64) as usize] ^= 1 << (gfn % 64);
        })
    });
    for (name, arena) in &arenas {
        g.bench_function(format!("write, seq arena, {name}"), |b| {
            b.iter(|| arena.flip(next()))
        });
    }
    g.finish();
}

criterion_group!(benches, mechanism);
criterion_main!(benches);
