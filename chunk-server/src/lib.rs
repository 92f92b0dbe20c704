//! Tessera chunk server: stores content-addressed blocks and serves put/get/has/delete over
//! QUIC; registers with the metadata server and sends heartbeats.

mod direct;
pub mod fence;
pub mod repair;
pub mod scrub;
pub mod store;

use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use store::{BlockStore, ChunkError};
use tessera_common::metalink::MetaLink;
use tessera_common::metrics::{Metrics, RpcMetrics, Samples};
use tessera_common::net::{self, Service};
use tessera_common::proto::chunk::{ChunkRequest, ChunkResponse};
use tessera_common::proto::meta::{ChunkLoad, MetaRequest, MetaResponse};
use tessera_common::tls::{Identity, NodeCerts, Role};
use tessera_common::ring::Ring;
use tessera_common::worker::{self, Schedule, Worker, Workers};
use tessera_common::{ErrorCode, WireError};
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(Clone, Debug)]
pub struct ChunkConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Address others reach this server at; defaults to the bound listen address.
    pub advertise: Option<String>,
    pub meta: Vec<String>,
    pub certs: PathBuf,
    pub zone: String,
    /// Bytes offered to the cluster; defaults to the size of the data directory's disk.
    pub capacity: Option<u64>,
    /// Bytes kept free (see [`Space`]); defaults to 5% of the disk (or of the capacity, if
    /// smaller), within [16 MiB, 1 GiB].
    pub reserve: Option<u64>,
    pub heartbeat: Duration,
    /// Repair and rebalance traffic limit, MB/s.
    pub repair_rate: f64,
    /// Time between repair scans.
    pub scan_interval: Duration,
    /// Scrub traffic limit, MB/s.
    pub scrub_rate: f64,
    /// Time between background scrub passes.
    pub scrub_interval: Duration,
    /// Serve Prometheus metrics on this TCP address (plain HTTP), if set.
    pub metrics: Option<SocketAddr>,
}

impl From<ChunkError> for WireError {
    fn from(e: ChunkError) -> Self {
        let code = match e {
            ChunkError::NotFound(_) => ErrorCode::NotFound,
            ChunkError::BadHash(_) | ChunkError::Corrupt(_) => ErrorCode::BadHash,
            ChunkError::NoSpace(..) => ErrorCode::NoSpace,
            ChunkError::Unreadable(..) | ChunkError::Io { .. } => ErrorCode::Internal,
        };
        WireError::new(code, e.to_string())
    }
}

struct ChunkService {
    store: Arc<BlockStore>,
    node_id: u64,
    scrubber: Arc<scrub::Scrubber>,
    space: Arc<Space>,
    rpc_metrics: Option<Arc<RpcMetrics>>,
    fence: Arc<fence::Fence>,
}

/// Free space. The headroom is the smaller of the data disk's free space and what is left of
/// `--capacity`. Below the reserve the server is `full`: its heartbeat says so, the ring marks
/// it, and writers and repair send new blocks to the next servers clockwise. A new block is
/// refused (`NoSpace`) once it would leave less than half the reserve, which leaves room for
/// writers whose ring is a few seconds old; the file system's own ENOSPC is the last guard.
pub struct Space {
    dir: PathBuf,
    capacity: u64,
    pub reserve: u64,
}

const MIB: u64 = 1 << 20;

impl Space {
    pub fn new(dir: PathBuf, capacity: u64, reserve: Option<u64>) -> Self {
        let reserve = reserve.unwrap_or_else(|| (disk_stat(&dir).0.min(capacity) / 20).clamp(16 * MIB, 1024 * MIB));
        Space { dir, capacity, reserve }
    }

    pub fn headroom(&self, used: u64) -> u64 {
        disk_stat(&self.dir).1.min(self.capacity.saturating_sub(used))
    }

    /// What this server still takes above its reserve (`free` in heartbeats and put answers).
    pub fn free(&self, used: u64) -> u64 {
        self.headroom(used).saturating_sub(self.reserve)
    }

