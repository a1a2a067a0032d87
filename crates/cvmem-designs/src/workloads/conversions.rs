//! Simple conversion patterns: start-up alone, the kernel selftest, the checkerboard worst case,
//! random flips.

use cvmem::{Access, Gpa, SlotFlags, PAGE_SIZE};
use cvmem_oplog::Op;

use super::builder::{Builder, Via};
use super::Params;

const M2: u64 = 2 << 20;
const G: u64 = 1 << 30;

/// `startup`: the memslots, all private, the sweep.
pub fn startup(p: &Params) -> Vec<Op> {
    let mut b = Builder::new(p);
    b.startup();
    b.sweep();
    b.finish()
}

/// `private_mem_conversions_test`: per-vCPU data regions of 2M + 4K at 4 GiB (here: above RAM),
/// one guest-memfd memslot per vCPU, all private; each vCPU converts, in turn, the stages
/// (offset, size) = (0, 4K), (0, 2M), (4K, 4K), (4K, 2M), (2M, 4K) of its region to shared —
/// explicitly by MapGPA or implicitly (a memory fault, then the VMM's attrs), alternately —
/// checks them and converts back. Repeated so that about `flips` conversions happen.
pub fn selftest(p: &Params) -> Vec<Op> {
    const PER_CPU: u64 = M2 + PAGE_SIZE;
    const STAGES: [(u64, u64); 5] = [
        (0, PAGE_SIZE),
        (0, M2),
        (PAGE_SIZE, PAGE_SIZE),
        (PAGE_SIZE, M2),
        (M2, PAGE_SIZE),
    ];
    let mut b = Builder::new(p);
    b.startup();
    let base = b.layout.ram_end().next_multiple_of(G).max(4 * G);
    let vcpus = u64::from(p.vcpus);
    let flags = SlotFlags {
        guest_memfd: true,
        ..Default::default()
    };
    for cpu in 0..vcpus {
        b.push(Op::Memslot {
            gmem: None,
            slot: 10 + cpu,
            gpa: Gpa(base + cpu * PER_CPU),
            size: PER_CPU,
            flags,
            uaddr: None,
            backing: None,
        });
    }
    b.convert(base, PER_CPU * vcpus, true, Via::Attrs);
    let rounds = (p.flips / (vcpus * STAGES.len() as u64 * 2)).max(1);
    for round in 0..rounds {
        for (k, &(off, size)) in STAGES.iter().enumerate() {
            for cpu in 0..vcpus {
                let gpa = base + cpu * PER_CPU + off;
                let via = if (round + k as u64 + cpu) % 2 == 0 {
                    Via::MapGpa(0)
                } else {
                    Via::Attrs
                };
                b.convert(gpa, size, false, via);
                b.access(gpa, Access::Shared);
                b.access(gpa + size - PAGE_SIZE, Access::Shared);
                if off > 0 {
                    b.access(gpa - PAGE_SIZE, Access::Private);
                }
                b.convert(gpa, size, true, via);
                b.access(gpa, Access::Private);
            }
        }
    }
    b.sweep();
    b.finish()
}

/// `checkerboard`: every other 4K page of the first GiB of high RAM made shared, one MapGPA
/// each (131,072 of them), every page of the window faulted, the sweep.
pub fn checkerboard(p: &Params) -> Vec<Op> {
    let mut b = Builder::new(p);
    b.startup();
    let high = b.layout.high()[0];
    let window = high.size.min(G);
    for page in (0..window / PAGE_SIZE).step_by(2) {
        b.convert(
            high.gpa + page * PAGE_SIZE,
            PAGE_SIZE,
            false,
            Via::MapGpa(0),
        );
    }
    for page in 0..window / PAGE_SIZE {
        b.fault(high.gpa + page * PAGE_SIZE);
    }
    b.sweep();
    b.finish()
}

/// `checkerboard-all`: every other 4K page of all of RAM made shared, one MapGPA each — the
/// most boundaries a guest can make — then the sweep.
pub fn checkerboard_all(p: &Params) -> Vec<Op> {
    let mut b = Builder::new(p);
    b.startup();
    for s in b.layout.ram.clone() {
        for page in (0..s.size / PAGE_SIZE).step_by(2) {
            b.convert(s.gpa + page * PAGE_SIZE, PAGE_SIZE, false, Via::MapGpa(0));
        }
    }
    b.sweep();
    b.finish()
}

/// `hostile`: a guest that drives every design to its largest state, each step a legal MapGPA.
/// First every other 4K page of RAM shared (most boundaries: the worst for run lists and for
/// per-page entries); then each 2M page recut into alternating runs of `k` pages, k = 2 … 8
/// cycling from one 2M page to the next, written private-run first so that every page passes
/// through states with more boundaries than it ends with. Every 2M page ends mixed with at
/// least 64 boundaries, beyond any inline form.
pub fn hostile(p: &Params) -> Vec<Op> {
    let mut b = Builder::new(p);
    b.startup();
    let ram = b.layout.ram.clone();
    for s in &ram {
        for page in (0..s.size / PAGE_SIZE).step_by(2) {
            b.convert(s.gpa + page * PAGE_SIZE, PAGE_SIZE, false, Via::MapGpa(0));
        }
    }
    for s in &ram {
        for (i, m2) in (s.gpa..s.end()).step_by(M2 as usize).enumerate() {
            let k = 2 + (i as u64 % 7);
            let run = k * PAGE_SIZE;
            let mut at = m2;
            while at < (m2 + M2).min(s.end()) {
                let end = (m2 + M2).min(s.end());
                b.convert(at, run.min(end - at), true, Via::MapGpa(0));
                if at + run < end {
                    b.convert(at + run, run.min(end - at - run), false, Via::MapGpa(0));
                }
                at += 2 * run;
            }
        }
    }
    b.sweep();
    b.finish()
}

/// `random-flips`: `flips` random RAM pages each flipped to the other kind by a one-page MapGPA
/// and faulted; the sweep.
pub fn random_flips(p: &Params) -> Vec<Op> {
    let mut b = Builder::new(p);
    b.startup();
    for _ in 0..p.flips {
        let gpa = b.random_ram_page();
        let private = !b.is_private(gpa);
        b.convert(gpa, PAGE_SIZE, private, Via::MapGpa(0));
        b.fault(gpa);
    }
    b.sweep();
    b.finish()
}
