//! Invariant 3: old code stays mapped until its last pin drops; then the unload policy decides.

use graft_host::{status::LibraryState, UnloadPolicy};

use crate::util::{mapped, staged_path, Env};

#[test]
fn a_replaced_generation_is_unmapped_once_its_last_pin_drops() {
    let env = Env::new();
    let host = env.host();
    host.deploy(env.complete_release("v1", &["hello-v1"]))
        .unwrap();
    let v1 = staged_path(&host, "hello");
    assert!(mapped(&v1));

    let pin = host.pin_owned();
    host.deploy(env.complete_release("v2", &["hello-v2"]))
        .unwrap();
    host.flush_unloads();
    assert!(mapped(&v1), "a pin still holds generation 1");
    let hello = host.export("hello@1").unwrap();
    assert_eq!(pin.call::<_, String>(&hello, &"old").unwrap(), "hello, old");

    drop(pin);
    host.flush_unloads();
    assert!(!mapped(&v1), "{} is still in /proc/self/maps", v1.display());
    let status = host.status();
    assert!(
        status.libraries.iter().all(|l| l.path != v1),
        "{:?}",
        status.libraries
    );
    assert_eq!(status.generations.len(), 1, "generation 1 is gone");
    assert!(
        mapped(&staged_path(&host, "hello")),
        "generation 2 is untouched"
    );
}

#[test]
fn a_pin_cache_follows_publishes_and_holds_only_the_generation_it_last_returned() {
    let env = Env::new();
    let host = env.host();
    host.deploy(env.complete_release("v1", &["hello-v1"]))
        .unwrap();
    let v1 = staged_path(&host, "hello");
    let hello = host.export("hello@1").unwrap();
    let in_flight = |id: u64| {
        let status = host.status();
        status
            .generations
            .iter()
            .find(|g| g.id == id)
            .map(|g| g.in_flight)
    };

    let mut cache = host.pin_cache();
    assert_eq!(cache.pin().id(), 1);
    assert_eq!(in_flight(1), Some(1), "the cache counts as one in flight");

    host.deploy(env.complete_release("v2", &["hello-v2"]))
        .unwrap();
    host.flush_unloads();
    assert!(mapped(&v1), "the idle cache still holds generation 1");
    assert_eq!(in_flight(1), Some(1), "status shows what holds it");

    let pin = cache.pin();
    assert_eq!(pin.id(), 2, "the next pin sees the publish");
    assert_eq!(
        pin.call::<_, String>(&hello, &"new").unwrap(),
        "hello v2, new!"
    );
    host.flush_unloads();
    assert!(!mapped(&v1), "moving on released generation 1");
    assert_eq!(in_flight(1), None);
    assert_eq!(in_flight(2), Some(1));

    drop(cache);
    assert_eq!(in_flight(2), Some(0));
}

#[test]
fn with_the_never_policy_old_libraries_stay_mapped_and_rollback_reuses_them() {
    let env = Env::new();
    let host = env.host_with(UnloadPolicy::Never);
    host.deploy(env.complete_release("v1", &["hello-v1"]))
        .unwrap();
    let v1 = staged_path(&host, "hello");
    host.deploy(env.complete_release("v2", &["hello-v2"]))
        .unwrap();
    host.flush_unloads();
    assert!(mapped(&v1), "Never keeps the library mapped");
    let status = host.status();
    let kept = status
        .libraries
        .iter()
        .find(|l| l.path == v1)
        .expect("listed");
    assert_eq!(kept.state, LibraryState::Loaded);

    host.rollback().unwrap();
    assert_eq!(
        staged_path(&host, "hello"),
        v1,
        "the kept library is reused"
    );
    let hello = host.export("hello@1").unwrap();
    assert_eq!(
        host.call::<_, String>(&hello, &"again").unwrap(),
        "hello, again"
    );
}

