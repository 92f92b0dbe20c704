//! The client's session with the metadata service: typed calls, mutations numbered per
//! session so a retry after a timeout is answered rather than applied twice. The session is
//! bound to this mount's certificate; if the server no longer knows it (`UnknownSession`), the
//! mutation was not applied, so a new session is opened and the mutation sent once more.

use crate::error::{FsError, FsResult};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tessera_common::metalink::MetaLink;
use tessera_common::proto::meta::*;
use tessera_common::ring::Ring;
use tessera_common::ErrorCode;

pub struct MetaClient {
    link: MetaLink,
    name: String,
    session: AtomicU64,
    /// Held while a new session is opened, so concurrent callers open one, not one each.
    renewing: tokio::sync::Mutex<()>,
    /// Signalled when a new session replaced an expired one: the open files must be
    /// registered again (`Fs::reopen_all`).
    pub renewed: tokio::sync::Notify,
    seq: AtomicU64,
    pub block_size: u32,
    pub replicas: u32,
    pub write_quorum: u32,
    pub first_ring: Ring,
}

/// How long calls keep retrying an unreachable metadata service.
const OUTAGE: Duration = Duration::from_secs(15);

fn unexpected(r: MetaResponse) -> FsError {
    FsError::Io(format!("unexpected reply from the metadata server: {r:?}"))
}

impl MetaClient {
    /// Open a session; fails with a clear reason when the metadata server cannot be reached.
    pub async fn connect(ep: quinn::Endpoint, addrs: &[String], name: &str) -> FsResult<Self> {
        let link = MetaLink::new(ep, addrs, Duration::from_secs(30)).retrying_unavailable();
        match link.call(&MetaRequest::OpenSession { client: name.to_string() }).await? {
            MetaResponse::Session { session, block_size, replicas, write_quorum, ring } => Ok(MetaClient {
                link,
                name: name.to_string(),
                session: AtomicU64::new(session),
                renewing: Default::default(),
                renewed: Default::default(),
                seq: AtomicU64::new(1),
                block_size,
                replicas,
                write_quorum,
                first_ring: ring,
            }),
            MetaResponse::Error(e) => Err(e.into()),
            r => Err(unexpected(r)),
        }
    }

    /// Replace the session `old` that the server does not know (unless another caller did).
    async fn renew(&self, old: u64) -> FsResult<()> {
        let _one = self.renewing.lock().await;
        if self.session.load(Ordering::Acquire) != old {
            return Ok(());
        }
        match self.call(MetaRequest::OpenSession { client: self.name.clone() }).await? {
            MetaResponse::Session { session, .. } => {
                tracing::warn!(old, session, "the metadata server did not know our session (expired?); opened a new one");
                self.session.store(session, Ordering::Release);
                self.renewed.notify_one();
                Ok(())
            }
            r => Err(unexpected(r)),
        }
    }

    pub fn session(&self) -> u64 {
        self.session.load(Ordering::Acquire)
    }

    /// Renew the session's lease; returns how long to wait before the next heartbeat. A
    /// session the server no longer knows is replaced.
    pub async fn heartbeat(&self) -> FsResult<Duration> {
        let session = self.session();
        match self.call(MetaRequest::SessionHeartbeat { session }).await {
            Ok(MetaResponse::Lease { lease_ms }) => Ok((Duration::from_millis(lease_ms) / 4).clamp(Duration::from_millis(200), Duration::from_secs(10))),
            Err(FsError::Wire(e)) if e.code == ErrorCode::UnknownSession => {
                self.renew(session).await?;
                Ok(Duration::from_millis(200))
            }
            Ok(r) => Err(unexpected(r)),
            Err(e) => Err(e),
        }
    }

    /// End the session (a clean unmount): its locks and open files are released at once
    /// instead of at the lease's end.
    pub async fn close_session(&self) -> FsResult<()> {
        self.call(MetaRequest::CloseSession { session: self.session() }).await.map(|_| ())
    }

