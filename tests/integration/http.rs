//! A real HTTP service on graft: routes that ship with the release (added and removed under
//! load, each answer from the generation that declared its route), the host's HTTP client
//! (allow-list, connections kept across patches), request ids, per-route metrics.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use graft::serve::{Server, GENERATION_HEADER, REQUEST_ID_HEADER};
use graft_host::{DisplayChain, Host, Step};

use crate::serve::{agent, in_process_with, metrics_text};
use crate::util::{run_graft, Env};

/// A graft.toml serving `release` (a directory under `releases/`), with these lines at the
/// top level.
fn config(env: &Env, release: &str, extra: &str) -> std::path::PathBuf {
    let path = env.path("graft.toml");
    let text = format!(
        r#"data_dir = "data"
release = "releases/{release}"
listen = "127.0.0.1:0"
{extra}
[admin]
listen = "127.0.0.1:0"
"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// One answer: status, generation, body.
fn get(url: &str) -> (u16, u64, String) {
    call(agent().get(url).call().unwrap())
}

fn call(mut response: ureq::http::Response<ureq::Body>) -> (u16, u64, String) {
    let generation = response.headers()[GENERATION_HEADER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let status = response.status().as_u16();
    (
        status,
        generation,
        response.body_mut().read_to_string().unwrap(),
    )
}

fn deploy(server: &Server, release: &std::path::Path) -> u64 {
    server
        .host()
        .deploy(release)
        .unwrap_or_else(|e| panic!("{}", DisplayChain(&e)))
        .generation
}

fn create(base: &str, body: &str) -> u64 {
    let mut response = agent()
        .post(&format!("{base}/notes"))
        .content_type("application/json")
        .send(body)
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let note: serde_json::Value =
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(location, format!("/notes/{}", note["id"]));
    note["id"].as_u64().unwrap()
}

/// What a client saw: the path it asked, the status and the generation that answered.
type Answer = (&'static str, u16, u64);

#[test]
fn a_release_adds_and_removes_endpoints_under_load_each_answer_from_the_generation_that_routed_it()
{
    let env = Env::new();
    env.complete_release("r1", &["notes-v1", "ping"]);
    let r2 = env.complete_release("r2", &["notes-v2", "ping"]); // adds GET /stats
    let r3 = env.complete_release("r3", &["notes-v2"]); // removes GET /ping
    let (_runtime, server) = in_process_with(&config(&env, "r1", ""), "[admin]");
    let base = format!("http://{}", server.addr());
    create(&base, r#"{"title": "one", "body": "a b c"}"#);

    // Keep-alive clients hit every route while the releases go live.
    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, answers, base) = (Arc::clone(&stop), Arc::clone(&answers), base.clone());
            std::thread::spawn(move || {
                let agent = agent();
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    for path in ["/stats", "/ping", "/notes/1"] {
                        let response = agent
                            .get(&format!("{base}{path}"))
                            .call()
                            .expect("no failed request");
                        let (status, generation, _) = call(response);
                        seen.push((path, status, generation));
                    }
                }
                answers.lock().unwrap().extend(seen);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let g2 = deploy(&server, &r2);
    std::thread::sleep(Duration::from_millis(200));
    let g3 = deploy(&server, &r3);
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let answers = answers.lock().unwrap();
    let g1 = g2 - 1;
    for &(path, status, generation) in answers.iter() {
        let expected = match (path, generation) {
            ("/stats", g) if g == g1 => 404,
            ("/ping", g) if g == g3 => 404,
            (_, g) if [g1, g2, g3].contains(&g) => 200,
            other => panic!("an answer from an unknown generation: {other:?}"),
        };
        assert_eq!(status, expected, "{path} from generation {generation}");
    }
    for generation in [g1, g2, g3] {
        assert!(
            answers.iter().any(|a| a.2 == generation),
            "some answers came from generation {generation}"
        );
    }
}

#[test]
fn every_call_sees_its_request_id_trace_context_and_deadline() {
    let env = Env::new();
    env.complete_release("r", &["ping"]);
    let (_runtime, server) =
        in_process_with(&config(&env, "r", "route_timeout_ms = 5000"), "[admin]");
    let url = format!("http://{}/ping/context", server.addr());
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut response = agent()
        .get(&url)
        .header(REQUEST_ID_HEADER, "req-42")
        .header("traceparent", parent)
        .call()
        .unwrap();
    assert_eq!(response.headers()[REQUEST_ID_HEADER], "req-42");
    let seen: serde_json::Value =
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(seen["id"], "req-42");
    let traceparent = seen["traceparent"].as_str().unwrap();
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{traceparent}"
    );
    assert!(
        !traceparent.contains("00f067aa0ba902b7"),
        "graft's own span: {traceparent}"
    );
    let left = seen["deadline_ms"].as_u64().unwrap();
    assert!(left > 4000 && left <= 5000, "{left}");
    // Without headers: ids of graft's own, on the answer and in the call.
    let mut response = agent().get(&url).call().unwrap();
    let id = response.headers()[REQUEST_ID_HEADER]
        .to_str()
        .unwrap()
        .to_owned();
    let seen: serde_json::Value =
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(seen["id"], id.as_str());
}

#[test]
fn graft_check_lists_routes_and_links_imports_of_host_services() {
    let env = Env::new();
    let release = env.complete_release("v1", &["notes-v1"]);
    let (ok, stdout, stderr) = run_graft(&["check".as_ref(), release.as_os_str()]);
    assert!(ok, "{stdout}{stderr}");
    for line in [
        "routes   GET /notes",
        "GET /notes/{id}/preview (async)",
        "notes -> (host) (graft.http.fetch@1)",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
}

#[test]
fn a_route_a_graft_toml_route_claims_too_is_refused_at_link_naming_both() {
    let env = Env::new();
    let host = Host::builder(env.path("data"))
        .reserve_route("*", "/ping", "graft.toml [[route]] POST /ping")
        .build()
        .unwrap();
    let err = host
        .deploy(env.complete_release("r", &["ping"]))
        .unwrap_err();
    assert_eq!(err.step(), Step::Link);
    assert_eq!(err.plugin(), Some("ping"));
    let message = DisplayChain(&err).to_string();
    assert!(
        message.contains(
            "plugin ping routes GET /ping, but graft.toml [[route]] POST /ping routes it too"
        ),
        "{message}"
    );
}

/// An upstream on loopback that answers every request on a connection (keep-alive) with a
/// page, counting the connections it accepted and the request ids it was sent.
fn upstream() -> (String, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let ids: Arc<Mutex<Vec<String>>> = Arc::default();
    let (counted, seen) = (Arc::clone(&accepted), Arc::clone(&ids));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            counted.fetch_add(1, Ordering::SeqCst);
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut line = String::new();
                    let mut length = 0;
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(value) = lower.strip_prefix("content-length:") {
                            length = value.trim().parse().unwrap_or(0);
                        }
                        if let Some(value) = lower.strip_prefix("x-request-id:") {
                            seen.lock().unwrap().push(value.trim().to_owned());
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    let _ = reader.read_exact(&mut body);
                    let page = "<html><title>Upstream page</title></html>";
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{page}",
                        page.len()
                    );
                    if stream.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted, ids)
}

#[test]
fn the_host_http_client_serves_allowed_upstreams_refuses_others_and_keeps_its_connections_across_a_patch(
) {
    let env = Env::new();
    let (upstream, accepted, ids) = upstream();
    env.complete_release("v1", &["notes-v1"]);
    let v2 = env.complete_release("v2", &["notes-v2"]);
    let allow = format!("[http_client]\nallow = [\"{upstream}\"]\n");
    let (_runtime, server) = in_process_with(&config(&env, "v1", &allow), "[admin]");
    let base = format!("http://{}", server.addr());
    let linked = create(
        &base,
        &format!(r#"{{"title": "linked", "link": "http://{upstream}/page"}}"#),
    );
    let elsewhere = create(
        &base,
        r#"{"title": "elsewhere", "link": "http://127.0.0.1:9/page"}"#,
    );

    let preview = |id: u64| {
        let response = agent()
            .get(&format!("{base}/notes/{id}/preview"))
            .header(REQUEST_ID_HEADER, format!("test-{id}"))
            .call()
            .unwrap();
        call(response)
    };
    let (status, generation, body) = preview(linked);
    assert_eq!((status, generation), (200, 1), "{body}");
    assert!(body.contains(r#""title":"Upstream page""#), "{body}");
    // Not on the allow-list: the client's typed error, which the plugin turns into a 502.
    let (status, _, body) = preview(elsewhere);
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("allow-list does not list 127.0.0.1:9"),
        "{body}"
    );

    assert_eq!(deploy(&server, &v2), 2);
    let (status, generation, body) = preview(linked);
    assert_eq!((status, generation), (200, 2), "{body}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the upstream saw one connection, reused across the patch"
    );
    // The request's id travelled with the call to the outside.
    assert_eq!(
        *ids.lock().unwrap(),
        [format!("test-{linked}"), format!("test-{linked}")]
    );
}

#[test]
fn a_notes_service_speaks_http_created_etags_preconditions_and_hides_internals_in_5xx() {
    let env = Env::new();
    env.complete_release("v1", &["notes-v1"]);
    let (_runtime, server) = in_process_with(&config(&env, "v1", ""), "[admin]");
    let base = format!("http://{}", server.addr());
    let id = create(&base, r#"{"title": "t", "body": "one two"}"#);
    let put = |if_match: &str, title: &str| {
        call(
            agent()
                .put(&format!("{base}/notes/{id}"))
                .header("if-match", if_match)
                .content_type("application/json")
                .send(format!(r#"{{"title": "{title}"}}"#))
                .unwrap(),
        )
    };
    assert_eq!(put("\"7\"", "stale").0, 412);
    let (status, _, body) = put("\"1\"", "fresh");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""version":2"#), "{body}");
    let (status, _, body) = get(&format!("{base}/notes?limit=1"));
    assert_eq!(status, 200);
    assert!(body.contains("fresh"), "{body}");
    assert_eq!(get(&format!("{base}/notes/abc")).0, 400);
    assert_eq!(get(&format!("{base}/notes/999")).0, 404);
    assert_eq!(get(&format!("{base}/nowhere")).0, 404);
    let deleted = agent()
        .delete(&format!("{base}/notes/{id}"))
        .call()
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    assert_eq!(get(&format!("{base}/notes/{id}")).0, 404);
}

#[test]
fn metrics_after_five_deploys_have_per_route_series_and_none_for_generations_that_are_gone() {
    let env = Env::new();
    env.complete_release("v1", &["notes-v1"]);
    let v2 = env.complete_release("v2", &["notes-v2"]);
    let v1 = env.path("releases/v1");
    let (_runtime, server) = in_process_with(&config(&env, "v1", ""), "[admin]");
    let base = format!("http://{}", server.addr());
    create(&base, r#"{"title": "t"}"#);
    for round in 0..5 {
        let release = if round % 2 == 0 { &v2 } else { &v1 };
        deploy(&server, release);
        assert_eq!(get(&format!("{base}/notes/1")).0, 200);
        assert_eq!(get(&format!("{base}/notes/1/nothing")).0, 404);
    }
    server.host().flush_unloads();
    let text = metrics_text(&server);
    let live = server.host().current();
    let release = live.release().unwrap();
    assert_eq!(release, "v2");
    // Route series are the release's: v2 went live three times, one request each time.
    assert!(
        text.contains(
            r#"graft_http_requests_total{route="/notes/{id}",method="GET",role="stable",release="v2",status="2xx"} 3"#
        ),
        "{text}"
    );
    let route_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("graft_http_requests_total"))
        .collect();
    assert!(
        route_lines
            .iter()
            .all(|l| l.contains(&format!("release=\"{release}\""))),
        "only the live release has route series: {route_lines:#?}"
    );
    let generation_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("graft_requests_total"))
        .collect();
    assert_eq!(
        generation_lines,
        [format!(
            r#"graft_requests_total{{generation="{}"}} 1"#,
            live.id()
        )],
        "{text}"
    );
}
