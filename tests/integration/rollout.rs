//! Staged rollouts: sticky routing, automatic abort, promotion, too little traffic, and a
//! release that migrates state (refused as a canary), and a rollout cut short by a restart.
//!
//! These drive a host's [`Rollouts`] the way `graft serve` does for each request: route (which
//! pins one generation), call, record. The analysis thread is slowed down to once an hour so
//! that each test runs the analysis itself, with `tick`, where it needs to.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use example_types::counter::IncrV1;
use graft::client::AdminClient;
use graft::rollout::{
    AnalysisConfig, RolloutConfig, RolloutError, RolloutPlan, RolloutState, RolloutStatus,
    Rollouts, Route, Thresholds, Verdict,
};
use graft_host::{CallSite, Export, Host, UnloadPolicy};

use crate::util::{mapped, staged_path, wait_until, Env};

fn config(plan: &str, min_requests: u64) -> RolloutConfig {
    let mut config = RolloutConfig::default();
    config.plan = plan.parse().unwrap();
    config.analysis = AnalysisConfig::default();
    config.analysis.min_requests = min_requests;
    config.analysis.interval_ms = 3_600_000;
    // These tests are about errors and traffic; latency on a busy test machine is noise (the
    // latency analysis has unit tests of its own).
    config.analysis.p99_slack_ms = 60_000;
    config
}

/// A host serving hello-v1, and its rollouts.
fn setup(env: &Env, config: RolloutConfig) -> (Arc<Host>, Arc<Rollouts>, Export) {
    let host = Arc::new(env.host_with(UnloadPolicy::WhenDrained));
    host.deploy(env.complete_release("stable", &["hello-v1"]))
        .unwrap();
    let hello = host.export("hello@1").unwrap();
    let rollouts = Rollouts::new(Arc::clone(&host), config);
    (host, rollouts, hello)
}

/// One request as `graft serve` runs it; returns the side and generation that served it and
/// whether it succeeded.
fn request(rollouts: &Rollouts, hello: &Export, key: Option<&str>) -> (Route, u64, bool) {
    let started = Instant::now();
    let site = CallSite::new(hello.clone(), "POST /hello");
    let (pin, side) = rollouts
        .route(&site, key.map(str::as_bytes), None)
        .expect("no migration holds the boundary");
    let ok = pin.call::<_, String>(hello, &"you").is_ok();
    rollouts.record(pin.id(), !ok, started.elapsed());
    (side, pin.id(), ok)
}

fn status(rollouts: &Rollouts) -> RolloutStatus {
    rollouts.status().expect("a rollout has run")
}

#[test]
fn sticky_keys_split_by_weight_stay_put_and_stay_in_the_canary_as_it_grows() {
    let env = Env::new();
    let (_host, rollouts, hello) = setup(&env, config("10:0s,25:1h,100", 1));
    rollouts
        .start(
            &env.complete_release("canary", &["hello-v2"]),
            None,
            None,
            Thresholds::default(),
        )
        .unwrap();
    let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();

    let mut side_of: HashMap<&str, Route> = HashMap::new();
    for key in &keys {
        let (side, _, ok) = request(&rollouts, &hello, Some(key));
        assert!(ok);
        side_of.insert(key, side);
    }
    let in_canary = side_of.values().filter(|s| **s == Route::Canary).count();
    let share = in_canary as f64 / keys.len() as f64 * 100.0;
    assert!(
        (8.0..=12.0).contains(&share),
        "canary share {share:.2}% at weight 10%"
    );
    for key in &keys {
        let (side, _, _) = request(&rollouts, &hello, Some(key));
        assert_eq!(side, side_of[key.as_str()], "{key} moved");
    }

    // The step passed (its bake time is 0 and its window is healthy): weight 25%.
    rollouts.tick();
    assert_eq!(status(&rollouts).weight, 25);
    let mut now_in_canary = 0;
    for key in &keys {
        let (side, _, _) = request(&rollouts, &hello, Some(key));
        if side_of[key.as_str()] == Route::Canary {
            assert_eq!(side, Route::Canary, "{key} left the canary when it grew");
        }
        now_in_canary += usize::from(side == Route::Canary);
    }
    let share = now_in_canary as f64 / keys.len() as f64 * 100.0;
    assert!(
        (23.0..=27.0).contains(&share),
        "canary share {share:.2}% at weight 25%"
    );
}

