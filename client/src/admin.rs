//! Admin commands: `status` (and the block scan behind it).

use anyhow::{bail, Context};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tessera_common::metalink::MetaLink;
use tessera_common::net::{self, RpcClient};
use tessera_common::paging::{next_after, Pager};
use tessera_common::proto::chunk::{ChunkRequest, ChunkResponse};
use tessera_common::proto::meta::{ClusterStatus, GroupChange, MetaRequest, MetaResponse, MetaServerStatus, WorkerStatus};
use tessera_common::tls::NodeCerts;
use tessera_common::BlockId;

pub struct Admin {
    link: MetaLink,
    ep: quinn::Endpoint,
    meta: Vec<String>,
}

/// How long `tessera meta add` waits: the new server catches up first (the server gives up
/// after 60 s).
const GROUP_CHANGE: Duration = Duration::from_secs(90);

#[derive(Serialize, Default, Debug)]
pub struct BlockCounts {
    pub total: u64,
    pub under_replicated: u64,
    pub missing: u64,
    pub misplaced: u64,
}

#[derive(Serialize, Debug)]
pub struct NodeJson {
    pub id: String,
    pub zone: String,
    pub addr: String,
    pub state: String,
    pub capacity: u64,
    pub used: u64,
    pub blocks: u64,
    pub last_heartbeat_ms: u64,
    pub draining: bool,
    pub repair_pending: u64,
    /// Bytes it may still take, above its reserve.
    pub free: u64,
    pub full: bool,
}

#[derive(Serialize, Debug)]
pub struct Bytes {
    pub logical: u64,
    pub stored: u64,
    pub dedup_ratio: f64,
}

#[derive(Serialize, Debug)]
pub struct StatusJson {
    pub nodes: Vec<NodeJson>,
    pub blocks: BlockCounts,
    pub bytes: Bytes,
    pub files: u64,
    pub replicas: u32,
    pub ring_version: u64,
    /// `ok`, or `failed: why` when the metadata server stopped accepting changes.
    pub meta_state: String,
    /// Copies the servers found missing in their last scan and have not sent yet.
    pub repair_pending: u64,
    /// Client sessions (mounts).
    pub mounts: Vec<MountJson>,
    /// Background workers: the metadata server's (`node` "meta"), then each chunk server's.
    pub workers: Vec<WorkerJson>,
    /// What happened lately, oldest first, as the metadata server saw it.
    pub events: Vec<EventJson>,
    /// The metadata servers of a Raft group, as the leader sees them (empty when one runs alone).
    pub meta_servers: Vec<MetaServerStatus>,
}

#[derive(Serialize, Debug)]
pub struct EventJson {
    /// `YYYY-MM-DD HH:MM:SS UTC`.
    pub at: String,
    pub at_ms: u64,
    pub what: String,
}

#[derive(Serialize, Debug)]
pub struct WorkerJson {
    /// `meta`, or the chunk server's id.
    pub node: String,
    #[serde(flatten)]
    pub status: WorkerStatus,
}

#[derive(Serialize, Debug)]
pub struct MountJson {
    pub session: u64,
    pub cert: String,
    pub client: String,
    pub addr: String,
    /// When the session was opened (`YYYY-MM-DD HH:MM:SS UTC`).
    pub since: String,
    pub last_heartbeat_ms: u64,
    pub open_files: u64,
    pub orphans: u64,
    pub locks: u64,
}

impl Admin {
    pub fn connect(certs: &NodeCerts, meta: &[String]) -> anyhow::Result<Self> {
        let ep = net::client_endpoint(certs)?;
        Ok(Admin { link: MetaLink::new(ep.clone(), meta, Duration::from_secs(15)), ep, meta: meta.to_vec() })
    }

    /// Add or remove one metadata server (`tessera meta add|remove`).
    pub async fn meta_group(&self, change: GroupChange) -> anyhow::Result<()> {
        let link = MetaLink::new(self.ep.clone(), &self.meta, GROUP_CHANGE);
        match link.call(&MetaRequest::MetaGroup { change }).await.context("metadata server")? {
            MetaResponse::Done => Ok(()),
            MetaResponse::Error(e) => bail!("{}", e.message),
            r => bail!("unexpected reply {r:?}"),
        }
    }

