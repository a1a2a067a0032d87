//! [`kvm_run`]: boot the guest program, run a workload through real vCPU exits, and report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use cvmem::{Access, MaxLevel, PAGE_SIZE};
use kvm_ioctls::VcpuExit;

use crate::abi::*;
use crate::error::{Error, Result};
use crate::iommu::{IommuListener, RecordingIommu};
use crate::memory::Conversion;
use crate::report::{ExitKind, LineResult, Mismatch, Report};
use crate::request::{ConversionRequest, RequestSource, TransportRegs};
use crate::script::{Command, HostStep, Script};
use crate::vm::GuestVm;
use crate::workload::{self, Plan};

/// Which workload [`kvm_run`] drives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Workload {
    /// KVM's private_mem_conversions_test, in spirit: fill, convert, check what was kept and
    /// what was discarded, host writes seen by the guest, holes in private ranges, implicit
    /// conversions, malformed requests — on each backing the host supports.
    Selftest,
    /// A TDX-like boot of a 4 GiB guest: everything private, the MMIO window, a SWIOTLB bounce
    /// pool, DMA pools and per-vCPU pages shared, then churn of 4K flips.
    Boot {
        /// Number of single-page shared/private flip pairs (the churn).
        flips: u64,
    },
    /// An op-log: `memslot`, `attrs` and `query` lines on the host, `map-gpa` lines issued by
    /// the guest through the transport; MMU lines are listed as skipped.
    Oplog(PathBuf),
}

impl Workload {
    /// The workload named `name` (`selftest` or `boot`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "selftest" => Some(Workload::Selftest),
            "boot" => Some(Workload::Boot { flips: 400 }),
            _ => None,
        }
    }
}

/// Options of [`kvm_run`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOptions {
    /// The workload.
    pub workload: Workload,
}

/// Boots the guest program on /dev/kvm, runs the workload, and reports the tracker's final
/// state, the cost of every kind of exit (tracking time against total exit time), and every
/// mismatch. Errors mean the run could not happen (no KVM, no guest program, a guest crash);
/// failed checks are in [`Report::mismatches`].
pub fn kvm_run(opts: &RunOptions) -> Result<Report> {
    let vm = GuestVm::new()?;
    let plan = workload::build(&opts.workload, &vm.caps, vm.memory.kvm_attributes())?;
    let mut runner = Runner::new(vm, &plan)?;
    let start = Instant::now();
    runner.run(&plan.script)?;
    runner.report.elapsed = start.elapsed();
    runner.finish(&plan)
}

struct Runner {
    vm: GuestVm,
    iommu: Arc<IommuListener<RecordingIommu>>,
    report: Report,
}

fn errno_name(e: &Error) -> &'static str {
    match e {
        Error::Tracker(e) => e.errno().name(),
        Error::Request(_) => "EINVAL",
        _ => "EFAULT",
    }
}

impl Runner {
    fn new(vm: GuestVm, plan: &Plan) -> Result<Self> {
        for spec in &plan.slots {
            vm.memory.add_slot(spec)?;
        }
        let iommu = Arc::new(IommuListener::new("vfio", RecordingIommu::new()));
        vm.memory.add_listener(iommu.clone())?;
        let report = Report {
            workload: plan.name.clone(),
            caps: vm.caps,
            lines: plan.lines.clone(),
            ..Default::default()
        };
        Ok(Runner { vm, iommu, report })
    }

    fn run(&mut self, script: &Script) -> Result<()> {
        let per_batch = (SCRIPT_MAX / COMMAND_SIZE) as usize - 1;
        let mut base = 0;
        while base < script.commands.len() {
            let end = (base + per_batch).min(script.commands.len());
            self.run_batch(script, base, &script.commands[base..end])?;
            base = end;
        }
        self.report.checked_pages.0 = script
            .commands
            .iter()
            .filter(|c| c.op == OP_CHECK)
            .map(|c| c.npages)
            .sum();
        Ok(())
    }

