//! Guest scripts: the commands the guest program interprets, the host's part of each sync
//! point, and a shadow model of guest memory from which every expected value is derived.
//!
//! The shadow model knows only the rules a workload states: every page starts shared and
//! zero; a page whose kind changes keeps or loses its bytes as its slot's [`Backing`] says
//! ([`Backing::keeps_contents`]); pages that already have the requested kind are untouched.

use std::collections::{BTreeMap, HashMap};

use cvmem::{Access, PAGE_SIZE};

use crate::abi::*;
use cvmem_kvm::Backing;

/// One command of the guest program (see `guest/guest.S`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Command {
    pub(crate) op: u64,
    pub(crate) gpa: u64,
    pub(crate) npages: u64,
    pub(crate) arg: u64,
    pub(crate) expect: u64,
}

impl Command {
    pub(crate) fn encode(&self) -> [u8; COMMAND_SIZE as usize] {
        let mut out = [0u8; COMMAND_SIZE as usize];
        for (i, v) in [self.op, self.gpa, self.npages, self.arg, self.expect]
            .iter()
            .enumerate()
        {
            out[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        out
    }
}

/// The host's part of a sync point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HostStep {
    /// Write the pattern into `npages` at `gpa` through the host mapping.
    Write { gpa: u64, npages: u64, pattern: u64 },
    /// Check `npages` at `gpa` against the pattern through the host mapping.
    Check { gpa: u64, npages: u64, pattern: u64 },
    /// KVM_SET_MEMORY_ATTRIBUTES on the VMM's initiative, expected to succeed.
    SetAttributes {
        gpa: u64,
        size: u64,
        attributes: u64,
    },
    /// Move a memslot (its contents go with it).
    MoveSlot { slot: u32, gpa: u64 },
    /// Turn dirty logging of a memslot on or off.
    DirtyLog { slot: u32, enabled: bool },
}

/// Shadow of one memslot: kind and contents of every page.
#[derive(Clone, Debug)]
struct ShadowSlot {
    gpa: u64,
    npages: u64,
    backing: Backing,
    /// One bit per page: private.
    private: Vec<u64>,
    /// Pattern of pages that are not zero.
    content: HashMap<u64, u64>,
}

impl ShadowSlot {
    fn is_private(&self, i: u64) -> bool {
        self.private[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    fn set_private(&mut self, i: u64, p: bool) {
        let w = &mut self.private[(i / 64) as usize];
        if p {
            *w |= 1 << (i % 64);
        } else {
            *w &= !(1 << (i % 64));
        }
    }
}

/// A script under construction, with its shadow.
#[derive(Clone, Debug, Default)]
pub(crate) struct Script {
    pub(crate) commands: Vec<Command>,
    pub(crate) host: BTreeMap<usize, Vec<HostStep>>,
    slots: Vec<ShadowSlot>,
    attributes_in_kvm: bool,
}

impl Script {
    pub(crate) fn new(attributes_in_kvm: bool) -> Self {
        Script {
            attributes_in_kvm,
            ..Default::default()
        }
    }

    /// Adds a memslot to the shadow.
    pub(crate) fn shadow_slot(&mut self, gpa: u64, size: u64, backing: Backing) {
        let npages = size / PAGE_SIZE;
        self.slots.push(ShadowSlot {
            gpa,
            npages,
            backing,
            private: vec![0; npages.div_ceil(64) as usize],
            content: HashMap::new(),
        });
    }

    fn push(&mut self, op: u64, gpa: u64, npages: u64, arg: u64, expect: u64) -> usize {
        self.commands.push(Command {
            op,
            gpa,
            npages,
            arg,
            expect,
        });
        self.commands.len() - 1
    }

    fn slot_of(&mut self, gpa: u64) -> Option<(&mut ShadowSlot, u64)> {
        self.slots
            .iter_mut()
            .find(|s| gpa >= s.gpa && (gpa - s.gpa) / PAGE_SIZE < s.npages)
            .map(|s| {
                let i = (gpa - s.gpa) / PAGE_SIZE;
                (s, i)
            })
    }

    fn pattern_at(&mut self, gpa: u64) -> u64 {
        match self.slot_of(gpa) {
            Some((s, i)) => s.content.get(&i).copied().unwrap_or(0),
            None => 0,
        }
    }

    /// Moves the shadow slot at `from` to `to`, with its contents. Attributes are per gfn, and
    /// the shadow keeps them per slot: only a slot whose pages are all shared may move, to
    /// gfns that are all shared (the workloads move anonymous slots they never convert).
    ///
    /// The bytes stay what they were: `pattern ^ old address`. Both addresses must be aligned
    /// to a power of two at least the slot's size, so that `old ^ new` is the same for every
    /// byte and the page's pattern becomes `pattern ^ from ^ to`.
    pub(crate) fn shadow_move(&mut self, from: u64, to: u64) {
        if let Some(s) = self.slots.iter_mut().find(|s| s.gpa == from) {
            let align = (s.npages * PAGE_SIZE).next_power_of_two();
            debug_assert!(from % align == 0 && to % align == 0, "aligned moves only");
            debug_assert!(s.private.iter().all(|&w| w == 0), "only shared slots move");
            for p in s.content.values_mut() {
                *p ^= from ^ to;
            }
            s.content.retain(|_, p| *p != 0);
            s.gpa = to;
        }
    }

    /// Host: move the slot at `from` to `to` (expected to succeed).
    pub(crate) fn move_slot(&mut self, slot: u32, from: u64, to: u64) {
        self.host_step(HostStep::MoveSlot { slot, gpa: to });
        self.shadow_move(from, to);
    }

    /// Host: turn dirty logging of `slot` on or off (expected to succeed).
    pub(crate) fn dirty_log(&mut self, slot: u32, enabled: bool) {
        self.host_step(HostStep::DirtyLog { slot, enabled });
    }

    /// Applies a successful conversion of `[gpa, gpa + npages pages)` to the shadow.
    pub(crate) fn shadow_convert(&mut self, gpa: u64, npages: u64, to: Access) {
        let attrs_in_kvm = self.attributes_in_kvm;
        let end = gpa.saturating_add(npages.saturating_mul(PAGE_SIZE));
        for s in &mut self.slots {
            let s_end = s.gpa + s.npages * PAGE_SIZE;
            let (start, stop) = (gpa.max(s.gpa), end.min(s_end));
            if start >= stop {
                continue;
            }
            let (keep_private, keep_shared) = s.backing.keeps_contents(attrs_in_kvm);
            let keep = if to.is_private() {
                keep_private
            } else {
                keep_shared
            };
            for i in (start - s.gpa) / PAGE_SIZE..(stop - s.gpa) / PAGE_SIZE {
                if s.is_private(i) != to.is_private() {
                    s.set_private(i, to.is_private());
                    if !keep {
                        s.content.remove(&i);
                    }
                }
            }
        }
    }

    /// Whether the shadow holds the page at `gpa` as private (false outside shadow slots).
    #[cfg(test)]
    pub(crate) fn shadow_private(&mut self, gpa: u64) -> bool {
        self.slot_of(gpa).is_some_and(|(s, i)| s.is_private(i))
    }

    /// The shadow's private runs `(gpa, size)` inside slots, in address order.
    pub(crate) fn shadow_private_runs(&self) -> Vec<(u64, u64)> {
        let mut slots: Vec<&ShadowSlot> = self.slots.iter().collect();
        slots.sort_by_key(|s| s.gpa);
        let mut out: Vec<(u64, u64)> = Vec::new();
        for s in slots {
            for i in 0..s.npages {
                if !s.is_private(i) {
                    continue;
                }
                let gpa = s.gpa + i * PAGE_SIZE;
                match out.last_mut() {
                    Some(last) if last.0 + last.1 == gpa => last.1 += PAGE_SIZE,
                    _ => out.push((gpa, PAGE_SIZE)),
                }
            }
        }
        out
    }

    /// Guest: KVM_HC_MAP_GPA_RANGE through the transport; `expect` is the status.
    pub(crate) fn map(&mut self, gpa: u64, npages: u64, attrs: u64, expect: u64) {
        self.push(OP_MAP, gpa, npages, attrs, expect);
        if expect == 0 {
            let to =
                Access::from_private(attrs & cvmem::hypercall::KVM_MAP_GPA_RANGE_ENCRYPTED != 0);
            self.shadow_convert(gpa, npages, to);
        }
    }

    /// Guest: fill pages with a pattern.
    pub(crate) fn fill(&mut self, gpa: u64, npages: u64, pattern: u64) {
        self.push(OP_FILL, gpa, npages, pattern, 0);
        self.set_content(gpa, npages, pattern);
    }

    fn set_content(&mut self, gpa: u64, npages: u64, pattern: u64) {
        for k in 0..npages {
            if let Some((s, i)) = self.slot_of(gpa + k * PAGE_SIZE) {
                if pattern == 0 {
                    s.content.remove(&i);
                } else {
                    s.content.insert(i, pattern);
                }
            }
        }
    }

    /// Runs of equal expected pattern over `npages` at `gpa`.
    fn expected_runs(&mut self, gpa: u64, npages: u64) -> Vec<(u64, u64, u64)> {
        let mut runs: Vec<(u64, u64, u64)> = Vec::new();
        for k in 0..npages {
            let page = gpa + k * PAGE_SIZE;
            let p = self.pattern_at(page);
            match runs.last_mut() {
                Some(r) if r.2 == p && r.0 + r.1 * PAGE_SIZE == page => r.1 += 1,
                _ => runs.push((page, 1, p)),
            }
        }
        runs
    }

    /// Guest: check pages against what the shadow expects.
    pub(crate) fn check(&mut self, gpa: u64, npages: u64) {
        for (gpa, n, p) in self.expected_runs(gpa, npages) {
            self.push(OP_CHECK, gpa, n, p, 0);
        }
    }

    fn sync(&mut self, step: HostStep) {
        let i = self.push(OP_SYNC, 0, 0, 0, 0);
        self.host.entry(i).or_default().push(step);
    }

    /// Adds a host step to the last sync point, or a new one.
    pub(crate) fn host_step(&mut self, step: HostStep) {
        match self.commands.last() {
            Some(c) if c.op == OP_SYNC => {
                let i = self.commands.len() - 1;
                self.host.entry(i).or_default().push(step);
            }
            _ => self.sync(step),
        }
    }

    /// Host: write a pattern through the host mapping.
    pub(crate) fn host_write(&mut self, gpa: u64, npages: u64, pattern: u64) {
        self.host_step(HostStep::Write {
            gpa,
            npages,
            pattern,
        });
        self.set_content(gpa, npages, pattern);
    }

    /// Host: check pages through the host mapping against the shadow.
    pub(crate) fn host_check(&mut self, gpa: u64, npages: u64) {
        for (gpa, npages, pattern) in self.expected_runs(gpa, npages) {
            self.host_step(HostStep::Check {
                gpa,
                npages,
                pattern,
            });
        }
    }

    /// Host: check pages through the host mapping against `pattern` itself (what the host
    /// must see whatever the guest wrote elsewhere, e.g. zero where private writes went to a
    /// guest_memfd).
    pub(crate) fn host_expect(&mut self, gpa: u64, npages: u64, pattern: u64) {
        self.host_step(HostStep::Check {
            gpa,
            npages,
            pattern,
        });
    }

    /// Host: KVM_SET_MEMORY_ATTRIBUTES (VMM-initiated conversion) that is expected to succeed.
    pub(crate) fn vmm_set_attributes(&mut self, gpa: u64, size: u64, attributes: u64) {
        self.host_step(HostStep::SetAttributes {
            gpa,
            size,
            attributes,
        });
        let to = Access::from_private(attributes & cvmem::KVM_MEMORY_ATTRIBUTE_PRIVATE != 0);
        self.shadow_convert(gpa, size / PAGE_SIZE, to);
    }

    /// Guest: access pages as private or shared, announced through the fault probe; pages of
    /// the other kind are converted implicitly (the memory-fault path).
    pub(crate) fn access(&mut self, gpa: u64, npages: u64, private: bool) {
        self.push(OP_ACCESS, gpa, npages, u64::from(private), 0);
        self.shadow_convert(gpa, npages, Access::from_private(private));
    }

    /// Guest: `n` calibration exits.
    pub(crate) fn ping(&mut self, n: u64) {
        self.push(OP_PING, 0, n, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_discards_only_pages_that_change_kind() {
        let mut s = Script::new(false);
        s.shadow_slot(0x1000_0000, 16 * PAGE_SIZE, Backing::GuestMemfdInPlace);
        s.fill(0x1000_0000, 4, 0xaa);
        s.map(0x1000_0000, 2, 0x10, 0); // private: in place keeps
        assert_eq!(s.pattern_at(0x1000_0000), 0xaa);
        s.map(0x1000_0000, 4, 0, 0); // shared: the 2 private pages are punched, the others not
        assert_eq!(s.pattern_at(0x1000_0000), 0);
        assert_eq!(s.pattern_at(0x1000_1000), 0);
        assert_eq!(s.pattern_at(0x1000_2000), 0xaa);
        s.map(0x1000_0000, 1, 0x10, (libc::EINVAL as u64).wrapping_neg()); // refused: no change
        assert!(!s.shadow_private(0x1000_0000));
    }

    #[test]
    fn anonymous_backing_discards_on_private() {
        let mut s = Script::new(false);
        s.shadow_slot(0, 4 * PAGE_SIZE, Backing::Anonymous);
        s.fill(0, 2, 7);
        s.map(0, 1, 0x10, 0);
        assert_eq!((s.pattern_at(0), s.pattern_at(0x1000)), (0, 7));
        s.fill(0, 1, 9);
        s.map(0, 1, 0, 0);
        assert_eq!(s.pattern_at(0), 9);
        assert_eq!(s.shadow_private_runs(), vec![]);
    }

    #[test]
    fn checks_group_equal_patterns() {
        let mut s = Script::new(false);
        s.shadow_slot(0, 8 * PAGE_SIZE, Backing::Anonymous);
        s.fill(0, 3, 5);
        s.check(0, 8);
        let checks: Vec<_> = s.commands.iter().filter(|c| c.op == OP_CHECK).collect();
        assert_eq!(checks.len(), 2);
        assert_eq!((checks[0].npages, checks[0].arg), (3, 5));
        assert_eq!(
            (checks[1].gpa, checks[1].npages, checks[1].arg),
            (0x3000, 5, 0)
        );
    }
}
