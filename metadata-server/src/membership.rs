//! Chunk-server membership and the published ring.
//!
//! A server is `up` while heartbeats arrive, `down` after `down_after` without one (it stays in
//! the ring: readers and writers skip it, nothing moves) and `out` after `out_after` (it leaves
//! the ring). Registrations are persisted, so the ring survives a metadata restart.
//!
//! A ring version names exactly one member list, forever: each published ring is persisted with
//! its members before anyone sees it, and a restart that computes different members (every
//! server is reloaded as `up`) publishes them under a new version.

use crate::namespace::{enc, Command, Namespace, Op, Outcome};
use crate::store::{Batch, Cf};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_common::proto::meta::{ChunkLoad, NodeStatus};
use tessera_common::ring::{Ring, RingNode};
use tessera_common::{ErrorCode, WireError};

/// A server's administrative state, as `tessera node` sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Admin {
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
    /// As of the last heartbeat (zero until the first).
    load: ChunkLoad,
    /// Whether `load` came from a heartbeat of this process's lifetime: after a restart, a
    /// stored server counts as up before it was heard, but its free space is not known.
    heard: bool,
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
    /// The ring served now, locked only to read or replace it: async code reads it on the
    /// runtime's threads, which Raft needs to commit a new one.
    ring: Mutex<Ring>,
    /// Held while a new ring is made durable (a Raft write under Raft), so that rings are
    /// published one at a time and each version names one member list.
    publishing: Mutex<()>,
    pub down_after: Duration,
    pub out_after: Duration,
    /// Each server's state when [`Membership::state_changes`] last looked.
    seen_states: Mutex<HashMap<u64, &'static str>>,
}

/// Before rings were stored whole: the version only (read once, on upgrade).
const KEY_RING_VERSION: &[u8] = b"ring_version";
/// The last published ring: [`RingRecord`].
const KEY_RING: &[u8] = b"ring";

#[derive(Clone, Debug, Serialize, Deserialize)]
struct RingRecord {
    version: u64,
    /// Sorted by id, as in [`Ring`].
    nodes: Vec<RingNode>,
}
const NODE_PREFIX: &[u8] = b"node/";

/// Store the last ring again under version `floor` if its version is lower: a restored
/// database must not publish a version the cluster may have seen since the backup with other
/// members (see `backup::restore_floor`). Part of the `RaiseFloor` command.
pub(crate) fn raise_ring_version(ns: &Namespace, b: &mut Batch, floor: u64) -> Result<(), WireError> {
    let nodes = match ns.cluster_get::<RingRecord>(KEY_RING)? {
        Some(r) if r.version >= floor => return Ok(()),
        Some(r) => r.nodes,
        None => vec![],
    };
    b.put(Cf::Cluster, KEY_RING.to_vec(), enc(&RingRecord { version: floor, nodes }));
    Ok(())
}

