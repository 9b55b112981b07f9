//! Property tests of what graft-host parses from outside: release manifests, ELF files and the
//! record of live releases. Arbitrary and mutated inputs never panic, always give a short
//! error, and never name or write a path outside their directory.
//!
//! 64 cases per property unless `PROPTEST_CASES` says otherwise.

use std::path::{Component, Path};

use graft_host::release::{Limits, Manifest};
use proptest::prelude::*;

/// The most bytes an error message may have: errors quote only a bounded slice of their input.
const MAX_ERROR: usize = 4096;

fn config() -> ProptestConfig {
    let mut config = ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 64;
    }
    config
}

const VALID_MANIFEST: &str = r#"name = "v2"
complete = false
remove = ["frob-shim"]

[[plugin]]
name = "frob"
file = "lib/libfrob_v2.so"
sha256 = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"

[[plugin]]
name = "bar"
file = "libbar_v2.so"
sha256 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
"#;

/// `valid` with each `(position, byte)` written over it, and cut at `cut` (a share of its
/// length, in 1/256ths; 256 keeps it whole).
fn mutate(valid: &[u8], edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    for &(at, byte) in edits {
        let at = at % bytes.len();
        bytes[at] = byte;
    }
    bytes.truncate(bytes.len() * cut.min(256) / 256);
    bytes
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8)>> {
    prop::collection::vec((any::<usize>(), any::<u8>()), 0..8)
}

fn stays_inside(path: &Path) -> bool {
    !path.as_os_str().is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)))
}

fn check_manifest(bytes: &[u8]) {
    let limits = Limits::default();
    match Manifest::read_within(bytes, Path::new("release.toml"), &limits) {
        Ok(manifest) => {
            for plugin in &manifest.plugins {
                assert!(
                    stays_inside(&plugin.file),
                    "a manifest names a file outside its directory: {:?}",
                    plugin.file
                );
            }
        }
        Err(error) => {
            let message = graft_host::DisplayChain(&error).to_string();
            assert!(
                !message.is_empty() && message.len() <= MAX_ERROR,
                "{message}"
            );
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_as_a_manifest(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        check_manifest(&bytes);
    }

    #[test]
    fn a_mutated_manifest(edits in edits(), cut in 0usize..300) {
        check_manifest(&mutate(VALID_MANIFEST.as_bytes(), &edits, cut));
    }

    #[test]
    fn a_manifest_with_hostile_paths(file in prop::sample::select(vec![
        "../x.so", "/etc/passwd", "a/../../b.so", "", ".", "a/./b.so", "a//b.so", "x.so\0y",
        "\u{202e}os.x", "a\\..\\b.so", "~/x.so",
    ]), name in prop::sample::select(vec!["frob", "", "../x", "a b", "é"])) {
        let text = format!(
            "[[plugin]]\nname = {name:?}\nfile = {file:?}\nsha256 = \"{}\"\n",
            "0".repeat(64)
        );
        check_manifest(text.as_bytes());
    }

    #[test]
    fn a_mutated_shared_library(edits in prop::collection::vec((0usize..8192, any::<u8>()), 1..8), cut in 0usize..300) {
        let bytes = mutate(libc(), &edits, cut);
        if let Err(error) = graft_host::elf::check(&bytes) {
            let message = graft_host::DisplayChain(&error).to_string();
            prop_assert!(!message.is_empty() && message.len() <= MAX_ERROR, "{}", message);
        }
    }

    #[test]
    fn any_bytes_as_a_shared_library(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        prop_assert!(graft_host::elf::check(&bytes).is_err());
    }

    #[test]
    fn a_mutated_release_record(edits in edits(), cut in 0usize..300) {
        check_record(&mutate(valid_record().as_bytes(), &edits, cut));
    }

    #[test]
    fn any_bytes_as_a_release_record(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        check_record(&bytes);
    }
}

/// The bytes of the libc this process runs on: a real shared library, always there.
fn libc() -> &'static [u8] {
    static LIBC: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    LIBC.get_or_init(|| {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let path = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.contains("libc.so"))
            .expect("libc is mapped")
            .to_owned();
        std::fs::read(path).unwrap()
    })
}

fn valid_record() -> String {
    r#"[{"generation":7,"name":"v2","plugins":[{"name":"frob","version":"2.0.0","sha256":"0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0","staged":"staged/frob-0f1e2d3c4b5a6978.so","source":"/releases/v2/libfrob_v2.so"}]}]"#
        .to_owned()
}

/// A host on a data directory holding `bytes` as its record restores, or refuses with a short
/// error, writing nothing outside its data directory.
fn check_record(bytes: &[u8]) {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join(graft_host::RECORD), bytes).unwrap();
    let host = graft_host::Host::builder(&data).build().unwrap();
    match host.restore() {
        Ok(None) => {}
        Ok(Some(report)) => panic!("a record of missing files restored: {report:?}"),
        Err(error) => {
            let message = graft_host::DisplayChain(&error).to_string();
            assert!(message.len() <= MAX_ERROR, "{message}");
        }
    }
    drop(host);
    let outside: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|name| name != "data")
        .collect();
    assert!(
        outside.is_empty(),
        "written outside the data directory: {outside:?}"
    );
}
