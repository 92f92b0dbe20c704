//! The metadata server refuses a commit that names a block no chunk server holds, so no
//! sequence of calls commits a dangling reference: a metadata server and a chunk server in
//! process, over real QUIC, driven with a client certificate.

use std::path::Path;
use std::time::{Duration, Instant};

use tessera_common::net::{self, RpcClient};
use tessera_common::proto::chunk::{ChunkRequest, ChunkResponse};
use tessera_common::proto::meta::{BlockRef, FileKind, MetaRequest, MetaResponse, Mutation};
use tessera_common::tls::{self, NodeCerts, Role};
use tessera_common::{BlockId, ErrorCode};
use tessera_meta::MetaConfig;
use tokio::sync::watch;

fn issue_all(d: &Path) {
    tls::init_ca(&d.join("ca")).unwrap();
    let hosts = ["127.0.0.1".to_string()];
    for (name, role) in [("meta", Role::Meta), ("client", Role::Client), ("chunk", Role::Chunk)] {
        tls::issue(&d.join("ca"), &d.join(name), &format!("{name}-1"), role, &hosts).unwrap();
    }
}

async fn meta_call(c: &RpcClient, req: MetaRequest) -> MetaResponse {
    c.call::<_, MetaResponse>(&req, &[]).await.expect("metadata call").0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_of_a_block_no_server_holds_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    issue_all(d);
    let (stop, rx) = watch::channel(false);
    // GC collects an unreferenced block after 1 s idle, checking every 300 ms.
    let meta = tessera_meta::start(
        MetaConfig { data_dir: d.join("meta-data"), certs: d.join("meta"), replicas: 1, gc_grace: Duration::from_secs(1), gc_interval: Duration::from_millis(300), ..Default::default() },
        rx.clone(),
    )
    .await
    .unwrap();
    let chunk = tessera_chunk::start(
        tessera_chunk::ChunkConfig {
            data_dir: d.join("chunk-data"),
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
            meta: vec![meta.addr.to_string()],
            certs: d.join("chunk"),
            zone: "z".into(),
            capacity: Some(1 << 30),
            reserve: None,
            heartbeat: Duration::from_millis(200),
            repair_rate: 100.0,
            scan_interval: Duration::from_secs(3600),
            scrub_rate: 50.0,
            scrub_interval: Duration::from_secs(3600),
            metrics: None,
        },
        rx,
    )
    .await
    .unwrap();
    let certs = NodeCerts::load(&d.join("client")).unwrap();
    let ep = net::client_endpoint(&certs).unwrap();
    let m = RpcClient::new(ep.clone(), &meta.addr.to_string(), 1, Duration::from_secs(10), Role::Meta);
    let c = RpcClient::new(ep, &chunk.addr.to_string(), 1, Duration::from_secs(10), Role::Chunk);
    let t = Instant::now();
    while !matches!(meta_call(&m, MetaRequest::GetRing).await, MetaResponse::Ring(r) if r.nodes.len() == 1) {
        assert!(t.elapsed() < Duration::from_secs(20), "the chunk server did not join the ring");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let MetaResponse::Session { session, .. } = meta_call(&m, MetaRequest::OpenSession { client: "test".into() }).await else { panic!("no session") };
    let create = Mutation::Create { parent: 1, name: b"f".to_vec(), kind: FileKind::File, perm: 0o644, uid: 0, gid: 0, rdev: 0, target: None, umask: 0 };
    let MetaResponse::Attr(a) = meta_call(&m, MetaRequest::Mutate { session, seq: 1, op: create }).await else { panic!("create failed") };

    // A block that was never put anywhere: refused, and the file is unchanged.
    let data = vec![42u8; 100_000];
    let id = BlockId::of(&data);
    let commit = |seq| MetaRequest::Mutate { session, seq, op: Mutation::CommitBlocks { ino: a.ino, blocks: vec![(0, BlockRef { id, len: data.len() as u32 })], size: data.len() as u64 } };
    match meta_call(&m, commit(2)).await {
        MetaResponse::Error(e) => {
            assert_eq!(e.code, ErrorCode::MissingBlock, "{e:?}");
            eprintln!("refused as expected: {e:?}");
        }
        other => panic!("a commit of a block no server holds was accepted: {other:?}"),
    }
    match meta_call(&m, MetaRequest::GetBlocks { ino: a.ino, first: 0, count: 16 }).await {
        MetaResponse::Blocks { size, blocks, .. } => assert_eq!((size, blocks.len()), (0, 0), "the refused commit changed the file"),
        other => panic!("GetBlocks: {other:?}"),
    }

    // Put, then commit: accepted.
    let (r, _) = c.call::<_, ChunkResponse>(&ChunkRequest::Put { id, age: None }, &data).await.unwrap();
    assert!(matches!(r, ChunkResponse::Stored { .. }), "{r:?}");
    match meta_call(&m, commit(3)).await {
        MetaResponse::Attr(a) => assert_eq!(a.size, data.len() as u64),
        other => panic!("a commit of a stored block was refused: {other:?}"),
    }
    match meta_call(&m, MetaRequest::GetBlocks { ino: a.ino, first: 0, count: 16 }).await {
        MetaResponse::Blocks { blocks, .. } => assert_eq!(blocks, vec![(0, BlockRef { id, len: data.len() as u32 })]),
        other => panic!("GetBlocks: {other:?}"),
    }

    // The file is deleted and its block collected; a retry of the commit (its reply was lost)
    // is answered with the original reply, not refused for the block that is gone now.
    let unlink = Mutation::Unlink { parent: 1, name: b"f".to_vec(), keep: false };
    assert!(matches!(meta_call(&m, MetaRequest::Mutate { session, seq: 4, op: unlink }).await, MetaResponse::Unlinked { .. }));
    let t = Instant::now();
    while c.call::<_, ChunkResponse>(&ChunkRequest::Has { ids: vec![id], touch: false }, &[]).await.unwrap().0 != ChunkResponse::Has(vec![false]) {
        assert!(t.elapsed() < Duration::from_secs(30), "garbage collection did not delete the unreferenced block");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match meta_call(&m, commit(3)).await {
        MetaResponse::Attr(a) => assert_eq!(a.size, data.len() as u64, "the retry got another reply than the original"),
        other => panic!("a retried commit was not answered with its original reply: {other:?}"),
    }
    stop.send(true).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = meta.task.await;
        let _ = chunk.task.await;
    })
    .await;
}
