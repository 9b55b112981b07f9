//! The types that cross the boundary between the host and a plugin.
//!
//! Everything here is `#[repr(C)]` and derives [`StableAbi`], so abi_stable can check at load time
//! that the host and the plugin agree on every layout. Each side frees only what it allocated:
//! buffers travel as [`RVec`] (which carries its own deallocator) and borrowed data as [`RSlice`] /
//! [`RStr`]. The rules for changing these types without breaking built plugins are in the crate
//! docs ("Evolving the API").

// abi_stable's derive emits `unsafe impl StableAbi`; the unsafety is the derive's, checked by it.
#![allow(unsafe_code)]

use abi_stable::{
    library::RootModule,
    sabi_types::VersionStrings,
    std_types::{ROption, RResult, RSlice, RStr, RString, RVec},
    type_layout::TypeLayout,
    StableAbi,
};
pub use async_ffi::FfiFuture;

use crate::http::RouteDecl;
use crate::state::{StateDecl, StateSlot};
use crate::table::{TableDecl, TableSlot};

/// The plugin ABI version, `MAJOR.MINOR.0`: independent of the crate's own version.
///
/// MINOR goes up when a field is appended to a prefix type ([`PluginMod`], [`HostApi`]); MAJOR
/// when anything else in this module changes. The host loads plugins with the same MAJOR and a
/// MINOR no greater than its own, and rejects the rest before abi_stable's layout check runs.
#[cfg(not(feature = "next-api"))]
pub const API_VERSION: &str = "2.3.0";
/// The plugin ABI version (test build one minor version ahead; see the `next-api` feature).
#[cfg(feature = "next-api")]
pub const API_VERSION: &str = "2.4.0";

/// A typed export function with its type erased: what export declarations and link tables hold.
///
/// Its real type is `extern "C" fn(&Context<'_>, In) -> RResult<Out, FfiError>` for a
/// [`Wire::BY_VALUE`] contract and a [`JsonFn`] for a [`Wire::JSON`] one, where `In` and `Out`
/// are the types the declaring [`Signature`] describes. Only a caller that checked the signature
/// (the linker for imports, a typed export handle for the host) turns it back into that type.
pub type ErasedFn = extern "C" fn();

/// An export called with JSON: JSON input in, JSON output or an error out.
///
/// Every [`Wire::JSON`] export is one; a [`Wire::BY_VALUE`] export has one beside it (its JSON
/// adapter) when its types are serde-capable. The HTTP edge calls exports through it.
pub type JsonFn =
    extern "C" fn(ctx: &Context<'_>, input: RSlice<'_, u8>) -> RResult<RVec<u8>, FfiError>;

