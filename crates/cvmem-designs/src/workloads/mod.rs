//! Workload generators from the published facts (`shared/FACTS.md`), each parameterised by guest
//! size, vCPUs and seed, each producing a plain op-log ([`Op`]s, printable with `Display`).
//!
//! | name | what |
//! |---|---|
//! | `startup` | QEMU start-up: guest-memfd memslots (low RAM, high RAM, firmware), all set private |
//! | `boot` | start-up + a Linux TDX guest's boot: MMIO window, SWIOTLB, DMA pools, per-vCPU pages, virtio rings |
//! | `tdx-4g` | the published 4 GiB TDX boot profile: 4K faults where 2M was possible, hot flips, login |
//! | `swiotlb-churn` | boot + dynamic SWIOTLB pools and transient ≤ 256 KiB conversions |
//! | `snp-psc` | SNP Page State Change batches (64 entries, 2M/4K), coalesced as KVM does |
//! | `lazy-accept` | SNP guest accepting memory lazily in 2 MiB units |
//! | `kexec` | boot, kexec (every shared range back to private), boot again |
//! | `mmio-storm` | firmware making a 64-bit MMIO aperture shared in millions of 2 MiB MapGPAs |
//! | `selftest` | the kernel's `private_mem_conversions_test` layout and stages |
//! | `checkerboard` | worst case: every other 4K page of a window shared |
//! | `random-flips` | random 4K private/shared flips over all of RAM |
//!
//! Every workload ends with a sweep of fault-path queries over RAM (sampled on large guests) so
//! that the designs are compared on their final state too.

pub mod builder;
pub mod conversions;
pub mod guest;
pub mod layout;
pub mod rng;
pub mod snp;
pub mod tdx;

use std::io::{self, Write};

use cvmem_oplog::Op;
use serde::Serialize;

pub use builder::{Builder, Via};
pub use guest::LinuxGuest;
pub use layout::{Layout, RamSlot};
pub use rng::Rng;

/// What a generator is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Params {
    /// Guest RAM in bytes.
    pub guest_bytes: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Seed for every random choice (placements, flips, samples).
    pub seed: u64,
    /// Number of conversions for the flip-style workloads (`tdx-4g`, `swiotlb-churn`,
    /// `random-flips`, `snp-psc`).
    pub flips: u64,
    /// The most fault-path queries of the final sweep.
    pub queries: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            guest_bytes: 4 << 30,
            vcpus: 8,
            seed: 1,
            flips: 10_000,
            queries: 65_536,
        }
    }
}

/// A generated workload.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Generator name.
    pub name: &'static str,
    /// The parameters it was generated with.
    pub params: Params,
    /// The operations.
    pub ops: Vec<Op>,
}

impl Workload {
    /// Writes the workload as an op-log (a header comment, then one operation per line).
    pub fn write_oplog(&self, out: &mut dyn Write) -> io::Result<()> {
        let p = &self.params;
        writeln!(
            out,
            "# cvmem workload {}: guest {} bytes, {} vCPUs, seed {}, flips {}, queries {}",
            self.name, p.guest_bytes, p.vcpus, p.seed, p.flips, p.queries
        )?;
        writeln!(out, "# {}", describe(self.name).unwrap_or(""))?;
        for op in &self.ops {
            writeln!(out, "{op}")?;
        }
        Ok(())
    }

    /// Number of attribute changes (attrs and map-gpa lines).
    pub fn conversions(&self) -> usize {
        self.ops
            .iter()
            .filter(|op| matches!(op, Op::Attrs { .. } | Op::MapGpa { .. }))
            .count()
    }

    /// Number of queries.
    pub fn queries(&self) -> usize {
        self.ops
            .iter()
            .filter(|op| matches!(op, Op::Query { .. }))
            .count()
    }
}