#[test]
fn a_canary_failing_a_fifth_of_its_calls_is_aborted_and_stable_never_fails() {
    let env = Env::new();
    let (host, rollouts, hello) = setup(&env, config("10:1h,100", 50));
    let stable = host.pin().id();
    let (report, _) = rollouts
        .start(
            &env.complete_release("flaky", &["hello-flaky"]),
            None,
            None,
            Thresholds::default(),
        )
        .unwrap();
    let canary = report.generation;

    wait_until(
        "the analysis to abort the canary",
        Duration::from_secs(60),
        || {
            for _ in 0..100 {
                let (side, generation, ok) = request(&rollouts, &hello, None);
                if side == Route::Stable {
                    assert!(ok, "stable failed a request");
                    assert_eq!(generation, stable);
                }
            }
            rollouts.tick();
            status(&rollouts).state != RolloutState::Running
        },
    );

    let after = status(&rollouts);
    assert_eq!(after.state, RolloutState::Aborted);
    assert_eq!(after.step, 1, "aborted within the first step's window");
    assert_eq!(after.weight, 0);
    let abort = after.events.last().unwrap();
    assert_eq!(abort.event, "aborted");
    assert!(abort.message.contains("error rate"), "{}", abort.message);
    assert!(abort.canary.requests >= 50, "{:?}", abort.canary);
    assert!(abort.canary.error_rate > 0.15, "{:?}", abort.canary);
    assert!(matches!(after.last_verdict, Some(Verdict::Breach(_))));

    assert!(
        host.status().generations.iter().all(|g| g.id != canary),
        "the aborted canary is gone"
    );
    for _ in 0..1000 {
        let (side, generation, ok) = request(&rollouts, &hello, None);
        assert_eq!((side, generation, ok), (Route::Stable, stable, true));
    }
    // Even forced, a request can no longer reach it.
    let site = CallSite::new(hello.clone(), "POST /hello");
    let (pin, side) = rollouts.route(&site, None, Some(Route::Canary)).unwrap();
    assert_eq!((side, pin.id()), (Route::Stable, stable));
    assert_ne!(pin.id(), canary);
}

#[test]
fn a_healthy_canary_walks_the_plan_becomes_stable_and_the_old_stable_unloads() {
    let env = Env::new();
    let (host, rollouts, hello) = setup(&env, config("10:50ms,50:50ms,100:50ms", 20));
    let old = staged_path(&host, "hello");
    let (report, _) = rollouts
        .start(
            &env.complete_release("v2", &["hello-v2"]),
            None,
            None,
            Thresholds::default(),
        )
        .unwrap();

    wait_until(
        "the canary to walk the plan",
        Duration::from_secs(60),
        || {
            for _ in 0..100 {
                assert!(request(&rollouts, &hello, None).2);
            }
            std::thread::sleep(Duration::from_millis(10));
            rollouts.tick();
            status(&rollouts).state != RolloutState::Running
        },
    );

    let done = status(&rollouts);
    assert_eq!(done.state, RolloutState::Promoted);
    let steps: Vec<(String, u32)> = done
        .events
        .iter()
        .filter(|e| e.event != "waiting")
        .map(|e| (e.event.clone(), e.weight))
        .collect();
    assert_eq!(
        steps,
        [
            ("started".into(), 10),
            ("step".into(), 50),
            ("step".into(), 100),
            ("promoted".into(), 100)
        ]
    );
    assert_eq!(
        host.pin().id(),
        report.generation,
        "the canary is stable now"
    );
    let (side, generation, _) = request(&rollouts, &hello, None);
    assert_eq!((side, generation), (Route::Stable, report.generation));

    host.flush_unloads();
    assert!(!mapped(&old), "the old stable's library is still mapped");
    assert_eq!(host.status().generations.len(), 1, "the old stable drained");
}

