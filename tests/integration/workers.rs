//! Worker processes (`isolation`): a plugin that crashes, spins or leaks takes down only its
//! worker. The front (`graft serve`, a child process here) keeps its pid, its listeners and
//! every request of the generations that did not fail.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use graft::api::{WorkerState, WorkerStatus};
use graft::client::AdminClient;
use graft::rollout::RolloutState;

use crate::serve::{admin_metrics as metrics, agent, spawn_graft_serve_logged};
use crate::util::{wait_until, Env};

pub(crate) const FORCE_TOKEN: &str = "operators-force-the-canary";

/// A config serving `hello@1` at `POST /hello` from release `v1` (hello-v1), with `extra`.
pub(crate) fn config(env: &Env, extra: &str) -> std::path::PathBuf {
    env.complete_release("v1", &["hello-v1"]);
    let path = env.path("graft.toml");
    let text = format!(
        r#"data_dir = "data"
release = "releases/v1"
listen = "127.0.0.1:0"
{extra}

[admin]
listen = "127.0.0.1:0"

[rollout]
plan = "50:1h,100"
interval_ms = 50
force_token = "{FORCE_TOKEN}"
p99_slack_ms = 60000

[[route]]
method = "POST"
path = "/hello"
export = "hello@1"
timeout_ms = 1000
"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// POSTs `name` to `/hello`; returns the status, the generation that answered, and the body.
pub(crate) fn hello(base: &str, name: &str, canary: bool) -> (u16, u64, String) {
    let mut request = agent()
        .post(format!("{base}/hello"))
        .content_type("application/json");
    if canary {
        request = request
            .header("x-graft-route", "canary")
            .header("x-graft-route-token", FORCE_TOKEN);
    }
    let mut response = request.send(serde_json::to_string(name).unwrap()).unwrap();
    let generation = response
        .headers()
        .get("x-graft-generation")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let status = response.status().as_u16();
    (
        status,
        generation,
        response.body_mut().read_to_string().unwrap(),
    )
}

/// How many TCP sockets process `pid` listens on.
fn listening_tcp_sockets(pid: u32) -> usize {
    tcp_sockets(pid, "0A")
}

/// How many TCP sockets in state `st` (`/proc/net/tcp`'s hex: 0A listening, 01 established)
/// process `pid` holds a descriptor of.
pub(crate) fn tcp_sockets(pid: u32, st: &str) -> usize {
    let mut sockets = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // The inode is the tenth field.
            if fields.get(3) == Some(&st) {
                sockets.insert(format!("socket:[{}]", fields[9]));
            }
        }
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                .filter(|target| sockets.contains(target.to_string_lossy().as_ref()))
                .count()
        })
        .unwrap_or(0)
}

pub(crate) fn worker_of(admin: &AdminClient, generation: u64) -> Option<WorkerStatus> {
    let status = admin.status().unwrap();
    status
        .workers
        .into_iter()
        .find(|w| w.generation == generation)
}

