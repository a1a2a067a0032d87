//! DMA mapping for VFIO-style users: an adapter that turns memory events into IOMMU map/unmap
//! calls without ever breaking IOMMU rules, and a recording fake IOMMU that enforces them.
//!
//! VFIO type1 maps IOVA ranges and refuses to unmap part of a mapping; overlapping maps fail.
//! Guests convert single 4K pages inside large shared buffers, so [`IommuListener`] keeps its
//! own table of mappings and, when a page inside a mapping becomes private, unmaps the whole
//! mapping and maps back the pieces that stay shared. IOVA = GPA (guest RAM mapped 1:1).

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use cvmem::Kind;

use crate::listener::{ConversionListener, ListenerError, MemoryEvent};

/// An IOMMU domain as VFIO exposes it.
pub trait DmaMap: Send {
    /// Maps `[iova, iova + size)` to host memory at `hva`.
    fn map(&mut self, iova: u64, size: u64, hva: u64) -> Result<(), String>;
    /// Unmaps `[iova, iova + size)`, which must be exactly one earlier mapping.
    fn unmap(&mut self, iova: u64, size: u64) -> Result<(), String>;
}

/// Counters of a [`RecordingIommu`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IommuStats {
    /// Successful maps.
    pub maps: u64,
    /// Successful unmaps.
    pub unmaps: u64,
    /// Rejected operations (each also recorded as a violation).
    pub violations: u64,
    /// Mappings now.
    pub mappings: u64,
    /// Bytes mapped now.
    pub mapped_bytes: u64,
}

/// A fake IOMMU that enforces VFIO's rules: no map overlapping a mapping, no unmap that is not
/// exactly one mapping. Every broken rule is recorded. It can be told to fail a map, to test
/// rollbacks.
#[derive(Debug, Default)]
pub struct RecordingIommu {
    /// iova → (end, hva)
    mappings: BTreeMap<u64, (u64, u64)>,
    stats: IommuStats,
    violations: Vec<String>,
    fail_map_in: Option<u64>,
}

impl RecordingIommu {
    /// An empty IOMMU domain.
    pub fn new() -> Self {
        Self::default()
    }
    /// Makes the `n`-th next map (1 = the next one) fail once, as if the IOMMU ran out of memory.
    pub fn fail_map_in(&mut self, n: u64) {
        self.fail_map_in = Some(n);
    }
    /// The counters.
    pub fn stats(&self) -> IommuStats {
        self.stats
    }
    /// The broken rules, in order.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }
    /// The mapped IOVA ranges `(start, end)` in order, with adjacent ones merged.
    pub fn mapped(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (&start, &(end, _)) in &self.mappings {
            match out.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                _ => out.push((start, end)),
            }
        }
        out
    }
    fn violation(&mut self, what: String) -> Result<(), String> {
        self.stats.violations += 1;
        self.violations.push(what.clone());
        Err(what)
    }
}

impl DmaMap for RecordingIommu {
    fn map(&mut self, iova: u64, size: u64, hva: u64) -> Result<(), String> {
        let Some(end) = iova.checked_add(size).filter(|_| size > 0) else {
            return self.violation(format!(
                "map of empty or wrapping range {iova:#x}+{size:#x}"
            ));
        };
        if let Some(n) = self.fail_map_in.as_mut() {
            *n -= 1;
            if *n == 0 {
                self.fail_map_in = None;
                return Err(format!("injected failure mapping {iova:#x}+{size:#x}"));
            }
        }
        let before = self.mappings.range(..end).next_back();
        if let Some((&s, &(e, _))) = before {
            if e > iova {
                return self.violation(format!(
                    "map {iova:#x}..{end:#x} overlaps mapping {s:#x}..{e:#x}"
                ));
            }
        }
        self.mappings.insert(iova, (end, hva));
        self.stats.maps += 1;
        self.stats.mappings += 1;
        self.stats.mapped_bytes += size;
        Ok(())
    }

    fn unmap(&mut self, iova: u64, size: u64) -> Result<(), String> {
        match self.mappings.get(&iova) {
            Some(&(end, _)) if end.checked_sub(iova) == Some(size) => {
                self.mappings.remove(&iova);
                self.stats.unmaps += 1;
                self.stats.mappings -= 1;
                self.stats.mapped_bytes -= size;
                Ok(())
            }
            Some(&(end, _)) => self.violation(format!(
                "partial unmap {iova:#x}+{size:#x} of mapping {iova:#x}..{end:#x}"
            )),
            None => self.violation(format!("unmap {iova:#x}+{size:#x} of no mapping")),
        }
    }
}

/// One step the adapter took, to undo it if the event fails later.
#[derive(Clone, Copy, Debug)]
enum Step {
    Mapped { iova: u64, end: u64 },
    Unmapped { iova: u64, end: u64, hva: u64 },
}

