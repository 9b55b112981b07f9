//! Shared helpers: the example plugins (built once per test process), a temp dir per test,
//! release directories, and the catalogue of bad releases.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cargo_metadata::Message;
use example_types::{FooInput, FooOutput, FooV1};
use graft_host::{release, Host, Step, UnloadPolicy};

/// Every example plugin crate, with the plugin name it declares.
const PLUGINS: &[(&str, &str)] = &[
    ("hello-v1", "hello"),
    ("hello-v2", "hello"),
    ("hello-flaky", "hello"),
    ("crashy", "hello"),
    ("foo-v1", "foo"),
    ("foo-v2", "foo"),
    ("bar-v1", "bar"),
    ("bar-v2", "bar"),
    ("frob-v1", "frob"),
    ("frob-v2", "frob"),
    ("frob-shim", "frob-shim"),
    ("misbehaving", "misbehaving"),
    ("panic-init", "panic-init"),
    ("unlinked", "unlinked"),
    ("not-a-plugin", "not-a-plugin"),
    ("pins-itself", "pins-itself"),
    ("slow-init", "slow-init"),
    ("slow-hooks", "slow-hooks"),
    ("sleepy", "sleepy"),
    ("frob-mistyped", "frob"),
    ("frob-stale", "frob"),
    ("newer-api", "newer-api"),
    ("abort-build", "abort-build"),
    ("counter-v1", "counter"),
    ("counter-v2", "counter"),
    ("counter-faulty", "counter"),
    ("counter-veto", "counter"),
    ("counter-held", "counter"),
    ("counter-renamed", "counter"),
    ("counter-mistyped", "counter"),
    ("kv-v1", "kv"),
    ("kv-v2", "kv"),
    ("notes-v1", "notes"),
    ("notes-v2", "notes"),
    ("ping", "ping"),
];

/// Test plugins outside the workspace, each built on its own: one with graft-api's `next-api`
/// feature (which must not leak into the host through feature unification), one with a
/// profile of its own (`panic = "abort"`).
const OUTSIDE: &[&str] = &["newer-api", "abort-build"];

/// The first build of foo/bar/frob.
pub(crate) const V1: &[&str] = &["foo-v1", "bar-v1", "frob-v1"];
/// The second build, where frob@2 and bar@2 replace contract 1.
pub(crate) const V2: &[&str] = &["foo-v2", "bar-v2", "frob-v2"];

struct Artifacts {
    libraries: HashMap<String, PathBuf>,
    graft: PathBuf,
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_owned()
}

/// Runs `cargo build` and returns the artifacts it reports: `(target name, file)`.
pub(crate) fn cargo_build(args: &[&str]) -> Vec<(String, PathBuf)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo)
        .arg("build")
        .arg("--message-format=json-render-diagnostics")
        .args(args)
        .current_dir(workspace_root())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cargo runs");
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut artifacts = Vec::new();
    for message in Message::parse_stream(stdout).map_while(Result::ok) {
        let Message::CompilerArtifact(artifact) = message else {
            continue;
        };
        let name = artifact.target.name.clone();
        if let Some(exe) = artifact.executable {
            artifacts.push((name.clone(), exe.into_std_path_buf()));
        }
        for file in artifact.filenames {
            if file.extension() == Some("so") {
                artifacts.push((name.clone(), file.into_std_path_buf()));
            }
        }
    }
    assert!(
        child.wait().unwrap().success(),
        "cargo build {args:?} failed"
    );
    artifacts
}

/// Polls `done` every few milliseconds until it holds; fails the test, saying `what` it was
/// waiting for, if that takes longer than `within` (a liveness bound, not a timing check).
pub(crate) fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "waited {within:?} for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Where cargo builds the workspace.
pub(crate) fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"))
}

