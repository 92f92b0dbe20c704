//! Errors that cross the wire: a stable numeric code plus a message.

use serde::{Deserialize, Serialize};

/// Stable numeric error codes. Never renumber; add at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u16)]
pub enum ErrorCode {
    Internal = 1,
    NotFound = 2,
    Exists = 3,
    NotEmpty = 4,
    NotDir = 5,
    IsDir = 6,
    NameTooLong = 7,
    InvalidArgument = 8,
    PermissionDenied = 9,
    BadHash = 10,
    Unavailable = 11,
    NotLeader = 12,
    UnknownSession = 13,
    NoSpace = 14,
    CrossesDevice = 15,
    TooManyLinks = 16,
    NotSupported = 17,
    Busy = 18,
    /// A commit names a block that no chunk server holds.
    MissingBlock = 19,
    /// No extended attribute of that name (ENODATA).
    NoAttribute = 20,
    /// An extended attribute value over the limit (E2BIG).
    TooBig = 21,
    /// An extended attribute name over the limit (ERANGE).
    OutOfRange = 22,
    /// A lock is held by another owner (`F_SETLK`: EAGAIN).
    WouldBlock = 23,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError { code, message: message.into() }
    }
}
