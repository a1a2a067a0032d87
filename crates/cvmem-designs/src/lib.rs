//! # cvmem-designs — the design space, measured
//!
//! Which way of tracking private/shared memory per page size is best? This crate puts the
//! candidates behind one trait, [`Design`], feeds them the same workloads (generated from
//! published facts about how confidential guests convert memory, see [`workloads`]), checks that
//! they give the same answer to every fault-path query, and measures them ([`eval`]).
//!
//! | name | what |
//! |---|---|
//! | `linux` | Option D as merged: xarray with one entry per 4 KiB gfn + per-slot `disallow_lpage` ints ([`linux`]) |
//! | `option-a` | per-memslot arrays: 1 bit per 4K page, 2 bits per 2M and 1G page ([`option_a`]) |
//! | `option-b` | a spare SPTE bit MIXED; every page mapped in its tree (TDX-like split tables) ([`option_b`]) |
//! | `option-c` | a SHARED bit in leaf SPTEs + a 512-bit mixed bitmap per table (one tree) ([`option_c`]) |
//! | `bitmap` | 1 bit per 4K page per slot, eligibility by scanning ([`flat_bitmap`]) |
//! | `rangemap` | the `rangemap` crate + naive eligibility ([`range_map`]) |
//! | `roaring` | the `roaring` crate's compressed bitmap of private gfns + the same check ([`roaring_set`]) |
//! | `cvmem` | the core crate's [`cvmem::Tracker`]: adaptive attribute store, no per-slot arrays ([`core_tracker`]) |
//!
//! Measurement only: the designs are faithful in algorithm and memory accounting, not hardened.
//!
//! ```
//! use cvmem::{Access, Gpa, Level, MaxLevel, SlotFlags};
//! use cvmem_oplog::{Op, Outcome};
//! use cvmem_designs::{make_design, Vm};
//!
//! let mut vm = Vm::new(make_design("linux").unwrap());
//! let flags = SlotFlags { guest_memfd: true, ..Default::default() };
//! vm.apply(&Op::Memslot { slot: 0, gpa: Gpa(0), size: 4 << 30, flags, uaddr: None, backing: None, gmem: None });
//! assert_eq!(vm.apply(&Op::Attrs { gpa: Gpa(0), size: 4 << 30, attributes: 8 }), Outcome::Done);
//! let q = Op::Query { gpa: Gpa(1 << 30), access: Access::Private };
//! assert_eq!(vm.apply(&q), Outcome::Query(MaxLevel::Level(Level::G1)));
//! ```

#![deny(unsafe_code)]

pub mod bits;
pub mod core_tracker;
pub mod dense;
pub mod design;
pub mod eval;
pub mod flat_bitmap;
pub mod linux;
pub mod mapped;
pub mod meter;
pub mod option_a;
pub mod option_b;
pub mod option_c;
pub mod outside;
pub mod range_map;
pub mod roaring_set;
pub mod slots;
pub mod vm;
pub mod workloads;

pub use design::{answer, answer_code, answer_name, Design, Slot};
pub use vm::{Action, Rules, Vm};

/// The names of the designs [`make_design`] knows, in the order reports list them.
pub const DESIGNS: &[&str] = &[
    "linux", "option-a", "option-b", "option-c", "bitmap", "rangemap", "roaring", "cvmem",
];

/// A fresh, empty design by name.
pub fn make_design(name: &str) -> Option<Box<dyn Design>> {
    Some(match name {
        "linux" => Box::new(linux::Linux::new()),
        "option-a" => Box::new(option_a::OptionA::new()),
        "option-b" => Box::new(option_b::OptionB::new()),
        "option-c" => Box::new(option_c::OptionC::new()),
        "bitmap" => Box::new(flat_bitmap::FlatBitmap::new()),
        "rangemap" => Box::new(range_map::RangeMapDesign::new()),
        "roaring" => Box::new(roaring_set::RoaringDesign::new()),
        "cvmem" => Box::new(core_tracker::CvmemDesign::new()),
        _ => return None,
    })
}
