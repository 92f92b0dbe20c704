//! Each mutation turned into its batch.

use super::*;

impl Namespace {
    /// Validate `op` of `session` against the current state and build its batch, at time `now`;
    /// a `Create` or `CreateOpen` makes inode `new_ino`. Reads nothing but these and the store.
    pub(super) fn execute(&self, now: i64, session: u64, new_ino: u64, op: &Mutation) -> Result<(Batch, MetaResponse), WireError> {
        let mut tx = Txn::new(&self.store, session, now)?;
        let reply = match op {
            Mutation::Create { parent, name, kind, perm, uid, gid, rdev, target, umask } => MetaResponse::Attr(Self::create(&mut tx, now, new_ino, *parent, name, *kind, *perm, (*uid, *gid), *rdev, target, *umask)?),
            Mutation::CreateOpen { parent, name, perm, uid, gid, umask } => {
                let a = Self::create(&mut tx, now, new_ino, *parent, name, FileKind::File, *perm, (*uid, *gid), 0, &None, *umask)?;
                super::opens::record_open(&mut tx.batch, session, a.ino, 1);
                MetaResponse::Attr(a)
            }
            Mutation::SetAttr { ino, attr } => MetaResponse::Attr(Self::set_attr(&mut tx, now, *ino, attr)?),
            // `keep` is ignored: the server keeps what any session has open (see `opens`).
            Mutation::Unlink { parent, name, keep: _ } => {
                check_name(name)?;
                tx.dir(*parent)?;
                let d = tx.dirent(*parent, name)?.ok_or_else(|| err(ErrorCode::NotFound, "no such entry"))?;
                if d.kind == FileKind::Dir {
                    return Err(err(ErrorCode::IsDir, "is a directory"));
                }
                tx.remove_dirent(*parent, name, &d)?;
                MetaResponse::Unlinked { orphan: tx.unlink_inode(d.ino)? }
            }
            Mutation::Rmdir { parent, name } => {
                check_name(name)?;
                tx.dir(*parent)?;
                let d = tx.dirent(*parent, name)?.ok_or_else(|| err(ErrorCode::NotFound, "no such entry"))?;
                if d.kind != FileKind::Dir {
                    return Err(err(ErrorCode::NotDir, "not a directory"));
                }
                self.ensure_empty(d.ino)?;
                tx.remove_dirent(*parent, name, &d)?;
                let r = tx.inode(d.ino)?;
                tx.drop_inode(d.ino, &r)?;
                MetaResponse::Done
            }
            Mutation::Rename { parent, name, new_parent, new_name, flags, keep: _ } => {
                MetaResponse::Unlinked { orphan: self.rename(&mut tx, (*parent, name), (*new_parent, new_name), *flags)? }
            }
            Mutation::DropOrphan { ino } => {
                self.release_orphan(&mut tx, session, *ino)?;
                MetaResponse::Done
            }
            Mutation::Open { ino } => self.open_file(&mut tx, *ino)?,
            Mutation::Close { ino } => {
                self.close_file(&mut tx, session, *ino, false)?;
                MetaResponse::Done
            }
            Mutation::SetLock { ino, lock } => self.set_lock(&mut tx, *ino, *lock)?,
            Mutation::ExpireSession { session } => self.expire(&mut tx, *session)?,
            Mutation::Link { ino, new_parent, new_name } => {
                check_name(new_name)?;
                let mut r = tx.inode(*ino)?;
                if r.kind == FileKind::Dir {
                    return Err(err(ErrorCode::PermissionDenied, "cannot hard-link a directory"));
                }
                if r.nlink == 0 {
                    // An orphan (unlinked, still open) cannot get a name back, as in Linux.
                    return Err(err(ErrorCode::NotFound, format!("inode {ino} has no links")));
                }
                tx.dir(*new_parent)?;
                if tx.dirent(*new_parent, new_name)?.is_some() {
                    return Err(err(ErrorCode::Exists, "entry exists"));
                }
                tx.add_dirent(*new_parent, new_name, *ino, r.kind)?;
                r.nlink += 1;
                r.ctime = now;
                let a = attr(*ino, &r);
                tx.put_inode(*ino, r);
                MetaResponse::Attr(a)
            }
            Mutation::CommitBlocks { ino, blocks, size } => {
                let mut r = tx.commit_start(*ino, *size, blocks.iter().map(|(idx, _)| *idx))?;
                let bs = tx.block_size as u32;
                tx.inline.insert(*ino, None);
                for (idx, b) in blocks {
                    if b.len == 0 || b.len > bs || idx.saturating_mul(bs as u64) >= *size {
                        return Err(err(ErrorCode::InvalidArgument, format!("block {idx} does not fit the file")));
                    }
                    tx.set_block(*ino, *idx, Some(*b))?;
                }
                MetaResponse::Attr(tx.commit_end(*ino, &mut r, *size))
            }
            Mutation::PatchBlocks { ino, patches, size } => self.patch_blocks(&mut tx, *ino, patches, *size)?,
            Mutation::CommitInline { ino, data } => MetaResponse::Attr(Self::commit_inline(&mut tx, now, *ino, data)?),
            Mutation::CommitInlineSetAttr { ino, data, attr } => {
                if attr.size.is_some() {
                    return Err(err(ErrorCode::InvalidArgument, "a size cannot be set with an inline commit"));
                }
                Self::commit_inline(&mut tx, now, *ino, data)?;
                MetaResponse::Attr(Self::set_attr(&mut tx, now, *ino, attr)?)
            }
            Mutation::SetXattr { ino, name, value, flags } => self.set_xattr(&mut tx, *ino, name, value, *flags)?,
            Mutation::RemoveXattr { ino, name } => self.remove_xattr(&mut tx, *ino, name)?,
            Mutation::PunchBlocks { ino, first, count } => {
                let mut r = tx.inode(*ino)?;
                if r.kind != FileKind::File {
                    return Err(err(ErrorCode::InvalidArgument, "not a regular file"));
                }
                tx.drop_blocks_in(*ino, *first, first.saturating_add(*count))?;
                if *first == 0 && *count > 0 {
                    tx.inline.insert(*ino, None);
                }
                r.mtime = now;
                r.ctime = now;
                let a = attr(*ino, &r);
                tx.put_inode(*ino, r);
                MetaResponse::Attr(a)
            }
            Mutation::CopyBlocks { src, src_first, dst, dst_first, count, end } => self.copy_blocks(&mut tx, (*src, *src_first), (*dst, *dst_first), *count, *end)?,
        };
        Ok((tx.finish()?, reply))
    }

