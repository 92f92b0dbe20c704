//! The file-system error type and its errno mapping: the one place errors become errnos.

use tessera_common::net::NetError;
use tessera_common::{ErrorCode, WireError};

#[derive(Debug, Clone, thiserror::Error)]
pub enum FsError {
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("{0}")]
    Net(String),
    #[error("{0}")]
    Io(String),
    #[error("errno {0}")]
    Errno(i32),
}

impl From<NetError> for FsError {
    fn from(e: NetError) -> Self {
        FsError::Net(e.to_string())
    }
}

impl FsError {
    /// No server can take a block (all full, or they answered `NoSpace`): ENOSPC.
    pub fn no_space(why: &str) -> Self {
        FsError::Wire(WireError::new(ErrorCode::NoSpace, why))
    }

    pub fn errno(&self) -> i32 {
        match self {
            FsError::Wire(w) => match w.code {
                ErrorCode::NotFound => libc::ENOENT,
                ErrorCode::Exists => libc::EEXIST,
                ErrorCode::NotEmpty => libc::ENOTEMPTY,
                ErrorCode::NotDir => libc::ENOTDIR,
                ErrorCode::IsDir => libc::EISDIR,
                ErrorCode::NameTooLong => libc::ENAMETOOLONG,
                ErrorCode::InvalidArgument => libc::EINVAL,
                ErrorCode::PermissionDenied => libc::EPERM,
                ErrorCode::NoSpace => libc::ENOSPC,
                ErrorCode::CrossesDevice => libc::EXDEV,
                ErrorCode::TooManyLinks => libc::EMLINK,
                ErrorCode::NotSupported => libc::EOPNOTSUPP,
                ErrorCode::Busy => libc::EBUSY,
                ErrorCode::NoAttribute => libc::ENODATA,
                ErrorCode::TooBig => libc::E2BIG,
                ErrorCode::OutOfRange => libc::ERANGE,
                ErrorCode::WouldBlock => libc::EAGAIN,
                ErrorCode::Internal | ErrorCode::BadHash | ErrorCode::Unavailable | ErrorCode::NotLeader | ErrorCode::UnknownSession | ErrorCode::MissingBlock => libc::EIO,
            },
            FsError::Net(_) | FsError::Io(_) => libc::EIO,
            FsError::Errno(e) => *e,
        }
    }

    /// Whether this is worth an error line in the log (expected errors such as ENOENT are not).
    pub fn is_expected(&self) -> bool {
        matches!(self.errno(), libc::ENOENT | libc::EEXIST | libc::ENOTEMPTY | libc::ENOTDIR | libc::EISDIR | libc::ENAMETOOLONG | libc::EINVAL | libc::EPERM | libc::ENODATA | libc::ERANGE | libc::EOPNOTSUPP | libc::EAGAIN | libc::EINTR | libc::ENXIO)
    }
}

pub type FsResult<T> = Result<T, FsError>;
