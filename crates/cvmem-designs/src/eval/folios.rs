//! Huge folios under a workload: the workload run where each guest_memfd keeps PRIVATE
//! (in-place conversion), every guest-memfd memslot backed by a HugeTLB file of one folio size,
//! under each merge policy.
//!
//! The translation of a v1 workload ([`to_per_gmem`]): `attr-mode per-gmem` first; each
//! guest-memfd memslot gets a file of its size (rounded up to the folio), all shared at first as
//! the VM's pages were, bound at offset 0 (congruent, so folios can map huge); each `attrs` /
//! `map-gpa` becomes `gmem-attrs` on the files of the memslots it meets (outside memslots nothing
//! is private in this mode); a change to shared is followed by `punch-hole` of the same range, as
//! QEMU discards the private copy of memory the guest converts to shared
//! (`ram_block_discard_guest_memfd_range`). Queries stay.

use cvmem::{GmemFlags, GmemOffset, Level, MaxLevel, MergePolicy};
use cvmem_oplog::{Op, Outcome, Replayer};
use serde::Serialize;

/// One workload under one folio size and one merge policy.
#[derive(Clone, Debug, Serialize)]
pub struct FolioRow {
    /// The folio size of every file.
    pub folio: &'static str,
    /// The merge policy.
    pub merge: &'static str,
    /// Private bytes at the end in whole 1G folios, whole 2M folios, 4K pages.
    pub private_1g: u64,
    /// See `private_1g`.
    pub private_2m: u64,
    /// See `private_1g`.
    pub private_4k: u64,
    /// Share of private memory in huge folios (2M or 1G) at evenly spaced points of the run,
    /// the last at the end (percent).
    pub huge_share_over_time: Vec<f64>,
    /// Folios split and merged over the run.
    pub splits: u64,
    /// See `splits`.
    pub merges: u64,
    /// The final sweep's private queries answered at 1G, 2M, 4K.
    pub private_queries: [u64; 3],
    /// Huge private leaves a conversion or punch-hole cut, with every guest access faulted in
    /// through the MMU model: TDX demotes (split layout) and SNP PSMASHes of 2M RMP entries
    /// (unified layout).
    pub demotes: u64,
    /// See `demotes`.
    pub psmash: u64,
    /// Operations the model refused (should be none).
    pub refused: u64,
}

/// How many points `huge_share_over_time` has.
pub const SAMPLES: usize = 8;

/// The workload's operations where each guest-memfd memslot is backed by a file of `folio`
/// folios merging by `merge`.
pub fn to_per_gmem(ops: &[Op], folio: Level, merge: MergePolicy) -> Vec<Op> {
    let mut out = Vec::with_capacity(ops.len() * 2 + 8);
    let mut files = 0u64;
    // (slot, gpa, size, file) of the bound memslots alive.
    let mut bound: Vec<(u64, u64, u64, u64)> = Vec::new();
    let mut started = false;
    for op in ops {
        if !started && !matches!(op, Op::Mmu { .. }) {
            out.push(Op::AttrMode {
                mode: cvmem::AttrMode::PerGmem,
            });
            started = true;
        }
        match *op {
            Op::Memslot {
                slot,
                gpa,
                size,
                flags,
                uaddr,
                backing,
                ..
            } => {
                bound.retain(|b| b.0 != slot || size != 0);
                let mut gmem = None;
                if flags.guest_memfd && size != 0 {
                    let file_size = size.div_ceil(folio.size()) * folio.size();
                    out.push(Op::Gmem {
                        size: file_size,
                        flags: GmemFlags {
                            mmap: true,
                            init_shared: true,
                            folio,
                        },
                        merge: Some(merge),
                    });
                    gmem = Some((files, GmemOffset(0)));
                    bound.push((slot, gpa.0, size, files));
                    files += 1;
                }
                out.push(Op::Memslot {
                    slot,
                    gpa,
                    size,
                    flags,
                    uaddr,
                    backing,
                    gmem,
                });
            }
            Op::Attrs { .. } | Op::MapGpa { .. } => {
                let Some(Ok((gpa, size, attributes))) = op.attribute_change() else {
                    continue;
                };
                let end = gpa.0.saturating_add(size);
                for &(_, sgpa, ssize, file) in &bound {
                    let (lo, hi) = (gpa.0.max(sgpa), end.min(sgpa + ssize));
                    if lo >= hi {
                        continue;
                    }
                    let (offset, size) = (lo - sgpa, hi - lo);
                    out.push(Op::GmemAttrs {
                        file,
                        offset: cvmem::GmemOffset(offset),
                        size,
                        attributes,
                    });
                    if attributes == 0 {
                        out.push(Op::PunchHole {
                            file,
                            offset: cvmem::GmemOffset(offset),
                            size,
                        });
                    }
                }
            }
            _ => out.push(*op),
        }
    }
    out
}

