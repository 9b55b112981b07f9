//! Invariant 2: releases go live whole or not at all; links, shims, carry-over and rollback.

use example_types::{FooInput, FooOutput};
use graft_host::{Change, DeployCause, Step};

use crate::util::{call_foo as foo, history, versions, Env, V1, V2};

#[test]
fn a_new_bar_without_the_new_frob_is_rejected_and_the_old_release_keeps_serving() {
    let env = Env::new();
    let host = env.host();
    host.deploy(env.complete_release("v1", V1)).unwrap();

    let bar_only = env.release("bar-only", &["foo-v2", "bar-v2"]);
    let err = host.deploy(&bar_only).unwrap_err();
    assert_eq!(err.step(), Step::Link);
    let message = graft_host::DisplayChain(&err).to_string();
    assert!(
        message
            .contains("plugin foo imports frob@2, which no plugin of the new generation exports"),
        "{message}"
    );
    // The importer and its file, as the release ships it.
    assert_eq!(err.plugin(), Some("foo"), "{message}");
    assert_eq!(
        err.file().and_then(|f| f.parent()),
        Some(&*bar_only),
        "{message}"
    );

    let err = host
        .deploy(env.release("frob-only", &["frob-v2"]))
        .unwrap_err();
    let message = graft_host::DisplayChain(&err).to_string();
    assert!(message.contains("plugin foo imports frob@1"), "{message}");
    // foo is carried over from v1: its file is the staged copy it runs from.
    assert_eq!(err.plugin(), Some("foo"), "{message}");
    let staged = err.file().expect("the error names foo's file");
    assert!(staged.starts_with(env.path("data/staged")), "{message}");

    assert_eq!(host.pin().id(), 1);
    assert_eq!(versions(&foo(&host, 1)), ("1.0.0", "1.0.0", "1.0.0"));
}

#[test]
fn a_shim_for_the_old_contract_lets_the_new_frob_ship_alone() {
    let env = Env::new();
    let host = env.host();
    host.deploy(env.complete_release("v1", V1)).unwrap();

    let report = host
        .deploy(env.release("frob2+shim", &["frob-v2", "frob-shim"]))
        .unwrap();
    let edges: Vec<_> = report
        .link
        .edges
        .iter()
        .map(|e| {
            (
                e.importer.as_str(),
                e.contract.to_string(),
                e.provider.as_str(),
            )
        })
        .collect();
    assert!(
        edges.contains(&("foo", "frob@1".into(), "frob-shim")),
        "{edges:?}"
    );
    assert!(
        edges.contains(&("frob-shim", "frob@2".into(), "frob")),
        "{edges:?}"
    );
    let kept: Vec<_> = report
        .plugins
        .iter()
        .filter(|p| p.change == Change::Kept)
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(kept, ["foo", "bar"]);

    let out = foo(&host, 1);
    assert_eq!(
        versions(&out),
        ("1.0.0", "1.0.0", "2.0.0"),
        "unchanged callers reach frob 2 through the shim"
    );
    assert_eq!(out.value, 4);

    // Then the callers move to contract 2 and the shim goes, in one release.
    let dir = env.release("v2-callers", &["foo-v2", "bar-v2"]);
    let manifest = std::fs::read_to_string(dir.join("release.toml")).unwrap();
    std::fs::write(
        dir.join("release.toml"),
        format!("remove = [\"frob-shim\"]\n{manifest}"),
    )
    .unwrap();
    let report = host.deploy(&dir).unwrap();
    assert_eq!(report.removed, ["frob-shim"]);
    assert_eq!(versions(&foo(&host, 1)), ("2.0.0", "2.0.0", "2.0.0"));
}

#[test]
fn bar_and_frob_together_go_live_as_one_generation() {
    let env = Env::new();
    let host = env.host();
    host.deploy(env.complete_release("v1", V1)).unwrap();
    let before = host.pin();
    let report = host.deploy(env.release("v2", V2)).unwrap();
    assert_eq!(
        report.generation,
        before.id() + 1,
        "one store, one generation"
    );
    assert!(
        report.plugins.iter().all(|p| p.change == Change::Replaced),
        "{:?}",
        report.plugins
    );
    assert_eq!(versions(&foo(&host, 3)), ("2.0.0", "2.0.0", "2.0.0"));
    let old: FooOutput = before
        .call(
            &host.export("foo@1").unwrap(),
            &FooInput {
                a: 3,
                ..FooInput::default()
            },
        )
        .unwrap();
    assert_eq!(versions(&old), ("1.0.0", "1.0.0", "1.0.0"));
}

