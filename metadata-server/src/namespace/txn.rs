//! The overlay of one command.

use super::*;
use tessera_common::patch::Totals;

/// Reads and writes of one command. Every record a command changes (inodes, directory entries,
/// block-map entries, inline data) is overlaid, so later steps of the same command see the
/// earlier ones; reference-count changes are summed and applied once in `finish`. Ordered
/// maps: the batch, and which count `finish` finds wrong first (its error is a stored reply),
/// are the same on every replica.
pub(super) struct Txn<'a> {
    pub(super) store: &'a Store,
    pub(super) batch: Batch,
    pub(super) inodes: BTreeMap<u64, Option<InodeRec>>,
    pub(super) dirents: BTreeMap<(u64, Vec<u8>), Option<DirentRec>>,
    pub(super) blocks: BTreeMap<(u64, u64), Option<BlockRef>>,
    pub(super) inline: BTreeMap<u64, Option<Vec<u8>>>,
    /// Patches of block-map entries; `None`: none (any the store has are deleted).
    pub(super) patches: BTreeMap<(u64, u64), Option<Vec<Patch>>>,
    pub(super) refs: BTreeMap<BlockId, i64>,
    /// The session of the command.
    pub(super) session: u64,
    pub(super) files: i64,
    pub(super) bytes: i64,
    pub(super) now: i64,
    pub(super) block_size: u64,
}

impl<'a> Txn<'a> {
    pub(super) fn new(store: &'a Store, session: u64, now: i64) -> Result<Self, WireError> {
        let params: FsParams = dec(&store.get(Cf::Cluster, KEY_FS)?.ok_or_else(|| err(ErrorCode::Internal, "file-system parameters missing"))?)?;
        Ok(Txn {
            store,
            batch: Batch::default(),
            inodes: BTreeMap::new(),
            dirents: BTreeMap::new(),
            blocks: BTreeMap::new(),
            inline: BTreeMap::new(),
            patches: BTreeMap::new(),
            refs: BTreeMap::new(),
            session,
            files: 0,
            bytes: 0,
            now,
            block_size: params.block_size as u64,
        })
    }

    pub(super) fn inode(&mut self, ino: u64) -> Result<InodeRec, WireError> {
        if let Some(r) = self.inodes.get(&ino) {
            return r.clone().ok_or_else(|| err(ErrorCode::NotFound, format!("inode {ino}")));
        }
        match self.store.get(Cf::Inodes, &ino_key(ino))? {
            Some(v) => dec(&v),
            None => Err(err(ErrorCode::NotFound, format!("inode {ino} does not exist"))),
        }
    }

    pub(super) fn dir(&mut self, ino: u64) -> Result<InodeRec, WireError> {
        let r = self.inode(ino)?;
        if r.kind != FileKind::Dir {
            return Err(err(ErrorCode::NotDir, format!("inode {ino} is not a directory")));
        }
        Ok(r)
    }

    pub(super) fn put_inode(&mut self, ino: u64, r: InodeRec) {
        self.inodes.insert(ino, Some(r));
    }

    pub(super) fn dirent(&self, parent: u64, name: &[u8]) -> Result<Option<DirentRec>, WireError> {
        if let Some(d) = self.dirents.get(&(parent, name.to_vec())) {
            return Ok(*d);
        }
        self.store.get(Cf::Dirents, &dirent_key(parent, name))?.map(|v| dec(&v)).transpose()
    }

    /// The block-map entry `idx` of `ino` as this command has left it.
    pub(super) fn block(&self, ino: u64, idx: u64) -> Result<Option<BlockRef>, WireError> {
        if let Some(b) = self.blocks.get(&(ino, idx)) {
            return Ok(*b);
        }
        self.store.get(Cf::BlockMap, &pair_key(ino, idx))?.map(|v| dec_bref(&v)).transpose()
    }

    /// Set or clear one block-map entry; the replaced block loses a reference, the new gains one.
    /// The entry's patches go with the old entry.
    pub(super) fn set_block(&mut self, ino: u64, idx: u64, b: Option<BlockRef>) -> Result<(), WireError> {
        if let Some(old) = self.block(ino, idx)? {
            *self.refs.entry(old.id).or_default() -= 1;
        }
        if let Some(new) = b {
            *self.refs.entry(new.id).or_default() += 1;
        }
        self.blocks.insert((ino, idx), b);
        if !self.patches(ino, idx)?.is_empty() {
            self.patches.insert((ino, idx), None);
        }
        Ok(())
    }

