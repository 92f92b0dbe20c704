//! Room to write: whether the cluster can still take what this mount buffers. Writes are kept
//! here and uploaded at fsync or later, so without a look ahead a full cluster shows first as a
//! failed fsync — which programs treat as an I/O error (SQLite: "disk I/O error"), where a local
//! file system would have answered the write itself with ENOSPC ("database or disk is full").
//! So a write is refused with ENOSPC while less than a margin of a few blocks is left, by
//! either of two views:
//! - the free space the metadata server last reported (`statfs`, asked every second), less
//!   what this mount uploaded since;
//! - each server's own answer to this mount's last put to it. Reports trail the servers by a
//!   heartbeat (a second), in which a busy writer fills a small disk; a put's answer is
//!   current. Answers older than `FRESH` are dropped: by then reports cover them, and a server
//!   that was short but freed space (GC) must not stay short for want of a put.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a server's answer to a put outranks the reports (heartbeat 1 s + statfs poll 1 s,
/// with slack).
const FRESH: Duration = Duration::from_secs(3);

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
    /// Per server address: the free space its last answer to a put named, and when.
    servers: HashMap<String, (u64, Instant)>,
}

impl Room {
    /// A `statfs` answer from the metadata server (`total` 0: it has heard of no capacity yet).
    pub fn reported(&self, total: u64, free: u64) {
        let mut k = self.inner.lock().unwrap();
        k.free = (total > 0).then_some(free);
        k.spent = 0;
        k.refused = false;
        k.servers.retain(|_, (_, at)| at.elapsed() < FRESH);
    }

    /// A block of `len` bytes was stored.
    pub fn spent(&self, len: u64) {
        self.inner.lock().unwrap().spent += len;
    }

    /// Server `addr` stored a block and has `free` bytes left above its reserve.
    pub fn server_free(&self, addr: &str, free: u64) {
        self.inner.lock().unwrap().servers.insert(addr.to_string(), (free, Instant::now()));
    }

    /// A server answered `NoSpace` to a put.
    pub fn refused(&self) {
        self.inner.lock().unwrap().refused = true;
    }

    /// Whether a write may be buffered: `margin` bytes must be left, and at least `replicas`
    /// (or all) of the servers that take blocks (`takers`: up and not full in the ring) must
    /// not have answered a put lately with less than `margin` left.
    /// Called for every `write`, so the takers come as an iterator (no list is built).
    pub fn allows<'a>(&self, margin: u64, takers: impl Iterator<Item = &'a str>, replicas: usize) -> bool {
        let k = self.inner.lock().unwrap();
        if k.refused || k.free.is_some_and(|free| free.saturating_sub(k.spent) < margin) {
            return false;
        }
        let (mut all, mut short) = (0, 0);
        for a in takers {
            all += 1;
            if k.servers.get(a).is_some_and(|(free, at)| *free < margin && at.elapsed() < FRESH) {
                short += 1;
            }
        }
        // No takers at all is the ring's problem (puts fail as unreachable), not a full disk.
        all == 0 || all - short >= replicas.min(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 8 << 20;

    #[test]
    fn unknown_space_allows_writes_until_a_server_refuses_one() {
        let r = Room::default();
        assert!(r.allows(M, ["a"].into_iter(), 1));
        r.reported(0, 0);
        assert!(r.allows(M, ["a"].into_iter(), 1), "a metadata server that knows no capacity yet is no reason to refuse");
        r.refused();
        assert!(!r.allows(M, ["a"].into_iter(), 1));
    }

    #[test]
    fn uploads_since_the_last_report_count_against_it() {
        let r = Room::default();
        r.reported(100 << 20, 20 << 20);
        assert!(r.allows(M, std::iter::empty(), 1));
        r.spent(10 << 20);
        assert!(r.allows(M, std::iter::empty(), 1));
        r.spent(4 << 20);
        assert!(!r.allows(M, std::iter::empty(), 1), "6 MiB left is below the margin");
        r.reported(100 << 20, 40 << 20);
        assert!(r.allows(M, std::iter::empty(), 1), "a new report starts over (space was freed)");
    }

    #[test]
    fn a_put_answer_outranks_a_report_that_trails_it() {
        let r = Room::default();
        let all = ["a", "b", "c"];
        r.reported(100 << 20, 40 << 20);
        r.server_free("a", 30 << 20);
        r.server_free("b", 2 << 20);
        assert!(!r.allows(M, all.into_iter(), 3), "b is short: a block needs all three servers");
        assert!(r.allows(M, all.into_iter(), 2), "two of three have room");
        // The next report (a heartbeat behind) still shows room: b's answer stands.
        r.reported(100 << 20, 40 << 20);
        assert!(!r.allows(M, all.into_iter(), 3));
        r.server_free("b", 20 << 20);
        assert!(r.allows(M, all.into_iter(), 3), "b answered with room again");
        // A server no longer in the ring's takers does not count either way.
        r.server_free("c", 1 << 20);
        assert!(r.allows(M, ["a", "b"].into_iter(), 3), "two takers, both with room");
    }
}
