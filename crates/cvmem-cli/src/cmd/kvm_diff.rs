//! `cvmem kvm-diff`: the kernel as cvmem's oracle. Every op-log line runs through the one op-log
//! driver twice — against the core's model and against a real KVM (`cvmem_kvm_rig::KernelVm`) —
//! and every difference is printed: an errno KVM and cvmem disagree on, a success one of them
//! refuses, a query answered differently (KVM's answer comes from KVM_PRE_FAULT_MEMORY and its
//! leaf statistics).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use cvmem::{Access, Gpa, Level, MaxLevel, SlotFlags};
use cvmem_kvm_rig::KernelVm;
use cvmem_oplog::render::result_text;
use cvmem_oplog::{Driver, Op, Outcome, Replayer};

/// Arguments of `cvmem kvm-diff`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Op-log files to compare, line by line, each in a fresh VM.
    files: Vec<PathBuf>,
    /// Also compare this many generated lines (slots near 2M/1G boundaries, small slots, moves,
    /// deletes, dirty logging, invalid requests, queries), in VMs of 500 lines each.
    #[arg(long, default_value_t = 0)]
    random: usize,
    /// Seed of the generated lines.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the generated op-log here (to replay a difference).
    #[arg(long)]
    save: Option<PathBuf>,
}

/// Lines compared and what differed.
#[derive(Default)]
struct Tally {
    compared: u64,
    skipped: u64,
    differences: Vec<String>,
    /// Differences `docs/oplog-v1.md` documents as op-log v1's choice, by kind.
    documented: std::collections::BTreeMap<&'static str, u64>,
    /// KVM's answers to the queries compared (`4K`, `2M`, `no-slot`, ...).
    answers: std::collections::BTreeMap<String, u64>,
    /// Queries where the host's memory, not cvmem, capped KVM's level (and KVM agreed with
    /// the capped answer), by why.
    capped: std::collections::BTreeMap<&'static str, u64>,
}

/// The host's guest-physical address width (MAXPHYADDR), from /proc/cpuinfo.
fn phys_bits() -> u32 {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("address sizes"))?;
            line.split(':')
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(52)
}

/// Which documented difference (docs/oplog-v1.md) explains `op`'s outcomes, if any.
fn documented(
    op: &Op,
    core: &Outcome,
    kernel: &Outcome,
    kernel_vm: &KernelVm,
) -> Option<&'static str> {
    match (op, core, kernel) {
        (Op::Gmem { flags, .. }, Outcome::Gmem(_), Outcome::Error(_))
            if flags.folio != Level::K4 =>
        {
            Some("HugeTLB guest_memfd (folio=2M|1G): no kernel up to 7.3 has it")
        }
        (Op::Gmem { flags, .. }, Outcome::Gmem(_), Outcome::Error(_))
            if flags.mmap && !kernel_vm.gmem_mmap() =>
        {
            Some("GUEST_MEMFD_FLAG_MMAP: not in this kernel (Linux 6.18 added it)")
        }
        (
            Op::Memslot {
                flags,
                gmem: Some(_),
                size,
                ..
            },
            Outcome::Error(_),
            Outcome::Slot(_),
        ) if !flags.guest_memfd && *size != 0 => {
            Some("gmem= without guest-memfd: KVM ignores the file, cvmem refuses the request")
        }
        (
            Op::Query { gpa, .. },
            Outcome::Query(MaxLevel::NoSlot),
            Outcome::Query(MaxLevel::MemoryFault(_)),
        ) if kernel_vm.told_private(gpa.gfn()) => {
            Some("private gfn outside every memslot: KVM memory-fault, v1 no-slot")
        }
        _ => None,
    }
}

/// The core's answer to the access KVM makes (of the page's own kind), capped where the
/// kernel oracle's host memory maps less than the op-log's slot asked for (with why).
fn core_answer(core: &Replayer, kernel: &KernelVm, gpa: Gpa) -> (MaxLevel, Option<&'static str>) {
    let t = core.tracker();
    let private = t.is_private(gpa.gfn());
    match (
        t.max_mapping_level(gpa, Access::from_private(private)),
        kernel.host_limit(gpa, private),
    ) {
        (MaxLevel::Level(l), Some((host, why))) if host < l => (MaxLevel::Level(host), Some(why)),
        (other, _) => (other, None),
    }
}

