//! Integrity and space, end to end on a `tessera dev` cluster: corrupt copies are never served
//! and are repaired by reads and scrubbing, identical data is stored once, deleted data is
//! reclaimed by garbage collection (also while identical content is rewritten), and fsck finds
//! and repairs what is wrong.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rand::RngCore;
use tessera_tests::*;

const MIB: usize = 1 << 20;

/// `tessera ARGS` with the cluster's admin environment; returns the output, whatever the status.
fn tessera(c: &DevCluster, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("tessera"));
    cmd.args(args).env_remove("TESSERA_META").env_remove("TESSERA_CERTS");
    for (k, v) in c.env() {
        cmd.env(k, v);
    }
    run_timeout(&mut cmd, Duration::from_secs(300))
}

fn json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("invalid JSON ({e}): {text}\nstderr: {}", String::from_utf8_lossy(&out.stderr)))
}

/// Block files of every chunk server: (server index, path).
fn block_files(c: &DevCluster) -> Vec<(usize, PathBuf)> {
    let mut out = Vec::new();
    for i in 1..=3 {
        let top = c.data_dir.join(format!("chunk-{i}")).join("blocks");
        for sub in fs::read_dir(&top).into_iter().flatten().flatten() {
            for f in fs::read_dir(sub.path()).into_iter().flatten().flatten() {
                out.push((i, f.path()));
            }
        }
    }
    out.sort();
    out
}

fn flip(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0xA5;
    f.write_all_at(&b, at).unwrap();
    f.sync_all().unwrap();
}

fn write_file(path: &Path, data: &[u8]) {
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    for chunk in data.chunks(MIB) {
        f.write_all(chunk).unwrap();
    }
    f.sync_all().unwrap();
}