    fn record(&mut self, source: RequestSource, result: &Result<Conversion>) {
        let c = &mut self.report.conversions;
        *c.requests.entry(source.name()).or_default() += 1;
        match result {
            Ok(conv) => {
                if conv.changed_pages == 0 {
                    c.unchanged += 1;
                }
                c.changed_pages += conv.changed_pages;
                c.discarded_bytes += conv.discarded_bytes;
                c.tracking.add(conv.cost.tracking);
                c.kvm.add(conv.cost.kvm);
                c.discard.add(conv.cost.discard);
                c.listeners.add(conv.cost.listeners);
            }
            Err(_) => c.failed += 1,
        }
    }

    fn run_batch(&mut self, script: &Script, base: usize, cmds: &[Command]) -> Result<()> {
        let mut bytes: Vec<u8> = cmds.iter().flat_map(|c| c.encode()).collect();
        bytes.extend_from_slice(
            &Command {
                op: OP_END,
                gpa: 0,
                npages: 0,
                arg: 0,
                expect: 0,
            }
            .encode(),
        );
        self.vm.load_script(&bytes)?;
        let mut prev: Option<(ExitKind, Instant)> = None;
        loop {
            let exit = self.vm.vcpu.run();
            let returned = Instant::now();
            if let Some((kind, t)) = prev.take() {
                self.report
                    .exits
                    .entry(kind)
                    .or_default()
                    .total
                    .add(returned - t);
            }
            let mut port_out = None;
            let kind = match exit {
                Ok(VcpuExit::IoOut(port, data)) => {
                    let mut buf = [0u8; 8];
                    let n = data.len().min(8);
                    buf[..n].copy_from_slice(&data[..n]);
                    port_out = Some((port, buf, data.len()));
                    match u64::from(port) {
                        PORT_MAP_GPA => ExitKind::MapGpa,
                        PORT_SYNC => ExitKind::Sync,
                        PORT_FAULT => ExitKind::FaultProbe,
                        PORT_REPORT => ExitKind::Report,
                        PORT_DONE => ExitKind::Done,
                        PORT_PING => ExitKind::Ping,
                        _ => return Err(Error::Guest(format!("write to unknown port {port:#x}"))),
                    }
                }
                Ok(VcpuExit::Hypercall(hc)) => {
                    let result = ConversionRequest::from_hypercall(hc.nr, &hc.args)
                        .map_err(Error::from)
                        .and_then(|req| self.vm.memory.convert(&req));
                    *hc.ret = crate::guest_status(&result);
                    self.record(RequestSource::Hypercall, &result);
                    ExitKind::Hypercall
                }
                Ok(VcpuExit::MemoryFault { flags, gpa, size }) => {
                    let req = ConversionRequest::from_memory_fault(flags, gpa, size)?;
                    let result = self.vm.memory.convert(&req);
                    self.record(RequestSource::MemoryFault, &result);
                    result?;
                    ExitKind::MemoryFault
                }
                Ok(other) => {
                    let what = format!("{other:?}");
                    let rip = self.vm.regs().map(|r| r.rip).unwrap_or(0);
                    return Err(Error::Guest(format!(
                        "unexpected exit {what} at rip {rip:#x}"
                    )));
                }
                Err(e) => return Err(Error::kvm("KVM_RUN", e)),
            };
            let done = match port_out {
                Some((port, buf, len)) => {
                    self.port_exit(script, base, cmds.len(), port, &buf[..len.min(8)], len)?
                }
                None => false,
            };
            self.report
                .exits
                .entry(kind)
                .or_default()
                .handler
                .add(returned.elapsed());
            if done {
                return Ok(());
            }
            prev = Some((kind, returned));
        }
    }

