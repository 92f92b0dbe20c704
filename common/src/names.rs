//! Validation rules for names (DESIGN.md, "Security"): one place, used by client and server.

use crate::{ErrorCode, WireError};

pub const MAX_NAME_LEN: usize = 255;
pub const MAX_SYMLINK_LEN: usize = 4096;

/// A directory entry name: not empty, not `.`/`..`, no `/` or NUL, at most 255 bytes.
pub fn check_name(name: &[u8]) -> Result<(), WireError> {
    if name.len() > MAX_NAME_LEN {
        return Err(WireError::new(ErrorCode::NameTooLong, "name longer than 255 bytes"));
    }
    if name.is_empty() || name == b"." || name == b".." {
        return Err(WireError::new(ErrorCode::InvalidArgument, "empty, '.' or '..' name"));
    }
    if name.iter().any(|&b| b == b'/' || b == 0) {
        return Err(WireError::new(ErrorCode::InvalidArgument, "name contains '/' or NUL"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name(b"a").is_ok());
        assert!(check_name(&[b'x'; 255]).is_ok());
        assert_eq!(check_name(&[b'x'; 256]).unwrap_err().code, ErrorCode::NameTooLong);
        assert_eq!(check_name(b"a/b").unwrap_err().code, ErrorCode::InvalidArgument);
        assert_eq!(check_name(b"a\0").unwrap_err().code, ErrorCode::InvalidArgument);
        assert_eq!(check_name(b"..").unwrap_err().code, ErrorCode::InvalidArgument);
        assert_eq!(check_name(b"").unwrap_err().code, ErrorCode::InvalidArgument);
    }
}