pub(crate) fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn a_canary_that_segfaults_aborts_or_overflows_its_stack_fails_alone_and_aborts_its_rollout() {
    let env = Env::new();
    let path = config(&env, "isolation = \"canary\"");
    let (server, base, admin_url, log) = spawn_graft_serve_logged(&path, &[], &[]);
    let front = server.0.id();
    let admin = AdminClient::new(&admin_url, None);
    let crashy = env.release("crashy", &["crashy"]);

    for (input, signal) in [
        ("segfault", "SIGSEGV"),
        ("abort", "SIGABRT"),
        ("stack-overflow", "SIGABRT"),
    ] {
        let (ok, _, stderr) = crate::serve::graft_cli(
            &["deploy", crashy.to_str().unwrap(), "--canary", "50"],
            &admin_url,
        );
        assert!(ok, "{stderr}");
        let canary = admin.rollout().unwrap().canary;
        let stable = admin.status().unwrap().host.current;
        let worker = worker_of(&admin, canary).expect("the canary runs in a worker");
        assert_eq!(worker.state, WorkerState::Serving);
        let pid = worker.pid.unwrap();
        assert!(
            worker_of(&admin, stable).is_none(),
            "stable runs in the front"
        );

        // Steady traffic on both sides while the canary crashes: stable loses nothing.
        let stop = AtomicBool::new(false);
        let (stable_answers, stable_failures) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let (status, _, body) = std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let (status, generation, body) = hello(&base, "ops", false);
                        if generation == stable {
                            stable_answers.fetch_add(1, Ordering::Relaxed);
                            if status != 200 {
                                eprintln!("stable failed: {status} {body}");
                                stable_failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
            std::thread::sleep(Duration::from_millis(200));
            let crashed = hello(&base, input, true);
            wait_until("the rollout aborted", Duration::from_secs(30), || {
                admin.rollout().unwrap().state == RolloutState::Aborted
            });
            std::thread::sleep(Duration::from_millis(200));
            stop.store(true, Ordering::Relaxed);
            crashed
        });
        assert_eq!(
            status,
            502,
            "{input}: {body}; {:#?}",
            admin.rollout().unwrap().events
        );
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["error"], "worker-failed", "{body}");
        assert!(stable_answers.load(Ordering::Relaxed) > 10);
        assert_eq!(
            stable_failures.load(Ordering::Relaxed),
            0,
            "{input}: stable failed requests"
        );

        let rollout = admin.rollout().unwrap();
        let aborted = rollout
            .events
            .iter()
            .find(|e| e.event == "aborted")
            .unwrap();
        assert!(
            aborted.message.contains(signal),
            "{input}: {}",
            aborted.message
        );
        log.wait_for(&["worker crashed", signal]);
        assert!(!alive(pid), "the crashed worker is gone");
        assert!(alive(front), "the front serves on, same pid");
        for _ in 0..20 {
            assert_eq!(hello(&base, "after", false).0, 200);
        }
    }
    let metrics = metrics(&admin_url);
    for line in [
        r#"graft_worker_crashes_total{signal="SIGSEGV"} 1"#,
        r#"graft_worker_crashes_total{signal="SIGABRT"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    drop(server);
}

#[test]
fn a_release_that_crashes_while_it_initialises_is_refused_and_the_front_never_loads_it() {
    let env = Env::new();
    let path = config(&env, "isolation = \"all\"");
    // crashy's initialiser segfaults where this is set: in the front (which would die of it if
    // it loaded the release) and in every process it starts.
    let crash = [("CRASHY_INIT", std::path::Path::new("segfault"))];
    let (server, base, admin_url, _log) = spawn_graft_serve_logged(&path, &crash, &[]);
    let front = server.0.id();
    let admin = AdminClient::new(&admin_url, None);
    let live = admin.status().unwrap().host.current;
    let crashy = env.release("crashy", &["crashy"]);

    for rollout in [&[][..], &["--canary", "50"][..]] {
        let args = [&["deploy", crashy.to_str().unwrap()][..], rollout].concat();
        let (ok, _, stderr) = crate::serve::graft_cli(&args, &admin_url);
        assert!(!ok, "{stderr}");
        for said in [
            "release rejected at init, plugin hello",
            "SIGSEGV",
            "did not load it",
        ] {
            assert!(stderr.contains(said), "{said:?} missing from: {stderr}");
        }
        assert!(alive(front), "the front serves on, same pid");
        assert_eq!(admin.status().unwrap().host.current, live);
        // No rollout began (none ever did here: `rollout` answers 404 without one).
        assert!(admin.rollout().is_err());
        assert_eq!(hello(&base, "after", false).0, 200);
    }
    let status = admin.status().unwrap();
    let last = status
        .host
        .last_deploy
        .and_then(|d| d.error)
        .unwrap_or_default();
    assert!(
        !last.contains("crashy"),
        "the front's host never prepared it: {last}"
    );
    drop(server);
}

