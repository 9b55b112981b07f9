//! Tables held by the host: named maps from keys to values that outlive every build of the
//! plugin, as Erlang's ETS tables outlive code loading.
//!
//! A plugin declares its tables in [`plugin!`](crate::plugin) (`tables: { NOTES: Table<String,
//! Note> = "notes" }`) and reaches them through the request's [`Context`]:
//!
//! ```no_run
//! use graft_api::table::{Record, Table};
//! use graft_api::{Context, Error};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Note {
//!     text: String,
//!     stars: u32,
//! }
//!
//! impl Record for Note {
//!     const SCHEMA: u32 = 1;
//! }
//!
//! graft_api::contract! {
//!     pub struct StarV1 = "star@1": json fn(String) -> u32;
//! }
//!
//! graft_api::plugin! {
//!     name: "notes",
//!     version: "1.0.0",
//!     tables: {
//!         NOTES: Table<String, Note> = "notes",
//!     },
//!     exports: { StarV1 => star },
//! }
//!
//! fn star(ctx: &Context<'_>, id: String) -> Result<u32, Error> {
//!     let notes = ctx.table(NOTES);
//!     let starred = notes.update(&id, |note| {
//!         note.map(|note| Note { stars: note.stars + 1, ..note })
//!     })?;
//!     starred.map(|note| note.stars).ok_or_else(|| Error::not_found(format!("no note {id}")))
//! }
//! # fn main() {}
//! ```
//!
//! - **Keys** are integers (`u32`, `u64`, `i64`), strings or bytes ([`Key`]); **values** are
//!   any serde type with a schema number ([`Record`]): plain data, strings, bytes, vectors,
//!   maps, structs and enums of them. The host stores each value encoded (postcard), in its
//!   own memory, so nothing in a table points into a library: it outlives every build.
//! - **Operations** are concurrent and lock-free for the plugin (the host's map is sharded;
//!   no global lock): [`TableRef::get`], [`insert`](TableRef::insert),
//!   [`remove`](TableRef::remove), [`update`](TableRef::update) with a closure,
//!   [`compare_and_swap`](TableRef::compare_and_swap), [`len`](TableRef::len) and a bounded
//!   [`scan`](TableRef::scan). An update's closure runs outside any lock and may run more than
//!   once when another request changed the entry meanwhile: keep it free of side effects.
//! - **Limits** per table (entries, bytes) are the operator's (`graft.toml`); past them a
//!   write fails with [`TableError::Full`], which the plugin maps to an answer (or lets `?` make
//!   it a 507).
//! - **Schemas and migrations**: a table's value type has a schema number. A build whose value
//!   type changes changes the number and carries `up` from the older schema and `down` back to
//!   it, each a function of one value; the host migrates every entry when the build goes live
//!   (or is rolled back), as it does state. Values are compared by structure (field names and
//!   types, not type names).
//! - **Durability** is the operator's choice per table: kept in memory only, saved when the
//!   server stops, every interval, or before each write is acknowledged (see the README).

#![allow(unsafe_code)]

use std::fmt;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::std_types::{ROption, RResult, RSlice, RStr, RString, RVec};
use abi_stable::StableAbi;
use serde::{de::DeserializeOwned, Serialize};

use crate::error::Error;
use crate::ffi::{Context, ErrorKind, FfiError};
use crate::runtime::{describe_record, flatten, panicked};
use crate::state::Direction;

/// A table's key type: how it is written as bytes (integers big-endian, so that bytes order as
/// numbers do).
pub trait Key: Sized + 'static {
    /// What lookups borrow (`str` for `String`, `[u8]` for `Vec<u8>`).
    type Ref: ?Sized;
    /// The key type, as the host records it.
    const KIND: KeyKind;
    /// Calls `f` with the bytes of `key`.
    fn with_bytes<R>(key: &Self::Ref, f: impl FnOnce(&[u8]) -> R) -> R;
    /// The key written as `bytes`, if they are one.
    fn from_bytes(bytes: &[u8]) -> Option<Self>;
}

/// The kind of a table's keys.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyKind(pub u8);

