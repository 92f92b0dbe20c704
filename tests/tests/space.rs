//! Space, end to end on a multi-process cluster: garbage collection reclaims every copy while
//! repair scans run many times per grace period.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tessera_tests::cluster::*;
use tessera_tests::*;

const MIB: usize = 1 << 20;

/// `tessera ARGS --meta .. --certs ADMIN`; returns the output, whatever the status.
fn admin(c: &Cluster, args: &[&str]) -> Output {
    run_timeout(
        Command::new(bin("tessera")).args(args).args(["--meta", &c.meta_addr, "--certs"]).arg(&c.admin).env_remove("TESSERA_META").env_remove("TESSERA_CERTS"),
        Duration::from_secs(120),
    )
}

fn total_block_files(c: &Cluster) -> usize {
    c.chunks.iter().map(|n| n.block_files().len()).sum()
}

/// Repair scans every second, six per grace period: a scan's probes of other owners must not
/// count as use, or no copy is ever idle for the grace and nothing is reclaimed.
#[test]
fn gc_reclaims_every_copy_while_repair_scans() {
    let grace = 6;
    let c = Cluster::start_with(ClusterOpts {
        chunks: 4,
        replicas: 3,
        scan_interval: 1,
        meta_args: vec!["--gc-grace".into(), grace.to_string(), "--gc-interval".into(), "3600".into()],
        ..Default::default()
    });
    let mut rng = seeded_rng();
    let data = random_bytes(&mut rng, 6 * BLOCK_SIZE);
    write_file_synced(&c.path("f"), &data).unwrap();
    let ids = block_ids_of(&data);
    let all: Vec<usize> = (0..c.chunks.len()).collect();
    assert!(c.wrong_copies(&ids, &all, 3).is_empty(), "3 copies of each block: {:?}", c.copies(&ids, &all));
    std::fs::remove_file(c.path("f")).unwrap();
    // Past the grace, every copy is idle: two passes (the first may race a repair send) delete all.
    std::thread::sleep(Duration::from_secs(grace + 2));
    let t = Instant::now();
    let mut passes = Vec::new();
    while total_block_files(&c) > 0 && passes.len() < 3 {
        let out = admin(&c, &["gc", "--wait", "--json"]);
        assert!(out.status.success(), "gc failed: {}", String::from_utf8_lossy(&out.stderr));
        passes.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!("{} gc passes {passes:?} in {:?}; block files left {:?}", passes.len(), t.elapsed(), c.block_counts());
    assert_eq!(total_block_files(&c), 0, "copies left after {} gc passes past the grace: {:?}; passes {passes:?}", passes.len(), c.block_counts());
    let stored = wait_stored(&c, 0);
    assert_eq!(stored, 0, "status still reports {stored} stored bytes");
}

/// `bytes.stored` of `status`, once it reads `want` (heartbeats lag) or after 15 s.
fn wait_stored(c: &Cluster, want: u64) -> u64 {
    let mut last = u64::MAX;
    c.wait_until(Duration::from_secs(15), |c| {
        last = c.try_status().ok().and_then(|s| s["bytes"]["stored"].as_u64()).unwrap_or(u64::MAX);
        last == want
    });
    last
}
