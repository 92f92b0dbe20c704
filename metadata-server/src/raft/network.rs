//! Raft messages between metadata servers: `MetaRequest::Raft` over the same QUIC endpoint and
//! certificates as everything else (both ends must hold role meta), openraft's request and
//! reply as bincode payloads.

use super::lease::Lease;
use super::log::{dec, enc};
use super::TypeConfig;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse};
use openraft::BasicNode;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tessera_common::net::{NetError, RpcClient};
use tessera_common::proto::meta::{MetaRequest, MetaResponse, ProbeReply, RaftRpc};
use tessera_common::tls::Role;

/// Long enough for a snapshot chunk (3 MiB) on a slow link.
const RPC_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Network {
    pub ep: quinn::Endpoint,
    /// One client (one QUIC connection) per server, shared: openraft asks for a new client for
    /// every leadership check (each linearizable read), which must not cost a handshake.
    pub clients: Arc<std::sync::Mutex<HashMap<String, Arc<RpcClient>>>>,
    /// Told of every append a follower accepted.
    lease: Arc<Lease>,
}

impl Network {
    pub fn new(ep: quinn::Endpoint, lease: Arc<Lease>) -> Self {
        Network { ep, clients: Arc::default(), lease }
    }
}

pub struct Peer {
    target: u64,
    client: Arc<RpcClient>,
    lease: Arc<Lease>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;
    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        let client = self.clients.lock().unwrap().entry(node.addr.clone()).or_insert_with(|| Arc::new(RpcClient::new(self.ep.clone(), &node.addr, 1, RPC_TIMEOUT, Role::Meta))).clone();
        Peer { target, client, lease: self.lease.clone() }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Garbled(String);

impl Peer {
    /// Who runs at `addr` and whether it holds a Raft log (`RaftRpc::Probe`); `None` if it
    /// cannot be asked.
    pub async fn probe(ep: &quinn::Endpoint, addr: &str) -> Option<ProbeReply> {
        let client = RpcClient::new(ep.clone(), addr, 1, RPC_TIMEOUT, Role::Meta);
        match client.call::<_, MetaResponse>(&MetaRequest::Raft { rpc: RaftRpc::Probe, to: 0 }, &[]).await {
            Ok((MetaResponse::Raft, body)) => dec::<ProbeReply>(&body).ok(),
            _ => None,
        }
    }

    async fn call<Q: Serialize, R: DeserializeOwned, E: std::error::Error + DeserializeOwned>(&self, rpc: RaftRpc, req: &Q) -> Result<R, RPCError<u64, BasicNode, E>> {
        let (resp, body) = match self.client.call::<_, MetaResponse>(&MetaRequest::Raft { rpc, to: self.target }, &enc(req)).await {
            Ok(r) => r,
            Err(e @ (NetError::Connect { .. } | NetError::Resolve(_))) => return Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => return Err(RPCError::Network(NetworkError::new(&e))),
        };
        match resp {
            MetaResponse::Raft => match dec::<Result<R, E>>(&body) {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
                Err(e) => Err(RPCError::Network(NetworkError::new(&Garbled(e)))),
            },
            other => Err(RPCError::Network(NetworkError::new(&Garbled(format!("{:?} in reply to a raft message", other))))),
        }
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(&mut self, rpc: AppendEntriesRequest<TypeConfig>, _: RPCOption) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let (sent, vote) = (std::time::Instant::now(), rpc.vote);
        let r = self.call(RaftRpc::Append, &rpc).await;
        // Any answer but a higher vote means the follower took our vote and renewed its lease
        // on receipt, which came after `sent`.
        if vote.committed && matches!(r, Ok(AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_) | AppendEntriesResponse::Conflict)) {
            self.lease.acked(self.target, vote.leader_id.term, sent);
        }
        r
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>> {
        self.call(RaftRpc::Snapshot, &rpc).await
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, _: RPCOption) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(RaftRpc::Vote, &rpc).await
    }
}
