//! The admin plane never waits on a deploy: status and rollback answer while a deploy is held
//! in a plugin's initialiser, an initialiser past `init_timeout_ms` refuses its deploy, and a
//! deploy whose client went away is accounted for.
//!
//! The held initialiser is the `slow-init` test plugin, which waits for a file to appear in the
//! directory `GRAFT_TEST_INIT_GATE` names. Requests made while it is held use a client with a
//! 10 s timeout, far below the plugin's own 60 s limit: an admin plane that waited for the
//! initialiser would fail them.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use example_types::FooOutput;
use graft::api::{DeployRequest, ErrorCode};
use graft::client::AdminClient;
use graft_host::status::LibraryState;

use crate::serve::{config, post, spawn_graft_serve_logged, spawn_graft_serve_with};
use crate::util::{wait_until, Env};

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
    let status = admin.status().unwrap();
    status
        .host
        .libraries
        .iter()
        .find(|l| l.plugin == "slow-init")
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
    write!(
        client,
        "POST /deploy HTTP/1.1\r\nhost: graft\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
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
