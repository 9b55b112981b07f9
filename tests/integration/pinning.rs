//! Invariant 1: a request pins one generation, and all its calls, nested ones included, run there.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use example_types::{FooInput, FooOutput};

use crate::util::{wait_until, Env, V1, V2};

#[test]
fn a_request_in_flight_across_a_swap_finishes_entirely_on_its_generation() {
    let env = Env::new();
    let host = Arc::new(env.host());
    host.deploy(env.complete_release("v1", V1)).unwrap();
    let foo = host.export("foo@1").unwrap();
    let gate = env.path("gate");
    std::fs::create_dir_all(&gate).unwrap();

    // A slow request, pinned as `graft serve` pins one (owned, counted in flight): foo calls
    // frob, stops at the gate, and calls bar only once it opens.
    let slow = {
        let (host, foo) = (Arc::clone(&host), foo.clone());
        let input = FooInput {
            a: 1,
            gate: Some(gate.to_str().unwrap().into()).into(),
            ..FooInput::default()
        };
        std::thread::spawn(move || host.pin_owned().call::<_, FooOutput>(&foo, &input))
    };
    wait_until(
        "the slow request to reach the gate",
        Duration::from_secs(60),
        || gate.join("frob-done").exists(),
    );

    // Generation 2 goes live while the slow request sits between its two import calls.
    let report = host.deploy(env.complete_release("v2", V2)).unwrap();
    assert_eq!(report.generation, 2);
    let status = host.status();
    let old = status
        .generations
        .iter()
        .find(|g| g.id == 1)
        .expect("generation 1 still alive");
    assert_eq!(old.in_flight, 1, "the slow request holds generation 1");

    let fresh: FooOutput = host
        .call(
            &foo,
            &FooInput {
                a: 1,
                ..FooInput::default()
            },
        )
        .unwrap();
    assert_eq!(
        (fresh.foo.as_str(), fresh.bar.as_str(), fresh.frob.as_str()),
        ("2.0.0", "2.0.0", "2.0.0")
    );
    assert_eq!(fresh.value, 2 * (1 + 1) + 10);

    std::fs::write(gate.join("go"), b"").unwrap();
    let slow = slow.join().unwrap().unwrap();
    assert_eq!(
        (
            slow.foo.as_str(),
            slow.bar.as_str(),
            slow.frob.as_str(),
            slow.value
        ),
        ("1.0.0", "1.0.0", "1.0.0", 2 * (1 + 1)),
        "the request that started on generation 1 must finish on it: {slow:?}"
    );
}

#[test]
fn an_owned_pin_keeps_calling_its_generation_after_newer_ones_go_live() {
    let env = Env::new();
    let host = env.host();
    host.deploy(env.complete_release("v1", V1)).unwrap();
    let foo = host.export("foo@1").unwrap();
    let pin = host.pin_owned();
    host.deploy(env.complete_release("v2", V2)).unwrap();
    host.rollback().unwrap();
    host.deploy(env.complete_release("v2-again", V2)).unwrap();
    for a in 0..5 {
        let out: FooOutput = pin
            .call(
                &foo,
                &FooInput {
                    a,
                    ..FooInput::default()
                },
            )
            .unwrap();
        assert_eq!(
            (pin.id(), out.foo.as_str(), out.frob.as_str()),
            (1, "1.0.0", "1.0.0")
        );
    }
    assert_eq!(host.pin().id(), 4);
}

#[test]
fn callers_never_see_a_mix_while_releases_alternate_hundreds_of_times() {
    let env = Env::new();
    let host = Arc::new(env.host());
    let (v1, v2) = (
        env.complete_release("v1", V1),
        env.complete_release("v2", V2),
    );
    host.deploy(&v1).unwrap();
    let foo = host.export("foo@1").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);

    let callers: Vec<_> = (0..3)
        .map(|t| {
            let (host, foo, stop, seen) = (
                Arc::clone(&host),
                foo.clone(),
                Arc::clone(&stop),
                Arc::clone(&seen),
            );
            std::thread::spawn(move || {
                let (mut calls, mut errors, mut mixed) = (0u64, Vec::new(), Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let a = calls + t;
                    // Every third call uses an owned pin, as an async request would.
                    let result = if calls % 3 == 0 {
                        host.pin_owned().call::<_, FooOutput>(
                            &foo,
                            &FooInput {
                                a,
                                ..FooInput::default()
                            },
                        )
                    } else {
                        host.call::<_, FooOutput>(
                            &foo,
                            &FooInput {
                                a,
                                ..FooInput::default()
                            },
                        )
                    };
                    match result {
                        Ok(out) if out.is_mixed() => mixed.push(out),
                        Ok(out) => {
                            let expected = if out.foo == "1.0.0" {
                                2 * (a + 1)
                            } else {
                                2 * (a + 1) + 10
                            };
                            if out.value != expected {
                                mixed.push(out.clone());
                            }
                            seen[usize::from(out.foo != "1.0.0")].fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.push(e.to_string()),
                    }
                    calls += 1;
                }
                (calls, errors, mixed)
            })
        })
        .collect();

    let deploys = 300;
    for i in 0..deploys {
        host.deploy(if i % 2 == 0 { &v2 } else { &v1 }).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for caller in callers {
        let (calls, errors, mixed) = caller.join().expect("caller thread survived");
        assert!(
            errors.is_empty(),
            "{} errors, first: {}",
            errors.len(),
            errors[0]
        );
        assert!(
            mixed.is_empty(),
            "{} mixed results, first: {:?}",
            mixed.len(),
            mixed[0]
        );
        total += calls;
    }
    assert!(total > 0);
    assert!(
        seen[0].load(Ordering::Relaxed) > 0 && seen[1].load(Ordering::Relaxed) > 0,
        "both releases served"
    );
    assert_eq!(host.pin().id(), deploys + 1);
}
