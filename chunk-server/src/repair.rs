//! Keeping N copies: a background scan of this server's blocks against the current ring.
//!
//! For each block held here, the current owners that are up, not full, and lack it are sent a
//! copy (rate-limited; by one holder: the first owner holding it, else every holder); a block this
//! server does not own is deleted here once every owner is up and
//! holds it. The same rule re-replicates after a server goes out, fills a server that joins,
//! drains a server that leaves, and cleans up copies written elsewhere while an owner was down.
//! Only verified bytes are sent: a corrupt local copy is quarantined by the read instead.

use crate::store::BlockStore;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_common::proto::chunk::{ChunkRequest, ChunkResponse};
use tessera_common::ring::Ring;
use tessera_common::BlockId;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Bytes per second, spent ahead of time: the caller sleeps off any debt.
pub struct RateLimiter {
    bytes_per_sec: f64,
    next: Mutex<Instant>,
}

impl RateLimiter {
    pub fn new(mb_per_sec: f64) -> Self {
        RateLimiter { bytes_per_sec: (mb_per_sec * 1e6).max(1.0), next: Mutex::new(Instant::now()) }
    }

    pub async fn take(&self, bytes: usize) {
        let wait = {
            let mut next = self.next.lock().unwrap();
            let now = Instant::now();
            if *next < now {
                *next = now;
            }
            *next += Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec);
            next.saturating_duration_since(now)
        };
        if wait > Duration::from_millis(1) {
            tokio::time::sleep(wait).await;
        }
    }
}

pub struct Repairer {
    pub store: Arc<BlockStore>,
    pub me: u64,
    pub ring: watch::Receiver<Arc<Ring>>,
    pub peers: tessera_common::net::ClientPool,
    pub rate: RateLimiter,
    /// Copies found missing in the last scan and not yet sent.
    pub pending: Arc<AtomicU64>,
    /// Bytes sent to other servers since start.
    pub sent: Arc<AtomicU64>,
    pub worker: Arc<tessera_common::worker::Worker>,
}

/// Copies a repair scan sends at once.
const SENDS_IN_FLIGHT: usize = 4;

impl Repairer {
    /// Send our verified copy of `id` to `node`; Some((node, id)) once it is stored there.
    async fn send_copy(&self, ring: &Ring, id: BlockId, node: u64) -> Option<(u64, BlockId)> {
        let info = ring.node(node)?;
        let store = self.store.clone();
        // The copy keeps our copy's last-use time: copying is not a use (see proto::chunk). The
        // age is read first: a copy collected meanwhile is then not sent at all, where reading
        // it after the data sent it as brand new, and it outlived its grace (seen in CI).
        let data = match tokio::task::spawn_blocking(move || {
            let age = store.idle_secs(&id).ok_or_else(|| format!("block {} is gone (collected)", id.short()))?;
            store.get(&id).map(|d| (d, age)).map_err(|e| e.to_string())
        })
        .await
        {
            Ok(Ok(d)) => d,
            other => {
                warn!(block = %id.short(), "repair: local copy unusable: {other:?}");
                self.pending.fetch_sub(1, Ordering::Relaxed);
                return None;
            }
        };
        let (data, age) = data;
        self.rate.take(data.len()).await;
        let c = self.peers.get(&info.addr);
        let r = match c.call::<_, ChunkResponse>(&ChunkRequest::Put { id, age: Some(age) }, &data).await {
            Ok((ChunkResponse::Stored { .. }, _)) => {
                self.sent.fetch_add(data.len() as u64, Ordering::Relaxed);
                debug!(block = %id.short(), to = %info.addr, "repair: copy sent");
                Some((node, id))
            }
            other => {
                warn!(block = %id.short(), to = %info.addr, "repair: send failed: {other:?}");
                None
            }
        };
        self.pending.fetch_sub(1, Ordering::Relaxed);
        r
    }

    /// One scan against the current ring (the `repair` worker's pass, see `lib.rs`).
    pub async fn pass(&self) -> anyhow::Result<()> {
        let ring = self.ring.borrow().clone();
        if ring.nodes.is_empty() {
            self.worker.set_progress("waiting for the ring");
            return Ok(());
        }
        self.scan(&ring).await
    }

