//! A state value from one generation to the next: passed through, started fresh, read back
//! from the store, or migrated (a trial at prepare, run again at publish).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use abi_stable::std_types::RResult;
use graft_api::ffi::FfiError;

use crate::error::{DeployError, Refusal};
use crate::hook::ffi_result;
use crate::live::generation::Generation;
use crate::loader::LoadedPlugin;
use crate::store::Store;

use crate::state::StateCell;
use crate::state::StateInfo;

/// A migration a prepared release runs again at publish, on the quiescent state.
pub(crate) struct Migration {
    pub plugin: String,
    pub from: Arc<StateCell>,
    pub to: Arc<StateCell>,
    /// The library carrying `run`, kept loaded until publish.
    pub carrier: Arc<LoadedPlugin>,
    run: extern "C" fn(from: *const u8, to: *mut u8) -> RResult<(), FfiError>,
    pub up: bool,
}

/// `counter 1 -> 2 (up)`
impl fmt::Display for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {} ({})",
            self.plugin,
            self.from.schema,
            self.to.schema,
            if self.up { "up" } else { "down" }
        )
    }
}

impl Migration {
    /// Runs it from `from` into `to`, which it overwrites whole: `from` holds the type the
    /// function reads and `to` was allocated for the type it writes (both matched by
    /// fingerprint in [`carry`]), and `carrier` keeps the function's library loaded.
    pub(crate) fn run(&self) -> Result<(), String> {
        ffi_result((self.run)(self.from.ptr(), self.to.ptr()))
    }
}

/// The state of a new plugin set, carried over from the generation it replaces.
pub(crate) struct Carried {
    /// By plugin position.
    pub cells: Vec<Option<Arc<StateCell>>>,
    /// The migrations publish runs again on the quiescent state.
    pub migrations: Vec<Migration>,
    /// What started fresh instead of being refused (with `fresh`).
    pub warnings: Vec<String>,
}

/// Carries the state of `base` over to the plugin set `set`: passes a cell through where the
/// schema and type agree, starts a fresh one for a plugin `base` holds no state for, and
/// migrates (a trial run, into a new cell) where the schema changed. With `saved` (the first
/// release a host publishes), a plugin `base` holds no state for starts from its saved state
/// instead, if it has some: as it is, or migrated up by the plugin. With `fresh`, a value that
/// cannot be carried over starts fresh instead of refusing the release (a warning says so).
pub(crate) fn carry(
    base: &Generation,
    set: &[Arc<LoadedPlugin>],
    saved: Option<&Store>,
    fresh: bool,
) -> Result<Carried, DeployError> {
    let mut carried = Carried {
        cells: Vec::with_capacity(set.len()),
        migrations: Vec::new(),
        warnings: Vec::new(),
    };
    for plugin in set {
        let Some(info) = plugin.state() else {
            carried.cells.push(None);
            continue;
        };
        let refuse = Refuse(Refusal {
            plugin: &plugin.info().name,
            file: plugin.path(),
            subject: None,
        });
        let found = match base.state_of(&plugin.info().name) {
            Some((old, holder)) => Some((Arc::clone(old), Source::Live(holder))),
            None if info.persist => saved
                .map(|store| restore(store, plugin, info, &refuse))
                .transpose()?
                .flatten(),
            None => None,
        };
        let fresh_cell = || {
            info.fresh(&plugin.info().name)
                .map(Arc::new)
                .map_err(|e| refuse.live(format!("initial value of schema {}: {e}", info.schema)))
        };
        let cell = match found {
            None => fresh_cell()?,
            Some((old, source)) => {
                let carried_over = if old.schema == info.schema {
                    pass_through(old, info, &source, &refuse)
                } else {
                    migrate(old, &source, plugin, info, &refuse).map(|migration| {
                        let to = Arc::clone(&migration.to);
                        carried.migrations.push(migration);
                        to
                    })
                };
                match carried_over {
                    Ok(cell) => cell,
                    Err(refused) if fresh => {
                        let warning = format!(
                            "the state of plugin {} starts fresh (fresh state is on): {}",
                            plugin.info().name,
                            refused.cause()
                        );
                        tracing::warn!("{warning}");
                        carried.warnings.push(warning);
                        fresh_cell()?
                    }
                    Err(refused) => return Err(refused),
                }
            }
        };
        carried.cells.push(Some(cell));
    }
    Ok(carried)
}

/// Where a value carried over comes from.
enum Source<'a> {
    /// The generation being replaced, where this build holds it.
    Live(&'a Arc<LoadedPlugin>),
    /// The store (its file).
    Saved(&'a Path),
}

impl Source<'_> {
    /// The shape of the value's type, as the build holding it declares it (unknown for a
    /// saved value: the store keeps its fingerprint).
    fn shape(&self) -> Option<&crate::shape::Shape> {
        match self {
            Self::Live(holder) => holder.state().map(|s| &s.shape),
            Self::Saved(_) => None,
        }
    }
}

impl fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Live(_) => f.write_str("is live"),
            Self::Saved(path) => write!(f, "was saved in {}", path.display()),
        }
    }
}

