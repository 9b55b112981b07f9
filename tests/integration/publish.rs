//! Prepare, then publish: a prepared release goes live only onto the generation it was prepared
//! against; one that another release overtook is refused, never silently undoing it.

use example_types::{FooInput, FooOutput};
use graft_host::{DeployCause, Step};

use crate::util::{call_foo, history, versions, Env, V1, V2};

/// All three of foo, bar and frob at `version`.
fn all(version: &str) -> (&str, &str, &str) {
    (version, version, version)
}

#[test]
fn a_release_prepared_before_a_rollback_is_refused_at_publish_and_the_rollback_stays_live() {
    let env = Env::new();
    let host = env.host();
    host.deploy(env.complete_release("v1", V1)).unwrap();
    host.deploy(env.complete_release("v2", V2)).unwrap();
    let hello = env.release("hello", &["hello-v1"]);

    let prepared = host.prepare(&hello).unwrap();
    assert_eq!(prepared.base(), 2, "prepared against generation 2");
    assert_eq!(host.pin().id(), 2, "preparing changes nothing that serves");

    let rollback = host.rollback().unwrap();
    assert_eq!(rollback.release.as_deref(), Some("v1"));
    let err = host.publish(prepared).unwrap_err();
    assert_eq!(err.step(), Step::Publish);
    assert!(
        matches!(
            err.cause(),
            DeployCause::Stale {
                prepared_against: 2,
                current
            } if *current == rollback.generation
        ),
        "{err:?}"
    );
    assert!(
        graft_host::DisplayChain(&err)
            .to_string()
            .contains("went live since"),
        "{err}"
    );
    assert_eq!(
        host.pin().id(),
        rollback.generation,
        "the rollback stays live"
    );
    assert_eq!(versions(&call_foo(&host, 1)), all("1.0.0"));
    assert_eq!(
        history(&host),
        ["v1"],
        "the refused release never entered the history"
    );

    // Prepared again, against what is live now, it goes live.
    let report = host.publish(host.prepare(&hello).unwrap()).unwrap();
    assert_eq!(host.pin().id(), report.generation);
}

#[test]
fn of_two_releases_prepared_together_the_second_to_publish_is_refused() {
    let env = Env::new();
    let host = env.host();
    host.deploy(env.complete_release("v1", V1)).unwrap();
    let first = host.prepare(env.complete_release("v2", V2)).unwrap();
    let second = host.prepare(env.release("hello", &["hello-v1"])).unwrap();
    assert_eq!((first.base(), second.base()), (1, 1));

    // The second finished preparing first: it goes live, and the first may not undo it.
    let live = host.publish(second).unwrap();
    let err = host.publish(first).unwrap_err();
    assert_eq!(err.step(), Step::Publish);
    assert_eq!(host.pin().id(), live.generation);
    assert_eq!(versions(&call_foo(&host, 1)), all("1.0.0"));
    assert!(host.export("hello@1").is_ok());
}

#[test]
fn a_prepared_release_is_live_nowhere_until_published_and_keeps_its_generation() {
    let env = Env::new();
    let host = env.host();
    host.deploy(env.complete_release("v1", V1)).unwrap();
    let prepared = host.prepare(env.complete_release("v2", V2)).unwrap();
    let status = host.status();
    let role = |id| {
        status
            .generations
            .iter()
            .find(|g| g.id == id)
            .map(|g| g.role)
    };
    assert_eq!(
        role(prepared.id()),
        Some(graft_host::status::GenerationRole::Prepared)
    );
    assert_eq!(versions(&call_foo(&host, 1)), all("1.0.0"));

    // Its generation can be pinned directly (a rollout's canary is served that way).
    let foo = host.export("foo@1").unwrap();
    let canary = graft_host::OwnedPin::new(std::sync::Arc::clone(prepared.generation()));
    let out: FooOutput = canary.call(&foo, &FooInput::default()).unwrap();
    assert_eq!(out.foo, "2.0.0");
    assert_eq!(prepared.generation().in_flight(), 1, "the pin is counted");
    drop(canary);

    let id = prepared.id();
    let report = host.publish(prepared).unwrap();
    assert_eq!(report.generation, id);
    assert_eq!(versions(&call_foo(&host, 1)), all("2.0.0"));
}

#[test]
fn an_embedder_is_told_of_each_generation_made_current_right_after_the_store() {
    let env = Env::new();
    let host = std::sync::Arc::new(env.host());
    let told = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (seen, current) = (
        std::sync::Arc::clone(&told),
        std::sync::Arc::downgrade(&host),
    );
    assert!(host.on_switch(move |generation| {
        // Already current when told.
        let now = current.upgrade().map(|host| host.current().id());
        seen.lock().unwrap().push((generation.id(), now));
    }));
    assert!(!host.on_switch(|_| {}), "set once");
    let v1 = host
        .deploy(env.complete_release("v1", V1))
        .unwrap()
        .generation;
    let v2 = host
        .deploy(env.complete_release("v2", V2))
        .unwrap()
        .generation;
    let back = host.rollback().unwrap().generation;
    let prepared = host.prepare(env.complete_release("v2", V2)).unwrap();
    assert_eq!(
        told.lock().unwrap().len(),
        3,
        "a prepared release is not current"
    );
    let last = host.publish(prepared).unwrap().generation;
    let expected: Vec<_> = [v1, v2, back, last].iter().map(|&g| (g, Some(g))).collect();
    assert_eq!(*told.lock().unwrap(), expected);
}
