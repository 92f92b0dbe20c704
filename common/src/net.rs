//! QUIC endpoints, the request/response server loop and a cached-connection RPC client.

use crate::proto::{encode_head, read_frame, read_frame_body, read_frame_lens, write_frame, FrameError, CLOSE_FORBIDDEN, CLOSE_PROTOCOL_ERROR, MAX_HEADER, MAX_PAYLOAD};
use crate::metrics::{OpName, RpcMetrics};
use crate::tls::{identity_of, Identity, NodeCerts, Role, TlsError};
use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use serde::{de::DeserializeOwned, Serialize};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use futures::StreamExt;
use tokio::sync::{watch, Mutex, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info_span, warn, Instrument};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{addr}: request timed out after {secs}s")]
    Timeout { addr: String, secs: u64 },
    #[error("{addr}: connection lost: {reason}")]
    Lost { addr: String, reason: String },
    #[error("{addr}: {source}")]
    Frame { addr: String, source: FrameError },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("endpoint: {0}")]
    Endpoint(std::io::Error),
}

// Limits per connection, so that one authenticated peer cannot pin a server's memory
// (docs/design-notes.md, "Limits per connection").

/// Requests in flight on one connection: QUIC does not let the peer open more streams.
pub const MAX_STREAMS: u32 = 128;
/// Bytes of request frames (lengths, header, payload) one connection may have admitted at once.
/// A frame is read only when its declared size fits; until then its bytes wait in QUIC's
/// flow-control window. Room for three of the largest frames; [`RpcClient`] keeps its own
/// requests on a connection within it, so that they never wait behind each other.
pub const CONN_BUDGET: u32 = 64 << 20;
const _: () = assert!(CONN_BUDGET >= 8 + MAX_HEADER + MAX_PAYLOAD, "every valid frame must fit");
/// Once a frame has begun, its lengths and then the rest must each arrive within this time;
/// otherwise the connection is closed as a protocol error.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the peer has to take an answer before its stream is reset.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(MAX_STREAMS.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window((32u32 << 20).into());
    t.receive_window((128u32 << 20).into());
    t.send_window(128 << 20);
    // Keep-alives every second keep a healthy connection busy; a peer that dies (kill -9 sends
    // nothing) is noticed after 5 s of silence, so writers move on to the next server soon.
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.max_idle_timeout(Some(Duration::from_secs(5).try_into().unwrap()));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    Arc::new(t)
}

fn client_config(certs: &NodeCerts) -> Result<quinn::ClientConfig, NetError> {
    let crypto = QuicClientConfig::try_from(certs.client_config()?).map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// Largest UDP payload we send or accept, and the ceiling of MTU discovery. quinn's default
/// (1472, an Ethernet frame) would cap loopback and jumbo-frame links at a third of the packets'
/// possible size; above ~9000 bytes quinn stalls on loopback (measured).
const MAX_UDP_PAYLOAD: u16 = 4096;

/// UDP socket buffer we ask for (the kernel caps it at `net.core.rmem_max`/`wmem_max`). The
/// default (208 KiB on Linux) is smaller than one burst of a block upload: datagrams beyond it
/// are dropped, and a lost tail packet costs a probe timeout (about 25 ms) per upload. Measured
/// on loopback (fsx, 256 KiB blocks to three servers, two busy cores): with the default about a
/// thousand lost packets per connection and a median put of 30 ms; with 4 MiB no loss and 5-7 ms.
const SOCKET_BUFFER: usize = 4 << 20;

/// A server endpoint whose restarted process can reset its predecessor's connections, which
/// peers would otherwise wait out until their idle timeout (5 s). For that, the new process must
/// recognise the old connection ids as its own (their keyed hash) and sign the reset with the
/// same key; by default both keys are random per process.
fn restartable(secret: &[u8; 32]) -> quinn::EndpointConfig {
    let mut cfg = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret)));
    let cid_key = u64::from_le_bytes(blake3::derive_key("tessera 2026-12 QUIC connection id key", secret)[..8].try_into().unwrap());
    cfg.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    cfg
}

