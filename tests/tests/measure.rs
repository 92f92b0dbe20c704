//! Measurements for the docs and issue notes, not checks: run them explicitly with
//! `cargo nextest run --release -p tessera-tests --test measure --run-ignored only --no-capture`.
//! They print one line per figure.

use std::time::{Duration, Instant};

use tessera_tests::cluster::*;
use tessera_tests::*;

const MIB: usize = 1 << 20;

/// Repair throughput after a server goes out, at a set `--repair-rate`, and the blocks moved
/// when a server joins, as a multiple of the ideal (its fair share).
#[test]
#[ignore]
fn repair_throughput_and_join_movement() {
    let rate: u64 = std::env::var("TESSERA_REPAIR_RATE").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    let mut c = Cluster::start_with(ClusterOpts { chunks: 5, out_after: 8, repair_rate: rate, ..Default::default() });
    let mut rng = seeded_rng();
    let data = random_bytes(&mut rng, 512 * MIB);
    write_file_synced(&c.path("f"), &data).unwrap();
    let ids = block_ids_of(&data);
    let lost = c.chunks[0].block_files().len();
    c.kill9(0);
    c.wait_state(0, "out", Duration::from_secs(60));
    let t = Instant::now();
    let live: Vec<usize> = (1..5).collect();
    assert!(c.wait_until(Duration::from_secs(600), |c| c.wrong_copies(&ids, &live, 3).is_empty()), "not re-replicated");
    let secs = t.elapsed().as_secs_f64();
    let mb = (lost * BLOCK_SIZE) as f64 / 1e6;
    println!("MEASURE repair: {lost} blocks ({mb:.0} MB) re-replicated in {secs:.1} s after the server went out = {:.1} MB/s (repair-rate {rate} MB/s per server, 4 senders)", mb / secs);

    // A sixth server joins (the 5th live one): ideal share = copies / live servers.
    let before: std::collections::HashMap<String, usize> = c.block_counts();
    let j = c.add_chunk();
    let live: Vec<usize> = vec![1, 2, 3, 4, j];
    let t = Instant::now();
    assert!(
        c.wait_until(Duration::from_secs(600), |c| {
            c.wrong_copies(&ids, &live, 3).is_empty() && c.try_status().map(|s| blocks_field(&s, "misplaced") == 0).unwrap_or(false)
        }),
        "join did not settle"
    );
    let moved = c.chunks[j].block_files().len();
    let ideal = ids.len() as f64 * 3.0 / live.len() as f64;
    println!(
        "MEASURE join: new server received {moved} blocks in {:.1} s; ideal share {ideal:.1}; moved / ideal = {:.2}; per-server blocks before {before:?} after {:?}",
        t.elapsed().as_secs_f64(),
        moved as f64 / ideal,
        c.block_counts()
    );
}

fn tessera_env(c: &DevCluster, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(bin("tessera"));
    cmd.args(args).envs(c.env());
    run_timeout(&mut cmd, Duration::from_secs(600))
}

fn stored(c: &DevCluster) -> u64 {
    std::thread::sleep(Duration::from_secs(3));
    c.status_json()["bytes"]["stored"].as_u64().unwrap()
}

/// Second write of identical data versus the first, scrub throughput, space reclaimed by GC.
#[test]
#[ignore]
fn dedup_scrub_and_gc() {
    let c = DevCluster::start_with(&["--gc-grace", "2"]);
    let mut rng = seeded_rng();
    let data = random_bytes(&mut rng, 1024 * MIB);
    let t = Instant::now();
    write_file_synced(&c.path("one"), &data).unwrap();
    let first = t.elapsed().as_secs_f64();
    let s1 = stored(&c);
    let t = Instant::now();
    write_file_synced(&c.path("two"), &data).unwrap();
    let second = t.elapsed().as_secs_f64();
    let s2 = stored(&c);
    println!("MEASURE dedup: 1 GiB written in {first:.2} s, the identical 1 GiB again in {second:.2} s ({:.1}x faster); stored {s1} -> {s2} bytes (+{:.3}%)", first / second, (s2 - s1) as f64 * 100.0 / s1 as f64);

    let t = Instant::now();
    let out = tessera_env(&c, &["scrub", "--wait", "--json"]);
    let secs = t.elapsed().as_secs_f64();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bytes = r["bytes"].as_u64().unwrap() as f64;
    println!("MEASURE scrub: {} blocks, {:.0} MB re-hashed in {secs:.1} s = {:.0} MB/s over 3 servers (scrub-rate 50 MB/s each)", r["checked"], bytes / 1e6, bytes / 1e6 / secs);

    std::fs::remove_file(c.path("one")).unwrap();
    std::fs::remove_file(c.path("two")).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let t = Instant::now();
    let out = tessera_env(&c, &["gc", "--wait", "--json"]);
    let gc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s3 = stored(&c);
    println!("MEASURE gc: deleted {} copies in {:.1} s (plus earlier periodic passes); stored {s2} -> {s3} bytes", gc["deleted"], t.elapsed().as_secs_f64());
}