/// Runs `ops` (a v1 workload) per guest_memfd with `folio` folios merging by `merge`.
pub fn run(ops: &[Op], folio: Level, merge: MergePolicy) -> FolioRow {
    let ops = to_per_gmem(ops, folio, merge);
    let mut r = Replayer::new();
    let changes = ops
        .iter()
        .filter(|o| matches!(o, Op::GmemAttrs { .. }))
        .count()
        .max(1);
    let mut seen = 0usize;
    let mut next_sample = 1usize;
    let mut row = FolioRow {
        folio: folio.name(),
        merge: merge.name(),
        private_1g: 0,
        private_2m: 0,
        private_4k: 0,
        huge_share_over_time: Vec::with_capacity(SAMPLES),
        splits: 0,
        merges: 0,
        private_queries: [0; 3],
        demotes: 0,
        psmash: 0,
        refused: 0,
    };
    for op in &ops {
        let outcome = r.apply(op);
        row.refused += u64::from(outcome.is_error());
        match (op, &outcome) {
            (Op::Query { access, .. }, Outcome::Query(MaxLevel::Level(l)))
                if access.is_private() =>
            {
                row.private_queries[2 - l.index()] += 1;
            }
            (Op::GmemAttrs { .. }, _) => {
                seen += 1;
                while next_sample < SAMPLES && seen * SAMPLES >= next_sample * changes {
                    row.huge_share_over_time.push(huge_share(&r));
                    next_sample += 1;
                }
            }
            _ => {}
        }
    }
    while row.huge_share_over_time.len() < SAMPLES {
        row.huge_share_over_time.push(huge_share(&r));
    }
    (row.demotes, row.psmash) = cut_leaves(&ops);
    for (_, g) in r.tracker().gmems() {
        let [k4, m2, g1] = g.private_by_folio();
        row.private_4k += k4;
        row.private_2m += m2;
        row.private_1g += g1;
        row.splits += g.folios().counts().splits;
        row.merges += g.folios().counts().merges;
    }
    row
}

/// The per-gmem run `ops` with every access faulted in, in the split layout (TDX demotes) and
/// in the unified one (SNP PSMASHes).
fn cut_leaves(ops: &[Op]) -> (u64, u64) {
    let faulted = super::accept::as_faults(ops.to_vec());
    let stats = |layout| {
        let mut r = Replayer::new();
        r.apply(&Op::Mmu {
            layout,
            recovery: None,
        });
        for op in &faulted {
            r.apply(op);
        }
        r.vm().stats()
    };
    let split = stats(cvmem_oplog::Layout::Split);
    let unified = stats(cvmem_oplog::Layout::Unified);
    (split.demotes, unified.psmash)
}

