//! Chunk server protocol.
//!
//! `Put` carries the block bytes as the frame payload; the server recomputes BLAKE3 and refuses
//! a mismatch with `BadHash`. A put of a block already stored is a no-op. `Get` answers with the
//! bytes as payload, unverified: the client verifies every block it receives (one hash per
//! read instead of two), and sends `Report` for a copy that did not match; the server then
//! checks that copy, quarantines it if it is bad, and fetches a good one. Copies a server sends
//! to another server (repair) are always verified first, and scrubbing checks every copy. `Delete`, `List` and `Scrub` are refused
//! unless the peer's certificate has the `meta` or `admin` role.
//!
//! Garbage collection safety: only a client's use refreshes a block's last-use time: a `Put`
//! with `age: None` (a client's write) and a `Has` with `touch: true` (a client's dedup check,
//! or the metadata server checking a commit's blocks) that finds the block. `Delete` removes a
//! block only if it has not been used for `min_idle_secs` (checked and deleted atomically), so a
//! block a client has just put or found, and is about to commit, is never collected under it.
//! Servers' own traffic never counts as use, or no copy would ever be idle for the grace: repair,
//! scrub and fsck probe with `touch: false`, and a copy repair sends carries `age: Some(secs)`,
//! the seconds since its last use at the sender, which a new copy keeps (an existing copy is
//! left as it is).

use crate::{BlockId, WireError};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum ChunkRequest {
    /// Payload: the block. `age`: `None` for a client's write (counts as use); for a copy sent
    /// by another server, the seconds since the block's last use there. Reply: `Stored`, with
    /// the bytes this server still takes above its reserve (a writer's freshest view of its
    /// space: heartbeats trail by a second).
    Put { id: BlockId, age: Option<u64> },
    /// Reply: `Block` with the bytes as payload.
    Get { id: BlockId },
    /// The copy of `id` this server sent did not match its id. Reply: `Stored` (checked).
    Report { id: BlockId },
    /// Reply: `Has`, one flag per id (false for a copy found unreadable). With `touch`, a
    /// block found counts as used (see the module docs).
    Has { ids: Vec<BlockId>, touch: bool },
    /// Meta/admin only: delete blocks unused for at least `min_idle_secs`. Reply: `Deleted`.
    /// `term` is the sending metadata leader's Raft term (0 when it runs alone): a delete from
    /// an older term than the server has seen is refused (`NotLeader`).
    Delete { ids: Vec<BlockId>, min_idle_secs: u64, term: u64 },
    /// Meta/admin only: stored blocks in id order after `after`, with seconds since last use.
    /// Reply: `List`.
    List { after: Option<BlockId>, limit: u32 },
    /// Meta/admin only: re-hash every stored block now; corrupt copies are dropped and
    /// re-fetched from another server. Reply: `Scrubbed`, when the pass is done if `wait`
    /// (otherwise at once, with zero counts).
    Scrub { wait: bool },
    /// Reply: `Stat`.
    Stat,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkResponse {
    Stored { free: u64 },
    Block,
    Has(Vec<bool>),
    Deleted { count: u64 },
    Stat { node_id: u64, blocks: u64, used: u64 },
    List(Vec<(BlockId, u64)>),
    Scrubbed(ScrubReport),
    Error(WireError),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubReport {
    pub checked: u64,
    pub corrupt: u64,
    pub repaired: u64,
    pub bytes: u64,
}

impl crate::metrics::OpName for ChunkRequest {
    fn op_name(&self) -> &'static str {
        self.into()
    }
}
