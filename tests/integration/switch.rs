//! The request boundary holds only what it must: a migration waits for, and holds, only the
//! requests that can reach the migrating plugin; a save never fails or waits for a slow
//! request; an async call past its deadline, or whose client went away, is cancelled and its
//! pin released at once; a call that cannot be stopped shows in status with its age.

use std::time::Duration;

use example_types::counter::{IncrV1, TotalV1};
use graft_host::{CallSite, DeployCause, DisplayChain, Host, Step};

use crate::isolation::{in_flight, serve_with, serve_with_plugins};
use crate::serve::agent;
use crate::util::{wait_until, Env};

/// A host serving the counter beside hello, with a short drain deadline.
fn counter_beside_hello(env: &Env) -> Host {
    let host = Host::builder(env.path("data"))
        .migration_drain(Duration::from_millis(300))
        .build()
        .unwrap();
    host.deploy(env.complete_release("v1", &["counter-v1", "hello-v1"]))
        .unwrap();
    host
}

fn site(host: &Host, contract: &str, label: &str) -> CallSite {
    CallSite::new(host.export(contract).unwrap(), label)
}

#[test]
fn a_migration_with_a_slow_request_on_an_unrelated_route_goes_through_and_never_holds_it() {
    let env = Env::new();
    let host = counter_beside_hello(&env);
    let hello = site(&host, "hello@1", "POST /hello");
    let incr = site(&host, "incr@1", "POST /incr");
    let v2 = env.complete_release("v2", &["counter-v2", "hello-v1"]);

    // A request in flight on hello, which cannot reach the counter, for the whole deploy.
    let slow = host.pin_for(&hello);
    let report = host
        .deploy(&v2)
        .unwrap_or_else(|e| panic!("{}", DisplayChain(&e)));
    assert_eq!(report.migrated, ["counter 1 -> 2 (up)"]);
    drop(slow);

    // A request in flight on the counter holds the next migration (a rollback) until its
    // deadline; meanwhile hello's requests pass the boundary and the counter's are held.
    let held = host.pin_for(&incr);
    std::thread::scope(|s| {
        let rollback = s.spawn(|| host.rollback());
        wait_until(
            "the boundary closed for the counter",
            Duration::from_secs(30),
            || host.try_pin_for(&incr).is_none(),
        );
        assert!(
            host.try_pin_for(&hello).is_some(),
            "an unrelated route passes while the counter's requests are held"
        );
        let err = rollback.join().unwrap().unwrap_err();
        let text = DisplayChain(&err).to_string();
        assert_eq!(err.step(), Step::Migrate, "{text}");
        let DeployCause::MigrationDrain { in_flight, .. } = err.cause() else {
            panic!("{text}");
        };
        assert_eq!(
            in_flight.len(),
            1,
            "only the counter's request is named: {text}"
        );
        assert!(
            text.contains("POST /incr on generation") && !text.contains("/hello"),
            "{text}"
        );
    });
    drop(held);
    assert!(
        host.try_pin_for(&incr).is_some(),
        "the boundary is open again"
    );
}

#[test]
fn a_save_with_a_slow_request_in_flight_copies_the_state_live_and_loses_nothing() {
    let env = Env::new();
    let host = counter_beside_hello(&env);
    let incr_site = site(&host, "incr@1", "POST /incr");
    let incr = host.typed_export::<IncrV1>().unwrap();
    // A slow request on the counter: it incremented and is still running.
    let slow = host.pin_for(&incr_site);
    slow.call_typed(&incr, 0).unwrap();
    for _ in 0..4 {
        host.call_typed(&incr, 0).unwrap();
    }
    for _ in 0..20 {
        let saved = host
            .save_state()
            .unwrap_or_else(|e| panic!("{}", DisplayChain(&e)));
        assert_eq!(saved.plugins, ["counter"]);
        assert_eq!(saved.live.len(), 1, "copied while the slow request runs");
        assert_eq!(saved.live[0].label.as_deref(), Some("POST /incr"));
    }
    drop(slow);
    let saved = host.save_state().unwrap();
    assert!(saved.live.is_empty(), "at a boundary once nothing runs");
    drop(host);

    let host = env.host();
    host.deploy(env.path("releases/v1")).unwrap();
    let total = host.typed_export::<TotalV1>().unwrap();
    assert_eq!(host.call_typed(&total, 0).unwrap(), 5);
}

#[test]
fn an_async_call_past_its_deadline_or_whose_client_left_is_cancelled_and_its_pin_released() {
    let env = Env::new();
    let routes = "\n[[route]]\nmethod = \"POST\"\npath = \"/sleep\"\nexport = \"sleep@1\"\n\
                  timeout_ms = 200\n\n\
                  [[route]]\nmethod = \"POST\"\npath = \"/nap\"\nexport = \"sleep@1\"\n";
    let (_runtime, server) = serve_with_plugins(&env, "", routes, &["sleepy"]);
    let admin = graft::client::AdminClient::new(&format!("http://{}", server.admin_addr()), None);
    let base = format!("http://{}", server.addr());

    // Past the deadline: answered 503, and the 50 s sleep is dropped, not left running.
    let mut response = agent()
        .post(&format!("{base}/sleep"))
        .content_type("application/json")
        .send("50000")
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let body = response.body_mut().read_to_string().unwrap();
    assert!(body.contains("cancelled"), "{body}");
    wait_until(
        "the cancelled call's pin released",
        Duration::from_secs(10),
        || in_flight(&admin) == 0,
    );

    // A client that gives up: its call is dropped when the connection closes.
    let impatient = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(300)))
            .http_status_as_error(false)
            .build(),
    );
    assert!(impatient
        .post(&format!("{base}/nap"))
        .content_type("application/json")
        .send("50000")
        .is_err());
    wait_until(
        "the abandoned call's pin released",
        Duration::from_secs(10),
        || in_flight(&admin) == 0,
    );
}

#[test]
fn a_sync_call_that_cannot_be_stopped_shows_in_status_with_its_age() {
    let env = Env::new();
    let routes = "\n[[route]]\nmethod = \"POST\"\npath = \"/bounded\"\nexport = \"foo@1\"\n\
                  mode = \"blocking\"\ntimeout_ms = 100\n";
    let (_runtime, server) = serve_with(&env, "", routes);
    let admin = graft::client::AdminClient::new(&format!("http://{}", server.admin_addr()), None);
    let base = format!("http://{}", server.addr());
    let response = agent()
        .post(&format!("{base}/bounded"))
        .content_type("application/json")
        .send(r#"{"a": 1, "pause_ms": 3000}"#)
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let status = admin.status().unwrap().host;
    assert_eq!(status.in_flight, 1, "the call runs on past its answer");
    let call = &status.calls[0];
    assert_eq!(call.label.as_deref(), Some("POST /bounded"));
    assert!(call.age_ms >= 100, "{call:?}");
}