    async fn scan(&self, ring: &Ring) -> anyhow::Result<()> {
        let store = self.store.clone();
        let ids: Vec<BlockId> = tokio::task::spawn_blocking(move || {
            let mut v = Vec::new();
            store.for_each(|id, _| v.push(id)).map(|_| v)
        })
        .await??;
        let n = ring.replicas as usize;
        // Ask each owner which of our blocks it lacks.
        let mut ask: HashMap<u64, Vec<BlockId>> = HashMap::new();
        for id in &ids {
            for o in ring.owners(id, n) {
                if o.id != self.me && o.up {
                    ask.entry(o.id).or_default().push(*id);
                }
            }
        }
        let mut has: HashSet<(u64, BlockId)> = HashSet::new();
        let mut reachable: HashSet<u64> = HashSet::new();
        for (node, list) in &ask {
            let Some(info) = ring.node(*node) else { continue };
            let c = self.peers.get(&info.addr);
            let mut ok = true;
            for chunk in list.chunks(4096) {
                match c.call::<_, ChunkResponse>(&ChunkRequest::Has { ids: chunk.to_vec(), touch: false }, &[]).await {
                    Ok((ChunkResponse::Has(flags), _)) => has.extend(chunk.iter().zip(flags).filter(|(_, h)| *h).map(|(id, _)| (*node, *id))),
                    _ => ok = false,
                }
            }
            if ok {
                reachable.insert(*node);
            }
        }
        // One sender per block: the first owner (in ring order) that holds it, or, when no owner
        // does, every holder (a drained or rejoined server, or copies written while owners were down).
        let sender = |id: &BlockId| -> bool {
            let owners = ring.owners(id, n);
            match owners.iter().find(|o| o.id == self.me || has.contains(&(o.id, *id))) {
                Some(first) => first.id == self.me,
                None => true,
            }
        };
        // A full owner is not sent copies (as a down one): the copies stay where writers put
        // them instead, on the next servers clockwise, until it has room again.
        let missing: Vec<(BlockId, u64)> = ask
            .iter()
            .filter(|(node, _)| reachable.contains(node) && ring.node(**node).is_some_and(|n| !n.full))
            .flat_map(|(node, list)| list.iter().filter(|id| !has.contains(&(*node, **id))).map(|id| (*id, *node)))
            .filter(|(id, _)| sender(id))
            .collect();
        self.pending.store(missing.len() as u64, Ordering::Relaxed);
        self.worker.set_progress(format!("ring version {}: {} blocks, sending {} missing copies", ring.version, ids.len(), missing.len()));
        if !missing.is_empty() {
            info!(copies = missing.len(), "repair: sending missing copies");
        }
        // A few copies in flight at once: one at a time leaves the link idle during each fsync.
        use futures::stream::{self, StreamExt};
        let sent: Vec<(u64, BlockId)> = stream::iter(missing)
            .map(|(id, node)| self.send_copy(ring, id, node))
            .buffer_unordered(SENDS_IN_FLIGHT)
            .filter_map(|x| async move { x })
            .collect()
            .await;
        has.extend(sent);
        // Drop copies this server does not own once every owner is up and holds the block.
        let mut dropped = 0;
        for id in &ids {
            let owners = ring.owners(id, n);
            if owners.iter().any(|o| o.id == self.me) || owners.len() < n {
                continue;
            }
            if owners.iter().all(|o| o.up && reachable.contains(&o.id) && has.contains(&(o.id, *id))) {
                let store = self.store.clone();
                let id = *id;
                if tokio::task::spawn_blocking(move || store.delete(&id)).await?.unwrap_or(false) {
                    dropped += 1;
                }
            }
        }
        if dropped > 0 {
            info!(dropped, "repair: dropped copies now held by their owners");
        }
        self.worker.set_progress(format!(
            "last scan (ring version {}): {} blocks, {} copies not sent, {} dropped; {} MB sent since start",
            ring.version,
            ids.len(),
            self.pending.load(Ordering::Relaxed),
            dropped,
            self.sent.load(Ordering::Relaxed) / 1_000_000
        ));
        Ok(())
    }
}