impl KeyKind {
    /// `u64`, big-endian.
    pub const U64: Self = Self(1);
    /// `u32`, big-endian.
    pub const U32: Self = Self(2);
    /// `i64`, big-endian with the sign bit flipped (bytes order as numbers).
    pub const I64: Self = Self(3);
    /// A UTF-8 string.
    pub const STRING: Self = Self(4);
    /// Bytes.
    pub const BYTES: Self = Self(5);

    /// Its name (`u64`, `string`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::U64 => "u64",
            Self::U32 => "u32",
            Self::I64 => "i64",
            Self::STRING => "string",
            Self::BYTES => "bytes",
            _ => "unknown",
        }
    }
}

macro_rules! integer_key {
    ($int:ty, $kind:ident, $flip:expr) => {
        impl Key for $int {
            type Ref = $int;
            const KIND: KeyKind = KeyKind::$kind;
            fn with_bytes<R>(key: &$int, f: impl FnOnce(&[u8]) -> R) -> R {
                f(&(*key ^ $flip).to_be_bytes())
            }
            fn from_bytes(bytes: &[u8]) -> Option<Self> {
                Some(<$int>::from_be_bytes(bytes.try_into().ok()?) ^ $flip)
            }
        }
    };
}
integer_key!(u64, U64, 0);
integer_key!(u32, U32, 0);
integer_key!(i64, I64, i64::MIN);

impl Key for String {
    type Ref = str;
    const KIND: KeyKind = KeyKind::STRING;
    fn with_bytes<R>(key: &str, f: impl FnOnce(&[u8]) -> R) -> R {
        f(key.as_bytes())
    }
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

impl Key for Vec<u8> {
    type Ref = [u8];
    const KIND: KeyKind = KeyKind::BYTES;
    fn with_bytes<R>(key: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
        f(key)
    }
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Some(bytes.to_vec())
    }
}

/// A table's value type: any serde type, with a schema number. A build whose value type changes
/// changes the number and carries migrations (see the [module docs](self)).
pub trait Record: Serialize + DeserializeOwned + 'static {
    /// The schema number; another value type in the same table needs another number.
    const SCHEMA: u32;
}

macro_rules! plain_record {
    ($($t:ty),*) => { $(impl Record for $t { const SCHEMA: u32 = 1; })* };
}
plain_record!(String, Vec<u8>, u64, i64, u32, bool);

/// A table a plugin declared in [`plugin!`](crate::plugin): a constant naming its slot.
pub struct Table<K, V> {
    slot: u32,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for Table<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for Table<K, V> {}

impl<K, V> Table<K, V> {
    /// The table at `slot` (what `plugin!` declares).
    #[doc(hidden)]
    pub const fn __at(slot: u32) -> Self {
        Self {
            slot,
            _types: PhantomData,
        }
    }
}

/// Why a table operation failed.
///
/// `?` turns it into an [`Error`]: [`TableError::Full`] answers 507 (insufficient storage), the
/// others 500. Match it to answer otherwise (a full table as a 409 or a 503, say).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TableError {
    /// The table is at its limit of entries or bytes (`max_entries`, `max_bytes`); nothing was
    /// written. The message names the table and the limit.
    Full(String),
    /// A value could not be encoded or decoded (a bug: the stored value is not of the table's
    /// type).
    Codec(String),
    /// The host refused the operation.
    Host(String),
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(message) | Self::Host(message) => f.write_str(message),
            Self::Codec(message) => write!(f, "table value: {message}"),
        }
    }
}

impl From<TableError> for Error {
    fn from(err: TableError) -> Self {
        match err {
            TableError::Full(message) => Error::with_kind(ErrorKind::TABLE_FULL, message),
            other => Error::with_kind(ErrorKind::INTERNAL, other),
        }
    }
}

impl TableError {
    fn from_ffi(err: FfiError) -> Self {
        if err.kind == ErrorKind::TABLE_FULL {
            Self::Full(err.message.into_string())
        } else {
            Self::Host(err.message.into_string())
        }
    }
}

/// One table of the request's generation, typed.
pub struct TableRef<'a, K, V> {
    slot: Option<&'a TableSlot>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<'a> Context<'a> {
    /// A table this plugin declared, in the generation this call runs in.
    pub fn table<K: Key, V: Record>(&self, table: Table<K, V>) -> TableRef<'a, K, V> {
        let slot = self
            .table
            .tables
            .get(self.plugin as usize)
            .and_then(|slots| slots.get(table.slot as usize));
        TableRef {
            slot,
            _types: PhantomData,
        }
    }
}

