//! `cvmem kvm-run`: boot the cvmem-kvm guest on /dev/kvm, run a conversion workload through
//! real vCPU exits, and print the tracker's final state, the MMU model's page tables, per-exit
//! cost and mismatches.

use std::path::PathBuf;
use std::process::ExitCode;

use cvmem::mmu::{Coverage, Layout, LevelCounts, Recovery};
use cvmem_kvm::MmuConfig;
use cvmem_kvm_rig::{kvm_run, Report, RunOptions, Workload};
use serde_json::json;

/// Arguments of `cvmem kvm-run`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Built-in workload: `selftest` (like KVM's private_mem_conversions_test) or `boot`
    /// (a TDX-like 4 GiB boot with 4K flip churn).
    #[arg(long, default_value = "selftest", conflicts_with = "oplog")]
    workload: String,
    /// Drive an op-log instead: map-gpa lines through the guest; memslot (create, delete, move,
    /// dirty-log), attrs and query on the host; fault, fault-range and accept through the MMU
    /// model.
    #[arg(long)]
    oplog: Option<PathBuf>,
    /// The MMU model's layout: `split` (TDX-like) or `unified` (SNP-like). Default: the
    /// op-log's first `mmu` line, else `split`.
    #[arg(long)]
    mmu: Option<String>,
    /// The MMU model's hugepage recovery: `off`, `on-fault` or `eager` (default `on-fault`, or
    /// the op-log's).
    #[arg(long)]
    recovery: Option<String>,
    /// Single-page flip pairs of the `boot` workload.
    #[arg(long, default_value_t = 400)]
    flips: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> Result<ExitCode, String> {
    let workload = match (&args.oplog, args.workload.as_str()) {
        (Some(path), _) => Workload::Oplog(path.clone()),
        (None, "boot") => Workload::Boot { flips: args.flips },
        (None, name) => Workload::from_name(name)
            .ok_or_else(|| format!("unknown workload `{name}` (selftest, boot)"))?,
    };
    let layout = match args.mmu.as_deref() {
        None => None,
        Some("split") => Some(Layout::SPLIT),
        Some("unified") => Some(Layout::Unified),
        Some(other) => return Err(format!("unknown MMU layout `{other}` (split, unified)")),
    };
    let recovery =
        match args.recovery.as_deref() {
            None => None,
            Some(name) => Some(Recovery::from_name(name).ok_or_else(|| {
                format!("unknown recovery policy `{name}` (off, on-fault, eager)")
            })?),
        };
    // Either option alone keeps the default (or nothing from the op-log) for the other.
    let mmu = (layout.is_some() || recovery.is_some()).then(|| MmuConfig {
        layout: layout.unwrap_or(Layout::SPLIT),
        recovery: recovery.unwrap_or_default(),
    });
    let report = kvm_run(&RunOptions { workload, mmu }).map_err(|e| e.to_string())?;
    if args.json {
        println!("{}", to_json(&report));
    } else {
        print!("{report}");
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn levels(c: &LevelCounts) -> serde_json::Value {
    json!({"4K": c.k4, "2M": c.m2, "1G": c.g1})
}

fn coverage(c: &Coverage) -> serde_json::Value {
    json!({"ratio": c.ratio(), "huge_bytes": c.huge_bytes, "optimum_huge_bytes": c.optimum_huge_bytes,
           "mapped_bytes": c.mapped_bytes, "mappable_bytes": c.mappable_bytes,
           "table_pages": c.table_pages, "optimum_table_pages": c.optimum_table_pages})
}

fn to_json(r: &Report) -> serde_json::Value {
    let (tracking, exit_time) = r.tracking_total();
    let exits: serde_json::Map<String, serde_json::Value> = r
        .exits
        .iter()
        .map(|(k, s)| {
            (
                k.name().to_string(),
                json!({"count": s.handler.count, "handler_ns": s.handler.mean_ns(),
                       "tracking_ns": s.tracking.mean_ns(),
                       "exit_ns": s.total.mean_ns(), "exit_max_ns": s.total.max_ns}),
            )
        })
        .collect();
    let c = &r.conversions;
    let slots: Vec<_> = r
        .final_state
        .slots
        .iter()
        .map(|s| {
            json!({"slot": s.slot, "gpa": s.gpa, "size": s.size, "backing": s.backing.name(),
                   "dirty_log": s.flags.dirty_log, "readonly": s.flags.readonly,
                   "private_bytes": s.private_bytes, "mixed_2m": s.mixed_2m, "mixed_1g": s.mixed_1g,
                   "mappable": {"1G": s.bytes_1g, "2M": s.bytes_2m, "4K": s.bytes_4k}})
        })
        .collect();
    json!({
        "workload": r.workload,
        "passed": r.passed(),
        "host": r.caps.to_string(),
        "vm_type": r.caps.vm_type_name(),
        "transport": r.transport.name(),
        "notes": r.notes,
        "elapsed_ns": r.elapsed.as_nanos() as u64,
        "exits": exits,
        "conversions": {
            "requests": c.requests, "failed": c.failed, "unchanged": c.unchanged,
            "changed_pages": c.changed_pages, "discarded_bytes": c.discarded_bytes,
            "tracking_ns": c.tracking.mean_ns(), "tracking_max_ns": c.tracking.max_ns,
            "invalidate_ns": c.invalidate.mean_ns(),
            "discard_ns": c.discard.mean_ns(), "listeners_ns": c.listeners.mean_ns(),
            "kvm_ns": c.kvm.mean_ns(),
        },
        "tracking_share": r.tracking_share().map(|(t, e)| t / e),
        "tracking_total": {"tracking_ns": tracking, "exit_ns": exit_time},
        "accesses": {"mapped": levels(&r.accesses.mapped), "spurious": r.accesses.spurious,
                     "memory-fault": r.accesses.memory_fault, "no-slot": r.accesses.no_slot,
                     "retry": r.accesses.retry},
        "probes": r.probes,
        "mmu": r.mmu.as_ref().map(|m| {
            let s = &m.stats;
            json!({"layout": s.layout.name(), "recovery": s.recovery.name(),
                   "paging_levels": s.paging_levels,
                   "leaves": {"private": levels(&s.private), "shared": levels(&s.shared)},
                   "table_pages": s.table_pages, "splits": s.splits, "zaps": s.zaps,
                   "collapses": s.collapses, "replaced": s.replaced, "retries": s.retries,
                   "faults": s.faults, "coverage": coverage(&m.coverage),
                   "collapsible": m.collapsible.len(),
                   "touched_all": coverage(&m.touched_all)})
        }),
        "checked_pages": {"guest": r.checked_pages.0, "host": r.checked_pages.1},
        "iommu": {"maps": r.iommu.0.maps, "unmaps": r.iommu.0.unmaps, "splits": r.iommu.2,
                  "mappings": r.iommu.0.mappings, "violations": r.iommu.1},
        "summary": {"attributes": r.final_state.private.iter().map(|&(g, s)| json!([g, s, 8])).collect::<Vec<_>>(),
                    "memslots": slots, "tracker_heap_bytes": r.final_state.tracker_heap_bytes},
        "lines": r.lines.iter().filter_map(|l| cvmem_oplog::render::json(l.line, &l.op, &l.outcome)).collect::<Vec<_>>(),
        "mismatches": r.mismatches.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
    })
}
