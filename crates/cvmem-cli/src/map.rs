//! A picture of a guest's memory: the GPA space as cells (2 MiB by default) coloured private,
//! shared or mixed, with 1G edges and memslots marked — as SVG (with labels and a legend) and as
//! an RGB raster (no text) for PNG. This is what a VMM developer looks at to see fragmentation.
//!
//! The state is a core [`Tracker`] (replay a workload or an op-log into one first). Cells are
//! classified from the attribute runs in O(cells + runs): a large guest is drawn with cells of
//! 2M × 2^k so that at most `max_rows` rows of `cols` cells are needed.

use std::fmt::Write;

use cvmem::{Gfn, GfnRange, Gpa, Level, Tracker};
use cvmem_oplog::fmt_bytes;
use serde::Serialize;

/// The class of one cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum CellKind {
    /// Every page private.
    Private,
    /// Every page shared.
    Shared,
    /// A 2M page inside (or the cell itself, below 2M) holds both kinds: no hugepage there.
    Mixed,
    /// Uniform 2M pages of both kinds (only for cells larger than 2M).
    Split,
}

/// One cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Cell {
    /// Attribute class.
    pub(crate) kind: CellKind,
    /// Whether a memslot covers any of it.
    pub(crate) in_slot: bool,
    /// For private memory in a memslot bound to a guest_memfd: the smallest folio backing it
    /// (`4K` once a conversion split its folio; no private mapping is larger than its folio).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) folio: Option<Level>,
}

/// A row of cells.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct MapRow {
    /// GPA of the first cell.
    pub(crate) gpa: u64,
    /// The cells.
    pub(crate) cells: Vec<Cell>,
}

/// A memslot as drawn.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct MapSlot {
    /// Slot id.
    pub(crate) id: u32,
    /// First byte.
    pub(crate) gpa: u64,
    /// Size.
    pub(crate) size: u64,
    /// Mixed 2M pages wholly inside.
    pub(crate) mixed_2m: u64,
    /// Mixed 1G pages wholly inside.
    pub(crate) mixed_1g: u64,
    /// Bytes mappable at 1G, at 2M, only at 4K.
    pub(crate) eligible: [u64; 3],
}

/// A map ready to draw.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct GpaMap {
    /// First byte shown.
    pub(crate) start: u64,
    /// One past the last byte shown.
    pub(crate) end: u64,
    /// Bytes per cell.
    pub(crate) cell_bytes: u64,
    /// Cells per row.
    pub(crate) cols: usize,
    /// Rows.
    pub(crate) rows: Vec<MapRow>,
    /// Memslots intersecting the range.
    pub(crate) slots: Vec<MapSlot>,
    /// Cells of each kind inside memslots: private, shared, mixed, split.
    pub(crate) counts: [u64; 4],
    /// Cells outside every memslot (no memory: not counted as shared).
    pub(crate) outside: u64,
    /// Private or mixed cells backed by guest_memfd, by their smallest folio: 4K, 2M, 1G.
    pub(crate) folio_cells: [u64; 3],
}

/// What to draw.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MapOptions {
    /// First byte (default: 0).
    pub(crate) from: Option<u64>,
    /// One past the last byte (default: the end of the highest memslot).
    pub(crate) to: Option<u64>,
    /// Cell size (a power of two, at least 4K); default: 2M, or larger to fit `max_rows`.
    pub(crate) cell_bytes: Option<u64>,
    /// Cells per row.
    pub(crate) cols: usize,
    /// Most rows.
    pub(crate) max_rows: usize,
}

impl Default for MapOptions {
    fn default() -> Self {
        MapOptions {
            from: None,
            to: None,
            cell_bytes: None,
            cols: 512,
            max_rows: 256,
        }
    }
}

/// Why a map cannot be drawn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MapError {
    /// Nothing to draw: the range is empty.
    EmptyRange,
    /// A cell size that is not a power of two of at least 4 KiB.
    BadCell(u64),
    /// The range would need more cells than allowed.
    TooManyCells(u64),
}

impl std::fmt::Display for MapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MapError::EmptyRange => write!(
                f,
                "the range to draw is empty (no memslot, or --to <= --from)"
            ),
            MapError::BadCell(c) => write!(f, "cell size {c:#x} is not a power of two >= 4K"),
            MapError::TooManyCells(n) => write!(
                f,
                "{n} cells is too many: choose a larger --cell or a smaller range"
            ),
        }
    }
}

