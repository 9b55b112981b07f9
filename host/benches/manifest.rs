//! What reading a release manifest costs as it grows: validation is linear in the number of
//! plugins, and a manifest past the limits is refused before it is parsed.
//!
//! - `validate/N`: read, parse and validate a manifest of N plugins, limits lifted;
//! - `refuse/50000`: the same 50,000-plugin manifest under the default limits (1 MiB, 1,024
//!   plugins), as a deploy sees it.
//!
//! Run: `cargo bench -p graft-host --bench manifest`.

// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use graft_host::release::{Limits, Manifest, MANIFEST};

/// A release directory whose manifest names `plugins` plugins.
fn release(plugins: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let sha = "0".repeat(64);
    let text: String = (0..plugins)
        .map(|i| format!("[[plugin]]\nname = \"p{i}\"\nfile = \"p{i}.so\"\nsha256 = \"{sha}\"\n"))
        .collect();
    std::fs::write(dir.path().join(MANIFEST), text).unwrap();
    dir
}

fn manifests(c: &mut Criterion) {
    let mut group = c.benchmark_group("manifest");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for plugins in [1_000, 10_000, 50_000] {
        let dir = release(plugins);
        group.bench_with_input(BenchmarkId::new("validate", plugins), &dir, |b, dir| {
            b.iter(|| Manifest::load_within(dir.path(), &Limits::none()).unwrap());
        });
    }
    let dir = release(50_000);
    group.bench_function("refuse/50000", |b| {
        b.iter(|| Manifest::load(dir.path()).unwrap_err());
    });
    group.finish();
}

criterion_group!(benches, manifests);
criterion_main!(benches);