fn endpoint(bind: SocketAddr, server: Option<(quinn::ServerConfig, [u8; 32])>) -> Result<quinn::Endpoint, NetError> {
    let (server, mut cfg) = match server {
        Some((s, secret)) => (Some(s), restartable(&secret)),
        None => (None, quinn::EndpointConfig::default()),
    };
    cfg.max_udp_payload_size(MAX_UDP_PAYLOAD).expect("within quinn's bounds");
    let socket = std::net::UdpSocket::bind(bind).map_err(NetError::Endpoint)?;
    let sock = socket2::SockRef::from(&socket);
    for (what, r) in [("receive", sock.set_recv_buffer_size(SOCKET_BUFFER)), ("send", sock.set_send_buffer_size(SOCKET_BUFFER))] {
        // Best effort: a smaller buffer is slower under bursts, not wrong.
        if let Err(e) = r {
            tracing::debug!("could not set the UDP {what} buffer to {SOCKET_BUFFER} bytes: {e}");
        }
    }
    quinn::Endpoint::new(cfg, server, socket, Arc::new(quinn::TokioRuntime)).map_err(NetError::Endpoint)
}

/// An endpoint that serves on `listen` and can also connect out (servers talk to each other).
pub fn server_endpoint(certs: &NodeCerts, listen: SocketAddr) -> Result<quinn::Endpoint, NetError> {
    let crypto = QuicServerConfig::try_from(certs.server_config()?).map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport());
    let mut ep = endpoint(listen, Some((cfg, certs.reset_secret())))?;
    ep.set_default_client_config(client_config(certs)?);
    Ok(ep)
}

/// An endpoint that only connects out.
pub fn client_endpoint(certs: &NodeCerts) -> Result<quinn::Endpoint, NetError> {
    let mut ep = endpoint("0.0.0.0:0".parse().unwrap(), None)?;
    ep.set_default_client_config(client_config(certs)?);
    Ok(ep)
}

/// A request handler. One call per stream; the payload rides outside the header.
pub trait Service: Send + Sync + 'static {
    type Req: DeserializeOwned + Send + std::fmt::Debug + OpName;
    type Resp: Serialize + Send + Sync;
    /// Where requests and connections are counted (`--metrics`), if anywhere.
    fn metrics(&self) -> Option<&RpcMetrics> {
        None
    }
    /// Refuse a peer before it sends anything (wrong role for this server at all).
    fn admit(&self, _peer: &Identity) -> bool {
        true
    }
    fn handle(self: Arc<Self>, peer: Arc<Identity>, req: Self::Req, payload: Vec<u8>) -> impl Future<Output = (Self::Resp, Vec<u8>)> + Send;
}

/// Serve `svc` on `ep` until `shutdown` turns true; then close the endpoint.
pub async fn serve<S: Service>(ep: quinn::Endpoint, svc: Arc<S>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let incoming = tokio::select! {
            i = ep.accept() => match i { Some(i) => i, None => break },
            _ = shutdown.changed() => break,
        };
        let svc = svc.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    if let Some(m) = svc.metrics() {
                        m.accepted.inc();
                        m.connections.inc();
                    }
                    serve_conn(conn, svc.clone()).instrument(info_span!("conn", peer = %remote)).await;
                    if let Some(m) = svc.metrics() {
                        m.connections.dec();
                    }
                }
                Err(e) => {
                    if let Some(m) = svc.metrics() {
                        m.handshake_failures.inc();
                    }
                    debug!(peer = %remote, "handshake failed: {e}")
                }
            }
        });
    }
    ep.close(0u32.into(), b"shutdown");
    // Let the close frames go out, so that peers reconnect now instead of at their idle timeout.
    let _ = tokio::time::timeout(Duration::from_millis(200), ep.wait_idle()).await;
}

