//! Metadata backup and restore.
//!
//! Backup (`BackupStart`/`BackupRead`/`BackupEnd`): a RocksDB checkpoint of the live database
//! in `DATA_DIR/backups/ID/` (hard links to the immutable SST files, copies of the rest), read
//! out by the admin client in chunks and deleted when it is done. Checkpoints left behind by a
//! client that went away are deleted after [`IDLE`], and all of them when the server starts.
//!
//! Restore (`tessera-meta --restore DIR`): the backup is verified against its manifest, copied
//! into `DATA_DIR/db.restoring`, its counters are raised past anything the cluster may have
//! seen since the backup (see [`restore_floor`]), and only then renamed to `DATA_DIR/db`: a
//! crash midway leaves no database, and the next restore starts over.

use crate::namespace::{FsParams, Namespace};
use crate::store::Store;
use anyhow::{bail, Context};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
#[cfg(test)]
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_common::backup::{self as layout, plain_name};
use tessera_common::durable;
use tessera_common::proto::meta::{BackupFile, BACKUP_CHUNK};
use tessera_common::{ErrorCode, WireError};

/// A checkpoint not read for this long is deleted: its client has gone.
const IDLE: Duration = Duration::from_secs(600);

struct Open {
    dir: PathBuf,
    sizes: HashMap<String, u64>,
    last: Instant,
}

pub struct Backups {
    root: PathBuf,
    open: Mutex<HashMap<u64, Open>>,
    next: Mutex<u64>,
}

fn internal(what: &str, e: impl std::fmt::Display) -> WireError {
    WireError::new(ErrorCode::Internal, format!("{what}: {e}"))
}

impl Backups {
    /// Checkpoints live in `data_dir/backups`; whatever is there from an earlier run is deleted.
    pub fn new(data_dir: &Path) -> anyhow::Result<Self> {
        let root = data_dir.join("backups");
        if root.exists() {
            std::fs::remove_dir_all(&root).with_context(|| format!("removing stale checkpoints in {}", root.display()))?;
        }
        Ok(Backups { root, open: Mutex::new(HashMap::new()), next: Mutex::new(1) })
    }