#[derive(Debug)]
struct Table<D> {
    dma: D,
    /// iova → (end, hva): what this adapter has mapped.
    maps: BTreeMap<u64, (u64, u64)>,
    splits: u64,
}

/// A [`ConversionListener`] that keeps an IOMMU domain mapping exactly the shared guest memory.
///
/// Each event is applied atomically: if the IOMMU refuses a step, the steps already taken for
/// that event are undone before the error is returned.
#[derive(Debug)]
pub struct IommuListener<D: DmaMap> {
    name: String,
    table: Mutex<Table<D>>,
}

impl<D: DmaMap> IommuListener<D> {
    /// A listener driving `dma`.
    pub fn new(name: impl Into<String>, dma: D) -> Self {
        IommuListener {
            name: name.into(),
            table: Mutex::new(Table {
                dma,
                maps: BTreeMap::new(),
                splits: 0,
            }),
        }
    }

    /// Runs `f` on the IOMMU domain (to inspect a [`RecordingIommu`], or inject failures).
    pub fn with_dma<R>(&self, f: impl FnOnce(&mut D) -> R) -> R {
        let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut t.dma)
    }

    /// How many times a mapping had to be split because part of it became private.
    pub fn splits(&self) -> u64 {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .splits
    }

    /// What the adapter believes is mapped, merged, as `(start, end)` IOVAs.
    pub fn mapped(&self) -> Vec<(u64, u64)> {
        let t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (&s, &(e, _)) in &t.maps {
            match out.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => out.push((s, e)),
            }
        }
        out
    }
}

impl<D: DmaMap> Table<D> {
    fn map(&mut self, iova: u64, end: u64, hva: u64, steps: &mut Vec<Step>) -> Result<(), String> {
        self.dma.map(iova, end - iova, hva)?;
        self.maps.insert(iova, (end, hva));
        steps.push(Step::Mapped { iova, end });
        Ok(())
    }

    fn unmap(
        &mut self,
        iova: u64,
        end: u64,
        hva: u64,
        steps: &mut Vec<Step>,
    ) -> Result<(), String> {
        self.dma.unmap(iova, end - iova)?;
        self.maps.remove(&iova);
        steps.push(Step::Unmapped { iova, end, hva });
        Ok(())
    }

    /// Unmaps `[start, end)`, which must be wholly mapped, splitting mappings that reach out.
    fn unmap_range(&mut self, start: u64, end: u64, steps: &mut Vec<Step>) -> Result<(), String> {
        let hit: Vec<(u64, u64, u64)> = self
            .maps
            .range(..end)
            .rev()
            .take_while(|(_, &(e, _))| e > start)
            .map(|(&s, &(e, h))| (s, e, h))
            .collect();
        // The event must only name mapped memory: check coverage before touching anything.
        let mut covered = end;
        for &(s, e, _) in &hit {
            if e < covered {
                break;
            }
            covered = covered.min(s);
        }
        if covered > start {
            return Err(format!(
                "{start:#x}..{end:#x} became private but {start:#x}..{covered:#x} was not mapped shared"
            ));
        }
        for (s, e, hva) in hit.into_iter().rev() {
            self.unmap(s, e, hva, steps)?;
            if s < start {
                self.map(s, start, hva, steps)?;
                self.splits += 1;
            }
            if e > end {
                self.map(end, e, hva + (end - s), steps)?;
                self.splits += 1;
            }
        }
        Ok(())
    }

    fn undo(&mut self, steps: Vec<Step>) -> Result<(), String> {
        for step in steps.into_iter().rev() {
            match step {
                Step::Mapped { iova, end } => {
                    self.dma.unmap(iova, end - iova)?;
                    self.maps.remove(&iova);
                }
                Step::Unmapped { iova, end, hva } => {
                    self.dma.map(iova, end - iova, hva)?;
                    self.maps.insert(iova, (end, hva));
                }
            }
        }
        Ok(())
    }
}

impl<D: DmaMap> ConversionListener for IommuListener<D> {
    fn name(&self) -> &str {
        &self.name
    }

    fn notify(&self, event: &MemoryEvent<'_>) -> Result<(), ListenerError> {
        let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let mut steps = Vec::new();
        let mut result = Ok(());
        for r in event.ranges {
            let (start, end) = (r.gpa(), r.gpa() + r.size());
            result = match event.to {
                Kind::Shared => t.map(start, end, r.hva, &mut steps),
                Kind::Private => t.unmap_range(start, end, &mut steps),
            };
            if result.is_err() {
                break;
            }
        }
        result.map_err(|message| {
            let message = match t.undo(steps) {
                Ok(()) => message,
                Err(why) => format!("{message}; undo failed: {why}"),
            };
            ListenerError {
                listener: self.name.clone(),
                message,
            }
        })
    }
}

#[cfg(test)]
mod tests;
