//! The errors of deploying and calling, and [`DisplayChain`] to print one with its causes.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use graft_api::ErrorKind;

use crate::bounded::{Bounded, BoundedPath};
use crate::elf::ElfError;
use crate::link::LinkError;
use crate::loader::LoadError;
use crate::release::ManifestError;
use crate::status::CallStatus;

/// The step of a deploy (or rollback) at which it failed.
///
/// A release goes through these in order; a failure at any of them changes nothing that serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Step {
    /// Reading and validating the manifest, or planning a rollback.
    Manifest,
    /// Verifying the release's signature, when the host trusts signing keys.
    Signature,
    /// Verifying a plugin file against the manifest's sha256.
    Checksum,
    /// Copying a plugin file to its unique staged name.
    Stage,
    /// Opening the staged library (`dlopen`, root module, abi_stable header).
    Load,
    /// Checking the plugin's API version, layout and declaration.
    Check,
    /// Binding every import of the new plugin set to exactly one export.
    Link,
    /// Carrying each plugin's state over: passing it through, or migrating it up or down.
    Migrate,
    /// Running the new plugins' initialisers.
    Init,
    /// The new plugins' `pre_activate` hooks, which may veto the release.
    Activate,
    /// Making the prepared release current: refused if another release went live since it was
    /// prepared.
    Publish,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Manifest => "manifest",
            Self::Signature => "signature",
            Self::Checksum => "checksum",
            Self::Stage => "stage",
            Self::Load => "load",
            Self::Check => "check",
            Self::Link => "link",
            Self::Migrate => "migrate",
            Self::Init => "init",
            Self::Activate => "activate",
            Self::Publish => "publish",
        })
    }
}

/// A release that did not go live. The previous generation keeps serving.
///
/// The message names the step, the plugin and the file (each quoted at most
/// [`MAX_QUOTE`](crate::bounded::MAX_QUOTE) bytes); the cause is
/// [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[error("release rejected at {step}{}{}", .plugin.as_ref().map(|p| format!(", plugin {}", Bounded(p))).unwrap_or_default(), .file.as_ref().map(|f| format!(", file {}", BoundedPath(f))).unwrap_or_default())]
pub struct DeployError {
    step: Step,
    plugin: Option<String>,
    file: Option<PathBuf>,
    #[source]
    cause: DeployCause,
}

impl DeployError {
    pub(crate) fn new(
        step: Step,
        plugin: Option<&str>,
        file: Option<PathBuf>,
        cause: DeployCause,
    ) -> Self {
        Self {
            step,
            plugin: plugin.map(str::to_owned),
            file,
            cause,
        }
    }

    /// The step that failed.
    pub fn step(&self) -> Step {
        self.step
    }

    /// The plugin concerned, if one is.
    pub fn plugin(&self) -> Option<&str> {
        self.plugin.as_deref()
    }

    /// The file concerned, if one is.
    pub fn file(&self) -> Option<&std::path::Path> {
        self.file.as_deref()
    }

    /// What went wrong.
    pub fn cause(&self) -> &DeployCause {
        &self.cause
    }

    /// Whether it was refused because of saved state it cannot use: a restart does not fall
    /// back to another release then.
    pub fn is_saved_state(&self) -> bool {
        matches!(self.cause, DeployCause::SavedState { .. })
    }
}

