//! Shared parts of Tessera: the wire protocol, block ids, the placement ring, QUIC/TLS setup
//! and certificates. Every message type lives here once (`proto`).

pub mod backup;
pub mod block;
pub mod config;
pub mod durable;
pub mod error;
pub mod http;
pub mod metalink;
pub mod metrics;
pub mod names;
pub mod net;
pub mod notify;
pub mod paging;
pub mod patch;
pub mod proto;
pub mod ring;
pub mod tls;
pub mod worker;
pub mod xattr;

pub use block::BlockId;
pub use error::{ErrorCode, WireError};

/// Default logical block size (DESIGN.md, "Data model").
pub const DEFAULT_BLOCK_SIZE: u32 = 4 * 1024 * 1024;
/// Largest block size a file system may be formatted with; bounds every payload.
pub const MAX_BLOCK_SIZE: u32 = 16 * 1024 * 1024;
/// Files up to this size are stored inline in the metadata, not as blocks: a small file then
/// costs no chunk-server round trip and no block fsyncs.
pub const INLINE_MAX: usize = 16 * 1024;
/// Inode number of the root directory (as FUSE expects).
pub const ROOT_INO: u64 = 1;

/// Initialise `tracing` for a binary from `RUST_LOG` (default `info`), logging to stderr.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Wait for SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received, shutting down");
}

/// `secs` since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC` (civil-from-days, proleptic
/// Gregorian).
pub fn utc_time(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}
