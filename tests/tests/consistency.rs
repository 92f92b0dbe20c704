//! The promises of docs/consistency.md, one test each, on two mounts of one cluster (the
//! `tessera dev` mount "A" and a second `tessera mount` "B"), and the page cache kept across
//! opens of an unchanged file.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tessera_tests::cluster::drop_page_cache;
use tessera_tests::*;

/// The attribute and entry TTL of the client (client/src/fuse.rs).
const TTL: Duration = Duration::from_secs(1);

/// Bytes of `path` in the kernel's page cache, as `fincore` reports them. `fincore` opens the
/// file, so this is what is left after an open.
fn resident(path: &Path) -> u64 {
    let out = run_ok(Command::new("fincore").args(["--bytes", "--noheadings", "--output", "RES"]).arg(path));
    out.trim().parse().unwrap_or_else(|e| panic!("fincore printed {out:?}: {e}"))
}

/// Whether an open of `path` leaves all its `n` bytes in the page cache. Other tests on the
/// machine drop the whole page cache now and then (`drop_caches`), so a miss is retried after
/// filling the pages again; without `FOPEN_KEEP_CACHE` every try shows 0.
fn kept_after_open(path: &Path, n: u64) -> bool {
    for _ in 0..3 {
        if resident(path) == n {
            return true;
        }
        read_all(path);
    }
    false
}

fn read_all(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn after_a_closes_a_file_b_opening_it_reads_the_new_bytes() {
    let c = DevCluster::start();
    let b = c.second_mount("b");
    let (fa, fb) = (c.path("f"), b.mountpoint.as_ref().unwrap().join("f"));
    let v1 = pattern(1, 3 << 20);
    std::fs::write(&fa, &v1).unwrap();
    assert_eq!(read_all(&fb), v1, "B reads what A wrote and closed");
    // Same size, other bytes: only the content tells the versions apart.
    for round in 2..5u8 {
        let v = pattern(round, 3 << 20);
        let f = File::options().write(true).open(&fa).unwrap();
        f.write_all_at(&v, 0).unwrap();
        drop(f);
        assert_eq!(read_all(&fb), v, "round {round}: B's open right after A's close reads the new bytes");
    }
    drop(b);
    c.assert_fsck_clean();
}

#[test]
fn b_drops_its_cached_pages_when_a_changed_the_file() {
    let c = DevCluster::start();
    let b = c.second_mount("b");
    let (fa, fb) = (c.path("f"), b.mountpoint.as_ref().unwrap().join("f"));
    let n = 4 << 20;
    std::fs::write(&fa, pattern(1, n)).unwrap();
    assert_eq!(read_all(&fb), pattern(1, n));
    assert!(kept_after_open(&fb, n as u64), "B keeps the pages of a file nobody changed");
    let f = File::options().write(true).open(&fa).unwrap();
    f.write_all_at(b"changed by A", 1000).unwrap();
    drop(f);
    assert_eq!(resident(&fb), 0, "B's open drops the pages after A changed the file");
    let mut want = pattern(1, n);
    want[1000..1012].copy_from_slice(b"changed by A");
    assert_eq!(read_all(&fb), want);
    drop(b);
    c.assert_fsck_clean();
}

#[test]
fn a_size_change_by_a_is_seen_by_b_after_open() {
    let c = DevCluster::start();
    let b = c.second_mount("b");
    let (fa, fb) = (c.path("f"), b.mountpoint.as_ref().unwrap().join("f"));
    std::fs::write(&fa, b"0123456789").unwrap();
    // B caches the attributes (size 10) for the TTL.
    assert_eq!(std::fs::metadata(&fb).unwrap().len(), 10);
    assert_eq!(read_all(&fb), b"0123456789");
    let mut f = File::options().append(true).open(&fa).unwrap();
    f.write_all(b"abcdefghij").unwrap();
    drop(f);
    let started = Instant::now();
    let mut g = File::open(&fb).unwrap();
    let mut got = Vec::new();
    g.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"0123456789abcdefghij", "B reads the grown file at once");
    assert_eq!(g.metadata().unwrap().len(), 20, "fstat after open shows the new size");
    drop(g);
    assert!(started.elapsed() < TTL, "checked within the TTL ({:?})", started.elapsed());
    // Shrinking too.
    File::options().write(true).open(&fa).unwrap().set_len(4).unwrap();
    assert_eq!(read_all(&fb), b"0123", "B reads the truncated file at once");
    drop(b);
    c.assert_fsck_clean();
}