/// Why a deploy failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployCause {
    /// The manifest is missing, malformed or invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The release is not signed by a trusted key.
    #[error(transparent)]
    Signature(#[from] crate::signature::SignatureError),
    /// The record of live releases (`releases.json`) is corrupt.
    #[error("corrupt release record: {}", Bounded(.0))]
    Record(String),
    /// Another release went live between this one's prepare and its publish; publishing it
    /// would silently undo that one (a rollback, or a newer deploy).
    #[error("prepared against generation {prepared_against}, but generation {current} went live since; deploy it again to build on what is live now")]
    Stale {
        /// The generation that was current when the release was prepared.
        prepared_against: u64,
        /// The generation current at publish.
        current: u64,
    },
    /// The next generation id would pass 2^53 - 1 (the data directory's
    /// `generations` file or release record says ids that high were used).
    #[error("generation ids are used up: the next would be {0}, past 2^53 - 1 (the largest a JSON client reads exactly); DATA/generations or the release record was tampered with")]
    GenerationIds(u64),
    /// There is no earlier release to roll back to.
    #[error("no earlier release to roll back to")]
    NothingToRollBack,
    /// No earlier release of the history is the one a rollback asked for.
    #[error("no earlier release is {wanted}; the history holds: {earlier}")]
    NoSuchRelease {
        /// What was asked for: `generation 7`, `release v3`.
        wanted: String,
        /// The earlier releases, newest first.
        earlier: String,
    },
    /// The file's checksum does not match the manifest.
    #[error("sha256 mismatch: the manifest says {expected}, the file has {actual}")]
    Checksum {
        /// What the manifest says.
        expected: String,
        /// What the file hashes to.
        actual: String,
    },
    /// Reading or staging the file failed.
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
    /// The file is not a complete shared library for this machine.
    #[error("not a loadable shared library")]
    NotALibrary(#[source] ElfError),
    /// Loading or checking the library failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The library declares another name than the manifest gives it.
    #[error("the library declares itself as plugin {}", Bounded(.declared))]
    NameMismatch {
        /// The name the library declares.
        declared: String,
    },
    /// Two libraries of one deploy declare the same plugin name.
    #[error("two libraries of the release declare plugin {}", Bounded(.0))]
    DuplicatePlugin(String),
    /// The new plugin set does not link.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The new plugin set does not link, and the first plugin that cannot is one the release
    /// does not ship: it is carried over from the generation the release lands on.
    #[error("plugin {} is carried over from generation {generation}, whose build it is, and does not link with what the release ships: ship a new build of it too, or keep what it imports exported (a shim)", Bounded(.link.importer().unwrap_or("-")))]
    CarriedOver {
        /// The generation it is carried over from (the plugin is the link error's first
        /// importer).
        generation: u64,
        /// What does not link.
        #[source]
        link: LinkError,
    },
    /// A plugin's initialiser returned an error or panicked.
    #[error("initialiser failed: {}", Bounded(.0))]
    Init(String),
    /// A plugin's initialiser was still running at the deadline. It keeps running (status reports
    /// its library as abandoned) and the library is let go once it returns.
    #[error("initialiser still running after {} ms, the limit (init_timeout_ms); its library is abandoned until it returns", .0.as_millis())]
    InitTimeout(Duration),
    /// A plugin's state cannot be carried over (no migration path, a changed type under the
    /// same schema, a migration that failed or panicked).
    #[error("state: {}", Bounded(.0))]
    State(String),
    /// Saved state (in the store) that this release cannot use: damaged, of another size than
    /// its type, a type changed under its schema, or a schema no loaded build migrates from.
    /// A restarting host refuses to start on it rather than fall back to another release, and
    /// leaves the store as it is.
    #[error("the saved state in {} cannot be used: {}; graft leaves it as it is: deploy a release that can migrate it, or set it aside (graft serve --set-aside-state) to start with fresh state", BoundedPath(.path), Bounded(.reason))]
    SavedState {
        /// The store's file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The requests in flight that can reach a migrating plugin did not finish within the
    /// migration's drain deadline; new ones were held and then resumed on the old generation.
    /// Requests that cannot reach it were never held.
    #[error("requests still in flight after {} ms, the limit (migration_drain_ms): {}; the state was not migrated", .limit.as_millis(), CallList(.in_flight))]
    MigrationDrain {
        /// The drain deadline.
        limit: Duration,
        /// The calls still in flight then that can reach a migrating plugin, oldest first (at
        /// most 16).
        in_flight: Vec<CallStatus>,
    },
    /// A `pre_activate` hook refused the release (or failed).
    #[error("pre_activate refused: {}", Bounded(.0))]
    Veto(String),
    /// A lifecycle hook was still running at its deadline. It runs on, and its library stays
    /// loaded until it returns.
    #[error("{hook} hook still running after {} ms, the limit (hook_timeout_ms)", .limit.as_millis())]
    HookTimeout {
        /// The hook.
        hook: &'static str,
        /// The deadline it passed.
        limit: Duration,
    },
}

/// The refusals of step `migrate` for one plugin's state or table: about what is live
/// ([`DeployCause::State`]) or what was saved ([`DeployCause::SavedState`], which a restart
/// does not fall back from). `subject` (`table entries`) prefixes every message.
pub(crate) struct Refusal<'a> {
    pub(crate) plugin: &'a str,
    pub(crate) file: &'a std::path::Path,
    pub(crate) subject: Option<String>,
}

impl Refusal<'_> {
    fn error(&self, cause: DeployCause) -> DeployError {
        DeployError::new(
            Step::Migrate,
            Some(self.plugin),
            Some(self.file.to_owned()),
            cause,
        )
    }

    fn said(&self, message: String) -> String {
        match &self.subject {
            Some(subject) => format!("{subject}: {message}"),
            None => message,
        }
    }

    /// About what is live.
    pub(crate) fn live(&self, message: String) -> DeployError {
        self.error(DeployCause::State(self.said(message)))
    }

    /// About what was saved in the store at `path`.
    pub(crate) fn saved(&self, path: &std::path::Path, message: String) -> DeployError {
        self.error(DeployCause::SavedState {
            path: path.to_owned(),
            reason: self.said(message),
        })
    }
}