fn drop_caches() {
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

/// `bytes.stored` once the heartbeats have caught up (two equal readings in a row).
fn stored_bytes(c: &DevCluster) -> u64 {
    let mut last = u64::MAX;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(1500));
        let now = c.status_json()["bytes"]["stored"].as_u64().unwrap();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// A fresh mount of the same cluster, so reads go to the chunk servers.
fn read_via_second_mount(c: &DevCluster, rel: &str) -> blake3::Hash {
    let name = format!("m2-{}", rand::random::<u32>());
    let mut m = c.second_mount(&name);
    let p = c.root().join(&name).join(rel);
    let h = hash_file(&p).unwrap_or_else(|e| panic!("reading {} through a second mount: {e}", p.display()));
    m.stop();
    h
}

#[test]
fn corrupt_copies_are_never_served_and_are_repaired() {
    let c = DevCluster::start();
    let mut rng = seeded_rng();
    let data = random_bytes(&mut rng, 24 * MIB);
    write_file(&c.path("f"), &data);
    let want = blake3::hash(&data);
    let files = block_files(&c);
    assert_eq!(files.len(), 18, "6 blocks x 3 copies: {files:?}");

    // Flip a byte in one copy of every block on server 1, and in a second copy (server 2) of
    // the blocks server 1 and 2 share, so some blocks have two of three copies bad.
    let on = |s: usize| files.iter().filter(move |(i, _)| *i == s).map(|(_, p)| p.clone()).collect::<Vec<_>>();
    let mut flipped = 0;
    for p in on(1) {
        flip(&p, 100);
        flipped += 1;
    }
    for p in on(2).into_iter().take(3) {
        flip(&p, 4000);
        flipped += 1;
    }

    // Reads stay correct (a fresh client, so nothing comes from a cache).
    assert_eq!(read_via_second_mount(&c, "f"), want, "a read returned bytes that were not written");

    // Scrub finds every flipped copy that the read did not already catch, and repairs all.
    let out = tessera(&c, &["scrub", "--wait", "--json"]);
    assert!(out.status.success(), "scrub failed: {}", String::from_utf8_lossy(&out.stderr));
    let r = json(&out);
    eprintln!("{flipped} copies flipped; the read caught some, the scrub found {r}");
    assert!(r["corrupt"].as_u64().unwrap() <= flipped, "{r}");
    assert_eq!(r["corrupt"], r["repaired"], "every corrupt copy found must be repaired: {r}");
    // Copies caught by the read were replaced then; together with the scrub, every flip is gone:
    // (a copy a reader reported is replaced in the background: give that a few seconds)
    let mut again = json(&tessera(&c, &["scrub", "--wait", "--json"]));
    for _ in 0..10 {
        if again["checked"].as_u64() == Some(18) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        again = json(&tessera(&c, &["scrub", "--wait", "--json"]));
    }
    assert_eq!(again["corrupt"].as_u64(), Some(0), "a second scrub still finds corruption: {again}");
    assert_eq!(again["checked"].as_u64(), Some(18), "every copy is back: {again}");
    let fsck = tessera(&c, &["fsck", "--deep"]);
    assert!(fsck.status.success(), "fsck after repair: {}", String::from_utf8_lossy(&fsck.stdout));
    drop_caches();
    assert_eq!(hash_file(&c.path("f")).unwrap(), want);
}

#[test]
fn scrub_counts_each_flipped_copy() {
    let c = DevCluster::start();
    let mut rng = seeded_rng();
    let data = random_bytes(&mut rng, 12 * MIB);
    write_file(&c.path("g"), &data);
    let files = block_files(&c);
    assert_eq!(files.len(), 9);
    // One copy on server 1, two copies (servers 2 and 3) of another block.
    let (_, a) = files.iter().find(|(i, _)| *i == 1).unwrap().clone();
    let id_b = files.iter().find(|(i, p)| *i == 2 && p.file_name() != a.file_name()).unwrap().1.file_name().unwrap().to_owned();
    flip(&a, 7);
    for (i, p) in &files {
        if *i != 1 && p.file_name().unwrap() == id_b {
            flip(p, 9);
        }
    }
    let r = json(&tessera(&c, &["scrub", "--wait", "--json"]));
    assert_eq!((r["checked"].as_u64(), r["corrupt"].as_u64(), r["repaired"].as_u64()), (Some(9), Some(3), Some(3)), "{r}");
    assert!(tessera(&c, &["fsck", "--deep"]).status.success());
    assert_eq!(read_via_second_mount(&c, "g"), blake3::hash(&data));
}

#[test]
fn identical_data_is_stored_once() {
    let c = DevCluster::start();
    let mut rng = seeded_rng();
    let data = random_bytes(&mut rng, 256 * MIB);
    let t = Instant::now();
    write_file(&c.path("one"), &data);
    let first = t.elapsed();
    let after_one = stored_bytes(&c);
    let t = Instant::now();
    write_file(&c.path("two"), &data);
    let second = t.elapsed();
    let after_two = stored_bytes(&c);
    eprintln!("identical 256 MiB: first write {first:?}, second {second:?}; stored {after_one} -> {after_two}");
    assert!(after_one >= 3 * 256 * MIB as u64, "three copies of the first write: {after_one}");
    assert!((after_two - after_one) * 100 < after_one, "the second copy grew stored bytes by more than 1%: {after_one} -> {after_two}");
    let s = c.status_json();
    assert_eq!(s["bytes"]["logical"].as_u64(), Some(2 * 256 * MIB as u64), "{s}");
    assert_eq!(hash_file(&c.path("two")).unwrap(), blake3::hash(&data));
}

#[test]
fn deleted_and_truncated_data_is_reclaimed() {
    let c = DevCluster::start_with(&["--gc-grace", "2"]);
    let mut rng = seeded_rng();
    write_file(&c.path("a"), &random_bytes(&mut rng, 64 * MIB));
    write_file(&c.path("b"), &random_bytes(&mut rng, 32 * MIB));
    assert!(stored_bytes(&c) >= 3 * 96 * MIB as u64);
    fs::remove_file(c.path("a")).unwrap();
    // Truncate b to 1 MiB: only its first block (4 MiB, 3 copies) stays referenced.
    File::options().write(true).open(c.path("b")).unwrap().set_len(MIB as u64).unwrap();
    let stored = gc_until(&c, 3 * 4 * MIB as u64);
    assert!(stored <= 3 * 4 * MIB as u64, "after gc, {stored} bytes are still stored (expected at most one block in 3 copies)");
    assert_eq!(fs::metadata(c.path("b")).unwrap().len(), MIB as u64);
    assert!(tessera(&c, &["fsck"]).status.success(), "fsck after gc");
    // Delete everything: stored bytes fall to zero.
    fs::remove_file(c.path("b")).unwrap();
    assert_eq!(gc_until(&c, 0), 0);
}

/// Run `gc --wait` past the grace until at most `bound` bytes are stored (or 30 s have passed:
/// on a loaded machine a pass can start before the last block has been idle for the grace);
/// the bytes stored then.
fn gc_until(c: &DevCluster, bound: u64) -> u64 {
    let t = Instant::now();
    loop {
        std::thread::sleep(Duration::from_secs(3));
        let out = tessera(c, &["gc", "--wait", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stored = stored_bytes(c);
        if stored <= bound || t.elapsed() > Duration::from_secs(30) {
            return stored;
        }
        eprintln!("after a gc pass {stored} bytes are stored; another pass");
    }
}

/// Identical content is written again and again while the previous copy is deleted and garbage
/// collection runs continuously with a one-second grace: the block is unreferenced in between,
/// but the client's put or dedup check protects it until its commit. No file may lose data.
#[test]
fn gc_race_with_identical_rewrites_loses_no_data() {
    let c = DevCluster::start_with(&["--gc-grace", "1"]);
    let mut rng = seeded_rng();
    let mut data = vec![0u8; 8 * MIB];
    rng.fill_bytes(&mut data);
    let want = blake3::hash(&data);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc = {
        let stop = stop.clone();
        let env = c.env();
        std::thread::spawn(move || {
            let mut passes = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut cmd = Command::new(bin("tessera"));
                cmd.args(["gc", "--wait"]).envs(env.clone());
                let out = run_timeout(&mut cmd, Duration::from_secs(60));
                assert!(out.status.success(), "gc failed: {}", String::from_utf8_lossy(&out.stderr));
                passes += 1;
            }
            passes
        })
    };
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut i = 0;
    while Instant::now() < deadline {
        write_file(&c.path(format!("f{i}")), &data);
        if i > 0 {
            fs::remove_file(c.path(format!("f{}", i - 1))).unwrap();
        }
        i += 1;
        // Sometimes wait past the grace period, so the unreferenced block becomes collectable.
        if i % 3 == 0 {
            std::thread::sleep(Duration::from_millis(1500));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let passes = gc.join().unwrap();
    eprintln!("{i} rewrites, {passes} gc passes");
    assert!(i >= 5 && passes >= 3, "too little happened: {i} rewrites, {passes} passes");
    std::thread::sleep(Duration::from_secs(2));
    let fsck = tessera(&c, &["fsck"]);
    assert!(fsck.status.success(), "fsck after the race: {}", String::from_utf8_lossy(&fsck.stdout));
    assert_eq!(read_via_second_mount(&c, &format!("f{}", i - 1)), want, "the last file lost data");
}

#[test]
fn fsck_finds_and_repairs_missing_copies() {
    let c = DevCluster::start();
    let mut rng = seeded_rng();
    let data = random_bytes(&mut rng, 8 * MIB);
    write_file(&c.path("x"), &data);
    let out = tessera(&c, &["fsck", "--json"]);
    assert!(out.status.success());
    assert_eq!(json(&out)["healthy"].as_u64(), Some(2));
    let files = block_files(&c);
    fs::remove_file(&files[0].1).unwrap();
    let out = tessera(&c, &["fsck", "--json"]);
    assert!(!out.status.success(), "fsck must fail with a copy missing");
    assert_eq!(json(&out)["under_replicated"].as_u64(), Some(1));
    let out = tessera(&c, &["fsck", "--repair"]);
    assert!(out.status.success(), "fsck --repair: {}", String::from_utf8_lossy(&out.stdout));
    assert!(files[0].1.exists() || block_files(&c).len() == 6, "the copy is back");
    assert!(tessera(&c, &["fsck", "--deep"]).status.success());
    assert_eq!(read_via_second_mount(&c, "x"), blake3::hash(&data));
}

/// The workers of one server in `tessera status --json`: name → entry.
fn workers_of(status: &serde_json::Value, node: &str) -> std::collections::HashMap<String, serde_json::Value> {
    status["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("status --json has no workers list: {status:#}"))
        .iter()
        .filter(|w| w["node"] == node)
        .map(|w| (w["name"].as_str().unwrap().to_string(), w.clone()))
        .collect()
}

/// `tessera status` lists every background worker of every server with its state, and the
/// passes of `gc --wait` and `scrub --wait` are counted there.
#[test]
fn status_lists_every_worker_and_counts_passes() {
    let c = DevCluster::start();
    write_file(&c.path("f"), &vec![7u8; 3 * MIB]);
    // The membership refresh runs every second; the chunk servers report with each heartbeat.
    let s = wait_for(Duration::from_secs(10), || {
        let s = c.status_json();
        let ready = workers_of(&s, "meta").get("membership").is_some_and(|w| w["passes"].as_u64().unwrap() >= 1)
            && s["nodes"].as_array().unwrap().iter().all(|n| workers_of(&s, n["id"].as_str().unwrap()).contains_key("scrub"));
        ready.then_some(s)
    })
    .unwrap_or_else(|| panic!("workers not listed within 10 s: {:#}", c.status_json()["workers"]));
    let meta = workers_of(&s, "meta");
    for name in ["lease-expiry", "gc", "membership"] {
        let w = meta.get(name).unwrap_or_else(|| panic!("no metadata worker {name}: {:#}", s["workers"]));
        assert!(["idle", "running"].contains(&w["state"].as_str().unwrap()), "{name}: {w}");
    }
    assert_eq!(meta["membership"]["consecutive_errors"], 0, "{}", meta["membership"]);
    let nodes: Vec<String> = s["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(nodes.len(), 3);
    let gc_before = meta["gc"]["passes"].as_u64().unwrap();
    let scrubs_before: Vec<u64> = nodes.iter().map(|n| workers_of(&s, n).get("scrub").map_or(0, |w| w["passes"].as_u64().unwrap())).collect();

    assert!(tessera(&c, &["gc", "--wait"]).status.success());
    assert!(tessera(&c, &["scrub", "--wait"]).status.success());
    // Chunk servers report their workers with each heartbeat (every second).
    let s = wait_for(Duration::from_secs(10), || {
        let s = c.status_json();
        let counted = nodes.iter().zip(&scrubs_before).all(|(n, before)| workers_of(&s, n).get("scrub").is_some_and(|w| w["passes"].as_u64().unwrap() > *before));
        counted.then_some(s)
    })
    .unwrap_or_else(|| panic!("scrub passes not counted within 10 s: {:#}", c.status_json()["workers"]));
    let gc = &workers_of(&s, "meta")["gc"];
    assert!(gc["passes"].as_u64().unwrap() > gc_before, "gc --wait not counted: {gc}");
    assert!(gc["last_start_ms"].as_u64().unwrap() > 0 && gc["progress"].as_str().unwrap().contains("scanned"), "{gc}");
    for n in &nodes {
        let w = workers_of(&s, n);
        for name in ["heartbeat", "repair", "scrub"] {
            assert!(w.contains_key(name), "server {n} has no worker {name}: {:#}", s["workers"]);
        }
        assert!(w["heartbeat"]["passes"].as_u64().unwrap() >= 1 && w["heartbeat"]["consecutive_errors"] == 0, "{}", w["heartbeat"]);
        assert!(w["scrub"]["progress"].as_str().unwrap().contains("checked"), "{}", w["scrub"]);
        // The write changed nothing in the ring, but the first registration woke a repair scan.
        assert!(w["repair"]["passes"].as_u64().unwrap() >= 1, "{}", w["repair"]);
    }
    // The table lists them too.
    let out = tessera(&c, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("WORKER") && text.contains("lease-expiry") && text.contains("scrub"), "{text}");
    c.assert_fsck_clean();
}
