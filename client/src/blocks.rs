//! Block I/O against the chunk servers: replicated puts, verified gets, a bounded block cache
//! and single-flight fetches.

use crate::error::{FsError, FsResult};
use crate::metrics::MountMetrics;
use crate::room::Room;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tessera_common::net::{ClientPool, RpcClient};
use tessera_common::proto::chunk::{ChunkRequest, ChunkResponse};
use tessera_common::ring::Ring;
use tessera_common::{BlockId, ErrorCode};
use tracing::{debug, warn};

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
    get_latency: Latency,
    put_latency: Latency,
    suspects: Suspects,
    /// Whether the cluster can take more (fed by put answers here, by `statfs` in `Fs`).
    pub room: Room,
    /// The mount's counts (`--metrics`): kept here, where most of them happen.
    pub metrics: Arc<MountMetrics>,
}

/// Blocks at least this large are offered with a "has" before they are sent.
const DEDUP_CHECK_MIN: usize = 64 * 1024;

/// Bounds of the hedge delay of reads: a second server is asked after this long at most, so a
/// frozen server stalls a read by about this much.
const HEDGE_MIN: Duration = Duration::from_millis(50);
const HEDGE_MAX: Duration = Duration::from_millis(500);
/// Bounds of the time the other targets of a put get once the write quorum has acknowledged.
const SETTLE_MIN: Duration = Duration::from_millis(200);
const SETTLE_MAX: Duration = Duration::from_millis(1000);
/// Bounds of the silence after which a put short of its quorum asks a spare server.
const SPARE_MIN: Duration = Duration::from_millis(500);
const SPARE_MAX: Duration = Duration::from_millis(2000);
/// How long a server that failed or stalled is tried last.
const SUSPECT_FOR: Duration = Duration::from_secs(10);

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
            get_latency: Latency::default(),
            put_latency: Latency::default(),
            suspects: Suspects::default(),
            room: Room::default(),
            metrics: Arc::default(),
        })
    }

    /// Whether a write may be buffered with `margin` bytes left (see `room`).
    pub fn room_for(&self, margin: u64) -> bool {
        let ring = self.ring();
        self.room.allows(margin, ring.nodes.iter().filter(|n| n.writable()).map(|n| n.addr.as_str()), self.replicas)
    }

    pub fn ring(&self) -> Arc<Ring> {
        self.rings.read().unwrap()[0].clone()
    }

    /// Take `ring` if it is newer than the current one: versions only grow (each is stored
    /// through Raft before it is published), so an older one is a server's stale view.
    pub fn set_ring(&self, ring: Ring) {
        let mut g = self.rings.write().unwrap();
        if ring.version > g[0].version {
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
    /// while enough servers answer. Once the write quorum has acknowledged, the others get a
    /// short settle time (a few times the usual put latency); a server still silent then is
    /// left behind, marked suspect, and its copy is repair's business, so one frozen or dead
    /// server costs one settle time, not a stall per block. Suspect servers are tried last and
    /// only when needed for the quorum. A server that already holds the block is not sent it
    /// again (dedup); its "has" also protects the block from garbage collection until we
    /// commit. Servers that are full are skipped like down ones; when the write fails because
    /// no server can take the block (all full, or a server answered `NoSpace`), the error is
    /// `NoSpace` (ENOSPC), not EIO.
    pub async fn put(self: &Arc<Self>, id: BlockId, data: Arc<Vec<u8>>) -> FsResult<()> {
        let t = Instant::now();
        self.metrics.block_puts.inc();
        self.metrics.put_bytes.inc_by(data.len() as u64);
        let r = self.put_replicas(id, data.clone()).await;
        tracing::trace!(elapsed_us = t.elapsed().as_micros() as u64, block = %id.short(), len = data.len(), ok = r.is_ok(), "block put");
        r
    }

    async fn put_replicas(self: &Arc<Self>, id: BlockId, data: Arc<Vec<u8>>) -> FsResult<()> {
        let ring = self.ring();
        let targets: Vec<String> = ring.targets(&id, ring.nodes.len()).iter().map(|n| n.addr.clone()).collect();
        let some_full = ring.nodes.iter().any(|n| n.up && n.full);
        if targets.is_empty() {
            return Err(if some_full { FsError::no_space("every chunk server that is up is full") } else { FsError::Io("no chunk server is up".into()) });
        }
        // Space is not a failure the quorum covers: while servers are full, a block that cannot
        // get its N copies (one per server that is up, at most N) is refused with ENOSPC rather
        // than stored short and left under-replicated until space frees (as Ceph stops writes
        // when an OSD is full).
        let up = ring.nodes.iter().filter(|n| n.up).count();
        if some_full && targets.len() < self.replicas.min(up) {
            return Err(FsError::no_space(&format!("block {}: {} of {} servers can take it, the others are full", id.short(), targets.len(), self.replicas.min(up))));
        }
        let (order, healthy) = self.suspects.healthy_first(targets);
        let want = self.replicas.min(order.len());
        // A cluster smaller than the quorum can hold at most one copy per server.
        let quorum = self.write_quorum.min(ring.nodes.len()).max(1);
        let mut inflight = FuturesUnordered::new();
        // Servers asked and not answered yet.
        let mut pending: Vec<String> = Vec::new();
        let launch = |addr: &String, inflight: &mut FuturesUnordered<_>, pending: &mut Vec<String>| {
            pending.push(addr.clone());
            let (me, addr, data) = (self.clone(), addr.clone(), data.clone());
            inflight.push(async move {
                let t = Instant::now();
                let r = me.put_one(&addr, id, data).await;
                (addr, r, t.elapsed())
            });
        };
        let mut next = want.min(healthy.max(quorum));
        for addr in &order[..next] {
            launch(addr, &mut inflight, &mut pending);
        }
        let (mut acked, mut last, mut refused_for_space) = (0, None, false);
        let mut settle: Option<Instant> = None;
        while acked < want {
            if inflight.is_empty() {
                // Only suspects are left: with the quorum in hand, their copies wait for repair.
                if next < order.len() && !(acked >= quorum && next >= healthy) {
                    launch(&order[next], &mut inflight, &mut pending);
                    next += 1;
                    continue;
                }
                break;
            }
            // Short of a majority quorum, a long silence brings in a spare: the next server
            // clockwise (two dead owners of three must not hold a write until their
            // connections time out); late copies are repair's to sort out. The strict mode
            // (quorum N) waits for the owners, replacing only those that fail.
            let spare = (settle.is_none() && quorum < want && next < order.len()).then(|| Instant::now() + self.put_latency.times(8, SPARE_MIN, SPARE_MAX));
            let ev = match settle.or(spare) {
                Some(at) => tokio::select! {
                    r = inflight.next() => r,
                    _ = tokio::time::sleep_until(at.into()) => None,
                },
                None => inflight.next().await,
            };
            let Some((addr, r, took)) = ev else {
                for addr in &pending {
                    self.suspects.mark(addr);
                }
                if settle.is_none() {
                    warn!(block = %id.short(), acked, quorum, silent = ?pending, spare = %order[next], "put: servers silent short of the quorum; asking a spare");
                    launch(&order[next], &mut inflight, &mut pending);
                    next += 1;
                    continue;
                }
                warn!(block = %id.short(), acked, quorum, "put: servers silent after the quorum acknowledged; leaving their copies to repair");
                break;
            };
            pending.retain(|a| *a != addr);
            match r {
                Ok(()) => {
                    acked += 1;
                    self.put_latency.observe(took);
                    self.suspects.clear(&addr);
                    if acked >= quorum && settle.is_none() {
                        settle = Some(Instant::now() + self.put_latency.times(4, SETTLE_MIN, SETTLE_MAX));
                    }
                }
                Err(e) => {
                    warn!(block = %id.short(), server = %addr, "put failed: {e}");
                    refused_for_space |= e.errno() == libc::ENOSPC;
                    last = Some(e);
                    if next < order.len() && acked + inflight.len() < want {
                        launch(&order[next], &mut inflight, &mut pending);
                        next += 1;
                    }
                }
            }
        }
        if !inflight.is_empty() {
            // Let the slow ones finish (or fail) on their own (marked above, so the next puts
            // and reads do not wait for them).
            let me = self.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                while let Some((addr, r, _)) = inflight.next().await {
                    match r {
                        Ok(()) => me.suspects.clear(&addr),
                        Err(e) => warn!(block = %id.short(), server = %addr, after_ms = t.elapsed().as_millis() as u64, "late put failed: {e}"),
                    }
                }
            });
        }
        if refused_for_space && acked < want {
            return Err(FsError::no_space(&format!("block {}: {acked} of {want} copies stored, the other servers are full", id.short())));
        }
        if acked < quorum {
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
                    self.metrics.copies_deduplicated.inc();
                    return Ok(());
                }
            }
        }
        match c.call_owned::<_, ChunkResponse>(&ChunkRequest::Put { id, age: None }, bytes::Bytes::from_owner(BlockBytes(data))).await {
            Ok((ChunkResponse::Stored { free }, _)) => {
                self.room.server_free(addr, free);
                Ok(())
            }
            Ok((ChunkResponse::Error(e), _)) if e.code == ErrorCode::NoSpace => Err(FsError::no_space(&format!("{}: {}", c.addr(), e.message))),
            Ok((ChunkResponse::Error(e), _)) => Err(FsError::Io(format!("{}: {e}", c.addr()))),
            Ok((r, _)) => Err(FsError::Io(format!("{}: unexpected reply {r:?}", c.addr()))),
            Err(e) => {
                self.suspects.mark(addr);
                Err(FsError::from(e))
            }
        }
    }

    /// Fetch a verified block: cache, then one fetch shared by all concurrent readers.
    pub async fn get(self: &Arc<Self>, id: BlockId) -> FsResult<Arc<Vec<u8>>> {
        if let Some(d) = self.cache.lock().unwrap().get(&id) {
            self.metrics.block_cache_hits.inc();
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

    async fn fetch(self: &Arc<Self>, id: BlockId) -> FsResult<Arc<Vec<u8>>> {
        let t = std::time::Instant::now();
        let r = self.fetch_verified(id).await;
        tracing::trace!(elapsed_us = t.elapsed().as_micros() as u64, block = %id.short(), ok = r.is_ok(), "block fetch");
        r
    }

    /// Ask the best server first; if it has not answered after the hedge delay (a few times
    /// the usual get latency), ask the next one too, and so on: the first verified copy wins.
    /// A frozen or dead server so costs one hedge delay, not the call timeout. A failed or
    /// wrong answer moves on at once.
    async fn fetch_verified(self: &Arc<Self>, id: BlockId) -> FsResult<Arc<Vec<u8>>> {
        let (order, _) = self.suspects.healthy_first(self.read_order(&id));
        let mut last = FsError::Io(format!("block {} has no reachable replica", id.short()));
        let mut inflight = FuturesUnordered::new();
        let mut next = 0;
        loop {
            if inflight.is_empty() {
                if next == order.len() {
                    return Err(last);
                }
                inflight.push(self.get_one(order[next].clone(), id));
                next += 1;
            }
            let hedge = self.get_latency.times(4, HEDGE_MIN, HEDGE_MAX);
            let ev = tokio::select! {
                r = inflight.next() => r,
                _ = tokio::time::sleep(hedge), if next < order.len() => None,
            };
            match ev {
                Some((_, Ok(data), took)) => {
                    self.get_latency.observe(took);
                    self.metrics.block_fetches.inc();
                    self.metrics.fetched_bytes.inc_by(data.len() as u64);
                    return Ok(Arc::new(data));
                }
                Some((_, Err(e), _)) => last = e,
                None => {
                    debug!(block = %id.short(), server = %order[next - 1], after_ms = hedge.as_millis() as u64, "get: no answer yet, asking the next server too");
                    inflight.push(self.get_one(order[next].clone(), id));
                    next += 1;
                }
            }
        }
    }

    /// One verified get from `addr`. A copy whose bytes do not match its id is reported to
    /// its server (which quarantines it) and counts as a failure; a server that does not
    /// answer becomes a suspect (one that answers, even with an error, is healthy).
    fn get_one(self: &Arc<Self>, addr: String, id: BlockId) -> impl Future<Output = (String, FsResult<Vec<u8>>, Duration)> + 'static {
        let (me, c) = (self.clone(), self.client(&addr));
        async move {
            let t = Instant::now();
            let r = match c.call::<_, ChunkResponse>(&ChunkRequest::Get { id }, &[]).await {
                Ok((ChunkResponse::Block, data)) => {
                    let (ok, data) = tokio::task::spawn_blocking(move || (id.verify(&data), data)).await.unwrap_or((false, Vec::new()));
                    if ok {
                        Ok(data)
                    } else {
                        warn!(block = %id.short(), server = %addr, "replica returned bytes that do not match the block id; reported, trying the next");
                        tokio::spawn(async move {
                            let _ = c.call::<_, ChunkResponse>(&ChunkRequest::Report { id }, &[]).await;
                        });
                        Err(FsError::Io(format!("block {}: bad replica on {addr}", id.short())))
                    }
                }
                Ok((ChunkResponse::Error(e), _)) => {
                    warn!(block = %id.short(), server = %addr, "get failed: {e}");
                    Err(FsError::Io(format!("{addr}: {e}")))
                }
                Ok((r, _)) => Err(FsError::Io(format!("{addr}: unexpected reply {r:?}"))),
                Err(e) => {
                    warn!(block = %id.short(), server = %addr, "get failed: {e}");
                    me.suspects.mark(&addr);
                    Err(e.into())
                }
            };
            (addr, r, t.elapsed())
        }
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

/// A smoothed latency of successful calls (an exponentially weighted mean, weight 1/8).
#[derive(Default)]
struct Latency {
    mean_us: AtomicU64,
}

impl Latency {
    fn observe(&self, d: Duration) {
        let x = d.as_micros().min(u64::MAX as u128) as u64;
        let _ = self.mean_us.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| Some(if m == 0 { x } else { m - m / 8 + x / 8 }));
    }

    /// `k` times the mean, within `[lo, hi]`; `hi` until something was observed.
    fn times(&self, k: u32, lo: Duration, hi: Duration) -> Duration {
        match self.mean_us.load(Ordering::Relaxed) {
            0 => hi,
            m => (Duration::from_micros(m) * k).clamp(lo, hi),
        }
    }
}

/// Servers that recently did not answer a call (a transport failure, or silence past a settle or
/// spare time; an error reply is an answer): tried last until
/// they answer again or `SUSPECT_FOR` passes (the ring marks a dead server down only after
/// several missed heartbeats).
#[derive(Default)]
struct Suspects {
    until: Mutex<HashMap<String, Instant>>,
}

impl Suspects {
    fn mark(&self, addr: &str) {
        self.until.lock().unwrap().insert(addr.to_string(), Instant::now() + SUSPECT_FOR);
    }

    fn clear(&self, addr: &str) {
        self.until.lock().unwrap().remove(addr);
    }

    /// `addrs` with the suspects moved to the end (order kept otherwise), and how many are not
    /// suspect.
    fn healthy_first(&self, addrs: Vec<String>) -> (Vec<String>, usize) {
        let now = Instant::now();
        let mut until = self.until.lock().unwrap();
        until.retain(|_, t| *t > now);
        let (healthy, suspect): (Vec<String>, Vec<String>) = addrs.into_iter().partition(|a| !until.contains_key(a));
        let n = healthy.len();
        (healthy.into_iter().chain(suspect).collect(), n)
    }
}

/// A block's bytes as QUIC sends them, without a copy.
struct BlockBytes(Arc<Vec<u8>>);
impl AsRef<[u8]> for BlockBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_common::ring::RingNode;

    #[test]
    fn suspects_go_last_until_cleared() {
        let s = Suspects::default();
        let addrs = || vec!["a".to_string(), "b".to_string(), "c".to_string()];
        s.mark("a");
        assert_eq!(s.healthy_first(addrs()), (vec!["b".into(), "c".into(), "a".into()], 2));
        s.clear("a");
        assert_eq!(s.healthy_first(addrs()), (addrs(), 3));
    }

    #[tokio::test]
    async fn an_older_ring_does_not_replace_a_newer_one() {
        let node = |id: u64| RingNode { id, addr: format!("127.0.0.1:{}", 9000 + id), zone: "z".into(), capacity: 1 << 30, up: true, full: false };
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = Blocks::new(ep, Ring::new(3, 3, vec![node(1), node(2), node(3)]), 3, 2, 1 << 20);
        b.set_ring(Ring::new(0, 3, vec![]));
        b.set_ring(Ring::new(2, 3, vec![node(1)]));
        assert_eq!((b.ring().version, b.ring().nodes.len()), (3, 3), "a stale server's older ring is not taken");
        b.set_ring(Ring::new(4, 3, vec![node(1), node(2)]));
        assert_eq!((b.ring().version, b.ring().nodes.len()), (4, 2), "a newer ring is taken");
    }

    #[test]
    fn latency_bounds_hold() {
        let l = Latency::default();
        let (lo, hi) = (Duration::from_millis(50), Duration::from_millis(500));
        assert_eq!(l.times(4, lo, hi), hi, "nothing observed yet: the upper bound");
        l.observe(Duration::from_millis(1));
        assert_eq!(l.times(4, lo, hi), lo);
        for _ in 0..100 {
            l.observe(Duration::from_millis(60));
        }
        let t = l.times(4, lo, hi);
        assert!(t > Duration::from_millis(200) && t <= hi, "{t:?}");
    }
}
