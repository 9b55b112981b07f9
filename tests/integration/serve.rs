//! `graft serve`: routes, errors as 500s, the admin API, the CLI, uploads; the helpers that
//! run it (stopping and restarting it are in `lifecycle.rs`).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use example_types::FooOutput;
use graft::api::DeployRequest;
use graft::client::{AdminClient, ClientError};
use graft::config::ServeConfig;
use graft::serve::{Server, GENERATION_HEADER};

use crate::util::{graft_bin, run_graft, wait_until, Env, KillOnDrop, V1, V2};

/// Writes `graft.toml` serving foo and the misbehaving plugin on ephemeral loopback ports.
pub(crate) fn config(env: &Env, extra: &str) -> PathBuf {
    config_with_plugins(env, extra, &[])
}

/// [`config`], with these crates in release v1 too (every release must serve every route, so a
/// route to their exports needs them from the start).
pub(crate) fn config_with_plugins(env: &Env, extra: &str, more: &[&str]) -> PathBuf {
    let mut v1: Vec<&str> = V1.to_vec();
    v1.push("misbehaving");
    v1.extend(more);
    env.complete_release("v1", &v1);
    env.release("v2", V2);
    let path = env.path("graft.toml");
    let text = format!(
        r#"data_dir = "data"
release = "releases/v1"
listen = "127.0.0.1:0"
drain_timeout_ms = 10000
{extra}
[admin]
listen = "127.0.0.1:0"

[[route]]
method = "POST"
path = "/foo"
export = "foo@1"

[[route]]
method = "POST"
path = "/panic"
export = "panic@1"

[[route]]
method = "GET"
path = "/echo"
export = "echo@1"

[[route]]
method = "POST"
path = "/refuse"
export = "refuse@1"

[[route]]
method = "POST"
path = "/nan"
export = "nan@1"
"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// An HTTP client that returns error statuses as answers, not as errors.
pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    )
}

