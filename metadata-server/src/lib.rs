//! Tessera metadata server: the namespace in RocksDB, client sessions, chunk-server membership
//! and the ring, served over QUIC.

pub mod backup;
pub mod claims;
pub mod events;
pub mod gc;
pub mod leases;
pub mod membership;
pub mod metrics;
pub mod namespace;
pub mod raft;
pub mod store;

use anyhow::{bail, Context};
use membership::Membership;
use namespace::{FsParams, Namespace};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tessera_common::metrics::{Metrics, RpcMetrics};
use tessera_common::net::{self, Service};
use tessera_common::proto::meta::{BackupInfo, ClusterStatus, GroupChange, LockSpec, MetaRequest, MetaResponse, MountStatus, Mutation, StatFs};
use tessera_common::tls::{Identity, NodeCerts, Role};
use tessera_common::worker::{self, Schedule, Workers};
use tessera_common::{ErrorCode, WireError};
use tokio::sync::watch;
use tracing::info;

#[derive(Clone, Debug)]
pub struct MetaConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub certs: PathBuf,
    pub replicas: u32,
    /// Acknowledged copies a client needs before it commits a block (default: all).
    pub write_quorum: Option<u32>,
    pub block_size: u32,
    pub down_after: Duration,
    pub out_after: Duration,
    /// Unreferenced blocks are deleted once unused for this long.
    pub gc_grace: Duration,
    /// Time between garbage-collection passes.
    pub gc_interval: Duration,
    /// A client session not heard from for this long expires (its locks and open files go).
    pub session_lease: Duration,
    /// Start from this backup (`tessera meta backup`); the data directory must hold no database.
    pub restore: Option<PathBuf>,
    /// Serve Prometheus metrics on this TCP address (plain HTTP), if set.
    pub metrics: Option<SocketAddr>,
    /// One of several metadata servers under Raft (`--id`, `--peers`); alone if unset.
    pub raft: Option<RaftGroup>,
}

/// This server's place in a replicated metadata group.
#[derive(Clone, Debug)]
pub struct RaftGroup {
    pub id: u64,
    /// Every server of the group, this one included: id → the address clients and the other
    /// servers reach it at.
    pub peers: std::collections::BTreeMap<u64, String>,
    /// Log entries between snapshots (the log behind a snapshot is compacted).
    pub snapshot_every: u64,
    /// A new server, to be added with `tessera meta add`: it never forms a group itself.
    pub join: bool,
}

impl Default for MetaConfig {
    /// The defaults of `tessera-meta`, on loopback port 0.
    fn default() -> Self {
        MetaConfig {
            data_dir: PathBuf::from("tessera-meta"),
            listen: "127.0.0.1:0".parse().unwrap(),
            certs: PathBuf::from("certs"),
            replicas: 3,
            write_quorum: None,
            block_size: tessera_common::DEFAULT_BLOCK_SIZE,
            down_after: Duration::from_secs(5),
            out_after: Duration::from_secs(600),
            gc_grace: Duration::from_secs(3600),
            gc_interval: Duration::from_secs(600),
            session_lease: Duration::from_secs(30),
            restore: None,
            metrics: None,
            raft: None,
        }
    }
}

impl MetaConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(1..=16).contains(&self.replicas) {
            bail!("--replicas must be between 1 and 16");
        }
        if self.write_quorum.is_some_and(|q| q == 0 || q > self.replicas) {
            bail!("--write-quorum must be between 1 and --replicas");
        }
        if self.session_lease < Duration::from_secs(1) {
            bail!("--session-lease must be at least 1 second");
        }
        if let Some(g) = &self.raft {
            if !g.peers.contains_key(&g.id) {
                bail!("--peers must name this server's --id {}", g.id);
            }
            if self.restore.is_some() && (g.peers.len() != 1 || g.join) {
                bail!("--restore starts a group of one: --peers must name only this server (add the others with tessera meta add; docs/raft.md)");
            }
        }
        if self.block_size < 4096 || self.block_size > tessera_common::MAX_BLOCK_SIZE || !self.block_size.is_power_of_two() {
            bail!("--block-size must be a power of two between 4 KiB and 16 MiB");
        }
        Ok(())
    }
}