impl<K: Key, V: Record> TableRef<'_, K, V> {
    fn slot(&self) -> Result<&TableSlot, TableError> {
        self.slot
            .ok_or_else(|| TableError::Host("this plugin declares no such table".into()))
    }

    /// The value under `key`, if there is one.
    ///
    /// # Errors
    ///
    /// [`TableError::Codec`] if the stored value does not decode as `V`.
    pub fn get(&self, key: &K::Ref) -> Result<Option<V>, TableError> {
        let slot = self.slot()?;
        let mut found: Option<Result<V, TableError>> = None;
        let present = K::with_bytes(key, |key| {
            (slot.ops.get)(slot.table, RSlice::from_slice(key), Sink::new(&mut found))
        });
        ok(present)?;
        found.transpose()
    }

    /// Sets the value under `key`; returns whether it replaced one.
    ///
    /// # Errors
    ///
    /// [`TableError::Full`] past the table's limits (nothing written).
    pub fn insert(&self, key: &K::Ref, value: &V) -> Result<bool, TableError> {
        let slot = self.slot()?;
        let value = encode(value)?;
        ok(K::with_bytes(key, |key| {
            (slot.ops.insert)(
                slot.table,
                RSlice::from_slice(key),
                RSlice::from_slice(&value),
            )
        }))
    }

    /// Removes the value under `key`; returns whether there was one.
    ///
    /// # Errors
    ///
    /// If the host refused it.
    pub fn remove(&self, key: &K::Ref) -> Result<bool, TableError> {
        let slot = self.slot()?;
        ok(K::with_bytes(key, |key| {
            (slot.ops.remove)(slot.table, RSlice::from_slice(key))
        }))
    }

    /// Changes the value under `key` with `f`, which gets the value there now (or `None`) and
    /// returns the new one (`None` removes it); returns the new value. `f` runs outside any
    /// lock and runs again if another request changed the entry meanwhile, so it must be free
    /// of side effects.
    ///
    /// # Errors
    ///
    /// [`TableError::Full`] past the table's limits (nothing written); [`TableError::Codec`].
    pub fn update(
        &self,
        key: &K::Ref,
        mut f: impl FnMut(Option<V>) -> Option<V>,
    ) -> Result<Option<V>, TableError> {
        let slot = self.slot()?;
        let mut last: Option<Result<Option<V>, TableError>> = None;
        let mut change = |current: Option<&[u8]>, new: &mut RVec<u8>| -> Action {
            let current = match current.map(decode::<V>).transpose() {
                Ok(current) => current,
                Err(e) => {
                    last = Some(Err(e));
                    return Action::KEEP;
                }
            };
            let had = current.is_some();
            match f(current) {
                Some(value) => match postcard::to_extend(&value, Vec::new()) {
                    Ok(bytes) => {
                        new.extend_from_slice(&bytes);
                        last = Some(Ok(Some(value)));
                        Action::PUT
                    }
                    Err(e) => {
                        last = Some(Err(TableError::Codec(e.to_string())));
                        Action::KEEP
                    }
                },
                None => {
                    last = Some(Ok(None));
                    if had {
                        Action::REMOVE
                    } else {
                        Action::KEEP
                    }
                }
            }
        };
        ok(K::with_bytes(key, |key| {
            (slot.ops.update)(
                slot.table,
                RSlice::from_slice(key),
                Change::new(&mut change),
            )
        }))?;
        last.unwrap_or(Ok(None))
    }

    /// Replaces the value under `key` with `new` (`None` removes it) if it is `current` now
    /// (`None`: absent), compared as encoded. Returns `Ok(())` if it did, or the value there
    /// now.
    ///
    /// # Errors
    ///
    /// As [`TableRef::update`].
    pub fn compare_and_swap(
        &self,
        key: &K::Ref,
        current: Option<&V>,
        new: Option<&V>,
    ) -> Result<Result<(), Option<V>>, TableError> {
        let expected = current.map(encode).transpose()?;
        let replacement = new.map(encode).transpose()?;
        let slot = self.slot()?;
        let mut outcome: Option<Result<Result<(), Option<V>>, TableError>> = None;
        let mut change = |now: Option<&[u8]>, out: &mut RVec<u8>| -> Action {
            if now != expected.as_deref() {
                outcome = Some(now.map(decode::<V>).transpose().map(Err));
                return Action::KEEP;
            }
            outcome = Some(Ok(Ok(())));
            match (&replacement, now) {
                (Some(bytes), _) => {
                    out.extend_from_slice(bytes);
                    Action::PUT
                }
                (None, Some(_)) => Action::REMOVE,
                (None, None) => Action::KEEP,
            }
        };
        ok(K::with_bytes(key, |key| {
            (slot.ops.update)(
                slot.table,
                RSlice::from_slice(key),
                Change::new(&mut change),
            )
        }))?;
        outcome.unwrap_or(Ok(Ok(())))
    }

    /// How many entries the table holds.
    pub fn len(&self) -> u64 {
        self.slot.map_or(0, |slot| (slot.ops.len)(slot.table))
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// At most `limit` entries (and at most 10,000), in no particular order; `true` beside them
    /// if there are more. A bounded look, not a consistent snapshot: entries written meanwhile
    /// may or may not be in it. Keep an index in another table for ordered or paged listings.
    ///
    /// # Errors
    ///
    /// [`TableError::Codec`] if a key or value does not decode.
    pub fn scan(&self, limit: usize) -> Result<(Vec<(K, V)>, bool), TableError> {
        let slot = self.slot()?;
        let mut entries: Vec<Result<(K, V), TableError>> = Vec::new();
        let mut each = |key: &[u8], value: &[u8]| {
            let key =
                K::from_bytes(key).ok_or_else(|| TableError::Codec("a key of another type".into()));
            entries.push(key.and_then(|key| Ok((key, decode::<V>(value)?))));
        };
        let limit = u64::try_from(limit.min(MAX_SCAN)).unwrap_or(0);
        let more = ok((slot.ops.scan)(
            slot.table,
            limit,
            EntrySink::new(&mut each),
        ))?;
        Ok((entries.into_iter().collect::<Result<_, _>>()?, more))
    }
}

