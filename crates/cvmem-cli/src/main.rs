//! The `cvmem` command: replay op-logs, run the demo, compare designs, draw memory maps.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod limits;
mod map;
mod report;
mod scenario;

/// Counts allocations, so that `compare` can check the designs' byte counts.
#[global_allocator]
static ALLOC: cvmem_designs::meter::CountingAlloc = cvmem_designs::meter::CountingAlloc;

/// Hugepage-aware private/shared memory tracking for confidential VMs.
#[derive(Parser, Debug)]
#[command(name = "cvmem", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Replay an op-log scenario (spec: op-log v1).
    Replay(cmd::replay::Args),
    /// Replay a built-in 4 GiB TDX guest boot and show what its memory looks like.
    Demo(cmd::demo::Args),
    /// Compare the tracking designs (linux, options A-C, bitmap, rangemap, roaring, cvmem) on a workload.
    Compare(cmd::compare::Args),
    /// Draw a guest's memory (GPA space in 2M cells) as SVG and PNG.
    Map(cmd::map::Args),
    /// The headline ratios of every design against linux, in one process.
    Bench(cmd::bench::Args),
    /// Boot a small guest on /dev/kvm and drive conversions through real vCPU exits.
    #[cfg(target_os = "linux")]
    KvmRun(cmd::kvm_run::Args),
    /// Run op-logs against a real KVM and the core, line by line, and print every difference.
    #[cfg(target_os = "linux")]
    KvmDiff(cmd::kvm_diff::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay(args) => cmd::replay::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Compare(args) => cmd::compare::run(args),
        Command::Map(args) => cmd::map::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        #[cfg(target_os = "linux")]
        Command::KvmRun(args) => cmd::kvm_run::run(args),
        #[cfg(target_os = "linux")]
        Command::KvmDiff(args) => cmd::kvm_diff::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cvmem: {}", limits::printable(&e));
            ExitCode::from(2)
        }
    }
}
