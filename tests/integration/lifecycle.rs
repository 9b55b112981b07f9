//! `graft serve` stopping and starting again: SIGTERM drains within its deadline, a host killed
//! mid-deploy restarts on the last release that went live, and a restart that lost its staged
//! copies falls back loudly.

use std::process::{Command, Stdio};
use std::time::Duration;

use example_types::FooOutput;
use graft::client::AdminClient;

use crate::serve::{
    agent, config, graft_cli, post, sigterm, spawn_graft_serve, spawn_graft_serve_logged,
    spawn_graft_serve_with,
};
use crate::util::{graft_bin, wait_until, Env, V2};

#[test]
fn sigterm_lets_a_slow_request_finish_then_exits_0() {
    let env = Env::new();
    let (mut child, base, _) = spawn_graft_serve(&config(&env, ""));
    let gate = env.path("gate");
    std::fs::create_dir_all(&gate).unwrap();
    let slow = {
        let body = serde_json::json!({ "a": 5, "gate": gate }).to_string();
        let url = format!("{base}/foo");
        std::thread::spawn(move || post(&url, &body))
    };
    while !gate.join("frob-done").exists() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    sigterm(&child);
    // The server stops accepting while the slow request is still held at the gate.
    let refused = (0..500).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::net::TcpStream::connect(base.trim_start_matches("http://")).is_err()
    });
    assert!(refused, "the listener closed after SIGTERM");
    std::fs::write(gate.join("go"), b"").unwrap();
    let (status, generation, body) = slow.join().unwrap();
    assert_eq!((status, generation), (200, 1), "{body}");
    assert_eq!(serde_json::from_str::<FooOutput>(&body).unwrap().value, 12);
    assert!(child.wait().unwrap().success(), "exit 0 after draining");
}

#[test]
fn sigterm_exits_soon_after_the_drain_deadline_and_non_zero_when_a_call_never_returns() {
    let env = Env::new();
    let path = config(&env, "");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("drain_timeout_ms = 10000", "drain_timeout_ms = 300"),
    )
    .unwrap();
    let (mut child, base, _, log) = spawn_graft_serve_logged(&path, &[], &[]);
    let gate = env.path("gate");
    std::fs::create_dir_all(&gate).unwrap();
    // Held at the gate for the test's whole life (the plugin gives up after 60 s).
    let _held = {
        let body = serde_json::json!({ "a": 5, "gate": gate }).to_string();
        let url = format!("{base}/foo");
        std::thread::spawn(move || {
            agent()
                .post(&url)
                .content_type("application/json")
                .send(&body)
        })
    };
    while !gate.join("frob-done").exists() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let started = std::time::Instant::now();
    sigterm(&child);
    let status = child.wait().unwrap();
    let took = started.elapsed();
    assert!(
        !status.success(),
        "a non-zero exit when a request was abandoned"
    );
    assert!(
        took < std::time::Duration::from_secs(20),
        "exited {took:?} after SIGTERM, not when the held call returns"
    );
    log.wait_for(&["requests still in flight were abandoned", "abandoned=1"]);
}

#[test]
fn a_host_killed_mid_deploy_restarts_on_the_last_release_that_went_live() {
    let env = Env::new();
    let config = config(&env, "");
    let gate = env.path("gate");
    std::fs::create_dir_all(&gate).unwrap();
    let (mut server, _, admin) =
        spawn_graft_serve_with(&config, &[("GRAFT_TEST_INIT_GATE", &gate)], &[]);
    let v2 = env.path("releases/v2");
    assert!(graft_cli(&["deploy", v2.to_str().unwrap()], &admin).0);

    // A deploy whose plugin initialiser is held: the host is killed in the middle of it.
    let held = env.release("held", &["slow-init"]);
    let mut deploy = Command::new(graft_bin())
        .args(["deploy", held.to_str().unwrap(), "--admin", &admin])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        "the held deploy to reach its plugin's init",
        Duration::from_secs(60),
        || gate.join("init-started").exists(),
    );
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    assert!(
        !deploy.wait().unwrap().success(),
        "the interrupted deploy did not succeed"
    );

    // The restart ignores the configured v1 and comes back on v2, the last release live.
    let (_server, base, admin) = spawn_graft_serve(&config);
    let (status, _, body) = post(&format!("{base}/foo"), r#"{"a": 1}"#);
    assert_eq!(status, 200, "{body}");
    let out: FooOutput = serde_json::from_str(&body).unwrap();
    assert_eq!((out.foo.as_str(), out.frob.as_str()), ("2.0.0", "2.0.0"));
    let status = AdminClient::new(&admin, None).status().unwrap().host;
    let history: Vec<_> = status
        .history
        .iter()
        .map(|r| r.name.clone().unwrap())
        .collect();
    assert_eq!(history, ["v1", "v2"], "the history survives the restart");
    assert!(
        graft_cli(&["rollback"], &admin).0,
        "and rollback still works"
    );
    assert_eq!(
        serde_json::from_str::<FooOutput>(&post(&format!("{base}/foo"), r#"{"a": 1}"#).2)
            .unwrap()
            .foo,
        "1.0.0"
    );
}

#[test]
fn a_restart_without_staged_copies_falls_back_loudly_and_refuses_only_when_nothing_deploys() {
    let env = Env::new();
    let config = config(&env, "");
    {
        let (mut server, _, admin) = spawn_graft_serve(&config);
        let v2 = env.path("releases/v2");
        assert!(graft_cli(&["deploy", v2.to_str().unwrap()], &admin).0);
        sigterm(&server);
        assert!(server.wait().unwrap().success());
    }
    // Lost: the staged copies and both recorded release directories. The configured release
    // is now v3 (v2's plugins, elsewhere). An upload a killed run left is lying around.
    for gone in ["data/staged", "releases/v1", "releases/v2"] {
        std::fs::remove_dir_all(env.path(gone)).unwrap();
    }
    let mut v3 = V2.to_vec();
    v3.push("misbehaving"); // every release serves every route
    env.complete_release("v3", &v3);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("releases/v1", "releases/v3")).unwrap();
    let leftover = env.path("data/uploads/upload-999-0");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("release.toml"), "half").unwrap();

    {
        let (_server, base, admin, log) = spawn_graft_serve_logged(&config, &[], &[]);
        log.wait_for(&["restoring", "falling back to the configured release"]);
        let out: FooOutput =
            serde_json::from_str(&post(&format!("{base}/foo"), r#"{"a": 1}"#).2).unwrap();
        assert_eq!(out.foo, "2.0.0");
        let status = AdminClient::new(&admin, None).status().unwrap().host;
        assert_eq!(status.history.last().unwrap().name.as_deref(), Some("v3"));
        assert!(!leftover.exists(), "leftover uploads are removed at start");
    }

    // Nothing deploys: the server refuses to start, saying it was restoring.
    std::fs::remove_dir_all(env.path("data/staged")).unwrap();
    std::fs::remove_dir_all(env.path("releases/v3")).unwrap();
    let out = Command::new(graft_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("restoring the last live release failed")
            && stderr.contains("deploying the configured release"),
        "{stderr}"
    );
}
