//! `cvmem demo`: a 4 GiB TDX guest booting, replayed and shown.

use std::process::ExitCode;

/// Arguments of `cvmem demo`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(_args: Args) -> Result<ExitCode, String> {
    Err("demo: not yet".into())
}
