//! Space within a file on a real mount: `fallocate` (punch hole, keep size, allocate) and
//! `lseek(SEEK_DATA / SEEK_HOLE)`, each ending with a clean fsck.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::time::Duration;
use tessera_tests::*;

const BS: u64 = 4 << 20;

fn fallocate(f: &std::fs::File, mode: i32, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: a plain syscall on an open descriptor.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, len as i64) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn seek(f: &std::fs::File, offset: u64, whence: i32) -> std::io::Result<u64> {
    // SAFETY: a plain syscall on an open descriptor.
    let r = unsafe { libc::lseek(f.as_raw_fd(), offset as i64, whence) };
    if r >= 0 {
        Ok(r as u64)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn punch_hole_reads_zeros_keeps_size_and_shows_as_a_hole() {
    let c = DevCluster::start();
    let mut rng = seeded_rng();
    let size = 3 * BS + 12345;
    let mut want = random_bytes(&mut rng, size as usize);
    let p = c.path("f");
    let mut f = open_rw(&p);
    f.write_all(&want).unwrap();
    f.sync_all().unwrap();
    // From inside block 0 to inside block 2: block 1 becomes a hole, the ends are zeroed.
    let (lo, hi) = (1000, 2 * BS + 500);
    fallocate(
        &f,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        lo,
        hi - lo,
    )
    .unwrap();
    want[lo as usize..hi as usize].fill(0);
    assert_eq!(f.metadata().unwrap().len(), size, "punching keeps the size");
    assert_eq!(
        seek(&f, 0, libc::SEEK_HOLE).unwrap(),
        BS,
        "block 1 is a hole"
    );
    assert_eq!(seek(&f, BS, libc::SEEK_DATA).unwrap(), 2 * BS);
    f.sync_all().unwrap();
    drop(f);
    let mut got = Vec::new();
    std::fs::File::open(&p)
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert!(got == want, "bytes after the punch differ");
    // Without KEEP_SIZE, and modes we do not implement: EOPNOTSUPP, nothing changed.
    let f = open_rw(&p);
    for mode in [
        libc::FALLOC_FL_PUNCH_HOLE,
        libc::FALLOC_FL_COLLAPSE_RANGE,
        libc::FALLOC_FL_ZERO_RANGE,
    ] {
        let e = fallocate(&f, mode, 0, BS).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "mode {mode:#x}");
    }
    assert_eq!(f.metadata().unwrap().len(), size);
    drop(f);
    // Punching to the end drops the tail block too: the file is all hole from BS on.
    let f = open_rw(&p);
    fallocate(
        &f,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        BS,
        size,
    )
    .unwrap();
    assert_eq!(seek(&f, 0, libc::SEEK_HOLE).unwrap(), BS);
    assert_eq!(
        seek(&f, BS, libc::SEEK_DATA).unwrap_err().raw_os_error(),
        Some(libc::ENXIO),
        "no data after BS"
    );
    drop(f);
    let got = std::fs::read(&p).unwrap();
    want[BS as usize..].fill(0);
    assert!(got == want, "bytes after punching to the end differ");
    c.assert_fsck_clean();
}

#[test]
fn keep_size_keeps_size_and_mode_0_extends() {
    let c = DevCluster::start();
    let p = c.path("g");
    std::fs::write(&p, b"0123456789").unwrap();
    let f = open_rw(&p);
    fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 0, 1 << 20).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 10, "KEEP_SIZE keeps the size");
    fallocate(&f, 0, 100, 1 << 20).unwrap();
    assert_eq!(
        f.metadata().unwrap().len(),
        100 + (1 << 20),
        "mode 0 extends"
    );
    drop(f);
    let got = std::fs::read(&p).unwrap();
    assert_eq!(&got[..10], b"0123456789");
    assert!(got[10..].iter().all(|&b| b == 0));
    c.assert_fsck_clean();
}

#[test]
fn seek_data_and_hole_on_a_sparse_file() {
    let c = DevCluster::start();
    let p = c.path("sparse");
    let mut f = open_rw(&p);
    f.write_all(&[7u8; 100]).unwrap();
    f.seek(SeekFrom::Start(2 * BS + 10)).unwrap();
    f.write_all(&[9u8; 100]).unwrap();
    f.set_len(4 * BS).unwrap();
    let size = 4 * BS;
    for synced in [false, true] {
        assert_eq!(seek(&f, 0, libc::SEEK_DATA).unwrap(), 0, "synced={synced}");
        assert_eq!(seek(&f, 0, libc::SEEK_HOLE).unwrap(), BS, "synced={synced}");
        assert_eq!(seek(&f, 5, libc::SEEK_HOLE).unwrap(), BS, "synced={synced}");
        assert_eq!(
            seek(&f, BS, libc::SEEK_DATA).unwrap(),
            2 * BS,
            "synced={synced}"
        );
        assert_eq!(
            seek(&f, BS + 7, libc::SEEK_HOLE).unwrap(),
            BS + 7,
            "inside a hole, synced={synced}"
        );
        assert_eq!(
            seek(&f, 2 * BS, libc::SEEK_HOLE).unwrap(),
            3 * BS,
            "synced={synced}"
        );
        assert_eq!(
            seek(&f, 3 * BS, libc::SEEK_DATA)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENXIO),
            "synced={synced}"
        );
        assert_eq!(
            seek(&f, size, libc::SEEK_HOLE).unwrap_err().raw_os_error(),
            Some(libc::ENXIO),
            "synced={synced}"
        );
        f.sync_all().unwrap();
    }
    drop(f);
    c.assert_fsck_clean();
}

/// `df`: the total is the servers' capacity over N; available is what the servers that are up
/// may still take above their reserves (`free` in status), over N.
#[test]
fn statfs_free_space_is_what_servers_take_over_replicas() {
    let c = DevCluster::start();
    std::fs::write(c.path("x"), vec![5u8; 1 << 20]).unwrap();
    // Heartbeats lag: compare once both views agree within a few MiB (at most 10 s).
    let mut last = None;
    let agreed = wait_for(Duration::from_secs(10), || {
        let s = c.status_json();
        let replicas = s["replicas"].as_u64().unwrap();
        let nodes = s["nodes"].as_array().unwrap();
        let takers: u64 = nodes.iter().filter(|n| n["state"] == "up" && n["full"] == false).map(|n| n["free"].as_u64().unwrap()).sum();
        let raw_total: u64 = nodes.iter().filter(|n| n["state"] != "out").map(|n| n["capacity"].as_u64().unwrap()).sum();
        let st = nix::sys::statvfs::statvfs(&c.mnt).unwrap();
        let free = st.blocks_available() as u64 * st.fragment_size() as u64;
        let total = st.blocks() as u64 * st.fragment_size() as u64;
        last = Some((total, raw_total / replicas, free, takers / replicas));
        (total / 4096 == raw_total / replicas / 4096 && free.abs_diff(takers / replicas) <= 8 << 20 && free > 0).then_some(())
    });
    assert!(agreed.is_some(), "df (total, free) and status (capacity / N, free above reserves / N) disagree: {last:?}");
    c.assert_fsck_clean();
}

/// Open (creating) `p` for reading and writing.
fn open_rw(p: &std::path::Path) -> std::fs::File {
    OpenOptions::new().create(true).read(true).write(true).open(p).unwrap()
}
