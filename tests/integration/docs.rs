//! What the docs promise about the code, checked against it.

use crate::util::workspace_root;

/// The modules of graft-host that allow `unsafe` code, as `docs/architecture.md` lists them.
#[test]
fn the_unsafe_modules_of_the_host_are_the_ones_the_architecture_lists() {
    let root = workspace_root();
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let listed = doc
        .split("The `unsafe` code of `graft-host` lives in these modules")
        .nth(1)
        .expect("the architecture lists the unsafe modules")
        .split("A test")
        .next()
        .unwrap();
    let mut found = Vec::new();
    let mut dirs = vec![root.join("host/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if std::fs::read_to_string(&path)
                .unwrap()
                .contains("#![allow(unsafe_code)]")
            {
                let module = path
                    .strip_prefix(root.join("host/src"))
                    .unwrap()
                    .with_extension("");
                found.push(module.to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    for module in &found {
        assert!(
            listed.contains(&format!("`{module}`")),
            "host/src/{module}.rs allows unsafe code, but docs/architecture.md does not list it"
        );
    }
    let count = listed.matches("` (").count();
    assert_eq!(
        count,
        found.len(),
        "the architecture lists {count}, the sources have {found:?}"
    );
}
