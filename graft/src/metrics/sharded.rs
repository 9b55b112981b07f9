//! The metrics every request touches, sharded by thread: a counter and a latency histogram
//! whose updates never share a cache line between the server's worker threads.
//!
//! Every request of every worker records into the same series; with one atomic per value, each
//! update moves that value's cache line between cores (and prometheus-client's `Histogram`
//! takes a mutex per observation: futex waits and wake-ups in a profile of `graft serve` under
//! load). Here each thread updates its own shard, padded to its own cache lines, and a scrape
//! sums the shards.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// How many shards a value has: threads share one only past this many.
const SHARDS: usize = 8;

/// How many finite buckets a request latency histogram has: 50 µs, doubling, to about 1.6 s.
pub(super) const LATENCY_BUCKETS: usize = 16;
const FIRST_BUCKET_SECONDS: f64 = 0.000_05;

/// This thread's shard.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static HOME: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    HOME.with(|home| {
        if home.get() == usize::MAX {
            home.set(NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
        }
        home.get()
    })
}

/// One `u64` on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

/// A counter with one shard per thread (up to [`SHARDS`]).
#[derive(Debug, Clone, Default)]
pub(super) struct ShardedCounter(Arc<[Padded; SHARDS]>);

impl ShardedCounter {
    pub(super) fn inc(&self) {
        self.0[shard()].0.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn get(&self) -> u64 {
        self.0.iter().map(|p| p.0.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One thread's counts of a histogram.
#[derive(Debug, Default)]
#[repr(align(128))]
struct LatencyShard {
    buckets: [AtomicU64; LATENCY_BUCKETS + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// A request latency histogram that takes no lock and shares no cache line between threads.
/// Buckets are fixed: 50 µs, doubling, then +Inf.
#[derive(Debug, Clone, Default)]
pub(super) struct LatencyHistogram(Arc<[LatencyShard; SHARDS]>);

impl LatencyHistogram {
    pub(super) fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let mut bound = FIRST_BUCKET_SECONDS;
        let mut bucket = 0;
        while bucket < LATENCY_BUCKETS && seconds > bound {
            bound *= 2.0;
            bucket += 1;
        }
        let counts = &self.0[shard()];
        counts.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        counts.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        counts.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let total = |value: fn(&LatencyShard) -> &AtomicU64| -> u64 {
            self.0
                .iter()
                .map(|s| value(s).load(Ordering::Relaxed))
                .sum()
        };
        let mut bound = FIRST_BUCKET_SECONDS;
        let buckets: Vec<(f64, u64)> = (0..=LATENCY_BUCKETS)
            .map(|i| {
                let upper = if i == LATENCY_BUCKETS {
                    f64::INFINITY
                } else {
                    bound
                };
                bound *= 2.0;
                let n = self
                    .0
                    .iter()
                    .map(|s| s.buckets[i].load(Ordering::Relaxed))
                    .sum();
                (upper, n)
            })
            .collect();
        let sum = total(|s| &s.sum_nanos) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, total(|s| &s.count), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}
