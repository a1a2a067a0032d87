//! Runs the guest program on /dev/kvm. Each test skips, saying why, where /dev/kvm or a
//! capability is missing.

#![cfg(target_os = "linux")]

use cvmem_kvm::{kvm_run, Backing, Error, Report, RunOptions, Workload};

/// Runs a workload, or returns `None` (after printing why) where the host cannot.
fn run(workload: Workload) -> Option<Report> {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("skipped: /dev/kvm does not exist");
        return None;
    }
    match kvm_run(&RunOptions { workload }) {
        Ok(r) => Some(r),
        Err(e @ (Error::MissingCapability(_) | Error::NoGuestProgram(_))) => {
            eprintln!("skipped: {e}");
            None
        }
        Err(Error::Kvm { what, source }) if what == "open /dev/kvm" || what == "KVM_CREATE_VM" => {
            eprintln!("skipped: {what}: {source}");
            None
        }
        Err(e) => panic!("kvm run failed: {e}"),
    }
}

#[test]
fn selftest_passes_every_data_check() {
    let Some(r) = run(Workload::Selftest) else {
        return;
    };
    println!("{r}");
    assert!(r.passed(), "{r}");
    // Conversions went through the port transport and the memory-fault path (16 private
    // accesses, then 4 shared ones, on the guest_memfd slot), and the 5 malformed requests per
    // slot were refused.
    assert!(r.conversions.requests["port-io"] > 100);
    let gmem_slots = r
        .final_state
        .slots
        .iter()
        .filter(|s| s.backing.has_guest_memfd())
        .count();
    assert_eq!(
        r.conversions
            .requests
            .get("memory-fault")
            .copied()
            .unwrap_or(0),
        20 * gmem_slots as u64
    );
    assert_eq!(
        r.conversions.failed,
        5 * (r.final_state.slots.len() as u64 - 1)
    );
    assert!(r.checked_pages.0 > 1000 && r.checked_pages.1 > 500);
}

#[test]
fn boot_workload_tracks_a_tdx_like_boot() {
    let Some(r) = run(Workload::Boot { flips: 200 }) else {
        return;
    };
    println!("{r}");
    assert!(r.passed(), "{r}");
    let ram: Vec<_> = r
        .final_state
        .slots
        .iter()
        .filter(|s| s.slot != cvmem_kvm::abi::BOOT_SLOT)
        .collect();
    assert_eq!(ram.len(), 2);
    if ram[0].backing != Backing::Anonymous {
        // Low RAM: private except the SWIOTLB pool, DMA pools and per-vCPU pages; the churn
        // leaves everything as it was, so no 1G page of low RAM is uniform except the top one.
        assert!(ram[0].private_bytes < ram[0].size && ram[0].private_bytes > ram[0].size / 2);
        assert_eq!(ram[1].private_bytes, ram[1].size);
        assert_eq!(ram[1].bytes_1g, ram[1].size);
        assert!(ram[0].mixed_2m >= 8);
    }
}

#[test]
fn oplog_map_gpa_lines_go_through_the_guest() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/spec/examples/basic.oplog");
    if !path.exists() {
        eprintln!("skipped: {} not found", path.display());
        return;
    }
    let Some(r) = run(Workload::Oplog(path)) else {
        return;
    };
    println!("{r}");
    assert!(r.passed(), "{r}");
    // Two valid map-gpa lines through the transport, one refused with -EINVAL.
    assert_eq!(r.conversions.requests["port-io"], 3);
    assert_eq!(
        r.conversions.failed,
        2 /* the unaligned attrs line, the reserved map-gpa */
    );
    let result = |line: usize| {
        r.lines
            .iter()
            .find(|l| l.line == line)
            .map(|l| l.result.as_str())
            .unwrap_or("")
    };
    assert!(result(9).ends_with("-> 2M"), "{}", result(9));
    assert!(result(11).ends_with("-> memory-fault"), "{}", result(11));
    assert!(result(12).ends_with("-> 4K"), "{}", result(12));
    assert!(result(17).ends_with("-> no-slot"), "{}", result(17));
    assert!(result(18).starts_with("EINVAL"), "{}", result(18));
    assert!(result(19).starts_with("EEXIST"), "{}", result(19));
}
