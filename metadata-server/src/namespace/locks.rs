//! Lock tables: POSIX byte-range locks (also `flock` and OFD locks, which the kernel sends as
//! whole-file or per-open-file locks) per inode, held by `(session, owner)`.
//!
//! The table is replicated state: every change is a `SetLock`, `Close` or `ExpireSession`
//! command, so it survives a metadata restart and will follow the Raft log. Only the waiting
//! of `F_SETLKW` (`WaitLock`) lives in the server's memory.

use super::*;

fn overlaps(a: &LockSpec, b: &LockSpec) -> bool {
    a.start <= b.end && b.start <= a.end
}

fn touches(a: &LockSpec, b: &LockSpec) -> bool {
    overlaps(a, b) || a.end.checked_add(1) == Some(b.start) || b.end.checked_add(1) == Some(a.start)
}

fn same_owner(h: &LockHolder, session: u64, owner: u64) -> bool {
    h.session == session && h.lock.owner == owner
}

/// The first lock of another owner that `want` conflicts with: overlapping, and one of the
/// two is a write lock.
pub(super) fn conflict<'a>(table: &'a [LockHolder], session: u64, want: &LockSpec) -> Option<&'a LockHolder> {
    if want.kind == LockKind::Unlock {
        return None;
    }
    table
        .iter()
        .find(|h| !same_owner(h, session, want.owner) && overlaps(&h.lock, want) && (h.lock.kind == LockKind::Write || want.kind == LockKind::Write))
}

/// Apply `want` for `(session, want.owner)` as POSIX does: the owner's locks in the range are
/// replaced (split where they stick out), then the new lock (none for `Unlock`) is merged
/// with the owner's touching locks of the same kind. The caller has checked `conflict`.
pub(super) fn apply(table: &mut Vec<LockHolder>, session: u64, want: LockSpec) {
    let mut out = Vec::with_capacity(table.len() + 2);
    for h in table.drain(..) {
        if !same_owner(&h, session, want.owner) || !overlaps(&h.lock, &want) {
            out.push(h);
            continue;
        }
        if h.lock.start < want.start {
            out.push(LockHolder { lock: LockSpec { end: want.start - 1, ..h.lock }, ..h });
        }
        if h.lock.end > want.end {
            out.push(LockHolder { lock: LockSpec { start: want.end + 1, ..h.lock }, ..h });
        }
    }
    if want.kind != LockKind::Unlock {
        let mut new = LockHolder { session, lock: want };
        // The owner's locks never overlap each other and same-kind ones never touch, so only
        // the neighbours just before and just after `want` can merge.
        out.retain(|h| {
            if same_owner(h, session, want.owner) && h.lock.kind == want.kind && touches(&h.lock, &new.lock) {
                new.lock.start = new.lock.start.min(h.lock.start);
                new.lock.end = new.lock.end.max(h.lock.end);
                false
            } else {
                true
            }
        });
        out.push(new);
    }
    out.sort_by_key(|h| (h.lock.start, h.session, h.lock.owner));
    *table = out;
}

pub(super) fn locks_of(store: &Store, ino: u64) -> Result<Vec<LockHolder>, WireError> {
    store.get(Cf::Locks, &ino_key(ino))?.map(|v| dec(&v)).transpose().map(Option::unwrap_or_default)
}

pub(super) fn put_locks(batch: &mut Batch, ino: u64, table: &[LockHolder]) {
    if table.is_empty() {
        batch.delete(Cf::Locks, ino_key(ino));
    } else {
        batch.put(Cf::Locks, ino_key(ino), enc(&table.to_vec()));
    }
}

impl Namespace {
    /// `SetLock`: only on an inode this session has open (an unlock of one it has not is a
    /// no-op: the locks went with its close).
    pub(super) fn set_lock(&self, tx: &mut Txn, ino: u64, want: LockSpec) -> Result<MetaResponse, WireError> {
        if want.start > want.end {
            return Err(err(ErrorCode::InvalidArgument, "lock range ends before it starts"));
        }
        if !self.is_open_by(tx.session, ino)? {
            if want.kind == LockKind::Unlock {
                return Ok(MetaResponse::Done);
            }
            return Err(err(ErrorCode::InvalidArgument, format!("inode {ino} is not open in session {}", tx.session)));
        }
        let mut table = locks_of(&self.store, ino)?;
        if let Some(h) = conflict(&table, tx.session, &want) {
            return Err(err(ErrorCode::WouldBlock, format!("held by session {} (owner {:x}, pid {})", h.session, h.lock.owner, h.lock.pid)));
        }
        apply(&mut table, tx.session, want);
        put_locks(&mut tx.batch, ino, &table);
        Ok(MetaResponse::Done)
    }

