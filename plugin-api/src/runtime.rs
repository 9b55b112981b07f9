//! What `plugin!` expands to at run time: the boundary wrappers around plugin functions.
//!
//! Every export and the initialiser run inside `catch_unwind`, so a panic becomes an
//! [`ErrorKind::PANIC`] error value instead of unwinding into the host (which would abort).

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};
use serde::{de::DeserializeOwned, Serialize};

use crate::context::Error;
use crate::ffi::{Context, ErrorKind, ExportDecl, FfiError, HostApiRef, InitFn, PluginMod};
use crate::log;

/// Builds the root module; a function so the test-only `next-api` field is set here, under this
/// crate's feature, not the plugin's.
pub const fn plugin_mod(
    name: &'static str,
    version: &'static str,
    exports: &'static [ExportDecl],
    imports: &'static [RStr<'static>],
    init: InitFn,
) -> PluginMod {
    PluginMod {
        name: RStr::from_str(name),
        version: RStr::from_str(version),
        exports: RSlice::from_slice(exports),
        imports: RSlice::from_slice(imports),
        init,
        #[cfg(feature = "next-api")]
        next_api_field: 0,
    }
}

/// Runs one export call: decode the input, call `f`, encode the output, catch any panic.
pub fn run_export<I, O>(
    ctx: &Context<'_>,
    input: RSlice<'_, u8>,
    f: fn(&Context<'_>, I) -> Result<O, Error>,
) -> RResult<RVec<u8>, FfiError>
where
    I: DeserializeOwned,
    O: Serialize,
{
    let result = catch_unwind(AssertUnwindSafe(|| {
        let input: I = serde_json::from_slice(input.as_slice())
            .map_err(|e| Error::with_kind(ErrorKind::BAD_INPUT, e))?;
        let output = f(ctx, input)?;
        serde_json::to_vec(&output).map_err(|e| Error::with_kind(ErrorKind::BAD_OUTPUT, e))
    }));
    match flatten(result) {
        Ok(bytes) => RResult::ROk(RVec::from(bytes)),
        Err(err) => RResult::RErr(err),
    }
}

/// Runs the plugin's initialiser: route its logs to the host, then call the author's `init`.
pub fn run_init(
    host: HostApiRef,
    plugin: &'static str,
    init: Option<fn() -> Result<(), Error>>,
) -> RResult<(), FfiError> {
    let result = catch_unwind(AssertUnwindSafe(|| {
        log::forward_to_host(host, plugin);
        log::forward_panics_to_host(host, plugin);
        match init {
            Some(init) => init(),
            None => Ok(()),
        }
    }));
    flatten(result).into()
}

fn flatten<T>(result: Result<Result<T, Error>, Box<dyn Any + Send>>) -> Result<T, FfiError> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(err.into_ffi()),
        Err(payload) => {
            let message = panic_message(&*payload);
            // A payload whose own drop panics must not unwind out of here either.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            Err(FfiError {
                kind: ErrorKind::PANIC,
                message: RString::from(message),
            })
        }
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
