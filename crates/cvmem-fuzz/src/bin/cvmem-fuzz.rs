//! A stable-Rust random fuzzer for the cvmem targets: random inputs and mutations of the
//! checked-in corpus, no coverage feedback. For coverage-guided runs use `fuzz/` (cargo fuzz,
//! nightly). See `fuzz/README.md`.
//!
//! ```text
//! cvmem-fuzz [TARGET|all]... [--seconds N] [--iterations N] [--seed S] [--out DIR]
//! ```
//! A finding (a panic) is written to `DIR/crash-TARGET-SEED-N` (default DIR: the current one)
//! and ends the run with exit status 1; replay it with `cvmem-fuzz TARGET --replay FILE`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cvmem_fuzz::mutate::{mutate, random_bytes, Rng};
use cvmem_fuzz::{corpus, target, Target, TARGETS};

struct Options {
    targets: Vec<Target>,
    seconds: Option<u64>,
    iterations: Option<u64>,
    seed: u64,
    out: PathBuf,
    replay: Option<PathBuf>,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        targets: Vec::new(),
        seconds: None,
        iterations: None,
        seed: 1,
        out: PathBuf::from("."),
        replay: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let number = |s: String| s.parse::<u64>().map_err(|e| format!("{s}: {e}"));
        match arg.as_str() {
            "--seconds" => o.seconds = Some(number(value("--seconds")?)?),
            "--iterations" => o.iterations = Some(number(value("--iterations")?)?),
            "--seed" => o.seed = number(value("--seed")?)?,
            "--out" => o.out = PathBuf::from(value("--out")?),
            "--replay" => o.replay = Some(PathBuf::from(value("--replay")?)),
            "all" => o.targets.extend(TARGETS),
            name => o.targets.push(target(name).ok_or_else(|| {
                let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
                format!("unknown target `{name}` (targets: {})", names.join(", "))
            })?),
        }
    }
    if o.targets.is_empty() {
        o.targets.extend(TARGETS);
    }
    if o.seconds.is_none() && o.iterations.is_none() {
        o.seconds = Some(10);
    }
    Ok(o)
}

/// Fuzzes one target; returns the iterations run, or the path of the finding.
fn fuzz(t: Target, o: &Options, budget: Duration) -> Result<u64, String> {
    let seeds = corpus(t.name).unwrap_or_default();
    let mut rng = Rng::new(o.seed ^ t.name.len() as u64);
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        if o.iterations.is_some_and(|max| n >= max)
            || (o.seconds.is_some() && start.elapsed() >= budget)
        {
            return Ok(n);
        }
        let data = if seeds.is_empty() || rng.below(4) == 0 {
            let len = rng.below(t.max_len + 1);
            random_bytes(&mut rng, len)
        } else {
            let seed = &seeds[rng.below(seeds.len())].1;
            let other = &seeds[rng.below(seeds.len())].1;
            mutate(&mut rng, seed, other, t.max_len)
        };
        if catch_unwind(AssertUnwindSafe(|| (t.run)(&data))).is_err() {
            let path = o.out.join(format!("crash-{}-{}-{n}", t.name, o.seed));
            std::fs::write(&path, &data).map_err(|e| format!("{}: {e}", path.display()))?;
            return Err(path.display().to_string());
        }
        n += 1;
    }
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("cvmem-fuzz: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(file) = &o.replay {
        let data = match std::fs::read(file) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("cvmem-fuzz: {}: {e}", file.display());
                return ExitCode::from(2);
            }
        };
        for t in &o.targets {
            (t.run)(&data);
            println!("{}: {} passes", t.name, file.display());
        }
        return ExitCode::SUCCESS;
    }
    let budget = Duration::from_secs(o.seconds.unwrap_or(0)) / o.targets.len() as u32;
    for &t in &o.targets {
        let start = Instant::now();
        match fuzz(t, &o, budget) {
            Ok(n) => {
                let secs = start.elapsed().as_secs_f64();
                println!(
                    "{:<18} {n:>10} inputs in {secs:>7.1} s ({:.0}/s), no finding",
                    t.name,
                    n as f64 / secs.max(1e-9)
                );
            }
            Err(path) => {
                eprintln!("cvmem-fuzz: {}: finding saved to {path}", t.name);
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}
