//! Nothing acknowledged is lost and the wrong app never serves: SIGTERM saves state even with
//! calls in flight; saved state that cannot be used refuses the start, naming the store and the
//! way out, without falling back to another release, deleting a staged copy or touching the
//! store; `--set-aside-state` is the way out.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::serve::{post, sigterm, spawn_graft_serve_logged};
use crate::util::{graft_bin, rewrite_saved_cell, wait_until, Env};

/// `graft.toml` serving `counter-held` (release v1, configured) with a short drain deadline.
fn counter_config(env: &Env) -> PathBuf {
    let path = counter_config_without_held(env);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(
        r#"
[[route]]
method = "POST"
path = "/held"
export = "incr-held@1"
mode = "blocking"
"#,
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// [`counter_config`] without the route to `incr-held@1`, which only `counter-held` exports.
fn counter_config_without_held(env: &Env) -> PathBuf {
    env.complete_release("v1", &["counter-held"]);
    let path = env.path("graft.toml");
    std::fs::write(
        &path,
        r#"data_dir = "data"
release = "releases/v1"
listen = "127.0.0.1:0"
drain_timeout_ms = 300

[admin]
listen = "127.0.0.1:0"

[[route]]
method = "POST"
path = "/incr"
export = "incr@1"
mode = "inline"

[[route]]
method = "POST"
path = "/total"
export = "total@1"
mode = "inline"
"#,
    )
    .unwrap();
    path
}

fn total(base: &str) -> u64 {
    let (status, _, body) = post(&format!("{base}/total"), "0");
    assert_eq!(status, 200, "{body}");
    body.parse().unwrap()
}

/// `graft serve ARGS` that must refuse to start; returns its standard error.
fn refused_start(config: &Path, args: &[&str]) -> String {
    let out = Command::new(graft_bin())
        .args(["serve", "--config"])
        .arg(config)
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success(), "graft serve started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn staged(env: &Env) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(env.path("data/staged"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn sigterm_saves_state_with_a_call_in_flight_and_exits_non_zero_for_the_abandoned_call() {
    let env = Env::new();
    let config = counter_config(&env);
    let gate = env.path("gate");
    std::fs::create_dir_all(&gate).unwrap();
    let (mut server, base, _, log) = spawn_graft_serve_logged(&config, &[], &[]);
    for _ in 0..5 {
        post(&format!("{base}/incr"), "0");
    }
    // A slow request that incremented and stays in flight past the drain deadline.
    let _held = {
        let url = format!("{base}/held");
        let body = serde_json::to_string(&gate).unwrap();
        std::thread::spawn(move || {
            let _ = crate::serve::agent()
                .post(&url)
                .content_type("application/json")
                .send(&body);
        })
    };
    wait_until("the held increment", Duration::from_secs(30), || {
        gate.join("incremented").exists()
    });
    sigterm(&server);
    let status = server.wait().unwrap();
    assert!(
        !status.success(),
        "the abandoned call makes the exit non-zero"
    );
    log.wait_for(&["abandoned=1"]);

    // Saved all the same: all six increments, the held one's included.
    let (_server, base, _, _) = spawn_graft_serve_logged(&config, &[], &[]);
    assert_eq!(total(&base), 6);
}

#[test]
fn sigterm_exits_non_zero_when_the_state_cannot_be_saved() {
    let env = Env::new();
    let config = counter_config(&env);
    let (mut server, base, _, log) = spawn_graft_serve_logged(&config, &[], &[]);
    post(&format!("{base}/incr"), "0");
    // The store moved away under the running host: a save there would be lost to a restart.
    let store = env.path("data/state.redb");
    std::fs::rename(&store, env.path("data/moved.redb")).unwrap();
    sigterm(&server);
    let status = server.wait().unwrap();
    assert!(!status.success(), "a failed save makes the exit non-zero");
    log.wait_for(&[
        "saving plugin state failed",
        "no longer the file this host opened",
    ]);
}

#[test]
fn a_damaged_store_refuses_the_start_naming_it_and_the_way_out_and_leaves_everything_in_place() {
    let env = Env::new();
    let config = counter_config(&env);
    {
        let (server, base, _, _) = spawn_graft_serve_logged(&config, &[], &[]);
        for _ in 0..3 {
            post(&format!("{base}/incr"), "0");
        }
        sigterm(&server);
        let mut server = server;
        assert!(server.wait().unwrap().success());
    }
    let store = env.path("data/state.redb");
    let mut bytes = std::fs::read(&store).unwrap();
    let record = bytes
        .windows(8)
        .position(|w| w == b"GRAFTST1")
        .expect("the counter's record is in the store");
    bytes[record + 30] ^= 0x10;
    std::fs::write(&store, &bytes).unwrap();
    let copies = staged(&env);

    let stderr = refused_start(&config, &[]);
    assert!(
        stderr.contains("state.redb cannot be used") && stderr.contains("--set-aside-state"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&store).unwrap(),
        bytes,
        "the store is left as it was"
    );
    assert_eq!(staged(&env), copies, "no staged copy deleted");

    // The way out: the store moved aside (kept), the last live release serves, state fresh.
    let (_server, base, _, log) =
        spawn_graft_serve_logged(&config, &[], &["--set-aside-state".as_ref()]);
    log.wait_for(&["saved state set aside"]);
    assert_eq!(total(&base), 0);
    let aside: Vec<_> = std::fs::read_dir(env.path("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("state.redb.set-aside-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(env.path("data").join(&aside[0])).unwrap(),
        bytes
    );
}

#[test]
fn saved_state_the_last_release_cannot_use_refuses_the_start_rather_than_serve_another_release() {
    let env = Env::new();
    let config = counter_config_without_held(&env);
    // Live: v2 (counter-v2, schema 2); configured: v1. Saved: the counter at schema 2.
    let v2 = env.complete_release("v2", &["counter-v2"]);
    {
        let (server, base, admin, _) = spawn_graft_serve_logged(&config, &[], &[]);
        let client = graft::client::AdminClient::new(&admin, None);
        client.deploy(&graft::api::DeployRequest::new(v2)).unwrap();
        post(&format!("{base}/incr"), "1");
        sigterm(&server);
        let mut server = server;
        assert!(server.wait().unwrap().success());
    }
    // The saved value cut short, its record's checksum valid.
    rewrite_saved_cell(&env.path("data"), "counter", |value| value.truncate(8));
    let copies = staged(&env);
    let stderr = refused_start(&config, &[]);
    assert!(
        stderr.contains("restoring the last live release")
            && stderr.contains("the value is 8 bytes")
            && stderr.contains("--set-aside-state"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("falling back"),
        "no other release was tried: {stderr}"
    );
    assert_eq!(staged(&env), copies, "no staged copy deleted");
}

#[test]
fn a_start_refused_for_want_of_any_deployable_release_deletes_no_staged_copy() {
    let env = Env::new();
    let config = crate::serve::config(&env, "");
    {
        let (server, _, admin, _) = spawn_graft_serve_logged(&config, &[], &[]);
        let v2 = env.path("releases/v2");
        assert!(crate::serve::graft_cli(&["deploy", v2.to_str().unwrap()], &admin).0);
        sigterm(&server);
        let mut server = server;
        assert!(server.wait().unwrap().success());
    }
    // Every recorded release is unusable: its staged copies damaged, its sources gone, and the
    // configured release gone too.
    let copies = staged(&env);
    for copy in &copies {
        let mut bytes = std::fs::read(copy).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(copy, bytes).unwrap();
    }
    std::fs::rename(env.path("releases"), env.path("gone")).unwrap();
    let stderr = refused_start(&config, &[]);
    assert!(
        stderr.contains("restoring the last live release failed"),
        "{stderr}"
    );
    assert_eq!(
        staged(&env),
        copies,
        "the record's staged copies are all kept"
    );
}
