//! Replicated metadata: three (or five) metadata servers keep one Raft log of commands and
//! apply it to their own RocksDB (openraft 0.9, storage v2). The only module that sees
//! openraft: the rest of the server submits commands to the namespace, which hands them here
//! ([`Replicate`]) when the server runs with `--peers`.
//!
//! - `log`: the log and the vote, synced before they are reported written.
//! - `machine`: the state machine (the namespace) and its snapshots.
//! - `network`: the messages between the servers, over QUIC.
//!
//! Only the leader answers clients; the others reply `NotLeader` with the leader's address.
//! Reads are linearizable through openraft's `ensure_linearizable` (the leader confirms with a
//! majority that it still leads before it answers): no clock assumptions, at the cost of one
//! round of heartbeats per read, which concurrent reads share.

pub mod log;
mod machine;
mod network;

use crate::namespace::{Command, Namespace, Outcome, Replicate};
use anyhow::Context;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{AnyError, BasicNode, Raft, ServerState, SnapshotPolicy, StorageError, StorageIOError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use tessera_common::proto::meta::{MetaServerStatus, RaftRpc};
use tessera_common::{ErrorCode, WireError};

/// An encoded [`Command`] (see `Command::encode`): what a log entry holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Proposal(pub Vec<u8>);

/// What applying an entry gave (the leader passes it to the proposer).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Applied(pub Result<Outcome, WireError>);

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub(crate) fn io_err(f: impl FnOnce(AnyError) -> StorageIOError<u64>, e: impl ToString) -> StorageError<u64> {
    f(AnyError::error(e.to_string())).into()
}

/// Parse `--peers ID=ADDR,...` (every server of the group, this one included).
pub fn parse_peers(list: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut peers = BTreeMap::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item.split_once('=').ok_or_else(|| format!("--peers entry '{item}' is not ID=HOST:PORT"))?;
        let id: u64 = id.trim().parse().map_err(|_| format!("--peers entry '{item}': the id is not a number"))?;
        if addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
            return Err(format!("--peers entry '{item}': the address is not HOST:PORT"));
        }
        if peers.insert(id, addr.trim().to_string()).is_some() {
            return Err(format!("--peers names id {id} twice"));
        }
    }
    Ok(peers)
}

/// Timing (ms): a leader heartbeats every 100 ms. openraft's followers honour the leader's lease
/// (the election timeout's maximum) before they grant a vote or stand, then wait their own
/// election timeout: a dead leader is replaced 0.6–0.8 s after its last heartbeat. With
/// 400–800 ms the same took 1.2–1.6 s, and a write stalled 1.5 s at the median
/// (scripts/failover-bench.sh, docs/benchmarks.md).
const HEARTBEAT_MS: u64 = 100;
const ELECTION_MS: (u64, u64) = (200, 400);

pub struct Replica {
    raft: Raft<TypeConfig>,
    id: u64,
    peers: BTreeMap<u64, String>,
    rt: tokio::runtime::Handle,
}

fn not_leader(leader: Option<String>) -> WireError {
    WireError::new(ErrorCode::NotLeader, leader.map(|l| format!("not the leader; the leader is {l}")).unwrap_or_else(|| "not the leader; no leader known yet".into()))
}

impl Replica {
    /// Start this server's Raft node on `ns` (whose store holds the log too). The server with
    /// the lowest id forms the group the first time; the others join when it reaches them.
    pub async fn start(group: &crate::RaftGroup, ns: Arc<Namespace>, ep: quinn::Endpoint) -> anyhow::Result<Arc<Replica>> {
        let (id, peers) = (group.id, group.peers.clone());
        anyhow::ensure!(peers.contains_key(&id), "--peers does not name this server's --id {id}");
        let config = openraft::Config {
            cluster_name: "tessera".into(),
            heartbeat_interval: HEARTBEAT_MS,
            election_timeout_min: ELECTION_MS.0,
            election_timeout_max: ELECTION_MS.1,
            // An append stays well below the largest frame (a block-map commit is ~400 KiB).
            max_payload_entries: 32,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(group.snapshot_every.max(1)),
            // Kept behind a snapshot, so that a follower a little behind gets entries, not the
            // whole state.
            max_in_snapshot_log_to_keep: (group.snapshot_every / 10).min(1_000),
            install_snapshot_timeout: 3_000,
            ..Default::default()
        }
        .validate()
        .context("raft configuration")?;
        let raft = Raft::new(id, Arc::new(config), network::Network { ep: ep.clone() }, log::LogStore::new(ns.clone()), machine::StateMachine::new(ns)).await.context("starting raft")?;
        if !raft.is_initialized().await.context("raft")? && peers.keys().next() == Some(&id) {
            tokio::spawn(form_group(raft.clone(), id, peers.clone(), ep));
        }
        Ok(Arc::new(Replica { raft, id, peers, rt: tokio::runtime::Handle::current() }))
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// The current term, if this server leads.
    pub fn leading_term(&self) -> Option<u64> {
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.state == ServerState::Leader).then_some(m.current_term)
    }

