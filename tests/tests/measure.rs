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
