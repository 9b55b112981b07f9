//! Plugin-side calls: typed imports, calling them through a [`Context`], and the [`Error`] type.

use std::fmt;
use std::marker::PhantomData;

use abi_stable::std_types::{RSlice, RString, RVec};
use serde::{de::DeserializeOwned, Serialize};

use crate::ffi::{Context, ErrorKind, FfiError};

/// A typed handle on one of the plugin's imports: the contract and its slot.
///
/// Declared in the `imports` section of [`plugin!`](crate::plugin); the slot is the import's
/// position there, so a call indexes the link table and never looks a name up.
pub struct Import<I, O> {
    slot: u32,
    contract: &'static str,
    _types: PhantomData<fn(I) -> O>,
}

impl<I, O> Import<I, O> {
    #[doc(hidden)]
    pub const fn __at(slot: u32, contract: &'static str) -> Self {
        Self {
            slot,
            contract,
            _types: PhantomData,
        }
    }

    /// The contract this import is bound to, `name@N`.
    pub const fn contract(&self) -> &'static str {
        self.contract
    }
}

impl<I, O> Clone for Import<I, O> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<I, O> Copy for Import<I, O> {}

impl<I, O> fmt::Debug for Import<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Import")
            .field("slot", &self.slot)
            .field("contract", &self.contract)
            .finish()
    }
}

impl Context<'_> {
    /// Calls one of this plugin's imports, in the generation this call runs in.
    ///
    /// The input is encoded as JSON, the callee runs, its output is decoded as `O`.
    ///
    /// # Errors
    ///
    /// The callee's error (its kind kept, its message prefixed with the contract), or a
    /// [`ErrorKind::BAD_INPUT`] / [`ErrorKind::BAD_OUTPUT`] error when encoding fails.
    pub fn call<I: Serialize, O: DeserializeOwned>(
        &self,
        import: Import<I, O>,
        input: &I,
    ) -> Result<O, Error> {
        let bytes = serde_json::to_vec(input).map_err(|e| {
            Error::with_kind(
                ErrorKind::BAD_INPUT,
                format!("encoding input for {}: {e}", import.contract),
            )
        })?;
        let output = self.call_raw(import.slot, &bytes).map_err(|e| Error {
            kind: e.kind,
            message: format!("{}: {}", import.contract, e.message),
        })?;
        serde_json::from_slice(&output).map_err(|e| {
            Error::with_kind(
                ErrorKind::BAD_OUTPUT,
                format!("decoding output of {}: {e}", import.contract),
            )
        })
    }

    /// Calls import slot `slot` with raw input bytes; the untyped form of [`Context::call`].
    ///
    /// # Errors
    ///
    /// The callee's error, or [`ErrorKind::UNBOUND_IMPORT`] when the slot does not exist.
    pub fn call_raw(&self, slot: u32, input: &[u8]) -> Result<RVec<u8>, FfiError> {
        let binding = self
            .table
            .plugins
            .get(self.plugin as usize)
            .and_then(|links| links.imports.get(slot as usize))
            .ok_or_else(|| FfiError {
                kind: ErrorKind::UNBOUND_IMPORT,
                message: RString::from(format!("import slot {slot} is not bound")),
            })?;
        let callee = Context {
            table: self.table,
            plugin: binding.plugin,
        };
        (binding.func)(&callee, RSlice::from_slice(input)).into_result()
    }
}

/// The error a plugin function returns: a kind and a message.
///
/// Any `std::error::Error` converts into it with `?` (as [`ErrorKind::PLUGIN`]), so plugin code
/// can use its own error types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    /// A plugin error with this message.
    pub fn new(message: impl fmt::Display) -> Self {
        Self::with_kind(ErrorKind::PLUGIN, message)
    }

    /// An error of the given kind.
    pub fn with_kind(kind: ErrorKind, message: impl fmt::Display) -> Self {
        Self {
            kind,
            message: message.to_string(),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn into_ffi(self) -> FfiError {
        FfiError {
            kind: self.kind,
            message: RString::from(self.message),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(err: E) -> Self {
        Self::new(err)
    }
}