/// An async export called with JSON: JSON input in, a future of the JSON output out.
///
/// The future crosses as async-ffi's [`FfiFuture`] (a `#[repr(C)]` vtable of poll and drop,
/// with the waker passed the same way), and is polled by the host's runtime. `ctx` is valid
/// as long as the caller keeps the generation pinned, which it does until the future is done
/// or dropped: the `'static` only says that the future may hold it.
pub type AsyncJsonFn =
    extern "C" fn(ctx: Context<'static>, input: RVec<u8>) -> FfiFuture<RResult<RVec<u8>, FfiError>>;

/// A host service future: done, or the host's error.
pub type HostFuture = FfiFuture<RResult<(), FfiError>>;

/// Work a plugin hands to the host's blocking pool: `run(data)` is called once, on a pool
/// thread.
#[repr(C)]
#[derive(StableAbi)]
pub struct BlockingJob {
    /// The work's state, owned by the job until `run` takes it.
    pub data: *mut (),
    /// Runs the work (and frees `data`); catches its own panics.
    pub run: extern "C" fn(data: *mut ()),
}

// SAFETY: the plugin side builds a job only from `Send` work (`graft_api::blocking`).
unsafe impl Send for BlockingJob {}

/// Signature of a plugin's initialiser, run once per load after the release linked.
pub type InitFn = extern "C" fn(host: HostApiRef) -> RResult<(), FfiError>;

/// The root module of a plugin: what `graft_api::plugin!` exports and the host loads.
///
/// A prefix type: new fields are only ever appended after `init`, and read as `None` from a
/// plugin built before they existed.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef, prefix_fields = PluginModPrefix)))]
#[sabi(missing_field(option))]
pub struct PluginMod {
    /// The plugin's name, unique within a generation (`foo`).
    pub name: RStr<'static>,
    /// The plugin's own semver version (`1.2.0`).
    pub version: RStr<'static>,
    /// What the plugin provides, by contract (`foo@1`) and types.
    pub exports: RSlice<'static, ExportDecl>,
    /// What the plugin calls, by contract (`bar@1`) and types, in slot order.
    pub imports: RSlice<'static, Signature>,
    /// Whether the plugin was built with `panic = "unwind"`. The host refuses one that was not:
    /// its first panic would abort the whole process instead of failing one call.
    pub panic_unwind: bool,
    /// Runs once after the release linked and before it goes live.
    #[sabi(last_prefix_field)]
    pub init: extern "C" fn(host: HostApiRef) -> RResult<(), FfiError>,
    /// The plugin's state type, held by the host (since 2.1).
    pub state: Option<&'static StateDecl>,
    /// The plugin's lifecycle hooks (since 2.1).
    pub hooks: Hooks,
    /// The plugin's tables, held by the host (since 2.2).
    pub tables: RSlice<'static, TableDecl>,
    /// The plugin's HTTP routes, which go live and leave with its generation (since 2.3).
    pub routes: RSlice<'static, RouteDecl>,
    /// Test-only field: the one field a plugin built with `next-api` has and the host lacks.
    #[cfg(feature = "next-api")]
    pub next_api_field: u64,
}

impl RootModule for PluginModRef {
    abi_stable::declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "graft_plugin";
    const NAME: &'static str = "graft_plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new(API_VERSION);
}

/// How a contract's values cross the boundary.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Wire(pub u8);

impl Wire {
    /// By value: `#[repr(C)]` types deriving `StableAbi`, passed as they are, no encoding.
    pub const BY_VALUE: Self = Self(1);
    /// As JSON bytes: serde types, encoded by the caller and decoded by the callee.
    pub const JSON: Self = Self(2);
    /// As JSON bytes, to an `async` export: the call returns a future the caller polls (an
    /// [`AsyncJsonFn`]). Since 2.1.
    pub const ASYNC_JSON: Self = Self(3);
}

/// What crosses for one type of a signature: enough for the host to compare two declarations
/// of it and to name it in an error.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct TypeDesc {
    /// abi_stable's layout of the type, for a [`Wire::BY_VALUE`] contract.
    pub layout: Option<&'static TypeLayout>,
    /// For a [`Wire::JSON`] contract: returns the type's name and its serde shape, as JSON
    /// (`{"name": .., "shape": ..}`).
    pub describe: Option<extern "C" fn() -> RString>,
}

impl std::fmt::Debug for TypeDesc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.layout {
            Some(layout) => write!(f, "TypeDesc({})", layout.full_type()),
            None => f.write_str("TypeDesc(json)"),
        }
    }
}

/// A contract as one plugin declares it: its name and the types it carries.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct Signature {
    /// The contract, `name@N`.
    pub contract: RStr<'static>,
    /// How values cross.
    pub wire: Wire,
    /// The input type.
    pub input: TypeDesc,
    /// The output type.
    pub output: TypeDesc,
}

/// One export: its signature, its typed implementation and, when its types are serde-capable,
/// a JSON adapter for the HTTP edge.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct ExportDecl {
    /// The contract and its types.
    pub signature: Signature,
    /// The implementation, of the type `signature` describes (see [`ErasedFn`]).
    pub func: extern "C" fn(),
    /// The implementation called with JSON.
    pub json: Option<
        extern "C" fn(ctx: &Context<'_>, input: RSlice<'_, u8>) -> RResult<RVec<u8>, FfiError>,
    >,
}

