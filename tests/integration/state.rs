//! Plugin state held by the host: it survives deploys, rollbacks (migrated down) and every
//! unload policy; a release whose migration or hook fails, or whose drain deadline passes, is
//! refused with the state as it was. State that asks to be saved comes back after a restart.

use std::time::Duration;

use example_types::counter::{IncrV1, KeyCountV1, TotalV1};
use graft::api::DeployRequest;
use graft::client::AdminClient;
use graft::serve::Server;
use graft_host::{DeployCause, DeployError, DisplayChain, Host, Step, UnloadPolicy};

use crate::serve::{assert_metrics, in_process_with, post};
use crate::util::{wait_until, Env};

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
fn a_migration_naming_the_old_schema_by_a_renamed_type_still_applies() {
    // State is compared by structure: `CartStateV1` is `CounterV1` under another name.
    let env = Env::new();
    let host = env.host();
    host.deploy(env.complete_release("v1", &["counter-v1"]))
        .unwrap();
    incr(&host, 4, 0);
    let report = host
        .deploy(env.complete_release("renamed", &["counter-renamed"]))
        .unwrap_or_else(|e| panic!("{}", DisplayChain(&e)));
    assert_eq!(report.migrated, ["counter 1 -> 2 (up)"]);
    assert_eq!(total(&host), 4);
    host.rollback().unwrap();
    assert_eq!(incr(&host, 1, 0), 5);
}

#[test]
fn a_migration_from_another_type_than_the_live_one_is_refused_saying_which_field_differs() {
    let (_env, host, err, text) = refused_over("counter-v1", 2, "counter-mistyped");
    assert_eq!(err.step(), Step::Migrate, "{text}");
    assert!(
        text.contains(
            "carries a migration up from schema 1, but of another type than the live one: \
             field total is AtomicU64 in the live one, AtomicU32 in the migration's"
        ),
        "{text}"
    );
    assert_eq!(
        total(&host),
        2,
        "the old release serves, its state untouched"
    );
}

#[test]
fn with_fresh_state_a_state_that_cannot_carry_over_starts_fresh_with_a_warning() {
    // What `graft dev --fresh-state` sets: the release `refused_over` shows refused goes live.
    let env = Env::new();
    let host = Host::builder(env.path("data"))
        .fresh_state(true)
        .build()
        .unwrap();
    host.deploy(env.complete_release("live", &["counter-v1"]))
        .unwrap();
    incr(&host, 2, 1);
    let report = host
        .deploy(env.complete_release("mistyped", &["counter-mistyped"]))
        .unwrap_or_else(|e| panic!("{}", DisplayChain(&e)));
    assert!(report.migrated.is_empty(), "{:?}", report.migrated);
    let [warning] = &report.warnings[..] else {
        panic!("one warning expected: {:?}", report.warnings)
    };
    assert!(
        warning.starts_with("the state of plugin counter starts fresh (fresh state is on)")
            && warning.contains("field total is AtomicU64 in the live one"),
        "{warning}"
    );
    assert_eq!(total(&host), 0, "started from its initial value");
}

