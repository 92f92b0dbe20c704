//! Chunk-server membership and the published ring.
//!
//! A server is `up` while heartbeats arrive, `down` after `down_after` without one (it stays in
//! the ring: readers and writers skip it, nothing moves) and `out` after `out_after` (it leaves
//! the ring). Registrations are persisted, so the ring survives a metadata restart.

use crate::namespace::Namespace;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_common::proto::meta::NodeStatus;
use tessera_common::ring::{Ring, RingNode};
use tessera_common::{ErrorCode, WireError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Admin {
    Active,
    Draining,
    Removed,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct NodeRecord {
    id: u64,
    addr: String,
    zone: String,
    capacity: u64,
    admin: Admin,
}

struct Node {
    rec: NodeRecord,
    used: u64,
    blocks: u64,
    repair_pending: u64,
    full: bool,
    last_heartbeat: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    Up,
    Down,
    Out,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Down => "down",
            NodeState::Out => "out",
        }
    }
}

pub struct Membership {
    ns: Arc<Namespace>,
    replicas: u32,
    nodes: Mutex<BTreeMap<u64, Node>>,
    ring: Mutex<Ring>,
    pub down_after: Duration,
    pub out_after: Duration,
}

const KEY_RING_VERSION: &[u8] = b"ring_version";
const NODE_PREFIX: &[u8] = b"node/";

fn node_key(id: u64) -> Vec<u8> {
    let mut k = NODE_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

impl Membership {
    pub fn load(ns: Arc<Namespace>, replicas: u32, down_after: Duration, out_after: Duration) -> Result<Self, WireError> {
        let now = Instant::now();
        let nodes = ns
            .cluster_scan::<NodeRecord>(NODE_PREFIX)?
            .into_iter()
            // Until a first heartbeat after a restart, give every server the benefit of the doubt.
            .map(|rec| (rec.id, Node { rec, used: 0, blocks: 0, repair_pending: 0, full: false, last_heartbeat: now }))
            .collect();
        let version = ns.cluster_get::<u64>(KEY_RING_VERSION)?.unwrap_or(0);
        let m = Membership { ns, replicas, nodes: Mutex::new(nodes), ring: Mutex::new(Ring::new(version, replicas, vec![])), down_after, out_after };
        let members = m.members();
        *m.ring.lock().unwrap() = Ring::new(version, replicas, members);
        Ok(m)
    }

    fn state(&self, n: &Node, now: Instant) -> NodeState {
        let age = now.saturating_duration_since(n.last_heartbeat);
        if age >= self.out_after || n.rec.admin == Admin::Removed {
            NodeState::Out
        } else if age >= self.down_after {
            NodeState::Down
        } else {
            NodeState::Up
        }
    }

    fn members(&self) -> Vec<RingNode> {
        let now = Instant::now();
        let nodes = self.nodes.lock().unwrap();
        nodes
            .values()
            .filter(|n| self.state(n, now) != NodeState::Out && n.rec.admin == Admin::Active)
            .map(|n| RingNode {
                id: n.rec.id,
                addr: n.rec.addr.clone(),
                zone: n.rec.zone.clone(),
                capacity: n.rec.capacity,
                up: self.state(n, now) == NodeState::Up,
                full: n.full,
            })
            .collect()
    }

    /// Publish a new ring version if the member set changed.
    pub fn refresh(&self) -> Result<Ring, WireError> {
        let members = self.members();
        let mut ring = self.ring.lock().unwrap();
        let mut sorted = members.clone();
        sorted.sort_by_key(|n| n.id);
        if sorted != ring.nodes {
            let version = ring.version + 1;
            self.ns.cluster_put(KEY_RING_VERSION, &version)?;
            *ring = Ring::new(version, self.replicas, members);
            tracing::info!(version, servers = ring.nodes.len(), "new ring published");
        }
        Ok(ring.clone())
    }

    pub fn ring(&self) -> Ring {
        self.ring.lock().unwrap().clone()
    }

    pub fn register(&self, id: u64, addr: String, zone: String, capacity: u64) -> Result<Ring, WireError> {
        if addr.is_empty() || zone.is_empty() || zone.len() > 255 || addr.len() > 255 {
            return Err(WireError::new(ErrorCode::InvalidArgument, "bad address or zone"));
        }
        // A server that was removed or is draining stays so across restarts.
        let admin = self.nodes.lock().unwrap().get(&id).map(|n| n.rec.admin).unwrap_or(Admin::Active);
        let rec = NodeRecord { id, addr, zone, capacity, admin };
        self.ns.cluster_put(&node_key(id), &rec)?;
        self.nodes.lock().unwrap().insert(id, Node { rec, used: 0, blocks: 0, repair_pending: 0, full: false, last_heartbeat: Instant::now() });
        self.refresh()
    }

    /// `tessera node remove|drain`.
    pub fn admin(&self, id: u64, action: tessera_common::proto::meta::NodeAction) -> Result<(), WireError> {
        use tessera_common::proto::meta::NodeAction;
        let rec = {
            let mut nodes = self.nodes.lock().unwrap();
            let n = nodes.get_mut(&id).ok_or_else(|| WireError::new(ErrorCode::NotFound, format!("no chunk server with id {id:016x}")))?;
            n.rec.admin = match action {
                NodeAction::Remove => Admin::Removed,
                NodeAction::Drain => Admin::Draining,
            };
            n.rec.clone()
        };
        self.ns.cluster_put(&node_key(id), &rec)?;
        self.refresh().map(|_| ())
    }

    pub fn heartbeat(&self, id: u64, capacity: u64, used: u64, blocks: u64, repair_pending: u64, full: bool) -> Result<u64, WireError> {
        let changed = {
            let mut nodes = self.nodes.lock().unwrap();
            let n = nodes.get_mut(&id).ok_or_else(|| WireError::new(ErrorCode::NotFound, "unknown chunk server; register first"))?;
            let was_out = self.state(n, Instant::now()) == NodeState::Out;
            n.used = used;
            n.blocks = blocks;
            n.repair_pending = repair_pending;
            n.last_heartbeat = Instant::now();
            let cap_changed = n.rec.capacity != capacity;
            n.rec.capacity = capacity;
            let full_changed = n.full != full;
            n.full = full;
            let was_down = self.ring.lock().unwrap().node(id).is_some_and(|r| !r.up);
            was_out || was_down || cap_changed || full_changed
        };
        let ring = if changed { self.refresh()? } else { self.ring() };
        Ok(ring.version)
    }

    pub fn status(&self) -> Vec<NodeStatus> {
        let now = Instant::now();
        self.nodes
            .lock()
            .unwrap()
            .values()
            .map(|n| NodeStatus {
                id: n.rec.id,
                zone: n.rec.zone.clone(),
                addr: n.rec.addr.clone(),
                state: self.state(n, now).as_str().into(),
                capacity: n.rec.capacity,
                used: n.used,
                blocks: n.blocks,
                last_heartbeat_ms: now.saturating_duration_since(n.last_heartbeat).as_millis() as u64,
                draining: n.rec.admin == Admin::Draining,
                repair_pending: n.repair_pending,
                full: n.full,
            })
            .collect()
    }
}
