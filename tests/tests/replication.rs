//! Replication end to end: five chunk servers, three replicas, real processes on loopback and a
//! real FUSE mount. Servers are killed with SIGKILL, restarted on their old data, added,
//! drained and removed; every check is one a user could make: the bytes read back (BLAKE3),
//! `tessera status --json`, and the block files in the servers' data directories.
//!
//! The clusters of this file run one at a time (a lock in the harness): each is a dozen
//! processes and the failure-detection timeouts are short.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tessera_tests::cluster::*;
use tessera_tests::*;

const MIB: usize = 1 << 20;

fn errno(e: &std::io::Error) -> String {
    format!("{e} (errno {:?})", e.raw_os_error())
}

/// Random bytes, written to `path` (fsynced). Returns the bytes.
fn write_random(c: &Cluster, name: &str, mib: usize, rng: &mut impl rand::RngCore) -> Vec<u8> {
    let data = random_bytes(rng, mib * MIB);
    let t = Instant::now();
    write_file_synced(&c.path(name), &data).unwrap_or_else(|e| panic!("writing {mib} MiB to {name}: {}", errno(&e)));
    eprintln!("{} wrote {name} ({mib} MiB) in {:?}", c.t(), t.elapsed());
    data
}

/// Drop the page cache, read `path` whole and compare with `data`.
fn assert_reads_back(c: &Cluster, path: &Path, data: &[u8], what: &str) {
    drop_page_cache();
    let t = Instant::now();
    let len = std::fs::metadata(path).unwrap_or_else(|e| panic!("{what}: stat {}: {}", path.display(), errno(&e))).len();
    assert_eq!(len, data.len() as u64, "{what}: size of {}", path.display());
    let got = hash_file(path).unwrap_or_else(|e| panic!("{what}: reading {}: {}", path.display(), errno(&e)));
    eprintln!("{} {what}: read {} ({} MiB) in {:?}", c.t(), path.display(), data.len() / MIB, t.elapsed());
    assert_eq!(got, blake3::hash(data), "{what}: the bytes read back from {} differ from the bytes written", path.display());
}

/// Wait until status shows no under-replicated, missing or misplaced block and every block of
/// `ids` has exactly `n` copies on `servers` (block files). Panics after `timeout`.
fn wait_fully_replicated(c: &Cluster, ids: &[String], servers: &[usize], n: usize, timeout: Duration, what: &str) {
    let t = Instant::now();
    let mut last = None;
    let ok = c.wait_until(timeout, |c| {
        let Ok(s) = c.try_status() else { return false };
        let clean = blocks_field(&s, "under_replicated") == 0 && blocks_field(&s, "missing") == 0 && blocks_field(&s, "misplaced") == 0;
        let wrong = c.wrong_copies(ids, servers, n);
        let done = clean && wrong.is_empty();
        last = Some((s["blocks"].clone(), wrong.len(), wrong.first().cloned()));
        done
    });
    assert!(
        ok,
        "{what}: not fully replicated {timeout:?} later: last status blocks {:?}, blocks without exactly {n} copies on servers {servers:?}: {:?} (example); per-server block files: {:?}",
        last.as_ref().map(|l| &l.0),
        last.as_ref().map(|l| (l.1, &l.2)),
        c.block_counts()
    );
    eprintln!("{} {what}: fully replicated ({n} copies of each of {} blocks) after {:?}", c.t(), ids.len(), t.elapsed());
}

