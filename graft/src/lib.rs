//! graft's server and command line, on top of the embedding library [`graft_host`].
//!
//! - [`serve`]: `graft serve`, HTTP routes to plugin exports, the admin API beside them, and the
//!   one deploy path both use; [`config`] is its `graft.toml`.
//! - [`api`]: the admin API's typed requests and responses, and [`ApiError`](api::ApiError), the
//!   one shape of every error response; [`client`] talks to it; `tables` renders its answers.
//! - `metrics`: Prometheus metrics per generation, at `GET /metrics`.
//! - [`rollout`]: staged rollouts, a canary beside the current generation, analysed and promoted
//!   or aborted step by step; [`fleet`]: a release across many hosts in waves.
//! - [`bundle`]: a release as one tar archive, for hosts that share no filesystem.
//! - [`watch`]: deploy a release when its directory, files or pointer change.
//! - `shards`: the app's threads, a runtime each, pinned to CPUs when graft has them to itself.
//! - [`dev`]: `graft dev`, rebuild plugin crates on change and deploy every build that compiles.
//!
//! The `graft` binary (`src/bin/graft/`) parses arguments (`args.rs`), calls these and prints.

pub mod api;
pub mod bundle;
pub mod client;
pub mod config;
pub mod dev;
pub mod fleet;
mod metrics;
pub mod outbound;
pub mod rollout;
pub mod serve;
mod shards;
pub mod signing;
mod tables;
pub mod watch;
pub mod worker;