#[test]
fn a_name_created_or_removed_by_a_is_seen_by_b_within_the_ttl() {
    let c = DevCluster::start();
    let b = c.second_mount("b");
    let bm = b.mountpoint.clone().unwrap();
    std::fs::create_dir(c.path("d")).unwrap();
    assert!(std::fs::read_dir(bm.join("d")).unwrap().next().is_none());
    assert!(!bm.join("d/new").exists());
    std::fs::write(c.path("d/new"), b"hello").unwrap();
    let started = Instant::now();
    let seen = wait_for(TTL * 3, || bm.join("d/new").exists().then(|| started.elapsed()));
    let seen = seen.expect("B never saw the name A created");
    assert!(seen <= TTL + Duration::from_millis(500), "seen after {seen:?}, more than the TTL");
    assert_eq!(read_all(&bm.join("d/new")), b"hello");
    let names: Vec<_> = std::fs::read_dir(bm.join("d")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["new"], "readdir through B lists it");
    std::fs::remove_file(c.path("d/new")).unwrap();
    let started = Instant::now();
    let gone = wait_for(TTL * 3, || (!bm.join("d/new").exists()).then(|| started.elapsed()));
    let gone = gone.expect("B still sees the name A removed");
    assert!(gone <= TTL + Duration::from_millis(500), "gone after {gone:?}, more than the TTL");
    drop(b);
    c.assert_fsck_clean();
}

#[test]
fn an_unchanged_file_keeps_its_page_cache_across_opens() {
    let c = DevCluster::start();
    let f = c.path("f");
    let n = 8 << 20;
    let data = pattern(7, n);
    // Written through this mount: the written pages stay valid after close.
    std::fs::write(&f, &data).unwrap();
    assert!(kept_after_open(&f, n as u64), "pages written through the mount survive the next open");
    assert_eq!(read_all(&f), data);
    for _ in 0..3 {
        assert!(kept_after_open(&f, n as u64), "an open of the unchanged file keeps its pages");
    }
    // A change through this mount keeps them too (the written pages are the new content).
    let h = File::options().write(true).open(&f).unwrap();
    h.write_all_at(b"local change", 5).unwrap();
    drop(h);
    assert!(kept_after_open(&f, n as u64), "a change through this mount keeps the pages");
    let mut want = data;
    want[5..17].copy_from_slice(b"local change");
    assert_eq!(read_all(&f), want);
    // And what the cache showed is what the servers have.
    drop_page_cache();
    assert_eq!(read_all(&f), want);
    c.assert_fsck_clean();
}

/// One process writes through a shared mapping while another reads and writes the file with
/// read(2)/write(2); both see each other's bytes, and the servers get all of them.
#[test]
fn mmap_writes_by_one_process_are_read_by_another() {
    let c = DevCluster::start();
    let f = c.path("mapped");
    let n = 1 << 20;
    std::fs::write(&f, vec![0u8; n]).unwrap();
    let file = File::options().read(true).write(true).open(&f).unwrap();
    let map = Mapping::new(&file, n);
    let mine = pattern(3, 256 << 10);
    map.bytes()[..mine.len()].copy_from_slice(&mine);
    // Not yet msynced: another process shares the pages.
    let other = run_timeout(Command::new("head").args(["-c", &mine.len().to_string()]).arg(&f), Duration::from_secs(60));
    assert!(other.status.success());
    assert_eq!(other.stdout, mine, "another process reads the mapped writes");
    // The other process writes with write(2); the mapping shows it.
    let theirs = pattern(9, 4096);
    let w = run_timeout(
        Command::new("python3").args(["-c", "import os,sys; fd=os.open(sys.argv[1], os.O_WRONLY); os.pwrite(fd, bytes((i*31+9)%256 for i in range(4096)), 512<<10); os.close(fd)"]).arg(&f),
        Duration::from_secs(60),
    );
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
    assert_eq!(&map.bytes()[512 << 10..(512 << 10) + 4096], &theirs[..], "the mapping shows the other process's write");
    map.sync();
    drop(map);
    drop(file);
    let mut want = vec![0u8; n];
    want[..mine.len()].copy_from_slice(&mine);
    want[512 << 10..(512 << 10) + 4096].copy_from_slice(&theirs);
    let b = c.second_mount("b");
    assert_eq!(read_all(&b.mountpoint.as_ref().unwrap().join("mapped")), want, "a second mount reads both writes from the servers");
    drop(b);
    c.assert_fsck_clean();
}

/// A shared, writable mapping of a whole file.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(file: &File, len: usize) -> Self {
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh shared mapping of an open file; checked for MAP_FAILED.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, file.as_raw_fd(), 0) };
        assert_ne!(p, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        Mapping { ptr: p as *mut u8, len }
    }

    #[allow(clippy::mut_from_ref)]
    fn bytes(&self) -> &mut [u8] {
        // SAFETY: the mapping is live for self's lifetime; the test uses it from one thread.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    fn sync(&self) {
        // SAFETY: the range is the live mapping.
        let r = unsafe { libc::msync(self.ptr as *mut libc::c_void, self.len, libc::MS_SYNC) };
        assert_eq!(r, 0, "msync: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `new`.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}
