//! The attack run's findings, one test each: what a hostile file, client or configuration tried,
//! and what graft does now. (Signatures of zeros under a small-order key: `signature.rs` unit
//! tests, and the config test below.)

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use graft::client::AdminClient;
use graft::config::ServeConfig;
use graft_host::{DisplayChain, Step};

use crate::serve::{agent, config, in_process_with};
use crate::util::{graft_bin, library, Env};

/// Runs `graft ARGS`, calling `poll` with its pid every 2 ms while it runs; fails the test (and
/// kills it) if it has not ended within a minute, as a blocking `open` of a FIFO would never
/// end. Returns whether it succeeded, and its standard error.
fn watched_graft(args: &[&str], mut poll: impl FnMut(u32)) -> (bool, String) {
    let mut child = Command::new(graft_bin())
        .args(args)
        .env("RUST_LOG", "off")
        .env_remove("GRAFT_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reading = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        text
    });
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("graft {args:?} still running after a minute: it blocked");
        }
        poll(child.id());
        std::thread::sleep(Duration::from_millis(2));
    }
    (child.wait().unwrap().success(), reading.join().unwrap())
}

/// [`watched_graft`] with nothing to watch.
fn graft_within_a_minute(args: &[&str]) -> (bool, String) {
    watched_graft(args, |_| {})
}

fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

/// A release of `hello` whose library file is replaced by `make(path)` (a FIFO, a symlink).
fn release_with_odd_file(env: &Env, label: &str, make: impl FnOnce(&Path)) -> std::path::PathBuf {
    let dir = env.release(label, &["hello-v1"]);
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "so"))
        .unwrap();
    std::fs::remove_file(&file).unwrap();
    make(&file);
    dir
}

#[test]
fn a_fifo_or_a_device_as_a_plugin_file_or_manifest_is_refused_at_once_and_the_host_serves_on() {
    let env = Env::new();
    let host = env.host();
    host.deploy(env.complete_release("v1", &["hello-v1"]))
        .unwrap();
    let fifo = release_with_odd_file(&env, "fifo", mkfifo);
    let zero = release_with_odd_file(&env, "zero", |file| {
        std::os::unix::fs::symlink("/dev/zero", file).unwrap();
    });
    // Twenty FIFO deploys: each used to hang a deploy thread forever.
    for _ in 0..20 {
        let err = host.deploy(&fifo).unwrap_err();
        assert_eq!(err.step(), Step::Stage, "{}", DisplayChain(&err));
        assert!(DisplayChain(&err)
            .to_string()
            .contains("not a regular file (it is a FIFO)"));
    }
    let err = DisplayChain(&host.deploy(&zero).unwrap_err()).to_string();
    assert!(err.contains("it is a character device"), "{err}");

    let manifest_fifo = env.path("releases/manifest-fifo");
    std::fs::create_dir_all(&manifest_fifo).unwrap();
    mkfifo(&manifest_fifo.join("release.toml"));
    let err = DisplayChain(&host.deploy(&manifest_fifo).unwrap_err()).to_string();
    assert!(err.contains("FIFO"), "{err}");

    assert_eq!(host.pin().id(), 1);
    let hello = host.export("hello@1").unwrap();
    assert_eq!(
        host.call::<_, String>(&hello, &"ops").unwrap(),
        "hello, ops"
    );
}

#[test]
fn the_cli_refuses_fifos_devices_and_oversized_configs_without_reading_them() {
    let env = Env::new();
    let fifo = env.path("fifo");
    mkfifo(&fifo);
    let fifo = fifo.to_str().unwrap();
    let big = env.path("big.toml");
    std::fs::write(&big, format!("# {}\n", "x".repeat(2 << 20))).unwrap();
    let big = big.to_str().unwrap();
    let out = env.path("packed");
    let out = out.to_str().unwrap();
    let cases: [(&[&str], &str); 7] = [
        (&["check", "/dev/zero"], "character device"),
        (&["check", fifo], "FIFO"),
        (&["serve", "--config", "/dev/zero"], "character device"),
        (&["serve", "--config", fifo], "FIFO"),
        (
            &["serve", "--config", big],
            "larger than the limit of 1048576 bytes",
        ),
        (&["pack", out, "/dev/zero"], "character device"),
        (&["status", "--config", fifo], "FIFO"),
    ];
    for (args, says) in cases {
        let (ok, stderr) = graft_within_a_minute(args);
        assert!(!ok && stderr.contains(says), "graft {args:?}: {stderr}");
    }
}

