//! Plugin lifecycle hooks (`pre_activate`, `post_activate`, `pre_unload`): what they are called
//! and how their results read. They run under a deadline ([`crate::deadline`]): before a
//! release goes live (a failure vetoes it), right after, and before a library is closed (on the
//! unloader's thread).

use abi_stable::std_types::RResult;
use graft_api::ffi::FfiError;

/// A plugin lifecycle hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    PreActivate,
    PostActivate,
    PreUnload,
}

impl Hook {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Hook::PreActivate => "pre_activate",
            Hook::PostActivate => "post_activate",
            Hook::PreUnload => "pre_unload",
        }
    }
}

/// Why a hook did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HookFailure {
    /// It returned an error or panicked.
    Failed(String),
    /// It was still running at its deadline.
    TimedOut,
}

/// An initialiser's or hook's result, its error made a string at once (it may point into the library).
pub(crate) fn ffi_result(result: RResult<(), FfiError>) -> Result<(), String> {
    match result {
        RResult::ROk(()) => Ok(()),
        RResult::RErr(e) => Err(format!("{}: {}", e.kind, e.message)),
    }
}