#[test]
fn rollback_restores_the_previous_release() {
    let env = Env::new();
    let host = env.host();
    let err = host.rollback().unwrap_err();
    assert!(
        matches!(err.cause(), DeployCause::NothingToRollBack),
        "{err}"
    );

    host.deploy(env.complete_release("v1", V1)).unwrap();
    host.deploy(env.complete_release("v2", V2)).unwrap();
    assert_eq!(foo(&host, 1).value, 14);
    let report = host.rollback().unwrap();
    assert_eq!(report.release.as_deref(), Some("v1"));
    let out = foo(&host, 1);
    assert_eq!(
        (versions(&out), out.value),
        (("1.0.0", "1.0.0", "1.0.0"), 4)
    );
    assert_eq!(history(&host), ["v1"]);
    assert!(matches!(
        host.rollback().unwrap_err().cause(),
        DeployCause::NothingToRollBack
    ));
}

#[test]
fn rollback_reloads_from_the_staged_copy_when_the_release_directory_is_gone() {
    let env = Env::new();
    let host = env.host();
    let v1 = env.complete_release("v1", V1);
    host.deploy(&v1).unwrap();
    host.deploy(env.complete_release("v2", V2)).unwrap();
    host.flush_unloads();
    std::fs::remove_dir_all(&v1).unwrap();
    host.rollback().unwrap();
    assert_eq!(versions(&foo(&host, 2)), ("1.0.0", "1.0.0", "1.0.0"));
}

#[test]
fn a_restart_without_staged_copies_restores_from_the_sources_then_from_earlier_releases() {
    let env = Env::new();
    let staged = env.path("data/staged");
    let (v1, v2) = (
        env.complete_release("v1", V1),
        env.complete_release("v2", V2),
    );
    {
        let host = env.host();
        host.deploy(&v1).unwrap();
        // A refused build's staged copies are removed at once: only v1's three remain.
        host.deploy(env.release("bar-only", &["foo-v2", "bar-v2"]))
            .unwrap_err();
        host.deploy(env.release("corrupt", &["not-a-plugin"]))
            .unwrap_err();
        assert_eq!(std::fs::read_dir(&staged).unwrap().count(), 3);
        host.deploy(&v2).unwrap();
    }

    // The staged copies are lost: v2 comes back from its release directory.
    std::fs::remove_dir_all(&staged).unwrap();
    {
        let host = env.host();
        let report = host.restore().unwrap().expect("a release was recorded");
        assert_eq!(report.release.as_deref(), Some("v2"));
        assert_eq!(versions(&foo(&host, 1)), ("2.0.0", "2.0.0", "2.0.0"));
        assert_eq!(history(&host), ["v1", "v2"]);
    }

    // Staged copies and v2's directory lost: the release before it, from its directory, with
    // the history up to it.
    std::fs::remove_dir_all(&staged).unwrap();
    std::fs::remove_dir_all(&v2).unwrap();
    {
        let host = env.host();
        let report = host.restore().unwrap().expect("a release was recorded");
        assert_eq!(report.release.as_deref(), Some("v1"));
        assert_eq!(versions(&foo(&host, 1)), ("1.0.0", "1.0.0", "1.0.0"));
        assert_eq!(history(&host), ["v1"]);
    }

    // Nothing recorded deploys any more: the error is the last live release's.
    std::fs::remove_dir_all(&staged).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();
    let err = env.host().restore().unwrap_err();
    assert_eq!(err.step(), Step::Stage, "{err}");
    assert!(err.to_string().contains("foo"), "{err}");
}

