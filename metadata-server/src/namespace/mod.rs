//! The namespace state machine.
//!
//! Every change is a [`Command`]: the non-deterministic parts (time, a new inode number) are
//! fixed before it is applied, then `execute` validates it against the current state and turns
//! it into one atomic [`Batch`]. Replaying the same commands in order on another replica gives
//! the same state, which is what Raft replication will need. The reply of each mutation is
//! stored per `(session, seq)` in the same batch, so a retried mutation is answered, not
//! applied twice. A session belongs to the certificate that opened it: another certificate
//! that names it (to read its stored replies or to pre-empt its next mutation) gets
//! `UnknownSession`, as does a session that was never opened.

mod acl;
mod audit;
mod copy;
mod execute;
mod locks;
#[cfg(test)]
mod model_test;
mod opens;
mod reads;
mod records;
mod rename;
mod sessions;
#[cfg(test)]
mod tests;
mod txn;
mod xattr;
#[cfg(test)]
mod xattr_tests;

use crate::store::{Batch, Cf, Store, StoreError};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use tessera_common::names::{check_name, MAX_SYMLINK_LEN};
use tessera_common::proto::meta::*;
use tessera_common::{BlockId, ErrorCode, WireError, ROOT_INO};
use records::*;
pub use records::{FsParams, SessionOwner, Stats};
pub use sessions::SessionInfo;
use txn::Txn;

/// Largest file size accepted (keeps every size and offset far from integer overflow).
pub const MAX_FILE_SIZE: u64 = 1 << 60;

/// Replies kept per session for retries.
const RETRY_WINDOW: u64 = 4096;

fn err(code: ErrorCode, msg: impl Into<String>) -> WireError {
    WireError::new(code, msg)
}

impl From<StoreError> for WireError {
    fn from(e: StoreError) -> Self {
        let code = if matches!(e, StoreError::Failed(_)) { ErrorCode::Unavailable } else { ErrorCode::Internal };
        err(code, e.to_string())
    }
}

/// A mutation with its non-deterministic inputs decided.
#[derive(Clone, Debug)]
pub struct Command {
    pub session: u64,
    pub seq: u64,
    pub now: i64,
    pub new_ino: u64,
    pub op: Mutation,
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

struct Counters {
    next_ino: u64,
    next_session: u64,
}

pub struct Namespace {
    store: Store,
    lock: Mutex<Counters>,
    pub params: FsParams,
}

impl Namespace {
    /// Open the namespace, creating the root directory and `params` on first use.
    pub fn open(store: Store, params: FsParams) -> Result<Self, WireError> {
        let params = match store.get(Cf::Cluster, KEY_FS)? {
            Some(v) => dec(&v)?,
            None => {
                let now = now_ns();
                let root = InodeRec {
                    kind: FileKind::Dir,
                    perm: 0o755,
                    nlink: 2,
                    uid: 0,
                    gid: 0,
                    size: 0,
                    atime: now,
                    mtime: now,
                    ctime: now,
                    rdev: 0,
                    target: None,
                    parent: ROOT_INO,
                    next_cookie: 3,
                };
                let mut b = Batch::default();
                b.put(Cf::Inodes, ino_key(ROOT_INO), enc(&root));
                b.put(Cf::Cluster, KEY_FS.to_vec(), enc(&params));
                b.put(Cf::Cluster, KEY_NEXT_INO.to_vec(), enc(&(ROOT_INO + 1)));
                b.put(Cf::Cluster, KEY_STATS.to_vec(), enc(&Stats { files: 1, ..Default::default() }));
                let t = store.apply(b)?;
                store.wait_durable(t)?;
                params
            }
        };
        let next_ino = read_u64(&store, KEY_NEXT_INO)?.unwrap_or(ROOT_INO + 1);
        let next_session = read_u64(&store, KEY_NEXT_SESSION)?.unwrap_or(1);
        Ok(Namespace { store, lock: Mutex::new(Counters { next_ino, next_session }), params })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Make the next inode number and session id at least `floor` (a restore: see
    /// `backup::restore_floor`), durably.
    pub fn raise_counters(&self, floor: u64) -> Result<(), WireError> {
        let t = {
            let mut c = self.lock.lock().unwrap();
            c.next_ino = c.next_ino.max(floor);
            c.next_session = c.next_session.max(floor);
            let mut b = Batch::default();
            b.put(Cf::Cluster, KEY_NEXT_INO.to_vec(), enc(&c.next_ino));
            b.put(Cf::Cluster, KEY_NEXT_SESSION.to_vec(), enc(&c.next_session));
            self.store.apply(b)?
        };
        Ok(self.store.wait_durable(t)?)
    }
}
