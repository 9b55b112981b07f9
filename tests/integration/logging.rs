//! Plugin logs reach the host's tracing subscriber, filtered by the host.

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::util::Env;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn plugin_events_go_through_the_hosts_subscriber_and_filter() {
    let env = Env::new();
    let host = env.host();
    host.deploy(env.complete_release("v1", &["hello-v1"]))
        .unwrap();
    let hello = host.export("hello@1").unwrap();

    let run = |filter: &str| {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            host.call::<_, String>(&hello, &"logs").unwrap();
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        text
    };
    let shown = run("graft::plugin=debug");
    assert!(shown.contains("greeting name=logs"), "{shown}");
    assert!(
        shown.contains("plugin=\"hello\"") || shown.contains("plugin=hello"),
        "{shown}"
    );
    let hidden = run("graft::plugin=info");
    assert!(!hidden.contains("greeting"), "{hidden}");
}

#[test]
fn plugin_events_nest_under_the_span_of_the_request_that_called() {
    let env = Env::new();
    let host = env.host();
    host.deploy(env.complete_release("v1", &["hello-v1"]))
        .unwrap();
    let hello = host.export("hello@1").unwrap();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        // What `graft serve` opens around each request's calls.
        let span = tracing::info_span!("request", request_id = "req-7", route = "/hello");
        span.in_scope(|| host.call::<_, String>(&hello, &"nested").unwrap());
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("greeting name=nested"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains(r#"request{request_id="req-7" route="/hello"}"#),
        "{line}"
    );
}
