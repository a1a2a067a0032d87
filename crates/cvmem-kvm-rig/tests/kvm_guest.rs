//! Runs the guest program on /dev/kvm. Each test skips, saying why, where /dev/kvm or a
//! capability is missing. `CVMEM_KVM_DEVICE=/nonexistent cargo test` exercises the skip path
//! on a host that has KVM (the variable names the device the tests expect; default /dev/kvm).

#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};

use cvmem::Gpa;
use cvmem_kvm::Error as MemoryError;
use cvmem_kvm::{Backing, ConversionRequest, RequestSource};
use cvmem_kvm_rig::{
    kvm_run, without_guest_memfd, Error, ExitKind, MmuText, Report, RunOptions, Workload,
};
use cvmem_oplog::render::result_text;
use cvmem_oplog::{Op, Outcome, Replayer};

/// Why a run that failed with `e` is a skip (the host lacks something), or `None` for a real
/// failure.
fn skip_reason(e: &Error) -> Option<String> {
    match e {
        Error::NoGuestProgram(_) | Error::Memory(MemoryError::MissingCapability(_)) => {
            Some(e.to_string())
        }
        Error::Memory(MemoryError::Kvm { what, source })
            if *what == "open /dev/kvm" || *what == "KVM_CREATE_VM" =>
        {
            Some(format!("{what}: {source}"))
        }
        _ => None,
    }
}

/// Runs a workload, or returns `None` (after printing why) where the host cannot.
fn run(workload: Workload) -> Option<Report> {
    let device =
        std::env::var_os("CVMEM_KVM_DEVICE").map_or_else(|| "/dev/kvm".into(), PathBuf::from);
    if !device.exists() {
        eprintln!("skipped: {} does not exist", device.display());
        return None;
    }
    match kvm_run(&RunOptions {
        workload,
        mmu: None,
    }) {
        Ok(r) => Some(r),
        Err(e) => match skip_reason(&e) {
            Some(why) => {
                eprintln!("skipped: {why}");
                None
            }
            None => panic!("kvm run failed: {e}"),
        },
    }
}

#[test]
fn the_skip_path_names_what_is_missing() {
    let no_kvm = Error::Memory(MemoryError::Kvm {
        what: "open /dev/kvm",
        source: kvm_ioctls::Error::new(libc::ENOENT),
    });
    assert!(skip_reason(&no_kvm).is_some_and(|w| w.contains("open /dev/kvm")));
    assert!(skip_reason(&Error::Memory(MemoryError::MissingCapability(
        "KVM_CAP_USER_MEMORY2"
    )))
    .is_some());
    assert!(skip_reason(&Error::NoGuestProgram("no assembler")).is_some());
    // Anything else is a failure, not a skip.
    assert!(skip_reason(&Error::Guest("triple fault".into())).is_none());
    let other_ioctl = Error::Memory(MemoryError::Kvm {
        what: "KVM_RUN",
        source: kvm_ioctls::Error::new(libc::EFAULT),
    });
    assert!(skip_reason(&other_ioctl).is_none());
}