    pub fn ep(&self) -> &quinn::Endpoint {
        &self.ep
    }

    pub async fn call_meta(&self, req: MetaRequest) -> anyhow::Result<MetaResponse> {
        self.call(req).await
    }

    /// Reference counts of every referenced block.
    pub async fn referenced_counts(&self) -> anyhow::Result<Vec<(BlockId, u64)>> {
        const LIMIT: u32 = 65536;
        Pager::new(None, |after| async move {
            match self.call(MetaRequest::ListBlocks { after, limit: LIMIT }).await? {
                MetaResponse::BlockList(l) => {
                    let next = next_after(&l, LIMIT, |x| Some(x.0));
                    Ok((l, next))
                }
                r => bail!("unexpected reply {r:?}"),
            }
        })
        .collect()
        .await
    }

    async fn call(&self, req: MetaRequest) -> anyhow::Result<MetaResponse> {
        Ok(self.call_payload(req).await?.0)
    }

    /// A call whose reply carries a payload; an error reply is an `Err`.
    pub async fn call_payload(&self, req: MetaRequest) -> anyhow::Result<(MetaResponse, Vec<u8>)> {
        match self.link.call_payload(&req).await.context("metadata server")? {
            (MetaResponse::Error(e), _) => bail!("metadata server: {}", e.message),
            r => Ok(r),
        }
    }

    pub async fn gc(&self, wait: bool) -> anyhow::Result<tessera_common::proto::meta::GcReport> {
        match self.call(MetaRequest::Gc { wait }).await? {
            MetaResponse::Gc(r) => Ok(r),
            r => bail!("unexpected reply {r:?}"),
        }
    }

    /// Scrub every server that is up, in parallel; the sum of their reports.
    pub async fn scrub(&self, wait: bool) -> anyhow::Result<tessera_common::proto::chunk::ScrubReport> {
        let status = self.cluster_status().await?;
        let calls = status.nodes.iter().filter(|n| n.state == "up").map(|n| {
            let c = RpcClient::new(self.ep.clone(), &n.addr, 1, Duration::from_secs(24 * 3600), tessera_common::tls::Role::Chunk);
            async move {
                match c.call::<_, ChunkResponse>(&ChunkRequest::Scrub { wait }, &[]).await {
                    Ok((ChunkResponse::Scrubbed(r), _)) => Ok(r),
                    Ok((ChunkResponse::Error(e), _)) => bail!("{}: {}", c.addr(), e.message),
                    Ok((r, _)) => bail!("{}: unexpected reply {r:?}", c.addr()),
                    Err(e) => Err(anyhow::Error::new(e)),
                }
            }
        });
        let mut total = tessera_common::proto::chunk::ScrubReport::default();
        for r in futures::future::join_all(calls).await {
            let r = r?;
            total.checked += r.checked;
            total.corrupt += r.corrupt;
            total.repaired += r.repaired;
            total.bytes += r.bytes;
        }
        Ok(total)
    }

    pub async fn node(&self, node_id: u64, action: tessera_common::proto::meta::NodeAction) -> anyhow::Result<()> {
        match self.call(MetaRequest::NodeAdmin { node_id, action }).await? {
            MetaResponse::Done => Ok(()),
            r => bail!("unexpected reply {r:?}"),
        }
    }

    pub async fn cluster_status(&self) -> anyhow::Result<ClusterStatus> {
        match self.call(MetaRequest::Status).await? {
            MetaResponse::Status(s) => Ok(s),
            r => bail!("unexpected reply {r:?}"),
        }
    }

    /// Every referenced block.
    pub async fn referenced(&self) -> anyhow::Result<Vec<BlockId>> {
        Ok(self.referenced_counts().await?.into_iter().map(|(id, _)| id).collect())
    }