    /// The headroom, and whether it is below the reserve (`full`), from one disk query.
    pub fn state(&self, used: u64) -> (u64, bool) {
        let h = self.headroom(used);
        (h, h < self.reserve)
    }

    /// Whether a new block of `len` bytes may be stored.
    pub fn admits(&self, used: u64, len: usize) -> bool {
        self.headroom(used) >= len as u64 + self.reserve / 2
    }
}

fn admin_only(peer: &Identity, what: &str) -> Result<(), WireError> {
    if matches!(peer.role, Role::Meta | Role::Admin) {
        Ok(())
    } else {
        Err(WireError::new(ErrorCode::PermissionDenied, format!("role {} may not {what}", peer.role)))
    }
}

impl Service for ChunkService {
    type Req = ChunkRequest;
    type Resp = ChunkResponse;
    fn metrics(&self) -> Option<&RpcMetrics> {
        self.rpc_metrics.as_deref()
    }

    async fn handle(self: Arc<Self>, peer: Arc<Identity>, req: ChunkRequest, payload: Vec<u8>) -> (ChunkResponse, Vec<u8>) {
        let store = self.store.clone();
        let res: Result<(ChunkResponse, Vec<u8>), WireError> = match req {
            ChunkRequest::Put { id, age } => {
                let space = self.space.clone();
                blocking(move || {
                    if !space.admits(store.used(), payload.len()) && !store.has(&id, false) {
                        return Err(ChunkError::NoSpace(id, format!("{} bytes free, {} kept in reserve", space.headroom(store.used()), space.reserve)));
                    }
                    store.put(&id, &payload, age)?;
                    Ok((ChunkResponse::Stored { free: space.free(store.used()) }, vec![]))
                })
                .await
            }
            ChunkRequest::Get { id } => match tokio::task::spawn_blocking(move || store.read(&id)).await {
                Ok(Ok(d)) => Ok((ChunkResponse::Block, d)),
                Ok(Err(e)) => {
                    if matches!(e, ChunkError::Unreadable(..)) {
                        // The medium failed under this copy: fetch a good one now, not at the next scan.
                        let s = self.scrubber.clone();
                        tokio::spawn(async move { s.refetch(id).await });
                    }
                    Err(e.into())
                }
                Err(e) => Err(WireError::new(ErrorCode::Internal, e.to_string())),
            },
            ChunkRequest::Report { id } => {
                // Check the copy; a bad one is quarantined by get() and replaced from a good one.
                let s = self.scrubber.clone();
                let check = store.clone();
                match tokio::task::spawn_blocking(move || check.get(&id)).await {
                    Ok(Err(ChunkError::Corrupt(_) | ChunkError::Unreadable(..))) => {
                        tracing::error!(block = %id.short(), reporter = %peer.name, "a reader found this copy corrupt; replacing it");
                        tokio::spawn(async move { s.refetch(id).await });
                    }
                    _ => tracing::warn!(block = %id.short(), reporter = %peer.name, "a reader reported this copy, but it verifies here"),
                }
                Ok((ChunkResponse::Stored { free: self.space.free(store.used()) }, vec![]))
            }
            ChunkRequest::Has { ids, touch } => blocking(move || Ok((ChunkResponse::Has(ids.iter().map(|i| store.has(i, touch)).collect()), vec![]))).await,
            ChunkRequest::Delete { ids, min_idle_secs, term } => match admin_only(&peer, "delete blocks").and_then(|()| self.fence.admit(term).map_err(|m| WireError::new(ErrorCode::NotLeader, m))) {
                Err(e) => Err(e),
                Ok(()) => {
                    blocking(move || {
                        let mut count = 0;
                        for id in &ids {
                            count += store.delete_if_idle(id, min_idle_secs)? as u64;
                        }
                        Ok((ChunkResponse::Deleted { count }, vec![]))
                    })
                    .await
                }
            },
            ChunkRequest::List { after, limit } => match admin_only(&peer, "list blocks") {
                Err(e) => Err(e),
                Ok(()) => blocking(move || store.list(after, limit.clamp(1, 65536) as usize).map(|l| (ChunkResponse::List(l), vec![]))).await,
            },
            ChunkRequest::Scrub { wait } => match admin_only(&peer, "start a scrub") {
                Err(e) => Err(e),
                Ok(()) if wait => Ok((ChunkResponse::Scrubbed(self.scrubber.pass().await), vec![])),
                Ok(()) => {
                    let s = self.scrubber.clone();
                    tokio::spawn(async move { s.pass().await });
                    Ok((ChunkResponse::Scrubbed(Default::default()), vec![]))
                }
            },
            ChunkRequest::Stat => Ok((ChunkResponse::Stat { node_id: self.node_id, blocks: store.count(), used: store.used() }, vec![])),
        };
        res.unwrap_or_else(|e| (ChunkResponse::Error(e), vec![]))
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ChunkError> + Send + 'static) -> Result<T, WireError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(WireError::from),
        Err(e) => Err(WireError::new(ErrorCode::Internal, e.to_string())),
    }
}

