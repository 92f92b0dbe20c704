//! The namespace state machine.
//!
//! Every change is a [`Command`] (see `command.rs`): the request plus its time, fixed when it
//! is formed; apply validates it against the stored state alone and turns it into one atomic
//! [`Batch`]. Replaying the same commands in order on another replica gives the same state,
//! which is what Raft replication will need. The reply of each mutation is stored per
//! `(session, seq)` in the same batch, so a retried mutation is answered, not applied twice. A
//! session belongs to the certificate that opened it: another certificate that names it (to
//! read its stored replies or to pre-empt its next mutation) gets `UnknownSession`, as does a
//! session that was never opened.

mod acl;
mod audit;
mod command;
#[cfg(test)]
mod command_tests;
mod copy;
mod execute;
mod locks;
#[cfg(test)]
mod model_test;
mod opens;
mod patch;
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

use crate::store::{Batch, Cf, Store, StoreError, View};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use tessera_common::names::{check_name, MAX_SYMLINK_LEN};
use tessera_common::proto::meta::*;
use tessera_common::{BlockId, ErrorCode, WireError, ROOT_INO};
use records::*;
pub(crate) use records::enc;
pub use records::{FsParams, SessionOwner, Stats};
pub use command::{Command, Op, Outcome, Written};
pub use sessions::SessionInfo;
use txn::Txn;

/// Largest file size accepted (keeps every size and offset far from integer overflow).
pub const MAX_FILE_SIZE: u64 = 1 << 60;

/// Replies kept per session for retries.
const RETRY_WINDOW: u64 = 4096;

/// Most block-map entries one command drops when it deletes a file (about 100 bytes of batch
/// each): a larger file is dropped by `Reap` commands, this many entries at a time.
pub const DROP_BOUND: usize = 8192;

/// The session that holds files being dropped in steps; ids handed out start at 1.
const REAPER: u64 = 0;

fn err(code: ErrorCode, msg: impl Into<String>) -> WireError {
    WireError::new(code, msg)
}

impl From<StoreError> for WireError {
    fn from(e: StoreError) -> Self {
        let code = if matches!(e, StoreError::Failed(_)) { ErrorCode::Unavailable } else { ErrorCode::Internal };
        err(code, e.to_string())
    }
}

/// The current time, for a command being formed (never read by apply).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Where commands go under Raft instead of being applied here at once (`crate::raft`): the
/// leader's log, which applies them on every replica. Called off the async threads.
pub trait Replicate: Send + Sync {
    fn propose(&self, cmd: &Command) -> Result<Outcome, WireError>;
}

pub struct Namespace {
    store: Store,
    /// Held while a command is applied and written: one at a time, in this order.
    lock: Mutex<()>,
    /// As stored at creation (apply reads the stored record, not this copy); see [`Self::params`].
    params: OnceLock<FsParams>,
    /// Set under Raft: commands are proposed there, and applied by [`Self::apply_logged`].
    replica: OnceLock<Arc<dyn Replicate>>,
    /// Every command submitted, encoded: what a Raft log would hold.
    #[cfg(test)]
    pub(crate) log: Mutex<Vec<Vec<u8>>>,
}

impl Namespace {
    /// Open the namespace, creating the root directory and `params` on first use.
    pub fn open(store: Store, params: FsParams) -> Result<Self, WireError> {
        let ns = Self::unopened(store);
        ns.submit_durable(&Command::new(Op::Init { params }))?;
        ns.load_params()?;
        Ok(ns)
    }

    /// Read the stored parameters for [`Self::params`]; `false` while `Init` was not applied.
    pub fn load_params(&self) -> Result<bool, WireError> {
        match self.cluster_get::<FsParams>(KEY_FS)? {
            Some(p) => {
                let _ = self.params.set(p);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The file system's parameters (loaded by `open`, or `load_params` under Raft).
    pub fn params(&self) -> FsParams {
        self.params.get().copied().unwrap_or(FsParams { block_size: 0 })
    }

    /// Whether commands go through Raft.
    pub fn is_replicated(&self) -> bool {
        self.replica.get().is_some()
    }

    /// Send every later command to `replica` (see [`Replicate`]).
    pub fn replicate_through(&self, replica: Arc<dyn Replicate>) {
        let _ = self.replica.set(replica);
    }

    /// The namespace on `store` as it is, without `Init` (a replica that replays a log).
    pub(crate) fn unopened(store: Store) -> Self {
        Namespace {
            store,
            lock: Mutex::new(()),
            params: OnceLock::new(),
            replica: OnceLock::new(),
            #[cfg(test)]
            log: Mutex::new(Vec::new()),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Make the next inode number, session id and ring version at least `floor` (a restore:
    /// see `backup::restore_floor`), durably.
    pub fn raise_floor(&self, floor: u64) -> Result<(), WireError> {
        self.submit_durable(&Command::new(Op::RaiseFloor { floor })).map(|_| ())
    }

    /// Whether metadata server `id` was removed once (its id is not to be used again).
    pub fn is_retired_meta_server(&self, id: u64) -> Result<bool, WireError> {
        Ok(self.store.get(Cf::Cluster, &records::retired_meta_key(id))?.is_some())
    }
}