struct MetaService {
    ns: Arc<Namespace>,
    members: Arc<Membership>,
    replicas: u32,
    write_quorum: u32,
    gc: Arc<gc::Gc>,
    claims: claims::Claims,
    leases: Arc<leases::Leases>,
    /// Bumped after every change that may free a lock: wakes `WaitLock`s.
    lock_changes: watch::Sender<u64>,
    backups: backup::Backups,
    /// Background workers, for `Status`.
    workers: Arc<Workers>,
    rpc_metrics: Option<Arc<RpcMetrics>>,
    events: Arc<events::Events>,
    /// Set under Raft: only the leader answers.
    replica: Option<Arc<raft::Replica>>,
}

fn ns_state(ns: &Namespace) -> String {
    ns.store().failure().map(|why| format!("failed: {why}")).unwrap_or_else(|| "ok".into())
}

/// One event for each chunk server whose state (up, down, out) changed since the last look.
fn note_state_changes(members: &Membership, events: &events::Events) {
    for (id, addr, before, now) in members.state_changes() {
        events.note(format!("chunk server {id:016x} ({addr}) is now {now} (was {before})"));
    }
}

fn denied(role: Role, what: &str) -> MetaResponse {
    MetaResponse::Error(WireError::new(ErrorCode::PermissionDenied, format!("role {role} may not {what}")))
}

