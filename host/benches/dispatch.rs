//! What graft adds to a call: `ping@1` of the hello example (`u64 -> u64`, by value) called
//!
//! - `direct`: the same function statically linked, behind `black_box` (the floor);
//! - `graft_typed_pinned`: a typed call through a pin held across calls;
//! - `graft_typed`: pin the current generation per call through the thread's
//!   [`PinCache`](graft_host::PinCache) (what a worker that serves calls in a loop holds), index
//!   the export, check its types, call;
//! - `graft_typed_guard`: the same with `host.pin()` (an `arc_swap` guard) per call, for code
//!   that holds no cache;
//! - `graft_nested`: a typed call through a held pin to `pong@1`, which makes one typed import
//!   call (to `ping@1`): the cost of a plugin-to-plugin hop is this minus `graft_typed_pinned`;
//! - `graft_json`: pin + a call through the export's JSON adapter, as an HTTP route does;
//! - `rwlock_arc`: the usual alternative, a read lock and an `Arc` clone per call, then a typed
//!   call;
//! - `graft_http`: what `graft serve` does per request to a route a plugin declares, short of
//!   HTTP itself: find `GET /ping` in the current generation, pin it for the route (registered
//!   in flight), call the `ping` example's handler with a request of two headers and no body,
//!   read its response; `direct_http`: the same handler's work (a `Response` with a text body)
//!   compiled in;
//!
//! on one thread and on two threads at once.
//!
//! Run: `cargo bench -p graft-host --bench dispatch` (builds the example plugin in release mode).

// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

mod common;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::{build_plugins, on_threads};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::future::Future;

use graft_api::http::{HttpHeader, HttpRequest};
use graft_host::route::Lookup;
use graft_host::{Export, Host, OwnedPin, Returned};

// The host's declarations of the contracts it calls; the host checks them against the plugin's.
graft_api::contract! {
    struct PingV1 = "ping@1": fn(u64) -> u64;
    struct PongV1 = "pong@1": fn(u64) -> u64;
}

const INPUT: &[u8] = b"41";

/// `ping@1`, compiled into the benchmark.
#[inline(never)]
fn ping_direct(n: u64) -> u64 {
    n.wrapping_add(1)
}

fn dispatch(c: &mut Criterion) {
    let data = tempfile::tempdir().unwrap();
    let release = data.path().join("release");
    graft_host::release::write_release(
        &release,
        Some("bench"),
        true,
        &{
            let built = build_plugins(&["hello-v1", "ping"]);
            [("hello", built[0].clone()), ("ping", built[1].clone())]
        }
        .iter()
        .map(|(name, path)| (*name, path.as_path()))
        .collect::<Vec<_>>(),
        &[],
    )
    .unwrap();
    let host = Host::builder(data.path().join("data")).build().unwrap();
    host.deploy(&release).unwrap();
    let ping_json: Export = host.export("ping@1").unwrap();
    let ping = host.typed_export::<PingV1>().unwrap();
    let pong = host.typed_export::<PongV1>().unwrap();
    let held = host.pin_owned();
    assert_eq!(held.call_typed(&ping, 41).unwrap().get(), 42);
    assert_eq!(held.call_typed(&pong, 41).unwrap().get(), 42);
    assert_eq!(host.pin().call_raw(&ping_json, INPUT).unwrap(), b"42");
    let locked = RwLock::new(Arc::new(host.pin_owned()));
    let direct: fn(u64) -> u64 = ping_direct;

    let (ping, pong) = (&ping, &pong);
    assert_eq!(http_call(&host), 200);
    for threads in [1, 2] {
        let mut group = c.benchmark_group(format!("dispatch/{threads}-thread"));
        group.measurement_time(Duration::from_secs(3));
        group.bench_function("direct", |b| {
            b.iter_custom(|n| {
                on_threads(threads, n, || {
                    || {
                        black_box(black_box(direct)(black_box(41)));
                    }
                })
            })
        });
        group.bench_function("graft_typed_pinned", |b| {
            b.iter_custom(|n| {
                on_threads(threads, n, || {
                    || {
                        drop(black_box(
                            held.call_typed(ping, black_box(41)).map(Returned::get),
                        ))
                    }
                })
            })
        });
        group.bench_function("graft_typed", |b| {
            b.iter_custom(|n| {
                on_threads(threads, n, || {
                    let mut pins = host.pin_cache();
                    move || {
                        let pin = pins.pin();
                        drop(black_box(
                            pin.call_typed(ping, black_box(41)).map(Returned::get),
                        ))
                    }
                })
            })
        });
        group.bench_function("graft_typed_guard", |b| {
            b.iter_custom(|n| {
                on_threads(threads, n, || {
                    || {
                        let pin = host.pin();
                        drop(black_box(
                            pin.call_typed(ping, black_box(41)).map(Returned::get),
                        ))
                    }
                })
            })
        });
        group.bench_function("graft_nested", |b| {
            b.iter_custom(|n| {
                on_threads(threads, n, || {
                    || {
                        drop(black_box(
                            held.call_typed(pong, black_box(41)).map(Returned::get),
                        ))
                    }
                })
            })
        });
        group.bench_function("graft_json", |b| {
            b.iter_custom(|n| {
                on_threads(threads, n, || {
                    || drop(black_box(host.pin().call_raw(&ping_json, black_box(INPUT))))
                })
            })
        });
        group.bench_function("rwlock_arc", |b| {
            b.iter_custom(|n| {
                on_threads(threads, n, || {
                    || {
                        let generation = Arc::clone(&locked.read().unwrap());
                        drop(black_box(
                            generation
                                .call_typed(ping, black_box(41))
                                .map(Returned::get),
                        ));
                    }
                })
            })
        });
        group.bench_function("graft_http", |b| {
            b.iter_custom(|n| {
                on_threads(threads, n, || {
                    || {
                        black_box(http_call(&host));
                    }
                })
            })
        });
        group.bench_function("direct_http", |b| {
            b.iter_custom(|n| {
                on_threads(threads, n, || {
                    || drop(black_box(graft_api::Response::text(black_box("pong"))))
                })
            })
        });
        group.finish();
    }
}

/// One request to `GET /ping` through the current generation's routes; its status.
fn http_call(host: &Host) -> u16 {
    let generation = host.current();
    let Lookup::Found(route) = generation.routes().find("GET", "/ping") else {
        panic!("the ping route");
    };
    let pin = OwnedPin::for_route(Arc::clone(&generation), route.entry().site());
    let headers = [
        HttpHeader {
            name: "host".into(),
            value: b"127.0.0.1".as_slice().into(),
        },
        HttpHeader {
            name: "accept".into(),
            value: b"*/*".as_slice().into(),
        },
    ];
    let request = HttpRequest {
        method: "GET".into(),
        path: "/ping".into(),
        query: "".into(),
        route: route.entry().pattern().into(),
        params: [].as_slice().into(),
        headers: headers.as_slice().into(),
        body: [].as_slice().into(),
    };
    let mut call = std::pin::pin!(pin.call_route(&route, &request));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match call.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(Ok(reply)) => black_box(reply.status()),
        other => panic!("a synchronous handler answers at once: {other:?}"),
    }
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