#[test]
fn too_little_traffic_keeps_the_rollout_waiting_instead_of_promoting() {
    let env = Env::new();
    let (host, rollouts, hello) = setup(&env, config("10:20ms,100", 100));
    let stable = host.pin().id();
    rollouts
        .start(
            &env.complete_release("v2", &["hello-v2"]),
            None,
            None,
            Thresholds::default(),
        )
        .unwrap();
    for _ in 0..50 {
        request(&rollouts, &hello, None);
    }
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(30));
        rollouts.tick();
    }

    let waiting = status(&rollouts);
    assert_eq!(waiting.state, RolloutState::Running);
    assert_eq!((waiting.step, waiting.weight), (1, 10));
    assert!(
        matches!(&waiting.last_verdict, Some(Verdict::Inconclusive(r)) if r.contains("needed")),
        "{:?}",
        waiting.last_verdict
    );
    let logged: Vec<&str> = waiting.events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        logged,
        ["started", "waiting"],
        "one waiting event, not one per tick"
    );
    assert_eq!(host.pin().id(), stable, "nothing was promoted");
}

#[test]
fn a_plan_given_at_start_overrides_the_configured_one() {
    let env = Env::new();
    let (_host, rollouts, _) = setup(&env, config("5:30s,100", 1));
    let plan: RolloutPlan = "20:1s,60:1s,100".parse().unwrap();
    let (_, started) = rollouts
        .start(
            &env.complete_release("v2", &["hello-v2"]),
            Some(40),
            Some(plan),
            Thresholds::default(),
        )
        .unwrap();
    let weights: Vec<u32> = started.plan.iter().map(|s| s.weight).collect();
    assert_eq!(
        weights,
        [40, 60, 100],
        "starts at 40%, then the plan's greater steps"
    );
    assert_eq!(started.weight, 40);

    // A second rollout cannot start while this one runs.
    let second = rollouts.start(
        &env.complete_release("v3", &["hello-flaky"]),
        None,
        None,
        Thresholds::default(),
    );
    assert!(second
        .unwrap_err()
        .to_string()
        .contains("a rollout is under way"));
}

/// POSTs to `url` with extra headers; returns the generation, the `x-graft-route` header and
/// whether the answer was a 200.
pub(crate) fn post_hello(url: &str, headers: &[(&str, &str)]) -> (u64, Option<String>, bool) {
    let mut request = crate::serve::agent()
        .post(url)
        .content_type("application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send(r#""you""#).unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    (
        header("x-graft-generation").unwrap().parse().unwrap(),
        header("x-graft-route"),
        response.status() == 200,
    )
}

/// A `graft.toml` serving `hello@1` at `POST /hello` from release v1 (hello-v1), with the plan
/// `50:1h,100` (never promoted by time in a test), the analysis every 50 ms, and `extra` in
/// `[rollout]`.
pub(crate) fn hello_config(env: &Env, extra: &str) -> std::path::PathBuf {
    env.complete_release("v1", &["hello-v1"]);
    let config = env.path("graft.toml");
    std::fs::write(
        &config,
        format!(
            r#"data_dir = "data"
release = "releases/v1"
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[rollout]
plan = "50:1h,100"
interval_ms = 50
{extra}

[[route]]
method = "POST"
path = "/hello"
export = "hello@1"
"#
        ),
    )
    .unwrap();
    config
}

#[test]
fn deploy_wait_follows_the_rollout_judged_by_its_own_thresholds_and_exits_0_promoted_1_aborted() {
    let env = Env::new();
    let config = hello_config(&env, "");
    let (_child, _base, admin) = crate::serve::spawn_graft_serve_with(&config, &[], &[]);
    let cli = |args: &[&str]| crate::serve::graft_cli(args, &admin);
    let v2 = env.complete_release("v2", &["hello-v2"]);
    let v1 = env.path("releases/v1");

    // A rollout's own thresholds: only for a rollout, and only sensible ones.
    for (args, says) in [
        (
            &["--max-error-rate", "0.2"][..],
            "a rollout's thresholds are for a rollout",
        ),
        (
            &["--canary", "50", "--max-error-rate", "2"][..],
            "max_error_rate 2 is not between 0 and 1",
        ),
    ] {
        let (ok, _, stderr) = cli(&[&["deploy", v2.to_str().unwrap()][..], args].concat());
        assert!(!ok && stderr.contains(says), "{stderr}");
    }

    for (release, steer, code, says) in [
        (&v2, "promote", 0, "promoted"),
        (&v1, "abort", 1, "rollout aborted: "),
    ] {
        let waiting = std::process::Command::new(crate::util::graft_bin())
            .args([
                "deploy",
                release.to_str().unwrap(),
                "--canary",
                "50",
                "--wait",
            ])
            .args(["--min-requests", "7", "--max-error-rate", "0.2"])
            .args(["--admin", &admin])
            .env("RUST_LOG", "off")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_until("the rollout under way", Duration::from_secs(30), || {
            AdminClient::new(&admin, None).rollout().is_ok_and(|r| {
                r.state == RolloutState::Running
                    && r.release.as_deref() == release.file_name().and_then(|n| n.to_str())
            })
        });
        // Judged by its own thresholds, the others as configured.
        let analysis = AdminClient::new(&admin, None).rollout().unwrap().analysis;
        assert_eq!((analysis.min_requests, analysis.max_error_rate), (7, 0.2));
        assert_eq!(analysis.interval_ms, 50);
        let (ok, _, stderr) = cli(&["rollout", steer]);
        assert!(ok, "{stderr}");
        let out = waiting.wait_with_output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(code), "{stdout}{stderr}");
        assert!(stdout.contains(steer), "its event is printed: {stdout}");
        assert!(
            format!("{stdout}{stderr}").contains(says),
            "{stdout}{stderr}"
        );
    }
}