/// The most memory `graft ARGS` was seen to hold (VmHWM, in KiB), polled while it ran.
fn peak_rss_kib(args: &[&str]) -> (bool, u64) {
    let mut peak = 0;
    let (ok, _) = watched_graft(args, |pid| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm = text
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
        peak = peak.max(hwm.unwrap_or(0));
    });
    (ok, peak)
}

#[test]
fn staging_a_large_plugin_file_streams_it_instead_of_holding_it_in_memory() {
    let env = Env::new();
    // hello-v1 with 256 MiB of zeros after its last segment (a hole: no disk until staged):
    // still a valid library, and a file that held in memory would cost 256 MiB.
    let dir = env.path("releases/big");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("libbig.so");
    std::fs::copy(library("hello-v1"), &file).unwrap();
    let padded = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    padded
        .set_len(padded.metadata().unwrap().len() + (256 << 20))
        .unwrap();
    drop(padded);
    let sha256 = graft_host::sha256_hex_of(std::fs::File::open(&file).unwrap()).unwrap();
    std::fs::write(
        dir.join("release.toml"),
        format!("[[plugin]]\nname = \"hello\"\nfile = \"libbig.so\"\nsha256 = \"{sha256}\"\n"),
    )
    .unwrap();
    let (ok, peak_kib) = peak_rss_kib(&["check", dir.to_str().unwrap()]);
    assert!(ok, "graft check of the padded release failed");
    assert!(
        peak_kib > 0 && peak_kib < 128 << 10,
        "graft check held {peak_kib} KiB staging a 256 MiB file"
    );
}

/// `text` as a TOML string.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

#[test]
fn tokens_are_refused_with_surrounding_whitespace_control_characters_or_empty_everywhere() {
    let env = Env::new();
    let path = config(&env, "");
    let text = std::fs::read_to_string(&path).unwrap();
    let cases = [
        ("", "is empty"),
        ("   ", "surrounding whitespace"),
        ("sixteen-chars-ok ", "surrounding whitespace"),
        ("sixteen-chars-ok\n", "surrounding whitespace"),
        ("sixteen chars ok!", "only visible ASCII"),
        ("sixteen-chars\u{7}-ok", "only visible ASCII"),
        (&"\u{200b}".repeat(16), "only visible ASCII"),
        ("fifteen-chars-x", "at least 16 characters; it has 15"),
    ];
    for (token, says) in cases {
        // In graft.toml, for the admin token and the rollout's force token.
        for (key, with) in [
            ("token", format!("[admin]\ntoken = {}", toml_string(token))),
            (
                "force_token",
                format!("[rollout]\nforce_token = {}\n[admin]", toml_string(token)),
            ),
        ] {
            let with = text.replace("[admin]", &with);
            std::fs::write(&path, with).unwrap();
            let err = ServeConfig::load(&path).unwrap_err().to_string();
            assert!(err.contains(says), "{key} = {token:?}: {err}");
        }
        // And from the environment, for the server and the CLI alike.
        std::fs::write(&path, &text).unwrap();
        for args in [
            &["serve", "--config", path.to_str().unwrap()][..],
            &["status", "--admin", "http://127.0.0.1:9"][..],
        ] {
            let out = Command::new(graft_bin())
                .args(args)
                .env("GRAFT_ADMIN_TOKEN", token)
                .env("RUST_LOG", "off")
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && stderr.contains(says),
                "GRAFT_ADMIN_TOKEN={token:?} graft {args:?}: {stderr}"
            );
        }
    }
}

#[test]
fn idle_or_unauthenticated_connections_cannot_lock_operators_out_of_the_admin_plane() {
    let env = Env::new();
    let path = config(&env, "header_read_timeout_ms = 600000");
    let token = "operators-only-token";
    let (_runtime, server) = in_process_with(&path, &format!("[admin]\ntoken = {token:?}"));
    let admin = server.admin_addr();
    // Far more idle connections than the admin plane's cap (64), none sending a byte, and
    // held for longer than the test: the header-read timeout (10 min) never closes them.
    let idle: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(admin).unwrap())
        .collect();
    let client = AdminClient::new(&format!("http://{admin}"), Some(token.into()));
    assert_eq!(client.status().unwrap().host.current, 1);
    drop(idle);

    // A request without the token is answered 401 and its connection closed.
    let mut stream = TcpStream::connect(admin).unwrap();
    stream
        .write_all(b"GET /status HTTP/1.1\r\nhost: graft\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
}