impl MetaService {
    fn answer(&self, peer: &Identity, req: MetaRequest) -> MetaResponse {
        let r = |x: Result<MetaResponse, WireError>| x.unwrap_or_else(MetaResponse::Error);
        let ns = &self.ns;
        // The namespace is read by clients and admins (fsck); servers have no business there.
        let namespace_read = matches!(req, MetaRequest::Lookup { .. } | MetaRequest::GetAttr { .. } | MetaRequest::ReadDir { .. } | MetaRequest::ReadDirPlus { .. } | MetaRequest::ReadLink { .. } | MetaRequest::GetBlocks { .. } | MetaRequest::StatFs | MetaRequest::GetXattr { .. } | MetaRequest::ListXattr { .. });
        if namespace_read && !matches!(peer.role, Role::Client | Role::Admin) {
            return denied(peer.role, "read the namespace");
        }
        match req {
            MetaRequest::OpenSession { client } => r(ns.open_session(&peer.into(), &client).map(|session| {
                self.leases.touch(session, peer.addr);
                let from = peer.addr.map(|a| a.to_string()).unwrap_or_default();
                self.events.note(format!("mount session {session} opened by {} ({client}) from {from}", peer.name));
                session
            }).map(|session| MetaResponse::Session {
                session,
                block_size: ns.params().block_size,
                replicas: self.replicas,
                write_quorum: self.write_quorum,
                ring: self.members.ring(),
            })),
            MetaRequest::Lookup { parent, name } => r(ns.lookup(parent, &name).map(MetaResponse::Attr)),
            MetaRequest::GetAttr { ino } => r(ns.getattr(ino).map(MetaResponse::Attr)),
            MetaRequest::ReadDir { ino, after, limit } => r(ns.readdir(ino, after, limit).map(|(entries, done)| MetaResponse::Dir { entries, done })),
            MetaRequest::ReadDirPlus { ino, after, limit } => r(ns.readdir_plus(ino, after, limit).map(|(entries, done)| MetaResponse::DirPlus { entries, done })),
            MetaRequest::ReadLink { ino } => r(ns.readlink(ino).map(MetaResponse::Link)),
            MetaRequest::StatFs => r(self.statfs()),
            MetaRequest::GetBlocks { ino, first, count } => r(ns.get_blocks(ino, first, count).map(|(size, blocks, inline, patches)| MetaResponse::Blocks { size, blocks, inline, patches })),
            MetaRequest::Mutate { session, seq, op } => match peer.role {
                Role::Client | Role::Admin => {
                    let frees_locks = matches!(op, Mutation::SetLock { .. } | Mutation::Close { .. });
                    let resp = ns.mutate(&peer.into(), session, seq, op);
                    if !matches!(resp, MetaResponse::Error(_)) {
                        self.leases.touch(session, peer.addr);
                        if frees_locks {
                            self.lock_changes.send_modify(|v| *v += 1);
                        }
                    }
                    resp
                }
                role => denied(role, "change the namespace"),
            },
            MetaRequest::SessionHeartbeat { session } => match peer.role {
                Role::Client | Role::Admin => r(ns.session_alive(&peer.into(), session).map(|()| {
                    self.leases.touch(session, peer.addr);
                    MetaResponse::Lease { lease_ms: self.leases.lease.as_millis() as u64 }
                })),
                role => denied(role, "hold a session"),
            },
            MetaRequest::CloseSession { session } => match peer.role {
                Role::Client | Role::Admin => r(ns.session_alive(&peer.into(), session).and_then(|()| ns.expire_session(session, namespace::now_ns())).map(|_| {
                    self.leases.forget(session);
                    self.events.note(format!("mount session {session} closed (unmounted)"));
                    self.lock_changes.send_modify(|v| *v += 1);
                    MetaResponse::Done
                })),
                role => denied(role, "hold a session"),
            },
            MetaRequest::GetLock { ino, session, lock } => match peer.role {
                Role::Client | Role::Admin => r(ns.get_lock(ino, session, &lock).map(MetaResponse::Lock)),
                role => denied(role, "read locks"),
            },
            MetaRequest::GetRing => MetaResponse::Ring(self.members.ring()),
            MetaRequest::RegisterChunk { node_id, addr, zone, capacity } => match peer.role {
                Role::Chunk => {
                    let what = format!("chunk server {node_id:016x} registered at {addr} (zone {zone})");
                    r(self.members.register(node_id, addr, zone, capacity).map(|ring| {
                        self.events.note(what);
                        MetaResponse::Ring(ring)
                    }))
                }
                role => denied(role, "register a chunk server"),
            },
            MetaRequest::Heartbeat { node_id, load } => match peer.role {
                Role::Chunk => r(self.members.heartbeat(node_id, load).map(|ring_version| MetaResponse::HeartbeatAck { ring_version, term: self.replica.as_ref().and_then(|r| r.leading_term()).unwrap_or(0) })),
                role => denied(role, "send heartbeats"),
            },
            MetaRequest::NodeAdmin { node_id, action } => match peer.role {
                Role::Admin => r(self.members.admin(node_id, action).map(|_| {
                    self.events.note(format!("chunk server {node_id:016x}: {action:?} asked by {}", peer.name));
                    MetaResponse::Done
                })),
                role => denied(role, "change membership"),
            },
            MetaRequest::Status => match peer.role {
                Role::Admin | Role::Meta => r(self.status()),
                role => denied(role, "read the cluster status"),
            },
            MetaRequest::ListBlocks { after, limit } => match peer.role {
                Role::Admin | Role::Meta => r(ns.list_blocks(after, limit).map(MetaResponse::BlockList)),
                role => denied(role, "list blocks"),
            },
            MetaRequest::AuditRefs => match peer.role {
                Role::Admin => r(ns.audit_refs().map(MetaResponse::Audit)),
                role => denied(role, "audit the namespace"),
            },
            MetaRequest::GetXattr { ino, name } => r(ns.get_xattr(ino, &name).map(MetaResponse::Xattr)),
            MetaRequest::ListXattr { ino } => r(ns.list_xattr(ino).map(MetaResponse::XattrNames)),
            MetaRequest::Gc { .. } | MetaRequest::WaitLock { .. } | MetaRequest::BackupStart | MetaRequest::BackupRead { .. } | MetaRequest::BackupEnd { .. } | MetaRequest::Raft { .. } | MetaRequest::MetaGroup { .. } => unreachable!("answered in handle"),
        }
    }

    /// Sizes as `df` shows them, in bytes of file data (N copies each): the capacity of the
    /// servers in the ring, and what the servers that are up may still take above their
    /// reserves; nothing when fewer than N servers (or all that are up) can take a block:
    /// writes then get ENOSPC, as the write quorum does not cover space. While no server is up,
    /// or one that is has not been heard since this server started (right after a restart, the
    /// stored servers count as up until their first heartbeats), free space is not known: total
    /// 0, which a mount reads as "unknown", not as "full" (see `client::room`).
    fn statfs(&self) -> Result<MetaResponse, WireError> {
        let nodes = self.members.status();
        let up = nodes.iter().filter(|n| n.state == "up").count() as u32;
        let known = up > 0 && self.members.loads_known();
        let cap: u64 = if known { nodes.iter().filter(|n| n.state != "out").map(|n| n.capacity).sum() } else { 0 };
        let takers: Vec<u64> = nodes.iter().filter(|n| n.state == "up" && !n.full).map(|n| n.free).collect();
        let r = self.replicas.max(1) as u64;
        let free = if (takers.len() as u32) < self.replicas.min(up).max(1) { 0 } else { takers.iter().sum::<u64>() / r };
        Ok(MetaResponse::StatFs(StatFs {
            total_bytes: cap / r,
            free_bytes: free.min(cap / r),
            files: self.ns.stats()?.files,
            block_size: self.ns.params().block_size,
        }))
    }

