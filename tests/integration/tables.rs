//! Tables held by the host: entries outlive every build, migrate entry by entry up and down,
//! hold to their limits, and come back after a restart as their durability says.

use example_types::kv::{CountV1, GetManyV1, GetV1, Put, PutV1};
use graft_host::{DisplayChain, Durability, Host, TableSettings, UnloadPolicy};

use crate::util::Env;

fn put(host: &Host, key: &str, value: &str) -> Result<bool, graft_host::CallError> {
    let export = host.typed_export::<PutV1>().unwrap();
    host.call_typed(
        &export,
        Put {
            key: key.into(),
            value: value.into(),
        },
    )
}

fn get(host: &Host, key: &str) -> Option<String> {
    let export = host.typed_export::<GetV1>().unwrap();
    host.call_typed(&export, key.to_owned()).ok()
}

fn count(host: &Host) -> u64 {
    let export = host.typed_export::<CountV1>().unwrap();
    host.call_typed(&export, None).unwrap()
}

fn host_with(env: &Env, policy: UnloadPolicy, settings: TableSettings) -> Host {
    Host::builder(env.path("data"))
        .unload_policy(policy)
        .table("kv", "entries", settings)
        .build()
        .unwrap()
}

#[test]
fn entries_survive_deploys_and_migrate_up_and_down_under_every_unload_policy() {
    for policy in [
        UnloadPolicy::WhenDrained,
        UnloadPolicy::KeepHistory,
        UnloadPolicy::Never,
    ] {
        let env = Env::new();
        let host = host_with(&env, policy, TableSettings::new(Durability::Memory));
        let (v1, v2) = (
            env.complete_release("v1", &["kv-v1"]),
            env.complete_release("v2", &["kv-v2"]),
        );
        host.deploy(&v1).unwrap();
        for i in 0..100 {
            assert!(!put(&host, &format!("k{i}"), &format!("v{i}")).unwrap());
        }
        let report = host
            .deploy(&v2)
            .unwrap_or_else(|e| panic!("{}", DisplayChain(&e)));
        assert_eq!(report.migrated, ["kv.entries 1 -> 2 (up)"], "{policy:?}");
        assert_eq!(report.entries_migrated, 100);
        assert_eq!(count(&host), 100);
        assert_eq!(get(&host, "k7").as_deref(), Some("v7"));
        assert!(put(&host, "k7", "seven").unwrap(), "replaced");
        put(&host, "new", "n").unwrap();

        let report = host.rollback().unwrap();
        assert_eq!(report.migrated, ["kv.entries 2 -> 1 (down)"], "{policy:?}");
        assert_eq!(count(&host), 101, "nothing written under schema 2 is lost");
        assert_eq!(get(&host, "k7").as_deref(), Some("seven"));
        assert_eq!(get(&host, "new").as_deref(), Some("n"));

        // Same schema: passed through, no migration.
        let report = host
            .deploy(env.complete_release("v1-again", &["kv-v1"]))
            .unwrap();
        assert!(report.migrated.is_empty());
        host.flush_unloads();
        assert_eq!(count(&host), 101, "{policy:?}");
        let many = host.typed_export::<GetManyV1>().unwrap();
        assert_eq!(
            host.call_typed(&many, vec!["k1".into(), "none".into()])
                .unwrap(),
            [Some("v1".to_owned()), None]
        );
    }
}

#[test]
fn past_its_limits_a_table_refuses_the_write_and_the_plugin_answers() {
    let env = Env::new();
    let host = host_with(
        &env,
        UnloadPolicy::WhenDrained,
        TableSettings::new(Durability::Memory).max_entries(3),
    );
    host.deploy(env.complete_release("v1", &["kv-v1"])).unwrap();
    for i in 0..3 {
        put(&host, &format!("k{i}"), "x").unwrap();
    }
    let err = put(&host, "k3", "x").unwrap_err();
    assert_eq!(
        err.kind(),
        Some(graft_host::ErrorKind::UNAVAILABLE),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("kv.entries is at its limit of 3 entries"),
        "{err}"
    );
    assert!(
        put(&host, "k0", "y").unwrap(),
        "a key already there can still change"
    );
    assert_eq!(count(&host), 3);
}

#[test]
fn tables_come_back_after_a_restart_as_their_durability_says() {
    for durability in [Durability::OnStop, Durability::EveryWrite] {
        let env = Env::new();
        let v1 = env.complete_release("v1", &["kv-v1"]);
        let v2 = env.complete_release("v2", &["kv-v2"]);
        let start = |durability| {
            host_with(
                &env,
                UnloadPolicy::WhenDrained,
                TableSettings::new(durability),
            )
        };
        let key = |i: u32| format!("{durability:?}-{i}");
        let host = start(durability);
        host.deploy(&v1).unwrap();
        for i in 0..50 {
            put(&host, &key(i), "one").unwrap();
        }
        if durability == Durability::OnStop {
            host.save_state().unwrap();
        }
        drop(host);
        // Restarted on a newer schema: the saved entries migrate up as they are read.
        let host = start(durability);
        host.deploy(&v2).unwrap();
        assert_eq!(count(&host), 50, "{durability:?}");
        assert_eq!(get(&host, &key(7)).as_deref(), Some("one"));
        put(&host, &key(7), "two").unwrap();
        host.save_state().unwrap();
        drop(host);
        let host = start(durability);
        host.deploy(&v2).unwrap();
        assert_eq!(get(&host, &key(7)).as_deref(), Some("two"));
        drop(host);
        // A memory table starts empty.
        let host = start(Durability::Memory);
        host.deploy(&v2).unwrap();
        assert_eq!(count(&host), 0, "{durability:?}");
    }
}

