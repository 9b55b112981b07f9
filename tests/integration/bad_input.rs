//! Invariant 4: bad input gets a clear error, and the serving generation loses nothing.

use graft_host::{CallError, DisplayChain, ErrorKind};

use crate::util::{bad_releases, Env};

#[test]
fn every_bad_release_is_rejected_at_its_step_and_the_old_release_keeps_serving() {
    let env = Env::new();
    let host = env.host();
    host.deploy(env.complete_release("good", &["hello-v1"]))
        .unwrap();
    let hello = host.export("hello@1").unwrap();

    for case in bad_releases(&env) {
        let err = host.deploy(&case.dir).expect_err(case.label);
        let message = DisplayChain(&err).to_string();
        assert_eq!(err.step(), case.step, "{}: {message}", case.label);
        assert_eq!(err.plugin(), case.plugin, "{}: {message}", case.label);
        assert!(
            message.contains(case.says),
            "{}: expected {:?} in {message:?}",
            case.label,
            case.says
        );
        if case.plugin.is_some() {
            assert!(
                err.file().is_some(),
                "{}: the error names the file: {message}",
                case.label
            );
        }
        assert_eq!(host.pin().id(), 1, "{}: nothing changed", case.label);
        let answer: String = host.call(&hello, &"ops").unwrap();
        assert_eq!(answer, "hello, ops", "{}", case.label);
        let last = host.status().last_deploy.unwrap();
        assert_eq!(
            last.error.as_deref(),
            Some(&*message),
            "{}: status shows the last rejection",
            case.label
        );
    }

    // Still able to deploy (and layout-check) after all that, the newer-API plugin included.
    host.deploy(env.release("hello-v2", &["hello-v2"])).unwrap();
    assert_eq!(
        host.call::<_, String>(&hello, &"ops").unwrap(),
        "hello v2, ops!"
    );
}

#[test]
fn a_plugin_built_against_a_newer_api_is_rejected_before_its_layout_is_checked() {
    // Regression: layout-checking a newer plugin, then unloading it, left abi_stable's global
    // layout cache pointing into the unmapped library, and the next check crashed the process.
    let env = Env::new();
    let host = env.host();
    for round in 0..3 {
        let case = bad_releases(&env)
            .into_iter()
            .find(|c| c.label == "newer graft API")
            .unwrap();
        let err = host.deploy(&case.dir).unwrap_err();
        assert!(
            DisplayChain(&err)
                .to_string()
                .contains(&format!("this host speaks {}", graft_host::API_VERSION)),
            "{err}"
        );
        host.flush_unloads();
        host.deploy(env.complete_release(&format!("round-{round}"), &["hello-v1", "misbehaving"]))
            .unwrap();
    }
}

#[test]
fn an_export_that_panics_returns_an_error_and_the_host_lives_on() {
    let env = Env::new();
    let host = env.host();
    host.deploy(env.complete_release("bad", &["misbehaving"]))
        .unwrap();
    let (panics, fails, echo) = (
        host.export("panic@1").unwrap(),
        host.export("fail@1").unwrap(),
        host.export("echo@1").unwrap(),
    );

    for _ in 0..3 {
        let err = host.call::<_, String>(&panics, &"input").unwrap_err();
        assert_eq!(err.kind(), Some(ErrorKind::PANIC), "{err}");
        assert!(
            err.to_string()
                .contains("misbehaving plugin panicked on input"),
            "{err}"
        );
    }
    let err = host.call::<_, String>(&fails, &"that").unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::PLUGIN));
    assert!(err.to_string().contains("refused that"), "{err}");

    let err = host.call_raw(&echo, b"{ not json").unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::BAD_INPUT), "{err}");
    assert_eq!(
        host.call::<_, String>(&echo, &"still here").unwrap(),
        "still here"
    );

    let missing = host.export("absent@1").unwrap();
    assert!(matches!(
        host.call::<_, String>(&missing, &"x"),
        Err(CallError::NotExported { generation: 1, .. })
    ));
}

#[test]
fn a_panic_in_a_nested_import_reaches_the_caller_as_an_error() {
    let env = Env::new();
    let host = env.host();
    host.deploy(env.complete_release("bad", &["misbehaving"]))
        .unwrap();
    let relay = host.export("relay@1").unwrap();
    let err = host.call::<_, String>(&relay, &"deep").unwrap_err();
    assert_eq!(
        err.kind(),
        Some(ErrorKind::PANIC),
        "the kind survives the hop: {err}"
    );
    let message = err.to_string();
    assert!(
        message.contains("relay@1 in generation 1 failed"),
        "{message}"
    );
    assert!(
        message.contains("panic@1: misbehaving plugin panicked on deep"),
        "{message}"
    );
}

#[test]
fn a_plugin_error_names_the_export_and_the_generation() {
    let env = Env::new();
    let host = env.host();
    host.deploy(env.complete_release("v1", crate::util::V1))
        .unwrap();
    let foo = host.export("foo@1").unwrap();
    // foo cannot write its gate marker into a directory that does not exist.
    let err = host
        .call_raw(&foo, br#"{"a": 1, "gate": "/nonexistent/graft-gate"}"#)
        .unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::PLUGIN), "{err}");
    assert!(
        err.to_string().contains("foo@1 in generation 1 failed"),
        "{err}"
    );
}