    /// Call the metadata service. While it cannot be reached (a restart, a failover), retry
    /// with backoff for up to `OUTAGE` before failing with EIO; mutations keep their sequence
    /// number across retries, so a retry is answered, not applied twice.
    pub async fn call(&self, req: MetaRequest) -> FsResult<MetaResponse> {
        let start = std::time::Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            let t = std::time::Instant::now();
            let r = self.link.call(&req).await;
            tracing::trace!(elapsed_us = t.elapsed().as_micros() as u64, ?req, "metadata call");
            match r {
                Ok(MetaResponse::Error(e)) => return Err(e.into()),
                Ok(r) => return Ok(r),
                Err(e) if start.elapsed() + pause < OUTAGE => {
                    tracing::warn!("metadata server unreachable, retrying: {e}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Apply a mutation, once.
    pub async fn mutate(&self, op: Mutation) -> FsResult<MetaResponse> {
        let session = self.session.load(Ordering::Acquire);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        match self.call(MetaRequest::Mutate { session, seq, op: op.clone() }).await {
            // Refused before anything was applied: safe to send again under a new session.
            Err(FsError::Wire(e)) if e.code == ErrorCode::UnknownSession => {
                self.renew(session).await?;
                let seq = self.seq.fetch_add(1, Ordering::Relaxed);
                self.call(MetaRequest::Mutate { session: self.session.load(Ordering::Acquire), seq, op }).await
            }
            r => r,
        }
    }

    pub async fn attr_of(&self, req: MetaRequest) -> FsResult<Attr> {
        match self.call(req).await? {
            MetaResponse::Attr(a) => Ok(a),
            r => Err(unexpected(r)),
        }
    }

    pub async fn mutate_attr(&self, op: Mutation) -> FsResult<Attr> {
        match self.mutate(op).await? {
            MetaResponse::Attr(a) => Ok(a),
            r => Err(unexpected(r)),
        }
    }

    pub async fn mutate_done(&self, op: Mutation) -> FsResult<()> {
        match self.mutate(op).await? {
            MetaResponse::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    /// `Unlink` and `Rename`: the inode kept as an orphan, if one was.
    pub async fn mutate_unlinked(&self, op: Mutation) -> FsResult<Option<u64>> {
        match self.mutate(op).await? {
            MetaResponse::Unlinked { orphan } => Ok(orphan),
            r => Err(unexpected(r)),
        }
    }

    /// The whole block map of a file, paged, with its inline data and patches.
    #[allow(clippy::type_complexity)]
    pub async fn block_map(&self, ino: u64) -> FsResult<(u64, Vec<(u64, BlockRef)>, Option<Vec<u8>>, Vec<(u64, Vec<Patch>)>)> {
        let mut out = Vec::new();
        let mut all_patches = Vec::new();
        let mut first = 0;
        let mut data = None;
        loop {
            match self.call(MetaRequest::GetBlocks { ino, first, count: 16384 }).await? {
                MetaResponse::Blocks { size, blocks, inline, patches } => {
                    let n = blocks.len();
                    if let Some((last, _)) = blocks.last() {
                        first = last + 1;
                    }
                    out.extend(blocks);
                    all_patches.extend(patches);
                    data = data.or(inline);
                    if n < 16384 {
                        return Ok((size, out, data, all_patches));
                    }
                }
                r => return Err(unexpected(r)),
            }
        }
    }

    /// The block-map entries of `ino` with index in `[first, first + count)`, `count` at most
    /// 16384 (one request).
    pub async fn block_range(&self, ino: u64, first: u64, count: u64) -> FsResult<Vec<(u64, BlockRef)>> {
        match self.call(MetaRequest::GetBlocks { ino, first, count }).await? {
            MetaResponse::Blocks { blocks, .. } => Ok(blocks.into_iter().filter(|(i, _)| *i < first + count).collect()),
            r => Err(unexpected(r)),
        }
    }

    pub async fn ring(&self) -> FsResult<Ring> {
        match self.call(MetaRequest::GetRing).await? {
            MetaResponse::Ring(r) => Ok(r),
            r => Err(unexpected(r)),
        }
    }
}
