//! Serving at native speed without letting slow calls or slow clients hurt anyone else: the admin
//! plane runs on threads of its own, a route whose calls block runs them on the blocking pool
//! while fast routes run theirs inline, async exports wait without holding threads, and the
//! limits hold (idle and header-read timeouts, the
//! body timeout, per-route concurrency limits and deadlines).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use graft::client::AdminClient;
use graft::serve::Server;

use crate::serve::{
    agent, config, config_with_plugins, in_process_with, post, spawn_graft_serve_with, write_post,
};
use crate::util::{wait_until, Env};

/// Requests in flight on every generation, as status reports them.
pub(crate) fn in_flight(admin: &AdminClient) -> usize {
    let status = admin.status().unwrap();
    status.host.generations.iter().map(|g| g.in_flight).sum()
}

#[test]
fn with_hundreds_of_slow_blocking_calls_in_flight_status_and_a_fast_route_answer_at_once() {
    let env = Env::new();
    let path = config(&env, "");
    let mut text = std::fs::read_to_string(&path).unwrap();
    // A route that blocks, and a fast one declared inline. (Left to `auto`, the fast route's
    // first, cold call in a debug build on a loaded machine can pass the inline budget and keep
    // it on the pool, behind the slow calls: what `auto` learns is tested in `mode.rs`.)
    text.push_str(
        "\n[[route]]\nmethod = \"POST\"\npath = \"/slow\"\nexport = \"foo@1\"\nmode = \"blocking\"\n\
         \n[[route]]\nmethod = \"POST\"\npath = \"/fast\"\nexport = \"foo@1\"\nmode = \"inline\"\n",
    );
    std::fs::write(&path, text).unwrap();
    let (_runtime, server) = in_process_with(&path, "[admin]");
    let base = format!("http://{}", server.addr());
    let admin = AdminClient::new(&format!("http://{}", server.admin_addr()), None);

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
            in_flight(&admin) >= SLOW
        });

        let started = Instant::now();
        let status = admin.status().unwrap();
        let status_took = started.elapsed();
        let started = Instant::now();
        let (code, _, body) = post(&format!("{base}/fast"), r#"{"a": 2}"#);
        let foo_took = started.elapsed();
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            finished.load(Ordering::SeqCst),
            0,
            "status ({status_took:?}) and /fast ({foo_took:?}) answered before any slow call \
             finished"
        );
        assert_eq!(status.host.current, 1);
        eprintln!("with {SLOW} slow calls in flight: /status {status_took:?}, /fast {foo_took:?}");
    });
    assert_eq!(finished.load(Ordering::SeqCst), SLOW);
}

/// `graft serve` in this process with the standard test config, `extra` top-level lines and
/// these routes appended.
pub(crate) fn serve_with(
    env: &Env,
    extra: &str,
    routes: &str,
) -> (tokio::runtime::Runtime, Server) {
    serve_with_plugins(env, extra, routes, &[])
}

/// [`serve_with`], with these crates in release v1 too.
pub(crate) fn serve_with_plugins(
    env: &Env,
    extra: &str,
    routes: &str,
    more: &[&str],
) -> (tokio::runtime::Runtime, Server) {
    let path = config_with_plugins(env, extra, more);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(routes);
    std::fs::write(&path, text).unwrap();
    in_process_with(&path, "[admin]")
}

