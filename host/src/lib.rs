//! graft's host: runs a service's logic from plugins and replaces it while the service serves.
//!
//! This is the embedding library: no server, no CLI, no async runtime. The `graft` crate builds
//! `graft serve` and the `graft` command on top of it. The moving parts, in the order a release
//! travels through them (see `docs/architecture.md`):
//!
//! - [`release`]: the `release.toml` manifest and its [`Limits`](release::Limits); `stage`:
//!   checksums and staged copies under unique names, streamed; [`input`]: only regular files
//!   are read (a FIFO or a device is refused before any blocking `open`), within bounds;
//!   `digest`: sha256 as hex.
//! - `loader` (`unsafe`, with `typed`): `dlopen`, API-version gate, layout and panic-strategy
//!   checks; `types`: contract types as fingerprints; `decl`, `declared_routes`: what a plugin
//!   declares of itself and of its routes; `registry`: one library per build; `init`:
//!   initialisers on threads of their own, under a deadline.
//! - [`link`]: binding every import to exactly one export of the same contract and types.
//! - `state`, `table`: the plugins' state cells and tables, held by the host; `carry`: the step
//!   that carries them from one generation to the next, migrated up or down when a schema
//!   changes (`shape`: types compared by structure); [`store`]: saved on an embedded database,
//!   per table [`Durability`].
//! - `live`: [`Generation`], an immutable snapshot of plugins, links, cells and tables; [`Pin`] /
//!   [`OwnedPin`] hold one, the latter registered as a call in flight (`calls`: what it can
//!   reach, since when) through the request boundary (`gate`) a migration or a save holds for
//!   the calls that can reach its plugins; [`route`]: a generation's routes; `typed`: [`Generation::call_typed`] through a
//!   [`TypedExport`], no encoding.
//! - [`Host`]: [`Host::prepare`] runs every step above outside any lock and returns a
//!   [`Prepared`] release; [`Host::publish`] makes it current with one atomic store, unless
//!   another release went live meanwhile. [`Host::deploy`] is both; [`Host::rollback`],
//!   [`Host::restore`], [`Host::save_state`] and [`Host::status`] go with them.
//! - `unload`: closing libraries once drained, per [`UnloadPolicy`].
//! - [`check`]: `graft check`, a prepare on a scratch host.
//!
//! # Invariants
//!
//! 1. A call pins one generation, and every import call it makes runs in that generation.
//! 2. A release goes live with one atomic store, after every plugin in it was staged, loaded,
//!    checked, linked and initialised, and only if the generation it was prepared against is
//!    still current; a failure at any step changes nothing.
//! 3. A generation's libraries stay mapped while any pin holds it; then [`UnloadPolicy`] decides.
//! 4. Bad input (not a library, truncated, another API, panics, bad manifest or checksum) is an
//!    error value, never a crash of the host, and errors quote only a bounded slice of it.
//! 5. Files graft writes for itself are written to a temp file, fsynced and renamed; saved state
//!    and tables are written in durable transactions of the store, which a host that cannot use
//!    it never overwrites.
//! 6. No write a call acknowledged is lost across a deploy, a migration or a rollback (the
//!    calls that can reach a migrating plugin are drained first); across a restart, as each
//!    table's durability says.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let host = graft_host::Host::builder("/tmp/graft-data").build()?;
//! host.deploy("releases/v1")?;
//! let foo = host.export("foo@1")?;
//! let answer: serde_json::Value = host.call(&foo, &serde_json::json!({ "a": 1 }))?;
//!
//! let v2 = host.prepare("releases/v2")?; // staged, loaded, linked, initialised; not live
//! host.publish(v2)?;                     // in-flight calls finish on v1, new ones see v2
//! host.rollback()?;                      // v1 again
//! # Ok(()) }
//! ```

pub mod atomic_file;
pub mod bounded;
mod carry;
pub mod check;
mod deadline;
mod decl;
mod declared_routes;
mod digest;
pub mod elf;
mod error;
mod hook;
mod host;
mod ids;
mod init;
pub mod input;
mod keyset;
pub mod link;
mod live;
mod loader;
pub mod millis;
mod provided;
mod registry;
pub mod release;
mod report;
mod request;
mod services;
mod shape;
pub mod signature;
mod snapshot;
mod stage;
mod state;
pub mod status;
pub mod store;
mod table;
mod typed;
mod types;
mod unload;

pub use decl::{
    is_valid_contract_name, is_valid_name, Contract, ContractError, PluginInfo, Signature,
    TypeInfo, Wire, MAX_NAME_LEN,
};
pub use digest::{sha256_hex, sha256_hex_of};
pub use error::{
    BuildError, CallError, DeployCause, DeployError, DisplayChain, SaveStateError, Step,
};
pub use graft_api::{ErrorKind, API_VERSION};
pub use host::{Host, HostBuilder, Prepared, RollbackTo, SavedState, Settle, RECORD, SAVE_HOLD};
pub use live::calls::CallSite;
pub use live::generation::{Export, Generation, Resolved};
pub use live::pin::{self, OwnedPin, Pin, PinCache};
pub use live::route;
pub use loader::LoadError;
pub use provided::{ProvideError, ProvideWire, ServiceFuture, PROVIDER};
pub use report::{Change, DeployReport, PluginChange};
pub use request::{
    current_request, in_request, with_request, InRequest, RequestContext, TraceContext,
};
pub use services::{set_async_services, AsyncServices, BoxFuture};
pub use stage::Staging;
pub use table::{Durability, TableSettings};
pub use typed::{Returned, TypedExport};
pub use unload::{is_mapped, UnloadPolicy};