    /// Handles an `out`; returns true when the batch is done.
    fn port_exit(
        &mut self,
        script: &Script,
        base: usize,
        len: usize,
        port: u16,
        data: &[u8],
        n: usize,
    ) -> Result<bool> {
        let regs = self.vm.regs()?;
        match u64::from(port) {
            PORT_MAP_GPA => {
                let t = TransportRegs {
                    rax: regs.rax,
                    rbx: regs.rbx,
                    rcx: regs.rcx,
                    rdx: regs.rdx,
                };
                let result = ConversionRequest::from_port_io(port, &data[..n.min(data.len())], &t)
                    .map_err(Error::from)
                    .and_then(|req| self.vm.memory.convert(&req));
                self.vm.set_rax(crate::guest_status(&result))?;
                self.record(RequestSource::PortIo, &result);
            }
            PORT_SYNC => {
                let i = base + regs.rbx as usize;
                for step in script.host.get(&i).map(Vec::as_slice).unwrap_or(&[]) {
                    self.host_step(i, step)?;
                }
            }
            PORT_FAULT => {
                let access = Access::from_private(regs.rcx != 0);
                if let MaxLevel::MemoryFault(f) = self.vm.memory.query().max_level(regs.rbx, access)
                {
                    // What KVM would do: exit with KVM_EXIT_MEMORY_FAULT; the VMM converts.
                    let result = ConversionRequest::from_fault(&f)
                        .map_err(Error::from)
                        .and_then(|req| self.vm.memory.convert(&req));
                    self.record(RequestSource::MemoryFault, &result);
                    result?;
                }
            }
            PORT_REPORT => {
                let what = match regs.rax & 0xffff_ffff {
                    REPORT_DATA => "guest data",
                    REPORT_STATUS => "conversion status",
                    REPORT_BAD_OP => "bad command",
                    _ => "unknown report",
                };
                self.report.mismatches.push(Mismatch {
                    command: (base as u64).wrapping_add(regs.rbx),
                    what: what.to_string(),
                    gpa: regs.rcx,
                    expected: regs.rdx,
                    actual: regs.rsi,
                });
            }
            PORT_DONE => {
                if regs.rbx as usize != len {
                    return Err(Error::Guest(format!(
                        "guest stopped at command {} of {len}",
                        regs.rbx
                    )));
                }
                return Ok(true);
            }
            _ => {}
        }
        Ok(false)
    }

    fn host_step(&mut self, index: usize, step: &HostStep) -> Result<()> {
        let mem = &self.vm.memory;
        match *step {
            HostStep::Write {
                gpa,
                npages,
                pattern,
            } => {
                mem.write_with(gpa, npages * PAGE_SIZE, |a| pattern_value(pattern, a))?;
            }
            HostStep::Check {
                gpa,
                npages,
                pattern,
            } => {
                for k in 0..npages {
                    let page = gpa + k * PAGE_SIZE;
                    let mut bad = None;
                    mem.scan_u64(page, PAGE_SIZE, |a, v| {
                        let want = pattern_value(pattern, a);
                        if v != want {
                            bad = Some((a, want, v));
                        }
                        bad.is_none()
                    })?;
                    if let Some((gpa, expected, actual)) = bad {
                        self.report.mismatches.push(Mismatch {
                            command: index as u64,
                            what: "host data".into(),
                            gpa,
                            expected,
                            actual,
                        });
                    }
                }
                self.report.checked_pages.1 += npages;
            }
            HostStep::SetAttributes {
                gpa,
                size,
                attributes,
                line,
            } => {
                let result = mem.set_attributes(gpa, size, attributes);
                self.record(RequestSource::Vmm, &result);
                match (result, line) {
                    (Ok(_), _) => {}
                    (Err(e), Some(line)) => {
                        self.line(line, "attrs", format!("{}: {e}", errno_name(&e)))
                    }
                    (Err(e), None) => {
                        return Err(Error::Workload(format!("VMM attribute change failed: {e}")));
                    }
                }
            }
            HostStep::AddSlot { spec, line } => {
                if let Err(e) = mem.add_slot(&spec) {
                    self.line(line, "memslot", format!("{}: {e}", errno_name(&e)));
                }
            }
            HostStep::RemoveSlot { slot, line } => {
                if let Err(e) = mem.remove_slot(slot) {
                    self.line(line, "memslot", format!("{}: {e}", errno_name(&e)));
                }
            }
            HostStep::Query { gpa, access, line } => {
                let result = match mem.query().max_level(gpa, access) {
                    MaxLevel::Level(l) => l.name().to_string(),
                    MaxLevel::NoSlot => "no-slot".into(),
                    MaxLevel::MemoryFault(_) => "memory-fault".into(),
                };
                self.line(
                    line,
                    "query",
                    format!("{gpa:#x} {} -> {result}", access.name()),
                );
            }
            HostStep::Skip { line, op, why } => self.line(line, op, format!("skipped: {why}")),
        }
        Ok(())
    }

