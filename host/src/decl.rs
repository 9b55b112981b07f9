//! What a plugin declares about itself: its name, its version and its contracts with their
//! types.
//!
//! A leaf of the crate: every other module may use these types, and this one uses none of
//! theirs. The one naming rule for plugins and contract names lives here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::bounded::Bounded;

/// The longest plugin or contract name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Whether `name` is a valid plugin or contract name: 1 to [`MAX_NAME_LEN`] bytes of
/// `[a-z0-9_-]`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b))
}

/// Whether `name` is a valid contract name: valid names joined by dots, a namespace before
/// each (`kv.put`), at most [`MAX_NAME_LEN`] bytes in all.
pub fn is_valid_contract_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN && name.split('.').all(is_valid_name)
}

/// Checks a plugin name; the error says what a name may be.
pub(crate) fn check_plugin_name(name: &str) -> Result<(), String> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(format!(
            "invalid plugin name {:?}: use 1 to {MAX_NAME_LEN} of [a-z0-9_-]",
            Bounded(name).to_string()
        ))
    }
}

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
#[error("invalid contract {:?}: expected name@N, name of 1 to {MAX_NAME_LEN} of [a-z0-9_-], N a number", Bounded(.0).to_string())]
pub struct ContractError(String);

impl FromStr for Contract {
    type Err = ContractError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ContractError(s.to_owned());
        let (name, version) = s.split_once('@').ok_or_else(err)?;
        if !is_valid_contract_name(name)
            || version.is_empty()
            || !version.bytes().all(|b| b.is_ascii_digit())
        {
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

impl Serialize for Contract {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Contract {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One type of a contract, as a plugin declared it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TypeInfo {
    /// The type's name as its plugin spells it (`Frob1`, `RString`, `u64`).
    pub name: String,
    /// A digest of the type's structure (abi_stable's layout for by-value types, the serde shape
    /// for JSON ones): equal for two declarations of the same type, whatever crate made them.
    pub fingerprint: String,
    /// Its structure, field by field, for saying how two declarations differ (not compared:
    /// the fingerprint is).
    #[serde(skip)]
    pub(crate) shape: Option<std::sync::Arc<crate::shape::Shape>>,
}

impl TypeInfo {
    /// How `self` (`ours`, the plugin that declares it) differs from `other` (`theirs`), field
    /// by field when both are known structurally; `None` when they do not differ.
    pub(crate) fn differences(&self, ours: &str, other: &Self, theirs: &str) -> Option<String> {
        if self == other {
            return None;
        }
        Some(match (&self.shape, &other.shape) {
            (Some(mine), Some(their)) => mine.differences(ours, their, theirs),
            _ => format!("{ours}'s {self} and {theirs}'s {other} differ"),
        })
    }
}

impl PartialEq for TypeInfo {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}
impl Eq for TypeInfo {}

impl fmt::Display for TypeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// How a contract's values cross the boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Wire {
    /// StableAbi values, passed as they are.
    ByValue,
    /// Serde values, as JSON bytes.
    Json,
    /// Serde values, as JSON bytes, to an `async` export (its call returns a future).
    AsyncJson,
}

/// A contract and its types, as one plugin declared it (for an export or an import).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// `name@N`.
    pub contract: Contract,
    /// How its values cross.
    pub wire: Wire,
    /// The input type.
    pub input: TypeInfo,
    /// The output type.
    pub output: TypeInfo,
}

impl Signature {
    /// The types, `In -> Out` (JSON contracts say so: `json String -> String`).
    pub fn types(&self) -> String {
        let json = match self.wire {
            Wire::ByValue => "",
            Wire::Json => "json ",
            Wire::AsyncJson => "json async ",
        };
        format!("{json}{} -> {}", self.input, self.output)
    }

    /// How `self` (declared by `ours`) differs from `other` (by `theirs`): the wire, then the
    /// input and the output, each field by field where both are structs.
    pub(crate) fn differences(&self, ours: &str, other: &Self, theirs: &str) -> String {
        let mut said = Vec::new();
        if self.wire != other.wire {
            said.push(format!(
                "{ours} calls it {:?}, {theirs} {:?}",
                self.wire, other.wire
            ));
        }
        for (what, mine, their) in [
            ("input", &self.input, &other.input),
            ("output", &self.output, &other.output),
        ] {
            if let Some(difference) = mine.differences(ours, their, theirs) {
                said.push(format!("{what} {}: {difference}", mine.name));
            }
        }
        // Types come from plugins: a long one is quoted in part.
        crate::bounded::truncate(&said.join("; "), 4 * crate::bounded::MAX_QUOTE).into_owned()
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.contract, self.types())
    }
}

/// What a plugin declares about itself, copied out of its library.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PluginInfo {
    /// Unique name within a generation.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// The graft API version it was built against.
    pub api_version: String,
    /// What it provides.
    pub exports: Vec<Signature>,
    /// What it calls, in slot order.
    pub imports: Vec<Signature>,
    /// The HTTP routes it serves (graft API 2.3 and later).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,
}

/// One HTTP route a plugin serves: a method and a pattern (`GET /notes/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    /// The method, uppercase.
    pub method: String,
    /// The pattern, matchit's syntax (`/notes/{id}`).
    pub path: String,
    /// Whether its handler is async.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_async: bool,
}

impl fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contracts_parse_and_print() {
        let c: Contract = "frob@2".parse().unwrap();
        assert_eq!((c.name(), c.version()), ("frob", 2));
        assert_eq!(c.to_string(), "frob@2");
        let too_long = format!("{}@1", "a".repeat(MAX_NAME_LEN + 1));
        assert_eq!("kv.put@1".parse::<Contract>().unwrap().name(), "kv.put");
        for bad in [
            "frob",
            "frob@",
            "@1",
            "Frob@1",
            "frob@x",
            "fr ob@1",
            "frob@1@2",
            &too_long,
            "kv.@1",
            ".kv@1",
            "kv..put@1",
        ] {
            assert!(bad.parse::<Contract>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn names_are_short_lowercase_words() {
        assert!(is_valid_name("frob-shim_2"));
        for bad in ["", "Foo", "a b", "é", &"x".repeat(MAX_NAME_LEN + 1)] {
            assert!(check_plugin_name(bad).is_err(), "{bad:?}");
        }
        let huge = "X".repeat(1 << 20);
        assert!(check_plugin_name(&huge).unwrap_err().len() < 512);
    }
}
