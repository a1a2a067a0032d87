//! One module per subcommand. Each has `Args` (clap) and `run(Args) -> Result<ExitCode, String>`.

pub(crate) mod bench;
pub(crate) mod compare;
pub(crate) mod demo;
#[cfg(target_os = "linux")]
pub(crate) mod kvm_diff;
#[cfg(target_os = "linux")]
pub(crate) mod kvm_run;
pub(crate) mod map;
pub(crate) mod replay;
