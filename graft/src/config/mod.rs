//! `graft.toml`: what `graft serve` (and `graft dev`) run. Relative paths are relative to the
//! file.
//!
//! ```toml
//! data_dir = "graft-data"
//! release = "releases/v1"
//! listen = "127.0.0.1:8080"
//! drain_timeout_ms = 10000
//! init_timeout_ms = 10000
//! hook_timeout_ms = 10000
//! migration_drain_ms = 1000
//! trusted_keys = []            # ["ed25519:<hex>", ...]: releases must be signed by one
//! state_save_interval_ms = 0
//! inline_budget_us = 100
//! max_connections = 1024
//! header_read_timeout_ms = 10000
//! body_timeout_ms = 30000
//! route_timeout_ms = 30000     # routes plugins declare: answered 503 past it
//! isolation = "none"           # none | canary | all: generations in worker processes
//! app_threads = 0              # threads serving the app (0: one per CPU graft may use)
//! # pin_app_threads = true     # unset: pinned when app_threads = the CPUs graft may use
//!
//! [workers]                    # see crate::worker
//! grace_ms = 1000
//! crash_limit = 3
//! crash_window_ms = 60000
//! serve_connections = true     # under "all": the worker serves client connections itself
//!
//! [http_client]                # graft.http.fetch@1, for plugins that import it
//! allow = ["api.example.com", "127.0.0.1:8081"]   # host, or host:port
//! connect_timeout_ms = 2000
//! timeout_ms = 10000
//! max_response_bytes = 1048576
//!
//! [admin]
//! listen = "127.0.0.1:9090"
//!
//! [table_defaults]             # every table no [[table]] names
//! durability = "on-stop"       # memory | on-stop | interval | every-write
//!
//! [[table]]
//! name = "kv.entries"          # plugin.table
//! durability = "every-write"
//! max_entries = 1000000
//! max_bytes = 268435456
//!
//! [[route]]
//! method = "POST"
//! path = "/foo"
//! export = "foo@1"
//! mode = "auto"
//! ```

mod call_mode;
mod http_client;
mod workers;

pub use call_mode::CallMode;
pub use http_client::HttpClientConfig;
pub use workers::{Isolation, WorkerConfig};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::http::Method;
use axum::routing::MethodFilter;
use graft_host::bounded::BoundedPath;
use graft_host::release::Limits;
use graft_host::signature::TrustedKey;
use graft_host::{is_valid_name, Contract, Durability, TableSettings, UnloadPolicy};

use serde::Deserialize;

use crate::rollout::RolloutConfig;

/// The environment variable that gives the admin token when `graft.toml` sets none (so that a
/// secret need not be written into the file).
pub const ADMIN_TOKEN_ENV: &str = "GRAFT_ADMIN_TOKEN";

