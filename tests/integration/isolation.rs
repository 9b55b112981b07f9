//! Serving at native speed without letting slow calls hurt anyone else: the admin plane runs on
//! threads of its own, and a route whose calls block runs them on the blocking pool while fast
//! routes run theirs inline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use graft::client::AdminClient;

use crate::serve::{config, in_process_with, post};
use crate::util::{wait_until, Env};

#[test]
fn with_hundreds_of_slow_blocking_calls_in_flight_status_and_a_fast_route_answer_at_once() {
    let env = Env::new();
    let path = config(&env, "");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n[[route]]\nmethod = \"POST\"\npath = \"/slow\"\nexport = \"foo@1\"\nmode = \"blocking\"\n");
    std::fs::write(&path, text).unwrap();
    let (_runtime, server) = in_process_with(&path, "[admin]");
    let base = format!("http://{}", server.addr());
    let admin = AdminClient::new(&format!("http://{}", server.admin_addr()), None);
    // One fast call: `auto` learns that /foo runs inline.
    assert_eq!(post(&format!("{base}/foo"), r#"{"a": 1}"#).0, 200);

    // More slow calls than the blocking pool has threads (512): the pool is full and queued.
    const SLOW: usize = 600;
    let finished = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..SLOW {
            s.spawn(|| {
                let (status, _, body) =
                    post(&format!("{base}/slow"), r#"{"a": 1, "pause_ms": 2000}"#);
                assert_eq!(status, 200, "{body}");
                finished.fetch_add(1, Ordering::SeqCst);
            });
        }
        wait_until("every slow call in flight", Duration::from_secs(60), || {
            let status = admin.status().unwrap();
            status
                .host
                .generations
                .iter()
                .map(|g| g.in_flight)
                .sum::<usize>()
                >= SLOW
        });

        let started = Instant::now();
        let status = admin.status().unwrap();
        let status_took = started.elapsed();
        let started = Instant::now();
        let (code, _, body) = post(&format!("{base}/foo"), r#"{"a": 2}"#);
        let foo_took = started.elapsed();
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            finished.load(Ordering::SeqCst),
            0,
            "status ({status_took:?}) and /foo ({foo_took:?}) answered before any slow call \
             finished"
        );
        assert_eq!(status.host.current, 1);
        eprintln!("with {SLOW} slow calls in flight: /status {status_took:?}, /foo {foo_took:?}");
    });
    assert_eq!(finished.load(Ordering::SeqCst), SLOW);
}
