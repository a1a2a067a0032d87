//! Left-right publication: two copies of a value, readers on the published one, the writer on
//! the other, every change applied twice.
//!
//! Readers never block and never wait for one another: a read loads the index of the published
//! copy, *tries* to read-lock it, and checks that it is still the published one; any failure
//! means a writer has published since the index was loaded, and the read starts again. The
//! writer (one at a time) applies a change to the copy no reader is sent to, publishes it, waits
//! for the readers still on the old copy to leave, and applies the same change there.
//!
//! A read returns the state of the copy that was published at its final check, so reads are
//! linearizable: a thread never sees an older state after a newer one, and never a state that
//! is not yet published.

use crate::sync::{
    retry_hint, wait_hint, AtomicUsize, CopyLock, CopyReadGuard, CopyWriteGuard, Mutex, MutexGuard,
    Ordering, PoisonError, TryLockError,
};

/// What one application of a change did to a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Apply<R> {
    /// The copy changed: publish it, then apply the change to the other copy.
    Changed(R),
    /// The copy is as it was (nothing to do, or the change was refused): nothing is published.
    Unchanged(R),
}

impl<R> Apply<R> {
    /// The value either way.
    pub fn value(self) -> R {
        match self {
            Apply::Changed(r) | Apply::Unchanged(r) => r,
        }
    }
}

/// A value shared by non-blocking readers and serialised writers; see the module docs. `W` is
/// data only writers use, kept under the writers' lock (one lock for both).
#[derive(Debug)]
pub struct LeftRight<T, W = ()> {
    copies: [CopyLock<T>; 2],
    /// Index of the copy readers are sent to.
    published: AtomicUsize,
    /// Serialises writers. `true` while the unpublished copy may differ from the published one
    /// (a change is half done, or a writer panicked): the next writer copies it over first.
    /// And the writers' own data.
    writer: Mutex<(bool, W)>,
}

impl<T: Clone> LeftRight<T> {
    /// Shares `value` (cloned once for the second copy).
    pub fn new(value: T) -> Self {
        Self::with_writer_data(value, ())
    }
}

impl<T: Clone, W> LeftRight<T, W> {
    /// Shares `value` (cloned once for the second copy), with `data` for writers only.
    pub fn with_writer_data(value: T, data: W) -> Self {
        LeftRight {
            copies: [CopyLock::new(value.clone()), CopyLock::new(value)],
            published: AtomicUsize::new(0),
            writer: Mutex::new((false, data)),
        }
    }

