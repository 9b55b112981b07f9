//! Async exports and the host's async services.
//!
//! An export declared `json async fn(In) -> Out` in [`contract!`](macro@crate::contract) is an
//! `async fn` listed under `async_exports` in [`plugin!`](crate::plugin). Its future crosses to
//! the host as async-ffi's `FfiFuture` and is polled by the host's runtime, which keeps the
//! request's generation pinned until the future is done: a plugin waits without holding a
//! thread.
//!
//! A plugin waits on the host, never on a runtime of its own: [`sleep`] is the host's timer and
//! [`blocking`] runs synchronous work on the host's blocking pool. A plugin must not start a
//! tokio runtime (or use tokio's timers, sockets or `spawn`): its copy of tokio is not the
//! host's, has no reactor of the host's, and its threads would keep running plugin code, and
//! the library mapped, after the host let the plugin go.

#![allow(unsafe_code)]

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use abi_stable::std_types::{RResult, RVec};
use async_ffi::FutureExt as _;
use serde::{de::DeserializeOwned, Serialize};

use crate::contract::{signature, AsyncJson, Contract, Import};
use crate::error::Error;
use crate::ffi::{
    AsyncJsonFn, BlockingJob, Context, ErasedFn, ErrorKind, ExportDecl, FfiError, FfiFuture,
    HostApiRef,
};
use crate::runtime::panicked;

static HOST: OnceLock<HostApiRef> = OnceLock::new();

/// Keeps the host's services for this loaded image (from its initialiser).
pub(crate) fn install(host: HostApiRef) {
    let _ = HOST.set(host);
}

pub(crate) fn host() -> Result<HostApiRef, Error> {
    HOST.get().copied().ok_or_else(|| {
        Error::with_kind(ErrorKind::INTERNAL, "the host's services are not installed")
    })
}

fn missing(service: &str) -> Error {
    Error::with_kind(
        ErrorKind::INTERNAL,
        format!("the host offers no {service} (built against an older graft API)"),
    )
}

/// Waits `duration` on the host's timer, holding no thread.
///
/// # Errors
///
/// When the host has no timer here (the call is not polled by an async runtime).
pub async fn sleep(duration: Duration) -> Result<(), Error> {
    let sleep = host()?.sleep().ok_or_else(|| missing("timer"))?;
    let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    sleep(millis).await.into_result().map_err(Error::from_ffi)
}

/// Runs synchronous work (blocking I/O, long computation) on the host's blocking pool and
/// waits for it, holding no runtime thread.
///
/// # Errors
///
/// When `work` panics (the panic is caught), or the host could not run it.
pub async fn blocking<T, F>(work: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let run_blocking = host()?
        .run_blocking()
        .ok_or_else(|| missing("blocking pool"))?;
    let result: Arc<Mutex<Option<Result<T, FfiError>>>> = Arc::default();
    let job = Box::new(Job {
        work,
        result: Arc::clone(&result),
    });
    let job = BlockingJob {
        data: Box::into_raw(job).cast(),
        run: run_job::<T, F>,
    };
    run_blocking(job)
        .await
        .into_result()
        .map_err(Error::from_ffi)?;
    let taken = result.lock().unwrap_or_else(PoisonError::into_inner).take();
    match taken {
        Some(Ok(value)) => Ok(value),
        Some(Err(panic)) => Err(Error::from_ffi(panic)),
        None => Err(Error::with_kind(
            ErrorKind::INTERNAL,
            "the host did not run the work",
        )),
    }
}

struct Job<T, F> {
    work: F,
    result: Arc<Mutex<Option<Result<T, FfiError>>>>,
}

extern "C" fn run_job<T, F: FnOnce() -> T>(data: *mut ()) {
    // SAFETY: `data` is the `Box<Job<T, F>>` `blocking` leaked for this job, and the host calls
    // `run` exactly once.
    let job = unsafe { Box::from_raw(data.cast::<Job<T, F>>()) };
    let Job { work, result } = *job;
    let value = catch_unwind(AssertUnwindSafe(work)).map_err(panicked);
    *result.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
}