fn artifacts() -> &'static Artifacts {
    static ARTIFACTS: OnceLock<Artifacts> = OnceLock::new();
    ARTIFACTS.get_or_init(|| {
        let mut args = vec!["-p", "graft", "--bins", "--lib"];
        for (krate, _) in PLUGINS.iter().filter(|(k, _)| !OUTSIDE.contains(k)) {
            args.extend(["-p", krate]);
        }
        let mut built = cargo_build(&args);
        let target_dir = target_dir();
        for krate in OUTSIDE {
            let manifest = workspace_root().join(format!("example-plugins/{krate}/Cargo.toml"));
            built.extend(cargo_build(&[
                "--manifest-path",
                manifest.to_str().unwrap(),
                "--target-dir",
                target_dir.to_str().unwrap(),
            ]));
        }
        let graft = built
            .iter()
            .find(|(n, f)| n == "graft" && f.extension().is_none())
            .expect("graft binary built")
            .1
            .clone();
        let libraries = built
            .into_iter()
            .filter(|(_, f)| f.extension().is_some_and(|e| e == "so"))
            .map(|(name, file)| (name.replace('_', "-"), file))
            .collect();
        Artifacts { libraries, graft }
    })
}

/// The built library of an example plugin crate (`"foo-v1"`). Never loaded from there: the
/// host stages its own copy.
pub(crate) fn library(krate: &str) -> &'static Path {
    artifacts()
        .libraries
        .get(krate)
        .unwrap_or_else(|| panic!("no library built for {krate}"))
}

/// The `graft` binary.
pub(crate) fn graft_bin() -> &'static Path {
    &artifacts().graft
}

/// Runs `graft ARGS...`; returns whether it succeeded, its stdout and its stderr.
pub(crate) fn run_graft<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (bool, String, String) {
    let out = Command::new(graft_bin())
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn plugin_name(krate: &str) -> &'static str {
    PLUGINS
        .iter()
        .find(|(k, _)| *k == krate)
        .unwrap_or_else(|| panic!("unknown plugin crate {krate}"))
        .1
}

/// One test's world: a temp dir holding the host's data and the releases it makes.
pub(crate) struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    pub(crate) fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub(crate) fn host(&self) -> Host {
        self.host_with(UnloadPolicy::WhenDrained)
    }

    pub(crate) fn host_with(&self, policy: UnloadPolicy) -> Host {
        Host::builder(self.path("data"))
            .unload_policy(policy)
            .build()
            .unwrap()
    }

    /// A release of these example crates, partial (the rest carries over).
    pub(crate) fn release(&self, label: &str, crates: &[&str]) -> PathBuf {
        self.write_release(label, crates, false)
    }

    /// A release of these example crates that replaces the whole plugin set.
    pub(crate) fn complete_release(&self, label: &str, crates: &[&str]) -> PathBuf {
        self.write_release(label, crates, true)
    }

    fn write_release(&self, label: &str, crates: &[&str], complete: bool) -> PathBuf {
        let dir = self.path(&format!("releases/{label}"));
        let plugins: Vec<(&str, &Path)> = crates
            .iter()
            .map(|k| (plugin_name(k), library(k)))
            .collect();
        release::write_release(&dir, Some(label), complete, &plugins, &[]).unwrap();
        dir
    }

    /// A release whose files and manifest are given verbatim: `(name, file name, bytes, sha256)`.
    pub(crate) fn raw_release(
        &self,
        label: &str,
        manifest_extra: &str,
        files: &[(&str, &str, Vec<u8>, Option<&str>)],
    ) -> PathBuf {
        let dir = self.path(&format!("releases/{label}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut manifest = format!("name = \"{label}\"\n{manifest_extra}\n");
        for (name, file, bytes, sha) in files {
            std::fs::write(dir.join(file), bytes).unwrap();
            let sha = sha
                .map(str::to_owned)
                .unwrap_or_else(|| graft_host::sha256_hex(bytes));
            manifest.push_str(&format!(
                "[[plugin]]\nname = \"{name}\"\nfile = \"{file}\"\nsha256 = \"{sha}\"\n"
            ));
        }
        std::fs::write(dir.join(release::MANIFEST), manifest).unwrap();
        dir
    }
}

/// A release that must be rejected, and what the rejection must say.
pub(crate) struct BadCase {
    pub(crate) label: &'static str,
    pub(crate) dir: PathBuf,
    pub(crate) step: Step,
    pub(crate) plugin: Option<&'static str>,
    /// A phrase the error chain must contain.
    pub(crate) says: &'static str,
}

