//! [`kvm_run`]: boot the guest program, run a workload through real vCPU exits, and report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use cvmem::mmu::FaultOutcome;
use cvmem::{Access, Gpa, PAGE_SIZE};
use kvm_bindings::kvm_regs;
use kvm_ioctls::VcpuExit;

use cvmem_kvm::{
    Conversion, ConversionRequest, IommuListener, MmuConfig, RecordingIommu, RequestSource,
    TransportRegs,
};

use crate::abi::*;
use crate::error::{Error, Result};
use crate::report::{ExitKind, Mismatch, Report};
use crate::script::{Command, HostStep, Script};
use crate::vm::GuestVm;
use crate::workload::{self, Plan, Source};

/// Which workload [`kvm_run`] drives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Workload {
    /// KVM's private_mem_conversions_test, in spirit: fill, convert, check what was kept and
    /// what was discarded, host writes seen by the guest, holes in private ranges, implicit
    /// conversions, malformed requests — on each backing the host supports; then a memslot
    /// that moves and has dirty logging toggled while the guest uses it.
    #[default]
    Selftest,
    /// A TDX-like boot of a 4 GiB guest: everything private, the MMIO window, a SWIOTLB bounce
    /// pool, DMA pools and per-vCPU pages shared, then churn of 4K flips.
    Boot {
        /// Number of single-page shared/private flip pairs (the churn).
        flips: u64,
    },
    /// An op-log: `map-gpa` lines issued by the guest through the transport; `memslot`
    /// (create, delete, move, dirty-log), `attrs` and `query` on the host; `fault`,
    /// `fault-range` and `accept` through the MMU model; a first `mmu` line chooses the model.
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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// The workload.
    pub workload: Workload,
    /// The MMU model's layout and recovery policy. `None`: an op-log's first `mmu` line, else
    /// `split` with `on-fault` recovery (TDX-like). When both are given, this one wins and the
    /// op-log's line says it was overridden.
    pub mmu: Option<MmuConfig>,
}

/// Boots the guest program on /dev/kvm, runs the workload, and reports the tracker's final
/// state, the MMU model's page tables and coverage, the cost of every kind of exit (tracking
/// time — tracker and MMU model — against total exit time), and every mismatch. Errors mean the
/// run could not happen (no KVM, no guest program, a guest crash, an unreadable op-log); failed
/// checks are in [`Report::mismatches`].
pub fn kvm_run(opts: &RunOptions) -> Result<Report> {
    let source = Source::load(&opts.workload)?;
    let mmu = opts.mmu.or(source.mmu()).unwrap_or_default();
    let vm = GuestVm::new(mmu)?;
    let plan = workload::build(&source, &vm.caps, vm.memory.kvm_attributes());
    let mut runner = Runner::new(vm, &plan)?;
    let start = Instant::now();
    match &source {
        Source::Oplog { lines, .. } => oplog::OplogExecutor {
            runner: &mut runner,
            mmu,
        }
        .run(lines),
        _ => runner.run(&plan.script)?,
    }
    runner.report.elapsed = start.elapsed();
    runner.finish(&plan)
}

mod oplog;

struct Runner {
    vm: GuestVm,
    iommu: Arc<IommuListener<RecordingIommu>>,
    report: Report,
    /// Commands of the current batch whose memory accesses have been modelled.
    touched: usize,
    /// The last conversion the guest asked for and the VMM refused.
    last_refusal: Option<cvmem_kvm::Error>,
}

/// An `out` instruction's exit: the port and up to 8 bytes of data (`len` is the real size).
struct PortOut {
    port: u16,
    data: [u8; 8],
    len: usize,
}

impl PortOut {
    fn data(&self) -> &[u8] {
        &self.data[..self.len.min(8)]
    }
}

/// A vCPU exit, copied out of `kvm_run` so that the handler may use the vCPU.
enum Exit {
    Port(PortOut),
    Hypercall { nr: u64, args: [u64; 6] },
    MemoryFault { flags: u64, gpa: u64, size: u64 },
    Other(String),
}

impl From<VcpuExit<'_>> for Exit {
    fn from(e: VcpuExit<'_>) -> Self {
        match e {
            VcpuExit::IoOut(port, data) => {
                let mut buf = [0u8; 8];
                let n = data.len().min(8);
                buf[..n].copy_from_slice(&data[..n]);
                Exit::Port(PortOut {
                    port,
                    data: buf,
                    len: data.len(),
                })
            }
            VcpuExit::Hypercall(hc) => Exit::Hypercall {
                nr: hc.nr,
                args: hc.args,
            },
            VcpuExit::MemoryFault { flags, gpa, size } => Exit::MemoryFault { flags, gpa, size },
            other => Exit::Other(format!("{other:?}")),
        }
    }
}