/// The most entries one [`TableRef::scan`] returns.
pub const MAX_SCAN: usize = 10_000;

fn ok<T>(result: RResult<T, FfiError>) -> Result<T, TableError> {
    result.into_result().map_err(TableError::from_ffi)
}

fn encode<V: Serialize>(value: &V) -> Result<Vec<u8>, TableError> {
    postcard::to_extend(value, Vec::new()).map_err(|e| TableError::Codec(e.to_string()))
}

fn decode<V: DeserializeOwned>(bytes: &[u8]) -> Result<V, TableError> {
    postcard::from_bytes(bytes).map_err(|e| TableError::Codec(e.to_string()))
}

// The FFI: what a table slot holds, the host's operations, and the callbacks they call.

/// One table of a plugin in a generation's link table: the host's table and its operations.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct TableSlot {
    /// The host's table, opaque to the plugin; valid while the generation is pinned.
    pub table: *const (),
    /// The host's table operations.
    pub ops: &'static TableOps,
}

// SAFETY: the host's table is `Send + Sync`; the slot only points at it.
unsafe impl Send for TableSlot {}
// SAFETY: as above.
unsafe impl Sync for TableSlot {}

impl fmt::Debug for TableSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableSlot").finish_non_exhaustive()
    }
}

/// The host's table operations. Appended to only (a plugin reads the fields it knows).
#[repr(C)]
#[derive(StableAbi)]
pub struct TableOps {
    /// Calls `found` with the value under `key`, if there is one; returns whether there is.
    pub get: extern "C" fn(
        table: *const (),
        key: RSlice<'_, u8>,
        found: Sink<'_>,
    ) -> RResult<bool, FfiError>,
    /// Sets the value under `key`; returns whether it replaced one.
    pub insert: extern "C" fn(
        table: *const (),
        key: RSlice<'_, u8>,
        value: RSlice<'_, u8>,
    ) -> RResult<bool, FfiError>,
    /// Removes the value under `key`; returns whether there was one.
    pub remove: extern "C" fn(table: *const (), key: RSlice<'_, u8>) -> RResult<bool, FfiError>,
    /// Calls `change` with the value under `key` (until it applies to the value there then)
    /// and applies what it returns; returns whether a value is there after.
    pub update: extern "C" fn(
        table: *const (),
        key: RSlice<'_, u8>,
        change: Change<'_>,
    ) -> RResult<bool, FfiError>,
    /// How many entries the table holds.
    pub len: extern "C" fn(table: *const ()) -> u64,
    /// Calls `each` with at most `limit` entries; returns whether there are more.
    pub scan:
        extern "C" fn(table: *const (), limit: u64, each: EntrySink<'_>) -> RResult<bool, FfiError>,
}

/// What a [`Change`] callback returns.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action(pub u8);

impl Action {
    /// Leave the entry as it is.
    pub const KEEP: Self = Self(0);
    /// Set the value to the bytes written.
    pub const PUT: Self = Self(1);
    /// Remove the entry.
    pub const REMOVE: Self = Self(2);
}

/// A plugin callback receiving one value (borrowed for the call).
#[repr(C)]
#[derive(StableAbi)]
pub struct Sink<'a> {
    data: *mut (),
    call: extern "C" fn(data: *mut (), value: RSlice<'_, u8>),
    _borrow: PhantomData<&'a mut ()>,
}

/// A plugin callback receiving entries (each borrowed for its call).
#[repr(C)]
#[derive(StableAbi)]
pub struct EntrySink<'a> {
    data: *mut (),
    call: extern "C" fn(data: *mut (), key: RSlice<'_, u8>, value: RSlice<'_, u8>),
    _borrow: PhantomData<&'a mut ()>,
}

/// A plugin callback deciding a change from the current value: writes the new value's bytes
/// to `new` and returns [`Action::PUT`], or returns [`Action::REMOVE`] or [`Action::KEEP`].
#[repr(C)]
#[derive(StableAbi)]
pub struct Change<'a> {
    data: *mut (),
    call: extern "C" fn(
        data: *mut (),
        current: ROption<RSlice<'_, u8>>,
        new: &mut RVec<u8>,
    ) -> Action,
    _borrow: PhantomData<&'a mut ()>,
}

