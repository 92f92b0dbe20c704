//! Files that stay open: a long-running writer's uploaded blocks are committed in the
//! background before garbage collection may take them (also when the file started as inline
//! data), and processes that open, write and close one file at once share one write buffer.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use tessera_tests::*;

const MIB: usize = 1 << 20;

fn drop_caches() {
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

fn assert_fsck_clean(c: &DevCluster) {
    let out = c.admin(&["fsck"]);
    assert!(out.status.success(), "fsck: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// A log file that starts small (its content inline in the metadata) and keeps growing
/// without an fsync for longer than the GC grace: its blocks must be referenced before the
/// grace runs out, or the collector deletes them and the later fsync commits dangling ids.
#[test]
fn a_growing_log_that_started_inline_keeps_its_blocks_through_gc() {
    let c = DevCluster::start_with(&["--gc-grace", "2", "--replicas", "1", "--chunk-servers", "1"]);
    let path = c.mnt.join("app.log");
    let mut f = File::create(&path).unwrap();
    f.write_all(b"first line, fsynced while the file is small\n").unwrap();
    f.sync_all().unwrap();
    let mut want = b"first line, fsynced while the file is small\n".to_vec();
    // Two full blocks and a bit, appended in small writes, no fsync: blocks 0 and 1 are sealed
    // and uploaded in the background.
    let mut rng = seeded_rng();
    let tail = random_bytes(&mut rng, 8 * MIB + 1000);
    for part in tail.chunks(64 * 1024) {
        f.write_all(part).unwrap();
    }
    want.extend_from_slice(&tail);
    // Longer than the grace, then a collection pass while the file is still open.
    std::thread::sleep(Duration::from_secs(5));
    let out = c.admin(&["gc", "--wait"]);
    assert!(out.status.success(), "gc: {}", String::from_utf8_lossy(&out.stderr));
    f.sync_all().expect("fsync after the grace");
    drop(f);
    drop_caches();
    let got = fs::read(&path).expect("reading the log back");
    assert_eq!(got.len(), want.len(), "log length");
    assert!(got == want, "the log's bytes differ from what was written");
    assert_fsck_clean(&c);
}

/// Processes that open, write their own slot of one block and close, all at once: every slot
/// holds the last bytes its writer wrote (one write buffer per inode, however opens and closes
/// interleave).
#[test]
fn concurrent_open_write_close_of_one_file_loses_no_write() {
    let c = DevCluster::start();
    let path = c.mnt.join("shared");
    const WRITERS: usize = 6;
    const ROUNDS: usize = 40;
    const SLOT: usize = 4096;
    File::create(&path).unwrap().write_all(&vec![0u8; WRITERS * SLOT + 64 * 1024]).unwrap();
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let path = path.clone();
            s.spawn(move || {
                for r in 0..ROUNDS {
                    let f = OpenOptions::new().write(true).open(&path).unwrap();
                    f.write_all_at(&vec![(w * ROUNDS + r) as u8 | 1; SLOT], (w * SLOT) as u64).unwrap();
                    drop(f);
                }
            });
        }
    });
    drop_caches();
    let got = fs::read(&path).unwrap();
    for w in 0..WRITERS {
        let want = ((w * ROUNDS + ROUNDS - 1) as u8) | 1;
        let slot = &got[w * SLOT..(w + 1) * SLOT];
        assert!(slot.iter().all(|&b| b == want), "writer {w}'s slot holds {:?}…, not its last write {want}", &slot[..8]);
    }
    assert_fsck_clean(&c);
}