    /// The patches of block-map entry `idx` of `ino` as this command has left them.
    pub(super) fn patches(&self, ino: u64, idx: u64) -> Result<Vec<Patch>, WireError> {
        if let Some(p) = self.patches.get(&(ino, idx)) {
            return Ok(p.clone().unwrap_or_default());
        }
        Ok(self.store.get(Cf::Patches, &pair_key(ino, idx))?.map(|v| dec(&v)).transpose()?.unwrap_or_default())
    }

    pub(super) fn set_patches(&mut self, ino: u64, idx: u64, p: Vec<Patch>) {
        self.patches.insert((ino, idx), (!p.is_empty()).then_some(p));
    }

    /// What `ino`'s patches add up to in the store (before this command).
    pub(super) fn patch_totals(&self, ino: u64) -> Result<Totals, WireError> {
        Ok(self.store.get(Cf::Patches, &ino_key(ino))?.map(|v| dec(&v)).transpose()?.unwrap_or_default())
    }

    pub(super) fn add_dirent(&mut self, parent: u64, name: &[u8], ino: u64, kind: FileKind) -> Result<(), WireError> {
        let mut p = self.dir(parent)?;
        let cookie = p.next_cookie;
        p.next_cookie += 1;
        p.mtime = self.now;
        p.ctime = self.now;
        if kind == FileKind::Dir {
            p.nlink += 1;
        }
        self.put_inode(parent, p);
        self.dirents.insert((parent, name.to_vec()), Some(DirentRec { ino, kind, cookie }));
        self.batch.put(Cf::DirCookies, pair_key(parent, cookie), name.to_vec());
        Ok(())
    }

    pub(super) fn remove_dirent(&mut self, parent: u64, name: &[u8], d: &DirentRec) -> Result<(), WireError> {
        let mut p = self.dir(parent)?;
        p.mtime = self.now;
        p.ctime = self.now;
        if d.kind == FileKind::Dir {
            p.nlink -= 1;
        }
        self.put_inode(parent, p);
        self.dirents.insert((parent, name.to_vec()), None);
        self.batch.delete(Cf::DirCookies, pair_key(parent, d.cookie));
        Ok(())
    }

    /// Drop one link of a non-directory; the inode and its blocks go with the last one, unless
    /// it is a regular file that sessions have open: then it stays, with no link, as an orphan
    /// of each of them (returned), until the last of them closes it or expires.
    pub(super) fn unlink_inode(&mut self, ino: u64) -> Result<Option<u64>, WireError> {
        let mut r = self.inode(ino)?;
        r.nlink = r.nlink.checked_sub(1).ok_or_else(|| err(ErrorCode::Internal, format!("inode {ino} has a name but no link count")))?;
        r.ctime = self.now;
        if r.nlink > 0 {
            self.put_inode(ino, r);
            return Ok(None);
        }
        let holders = if r.kind == FileKind::File { super::opens::holders(self.store, ino)? } else { Vec::new() };
        if !holders.is_empty() {
            self.put_inode(ino, r);
            for s in holders {
                self.batch.put(Cf::Orphans, pair_key(s, ino), enc(&self.now));
            }
            return Ok(Some(ino));
        }
        self.drop_inode(ino, &r)?;
        Ok(None)
    }

    /// Drop an inode that has no link and no holder. A file with more than [`DROP_BOUND`]
    /// block-map entries stays (nlink 0) as an orphan of [`REAPER`] instead, for `Reap`
    /// commands to drop in steps: no command (no future log entry) grows with the file.
    pub(super) fn drop_inode(&mut self, ino: u64, r: &InodeRec) -> Result<(), WireError> {
        if r.kind == FileKind::File && self.store.scan(Cf::BlockMap, &ino_key(ino), &ino_key(ino), DROP_BOUND + 1)?.len() > DROP_BOUND {
            self.put_inode(ino, r.clone());
            self.batch.put(Cf::Orphans, pair_key(REAPER, ino), enc(&self.now));
            return Ok(());
        }
        self.drop_inode_now(ino, r)
    }

    pub(super) fn drop_inode_now(&mut self, ino: u64, r: &InodeRec) -> Result<(), WireError> {
        if r.kind == FileKind::File {
            self.drop_blocks_from(ino, 0)?;
            self.inline.insert(ino, None);
            self.bytes -= r.size as i64;
        }
        self.drop_xattrs(ino)?;
        self.files -= 1;
        self.inodes.insert(ino, None);
        Ok(())
    }