#[test]
fn selftest_passes_every_data_check() {
    let Some(r) = run(Workload::Selftest) else {
        return;
    };
    println!("{r}");
    assert!(r.passed(), "{r}");
    // Conversions went through the guest's transport (vmmcall where KVM delivers hypercall
    // exits, else the port) and the memory-fault path (16 private accesses, then 4 shared ones,
    // on the guest_memfd slot), and the 5 malformed requests per converting slot were refused.
    assert!(r.conversions.requests[r.transport.name()] > 100, "{r}");
    let gmem_slots = r
        .final_state
        .slots
        .iter()
        .filter(|s| s.backing.has_guest_memfd())
        .count() as u64;
    assert_eq!(
        r.conversions
            .requests
            .get("memory-fault")
            .copied()
            .unwrap_or(0),
        20 * gmem_slots
    );
    // Two converting slots (the best backing and anonymous, or anonymous alone) and the
    // moving slot, which never converts.
    let converting = r.final_state.slots.len() as u64 - 1;
    // Through a real hypercall KVM refuses an unaligned gpa and npages 0 itself (the guest gets
    // -EINVAL without an exit); the reserved flag bits, the bad hint and the range past the gpa
    // space reach the VMM. Through the port all five do.
    let refused_by_vmm = match r.transport {
        RequestSource::Hypercall => 3,
        _ => 5,
    };
    assert_eq!(r.conversions.failed, refused_by_vmm * converting, "{r}");
    assert!(r.checked_pages.0 > 1000 && r.checked_pages.1 > 500);
    // The slot that moved is at its new address, with dirty logging off again.
    let moved = r.final_state.slots.iter().find(|s| s.slot == 10).unwrap();
    assert_eq!(
        (moved.gpa, moved.flags.dirty_log),
        (Gpa(13 << 30 | 8 << 20), false)
    );
    // Every probe mapped after its implicit conversion; guest accesses were faulted in.
    assert_eq!(
        r.probes.get("mapped").copied().unwrap_or(0)
            + r.probes.get("spurious").copied().unwrap_or(0),
        20 * gmem_slots
    );
    assert!(r.accesses.mapped.total() > 0 && r.accesses.spurious > 0);
    // Conversions went through the model: shared leaves zapped, and where private memory is
    // mapped (guest_memfd), straddling private huge leaves split rather than dropped.
    let mmu = r.mmu.as_ref().unwrap();
    assert!(mmu.stats.zaps > 0);
    if gmem_slots > 0 {
        assert!(
            mmu.stats.splits > 0 && mmu.stats.private.total() > 0,
            "{}",
            MmuText(mmu)
        );
    }
    // Every conversion exit did tracking work, and less of it than the exit took.
    let map = r.exits[&match r.transport {
        RequestSource::Hypercall => ExitKind::Hypercall,
        _ => ExitKind::MapGpa,
    }];
    assert_eq!(map.tracking.count, map.handler.count);
    assert!(map.tracking.total_ns > 0 && map.tracking.total_ns < map.handler.total_ns);
}

#[test]
fn boot_workload_tracks_a_tdx_like_boot() {
    let Some(r) = run(Workload::Boot { flips: 200 }) else {
        return;
    };
    println!("{r}");
    assert!(r.passed(), "{r}");
    let ram = &r.final_state.slots;
    assert_eq!(ram.len(), 2, "the boot slot is not guest RAM");
    if ram[0].backing != Backing::Anonymous {
        // Low RAM: private except the SWIOTLB pool, DMA pools and per-vCPU pages; the churn
        // leaves everything as it was, so no 1G page of low RAM is uniform except the top one.
        assert!(ram[0].private_bytes < ram[0].size && ram[0].private_bytes > ram[0].size / 2);
        assert_eq!(ram[1].private_bytes, ram[1].size);
        assert_eq!(ram[1].bytes_1g, ram[1].size);
        assert!(ram[0].mixed_2m >= 8);
        let mmu = r.mmu.as_ref().unwrap();
        // The churn's pages were touched private and shared at 4K (their 2M pages are mixed).
        assert!(
            mmu.stats.private.k4 > 0 && mmu.stats.shared.k4 > 0,
            "{}",
            MmuText(mmu)
        );
        assert!(mmu.touched_all.huge_bytes <= mmu.touched_all.optimum_huge_bytes);
        assert!(mmu.touched_all.ratio() > 0.99, "{}", MmuText(mmu));
    }
}

/// A fixture of the repository; `CVMEM_FIXTURES` names a directory holding them by file name
/// instead (the real-KVM harness runs this binary in a VM without the source tree).
fn oplog_path(name: &str) -> PathBuf {
    match std::env::var_os("CVMEM_FIXTURES") {
        Some(dir) => Path::new(&dir).join(Path::new(name).file_name().unwrap()),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(name),
    }
}

