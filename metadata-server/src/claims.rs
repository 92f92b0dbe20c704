//! Commits name only blocks that exist.
//!
//! Before a `CommitBlocks` is applied, every block it names that no file references yet must
//! be found on at least one chunk server that is up. The probe is a touching `Has`: it counts
//! as a use, so garbage collection (which re-checks the idle time atomically when it deletes)
//! spares the copies it found for the grace period, and the commit that follows makes them
//! referenced. A block found nowhere (never stored, or already collected) makes the commit fail
//! with `MissingBlock` and changes nothing, so no sequence of calls commits a dangling reference.
//!
//! One copy is enough: the check is against dangling references; the number of copies is the
//! writer's write quorum and repair's business, and requiring more would fail the commit of
//! data that is safely stored whenever a holder is briefly unreachable.
//!
//! The servers are asked in rounds, all in parallel within a round: first the block's first N
//! servers clockwise that are up (where writers put it, so every fresh copy is touched), then,
//! for blocks not found yet, the next server clockwise, and so on.

use crate::membership::Membership;
use crate::namespace::Namespace;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tessera_common::net::ClientPool;
use tessera_common::proto::chunk::{ChunkRequest, ChunkResponse};
use tessera_common::proto::meta::Mutation;
use tessera_common::{BlockId, ErrorCode, WireError};

/// A server that does not answer within this is skipped (it may have just died, before the
/// membership marks it down).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Claims {
    pub ns: Arc<Namespace>,
    pub members: Arc<Membership>,
    pub pool: ClientPool,
}

impl Claims {
    /// Refuse `op` if it is a commit naming an unreferenced block no server holds.
    pub async fn check(&self, op: &Mutation) -> Result<(), WireError> {
        let Mutation::CommitBlocks { blocks, .. } = op else { return Ok(()) };
        let ids: BTreeSet<BlockId> = blocks.iter().map(|(_, b)| b.id).collect();
        let ns = self.ns.clone();
        // A block some file references is not collected: nothing to check.
        let mut missing: BTreeSet<BlockId> = tokio::task::spawn_blocking(move || ids.into_iter().filter(|id| !ns.is_referenced(id).unwrap_or(false)).collect())
            .await
            .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
        if missing.is_empty() {
            return Ok(());
        }
        let ring = self.members.ring();
        // Servers that are up first, then the others: right after a metadata restart (or a
        // ring change) a server may not be marked up yet although it holds the copy.
        let order: HashMap<BlockId, Vec<String>> = missing
            .iter()
            .map(|id| {
                let (up, rest): (Vec<_>, Vec<_>) = ring.clockwise(id).into_iter().partition(|n| n.up);
                (*id, up.into_iter().chain(rest).map(|n| n.addr.clone()).collect())
            })
            .collect();
        let first = (ring.replicas as usize).max(1);
        let mut round = 0;
        while !missing.is_empty() {
            let range = if round == 0 { 0..first } else { first + round - 1..first + round };
            let mut ask: HashMap<String, Vec<BlockId>> = HashMap::new();
            for id in &missing {
                for addr in order[id].get(range.clone()).unwrap_or(&[]) {
                    ask.entry(addr.clone()).or_default().push(*id);
                }
            }
            if ask.is_empty() {
                break;
            }
            let mut probes = tokio::task::JoinSet::new();
            for (addr, ids) in ask {
                probes.spawn(probe(self.pool.clone(), addr, ids));
            }
            // Done as soon as every block is found: a frozen server in the round must not hold
            // the commit for the probe timeout (the dropped set aborts its probe).
            while let Some(found) = probes.join_next().await {
                for id in found.unwrap_or_default() {
                    missing.remove(&id);
                }
                if missing.is_empty() {
                    break;
                }
            }
            round += 1;
        }
        match missing.first() {
            None => Ok(()),
            Some(id) => Err(WireError::new(
                ErrorCode::MissingBlock,
                format!("commit refused: block {} ({} of the commit's blocks) is on no chunk server", id.to_hex(), missing.len()),
            )),
        }
    }
}

/// The ids of `ids` that `addr` holds (touching them); none if it does not answer.
async fn probe(pool: ClientPool, addr: String, ids: Vec<BlockId>) -> Vec<BlockId> {
    let c = pool.get(&addr);
    let mut found = Vec::new();
    for chunk in ids.chunks(4096) {
        let req = ChunkRequest::Has { ids: chunk.to_vec(), touch: true };
        match tokio::time::timeout(PROBE_TIMEOUT, c.call::<_, ChunkResponse>(&req, &[])).await {
            Ok(Ok((ChunkResponse::Has(flags), _))) => found.extend(chunk.iter().zip(flags).filter(|(_, h)| *h).map(|(id, _)| *id)),
            other => {
                tracing::warn!(server = %addr, "commit check: no answer to has: {other:?}");
                break;
            }
        }
    }
    found
}
