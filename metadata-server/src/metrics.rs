//! What the metadata server shows on `--metrics` (docs/metrics.md), besides the requests and
//! connections that `common::net` counts: the chunk servers by state and fill, live sessions,
//! the store's writes and WAL syncs, RocksDB's write stalls, and the background workers.

use crate::leases::Leases;
use crate::membership::Membership;
use crate::namespace::Namespace;
use crate::raft::Replica;
use std::sync::Arc;
use tessera_common::metrics::Metrics;
use tessera_common::worker::Workers;

pub fn register(m: &Metrics, ns: Arc<Namespace>, members: Arc<Membership>, leases: Arc<Leases>, workers: Arc<Workers>, replica: Option<Arc<Replica>>) {
    m.register_scrape(move |s| {
        let nodes = members.status();
        for state in ["up", "down", "out"] {
            let n = nodes.iter().filter(|n| n.state == state).count();
            s.gauge("meta_chunk_servers", "Chunk servers by state (up, down, out)", &[("state", state)], n as i64);
        }
        let full = nodes.iter().filter(|n| n.full).count();
        s.gauge("meta_chunk_servers_full", "Chunk servers below their space reserve", &[], full as i64);
        s.gauge("meta_cluster_capacity_bytes", "Capacity of the chunk servers that are not out", &[], nodes.iter().filter(|n| n.state != "out").map(|n| n.capacity).sum::<u64>() as i64);
        s.gauge("meta_cluster_used_bytes", "Bytes stored on the chunk servers (every copy)", &[], nodes.iter().map(|n| n.used).sum::<u64>() as i64);
        s.gauge("meta_cluster_blocks", "Block copies on the chunk servers", &[], nodes.iter().map(|n| n.blocks).sum::<u64>() as i64);
        s.gauge("meta_repair_pending_copies", "Copies the chunk servers found missing and have not yet sent", &[], nodes.iter().map(|n| n.repair_pending).sum::<u64>() as i64);
        s.gauge("meta_sessions_live", "Client sessions (mounts) heard from within their lease", &[], leases.live() as i64);
        let st = ns.store().stats();
        s.counter("meta_store_writes", "Batches written to RocksDB", &[], st.writes);
        s.counter("meta_store_wal_syncs", "WAL syncs (one covers every batch written before it)", &[], st.wal_syncs);
        s.gauge("meta_store_failed", "1 once a WAL sync failed (the server refuses changes until restarted)", &[], st.failed as i64);
        s.gauge("meta_rocksdb_write_stopped", "1 while RocksDB stops writes (compaction debt)", &[], st.write_stopped as i64);
        s.gauge("meta_rocksdb_delayed_write_rate_bytes", "The rate RocksDB slows writes to, 0 when not slowed", &[], st.delayed_write_rate as i64);
        s.gauge("meta_rocksdb_live_data_bytes", "RocksDB's estimate of its live data", &[], st.live_data_bytes as i64);
        s.gauge("meta_rocksdb_running_compactions", "RocksDB compactions under way", &[], st.running_compactions as i64);
        if let Some(r) = &replica {
            let (lease, confirmed) = r.reads();
            s.counter("meta_reads", "Reads answered by the Raft leader, by how it knew it still led: from its lease, or confirmed by the followers", &[("how", "lease")], lease);
            s.counter("meta_reads", "Reads answered by the Raft leader, by how it knew it still led: from its lease, or confirmed by the followers", &[("how", "confirmed")], confirmed);
        }
        workers.sample(s);
    });
}