fn node_key(id: u64) -> Vec<u8> {
    let mut k = NODE_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// `RegisterNode`: the record, keeping the admin state a removed or draining server had.
pub(crate) fn apply_register(ns: &Namespace, b: &mut Batch, id: u64, addr: &str, zone: &str, capacity: u64) -> Result<(), WireError> {
    if addr.is_empty() || zone.is_empty() || zone.len() > 255 || addr.len() > 255 {
        return Err(WireError::new(ErrorCode::InvalidArgument, "bad address or zone"));
    }
    let admin = ns.cluster_get::<NodeRecord>(&node_key(id))?.map(|r| r.admin).unwrap_or(Admin::Active);
    b.put(Cf::Cluster, node_key(id), enc(&NodeRecord { id, addr: addr.into(), zone: zone.into(), capacity, admin }));
    Ok(())
}

/// `SetNodeAdmin`.
pub(crate) fn apply_admin(ns: &Namespace, b: &mut Batch, id: u64, admin: Admin) -> Result<(), WireError> {
    let mut rec = ns.cluster_get::<NodeRecord>(&node_key(id))?.ok_or_else(|| WireError::new(ErrorCode::NotFound, format!("no chunk server with id {id:016x}")))?;
    rec.admin = admin;
    b.put(Cf::Cluster, node_key(id), enc(&rec));
    Ok(())
}

/// `PublishRing`: the stored ring's version if `nodes` are its members; else the next version,
/// stored with them. Version 0 is the empty ring of a new cluster (not stored).
pub(crate) fn apply_ring(ns: &Namespace, b: &mut Batch, nodes: &[RingNode]) -> Result<u64, WireError> {
    let stored = match ns.cluster_get::<RingRecord>(KEY_RING)? {
        Some(r) => Some(r),
        // Members unknown: any non-empty ring gets a new version.
        None => ns.cluster_get::<u64>(KEY_RING_VERSION)?.map(|version| RingRecord { version, nodes: vec![] }),
    };
    let version = match stored {
        Some(r) if r.nodes == nodes => return Ok(r.version),
        Some(r) => r.version + 1,
        None if nodes.is_empty() => return Ok(0),
        None => 1,
    };
    b.put(Cf::Cluster, KEY_RING.to_vec(), enc(&RingRecord { version, nodes: nodes.to_vec() }));
    Ok(version)
}

impl Membership {
    pub fn load(ns: Arc<Namespace>, replicas: u32, down_after: Duration, out_after: Duration) -> Result<Self, WireError> {
        let replicated = ns.is_replicated();
        let m = Membership { ns, replicas, nodes: Mutex::default(), ring: Mutex::new(Ring::new(0, replicas, vec![])), publishing: Mutex::default(), down_after, out_after, seen_states: Mutex::default() };
        // Under Raft only the leader publishes (see `reload`); a follower serves no ring.
        if !replicated {
            m.reload()?;
        }
        Ok(m)
    }

    /// Reload the stored servers and publish the ring they make: at start, and on each
    /// election won. Until a first heartbeat, every server gets the benefit of the doubt: up,
    /// and down after `down_after` without a heartbeat.
    pub fn reload(&self) -> Result<(), WireError> {
        let now = Instant::now();
        let nodes = self
            .ns
            .cluster_scan::<NodeRecord>(NODE_PREFIX)?
            .into_iter()
            .map(|rec| (rec.id, Node { rec, load: ChunkLoad::default(), heard: false, last_heartbeat: now }))
            .collect();
        *self.nodes.lock().unwrap() = nodes;
        self.seen_states.lock().unwrap().clear();
        let _one = self.publishing.lock().unwrap();
        let ring = Ring::new(0, self.replicas, self.members());
        let version = self.publish(&ring.nodes)?;
        *self.ring.lock().unwrap() = Ring::new(version, self.replicas, ring.nodes);
        Ok(())
    }

    /// The version of ring `nodes` (sorted by id), stored durably before it is published.
    fn publish(&self, nodes: &[RingNode]) -> Result<u64, WireError> {
        match self.ns.submit_durable(&Command::new(Op::PublishRing { nodes: nodes.to_vec() }))? {
            Outcome::Ring(v) => Ok(v),
            o => Err(WireError::new(ErrorCode::Internal, format!("PublishRing gave {o:?}"))),
        }
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
                full: n.load.full,
            })
            .collect()
    }

    /// Publish a new ring version if the member set changed.
    pub fn refresh(&self) -> Result<Ring, WireError> {
        let _one = self.publishing.lock().unwrap();
        let members = self.members();
        let mut sorted = members.clone();
        sorted.sort_by_key(|n| n.id);
        let current = self.ring();
        if sorted == current.nodes {
            return Ok(current);
        }
        let version = self.publish(&sorted)?;
        let ring = Ring::new(version, self.replicas, members);
        *self.ring.lock().unwrap() = ring.clone();
        tracing::info!(version, servers = ring.nodes.len(), "new ring published");
        Ok(ring)
    }

    /// The ring served now: the one this server made, unless the last one stored through Raft
    /// is newer. A server just elected has made none yet (its first takes a Raft write); until
    /// then it serves its predecessor's, never an older or an empty one.
    pub fn ring(&self) -> Ring {
        let made = self.ring.lock().unwrap().clone();
        match self.ns.cluster_get::<RingRecord>(KEY_RING) {
            Ok(Some(r)) if r.version > made.version => Ring::new(r.version, self.replicas, r.nodes),
            _ => made,
        }
    }

    /// Servers whose state (up, down, out) changed since the last call: (id, address, before,
    /// now). The first call only remembers.
    pub fn state_changes(&self) -> Vec<(u64, String, &'static str, &'static str)> {
        let now = Instant::now();
        let nodes = self.nodes.lock().unwrap();
        let mut seen = self.seen_states.lock().unwrap();
        let first = seen.is_empty();
        let mut out = Vec::new();
        for n in nodes.values() {
            let state = self.state(n, now).as_str();
            match seen.insert(n.rec.id, state) {
                Some(before) if before != state => out.push((n.rec.id, n.rec.addr.clone(), before, state)),
                None if !first => out.push((n.rec.id, n.rec.addr.clone(), "new", state)),
                _ => {}
            }
        }
        out
    }

    pub fn register(&self, id: u64, addr: String, zone: String, capacity: u64) -> Result<Ring, WireError> {
        self.ns.submit_durable(&Command::new(Op::RegisterNode { id, addr, zone, capacity }))?;
        let rec = self.ns.cluster_get::<NodeRecord>(&node_key(id))?.ok_or_else(|| WireError::new(ErrorCode::Internal, "node record missing after registration"))?;
        self.nodes.lock().unwrap().insert(id, Node { rec, load: ChunkLoad::default(), heard: false, last_heartbeat: Instant::now() });
        self.refresh()
    }

    /// `tessera node remove|drain`.
    pub fn admin(&self, id: u64, action: tessera_common::proto::meta::NodeAction) -> Result<(), WireError> {
        use tessera_common::proto::meta::NodeAction;
        let admin = match action {
            NodeAction::Remove => Admin::Removed,
            NodeAction::Drain => Admin::Draining,
        };
        self.ns.submit_durable(&Command::new(Op::SetNodeAdmin { id, admin }))?;
        if let Some(n) = self.nodes.lock().unwrap().get_mut(&id) {
            n.rec.admin = admin;
        }
        self.refresh().map(|_| ())
    }

    pub fn heartbeat(&self, id: u64, load: ChunkLoad) -> Result<u64, WireError> {
        let changed = {
            let mut nodes = self.nodes.lock().unwrap();
            let n = nodes.get_mut(&id).ok_or_else(|| WireError::new(ErrorCode::NotFound, "unknown chunk server; register first"))?;
            let was_out = self.state(n, Instant::now()) == NodeState::Out;
            n.last_heartbeat = Instant::now();
            let cap_changed = n.rec.capacity != load.capacity;
            n.rec.capacity = load.capacity;
            let full_changed = n.load.full != load.full;
            n.load = load;
            n.heard = true;
            let was_down = self.ring.lock().unwrap().node(id).is_some_and(|r| !r.up);
            was_out || was_down || cap_changed || full_changed
        };
        let ring = if changed { self.refresh()? } else { self.ring() };
        Ok(ring.version)
    }

    /// Whether every server that counts as up has sent its load since this process started
    /// (until then, free space is unknown rather than zero).
    pub fn loads_known(&self) -> bool {
        let now = Instant::now();
        self.nodes.lock().unwrap().values().all(|n| n.heard || self.state(n, now) != NodeState::Up)
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
                used: n.load.used,
                blocks: n.load.blocks,
                last_heartbeat_ms: now.saturating_duration_since(n.last_heartbeat).as_millis() as u64,
                draining: n.rec.admin == Admin::Draining,
                repair_pending: n.load.repair_pending,
                free: n.load.free,
                full: n.load.full,
                workers: n.load.workers.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::FsParams;
    use crate::store::Store;
    use std::collections::HashMap;

    fn open(dir: &std::path::Path) -> Membership {
        let ns = Arc::new(Namespace::open(Store::open(dir).unwrap(), FsParams { block_size: 4096 }).unwrap());
        Membership::load(ns, 3, Duration::from_millis(200), Duration::from_secs(600)).unwrap()
    }

    /// Every ring seen, by version: a version must never come back with other members.
    fn saw(seen: &mut HashMap<u64, Vec<RingNode>>, r: &Ring) {
        if let Some(prev) = seen.insert(r.version, r.nodes.clone()) {
            assert_eq!(prev, r.nodes, "ring version {} names two different member lists", r.version);
        }
    }

    #[test]
    fn a_ring_version_names_one_member_list_across_restarts() {
        let d = tempfile::tempdir().unwrap();
        let mut seen = HashMap::new();
        let last = {
            let m = open(d.path());
            saw(&mut seen, &m.ring());
            saw(&mut seen, &m.register(1, "127.0.0.1:1".into(), "z1".into(), 1 << 30).unwrap());
            saw(&mut seen, &m.register(2, "127.0.0.1:2".into(), "z2".into(), 1 << 30).unwrap());
            // Server 2 stops sending heartbeats: it is down in the next ring.
            std::thread::sleep(Duration::from_millis(300));
            m.heartbeat(1, ChunkLoad { capacity: 1 << 30, ..Default::default() }).unwrap();
            let r = m.refresh().unwrap();
            assert!(r.node(1).unwrap().up && !r.node(2).unwrap().up, "{:?}", r.nodes);
            saw(&mut seen, &r);
            r.version
        };
        // A restart reloads both servers as up: that is another ring, so another version.
        let m = open(d.path());
        let r = m.ring();
        assert!(r.nodes.iter().all(|n| n.up), "{:?}", r.nodes);
        assert!(r.version > last, "version {} reused after the restart", r.version);
        saw(&mut seen, &r);
        drop(m);
        // A restart that finds the same ring keeps its version.
        let m = open(d.path());
        assert_eq!(m.ring().version, r.version);
        saw(&mut seen, &m.ring());
    }

    /// A Raft group that cannot commit a ring for now (a leader cut off, or just thawed):
    /// `PublishRing` waits until released (at most 3 s, then fails as an unreachable majority
    /// would); every other command is applied at once.
    struct Stalled {
        ns: std::sync::OnceLock<Arc<Namespace>>,
        started: std::sync::mpsc::SyncSender<()>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl crate::namespace::Replicate for Stalled {
        fn propose(&self, cmd: &Command) -> Result<Outcome, WireError> {
            if matches!(cmd.op, Op::PublishRing { .. }) {
                let _ = self.started.try_send(());
                if self.release.lock().unwrap().recv_timeout(Duration::from_secs(3)).is_err() {
                    return Err(WireError::new(ErrorCode::Unavailable, "no majority"));
                }
            }
            let ns = self.ns.get().unwrap();
            let (ticket, out) = ns.apply_logged(Some(cmd), crate::store::Batch::default()).unwrap();
            ns.store().wait_durable(ticket).unwrap();
            out
        }
    }

    /// The ring is read by async code on the runtime's few threads (a commit's claim check),
    /// and those threads also run Raft: a reader that waited for a ring being published would
    /// hold up the very commit it waits for (a thawed leader once stopped answering for good).
    #[test]
    fn the_ring_can_be_read_while_a_new_one_waits_to_be_committed() {
        let d = tempfile::tempdir().unwrap();
        let ns = Arc::new(Namespace::open(Store::open(d.path()).unwrap(), FsParams { block_size: 4096 }).unwrap());
        let (started, on_start) = std::sync::mpsc::sync_channel(1);
        let (release, on_release) = std::sync::mpsc::channel();
        let raft = Arc::new(Stalled { ns: Default::default(), started, release: Mutex::new(on_release) });
        let _ = raft.ns.set(ns.clone());
        ns.replicate_through(raft);
        let m = Arc::new(Membership::load(ns, 3, Duration::from_secs(3), Duration::from_secs(600)).unwrap());
        let publisher = std::thread::spawn({
            let m = m.clone();
            move || m.register(1, "127.0.0.1:1".into(), "z1".into(), 1 << 30)
        });
        on_start.recv_timeout(Duration::from_secs(10)).expect("the new ring is proposed");
        let (read, on_read) = std::sync::mpsc::channel();
        let reader = std::thread::spawn({
            let m = m.clone();
            move || read.send(m.ring()).unwrap()
        });
        let during = on_read.recv_timeout(Duration::from_secs(1));
        release.send(()).unwrap();
        let published = publisher.join().unwrap().unwrap();
        reader.join().unwrap();
        let during = during.expect("reading the ring waited for the one being committed");
        assert!(during.node(1).is_none(), "the ring read meanwhile is the one before: {:?}", during.nodes);
        assert!(published.node(1).is_some(), "{:?}", published.nodes);
        assert_eq!(m.ring(), published, "the committed ring is served once it is committed");
    }
}
