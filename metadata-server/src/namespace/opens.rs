//! Files open per session, and the orphans they keep.
//!
//! A mount reports the first open and the last close of each inode (`Open`, `Close`). An
//! inode that loses its last link while sessions have it open stays (nlink 0, blocks
//! referenced) as an orphan of each of them (`Cf::Orphans`, (session, ino)); the last close,
//! or the expiry of the last session holding it, drops it.

use super::*;

const BY_SESSION: u8 = b's';
const BY_INODE: u8 = b'i';

fn tagged(tag: u8, a: u64, b: u64) -> Vec<u8> {
    let mut k = vec![tag];
    k.extend_from_slice(&pair_key(a, b));
    k
}

fn prefix(tag: u8, a: u64) -> Vec<u8> {
    let mut k = vec![tag];
    k.extend_from_slice(&ino_key(a));
    k
}

/// Every entry of `cf` under `prefix`, paged.
pub(super) fn scan_all(store: &Store, cf: Cf, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, WireError> {
    let mut out = Vec::new();
    let mut start = prefix.to_vec();
    loop {
        let page = store.scan(cf, prefix, &start, 4096)?;
        let n = page.len();
        if let Some((k, _)) = page.last() {
            start = k.clone();
            start.push(0);
        }
        out.extend(page);
        if n < 4096 {
            return Ok(out);
        }
    }
}

/// Sessions that have `ino` open.
pub(super) fn holders(store: &Store, ino: u64) -> Result<Vec<u64>, WireError> {
    Ok(scan_all(store, Cf::Opens, &prefix(BY_INODE, ino))?.into_iter().map(|(k, _)| tail_u64(&k)).collect())
}

impl Namespace {
    pub(super) fn is_open_by(&self, session: u64, ino: u64) -> Result<bool, WireError> {
        Ok(self.store.get(Cf::Opens, &tagged(BY_SESSION, session, ino))?.is_some())
    }

    pub(super) fn holders(&self, ino: u64) -> Result<Vec<u64>, WireError> {
        holders(&self.store, ino)
    }

    /// Inodes `session` has open.
    pub(super) fn open_by(&self, session: u64) -> Result<Vec<u64>, WireError> {
        Ok(scan_all(&self.store, Cf::Opens, &prefix(BY_SESSION, session))?.into_iter().map(|(k, _)| tail_u64(&k)).collect())
    }

    pub(super) fn open_file(&self, tx: &mut Txn, ino: u64) -> Result<MetaResponse, WireError> {
        let r = tx.inode(ino)?;
        if r.kind != FileKind::File {
            return Ok(MetaResponse::Done);
        }
        let count: u64 = self.store.get(Cf::Opens, &tagged(BY_SESSION, tx.session, ino))?.map(|v| dec(&v)).transpose()?.unwrap_or(0);
        record_open(&mut tx.batch, tx.session, ino, count + 1);
        if r.nlink == 0 {
            // Open again after the session was renewed: it holds the orphan too.
            tx.batch.put(Cf::Orphans, pair_key(tx.session, ino), enc(&tx.now));
        }
        Ok(MetaResponse::Done)
    }

    /// One close of `ino` by `session`; with `all`, every open of it (expiry).
    pub(super) fn close_file(&self, tx: &mut Txn, session: u64, ino: u64, all: bool) -> Result<(), WireError> {
        let key = tagged(BY_SESSION, session, ino);
        let Some(v) = self.store.get(Cf::Opens, &key)? else { return Ok(()) };
        let count: u64 = dec(&v)?;
        if count > 1 && !all {
            tx.batch.put(Cf::Opens, key, enc(&(count - 1)));
            return Ok(());
        }
        tx.batch.delete(Cf::Opens, key);
        tx.batch.delete(Cf::Opens, tagged(BY_INODE, ino, session));
        self.drop_session_locks(tx, session, ino)?;
        self.release_orphan(tx, session, ino)
    }

    /// `session` no longer keeps `ino`: drop it if it is an orphan nobody else has open.
    pub(super) fn release_orphan(&self, tx: &mut Txn, session: u64, ino: u64) -> Result<(), WireError> {
        let okey = pair_key(session, ino);
        if self.store.get(Cf::Orphans, &okey)?.is_none() {
            return Ok(());
        }
        tx.batch.delete(Cf::Orphans, okey);
        if self.holders(ino)?.iter().any(|&s| s != session) {
            return Ok(());
        }
        match tx.inode(ino) {
            Ok(r) if r.nlink == 0 => tx.drop_inode(ino, &r),
            // Linked again cannot happen (Link refuses nlink 0); keep the inode.
            Ok(_) => Ok(()),
            Err(e) if e.code == ErrorCode::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `ExpireSession`: close everything the session has open (its locks go, orphans nobody
    /// else holds are dropped), drop orphans it kept under the older per-session rule, and
    /// delete its record and stored replies.
    pub(super) fn expire(&self, tx: &mut Txn, session: u64) -> Result<MetaResponse, WireError> {
        for ino in self.open_by(session)? {
            self.close_file(tx, session, ino, true)?;
        }
        for (k, _) in scan_all(&self.store, Cf::Orphans, &ino_key(session))? {
            self.release_orphan(tx, session, tail_u64(&k))?;
        }
        for (k, _) in scan_all(&self.store, Cf::Sessions, &session_key(session))? {
            tx.batch.delete(Cf::Sessions, k);
        }
        Ok(MetaResponse::Done)
    }

    /// `Reap`: one step of dropping `ino`, an orphan of [`REAPER`]. A session that opened it
    /// meanwhile (by number) keeps it: then the reaper lets go, and that session's last close
    /// hands it back.
    pub(super) fn reap(&self, now: i64, ino: u64) -> Result<(Batch, bool), WireError> {
        let okey = pair_key(REAPER, ino);
        let mut tx = Txn::new(&self.store, REAPER, now)?;
        if self.store.get(Cf::Orphans, &okey)?.is_none() {
            return Ok((tx.batch, true));
        }
        let r = tx.inode(ino)?;
        let page = self.store.scan(Cf::BlockMap, &ino_key(ino), &ino_key(ino), DROP_BOUND + 1)?;
        let done = if !self.holders(ino)?.is_empty() {
            true
        } else if page.len() > DROP_BOUND {
            tx.drop_blocks_in(ino, 0, tail_u64(&page[DROP_BOUND].0))?;
            false
        } else {
            tx.drop_inode_now(ino, &r)?;
            true
        };
        if done {
            tx.batch.delete(Cf::Orphans, okey);
        }
        Ok((tx.finish()?, done))
    }

    /// Finish every file being dropped in steps (a leader duty, each tick). Returns the number
    /// of `Reap` commands applied.
    pub fn reap_pending(&self) -> Result<usize, WireError> {
        let mut n = 0;
        for (k, _) in scan_all(&self.store, Cf::Orphans, &ino_key(REAPER))? {
            loop {
                n += 1;
                if self.submit_durable(&Command::new(Op::Reap { ino: tail_u64(&k) }))? == Outcome::Reaped(true) {
                    break;
                }
            }
        }
        Ok(n)
    }
}

/// The records of `session` holding `ino` open `count` times (in both indexes).
pub(super) fn record_open(b: &mut Batch, session: u64, ino: u64, count: u64) {
    b.put(Cf::Opens, tagged(BY_SESSION, session, ino), enc(&count));
    b.put(Cf::Opens, tagged(BY_INODE, ino, session), Vec::new());
}