    /// Which up server holds which of `ids`.
    async fn holders(&self, status: &ClusterStatus, ids: &[BlockId]) -> HashMap<BlockId, HashSet<u64>> {
        let mut held: HashMap<BlockId, HashSet<u64>> = HashMap::new();
        for n in status.nodes.iter().filter(|n| n.state == "up") {
            // A server that just died is still "up" for a few seconds: don't wait long on it.
            let c = Arc::new(RpcClient::new(self.ep.clone(), &n.addr, 1, Duration::from_secs(30), tessera_common::tls::Role::Chunk).with_connect_timeout(Duration::from_secs(2)));
            for chunk in ids.chunks(4096) {
                if let Ok((ChunkResponse::Has(flags), _)) = c.call::<_, ChunkResponse>(&ChunkRequest::Has { ids: chunk.to_vec(), touch: false }, &[]).await {
                    for (id, has) in chunk.iter().zip(flags) {
                        if has {
                            held.entry(*id).or_default().insert(n.id);
                        }
                    }
                }
            }
        }
        held
    }

    pub async fn block_counts(&self, status: &ClusterStatus) -> anyhow::Result<BlockCounts> {
        let ids = self.referenced().await?;
        let held = self.holders(status, &ids).await;
        let ring = match self.call(MetaRequest::GetRing).await? {
            MetaResponse::Ring(r) => r,
            r => bail!("unexpected reply {r:?}"),
        };
        let want = (status.replicas as usize).min(ring.nodes.len());
        let mut c = BlockCounts { total: ids.len() as u64, ..Default::default() };
        for id in &ids {
            let h = held.get(id).map(|s| s.len()).unwrap_or(0);
            if h == 0 {
                c.missing += 1;
            } else if h < want {
                c.under_replicated += 1;
            }
            let owners: HashSet<u64> = ring.owners(id, want).iter().map(|n| n.id).collect();
            if held.get(id).is_some_and(|s| s.iter().any(|x| !owners.contains(x))) {
                c.misplaced += 1;
            }
        }
        Ok(c)
    }

    pub async fn status(&self, json: bool) -> anyhow::Result<()> {
        let out = self.report().await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(());
        }
        print_status(&out);
        Ok(())
    }

    /// What `tessera status` (and `tessera web`) shows, block scan included.
    pub async fn report(&self) -> anyhow::Result<StatusJson> {
        let s = self.cluster_status().await?;
        let blocks = self.block_counts(&s).await?;
        let stored: u64 = s.nodes.iter().filter(|n| n.state != "out").map(|n| n.used).sum();
        let out = StatusJson {
            nodes: s
                .nodes
                .iter()
                .map(|n| NodeJson {
                    id: format!("{:016x}", n.id),
                    zone: n.zone.clone(),
                    addr: n.addr.clone(),
                    state: n.state.clone(),
                    capacity: n.capacity,
                    used: n.used,
                    blocks: n.blocks,
                    last_heartbeat_ms: n.last_heartbeat_ms,
                    draining: n.draining,
                    repair_pending: n.repair_pending,
                    free: n.free,
                    full: n.full,
                })
                .collect(),
            blocks,
            bytes: Bytes { logical: s.logical_bytes, stored, dedup_ratio: if stored == 0 { 1.0 } else { s.logical_bytes as f64 * s.replicas as f64 / stored as f64 } },
            files: s.files,
            repair_pending: s.nodes.iter().map(|n| n.repair_pending).sum(),
            replicas: s.replicas,
            ring_version: s.ring_version,
            meta_state: s.meta_state.clone(),
            mounts: s
                .mounts
                .iter()
                .map(|m| MountJson {
                    session: m.session,
                    cert: m.cert.clone(),
                    client: m.client.clone(),
                    addr: m.addr.clone(),
                    since: tessera_common::utc_time(m.since.div_euclid(1_000_000_000)),
                    last_heartbeat_ms: m.last_heartbeat_ms,
                    open_files: m.open_files,
                    orphans: m.orphans,
                    locks: m.locks,
                })
                .collect(),
            workers: s
                .workers
                .iter()
                .map(|w| ("meta".to_string(), w))
                .chain(s.nodes.iter().flat_map(|n| n.workers.iter().map(move |w| (format!("{:016x}", n.id), w))))
                .map(|(node, w)| WorkerJson { node, status: w.clone() })
                .collect(),
            events: s.events.iter().map(|e| EventJson { at: tessera_common::utc_time((e.at_ms / 1000) as i64), at_ms: e.at_ms, what: e.what.clone() }).collect(),
            meta_servers: s.meta_servers.clone(),
        };
        Ok(out)
    }
}

