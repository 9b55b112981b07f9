//! The shapes of state and table types: what their values are made of, by structure, so that
//! two builds can be compared and their difference said in words.
//!
//! A shape is structural: field names, their order and their types count, type names do not
//! (renaming `CartState` to `CartStateV1` while adding schema 2 changes nothing the host
//! compares). Standard types (`AtomicU64`, `String`) are named, since their structure is
//! theirs. The fingerprint digests the canonical text; [`Shape::differences`] compares two
//! shapes field by field.
//!
//! State types are read from abi_stable's layouts ([`Shape::of_layout`]); table values from
//! their serde shape, traced by serde-reflection in the plugin ([`Shape::of_serde`]).

use std::fmt::Write as _;

use abi_stable::type_layout::{TLData, TLFields, TypeLayout};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::bounded::Bounded;

/// The longest JSON type description accepted from a plugin.
pub(crate) const MAX_DESCRIPTION: usize = 64 * 1024;

/// Layouts deeper than this are cut there.
const MAX_DEPTH: usize = 24;
/// The most nodes one shape may have.
const MAX_NODES: usize = 4096;

/// A type's structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shape {
    /// The type's name in the build that declared it (for messages only).
    pub(crate) name: String,
    /// The structure, as text: `{total: AtomicU64, by_key: [AtomicU64; 8]}`.
    pub(crate) text: String,
    /// The top-level fields, `(name, type)`, when the type is a struct.
    pub(crate) fields: Option<Vec<(String, String)>>,
    /// A digest of the canonical structure.
    pub(crate) fingerprint: String,
}

impl Shape {
    /// The shape of a by-value (state) type.
    pub(crate) fn of_layout(layout: &'static TypeLayout) -> Self {
        let mut nodes = 0;
        let text = render_layout(layout, 0, &mut nodes);
        let fields = match layout.data() {
            TLData::Struct { fields } if !is_std(layout) => Some(
                fields
                    .iter()
                    .map(|f| {
                        let text = if f.is_function() {
                            "fn".to_owned()
                        } else {
                            render_layout(f.layout(), 1, &mut 0)
                        };
                        (f.name().to_owned(), text)
                    })
                    .collect(),
            ),
            _ => None,
        };
        let canonical = format!("{text}[{},{}]", layout.size(), layout.alignment());
        Self {
            name: layout.full_type().to_string(),
            fingerprint: digest(&canonical),
            text,
            fields,
        }
    }

    /// The shape of a serde (table value) type, from the description its plugin wrote (`{"name":
    /// .., "shape": [format, registry]}`). A type serde-reflection could not trace is known by
    /// its name alone.
    pub(crate) fn of_serde(description: &str) -> Result<Self, String> {
        let parsed = Description::parse(description)?;
        let traced: Option<(Value, serde_json::Map<String, Value>)> =
            serde_json::from_value(parsed.shape).map_err(|e| format!("a malformed shape: {e}"))?;
        let Some((format, registry)) = traced else {
            let text = format!("{} (untraced)", parsed.name);
            return Ok(Self {
                fingerprint: digest(&format!("name:{}", parsed.name)),
                name: parsed.name,
                text,
                fields: None,
            });
        };
        let mut walk = SerdeWalk {
            registry: &registry,
            stack: Vec::new(),
            nodes: 0,
        };
        let text = walk.format(&format);
        let mut canonical = String::new();
        walk.nodes = 0;
        walk.canonical(&format, &mut canonical);
        let fields = walk.struct_fields(&format);
        Ok(Self {
            name: parsed.name,
            fingerprint: digest(&canonical),
            text,
            fields,
        })
    }

