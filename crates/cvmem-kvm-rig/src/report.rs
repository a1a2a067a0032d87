//! What a KVM run measured and found.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use cvmem::mmu::{Coverage, FaultRangeCounts, LevelCounts};

use cvmem_oplog::{fmt_bytes, Op, Outcome};

use crate::caps::HostCaps;
use cvmem_kvm::{IommuStats, MemoryMap, MmuSnapshot, RequestSource};

/// Count, total and maximum of a set of durations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Sum of the samples in ns.
    pub total_ns: u64,
    /// Largest sample in ns.
    pub max_ns: u64,
}

impl Summary {
    /// Adds a sample.
    pub fn add(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.count += 1;
        self.total_ns = self.total_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
    }
    /// Mean in ns (0 without samples).
    pub fn mean_ns(&self) -> u64 {
        self.total_ns.checked_div(self.count).unwrap_or(0)
    }
}

/// Kinds of vCPU exits a run handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExitKind {
    /// A conversion through the port-I/O transport.
    MapGpa,
    /// `KVM_EXIT_HYPERCALL` (KVM_HC_MAP_GPA_RANGE).
    Hypercall,
    /// `KVM_EXIT_MEMORY_FAULT`.
    MemoryFault,
    /// The paravirtual fault probe.
    FaultProbe,
    /// A script synchronisation point (host writes or checks memory).
    Sync,
    /// A mismatch report from the guest.
    Report,
    /// End of a script batch.
    Done,
    /// A calibration exit (no work).
    Ping,
}

impl ExitKind {
    /// A short name.
    pub const fn name(self) -> &'static str {
        match self {
            ExitKind::MapGpa => "map-gpa (port)",
            ExitKind::Hypercall => "hypercall",
            ExitKind::MemoryFault => "memory-fault",
            ExitKind::FaultProbe => "fault probe",
            ExitKind::Sync => "sync",
            ExitKind::Report => "report",
            ExitKind::Done => "done",
            ExitKind::Ping => "ping",
        }
    }
}

/// Cost of one kind of exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitStats {
    /// Time in the host's handler.
    pub handler: Summary,
    /// Of the handler's time: the tracker and the MMU model (conversions, the guest's accesses
    /// since the previous exit and fault probes modelled as faults, slot changes), locks
    /// included. Discards, listeners, KVM calls and data checks are not tracking.
    pub tracking: Summary,
    /// Total exit time: from KVM_RUN returning this exit to it returning the next one (handler,
    /// re-entry, the guest's few instructions to its next exit, and the exit itself).
    pub total: Summary,
}

/// What conversions cost and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConversionStats {
    /// Requests by source name (`port-io`, `hypercall`, `memory-fault`, `vmm`).
    pub requests: BTreeMap<&'static str, u64>,
    /// Requests refused (status returned to the guest, or VMM errors).
    pub failed: u64,
    /// Requests that changed nothing (range already of that kind).
    pub unchanged: u64,
    /// Pages whose kind changed.
    pub changed_pages: u64,
    /// Bytes discarded.
    pub discarded_bytes: u64,
    /// Tracking time per request: the tracker and the MMU model (decode not included; reading
    /// runs, invalidating, storing).
    pub tracking: Summary,
    /// Of `tracking`: the MMU model's invalidation (zaps and splits) per request.
    pub invalidate: Summary,
    /// KVM_SET_MEMORY_ATTRIBUTES time per request.
    pub kvm: Summary,
    /// Discard time per request.
    pub discard: Summary,
    /// Listener time per request.
    pub listeners: Summary,
}

/// A difference between what a check expected and what it found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Index of the script command (or op-log line) that found it.
    pub command: u64,
    /// Who saw it and what: `guest data`, `host data`, `status`, `state`, `iommu`, ...
    pub what: String,
    /// The address (or 0).
    pub gpa: u64,
    /// Expected value.
    pub expected: u64,
    /// Found value.
    pub actual: u64,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} {} at {:#x}: expected {:#x}, found {:#x}",
            self.command, self.what, self.gpa, self.expected, self.actual
        )
    }
}

