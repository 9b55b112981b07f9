//! The admin plane never waits on a deploy: status and rollback answer while a deploy is held
//! in a plugin's initialiser, an initialiser past `init_timeout_ms` refuses its deploy, and a
//! deploy whose client went away is accounted for. Lifecycle hooks get the same deadline
//! (`hook_timeout_ms`): a `pre_activate` past it refuses its release, a `pre_unload` past it
//! does not hold up other unloads.
//!
//! The held initialiser is the `slow-init` test plugin, which waits for a file to appear in the
//! directory `GRAFT_TEST_INIT_GATE` names; the held hooks are `slow-hooks`'s, the same way with
//! `GRAFT_TEST_HOOK_GATE`. Requests made while it is held use a client with a
//! 10 s timeout, far below the plugin's own 60 s limit: an admin plane that waited for the
//! initialiser would fail them.

use std::path::PathBuf;
use std::time::Duration;

use example_types::FooOutput;
use graft::api::{DeployRequest, ErrorCode};
use graft::client::AdminClient;
use graft_host::status::LibraryState;

use crate::serve::{config, post, spawn_graft_serve_logged, spawn_graft_serve_with, write_post};
use crate::util::{mapped_in, wait_until, Env};

/// A fresh gate directory for the slow-init plugin.
fn gate(env: &Env, name: &str) -> PathBuf {
    let gate = env.path(name);
    std::fs::create_dir_all(&gate).unwrap();
    gate
}

fn wait_for_init(gate: &std::path::Path) {
    wait_until(
        "the held deploy to reach its init",
        Duration::from_secs(60),
        || gate.join("init-started").exists(),
    );
}

/// The state of the slow-init library, as status reports it.
fn slow_init_state(admin: &AdminClient) -> Option<LibraryState> {
    library_state(admin, "slow-init")
}

/// The state of a plugin's library, as status reports it.
fn library_state(admin: &AdminClient, plugin: &str) -> Option<LibraryState> {
    let status = admin.status().unwrap();
    status
        .host
        .libraries
        .iter()
        .find(|l| l.plugin == plugin)
        .map(|l| l.state)
}

