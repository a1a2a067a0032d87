//! # cvmem-capi — cvmem for C VMMs
//!
//! The tracker (behind cvmem-sync's concurrent front: every function may be called from any
//! thread, and queries never block) and its fault-path query as a C API, in the shape QEMU's
//! `kvm_convert_memory()` would call it. The header `include/cvmem.h` is generated with
//! cbindgen (`tests/header.rs` keeps it current). `tests/c/qemu_convert.c` is the C test CI
//! builds and runs against the static library.
//!
//! Conventions:
//! - every function that can fail returns `0` or a negative errno (`-EINVAL`, `-EEXIST`,
//!   `-ENOENT`, `-ENOMEM`, `-E2BIG`, as KVM's ioctls would), and leaves the tracker unchanged
//!   on failure; `cvmem_last_error` gives the reason as text;
//! - null pointers are `-EINVAL`; a tracker handle that is not live (freed, or never made by
//!   `cvmem_tracker_new`) is `-EBADF`, detected without touching memory (see [`handles`]);
//!   no Rust panic crosses the boundary (one would be `-EFAULT`);
//! - functions that write through a caller's pointer are `unsafe` with a `# Safety` section:
//!   the pointer must be NULL or valid for that write;
//! - levels are KVM's `PG_LEVEL_*`: 1 = 4K, 2 = 2M, 3 = 1G;
//! - the shared library's SONAME is `libcvmem_capi.so.0` (`cvmem_version()` gives the crate
//!   version); trackers are saved and restored as JSON (`cvmem_snapshot`, `cvmem_tracker_restore`).
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void};
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};

use cvmem::{
    Access, Error, GfnRange, Gpa, Level, MapGpaRange, MaxLevel, MemoryRegion, SlotFlags, Tracker,
    PAGE_SHIFT,
};
use cvmem_sync::ConcurrentTracker;

pub mod handles;

/// The PRIVATE memory attribute (`KVM_MEMORY_ATTRIBUTE_PRIVATE`).
pub const CVMEM_ATTRIBUTE_PRIVATE: u64 = 1 << 3;
// A literal for cbindgen; the same bit as the core's.
const _: () = assert!(CVMEM_ATTRIBUTE_PRIVATE == cvmem::KVM_MEMORY_ATTRIBUTE_PRIVATE);
/// Memslot flag `KVM_MEM_LOG_DIRTY_PAGES`.
pub const CVMEM_MEM_LOG_DIRTY_PAGES: u32 = 1 << 0;
/// Memslot flag `KVM_MEM_READONLY`.
pub const CVMEM_MEM_READONLY: u32 = 1 << 1;
/// Memslot flag `KVM_MEM_GUEST_MEMFD`.
pub const CVMEM_MEM_GUEST_MEMFD: u32 = 1 << 2;
/// `-EFAULT`: a bug inside cvmem was caught at the boundary (nothing was changed).
const EFAULT: c_int = 14;
/// `-EINVAL`.
const EINVAL: c_int = 22;
/// `-EBADF`: not a live tracker handle.
const EBADF: c_int = 9;
/// `-E2BIG`: the caller's buffer is too small.
const E2BIG: c_int = 7;
/// `-ENOMEM`.
const ENOMEM: c_int = 12;

/// A tracker: memslots, memory attributes and large-page info of one VM. Opaque: a handle,
/// never dereferenced (see [`handles`]).
pub struct CvmemTracker {
    _opaque: [u8; 0],
}

/// One run of pages with the same attributes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CvmemRun {
    /// First byte.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// The attributes of every page in it (`CVMEM_ATTRIBUTE_PRIVATE` or 0).
    pub attributes: u64,
}

/// What the fault path may do for an access.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CvmemAnswerKind {
    /// Map the page at `level` at most.
    Map,
    /// No memslot holds the address.
    NoSlot,
    /// Exit to userspace with KVM_EXIT_MEMORY_FAULT for `fault_gpa`/`fault_size`.
    MemoryFault,
}