/// Every kind of bad release: not a library, truncated, no root module, newer API, a
/// `panic = "abort"` build, mistyped contract, panicking initialiser, missing and malformed
/// manifests, wrong checksum, unresolvable import, wrong name.
pub(crate) fn bad_releases(env: &Env) -> Vec<BadCase> {
    let hello_v2 = std::fs::read(library("hello-v2")).unwrap();
    let read = |krate: &str| std::fs::read(library(krate)).unwrap();
    // The newer-api build is one minor version ahead of this host.
    let newer_api = || {
        let mut parts = graft_host::API_VERSION.split('.');
        let (major, minor) = (parts.next().unwrap(), parts.next().unwrap());
        let minor: u32 = minor.parse().unwrap();
        &*Box::leak(format!("built against graft API {major}.{}.0", minor + 1).into_boxed_str())
    };
    let case = |label, dir, step, plugin, says| BadCase {
        label,
        dir,
        step,
        plugin,
        says,
    };
    let empty = env.path("releases/no-manifest");
    std::fs::create_dir_all(&empty).unwrap();
    let malformed = env.path("releases/malformed");
    std::fs::create_dir_all(&malformed).unwrap();
    std::fs::write(malformed.join(release::MANIFEST), "[[plugin]\nname = hello").unwrap();
    vec![
        case(
            "not a library",
            env.raw_release(
                "text",
                "",
                &[(
                    "hello",
                    "libhello.so",
                    b"#!/bin/sh\necho not a library\n".to_vec(),
                    None,
                )],
            ),
            Step::Load,
            Some("hello"),
            "not a loadable shared library",
        ),
        case(
            "truncated build",
            env.raw_release(
                "truncated",
                "",
                &[(
                    "hello",
                    "libhello.so",
                    hello_v2[..hello_v2.len() / 2].to_vec(),
                    None,
                )],
            ),
            Step::Load,
            Some("hello"),
            "truncated",
        ),
        case(
            "no root module",
            env.raw_release(
                "not-a-plugin",
                "",
                &[("hello", "libnot.so", read("not-a-plugin"), None)],
            ),
            Step::Load,
            Some("hello"),
            "no graft root module",
        ),
        case(
            "newer graft API",
            env.raw_release(
                "newer-api",
                "",
                &[("newer-api", "libnewer.so", read("newer-api"), None)],
            ),
            Step::Check,
            Some("newer-api"),
            newer_api(),
        ),
        case(
            "panic = abort build",
            env.raw_release(
                "abort-build",
                "",
                &[("abort-build", "libabort.so", read("abort-build"), None)],
            ),
            Step::Check,
            Some("abort-build"),
            "built with panic = \"abort\"",
        ),
        case(
            "mistyped contract",
            env.raw_release(
                "mistyped",
                "complete = true",
                &[
                    ("foo", "libfoo.so", read("foo-v1"), None),
                    ("bar", "libbar.so", read("bar-v1"), None),
                    ("frob", "libfrob.so", read("frob-mistyped"), None),
                ],
            ),
            Step::Link,
            Some("foo"),
            "plugin foo imports frob@1 as u64 -> Frob1, but plugin frob exports it as u64 -> RString",
        ),
        case(
            "panicking initialiser",
            env.raw_release(
                "panic-init",
                "",
                &[("panic-init", "libpanic.so", read("panic-init"), None)],
            ),
            Step::Init,
            Some("panic-init"),
            "panic-init refuses to start",
        ),
        case(
            "missing manifest",
            empty,
            Step::Manifest,
            None,
            "no release.toml",
        ),
        case(
            "malformed manifest",
            malformed,
            Step::Manifest,
            None,
            "malformed",
        ),
        case(
            "sha256 mismatch",
            env.raw_release(
                "bad-sha",
                "",
                &[(
                    "hello",
                    "libhello.so",
                    hello_v2.clone(),
                    Some(&"0".repeat(64)),
                )],
            ),
            Step::Checksum,
            Some("hello"),
            "sha256 mismatch",
        ),
        case(
            "unresolvable import",
            env.raw_release(
                "unlinked",
                "complete = true",
                &[("unlinked", "libunlinked.so", read("unlinked"), None)],
            ),
            Step::Link,
            Some("unlinked"),
            "plugin unlinked imports nothing@1",
        ),
        case(
            "name mismatch",
            env.raw_release(
                "misnamed",
                "",
                &[("hello", "libfoo.so", read("foo-v1"), None)],
            ),
            Step::Check,
            Some("hello"),
            "declares itself as plugin foo",
        ),
    ]
}