    /// `SetAttr`.
    fn set_attr(tx: &mut Txn, now: i64, ino: u64, s: &SetAttr) -> Result<Attr, WireError> {
        let mut r = tx.inode(ino)?;
        if let Some(m) = s.mode {
            r.perm = (m & 0o7777) as u16;
            tx.chmod_acl(ino, r.perm)?;
        }
        if let Some(u) = s.uid {
            r.uid = u;
        }
        if let Some(g) = s.gid {
            r.gid = g;
        }
        if let Some(size) = s.size {
            if size > MAX_FILE_SIZE {
                return Err(err(ErrorCode::InvalidArgument, "file size too large"));
            }
            match r.kind {
                FileKind::File => tx.truncate(ino, &mut r, size)?,
                FileKind::Dir => return Err(err(ErrorCode::IsDir, "cannot truncate a directory")),
                _ => return Err(err(ErrorCode::InvalidArgument, "cannot truncate this kind of file")),
            }
        }
        let t = |x: SetTime| match x {
            SetTime::Now => now,
            SetTime::At(t) => t,
        };
        if let Some(a) = s.atime {
            r.atime = t(a);
        }
        if let Some(m) = s.mtime {
            r.mtime = t(m);
        }
        r.ctime = now;
        let a = attr(ino, &r);
        tx.put_inode(ino, r);
        Ok(a)
    }

    /// `CommitInline`.
    fn commit_inline(tx: &mut Txn, now: i64, ino: u64, data: &[u8]) -> Result<Attr, WireError> {
        let mut r = tx.inode(ino)?;
        if r.kind != FileKind::File {
            return Err(err(ErrorCode::InvalidArgument, "not a regular file"));
        }
        if data.len() > tessera_common::INLINE_MAX {
            return Err(err(ErrorCode::InvalidArgument, "inline data too large"));
        }
        tx.drop_blocks_from(ino, 0)?;
        tx.put_inline(ino, data);
        tx.bytes += data.len() as i64 - r.size as i64;
        r.size = data.len() as u64;
        r.mtime = now;
        r.ctime = now;
        let a = attr(ino, &r);
        tx.put_inode(ino, r);
        Ok(a)
    }

    /// A new inode `ino` named `name` in `parent` (`Create`, `CreateOpen`).
    #[allow(clippy::too_many_arguments)]
    fn create(tx: &mut Txn, now: i64, ino: u64, parent: u64, name: &[u8], kind: FileKind, perm: u16, (uid, gid): (u32, u32), rdev: u32, target: &Option<Vec<u8>>, umask: u16) -> Result<Attr, WireError> {
        check_name(name)?;
        tx.dir(parent)?;
        if tx.dirent(parent, name)?.is_some() {
            return Err(err(ErrorCode::Exists, "entry exists"));
        }
        let size = match (kind, target) {
            (FileKind::Symlink, Some(t)) if !t.is_empty() && t.len() <= MAX_SYMLINK_LEN && !t.contains(&0) => t.len() as u64,
            (FileKind::Symlink, Some(t)) if t.len() > MAX_SYMLINK_LEN => return Err(err(ErrorCode::NameTooLong, "symlink target too long")),
            (FileKind::Symlink, _) => return Err(err(ErrorCode::InvalidArgument, "bad symlink target")),
            (_, None) => 0,
            (_, Some(_)) => return Err(err(ErrorCode::InvalidArgument, "target given for a non-symlink")),
        };
        let perm = tx.inherit_acl(parent, ino, kind, perm & 0o7777, umask)?;
        let r = InodeRec {
            kind,
            perm,
            nlink: if kind == FileKind::Dir { 2 } else { 1 },
            uid,
            gid,
            size,
            atime: now,
            mtime: now,
            ctime: now,
            rdev,
            target: target.clone(),
            parent,
            next_cookie: 3,
        };
        tx.add_dirent(parent, name, ino, kind)?;
        let a = attr(ino, &r);
        tx.put_inode(ino, r);
        tx.files += 1;
        Ok(a)
    }
}
