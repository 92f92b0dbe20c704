//! The block store on local disk: one file per block under `blocks/xx/<hex id>`.
//!
//! A put writes a temporary file, fsyncs it, links it into place and fsyncs the directory, so
//! a block that is acknowledged survives a crash. A put of a stored block writes nothing, but
//! it too fsyncs the block's directory before it acknowledges: the put that created the file
//! may not have done so yet. A fan-out directory `blocks/xx` is made durable (its parent
//! fsynced) before the first block goes into it. Every read is verified against the id; a
//! corrupt file, or one whose read fails with an I/O error, is moved to `quarantine/` (or, if
//! even that fails, marked bad in memory): it then counts as absent, so `Has` answers false and
//! repair sends a good copy.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tessera_common::BlockId;

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("block {0} not found")]
    NotFound(BlockId),
    #[error("block {0}: data does not match its id")]
    BadHash(BlockId),
    #[error("block {0} is corrupt on disk (quarantined)")]
    Corrupt(BlockId),
    #[error("block {0}: read error on disk (quarantined): {1}")]
    Unreadable(BlockId, std::io::Error),
    #[error("no space for block {0}: {1}")]
    NoSpace(BlockId, String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ChunkError + '_ {
    move |source| ChunkError::Io { path: path.to_owned(), source }
}

fn is_no_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

pub struct BlockStore {
    root: PathBuf,
    /// Orders "use" (has/put) against "delete if idle" so neither slips between the other's
    /// check and action.
    gc_lock: std::sync::Mutex<()>,
    blocks: AtomicU64,
    used: AtomicU64,
    tmp_seq: AtomicU64,
    /// Fan-out directories `blocks/xx` known to be durable (created and `blocks/` fsynced).
    fanout: Vec<AtomicBool>,
    /// Copies whose read failed and that could not be moved to quarantine: absent for every
    /// purpose until a put replaces them (forgotten on restart, when they are read again).
    bad: Mutex<HashSet<BlockId>>,
    /// When this process last used each block, on the monotonic clock (see `idle_secs`).
    last_use: Mutex<HashMap<BlockId, Instant>>,
    started: Instant,
    writer: crate::direct::DirectWriter,
    #[cfg(test)]
    faults: test_hooks::Faults,
}

/// Uses older than this are forgotten (the map stays bounded); the block's idle time is then
/// capped by the process's uptime instead.
const LAST_USE_KEEP: Duration = Duration::from_secs(24 * 3600);

#[cfg(test)]
mod test_hooks {
    use std::path::PathBuf;
    use std::sync::Mutex;
    /// Faults a unit test injects, and the directory fsyncs it can check.
    #[derive(Default)]
    pub struct Faults {
        /// Reads of these blocks fail with EIO.
        pub eio: Mutex<std::collections::HashSet<tessera_common::BlockId>>,
        pub dir_syncs: Mutex<Vec<PathBuf>>,
    }
}

/// Removes a temporary file however the put ends.
struct TempGuard<'a>(&'a Path);
impl Drop for TempGuard<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0);
    }
}