/// The generators: name and one-line description.
pub const WORKLOADS: &[(&str, &str)] = &[
    (
        "startup",
        "QEMU start-up: guest-memfd memslots, every slot set private",
    ),
    (
        "boot",
        "start-up + Linux TDX boot: MMIO window, SWIOTLB, DMA pools, per-vCPU pages, virtio rings",
    ),
    (
        "tdx-4g",
        "the published 4 GiB TDX boot profile: 4K faults, hot-range flips, 2M faults at login",
    ),
    (
        "swiotlb-churn",
        "boot + dynamic SWIOTLB pools and transient <= 256 KiB conversions",
    ),
    (
        "snp-psc",
        "SNP Page State Change batches of 64 2M/4K entries, coalesced into MapGPA exits",
    ),
    (
        "lazy-accept",
        "SNP guest accepting its memory lazily in 2 MiB units, faulting each",
    ),
    (
        "kexec",
        "boot, kexec (every shared range back to private), boot again",
    ),
    (
        "mmio-storm",
        "firmware making a 64-bit MMIO aperture shared in 2 MiB MapGPAs",
    ),
    (
        "selftest",
        "the kernel's private_mem_conversions_test layout and conversion stages",
    ),
    (
        "checkerboard",
        "worst case: every other 4K page of a 1 GiB window shared",
    ),
    (
        "checkerboard-all",
        "worst case: every other 4K page of all of RAM shared",
    ),
    (
        "hostile",
        "a guest maximising every design's memory: alternating pages, then runs of 2 … 8 per 2M page",
    ),
    (
        "random-flips",
        "random 4K private/shared flips over all of RAM",
    ),
];

/// The description of a generator.
pub fn describe(name: &str) -> Option<&'static str> {
    WORKLOADS.iter().find(|(n, _)| *n == name).map(|(_, d)| *d)
}

/// Why a workload cannot be generated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkloadError {
    /// No generator has this name.
    Unknown(String),
    /// The parameters are out of range.
    BadParams(&'static str),
}

impl std::fmt::Display for WorkloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkloadError::Unknown(n) => {
                let names: Vec<&str> = WORKLOADS.iter().map(|(n, _)| *n).collect();
                write!(f, "unknown workload `{n}` (known: {})", names.join(", "))
            }
            WorkloadError::BadParams(why) => write!(f, "bad workload parameters: {why}"),
        }
    }
}

impl std::error::Error for WorkloadError {}

/// Generates workload `name`.
pub fn generate(name: &str, params: &Params) -> Result<Workload, WorkloadError> {
    if params.guest_bytes < 64 << 20 || params.guest_bytes % (2 << 20) != 0 {
        return Err(WorkloadError::BadParams(
            "guest size must be a multiple of 2 MiB, at least 64 MiB",
        ));
    }
    if params.guest_bytes > 1 << 50 {
        return Err(WorkloadError::BadParams("guest size above 1 PiB"));
    }
    if params.vcpus == 0 || params.vcpus > 4096 {
        return Err(WorkloadError::BadParams("vCPUs must be 1 ..= 4096"));
    }
    let (name, ops): (&'static str, Vec<Op>) = match name {
        "startup" => ("startup", conversions::startup(params)),
        "boot" => ("boot", guest::boot(params)),
        "tdx-4g" => ("tdx-4g", tdx::profile_4g(params)),
        "swiotlb-churn" => ("swiotlb-churn", guest::swiotlb_churn(params)),
        "snp-psc" => ("snp-psc", snp::psc_batches(params)),
        "lazy-accept" => ("lazy-accept", snp::lazy_accept(params)),
        "kexec" => ("kexec", guest::kexec(params)),
        "mmio-storm" => ("mmio-storm", tdx::mmio_storm(params)),
        "selftest" => ("selftest", conversions::selftest(params)),
        "checkerboard" => ("checkerboard", conversions::checkerboard(params)),
        "checkerboard-all" => ("checkerboard-all", conversions::checkerboard_all(params)),
        "hostile" => ("hostile", conversions::hostile(params)),
        "random-flips" => ("random-flips", conversions::random_flips(params)),
        other => return Err(WorkloadError::Unknown(other.to_string())),
    };
    Ok(Workload {
        name,
        params: *params,
        ops,
    })
}
