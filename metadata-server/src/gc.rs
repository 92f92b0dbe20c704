//! Garbage collection of blocks.
//!
//! A pass lists the blocks of every server that is up, and deletes those that no file
//! references and that have not been put or found by a dedup check for the grace period. The
//! chunk server re-checks the idle time when it deletes, atomically with its put/has path, so a
//! block a client has just put or found, and is about to commit, is never collected under it.
//! This also reclaims blocks of uploads that were never committed (a client that crashed).

use crate::membership::Membership;
use crate::namespace::Namespace;
use std::sync::Arc;
use std::time::Duration;
use tessera_common::net::ClientPool;
use tessera_common::paging::{next_after, Pager};
use tessera_common::proto::chunk::{ChunkRequest, ChunkResponse};
use tessera_common::proto::meta::GcReport;
use tessera_common::worker::Worker;
use tessera_common::BlockId;
use tracing::{info, warn};

/// Blocks per `List` page.
const LIST_LIMIT: u32 = 65536;

pub struct Gc {
    pub ns: Arc<Namespace>,
    pub members: Arc<Membership>,
    pub grace: Duration,
    clients: ClientPool,
    running: tokio::sync::Mutex<()>,
    /// The `gc` worker: periodic passes and those asked for are counted there.
    pub worker: Arc<Worker>,
    /// This server's term while it leads (0 when it runs alone), sent with each delete so that
    /// chunk servers refuse a deposed leader's; `None` when it does not lead.
    pub term: Term,
}

pub type Term = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

impl Gc {
    pub fn new(ns: Arc<Namespace>, members: Arc<Membership>, clients: ClientPool, grace: Duration, worker: Arc<Worker>, term: Term) -> Self {
        Gc { ns, members, grace, clients, running: Default::default(), worker, term }
    }

    /// A pass asked for (`tessera gc`), counted as one of the worker's.
    pub async fn pass(&self) -> GcReport {
        self.worker.run(self.collect()).await
    }

    /// One pass; the periodic worker runs this (see `lib.rs`), others call [`Gc::pass`].
    pub async fn collect(&self) -> GcReport {
        let _one = self.running.lock().await;
        let mut report = GcReport::default();
        let Some(term) = (self.term)() else { return report };
        let grace = self.grace.as_secs();
        for node in self.members.status().into_iter().filter(|n| n.state == "up") {
            let c = &self.clients.get(&node.addr);
            let mut pages = Pager::new(None, |after| async move {
                match c.call::<_, ChunkResponse>(&ChunkRequest::List { after, limit: LIST_LIMIT }, &[]).await {
                    Ok((ChunkResponse::List(l), _)) => {
                        let next = next_after(&l, LIST_LIMIT, |(id, _)| Some(*id));
                        Ok((l, next))
                    }
                    other => Err(other),
                }
            });
            while let Some(page) = pages.next().await {
                let list = match page {
                    Ok(l) => l,
                    Err(other) => {
                        warn!(server = %node.addr, "gc: cannot list blocks: {other:?}");
                        report.unreachable += 1;
                        break;
                    }
                };
                report.scanned += list.len() as u64;
                self.worker.set_progress(format!("listing {}: {} copies scanned, {} deleted", node.addr, report.scanned, report.deleted));
                let ns = self.ns.clone();
                let idle: Vec<BlockId> = list.into_iter().filter(|(_, idle)| *idle >= grace).map(|(id, _)| id).collect();
                let garbage: Vec<BlockId> = match tokio::task::spawn_blocking(move || idle.into_iter().filter(|id| !ns.is_referenced(id).unwrap_or(true)).collect()).await {
                    Ok(g) => g,
                    Err(_) => break,
                };
                for chunk in garbage.chunks(4096) {
                    match c.call::<_, ChunkResponse>(&ChunkRequest::Delete { ids: chunk.to_vec(), min_idle_secs: grace, term }, &[]).await {
                        Ok((ChunkResponse::Deleted { count }, _)) => report.deleted += count,
                        other => warn!(server = %node.addr, "gc: delete failed: {other:?}"),
                    }
                }
            }
        }
        self.worker.set_progress(format!("last pass: {} copies scanned, {} deleted, {} servers unreachable", report.scanned, report.deleted, report.unreachable));
        if report.deleted > 0 {
            info!(deleted = report.deleted, scanned = report.scanned, "gc pass done");
        }
        report
    }
}
