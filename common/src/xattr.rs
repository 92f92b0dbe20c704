//! Rules for extended attributes: one place, used by client and server. The limits are
//! Linux's (`XATTR_NAME_MAX`, `XATTR_SIZE_MAX`, `XATTR_LIST_MAX`).

use crate::{ErrorCode, WireError};

/// Longest attribute name, namespace prefix included.
pub const MAX_NAME_LEN: usize = 255;
/// Largest attribute value.
pub const MAX_VALUE_LEN: usize = 64 * 1024;
/// Largest list of one inode's names (each followed by a NUL), so `listxattr` always fits.
pub const MAX_LIST_LEN: usize = 64 * 1024;

/// The access ACL of an inode, in the kernel's `posix_acl_xattr` encoding.
pub const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
/// The default ACL of a directory, inherited by what is created in it.
pub const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";

/// Namespaces stored as opaque values; the kernel checks who may use which.
const PREFIXES: [&[u8]; 3] = [b"user.", b"trusted.", b"security."];

/// An attribute name: at most 255 bytes (`OutOfRange`, as Linux's ERANGE), no NUL, in the
/// `user.`, `trusted.` or `security.` namespace with something after the prefix, or one of the
/// two POSIX ACL names; any other namespace is `NotSupported`.
pub fn check_name(name: &[u8]) -> Result<(), WireError> {
    if name.len() > MAX_NAME_LEN {
        return Err(WireError::new(ErrorCode::OutOfRange, "attribute name longer than 255 bytes"));
    }
    if name.is_empty() || name.contains(&0) {
        return Err(WireError::new(ErrorCode::InvalidArgument, "empty attribute name or one with NUL"));
    }
    if name == ACL_ACCESS || name == ACL_DEFAULT {
        return Ok(());
    }
    match PREFIXES.iter().find(|p| name.starts_with(p)) {
        Some(p) if name.len() > p.len() => Ok(()),
        Some(_) => Err(WireError::new(ErrorCode::InvalidArgument, "attribute name is only a namespace prefix")),
        None => Err(WireError::new(ErrorCode::NotSupported, "attribute namespace not supported (user., trusted., security. and POSIX ACLs are)")),
    }
}

/// An attribute value: at most 64 KiB (`TooBig`, as Linux's E2BIG).
pub fn check_value(value: &[u8]) -> Result<(), WireError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(WireError::new(ErrorCode::TooBig, "attribute value larger than 64 KiB"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values() {
        assert!(check_name(b"user.a").is_ok());
        assert!(check_name(b"trusted.x").is_ok());
        assert!(check_name(b"security.capability").is_ok());
        assert!(check_name(ACL_ACCESS).is_ok());
        let mut long = b"user.".to_vec();
        long.resize(255, b'x');
        assert!(check_name(&long).is_ok());
        long.push(b'x');
        assert_eq!(check_name(&long).unwrap_err().code, ErrorCode::OutOfRange);
        assert_eq!(check_name(b"user.").unwrap_err().code, ErrorCode::InvalidArgument);
        assert_eq!(check_name(b"user.a\0b").unwrap_err().code, ErrorCode::InvalidArgument);
        assert_eq!(check_name(b"system.other").unwrap_err().code, ErrorCode::NotSupported);
        assert_eq!(check_name(b"os2.x").unwrap_err().code, ErrorCode::NotSupported);
        assert!(check_value(&vec![0; MAX_VALUE_LEN]).is_ok());
        assert_eq!(check_value(&vec![0; MAX_VALUE_LEN + 1]).unwrap_err().code, ErrorCode::TooBig);
    }
}
