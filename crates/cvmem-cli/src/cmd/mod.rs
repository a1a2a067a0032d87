//! One module per subcommand. Each has `Args` (clap) and `run(Args) -> Result<ExitCode, String>`.

pub(crate) mod demo;
pub(crate) mod replay;