/// POSTs JSON; returns the status and body (an answer of the server's own names no generation).
fn post_any(url: &str, body: &str) -> (u16, String) {
    let mut response = agent()
        .post(url)
        .content_type("application/json")
        .send(body)
        .unwrap();
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

/// Reads until the server closes the connection (or 10 s pass); returns what it sent.
fn read_to_close(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    match stream.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the server did not close the connection: {e}"),
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn an_idle_connection_is_closed_after_the_header_read_timeout_and_slow_headers_are_cut() {
    let env = Env::new();
    let (_runtime, server) = serve_with(&env, "header_read_timeout_ms = 300", "");

    // Idle from the start.
    let started = Instant::now();
    let mut idle = TcpStream::connect(server.addr()).unwrap();
    assert_eq!(read_to_close(&mut idle), "");
    assert!(started.elapsed() >= Duration::from_millis(300));

    // Idle after a request on a keep-alive connection.
    let mut kept = TcpStream::connect(server.addr()).unwrap();
    write_post(&mut kept, "/foo", r#"{"a": 1}"#, "");
    let answered = read_to_close(&mut kept);
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");

    // Headers trickled a byte every 50 ms would take 5 s; the connection is cut long before.
    let mut slow = TcpStream::connect(server.addr()).unwrap();
    let started = Instant::now();
    let mut trickle = slow.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for byte in b"POST /foo HTTP/1.1\r\nhost: graft\r\nx-slow: "
            .iter()
            .cycle()
            .take(100)
        {
            if trickle.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    assert_eq!(read_to_close(&mut slow), "");
    let cut_after = started.elapsed();
    assert!(
        cut_after < Duration::from_secs(4),
        "cut after {cut_after:?}"
    );
    writer.join().unwrap();
}

#[test]
fn a_body_slower_than_body_timeout_ms_is_answered_408() {
    let env = Env::new();
    let (_runtime, server) = serve_with(&env, "body_timeout_ms = 300", "");
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    write!(
        stream,
        "POST /foo HTTP/1.1\r\nhost: graft\r\ncontent-type: application/json\r\n\
         content-length: 100\r\nconnection: close\r\n\r\n{{\"a\""
    )
    .unwrap();
    let answer = read_to_close(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request-timeout\""), "{answer}");
}

#[test]
fn a_route_over_its_concurrency_limit_answers_503_and_a_call_past_its_deadline_too() {
    let env = Env::new();
    let routes = "\n[[route]]\nmethod = \"POST\"\npath = \"/slow\"\nexport = \"foo@1\"\n\
                  mode = \"blocking\"\nmax_in_flight = 2\n\n\
                  [[route]]\nmethod = \"POST\"\npath = \"/bounded\"\nexport = \"foo@1\"\n\
                  mode = \"blocking\"\ntimeout_ms = 200\n";
    let (_runtime, server) = serve_with(&env, "", routes);
    let base = format!("http://{}", server.addr());
    let admin = AdminClient::new(&format!("http://{}", server.admin_addr()), None);
    let slow = r#"{"a": 1, "pause_ms": 1500}"#;

    std::thread::scope(|s| {
        let held: Vec<_> = (0..2)
            .map(|_| s.spawn(|| post(&format!("{base}/slow"), slow).0))
            .collect();
        wait_until("two slow calls in flight", Duration::from_secs(30), || {
            in_flight(&admin) >= 2
        });
        let (code, body) = post_any(&format!("{base}/slow"), slow);
        assert_eq!(code, 503, "{body}");
        assert!(
            body.contains("\"overloaded\"") && body.contains("max_in_flight"),
            "{body}"
        );
        for call in held {
            assert_eq!(call.join().unwrap(), 200);
        }
    });
    assert_eq!(
        post(&format!("{base}/slow"), r#"{"a": 1}"#).0,
        200,
        "slots free again"
    );

    let (code, body) = post_any(&format!("{base}/bounded"), r#"{"a": 1, "pause_ms": 2000}"#);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"deadline-exceeded\""), "{body}");
    assert_eq!(post(&format!("{base}/bounded"), r#"{"a": 1}"#).0, 200);
}

#[test]
fn past_max_connections_new_connections_wait_and_the_admin_plane_still_answers() {
    let env = Env::new();
    let (_runtime, server) = serve_with(&env, "max_connections = 2", "");
    let admin = AdminClient::new(&format!("http://{}", server.admin_addr()), None);
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(server.addr()).unwrap())
        .collect();
    // Let the server accept both.
    std::thread::sleep(Duration::from_millis(200));

    let mut third = TcpStream::connect(server.addr()).unwrap();
    write_post(&mut third, "/foo", r#"{"a": 1}"#, "connection: close\r\n");
    third
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut byte = [0u8; 1];
    let waited = third.read(&mut byte);
    assert!(
        matches!(&waited, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the third connection was served past the cap: {waited:?}"
    );
    assert_eq!(admin.status().unwrap().host.current, 1, "admin answers");

    drop(held);
    let answer = read_to_close(&mut third);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// The number of threads of process `pid`, from `/proc`.
fn threads_of(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a Threads line")
}

#[test]
fn four_hundred_concurrent_async_sleeps_all_succeed_on_a_few_threads() {
    let env = Env::new();
    let path = config_with_plugins(&env, "", &["sleepy"]);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n[[route]]\nmethod = \"POST\"\npath = \"/sleep\"\nexport = \"sleep@1\"\n");
    std::fs::write(&path, text).unwrap();
    let (server, base, _) = spawn_graft_serve_with(&path, &[], &[]);
    let pid = server.0.id();
    assert_eq!(
        post_any(&format!("{base}/sleep"), "1"),
        (200, "1".to_owned())
    );

    const REQUESTS: usize = 400;
    let ok = AtomicUsize::new(0);
    let most_threads = AtomicUsize::new(threads_of(pid));
    let done = std::sync::atomic::AtomicBool::new(false);
    let started = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                most_threads.fetch_max(threads_of(pid), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let clients: Vec<_> = (0..REQUESTS)
            .map(|_| {
                s.spawn(|| {
                    let (status, body) = post_any(&format!("{base}/sleep"), "200");
                    assert_eq!((status, body.as_str()), (200, "200"));
                    ok.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        for client in clients {
            client.join().unwrap();
        }
        done.store(true, Ordering::SeqCst);
    });
    let wall = started.elapsed();
    let most = most_threads.load(Ordering::SeqCst);
    eprintln!(
        "{REQUESTS} concurrent 200 ms async sleeps: wall {wall:?}, server threads at most {most}"
    );
    assert_eq!(ok.load(Ordering::SeqCst), REQUESTS);
    assert!(most < 64, "the server ran {most} threads");
}

#[test]
fn an_async_export_awaits_an_async_import_and_blocking_work_on_the_host() {
    let env = Env::new();
    let host = env.host();
    graft_host::set_async_services(std::sync::Arc::new(graft::serve::TokioServices));
    host.deploy(env.complete_release("sleepy", &["sleepy"]))
        .unwrap();
    let naps = host.export("naps@1").unwrap();
    let sleep = host.export("sleep@1").unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pin = host.pin_owned();
    assert!(pin.is_async(&naps));
    let started = Instant::now();
    let total = runtime.block_on(pin.call_async(&naps, b"[30, 20]".to_vec()));
    assert_eq!(total.unwrap(), b"50");
    assert!(started.elapsed() >= Duration::from_millis(50));
    // Called the synchronous way, an async export says how to call it.
    let err = pin.call_raw(&sleep, b"1").unwrap_err();
    assert!(err.to_string().contains("is async"), "{err}");
    // A plugin error from inside the import comes back with the import's contract.
    let err = runtime
        .block_on(pin.call_async(&naps, b"[70000]".to_vec()))
        .unwrap_err();
    assert!(
        err.to_string().contains("sleep@1") && err.to_string().contains("more than"),
        "{err}"
    );
}