/// The fault path's answer for an access (`cvmem_max_mapping_level`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CvmemFaultAnswer {
    /// Which answer.
    pub kind: CvmemAnswerKind,
    /// For `MAP`: the largest level (1 = 4K, 2 = 2M, 3 = 1G); else 0.
    pub level: u8,
    /// For `MEMORY_FAULT`: the range KVM would report and whether the access was private.
    pub fault_gpa: u64,
    /// For `MEMORY_FAULT`: its size in bytes.
    pub fault_size: u64,
    /// For `MEMORY_FAULT`: the access was private.
    pub fault_private: bool,
}

/// A decoded, validated KVM_HC_MAP_GPA_RANGE (TDX MapGPA, SNP page state change).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CvmemMapGpaRequest {
    /// First byte.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// Make private (else shared).
    pub to_private: bool,
    /// The guest's page-size hint (1 = 4K, 2 = 2M, 3 = 1G): a hint only.
    pub hint_level: u8,
}

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

fn set_error(message: String) {
    LAST_ERROR.with(|e| *e.borrow_mut() = message);
}

/// `0` or the negative errno of `error`, remembering its text.
fn status(result: Result<(), Error>) -> c_int {
    match result {
        Ok(()) => 0,
        Err(e) => {
            set_error(e.to_string());
            -e.errno().code()
        }
    }
}

/// Runs `f`; a panic becomes `-EFAULT` instead of unwinding into C.
fn guarded(f: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        set_error("internal error in cvmem (a panic was caught at the C boundary)".into());
        -EFAULT
    })
}

fn null(what: &str) -> c_int {
    set_error(format!("{what} is NULL"));
    -EINVAL
}

const fn level_number(level: Level) -> u8 {
    match level {
        Level::K4 => 1,
        Level::M2 => 2,
        Level::G1 => 3,
    }
}

fn level_from(n: u8) -> Option<Level> {
    match n {
        1 => Some(Level::K4),
        2 => Some(Level::M2),
        3 => Some(Level::G1),
        _ => None,
    }
}

/// Runs `f` on the tracker behind `t`: `-EINVAL` for NULL, `-EBADF` for a handle that is not
/// live.
fn with_tracker(t: *const CvmemTracker, f: impl FnOnce(&ConcurrentTracker) -> c_int) -> c_int {
    guarded(|| match handles::get(t) {
        Ok(tracker) => f(&tracker),
        Err(handles::BadHandle::Null) => null("tracker"),
        Err(handles::BadHandle::Stale) => {
            set_error("not a live tracker handle (freed, or not from cvmem_tracker_new)".into());
            -EBADF
        }
    })
}

/// Writes `value` through `out`, or returns `-EINVAL` for a null pointer.
///
/// # Safety
/// `out` is NULL or valid for a write of a `T`.
unsafe fn put<T>(out: *mut T, value: T) -> c_int {
    // SAFETY: a non-null `out` points to a writable `T` (our caller's contract).
    match unsafe { out.as_mut() } {
        Some(slot) => {
            *slot = value;
            0
        }
        None => null("output pointer"),
    }
}

/// A new, empty tracker (no memslots, every page shared). Free it with `cvmem_tracker_free`.
/// Returns NULL only if memory ran out or 16,777,215 trackers are alive.
#[no_mangle]
pub extern "C" fn cvmem_tracker_new() -> *mut CvmemTracker {
    catch_unwind(|| handles::insert(ConcurrentTracker::new(Tracker::new())))
        .ok()
        .flatten()
        .unwrap_or(std::ptr::null_mut())
}

/// Frees a tracker made by `cvmem_tracker_new`: 0, or `-EBADF` for a handle that is not live
/// (freed already, or foreign). NULL is ignored (0). A call on the tracker still running in
/// another thread finishes on it; later calls with the handle get `-EBADF`.
#[no_mangle]
pub extern "C" fn cvmem_tracker_free(t: *mut CvmemTracker) -> c_int {
    guarded(|| match handles::remove(t) {
        Ok(()) | Err(handles::BadHandle::Null) => 0,
        Err(handles::BadHandle::Stale) => {
            set_error("cvmem_tracker_free: not a live tracker handle".into());
            -EBADF
        }
    })
}

