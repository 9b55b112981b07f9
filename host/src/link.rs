//! Linking: binding every import of a generation to exactly one export.
//!
//! Linking a set of plugins succeeds only if every contract is exported by at most one plugin and
//! every import finds exactly one export of the same contract with the same types (same wire,
//! same input and output fingerprints): plugins then call each other's typed functions directly,
//! which is sound only because of this check. The result is the generation's
//! [`LinkTable`]: per plugin, per import slot, the function to call and the plugin that provides
//! it. Calls then index that table; nothing is looked up by name on the request path.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use abi_stable::std_types::RVec;
use graft_api::ffi::{Binding, ErasedFn, JsonFn, LinkTable, PluginLinks};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::decl::{Contract, PluginInfo, Signature, Wire};
use crate::loader::ExportImpl;
use crate::provided::Provided;

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
    /// An export the host's embedder requires (a route of `graft serve` calls it) that no plugin
    /// of the new generation exports, or not so that the embedder can call it with JSON.
    Required {
        /// Who requires it (`route POST /foo`).
        by: String,
        /// The contract.
        contract: Contract,
        /// Why it cannot serve: not exported, or not callable with JSON.
        why: String,
    },
    /// A route that cannot be served beside another: one method and pattern claimed twice, or
    /// two patterns the router cannot tell apart.
    RouteConflict {
        /// The plugin whose route it is.
        plugin: String,
        /// The route (`GET /notes/{id}`).
        route: String,
        /// Why it cannot be served.
        why: String,
    },
    /// An import whose types differ from those of the export it would bind to.
    Mismatch {
        /// The importing plugin.
        importer: String,
        /// The exporting plugin.
        provider: String,
        /// The contract.
        contract: Contract,
        /// The types the importer declares (`u64 -> Frob1`).
        expected: String,
        /// The types the exporter declares.
        found: String,
        /// How they differ, field by field where both are structs: `output Price: field
        /// cents is u32 in cart, u64 in catalog`.
        difference: String,
        /// Whether the two builds name the same types (a stale copy of a type, rather than a
        /// changed contract).
        same_names: bool,
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
            Self::Required { by, contract, why } => {
                write!(f, "{by} calls {contract}, which {why}")
            }
            Self::RouteConflict { plugin, route, why } => {
                write!(f, "plugin {plugin} routes {route}, but {why}")
            }
            Self::Mismatch {
                importer,
                provider,
                contract,
                expected,
                found,
                difference,
                same_names,
            } => {
                write!(
                    f,
                    "plugin {importer} imports {contract} as {expected}, but plugin {provider} \
                     exports it as {found} ({difference})"
                )?;
                let next = format!("{}@{}", contract.name(), contract.version() + 1);
                if *same_names {
                    write!(
                        f,
                        ": the two were built from different copies of a type; rebuild both \
                         from one (a change of a contract's types is a new contract, {next})"
                    )
                } else {
                    write!(
                        f,
                        ": a contract's types never change under one name (export {next} for \
                         the new types)"
                    )
                }
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

impl LinkError {
    /// The importing plugin of the first problem that has one (an ambiguous export has none):
    /// the plugin a refused release's error names.
    pub fn importer(&self) -> Option<&str> {
        self.problems.iter().find_map(|problem| match problem {
            LinkProblem::Missing { importer, .. } | LinkProblem::Mismatch { importer, .. } => {
                Some(importer.as_str())
            }
            LinkProblem::RouteConflict { plugin, .. } => Some(plugin.as_str()),
            LinkProblem::Ambiguous { .. } | LinkProblem::Required { .. } => None,
        })
    }
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

/// Checks that every export in `required` (a contract and who requires it) is exported by the
/// linked set so that it can be called with JSON (through a JSON adapter, or async); returns
/// every problem at once.
pub(crate) fn check_required(
    linked: &Linked,
    required: &[(Contract, String)],
) -> Result<(), LinkError> {
    let problems: Vec<LinkProblem> = required
        .iter()
        .filter_map(|(contract, by)| {
            let why = match linked.exports.get(contract) {
                None => "no plugin of the new generation exports",
                Some(entry) if entry.json.is_none() && !entry.is_async => {
                    "the new generation exports with types that cannot be called with JSON"
                }
                Some(_) => return None,
            };
            Some(LinkProblem::Required {
                by: by.clone(),
                contract: contract.clone(),
                why: why.into(),
            })
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(LinkError { problems })
    }
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
    let mut providers: HashMap<&Contract, Vec<(&str, &Signature)>> = HashMap::new();
    for plugin in plugins.clone() {
        for export in &plugin.exports {
            providers
                .entry(&export.contract)
                .or_default()
                .push((&plugin.name, export));
        }
    }
    let mut report = LinkReport::default();
    let mut ambiguous: Vec<_> = providers
        .iter()
        .filter(|(_, p)| p.len() > 1)
        .map(|(contract, p)| (*contract, p.iter().map(|(n, _)| (*n).to_owned()).collect()))
        .collect();
    ambiguous.sort();
    for (contract, names) in ambiguous {
        report.problems.push(LinkProblem::Ambiguous {
            contract: contract.clone(),
            providers: names,
        });
    }
    for plugin in plugins {
        for import in &plugin.imports {
            let contract = &import.contract;
            match providers.get(contract).map(Vec::as_slice) {
                Some([(provider, export)]) if *export == import => report.edges.push(LinkEdge {
                    importer: plugin.name.clone(),
                    contract: contract.clone(),
                    provider: (*provider).to_owned(),
                }),
                Some([(provider, export)]) => report.problems.push(LinkProblem::Mismatch {
                    importer: plugin.name.clone(),
                    provider: (*provider).to_owned(),
                    contract: contract.clone(),
                    expected: import.types(),
                    found: export.types(),
                    difference: import.differences(&plugin.name, export, provider),
                    same_names: import.types() == export.types(),
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

/// An export as the host calls it: its functions, its plugin and its types.
#[derive(Clone, Copy)]
pub(crate) struct Entry {
    pub(crate) plugin: u32,
    pub(crate) func: ErasedFn,
    pub(crate) json: Option<JsonFn>,
    /// Whether `func` is an [`AsyncJsonFn`](graft_api::ffi::AsyncJsonFn) (wire `async json`).
    pub(crate) is_async: bool,
    /// [`types_key`] of the export's signature.
    pub(crate) types: u64,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("plugin", &self.plugin)
            .field("types", &self.types)
            .finish_non_exhaustive()
    }
}

/// A digest of a signature's wire and types: equal keys, calls of one type.
pub(crate) fn types_key(signature: &Signature) -> u64 {
    let text = format!(
        "{:?}|{}|{}",
        signature.wire, signature.input.fingerprint, signature.output.fingerprint
    );
    let digest = Sha256::digest(text.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("a sha256 has 8 bytes"))
}

/// A linked set of plugins: the table plugins call through, and the exports the host calls.
#[derive(Debug)]
pub(crate) struct Linked {
    pub(crate) table: LinkTable,
    pub(crate) exports: HashMap<Contract, Entry>,
    pub(crate) report: LinkReport,
    /// What the host provides, when an import is bound to it.
    pub(crate) provided: Option<Arc<Provided>>,
}

impl Default for Linked {
    fn default() -> Self {
        Self {
            table: LinkTable {
                plugins: RVec::new(),
                states: RVec::new(),
                tables: RVec::new(),
            },
            exports: HashMap::new(),
            report: LinkReport::default(),
            provided: None,
        }
    }
}

/// Links `plugins`, given as (declaration, its export implementations in declaration order),
/// and what the host provides.
pub(crate) fn link<'a, I, E>(
    plugins: I,
    provided: &Arc<Provided>,
    open: OpenImports,
) -> Result<Linked, LinkError>
where
    I: IntoIterator<Item = (&'a PluginInfo, E)> + Clone,
    E: IntoIterator<Item = ExportImpl>,
{
    let report = analyze(
        plugins
            .clone()
            .into_iter()
            .map(|(info, _)| info)
            .chain(provided.info.as_ref())
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
    for export in &provided.exports {
        exports.insert(
            export.signature.contract.clone(),
            Entry {
                plugin: export.id,
                func: export.export.func,
                json: export.export.json,
                is_async: export.signature.wire == Wire::AsyncJson,
                types: types_key(&export.signature),
            },
        );
    }
    let mut infos = Vec::new();
    for (index, (info, impls)) in plugins.into_iter().enumerate() {
        let plugin = u32::try_from(index).expect("fewer than 2^32 plugins");
        for (signature, export) in info.exports.iter().zip(impls) {
            exports.insert(
                signature.contract.clone(),
                Entry {
                    plugin,
                    func: export.func,
                    json: export.json,
                    is_async: signature.wire == Wire::AsyncJson,
                    types: types_key(signature),
                },
            );
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
                    .map(|import| match exports.get(&import.contract) {
                        // `analyze` found no problem, so a bound export has the import's types.
                        Some(entry) => Binding {
                            func: Some(entry.func),
                            plugin: entry.plugin,
                        },
                        None => Binding {
                            func: None,
                            plugin: u32::try_from(index).expect("fewer than 2^32 plugins"),
                        },
                    })
                    .collect::<RVec<_>>(),
            })
            .collect(),
        states: RVec::new(),
        tables: RVec::new(),
    };
    Ok(Linked {
        table,
        exports,
        report,
        provided: Some(Arc::clone(provided)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::decl::TypeInfo;

    /// A signature `contract: input -> u64`.
    fn sig(contract: &str, input: &str) -> Signature {
        let ty = |name: &str| TypeInfo {
            name: name.into(),
            fingerprint: format!("fp-{name}"),
            shape: None,
        };
        Signature {
            contract: contract.parse().unwrap(),
            wire: Wire::ByValue,
            input: ty(input),
            output: ty("u64"),
        }
    }

    fn info(name: &str, exports: &[&str], imports: &[&str]) -> PluginInfo {
        PluginInfo {
            name: name.into(),
            version: "1.0.0".into(),
            api_version: graft_api::API_VERSION.into(),
            exports: exports.iter().map(|c| sig(c, "u64")).collect(),
            imports: imports.iter().map(|c| sig(c, "u64")).collect(),
            routes: Vec::new(),
        }
    }

    #[test]
    fn an_import_of_other_types_than_the_export_names_both() {
        let mut foo = info("foo", &["foo@1"], &["frob@1"]);
        foo.imports[0] = sig("frob@1", "RString");
        let plugins = [foo, info("frob", &["frob@1"], &[])];
        let report = analyze(&plugins);
        assert!(report.edges.is_empty());
        let message = LinkError {
            problems: report.problems,
        }
        .to_string();
        assert!(
            message.contains("plugin foo imports frob@1 as RString -> u64, but plugin frob exports it as u64 -> u64"),
            "{message}"
        );
        assert!(message.contains("frob@2"), "{message}");
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
        let set = || open.iter().map(|i| (i, Vec::<ExportImpl>::new()));
        assert!(link(set(), &Arc::default(), OpenImports::Refuse).is_err());
        let linked = link(set(), &Arc::default(), OpenImports::Stub).unwrap();
        assert_eq!(linked.report.problems.len(), 1);
        // An open import is bound to nothing; calling it fails on the plugin's side.
        assert!(linked.table.plugins[0].imports[0].func.is_none());

        let twice = [info("a", &["x@1"], &[]), info("b", &["x@1"], &[])];
        let set = twice.iter().map(|i| (i, Vec::<ExportImpl>::new()));
        assert!(link(set, &Arc::default(), OpenImports::Stub).is_err());
    }
}