    /// The leader's client address, if one is known.
    pub fn leader_addr(&self) -> Option<String> {
        let leader = self.raft.metrics().borrow().current_leader?;
        self.peers.get(&leader).cloned()
    }

    /// Changes of leadership, for the duties that follow it.
    pub fn metrics(&self) -> tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, BasicNode>> {
        self.raft.metrics()
    }

    /// Append `cmd` to the log; its outcome once it is committed and applied here.
    pub async fn propose_async(&self, cmd: &Command) -> Result<Outcome, WireError> {
        match self.raft.client_write(Proposal(cmd.encode())).await {
            Ok(r) => r.data.0,
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(not_leader(f.leader_node.map(|n| n.addr))),
            Err(e) => Err(WireError::new(ErrorCode::Unavailable, format!("raft: {e}"))),
        }
    }

    /// Return once this server is known to still lead, with everything committed before the
    /// call applied: a read after this sees every acknowledged change.
    pub async fn ensure_linearizable(&self) -> Result<(), WireError> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => Err(not_leader(f.leader_node.map(|n| n.addr))),
            Err(e) => Err(WireError::new(ErrorCode::Unavailable, format!("raft: {e}"))),
        }
    }

    /// Answer a Raft message from another metadata server: openraft's reply, encoded.
    pub async fn handle(&self, rpc: RaftRpc, body: &[u8]) -> Result<Vec<u8>, String> {
        Ok(match rpc {
            RaftRpc::Append => log::enc(&self.raft.append_entries(log::dec(body)?).await),
            RaftRpc::Vote => log::enc(&self.raft.vote(log::dec(body)?).await),
            RaftRpc::Snapshot => log::enc(&self.raft.install_snapshot(log::dec(body)?).await),
            RaftRpc::Probe => log::enc(&self.raft.is_initialized().await.map_err(|e| e.to_string())?),
        })
    }

    /// The group as this server (the leader) sees it, for `tessera status`.
    pub fn group_status(&self) -> Vec<MetaServerStatus> {
        let m = self.raft.metrics().borrow().clone();
        let last = m.last_log_index.unwrap_or(0);
        let matched: BTreeMap<u64, u64> = m
            .membership_config
            .nodes()
            .map(|(id, _)| {
                let known = if *id == self.id { Some(last) } else { m.replication.as_ref().and_then(|r| r.get(id)).and_then(|l| l.as_ref()).map(|l| l.index) };
                (*id, known.unwrap_or(0))
            })
            .collect();
        // The highest index a majority holds.
        let mut held: Vec<u64> = matched.values().copied().collect();
        held.sort_unstable_by(|a, b| b.cmp(a));
        let commit = held.get(held.len() / 2).copied().unwrap_or(0);
        matched
            .iter()
            .map(|(id, idx)| MetaServerStatus {
                id: *id,
                addr: self.peers.get(id).cloned().unwrap_or_default(),
                role: if *id == self.id { "leader".into() } else { "follower".into() },
                term: m.current_term,
                log_index: *idx,
                lag: last.saturating_sub(*idx),
                commit_index: commit,
                applied_index: (*id == self.id).then(|| m.last_applied.map(|l| l.index).unwrap_or(0)),
            })
            .collect()
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

/// The first start of a group, on the server with the lowest id: it forms the group once every
/// other server has answered that it holds no log. If one does, the group exists and this
/// server lost its data: it waits for the leader to bring it up to date instead of founding a
/// second group under the same ids.
async fn form_group(raft: Raft<TypeConfig>, id: u64, peers: BTreeMap<u64, String>, ep: quinn::Endpoint) {
    let others: Vec<&String> = peers.iter().filter(|(i, _)| **i != id).map(|(_, a)| a).collect();
    let mut said = false;
    loop {
        if raft.is_initialized().await.unwrap_or(true) {
            return;
        }
        let answers = futures::future::join_all(others.iter().map(|a| network::Peer::probe(&ep, a))).await;
        if answers.contains(&Some(true)) {
            tracing::warn!("another metadata server already holds the group's log: not forming a new group; waiting for the leader to bring this server up to date");
            return;
        }
        if answers.iter().all(|a| *a == Some(false)) {
            let members: BTreeMap<u64, BasicNode> = peers.iter().map(|(i, a)| (*i, BasicNode::new(a))).collect();
            match raft.initialize(members).await {
                Ok(()) => tracing::info!(servers = peers.len(), "formed the metadata group"),
                Err(e) => tracing::info!("raft group not formed here: {e}"),
            }
            return;
        }
        if !said {
            tracing::info!("waiting for every metadata server of --peers to answer before forming the group");
            said = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

impl Replicate for Replica {
    /// Blocks: called on the blocking threads that apply requests.
    fn propose(&self, cmd: &Command) -> Result<Outcome, WireError> {
        self.rt.block_on(self.propose_async(cmd))
    }
}
