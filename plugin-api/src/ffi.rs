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
    std_types::{RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};

/// The plugin ABI version, `MAJOR.MINOR.0`: independent of the crate's own version.
///
/// MINOR goes up when a field is appended to a prefix type ([`PluginMod`], [`HostApi`]); MAJOR
/// when anything else in this module changes. The host loads plugins with the same MAJOR and a
/// MINOR no greater than its own, and rejects the rest before abi_stable's layout check runs.
#[cfg(not(feature = "next-api"))]
pub const API_VERSION: &str = "1.0.0";
/// The plugin ABI version (test build one minor version ahead; see the `next-api` feature).
#[cfg(feature = "next-api")]
pub const API_VERSION: &str = "1.1.0";

/// Signature of every plugin export (spelled out in the fields that hold one: abi_stable's
/// derive reads function-pointer types only when written inline): JSON input in, JSON output or an error out.
///
/// The [`Context`] gives the export its imports, bound in the caller's generation.
pub type ExportFn =
    extern "C" fn(ctx: &Context<'_>, input: RSlice<'_, u8>) -> RResult<RVec<u8>, FfiError>;

/// Signature of a plugin's initialiser, run once per load after the release linked.
pub type InitFn = extern "C" fn(host: HostApiRef) -> RResult<(), FfiError>;

/// The root module of a plugin: what `graft_api::plugin!` exports and the host loads.
///
/// A prefix type: new fields are only ever appended after `init`.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef, prefix_fields = PluginModPrefix)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// The plugin's name, unique within a generation (`foo`).
    pub name: RStr<'static>,
    /// The plugin's own semver version (`1.2.0`).
    pub version: RStr<'static>,
    /// What the plugin provides, by contract (`foo@1`).
    pub exports: RSlice<'static, ExportDecl>,
    /// What the plugin calls, by contract (`bar@1`), in slot order.
    pub imports: RSlice<'static, RStr<'static>>,
    /// Runs once after the release linked and before it goes live.
    #[sabi(last_prefix_field)]
    pub init: extern "C" fn(host: HostApiRef) -> RResult<(), FfiError>,
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

/// One export: a contract and the function that implements it.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct ExportDecl {
    /// The contract, `name@N`.
    pub contract: RStr<'static>,
    /// The implementation.
    pub func:
        extern "C" fn(ctx: &Context<'_>, input: RSlice<'_, u8>) -> RResult<RVec<u8>, FfiError>,
}

impl std::fmt::Debug for ExportDecl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportDecl")
            .field("contract", &self.contract)
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
}

/// The bound imports of one plugin, in the order the plugin declared them.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct PluginLinks {
    /// Slot `i` serves the plugin's `i`-th import.
    pub imports: RVec<Binding>,
}

/// An import bound to an export of the same generation.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct Binding {
    /// The export's implementation.
    pub func:
        extern "C" fn(ctx: &Context<'_>, input: RSlice<'_, u8>) -> RResult<RVec<u8>, FfiError>,
    /// Position of the exporting plugin in the generation (its [`Context`] when called).
    pub plugin: u32,
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binding")
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
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
/// A prefix type: new services are only ever appended.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = HostApiRef, prefix_fields = HostApiPrefix)))]
#[sabi(missing_field(panic))]
pub struct HostApi {
    /// Emits one log event into the host's `tracing` subscriber.
    pub log: extern "C" fn(record: LogRecord<'_>),
    /// Whether the host's subscriber wants events of this level and target.
    #[sabi(last_prefix_field)]
    pub log_enabled: extern "C" fn(level: u8, target: RStr<'_>) -> bool,
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
    /// The plugin's function returned an error.
    pub const PLUGIN: Self = Self(1);
    /// The plugin panicked; the panic was caught at the boundary.
    pub const PANIC: Self = Self(2);
    /// The input could not be decoded as the export's input type.
    pub const BAD_INPUT: Self = Self(3);
    /// The output could not be encoded.
    pub const BAD_OUTPUT: Self = Self(4);
    /// An import slot the plugin called is not bound (a plugin/host mismatch).
    pub const UNBOUND_IMPORT: Self = Self(5);
    /// The generation does not export the called contract (host side only).
    pub const NOT_EXPORTED: Self = Self(6);
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
            Self(code) => return write!(f, "error code {code}"),
        };
        f.write_str(name)
    }
}
