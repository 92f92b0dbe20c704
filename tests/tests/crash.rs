//! Process crashes, one at a time, with real processes: the metadata server is killed with
//! SIGKILL and restarted on its data; what was fsynced before is intact, and an application that
//! keeps working through the outage only waits.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tessera_tests::*;

const MIB: usize = 1 << 20;

fn write_synced(path: &Path, data: &[u8]) {
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn metadata_server_crash_is_survived() {
    let mut c = ManualCluster::start(3, 3);
    let mnt = c.root().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let mut m = start_mount(&c.meta_addr, &c.client, &mnt, &c.root().join("mount.log"));
    let mut rng = seeded_rng();
    let big = random_bytes(&mut rng, 24 * MIB);
    write_synced(&mnt.join("big"), &big);
    fs::create_dir(mnt.join("dir")).unwrap();
    write_synced(&mnt.join("dir/small"), b"fsynced before the crash");

    // SIGKILL the metadata server; bring it back on the same data and port 3 s later.
    let pid = c.meta.pid().expect("meta pid");
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    assert!(wait_for(Duration::from_secs(10), || c.meta.exited()).is_some());
    let port: u16 = c.meta_addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let root = c.root().to_owned();
    let restart = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        start_meta(&root.join("meta"), port, &root.join("certs/meta"), 3, &root.join("meta2.log"))
    });

    // The application keeps going: its calls wait for the server instead of failing.
    let t = Instant::now();
    write_synced(&mnt.join("during"), b"written while the metadata server was down");
    let waited = t.elapsed();
    c.meta = restart.join().unwrap();
    eprintln!("a create + write + fsync during the outage took {waited:?}");
    assert!(waited >= Duration::from_secs(2), "the write cannot have completed while the metadata server was down ({waited:?})");

    assert_eq!(fs::read(mnt.join("dir/small")).unwrap(), b"fsynced before the crash");
    assert_eq!(fs::read(mnt.join("during")).unwrap(), b"written while the metadata server was down");
    drop_caches();
    assert_eq!(hash_file(&mnt.join("big")).unwrap(), blake3::hash(&big));
    m.assert_running();
    // A fresh mount agrees (nothing came from the first mount's caches).
    let mnt2 = c.root().join("mnt2");
    fs::create_dir_all(&mnt2).unwrap();
    let mut m2 = start_mount(&c.meta_addr, &c.client, &mnt2, &c.root().join("mount2.log"));
    assert_eq!(hash_file(&mnt2.join("big")).unwrap(), blake3::hash(&big));
    assert_eq!(fs::read(mnt2.join("during")).unwrap(), b"written while the metadata server was down");
    m2.stop();
    m.stop();
    c.assert_running();
}

fn drop_caches() {
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

/// A cluster of 3 servers (3 copies) with a mount that wrote `before` (fsynced).
fn mounted_cluster() -> (ManualCluster, PathBuf, Proc) {
    let c = ManualCluster::start(3, 3);
    let mnt = c.root().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let m = start_mount(&c.meta_addr, &c.client, &mnt, &c.root().join("mount.log"));
    write_synced(&mnt.join("before"), b"before the restart");
    (c, mnt, m)
}

/// Stop the metadata server with `signal` and wait until it has exited.
fn stop_meta_with(c: &mut ManualCluster, signal: Signal) {
    let pid = c.meta.pid().expect("meta pid");
    kill(Pid::from_raw(pid as i32), signal).unwrap();
    assert!(wait_for(Duration::from_secs(10), || c.meta.exited()).is_some());
}

/// Start the metadata server again on its data and port; returns once it listens.
fn start_meta_again(c: &mut ManualCluster) {
    let port: u16 = c.meta_addr.rsplit_once(':').unwrap().1.parse().unwrap();
    c.meta = start_meta(&c.root().join("meta"), port, &c.root().join("certs/meta"), 3, &c.root().join("meta2.log"));
}

/// The end of both restart tests: both files intact, fsck clean, every server running.
fn finish(mut c: ManualCluster, mnt: &Path, mut m: Proc, name: &str, data: &[u8]) {
    assert_eq!(fs::read(mnt.join("before")).unwrap(), b"before the restart");
    assert_eq!(fs::read(mnt.join(name)).unwrap(), data);
    m.stop();
    c.assert_fsck_clean();
    c.assert_running();
}

/// A metadata server that crashes and is back at once costs the mount no more than its restart.
/// The mount's connection to the dead process gets no answer; without a stateless reset that the
/// new process can send (and the mount can trust), the mount would wait out QUIC's idle timeout
/// (5 s) before it connected again.
#[test]
fn a_metadata_server_restarted_at_once_is_reached_at_once() {
    let (mut c, mnt, m) = mounted_cluster();
    stop_meta_with(&mut c, Signal::SIGKILL);
    start_meta_again(&mut c);

    // A create has to ask the metadata server (nothing in a cache can answer it).
    let t = Instant::now();
    fs::write(mnt.join("after"), b"after the restart").unwrap();
    let waited = t.elapsed();
    eprintln!("the first create after the restart took {waited:?}");
    assert!(waited < Duration::from_millis(2500), "the first create after the restart took {waited:?}: the mount waited for its dead connection to time out");
    finish(c, &mnt, m, "after", b"after the restart");
}

/// A create that waits through a metadata server's restart finishes soon after the new process
/// listens. QUIC retransmits a handshake that gets no answer after 1 s, 3 s and 7 s; a mount
/// that waited for those would find a server that is back only seconds later.
#[test]
fn a_create_waiting_through_a_metadata_restart_finishes_soon_after_it() {
    let (mut c, mnt, m) = mounted_cluster();
    stop_meta_with(&mut c, Signal::SIGTERM);
    let path = mnt.join("during");
    let create = std::thread::spawn(move || {
        let r = fs::write(&path, b"created through the restart");
        (r, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(3500));
    start_meta_again(&mut c);
    let up = Instant::now();
    let (r, done) = create.join().unwrap();
    r.expect("the create waits for the metadata server instead of failing");
    let after = done.saturating_duration_since(up);
    eprintln!("the create finished {after:?} after the metadata server listened again");
    assert!(after < Duration::from_secs(1), "the create finished {after:?} after the metadata server was back");
    finish(c, &mnt, m, "during", b"created through the restart");
}
