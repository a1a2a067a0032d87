//! SEV-SNP workloads: Page State Change batches and lazy acceptance.
//!
//! Linux builds a PSC request per range: 4K entries up to a 2M boundary, 2M entries while a
//! whole 2M page fits, 4K entries for the tail, at most 64 entries per request. KVM coalesces
//! contiguous entries with the same operation and page size into one KVM_HC_MAP_GPA_RANGE exit
//! (with the 2M or 4K hint).

use cvmem::PAGE_SIZE;
use cvmem_oplog::Op;

use super::builder::{Builder, Via};
use super::Params;

const M2: u64 = 2 << 20;
/// Entries per PSC request as Linux sends them.
pub const PSC_ENTRIES: usize = 64;

/// One PSC entry: a page of 4K or 2M.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PscEntry {
    /// First byte.
    pub gpa: u64,
    /// 2M page (else 4K).
    pub huge: bool,
}

/// The PSC entries Linux builds for `[gpa, gpa + size)`.
pub fn psc_entries(gpa: u64, size: u64) -> Vec<PscEntry> {
    let mut out = Vec::new();
    let end = gpa + size;
    let mut at = gpa;
    while at < end {
        if at % M2 == 0 && at + M2 <= end {
            out.push(PscEntry {
                gpa: at,
                huge: true,
            });
            at += M2;
        } else {
            out.push(PscEntry {
                gpa: at,
                huge: false,
            });
            at += PAGE_SIZE;
        }
    }
    out
}

/// Sends the entries in requests of 64, each coalesced into MapGPA exits as KVM does.
pub fn send_psc(b: &mut Builder, entries: &[PscEntry], private: bool) {
    for request in entries.chunks(PSC_ENTRIES) {
        let mut i = 0;
        while i < request.len() {
            let first = request[i];
            let step = if first.huge { M2 } else { PAGE_SIZE };
            let mut end = first.gpa + step;
            let mut j = i + 1;
            while j < request.len() && request[j].huge == first.huge && request[j].gpa == end {
                end += step;
                j += 1;
            }
            b.convert(
                first.gpa,
                end - first.gpa,
                private,
                Via::MapGpa(u64::from(first.huge)),
            );
            i = j;
        }
    }
}

/// `snp-psc`: start-up, then `flips` conversions of buffers of 4 KiB … 8 MiB taken from
/// private memory, shared and later private again (up to 32 in flight), each as PSC requests;
/// the sweep.
pub fn psc_batches(p: &Params) -> Vec<Op> {
    let mut b = Builder::new(p);
    b.startup();
    let mut in_flight: std::collections::VecDeque<(u64, u64)> = Default::default();
    let mut n = 0;
    while n < p.flips {
        if in_flight.len() == 32 || (!in_flight.is_empty() && b.rng.chance(1, 2)) {
            let (gpa, size) = in_flight.pop_front().expect("non-empty");
            send_psc(&mut b, &psc_entries(gpa, size), true);
            b.fault(gpa);
        } else {
            let size = (PAGE_SIZE << b.rng.below(12)) + b.rng.below(4) * PAGE_SIZE;
            let Some(gpa) = b.random_private_range(size, PAGE_SIZE) else {
                n += 1;
                continue;
            };
            send_psc(&mut b, &psc_entries(gpa, size), false);
            b.fault(gpa);
            in_flight.push_back((gpa, size));
        }
        n += 1;
    }
    while let Some((gpa, size)) = in_flight.pop_front() {
        send_psc(&mut b, &psc_entries(gpa, size), true);
    }
    b.sweep();
    b.finish()
}