#[test]
fn a_spinning_call_is_answered_503_at_its_deadline_and_its_worker_replaced() {
    let env = Env::new();
    let path = config(&env, "isolation = \"all\"\n\n[workers]\ngrace_ms = 300");
    let (server, base, admin_url, _log) = spawn_graft_serve_logged(&path, &[], &[]);
    let admin = AdminClient::new(&admin_url, None);
    let crashy = env.release("crashy", &["crashy"]);
    let (ok, _, stderr) =
        crate::serve::graft_cli(&["deploy", crashy.to_str().unwrap()], &admin_url);
    assert!(ok, "{stderr}");
    let generation = admin.status().unwrap().host.current;
    let spinning = worker_of(&admin, generation).unwrap().pid.unwrap();

    let (status, _, body) = hello(&base, "spin", false);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("deadline-exceeded"), "{body}");
    wait_until(
        "a fresh worker of the same generation",
        Duration::from_secs(30),
        || {
            worker_of(&admin, generation).is_some_and(|w| {
                w.state == WorkerState::Serving && w.pid.is_some_and(|pid| pid != spinning)
            })
        },
    );
    // The spinning worker is killed: its core is free again.
    wait_until("the spinning worker gone", Duration::from_secs(30), || {
        !alive(spinning)
    });
    for _ in 0..20 {
        let (status, answered_by, body) = hello(&base, "ops", false);
        assert_eq!((status, answered_by), (200, generation), "{body}");
    }
    let metrics = metrics(&admin_url);
    assert!(
        metrics.contains("graft_worker_recycled_total 1"),
        "{metrics}"
    );
    drop(server);
}

#[test]
fn a_worker_serves_each_request_in_the_fronts_context_and_a_plugins_own_routes_too() {
    let env = Env::new();
    let path = config(&env, "isolation = \"all\"\nroute_timeout_ms = 5000");
    let (server, base, admin_url, log) = spawn_graft_serve_logged(&path, &[], &[]);
    let admin = AdminClient::new(&admin_url, None);
    let release = env.release("crashy-ping", &["crashy", "ping"]);
    let (ok, _, stderr) =
        crate::serve::graft_cli(&["deploy", release.to_str().unwrap()], &admin_url);
    assert!(ok, "{stderr}");
    let generation = admin.status().unwrap().host.current;
    let worker = worker_of(&admin, generation).unwrap();
    assert_eq!(worker.state, WorkerState::Serving);
    assert_eq!(
        listening_tcp_sockets(worker.pid.unwrap()),
        0,
        "a worker binds no port: only its front reaches it"
    );
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    // A `[[route]]` export: the call crosses as a call, in the front's context.
    let mut response = agent()
        .post(format!("{base}/hello"))
        .content_type("application/json")
        .header("x-request-id", "req-42")
        .header("traceparent", parent)
        .send("\"context\"")
        .unwrap();
    assert_eq!(
        response.headers()["x-graft-generation"],
        &generation.to_string()
    );
    let seen: String =
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    let [id, traceparent, left] = seen.splitn(3, ' ').collect::<Vec<_>>()[..] else {
        panic!("{seen}");
    };
    assert_eq!(id, "req-42");
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{traceparent}"
    );
    assert!(
        !traceparent.contains("00f067aa0ba902b7"),
        "the front's own span: {traceparent}"
    );
    // The front's deadline (timeout_ms = 1000), not the worker's later one.
    let left: u64 = left
        .trim_start_matches("Some(")
        .trim_end_matches(')')
        .parse()
        .unwrap();
    assert!(left > 500 && left <= 1000, "{left}");

    // A route the plugin declares crosses as HTTP, in the front's context too.
    let mut response = agent()
        .get(format!("{base}/ping/context"))
        .header("x-request-id", "req-43")
        .header("traceparent", parent)
        .call()
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-43");
    assert_eq!(
        response.headers()["x-graft-generation"],
        &generation.to_string()
    );
    let seen: serde_json::Value =
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(seen["id"], "req-43");
    let route_traceparent = seen["traceparent"].as_str().unwrap();
    assert!(
        route_traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{seen}"
    );
    assert!(!route_traceparent.contains("00f067aa0ba902b7"), "{seen}");
    let left = seen["deadline_ms"].as_u64().unwrap();
    assert!(
        left > 4000 && left <= 5000,
        "route_timeout_ms, the front's: {left}"
    );
    // Counted by the front under each route's pattern (a `[[route]]` by its number, a
    // plugin's route by its pattern, as the worker reports them).
    wait_until("both routes counted", Duration::from_secs(10), || {
        let metrics = metrics(&admin_url);
        [
            "route=\"/hello\",method=\"POST\"",
            "route=\"/ping/context\",method=\"GET\"",
        ]
        .iter()
        .all(|route| {
            metrics.lines().any(|line| {
                line.starts_with(&format!(
                    "graft_http_requests_total{{{route},role=\"stable\""
                )) && line.ends_with("status=\"2xx\"} 1")
            })
        })
    });

    // Both ran in the worker: a crash there fails one request (logged with its route and the
    // plugin that serves it), and the routes answer on.
    let (status, _, body) = hello(&base, "segfault", false);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("killed by SIGSEGV"), "{body}");
    log.wait_for(&[
        "request failed in its worker",
        "route=\"/hello\"",
        "plugin=\"hello\"",
        "killed by SIGSEGV",
    ]);
    wait_until("the worker restarted", Duration::from_secs(30), || {
        worker_of(&admin, generation)
            .is_some_and(|w| w.state == WorkerState::Serving && w.pid != worker.pid)
    });
    let mut response = agent().get(format!("{base}/ping")).call().unwrap();
    assert_eq!(response.body_mut().read_to_string().unwrap(), "pong");
    assert_eq!(hello(&base, "ops", false).2, "\"hello, ops\"");
    drop(server);
}