impl Sink<'_> {
    /// Calls the plugin's callback (the host's side).
    pub fn call(&self, value: &[u8]) {
        (self.call)(self.data, RSlice::from_slice(value));
    }
}

impl EntrySink<'_> {
    /// Calls the plugin's callback (the host's side).
    pub fn call(&self, key: &[u8], value: &[u8]) {
        (self.call)(
            self.data,
            RSlice::from_slice(key),
            RSlice::from_slice(value),
        );
    }
}

impl Change<'_> {
    /// Calls the plugin's callback (the host's side): [`Action::PUT`] with the value written
    /// to `new`.
    pub fn call(&self, current: Option<&[u8]>, new: &mut RVec<u8>) -> Action {
        let current = current.map(RSlice::from_slice).into();
        (self.call)(self.data, current, new)
    }
}

impl<'a> Sink<'a> {
    fn new<V: DeserializeOwned>(found: &'a mut Option<Result<V, TableError>>) -> Self {
        extern "C" fn call<V: DeserializeOwned>(data: *mut (), value: RSlice<'_, u8>) {
            // SAFETY: `data` is the `&mut Option<..>` this sink was made from, borrowed for its
            // life, and the host calls back during the operation only.
            let found = unsafe { &mut *data.cast::<Option<Result<V, TableError>>>() };
            let decoded = catch_unwind(AssertUnwindSafe(|| decode::<V>(value.as_slice())));
            *found = Some(decoded.unwrap_or_else(|p| Err(TableError::Codec(panic_text(p)))));
        }
        Self {
            data: std::ptr::from_mut(found).cast(),
            call: call::<V>,
            _borrow: PhantomData,
        }
    }
}

impl<'a> EntrySink<'a> {
    fn new<F: FnMut(&[u8], &[u8])>(each: &'a mut F) -> Self {
        extern "C" fn call<F: FnMut(&[u8], &[u8])>(
            data: *mut (),
            key: RSlice<'_, u8>,
            value: RSlice<'_, u8>,
        ) {
            // SAFETY: `data` is the `&mut F` this sink was made from, borrowed for its life.
            let each = unsafe { &mut *data.cast::<F>() };
            let _ = catch_unwind(AssertUnwindSafe(|| each(key.as_slice(), value.as_slice())));
        }
        Self {
            data: std::ptr::from_mut(each).cast(),
            call: call::<F>,
            _borrow: PhantomData,
        }
    }
}