    /// What differs between `self` (described as `ours`) and `other` (`theirs`), in words:
    /// field by field for two structs, else the two structures.
    pub(crate) fn differences(&self, ours: &str, other: &Self, theirs: &str) -> String {
        let (Some(mine), Some(their)) = (&self.fields, &other.fields) else {
            return format!("{ours} is {}, {theirs} is {}", self.text, other.text);
        };
        let mut said = Vec::new();
        for (name, ty) in mine {
            match their.iter().find(|(n, _)| n == name) {
                None => said.push(format!("field {name} ({ty}) is only in {ours}")),
                Some((_, other_ty)) if other_ty != ty => {
                    said.push(format!(
                        "field {name} is {ty} in {ours}, {other_ty} in {theirs}"
                    ));
                }
                Some(_) => {}
            }
        }
        for (name, ty) in their {
            if !mine.iter().any(|(n, _)| n == name) {
                said.push(format!("field {name} ({ty}) is only in {theirs}"));
            }
        }
        if said.is_empty() {
            let order = |fields: &[(String, String)]| {
                fields
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if order(mine) != order(their) {
                said.push(format!(
                    "the fields are in another order ({} in {ours}, {} in {theirs})",
                    order(mine),
                    order(their)
                ));
            } else {
                said.push(format!(
                    "{ours} is {}, {theirs} is {}",
                    self.text, other.text
                ));
            }
        }
        said.join("; ")
    }
}

/// The schemas a build migrates its state or a table from and to, for an error: `up from 1,
/// down to 1` (`(up, other schema)` pairs).
pub(crate) fn migration_paths(migrations: impl Iterator<Item = (bool, u32)>) -> String {
    let list: Vec<String> = migrations
        .map(|(up, schema)| format!("{} {schema}", if up { "up from" } else { "down to" }))
        .collect();
    if list.is_empty() {
        "no migrations".into()
    } else {
        list.join(", ")
    }
}

fn digest(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

/// Whether a layout is a standard type, named rather than described (atomics, `RString`).
fn is_std(layout: &'static TypeLayout) -> bool {
    let package = layout.item_info().package();
    package == "std" || package == "abi_stable"
}

fn render_layout(layout: &'static TypeLayout, depth: usize, nodes: &mut usize) -> String {
    use abi_stable::type_layout::TLPrimitive as P;
    *nodes += 1;
    if depth >= MAX_DEPTH || *nodes > MAX_NODES {
        return "...".into();
    }
    let fields = |kind: &str, fields: TLFields, nodes: &mut usize| {
        let mut out = format!("{kind}{{");
        for (i, field) in fields.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{}: ", field.name());
            if field.is_function() {
                out.push_str("fn");
            } else {
                out.push_str(&render_layout(field.layout(), depth + 1, nodes));
            }
        }
        out.push('}');
        out
    };
    match layout.data() {
        TLData::Primitive(P::Array) => {
            let element = layout.phantom_fields().iter().next().map(|f| f.layout());
            match element {
                Some(element) if element.size() > 0 => format!(
                    "[{}; {}]",
                    render_layout(element, depth + 1, nodes),
                    layout.size() / element.size()
                ),
                _ => layout.full_type().to_string(),
            }
        }
        TLData::Primitive(_) | TLData::Opaque | TLData::PrefixType(_) => {
            layout.full_type().to_string()
        }
        _ if is_std(layout) => layout.full_type().to_string(),
        TLData::Struct { fields: f } => fields("", f, nodes),
        TLData::Union { fields: f } => fields("union ", f, nodes),
        TLData::Enum(tl_enum) => {
            let variants = tl_enum.variant_names.as_str().replace(';', " | ");
            format!(
                "enum {{{}}} {}",
                variants.trim_end_matches(" | "),
                fields("", tl_enum.fields, nodes)
            )
        }
    }
}

/// Walks a serde-reflection format with its registry, type names dropped.
struct SerdeWalk<'r> {
    registry: &'r serde_json::Map<String, Value>,
    /// The containers being walked (a recursive type refers back to one).
    stack: Vec<String>,
    nodes: usize,
}