impl std::error::Error for MapError {}

const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;

/// Classifies the cells of `tracker`'s memory.
/// Cells classified between two calls of `build`'s progress callback.
const PROGRESS_EVERY: u64 = 1 << 14;

#[cfg(test)]
pub(crate) fn build(tracker: &Tracker, opts: &MapOptions) -> Result<GpaMap, MapError> {
    build_with_progress(tracker, opts, &mut |_, _| {})
}

/// [`build`], calling `progress(done, total)` every few thousand cells (long maps take seconds).
pub(crate) fn build_with_progress(
    tracker: &Tracker,
    opts: &MapOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<GpaMap, MapError> {
    let slots_end = tracker
        .memslots()
        .map(|s| s.gpa().0 + s.size())
        .max()
        .unwrap_or(0);
    let cols = opts.cols.clamp(1, 4096);
    let start_raw = opts.from.unwrap_or(0);
    let end_raw = opts.to.unwrap_or(slots_end);
    if end_raw <= start_raw {
        return Err(MapError::EmptyRange);
    }
    let span = end_raw - start_raw;
    let cell = match opts.cell_bytes {
        Some(c) if !c.is_power_of_two() || c < 4096 => return Err(MapError::BadCell(c)),
        Some(c) => c,
        None => {
            let want = span.div_ceil((cols * opts.max_rows.max(1)) as u64);
            want.next_power_of_two().max(M2)
        }
    };
    let start = start_raw & !(cell - 1);
    let end = end_raw.div_ceil(cell).saturating_mul(cell);
    let ncells = (end - start) / cell;
    if ncells > 1 << 22 {
        return Err(MapError::TooManyCells(ncells));
    }
    // Columns: a whole number of cells per row; fewer when the range is short.
    let cols = (ncells as usize).min(cols).max(1);
    let slots: Vec<(u64, u64)> = tracker
        .memslots()
        .map(|s| (s.gpa().0, s.gpa().0 + s.size()))
        .collect();
    let mut rows: Vec<MapRow> = Vec::new();
    let (mut counts, mut outside, mut folio_cells) = ([0u64; 4], 0u64, [0u64; 3]);
    for i in 0..ncells {
        if i % PROGRESS_EVERY == 0 {
            progress(i, ncells);
        }
        let a = start + i * cell;
        let b = a + cell;
        let kind = classify(tracker, a, b);
        let in_slot = slots.iter().any(|&(s, e)| s < b && a < e);
        if in_slot {
            counts[kind as usize] += 1;
        } else {
            outside += 1;
        }
        let folio = (kind != CellKind::Shared)
            .then(|| smallest_folio(tracker, a, b))
            .flatten();
        if let Some(level) = folio {
            folio_cells[level.index()] += 1;
        }
        if i as usize % cols == 0 {
            rows.push(MapRow {
                gpa: a,
                cells: Vec::with_capacity(cols),
            });
        }
        rows.last_mut().expect("pushed above").cells.push(Cell {
            kind,
            in_slot,
            folio,
        });
    }
    let map_slots = tracker
        .memslots()
        .filter(|s| s.gpa().0 < end && start < s.gpa().0 + s.size())
        .map(|s| {
            let e = tracker.eligibility(s.id()).unwrap_or_default();
            MapSlot {
                id: s.id(),
                gpa: s.gpa().0,
                size: s.size(),
                mixed_2m: tracker.mixed_count(s.id(), Level::M2),
                mixed_1g: tracker.mixed_count(s.id(), Level::G1),
                eligible: [e.bytes_1g, e.bytes_2m, e.bytes_4k],
            }
        })
        .collect();
    Ok(GpaMap {
        start,
        end,
        cell_bytes: cell,
        cols,
        rows,
        slots: map_slots,
        counts,
        outside,
        folio_cells,
    })
}

/// The smallest folio behind `[a, b)` where memslots bound to a guest_memfd hold it (`None`
/// where none does). One look per 2M of the cell: split marks are kept per 2M and per 1G.
fn smallest_folio(tracker: &Tracker, a: u64, b: u64) -> Option<Level> {
    let mut smallest: Option<Level> = None;
    let mut gpa = a;
    while gpa < b {
        let gfn = cvmem::Gpa(gpa).gfn();
        let level = tracker.slot_for_gfn(gfn).and_then(|slot| {
            let binding = slot.gmem()?;
            let page = binding.offset.0 / cvmem::PAGE_SIZE + (gfn.0 - slot.base_gfn().0);
            Some(tracker.gmem(binding.gmem)?.folios().level_at(page))
        });
        if let Some(level) = level {
            smallest = Some(smallest.map_or(level, |s| s.min(level)));
            if level == Level::K4 {
                break;
            }
        }
        gpa = (gpa | (M2 - 1)) + 1;
    }
    smallest
}

fn classify(tracker: &Tracker, a: u64, b: u64) -> CellKind {
    let range = GfnRange::covering(Gpa(a), b - a);
    let (mut private, mut shared, mut mixed) = (false, false, false);
    let mut last: Option<(Gfn, cvmem::Kind)> = None;
    // Read from wherever PRIVATE is kept (per VM, or per guest_memfd through the bindings).
    tracker.for_each_kind_run(range, |run, kind| {
        if kind.is_private() {
            private = true;
        } else {
            shared = true;
        }
        // A change of kind inside a 2M page (not at the cell's start) splits that 2M page.
        if last.is_some_and(|(end, k)| k != kind && end == run.start)
            && !Level::M2.is_aligned(run.start)
        {
            mixed = true;
        }
        last = Some((run.end, kind));
    });
    match (private, shared) {
        (true, false) => CellKind::Private,
        (false, _) => CellKind::Shared,
        (true, true) if mixed || b - a <= M2 => CellKind::Mixed,
        (true, true) => CellKind::Split,
    }
}

/// Fill colours (RGB) per kind, inside memslots and outside them; private memory of a
/// guest_memfd by its folio (darker: larger).
fn rgb(cell: Cell) -> [u8; 3] {
    match (cell.kind, cell.folio) {
        (CellKind::Private, Some(Level::G1)) => return [0x15, 0x2a, 0x6e],
        (CellKind::Private, Some(Level::K4)) => return [0x6f, 0xb7, 0xe8],
        _ => {}
    }
    match (cell.kind, cell.in_slot) {
        (CellKind::Private, true) => [0x2b, 0x59, 0xc3],
        (CellKind::Shared, true) => [0xf2, 0xa5, 0x41],
        (CellKind::Mixed, true) => [0xd6, 0x27, 0x28],
        (CellKind::Split, true) => [0x8e, 0x44, 0xad],
        (CellKind::Private, false) => [0xa9, 0xbc, 0xe8],
        (CellKind::Shared, false) => [0xee, 0xee, 0xee],
        (CellKind::Mixed, false) => [0xf0, 0xa0, 0xa0],
        (CellKind::Split, false) => [0xd2, 0xb4, 0xde],
    }
}

fn hex(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// Geometry shared by the SVG and the raster.
struct Geometry {
    cell_w: f64,
    cell_h: f64,
    left: f64,
    top: f64,
}

impl GpaMap {
    fn geometry(&self, left: f64, top: f64) -> Geometry {
        let cell_w = (1024.0 / self.cols as f64).max(1.0);
        Geometry {
            cell_w,
            cell_h: if self.cols < 64 { 24.0 } else { 14.0 },
            left,
            top,
        }
    }

    /// Column and row of `gpa` (clamped into the map).
    fn position(&self, gpa: u64) -> (f64, f64) {
        let i = (gpa.clamp(self.start, self.end) - self.start) as f64 / self.cell_bytes as f64;
        let row = (i / self.cols as f64).floor();
        (i - row * self.cols as f64, row)
    }

    /// The map as SVG: a title, per-slot statistics, the grid with GPA labels, 1G edges,
    /// memslot outlines and a legend.
    pub(crate) fn to_svg(&self, title: &str) -> String {
        let header = 64.0 + 16.0 * self.slots.len() as f64;
        let g = self.geometry(150.0, header);
        let width = g.left + g.cell_w * self.cols as f64 + 20.0;
        let height = g.top + g.cell_h * self.rows.len() as f64 + 60.0;
        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="monospace" font-size="11" xml:space="preserve">"#
        );
        let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            out,
            r#"<text x="10" y="20" font-size="15" font-family="sans-serif">{}</text>"#,
            escape(title)
        );
        let _ = writeln!(
            out,
            r#"<text x="10" y="38">{:#x} .. {:#x} · cell {} · {} per row · {}</text>"#,
            self.start,
            self.end,
            fmt_bytes(self.cell_bytes),
            fmt_bytes(self.cell_bytes * self.cols as u64),
            escape(&self.cell_summary())
        );
        for (k, s) in self.slots.iter().enumerate() {
            let _ = writeln!(
                out,
                r#"<text x="10" y="{}">slot {:<5} {:#14x} +{:<6} mixed 2M pages {:<7} mixed 1G {:<4} mappable at 1G {:<7} 2M {:<7} 4K only {}</text>"#,
                58.0 + 16.0 * k as f64,
                s.id,
                s.gpa,
                fmt_bytes(s.size).to_string(),
                s.mixed_2m,
                s.mixed_1g,
                fmt_bytes(s.eligible[0]).to_string(),
                fmt_bytes(s.eligible[1]).to_string(),
                fmt_bytes(s.eligible[2])
            );
        }
        for (r, row) in self.rows.iter().enumerate() {
            let y = g.top + r as f64 * g.cell_h;
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{:.1}" text-anchor="end">{:#x}</text>"#,
                g.left - 6.0,
                y + g.cell_h * 0.75,
                row.gpa
            );
            // Runs of equal cells as one rectangle each.
            let mut c = 0;
            while c < row.cells.len() {
                let mut e = c + 1;
                while e < row.cells.len() && row.cells[e] == row.cells[c] {
                    e += 1;
                }
                let kind = format!("{:?}", row.cells[c].kind).to_lowercase();
                let _ = writeln!(
                    out,
                    r#"<rect x="{:.2}" y="{:.1}" width="{:.2}" height="{:.1}" fill="{}"><title>{:#x} +{}: {}{}</title></rect>"#,
                    g.left + c as f64 * g.cell_w,
                    y,
                    (e - c) as f64 * g.cell_w,
                    g.cell_h - 1.0,
                    hex(rgb(row.cells[c])),
                    row.gpa + c as u64 * self.cell_bytes,
                    fmt_bytes((e - c) as u64 * self.cell_bytes),
                    kind,
                    if row.cells[c].in_slot {
                        ""
                    } else {
                        " (no memslot)"
                    }
                );
                c = e;
            }
        }
        // 1G edges: vertical lines inside rows when a row spans more than 1G; row separators
        // fall on 1G edges otherwise.
        let row_bytes = self.cell_bytes * self.cols as u64;
        if self.cell_bytes < G1 && row_bytes > G1 {
            let per_g = (G1 / self.cell_bytes) as usize;
            for k in (per_g..self.cols).step_by(per_g) {
                let x = g.left + k as f64 * g.cell_w;
                let _ = writeln!(
                    out,
                    r##"<line x1="{x:.2}" y1="{}" x2="{x:.2}" y2="{:.1}" stroke="#222" stroke-width="0.6" stroke-dasharray="2,2"/>"##,
                    g.top,
                    g.top + g.cell_h * self.rows.len() as f64
                );
            }
        }
        if self.cell_bytes < G1 {
            for (r, row) in self.rows.iter().enumerate().skip(1) {
                if row.gpa % G1 == 0 {
                    let y = g.top + r as f64 * g.cell_h - 0.5;
                    let _ = writeln!(
                        out,
                        r##"<line x1="{}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#222" stroke-width="0.6"/>"##,
                        g.left,
                        g.left + g.cell_w * self.cols as f64
                    );
                }
            }
        }
        // Memslots: an outline per row segment, and the id at the start.
        for s in &self.slots {
            for (a, b) in self.row_segments(s.gpa, s.gpa + s.size) {
                let (c0, r) = self.position(a);
                let (c1, _) = self.position(b);
                let c1 = if c1 <= c0 { self.cols as f64 } else { c1 };
                let _ = writeln!(
                    out,
                    r##"<rect x="{:.2}" y="{:.1}" width="{:.2}" height="{:.1}" fill="none" stroke="black" stroke-width="1.5"/>"##,
                    g.left + c0 * g.cell_w,
                    g.top + r * g.cell_h - 0.5,
                    (c1 - c0) * g.cell_w,
                    g.cell_h
                );
            }
            let (c, r) = self.position(s.gpa.max(self.start));
            let near_end = c > self.cols as f64 * 0.9;
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" font-size="9" fill="white" stroke="black" stroke-width="2" paint-order="stroke" text-anchor="{}">slot {}</text>"#,
                g.left + c * g.cell_w + if near_end { -2.0 } else { 2.0 },
                g.top + r * g.cell_h + g.cell_h * 0.7,
                if near_end { "end" } else { "start" },
                s.id
            );
        }
        // Legend.
        let ly = g.top + g.cell_h * self.rows.len() as f64 + 24.0;
        let legend = [
            (
                Cell {
                    kind: CellKind::Private,
                    in_slot: true,
                    folio: None,
                },
                "private",
            ),
            (
                Cell {
                    kind: CellKind::Shared,
                    in_slot: true,
                    folio: None,
                },
                "shared",
            ),
            (
                Cell {
                    kind: CellKind::Mixed,
                    in_slot: true,
                    folio: None,
                },
                "mixed (no hugepage)",
            ),
            (
                Cell {
                    kind: CellKind::Split,
                    in_slot: true,
                    folio: None,
                },
                "uniform 2M pages of both kinds",
            ),
            (
                Cell {
                    kind: CellKind::Shared,
                    in_slot: false,
                    folio: None,
                },
                "no memslot",
            ),
        ];
        let mut legend = legend.to_vec();
        if self.folio_cells != [0; 3] {
            let private = |folio| Cell {
                kind: CellKind::Private,
                in_slot: true,
                folio: Some(folio),
            };
            legend.insert(1, (private(Level::K4), "(split to 4K pages)"));
            legend.insert(1, (private(Level::M2), "(2M folio)"));
            legend.insert(1, (private(Level::G1), "(1G folio)"));
        }
        let mut x = 10.0;
        for (cell, name) in legend {
            let _ = writeln!(
                out,
                r##"<rect x="{x}" y="{}" width="14" height="12" fill="{}" stroke="#999"/><text x="{}" y="{}">{}</text>"##,
                ly - 10.0,
                hex(rgb(cell)),
                x + 18.0,
                ly,
                name
            );
            x += 30.0 + 7.0 * name.len() as f64;
        }
        let _ = writeln!(
            out,
            r#"<text x="10" y="{}">black outlines: memslots · dashed/solid dark lines: 1G edges</text>"#,
            ly + 20.0
        );
        out.push_str("</svg>\n");
        out
    }

    /// `[a, b)` cut at row boundaries.
    fn row_segments(&self, a: u64, b: u64) -> Vec<(u64, u64)> {
        let a = a.clamp(self.start, self.end);
        let b = b.clamp(self.start, self.end);
        let row_bytes = self.cell_bytes * self.cols as u64;
        let mut out = Vec::new();
        let mut at = a;
        while at < b {
            let row_end = self.start + ((at - self.start) / row_bytes + 1) * row_bytes;
            let e = b.min(row_end);
            out.push((at, e));
            at = e;
        }
        out
    }

    /// What the cells hold, in words: memslot cells by kind, and those outside every memslot
    /// apart (they have no memory, so they are neither private nor shared).
    pub(crate) fn cell_summary(&self) -> String {
        let [p, sh, m, sp] = self.counts;
        let mut out = format!("cells in memslots: {p} private, {sh} shared, {m} mixed, {sp} split; {} outside memslots", self.outside);
        if self.folio_cells != [0; 3] {
            let [k4, m2, g1] = self.folio_cells;
            out.push_str(&format!(
                "; private in guest_memfd by smallest folio: {g1} 1G, {m2} 2M, {k4} 4K"
            ));
        }
        out
    }
}

