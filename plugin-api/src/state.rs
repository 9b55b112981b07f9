//! State held by the host: a value that outlives every build of the plugin.
//!
//! A plugin declares one state type in [`plugin!`](crate::plugin) (`state: Counter2 { .. }`).
//! The host allocates it, initialises it once with [`State::init`], and keeps it across
//! deploys, rollbacks and every unload policy; every request of a generation reaches the same
//! value through [`Context::state`]. Because the value outlives the library that built it, it
//! must be *plain data*: `#[repr(C)]`, `StableAbi`, no `Drop`, no pointer or reference and no
//! function pointer anywhere inside (those would point into a library that may be unmapped).
//! Integers, floats, `bool`, atomics, arrays and structs or enums of them qualify; the host
//! walks the type's layout at link and refuses anything else, and a type with drop glue does
//! not compile. The plugin picks its own synchronisation inside: atomics, or a lock built from
//! them.
//!
//! A state type has a schema number. A build whose state type changes must change the number
//! and carry the migrations: `up` from the older schema and `down` back to it, as an OTP appup
//! carries both. The host runs the newer build's `up` when it goes live over the older one,
//! and the current build's `down` when an older build goes live over it (a rollback), so what
//! a request wrote is never lost and nothing stale comes back. See the crate docs.
//!
//! A state type that sets [`State::PERSIST`] is also saved to the host's data directory (when
//! the server stops, and periodically if configured) and comes back when the host restarts: at
//! the same schema as it is, or through the starting build's `up` from the saved schema. Its
//! type must have no padding bytes (the host checks at load), since the snapshot is the value's
//! bytes.

#![allow(unsafe_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::std_types::utypeid::{new_utypeid, UTypeId};
use abi_stable::std_types::{RResult, RSlice};
use abi_stable::type_layout::TypeLayout;
use abi_stable::StableAbi;

use crate::error::Error;
use crate::ffi::{Context, ErrorKind, FfiError};
use crate::runtime::flatten;

/// A plugin's state type: plain data the host keeps across builds (see the [module docs](self)).
pub trait State: StableAbi + Send + Sync + Sized + 'static {
    /// The schema number; a different type under the same plugin needs a different number.
    const SCHEMA: u32;

    /// Whether the host saves the value to its data directory so that a restart comes back
    /// with it (off by default: state lives as long as the process).
    const PERSIST: bool = false;

    /// The value a fresh host starts with.
    fn init() -> Self;
}

/// Declares a migration in [`plugin!`](crate::plugin): `up Older => fn` or `down Older => fn`.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Direction(pub u8);

impl Direction {
    /// From an older schema to the plugin's.
    pub const UP: Self = Self(1);
    /// From the plugin's schema to an older one.
    pub const DOWN: Self = Self(2);
}

/// A state migration function: reads `from`, writes a whole new value to `to`.
pub type MigrateFn = extern "C" fn(from: *const u8, to: *mut u8) -> RResult<(), FfiError>;

/// One migration a plugin carries.
#[repr(C)]
#[derive(StableAbi)]
pub struct MigrationDecl {
    /// [`Direction::UP`] (from `schema` to the plugin's) or [`Direction::DOWN`] (the reverse).
    pub direction: Direction,
    /// The other schema.
    pub schema: u32,
    /// The other schema's type.
    pub layout: &'static TypeLayout,
    /// Runs the migration.
    pub run: extern "C" fn(from: *const u8, to: *mut u8) -> RResult<(), FfiError>,
}

/// A plugin's state declaration, in its root module.
#[repr(C)]
#[derive(StableAbi)]
pub struct StateDecl {
    /// The state type's schema number.
    pub schema: u32,
    /// The state type.
    pub layout: &'static TypeLayout,
    /// The type's identity within the plugin's library, which [`Context::state`] compares.
    pub type_id: extern "C" fn() -> UTypeId,
    /// Writes the initial value to uninitialised memory of the type's size and alignment.
    pub init: extern "C" fn(to: *mut u8) -> RResult<(), FfiError>,
    /// The migrations the plugin carries.
    pub migrations: RSlice<'static, MigrationDecl>,
    /// Whether the host saves the value across restarts ([`State::PERSIST`]).
    pub persist: bool,
}