impl SerdeWalk<'_> {
    /// The structure as text for a reader.
    fn format(&mut self, format: &Value) -> String {
        self.nodes += 1;
        if self.stack.len() >= MAX_DEPTH || self.nodes > MAX_NODES {
            return "...".into();
        }
        match format {
            Value::String(primitive) => primitive_name(primitive),
            Value::Object(map) if map.len() == 1 => {
                let (kind, inner) = map.iter().next().expect("one entry");
                match kind.as_str() {
                    "TYPENAME" => self.container(inner.as_str().unwrap_or_default()),
                    "OPTION" => format!("Option<{}>", self.format(inner)),
                    "SEQ" => format!("[{}]", self.format(inner)),
                    "MAP" => format!(
                        "Map<{}, {}>",
                        self.format(&inner["KEY"]),
                        self.format(&inner["VALUE"])
                    ),
                    "TUPLE" => self.tuple(inner),
                    "TUPLEARRAY" => format!(
                        "[{}; {}]",
                        self.format(&inner["CONTENT"]),
                        inner["SIZE"].as_u64().unwrap_or_default()
                    ),
                    _ => "?".into(),
                }
            }
            _ => "?".into(),
        }
    }

    fn tuple(&mut self, formats: &Value) -> String {
        let parts: Vec<String> = formats
            .as_array()
            .map(|items| items.iter().map(|f| self.format(f)).collect())
            .unwrap_or_default();
        format!("({})", parts.join(", "))
    }

    /// A named container, described by its structure.
    fn container(&mut self, name: &str) -> String {
        if self.stack.iter().any(|n| n == name) {
            let depth = self.stack.len() - self.stack.iter().position(|n| n == name).unwrap_or(0);
            return format!("<recursive {depth}>");
        }
        let Some(container) = self.registry.get(name) else {
            return "?".into();
        };
        self.stack.push(name.to_owned());
        let text = match container {
            Value::String(unit) if unit == "UNITSTRUCT" => "()".to_owned(),
            Value::Object(map) if map.len() == 1 => {
                let (kind, inner) = map.iter().next().expect("one entry");
                match kind.as_str() {
                    "UNITSTRUCT" => "()".to_owned(),
                    "NEWTYPESTRUCT" => format!("({})", self.format(inner)),
                    "TUPLESTRUCT" => self.tuple(inner),
                    "STRUCT" => self.named_fields(inner),
                    "ENUM" => self.variants(inner),
                    _ => "?".into(),
                }
            }
            _ => "?".into(),
        };
        self.stack.pop();
        text
    }

    fn named_fields(&mut self, fields: &Value) -> String {
        let parts: Vec<String> = fields
            .as_array()
            .map(|fields| {
                fields
                    .iter()
                    .filter_map(Value::as_object)
                    .filter_map(|field| field.iter().next())
                    .map(|(name, format)| format!("{name}: {}", self.format(format)))
                    .collect()
            })
            .unwrap_or_default();
        format!("{{{}}}", parts.join(", "))
    }

    fn variants(&mut self, variants: &Value) -> String {
        let mut parts = Vec::new();
        if let Some(variants) = variants.as_object() {
            let mut ordered: Vec<(u64, &serde_json::Map<String, Value>)> = variants
                .iter()
                .filter_map(|(index, v)| Some((index.parse().ok()?, v.as_object()?)))
                .collect();
            ordered.sort_by_key(|(index, _)| *index);
            for (index, variant) in ordered {
                let Some((name, format)) = variant.iter().next() else {
                    continue;
                };
                let body = match format {
                    Value::String(unit) if unit == "UNIT" => String::new(),
                    Value::Object(map) => match map.iter().next() {
                        Some((kind, inner)) if kind == "NEWTYPE" => {
                            format!("({})", self.format(inner))
                        }
                        Some((kind, inner)) if kind == "TUPLE" => self.tuple(inner),
                        Some((kind, inner)) if kind == "STRUCT" => {
                            format!(" {}", self.named_fields(inner))
                        }
                        _ => "?".into(),
                    },
                    _ => "?".into(),
                };
                parts.push(format!("#{index} {name}{body}"));
            }
        }
        format!("enum {{{}}}", parts.join(" | "))
    }

    /// The canonical structure: the reader's text is canonical already (names dropped, every
    /// container inlined, enum variants with their indexes).
    fn canonical(&mut self, format: &Value, out: &mut String) {
        out.push_str(&self.format(format));
    }

    /// The top-level fields when `format` is a struct.
    fn struct_fields(&mut self, format: &Value) -> Option<Vec<(String, String)>> {
        let name = format.get("TYPENAME")?.as_str()?;
        let fields = self.registry.get(name)?.get("STRUCT")?.as_array()?.clone();
        self.stack.push(name.to_owned());
        let listed = fields
            .iter()
            .filter_map(Value::as_object)
            .filter_map(|field| field.iter().next())
            .map(|(field, format)| (field.clone(), self.format(format)))
            .collect();
        self.stack.pop();
        Some(listed)
    }
}