/// The refusals of one plugin's state, by where the value comes from.
struct Refuse<'a>(Refusal<'a>);

impl Refuse<'_> {
    fn live(&self, message: String) -> DeployError {
        self.0.live(message)
    }

    fn from(&self, source: &Source<'_>, message: String) -> DeployError {
        match source {
            Source::Live(_) => self.0.live(message),
            Source::Saved(path) => self.0.saved(path, message),
        }
    }
}

/// The value as it is, for a build of the same schema: the same type, at the type's size.
fn pass_through(
    old: Arc<StateCell>,
    info: &StateInfo,
    source: &Source<'_>,
    refuse: &Refuse<'_>,
) -> Result<Arc<StateCell>, DeployError> {
    if old.fingerprint != info.fingerprint {
        let how = source.shape().map_or_else(
            || format!("this build's is {}", info.shape.text),
            |live| live.differences("the live one", &info.shape, "this build's"),
        );
        return Err(refuse.from(
            source,
            format!(
                "schema {} {source} with another type than this build's: {how}; a changed state \
                 type needs a new schema number and migrations",
                info.schema
            ),
        ));
    }
    old.has_layout(info.layout)
        .map_err(|e| refuse.from(source, format!("schema {} {source}, but {e}", info.schema)))?;
    Ok(old)
}

/// The migration of `old` to `plugin`'s schema, run once as a trial into a new cell: up by the
/// newer build, which carries it; down by the build being replaced (a saved value has no such
/// build loaded).
fn migrate(
    old: Arc<StateCell>,
    source: &Source<'_>,
    plugin: &Arc<LoadedPlugin>,
    info: &StateInfo,
    refuse: &Refuse<'_>,
) -> Result<Migration, DeployError> {
    let up = info.schema > old.schema;
    let holder = match source {
        Source::Live(holder) => Some(*holder),
        Source::Saved(_) => None,
    };
    // Up: the newer build carries it, from the type live; down: the build being replaced
    // does, to this build's type.
    let carrier = if up { Some(plugin) } else { holder };
    let found = carrier
        .and_then(|c| c.state())
        .and_then(|c| c.migration(up, if up { old.schema } else { info.schema }));
    let (Some(carrier), Some(found)) = (carrier, found) else {
        let carries = carrier.map_or_else(
            || format!("the value {source}, and no build that could migrate it down is loaded"),
            |c| {
                let paths = c.state().map_or_else(String::new, StateInfo::paths);
                format!("{} {} carries {paths}", c.info().name, c.info().version)
            },
        );
        return Err(refuse.from(
            source,
            format!(
                "no migration from schema {} to schema {}: {carries}",
                old.schema, info.schema,
            ),
        ));
    };
    let (expected, what) = if up {
        (&old.fingerprint, "the live one")
    } else {
        (&info.fingerprint, "this build's")
    };
    if &found.shape.fingerprint != expected {
        let how = match (up, source.shape()) {
            (true, Some(live)) => live.differences(what, &found.shape, "the migration's"),
            (true, None) => format!("the migration's is {}", found.shape.text),
            (false, _) => info
                .shape
                .differences(what, &found.shape, "the migration's"),
        };
        return Err(refuse.from(
            source,
            format!(
                "{} {} carries a migration {} schema {}, but of another type than {what}: {how}",
                carrier.info().name,
                carrier.info().version,
                if up { "up from" } else { "down to" },
                found.schema,
            ),
        ));
    }
    if up {
        old.has_layout(found.layout)
            .map_err(|e| refuse.from(source, format!("schema {} {source}, but {e}", old.schema)))?;
    }
    let name = &plugin.info().name;
    let migration = Migration {
        plugin: name.clone(),
        to: Arc::new(StateCell::zeroed(name, info).map_err(|e| refuse.live(e))?),
        from: old,
        carrier: Arc::clone(carrier),
        run: found.run,
        up,
    };
    migration.run().map_err(|e| {
        refuse.from(
            source,
            format!(
                "migration {} from schema {} to {} failed: {e}",
                if up { "up" } else { "down" },
                migration.from.schema,
                info.schema
            ),
        )
    })?;
    Ok(migration)
}

/// `plugin`'s saved value in the store, if it has one.
fn restore<'s>(
    store: &'s Store,
    plugin: &LoadedPlugin,
    info: &StateInfo,
    refuse: &Refuse<'_>,
) -> Result<Option<(Arc<StateCell>, Source<'s>)>, DeployError> {
    let name = &plugin.info().name;
    let source = Source::Saved(store.path());
    let unusable = |e: String| refuse.from(&source, format!("the value of plugin {name}: {e}"));
    let read = store.read_cell(name);
    let Some(mut saved) = read.map_err(|e| unusable(e.to_string()))? else {
        return Ok(None);
    };
    saved.fingerprint = info.current_fingerprint(&saved.fingerprint).to_owned();
    let cell = StateCell::restored(name, &saved, info).map_err(unusable)?;
    tracing::info!(plugin = %name, schema = saved.schema, store = %store.path().display(), "restoring saved state");
    Ok(Some((Arc::new(cell), source)))
}
