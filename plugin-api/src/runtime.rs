//! What `plugin!` expands to: the boundary wrappers around plugin functions.
//!
//! Every export and the initialiser run inside `catch_unwind`, so a panic becomes an
//! [`ErrorKind::PANIC`] error value instead of unwinding into the host (which would abort).
//! Exports are erased to [`ErasedFn`] here, in constants, which is this module's `unsafe`.

#![allow(unsafe_code)]

use std::any::Any;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};
use serde::{de::DeserializeOwned, Serialize};

use crate::contract::{signature, ByValue, Contract, Json, ValueFn};
use crate::error::Error;
use crate::ffi::{
    Context, ErasedFn, ErrorKind, ExportDecl, FfiError, HookFn, Hooks, HostApiRef, InitFn, JsonFn,
    PluginMod, Signature,
};
use crate::http::RouteDecl;
use crate::log;
use crate::state::StateDecl;
use crate::table::TableDecl;

/// Builds the root module; a function so the test-only `next-api` field is set here, under this
/// crate's feature, not the plugin's. One argument per field of [`PluginMod`].
#[allow(clippy::too_many_arguments)]
pub const fn plugin_mod(
    name: &'static str,
    version: &'static str,
    exports: &'static [ExportDecl],
    imports: &'static [Signature],
    panic_unwind: bool,
    init: InitFn,
    state: Option<&'static StateDecl>,
    hooks: Hooks,
    tables: &'static [TableDecl],
    routes: &'static [RouteDecl],
) -> PluginMod {
    PluginMod {
        name: RStr::from_str(name),
        version: RStr::from_str(version),
        exports: RSlice::from_slice(exports),
        imports: RSlice::from_slice(imports),
        panic_unwind,
        init,
        state,
        hooks,
        tables: RSlice::from_slice(tables),
        routes: RSlice::from_slice(routes),
        #[cfg(feature = "next-api")]
        next_api_field: 0,
    }
}

/// The function behind one export of a plugin: `plugin!` implements it on a marker type per
/// export, calling the author's function.
pub trait Handler: 'static {
    /// The contract it implements.
    type Contract: Contract;
    /// Runs the author's function.
    fn call(ctx: &Context<'_>, input: In<Self>) -> Result<Out<Self>, Error>;
}

/// The input type of a handler's contract.
pub type In<H> = <<H as Handler>::Contract as Contract>::In;
/// The output type of a handler's contract.
pub type Out<H> = <<H as Handler>::Contract as Contract>::Out;

/// The typed export function of a handler, per wire.
pub trait ExportWire<H: Handler> {
    /// The handler's export, erased.
    const FUNC: ErasedFn;
}

impl<H: Handler> ExportWire<H> for ByValue
where
    In<H>: abi_stable::StableAbi,
    Out<H>: abi_stable::StableAbi,
{
    // SAFETY: a function pointer of any type has the size and representation of `ErasedFn`;
    // callers turn it back into a `ValueFn<In<H>, Out<H>>` only after checking its signature.
    const FUNC: ErasedFn =
        unsafe { std::mem::transmute::<ValueFn<In<H>, Out<H>>, ErasedFn>(value_export::<H>) };
}

impl<H: Handler> ExportWire<H> for Json
where
    In<H>: DeserializeOwned,
    Out<H>: Serialize,
{
    // SAFETY: as above; callers turn it back into a `JsonFn` after checking its signature.
    const FUNC: ErasedFn = unsafe { std::mem::transmute::<JsonFn, ErasedFn>(json_export::<H>) };
}

/// The declaration of the export `H`, with its JSON adapter if it has one.
pub const fn export_decl<H: Handler>(json: Option<JsonFn>) -> ExportDecl
where
    <H::Contract as Contract>::Wire: ExportWire<H>,
{
    ExportDecl {
        signature: signature::<H::Contract>(),
        func: <<H::Contract as Contract>::Wire as ExportWire<H>>::FUNC,
        json,
    }
}

/// A by-value export: the author's function, with panics caught.
pub extern "C" fn value_export<H: Handler>(
    ctx: &Context<'_>,
    input: In<H>,
) -> RResult<Out<H>, FfiError> {
    match catch_unwind(AssertUnwindSafe(|| H::call(ctx, input))) {
        Ok(Ok(output)) => RResult::ROk(output),
        Ok(Err(err)) => RResult::RErr(err.into_ffi()),
        Err(payload) => RResult::RErr(panicked(payload)),
    }
}

