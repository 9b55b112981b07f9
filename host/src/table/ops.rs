//! The table operations plugins call (one of the host's modules with `unsafe` code): the
//! `extern "C"` functions of [`TableOps`], behind every plugin's [`TableSlot`]s.
//!
//! A slot's `table` is a pointer to a [`Table`] that the generation owning the link table holds
//! (an `Arc`), so it is valid for as long as a plugin can reach the slot: during a call made in
//! that generation, which holds a pin. Every function catches panics: none unwinds into the
//! plugin. Plugin callbacks (the sinks, the change) catch their own.

#![allow(unsafe_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use graft_api::ffi::{ErrorKind, FfiError};
use graft_api::table::{Action, Change, EntrySink, Sink, TableOps, TableSlot, MAX_SCAN};

use super::entries::{Decision, Refusal, Table};

static OPS: TableOps = TableOps {
    get,
    insert,
    remove,
    update,
    len,
    scan,
};

/// The slot through which a plugin reaches `table`; valid while `table` is held.
pub(crate) fn slot(table: &Arc<Table>) -> TableSlot {
    TableSlot {
        table: Arc::as_ptr(table).cast(),
        ops: &OPS,
    }
}

/// The table behind a slot's pointer.
fn table<'a>(table: *const ()) -> &'a Table {
    // SAFETY: `table` comes from `slot`, which the host put in the link table of a generation
    // that holds the `Arc<Table>`; a plugin calls these functions only during a call in that
    // generation (the caller's pin keeps it alive), so the table outlives this borrow.
    unsafe { &*table.cast::<Table>() }
}

/// Runs an operation with panics caught and refusals turned into errors.
fn run<T>(op: impl FnOnce() -> Result<T, Refusal>) -> RResult<T, FfiError> {
    match catch_unwind(AssertUnwindSafe(op)) {
        Ok(Ok(value)) => RResult::ROk(value),
        Ok(Err(Refusal::Full(message))) => RResult::RErr(FfiError {
            kind: ErrorKind::TABLE_FULL,
            message: RString::from(message),
        }),
        Ok(Err(Refusal::NotDurable(message))) => RResult::RErr(FfiError {
            kind: ErrorKind::UNAVAILABLE,
            message: RString::from(message),
        }),
        Err(_) => RResult::RErr(FfiError {
            kind: ErrorKind::INTERNAL,
            message: RString::from("a table operation failed in the host"),
        }),
    }
}

extern "C" fn get(t: *const (), key: RSlice<'_, u8>, found: Sink<'_>) -> RResult<bool, FfiError> {
    run(|| match table(t).get(key.as_slice()) {
        Some(value) => {
            found.call(&value);
            Ok(true)
        }
        None => Ok(false),
    })
}

extern "C" fn insert(
    t: *const (),
    key: RSlice<'_, u8>,
    value: RSlice<'_, u8>,
) -> RResult<bool, FfiError> {
    run(|| table(t).insert(key.as_slice(), value.as_slice()))
}

extern "C" fn remove(t: *const (), key: RSlice<'_, u8>) -> RResult<bool, FfiError> {
    run(|| table(t).remove(key.as_slice()))
}

extern "C" fn update(
    t: *const (),
    key: RSlice<'_, u8>,
    change: Change<'_>,
) -> RResult<bool, FfiError> {
    run(|| {
        table(t).update(key.as_slice(), |current| {
            let mut new = RVec::new();
            match change.call(current, &mut new) {
                Action::PUT => Decision::Put(new.into_vec()),
                Action::REMOVE => Decision::Remove,
                _ => Decision::Keep,
            }
        })
    })
}

extern "C" fn len(t: *const ()) -> u64 {
    catch_unwind(|| table(t).len()).unwrap_or(0)
}

extern "C" fn scan(t: *const (), limit: u64, each: EntrySink<'_>) -> RResult<bool, FfiError> {
    run(|| {
        let limit = usize::try_from(limit).unwrap_or(MAX_SCAN).min(MAX_SCAN);
        let (entries, more) = table(t).scan(limit);
        for (key, value) in &entries {
            each.call(key, value);
        }
        Ok(more)
    })
}
