//! The wire protocol against a real metadata server, in process, over real QUIC sockets: bad
//! frames close the offending connection and nobody else's; roles and CAs are enforced, on both
//! ends of a connection.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tessera_common::metalink::MetaLink;
use tessera_common::net::{self, RpcClient};
use tessera_common::proto::chunk::{ChunkRequest, ChunkResponse};
use tessera_common::proto::meta::{FileKind, MetaRequest, MetaResponse, Mutation};
use tessera_common::proto::{self, CLOSE_PROTOCOL_ERROR, MAX_HEADER, MAX_PAYLOAD};
use tessera_common::tls::{self, NodeCerts, Role};
use tessera_common::{BlockId, ErrorCode};
use tessera_meta::MetaConfig;
use tokio::sync::watch;
use tokio::time::timeout;

struct Server {
    dir: TempDir,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        tls::init_ca(&d.join("ca")).unwrap();
        let hosts = ["127.0.0.1".to_string()];
        for (name, role) in [("meta", Role::Meta), ("client", Role::Client), ("chunk", Role::Chunk), ("admin", Role::Admin)] {
            tls::issue(&d.join("ca"), &d.join(name), &format!("{name}-1"), role, &hosts).unwrap();
        }
        let (shutdown, rx) = watch::channel(false);
        let cfg = MetaConfig { data_dir: d.join("data"), certs: d.join("meta"), replicas: 1, ..Default::default() };
        let s = tessera_meta::start(cfg, rx).await.expect("starting the metadata server");
        Server { dir, addr: s.addr, shutdown, task: s.task }
    }

    fn certs(&self, who: &str) -> NodeCerts {
        NodeCerts::load(&self.dir.path().join(who)).unwrap()
    }

    /// A raw QUIC connection with `who`'s certificate.
    async fn connect(&self, who: &str) -> (quinn::Endpoint, quinn::Connection) {
        connect_with(&self.certs(who), self.addr).await.expect("connecting")
    }

    fn rpc(&self, who: &str) -> RpcClient {
        RpcClient::new(net::client_endpoint(&self.certs(who)).unwrap(), &self.addr.to_string(), 1, Duration::from_secs(10), Role::Meta)
    }

    async fn stop(self) {
        self.shutdown.send(true).unwrap();
        timeout(Duration::from_secs(10), self.task).await.expect("server did not stop within 10 s").unwrap();
    }
}

async fn connect_with(certs: &NodeCerts, addr: SocketAddr) -> Result<(quinn::Endpoint, quinn::Connection), String> {
    let ep = net::client_endpoint(certs).map_err(|e| e.to_string())?;
    let connecting = ep.connect(addr, "127.0.0.1").map_err(|e| e.to_string())?;
    let conn = timeout(Duration::from_secs(10), connecting).await.map_err(|_| "handshake timed out".to_string())?.map_err(|e| e.to_string())?;
    Ok((ep, conn))
}

/// One valid GetAttr(root) over a raw connection.
async fn raw_getattr_root(conn: &quinn::Connection) -> Result<MetaResponse, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let frame = proto::encode_frame(&MetaRequest::GetAttr { ino: 1 }, &[]).unwrap();
    send.write_all(&frame).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let (resp, _payload): (MetaResponse, Vec<u8>) =
        timeout(Duration::from_secs(10), proto::read_frame(&mut recv)).await.map_err(|_| "no answer within 10 s".to_string())?.map_err(|e| e.to_string())?;
    Ok(resp)
}

fn assert_root_attr(resp: &MetaResponse) {
    match resp {
        MetaResponse::Attr(a) => {
            assert_eq!(a.ino, 1);
            assert_eq!(a.kind, FileKind::Dir, "the root is a directory");
        }
        other => panic!("GetAttr(1) answered {other:?}"),
    }
}