/// One line of an op-log and what it did (the op-log driver's [`Outcome`], rendered by
/// [`cvmem_oplog::render`] as `cvmem replay` renders it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineResult {
    /// Line number.
    pub line: usize,
    /// The operation.
    pub op: Op,
    /// What it did.
    pub outcome: Outcome,
}

/// Everything a [`crate::kvm_run`] found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The workload's name.
    pub workload: String,
    /// What the host's KVM offers.
    pub caps: HostCaps,
    /// How the guest asked for conversions: [`RequestSource::Hypercall`] (`vmmcall` at CPL 0,
    /// where KVM delivers KVM_EXIT_HYPERCALL) or [`RequestSource::PortIo`].
    pub transport: RequestSource,
    /// Notes worth showing once (e.g. KVM keeps no attributes).
    pub notes: Vec<String>,
    /// How the workload was adapted to what the host lacks (e.g. an op-log's `guest-memfd`
    /// slots run as anonymous slots without KVM_CAP_GUEST_MEMFD); [`Report::lines`] hold the
    /// operations as they ran.
    pub adaptations: Vec<String>,
    /// Exits by kind.
    pub exits: BTreeMap<ExitKind, ExitStats>,
    /// Conversions.
    pub conversions: ConversionStats,
    /// Quadwords of pages the guest checked, and the host checked.
    pub checked_pages: (u64, u64),
    /// The guest's reads and writes of memory (its `fill` and `check` commands), modelled as
    /// faults through the MMU model, one outcome per 4K page.
    pub accesses: FaultRangeCounts,
    /// Outcomes of the guest's fault probes (after any implicit conversion) by name.
    pub probes: BTreeMap<&'static str, u64>,
    /// The MMU model at the end.
    pub mmu: Option<MmuSnapshot>,
    /// Every mismatch found (data, statuses, tracker vs expected state, IOMMU vs tracker).
    pub mismatches: Vec<Mismatch>,
    /// Op-log lines with results or errors.
    pub lines: Vec<LineResult>,
    /// The memory state at the end.
    pub final_state: MemoryMap,
    /// The recording IOMMU's counters, its violations, and mapping splits.
    pub iommu: (IommuStats, Vec<String>, u64),
    /// Wall time of the guest run.
    pub elapsed: Duration,
}

impl Report {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty() && self.iommu.1.is_empty()
    }
}

impl Report {
    /// Mean tracking time of a conversion exit and the mean cost of such an exit, in ns: the
    /// KVM round trip of an empty exit (calibration pings) plus the mean handler time of the
    /// transport's exits; tracking is the tracker and the MMU model during those exits (the
    /// conversion, and the guest's accesses since the previous exit). `None` without both
    /// kinds of exits.
    pub fn tracking_share(&self) -> Option<(f64, f64)> {
        let ping = self.exits.get(&ExitKind::Ping)?.total;
        let map = self.exits.get(&ExitKind::MapGpa)?;
        if ping.count == 0 || map.handler.count == 0 {
            return None;
        }
        let exit = (ping.mean_ns() + map.handler.mean_ns()) as f64;
        Some((map.tracking.mean_ns() as f64, exit))
    }

    /// Over every exit: tracking time and total exit time, in ns. The last exit of each batch
    /// has no next exit to end its total time: its handler time stands in.
    pub fn tracking_total(&self) -> (u64, u64) {
        self.exits.values().fold((0, 0), |(t, e), s| {
            let unended = s.handler.count.saturating_sub(s.total.count);
            (
                t + s.tracking.total_ns,
                e + s.total.total_ns + unended * s.handler.mean_ns(),
            )
        })
    }
}

