//! What a KVM run measured and found.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use cvmem::fmt_bytes;

use crate::iommu::IommuStats;
use crate::query::MemoryMap;
use crate::vm::HostCaps;

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
    /// Tracker time per request (decode not included; reading runs and updating).
    pub tracking: Summary,
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

/// One line of an op-log that produced a result or an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineResult {
    /// Line number.
    pub line: usize,
    /// Operation name.
    pub op: &'static str,
    /// Result (`2M`, `memory-fault`, `ok`, ...) or error (`EINVAL: ...`).
    pub result: String,
}

/// Everything a [`crate::kvm_run`] found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The workload's name.
    pub workload: String,
    /// What the host's KVM offers.
    pub caps: HostCaps,
    /// Notes worth showing once (e.g. KVM keeps no attributes).
    pub notes: Vec<String>,
    /// Exits by kind.
    pub exits: BTreeMap<ExitKind, ExitStats>,
    /// Conversions.
    pub conversions: ConversionStats,
    /// Quadwords of pages the guest checked, and the host checked.
    pub checked_pages: (u64, u64),
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
    /// Mean tracking time of a conversion and the mean cost of a conversion exit, in ns: the
    /// KVM round trip of an empty exit (calibration pings) plus the mean handler time of the
    /// transport's exits. `None` without both kinds of exits.
    pub fn tracking_share(&self) -> Option<(f64, f64)> {
        let ping = self.exits.get(&ExitKind::Ping)?.total;
        let map = self.exits.get(&ExitKind::MapGpa)?.handler;
        if ping.count == 0 || map.count == 0 {
            return None;
        }
        let exit = (ping.mean_ns() + map.mean_ns()) as f64;
        Some((self.conversions.tracking.mean_ns() as f64, exit))
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
        writeln!(f, "guest run: {:.1} ms", self.elapsed.as_secs_f64() * 1e3)?;
        writeln!(
            f,
            "exits                   count   handler mean   exit time mean (max)"
        )?;
        for (k, s) in &self.exits {
            writeln!(
                f,
                "  {:<20} {:>7}   {:>9.1} us   {:>9.1} us ({:.1} us)",
                k.name(),
                s.handler.count,
                s.handler.mean_ns() as f64 / 1e3,
                s.total.mean_ns() as f64 / 1e3,
                s.total.max_ns as f64 / 1e3
            )?;
        }
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
            "  per conversion: tracking {:.2} us (max {:.1}), discard {:.1} us, listeners {:.1} us, kvm {:.1} us",
            c.tracking.mean_ns() as f64 / 1e3,
            c.tracking.max_ns as f64 / 1e3,
            c.discard.mean_ns() as f64 / 1e3,
            c.listeners.mean_ns() as f64 / 1e3,
            c.kvm.mean_ns() as f64 / 1e3,
        )?;
        if let Some((tracking, exit)) = self.tracking_share() {
            writeln!(
                f,
                "  tracking is {:.2}% of a conversion exit ({:.2} us of {:.1} us = KVM round trip {:.1} us + handler {:.1} us)",
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
                s.backing.name(),
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
        for l in &self.lines {
            writeln!(f, "line {:>5} {:<8} {}", l.line, l.op, l.result)?;
        }
        writeln!(f, "mismatches: {}", self.mismatches.len())?;
        for m in self.mismatches.iter().take(20) {
            writeln!(f, "  {m}")?;
        }
        Ok(())
    }
}
