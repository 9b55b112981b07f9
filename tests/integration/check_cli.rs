//! `graft check` and `graft pack`, run as a user would.

use crate::util::{bad_releases, library, run_graft, Env, V1, V2};

#[test]
fn check_reports_a_good_release_with_its_links() {
    let env = Env::new();
    let dir = env.complete_release("v1", V1);
    let (ok, stdout, stderr) = run_graft(&["check".as_ref(), dir.as_os_str()]);
    assert!(ok, "{stderr}");
    for expected in [
        "release    v1 (complete)",
        "plugin     foo 1.0.0",
        "exports  foo@1: FooInput -> FooOutput",
        "imports  frob@1: u64 -> Frob1",
        "         bar@1: Frob1 -> BarOutput",
        "exports  frob@1: u64 -> Frob1",
        "foo -> bar (bar@1)",
        "foo -> frob (frob@1)",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
}

#[test]
fn types_are_part_of_a_contract_a_mistyped_frob_is_refused_and_v1_v2_and_the_shim_link() {
    let env = Env::new();
    let releases = [
        ("v1", V1.to_vec()),
        ("v2", V2.to_vec()),
        ("shim", vec!["foo-v1", "bar-v1", "frob-v2", "frob-shim"]),
    ];
    for (label, plugins) in &releases {
        let dir = env.complete_release(label, plugins);
        let (ok, stdout, stderr) = run_graft(&["check".as_ref(), dir.as_os_str()]);
        assert!(ok, "{label}: {stderr}");
        assert!(stdout.contains("foo -> frob"), "{label}: {stdout}");
    }

    // frob-mistyped exports frob@1 returning a string where foo-v1 imports it returning Frob1.
    let dir = env.complete_release("mistyped", &["foo-v1", "bar-v1", "frob-mistyped"]);
    let (ok, stdout, stderr) = run_graft(&["check".as_ref(), dir.as_os_str()]);
    assert!(!ok, "a mistyped frob@1 passed check:\n{stdout}");
    assert!(
        stderr.contains("release rejected at link")
            && stderr.contains(
                "plugin foo imports frob@1 as u64 -> Frob1, but plugin frob exports it as u64 -> RString"
            ),
        "{stderr}"
    );
    let host = env.host();
    let err = host.deploy(&dir).unwrap_err();
    assert_eq!(err.step(), graft_host::Step::Link, "{err}");
    let chain = graft_host::DisplayChain(&err).to_string();
    assert!(chain.contains("frob@1 as u64 -> Frob1"), "{chain}");
    assert!(chain.contains("export frob@2 for the new types"), "{chain}");

    // frob-stale returns a stale copy of Frob1 (x: u32): the names agree, the field is named.
    let dir = env.complete_release("stale", &["foo-v1", "bar-v1", "frob-stale"]);
    let (ok, _, stderr) = run_graft(&["check".as_ref(), dir.as_os_str()]);
    assert!(!ok);
    assert!(
        stderr.contains(
            "plugin foo imports frob@1 as u64 -> Frob1, but plugin frob exports it as u64 -> \
             Frob1 (output Frob1: field x is u64 in foo, u32 in frob)"
        ) && stderr.contains("built from different copies of a type; rebuild both from one"),
        "{stderr}"
    );
}

#[test]
fn check_lists_the_open_imports_of_a_partial_release() {
    let env = Env::new();
    let dir = env.release("frob2+shim", &["frob-v2", "frob-shim"]);
    let (ok, stdout, stderr) = run_graft(&["check".as_ref(), dir.as_os_str()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("frob-shim -> frob (frob@2)"), "{stdout}");

    let dir = env.release("v2-callers", &["foo-v2"]);
    let manifest = std::fs::read_to_string(dir.join("release.toml")).unwrap();
    std::fs::write(
        dir.join("release.toml"),
        format!("remove = [\"frob-shim\"]\n{manifest}"),
    )
    .unwrap();
    let (ok, stdout, stderr) = run_graft(&["check".as_ref(), dir.as_os_str()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("open       foo imports frob@2"), "{stdout}");
    assert!(stdout.contains("removes    frob-shim"), "{stdout}");
}

#[test]
fn check_exits_1_with_the_reason_for_every_bad_release() {
    let env = Env::new();
    for case in bad_releases(&env) {
        let (ok, stdout, stderr) = run_graft(&["check".as_ref(), case.dir.as_os_str()]);
        assert!(!ok, "{}: check passed:\n{stdout}", case.label);
        assert!(
            stderr.starts_with("error: checking "),
            "{}: {stderr}",
            case.label
        );
        assert!(
            stderr.contains(case.says),
            "{}: expected {:?} in {stderr:?}",
            case.label,
            case.says
        );
        assert!(
            stderr.contains(&format!("release rejected at {}", case.step)),
            "{}: {stderr}",
            case.label
        );
        assert_eq!(
            stderr.lines().count(),
            1,
            "{}: one line: {stderr}",
            case.label
        );
    }
}

#[test]
fn a_refusal_is_said_once_as_json_with_json_and_without_colours_when_not_on_a_terminal() {
    let env = Env::new();
    // As a user runs it: no RUST_LOG, so the default log level applies.
    let check = |args: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new(crate::util::graft_bin())
            .arg("check")
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        (out.status.code(), text(out.stdout), text(out.stderr))
    };
    for case in bad_releases(&env) {
        let (code, stdout, stderr) = check(&["--json".as_ref(), case.dir.as_os_str()]);
        assert_eq!(code, Some(1), "{}: {stdout}{stderr}", case.label);
        assert_eq!(stderr, "", "{}: said on stdout only", case.label);
        let refusal: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(
            refusal["error"]["step"],
            case.step.to_string(),
            "{}: {refusal}",
            case.label
        );
        assert_eq!(refusal["error"]["error"], "deploy-rejected", "{refusal}");
        let message = refusal["error"]["message"].as_str().unwrap();
        assert!(message.contains(case.says), "{}: {message}", case.label);
        assert_eq!(refusal["path"], case.dir.to_str().unwrap());

        let (code, stdout, stderr) = check(&[case.dir.as_os_str()]);
        assert_eq!((code, stdout.as_str()), (Some(1), ""), "{}", case.label);
        assert_eq!(stderr.lines().count(), 1, "{}: once: {stderr}", case.label);
        assert!(
            !stderr.contains('\u{1b}'),
            "no colours into a pipe: {stderr:?}"
        );
    }
}

#[test]
fn check_of_a_single_library_prints_its_declaration() {
    let (ok, stdout, stderr) = run_graft(&["check".as_ref(), library("frob-shim").as_os_str()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("plugin     frob-shim 1.0.0"), "{stdout}");
    assert!(stdout.contains("imports  frob@2: u64 -> Frob2"), "{stdout}");
    assert!(stdout.contains("exports  frob@1: u64 -> Frob1"), "{stdout}");
}

#[test]
fn pack_writes_a_release_that_deploys() {
    let env = Env::new();
    let out = env.path("packed");
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "pack".as_ref(),
        out.as_os_str(),
        "--name".as_ref(),
        "packed".as_ref(),
        "--complete".as_ref(),
    ];
    args.extend(V1.iter().map(|k| library(k).as_os_str()));
    let (ok, _, stderr) = run_graft(&args);
    assert!(ok, "{stderr}");
    let host = env.host();
    let report = host.deploy(&out).unwrap();
    assert_eq!(report.release.as_deref(), Some("packed"));
    assert_eq!(report.plugins.len(), 3);

    // Packed again into the same directory: refused, unless asked to replace it.
    let before = std::fs::read(out.join("release.toml")).unwrap();
    let (ok, _, stderr) = run_graft(&args);
    assert!(!ok);
    assert!(
        stderr.contains("holds a release already (release.toml): pass --force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(out.join("release.toml")).unwrap(), before);
    args.push("--force".as_ref());
    let (ok, _, stderr) = run_graft(&args);
    assert!(ok, "{stderr}");
}

#[test]
fn pack_reads_declarations_without_running_init_removes_and_refuses_duplicates() {
    let env = Env::new();
    let arg = |p: &std::path::Path| p.to_str().unwrap().to_owned();

    // A plugin whose initialiser panics packs fine: packing runs no plugin code.
    let out = env.path("panicky");
    let (ok, _, stderr) = run_graft(&["pack", &arg(&out), &arg(library("panic-init"))]);
    assert!(ok, "{stderr}");

    // Two builds of one plugin: refused, naming it.
    let (ok, _, stderr) = run_graft(&[
        "pack",
        &arg(&env.path("twice")),
        &arg(library("frob-v1")),
        &arg(library("frob-v2")),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("two libraries of the release declare plugin frob"),
        "{stderr}"
    );

    // --remove: the release drops the shim, and the deploy says so.
    let host = env.host();
    host.deploy(env.complete_release("v1", V1)).unwrap();
    host.deploy(env.release("shim", &["frob-v2", "frob-shim"]))
        .unwrap();
    let callers = env.path("callers");
    let mut args = vec![
        "pack".to_owned(),
        arg(&callers),
        "--remove".into(),
        "frob-shim".into(),
    ];
    args.extend(["foo-v2", "bar-v2"].iter().map(|k| arg(library(k))));
    let (ok, stdout, stderr) = run_graft(&args);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("removing frob-shim"), "{stdout}");
    let report = host.deploy(&callers).unwrap();
    assert_eq!(report.removed, ["frob-shim"]);
    assert!(
        report.to_string().contains("; removed frob-shim"),
        "{report}"
    );
}

#[test]
fn a_closed_standard_output_ends_the_command_quietly() {
    let env = Env::new();
    let release = env.complete_release("v1", V1);
    let mut child = std::process::Command::new(crate::util::graft_bin())
        .args(["check", release.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away, as `| head -0` would
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}
