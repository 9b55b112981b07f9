//! What a table held by the host costs, beside the map it is built on:
//!
//! - `get`, `insert` on 1 and 2 threads: `dashmap` (a `DashMap<u64, u64>` used directly, the
//!   floor); `graft_call` (a typed call of `ping@1`, no table: what the call itself costs);
//!   `graft_table` (a typed call of the hits example's `hits.get@1` / `hits.set@1`: pin, call,
//!   the plugin's table operation through the host, the value encoded and decoded);
//! - `migration_pause`: a deploy that migrates every entry of the kv example's table (kv-v1 and
//!   kv-v2 alternate, 1,000,000 entries) while a writer thread puts new keys (about 10,000 a
//!   second): the time requests that can reach kv were held (the report's `pause`), per deploy;
//! - `durability`: puts (new keys) from 1, 4 and 16 threads, as puts per second, to a table of
//!   each durability: `memory`, `on-stop` (each put marks its key for the next save; `interval`
//!   is the same), `every-write` (each put acknowledged after its commit's fsync).
//!
//! Run: `cargo bench -p graft-host --bench tables` (builds the example plugins in release mode).
//! `TABLE_BENCH_ENTRIES` sets the migrated table's size (default 1,000,000).

// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{build_plugins, on_threads};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use dashmap::DashMap;
use graft_host::{Durability, Host, Returned, TableSettings};

graft_api::contract! {
    struct PingV1 = "ping@1": fn(u64) -> u64;
    struct GetV1 = "hits.get@1": fn(u64) -> u64;
    struct SetV1 = "hits.set@1": fn(u64) -> u64;
}

/// The kv example's put, as JSON.
#[derive(serde::Serialize)]
struct Put {
    key: String,
    value: String,
}

/// Keys the get and insert benchmarks spread over.
const KEYS: u64 = 100_000;

/// A host serving `plugins` (crate, plugin name) as one complete release, in `dir`.
fn serve(dir: &std::path::Path, label: &str, plugins: &[(&str, &str)], host: &Host) {
    let libraries = build_plugins(&plugins.iter().map(|(c, _)| *c).collect::<Vec<_>>());
    let named: Vec<(&str, &std::path::Path)> = plugins
        .iter()
        .zip(&libraries)
        .map(|((_, name), lib)| (*name, lib.as_path()))
        .collect();
    let release = dir.join(label);
    graft_host::release::write_release(&release, Some(label), true, &named, &[]).unwrap();
    host.deploy(&release).unwrap();
}

fn get_and_insert(c: &mut Criterion) {
    let data = tempfile::tempdir().unwrap();
    let host = Host::builder(data.path().join("data"))
        .table("hits", "hits", TableSettings::new(Durability::Memory))
        .build()
        .unwrap();
    serve(
        data.path(),
        "bench",
        &[("hits", "hits"), ("hello-v1", "hello")],
        &host,
    );
    let (get, set, ping) = (
        host.typed_export::<GetV1>().unwrap(),
        host.typed_export::<SetV1>().unwrap(),
        host.typed_export::<PingV1>().unwrap(),
    );
    let map: DashMap<u64, u64> = DashMap::new();
    {
        let pin = host.pin_owned();
        for key in 0..KEYS {
            pin.call_typed(&set, key).unwrap();
            map.insert(key, key);
        }
        assert_eq!(pin.call_typed(&get, 7).unwrap().get(), 7);
    }
    // Each thread walks the keys from its own start, so no counter is shared.
    let starts = AtomicU64::new(0);
    let keys = || {
        let mut next = starts.fetch_add(KEYS / 2, Ordering::Relaxed);
        move || {
            next = (next + 7919) % KEYS;
            next
        }
    };
    let (get, set, ping, map, keys) = (&get, &set, &ping, &map, &keys);
    for threads in [1, 2] {
        let mut group = c.benchmark_group(format!("tables/{threads}-thread"));
        group.measurement_time(Duration::from_secs(3));
        group.bench_function("get/dashmap", |b| {
            b.iter_custom(|n| {
                on_threads(threads, n, || {
                    let mut key = keys();
                    move || {
                        black_box(map.get(&black_box(key())).map(|v| *v));
                    }
                })
            })
        });
        group.bench_function("get/graft_call", |b| {
            b.iter_custom(|n| {
                on_threads(threads, n, || {
                    let (mut pins, mut key) = (host.pin_cache(), keys());
                    move || {
                        let pin = pins.pin();
                        drop(black_box(pin.call_typed(ping, key()).map(Returned::get)))
                    }
                })
            })
        });
        group.bench_function("get/graft_table", |b| {
            b.iter_custom(|n| {
                on_threads(threads, n, || {
                    let (mut pins, mut key) = (host.pin_cache(), keys());
                    move || {
                        let pin = pins.pin();
                        drop(black_box(pin.call_typed(get, key()).map(Returned::get)))
                    }
                })
            })
        });
        group.bench_function("insert/dashmap", |b| {
            b.iter_custom(|n| {
                on_threads(threads, n, || {
                    let mut key = keys();
                    move || {
                        let k = key();
                        black_box(map.insert(k, k));
                    }
                })
            })
        });
        group.bench_function("insert/graft_table", |b| {
            b.iter_custom(|n| {
                on_threads(threads, n, || {
                    let (mut pins, mut key) = (host.pin_cache(), keys());
                    move || {
                        let pin = pins.pin();
                        drop(black_box(pin.call_typed(set, key()).map(Returned::get)))
                    }
                })
            })
        });
        group.finish();
    }
}

