//! Generations: immutable snapshots of the loaded plugins and their links, and the pins that
//! hold them.
//!
//! A [`Generation`] never changes after it is published. A request takes a pin (see
//! [`crate::live::pin`]) once, at its start, and makes every call through it, so every call of the
//! request, and every import call those make, runs in that generation.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use abi_stable::std_types::{RResult, RSlice};
use graft_api::ffi::{Context, LinkTable};
use graft_api::state::StateSlot;
use serde::{de::DeserializeOwned, Serialize};

use crate::decl::{Contract, ContractError, PluginInfo};
use crate::error::CallError;
use crate::link::{Entry, LinkReport, Linked};
use crate::live::calls::{Calls, Reach};
use crate::live::route::Routes;
use crate::loader::LoadedPlugin;
use crate::provided::Provided;
use crate::state::StateCell;
use crate::table::{self, Table};

/// What a generation holds for its plugins in host memory, by plugin position: their state
/// cells and their tables; and the routes they serve.
#[derive(Default)]
pub(crate) struct Held {
    pub(crate) states: Vec<Option<Arc<StateCell>>>,
    pub(crate) tables: Vec<Vec<Arc<Table>>>,
    pub(crate) routes: Routes,
}

/// An immutable set of loaded plugins and the link table that binds them.
pub struct Generation {
    id: u64,
    release: Option<String>,
    created: Instant,
    created_at: SystemTime,
    table: LinkTable,
    /// Indexed by [`Export`] id. Every contract this generation exports was numbered before
    /// the table was built, so an id past its end is a contract it does not export.
    entries: Vec<Option<Entry>>,
    report: LinkReport,
    /// Each plugin's state cell, by position (the link table's slots point into them).
    states: Vec<Option<Arc<StateCell>>>,
    /// Each plugin's tables, by position (the link table's table slots point at them).
    tables: Vec<Vec<Arc<Table>>>,
    /// What a call entering through each plugin can reach, by position.
    reach: Vec<Reach>,
    /// The HTTP routes its plugins serve.
    routes: Routes,
    /// What the host provides that the link table binds to (kept for as long as it).
    _provided: Option<Arc<Provided>>,
    /// The host's calls in flight, where owned pins on this generation register.
    pub(crate) calls: Arc<Calls>,
    /// When it went live, if it did.
    published: OnceLock<Instant>,
    /// Replaced by a release that migrated state or tables: a pin taken on it from then on
    /// would run on state the migration already read, so the gate admits none.
    retired: AtomicBool,
    /// Dropped last: everything above may point into these libraries.
    plugins: Vec<Arc<LoadedPlugin>>,
}

impl fmt::Debug for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Generation")
            .field("id", &self.id)
            .field("release", &self.release)
            .field("plugins", &self.plugins)
            .finish_non_exhaustive()
    }
}

impl Generation {
    pub(crate) fn empty(calls: Arc<Calls>) -> Self {
        Self::new(
            0,
            None,
            Linked::default(),
            Vec::new(),
            Held::default(),
            &Exports::default(),
            calls,
        )
    }

    pub(crate) fn new(
        id: u64,
        release: Option<String>,
        linked: Linked,
        plugins: Vec<Arc<LoadedPlugin>>,
        held: Held,
        names: &Exports,
        calls: Arc<Calls>,
    ) -> Self {
        let Held {
            states,
            tables,
            routes,
        } = held;
        let mut linked = linked;
        linked.table.tables = tables
            .iter()
            .map(|tables| tables.iter().map(table::slot).collect())
            .collect();
        let reach = reach(&linked.table);
        linked.table.states = plugins
            .iter()
            .zip(&states)
            .map(|(plugin, cell)| match (plugin.state(), cell) {
                (Some(info), Some(cell)) => info.slot(cell),
                _ => StateSlot::empty(),
            })
            .collect();
        let entries = names
            .number_all(linked.exports.keys())
            .iter()
            .map(|c| linked.exports.get(c).copied())
            .collect();
        Self {
            id,
            release,
            created: Instant::now(),
            created_at: SystemTime::now(),
            table: linked.table,
            entries,
            report: linked.report,
            published: OnceLock::new(),
            retired: AtomicBool::new(false),
            plugins,
            states,
            tables,
            reach,
            routes,
            _provided: linked.provided,
            calls,
        }
    }

