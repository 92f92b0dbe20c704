//! Process crashes, one at a time, with real processes: the metadata server is killed with
//! SIGKILL and restarted on its data; what was fsynced before is intact, and an application that
//! keeps working through the outage only waits.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
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