/// Five servers, three replicas, 256 MiB: lose a server, read while it is down, re-replicate once
/// it is out, then add a sixth server and check that it takes about its share.
#[test]
fn survives_a_server_loss() {
    // A longer `out` timeout, so that reading 256 MiB surely happens while the server is down.
    // The strict quorum: every fsynced block has its three copies at once.
    let mut c = Cluster::start_with(ClusterOpts { out_after: 30, write_quorum: Some(3), ..Default::default() });
    let mut rng = seeded_rng();
    let data = write_random(&c, "big.bin", 256, &mut rng);
    let ids = block_ids_of(&data);
    let all: Vec<usize> = (0..5).collect();
    let wrong = c.wrong_copies(&ids, &all, 3);
    assert!(wrong.is_empty(), "after an fsynced write (write quorum = 3) {} of {} blocks do not have 3 copies: {:?}", wrong.len(), ids.len(), &wrong[..wrong.len().min(5)]);

    let victim = 2;
    let lost = c.chunks[victim].block_files().len();
    c.kill9(victim);
    let state = c.wait_not_up(victim, Duration::from_secs(25));
    assert_eq!(state, "down", "the killed server should be down (not yet out)");
    // The mount never read these blocks: nothing is in its cache.
    assert_reads_back(&c, &c.path("big.bin"), &data, "read while a server is down");
    let s = c.status_json();
    assert_eq!(c.node_state(&s, victim).as_deref(), Some("down"), "the killed server should still be down (not out) after the read");

    c.wait_state(victim, "out", Duration::from_secs(60));
    let live = c.running();
    eprintln!("{} re-replicating the {lost} blocks the lost server held", c.t());
    wait_fully_replicated(&c, &ids, &live, 3, Duration::from_secs(90), "after the loss");

    // A sixth server joins: it gets about its fair share, and nothing ends up misplaced.
    let new = c.add_chunk();
    let live = c.running();
    let fair = ids.len() * 3 / live.len();
    let t = Instant::now();
    let ok = c.wait_until(Duration::from_secs(90), |c| {
        c.chunks[new].block_files().len() * 2 >= fair
            && c.try_status().is_ok_and(|s| blocks_field(&s, "misplaced") == 0 && blocks_field(&s, "under_replicated") == 0 && blocks_field(&s, "missing") == 0)
    });
    assert!(
        ok,
        "the new server holds {} blocks (fair share {fair}) and status shows {:?} 90 s after it joined; per-server block files: {:?}",
        c.chunks[new].block_files().len(),
        c.try_status().map(|s| s["blocks"].clone()),
        c.block_counts()
    );
    eprintln!("{} the new server took {} blocks (fair share {fair}) in {:?}", c.t(), c.chunks[new].block_files().len(), t.elapsed());
    wait_fully_replicated(&c, &ids, &live, 3, Duration::from_secs(60), "after a server joined");
    let held = c.chunks[new].block_files().len();
    assert!(held <= fair * 2, "the new server holds {held} blocks, more than twice its fair share {fair}");

    // After all that moving, a fresh client still reads every byte.
    c.remount();
    assert_reads_back(&c, &c.path("big.bin"), &data, "read after rebalancing");
    c.assert_running();

    // What `status` says each server holds is what its data directory holds (heartbeats come
    // every second, so give it a few).
    let mut last = Vec::new();
    let ok = c.wait_until(Duration::from_secs(5), |c| {
        let Ok(s) = c.try_status() else { return false };
        last = c
            .running()
            .into_iter()
            .map(|i| (c.chunks[i].name.clone(), c.node_json(&s, i).and_then(|n| n["blocks"].as_u64()), c.chunks[i].block_files().len() as u64))
            .collect();
        last.iter().all(|(_, reported, files)| *reported == Some(*files))
    });
    assert!(ok, "status `blocks` per server disagrees with the block files in its data directory: (server, status, files) {last:?}");
}

/// Kill two of the three servers holding a block of a file: the file is still readable.
#[test]
fn two_of_three_owners_down() {
    // A long `out` timeout: the killed servers stay `down`, nothing is re-replicated meanwhile.
    let mut c = Cluster::start_with(ClusterOpts { out_after: 120, write_quorum: Some(3), ..Default::default() });
    let mut rng = seeded_rng();
    let data = write_random(&c, "f.bin", 64, &mut rng);
    let ids = block_ids_of(&data);
    let holders = c.holders(&ids[0]);
    assert_eq!(holders.len(), 3, "block 0 of the file should be on 3 servers, found on {holders:?}");
    let (a, b) = (holders[0], holders[1]);
    c.kill9(a);
    c.kill9(b);
    let live = c.running();
    let single = c.copies(&ids, &live).values().filter(|&&n| n == 1).count();
    eprintln!("{} {single} of {} blocks of the file now have one live copy", c.t(), ids.len());
    c.wait_state(a, "down", Duration::from_secs(20));
    c.wait_state(b, "down", Duration::from_secs(20));
    // The writing client never read the file back, so the blocks come from the servers.
    assert_reads_back(&c, &c.path("f.bin"), &data, "read with two owners down (same mount)");
    // And a fresh client.
    let m2 = c.extra_mount("mnt2");
    assert_reads_back(&c, &c.root().join("mnt2/f.bin"), &data, "read with two owners down (new mount)");
    drop(m2);
    c.assert_running();
}

