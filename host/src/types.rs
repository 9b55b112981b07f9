//! The types of contracts: what a plugin says about them, turned into names and fingerprints
//! the host compares, in host-owned memory.
//!
//! A by-value type is described by abi_stable's [`TypeLayout`]: its fingerprint digests the
//! type's name with generics, size, alignment and, recursively, its fields (their names and
//! types) or variants. A JSON type is described by the plugin's `describe` function: its Rust
//! name and its serde shape, which the fingerprint digests (the name alone when the shape could
//! not be traced). Equal fingerprints, equal types: two plugins built from different copies of
//! one struct agree; a field renamed, retyped, added or removed does not.

use std::collections::HashSet;
use std::fmt::Write as _;

use abi_stable::type_layout::{TLData, TLFields, TypeLayout};
use graft_api::ffi::{self, TypeDesc};
use sha2::{Digest, Sha256};

use crate::bounded::Bounded;
use crate::decl::{Signature, TypeInfo, Wire};
use crate::shape::Description;
#[cfg(test)]
use crate::shape::MAX_DESCRIPTION;

/// Layouts deeper than this are digested by name from there on.
const MAX_DEPTH: usize = 24;
/// The most layout nodes one type may have (a bound against hostile or absurd declarations).
const MAX_NODES: usize = 4096;

/// Copies a signature out of a plugin (or out of the host's own contract types).
pub(crate) fn signature(sig: &ffi::Signature) -> Result<Signature, String> {
    let contract = sig.contract.as_str().parse().map_err(|e| format!("{e}"))?;
    let wire = match sig.wire {
        ffi::Wire::BY_VALUE => Wire::ByValue,
        ffi::Wire::JSON => Wire::Json,
        ffi::Wire::ASYNC_JSON => Wire::AsyncJson,
        ffi::Wire(code) => return Err(format!("{contract}: unknown wire {code}")),
    };
    let describe = |desc| type_info(desc, wire).map_err(|e| format!("{contract}: {e}"));
    Ok(Signature {
        input: describe(&sig.input)?,
        output: describe(&sig.output)?,
        contract,
        wire,
    })
}

/// Checks a root module built against an older minor version of the API than the host's: its
/// fields must be the host's first fields, the same names with the same layouts (function
/// pointer fields by name). abi_stable's own check requires the loader to be the older side
/// (the interface may not have more fields than the library), which is the other direction
/// from graft's promise: a newer host loads plugins built against an older minor version.
pub(crate) fn check_older_root(
    host: &'static TypeLayout,
    plugin: &'static TypeLayout,
) -> Result<(), String> {
    let (Some(host_fields), Some(plugin_fields)) = (prefix_fields(host), prefix_fields(plugin))
    else {
        return Err("the root module is not a prefix type".into());
    };
    if plugin_fields.len() > host_fields.len() {
        return Err(format!(
            "the root module has {} fields, this host knows {}",
            plugin_fields.len(),
            host_fields.len()
        ));
    }
    for (ours, theirs) in host_fields.iter().zip(plugin_fields.iter()) {
        let (ours, theirs) = (field_text(&ours), field_text(&theirs));
        if ours != theirs {
            return Err(format!(
                "root module field {} differs from this host's {}",
                Bounded(&theirs),
                Bounded(&ours)
            ));
        }
    }
    Ok(())
}

/// The fields of the prefix type behind a `PrefixRef` layout.
fn prefix_fields(layout: &'static TypeLayout) -> Option<TLFields> {
    let pointee = layout.phantom_fields().iter().next()?.layout();
    match pointee.data() {
        TLData::PrefixType(prefix) => Some(prefix.fields),
        _ => None,
    }
}

/// A field's name and the canonical text of its layout.
fn field_text(field: &abi_stable::type_layout::TLField) -> String {
    if field.is_function() {
        return format!("{}: fn", field.name());
    }
    canonical(format!("{}: ", field.name()), field.layout())
}

fn type_info(desc: &TypeDesc, wire: Wire) -> Result<TypeInfo, String> {
    match (wire, desc.layout, desc.describe) {
        (Wire::ByValue, Some(layout), _) => Ok(layout_info(layout)),
        (Wire::Json | Wire::AsyncJson, _, Some(describe)) => json_info(&describe().into_string()),
        _ => Err("a type is declared without its description".into()),
    }
}

