//! A connection to the metadata service given as a list of addresses (`--meta A[,B...]`).
//! Every address must present a metadata server certificate (role meta). Calls go to the
//! current leader; a `NotLeader` reply or a lost connection moves on to the
//! named leader or the next address.

use crate::net::{NetError, RpcClient};
use crate::proto::meta::{MetaRequest, MetaResponse};
use crate::tls::Role;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct MetaLink {
    ep: quinn::Endpoint,
    clients: std::sync::Mutex<Vec<Arc<RpcClient>>>,
    current: AtomicUsize,
    timeout: Duration,
}

/// Parse `A[,B...]` into addresses; errors name the problem in one line.
pub fn parse_meta_list(list: &str) -> Result<Vec<String>, String> {
    let addrs: Vec<String> = list.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    if addrs.is_empty() {
        return Err("no metadata server address given (--meta or TESSERA_META)".into());
    }
    for a in &addrs {
        if a.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
            return Err(format!("metadata address '{a}' is not HOST:PORT"));
        }
    }
    Ok(addrs)
}

/// Callers of the metadata service retry at their own pace while it is away (a restart, a
/// failover) and would rather wait for the next connection attempt than fail at once.
fn meta_client(ep: &quinn::Endpoint, addr: &str, timeout: Duration) -> Arc<RpcClient> {
    Arc::new(RpcClient::new(ep.clone(), addr, 1, timeout, Role::Meta).with_retry_after(Duration::ZERO))
}

impl MetaLink {
    pub fn new(ep: quinn::Endpoint, addrs: &[String], timeout: Duration) -> Self {
        let clients = addrs.iter().map(|a| meta_client(&ep, a, timeout)).collect();
        MetaLink { ep, clients: std::sync::Mutex::new(clients), current: AtomicUsize::new(0), timeout }
    }

    fn client(&self, i: usize) -> (Arc<RpcClient>, usize) {
        let c = self.clients.lock().unwrap();
        let i = i % c.len();
        (c[i].clone(), c.len())
    }

    /// Call the leader. Retries over the address list once per address.
    pub async fn call(&self, req: &MetaRequest) -> Result<MetaResponse, NetError> {
        Ok(self.call_payload(req).await?.0)
    }

    /// [`call`](Self::call), keeping the reply's payload.
    pub async fn call_payload(&self, req: &MetaRequest) -> Result<(MetaResponse, Vec<u8>), NetError> {
        let start = self.current.load(Ordering::Relaxed);
        let (_, n) = self.client(start);
        let mut last = None;
        for k in 0..n.max(1) + 1 {
            let i = start + k;
            let (c, _) = self.client(i);
            match c.call::<_, MetaResponse>(req, &[]).await {
                Ok((MetaResponse::NotLeader { leader }, _)) => {
                    if let Some(l) = leader {
                        let mut cs = self.clients.lock().unwrap();
                        let idx = match cs.iter().position(|c| c.addr() == l) {
                            Some(p) => p,
                            None => {
                                cs.push(meta_client(&self.ep, &l, self.timeout));
                                cs.len() - 1
                            }
                        };
                        self.current.store(idx, Ordering::Relaxed);
                    } else {
                        self.current.store(i + 1, Ordering::Relaxed);
                    }
                    last = Some(NetError::Lost { addr: c.addr().to_string(), reason: "not the leader".into() });
                }
                Ok((resp, payload)) => {
                    self.current.store(i % n.max(1), Ordering::Relaxed);
                    return Ok((resp, payload));
                }
                Err(e) => {
                    if n == 1 {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap())
    }
}
