//! Recent events of the cluster, as the metadata server saw them: chunk servers changing state,
//! joining and being drained or removed, mounts opening, closing and expiring, garbage collected.
//! Shown by `tessera status` and `tessera web`. Kept in memory (the last [`KEEP`]), like
//! liveness: a restarted server starts a fresh list, and under Raft it is the leader's.

use std::collections::VecDeque;
use std::sync::Mutex;
use tessera_common::proto::meta::Event;

const KEEP: usize = 200;

#[derive(Default)]
pub struct Events {
    list: Mutex<VecDeque<Event>>,
}

impl Events {
    /// Record `what` now (and log it).
    pub fn note(&self, what: impl Into<String>) {
        let what = what.into();
        tracing::info!("event: {what}");
        let at_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let mut l = self.list.lock().unwrap();
        if l.len() == KEEP {
            l.pop_front();
        }
        l.push_back(Event { at_ms, what });
    }

    /// Oldest first.
    pub fn recent(&self) -> Vec<Event> {
        self.list.lock().unwrap().iter().cloned().collect()
    }
}
