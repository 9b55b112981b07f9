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

/// Each crate's top-level modules, and the ones each refers to (`crate::name`, outside comments
/// and unit tests).
fn module_graph(
    src: &std::path::Path,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut modules = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let files = if path.is_dir() {
            let mut files = Vec::new();
            let mut dirs = vec![path];
            while let Some(dir) = dirs.pop() {
                for entry in std::fs::read_dir(dir).unwrap() {
                    let path = entry.unwrap().path();
                    if path.is_dir() {
                        dirs.push(path);
                    } else {
                        files.push(path);
                    }
                }
            }
            files
        } else if name != "lib" && name != "main" {
            vec![path]
        } else {
            continue;
        };
        modules.insert(name, files);
    }
    let mut graph = std::collections::BTreeMap::new();
    for (name, files) in &modules {
        let mut uses = std::collections::BTreeSet::new();
        for file in files {
            let text = std::fs::read_to_string(file).unwrap();
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (at, _) in line.match_indices("crate::") {
                    let used: String = line[at + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if used != *name && modules.contains_key(&used) {
                        uses.insert(used);
                    }
                }
            }
        }
        graph.insert(name.clone(), uses);
    }
    graph
}

/// The module graph of both crates has no cycle: a module can be read knowing only the ones
/// it uses (`docs/architecture.md` lists graft-host's leaves first).
#[test]
fn neither_crate_has_a_module_cycle() {
    let root = workspace_root();
    for src in ["host/src", "graft/src"] {
        let graph = module_graph(&root.join(src));
        assert!(graph.len() > 10, "{src}: {graph:?}");
        // Take leaves off until none is left; what cannot be taken off is in a cycle.
        let mut left = graph.clone();
        while let Some(leaf) = left
            .iter()
            .find(|(_, uses)| uses.iter().all(|used| !left.contains_key(used)))
            .map(|(name, _)| name.clone())
        {
            left.remove(&leaf);
        }
        assert!(
            left.is_empty(),
            "{src}: modules in a cycle, or using one: {left:?}"
        );
    }
}
