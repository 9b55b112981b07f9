//! Typed calls from the host into a generation: the contract's values pass as they are, with
//! no encoding, through one indirect call.
//!
//! The host's second and last module with `unsafe` code (after the loader): calling an export's
//! erased function as the contract's typed function. It is sound because a call first compares
//! the export's types (as the plugin declared them, fingerprinted at load) with the contract's
//! (as the host was compiled with them), and refuses a mismatch with
//! [`CallError::TypeMismatch`].
//!
//! A value a plugin returns may own memory it allocated (an `RString`, an `RVec`), and such a
//! value frees itself through functions of the plugin's library. So it is handed out as
//! [`Returned`], which borrows the pinned generation and so keeps that library mapped; clone it
//! (abi_stable's clones allocate on the cloning side) to keep a value past the pin.

#![allow(unsafe_code)]

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use graft_api::contract::{CallWire, Contract};
use graft_api::ffi::Context;

use crate::decl::Signature;
use crate::error::CallError;
use crate::link::types_key;
use crate::live::generation::{Export, Generation};
use crate::types;

/// A typed handle on an export contract `C`, made once by
/// [`Host::typed_export`](crate::Host::typed_export) and used for every
/// [`Generation::call_typed`].
pub struct TypedExport<C> {
    export: Export,
    signature: Signature,
    /// [`types_key`] of `signature`, compared with the export's on every call.
    types: u64,
    _contract: PhantomData<fn() -> C>,
}

impl<C: Contract> TypedExport<C> {
    pub(crate) fn new(export: Export) -> Self {
        let signature = types::signature(&graft_api::contract::signature::<C>())
            .expect("a contract type the host was compiled with describes itself");
        Self {
            export,
            types: types_key(&signature),
            signature,
            _contract: PhantomData,
        }
    }

    /// The contract and its types.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The export handle (for a [`CallSite`](crate::CallSite), or an untyped call).
    pub fn export(&self) -> &Export {
        &self.export
    }
}

impl<C> Clone for TypedExport<C> {
    fn clone(&self) -> Self {
        Self {
            export: self.export.clone(),
            signature: self.signature.clone(),
            types: self.types,
            _contract: PhantomData,
        }
    }
}

impl<C> fmt::Debug for TypedExport<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TypedExport").field(&self.signature).finish()
    }
}

impl Generation {
    /// Calls export `C` with its typed input; returns its typed output. By-value contracts pass
    /// their values as they are; JSON ones are encoded and decoded here.
    ///
    /// # Errors
    ///
    /// [`CallError::NotExported`] if no plugin of this generation exports it,
    /// [`CallError::TypeMismatch`] if the export's types are not `C`'s, or
    /// [`CallError::Plugin`] if the plugin failed or panicked.
    #[inline]
    pub fn call_typed<C: Contract>(
        &self,
        export: &TypedExport<C>,
        input: C::In,
    ) -> Result<Returned<'_, C::Out>, CallError>
    where
        C::Wire: CallWire<C::In, C::Out>,
    {
        let Some((entry, table)) = self.entry(export.export.id) else {
            return Err(CallError::NotExported {
                contract: export.export.to_string(),
                generation: self.id(),
            });
        };
        if entry.types != export.types {
            return Err(self.mismatch(export));
        }
        let ctx = Context {
            table,
            plugin: entry.plugin,
        };
        // SAFETY: the export's types key equals `C`'s: the plugin declared this export with the
        // same wire and types of the same fingerprints, so `entry.func` is `C`'s typed function.
        match unsafe { <C::Wire as CallWire<C::In, C::Out>>::call(entry.func, &ctx, input) } {
            Ok(value) => Ok(Returned {
                value,
                _generation: PhantomData,
            }),
            Err(err) => Err(CallError::Plugin {
                contract: export.export.to_string(),
                generation: self.id(),
                kind: err.kind,
                message: err.message.into_string(),
            }),
        }
    }

    #[cold]
    fn mismatch<C>(&self, export: &TypedExport<C>) -> CallError {
        let found = self
            .plugins()
            .flat_map(|p| &p.exports)
            .find(|s| s.contract == export.signature.contract)
            .map(|s| {
                let difference = s.differences("the export", &export.signature, "the caller");
                format!("{} ({difference})", s.types())
            })
            .unwrap_or_default();
        CallError::TypeMismatch {
            contract: export.export.to_string(),
            generation: self.id(),
            expected: export.signature.types(),
            found,
        }
    }
}

/// A value returned by a typed call, valid while the generation that returned it is pinned.
///
/// It may own memory the plugin allocated, which it frees through the plugin's library: it
/// borrows the pin, so the library stays mapped while it lives. Read it through `Deref`; keep
/// it past the pin with [`Returned::cloned`] (a host-owned copy) or [`Returned::get`] (plain
/// `Copy` values, which own nothing).
pub struct Returned<'g, T> {
    value: T,
    _generation: PhantomData<&'g Generation>,
}

impl<T: Clone> Returned<'_, T> {
    /// A copy owned by the host: abi_stable's `RString` and `RVec` clone into the cloning
    /// side's allocation, and so does a struct of them deriving `Clone`.
    pub fn cloned(&self) -> T {
        self.value.clone()
    }
}

impl<T: Copy> Returned<'_, T> {
    /// The value: a `Copy` value owns no memory, so it outlives the pin.
    #[inline]
    pub fn get(self) -> T {
        self.value
    }
}

impl<T> Deref for Returned<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> DerefMut for Returned<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for Returned<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}
