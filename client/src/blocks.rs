//! Block I/O against the chunk servers: replicated puts, verified gets, a bounded block cache
//! and single-flight fetches.

use crate::error::{FsError, FsResult};
use futures::future::{BoxFuture, FutureExt, Shared};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tessera_common::net::{ClientPool, RpcClient};
use tessera_common::proto::chunk::{ChunkRequest, ChunkResponse};
use tessera_common::ring::Ring;
use tessera_common::{BlockId, ErrorCode};
use tracing::warn;

type Fetch = Shared<BoxFuture<'static, Result<Arc<Vec<u8>>, FsError>>>;

pub struct Blocks {
    clients: ClientPool,
    /// The current ring first, then the last few older versions (readers fall back to them
    /// while blocks move).
    rings: RwLock<VecDeque<Arc<Ring>>>,
    pub replicas: usize,
    pub write_quorum: usize,
    cache: Mutex<lru::LruCache<BlockId, Arc<Vec<u8>>>>,
    cache_bytes: Mutex<usize>,
    cache_limit: usize,
    inflight: Mutex<HashMap<BlockId, Fetch>>,
}

/// Blocks at least this large are offered with a "has" before they are sent.
const DEDUP_CHECK_MIN: usize = 64 * 1024;

/// Older ring versions kept for readers.
const RING_HISTORY: usize = 3;

/// Connections per chunk server: one QUIC connection tops out well below the loopback link.
const CONNS_PER_SERVER: usize = 2;

impl Blocks {
    pub fn new(ep: quinn::Endpoint, ring: Ring, replicas: usize, write_quorum: usize, cache_limit: usize) -> Arc<Self> {
        Arc::new(Blocks {
            clients: ClientPool::new(ep, CONNS_PER_SERVER, Duration::from_secs(30), tessera_common::tls::Role::Chunk),
            rings: RwLock::new(VecDeque::from([Arc::new(ring)])),
            replicas,
            write_quorum: write_quorum.clamp(1, replicas.max(1)),
            cache: Mutex::new(lru::LruCache::unbounded()),
            cache_bytes: Mutex::new(0),
            cache_limit,
            inflight: Mutex::new(HashMap::new()),
        })
    }

    pub fn ring(&self) -> Arc<Ring> {
        self.rings.read().unwrap()[0].clone()
    }

    pub fn set_ring(&self, ring: Ring) {
        let mut g = self.rings.write().unwrap();
        if ring.version != g[0].version {
            g.push_front(Arc::new(ring));
            g.truncate(RING_HISTORY + 1);
        }
    }

    /// Servers to read `id` from, best first: the current owners that are up, the next servers
    /// clockwise (writes land there while an owner is down), the owners under older rings, and
    /// last the owners that are down.
    fn read_order(&self, id: &BlockId) -> Vec<String> {
        let rings = self.rings.read().unwrap().clone();
        let mut order: Vec<String> = Vec::new();
        let mut down: Vec<String> = Vec::new();
        let mut add = |addr: &str, up: bool, order: &mut Vec<String>| {
            if !order.iter().any(|a| a == addr) && !down.iter().any(|a| a == addr) {
                if up {
                    order.push(addr.to_string())
                } else {
                    down.push(addr.to_string())
                }
            }
        };
        for n in rings[0].clockwise(id).into_iter().take(self.replicas + 2) {
            add(&n.addr, n.up, &mut order);
        }
        for r in rings.iter().skip(1) {
            for n in r.owners(id, self.replicas) {
                add(&n.addr, n.up, &mut order);
            }
        }
        order.extend(down);
        order
    }

    fn client(&self, addr: &str) -> Arc<RpcClient> {
        self.clients.get(addr)
    }

    /// Store `data` (whose id is `id`) on the first N servers of the ring that are up, in
    /// parallel. A server that fails is replaced by the next one clockwise, so N copies exist
    /// while enough servers answer; the write fails only if fewer than the write quorum took it.
    /// A server that already holds the block is not sent it again (dedup); its "has" also
    /// protects the block from garbage collection until we commit. Servers that are full are
    /// skipped like down ones; when the write fails because no server can take the block (all
    /// full, or a server answered `NoSpace`), the error is `NoSpace` (ENOSPC), not EIO.
    pub async fn put(&self, id: BlockId, data: Arc<Vec<u8>>) -> FsResult<()> {
        let t = std::time::Instant::now();
        let r = self.put_replicas(id, data.clone()).await;
        tracing::trace!(elapsed_us = t.elapsed().as_micros() as u64, block = %id.short(), len = data.len(), ok = r.is_ok(), "block put");
        r
    }

    async fn put_replicas(&self, id: BlockId, data: Arc<Vec<u8>>) -> FsResult<()> {
        let ring = self.ring();
        let candidates: Vec<String> = ring.targets(&id, ring.nodes.len()).iter().map(|n| n.addr.clone()).collect();
        let some_full = ring.nodes.iter().any(|n| n.up && n.full);
        if candidates.is_empty() {
            return Err(if some_full { FsError::no_space("every chunk server that is up is full") } else { FsError::Io("no chunk server is up".into()) });
        }
        let want = self.replicas.min(candidates.len());
        let mut next = 0;
        let mut acked = 0;
        let mut last = None;
        let mut refused_for_space = false;
        while acked < want && next < candidates.len() {
            let batch = &candidates[next..(next + want - acked).min(candidates.len())];
            next += batch.len();
            for r in futures::future::join_all(batch.iter().map(|addr| self.put_one(addr, id, data.clone()))).await {
                match r {
                    Ok(()) => acked += 1,
                    Err(e) => {
                        warn!(block = %id.short(), "put failed: {e}");
                        refused_for_space |= e.errno() == libc::ENOSPC;
                        last = Some(e);
                    }
                }
            }
        }
        // A cluster smaller than the quorum can hold at most one copy per server.
        let quorum = self.write_quorum.min(ring.nodes.len());
        if acked < quorum || acked == 0 {
            if refused_for_space || (some_full && candidates.len() < quorum) {
                return Err(FsError::no_space(&format!("block {}: {acked} of {quorum} copies stored, the other servers are full", id.short())));
            }
            return Err(last.unwrap_or_else(|| FsError::Io("write quorum not reached".into())));
        }
        Ok(())
    }

