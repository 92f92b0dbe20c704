//! The reference audit behind `tessera fsck`.

use super::*;

impl Namespace {
    /// Count the references of every block-map entry and compare them with the stored counts;
    /// find block-map entries and extended attributes without an inode, inodes without a link that are not orphans, and
    /// orphan records without an inode. Reads one RocksDB snapshot, so mutations go on meanwhile
    /// and every command is seen whole or not at all. Holds one counter per distinct block.
    pub fn audit_refs(&self) -> Result<AuditReport, WireError> {
        let view = self.store.view();
        let mut rep = AuditReport::default();
        fn problem(rep: &mut AuditReport, p: String) {
            if rep.problems.len() < 100 {
                rep.problems.push(p);
            }
        }
        let mut orphans: HashSet<u64> = HashSet::new();
        view.for_each(Cf::Orphans, |k, _| {
            orphans.insert(tail_u64(k));
            Ok::<_, WireError>(())
        })?;
        let mut counted: HashMap<BlockId, u64> = HashMap::new();
        let mut last: Option<(u64, bool)> = None;
        view.for_each(Cf::BlockMap, |k, v| {
            let (ino, idx) = (u64::from_be_bytes(k[..8].try_into().map_err(|_| err(ErrorCode::Internal, "corrupt block-map key"))?), tail_u64(k));
            rep.entries += 1;
            *counted.entry(dec_bref(v)?.id).or_default() += 1;
            let exists = match last {
                Some((i, e)) if i == ino => e,
                _ => view.get(Cf::Inodes, &ino_key(ino))?.is_some(),
            };
            last = Some((ino, exists));
            if !exists {
                rep.dangling_entries += 1;
                problem(&mut rep, format!("block-map entry {ino}/{idx}: inode {ino} does not exist"));
            }
            Ok::<_, WireError>(())
        })?;
        rep.blocks = counted.len() as u64;
        view.for_each(Cf::Refcounts, |k, v| {
            let id = BlockId(k.try_into().map_err(|_| err(ErrorCode::Internal, "corrupt refcount key"))?);
            let stored = u64::from_le_bytes(v.try_into().map_err(|_| err(ErrorCode::Internal, "corrupt refcount"))?);
            let n = counted.remove(&id).unwrap_or(0);
            if n != stored {
                rep.refcount_mismatches += 1;
                problem(&mut rep, format!("block {}: reference count {stored} stored, {n} block-map entries", id.to_hex()));
            }
            Ok::<_, WireError>(())
        })?;
        for (id, n) in counted {
            rep.refcount_mismatches += 1;
            problem(&mut rep, format!("block {}: no reference count stored, {n} block-map entries", id.to_hex()));
        }
        view.for_each(Cf::Inodes, |k, v| {
            let ino = tail_u64(k);
            let r: InodeRec = dec(v)?;
            if r.nlink == 0 && !orphans.remove(&ino) {
                rep.unlinked_not_orphans += 1;
                problem(&mut rep, format!("inode {ino}: no link and not an orphan"));
            } else if r.nlink == 0 {
                rep.orphans += 1;
            }
            Ok::<_, WireError>(())
        })?;
        let mut last: Option<u64> = None;
        view.for_each(Cf::Xattrs, |k, _| {
            let ino = u64::from_be_bytes(k.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| err(ErrorCode::Internal, "corrupt attribute key"))?);
            // Counted once per inode: its records are adjacent.
            if last != Some(ino) && view.get(Cf::Inodes, &ino_key(ino))?.is_none() {
                rep.dangling_xattrs += 1;
                problem(&mut rep, format!("extended attributes of inode {ino}, which does not exist"));
            }
            last = Some(ino);
            Ok::<_, WireError>(())
        })?;
        for ino in orphans {
            rep.stale_orphans += 1;
            problem(&mut rep, format!("orphan record for inode {ino}, which does not exist or has links"));
        }
        Ok(rep)
    }
}