/// Read `path` in 1 MiB `read()` calls; the bytes and the longest single call.
fn read_timed(path: &Path) -> (Vec<u8>, Duration) {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {}", path.display(), errno(&e)));
    let (mut out, mut buf, mut longest) = (Vec::new(), vec![0u8; MIB], Duration::ZERO);
    loop {
        let t = Instant::now();
        let n = f.read(&mut buf).unwrap_or_else(|e| panic!("read {}: {}", path.display(), errno(&e)));
        longest = longest.max(t.elapsed());
        if n == 0 {
            return (out, longest);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Write `data` to `path` in 1 MiB `write()` calls and fsync; the longest single call.
fn write_timed(path: &Path, data: &[u8]) -> Duration {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {}", path.display(), errno(&e)));
    let mut longest = Duration::ZERO;
    for piece in data.chunks(MIB) {
        let t = Instant::now();
        f.write_all(piece).unwrap_or_else(|e| panic!("write {}: {}", path.display(), errno(&e)));
        longest = longest.max(t.elapsed());
    }
    let t = Instant::now();
    f.sync_all().unwrap_or_else(|e| panic!("fsync {}: {}", path.display(), errno(&e)));
    longest.max(t.elapsed())
}

/// Three servers, three replicas, one frozen (SIGSTOP: its connections stay open and silent,
/// and the metadata server still lists it up). Reads ask the next copy after a hedge delay, so
/// no single `read()` stalls long; writes reach the default quorum (2 of 3) and go on; once the
/// server is thawed, repair brings every block back to three copies. The bounds asserted are
/// twice the design's (1 s for a read, 2 s for a write) for a loaded machine; the times are
/// printed.
#[test]
fn a_frozen_server_stalls_neither_reads_nor_writes() {
    // A long `down` timeout: the ring keeps the frozen server up, so only the client's own
    // hedging and settling keep calls moving.
    let mut c = Cluster::start_with(ClusterOpts { chunks: 3, down_after: 120, out_after: 600, ..Default::default() });
    let mut rng = seeded_rng();
    let data = write_random(&c, "r.bin", 64, &mut rng);
    c.remount();
    drop_page_cache();
    c.freeze(0, true);
    let t = Instant::now();
    let (got, longest_read) = read_timed(&c.path("r.bin"));
    eprintln!("{} read 64 MiB with chunk0 frozen in {:?}; longest read() {longest_read:?}", c.t(), t.elapsed());
    assert!(got == data, "the bytes read with a server frozen differ from the bytes written");
    let w = random_bytes(&mut rng, 64 * MIB);
    let t = Instant::now();
    let longest_write = write_timed(&c.path("w.bin"), &w);
    eprintln!("{} wrote and fsynced 64 MiB with chunk0 frozen in {:?}; longest write()/fsync {longest_write:?}", c.t(), t.elapsed());
    c.freeze(0, false);
    assert!(longest_read < Duration::from_secs(2), "a read() stalled {longest_read:?} with one of three servers frozen");
    assert!(longest_write < Duration::from_secs(4), "a write() or fsync stalled {longest_write:?} with one of three servers frozen");
    let ids = block_ids_of(&w);
    wait_fully_replicated(&c, &ids, &[0, 1, 2], 3, Duration::from_secs(90), "after the frozen server was thawed");
    c.remount();
    assert_reads_back(&c, &c.path("w.bin"), &w, "file written while a server was frozen");
    c.assert_running();
    c.assert_fsck_clean();
}

/// Five servers, three replicas, two frozen: a block owned by both has one owner left, short of
/// the quorum, so its put asks a spare server (the next clockwise) after a spare delay instead of
/// waiting for the frozen ones' connections to time out. Once thawed, every block ends with
/// exactly three copies (repair drops the spares' copies).
#[test]
fn two_frozen_owners_cost_a_write_a_spare_delay() {
    let mut c = Cluster::start_with(ClusterOpts { down_after: 120, out_after: 600, ..Default::default() });
    let mut rng = seeded_rng();
    let w = random_bytes(&mut rng, 64 * MIB);
    c.freeze(0, true);
    c.freeze(1, true);
    let t = Instant::now();
    let longest = write_timed(&c.path("w.bin"), &w);
    eprintln!("{} wrote and fsynced 64 MiB with chunk0 and chunk1 frozen in {:?}; longest write()/fsync {longest:?}", c.t(), t.elapsed());
    c.freeze(0, false);
    c.freeze(1, false);
    // Without spares: 4.8 s here (the frozen servers' connections time out after 5 s idle).
    assert!(longest < Duration::from_secs(3), "a write() or fsync stalled {longest:?} with two of five servers frozen");
    let ids = block_ids_of(&w);
    wait_fully_replicated(&c, &ids, &[0, 1, 2, 3, 4], 3, Duration::from_secs(120), "after two frozen servers were thawed");
    c.remount();
    assert_reads_back(&c, &c.path("w.bin"), &w, "file written while two servers were frozen");
    c.assert_running();
    c.assert_fsck_clean();
}

/// A server killed and restarted on its old data: writes made while it was away and its old
/// copies end up as exactly N copies, nothing lost. Once restarted while only `down`, once after
/// it went `out` and its blocks were re-replicated.
#[test]
fn restart_with_old_data() {
    // `out` late enough that chunk1 is surely restarted while only `down`.
    let mut c = Cluster::start_with(ClusterOpts { out_after: 30, ..Default::default() });
    let mut rng = seeded_rng();
    let all: Vec<usize> = (0..5).collect();
    let a = write_random(&c, "a.bin", 32, &mut rng);

    // 1. Restart while down (before it is out).
    c.kill9(1);
    let state = c.wait_not_up(1, Duration::from_secs(25));
    assert_eq!(state, "down", "chunk1 should be down (not yet out)");
    let b = write_random(&c, "b.bin", 32, &mut rng);
    let mut ids = block_ids_of(&a);
    ids.extend(block_ids_of(&b));
    let s = c.status_json();
    assert_eq!(c.node_state(&s, 1).as_deref(), Some("down"), "chunk1 should still be down, not out");
    c.restart_chunk(1);
    wait_fully_replicated(&c, &ids, &all, 3, Duration::from_secs(60), "restart while down");
    c.remount();
    assert_reads_back(&c, &c.path("a.bin"), &a, "a.bin after restart while down");
    assert_reads_back(&c, &c.path("b.bin"), &b, "b.bin after restart while down");

    // 2. Restart after it went out and its blocks were copied elsewhere.
    let old = c.chunks[3].block_files();
    c.kill9(3);
    c.wait_state(3, "out", Duration::from_secs(60));
    let live = c.running();
    wait_fully_replicated(&c, &ids, &live, 3, Duration::from_secs(90), "after chunk3 went out");
    let d = write_random(&c, "d.bin", 32, &mut rng);
    ids.extend(block_ids_of(&d));
    c.restart_chunk(3);
    eprintln!("{} chunk3 rejoined with {} old block files", c.t(), old.len());
    wait_fully_replicated(&c, &ids, &all, 3, Duration::from_secs(90), "restart after out");
    c.remount();
    assert_reads_back(&c, &c.path("a.bin"), &a, "a.bin after restart after out");
    assert_reads_back(&c, &c.path("b.bin"), &b, "b.bin after restart after out");
    assert_reads_back(&c, &c.path("d.bin"), &d, "d.bin after restart after out");
    c.assert_running();
}

/// What happened to a write during a kill.
#[derive(Debug, PartialEq)]
enum WriteOutcome {
    Succeeded,
    Failed,
}

/// Write 128 MiB with `dd … conv=fsync` and SIGKILL a chunk server a quarter of the way in.
/// The writer must finish within 120 s; if it reports success, the data reads back and has N
/// copies once repair is done; either way the file system keeps working.
fn write_during_kill_with(opts: ClusterOpts) -> WriteOutcome {
    let mut c = Cluster::start_with(opts);
    let mut rng = seeded_rng();
    let data = random_bytes(&mut rng, 128 * MIB);
    let ids = block_ids_of(&data);
    let src = c.root().join("src.bin");
    std::fs::write(&src, &data).unwrap();
    let dst = c.path("w.bin");
    let log = c.root().join("dd.log");
    let (o, e) = (std::fs::File::create(&log).unwrap(), std::fs::File::create(&log).unwrap());
    let t = Instant::now();
    let mut dd = Command::new("dd")
        .arg(format!("if={}", src.display()))
        .arg(format!("of={}", dst.display()))
        .args(["bs=1M", "conv=fsync"])
        .stdin(Stdio::null())
        .stdout(o)
        .stderr(e)
        .spawn()
        .expect("spawning dd");
    // Kill a server once a quarter of the file's blocks are stored somewhere.
    let all: Vec<usize> = (0..c.chunks.len()).collect();
    let stored = wait_for(Duration::from_secs(60), || {
        let stored = c.copies(&ids, &all).values().filter(|&&n| n > 0).count();
        (stored >= ids.len() / 4 || dd.try_wait().ok().flatten().is_some()).then_some(stored)
    });
    let victim = 2;
    eprintln!("{} {:?} of {} blocks stored; killing chunk{victim}", c.t(), stored, ids.len());
    assert!(dd.try_wait().unwrap().is_none(), "dd finished before the kill: the test did not kill in the middle of the write");
    c.kill9(victim);
    let status = match wait_timeout(&mut dd, Duration::from_secs(120)) {
        Some(s) => s,
        None => {
            let _ = dd.kill();
            let _ = dd.wait();
            panic!("the writer (dd … conv=fsync) hung: not finished 120 s after a chunk server was killed\n{}", tail(&log, 20));
        }
    };
    eprintln!("{} dd finished with {status} after {:?}\n{}", c.t(), t.elapsed(), tail(&log, 5));
    let outcome = if status.success() {
        eprintln!("OUTCOME: the write succeeded; checking the data and its copies");
        c.wait_state(victim, "out", Duration::from_secs(60));
        let live = c.running();
        wait_fully_replicated(&c, &ids, &live, 3, Duration::from_secs(90), "after a successful write during a kill");
        c.remount();
        assert_reads_back(&c, &c.path("w.bin"), &data, "file written during a kill");
        WriteOutcome::Succeeded
    } else {
        eprintln!("OUTCOME: the write failed: {}", tail(&log, 5));
        c.wait_not_up(victim, Duration::from_secs(25));
        WriteOutcome::Failed
    };
    // Either way the file system still works.
    let small = write_random(&c, "after.bin", 8, &mut rng);
    c.remount();
    assert_reads_back(&c, &c.path("after.bin"), &small, "a write after the kill");
    c.assert_running();
    outcome
}

/// The strict quorum (`--write-quorum 3`): a write during a kill either succeeds with N copies
/// (after repair) or returns an error; it never hangs and never reports success for data not
/// stored.
#[test]
fn write_during_kill_strict_quorum() {
    let outcome = write_during_kill_with(ClusterOpts { write_quorum: Some(3), ..Default::default() });
    eprintln!("write during a kill with write quorum 3: {outcome:?}");
}

/// The default quorum, a majority (2 of 3): losing one server of five must not fail the write
/// (two of the three targets acknowledge), and repair brings every block to three copies.
#[test]
fn write_during_kill_default_quorum() {
    let outcome = write_during_kill_with(ClusterOpts::default());
    assert_eq!(outcome, WriteOutcome::Succeeded, "with the default write quorum (2 of 3) a write that loses one of its three targets should succeed");
}

/// `tessera node drain` empties a server without ever leaving a block under-replicated;
/// `tessera node remove` takes a server out and its blocks are re-replicated.
#[test]
fn node_remove_and_drain() {
    let mut c = Cluster::start();
    let mut rng = seeded_rng();
    let data = write_random(&c, "f.bin", 48, &mut rng);
    let ids = block_ids_of(&data);

    let out = c.node_admin("drain", 0);
    assert!(out.status.success(), "tessera node drain failed: {}", String::from_utf8_lossy(&out.stderr));
    let t = Instant::now();
    let mut worst = 0;
    let ok = c.wait_until(Duration::from_secs(90), |c| {
        let Ok(s) = c.try_status() else { return false };
        worst = worst.max(blocks_field(&s, "under_replicated")).max(blocks_field(&s, "missing"));
        let reported = c.node_json(&s, 0).and_then(|n| n["blocks"].as_u64());
        c.chunks[0].block_files().is_empty() && reported == Some(0) && blocks_field(&s, "misplaced") == 0
    });
    assert!(ok, "chunk0 still holds {} block files (status: {:?}) 90 s after drain", c.chunks[0].block_files().len(), c.try_status().map(|s| c.node_json(&s, 0).cloned()));
    assert_eq!(worst, 0, "a block was under-replicated or missing while chunk0 drained");
    eprintln!("{} chunk0 drained in {:?}", c.t(), t.elapsed());
    let s = c.status_json();
    assert_eq!(c.node_json(&s, 0).map(|n| n["draining"].clone()), Some(serde_json::Value::Bool(true)), "status of the drained server");
    wait_fully_replicated(&c, &ids, &[1, 2, 3, 4], 3, Duration::from_secs(30), "after drain");

    let out = c.node_admin("remove", 1);
    assert!(out.status.success(), "tessera node remove failed: {}", String::from_utf8_lossy(&out.stderr));
    c.wait_state(1, "out", Duration::from_secs(10));
    wait_fully_replicated(&c, &ids, &[2, 3, 4], 3, Duration::from_secs(90), "after remove");
    c.remount();
    assert_reads_back(&c, &c.path("f.bin"), &data, "after drain and remove");
    c.assert_running();
}
