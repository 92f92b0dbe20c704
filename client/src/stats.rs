//! `tessera stats ADDR[,ADDR...]` (as `juicefs stats`): a line per interval of what the
//! processes whose `--metrics` pages are at those addresses did in it: FUSE calls, bytes read
//! and written and mean call latency (mounts), requests, bytes in and out and mean latency
//! (servers), summed over the addresses. `--json` prints one object per line.

use anyhow::{bail, Context};
use serde::Serialize;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Every sample of a scrape, summed over its labels, by series name.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let name = series.split('{').next().unwrap_or(series);
        // Histogram buckets would be counted once per bucket: only sums and counts are used.
        if name.ends_with("_bucket") {
            continue;
        }
        if let Ok(v) = value.parse::<f64>() {
            *out.entry(name.to_string()).or_insert(0.0) += v;
        }
    }
    out
}

/// `GET /metrics` from `addr` (HOST:PORT).
fn scrape(addr: &str) -> anyhow::Result<HashMap<String, f64>> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("{addr}: no metrics page (started with --metrics {addr}?)"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text).with_context(|| format!("{addr}: reading the metrics page"))?;
    let Some((head, body)) = text.split_once("\r\n\r\n") else { bail!("{addr}: not an HTTP answer") };
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{addr}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(parse(body))
}

fn scrape_all(addrs: &[String]) -> anyhow::Result<HashMap<String, f64>> {
    let mut sum = HashMap::new();
    for a in addrs {
        for (k, v) in scrape(a)? {
            *sum.entry(k).or_insert(0.0) += v;
        }
    }
    Ok(sum)
}

#[derive(Serialize, Debug, Default)]
pub struct Line {
    pub seconds: f64,
    pub fuse_ops_per_sec: f64,
    pub read_mib_per_sec: f64,
    pub write_mib_per_sec: f64,
    pub fuse_mean_ms: f64,
    pub rpc_per_sec: f64,
    pub rpc_in_mib_per_sec: f64,
    pub rpc_out_mib_per_sec: f64,
    pub rpc_mean_ms: f64,
}

fn line(a: &HashMap<String, f64>, b: &HashMap<String, f64>, secs: f64) -> Line {
    let d = |k: &str| (b.get(k).copied().unwrap_or(0.0) - a.get(k).copied().unwrap_or(0.0)).max(0.0);
    let mean_ms = |sum: &str, count: &str| if d(count) > 0.0 { d(sum) * 1000.0 / d(count) } else { 0.0 };
    const MIB: f64 = (1 << 20) as f64;
    Line {
        seconds: secs,
        fuse_ops_per_sec: d("tessera_fuse_requests_total") / secs,
        read_mib_per_sec: d("tessera_fuse_read_bytes_total") / MIB / secs,
        write_mib_per_sec: d("tessera_fuse_written_bytes_total") / MIB / secs,
        fuse_mean_ms: mean_ms("tessera_fuse_request_seconds_sum", "tessera_fuse_request_seconds_count"),
        rpc_per_sec: d("tessera_rpc_requests_total") / secs,
        rpc_in_mib_per_sec: d("tessera_rpc_received_bytes_total") / MIB / secs,
        rpc_out_mib_per_sec: d("tessera_rpc_sent_bytes_total") / MIB / secs,
        rpc_mean_ms: mean_ms("tessera_rpc_request_seconds_sum", "tessera_rpc_request_seconds_count"),
    }
}

/// Print a line every `interval`, `count` times (forever if None).
pub fn run(addrs: &[String], interval: Duration, count: Option<u64>, json: bool) -> anyhow::Result<()> {
    if addrs.is_empty() {
        bail!("name at least one --metrics address (HOST:PORT)");
    }
    let mut prev = scrape_all(addrs)?;
    let mut at = Instant::now();
    if !json {
        println!("{:>9} {:>8} {:>8} {:>9} | {:>9} {:>8} {:>8} {:>9}", "FUSE op/s", "read MiB", "write MiB", "FUSE ms", "RPC req/s", "in MiB", "out MiB", "RPC ms");
    }
    let mut n = 0;
    while count.is_none_or(|c| n < c) {
        std::thread::sleep(interval);
        let now = scrape_all(addrs)?;
        let l = line(&prev, &now, at.elapsed().as_secs_f64());
        at = Instant::now();
        prev = now;
        if json {
            println!("{}", serde_json::to_string(&l)?);
        } else {
            println!(
                "{:>9.0} {:>8.1} {:>9.1} {:>9.2} | {:>9.0} {:>8.1} {:>8.1} {:>9.2}",
                l.fuse_ops_per_sec, l.read_mib_per_sec, l.write_mib_per_sec, l.fuse_mean_ms, l.rpc_per_sec, l.rpc_in_mib_per_sec, l.rpc_out_mib_per_sec, l.rpc_mean_ms
            );
        }
        std::io::stdout().flush()?;
        n += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_of_two_scrapes_make_rates_and_mean_latency() {
        let a = parse("# TYPE tessera_fuse_requests counter\ntessera_fuse_requests_total{op=\"read\"} 10\ntessera_fuse_requests_total{op=\"write\"} 5\ntessera_fuse_request_seconds_sum{op=\"read\"} 1\ntessera_fuse_request_seconds_count{op=\"read\"} 10\ntessera_fuse_request_seconds_bucket{op=\"read\",le=\"0.1\"} 10\ntessera_fuse_read_bytes_total 0\n");
        let b = parse("tessera_fuse_requests_total{op=\"read\"} 30\ntessera_fuse_requests_total{op=\"write\"} 5\ntessera_fuse_request_seconds_sum{op=\"read\"} 3\ntessera_fuse_request_seconds_count{op=\"read\"} 30\ntessera_fuse_request_seconds_bucket{op=\"read\",le=\"0.1\"} 30\ntessera_fuse_read_bytes_total 4194304\n");
        let l = line(&a, &b, 2.0);
        assert_eq!(l.fuse_ops_per_sec, 10.0);
        assert_eq!(l.read_mib_per_sec, 2.0);
        assert_eq!(l.fuse_mean_ms, 100.0);
        assert_eq!(l.rpc_per_sec, 0.0);
    }
}