/// The `/metrics` text of the admin API at `admin` (a server in a child process).
pub(crate) fn admin_metrics(admin: &str) -> String {
    agent()
        .get(format!("{admin}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// The server's `/metrics` text.
pub(crate) fn metrics_text(server: &Server) -> String {
    let mut response = agent()
        .get(&format!("http://{}/metrics", server.admin_addr()))
        .call()
        .unwrap();
    response.body_mut().read_to_string().unwrap()
}

/// Checks that the server's `/metrics` has each of these lines.
pub(crate) fn assert_metrics(server: &Server, expected: &[&str]) {
    let metrics = metrics_text(server);
    for expected in expected {
        assert!(
            metrics.contains(expected),
            "{expected:?} missing from:\n{metrics}"
        );
    }
}

/// Writes a JSON POST of `body` to `path` on a raw connection, with `headers` (each ending in
/// `\r\n`) added; the test reads the answer itself.
pub(crate) fn write_post(stream: &mut std::net::TcpStream, path: &str, body: &str, headers: &str) {
    use std::io::Write as _;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nhost: graft\r\ncontent-type: application/json\r\n{headers}\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
}

/// Sends SIGTERM to a child process.
pub(crate) fn sigterm(child: &std::process::Child) {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
}

/// POSTs JSON; returns status, generation header and body.
pub(crate) fn post(url: &str, body: &str) -> (u16, u64, String) {
    let mut response = agent()
        .post(url)
        .content_type("application/json")
        .send(body)
        .unwrap();
    let generation = response.headers()[GENERATION_HEADER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    (
        response.status().as_u16(),
        generation,
        response.body_mut().read_to_string().unwrap(),
    )
}

fn in_process(env: &Env) -> (tokio::runtime::Runtime, Server) {
    in_process_with(&config(env, ""), "[admin]")
}

/// Serves the config at `path` in this process, its `[admin]` line replaced by `admin`.
pub(crate) fn in_process_with(path: &Path, admin: &str) -> (tokio::runtime::Runtime, Server) {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, text.replace("[admin]", admin)).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime
        .block_on(Server::start(ServeConfig::load(path).unwrap()))
        .unwrap();
    (runtime, server)
}

#[test]
fn routes_call_their_exports_and_name_the_generation() {
    let env = Env::new();
    let (runtime, server) = in_process(&env);
    let base = format!("http://{}", server.addr());
    let (status, generation, body) = post(&format!("{base}/foo"), r#"{"a": 2}"#);
    assert_eq!((status, generation), (200, 1), "{body}");
    let out: FooOutput = serde_json::from_str(&body).unwrap();
    assert_eq!((out.value, out.foo.as_str()), (6, "1.0.0"));

    let mut echo = agent().get(&format!("{base}/echo")).call().unwrap();
    assert_eq!(
        echo.status().as_u16(),
        400,
        "GET sends null, which is not a string"
    );
    let _ = echo.body_mut().read_to_string();
    assert_eq!(
        agent()
            .get(&format!("{base}/nowhere"))
            .call()
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    assert!(runtime.block_on(server.shutdown()).is_clean());
}

#[test]
fn a_panicking_export_is_a_500_and_the_server_keeps_serving() {
    let env = Env::new();
    let (runtime, server) = in_process(&env);
    let base = format!("http://{}", server.addr());
    for _ in 0..3 {
        let (status, _, body) = post(&format!("{base}/panic"), r#""boom""#);
        assert_eq!(status, 500, "{body}");
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["error"], "panic");
        // A 5xx says only what a client should see: the details are in the log, under the
        // request's id.
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("the server log has the details under request id")
                && !message.contains("boom"),
            "{body}"
        );
    }
    let (status, _, body) = post(&format!("{base}/foo"), "not json");
    assert_eq!(status, 400, "{body}");
    assert_eq!(post(&format!("{base}/foo"), r#"{"a": 1}"#).0, 200);
    assert!(runtime.block_on(server.shutdown()).is_clean());
}

#[test]
fn deploy_and_rollback_through_the_admin_api() {
    let env = Env::new();
    let (runtime, server) = in_process(&env);
    let base = format!("http://{}", server.addr());
    let admin = AdminClient::new(&format!("http://{}", server.admin_addr()), None);

    let deployed = admin
        .deploy(&DeployRequest::new(env.path("releases/v2")))
        .unwrap();
    assert_eq!(deployed.report.generation, 2);
    let (_, generation, body) = post(&format!("{base}/foo"), r#"{"a": 1}"#);
    assert_eq!(
        (
            generation,
            serde_json::from_str::<FooOutput>(&body)
                .unwrap()
                .foo
                .as_str()
        ),
        (2, "2.0.0")
    );

    // A partial release that does not link is refused; v2 keeps serving.
    let bad = env.release("bad", &["frob-v1"]);
    match admin.deploy(&DeployRequest::new(bad)) {
        Err(ClientError::Api { status: 422, error }) => {
            assert_eq!(error.step.as_deref(), Some("link"));
            assert!(
                error.message.contains("plugin foo imports frob@2"),
                "{}",
                error.message
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(post(&format!("{base}/foo"), r#"{"a": 1}"#).1, 2);

    admin.rollback().unwrap();
    let (_, generation, body) = post(&format!("{base}/foo"), r#"{"a": 1}"#);
    assert_eq!(
        (
            generation,
            serde_json::from_str::<FooOutput>(&body)
                .unwrap()
                .foo
                .as_str()
        ),
        (3, "1.0.0")
    );
    let status = admin.status().unwrap().host;
    assert_eq!(status.current, 3);
    assert!(status.last_deploy.unwrap().error.is_none());

    assert_metrics(
        &server,
        &[
            "graft_requests_total{generation=\"3\"} 1",
            "graft_deploys_total{result=\"succeeded\"} 2",
            "graft_deploys_total{result=\"rejected\"} 1",
            "graft_request_duration_seconds_count{generation=\"3\"} 1",
            "graft_go_live_seconds_count 2",
            "graft_in_flight{generation=\"3\"} 0",
            "graft_libraries_mapped 4",
        ],
    );
    // Generation 2 is gone (rolled back from, drained): its series went with it.
    let metrics = metrics_text(&server);
    assert!(!metrics.contains("generation=\"2\""), "{metrics}");
    assert!(runtime.block_on(server.shutdown()).is_clean());
}

#[test]
fn a_token_protects_the_admin_api_is_required_off_loopback_and_is_never_short() {
    let env = Env::new();
    let path = config(&env, "");
    let text = std::fs::read_to_string(&path).unwrap();
    let (runtime, server) = in_process_with(&path, "[admin]\ntoken = \"s3cret-long-enough-token\"");
    let url = format!("http://{}", server.admin_addr());
    let anonymous = AdminClient::new(&url, None);
    assert!(matches!(
        anonymous.status(),
        Err(ClientError::Api { status: 401, .. })
    ));
    let authorised = AdminClient::new(&url, Some("s3cret-long-enough-token".into()));
    assert_eq!(authorised.status().unwrap().host.current, 1);
    assert!(runtime.block_on(server.shutdown()).is_clean());

    std::fs::write(
        &path,
        text.replace(
            "listen = \"127.0.0.1:0\"\n\n[[route]]",
            "listen = \"0.0.0.0:0\"\n\n[[route]]",
        ),
    )
    .unwrap();
    let err = ServeConfig::load(&path).unwrap_err().to_string();
    assert!(err.contains("not loopback: set admin.token"), "{err}");

    // A token is never short, wherever the admin API listens (the other rules: hardening.rs).
    std::fs::write(
        &path,
        text.replace("[admin]", "[admin]\ntoken = \"fifteen-chars-x\""),
    )
    .unwrap();
    let err = ServeConfig::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("must be at least 16 characters; it has 15"),
        "{err}"
    );
    std::fs::write(
        &path,
        text.replace("[admin]", "[admin]\ntoken = \"sixteen-chars-ok\""),
    )
    .unwrap();
    assert!(ServeConfig::load(&path).is_ok());
}

#[test]
fn the_cli_takes_the_admin_address_and_token_from_graft_toml() {
    let env = Env::new();
    let path = config(&env, "");
    // A fixed port, so that the file says where the admin API is.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        &format!("[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"cli-reads-this-token\""),
    );
    std::fs::write(&path, text).unwrap();
    let (_server, _, admin) = spawn_graft_serve(&path);
    assert_eq!(admin, format!("http://127.0.0.1:{port}"));

    let config = path.to_str().unwrap();
    let (ok, stdout, stderr) = run_graft(&["status", "--config", config]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("current generation 1"), "{stdout}");
    // --admin (or GRAFT_ADMIN) wins over the file; without the token the server refuses.
    let (ok, _, stderr) = run_graft(&["status", "--admin", &admin]);
    assert!(
        !ok && stderr.contains("missing or wrong bearer token"),
        "{stderr}"
    );
    let v2 = env.path("releases/v2");
    let (ok, stdout, stderr) = run_graft(&["deploy", v2.to_str().unwrap(), "--config", config]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("generation 2 live"), "{stdout}");
}

/// `graft serve` as a child process (killed when dropped); returns it and its two base URLs.
pub(crate) fn spawn_graft_serve(config: &Path) -> (KillOnDrop, String, String) {
    spawn_graft_serve_with(config, &[], &[])
}

/// `graft serve` with extra environment variables and arguments.
pub(crate) fn spawn_graft_serve_with(
    config: &Path,
    env: &[(&str, &Path)],
    args: &[&std::ffi::OsStr],
) -> (KillOnDrop, String, String) {
    let (child, base, admin, _) = spawn_graft_serve_logged(config, env, args);
    (child, base, admin)
}

/// `graft serve` whose log (warnings and above) the test can read; it is echoed to standard
/// error as well.
pub(crate) fn spawn_graft_serve_logged(
    config: &Path,
    env: &[(&str, &Path)],
    args: &[&std::ffi::OsStr],
) -> (KillOnDrop, String, String, Log) {
    let mut child = Command::new(graft_bin())
        .args(["serve", "--config"])
        .arg(config)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Log::default();
    let (lines, stderr) = (log.clone(), child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("{line}");
            lines.0.lock().unwrap().push(line);
        }
    });
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "graft: serving on http://A, admin on http://B"
    let urls: Vec<String> = line
        .split_whitespace()
        .filter(|w| w.starts_with("http://"))
        .map(|w| w.trim_end_matches(',').to_owned())
        .collect();
    assert_eq!(urls.len(), 2, "unexpected first line: {line:?}");
    (KillOnDrop(child), urls[0].clone(), urls[1].clone(), log)
}

/// A server's log lines, as they come.
#[derive(Clone, Default)]
pub(crate) struct Log(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Log {
    /// The first line containing every one of `words`, once one is logged (within 60 s).
    pub(crate) fn wait_for(&self, words: &[&str]) -> String {
        let find = || {
            self.0
                .lock()
                .unwrap()
                .iter()
                .find(|l| words.iter().all(|w| l.contains(w)))
                .cloned()
        };
        crate::util::wait_until(
            &format!("a log line with {words:?}"),
            std::time::Duration::from_secs(60),
            || find().is_some(),
        );
        find().unwrap()
    }
}

pub(crate) fn graft_cli(args: &[&str], admin: &str) -> (bool, String, String) {
    run_graft(&[args, &["--admin", admin]].concat())
}

#[test]
fn the_cli_run_where_graft_toml_is_reads_the_admin_api_from_it() {
    let env = Env::new();
    let path = config(&env, "");
    // A client reading the file must find the port there: a free one, written in.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        &format!("[admin]\nlisten = \"127.0.0.1:{port}\""),
        1,
    );
    std::fs::write(&path, text).unwrap();
    let (_child, _base, admin) = spawn_graft_serve(&path);
    assert!(admin.ends_with(&format!(":{port}")), "{admin}");

    let status_in = |dir: &Path| {
        Command::new(graft_bin())
            .args(["status", "--json"])
            .current_dir(dir)
            .env_remove("GRAFT_ADMIN")
            .env_remove("GRAFT_ADMIN_TOKEN")
            .env("RUST_LOG", "off")
            .output()
            .unwrap()
    };
    let here = status_in(path.parent().unwrap());
    let stderr = String::from_utf8_lossy(&here.stderr);
    assert!(here.status.success(), "{stderr}");
    let status: serde_json::Value = serde_json::from_slice(&here.stdout).unwrap();
    assert_eq!(status["current"], 1, "{status}");
    // Where there is none, the default address (nothing listens there in these tests).
    let elsewhere = status_in(&env.path("releases"));
    let stderr = String::from_utf8_lossy(&elsewhere.stderr);
    assert!(
        !elsewhere.status.success() && stderr.contains("127.0.0.1:9090"),
        "{stderr}"
    );
}

#[test]
fn every_series_the_grafana_dashboard_queries_is_one_graft_serve_exports() {
    let env = Env::new();
    let (_child, base, admin) = spawn_graft_serve(&config(&env, ""));
    // A deploy and a request, so that the families with labels have a series.
    let v2 = env.path("releases/v2");
    assert!(graft_cli(&["deploy", v2.to_str().unwrap()], &admin).0);
    assert_eq!(post(&format!("{base}/foo"), r#"{"a": 1}"#).1, 2);
    let metrics = admin_metrics(&admin);
    let path = crate::util::workspace_root().join("deploy/grafana/graft-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("graft_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                queried.push(name);
            }
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");
    for name in queried {
        // A counter's family is `graft_x` and its series `graft_x_total`; a histogram's series
        // are `_bucket`, `_sum` and `_count`.
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        assert!(
            metrics.contains(&format!("# TYPE {family} ")),
            "{name} (family {family}) is not in /metrics:\n{metrics}"
        );
    }
}

#[test]
fn the_cli_deploys_rolls_back_and_reports_refusals() {
    let env = Env::new();
    let (_child, base, admin) = spawn_graft_serve(&config(&env, ""));

    let v2 = env.path("releases/v2");
    let (ok, stdout, stderr) = graft_cli(&["deploy", v2.to_str().unwrap()], &admin);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("generation 2 live: release v2"), "{stdout}");

    let bad = env.release("bad", &["frob-v1"]);
    let (ok, _, stderr) = graft_cli(&["deploy", bad.to_str().unwrap()], &admin);
    assert!(!ok, "a refused deploy exits non-zero");
    assert!(
        stderr.contains("release rejected at link, plugin foo, file ")
            && stderr.contains("/staged/foo-")
            && stderr.contains("plugin foo is carried over from generation 2")
            && stderr.contains("ship a new build of it too")
            && stderr.contains("plugin foo imports frob@2"),
        "{stderr}"
    );
    assert_eq!(
        post(&format!("{base}/foo"), r#"{"a": 1}"#).1,
        2,
        "v2 still serves"
    );

    let (ok, stdout, stderr) = graft_cli(&["status"], &admin);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("current generation 2"), "{stdout}");
    assert!(
        stdout.contains("last deploy failed: release rejected at link"),
        "{stdout}"
    );

    let (ok, stdout, _) = graft_cli(&["rollback"], &admin);
    assert!(ok);
    assert!(stdout.contains("generation 3 live: release v1"), "{stdout}");
    let (ok, stdout, _) = graft_cli(&["status", "--json"], &admin);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["current"],
        3
    );
}

#[test]
fn a_dry_run_refuses_what_a_deploy_would_and_changes_nothing() {
    let env = Env::new();
    let (_child, base, admin) = spawn_graft_serve(&config(&env, ""));
    let client = AdminClient::new(&admin, None);
    let v2 = env.path("releases/v2");
    let (ok, _, stderr) = graft_cli(&["deploy", v2.to_str().unwrap()], &admin);
    assert!(ok, "{stderr}");
    let before = client.status().unwrap().host;

    // Refused against what is live (v2's foo imports frob@2), as a deploy would be, from a
    // directory and uploaded.
    let bad = env.release("bad", &["frob-v1"]);
    for upload in [&[][..], &["--upload"][..]] {
        let args = [&["deploy", "--dry-run", bad.to_str().unwrap()][..], upload].concat();
        let (ok, stdout, stderr) = graft_cli(&args, &admin);
        assert!(!ok, "{stdout}");
        assert!(
            stderr.contains("release rejected at link, plugin foo")
                && stderr.contains("plugin foo imports frob@2"),
            "{stderr}"
        );
    }
    // A release that would go live says what it would do.
    let v1 = env.path("releases/v1");
    let (ok, stdout, stderr) = graft_cli(&["deploy", "--dry-run", v1.to_str().unwrap()], &admin);
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("dry run, nothing changed: generation ")
            && stdout.contains(" would go live: release v1; foo 1.0.0 (replaced)"),
        "{stdout}"
    );

    // Nothing changed: the same generation, history and last deploy, v2 answering.
    let after = client.status().unwrap().host;
    assert_eq!(after.current, before.current);
    assert_eq!(after.history.len(), before.history.len());
    let outcome = |d: Option<graft_host::status::DeployOutcome>| d.map(|d| (d.at_ms, d.error));
    assert_eq!(outcome(after.last_deploy), outcome(before.last_deploy));
    assert_eq!(post(&format!("{base}/foo"), r#"{"a": 1}"#).1, 2);
    // And a deploy gets the refusal the dry run said.
    let (ok, _, stderr) = graft_cli(&["deploy", bad.to_str().unwrap()], &admin);
    assert!(
        !ok && stderr.contains("release rejected at link, plugin foo"),
        "{stderr}"
    );
}

#[test]
fn rollback_to_goes_back_to_any_earlier_release_and_a_live_release_deployed_again_is_unchanged() {
    let env = Env::new();
    let (_child, base, admin) = spawn_graft_serve(&config(&env, ""));
    let client = AdminClient::new(&admin, None);
    let deploy = |release: &str| {
        let dir = env.path(&format!("releases/{release}"));
        let (ok, stdout, stderr) = graft_cli(&["deploy", dir.to_str().unwrap()], &admin);
        assert!(ok, "{stderr}");
        stdout
    };
    let rollback = |to: &str| graft_cli(&["rollback", "--to", to], &admin);
    let history = || -> Vec<(u64, String)> {
        let status = client.status().unwrap().host;
        status
            .history
            .iter()
            .map(|r| (r.generation, r.name.clone().unwrap_or_default()))
            .collect()
    };

    // The live release again: nothing published, no new history entry.
    let said = deploy("v1");
    assert!(
        said.contains("generation 1 unchanged: release v1 is live already"),
        "{said}"
    );
    assert_eq!(client.status().unwrap().host.current, 1);
    deploy("v2");
    deploy("v1");
    let names = |h: Vec<(u64, String)>| h.into_iter().map(|(_, n)| n).collect::<Vec<_>>();
    let walked = history();
    assert_eq!(names(walked.clone()), ["v1", "v2", "v1"]);

    // By generation: v2 comes back, the releases after it leave the history.
    let (ok, stdout, stderr) = rollback(&walked[1].0.to_string());
    assert!(ok, "{stderr}");
    assert!(stdout.contains(" live: release v2"), "{stdout}");
    let back = history();
    assert_eq!(names(back.clone()), ["v1", "v2"]);
    assert_eq!(back[0], walked[0]);
    // Served by the generation v2 went live as again.
    assert_eq!(post(&format!("{base}/foo"), r#"{"a": 1}"#).1, back[1].0);
    // By name.
    let (ok, stdout, stderr) = rollback("v1");
    assert!(ok, "{stderr}");
    assert!(stdout.contains(" live: release v1"), "{stdout}");
    assert_eq!(names(history()), ["v1"]);
    // Nothing earlier matches: refused, listing what there is.
    for to in ["v2", "99"] {
        let (ok, _, stderr) = rollback(to);
        assert!(!ok);
        assert!(
            stderr.contains("release rejected at manifest")
                && stderr.contains("no earlier release is")
                && stderr.contains("the history holds: none"),
            "{stderr}"
        );
    }
    assert_eq!(client.status().unwrap().host.history.len(), 1);
}

#[test]
fn a_release_uploaded_as_a_bundle_is_checked_and_deployed() {
    let env = Env::new();
    let (_child, base, admin) = spawn_graft_serve(&config(&env, ""));

    // The release directory is moved away first: only the uploaded bytes can reach the server.
    let v2 = env.path("releases/v2");
    let elsewhere = env.path("operator/v2");
    std::fs::create_dir_all(elsewhere.parent().unwrap()).unwrap();
    std::fs::rename(&v2, &elsewhere).unwrap();
    let (ok, stdout, stderr) =
        graft_cli(&["deploy", "--upload", elsewhere.to_str().unwrap()], &admin);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("generation 2 live: release v2"), "{stdout}");
    let out: FooOutput =
        serde_json::from_str(&post(&format!("{base}/foo"), r#"{"a": 1}"#).2).unwrap();
    assert_eq!(out.foo, "2.0.0");

    // A bundle whose manifest checksum does not match its file is refused by the server.
    let manifest = elsewhere.join("release.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let sha = text.split("sha256 = \"").nth(1).unwrap()[..64].to_owned();
    std::fs::write(&manifest, text.replacen(&sha, &"0".repeat(64), 1)).unwrap();
    let (ok, _, stderr) = graft_cli(&["deploy", "--upload", elsewhere.to_str().unwrap()], &admin);
    assert!(!ok);
    assert!(
        stderr.contains("release rejected at checksum") && stderr.contains("sha256 mismatch"),
        "{stderr}"
    );

    // Bytes that are not a tar bundle: 400, nothing deployed.
    let mut response = agent()
        .post(&format!("{admin}/deploy"))
        .content_type("application/x-tar")
        .send(&b"not a tar archive, just text"[..])
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert!(response
        .body_mut()
        .read_to_string()
        .unwrap()
        .contains("not a readable tar bundle"));
    let status = AdminClient::new(&admin, None).status().unwrap().host;
    assert_eq!(status.current, 2);
    let uploads = env.path("data/uploads");
    let left: Vec<_> = std::fs::read_dir(&uploads)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "unpacked bundles are removed: {left:?}");
}

#[test]
fn graft_serve_watch_deploys_a_release_that_appears() {
    let env = Env::new();
    let config = config(&env, "");
    let incoming = env.path("releases/incoming");
    let (_child, base, _) =
        spawn_graft_serve_with(&config, &[], &["--watch".as_ref(), incoming.as_os_str()]);

    env.release("incoming", V2); // copies the libraries, then writes the manifest
    wait_until(
        "the watched release to go live",
        Duration::from_secs(30),
        || {
            let (status, generation, body) = post(&format!("{base}/foo"), r#"{"a": 1}"#);
            assert_eq!(status, 200, "{body}");
            generation == 2
        },
    );
    let (_, _, body) = post(&format!("{base}/foo"), r#"{"a": 1}"#);
    assert_eq!(
        serde_json::from_str::<FooOutput>(&body).unwrap().foo,
        "2.0.0"
    );
}

/// Sends a request and returns its status and body, whatever they are.
fn send(method: &str, url: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let agent = agent();
    let mut response = match method {
        "GET" => agent.get(url).call(),
        _ => agent
            .post(url)
            .header("content-type", content_type)
            .send(body),
    }
    .unwrap();
    (
        response.status().as_u16(),
        response.body_mut().read_to_string().unwrap(),
    )
}

#[test]
fn an_unknown_field_in_a_deploy_request_is_a_400_and_deploys_nothing() {
    let env = Env::new();
    let (runtime, server) = in_process(&env);
    let admin = format!("http://{}", server.admin_addr());
    let v2 = env.path("releases/v2");
    let body = format!("{{\"dir\": {:?}, \"canry\": 5}}", v2.to_str().unwrap());
    let (status, text) = send(
        "POST",
        &format!("{admin}/deploy"),
        "application/json",
        body.as_bytes(),
    );
    assert_eq!(status, 400, "{text}");
    let error: graft::api::ApiError = serde_json::from_str(&text).unwrap();
    assert_eq!(error.error, graft::api::ErrorCode::BadRequest);
    assert!(
        error.message.contains("unknown field `canry`"),
        "{}",
        error.message
    );
    let status = AdminClient::new(&admin, None).status().unwrap();
    assert_eq!(status.host.current, 1, "nothing was deployed");
    assert!(status.rollout.is_none(), "no rollout started either");

    // The same for the query of a bundle upload.
    let bundle = graft::bundle::pack(&v2).unwrap();
    let (status, text) = send(
        "POST",
        &format!("{admin}/deploy?rollout=true&canry=5"),
        "application/x-tar",
        &bundle,
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("canry"), "{text}");
    assert!(runtime.block_on(server.shutdown()).is_clean());
}

#[test]
fn admin_and_app_errors_share_one_json_shape() {
    let env = Env::new();
    let (runtime, server) = in_process_with(
        &config(&env, ""),
        "[admin]\ntoken = \"s3cret-long-enough-token\"",
    );
    let (app, admin) = (
        format!("http://{}", server.addr()),
        format!("http://{}", server.admin_addr()),
    );
    let authorised = |method: &str, path: &str, body: &str| {
        let agent = agent();
        let url = format!("{admin}{path}");
        let mut response = match method {
            "GET" => agent
                .get(&url)
                .header("authorization", "Bearer s3cret-long-enough-token")
                .call(),
            _ => agent
                .post(&url)
                .header("authorization", "Bearer s3cret-long-enough-token")
                .content_type("application/json")
                .send(body),
        }
        .unwrap();
        (
            response.status().as_u16(),
            response.body_mut().read_to_string().unwrap(),
        )
    };
    let post_app = |path: &str, body: &str| {
        send(
            "POST",
            &format!("{app}{path}"),
            "application/json",
            body.as_bytes(),
        )
    };
    let bad = env.release("bad", &["unlinked"]);
    let bad_deploy = format!("{{\"dir\": {:?}}}", bad.to_str().unwrap());
    let cases = [
        (
            "app: bad input",
            send(
                "POST",
                &format!("{app}/foo"),
                "application/json",
                b"not json",
            ),
            400,
            "bad-input",
        ),
        (
            "app: panic",
            send(
                "POST",
                &format!("{app}/panic"),
                "application/json",
                br#""boom""#,
            ),
            500,
            "panic",
        ),
        (
            "app: plugin says not found",
            post_app("/refuse", r#""not-found""#),
            404,
            "not-found",
        ),
        (
            "app: plugin says conflict",
            post_app("/refuse", r#""conflict""#),
            409,
            "conflict",
        ),
        (
            "app: plugin says invalid",
            post_app("/refuse", r#""invalid""#),
            422,
            "invalid",
        ),
        (
            "app: plugin says unavailable",
            post_app("/refuse", r#""unavailable""#),
            503,
            "unavailable",
        ),
        (
            // An import's JSON broke between two plugins: their bug, not the client's.
            "app: import decoding failed",
            post_app("/nan", r#""x""#),
            500,
            "internal",
        ),
        (
            "app: no route",
            send("GET", &format!("{app}/nowhere"), "", b""),
            404,
            "not-found",
        ),
        (
            "app: wrong method",
            send("GET", &format!("{app}/foo"), "", b""),
            405,
            "method-not-allowed",
        ),
        (
            "admin: no token",
            send("GET", &format!("{admin}/status"), "", b""),
            401,
            "unauthorized",
        ),
        (
            "admin: no route",
            authorised("GET", "/nowhere", ""),
            404,
            "not-found",
        ),
        (
            "admin: wrong method",
            authorised("GET", "/deploy", ""),
            405,
            "method-not-allowed",
        ),
        (
            "admin: not JSON",
            authorised("POST", "/deploy", "{"),
            400,
            "bad-request",
        ),
        (
            "admin: refused release",
            authorised("POST", "/deploy", &bad_deploy),
            422,
            "deploy-rejected",
        ),
        (
            "admin: no rollout",
            authorised("GET", "/rollout", ""),
            404,
            "not-found",
        ),
        (
            "admin: no rollout to abort",
            authorised("POST", "/rollout/abort", ""),
            409,
            "conflict",
        ),
        (
            "admin: unknown action",
            authorised("POST", "/rollout/explode", ""),
            404,
            "not-found",
        ),
    ];
    for (label, (status, body), expected_status, expected_code) in cases {
        assert_eq!(status, expected_status, "{label}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{label}: not JSON ({e}): {body:?}"));
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert!(
            keys.iter()
                .all(|k| ["error", "message", "step", "plugin", "file"].contains(k))
                && keys.contains(&"error")
                && keys.contains(&"message"),
            "{label}: {body}"
        );
        assert_eq!(json["error"], expected_code, "{label}: {body}");
    }
    assert!(runtime.block_on(server.shutdown()).is_clean());
}

#[test]
fn oversized_input_is_refused_with_a_short_error_and_a_short_status() {
    let env = Env::new();
    let (runtime, server) = in_process(&env);
    let admin = format!("http://{}", server.admin_addr());
    let client = AdminClient::new(&admin, None);

    // A 10 MB `dir`: refused, quoting a few hundred bytes of it.
    let huge = DeployRequest::new("x".repeat(10 << 20));
    let refused = client.deploy(&huge).unwrap_err();
    let error = refused.api().unwrap_or_else(|| panic!("{refused}"));
    assert_eq!(error.error, graft::api::ErrorCode::BadRequest);
    assert!(error.message.len() < 1024, "{} bytes", error.message.len());

    // A long path that exists nowhere reaches the host: its error is bounded too, and so is
    // the last deploy's error kept in status.
    let long = env.path(&"y".repeat(3000));
    let refused = client.deploy(&DeployRequest::new(&long)).unwrap_err();
    let message = &refused.api().unwrap().message;
    assert!(message.len() < 2048, "{} bytes: {message}", message.len());
    let last = client
        .status()
        .unwrap()
        .host
        .last_deploy
        .unwrap()
        .error
        .unwrap();
    assert!(last.len() < 2048, "{} bytes", last.len());

    // A manifest of 50,000 plugins: refused at the manifest step, nothing else is read.
    let big = env.path("releases/big");
    std::fs::create_dir_all(&big).unwrap();
    let sha = "0".repeat(64);
    let manifest: String = (0..50_000)
        .map(|i| format!("[[plugin]]\nname = \"p{i}\"\nfile = \"p{i}.so\"\nsha256 = \"{sha}\"\n"))
        .collect();
    std::fs::write(big.join("release.toml"), manifest).unwrap();
    let refused = client.deploy(&DeployRequest::new(&big)).unwrap_err();
    let error = refused.api().unwrap_or_else(|| panic!("{refused}"));
    assert_eq!(error.step.as_deref(), Some("manifest"), "{}", error.message);
    assert!(error.message.contains("larger than"), "{}", error.message);
    assert_eq!(client.status().unwrap().host.current, 1);
    assert!(runtime.block_on(server.shutdown()).is_clean());
}

#[test]
fn connections_are_served_by_the_configured_app_threads() {
    use std::io::Read as _;
    let env = Env::new();
    let path = config(&env, "app_threads = 3\npin_app_threads = false\n");
    let (runtime, server) = in_process_with(&path, "[admin]");
    let threads: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect();
    for n in 0..3 {
        let name = format!("graft-app-{n}");
        assert!(threads.contains(&name), "{name} among {threads:?}");
    }
    assert!(!threads.contains(&"graft-app-3".to_owned()), "{threads:?}");
    let admin = AdminClient::new(&format!("http://{}", server.admin_addr()), None);
    let said = admin.status().unwrap().app_threads;
    assert_eq!(
        (said.count, said.pinned_cpus),
        (3, vec![]),
        "not pinned, as configured"
    );
    // Six connections open at once: two for each app thread, each answered whole.
    let mut streams: Vec<_> = (0..6)
        .map(|_| std::net::TcpStream::connect(server.addr()).unwrap())
        .collect();
    for stream in &mut streams {
        write_post(stream, "/foo", r#"{"a": 2}"#, "connection: close\r\n");
    }
    for mut stream in streams {
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains(r#""foo":"1.0.0""#), "{answer}");
    }
    assert!(runtime.block_on(server.shutdown()).is_clean());
}