    fn line(&mut self, line: usize, op: &'static str, result: String) {
        self.report.lines.push(LineResult { line, op, result });
    }

    fn finish(mut self, plan: &Plan) -> Result<Report> {
        let query = self.vm.memory.query();
        let map = query.snapshot();
        // The tracker against the shadow, slot by slot.
        if plan.check_state {
            let expected = plan.script.shadow_private_runs();
            let mut actual: Vec<(u64, u64)> = Vec::new();
            for s in &map.slots {
                if !plan.slots.iter().any(|p| p.slot == s.slot) {
                    continue;
                }
                for r in query.runs(s.gpa, s.size)? {
                    if r.attributes != 0 {
                        let (gpa, size) = (r.start * PAGE_SIZE, (r.end - r.start) * PAGE_SIZE);
                        match actual.last_mut() {
                            Some(last) if last.0 + last.1 == gpa => last.1 += size,
                            _ => actual.push((gpa, size)),
                        }
                    }
                }
            }
            if actual != expected {
                let first = actual
                    .iter()
                    .zip(&expected)
                    .position(|(a, e)| a != e)
                    .unwrap_or(actual.len().min(expected.len()));
                let (a, e) = (
                    actual.get(first).copied().unwrap_or_default(),
                    expected.get(first).copied().unwrap_or_default(),
                );
                self.report.mismatches.push(Mismatch {
                    command: first as u64,
                    what: format!(
                        "private run {first} (tracker {} runs, expected {})",
                        actual.len(),
                        expected.len()
                    ),
                    gpa: e.0.max(a.0),
                    expected: e.1,
                    actual: a.1,
                });
            }
        }
        // The IOMMU must map exactly the shared memory of the memslots.
        let mut shared: Vec<(u64, u64)> = Vec::new();
        for s in &map.slots {
            for r in query.runs(s.gpa, s.size)? {
                if r.attributes == 0 {
                    let (start, end) = (r.start * PAGE_SIZE, r.end * PAGE_SIZE);
                    match shared.last_mut() {
                        Some(last) if last.1 == start => last.1 = end,
                        _ => shared.push((start, end)),
                    }
                }
            }
        }
        let mapped = self.iommu.with_dma(|d| d.mapped());
        if mapped != shared {
            let first = mapped
                .iter()
                .zip(&shared)
                .position(|(a, e)| a != e)
                .unwrap_or(mapped.len().min(shared.len()));
            let (a, e) = (
                mapped.get(first).copied().unwrap_or_default(),
                shared.get(first).copied().unwrap_or_default(),
            );
            self.report.mismatches.push(Mismatch {
                command: first as u64,
                what: format!(
                    "iommu mapping {first} vs shared memory ({} vs {} ranges)",
                    mapped.len(),
                    shared.len()
                ),
                gpa: e.0,
                expected: e.1,
                actual: a.1,
            });
        }
        let (stats, violations) = self
            .iommu
            .with_dma(|d| (d.stats(), d.violations().to_vec()));
        self.report.iommu = (stats, violations, self.iommu.splits());
        self.report.notes = self.vm.memory.notes();
        self.report.lines.sort_by_key(|l| l.line);
        self.report.final_state = map;
        Ok(self.report)
    }
}
