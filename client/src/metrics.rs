//! What a mount counts, shown by `tessera mount --metrics ADDR` (docs/metrics.md): FUSE calls
//! by operation and their latency, bytes read and written, the block cache, uploads (and the
//! ones deduplication saved), and whether the kernel kept a file's pages at open.

use prometheus_client::metrics::counter::Counter;
use tessera_common::metrics::{Metrics, Ops};

#[derive(Default)]
pub struct MountMetrics {
    pub fuse: Ops,
    pub read_bytes: Counter,
    pub written_bytes: Counter,
    pub block_cache_hits: Counter,
    pub block_fetches: Counter,
    pub fetched_bytes: Counter,
    pub block_puts: Counter,
    pub put_bytes: Counter,
    pub copies_deduplicated: Counter,
    pub pages_kept: Counter,
    pub pages_dropped: Counter,
}

impl MountMetrics {
    pub fn register(&self, m: &Metrics) {
        self.fuse.register(m, "fuse", "FUSE calls");
        let c = |name: &str, help: &str, c: &Counter| m.register(name, help, c.clone());
        c("fuse_read_bytes", "Bytes applications read through the mount", &self.read_bytes);
        c("fuse_written_bytes", "Bytes applications wrote through the mount", &self.written_bytes);
        c("client_block_cache_hits", "Block reads answered from the mount's block cache", &self.block_cache_hits);
        c("client_block_fetches", "Blocks fetched from chunk servers (verified against their BLAKE3 id)", &self.block_fetches);
        c("client_fetched_bytes", "Bytes of blocks fetched from chunk servers", &self.fetched_bytes);
        c("client_block_puts", "Blocks uploaded (each to every replica)", &self.block_puts);
        c("client_put_bytes", "Bytes of blocks uploaded, counted once per block", &self.put_bytes);
        c("client_copies_deduplicated", "Copies not sent because the chunk server already had the block", &self.copies_deduplicated);
        c("client_page_cache_kept", "Opens where the kernel kept the file's cached pages (content unchanged)", &self.pages_kept);
        c("client_page_cache_dropped", "Opens where the file's cached pages were dropped (content changed or unknown)", &self.pages_dropped);
    }
}