fn same(a: &MaxLevel, b: &MaxLevel) -> bool {
    match (a, b) {
        (MaxLevel::MemoryFault(_), MaxLevel::MemoryFault(_)) => true,
        _ => a == b,
    }
}

/// Runs `ops` against the core and a fresh KVM VM; records every difference.
/// `next` gives the lines one at a time, seeing the core's state so far.
fn compare(
    name: &str,
    mut next: impl FnMut(&Replayer) -> Option<(usize, Op)>,
    tally: &mut Tally,
) -> Result<(), String> {
    // The core with the host's MAXPHYADDR, as x86 KVM limits memslots.
    let mut core = Replayer::with_gpa_bits(phys_bits());
    let mut kernel = KernelVm::new().map_err(|e| format!("a VM to compare with: {e}"))?;
    let mut driver = Driver::new();
    while let Some((line, op)) = next(&core) {
        let (line, op) = (&line, &op);
        let want = core.apply(op);
        let got = driver.apply(&mut kernel, op);
        let differs = match (op, &want, &got) {
            // The MMU model's lines, and op-log v2's lines no kernel up to 7.3 can answer
            // (KVM_SET_MEMORY_ATTRIBUTES2, per-file PRIVATE, host references, punch-hole's
            // folio merging). `gmem` lines and memslot bindings are compared.
            (
                Op::Mmu { .. }
                | Op::Fault { .. }
                | Op::FaultRange { .. }
                | Op::Accept { .. }
                | Op::AttrMode { .. }
                | Op::PunchHole { .. }
                | Op::GmemAttrs { .. }
                | Op::GmemPin { .. }
                | Op::GmemUnpin { .. },
                ..,
            ) => {
                tally.skipped += 1;
                continue;
            }
            (_, Outcome::Error(w), Outcome::Error(g)) => {
                (w.errno != g.errno).then(|| format!("cvmem {} / KVM {}", w, g))
            }
            (_, Outcome::Error(w), _) => Some(format!("cvmem {w} / KVM accepts")),
            (_, _, Outcome::Error(g)) => Some(format!("cvmem accepts / KVM {g}")),
            (Op::Query { gpa, .. }, _, Outcome::Query(k)) => {
                let kind = result_text(&got).unwrap_or_default();
                *tally.answers.entry(kind).or_default() += 1;
                let (c, capped) = core_answer(&core, &kernel, *gpa);
                let differs = !same(&c, k);
                if let (false, Some(why)) = (differs, capped) {
                    *tally.capped.entry(why).or_default() += 1;
                }
                differs.then(|| {
                    format!(
                        "cvmem {} / KVM {}",
                        result_text(&Outcome::Query(c)).unwrap_or_default(),
                        result_text(&Outcome::Query(*k)).unwrap_or_default()
                    )
                })
            }
            _ => None,
        };
        tally.compared += 1;
        if let Some(d) = differs {
            match documented(op, &want, &got, &kernel) {
                Some(kind) => *tally.documented.entry(kind).or_default() += 1,
                None => tally
                    .differences
                    .push(format!("{name}:{line}: `{op}`: {d}")),
            }
        }
    }
    Ok(())
}

/// A small deterministic generator (xorshift); most of its queries and half of its attribute
/// changes land inside the memslots the core has at that point.
struct Gen {
    state: u64,
}

