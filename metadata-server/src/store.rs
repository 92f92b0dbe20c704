//! The metadata store: the only module that sees RocksDB.
//!
//! One column family per kind of record. Every change is one [`Batch`], written atomically.
//! Durability is grouped: a batch is written to the WAL without a sync, and
//! [`Store::wait_durable`] syncs the WAL past it. The first waiter to find no sync running does
//! the sync itself (no thread hand-off on the common path); writers that arrive meanwhile wait
//! for the next sync, which covers all of them: concurrent commits share one fsync.
//!
//! Fail-stop: once a WAL sync has failed, the store refuses every further write until the
//! process is restarted. After a failed `fsync` the kernel may have dropped the dirty pages, so
//! nothing written since the last good sync can be trusted to be on disk, and no later change
//! may build on it; a restart recovers from what the WAL really holds.

use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions, DB};
use std::path::Path;
use std::sync::{Condvar, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cf {
    Inodes,
    Dirents,
    DirCookies,
    BlockMap,
    Inline,
    Refcounts,
    Sessions,
    Cluster,
    /// Inodes with no link left, kept for the session that has them open: (session, ino).
    Orphans,
    /// Extended attributes: (ino, name) → value.
    Xattrs,
    /// Files open per session: `s`‖session‖ino → handle count, and `i`‖ino‖session → empty.
    Opens,
    /// Lock table per inode: ino → the locks held on it.
    Locks,
    /// Patches of block-map entries (`tessera_common::patch`): (ino, index) → the patches in
    /// order; and ino → the number of that file's entries with patches.
    Patches,
    /// Under Raft: the log, index (big-endian) → entry.
    RaftLog,
    /// Under Raft: the vote, the commit index, the last purged and the last applied log id, the
    /// membership (see `raft::log`, `raft::machine`).
    RaftState,
}

impl Cf {
    pub const ALL: [Cf; 15] = [Cf::Inodes, Cf::Dirents, Cf::DirCookies, Cf::BlockMap, Cf::Inline, Cf::Refcounts, Cf::Sessions, Cf::Cluster, Cf::Orphans, Cf::Xattrs, Cf::Opens, Cf::Locks, Cf::Patches, Cf::RaftLog, Cf::RaftState];
    /// What commands change: the state a Raft snapshot carries.
    pub const STATE: [Cf; 13] = [Cf::Inodes, Cf::Dirents, Cf::DirCookies, Cf::BlockMap, Cf::Inline, Cf::Refcounts, Cf::Sessions, Cf::Cluster, Cf::Orphans, Cf::Xattrs, Cf::Opens, Cf::Locks, Cf::Patches];
    pub fn name(self) -> &'static str {
        match self {
            Cf::Inodes => "inodes",
            Cf::Dirents => "dirents",
            Cf::DirCookies => "dir_cookies",
            Cf::BlockMap => "block_map",
            Cf::Inline => "inline_data",
            Cf::Refcounts => "refcounts",
            Cf::Sessions => "sessions",
            Cf::Cluster => "cluster",
            Cf::Orphans => "orphans",
            Cf::Xattrs => "xattrs",
            Cf::Opens => "opens",
            Cf::Locks => "locks",
            Cf::Patches => "patches",
            Cf::RaftLog => "raft_log",
            Cf::RaftState => "raft_state",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("metadata store: {0}")]
    Db(#[from] rocksdb::Error),
    /// Carries the description of the first failure (see [`Store::failure`]).
    #[error("metadata store stopped: {0}; refusing every change until the server is restarted")]
    Failed(String),
}

enum Op {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
}

/// A set of changes applied atomically.
#[derive(Default)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put(cf, key.into(), value.into()));
    }
    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete(cf, key.into()));
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    pub fn append(&mut self, other: Batch) {
        self.ops.extend(other.ops);
    }
    /// Every change is in one of `cfs`.
    pub fn only_in(&self, cfs: &[Cf]) -> bool {
        self.ops.iter().all(|op| match op {
            Op::Put(cf, ..) | Op::Delete(cf, _) => cfs.contains(cf),
        })
    }
}

struct SyncState {
    written: u64,
    synced: u64,
    syncing: bool,
    /// Set by the first failed sync; never cleared.
    failed: Option<String>,
    #[cfg(test)]
    fail_next_sync: bool,
}

pub struct Store {
    db: DB,
    sync: (Mutex<SyncState>, Condvar),
    /// WAL syncs done since open (each covers every write before it).
    wal_syncs: std::sync::atomic::AtomicU64,
}

