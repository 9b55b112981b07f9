//! Routes are checked, never trusted: a route to an export a release does not provide refuses
//! that release at link naming the route (at start too, so a mistyped export stops the start),
//! and bad route syntax or two routes for one method and path are configuration errors (exit
//! 1), never a panic.

use std::process::Command;

use crate::serve::{config, graft_cli, post, spawn_graft_serve};
use crate::util::{graft_bin, Env};

/// `graft.toml` of the standard test config with `route` appended.
fn config_with_route(env: &Env, route: &str) -> std::path::PathBuf {
    let path = config(env, "");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(route);
    std::fs::write(&path, text).unwrap();
    path
}

/// `graft serve` that must refuse to start: its exit code and standard error.
fn refused(path: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(graft_bin())
        .args(["serve", "--config"])
        .arg(path)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_route_to_an_export_the_release_lacks_refuses_it_at_link_naming_the_route() {
    // At start: a mistyped export.
    let env = Env::new();
    let path = config_with_route(
        &env,
        "\n[[route]]\nmethod = \"POST\"\npath = \"/typo\"\nexport = \"fooo@1\"\n",
    );
    let (code, stderr) = refused(&path);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("rejected at link")
            && stderr.contains(
                "route POST /typo calls fooo@1, which no plugin of the new generation exports"
            ),
        "{stderr}"
    );

    // At deploy: a release that removes the plugin a route calls; the old release serves on.
    let env = Env::new();
    let (_server, base, admin) = spawn_graft_serve(&config(&env, ""));
    let without = env.release("without-misbehaving", &[]);
    let manifest = without.join(graft_host::release::MANIFEST);
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("remove = [\"misbehaving\"]\n{text}")).unwrap();
    let (ok, _, stderr) = graft_cli(&["deploy", without.to_str().unwrap()], &admin);
    assert!(!ok);
    assert!(
        stderr.contains(
            "route POST /panic calls panic@1, which no plugin of the new generation exports"
        ) && stderr.contains("route GET /echo calls echo@1"),
        "every route it lacks is named: {stderr}"
    );
    assert_eq!(post(&format!("{base}/foo"), r#"{"a": 1}"#).0, 200);
}

#[test]
fn bad_route_syntax_and_duplicate_routes_are_configuration_errors_not_panics() {
    for (route, says) in [
        ("path = \"/:id\"", "a capture is written {name}"),
        ("path = \"/{a}{b}\"", "route path \"/{a}{b}\""),
        ("path = \"/{\"", "route path \"/{\""),
        ("path = \"/foo\"", "two routes for POST \"/foo\""),
        ("path = \"no-slash\"", "must start with /"),
    ] {
        let env = Env::new();
        let path = config_with_route(
            &env,
            &format!("\n[[route]]\nmethod = \"POST\"\n{route}\nexport = \"foo@1\"\n"),
        );
        let (code, stderr) = refused(&path);
        assert_eq!(code, Some(1), "{route}: {stderr}");
        assert!(stderr.contains(says), "{route}: {stderr}");
        assert!(!stderr.contains("panicked"), "{route}: {stderr}");
    }
}
