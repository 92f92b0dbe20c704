//! Reads of the current state, and the cluster records of membership.
//!
//! A read of more than one record takes them all from one [`View`]: a command applied between
//! two of its reads (a rename that replaces the name just read, a write that changes size and
//! blocks together) would otherwise show it half done.

use super::*;

impl Namespace {
    pub(super) fn get_inode(&self, ino: u64) -> Result<InodeRec, WireError> {
        match self.store.get(Cf::Inodes, &ino_key(ino))? {
            Some(v) => dec(&v),
            None => Err(no_inode(ino)),
        }
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, WireError> {
        Ok(attr(ino, &self.get_inode(ino)?))
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, WireError> {
        check_name(name)?;
        let v = self.store.view();
        if inode_in(&v, parent)?.kind != FileKind::Dir {
            return Err(err(ErrorCode::NotDir, "parent is not a directory"));
        }
        match v.get(Cf::Dirents, &dirent_key(parent, name))? {
            Some(d) => {
                let ino = dec::<DirentRec>(&d)?.ino;
                Ok(attr(ino, &inode_in(&v, ino)?))
            }
            None => Err(err(ErrorCode::NotFound, "no such entry")),
        }
    }

    pub fn readdir(&self, ino: u64, after: u64, limit: u32) -> Result<(Vec<DirEntry>, bool), WireError> {
        let v = self.store.view();
        Self::entries_in(&v, ino, after, limit)
    }

    /// `readdir` with each entry's attributes and whether it has extended attributes, all from one
    /// snapshot.
    pub fn readdir_plus(&self, ino: u64, after: u64, limit: u32) -> Result<(Vec<(DirEntry, Attr, bool)>, bool), WireError> {
        let v = self.store.view();
        let (entries, done) = Self::entries_in(&v, ino, after, limit)?;
        let keys: Vec<Vec<u8>> = entries.iter().map(|e| ino_key(e.ino)).collect();
        let xattrs = v.has_prefixes(Cf::Xattrs, &keys)?;
        let mut out = Vec::with_capacity(entries.len());
        for (e, x) in entries.into_iter().zip(xattrs) {
            let a = attr(e.ino, &inode_in(&v, e.ino)?);
            out.push((e, a, x));
        }
        Ok((out, done))
    }

    fn entries_in(v: &View, ino: u64, after: u64, limit: u32) -> Result<(Vec<DirEntry>, bool), WireError> {
        if inode_in(v, ino)?.kind != FileKind::Dir {
            return Err(err(ErrorCode::NotDir, "not a directory"));
        }
        let limit = limit.clamp(1, 1024) as usize;
        let rows = v.scan(Cf::DirCookies, &ino_key(ino), &pair_key(ino, after.saturating_add(1)), limit)?;
        let done = rows.len() < limit;
        let mut out = Vec::with_capacity(rows.len());
        for (k, name) in rows {
            if let Some(d) = v.get(Cf::Dirents, &dirent_key(ino, &name))? {
                let d: DirentRec = dec(&d)?;
                out.push(DirEntry { name, ino: d.ino, kind: d.kind, cookie: tail_u64(&k) });
            }
        }
        Ok((out, done))
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, WireError> {
        self.get_inode(ino)?.target.ok_or_else(|| err(ErrorCode::InvalidArgument, "not a symlink"))
    }

    /// A page of `ino`'s block map from index `first`: its size, up to `count` entries, the
    /// inline data (with the first page), and the patches of the entries in the page.
    #[allow(clippy::type_complexity)]
    pub fn get_blocks(&self, ino: u64, first: u64, count: u64) -> Result<(u64, Vec<(u64, BlockRef)>, Option<Vec<u8>>, Vec<(u64, Vec<Patch>)>), WireError> {
        let v = self.store.view();
        let r = inode_in(&v, ino)?;
        let inline = match v.get(Cf::Inline, &ino_key(ino))? {
            Some(x) if first == 0 && x.first() == Some(&V1) => Some(x[1..].to_vec()),
            _ => None,
        };
        let count = count.clamp(1, 16384) as usize;
        let mut out = Vec::new();
        for (k, b) in v.scan(Cf::BlockMap, &ino_key(ino), &pair_key(ino, first), count)? {
            out.push((tail_u64(&k), dec_bref(&b)?));
        }
        let mut patches = Vec::new();
        if let Some((last, _)) = out.last() {
            for (k, p) in v.scan(Cf::Patches, &ino_key(ino), &pair_key(ino, first), out.len())? {
                // Entries past the page's last are the next page's. (The file's totals, under
                // the shorter key, sort before `first` and are not scanned.)
                if tail_u64(&k) <= *last {
                    patches.push((tail_u64(&k), dec(&p)?));
                }
            }
        }
        Ok((r.size, out, inline, patches))
    }

    pub fn stats(&self) -> Result<Stats, WireError> {
        Ok(self.store.get(Cf::Cluster, KEY_STATS)?.map(|v| dec(&v)).transpose()?.unwrap_or_default())
    }

    /// Refused once the store has failed: what it holds since the last good sync may be lost
    /// at a restart, so garbage collection must not act on it.
    pub fn is_referenced(&self, id: &BlockId) -> Result<bool, WireError> {
        self.store.check_ok()?;
        Ok(self.store.get(Cf::Refcounts, &id.0)?.is_some())
    }

    /// Referenced blocks with their reference counts, in id order, after `after`.
    pub fn list_blocks(&self, after: Option<BlockId>, limit: u32) -> Result<Vec<(BlockId, u64)>, WireError> {
        let start = match after {
            Some(a) => {
                let mut k = a.0.to_vec();
                k.push(0);
                k
            }
            None => vec![],
        };
        let rows = self.store.scan(Cf::Refcounts, &[], &start, limit.clamp(1, 65536) as usize)?;
        rows.into_iter()
            .map(|(k, v)| {
                let id = BlockId(k.try_into().map_err(|_| err(ErrorCode::Internal, "corrupt refcount key"))?);
                let n = u64::from_le_bytes(v.try_into().map_err(|_| err(ErrorCode::Internal, "corrupt refcount"))?);
                Ok((id, n))
            })
            .collect()
    }

    // ---- cluster records (membership) ----

    pub fn cluster_get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, WireError> {
        self.store.get(Cf::Cluster, key)?.map(|v| dec(&v)).transpose()
    }

    pub fn cluster_scan<T: DeserializeOwned>(&self, prefix: &[u8]) -> Result<Vec<T>, WireError> {
        self.store.scan(Cf::Cluster, prefix, prefix, usize::MAX)?.iter().map(|(_, v)| dec(v)).collect()
    }
}

pub(super) fn inode_in(v: &View, ino: u64) -> Result<InodeRec, WireError> {
    match v.get(Cf::Inodes, &ino_key(ino))? {
        Some(r) => dec(&r),
        None => Err(no_inode(ino)),
    }
}

fn no_inode(ino: u64) -> WireError {
    err(ErrorCode::NotFound, format!("inode {ino} does not exist"))
}