    /// Runs `f` on the published value. Never blocks: if a writer gets in the way, the read
    /// starts again on the copy it published (each retry means a writer published meanwhile).
    /// A long `f` delays the next writer, never another reader.
    #[inline]
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.read_guard())
    }

    #[inline]
    fn read_guard(&self) -> CopyReadGuard<'_, T> {
        loop {
            let i = self.published.load(Ordering::Acquire);
            let guard = match self.copies[i & 1].try_read() {
                // A lock's poison means a writer once panicked in that copy; the writers' flag
                // (`needs_sync`) says whether it is still to be repaired, and a copy a change
                // left half done is never the published one, which the check below asks.
                Ok(guard) => guard,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                // A writer holds or waits for this copy: it has published the other one.
                Err(TryLockError::WouldBlock) => {
                    retry_hint();
                    continue;
                }
            };
            // The copy may have been filled but not yet published, or be about to be replaced
            // (or be a half-done copy awaiting repair): only the published copy may be read.
            if self.published.load(Ordering::Acquire) == i {
                return guard;
            }
            drop(guard);
            retry_hint();
        }
    }

    /// Runs `f` holding the writers' lock if no writer holds it now (no writer can begin
    /// meanwhile); `None`, without running `f`, if one does. Never waits for a writer.
    pub fn if_writers_idle<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        let _idle = match self.writer.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        Some(f())
    }

    /// Takes the writer's lock (blocking other writers only). Not from inside [`read`](Self::read)
    /// on the same value, nor twice in one thread: the writer would wait for itself.
    pub fn writer(&self) -> Writer<'_, T, W> {
        self.writer_repairing(|_, _| ())
    }

    /// [`writer`](Self::writer), with `repair` run on the published value and the writers' data
    /// when the last change did not return (it panicked) and the unpublished copy is repaired
    /// first: writers' data derived from the value may be stale then. Off the common path.
    #[inline]
    pub fn writer_repairing(&self, repair: impl FnOnce(&T, &mut W)) -> Writer<'_, T, W> {
        let mut needs_sync = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if needs_sync.0 {
            self.repair(&mut needs_sync, repair);
        }
        Writer {
            lr: self,
            needs_sync,
        }
    }

    /// Copies the published value over the other copy, which a change left half done.
    #[cold]
    fn repair(&self, needs_sync: &mut (bool, W), repair: impl FnOnce(&T, &mut W)) {
        let published = self.published.load(Ordering::Relaxed);
        let mut stale = self.write_copy(1 - published);
        let current = self.read_guard();
        *stale = current.clone();
        repair(&current, &mut needs_sync.1);
        drop(current);
        drop(stale);
        needs_sync.0 = false;
    }

    /// Write-locks copy `i`, waiting for the readers still on it. The writer polls rather than
    /// sleeps in the lock: a sleeping writer would make the last reader out pay a wake-up
    /// system call, about a microsecond, on the fault path.
    fn write_copy(&self, i: usize) -> CopyWriteGuard<'_, T> {
        let mut polls = 0u32;
        loop {
            match self.copies[i].try_write() {
                Ok(guard) => return guard,
                // The flag in `writer` says whether the data needs repairing.
                Err(TryLockError::Poisoned(e)) => return e.into_inner(),
                Err(TryLockError::WouldBlock) => {
                    polls = polls.saturating_add(1);
                    wait_hint(polls);
                }
            }
        }
    }
}

/// The writer's lock on a [`LeftRight`]: while it lives, no other writer runs.
#[derive(Debug)]
pub struct Writer<'a, T, W = ()> {
    lr: &'a LeftRight<T, W>,
    needs_sync: MutexGuard<'a, (bool, W)>,
}

impl<T: Clone, W> Writer<'_, T, W> {
    /// The writers' own data.
    pub fn data(&mut self) -> &mut W {
        &mut self.needs_sync.1
    }

    /// Runs `f` on the current value (the published one; no change is in flight).
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        self.lr.read(f)
    }

    /// Applies `change` to the unpublished copy; if it reports [`Apply::Changed`], publishes
    /// that copy, waits for the readers of the other one to leave, and applies `change` to it
    /// too. `change` must do the same to equal copies; if the second application reports
    /// `Unchanged` (an allocation failed), the copy is replaced by a clone of the first.
    /// Returns what the first application returned.
    pub fn apply<R>(&mut self, change: impl FnMut(&mut T) -> Apply<R>) -> R {
        self.apply_publishing(change, |_| ())
    }

    /// [`apply`](Self::apply), with `publish` run on the changed copy just before readers are
    /// sent to it (not if nothing changed); what it returns is dropped just after.
    pub fn apply_publishing<R, G>(
        &mut self,
        mut change: impl FnMut(&mut T) -> Apply<R>,
        publish: impl FnOnce(&T) -> G,
    ) -> R {
        let lr = self.lr;
        let next = 1 - lr.published.load(Ordering::Relaxed);
        let mut copy = lr.write_copy(next);
        self.needs_sync.0 = true;
        let result = match change(&mut copy) {
            Apply::Unchanged(r) => {
                self.needs_sync.0 = false;
                return r;
            }
            Apply::Changed(r) => r,
        };
        let published = publish(&copy);
        drop(copy);
        lr.published.store(next, Ordering::Release);
        drop(published);
        let mut old = lr.write_copy(1 - next);
        if let Apply::Unchanged(_) = change(&mut old) {
            *old = lr.read_guard().clone();
        }
        drop(old);
        self.needs_sync.0 = false;
        result
    }
}
