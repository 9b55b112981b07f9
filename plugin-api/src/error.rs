//! The error a plugin function returns.

use std::fmt;

use abi_stable::std_types::RString;

use crate::ffi::{ErrorKind, FfiError};

/// The error a plugin function returns: a kind and a message.
///
/// Any `std::error::Error` converts into it with `?` (as [`ErrorKind::PLUGIN`]), so plugin code
/// can use its own error types. The kind says what `graft serve` answers: [`Error::not_found`]
/// is a 404, [`Error::conflict`] a 409, [`Error::invalid`] a 422, [`Error::unavailable`] a 503;
/// [`Error::new`] and everything else a 500.
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

    /// What the request names does not exist (404).
    pub fn not_found(message: impl fmt::Display) -> Self {
        Self::with_kind(ErrorKind::NOT_FOUND, message)
    }

    /// The request conflicts with the current state (409).
    pub fn conflict(message: impl fmt::Display) -> Self {
        Self::with_kind(ErrorKind::CONFLICT, message)
    }

    /// The request itself is malformed: a body, a query or a path parameter that does not
    /// decode (400).
    pub fn bad_request(message: impl fmt::Display) -> Self {
        Self::with_kind(ErrorKind::BAD_INPUT, message)
    }

    /// The input is well-formed but its content is invalid (422).
    pub fn invalid(message: impl fmt::Display) -> Self {
        Self::with_kind(ErrorKind::INVALID, message)
    }

    /// The plugin cannot serve now; the caller may retry (503).
    pub fn unavailable(message: impl fmt::Display) -> Self {
        Self::with_kind(ErrorKind::UNAVAILABLE, message)
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

    pub(crate) fn from_ffi(err: FfiError) -> Self {
        Self {
            kind: err.kind,
            message: err.message.into_string(),
        }
    }

    /// Prefixes the message with where the error came from (`frob@1: ...`).
    pub(crate) fn prefix(&mut self, what: &str) {
        self.message.insert_str(0, ": ");
        self.message.insert_str(0, what);
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
