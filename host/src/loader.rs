//! Loading plugin libraries: one of the host's two modules with `unsafe` code (with `typed`).
//!
//! The path from a staged file to a callable plugin, each step able to fail cleanly:
//!
//! 1. `dlopen(RTLD_NOW | RTLD_LOCAL)` of the staged copy (never of cargo's output, which the
//!    next build rewrites in place; and always of a uniquely named copy, since `dlopen` of a
//!    path that is already open returns the image already loaded).
//! 2. Find abi_stable's root-module header and check its abi_stable version.
//! 3. Gate on the plugin's graft API version **before** abi_stable's layout check: abi_stable
//!    caches the largest prefix layout it has seen, process-wide, and a newer plugin that was
//!    layout-checked and then unloaded makes every later check read freed memory.
//! 4. abi_stable's layout check and the plugin's constructor (`init_root_module`; not
//!    `RootModule::load_from*`, which cache one module per type and never unload). For a plugin
//!    built against an older minor version, whose root module has fewer fields than the host's,
//!    abi_stable's check would refuse it (it allows the loader to be the older side only), so
//!    the host compares the plugin's fields with its own first fields (`types.rs`) and then
//!    runs the constructor without abi_stable's check.
//! 5. Check the plugin's panic strategy: one built with `panic = "abort"` would end the whole
//!    process on its first panic, so it is refused here.
//! 6. Copy the declaration (name, version, contracts and their types) into host-owned memory.
//!
//! A [`LoadedPlugin`] owns the library handle and everything taken out of it; no reference into
//! the library escapes it, and the handle is handed to the [`Unloader`] last, when the plugin
//! drops. Its initialiser runs later, once per library (see [`init`](crate::init)).

#![allow(unsafe_code)]

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use abi_stable::library::{AbiHeaderRef, ROOT_MODULE_LOADER_NAME_WITH_NUL};
use abi_stable::StableAbi;
use graft_api::ffi::{ErasedFn, HookFn, Hooks, HostApiRef, JsonFn, PluginModRef};
use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};

use crate::bounded::Bounded;
use crate::deadline::{self, Outcome};
use crate::decl::{self, PluginInfo, RouteSpec, Signature};
use crate::declared_routes::RouteHandler;
use crate::hook::{ffi_result, Hook, HookFailure};
use crate::init::InitCell;
use crate::state::StateInfo;
use crate::table::TableInfo;
use crate::types;
use crate::unload::{Unload, Unloader};

/// Why a plugin library could not be loaded or failed its checks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// `dlopen` refused the file.
    #[error("dlopen failed: {}", Bounded(.0))]
    Open(String),
    /// The library does not export graft's root module.
    #[error("no graft root module: not a plugin built with graft_api::plugin!")]
    NoRootModule,
    /// The root module was built with an incompatible abi_stable.
    #[error("built with an incompatible abi_stable: {}", Bounded(.0))]
    AbiHeader(String),
    /// The plugin speaks another graft API version than the host.
    #[error("built against graft API {}, this host speaks {host} (same major, minor at most the host's)", Bounded(.plugin))]
    ApiVersion {
        /// The plugin's API version.
        plugin: String,
        /// The host's API version.
        host: &'static str,
    },
    /// abi_stable's layout check failed, or the plugin's root-module constructor failed.
    #[error("root module rejected: {}", Bounded(.0))]
    Layout(String),
    /// The plugin was built with `panic = "abort"`.
    #[error("built with panic = \"abort\": its first panic would abort the host; build it with panic = \"unwind\" (the default profile setting)")]
    PanicStrategy,
    /// The plugin's declaration is invalid (bad contract, duplicate export, ...).
    #[error("invalid declaration: {0}")]
    Declaration(String),
}

impl LoadError {
    /// Whether this failure belongs to the version-and-layout check step (as opposed to opening).
    pub(crate) fn is_check(&self) -> bool {
        matches!(
            self,
            Self::ApiVersion { .. } | Self::Layout(_) | Self::PanicStrategy | Self::Declaration(_)
        )
    }
}

/// A loaded, checked plugin library. Shared by every generation that contains it.
pub(crate) struct LoadedPlugin {
    info: PluginInfo,
    sha256: String,
    path: PathBuf,
    /// Implementations of `info.exports`, in the same order.
    exports: Vec<ExportImpl>,
    module: PluginModRef,
    /// The plugin's state declaration, if it has state.
    state: Option<StateInfo>,
    /// The plugin's tables, in the order it declares them.
    tables: Vec<TableInfo>,
    /// Handlers of `info.routes`, in the same order.
    routes: Vec<RouteHandler>,
    hooks: Hooks,
    init: InitCell,
    unloader: Unloader,
    /// Released last, in `Drop`, after nothing above can be used any more.
    library: Option<Library>,
}