impl Gen {
    fn next(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }
    /// Mostly a page inside one of the core's memslots now (else anywhere).
    fn query_gpa(&mut self, core: &Replayer) -> u64 {
        let n = core.tracker().memslots().len() as u64;
        if n == 0 || self.below(4) == 0 {
            return self.gpa();
        }
        let k = self.below(n) as usize;
        let s = core
            .tracker()
            .memslots()
            .nth(k)
            .map(|s| (s.gpa().0, s.size()));
        let (gpa, size) = s.unwrap_or((0, 4096));
        gpa + self.below(size / 4096) * 4096
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// An address near a 4K, 2M or 1G boundary below 16 GiB (now and then near the top of a
    /// 40- to 57-bit address space), sometimes unaligned.
    fn gpa(&mut self) -> u64 {
        let unit = [4096u64, 2 << 20, 1 << 30][self.below(3) as usize];
        let base = if self.below(50) == 0 {
            (1u64 << (40 + self.below(18))) - (self.below(4) << 30)
        } else {
            self.below((16 << 30) / unit) * unit
        };
        let near = [0, 4096, 2 << 20][self.below(3) as usize];
        let a = if self.below(2) == 0 {
            base + near
        } else {
            base.saturating_sub(near)
        };
        if self.below(40) == 0 {
            a + 0x800
        } else {
            a
        }
    }
    fn size(&mut self) -> u64 {
        match self.below(6) {
            0 => 4096,
            1 => 4096 * (1 + self.below(16)),
            2 => 2 << 20,
            3 => (2 << 20) * (1 + self.below(8)),
            4 => 1 << 30,
            _ => 4096 * self.below(1024),
        }
    }
    fn op(&mut self, core: &Replayer) -> Op {
        match self.below(10) {
            0..=2 => {
                let (gpa, size) = (self.gpa(), if self.below(5) == 0 { 0 } else { self.size() });
                self.memslot(gpa, size)
            }
            3..=5 => Op::Attrs {
                gpa: if self.below(2) == 0 {
                    Gpa(self.query_gpa(core))
                } else {
                    Gpa(self.gpa())
                },
                size: self.size(),
                attributes: [0, 8, 8, 0, 0x10][self.below(5) as usize],
            },
            6 => Op::MapGpa {
                gpa: self.gpa(),
                npages: self.size() / 4096,
                flags: [0, 0x10, 0x11, 0x12, 0x13, 0x30][self.below(6) as usize],
            },
            _ => Op::Query {
                gpa: Gpa(self.query_gpa(core)),
                access: Access::from_private(self.below(2) == 0),
            },
        }
    }
    fn memslot(&mut self, gpa: u64, size: u64) -> Op {
        Op::Memslot {
            gmem: None,
            slot: self.below(6),
            gpa: cvmem::Gpa(gpa),
            size,
            flags: SlotFlags {
                guest_memfd: self.below(4) != 0,
                dirty_log: self.below(8) == 0,
                readonly: self.below(16) == 0,
            },
            uaddr: self.uaddr(gpa),
            backing: [None, Some(Level::K4), Some(Level::M2), Some(Level::G1)]
                [self.below(4) as usize],
        }
    }
    /// A slot's host address: mostly none (the gpa), else congruent to the gpa modulo 4K or
    /// 2M only, 1G apart, or anywhere (sometimes unaligned: EINVAL).
    fn uaddr(&mut self, gpa: u64) -> Option<u64> {
        let offset = match self.below(8) {
            0 => 4096 * (1 + self.below(511)),
            1 => (2 << 20) * (1 + self.below(511)),
            2 => 1 << 30,
            3 => return Some(self.gpa()),
            _ => return None,
        };
        Some(gpa.wrapping_add(offset))
    }
}

pub(crate) fn run(args: Args) -> Result<ExitCode, String> {
    let mut tally = Tally::default();
    for file in &args.files {
        let text = crate::limits::read_oplog(file)?;
        let lines = cvmem_oplog::parse(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        let mut ops = lines.into_iter().map(|l| (l.number, l.op));
        compare(&file.display().to_string(), |_| ops.next(), &mut tally)?;
    }
    let mut gen = Gen {
        state: args.seed.max(1) | 1 << 40,
    };
    let mut saved = String::new();
    let mut done = 0;
    while done < args.random {
        let n = (args.random - done).min(500);
        let mut i = 0;
        let next = |core: &Replayer| {
            (i < n).then(|| {
                i += 1;
                let op = gen.op(core);
                let _ = writeln!(saved, "{op}");
                (done + i, op)
            })
        };
        compare(&format!("random#{}", done / 500), next, &mut tally)?;
        done += n;
    }
    if let Some(path) = &args.save {
        std::fs::write(path, saved).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    for d in &tally.differences {
        println!("{d}");
    }
    let answers: Vec<String> = tally
        .answers
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    println!("queries answered by KVM: {}", answers.join(", "));
    for (why, n) in &tally.capped {
        println!("capped by the host's memory, as KVM maps it: {n} x {why}");
    }
    for (kind, n) in &tally.documented {
        println!("documented (docs/oplog-v1.md, docs/oplog-v2.md): {n} x {kind}");
    }
    println!(
        "kvm-diff: {} lines compared with the kernel ({} MMU lines not comparable), {} differences, {} documented",
        tally.compared,
        tally.skipped,
        tally.differences.len(),
        tally.documented.values().sum::<u64>()
    );
    Ok(if tally.differences.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
