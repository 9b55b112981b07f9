//! Exports the host provides: host services as contracts (one of the host's modules with
//! `unsafe` code).
//!
//! An embedder offers plugins a service (an HTTP client, a database pool) by providing a
//! contract's implementation on the [`HostBuilder`](crate::HostBuilder): plugins import the
//! contract like any other, and linking checks their types against the host's declaration,
//! as it does between plugins. The service lives in the host, so what it holds (a connection
//! pool) outlives every patch.
//!
//! A bound import is a bare function pointer and a plugin position (see
//! [`Binding`](graft_api::ffi::Binding)), so a provided export is a trampoline, one per
//! contract and wire, that finds its implementation by the position it is called with: each
//! provided export takes a number in a process-wide registry, offset by [`FIRST_ID`] so that it
//! is never a plugin's position, and gives it back when the host and every generation linked to
//! it are gone.

#![allow(unsafe_code)]

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};

use abi_stable::std_types::{RResult, RSlice, RVec};
use async_ffi::FutureExt as _;
use graft_api::contract::{signature, AsyncJson, ByValue, Json};
use graft_api::ffi::{AsyncJsonFn, Context, ErasedFn, ErrorKind, FfiError, FfiFuture, JsonFn};
use graft_api::{Contract, Error};
use serde::{de::DeserializeOwned, Serialize};
use slab::Slab;

use crate::decl::{ContractError, PluginInfo, Signature};
use crate::loader::ExportImpl;

/// The name linking gives the host as a provider (not a valid plugin name, so never a
/// plugin's).
pub const PROVIDER: &str = "(host)";

/// Provided exports are numbered from here in [`Binding::plugin`](graft_api::ffi::Binding):
/// past any plugin position.
const FIRST_ID: u32 = 1 << 31;

/// A boxed future of a provided async export.
pub type ServiceFuture<T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'static>>;

type SyncImpl<C> = dyn Fn(<C as Contract>::In) -> Result<<C as Contract>::Out, Error> + Send + Sync;
type AsyncImpl<C> =
    dyn Fn(<C as Contract>::In) -> ServiceFuture<<C as Contract>::Out> + Send + Sync;

/// Every provided export's implementation, by number.
static REGISTRY: RwLock<Slab<Arc<dyn Any + Send + Sync>>> = RwLock::new(Slab::new());

/// A number in the registry, given back when dropped.
#[derive(Debug)]
struct Registration(usize);

impl Drop for Registration {
    fn drop(&mut self) {
        REGISTRY
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .try_remove(self.0);
    }
}

fn register(implementation: Arc<dyn Any + Send + Sync>) -> (Registration, u32) {
    let key = REGISTRY
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(implementation);
    let id = u32::try_from(key)
        .ok()
        .and_then(|k| k.checked_add(FIRST_ID))
        .expect("fewer than 2^31 provided exports");
    (Registration(key), id)
}

/// The implementation registered as `id`, if it is one of type `T`.
fn lookup<T: Any + Send + Sync>(id: u32) -> Option<Arc<T>> {
    let key = usize::try_from(id.checked_sub(FIRST_ID)?).ok()?;
    let found = REGISTRY
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(key)
        .cloned()?;
    found.downcast::<T>().ok()
}

fn gone() -> FfiError {
    FfiError {
        kind: ErrorKind::UNAVAILABLE,
        message: "the host's implementation of this contract is gone".into(),
    }
}

/// One provided export.
#[derive(Debug)]
pub(crate) struct ProvidedExport {
    pub(crate) signature: Signature,
    pub(crate) id: u32,
    pub(crate) export: ExportImpl,
    _registration: Registration,
}

/// What the host provides: shared by the host and every generation linked against it. A clone
/// (of a [`HostBuilder`](crate::HostBuilder)) shares each export's registration.
#[derive(Debug, Default, Clone)]
pub(crate) struct Provided {
    pub(crate) exports: Vec<Arc<ProvidedExport>>,
    /// The host as a provider, as linking reads a plugin: exports only.
    pub(crate) info: Option<PluginInfo>,
}

