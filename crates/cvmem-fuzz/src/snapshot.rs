//! `snapshot_restore`: hostile snapshots, as JSON text or built record by record from the
//! bytes (the compact form: any serde format yields the same records). A restore never panics;
//! what it accepts snapshots back to exactly its input; its memory stays within a constant
//! times the snapshot's records, whatever the memslots it names.

use cvmem::snapshot::{InhibitRecord, RunRecord, SlotRecord};
use cvmem::{
    AttrMode, FileRecord, GmemBinding, GmemFlags, GmemId, GmemOffset, IndexRun, Level, MergePolicy,
    PageRefs, SlotFlags, Tracker, TrackerSnapshot, SNAPSHOT_VERSION,
};

use crate::input::Input;

/// Heap bytes a restored tracker may hold per record, plus a constant: a memslot is a few
/// dozen bytes, a run a few store entries, an inhibit 8 bytes (never a bitmap per slot).
const BYTES_PER_RECORD: usize = 1024;
const BYTES_BASE: usize = 64 << 10;

/// The fuzz target: the bytes as JSON if they parse as a snapshot, else as records.
pub fn snapshot_restore(data: &[u8]) {
    let snapshot = match serde_json::from_slice::<TrackerSnapshot>(data) {
        Ok(s) => s,
        Err(_) => from_records(data),
    };
    check(&snapshot);
}

fn check(s: &TrackerSnapshot) {
    let Ok(t) = Tracker::restore(s) else {
        return;
    };
    // A version 2 snapshot (no files) comes back as version 3, the same otherwise.
    let again = TrackerSnapshot {
        version: s.version,
        ..t.snapshot()
    };
    assert_eq!(&again, s, "a restore gives back its snapshot");
    assert!(s.version == SNAPSHOT_VERSION || (s.version == 2 && s.files.is_empty()));
    let file_records: usize = s
        .files
        .iter()
        .map(|f| 1 + f.private.len() + f.split_1g.len() + f.split_2m.len() + f.references.len())
        .sum();
    let records = s.memslots.len() + s.runs.len() + s.inhibited.len() + file_records;
    assert!(
        t.heap_bytes() <= BYTES_BASE + BYTES_PER_RECORD * records,
        "{} heap bytes for {records} records",
        t.heap_bytes()
    );
    // And through JSON, as a migration carries it.
    let json = serde_json::to_vec(s).expect("a snapshot serialises");
    let back: TrackerSnapshot = serde_json::from_slice(&json).expect("and parses back");
    assert_eq!(&back, s);
}