/// `svg` rasterised as a PNG (resvg), text and legend included, with the system's fonts.
pub(crate) fn svg_to_png(svg: &str) -> Result<Vec<u8>, String> {
    use resvg::{tiny_skia, usvg};
    let mut options = usvg::Options::default();
    let fonts = options.fontdb_mut();
    fonts.load_system_fonts();
    // The SVG names generic families; map them to faces this system has (fontdb's defaults
    // are Windows fonts).
    let family = |mono: bool| {
        let named = |f: &&resvg::usvg::fontdb::FaceInfo| {
            f.monospaced == mono && f.families.iter().any(|(n, _)| n.contains("Sans"))
        };
        let face = fonts.faces().find(named);
        face.or_else(|| fonts.faces().find(|f| f.monospaced == mono))
            .and_then(|f| f.families.first().map(|(name, _)| name.clone()))
    };
    let (mono, sans) = (family(true), family(false));
    if let Some(mono) = mono.clone().or_else(|| sans.clone()) {
        fonts.set_monospace_family(mono);
    }
    if let Some(sans) = sans.or(mono) {
        fonts.set_sans_serif_family(sans.clone());
        fonts.set_serif_family(sans);
    }
    let tree = usvg::Tree::from_str(svg, &options).map_err(|e| format!("svg: {e}"))?;
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| format!("a {}x{} picture is too large", size.width(), size.height()))?;
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    pixmap.encode_png().map_err(|e| format!("png: {e}"))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use cvmem::{Gpa, MemoryRegion, SlotFlags};

    #[test]
    fn private_memory_per_guest_memfd_is_drawn_with_its_folios() {
        use cvmem::{AttrMode, GmemBinding, GmemFlags, GmemOffset};
        let mut t = Tracker::new().with_attr_mode(AttrMode::PerGmem);
        let file = t
            .create_guest_memfd(
                2 * G1,
                GmemFlags {
                    mmap: true,
                    init_shared: false,
                    folio: Level::G1,
                },
            )
            .unwrap();
        t.set_user_memory_region(&MemoryRegion {
            slot: 0,
            gpa: Gpa(0),
            size: 2 * G1,
            flags: SlotFlags {
                guest_memfd: true,
                ..Default::default()
            },
            gmem: Some(GmemBinding {
                gmem: file,
                offset: GmemOffset(0),
            }),
            ..Default::default()
        })
        .unwrap();
        // One 4K page of the second 1G folio made shared: 1G -> 2M -> 4K around it.
        t.set_gmem_attributes(file, GmemOffset(G1 + 4 * M2 + 4096), 4096, 0, 0)
            .unwrap();
        let map = build(&t, &MapOptions::default()).unwrap();
        // Private though no per-VM attribute is set: PRIVATE is read from the file.
        assert_eq!(map.counts, [1023, 0, 1, 0]);
        // The first 1G folio is whole; the second split to 2M, one 2M folio to 4K pages.
        assert_eq!(map.folio_cells, [1, 511, 512]);
        let cell = |gpa: u64| {
            let i = (gpa / M2) as usize;
            map.rows[i / map.cols].cells[i % map.cols]
        };
        assert_eq!(cell(0).folio, Some(Level::G1));
        assert_eq!(cell(G1).folio, Some(Level::M2));
        assert_eq!(
            (cell(G1 + 4 * M2).kind, cell(G1 + 4 * M2).folio),
            (CellKind::Mixed, Some(Level::K4))
        );
        assert!(map
            .cell_summary()
            .ends_with("by smallest folio: 512 1G, 511 2M, 1 4K"));
        let svg = map.to_svg("folios");
        assert!(svg.contains("(1G folio)") && svg.contains("(split to 4K pages)"));
        // The slot's report follows the folios: 1 GiB at 1G, the rest at 2M but one 2M page.
        let e = t.eligibility(0).unwrap();
        assert_eq!([e.bytes_1g, e.bytes_2m, e.bytes_4k], [G1, G1 - M2, M2]);
    }

    fn guest() -> Tracker {
        let mut t = Tracker::new();
        let flags = SlotFlags {
            guest_memfd: true,
            ..Default::default()
        };
        t.set_user_memory_region(&MemoryRegion {
            slot: 0,
            gpa: cvmem::Gpa(0),
            size: 4 * G1,
            flags,
            ..Default::default()
        })
        .unwrap();
        t.set_memory_attributes(Gpa(0), 4 * G1, 8).unwrap();
        t.set_memory_attributes(Gpa(G1), M2, 0).unwrap(); // one shared 2M page
        t.set_memory_attributes(Gpa(2 * G1 + 4096), 4096, 0)
            .unwrap(); // one mixed 2M page
        t
    }

    #[test]
    fn cells_are_classified() {
        let m = build(&guest(), &MapOptions::default()).unwrap();
        assert_eq!(m.cell_bytes, M2);
        assert_eq!(m.rows.len(), 4);
        assert_eq!(m.counts, [2046, 1, 1, 0]);
        assert_eq!(m.outside, 0);
        assert_eq!(m.rows[1].cells[0].kind, CellKind::Shared);
        assert_eq!(m.rows[2].cells[0].kind, CellKind::Mixed);
        assert_eq!(m.slots[0].mixed_2m, 1);
        let svg = m.to_svg("test");
        assert!(svg.starts_with("<svg") && svg.contains("slot 0"));
    }

    #[test]
    fn the_png_is_the_svg_with_its_text() {
        use resvg::tiny_skia::Pixmap;
        let m = build(&guest(), &MapOptions::default()).unwrap();
        let svg = m.to_svg("a title");
        let png = Pixmap::decode_png(&svg_to_png(&svg).unwrap()).unwrap();
        let width: u32 = svg
            .split("width=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(png.width(), width);
        let mut fonts = resvg::usvg::fontdb::Database::new();
        fonts.load_system_fonts();
        if fonts.is_empty() {
            eprintln!("skipped the text check: this system has no fonts");
            return;
        }
        // The title line (y 8..24) is drawn: dark pixels where the bare grid had none.
        let dark = (8..24)
            .flat_map(|y| (0..200).map(move |x| (x, y)))
            .filter(|&(x, y)| png.pixel(x, y).is_some_and(|p| p.red() < 128))
            .count();
        assert!(dark > 50, "{dark} dark pixels in the title");
    }

    #[test]
    fn cells_outside_memslots_are_counted_apart() {
        let mut t = guest();
        t.set_user_memory_region(&cvmem::MemoryRegion {
            slot: 9,
            gpa: cvmem::Gpa(8 * G1),
            size: M2,
            ..Default::default()
        })
        .unwrap();
        let m = build(&t, &MapOptions::default()).unwrap();
        // Between the first slot's end (4G) and the last (8G + 2M): no memory, not shared.
        assert_eq!(m.outside, 4 * 512);
        assert_eq!(m.counts[1], 1 + 1, "the shared cell and the small slot");
        assert!(m.cell_summary().contains("2048 outside memslots"));
    }

    #[test]
    fn zoom_and_coarse_cells() {
        let t = guest();
        let zoom = MapOptions {
            from: Some(2 * G1),
            to: Some(2 * G1 + 8 * M2),
            cell_bytes: Some(4096),
            ..Default::default()
        };
        let m = build(&t, &zoom).unwrap();
        assert_eq!(m.counts[1], 1, "exactly one shared 4K cell");
        let coarse = MapOptions {
            cell_bytes: Some(G1),
            ..Default::default()
        };
        let m = build(&t, &coarse).unwrap();
        assert_eq!(
            m.rows[0].cells.iter().map(|c| c.kind).collect::<Vec<_>>(),
            [
                CellKind::Private,
                CellKind::Split,
                CellKind::Mixed,
                CellKind::Private
            ]
        );
        assert!(build(
            &t,
            &MapOptions {
                cell_bytes: Some(3000),
                ..Default::default()
            }
        )
        .is_err());
        assert!(build(
            &t,
            &MapOptions {
                from: Some(5),
                to: Some(5),
                ..Default::default()
            }
        )
        .is_err());
    }

    #[test]
    fn map_of_a_booted_guest() {
        use cvmem_designs::workloads::{generate, Params};
        let w = generate(
            "boot",
            &Params {
                guest_bytes: 8 << 30,
                ..Params::default()
            },
        )
        .unwrap();
        let mut vm = cvmem_oplog::Replayer::new();
        for op in &w.ops {
            vm.apply(op);
        }
        let m = build(vm.tracker(), &MapOptions::default()).unwrap();
        assert_eq!(m.cell_bytes, 2 << 20);
        assert!(
            m.counts[1] > 0 && m.counts[2] > 0,
            "shared and mixed cells: {:?}",
            m.counts
        );
        assert_eq!(m.slots.len(), 3);
        assert!(m.to_svg("boot").contains("slot 1"));
    }
}
