//! Watch mode: new releases are picked up, half-written files are not, pointers are followed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use example_types::{FooInput, FooV1};
use graft::watch;
use graft_host::{release, sha256_hex, DisplayChain, Host};

use crate::util::{library, wait_until, Env};

const SETTLE: Duration = Duration::from_millis(50);

/// Writes foo, bar and frob of `version` ("v1" or "v2") into `dir` under stable file names,
/// the libraries first and the manifest last.
fn write_release(dir: &Path, version: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let mut manifest = format!("name = \"{version}\"\ncomplete = true\n");
    for plugin in ["foo", "bar", "frob"] {
        let bytes = std::fs::read(library(&format!("{plugin}-{version}"))).unwrap();
        std::fs::write(dir.join(format!("{plugin}.so")), &bytes).unwrap();
        manifest.push_str(&format!(
            "[[plugin]]\nname = \"{plugin}\"\nfile = \"{plugin}.so\"\nsha256 = \"{}\"\n",
            sha256_hex(&bytes)
        ));
    }
    std::fs::write(dir.join("release.toml.new"), manifest).unwrap();
    std::fs::rename(dir.join("release.toml.new"), dir.join(release::MANIFEST)).unwrap();
}

fn foo_version(host: &Host) -> String {
    let foo = host.typed_export::<FooV1>().unwrap();
    let input = FooInput {
        a: 1,
        ..FooInput::default()
    };
    host.call_typed(&foo, input).unwrap().foo.into_string()
}

/// Waits (at most 30 s) until the current generation is `generation`.
fn wait_for_generation(host: &Host, generation: u64) {
    wait_until(
        &format!("generation {generation} to go live"),
        Duration::from_secs(30),
        || host.pin().id() == generation,
    );
}

/// Watches `path`, deploying what appears there to `host`.
fn watch_into(host: &Arc<Host>, path: std::path::PathBuf) -> watch::Watch {
    let host = Arc::clone(host);
    watch::watch(path, SETTLE, move |dir| {
        host.deploy(dir).map_err(|e| DisplayChain(&e).to_string())
    })
    .unwrap()
}

/// A host serving v1 from `watched/live`, and a watch on that directory.
fn watching_v1(env: &Env) -> (Arc<Host>, std::path::PathBuf, watch::Watch) {
    let host = Arc::new(env.host());
    let live = env.path("watched/live");
    write_release(&live, "v1");
    host.deploy(&live).unwrap();
    let watch = watch_into(&host, live.clone());
    (host, live, watch)
}

#[test]
fn a_new_release_in_the_watched_directory_goes_live() {
    let env = Env::new();
    let (host, live, _watch) = watching_v1(&env);

    write_release(&live, "v2");
    wait_for_generation(&host, 2);
    assert_eq!(foo_version(&host), "2.0.0");
}

#[test]
fn a_half_written_library_is_not_loaded_until_it_is_complete() {
    let env = Env::new();
    let (host, live, _watch) = watching_v1(&env);

    // The manifest already names the v2 build of frob, whose file is only half there.
    let frob = std::fs::read(library("frob-v2")).unwrap();
    let text = std::fs::read_to_string(live.join("release.toml")).unwrap();
    let old_sha = text.split("sha256 = \"").nth(3).unwrap()[..64].to_owned();
    std::fs::write(live.join("frob.so"), &frob[..frob.len() / 2]).unwrap();
    std::fs::write(
        live.join("release.toml"),
        text.replace(&old_sha, &sha256_hex(&frob)),
    )
    .unwrap();
    std::thread::sleep(SETTLE * 10);
    assert_eq!(
        host.pin().id(),
        1,
        "nothing deployed while frob.so is incomplete"
    );

    // Completing the file completes the release, which is then refused at link (foo v1 imports
    // frob@1, frob v2 exports frob@2): the watcher loaded it only once it was whole.
    std::fs::write(live.join("frob.so"), &frob).unwrap();
    wait_until(
        "the complete release to be tried",
        Duration::from_secs(30),
        || host.status().last_deploy.is_some_and(|d| d.error.is_some()),
    );
    let error = host.status().last_deploy.unwrap().error.unwrap();
    assert!(error.contains("plugin foo imports frob@1"), "{error}");
    assert_eq!(host.pin().id(), 1);
}

#[test]
fn a_data_symlink_swap_and_an_ln_sfn_pointer_are_followed() {
    let env = Env::new();
    let host = Arc::new(env.host());

    // Kubernetes-style volume: timestamped directories, `..data` pointing at one, and the
    // visible names symlinked through `..data`.
    let volume = env.path("volume");
    write_release(&volume.join("..2026_11_22_a"), "v1");
    std::os::unix::fs::symlink("..2026_11_22_a", volume.join("..data")).unwrap();
    for name in ["release.toml", "foo.so", "bar.so", "frob.so"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), volume.join(name)).unwrap();
    }
    host.deploy(&volume).unwrap();
    let _watch = watch_into(&host, volume.clone());

    write_release(&volume.join("..2026_11_22_b"), "v2");
    std::os::unix::fs::symlink("..2026_11_22_b", volume.join("..data_tmp")).unwrap();
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).unwrap();
    wait_for_generation(&host, 2);
    assert_eq!(foo_version(&host), "2.0.0");

    // A `current` pointer switched with ln -sfn.
    let releases = env.path("pointer");
    write_release(&releases.join("r1"), "v1");
    write_release(&releases.join("r2"), "v2");
    std::os::unix::fs::symlink("r2", releases.join("current")).unwrap();
    let _pointer = watch_into(&host, releases.join("current"));
    let status = std::process::Command::new("ln")
        .args(["-sfn", "r1"])
        .arg(releases.join("current"))
        .status()
        .unwrap();
    assert!(status.success());
    wait_for_generation(&host, 3);
    assert_eq!(foo_version(&host), "1.0.0");
}
