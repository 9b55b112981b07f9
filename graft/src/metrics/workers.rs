//! Worker processes (see [`worker`](crate::worker)): how many run, how often they crashed (by
//! signal), were restarted, or were recycled for a call past its deadline.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CrashLabel {
    /// `SIGSEGV`, `SIGABRT`, ..., or `exit` for a worker that exited on its own.
    signal: String,
}

/// The worker series.
#[derive(Debug)]
pub(crate) struct WorkerMetrics {
    running: Gauge,
    crashes: Family<CrashLabel, Counter>,
    restarts: Counter,
    recycled: Counter,
}

impl WorkerMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            running: Gauge::default(),
            crashes: Family::default(),
            restarts: Counter::default(),
            recycled: Counter::default(),
        };
        registry.register(
            "workers",
            "Worker processes running generations",
            metrics.running.clone(),
        );
        registry.register(
            "worker_crashes",
            "Worker processes that ended unasked, by signal",
            metrics.crashes.clone(),
        );
        registry.register(
            "worker_restarts",
            "Workers started again after a crash, on the same release",
            metrics.restarts.clone(),
        );
        registry.register(
            "worker_recycled",
            "Workers replaced because a call ran past its deadline and grace",
            metrics.recycled.clone(),
        );
        metrics
    }

    pub(crate) fn set_running(&self, n: usize) {
        self.running.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub(crate) fn crashed(&self, signal: &str) {
        let label = CrashLabel {
            signal: signal.to_owned(),
        };
        self.crashes.get_or_create(&label).inc();
    }

    pub(crate) fn restarted(&self) {
        self.restarts.inc();
    }

    pub(crate) fn recycled(&self) {
        self.recycled.inc();
    }
}