async fn serve_conn<S: Service>(conn: quinn::Connection, svc: Arc<S>) {
    let refused = || {
        if let Some(m) = svc.metrics() {
            m.refused.inc();
        }
    };
    let peer = match peer_identity(&conn) {
        Ok(p) if svc.admit(&p) => Arc::new(Identity { addr: Some(conn.remote_address()), ..p }),
        Ok(p) => {
            refused();
            warn!("refusing {} with role {}", p.name, p.role);
            conn.close(CLOSE_FORBIDDEN.into(), b"role not allowed here");
            return;
        }
        Err(e) => {
            refused();
            warn!("refusing connection: {e}");
            conn.close(CLOSE_FORBIDDEN.into(), b"no usable identity");
            return;
        }
    };
    let budget = Arc::new(Semaphore::new(CONN_BUDGET as usize));
    loop {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                let st = conn.stats();
                debug!(peer = %peer.name, mtu = st.path.current_mtu, sent_packets = st.path.sent_packets, "connection ended: {e}");
                return;
            }
        };
        let svc = svc.clone();
        let peer = peer.clone();
        let conn = conn.clone();
        let budget = budget.clone();
        tokio::spawn(async move {
            let (req, payload, admitted) = match read_request::<S::Req>(&mut recv, budget).await {
                Ok(x) => x,
                Err(e) => {
                    if let Some(m) = svc.metrics() {
                        m.protocol_errors.inc();
                    }
                    warn!(peer = %peer.name, "protocol error, closing connection: {e}");
                    conn.close(CLOSE_PROTOCOL_ERROR.into(), e.to_string().as_bytes());
                    return;
                }
            };
            debug!(peer = %peer.name, ?req, "request");
            let (op, received) = (req.op_name(), admitted.num_permits() as u64);
            let t = std::time::Instant::now();
            let (resp, out) = svc.clone().handle(peer.clone(), req, payload).await;
            drop(admitted);
            if let Some(m) = svc.metrics() {
                m.ops.observe(op, t.elapsed());
                m.received_bytes.inc_by(received);
            }
            match tokio::time::timeout(REPLY_TIMEOUT, write_frame(&mut send, &resp, &out)).await {
                Ok(Ok(sent)) => {
                    if let Some(m) = svc.metrics() {
                        m.sent_bytes.inc_by(sent as u64);
                    }
                    let _ = send.finish();
                }
                Ok(Err(_)) => {}
                Err(_) => {
                    warn!(peer = %peer.name, "answer not taken within {}s; resetting the stream", REPLY_TIMEOUT.as_secs());
                    let _ = send.reset(CLOSE_PROTOCOL_ERROR.into());
                }
            }
        });
    }
}

/// Read one request within the limits of its connection: the lengths, then, once the frame fits
/// in `budget`, the rest. The permit is held until the request has been handled.
async fn read_request<T: DeserializeOwned>(recv: &mut quinn::RecvStream, budget: Arc<Semaphore>) -> Result<(T, Vec<u8>, OwnedSemaphorePermit), FrameError> {
    let late = |_| FrameError::TooSlow(FRAME_TIMEOUT.as_secs());
    let (hlen, plen) = tokio::time::timeout(FRAME_TIMEOUT, read_frame_lens(recv)).await.map_err(late)??;
    // Waiting here costs no time limit: the bytes wait in (bounded) QUIC buffers meanwhile.
    let admitted = budget.acquire_many_owned(8 + hlen + plen).await.expect("the budget is never closed");
    let (req, payload) = tokio::time::timeout(FRAME_TIMEOUT, read_frame_body(recv, hlen, plen)).await.map_err(late)??;
    Ok((req, payload, admitted))
}

/// The verified identity of the peer of `conn`.
pub fn peer_identity(conn: &quinn::Connection) -> Result<Identity, TlsError> {
    let any = conn.peer_identity().ok_or_else(|| TlsError::Peer("no certificate".into()))?;
    let certs = any
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .map_err(|_| TlsError::Peer("unexpected identity type".into()))?;
    identity_of(certs.first().ok_or_else(|| TlsError::Peer("empty chain".into()))?)
}

/// Resolve `host:port`.
pub async fn resolve(addr: &str) -> Result<SocketAddr, NetError> {
    tokio::net::lookup_host(addr)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| NetError::Resolve(addr.to_string()))
}

fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// A client for one server: a few cached connections used round-robin, one stream per request,
/// a timeout on every call, one reconnect on a lost connection. Every connection checks that the
/// server's certificate has the role the caller expects.
pub struct RpcClient {
    ep: quinn::Endpoint,
    addr: String,
    expect: Role,
    conns: Vec<Mutex<Option<quinn::Connection>>>,
    /// Bytes of requests in flight per connection, within the server's [`CONN_BUDGET`].
    budgets: Vec<Arc<Semaphore>>,
    next: AtomicUsize,
    timeout: Duration,
    connect_timeout: Duration,
    /// When a connection attempt last failed: callers in the next `RETRY_AFTER` fail at once
    /// instead of queueing behind another timeout to a server that is down.
    failed_at: std::sync::Mutex<Option<std::time::Instant>>,
    retry_after: Duration,
}