/// What `--metrics` shows of the store.
pub struct StoreStats {
    pub writes: u64,
    pub wal_syncs: u64,
    pub failed: bool,
    /// RocksDB's own view: writes stopped or slowed by compaction debt, live data.
    pub write_stopped: u64,
    pub delayed_write_rate: u64,
    pub live_data_bytes: u64,
    pub running_compactions: u64,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        let cfs = Cf::ALL.iter().map(|c| ColumnFamilyDescriptor::new(c.name(), Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let state = SyncState {
            written: 0,
            synced: 0,
            syncing: false,
            failed: None,
            #[cfg(test)]
            fail_next_sync: false,
        };
        let sync = (Mutex::new(state), Condvar::new());
        Ok(Store { db, sync, wal_syncs: Default::default() })
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(cf.name()).expect("column family created at open")
    }

    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    /// Up to `limit` entries whose key starts with `prefix`, from `start` (inclusive, must
    /// itself start with `prefix`) onwards.
    pub fn scan(&self, cf: Cf, prefix: &[u8], start: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let it = self.db.iterator_cf_opt(self.cf(cf), bounded(prefix_end(prefix)), IteratorMode::From(start, Direction::Forward));
        take_prefix(it, prefix, limit)
    }

    /// The last entry of `cf`.
    pub fn last(&self, cf: Cf) -> Result<Option<(Vec<u8>, Vec<u8>)>, StoreError> {
        match self.db.iterator_cf(self.cf(cf), IteratorMode::End).next() {
            Some(item) => {
                let (k, v) = item?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
            None => Ok(None),
        }
    }

    /// The entries of `cf` with keys in `[from, to)`.
    pub fn range(&self, cf: Cf, from: &[u8], to: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        let it = self.db.iterator_cf_opt(self.cf(cf), bounded(Some(to.to_vec())), IteratorMode::From(from, Direction::Forward));
        for item in it {
            let (k, v) = item?;
            if &*k >= to {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Why the store stopped accepting writes, if it did.
    pub fn failure(&self) -> Option<String> {
        self.sync.0.lock().unwrap().failed.clone()
    }

    /// Fail with [`StoreError::Failed`] once a sync has failed.
    pub fn check_ok(&self) -> Result<(), StoreError> {
        match self.failure() {
            Some(why) => Err(StoreError::Failed(why)),
            None => Ok(()),
        }
    }

    /// Make the next WAL sync fail, as a failing disk would.
    #[cfg(test)]
    pub fn fail_next_sync_for_test(&self) {
        self.sync.0.lock().unwrap().fail_next_sync = true;
    }

    /// Write `batch` atomically to the WAL (not yet synced). Returns a ticket for
    /// [`wait_durable`](Self::wait_durable). Refused once a sync has failed.
    pub fn apply(&self, batch: Batch) -> Result<u64, StoreError> {
        self.check_ok()?;
        let mut wb = WriteBatch::default();
        for op in batch.ops {
            match op {
                Op::Put(cf, k, v) => wb.put_cf(self.cf(cf), k, v),
                Op::Delete(cf, k) => wb.delete_cf(self.cf(cf), k),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        // Checked again under the lock: a sync that failed meanwhile stops this write too.
        let mut s = self.sync.0.lock().unwrap();
        if let Some(why) = &s.failed {
            return Err(StoreError::Failed(why.clone()));
        }
        self.db.write_opt(wb, &wo)?;
        s.written += 1;
        Ok(s.written)
    }

    /// Block until the write with `ticket` is on disk. Concurrent callers share one WAL sync.
    pub fn wait_durable(&self, ticket: u64) -> Result<(), StoreError> {
        let (m, cv) = &self.sync;
        let mut s = m.lock().unwrap();
        loop {
            if let Some(why) = &s.failed {
                return Err(StoreError::Failed(why.clone()));
            }
            if s.synced >= ticket {
                return Ok(());
            }
            if !s.syncing {
                // Lead: one sync covers every write made so far.
                s.syncing = true;
                let target = s.written;
                #[cfg(test)]
                let injected = std::mem::take(&mut s.fail_next_sync);
                #[cfg(not(test))]
                let injected = false;
                drop(s);
                let r = if injected { Err("injected failure".to_string()) } else { self.db.flush_wal(true).map_err(|e| e.to_string()) };
                s = m.lock().unwrap();
                s.syncing = false;
                match r {
                    Ok(()) => {
                        s.synced = s.synced.max(target);
                        self.wal_syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => {
                        let why = format!("WAL sync failed at {}: {e}", utc_now());
                        tracing::error!("{why}; the metadata server refuses every change until it is restarted");
                        s.failed = Some(why);
                    }
                }
                cv.notify_all();
                continue;
            }
            s = cv.wait(s).unwrap();
        }
    }

    pub fn stats(&self) -> StoreStats {
        let (writes, failed) = {
            let s = self.sync.0.lock().unwrap();
            (s.written, s.failed.is_some())
        };
        let int = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        let live = Cf::ALL.iter().map(|c| self.db.property_int_value_cf(self.cf(*c), "rocksdb.estimate-live-data-size").ok().flatten().unwrap_or(0)).sum();
        StoreStats {
            writes,
            wal_syncs: self.wal_syncs.load(std::sync::atomic::Ordering::Relaxed),
            failed,
            write_stopped: int("rocksdb.is-write-stopped"),
            delayed_write_rate: int("rocksdb.actual-delayed-write-rate"),
            live_data_bytes: live,
            running_compactions: int("rocksdb.num-running-compactions"),
        }
    }

    /// The whole store as it is now, unchanged by later writes: for long reads such as the audit.
    pub fn view(&self) -> View<'_> {
        View { store: self, snap: self.db.snapshot() }
    }

    /// A consistent copy of the database in `dir` (hard links where possible).
    pub fn checkpoint(&self, dir: &Path) -> Result<(), StoreError> {
        rocksdb::checkpoint::Checkpoint::new(&self.db)?.create_checkpoint(dir)?;
        Ok(())
    }
}

/// A RocksDB snapshot: every batch is in it whole or not at all.
pub struct View<'a> {
    store: &'a Store,
    snap: rocksdb::Snapshot<'a>,
}

impl View<'_> {
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.snap.get_cf(self.store.cf(cf), key)?)
    }

    /// [`Store::scan`] in this view.
    pub fn scan(&self, cf: Cf, prefix: &[u8], start: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let it = self.snap.iterator_cf_opt(self.store.cf(cf), bounded(prefix_end(prefix)), IteratorMode::From(start, Direction::Forward));
        take_prefix(it, prefix, limit)
    }

    /// For each of `prefixes`, whether `cf` has a key that starts with it: one iterator, seeked
    /// to each in turn (making an iterator costs more than a seek; `readdirplus` asks this for
    /// every entry). The prefixes are visited in key order, and an iterator already past a
    /// prefix answers it without a seek: the deleted keys between live ones are walked over
    /// once, not once per prefix.
    pub fn has_prefixes(&self, cf: Cf, prefixes: &[Vec<u8>]) -> Result<Vec<bool>, StoreError> {
        let mut order: Vec<usize> = (0..prefixes.len()).collect();
        order.sort_by(|&a, &b| prefixes[a].cmp(&prefixes[b]));
        let mut it = self.snap.raw_iterator_cf(self.store.cf(cf));
        let mut out = vec![false; prefixes.len()];
        for i in order {
            let p = &prefixes[i];
            if !it.key().is_some_and(|k| k >= p.as_slice()) {
                it.seek(p);
                it.status()?;
            }
            out[i] = it.key().is_some_and(|k| k.starts_with(p));
        }
        Ok(out)
    }

    /// Call `f` on every entry of `cf`, in key order.
    pub fn for_each<E: From<StoreError>>(&self, cf: Cf, mut f: impl FnMut(&[u8], &[u8]) -> Result<(), E>) -> Result<(), E> {
        for item in self.snap.iterator_cf(self.store.cf(cf), IteratorMode::Start) {
            let (k, v) = item.map_err(StoreError::from)?;
            f(&k, &v)?;
        }
        Ok(())
    }
}

/// Read options for an iterator that stops before `end`. Without the bound, an iterator that
/// runs out of live keys walks over every deleted key after them (until compaction drops
/// them), and the keys deleted after a prefix grow with each unlink.
fn bounded(end: Option<Vec<u8>>) -> ReadOptions {
    let mut o = ReadOptions::default();
    if let Some(end) = end {
        o.set_iterate_upper_bound(end);
    }
    o
}

/// The first key after every key that starts with `prefix`, if there is one.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Up to `limit` entries of `iter` while their keys start with `prefix`.
fn take_prefix<I, K, V>(iter: I, prefix: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError>
where
    I: Iterator<Item = Result<(K, V), rocksdb::Error>>,
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let mut out = Vec::new();
    for item in iter {
        let (k, v) = item?;
        if !k.as_ref().starts_with(prefix) || out.len() >= limit {
            break;
        }
        out.push((k.as_ref().to_vec(), v.as_ref().to_vec()));
    }
    Ok(out)
}

/// The current time as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    tessera_common::utc_time(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_scan_reopen() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = Store::open(d.path()).unwrap();
            let mut b = Batch::default();
            for i in 0u8..10 {
                b.put(Cf::Dirents, vec![1, i], vec![i]);
            }
            b.put(Cf::Dirents, vec![2, 0], vec![9]);
            let t = s.apply(b).unwrap();
            s.wait_durable(t).unwrap();
            let got = s.scan(Cf::Dirents, &[1], &[1, 3], 100).unwrap();
            assert_eq!(got.len(), 7);
            assert_eq!(s.scan(Cf::Dirents, &[1], &[1], 4).unwrap().len(), 4);
            assert_eq!(s.get(Cf::Inodes, &[1, 0]).unwrap(), None);
        }
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.get(Cf::Dirents, &[2, 0]).unwrap(), Some(vec![9]));
    }

    /// A store with `key(i)` for i in 0..2000 in `cf`, those of `deleted` deleted again.
    fn with_deleted(cf: Cf, key: impl Fn(u64) -> Vec<u8>, deleted: std::ops::Range<u64>) -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let mut b = Batch::default();
        for i in 0..2000 {
            b.put(cf, key(i), vec![1]);
        }
        s.apply(b).unwrap();
        let mut b = Batch::default();
        for i in deleted {
            b.delete(cf, key(i));
        }
        s.apply(b).unwrap();
        (d, s)
    }

    /// A scan stops at the end of its prefix: the deleted keys after it (each unlink leaves
    /// some, in creation order) are not walked over, or every unlink would cost more than the
    /// last until RocksDB compacts them away.
    #[test]
    fn a_scan_does_not_walk_the_deleted_keys_after_its_prefix() {
        // Keys as the store's are: an inode number, then more.
        let key = |ino: u64| [ino.to_be_bytes(), 7u64.to_be_bytes()].concat();
        let (_d, s) = with_deleted(Cf::Opens, key, 1..2000);
        rocksdb::perf::set_perf_stats(rocksdb::perf::PerfStatsLevel::EnableCount);
        let mut ctx = rocksdb::perf::PerfContext::default();
        let skipped = |ctx: &rocksdb::perf::PerfContext| ctx.metric(rocksdb::perf::PerfMetric::InternalDeleteSkippedCount);
        ctx.reset();
        assert_eq!(s.scan(Cf::Opens, &[0; 8], &[0; 8], 100).unwrap().len(), 1);
        assert!(skipped(&ctx) < 10, "scan walked {} deleted keys", skipped(&ctx));
        ctx.reset();
        assert_eq!(s.view().scan(Cf::Opens, &[0; 8], &[0; 8], 100).unwrap().len(), 1);
        assert!(skipped(&ctx) < 10, "view scan walked {} deleted keys", skipped(&ctx));
        ctx.reset();
        assert_eq!(s.range(Cf::Opens, &key(0), &key(1)).unwrap().len(), 1);
        assert!(skipped(&ctx) < 10, "range walked {} deleted keys", skipped(&ctx));
    }

    #[test]
    fn a_prefix_ends_at_its_successor() {
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(&[]), None);
    }

    #[test]
    fn has_prefixes_answers_each_prefix_in_turn() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let mut b = Batch::default();
        for (ino, name) in [(1u64, &b"a"[..]), (1, b"b"), (2, b"a"), (4, b"c")] {
            b.put(Cf::Xattrs, [&ino.to_be_bytes()[..], name].concat(), vec![1]);
        }
        s.apply(b).unwrap();
        let mut b = Batch::default();
        b.delete(Cf::Xattrs, [&2u64.to_be_bytes()[..], b"a"].concat());
        s.apply(b).unwrap();
        let prefixes: Vec<Vec<u8>> = [4u64, 1, 2, 3, 5, 1].iter().map(|i| i.to_be_bytes().to_vec()).collect();
        assert_eq!(s.view().has_prefixes(Cf::Xattrs, &prefixes).unwrap(), [true, true, false, false, false, true]);
    }

    /// Asked for many prefixes among deleted keys, `has_prefixes` walks over each deleted key
    /// once, not once per prefix (a directory listed after many of its files' xattrs went).
    #[test]
    fn has_prefixes_walks_the_deleted_keys_once() {
        let (_d, s) = with_deleted(Cf::Xattrs, |ino| [&ino.to_be_bytes()[..], b"user.x"].concat(), 1..1999);
        let prefixes: Vec<Vec<u8>> = (0..2000u64).rev().map(|i| i.to_be_bytes().to_vec()).collect();
        rocksdb::perf::set_perf_stats(rocksdb::perf::PerfStatsLevel::EnableCount);
        let mut ctx = rocksdb::perf::PerfContext::default();
        ctx.reset();
        let found = s.view().has_prefixes(Cf::Xattrs, &prefixes).unwrap();
        let skipped = ctx.metric(rocksdb::perf::PerfMetric::InternalDeleteSkippedCount);
        assert_eq!(found.iter().filter(|f| **f).count(), 2);
        assert!(found[0] && found[1999]);
        assert!(skipped < 4000, "walked {skipped} deleted keys for 2000 prefixes");
    }
}
