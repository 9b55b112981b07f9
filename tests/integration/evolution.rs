//! The evolution promise of the plugin API ("Evolving the API" in graft-api's docs), in both
//! directions it makes: a plugin built against an older minor version runs on a newer host
//! (fields appended since read as absent), and a plugin built against a newer minor version is
//! refused cleanly by the API-version gate, before abi_stable's layout check.

use graft_host::DisplayChain;

use crate::util::{bad_releases, cargo_build, library, target_dir, workspace_root, Env};

#[test]
fn an_older_plugin_runs_on_a_newer_host_and_its_missing_fields_read_as_none() {
    let env = Env::new();
    let release = env.complete_release("hello", &["hello-v1"]);
    // graft-host built with graft-api's `next-api` feature: one minor version ahead.
    let manifest = workspace_root().join("tests/next-host/Cargo.toml");
    let target = target_dir();
    let built = cargo_build(&[
        "--manifest-path",
        manifest.to_str().unwrap(),
        "--target-dir",
        target.to_str().unwrap(),
    ]);
    let next_host = &built
        .iter()
        .find(|(name, _)| name == "next-host")
        .expect("next-host built")
        .1;
    let out = std::process::Command::new(next_host)
        .arg(&release)
        .arg(env.path("data"))
        .arg(library("hello-v1"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    let (major, minor) = api_version(graft_host::API_VERSION);
    assert_eq!(
        stdout.trim(),
        format!(
            "host_api={major}.{}.0 plugin_api={major}.{minor}.0 ping=42 next_api_field=None",
            minor + 1
        )
    );
}

#[test]
fn a_newer_minor_plugin_is_refused_by_the_gate_and_the_host_keeps_serving() {
    let env = Env::new();
    let host = env.host();
    host.deploy(env.complete_release("hello", &["hello-v1"]))
        .unwrap();
    let newer = bad_releases(&env)
        .into_iter()
        .find(|c| c.label == "newer graft API")
        .unwrap();
    let err = host.deploy(&newer.dir).unwrap_err();
    let (major, minor) = api_version(graft_host::API_VERSION);
    assert_eq!(err.step(), graft_host::Step::Check);
    assert!(
        DisplayChain(&err).to_string().contains(&format!(
            "built against graft API {major}.{}.0, this host speaks {major}.{minor}.0",
            minor + 1
        )),
        "{}",
        DisplayChain(&err)
    );
    let hello = host.export("hello@1").unwrap();
    assert_eq!(
        host.call::<_, String>(&hello, &"ops").unwrap(),
        "hello, ops"
    );
}

fn api_version(version: &str) -> (u64, u64) {
    let mut parts = version.split('.').map(|n| n.parse().unwrap());
    (parts.next().unwrap(), parts.next().unwrap())
}