#[test]
fn a_stable_worker_that_keeps_crashing_is_restarted_then_rolled_back() {
    let env = Env::new();
    let extra = "isolation = \"all\"\n\n[workers]\ncrash_limit = 3\nrestart_backoff_ms = 10\nmemory_limit_mb = 512";
    let path = config(&env, extra);
    // Room for a worker to restart within a request's deadline.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("timeout_ms = 1000", "timeout_ms = 30000"),
    )
    .unwrap();
    let (server, base, admin_url, log) = spawn_graft_serve_logged(&path, &[], &[]);
    let admin = AdminClient::new(&admin_url, None);
    let v1 = admin.status().unwrap().host.current;
    let crashy = env.release("crashy", &["crashy"]);
    let (ok, _, stderr) =
        crate::serve::graft_cli(&["deploy", crashy.to_str().unwrap()], &admin_url);
    assert!(ok, "{stderr}");
    let v2 = admin.status().unwrap().host.current;

    // A leak past the memory limit, then two segfaults: each kills only the worker; the first
    // two are restarted on the same release, the third rolls the host back.
    for (n, input) in ["leak", "segfault", "segfault"].into_iter().enumerate() {
        wait_until("v2's worker serving", Duration::from_secs(30), || {
            worker_of(&admin, v2).is_some_and(|w| w.state == WorkerState::Serving)
        });
        let (status, generation, body) = hello(&base, input, false);
        assert_eq!((status, generation), (502, v2), "{input}: {body}");
        if n < 2 {
            // Sent at once: it waits for the restarted worker rather than fail on the dead one.
            let (status, generation, body) = hello(&base, "ops", false);
            assert_eq!((status, generation), (200, v2), "{body}");
            assert_eq!(worker_of(&admin, v2).unwrap().restarts, n as u64 + 1);
        }
    }
    log.wait_for(&["worker crash loop"]);
    wait_until("rolled back", Duration::from_secs(30), || {
        admin.status().unwrap().host.current != v2
    });
    let (status, generation, body) = hello(&base, "ops", false);
    assert_eq!(status, 200, "{body}");
    assert!(
        generation > v2 && generation != v1,
        "a new generation of v1's release"
    );
    assert_eq!(body, "\"hello, ops\"");
    drop(server);
}
