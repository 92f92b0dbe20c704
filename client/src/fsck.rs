//! `tessera fsck`: audit the reference counts on the metadata server (`AuditRefs`), walk the
//! namespace and check that every referenced block has N reachable, correct copies; report
//! orphan blocks and dangling references; optionally repair.

use crate::admin::Admin;
use anyhow::bail;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IsTerminal;
use std::time::Duration;
use tessera_common::net::RpcClient;
use tessera_common::paging::{next_after, Pager};
use tessera_common::proto::chunk::{ChunkRequest, ChunkResponse};
use tessera_common::proto::meta::{AuditReport, BlockRef, FileKind, MetaRequest, MetaResponse};
use tessera_common::{BlockId, ROOT_INO};

#[derive(Serialize, Default, Debug)]
pub struct FsckReport {
    pub files: u64,
    pub directories: u64,
    /// Distinct blocks referenced by files.
    pub blocks: u64,
    pub healthy: u64,
    pub under_replicated: u64,
    pub missing: u64,
    /// Copies whose bytes did not match their id (with --deep).
    pub corrupt_copies: u64,
    /// Blocks stored on servers that no file references (garbage collection removes them).
    pub orphans: u64,
    /// Blocks whose stored reference count is missing or wrong, plus block-map entries whose
    /// inode does not exist (from `refs`).
    pub dangling_refs: u64,
    /// The metadata server's audit of reference counts, block maps and unlinked inodes.
    pub refs: AuditReport,
    pub repaired: u64,
    /// Paths of files with a missing block (at most 100).
    pub damaged_files: Vec<String>,
}

impl FsckReport {
    /// Nothing wrong was found, or (with --repair) everything found was repaired: a corrupt
    /// copy makes its block under-replicated, so repairing that block replaces the copy.
    pub fn ok(&self, repair: bool) -> bool {
        self.missing == 0 && self.dangling_refs == 0 && self.refs.clean() && self.under_replicated == self.repaired && (self.corrupt_copies == 0 || repair)
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::stderr());
        pb.set_style(ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({eta})").unwrap().progress_chars("=> "));
        pb.set_message(what.to_string());
    } else {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb
}

/// Block maps asked for at once while walking the namespace.
const BLOCK_MAPS_IN_FLIGHT: usize = 32;

impl Admin {
    async fn meta(&self, req: MetaRequest) -> anyhow::Result<MetaResponse> {
        self.call_meta(req).await
    }

    /// The block map of file `ino`, by block index.
    async fn file_blocks(&self, ino: u64) -> anyhow::Result<Vec<(u64, BlockRef)>> {
        const COUNT: u64 = 16384;
        Pager::new(0, |first| async move {
            match self.meta(MetaRequest::GetBlocks { ino, first, count: COUNT }).await? {
                MetaResponse::Blocks { blocks, .. } => {
                    let next = next_after(&blocks, COUNT, |(idx, _)| idx + 1);
                    Ok((blocks, next))
                }
                r => bail!("unexpected reply {r:?}"),
            }
        })
        .collect()
        .await
    }

    /// Every file's blocks: block id → paths using it, with the number of references.
    async fn walk(&self, report: &mut FsckReport) -> anyhow::Result<HashMap<BlockId, (u64, Vec<String>)>> {
        let mut refs: HashMap<BlockId, (u64, Vec<String>)> = HashMap::new();
        let mut dirs = vec![(ROOT_INO, String::new())];
        let mut seen_files: HashSet<u64> = HashSet::new();
        let pb = bar(0, "namespace");
        while let Some((dir, path)) = dirs.pop() {
            report.directories += 1;
            let mut pages = Pager::new(0, |after| async move {
                match self.meta(MetaRequest::ReadDir { ino: dir, after, limit: 1024 }).await? {
                    MetaResponse::Dir { entries, done } => {
                        let next = entries.last().filter(|_| !done).map(|e| e.cookie);
                        Ok((entries, next))
                    }
                    r => bail!("unexpected reply {r:?}"),
                }
            });
            while let Some(entries) = pages.next().await {
                let mut files = Vec::new();
                for e in entries? {
                    let p = format!("{path}/{}", String::from_utf8_lossy(&e.name));
                    match e.kind {
                        FileKind::Dir => dirs.push((e.ino, p)),
                        FileKind::File if seen_files.insert(e.ino) => files.push((e.ino, p)),
                        _ => {}
                    }
                }
                report.files += files.len() as u64;
                pb.inc_length(files.len() as u64);
                // The page's block maps, many at once: one after the other, a round trip per
                // file made a million files take minutes.
                let mut maps = futures::stream::iter(files).map(|(ino, p)| async move { self.file_blocks(ino).await.map(|m| (m, p)) }).buffer_unordered(BLOCK_MAPS_IN_FLIGHT);
                while let Some(r) = maps.next().await {
                    let (map, p) = r?;
                    for (_, b) in map {
                        let r = refs.entry(b.id).or_default();
                        r.0 += 1;
                        if r.1.len() < 3 {
                            r.1.push(p.clone());
                        }
                    }
                    pb.inc(1);
                }
            }
        }
        pb.finish_and_clear();
        Ok(refs)
    }

