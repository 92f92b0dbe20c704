//! The placement ring: consistent hashing with virtual nodes weighted by capacity.
//!
//! Each server in the ring appears as `vnodes(capacity)` points, at positions derived from its
//! id. A block's position is the first 8 bytes of its id. Its replicas are the first N distinct
//! servers clockwise, preferring servers in zones not yet used while enough zones exist.
//! The vnode count depends only on the server's own capacity, so adding or removing one server
//! leaves every other server's points where they were: about 1/n of the blocks move.

use crate::BlockId;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingNode {
    pub id: u64,
    pub addr: String,
    pub zone: String,
    pub capacity: u64,
    /// False while the server is `down`: it keeps its place (nothing moves), but readers and
    /// writers skip it.
    pub up: bool,
    /// True while the server's free space is below its reserve: it keeps its place and serves
    /// reads, but writes and repair copies go to the next servers clockwise, as for a down one.
    pub full: bool,
}

/// A published version of the ring: the servers that hold data (`up` or `down`, not `out`).
/// On the wire only the members travel; the point table is rebuilt when decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RingWire", into = "RingWire")]
pub struct Ring {
    pub version: u64,
    /// Copies of every block (cluster-wide).
    pub replicas: u32,
    pub nodes: Vec<RingNode>,
    points: Vec<(u64, usize)>,
    /// Distinct zones among all nodes and among the nodes that take writes (up, not full).
    zones: (usize, usize),
}

#[derive(Clone, Serialize, Deserialize)]
struct RingWire {
    version: u64,
    replicas: u32,
    nodes: Vec<RingNode>,
}

impl From<RingWire> for Ring {
    fn from(w: RingWire) -> Self {
        Ring::new(w.version, w.replicas, w.nodes)
    }
}

impl From<Ring> for RingWire {
    fn from(r: Ring) -> Self {
        RingWire { version: r.version, replicas: r.replicas, nodes: r.nodes }
    }
}

const GIB: u64 = 1 << 30;

/// Virtual nodes for a server: one per 4 GiB of capacity, within [128, 2048] (128 keeps the
/// busiest server within ~25% of the mean; see docs/placement.md).
pub fn vnodes(capacity: u64) -> usize {
    (capacity / (4 * GIB)).clamp(128, 2048) as usize
}

fn point(node: u64, i: usize) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&node.to_le_bytes());
    h.update(&(i as u64).to_le_bytes());
    u64::from_be_bytes(h.finalize().as_bytes()[..8].try_into().unwrap())
}

impl RingNode {
    /// Whether new blocks may be written here.
    pub fn writable(&self) -> bool {
        self.up && !self.full
    }
}

impl Ring {
    pub fn new(version: u64, replicas: u32, mut nodes: Vec<RingNode>) -> Self {
        nodes.sort_by_key(|n| n.id);
        let mut r = Ring { version, replicas, nodes, points: Vec::new(), zones: (0, 0) };
        r.build();
        r
    }

    fn build(&mut self) {
        let mut pts = Vec::new();
        for (idx, n) in self.nodes.iter().enumerate() {
            for i in 0..vnodes(n.capacity) {
                pts.push((point(n.id, i), idx));
            }
        }
        pts.sort_unstable();
        self.points = pts;
        let all: HashSet<&str> = self.nodes.iter().map(|n| n.zone.as_str()).collect();
        let up: HashSet<&str> = self.nodes.iter().filter(|n| n.writable()).map(|n| n.zone.as_str()).collect();
        self.zones = (all.len(), up.len());
    }

    pub fn node(&self, id: u64) -> Option<&RingNode> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The `n` servers that own `block`, primary first (up or down).
    pub fn owners(&self, block: &BlockId, n: usize) -> Vec<&RingNode> {
        self.walk(block.ring_position(), n, false)
    }

    /// Where a write of `block` goes now: the first `n` servers clockwise that are up and not
    /// full.
    pub fn targets(&self, block: &BlockId, n: usize) -> Vec<&RingNode> {
        self.walk(block.ring_position(), n, true)
    }

    /// Every server in clockwise order from `block` (zone-spread first, as placement is).
    pub fn clockwise(&self, block: &BlockId) -> Vec<&RingNode> {
        self.walk(block.ring_position(), self.nodes.len(), false)
    }