/// The fingerprint of a by-value type.
pub(crate) fn layout_fingerprint(layout: &'static TypeLayout) -> String {
    digest(&canonical(String::new(), layout))
}

/// Checks that a type is plain data, fit to outlive the library that declared it: numbers,
/// `bool`, atomics, arrays, structs, unions and enums of them; no pointer or reference, no
/// function pointer, no prefix type (vtables), nothing opaque.
pub(crate) fn plain_data(layout: &'static TypeLayout) -> Result<(), String> {
    let mut nodes = 0;
    plain(layout, 0, &mut nodes)
}

fn plain(layout: &'static TypeLayout, depth: usize, nodes: &mut usize) -> Result<(), String> {
    use abi_stable::type_layout::TLPrimitive as P;
    *nodes += 1;
    if depth >= MAX_DEPTH || *nodes > MAX_NODES {
        return Err("the type is too deep or too large to check".into());
    }
    let name = || layout.full_type().to_string();
    let fields = |fields: TLFields, nodes: &mut usize| {
        for field in fields.iter() {
            if field.is_function() {
                return Err(format!("field {} is a function pointer", field.name()));
            }
            plain(field.layout(), depth + 1, nodes)
                .map_err(|e| format!("field {}: {e}", field.name()))?;
        }
        Ok(())
    };
    match layout.data() {
        TLData::Primitive(P::SharedRef | P::MutRef | P::ConstPtr | P::MutPtr) => {
            Err(format!("{} is a pointer", name()))
        }
        TLData::Primitive(P::Array) => fields(layout.phantom_fields(), nodes),
        TLData::Primitive(_) => Ok(()),
        TLData::Struct { fields: f } | TLData::Union { fields: f } => fields(f, nodes),
        TLData::Enum(tl_enum) => fields(tl_enum.fields, nodes),
        TLData::PrefixType(_) => Err(format!("{} holds a vtable", name())),
        TLData::Opaque => Err(format!("{} is opaque", name())),
    }
}

/// Checks that a plain-data type has no padding bytes (every byte belongs to a field), so its
/// bytes can be saved as they are: no enum or union (whose bytes may be partly uninitialised),
/// and fields that fill their struct.
pub(crate) fn padding_free(layout: &'static TypeLayout) -> Result<(), String> {
    let mut nodes = 0;
    no_padding(layout, 0, &mut nodes)
}

fn no_padding(layout: &'static TypeLayout, depth: usize, nodes: &mut usize) -> Result<(), String> {
    use abi_stable::type_layout::TLPrimitive as P;
    *nodes += 1;
    if depth >= MAX_DEPTH || *nodes > MAX_NODES {
        return Err("the type is too deep or too large to check".into());
    }
    let name = || layout.full_type().to_string();
    let filled = |fields: TLFields, nodes: &mut usize| {
        let mut sum = 0;
        for field in fields.iter() {
            no_padding(field.layout(), depth + 1, nodes)
                .map_err(|e| format!("field {}: {e}", field.name()))?;
            sum += field.layout().size();
        }
        if sum == layout.size() {
            Ok(())
        } else {
            Err(format!(
                "{} has padding ({sum} of its {} bytes are fields)",
                name(),
                layout.size()
            ))
        }
    };
    match layout.data() {
        TLData::Primitive(P::Array) => {
            for element in layout.phantom_fields().iter() {
                no_padding(element.layout(), depth + 1, nodes)?;
            }
            Ok(())
        }
        TLData::Primitive(_) => Ok(()),
        TLData::Struct { fields } => filled(fields, nodes),
        TLData::Union { .. } | TLData::Enum(_) => Err(format!(
            "{} is an enum or union, whose bytes may be partly uninitialised",
            name()
        )),
        TLData::PrefixType(_) | TLData::Opaque => Err(format!("{} is not plain data", name())),
    }
}

/// The primitive fields of a padding-free plain-data type (see [`padding_free`]), as
/// `(offset, size)` pairs in order, tiling the value: what a copy taken while plugins write it
/// reads, one atomic load of each field's own size.
pub(crate) fn leaves(layout: &'static TypeLayout) -> Result<Vec<(usize, usize)>, String> {
    let mut out = Vec::new();
    let mut nodes = 0;
    collect_leaves(layout, 0, 0, &mut nodes, &mut out)?;
    Ok(out)
}

