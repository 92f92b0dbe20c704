//! Each mutation turned into its batch.

use super::*;

impl Namespace {
    /// Validate `cmd` against the current state and build its batch. Deterministic.
    pub fn execute(&self, cmd: &Command) -> Result<(Batch, MetaResponse), WireError> {
        let mut tx = Txn {
            store: &self.store,
            batch: Batch::default(),
            inodes: HashMap::new(),
            dirents: HashMap::new(),
            blocks: BTreeMap::new(),
            inline: HashMap::new(),
            refs: HashMap::new(),
            session: cmd.session,
            files: 0,
            bytes: 0,
            now: cmd.now,
            block_size: self.params.block_size as u64,
        };
        let now = cmd.now;
        let reply = match &cmd.op {
            Mutation::Create { parent, name, kind, perm, uid, gid, rdev, target } => {
                check_name(name)?;
                tx.dir(*parent)?;
                if tx.dirent(*parent, name)?.is_some() {
                    return Err(err(ErrorCode::Exists, "entry exists"));
                }
                let size = match (kind, target) {
                    (FileKind::Symlink, Some(t)) if !t.is_empty() && t.len() <= MAX_SYMLINK_LEN && !t.contains(&0) => t.len() as u64,
                    (FileKind::Symlink, Some(t)) if t.len() > MAX_SYMLINK_LEN => return Err(err(ErrorCode::NameTooLong, "symlink target too long")),
                    (FileKind::Symlink, _) => return Err(err(ErrorCode::InvalidArgument, "bad symlink target")),
                    (_, None) => 0,
                    (_, Some(_)) => return Err(err(ErrorCode::InvalidArgument, "target given for a non-symlink")),
                };
                let ino = cmd.new_ino;
                let r = InodeRec {
                    kind: *kind,
                    perm: perm & 0o7777,
                    nlink: if *kind == FileKind::Dir { 2 } else { 1 },
                    uid: *uid,
                    gid: *gid,
                    size,
                    atime: now,
                    mtime: now,
                    ctime: now,
                    rdev: *rdev,
                    target: target.clone(),
                    parent: *parent,
                    next_cookie: 3,
                };
                tx.add_dirent(*parent, name, ino, *kind)?;
                let a = attr(ino, &r);
                tx.put_inode(ino, r);
                tx.files += 1;
                MetaResponse::Attr(a)
            }
            Mutation::SetAttr { ino, attr: s } => {
                let mut r = tx.inode(*ino)?;
                if let Some(m) = s.mode {
                    r.perm = (m & 0o7777) as u16;
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
                        FileKind::File => tx.truncate(*ino, &mut r, size)?,
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
                let a = attr(*ino, &r);
                tx.put_inode(*ino, r);
                MetaResponse::Attr(a)
            }
            Mutation::Unlink { parent, name, keep } => {
                check_name(name)?;
                tx.dir(*parent)?;
                let d = tx.dirent(*parent, name)?.ok_or_else(|| err(ErrorCode::NotFound, "no such entry"))?;
                if d.kind == FileKind::Dir {
                    return Err(err(ErrorCode::IsDir, "is a directory"));
                }
                tx.remove_dirent(*parent, name, &d)?;
                MetaResponse::Unlinked { orphan: tx.unlink_inode(d.ino, *keep)? }
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
            Mutation::Rename { parent, name, new_parent, new_name, flags, keep } => {
                MetaResponse::Unlinked { orphan: self.rename(&mut tx, (*parent, name), (*new_parent, new_name), *flags, *keep)? }
            }
            Mutation::DropOrphan { ino } => {
                let key = pair_key(cmd.session, *ino);
                if self.store.get(Cf::Orphans, &key)?.is_some() {
                    match tx.inode(*ino) {
                        Ok(r) if r.nlink == 0 => tx.drop_inode(*ino, &r)?,
                        // Linked again cannot happen (Link refuses nlink 0); keep the inode.
                        Ok(_) => {}
                        Err(e) if e.code == ErrorCode::NotFound => {}
                        Err(e) => return Err(e),
                    }
                    tx.batch.delete(Cf::Orphans, key);
                }
                MetaResponse::Done
            }
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
                if *size > MAX_FILE_SIZE {
                    return Err(err(ErrorCode::InvalidArgument, "file size too large"));
                }
                let mut r = tx.inode(*ino)?;
                if r.kind != FileKind::File {
                    return Err(err(ErrorCode::InvalidArgument, "not a regular file"));
                }
                let bs = self.params.block_size;
                if *size < r.size {
                    tx.truncate(*ino, &mut r, *size)?;
                }
                let mut seen = HashSet::with_capacity(blocks.len());
                if let Some((idx, _)) = blocks.iter().find(|(idx, _)| !seen.insert(*idx)) {
                    return Err(err(ErrorCode::InvalidArgument, format!("block index {idx} given twice")));
                }
                tx.inline.insert(*ino, None);
                for (idx, b) in blocks {
                    if b.len == 0 || b.len > bs || idx.saturating_mul(bs as u64) >= *size {
                        return Err(err(ErrorCode::InvalidArgument, format!("block {idx} does not fit the file")));
                    }
                    tx.set_block(*ino, *idx, Some(*b))?;
                }
                tx.bytes += *size as i64 - r.size as i64;
                r.size = *size;
                r.mtime = now;
                r.ctime = now;
                let a = attr(*ino, &r);
                tx.put_inode(*ino, r);
                MetaResponse::Attr(a)
            }
            Mutation::CommitInline { ino, data } => {
                let mut r = tx.inode(*ino)?;
                if r.kind != FileKind::File {
                    return Err(err(ErrorCode::InvalidArgument, "not a regular file"));
                }
                if data.len() > tessera_common::INLINE_MAX {
                    return Err(err(ErrorCode::InvalidArgument, "inline data too large"));
                }
                tx.drop_blocks_from(*ino, 0)?;
                tx.put_inline(*ino, data);
                tx.bytes += data.len() as i64 - r.size as i64;
                r.size = data.len() as u64;
                r.mtime = now;
                r.ctime = now;
                let a = attr(*ino, &r);
                tx.put_inode(*ino, r);
                MetaResponse::Attr(a)
            }
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
        };
        Ok((tx.finish()?, reply))
    }
}