impl BlockStore {
    pub fn open(root: &Path) -> Result<Self, ChunkError> {
        for d in ["blocks", "tmp", "quarantine"] {
            let p = root.join(d);
            tessera_common::durable::create_dir_all(&p).map_err(io(&p))?;
        }
        // Temporary files left by a crash are never acknowledged blocks.
        let tmp = root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io(&tmp))?.flatten() {
            let _ = fs::remove_file(e.path());
        }
        let s = BlockStore {
            root: root.to_owned(),
            gc_lock: Default::default(),
            blocks: AtomicU64::new(0),
            used: AtomicU64::new(0),
            tmp_seq: AtomicU64::new(0),
            fanout: (0..256).map(|_| AtomicBool::new(false)).collect(),
            bad: Default::default(),
            last_use: Default::default(),
            started: Instant::now(),
            writer: crate::direct::DirectWriter::new(),
            #[cfg(test)]
            faults: Default::default(),
        };
        // The top directories, and the fan-out directories found, are durable from here on.
        s.sync_dir(root)?;
        s.sync_dir(&root.join("blocks"))?;
        let top = root.join("blocks");
        for e in fs::read_dir(&top).map_err(io(&top))?.flatten() {
            if let Some(i) = e.file_name().to_str().filter(|n| n.len() == 2).and_then(|n| u8::from_str_radix(n, 16).ok()) {
                s.fanout[i as usize].store(true, Ordering::Relaxed);
            }
        }
        let (mut n, mut bytes) = (0, 0);
        s.for_each(|_, len| {
            n += 1;
            bytes += len;
        })?;
        s.blocks.store(n, Ordering::Relaxed);
        s.used.store(bytes, Ordering::Relaxed);
        Ok(s)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, id: &BlockId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join("blocks").join(&hex[..2]).join(hex)
    }

    pub fn count(&self) -> u64 {
        self.blocks.load(Ordering::Relaxed)
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether the block is stored. With `touch` (a client's dedup check), a hit counts as a use
    /// (see `delete_if_idle`); servers' probes (repair, fsck) must not touch, or no copy would
    /// ever be idle for the grace period.
    pub fn has(&self, id: &BlockId, touch: bool) -> bool {
        let p = self.path(id);
        if self.is_bad(id) {
            return false;
        }
        if !touch {
            return p.is_file();
        }
        let _g = self.gc_lock.lock().unwrap();
        self.touch(id, &p)
    }

    fn is_bad(&self, id: &BlockId) -> bool {
        self.bad.lock().unwrap().contains(id)
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), ChunkError> {
        #[cfg(test)]
        self.faults.dir_syncs.lock().unwrap().push(dir.to_owned());
        tessera_common::durable::sync_dir(dir).map_err(io(dir))
    }

    /// Create the fan-out directory of `id` if needed; once it is known to be durable (its
    /// parent fsynced, by us or by a put that raced us), it is not synced again.
    fn fanout_dir(&self, id: &BlockId) -> Result<(), ChunkError> {
        let durable = &self.fanout[id.0[0] as usize];
        if durable.load(Ordering::Acquire) {
            return Ok(());
        }
        let p = self.path(id);
        let dir = p.parent().unwrap();
        fs::create_dir_all(dir).map_err(io(dir))?;
        self.sync_dir(&self.root.join("blocks"))?;
        durable.store(true, Ordering::Release);
        Ok(())
    }

    /// Make the name of a stored block durable before a put acknowledges it.
    fn sync_name(&self, id: &BlockId) -> Result<(), ChunkError> {
        self.fanout_dir(id)?;
        self.sync_dir(self.path(id).parent().unwrap())
    }

    /// Refresh the last-use time (the file's mtime, and this process's monotonic record).
    /// False if the file is missing.
    fn touch(&self, id: &BlockId, p: &Path) -> bool {
        let ok = File::options().write(true).open(p).and_then(|f| f.set_modified(std::time::SystemTime::now())).is_ok();
        if ok {
            self.used_at(id, Instant::now());
        }
        ok
    }

    fn used_at(&self, id: &BlockId, at: Instant) {
        let mut m = self.last_use.lock().unwrap();
        m.insert(*id, at);
        // Amortised pruning: at most one sweep per doubling of the map.
        if m.len() >= 1 << 16 && m.len().is_power_of_two() {
            m.retain(|_, t| t.elapsed() < LAST_USE_KEEP);
        }
    }

    /// Seconds since the block was last put or found. The file's mtime keeps that across
    /// restarts, but it is wall-clock time: a clock set forward would make fresh blocks look
    /// old and let garbage collection take copies not yet committed. So the answer is at most
    /// the time since this process last used the block, or since it started, on the monotonic
    /// clock (a restart therefore postpones collection by up to one grace period; a clock set
    /// back only postpones it too).
    pub fn idle_secs(&self, id: &BlockId) -> Option<u64> {
        let m = fs::metadata(self.path(id)).ok()?.modified().ok()?;
        let wall = m.elapsed().map(|d| d.as_secs()).unwrap_or(0);
        let mono = self.last_use.lock().unwrap().get(id).map_or(self.started.elapsed(), |t| t.elapsed());
        Some(wall.min(mono.as_secs()))
    }

    /// Delete the block if it has not been used for `min_idle` seconds.
    pub fn delete_if_idle(&self, id: &BlockId, min_idle: u64) -> Result<bool, ChunkError> {
        let _g = self.gc_lock.lock().unwrap();
        match self.idle_secs(id) {
            Some(idle) if idle >= min_idle => self.delete(id),
            _ => Ok(false),
        }
    }

    /// Stored blocks in id order after `after`, with seconds since last use.
    pub fn list(&self, after: Option<BlockId>, limit: usize) -> Result<Vec<(BlockId, u64)>, ChunkError> {
        let mut ids = Vec::new();
        self.for_each(|id, _| {
            if after.is_none_or(|a| id > a) {
                ids.push(id)
            }
        })?;
        ids.sort_unstable();
        ids.truncate(limit);
        Ok(ids.into_iter().map(|id| (id, self.idle_secs(&id).unwrap_or(0))).collect())
    }

    /// Store `data` as block `id`. Returns true when the block was new. `age`: `None` for a
    /// client's write, which counts as a use; for a copy from another server (repair), the
    /// seconds since its last use there: a new copy keeps that age, an existing one is left
    /// as it is, so copying never keeps a block from being collected.
    pub fn put(&self, id: &BlockId, data: &[u8], age: Option<u64>) -> Result<bool, ChunkError> {
        if !id.verify(data) {
            return Err(ChunkError::BadHash(*id));
        }
        // A full disk fails this put alone: the temporary file goes, stored blocks stay as they are.
        self.put_inner(id, data, age).map_err(|e| match e {
            ChunkError::Io { path, source } if is_no_space(&source) => ChunkError::NoSpace(*id, format!("{}: {source}", path.display())),
            e => e,
        })
    }

    fn put_inner(&self, id: &BlockId, data: &[u8], age: Option<u64>) -> Result<bool, ChunkError> {
        let dest = self.path(id);
        // A bad copy (unreadable, not quarantined) is replaced by rename, which overwrites it.
        let replace = self.is_bad(id);
        if !replace {
            let stored = {
                let _g = self.gc_lock.lock().unwrap();
                if age.is_none() {
                    self.touch(id, &dest)
                } else {
                    dest.is_file()
                }
            };
            if stored {
                self.sync_name(id)?;
                return Ok(false);
            }
        }
        self.fanout_dir(id)?;
        let dir = dest.parent().unwrap();
        let tmp = self.root.join("tmp").join(format!("{}.{}", id.to_hex(), self.tmp_seq.fetch_add(1, Ordering::Relaxed)));
        let guard = TempGuard(&tmp);
        let f = self.writer.create(&tmp, data).map_err(io(&tmp))?;
        if let Some(age) = age {
            let then = std::time::SystemTime::now() - std::time::Duration::from_secs(age);
            f.set_modified(then).map_err(io(&tmp))?;
        }
        f.sync_data().map_err(io(&tmp))?;
        drop(f);
        // link(2) never replaces: when two puts of the same block race, exactly one creates it
        // (and counts it); the other finds it there, and syncs the name before it acknowledges.
        // The guard removes the temporary name.
        let linked = if replace { fs::rename(&tmp, &dest) } else { fs::hard_link(&tmp, &dest) };
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                self.sync_dir(dir)?;
                return Ok(false);
            }
            Err(e) => return Err(ChunkError::Io { path: dest, source: e }),
        }
        drop(guard);
        self.sync_dir(dir)?;
        // A repair copy keeps the age it had on its sender (itself bounded there the same way).
        if let Some(at) = Instant::now().checked_sub(Duration::from_secs(age.unwrap_or(0))) {
            self.used_at(id, at);
        }
        if replace && !self.bad.lock().unwrap().remove(id) {
            // Another put replaced it first and counted it.
            return Ok(false);
        }
        self.blocks.fetch_add(1, Ordering::Relaxed);
        self.used.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(true)
    }

    /// Read block `id` without verifying it (for a reader that verifies). A copy whose read
    /// fails with an I/O error is quarantined.
    pub fn read(&self, id: &BlockId) -> Result<Vec<u8>, ChunkError> {
        if self.is_bad(id) {
            return Err(ChunkError::NotFound(*id));
        }
        let p = self.path(id);
        let read = || -> std::io::Result<Vec<u8>> {
            let mut f = File::open(&p)?;
            #[cfg(test)]
            if self.faults.eio.lock().unwrap().contains(id) {
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
            let mut data = Vec::with_capacity(f.metadata().map(|m| m.len() as usize).unwrap_or(0));
            f.read_to_end(&mut data)?;
            Ok(data)
        };
        match read() {
            Ok(d) => Ok(d),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ChunkError::NotFound(*id)),
            // The medium failed under this copy (EIO, or EBADMSG/EUCLEAN from a checksumming
            // file system): never trust it again; a good copy replaces it.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EIO | libc::EBADMSG | libc::EUCLEAN)) => {
                self.set_aside(id);
                Err(ChunkError::Unreadable(*id, e))
            }
            Err(e) => Err(ChunkError::Io { path: p, source: e }),
        }
    }

    /// Read and verify block `id`. A copy that fails verification, or cannot be read, is
    /// quarantined.
    pub fn get(&self, id: &BlockId) -> Result<Vec<u8>, ChunkError> {
        let data = self.read(id)?;
        if !id.verify(&data) {
            self.quarantine(id, data.len() as u64);
            return Err(ChunkError::Corrupt(*id));
        }
        Ok(data)
    }

    fn quarantine(&self, id: &BlockId, len: u64) {
        let q = self.root.join("quarantine").join(id.to_hex());
        if fs::rename(self.path(id), &q).is_ok() {
            self.uncount(len);
            tracing::error!(block = %id.short(), "corrupt block quarantined");
        }
    }

    /// Take an unreadable copy out of service: to quarantine, or if even the rename fails,
    /// into the in-memory bad set.
    fn set_aside(&self, id: &BlockId) {
        let p = self.path(id);
        let len = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        let q = self.root.join("quarantine").join(id.to_hex());
        let _g = self.gc_lock.lock().unwrap();
        if self.is_bad(id) {
            return;
        }
        match fs::rename(&p, &q) {
            Ok(()) => tracing::error!(block = %id.short(), "unreadable block quarantined"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::error!(block = %id.short(), "unreadable block cannot be quarantined ({e}); ignoring the copy");
                self.bad.lock().unwrap().insert(*id);
            }
        }
        self.uncount(len);
    }

    fn uncount(&self, len: u64) {
        self.blocks.fetch_sub(1, Ordering::Relaxed);
        self.used.fetch_sub(len.min(self.used()), Ordering::Relaxed);
    }

    pub fn delete(&self, id: &BlockId) -> Result<bool, ChunkError> {
        let p = self.path(id);
        self.last_use.lock().unwrap().remove(id);
        if self.bad.lock().unwrap().remove(id) {
            // Already uncounted when it was set aside.
            let _ = fs::remove_file(&p);
            return Ok(false);
        }
        let len = match fs::metadata(&p) {
            Ok(m) => m.len(),
            Err(_) => return Ok(false),
        };
        match fs::remove_file(&p) {
            Ok(()) => {
                self.uncount(len);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ChunkError::Io { path: p, source: e }),
        }
    }

    /// Visit every stored block with its length.
    pub fn for_each(&self, mut f: impl FnMut(BlockId, u64)) -> Result<(), ChunkError> {
        let top = self.root.join("blocks");
        for sub in fs::read_dir(&top).map_err(io(&top))?.flatten() {
            for e in fs::read_dir(sub.path()).map_err(io(&sub.path()))?.flatten() {
                if let Some(id) = e.file_name().to_str().and_then(BlockId::from_hex).filter(|id| !self.is_bad(id)) {
                    f(id, e.metadata().map(|m| m.len()).unwrap_or(0));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock set two hours forward looks, to the store, like a block file whose mtime is two
    /// hours old. A block put a moment ago must not be idle for GC whatever the wall clock says.
    #[test]
    fn a_clock_set_forward_does_not_make_fresh_blocks_idle() {
        let d = tempfile::tempdir().unwrap();
        let s = BlockStore::open(d.path()).unwrap();
        let data = vec![3u8; 4096];
        let id = BlockId::of(&data);
        s.put(&id, &data, None).unwrap();
        let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
        File::options().write(true).open(s.path(&id)).unwrap().set_modified(two_hours_ago).unwrap();
        assert!(s.idle_secs(&id).unwrap() < 60, "idle {:?} s right after the put", s.idle_secs(&id));
        assert!(!s.delete_if_idle(&id, 3600).unwrap(), "a block put a moment ago was collected after a clock jump");
        assert!(s.has(&id, false));
        // A store opened later (a restart) caps the idle time by its uptime too.
        let reopened = BlockStore::open(d.path()).unwrap();
        File::options().write(true).open(s.path(&id)).unwrap().set_modified(two_hours_ago).unwrap();
        assert!(!reopened.delete_if_idle(&id, 3600).unwrap(), "collected right after a restart with the clock ahead");
    }

    #[test]
    fn put_get_verify_quarantine_delete() {
        let d = tempfile::tempdir().unwrap();
        let s = BlockStore::open(d.path()).unwrap();
        let data = vec![7u8; 10_000];
        let id = BlockId::of(&data);
        assert!(s.put(&id, &data, None).unwrap());
        assert!(!s.put(&id, &data, None).unwrap(), "second put is a no-op");
        assert_eq!((s.count(), s.used()), (1, 10_000));
        assert_eq!(s.get(&id).unwrap(), data);
        assert!(matches!(s.put(&BlockId::of(b"x"), b"y", None), Err(ChunkError::BadHash(_))));
        // Racing puts of one block count it once.
        let other = vec![9u8; 5000];
        let oid = BlockId::of(&other);
        let news: usize = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..8).map(|_| sc.spawn(|| s.put(&oid, &other, None).unwrap() as usize)).collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(news, 1);
        assert_eq!((s.count(), s.used()), (2, 15_000));
        assert!(s.delete(&oid).unwrap());
        assert_eq!(fs::read_dir(d.path().join("tmp")).unwrap().count(), 0, "no temporary files left");

        // Flip a byte on disk: the read refuses it and quarantines the file.
        let mut raw = fs::read(s.path(&id)).unwrap();
        raw[5] ^= 1;
        fs::write(s.path(&id), &raw).unwrap();
        assert!(matches!(s.get(&id), Err(ChunkError::Corrupt(_))));
        assert!(!s.has(&id, false));
        assert_eq!(s.count(), 0);

        s.put(&id, &data, None).unwrap();
        let reopened = BlockStore::open(d.path()).unwrap();
        assert_eq!(reopened.count(), 1);
        // Just used: not idle for an hour, so not collected.
        assert!(!reopened.delete_if_idle(&id, 3600).unwrap());
        assert!(reopened.has(&id, false));
        assert_eq!(reopened.list(None, 10).unwrap().len(), 1);
        assert!(reopened.list(Some(id), 10).unwrap().is_empty());
        assert!(reopened.delete(&id).unwrap());
        assert!(matches!(reopened.get(&id), Err(ChunkError::NotFound(_))));
    }

    /// Only a client's put or dedup check refreshes the last-use time; servers' probes and
    /// copies do not (or repair would keep every replicated block from being collected).
    #[test]
    fn only_a_clients_use_refreshes_the_idle_time() {
        let d = tempfile::tempdir().unwrap();
        let s = BlockStore::open(d.path()).unwrap();
        let data = vec![3u8; 1000];
        let id = BlockId::of(&data);
        // A copy from a server where it was last used an hour ago keeps that age.
        assert!(s.put(&id, &data, Some(3600)).unwrap());
        let old = |s: &BlockStore| s.idle_secs(&id).unwrap() >= 3599;
        assert!(old(&s));
        assert!(s.has(&id, false));
        assert!(!s.put(&id, &data, Some(0)).unwrap());
        assert!(old(&s), "a probe or a repair copy refreshed the idle time");
        assert!(s.delete_if_idle(&id, 3600).unwrap(), "idle for an hour: collected");
        // A client's dedup check and a client's put count as use.
        assert!(s.put(&id, &data, Some(3600)).unwrap());
        assert!(s.has(&id, true));
        assert!(!s.delete_if_idle(&id, 3600).unwrap());
        assert!(s.delete(&id).unwrap());
        assert!(s.put(&id, &data, Some(3600)).unwrap());
        assert!(!s.put(&id, &data, None).unwrap());
        assert!(!s.delete_if_idle(&id, 3600).unwrap(), "a client's put must count as use");
    }

    /// Every put that acknowledges, also one that finds the block already there (it may have
    /// been linked by a put that has not fsynced the directory yet), has fsynced the block's
    /// directory; a new fan-out directory is made durable in `blocks/` first.
    #[test]
    fn every_acknowledged_put_has_synced_the_name() {
        let d = tempfile::tempdir().unwrap();
        let s = BlockStore::open(d.path()).unwrap();
        let data = vec![5u8; 4000];
        let id = BlockId::of(&data);
        let syncs = |s: &BlockStore| std::mem::take(&mut *s.faults.dir_syncs.lock().unwrap());
        syncs(&s);
        let dir = s.path(&id).parent().unwrap().to_owned();
        assert!(s.put(&id, &data, None).unwrap());
        assert_eq!(syncs(&s), vec![d.path().join("blocks"), dir.clone()], "a new fan-out directory, then the block's name");
        // The fast path (already stored), for a client's put and for a repair copy.
        assert!(!s.put(&id, &data, None).unwrap());
        assert_eq!(syncs(&s), vec![dir.clone()]);
        assert!(!s.put(&id, &data, Some(10)).unwrap());
        assert_eq!(syncs(&s), vec![dir.clone()]);
        // Racing puts of a new block: whichever path each takes, each syncs before it returns.
        let other = vec![6u8; 4000];
        let oid = BlockId::of(&other);
        let odir = s.path(&oid).parent().unwrap().to_owned();
        let results: Vec<(bool, Vec<PathBuf>)> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    sc.spawn(|| {
                        let new = s.put(&oid, &other, None).unwrap();
                        (new, s.faults.dir_syncs.lock().unwrap().clone())
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|r| r.0).count(), 1);
        let all = syncs(&s);
        assert!(all.iter().filter(|p| **p == odir).count() >= 8, "8 puts acknowledged, directory synced {} times: {all:?}", all.iter().filter(|p| **p == odir).count());
    }

    /// A read that fails with EIO takes the copy out of service: `Has` answers false (so repair
    /// sends a good copy), the counts drop, and a put replaces it. Also when the copy cannot
    /// even be moved to quarantine.
    #[test]
    fn an_unreadable_copy_is_set_aside_and_replaced() {
        let d = tempfile::tempdir().unwrap();
        let s = BlockStore::open(d.path()).unwrap();
        let data = vec![8u8; 3000];
        let id = BlockId::of(&data);
        s.put(&id, &data, None).unwrap();
        s.faults.eio.lock().unwrap().insert(id);
        assert!(matches!(s.read(&id), Err(ChunkError::Unreadable(..))));
        assert!(!s.has(&id, false) && !s.has(&id, true), "Has still answers true for an unreadable copy");
        assert_eq!((s.count(), s.used()), (0, 0));
        assert!(d.path().join("quarantine").join(id.to_hex()).is_file());
        s.faults.eio.lock().unwrap().clear();
        assert!(s.put(&id, &data, Some(0)).unwrap(), "a copy from another server replaces it");
        assert_eq!(s.get(&id).unwrap(), data);
        assert_eq!(s.count(), 1);

        // Quarantine impossible (its directory replaced by a file): the copy is ignored in memory.
        fs::remove_dir_all(d.path().join("quarantine")).unwrap();
        fs::write(d.path().join("quarantine"), b"").unwrap();
        s.faults.eio.lock().unwrap().insert(id);
        assert!(matches!(s.get(&id), Err(ChunkError::Unreadable(..))));
        assert!(s.path(&id).is_file());
        assert!(!s.has(&id, false));
        assert!(matches!(s.read(&id), Err(ChunkError::NotFound(_))));
        assert_eq!(s.list(None, 10).unwrap(), vec![]);
        assert_eq!(s.count(), 0);
        s.faults.eio.lock().unwrap().clear();
        assert!(s.put(&id, &data, Some(0)).unwrap(), "a put replaces the bad copy");
        assert!(s.has(&id, false));
        assert_eq!((s.count(), s.get(&id).unwrap()), (1, data));
    }

    /// A put that hits a full disk fails with `NoSpace`, leaves no temporary file and changes
    /// nothing stored. The temporary file is made a link to /dev/full, whose writes fail with
    /// ENOSPC, as a full file system's do.
    #[test]
    fn a_put_on_a_full_disk_fails_alone() {
        let d = tempfile::tempdir().unwrap();
        let s = BlockStore::open(d.path()).unwrap();
        let kept = vec![1u8; 2000];
        let kid = BlockId::of(&kept);
        s.put(&kid, &kept, None).unwrap();
        let data = vec![2u8; 2000];
        let id = BlockId::of(&data);
        let seq = s.tmp_seq.load(Ordering::Relaxed);
        std::os::unix::fs::symlink("/dev/full", d.path().join("tmp").join(format!("{}.{seq}", id.to_hex()))).unwrap();
        let r = s.put(&id, &data, None);
        assert!(matches!(r, Err(ChunkError::NoSpace(..))), "{r:?}");
        assert_eq!(fs::read_dir(d.path().join("tmp")).unwrap().count(), 0, "the temporary file is left");
        assert!(!s.has(&id, false));
        assert_eq!((s.count(), s.used()), (1, 2000));
        assert_eq!(s.get(&kid).unwrap(), kept);
        assert!(s.put(&id, &data, None).unwrap(), "with space again, the put works");
    }
}