/// KVM_SET_USER_MEMORY_REGION2: creates (new `slot`), deletes (`size` 0), moves or re-flags a
/// memslot, with KVM's rules. `flags` are `CVMEM_MEM_*`; `userspace_addr` is the host address
/// (its alignment against `gpa` limits huge mappings); `max_level` is the largest mapping the
/// host memory allows (1-3; 0: 1G).
#[no_mangle]
pub extern "C" fn cvmem_set_user_memory_region(
    t: *const CvmemTracker,
    slot: u32,
    flags: u32,
    gpa: u64,
    size: u64,
    userspace_addr: u64,
    max_level: u8,
) -> c_int {
    with_tracker(t, |t| {
        let known = CVMEM_MEM_LOG_DIRTY_PAGES | CVMEM_MEM_READONLY | CVMEM_MEM_GUEST_MEMFD;
        if flags & !known != 0 {
            return status(Err(Error::InvalidFlags {
                why: cvmem::FlagsFault::UnknownBits,
            }));
        }
        let backing = match max_level {
            0 => None,
            n => match level_from(n) {
                Some(level) => Some(level),
                None => {
                    set_error(format!("max_level {n} is not 0-3"));
                    return -EINVAL;
                }
            },
        };
        let region = MemoryRegion {
            gmem: None,
            slot,
            gpa: Gpa(gpa),
            size,
            flags: SlotFlags {
                guest_memfd: flags & CVMEM_MEM_GUEST_MEMFD != 0,
                dirty_log: flags & CVMEM_MEM_LOG_DIRTY_PAGES != 0,
                readonly: flags & CVMEM_MEM_READONLY != 0,
            },
            uaddr: Some(userspace_addr),
            backing,
        };
        status(t.set_user_memory_region(&region).map(drop))
    })
}

/// KVM_SET_MEMORY_ATTRIBUTES of `[gpa, gpa + size)`: `attributes` is 0 (shared) or
/// `CVMEM_ATTRIBUTE_PRIVATE`. Pages outside memslots are tracked too, as KVM does.
#[no_mangle]
pub extern "C" fn cvmem_set_memory_attributes(
    t: *const CvmemTracker,
    gpa: u64,
    size: u64,
    attributes: u64,
) -> c_int {
    with_tracker(t, |t| {
        status(
            t.set_memory_attributes(Gpa(gpa), size, attributes)
                .map(drop),
        )
    })
}

/// Decodes and validates a guest's KVM_HC_MAP_GPA_RANGE (`a0` gpa, `a1` pages, `a2`
/// attributes) into `*out`, without applying it.
///
/// # Safety
/// `out` is NULL (`-EINVAL`) or valid for a write of a `CvmemMapGpaRequest`.
#[no_mangle]
pub unsafe extern "C" fn cvmem_map_gpa_range_decode(
    gpa: u64,
    npages: u64,
    attributes: u64,
    out: *mut CvmemMapGpaRequest,
) -> c_int {
    guarded(|| match MapGpaRange::decode(gpa, npages, attributes) {
        // SAFETY: forwarded from our caller.
        Ok(r) => unsafe {
            put(
                out,
                CvmemMapGpaRequest {
                    gpa: r.gpa.0,
                    size: r.npages << PAGE_SHIFT,
                    to_private: r.private,
                    hint_level: level_number(r.hint),
                },
            )
        },
        Err(e) => status(Err(e)),
    })
}

/// Applies a guest's KVM_HC_MAP_GPA_RANGE: the status to return to the guest (0 or -errno).
/// Only memory inside memslots converts: a request to make private memory outside every
/// memslot is refused (-EINVAL), and the parts of a request to make memory shared that no
/// memslot holds are left alone, so a guest cannot grow the tracking beyond its memslots.
/// (`cvmem_set_memory_attributes`, the VMM's own call, keeps KVM's semantics.)
#[no_mangle]
pub extern "C" fn cvmem_map_gpa_range(
    t: *const CvmemTracker,
    gpa: u64,
    npages: u64,
    attributes: u64,
) -> c_int {
    with_tracker(t, |t| {
        let applied = MapGpaRange::decode(gpa, npages, attributes)
            .and_then(|r| t.guest_map_gpa_range(&r, |_| {}).map(drop));
        status(applied)
    })
}