    async fn put_one(&self, addr: &str, id: BlockId, data: Arc<Vec<u8>>) -> FsResult<()> {
        let c = self.client(addr);
        // Asking first costs a round trip; for a small block, sending it costs about the same.
        if data.len() >= DEDUP_CHECK_MIN {
            if let Ok((ChunkResponse::Has(h), _)) = c.call::<_, ChunkResponse>(&ChunkRequest::Has { ids: vec![id], touch: true }, &[]).await {
                if h.first() == Some(&true) {
                    return Ok(());
                }
            }
        }
        match c.call::<_, ChunkResponse>(&ChunkRequest::Put { id, age: None }, &data).await {
            Ok((ChunkResponse::Stored, _)) => Ok(()),
            Ok((ChunkResponse::Error(e), _)) if e.code == ErrorCode::NoSpace => Err(FsError::no_space(&format!("{}: {}", c.addr(), e.message))),
            Ok((ChunkResponse::Error(e), _)) => Err(FsError::Io(format!("{}: {e}", c.addr()))),
            Ok((r, _)) => Err(FsError::Io(format!("{}: unexpected reply {r:?}", c.addr()))),
            Err(e) => Err(FsError::from(e)),
        }
    }

    /// Fetch a verified block: cache, then one fetch shared by all concurrent readers.
    pub async fn get(self: &Arc<Self>, id: BlockId) -> FsResult<Arc<Vec<u8>>> {
        if let Some(d) = self.cache.lock().unwrap().get(&id) {
            return Ok(d.clone());
        }
        let fut = {
            let mut inflight = self.inflight.lock().unwrap();
            inflight
                .entry(id)
                .or_insert_with(|| {
                    let me = self.clone();
                    async move {
                        let r = me.fetch(id).await;
                        me.inflight.lock().unwrap().remove(&id);
                        if let Ok(d) = &r {
                            me.cache_insert(id, d.clone());
                        }
                        r
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        fut.await
    }

    /// Warm the cache with `id` in the background.
    pub fn prefetch(self: &Arc<Self>, id: BlockId) {
        if self.cache.lock().unwrap().contains(&id) || self.inflight.lock().unwrap().contains_key(&id) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let _ = me.get(id).await;
        });
    }

    async fn fetch(&self, id: BlockId) -> FsResult<Arc<Vec<u8>>> {
        let t = std::time::Instant::now();
        let r = self.fetch_verified(id).await;
        tracing::trace!(elapsed_us = t.elapsed().as_micros() as u64, block = %id.short(), ok = r.is_ok(), "block fetch");
        r
    }

    async fn fetch_verified(&self, id: BlockId) -> FsResult<Arc<Vec<u8>>> {
        let owners = self.read_order(&id);
        let mut last = FsError::Io(format!("block {} has no reachable replica", id.short()));
        for addr in owners {
            let c = self.client(&addr);
            match c.call::<_, ChunkResponse>(&ChunkRequest::Get { id }, &[]).await {
                Ok((ChunkResponse::Block, data)) => {
                    let ok = {
                        let data = data.clone();
                        tokio::task::spawn_blocking(move || id.verify(&data)).await.unwrap_or(false)
                    };
                    if ok {
                        return Ok(Arc::new(data));
                    }
                    warn!(block = %id.short(), server = %addr, "replica returned bytes that do not match the block id; reported, trying the next");
                    last = FsError::Io(format!("block {}: bad replica on {addr}", id.short()));
                    tokio::spawn(async move {
                        let _ = c.call::<_, ChunkResponse>(&ChunkRequest::Report { id }, &[]).await;
                    });
                }
                Ok((ChunkResponse::Error(e), _)) => {
                    warn!(block = %id.short(), server = %addr, "get failed: {e}");
                    last = FsError::Io(format!("{addr}: {e}"));
                }
                Ok((r, _)) => last = FsError::Io(format!("{addr}: unexpected reply {r:?}")),
                Err(e) => {
                    warn!(block = %id.short(), server = %addr, "get failed: {e}");
                    last = e.into();
                }
            }
        }
        Err(last)
    }

    /// Keep a block this mount has just stored (its bytes hash to `id`) in the cache.
    pub fn remember(&self, id: BlockId, data: Arc<Vec<u8>>) {
        self.cache_insert(id, data);
    }

    fn cache_insert(&self, id: BlockId, data: Arc<Vec<u8>>) {
        let mut cache = self.cache.lock().unwrap();
        let mut bytes = self.cache_bytes.lock().unwrap();
        if let Some(old) = cache.put(id, data.clone()) {
            *bytes -= old.len();
        }
        *bytes += data.len();
        while *bytes > self.cache_limit {
            match cache.pop_lru() {
                Some((_, d)) => *bytes -= d.len(),
                None => break,
            }
        }
    }
}