impl fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.info.name)
            .field("version", &self.info.version)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    /// Loads and checks the staged library at `path` (steps 1 to 6 of the module docs).
    ///
    /// The plugin's initialiser is not run; see [`LoadedPlugin::run_init`].
    pub(crate) fn load(path: &Path, sha256: &str, unloader: &Unloader) -> Result<Self, LoadError> {
        // SAFETY: loading a library runs its ELF constructors. The file is a staged copy that
        // passed the ELF check and its manifest checksum; running the code of a release the
        // operator deployed is the premise of graft. RTLD_LOCAL keeps its symbols out of the
        // global namespace, RTLD_NOW fails here, not mid-request, on an unresolved symbol.
        let library = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }
            .map_err(|e| LoadError::Open(e.to_string()))?;
        // If anything below fails, `library` is dropped (closed) on return: nothing taken out
        // of it survives that return.
        // SAFETY: the symbol abi_stable's `export_root_module` emits is a `LibHeader` static,
        // which starts with an `AbiHeader`; `AbiHeaderRef` is a pointer to exactly that, and
        // libloading hands out the symbol's address. The reference is used only while `library`
        // is open.
        let header: AbiHeaderRef =
            unsafe { library.get::<AbiHeaderRef>(ROOT_MODULE_LOADER_NAME_WITH_NUL.as_bytes()) }
                .map(|symbol| *symbol)
                .map_err(|_| LoadError::NoRootModule)?;
        let lib_header = header
            .upgrade()
            .map_err(|e| LoadError::AbiHeader(e.to_string()))?;

        // Copied out at once: the string lives in the library.
        let api_version = lib_header.version_strings().version.as_str().to_owned();
        let minor = check_api_version(&api_version)?;

        // Version check (again, abi_stable's own), layout check, then the plugin's constructor.
        // Errors are turned into strings at once: abi_stable's errors may point into the library.
        let module = if minor == ApiMinor::Older {
            // abi_stable's check refuses a library with fewer root-module fields than the
            // loader; graft's promise is the other way round, so it compares the fields the
            // plugin has with the host's first fields itself (`types::check_older_root`).
            let layout = lib_header
                .root_mod_consts()
                .layout()
                .into_option()
                .ok_or_else(|| LoadError::Layout("the root module carries no layout".into()))?;
            types::check_older_root(<PluginModRef as StableAbi>::LAYOUT, layout)
                .map_err(LoadError::Layout)?;
            // SAFETY: the plugin's root module is a prefix of the host's `PluginMod` (checked
            // just above, field by field), and a prefix type is read only through accessors
            // that check which fields the plugin's module has.
            unsafe { lib_header.init_root_module_with_unchecked_layout::<PluginModRef>() }
                .map_err(|e| LoadError::Layout(e.to_string()))?
        } else {
            lib_header
                .init_root_module::<PluginModRef>()
                .map_err(|e| LoadError::Layout(e.to_string()))?
        };

        if !module.panic_unwind() {
            return Err(LoadError::PanicStrategy);
        }
        let (mut info, exports) = read_declaration(module, api_version)?;
        let (specs, routes) =
            crate::declared_routes::read_routes(module).map_err(LoadError::Declaration)?;
        info.routes = specs;
        let state = match module.state().flatten() {
            Some(decl) => Some(StateInfo::read(decl).map_err(LoadError::Declaration)?),
            None => None,
        };
        let hooks = module.hooks().unwrap_or_default();
        let tables = read_tables(module)?;
        Ok(Self {
            state,
            tables,
            routes,
            hooks,
            info,
            sha256: sha256.to_owned(),
            path: path.to_owned(),
            exports,
            module,
            init: InitCell::default(),
            unloader: unloader.clone(),
            library: Some(library),
        })
    }

    /// Calls the plugin's initialiser, which routes its logs to the host and runs its own
    /// `init`; panics are caught on the plugin's side. Called once per library, through
    /// [`LoadedPlugin::init_cell`].
    pub(crate) fn run_init(&self, host: HostApiRef) -> Result<(), String> {
        ffi_result((self.module.init())(host))
    }

    /// The plugin's tables.
    pub(crate) fn tables(&self) -> &[TableInfo] {
        &self.tables
    }

    /// The plugin's table `name`, if it declares one.
    pub(crate) fn table(&self, name: &str) -> Option<&TableInfo> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// The plugin's state declaration.
    pub(crate) fn state(&self) -> Option<&StateInfo> {
        self.state.as_ref()
    }

    /// Runs one of the plugin's lifecycle hooks, if it declares it, on a thread of its own and
    /// waits for it at most `limit` (panics are caught on the plugin's side). A hook past its
    /// deadline runs on, holding the plugin, so its library stays loaded until it returns.
    pub(crate) fn run_hook_within(
        self: &Arc<Self>,
        hook: Hook,
        limit: Duration,
    ) -> Result<(), HookFailure> {
        let Some(f) = self.hook(hook) else {
            return Ok(());
        };
        let plugin = Arc::clone(self);
        let late = move |result: Result<(), String>| {
            tracing::warn!(
                plugin = %plugin.info.name,
                hook = hook.name(),
                ?result,
                "hook returned after its deadline"
            );
        };
        match deadline::run_within("graft-hook", limit, move || ffi_result(f()), late) {
            Outcome::Done(result) => result.map_err(HookFailure::Failed),
            Outcome::TimedOut => Err(HookFailure::TimedOut),
        }
    }

    fn hook(&self, hook: Hook) -> Option<HookFn> {
        match hook {
            Hook::PreActivate => self.hooks.pre_activate,
            Hook::PostActivate => self.hooks.post_activate,
            Hook::PreUnload => self.hooks.pre_unload,
        }
    }

    /// Where this library's initialiser is.
    pub(crate) fn init_cell(&self) -> &InitCell {
        &self.init
    }

    pub(crate) fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Whether it declares tables.
    pub(crate) fn has_tables(&self) -> bool {
        !self.tables.is_empty()
    }

    pub(crate) fn sha256(&self) -> &str {
        &self.sha256
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The plugin's routes with their handlers.
    pub(crate) fn routes(&self) -> impl Iterator<Item = (&RouteSpec, RouteHandler)> {
        self.info.routes.iter().zip(self.routes.iter().copied())
    }

    pub(crate) fn exports(&self) -> impl Iterator<Item = (&Signature, ExportImpl)> {
        self.info.exports.iter().zip(self.exports.iter().copied())
    }
}