/// `graft serve` of the kv example in this process, its table configured by `table`.
fn serve_kv(env: &Env, table: &str) -> (tokio::runtime::Runtime, graft::serve::Server) {
    env.complete_release("v1", &["kv-v1"]);
    let path = env.path("graft.toml");
    std::fs::write(
        &path,
        format!(
            r#"data_dir = "data"
release = "releases/v1"
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[[table]]
name = "kv.entries"
{table}

[[route]]
method = "POST"
path = "/put"
export = "kv.put@1"

[[route]]
method = "POST"
path = "/get"
export = "kv.get@1"
"#
        ),
    )
    .unwrap();
    crate::serve::in_process_with(&path, "[admin]")
}

#[test]
fn graft_serve_keeps_tables_as_configured_and_answers_507_past_a_limit() {
    let env = Env::new();
    let (runtime, server) = serve_kv(&env, "durability = \"on-stop\"\nmax_entries = 2");
    let base = format!("http://{}", server.addr());
    for key in ["a", "b"] {
        let (status, _, body) = crate::serve::post(
            &format!("{base}/put"),
            &format!(r#"{{"key":"{key}","value":"x"}}"#),
        );
        assert_eq!(status, 200, "{body}");
    }
    let full = |base: &str| {
        crate::serve::agent()
            .post(&format!("{base}/put"))
            .content_type("application/json")
            .send(r#"{"key":"c","value":"x"}"#)
            .unwrap()
            .status()
            .as_u16()
    };
    // kv-v1 answers a full table with a 503 of its own; kv-v2 lets `?` carry it: 507.
    assert_eq!(full(&base), 503);
    let admin = graft::client::AdminClient::new(&format!("http://{}", server.admin_addr()), None);
    admin
        .deploy(&graft::api::DeployRequest::new(
            env.complete_release("v2", &["kv-v2"]),
        ))
        .unwrap();
    assert_eq!(full(&base), 507);
    let status = admin.status().unwrap().host;
    let table = &status.tables[0];
    assert_eq!(
        (
            table.name.as_str(),
            table.entries,
            table.max_entries,
            table.durability
        ),
        ("entries", 2, Some(2), Durability::OnStop)
    );
    crate::serve::assert_metrics(
        &server,
        &["graft_table_entries{plugin=\"kv\",table=\"entries\"} 2"],
    );
    assert!(runtime.block_on(server.shutdown()).is_clean());
    drop(runtime);

    let (runtime, server) = serve_kv(&env, "durability = \"on-stop\"");
    let (status, _, body) = crate::serve::post(&format!("http://{}/get", server.addr()), r#""b""#);
    assert_eq!((status, body.as_str()), (200, r#""x""#));
    assert!(runtime.block_on(server.shutdown()).is_clean());
}

#[test]
fn a_table_saved_at_intervals_needs_an_interval() {
    let env = Env::new();
    env.complete_release("v1", &["kv-v1"]);
    let path = env.path("graft.toml");
    std::fs::write(
        &path,
        "data_dir = \"data\"\n[[table]]\nname = \"kv.entries\"\ndurability = \"interval\"\n",
    )
    .unwrap();
    let error = graft::config::ServeConfig::load(&path)
        .unwrap_err()
        .to_string();
    assert!(error.contains("state_save_interval_ms is 0"), "{error}");
    std::fs::write(
        &path,
        "data_dir = \"data\"\n[[table]]\nname = \"entries\"\n",
    )
    .unwrap();
    let error = graft::config::ServeConfig::load(&path)
        .unwrap_err()
        .to_string();
    assert!(error.contains("is not plugin.table"), "{error}");
}

#[test]
fn every_write_entries_survive_a_crash_after_migrations_up_and_down() {
    let env = Env::new();
    let settings = TableSettings::new(Durability::EveryWrite);
    let (v1, v2) = (
        env.complete_release("v1", &["kv-v1"]),
        env.complete_release("v2", &["kv-v2"]),
    );
    {
        let host = host_with(&env, UnloadPolicy::WhenDrained, settings);
        host.deploy(&v1).unwrap();
        for i in 0..200 {
            put(&host, &format!("a{i}"), "1").unwrap();
        }
        host.deploy(&v2).unwrap(); // up: the store is rewritten in schema 2
        put(&host, "b", "2").unwrap();
        host.rollback().unwrap(); // down: rewritten in schema 1 before the record says v1
        put(&host, "c", "3").unwrap();
        // Dropped without a save, as a killed process would be: only every-write keeps it.
    }
    let host = host_with(&env, UnloadPolicy::WhenDrained, settings);
    let report = host
        .restore()
        .unwrap_or_else(|e| panic!("{}", DisplayChain(&e)))
        .expect("a release was recorded");
    assert_eq!(report.release.as_deref(), Some("v1"));
    assert_eq!(count(&host), 202);
    assert_eq!(
        (get(&host, "a7"), get(&host, "b"), get(&host, "c")),
        (Some("1".into()), Some("2".into()), Some("3".into()))
    );
}
