//! A connection to the metadata service given as a list of addresses (`--meta A[,B...]`).
//! Every address must present a metadata server certificate (role meta). Calls go to the
//! current leader; a `NotLeader` reply or a lost connection moves on to the
//! named leader or the next address.

use crate::net::{NetError, RpcClient};
use crate::proto::meta::{MetaRequest, MetaResponse};
use crate::tls::Role;
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a server may take to answer before the next address is asked as well.
pub const HEDGE: Duration = Duration::from_millis(500);

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

    /// Call the leader, following it across the address list until `timeout`.
    pub async fn call(&self, req: &MetaRequest) -> Result<MetaResponse, NetError> {
        Ok(self.call_payload(req).await?.0)
    }

    /// [`call`](Self::call), keeping the reply's payload.
    ///
    /// With several addresses: the request goes to the server that answered last; a
    /// `NotLeader` reply sends it to the leader it names (or, while none is known, to the next
    /// address after a pause). A server that has not answered within [`HEDGE`] (a leader that
    /// died keeps its connection until the idle timeout) is not waited for alone: the next
    /// address is asked too, and the first real answer wins. Asking twice is safe: mutations
    /// carry their `(session, seq)`, so a second delivery is answered from the retry cache.
    pub async fn call_payload(&self, req: &MetaRequest) -> Result<(MetaResponse, Vec<u8>), NetError> {
        let (only, n) = self.client(0);
        if n == 1 {
            match only.call::<_, MetaResponse>(req, &[]).await {
                // Given one server of a group, not its leader: follow the leader it names.
                Ok((MetaResponse::NotLeader { leader: Some(l) }, _)) => {
                    self.index_of(&l);
                }
                r => return r,
            }
        }
        let n = self.len();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let ask = |idx: usize, delay: Duration| {
            let (c, _) = self.client(idx);
            async move {
                // Not even a zero sleep on the way to the leader: tokio's timer fires on
                // its next millisecond tick, which was most of a lookup's time.
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                (idx, c.call::<_, MetaResponse>(req, &[]).await)
            }
        };
        let mut inflight = FuturesUnordered::new();
        let mut asking: HashSet<usize> = HashSet::new();
        let first = self.current.load(Ordering::Relaxed) % n;
        inflight.push(ask(first, Duration::ZERO));
        asking.insert(first);
        let mut next_hedge = first + 1;
        let mut hedge = tokio::time::interval_at(tokio::time::Instant::now() + HEDGE, HEDGE);
        let mut last = None;
        loop {
            tokio::select! {
                Some((idx, r)) = inflight.next() => {
                    asking.remove(&idx);
                    let n = self.len();
                    let (retry, delay) = match r {
                        Ok((MetaResponse::NotLeader { leader: Some(l) }, _)) => {
                            last = Some(NetError::Lost { addr: self.client(idx).0.addr().to_string(), reason: format!("not the leader (the leader is {l})") });
                            let to = self.index_of(&l);
                            // A stale hint (the server it names says otherwise): ask again shortly.
                            (to, if to == idx { Duration::from_millis(50) } else { Duration::ZERO })
                        }
                        Ok((MetaResponse::NotLeader { leader: None }, _)) => {
                            last = Some(NetError::Lost { addr: self.client(idx).0.addr().to_string(), reason: "not the leader (an election is under way)".into() });
                            ((idx + 1) % n, Duration::from_millis(50))
                        }
                        Ok(answer) => {
                            self.current.store(idx, Ordering::Relaxed);
                            return Ok(answer);
                        }
                        Err(e) => {
                            last = Some(e);
                            ((idx + 1) % n, Duration::from_millis(50))
                        }
                    };
                    // Already waiting on the server named (a leader that may have died): ask
                    // this one again shortly, to learn the new leader once it is elected.
                    let (to, delay) = if asking.contains(&retry) { (idx, Duration::from_millis(50)) } else { (retry, delay) };
                    asking.insert(to);
                    inflight.push(ask(to, delay));
                }
                _ = hedge.tick() => {
                    let n = self.len();
                    if let Some(idx) = (0..n).map(|k| (next_hedge + k) % n).find(|i| !asking.contains(i)) {
                        next_hedge = idx + 1;
                        asking.insert(idx);
                        inflight.push(ask(idx, Duration::ZERO));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(last.unwrap_or_else(|| NetError::Timeout { addr: self.client(first).0.addr().to_string(), secs: self.timeout.as_secs() }));
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.clients.lock().unwrap().len()
    }

    /// The index of `addr`, added to the list if it is not there (a leader named by a peer).
    fn index_of(&self, addr: &str) -> usize {
        let mut cs = self.clients.lock().unwrap();
        match cs.iter().position(|c| c.addr() == addr) {
            Some(p) => p,
            None => {
                cs.push(meta_client(&self.ep, addr, self.timeout));
                cs.len() - 1
            }
        }
    }
}