    fn status(&self) -> Result<MetaResponse, WireError> {
        let stats = self.ns.stats()?;
        let ring = self.members.ring();
        let nodes = self.members.status();
        // So that a server shown down here has its event listed too, not only after the next tick.
        note_state_changes(&self.members, &self.events);
        Ok(MetaResponse::Status(ClusterStatus {
            nodes,
            ring_version: ring.version,
            replicas: self.replicas,
            files: stats.files,
            logical_bytes: stats.logical_bytes,
            blocks: stats.blocks,
            meta_state: ns_state(&self.ns),
            mounts: self.mounts()?,
            workers: self.workers.status(),
            events: self.events.recent(),
            meta_servers: self.replica.as_ref().map(|r| r.group_status()).unwrap_or_default(),
        }))
    }

    fn mounts(&self) -> Result<Vec<MountStatus>, WireError> {
        Ok(self
            .ns
            .sessions()?
            .into_iter()
            .map(|s| {
                let (addr, ago) = self.leases.last(s.id);
                MountStatus {
                    session: s.id,
                    cert: s.cert,
                    client: s.client,
                    addr,
                    since: s.opened,
                    last_heartbeat_ms: ago.as_millis() as u64,
                    open_files: s.open_files,
                    orphans: s.orphans,
                    locks: s.locks,
                }
            })
            .collect())
    }

    /// `BackupStart`, `BackupRead`, `BackupEnd` (admin checked by the caller).
    fn backup(&self, req: MetaRequest) -> (MetaResponse, Vec<u8>) {
        let r = match req {
            MetaRequest::BackupStart => self.backups.start(self.ns.store()).map(|(id, files)| {
                let info = BackupInfo { id, files, block_size: self.ns.params().block_size, replicas: self.replicas, ring_version: self.members.ring().version };
                (MetaResponse::BackupStarted(info), vec![])
            }),
            MetaRequest::BackupRead { id, name, offset, len } => self.backups.read(id, &name, offset, len).map(|data| (MetaResponse::BackupData, data)),
            MetaRequest::BackupEnd { id } => {
                self.backups.end(id);
                Ok((MetaResponse::Done, vec![]))
            }
            _ => unreachable!("only backup requests"),
        };
        r.unwrap_or_else(|e| (MetaResponse::Error(e), vec![]))
    }

    /// `WaitLock`: subscribe first, then look, so a release between the two is not missed.
    async fn wait_lock(self: Arc<Self>, ino: u64, session: u64, lock: LockSpec, timeout_ms: u32) -> MetaResponse {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms.min(10_000) as u64);
        let mut changes = self.lock_changes.subscribe();
        loop {
            changes.borrow_and_update();
            let ns = self.ns.clone();
            match tokio::task::spawn_blocking(move || ns.get_lock(ino, session, &lock)).await {
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => return MetaResponse::Done,
                Ok(Err(e)) => return MetaResponse::Error(e),
                Err(e) => return MetaResponse::Error(WireError::new(ErrorCode::Internal, e.to_string())),
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return MetaResponse::Done },
                _ = tokio::time::sleep_until(deadline) => return MetaResponse::Done,
            }
        }
    }
}

impl Service for MetaService {
    type Req = MetaRequest;
    type Resp = MetaResponse;
    fn metrics(&self) -> Option<&RpcMetrics> {
        self.rpc_metrics.as_deref()
    }

