//! Turning replay outcomes and summaries into JSON Lines and into text for people.

use cvmem::mmu::{LevelCounts, MmuStats};
use cvmem_oplog::fmt_bytes;
use cvmem_oplog::Summary;
use serde_json::{json, Value};

/// Writes `text` to standard output; a closed pipe (`cvmem demo | head`) is a normal end.
pub(crate) fn emit(text: &str) -> Result<std::process::ExitCode, String> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
    {
        Ok(()) => Ok(std::process::ExitCode::SUCCESS),
        Err(e) => io_error(e),
    }
}

/// Maps an output error to the command's result: a closed pipe ends quietly.
pub(crate) fn io_error(e: std::io::Error) -> Result<std::process::ExitCode, String> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(std::process::ExitCode::SUCCESS)
    } else {
        Err(format!("write: {e}"))
    }
}

fn levels_json(c: &LevelCounts) -> Value {
    json!({"4K": c.k4, "2M": c.m2, "1G": c.g1})
}

/// The `mmu` object of the summary: the spec's keys first, then coverage and events.
fn mmu_json(m: &MmuStats, c: &cvmem::mmu::Coverage) -> Value {
    json!({
        "layout": m.layout.to_string(),
        "leaves": {"private": levels_json(&m.private), "shared": levels_json(&m.shared)},
        "table_pages": m.table_pages,
        "splits": m.splits,
        "zaps": m.zaps,
        "demotes": m.demotes,
        "psmash": m.psmash,
        "collapses": m.collapses,
        "replaced": m.replaced,
        "retries": m.retries,
        "faults": m.faults,
        "recovery": m.recovery.name(),
        "paging_levels": m.paging_levels,
        "coverage": {
            "ratio": c.ratio(),
            "huge_bytes": c.huge_bytes,
            "optimum_huge_bytes": c.optimum_huge_bytes,
            "mapped_bytes": c.mapped_bytes,
            "mappable_bytes": c.mappable_bytes,
            "optimum_leaves": levels_json(&c.optimum_leaves),
            "optimum_table_pages": c.optimum_table_pages,
        },
    })
}

/// The summary object of the JSON output.
pub(crate) fn summary_json(s: &Summary) -> Value {
    let memslots: Vec<Value> = s
        .memslots
        .iter()
        .map(|m| {
            json!({
                "slot": m.slot, "gpa": m.gpa, "size": m.size,
                "mixed_2m": m.mixed_2m, "mixed_1g": m.mixed_1g,
                "mappable": {"1G": m.eligibility.bytes_1g, "2M": m.eligibility.bytes_2m, "4K": m.eligibility.bytes_4k},
                "guest_inhibit": {"2M": m.eligibility.inhibited[0], "1G": m.eligibility.inhibited[1]},
            })
        })
        .collect();
    let files: Vec<Value> = s
        .files
        .iter()
        .map(|f| {
            let [k4, m2, g1] = f.private_by_folio;
            json!({
                "file": f.file, "size": f.size, "folio": f.folio.name(), "merge": f.merge.name(),
                "splits": f.counts.splits, "merges": f.counts.merges,
                "private": {"4K": k4, "2M": m2, "1G": g1},
            })
        })
        .collect();
    json!({"summary": {
        "attributes": s.attributes.iter().map(|&(g, z, a)| json!([g, z, a])).collect::<Vec<_>>(),
        "memslots": memslots,
        "files": files,
        "mmu": mmu_json(&s.mmu, &s.coverage),
        "tracking": {"heap_bytes": s.heap_bytes, "boundaries": s.boundaries},
        "ops": s.ops,
        "errors": s.errors,
    }})
}