#[test]
fn through_graft_serve_the_canary_is_sticky_can_be_forced_and_the_cli_steers_it() {
    let env = Env::new();
    let extra = "sticky_header = \"x-user\"\nforce_token = \"only-operators-force-a-side\"";
    let config = hello_config(&env, extra);
    let (_child, base, admin) = crate::serve::spawn_graft_serve_with(&config, &[], &[]);
    let url = format!("{base}/hello");
    let cli = |args: &[&str]| crate::serve::graft_cli(args, &admin);

    let v2 = env.complete_release("v2", &["hello-v2"]);
    let (ok, stdout, stderr) = cli(&["deploy", v2.to_str().unwrap(), "--canary", "50"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("generation 2 deployed as a canary"),
        "{stdout}"
    );
    assert!(stdout.contains("rollout running"), "{stdout}");

    // Sticky by the x-user header: each user keeps its side; both sides serve some users.
    let mut canary_users = 0;
    let (mut a_stable_user, mut a_canary_user) = (None, None);
    for user in 0..200 {
        let user = format!("user-{user}");
        let first = post_hello(&url, &[("x-user", &user)]);
        let again = post_hello(&url, &[("x-user", &user)]);
        assert_eq!(first, again, "{user} moved");
        assert!(first.2);
        if first.0 == 2 {
            assert_eq!(first.1.as_deref(), Some("canary"));
            canary_users += 1;
            a_canary_user = Some(user);
        } else {
            a_stable_user = Some(user);
        }
    }
    assert!(
        (50..=150).contains(&canary_users),
        "{canary_users} of 200 in a 50% canary"
    );
    // The override header picks a side, with the force token only: any client could otherwise
    // pick the canary, or fail it on purpose until the rollout aborts.
    let (stable_user, canary_user) = (a_stable_user.unwrap(), a_canary_user.unwrap());
    let token = ("x-graft-route-token", "only-operators-force-a-side");
    let wrong = ("x-graft-route-token", "only-operators-force-a-sidE");
    for (user, to, side) in [(&stable_user, "canary", 2), (&canary_user, "stable", 1)] {
        let stays = 3 - side;
        let user = ("x-user", user.as_str());
        assert_eq!(post_hello(&url, &[user, ("x-graft-route", to)]).0, stays);
        assert_eq!(
            post_hello(&url, &[user, ("x-graft-route", to), wrong]).0,
            stays
        );
        assert_eq!(
            post_hello(&url, &[user, ("x-graft-route", to), token]).0,
            side
        );
    }

    let (ok, stdout, _) = cli(&["rollout", "status"]);
    assert!(ok);
    assert!(stdout.contains("canary weight 50%"), "{stdout}");
    let (_, stdout, _) = cli(&["status"]);
    assert!(stdout.contains("rollout running"), "{stdout}");
    let metrics = crate::serve::admin_metrics(&admin);
    assert!(
        metrics.contains("graft_rollout_canary_weight_percent 50"),
        "{metrics}"
    );
    assert!(metrics.contains(r#"graft_generation_role{generation="2",role="canary"} 1"#));

    // No other deploy while a rollout is under way.
    let (ok, _, stderr) = cli(&["deploy", env.path("releases/v1").to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("a rollout is under way"), "{stderr}");

    let (ok, stdout, stderr) = cli(&["rollout", "promote"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("rollout promoted"), "{stdout}");
    assert_eq!(post_hello(&url, &[("x-user", "user-1")]).0, 2);
    // Status says how it ended, not the weights it had.
    let (_, stdout, _) = cli(&["status"]);
    assert!(
        stdout.contains("rollout promoted after ")
            && stdout.contains("release v2 (canary generation 2); generation 2 is current"),
        "{stdout}"
    );
    assert!(!stdout.contains("canary weight"), "{stdout}");
    let (ok, _, stderr) = cli(&["rollout", "abort"]);
    assert!(!ok);
    assert!(stderr.contains("no rollout is under way"), "{stderr}");
}

#[test]
fn a_release_that_migrates_state_is_refused_as_a_canary_and_stable_keeps_its_state() {
    let env = Env::new();
    let host = Arc::new(env.host_with(UnloadPolicy::WhenDrained));
    host.deploy(env.complete_release("v1", &["counter-v1"]))
        .unwrap();
    let incr = host.typed_export::<IncrV1>().unwrap();
    host.call_typed(&incr, 0).unwrap();
    let rollouts = Rollouts::new(Arc::clone(&host), config("10:1h", 1));

    let refused = rollouts
        .start(
            &env.complete_release("v2", &["counter-v2"]),
            None,
            None,
            Thresholds::default(),
        )
        .unwrap_err();
    assert!(
        matches!(&refused, RolloutError::MigratesState(m) if m == &["counter 1 -> 2 (up)"]),
        "{refused}"
    );
    assert!(!rollouts.under_way());
    assert_eq!(
        host.call_typed(&incr, 0).unwrap(),
        2,
        "stable's state is untouched"
    );
    // A release that keeps the schema shares the state: it may be a canary.
    rollouts
        .start(
            &env.complete_release("v1-again", &["counter-v1"]),
            None,
            None,
            Thresholds::default(),
        )
        .unwrap();
}

#[test]
fn a_rollout_under_way_when_the_server_dies_is_aborted_at_restart_and_says_so() {
    let env = Env::new();
    let config = crate::serve::config(&env, "");
    let (mut server, _, admin) = crate::serve::spawn_graft_serve_with(&config, &[], &[]);
    let v2 = env.path("releases/v2");
    let (ok, _, stderr) = crate::serve::graft_cli(
        &["deploy", "--plan", "50:1h,100", v2.to_str().unwrap()],
        &admin,
    );
    assert!(ok, "{stderr}");
    let client = AdminClient::new(&admin, None);
    let before = client.rollout().unwrap();
    assert_eq!(before.state, RolloutState::Running);
    assert_eq!(before.weight, 50);
    server.kill().unwrap(); // SIGKILL: no chance to tidy up
    server.wait().unwrap();

    let (_server, base, admin, log) = crate::serve::spawn_graft_serve_logged(&config, &[], &[]);
    let line = log.wait_for(&["aborted by a restart"]);
    assert!(line.contains("WARN"), "{line}");
    let client = AdminClient::new(&admin, None);
    let after = client.rollout().unwrap();
    assert_eq!(after.state, RolloutState::Aborted);
    assert_eq!(after.canary, before.canary);
    assert!(
        after.last_message().contains("it restarted on stable"),
        "{}",
        after.last_message()
    );
    let status = client.status().unwrap();
    assert_eq!(
        status.rollout.map(|r| r.state),
        Some(RolloutState::Aborted),
        "status says so too"
    );
    // Every request goes to stable; a new rollout may start.
    for _ in 0..20 {
        let (code, _, body) = crate::serve::post(&format!("{base}/foo"), r#"{"a": 1}"#);
        assert_eq!(code, 200);
        let out: example_types::FooOutput = serde_json::from_str(&body).unwrap();
        assert_eq!(out.foo, "1.0.0");
    }
    let (ok, _, stderr) = crate::serve::graft_cli(
        &["deploy", "--plan", "50:1h,100", v2.to_str().unwrap()],
        &admin,
    );
    assert!(ok, "{stderr}");
    assert_eq!(client.rollout().unwrap().state, RolloutState::Running);
}
