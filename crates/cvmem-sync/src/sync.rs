//! The few synchronisation primitives the crate uses: std's, or loom's under `--cfg loom` so the
//! model tests check the real code.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, AtomicUsize};
#[cfg(loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, AtomicUsize};
#[cfg(not(loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

/// The lock of each left-right copy: crossbeam's sharded reader-writer lock, so that readers on
/// different threads lock different words (with one word shared, two threads reading at once
/// paid 2.3-4.3× the bare tracker's read for the cache line moving between them: the
/// `front_ratio` bench); a writer locks every shard. Under loom, loom's `RwLock` (crossbeam's
/// is not modelled).
#[cfg(not(loom))]
pub(crate) use crossbeam_utils::sync::{
    ShardedLock as CopyLock, ShardedLockReadGuard as CopyReadGuard,
    ShardedLockWriteGuard as CopyWriteGuard,
};
/// See the `not(loom)` item.
#[cfg(loom)]
pub(crate) use loom::sync::{
    RwLock as CopyLock, RwLockReadGuard as CopyReadGuard, RwLockWriteGuard as CopyWriteGuard,
};

pub(crate) use std::sync::atomic::Ordering;
pub(crate) use std::sync::{PoisonError, TryLockError};

/// Called by a reader before it tries again: a CPU hint under std, a scheduling point under
/// loom (which must see every retry loop yield).
#[inline]
pub(crate) fn retry_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// Called by a thread waiting for others, for the `polls`-th time — a writer for readers to
/// leave a copy, a reader for writes to pause: spins a little, then yields the CPU (readers
/// hold a copy for the length of one lookup, writers store for the length of one change).
#[inline]
pub(crate) fn wait_hint(polls: u32) {
    #[cfg(loom)]
    {
        let _ = polls;
        loom::thread::yield_now();
    }
    #[cfg(not(loom))]
    if polls < 100 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// A box set once and read with one load: `once_cell`'s, or under loom the same behind a loom
/// flag, so that the model sees a reader's load of the boxed atomics ordered after their
/// creation (it cannot see `once_cell`'s own atomics).
#[cfg(not(loom))]
pub(crate) use once_cell::race::OnceBox;

/// See the `not(loom)` item.
#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct OnceBox<T> {
    ready: loom::sync::atomic::AtomicBool,
    inner: once_cell::race::OnceBox<T>,
}

#[cfg(loom)]
impl<T> Default for OnceBox<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(loom)]
impl<T> OnceBox<T> {
    pub(crate) fn new() -> Self {
        OnceBox {
            ready: loom::sync::atomic::AtomicBool::new(false),
            inner: once_cell::race::OnceBox::new(),
        }
    }

    pub(crate) fn get(&self) -> Option<&T> {
        if self.ready.load(Ordering::Acquire) {
            self.inner.get()
        } else {
            None
        }
    }

    pub(crate) fn set(&self, value: Box<T>) -> Result<(), Box<T>> {
        self.inner.set(value)?;
        self.ready.store(true, Ordering::Release);
        Ok(())
    }
}
