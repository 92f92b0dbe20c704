//! Chunk server protocol.
//!
//! `Put` carries the block bytes as the frame payload; the server recomputes BLAKE3 and refuses
//! a mismatch with `BadHash`. A put of a block already stored is a no-op. `Get` answers with the
//! bytes as payload; the client verifies them again. `Delete` is refused unless the peer's
//! certificate has the `meta` or `admin` role.

use crate::{BlockId, WireError};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkRequest {
    /// Payload: the block. Reply: `Stored`.
    Put { id: BlockId },
    /// Reply: `Block` with the bytes as payload.
    Get { id: BlockId },
    /// Reply: `Has`, one flag per id.
    Has { ids: Vec<BlockId> },
    /// Meta/admin only. Reply: `Deleted`.
    Delete { ids: Vec<BlockId> },
    /// Reply: `Stat`.
    Stat,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkResponse {
    Stored,
    Block,
    Has(Vec<bool>),
    Deleted { count: u64 },
    Stat { node_id: u64, blocks: u64, used: u64 },
    Error(WireError),
}