/// The summary as text for people.
pub(crate) fn summary_text(s: &Summary) -> String {
    let mut out = String::new();
    out.push_str(&format!("memslots ({}):\n", s.memslots.len()));
    out.push_str(&format!(
        "  {:>5}  {:>14}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}\n",
        "slot", "gpa", "size", "1G", "2M", "4K only", "mixed2M", "mixed1G"
    ));
    for m in &s.memslots {
        let e = &m.eligibility;
        out.push_str(&format!(
            "  {:>5}  {:>#14x}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}\n",
            m.slot,
            m.gpa,
            fmt_bytes(m.size),
            fmt_bytes(e.bytes_1g),
            fmt_bytes(e.bytes_2m),
            fmt_bytes(e.bytes_4k),
            m.mixed_2m,
            m.mixed_1g
        ));
    }
    if !s.files.is_empty() {
        out.push_str(&format!("guest_memfd files ({}):\n", s.files.len()));
        out.push_str(&format!(
            "  {:>5}  {:>8}  {:>6}  {:>10}  {:>7}  {:>7}  {:>12}  {:>12}  {:>12}\n",
            "file",
            "size",
            "folio",
            "merge",
            "splits",
            "merges",
            "private 1G",
            "private 2M",
            "private 4K"
        ));
        for f in &s.files {
            let [k4, m2, g1] = f.private_by_folio;
            out.push_str(&format!(
                "  {:>5}  {:>8}  {:>6}  {:>10}  {:>7}  {:>7}  {:>12}  {:>12}  {:>12}\n",
                f.file,
                fmt_bytes(f.size),
                f.folio.name(),
                f.merge.name(),
                f.counts.splits,
                f.counts.merges,
                fmt_bytes(g1),
                fmt_bytes(m2),
                fmt_bytes(k4)
            ));
        }
    }
    out.push_str(&format!(
        "attribute runs (non-shared): {}\n",
        s.attributes.len()
    ));
    for &(gpa, size, attrs) in s.attributes.iter().take(12) {
        out.push_str(&format!(
            "  {gpa:#014x} +{:<8} attrs {attrs:#x}\n",
            fmt_bytes(size)
        ));
    }
    if s.attributes.len() > 12 {
        out.push_str(&format!("  … {} more\n", s.attributes.len() - 12));
    }
    out.push_str(&format!(
        "tracking memory: {} ({} attribute boundaries)\n",
        fmt_bytes(s.heap_bytes as u64),
        s.boundaries
    ));
    out.push_str(&mmu_text(&s.mmu, &s.coverage));
    out.push_str(&format!("operations: {} ({} rejected)\n", s.ops, s.errors));
    out
}

/// One text line per memslot picturing its memory: `#` private, `.` shared, `:` both inside the
/// cell, each cell a fixed share of the slot.
pub(crate) fn slot_maps(t: &cvmem::Tracker, width: u64) -> String {
    let mut out = String::new();
    for slot in t.memslots() {
        let range = slot.range();
        let cell = range.len().div_ceil(width).max(1);
        let mut line = String::new();
        let mut start = range.start;
        while start < range.end {
            let end = (start + cell).min(range.end);
            let c = match t
                .attribute_store()
                .uniform(cvmem::GfnRange::new(start, end))
            {
                Some(a) if a & cvmem::KVM_MEMORY_ATTRIBUTE_PRIVATE != 0 => '#',
                Some(_) => '.',
                None => ':',
            };
            line.push(c);
            start = end;
        }
        out.push_str(&format!(
            "  slot {:>3} {:>#12x} {:>6} |{line}|\n",
            slot.id(),
            slot.gpa(),
            fmt_bytes(slot.size()).to_string()
        ));
    }
    out
}

/// The page tables' state for people.
pub(crate) fn mmu_text(m: &MmuStats, c: &cvmem::mmu::Coverage) -> String {
    let mut out = format!(
        "page tables ({} layout, recovery {}, {}-level paging):\n",
        m.layout, m.recovery, m.paging_levels
    );
    out += &format!(
        "  {:>8}  {:>10}  {:>10}  {:>10}\n",
        "leaves", "4K", "2M", "1G"
    );
    for (kind, l) in [("private", &m.private), ("shared", &m.shared)] {
        out += &format!("  {kind:>8}  {:>10}  {:>10}  {:>10}\n", l.k4, l.m2, l.g1);
    }
    out += &format!(
        "  table pages {} ({}; {} to map all mappable memory at its largest level), splits {}, zaps {}, collapses {}, replaced {}, retries {}\n",
        m.table_pages,
        fmt_bytes(m.table_pages * 4096),
        c.optimum_table_pages,
        m.splits,
        m.zaps,
        m.collapses,
        m.replaced,
        m.retries
    );
    out += &format!(
        "  cut huge private leaves: {} demoted (split layout: TDX demote), {} dropped whole (unified layout: SNP PSMASH)\n",
        m.demotes, m.psmash
    );
    out += &format!(
        "  hugepage coverage {:.1}% ({} mapped huge of {} possible; {} mapped in all)\n",
        c.ratio() * 100.0,
        fmt_bytes(c.huge_bytes),
        fmt_bytes(c.optimum_huge_bytes),
        fmt_bytes(c.mapped_bytes)
    );
    out
}