fn port_kind(port: u16) -> Option<ExitKind> {
    Some(match u64::from(port) {
        PORT_MAP_GPA => ExitKind::MapGpa,
        PORT_SYNC => ExitKind::Sync,
        PORT_FAULT => ExitKind::FaultProbe,
        PORT_REPORT => ExitKind::Report,
        PORT_DONE => ExitKind::Done,
        PORT_PING => ExitKind::Ping,
        _ => return None,
    })
}

/// Sets `hypercall.ret` in the vCPU's `kvm_run` after a `KVM_EXIT_HYPERCALL`, once the exit's
/// borrow of the vCPU has ended (the handler needs the vCPU's registers first). Call it only
/// right after such an exit: `hypercall` is then the exit union's active member, which KVM
/// reads `ret` from on the next KVM_RUN.
fn set_hypercall_ret(vcpu: &mut kvm_ioctls::VcpuFd, ret: u64) {
    let run = vcpu.get_kvm_run();
    debug_assert_eq!(run.exit_reason, kvm_bindings::KVM_EXIT_HYPERCALL);
    run.__bindgen_anon_1.hypercall.ret = ret;
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
            transport: if vm.path.hypercall {
                RequestSource::Hypercall
            } else {
                RequestSource::PortIo
            },
            lines: plan.lines.clone(),
            ..Default::default()
        };
        Ok(Runner {
            vm,
            iommu,
            report,
            touched: 0,
            last_refusal: None,
        })
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

    fn record(&mut self, source: RequestSource, result: &cvmem_kvm::Result<Conversion>) {
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
                c.invalidate.add(conv.cost.invalidate);
                c.kvm.add(conv.cost.kvm);
                c.discard.add(conv.cost.discard);
                c.listeners.add(conv.cost.listeners);
            }
            Err(_) => c.failed += 1,
        }
    }

    /// Models the guest's reads and writes of memory (`fill` and `check` commands) that ran
    /// since the last exit, up to command `upto` of the batch (the guest's R14), as guest
    /// accesses through the MMU model: each page accessed as the kind it has.
    fn model_touches(&mut self, cmds: &[Command], upto: u64) -> Result<()> {
        let upto = usize::try_from(upto).unwrap_or(usize::MAX).min(cmds.len());
        for c in cmds.get(self.touched..upto).unwrap_or(&[]) {
            if (c.op == OP_FILL || c.op == OP_CHECK) && c.npages != 0 {
                let counts = self
                    .vm
                    .memory
                    .touch(Gpa(c.gpa), c.npages.saturating_mul(PAGE_SIZE))?;
                self.report.accesses.add(&counts);
            }
        }
        self.touched = self.touched.max(upto);
        Ok(())
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
        self.touched = 0;
        let mut prev: Option<(ExitKind, Instant)> = None;
        loop {
            let exit = match self.vm.vcpu.run() {
                Ok(e) => Exit::from(e),
                Err(e) => return Err(Error::kvm("KVM_RUN", e)),
            };
            let returned = Instant::now();
            if let Some((kind, t)) = prev.take() {
                self.report
                    .exits
                    .entry(kind)
                    .or_default()
                    .total
                    .add(returned - t);
            }
            let tracked = self.vm.memory.tracking_time();
            let regs = self.vm.regs()?;
            self.model_touches(cmds, regs.r14)?;
            let (kind, done) = match exit {
                Exit::Port(out) => {
                    let kind = port_kind(out.port).ok_or_else(|| {
                        Error::Guest(format!("write to unknown port {:#x}", out.port))
                    })?;
                    (kind, self.port_exit(script, base, cmds.len(), &out, &regs)?)
                }
                Exit::Hypercall { nr, args } => {
                    let result = ConversionRequest::from_hypercall(nr, &args)
                        .map_err(cvmem_kvm::Error::from)
                        .and_then(|req| self.vm.memory.convert(&req));
                    set_hypercall_ret(&mut self.vm.vcpu, cvmem_kvm::guest_status(&result));
                    self.record(RequestSource::Hypercall, &result);
                    self.last_refusal = result.err().or(self.last_refusal.take());
                    (ExitKind::Hypercall, false)
                }
                Exit::MemoryFault { flags, gpa, size } => {
                    let req = ConversionRequest::from_memory_fault(flags, gpa, size)?;
                    let result = self.vm.memory.convert(&req);
                    self.record(RequestSource::MemoryFault, &result);
                    if result?.changed_pages == 0 {
                        // The page already has the kind the access wants, so KVM cannot map it
                        // (a private page of a slot without guest_memfd): re-entering would
                        // fault forever.
                        return Err(Error::Guest(format!(
                            "KVM_EXIT_MEMORY_FAULT at {gpa:#x} (flags {flags:#x}) that no \
                             conversion resolves"
                        )));
                    }
                    // The vCPU re-enters and faults again, now of the right kind.
                    let outcome = self.vm.memory.fault(Gpa(gpa), req.to.access())?;
                    *self.report.probes.entry(outcome.name()).or_default() += 1;
                    (ExitKind::MemoryFault, false)
                }
                Exit::Other(what) => {
                    return Err(Error::Guest(format!(
                        "unexpected exit {what} at rip {:#x}",
                        regs.rip
                    )));
                }
            };
            let tracking = self.vm.memory.tracking_time().saturating_sub(tracked);
            let stats = self.report.exits.entry(kind).or_default();
            stats.handler.add(returned.elapsed());
            stats.tracking.add(tracking);
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
        out: &PortOut,
        regs: &kvm_regs,
    ) -> Result<bool> {
        match u64::from(out.port) {
            PORT_MAP_GPA => {
                let t = TransportRegs {
                    rax: regs.rax,
                    rbx: regs.rbx,
                    rcx: regs.rcx,
                    rdx: regs.rdx,
                };
                let result = ConversionRequest::from_port_io(out.port, out.data(), &t)
                    .map_err(cvmem_kvm::Error::from)
                    .and_then(|req| self.vm.memory.convert(&req));
                self.vm.set_rax(cvmem_kvm::guest_status(&result))?;
                self.record(RequestSource::PortIo, &result);
                self.last_refusal = result.err().or(self.last_refusal.take());
            }
            PORT_SYNC => {
                let i = base + regs.rbx as usize;
                for step in script.host.get(&i).map(Vec::as_slice).unwrap_or(&[]) {
                    self.host_step(i, step)?;
                }
            }
            PORT_FAULT => {
                // A guest access through the MMU model, as KVM's fault path would take it.
                let (gpa, access) = (regs.rbx, Access::from_private(regs.rcx != 0));
                let mut outcome = self.vm.memory.fault(Gpa(gpa), access)?;
                if let FaultOutcome::MemoryFault(f) = outcome {
                    // KVM would exit with KVM_EXIT_MEMORY_FAULT: the VMM converts the page
                    // to the kind the access wanted, the vCPU re-enters and faults again.
                    let result = ConversionRequest::from_fault(&f)
                        .map_err(cvmem_kvm::Error::from)
                        .and_then(|req| self.vm.memory.convert(&req));
                    self.record(RequestSource::MemoryFault, &result);
                    result?;
                    outcome = self.vm.memory.fault(Gpa(gpa), access)?;
                }
                *self.report.probes.entry(outcome.name()).or_default() += 1;
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
                mem.write_with(Gpa(gpa), npages * PAGE_SIZE, |a| pattern_value(pattern, a))?;
            }
            HostStep::Check {
                gpa,
                npages,
                pattern,
            } => {
                for k in 0..npages {
                    let page = gpa + k * PAGE_SIZE;
                    let mut bad = None;
                    mem.scan_u64(Gpa(page), PAGE_SIZE, |a, v| {
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
            } => {
                let result = mem.set_attributes(Gpa(gpa), size, attributes);
                self.record(RequestSource::Vmm, &result);
                result.map_err(|e| Error::Workload(format!("VMM attribute change failed: {e}")))?;
            }
            HostStep::MoveSlot { slot, gpa } => {
                mem.move_slot(slot, Gpa(gpa))
                    .map_err(|e| Error::Workload(format!("moving slot {slot} to {gpa:#x}: {e}")))?;
            }
            HostStep::DirtyLog { slot, enabled } => {
                mem.set_dirty_log(slot, enabled).map_err(|e| {
                    Error::Workload(format!("dirty logging {enabled} on slot {slot}: {e}"))
                })?;
            }
        }
        Ok(())
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
                        let (gpa, size) = (r.start.gpa().0, r.range().bytes());
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
                    let (start, end) = (r.start.gpa().0, r.end.gpa().0);
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
        let path = format!(
            "path: {} VM, conversions by {}, attributes {}, private memory {}",
            self.vm.caps.vm_type_name(),
            if self.vm.path.hypercall {
                "vmmcall at CPL 0 (KVM_EXIT_HYPERCALL)"
            } else {
                "the port transport at CPL 3"
            },
            if self.vm.memory.kvm_attributes() {
                "in KVM (KVM_SET_MEMORY_ATTRIBUTES)"
            } else {
                "in cvmem only"
            },
            self.vm.path.backing.name()
        );
        self.report.notes = std::iter::once(path)
            .chain(self.vm.memory.notes())
            .collect();
        self.report.mmu = query.mmu_snapshot();
        self.report.lines.sort_by_key(|l| l.line);
        self.report.final_state = map;
        Ok(self.report)
    }
}