#[test]
fn oplog_map_gpa_lines_go_through_the_guest() {
    let path = oplog_path("../cvmem-cli/tests/fixtures/basic.oplog");
    assert!(
        path.exists(),
        "{} is part of the repository",
        path.display()
    );
    let Some(r) = same_as_replay(&path) else {
        return;
    };
    // Two valid map-gpa lines through the transport, one refused with -EINVAL.
    assert_eq!(r.conversions.requests[r.transport.name()], 3, "{r}");
    assert_eq!(
        r.conversions.failed,
        2 /* the unaligned attrs line, the reserved map-gpa */
    );
    let result = |line: usize| result_of(&r, line);
    assert_eq!(result(17), "no-slot");
    assert!(result(18).starts_with("EINVAL"), "{}", result(18));
    assert!(result(19).starts_with("EEXIST"), "{}", result(19));
    if r.adaptations.is_empty() {
        // Private accesses to the guest_memfd slots: the answers the file's comments give.
        assert_eq!(result(9), "2M");
        assert_eq!(result(11), "memory-fault");
        assert_eq!(result(12), "4K");
    } else {
        // Anonymous slots cannot back a private access: every private query is a memory fault.
        for line in [9, 11, 13, 14] {
            assert_eq!(result(line), "memory-fault", "line {line}: {r}");
        }
        eprintln!("lines 9, 11 and 12 of basic.oplog checked against the core's replay only");
    }
}

/// What line `line` of a kvm-run op-log did, as text (empty when it reported nothing).
fn result_of(r: &Report, line: usize) -> String {
    r.lines
        .iter()
        .find(|l| l.line == line)
        .and_then(|l| result_text(&l.outcome))
        .unwrap_or_default()
}

/// What the core's replay gives for `op` when a VMM built on cvmem-kvm handles it: a `map-gpa`
/// line is a guest's request, which converts only inside memslots ([`cvmem_kvm::guest_scope`]);
/// op-log v1 gives it KVM's attribute semantics (anywhere). Every other line as the replay does.
fn replay_as_vmm(replay: &mut Replayer, op: &Op) -> Outcome {
    let &Op::MapGpa { gpa, npages, flags } = op else {
        return replay.apply(op);
    };
    let Ok(req) = ConversionRequest::from_map_gpa_range(RequestSource::PortIo, gpa, npages, flags)
    else {
        return replay.apply(op); // malformed: the same refusal either way
    };
    match cvmem_kvm::guest_scope(replay.tracker(), &req) {
        Ok(scope) if scope.parts == [req.range] => replay.apply(op),
        Ok(scope) => {
            for part in scope.parts {
                let attrs = Op::Attrs {
                    gpa: part.start.gpa(),
                    size: part.bytes(),
                    attributes: req.to.attributes(),
                };
                if let e @ Outcome::Error(_) = replay.apply(&attrs) {
                    return e;
                }
            }
            Outcome::Done
        }
        Err(refusal) => Outcome::Error(cvmem_oplog::Rejected {
            errno: "EINVAL",
            message: refusal.to_string(),
        }),
    }
}

/// Runs an op-log through kvm-run and through the core's replay engine: every line with a
/// result must agree (errors by errno), and so must the final attributes and page tables.
/// Where the host made kvm-run adapt a line (a `guest-memfd` slot without guest_memfd), the core
/// replays the line as it ran, and the adaptation is printed.
fn same_as_replay(path: &Path) -> Option<Report> {
    let r = run(Workload::Oplog(path.to_path_buf()))?;
    println!("{r}");
    assert!(r.passed(), "{r}");
    for a in &r.adaptations {
        eprintln!("adapted ({}): {a}", path.display());
    }
    let text = std::fs::read_to_string(path).unwrap();
    let mut replay = Replayer::new();
    for line in cvmem_oplog::parse(&text).unwrap() {
        let ran = r
            .lines
            .iter()
            .find(|l| l.line == line.number)
            .unwrap_or_else(|| panic!("line {}: kvm-run has no outcome", line.number));
        // Only the documented adaptation, and only where the report says it adapted.
        if ran.op != line.op {
            assert!(
                !r.adaptations.is_empty() && ran.op == without_guest_memfd(line.op),
                "line {}: kvm-run ran `{}` for `{}`",
                line.number,
                ran.op,
                line.op
            );
        }
        let want = replay_as_vmm(&mut replay, &ran.op);
        let got = &ran.outcome;
        match (&want, got) {
            // The same refusal; the messages may differ in who refused (`tracker: …`).
            (Outcome::Error(w), Outcome::Error(g)) => {
                assert_eq!(w.errno, g.errno, "line {}: {w} vs {g}", line.number)
            }
            _ => assert_eq!(got, &want, "line {}", line.number),
        }
    }
    let summary = replay.summary();
    let attributes: Vec<(Gpa, u64)> = summary
        .attributes
        .iter()
        .map(|&(g, s, _)| (Gpa(g), s))
        .collect();
    assert!(!r.final_state.private_truncated());
    assert_eq!(r.final_state.private, attributes);
    let ours = r.mmu.as_ref().unwrap().stats;
    assert_eq!(ours, summary.mmu, "kvm-run's model against replay's");
    Some(r)
}

