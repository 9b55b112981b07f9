//! Signed releases: with trusted keys, only a release signed by one of them deploys, whatever
//! the way in (deploy, upload, rollback, restart).

use std::os::unix::fs::PermissionsExt as _;

use example_types::FooOutput;
use graft::client::AdminClient;

use crate::serve::{config, graft_cli, post, spawn_graft_serve_with};
use crate::util::{library, run_graft, Env};

/// `graft keygen PATH`: the public key line it wrote.
fn keygen(env: &Env, name: &str) -> (String, String) {
    let path = env.path(name);
    let (ok, stdout, stderr) = run_graft(&["keygen", path.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("public key"), "{stdout}");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the secret key is readable by its owner only");
    let public = std::fs::read_to_string(format!("{}.pub", path.display())).unwrap();
    assert!(
        public.starts_with("ed25519:") && public.lines().count() == 1,
        "{public}"
    );
    (path.to_str().unwrap().to_owned(), public.trim().to_owned())
}

fn sign(dir: &std::path::Path, key: &str) {
    let (ok, _, stderr) = run_graft(&["sign", dir.to_str().unwrap(), "--key", key]);
    assert!(ok, "{stderr}");
}

#[test]
fn only_releases_signed_by_a_trusted_key_deploy_by_any_way_in() {
    let env = Env::new();
    let (key, public) = keygen(&env, "release-key");
    let (other, _) = keygen(&env, "other-key");
    let (again, _, stderr) = run_graft(&["keygen", &key]);
    assert!(!again && stderr.contains("never overwritten"), "{stderr}");

    let path = config(&env, &format!("trusted_keys = [{public:?}]"));
    sign(&env.path("releases/v1"), &key);
    let (server, base, admin) = spawn_graft_serve_with(&path, &[], &[]);
    let foo = |base: &str| -> String {
        serde_json::from_str::<FooOutput>(&post(&format!("{base}/foo"), r#"{"a": 1}"#).2)
            .unwrap()
            .foo
            .to_string()
    };
    assert_eq!(foo(&base), "1.0.0");

    let v2 = env.path("releases/v2");
    let deploy = |args: &[&str]| {
        graft_cli(
            &[&["deploy"], args, &[v2.to_str().unwrap()]].concat(),
            &admin,
        )
    };
    let refused = |args: &[&str], why: &str| {
        let (ok, _, stderr) = deploy(args);
        assert!(!ok, "deployed: {args:?}");
        assert!(
            stderr.contains("release rejected at signature") && stderr.contains(why),
            "{args:?}: {stderr}"
        );
    };
    // Unsigned; signed by a key not trusted; signed, then its manifest changed.
    refused(&[], "not signed");
    sign(&v2, &other);
    refused(&[], "not valid for this manifest");
    refused(&["--upload"], "not valid for this manifest");
    sign(&v2, &key);
    let manifest = v2.join("release.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("# changed after signing\n{text}")).unwrap();
    refused(&[], "not valid for this manifest");
    std::fs::write(&manifest, &text).unwrap();
    assert_eq!(foo(&base), "1.0.0", "the old release kept serving");

    // Signed: deploys, uploaded or read in place; rollback verifies the older one again.
    let (ok, stdout, stderr) = deploy(&["--upload"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("live"), "{stdout}");
    assert_eq!(foo(&base), "2.0.0");
    assert!(graft_cli(&["rollback"], &admin).0);
    assert_eq!(foo(&base), "1.0.0");
    assert!(deploy(&[]).0);

    // `graft pack --sign`: a partial release of one build, signed as it is packed.
    let frob = env.path("releases/frob-signed");
    let (ok, stdout, stderr) = run_graft(&[
        "pack",
        frob.to_str().unwrap(),
        library("frob-v2").to_str().unwrap(),
        "--sign",
        &key,
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("signed by ed25519:"), "{stdout}");
    let (ok, _, stderr) = graft_cli(&["deploy", frob.to_str().unwrap()], &admin);
    assert!(ok, "{stderr}");
    drop(server);

    // A restart verifies the recorded release again, from the signed manifests it kept.
    let (_server, base, admin) = spawn_graft_serve_with(&path, &[], &[]);
    assert_eq!(foo(&base), "2.0.0");
    let status = AdminClient::new(&admin, None).status().unwrap().host;
    assert_eq!(
        status.history.last().unwrap().name,
        None,
        "the packed release is live"
    );
}
