//! A connection to the metadata service given as a list of addresses (`--meta A[,B...]`).
//! Every address must present a metadata server certificate (role meta). Calls go to the
//! current leader; a `NotLeader` reply or a lost connection moves on to the
//! named leader or the next address.

use crate::net::{NetError, RpcClient};
use crate::proto::meta::{MetaRequest, MetaResponse};
use crate::tls::Role;
use crate::ErrorCode;
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a server may take to answer before the next address is asked as well.
pub const HEDGE: Duration = Duration::from_millis(500);

/// The pause before asking a server again: while an election is under way, after a stale
/// leader hint, after an `Unavailable` reply. Asking again is safe: mutations carry their
/// `(session, seq)`, so a second delivery is answered from the retry cache.
const AGAIN: Duration = Duration::from_millis(50);

pub struct MetaLink {
    ep: quinn::Endpoint,
    clients: std::sync::Mutex<Vec<Arc<RpcClient>>>,
    current: AtomicUsize,
    timeout: Duration,
    retry_unavailable: bool,
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
        MetaLink { ep, clients: std::sync::Mutex::new(clients), current: AtomicUsize::new(0), timeout, retry_unavailable: false }
    }

    /// Calls answered `Unavailable` are asked again until their deadline: for the mount, whose
    /// requests get it only while a server starts or its Raft changes hands. Administrative
    /// calls keep it as their answer: there it also reports lasting causes ("no metadata
    /// server answers at ...").
    pub fn retrying_unavailable(mut self) -> Self {
        self.retry_unavailable = true;
        self
    }

    /// A reply to ask again for, shortly (see [`retrying_unavailable`](Self::retrying_unavailable)).
    fn again(&self, r: &MetaResponse) -> bool {
        self.retry_unavailable && matches!(r, MetaResponse::Error(e) if e.code == ErrorCode::Unavailable)
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
    /// With [`retrying_unavailable`](Self::retrying_unavailable), an `Unavailable` answer is
    /// asked again too, with one address or several.
    pub async fn call_payload(&self, req: &MetaRequest) -> Result<(MetaResponse, Vec<u8>), NetError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let (only, n) = self.client(0);
        if n == 1 {
            loop {
                match only.call::<_, MetaResponse>(req, &[]).await {
                    // Given one server of a group, not its leader: follow the leader it names.
                    Ok((MetaResponse::NotLeader { leader: Some(l) }, _)) => {
                        self.index_of(&l);
                        break;
                    }
                    Ok(answer) if self.again(&answer.0) && tokio::time::Instant::now() + AGAIN < deadline => tokio::time::sleep(AGAIN).await,
                    r => return r,
                }
            }
        }
        let n = self.len();
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
        let mut unavailable_answer = None;
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
                            (to, if to == idx { AGAIN } else { Duration::ZERO })
                        }
                        Ok((MetaResponse::NotLeader { leader: None }, _)) => {
                            last = Some(NetError::Lost { addr: self.client(idx).0.addr().to_string(), reason: "not the leader (an election is under way)".into() });
                            ((idx + 1) % n, AGAIN)
                        }
                        // Starting up, or its Raft shutting down: ask again shortly, the next
                        // server if there is one; at the deadline this answer is the answer.
                        Ok(answer) if self.again(&answer.0) => {
                            unavailable_answer = Some(answer);
                            ((idx + 1) % n, AGAIN)
                        }
                        Ok(answer) => {
                            self.current.store(idx, Ordering::Relaxed);
                            return Ok(answer);
                        }
                        Err(e) => {
                            last = Some(e);
                            ((idx + 1) % n, AGAIN)
                        }
                    };
                    // Already waiting on the server named (a leader that may have died): ask
                    // this one again shortly, to learn the new leader once it is elected.
                    let (to, delay) = if asking.contains(&retry) { (idx, AGAIN) } else { (retry, delay) };
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
                    if let Some(answer) = unavailable_answer {
                        return Ok(answer);
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{client_endpoint, serve, server_endpoint, Service};
    use crate::tls::{init_ca, issue, Identity, NodeCerts};
    use crate::WireError;
    use std::sync::atomic::AtomicU32;

    /// A metadata server that is starting up for its first `away` requests.
    struct Starting {
        away: u32,
        calls: AtomicU32,
    }

    impl Service for Starting {
        type Req = MetaRequest;
        type Resp = MetaResponse;
        async fn handle(self: Arc<Self>, _peer: Arc<Identity>, _req: MetaRequest, _payload: Vec<u8>) -> (MetaResponse, Vec<u8>) {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.away {
                return (MetaResponse::Error(WireError::new(ErrorCode::Unavailable, "starting up; try again shortly")), vec![]);
            }
            (MetaResponse::Done, vec![])
        }
    }

    /// Servers that start up for their first `away[i]` requests, and a link to all of them.
    async fn link_to(away: &[u32], timeout: Duration) -> (tempfile::TempDir, Vec<Arc<Starting>>, MetaLink, tokio::sync::watch::Sender<bool>) {
        let d = tempfile::tempdir().unwrap();
        init_ca(&d.path().join("ca")).unwrap();
        issue(&d.path().join("ca"), &d.path().join("meta"), "meta", Role::Meta, &["127.0.0.1".into()]).unwrap();
        issue(&d.path().join("ca"), &d.path().join("client"), "client", Role::Client, &[]).unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (mut svcs, mut addrs) = (Vec::new(), Vec::new());
        for &away in away {
            let ep = server_endpoint(&NodeCerts::load(&d.path().join("meta")).unwrap(), "127.0.0.1:0".parse().unwrap()).unwrap();
            addrs.push(ep.local_addr().unwrap().to_string());
            let svc = Arc::new(Starting { away, calls: AtomicU32::new(0) });
            tokio::spawn(serve(ep, svc.clone(), stopped.clone()));
            svcs.push(svc);
        }
        let client = client_endpoint(&NodeCerts::load(&d.path().join("client")).unwrap()).unwrap();
        (d, svcs, MetaLink::new(client, &addrs, timeout).retrying_unavailable(), stop)
    }

    fn calls(svcs: &[Arc<Starting>]) -> Vec<u32> {
        svcs.iter().map(|s| s.calls.load(Ordering::SeqCst)).collect()
    }

    /// A server that answers `Unavailable` while it starts is asked again, not failed on.
    #[tokio::test]
    async fn a_server_starting_up_is_asked_again() {
        let (_d, svcs, link, _stop) = link_to(&[3], Duration::from_secs(10)).await;
        assert_eq!(link.call(&MetaRequest::GetAttr { ino: 1 }).await.unwrap(), MetaResponse::Done);
        assert_eq!(calls(&svcs), [4]);
    }

    /// With several servers, the next one is asked.
    #[tokio::test]
    async fn the_next_server_is_asked_after_an_unavailable_one() {
        let (_d, svcs, link, _stop) = link_to(&[u32::MAX, 0], Duration::from_secs(10)).await;
        assert_eq!(link.call(&MetaRequest::GetAttr { ino: 1 }).await.unwrap(), MetaResponse::Done);
        assert_eq!(calls(&svcs), [1, 1]);
    }

    /// Without `retrying_unavailable` (administrative calls), the answer comes at once.
    #[tokio::test]
    async fn an_administrative_link_takes_unavailable_as_the_answer() {
        let (_d, svcs, link, _stop) = link_to(&[1], Duration::from_secs(10)).await;
        let link = MetaLink { retry_unavailable: false, ..link };
        assert!(matches!(link.call(&MetaRequest::GetAttr { ino: 1 }).await.unwrap(), MetaResponse::Error(e) if e.code == ErrorCode::Unavailable));
        assert_eq!(calls(&svcs), [1]);
    }

    /// Until the call's deadline: then the server's answer is the answer.
    #[tokio::test]
    async fn a_server_that_stays_away_is_reported_at_the_deadline() {
        let (_d, _svcs, link, _stop) = link_to(&[u32::MAX], Duration::from_millis(500)).await;
        let t = std::time::Instant::now();
        match link.call(&MetaRequest::GetAttr { ino: 1 }).await.unwrap() {
            MetaResponse::Error(e) => assert_eq!(e.code, ErrorCode::Unavailable),
            other => panic!("{other:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
}