/// The node id is chosen once and kept in the data directory.
fn node_id(dir: &std::path::Path) -> anyhow::Result<u64> {
    let p = dir.join("node.id");
    if let Ok(s) = std::fs::read_to_string(&p) {
        return s.trim().parse().with_context(|| format!("{}: not a node id", p.display()));
    }
    let id = rand::random::<u64>() >> 1 | 1;
    tessera_common::durable::write_file(&p, format!("{id}\n").as_bytes()).with_context(|| format!("writing {}", p.display()))?;
    Ok(id)
}

/// (size, bytes available to us) of the file system holding `dir`; (0, 0) if unknown.
fn disk_stat(dir: &std::path::Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap_or_default();
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and s a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } == 0 {
        (s.f_blocks as u64 * s.f_frsize as u64, s.f_bavail as u64 * s.f_frsize as u64)
    } else {
        (0, 0)
    }
}

/// A running chunk server.
pub struct ChunkServer {
    pub addr: SocketAddr,
    pub node_id: u64,
    pub task: tokio::task::JoinHandle<()>,
}

/// Bind, open the store, register with the metadata server, serve until `shutdown`.
pub async fn start(cfg: ChunkConfig, shutdown: watch::Receiver<bool>) -> anyhow::Result<ChunkServer> {
    let certs = NodeCerts::load(&cfg.certs).context("loading certificates")?;
    if certs.identity.role != Role::Chunk {
        bail!("certificate in {} has role {}, a chunk server needs role chunk", cfg.certs.display(), certs.identity.role);
    }
    tessera_common::durable::create_dir_all(&cfg.data_dir).with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let store = Arc::new(BlockStore::open(&cfg.data_dir)?);
    let node_id = node_id(&cfg.data_dir)?;
    let ep = net::server_endpoint(&certs, cfg.listen).with_context(|| format!("listening on {}", cfg.listen))?;
    let addr = ep.local_addr()?;
    let advertise = cfg.advertise.clone().unwrap_or_else(|| addr.to_string());
    let capacity = cfg.capacity.unwrap_or_else(|| disk_stat(&cfg.data_dir).0);
    let space = Arc::new(Space::new(cfg.data_dir.clone(), capacity, cfg.reserve));
    let meta = Arc::new(MetaLink::new(ep.clone(), &cfg.meta, Duration::from_secs(10)));
    info!(node_id, %addr, blocks = store.count(), reserve = space.reserve, "chunk server listening");

    let (ring_tx, ring_rx) = watch::channel(Arc::new(Ring::default()));
    let pending = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let peers = net::ClientPool::new(ep.clone(), 1, Duration::from_secs(30), Role::Chunk);
    let workers = Workers::new();
    let beat_worker = workers.add("heartbeat");
    let scrubber = Arc::new(scrub::Scrubber {
        store: store.clone(),
        meta: meta.clone(),
        me: node_id,
        ring: ring_rx.clone(),
        peers: peers.clone(),
        rate: repair::RateLimiter::new(cfg.scrub_rate),
        running: Default::default(),
        worker: workers.add("scrub"),
    });
    let repair_sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let rpc_metrics = match cfg.metrics {
        Some(at) => {
            let m = Metrics::new();
            let rpc = RpcMetrics::new(&m);
            let shown = Shown { store: store.clone(), space: space.clone(), capacity, pending: pending.clone(), repair_sent: repair_sent.clone(), workers: workers.clone() };
            m.register_scrape(move |s| shown.sample(s));
            let bound = tessera_common::metrics::serve(at, m).await.with_context(|| format!("--metrics {at}: cannot listen"))?;
            info!(%bound, "metrics on http://{bound}/metrics");
            Some(rpc)
        }
        None => None,
    };
    let fence = Arc::new(fence::Fence::load(&cfg.data_dir).with_context(|| format!("reading {}", cfg.data_dir.join("fence").display()))?);
    let svc = Arc::new(ChunkService { store: store.clone(), node_id, scrubber: scrubber.clone(), space: space.clone(), rpc_metrics, fence: fence.clone() });
    let scrub_task = worker::spawn(scrubber.worker.clone(), Schedule::every(cfg.scrub_interval), shutdown.clone(), move || {
        let s = scrubber.clone();
        async move { s.scrub().await }
    });
    let repairer = Arc::new(repair::Repairer {
        store: store.clone(),
        me: node_id,
        ring: ring_rx.clone(),
        peers,
        rate: repair::RateLimiter::new(cfg.repair_rate),
        pending: pending.clone(),
        sent: repair_sent,
        worker: workers.add("repair"),
    });
    // A scan every interval, and at once when the ring changes (a server joined, left, filled).
    let rep = worker::spawn_woken(repairer.worker.clone(), Schedule::every(cfg.scan_interval), ring_rx, shutdown.clone(), move || {
        let r = repairer.clone();
        async move { r.pass().await }
    });
    let beat = Arc::new(Heartbeat {
        meta,
        store,
        space,
        node_id,
        addr: advertise,
        zone: cfg.zone.clone(),
        capacity,
        ring: ring_tx,
        pending,
        registered: AtomicBool::new(false),
        was_full: AtomicBool::new(false),
        fence,
        workers,
        worker: beat_worker.clone(),
    });
    // Registers at once, then beats every interval.
    let hb = worker::spawn(beat_worker, Schedule::every(cfg.heartbeat).at_start(), shutdown.clone(), move || {
        let b = beat.clone();
        async move { b.beat().await }
    });
    let task = tokio::spawn(async move {
        net::serve(ep, svc, shutdown).await;
        hb.abort();
        rep.abort();
        scrub_task.abort();
    });
    Ok(ChunkServer { addr, node_id, task })
}