/// A snapshot decoded from bytes: mostly plausible records (sorted, aligned, large slots near
/// the limits), now and then wild values.
fn from_records(data: &[u8]) -> TrackerSnapshot {
    let mut input = Input::new(data);
    let level = |b: u8| [Level::K4, Level::M2, Level::G1][usize::from(b % 3)];
    let files: Vec<FileRecord> = (0..input.below(4)).map(|_| file(&mut input)).collect();
    let mut memslots = Vec::new();
    let mut gpa = 0u64;
    for id in 0..u32::from(input.below(8)) {
        let pages = match input.below(4) {
            0 => cvmem::MAX_SLOT_PAGES,
            1 => u64::from(input.u16()) << 9,
            2 => input.wild_u64() >> 12,
            _ => 1 + u64::from(input.u16()),
        };
        gpa = gpa.saturating_add(u64::from(input.u16()) << 21);
        memslots.push(SlotRecord {
            id: if input.flag() {
                id
            } else {
                u32::from(input.u16())
            },
            gpa: cvmem::Gpa(gpa),
            size: pages << 12,
            flags: SlotFlags {
                guest_memfd: input.flag(),
                dirty_log: input.below(8) == 0,
                readonly: input.below(8) == 0,
            },
            host_offset: u64::from(input.u16()) << 12 & ((1 << 30) - 1),
            backing: level(input.byte()),
            gmem: (!files.is_empty() && input.flag()).then(|| GmemBinding {
                gmem: GmemId(u32::from(input.below(4))),
                offset: GmemOffset(u64::from(input.u16()) << 12),
            }),
        });
        gpa = gpa.saturating_add(pages << 12);
    }
    let mut runs = Vec::new();
    let mut gfn = 0u64;
    for _ in 0..input.below(16) {
        let start = gfn.saturating_add(u64::from(input.u16()));
        let end = start.saturating_add(1 + u64::from(input.u16()));
        runs.push(RunRecord {
            start: cvmem::Gfn(start),
            end: cvmem::Gfn(end),
            attributes: if input.below(16) == 0 {
                input.wild_u64()
            } else {
                8
            },
        });
        gfn = end;
    }
    let mut inhibited = Vec::new();
    for _ in 0..input.below(16) {
        let level = if input.flag() { Level::M2 } else { Level::G1 };
        let base = memslots
            .get(usize::from(input.below(8)))
            .map_or(0, |s: &SlotRecord| s.gpa.gfn().0);
        let gfn = base.saturating_add(u64::from(input.u16()) << level.page_shift());
        inhibited.push(InhibitRecord {
            gfn: if input.below(16) == 0 {
                cvmem::Gfn(input.wild_u64())
            } else {
                cvmem::Gfn(gfn)
            },
            level,
        });
    }
    TrackerSnapshot {
        version: if input.below(32) == 0 {
            u32::from(input.byte())
        } else {
            SNAPSHOT_VERSION
        },
        supported_attributes: 8,
        gpa_bits: if input.flag() {
            64
        } else {
            40 + u32::from(input.below(13))
        },
        memslots,
        runs,
        inhibited,
        attr_mode: if input.flag() {
            AttrMode::PerGmem
        } else {
            AttrMode::PerVm
        },
        files,
    }
}

/// A guest_memfd record: mostly plausible runs (sorted, inside the file), now and then not.
fn file(input: &mut Input<'_>) -> FileRecord {
    let folio = [Level::K4, Level::M2, Level::G1][usize::from(input.below(3))];
    let folios = 1 + u64::from(input.below(8));
    let size = if input.below(16) == 0 {
        input.wild_u64() & !0xfff
    } else {
        folios * folio.size()
    };
    let pages = size >> 12;
    let runs = |input: &mut Input<'_>, end: u64| {
        let mut out = Vec::new();
        let mut at = 0u64;
        for _ in 0..input.below(6) {
            let start = at.saturating_add(u64::from(input.u16()) % end.max(1));
            let stop = start.saturating_add(1 + u64::from(input.u16()) % end.max(1));
            out.push(IndexRun { start, end: stop });
            at = stop.saturating_add(u64::from(input.flag()));
        }
        out
    };
    let private = runs(input, pages);
    let split_1g = runs(input, pages >> 18);
    let split_2m = runs(input, pages >> 9);
    let references = (0..input.below(4))
        .map(|i| PageRefs {
            page: u64::from(input.u16()).saturating_add(u64::from(i) << 16) % pages.max(1),
            count: u32::from(input.below(3)),
        })
        .collect();
    FileRecord {
        size,
        flags: GmemFlags {
            mmap: input.flag(),
            init_shared: input.flag(),
            folio,
        },
        merge: [
            MergePolicy::Never,
            MergePolicy::OnPunchHole,
            MergePolicy::Eager,
        ][usize::from(input.below(3))],
        private,
        split_1g,
        split_2m,
        references,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON seeds of the corpus: three restore (the huge slots within the memory bound; a
    /// per-gmem VM with its file, split folios and a pin), one is refused for its unknown field.
    #[test]
    fn the_json_seeds_restore_or_are_refused_as_meant() {
        let corpus = crate::corpus("snapshot_restore").unwrap();
        let seed = |name: &str| &corpus.iter().find(|(n, _)| n == name).unwrap().1;
        for name in ["boot-like.json", "huge-slots.json", "per-gmem.json"] {
            let s: TrackerSnapshot = serde_json::from_slice(seed(name)).unwrap();
            assert!(Tracker::restore(&s).is_ok(), "{name}");
            check(&s);
        }
        assert!(serde_json::from_slice::<TrackerSnapshot>(seed("unknown-field.json")).is_err());
    }
}