fn migration_pause(c: &mut Criterion) {
    let entries: u64 = std::env::var("TABLE_BENCH_ENTRIES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let data = tempfile::tempdir().unwrap();
    let host = Host::builder(data.path().join("data"))
        .table("kv", "entries", TableSettings::new(Durability::Memory))
        .build()
        .unwrap();
    let libraries = build_plugins(&["kv-v1", "kv-v2"]);
    let releases: Vec<_> = ["v1", "v2"]
        .iter()
        .zip(&libraries)
        .map(|(label, lib)| {
            let dir = data.path().join(label);
            graft_host::release::write_release(&dir, Some(label), true, &[("kv", lib)], &[])
                .unwrap();
            dir
        })
        .collect();
    host.deploy(&releases[0]).unwrap();
    let put = host.export("kv.put@1").unwrap();
    let fill = Instant::now();
    for i in 0..entries {
        let value = Put {
            key: format!("key-{i}"),
            value: format!("value-{i}"),
        };
        host.call::<_, bool>(&put, &value).unwrap();
    }
    eprintln!("filled {entries} entries in {:?}", fill.elapsed());

    let stop = AtomicBool::new(false);
    let mut deploys = 0usize;
    std::thread::scope(|s| {
        // Puts new keys all along (about 10,000 a second, so the table grows by a few percent
        // per deploy), each through a counted pin, as requests do.
        let writer = s.spawn(|| {
            let mut written = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let value = Put {
                    key: format!("during-{written}"),
                    value: "x".into(),
                };
                host.pin_owned().call::<_, bool>(&put, &value).unwrap();
                written += 1;
                std::thread::sleep(Duration::from_micros(100));
            }
            written
        });
        let mut group = c.benchmark_group("tables");
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(20));
        group.bench_function(format!("migration_pause/{entries}_entries"), |b| {
            b.iter_custom(|n| {
                let mut paused = Duration::ZERO;
                for _ in 0..n {
                    deploys += 1;
                    let started = Instant::now();
                    let report = host.deploy(&releases[deploys % 2]).unwrap();
                    assert_eq!(report.migrated.len(), 1);
                    eprintln!(
                        "deploy {deploys}: {} entries migrated in {:?}, requests to kv held {:?}",
                        report.entries_migrated,
                        started.elapsed(),
                        report.pause
                    );
                    paused += report.pause;
                }
                paused
            })
        });
        group.finish();
        stop.store(true, Ordering::Relaxed);
        eprintln!("the writer put {} keys meanwhile", writer.join().unwrap());
    });
}

fn durability(c: &mut Criterion) {
    for durability in [
        Durability::Memory,
        Durability::OnStop,
        Durability::EveryWrite,
    ] {
        let data = tempfile::tempdir().unwrap();
        let host = Host::builder(data.path().join("data"))
            .table("hits", "hits", TableSettings::new(durability))
            .build()
            .unwrap();
        serve(data.path(), "bench", &[("hits", "hits")], &host);
        let set = host.typed_export::<SetV1>().unwrap();
        let next = AtomicU64::new(0);
        let name = format!("{durability:?}").to_lowercase();
        let mut group = c.benchmark_group(format!("tables/durability/{name}"));
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(5));
        for threads in [1, 4, 16] {
            group.throughput(Throughput::Elements(threads as u64));
            group.bench_function(format!("{threads}-thread"), |b| {
                b.iter_custom(|n| {
                    on_threads(threads, n, || {
                        || {
                            let key = next.fetch_add(1, Ordering::Relaxed);
                            drop(black_box(host.pin_owned().call_typed(&set, key)));
                        }
                    })
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, get_and_insert, migration_pause, durability);
criterion_main!(benches);
