//! Builds an op-log while keeping the VM state it produces (a core [`Replayer`]), so that the
//! generators can fault pages with the access kind the guest would use, and sweep the final state.

use cvmem::{Access, Gpa, PAGE_SIZE};
use cvmem_oplog::Op;
use cvmem_oplog::Replayer;

use super::layout::Layout;
use super::rng::Rng;
use super::Params;

const M2: u64 = 2 << 20;

/// How a conversion reaches the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The VMM calls KVM_SET_MEMORY_ATTRIBUTES itself (start-up, implicit conversions).
    Attrs,
    /// A TDX guest's MapGPA: KVM splits it into 2 MiB pieces, one KVM_HC_MAP_GPA_RANGE exit each.
    TdxMapGpa,
    /// One KVM_HC_MAP_GPA_RANGE exit with this page-size hint (0 4K, 1 2M, 2 1G).
    MapGpa(u64),
}

/// An op-log under construction.
pub struct Builder {
    /// The operations so far.
    pub ops: Vec<Op>,
    /// The guest's memory layout.
    pub layout: Layout,
    /// The random source.
    pub rng: Rng,
    /// The parameters.
    pub params: Params,
    vm: Replayer,
}

impl Builder {
    /// An empty op-log for `params`.
    pub fn new(params: &Params) -> Self {
        Builder {
            ops: Vec::new(),
            layout: Layout::new(params.guest_bytes),
            rng: Rng::new(params.seed),
            params: *params,
            vm: Replayer::new(),
        }
    }

    /// Appends `op` (and applies it to the builder's own VM).
    pub fn push(&mut self, op: Op) {
        self.vm.apply(&op);
        self.ops.push(op);
    }

    /// QEMU start-up: the memslots, then every guest-memfd slot set private.
    pub fn startup(&mut self) {
        for op in self.layout.memslot_ops() {
            self.push(op);
        }
        let mut slots = self.layout.ram.clone();
        slots.push(self.layout.firmware);
        slots.sort_by_key(|s| s.gpa);
        for s in slots {
            self.convert(s.gpa, s.size, true, Via::Attrs);
        }
    }

    /// Converts `[gpa, gpa + size)` to private or shared.
    pub fn convert(&mut self, gpa: u64, size: u64, private: bool, via: Via) {
        if size == 0 {
            return;
        }
        let enc = if private { 0x10 } else { 0 };
        match via {
            Via::Attrs => self.push(Op::Attrs {
                gpa: cvmem::Gpa(gpa),
                size,
                attributes: if private { 8 } else { 0 },
            }),
            Via::TdxMapGpa => {
                let mut at = gpa;
                while at < gpa + size {
                    let len = (gpa + size - at).min(M2);
                    self.push(Op::MapGpa {
                        gpa: at,
                        npages: len / PAGE_SIZE,
                        flags: enc,
                    });
                    at += len;
                }
            }
            Via::MapGpa(hint) => self.push(Op::MapGpa {
                gpa,
                npages: size / PAGE_SIZE,
                flags: enc | hint,
            }),
        }
    }

    /// Whether the page at `gpa` is private now.
    pub fn is_private(&self, gpa: u64) -> bool {
        self.vm.tracker().is_private(cvmem::Gpa(gpa).gfn())
    }

    /// A guest access to `gpa` of the kind the page has (the fault path's common case).
    pub fn fault(&mut self, gpa: u64) {
        let access = Access::from_private(self.is_private(gpa));
        self.push(Op::Query {
            gpa: Gpa(gpa & !(PAGE_SIZE - 1)),
            access,
        });
    }

    /// A guest access of kind `access` (a mismatch gives `memory-fault`).
    pub fn access(&mut self, gpa: u64, access: Access) {
        self.push(Op::Query {
            gpa: Gpa(gpa & !(PAGE_SIZE - 1)),
            access,
        });
    }

    /// A uniformly random page-aligned RAM address.
    pub fn random_ram_page(&mut self) -> u64 {
        let pages = self.layout.ram_bytes() / PAGE_SIZE;
        let p = self.rng.below(pages);
        self.layout.ram_at(p * PAGE_SIZE)
    }

    /// A random page-aligned range of `size` bytes (aligned to `align`) that lies in one RAM
    /// memslot and is wholly private now — memory the guest's page allocator could hand out
    /// for a buffer to convert. `None` after 64 unlucky tries.
    pub fn random_private_range(&mut self, size: u64, align: u64) -> Option<u64> {
        for _ in 0..64 {
            let gpa = self.random_ram_page() & !(align.max(PAGE_SIZE) - 1);
            let in_slot = self
                .layout
                .ram
                .iter()
                .any(|s| s.gpa <= gpa && gpa + size <= s.end());
            let range = cvmem::GfnRange::covering(cvmem::Gpa(gpa), size);
            if in_slot && self.vm.tracker().range_has_attributes(range, 8, u64::MAX) {
                return Some(gpa);
            }
        }
        None
    }

    /// The final sweep: faults at every 2M page of RAM (a random page inside each), or at
    /// `params.queries` random 2M pages on larger guests; then both access kinds at the edges
    /// of every shared run inside RAM (at most a quarter of the budget).
    pub fn sweep(&mut self) {
        let budget = self.params.queries;
        let pages_2m = self.layout.ram_bytes() / M2;
        if pages_2m <= budget {
            for i in 0..pages_2m {
                let off = self.rng.below(512) * PAGE_SIZE;
                let gpa = self.layout.ram_at(i * M2) + off;
                self.fault(gpa);
            }
        } else {
            for _ in 0..budget {
                let i = self.rng.below(pages_2m);
                let off = self.rng.below(512) * PAGE_SIZE;
                let gpa = self.layout.ram_at(i * M2) + off;
                self.fault(gpa);
            }
        }
        let mut edges: Vec<u64> = Vec::new();
        let ram: Vec<(u64, u64)> = self.layout.ram.iter().map(|s| (s.gpa, s.end())).collect();
        let tracker = self.vm.tracker();
        for (start, end) in ram {
            if edges.len() as u64 >= budget / 4 {
                break;
            }
            let range = cvmem::GfnRange::covering(cvmem::Gpa(start), end - start);
            for run in tracker.runs(range).filter(|r| r.attributes == 0) {
                edges.push(run.start.gpa().0);
                edges.push(run.end.gpa().0 - PAGE_SIZE);
                if edges.len() as u64 >= budget / 4 {
                    break;
                }
            }
        }
        for gpa in edges {
            self.access(gpa, Access::Shared);
            self.access(gpa, Access::Private);
        }
    }

    /// The finished op-log.
    pub fn finish(self) -> Vec<Op> {
        self.ops
    }
}
