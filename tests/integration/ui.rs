//! The admin dashboard (`/ui`) in headless Chromium: signed in with the admin token, it renders
//! the live generations, libraries and history, and a rollout under way with its chart; a
//! screenshot is written to `target/graft-ui.png`.
//!
//! Chromium is Debian's (`/usr/bin/chromium`, or `GRAFT_CHROMIUM`); `.ci/install-chromium`
//! installs it where it is missing (`.ci/run` runs it first; this test does too).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use graft::api::{DeployRequest, RolloutOptions};
use graft::client::AdminClient;

use crate::rollout::{hello_config, post_hello};
use crate::util::{target_dir, wait_until, workspace_root, Env};

const TOKEN: &str = "a-token-for-the-dashboard";

/// The browser, installed if missing.
fn chromium() -> PathBuf {
    let out = Command::new("bash")
        .arg(workspace_root().join(".ci/install-chromium"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "no Chromium for the dashboard test: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Headless Chromium at `url`, with the flags it needs on a machine without network or display,
/// plus `args`; waits until the page has had `budget` of (virtual) time to fetch and render.
fn headless(chromium: &Path, profile: &Path, url: &str, args: &[&str]) -> String {
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_dashboard_renders_the_live_server_and_a_rollout_chart_in_headless_chromium() {
    let chromium = chromium();
    let env = Env::new();
    let config = hello_config(&env, "");
    let token_env = [("GRAFT_ADMIN_TOKEN", Path::new(TOKEN))];
    let (_child, base, admin) = crate::serve::spawn_graft_serve_with(&config, &token_env, &[]);
    let client = AdminClient::new(&admin, Some(TOKEN.into()));

    // A canary at 50%, traffic on both sides, a few analysis intervals of it.
    let v2 = env.complete_release("v2", &["hello-v2"]);
    let mut options = RolloutOptions::default();
    options.canary = Some(50);
    client
        .deploy(&DeployRequest::new(&v2).with_rollout(options))
        .unwrap();
    let url = format!("{base}/hello");
    wait_until(
        "samples with requests on both sides",
        Duration::from_secs(30),
        || {
            for _ in 0..20 {
                post_hello(&url, &[]);
            }
            let rollout = client.rollout().unwrap();
            rollout
                .samples
                .iter()
                .filter(|s| s.canary.requests > 0 && s.stable.requests > 0)
                .count()
                >= 3
        },
    );

    let profile = env.path("chromium-profile");
    // Without the token: the sign-in page, no data.
    let dom = headless(&chromium, &profile, &format!("{admin}/ui"), &["--dump-dom"]);
    assert!(dom.contains("needs its token"), "{dom}");
    assert!(!dom.contains("id=\"generations\""), "{dom}");

    // With it, once: the cookie is set, the token leaves the address, the page renders.
    let signed_in = format!("{admin}/ui?token={TOKEN}");
    let dom = headless(&chromium, &profile, &signed_in, &["--dump-dom"]);
    assert!(dom.contains(r#"<b id="current">1</b>"#), "{dom}");
    assert!(dom.contains("(v1)"), "the live release: {dom}");
    assert!(
        dom.contains("canary generation 2 takes 50% beside stable generation 1"),
        "{dom}"
    );
    for series in ["stable", "canary", "weight"] {
        let tag = format!(r#"data-series="{series}""#);
        assert_eq!(
            dom.matches(&tag).count(),
            2,
            "{series}: one line in each chart: {dom}"
        );
    }
    // The canary's line has a point per sample with requests: at least three.
    let canary_points = dom
        .split(r#"<polyline points=""#)
        .skip(1)
        .find(|p| p.contains(r#"data-series="canary""#))
        .and_then(|p| p.split('"').next())
        .unwrap_or_default()
        .split_whitespace()
        .count();
    assert!(canary_points >= 3, "{canary_points} points: {dom}");
    // Generations, libraries and history are the server's.
    assert!(
        dom.contains(r#"<span class="pill prepared">prepared</span>"#),
        "{dom}"
    );
    assert!(dom.contains("hello 1.0.0"), "{dom}");
    assert!(
        dom.contains(">roll back to<") || dom.contains(">live<"),
        "{dom}"
    );
    assert!(
        dom.contains(">started<"),
        "the rollout's first event: {dom}"
    );

    let screenshot = target_dir().join("graft-ui.png");
    let _ = std::fs::remove_file(&screenshot);
    let shot = format!("--screenshot={}", screenshot.display());
    headless(
        &chromium,
        &profile,
        &signed_in,
        &[&shot, "--window-size=1400,1100"],
    );
    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{}",
        png.len()
    );
    eprintln!("dashboard screenshot: {}", screenshot.display());
}
