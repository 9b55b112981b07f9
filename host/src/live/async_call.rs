//! Calling async exports: the host's side of `json async fn` contracts (one of the host's
//! modules with `unsafe` code).
//!
//! An async export returns a future (async-ffi's `FfiFuture`) that the caller's runtime polls.
//! The future may hold the export's [`Context`], which points into the generation's link
//! table, so the call holds the pin (borrowed by [`OwnedPin::call_async`], owned by
//! [`OwnedPin::into_call_async`]) for as long as the plugin's future lives: the generation (its
//! table and its libraries) outlives every poll and the final drop, which comes first when the
//! call is dropped before it is done (a deadline, a client gone).
//!
//! Work the plugin hands to the host's blocking pool while it is polled
//! (`graft_api::blocking`) runs plugin code on another thread, possibly after the call was
//! dropped: it takes a pin of its own, a clone of the polling call's ([`polling_pin`]), so the
//! library stays mapped until that work returns.

#![allow(unsafe_code)]

use std::borrow::Borrow;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use abi_stable::std_types::{RResult, RVec};
use graft_api::ffi::{AsyncJsonFn, Context, ErasedFn, FfiError, FfiFuture};

use crate::error::CallError;
use crate::live::generation::Export;
use crate::live::pin::OwnedPin;

thread_local! {
    /// The pin of the call whose plugin future this thread is polling, if any.
    static POLLING: Cell<*const OwnedPin> = const { Cell::new(std::ptr::null()) };
}

/// A clone of the pin of the call whose plugin future is being polled on this thread: what
/// blocking work handed to the host during that poll holds while it runs.
pub(crate) fn polling_pin() -> Option<OwnedPin> {
    let pin = POLLING.with(Cell::get);
    // SAFETY: `POLLING` is set only for the duration of a poll of a `PluginCall`, to the pin
    // that call holds (which outlives the poll), and reset before the poll returns; a non-null
    // pointer read on this thread is therefore a pin alive now.
    (!pin.is_null()).then(|| unsafe { &*pin }.clone())
}

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
        start(self, export, input).await
    }

    /// [`OwnedPin::call_async`], owning the pin: a `'static` future for a task of its own.
    /// Dropping it before it is done (at a deadline, or when its client went away) cancels the
    /// call: the plugin's future is dropped first, then the pin, so the generation is released
    /// at once (blocking work the plugin started holds a pin of its own until it returns).
    pub fn into_call_async(
        self,
        export: &Export,
        input: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, CallError>> + Send + 'static {
        start(self, export, input)
    }
}

type PluginFuture = FfiFuture<RResult<RVec<u8>, FfiError>>;

/// Starts the call of `export` in `pin`'s generation: a synchronous export (or a missing one)
/// is done at once, an async one's future is made, to be polled under `pin`.
fn start<P: Borrow<OwnedPin>>(pin: P, export: &Export, input: Vec<u8>) -> PluginCall<P> {
    let mut call = PluginCall {
        done: None,
        future: None,
        pin,
        export: export.clone(),
    };
    let generation = call.pin.borrow();
    let Some((entry, table)) = generation.entry(export.id) else {
        call.done = Some(Err(CallError::NotExported {
            contract: export.to_string(),
            generation: generation.id(),
        }));
        return call;
    };
    if !entry.is_async {
        call.done = Some(generation.call_raw(export, &input));
        return call;
    }
    // SAFETY: the future is polled and dropped only inside this `PluginCall`, which holds an
    // owned pin of the generation that owns `table` and drops the future before the pin: the
    // table outlives the future and everything it holds of it, so the context may say `'static`.
    let table = unsafe { &*std::ptr::from_ref(table) };
    let ctx = Context {
        table,
        plugin: entry.plugin,
    };
    // SAFETY: `is_async` is set only for an export whose signature's wire is `ASYNC_JSON`,
    // which the plugin side declares with an `AsyncJsonFn` (`graft_api::asynchronous`).
    let func = unsafe { std::mem::transmute::<ErasedFn, AsyncJsonFn>(entry.func) };
    call.future = Some(func(ctx, RVec::from(input)));
    call
}

/// A call with the pin it runs under: its result already (a synchronous export, or none), or
/// the plugin's future, which it polls with [`POLLING`] set and drops before the pin.
struct PluginCall<P: Borrow<OwnedPin>> {
    done: Option<Result<Vec<u8>, CallError>>,
    future: Option<PluginFuture>,
    pin: P,
    export: Export,
}

impl<P: Borrow<OwnedPin> + Unpin> Future for PluginCall<P> {
    type Output = Result<Vec<u8>, CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(done) = this.done.take() {
            return Poll::Ready(done);
        }
        let Some(future) = this.future.as_mut() else {
            return Poll::Pending;
        };
        let pin = this.pin.borrow();
        let result = match polling(pin, || Pin::new(future).poll(cx)) {
            Poll::Ready(result) => result,
            Poll::Pending => return Poll::Pending,
        };
        polling(pin, || this.future = None);
        Poll::Ready(match result {
            RResult::ROk(output) => Ok(output.into_vec()),
            RResult::RErr(err) => Err(CallError::Plugin {
                contract: this.export.to_string(),
                generation: pin.id(),
                kind: err.kind,
                message: err.message.into_string(),
            }),
        })
    }
}

/// Runs `f` (a poll or the drop of a plugin's future) with [`POLLING`] set to `pin`.
pub(crate) fn polling<T>(pin: &OwnedPin, f: impl FnOnce() -> T) -> T {
    let outer = POLLING.with(|polling| polling.replace(pin));
    let out = f();
    POLLING.with(|polling| polling.set(outer));
    out
}

impl<P: Borrow<OwnedPin>> Drop for PluginCall<P> {
    fn drop(&mut self) {
        // The plugin's future first (its drop runs plugin code), while the pin still holds the
        // generation; the pin drops after this, with the other fields.
        let future = self.future.take();
        polling(self.pin.borrow(), || drop(future));
    }
}
