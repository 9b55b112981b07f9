//! Contracts and linking: binding every import of a generation to exactly one export.
//!
//! A contract is `name@N`. Linking a set of plugins succeeds only if every contract is exported
//! by at most one plugin and every import finds exactly one export of the same contract. The
//! result is the generation's [`LinkTable`]: per plugin, per import slot, the function to call
//! and the plugin that provides it. Calls then index that table; nothing is looked up by name
//! on the request path.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use abi_stable::std_types::RVec;
use graft_api::ffi::{Binding, ExportFn, LinkTable, PluginLinks};

use crate::loader::PluginInfo;

/// A versioned function name, `name@N`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Contract {
    name: String,
    version: u32,
}

impl Contract {
    /// The function name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The contract version.
    pub fn version(&self) -> u32 {
        self.version
    }
}

/// A string that is not a valid `name@N` contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid contract {0:?}: expected name@N, name of [a-z0-9_-], N a number")]
pub struct ContractError(String);

impl FromStr for Contract {
    type Err = ContractError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ContractError(s.to_owned());
        let (name, version) = s.split_once('@').ok_or_else(err)?;
        let name_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b));
        if !name_ok || version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        Ok(Self {
            name: name.to_owned(),
            version: version.parse().map_err(|_| err())?,
        })
    }
}

impl fmt::Display for Contract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

impl serde::Serialize for Contract {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One resolved import: who imports what from whom.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LinkEdge {
    /// The importing plugin.
    pub importer: String,
    /// The contract.
    pub contract: Contract,
    /// The plugin that exports it.
    pub provider: String,
}

/// Why a set of plugins does not link.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LinkReport {
    /// Resolved imports.
    pub edges: Vec<LinkEdge>,
    /// What keeps the set from linking.
    pub problems: Vec<LinkProblem>,
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
pub(crate) fn link<'a, I, E>(plugins: I) -> Result<Linked, LinkError>
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
    if !report.problems.is_empty() {
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
            .map(|info| PluginLinks {
                imports: info
                    .imports
                    .iter()
                    .map(|contract| {
                        let entry = exports[contract];
                        Binding {
                            func: entry.func,
                            plugin: entry.plugin,
                        }
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
    fn contracts_parse_and_print() {
        let c: Contract = "frob@2".parse().unwrap();
        assert_eq!((c.name(), c.version()), ("frob", 2));
        assert_eq!(c.to_string(), "frob@2");
        for bad in [
            "frob", "frob@", "@1", "Frob@1", "frob@x", "fr ob@1", "frob@1@2",
        ] {
            assert!(bad.parse::<Contract>().is_err(), "{bad} should not parse");
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
}
