//! Scrubbing: re-hash every stored block (rate-limited); a corrupt copy is quarantined by the
//! read and fetched again, verified, from another server.

use crate::repair::RateLimiter;
use crate::store::{BlockStore, ChunkError};
use std::sync::Arc;
use tessera_common::proto::chunk::{ChunkRequest, ChunkResponse, ScrubReport};
use tessera_common::ring::Ring;
use tessera_common::BlockId;
use tokio::sync::watch;
use tracing::{error, info, warn};

pub struct Scrubber {
    pub store: Arc<BlockStore>,
    /// To ask for the current ring when ours knows no other holder (just after start).
    pub meta: Arc<tessera_common::metalink::MetaLink>,
    pub me: u64,
    pub ring: watch::Receiver<Arc<Ring>>,
    pub peers: tessera_common::net::ClientPool,
    pub rate: RateLimiter,
    /// One pass at a time.
    pub running: tokio::sync::Mutex<()>,
    /// The `scrub` worker: periodic passes and those asked for are counted there.
    pub worker: Arc<tessera_common::worker::Worker>,
}

impl Scrubber {
    /// A pass asked for (`tessera scrub`), counted as one of the worker's.
    pub async fn pass(&self) -> ScrubReport {
        self.worker.run(self.scrub()).await
    }

    /// One pass; the periodic worker runs this (see `lib.rs`), others call [`Scrubber::pass`].
    pub async fn scrub(&self) -> ScrubReport {
        let _one = self.running.lock().await;
        let mut report = ScrubReport::default();
        let store = self.store.clone();
        let ids = match tokio::task::spawn_blocking(move || store.list(None, usize::MAX)).await {
            Ok(Ok(v)) => v,
            _ => return report,
        };
        let total = ids.len();
        for (i, (id, _)) in ids.into_iter().enumerate() {
            if i % 64 == 0 {
                self.worker.set_progress(format!("checking: {i} of {total} blocks, {} corrupt", report.corrupt));
            }
            let store = self.store.clone();
            match tokio::task::spawn_blocking(move || store.get(&id)).await {
                Ok(Ok(data)) => {
                    report.checked += 1;
                    report.bytes += data.len() as u64;
                    self.rate.take(data.len()).await;
                }
                Ok(Err(ChunkError::Corrupt(_) | ChunkError::Unreadable(..))) => {
                    report.checked += 1;
                    report.corrupt += 1;
                    error!(node = self.me, block = %id.short(), "scrub: corrupt copy found");
                    if self.refetch(id).await {
                        report.repaired += 1;
                    }
                }
                Ok(Err(ChunkError::NotFound(_))) => {}
                Ok(Err(e)) => warn!(block = %id.short(), "scrub: {e}"),
                Err(e) => warn!("scrub: {e}"),
            }
        }
        self.worker.set_progress(format!("last pass: {} blocks checked, {} corrupt, {} repaired", report.checked, report.corrupt, report.repaired));
        info!(checked = report.checked, corrupt = report.corrupt, repaired = report.repaired, "scrub pass done");
        report
    }

    /// Fetch a good copy of `id` from another server and store it here.
    pub async fn refetch(&self, id: BlockId) -> bool {
        let ring = self.ring.borrow().clone();
        if self.refetch_with(&ring, id).await {
            return true;
        }
        if let Ok(tessera_common::proto::meta::MetaResponse::Ring(fresh)) = self.meta.call(&tessera_common::proto::meta::MetaRequest::GetRing).await {
            if fresh.version != ring.version && self.refetch_with(&fresh, id).await {
                return true;
            }
        }
        warn!(block = %id.short(), "scrub: no good copy found elsewhere");
        false
    }

    async fn refetch_with(&self, ring: &Ring, id: BlockId) -> bool {
        for n in ring.clockwise(&id) {
            if n.id == self.me || !n.up {
                continue;
            }
            let c = self.peers.get(&n.addr);
            if let Ok((ChunkResponse::Block, data)) = c.call::<_, ChunkResponse>(&ChunkRequest::Get { id }, &[]).await {
                let store = self.store.clone();
                // put() verifies the bytes against the id before storing them; fetching a
                // replacement is not a use of the block.
                if let Ok(Ok(_)) = tokio::task::spawn_blocking(move || store.put(&id, &data, Some(0))).await {
                    info!(block = %id.short(), from = %n.addr, "scrub: corrupt copy replaced");
                    return true;
                }
            }
        }
        false
    }
}