    fn walk(&self, pos: u64, n: usize, writable_only: bool) -> Vec<&RingNode> {
        let eligible = |i: usize| !writable_only || self.nodes[i].writable();
        let want = n.min((0..self.nodes.len()).filter(|&i| eligible(i)).count());
        let zones = if writable_only { self.zones.1 } else { self.zones.0 };
        let start = self.points.partition_point(|&(p, _)| p < pos);
        let mut chosen: Vec<usize> = Vec::with_capacity(want);
        let mut used_zones: HashSet<&str> = HashSet::new();
        // First pass: distinct servers in distinct zones; second: distinct servers.
        for pass in 0..2 {
            for k in 0..self.points.len() {
                if chosen.len() == want {
                    break;
                }
                let idx = self.points[(start + k) % self.points.len()].1;
                if chosen.contains(&idx) || !eligible(idx) {
                    continue;
                }
                let zone = self.nodes[idx].zone.as_str();
                if pass == 0 && used_zones.contains(zone) && used_zones.len() < zones {
                    continue;
                }
                used_zones.insert(zone);
                chosen.push(idx);
            }
        }
        chosen.into_iter().map(|i| &self.nodes[i]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn ring(n: u64, zones: u64) -> Ring {
        Ring::new(
            1,
            3,
            (1..=n)
                .map(|id| RingNode { id, addr: format!("127.0.0.1:{id}"), zone: format!("z{}", id % zones), capacity: 100 * GIB, up: true, full: false })
                .collect(),
        )
    }

    fn block(i: u64) -> BlockId {
        BlockId::of(&i.to_le_bytes())
    }

    #[test]
    fn owners_are_distinct_and_stable() {
        let r = ring(5, 5);
        for i in 0..1000 {
            let o = r.owners(&block(i), 3);
            assert_eq!(o.len(), 3);
            let ids: HashSet<u64> = o.iter().map(|x| x.id).collect();
            assert_eq!(ids.len(), 3);
            assert_eq!(o, r.owners(&block(i), 3));
        }
        // Fewer servers than replicas: all of them.
        assert_eq!(ring(2, 2).owners(&block(1), 3).len(), 2);
    }

    #[test]
    fn zones_are_spread_while_enough_exist() {
        let r = ring(6, 3);
        for i in 0..500 {
            let zones: HashSet<String> = r.owners(&block(i), 3).iter().map(|x| x.zone.clone()).collect();
            assert_eq!(zones.len(), 3);
        }
    }

    #[test]
    fn adding_a_server_moves_about_one_nth() {
        let before = ring(10, 10);
        let after = ring(11, 11);
        let total = 20_000;
        let moved = (0..total).filter(|&i| before.owners(&block(i), 1)[0].id != after.owners(&block(i), 1)[0].id).count();
        let ideal = total as f64 / 11.0;
        assert!((moved as f64) < ideal * 1.5, "moved {moved}, ideal {ideal}");
    }

    #[test]
    fn writes_skip_down_servers_without_moving_others() {
        let mut r = ring(5, 5);
        let b = block(42);
        let owners: Vec<u64> = r.owners(&b, 3).iter().map(|n| n.id).collect();
        let down = owners[0];
        r.nodes.iter_mut().find(|n| n.id == down).unwrap().up = false;
        let targets: Vec<u64> = r.targets(&b, 3).iter().map(|n| n.id).collect();
        assert_eq!(targets.len(), 3);
        assert!(!targets.contains(&down));
        assert!(targets.contains(&owners[1]) && targets.contains(&owners[2]));
        assert_eq!(r.owners(&b, 3).iter().map(|n| n.id).collect::<Vec<_>>(), owners, "down servers keep their place");
        assert_eq!(r.clockwise(&b).len(), 5);
    }

    #[test]
    fn writes_skip_full_servers_like_down_ones() {
        let mut r = ring(5, 5);
        let b = block(7);
        let owners: Vec<u64> = r.owners(&b, 3).iter().map(|n| n.id).collect();
        let full = owners[1];
        r.nodes.iter_mut().find(|n| n.id == full).unwrap().full = true;
        let r = Ring::new(2, 3, r.nodes);
        let targets: Vec<u64> = r.targets(&b, 3).iter().map(|n| n.id).collect();
        assert_eq!(targets.len(), 3);
        assert!(!targets.contains(&full), "a full server is written to");
        assert!(targets.contains(&owners[0]) && targets.contains(&owners[2]));
        assert_eq!(r.owners(&b, 3).iter().map(|n| n.id).collect::<Vec<_>>(), owners, "full servers keep their place");
        // Every server full: nowhere to write.
        let all_full = Ring::new(3, 3, r.nodes.iter().cloned().map(|n| RingNode { full: true, ..n }).collect());
        assert!(all_full.targets(&b, 3).is_empty());
    }

    /// The placement table of docs/placement.md: load spread and data moved on a join or a
    /// leave, on simulated clusters (equal capacities, one zone per server, 3 replicas).
    #[test]
    fn placement_table() {
        println!("| servers | blocks | copies per server max/mean | moved on join (x ideal) | moved on leave (x ideal) |");
        println!("|---|---|---|---|---|");
        for (n, blocks) in [(10u64, 50_000u64), (100, 100_000), (1000, 200_000)] {
            let r = ring(n, n);
            let mut per: HashMap<u64, u64> = HashMap::new();
            let placed: Vec<Vec<u64>> = (0..blocks)
                .map(|i| {
                    let o: Vec<u64> = r.owners(&block(i), 3).iter().map(|x| x.id).collect();
                    for id in &o {
                        *per.entry(*id).or_default() += 1;
                    }
                    o
                })
                .collect();
            let mean = (blocks * 3) as f64 / n as f64;
            let max = *per.values().max().unwrap() as f64;
            // Copies that must move: owners in the new ring that did not hold the block before.
            let moved = |other: &Ring| -> u64 {
                (0..blocks)
                    .map(|i| other.owners(&block(i), 3).iter().filter(|x| !placed[i as usize].contains(&x.id)).count() as u64)
                    .sum()
            };
            let joined = ring(n + 1, n + 1);
            let join = moved(&joined) as f64 / ((blocks * 3) as f64 / (n + 1) as f64);
            let mut left = r.clone();
            left.nodes.retain(|x| x.id != 1);
            let left = Ring::new(2, 3, left.nodes);
            let leave = moved(&left) as f64 / ((blocks * 3) as f64 / n as f64);
            println!("| {n} | {blocks} | {:.2} | {join:.2} | {leave:.2} |", max / mean);
            assert!(max / mean < 1.6, "load spread {:.2} at {n} servers", max / mean);
            assert!(join < 1.3 && leave < 1.3, "movement {join:.2}/{leave:.2} x ideal at {n} servers");
        }
    }

    #[test]
    fn ring_survives_serialisation() {
        let r = ring(4, 4);
        let bytes = bincode::serde::encode_to_vec(&r, bincode::config::standard()).unwrap();
        let (back, _): (Ring, usize) = bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(back.owners(&block(9), 3), r.owners(&block(9), 3));
    }
}