    /// Table `table` of the plugin named `plugin`, with the plugin.
    pub(crate) fn table_of(
        &self,
        plugin: &str,
        table: &str,
    ) -> Option<(&Arc<Table>, &Arc<LoadedPlugin>)> {
        let at = self.plugins.iter().position(|p| p.info().name == plugin)?;
        let tables = self.tables.get(at)?;
        tables
            .iter()
            .find(|t| t.name == table)
            .map(|t| (t, &self.plugins[at]))
    }

    /// Every table of the generation's plugins.
    pub(crate) fn tables(&self) -> impl Iterator<Item = &Arc<Table>> {
        self.tables.iter().flatten()
    }

    /// The HTTP routes its plugins serve: a request finds its route here, in the generation
    /// it pinned.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// The link table calls into this generation run in.
    pub(crate) fn link_table(&self) -> &LinkTable {
        &self.table
    }

    /// What a call entering through the plugin at `position` can reach.
    pub(crate) fn reach_of_plugin(&self, position: u32) -> Reach {
        self.reach
            .get(position as usize)
            .copied()
            .unwrap_or(Reach::NONE)
    }

    /// What a call entering through `export` can reach: [`Reach::NONE`] if this generation
    /// does not export it.
    pub(crate) fn reach_of(&self, export: &Export) -> Reach {
        self.entries
            .get(export.id as usize)
            .copied()
            .flatten()
            .and_then(|entry| self.reach.get(entry.plugin as usize).copied())
            .unwrap_or(Reach::NONE)
    }