    async fn handle(self: Arc<Self>, peer: Arc<Identity>, req: MetaRequest, payload: Vec<u8>) -> (MetaResponse, Vec<u8>) {
        let Some(replica) = self.replica.clone() else { return self.serve(peer, req, payload).await };
        if !replica.is_leader() {
            return (MetaResponse::NotLeader { leader: replica.leader_addr() }, vec![]);
        }
        if is_read(&req) {
            // From the lease if it holds before and after the read (raft/lease.rs), else
            // after the followers confirm the lead.
            if replica.lease_holds() {
                let r = self.clone().serve(peer.clone(), req.clone(), payload.clone()).await;
                if replica.lease_holds() {
                    replica.count_read(true);
                    return r;
                }
            }
            if let Err(e) = replica.ensure_linearizable().await {
                return (leader_error(&replica, e), vec![]);
            }
            replica.count_read(false);
        }
        match self.serve(peer, req, payload).await {
            // Lost the lead while answering: the caller retries at the new leader (with the same
            // session and sequence number, so a change that did commit is not made twice).
            (MetaResponse::Error(e), _) if e.code == ErrorCode::NotLeader => (leader_error(&replica, e), vec![]),
            r => r,
        }
    }
}

/// Requests that only read (answered after the leader confirms it still leads).
fn is_read(req: &MetaRequest) -> bool {
    matches!(
        req,
        MetaRequest::Lookup { .. } | MetaRequest::GetAttr { .. } | MetaRequest::ReadDir { .. } | MetaRequest::ReadDirPlus { .. } | MetaRequest::ReadLink { .. } | MetaRequest::GetBlocks { .. } | MetaRequest::GetXattr { .. } | MetaRequest::ListXattr { .. } | MetaRequest::GetLock { .. } | MetaRequest::ListBlocks { .. }
    )
}

/// Reads of one or two records (no scan), answered on the async thread.
fn is_point_read(req: &MetaRequest) -> bool {
    matches!(req, MetaRequest::Lookup { .. } | MetaRequest::GetAttr { .. } | MetaRequest::ReadLink { .. } | MetaRequest::GetXattr { .. })
}

fn leader_error(replica: &raft::Replica, e: WireError) -> MetaResponse {
    match e.code {
        ErrorCode::NotLeader => MetaResponse::NotLeader { leader: replica.leader_addr() },
        _ => MetaResponse::Error(e),
    }
}

impl MetaService {
    async fn serve(self: Arc<Self>, peer: Arc<Identity>, req: MetaRequest, _payload: Vec<u8>) -> (MetaResponse, Vec<u8>) {
        if let MetaRequest::Gc { wait } = req {
            if peer.role != Role::Admin {
                return (denied(peer.role, "start garbage collection"), vec![]);
            }
            let gc = self.gc.clone();
            if wait {
                return (MetaResponse::Gc(gc.pass().await), vec![]);
            }
            tokio::spawn(async move { gc.pass().await });
            return (MetaResponse::Gc(Default::default()), vec![]);
        }
        if let MetaRequest::MetaGroup { change } = req {
            if peer.role != Role::Admin {
                return (denied(peer.role, "change the metadata group"), vec![]);
            }
            let Some(replica) = self.replica.clone() else {
                return (MetaResponse::Error(WireError::new(ErrorCode::InvalidArgument, "this metadata server runs alone (no --peers): there is no group to change")), vec![]);
            };
            let (done, what) = match &change {
                GroupChange::Add { id, addr } => (replica.add_server(&self.ns, *id, addr).await, format!("metadata server {id} ({addr}) added")),
                GroupChange::Remove { id } => (replica.remove_server(&self.ns, *id).await, format!("metadata server {id} removed")),
            };
            return match done {
                Ok(()) => {
                    self.events.note(format!("{what} by {}", peer.name));
                    (MetaResponse::Done, vec![])
                }
                Err(e) => (MetaResponse::Error(e), vec![]),
            };
        }
        if let MetaRequest::WaitLock { ino, session, lock, timeout_ms } = req {
            if !matches!(peer.role, Role::Client | Role::Admin) {
                return (denied(peer.role, "wait for locks"), vec![]);
            }
            return (self.wait_lock(ino, session, lock, timeout_ms).await, vec![]);
        }
        if matches!(req, MetaRequest::BackupStart | MetaRequest::BackupRead { .. } | MetaRequest::BackupEnd { .. }) {
            if peer.role != Role::Admin {
                return (denied(peer.role, "back up the metadata"), vec![]);
            }
            // Checkpoints and file reads block: off the async threads.
            return tokio::task::spawn_blocking(move || self.backup(req))
                .await
                .unwrap_or_else(|e| (MetaResponse::Error(WireError::new(ErrorCode::Internal, e.to_string())), vec![]));
        }
        if let MetaRequest::Mutate { session, seq, op } = &req {
            // Only commits are checked; a retry that was answered gets its reply back, even if
            // its blocks are gone by now.
            let commit = matches!(op, Mutation::CommitBlocks { .. });
            if commit && matches!(peer.role, Role::Client | Role::Admin) && !self.ns.is_answered(*session, *seq) {
                if let Err(e) = self.claims.check(op).await {
                    return (MetaResponse::Error(e), vec![]);
                }
            }
        }
        // A point read is a few microseconds of RocksDB memtable or cache, less than the hand-off
        // to a blocking thread and back that everything else pays (WAL syncs, scans).
        if is_point_read(&req) {
            return (self.answer(&peer, req), vec![]);
        }
        // RocksDB reads and WAL syncs block: keep them off the async threads.
        let resp = tokio::task::spawn_blocking(move || self.answer(&peer, req))
            .await
            .unwrap_or_else(|e| MetaResponse::Error(WireError::new(ErrorCode::Internal, e.to_string())));
        (resp, vec![])
    }
}

