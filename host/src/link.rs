//! Linking: binding every import of a generation to exactly one export.
//!
//! Linking a set of plugins succeeds only if every contract is exported by at most one plugin and
//! every import finds exactly one export of the same contract. The result is the generation's
//! [`LinkTable`]: per plugin, per import slot, the function to call and the plugin that provides
//! it. Calls then index that table; nothing is looked up by name on the request path.

use std::collections::HashMap;
use std::fmt;

use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use graft_api::ffi::{Binding, Context, ExportFn, FfiError, LinkTable, PluginLinks};
use graft_api::ErrorKind;
use serde::{Deserialize, Serialize};

use crate::decl::{Contract, PluginInfo};

/// One resolved import: who imports what from whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkEdge {
    /// The importing plugin.
    pub importer: String,
    /// The contract.
    pub contract: Contract,
    /// The plugin that exports it.
    pub provider: String,
}

/// Why a set of plugins does not link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum LinkProblem {
    /// An import no plugin exports.
    Missing {
        /// The importing plugin.
        importer: String,
        /// The contract it imports.
        contract: Contract,
    },
    /// A contract exported by more than one plugin: callers would be ambiguous.
    Ambiguous {
        /// The contract.
        contract: Contract,
        /// Every plugin that exports it.
        providers: Vec<String>,
    },
}

impl fmt::Display for LinkProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { importer, contract } => {
                write!(
                    f,
                    "plugin {importer} imports {contract}, which no plugin of the new generation exports"
                )
            }
            Self::Ambiguous {
                contract,
                providers,
            } => {
                write!(
                    f,
                    "{contract} is exported by more than one plugin: {}",
                    providers.join(", ")
                )
            }
        }
    }
}

/// A set of plugins that does not link; lists every problem, not just the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct LinkError {
    /// What is wrong, in plugin order.
    pub problems: Vec<LinkProblem>,
}

/// The link report of a set of plugins: every resolved edge and every problem.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LinkReport {
    /// Resolved imports.
    pub edges: Vec<LinkEdge>,
    /// What keeps the set from linking (for `graft check` of a partial release, the imports left
    /// open).
    pub problems: Vec<LinkProblem>,
}

/// What linking does with an import no plugin of the set exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenImports {
    /// Refuse the set: what every deploy does.
    Refuse,
    /// Bind it to a stub that fails with [`ErrorKind::UNBOUND_IMPORT`]: what `graft check` does
    /// with a partial release, whose imports the generation it lands on will provide.
    Stub,
}

/// Resolves every import of `plugins` (in order) against their exports.
pub fn analyze<'a>(plugins: impl IntoIterator<Item = &'a PluginInfo> + Clone) -> LinkReport {
    let mut providers: HashMap<&Contract, Vec<&str>> = HashMap::new();
    for plugin in plugins.clone() {
        for contract in &plugin.exports {
            providers.entry(contract).or_default().push(&plugin.name);
        }
    }
    let mut report = LinkReport::default();
    let mut ambiguous: Vec<_> = providers.iter().filter(|(_, p)| p.len() > 1).collect();
    ambiguous.sort();
    for (contract, names) in ambiguous {
        report.problems.push(LinkProblem::Ambiguous {
            contract: (*contract).clone(),
            providers: names.iter().map(|n| (*n).to_owned()).collect(),
        });
    }
    for plugin in plugins {
        for contract in &plugin.imports {
            match providers.get(contract).map(Vec::as_slice) {
                Some([provider]) => report.edges.push(LinkEdge {
                    importer: plugin.name.clone(),
                    contract: contract.clone(),
                    provider: (*provider).to_owned(),
                }),
                Some(_) => {} // reported as ambiguous above
                None => report.problems.push(LinkProblem::Missing {
                    importer: plugin.name.clone(),
                    contract: contract.clone(),
                }),
            }
        }
    }
    report
}

