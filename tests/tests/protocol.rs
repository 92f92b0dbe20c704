//! The wire protocol against a real metadata server, in process, over real QUIC sockets: bad
//! frames close the offending connection and nobody else's; roles and CAs are enforced.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;
use tessera_common::net::{self, RpcClient};
use tessera_common::proto::meta::{FileKind, MetaRequest, MetaResponse, Mutation};
use tessera_common::proto::{self, CLOSE_PROTOCOL_ERROR, MAX_HEADER, MAX_PAYLOAD};
use tessera_common::tls::{self, NodeCerts, Role};
use tessera_common::ErrorCode;
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
        RpcClient::new(net::client_endpoint(&self.certs(who)).unwrap(), &self.addr.to_string(), 1, Duration::from_secs(10))
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
    let (r, _) = client.call::<_, MetaResponse>(&MetaRequest::Heartbeat { node_id: 99, capacity: 1, used: 0, blocks: 0, repair_pending: 0, full: false }, &[]).await.unwrap();
    denied(&r, "a client sending heartbeats");
    let (r, _) = client.call::<_, MetaResponse>(&MetaRequest::Status, &[]).await.unwrap();
    denied(&r, "a client reading the cluster status");

    let chunk = s.rpc("chunk");
    let op = Mutation::Create { parent: 1, name: b"x".to_vec(), kind: FileKind::File, perm: 0o644, uid: 0, gid: 0, rdev: 0, target: None };
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
