//! How guests accept memory, through the TDP MMU model: a TD boot's accepts under each
//! GUEST_INHIBIT policy (TDX), and an SNP guest's lazy 4 MiB acceptance with and without the
//! VMM pre-faulting, on order-0 pages and on 2M folios.
//!
//! The generators ([`tdx::boot_accepts`], [`snp::lazy_accept_chunks`]) write the guest's
//! accesses as `query` lines; here they run as faults (`fault` lines), so that every access
//! that maps a leaf is a nested page fault exit and every other one found its leaf mapped.

use cvmem::mmu::{AcceptPolicy, FaultOutcome, LevelCounts, MmuStats, Recovery, Vm};
use cvmem::{Level, MergePolicy};
use cvmem_oplog::{Driver, Layout, Op, Outcome, Replayer};
use serde::Serialize;

use super::folios::to_per_gmem;
use crate::workloads::{snp, tdx, Params};

/// Guest accesses (`query` lines) as faults through the MMU model.
pub(crate) fn as_faults(ops: Vec<Op>) -> Vec<Op> {
    ops.into_iter()
        .map(|op| match op {
            Op::Query { gpa, access } => Op::Fault { gpa, access },
            op => op,
        })
        .collect()
}

/// Leaves per level, largest first, for tables and JSON.
fn levels(c: &LevelCounts) -> [u64; 3] {
    [c.g1, c.m2, c.k4]
}

/// One TD boot under one accept policy and recovery policy.
#[derive(Clone, Debug, Serialize)]
pub struct TdxRow {
    /// GUEST_INHIBIT policy ([`AcceptPolicy::name`]).
    pub policy: &'static str,
    /// Recovery policy: `off` is the huge page series (no promotion), `eager` adds PROMOTE.
    pub recovery: &'static str,
    /// Accepts at 4K (TD build and firmware included) and at 2M.
    pub accepts: [u64; 2],
    /// Private leaves at login: 1G, 2M, 4K.
    pub private_leaves: [u64; 3],
    /// 2M pages and 1G pages with GUEST_INHIBIT set at login.
    pub inhibited: [u64; 2],
    /// Private leaves split because an accept or a change cut them (TDX demote): every split,
    /// and those a conversion made ([`MmuStats::demotes`]).
    pub splits: u64,
    /// See `splits`.
    pub demotes: u64,
    /// Regions PROMOTE collapsed into one leaf.
    pub collapses: u64,
    /// Guest accesses that mapped a leaf (EPT violation exits).
    pub fault_exits: u64,
    /// Operations the model refused (none expected).
    pub refused: u64,
}

/// The policies a TD boot is run under: the series without and with the inhibit (no
/// promotion), then with PROMOTE, one-way and cleared once accepted. No inhibit under PROMOTE
/// is left out: it collapses the 4K mapping a guest's accept needs at once (a livelock).
pub const TDX_POLICIES: [(AcceptPolicy, Recovery); 4] = [
    (AcceptPolicy::NoInhibit, Recovery::Off),
    (AcceptPolicy::OneWay, Recovery::Off),
    (AcceptPolicy::OneWay, Recovery::Eager),
    (AcceptPolicy::ClearWhenAccepted, Recovery::Eager),
];

/// The TD boot of [`tdx::boot_accepts`] at `p` under each of [`TDX_POLICIES`].
pub fn tdx(p: &Params) -> Vec<TdxRow> {
    let ops = as_faults(tdx::boot_accepts(p));
    TDX_POLICIES
        .iter()
        .map(|&(policy, recovery)| tdx_run(&ops, policy, recovery))
        .collect()
}

fn tdx_run(ops: &[Op], policy: AcceptPolicy, recovery: Recovery) -> TdxRow {
    let mut vm = Vm::new(cvmem::mmu::Layout::SPLIT, recovery).with_accept_policy(policy);
    let mut driver = Driver::new();
    let mut row = TdxRow {
        policy: policy.name(),
        recovery: recovery.name(),
        accepts: [0; 2],
        private_leaves: [0; 3],
        inhibited: [0; 2],
        splits: 0,
        demotes: 0,
        collapses: 0,
        fault_exits: 0,
        refused: 0,
    };
    for op in ops {
        let outcome = driver.apply(&mut vm, op);
        row.refused += u64::from(outcome.is_error());
        match (op, outcome) {
            (Op::Accept { level, .. }, Outcome::Accept(_)) => {
                row.accepts[usize::from(*level != Level::K4)] += 1;
            }
            (Op::Fault { .. }, Outcome::Fault(FaultOutcome::Mapped { .. })) => {
                row.fault_exits += 1;
            }
            _ => {}
        }
    }
    let stats = vm.stats();
    row.private_leaves = levels(&stats.private);
    for slot in vm.tracker().memslots() {
        if let Some(e) = vm.tracker().eligibility(slot.id()) {
            row.inhibited[0] += e.inhibited[0];
            row.inhibited[1] += e.inhibited[1];
        }
    }
    (row.splits, row.demotes, row.collapses) = (stats.splits, stats.demotes, stats.collapses);
    row
}