/// An export as the host calls it: the function and the plugin it belongs to.
#[derive(Clone, Copy)]
pub(crate) struct Entry {
    pub(crate) plugin: u32,
    pub(crate) func: ExportFn,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

/// A linked set of plugins: the table plugins call through, and the exports the host calls.
#[derive(Debug)]
pub(crate) struct Linked {
    pub(crate) table: LinkTable,
    pub(crate) exports: HashMap<Contract, Entry>,
    pub(crate) report: LinkReport,
}

impl Default for Linked {
    fn default() -> Self {
        Self {
            table: LinkTable {
                plugins: RVec::new(),
            },
            exports: HashMap::new(),
            report: LinkReport::default(),
        }
    }
}

/// Links `plugins`, given as (declaration, its export functions in declaration order).
pub(crate) fn link<'a, I, E>(plugins: I, open: OpenImports) -> Result<Linked, LinkError>
where
    I: IntoIterator<Item = (&'a PluginInfo, E)> + Clone,
    E: IntoIterator<Item = ExportFn>,
{
    let report = analyze(
        plugins
            .clone()
            .into_iter()
            .map(|(info, _)| info)
            .collect::<Vec<_>>(),
    );
    let fatal = report
        .problems
        .iter()
        .any(|p| open == OpenImports::Refuse || !matches!(p, LinkProblem::Missing { .. }));
    if fatal {
        return Err(LinkError {
            problems: report.problems,
        });
    }
    let mut exports = HashMap::new();
    let mut infos = Vec::new();
    for (index, (info, funcs)) in plugins.into_iter().enumerate() {
        let plugin = u32::try_from(index).expect("fewer than 2^32 plugins");
        for (contract, func) in info.exports.iter().zip(funcs) {
            exports.insert(contract.clone(), Entry { plugin, func });
        }
        infos.push(info);
    }
    let table = LinkTable {
        plugins: infos
            .iter()
            .enumerate()
            .map(|(index, info)| PluginLinks {
                imports: info
                    .imports
                    .iter()
                    .map(|contract| match exports.get(contract) {
                        Some(entry) => Binding {
                            func: entry.func,
                            plugin: entry.plugin,
                        },
                        None => Binding {
                            func: open_import,
                            plugin: u32::try_from(index).expect("fewer than 2^32 plugins"),
                        },
                    })
                    .collect::<RVec<_>>(),
            })
            .collect(),
    };
    Ok(Linked {
        table,
        exports,
        report,
    })
}

/// What an open import (see [`OpenImports::Stub`]) is bound to.
extern "C" fn open_import(_: &Context<'_>, _: RSlice<'_, u8>) -> RResult<RVec<u8>, FfiError> {
    RResult::RErr(FfiError {
        kind: ErrorKind::UNBOUND_IMPORT,
        message: RString::from("open import: no plugin of this generation exports it"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, exports: &[&str], imports: &[&str]) -> PluginInfo {
        PluginInfo {
            name: name.into(),
            version: "1.0.0".into(),
            api_version: graft_api::API_VERSION.into(),
            exports: exports.iter().map(|c| c.parse().unwrap()).collect(),
            imports: imports.iter().map(|c| c.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn a_missing_import_names_the_importer_and_the_contract() {
        let plugins = [
            info("foo", &["foo@1"], &["bar@2"]),
            info("bar", &["bar@1"], &[]),
        ];
        let report = analyze(&plugins);
        assert_eq!(
            report.problems,
            [LinkProblem::Missing {
                importer: "foo".into(),
                contract: "bar@2".parse().unwrap()
            }]
        );
        let message = LinkError {
            problems: report.problems,
        }
        .to_string();
        assert!(message.contains("plugin foo imports bar@2"), "{message}");
    }

    #[test]
    fn two_providers_of_one_contract_are_ambiguous_even_unused() {
        let plugins = [
            info("frob", &["frob@1"], &[]),
            info("frob-shim", &["frob@1"], &["frob@2"]),
        ];
        let report = analyze(&plugins);
        assert!(report.problems.contains(&LinkProblem::Ambiguous {
            contract: "frob@1".parse().unwrap(),
            providers: vec!["frob".into(), "frob-shim".into()],
        }));
        assert!(report
            .problems
            .iter()
            .any(|p| matches!(p, LinkProblem::Missing { .. })));
    }

    #[test]
    fn a_shim_links_old_callers_to_the_new_contract() {
        let plugins = [
            info("foo", &["foo@1"], &["frob@1"]),
            info("frob", &["frob@2"], &[]),
            info("frob-shim", &["frob@1"], &["frob@2"]),
        ];
        let report = analyze(&plugins);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        let providers: Vec<_> = report
            .edges
            .iter()
            .map(|e| (e.importer.as_str(), e.provider.as_str()))
            .collect();
        assert_eq!(providers, [("foo", "frob-shim"), ("frob-shim", "frob")]);
    }

    #[test]
    fn open_imports_are_refused_unless_stubbed_and_ambiguity_never_is() {
        let open = [info("foo", &["foo@1"], &["bar@1"])];
        let set = || open.iter().map(|i| (i, Vec::<ExportFn>::new()));
        assert!(link(set(), OpenImports::Refuse).is_err());
        let linked = link(set(), OpenImports::Stub).unwrap();
        assert_eq!(linked.report.problems.len(), 1);
        let stub = linked.table.plugins[0].imports[0];
        let ctx = Context {
            table: &linked.table,
            plugin: 0,
        };
        let failed = (stub.func)(&ctx, RSlice::from_slice(b"1"))
            .into_result()
            .unwrap_err();
        assert_eq!(failed.kind, ErrorKind::UNBOUND_IMPORT);

        let twice = [info("a", &["x@1"], &[]), info("b", &["x@1"], &[])];
        let set = twice.iter().map(|i| (i, Vec::<ExportFn>::new()));
        assert!(link(set, OpenImports::Stub).is_err());
    }
}