/// Why a host could not be built ([`HostBuilder::build`](crate::HostBuilder::build)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The data directory could not be prepared, or the unloader's thread could not start.
    #[error("preparing the host in {}", BoundedPath(.0))]
    Io(PathBuf, #[source] std::io::Error),
    /// The saved state in the data directory cannot be used (the host does not start without
    /// it, and leaves it as it is).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// `POST /slow on generation 3 for 2400 ms, GET /x on generation 3 for 1200 ms`
struct CallList<'a>(&'a [CallStatus]);

impl fmt::Display for CallList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none listed");
        }
        for (i, call) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{call}")?;
        }
        Ok(())
    }
}

/// Why saving plugin state ([`Host::save_state`](crate::Host::save_state)) failed. What was
/// saved before stays as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SaveStateError {
    /// Writing to the store failed.
    #[error("writing saved state to {}", .0.display())]
    Store(PathBuf, #[source] crate::store::StoreWriteError),
}

/// A call into the pinned generation that did not return a value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No plugin of the generation exports the contract.
    #[error("generation {generation} does not export {contract}")]
    NotExported {
        /// The contract called.
        contract: String,
        /// The pinned generation.
        generation: u64,
    },
    /// The plugin returned an error, or panicked (the panic was caught at the boundary).
    #[error("{contract} in generation {generation} failed with {kind}: {message}")]
    Plugin {
        /// The contract called.
        contract: String,
        /// The pinned generation.
        generation: u64,
        /// What kind of failure.
        kind: ErrorKind,
        /// The plugin's message.
        message: String,
    },
    /// The generation's export of the contract has other types than the caller's
    /// (a typed call; see [`TypedExport`](crate::TypedExport)).
    #[error(
        "{contract} in generation {generation} has types {found}, the caller expects {expected}"
    )]
    TypeMismatch {
        /// The contract called.
        contract: String,
        /// The pinned generation.
        generation: u64,
        /// The caller's types.
        expected: String,
        /// The export's types.
        found: String,
    },
    /// The export has no JSON adapter (its types are not serde-capable), so it cannot be called
    /// with JSON.
    #[error("{contract} in generation {generation} cannot be called with JSON: its types are not serde-capable")]
    NoJsonAdapter {
        /// The contract called.
        contract: String,
        /// The pinned generation.
        generation: u64,
    },
    /// The export is `async`: its call returns a future, so it is called with
    /// [`OwnedPin::call_async`](crate::OwnedPin::call_async).
    #[error("{contract} in generation {generation} is async: call it with OwnedPin::call_async")]
    AsyncExport {
        /// The contract called.
        contract: String,
        /// The pinned generation.
        generation: u64,
    },
    /// The input could not be encoded as JSON.
    #[error("encoding the input of {contract}")]
    Encode {
        /// The contract called.
        contract: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The output could not be decoded as the expected type.
    #[error("decoding the output of {contract}")]
    Decode {
        /// The contract called.
        contract: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

impl CallError {
    /// The failure kind reported by the plugin, if the plugin reported one.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Self::Plugin { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// Displays an error and its sources, `outer: inner: innermost`.
#[derive(Debug)]
pub struct DisplayChain<'a>(pub &'a dyn std::error::Error);

impl fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