/// One SNP guest's lazy acceptance on one backing, with or without pre-faulting.
#[derive(Clone, Debug, Serialize)]
pub struct SnpRow {
    /// guest_memfd folio size: `4K` (order-0, Linux 7.3) or `2M` (HugeTLB).
    pub folio: &'static str,
    /// Whether the VMM pre-faulted each chunk after the guest's page-state change.
    pub prefault: bool,
    /// 4 MiB chunks accepted.
    pub chunks: u64,
    /// Guest accesses that mapped a leaf (nested page fault exits).
    pub fault_exits: u64,
    /// Leaves the pre-faults mapped (inside `KVM_PRE_FAULT_MEMORY`, no guest exit).
    pub prefaulted: u64,
    /// Private leaves at the end: 1G, 2M, 4K (a 2M leaf is a 2M RMP entry).
    pub private_leaves: [u64; 3],
    /// 2M RMP entries PSMASHed because a change to shared cut them.
    pub psmash: u64,
    /// Operations the model refused (none expected).
    pub refused: u64,
}

/// The SNP guest of [`snp::lazy_accept_chunks`] at `p`: order-0 pages and 2M folios, each
/// without and with pre-faulting (unified layout, private memory per guest_memfd).
pub fn snp(p: &Params) -> Vec<SnpRow> {
    let mut rows = Vec::new();
    for prefault in [false, true] {
        let ops = as_faults(snp::lazy_accept_chunks(p, prefault));
        for folio in [Level::K4, Level::M2] {
            rows.push(snp_run(&ops, folio, prefault));
        }
    }
    rows.sort_by_key(|r| (r.folio != "4K", r.prefault));
    rows
}

fn snp_run(ops: &[Op], folio: Level, prefault: bool) -> SnpRow {
    let mut with_mmu = vec![Op::Mmu {
        layout: Layout::Unified,
        recovery: None,
    }];
    with_mmu.extend_from_slice(ops);
    let ops = to_per_gmem(&with_mmu, folio, MergePolicy::Never);
    let mut r = Replayer::new();
    let mut row = SnpRow {
        folio: folio.name(),
        prefault,
        chunks: 0,
        fault_exits: 0,
        prefaulted: 0,
        private_leaves: [0; 3],
        psmash: 0,
        refused: 0,
    };
    for op in &ops {
        let outcome = r.apply(op);
        row.refused += u64::from(outcome.is_error());
        match outcome {
            Outcome::Fault(FaultOutcome::Mapped { .. }) => row.fault_exits += 1,
            Outcome::FaultRange(c) => row.prefaulted += c.mapped.total(),
            _ => {}
        }
    }
    // The generator's only faults are the guest's 1,024 accesses per chunk.
    let accesses = ops.iter().filter(|o| matches!(o, Op::Fault { .. })).count() as u64;
    row.chunks = accesses / (snp::ACCEPT_CHUNK / cvmem::PAGE_SIZE);
    let stats: MmuStats = r.vm().stats();
    row.private_leaves = levels(&stats.private);
    row.psmash = stats.psmash;
    row
}

/// The TD boot rows as a table for people.
pub fn tdx_table(guest: &str, rows: &[TdxRow]) -> String {
    let mut out = format!(
        "TDX: a TD boot's accepts at {guest} (TD build and firmware at 4K, Linux lazily at 2M, \
         hot-range flips re-accepted at 4K, {} faults at login):\n",
        tdx::LOGIN_FAULTS
    );
    out.push_str(&format!(
        "  {:>19}  {:>9}  {:>12}  {:>22}  {:>15}  {:>7}  {:>7}  {:>9}  {:>11}\n",
        "GUEST_INHIBIT",
        "recovery",
        "accepts 4K/2M",
        "private leaves 1G/2M/4K",
        "inhibited 2M/1G",
        "splits",
        "demotes",
        "collapses",
        "fault exits"
    ));
    for r in rows {
        out.push_str(&format!(
            "  {:>19}  {:>9}  {:>12}  {:>22}  {:>15}  {:>7}  {:>7}  {:>9}  {:>11}\n",
            r.policy,
            r.recovery,
            format!("{}/{}", r.accepts[0], r.accepts[1]),
            format!(
                "{}/{}/{}",
                r.private_leaves[0], r.private_leaves[1], r.private_leaves[2]
            ),
            format!("{}/{}", r.inhibited[0], r.inhibited[1]),
            r.splits,
            r.demotes,
            r.collapses,
            r.fault_exits
        ));
    }
    out
}