    /// The positions of the plugins named `names` in this generation, as a mask ([`Reach`]).
    pub(crate) fn mask_of<'n>(&self, names: impl IntoIterator<Item = &'n str>) -> u64 {
        let mut mask = 0;
        for name in names {
            if let Some(at) = self.plugins.iter().position(|p| p.info().name == name) {
                mask |= 1u64
                    .checked_shl(u32::try_from(at).unwrap_or(u32::MAX))
                    .unwrap_or(u64::MAX);
            }
        }
        mask
    }

    /// The state cell of the plugin named `name`, with the plugin.
    pub(crate) fn state_of(&self, name: &str) -> Option<(&Arc<StateCell>, &Arc<LoadedPlugin>)> {
        self.plugins
            .iter()
            .zip(&self.states)
            .find(|(p, _)| p.info().name == name)
            .and_then(|(p, cell)| cell.as_ref().map(|c| (c, p)))
    }

    /// The state cells of the generation's plugins that are saved across restarts.
    pub(crate) fn persisted_states(&self) -> impl Iterator<Item = &Arc<StateCell>> {
        self.states.iter().flatten().filter(|cell| cell.persist)
    }

    /// The generation's number; 0 is the empty generation a host starts with.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The label of the release that produced it.
    pub fn release(&self) -> Option<&str> {
        self.release.as_deref()
    }

    /// The plugins, in link order.
    pub fn plugins(&self) -> impl Iterator<Item = &PluginInfo> {
        self.plugins.iter().map(|p| p.info())
    }

    /// The name of the plugin that `export`'s calls run in, if a plugin of this generation
    /// exports it.
    pub fn exporter(&self, export: &Export) -> Option<&str> {
        let entry = self.entries.get(export.id as usize).copied().flatten()?;
        let plugin = self.plugins.get(entry.plugin as usize)?;
        Some(plugin.info().name.as_str())
    }

    /// How the plugins' imports were bound.
    pub fn link_report(&self) -> &LinkReport {
        &self.report
    }

    /// Each plugin's name, staged library and its sha256, in link order: what another process
    /// needs to load the same plugin set (a worker, see `graft worker`).
    pub fn libraries(&self) -> impl Iterator<Item = (&str, &std::path::Path, &str)> {
        self.plugins
            .iter()
            .map(|p| (p.info().name.as_str(), p.path(), p.sha256()))
    }

    /// The plugins that hold state, a cell or a table, the host keeps for them: a process that
    /// ran this plugin set apart would keep a copy of its own.
    pub fn stateful_plugins(&self) -> impl Iterator<Item = &str> {
        self.plugins
            .iter()
            .zip(&self.states)
            .filter(|(p, state)| state.is_some() || p.has_tables())
            .map(|(p, _)| p.info().name.as_str())
    }

    pub(crate) fn loaded(&self) -> &[Arc<LoadedPlugin>] {
        &self.plugins
    }

    pub(crate) fn age(&self) -> std::time::Duration {
        self.created.elapsed()
    }

    /// When it was made (prepared).
    pub fn created_at(&self) -> SystemTime {
        self.created_at
    }

    /// Whether it went live (it may have been replaced since).
    pub fn is_published(&self) -> bool {
        self.published.get().is_some()
    }

    pub(crate) fn mark_published(&self) {
        let _ = self.published.set(Instant::now());
    }

    /// Marks it replaced by a migrating release (before the gate opens again).
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
    }

    /// Whether a migrating release replaced it (see [`Gate::admits`](crate::live::gate)).
    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// How many owned pins hold it now: requests in flight on it.
    pub fn in_flight(&self) -> usize {
        self.calls.count(self.id)
    }

    /// Resolves an export once, for many calls in this generation.
    #[inline]
    pub fn resolve<'g>(&'g self, export: &'g Export) -> Option<Resolved<'g>> {
        let entry = self.entries.get(export.id as usize).copied().flatten()?;
        Some(Resolved {
            generation: self,
            export,
            entry,
        })
    }

    /// The export numbered `id` and the link table its calls run in.
    #[inline]
    pub(crate) fn entry(&self, id: u32) -> Option<(Entry, &LinkTable)> {
        let entry = self.entries.get(id as usize).copied().flatten()?;
        Some((entry, &self.table))
    }

    /// Calls an export with raw JSON input (through its JSON adapter); returns its raw JSON
    /// output. What an HTTP route does; typed callers use
    /// [`Generation::call_typed`], which encodes nothing.
    ///
    /// # Errors
    ///
    /// [`CallError::NotExported`] if no plugin of this generation exports it,
    /// [`CallError::NoJsonAdapter`] if its types are not serde-capable, or
    /// [`CallError::Plugin`] if the plugin failed or panicked.
    #[inline]
    pub fn call_raw(&self, export: &Export, input: &[u8]) -> Result<Vec<u8>, CallError> {
        match self.resolve(export) {
            Some(resolved) => resolved.call_raw(input),
            None => Err(CallError::NotExported {
                contract: export.to_string(),
                generation: self.id,
            }),
        }
    }

    /// Whether this generation's export of `export` is `async` (called with
    /// [`OwnedPin::call_async`](crate::OwnedPin::call_async)).
    pub fn is_async(&self, export: &Export) -> bool {
        self.entry(export.id)
            .is_some_and(|(entry, _)| entry.is_async)
    }

    /// Calls an export with serde input and output, through its JSON adapter.
    ///
    /// # Errors
    ///
    /// As [`Generation::call_raw`], plus encoding and decoding errors.
    pub fn call<I: Serialize, O: DeserializeOwned>(
        &self,
        export: &Export,
        input: &I,
    ) -> Result<O, CallError> {
        let contract = || export.to_string();
        let input = serde_json::to_vec(input).map_err(|source| CallError::Encode {
            contract: contract(),
            source,
        })?;
        let output = self.call_raw(export, &input)?;
        serde_json::from_slice(&output).map_err(|source| CallError::Decode {
            contract: contract(),
            source,
        })
    }
}

