//! The leader's read lease: how a leader knows, without asking the followers again, that no
//! other server can have been elected, so that it may answer a read from its own state.
//!
//! A follower that accepts an append (heartbeats are appends) refuses every vote for the next
//! `LEADER_LEASE` (openraft's `leader_lease`, the election timeout's maximum), counted from
//! when it received it. So once a majority of the voters (this server included) accepted
//! appends sent at or after `t`, no other server can win an election before `t +
//! LEADER_LEASE` on any of their clocks, unless this server votes for it. Reads are answered
//! from the lease until `t + SAFE`: well before, so that clocks that run at slightly different
//! rates (only monotonic clocks are compared, each with itself) cannot matter. A vote this
//! server grants ends every lease of the terms before it at once, recorded before the grant
//! is sent.
//!
//! A read checks the lease before and again after it reads (`Replica::lease_read`): a server
//! that stalled in between (a pause, a stop signal) finds it expired and asks the followers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long (ms) a follower refuses votes after an append: openraft's `leader_lease`, which it
/// sets to `election_timeout_max`.
const LEADER_LEASE_MS: u64 = super::ELECTION_MS.1;
/// How long this server relies on an acknowledged append: three quarters of the lease.
pub const SAFE: Duration = Duration::from_millis(LEADER_LEASE_MS * 3 / 4);

#[derive(Default)]
struct State {
    /// Per follower: the term and the send time of the latest append it accepted.
    acked: HashMap<u64, (u64, Instant)>,
    /// The highest term this server granted a vote in: no lease of an earlier term holds.
    granted: u64,
}

#[derive(Default)]
pub struct Lease {
    st: Mutex<State>,
}

impl Lease {
    /// `peer` accepted an append of `term` sent at `sent`.
    pub fn acked(&self, peer: u64, term: u64, sent: Instant) {
        let mut st = self.st.lock().unwrap();
        if term <= st.granted {
            return;
        }
        let e = st.acked.entry(peer).or_insert((term, sent));
        if (term, sent) > *e {
            *e = (term, sent);
        }
    }

    /// This server is about to grant its vote in `term`.
    pub fn granting(&self, term: u64) {
        let mut st = self.st.lock().unwrap();
        st.granted = st.granted.max(term);
    }

    /// Whether this server, leading in `term` among `voters` (itself included), holds the
    /// lease now.
    pub fn holds(&self, me: u64, term: u64, voters: &[u64]) -> bool {
        let st = self.st.lock().unwrap();
        if term <= st.granted || !voters.contains(&me) {
            return false;
        }
        // Besides this server, a majority needs `need` followers.
        let need = voters.len() / 2;
        if need == 0 {
            return true;
        }
        let mut sent: Vec<Instant> = voters.iter().filter(|v| **v != me).filter_map(|v| st.acked.get(v)).filter(|(t, _)| *t == term).map(|(_, s)| *s).collect();
        if sent.len() < need {
            return false;
        }
        sent.sort_unstable_by(|a, b| b.cmp(a));
        // `need` followers accepted appends sent at or after this.
        let since = sent[need - 1];
        since.elapsed() < SAFE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_majority_of_recent_acks_in_the_term_holds_the_lease() {
        let l = Lease::default();
        let now = Instant::now();
        let old = now - SAFE - Duration::from_millis(1);
        // Three voters: one follower's recent ack is a majority with this server.
        assert!(!l.holds(1, 5, &[1, 2, 3]));
        l.acked(2, 5, old);
        assert!(!l.holds(1, 5, &[1, 2, 3]), "an ack older than SAFE");
        l.acked(3, 5, now);
        assert!(l.holds(1, 5, &[1, 2, 3]));
        assert!(!l.holds(1, 6, &[1, 2, 3]), "acks of another term");
        assert!(!l.holds(4, 5, &[1, 2, 3]), "not a voter");
        // Five voters: two followers are needed.
        assert!(!l.holds(1, 5, &[1, 2, 3, 4, 5]), "one recent ack of four followers");
        l.acked(4, 5, now);
        assert!(l.holds(1, 5, &[1, 2, 3, 4, 5]));
        // An older ack never replaces a newer one.
        l.acked(4, 5, old);
        assert!(l.holds(1, 5, &[1, 2, 3, 4, 5]));
        // A group of one needs no follower.
        assert!(l.holds(1, 9, &[1]));
    }

    #[test]
    fn a_granted_vote_ends_the_lease_of_every_earlier_term() {
        let l = Lease::default();
        l.acked(2, 5, Instant::now());
        assert!(l.holds(1, 5, &[1, 2, 3]));
        l.granting(6);
        assert!(!l.holds(1, 5, &[1, 2, 3]));
        // Acks of the old term that arrive afterwards count for nothing.
        l.acked(3, 5, Instant::now());
        assert!(!l.holds(1, 5, &[1, 2, 3]));
        assert!(!l.holds(1, 6, &[1, 2, 3]), "no ack in term 6");
        // Leading in a later term, acks count again.
        l.acked(2, 7, Instant::now());
        assert!(l.holds(1, 7, &[1, 2, 3]));
    }
}
