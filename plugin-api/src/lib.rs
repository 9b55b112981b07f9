//! The stable contract between the graft host and its plugins.
//!
//! A plugin is a `cdylib` crate that depends on `graft-api` (and on `abi_stable`, which the
//! exported root module names) and declares itself with [`plugin!`]: its name, its version, the
//! contracts it imports and the functions it exports. Plugin functions are ordinary Rust over
//! the author's own serde types; the macro generates the FFI wrappers, which catch panics and
//! return them as errors.
//!
//! ```no_run
//! use graft_api::{Context, Error, Import};
//!
//! graft_api::plugin! {
//!     name: "foo",
//!     version: env!("CARGO_PKG_VERSION"),
//!     imports: {
//!         FROB: Import<u64, u64> = "frob@1",
//!     },
//!     exports: {
//!         "foo@1" => foo,
//!     },
//! }
//!
//! fn foo(ctx: &Context<'_>, a: u64) -> Result<u64, Error> {
//!     let x = ctx.call(FROB, &a)?; // runs in the caller's generation
//!     graft_api::tracing::info!(a, x, "foo called");
//!     Ok(x + 1)
//! }
//! # fn main() {}
//! ```
//!
//! # Contracts
//!
//! An export or import is named by a contract, `name@N`: a function name and the version of its
//! signature and meaning. When a release goes live, every import must be bound to exactly one
//! export of the same contract in the new generation, or the release is rejected. A plugin that
//! changes a contract exports `name@N+1`; callers that still import `name@N` keep linking if the
//! same release (or a small shim plugin) still provides `name@N`.
//!
//! # Calls and generations
//!
//! An export receives a [`Context`]: the link table of the generation the call runs in. Calls to
//! imports go through [`Context::call`] and resolve in that same generation, so one request
//! never mixes code from two releases, however many releases go live while it runs.
//!
//! Values cross the boundary as JSON bytes in an [`abi_stable::std_types::RVec`]; each side frees
//! what it allocated.
//!
//! # Logging
//!
//! Use [`tracing`] (re-exported here). The plugin's initialiser routes the plugin's copy of
//! `tracing` to the host's subscriber, so the host's `RUST_LOG` filters plugin events (their
//! target is `graft::plugin`, with a `plugin` field).
//!
//! # What a plugin must not do
//!
//! The host unloads a plugin's library once no request uses it. A plugin that spawns threads, or
//! touches a `thread_local!` with a destructor, pins its library in memory (the host reports it)
//! and a thread still running when the library is unmapped crashes the process. Keep plugins
//! free of background threads. Writing to stdout with `println!` leaks a small buffer per reload.
//!
//! # Evolving the API
//!
//! Built plugins keep working across host upgrades as long as these rules hold:
//!
//! 1. [`API_VERSION`] is `MAJOR.MINOR.0`. The host loads a plugin with the same MAJOR and a MINOR
//!    no greater than its own. It reads the plugin's version before abi_stable's layout check and
//!    rejects newer plugins there: abi_stable caches the largest prefix layout it has seen, and
//!    checking a newer plugin's layout, then unloading it, would corrupt later checks.
//! 2. New capabilities are appended as new fields at the end of a prefix type ([`PluginMod`],
//!    [`HostApi`]), after the `last_prefix_field`; that bumps MINOR. A field is never removed,
//!    reordered or retyped.
//! 3. Every other type here ([`Context`], [`LinkTable`], [`ExportDecl`], [`FfiError`], ...) is
//!    frozen: changing it bumps MAJOR, and every plugin must be rebuilt.
//! 4. Error kinds are codes ([`ErrorKind`]), not an enum, so new kinds need no layout change.
//! 5. No `NonExhaustive` enums and no `#[sabi(extra_checks)]`: both keep process-global state
//!    in abi_stable that outlives an unloaded plugin.

mod context;
pub mod ffi;
mod log;
#[doc(hidden)]
pub mod runtime;

pub use context::{Error, Import};
pub use ffi::{
    Context, ErrorKind, ExportDecl, FfiError, HostApi, HostApiRef, LinkTable, PluginMod,
    PluginModRef, API_VERSION,
};
pub use tracing;

#[doc(hidden)]
pub mod __private {
    pub use abi_stable::{
        export_root_module,
        prefix_type::WithMetadata,
        std_types::{RResult, RSlice, RStr, RVec},
    };
}

/// Declares the plugin: its name, version, imports, exports and optional initialiser.
///
/// - `imports` declares one typed [`Import`] constant per contract the plugin calls; its slot is
///   its position in the list.
/// - `exports` maps each contract to a function `fn(&Context<'_>, In) -> Result<Out, Error>`
///   where `In: DeserializeOwned` and `Out: Serialize`.
/// - `init` names a `fn() -> Result<(), Error>` run once per load, before the plugin goes live.
///
/// The macro exports the abi_stable root module, so the crate must be a `cdylib` that also
/// depends on `abi_stable` (the version `graft-api` uses). See the crate docs for an example.
#[macro_export]
macro_rules! plugin {
    (
        name: $name:literal,
        version: $version:expr,
        $(imports: { $($import:ident : $import_ty:ty = $import_contract:literal),* $(,)? },)?
        exports: { $($export_contract:literal => $export_fn:path),* $(,)? }
        $(, init: $init:path)?
        $(,)?
    ) => {
        #[allow(non_camel_case_types, dead_code, clippy::upper_case_acronyms)]
        #[repr(u32)]
        enum __GraftImportSlot { $($($import,)*)? __End }

        $($(
            #[allow(dead_code)]
            const $import: $import_ty =
                $crate::Import::__at(__GraftImportSlot::$import as u32, $import_contract);
        )*)?

        const __GRAFT_MODULE: &$crate::__private::WithMetadata<$crate::PluginMod> =
            &$crate::__private::WithMetadata::new($crate::runtime::plugin_mod(
                $name,
                $version,
                &[$(
                    $crate::ExportDecl {
                        contract: $crate::__private::RStr::from_str($export_contract),
                        func: {
                            extern "C" fn __graft_export(
                                ctx: &$crate::Context<'_>,
                                input: $crate::__private::RSlice<'_, u8>,
                            ) -> $crate::__private::RResult<
                                $crate::__private::RVec<u8>,
                                $crate::FfiError,
                            > {
                                $crate::runtime::run_export(ctx, input, $export_fn)
                            }
                            __graft_export
                        },
                    },
                )*],
                &[$($($crate::__private::RStr::from_str($import_contract),)*)?],
                {
                    extern "C" fn __graft_init(
                        host: $crate::HostApiRef,
                    ) -> $crate::__private::RResult<(), $crate::FfiError> {
                        #[allow(unused_mut, unused_assignments)]
                        let mut user: ::core::option::Option<
                            fn() -> ::core::result::Result<(), $crate::Error>,
                        > = ::core::option::Option::None;
                        $(user = ::core::option::Option::Some($init);)?
                        $crate::runtime::run_init(host, $name, user)
                    }
                    __graft_init
                },
            ));

        /// The plugin's abi_stable root module (the static it exports has no docs of its own).
        #[doc(hidden)]
        #[allow(missing_docs)]
        pub mod __graft_root {
            /// Returns the plugin's root module.
            #[$crate::__private::export_root_module]
            pub fn __graft_root_module() -> $crate::PluginModRef {
                $crate::PluginModRef(super::__GRAFT_MODULE.static_as_prefix())
            }
        }
    };
}