#[test]
fn history_keeps_the_configured_number_of_releases() {
    let env = Env::new();
    let host = graft_host::Host::builder(env.path("data"))
        .history(3)
        .build()
        .unwrap();
    let (v1, v2) = (
        env.complete_release("v1", V1),
        env.complete_release("v2", V2),
    );
    for i in 0..6 {
        host.deploy(if i % 2 == 0 { &v1 } else { &v2 }).unwrap();
    }
    let status = host.status();
    assert_eq!(status.history.len(), 3);
    assert_eq!(status.history.last().unwrap().generation, 6);
    // Only the staged copies of recorded releases are kept.
    let staged = std::fs::read_dir(env.path("data/staged")).unwrap().count();
    assert_eq!(staged, 6, "three plugins in each of two builds");
}

#[test]
fn status_reports_generations_plugins_and_libraries() {
    let env = Env::new();
    let host = env.host();
    host.deploy(env.complete_release("v1", V1)).unwrap();
    let status = host.status();
    assert_eq!(status.current, 1);
    let current = status
        .generations
        .iter()
        .find(|g| g.role == graft_host::status::GenerationRole::Current)
        .unwrap();
    let mut plugins: Vec<_> = current
        .plugins
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    plugins.sort();
    assert_eq!(
        plugins,
        [("bar", "1.0.0"), ("foo", "1.0.0"), ("frob", "1.0.0")]
    );
    assert_eq!(status.libraries.len(), 3);
    assert!(status.last_deploy.as_ref().unwrap().error.is_none());
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(
        json["generations"][0]["plugins"][0]["api_version"],
        graft_host::API_VERSION
    );
}

#[test]
fn removing_a_plugin_the_generation_does_not_have_is_a_warning_not_a_refusal() {
    let env = Env::new();
    let host = env.host();
    host.deploy(env.complete_release("v1", V1)).unwrap();
    let dir = env.release("ghost", &["hello-v1"]);
    let manifest = std::fs::read_to_string(dir.join("release.toml")).unwrap();
    std::fs::write(
        dir.join("release.toml"),
        format!("remove = [\"ghost\"]\n{manifest}"),
    )
    .unwrap();
    let report = host.deploy(&dir).unwrap();
    assert_eq!(
        report.warnings,
        ["the release removes plugin ghost, which generation 1 does not have"]
    );
    assert!(
        report.to_string().ends_with(
            "; warning: the release removes plugin ghost, which generation 1 does not have"
        ),
        "{report}"
    );
    assert_eq!(report.plugins.len(), 4, "hello added, the rest kept");
}

#[test]
fn a_new_host_on_the_same_data_dir_restores_the_last_live_release_and_its_history() {
    let env = Env::new();
    {
        let host = env.host();
        assert!(host.restore().unwrap().is_none(), "nothing recorded yet");
        host.deploy(env.complete_release("v1", V1)).unwrap();
        host.deploy(env.complete_release("v2", V2)).unwrap();
        let _ = host.deploy(env.release("bad", &["frob-v1"])).unwrap_err();
        // Prepared, never published: its id was handed out all the same.
        let unpublished = host.prepare(env.complete_release("v1-again", V1)).unwrap();
        assert_eq!(unpublished.id(), 3);
    }
    let host = env.host();
    let report = host.restore().unwrap().expect("a release was recorded");
    assert_eq!(report.release.as_deref(), Some("v2"));
    assert!(
        report.generation > 3,
        "generation ids go on past every id handed out (v1 1, v2 2, the unpublished 3): {}",
        report.generation
    );
    assert_eq!(versions(&foo(&host, 1)), ("2.0.0", "2.0.0", "2.0.0"));
    host.rollback().unwrap();
    assert_eq!(versions(&foo(&host, 1)), ("1.0.0", "1.0.0", "1.0.0"));
    // A host that does not restore (its configured release instead) goes on past them too.
    // (One host at a time on a data directory: its store is locked while it is open.)
    drop(host);
    let fresh = env.host();
    let id = fresh
        .deploy(env.complete_release("v1-later", V1))
        .unwrap()
        .generation;
    assert!(id > report.generation, "{id} after {}", report.generation);
    drop(fresh);

    std::fs::write(env.path("data").join(graft_host::RECORD), "{ not json").unwrap();
    let err = env.host().restore().unwrap_err();
    assert!(matches!(err.cause(), DeployCause::Record(_)), "{err}");
}