/// `POST /deploy` as the client sends it; returns the status and the body.
fn deploy_raw(url: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let mut response = agent()
        .post(url)
        .header("content-type", content_type)
        .send(body)
        .unwrap();
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

#[test]
fn the_deploy_api_refuses_positional_arrays_stray_queries_and_unknown_content_types() {
    let env = Env::new();
    let path = config(&env, "");
    let (_runtime, server) = in_process_with(&path, "[admin]");
    let admin = format!("http://{}", server.admin_addr());
    let client = AdminClient::new(&admin, None);
    let v2 = env.path("releases/v2");
    let v2 = v2.to_str().unwrap();
    let deploy = format!("{admin}/deploy");

    let array = format!("[{v2:?}, true]");
    let (status, body) = deploy_raw(&deploy, "application/json", array.as_bytes());
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not a JSON object"), "{body}");
    let plain = format!("{{\"dir\": {v2:?}}}");
    let (status, body) = deploy_raw(
        &format!("{deploy}?canary=5"),
        "application/json",
        plain.as_bytes(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not the query"), "{body}");
    let (status, body) = deploy_raw(&deploy, "text/plain", plain.as_bytes());
    assert_eq!(status, 415, "{body}");
    assert_eq!(client.status().unwrap().host.current, 1, "nothing deployed");

    // Media types are case-insensitive, parameters ignored.
    let (status, body) = deploy_raw(&deploy, "Application/JSON; charset=utf-8", plain.as_bytes());
    assert_eq!(status, 200, "{body}");
    let bundle = graft::bundle::pack(&env.path("releases/v1")).unwrap();
    let (status, body) = deploy_raw(&deploy, "APPLICATION/X-TAR", &bundle);
    assert_eq!(status, 200, "{body}");
    assert_eq!(client.status().unwrap().host.current, 3);
}

#[test]
fn limits_of_zero_long_release_names_weak_keys_and_exhausted_generation_ids_are_refused() {
    let env = Env::new();
    let path = config(&env, "");
    let text = std::fs::read_to_string(&path).unwrap();
    let cases = [
        (
            "max_in_flight = 0",
            "max_in_flight = 0 would answer every request 503",
        ),
        (
            "timeout_ms = 0",
            "timeout_ms = 0 would answer every request 503",
        ),
    ];
    for (line, says) in cases {
        let route = "path = \"/foo\"\nexport = \"foo@1\"";
        std::fs::write(&path, text.replace(route, &format!("{route}\n{line}"))).unwrap();
        let err = ServeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains(says), "{line}: {err}");
    }
    let weak = format!("trusted_keys = [\"ed25519:{}\"]\n[admin]", "0".repeat(64));
    std::fs::write(&path, text.replace("[admin]", &weak)).unwrap();
    let err = DisplayChain(&ServeConfig::load(&path).unwrap_err()).to_string();
    assert!(err.contains("weak ed25519 key"), "{err}");

    let host = env.host();
    host.deploy(env.path("releases/v1")).unwrap();
    let long = env.path("releases/long");
    std::fs::create_dir_all(&long).unwrap();
    std::fs::write(
        long.join("release.toml"),
        format!(
            "name = \"{}\"\nremove = [\"misbehaving\"]\n",
            "n".repeat(100_000)
        ),
    )
    .unwrap();
    let err = host.deploy(&long).unwrap_err();
    let message = DisplayChain(&err).to_string();
    assert_eq!(err.step(), Step::Manifest, "{message}");
    assert!(
        message.contains("has 100000 bytes; use 1 to 128"),
        "{message}"
    );
    assert!(
        message.len() < 2048,
        "quoted briefly: {} bytes",
        message.len()
    );

    // Ids are reserved in the data directory: one tampered with to the last id there is.
    drop(host);
    std::fs::write(
        env.path("data/generations"),
        format!("{}\n", (1_u64 << 53) - 1),
    )
    .unwrap();
    let host = env.host();
    let last = host.deploy(env.path("releases/v2")).unwrap().generation;
    assert_eq!(last, (1 << 53) - 1);
    let err = host.deploy(env.path("releases/v1")).unwrap_err();
    assert!(DisplayChain(&err)
        .to_string()
        .contains("generation ids are used up"));
    assert_eq!(host.pin().id(), last, "the last generation serves on");
}
