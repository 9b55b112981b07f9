//! The stable contract between the graft host and its plugins.
//!
//! A plugin is a `cdylib` crate that depends on `graft-api` (and on `abi_stable`, which the
//! exported root module names) and declares itself with [`plugin!`]: its name, its version, the
//! contracts it imports and the contracts it exports. Contracts are types, declared once with
//! [`contract!`], usually in a crate shared by the exporter, its importers and the host, so a
//! caller that passes the wrong type does not compile. Plugin functions are ordinary Rust; the
//! macro generates the FFI wrappers, which catch panics and return them as errors.
//!
//! ```no_run
//! use graft_api::{Context, Error};
//!
//! // In a shared crate (here inline): each contract once, with its types.
//! graft_api::contract! {
//!     /// Frobs a number.
//!     pub struct FrobV1 = "frob@1": fn(u64) -> u64;
//!     /// foo: frob, plus one.
//!     pub struct FooV1 = "foo@1": fn(u64) -> u64;
//! }
//!
//! graft_api::plugin! {
//!     name: "foo",
//!     version: env!("CARGO_PKG_VERSION"),
//!     imports: {
//!         FROB: FrobV1,
//!     },
//!     exports: {
//!         FooV1 => foo,
//!     },
//! }
//!
//! fn foo(ctx: &Context<'_>, a: u64) -> Result<u64, Error> {
//!     let x = ctx.call(FROB, a)?; // runs in the caller's generation
//!     graft_api::tracing::info!(a, x, "foo called");
//!     Ok(x + 1)
//! }
//! # fn main() {}
//! ```
//!
//! # Contracts
//!
//! A contract is named `name@N`: a function name and the version of its signature and meaning.
//! Its types are part of it. When a release goes live, every import must be bound to exactly one
//! export of the same contract *and the same types* in the new generation, or the release is
//! refused, naming the contract, both plugins and both types. A plugin that changes a contract's
//! types or meaning exports `name@N+1`; callers that still import `name@N` keep linking if the
//! same release (or a small shim plugin) still provides `name@N`.
//!
//! Two wires carry a contract's values:
//!
//! - **By value** (`fn(In) -> Out`): `#[repr(C)]` types deriving [`abi_stable::StableAbi`]
//!   (integers, `RString`, `RVec`, `ROption`, structs of those) cross as they are, with no
//!   encoding; a call is an indirect function call. The host compares abi_stable's layouts of
//!   the types (names, sizes, fields, recursively). When the types are also serde-capable, the
//!   export gets a JSON adapter, which is how `graft serve` calls it from an HTTP route.
//! - **JSON** (`json fn(In) -> Out`): any serde types, encoded by the caller and decoded by the
//!   callee. The host compares their serde shapes (traced with serde-reflection).
//!
//! # Calls and generations
//!
//! An export receives a [`Context`]: the link table of the generation the call runs in. Calls to
//! imports go through [`Context::call`] and resolve in that same generation, so one request
//! never mixes code from two releases, however many releases go live while it runs. Each side
//! frees what it allocated: an `RVec` or `RString` carries its own deallocator.
//!
//! # Errors
//!
//! An export returns [`Error`]; its kind says what `graft serve` answers: [`Error::not_found`]
//! 404, [`Error::conflict`] 409, [`Error::invalid`] 422, [`Error::unavailable`] 503, anything
//! else 500. Only a route's own input failing to decode is a 400.
//!
//! # State and tables
//!
//! A plugin's data lives in the host, not in its statics: one plain-data [`state`] cell, and any
//! number of [`table`]s (maps from integer, string or byte keys to serde values), declared in
//! [`plugin!`] and reached through the [`Context`]. Both outlive every build, carry their schema
//! number, and migrate up and down when it changes (see the modules).
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
//! free of background threads. Writing to stdout with `println!` leaks a small buffer per reload,
//! as does anything else the plugin allocates and keeps only in a static (a cache in a `OnceLock`):
//! unloading frees the statics, not the heap they point to. `plugin!` declares the crate's global
//! allocator ([`allocator::PluginAllocator`], around the system's or the one its `allocator`
//! names), so a plugin declares none of its own.
//! A plugin must be built with `panic = "unwind"` (the default): the host refuses one built
//! with `panic = "abort"`, whose first panic would end the whole process.
//!
//! A by-value `RString` or `RVec` frees itself through the library that allocated it. A value
//! received from an import is valid for the request: clone it (abi_stable's clones allocate in
//! the cloning plugin) before keeping it in a static, or it would outlive the other plugin's
//! library.
//!
//! # Evolving the API
//!
//! Built plugins keep working across host upgrades as long as these rules hold:
//!
//! 1. [`API_VERSION`] is `MAJOR.MINOR.0`. The host loads a plugin with the same MAJOR and a MINOR
//!    no greater than its own. It reads the plugin's version before abi_stable's layout check and
//!    refuses newer plugins there: abi_stable caches the largest prefix layout it has seen, and
//!    checking a newer plugin's layout, then unloading it, would corrupt later checks.
//! 2. New capabilities are appended as new fields at the end of a prefix type ([`PluginMod`],
//!    [`HostApi`]), after the `last_prefix_field`; that bumps MINOR. Both are
//!    `#[sabi(missing_field(option))]`: a newer host reads a field appended after a plugin was
//!    built as `None` (and a newer plugin never reaches an older host: the gate refuses it).
//!    abi_stable's layout check allows only the loader to be the older side, so for a plugin of
//!    an older minor version the host checks instead that the plugin's root-module fields are
//!    its own first fields, same names and layouts. A field is never removed, reordered or
//!    retyped. Both directions are tested (`tests/integration/evolution.rs`).
//! 3. [`LinkTable`] is built by the host and read by plugins through a reference: fields are
//!    appended at its end (MINOR; `states` came in 2.1, `tables` in 2.2) and never changed, so
//!    a plugin built against an older minor reads the fields it knows at the offsets it knows.
//!    The host's [`table::TableOps`] is read the same way and grows the same way. Every other
//!    type here ([`Context`], [`ExportDecl`], [`Signature`], [`FfiError`], the state and table
//!    declarations, ...) is frozen: changing it bumps MAJOR, and every plugin must be rebuilt.
//! 4. Error kinds are codes ([`ErrorKind`]), not an enum, so new kinds need no layout change;
//!    the same holds for [`Wire`].
//! 5. No `NonExhaustive` enums and no `#[sabi(extra_checks)]`: both keep process-global state
//!    in abi_stable that outlives an unloaded plugin.
//!
//! Version 2.0 made types part of contracts and calls by value; plugins built against 1.x are
//! refused by the gate and must be rebuilt. Version 2.2 added tables (`PluginMod::tables`,
//! `LinkTable::tables`) and [`ErrorKind::TABLE_FULL`]; plugins built against 2.0 and 2.1 run
//! unchanged.

