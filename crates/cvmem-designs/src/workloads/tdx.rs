//! TDX-specific workloads: the published 4 GiB TD boot profile, and the firmware MMIO storm.

use cvmem::{Access, Gpa, Level, PAGE_SIZE};
use cvmem_oplog::Op;

use super::builder::{Builder, Via};
use super::guest::{boot_guest, LinuxGuest};
use super::Params;

const G: u64 = 1 << 30;
const M2: u64 = 2 << 20;

/// gfn ranges where the published TD accepted ~2,700 pages at 4K although 2M was possible.
pub const ACCEPT_4K_GFNS: [(u64, u64); 2] = [(0x806, 0xa00), (0x7e800, 0x7ea00)];
/// The gfn range of repeated private/shared flips in the published TD.
pub const FLIP_GFNS: (u64, u64) = (0x7d3ff, 0x7e7ff);
/// How often the hottest gfn flipped.
pub const HOT_FLIPS: u64 = 974;

/// `tdx-4g`: start-up, firmware and Linux boot conversions, ~2,700 4K private faults in the
/// published ranges, `flips` single-page flips across the hot range (one gfn flipped 974 times),
/// ~1,144 faults at login, the final sweep. Made for 4 GiB; larger guests keep the same
/// low-memory events.
pub fn profile_4g(p: &Params) -> Vec<Op> {
    let mut b = Builder::new(p);
    b.startup();
    let guest = LinuxGuest::plan(&b.layout, p.vcpus, &mut b.rng);
    boot_guest(&mut b, &guest, true);
    let mut accepts: Vec<u64> = ACCEPT_4K_GFNS.iter().flat_map(|&(s, e)| s..e).collect();
    while accepts.len() < 2700 {
        let i = b.rng.below(accepts.len() as u64) as usize;
        accepts.push(accepts[i]);
    }
    for gfn in accepts {
        b.access(gfn * PAGE_SIZE, Access::Private);
    }
    for gpa in hot_range_flips(&mut b, p.flips) {
        let private = !b.is_private(gpa);
        b.convert(gpa, PAGE_SIZE, private, Via::TdxMapGpa);
        b.fault(gpa);
    }
    for _ in 0..LOGIN_FAULTS {
        let gpa = b.random_ram_page();
        b.fault(gpa);
    }
    b.sweep();
    b.finish()
}

/// A TD boot's accepts, in the shape published for the 4 GiB TD (for the MMU model: `accept`
/// and `query` lines; run it with an MMU whose layout is split). In order:
/// - TD build: the firmware memslot's pages added at 4K (TDH.MEM.PAGE.ADD maps them at 4K and
///   they count as accepted), as `accept 4K`;
/// - firmware on vCPU0: every page of [`ACCEPT_4K_GFNS`] accepted at 4K (2M was possible);
/// - the firmware's MMIO window made shared;
/// - Linux accepting its memory lazily in 2 MiB units: every private 2M page of RAM the
///   firmware did not accept, `accept 2M`;
/// - the boot's shared ranges, each faulted;
/// - `flips` single-page flips across the hot range ([`FLIP_GFNS`], one gfn [`HOT_FLIPS`]
///   times), each flip to private accepted again at 4K (TDX accept tries 1G, 2M, then 4K);
/// - 1,144 faults at login.
pub fn boot_accepts(p: &Params) -> Vec<Op> {
    let mut b = Builder::new(p);
    b.startup();
    let fw = b.layout.firmware;
    for gpa in (fw.gpa..fw.end()).step_by(PAGE_SIZE as usize) {
        b.push(Op::Accept {
            gpa: cvmem::Gpa(gpa),
            level: Level::K4,
        });
    }
    for &(lo, hi) in &ACCEPT_4K_GFNS {
        for gfn in lo..hi {
            b.push(Op::Accept {
                gpa: Gpa(gfn * PAGE_SIZE),
                level: Level::K4,
            });
        }
    }
    let guest = LinuxGuest::plan(&b.layout, p.vcpus, &mut b.rng);
    let (mmio, mmio_size) = super::guest::MMIO_WINDOW;
    b.convert(mmio, mmio_size, false, Via::TdxMapGpa);
    let by_firmware = |gpa: u64| {
        let m2 = (gpa / PAGE_SIZE) >> 9;
        ACCEPT_4K_GFNS
            .iter()
            .any(|&(lo, hi)| lo >> 9 <= m2 && m2 <= (hi - 1) >> 9)
    };
    let ram: Vec<(u64, u64)> = b.layout.ram.iter().map(|s| (s.gpa, s.end())).collect();
    for (start, end) in ram {
        for gpa in (start..end).step_by(M2 as usize) {
            if !by_firmware(gpa) && b.is_private(gpa) {
                b.push(Op::Accept {
                    gpa: cvmem::Gpa(gpa),
                    level: Level::M2,
                });
            }
        }
    }
    boot_guest(&mut b, &guest, false);
    for gpa in hot_range_flips(&mut b, p.flips) {
        let private = !b.is_private(gpa);
        b.convert(gpa, PAGE_SIZE, private, Via::TdxMapGpa);
        if private {
            b.push(Op::Accept {
                gpa: cvmem::Gpa(gpa),
                level: Level::K4,
            });
        }
        b.fault(gpa);
    }
    for _ in 0..LOGIN_FAULTS {
        let gpa = b.random_ram_page();
        b.fault(gpa);
    }
    b.finish()
}

/// The pages `flips` single-page flips hit across [`FLIP_GFNS`]: one hot gfn [`HOT_FLIPS`]
/// times, evenly spread, the others uniformly.
fn hot_range_flips(b: &mut Builder, flips: u64) -> Vec<u64> {
    let (lo, hi) = FLIP_GFNS;
    let hot = b.rng.range(lo, hi);
    let hot_every = (flips / HOT_FLIPS).max(1);
    (0..flips)
        .map(|i| {
            let gfn = if i % hot_every == 0 && i / hot_every < HOT_FLIPS {
                hot
            } else {
                b.rng.range(lo, hi)
            };
            gfn * PAGE_SIZE
        })
        .collect()
}

/// Faults at login in the published boot (its ~1,144 2M mappings).
pub const LOGIN_FAULTS: u64 = 1144;

/// `mmio-storm`: start-up, then the firmware makes a 64-bit MMIO aperture above RAM (as large as
/// RAM, 64 GiB … 2 TiB) shared with one MapGPA that KVM splits into 2 MiB exits — up to a million
/// of them; the final sweep.
pub fn mmio_storm(p: &Params) -> Vec<Op> {
    let mut b = Builder::new(p);
    b.startup();
    let base = b.layout.ram_end().next_multiple_of(G);
    let size = p.guest_bytes.clamp(64 * G, 2 << 40);
    b.convert(base, size, false, Via::TdxMapGpa);
    b.sweep();
    b.finish()
}