/// What a chunk server shows on `--metrics` (docs/metrics.md), besides the requests and
/// connections that `common::net` counts.
struct Shown {
    store: Arc<BlockStore>,
    space: Arc<Space>,
    capacity: u64,
    pending: Arc<std::sync::atomic::AtomicU64>,
    repair_sent: Arc<std::sync::atomic::AtomicU64>,
    workers: Arc<Workers>,
}

impl Shown {
    fn sample(&self, s: &mut Samples) {
        let used = self.store.used();
        let (headroom, full) = self.space.state(used);
        s.gauge("chunk_blocks", "Blocks stored on this server", &[], self.store.count() as i64);
        s.gauge("chunk_used_bytes", "Bytes of the blocks stored on this server", &[], used as i64);
        s.gauge("chunk_capacity_bytes", "Bytes this server offers (--capacity, or its disk's size)", &[], self.capacity as i64);
        s.gauge("chunk_free_bytes", "Bytes this server still takes above its reserve", &[], headroom.saturating_sub(self.space.reserve) as i64);
        s.gauge("chunk_full", "1 while the server is below its space reserve (takes no new blocks)", &[], full as i64);
        s.gauge("chunk_repair_pending_copies", "Copies the last repair scan found missing elsewhere and has not yet sent", &[], self.pending.load(Ordering::Relaxed) as i64);
        s.counter("chunk_repair_sent_bytes", "Bytes of copies sent to other servers by repair", &[], self.repair_sent.load(Ordering::Relaxed));
        self.workers.sample(s);
    }
}