/// Where a plugin's state lives in one generation, in its link table.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct StateSlot {
    /// The value, in host memory; null for a stateless plugin.
    pub value: *const u8,
    /// The identity of the plugin's declared state type, as its own library computed it.
    pub type_id: UTypeId,
}

// SAFETY: the value is a `State`, which is `Send + Sync`; the slot only points at it.
unsafe impl Send for StateSlot {}
// SAFETY: as above.
unsafe impl Sync for StateSlot {}

/// Compile-time proof that a state type has no drop glue: the host frees it without calling
/// into any library.
struct NoDrop<S>(std::marker::PhantomData<S>);

impl<S> NoDrop<S> {
    const OK: () = assert!(
        !std::mem::needs_drop::<S>(),
        "a graft state type must be plain data: no Drop, no owned heap memory"
    );
}

/// The declaration of `S` with its migrations (what `plugin!` writes).
pub const fn state_decl<S: State>(migrations: &'static [MigrationDecl]) -> StateDecl {
    #[allow(clippy::let_unit_value)]
    let () = NoDrop::<S>::OK;
    StateDecl {
        schema: S::SCHEMA,
        layout: S::LAYOUT,
        type_id: new_utypeid::<S>,
        init: init::<S>,
        migrations: RSlice::from_slice(migrations),
        persist: S::PERSIST,
    }
}

/// The declaration of a migration of `S` to or from `Other` (what `plugin!` writes).
pub const fn migration<S: State, Other: State>(
    direction: Direction,
    run: MigrateFn,
) -> MigrationDecl {
    #[allow(clippy::let_unit_value)]
    let () = NoDrop::<Other>::OK;
    MigrationDecl {
        direction,
        schema: Other::SCHEMA,
        layout: Other::LAYOUT,
        run,
    }
}

extern "C" fn init<S: State>(to: *mut u8) -> RResult<(), FfiError> {
    let result = catch_unwind(|| Ok(S::init()));
    match flatten(result) {
        Ok(value) => {
            // SAFETY: the host passes memory of `S`'s layout (from the declaration), unaliased.
            unsafe { to.cast::<S>().write(value) };
            RResult::ROk(())
        }
        Err(err) => RResult::RErr(err),
    }
}

/// Runs a migration function at the boundary: panics caught, the result written to `to`.
///
/// # Safety
///
/// `from` must point at a valid `From` and `to` at memory of `To`'s layout (the host passes
/// them per the declaration whose types it checked).
pub unsafe fn run_migration<From, To>(
    from: *const u8,
    to: *mut u8,
    f: fn(&From) -> Result<To, Error>,
) -> RResult<(), FfiError> {
    // SAFETY: per this function's contract.
    let from = unsafe { &*from.cast::<From>() };
    match flatten(catch_unwind(AssertUnwindSafe(|| f(from)))) {
        Ok(value) => {
            // SAFETY: per this function's contract.
            unsafe { to.cast::<To>().write(value) };
            RResult::ROk(())
        }
        Err(err) => RResult::RErr(err),
    }
}

impl StateSlot {
    /// The slot of a stateless plugin.
    pub fn empty() -> Self {
        Self {
            value: std::ptr::null(),
            type_id: new_utypeid::<()>(),
        }
    }

    /// The state if it is an `S`.
    pub(crate) fn get<S: State>(&self) -> Option<&S> {
        if self.value.is_null() || self.type_id != new_utypeid::<S>() {
            return None;
        }
        // SAFETY: the host put a value of the plugin's declared state type here, and its type
        // id (computed by this library) is `S`'s; the host keeps the value alive at least as
        // long as the link table holding this slot.
        Some(unsafe { &*self.value.cast::<S>() })
    }
}

impl<'a> Context<'a> {
    /// The plugin's state, held by the host: the value of this request's generation.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::INTERNAL`] if `S` is not the state type the plugin declared in
    /// [`plugin!`](crate::plugin) (or it declared none).
    pub fn state<S: State>(&self) -> Result<&'a S, Error> {
        let slot = self.table.states.get(self.plugin as usize);
        slot.and_then(StateSlot::get::<S>).ok_or_else(|| {
            Error::with_kind(
                ErrorKind::INTERNAL,
                format!(
                    "this plugin declares no state of type {}",
                    std::any::type_name::<S>()
                ),
            )
        })
    }
}