fn levels(c: &LevelCounts) -> String {
    format!("4K {} 2M {} 1G {}", c.k4, c.m2, c.g1)
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        100.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn coverage(c: &Coverage) -> String {
    format!(
        "huge {} of optimum {} ({:.1}%), mapped {} of mappable {}, table pages {} (optimum {})",
        fmt_bytes(c.huge_bytes),
        fmt_bytes(c.optimum_huge_bytes),
        c.ratio() * 100.0,
        fmt_bytes(c.mapped_bytes),
        fmt_bytes(c.mappable_bytes),
        c.table_pages,
        c.optimum_table_pages,
    )
}

/// An [`MmuSnapshot`] as text (what `cvmem kvm-run` prints).
#[derive(Clone, Copy, Debug)]
pub struct MmuText<'a>(pub &'a MmuSnapshot);

impl fmt::Display for MmuText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snapshot = self.0;
        let s = &snapshot.stats;
        writeln!(
            f,
            "mmu model: {} layout, recovery {}, {}-level paging",
            s.layout, s.recovery, s.paging_levels
        )?;
        writeln!(
            f,
            "  leaves: private {}, shared {}; table pages {} ({}); TLB reach {} per leaf",
            levels(&s.private),
            levels(&s.shared),
            s.table_pages,
            fmt_bytes(s.table_bytes()),
            fmt_bytes(s.tlb_reach_per_entry()),
        )?;
        writeln!(
            f,
            "  events: {} faults, {} splits, {} zaps, {} collapses, {} replaced, {} retries",
            s.faults, s.splits, s.zaps, s.collapses, s.replaced, s.retries
        )?;
        let complete = snapshot.collapsible.iter().filter(|c| c.complete).count();
        writeln!(
            f,
            "  coverage now: {}; {} collapsible regions ({} wholly mapped)",
            coverage(&snapshot.coverage),
            snapshot.collapsible.len(),
            complete
        )?;
        writeln!(
            f,
            "  if the guest touched every page now: {}",
            coverage(&snapshot.touched_all)
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "workload {}: {}",
            self.workload,
            if self.passed() { "PASS" } else { "FAIL" }
        )?;
        writeln!(f, "host: {}", self.caps)?;
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        for a in &self.adaptations {
            writeln!(f, "adapted: {a}")?;
        }
        writeln!(f, "guest run: {:.1} ms", self.elapsed.as_secs_f64() * 1e3)?;
        writeln!(
            f,
            "exits                   count   handler mean   tracking mean   exit time mean (max)   tracking share"
        )?;
        for (k, s) in &self.exits {
            // The last exit of a batch has no exit time (nothing follows it).
            let share = match s.total.count {
                0 => "-".to_string(),
                _ => format!("{:.2}%", percent(s.tracking.mean_ns(), s.total.mean_ns())),
            };
            writeln!(
                f,
                "  {:<20} {:>7}   {:>9.2} us   {:>10.2} us   {:>9.1} us ({:>6.1} us)   {:>7}",
                k.name(),
                s.handler.count,
                s.handler.mean_ns() as f64 / 1e3,
                s.tracking.mean_ns() as f64 / 1e3,
                s.total.mean_ns() as f64 / 1e3,
                s.total.max_ns as f64 / 1e3,
                share,
            )?;
        }
        let (tracking, total) = self.tracking_total();
        writeln!(
            f,
            "  all exits: tracking (tracker + MMU model) {:.2} ms of {:.2} ms exit time ({:.2}%)",
            tracking as f64 / 1e6,
            total as f64 / 1e6,
            percent(tracking, total)
        )?;
        let c = &self.conversions;
        let reqs: Vec<String> = c.requests.iter().map(|(k, v)| format!("{k} {v}")).collect();
        writeln!(
            f,
            "conversions: {} ({}), {} failed, {} unchanged, {} pages changed, {} discarded",
            c.requests.values().sum::<u64>(),
            reqs.join(", "),
            c.failed,
            c.unchanged,
            c.changed_pages,
            fmt_bytes(c.discarded_bytes)
        )?;
        writeln!(
            f,
            "  per conversion: tracking {:.2} us (max {:.1}; MMU invalidation {:.2} us of it), discard {:.1} us, listeners {:.1} us, kvm {:.1} us",
            c.tracking.mean_ns() as f64 / 1e3,
            c.tracking.max_ns as f64 / 1e3,
            c.invalidate.mean_ns() as f64 / 1e3,
            c.discard.mean_ns() as f64 / 1e3,
            c.listeners.mean_ns() as f64 / 1e3,
            c.kvm.mean_ns() as f64 / 1e3,
        )?;
        if let Some((tracking, exit)) = self.tracking_share() {
            writeln!(
                f,
                "  tracking is {:.2}% of a conversion exit ({:.2} us of {:.1} us = KVM round trip {:.1} us + handler {:.2} us)",
                tracking * 100.0 / exit,
                tracking / 1e3,
                exit / 1e3,
                self.exits.get(&ExitKind::Ping).map_or(0, |p| p.total.mean_ns()) as f64 / 1e3,
                self.exits.get(&ExitKind::MapGpa).map_or(0, |p| p.handler.mean_ns()) as f64 / 1e3,
            )?;
        }
        writeln!(
            f,
            "data checks: {} pages by the guest, {} by the host",
            self.checked_pages.0, self.checked_pages.1
        )?;
        let a = &self.accesses;
        if a.mapped.total() + a.spurious + a.memory_fault + a.no_slot + a.retry != 0 {
            writeln!(
                f,
                "guest accesses modelled as faults (pages): {}",
                cvmem_oplog::render::result_text(&Outcome::FaultRange(*a)).unwrap_or_default()
            )?;
        }
        if !self.probes.is_empty() {
            let p: Vec<String> = self
                .probes
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            writeln!(f, "fault probes: {}", p.join(", "))?;
        }
        let (io, violations, splits) = &self.iommu;
        writeln!(
            f,
            "iommu: {} maps, {} unmaps, {} splits, {} mappings now ({}), {} violations",
            io.maps,
            io.unmaps,
            splits,
            io.mappings,
            fmt_bytes(io.mapped_bytes),
            violations.len()
        )?;
        for v in violations.iter().take(10) {
            writeln!(f, "  violation: {v}")?;
        }
        writeln!(
            f,
            "final state (tracker heap {} bytes):",
            self.final_state.tracker_heap_bytes
        )?;
        for s in &self.final_state.slots {
            writeln!(
                f,
                "  slot {:>5} {:#14x} {:>6} {:<30} private {:>6}  mixed 2M {:>4} 1G {:>2}  mappable 1G {:>6} 2M {:>6} 4K {:>6}",
                s.slot,
                s.gpa,
                fmt_bytes(s.size).to_string(),
                format!(
                    "{}{}{}",
                    s.backing.name(),
                    if s.flags.dirty_log { ", dirty-log" } else { "" },
                    if s.flags.readonly { ", readonly" } else { "" }
                ),
                fmt_bytes(s.private_bytes).to_string(),
                s.mixed_2m,
                s.mixed_1g,
                fmt_bytes(s.bytes_1g).to_string(),
                fmt_bytes(s.bytes_2m).to_string(),
                fmt_bytes(s.bytes_4k).to_string(),
            )?;
        }
        writeln!(f, "  {} private runs", self.final_state.private.len())?;
        for (gpa, size) in self.final_state.private.iter().take(12) {
            writeln!(f, "    {gpa:#14x} +{}", fmt_bytes(*size))?;
        }
        if let Some(mmu) = &self.mmu {
            write!(f, "{}", MmuText(mmu))?;
        }
        for l in &self.lines {
            if let Some(text) = cvmem_oplog::render::text(l.line, &l.op, &l.outcome) {
                writeln!(f, "{text}")?;
            }
        }
        writeln!(f, "mismatches: {}", self.mismatches.len())?;
        for m in self.mismatches.iter().take(20) {
            writeln!(f, "  {m}")?;
        }
        Ok(())
    }
}