/// Percent of private memory in whole 2M or 1G folios now.
fn huge_share(r: &Replayer) -> f64 {
    let (mut huge, mut all) = (0u64, 0u64);
    for (_, g) in r.tracker().gmems() {
        let [k4, m2, g1] = g.private_by_folio();
        huge += m2 + g1;
        all += k4 + m2 + g1;
    }
    if all == 0 {
        0.0
    } else {
        huge as f64 * 100.0 / all as f64
    }
}

/// Every folio size and policy compared: 2M and 1G HugeTLB under never / punch-hole / eager,
/// and order-0 pages (Linux 7.3) once.
pub fn compare(ops: &[Op]) -> Vec<FolioRow> {
    let mut rows = vec![run(ops, Level::K4, MergePolicy::Never)];
    for folio in [Level::M2, Level::G1] {
        for merge in [
            MergePolicy::Never,
            MergePolicy::OnPunchHole,
            MergePolicy::Eager,
        ] {
            rows.push(run(ops, folio, merge));
        }
    }
    rows
}

/// The rows as a table for people.
pub fn table(workload: &str, guest: &str, rows: &[FolioRow]) -> String {
    let mut out = format!(
        "huge folios, workload {workload} at {guest} (per guest_memfd; a change to shared punches the private copy, as QEMU does):\n"
    );
    out.push_str(&format!(
        "  {:>5}  {:>10}  {:>9}  {:>9}  {:>9}  {:>7}  {:>7}  {:>7}  {:>6}  {:>22}  {}\n",
        "folio",
        "merge",
        "priv 1G",
        "priv 2M",
        "priv 4K",
        "splits",
        "merges",
        "demotes",
        "PSMASH",
        "private queries 1G/2M/4K",
        "huge share over time (%)"
    ));
    for r in rows {
        let over: Vec<String> = r
            .huge_share_over_time
            .iter()
            .map(|s| format!("{s:.0}"))
            .collect();
        out.push_str(&format!(
            "  {:>5}  {:>10}  {:>9}  {:>9}  {:>9}  {:>7}  {:>7}  {:>7}  {:>6}  {:>22}  {}\n",
            r.folio,
            r.merge,
            cvmem_oplog::fmt_bytes(r.private_1g),
            cvmem_oplog::fmt_bytes(r.private_2m),
            cvmem_oplog::fmt_bytes(r.private_4k),
            r.splits,
            r.merges,
            r.demotes,
            r.psmash,
            format!(
                "{}/{}/{}",
                r.private_queries[0], r.private_queries[1], r.private_queries[2]
            ),
            over.join(" ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::{generate, Params};

    #[test]
    fn policies_order_as_they_must_on_a_boot() {
        let p = Params {
            guest_bytes: 4 << 30,
            queries: 4096,
            ..Params::default()
        };
        let w = generate("boot", &p).unwrap();
        let rows = compare(&w.ops);
        for r in &rows {
            assert_eq!(r.refused, 0, "{r:?}");
        }
        let huge = |r: &FolioRow| r.private_1g + r.private_2m;
        let total = |r: &FolioRow| r.private_1g + r.private_2m + r.private_4k;
        // Order-0 pages: nothing huge, every private query at 4K.
        assert_eq!(huge(&rows[0]), 0);
        assert_eq!(rows[0].private_queries[..2], [0, 0]);
        // No huge leaf to cut.
        assert_eq!((rows[0].demotes, rows[0].psmash), (0, 0));
        assert!(rows[0].private_queries[2] > 0);
        // The same private memory whatever the folios.
        for r in &rows[1..] {
            assert_eq!(total(r), total(&rows[0]), "{r:?}");
        }
        // Per folio size: merging never loses huge memory and never splits less.
        for chunk in rows[1..].chunks(3) {
            let (never, punch, eager) = (&chunk[0], &chunk[1], &chunk[2]);
            assert!(
                huge(never) <= huge(punch) && huge(punch) <= huge(eager),
                "{chunk:?}"
            );
            assert_eq!(never.merges, 0);
            assert!(huge(never) > 0 && huge(never) < total(never), "{never:?}");
        }
    }
}
