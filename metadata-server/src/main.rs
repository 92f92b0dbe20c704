use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;
use tessera_meta::MetaConfig;

/// Tessera metadata server: keeps the namespace and the cluster membership.
#[derive(Parser)]
#[command(name = "tessera-meta", version)]
struct Args {
    /// A TOML file of flag values (keys are the long flag names, see docs/config.md); flags and
    /// environment variables override it.
    #[arg(long, value_name = "FILE")]
    #[allow(dead_code)] // read by config::parse, before clap parses
    config: Option<PathBuf>,
    /// Where the namespace database (RocksDB) lives.
    #[arg(long, env = "TESSERA_DATA_DIR")]
    data_dir: PathBuf,
    /// UDP address to serve QUIC on (ADDR:PORT).
    #[arg(long, env = "TESSERA_LISTEN")]
    listen: std::net::SocketAddr,
    /// Certificate bundle (ca.crt, node.crt, node.key) with role meta.
    #[arg(long, env = "TESSERA_CERTS")]
    certs: PathBuf,
    /// Copies of every block.
    #[arg(long, env = "TESSERA_REPLICAS", default_value_t = 3)]
    replicas: u32,
    /// Acknowledged copies needed before a write commits (default: a majority of --replicas,
    /// 2 of 3). Below N, repair fills in the rest later; --write-quorum N is the strict mode.
    #[arg(long, env = "TESSERA_WRITE_QUORUM")]
    write_quorum: Option<u32>,
    /// Block size in bytes, fixed when the file system is created.
    #[arg(long, env = "TESSERA_BLOCK_SIZE", default_value_t = tessera_common::DEFAULT_BLOCK_SIZE)]
    block_size: u32,
    /// Seconds without a heartbeat before a chunk server is `down`.
    #[arg(long, env = "TESSERA_DOWN_AFTER", default_value_t = 5)]
    down_after: u64,
    /// Seconds without a heartbeat before a chunk server is `out` and leaves the ring.
    #[arg(long, env = "TESSERA_OUT_AFTER", default_value_t = 600)]
    out_after: u64,
    /// Seconds an unreferenced block stays unused before garbage collection deletes it.
    #[arg(long, env = "TESSERA_GC_GRACE", default_value_t = 3600)]
    gc_grace: u64,
    /// Seconds between garbage-collection passes.
    #[arg(long, env = "TESSERA_GC_INTERVAL", default_value_t = 600)]
    gc_interval: u64,
    /// Seconds a client session (a mount) may go without a heartbeat before it expires and
    /// its locks and open files are released.
    #[arg(long, env = "TESSERA_SESSION_LEASE", default_value_t = 30)]
    session_lease: u64,
    /// Start from a backup made by `tessera meta backup` (verified first); --data-dir must not
    /// hold a database yet. A one-off action, so a command-line flag only (no file key).
    #[arg(long, value_name = "BACKUP_DIR")]
    restore: Option<PathBuf>,
    /// Serve Prometheus metrics on this TCP address, plain HTTP (`GET /metrics`); off unless
    /// set. Use a loopback or private address: the page is not authenticated.
    #[arg(long, env = "TESSERA_METRICS", value_name = "ADDR:PORT")]
    metrics: Option<std::net::SocketAddr>,
    /// This server's id in a replicated metadata group (with --peers; docs/raft.md).
    #[arg(long, env = "TESSERA_ID", requires = "peers")]
    id: Option<u64>,
    /// Every metadata server of the group, this one included, as ID=HOST:PORT,... (3 or 5
    /// servers): the commands are replicated through Raft and the leader answers. Alone if unset.
    #[arg(long, env = "TESSERA_PEERS", requires = "id", value_name = "ID=ADDR,...")]
    peers: Option<String>,
    /// Under Raft: log entries between snapshots; the log behind a snapshot is dropped, and a
    /// server further behind than that receives the snapshot.
    #[arg(long, env = "TESSERA_RAFT_SNAPSHOT_EVERY", default_value_t = 10_000)]
    raft_snapshot_every: u64,
    /// Under Raft: this is a new server, to be added to a running group with `tessera meta add
    /// ID ADDR`; it waits for the leader instead of forming a group (--peers needs to name only
    /// this server then).
    #[arg(long, env = "TESSERA_JOIN", requires = "peers")]
    join: bool,
}

#[tokio::main]
async fn main() {
    tessera_common::init_logging();
    let a: Args = tessera_common::config::parse();
    let raft = match (a.id, &a.peers) {
        (Some(id), Some(list)) => match tessera_meta::raft::parse_peers(list) {
            Ok(peers) => Some(tessera_meta::RaftGroup { id, peers, snapshot_every: a.raft_snapshot_every, join: a.join }),
            Err(e) => {
                eprintln!("tessera-meta: {e}");
                std::process::exit(2);
            }
        },
        _ => None,
    };
    let cfg = MetaConfig {
        data_dir: a.data_dir,
        listen: a.listen,
        certs: a.certs,
        replicas: a.replicas,
        write_quorum: a.write_quorum,
        block_size: a.block_size,
        down_after: Duration::from_secs(a.down_after),
        out_after: Duration::from_secs(a.out_after),
        gc_grace: Duration::from_secs(a.gc_grace),
        gc_interval: Duration::from_secs(a.gc_interval.max(1)),
        session_lease: Duration::from_secs(a.session_lease),
        restore: a.restore,
        metrics: a.metrics,
        raft,
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let server = match tessera_meta::start(cfg, rx).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tessera-meta: {e:#}");
            std::process::exit(1);
        }
    };
    tessera_common::notify::ready();
    tessera_common::wait_for_signal().await;
    let _ = tx.send(true);
    let _ = server.task.await;
}

tessera_common::config_docs_test!(Args);