/// The fault path's question: the largest level an access (`is_private`: private, else
/// shared) at `gpa` may be mapped at, no slot, or a memory fault. Never blocks.
///
/// # Safety
/// `out` is NULL (`-EINVAL`) or valid for a write of a `CvmemFaultAnswer`.
#[no_mangle]
pub unsafe extern "C" fn cvmem_max_mapping_level(
    t: *const CvmemTracker,
    gpa: u64,
    is_private: bool,
    out: *mut CvmemFaultAnswer,
) -> c_int {
    with_tracker(t, |t| {
        let answer = match t.max_mapping_level(Gpa(gpa), Access::from_private(is_private)) {
            MaxLevel::Level(level) => CvmemFaultAnswer {
                kind: CvmemAnswerKind::Map,
                level: level_number(level),
                fault_gpa: 0,
                fault_size: 0,
                fault_private: false,
            },
            MaxLevel::NoSlot => CvmemFaultAnswer {
                kind: CvmemAnswerKind::NoSlot,
                level: 0,
                fault_gpa: 0,
                fault_size: 0,
                fault_private: false,
            },
            MaxLevel::MemoryFault(f) => CvmemFaultAnswer {
                kind: CvmemAnswerKind::MemoryFault,
                level: 0,
                fault_gpa: f.gpa.0,
                fault_size: f.size,
                fault_private: f.private,
            },
        };
        // SAFETY: forwarded from our caller.
        unsafe { put(out, answer) }
    })
}

/// Whether the page at `gpa` is private: 1, 0 (shared), or a negative errno (`-EINVAL` for
/// NULL, `-EBADF` for a handle that is not live) — never an answer that looks real.
#[no_mangle]
pub extern "C" fn cvmem_is_private(t: *const CvmemTracker, gpa: u64) -> c_int {
    with_tracker(t, |t| {
        c_int::from(t.read(|s| s.tracker().is_private(Gpa(gpa).gfn())))
    })
}

/// Calls `callback(opaque, &run)` for every run of equal attributes in `[gpa, gpa + size)`
/// (clipped to it), in address order. A non-zero return from the callback stops the walk and
/// is returned. Streams: runs are read 256 at a time, each batch from one committed state, into
/// one buffer for the whole walk (memory does not grow with the number of runs); the callback
/// runs outside the tracker's read side and may call any cvmem function. A conversion between
/// two batches can make two adjacent runs of equal attributes.
#[no_mangle]
pub extern "C" fn cvmem_for_each_run(
    t: *const CvmemTracker,
    gpa: u64,
    size: u64,
    callback: Option<extern "C" fn(opaque: *mut c_void, run: *const CvmemRun) -> c_int>,
    opaque: *mut c_void,
) -> c_int {
    let Some(callback) = callback else {
        return null("callback");
    };
    with_tracker(t, |t| {
        let range = t.read(|s| s.tracker().validate_attributes(Gpa(gpa), size, 0));
        let range: GfnRange = match range {
            Ok(r) => r.range(),
            Err(e) => return status(Err(e)),
        };
        let stopped = t.for_each_run(range, |r| {
            let run = CvmemRun {
                gpa: r.start.gpa().0,
                size: (r.end.0 - r.start.0) << PAGE_SHIFT,
                attributes: r.attributes,
            };
            match callback(opaque, &run) {
                0 => ControlFlow::Continue(()),
                stop => ControlFlow::Break(stop),
            }
        });
        stopped.unwrap_or(0)
    })
}

/// Heap bytes the tracker holds — its one attribute store and both copies of its memslot
/// table — or a negative errno (`-EINVAL` for NULL, `-EBADF` for a handle that is not live).
#[no_mangle]
pub extern "C" fn cvmem_heap_bytes(t: *const CvmemTracker) -> i64 {
    let mut bytes = 0i64;
    let status = with_tracker(t, |t| {
        bytes = t.heap_bytes() as i64;
        0
    });
    if status < 0 {
        i64::from(status)
    } else {
        bytes
    }
}

