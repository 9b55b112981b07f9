//! `graft fleet rollout`: three `graft serve` hosts, each with its own data and release
//! directories; the release is uploaded to each. The third host's canary fails, so the rollout
//! stops at its wave and the hosts already updated go back to their previous release.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use graft::client::AdminClient;
use graft_host::status::GenerationRole;

use crate::serve::spawn_graft_serve_with;
use crate::util::{run_graft, Env};

/// Writes host `n`'s config and its own stable release.
fn host_config(env: &Env, n: usize) -> std::path::PathBuf {
    env.complete_release(&format!("host{n}-v1"), &["hello-v1"]);
    let path = env.path(&format!("host{n}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"data_dir = "host{n}-data"
release = "releases/host{n}-v1"
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[rollout]
plan = "50:300ms,100:300ms"
min_requests = 20
interval_ms = 50
# Latency is not what this test is about: a loaded test machine makes it noisy.
p99_slack_ms = 60000

[[route]]
method = "POST"
path = "/hello"
export = "hello@1"
"#
        ),
    )
    .unwrap();
    path
}

/// Keeps requests flowing to `url` until `stop`: each host's analysis needs traffic.
fn traffic(url: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let agent = crate::serve::agent();
        while !stop.load(Ordering::Relaxed) {
            let _ = agent
                .post(&url)
                .content_type("application/json")
                .send(r#""fleet""#);
        }
    })
}

#[test]
fn a_failing_canary_on_one_host_stops_the_fleet_and_rolls_back_the_updated_hosts() {
    let env = Env::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut hosts = Vec::new();
    for n in 1..=3 {
        // The release fails one call in HELLO_FAIL_EVERY: never on hosts 1 and 2, 20% on 3.
        let fail_every = if n == 3 { "5" } else { "0" };
        let (child, base, admin) = spawn_graft_serve_with(
            &host_config(&env, n),
            &[("HELLO_FAIL_EVERY", fail_every.as_ref())],
            &[],
        );
        let load = traffic(format!("{base}/hello"), Arc::clone(&stop));
        hosts.push((child, admin, load));
    }
    let hosts_file = env.path("hosts.toml");
    let entries: String = hosts
        .iter()
        .enumerate()
        .map(|(i, (_, admin, _))| {
            format!("[[host]]\nname = \"h{}\"\nadmin = \"{admin}\"\n\n", i + 1)
        })
        .collect();
    std::fs::write(&hosts_file, entries).unwrap();
    // The operator's copy of the release: no host reads it, each gets it uploaded.
    let release = env.complete_release("operator-flaky", &["hello-flaky"]);

    let (ok, stdout, stderr) = run_graft(&[
        "fleet".as_ref(),
        "rollout".as_ref(),
        "--hosts".as_ref(),
        hosts_file.as_os_str(),
        release.as_os_str(),
    ]);
    assert!(!ok, "the fleet rollout must fail: {stdout}");
    assert!(stderr.contains("the fleet rollout failed"), "{stderr}");
    assert!(
        stdout.contains("wave 1/2: h1") && stdout.contains("wave 2/2: h2, h3"),
        "{stdout}"
    );
    let line = |host: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{host} ")))
            .unwrap_or_else(|| panic!("no summary line for {host}: {stdout}"))
            .to_owned()
    };
    assert!(line("h1").contains("rolled back"), "{stdout}");
    assert!(
        line("h3").contains("aborted") && line("h3").contains("error rate"),
        "{stdout}"
    );
    assert!(
        line("h2").contains("aborted") || line("h2").contains("rolled back"),
        "{stdout}"
    );
    assert!(
        stdout.contains("fleet rollout failed at wave 2"),
        "{stdout}"
    );

    // Every host is back on its own stable release, with no canary.
    for (n, (_, admin, _)) in hosts.iter().enumerate() {
        let status = AdminClient::new(admin, None).status().unwrap();
        let rollout = status.rollout.as_ref().expect("each host ran a rollout");
        assert!(!rollout.state.is_under_way(), "{status}");
        let current = status
            .host
            .generations
            .iter()
            .find(|g| g.role == GenerationRole::Current)
            .unwrap();
        let release = format!("host{}-v1", n + 1);
        assert_eq!(current.release.as_deref(), Some(&*release), "{status}");
        assert_eq!(current.plugins[0].version, "1.0.0", "{status}");
    }

    stop.store(true, Ordering::Relaxed);
    for (child, _, load) in hosts {
        load.join().unwrap();
        drop(child);
    }
}

#[test]
fn a_fleet_rollout_past_its_timeout_stops_and_aborts_the_wave_under_way() {
    let env = Env::new();
    // No traffic: the canary never has the requests a verdict needs, and would wait forever.
    let (_child, _base, admin) = spawn_graft_serve_with(&host_config(&env, 1), &[], &[]);
    let hosts_file = env.path("hosts.toml");
    std::fs::write(
        &hosts_file,
        format!("[[host]]\nname = \"h1\"\nadmin = \"{admin}\"\n"),
    )
    .unwrap();
    let release = env.complete_release("v2", &["hello-v2"]);
    let started = std::time::Instant::now();
    let (ok, stdout, stderr) = run_graft(&[
        "fleet".as_ref(),
        "rollout".as_ref(),
        "--hosts".as_ref(),
        hosts_file.as_os_str(),
        "--timeout".as_ref(),
        "2".as_ref(),
        release.as_os_str(),
    ]);
    assert!(!ok, "{stdout}");
    assert!(
        stdout.contains("wave 1 did not finish within the fleet's timeout (2 s)"),
        "{stdout}{stderr}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "it stopped at its timeout"
    );
    let status = AdminClient::new(&admin, None).status().unwrap();
    let rollout = status.rollout.expect("the host ran a rollout");
    assert_eq!(
        rollout.state,
        graft::rollout::RolloutState::Aborted,
        "{}",
        rollout.last_message()
    );
}
