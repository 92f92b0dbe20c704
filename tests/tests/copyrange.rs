//! `copy_file_range` on a real mount: whole blocks are copied by reference (no bytes move, no
//! block is stored again), the rest by value; each test ends with a clean fsck.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tessera_tests::cluster::{Cluster, ClusterOpts, BLOCK_SIZE};
use tessera_tests::*;

const BS: u64 = BLOCK_SIZE as u64;

/// `copy_file_range(2)` until `len` bytes are copied or the source ends; the bytes copied.
fn copy_range(from: &File, off_in: u64, to: &File, off_out: u64, len: u64) -> std::io::Result<u64> {
    let (mut i, mut o) = (off_in as i64, off_out as i64);
    let mut done = 0;
    while done < len {
        // SAFETY: a plain syscall on open descriptors, with offsets we own.
        let r = unsafe { libc::copy_file_range(from.as_raw_fd(), &mut i, to.as_raw_fd(), &mut o, (len - done) as usize, 0) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if r == 0 {
            break;
        }
        done += r as u64;
    }
    Ok(done)
}

fn open_rw(p: &std::path::Path) -> File {
    OpenOptions::new().create(true).read(true).write(true).open(p).unwrap()
}

fn read_all(f: &File) -> Vec<u8> {
    let mut out = vec![0u8; f.metadata().unwrap().len() as usize];
    f.read_exact_at(&mut out, 0).unwrap();
    out
}

/// The same copy on the expected bytes (a copy past the end leaves zeros before it).
fn model_copy(from: &[u8], off_in: u64, to: &mut Vec<u8>, off_out: u64, len: u64) -> u64 {
    let n = len.min((from.len() as u64).saturating_sub(off_in)) as usize;
    let (i, o) = (off_in as usize, off_out as usize);
    if to.len() < o + n {
        to.resize(o + n, 0);
    }
    to[o..o + n].copy_from_slice(&from[i..i + n]);
    n as u64
}

/// Block files on all chunk servers.
fn stored_blocks(c: &Cluster) -> usize {
    c.block_counts().values().sum()
}

/// A synced multi-block file copied whole while every chunk server is frozen: the copy needs
/// only the metadata server, so no byte was read or sent, and no block file was added. The
/// copy outlives its source through garbage collection (its references keep the blocks).
#[test]
fn whole_blocks_are_copied_by_reference_and_outlive_the_source() {
    let mut c = Cluster::start_with(ClusterOpts { chunks: 3, meta_args: vec!["--gc-grace".into(), "1".into()], ..Default::default() });
    let mut rng = seeded_rng();
    let data = random_bytes(&mut rng, (3 * BS + 12345) as usize);
    let (src, dst) = (c.mnt.join("src"), c.mnt.join("dst"));
    let mut f = File::create(&src).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let before = stored_blocks(&c);
    assert_eq!(before, 3 * 4, "four blocks, three copies each: {:?}", c.block_counts());
    let (from, to) = (File::open(&src).unwrap(), open_rw(&dst));
    for i in 0..3 {
        c.freeze(i, true);
    }
    let (tx, rx) = mpsc::channel();
    let t = Instant::now();
    let copier = std::thread::spawn(move || {
        let r = copy_range(&from, 0, &to, 0, 1 << 30);
        let _ = tx.send(());
        (r, to)
    });
    let in_time = rx.recv_timeout(Duration::from_secs(5)).is_ok();
    for i in 0..3 {
        c.freeze(i, false);
    }
    let (r, to) = copier.join().unwrap();
    assert!(in_time, "copy_file_range of whole blocks did not finish within 5 s with every chunk server frozen: it moved bytes");
    assert_eq!(r.unwrap(), data.len() as u64, "the copy stops at the source's end");
    eprintln!("copied {} bytes by reference in {:?}", data.len(), t.elapsed());
    to.sync_all().unwrap();
    assert!(read_all(&to) == data, "the copy's bytes differ");
    drop(to);
    assert_eq!(stored_blocks(&c), before, "the copy stored blocks: {:?}", c.block_counts());
    // Without the source, garbage collection keeps every block: the copy references them.
    std::fs::remove_file(&src).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let gc = run_timeout(Command::new(bin("tessera")).args(["gc", "--wait", "--meta", &c.meta_addr, "--certs"]).arg(&c.admin), Duration::from_secs(120));
    assert!(gc.status.success(), "gc: {}", String::from_utf8_lossy(&gc.stderr));
    assert_eq!(stored_blocks(&c), before, "gc deleted blocks the copy references: {:?}", c.block_counts());
    // A fresh client (no caches) reads the copy from the chunk servers.
    c.remount();
    assert!(std::fs::read(&dst).unwrap() == data, "the copy's bytes differ after the source was deleted");
    c.assert_fsck_clean();
}

/// Unaligned heads and tails, offsets at different places in a block, a copy over existing
/// bytes, one that extends the destination with a partial tail block and one past its end, all
/// on files with unsaved writes (the copy settles them first); then a copy within one file.
#[test]
fn unaligned_and_overwriting_copies_give_the_right_bytes() {
    let c = DevCluster::start();
    let mut rng = seeded_rng();
    let src_data = random_bytes(&mut rng, (3 * BS + 777) as usize);
    let mut want = random_bytes(&mut rng, (4 * BS + 999) as usize);
    let (src, dst) = (open_rw(&c.path("src")), open_rw(&c.path("dst")));
    src.write_all_at(&src_data, 0).unwrap();
    dst.write_all_at(&want, 0).unwrap();
    let cases: [(u64, u64, u64, &str); 6] = [
        (BS, 0, 2 * BS, "whole blocks over existing ones"),
        (123, BS + 123, 2 * BS + 500, "same place in a block: head and tail by value, a block by reference"),
        (1000, 3 * BS + 5000, BS + 1, "different places in a block, extending the file"),
        (2 * BS, 4 * BS, BS + 777, "to the source's end, past the destination's: the tail block by reference"),
        (0, 7 * BS, BS, "past the destination's end: a hole before it"),
        (3 * BS, 100, 10 * BS, "more than the source has"),
    ];
    for (off_in, off_out, len, what) in cases {
        let n = copy_range(&src, off_in, &dst, off_out, len).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(n, model_copy(&src_data, off_in, &mut want, off_out, len), "{what}: bytes copied");
        assert!(read_all(&dst) == want, "{what}: the destination's bytes differ");
    }
    assert_eq!(copy_range(&src, src_data.len() as u64, &dst, 0, 100).unwrap(), 0, "from the source's end");
    dst.sync_all().unwrap();
    drop(dst);
    assert!(std::fs::read(c.path("dst")).unwrap() == want, "the destination's bytes differ after close");
    // Within one file: ranges apart work, aligned and not; overlapping ones are refused.
    let mut same = src_data.clone();
    for (off_in, off_out, len) in [(0, 4 * BS, 2 * BS), (5, 3 * BS + 800, 1000)] {
        assert_eq!(copy_range(&src, off_in, &src, off_out, len).unwrap(), len);
        let from = same.clone();
        model_copy(&from, off_in, &mut same, off_out, len);
        assert!(read_all(&src) == same, "copy within one file {off_in} -> {off_out}: bytes differ");
    }
    assert_eq!(copy_range(&src, 0, &src, 100, BS).unwrap_err().raw_os_error(), Some(libc::EINVAL), "overlapping ranges");
    assert!(read_all(&src) == same, "a refused copy changed the file");
    src.sync_all().unwrap();
    drop(src);
    // The copies keep their blocks without the source.
    std::fs::remove_file(c.path("src")).unwrap();
    assert!(std::fs::read(c.path("dst")).unwrap() == want, "the destination's bytes differ after the source was deleted");
    c.assert_fsck_clean();
}