/// Send `bytes` on a new stream of `conn` (finishing the stream if `finish`), then expect the
/// server to close the connection with CLOSE_PROTOCOL_ERROR within 5 s.
async fn expect_protocol_close(conn: &quinn::Connection, bytes: &[u8], finish: bool) {
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    // The server may close the connection as soon as it has seen enough: ignore write errors.
    let _ = send.write_all(bytes).await;
    if finish {
        let _ = send.finish();
    }
    let reason = timeout(Duration::from_secs(5), conn.closed()).await.expect("the server did not close the connection within 5 s");
    match &reason {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, quinn::VarInt::from_u32(CLOSE_PROTOCOL_ERROR), "close code (reason: {reason})")
        }
        other => panic!("connection ended by {other:?}, expected an application close with CLOSE_PROTOCOL_ERROR"),
    }
    // Further streams on it fail.
    let further = match conn.open_bi().await {
        Err(_) => true,
        Ok((mut s, _r)) => s.write_all(b"x").await.is_err(),
    };
    assert!(further, "a stream on the closed connection still works");
}

/// Run one bad-frame case: a valid request works first on the doomed connection, the bad frame
/// closes it, and both an already open connection and a new one still get answers.
async fn bad_frame_case(bytes: Vec<u8>, finish: bool) {
    let s = Server::start().await;
    let (_ep1, doomed) = s.connect("client").await;
    let (_ep2, bystander) = s.connect("client").await;
    assert_root_attr(&raw_getattr_root(&doomed).await.expect("valid request before the bad frame"));
    assert_root_attr(&raw_getattr_root(&bystander).await.expect("valid request on the second connection"));

    expect_protocol_close(&doomed, &bytes, finish).await;

    assert!(bystander.close_reason().is_none(), "the other connection was closed too: {:?}", bystander.close_reason());
    assert_root_attr(&raw_getattr_root(&bystander).await.expect("the other connection stopped working"));
    let (resp, _) = s.rpc("client").call::<_, MetaResponse>(&MetaRequest::GetAttr { ino: 1 }, &[]).await.expect("a new connection cannot make a request");
    assert_root_attr(&resp);
    s.stop().await;
}