impl Provided {
    fn add(
        &mut self,
        signature: Signature,
        implementation: Arc<dyn Any + Send + Sync>,
        func: ErasedFn,
        json: Option<JsonFn>,
    ) {
        let (registration, id) = register(implementation);
        let info = self.info.get_or_insert_with(|| PluginInfo {
            name: PROVIDER.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            api_version: graft_api::API_VERSION.into(),
            exports: Vec::new(),
            imports: Vec::new(),
            routes: Vec::new(),
        });
        info.exports.push(signature.clone());
        self.exports.push(Arc::new(ProvidedExport {
            signature,
            id,
            export: ExportImpl { func, json },
            _registration: registration,
        }));
    }

    /// Whether the host provides `contract` already.
    pub(crate) fn has(&self, contract: &crate::decl::Contract) -> bool {
        self.exports
            .iter()
            .any(|e| &e.signature.contract == contract)
    }
}

/// How a contract's wire is provided by a synchronous implementation: [`ByValue`] and
/// [`Json`].
pub trait ProvideWire<C: Contract> {
    #[doc(hidden)]
    fn func() -> (ErasedFn, Option<JsonFn>);
}

impl<C: Contract<Wire = ByValue>> ProvideWire<C> for ByValue
where
    C::In: abi_stable::StableAbi,
    C::Out: abi_stable::StableAbi,
{
    fn func() -> (ErasedFn, Option<JsonFn>) {
        let func: graft_api::contract::ValueFn<C::In, C::Out> = value_trampoline::<C>;
        // SAFETY: function pointers of every type have the same size and representation; a
        // caller turns it back into a `ValueFn<C::In, C::Out>` only after linking checked that
        // its import has `C`'s signature.
        (
            unsafe {
                std::mem::transmute::<graft_api::contract::ValueFn<C::In, C::Out>, ErasedFn>(func)
            },
            None,
        )
    }
}

impl<C: Contract<Wire = Json>> ProvideWire<C> for Json
where
    C::In: DeserializeOwned,
    C::Out: Serialize,
{
    fn func() -> (ErasedFn, Option<JsonFn>) {
        let json: JsonFn = json_trampoline::<C>;
        // SAFETY: as above, for a `JsonFn`.
        (
            unsafe { std::mem::transmute::<JsonFn, ErasedFn>(json) },
            Some(json),
        )
    }
}

/// Why a host service could not be provided
/// ([`HostBuilder::provide`](crate::HostBuilder::provide)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvideError {
    /// The contract's name is not of the form `name@N`.
    #[error(transparent)]
    Name(#[from] ContractError),
    /// The contract's types cannot be described to plugins.
    #[error("the types of {contract}: {reason}")]
    Types {
        /// The contract.
        contract: String,
        /// What is wrong with them.
        reason: String,
    },
    /// The host provides this contract already.
    #[error("the host provides {0} already")]
    AlreadyProvided(String),
}

/// Checks that `provided` may take contract `C`, and describes it.
fn describe<C: Contract>(provided: &Provided) -> Result<Signature, ProvideError> {
    let contract: crate::decl::Contract = C::NAME.parse()?;
    if provided.has(&contract) {
        return Err(ProvideError::AlreadyProvided(contract.to_string()));
    }
    crate::types::signature(&signature::<C>()).map_err(|reason| ProvideError::Types {
        contract: contract.to_string(),
        reason,
    })
}

/// Adds `implementation` of contract `C` (a by-value or JSON contract) to `provided`.
pub(crate) fn provide<C, F>(provided: &mut Provided, implementation: F) -> Result<(), ProvideError>
where
    C: Contract,
    C::Wire: ProvideWire<C>,
    F: Fn(C::In) -> Result<C::Out, Error> + Send + Sync + 'static,
{
    let signature = describe::<C>(provided)?;
    let boxed: Box<SyncImpl<C>> = Box::new(implementation);
    let (func, json) = <C::Wire as ProvideWire<C>>::func();
    provided.add(signature, Arc::new(boxed), func, json);
    Ok(())
}