#[test]
fn keep_history_holds_the_libraries_of_recent_releases_and_unloads_older_ones() {
    let env = Env::new();
    let host = graft_host::Host::builder(env.path("data"))
        .unload_policy(UnloadPolicy::KeepHistory)
        .history(2)
        .build()
        .unwrap();
    host.deploy(env.complete_release("v1", &["hello-v1"]))
        .unwrap();
    let v1 = staged_path(&host, "hello");
    host.deploy(env.complete_release("v2", &["hello-v2"]))
        .unwrap();
    let v2 = staged_path(&host, "hello");
    host.flush_unloads();
    assert!(mapped(&v1), "v1 is in the history: kept for rollback");

    // v1 again: its library was never closed, so it is reused, and v2 is kept in turn.
    host.deploy(env.path("releases/v1")).unwrap();
    assert_eq!(staged_path(&host, "hello"), v1);
    host.flush_unloads();
    assert!(mapped(&v2), "v2 is in the history: kept");

    // A third release pushes v2 out of a history of two: it is closed once drained.
    host.deploy(env.complete_release("v3", &["misbehaving"]))
        .unwrap();
    host.flush_unloads();
    assert!(
        !mapped(&v2),
        "{} left the history but is still mapped",
        v2.display()
    );
    assert!(mapped(&v1), "v1 is still in the history");
}

#[test]
fn many_load_and_unload_cycles_leave_no_library_mapped() {
    let env = Env::new();
    let host = env.host();
    let (v1, v2) = (
        env.complete_release("v1", &["hello-v1"]),
        env.complete_release("v2", &["hello-v2"]),
    );
    let hello = host.export("hello@1").unwrap();
    for i in 0..50 {
        host.deploy(if i % 2 == 0 { &v1 } else { &v2 }).unwrap();
        host.call::<_, String>(&hello, &"x").unwrap();
    }
    host.flush_unloads();
    let staged = env.path("data/staged");
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let ours = maps
        .lines()
        .filter(|l| l.contains(staged.to_str().unwrap()))
        .filter_map(|l| l.split_whitespace().last())
        .collect::<std::collections::BTreeSet<_>>();
    assert_eq!(
        ours.len(),
        1,
        "only the current build stays mapped: {ours:?}"
    );
}

#[test]
fn a_plugin_that_pins_itself_is_reported_and_released_when_its_thread_ends() {
    let env = Env::new();
    let host = env.host();
    host.deploy(env.complete_release("pins", &["pins-itself"]))
        .unwrap();
    let pinned = staged_path(&host, "pins-itself");
    let remember = host.export("remember@1").unwrap();

    // A thread that calls the plugin (filling its thread-local) and stays alive until told.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let (called_tx, called_rx) = std::sync::mpsc::channel::<usize>();
    let worker = {
        let host = &host;
        let remember = remember.clone();
        std::thread::scope(|s| {
            let worker = s.spawn(move || {
                called_tx
                    .send(host.call::<_, usize>(&remember, &"x").unwrap())
                    .unwrap();
                done_rx.recv().unwrap();
            });
            assert_eq!(called_rx.recv().unwrap(), 1);

            host.deploy(env.complete_release("clean", &["hello-v1"]))
                .unwrap();
            host.flush_unloads();
            assert!(mapped(&pinned), "the thread-local keeps the library mapped");
            let status = host.status();
            let lib = status
                .libraries
                .iter()
                .find(|l| l.path == pinned)
                .expect("reported");
            assert_eq!(lib.state, LibraryState::Pinned);
            assert_eq!(lib.plugin, "pins-itself");

            done_tx.send(()).unwrap();
            worker.join()
        })
    };
    worker.unwrap();
    // The thread's exit ran the destructor; glibc frees the library at the next dlclose (it
    // sweeps every unused object then), here the unload of hello v1.
    host.deploy(env.complete_release("clean-again", &["hello-v2"]))
        .unwrap();
    host.flush_unloads();
    assert!(
        !mapped(&pinned),
        "unmapped once the pinning thread exited and something unloaded"
    );
    assert!(
        host.status().libraries.iter().all(|l| l.path != pinned),
        "no longer reported"
    );
}