/// An export called with JSON: decode the input, call the author's function, encode the
/// output, catch any panic. A JSON contract's export, and a by-value one's JSON adapter.
pub extern "C" fn json_export<H: Handler>(
    ctx: &Context<'_>,
    input: RSlice<'_, u8>,
) -> RResult<RVec<u8>, FfiError>
where
    In<H>: DeserializeOwned,
    Out<H>: Serialize,
{
    let result = catch_unwind(AssertUnwindSafe(|| {
        let input: In<H> = serde_json::from_slice(input.as_slice())
            .map_err(|e| Error::with_kind(ErrorKind::BAD_INPUT, e))?;
        let output = H::call(ctx, input)?;
        serde_json::to_vec(&output).map_err(|e| Error::with_kind(ErrorKind::BAD_OUTPUT, e))
    }));
    match flatten(result) {
        Ok(bytes) => RResult::ROk(RVec::from(bytes)),
        Err(err) => RResult::RErr(err),
    }
}

/// `<JsonAdapter<H>>::FUNC` is the JSON adapter of export `H` when its types are serde-capable,
/// and (through [`NoJsonAdapter`], which `plugin!` brings into scope) `None` otherwise. Only
/// works on a concrete `H`, which is where `plugin!` uses it.
pub struct JsonAdapter<H>(PhantomData<H>);

impl<H: Handler> JsonAdapter<H>
where
    In<H>: DeserializeOwned,
    Out<H>: Serialize,
{
    /// The adapter.
    pub const FUNC: Option<JsonFn> = Some(json_export::<H>);
}

/// The fallback of [`JsonAdapter`]: no JSON adapter.
pub trait NoJsonAdapter {
    /// No adapter.
    const FUNC: Option<JsonFn> = None;
}

impl<T> NoJsonAdapter for T {}

/// Describes a serde type for the host: its name and its serde shape, as JSON.
///
/// The shape is traced with serde-reflection; a type it cannot trace (one whose `Deserialize`
/// needs real samples) is described by its name alone.
pub extern "C" fn describe<T: DeserializeOwned>() -> RString {
    description::<T>(|tracer| tracer.registry().ok())
}

/// Describes a table's value type for the host: its name and its serde shape, as JSON, traced
/// like [`describe`]'s but keeping what the tracer found of enums nested inside (it explores
/// their first variant only: without sample values, a serde tracer cannot reach the others).
pub extern "C" fn describe_record<T: DeserializeOwned>() -> RString {
    description::<T>(|tracer| Some(tracer.registry_unchecked()))
}

/// `{"name": .., "shape": [format, registry]}` of `T`, the registry as `registry` takes it
/// from the tracer; the shape `null` when `T` cannot be traced.
fn description<T: DeserializeOwned>(
    registry: fn(serde_reflection::Tracer) -> Option<serde_reflection::Registry>,
) -> RString {
    let shape = catch_unwind(|| {
        let mut tracer = serde_reflection::Tracer::new(serde_reflection::TracerConfig::default());
        let (format, _) = tracer.trace_simple_type::<T>().ok()?;
        serde_json::to_value((format, registry(tracer)?)).ok()
    })
    .ok()
    .flatten();
    let description = serde_json::json!({
        "name": std::any::type_name::<T>(),
        "shape": shape,
    });
    RString::from(description.to_string())
}

/// Runs the plugin's initialiser: route its logs to the host, then call the author's `init`.
pub fn run_init(
    host: HostApiRef,
    plugin: &'static str,
    init: Option<fn() -> Result<(), Error>>,
) -> RResult<(), FfiError> {
    let result = catch_unwind(AssertUnwindSafe(|| {
        log::forward_to_host(host, plugin);
        crate::asynchronous::install(host);
        log::forward_panics_to_host();
        match init {
            Some(init) => init(),
            None => Ok(()),
        }
    }));
    flatten(result).into()
}

pub(crate) fn flatten<T>(
    result: Result<Result<T, Error>, Box<dyn Any + Send>>,
) -> Result<T, FfiError> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(err.into_ffi()),
        Err(payload) => Err(panicked(payload)),
    }
}

/// The error a caught panic becomes.
#[cold]
#[inline(never)]
pub(crate) fn panicked(payload: Box<dyn Any + Send>) -> FfiError {
    let message = panic_message(&*payload);
    // A payload whose own drop panics must not unwind out of here either.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
    FfiError {
        kind: ErrorKind::PANIC,
        message: RString::from(message),
    }
}

/// The message of a panic payload (`panic!` gives a `&str` or a `String`).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// Runs a lifecycle hook at the boundary, its panic caught.
pub fn run_hook(hook: fn() -> Result<(), Error>) -> RResult<(), FfiError> {
    flatten(catch_unwind(hook)).into()
}

/// The hook functions `plugin!` declares, each `None` unless named.
pub const fn hooks(
    pre_activate: Option<HookFn>,
    post_activate: Option<HookFn>,
    pre_unload: Option<HookFn>,
) -> Hooks {
    Hooks {
        pre_activate,
        post_activate,
        pre_unload,
    }
}