impl std::fmt::Debug for ExportDecl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportDecl")
            .field("signature", &self.signature)
            .finish_non_exhaustive()
    }
}

/// The link table of one generation: for every plugin, its imports bound to exports.
///
/// Built by the host when a release links and owned by that generation; plugins only read it.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct LinkTable {
    /// Indexed by the plugin's position in the generation.
    pub plugins: RVec<PluginLinks>,
    /// Each plugin's state, by position (since 2.1: appended, which the host's building of the
    /// table and the plugins' reading it by reference allow).
    pub states: RVec<StateSlot>,
    /// Each plugin's tables, by position, then in the order the plugin declared them (since
    /// 2.2).
    pub tables: RVec<RVec<TableSlot>>,
}

/// A lifecycle hook: runs without arguments, may refuse with an error.
pub type HookFn = extern "C" fn() -> RResult<(), FfiError>;

/// A plugin's lifecycle hooks (Linux livepatch's callbacks), each optional.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Default)]
pub struct Hooks {
    /// After the release linked and its state migrated, before it goes live; an error vetoes
    /// the release.
    pub pre_activate: Option<extern "C" fn() -> RResult<(), FfiError>>,
    /// Right after the release went live; an error is logged.
    pub post_activate: Option<extern "C" fn() -> RResult<(), FfiError>>,
    /// Before the plugin's library is released (its last generation dropped); an error is
    /// logged.
    pub pre_unload: Option<extern "C" fn() -> RResult<(), FfiError>>,
}

/// The bound imports of one plugin, in the order the plugin declared them.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct PluginLinks {
    /// Slot `i` serves the plugin's `i`-th import.
    pub imports: RVec<Binding>,
}

/// An import bound to an export of the same generation, whose signature the host checked
/// against the import's.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct Binding {
    /// The export's typed implementation; `None` for an import left open (a partial release
    /// under `graft check`), which fails with [`ErrorKind::UNBOUND_IMPORT`] when called.
    pub func: Option<extern "C" fn()>,
    /// Position of the exporting plugin in the generation (its [`Context`] when called).
    pub plugin: u32,
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binding")
            .field("bound", &self.func.is_some())
            .field("plugin", &self.plugin)
            .finish()
    }
}

/// What an export receives: the generation its call runs in, and which plugin it is.
///
/// Import calls made through a context go to the same generation as the call that produced it,
/// whatever the host publishes meanwhile. Made by the host per entry call, and by the plugin side
/// per import call; two words, on the stack.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct Context<'a> {
    /// The pinned generation's link table.
    pub table: &'a LinkTable,
    /// The position of the called plugin in `table`.
    pub plugin: u32,
}

/// Services the host offers every plugin, handed to its initialiser.
///
/// A prefix type: new services are only ever appended, and read as `None` by a plugin from a
/// host built before they existed.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = HostApiRef, prefix_fields = HostApiPrefix)))]
#[sabi(missing_field(option))]
pub struct HostApi {
    /// Emits one log event into the host's `tracing` subscriber.
    pub log: extern "C" fn(record: LogRecord<'_>),
    /// Whether the host's subscriber wants events of this level and target.
    #[sabi(last_prefix_field)]
    pub log_enabled: extern "C" fn(level: u8, target: RStr<'_>) -> bool,
    /// A future that completes after `millis` milliseconds, on the host's timer (since 2.1).
    pub sleep: extern "C" fn(millis: u64) -> HostFuture,
    /// A future that runs `job` on the host's blocking pool and completes when it returned
    /// (since 2.1).
    pub run_blocking: extern "C" fn(job: BlockingJob) -> HostFuture,
    /// The context of the request the calling thread serves now, if any (since 2.3).
    pub request_context: extern "C" fn() -> ROption<RequestInfo>,
}

/// The context of one request, as the host hands it to a plugin: copies the plugin owns.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct RequestInfo {
    /// The request's id (its `x-request-id`, or one the host made).
    pub id: RString,
    /// The W3C `traceparent` of the host's request span: what calls to the outside send on.
    pub traceparent: RString,
    /// Milliseconds left before the request's deadline; `u64::MAX` when it has none.
    pub deadline_ms: u64,
}

/// A log event from a plugin, already formatted.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct LogRecord<'a> {
    /// The plugin's name.
    pub plugin: RStr<'a>,
    /// 1 = error, 2 = warn, 3 = info, 4 = debug, 5 = trace (see [`level_to_u8`]).
    pub level: u8,
    /// The event's `tracing` target inside the plugin (its module path).
    pub target: RStr<'a>,
    /// The event's message and fields, formatted.
    pub message: RStr<'a>,
}

