//! Room to write: whether the cluster can still take what this mount buffers. Writes are kept
//! here and uploaded at fsync or later, so without a look ahead a full cluster shows first as a
//! failed fsync — which programs treat as an I/O error (SQLite: "disk I/O error"), where a local
//! file system would have answered the write itself with ENOSPC ("database or disk is full").
//! So a write is refused with ENOSPC while the free space the cluster last reported, less what
//! this mount uploaded since, is below a margin of a few blocks.

use std::sync::Mutex;

#[derive(Default)]
pub struct Room {
    inner: Mutex<Known>,
}

#[derive(Default)]
struct Known {
    /// Free bytes per copy, as the metadata server last reported (`None`: not known yet, or
    /// the server knows no capacity yet, as right after its restart).
    free: Option<u64>,
    /// Bytes this mount uploaded since that report (not in a heartbeat yet).
    spent: u64,
    /// A server refused a block for lack of space since that report.
    refused: bool,
}

impl Room {
    /// A `statfs` answer from the metadata server (`total` 0: it has heard of no capacity yet).
    pub fn reported(&self, total: u64, free: u64) {
        let mut k = self.inner.lock().unwrap();
        *k = Known { free: (total > 0).then_some(free), spent: 0, refused: false };
    }

    /// A block of `len` bytes was stored.
    pub fn spent(&self, len: u64) {
        self.inner.lock().unwrap().spent += len;
    }

    /// A server answered `NoSpace` to a put.
    pub fn refused(&self) {
        self.inner.lock().unwrap().refused = true;
    }

    /// Whether a write may be buffered: `margin` bytes must be left.
    pub fn allows(&self, margin: u64) -> bool {
        let k = self.inner.lock().unwrap();
        match k.free {
            None => !k.refused,
            Some(free) => !k.refused && free.saturating_sub(k.spent) >= margin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_space_allows_writes_until_a_server_refuses_one() {
        let r = Room::default();
        assert!(r.allows(8 << 20));
        r.reported(0, 0);
        assert!(r.allows(8 << 20), "a metadata server that knows no capacity yet is no reason to refuse");
        r.refused();
        assert!(!r.allows(8 << 20));
    }

    #[test]
    fn uploads_since_the_last_report_count_against_it() {
        let r = Room::default();
        r.reported(100 << 20, 20 << 20);
        assert!(r.allows(8 << 20));
        r.spent(10 << 20);
        assert!(r.allows(8 << 20));
        r.spent(4 << 20);
        assert!(!r.allows(8 << 20), "6 MiB left is below the margin");
        r.reported(100 << 20, 40 << 20);
        assert!(r.allows(8 << 20), "a new report starts over (space was freed)");
    }
}