#[test]
fn while_a_deploy_is_held_in_init_status_and_rollback_answer_and_the_app_keeps_serving() {
    let env = Env::new();
    let gate = gate(&env, "gate");
    let (_server, base, admin_url) = spawn_graft_serve_with(
        &config(&env, "init_timeout_ms = 120000"),
        &[("GRAFT_TEST_INIT_GATE", &gate)],
        &[],
    );
    let admin = AdminClient::new(&admin_url, None).timeout(Duration::from_secs(10));
    admin
        .deploy(&DeployRequest::new(env.path("releases/v2")))
        .unwrap();

    let held = {
        let (admin, dir) = (admin.clone(), env.release("held", &["slow-init"]));
        let patient = admin.timeout(Duration::from_secs(120));
        std::thread::spawn(move || patient.deploy(&DeployRequest::new(dir)))
    };
    wait_for_init(&gate);

    // Held in init: status answers, and says so.
    let status = admin.status().expect("status answers during the held init");
    assert_eq!(status.host.current, 2);
    assert_eq!(slow_init_state(&admin), Some(LibraryState::Initialising));
    // A rollback goes through.
    let rolled_back = admin
        .rollback()
        .expect("rollback answers during the held init");
    assert_eq!(rolled_back.report.release.as_deref(), Some("v1"));
    let current = rolled_back.report.generation;
    // The app serves the rolled-back release.
    let (code, generation, body) = post(&format!("{base}/foo"), r#"{"a": 1}"#);
    assert_eq!((code, generation), (200, current), "{body}");
    assert_eq!(
        serde_json::from_str::<FooOutput>(&body).unwrap().foo,
        "1.0.0"
    );
    assert!(
        !gate.join("go").exists(),
        "all of this happened before the init was released"
    );

    // Released, the held deploy was prepared against generation 2: it may not undo the rollback.
    std::fs::write(gate.join("go"), b"").unwrap();
    let refused = held.join().unwrap().unwrap_err();
    let error = refused.api().unwrap_or_else(|| panic!("{refused}"));
    assert_eq!(error.error, ErrorCode::DeployRejected);
    assert_eq!(error.step.as_deref(), Some("publish"), "{}", error.message);
    assert!(
        error.message.contains("prepared against generation 2"),
        "{}",
        error.message
    );
    assert_eq!(admin.status().unwrap().host.current, current);
    assert_eq!(post(&format!("{base}/foo"), r#"{"a": 1}"#).1, current);
}

#[test]
fn an_init_past_init_timeout_ms_refuses_the_deploy_at_init_and_the_old_generation_serves() {
    let env = Env::new();
    let gate = gate(&env, "gate");
    let (_server, base, admin_url) = spawn_graft_serve_with(
        &config(&env, "init_timeout_ms = 300"),
        &[("GRAFT_TEST_INIT_GATE", &gate)],
        &[],
    );
    let admin = AdminClient::new(&admin_url, None).timeout(Duration::from_secs(30));

    let refused = admin
        .deploy(&DeployRequest::new(env.release("held", &["slow-init"])))
        .unwrap_err();
    let error = refused.api().unwrap_or_else(|| panic!("{refused}"));
    assert_eq!(error.step.as_deref(), Some("init"), "{}", error.message);
    assert_eq!(error.plugin.as_deref(), Some("slow-init"));
    assert!(
        error.message.contains("still running after 300 ms"),
        "{}",
        error.message
    );
    let status = admin.status().unwrap();
    assert_eq!(status.host.current, 1, "the old generation serves on");
    assert!(status
        .host
        .last_deploy
        .unwrap()
        .error
        .unwrap()
        .contains("init"));
    assert_eq!(slow_init_state(&admin), Some(LibraryState::Abandoned));
    assert_eq!(post(&format!("{base}/foo"), r#"{"a": 1}"#).1, 1);
    // Plain `graft status` names it and says why it is still mapped.
    let (ok, stdout, stderr) = crate::util::run_graft(&["status", "--admin", &admin_url]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("slow-init") && stdout.contains("abandoned (its initialiser ran past"),
        "{stdout}"
    );

    // Once the abandoned initialiser returns, its library goes.
    std::fs::write(gate.join("go"), b"").unwrap();
    wait_until(
        "the abandoned library to go",
        Duration::from_secs(60),
        || slow_init_state(&admin).is_none(),
    );
}

#[test]
fn a_deploy_whose_client_goes_away_while_it_prepares_is_not_published_and_says_so() {
    let env = Env::new();
    let gate = gate(&env, "gate");
    let (_server, base, admin_url, log) =
        spawn_graft_serve_logged(&config(&env, ""), &[("GRAFT_TEST_INIT_GATE", &gate)], &[]);
    let held = env.release("held", &["slow-init"]);
    let body = serde_json::to_string(&DeployRequest::new(held)).unwrap();
    let mut client = std::net::TcpStream::connect(admin_url.trim_start_matches("http://")).unwrap();
    write_post(&mut client, "/deploy", &body, "");
    wait_for_init(&gate);
    drop(client);
    // Give the server a moment to see the connection close before the init returns.
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(gate.join("go"), b"").unwrap();

    let line = log.wait_for(&[
        "deploy not published: its client went away",
        "release=\"held\"",
    ]);
    assert!(line.contains("generation="), "{line}");
    let admin = AdminClient::new(&admin_url, None);
    assert_eq!(admin.status().unwrap().host.current, 1, "{line}");
    assert_eq!(post(&format!("{base}/foo"), r#"{"a": 1}"#).1, 1);
    // The next deploy is not in its way.
    let next = admin.deploy(&DeployRequest::new(env.path("releases/v2")));
    assert!(next.is_ok(), "{next:?}");
    let back = admin.rollback();
    assert!(back.is_ok(), "{back:?}");
}

/// A gate directory for `slow-hooks` that holds `hook`.
fn hook_gate(env: &Env, hook: &str) -> PathBuf {
    let gate = gate(env, "hooks");
    std::fs::write(gate.join(format!("hold-{hook}")), b"").unwrap();
    gate
}

#[test]
fn a_pre_activate_hook_past_hook_timeout_ms_refuses_its_release_and_the_old_generation_serves() {
    let env = Env::new();
    let gate = hook_gate(&env, "pre_activate");
    let (_server, base, admin_url) = spawn_graft_serve_with(
        &config(&env, "hook_timeout_ms = 300"),
        &[("GRAFT_TEST_HOOK_GATE", &gate)],
        &[],
    );
    let admin = AdminClient::new(&admin_url, None).timeout(Duration::from_secs(30));

    let refused = admin
        .deploy(&DeployRequest::new(env.release("held", &["slow-hooks"])))
        .unwrap_err();
    let error = refused.api().unwrap_or_else(|| panic!("{refused}"));
    assert_eq!(error.step.as_deref(), Some("activate"), "{}", error.message);
    assert_eq!(error.plugin.as_deref(), Some("slow-hooks"));
    assert!(
        error
            .message
            .contains("pre_activate hook still running after 300 ms"),
        "{}",
        error.message
    );
    assert!(gate.join("pre_activate-started").exists());
    assert_eq!(
        admin.status().unwrap().host.current,
        1,
        "the old generation serves on"
    );
    assert_eq!(post(&format!("{base}/foo"), r#"{"a": 1}"#).1, 1);
    // The hook runs on and holds its library; once it returns, the library goes.
    assert_eq!(
        library_state(&admin, "slow-hooks"),
        Some(LibraryState::Loaded)
    );
    std::fs::write(gate.join("go"), b"").unwrap();
    wait_until("the held library to go", Duration::from_secs(60), || {
        library_state(&admin, "slow-hooks").is_none()
    });
}

#[test]
fn a_pre_unload_hook_past_hook_timeout_ms_shows_unloading_and_other_libraries_still_unload() {
    let env = Env::new();
    let gate = hook_gate(&env, "pre_unload");
    let config = config(
        &env,
        "hook_timeout_ms = 300\nunload_policy = \"when-drained\"",
    );
    let (server, _base, admin_url, log) =
        spawn_graft_serve_logged(&config, &[("GRAFT_TEST_HOOK_GATE", &gate)], &[]);
    let admin = AdminClient::new(&admin_url, None).timeout(Duration::from_secs(30));
    let pid = server.0.id().to_string();
    let deploy = |release: PathBuf| {
        let report = admin.deploy(&DeployRequest::new(release));
        assert!(report.is_ok(), "{report:?}");
    };

    deploy(env.release("hooked", &["slow-hooks"]));
    // The release that drops slow-hooks releases its library: its pre_unload holds.
    deploy(env.path("releases/v1"));
    wait_until("pre_unload to start", Duration::from_secs(30), || {
        gate.join("pre_unload-started").exists()
    });
    assert_eq!(
        library_state(&admin, "slow-hooks"),
        Some(LibraryState::Unloading)
    );
    log.wait_for(&[
        "pre_unload hook still running at its deadline",
        "slow-hooks",
    ]);

    // The unloader went on: a library released now is closed while the hook still runs.
    deploy(env.path("releases/v2"));
    let foo_v2 = admin
        .status()
        .unwrap()
        .host
        .libraries
        .into_iter()
        .find(|l| l.plugin == "foo" && l.version.starts_with('2'))
        .expect("foo v2 loaded")
        .path;
    deploy(env.path("releases/v1"));
    wait_until("foo v2 to be unmapped", Duration::from_secs(30), || {
        !mapped_in(&pid, &foo_v2)
    });
    assert_eq!(
        library_state(&admin, "slow-hooks"),
        Some(LibraryState::Unloading)
    );

    std::fs::write(gate.join("go"), b"").unwrap();
    wait_until(
        "the held library to be closed",
        Duration::from_secs(60),
        || library_state(&admin, "slow-hooks").is_none(),
    );
}

#[test]
fn a_promotion_still_writing_its_record_holds_up_no_operator_call() {
    use graft::api::{RolloutAction, RolloutOptions};
    use graft::rollout::RolloutState;

    let env = Env::new();
    // The promoted release's `post_activate` runs with its durable record, after it went live:
    // held, it stands for a disk that takes seconds to flush.
    let gate = hook_gate(&env, "post_activate");
    let (_server, base, admin_url) = spawn_graft_serve_with(
        &config(&env, "hook_timeout_ms = 60000"),
        &[("GRAFT_TEST_HOOK_GATE", &gate)],
        &[],
    );
    let admin = AdminClient::new(&admin_url, None).timeout(Duration::from_secs(10));
    let canary = DeployRequest::new(env.release("hooked", &["slow-hooks"]))
        .with_rollout(RolloutOptions::new(true, Some(50), None));
    let started = admin.deploy(&canary).unwrap();
    let canary_id = started.report.generation;
    let promoting = std::thread::spawn(move || {
        AdminClient::new(&admin_url, None)
            .timeout(Duration::from_secs(60))
            .rollout_action(RolloutAction::Promote)
    });
    wait_until(
        "the promotion's post_activate",
        Duration::from_secs(30),
        || gate.join("post_activate-started").exists(),
    );
    // Live and said so while its record is being written; operators are answered at once.
    assert_eq!(admin.rollout().unwrap().state, RolloutState::Promoted);
    assert_eq!(admin.status().unwrap().host.current, canary_id);
    let late = admin.rollout_action(RolloutAction::Pause).unwrap_err();
    assert!(late.api().is_some(), "answered, not timed out: {late}");
    assert_eq!(post(&format!("{base}/foo"), r#"{"a": 1}"#).1, canary_id);
    assert!(
        !promoting.is_finished(),
        "the promote call answers once the release is recorded"
    );
    std::fs::write(gate.join("go"), b"").unwrap();
    let promoted = promoting.join().unwrap().unwrap();
    assert_eq!(promoted.state, RolloutState::Promoted);
}
