//! Metadata backup and restore on real processes: `tessera meta backup DIR` while a client
//! writes, then `tessera-meta --restore DIR` on a new data directory with the same chunk servers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tessera_tests::cluster::{write_file_synced, Cluster, ClusterOpts};
use tessera_tests::{bin, free_port, hash_file, random_bytes, run_timeout, seeded_rng};

fn meta_backup(c: &Cluster, dir: &Path) -> Output {
    run_timeout(
        Command::new(bin("tessera")).args(["meta", "backup"]).arg(dir).args(["--meta", &c.meta_addr, "--certs"]).arg(&c.admin).env_remove("TESSERA_META").env_remove("TESSERA_CERTS"),
        Duration::from_secs(300),
    )
}

/// `tessera-meta --restore FROM` on `data_dir` (a port of its own), expected to refuse: returns
/// its one-line reason.
fn restore_refused(c: &Cluster, data_dir: &Path, from: &Path) -> String {
    let out = run_timeout(
        Command::new(bin("tessera-meta"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", &format!("127.0.0.1:{}", free_port()), "--certs"])
            .arg(c.root().join("certs/meta"))
            .arg("--restore")
            .arg(from)
            .env_remove("TESSERA_CERTS"),
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "tessera-meta --restore {} started: {err}", from.display());
    let reasons: Vec<&str> = err.lines().filter(|l| l.starts_with("tessera-meta:")).collect();
    assert_eq!(reasons.len(), 1, "want one line of reason, got: {err}");
    reasons[0].to_string()
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// The largest file of a backup's database directory.
fn largest_file(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir).unwrap().flatten().max_by_key(|e| e.metadata().unwrap().len()).unwrap().path()
}

#[test]
fn a_backup_taken_under_load_restores_every_acknowledged_file() {
    let mut c = Cluster::start_with(ClusterOpts { chunks: 3, ..Default::default() });
    let mut rng = seeded_rng();
    let mut acked: BTreeMap<PathBuf, blake3::Hash> = BTreeMap::new();
    std::fs::create_dir_all(c.path("small")).unwrap();
    std::fs::create_dir_all(c.path("big/nested")).unwrap();
    std::fs::create_dir_all(c.path("load")).unwrap();
    // Many small files (inline in the metadata) and some of several blocks, each fsynced.
    for i in 0..1000 {
        let n = rng.random_range(0..3000);
        let data = random_bytes(&mut rng, n);
        let p = c.path(format!("small/f{i:04}"));
        write_file_synced(&p, &data).unwrap();
        acked.insert(p, blake3::hash(&data));
    }
    for i in 0..12 {
        let n = rng.random_range(20_000..9_000_000);
        let data = random_bytes(&mut rng, n);
        let p = c.path(format!("big/nested/b{i:02}"));
        write_file_synced(&p, &data).unwrap();
        acked.insert(p, blake3::hash(&data));
    }
    // Renamed and removed before the backup: the restore must show the new state.
    std::fs::rename(c.path("big/nested/b00"), c.path("big/renamed")).unwrap();
    let h = acked.remove(&c.path("big/nested/b00")).unwrap();
    acked.insert(c.path("big/renamed"), h);
    std::fs::remove_file(c.path("big/nested/b01")).unwrap();
    acked.remove(&c.path("big/nested/b01"));
    let ring_before = c.status_json()["ring_version"].as_u64().unwrap();

    // A writer that keeps creating and fsyncing files during the backup.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, dir) = (stop.clone(), c.path("load"));
        std::thread::spawn(move || {
            let mut n = 0u64;
            let data = vec![7u8; 300_000];
            while !stop.load(Ordering::Relaxed) {
                write_file_synced(&dir.join(format!("l{n}")), &data).expect("writing under load");
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let backup = c.root().join("backup");
    let t = Instant::now();
    let out = meta_backup(&c, &backup);
    let took = t.elapsed();
    assert!(out.status.success(), "tessera meta backup: {}", stderr_of(&out));
    eprintln!("{} {} (command took {took:?})", c.t(), String::from_utf8_lossy(&out.stdout).trim());
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let written = load.join().unwrap();
    eprintln!("{} the load wrote {written} files meanwhile", c.t());
    assert!(written > 0, "the load wrote nothing");

    // A directory that is not empty is refused, and left alone.
    let again = meta_backup(&c, &backup);
    assert!(!again.status.success(), "a second backup into {} succeeded", backup.display());
    let err = stderr_of(&again);
    assert!(err.lines().count() == 1 && err.contains("not empty"), "want one line saying the directory is not empty: {err}");
    assert!(backup.join("tessera-backup.json").is_file(), "the refused backup touched the first one");

    // Stop everything; the metadata server's data directory is not used again.
    c.stop_mount();
    c.stop_meta();
    for i in 0..c.chunks.len() {
        c.stop_chunk(i);
    }

    // A damaged copy of the backup is refused, and nothing is written.
    let bad = c.root().join("backup-bad");
    assert!(Command::new("cp").arg("-a").arg(&backup).arg(&bad).status().unwrap().success());
    let victim = largest_file(&bad.join("db"));
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&victim, &bytes).unwrap();
    let fresh = c.root().join("meta-from-bad");
    let why = restore_refused(&c, &fresh, &bad);
    assert!(why.contains("BLAKE3") && why.contains(victim.file_name().unwrap().to_str().unwrap()), "{why}");
    assert!(!fresh.exists(), "a refused restore created {}", fresh.display());
    // A data directory that holds a database is refused too.
    let why = restore_refused(&c, &c.root().join("meta"), &backup);
    assert!(why.contains("already holds a database"), "{why}");

    // Restore on a new data directory, same address, same chunk servers.
    let t = Instant::now();
    c.spawn_meta(&c.root().join("meta-restored"), &["--restore".into(), backup.display().to_string()]);
    eprintln!("{} restored metadata server listening after {:?}", c.t(), t.elapsed());
    for i in 0..c.chunks.len() {
        c.restart_chunk(i);
    }
    c.start_mount();
    let mut bad_files = Vec::new();
    for (p, want) in &acked {
        match hash_file(p) {
            Ok(h) if h == *want => {}
            Ok(_) => bad_files.push(format!("{}: other contents", p.display())),
            Err(e) => bad_files.push(format!("{}: {e}", p.display())),
        }
    }
    assert!(bad_files.is_empty(), "{} of {} acknowledged files are wrong after the restore: {:?}", bad_files.len(), acked.len(), &bad_files[..bad_files.len().min(10)]);
    assert!(!c.path("big/nested/b01").exists(), "a file removed before the backup came back");
    assert!(!c.path("big/nested/b00").exists(), "a file renamed before the backup is back under its old name");
    let ring_after = c.status_json()["ring_version"].as_u64().unwrap();
    assert!(ring_after > ring_before + 1_000_000, "ring version {ring_after} after the restore is not far past {ring_before}");
    // The restored file system takes writes.
    let p = c.path("after-restore");
    write_file_synced(&p, b"still writable").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"still writable");
    c.assert_fsck_clean();
}