pub mod allocator;
pub mod asynchronous;
pub mod contract;
mod error;
pub mod ffi;
pub mod http;
mod log;
pub mod request;
#[doc(hidden)]
pub mod runtime;
pub mod services;
pub mod state;
pub mod table;

pub use asynchronous::{blocking, sleep};
pub use contract::{Contract, Import};
pub use error::Error;
pub use ffi::{
    Context, ErrorKind, ExportDecl, FfiError, HostApi, HostApiRef, LinkTable, PluginMod,
    PluginModRef, Signature, Wire, API_VERSION,
};
pub use http::{Request, Response};
pub use state::State;
pub use table::{Record, Table};
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
/// - `state` names the plugin's state type, with its migrations (see [`state`]).
/// - `tables` declares one [`Table`] constant per table (`NAME: Table<Key, Value> = "name"`,
///   optionally followed by its migrations `{ up Older => fn, down Older => fn }`, each a
///   `fn(From) -> Result<To, Error>` of one value; see [`table`]).
/// - `imports` declares one [`Import`] constant per contract the plugin calls (`NAME:
///   ContractType`); its slot is its position in the list.
/// - `exports` maps each contract type to a function
///   `fn(&Context<'_>, C::In) -> Result<C::Out, Error>`.
/// - `async_exports` maps each contract declared `json async fn` to an
///   `async fn(Context<'static>, C::In) -> Result<C::Out, Error>` (see [`asynchronous`]).
/// - `routes` maps each HTTP route the plugin serves (`GET "/notes/{id}"`) to a
///   `fn(&Context<'_>, &Request<'_>) -> Result<Response, Error>`, and `async_routes` to an
///   `async fn(Context<'static>, Request<'static>) -> Result<Response, Error>` (see [`http`]).
/// - `init` names a `fn() -> Result<(), Error>` run once per load, before the plugin goes live;
///   `pre_activate`, `post_activate` and `pre_unload` name lifecycle hooks, each a
///   `fn() -> Result<(), Error>` (when each runs: the README, "Hooks").
/// - `allocator` names the plugin's allocator, a unit struct implementing `GlobalAlloc`
///   (`mimalloc::MiMalloc`); the system's by default. The macro declares the crate's
///   `#[global_allocator]` (a [`allocator::PluginAllocator`] around it), so the crate must
///   not declare one.
///
/// The macro records every contract's types and the crate's panic strategy in the root module,
/// and exports it, so the crate must be a `cdylib` that also depends on `abi_stable` (the
/// version `graft-api` uses). See the crate docs for an example.
#[macro_export]
macro_rules! plugin {
    (
        name: $name:literal,
        version: $version:expr,
        $(state: $state:ty $({ $($dir:ident $other:ty => $migrate:path),* $(,)? })?,)?
        $(tables: { $(
            $table:ident : Table<$table_key:ty, $table_value:ty> = $table_name:literal
                $({ $($table_dir:ident $table_other:ty => $table_migrate:path),* $(,)? })?
        ),* $(,)? },)?
        $(imports: { $($import:ident : $import_ty:ty),* $(,)? },)?
        exports: { $($export_ty:ty => $export_fn:path),* $(,)? }
        $(, async_exports: { $($async_ty:ty => $async_fn:path),* $(,)? })?
        $(, routes: { $($route_method:ident $route_path:literal => $route_fn:path),* $(,)? })?
        $(, async_routes: {
            $($async_route_method:ident $async_route_path:literal => $async_route_fn:path),* $(,)?
        })?
        $(, init: $init:path)?
        $(, pre_activate: $pre_activate:path)?
        $(, post_activate: $post_activate:path)?
        $(, pre_unload: $pre_unload:path)?
        $(, allocator: $allocator:path)?
        $(,)?
    ) => {
        #[allow(non_camel_case_types, dead_code, clippy::upper_case_acronyms)]
        #[repr(u32)]
        enum __GraftImportSlot { $($($import,)*)? __End }

        $($(
            #[allow(dead_code)]
            const $import: $crate::Import<$import_ty> =
                $crate::Import::__at(__GraftImportSlot::$import as u32);
        )*)?

        #[allow(non_camel_case_types, dead_code, clippy::upper_case_acronyms)]
        #[repr(u32)]
        enum __GraftTableSlot { $($($table,)*)? __End }

        $($(
            #[allow(dead_code)]
            const $table: $crate::table::Table<$table_key, $table_value> =
                $crate::table::Table::__at(__GraftTableSlot::$table as u32);
        )*)?

        const __GRAFT_MODULE: &$crate::__private::WithMetadata<$crate::PluginMod> =
            &$crate::__private::WithMetadata::new($crate::runtime::plugin_mod(
                $name,
                $version,
                &[$({
                    struct __GraftExport;
                    impl $crate::runtime::Handler for __GraftExport {
                        type Contract = $export_ty;
                        #[inline]
                        fn call(
                            ctx: &$crate::Context<'_>,
                            input: $crate::runtime::In<Self>,
                        ) -> ::core::result::Result<$crate::runtime::Out<Self>, $crate::Error> {
                            $export_fn(ctx, input)
                        }
                    }
                    #[allow(unused_imports)]
                    use $crate::runtime::NoJsonAdapter as _;
                    $crate::runtime::export_decl::<__GraftExport>(
                        <$crate::runtime::JsonAdapter<__GraftExport>>::FUNC,
                    )
                },)* $($({
                    struct __GraftAsyncExport;
                    impl $crate::asynchronous::AsyncHandler for __GraftAsyncExport {
                        type Contract = $async_ty;
                        fn call(
                            ctx: $crate::Context<'static>,
                            input: <$async_ty as $crate::Contract>::In,
                        ) -> impl ::core::future::Future<
                            Output = ::core::result::Result<
                                <$async_ty as $crate::Contract>::Out,
                                $crate::Error,
                            >,
                        > + ::core::marker::Send + 'static {
                            $async_fn(ctx, input)
                        }
                    }
                    $crate::asynchronous::async_export_decl::<__GraftAsyncExport>()
                },)*)?],
                &[$($($crate::contract::signature::<$import_ty>(),)*)?],
                cfg!(panic = "unwind"),
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
                {
                    #[allow(unused_mut, unused_assignments)]
                    let mut state: ::core::option::Option<&'static $crate::state::StateDecl> =
                        ::core::option::Option::None;
                    $(state = ::core::option::Option::Some(&$crate::state::state_decl::<$state>(&[
                        $($($crate::__graft_migration!($dir, $state, $other, $migrate),)*)?
                    ]));)?
                    state
                },
                $crate::runtime::hooks(
                    $crate::__graft_hook!($($pre_activate)?),
                    $crate::__graft_hook!($($post_activate)?),
                    $crate::__graft_hook!($($pre_unload)?),
                ),
                &[$($(
                    $crate::table::table_decl::<$table_key, $table_value>($table_name, &[
                        $($($crate::__graft_table_migration!(
                            $table_dir, $table_value, $table_other, $table_migrate
                        ),)*)?
                    ]),
                )*)?],
                &[$($({
                    extern "C" fn __graft_route(
                        ctx: &$crate::Context<'_>,
                        request: &$crate::http::HttpRequest<'_>,
                    ) -> $crate::__private::RResult<$crate::http::HttpResponse, $crate::FfiError> {
                        $crate::http::run_route(ctx, request, |ctx, request| $route_fn(ctx, request))
                    }
                    $crate::http::route(stringify!($route_method), $route_path, __graft_route)
                },)*)? $($({
                    extern "C" fn __graft_async_route(
                        ctx: $crate::Context<'static>,
                        request: &'static $crate::http::HttpRequest<'static>,
                    ) -> $crate::ffi::FfiFuture<
                        $crate::__private::RResult<$crate::http::HttpResponse, $crate::FfiError>,
                    > {
                        $crate::http::run_async_route(ctx, request, $async_route_fn)
                    }
                    $crate::http::async_route(
                        stringify!($async_route_method),
                        $async_route_path,
                        __graft_async_route,
                    )
                },)*)?],
            ));

        $crate::__graft_allocator!($($allocator)?);

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

/// One migration of a `plugin!` state declaration.
#[doc(hidden)]
#[macro_export]
macro_rules! __graft_migration {
    (up, $state:ty, $other:ty, $migrate:path) => {
        $crate::__graft_migration!(@ UP, $state, $other, $other => $state, $migrate)
    };
    (down, $state:ty, $other:ty, $migrate:path) => {
        $crate::__graft_migration!(@ DOWN, $state, $other, $state => $other, $migrate)
    };
    (@ $dir:ident, $state:ty, $other:ty, $from:ty => $to:ty, $migrate:path) => {
        $crate::state::migration::<$state, $other>($crate::state::Direction::$dir, {
            extern "C" fn __graft_migrate(
                from: *const u8,
                to: *mut u8,
            ) -> $crate::__private::RResult<(), $crate::FfiError> {
                // SAFETY: the host passes a valid value of the type the migration reads and
                // memory for the one it writes, of the layouts it checked against this
                // declaration.
                unsafe { $crate::state::run_migration::<$from, $to>(from, to, $migrate) }
            }
            __graft_migrate
        })
    };
}

/// One migration of a `plugin!` table declaration.
#[doc(hidden)]
#[macro_export]
macro_rules! __graft_table_migration {
    (up, $value:ty, $other:ty, $migrate:path) => {
        $crate::__graft_table_migration!(@ UP, $value, $other, $other => $value, $migrate)
    };
    (down, $value:ty, $other:ty, $migrate:path) => {
        $crate::__graft_table_migration!(@ DOWN, $value, $other, $value => $other, $migrate)
    };
    (@ $dir:ident, $value:ty, $other:ty, $from:ty => $to:ty, $migrate:path) => {
        $crate::table::table_migration::<$value, $other>($crate::state::Direction::$dir, {
            extern "C" fn __graft_migrate(
                from: $crate::__private::RSlice<'_, u8>,
                to: &mut $crate::__private::RVec<u8>,
            ) -> $crate::__private::RResult<(), $crate::FfiError> {
                $crate::table::run_migration::<$from, $to>(from, to, $migrate)
            }
            __graft_migrate
        })
    };
}

/// The plugin's global allocator: `plugin!`'s `allocator`, or the system's, behind the image's
/// arena (see [`allocator`]).
#[doc(hidden)]
#[macro_export]
macro_rules! __graft_allocator {
    () => {
        $crate::__graft_allocator!(::std::alloc::System);
    };
    ($allocator:path) => {
        /// The plugin's allocator, which leaves nothing behind when the library is unloaded.
        #[global_allocator]
        static __GRAFT_ALLOCATOR: $crate::allocator::PluginAllocator<$allocator> =
            $crate::allocator::PluginAllocator::new($allocator);
    };
}

/// One optional lifecycle hook of `plugin!`.
#[doc(hidden)]
#[macro_export]
macro_rules! __graft_hook {
    () => {
        ::core::option::Option::None
    };
    ($hook:path) => {{
        extern "C" fn __graft_hook() -> $crate::__private::RResult<(), $crate::FfiError> {
            $crate::runtime::run_hook($hook)
        }
        ::core::option::Option::Some(__graft_hook as $crate::ffi::HookFn)
    }};
}