#[test]
fn oplog_mmu_lines_match_replay() {
    let path = oplog_path("../cvmem-cli/tests/fixtures/mmu.oplog");
    assert!(
        path.exists(),
        "{} is part of the repository",
        path.display()
    );
    same_as_replay(&path);
}

#[test]
fn oplog_slot_moves_and_dirty_logging_match_replay() {
    let Some(r) = same_as_replay(&oplog_path("tests/fixtures/slots.oplog")) else {
        return;
    };
    let result = |line: usize| result_of(&r, line);
    // The too-large slot is refused by the rules (EINVAL), not by mmap.
    assert!(result(6).starts_with("EINVAL: tracker:"), "{}", result(6));
    assert!(result(13).starts_with("dirty-log on"), "{}", result(13));
    assert!(
        result(18).starts_with("moved from 0x40000000"),
        "{}",
        result(18)
    );
    let s = r.mmu.as_ref().unwrap().stats;
    assert!(s.splits > 0 && s.zaps > 0 && s.collapses > 0, "{s:?}");
}

/// PRIVATE goes where the VM keeps it: the probe agrees with the host's capabilities, and a
/// VMM that forces the guest_memfd ioctl on a kernel without it gets the kernel's refusal with
/// nothing changed (tracker, KVM and the query handle agree on the old state).
#[test]
fn private_goes_where_the_vm_keeps_it() {
    use cvmem::{Gpa, Level, KVM_MEMORY_ATTRIBUTE_PRIVATE};
    use cvmem_kvm::kvm_ioctls::Kvm;
    use cvmem_kvm::{Attributes2Abi, CvmMemory, KvmAttributes, SlotSpec};
    use cvmem_kvm_rig::HostCaps;
    use std::sync::Arc;

    let Ok(kvm) = Kvm::new() else {
        eprintln!("skipped: /dev/kvm cannot be opened");
        return;
    };
    let (_, vm_type) = HostCaps::vm_type_of(&kvm);
    let Ok(vm) = kvm.create_vm_with_type(vm_type) else {
        eprintln!("skipped: KVM_CREATE_VM of type {vm_type} failed");
        return;
    };
    let caps = HostCaps::of(&vm);
    let (found, why) = KvmAttributes::probe(&vm, Attributes2Abi::default());
    eprintln!("note: attributes {}: {why}", found.name());
    // No released kernel has guest_memfd attributes: per VM exactly where the VM says so.
    let want = if caps.private_attribute() {
        KvmAttributes::PerVm
    } else {
        KvmAttributes::None
    };
    assert_eq!(found, want, "{why}");
    if !caps.guest_memfd {
        eprintln!("skipped: no guest_memfd on this host to issue KVM_SET_MEMORY_ATTRIBUTES2 on");
        return;
    }
    let memory = CvmMemory::with_attributes(
        Arc::new(vm),
        KvmAttributes::PerGmem(Attributes2Abi::default()),
    );
    let slot = memory.add_slot(&SlotSpec {
        slot: 0,
        gpa: Gpa(0),
        size: 4 << 20,
        backing: Backing::GuestMemfdSeparate,
        max_level: Level::M2,
    });
    if let Err(e) = slot {
        eprintln!("skipped: KVM refuses a guest_memfd memslot on this VM type: {e}");
        return;
    }
    let before = memory.stats();
    let err = memory
        .set_attributes(Gpa(0x1000), 0x2000, KVM_MEMORY_ATTRIBUTE_PRIVATE)
        .expect_err("a kernel without KVM_SET_MEMORY_ATTRIBUTES2 refuses it");
    eprintln!("note: forced KVM_SET_MEMORY_ATTRIBUTES2: {err}");
    assert!(
        matches!(&err, MemoryError::Os { what, .. } if what.contains("KVM_SET_MEMORY_ATTRIBUTES2")),
        "{err}"
    );
    assert!(!memory.query().is_private(Gpa(0x1000)));
    assert!(!memory.query().is_private(Gpa(0x2000)));
    assert_eq!(memory.stats().conversions, before.conversions);
}