    /// `F_GETLK`: the lock of another owner that would block `want`.
    pub fn get_lock(&self, ino: u64, session: u64, want: &LockSpec) -> Result<Option<LockHolder>, WireError> {
        Ok(conflict(&locks_of(&self.store, ino)?, session, want).copied())
    }

    /// Drop every lock of `session` on `ino` (its last close, its expiry).
    pub(super) fn drop_session_locks(&self, tx: &mut Txn, session: u64, ino: u64) -> Result<(), WireError> {
        let mut table = locks_of(&self.store, ino)?;
        let n = table.len();
        table.retain(|h| h.session != session);
        if table.len() != n {
            put_locks(&mut tx.batch, ino, &table);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(owner: u64, kind: LockKind, start: u64, end: u64) -> LockSpec {
        LockSpec { owner, kind, start, end, pid: owner as u32 }
    }
    fn ranges(t: &[LockHolder]) -> Vec<(u64, u64, u64, LockKind)> {
        t.iter().map(|h| (h.session, h.lock.start, h.lock.end, h.lock.kind)).collect()
    }
    use LockKind::*;

    #[test]
    fn unlocking_a_sub_range_splits_the_lock() {
        let mut t = vec![];
        apply(&mut t, 1, l(7, Write, 0, 99));
        apply(&mut t, 1, l(7, Unlock, 10, 19));
        assert_eq!(ranges(&t), vec![(1, 0, 9, Write), (1, 20, 99, Write)]);
        // The freed range is free for another owner, the rest is not.
        assert!(conflict(&t, 2, &l(8, Write, 10, 19)).is_none());
        assert_eq!(conflict(&t, 2, &l(8, Read, 15, 25)).map(|h| h.lock.start), Some(20));
    }

    #[test]
    fn touching_locks_of_one_kind_merge_and_other_kinds_replace() {
        let mut t = vec![];
        apply(&mut t, 1, l(7, Read, 0, 9));
        apply(&mut t, 1, l(7, Read, 20, 29));
        apply(&mut t, 1, l(7, Read, 10, 19));
        assert_eq!(ranges(&t), vec![(1, 0, 29, Read)]);
        // Upgrade the middle: three pieces, the middle one a write lock.
        apply(&mut t, 1, l(7, Write, 5, 24));
        assert_eq!(ranges(&t), vec![(1, 0, 4, Read), (1, 5, 24, Write), (1, 25, 29, Read)]);
        // Downgrade it back: one read lock again.
        apply(&mut t, 1, l(7, Read, 5, 24));
        assert_eq!(ranges(&t), vec![(1, 0, 29, Read)]);
        apply(&mut t, 1, l(7, Unlock, 0, u64::MAX));
        assert!(t.is_empty());
    }

    #[test]
    fn readers_share_a_writer_excludes_and_an_owner_never_conflicts_with_itself() {
        let mut t = vec![];
        apply(&mut t, 1, l(7, Read, 0, u64::MAX));
        assert!(conflict(&t, 2, &l(8, Read, 100, 200)).is_none());
        apply(&mut t, 2, l(8, Read, 100, 200));
        // Upgrading either reader conflicts with the other; the same owner on another session
        // is another owner.
        assert_eq!(conflict(&t, 1, &l(7, Write, 0, u64::MAX)).map(|h| h.session), Some(2));
        assert_eq!(conflict(&t, 2, &l(8, Write, 150, 160)).map(|h| h.session), Some(1));
        assert!(conflict(&t, 1, &l(7, Read, 0, 5)).is_none());
        assert!(conflict(&t, 2, &l(7, Write, 300, 400)).is_some());
        // Non-overlapping write locks of two owners coexist.
        let mut w = vec![];
        apply(&mut w, 1, l(7, Write, 0, 99));
        assert!(conflict(&w, 2, &l(8, Write, 100, 199)).is_none());
        assert!(conflict(&w, 2, &l(8, Write, 99, 199)).is_some());
        assert!(conflict(&w, 2, &l(8, Unlock, 0, 199)).is_none());
    }
}
