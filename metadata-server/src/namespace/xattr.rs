//! Extended attributes: one record per (inode, name) in `Cf::Xattrs`, the value after the
//! encoding version byte. They go with their inode when it is dropped. POSIX ACLs are two of
//! them (see `acl`), kept consistent with the permission bits here.

use super::acl::Acl;
use super::*;
use tessera_common::xattr::{self, ACL_ACCESS, ACL_DEFAULT, MAX_LIST_LEN};

fn xattr_key(ino: u64, name: &[u8]) -> Vec<u8> {
    dirent_key(ino, name)
}

fn no_attribute() -> WireError {
    err(ErrorCode::NoAttribute, "no such attribute")
}

fn enc_value(v: &[u8]) -> Vec<u8> {
    [&[V1][..], v].concat()
}

fn dec_value(v: &[u8]) -> Result<Vec<u8>, WireError> {
    match v.split_first() {
        Some((&V1, rest)) => Ok(rest.to_vec()),
        _ => Err(err(ErrorCode::Internal, "corrupt attribute record")),
    }
}

impl Namespace {
    pub fn get_xattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, WireError> {
        xattr::check_name(name)?;
        let v = self.store.view();
        reads::inode_in(&v, ino)?;
        v.get(Cf::Xattrs, &xattr_key(ino, name))?.map(|x| dec_value(&x)).transpose()?.ok_or_else(no_attribute)
    }

    /// Every attribute name of `ino`, in byte order.
    pub fn list_xattr(&self, ino: u64) -> Result<Vec<Vec<u8>>, WireError> {
        let v = self.store.view();
        reads::inode_in(&v, ino)?;
        Ok(v.scan(Cf::Xattrs, &ino_key(ino), &ino_key(ino), usize::MAX)?.into_iter().map(|(k, _)| k[8..].to_vec()).collect())
    }

    fn xattr_names(&self, ino: u64) -> Result<Vec<Vec<u8>>, WireError> {
        Ok(self.store.scan(Cf::Xattrs, &ino_key(ino), &ino_key(ino), usize::MAX)?.into_iter().map(|(k, _)| k[8..].to_vec()).collect())
    }

    /// `SetXattr`. Reply: `Done`.
    pub(super) fn set_xattr(&self, tx: &mut Txn, ino: u64, name: &[u8], value: &[u8], flags: u32) -> Result<MetaResponse, WireError> {
        xattr::check_name(name)?;
        xattr::check_value(value)?;
        if flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 || flags == XATTR_CREATE | XATTR_REPLACE {
            return Err(err(ErrorCode::InvalidArgument, "bad setxattr flags"));
        }
        let mut r = tx.inode(ino)?;
        let names = self.xattr_names(ino)?;
        let exists = names.iter().any(|n| n == name);
        if exists && flags & XATTR_CREATE != 0 {
            return Err(err(ErrorCode::Exists, "attribute exists"));
        }
        if !exists && flags & XATTR_REPLACE != 0 {
            return Err(no_attribute());
        }
        if !exists && names.iter().map(|n| n.len() + 1).sum::<usize>() + name.len() + 1 > MAX_LIST_LEN {
            return Err(err(ErrorCode::NoSpace, "no room for another attribute name on this inode"));
        }
        let key = xattr_key(ino, name);
        if name == ACL_ACCESS {
            let mut acl = Acl::decode(value)?;
            r.perm = acl.mode(r.perm);
            if acl.is_minimal() {
                // The permission bits say it all, as on ext4.
                tx.batch.delete(Cf::Xattrs, key);
            } else {
                tx.batch.put(Cf::Xattrs, key, enc_value(&acl.encode()));
            }
        } else {
            if name == ACL_DEFAULT {
                Acl::decode(value)?;
                if r.kind != FileKind::Dir {
                    return Err(err(ErrorCode::InvalidArgument, "only a directory has a default ACL"));
                }
            }
            tx.batch.put(Cf::Xattrs, key, enc_value(value));
        }
        r.ctime = tx.now;
        tx.put_inode(ino, r);
        Ok(MetaResponse::Done)
    }

    /// `RemoveXattr`. Reply: `Done`.
    pub(super) fn remove_xattr(&self, tx: &mut Txn, ino: u64, name: &[u8]) -> Result<MetaResponse, WireError> {
        xattr::check_name(name)?;
        let mut r = tx.inode(ino)?;
        let key = xattr_key(ino, name);
        if self.store.get(Cf::Xattrs, &key)?.is_none() {
            return Err(no_attribute());
        }
        tx.batch.delete(Cf::Xattrs, key);
        r.ctime = tx.now;
        tx.put_inode(ino, r);
        Ok(MetaResponse::Done)
    }
}

impl Txn<'_> {
    /// Delete every attribute of an inode being dropped.
    pub(super) fn drop_xattrs(&mut self, ino: u64) -> Result<(), WireError> {
        for (k, _) in self.store.scan(Cf::Xattrs, &ino_key(ino), &ino_key(ino), usize::MAX)? {
            self.batch.delete(Cf::Xattrs, k);
        }
        Ok(())
    }

    /// The permission bits of a new inode in `parent`: with a default ACL there, the inode
    /// inherits it (a directory as its own default ACL too) and `umask` is ignored; otherwise
    /// `umask` applies. Symlinks take neither.
    pub(super) fn inherit_acl(&mut self, parent: u64, ino: u64, kind: FileKind, perm: u16, umask: u16) -> Result<u16, WireError> {
        if kind == FileKind::Symlink {
            return Ok(perm);
        }
        let Some(v) = self.store.get(Cf::Xattrs, &xattr_key(parent, ACL_DEFAULT))? else {
            return Ok(perm & !umask);
        };
        let v = dec_value(&v)?;
        let mut acl = Acl::decode(&v)?;
        let perm = acl.create_masq(perm);
        if !acl.is_minimal() {
            self.batch.put(Cf::Xattrs, xattr_key(ino, ACL_ACCESS), enc_value(&acl.encode()));
        }
        if kind == FileKind::Dir {
            self.batch.put(Cf::Xattrs, xattr_key(ino, ACL_DEFAULT), enc_value(&v));
        }
        Ok(perm)
    }

    /// `chmod` of an inode with an access ACL: the ACL's owner, mask and other entries follow.
    pub(super) fn chmod_acl(&mut self, ino: u64, perm: u16) -> Result<(), WireError> {
        let key = xattr_key(ino, ACL_ACCESS);
        if let Some(v) = self.store.get(Cf::Xattrs, &key)? {
            let mut acl = Acl::decode(&dec_value(&v)?)?;
            acl.chmod(perm);
            self.batch.put(Cf::Xattrs, key, enc_value(&acl.encode()));
        }
        Ok(())
    }
}