impl<'a> Change<'a> {
    fn new<F: FnMut(Option<&[u8]>, &mut RVec<u8>) -> Action>(change: &'a mut F) -> Self {
        extern "C" fn call<F: FnMut(Option<&[u8]>, &mut RVec<u8>) -> Action>(
            data: *mut (),
            current: ROption<RSlice<'_, u8>>,
            new: &mut RVec<u8>,
        ) -> Action {
            // SAFETY: `data` is the `&mut F` this change was made from, borrowed for its life.
            let change = unsafe { &mut *data.cast::<F>() };
            let current = current.into_option().map(|c| c.as_slice());
            // A panicking closure changes nothing (the caller sees the panic as no result).
            catch_unwind(AssertUnwindSafe(|| change(current, new))).unwrap_or(Action::KEEP)
        }
        Self {
            data: std::ptr::from_mut(change).cast(),
            call: call::<F>,
            _borrow: PhantomData,
        }
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    panicked(payload).message.into_string()
}

// Declarations: what `plugin!` records of each table.

/// One table a plugin declares, in its root module.
#[repr(C)]
#[derive(StableAbi)]
pub struct TableDecl {
    /// Its name, unique in the plugin.
    pub name: RStr<'static>,
    /// Its keys' type.
    pub key: KeyKind,
    /// Its value type's schema number.
    pub schema: u32,
    /// Describes its value type: name and serde shape, as JSON.
    pub value: extern "C" fn() -> RString,
    /// The migrations the plugin carries.
    pub migrations: RSlice<'static, TableMigrationDecl>,
}

/// One migration of a table's values the plugin carries.
#[repr(C)]
#[derive(StableAbi)]
pub struct TableMigrationDecl {
    /// [`Direction::UP`] (from `schema` to the table's) or [`Direction::DOWN`].
    pub direction: Direction,
    /// The other schema.
    pub schema: u32,
    /// Describes the other schema's value type.
    pub value: extern "C" fn() -> RString,
    /// Migrates one value: decodes `from`, writes the migrated value's bytes to `to`.
    pub run: extern "C" fn(from: RSlice<'_, u8>, to: &mut RVec<u8>) -> RResult<(), FfiError>,
}

/// The declaration of table `name` (what `plugin!` writes).
pub const fn table_decl<K: Key, V: Record>(
    name: &'static str,
    migrations: &'static [TableMigrationDecl],
) -> TableDecl {
    TableDecl {
        name: RStr::from_str(name),
        key: K::KIND,
        schema: V::SCHEMA,
        value: describe_record::<V>,
        migrations: RSlice::from_slice(migrations),
    }
}

/// The declaration of a migration of table values between `V` and `Other` (what `plugin!`
/// writes); `run` is [`run_migration`] for the direction.
pub const fn table_migration<V: Record, Other: Record>(
    direction: Direction,
    run: extern "C" fn(RSlice<'_, u8>, &mut RVec<u8>) -> RResult<(), FfiError>,
) -> TableMigrationDecl {
    TableMigrationDecl {
        direction,
        schema: Other::SCHEMA,
        value: describe_record::<Other>,
        run,
    }
}

/// Runs a table migration at the boundary: decodes a `From`, calls `f`, encodes the `To` into
/// `to`; panics caught.
pub fn run_migration<From: Record, To: Record>(
    from: RSlice<'_, u8>,
    to: &mut RVec<u8>,
    f: fn(From) -> Result<To, Error>,
) -> RResult<(), FfiError> {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let value: From = postcard::from_bytes(from.as_slice())
            .map_err(|e| Error::with_kind(ErrorKind::INTERNAL, format!("decoding: {e}")))?;
        let migrated = f(value)?;
        let bytes = postcard::to_extend(&migrated, Vec::new())
            .map_err(|e| Error::with_kind(ErrorKind::INTERNAL, format!("encoding: {e}")))?;
        to.extend_from_slice(&bytes);
        Ok(())
    }));
    flatten(result).into()
}