impl Drop for LoadedPlugin {
    fn drop(&mut self) {
        if let Some(library) = self.library.take() {
            self.unloader.unload(Unload {
                library,
                pre_unload: self.hook(Hook::PreUnload),
                plugin: self.info.name.clone(),
                version: self.info.version.clone(),
                path: self.path.clone(),
            });
        }
    }
}

/// How a plugin's API version that passed the gate relates to the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApiMinor {
    /// The host's own version: abi_stable's layout check applies as it is.
    Same,
    /// An older minor version: its root module may have fewer fields than the host's.
    Older,
}

/// The host accepts plugins of its own major API version and a minor no greater than its own.
fn check_api_version(plugin: &str) -> Result<ApiMinor, LoadError> {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut parts = v.split('.');
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    let host = graft_api::API_VERSION;
    match (parse(plugin), parse(host)) {
        (Some((pmaj, pmin)), Some((hmaj, hmin))) if pmaj == hmaj && pmin == hmin => {
            Ok(ApiMinor::Same)
        }
        (Some((pmaj, pmin)), Some((hmaj, hmin))) if pmaj == hmaj && pmin < hmin => {
            Ok(ApiMinor::Older)
        }
        _ => Err(LoadError::ApiVersion {
            plugin: plugin.to_owned(),
            host,
        }),
    }
}

/// The tables a plugin declares (none for one built before tables existed): each name once.
fn read_tables(module: PluginModRef) -> Result<Vec<TableInfo>, LoadError> {
    let Some(decls) = module.tables() else {
        return Ok(Vec::new());
    };
    let mut tables: Vec<TableInfo> = Vec::with_capacity(decls.len());
    for decl in decls.iter() {
        let info = TableInfo::read(decl).map_err(LoadError::Declaration)?;
        if tables.iter().any(|t| t.name == info.name) {
            return Err(LoadError::Declaration(format!(
                "table {} is declared twice",
                info.name
            )));
        }
        tables.push(info);
    }
    Ok(tables)
}

/// The implementation of one export, taken out of its library.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ExportImpl {
    /// The typed function, of the type the export's signature describes.
    pub(crate) func: ErasedFn,
    /// Its JSON adapter, if its types are serde-capable.
    pub(crate) json: Option<JsonFn>,
}

fn read_declaration(
    module: PluginModRef,
    api_version: String,
) -> Result<(PluginInfo, Vec<ExportImpl>), LoadError> {
    let name = module.name().as_str().to_owned();
    decl::check_plugin_name(&name).map_err(LoadError::Declaration)?;
    let version = module.version().as_str().to_owned();
    let mut exports = Vec::new();
    let mut funcs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for decl in module.exports().as_slice() {
        let signature = types::signature(&decl.signature).map_err(LoadError::Declaration)?;
        if !seen.insert(signature.contract.clone()) {
            return Err(LoadError::Declaration(format!(
                "exports {} twice",
                signature.contract
            )));
        }
        exports.push(signature);
        funcs.push(ExportImpl {
            func: decl.func,
            json: decl.json,
        });
    }
    let imports = module
        .imports()
        .as_slice()
        .iter()
        .map(|sig| types::signature(sig).map_err(LoadError::Declaration))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((
        PluginInfo {
            name,
            version,
            api_version,
            exports,
            imports,
            routes: Vec::new(),
        },
        funcs,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions_newer_than_the_host_or_of_another_major_are_rejected() {
        let host = graft_api::API_VERSION;
        assert!(check_api_version(host).is_ok());
        let (major, minor) = {
            let mut p = host.split('.').map(|n| n.parse::<u64>().unwrap());
            (p.next().unwrap(), p.next().unwrap())
        };
        assert!(check_api_version(&format!("{major}.{}.0", minor + 1)).is_err());
        assert!(check_api_version(&format!("{}.0.0", major + 1)).is_err());
        assert!(check_api_version("garbage").is_err());
        if minor > 0 {
            assert!(check_api_version(&format!("{major}.{}.0", minor - 1)).is_ok());
        }
    }
}
