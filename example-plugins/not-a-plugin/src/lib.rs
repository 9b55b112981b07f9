//! Test library: a well-formed shared library that exports a C function but no graft root module.

/// Adds one; the only export.
// A C export needs `#[no_mangle]`, which the `unsafe_code` lint flags; nothing else is unsafe.
#[allow(unsafe_code)]
#[no_mangle]
pub extern "C" fn not_a_plugin_add_one(x: u32) -> u32 {
    x.wrapping_add(1)
}