fn collect_leaves(
    layout: &'static TypeLayout,
    at: usize,
    depth: usize,
    nodes: &mut usize,
    out: &mut Vec<(usize, usize)>,
) -> Result<(), String> {
    use abi_stable::type_layout::TLPrimitive as P;
    *nodes += 1;
    if depth >= MAX_DEPTH || *nodes > MAX_NODES {
        return Err("the type is too deep or too large to check".into());
    }
    match layout.data() {
        TLData::Primitive(P::Array) => {
            let element = layout
                .phantom_fields()
                .iter()
                .next()
                .ok_or("an array without its element type")?
                .layout();
            if element.size() == 0 {
                return Ok(());
            }
            let start = out.len();
            collect_leaves(element, at, depth + 1, nodes, out)?;
            let one: Vec<(usize, usize)> = out[start..].to_vec();
            for i in 1..layout.size() / element.size() {
                let shift = i * element.size();
                out.extend(one.iter().map(|(offset, size)| (offset + shift, *size)));
            }
            Ok(())
        }
        TLData::Primitive(_) => {
            match layout.size() {
                0 => {}
                size @ (1 | 2 | 4 | 8) => out.push((at, size)),
                size => return Err(format!("a primitive of {size} bytes")),
            }
            Ok(())
        }
        TLData::Struct { fields } => {
            let mut cursor = at;
            for field in fields.iter() {
                let field = field.layout();
                cursor = cursor.next_multiple_of(field.alignment().max(1));
                collect_leaves(field, cursor, depth + 1, nodes, out)?;
                cursor += field.size();
            }
            Ok(())
        }
        _ => Err(format!(
            "{} is not a struct of primitives",
            layout.full_type()
        )),
    }
}

fn layout_info(layout: &'static TypeLayout) -> TypeInfo {
    TypeInfo {
        name: layout.full_type().to_string(),
        fingerprint: digest(&canonical(String::new(), layout)),
        shape: Some(std::sync::Arc::new(crate::shape::Shape::of_layout(layout))),
    }
}

/// `prefix` followed by the canonical text of `layout`.
fn canonical(prefix: String, layout: &'static TypeLayout) -> String {
    let mut walk = Walk {
        out: prefix,
        seen: HashSet::new(),
        nodes: 0,
    };
    walk.layout(layout, 0);
    walk.out
}

/// The canonical text of a layout, written depth first.
struct Walk {
    out: String,
    /// Types already written in full (by their full name with generics): written by name after.
    seen: HashSet<String>,
    nodes: usize,
}

impl Walk {
    fn layout(&mut self, layout: &'static TypeLayout, depth: usize) {
        self.nodes += 1;
        let name = layout.full_type().to_string();
        let _ = write!(self.out, "{name}[{},{}]", layout.size(), layout.alignment());
        if depth >= MAX_DEPTH || self.nodes > MAX_NODES || !self.seen.insert(name) {
            return;
        }
        match layout.data() {
            TLData::Primitive(primitive) => {
                let _ = write!(self.out, "={primitive:?}");
            }
            TLData::Opaque => self.out.push_str("=opaque"),
            TLData::Struct { fields } => self.fields("struct", fields, depth),
            TLData::Union { fields } => self.fields("union", fields, depth),
            TLData::Enum(tl_enum) => {
                let _ = write!(self.out, "=enum<{}>", tl_enum.variant_names);
                self.fields("", tl_enum.fields, depth);
            }
            // The host's and the plugin's own API types: checked by abi_stable at load.
            TLData::PrefixType(_) => self.out.push_str("=prefix"),
        }
    }

    fn fields(&mut self, kind: &str, fields: TLFields, depth: usize) {
        let _ = write!(self.out, "={kind}{{");
        for field in fields.iter() {
            let _ = write!(self.out, "{}:", field.name());
            if field.is_function() {
                self.out.push_str("fn,");
                continue;
            }
            self.layout(field.layout(), depth + 1);
            self.out.push(',');
        }
        self.out.push('}');
    }
}

fn json_info(description: &str) -> Result<TypeInfo, String> {
    let parsed = Description::parse(description)?;
    let canonical = match &parsed.shape {
        serde_json::Value::Null => format!("name:{}", parsed.name),
        shape => shape.to_string(),
    };
    Ok(TypeInfo {
        name: short_name(&parsed.name),
        fingerprint: digest(&canonical),
        shape: crate::shape::Shape::of_serde(description)
            .ok()
            .map(std::sync::Arc::new),
    })
}