#[test]
fn a_build_staged_for_development_is_a_hard_link_to_it_named_by_its_checksum() {
    use std::os::unix::fs::MetadataExt as _;
    let env = Env::new();
    let host = Host::builder(env.path("data"))
        .staging(graft_host::Staging::Development)
        .build()
        .unwrap();
    let library = crate::util::library("counter-v1");
    host.deploy_libraries(Some("dev".into()), &[library.to_owned()])
        .unwrap_or_else(|e| panic!("{}", DisplayChain(&e)));
    let staged = crate::util::staged_path(&host, "counter");
    let (built, staged_meta) = (
        std::fs::metadata(library).unwrap(),
        std::fs::metadata(&staged).unwrap(),
    );
    let sha = graft_host::sha256_hex_of(std::fs::File::open(library).unwrap()).unwrap();
    assert!(
        staged
            .to_string_lossy()
            .ends_with(&format!("-{}.so", &sha[..16])),
        "{}",
        staged.display()
    );
    if built.dev() == env.path("data").metadata().unwrap().dev() {
        assert_eq!(staged_meta.ino(), built.ino(), "a hard link, no copy");
    } else {
        // Another filesystem: copied (no link can cross it).
        assert_ne!(staged_meta.ino(), built.ino());
    }
    assert_eq!(total(&host), 0);
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
    let text = DisplayChain(&err).to_string();
    assert!(
        matches!(err.cause(), DeployCause::MigrationDrain { in_flight, .. } if in_flight.len() == 1),
        "{text}"
    );
    assert!(text.contains("a call on generation"), "{text}");

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

/// Saves, on `env`'s data directory, counter-v2's state (schema 2) after three increments.
fn saved_counter_v2(env: &Env) {
    let host = env.host();
    host.deploy(env.complete_release("v2", &["counter-v2"]))
        .unwrap();
    incr(&host, 3, 1);
    host.save_state().unwrap();
}

/// A host on `env`'s data directory (a restart is a new one on the same directory).
fn restarted(env: &Env) -> Host {
    env.host()
}

#[test]
fn saved_state_comes_back_after_a_restart_as_it_was_or_migrated_up() {
    let env = Env::new();
    let (v1, v2) = (
        env.complete_release("v1", &["counter-v1"]),
        env.complete_release("v2", &["counter-v2"]),
    );
    let host = env.host();
    assert_eq!(
        host.save_state().unwrap().plugins,
        Vec::<String>::new(),
        "nothing live yet"
    );
    host.deploy(&v1).unwrap();
    incr(&host, 6, 0);
    let saved = host.save_state().unwrap();
    assert_eq!(saved.plugins, ["counter"]);
    incr(&host, 1, 0); // made after the save: a restart without another save loses it
    drop(host);

    // Same schema: the value as it was saved.
    let host = restarted(&env);
    assert_eq!(host.save_state().unwrap().plugins, Vec::<String>::new());
    host.deploy(&v1).unwrap();
    assert_eq!(total(&host), 6);
    incr(&host, 2, 0);
    host.save_state().unwrap();
    drop(host);

    // A newer schema: the saved value migrated up by the build that starts.
    let host = restarted(&env);
    let report = host.deploy(&v2).unwrap();
    assert_eq!(report.migrated, ["counter 1 -> 2 (up)"]);
    assert_eq!(total(&host), 8);
    // Only the first release reads saved state: later ones carry the live value.
    incr(&host, 1, 3);
    host.deploy(&v1).unwrap();
    assert_eq!(total(&host), 9);
    host.save_state().unwrap();
    drop(host);

    // A release without the plugin saves nothing for it, and removes what was saved.
    let host = restarted(&env);
    host.deploy(&v1).unwrap();
    assert_eq!(total(&host), 9);
    host.deploy(env.complete_release("other", &["hello-v1"]))
        .unwrap();
    host.save_state().unwrap();
    drop(host);
    let host = restarted(&env);
    host.deploy(&v1).unwrap();
    assert_eq!(total(&host), 0, "no stale state comes back");
}

#[test]
fn saved_state_of_a_schema_no_loaded_build_migrates_refuses_the_release_naming_the_store() {
    let env = Env::new();
    saved_counter_v2(&env);

    // Schema 2 saved, schema 1 starting: only a loaded schema-2 build could migrate it down.
    let err = restarted(&env)
        .deploy(env.complete_release("v1", &["counter-v1"]))
        .unwrap_err();
    let text = DisplayChain(&err).to_string();
    assert_eq!(err.step(), Step::Migrate, "{text}");
    assert!(err.is_saved_state(), "{text}");
    assert!(
        text.contains("no migration from schema 2 to schema 1")
            && text.contains("state.redb")
            && text.contains("--set-aside-state"),
        "{text}"
    );
}

#[test]
fn a_saved_value_of_another_length_than_its_type_is_refused_though_its_checksum_is_valid() {
    let env = Env::new();
    saved_counter_v2(&env);
    // 72 bytes saved for CounterV2; rewritten as 8, with the record's length and checksum
    // made to match: only the type's size can tell.
    crate::util::rewrite_saved_cell(&env.path("data"), "counter", |value| value.truncate(8));
    let err = restarted(&env)
        .deploy(env.complete_release("v2-again", &["counter-v2"]))
        .unwrap_err();
    let text = DisplayChain(&err).to_string();
    assert!(err.is_saved_state(), "{text}");
    assert!(
        text.contains("the value is 8 bytes") && text.contains("its type is 72 bytes"),
        "{text}"
    );
}

/// `graft serve` of the counter example on `env`, in this process, with its admin client.
fn serve_counter(env: &Env, extra: &str) -> (tokio::runtime::Runtime, Server, AdminClient) {
    let path = env.path("graft.toml");
    std::fs::write(
        &path,
        format!(
            r#"data_dir = "data"
release = "releases/v1"
listen = "127.0.0.1:0"
{extra}
[admin]
listen = "127.0.0.1:0"

[[route]]
method = "POST"
path = "/incr"
export = "incr@1"

[[route]]
method = "POST"
path = "/total"
export = "total@1"
"#
        ),
    )
    .unwrap();
    let (runtime, server) = in_process_with(&path, "[admin]");
    let admin = AdminClient::new(&format!("http://{}", server.admin_addr()), None);
    (runtime, server, admin)
}

fn post_u64(server: &Server, path: &str, key: u32) -> u64 {
    let (status, _, body) = post(&format!("http://{}{path}", server.addr()), &key.to_string());
    assert_eq!(status, 200, "{body}");
    body.parse().unwrap()
}

#[test]
fn graft_serve_saves_state_when_it_stops_and_a_restart_comes_back_with_it_and_counts_migrations() {
    let env = Env::new();
    env.complete_release("v1", &["counter-v1"]);
    let v2 = env.complete_release("v2", &["counter-v2"]);
    let (runtime, server, admin) = serve_counter(&env, "");
    for _ in 0..5 {
        post_u64(&server, "/incr", 0);
    }
    admin.deploy(&DeployRequest::new(v2)).unwrap();
    assert_eq!(post_u64(&server, "/incr", 2), 6);

    assert_metrics(
        &server,
        &[
            "graft_state_migrations_total 1",
            "graft_migration_pause_seconds_count 1",
        ],
    );

    assert!(runtime.block_on(server.shutdown()).is_clean());
    drop(runtime);
    assert!(env.path("data/state.redb").exists());
    // The restart restores the last live release (v2) and its saved state.
    let (runtime, server, _admin) = serve_counter(&env, "");
    assert_eq!(post_u64(&server, "/total", 0), 6);
    assert!(runtime.block_on(server.shutdown()).is_clean());
}

#[test]
fn graft_serve_saves_state_periodically_with_state_save_interval_ms() {
    let env = Env::new();
    env.complete_release("v1", &["counter-v1"]);
    let (_runtime, server, _admin) = serve_counter(&env, "state_save_interval_ms = 50");
    // Without a shutdown (as after a crash), a host started on a copy of the store comes back
    // with what was last saved.
    for _ in 0..3 {
        post_u64(&server, "/incr", 0);
    }
    let file = env.path("data/state.redb");
    let copy = env.path("copy");
    wait_until(
        "a save of all 3 increments",
        Duration::from_secs(30),
        || {
            let _ = std::fs::remove_dir_all(&copy);
            std::fs::create_dir_all(&copy).unwrap();
            // Copied while the server may be writing it: a torn copy is refused; try again.
            std::fs::copy(&file, copy.join("state.redb")).unwrap();
            let Ok(host) = Host::builder(&copy).build() else {
                return false;
            };
            host.deploy(env.path("releases/v1")).unwrap();
            total(&host) == 3
        },
    );
}

#[test]
fn a_worker_pinning_through_a_pin_cache_lets_a_migration_through_and_loses_no_increment() {
    let env = Env::new();
    let host = env.host();
    host.deploy(env.complete_release("v1", &["counter-v1"]))
        .unwrap();
    let incr = host.typed_export::<IncrV1>().unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (acknowledged, reports) = std::thread::scope(|s| {
        let worker = s.spawn(|| {
            let mut cache = host.pin_cache();
            let mut acknowledged = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if cache.pin().call_typed(&incr, 0).is_ok() {
                    acknowledged += 1;
                }
            }
            acknowledged
        });
        // Each deploy migrates; the worker's cache holds a counted pin the whole time, which
        // it lets go at the boundary (else every deploy would pass its drain deadline).
        let reports: Vec<_> = (0..6)
            .map(|i| {
                let release = if i % 2 == 0 {
                    "counter-v2"
                } else {
                    "counter-v1"
                };
                host.deploy(env.complete_release(&format!("r{i}"), &[release]))
            })
            .collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (worker.join().unwrap(), reports)
    });
    for report in reports {
        let report = report.unwrap_or_else(|e| panic!("{}", DisplayChain(&e)));
        assert_eq!(report.migrated.len(), 1);
    }
    assert!(acknowledged > 0);
    assert_eq!(
        total(&host),
        acknowledged,
        "every acknowledged increment is counted"
    );
}