/// How long a failed connection attempt makes further calls fail fast (by default).
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// A handshake that gets no answer is retransmitted after 1 s, 3 s and 7 s (QUIC's backoff):
/// a server that came back meanwhile would be found only then. So a new handshake starts
/// every half second until one finishes.
const HANDSHAKE_AGAIN: Duration = Duration::from_millis(500);

impl RpcClient {
    /// `expect`: the role the server at `addr` must have (chunk or meta).
    pub fn new(ep: quinn::Endpoint, addr: &str, connections: usize, timeout: Duration, expect: Role) -> Self {
        RpcClient {
            ep,
            addr: addr.to_string(),
            expect,
            conns: (0..connections.max(1)).map(|_| Mutex::new(None)).collect(),
            budgets: (0..connections.max(1)).map(|_| Arc::new(Semaphore::new(CONN_BUDGET as usize))).collect(),
            next: AtomicUsize::new(0),
            timeout,
            connect_timeout: Duration::from_secs(5),
            failed_at: std::sync::Mutex::new(None),
            retry_after: RETRY_AFTER,
        }
    }

    /// Give up on connecting after `t` (default 5 s).
    pub fn with_connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// After a failed connection attempt, fail calls at once for `t` (default 2 s); zero for
    /// callers that pace their own retries and would rather queue behind the next attempt.
    pub fn with_retry_after(mut self, t: Duration) -> Self {
        self.retry_after = t;
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn connection(&self, slot: usize, fresh: bool) -> Result<quinn::Connection, NetError> {
        let mut g = self.conns[slot].lock().await;
        if let Some(c) = g.as_ref() {
            if !fresh && c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let err = |reason: String| NetError::Connect { addr: self.addr.clone(), reason };
        if self.failed_at.lock().unwrap().is_some_and(|t| t.elapsed() < self.retry_after) {
            return Err(err("unreachable a moment ago; not retrying yet".into()));
        }
        let r = async {
            let sock = resolve(&self.addr).await?;
            let conn = self.handshake(sock).await?;
            // The CA vouches for the name and role, not for being the server we want: a chunk
            // certificate must not answer as the metadata server, nor a client as a chunk server.
            match peer_identity(&conn) {
                Ok(p) if p.role == self.expect => Ok(conn),
                Ok(p) => {
                    conn.close(CLOSE_FORBIDDEN.into(), b"wrong server role");
                    Err(err(format!("the server's certificate '{}' has role {}, expected a {} server", p.name, p.role, self.expect)))
                }
                Err(e) => {
                    conn.close(CLOSE_FORBIDDEN.into(), b"no usable identity");
                    Err(err(e.to_string()))
                }
            }
        }
        .await;
        *self.failed_at.lock().unwrap() = if r.is_err() { Some(std::time::Instant::now()) } else { None };
        let conn = r?;
        *g = Some(conn.clone());
        Ok(conn)
    }

    /// Connect within `connect_timeout`, starting a new handshake every [`HANDSHAKE_AGAIN`]
    /// while none has finished (the earlier ones keep going, for a slow link).
    async fn handshake(&self, sock: SocketAddr) -> Result<quinn::Connection, NetError> {
        let err = |reason: String| NetError::Connect { addr: self.addr.clone(), reason };
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let mut attempts = futures::stream::FuturesUnordered::new();
        loop {
            attempts.push(self.ep.connect(sock, host_of(&self.addr)).map_err(|e| err(e.to_string()))?);
            let again = (tokio::time::Instant::now() + HANDSHAKE_AGAIN).min(deadline);
            tokio::select! {
                Some(r) = attempts.next() => return r.map_err(|e| err(describe_conn_error(&e))),
                _ = tokio::time::sleep_until(again) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(err(format!("no answer within {}s (is the server running?)", self.connect_timeout.as_secs())));
            }
        }
    }

    /// Send one request and wait for its answer.
    pub async fn call<Q: Serialize, R: DeserializeOwned>(&self, req: &Q, payload: &[u8]) -> Result<(R, Vec<u8>), NetError> {
        // The copy QUIC's send buffer would make anyway.
        self.call_owned(req, Bytes::copy_from_slice(payload)).await
    }

    /// [`call`](Self::call) with a payload that QUIC sends from where it is: a block sent to
    /// three servers is not copied three times into their streams' buffers.
    pub async fn call_owned<Q: Serialize, R: DeserializeOwned>(&self, req: &Q, payload: Bytes) -> Result<(R, Vec<u8>), NetError> {
        let payload = &payload;
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        let fut = async {
            let mut fresh = false;
            loop {
                let conn = self.connection(slot, fresh).await?;
                match self.exchange(&conn, &self.budgets[slot], req, payload).await {
                    Err(NetError::Lost { .. }) if !fresh => fresh = true,
                    r => return r,
                }
            }
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| NetError::Timeout { addr: self.addr.clone(), secs: self.timeout.as_secs() })?
    }

    async fn exchange<Q: Serialize, R: DeserializeOwned>(&self, conn: &quinn::Connection, budget: &Semaphore, req: &Q, payload: &Bytes) -> Result<(R, Vec<u8>), NetError> {
        let lost = |reason: String| NetError::Lost { addr: self.addr.clone(), reason };
        let head = encode_head(req, payload.len()).map_err(|source| NetError::Frame { addr: self.addr.clone(), source })?;
        // Frames the server cannot admit yet would hold the flow-control window that the
        // admitted ones need to arrive: send no more at once than it admits.
        let _room = budget.acquire_many((head.len() + payload.len()) as u32).await.expect("the budget is never closed");
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(describe_conn_error(&e)))?;
        send.write_all(&head).await.map_err(|e| lost(e.to_string()))?;
        if !payload.is_empty() {
            send.write_chunk(payload.clone()).await.map_err(|e| lost(e.to_string()))?;
        }
        let _ = send.finish();
        read_frame(&mut recv).await.map_err(|e| match e {
            FrameError::Truncated(_) => lost(conn.close_reason().map(|r| describe_conn_error(&r)).unwrap_or_else(|| "stream ended early".into())),
            source => NetError::Frame { addr: self.addr.clone(), source },
        })
    }
}

/// Turn a QUIC/TLS failure into a sentence that names the cause.
pub fn describe_conn_error(e: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError::*;
    let text = e.to_string();
    match e {
        TransportError(_) if text.contains("extended key usage") => {
            format!("TLS handshake failed: the server's certificate is not a server certificate (a client or admin certificate posing as a server?): {text}")
        }
        TransportError(_) if text.contains("invalid peer certificate") => {
            format!("TLS handshake failed: the server's certificate is not signed by the CA in our --certs bundle (a certificate from another cluster's CA?): {text}")
        }
        ConnectionClosed(_) if text.contains("certificate") || text.contains("alert") => {
            format!("TLS handshake refused by the server: our certificate is not signed by its CA (a certificate from another cluster's CA?): {text}")
        }
        ApplicationClosed(c) if c.error_code == CLOSE_FORBIDDEN.into() => format!("refused by the server: {}", String::from_utf8_lossy(&c.reason)),
        TimedOut => "timed out (is the server running and reachable?)".into(),
        _ => text,
    }
}

/// One cached [`RpcClient`] per server address, created on first use. Cheap to clone.
#[derive(Clone)]
pub struct ClientPool {
    ep: quinn::Endpoint,
    connections: usize,
    timeout: Duration,
    expect: Role,
    clients: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<RpcClient>>>>,
}

impl ClientPool {
    /// `connections` QUIC connections per server; `timeout` per call; every server must have role `expect`.
    pub fn new(ep: quinn::Endpoint, connections: usize, timeout: Duration, expect: Role) -> Self {
        ClientPool { ep, connections, timeout, expect, clients: Default::default() }
    }

    pub fn get(&self, addr: &str) -> Arc<RpcClient> {
        self.clients
            .lock()
            .unwrap()
            .entry(addr.to_string())
            .or_insert_with(|| Arc::new(RpcClient::new(self.ep.clone(), addr, self.connections, self.timeout, self.expect)))
            .clone()
    }
}
