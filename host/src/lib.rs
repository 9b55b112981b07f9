//! graft's host: runs a service's logic from plugins and replaces it while the service serves.
//!
//! The moving parts, in the order a release travels through them (see `docs/architecture.md`):
//!
//! - [`release`]: the `release.toml` manifest, checksums, staging under unique names.
//! - `loader` (the only `unsafe` code): `dlopen`, API-version gate, layout check, unload.
//! - [`link`]: contracts `name@N`, binding every import to exactly one export.
//! - [`Generation`]: an immutable snapshot of plugins and links; [`Pin`] / [`OwnedPin`] hold one.
//! - [`Host`]: the current generation in an `ArcSwap`; [`Host::deploy`], [`Host::rollback`],
//!   [`Host::status`].
//! - [`rollout`]: staged rollouts, a canary generation beside the current one, analysed and
//!   promoted or aborted step by step.
//! - [`fleet`]: `graft fleet rollout`, a release across many hosts in waves.
//! - [`serve`]: `graft serve`, HTTP routes to exports and the admin API; [`client`] talks to it.
//! - [`watch`]: deploy a release when its directory, files or pointer change.
//! - [`dev`]: `graft dev`, rebuild plugin crates on change and deploy every build that compiles.
//!
//! # Invariants
//!
//! 1. A call pins one generation, and every import call it makes runs in that generation.
//! 2. A release goes live with one atomic store, after every plugin in it was staged, loaded,
//!    checked, linked and initialised; a failure at any step changes nothing.
//! 3. A generation's libraries stay mapped while any pin holds it; then [`UnloadPolicy`] decides.
//! 4. Bad input (not a library, truncated, another API, panics, bad manifest or checksum) is an
//!    error value, never a crash of the host.
//! 5. Files graft writes for itself are written to a temp file, fsynced and renamed.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let host = graft_host::Host::builder("/tmp/graft-data").build()?;
//! host.deploy("releases/v1")?;
//! let foo = host.export("foo@1")?;
//! let answer: serde_json::Value = host.call(&foo, &serde_json::json!({ "a": 1 }))?;
//! host.deploy("releases/v2")?; // in-flight calls finish on v1, new ones see v2
//! host.rollback()?;            // v1 again
//! # Ok(()) }
//! ```

mod atomic_file;
pub mod check;
pub mod client;
pub mod dev;
mod elf;
mod error;
pub mod fleet;
mod generation;
mod host;
pub mod link;
mod loader;
mod metrics;
pub mod release;
pub mod rollout;
pub mod serve;
mod services;
pub mod status;
pub mod watch;

pub use elf::ElfError;
pub use error::{CallError, DeployCause, DeployError, Step};
pub use generation::{Export, Generation, OwnedPin, Pin, Resolved};
pub use graft_api::{ErrorKind, API_VERSION};
pub use host::{Change, DeployReport, DisplayChain, Host, HostBuilder, PluginChange, RECORD};
pub use loader::{is_mapped, LoadError, PluginInfo, UnloadPolicy};
