//! Connections the current generation's worker serves itself (`isolation = "all"`,
//! `worker/direct.rs`): they move to the new generation the moment it goes live, none of their
//! requests fails while releases go live under load, and a crash of the worker fails only the
//! request in flight, not the connections that were between requests.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use graft::api::WorkerState;
use graft::client::AdminClient;

use crate::serve::{admin_metrics as metrics, spawn_graft_serve_logged};
use crate::util::{wait_until, Env};
use crate::workers::{config, hello, tcp_sockets, worker_of};

/// Every generation in a worker; a keep-alive connection may stay idle while a worker restarts
/// on a busy machine.
const ALL: &str = "isolation = \"all\"\nheader_read_timeout_ms = 120000";

/// One keep-alive HTTP/1.1 connection, read and written by hand so that every request of it
/// goes over the same socket.
struct KeepAlive {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl KeepAlive {
    fn open(base: &str) -> Self {
        let stream = TcpStream::connect(base.trim_start_matches("http://")).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Self {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    /// POSTs `name` to `/hello`: the status, the generation that answered, the body.
    fn hello(&mut self, name: &str) -> (u16, u64, String) {
        self.hello_with(name, "")
    }

    /// [`KeepAlive::hello`] with these header lines (each ending in CRLF).
    fn hello_with(&mut self, name: &str, headers: &str) -> (u16, u64, String) {
        let body = serde_json::to_string(name).unwrap();
        write!(
            self.writer,
            "POST /hello HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).unwrap();
        assert!(!status_line.is_empty(), "the connection was closed");
        let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let (mut length, mut generation, mut closes) = (0, 0, false);
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap(),
                "x-graft-generation" => generation = value.trim().parse().unwrap(),
                "connection" => closes = value.trim().eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        assert!(!closes, "the server closes the connection: {status_line}");
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        (status, generation, String::from_utf8(body).unwrap())
    }
}

/// `graft serve` of the hello config with every generation in a worker: the server, its app and
/// admin URLs, and an admin client.
fn serve_all(env: &Env) -> (crate::util::KillOnDrop, String, String, AdminClient) {
    let path = config(env, ALL);
    let (server, base, admin_url, _log) = spawn_graft_serve_logged(&path, &[], &[]);
    let admin = AdminClient::new(&admin_url, None);
    (server, base, admin_url, admin)
}

/// Waits until `generation`'s worker holds the one client connection itself.
fn held_by_its_worker(admin: &AdminClient, generation: u64) {
    let worker = worker_of(admin, generation).unwrap().pid.unwrap();
    wait_until(
        "the worker holding the connection",
        Duration::from_secs(10),
        || tcp_sockets(worker, "01") == 1,
    );
}

/// Deploys `release`; the generation that went live.
fn deploy(admin: &AdminClient, release: &std::path::Path) -> u64 {
    let request = graft::api::DeployRequest::new(release);
    admin.deploy(&request).unwrap().report.generation
}

#[test]
fn a_connection_moves_to_the_new_generation_when_it_goes_live_and_outlives_a_crash() {
    let env = Env::new();
    let (server, base, admin_url, admin) = serve_all(&env);
    let v1 = admin.status().unwrap().host.current;
    let mut connection = KeepAlive::open(&base);
    assert_eq!(connection.hello("one"), (200, v1, "\"hello, one\"".into()));
    // The worker holds the client's connection itself: no request crosses the front.
    held_by_its_worker(&admin, v1);
    // Counted by the front all the same.
    wait_until("the request counted", Duration::from_secs(10), || {
        metrics(&admin_url).contains(&format!("graft_requests_total{{generation=\"{v1}\"}} 1"))
    });

    // The moment the deploy answers, the same connection is served by the new generation.
    let crashy = env.release("crashy", &["crashy"]);
    let v2 = deploy(&admin, &crashy);
    let (status, generation, body) = connection.hello("two");
    assert_eq!((status, generation), (200, v2), "{body}");

    // A crash fails the request in flight (on another connection), not this one, idle then.
    let (status, generation, body) = hello(&base, "segfault", false);
    assert_eq!((status, generation), (502, v2), "{body}");
    assert!(body.contains("killed by SIGSEGV"), "{body}");
    wait_until("the worker restarted", Duration::from_secs(30), || {
        worker_of(&admin, v2).is_some_and(|w| w.state == WorkerState::Serving)
    });
    let (status, generation, body) = connection.hello("three");
    assert_eq!((status, generation), (200, v2), "{body}");
    let metrics = metrics(&admin_url);
    assert!(
        metrics.contains("graft_worker_crashes_total{signal=\"SIGSEGV\"} 1"),
        "{metrics}"
    );
    drop(server);
}

#[test]
fn no_request_fails_while_releases_go_live_under_load() {
    let env = Env::new();
    let (server, base, _admin_url, admin) = serve_all(&env);
    let v2 = env.complete_release("v2", &["hello-v2"]);
    let v1 = env.path("releases/v1");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (base, stop) = (base.clone(), std::sync::Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut connection = KeepAlive::open(&base);
                let (mut served, mut last) = (0_u64, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (status, generation, body) = connection.hello("load");
                    assert_eq!(status, 200, "{body}");
                    assert!(generation >= last, "generation {generation} after {last}");
                    (served, last) = (served + 1, generation);
                }
                served
            })
        })
        .collect();
    let mut generations = Vec::new();
    for n in 0..10 {
        generations.push(deploy(&admin, if n % 2 == 0 { &v2 } else { &v1 }));
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(served > 0);
    generations.dedup();
    assert_eq!(
        generations.len(),
        10,
        "each deploy went live: {generations:?}"
    );
    drop(server);
}

#[test]
fn once_a_rollout_starts_each_request_of_a_connection_the_worker_held_picks_its_side() {
    let env = Env::new();
    let (server, base, _admin_url, admin) = serve_all(&env);
    let stable = admin.status().unwrap().host.current;
    let mut connection = KeepAlive::open(&base);
    assert_eq!(connection.hello("one").1, stable);
    held_by_its_worker(&admin, stable);

    let v2 = env.complete_release("v2", &["hello-v2"]);
    let options = graft::api::RolloutOptions::new(true, Some(1), None);
    let request = graft::api::DeployRequest::new(&v2).with_rollout(options);
    let canary = admin.deploy(&request).unwrap().report.generation;
    // The front routes each request again: forced, this one goes to the canary; unforced, to
    // stable (a 1% canary), on the same connection.
    let force = format!(
        "x-graft-route: canary\r\nx-graft-route-token: {}\r\n",
        crate::workers::FORCE_TOKEN
    );
    let (status, generation, body) = connection.hello_with("two", &force);
    assert_eq!((status, generation), (200, canary), "{body}");
    let stable_answers = (0..20)
        .filter(|_| connection.hello("three").1 == stable)
        .count();
    assert!(stable_answers >= 15, "{stable_answers} of 20 from stable");
    drop(server);
}
