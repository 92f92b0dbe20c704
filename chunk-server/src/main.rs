use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;
use tessera_chunk::ChunkConfig;
use tessera_common::metalink::parse_meta_list;

/// Tessera chunk server: stores content-addressed blocks.
#[derive(Parser)]
#[command(name = "tessera-chunk", version)]
struct Args {
    /// A TOML file of flag values (keys are the long flag names, see docs/config.md); flags and
    /// environment variables override it.
    #[arg(long, value_name = "FILE")]
    #[allow(dead_code)] // read by config::parse, before clap parses
    config: Option<PathBuf>,
    /// Where blocks are stored.
    #[arg(long, env = "TESSERA_DATA_DIR")]
    data_dir: PathBuf,
    /// UDP address to serve QUIC on (ADDR:PORT).
    #[arg(long, env = "TESSERA_LISTEN")]
    listen: std::net::SocketAddr,
    /// Metadata servers, comma-separated.
    #[arg(long, env = "TESSERA_META")]
    meta: String,
    /// Certificate bundle (ca.crt, node.crt, node.key) with role chunk.
    #[arg(long, env = "TESSERA_CERTS")]
    certs: PathBuf,
    /// Failure domain (host, rack): replicas go to distinct zones while enough exist.
    #[arg(long, env = "TESSERA_ZONE", default_value = "default")]
    zone: String,
    /// Bytes offered to the cluster (default: the size of the data directory's disk).
    #[arg(long, env = "TESSERA_CAPACITY")]
    capacity: Option<u64>,
    /// Bytes kept free: below it the server reports itself full and takes no new blocks
    /// (default: 5% of the disk or of --capacity if smaller, at least 16 MiB, at most 1 GiB).
    #[arg(long, env = "TESSERA_RESERVE")]
    reserve: Option<u64>,
    /// Repair and rebalance traffic limit in MB/s.
    #[arg(long, env = "TESSERA_REPAIR_RATE", default_value_t = 100.0)]
    repair_rate: f64,
    /// Seconds between repair scans.
    #[arg(long, env = "TESSERA_SCAN_INTERVAL", default_value_t = 10)]
    scan_interval: u64,
    /// Scrub (re-hash) traffic limit in MB/s.
    #[arg(long, env = "TESSERA_SCRUB_RATE", default_value_t = 50.0)]
    scrub_rate: f64,
    /// Hours between background scrub passes.
    #[arg(long, env = "TESSERA_SCRUB_INTERVAL_HOURS", default_value_t = 24.0)]
    scrub_interval_hours: f64,
    /// Address other nodes reach this server at (default: the listen address).
    #[arg(long, env = "TESSERA_ADVERTISE")]
    advertise: Option<String>,
    /// Serve Prometheus metrics on this TCP address, plain HTTP (`GET /metrics`); off unless
    /// set. Use a loopback or private address: the page is not authenticated.
    #[arg(long, env = "TESSERA_METRICS", value_name = "ADDR:PORT")]
    metrics: Option<std::net::SocketAddr>,
}

#[tokio::main]
async fn main() {
    tessera_common::init_logging();
    let a: Args = tessera_common::config::parse();
    let meta = match parse_meta_list(&a.meta) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("tessera-chunk: {e}");
            std::process::exit(2);
        }
    };
    let cfg = ChunkConfig { data_dir: a.data_dir, listen: a.listen, advertise: a.advertise, meta, certs: a.certs, zone: a.zone, capacity: a.capacity, reserve: a.reserve, heartbeat: Duration::from_secs(1), repair_rate: a.repair_rate, scan_interval: Duration::from_secs(a.scan_interval.max(1)), scrub_rate: a.scrub_rate, scrub_interval: Duration::from_secs_f64((a.scrub_interval_hours * 3600.0).max(1.0)), metrics: a.metrics };
    if !(cfg.repair_rate > 0.0 && cfg.scrub_rate > 0.0 && a.scrub_interval_hours > 0.0) {
        eprintln!("tessera-chunk: --repair-rate, --scrub-rate and --scrub-interval-hours must be positive numbers");
        std::process::exit(2);
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    let server = match tessera_chunk::start(cfg, rx).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tessera-chunk: {e:#}");
            std::process::exit(1);
        }
    };
    tessera_common::notify::ready();
    tessera_common::wait_for_signal().await;
    let _ = tx.send(true);
    let _ = server.task.await;
}

tessera_common::config_docs_test!(Args);