fn primitive_name(primitive: &str) -> String {
    match primitive {
        "STR" => "str".into(),
        "UNIT" => "()".into(),
        "BYTES" => "bytes".into(),
        other => other.to_ascii_lowercase(),
    }
}

/// A serde type as its plugin describes it (`runtime::describe`): its name, and its shape
/// (`null` when it could not be traced).
#[derive(serde::Deserialize)]
pub(crate) struct Description {
    pub(crate) name: String,
    pub(crate) shape: serde_json::Value,
}

impl Description {
    /// Reads a description a plugin wrote (bounded in size).
    pub(crate) fn parse(description: &str) -> Result<Self, String> {
        if description.len() > MAX_DESCRIPTION {
            return Err(format!(
                "a type description of {} bytes (at most {MAX_DESCRIPTION})",
                description.len()
            ));
        }
        serde_json::from_str(description).map_err(|e| {
            format!(
                "a malformed type description ({e}): {}",
                Bounded(description)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use abi_stable::StableAbi;
    use serde::{Deserialize, Serialize};

    use super::*;

    fn serde_shape<T: serde::de::DeserializeOwned>() -> Shape {
        Shape::of_serde(&graft_api::runtime::describe_record::<T>().into_string()).unwrap()
    }

    mod before {
        use super::*;
        #[derive(Serialize, Deserialize)]
        pub(super) struct Entry {
            pub(super) value: String,
            pub(super) hits: u32,
        }
    }

    mod renamed {
        use super::*;
        /// The same structure under another name (a build that renamed the type).
        #[derive(Serialize, Deserialize)]
        pub(super) struct EntryV1 {
            pub(super) value: String,
            pub(super) hits: u32,
        }
        #[derive(Serialize, Deserialize)]
        pub(super) struct EntryV2 {
            pub(super) value: String,
            pub(super) hits: u64,
            pub(super) updated_ms: u64,
        }
        #[derive(Serialize, Deserialize)]
        pub(super) enum Kind {
            Plain,
            Tagged(String),
        }
    }

    #[test]
    fn serde_shapes_compare_by_structure_and_say_what_differs() {
        let (a, b, c) = (
            serde_shape::<before::Entry>(),
            serde_shape::<renamed::EntryV1>(),
            serde_shape::<renamed::EntryV2>(),
        );
        assert_eq!(a.fingerprint, b.fingerprint, "a type's name does not count");
        assert_eq!(a.text, "{value: str, hits: u32}");
        assert_ne!(a.fingerprint, c.fingerprint);
        assert_eq!(
            a.differences("the live schema 1", &c, "this build's"),
            "field hits is u32 in the live schema 1, u64 in this build's; \
             field updated_ms (u64) is only in this build's"
        );
        let kind = serde_shape::<renamed::Kind>();
        assert_eq!(kind.text, "enum {#0 Plain | #1 Tagged(str)}");
        assert!(Shape::of_serde("not json")
            .unwrap_err()
            .contains("malformed"));
    }

    #[repr(C)]
    #[derive(StableAbi)]
    struct CartState {
        total: AtomicU64,
        by_sku: [AtomicU64; 4],
    }

    mod v1 {
        use super::*;
        #[repr(C)]
        #[derive(StableAbi)]
        pub(super) struct CartStateV1 {
            total: AtomicU64,
            by_sku: [AtomicU64; 4],
        }
        #[repr(C)]
        #[derive(StableAbi)]
        pub(super) struct Swapped {
            by_sku: [AtomicU64; 4],
            total: AtomicU64,
        }
    }

    #[test]
    fn layout_shapes_compare_by_structure() {
        let (a, b, c) = (
            Shape::of_layout(CartState::LAYOUT),
            Shape::of_layout(v1::CartStateV1::LAYOUT),
            Shape::of_layout(v1::Swapped::LAYOUT),
        );
        assert_eq!(a.text, "{total: AtomicU64, by_sku: [AtomicU64; 4]}");
        assert_eq!(a.fingerprint, b.fingerprint, "renamed, same structure");
        assert_ne!(a.fingerprint, c.fingerprint);
        assert!(
            a.differences("ours", &c, "theirs")
                .contains("another order"),
            "{}",
            a.differences("ours", &c, "theirs")
        );
    }
}