/// The SNP rows as a table for people.
pub fn snp_table(guest: &str, rows: &[SnpRow]) -> String {
    let mut out = format!(
        "SNP: lazy acceptance in 4 MiB chunks at {guest} (PSC to private, optional pre-fault, \
         PVALIDATE of every 4K page; the boot's shared ranges converted after their chunks):\n"
    );
    out.push_str(&format!(
        "  {:>5}  {:>9}  {:>7}  {:>11}  {:>15}  {:>11}  {:>22}  {:>7}\n",
        "folio",
        "pre-fault",
        "chunks",
        "fault exits",
        "exits per chunk",
        "pre-faulted",
        "private leaves 1G/2M/4K",
        "PSMASH"
    ));
    for r in rows {
        let per_chunk = r.fault_exits as f64 / r.chunks.max(1) as f64;
        out.push_str(&format!(
            "  {:>5}  {:>9}  {:>7}  {:>11}  {:>15.1}  {:>11}  {:>22}  {:>7}\n",
            r.folio,
            if r.prefault { "yes" } else { "no" },
            r.chunks,
            r.fault_exits,
            per_chunk,
            r.prefaulted,
            format!(
                "{}/{}/{}",
                r.private_leaves[0], r.private_leaves[1], r.private_leaves[2]
            ),
            r.psmash
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            guest_bytes: 4 << 30,
            queries: 4096,
            flips: 2000,
            ..Params::default()
        }
    }

    #[test]
    fn a_td_boot_under_each_inhibit_policy() {
        let rows = tdx(&params());
        for r in &rows {
            assert_eq!(r.refused, 0, "{r:?}");
            // The guest does the same whatever KVM's policy.
            assert_eq!(r.accepts, rows[0].accepts, "{r:?}");
            assert_eq!(r.fault_exits, rows[0].fault_exits, "{r:?}");
        }
        let [none, one_way, one_way_promote, clear] = &rows[..] else {
            panic!("{rows:?}")
        };
        // TD build (1,024 pages) and firmware (1,018) accept at 4K; Linux the rest at 2M.
        assert!(
            none.accepts[0] >= 1024 + 1018 && none.accepts[1] > 1500,
            "{none:?}"
        );
        assert_eq!(none.inhibited, [0, 0]);
        assert!(
            one_way.inhibited[0] > 0 && one_way.inhibited[1] > 0,
            "{one_way:?}"
        );
        // Without promotion the inhibit changes nothing on this boot (as published: 1,144 vs
        // 1,143 2M mappings); clearing it once accepted lets PROMOTE win 2M pages back.
        assert!(none.private_leaves[1] >= one_way.private_leaves[1]);
        assert!(clear.private_leaves[1] > one_way_promote.private_leaves[1]);
        assert!(clear.inhibited[0] < one_way_promote.inhibited[0]);
        assert!(clear.collapses > 0 && one_way.collapses == 0);
    }

    #[test]
    fn snp_lazy_acceptance_costs_a_fault_per_page_without_huge_folios_or_prefault() {
        let rows = snp(&params());
        let [k4, k4_pre, m2, m2_pre] = &rows[..] else {
            panic!("{rows:?}")
        };
        for r in &rows {
            assert_eq!(r.refused, 0, "{r:?}");
            assert_eq!(r.chunks, 64, "{r:?}");
        }
        // Order-0 pages: every PVALIDATE faults (1,024 exits a chunk), unless pre-faulted.
        assert_eq!(k4.fault_exits, 1024 * k4.chunks);
        assert_eq!((k4_pre.fault_exits, m2_pre.fault_exits), (0, 0));
        assert_eq!(k4_pre.prefaulted, k4.fault_exits);
        // 2M folios: two 2M leaves per chunk where nothing in it is shared.
        assert!(m2.fault_exits < 3 * m2.chunks, "{m2:?}");
        assert_eq!(m2.fault_exits, m2_pre.prefaulted);
        // Pre-faulting moves the exits, not the mappings.
        assert_eq!(k4.private_leaves, k4_pre.private_leaves);
        assert_eq!(m2.private_leaves, m2_pre.private_leaves);
        assert_eq!(k4.private_leaves[..2], [0, 0]);
        assert!(m2.private_leaves[1] > 0);
        // The boot's shared ranges cut 2M RMP entries only where there are any.
        assert_eq!(k4.psmash, 0);
        assert!(m2.psmash > 0, "{m2:?}");
    }
}
