//! Per-route request metrics: requests by status class and a latency histogram, labelled by
//! route (the pattern, `/notes/{id}`), method, generation role (`stable`, `canary`) and
//! release.
//!
//! A request finds its series in a small lock-free cache (one entry per route, method, role
//! and release served lately); only a miss takes a lock. Series of releases no live
//! generation runs are removed at each scrape, so a server deployed to for months keeps only
//! the series of what it still serves.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::sharded::{LatencyHistogram, ShardedCounter};
use crate::rollout::Route as Side;

/// The most series sets the cache keeps; past it, the oldest are dropped from the cache (not
/// from the registry).
const CACHED: usize = 256;

/// The label the release of an unnamed generation gets.
const UNNAMED: &str = "-";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
    method: String,
    role: &'static str,
    release: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatusLabel {
    route: String,
    method: String,
    role: &'static str,
    release: String,
    status: &'static str,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl RouteLabel {
    fn with_status(&self, status: &'static str) -> RouteStatusLabel {
        RouteStatusLabel {
            route: self.route.clone(),
            method: self.method.clone(),
            role: self.role,
            release: self.release.clone(),
            status,
        }
    }
}

/// One route's series for one role and release, resolved once.
#[derive(Debug)]
struct Series {
    label: RouteLabel,
    /// By status class, 1xx to 5xx, each made when first counted.
    requests: [OnceLock<ShardedCounter>; 5],
    latency: LatencyHistogram,
}

/// The per-route families and their cache.
#[derive(Debug)]
pub(super) struct RouteMetrics {
    requests: Family<RouteStatusLabel, ShardedCounter>,
    latency: Family<RouteLabel, LatencyHistogram>,
    cache: ArcSwap<Vec<Arc<Series>>>,
    /// Every label set with series, to remove those of gone releases.
    known: Mutex<HashSet<RouteLabel>>,
}

impl RouteMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let requests = Family::<RouteStatusLabel, ShardedCounter>::default();
        let latency = Family::<RouteLabel, LatencyHistogram>::default();
        registry.register(
            "http_requests",
            "HTTP requests, by route, method, status class, generation role and release",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency, by route, method, generation role and release",
            latency.clone(),
        );
        Self {
            requests,
            latency,
            cache: ArcSwap::default(),
            known: Mutex::default(),
        }
    }

    /// Counts one request.
    pub(super) fn record(
        &self,
        route: &str,
        method: &str,
        side: Side,
        release: Option<&str>,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let role = role(side);
        let release = release.unwrap_or(UNNAMED);
        let cache = self.cache.load();
        let found = cache.iter().find(|s| {
            s.label.role == role
                && s.label.route == route
                && s.label.method == method
                && s.label.release == release
        });
        let fresh;
        let series = match found {
            Some(series) => &**series,
            None => {
                fresh = self.resolve(RouteLabel {
                    route: route.to_owned(),
                    method: method.to_owned(),
                    role,
                    release: release.to_owned(),
                });
                &*fresh
            }
        };
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        series.requests[class]
            .get_or_init(|| {
                self.requests
                    .get_or_create(&series.label.with_status(CLASSES[class]))
                    .clone()
            })
            .inc();
        series.latency.observe(elapsed);
    }

    /// The series of `label`, created and cached.
    #[cold]
    fn resolve(&self, label: RouteLabel) -> Arc<Series> {
        let series = Arc::new(Series {
            requests: Default::default(),
            latency: self.latency.get_or_create(&label).clone(),
            label: label.clone(),
        });
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(label);
        self.cache.rcu(|cache| {
            let mut cache: Vec<Arc<Series>> = cache
                .iter()
                .filter(|s| s.label != series.label)
                .cloned()
                .collect();
            cache.push(Arc::clone(&series));
            if cache.len() > CACHED {
                cache.remove(0);
            }
            cache
        });
        series
    }

    /// Removes the series of every release not in `live` (the releases of the generations
    /// still alive, unnamed ones as `None`).
    pub(super) fn keep_releases(&self, live: &[Option<&str>]) {
        let live: HashSet<&str> = live.iter().map(|r| r.unwrap_or(UNNAMED)).collect();
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<RouteLabel> = known
            .iter()
            .filter(|label| !live.contains(label.release.as_str()))
            .cloned()
            .collect();
        if gone.is_empty() {
            return;
        }
        for label in &gone {
            known.remove(label);
            self.latency.remove(label);
            for status in CLASSES {
                self.requests.remove(&label.with_status(status));
            }
        }
        self.cache.rcu(|cache| {
            cache
                .iter()
                .filter(|s| live.contains(s.label.release.as_str()))
                .cloned()
                .collect::<Vec<_>>()
        });
    }
}

fn role(side: Side) -> &'static str {
    match side {
        Side::Stable => "stable",
        Side::Canary => "canary",
    }
}
