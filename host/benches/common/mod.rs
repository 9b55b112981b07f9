//! What the benchmarks share: building example plugins, and running a call on threads at once.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Builds these example plugin crates (release) and returns their libraries, in order.
pub(crate) fn build_plugins(crates: &[&str]) -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut args = vec!["build", "--release", "--message-format=json"];
    for krate in crates {
        args.extend(["-p", krate]);
    }
    let out = Command::new(env!("CARGO"))
        .args(&args)
        .current_dir(&root)
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "building {crates:?} failed");
    let artifacts: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|m: &serde_json::Value| m["reason"] == "compiler-artifact")
        .collect();
    crates
        .iter()
        .map(|krate| {
            let target = krate.replace('-', "_");
            artifacts
                .iter()
                .filter(|m| m["target"]["name"] == target.as_str())
                .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
                .filter_map(|f| f.as_str().map(PathBuf::from))
                .find(|f| f.extension().is_some_and(|e| e == "so"))
                .unwrap_or_else(|| panic!("{krate}'s library"))
        })
        .collect()
}

/// Runs a call made by `make` (once per thread: a thread's own state lives in it) `iters` times
/// on each of `threads` threads at once; returns the slowest thread's time, so the figure is
/// per call, per thread.
pub(crate) fn on_threads<F: FnMut()>(
    threads: usize,
    iters: u64,
    make: impl Fn() -> F + Sync,
) -> Duration {
    let start = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut call = make();
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