/// `graft.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServeConfig {
    /// Where the service listens.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Set by `graft worker`: no listener is bound, neither the app's nor the admin plane's;
    /// the front reaches the worker through its channel only.
    #[serde(skip)]
    pub(crate) headless: bool,
    /// Set by `graft dev`: how plugin files are staged.
    #[serde(skip)]
    pub(crate) staging: graft_host::Staging,
    /// Set by `graft dev --fresh-state`: state that cannot be carried over starts fresh.
    #[serde(skip)]
    pub(crate) fresh_state: bool,
    /// Where graft keeps staged plugin copies, the record of live releases and saved state.
    /// Required by `graft serve`; `graft dev` stages in a temporary directory without it.
    #[serde(default)]
    pub data_dir: PathBuf,
    /// A release to deploy at start, unless the data directory records a live release (which
    /// is restored instead).
    #[serde(default)]
    pub release: Option<PathBuf>,
    /// A release directory (or a symlink to one) to watch: what appears there is deployed
    /// (see [`watch`](crate::watch)).
    #[serde(default)]
    pub watch: Option<PathBuf>,
    /// How long in-flight requests may run after a shutdown signal.
    #[serde(default = "default_drain_ms")]
    pub drain_timeout_ms: u64,
    /// How long a deploy waits for its plugins' initialisers before it is refused.
    #[serde(default = "default_init_timeout_ms")]
    pub init_timeout_ms: u64,
    /// How long a plugin's lifecycle hook may run (a `pre_activate` past it refuses its
    /// release).
    #[serde(default = "default_init_timeout_ms")]
    pub hook_timeout_ms: u64,
    /// How long a release that migrates state waits for the requests in flight (new ones held
    /// at the boundary) before it is refused.
    #[serde(default = "default_migration_drain_ms")]
    pub migration_drain_ms: u64,
    /// How often the plugin state that asks to be saved is saved while serving (0: only when
    /// the server stops). Each save holds new requests at the boundary while it copies.
    #[serde(default)]
    pub state_save_interval_ms: u64,
    /// How many connections the service serves at once; past it new ones wait in the kernel's
    /// backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a connection may take to send a complete request head, counted from when it
    /// was accepted or answered its previous request: it cuts slow headers and closes idle
    /// keep-alive connections.
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// How long a request body may take to arrive (408 past it).
    #[serde(default = "default_body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// How long a request to a route a plugin declares may run before it is answered 503 (an
    /// async handler is cancelled then).
    #[serde(default = "default_route_timeout_ms")]
    pub route_timeout_ms: u64,
    /// The outbound HTTP client plugins import (`graft.http.fetch@1`).
    #[serde(default)]
    pub http_client: HttpClientConfig,
    /// How long a plugin call may take and still run on a worker thread, for routes in mode
    /// `auto`.
    #[serde(default = "default_inline_budget_us")]
    pub inline_budget_us: u64,
    /// What happens to libraries no generation uses.
    #[serde(default)]
    pub unload_policy: UnloadPolicy,
    /// Releases kept for rollback.
    #[serde(default = "default_history")]
    pub history: usize,
    /// How large a release manifest may be.
    #[serde(default)]
    pub limits: Limits,
    /// Public keys (`ed25519:<hex>`, the line `graft keygen` writes to `PATH.pub`). With any,
    /// every release must carry a valid signature by one of them (see
    /// [`graft_host::signature`]).
    #[serde(default)]
    pub trusted_keys: Vec<TrustedKey>,
    /// The admin API.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Staged rollouts: the default plan, the sticky key, the analysis thresholds.
    #[serde(default)]
    pub rollout: RolloutConfig,
    /// HTTP routes to exports.
    #[serde(default, rename = "route")]
    pub routes: Vec<Route>,
    /// The settings of every table no `[[table]]` names.
    #[serde(default)]
    pub table_defaults: TableSettings,
    /// Per-table durability and limits.
    #[serde(default, rename = "table")]
    pub tables: Vec<TableConfig>,
    /// Where generations run: `none` (in this process), `canary` (a rollout's canary in a
    /// worker process), `all` (every generation in a worker process; see
    /// [`worker`](crate::worker)).
    #[serde(default)]
    pub isolation: Isolation,
    /// Worker processes: restarts, limits.
    #[serde(default)]
    pub workers: WorkerConfig,
    /// How many threads serve the app's connections, each with a runtime of its own that a
    /// connection stays on (0: one per CPU this process may use). See `graft/src/shards.rs`.
    #[serde(default)]
    pub app_threads: usize,
    /// Whether each app thread is pinned to a CPU of its own (under `isolation`, the worker's
    /// thread that serves the channel shares the first one's). Unset: pinned when `app_threads` is the number of CPUs
    /// this process may use (a machine or cpuset of its own), not otherwise.
    #[serde(default)]
    pub pin_app_threads: Option<bool>,
}

/// `[[table]]`: one table's durability and limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TableConfig {
    /// `plugin.table`.
    pub name: String,
    /// How its entries are kept (default: `table_defaults`' durability).
    #[serde(default)]
    pub durability: Option<Durability>,
    /// At most this many entries.
    #[serde(default)]
    pub max_entries: Option<u64>,
    /// At most this many bytes of keys and encoded values.
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

impl TableConfig {
    /// Its settings, with `defaults` for what it leaves out.
    pub fn settings(&self, defaults: TableSettings) -> TableSettings {
        let mut settings = TableSettings::new(self.durability.unwrap_or(defaults.durability));
        if let Some(max) = self.max_entries.or(defaults.max_entries) {
            settings = settings.max_entries(max);
        }
        if let Some(max) = self.max_bytes.or(defaults.max_bytes) {
            settings = settings.max_bytes(max);
        }
        settings
    }
}