/// `lazy-accept`: start-up (QEMU makes everything private), then the guest accepts memory in
/// 2 MiB units in random order — a PSC to private per unit, which KVM finds already private —
/// and faults each; at most `queries` units (sampled on larger guests).
pub fn lazy_accept(p: &Params) -> Vec<Op> {
    let mut b = Builder::new(p);
    b.startup();
    let units = b.layout.ram_bytes() / M2;
    let count = units.min(p.queries);
    // A random permutation (or sample) of the units, by a multiplicative walk.
    let step = loop {
        let s = b.rng.range(1, units.max(2)) | 1;
        if gcd(s, units) == 1 {
            break s;
        }
    };
    let start = b.rng.below(units);
    for i in 0..count {
        let unit = (start + i * step) % units;
        let gpa = b.layout.ram_at(unit * M2);
        send_psc(&mut b, &[PscEntry { gpa, huge: true }], true);
        let off = b.rng.below(512) * PAGE_SIZE;
        b.fault(gpa + off);
    }
    b.finish()
}

/// Linux's unit of lazy acceptance on SNP (`accept_memory` works in 4 MiB chunks here).
pub const ACCEPT_CHUNK: u64 = 4 << 20;

/// An SNP guest accepting its memory lazily in 4 MiB chunks, with or without the VMM
/// pre-faulting each chunk (QEMU's `KVM_PRE_FAULT_MEMORY` on a page-state change). Start-up;
/// the chunks holding the boot's shared ranges accepted first (the allocator hands them out
/// accepted), those ranges made shared, then the other chunks in random order — at most
/// `queries / 64` chunks in all. A chunk's acceptance: a PSC to private (2M entries; KVM finds
/// them private already), then, if `prefault`, `fault-range` over the chunk (the pre-fault),
/// then the guest's PVALIDATE of every 4K page (`query` lines; a replay for the MMU model turns
/// them into faults: each one that maps a leaf is a nested page fault exit).
pub fn lazy_accept_chunks(p: &Params, prefault: bool) -> Vec<Op> {
    let mut b = Builder::new(p);
    b.startup();
    let guest = super::guest::LinuxGuest::plan(&b.layout, p.vcpus, &mut b.rng);
    let chunks = b.layout.ram_bytes() / ACCEPT_CHUNK;
    let budget = (p.queries / 64).clamp(1, chunks.max(1));
    let chunk_of = |gpa: u64| gpa & !(ACCEPT_CHUNK - 1);
    let mut first: Vec<u64> = guest.shared.iter().map(|r| chunk_of(r.gpa)).collect();
    first.sort_unstable();
    first.dedup();
    first.truncate(budget as usize);
    let mut done = std::collections::BTreeSet::new();
    for &gpa in &first {
        accept_chunk(&mut b, gpa, prefault);
        done.insert(gpa);
    }
    for r in &guest.shared {
        b.convert(r.gpa, r.size, false, Via::MapGpa(0));
    }
    // The other chunks in a random order, by a multiplicative walk over all of them.
    let step = loop {
        let s = b.rng.range(1, chunks.max(2)) | 1;
        if gcd(s, chunks) == 1 {
            break s;
        }
    };
    let start = b.rng.below(chunks);
    let mut i = 0;
    while (done.len() as u64) < budget && i < chunks {
        let gpa = chunk_of(
            b.layout
                .ram_at(((start + i * step) % chunks) * ACCEPT_CHUNK),
        );
        i += 1;
        if done.insert(gpa) {
            accept_chunk(&mut b, gpa, prefault);
        }
    }
    b.finish()
}

/// One 4 MiB chunk accepted: the PSC, the optional pre-fault, the guest's 1,024 PVALIDATEs.
fn accept_chunk(b: &mut Builder, gpa: u64, prefault: bool) {
    send_psc(b, &psc_entries(gpa, ACCEPT_CHUNK), true);
    if prefault {
        b.push(Op::FaultRange {
            gpa: cvmem::Gpa(gpa),
            size: ACCEPT_CHUNK,
            access: cvmem::Access::Private,
        });
    }
    for page in (gpa..gpa + ACCEPT_CHUNK).step_by(PAGE_SIZE as usize) {
        b.fault(page);
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psc_entries_split_at_2m() {
        let e = psc_entries(M2 - 2 * PAGE_SIZE, 2 * M2 + 3 * PAGE_SIZE);
        let huge: Vec<bool> = e.iter().map(|x| x.huge).collect();
        assert_eq!(huge, [false, false, true, true, false]);
    }
}