fn valid_frame() -> Vec<u8> {
    proto::encode_frame(&MetaRequest::GetAttr { ino: 1 }, &[]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payload_length_closes_connection() {
    let mut f = valid_frame();
    f[4..8].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
    // Stream left open: the server must refuse on the length alone, not wait for 16 MiB.
    bad_frame_case(f, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_length_closes_connection() {
    let mut f = valid_frame();
    f[0..4].copy_from_slice(&(MAX_HEADER + 1).to_le_bytes());
    bad_frame_case(f, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frame_closes_connection() {
    let mut f = Vec::new();
    f.extend_from_slice(&100u32.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&[7u8; 10]);
    bad_frame_case(f, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_header_closes_connection() {
    let mut f = Vec::new();
    f.extend_from_slice(&4u32.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&[250, 255, 255, 255]);
    bad_frame_case(f, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_enforced() {
    let s = Server::start().await;
    let denied = |r: &MetaResponse, what: &str| match r {
        MetaResponse::Error(e) => assert_eq!(e.code, ErrorCode::PermissionDenied, "{what}: {e}"),
        other => panic!("{what}: expected PermissionDenied, got {other:?}"),
    };

    let client = s.rpc("client");
    let (r, _) = client
        .call::<_, MetaResponse>(&MetaRequest::RegisterChunk { node_id: 99, addr: "127.0.0.1:1".into(), zone: "z".into(), capacity: 1 << 40 }, &[])
        .await
        .unwrap();
    denied(&r, "a client registering a chunk server");
    let (r, _) = client.call::<_, MetaResponse>(&MetaRequest::Heartbeat { node_id: 99, load: Default::default() }, &[]).await.unwrap();
    denied(&r, "a client sending heartbeats");
    let (r, _) = client.call::<_, MetaResponse>(&MetaRequest::Status, &[]).await.unwrap();
    denied(&r, "a client reading the cluster status");

    let chunk = s.rpc("chunk");
    let op = Mutation::Create { parent: 1, name: b"x".to_vec(), kind: FileKind::File, perm: 0o644, uid: 0, gid: 0, rdev: 0, target: None, umask: 0 };
    let (r, _) = chunk.call::<_, MetaResponse>(&MetaRequest::Mutate { session: 1, seq: 1, op }, &[]).await.unwrap();
    denied(&r, "a chunk server changing the namespace");

    // The refused requests changed nothing: no node registered, no file created.
    let admin = s.rpc("admin");
    match admin.call::<_, MetaResponse>(&MetaRequest::Status, &[]).await.unwrap().0 {
        MetaResponse::Status(st) => assert!(st.nodes.is_empty(), "a refused registration added a node: {:?}", st.nodes),
        other => panic!("admin status answered {other:?}"),
    }
    match client.call::<_, MetaResponse>(&MetaRequest::Lookup { parent: 1, name: b"x".to_vec() }, &[]).await.unwrap().0 {
        MetaResponse::Error(e) => assert_eq!(e.code, ErrorCode::NotFound, "{e}"),
        other => panic!("a refused create left a file: {other:?}"),
    }
    s.stop().await;
}

/// Backups are for admins only, and read nothing but the files of their own checkpoint, which
/// `BackupEnd` deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_are_for_admins_and_read_only_their_checkpoint() {
    let s = Server::start().await;
    for who in ["client", "chunk"] {
        let (r, _) = s.rpc(who).call::<_, MetaResponse>(&MetaRequest::BackupStart, &[]).await.unwrap();
        assert!(matches!(&r, MetaResponse::Error(e) if e.code == ErrorCode::PermissionDenied), "{who} started a backup: {r:?}");
    }
    let admin = s.rpc("admin");
    let info = match admin.call::<_, MetaResponse>(&MetaRequest::BackupStart, &[]).await.unwrap().0 {
        MetaResponse::BackupStarted(i) => i,
        other => panic!("BackupStart answered {other:?}"),
    };
    let current = info.files.iter().find(|f| f.name == "CURRENT").expect("a checkpoint has CURRENT");
    let (r, data) = admin.call::<_, MetaResponse>(&MetaRequest::BackupRead { id: info.id, name: "CURRENT".into(), offset: 0, len: 1 << 20 }, &[]).await.unwrap();
    assert_eq!(r, MetaResponse::BackupData);
    assert_eq!(data.len() as u64, current.size);
    assert!(data.starts_with(b"MANIFEST-"), "CURRENT holds {:?}", String::from_utf8_lossy(&data));
    let (r, _) = s.rpc("client").call::<_, MetaResponse>(&MetaRequest::BackupRead { id: info.id, name: "CURRENT".into(), offset: 0, len: 10 }, &[]).await.unwrap();
    assert!(matches!(&r, MetaResponse::Error(e) if e.code == ErrorCode::PermissionDenied), "a client read a backup: {r:?}");
    for name in ["../db/CURRENT", "../../meta/node.key", "LOCK.missing"] {
        let (r, data) = admin.call::<_, MetaResponse>(&MetaRequest::BackupRead { id: info.id, name: name.into(), offset: 0, len: 10 }, &[]).await.unwrap();
        assert!(matches!(&r, MetaResponse::Error(e) if e.code == ErrorCode::NotFound) && data.is_empty(), "{name}: {r:?}");
    }
    let checkpoints = s.dir.path().join("data/backups");
    assert_eq!(std::fs::read_dir(&checkpoints).unwrap().count(), 1);
    assert_eq!(admin.call::<_, MetaResponse>(&MetaRequest::BackupEnd { id: info.id }, &[]).await.unwrap().0, MetaResponse::Done);
    assert_eq!(std::fs::read_dir(&checkpoints).unwrap().count(), 0, "BackupEnd left the checkpoint");
    let (r, _) = admin.call::<_, MetaResponse>(&MetaRequest::BackupRead { id: info.id, name: "CURRENT".into(), offset: 0, len: 10 }, &[]).await.unwrap();
    assert!(matches!(&r, MetaResponse::Error(e) if e.code == ErrorCode::NotFound), "read after BackupEnd: {r:?}");
    s.stop().await;
}

/// A peer of an older protocol version (another ALPN) fails the handshake instead of sending
/// frames this build would misread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_protocol_version_is_refused() {
    let s = Server::start().await;
    let mut crypto = s.certs("client").client_config().unwrap();
    crypto.alpn_protocols = vec![b"tessera/1".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let r = timeout(Duration::from_secs(10), ep.connect(s.addr, "127.0.0.1").unwrap()).await.expect("the handshake hung");
    assert!(r.is_err(), "a tessera/1 peer was let in");
    // The same certificate with the current version is accepted.
    let (_ep, conn) = s.connect("client").await;
    assert!(raw_getattr_root(&conn).await.is_ok());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_ca_is_refused() {
    let s = Server::start().await;
    let other = tempfile::tempdir().unwrap();
    let ca: &Path = &other.path().join("ca");
    tls::init_ca(ca).unwrap();
    tls::issue(ca, &other.path().join("client"), "intruder", Role::Client, &["127.0.0.1".to_string()]).unwrap();
    // The intruder trusts the cluster's CA (so it accepts the server), but its own certificate
    // is signed by another CA: the server must refuse it.
    std::fs::copy(s.dir.path().join("ca/ca.crt"), other.path().join("client/ca.crt")).unwrap();
    let foreign = NodeCerts::load(&other.path().join("client")).unwrap();

    match connect_with(&foreign, s.addr).await {
        Err(_) => {}
        Ok((_ep, conn)) => {
            // With TLS 1.3 the server's verdict on the client certificate can arrive after the
            // client considers the handshake done: then no request may succeed.
            let r = raw_getattr_root(&conn).await;
            assert!(r.is_err(), "a client of another CA got an answer: {r:?}");
        }
    }
    // Everyone else is still served.
    let (resp, _) = s.rpc("client").call::<_, MetaResponse>(&MetaRequest::GetAttr { ino: 1 }, &[]).await.unwrap();
    assert_root_attr(&resp);
    s.stop().await;
}

/// A stand-in chunk server that acknowledges every put and stores nothing: what a certificate
/// that may act as a server could run.
struct Impostor;

impl net::Service for Impostor {
    type Req = ChunkRequest;
    type Resp = ChunkResponse;
    async fn handle(self: Arc<Self>, _peer: Arc<tls::Identity>, _req: ChunkRequest, _payload: Vec<u8>) -> (ChunkResponse, Vec<u8>) {
        (ChunkResponse::Stored { free: 0 }, vec![])
    }
}

/// Serve the impostor with `certs` on a free port; it stops when the sender is dropped.
fn start_impostor(certs: &NodeCerts) -> (SocketAddr, watch::Sender<bool>) {
    let ep = net::server_endpoint(certs, "127.0.0.1:0".parse().unwrap()).expect("a server endpoint");
    let addr = ep.local_addr().unwrap();
    let (tx, rx) = watch::channel(false);
    tokio::spawn(net::serve(ep, Arc::new(Impostor), rx));
    (addr, tx)
}

/// Put a block to `addr` as the client does, expecting a server of role `expect`.
async fn put_to(certs: &NodeCerts, addr: SocketAddr, expect: Role) -> Result<ChunkResponse, String> {
    let c = RpcClient::new(net::client_endpoint(certs).unwrap(), &addr.to_string(), 1, Duration::from_secs(10), expect);
    let data = b"precious bytes".to_vec();
    c.call::<_, ChunkResponse>(&ChunkRequest::Put { id: BlockId::of(&data), age: None }, &data).await.map(|(r, _)| r).map_err(|e| e.to_string())
}

/// A certificate as `tessera cert issue` wrote them before client certificates lost their server
/// usage: server and client auth for every role.
fn issue_with_server_usage(ca: &Path, dir: &Path, name: &str, role: Role) {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
    let ca_pem = std::fs::read_to_string(ca.join("ca.crt")).unwrap();
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(ca.join("ca.key")).unwrap()).unwrap();
    let ca_cert = CertificateParams::from_ca_cert_pem(&ca_pem).unwrap().self_signed(&ca_key).unwrap();
    let mut p = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.distinguished_name.push(DnType::OrganizationalUnitName, role.as_str());
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ca.crt"), &ca_pem).unwrap();
    std::fs::write(dir.join("node.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("node.key"), key.serialize_pem()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_cannot_act_as_a_server() {
    let s = Server::start().await;
    // The client certificate was issued with --host 127.0.0.1, so its name matches.
    let (addr, _stop) = start_impostor(&s.certs("client"));
    // The TLS handshake itself fails: the certificate has no server usage.
    match connect_with(&s.certs("chunk"), addr).await {
        Err(e) => assert!(e.contains("extended key usage"), "the handshake failed for another reason: {e}"),
        Ok(_) => panic!("a TLS handshake with a client certificate as the server succeeded"),
    }
    match put_to(&s.certs("client"), addr, Role::Chunk).await {
        Err(e) => assert!(e.contains("not a server certificate"), "unclear error: {e}"),
        Ok(r) => panic!("a client certificate posed as a chunk server and acknowledged a put: {r:?}"),
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_check_the_server_role() {
    let s = Server::start().await;
    let d = s.dir.path();
    issue_with_server_usage(&d.join("ca"), &d.join("old-client"), "old-client", Role::Client);
    let (addr, _stop) = start_impostor(&s.certs("old-client"));
    // TLS alone accepts it (signed by the cluster CA, server usage, matching name)...
    connect_with(&s.certs("chunk"), addr).await.expect("the TLS handshake");
    // ...but neither a writer expecting a chunk server nor a chunk server expecting the
    // metadata server talks to it.
    match put_to(&s.certs("client"), addr, Role::Chunk).await {
        Err(e) => assert!(e.contains("has role client, expected a chunk server"), "unclear error: {e}"),
        Ok(r) => panic!("a client certificate posed as a chunk server and acknowledged a put: {r:?}"),
    }
    let link = MetaLink::new(net::client_endpoint(&s.certs("chunk")).unwrap(), &[addr.to_string()], Duration::from_secs(10));
    match link.call(&MetaRequest::GetRing).await {
        Err(e) => assert!(e.to_string().contains("has role client, expected a meta server"), "unclear error: {e}"),
        Ok(r) => panic!("a client certificate answered as the metadata server: {r:?}"),
    }
    // A real server of the wrong role is refused too: the metadata server is no chunk server.
    match put_to(&s.certs("client"), s.addr, Role::Chunk).await {
        Err(e) => assert!(e.contains("has role meta, expected a chunk server"), "unclear error: {e}"),
        Ok(r) => panic!("the metadata server was taken for a chunk server: {r:?}"),
    }
    // The right role works.
    let (resp, _) = s.rpc("client").call::<_, MetaResponse>(&MetaRequest::GetAttr { ino: 1 }, &[]).await.unwrap();
    assert_root_attr(&resp);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_bound_to_its_certificate() {
    let s = Server::start().await;
    tls::issue(&s.dir.path().join("ca"), &s.dir.path().join("client2"), "client-2", Role::Client, &["127.0.0.1".to_string()]).unwrap();
    let (a, b) = (s.rpc("client"), s.rpc("client2"));
    let session = match a.call::<_, MetaResponse>(&MetaRequest::OpenSession { client: "a".into() }, &[]).await.unwrap().0 {
        MetaResponse::Session { session, .. } => session,
        other => panic!("open session: {other:?}"),
    };
    let create = |name: &[u8]| Mutation::Create { parent: 1, name: name.to_vec(), kind: FileKind::File, perm: 0o600, uid: 0, gid: 0, rdev: 0, target: None, umask: 0 };
    async fn mutate(c: &RpcClient, session: u64, seq: u64, op: Mutation) -> MetaResponse {
        c.call::<_, MetaResponse>(&MetaRequest::Mutate { session, seq, op }, &[]).await.unwrap().0
    }
    assert!(matches!(mutate(&a, session, 1, create(b"a1")).await, MetaResponse::Attr(_)));
    let unknown = |r: &MetaResponse| matches!(r, MetaResponse::Error(e) if e.code == ErrorCode::UnknownSession);
    // B replays A's (session, seq): it must not get A's stored reply.
    let r = mutate(&b, session, 1, create(b"a1")).await;
    assert!(unknown(&r), "another certificate read a stored reply: {r:?}");
    // B takes A's next sequence number: refused, and A's mutation with it still applies.
    let r = mutate(&b, session, 2, create(b"b1")).await;
    assert!(unknown(&r), "another certificate used the session: {r:?}");
    assert!(matches!(mutate(&a, session, 2, create(b"a2")).await, MetaResponse::Attr(_)));
    // A session that was never opened.
    assert!(unknown(&mutate(&a, session + 1000, 1, create(b"x")).await));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_reads_are_for_clients_and_admins() {
    let s = Server::start().await;
    let reads = [
        MetaRequest::Lookup { parent: 1, name: b"x".to_vec() },
        MetaRequest::GetAttr { ino: 1 },
        MetaRequest::ReadDir { ino: 1, after: 0, limit: 10 },
        MetaRequest::ReadLink { ino: 1 },
        MetaRequest::GetBlocks { ino: 1, first: 0, count: 1 },
        MetaRequest::StatFs,
        MetaRequest::GetXattr { ino: 1, name: b"user.x".to_vec() },
        MetaRequest::ListXattr { ino: 1 },
    ];
    for who in ["chunk", "meta"] {
        let c = s.rpc(who);
        for req in &reads {
            match c.call::<_, MetaResponse>(req, &[]).await.unwrap().0 {
                MetaResponse::Error(e) => assert_eq!(e.code, ErrorCode::PermissionDenied, "{who} {req:?}: {e}"),
                other => panic!("a {who} certificate read the namespace with {req:?}: {other:?}"),
            }
        }
    }
    for who in ["client", "admin"] {
        let (resp, _) = s.rpc(who).call::<_, MetaResponse>(&MetaRequest::GetAttr { ino: 1 }, &[]).await.unwrap();
        assert_root_attr(&resp);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_frame_is_cut_off_after_the_frame_timeout() {
    let s = Server::start().await;
    let (_ep1, slow) = s.connect("client").await;
    let (_ep2, bystander) = s.connect("client").await;
    let f = valid_frame();
    let (mut send, _recv) = slow.open_bi().await.unwrap();
    // Everything but the last byte, and the stream stays open.
    send.write_all(&f[..f.len() - 1]).await.unwrap();
    let started = std::time::Instant::now();
    // Until the timeout nobody is cut off, and the other connection is served throughout.
    while started.elapsed() + Duration::from_secs(2) < net::FRAME_TIMEOUT {
        assert_root_attr(&raw_getattr_root(&bystander).await.expect("the other connection stopped working"));
        assert!(slow.close_reason().is_none(), "cut off after {:?}, before the frame timeout", started.elapsed());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let reason = timeout(net::FRAME_TIMEOUT + Duration::from_secs(10), slow.closed())
        .await
        .unwrap_or_else(|_| panic!("a peer that sent half a frame is still connected after {:?}", started.elapsed()));
    match &reason {
        quinn::ConnectionError::ApplicationClosed(c) => assert_eq!(c.error_code, quinn::VarInt::from_u32(CLOSE_PROTOCOL_ERROR), "close code (reason: {reason})"),
        other => panic!("connection ended by {other:?}, expected an application close with CLOSE_PROTOCOL_ERROR"),
    }
    eprintln!("half a frame: cut off after {:?}: {reason}", started.elapsed());
    assert!(bystander.close_reason().is_none(), "the other connection was closed too");
    assert_root_attr(&raw_getattr_root(&bystander).await.expect("the other connection stopped working"));
    s.stop().await;
}

/// A client may have more large frames in flight on one connection than the server admits at
/// once; they must all be answered (none stuck behind the others' bytes in the window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_large_requests_on_one_connection_are_all_answered() {
    let s = Server::start().await;
    let c = Arc::new(s.rpc("client"));
    let payload = Arc::new(vec![7u8; MAX_PAYLOAD as usize]);
    let calls = (0..12).map(|_| {
        let (c, payload) = (c.clone(), payload.clone());
        tokio::spawn(async move { c.call::<_, MetaResponse>(&MetaRequest::GetAttr { ino: 1 }, &payload).await.map(|(r, _)| r) })
    });
    for call in calls.collect::<Vec<_>>() {
        assert_root_attr(&call.await.unwrap().expect("a large request in flight with others"));
    }
    s.stop().await;
}

/// VmRSS of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc/PID/status");
    let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).expect("VmRSS");
    kb * 1024
}

/// A peer that opens 1000 streams, each declaring a 16 MiB payload and sending 1 MiB of it (so
/// that the server's buffers are really touched), must not grow the server's memory by more
/// than the limits per connection allow. Runs against a real `tessera-meta` process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_do_not_pin_server_memory() {
    use tessera_tests::{free_port, start_meta};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tls::init_ca(&d.join("ca")).unwrap();
    for (name, role) in [("meta", Role::Meta), ("client", Role::Client)] {
        tls::issue(&d.join("ca"), &d.join(name), name, role, &["127.0.0.1".to_string()]).unwrap();
    }
    let port = free_port();
    let meta = start_meta(&d.join("data"), port, &d.join("meta"), 1, &d.join("meta.log"));
    let pid = meta.pid().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = NodeCerts::load(&d.join("client")).unwrap();
    let (_ep, conn) = connect_with(&client, addr).await.unwrap();
    assert_root_attr(&raw_getattr_root(&conn).await.unwrap());
    let before = rss(pid);

    let mut head = proto::encode_frame(&MetaRequest::GetAttr { ino: 1 }, &[]).unwrap();
    head[4..8].copy_from_slice(&MAX_PAYLOAD.to_le_bytes());
    let part = Arc::new(vec![0x5au8; 1 << 20]);
    let mut attackers = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let (conn, head, part) = (conn.clone(), head.clone(), part.clone());
        attackers.spawn(async move {
            let (mut send, _recv) = conn.open_bi().await?;
            send.write_all(&head).await?;
            send.write_all(&part).await?;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, anyhow::Error>(())
        });
    }
    // Hold for a while (less than the frame timeout, which would end the attack).
    let mut peak = before;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        peak = peak.max(rss(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let grown = peak.saturating_sub(before);
    eprintln!("tessera-meta VmRSS {} MiB before, peak {} MiB while attacked (+{} MiB)", before >> 20, peak >> 20, grown >> 20);
    // The budget of admitted frames plus QUIC's receive window, and some slack.
    let bound = (net::CONN_BUDGET as u64) + (128 << 20) + (64 << 20);
    assert!(grown < bound, "the server grew by {} MiB for one peer (bound {} MiB)", grown >> 20, bound >> 20);
    attackers.abort_all();
    conn.close(0u32.into(), b"done");
    // Everyone else is still served.
    let (_ep2, fresh) = connect_with(&client, addr).await.unwrap();
    assert_root_attr(&raw_getattr_root(&fresh).await.expect("a new connection after the attack"));
    drop(meta);
}

/// Extended attributes over the limits, sent straight over the wire (no kernel in between to
/// check them): an error reply for each, nothing stored, the server still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_xattrs_get_an_error_and_change_nothing() {
    let s = Server::start().await;
    let c = s.rpc("client");
    let session = match c.call::<_, MetaResponse>(&MetaRequest::OpenSession { client: "x".into() }, &[]).await.unwrap().0 {
        MetaResponse::Session { session, .. } => session,
        other => panic!("open session: {other:?}"),
    };
    let set = |seq: u64, name: Vec<u8>, value: Vec<u8>| MetaRequest::Mutate { session, seq, op: Mutation::SetXattr { ino: 1, name, value, flags: 0 } };
    let code = |r: MetaResponse| match r {
        MetaResponse::Error(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    };
    let mut long = b"user.".to_vec();
    long.resize(100_000, b'n');
    assert_eq!(code(c.call::<_, MetaResponse>(&set(1, long.clone(), vec![]), &[]).await.unwrap().0), ErrorCode::OutOfRange);
    assert_eq!(code(c.call::<_, MetaResponse>(&set(2, b"user.v".to_vec(), vec![7; 1 << 20]), &[]).await.unwrap().0), ErrorCode::TooBig);
    assert_eq!(code(c.call::<_, MetaResponse>(&MetaRequest::GetXattr { ino: 1, name: long }, &[]).await.unwrap().0), ErrorCode::OutOfRange);
    match c.call::<_, MetaResponse>(&MetaRequest::ListXattr { ino: 1 }, &[]).await.unwrap().0 {
        MetaResponse::XattrNames(n) => assert!(n.is_empty(), "a refused set stored {n:?}"),
        other => panic!("listxattr: {other:?}"),
    }
    let (resp, _) = c.call::<_, MetaResponse>(&MetaRequest::GetAttr { ino: 1 }, &[]).await.unwrap();
    assert_root_attr(&resp);
    s.stop().await;
}

/// Garbage-collection deletes carry the metadata leader's Raft term; a chunk server refuses one
/// from an older term than it has seen (a deposed leader), and remembers the term across a
/// restart. Raft messages are for metadata servers only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_from_a_deposed_leader_are_refused() {
    let s = Server::start().await;
    let data_dir = s.dir.path().join("chunk-data");
    let start_chunk = |data_dir: std::path::PathBuf| {
        let (stop, rx) = watch::channel(false);
        let cfg = tessera_chunk::ChunkConfig {
            data_dir,
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
            meta: vec![s.addr.to_string()],
            certs: s.dir.path().join("chunk"),
            zone: "z".into(),
            capacity: None,
            reserve: None,
            heartbeat: Duration::from_secs(1),
            repair_rate: 100.0,
            scan_interval: Duration::from_secs(600),
            scrub_rate: 50.0,
            scrub_interval: Duration::from_secs(24 * 3600),
            metrics: None,
        };
        async move { (tessera_chunk::start(cfg, rx).await.expect("chunk server"), stop) }
    };
    let (chunk, stop) = start_chunk(data_dir.clone()).await;
    let addr = chunk.addr;
    let data = b"a block to collect".to_vec();
    let id = BlockId::of(&data);
    let call = |who: &'static str, req: ChunkRequest, payload: Vec<u8>, addr: SocketAddr| {
        let c = RpcClient::new(net::client_endpoint(&s.certs(who)).unwrap(), &addr.to_string(), 1, Duration::from_secs(10), Role::Chunk);
        async move { c.call::<_, ChunkResponse>(&req, &payload).await.unwrap().0 }
    };
    let delete = |term| ChunkRequest::Delete { ids: vec![id], min_idle_secs: 0, term };
    assert!(matches!(call("client", ChunkRequest::Put { id, age: None }, data.clone(), addr).await, ChunkResponse::Stored { .. }));
    assert_eq!(call("meta", delete(3), vec![], addr).await, ChunkResponse::Deleted { count: 1 });
    assert!(matches!(call("client", ChunkRequest::Put { id, age: None }, data.clone(), addr).await, ChunkResponse::Stored { .. }));
    let refused = |r: ChunkResponse| match r {
        ChunkResponse::Error(e) => assert!(e.code == ErrorCode::NotLeader && e.message.contains("term 2 was refused"), "{e}"),
        other => panic!("a delete from an older term answered {other:?}"),
    };
    refused(call("meta", delete(2), vec![], addr).await);
    assert_eq!(call("client", ChunkRequest::Has { ids: vec![id], touch: false }, vec![], addr).await, ChunkResponse::Has(vec![true]), "the refused delete deleted nothing");

    // Restarted on its data, the server still knows term 3.
    stop.send(true).unwrap();
    timeout(Duration::from_secs(10), chunk.task).await.unwrap().unwrap();
    let (chunk, stop) = start_chunk(data_dir).await;
    refused(call("meta", delete(2), vec![], chunk.addr).await);
    assert_eq!(call("meta", delete(3), vec![], chunk.addr).await, ChunkResponse::Deleted { count: 1 });
    stop.send(true).unwrap();
    timeout(Duration::from_secs(10), chunk.task).await.unwrap().unwrap();

    // Raft messages: a client is refused; a metadata server that runs alone has no group.
    let (r, _) = s.rpc("client").call::<_, MetaResponse>(&MetaRequest::Raft { rpc: tessera_common::proto::meta::RaftRpc::Vote, to: 1 }, &[]).await.unwrap();
    assert!(matches!(&r, MetaResponse::Error(e) if e.code == ErrorCode::PermissionDenied), "{r:?}");
    let meta_peer = RpcClient::new(net::client_endpoint(&s.certs("meta")).unwrap(), &s.addr.to_string(), 1, Duration::from_secs(10), Role::Meta);
    let (r, _) = meta_peer.call::<_, MetaResponse>(&MetaRequest::Raft { rpc: tessera_common::proto::meta::RaftRpc::Vote, to: 1 }, b"garbage").await.unwrap();
    assert!(matches!(&r, MetaResponse::Error(e) if e.code == ErrorCode::InvalidArgument && e.message.contains("alone")), "{r:?}");
    s.stop().await;
}
