//! Session leases: when each client session was last heard from, and the ticker that expires
//! those that went quiet.
//!
//! Liveness is the serving server's memory, not replicated state: after a restart every stored
//! session starts a fresh lease. The expiry itself is a command (`ExpireSession`) that carries
//! its time, so replicas apply it alike; deciding to issue it is the leader's duty.

use crate::namespace::Namespace;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

struct Seen {
    at: Instant,
    addr: String,
}

pub struct Leases {
    pub lease: Duration,
    /// Since when sessions not heard from are counted (start, or the last election won).
    started: Mutex<Instant>,
    seen: Mutex<HashMap<u64, Seen>>,
}

impl Leases {
    pub fn new(lease: Duration) -> Self {
        Leases { lease, started: Mutex::new(Instant::now()), seen: Mutex::new(HashMap::new()) }
    }

    /// Sessions heard from within their lease.
    pub fn live(&self) -> usize {
        self.seen.lock().unwrap().values().filter(|s| s.at.elapsed() <= self.lease).count()
    }

    /// `session` was heard from, at `addr`.
    pub fn touch(&self, session: u64, addr: Option<std::net::SocketAddr>) {
        let addr = addr.map(|a| a.to_string()).unwrap_or_default();
        self.seen.lock().unwrap().insert(session, Seen { at: Instant::now(), addr });
    }

    /// Peer address and time since `session` was last heard from (since the server started
    /// if not yet).
    pub fn last(&self, session: u64) -> (String, Duration) {
        match self.seen.lock().unwrap().get(&session) {
            Some(s) => (s.addr.clone(), s.at.elapsed()),
            None => (String::new(), self.started.lock().unwrap().elapsed()),
        }
    }

    fn overdue(&self, session: u64) -> bool {
        self.last(session).1 > self.lease
    }

    /// Expire every stored session whose lease ran out. Returns a line on each one expired.
    pub fn expire_overdue(&self, ns: &Arc<Namespace>) -> Vec<String> {
        let sessions = match ns.sessions() {
            Ok(s) => s,
            Err(e) => {
                warn!("listing sessions for lease expiry failed: {e}");
                return Vec::new();
            }
        };
        let mut expired = Vec::new();
        for s in sessions.into_iter().filter(|s| self.overdue(s.id)) {
            match ns.expire_session(s.id, crate::namespace::now_ns()) {
                Ok(_) => {
                    info!(session = s.id, client = %s.client, cert = %s.cert, open_files = s.open_files, locks = s.locks, "session lease expired; its locks and open files were released");
                    self.seen.lock().unwrap().remove(&s.id);
                    expired.push(format!(
                        "mount session {} of {} ({}) expired after {} s without a heartbeat: {} open files and {} locks released",
                        s.id,
                        s.cert,
                        s.client,
                        self.lease.as_secs(),
                        s.open_files,
                        s.locks
                    ));
                }
                Err(e) => warn!(session = s.id, "expiring a session failed: {e}"),
            }
        }
        expired
    }

    /// A new leader: every session starts a full lease now (the old leader heard the
    /// heartbeats, this one did not).
    pub fn restart(&self) {
        *self.started.lock().unwrap() = Instant::now();
        self.seen.lock().unwrap().clear();
    }

    pub fn forget(&self, session: u64) {
        self.seen.lock().unwrap().remove(&session);
    }
}