    /// Take a checkpoint of `store`; returns its id and files. Blocks (RocksDB flush and links).
    pub fn start(&self, store: &Store) -> Result<(u64, Vec<BackupFile>), WireError> {
        self.drop_idle();
        let id = {
            let mut n = self.next.lock().unwrap();
            *n += 1;
            *n - 1
        };
        std::fs::create_dir_all(&self.root).map_err(|e| internal("creating the checkpoint directory", e))?;
        let dir = self.root.join(id.to_string());
        store.checkpoint(&dir).map_err(|e| internal("checkpoint", e))?;
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| internal("listing the checkpoint", e))? {
            let entry = entry.map_err(|e| internal("listing the checkpoint", e))?;
            let meta = entry.metadata().map_err(|e| internal("listing the checkpoint", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !meta.is_file() || !plain_name(&name) {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(internal("checkpoint", format!("unexpected entry {name:?}")));
            }
            files.push(BackupFile { name, size: meta.len() });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let sizes = files.iter().map(|f| (f.name.clone(), f.size)).collect();
        self.open.lock().unwrap().insert(id, Open { dir, sizes, last: Instant::now() });
        let bytes: u64 = files.iter().map(|f| f.size).sum();
        tracing::info!(id, files = files.len(), bytes, "metadata checkpoint taken for a backup");
        Ok((id, files))
    }

    /// Up to `len` bytes of `name` in checkpoint `id`, from `offset`.
    pub fn read(&self, id: u64, name: &str, offset: u64, len: u32) -> Result<Vec<u8>, WireError> {
        let path = {
            let mut open = self.open.lock().unwrap();
            let o = open.get_mut(&id).ok_or_else(|| WireError::new(ErrorCode::NotFound, format!("no backup checkpoint {id} (finished, expired or the server restarted)")))?;
            // Only names the listing gave: nothing outside the checkpoint can be read.
            let size = *o.sizes.get(name).ok_or_else(|| WireError::new(ErrorCode::NotFound, format!("no file {name:?} in backup checkpoint {id}")))?;
            if offset > size {
                return Err(WireError::new(ErrorCode::InvalidArgument, format!("offset {offset} past the end of {name} ({size} bytes)")));
            }
            o.last = Instant::now();
            o.dir.join(name)
        };
        let mut f = std::fs::File::open(&path).map_err(|e| internal("opening a checkpoint file", e))?;
        f.seek(SeekFrom::Start(offset)).map_err(|e| internal("reading a checkpoint file", e))?;
        let mut buf = Vec::with_capacity(len.min(BACKUP_CHUNK) as usize);
        f.take(len.min(BACKUP_CHUNK) as u64).read_to_end(&mut buf).map_err(|e| internal("reading a checkpoint file", e))?;
        Ok(buf)
    }

    /// Delete checkpoint `id`.
    pub fn end(&self, id: u64) {
        if let Some(o) = self.open.lock().unwrap().remove(&id) {
            if let Err(e) = std::fs::remove_dir_all(&o.dir) {
                tracing::warn!(id, "could not delete backup checkpoint {}: {e}", o.dir.display());
            }
        }
    }

    fn drop_idle(&self) {
        let idle: Vec<u64> = self.open.lock().unwrap().iter().filter(|(_, o)| o.last.elapsed() > IDLE).map(|(id, _)| *id).collect();
        for id in idle {
            tracing::info!(id, "deleting a backup checkpoint nobody read for {} s", IDLE.as_secs());
            self.end(id);
        }
    }
}

/// The least value a restored server gives its ring version, next inode number and next session
/// id: `now` (seconds since the epoch) × 2²⁰. The cluster may have used values past those in
/// the backup after it was taken; a restored server must not hand them out again with another
/// meaning (a ring version names one member list; clients cache inode numbers and sessions).
/// Every earlier value came from a counter that started at most at an earlier such floor and
/// grew by fewer than 2²⁰ per second, so it lies below this one, also after several restores
/// of the same backup.
pub fn restore_floor(now_secs: u64) -> u64 {
    now_secs.saturating_mul(1 << 20)
}

/// Install the backup in `backup_dir` as the database `db_dir`, which must not hold one yet.
/// On any error nothing is left at `db_dir`.
pub fn restore(backup_dir: &Path, db_dir: &Path, replicas: u32) -> anyhow::Result<()> {
    if std::fs::read_dir(db_dir).is_ok_and(|mut d| d.next().is_some()) {
        bail!("{} already holds a database; restore into a new --data-dir", db_dir.display());
    }
    let m = layout::read_verified(backup_dir)?;
    if m.replicas != replicas {
        tracing::warn!(backup = m.replicas, now = replicas, "the backup was taken with another --replicas");
    }
    let parent = db_dir.parent().context("--data-dir has no parent")?;
    durable::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = parent.join("db.restoring");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing an unfinished restore in {}", tmp.display()))?;
    }
    std::fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    for f in &m.files {
        let (from, to) = (backup_dir.join(layout::DB_DIR).join(&f.name), tmp.join(&f.name));
        std::fs::copy(&from, &to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        std::fs::File::open(&to).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", to.display()))?;
    }
    durable::sync_dir(&tmp)?;
    let floor = restore_floor(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0));
    {
        let store = Store::open(&tmp).with_context(|| format!("opening the restored database in {}", tmp.display()))?;
        let ns = Namespace::open(store, FsParams { block_size: m.block_size })?;
        ns.raise_floor(floor)?;
        forget_raft_state(ns.store())?;
    }
    // An empty directory left by an earlier start is replaced; a database never (checked above).
    if db_dir.exists() {
        std::fs::remove_dir(db_dir).with_context(|| format!("removing the empty {}", db_dir.display()))?;
    }
    std::fs::rename(&tmp, db_dir).with_context(|| format!("renaming {} to {}", tmp.display(), db_dir.display()))?;
    durable::sync_dir(parent)?;
    tracing::info!(backup = %backup_dir.display(), taken = %m.created, files = m.files.len(), "metadata restored from backup");
    Ok(())
}

/// A backup of a group's leader holds its Raft log and vote: none of it belongs to the
/// server being started.
fn forget_raft_state(store: &Store) -> anyhow::Result<()> {
    let mut b = crate::store::Batch::default();
    for cf in [crate::store::Cf::RaftLog, crate::store::Cf::RaftState] {
        for (k, _) in store.range(cf, b"", &[0xff; 9])? {
            b.delete(cf, k);
        }
    }
    let t = store.apply(b)?;
    store.wait_durable(t)?;
    Ok(())
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::Membership;
    use crate::namespace::SessionOwner;
    use tessera_common::backup::{hash_file, Manifest, ManifestFile, FORMAT};

    fn owner() -> SessionOwner {
        SessionOwner { name: "t".into(), fingerprint: [7; 32] }
    }

    /// A backup dir as `tessera meta backup` writes it, from a checkpoint of `store`.
    fn back_up(store: &Store, backups: &Backups, to: &Path) {
        let (id, files) = backups.start(store).unwrap();
        std::fs::create_dir_all(to.join(layout::DB_DIR)).unwrap();
        let mut listed = Vec::new();
        for f in files {
            let mut data = Vec::new();
            while (data.len() as u64) < f.size {
                data.extend(backups.read(id, &f.name, data.len() as u64, BACKUP_CHUNK).unwrap());
            }
            let p = to.join(layout::DB_DIR).join(&f.name);
            std::fs::write(&p, &data).unwrap();
            let (size, blake3) = hash_file(&p).unwrap();
            listed.push(ManifestFile { name: f.name, size, blake3 });
        }
        assert!(backups.read(id, "../db/CURRENT", 0, 10).is_err(), "a name outside the listing was read");
        backups.end(id);
        let m = Manifest { format: FORMAT, created_unix: 0, created: String::new(), block_size: 4096, replicas: 3, ring_version: 0, files: listed };
        m.write(to).unwrap();
    }

    #[test]
    fn a_restore_hands_out_no_session_inode_or_ring_version_seen_before() {
        let d = tempfile::tempdir().unwrap();
        let (live, saved) = (d.path().join("live"), d.path().join("backup"));
        let backups = Backups::new(&live).unwrap();
        let ns = Arc::new(Namespace::open(Store::open(&live.join("db")).unwrap(), FsParams { block_size: 4096 }).unwrap());
        let m = Membership::load(ns.clone(), 3, Duration::from_secs(5), Duration::from_secs(600)).unwrap();
        m.register(1, "127.0.0.1:1".into(), "z1".into(), 1 << 30).unwrap();
        let session = ns.open_session(&owner(), "before").unwrap();
        back_up(ns.store(), &backups, &saved);
        assert!(std::fs::read_dir(live.join("backups")).unwrap().next().is_none(), "the checkpoint was not deleted");
        // After the backup the live cluster goes on: more sessions, another ring.
        let later_session = ns.open_session(&owner(), "after").unwrap();
        let later_ring = m.register(2, "127.0.0.1:2".into(), "z2".into(), 1 << 30).unwrap().version;

        let restored = d.path().join("restored");
        restore(&saved, &restored.join("db"), 3).unwrap();
        let err = restore(&saved, &restored.join("db"), 3).unwrap_err().to_string();
        assert!(err.contains("already holds a database"), "{err}");
        let ns = Arc::new(Namespace::open(Store::open(&restored.join("db")).unwrap(), FsParams { block_size: 4096 }).unwrap());
        assert!(ns.sessions().unwrap().iter().any(|s| s.id == session), "the session from before the backup is gone");
        assert!(ns.open_session(&owner(), "new").unwrap() > later_session);
        let m = Membership::load(ns, 3, Duration::from_secs(5), Duration::from_secs(600)).unwrap();
        assert!(m.ring().version > later_ring, "ring version {} reissued", m.ring().version);
        assert_eq!(m.ring().nodes.len(), 1, "the ring of the backup: server 1 only");
    }
}
