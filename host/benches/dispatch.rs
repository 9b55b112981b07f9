//! What graft adds to a call: the same plugin export (`ping@1` of the hello example) called
//!
//! - (a) `raw`: through its function pointer, resolved once (the floor);
//! - (b) `pin+call`: `host.pin().call_raw(..)` per call: pin the current generation, index the
//!   export, call;
//! - (c) `Host::call`: the typed one-call shorthand (adds JSON encoding of input and output);
//! - (d) `RwLock<Arc>`: the usual alternative, a read lock and an `Arc` clone per call;
//!
//! on one thread and on two threads at once. graft's dispatch overhead is (b) minus (a).
//!
//! Run: `cargo bench -p graft-host --bench dispatch` (builds the example plugin in release mode).

// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Barrier, RwLock};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use graft_host::{Export, Host};

const INPUT: &[u8] = b"41";

/// Builds the hello plugin (release) and returns its library.
fn build_plugin() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "hello-v1",
            "--message-format=json",
        ])
        .current_dir(&root)
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "building hello-v1 failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "hello_v1")
        .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.extension().is_some_and(|e| e == "so"))
        .expect("hello-v1 library")
}

/// Runs `call` `iters` times on each of `threads` threads at once; returns the slowest
/// thread's time, so the figure is per call, per thread.
fn on_threads(threads: usize, iters: u64, call: impl Fn() + Sync) -> Duration {
    let start = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    let t = Instant::now();
                    for _ in 0..iters {
                        call();
                    }
                    t.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .max()
            .unwrap()
    })
}

fn dispatch(c: &mut Criterion) {
    let data = tempfile::tempdir().unwrap();
    let release = data.path().join("release");
    graft_host::release::write_release(
        &release,
        Some("bench"),
        true,
        &[("hello", &build_plugin())],
    )
    .unwrap();
    let host = Host::builder(data.path().join("data")).build().unwrap();
    host.deploy(&release).unwrap();
    let ping: Export = host.export("ping@1").unwrap();
    let owned = host.pin_owned();
    let raw = owned.resolve(&ping).unwrap();
    assert_eq!(raw.call_raw(INPUT).unwrap(), b"42");
    let locked = RwLock::new(Arc::new(host.pin_owned()));

    for threads in [1, 2] {
        let mut group = c.benchmark_group(format!("dispatch/{threads}-thread"));
        group.measurement_time(Duration::from_secs(3));
        group.bench_function("a_raw", |b| {
            b.iter_custom(|n| on_threads(threads, n, || drop(raw.call_raw(INPUT))))
        });
        group.bench_function("b_pin_call", |b| {
            b.iter_custom(|n| on_threads(threads, n, || drop(host.pin().call_raw(&ping, INPUT))))
        });
        group.bench_function("c_host_call", |b| {
            b.iter_custom(|n| on_threads(threads, n, || drop(host.call::<u64, u64>(&ping, &41))))
        });
        group.bench_function("d_rwlock_arc", |b| {
            b.iter_custom(|n| {
                on_threads(threads, n, || {
                    let generation = Arc::clone(&locked.read().unwrap());
                    drop(generation.call_raw(&ping, INPUT));
                })
            })
        });
        group.finish();
    }
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
