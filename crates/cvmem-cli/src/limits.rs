//! Up-front checks of the counts and sizes a command is asked for: refused with a clear
//! message (exit 2) before anything is allocated, instead of an abort on a failed allocation or
//! a panic on an overflow.

use cvmem_oplog::fmt_bytes;

/// Bytes the machine can still give this process (`MemAvailable`), or `None` where unknown.
fn available_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Checks that `count` items of `bytes_each` (as `--flag` asks) fit in `budget` bytes and in
/// the machine's available memory; a growing vector may hold twice its length while it grows.
pub(crate) fn fits(flag: &str, count: u64, bytes_each: usize, budget: u64) -> Result<(), String> {
    let need = count
        .checked_mul(bytes_each as u64)
        .and_then(|b| b.checked_mul(2))
        .ok_or_else(|| format!("--{flag} {count}: the count overflows any memory"))?;
    if need > budget {
        return Err(format!(
            "--{flag} {count} needs about {} for its operations, more than the memory budget {}",
            fmt_bytes(need),
            fmt_bytes(budget)
        ));
    }
    match available_bytes() {
        Some(free) if need > free => Err(format!(
            "--{flag} {count} needs about {}, more than this machine has available ({})",
            fmt_bytes(need),
            fmt_bytes(free)
        )),
        _ => Ok(()),
    }
}

/// Checks a guest size: whole pages, at least one 2 MiB page, within the gfn space.
pub(crate) fn guest_size(flag: &str, bytes: u64) -> Result<u64, String> {
    if bytes < 2 << 20 || bytes % 4096 != 0 || bytes > 1 << 63 {
        return Err(format!(
            "--{flag} {bytes:#x}: a guest size must be whole 4 KiB pages, from 2M to 8E"
        ));
    }
    Ok(bytes)
}

/// The smallest memory budget accepted: below it not even a workload fits.
pub(crate) const MIN_MEMORY_BUDGET: u64 = 1 << 20;

/// Checks `--memory-budget`.
pub(crate) fn memory_budget(bytes: u64) -> Result<u64, String> {
    if bytes < MIN_MEMORY_BUDGET {
        return Err(format!(
            "--memory-budget {bytes}: at least {} (a design and its workload need more)",
            fmt_bytes(MIN_MEMORY_BUDGET)
        ));
    }
    Ok(bytes)
}

/// `text` with terminal control bytes and other non-printing characters shown escaped, for
/// echoing input (an op-log token, a file name) back to a terminal.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped = c.is_control() && c != '\t';
            let shown: Box<dyn Iterator<Item = char>> = if escaped {
                Box::new(c.escape_default())
            } else {
                Box::new(std::iter::once(c))
            };
            shown
        })
        .collect()
}

/// The longest op-log line read (comments included): a longer one is refused before it is read
/// whole.
pub(crate) const MAX_OPLOG_LINE: usize = 4 << 20;

/// Reads an op-log from `file` (`-`: standard input), line by line with [`MAX_OPLOG_LINE`];
/// invalid UTF-8 is kept lossily so that the parser reports the line.
pub(crate) fn read_oplog(file: &std::path::Path) -> Result<String, String> {
    use std::io::{BufRead, BufReader, Read};
    let name = file.display();
    let input: Box<dyn Read> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(file).map_err(|e| format!("{name}: {e}"))?)
    };
    let mut reader = BufReader::new(input);
    let (mut text, mut line, mut number) = (String::new(), Vec::new(), 0usize);
    loop {
        line.clear();
        number += 1;
        let limit = MAX_OPLOG_LINE as u64 + 1;
        let n = (&mut reader)
            .take(limit)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("{name}: {e}"))?;
        if n == 0 {
            return Ok(text);
        }
        if line.len() > MAX_OPLOG_LINE && line.last() != Some(&b'\n') {
            return Err(format!(
                "{name}: line {number} is longer than {} bytes",
                MAX_OPLOG_LINE
            ));
        }
        text.push_str(&String::from_utf8_lossy(&line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_that_cannot_fit_are_refused() {
        assert!(fits("flips", 1000, 64, 8 << 30).is_ok());
        let e = fits("flips", u64::MAX, 24, 8 << 30).unwrap_err();
        assert!(e.contains("overflows"), "{e}");
        let e = fits("flips", 100_000_000, 64, 8 << 30).unwrap_err();
        assert!(e.contains("memory budget"), "{e}");
        assert!(guest_size("size", 0).is_err());
        assert!(guest_size("size", 4 << 30).is_ok());
        assert!(memory_budget(1).is_err());
    }

    #[test]
    fn control_bytes_are_shown_escaped() {
        assert_eq!(printable("a\u{1b}[2Jb\tc"), "a\\u{1b}[2Jb\tc");
        assert_eq!(printable("0x10 private"), "0x10 private");
    }
}