    /// Drop block-map entries with index >= `first`: those in the store (paged forward by key)
    /// and those this command set.
    pub(super) fn drop_blocks_from(&mut self, ino: u64, first: u64) -> Result<(), WireError> {
        self.drop_blocks_in(ino, first, u64::MAX)
    }

    /// Drop block-map entries with index in `[first, end)`.
    pub(super) fn drop_blocks_in(&mut self, ino: u64, first: u64, end: u64) -> Result<(), WireError> {
        if first >= end {
            return Ok(());
        }
        let prefix = ino_key(ino);
        let mut start = pair_key(ino, first);
        'scan: loop {
            let entries = self.store.scan(Cf::BlockMap, &prefix, &start, 4096)?;
            let n = entries.len();
            for (k, _) in entries {
                let idx = tail_u64(&k);
                if idx >= end {
                    break 'scan;
                }
                self.set_block(ino, idx, None)?;
                start = pair_key(ino, idx.saturating_add(1));
            }
            if n < 4096 {
                break;
            }
        }
        let set: Vec<u64> = self.blocks.range((ino, first)..(ino, end)).filter(|(_, b)| b.is_some()).map(|((_, i), _)| *i).collect();
        for idx in set {
            self.set_block(ino, idx, None)?;
        }
        Ok(())
    }

    pub(super) fn inline(&self, ino: u64) -> Result<Option<Vec<u8>>, WireError> {
        if let Some(d) = self.inline.get(&ino) {
            return Ok(d.clone());
        }
        match self.store.get(Cf::Inline, &ino_key(ino))? {
            Some(v) if v.first() == Some(&V1) => Ok(Some(v[1..].to_vec())),
            Some(_) => Err(err(ErrorCode::Internal, "corrupt inline data")),
            None => Ok(None),
        }
    }

    pub(super) fn put_inline(&mut self, ino: u64, data: &[u8]) {
        self.inline.insert(ino, Some(data.to_vec()));
    }

    pub(super) fn truncate(&mut self, ino: u64, r: &mut InodeRec, size: u64) -> Result<(), WireError> {
        if let Some(mut d) = self.inline(ino)? {
            if (d.len() as u64) > size {
                d.truncate(size as usize);
                self.put_inline(ino, &d);
            }
        }
        if size < r.size {
            let bs = self.block_size;
            self.drop_blocks_from(ino, size.div_ceil(bs))?;
            let rem = size % bs;
            if rem != 0 {
                let idx = size / bs;
                if let Some(mut b) = self.block(ino, idx)? {
                    let mut patches = self.patches(ino, idx)?;
                    if b.len as u64 > rem {
                        // The block keeps its bytes (its id is their hash); only `len` of them count.
                        b.len = rem as u32;
                        self.set_block(ino, idx, Some(b))?;
                    }
                    tessera_common::patch::clip(&mut patches, rem);
                    self.set_patches(ino, idx, patches);
                }
            }
        }
        self.bytes += size as i64 - r.size as i64;
        r.size = size;
        r.mtime = self.now;
        r.ctime = self.now;
        Ok(())
    }

    /// The start of a commit of blocks or patches of file `ino` at `size`: the file, cut to
    /// `size` if it is shorter. Refused if an index is given twice.
    pub(super) fn commit_start(&mut self, ino: u64, size: u64, indexes: impl Iterator<Item = u64>) -> Result<InodeRec, WireError> {
        if size > MAX_FILE_SIZE {
            return Err(err(ErrorCode::InvalidArgument, "file size too large"));
        }
        let mut r = self.inode(ino)?;
        if r.kind != FileKind::File {
            return Err(err(ErrorCode::InvalidArgument, "not a regular file"));
        }
        if size < r.size {
            self.truncate(ino, &mut r, size)?;
        }
        let mut seen = HashSet::new();
        for idx in indexes {
            if !seen.insert(idx) {
                return Err(err(ErrorCode::InvalidArgument, format!("block index {idx} given twice")));
            }
        }
        Ok(r)
    }

    /// The end of a commit: the new size and times.
    pub(super) fn commit_end(&mut self, ino: u64, r: &mut InodeRec, size: u64) -> Attr {
        self.bytes += size as i64 - r.size as i64;
        r.size = size;
        r.mtime = self.now;
        r.ctime = self.now;
        let a = attr(ino, r);
        self.put_inode(ino, r.clone());
        a
    }

    pub(super) fn finish(mut self) -> Result<Batch, WireError> {
        let mut stats: Stats = match self.store.get(Cf::Cluster, KEY_STATS)? {
            Some(v) => dec(&v)?,
            None => Stats::default(),
        };
        // Counts never clamp: a change that would take one below zero means the stored state is
        // already wrong, so the command fails whole (nothing is written) and says so.
        let below_zero = |what: String| err(ErrorCode::Internal, format!("{what} would go below zero: the metadata is inconsistent (run tessera fsck); nothing was changed"));
        for (id, delta) in std::mem::take(&mut self.refs) {
            if delta == 0 {
                continue;
            }
            let cur = match self.store.get(Cf::Refcounts, &id.0)? {
                Some(v) => u64::from_le_bytes(v.as_slice().try_into().map_err(|_| err(ErrorCode::Internal, "corrupt refcount"))?),
                None => 0,
            };
            let new = u64::try_from(cur as i64 + delta).map_err(|_| below_zero(format!("reference count of block {} ({cur} stored, change {delta})", id.to_hex())))?;
            if new == 0 {
                self.batch.delete(Cf::Refcounts, id.0.to_vec());
            } else {
                self.batch.put(Cf::Refcounts, id.0.to_vec(), new.to_le_bytes().to_vec());
            }
            match (cur, new) {
                (0, n) if n > 0 => stats.blocks += 1,
                (c, 0) if c > 0 => stats.blocks = stats.blocks.checked_sub(1).ok_or_else(|| below_zero("block count".into()))?,
                _ => {}
            }
        }
        for (ino, r) in std::mem::take(&mut self.inodes) {
            match r {
                Some(r) => self.batch.put(Cf::Inodes, ino_key(ino), enc(&r)),
                None => self.batch.delete(Cf::Inodes, ino_key(ino)),
            }
        }
        for ((parent, name), d) in std::mem::take(&mut self.dirents) {
            match d {
                Some(d) => self.batch.put(Cf::Dirents, dirent_key(parent, &name), enc(&d)),
                None => self.batch.delete(Cf::Dirents, dirent_key(parent, &name)),
            }
        }
        for ((ino, idx), b) in std::mem::take(&mut self.blocks) {
            match b {
                Some(b) => self.batch.put(Cf::BlockMap, pair_key(ino, idx), enc_bref(&b)),
                None => self.batch.delete(Cf::BlockMap, pair_key(ino, idx)),
            }
        }
        // Patches, added up per file (the bounds of `PatchBlocks`).
        let mut change: BTreeMap<u64, (i64, i64)> = BTreeMap::new();
        for ((ino, idx), p) in std::mem::take(&mut self.patches) {
            let key = pair_key(ino, idx);
            let had: Option<Vec<Patch>> = self.store.get(Cf::Patches, &key)?.map(|v| dec(&v)).transpose()?;
            let (old, new) = (Totals::of(had.as_deref().unwrap_or_default()), Totals::of(p.as_deref().unwrap_or_default()));
            let c = change.entry(ino).or_default();
            c.0 += new.patches as i64 - old.patches as i64;
            c.1 += new.bytes as i64 - old.bytes as i64;
            match p {
                Some(p) => self.batch.put(Cf::Patches, key, enc(&p)),
                None if had.is_some() => self.batch.delete(Cf::Patches, key),
                None => {}
            }
        }
        for (ino, (patches, bytes)) in change {
            if (patches, bytes) == (0, 0) {
                continue;
            }
            let cur = self.patch_totals(ino)?;
            let sum = |a: u64, d: i64, what: &str| u64::try_from(a as i64 + d).map_err(|_| below_zero(format!("{what} of inode {ino} ({a} stored, change {d})")));
            let t = Totals { patches: sum(cur.patches, patches, "patches")?, bytes: sum(cur.bytes, bytes, "patch bytes")? };
            if t.patches == 0 {
                self.batch.delete(Cf::Patches, ino_key(ino));
            } else {
                self.batch.put(Cf::Patches, ino_key(ino), enc(&t));
            }
        }
        for (ino, d) in std::mem::take(&mut self.inline) {
            match d {
                Some(d) => self.batch.put(Cf::Inline, ino_key(ino), [&[V1][..], &d].concat()),
                None => self.batch.delete(Cf::Inline, ino_key(ino)),
            }
        }
        stats.files = u64::try_from(stats.files as i64 + self.files).map_err(|_| below_zero(format!("file count ({} stored, change {})", stats.files, self.files)))?;
        stats.logical_bytes = u64::try_from(stats.logical_bytes as i64 + self.bytes).map_err(|_| below_zero(format!("logical bytes ({} stored, change {})", stats.logical_bytes, self.bytes)))?;
        self.batch.put(Cf::Cluster, KEY_STATS.to_vec(), enc(&stats));
        Ok(self.batch)
    }
}