    pub async fn fsck(&self, deep: bool, repair: bool) -> anyhow::Result<FsckReport> {
        let mut report = FsckReport::default();
        let status = self.cluster_status().await?;
        let ring = match self.meta(MetaRequest::GetRing).await? {
            MetaResponse::Ring(r) => r,
            r => bail!("unexpected reply {r:?}"),
        };
        // Reference counts must match the block maps: counted by the server on one snapshot (a
        // walk from here would race with writers and miss orphans, which have no name).
        report.refs = match self.meta(MetaRequest::AuditRefs).await? {
            MetaResponse::Audit(a) => a,
            r => bail!("unexpected reply {r:?}"),
        };
        report.dangling_refs = report.refs.refcount_mismatches + report.refs.dangling_entries;
        let refs = self.walk(&mut report).await?;
        report.blocks = refs.len() as u64;

        // Which server holds what.
        let up: Vec<_> = status.nodes.iter().filter(|n| n.state == "up").collect();
        let mut holders: HashMap<BlockId, Vec<u64>> = HashMap::new();
        let mut stored: HashSet<BlockId> = HashSet::new();
        let clients: BTreeMap<u64, RpcClient> = up.iter().map(|n| (n.id, RpcClient::new(self.ep().clone(), &n.addr, 1, Duration::from_secs(60), tessera_common::tls::Role::Chunk))).collect();
        let pb = bar(up.len() as u64, "servers");
        const LIST_LIMIT: u32 = 65536;
        for (node, c) in &clients {
            let mut pages = Pager::new(None, |after| async move {
                match c.call::<_, ChunkResponse>(&ChunkRequest::List { after, limit: LIST_LIMIT }, &[]).await {
                    Ok((ChunkResponse::List(l), _)) => {
                        let next = next_after(&l, LIST_LIMIT, |x| Some(x.0));
                        Ok((l, next))
                    }
                    other => bail!("{}: cannot list blocks: {other:?}", c.addr()),
                }
            });
            while let Some(list) = pages.next().await {
                for (id, _) in list? {
                    stored.insert(id);
                    holders.entry(id).or_default().push(*node);
                }
            }
            pb.inc(1);
        }
        pb.finish_and_clear();
        report.orphans = stored.iter().filter(|id| !refs.contains_key(id)).count() as u64;

        let want = (ring.replicas as usize).min(ring.nodes.len()).max(1);
        let pb = bar(refs.len() as u64, "blocks");
        for (id, (_, paths)) in &refs {
            pb.inc(1);
            let mut good: Vec<u64> = holders.get(id).cloned().unwrap_or_default();
            if deep {
                let mut ok = Vec::new();
                for node in &good {
                    match clients[node].call::<_, ChunkResponse>(&ChunkRequest::Get { id: *id }, &[]).await {
                        Ok((ChunkResponse::Block, data)) if id.verify(&data) => ok.push(*node),
                        _ => {
                            report.corrupt_copies += 1;
                            // The server checks the copy, quarantines it and fetches a good one.
                            let _ = clients[node].call::<_, ChunkResponse>(&ChunkRequest::Report { id: *id }, &[]).await;
                        }
                    }
                }
                good = ok;
            }
            if good.is_empty() {
                report.missing += 1;
                for p in paths {
                    if report.damaged_files.len() < 100 && !report.damaged_files.contains(p) {
                        report.damaged_files.push(p.clone());
                    }
                }
                continue;
            }
            if good.len() >= want {
                report.healthy += 1;
                continue;
            }
            report.under_replicated += 1;
            if repair {
                // Copy from a good holder to the servers the ring names that lack it.
                let src = &clients[&good[0]];
                let Ok((ChunkResponse::Block, data)) = src.call::<_, ChunkResponse>(&ChunkRequest::Get { id: *id }, &[]).await else { continue };
                if !id.verify(&data) {
                    continue;
                }
                let mut have = good.len();
                for t in ring.targets(id, ring.nodes.len()) {
                    if have >= want {
                        break;
                    }
                    if good.contains(&t.id) {
                        continue;
                    }
                    let dst = RpcClient::new(self.ep().clone(), &t.addr, 1, Duration::from_secs(60), tessera_common::tls::Role::Chunk);
                    if let Ok((ChunkResponse::Stored { .. }, _)) = dst.call::<_, ChunkResponse>(&ChunkRequest::Put { id: *id, age: Some(0) }, &data).await {
                        have += 1;
                    }
                }
                if have >= want {
                    report.repaired += 1;
                }
            }
        }
        pb.finish_and_clear();
        Ok(report)
    }
}

pub fn print(r: &FsckReport, repair: bool) {
    println!("fsck: {} files, {} directories, {} blocks referenced", r.files, r.directories, r.blocks);
    println!(
        "fsck: {} healthy, {} under-replicated, {} missing, {} corrupt copies, {} orphans, {} dangling references",
        r.healthy, r.under_replicated, r.missing, r.corrupt_copies, r.orphans, r.dangling_refs
    );
    let a = &r.refs;
    println!(
        "fsck: references: {} block-map entries, {} blocks; {} wrong reference counts, {} entries without an inode, {} leaked inodes, {} stale orphan records, {} inodes' attributes left without the inode; {} files open after unlink",
        a.entries, a.blocks, a.refcount_mismatches, a.dangling_entries, a.unlinked_not_orphans, a.stale_orphans, a.dangling_xattrs, a.orphans
    );
    for p in &a.problems {
        println!("fsck: {p}");
    }
    if r.repaired > 0 {
        println!("fsck: {} blocks repaired", r.repaired);
    }
    for p in &r.damaged_files {
        println!("fsck: damaged file {p}");
    }
    let found = r.under_replicated + r.missing + r.corrupt_copies + r.dangling_refs > 0 || !a.clean();
    println!("fsck: {}", if !found { "clean" } else if r.ok(repair) { "problems found and repaired" } else { "PROBLEMS FOUND" });
}
