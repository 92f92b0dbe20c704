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

mod lease;
pub mod log;
mod machine;
mod network;

use crate::namespace::{Command, Namespace, Op, Outcome, Replicate};
use anyhow::Context;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{AnyError, BasicNode, ChangeMembers, Raft, ServerState, SnapshotPolicy, StorageError, StorageIOError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use tessera_common::proto::meta::{MetaServerStatus, ProbeReply, RaftRpc};
use tessera_common::{ErrorCode, WireError};

/// What a log entry holds: encoded [`Command`]s (see `Command::encode`), applied in order.
/// Commands proposed while earlier entries are being written share one entry, so that
/// concurrent clients share one log write, one WAL sync and one round to the followers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Proposal(#[serde(with = "commands")] pub Vec<Vec<u8>>);

/// Each command as one byte string, not a sequence of numbers: the same encoding, which bincode
/// then writes and reads with one copy instead of a call per byte (a command carrying 4 KiB of
/// data was encoded or decoded byte by byte at each step of its way through the log).
mod commands {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(cmds: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(cmds.iter().map(|c| serde_bytes::Bytes::new(c)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Ok(Vec::<serde_bytes::ByteBuf>::deserialize(d)?.into_iter().map(|b| b.into_vec()).collect())
    }
}

/// What applying an entry gave, one outcome per command (the leader passes them to the
/// proposers).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Applied(pub Vec<Result<Outcome, WireError>>);

/// Most bytes of commands in one entry (a single larger command gets an entry of its own).
const BATCH_BYTES: usize = 256 << 10;
/// Entries being written at once. With one, a command proposed while an entry is written
/// waits for it to finish before its own entry starts (a mount's close, sent without waiting,
/// delayed its next create by a whole write); with two, it starts at once. More than that
/// only splits a burst into more entries and syncs.
const IN_FLIGHT: usize = 2;

type Waiting = (Vec<u8>, tokio::sync::oneshot::Sender<Result<Outcome, WireError>>);

/// Gather proposals into entries: up to `IN_FLIGHT` entries are written at once, and the
/// commands proposed while none can start (up to `BATCH_BYTES`) form the next one; each command
/// gets its own outcome. Entries reach the log in the order they are formed.
async fn batcher(raft: Raft<TypeConfig>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Waiting>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut bytes = first.0.len();
        let mut batch = vec![first];
        while bytes < BATCH_BYTES {
            match rx.try_recv() {
                Ok(w) => {
                    bytes += w.0.len();
                    batch.push(w);
                }
                Err(_) => break,
            }
        }
        let (cmds, waiting): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let n = cmds.len();
        // Handed to openraft here, in order; the outcome is awaited beside the next entries.
        let sent = raft.client_write_ff(Proposal(cmds)).await;
        tokio::spawn(async move {
            let outcomes = match sent {
                Err(e) => vec![Err(WireError::new(ErrorCode::Unavailable, format!("raft: {e}"))); n],
                Ok(written) => match written.await {
                    Ok(Ok(r)) if r.data.0.len() == n => r.data.0,
                    Ok(Ok(r)) => vec![Err(WireError::new(ErrorCode::Internal, format!("{} outcomes for {n} commands", r.data.0.len()))); n],
                    Ok(Err(ClientWriteError::ForwardToLeader(f))) => vec![Err(not_leader(f.leader_node.map(|n| n.addr))); n],
                    Ok(Err(e)) => vec![Err(WireError::new(ErrorCode::Unavailable, format!("raft: {e}"))); n],
                    Err(_) => vec![Err(WireError::new(ErrorCode::Unavailable, "raft: shutting down")); n],
                },
            };
            for (tx, out) in waiting.into_iter().zip(outcomes) {
                let _ = tx.send(out);
            }
            drop(slot);
        });
    }
}

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
pub(crate) const ELECTION_MS: (u64, u64) = (200, 400);

pub struct Replica {
    raft: Raft<TypeConfig>,
    id: u64,
    ep: quinn::Endpoint,
    rt: tokio::runtime::Handle,
    /// One membership change at a time (`tessera meta add|remove`); openraft refuses a second
    /// one while the first is under way, this makes it wait instead.
    changing: tokio::sync::Mutex<()>,
    /// To the batcher, which proposes queued commands together.
    proposals: tokio::sync::mpsc::UnboundedSender<Waiting>,
    lease: Arc<lease::Lease>,
    /// Reads answered from the lease, and after the followers confirmed the lead.
    reads: [std::sync::atomic::AtomicU64; 2],
}

/// How long `tessera meta add` waits for the new server to catch up before it gives up.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(60);

fn invalid(m: String) -> WireError {
    WireError::new(ErrorCode::InvalidArgument, m)
}

fn change_error(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> WireError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(f.leader_node.map(|n| n.addr)),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => WireError::new(ErrorCode::Unavailable, format!("membership change refused: {e}")),
        e => WireError::new(ErrorCode::Unavailable, format!("raft: {e}")),
    }
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
        // A namespace that no log entry made reaches other servers only as a snapshot, which
        // is taken before anyone joins (`add_server`); servers that formed a group with it
        // would replay the log from its start and build a namespace of their own.
        let unlogged = machine::holds_unlogged_namespace(&ns).map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            !unlogged || peers.len() == 1,
            "this data directory holds metadata that is in no Raft log (a server that ran alone, or a restore): start it as a group of one (--peers naming only this server), then add the others with tessera meta add (docs/raft.md)"
        );
        let lease = Arc::new(lease::Lease::default());
        let raft = Raft::new(id, Arc::new(config), network::Network::new(ep.clone(), lease.clone()), log::LogStore::new(ns.clone()), machine::StateMachine::new(ns)).await.context("starting raft")?;
        // A server started to be added (`--join`) waits for the leader instead.
        if !group.join && !raft.is_initialized().await.context("raft")? && peers.keys().next() == Some(&id) {
            tokio::spawn(form_group(raft.clone(), id, peers, ep.clone()));
        }
        let (proposals, queued) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(batcher(raft.clone(), queued));
        Ok(Arc::new(Replica { raft, id, ep, rt: tokio::runtime::Handle::current(), changing: Default::default(), proposals, lease, reads: Default::default() }))
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

    /// The leader's client address, if one is known (from the membership in the log, which
    /// holds every member's address, also of servers added after `--peers` was written).
    pub fn leader_addr(&self) -> Option<String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let leader = m.current_leader?;
        m.membership_config.membership().get_node(&leader).map(|n| n.addr.clone())
    }

    /// Changes of leadership, for the duties that follow it.
    pub fn metrics(&self) -> tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, BasicNode>> {
        self.raft.metrics()
    }

    /// Append `cmd` to the log; its outcome once it is committed and applied here.
    pub async fn propose_async(&self, cmd: &Command) -> Result<Outcome, WireError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.proposals.send((cmd.encode(), tx)).map_err(|_| WireError::new(ErrorCode::Unavailable, "raft: shutting down"))?;
        rx.await.map_err(|_| WireError::new(ErrorCode::Unavailable, "raft: shutting down"))?
    }

    /// Return once this server is known to still lead, with everything committed before the
    /// call applied: a read after this sees every acknowledged change.
    pub async fn ensure_linearizable(&self) -> Result<(), WireError> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => Err(not_leader(f.leader_node.map(|n| n.addr))),
            // A majority did not confirm the lead (just elected, or cut off): not a leader
            // to read from yet; the caller asks again, as during an election.
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::QuorumNotEnough(_))) => Err(not_leader(None)),
            Err(e) => Err(WireError::new(ErrorCode::Unavailable, format!("raft: {e}"))),
        }
    }

    /// Whether this server may answer a read from its own state now, without asking the
    /// followers (`lease`): it leads, holds the lease of its term, and has applied an entry
    /// it proposed in this term (so every entry committed before it led is applied here; two
    /// leaders may share a term in openraft, which orders them by id). A read checks
    /// this before and after it reads the state; if either fails it uses
    /// [`Self::ensure_linearizable`].
    pub fn lease_holds(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        if m.state != ServerState::Leader || m.current_leader != Some(self.id) || m.last_applied.map(|l| (l.leader_id.term, l.leader_id.node_id)) != Some((m.current_term, self.id)) {
            return false;
        }
        let membership = m.membership_config.membership();
        if membership.get_joint_config().len() != 1 {
            return false;
        }
        let voters: Vec<u64> = membership.voter_ids().collect();
        self.lease.holds(self.id, m.current_term, &voters)
    }

    pub fn count_read(&self, from_lease: bool) {
        self.reads[usize::from(!from_lease)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Reads answered from the lease, and confirmed by the followers.
    pub fn reads(&self) -> (u64, u64) {
        let r = |i: usize| self.reads[i].load(std::sync::atomic::Ordering::Relaxed);
        (r(0), r(1))
    }

    /// `tessera meta add ID ADDR`: the server at `addr`, started with `--id id --join`, joins
    /// as a learner, catches up, then votes. Returns once the new membership is committed;
    /// changes nothing if it fails. Asking again for a change that is done answers `Ok`
    /// (a caller that lost the reply retries).
    pub async fn add_server(&self, ns: &Namespace, id: u64, addr: &str) -> Result<(), WireError> {
        let _one = self.changing.lock().await;
        self.ensure_linearizable().await?;
        if ns.is_retired_meta_server(id)? {
            return Err(invalid(format!("metadata server id {id} was removed from the group, and a removed id is never used again: start the new server with another --id")));
        }
        let membership = self.raft.metrics().borrow().membership_config.membership().clone();
        match membership.get_node(&id) {
            Some(n) if n.addr == addr && membership.voter_ids().any(|v| v == id) => return Ok(()),
            Some(n) => return Err(WireError::new(ErrorCode::Exists, format!("metadata server {id} is a member already (at {})", n.addr))),
            None => {}
        }
        if let Some((other, _)) = membership.nodes().find(|(_, n)| n.addr == addr) {
            return Err(invalid(format!("{addr} is the address of metadata server {other}")));
        }
        match network::Peer::probe(&self.ep, addr).await {
            None => return Err(WireError::new(ErrorCode::Unavailable, format!("no metadata server answers at {addr}: start it first with --id {id} --join"))),
            Some(p) if p.id != id => return Err(invalid(format!("the metadata server at {addr} runs with --id {}, not {id}", p.id))),
            Some(p) if p.has_log => return Err(invalid(format!("the metadata server at {addr} holds a Raft log already: start it on an empty data directory"))),
            Some(_) => {}
        }
        // The new server starts from a snapshot, never from the log's first entry: the store
        // may hold state that no entry made (a restore).
        if self.raft.metrics().borrow().purged.is_none() {
            self.compact().await.map_err(|e| WireError::new(ErrorCode::Unavailable, format!("taking a snapshot for the new server: {e:#}")))?;
        }
        match tokio::time::timeout(CATCH_UP, self.raft.add_learner(id, BasicNode::new(addr), true)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(change_error(e)),
            Err(_) => {
                // Not caught up: take the learner out again.
                let _ = self.raft.change_membership(ChangeMembers::RemoveNodes([id].into()), false).await;
                return Err(WireError::new(ErrorCode::Unavailable, format!("metadata server {id} did not catch up within {} s; it was not added", CATCH_UP.as_secs())));
            }
        }
        self.raft.change_membership(ChangeMembers::AddVoterIds([id].into()), false).await.map_err(change_error)?;
        tracing::info!(id, addr, "metadata server added to the group");
        Ok(())
    }

    /// `tessera meta remove ID`: the server leaves the group (a leader that removes itself
    /// steps down once the change is committed, and the others elect one of them). Its id is
    /// retired first, so that even a change cut short leaves it unusable.
    pub async fn remove_server(&self, ns: &Namespace, id: u64) -> Result<(), WireError> {
        let _one = self.changing.lock().await;
        self.ensure_linearizable().await?;
        let membership = self.raft.metrics().borrow().membership_config.membership().clone();
        if membership.get_node(&id).is_none() {
            if ns.is_retired_meta_server(id)? {
                return Ok(());
            }
            return Err(WireError::new(ErrorCode::NotFound, format!("no metadata server {id} in the group")));
        }
        let voter = membership.voter_ids().any(|v| v == id);
        if voter && membership.voter_ids().count() == 1 {
            return Err(invalid(format!("metadata server {id} is the only one left")));
        }
        self.propose_async(&Command::new(Op::RetireMetaServer { id })).await?;
        let change = if voter { ChangeMembers::RemoveVoters([id].into()) } else { ChangeMembers::RemoveNodes([id].into()) };
        self.raft.change_membership(change, false).await.map_err(change_error)?;
        tracing::info!(id, "metadata server removed from the group");
        Ok(())
    }

    /// Take a snapshot of everything applied and drop the log it covers: from then on a server
    /// that joins receives the state as a snapshot, not by replaying the log (which misses
    /// state that no log entry made, such as a restore's).
    pub async fn compact(&self) -> anyhow::Result<()> {
        // Lead first, with the leader's first entry applied: the snapshot must come after
        // every entry a new server could otherwise be sent (the first ones are `Init`, which
        // on an empty server would make a namespace of its own).
        let since = std::time::Instant::now();
        while let Err(e) = self.ensure_linearizable().await {
            anyhow::ensure!(since.elapsed() < std::time::Duration::from_secs(30), "not leading after 30 s: {e}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let applied = self.raft.metrics().borrow().last_applied;
        self.raft.trigger().snapshot().await.context("raft")?;
        self.raft.wait(Some(std::time::Duration::from_secs(60))).metrics(|m| m.snapshot >= applied, "snapshot of the applied log").await.context("waiting for the snapshot")?;
        if let Some(upto) = applied {
            self.raft.trigger().purge_log(upto.index).await.context("raft")?;
            self.raft.wait(Some(std::time::Duration::from_secs(60))).metrics(|m| m.purged >= Some(upto), "log purged").await.context("waiting for the log purge")?;
        }
        tracing::info!(?applied, "snapshot taken and the log before it dropped");
        Ok(())
    }

    /// Answer a Raft message for server `to` from another metadata server: openraft's reply,
    /// encoded. A message for another id is refused: a server started empty at the address of
    /// one that was removed must neither take that one's log nor vote in its name (it
    /// remembers none of that one's votes).
    pub async fn handle(&self, rpc: RaftRpc, to: u64, body: &[u8]) -> Result<Vec<u8>, String> {
        if rpc != RaftRpc::Probe && to != self.id {
            return Err(format!("this is metadata server {}, not {to}", self.id));
        }
        Ok(match rpc {
            RaftRpc::Append => log::enc(&self.raft.append_entries(log::dec(body)?).await),
            RaftRpc::Vote => {
                let req: openraft::raft::VoteRequest<u64> = log::dec(body)?;
                let term = req.vote.leader_id.term;
                let r = self.raft.vote(req).await;
                // Before the candidate can learn of the grant (this reply): the lease of an
                // earlier term ends here.
                if matches!(&r, Ok(v) if v.vote_granted) {
                    self.lease.granting(term);
                }
                log::enc(&r)
            }
            RaftRpc::Snapshot => log::enc(&self.raft.install_snapshot(log::dec(body)?).await),
            RaftRpc::Probe => log::enc(&ProbeReply { id: self.id, has_log: self.raft.is_initialized().await.map_err(|e| e.to_string())? }),
        })
    }

    /// The group as this server (the leader) sees it, for `tessera status`.
    pub fn group_status(&self) -> Vec<MetaServerStatus> {
        let m = self.raft.metrics().borrow().clone();
        let last = m.last_log_index.unwrap_or(0);
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let matched: BTreeMap<u64, (u64, String)> = membership
            .nodes()
            .map(|(id, node)| {
                let known = if *id == self.id { Some(last) } else { m.replication.as_ref().and_then(|r| r.get(id)).and_then(|l| l.as_ref()).map(|l| l.index) };
                (*id, (known.unwrap_or(0), node.addr.clone()))
            })
            .collect();
        // The highest index a majority of the voters holds.
        let mut held: Vec<u64> = matched.iter().filter(|(id, _)| voters.contains(id)).map(|(_, (i, _))| *i).collect();
        held.sort_unstable_by(|a, b| b.cmp(a));
        let commit = held.get(held.len() / 2).copied().unwrap_or(0);
        matched
            .iter()
            .map(|(id, (idx, addr))| MetaServerStatus {
                id: *id,
                addr: addr.clone(),
                role: if *id == self.id {
                    "leader".into()
                } else if voters.contains(id) {
                    "follower".into()
                } else {
                    "learner".into()
                },
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
        let answers: Vec<Option<bool>> = futures::future::join_all(others.iter().map(|a| network::Peer::probe(&ep, a))).await.into_iter().map(|p| p.map(|p| p.has_log)).collect();
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

#[cfg(test)]
mod tests {
    /// Entries in logs written before commands were encoded as byte strings still decode.
    #[test]
    fn a_proposal_encodes_as_a_list_of_byte_sequences() {
        let cmds = vec![vec![1u8, 2, 3], (0..300u32).map(|i| i as u8).collect(), vec![]];
        let new = super::log::enc(&super::Proposal(cmds.clone()));
        assert_eq!(new, super::log::enc(&(cmds.clone(),)));
        let back: super::Proposal = super::log::dec(&new).unwrap();
        assert_eq!(back.0, cmds);
    }
}