/// The version of this library (`major.minor.patch`), NUL-terminated, static.
#[no_mangle]
pub extern "C" fn cvmem_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Saves the tracker as JSON (a `cvmem::TrackerSnapshot`: memslots with host offsets, never host
/// addresses, private runs, GUEST_INHIBIT pages) into `buf`, NUL-terminated, and stores its
/// length (without the NUL) in `*len_out`. `-E2BIG` when `buf_len` is too small (then only
/// `*len_out` is written: call again with a larger buffer); `buf` may be NULL to ask the length.
///
/// # Safety
/// `buf` is NULL or valid for `buf_len` bytes of writes; `len_out` is NULL (`-EINVAL`) or valid
/// for a write of a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn cvmem_snapshot(
    t: *const CvmemTracker,
    buf: *mut c_char,
    buf_len: usize,
    len_out: *mut usize,
) -> c_int {
    if len_out.is_null() {
        return null("len_out");
    }
    with_tracker(t, |t| {
        let json = match serde_json::to_string(&t.read(|s| s.tracker().snapshot())) {
            Ok(json) => json,
            Err(e) => {
                set_error(format!("snapshot: {e}"));
                return -ENOMEM;
            }
        };
        // SAFETY: `len_out` is non-null and valid (the contract).
        unsafe { *len_out = json.len() };
        if buf.is_null() || buf_len <= json.len() {
            set_error(format!("snapshot: {} bytes needed", json.len() + 1));
            return -E2BIG;
        }
        // SAFETY: `buf` has `buf_len > json.len()` writable bytes (the contract), and our own
        // string does not overlap it.
        unsafe {
            std::ptr::copy_nonoverlapping(json.as_ptr().cast::<c_char>(), buf, json.len());
            *buf.add(json.len()) = 0;
        }
        0
    })
}

/// A new tracker in the state a JSON snapshot (from `cvmem_snapshot`) describes, into `*out`.
/// The snapshot is hostile input: time and memory are bounded by its `len` bytes, unknown
/// fields and states no tracker can reach are refused (`-EINVAL`, nothing made).
///
/// # Safety
/// `json` is valid for `len` bytes of reads (NULL: `-EINVAL`); `out` is NULL (`-EINVAL`) or
/// valid for a write of a pointer.
#[no_mangle]
pub unsafe extern "C" fn cvmem_tracker_restore(
    json: *const c_char,
    len: usize,
    out: *mut *mut CvmemTracker,
) -> c_int {
    if json.is_null() {
        return null("json");
    }
    if out.is_null() {
        return null("out");
    }
    guarded(|| {
        // SAFETY: `json` is valid for `len` bytes (the contract).
        let bytes = unsafe { std::slice::from_raw_parts(json.cast::<u8>(), len) };
        let snapshot: cvmem::TrackerSnapshot = match serde_json::from_slice(bytes) {
            Ok(s) => s,
            Err(e) => {
                set_error(format!("snapshot: {e}"));
                return -EINVAL;
            }
        };
        let tracker = match Tracker::restore(&snapshot) {
            Ok(t) => t,
            Err(e) => return status(Err(e)),
        };
        match handles::insert(ConcurrentTracker::new(tracker)) {
            // SAFETY: `out` is non-null and valid (the contract).
            Some(h) => unsafe { put(out, h) },
            None => {
                set_error("no room for another tracker".into());
                -ENOMEM
            }
        }
    })
}

/// Copies the text of this thread's last failure (NUL-terminated, truncated to `len`) into
/// `buf` and returns its full length in bytes (without the NUL); `buf` may be NULL to ask the
/// length.
///
/// # Safety
/// `buf` is NULL or points to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn cvmem_last_error(buf: *mut c_char, len: usize) -> usize {
    LAST_ERROR.with(|e| {
        let e = e.borrow();
        if !buf.is_null() && len > 0 {
            let n = e.len().min(len - 1);
            // SAFETY: `buf` has `len` writable bytes (the contract) and `n + 1 <= len`; the
            // source is our own string, which does not overlap it.
            unsafe {
                std::ptr::copy_nonoverlapping(e.as_ptr().cast::<c_char>(), buf, n);
                *buf.add(n) = 0;
            }
        }
        e.len()
    })
}