/// Calls `foo@1` with `a` in the host's current generation (a typed call: no JSON).
pub(crate) fn call_foo(host: &Host, a: u64) -> FooOutput {
    let foo = host.typed_export::<FooV1>().unwrap();
    let input = FooInput {
        a,
        ..FooInput::default()
    };
    host.call_typed(&foo, input).unwrap()
}

/// The versions of foo, bar and frob that computed an answer.
pub(crate) fn versions(out: &FooOutput) -> (&str, &str, &str) {
    (&out.foo, &out.bar, &out.frob)
}

/// The names of the releases in the host's history, oldest first.
pub(crate) fn history(host: &Host) -> Vec<String> {
    host.status()
        .history
        .iter()
        .map(|r| r.name.clone().unwrap_or_default())
        .collect()
}

/// Whether `path` is mapped into this process, read straight from `/proc/self/maps`.
pub(crate) fn mapped(path: &Path) -> bool {
    mapped_in("self", path)
}

/// Whether `path` is mapped into process `pid` ("self" for this one), per `/proc/<pid>/maps`.
pub(crate) fn mapped_in(pid: &str, path: &Path) -> bool {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let path = path.to_str().unwrap();
    maps.lines()
        .any(|l| l.ends_with(path) || l.ends_with(&format!("{path} (deleted)")))
}

/// The staged file the current generation loaded a plugin from.
pub(crate) fn staged_path(host: &Host, plugin: &str) -> PathBuf {
    let status = host.status();
    let record = status.history.last().expect("a release is live");
    record
        .plugins
        .iter()
        .find(|p| p.name == plugin)
        .expect("plugin in the current release")
        .staged
        .clone()
}

/// A child process that is killed when dropped, so that a failing test leaves no server behind
/// (one would hold the test's output open).
pub(crate) struct KillOnDrop(pub(crate) std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

/// Rewrites `plugin`'s saved state cell in the store of `data_dir` as a tool outside graft
/// could: `change` edits the value's bytes, and the record's length and checksum are made to
/// match (the record's layout is in `host/src/snapshot.rs`).
pub(crate) fn rewrite_saved_cell(data_dir: &Path, plugin: &str, change: impl FnOnce(&mut Vec<u8>)) {
    use redb::{ReadableDatabase as _, ReadableTable as _};
    use sha2::Digest;
    const CELLS: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("cells");
    let db = redb::Database::create(data_dir.join("state.redb")).unwrap();
    let record = {
        let read = db.begin_read().unwrap();
        let table = read.open_table(CELLS).unwrap();
        let record = table.get(plugin).unwrap().unwrap().value().to_vec();
        record
    };
    // magic (8), schema (4), alignment (4), fingerprint length (4), fingerprint, value length
    // (8), value, SHA-256 of everything before it (32).
    let fingerprint_len = u32::from_le_bytes(record[16..20].try_into().unwrap()) as usize;
    let header = 20 + fingerprint_len;
    let len = u64::from_le_bytes(record[header..header + 8].try_into().unwrap()) as usize;
    let mut value = record[header + 8..header + 8 + len].to_vec();
    change(&mut value);
    let mut rewritten = record[..header].to_vec();
    rewritten.extend_from_slice(&(value.len() as u64).to_le_bytes());
    rewritten.extend_from_slice(&value);
    let digest = sha2::Sha256::digest(&rewritten);
    rewritten.extend_from_slice(&digest);
    let write = db.begin_write().unwrap();
    write
        .open_table(CELLS)
        .unwrap()
        .insert(plugin, rewritten.as_slice())
        .unwrap();
    write.commit().unwrap();
}