/// The fewest characters an admin token may have: a short one is guessed.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Checks a secret token (`what` names where it came from), the same wherever it is given (in
/// `graft.toml`, the environment, a CLI flag): never empty (leave it out for none), no
/// surrounding whitespace (a trailing newline read from a file would make it never match), only
/// visible ASCII (what an HTTP header carries: no control or invisible characters such as a
/// zero-width space), at least [`MIN_TOKEN_CHARS`] long.
///
/// # Errors
///
/// A message saying which rule it breaks (never quoting the token).
pub fn check_token(token: &str, what: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err(format!(
            "{what} is empty: leave it out (unset the variable) for no token, or give one of at \
             least {MIN_TOKEN_CHARS} characters"
        ));
    }
    if token.trim() != token {
        return Err(format!(
            "{what} has surrounding whitespace (a trailing newline from a file?): a token is \
             compared byte for byte, so it would never match; strip it"
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{what} may hold only visible ASCII characters (letters, digits, punctuation): it has \
             a space, a control character or a non-ASCII one (such as a zero-width space)"
        ));
    }
    let chars = token.len();
    if chars < MIN_TOKEN_CHARS {
        return Err(format!(
            "{what} must be at least {MIN_TOKEN_CHARS} characters; it has {chars}"
        ));
    }
    Ok(())
}

/// `[admin]`: the admin API's address and token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AdminConfig {
    /// Where the admin API listens (loopback by default).
    #[serde(default = "default_admin")]
    pub listen: SocketAddr,
    /// A bearer token; required when `listen` is not a loopback address. When the file sets
    /// none, [`ADMIN_TOKEN_ENV`] is read.
    #[serde(default)]
    pub token: Option<String>,
    /// The most entries an uploaded bundle may have (default 256).
    #[serde(default = "default_bundle_entries")]
    pub max_bundle_entries: usize,
    /// The most bytes an uploaded bundle may unpack to (default 512 MiB).
    #[serde(default = "default_bundle_bytes")]
    pub max_bundle_bytes: u64,
}

impl AdminConfig {
    /// The limits on uploaded bundles.
    pub fn bundle_limits(&self) -> crate::bundle::BundleLimits {
        crate::bundle::BundleLimits {
            max_entries: self.max_bundle_entries,
            max_bytes: self.max_bundle_bytes,
        }
    }
}

fn default_bundle_entries() -> usize {
    crate::bundle::BundleLimits::default().max_entries
}

fn default_bundle_bytes() -> u64 {
    crate::bundle::BundleLimits::default().max_bytes
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin(),
            token: None,
            max_bundle_entries: default_bundle_entries(),
            max_bundle_bytes: default_bundle_bytes(),
        }
    }
}

/// `[[route]]`: a method and path, served by an export.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Route {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path (axum syntax).
    pub path: String,
    /// The export contract, `name@N`. Its input is the request body (JSON; `null` when empty).
    pub export: String,
    /// Where its calls run: `inline` (on the worker), `blocking` (on the blocking pool) or
    /// `auto` (the default: inline while calls stay within `inline_budget_us`; see
    /// [`mode`](crate::serve::mode)).
    #[serde(default)]
    pub mode: CallMode,
    /// How many of its calls may be in flight at once; past it requests are answered 503
    /// (`overloaded`) at once. No limit by default.
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// How long a call may run before its request is answered 503 (`deadline_exceeded`); the
    /// call, which cannot be stopped, runs on and its result is discarded. No deadline by
    /// default.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_drain_ms() -> u64 {
    10_000
}
fn default_init_timeout_ms() -> u64 {
    10_000
}
fn default_migration_drain_ms() -> u64 {
    1_000
}
fn default_max_connections() -> usize {
    1024
}
fn default_header_read_timeout_ms() -> u64 {
    10_000
}
fn default_body_timeout_ms() -> u64 {
    30_000
}
fn default_route_timeout_ms() -> u64 {
    30_000
}
fn default_inline_budget_us() -> u64 {
    100
}
fn default_history() -> usize {
    5
}

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {}", BoundedPath(path))]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config is malformed or invalid.
    #[error("invalid config {}: {reason}", BoundedPath(path))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The largest `graft.toml` read (1 MiB): a config is a page of text, not a stream.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

