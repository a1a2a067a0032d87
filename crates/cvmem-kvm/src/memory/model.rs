//! The TDP MMU model as an optional observer of a [`CvmMemory`](super::CvmMemory): with the
//! `mmu-model` feature and a memory made by `with_mmu`, every conversion and memslot change is
//! mirrored into a [`cvmem::mmu::Vm`] (zaps and splits at the invalidation, attributes at the
//! end), and guest accesses can be faulted through it. Without either, these calls do nothing
//! and cost nothing: a VMM needs only the tracker.

#[cfg(feature = "mmu-model")]
mod imp {
    use std::sync::{Mutex, MutexGuard, PoisonError};

    use cvmem::mmu::{Conversion, Vm};
    use cvmem::{AttrRequest, GfnRange, Kind, MemoryRegion, Result};

    use crate::memory::MmuConfig;

    /// The model, if this memory has one.
    #[derive(Debug, Default)]
    pub(crate) struct Model(Option<Mutex<Vm>>);

    /// A conversion the model has begun (its invalidation window).
    pub(crate) type Token = Option<Conversion>;

    impl Model {
        /// No model (a memory made without `with_mmu`).
        pub(crate) const fn none() -> Self {
            Model(None)
        }

        pub(crate) fn new(config: Option<MmuConfig>) -> Self {
            Model(config.map(|c| Mutex::new(Vm::new(c.layout, c.recovery))))
        }

        /// Runs `f` on the model, if there is one.
        pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Vm) -> R) -> Option<R> {
            self.0.as_ref().map(|m| f(&mut lock(m)))
        }

        pub(crate) fn begin(&self, request: AttrRequest) -> Result<Token> {
            self.with(|vm| vm.begin_conversion(request)).transpose()
        }

        pub(crate) fn end(&self, token: Token) -> Result<()> {
            match token {
                Some(t) => self
                    .with(|vm| vm.end_conversion(t).map(drop))
                    .unwrap_or(Ok(())),
                None => Ok(()),
            }
        }

        pub(crate) fn abort(&self, token: Token) -> Result<()> {
            match token {
                Some(t) => self.with(|vm| vm.abort_conversion(t)).unwrap_or(Ok(())),
                None => Ok(()),
            }
        }

        /// Stores the old attributes of every changed run back (a conversion each, as KVM).
        pub(crate) fn restore(&self, changed: &[(GfnRange, u64)]) -> Result<()> {
            self.with(|vm| {
                for &(range, old) in changed {
                    vm.convert(AttrRequest::new(range, Kind::from_attributes(old))?)?;
                }
                Ok(())
            })
            .unwrap_or(Ok(()))
        }

        pub(crate) fn set_user_memory_region(&self, region: &MemoryRegion) -> Result<()> {
            self.with(|vm| vm.set_user_memory_region(region).map(drop))
                .unwrap_or(Ok(()))
        }
    }

    fn lock(m: &Mutex<Vm>) -> MutexGuard<'_, Vm> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(not(feature = "mmu-model"))]
mod imp {
    use cvmem::{AttrRequest, GfnRange, MemoryRegion, Result};

    /// No model: the `mmu-model` feature is off.
    #[derive(Debug)]
    pub(crate) struct Model;

    /// Nothing to carry between the phases of a conversion.
    #[derive(Debug)]
    pub(crate) struct Token;

    impl Model {
        /// No model (the only one without the feature).
        pub(crate) const fn none() -> Self {
            Model
        }

        pub(crate) fn begin(&self, _: AttrRequest) -> Result<Token> {
            Ok(Token)
        }
        pub(crate) fn end(&self, _: Token) -> Result<()> {
            Ok(())
        }
        pub(crate) fn abort(&self, _: Token) -> Result<()> {
            Ok(())
        }
        pub(crate) fn restore(&self, _: &[(GfnRange, u64)]) -> Result<()> {
            Ok(())
        }
        pub(crate) fn set_user_memory_region(&self, _: &MemoryRegion) -> Result<()> {
            Ok(())
        }
    }
}

pub(crate) use imp::{Model, Token};