/// The function behind one async export: `plugin!` implements it on a marker type per export.
pub trait AsyncHandler: 'static {
    /// The contract it implements.
    type Contract: Contract;
    /// Runs the author's `async fn`.
    fn call(
        ctx: Context<'static>,
        input: <Self::Contract as Contract>::In,
    ) -> impl Future<Output = Result<<Self::Contract as Contract>::Out, Error>> + Send + 'static;
}

/// An async export called with JSON: decodes the input, runs the author's future with every
/// poll's panic caught, encodes the output.
pub extern "C" fn async_json_export<H: AsyncHandler>(
    ctx: Context<'static>,
    input: RVec<u8>,
) -> FfiFuture<RResult<RVec<u8>, FfiError>>
where
    <H::Contract as Contract>::In: DeserializeOwned,
    <H::Contract as Contract>::Out: Serialize,
{
    let run = async move {
        let input = serde_json::from_slice(input.as_slice())
            .map_err(|e| Error::with_kind(ErrorKind::BAD_INPUT, e).into_ffi())?;
        let future = catch_unwind(AssertUnwindSafe(|| H::call(ctx, input))).map_err(panicked)?;
        let output = CatchUnwind(future)
            .await
            .map_err(panicked)?
            .map_err(Error::into_ffi)?;
        serde_json::to_vec(&output)
            .map(RVec::from)
            .map_err(|e| Error::with_kind(ErrorKind::BAD_OUTPUT, e).into_ffi())
    };
    async move { RResult::from(run.await) }.into_ffi()
}

/// A future whose polls' panics are caught.
pub(crate) struct CatchUnwind<F>(pub(crate) F);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        // SAFETY: structural pinning of the only field; it is never moved out.
        let inner = unsafe { self.map_unchecked_mut(|this| &mut this.0) };
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// The declaration of the async export `H` (what `plugin!` writes under `async_exports`). Its
/// contract must be declared `json async fn`.
pub const fn async_export_decl<H>() -> ExportDecl
where
    H: AsyncHandler,
    H::Contract: Contract<Wire = AsyncJson>,
    <H::Contract as Contract>::In: Serialize + DeserializeOwned,
    <H::Contract as Contract>::Out: Serialize + DeserializeOwned,
{
    // SAFETY: a function pointer of any type has the size and representation of `ErasedFn`;
    // the host turns it back into an `AsyncJsonFn` only for a signature of wire `ASYNC_JSON`,
    // which `H::Contract`'s is.
    let func = unsafe {
        std::mem::transmute::<AsyncJsonFn, ErasedFn>(async_json_export::<H> as AsyncJsonFn)
    };
    ExportDecl {
        signature: signature::<H::Contract>(),
        func,
        json: None,
    }
}

impl Context<'static> {
    /// Calls one of this plugin's async imports (a contract declared `json async fn`) and awaits
    /// it, in the generation this call runs in. Only an async export has a `Context<'static>`,
    /// which is what lets the call's future outlive the stack.
    ///
    /// # Errors
    ///
    /// As [`Context::call`].
    pub async fn call_async<C>(&self, import: Import<C>, input: C::In) -> Result<C::Out, Error>
    where
        C: Contract<Wire = AsyncJson>,
        C::In: Serialize,
        C::Out: DeserializeOwned,
    {
        let (func, callee) = self.bound(import)?;
        let failed = |message: String| {
            let mut err = Error::with_kind(ErrorKind::INTERNAL, message);
            err.prefix(C::NAME);
            err
        };
        let bytes =
            serde_json::to_vec(&input).map_err(|e| failed(format!("encoding the input: {e}")))?;
        // SAFETY: the host binds an import slot only to an export whose signature equals the
        // import's, here of wire `ASYNC_JSON`, which is exported as an `AsyncJsonFn`.
        let func = unsafe { std::mem::transmute::<ErasedFn, AsyncJsonFn>(func) };
        let output = func(callee, RVec::from(bytes))
            .await
            .into_result()
            .map_err(|e| {
                let mut err = Error::from_ffi(e);
                err.prefix(C::NAME);
                err
            })?;
        serde_json::from_slice(output.as_slice())
            .map_err(|e| failed(format!("decoding the output: {e}")))
    }
}
