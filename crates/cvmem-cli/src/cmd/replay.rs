//! `cvmem replay FILE [--json]`: run an op-log v1 scenario.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use cvmem_oplog as oplog;
use cvmem_oplog::Replayer;
use serde_json::json;

use crate::report;

/// Arguments of `cvmem replay`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The op-log file (`-` for standard input).
    file: PathBuf,
    /// Print JSON Lines (one object per result, then a summary) instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> Result<ExitCode, String> {
    let text = crate::limits::read_oplog(&args.file)?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    match replay_text(&text, args.json, &mut out).and_then(|code| out.flush().map(|_| code)) {
        Ok(code) => Ok(code),
        Err(e) => report::io_error(e),
    }
}

/// Replays `text`, writing results to `out`. A parse error stops the replay with exit status 1.
pub(crate) fn replay_text(
    text: &str,
    json: bool,
    out: &mut impl Write,
) -> std::io::Result<ExitCode> {
    let mut replayer = Replayer::new();
    for line in oplog::ops(text.lines()) {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                if json {
                    writeln!(
                        out,
                        "{}",
                        json!({"line": e.line, "parse_error": e.kind.to_string()})
                    )?;
                }
                out.flush()?;
                let e = crate::limits::printable(&e.to_string());
                eprintln!("cvmem replay: parse error at {e}");
                return Ok(ExitCode::from(1));
            }
        };
        let outcome = replayer.apply(&line.op);
        if json {
            if let Some(v) = oplog::render::json(line.number, &line.op, &outcome) {
                writeln!(out, "{v}")?;
            }
        } else if let Some(t) = oplog::render::text(line.number, &line.op, &outcome) {
            writeln!(out, "{t}")?;
        }
    }
    let summary = replayer.summary();
    if json {
        writeln!(out, "{}", report::summary_json(&summary))?;
    } else {
        write!(out, "\n{}", report::summary_text(&summary))?;
    }
    Ok(ExitCode::SUCCESS)
}