pub struct MetaServer {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

/// Open the store, bind, serve until `shutdown`.
pub async fn start(cfg: MetaConfig, shutdown: watch::Receiver<bool>) -> anyhow::Result<MetaServer> {
    cfg.validate()?;
    let certs = NodeCerts::load(&cfg.certs).context("loading certificates")?;
    if certs.identity.role != Role::Meta {
        bail!("certificate in {} has role {}, a metadata server needs role meta", cfg.certs.display(), certs.identity.role);
    }
    let db_dir = cfg.data_dir.join("db");
    if let Some(from) = &cfg.restore {
        backup::restore(from, &db_dir, cfg.replicas).with_context(|| format!("restoring from {}", from.display()))?;
    }
    // Forming a group needs an odd number (once formed, the members are in the log, and
    // --peers may list servers added since).
    if let Some(g) = cfg.raft.as_ref().filter(|g| !g.join && g.peers.len() % 2 == 0) {
        if !db_dir.join("CURRENT").exists() {
            bail!("--peers must name an odd number of servers to form a group: 3 or 5 (a majority must survive the loss of one), or 1 to add the others with tessera meta add ({} given)", g.peers.len());
        }
    }
    // Durable names: a power cut right after the first start must not lose the database.
    tessera_common::durable::create_dir_all(&db_dir).with_context(|| format!("creating {}", db_dir.display()))?;
    let store = store::Store::open(&db_dir).with_context(|| format!("opening {}", db_dir.display()))?;
    let ep = net::server_endpoint(&certs, cfg.listen).with_context(|| format!("listening on {}", cfg.listen))?;
    let addr = ep.local_addr()?;
    // Served from now on: under Raft the other servers must reach this one while the group
    // forms; clients are told to wait until the rest is set up.
    let front = Arc::new(Front { replica: OnceLock::new(), svc: OnceLock::new() });
    let task = tokio::spawn(net::serve(ep.clone(), front.clone(), shutdown.clone()));
    let params = FsParams { block_size: cfg.block_size };
    let (ns, replica) = match &cfg.raft {
        None => (Arc::new(Namespace::open(store, params)?), None),
        Some(g) => {
            let ns = Arc::new(Namespace::unopened(store));
            let replica = raft::Replica::start(g, ns.clone(), ep.clone()).await?;
            let _ = front.replica.set(replica.clone());
            ns.replicate_through(replica.clone());
            formed(&ns, &replica, params).await?;
            (ns, Some(replica))
        }
    };
    let ns2 = ns.clone();
    let members = Arc::new(tokio::task::spawn_blocking(move || Membership::load(ns2, cfg.replicas, cfg.down_after, cfg.out_after)).await??);
    info!(%addr, block_size = ns.params().block_size, replicas = cfg.replicas, raft = ?cfg.raft.as_ref().map(|g| g.id), "metadata server listening");
    // Leader duties run where the leader is (`leads()` is checked by each).
    let leads = {
        let r = replica.clone();
        move || r.as_ref().is_none_or(|r| r.is_leader())
    };
    // One pool of connections to the chunk servers, for GC and for the commit check.
    let chunks = net::ClientPool::new(ep.clone(), 1, Duration::from_secs(60), tessera_common::tls::Role::Chunk);
    let workers = Workers::new();
    let lease_worker = workers.add("lease-expiry");
    let term: gc::Term = {
        let r = replica.clone();
        Arc::new(move || match &r {
            Some(r) => r.leading_term(),
            None => Some(0),
        })
    };
    let gc = Arc::new(gc::Gc::new(ns.clone(), members.clone(), chunks.clone(), cfg.gc_grace, workers.add("gc"), term));
    let members_worker = workers.add("membership");
    let claims = claims::Claims { ns: ns.clone(), members: members.clone(), pool: chunks };
    let leases = Arc::new(leases::Leases::new(cfg.session_lease));
    let (lock_changes, _) = watch::channel(0u64);
    let backups = backup::Backups::new(&cfg.data_dir)?;
    let events = Arc::new(events::Events::default());
    events.note(format!("metadata server started on {addr}"));
    let svc = Arc::new(MetaService {
        ns: ns.clone(),
        members: members.clone(),
        replicas: cfg.replicas,
        write_quorum: cfg.write_quorum.unwrap_or(cfg.replicas / 2 + 1),
        gc: gc.clone(),
        claims,
        leases: leases.clone(),
        lock_changes: lock_changes.clone(),
        backups,
        workers: workers.clone(),
        rpc_metrics: match cfg.metrics {
            Some(at) => {
                let m = Metrics::new();
                let rpc = RpcMetrics::new(&m);
                metrics::register(&m, ns.clone(), members.clone(), leases.clone(), workers.clone(), replica.clone());
                let bound = tessera_common::metrics::serve(at, m).await.with_context(|| format!("--metrics {at}: cannot listen"))?;
                info!(%bound, "metrics on http://{bound}/metrics");
                Some(rpc)
            }
            None => None,
        },
        events: events.clone(),
        replica: replica.clone(),
    });
    if let Some(r) = &replica {
        tokio::spawn(follow_leadership(r.clone(), members.clone(), leases.clone(), events.clone()));
    }
    // Leader duty: expire sessions whose lease ran out, a few times per lease.
    let tick = (cfg.session_lease / 4).min(Duration::from_secs(1));
    let expired = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (lease_events, gc_events) = (events.clone(), events.clone());
    let lease_leads = leads.clone();
    let lease_task = worker::spawn(lease_worker.clone(), Schedule::every(tick), shutdown.clone(), move || {
        let (l, ns, changes, expired, w, ev) = (leases.clone(), ns.clone(), lock_changes.clone(), expired.clone(), lease_worker.clone(), lease_events.clone());
        let leads = lease_leads();
        async move {
            if !leads {
                return Ok(());
            }
            let gone = tokio::task::spawn_blocking(move || {
                // Also a leader duty: finish dropping large files, a bounded command at a time.
                if let Err(e) = ns.reap_pending() {
                    tracing::warn!("dropping unlinked large files: {e}");
                }
                l.expire_overdue(&ns)
            })
            .await?;
            let n = gone.len();
            if n > 0 {
                changes.send_modify(|v| *v += 1);
            }
            for what in gone {
                ev.note(what);
            }
            let total = expired.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed) + n as u64;
            w.set_progress(format!("{total} sessions expired since start"));
            Ok::<_, tokio::task::JoinError>(())
        }
    });
    let gc_replica = replica.clone();
    let gc_task = worker::spawn(gc.worker.clone(), Schedule::every(cfg.gc_interval), shutdown.clone(), move || {
        let (gc, ev, r) = (gc.clone(), gc_events.clone(), gc_replica.clone());
        async move {
            // Only a leader collects (`Gc::collect` asks its term). One cut off from the others
            // may not know yet that it was deposed: it confirms its lead with a majority first.
            if let Some(r) = &r {
                if !r.is_leader() || r.ensure_linearizable().await.is_err() {
                    return Default::default();
                }
            }
            let r = gc.collect().await;
            if r.deleted > 0 {
                ev.note(format!("gc deleted {} unreferenced copies ({} scanned)", r.deleted, r.scanned));
            }
            r
        }
    });
    let ticker = worker::spawn(members_worker.clone(), Schedule::every(Duration::from_secs(1)), shutdown.clone(), move || {
        let (m, w, ev) = (members.clone(), members_worker.clone(), events.clone());
        let leads = leads();
        async move {
            if !leads {
                w.set_progress("following the leader".to_string());
                return Ok(());
            }
            let ring = tokio::task::spawn_blocking(move || {
                let ring = m.refresh()?;
                note_state_changes(&m, &ev);
                Ok::<_, WireError>(ring)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.message)?;
            w.set_progress(format!("ring version {}: {} of {} servers up", ring.version, ring.nodes.iter().filter(|n| n.up).count(), ring.nodes.len()));
            Ok::<_, String>(())
        }
    });
    let _ = front.svc.set(svc);
    let task = tokio::spawn(async move {
        let _ = task.await;
        ticker.abort();
        gc_task.abort();
        lease_task.abort();
        if let Some(r) = replica {
            r.shutdown().await;
        }
    });
    Ok(MetaServer { addr, task })
}

/// Under Raft, until the group has applied `Init`: the leader proposes it (a no-op if the
/// namespace exists), every server waits to see it applied.
async fn formed(ns: &Namespace, replica: &raft::Replica, params: FsParams) -> anyhow::Result<()> {
    let since = std::time::Instant::now();
    let mut said = since;
    while !ns.load_params()? {
        if replica.is_leader() {
            match replica.propose_async(&namespace::Command::new(namespace::Op::Init { params })).await {
                Ok(_) => continue,
                // Not again at once: a refusal that repeats would spin.
                Err(e) => tracing::debug!("proposing init: {e}"),
            }
        }
        if said.elapsed() > Duration::from_secs(5) {
            info!(waited_s = since.elapsed().as_secs(), "waiting for the metadata group to elect a leader (a majority of --peers must run)");
            said = std::time::Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Each time this server becomes leader: what a leader knows only from its own memory starts
/// afresh. Chunk servers count as up until their heartbeats say otherwise (after `--down-after`
/// without one they are down), and every session gets a full lease, as after a restart.
async fn follow_leadership(replica: Arc<raft::Replica>, members: Arc<Membership>, leases: Arc<leases::Leases>, events: Arc<events::Events>) {
    let mut metrics = replica.metrics();
    let mut led = None;
    loop {
        let term = replica.leading_term();
        if term.is_some() && term != led {
            let m = members.clone();
            match tokio::task::spawn_blocking(move || m.reload()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("reloading chunk servers after election: {e}"),
                Err(e) => tracing::warn!("reloading chunk servers after election: {e}"),
            }
            leases.restart();
            events.note(format!("metadata server {} leads (term {})", replica.id(), term.unwrap_or(0)));
        }
        led = term;
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// What the endpoint serves: Raft messages at once, everything else once the server is set up.
struct Front {
    replica: OnceLock<Arc<raft::Replica>>,
    svc: OnceLock<Arc<MetaService>>,
}

impl Service for Front {
    type Req = MetaRequest;
    type Resp = MetaResponse;
    fn metrics(&self) -> Option<&RpcMetrics> {
        self.svc.get().and_then(|s| s.rpc_metrics.as_deref())
    }

    async fn handle(self: Arc<Self>, peer: Arc<Identity>, req: MetaRequest, payload: Vec<u8>) -> (MetaResponse, Vec<u8>) {
        if let MetaRequest::Raft { rpc, to } = req {
            if peer.role != Role::Meta {
                return (denied(peer.role, "send raft messages"), vec![]);
            }
            let Some(r) = self.replica.get() else {
                return (MetaResponse::Error(WireError::new(ErrorCode::InvalidArgument, "this metadata server runs alone (no --peers)")), vec![]);
            };
            return match r.handle(rpc, to, &payload).await {
                Ok(body) => (MetaResponse::Raft, body),
                Err(e) => (MetaResponse::Error(WireError::new(ErrorCode::InvalidArgument, e)), vec![]),
            };
        }
        match self.svc.get() {
            Some(svc) => svc.clone().handle(peer, req, payload).await,
            None => match self.replica.get() {
                Some(r) if !r.is_leader() => (MetaResponse::NotLeader { leader: r.leader_addr() }, vec![]),
                _ => (MetaResponse::Error(WireError::new(ErrorCode::Unavailable, "starting up; try again shortly")), vec![]),
            },
        }
    }
}