struct Heartbeat {
    meta: Arc<MetaLink>,
    store: Arc<BlockStore>,
    space: Arc<Space>,
    node_id: u64,
    addr: String,
    zone: String,
    capacity: u64,
    ring: watch::Sender<Arc<Ring>>,
    pending: Arc<std::sync::atomic::AtomicU64>,
    registered: AtomicBool,
    was_full: AtomicBool,
    fence: Arc<fence::Fence>,
    /// This server's workers, reported with each beat.
    workers: Arc<Workers>,
    worker: Arc<Worker>,
}

impl Heartbeat {
    /// The workers' status for this beat; the heartbeat's own shows as between beats (`idle`,
    /// this beat not yet counted), as it is whenever the status is read, not `running` always.
    fn workers_between_beats(&self) -> Vec<tessera_common::proto::meta::WorkerStatus> {
        let mut list = self.workers.status();
        for w in list.iter_mut().filter(|w| w.name == self.worker.name()) {
            w.state = "idle".into();
        }
        list
    }

    /// One beat: register if not registered, else report the load; follow the ring version
    /// the replies carry.
    async fn beat(&self) -> Result<(), String> {
        // One disk query per beat for the log line, the flag and the free space reported.
        let used = self.store.used();
        let (headroom, full) = self.space.state(used);
        if full != self.was_full.swap(full, Ordering::Relaxed) {
            if full {
                warn!(free = headroom, reserve = self.space.reserve, "free space is below the reserve: taking no new blocks");
            } else {
                info!("free space is above the reserve again: taking new blocks");
            }
        }
        let req = if self.registered.load(Ordering::Relaxed) {
            MetaRequest::Heartbeat {
                node_id: self.node_id,
                load: ChunkLoad {
                    capacity: self.capacity,
                    used,
                    blocks: self.store.count(),
                    repair_pending: self.pending.load(Ordering::Relaxed),
                    free: headroom.saturating_sub(self.space.reserve),
                    full,
                    workers: self.workers_between_beats(),
                },
            }
        } else {
            MetaRequest::RegisterChunk { node_id: self.node_id, addr: self.addr.clone(), zone: self.zone.clone(), capacity: self.capacity }
        };
        let r = match self.meta.call(&req).await {
            Ok(MetaResponse::Ring(r)) => {
                info!(ring_version = r.version, "registered with the metadata server");
                self.registered.store(true, Ordering::Relaxed);
                self.ring.send_replace(Arc::new(r));
                Ok(())
            }
            Ok(MetaResponse::HeartbeatAck { ring_version, term }) => {
                if let Err(e) = self.fence.raise(term) {
                    warn!("storing the metadata term: {e}");
                }
                if ring_version != self.ring.borrow().version {
                    if let Ok(MetaResponse::Ring(r)) = self.meta.call(&MetaRequest::GetRing).await {
                        self.ring.send_replace(Arc::new(r));
                    }
                }
                Ok(())
            }
            Ok(MetaResponse::Error(e)) if e.code == ErrorCode::NotFound => {
                self.registered.store(false, Ordering::Relaxed);
                Err(format!("the metadata server does not know this server: {}", e.message))
            }
            Ok(other) => {
                warn!("unexpected heartbeat reply: {other:?}");
                Err(format!("unexpected reply {other:?}"))
            }
            Err(e) => {
                warn!("heartbeat: {e}");
                self.registered.store(false, Ordering::Relaxed);
                Err(e.to_string())
            }
        };
        let state = if self.registered.load(Ordering::Relaxed) { "registered" } else { "registering" };
        self.worker.set_progress(format!("{state}, ring version {}", self.ring.borrow().version));
        r
    }
}
