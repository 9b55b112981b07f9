//! Plugin state held by the host: it survives deploys, rollbacks (migrated down) and every
//! unload policy; a release whose migration or hook fails, or whose drain deadline passes, is
//! refused with the state as it was.

use std::time::Duration;

use example_types::counter::{IncrV1, KeyCountV1, TotalV1};
use graft_host::{DeployCause, DeployError, DisplayChain, Host, Step, UnloadPolicy};

use crate::util::Env;

const POLICIES: [UnloadPolicy; 3] = [
    UnloadPolicy::WhenDrained,
    UnloadPolicy::KeepHistory,
    UnloadPolicy::Never,
];

fn incr(host: &Host, times: u64, key: u32) -> u64 {
    let incr = host.typed_export::<IncrV1>().unwrap();
    (0..times)
        .map(|_| host.call_typed(&incr, key).unwrap())
        .last()
        .unwrap_or(0)
}

fn total(host: &Host) -> u64 {
    let total = host.typed_export::<TotalV1>().unwrap();
    host.call_typed(&total, 0).unwrap()
}

#[test]
fn state_survives_deploys_and_rollbacks_under_every_unload_policy() {
    for policy in POLICIES {
        let env = Env::new();
        let host = env.host_with(policy);
        let (v1, v2) = (
            env.complete_release("v1", &["counter-v1"]),
            env.complete_release("v2", &["counter-v2"]),
        );
        host.deploy(&v1).unwrap();
        assert_eq!(incr(&host, 4, 0), 4, "{policy:?}");

        // Up: the total carries into schema 2, under key 0.
        let report = host.deploy(&v2).unwrap();
        assert_eq!(report.migrated, ["counter 1 -> 2 (up)"], "{policy:?}");
        assert_eq!(total(&host), 4);
        incr(&host, 3, 5);
        let key_count = host.typed_export::<KeyCountV1>().unwrap();
        assert_eq!(host.call_typed(&key_count, 0).unwrap(), 4);
        assert_eq!(host.call_typed(&key_count, 5).unwrap(), 3);

        // Rollback: v2's `down` runs, so v1 sees 7, not the 4 it left behind.
        let report = host.rollback().unwrap();
        assert_eq!(report.migrated, ["counter 2 -> 1 (down)"], "{policy:?}");
        assert_eq!(total(&host), 7, "{policy:?}: nothing stale comes back");
        assert_eq!(incr(&host, 1, 0), 8);

        // Same schema: passed through as is, no migration, no pause.
        let report = host
            .deploy(env.complete_release("v1-again", &["counter-v1"]))
            .unwrap();
        assert!(report.migrated.is_empty());
        assert_eq!(report.pause, Duration::ZERO);
        assert_eq!(total(&host), 8, "{policy:?}");
        host.flush_unloads();
        assert_eq!(incr(&host, 1, 0), 9, "{policy:?}");
    }
}

/// A host serving the release of crate `live` after `increments` increments (under key 1),
/// and the error of deploying crate `refused` over it, with its whole chain as text.
fn refused_over(live: &str, increments: u64, refused: &str) -> (Env, Host, DeployError, String) {
    let env = Env::new();
    let host = env.host();
    host.deploy(env.complete_release("live", &[live])).unwrap();
    incr(&host, increments, 1);
    let err = host
        .deploy(env.complete_release("refused", &[refused]))
        .unwrap_err();
    let text = DisplayChain(&err).to_string();
    (env, host, err, text)
}

#[test]
fn a_panicking_migration_refuses_the_release_with_the_state_intact() {
    let (_env, host, err, text) = refused_over("counter-v2", 5, "counter-faulty");
    assert_eq!(err.step(), Step::Migrate, "{err}");
    assert!(
        text.contains("counter") && text.contains("this migration is broken"),
        "{text}"
    );
    assert_eq!(total(&host), 5);
    assert_eq!(
        incr(&host, 1, 1),
        6,
        "the old release serves, its state untouched"
    );
}

#[test]
fn a_release_with_no_path_between_schemas_is_refused_naming_both() {
    let (_env, host, err, text) = refused_over("counter-v1", 0, "counter-faulty");
    assert_eq!(err.step(), Step::Migrate, "{err}");
    assert!(
        text.contains("no migration from schema 1 to schema 3"),
        "{text}"
    );
    assert_eq!(incr(&host, 1, 0), 1);
}

#[test]
fn a_panicking_pre_activate_hook_is_contained_and_vetoes_the_release() {
    let (_env, host, err, text) = refused_over("counter-v2", 2, "counter-veto");
    assert_eq!(err.step(), Step::Activate, "{err}");
    assert!(matches!(err.cause(), DeployCause::Veto(_)), "{err}");
    assert!(text.contains("not today"), "{err}");
    assert_eq!(incr(&host, 1, 0), 3);
}

#[test]
fn a_migration_whose_drain_deadline_passes_is_refused_and_no_request_fails() {
    let env = Env::new();
    let host = Host::builder(env.path("data"))
        .migration_drain(Duration::from_millis(100))
        .build()
        .unwrap();
    host.deploy(env.complete_release("v1", &["counter-v1"]))
        .unwrap();
    let incr_export = host.typed_export::<IncrV1>().unwrap();

    // A request in flight that outlasts the deadline.
    let request = host.pin_owned();
    assert_eq!(request.call_typed(&incr_export, 0).unwrap().get(), 1);
    let err = host
        .deploy(env.complete_release("v2", &["counter-v2"]))
        .unwrap_err();
    assert_eq!(err.step(), Step::Migrate, "{err}");
    assert!(
        matches!(err.cause(), DeployCause::MigrationDrain(_)),
        "{err}"
    );

    // The held request finishes on its generation; new ones are admitted again.
    assert_eq!(request.call_typed(&incr_export, 0).unwrap().get(), 2);
    drop(request);
    assert!(host.try_pin_owned().is_some(), "the boundary is open again");
    assert_eq!(incr(&host, 1, 0), 3);

    // With the request gone, the same release migrates.
    host.deploy(env.complete_release("v2-again", &["counter-v2"]))
        .unwrap();
    assert_eq!(total(&host), 3);
}
