//! Calling async exports: the host's side of `json async fn` contracts (one of the host's
//! modules with `unsafe` code).
//!
//! An async export returns a future (async-ffi's `FfiFuture`) that the caller's runtime polls.
//! The future may hold the export's [`Context`], which points into the generation's link
//! table; [`OwnedPin::call_async`] lends it the pin's generation for as long as the returned
//! future lives, so the generation (its table and its libraries) outlives every poll and the
//! final drop. The pin counts in flight the whole time, as a synchronous call's does.

#![allow(unsafe_code)]

use abi_stable::std_types::{RResult, RVec};
use graft_api::ffi::{AsyncJsonFn, Context, ErasedFn};

use crate::error::CallError;
use crate::generation::Export;
use crate::pin::OwnedPin;

impl OwnedPin {
    /// Calls an export with JSON and awaits its output: an async export's future is polled by
    /// the caller's runtime, holding no thread while it waits; a synchronous export runs
    /// inline (use [`Generation::call_raw`](crate::Generation::call_raw) on a blocking thread
    /// for those that block).
    ///
    /// # Errors
    ///
    /// As [`Generation::call_raw`](crate::Generation::call_raw).
    pub async fn call_async(&self, export: &Export, input: Vec<u8>) -> Result<Vec<u8>, CallError> {
        let Some((entry, table)) = self.entry(export.id) else {
            return Err(CallError::NotExported {
                contract: export.to_string(),
                generation: self.id(),
            });
        };
        if !entry.is_async {
            return self.call_raw(export, &input);
        }
        // SAFETY: the future below borrows `self`, an owned pin of the generation that owns
        // `table`: the table outlives the future and everything the future holds of it, so the
        // context may say `'static` to the plugin, whose future keeps it.
        let table = unsafe { &*std::ptr::from_ref(table) };
        let ctx = Context {
            table,
            plugin: entry.plugin,
        };
        // SAFETY: `is_async` is set only for an export whose signature's wire is `ASYNC_JSON`,
        // which the plugin side declares with an `AsyncJsonFn` (`graft_api::asynchronous`).
        let func = unsafe { std::mem::transmute::<ErasedFn, AsyncJsonFn>(entry.func) };
        match func(ctx, RVec::from(input)).await {
            RResult::ROk(output) => Ok(output.into_vec()),
            RResult::RErr(err) => Err(CallError::Plugin {
                contract: export.to_string(),
                generation: self.id(),
                kind: err.kind,
                message: err.message.into_string(),
            }),
        }
    }
}