/// Adds `implementation` of the async contract `C` (`json async fn`) to `provided`.
pub(crate) fn provide_async<C, F>(
    provided: &mut Provided,
    implementation: F,
) -> Result<(), ProvideError>
where
    C: Contract<Wire = AsyncJson>,
    C::In: DeserializeOwned + Serialize,
    C::Out: Serialize + DeserializeOwned,
    F: Fn(C::In) -> ServiceFuture<C::Out> + Send + Sync + 'static,
{
    let signature = describe::<C>(provided)?;
    let boxed: Box<AsyncImpl<C>> = Box::new(implementation);
    let func: AsyncJsonFn = async_trampoline::<C>;
    // SAFETY: as for `ProvideWire`, for an `AsyncJsonFn` behind a signature of wire
    // `ASYNC_JSON`.
    let func = unsafe { std::mem::transmute::<AsyncJsonFn, ErasedFn>(func) };
    provided.add(signature, Arc::new(boxed), func, None);
    Ok(())
}

fn error_to_ffi(error: Error) -> FfiError {
    FfiError {
        kind: error.kind(),
        message: error.message().into(),
    }
}

fn panicked() -> FfiError {
    FfiError {
        kind: ErrorKind::PANIC,
        message: "the host's implementation panicked".into(),
    }
}

/// Runs `f` with panics caught: a trampoline is `extern "C"`, and nothing unwinds across it.
fn guarded<T>(f: impl FnOnce() -> Result<T, FfiError>) -> RResult<T, FfiError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(panicked()))
        .into()
}

extern "C" fn value_trampoline<C: Contract>(
    ctx: &Context<'_>,
    input: C::In,
) -> RResult<C::Out, FfiError> {
    guarded(|| {
        let implementation = lookup::<Box<SyncImpl<C>>>(ctx.plugin).ok_or_else(gone)?;
        implementation(input).map_err(error_to_ffi)
    })
}

extern "C" fn json_trampoline<C: Contract>(
    ctx: &Context<'_>,
    input: RSlice<'_, u8>,
) -> RResult<RVec<u8>, FfiError>
where
    C::In: DeserializeOwned,
    C::Out: Serialize,
{
    guarded(|| {
        let implementation = lookup::<Box<SyncImpl<C>>>(ctx.plugin).ok_or_else(gone)?;
        let input = serde_json::from_slice(input.as_slice())
            .map_err(|e| error_to_ffi(Error::with_kind(ErrorKind::BAD_INPUT, e)))?;
        let output = implementation(input).map_err(error_to_ffi)?;
        serde_json::to_vec(&output)
            .map(RVec::from)
            .map_err(|e| error_to_ffi(Error::with_kind(ErrorKind::BAD_OUTPUT, e)))
    })
}

extern "C" fn async_trampoline<C: Contract>(
    ctx: Context<'static>,
    input: RVec<u8>,
) -> FfiFuture<RResult<RVec<u8>, FfiError>>
where
    C::In: DeserializeOwned,
    C::Out: Serialize,
{
    let started = guarded(|| {
        let implementation = lookup::<Box<AsyncImpl<C>>>(ctx.plugin).ok_or_else(gone)?;
        let input = serde_json::from_slice(input.as_slice())
            .map_err(|e| error_to_ffi(Error::with_kind(ErrorKind::BAD_INPUT, e)))?;
        Ok(implementation(input))
    });
    let run = async move {
        let future = started.into_result()?;
        let output = CatchUnwind(future)
            .await
            .ok_or_else(panicked)?
            .map_err(error_to_ffi)?;
        serde_json::to_vec(&output)
            .map(RVec::from)
            .map_err(|e| error_to_ffi(Error::with_kind(ErrorKind::BAD_OUTPUT, e)))
    };
    async move { RResult::from(run.await) }.into_ffi()
}

/// A future whose polls' panics are caught (`None`): the plugin polls it through an
/// `extern "C"` function.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Option<F::Output>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(std::task::Poll::Ready(output)) => std::task::Poll::Ready(Some(output)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(_) => std::task::Poll::Ready(None),
        }
    }
}