/// Encodes a `tracing` level for [`LogRecord::level`].
pub fn level_to_u8(level: &tracing_core::Level) -> u8 {
    match *level {
        tracing_core::Level::ERROR => 1,
        tracing_core::Level::WARN => 2,
        tracing_core::Level::INFO => 3,
        tracing_core::Level::DEBUG => 4,
        _ => 5,
    }
}

/// Decodes [`LogRecord::level`]; unknown values read as `TRACE`.
pub fn level_from_u8(level: u8) -> tracing_core::Level {
    match level {
        1 => tracing_core::Level::ERROR,
        2 => tracing_core::Level::WARN,
        3 => tracing_core::Level::INFO,
        4 => tracing_core::Level::DEBUG,
        _ => tracing_core::Level::TRACE,
    }
}

/// An error crossing the boundary: a kind and a message.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct FfiError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Human-readable detail.
    pub message: RString,
}

/// The kind of an error, as a stable code.
///
/// A newtype over `u8` rather than an enum so that new kinds can be added without changing the
/// layout; unknown codes display as `error code N`.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorKind(pub u8);

impl ErrorKind {
    /// The plugin's function failed (`graft serve`: 500).
    pub const PLUGIN: Self = Self(1);
    /// The plugin panicked; the panic was caught at the boundary (500).
    pub const PANIC: Self = Self(2);
    /// The JSON input of an export could not be decoded as its input type: the caller's
    /// fault (400 when the caller is an HTTP client).
    pub const BAD_INPUT: Self = Self(3);
    /// The output could not be encoded (500).
    pub const BAD_OUTPUT: Self = Self(4);
    /// An import slot the plugin called is not bound (500).
    pub const UNBOUND_IMPORT: Self = Self(5);
    /// The generation does not export the called contract (host side only; 404).
    pub const NOT_EXPORTED: Self = Self(6);
    /// What the request names does not exist (404).
    pub const NOT_FOUND: Self = Self(7);
    /// The request conflicts with the current state (409).
    pub const CONFLICT: Self = Self(8);
    /// The request is well-formed but its content is invalid (422).
    pub const INVALID: Self = Self(9);
    /// The plugin cannot serve now; the caller may retry (503).
    pub const UNAVAILABLE: Self = Self(10);
    /// A bug between plugins: an import's JSON failed to encode or decode, or its callee
    /// refused the input the caller produced (500).
    pub const INTERNAL: Self = Self(11);
    /// A table is at its limit of entries or bytes; nothing was written (507). Since 2.2.
    pub const TABLE_FULL: Self = Self(12);
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match *self {
            Self::PLUGIN => "plugin error",
            Self::PANIC => "panic",
            Self::BAD_INPUT => "bad input",
            Self::BAD_OUTPUT => "bad output",
            Self::UNBOUND_IMPORT => "unbound import",
            Self::NOT_EXPORTED => "not exported",
            Self::NOT_FOUND => "not found",
            Self::CONFLICT => "conflict",
            Self::INVALID => "invalid",
            Self::UNAVAILABLE => "unavailable",
            Self::INTERNAL => "internal error",
            Self::TABLE_FULL => "table full",
            Self(code) => return write!(f, "error code {code}"),
        };
        f.write_str(name)
    }
}
