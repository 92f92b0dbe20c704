//! Rename, exchange, and the checks they share.

use super::*;

impl Namespace {
    pub(super) fn ensure_empty(&self, dir: u64) -> Result<(), WireError> {
        if !self.store.scan(Cf::Dirents, &ino_key(dir), &ino_key(dir), 1)?.is_empty() {
            return Err(err(ErrorCode::NotEmpty, "directory not empty"));
        }
        Ok(())
    }

    /// Refuse making directory `dir` a descendant of itself by putting it under `dest`.
    pub(super) fn check_not_under(&self, tx: &mut Txn, dir: u64, dest: u64) -> Result<(), WireError> {
        let mut x = dest;
        loop {
            if x == dir {
                return Err(err(ErrorCode::InvalidArgument, "cannot move a directory into itself"));
            }
            if x == ROOT_INO {
                return Ok(());
            }
            x = tx.inode(x)?.parent;
        }
    }

    /// Rename `from` to `to` in one step (see `Mutation::Rename`). Returns the orphan kept, if any.
    pub(super) fn rename(&self, tx: &mut Txn, from: (u64, &[u8]), to: (u64, &[u8]), flags: u32) -> Result<Option<u64>, WireError> {
        let ((parent, name), (np, nname)) = (from, to);
        check_name(name)?;
        check_name(nname)?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 {
            return Err(err(ErrorCode::InvalidArgument, "unsupported rename flags"));
        }
        if flags == RENAME_NOREPLACE | RENAME_EXCHANGE {
            return Err(err(ErrorCode::InvalidArgument, "RENAME_NOREPLACE and RENAME_EXCHANGE exclude each other"));
        }
        tx.dir(parent)?;
        tx.dir(np)?;
        let s = tx.dirent(parent, name)?.ok_or_else(|| err(ErrorCode::NotFound, "no such entry"))?;
        let t = tx.dirent(np, nname)?;
        if flags & RENAME_EXCHANGE != 0 {
            let t = t.ok_or_else(|| err(ErrorCode::NotFound, "no entry to exchange with"))?;
            self.exchange(tx, (parent, name, s), (np, nname, t))?;
            return Ok(None);
        }
        if parent == np && name == nname {
            return Ok(None);
        }
        if s.kind == FileKind::Dir && parent != np {
            self.check_not_under(tx, s.ino, np)?;
        }
        let mut orphan = None;
        if let Some(t) = t {
            if flags & RENAME_NOREPLACE != 0 {
                return Err(err(ErrorCode::Exists, "target exists"));
            }
            if t.ino == s.ino {
                // Two links of one file: POSIX says do nothing.
                return Ok(None);
            }
            if s.kind == FileKind::Dir {
                if t.kind != FileKind::Dir {
                    return Err(err(ErrorCode::NotDir, "target is not a directory"));
                }
                self.ensure_empty(t.ino)?;
            } else if t.kind == FileKind::Dir {
                return Err(err(ErrorCode::IsDir, "target is a directory"));
            }
            tx.remove_dirent(np, nname, &t)?;
            if t.kind == FileKind::Dir {
                let r = tx.inode(t.ino)?;
                tx.drop_inode(t.ino, &r)?;
            } else {
                orphan = tx.unlink_inode(t.ino)?;
            }
        }
        tx.remove_dirent(parent, name, &s)?;
        tx.add_dirent(np, nname, s.ino, s.kind)?;
        let mut r = tx.inode(s.ino)?;
        r.ctime = tx.now;
        if s.kind == FileKind::Dir {
            r.parent = np;
        }
        tx.put_inode(s.ino, r);
        Ok(orphan)
    }

    /// `RENAME_EXCHANGE`: each name now names the other's inode. The entries keep their
    /// cookies (a readdir in progress sees each name once); directories moved between parents
    /// carry their `..` link with them.
    pub(super) fn exchange(&self, tx: &mut Txn, a: (u64, &[u8], DirentRec), b: (u64, &[u8], DirentRec)) -> Result<(), WireError> {
        let ((pa, na, da), (pb, nb, db)) = (a, b);
        if da.ino == db.ino {
            return Ok(());
        }
        if pa != pb {
            if da.kind == FileKind::Dir {
                self.check_not_under(tx, da.ino, pb)?;
            }
            if db.kind == FileKind::Dir {
                self.check_not_under(tx, db.ino, pa)?;
            }
        }
        tx.dirents.insert((pa, na.to_vec()), Some(DirentRec { ino: db.ino, kind: db.kind, cookie: da.cookie }));
        tx.dirents.insert((pb, nb.to_vec()), Some(DirentRec { ino: da.ino, kind: da.kind, cookie: db.cookie }));
        let dirs = |d: &DirentRec| u32::from(d.kind == FileKind::Dir);
        for (p, gains, loses) in [(pa, dirs(&db), dirs(&da)), (pb, dirs(&da), dirs(&db))] {
            let mut r = tx.dir(p)?;
            if pa != pb {
                r.nlink = r.nlink + gains - loses;
            }
            r.mtime = tx.now;
            r.ctime = tx.now;
            tx.put_inode(p, r);
        }
        for (d, new_parent) in [(da, pb), (db, pa)] {
            let mut r = tx.inode(d.ino)?;
            if d.kind == FileKind::Dir {
                r.parent = new_parent;
            }
            r.ctime = tx.now;
            tx.put_inode(d.ino, r);
        }
        Ok(())
    }
}