/// The text form of `tessera status`.
fn print_status(out: &StatusJson) {
    println!("{:<16}  {:<10} {:<22} {:<8} {:>10} {:>10} {:>10} {:>8} {:>8}", "ID", "ZONE", "ADDRESS", "STATE", "CAPACITY", "USED", "FREE", "BLOCKS", "LAST HB");
    for n in &out.nodes {
        println!(
            "{:<16}  {:<10} {:<22} {:<8} {:>10} {:>10} {:>10} {:>8} {:>7.1}s",
            n.id,
            n.zone,
            n.addr,
            match (n.draining && n.state != "out", n.full && n.state == "up") {
                (true, _) => format!("{}/drain", n.state),
                (false, true) => "up/full".to_string(),
                (false, false) => n.state.clone(),
            },
            human(n.capacity),
            human(n.used),
            human(n.free),
            n.blocks,
            n.last_heartbeat_ms as f64 / 1000.0
        );
    }
    println!();
    println!("metadata: {}", out.meta_state);
    if !out.meta_servers.is_empty() {
        println!("{:<4} {:<22} {:<9} {:>6} {:>10} {:>10} {:>10} {:>6}", "ID", "ADDRESS", "ROLE", "TERM", "LOG", "COMMIT", "APPLIED", "LAG");
        for m in &out.meta_servers {
            let applied = m.applied_index.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
            println!("{:<4} {:<22} {:<9} {:>6} {:>10} {:>10} {:>10} {:>6}", m.id, m.addr, m.role, m.term, m.log_index, m.commit_index, applied, m.lag);
        }
    }
    println!("files: {}   replicas: {}   ring version: {}", out.files, out.replicas, out.ring_version);
    println!(
        "bytes: {} logical, {} stored ({} copies; dedup ratio {:.2})",
        human(out.bytes.logical),
        human(out.bytes.stored),
        out.replicas,
        out.bytes.dedup_ratio
    );
    println!(
        "blocks: {} total, {} under-replicated, {} missing, {} misplaced",
        out.blocks.total, out.blocks.under_replicated, out.blocks.missing, out.blocks.misplaced
    );
    println!("repair: {} copies waiting to be sent", out.repair_pending);
    println!();
    println!("{:<8} {:<12} {:<12} {:<22} {:<20} {:>8} {:>6} {:>8} {:>6}", "SESSION", "CERT", "CLIENT", "ADDRESS", "SINCE", "LAST HB", "OPEN", "ORPHANS", "LOCKS");
    for m in &out.mounts {
        println!(
            "{:<8} {:<12} {:<12} {:<22} {:<20} {:>7.1}s {:>6} {:>8} {:>6}",
            m.session,
            m.cert,
            m.client,
            if m.addr.is_empty() { "-" } else { &m.addr },
            m.since,
            m.last_heartbeat_ms as f64 / 1000.0,
            m.open_files,
            m.orphans,
            m.locks
        );
    }
    println!();
    print_workers(&out.workers);
    println!();
    println!("recent events (the last 10 of {}):", out.events.len());
    for e in out.events.iter().rev().take(10).rev() {
        println!("  {}  {}", e.at, e.what);
    }
}

/// The workers table of `tessera status`: when each last ran, how long, and what it says.
fn print_workers(workers: &[WorkerJson]) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    println!("{:<16}  {:<12} {:<8} {:>7} {:>7} {:>9} {:>8}  {}", "NODE", "WORKER", "STATE", "PASSES", "ERRORS", "LAST RUN", "TOOK", "PROGRESS");
    for w in workers {
        let s = &w.status;
        let last = if s.last_start_ms == 0 { "-".to_string() } else { format!("{:.1}s ago", now.saturating_sub(s.last_start_ms) as f64 / 1000.0) };
        println!(
            "{:<16}  {:<12} {:<8} {:>7} {:>7} {:>9} {:>7.1}s  {}",
            w.node,
            s.name,
            s.state,
            s.passes,
            s.errors,
            last,
            s.last_duration_ms as f64 / 1000.0,
            if s.progress.is_empty() { "-" } else { &s.progress }
        );
        if let (Some(e), true) = (&s.last_error, s.consecutive_errors > 0) {
            println!("{:<16}  {:<12} last error ({} in a row): {e}", "", "", s.consecutive_errors);
        }
    }
}

pub fn human(b: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}
