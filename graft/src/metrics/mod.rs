//! Prometheus metrics of a serving host, exposed by the admin API at `GET /metrics`.
//!
//! Per route (`routes.rs`): requests by status class and latency, by method, generation role
//! and release. Per generation: requests, errors (plugin errors, panics, bad input), a latency
//! histogram and in-flight requests; per result: deploys; go-live latency (link, init, store);
//! state migrations and how long each held requests at the boundary; libraries mapped.
//! In-flight and libraries are read from [`Host::status`] at scrape time, so they cost nothing
//! per request. Request series of generations (and releases) that are gone are removed at each
//! scrape, and at most the [`KEPT_GENERATIONS`] most recently served generations keep theirs,
//! so a server deployed to every minute for months does not grow without bound.

mod routes;
mod sharded;
mod workers;

use sharded::{LatencyHistogram, ShardedCounter};

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use graft_host::{DeployReport, Host};

use crate::rollout::{RolloutStatus, Route as Side};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GenerationLabel {
    generation: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabel {
    plugin: String,
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    generation: u64,
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// How many generations' series handles requests find without a lock: stable and canary.
const CACHED_GENERATIONS: usize = 2;

/// How many generations keep their request series.
const KEPT_GENERATIONS: usize = 32;

/// One generation's request metrics, resolved once: recording a request through them takes no
/// lock and looks nothing up.
#[derive(Debug)]
struct GenerationMetrics {
    generation: u64,
    requests: ShardedCounter,
    errors: ShardedCounter,
    latency: LatencyHistogram,
}

/// The metrics of one server.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// Whether requests are counted: not in a worker, whose front counts the requests it
    /// serves (a worker's registry is never scraped).
    counted: bool,
    /// The handles of the [`CACHED_GENERATIONS`] generations most recently served, newest
    /// first: the current one, and during a rollout the other side too, so requests that
    /// alternate between stable and canary find theirs without a lock.
    recent: arc_swap::ArcSwap<Vec<Arc<GenerationMetrics>>>,
    /// The generations with request series, oldest first.
    served: Mutex<VecDeque<u64>>,
    registry: Registry,
    requests: Family<GenerationLabel, ShardedCounter>,
    errors: Family<GenerationLabel, ShardedCounter>,
    latency: Family<GenerationLabel, LatencyHistogram>,
    in_flight: Family<GenerationLabel, Gauge>,
    deploys: Family<ResultLabel, Counter>,
    go_live: Histogram,
    migrations: Counter,
    migration_pause: Histogram,
    libraries: Gauge,
    role: Family<RoleLabel, Gauge>,
    canary_weight: Gauge,
    rollout_step: Gauge,
    table_entries: Family<TableLabel, Gauge>,
    table_bytes: Family<TableLabel, Gauge>,
    entries_migrated: Counter,
    routes: routes::RouteMetrics,
    workers: workers::WorkerMetrics,
}

impl Metrics {
    pub(crate) fn new() -> Arc<Self> {
        Self::counting(true)
    }

    /// Metrics for a worker process: requests are not counted (see [`Metrics::counted`]).
    pub(crate) fn for_worker() -> Arc<Self> {
        Self::counting(false)
    }

    fn counting(counted: bool) -> Arc<Self> {
        let mut registry = Registry::with_prefix("graft");
        let requests = Family::<GenerationLabel, ShardedCounter>::default();
        let errors = Family::<GenerationLabel, ShardedCounter>::default();
        let latency = Family::<GenerationLabel, LatencyHistogram>::default();
        let in_flight = Family::<GenerationLabel, Gauge>::default();
        let deploys = Family::<ResultLabel, Counter>::default();
        let go_live = Histogram::new(exponential_buckets(0.000_01, 2.0, 16));
        let migrations = Counter::default();
        // 10 µs to about 5 s (past the default drain deadline of 1 s).
        let migration_pause = Histogram::new(exponential_buckets(0.000_01, 2.0, 20));
        let libraries = Gauge::default();
        let role = Family::<RoleLabel, Gauge>::default();
        let canary_weight = Gauge::default();
        let rollout_step = Gauge::default();
        let table_entries = Family::<TableLabel, Gauge>::default();
        let table_bytes = Family::<TableLabel, Gauge>::default();
        let entries_migrated = Counter::default();
        registry.register(
            "table_entries",
            "Entries of each table of the current generation",
            table_entries.clone(),
        );
        registry.register(
            "table_bytes",
            "Bytes of keys and encoded values of each table of the current generation",
            table_bytes.clone(),
        );
        registry.register(
            "table_entries_migrated",
            "Table entries migrated by releases that went live",
            entries_migrated.clone(),
        );
        registry.register(
            "generation_role",
            "1 for the stable generation and for a rollout's canary",
            role.clone(),
        );
        registry.register(
            "rollout_canary_weight_percent",
            "The share of requests routed to the canary (0 without a rollout under way)",
            canary_weight.clone(),
        );
        registry.register(
            "rollout_step",
            "The step of the rollout under way, from 1 (0 without one)",
            rollout_step.clone(),
        );
        registry.register(
            "requests",
            "HTTP requests served, by generation",
            requests.clone(),
        );
        registry.register(
            "request_errors",
            "Requests that ended in a plugin error or panic, by generation",
            errors.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Request latency, by generation",
            latency.clone(),
        );
        registry.register(
            "in_flight",
            "Requests holding a generation (owned pins)",
            in_flight.clone(),
        );
        registry.register(
            "deploys",
            "Deploys and rollbacks, by result (succeeded, rejected)",
            deploys.clone(),
        );
        registry.register(
            "go_live_seconds",
            "From a release loaded to live: link, init, store",
            go_live.clone(),
        );
        registry.register(
            "state_migrations",
            "Plugin state migrations run by releases that went live",
            migrations.clone(),
        );
        registry.register(
            "migration_pause_seconds",
            "How long a release that migrated state or tables held the requests that can reach \
             the migrating plugins at the boundary",
            migration_pause.clone(),
        );
        registry.register(
            "libraries_mapped",
            "Plugin libraries mapped by the host",
            libraries.clone(),
        );
        let routes = routes::RouteMetrics::register(&mut registry);
        let workers = workers::WorkerMetrics::register(&mut registry);
        Arc::new(Self {
            routes,
            workers,
            counted,
            recent: arc_swap::ArcSwap::default(),
            served: Mutex::default(),
            registry,
            requests,
            errors,
            latency,
            in_flight,
            deploys,
            go_live,
            migrations,
            migration_pause,
            libraries,
            role,
            canary_weight,
            rollout_step,
            table_entries,
            table_bytes,
            entries_migrated,
        })
    }

    pub(crate) fn request(&self, generation: u64, ok: bool, elapsed: Duration) {
        if !self.counted {
            return;
        }
        let recent = self.recent.load();
        let fresh;
        let handles = match recent.iter().find(|h| h.generation == generation) {
            Some(handles) => &**handles,
            None => {
                // A generation not cached: resolve its labelled series (a lock and a map
                // lookup), once per switch rather than per request.
                let label = GenerationLabel { generation };
                self.note_served(generation);
                fresh = Arc::new(GenerationMetrics {
                    generation,
                    requests: self.requests.get_or_create(&label).clone(),
                    errors: self.errors.get_or_create(&label).clone(),
                    latency: self.latency.get_or_create(&label).clone(),
                });
                let kept = recent.iter().take(CACHED_GENERATIONS - 1).cloned();
                let cached = std::iter::once(Arc::clone(&fresh)).chain(kept).collect();
                self.recent.store(Arc::new(cached));
                &*fresh
            }
        };
        handles.requests.inc();
        if !ok {
            handles.errors.inc();
        }
        handles.latency.observe(elapsed);
    }

    /// Counts one request by its route (the pattern), method, side and release.
    pub(crate) fn route(
        &self,
        route: &str,
        method: &str,
        side: Side,
        release: Option<&str>,
        status: axum::http::StatusCode,
        elapsed: Duration,
    ) {
        if !self.counted {
            return;
        }
        self.routes
            .record(route, method, side, release, status, elapsed);
    }

    /// Removes the request series of generations (and releases) no longer alive.
    fn prune(&self, status: &graft_host::status::Status) {
        let alive: Vec<u64> = status.generations.iter().map(|g| g.id).collect();
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        served.retain(|generation| {
            let keep = alive.contains(generation);
            if !keep {
                let label = GenerationLabel {
                    generation: *generation,
                };
                self.requests.remove(&label);
                self.errors.remove(&label);
                self.latency.remove(&label);
            }
            keep
        });
        drop(served);
        self.recent.rcu(|recent| {
            recent
                .iter()
                .filter(|h| alive.contains(&h.generation))
                .cloned()
                .collect::<Vec<_>>()
        });
        let releases: Vec<Option<&str>> = status
            .generations
            .iter()
            .map(|g| g.release.as_deref())
            .collect();
        self.routes.keep_releases(&releases);
    }

    /// Records that `generation` has request series, and drops the series of the oldest
    /// generations beyond [`KEPT_GENERATIONS`].
    fn note_served(&self, generation: u64) {
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        if served.contains(&generation) {
            return;
        }
        served.push_back(generation);
        while served.len() > KEPT_GENERATIONS {
            let Some(old) = served.pop_front() else {
                break;
            };
            let label = GenerationLabel { generation: old };
            self.requests.remove(&label);
            self.errors.remove(&label);
            self.latency.remove(&label);
        }
    }

    /// Counts a deploy (or rollback): its report if it went live, `None` if it was refused.
    pub(crate) fn deploy(&self, live: Option<&DeployReport>) {
        let result = if live.is_some() {
            "succeeded"
        } else {
            "rejected"
        };
        self.deploys.get_or_create(&ResultLabel { result }).inc();
        if let Some(report) = live {
            self.go_live.observe(report.go_live.as_secs_f64());
            if !report.migrated.is_empty() {
                self.migrations.inc_by(report.migrated.len() as u64);
                self.migration_pause.observe(report.pause.as_secs_f64());
                self.entries_migrated.inc_by(report.entries_migrated);
            }
        }
    }

    /// The worker processes' series.
    pub(crate) fn workers(&self) -> &workers::WorkerMetrics {
        &self.workers
    }

    /// The exposition text, with the gauges read from the host (and the rollout) now.
    pub(crate) fn render(&self, host: &Host, rollout: Option<&RolloutStatus>) -> String {
        let status = host.status();
        self.prune(&status);
        let running = rollout.filter(|r| r.state.is_under_way());
        self.role.clear();
        self.role
            .get_or_create(&RoleLabel {
                generation: status.current,
                role: "stable",
            })
            .set(1);
        if let Some(rollout) = running {
            self.role
                .get_or_create(&RoleLabel {
                    generation: rollout.canary,
                    role: "canary",
                })
                .set(1);
        }
        self.canary_weight
            .set(running.map_or(0, |r| i64::from(r.weight)));
        self.rollout_step
            .set(running.map_or(0, |r| i64::try_from(r.step).unwrap_or(0)));
        self.in_flight.clear();
        for generation in &status.generations {
            let gauge = self.in_flight.get_or_create(&GenerationLabel {
                generation: generation.id,
            });
            gauge.set(i64::try_from(generation.in_flight).unwrap_or(i64::MAX));
        }
        self.libraries
            .set(i64::try_from(status.libraries.len()).unwrap_or(i64::MAX));
        self.table_entries.clear();
        self.table_bytes.clear();
        for table in &status.tables {
            let label = TableLabel {
                plugin: table.plugin.clone(),
                table: table.name.clone(),
            };
            let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            self.table_entries
                .get_or_create(&label)
                .set(gauge(table.entries));
            self.table_bytes
                .get_or_create(&label)
                .set(gauge(table.bytes));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String");
        text
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn the_latency_histogram_counts_each_request_in_its_bucket_cumulatively() {
        let histogram = super::LatencyHistogram::default();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("latency", "test", histogram.clone());
        for micros in [30, 70, 10_000_000] {
            histogram.observe(Duration::from_micros(micros));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "latency_bucket{le=\"0.00005\"} 1",
            "latency_bucket{le=\"0.0001\"} 2",
            "latency_bucket{le=\"+Inf\"} 3",
            "latency_count 3",
            "latency_sum 10.0001",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }

    #[test]
    fn only_the_most_recent_generations_keep_their_series() {
        let metrics = super::Metrics::new();
        for generation in 1..=100 {
            metrics.request(generation, true, Duration::from_millis(1));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).unwrap();
        let kept = text
            .lines()
            .filter(|l| l.starts_with("graft_requests_total{"))
            .count();
        assert_eq!(kept, super::KEPT_GENERATIONS);
        assert!(text.contains(r#"graft_requests_total{generation="100"} 1"#));
        assert!(!text.contains(r#"graft_requests_total{generation="1"}"#));
    }
}