impl ServeConfig {
    /// Reads `graft.toml`, resolving relative paths against its directory.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if it is unreadable, malformed or invalid.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            graft_host::input::read_text_bounded(path, MAX_CONFIG_BYTES).map_err(|source| {
                ConfigError::Read {
                    path: path.to_owned(),
                    source,
                }
            })?;
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let mut config: Self =
            toml::from_str(&text).map_err(|e| invalid(e.message().to_owned()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        if !config.data_dir.as_os_str().is_empty() {
            config.data_dir = base.join(&config.data_dir);
        }
        config.release = config.release.map(|r| base.join(r));
        config.watch = config.watch.map(|w| base.join(w));
        if config.admin.token.is_none() {
            config.admin.token = match std::env::var(ADMIN_TOKEN_ENV) {
                Ok(token) => Some(token),
                Err(std::env::VarError::NotPresent) => None,
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(invalid(format!("{ADMIN_TOKEN_ENV} is not UTF-8")))
                }
            };
        }
        config.validate().map_err(invalid)?;
        if config.rollout.force_token.is_none() {
            config.rollout.force_token = config.admin.token.clone();
        }
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let tokens = [
            ("admin.token (or GRAFT_ADMIN_TOKEN)", &self.admin.token),
            ("rollout.force_token", &self.rollout.force_token),
        ];
        for (what, token) in tokens {
            if let Some(token) = token {
                check_token(token, what)?;
            }
        }
        if !self.admin.listen.ip().is_loopback() && self.admin.token.is_none() {
            return Err(format!(
                "the admin API listens on {}, which is not loopback: set admin.token",
                self.admin.listen
            ));
        }
        let interval = |settings: &TableSettings| settings.durability == Durability::Interval;
        let mut named = std::collections::HashSet::new();
        for table in &self.tables {
            let valid = table
                .name
                .split_once('.')
                .is_some_and(|(plugin, name)| is_valid_name(plugin) && is_valid_name(name));
            if !valid {
                return Err(format!(
                    "table name {:?} is not plugin.table",
                    graft_host::bounded::Bounded(&table.name).to_string()
                ));
            }
            if !named.insert(table.name.as_str()) {
                return Err(format!("table {} is configured twice", table.name));
            }
        }
        let interval_tables = interval(&self.table_defaults)
            || self
                .tables
                .iter()
                .any(|t| interval(&t.settings(self.table_defaults)));
        if interval_tables && self.state_save_interval_ms == 0 {
            return Err(
                "a table is saved at intervals (durability = \"interval\") but \
                        state_save_interval_ms is 0"
                    .into(),
            );
        }
        // A zero here would refuse every request (or every connection), never what was meant.
        for (name, value) in [
            ("route_timeout_ms", self.route_timeout_ms),
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("body_timeout_ms", self.body_timeout_ms),
            ("max_connections", self.max_connections as u64),
        ] {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        self.http_client.validate()?;
        check_routes(&self.routes)
    }
}

/// Checks the routes as the router will take them (axum's rules, matchit's syntax), so that a
/// bad one is a configuration error, never a panic when the server builds its router: each
/// method known, each export `name@N`, each path valid, and no two routes for one method and
/// path, nor two paths the router cannot tell apart.
fn check_routes(routes: &[Route]) -> Result<(), String> {
    let mut router = matchit::Router::new();
    let mut paths = std::collections::HashSet::new();
    let mut seen = std::collections::HashSet::new();
    for route in routes {
        let quoted = || graft_host::bounded::Bounded(&route.path).to_string();
        method_filter(&route.method)?;
        route
            .export
            .parse::<Contract>()
            .map_err(|e| e.to_string())?;
        graft_host::route::check_pattern(&route.path)?;
        let method = route.method.to_ascii_uppercase();
        if route.max_in_flight == Some(0) || route.timeout_ms == Some(0) {
            let what = if route.timeout_ms == Some(0) {
                "timeout_ms"
            } else {
                "max_in_flight"
            };
            return Err(format!(
                "route {method} {:?}: {what} = 0 would answer every request 503; it must be at \
                 least 1 (leave it out for no limit)",
                quoted()
            ));
        }
        if !seen.insert((method.clone(), route.path.clone())) {
            return Err(format!("two routes for {method} {:?}", quoted()));
        }
        // A path seen before (with another method) is one entry in the router.
        if paths.insert(route.path.as_str()) {
            router
                .insert(route.path.clone(), ())
                .map_err(|error| format!("route path {:?}: {error}", quoted()))?;
        }
    }
    Ok(())
}

impl ServeConfig {
    /// The exports the routes call, each with the route that calls it (`route POST /foo`):
    /// what every release must provide.
    pub fn routed_exports(&self) -> Vec<(Contract, String)> {
        self.routes
            .iter()
            .filter_map(|route| {
                let contract = route.export.parse().ok()?;
                let by = format!("route {} {}", route.method.to_ascii_uppercase(), route.path);
                Some((contract, by))
            })
            .collect()
    }
}

/// The axum method filter of a route's method.
pub(crate) fn method_filter(method: &str) -> Result<MethodFilter, String> {
    let method: Method = method
        .parse()
        .map_err(|_| format!("unknown HTTP method {method:?}"))?;
    MethodFilter::try_from(method.clone()).map_err(|_| format!("unsupported HTTP method {method}"))
}