/// `alloc::vec::Vec<my_crate::Item>` -> `Vec<Item>`: the names a reader knows the types by.
fn short_name(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut segment = String::new();
    for c in path.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            segment.push(c);
        } else {
            out.push_str(segment.rsplit("::").next().unwrap_or_default());
            segment.clear();
            out.push(c);
        }
    }
    out.push_str(segment.rsplit("::").next().unwrap_or_default());
    out
}

fn digest(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use abi_stable::std_types::{ROption, RString, RVec};
    use abi_stable::StableAbi;

    use super::*;

    #[repr(C)]
    #[derive(StableAbi)]
    struct Point {
        x: u64,
        label: RString,
    }

    mod other {
        use super::*;
        /// The same struct, declared again elsewhere (as another plugin's copy would be).
        #[repr(C)]
        #[derive(StableAbi)]
        pub(super) struct Point {
            x: u64,
            label: RString,
        }
        /// A field retyped.
        pub(super) mod retyped {
            use super::*;
            #[repr(C)]
            #[derive(StableAbi)]
            pub(crate) struct Point {
                x: u32,
                label: RString,
            }
        }
    }

    #[test]
    fn equal_structures_agree_and_a_retyped_field_does_not() {
        let a = layout_info(Point::LAYOUT);
        let b = layout_info(other::Point::LAYOUT);
        let c = layout_info(other::retyped::Point::LAYOUT);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!((a.name.as_str(), c.name.as_str()), ("Point", "Point"));
        assert_ne!(layout_info(u64::LAYOUT), layout_info(u32::LAYOUT));
        assert_ne!(
            layout_info(<RVec<u64>>::LAYOUT),
            layout_info(<RVec<u32>>::LAYOUT)
        );
        assert_ne!(
            layout_info(<ROption<RString>>::LAYOUT),
            layout_info(<ROption<u64>>::LAYOUT)
        );
    }

    #[test]
    fn json_types_are_compared_by_shape_and_named_shortly() {
        let describe = |d: extern "C" fn() -> RString| json_info(&d().into_string()).unwrap();
        let strings = describe(graft_api::runtime::describe::<Vec<String>>);
        assert_eq!(strings.name, "Vec<String>");
        assert_eq!(
            strings,
            describe(graft_api::runtime::describe::<Vec<String>>)
        );
        assert_ne!(strings, describe(graft_api::runtime::describe::<Vec<u64>>));
        assert!(json_info("not json").unwrap_err().contains("malformed"));
        assert!(json_info(&"x".repeat(MAX_DESCRIPTION + 1)).is_err());
    }

    #[test]
    fn only_types_whose_bytes_are_all_fields_can_be_saved() {
        use std::sync::atomic::AtomicU64;
        #[repr(C)]
        #[derive(StableAbi)]
        struct Filled {
            total: AtomicU64,
            by_key: [u32; 4],
        }
        #[repr(C)]
        #[derive(StableAbi)]
        struct Padded {
            flag: u8,
            total: u64,
        }
        #[repr(C)]
        #[derive(StableAbi)]
        struct Nested {
            inner: [Padded; 2],
        }
        assert_eq!(padding_free(Filled::LAYOUT), Ok(()));
        let error = padding_free(Padded::LAYOUT).unwrap_err();
        assert!(error.contains("padding (9 of its 16 bytes"), "{error}");
        assert!(padding_free(Nested::LAYOUT).is_err());
        assert!(padding_free(<ROption<u64>>::LAYOUT)
            .unwrap_err()
            .contains("enum"));
    }

    #[test]
    fn the_leaves_of_a_saved_type_tile_it_at_their_own_sizes() {
        use std::sync::atomic::{AtomicU32, AtomicU64};
        #[repr(C)]
        #[derive(StableAbi)]
        struct Counts {
            total: AtomicU64,
            small: [AtomicU32; 2],
            flags: [u8; 4],
            wide: u64,
        }
        let leaves = leaves(Counts::LAYOUT).unwrap();
        assert_eq!(
            leaves,
            [
                (0, 8),
                (8, 4),
                (12, 4),
                (16, 1),
                (17, 1),
                (18, 1),
                (19, 1),
                (24, 8)
            ]
        );
    }
}