/// What a call entering through each plugin can reach, by position: the plugin and every
/// plugin whose exports it imports, transitively (the link graph's closure). Positions past
/// 63 do not fit a mask: every plugin then reaches [`Reach::ALL`].
fn reach(table: &LinkTable) -> Vec<Reach> {
    let plugins = table.plugins.len();
    if plugins > 64 {
        return vec![Reach::ALL; plugins];
    }
    let callees: Vec<u64> = table
        .plugins
        .iter()
        .map(|links| {
            links
                .imports
                .iter()
                .filter(|b| b.func.is_some())
                .fold(0, |mask, b| mask | 1u64.checked_shl(b.plugin).unwrap_or(0))
        })
        .collect();
    (0..plugins)
        .map(|start| {
            let mut reached = 1u64 << start;
            loop {
                let next = (0..plugins)
                    .filter(|p| reached & (1 << p) != 0)
                    .fold(reached, |mask, p| mask | callees[p]);
                if next == reached {
                    return Reach(reached);
                }
                reached = next;
            }
        })
        .collect()
}

/// An export resolved in one generation: the function pointer and its plugin.
#[derive(Debug, Clone, Copy)]
pub struct Resolved<'g> {
    generation: &'g Generation,
    export: &'g Export,
    entry: Entry,
}

impl Resolved<'_> {
    /// Calls the export with JSON input through its JSON adapter: one indirect call.
    ///
    /// # Errors
    ///
    /// [`CallError::NoJsonAdapter`] if its types are not serde-capable, [`CallError::Plugin`]
    /// if the plugin failed or panicked.
    pub fn call_raw(&self, input: &[u8]) -> Result<Vec<u8>, CallError> {
        let ctx = Context {
            table: &self.generation.table,
            plugin: self.entry.plugin,
        };
        if self.entry.is_async {
            return Err(CallError::AsyncExport {
                contract: self.export.to_string(),
                generation: self.generation.id,
            });
        }
        let Some(json) = self.entry.json else {
            return Err(CallError::NoJsonAdapter {
                contract: self.export.to_string(),
                generation: self.generation.id,
            });
        };
        match json(&ctx, RSlice::from_slice(input)) {
            // `into_vec` copies a buffer the plugin allocated into one the host owns (and frees
            // the plugin's through its own deallocator) while the generation is still pinned.
            RResult::ROk(output) => Ok(output.into_vec()),
            RResult::RErr(err) => Err(CallError::Plugin {
                contract: self.export.to_string(),
                generation: self.generation.id,
                kind: err.kind,
                message: err.message.into_string(),
            }),
        }
    }
}

/// A handle on an export contract, made once by [`Host::export`](crate::Host::export) and used
/// for every call: a call indexes a table with it, it never hashes a name.
#[derive(Clone, Debug)]
pub struct Export {
    pub(crate) id: u32,
    contract: Arc<Contract>,
}

impl Export {
    /// The contract.
    pub fn contract(&self) -> &Contract {
        &self.contract
    }
}

impl fmt::Display for Export {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.contract.fmt(f)
    }
}

/// The host's table of export contracts that callers asked for, numbered in request order.
#[derive(Debug, Default)]
pub(crate) struct Exports {
    names: Mutex<Vec<Arc<Contract>>>,
}

impl Exports {
    pub(crate) fn get(&self, contract: &str) -> Result<Export, ContractError> {
        let contract: Contract = contract.parse()?;
        Ok(self.number(contract))
    }

    pub(crate) fn number(&self, contract: Contract) -> Export {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        let id = match names.iter().position(|c| **c == contract) {
            Some(id) => id,
            None => {
                names.push(Arc::new(contract));
                names.len() - 1
            }
        };
        let id32 = u32::try_from(id).expect("fewer than 2^32 export names");
        Export {
            id: id32,
            contract: Arc::clone(&names[id]),
        }
    }

    /// Numbers every contract of `contracts` not numbered yet; returns all numbered contracts,
    /// in id order.
    fn number_all<'a>(&self, contracts: impl Iterator<Item = &'a Contract>) -> Vec<Arc<Contract>> {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        for contract in contracts {
            if !names.iter().any(|c| **c == *contract) {
                names.push(Arc::new(contract.clone()));
            }
        }
        names.clone()
    }
}
