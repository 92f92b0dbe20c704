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
    c.assert_fsck_clean();
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
    c.assert_fsck_clean();
}

fn renameat2(from: &std::path::Path, to: &std::path::Path, flags: u32) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let a = std::ffi::CString::new(from.as_os_str().as_bytes()).unwrap();
    let b = std::ffi::CString::new(to.as_os_str().as_bytes()).unwrap();
    // SAFETY: both are valid NUL-terminated paths.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

/// A rename the server refuses changes nothing, also when its target is open here.
#[test]
fn a_refused_rename_leaves_an_open_target_in_place() {
    let c = DevCluster::start();
    let t = c.mnt.join("target");
    let d = c.mnt.join("dir");
    fs::write(&t, b"the target's bytes").unwrap();
    fs::create_dir(&d).unwrap();
    let held = File::open(&t).unwrap();
    let e = fs::rename(&d, &t).expect_err("a directory cannot replace a file");
    assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR), "rename(dir, file): {e}");
    drop(held);
    assert_eq!(names(&c.mnt), vec!["dir", "target"]);
    assert_eq!(fs::read(&t).unwrap(), b"the target's bytes");
    // Refused exchanges and no-replace renames leave both names too.
    let held = File::open(&t).unwrap();
    let e = renameat2(&c.mnt.join("missing"), &t, libc::RENAME_EXCHANGE).expect_err("exchange with a missing name");
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    let e = renameat2(&d, &t, libc::RENAME_NOREPLACE).expect_err("no-replace onto an existing name");
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
    drop(held);
    assert_eq!(names(&c.mnt), vec!["dir", "target"]);
    assert_eq!(fs::read(&t).unwrap(), b"the target's bytes");
    c.assert_fsck_clean();
}

/// `RENAME_EXCHANGE` swaps two names atomically, open or not.
#[test]
fn rename_exchange_swaps_two_names() {
    let c = DevCluster::start();
    let (a, b) = (c.mnt.join("a"), c.mnt.join("b"));
    fs::write(&a, b"bytes of a").unwrap();
    fs::write(&b, b"bytes of b").unwrap();
    let held = File::open(&b).unwrap();
    renameat2(&a, &b, libc::RENAME_EXCHANGE).expect("exchange");
    drop(held);
    assert_eq!(fs::read(&a).unwrap(), b"bytes of b");
    assert_eq!(fs::read(&b).unwrap(), b"bytes of a");
    // A directory and a file, across directories.
    fs::create_dir(c.mnt.join("d")).unwrap();
    fs::write(c.mnt.join("d/inner"), b"inside").unwrap();
    fs::create_dir(c.mnt.join("e")).unwrap();
    renameat2(&c.mnt.join("d"), &c.mnt.join("e/a2"), libc::RENAME_EXCHANGE).expect_err("exchange with a missing name");
    fs::write(c.mnt.join("e/f"), b"file in e").unwrap();
    renameat2(&c.mnt.join("d"), &c.mnt.join("e/f"), libc::RENAME_EXCHANGE).expect("exchange dir and file");
    assert_eq!(fs::read(c.mnt.join("d")).unwrap(), b"file in e");
    assert_eq!(fs::read(c.mnt.join("e/f/inner")).unwrap(), b"inside");
    assert_eq!(names(&c.mnt), vec!["a", "b", "d", "e"]);
    c.assert_fsck_clean();
}

/// A replaced (or unlinked) file that is open stays readable through its descriptor, shows no
/// name in the directory, and is gone after the last close.
#[test]
fn a_replaced_open_file_stays_readable_and_leaves_no_name() {
    let c = DevCluster::start();
    let (t, s) = (c.mnt.join("t"), c.mnt.join("s"));
    let old = random_bytes(&mut seeded_rng(), 5 * MIB);
    fs::write(&t, &old).unwrap();
    fs::write(&s, b"new content").unwrap();
    let held = File::open(&t).unwrap();
    fs::rename(&s, &t).unwrap();
    assert_eq!(names(&c.mnt), vec!["t"], "no hidden names");
    assert_eq!(fs::read(&t).unwrap(), b"new content");
    let mut got = vec![0u8; old.len()];
    held.read_exact_at(&mut got, 0).expect("reading the replaced file through its descriptor");
    assert!(got == old, "the replaced file's bytes");
    let u = c.mnt.join("u");
    fs::write(&u, b"unlinked while open").unwrap();
    let held_u = File::open(&u).unwrap();
    fs::remove_file(&u).unwrap();
    let mut b = vec![0u8; 19];
    held_u.read_exact_at(&mut b, 0).unwrap();
    assert_eq!(&b, b"unlinked while open");
    drop(held);
    drop(held_u);
    assert_eq!(names(&c.mnt), vec!["t"]);
    c.assert_fsck_clean();
}

/// The last close of a file on a mount is reported a moment late, together with others
/// (client/src/closes.rs): an unlinked file that was open is still dropped within moments of
/// that close, and not before it.
#[test]
fn an_unlinked_open_file_is_dropped_soon_after_its_last_close() {
    let c = DevCluster::start();
    let p = c.path("big");
    fs::write(&p, vec![7u8; 8 * MIB]).unwrap();
    let logical = || c.status_json()["bytes"]["logical"].as_u64().unwrap();
    let files = || c.status_json()["files"].as_u64().unwrap();
    let (files_before, bytes_before) = (files(), logical());
    assert!(bytes_before >= 8 * MIB as u64, "{bytes_before}");
    let f = File::open(&p).unwrap();
    fs::remove_file(&p).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!((files(), logical()), (files_before, bytes_before), "kept while open");
    let mut head = [0u8; 4];
    f.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, [7; 4]);
    drop(f);
    let dropped = wait_for(Duration::from_secs(3), || (files() == files_before - 1).then(logical));
    assert_eq!(dropped, Some(bytes_before - 8 * MIB as u64), "dropped soon after the last close");
    c.assert_fsck_clean();
}
